// benchmarks/gemv_variants.py builds this: the decode GEMV (M = 1) over rows a warp, unroll, threads
// and blocks a multiprocessor, and a kernel that only reads bytes (the ceiling at this size).
#include "../kernels/lowprec.cuh"

namespace {
template <int ROWS, int UNROLL, int THREADS, int MINB>
__global__ void __launch_bounds__(THREADS, MINB) gemv(const uint32_t* __restrict__ x, const uint8_t* __restrict__ w,
        const uint8_t* __restrict__ ws, const float* __restrict__ gw, float* __restrict__ out, int N, int K) {
    const int lane = threadIdx.x & 31;
    const int n0 = (blockIdx.x * (THREADS / 32) + (threadIdx.x >> 5)) * ROWS;
    if (n0 >= N) return;
    const int row_bytes = K / 2, row_scales = K / 16;
    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) acc[r] = 0.f;
#pragma unroll UNROLL
    for (int byte = lane * 16; byte < row_bytes; byte += 32 * 16) {
        uint4 q[ROWS];
        float s[ROWS][2];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const size_t n = static_cast<size_t>(min(n0 + r, N - 1));
            q[r] = __ldcs(reinterpret_cast<const uint4*>(w + n * row_bytes + byte));
            const uint16_t pair = __ldcs(reinterpret_cast<const unsigned short*>(ws + n * row_scales + byte / 8));
            s[r][0] = lowprec::e4m3_to_float(pair & 0xFF) * 64.f;
            s[r][1] = lowprec::e4m3_to_float(pair >> 8) * 64.f;
        }
        const uint4* xp = reinterpret_cast<const uint4*>(x + byte);
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
        for (int r = 0; r < ROWS; ++r) {
            const uint32_t words[4] = {q[r].x, q[r].y, q[r].z, q[r].w};
            float d[2] = {0.f, 0.f};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                uint32_t even, odd;
                lowprec::e2m1x8_to_e4m3x8(words[j], even, odd);
                const float2 e0 = lowprec::e4m3x2_to_float2(even);
                const float2 e1 = lowprec::e4m3x2_to_float2(even >> 16);
                const float2 o0 = lowprec::e4m3x2_to_float2(odd);
                const float2 o1 = lowprec::e4m3x2_to_float2(odd >> 16);
                const float* xj = xf + 8 * j;
                float t = d[j / 2];
                t = fmaf(e0.x, xj[0], t); t = fmaf(o0.x, xj[1], t);
                t = fmaf(e0.y, xj[2], t); t = fmaf(o0.y, xj[3], t);
                t = fmaf(e1.x, xj[4], t); t = fmaf(o1.x, xj[5], t);
                t = fmaf(e1.y, xj[6], t); t = fmaf(o1.y, xj[7], t);
                d[j / 2] = t;
            }
            acc[r] = fmaf(d[1], s[r][1], fmaf(d[0], s[r][0], acc[r]));
        }
    }
    const float g = *gw;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        float v = acc[r];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
        if (lane == 0 && n0 + r < N) out[n0 + r] = v * g;
    }
}

// Read-only ceiling: every byte of w and ws once, 16 B a lane, a grid-stride loop.
__global__ void read_only(const uint4* __restrict__ a, size_t n16, float* out) {
    uint32_t acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n16; i += (size_t)gridDim.x * blockDim.x) {
        const uint4 v = __ldcs(a + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x12345678u) out[0] = 1.f;
}

template <int ROWS, int UNROLL, int THREADS, int MINB>
int run(const void* x, const void* w, const void* ws, const void* gw, void* out, int N, int K, cudaStream_t s) {
    const int warps = (N + ROWS - 1) / ROWS;
    const int blocks = (warps + THREADS / 32 - 1) / (THREADS / 32);
    gemv<ROWS, UNROLL, THREADS, MINB><<<blocks, THREADS, 0, s>>>((const uint32_t*)x, (const uint8_t*)w,
        (const uint8_t*)ws, (const float*)gw, (float*)out, N, K);
    return (int)cudaGetLastError();
}
}  // namespace

#define VARIANTS(X) \
    X(0, 2, 2, 256, 4) X(1, 1, 2, 256, 4) X(2, 1, 4, 256, 4) X(3, 4, 1, 256, 2) X(4, 4, 2, 256, 2) \
    X(5, 2, 4, 256, 2) X(6, 2, 2, 128, 8) X(7, 1, 4, 128, 8) X(8, 2, 2, 256, 3) X(9, 1, 8, 256, 4) \
    X(10, 1, 2, 128, 16) X(11, 2, 4, 128, 8) X(12, 4, 2, 128, 4) X(13, 1, 1, 256, 8)

extern "C" const char* variant_name(int id) {
    switch (id) {
#define NAME(i, r, u, t, b) case i: return "rows=" #r " unroll=" #u " threads=" #t " minblocks=" #b;
        VARIANTS(NAME)
#undef NAME
    }
    return nullptr;
}

extern "C" int gemv_variant(int id, const void* x, const void* w, const void* ws, const void* gw, void* out,
                            int N, int K, void* stream) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (id) {
#define CALL(i, r, u, t, b) case i: return run<r, u, t, b>(x, w, ws, gw, out, N, K, s);
        VARIANTS(CALL)
#undef CALL
    }
    return -1;
}

extern "C" int read_bytes(const void* a, size_t nbytes, void* out, int blocks, int threads, void* stream) {
    read_only<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>((const uint4*)a, nbytes / 16, (float*)out);
    return (int)cudaGetLastError();
}
