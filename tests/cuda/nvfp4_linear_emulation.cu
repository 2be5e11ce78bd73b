// Host-only check of kernels/nvfp4_linear.cuh's data path, for a machine with nvcc and no GPU: every lane
// of every warp runs the kernel's own per-lane code (pointers, register ring, decode, scales, fragments)
// on the CPU, with an mma that follows PTX's m16n8k16 fragment layout (rows groupID and groupID + 8,
// columns 2 * threadID_in_group + {0, 1} and + 8) instead of the tensor core; the blocks' split-K sums
// and the stores follow the kernel's mapping. The result is compared with float64 of the dequantized
// operands (E2M1 and E4M3 decoded here independently of the kernel's decodes).
//
//   nvfp4_linear_emulation            # runs every case below; exit status 0 when all match
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "nvfp4_linear.cuh"

using namespace lowprec::linear;

namespace {

struct MmaCall {
    int rt, nt;
    uint32_t a[4], b[2];
};

struct Recorder {
    std::vector<MmaCall>* calls;
    void operator()(int rt, int nt, const uint32_t a[4], const uint32_t b[2]) {
        calls->push_back({rt, nt, {a[0], a[1], a[2], a[3]}, {b[0], b[1]}});
    }
};

float bf16_to_float(uint32_t bits16) {
    uint32_t u = bits16 << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

double half_of(uint32_t word, int i) { return bf16_to_float(i ? word >> 16 : word & 0xFFFFu); }

double e2m1_value(uint32_t code) {
    static const double mag[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};
    return (code & 8u) ? -mag[code & 7u] : mag[code & 7u];
}

double e4m3_value(uint32_t byte) {
    const int e = (byte >> 3) & 0xF, m = byte & 7;
    const double v = e ? std::ldexp(1.0 + m / 8.0, e - 7) : std::ldexp(m / 8.0, -6);
    return (byte & 0x80u) ? -v : v;
}

// One mma.m16n8k16 over the 32 lanes' fragments, added to each lane's four accumulators.
void emulate_mma(const MmaCall* lanes[32], double acc[32][4]) {
    double A[16][16], B[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane & 3;
        const uint32_t* a = lanes[lane]->a;
        for (int i = 0; i < 2; ++i) {
            A[g][2 * t + i] = half_of(a[0], i);
            A[g + 8][2 * t + i] = half_of(a[1], i);
            A[g][2 * t + 8 + i] = half_of(a[2], i);
            A[g + 8][2 * t + 8 + i] = half_of(a[3], i);
            B[2 * t + i][g] = half_of(lanes[lane]->b[0], i);
            B[2 * t + 8 + i][g] = half_of(lanes[lane]->b[1], i);
        }
    }
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 4; ++i) {
            const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
            double d = 0;
            for (int k = 0; k < 16; ++k) d += A[row][k] * B[k][col];
            acc[lane][i] += d;
        }
    }
}

struct Problem {
    int M, N, K;
    std::vector<uint16_t> x;
    std::vector<unsigned char> w, ws;
    float global;
};

Problem make_problem(int M, int N, int K, unsigned seed) {
    std::mt19937 rng(seed);
    Problem p{M, N, K, std::vector<uint16_t>(static_cast<size_t>(M) * K), std::vector<unsigned char>(static_cast<size_t>(N) * K / 2),
              std::vector<unsigned char>(static_cast<size_t>(N) * K / 16), 0.37f};
    std::normal_distribution<float> normal(0.f, 1.f);
    std::uniform_int_distribution<int> byte(0, 255), scale(0, 0x7E), pick(0, 15);
    for (auto& v : p.x) {
        float f = normal(rng) * (pick(rng) == 0 ? 1e3f : 1.f);
        if (pick(rng) == 0) f = 0.f;
        uint32_t u;
        memcpy(&u, &f, 4);
        v = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);  // round to nearest even
    }
    for (auto& b : p.w) b = static_cast<unsigned char>(byte(rng));
    // Every E4M3 class: zero, subnormal and normal scales (no NaN: the format never stores one).
    for (auto& s : p.ws) s = static_cast<unsigned char>(pick(rng) == 0 ? pick(rng) % 8 : scale(rng));
    return p;
}

std::vector<double> reference(const Problem& p) {
    std::vector<double> out(static_cast<size_t>(p.M) * p.N, 0.0);
    for (int m = 0; m < p.M; ++m)
        for (int n = 0; n < p.N; ++n) {
            double acc = 0;
            for (int k = 0; k < p.K; ++k) {
                const uint32_t byte = p.w[static_cast<size_t>(n) * (p.K / 2) + k / 2];
                const double wv = e2m1_value(k % 2 ? byte >> 4 : byte & 0xF) *
                                  e4m3_value(p.ws[static_cast<size_t>(n) * (p.K / 16) + k / 16]);
                acc += wv * bf16_to_float(p.x[static_cast<size_t>(m) * p.K + k]);
            }
            out[static_cast<size_t>(m) * p.N + n] = acc * p.global;
        }
    return out;
}

// The kernel for config C, block by block and warp by warp, every lane on the host.
template <class C>
std::vector<float> emulate(const Problem& p) {
    constexpr int RT = C::kRT, MT = C::kMT;
    using D = Decoder<C::kDecode>;
    std::vector<unsigned char> table(D::kTableBytes > 0 ? D::kTableBytes : 4);
    if constexpr (D::kTableBytes > 0)
        for (uint32_t e = 0; e < 256; ++e)
            for (uint32_t lane = 0; lane < 32; ++lane) {
                const uint32_t v = lut_entry(e);
                memcpy(table.data() + D::slot(e, lane), &v, 4);
            }
    // kRepacked reads weights prepared once by repack_word, as the launcher's caller prepares them.
    std::vector<unsigned char> weights = p.w, scales = p.ws;
    if constexpr (C::kDecode == kTiled || C::kDecode == kStepMajor) {
        // Filled with a canary, then laid out twice: a byte the layout never writes keeps the canary in
        // both; every byte must be written (the canary itself can be a written value, hence two).
        std::vector<unsigned char> canary[2][2];
        for (int pass = 0; pass < 2; ++pass) {
            weights.assign(tiled_weight_bytes(p.N, p.K), pass ? 0x11 : 0xEE);
            scales.assign(tiled_scale_bytes(p.N, p.K), pass ? 0x11 : 0xEE);
            const size_t pieces = static_cast<size_t>(row_tiles(p.N)) * (p.K / kStepElements) * 32;
            for (size_t i = 0; i < pieces; ++i)
                tile_piece(p.w.data(), p.ws.data(), p.N, p.K, i, weights.data(), scales.data(), C::kDecode == kStepMajor);
            canary[pass][0] = weights;
            canary[pass][1] = scales;
        }
        if (canary[0][0] != canary[1][0] || canary[0][1] != canary[1][1]) {
            std::printf("FAIL   %-44s a byte of the layout was never written\n", "tile_piece");
            return std::vector<float>(static_cast<size_t>(p.M) * p.N, NAN);
        }
    }
    if constexpr (C::kDecode == kRepacked)
        for (size_t i = 0; i + 4 <= weights.size(); i += 4) {
            uint32_t word;
            memcpy(&word, weights.data() + i, 4);
            word = repack_word(word);
            memcpy(weights.data() + i, &word, 4);
        }
    std::vector<float> out(static_cast<size_t>(p.M) * p.N, NAN);
    const int blocks = (p.N + C::kRowsPerBlock - 1) / C::kRowsPerBlock;
    for (int block = 0; block < blocks; ++block)
        for (int wr = 0; wr < C::kWR; ++wr) {
            const int first_row = block_first_row<C>(block) + wr * 16 * RT;
            // acc[wk][rt][nt][lane][i], summed over wk in order as the kernel's shared-memory reduction does.
            std::vector<double> acc(static_cast<size_t>(C::kWK) * RT * MT * 32 * 4, 0.0);
            for (int wk = 0; wk < C::kWK; ++wk) {
                std::vector<MmaCall> calls[32];
                for (int lane = 0; lane < 32; ++lane) {
                    Recorder rec{&calls[lane]};
                    warp_steps<C>(p.x.data(), weights.data(), scales.data(), first_row, wk, lane, p.M, p.N, p.K,
                                  HostTable{table.data()}, rec, 0u, [] {});
                }
                for (size_t c = 0; c < calls[0].size(); ++c) {
                    const MmaCall* lanes[32];
                    for (int lane = 0; lane < 32; ++lane) lanes[lane] = &calls[lane][c];
                    const int rt = lanes[0]->rt, nt = lanes[0]->nt;
                    double tile[32][4] = {};
                    emulate_mma(lanes, tile);
                    for (int lane = 0; lane < 32; ++lane)
                        for (int i = 0; i < 4; ++i)
                            acc[((((static_cast<size_t>(wk) * RT + rt) * MT + nt) * 32 + lane) * 4) + i] += tile[lane][i];
                }
            }
            const double scale = static_cast<double>(p.global) * D::kOutFactor;
            for (int rt = 0; rt < RT; ++rt)
                for (int nt = 0; nt < MT; ++nt)
                    for (int lane = 0; lane < 32; ++lane)
                        for (int i = 0; i < 4; ++i) {
                            double v = 0;
                            for (int wk = 0; wk < C::kWK; ++wk)
                                v += acc[((((static_cast<size_t>(wk) * RT + rt) * MT + nt) * 32 + lane) * 4) + i];
                            const int row = first_row + acc_row(lane, rt, i), m = acc_col(lane, nt, i);
                            if (row < p.N && m < p.M) out[static_cast<size_t>(m) * p.N + row] = static_cast<float>(v * scale);
                        }
        }
    return out;
}

template <class C>
bool check(const char* name, int M, int N, int K, unsigned seed) {
    const Problem p = make_problem(M, N, K, seed);
    const std::vector<double> ref = reference(p);
    const std::vector<float> got = emulate<C>(p);
    double err = 0, norm = 0;
    long bad = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        if (!std::isfinite(got[i])) ++bad;
        err += (got[i] - ref[i]) * (got[i] - ref[i]);
        norm += ref[i] * ref[i];
    }
    const double rel = std::sqrt(err / norm);
    const bool ok = bad == 0 && rel < 1e-6;
    std::printf("%-6s %-44s M=%-2d N=%-3d K=%-4d rel_l2=%.2e unwritten=%ld\n", ok ? "ok" : "FAIL", name, M, N, K, rel, bad);
    return ok;
}

// kRepacked's decode of a repacked word: every code in every element position, the other seven random,
// gives that element's E2M1 value times 2^-126 exactly, in natural pair order (element 2i low, 2i+1 high).
bool check_repacked_decode() {
    std::mt19937 rng(7);
    long bad = 0;
    for (int e = 0; e < 8; ++e)
        for (uint32_t code = 0; code < 16; ++code)
            for (int trial = 0; trial < 64; ++trial) {
                uint32_t q = static_cast<uint32_t>(rng());
                q = (q & ~(0xFu << (4 * e))) | (code << (4 * e));
                uint32_t r[4];
                Decoder<kRepacked>::decode(repack_word(q), r, HostTable{nullptr}, 0);
                for (int k = 0; k < 8; ++k) {
                    const uint32_t c = (q >> (4 * k)) & 0xFu;
                    if (half_of(r[k / 2], k % 2) != std::ldexp(e2m1_value(c), -126)) ++bad;
                }
            }
    std::printf("%-6s %-44s every code, every position: %ld wrong\n", bad ? "FAIL" : "ok", "repacked decode", bad);
    return bad == 0;
}

}  // namespace

#define CASE(M, N, K, ...) ok &= check<Config<__VA_ARGS__>>(#__VA_ARGS__, M, N, K, 1000u * M + N)

int main() {
    bool ok = true;
    // Each decode and load hint; rows past N (N = 40, 72) and activation rows past M; K = 2944 is 23 steps,
    // so split-K warps get 5 or 6 (or 11 and 12, ...), the ring turns over and its tail runs; K = 384 leaves
    // some warps one step; one and several warps along K and along rows.
    CASE(1, 40, 2944, 1, 1, 1, 4, 4, kShift, kNoL1, 4);
    CASE(3, 40, 2944, 1, 1, 2, 4, 4, kLut256, kNoL1Prefetch256, 2);
    CASE(8, 40, 2944, 1, 1, 1, 4, 4, kLut128, kEvictFirst, 4);
    CASE(5, 72, 2944, 1, 2, 1, 1, 2, kShift, kCached, 4);
    CASE(16, 40, 2944, 2, 1, 2, 4, 4, kLut256, kStreaming, 2);
    CASE(9, 72, 1024, 2, 2, 1, 8, 2, kShift, kNoL1, 2);
    CASE(32, 40, 2944, 4, 1, 1, 2, 4, kLut128, kNoL1, 4);
    CASE(64, 40, 2944, 8, 2, 1, 4, 2, kShift, kNoL1, 2);
    CASE(40, 72, 384, 8, 1, 2, 2, 1, kLut256, kNoL1, 2);
    ok &= check_repacked_decode();
    CASE(1, 40, 2944, 1, 1, 1, 4, 4, kRepacked, kNoL1Prefetch256, 4);
    CASE(13, 72, 2944, 2, 2, 1, 4, 2, kRepacked, kEvictFirst, 2);
    CASE(64, 40, 384, 8, 1, 1, 2, 2, kRepacked, kNoL1, 4);
    // The shared-memory ring: rings longer than a warp's steps (K = 384), turning over with a tail (2944).
    CASE(1, 40, 2944, 1, 1, 1, 4, 8, kRepacked, kAsync, 4);
    CASE(2, 40, 384, 1, 1, 1, 2, 12, kShift, kAsync, 4);
    CASE(16, 72, 2944, 2, 2, 1, 4, 4, kRepacked, kAsync, 2);
    // The tiled layout: N = 40 and 72 leave a padded tile (and, 32 rows a block, a tile past the last).
    CASE(1, 40, 2944, 1, 1, 1, 4, 4, kTiled, kNoL1Prefetch256, 4);
    CASE(3, 72, 2944, 1, 1, 1, 4, 8, kTiled, kAsync, 4);
    CASE(16, 40, 2944, 2, 2, 1, 4, 2, kTiled, kEvictFirst, 2);
    CASE(64, 72, 384, 8, 2, 1, 4, 2, kTiled, kNoL1Prefetch256, 2);
    CASE(1, 40, 2944, 1, 1, 1, 4, 4, kStepMajor, kNoL1, 4);
    CASE(16, 72, 2944, 2, 2, 1, 4, 2, kStepMajor, kNoL1Prefetch256, 2);
    CASE(5, 40, 384, 1, 1, 1, 4, 2, kStepMajor, kNoL1, 4);
    CASE(8, 100, 2944, 1, 1, 1, 4, 8, kStepMajor, kAsync, 4);
    // What kernels/nvfp4_gemm.cu ships, at the largest and an odd row count of each.
    ok &= check<Shipped<1>>("shipped, 1..8 rows", 1, 72, 2944, 1);
    ok &= check<Shipped<1>>("shipped, 1..8 rows", 8, 72, 2944, 2);
    ok &= check<Shipped<2>>("shipped, 9..16 rows", 11, 72, 2944, 3);
    ok &= check<Shipped<2>>("shipped, 9..16 rows", 16, 72, 2944, 4);
    // Their 8 warps along K at K = 128 and 896 (1 and 7 steps): no warp has a full share, and some none.
    ok &= check<Shipped<1>>("shipped, 1..8 rows, one step", 3, 40, 128, 7);
    ok &= check<Shipped<2>>("shipped, 9..16 rows, seven steps", 16, 40, 896, 8);
    ok &= check<Shipped<4>>("shipped, 17..32 rows", 32, 72, 2944, 5);
    ok &= check<Shipped<8>>("shipped, 33..64 rows", 64, 72, 2944, 6);
    return ok ? 0 : 1;
}
