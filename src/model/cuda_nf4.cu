// NF4 (double-quantized) to dense, on the device. Layout as in nf4.rs: the weight is a
// row-major stream of 64-element blocks; each byte holds two 4-bit indices into the NormalFloat
// codebook (element 2j in the low nibble); block b has the absmax
//   offset + (code[b] - 128) / 127 * group_scale[b / 256].
// One thread expands one 32-bit word (8 weights, all inside one block), so every load is a
// 4-byte word and every store 16 bytes (f16/bf16) or 32 bytes (f32).

#include <stdint.h>
#include <cuda_fp16.h>

__constant__ float NF4_LEVELS[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

// Round-to-nearest-even f32 -> bf16 bits without cuda_bf16.h, so the same source builds for
// compute capabilities below 8.0 (where the card itself has no bf16 arithmetic).
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((u >> 16) | 0x40u);  // quiet NaN
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

__device__ __forceinline__ void expand_word(uint32_t w, float absmax, float v[8]) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        v[i] = NF4_LEVELS[(w >> (4 * i)) & 15u] * absmax;
    }
}

__device__ __forceinline__ float block_absmax(const uint8_t* codes, const float* scales, float offset,
                                              size_t block) {
    return offset + ((float)codes[block] - 128.0f) / 127.0f * scales[block / 256];
}

extern "C" __global__ void nf4_dequant_f32(const uint32_t* __restrict__ packed, const uint8_t* __restrict__ codes,
                                           const float* __restrict__ scales, float offset,
                                           float4* __restrict__ out, size_t words) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < words; i += (size_t)gridDim.x * blockDim.x) {
        float v[8];
        expand_word(packed[i], block_absmax(codes, scales, offset, i / 8), v);
        out[2 * i] = make_float4(v[0], v[1], v[2], v[3]);
        out[2 * i + 1] = make_float4(v[4], v[5], v[6], v[7]);
    }
}

extern "C" __global__ void nf4_dequant_f16(const uint32_t* __restrict__ packed, const uint8_t* __restrict__ codes,
                                           const float* __restrict__ scales, float offset,
                                           uint4* __restrict__ out, size_t words) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < words; i += (size_t)gridDim.x * blockDim.x) {
        float v[8];
        expand_word(packed[i], block_absmax(codes, scales, offset, i / 8), v);
        uint32_t h[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            uint16_t lo = __half_as_ushort(__float2half_rn(v[2 * j]));
            uint16_t hi = __half_as_ushort(__float2half_rn(v[2 * j + 1]));
            h[j] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
        out[i] = make_uint4(h[0], h[1], h[2], h[3]);
    }
}

extern "C" __global__ void nf4_dequant_bf16(const uint32_t* __restrict__ packed, const uint8_t* __restrict__ codes,
                                            const float* __restrict__ scales, float offset,
                                            uint4* __restrict__ out, size_t words) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < words; i += (size_t)gridDim.x * blockDim.x) {
        float v[8];
        expand_word(packed[i], block_absmax(codes, scales, offset, i / 8), v);
        uint32_t h[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            h[j] = (uint32_t)f32_to_bf16_bits(v[2 * j]) | ((uint32_t)f32_to_bf16_bits(v[2 * j + 1]) << 16);
        }
        out[i] = make_uint4(h[0], h[1], h[2], h[3]);
    }
}
