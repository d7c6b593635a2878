// Helpers shared by the crate's CUDA kernels: element loads and stores in each compute dtype
// (f32, bf16 held as uint16_t, f16), always with f32 arithmetic, and a block-wide reduction.

#pragma once

#include <stdint.h>
#include <cuda_fp16.h>

// Loads and stores (bf16 stores round to nearest even and keep NaNs quiet).
__device__ __forceinline__ float load(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float load(const uint16_t* p, size_t i) { return __uint_as_float(((uint32_t)p[i]) << 16); }
__device__ __forceinline__ float load(const __half* p, size_t i) { return __half2float(p[i]); }

__device__ __forceinline__ void store(float* p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(uint16_t* p, size_t i, float v) {
    uint32_t u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        p[i] = (uint16_t)((u >> 16) | 0x40u);
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    p[i] = (uint16_t)(u >> 16);
}
__device__ __forceinline__ void store(__half* p, size_t i, float v) { p[i] = __float2half_rn(v); }

// Sum (or, with MAX, maximum) of `v` over the block; `shared` holds one float per warp.
template <bool MAX>
__device__ __forceinline__ float block_reduce(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? fmaxf(v, w) : v + w;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : (MAX ? -INFINITY : 0.0f);
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? fmaxf(v, w) : v + w;
    }
    return v;
}
