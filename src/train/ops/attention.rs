//! Causal, segment-aware attention for the training path, computed one tile of query
//! positions at a time, with its own backward.
//!
//! The composite form (`softmax(q kᵀ · scale + mask) v` from differentiable ops) keeps the
//! whole (heads, t, t) score and probability matrices, and their gradients, alive in the
//! autograd graph: at 2,048 positions and 12 heads that is ~190 MiB per f32 tensor, and one
//! recomputed block holds several. Here the forward keeps only the output and each row's
//! log-sum-exp; the backward recomputes one tile of scores at a time and forms
//! `dS = P ∘ (dP − rowsum(dO ∘ O))`, so the transient is bounded by [`TILE_ELEMS`] whatever
//! the length. Grouped-query heads are stacked along the query axis of their shared KV head,
//! so K and V are never repeated, and each tile stops at its last query's position (causal)
//! and starts at the earliest segment start among its rows (packed documents).
//!
//! The products run through candle's own matmul (cuBLAS on a GPU) in the inputs' dtype; the
//! softmax, the saved statistics and the gradient accumulators are f32.

use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor, D};

use crate::kernels::custom_op::{cpu_storage_of, cuda_storage_of, tensor_of};

use crate::model::error::{ModelError, Result};

/// Most score elements one tile holds (32 MiB in f32); the backward keeps about four such
/// tensors alive at once.
pub const TILE_ELEMS: usize = 1 << 23;

/// The first position of each position's segment, row-major (b·t), from per-row segment
/// ids: a position whose id differs from its predecessor's starts a segment. An id may recur
/// later in the row (a document split by another): only the contiguous run counts.
pub fn segment_starts(seg: &[u32], b: usize, t: usize) -> Result<Vec<usize>> {
    if seg.len() != b * t {
        return Err(ModelError::Input(format!("segment_ids has {} entries, expected {}", seg.len(), b * t)));
    }
    let mut starts = vec![0usize; b * t];
    for r in 0..b {
        let s = &seg[r * t..(r + 1) * t];
        let mut start = 0;
        for i in 0..t {
            if i > 0 && s[i] != s[i - 1] {
                start = i;
            }
            starts[r * t + i] = start;
        }
    }
    Ok(starts)
}

/// Each position's index within its segment (RoPE restarts at 0 in each packed document),
/// row-major (b·t) from [`segment_starts`]; an error where one reaches `max_position`. The
/// rule both training paths use.
pub fn segment_positions(seg_start: &[usize], t: usize, max_position: usize) -> Result<Vec<u32>> {
    let pos: Vec<u32> = (0..seg_start.len()).map(|p| (p % t - seg_start[p]) as u32).collect();
    if let Some(&m) = pos.iter().max() {
        if m as usize >= max_position {
            return Err(ModelError::Input(format!("position {m} exceeds the model's maximum")));
        }
    }
    Ok(pos)
}

/// Which keys each query may see: causal within its segment, nothing across segments.
#[derive(Debug, Clone)]
pub struct AttnMask {
    /// (b, 1, t, t) additive f32 mask: 0 where visible, −∞ elsewhere.
    bias: Tensor,
    /// (b·t): the first position of each position's segment.
    seg_start: Vec<usize>,
    /// The same as u32 on the mask's device, for the device kernels.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    seg_start_dev: Tensor,
    b: usize,
    t: usize,
}

impl AttnMask {
    /// From per-row segment ids (b·t, row-major); positions with a new id start a segment.
    pub fn from_segments(seg: &[u32], b: usize, t: usize, device: &Device) -> Result<Self> {
        let seg_start = segment_starts(seg, b, t)?;
        let mut bias = vec![f32::NEG_INFINITY; b * t * t];
        for (p, &start) in seg_start.iter().enumerate() {
            bias[p * t + start..=p * t + p % t].fill(0.0);
        }
        let bias = Tensor::from_vec(bias, (b, 1, t, t), device)?;
        let seg_start_dev =
            Tensor::from_vec(seg_start.iter().map(|&s| s as u32).collect::<Vec<_>>(), b * t, device)?;
        Ok(Self { bias, seg_start, seg_start_dev, b, t })
    }

    /// Position of each token within its segment (restarts at 0), row-major (b·t).
    pub fn positions(&self, max_position: usize) -> Result<Vec<u32>> {
        segment_positions(&self.seg_start, self.t, max_position)
    }

    /// The additive mask (b, 1, t, t) f32, for reference computations.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Keys that any query of rows `i0..i0+len` can see: from the earliest segment start among
    /// the batch's rows at `i0` (starts only grow along a row) to the tile's last position.
    fn key_range(&self, i0: usize, len: usize) -> (usize, usize) {
        let k0 = (0..self.b).map(|r| self.seg_start[r * self.t + i0]).min().unwrap_or(0);
        (k0, i0 + len)
    }
}

/// `softmax(q kᵀ / √d + mask) v` for q (b, heads, t, d) and k, v (b, kv_heads, t, d), with
/// a backward to all three; returns (b, heads, t, d) in q's dtype.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask) -> Result<Tensor> {
    attention_tiled(q, k, v, mask, None)
}

/// [`attention`] with an explicit number of query positions per tile (tests use small tiles
/// to cover the tile boundaries on small shapes).
pub fn attention_tiled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    tile: Option<usize>,
) -> Result<Tensor> {
    let (b, nh, t, hd) = q.dims4()?;
    let (bk, nkv, tk, hdk) = k.dims4()?;
    if (bk, tk, hdk) != (b, t, hd) || v.dims() != k.dims() || nkv == 0 || nh % nkv != 0 {
        return Err(ModelError::Input(format!(
            "attention shapes q {:?} k {:?} v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    if (mask.b, mask.t) != (b, t) {
        return Err(ModelError::Input(format!(
            "attention mask is for ({}, {}), input ({b}, {t})",
            mask.b, mask.t
        )));
    }
    let tile = tile.unwrap_or(TILE_ELEMS / (b * nh * t).max(1)).clamp(1, t.max(1));
    let op = TiledAttention { mask: mask.clone(), scale: 1.0 / (hd as f64).sqrt(), tile };
    let out = q.contiguous()?.apply_op3_arc(
        &k.contiguous()?,
        &v.contiguous()?,
        std::sync::Arc::new(Box::new(op)),
    )?;
    // The op's last column is the row's log-sum-exp, kept for the backward.
    Ok(out.narrow(3, 0, hd)?.to_dtype(q.dtype())?)
}

struct TiledAttention {
    mask: AttnMask,
    scale: f64,
    tile: usize,
}

/// Product in the operands' compute dtype, result in f32.
fn mm(a: &Tensor, b: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    a.to_dtype(dtype)?.matmul(&b.to_dtype(dtype)?)?.to_dtype(DType::F32)
}

/// The tile's queries with the g heads of each KV head stacked: (b, kv, g·len, d).
fn query_tile(q5: &Tensor, i0: usize, len: usize) -> candle_core::Result<Tensor> {
    let (b, nkv, g, _, hd) = q5.dims5()?;
    q5.narrow(3, i0, len)?.contiguous()?.reshape((b, nkv, g * len, hd))
}

impl TiledAttention {
    /// Scaled, masked scores of a query tile against keys k0..k1: (b, kv, g, len, k1−k0) f32.
    fn scores(
        &self,
        qt: &Tensor,
        kt: &Tensor,
        g: usize,
        i0: usize,
        k0: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, nkv, gl, _) = qt.dims4()?;
        let kl = kt.dim(2)?;
        let len = gl / g;
        let s = mm(qt, &kt.t()?, qt.dtype())?.affine(self.scale, 0.0)?.reshape((b, nkv, g, len, kl))?;
        let bias = self.mask.bias.narrow(2, i0, len)?.narrow(3, k0, kl)?.unsqueeze(1)?;
        s.broadcast_add(&bias)
    }

    /// (b, heads, t, d + 1) f32: the output, then each row's log-sum-exp.
    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if q.device().is_cuda() {
            return self.forward_cuda(q, k, v);
        }
        let (b, nh, t, hd) = q.dims4()?;
        let nkv = k.dim(1)?;
        let g = nh / nkv;
        let q5 = q.reshape((b, nkv, g, t, hd))?;
        let mut pieces = Vec::with_capacity(t.div_ceil(self.tile));
        for i0 in (0..t).step_by(self.tile) {
            let len = self.tile.min(t - i0);
            let (k0, k1) = self.mask.key_range(i0, len);
            let qt = query_tile(&q5, i0, len)?;
            let s = self.scores(&qt, &k.narrow(2, k0, k1 - k0)?, g, i0, k0)?;
            // Every row sees at least its own position, so the max is finite.
            let m = s.max_keepdim(D::Minus1)?;
            let p = s.broadcast_sub(&m)?.exp()?;
            drop(s);
            let l = p.sum_keepdim(D::Minus1)?;
            let o = mm(&p.reshape((b, nkv, g * len, k1 - k0))?, &v.narrow(2, k0, k1 - k0)?, q.dtype())?;
            let o = o.reshape((b, nkv, g, len, hd))?.broadcast_div(&l)?;
            let lse = (m + l.log()?)?;
            pieces.push(Tensor::cat(&[&o, &lse], D::Minus1)?);
        }
        Tensor::cat(&pieces, 3)?.reshape((b, nh, t, hd + 1))
    }

    fn backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        #[cfg(feature = "cuda")]
        if q.device().is_cuda() {
            return self.backward_cuda(q, k, v, res, grad);
        }
        let (b, nh, t, hd) = q.dims4()?;
        let nkv = k.dim(1)?;
        let g = nh / nkv;
        let cd = q.dtype();
        let o = res.narrow(3, 0, hd)?;
        let go = grad.narrow(3, 0, hd)?.to_dtype(DType::F32)?;
        let five = (b, nkv, g, t, 1);
        let lse = res.narrow(3, hd, 1)?.contiguous()?.reshape(five)?;
        let dsum = (&go * o)?.sum_keepdim(D::Minus1)?.reshape(five)?;
        let go5 = go.reshape((b, nkv, g, t, hd))?;
        let q5 = q.reshape((b, nkv, g, t, hd))?;
        let dk = Tensor::zeros((b, nkv, t, hd), DType::F32, q.device())?;
        let dv = Tensor::zeros((b, nkv, t, hd), DType::F32, q.device())?;
        let mut dq = Vec::with_capacity(t.div_ceil(self.tile));
        for i0 in (0..t).step_by(self.tile) {
            let len = self.tile.min(t - i0);
            let (k0, k1) = self.mask.key_range(i0, len);
            let kl = k1 - k0;
            let kt = k.narrow(2, k0, kl)?;
            let vt = v.narrow(2, k0, kl)?;
            let qt = query_tile(&q5, i0, len)?;
            let p = self.scores(&qt, &kt, g, i0, k0)?.broadcast_sub(&lse.narrow(3, i0, len)?)?.exp()?;
            let got = query_tile(&go5, i0, len)?;
            let p4 = p.reshape((b, nkv, g * len, kl))?;
            accumulate(&dv, &mm(&p4.t()?, &got, cd)?, k0)?;
            drop(p4);
            let dp = mm(&got, &vt.t()?, cd)?.reshape((b, nkv, g, len, kl))?;
            let ds = (dp.broadcast_sub(&dsum.narrow(3, i0, len)?)? * p)?.affine(self.scale, 0.0)?;
            let ds = ds.reshape((b, nkv, g * len, kl))?;
            dq.push(mm(&ds, &kt, cd)?.reshape((b, nkv, g, len, hd))?);
            accumulate(&dk, &mm(&ds.t()?, &qt, cd)?, k0)?;
        }
        let dq = Tensor::cat(&dq, 3)?.reshape((b, nh, t, hd))?.to_dtype(q.dtype())?;
        Ok((dq, dk.to_dtype(k.dtype())?, dv.to_dtype(v.dtype())?))
    }
}

/// The same computation with the row-wise steps in device kernels (cuda_attn.rs): scores,
/// probabilities and score gradients stay in the compute dtype, one pass each.
#[cfg(feature = "cuda")]
impl TiledAttention {
    fn geom(
        &self,
        nkv: usize,
        g: usize,
        i0: usize,
        len: usize,
        k0: usize,
    ) -> crate::train::ops::cuda_attn::TileGeom {
        crate::train::ops::cuda_attn::TileGeom { len, rows_per_batch: nkv * g * len, i0, k0, t: self.mask.t }
    }

    fn forward_cuda(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        use crate::train::ops::cuda_attn::softmax_fwd;
        let (b, nh, t, hd) = q.dims4()?;
        let nkv = k.dim(1)?;
        let g = nh / nkv;
        let q5 = q.reshape((b, nkv, g, t, hd))?;
        let mut pieces = Vec::with_capacity(t.div_ceil(self.tile));
        for i0 in (0..t).step_by(self.tile) {
            let len = self.tile.min(t - i0);
            let (k0, k1) = self.mask.key_range(i0, len);
            let qt = query_tile(&q5, i0, len)?;
            let s = qt.matmul(&k.narrow(2, k0, k1 - k0)?.t()?)?;
            let geom = self.geom(nkv, g, i0, len, k0);
            let (p, lse) = softmax_fwd(&s, &self.mask.seg_start_dev, geom, self.scale as f32)?;
            drop(s);
            let o = p.matmul(&v.narrow(2, k0, k1 - k0)?)?.to_dtype(DType::F32)?;
            let o = o.reshape((b, nkv, g, len, hd))?;
            pieces.push(Tensor::cat(&[&o, &lse.reshape((b, nkv, g, len, 1))?], D::Minus1)?);
        }
        Tensor::cat(&pieces, 3)?.reshape((b, nh, t, hd + 1))
    }

    fn backward_cuda(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        use crate::train::ops::cuda_attn::{dscores, probs};
        let (b, nh, t, hd) = q.dims4()?;
        let nkv = k.dim(1)?;
        let g = nh / nkv;
        let cd = q.dtype();
        let o = res.narrow(3, 0, hd)?;
        let go = grad.narrow(3, 0, hd)?.to_dtype(DType::F32)?;
        let five = (b, nkv, g, t, 1);
        let lse = res.narrow(3, hd, 1)?.contiguous()?.reshape(five)?;
        let dsum = (&go * o)?.sum_keepdim(D::Minus1)?.reshape(five)?;
        let go5 = go.to_dtype(cd)?.reshape((b, nkv, g, t, hd))?;
        let q5 = q.reshape((b, nkv, g, t, hd))?;
        let dk = Tensor::zeros((b, nkv, t, hd), DType::F32, q.device())?;
        let dv = Tensor::zeros((b, nkv, t, hd), DType::F32, q.device())?;
        let mut dq = Vec::with_capacity(t.div_ceil(self.tile));
        let scale = self.scale as f32;
        for i0 in (0..t).step_by(self.tile) {
            let len = self.tile.min(t - i0);
            let (k0, k1) = self.mask.key_range(i0, len);
            let kl = k1 - k0;
            let kt = k.narrow(2, k0, kl)?;
            let vt = v.narrow(2, k0, kl)?;
            let qt = query_tile(&q5, i0, len)?;
            let geom = self.geom(nkv, g, i0, len, k0);
            let s = qt.matmul(&kt.t()?)?;
            let p = probs(&s, &lse.narrow(3, i0, len)?.contiguous()?, &self.mask.seg_start_dev, geom, scale)?;
            drop(s);
            let got = query_tile(&go5, i0, len)?;
            accumulate(&dv, &p.t()?.matmul(&got)?.to_dtype(DType::F32)?, k0)?;
            let dp = got.matmul(&vt.t()?)?;
            let ds = dscores(&p, &dp, &dsum.narrow(3, i0, len)?.contiguous()?, scale)?;
            drop((p, dp));
            dq.push(ds.matmul(&kt)?.reshape((b, nkv, g, len, hd))?);
            accumulate(&dk, &ds.t()?.matmul(&qt)?.to_dtype(DType::F32)?, k0)?;
        }
        let dq = Tensor::cat(&dq, 3)?.reshape((b, nh, t, hd))?.to_dtype(q.dtype())?;
        Ok((dq, dk.to_dtype(k.dtype())?, dv.to_dtype(v.dtype())?))
    }
}

/// `acc[:, :, k0..k0+n] += part` in place (acc is a fresh, graph-free accumulator).
fn accumulate(acc: &Tensor, part: &Tensor, k0: usize) -> candle_core::Result<()> {
    let n = part.dim(2)?;
    let sum = (acc.narrow(2, k0, n)? + part)?.contiguous()?;
    acc.slice_set(&sum, 2, k0)
}

impl CustomOp3 for TiledAttention {
    fn name(&self) -> &'static str {
        "tiled-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = tensor_of(s1, l1, Storage::Cpu)?;
        let k = tensor_of(s2, l2, Storage::Cpu)?;
        let v = tensor_of(s3, l3, Storage::Cpu)?;
        cpu_storage_of(&self.forward(&q, &k, &v)?)
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let q = tensor_of(s1, l1, Storage::Cuda)?;
        let k = tensor_of(s2, l2, Storage::Cuda)?;
        let v = tensor_of(s3, l3, Storage::Cuda)?;
        cuda_storage_of(&self.forward(&q, &k, &v)?)
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Detached so the recomputation records no graph of its own.
        let (dq, dk, dv) =
            self.backward(&q.detach(), &k.detach(), &v.detach(), &res.detach(), &grad.detach())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The plain form, kept as the reference the tiled op is checked against: repeated K/V, the
/// whole score matrix, softmax from differentiable ops.
#[cfg(test)]
pub(crate) fn composite_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask) -> Result<Tensor> {
    let (_, nh, _, hd) = q.dims4()?;
    let g = nh / k.dim(1)?;
    let rep = |x: &Tensor| -> Result<Tensor> {
        let (b, kv, t, d) = x.dims4()?;
        Ok(x.unsqueeze(2)?.broadcast_as((b, kv, g, t, d))?.contiguous()?.reshape((b, kv * g, t, d))?)
    };
    let s = (q.contiguous()?.matmul(&rep(k)?.t()?)? / (hd as f64).sqrt())?;
    let s = s.to_dtype(DType::F32)?.broadcast_add(mask.bias())?;
    let p = candle_nn::ops::softmax(&s, D::Minus1)?.to_dtype(q.dtype())?;
    Ok(p.matmul(&rep(v)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{rand_t as unit_rand, rel};

    /// Scores need a wider spread than unit values to exercise the softmax.
    fn rand_t(shape: &[usize], seed: u64) -> Tensor {
        (unit_rand(shape, seed) * 1.5).unwrap()
    }
    use candle_core::Var;

    /// Values and gradients of q, k and v against the composite form, over packed segments,
    /// grouped heads and tiles that do not divide the length.
    #[test]
    fn tiled_attention_matches_composite_values_and_gradients() {
        let (b, nh, nkv, t, hd) = (2, 6, 2, 19, 8);
        // Row 0: three documents; row 1: one document then padding in its own segment.
        let mut seg = vec![0u32; 7];
        seg.extend([1; 5]);
        seg.extend([2; 7]);
        seg.extend([0; 15]);
        seg.extend([9; 4]);
        let mask = AttnMask::from_segments(&seg, b, t, &Device::Cpu).unwrap();
        let q0 = rand_t(&[b, nh, t, hd], 1);
        let k0 = rand_t(&[b, nkv, t, hd], 2);
        let v0 = rand_t(&[b, nkv, t, hd], 3);
        let w = rand_t(&[b, nh, t, hd], 4);
        let run = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor| {
            let (q, k, v) = (
                Var::from_tensor(&q0).unwrap(),
                Var::from_tensor(&k0).unwrap(),
                Var::from_tensor(&v0).unwrap(),
            );
            let o = f(q.as_tensor(), k.as_tensor(), v.as_tensor());
            let g = (&o * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gs: Vec<Tensor> =
                [&q, &k, &v].iter().map(|x| g.get(x.as_tensor()).unwrap().clone()).collect();
            (o, gs)
        };
        let (o_ref, g_ref) = run(&|q, k, v| composite_attention(q, k, v, &mask).unwrap());
        for tile in [None, Some(1), Some(4), Some(7), Some(19)] {
            let (o, gs) = run(&|q, k, v| attention_tiled(q, k, v, &mask, tile).unwrap());
            assert!(rel(&o, &o_ref) < 1e-5, "tile {tile:?}: output {}", rel(&o, &o_ref));
            for (name, (a, r)) in ["q", "k", "v"].iter().zip(gs.iter().zip(&g_ref)) {
                assert!(rel(a, r) < 1e-5, "tile {tile:?}: grad {name} {}", rel(a, r));
            }
        }
    }

    /// Positions restart at each segment; a recurring id after another segment starts anew.
    #[test]
    fn segment_positions_restart_and_never_see_an_earlier_run() {
        let seg = [4u32, 4, 4, 5, 5, 4, 4];
        let m = AttnMask::from_segments(&seg, 1, 7, &Device::Cpu).unwrap();
        assert_eq!(m.positions(usize::MAX).unwrap(), vec![0, 1, 2, 0, 1, 0, 1]);
        let bias: Vec<Vec<f32>> = m.bias().squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        assert_eq!(bias[6][5], 0.0);
        assert_eq!(bias[6][6], 0.0);
        assert!(bias[6][2].is_infinite() && bias[6][4].is_infinite() && bias[2][3].is_infinite());
        assert!(AttnMask::from_segments(&seg, 1, 6, &Device::Cpu).is_err());
    }

    /// The device kernels (masked softmax, probabilities, score gradient) against the
    /// composite form on the host: f32 within 1e-5, bf16 within bf16 rounding.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_tiled_attention_matches_composite_on_the_host() {
        let Ok(dev) = Device::new_cuda(0) else { return };
        let (b, nh, nkv, t, hd) = (2, 12, 2, 300, 64);
        let seg: Vec<u32> =
            (0..b * t).map(|p| if p < t { (p / 70) as u32 } else { u32::from(p % t >= 250) }).collect();
        let host_mask = AttnMask::from_segments(&seg, b, t, &Device::Cpu).unwrap();
        let dev_mask = AttnMask::from_segments(&seg, b, t, &dev).unwrap();
        let q0 = rand_t(&[b, nh, t, hd], 11);
        let k0 = rand_t(&[b, nkv, t, hd], 12);
        let v0 = rand_t(&[b, nkv, t, hd], 13);
        let w = rand_t(&[b, nh, t, hd], 14);
        let grads = |o: &Tensor, vars: &[&Var]| {
            let g = (o * w.to_device(o.device()).unwrap().to_dtype(o.dtype()).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            vars.iter()
                .map(|v| {
                    g.get(v.as_tensor())
                        .unwrap()
                        .to_device(&Device::Cpu)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        let (q, k, v) =
            (Var::from_tensor(&q0).unwrap(), Var::from_tensor(&k0).unwrap(), Var::from_tensor(&v0).unwrap());
        let o_ref = composite_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &host_mask).unwrap();
        let g_ref = grads(&o_ref, &[&q, &k, &v]);
        for (dt, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 2e-2)] {
            for tile in [None, Some(37)] {
                let put =
                    |x: &Tensor| Var::from_tensor(&x.to_device(&dev).unwrap().to_dtype(dt).unwrap()).unwrap();
                let (q, k, v) = (put(&q0), put(&k0), put(&v0));
                let o =
                    attention_tiled(q.as_tensor(), k.as_tensor(), v.as_tensor(), &dev_mask, tile).unwrap();
                let oh = o.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
                assert!(rel(&oh, &o_ref) < tol, "{dt:?} tile {tile:?}: output {}", rel(&oh, &o_ref));
                for (name, (a, r)) in ["q", "k", "v"].iter().zip(grads(&o, &[&q, &k, &v]).iter().zip(&g_ref))
                {
                    assert!(rel(a, r) < tol, "{dt:?} tile {tile:?}: grad {name} {}", rel(a, r));
                }
            }
        }
    }
}
