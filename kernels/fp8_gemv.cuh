// The FP8 decode GEMV on CUDA cores, templated on its tile: kernels/fp8_gemv.cu instantiates the tiles
// lowprec_workloads.fp8_gemv_cuda names.
#pragma once

#include <cfloat>

#include "lowprec.cuh"

namespace lowprec {

// fp8._scale_from_amax for E4M3: 448 / amax (IEEE division) clamped to FLT_MAX, 1 for an all-zero row,
// NaN for a NaN amax (the comparison is false and the quotient stays NaN).
__device__ __forceinline__ float e4m3_scale_from_amax(float amax) {
    if (amax == 0.f) return 1.f;
    const float scale = __fdiv_rn(448.f, amax);
    return scale > FLT_MAX ? FLT_MAX : scale;
}

__device__ __forceinline__ float load_float(const float* x, int i) { return x[i]; }
__device__ __forceinline__ float load_float(const uint16_t* x, int i) {
    return __uint_as_float(static_cast<uint32_t>(x[i]) << 16);  // bfloat16 bits
}
__device__ __forceinline__ float load_float(const __half* x, int i) { return __half2float(x[i]); }

// Sixteen E4M3 codes (four words) -> sixteen floats, two conversion instructions a pair.
__device__ __forceinline__ void e4m3x16_to_float(const uint4& codes, float (&out)[16]) {
    const uint32_t words[4] = {codes.x, codes.y, codes.z, codes.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float2 lo = e4m3x2_to_float2(words[j]);
        const float2 hi = e4m3x2_to_float2(words[j] >> 16);
        out[4 * j] = lo.x;
        out[4 * j + 1] = lo.y;
        out[4 * j + 2] = hi.x;
        out[4 * j + 3] = hi.y;
    }
}

// out[n] = (E4M3(x * scale) . w[n, :]) * (1 / scale) * w_inv[n * w_inv_stride], one activation row.
//
// Memory-bound: the kernel's job is to keep the weight's bytes streaming. A warp owns kRows rows; each
// lane reads 16 bytes of each of them a step with a streaming load, kUnroll steps a chunk, and requests
// the next chunk before it multiplies the current one (two chunks in flight a warp). Every block first
// requests its first chunk, then takes x's scale (given by x's producer, or the amax of x read from L2)
// and writes x's E4M3 codes to shared memory, where every warp reads them: the activation is quantized
// once a block, with fp8.quantize_tensorwise's bits (the hardware's round-to-nearest-even conversion,
// saturated at +-448, as the Triton quantizers). Products of two E4M3 values are exact in float32 and
// summed there, sixteen a lane a step in order, then across the warp by shuffles: no tensor-core
// accumulator, whose sums keep fewer bits.
template <typename XT, int kRows, int kUnroll, int kWarps, int kMinBlocks>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks) fp8_gemv_kernel(
        const XT* __restrict__ x, const float* __restrict__ x_scale, const uint8_t* __restrict__ w,
        const float* __restrict__ w_inv, int w_inv_stride, float* __restrict__ out, int N, int K) {
    extern __shared__ __align__(16) uint8_t xq[];  // K codes
    __shared__ uint32_t warp_max[kWarps];
    __shared__ float block_scale;
    constexpr int kStep = 32 * 16;            // bytes of a row a warp reads a step
    constexpr int kChunk = kStep * kUnroll;   // and a chunk
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n0 = (blockIdx.x * kWarps + warp) * kRows;
    const uint8_t* rows[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r)  // rows past N re-read row N-1 (in bounds); their sums are never written
        rows[r] = w + static_cast<size_t>(min(n0 + r, N - 1)) * K + lane * 16;

    uint4 next[kUnroll][kRows];
    auto request = [&](int chunk) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
#pragma unroll
            for (int r = 0; r < kRows; ++r)
                next[u][r] = chunk + u * kStep + lane * 16 < K
                                 ? __ldcs(reinterpret_cast<const uint4*>(rows[r] + chunk + u * kStep))
                                 : make_uint4(0, 0, 0, 0);
    };
    if (n0 < N) request(0);  // in flight while the block quantizes x (and, launched programmatically, while
                             // the kernel before it finishes)
    wait_for_prior_grid();
    allow_dependent_grid();

    if (x_scale != nullptr) {
        if (threadIdx.x == 0) block_scale = *x_scale;
    } else {
        uint32_t bits = 0;  // |x| as float32 bits: ordered as the magnitudes, NaN above Inf (torch.amax's NaN)
        for (int i = threadIdx.x; i < K; i += kWarps * 32)
            bits = max(bits, __float_as_uint(load_float(x, i)) & 0x7FFFFFFFu);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) bits = max(bits, __shfl_xor_sync(0xFFFFFFFFu, bits, off));
        if (lane == 0) warp_max[warp] = bits;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int i = 1; i < kWarps; ++i) bits = max(bits, warp_max[i]);
            block_scale = e4m3_scale_from_amax(__uint_as_float(bits));
        }
    }
    __syncthreads();
    const float scale = block_scale;
    for (int i = 2 * threadIdx.x; i < K; i += 2 * kWarps * 32) {
        const float2 pair = make_float2(__fmul_rn(load_float(x, i), scale), __fmul_rn(load_float(x, i + 1), scale));
        *reinterpret_cast<__nv_fp8x2_storage_t*>(xq + i) = __nv_cvt_float2_to_fp8x2(pair, __NV_SATFINITE, __NV_E4M3);
    }
    __syncthreads();
    if (n0 >= N) return;

    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0.f;
    for (int chunk = 0; chunk < K; chunk += kChunk) {
        uint4 here[kUnroll][kRows];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
#pragma unroll
            for (int r = 0; r < kRows; ++r) here[u][r] = next[u][r];
        if (chunk + kChunk < K) request(chunk + kChunk);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int byte = chunk + u * kStep + lane * 16;
            if (byte < K) {
                float xf[16], wf[16];
                e4m3x16_to_float(*reinterpret_cast<const uint4*>(xq + byte), xf);
#pragma unroll
                for (int r = 0; r < kRows; ++r) {
                    e4m3x16_to_float(here[u][r], wf);
#pragma unroll
                    for (int e = 0; e < 16; ++e) acc[r] = fmaf(wf[e], xf[e], acc[r]);
                }
            }
        }
    }
    const float inv_x = __fdiv_rn(1.f, scale);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        float v = acc[r];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
        if (lane == 0 && n0 + r < N)
            out[n0 + r] = v * (inv_x * w_inv[static_cast<size_t>(n0 + r) * w_inv_stride]);
    }
}

}  // namespace lowprec
