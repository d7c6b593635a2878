// One AdamW update of an f32 parameter in a single pass: the tensor form launches about a dozen
// element-wise kernels per parameter tensor, and a LoRA adapter has hundreds of small tensors,
// so the step was bound by launches rather than by the few million values it touches.
// Reads the parameter, its gradient and both moments; writes the new three.

#include <stdint.h>

extern "C" __global__ void adamw_f32(const float* __restrict__ p, const float* __restrict__ g,
                                     const float* __restrict__ m, const float* __restrict__ v, size_t n,
                                     float beta1, float beta2, float inv_bc2, float eps, float lr_hat,
                                     float decay, float* __restrict__ p_out, float* __restrict__ m_out,
                                     float* __restrict__ v_out) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        float mi = m[i] * beta1 + gi * (1.0f - beta1);
        float vi = v[i] * beta2 + gi * gi * (1.0f - beta2);
        float denom = sqrtf(vi * inv_bc2) + eps;
        p_out[i] = p[i] * decay - mi / denom * lr_hat;
        m_out[i] = mi;
        v_out[i] = vi;
    }
}

// The same update written over the parameter and its moments, so they keep their allocations:
// fresh moments every step land wherever the allocator's pool has a hole at that moment, and
// hundreds of long-lived tensors scattered through the space the step's activations use keep
// that space from being reused as a whole. Each element is read and written by one thread.
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
