// Fused training-path steps on the device: RMSNorm, rotary embedding, SwiGLU and the row-wise
// parts of the chunked lm_head + cross-entropy, each forward and backward one pass in the
// compute dtype with f32 arithmetic. Built from tensor ops each of these is five to twenty-five
// kernels with an f32 intermediate per step, and on a training step of a 28-block model at
// 2,048 positions those launches and passes were most of the time.

#include "cuda_common.cuh"

// y = x * rsqrt(mean(x^2) + eps) * w, one block per row of `cols`.
template <typename T>
__device__ void rmsnorm_fwd(const T* x, const T* w, T* y, int cols, float eps) {
    __shared__ float shared[32];
    size_t base = (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = load(x, base + c);
        ss += v * v;
    }
    ss = block_reduce<false>(ss, shared);
    float r = rsqrtf(ss / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) store(y, base + c, load(x, base + c) * r * load(w, c));
}

// dx = r * g * w - x * r^3 * sum(g * w * x) / cols, the weight frozen (no gradient of its own).
template <typename T>
__device__ void rmsnorm_bwd(const T* x, const T* w, const T* g, T* dx, int cols, float eps) {
    __shared__ float shared[32];
    size_t base = (size_t)blockIdx.x * cols;
    float ss = 0.0f, dot = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = load(x, base + c);
        ss += v * v;
        dot += load(g, base + c) * load(w, c) * v;
    }
    ss = block_reduce<false>(ss, shared);
    dot = block_reduce<false>(dot, shared);
    float r = rsqrtf(ss / cols + eps);
    float k = r * r * r * dot / cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        store(dx, base + c, r * load(g, base + c) * load(w, c) - load(x, base + c) * k);
    }
}

// y = x * cos + sign * rotate_half(x) * sin for x (b, h, t, d) read through its strides, y
// contiguous; cos and sin (b, t, d) contiguous, full width. sign -1 gives the backward (the
// tables repeat across the two halves, so the transpose of the rotation is the rotation with
// sin negated).
template <typename T>
__device__ void rope(const T* x, long long off, long long s0, long long s1, long long s2, long long s3,
                     const T* cos, const T* sin, T* y, int h, int t, int d, float sign, size_t n) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    int j = (int)(e % d);
    size_t rest = e / d;
    int ti = (int)(rest % t);
    rest /= t;
    int hi = (int)(rest % h);
    int bi = (int)(rest / h);
    int half = d / 2;
    long long row = off + bi * s0 + hi * s1 + ti * s2;
    float xv = load(x, (size_t)(row + j * s3));
    float other = j < half ? -load(x, (size_t)(row + (j + half) * s3)) : load(x, (size_t)(row + (j - half) * s3));
    size_t tab = ((size_t)bi * t + ti) * d + j;
    store(y, e, xv * load(cos, tab) + sign * other * load(sin, tab));
}

// y = silu(gate) * up.
template <typename T>
__device__ void swiglu_fwd(const T* gate, const T* up, T* y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = load(gate, i);
    store(y, i, g / (1.0f + __expf(-g)) * load(up, i));
}

// d gate = dy * up * s * (1 + g * (1 - s)), d up = dy * g * s, with s = sigmoid(g).
template <typename T>
__device__ void swiglu_bwd(const T* gate, const T* up, const T* dy, T* dgate, T* dup, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = load(gate, i), u = load(up, i), d = load(dy, i);
    float s = 1.0f / (1.0f + __expf(-g));
    store(dgate, i, d * u * s * (1.0f + g * (1.0f - s)));
    store(dup, i, d * g * s);
}

// One slice of the vocabulary (columns r0 .. r0 + cols) of a chunk of rows' logits z: folds the
// slice into each row's running max m and sum of exp(z - m), and picks the target's logit when
// it falls in the slice. One block per row.
template <typename T>
__device__ void ce_fold(const T* z, const uint32_t* target, int r0, int cols, float* m, float* s, float* picked) {
    __shared__ float shared[32];
    int r = blockIdx.x;
    size_t base = (size_t)r * cols;
    float mz = -INFINITY;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) mz = fmaxf(mz, load(z, base + c));
    mz = block_reduce<true>(mz, shared);
    float m0 = m[r];
    float mn = fmaxf(m0, mz);
    float sum = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) sum += __expf(load(z, base + c) - mn);
    sum = block_reduce<false>(sum, shared);
    if (threadIdx.x == 0) {
        float prev = m0 == -INFINITY ? 0.0f : s[r] * __expf(m0 - mn);
        s[r] = prev + sum;
        m[r] = mn;
        long long lt = (long long)target[r] - r0;
        if (lt >= 0 && lt < cols) picked[r] = load(z, base + lt);
    }
}

// dz = (exp(z - lse) - [column is the target]) * coef for one vocabulary slice of a chunk.
template <typename T>
__device__ void ce_dz(const T* z, const float* lse, const float* coef, const uint32_t* target, int r0, int cols,
                      T* dz) {
    int r = blockIdx.x;
    size_t base = (size_t)r * cols;
    float l = lse[r], k = coef[r];
    long long lt = (long long)target[r] - r0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float p = k == 0.0f ? 0.0f : __expf(load(z, base + c) - l);
        if (c == lt) p -= 1.0f;
        store(dz, base + c, p * k);
    }
}

#define FUSED_KERNELS(SFX, T)                                                                                \
    extern "C" __global__ void rmsnorm_fwd_##SFX(const T* x, const T* w, int cols, float eps, T* y) {       \
        rmsnorm_fwd<T>(x, w, y, cols, eps);                                                                 \
    }                                                                                                       \
    extern "C" __global__ void rmsnorm_bwd_##SFX(const T* x, const T* w, const T* g, int cols, float eps,    \
                                                 T* dx) {                                                   \
        rmsnorm_bwd<T>(x, w, g, dx, cols, eps);                                                             \
    }                                                                                                       \
    extern "C" __global__ void rope_##SFX(const T* x, long long off, long long s0, long long s1, long long s2, \
                                          long long s3, const T* cos, const T* sin, int h, int t, int d,    \
                                          float sign, unsigned long long n, T* y) {                         \
        rope<T>(x, off, s0, s1, s2, s3, cos, sin, y, h, t, d, sign, (size_t)n);                             \
    }                                                                                                       \
    extern "C" __global__ void swiglu_fwd_##SFX(const T* gate, const T* up, unsigned long long n, T* y) {    \
        swiglu_fwd<T>(gate, up, y, (size_t)n);                                                              \
    }                                                                                                       \
    extern "C" __global__ void swiglu_bwd_##SFX(const T* gate, const T* up, const T* dy,                    \
                                                unsigned long long n, T* dgate, T* dup) {                   \
        swiglu_bwd<T>(gate, up, dy, dgate, dup, (size_t)n);                                                 \
    }                                                                                                       \
    extern "C" __global__ void ce_fold_##SFX(const T* z, const uint32_t* target, int r0, int cols, float* m, \
                                             float* s, float* picked) {                                     \
        ce_fold<T>(z, target, r0, cols, m, s, picked);                                                      \
    }                                                                                                       \
    extern "C" __global__ void ce_dz_##SFX(const T* z, const float* lse, const float* coef,                 \
                                           const uint32_t* target, int r0, int cols, T* dz) {               \
        ce_dz<T>(z, lse, coef, target, r0, cols, dz);                                                       \
    }

FUSED_KERNELS(f32, float)
FUSED_KERNELS(bf16, uint16_t)
FUSED_KERNELS(f16, __half)
