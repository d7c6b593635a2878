// One AdamW update of an f32 parameter in a single pass: the tensor form launches about a dozen
// element-wise kernels per parameter tensor, and a LoRA adapter has hundreds of small tensors,
// so the step was bound by launches rather than by the few million values it touches.
//
// The update is written over the parameter and its moments, so they keep their allocations:
// fresh moments every step land wherever the allocator's pool has a hole at that moment, and
// hundreds of long-lived tensors scattered through the space the step's activations use keep
// that space from being reused whole, so the pool maps more (bench/gpu-h200.md, fourth series).
// Each element is read and written by one thread.

#include <stdint.h>

extern "C" __global__ void adamw_f32_inplace(float* p, const float* __restrict__ g, float* m, float* v,
                                             size_t n, float beta1, float beta2, float inv_bc2, float eps,
                                             float lr_hat, float decay) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        float mi = m[i] * beta1 + gi * (1.0f - beta1);
        float vi = v[i] * beta2 + gi * gi * (1.0f - beta2);
        float denom = sqrtf(vi * inv_bc2) + eps;
        p[i] = p[i] * decay - mi / denom * lr_hat;
        m[i] = mi;
        v[i] = vi;
    }
}
