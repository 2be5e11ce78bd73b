// Shared by every kernel library: the status convention of the extern "C" launchers, and
// the NVFP4 element and scale decodes.
//
// A launcher returns 0 or a cudaError_t; Python turns a non-zero status into an exception
// with lowprec_error_string's text. Launchers never synchronize, so they can be captured
// into CUDA graphs on the stream they are given.
#pragma once

#include <cstdint>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

extern "C" const char* lowprec_error_string(int status) {
    return cudaGetErrorString(static_cast<cudaError_t>(status));
}

// This library's runtime keeps its own current device: set the caller's before launching.
#define LOWPREC_LAUNCH_PROLOGUE(device)                                  \
    do {                                                                 \
        cudaError_t _st = cudaSetDevice(device);                         \
        if (_st != cudaSuccess) return static_cast<int>(_st);            \
    } while (0)

#define LOWPREC_LAUNCH_STATUS() static_cast<int>(cudaGetLastError())

namespace lowprec {

// Programmatic dependent launch (sm_90+). A kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization
// may start while the kernel before it on the stream is still running; wait_for_prior_grid() returns once that
// kernel has finished and its writes are visible. So a kernel so launched reads nothing an earlier kernel may
// write, and writes nothing, before its wait; what it does before (requesting weight bytes no kernel of the
// sequence writes) overlaps the earlier kernel's last wave. allow_dependent_grid() lets the next such kernel
// start; called after the wait, it keeps that next kernel's early reads from overlapping any kernel but this
// one. Launched without the attribute, the wait returns at once and the kernel runs as before.
__device__ __forceinline__ void wait_for_prior_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_dependent_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Launches kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent of the kernel before it on
// the stream where `programmatic` (the kernel waits with wait_for_prior_grid). Returns the launch's error, and
// reads the runtime's last error (so clearing it): a failed launch must not be reported by the next launcher.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          bool programmatic, Args... args) {
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    cudaLaunchAttribute attribute = {};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    config.attrs = &attribute;
    config.numAttrs = programmatic ? 1 : 0;
    const cudaError_t launched = cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
    const cudaError_t last = cudaGetLastError();
    return launched != cudaSuccess ? launched : last;
}

// E2M1 code (s e1 e0 m) -> value, by arithmetic: e > 0 is 2^(e-1) * (1 + m/2), e = 0 is m/2.
__host__ __device__ __forceinline__ float e2m1_to_float(uint32_t code) {
    const uint32_t e = (code >> 1) & 3u, m = code & 1u;
    float mag;
    if (e) {
        union { uint32_t u; float f; } bits;
        bits.u = ((e + 126u) << 23) | (m << 22);
        mag = bits.f;
    } else {
        mag = 0.5f * static_cast<float>(m);
    }
    return (code & 8u) ? -mag : mag;
}

// E4M3 (OCP, finite) byte -> float through cuda_fp8.h's conversion.
__device__ __forceinline__ float e4m3_to_float(uint8_t byte) {
    __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(byte), __NV_E4M3);
    return __half2float(__half(h));
}

// Eight E2M1 codes in a 32-bit word (element 2j in byte j's low nibble) -> eight E4M3 bytes
// of the same values times 2^-6, with no table: E2M1's exponent and mantissa bits land in
// E4M3's low exponent bits and top mantissa bit, and the exponent-bias difference (7 - 1)
// is the 2^-6. `even` holds elements 0, 2, 4, 6 in bytes 0..3; `odd` holds 1, 3, 5, 7.
__device__ __forceinline__ void e2m1x8_to_e4m3x8(uint32_t w, uint32_t& even, uint32_t& odd) {
    even = ((w & 0x07070707u) << 2) | ((w & 0x08080808u) << 4);
    odd = ((w >> 2) & 0x1C1C1C1Cu) | (w & 0x80808080u);
}

// Two E4M3 bytes (the low 16 bits of `pair`) -> two floats, one conversion instruction on sm_89+.
__device__ __forceinline__ float2 e4m3x2_to_float2(uint32_t pair) {
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(pair & 0xFFFFu), __NV_E4M3);
    return __half22float2(__half2(h));
}

__device__ __forceinline__ float2 bf16x2_to_float2(uint32_t pair) {
    union { uint32_t u; float f; } lo, hi;
    lo.u = pair << 16;
    hi.u = pair & 0xFFFF0000u;
    return make_float2(lo.f, hi.f);
}

}  // namespace lowprec
