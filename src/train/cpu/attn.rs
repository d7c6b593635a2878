//! Causal, segment-aware attention over row-major q/k/v buffers, forward and backward, for
//! the CPU training path. One task per (sequence, query head); within it, tiles of query
//! positions whose scores are one GEMM against the keys the tile can see. The forward keeps
//! the output and each row's log-sum-exp; the backward recomputes the tile's probabilities
//! from them and forms `dS = P ∘ (dP − rowsum(dO ∘ O))`, as the device path does
//! (`model::attention`). The g query heads that share a KV head each write their own key and
//! value gradients, summed afterwards, so tasks never share an output.

use rayon::prelude::*;

use super::gemm::{matmul, Mat};
use super::ops;

/// Query positions per tile: a (tile × visible keys) score block stays in cache.
const TILE: usize = 64;

/// Shapes and visibility of one call.
pub struct AttnShape<'a> {
    pub b: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// (b·t): the first position of each position's segment (keys before it are invisible).
    pub seg_start: &'a [usize],
}

impl AttnShape<'_> {
    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// Task `job` → (sequence, query head, its KV head).
    fn job(&self, job: usize) -> (usize, usize, usize) {
        let (bi, h) = (job / self.heads, job % self.heads);
        (bi, h, h / (self.heads / self.kv_heads))
    }

    /// Keys visible to some query of tile `i0..i0+len` in sequence `bi`: segment starts only
    /// grow along a row, so the first query's start is the earliest.
    fn keys(&self, bi: usize, i0: usize, len: usize) -> (usize, usize) {
        (self.seg_start[bi * self.t + i0], i0 + len)
    }
}

/// Where a tile's log-sum-exp comes from.
enum Lse<'a> {
    /// Computed here (forward) and written out.
    Compute(&'a mut [f32]),
    /// Saved by the forward (backward).
    Saved(&'a [f32]),
}

/// Row-wise masked softmax of a score tile `s` (len, k1−k0) in place, scores scaled by the
/// shape's `1/√d`.
fn softmax_tile(s: &mut [f32], kl: usize, shape: &AttnShape, bi: usize, i0: usize, k0: usize, mut lse: Lse) {
    let scale = shape.scale();
    for (r, row) in s.chunks_mut(kl).enumerate() {
        let i = i0 + r;
        let (lo, hi) = (shape.seg_start[bi * shape.t + i] - k0, i - k0 + 1);
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
        let vis = &mut row[lo..hi];
        match &mut lse {
            Lse::Saved(saved) => ops::exp_shifted(vis, scale, saved[r]),
            Lse::Compute(out) => {
                // Every row sees at least its own position, so the max is finite.
                let m = ops::max(vis) * scale;
                ops::exp_shifted(vis, scale, m);
                let total = ops::sum(vis);
                out[r] = m + total.ln();
                let inv = 1.0 / total;
                vis.iter_mut().for_each(|v| *v *= inv);
            }
        }
    }
}

/// Forward: `o` (b·t, heads·d) and `lse` (b, heads, t) from q (b·t, heads·d) and k, v
/// (b·t, kv_heads·d).
pub fn forward(shape: &AttnShape, q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], lse: &mut [f32]) {
    let (t, d) = (shape.t, shape.head_dim);
    let (qw, kw) = (shape.heads * d, shape.kv_heads * d);
    let outs: Vec<(Vec<f32>, Vec<f32>)> = (0..shape.b * shape.heads)
        .into_par_iter()
        .map(|job| {
            let (bi, h, kh) = shape.job(job);
            let qh = Mat::cols_of(q, shape.b * t, qw, h * d, d).rows_range(bi * t, t);
            let kh_ = Mat::cols_of(k, shape.b * t, kw, kh * d, d).rows_range(bi * t, t);
            let vh = Mat::cols_of(v, shape.b * t, kw, kh * d, d).rows_range(bi * t, t);
            let mut oh = vec![0.0f32; t * d];
            let mut lh = vec![0.0f32; t];
            let mut s = vec![0.0f32; TILE * t];
            for i0 in (0..t).step_by(TILE) {
                let len = TILE.min(t - i0);
                let (k0, k1) = shape.keys(bi, i0, len);
                let kl = k1 - k0;
                let st = &mut s[..len * kl];
                matmul(st, kl, qh.rows_range(i0, len), kh_.rows_range(k0, kl).t(), 1.0, false, 1);
                softmax_tile(st, kl, shape, bi, i0, k0, Lse::Compute(&mut lh[i0..i0 + len]));
                matmul(&mut oh[i0 * d..], d, Mat::new(st, len, kl), vh.rows_range(k0, kl), 1.0, false, 1);
            }
            (oh, lh)
        })
        .collect();
    for (job, (oh, lh)) in outs.into_iter().enumerate() {
        let (bi, h, _) = shape.job(job);
        for i in 0..t {
            o[(bi * t + i) * qw + h * d..][..d].copy_from_slice(&oh[i * d..(i + 1) * d]);
        }
        lse[(bi * shape.heads + h) * t..][..t].copy_from_slice(&lh);
    }
}

/// Backward: `dq` (overwritten), `dk` and `dv` (overwritten) from `do_` and the forward's
/// inputs, output and log-sum-exp.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    shape: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    do_: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (t, d, scale) = (shape.t, shape.head_dim, shape.scale());
    let (qw, kw) = (shape.heads * d, shape.kv_heads * d);
    let parts: Vec<[Vec<f32>; 3]> = (0..shape.b * shape.heads)
        .into_par_iter()
        .map(|job| {
            let (bi, h, kh) = shape.job(job);
            let rows = shape.b * t;
            let qh = Mat::cols_of(q, rows, qw, h * d, d).rows_range(bi * t, t);
            let doh = Mat::cols_of(do_, rows, qw, h * d, d).rows_range(bi * t, t);
            let kh_ = Mat::cols_of(k, rows, kw, kh * d, d).rows_range(bi * t, t);
            let vh = Mat::cols_of(v, rows, kw, kh * d, d).rows_range(bi * t, t);
            let lh = &lse[(bi * shape.heads + h) * t..][..t];
            let (mut dqh, mut dkh, mut dvh) = (vec![0.0f32; t * d], vec![0.0f32; t * d], vec![0.0f32; t * d]);
            let (mut p, mut dp) = (vec![0.0f32; TILE * t], vec![0.0f32; TILE * t]);
            for i0 in (0..t).step_by(TILE) {
                let len = TILE.min(t - i0);
                let (k0, k1) = shape.keys(bi, i0, len);
                let kl = k1 - k0;
                let (pt, dpt) = (&mut p[..len * kl], &mut dp[..len * kl]);
                matmul(pt, kl, qh.rows_range(i0, len), kh_.rows_range(k0, kl).t(), 1.0, false, 1);
                softmax_tile(pt, kl, shape, bi, i0, k0, Lse::Saved(&lh[i0..i0 + len]));
                matmul(dpt, kl, doh.rows_range(i0, len), vh.rows_range(k0, kl).t(), 1.0, false, 1);
                for r in 0..len {
                    let row = (bi * t + i0 + r) * qw + h * d;
                    let delta: f32 = o[row..row + d].iter().zip(&do_[row..row + d]).map(|(a, b)| a * b).sum();
                    let (pr, dpr) = (&pt[r * kl..(r + 1) * kl], &mut dpt[r * kl..(r + 1) * kl]);
                    dpr.iter_mut().zip(pr).for_each(|(g, &pv)| *g = pv * (*g - delta) * scale);
                }
                let (pt, dst) = (&p[..len * kl], &dp[..len * kl]);
                matmul(&mut dqh[i0 * d..], d, Mat::new(dst, len, kl), kh_.rows_range(k0, kl), 1.0, false, 1);
                matmul(
                    &mut dkh[k0 * d..],
                    d,
                    Mat::new(dst, len, kl).t(),
                    qh.rows_range(i0, len),
                    1.0,
                    true,
                    1,
                );
                matmul(
                    &mut dvh[k0 * d..],
                    d,
                    Mat::new(pt, len, kl).t(),
                    doh.rows_range(i0, len),
                    1.0,
                    true,
                    1,
                );
            }
            [dqh, dkh, dvh]
        })
        .collect();
    dk.fill(0.0);
    dv.fill(0.0);
    for (job, [dqh, dkh, dvh]) in parts.into_iter().enumerate() {
        let (bi, h, kh) = shape.job(job);
        for i in 0..t {
            let r = bi * t + i;
            dq[r * qw + h * d..][..d].copy_from_slice(&dqh[i * d..(i + 1) * d]);
            dk[r * kw + kh * d..][..d].iter_mut().zip(&dkh[i * d..(i + 1) * d]).for_each(|(a, b)| *a += b);
            dv[r * kw + kh * d..][..d].iter_mut().zip(&dvh[i * d..(i + 1) * d]).for_each(|(a, b)| *a += b);
        }
    }
}
