// The NVFP4 decode GEMV kernel, templated on its shape: kernels/nvfp4_gemm.cu instantiates the
// shape it ships, benchmarks/gemv_variants.cu the ones it compares.
#pragma once

#include "lowprec.cuh"

namespace lowprec {

// Decode GEMV: out[m, n] = x[m, :] . w[n, :] for a few activation rows (M <= 4) in bf16 and
// NVFP4 weights. Memory-bound at M = 1, so the kernel's job is to stream the packed bytes at
// full bandwidth: a warp owns kRows weight rows, each lane loads 16 bytes (32 elements, two scale
// blocks) of each row per step with a streaming load, decodes E2M1 to E4M3 with bit operations
// (no table), converts pairs with one instruction, and accumulates in fp32. Row n's tensor scale is
// gw[n * gw_stride]: one scale (stride 0), or one a row (1: weights quantized apart and stacked).
template <int M, int kRows, int kUnroll, int kThreads, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks) nvfp4_gemv_kernel(
        const uint32_t* __restrict__ x, const uint8_t* __restrict__ w, const uint8_t* __restrict__ ws,
        const float* __restrict__ gw, int gw_stride, float* __restrict__ out, int N, int K) {
    const int lane = threadIdx.x & 31;
    const int n0 = (blockIdx.x * (kThreads / 32) + (threadIdx.x >> 5)) * kRows;
    if (n0 >= N) return;
    const int row_bytes = K / 2, row_scales = K / 16;
    float acc[M][kRows];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[m][r] = 0.f;

#pragma unroll kUnroll
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
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            float v = acc[m][r];
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
            if (lane == 0 && n0 + r < N)
                out[static_cast<size_t>(m) * N + n0 + r] = v * gw[static_cast<size_t>(n0 + r) * gw_stride];
        }
}

}  // namespace lowprec
