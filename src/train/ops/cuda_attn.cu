// Row-wise parts of the tiled attention (attention.rs) on the device: the masked softmax of one
// tile of scores and the score gradient, each one pass over the tile instead of the eight to ten
// element-wise kernels (scale, mask add, max, subtract, exp, sum, divide, casts) the tensor form
// launches, and with the mask computed from positions rather than read from a (t, t) table.
//
// A tile's scores are rows x cols, row-major: row r is query position i0 + r % len of batch row
// r / rows_per_batch (heads and the grouped heads of a KV head are stacked in between), column c
// is key position k0 + c. Query i sees keys seg_start[b][i] ..= i (its own segment, causally).

#include "cuda_common.cuh"

struct Geom {
    int cols, len, rows_per_batch, i0, k0, t;
};

// Visible columns [lo, hi] of row r.
__device__ __forceinline__ void visible(const Geom& g, const uint32_t* seg_start, int r, int* lo, int* hi) {
    int i = g.i0 + r % g.len;
    int b = r / g.rows_per_batch;
    *lo = (int)seg_start[(size_t)b * g.t + i] - g.k0;
    *hi = i - g.k0;
}

// p = softmax(s * scale over the visible columns), 0 elsewhere; lse[r] = log-sum-exp of the row.
// One block per row.
template <typename T>
__device__ void softmax_fwd(const T* s, T* p, float* lse, Geom g, const uint32_t* seg_start, float scale) {
    __shared__ float shared[32];
    int r = blockIdx.x;
    int lo, hi;
    visible(g, seg_start, r, &lo, &hi);
    size_t base = (size_t)r * g.cols;
    float m = -INFINITY;
    for (int c = lo + threadIdx.x; c <= hi; c += blockDim.x) m = fmaxf(m, load(s, base + c) * scale);
    m = block_reduce<true>(m, shared);
    float sum = 0.0f;
    for (int c = lo + threadIdx.x; c <= hi; c += blockDim.x) sum += __expf(load(s, base + c) * scale - m);
    sum = block_reduce<false>(sum, shared);
    float l = m + __logf(sum);
    for (int c = threadIdx.x; c < g.cols; c += blockDim.x) {
        float v = (c >= lo && c <= hi) ? __expf(load(s, base + c) * scale - l) : 0.0f;
        store(p, base + c, v);
    }
    if (threadIdx.x == 0) lse[r] = l;
}

// p = exp(s * scale - lse[r]) over the visible columns, 0 elsewhere (the forward's probabilities
// again, from the saved log-sum-exp).
template <typename T>
__device__ void probs(const T* s, const float* lse, T* p, Geom g, const uint32_t* seg_start, float scale) {
    int r = blockIdx.x;
    int lo, hi;
    visible(g, seg_start, r, &lo, &hi);
    size_t base = (size_t)r * g.cols;
    float l = lse[r];
    for (int c = threadIdx.x; c < g.cols; c += blockDim.x) {
        float v = (c >= lo && c <= hi) ? __expf(load(s, base + c) * scale - l) : 0.0f;
        store(p, base + c, v);
    }
}

// ds = p * (dp - d[r]) * scale, element-wise with one value per row.
template <typename T>
__device__ void dscores(const T* p, const T* dp, const float* d, T* ds, int cols, float scale) {
    int r = blockIdx.x;
    size_t base = (size_t)r * cols;
    float dr = d[r];
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        store(ds, base + c, load(p, base + c) * (load(dp, base + c) - dr) * scale);
    }
}

#define ATTN_KERNELS(SFX, T)                                                                              \
    extern "C" __global__ void attn_softmax_fwd_##SFX(const T* s, const uint32_t* seg_start, int cols,      \
                                                      int len, int rows_per_batch, int i0, int k0, int t,   \
                                                      float scale, float* lse, T* p) {                      \
        Geom g = {cols, len, rows_per_batch, i0, k0, t};                                                    \
        softmax_fwd<T>(s, p, lse, g, seg_start, scale);                                                     \
    }                                                                                                       \
    extern "C" __global__ void attn_probs_##SFX(const T* s, const float* lse, const uint32_t* seg_start,     \
                                                int cols, int len, int rows_per_batch, int i0, int k0,      \
                                                int t, float scale, T* p) {                                 \
        Geom g = {cols, len, rows_per_batch, i0, k0, t};                                                    \
        probs<T>(s, lse, p, g, seg_start, scale);                                                           \
    }                                                                                                       \
    extern "C" __global__ void attn_dscores_##SFX(const T* p, const T* dp, const float* d, int cols,        \
                                                  float scale, T* ds) {                                     \
        dscores<T>(p, dp, d, ds, cols, scale);                                                              \
    }

ATTN_KERNELS(f32, float)
ATTN_KERNELS(bf16, uint16_t)
ATTN_KERNELS(f16, __half)
