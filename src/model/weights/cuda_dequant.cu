// Dequantization of frozen weights straight into the compute dtype, for a range of rows.
//
// NF4 (layout as in nf4.rs): a row-major stream of 64-element blocks; each byte holds two 4-bit
// indices into the NormalFloat codebook (element 2j in the low nibble); block b has the absmax
//   offset + (code[b] - 128) / 127 * group_scale[b / 256].
// One thread expands one 32-bit word (8 weights inside one block): 4-byte loads, 16-byte stores.
//
// Q8_0 (GGUF): 34-byte blocks of one f16 scale and 32 int8 values, rows stored one after another.
// One thread expands four values of one block.
//
// Every kernel takes the first unit (word or quad) of the range and the number of units, so that
// a large matrix can be expanded a slice of rows at a time; the output pointer comes last.

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
__device__ __forceinline__ uint32_t bf16_bits(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (u >> 16) | 0x40u;  // quiet NaN
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return u >> 16;
}

__device__ __forceinline__ uint32_t f16_bits(float f) {
    return (uint32_t)__half_as_ushort(__float2half_rn(f));
}

struct OutF32 {
    static __device__ __forceinline__ void store8(void* out, size_t i, const float v[8]) {
        float4* o = (float4*)out;
        o[2 * i] = make_float4(v[0], v[1], v[2], v[3]);
        o[2 * i + 1] = make_float4(v[4], v[5], v[6], v[7]);
    }
    static __device__ __forceinline__ void store4(void* out, size_t i, const float v[4]) {
        ((float4*)out)[i] = make_float4(v[0], v[1], v[2], v[3]);
    }
};

template <uint32_t (*BITS)(float)>
struct OutHalf {
    static __device__ __forceinline__ void store8(void* out, size_t i, const float v[8]) {
        ((uint4*)out)[i] = make_uint4(BITS(v[0]) | (BITS(v[1]) << 16), BITS(v[2]) | (BITS(v[3]) << 16),
                                      BITS(v[4]) | (BITS(v[5]) << 16), BITS(v[6]) | (BITS(v[7]) << 16));
    }
    static __device__ __forceinline__ void store4(void* out, size_t i, const float v[4]) {
        ((uint2*)out)[i] = make_uint2(BITS(v[0]) | (BITS(v[1]) << 16), BITS(v[2]) | (BITS(v[3]) << 16));
    }
};

template <class OUT>
__device__ void nf4_rows(const uint32_t* __restrict__ packed, const uint8_t* __restrict__ codes,
                         const float* __restrict__ scales, float offset, size_t first_word, size_t words,
                         void* __restrict__ out) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < words; i += (size_t)gridDim.x * blockDim.x) {
        size_t w = first_word + i;
        size_t block = w / 8;
        float absmax = offset + ((float)codes[block] - 128.0f) / 127.0f * scales[block / 256];
        uint32_t bits = packed[w];
        float v[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            v[j] = NF4_LEVELS[(bits >> (4 * j)) & 15u] * absmax;
        }
        OUT::store8(out, i, v);
    }
}

template <class OUT>
__device__ void q8_0_rows(const uint8_t* __restrict__ data, size_t first_quad, size_t quads, void* __restrict__ out) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < quads; i += (size_t)gridDim.x * blockDim.x) {
        size_t q = first_quad + i;
        const uint8_t* blk = data + (q / 8) * 34;
        float d = __half2float(__ushort_as_half(*(const uint16_t*)blk));
        const int8_t* qs = (const int8_t*)(blk + 2) + (q % 8) * 4;
        float v[4] = {d * qs[0], d * qs[1], d * qs[2], d * qs[3]};
        OUT::store4(out, i, v);
    }
}

#define NF4_KERNEL(NAME, OUT)                                                                          \
    extern "C" __global__ void NAME(const uint32_t* packed, const uint8_t* codes, const float* scales, \
                                    float offset, size_t first_word, size_t words, void* out) {        \
        nf4_rows<OUT>(packed, codes, scales, offset, first_word, words, out);                          \
    }
NF4_KERNEL(nf4_rows_f32, OutF32)
NF4_KERNEL(nf4_rows_f16, OutHalf<f16_bits>)
NF4_KERNEL(nf4_rows_bf16, OutHalf<bf16_bits>)

#define Q8_0_KERNEL(NAME, OUT)                                                                        \
    extern "C" __global__ void NAME(const uint8_t* data, size_t first_quad, size_t quads, void* out) { \
        q8_0_rows<OUT>(data, first_quad, quads, out);                                                 \
    }
Q8_0_KERNEL(q8_0_rows_f32, OutF32)
Q8_0_KERNEL(q8_0_rows_f16, OutHalf<f16_bits>)
Q8_0_KERNEL(q8_0_rows_bf16, OutHalf<bf16_bits>)
