// Decode attention partials over an FP8 KV cache, streamed through shared memory in tiles.
//
// Two schedules of the same arithmetic:
//   serial   (kOverlap = false): load tile t (cp.async, wait), compute tile t, repeat;
//   overlap  (kOverlap = true):  issue tile t+1's cp.async into the other buffer, then compute
//                                tile t while it lands (double buffering).
// Both reserve the same shared memory (two stages), so both run at the same occupancy and the
// difference between them is the overlap alone. The compute code and its order are shared, so
// the outputs are identical bit for bit.
//
// q        float32 [BH, D], pre-multiplied by the key scale, 1/sqrt(D) and log2(e) (scores in base 2)
// k, v     E4M3 bytes [BH, S, D]
// part_acc float32 [BH, P, D]  unnormalized sum of p * v (v in E4M3 units)
// part_ml  float32 [BH, P, 2]  running max (base 2) and sum of p for each split
#include "lowprec.cuh"

namespace {

constexpr int kDim = 128;      // head_dim: one thread per output dimension
constexpr int kTile = 128;     // tokens per tile: 16 KB of K and 16 KB of V
constexpr int kThreads = 128;
constexpr int kStageBytes = 2 * kTile * kDim;
constexpr int kChunks = kStageBytes / 16;  // 16-byte cp.async copies per stage

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// One stage holds a tile's K rows then its V rows.
__device__ __forceinline__ void load_tile(uint8_t* stage, const uint8_t* k, const uint8_t* v, int tid) {
#pragma unroll
    for (int c = tid; c < kChunks; c += kThreads) {
        const int half = kChunks / 2;
        const uint8_t* src = c < half ? k + c * 16 : v + (c - half) * 16;
        cp_async16(stage + c * 16, src);
    }
}

struct Softmax {
    float m;  // running max of base-2 scores
    float l;  // running sum of 2^(s - m)
};

__device__ __forceinline__ void compute_tile(const uint8_t* stage, const float* q_s, float* s_s, float* p_s,
                                             Softmax* state, float& acc, int tid) {
    const uint8_t* krows = stage;
    const uint8_t* vrows = stage + kTile * kDim;
    // Scores: thread i takes token i's whole row. Lanes start at different 16-byte chunks of their
    // rows (rows are 128 bytes apart, the same banks), so a warp's loads spread over all banks.
    {
        const uint8_t* row = krows + tid * kDim;
        float dot = 0.f;
#pragma unroll
        for (int c = 0; c < kDim / 16; ++c) {
            const int chunk = (c + tid) & (kDim / 16 - 1);
            const uint4 bytes = *reinterpret_cast<const uint4*>(row + chunk * 16);
            const uint32_t words[4] = {bytes.x, bytes.y, bytes.z, bytes.w};
            const float* qc = q_s + chunk * 16;
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                const float2 lo = lowprec::e4m3x2_to_float2(words[w]);
                const float2 hi = lowprec::e4m3x2_to_float2(words[w] >> 16);
                dot = fmaf(lo.x, qc[4 * w + 0], dot);
                dot = fmaf(lo.y, qc[4 * w + 1], dot);
                dot = fmaf(hi.x, qc[4 * w + 2], dot);
                dot = fmaf(hi.y, qc[4 * w + 3], dot);
            }
        }
        s_s[tid] = dot;
    }
    __syncthreads();
    // Online softmax over the tile, in warp 0.
    if (tid < 32) {
        float s[kTile / 32];
        float tile_max = -INFINITY;
#pragma unroll
        for (int j = 0; j < kTile / 32; ++j) {
            s[j] = s_s[tid + 32 * j];
            tile_max = fmaxf(tile_max, s[j]);
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, off));
        const float m_new = fmaxf(state->m, tile_max);
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < kTile / 32; ++j) {
            const float p = exp2f(s[j] - m_new);
            p_s[tid + 32 * j] = p;
            sum += p;
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, off);
        __syncwarp();
        if (tid == 0) {
            const float corr = exp2f(state->m - m_new);  // 0 on the first tile (m = -inf)
            p_s[kTile] = corr;
            state->l = state->l * corr + sum;
            state->m = m_new;
        }
    }
    __syncthreads();
    // Values: thread d owns output dimension d; consecutive lanes read consecutive bytes.
    float a = acc * p_s[kTile];
#pragma unroll 8
    for (int t = 0; t < kTile; ++t) a = fmaf(p_s[t], lowprec::e4m3_to_float(vrows[t * kDim + tid]), a);
    acc = a;
}

template <bool kOverlap>
__global__ void __launch_bounds__(kThreads) kv_decode_partial_kernel(const float* __restrict__ q,
                                                                     const uint8_t* __restrict__ k,
                                                                     const uint8_t* __restrict__ v,
                                                                     float* __restrict__ part_acc,
                                                                     float* __restrict__ part_ml, int S,
                                                                     int split_tokens) {
    extern __shared__ __align__(16) uint8_t stages[];
    __shared__ float q_s[kDim];
    __shared__ float s_s[kTile];
    __shared__ float p_s[kTile + 1];
    __shared__ Softmax state;
    const int tid = threadIdx.x;
    const int split = blockIdx.x, splits = gridDim.x, bh = blockIdx.y;
    const size_t head = static_cast<size_t>(bh) * S * kDim;
    const int first = split * split_tokens;
    const int tiles = split_tokens / kTile;
    const uint8_t* k0 = k + head + static_cast<size_t>(first) * kDim;
    const uint8_t* v0 = v + head + static_cast<size_t>(first) * kDim;

    q_s[tid] = q[static_cast<size_t>(bh) * kDim + tid];
    if (tid == 0) state = Softmax{-INFINITY, 0.f};
    float acc = 0.f;
    if constexpr (kOverlap) {
        load_tile(stages, k0, v0, tid);
        cp_async_commit();
    }
    __syncthreads();
    for (int t = 0; t < tiles; ++t) {
        const uint8_t* kt = k0 + static_cast<size_t>(t) * kTile * kDim;
        const uint8_t* vt = v0 + static_cast<size_t>(t) * kTile * kDim;
        uint8_t* stage;
        if constexpr (kOverlap) {
            if (t + 1 < tiles) {
                load_tile(stages + ((t + 1) & 1) * kStageBytes, kt + kTile * kDim, vt + kTile * kDim, tid);
                cp_async_commit();
                cp_async_wait<1>();  // tile t has landed; tile t+1 is still in flight
            } else {
                cp_async_wait<0>();
            }
            stage = stages + (t & 1) * kStageBytes;
        } else {
            load_tile(stages, kt, vt, tid);
            cp_async_commit();
            cp_async_wait<0>();
            stage = stages;
        }
        __syncthreads();
        compute_tile(stage, q_s, s_s, p_s, &state, acc, tid);
        __syncthreads();  // every thread is done with this stage before it is refilled
    }
    const size_t out = static_cast<size_t>(bh) * splits + split;
    part_acc[out * kDim + tid] = acc;
    if (tid == 0) {
        part_ml[out * 2] = state.m;
        part_ml[out * 2 + 1] = state.l;
    }
}

template <bool kOverlap>
int launch(const void* q, const void* k, const void* v, void* part_acc, void* part_ml, int BH, int S, int splits,
           cudaStream_t stream) {
    auto kernel = kv_decode_partial_kernel<kOverlap>;
    const int smem = 2 * kStageBytes;  // both schedules reserve two stages: same occupancy
    cudaError_t st = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (st != cudaSuccess) return static_cast<int>(st);
    kernel<<<dim3(splits, BH), kThreads, smem, stream>>>(
        static_cast<const float*>(q), static_cast<const uint8_t*>(k), static_cast<const uint8_t*>(v),
        static_cast<float*>(part_acc), static_cast<float*>(part_ml), S, S / splits);
    return LOWPREC_LAUNCH_STATUS();
}

}  // namespace

extern "C" int kv_prefetch_tile_tokens() { return kTile; }
extern "C" int kv_prefetch_head_dim() { return kDim; }

// overlap = 0: serial schedule; 1: double-buffered. S must be a multiple of splits * kTile.
extern "C" int kv_decode_partial(int device, int overlap, const void* q, const void* k, const void* v,
                                 void* part_acc, void* part_ml, int BH, int S, int splits, void* stream) {
    LOWPREC_LAUNCH_PROLOGUE(device);
    if (BH <= 0 || splits <= 0 || S <= 0 || S % (splits * kTile) != 0) return static_cast<int>(cudaErrorInvalidValue);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    return overlap ? launch<true>(q, k, v, part_acc, part_ml, BH, S, splits, s)
                   : launch<false>(q, k, v, part_acc, part_ml, BH, S, splits, s);
}
