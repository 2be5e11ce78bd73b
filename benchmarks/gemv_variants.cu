// benchmarks/gemv_variants.py builds this: kernels/nvfp4_gemv.cuh's GEMV (M = 1) at shapes other than
// the shipped one (rows a warp, unroll, threads, blocks a multiprocessor), and a kernel that only
// reads bytes (the ceiling at this size).
#include "../kernels/nvfp4_gemv.cuh"

namespace {
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
    lowprec::nvfp4_gemv_kernel<1, ROWS, UNROLL, THREADS, MINB><<<blocks, THREADS, 0, s>>>(
        (const uint32_t*)x, (const uint8_t*)w,
        (const uint8_t*)ws, (const float*)gw, 0, (float*)out, N, K);
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
