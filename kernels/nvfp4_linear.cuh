// The NVFP4 decode linear on tensor cores: out[m, n] = sum_k x[m, k] * w[n, k] for 1..64 activation
// rows x (bf16, [M, K]) and NVFP4 weights w (packed E2M1 [N, K/2], E4M3 scales [N, K/16], a float32
// tensor scale), every weight byte read from memory once for all rows. kernels/nvfp4_gemm.cu
// instantiates the shapes it ships; benchmarks/nvfp4_linear_variants.cu the ones it compares.
//
// Swap-AB: the weights are the A operand of mma.m16n8k16 (16 weight rows a tile), the activations its
// B operand (8 activation rows a tile), so a decode batch of 1..8 rows is one n8 tile and 64 rows are 8.
// A weight value is decoded in registers to bf16 and multiplied by its block scale there: E2M1 times
// E4M3 has at most 6 significant bits and magnitudes 2^-10..2688, so it is exact in bf16, and so is
// every product with a bf16 activation; the only rounding is the tensor core's fp32 accumulation.
//
// The k order inside an mma is free (a dot product does not care), as long as A and B agree. So each
// lane feeds the mma the weights it loaded (16 contiguous bytes = 32 elements a row, for a coalesced
// 64-byte run a row across the 4 lanes of a quad) in whatever pairs its decode makes, and builds the
// matching activation pairs:
//   kShift   bit placement, no table: E2M1's sign goes to bf16's sign bit and its exponent and mantissa
//            bits to bf16's two low exponent bits and top mantissa bit, giving the value times 2^-126
//            (code 1, 0.5, lands on a bf16 subnormal); the block scale is applied times 2^119 so a
//            decoded weight is E2M1 * scale * 2^-7, in bf16's normal range, and the output is scaled
//            by 2^7. Pairs are elements (i, i+4) of a 32-bit word; the activations are re-paired with
//            two byte permutes per mma.
//   kLut256  a byte (two elements) looked up in a table of bf16 pairs in shared memory, one copy per
//            lane so 32 lanes hit 32 banks; the byte is placed into the address with one byte permute
//            (entries 256 bytes apart: 64 KB). Pairs are the natural ones, so the activations' own
//            32-bit words are the B fragments.
//   kLut128  the same table with entries 128 bytes apart (32 KB), the address built with a shift and
//            a three-input logic op.
//   kRepacked the kShift bit placement on weights whose bits were rearranged once, when the weight was
//            prepared (repack_word): each 32-bit word's four natural pairs (2i, 2i+1) then come out with
//            a rotation and a mask each (one pair: a byte permute and two masks), 9 instructions a word
//            against about 15, and the activations' own words are the B fragments.
//   kTiled   kRepacked's decode on weights also laid out in the order the kernel reads them (tile_piece):
//            a step of 16 rows x 128 elements is 1 KB in one piece and a warp's steps follow each other,
//            so each load instruction reads 512 contiguous bytes and a warp streams one contiguous run,
//            where NVFP4's row-major layout has it read 16 rows 4 KB apart, 64 bytes of each a step;
//            the scales likewise, each lane's four scale bytes of a step in one 4-byte word.
//   kStepMajor kTiled's pieces ordered step by step (every tile's step s, then s + 1), so the warps of
//            all blocks, which run a step at a time together, read neighbouring kilobytes.
// Split-K: WK warps of a block split K and add their partial sums through shared memory, so 8192
// output rows make 256..512 blocks that fill 132 multiprocessors in one wave; every launch runs the
// same fixed shape (no run-time tuning) and sums in a fixed order, so results are deterministic.
// Every warp takes the same count of steps, so its loops are uniform and the table's base stays in a
// uniform register. Weight loads go straight to registers through a ring of U steps (U-1 steps in
// flight while one is decoded); the cache hint of those streamed loads is a template parameter.
// Cost, read off the SASS (nvcc 13.0, sm_90a), a warp-step of 2048 weight elements at 1..8 rows:
// about 172 instructions with kLut256 (32 table loads, 32 bf16x2 scale multiplies, 8 mma), 227 with
// kShift: 2.7 and 3.5 an element a lane. The CUDA-core GEMV (nvfp4_gemv.cuh) spends about 4, 1.5 of
// them conversions (cvt e4m3x2 -> f16x2, f16 -> f32), ahead of an fp32 FMA for every element.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <cuda_bf16.h>

#include "lowprec.cuh"

#define LOWPREC_HD __host__ __device__ __forceinline__

namespace lowprec::linear {

constexpr int kStepElements = 128;  // a step: 16 weight rows x 128 elements (64 bytes a row)
constexpr int kMaxRows = 64;        // activation rows: 8 n8 tiles

enum Decode : int { kShift = 0, kLut256 = 1, kLut128 = 2, kRepacked = 3, kTiled = 4, kStepMajor = 5 };
// How the streamed weight bytes are loaded: L1-cached; not allocated in L1; plus a 256-byte L2
// prefetch; not in L1 and evicted first from L2 (createpolicy), so reading them does not push other
// (possibly dirty) lines out of L2; cache-streaming (ld.cs); evict-first with the 256-byte prefetch;
// kAsync: cp.async (L2 only, 256-byte prefetch) into a ring of U steps in shared memory (WeightRing),
// so the steps in flight cost no registers (a register ring of U steps holds 8 RT registers a step).
enum Hint : int {
    kCached = 0,
    kNoL1 = 1,
    kNoL1Prefetch256 = 2,
    kEvictFirst = 3,
    kStreaming = 4,
    kEvictFirstPrefetch256 = 5,
    kAsync = 6
};

LOWPREC_HD uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t selector) {
#ifdef __CUDA_ARCH__
    return __byte_perm(a, b, selector);
#else
    const uint64_t bytes = (static_cast<uint64_t>(b) << 32) | a;
    uint32_t out = 0;
    for (int i = 0; i < 4; ++i) out |= static_cast<uint32_t>((bytes >> (8 * ((selector >> (4 * i)) & 7))) & 0xFF) << (8 * i);
    return out;
#endif
}

// Bit casts by memcpy: the compiler drops them, where building the halves one by one costs permutes.
LOWPREC_HD uint32_t bf16x2_bits(__nv_bfloat162 v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof(bits));
    return bits;
}

LOWPREC_HD __nv_bfloat162 bf16x2_from_bits(uint32_t bits) {
    __nv_bfloat162 v;
    memcpy(&v, &bits, sizeof(bits));
    return v;
}

LOWPREC_HD uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
    return bf16x2_bits(__hmul2(bf16x2_from_bits(a), bf16x2_from_bits(b)));
}

// Two E4M3 scales (the low 16 bits of `pair`: block 2c in the low byte) -> each times `factor`, as a
// bf16 pair holding it twice (both elements of a decoded pair share a block). Exact: an E4M3 value has
// 4 significant bits and `factor` is a power of two that keeps it in bf16's range.
LOWPREC_HD void scales_to_bf16x2(uint32_t pair, float factor, uint32_t& s0, uint32_t& s1) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(pair & 0xFFFFu), __NV_E4M3);
    const float2 f = __half22float2(__half2(h));
    s0 = bf16x2_bits(__floats2bfloat162_rn(f.x * factor, f.x * factor));
    s1 = bf16x2_bits(__floats2bfloat162_rn(f.y * factor, f.y * factor));
}

LOWPREC_HD uint32_t word_of(const uint4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// One byte (E2M1 codes of elements 2i and 2i+1) -> their exact values as a bf16 pair: a table entry.
LOWPREC_HD uint32_t lut_entry(uint32_t byte) {
    return bf16x2_bits(__floats2bfloat162_rn(e2m1_to_float(byte & 0xFu), e2m1_to_float(byte >> 4)));
}

// Where a decode's table lives. On the device, a 32-bit shared-memory address: the base stays in a
// uniform register and a lookup is one LDS [offset + base] (through a generic pointer it costs an add).
// On the host (the tests' emulation), plain memory.
struct SharedTable {
    uint32_t base;
    LOWPREC_HD uint32_t load(uint32_t offset) const {
#ifdef __CUDA_ARCH__
        uint32_t v;
        asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(base + offset));
        return v;
#else
        return 0;  // never used on the host
#endif
    }
};

struct HostTable {
    const unsigned char* data;
    LOWPREC_HD uint32_t load(uint32_t offset) const {
        uint32_t v;
        memcpy(&v, data + offset, sizeof(v));
        return v;
    }
};

template <int DEC>
struct Decoder;

template <>
struct Decoder<kShift> {
    static constexpr int kTableBytes = 0;
    static constexpr float kScaleFactor = 0x1p119f;  // undoes 2^-126 but for 2^-7 (kept for range)
    static constexpr float kOutFactor = 128.0f;       // the 2^7

    // Eight E2M1 codes (element i in nibble i) -> four bf16 pairs r[i] = (element i, element i+4), each
    // the value times 2^-126: sign bit 3 of a nibble -> bit 15 (31), bits 2..0 -> bits 8..6 (24..22).
    template <class Table>
    LOWPREC_HD static void decode(uint32_t q, uint32_t r[4], const Table&, uint32_t) {
        constexpr uint32_t kSign = 0x80008000u, kMag = 0x01C001C0u;
        r[0] = ((q << 12) & kSign) | ((q << 6) & kMag);
        r[1] = ((q << 8) & kSign) | ((q << 2) & kMag);
        r[2] = ((q << 4) & kSign) | ((q >> 2) & kMag);
        r[3] = (q & kSign) | ((q >> 6) & kMag);
    }

    // Activations for the mma that takes r[2h] (k 0..1 of each 8) and r[2h+1] (k 8..9): eight bf16
    // elements e0..e7 as four words (e0,e1) (e2,e3) (e4,e5) (e6,e7) -> (e_2h, e_2h+4), (e_2h+1, e_2h+5).
    LOWPREC_HD static void b_fragment(const uint4& xw, int h, uint32_t& b0, uint32_t& b1) {
        const uint32_t lo = h ? xw.y : xw.x, hi = h ? xw.w : xw.z;
        b0 = byte_perm(lo, hi, 0x5410);
        b1 = byte_perm(lo, hi, 0x7632);
    }
};

template <int STRIDE>
struct LutDecoder {
    static constexpr int kStride = STRIDE;  // bytes between a table's entries (32 lanes x 4 bytes used)
    static constexpr int kTableBytes = 256 * STRIDE;
    static constexpr float kScaleFactor = 1.0f;
    static constexpr float kOutFactor = 1.0f;

    // Where entry `entry` of lane `lane`'s copy lives: 32 lanes' copies side by side, one bank each.
    LOWPREC_HD static uint32_t slot(uint32_t entry, uint32_t lane) { return entry * STRIDE + 4 * lane; }

    // slot(byte `byte` of q, lane), lane4 = 4 * lane, built with one or two instructions.
    LOWPREC_HD static uint32_t offset(uint32_t q, int byte, uint32_t lane4) {
        if constexpr (STRIDE == 256) {
            return byte_perm(q, lane4, 0x7604u | (static_cast<uint32_t>(byte) << 4));
        } else {
            static_assert(STRIDE == 128, "tables are 128 or 256 bytes an entry");
            const uint32_t placed = byte == 0 ? (q << 7) : (q >> (8 * byte - 7));
            return (placed & 0x7F80u) | lane4;
        }
    }

    // Four bytes -> r[b] = (element 2b, element 2b+1), their plain values.
    template <class Table>
    LOWPREC_HD static void decode(uint32_t q, uint32_t r[4], const Table& table, uint32_t lane4) {
#pragma unroll
        for (int b = 0; b < 4; ++b) r[b] = table.load(offset(q, b, lane4));
    }

    // The natural pairs: the activations' own words (e_4h, e_4h+1) and (e_4h+2, e_4h+3).
    LOWPREC_HD static void b_fragment(const uint4& xw, int h, uint32_t& b0, uint32_t& b1) {
        b0 = h ? xw.z : xw.x;
        b1 = h ? xw.w : xw.y;
    }
};

template <>
struct Decoder<kLut256> : LutDecoder<256> {};
template <>
struct Decoder<kLut128> : LutDecoder<128> {};

// kRepacked's layout. Element e (0..7) of a word, nibble bits (m, e0, e1, s) = E2M1 bits 0..3, is stored at
// these bit positions. Natural pair i = (element 2i, element 2i + 1) is decoded into one bf16 pair by taking
// bf16 bits 6, 7, 8 (m, e0, e1: the kShift placement) and 15 (sign) of each half from: pair 0, its signs
// from the word itself and the rest from the word with bytes (0, 0, 2, 2); pairs 1, 2, 3, the word
// rotated right by 2, 12 and 6. A search over rotations and byte permutes (four of them, plus one mask a
// pair, one pair with two) found none cheaper than 9 instructions a word; every bit is used once.
LOWPREC_HD constexpr int repack_bit(int element, int bit) {
    constexpr int kBit[8][4] = {
        {6, 7, 0, 15},     {22, 23, 16, 31},  // pair 0: sign in place, the rest from bytes (0, 0, 2, 2)
        {8, 9, 10, 17},    {24, 25, 26, 1},   // pair 1: rotated right by 2
        {18, 19, 20, 27},  {2, 3, 4, 11},     // pair 2: by 12
        {12, 13, 14, 21},  {28, 29, 30, 5},   // pair 3: by 6
    };
    return kBit[element][bit];
}

// A word of eight E2M1 codes (element i in nibble i, as NVFP4 stores them) in kRepacked's layout.
LOWPREC_HD uint32_t repack_word(uint32_t q) {
    uint32_t out = 0;
#pragma unroll
    for (int e = 0; e < 8; ++e)
#pragma unroll
        for (int b = 0; b < 4; ++b) out |= ((q >> (4 * e + b)) & 1u) << repack_bit(e, b);
    return out;
}

LOWPREC_HD uint32_t rotate_right(uint32_t v, int n) {
#ifdef __CUDA_ARCH__
    return __funnelshift_r(v, v, n);
#else
    return (v >> n) | (v << (32 - n));
#endif
}

template <>
struct Decoder<kRepacked> {
    static constexpr int kTableBytes = 0;
    static constexpr float kScaleFactor = Decoder<kShift>::kScaleFactor;
    static constexpr float kOutFactor = Decoder<kShift>::kOutFactor;

    // A repacked word -> the four natural pairs r[i] = (element 2i, element 2i+1), each times 2^-126.
    template <class Table>
    LOWPREC_HD static void decode(uint32_t q, uint32_t r[4], const Table&, uint32_t) {
        constexpr uint32_t kSign = 0x80008000u, kMag = 0x01C001C0u, kBoth = kSign | kMag;
        r[0] = (q & kSign) | (byte_perm(q, 0u, 0x2200u) & kMag);
        r[1] = rotate_right(q, 2) & kBoth;
        r[2] = rotate_right(q, 12) & kBoth;
        r[3] = rotate_right(q, 6) & kBoth;
    }

    // The natural pairs, as LutDecoder's.
    LOWPREC_HD static void b_fragment(const uint4& xw, int h, uint32_t& b0, uint32_t& b1) {
        b0 = h ? xw.z : xw.x;
        b1 = h ? xw.w : xw.y;
    }
};

template <>
struct Decoder<kTiled> : Decoder<kRepacked> {};
template <>
struct Decoder<kStepMajor> : Decoder<kRepacked> {};

// kTiled's layout, for N rows (padded with zero codes and scales to a multiple of 16) and K a multiple of
// 128. Tile t (rows 16t..16t+15), step s (elements 128s..128s+127) is piece p = t K/128 + s: weight bytes
// [1024 p, +1024) and scale bytes [128 p, +128). In it, lane l = 4g + c (the kernel's lane of that step)
// finds row 16t + g + 8h's bytes 64s + 16c .. +15 (repack_word'd) at 16 (32h + l), and the scale bytes
// 8s + 2c, 8s + 2c + 1 of rows 16t + g and 16t + g + 8 at 4l .. 4l + 3. kStepMajor's is the same with
// p = s ceil(N/16) + t.
LOWPREC_HD int row_tiles(int N) { return (N + 15) / 16; }
LOWPREC_HD size_t tiled_weight_bytes(int N, int K) { return static_cast<size_t>(row_tiles(N)) * 8 * K; }
LOWPREC_HD size_t tiled_scale_bytes(int N, int K) { return static_cast<size_t>(row_tiles(N)) * K; }

// Lays out piece `piece` (tile t, step s, lane l: piece = (t K/128 + s) 32 + l) of NVFP4's row-major packed
// weights w [N, K/2] and scales ws [N, K/16] into kTiled's tw and tws: 32 weight bytes and 4 scale bytes.
// With step_major (kStepMajor), piece = (s ceil(N/16) + t) 32 + l and it goes to that place instead.
LOWPREC_HD void tile_piece(const unsigned char* w, const unsigned char* ws, int N, int K, size_t piece,
                           unsigned char* tw, unsigned char* tws, bool step_major = false) {
    const int lane = static_cast<int>(piece % 32);
    const size_t tile_step = piece / 32;
    const int steps = K / kStepElements, tiles = row_tiles(N);
    const int tile = static_cast<int>(step_major ? tile_step % tiles : tile_step / steps);
    const int step = static_cast<int>(step_major ? tile_step / tiles : tile_step % steps);
    const int g = lane >> 2, c = lane & 3;
    uint32_t scales = 0;
    for (int half = 0; half < 2; ++half) {
        const int row = 16 * tile + g + 8 * half;
        unsigned char* dst = tw + tile_step * 1024 + 16 * (32 * half + lane);
        for (int word = 0; word < 4; ++word) {
            uint32_t q = 0;
            if (row < N) memcpy(&q, w + static_cast<size_t>(row) * (K / 2) + 64 * step + 16 * c + 4 * word, 4);
            q = repack_word(q);
            memcpy(dst + 4 * word, &q, 4);
        }
        if (row < N) {
            const unsigned char* sp = ws + static_cast<size_t>(row) * (K / 16) + 8 * step + 2 * c;
            scales |= (static_cast<uint32_t>(sp[0]) | static_cast<uint32_t>(sp[1]) << 8) << (16 * half);
        }
    }
    memcpy(tws + tile_step * 128 + 4 * lane, &scales, 4);
}

// -- per-lane addressing -----------------------------------------------------------------------------
// Lane = 4 * g + t (g: the mma's group, t: its thread in the group). In step s, lane t of a quad owns
// chunk c = 4s + t of its rows: bytes 16c..16c+15, elements 32c..32c+31, scale bytes 2c and 2c+1.
// Its rows are the tile's g and g + 8; its activation row in n8 tile nt is 8 nt + g.
LOWPREC_HD int chunk_of(int step, int lane) { return 4 * step + (lane & 3); }

// Accumulator element i of tile (rt, nt) -> (weight row within the warp's 16 RT rows, activation row).
LOWPREC_HD int acc_row(int lane, int rt, int i) { return 16 * rt + (lane >> 2) + 8 * (i >> 1); }
LOWPREC_HD int acc_col(int lane, int nt, int i) { return 8 * nt + 2 * (lane & 3) + (i & 1); }

template <int RT>
struct Stage {
    uint4 q[RT][2];         // 16 weight bytes of rows g and g + 8 of each m16 tile
    uint32_t sc[RT][2];     // their two E4M3 block scales
};

#ifdef __CUDA_ARCH__
// The L2 policy of the evict-first hints. Pure (not volatile): computed once, not once a load.
__device__ __forceinline__ uint64_t evict_first_policy() {
    uint64_t policy;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    return policy;
}
#endif

template <int HINT>
LOWPREC_HD uint4 load_weights(const unsigned char* p) {
#ifdef __CUDA_ARCH__
    uint4 v;
    if constexpr (HINT == kCached) {
        asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    } else if constexpr (HINT == kNoL1) {
        asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    } else if constexpr (HINT == kNoL1Prefetch256 || HINT == kAsync) {  // kAsync's loads outside its ring
        asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    } else if constexpr (HINT == kEvictFirst) {
        const uint64_t policy = evict_first_policy();
        asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p), "l"(policy));
    } else if constexpr (HINT == kEvictFirstPrefetch256) {
        const uint64_t policy = evict_first_policy();
        asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p), "l"(policy));
    } else {
        static_assert(HINT == kStreaming, "unknown load hint");
        asm volatile("ld.global.cs.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    }
    return v;
#else
    return *reinterpret_cast<const uint4*>(p);
#endif
}

// Two scale bytes; kept in L1 (the next three steps of the quad read the rest of the sector), and with
// the weights' L2 priority under the evict-first hints.
template <int HINT>
LOWPREC_HD uint32_t load_scale_pair(const unsigned char* p) {
#ifdef __CUDA_ARCH__
    if constexpr (HINT == kEvictFirst || HINT == kEvictFirstPrefetch256) {
        const uint64_t policy = evict_first_policy();
        unsigned short v;
        asm volatile("ld.global.nc.L2::cache_hint.u16 %0, [%1], %2;" : "=h"(v) : "l"(p), "l"(policy));
        return v;
    } else {
        return __ldg(reinterpret_cast<const unsigned short*>(p));
    }
#else
    return *reinterpret_cast<const unsigned short*>(p);
#endif
}

LOWPREC_HD uint4 load_activations(const uint16_t* p) {
#ifdef __CUDA_ARCH__
    return __ldg(reinterpret_cast<const uint4*>(p));  // every warp of the block reads them: L1
#else
    return *reinterpret_cast<const uint4*>(p);
#endif
}

// One lane's pointers at its chunk of the current step: rows g and g + 8 of each m16 tile (rows past N
// re-read row N - 1, or in the tiled layouts a tile past the last re-reads the last; their sums are never
// stored), and its activation row in each n8 tile (rows past M re-read row M - 1: an mma's output column
// depends on its own B column only, and those columns are never stored). Steps u ahead are offsets from
// them: 128 activations a step, and of weights and scales 64 and 8 bytes (row-major), 1024 and 128
// (kTiled), or 1024 and 128 times the row tiles (kStepMajor, the one stride known only at run time).
template <int RT, int MT, int DEC>
struct LanePointers {
    static constexpr bool kTiledLayout = DEC == kTiled || DEC == kStepMajor;
    const unsigned char* w[RT][2];
    const unsigned char* s[RT][2];  // tiled: s[rt][0] at both rows' scales, s[rt][1] unused
    const uint16_t* x[MT];
    // Bytes from a step to the next (constants but for kStepMajor). size_t, as measured: with 32-bit strides
    // ptxas allocated the 16-row shape 157 registers instead of 211 and the gate caught it 10% slower
    // (1.769x against 1.956x, 228ecde, 2026-12-01).
    size_t weight_step, scale_step;

    LOWPREC_HD LanePointers(const uint16_t* acts, const unsigned char* weights, const unsigned char* scales,
                            int first_row, int first_step, int lane, int M, int N, int K) {
        const int chunk = chunk_of(first_step, lane);
        weight_step = DEC == kStepMajor ? static_cast<size_t>(row_tiles(N)) * 1024 : kTiledLayout ? 1024 : 64;
        scale_step = DEC == kStepMajor ? static_cast<size_t>(row_tiles(N)) * 128 : kTiledLayout ? 128 : 8;
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
            if constexpr (kTiledLayout) {
                // A tile past the last (N not a multiple of the block's rows) re-reads the last: its sums
                // are never stored.
                int tile = first_row / 16 + rt;
                tile = tile < row_tiles(N) ? tile : row_tiles(N) - 1;
                const size_t tile_step = DEC == kStepMajor
                                             ? static_cast<size_t>(first_step) * row_tiles(N) + tile
                                             : static_cast<size_t>(tile) * (K / kStepElements) + first_step;
                w[rt][0] = weights + tile_step * 1024 + 16 * lane;
                w[rt][1] = w[rt][0] + 512;
                s[rt][0] = s[rt][1] = scales + tile_step * 128 + 4 * lane;
            } else {
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    int row = first_row + 16 * rt + (lane >> 2) + 8 * half;
                    row = row < N ? row : N - 1;
                    w[rt][half] = weights + static_cast<size_t>(row) * (K / 2) + 16 * chunk;
                    s[rt][half] = scales + static_cast<size_t>(row) * (K / 16) + 2 * chunk;
                }
            }
        }
#pragma unroll
        for (int nt = 0; nt < MT; ++nt) {
            int m = 8 * nt + (lane >> 2);
            m = m < M ? m : M - 1;
            x[nt] = acts + static_cast<size_t>(m) * K + 32 * chunk;
        }
    }

    LOWPREC_HD void advance(int steps) {
#pragma unroll
        for (int rt = 0; rt < RT; ++rt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                w[rt][half] += weight_step * steps;
                s[rt][half] += scale_step * steps;
            }
#pragma unroll
        for (int nt = 0; nt < MT; ++nt) x[nt] += kStepElements * steps;
    }
};

// A lane's four scale bytes of a step in kTiled's layout (rows g and g + 8), with load_scale_pair's hints.
template <int HINT>
LOWPREC_HD uint32_t load_scale_quad(const unsigned char* p) {
#ifdef __CUDA_ARCH__
    if constexpr (HINT == kEvictFirst || HINT == kEvictFirstPrefetch256) {
        const uint64_t policy = evict_first_policy();
        uint32_t v;
        asm volatile("ld.global.nc.L2::cache_hint.u32 %0, [%1], %2;" : "=r"(v) : "l"(p), "l"(policy));
        return v;
    } else {
        return __ldg(reinterpret_cast<const unsigned int*>(p));
    }
#else
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
#endif
}

// Step `ahead`'s two scale pairs of tile rt into st.
template <int HINT, int RT, int MT, int DEC>
LOWPREC_HD void load_scales(Stage<RT>& st, const LanePointers<RT, MT, DEC>& p, int rt, int ahead) {
    if constexpr (LanePointers<RT, MT, DEC>::kTiledLayout) {
        const uint32_t v = load_scale_quad<HINT>(p.s[rt][0] + p.scale_step * ahead);
        st.sc[rt][0] = v & 0xFFFFu;
        st.sc[rt][1] = v >> 16;
    } else {
#pragma unroll
        for (int half = 0; half < 2; ++half) st.sc[rt][half] = load_scale_pair<HINT>(p.s[rt][half] + p.scale_step * ahead);
    }
}

template <int HINT, int RT, int MT, int DEC>
LOWPREC_HD void load_stage(Stage<RT>& st, const LanePointers<RT, MT, DEC>& p, int ahead) {
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) st.q[rt][half] = load_weights<HINT>(p.w[rt][half] + p.weight_step * ahead);
        load_scales<HINT>(st, p, rt, ahead);
    }
}

// One step of one lane: decode its weights, build A and B fragments, and hand each (rt, nt) pair to
// `mma` (the tensor core on the device; the tests' emulation on the host records them instead).
template <int DEC, int RT, int MT, int PD, class Table, class Mma>
LOWPREC_HD void compute_stage(const Stage<RT>& st, const LanePointers<RT, MT, PD>& p, int ahead, int lane,
                              const Table& table, Mma& mma) {
    using D = Decoder<DEC>;
    const uint32_t lane4 = static_cast<uint32_t>(lane) * 4u;
    uint32_t scale[RT][2][2];  // [rt][row g / g+8][block of the chunk]
#pragma unroll
    for (int rt = 0; rt < RT; ++rt)
#pragma unroll
        for (int half = 0; half < 2; ++half)
            scales_to_bf16x2(st.sc[rt][half], D::kScaleFactor, scale[rt][half][0], scale[rt][half][1]);
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // the 32-bit word of the chunk: elements 8j..8j+7
        // A fragments of both mmas of this word (h = 0, 1), scaled: a0a1 row g, k 2t..2t+1; a2a3 row g+8;
        // a4a5 row g, k 2t+8..2t+9; a6a7 row g+8.
        uint32_t a[RT][2][4];
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
            uint32_t rg[4], rg8[4];
            D::decode(word_of(st.q[rt][0], j), rg, table, lane4);
            D::decode(word_of(st.q[rt][1], j), rg8, table, lane4);
            const uint32_t sg = scale[rt][0][j >> 1], sg8 = scale[rt][1][j >> 1];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                a[rt][h][0] = mul_bf16x2(rg[2 * h], sg);
                a[rt][h][1] = mul_bf16x2(rg8[2 * h], sg8);
                a[rt][h][2] = mul_bf16x2(rg[2 * h + 1], sg);
                a[rt][h][3] = mul_bf16x2(rg8[2 * h + 1], sg8);
            }
        }
        // One n8 tile of activations at a time keeps 64 rows' fragments out of the registers.
#pragma unroll
        for (int nt = 0; nt < MT; ++nt) {
            const uint4 xw = load_activations(p.x[nt] + kStepElements * ahead + 8 * j);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                uint32_t b[2];
                D::b_fragment(xw, h, b[0], b[1]);
#pragma unroll
                for (int rt = 0; rt < RT; ++rt) mma(rt, nt, a[rt][h], b);
            }
        }
    }
}

// The first U steps' loads (of `count`), issued before anything waits on them.
template <int HINT, int RT, int MT, int PD, int U>
LOWPREC_HD void prime_ring(Stage<RT> (&ring)[U], const LanePointers<RT, MT, PD>& p, int count) {
#pragma unroll
    for (int u = 0; u < U; ++u)
        if (u < count) load_stage<HINT>(ring[u], p, u);
}

// kAsync's ring: U steps of a lane's weight bytes (RT tiles x rows g and g + 8, 16 bytes each) in shared
// memory, filled by cp.async, one commit group a step. Every lane reads back only the bytes it copied, so
// a lane's cp.async.wait_group is all the synchronization it needs. On the host (the tests' emulation) a
// copy is made at once and waiting does nothing; the slots and the order of steps are the device's.
template <int RT, int U>
struct WeightRing {
    static constexpr int kLaneBytes = U * RT * 2 * 16;
    static constexpr int kWarpBytes = 32 * kLaneBytes;
#ifdef __CUDA_ARCH__
    uint32_t base;  // shared address of this lane's first 16 bytes: slot u, tile rt, half h 512 bytes apart
    __device__ uint32_t at(int slot, int rt, int half) const { return base + ((slot * RT + rt) * 2 + half) * 512; }
    __device__ void issue(int slot, int rt, int half, const unsigned char* src) {
        asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;" : : "r"(at(slot, rt, half)), "l"(src) : "memory");
    }
    __device__ uint4 read(int slot, int rt, int half) const {
        uint4 v;
        asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                     : "r"(at(slot, rt, half)) : "memory");
        return v;
    }
    __device__ static void commit() { asm volatile("cp.async.commit_group;" : : : "memory"); }
    template <int N>
    __device__ static void wait() { asm volatile("cp.async.wait_group %0;" : : "n"(N) : "memory"); }
#else
    uint4 data[U][RT][2];
    void issue(int slot, int rt, int half, const unsigned char* src) { memcpy(&data[slot][rt][half], src, 16); }
    uint4 read(int slot, int rt, int half) const { return data[slot][rt][half]; }
    static void commit() {}
    template <int N>
    static void wait() {}
#endif
};

// Step `ahead` of p into slot `slot`: the weights by cp.async, the scales into registers as load_stage's.
template <int RT, int MT, int PD, int U>
LOWPREC_HD void issue_stage(WeightRing<RT, U>& ring, int slot, Stage<RT>& scales, const LanePointers<RT, MT, PD>& p,
                            int ahead) {
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) ring.issue(slot, rt, half, p.w[rt][half] + p.weight_step * ahead);
        load_scales<kAsync>(scales, p, rt, ahead);
    }
}

template <int RT, int U>
LOWPREC_HD void read_stage(const WeightRing<RT, U>& ring, int slot, Stage<RT>& st) {
#pragma unroll
    for (int rt = 0; rt < RT; ++rt)
#pragma unroll
        for (int half = 0; half < 2; ++half) st.q[rt][half] = ring.read(slot, rt, half);
}

// A warp's `count` steps through the shared-memory ring: U steps issued first (one group each, empty past
// `count`), then step i waits until at most U - 1 groups are pending (its own is the (i + 1)-th), is read
// and computed, and its slot takes step i + U. `scales[u].q` is unused (its weights are in the ring).
template <int DEC, int RT, int MT, int PD, int U, class Table, class Mma>
LOWPREC_HD void run_steps_async(LanePointers<RT, MT, PD>& p, int count, int lane, const Table& table, Mma& mma,
                                WeightRing<RT, U>& ring) {
    Stage<RT> scales[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
        if (u < count) issue_stage(ring, u, scales[u], p, u);
        ring.commit();
    }
    int done = 0;
    for (; done + U <= count; done += U) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            ring.template wait<U - 1>();
            Stage<RT> st = scales[u];
            read_stage(ring, u, st);
            compute_stage<DEC>(st, p, u, lane, table, mma);
            if (done + u + U < count) issue_stage(ring, u, scales[u], p, u + U);
            ring.commit();
        }
        p.advance(U);
    }
    ring.template wait<0>();
#pragma unroll
    for (int u = 0; u < U; ++u)
        if (done + u < count) {
            Stage<RT> st = scales[u];
            read_stage(ring, u, st);
            compute_stage<DEC>(st, p, u, lane, table, mma);
        }
}

// A warp's `count` steps after prime_ring: the register ring of U steps, then the tail.
template <int DEC, int HINT, int RT, int MT, int PD, int U, class Table, class Mma>
LOWPREC_HD void run_steps(LanePointers<RT, MT, PD>& p, int count, int lane, const Table& table, Mma& mma,
                          Stage<RT> (&ring)[U]) {
    int done = 0;
    for (; done + U <= count; done += U) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            compute_stage<DEC>(ring[u], p, u, lane, table, mma);
            if (done + u + U < count) load_stage<HINT>(ring[u], p, u + U);
        }
        p.advance(U);
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
        if (done + u < count) compute_stage<DEC>(ring[u], p, u, lane, table, mma);
}

// Fill the table: entry e of lane l at byte e * stride + 4 l. Each lane computes the entries of its warp's
// share once and broadcasts them, so every store of a warp writes 32 banks.
template <int DEC>
__device__ __forceinline__ void fill_table(unsigned char* table, int threads) {
    if constexpr (Decoder<DEC>::kTableBytes > 0) {
        const int lane = threadIdx.x & 31;
        for (int first = threadIdx.x - lane; first < 256; first += threads) {
            const uint32_t mine = lut_entry(static_cast<uint32_t>(first + lane));
#pragma unroll 8
            for (int i = 0; i < 32; ++i) {
                const uint32_t v = __shfl_sync(0xFFFFFFFFu, mine, i);
                *reinterpret_cast<uint32_t*>(table + Decoder<DEC>::slot(first + i, lane)) = v;
            }
        }
    }
}

#ifdef __CUDACC__
template <int RT, int MT>
struct TensorCoreMma {
    float acc[RT][MT][4];

    __device__ __forceinline__ void operator()(int rt, int nt, const uint32_t a[4], const uint32_t b[2]) {
        float* d = acc[rt][nt];
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
};
#endif

template <int MT_, int RT_, int WR_, int WK_, int U_, int DEC_, int HINT_, int MIN_BLOCKS_>
struct Config {
    static constexpr int kMT = MT_;     // n8 tiles of activation rows: M <= 8 MT
    static constexpr int kRT = RT_;     // m16 tiles of weight rows a warp
    static constexpr int kWR = WR_;     // warps of a block along the weight rows
    static constexpr int kWK = WK_;     // warps of a block along K (summed through shared memory)
    static constexpr int kU = U_;       // steps in the register ring
    static constexpr int kDecode = DEC_;
    static constexpr int kHint = HINT_;
    static constexpr int kMinBlocks = MIN_BLOCKS_;
    static constexpr int kThreads = 32 * WR_ * WK_;
    static constexpr int kRowsPerBlock = 16 * RT_ * WR_;
    static constexpr int kReduceBytes = WK_ > 1 ? WR_ * WK_ * RT_ * MT_ * 4 * 32 * 4 : 0;
    static constexpr int kTableBytes = Decoder<DEC_>::kTableBytes;
    static constexpr int kRingBytes = HINT_ == kAsync ? WR_ * WK_ * WeightRing<RT_, U_>::kWarpBytes : 0;
    static constexpr int kSmemBytes = kTableBytes > kReduceBytes ? (kTableBytes > kRingBytes ? kTableBytes : kRingBytes)
                                                                 : (kReduceBytes > kRingBytes ? kReduceBytes : kRingBytes);
    static_assert(kTableBytes == 0 || kRingBytes == 0, "a table decode and the shared-memory ring share no memory");
};

// The shapes kernels/nvfp4_gemm.cu ships, by n8 tiles of activation rows (1..8, ..16, ..32, ..64 rows).
// Fixed per build (no run-time tuning), so every process of a gate runs the same kernel; each the fastest
// correct variant of its row range that does not spill in benchmarks/nvfp4_linear_variants.py on an H200
// (2026-12-01, 8192x8192, against BF16 F.linear, the geometric mean over the range's row counts). All read
// one layout, since a weight is prepared once for every batch size: kStepMajor, where 1 row measured 2.57x,
// 16 rows 1.97x, 32 rows 1.51x and 64 rows 0.93x, against 2.51x, 1.87x, 1.48x and 0.92x for kTiled's best
// in the same sweep and 2.30x, 1.66x, 1.29x and 0.87x for the row-major layout's in an earlier one. The
// bit-placement decode is exact there: Hopper's BF16 multiply keeps the subnormal inputs it relies on.
// 1..16 rows since the ninth session (2026-12-01): K split over 8 warps, no ring (each warp loads a step,
// then computes it), twice the warps an SM at the registers the 4-warp shapes had for one warp's ring: at
// 1..8 rows 62 registers, four 256-thread blocks, 32 warps an SM where the 2-step ring (119 registers)
// had 16; at 9..16 rows 127 registers, two blocks, 16 warps where it (211) had 8. The warps, not a ring,
// keep the loads in flight. 1 row 16.99 and 17.15 us (2.63x, 2.64x) against 17.57 and 17.79 us (2.54x,
// 2.55x) in sweeps on two H200s; 16 rows 19.89 us (2.26x) against 22.91 us (1.97x); ncu (caches flushed
// clean) read the 1-row 8-warp shape with a 2-step ring in 13.6 us against 15.2 us for the 4-warp one (the
// shape shipped, without the ring, was not profiled). At 17..32 rows the 8-warp shape with no ring measured
// 1.54x against 1.50x in one sweep, but spills (16 bytes at 128 registers): not shipped.
template <int MT>
struct ShippedConfig;
template <>
struct ShippedConfig<1> { using type = Config<1, 1, 1, 8, 1, kStepMajor, kNoL1, 4>; };
template <>
struct ShippedConfig<2> { using type = Config<2, 2, 1, 8, 1, kStepMajor, kNoL1Prefetch256, 2>; };
template <>
struct ShippedConfig<4> { using type = Config<4, 2, 1, 4, 2, kStepMajor, kNoL1Prefetch256, 2>; };
template <>
struct ShippedConfig<8> { using type = Config<8, 2, 1, 4, 2, kStepMajor, kNoL1Prefetch256, 2>; };
template <int MT>
using Shipped = typename ShippedConfig<MT>::type;

// The block's first weight row.
template <class C>
LOWPREC_HD int block_first_row(int block) { return block * C::kRowsPerBlock; }

// All of warp wk's work along K: every warp takes the same count of steps (K / 128 / WK), so its loops
// are uniform (ptxas then keeps the table's base in a uniform register: one instruction less a lookup),
// and the first K / 128 % WK warps take one step more at the end. `primed` runs once the first loads
// are in flight (the kernel fills its table there; kAsync, which has no table, runs it first).
// kAsync's ring for this lane starts at shared address `ring_base` (unused otherwise, and on the host).
template <class C, class Table, class Mma, class Primed>
LOWPREC_HD void warp_steps(const uint16_t* x, const unsigned char* w, const unsigned char* ws, int first_row, int wk,
                           int lane, int M, int N, int K, const Table& table, Mma& mma, uint32_t ring_base,
                           Primed&& primed) {
    constexpr int RT = C::kRT, MT = C::kMT;
    const int per_warp = K / kStepElements / C::kWK;
    const int extra = K / kStepElements % C::kWK;
    LanePointers<RT, MT, C::kDecode> p(x, w, ws, first_row, wk * per_warp, lane, M, N, K);
    if constexpr (C::kHint == kAsync) {
        WeightRing<RT, C::kU> ring;
#ifdef __CUDA_ARCH__
        ring.base = ring_base;
#else
        (void)ring_base;
#endif
        primed();
        run_steps_async<C::kDecode>(p, per_warp, lane, table, mma, ring);
    } else {
        Stage<RT> ring[C::kU];
        prime_ring<C::kHint>(ring, p, per_warp);
        primed();
        run_steps<C::kDecode, C::kHint>(p, per_warp, lane, table, mma, ring);
    }
    if (wk < extra) {
        const LanePointers<RT, MT, C::kDecode> last(x, w, ws, first_row, C::kWK * per_warp + wk, lane, M, N, K);
        Stage<RT> st;
        load_stage<C::kHint>(st, last, 0);
        compute_stage<C::kDecode>(st, last, 0, lane, table, mma);
    }
}

#ifdef __CUDACC__
// `programmatic`: launched as a programmatic dependent of the kernel before it (lowprec.cuh), which may still
// run: the kernel waits for it before it reads or writes anything, so what it gains is its blocks launched and
// resident while that kernel finishes. Asking for the warp's weight bytes in L2 before the wait made the decode
// step's NVFP4 linears slower (cbc79e3: the NVFP4 strategies' steps 1.5-3.1% slower than launched ordinarily;
// asking for only the first step's bytes was no faster than asking for none: decode-programmatic-launches-h200-
// 2026-12-02.md). Launched ordinarily it skips the wait, so that path runs the instructions it ran before.
template <class C>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks)
    nvfp4_linear_kernel(const uint16_t* __restrict__ x, const unsigned char* __restrict__ w,
                        const unsigned char* __restrict__ ws, const float* __restrict__ gw, int gw_stride,
                        float* __restrict__ out, int M, int N, int K, bool programmatic) {
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int RT = C::kRT, MT = C::kMT;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wr = warp % C::kWR, wk = warp / C::kWR;
    const int first_row = block_first_row<C>(blockIdx.x) + wr * 16 * RT;
    if (programmatic) {
        wait_for_prior_grid();
        allow_dependent_grid();
    }

    TensorCoreMma<RT, MT> mma;
#pragma unroll
    for (int rt = 0; rt < RT; ++rt)
#pragma unroll
        for (int nt = 0; nt < MT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) mma.acc[rt][nt][i] = 0.f;
    const SharedTable table{static_cast<uint32_t>(__cvta_generic_to_shared(smem))};
    const uint32_t ring_base = table.base + warp * WeightRing<RT, C::kU>::kWarpBytes + lane * 16;
    warp_steps<C>(x, w, ws, first_row, wk, lane, M, N, K, table, mma, ring_base, [&] {
        // The table is written while the first steps' loads are in flight.
        fill_table<C::kDecode>(smem, C::kThreads);
        if constexpr (C::kTableBytes > 0) __syncthreads();
    });

    // Row n's tensor scale is gw[n * gw_stride]: one scale (stride 0), or one a row (1: weights quantized
    // apart and stacked, as q, k, v are merged).
    const auto scale = [&](int row) {
        return gw[static_cast<size_t>(row) * gw_stride] * Decoder<C::kDecode>::kOutFactor;
    };
    float* red = reinterpret_cast<float*>(smem);
    constexpr int kPerLane = RT * MT * 4;
    if constexpr (C::kWK > 1) {
        // Every warp is done with the table or its ring, which the sums now overwrite.
        if constexpr (C::kTableBytes > 0 || C::kRingBytes > 0) __syncthreads();
#pragma unroll
        for (int rt = 0; rt < RT; ++rt)
#pragma unroll
            for (int nt = 0; nt < MT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    red[((wr * C::kWK + wk) * kPerLane + (rt * MT + nt) * 4 + i) * 32 + lane] = mma.acc[rt][nt][i];
        __syncthreads();
        // Warp (wr, wk) stores the elements e = wk, wk + WK, ... of its row group, summed in wk order.
        for (int e = wk; e < kPerLane; e += C::kWK) {
            float v = 0.f;
            for (int k = 0; k < C::kWK; ++k) v += red[((wr * C::kWK + k) * kPerLane + e) * 32 + lane];
            const int rt = e / (MT * 4), nt = (e / 4) % MT, i = e % 4;
            const int row = first_row + acc_row(lane, rt, i), m = acc_col(lane, nt, i);
            if (row < N && m < M) out[static_cast<size_t>(m) * N + row] = v * scale(row);
        }
    } else {
#pragma unroll
        for (int rt = 0; rt < RT; ++rt)
#pragma unroll
            for (int nt = 0; nt < MT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int row = first_row + acc_row(lane, rt, i), m = acc_col(lane, nt, i);
                    if (row < N && m < M) out[static_cast<size_t>(m) * N + row] = mma.acc[rt][nt][i] * scale(row);
                }
    }
}

// kRepacked's weights from NVFP4's packed bytes, word by word (done once, when a weight is prepared).
__global__ void repack_kernel(const uint32_t* __restrict__ in, uint32_t* __restrict__ out, size_t words) {
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < words; i += stride)
        out[i] = repack_word(in[i]);
}

inline cudaError_t repack(const void* in, void* out, size_t words, cudaStream_t stream) {
    if (reinterpret_cast<uintptr_t>(in) % 4 || reinterpret_cast<uintptr_t>(out) % 4) return cudaErrorInvalidValue;
    if (words == 0) return cudaSuccess;
    const size_t blocks = std::min<size_t>((words + 255) / 256, 4096);
    repack_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(static_cast<const uint32_t*>(in),
                                                                       static_cast<uint32_t*>(out), words);
    return cudaGetLastError();
}

// kTiled's (or with step_major kStepMajor's) weights and scales from NVFP4's row-major ones (done once, when a
// weight is prepared): tw holds tiled_weight_bytes(N, K), tws tiled_scale_bytes(N, K).
__global__ void tile_kernel(const unsigned char* __restrict__ w, const unsigned char* __restrict__ ws, int N, int K,
                            unsigned char* __restrict__ tw, unsigned char* __restrict__ tws, size_t pieces,
                            bool step_major) {
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < pieces; i += stride)
        tile_piece(w, ws, N, K, i, tw, tws, step_major);
}

inline cudaError_t tile(const void* w, const void* ws, int N, int K, void* tw, void* tws, cudaStream_t stream,
                        bool step_major = false) {
    if (N < 1 || K < kStepElements || K % kStepElements != 0) return cudaErrorInvalidValue;
    const size_t pieces = static_cast<size_t>(row_tiles(N)) * (K / kStepElements) * 32;
    const size_t blocks = std::min<size_t>((pieces + 255) / 256, 4096);
    tile_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        static_cast<const unsigned char*>(w), static_cast<const unsigned char*>(ws), N, K,
        static_cast<unsigned char*>(tw), static_cast<unsigned char*>(tws), pieces, step_major);
    return cudaGetLastError();
}

// Shared memory above 48 KB and the carveout for the tables, set once a device: the first launch is
// eager (a CUDA graph's capture comes after one), so no capture ever sees these calls.
template <class C>
cudaError_t configure_once() {
    static std::atomic<unsigned> configured{0};  // one bit a device (devices past 31: every launch)
    int device = 0;
    cudaError_t st = cudaGetDevice(&device);
    if (st != cudaSuccess) return st;
    const unsigned bit = device < 32 ? 1u << device : 0u;
    if (bit & configured.load(std::memory_order_relaxed)) return cudaSuccess;
    const auto kernel = nvfp4_linear_kernel<C>;
    if constexpr (C::kSmemBytes > 48 * 1024) {
        st = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes);
        if (st != cudaSuccess) return st;
    }
    if constexpr (C::kTableBytes > 0 || C::kRingBytes > 0) {
        // Shared memory for kMinBlocks blocks a multiprocessor (each with the 1 KB the system reserves),
        // the rest left to L1, where the activations are reused.
        int per_sm = 0;
        st = cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
        if (st != cudaSuccess) return st;
        const long need = static_cast<long>(C::kMinBlocks) * (C::kSmemBytes + 1024);
        const int percent = per_sm > 0 ? static_cast<int>(std::min<long>(100, (100 * need + per_sm - 1) / per_sm)) : 100;
        st = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, percent);
        if (st != cudaSuccess) return st;
    }
    configured.fetch_or(bit, std::memory_order_relaxed);
    return cudaSuccess;
}

// Launch one configuration: M <= 8 MT activation rows, K a multiple of 128, 16-byte aligned rows. `programmatic`:
// as a programmatic dependent of the kernel before it (the kernel's comment).
template <class C>
cudaError_t launch(const void* x, const void* w, const void* ws, const void* gw, int gw_stride, void* out, int M, int N,
                   int K, cudaStream_t stream, bool programmatic = false) {
    if (M < 1 || M > 8 * C::kMT || N < 1 || K < kStepElements || K % kStepElements != 0) return cudaErrorInvalidValue;
    const cudaError_t st = configure_once<C>();
    if (st != cudaSuccess) return st;
    return launch_kernel(nvfp4_linear_kernel<C>, dim3((N + C::kRowsPerBlock - 1) / C::kRowsPerBlock),
                         dim3(C::kThreads), C::kSmemBytes, stream, programmatic, x, w, ws, gw, gw_stride, out, M, N,
                         K, programmatic);
}
#endif

}  // namespace lowprec::linear
