// benchmarks/nvfp4_linear_variants.py builds this: kernels/nvfp4_linear.cuh's decode linear at shapes other
// than (and including) the shipped ones (kRepacked, kTiled and kStepMajor ones on weights prepared once by
// repack_words and tile_weights), and
// kernels that only read bytes with each load hint (what streaming the weights costs at this size, after
// the gate's L2 flush).
//
// Built in LOWPREC_PARTS pieces (-DLOWPREC_PART=i) so the pieces compile in parallel: piece i instantiates
// the variants whose id % LOWPREC_PARTS == i and answers kNotHere for the others.
#include "../kernels/nvfp4_linear.cuh"

#ifndef LOWPREC_PART
#define LOWPREC_PART 0
#endif
#ifndef LOWPREC_PARTS
#define LOWPREC_PARTS 1
#endif

using namespace lowprec::linear;

namespace {
constexpr int kNotHere = -2;

// id, n8 tiles (MT), m16 tiles a warp (RT), warps along rows (WR), warps along K (WK), ring steps (U),
// decode, load hint, min blocks a multiprocessor.
#define VARIANTS(X)                                             \
    X(0, 1, 1, 1, 4, 4, kShift, kCached, 4)                     \
    X(1, 1, 1, 1, 4, 4, kShift, kNoL1, 4)                       \
    X(2, 1, 1, 1, 4, 4, kShift, kNoL1Prefetch256, 4)            \
    X(3, 1, 1, 1, 4, 4, kShift, kEvictFirst, 4)                 \
    X(4, 1, 1, 1, 4, 4, kShift, kStreaming, 4)                  \
    X(5, 1, 1, 1, 4, 2, kShift, kNoL1Prefetch256, 4)            \
    X(6, 1, 1, 1, 4, 8, kShift, kNoL1Prefetch256, 4)            \
    X(7, 1, 2, 1, 8, 2, kShift, kNoL1Prefetch256, 2)            \
    X(8, 1, 1, 2, 4, 4, kLut256, kNoL1, 2)                      \
    X(9, 1, 1, 2, 4, 4, kLut256, kNoL1Prefetch256, 2)           \
    X(10, 1, 1, 2, 4, 4, kLut256, kEvictFirst, 2)               \
    X(11, 1, 1, 2, 4, 2, kLut256, kNoL1Prefetch256, 2)          \
    X(12, 1, 1, 1, 4, 4, kLut128, kNoL1Prefetch256, 4)          \
    X(13, 1, 1, 1, 4, 4, kLut128, kEvictFirst, 4)               \
    X(14, 2, 1, 1, 4, 4, kShift, kNoL1Prefetch256, 4)           \
    X(15, 2, 1, 1, 4, 4, kShift, kEvictFirst, 4)                \
    X(16, 2, 1, 2, 4, 4, kLut256, kNoL1Prefetch256, 2)          \
    X(17, 2, 1, 2, 4, 4, kLut256, kEvictFirst, 2)               \
    X(18, 2, 1, 1, 4, 2, kLut128, kNoL1Prefetch256, 4)          \
    X(19, 2, 2, 1, 4, 2, kShift, kNoL1Prefetch256, 2)           \
    X(20, 2, 2, 1, 8, 2, kShift, kNoL1Prefetch256, 2)           \
    X(21, 4, 2, 1, 4, 2, kShift, kNoL1Prefetch256, 2)           \
    X(22, 4, 1, 2, 2, 2, kLut256, kNoL1Prefetch256, 2)          \
    X(23, 4, 1, 1, 2, 2, kShift, kNoL1Prefetch256, 4)           \
    X(24, 4, 1, 1, 2, 2, kLut128, kNoL1Prefetch256, 4)          \
    X(25, 8, 2, 1, 4, 2, kShift, kNoL1Prefetch256, 2)           \
    X(26, 8, 1, 1, 2, 2, kShift, kNoL1Prefetch256, 4)           \
    X(27, 8, 1, 2, 2, 2, kLut256, kNoL1Prefetch256, 2)          \
    X(28, 8, 1, 1, 2, 2, kLut128, kNoL1Prefetch256, 4)          \
    X(29, 1, 1, 1, 2, 8, kShift, kNoL1Prefetch256, 4)           \
    X(30, 1, 1, 2, 4, 4, kLut128, kNoL1Prefetch256, 2)          \
    X(31, 2, 1, 1, 4, 2, kShift, kNoL1Prefetch256, 4)           \
    X(32, 1, 1, 2, 4, 4, kLut256, kEvictFirstPrefetch256, 2)    \
    X(33, 1, 1, 1, 4, 4, kShift, kEvictFirstPrefetch256, 4)     \
    X(34, 1, 1, 1, 4, 4, kLut128, kEvictFirstPrefetch256, 4)    \
    X(35, 2, 1, 2, 4, 4, kLut256, kEvictFirstPrefetch256, 2)    \
    X(36, 4, 1, 2, 2, 2, kLut256, kEvictFirstPrefetch256, 2)    \
    X(37, 8, 1, 2, 2, 2, kLut256, kEvictFirstPrefetch256, 2)   \
    X(38, 1, 1, 1, 4, 4, kRepacked, kNoL1Prefetch256, 4)        \
    X(39, 1, 1, 1, 4, 4, kRepacked, kEvictFirstPrefetch256, 4)  \
    X(40, 1, 1, 1, 4, 2, kRepacked, kNoL1Prefetch256, 4)        \
    X(41, 1, 1, 1, 4, 8, kRepacked, kNoL1Prefetch256, 4)        \
    X(42, 1, 1, 1, 2, 8, kRepacked, kNoL1Prefetch256, 4)        \
    X(43, 1, 1, 1, 8, 4, kRepacked, kNoL1Prefetch256, 2)        \
    X(44, 1, 1, 1, 4, 6, kRepacked, kNoL1Prefetch256, 3)        \
    X(45, 1, 2, 1, 8, 2, kRepacked, kNoL1Prefetch256, 2)        \
    X(46, 1, 1, 1, 4, 4, kRepacked, kEvictFirst, 4)             \
    X(47, 2, 2, 1, 4, 2, kRepacked, kNoL1Prefetch256, 2)        \
    X(48, 2, 1, 1, 4, 4, kRepacked, kNoL1Prefetch256, 4)        \
    X(49, 4, 2, 1, 4, 2, kRepacked, kNoL1Prefetch256, 2)        \
    X(50, 4, 1, 1, 2, 4, kRepacked, kNoL1Prefetch256, 4)        \
    X(51, 8, 2, 1, 4, 2, kRepacked, kNoL1Prefetch256, 2)        \
    X(52, 8, 1, 1, 2, 2, kRepacked, kNoL1Prefetch256, 4)        \
    X(53, 1, 1, 1, 4, 4, kRepacked, kAsync, 4)                  \
    X(54, 1, 1, 1, 4, 8, kRepacked, kAsync, 4)                  \
    X(55, 1, 1, 1, 4, 12, kRepacked, kAsync, 4)                 \
    X(56, 1, 1, 1, 4, 16, kRepacked, kAsync, 3)                 \
    X(57, 1, 1, 1, 8, 8, kRepacked, kAsync, 3)                  \
    X(58, 1, 1, 1, 8, 4, kRepacked, kAsync, 3)                  \
    X(59, 1, 1, 1, 2, 8, kRepacked, kAsync, 8)                  \
    X(60, 1, 1, 1, 4, 8, kShift, kAsync, 4)                     \
    X(61, 1, 1, 1, 4, 6, kRepacked, kAsync, 6)                  \
    X(62, 1, 1, 1, 16, 4, kRepacked, kAsync, 1)                 \
    X(63, 2, 2, 1, 4, 4, kRepacked, kAsync, 2)                  \
    X(64, 2, 1, 1, 4, 8, kRepacked, kAsync, 4)                  \
    X(65, 2, 2, 1, 4, 6, kRepacked, kAsync, 2)                  \
    X(66, 2, 1, 1, 8, 4, kRepacked, kAsync, 3)                  \
    X(67, 4, 2, 1, 4, 4, kRepacked, kAsync, 2)                  \
    X(68, 8, 2, 1, 4, 4, kRepacked, kAsync, 2)                  \
    X(69, 1, 1, 1, 4, 4, kTiled, kNoL1Prefetch256, 4)           \
    X(70, 1, 1, 1, 4, 4, kTiled, kEvictFirstPrefetch256, 4)     \
    X(71, 1, 1, 1, 4, 8, kTiled, kNoL1Prefetch256, 4)           \
    X(72, 1, 1, 1, 4, 2, kTiled, kNoL1Prefetch256, 4)           \
    X(73, 1, 1, 1, 8, 4, kTiled, kNoL1Prefetch256, 2)           \
    X(74, 1, 1, 1, 4, 8, kTiled, kAsync, 4)                     \
    X(75, 1, 1, 1, 4, 4, kTiled, kAsync, 4)                     \
    X(76, 1, 1, 1, 8, 8, kTiled, kAsync, 3)                     \
    X(77, 1, 1, 1, 4, 4, kTiled, kStreaming, 4)                 \
    X(78, 1, 1, 1, 4, 4, kTiled, kNoL1, 4)                      \
    X(79, 2, 2, 1, 4, 2, kTiled, kNoL1Prefetch256, 2)           \
    X(80, 2, 1, 1, 4, 4, kTiled, kNoL1Prefetch256, 4)           \
    X(81, 2, 2, 1, 4, 4, kTiled, kAsync, 2)                     \
    X(82, 4, 2, 1, 4, 2, kTiled, kNoL1Prefetch256, 2)           \
    X(83, 8, 2, 1, 4, 2, kTiled, kNoL1Prefetch256, 2)           \
    X(84, 1, 1, 1, 4, 4, kStepMajor, kNoL1, 4)                  \
    X(85, 1, 1, 1, 4, 4, kStepMajor, kNoL1Prefetch256, 4)       \
    X(86, 1, 1, 1, 4, 4, kStepMajor, kStreaming, 4)             \
    X(87, 1, 1, 1, 4, 2, kStepMajor, kNoL1, 4)                  \
    X(88, 1, 1, 1, 8, 4, kStepMajor, kNoL1, 2)                  \
    X(89, 2, 2, 1, 4, 2, kStepMajor, kNoL1Prefetch256, 2)       \
    X(90, 4, 2, 1, 4, 2, kStepMajor, kNoL1Prefetch256, 2)       \
    X(91, 8, 2, 1, 4, 2, kStepMajor, kNoL1Prefetch256, 2)       \
    X(92, 1, 1, 1, 4, 3, kStepMajor, kNoL1, 4)                  \
    X(93, 1, 1, 1, 4, 2, kStepMajor, kStreaming, 4)             \
    X(94, 1, 1, 1, 4, 2, kStepMajor, kNoL1Prefetch256, 4)       \
    X(95, 1, 1, 1, 8, 2, kStepMajor, kNoL1, 2)                  \
    X(96, 2, 2, 1, 4, 1, kStepMajor, kNoL1Prefetch256, 2)       \
    X(97, 2, 1, 1, 4, 2, kStepMajor, kNoL1, 4)                  \
    X(98, 1, 1, 1, 8, 2, kStepMajor, kNoL1, 4)                  \
    X(99, 1, 1, 1, 8, 3, kStepMajor, kNoL1, 4)                  \
    X(100, 1, 1, 1, 8, 1, kStepMajor, kNoL1, 4)                 \
    X(101, 1, 1, 1, 8, 2, kStepMajor, kNoL1Prefetch256, 4)      \
    X(102, 1, 1, 1, 8, 2, kStepMajor, kStreaming, 4)            \
    X(103, 1, 1, 1, 8, 2, kTiled, kNoL1, 4)                     \
    X(104, 2, 2, 1, 8, 2, kStepMajor, kNoL1Prefetch256, 2)      \
    X(105, 2, 1, 1, 8, 2, kStepMajor, kNoL1Prefetch256, 4)      \
    X(106, 4, 2, 1, 8, 2, kStepMajor, kNoL1Prefetch256, 2)      \
    X(107, 1, 1, 1, 8, 1, kStepMajor, kStreaming, 4)            \
    X(108, 1, 1, 1, 8, 1, kStepMajor, kNoL1Prefetch256, 4)      \
    X(109, 1, 1, 1, 8, 1, kTiled, kNoL1, 4)                     \
    X(110, 1, 1, 1, 12, 1, kStepMajor, kNoL1, 4)                \
    X(111, 1, 1, 1, 16, 1, kStepMajor, kNoL1, 4)                \
    X(112, 2, 2, 1, 8, 1, kStepMajor, kNoL1Prefetch256, 2)      \
    X(113, 2, 2, 1, 4, 1, kStepMajor, kNoL1, 2)                 \
    X(114, 4, 2, 1, 8, 1, kStepMajor, kNoL1Prefetch256, 2)      \
    X(115, 2, 2, 1, 8, 1, kStepMajor, kNoL1, 2)                 \
    X(116, 2, 2, 1, 8, 1, kStepMajor, kStreaming, 2)

template <int ID>
struct Variant;
#define DEFINE_VARIANT(id, ...) \
    template <>                 \
    struct Variant<id> {        \
        using C = Config<__VA_ARGS__>; \
        static constexpr const char* kName = #__VA_ARGS__; \
    };
VARIANTS(DEFINE_VARIANT)
#undef DEFINE_VARIANT

template <int ID>
int run_variant(const void* x, const void* w, const void* ws, const void* gw, void* out, int M, int N, int K,
                cudaStream_t s) {
    if constexpr (ID % LOWPREC_PARTS == LOWPREC_PART) {
        return static_cast<int>(launch<typename Variant<ID>::C>(x, w, ws, gw, 0, out, M, N, K, s));
    } else {
        return kNotHere;
    }
}

#if LOWPREC_PART == 0
// Reads n16 16-byte words once, kUnroll loads in flight a thread, a grid-stride loop; folds them into a
// value no one reads unless it is an impossible one, so the loads stay.
template <int HINT, int kUnroll>
__global__ void __launch_bounds__(256) read_only(const unsigned char* __restrict__ a, size_t n16, float* sink) {
    uint32_t acc = 0;
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
    for (; i + (kUnroll - 1) * stride < n16; i += kUnroll * stride) {
        uint4 v[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) v[u] = load_weights<HINT>(a + 16 * (i + u * stride));
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (; i < n16; i += stride) {
        const uint4 v = load_weights<HINT>(a + 16 * i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9E3779B9u) sink[0] = 1.f;
}
#endif
}  // namespace

extern "C" int variant_count() {
    int n = 0;
#define COUNT(id, ...) ++n;
    VARIANTS(COUNT)
#undef COUNT
    return n;
}

extern "C" const char* variant_name(int id) {
    switch (id) {
#define NAME(id, ...) \
    case id: return Variant<id>::kName;
        VARIANTS(NAME)
#undef NAME
    }
    return nullptr;
}

extern "C" int variant_tiles(int id) {
    switch (id) {
#define TILES(id, ...) \
    case id: return Variant<id>::C::kMT;
        VARIANTS(TILES)
#undef TILES
    }
    return 0;
}

extern "C" int variant_launch(int id, const void* x, const void* w, const void* ws, const void* gw, void* out, int M,
                              int N, int K, void* stream) {
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (id) {
#define CALL(id, ...) \
    case id: return run_variant<id>(x, w, ws, gw, out, M, N, K, s);
        VARIANTS(CALL)
#undef CALL
    }
    return -1;
}

// kRepacked variants read weights repacked once (piece 0 only): `words` 32-bit words of packed E2M1.
extern "C" int repack_words(const void* in, void* out, size_t words, void* stream) {
#if LOWPREC_PART != 0
    return kNotHere;
#else
    return static_cast<int>(repack(in, out, words, static_cast<cudaStream_t>(stream)));
#endif
}

// kTiled and kStepMajor variants read weights and scales laid out once by tile_weights (piece 0 only).
extern "C" int tile_weights(const void* w, const void* ws, int N, int K, void* tw, void* tws, int step_major,
                            void* stream) {
#if LOWPREC_PART != 0
    return kNotHere;
#else
    return static_cast<int>(tile(w, ws, N, K, tw, tws, static_cast<cudaStream_t>(stream), step_major != 0));
#endif
}

// Read-only kernels (piece 0 only): hint 0..5 as load_weights's, 4 loads in flight a thread.
extern "C" int read_bytes(int hint, const void* a, size_t nbytes, void* sink, int blocks, void* stream) {
#if LOWPREC_PART != 0
    return kNotHere;
#else
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    const auto* p = static_cast<const unsigned char*>(a);
    float* out = static_cast<float*>(sink);
    const size_t n16 = nbytes / 16;
    switch (hint) {
        case kCached: read_only<kCached, 4><<<blocks, 256, 0, s>>>(p, n16, out); break;
        case kNoL1: read_only<kNoL1, 4><<<blocks, 256, 0, s>>>(p, n16, out); break;
        case kNoL1Prefetch256: read_only<kNoL1Prefetch256, 4><<<blocks, 256, 0, s>>>(p, n16, out); break;
        case kEvictFirst: read_only<kEvictFirst, 4><<<blocks, 256, 0, s>>>(p, n16, out); break;
        case kStreaming: read_only<kStreaming, 4><<<blocks, 256, 0, s>>>(p, n16, out); break;
        case kEvictFirstPrefetch256: read_only<kEvictFirstPrefetch256, 4><<<blocks, 256, 0, s>>>(p, n16, out); break;
        default: return -1;
    }
    return static_cast<int>(cudaGetLastError());
#endif
}
