//! The element-wise pieces of a decoder block on row-major f32 buffers, each with its
//! backward: RMSNorm, rotary position embedding, SwiGLU and LoRA's inverted dropout. Each is
//! one pass over its rows (split across the thread pool), where the same step built from
//! tensor ops is several passes with a fresh buffer each, and again as many in the backward.

use rayon::prelude::*;

/// Rows per parallel task: enough work per task that waking the pool pays.
fn rows_per_task(cols: usize) -> usize {
    (16_384 / cols.max(1)).max(1)
}

/// `y = x · rstd · w` per row, `rstd = 1/√(mean(x²) + eps)`; keeps `rstd` for the backward.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    let h = w.len();
    let per = rows_per_task(h);
    y.par_chunks_mut(h * per).zip(rstd.par_chunks_mut(per)).enumerate().for_each(|(c, (ys, rs))| {
        for (r, (yr, rr)) in ys.chunks_mut(h).zip(rs.iter_mut()).enumerate() {
            let xr = &x[(c * per + r) * h..(c * per + r + 1) * h];
            let ms = xr.iter().fold(0.0f32, |a, v| a + v * v) / h as f32;
            let s = 1.0 / (ms + eps).sqrt();
            *rr = s;
            for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                *o = xv * s * wv;
            }
        }
    });
}

/// `dx += ∂/∂x` of [`rms_norm`] given `dy` (the norm's weight is frozen).
pub fn rms_norm_backward(x: &[f32], w: &[f32], rstd: &[f32], dy: &[f32], dx: &mut [f32]) {
    let h = w.len();
    let per = rows_per_task(h);
    dx.par_chunks_mut(h * per).enumerate().for_each(|(c, dxs)| {
        for (r, dxr) in dxs.chunks_mut(h).enumerate() {
            let row = c * per + r;
            let (xr, dyr, s) = (&x[row * h..(row + 1) * h], &dy[row * h..(row + 1) * h], rstd[row]);
            // With x̂ = x·rstd and g = dy·w: dx = rstd · (g − x̂ · mean(g · x̂)).
            let gx = xr.iter().zip(dyr).zip(w).map(|((&xv, &d), &wv)| d * wv * xv).sum::<f32>();
            let c2 = gx * s * s * s / h as f32;
            for (((o, &xv), &d), &wv) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
                *o += s * (d * wv) - c2 * xv;
            }
        }
    });
}

/// The rotation tables and each row's position.
pub struct Rope<'a> {
    /// (max_position, head_dim/2) row-major.
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub pos: &'a [u32],
    pub head_dim: usize,
}

impl Rope<'_> {
    /// Rotates every head of `x` (rows, heads·head_dim) in place; `inverse` applies the
    /// transpose of the rotation, which is the backward.
    pub fn apply(&self, x: &mut [f32], heads: usize, inverse: bool) {
        let (hd, half) = (self.head_dim, self.head_dim / 2);
        let w = heads * hd;
        let per = rows_per_task(w);
        x.par_chunks_mut(w * per).enumerate().for_each(|(c, xs)| {
            for (r, xr) in xs.chunks_mut(w).enumerate() {
                let p = self.pos[c * per + r] as usize;
                let (co, si) = (&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half]);
                for head in xr.chunks_mut(hd) {
                    let (x1, x2) = head.split_at_mut(half);
                    for i in 0..half {
                        let (a, b, c, s) = (x1[i], x2[i], co[i], si[i]);
                        if inverse {
                            x1[i] = a * c + b * s;
                            x2[i] = b * c - a * s;
                        } else {
                            x1[i] = a * c - b * s;
                            x2[i] = b * c + a * s;
                        }
                    }
                }
            }
        });
    }
}

/// `eˣ` to within a few units in the last place, in straight-line arithmetic the compiler
/// vectorizes (the C library's `expf` is a call per element): `x = k·ln2 + r` with
/// `|r| ≤ ln2/2`, a degree-6 polynomial for `eʳ`, and `2ᵏ` built in the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that k · LN2_HI is exact for the k that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let k = t - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let ki = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    e * f32::from_bits(((ki + 127) as u32) << 23)
}

/// Sum with eight independent accumulators: a single running sum is a dependency chain the
/// compiler may not reorder, so it would stay scalar.
#[inline]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Largest element (−∞ for none), vectorized as [`sum`] is.
#[inline]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a });
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().fold(tail, |a, &v| if v > a { v } else { a })
}

/// `xs[i] = exp(xs[i] · scale − shift)`.
#[inline]
pub fn exp_shifted(xs: &mut [f32], scale: f32, shift: f32) {
    xs.iter_mut().for_each(|v| *v = exp(*v * scale - shift));
}

/// Softmax of `row` in place; returns the log-sum-exp.
pub fn softmax_in_place(row: &mut [f32]) -> f32 {
    let m = max(row);
    exp_shifted(row, 1.0, m);
    let total = sum(row);
    let inv = 1.0 / total;
    row.iter_mut().for_each(|v| *v *= inv);
    m + total.ln()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `m = silu(gate) · up`.
pub fn swiglu(gate: &[f32], up: &[f32], m: &mut [f32]) {
    m.par_chunks_mut(16_384).enumerate().for_each(|(c, ms)| {
        let o = c * 16_384;
        for (i, v) in ms.iter_mut().enumerate() {
            let g = gate[o + i];
            *v = g * sigmoid(g) * up[o + i];
        }
    });
}

/// Gradients of [`swiglu`]: `dgate` and `dup` from `dm`.
pub fn swiglu_backward(gate: &[f32], up: &[f32], dm: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    dgate.par_chunks_mut(16_384).zip(dup.par_chunks_mut(16_384)).enumerate().for_each(|(c, (dg, du))| {
        let o = c * 16_384;
        for i in 0..dg.len() {
            let (g, u, d) = (gate[o + i], up[o + i], dm[o + i]);
            let s = sigmoid(g);
            du[i] = d * g * s;
            dg[i] = d * u * s * (1.0 + g * (1.0 - s));
        }
    });
}

/// `out[i] = src[i] · mask[i] · inv`: inverted dropout from saved keep bytes.
pub fn apply_mask(src: &[f32], mask: &[u8], inv: f32, out: &mut [f32]) {
    out.par_chunks_mut(16_384).enumerate().for_each(|(c, os)| {
        let o = c * 16_384;
        let (s, m) = (&src[o..o + os.len()], &mask[o..o + os.len()]);
        for ((v, &x), &k) in os.iter_mut().zip(s).zip(m) {
            *v = x * (f32::from(k) * inv);
        }
    });
}

/// `dst[i] += src[i] · mask[i] · inv`.
pub fn add_masked(src: &[f32], mask: &[u8], inv: f32, dst: &mut [f32]) {
    dst.par_chunks_mut(16_384).enumerate().for_each(|(c, ds)| {
        let o = c * 16_384;
        let (s, m) = (&src[o..o + ds.len()], &mask[o..o + ds.len()]);
        for ((v, &x), &k) in ds.iter_mut().zip(s).zip(m) {
            *v += x * (f32::from(k) * inv);
        }
    });
}

/// `dst += src`.
pub fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(16_384).zip(src.par_chunks(16_384)).for_each(|(d, s)| {
        d.iter_mut().zip(s).for_each(|(a, b)| *a += b);
    });
}

/// Adds `bias` (cols) to every row of `y` (rows, cols).
pub fn add_bias(y: &mut [f32], bias: &[f32]) {
    let per = rows_per_task(bias.len());
    y.par_chunks_mut(bias.len() * per).for_each(|ys| {
        for r in ys.chunks_mut(bias.len()) {
            r.iter_mut().zip(bias).for_each(|(a, b)| *a += b);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lora_op::DropMask;

    /// The polynomial exp against the C library's over the range softmax and SiLU meet.
    #[test]
    fn fast_exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e30) < 1e-37 && exp(-1e30) >= 0.0);
    }

    /// The mask keeps about `keep` of the elements, the same ones every time, and the
    /// bulk forms agree with the per-element one.
    #[test]
    fn dropout_mask_rate_and_forms_agree() {
        let m = DropMask { seed: 42, keep: 0.95 };
        let n = 100_003;
        let kept = (0..n).filter(|&i| m.kept(i)).count() as f64 / n as f64;
        assert!((kept - 0.95).abs() < 0.003, "kept {kept}");
        let bytes = m.bytes(n);
        let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let inv = 1.0 / 0.95f32;
        let mut out = vec![0.0; n];
        apply_mask(&src, &bytes, inv, &mut out);
        let mut acc = vec![1.0; n];
        add_masked(&src, &bytes, inv, &mut acc);
        for i in 0..n {
            assert_eq!(bytes[i] == 1, m.kept(i), "element {i}");
            let want = if m.kept(i) { src[i] * inv } else { 0.0 };
            assert_eq!(out[i], want);
            assert_eq!(acc[i], 1.0 + want);
        }
        assert!(DropMask { seed: 1, keep: 1.0 }.kept(7));
    }
}
