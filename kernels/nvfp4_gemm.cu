// NVFP4 matrix products: the naive GEMM baseline and the decode GEMV on CUDA cores, and the decode
// linear on tensor cores (kernels/nvfp4_linear.cuh) for 1..64 activation rows.
//
// Layouts (those of pytest_lowprec.formats.nvfp4 with 1x16 blocks):
//   packed E2M1  uint8 [rows, K/2], element 2i in the low nibble of byte i
//   block scales E4M3 [rows, K/16]
//   tensor scale float32 scalar on the device (read in the kernel: no host sync, graph-capturable)
// out[m, n] = sum_k a[m, k] * b[n, k], fp32 accumulation, written as float32.
#include "lowprec.cuh"
#include "nvfp4_gemv.cuh"
#include "nvfp4_linear.cuh"

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

// The decode GEMV's shipped shape (kernels/nvfp4_gemv.cuh has the kernel).
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
cudaError_t launch_gemv(const void* x, const void* w, const void* ws, const void* gw, int gw_stride, void* out,
                        int N, int K, cudaStream_t stream) {
    const int warps = (N + GemvShape<M>::kRows - 1) / GemvShape<M>::kRows;
    const int blocks = (warps + kThreads / 32 - 1) / (kThreads / 32);
    lowprec::nvfp4_gemv_kernel<M, GemvShape<M>::kRows, 2, kThreads, GemvShape<M>::kMinBlocks>
        <<<blocks, kThreads, 0, stream>>>(
        static_cast<const uint32_t*>(x), static_cast<const uint8_t*>(w), static_cast<const uint8_t*>(ws),
        static_cast<const float*>(gw), gw_stride, static_cast<float*>(out), N, K);
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

// gw: the weight's tensor scale, gw_stride 0; or one a row, gw_stride 1 (weights quantized apart, stacked).
extern "C" int nvfp4_gemv(int device, const void* x, const void* w, const void* ws, const void* gw, int gw_stride,
                          void* out, int M, int N, int K, void* stream) {
    LOWPREC_LAUNCH_PROLOGUE(device);
    // 16-byte loads of whole 32-element chunks: K a multiple of 32, rows 16-byte aligned.
    if (N <= 0 || K <= 0 || K % 32 != 0 || (gw_stride != 0 && gw_stride != 1))
        return static_cast<int>(cudaErrorInvalidValue);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (M) {
#define LOWPREC_GEMV_CASE(m) \
    case m: return static_cast<int>(launch_gemv<m>(x, w, ws, gw, gw_stride, out, N, K, s));
        LOWPREC_GEMV_CASE(1) LOWPREC_GEMV_CASE(2) LOWPREC_GEMV_CASE(3) LOWPREC_GEMV_CASE(4)
#undef LOWPREC_GEMV_CASE
        default: return static_cast<int>(cudaErrorInvalidValue);
    }
}

// The decode linear's weights and scales (NVFP4's row-major [N, K/2] and [N, K/16]) laid out once in the
// order it reads them (kernels/nvfp4_linear.cuh, kStepMajor, the layout every shipped shape reads): tw holds
// 8 K ceil(N / 16) bytes, tws K ceil(N / 16).
extern "C" int nvfp4_linear_tile(int device, const void* w, const void* ws, int N, int K, void* tw, void* tws,
                                 void* stream) {
    LOWPREC_LAUNCH_PROLOGUE(device);
    namespace lin = lowprec::linear;
    static_assert(lin::Shipped<1>::kDecode == lin::kStepMajor && lin::Shipped<2>::kDecode == lin::kStepMajor &&
                      lin::Shipped<4>::kDecode == lin::kStepMajor && lin::Shipped<8>::kDecode == lin::kStepMajor,
                  "one prepared weight serves every batch size: every shipped shape reads the same layout");
    return static_cast<int>(lin::tile(w, ws, N, K, tw, tws, static_cast<cudaStream_t>(stream), true));
}

// out[m, n] = x[m] . w[n] for M = 1..64 bf16 rows on tensor cores, in the shape shipped for ceil(M / 8) n8 tiles;
// w and ws in the layout nvfp4_linear_tile makes; gw as for nvfp4_gemv. programmatic: 1 to launch it as a
// programmatic dependent of the kernel before it (lowprec::linear::launch), 0 for an ordinary launch.
extern "C" int nvfp4_linear(int device, const void* x, const void* w, const void* ws, const void* gw, int gw_stride,
                            void* out, int M, int N, int K, int programmatic, void* stream) {
    LOWPREC_LAUNCH_PROLOGUE(device);
    namespace lin = lowprec::linear;
    // 16-byte loads of weights and activations, 4-byte loads of scales.
    const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(ws) % 4 == 0;
    if (!aligned || M < 1 || M > lin::kMaxRows || (gw_stride != 0 && gw_stride != 1))
        return static_cast<int>(cudaErrorInvalidValue);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    const bool p = programmatic != 0;
    if (M <= 8) return static_cast<int>(lin::launch<lin::Shipped<1>>(x, w, ws, gw, gw_stride, out, M, N, K, s, p));
    if (M <= 16) return static_cast<int>(lin::launch<lin::Shipped<2>>(x, w, ws, gw, gw_stride, out, M, N, K, s, p));
    if (M <= 32) return static_cast<int>(lin::launch<lin::Shipped<4>>(x, w, ws, gw, gw_stride, out, M, N, K, s, p));
    return static_cast<int>(lin::launch<lin::Shipped<8>>(x, w, ws, gw, gw_stride, out, M, N, K, s, p));
}
