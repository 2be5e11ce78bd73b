// The FP8 decode GEMV on CUDA cores (kernels/fp8_gemv.cuh): one activation row, float32, bfloat16 or float16,
// times an E4M3 weight [N, K] with one scale, or one a row (weights stacked along N). Its tiles are compiled
// here once and chosen per call by index, as lowprec_workloads.fp8_gemv_cuda.TILES lists them: a benchmark
// times them all from one build, and every process runs the tile fp8_linear chose for a shape.
#include "fp8_gemv.cuh"

namespace {

// (rows a warp, chunk steps, warps a block, blocks a multiprocessor the registers are sized for)
#define LOWPREC_FP8_GEMV_TILES(X) \
    X(0, 1, 4, 8, 2) X(1, 2, 2, 8, 2) X(2, 2, 4, 8, 2) X(3, 4, 2, 8, 2) X(4, 4, 4, 8, 1) X(5, 1, 8, 4, 4) \
    X(6, 1, 2, 8, 4) X(7, 2, 2, 4, 8)

#define LOWPREC_COUNT(...) +1
constexpr int kTiles = 0 LOWPREC_FP8_GEMV_TILES(LOWPREC_COUNT);
#undef LOWPREC_COUNT
// x's codes in shared memory: K bytes, which with the kernel's few static bytes (48 at most) must fit the
// 48 KB a launch may take without opting in to more.
constexpr int kMaxK = 48 * 1024 - 256;

// `programmatic`: launched with programmatic stream serialization, so the kernel requests its first weight chunk
// while the kernel before it on the stream finishes (lowprec.cuh's wait_for_prior_grid). Only for a caller whose
// weight no kernel just before it writes: the decode step, whose weights were written before it began.
template <typename XT, int kRows, int kUnroll, int kWarps, int kMinBlocks>
cudaError_t launch(const void* x, const void* x_scale, const void* w, const void* w_inv, int w_inv_stride, void* out,
                   int N, int K, bool programmatic, cudaStream_t stream) {
    const int warps = (N + kRows - 1) / kRows;
    return lowprec::launch_kernel(lowprec::fp8_gemv_kernel<XT, kRows, kUnroll, kWarps, kMinBlocks>,
                                  dim3((warps + kWarps - 1) / kWarps), dim3(kWarps * 32), K, stream, programmatic,
                                  x, x_scale, w, w_inv, w_inv_stride, out, N, K);
}

template <typename XT>
cudaError_t launch_tile(int tile, const void* x, const void* x_scale, const void* w, const void* w_inv,
                        int w_inv_stride, void* out, int N, int K, bool programmatic, cudaStream_t stream) {
    switch (tile) {
#define LOWPREC_CASE(i, rows, unroll, warps, min_blocks)                                                         \
    case i:                                                                                                      \
        return launch<XT, rows, unroll, warps, min_blocks>(x, x_scale, w, w_inv, w_inv_stride, out, N, K,         \
                                                           programmatic, stream);
        LOWPREC_FP8_GEMV_TILES(LOWPREC_CASE)
#undef LOWPREC_CASE
    }
    return cudaErrorInvalidValue;
}

}  // namespace

extern "C" int fp8_gemv_tile_count() { return kTiles; }

// The tile's shape, for the Python side to check its table against the compiled one.
extern "C" int fp8_gemv_tile_shape(int tile, int* rows, int* unroll, int* warps, int* min_blocks) {
    switch (tile) {
#define LOWPREC_SHAPE(i, r, u, wa, b) \
    case i: *rows = r; *unroll = u; *warps = wa; *min_blocks = b; return 0;
        LOWPREC_FP8_GEMV_TILES(LOWPREC_SHAPE)
#undef LOWPREC_SHAPE
    }
    return static_cast<int>(cudaErrorInvalidValue);
}

extern "C" int fp8_gemv_max_k() { return kMaxK; }

// x [1, K]: float32 (x_type 0), bfloat16 (1) or float16 (2); x_scale its E4M3 scale on the device, or null for
// the amax pass; w E4M3 [N, K], 16-byte aligned; w_inv float32, w_inv[n * w_inv_stride] row n's (stride 0: one
// for all); out float32 [1, N]. K a multiple of 16 up to kMaxK (checked by the caller too). programmatic: 1 to
// launch it as a programmatic dependent of the kernel before it (see launch), 0 for an ordinary launch.
extern "C" int fp8_gemv(int device, const void* x, int x_type, const void* x_scale, const void* w, const void* w_inv,
                        int w_inv_stride, void* out, int N, int K, int tile, int programmatic, void* stream) {
    LOWPREC_LAUNCH_PROLOGUE(device);
    if (K % 16 || K > kMaxK || N < 1 || tile < 0 || tile >= kTiles) return static_cast<int>(cudaErrorInvalidValue);
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    const bool p = programmatic != 0;
    switch (x_type) {
        case 0: return static_cast<int>(launch_tile<float>(tile, x, x_scale, w, w_inv, w_inv_stride, out, N, K, p, s));
        case 1:
            return static_cast<int>(launch_tile<uint16_t>(tile, x, x_scale, w, w_inv, w_inv_stride, out, N, K, p, s));
        case 2: return static_cast<int>(launch_tile<__half>(tile, x, x_scale, w, w_inv, w_inv_stride, out, N, K, p, s));
    }
    return static_cast<int>(cudaErrorInvalidValue);
}
