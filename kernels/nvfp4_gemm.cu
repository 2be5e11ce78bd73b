// NVFP4 matrix products on CUDA cores: the naive GEMM baseline and the decode GEMV.
//
// Layouts (those of pytest_lowprec.formats.nvfp4 with 1x16 blocks):
//   packed E2M1  uint8 [rows, K/2], element 2i in the low nibble of byte i
//   block scales E4M3 [rows, K/16]
//   tensor scale float32 scalar on the device (read in the kernel: no host sync, graph-capturable)
// out[m, n] = sum_k a[m, k] * b[n, k], fp32 accumulation, written as float32.
#include "lowprec.cuh"

namespace {

using lowprec::e2m1_to_float;
using lowprec::e4m3_to_float;

// The chapter's baseline: one thread per output, every element unpacked and scaled in turn.
__global__ void nvfp4_gemm_naive_kernel(const uint8_t* __restrict__ a, const uint8_t* __restrict__ sa,
                                        const float* __restrict__ ga, const uint8_t* __restrict__ b,
                                        const uint8_t* __restrict__ sb, const float* __restrict__ gb,
                                        float* __restrict__ out, int M, int N, int K) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int m = blockIdx.y * blockDim.y + threadIdx.y;
    if (m >= M || n >= N) return;
    const uint8_t* arow = a + static_cast<size_t>(m) * (K / 2);
    const uint8_t* brow = b + static_cast<size_t>(n) * (K / 2);
    const uint8_t* sarow = sa + static_cast<size_t>(m) * (K / 16);
    const uint8_t* sbrow = sb + static_cast<size_t>(n) * (K / 16);
    float acc = 0.f;
    for (int blk = 0; blk < K / 16; ++blk) {
        float dot = 0.f;
        for (int i = 0; i < 8; ++i) {
            const uint8_t pa = arow[blk * 8 + i], pb = brow[blk * 8 + i];
            dot += e2m1_to_float(pa & 0xF) * e2m1_to_float(pb & 0xF);
            dot += e2m1_to_float(pa >> 4) * e2m1_to_float(pb >> 4);
        }
        acc += dot * (e4m3_to_float(sarow[blk]) * e4m3_to_float(sbrow[blk]));
    }
    out[static_cast<size_t>(m) * N + n] = acc * (*ga * *gb);
}

// Decode GEMV: out[m, n] = x[m, :] . w[n, :] for a few activation rows (M <= 4) in bf16 and
// NVFP4 weights. Memory-bound at M = 1, so the kernel's job is to stream the packed bytes at
// full bandwidth: a warp owns kRows weight rows, each lane loads 16 bytes (32 elements, two scale
// blocks) of each row per step with a streaming load, decodes E2M1 to E4M3 with bit operations
// (no table), converts pairs with one instruction, and accumulates in fp32.
// At M = 1: four rows a warp, two steps unrolled (eight 16-byte loads in flight a lane), and each
// 32-element slice of x is decoded once for four rows. Measured on an H100 at 8192 x 8192
// (2026-11-22, graph replay after an L2 flush): 22.1 us, against 25.2 us for two rows a warp at
// four blocks a multiprocessor and 19.1-19.8 us for a kernel that only reads the same bytes.
// The 2048 warps fill 256 blocks, one wave at two blocks a multiprocessor (128 registers a thread).
// More activation rows multiply the accumulators, so M > 1 keeps two rows a warp.
constexpr int kThreads = 256;

template <int M>
struct GemvShape {
    static constexpr int kRows = M == 1 ? 4 : 2;
    static constexpr int kMinBlocks = M == 1 ? 2 : 1;
};

template <int M>
__global__ void __launch_bounds__(kThreads, GemvShape<M>::kMinBlocks) nvfp4_gemv_kernel(
        const uint32_t* __restrict__ x, const uint8_t* __restrict__ w, const uint8_t* __restrict__ ws,
        const float* __restrict__ gw, float* __restrict__ out, int N, int K) {
    constexpr int kRows = GemvShape<M>::kRows;
    const int lane = threadIdx.x & 31;
    const int n0 = (blockIdx.x * (kThreads / 32) + (threadIdx.x >> 5)) * kRows;
    if (n0 >= N) return;
    const int row_bytes = K / 2, row_scales = K / 16;
    float acc[M][kRows];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[m][r] = 0.f;

#pragma unroll 2
    for (int byte = lane * 16; byte < row_bytes; byte += 32 * 16) {
        uint4 q[kRows];
        float s[kRows][2];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            // Rows past N re-read row N-1; their sums are never written.
            const size_t n = static_cast<size_t>(min(n0 + r, N - 1));
            q[r] = __ldcs(reinterpret_cast<const uint4*>(w + n * row_bytes + byte));
            const uint16_t pair = *reinterpret_cast<const uint16_t*>(ws + n * row_scales + byte / 8);
            // 64 undoes the 2^-6 of the E2M1 -> E4M3 decode.
            s[r][0] = e4m3_to_float(pair & 0xFF) * 64.f;
            s[r][1] = e4m3_to_float(pair >> 8) * 64.f;
        }
#pragma unroll
        for (int m = 0; m < M; ++m) {
            // 32 bf16 activations = 16 words; x is small and reused by every warp: keep it cached.
            const uint4* xp = reinterpret_cast<const uint4*>(x + (static_cast<size_t>(m) * K + byte * 2) / 2);
            float xf[32];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const uint4 v = __ldg(xp + i);
                const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    const float2 f = lowprec::bf16x2_to_float2(words[c]);
                    xf[8 * i + 2 * c] = f.x;
                    xf[8 * i + 2 * c + 1] = f.y;
                }
            }
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
                const uint32_t words[4] = {q[r].x, q[r].y, q[r].z, q[r].w};
                float d[2] = {0.f, 0.f};
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    uint32_t even, odd;
                    lowprec::e2m1x8_to_e4m3x8(words[j], even, odd);
                    const float2 e0 = lowprec::e4m3x2_to_float2(even);        // elements 0, 2
                    const float2 e1 = lowprec::e4m3x2_to_float2(even >> 16);  // elements 4, 6
                    const float2 o0 = lowprec::e4m3x2_to_float2(odd);         // elements 1, 3
                    const float2 o1 = lowprec::e4m3x2_to_float2(odd >> 16);   // elements 5, 7
                    const float* xj = xf + 8 * j;
                    float t = d[j / 2];
                    t = fmaf(e0.x, xj[0], t);
                    t = fmaf(o0.x, xj[1], t);
                    t = fmaf(e0.y, xj[2], t);
                    t = fmaf(o0.y, xj[3], t);
                    t = fmaf(e1.x, xj[4], t);
                    t = fmaf(o1.x, xj[5], t);
                    t = fmaf(e1.y, xj[6], t);
                    t = fmaf(o1.y, xj[7], t);
                    d[j / 2] = t;
                }
                acc[m][r] = fmaf(d[1], s[r][1], fmaf(d[0], s[r][0], acc[m][r]));
            }
        }
    }
    const float g = *gw;
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            float v = acc[m][r];
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
            if (lane == 0 && n0 + r < N) out[static_cast<size_t>(m) * N + n0 + r] = v * g;
        }
}

template <int M>
cudaError_t launch_gemv(const void* x, const void* w, const void* ws, const void* gw, void* out, int N, int K,
                        cudaStream_t stream) {
    const int warps = (N + GemvShape<M>::kRows - 1) / GemvShape<M>::kRows;
    const int blocks = (warps + kThreads / 32 - 1) / (kThreads / 32);
    nvfp4_gemv_kernel<M><<<blocks, kThreads, 0, stream>>>(
        static_cast<const uint32_t*>(x), static_cast<const uint8_t*>(w), static_cast<const uint8_t*>(ws),
        static_cast<const float*>(gw), static_cast<float*>(out), N, K);
    return cudaGetLastError();
}

}  // namespace

extern "C" int nvfp4_gemm_naive(int device, const void* a, const void* sa, const void* ga, const void* b,
                                const void* sb, const void* gb, void* out, int M, int N, int K, void* stream) {
    LOWPREC_LAUNCH_PROLOGUE(device);
    if (M <= 0 || N <= 0 || K <= 0 || K % 16 != 0) return static_cast<int>(cudaErrorInvalidValue);
    const dim3 block(16, 16);
    const dim3 grid((N + 15) / 16, (M + 15) / 16);
    nvfp4_gemm_naive_kernel<<<grid, block, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const uint8_t*>(a), static_cast<const uint8_t*>(sa), static_cast<const float*>(ga),
        static_cast<const uint8_t*>(b), static_cast<const uint8_t*>(sb), static_cast<const float*>(gb),
        static_cast<float*>(out), M, N, K);
    return LOWPREC_LAUNCH_STATUS();
}

extern "C" int nvfp4_gemv(int device, const void* x, const void* w, const void* ws, const void* gw, void* out,
                          int M, int N, int K, void* stream) {
    LOWPREC_LAUNCH_PROLOGUE(device);
    // 16-byte loads of whole 32-element chunks: K a multiple of 32, rows 16-byte aligned.
    if (N <= 0 || K <= 0 || K % 32 != 0) return static_cast<int>(cudaErrorInvalidValue);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (M) {
#define LOWPREC_GEMV_CASE(m) \
    case m: return static_cast<int>(launch_gemv<m>(x, w, ws, gw, out, N, K, s));
        LOWPREC_GEMV_CASE(1) LOWPREC_GEMV_CASE(2) LOWPREC_GEMV_CASE(3) LOWPREC_GEMV_CASE(4)
#undef LOWPREC_GEMV_CASE
        default: return static_cast<int>(cudaErrorInvalidValue);
    }
}
