// LoRA dropout masks generated on the device. Each element's keep/drop decision is a hash of
// (seed, index) — no generator state — so the recomputed forward of a block draws exactly the
// mask its first forward drew, and no mask ever crosses the bus from the host.

#include <stdint.h>

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// out[i] = inv when the element is kept (probability `keep`), else 0.
extern "C" __global__ void dropout_mask_f32(uint64_t seed, float keep, float inv, size_t n, float* __restrict__ out) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = mix64(seed + (i + 1) * 0x9E3779B97F4A7C15ull);
        float u = (float)(z >> 40) * (1.0f / 16777216.0f);  // 24 bits: uniform in [0, 1)
        out[i] = u < keep ? inv : 0.0f;
    }
}
