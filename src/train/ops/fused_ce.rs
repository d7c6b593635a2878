//! The frozen lm_head and the masked cross-entropy as one op with its own backward.
//!
//! Differentiating `log_softmax(h Wᵀ)` through candle's graph keeps about a dozen
//! (positions × vocabulary) f32 tensors alive per chunk (the logits, the softmax's
//! intermediates and each one's gradient): 74 MiB apiece for 128 positions of a 151,936-token
//! vocabulary. This op walks the positions in chunks; per chunk its forward computes the
//! logits, the log-sum-exp and the per-token loss and drops the logits, and its backward
//! recomputes the chunk's logits and returns only `∂L/∂h = ((softmax − onehot) · g) W`. At most
//! three (chunk × vocabulary) f32 tensors exist at once, and none outlives its chunk.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor, D};

use crate::kernels::custom_op::{cpu_storage_of, cuda_storage_of, tensor_of};
use crate::model::error::{ModelError, Result};
use crate::model::weights::qlinear::FrozenLinear;

/// Per-token masked cross-entropy `(lse(h Wᵀ) − (h Wᵀ)[target]) · mask` for rows of
/// normalized hidden states `h (n, hidden)`; returns (n,) f32, differentiable in `h`.
/// `targets (n,)` u32 must be in the vocabulary wherever `mask (n,)` f32 is non-zero
/// (callers zero the rest); `chunk` positions are processed at a time.
pub fn head_cross_entropy(
    h: &Tensor,
    head: &FrozenLinear,
    targets: &Tensor,
    mask: &Tensor,
    chunk: usize,
) -> Result<Tensor> {
    let (n, hid) = h.dims2()?;
    let (vocab, k) = head.dims();
    if k != hid || targets.dims() != [n] || mask.dims() != [n] {
        return Err(ModelError::Input(format!(
            "cross-entropy shapes: hidden {:?}, head ({vocab}, {k}), targets {:?}, mask {:?}",
            h.dims(),
            targets.dims(),
            mask.dims()
        )));
    }
    let mask_host: Vec<f32> = mask.to_dtype(DType::F32)?.to_vec1()?;
    let op = HeadCe {
        head: head.clone(),
        targets: targets.to_dtype(DType::U32)?.unsqueeze(1)?,
        mask: mask.to_dtype(DType::F32)?.unsqueeze(1)?,
        mask_host,
        chunk: chunk.max(1),
        slice_rows: None,
        lse: Mutex::new(None),
    };
    Ok(h.contiguous()?.apply_op1_arc(Arc::new(Box::new(op)))?)
}

struct HeadCe {
    head: FrozenLinear,
    /// (n, 1) u32.
    targets: Tensor,
    /// (n, 1) f32.
    mask: Tensor,
    /// The mask on the host, to skip chunks where nothing counts.
    mask_host: Vec<f32>,
    chunk: usize,
    /// Vocabulary rows per dense slice of the head on a GPU (None: what fits
    /// [`crate::model::weights::cuda_dequant::SLICE_BYTES`]); tests set it small to get several slices.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    slice_rows: Option<usize>,
    /// Each row's log-sum-exp from the GPU forward, for its backward.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    lse: Mutex<Option<Tensor>>,
}

impl HeadCe {
    /// Chunks of rows with at least one counted position.
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let n = self.mask_host.len();
        (0..n)
            .step_by(self.chunk)
            .map(move |s| (s, self.chunk.min(n - s)))
            .filter(|&(s, len)| self.mask_host[s..s + len].iter().any(|&m| m != 0.0))
    }

    /// (len, vocab) f32 logits of rows s..s+len and their log-sum-exp.
    fn logits(&self, h: &Tensor, s: usize, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let z = self
            .head
            .forward(&h.narrow(0, s, len)?)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .to_dtype(DType::F32)?;
        let m = z.max_keepdim(D::Minus1)?;
        let sum = z.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?;
        let lse = (sum.log()? + &m)?;
        Ok((z, lse))
    }

    fn forward(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(loss) = self.forward_sliced(h)? {
            return Ok(loss);
        }
        let n = h.dim(0)?;
        let loss = Tensor::zeros((n, 1), DType::F32, h.device())?;
        for (s, len) in self.chunks() {
            let (z, lse) = self.logits(h, s, len)?;
            let picked = z.gather(&self.targets.narrow(0, s, len)?, 1)?;
            drop(z);
            let part = ((lse - picked)? * self.mask.narrow(0, s, len)?)?;
            loss.slice_set(&part, 0, s)?;
        }
        loss.squeeze(1)
    }

    fn backward(&self, h: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(gh) = self.backward_sliced(h, grad)? {
            return Ok(gh);
        }
        let (n, hid) = h.dims2()?;
        let coef = (grad.to_dtype(DType::F32)?.reshape((n, 1))? * &self.mask)?;
        let gh = Tensor::zeros((n, hid), DType::F32, h.device())?;
        for (s, len) in self.chunks() {
            let (z, lse) = self.logits(h, s, len)?;
            let p = z.broadcast_sub(&lse)?.exp()?;
            drop(z);
            let minus_one = Tensor::full(-1f32, (len, 1), h.device())?;
            p.scatter_add_set(&self.targets.narrow(0, s, len)?, &minus_one, 1)?;
            let dz = p.broadcast_mul(&coef.narrow(0, s, len)?)?.to_dtype(h.dtype())?;
            drop(p);
            let part = self.head.input_grad(&dz).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            gh.slice_set(&part.to_dtype(DType::F32)?, 0, s)?;
        }
        gh.to_dtype(h.dtype())
    }
}

/// On a GPU the head is walked one dense vocabulary slice at a time, each slice dequantized once
/// per pass rather than once per chunk of positions (at 2,048 positions with 64-position chunks
/// the tied Qwen2 head was expanded 224 times a step, now 7 per pass). Within a slice the
/// positions go in chunks holding as many logits as `chunk` whole rows would. The forward folds
/// each slice into a running log-sum-exp per row and picks the target's logit (one kernel per
/// slice and chunk) and keeps the log-sum-exp; the backward forms `(softmax − onehot) · g` for a
/// slice in one kernel from it and accumulates that slice's share of `∂L/∂h`. Both passes use
/// the same bf16/f16 products of the dequantized slice, so the probabilities the backward
/// rebuilds are exactly the forward's.
/// Vocabulary slices `[r0, r1)` of the lm_head, and positions per chunk.
#[cfg(feature = "cuda")]
type Slicing = (Vec<(usize, usize)>, usize);

#[cfg(feature = "cuda")]
impl HeadCe {
    /// Vocabulary slices `[r0, r1)` and positions per chunk; None where the head has a bias or a
    /// storage type without a row kernel (the chunked path above runs then).
    fn slicing(&self, h: &Tensor) -> candle_core::Result<Option<Slicing>> {
        if !h.device().is_cuda() || self.head.bias().is_some() {
            return Ok(None);
        }
        let (vocab, hid) = self.head.dims();
        let probe =
            crate::model::weights::cuda_dequant::weight_rows(self.head.weight(), 0..vocab.min(8), h.dtype())?;
        if probe.is_none() {
            return Ok(None);
        }
        let per = self.slice_rows.unwrap_or_else(|| {
            (crate::model::weights::cuda_dequant::SLICE_BYTES / (hid * h.dtype().size_in_bytes()) / 8 * 8)
                .max(8)
        });
        let slices = (0..vocab).step_by(per).map(|r0| (r0, (r0 + per).min(vocab))).collect();
        Ok(Some((slices, (self.chunk * vocab / per).max(1))))
    }

    fn dense_slice(&self, r0: usize, r1: usize, dtype: DType) -> candle_core::Result<Tensor> {
        crate::model::weights::cuda_dequant::weight_rows(self.head.weight(), r0..r1, dtype)?
            .ok_or_else(|| candle_core::Error::Msg("lm_head slice: no row kernel".into()))
    }

    fn forward_sliced(&self, h: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let candle_core::Device::Cuda(dev) = h.device() else { return Ok(None) };
        let Some((slices, rows)) = self.slicing(h)? else { return Ok(None) };
        let n = h.dim(0)?;
        let targets = self.targets.squeeze(1)?;
        let mut fold = crate::train::ops::cuda_fused::LseFold::new(dev, n)?;
        for &(r0, r1) in &slices {
            let w = self.dense_slice(r0, r1, h.dtype())?;
            let wt = w.t()?;
            for s in (0..n).step_by(rows) {
                let z = h.narrow(0, s, rows.min(n - s))?.matmul(&wt)?;
                fold.fold(&z, &targets, s, r0)?;
            }
        }
        let (lse, picked) = fold.finish()?;
        let loss = ((&lse - picked)? * self.mask.squeeze(1)?)?;
        if let Ok(mut saved) = self.lse.lock() {
            *saved = Some(lse);
        }
        Ok(Some(loss))
    }

    fn backward_sliced(&self, h: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let Some(lse) = self.lse.lock().ok().and_then(|g| g.clone()) else { return Ok(None) };
        let Some((slices, rows)) = self.slicing(h)? else { return Ok(None) };
        let (n, hid) = h.dims2()?;
        let coef = (grad.to_dtype(DType::F32)?.reshape(n)? * self.mask.squeeze(1)?)?;
        let targets = self.targets.squeeze(1)?;
        let chunks: Vec<(usize, usize)> = (0..n)
            .step_by(rows)
            .map(|s| (s, rows.min(n - s)))
            .filter(|&(s, len)| self.mask_host[s..s + len].iter().any(|&m| m != 0.0))
            .collect();
        let mut acc: Vec<Option<Tensor>> = vec![None; chunks.len()];
        for &(r0, r1) in &slices {
            let w = self.dense_slice(r0, r1, h.dtype())?;
            let wt = w.t()?;
            for (a, &(s, len)) in acc.iter_mut().zip(&chunks) {
                let z = h.narrow(0, s, len)?.matmul(&wt)?;
                let dz = crate::train::ops::cuda_fused::ce_dz(
                    &z,
                    &lse.narrow(0, s, len)?,
                    &coef.narrow(0, s, len)?,
                    &targets.narrow(0, s, len)?,
                    r0,
                )?;
                drop(z);
                let part = dz.matmul(&w)?.to_dtype(DType::F32)?;
                *a = Some(match a.take() {
                    None => part,
                    Some(prev) => (prev + part)?,
                });
            }
        }
        let gh = Tensor::zeros((n, hid), DType::F32, h.device())?;
        for (a, &(s, _)) in acc.iter().zip(&chunks) {
            if let Some(a) = a {
                gh.slice_set(a, 0, s)?;
            }
        }
        Ok(Some(gh.to_dtype(h.dtype())?))
    }
}

impl CustomOp1 for HeadCe {
    fn name(&self) -> &'static str {
        "head-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_storage_of(&self.forward(&tensor_of(s, l, Storage::Cpu)?)?)
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        cuda_storage_of(&self.forward(&tensor_of(s, l, Storage::Cuda)?)?)
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.backward(&h.detach(), &grad.detach())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{rand_t, rel};
    use crate::model::weights::qlinear::FrozenWeight;
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Var};

    /// Per-token losses and the hidden-state gradient against log-softmax differentiated by
    /// candle's graph, with masked positions (a whole masked chunk among them), for a dense
    /// head and a quantized one.
    #[test]
    fn fused_head_cross_entropy_matches_composite_loss_and_gradient() {
        let (n, hid, vocab) = (23, 64, 300);
        let dense = rand_t((vocab, hid), 1);
        let heads = [
            FrozenLinear::new(FrozenWeight::Dense(dense.clone()), None),
            FrozenLinear::quantize_ggml(&dense, GgmlDType::Q8_0, None).unwrap(),
        ];
        let h0 = rand_t((n, hid), 2);
        let tg: Vec<u32> = (0..n as u32).map(|i| (i * 37 + 5) % vocab as u32).collect();
        let targets = Tensor::new(tg.as_slice(), &Device::Cpu).unwrap();
        let m: Vec<f32> = (0..n).map(|i| if (4..9).contains(&i) || i % 7 == 3 { 0.0 } else { 1.0 }).collect();
        let mask = Tensor::new(m.as_slice(), &Device::Cpu).unwrap();
        let gy = rand_t((n, 1), 3).squeeze(1).unwrap();
        for head in &heads {
            let hv = Var::from_tensor(&h0).unwrap();
            let z = head.forward(hv.as_tensor()).unwrap();
            let lp = candle_nn::ops::log_softmax(&z, D::Minus1).unwrap();
            let picked = lp.gather(&targets.unsqueeze(1).unwrap(), 1).unwrap().squeeze(1).unwrap();
            let want = (picked.neg().unwrap() * &mask).unwrap();
            let g_want = (&want * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let g_want = g_want.get(hv.as_tensor()).unwrap();
            for chunk in [1, 4, 5, 64] {
                let hv = Var::from_tensor(&h0).unwrap();
                let got = head_cross_entropy(hv.as_tensor(), head, &targets, &mask, chunk).unwrap();
                assert!(rel(&got, &want) < 1e-5, "chunk {chunk}: loss {}", rel(&got, &want));
                let g = (&got * &gy).unwrap().sum_all().unwrap().backward().unwrap();
                let g = g.get(hv.as_tensor()).unwrap();
                assert!(rel(g, g_want) < 1e-5, "chunk {chunk}: grad {}", rel(g, g_want));
            }
        }
    }

    /// The GPU's sliced forward and backward (several vocabulary slices, chunks across slice
    /// boundaries, masked positions) against the composite log-softmax on the host; the head is
    /// Q8_0 on both, the host reference multiplying its dequantized table exactly.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_sliced_head_cross_entropy_matches_composite_on_the_host() {
        use crate::model::weights::qlinear::FrozenWeight;
        use candle_core::quantized::QTensor;
        let Ok(dev) = Device::new_cuda(0) else { return };
        let (n, hid, vocab) = (150, 128, 1000);
        let dense = rand_t((vocab, hid), 7);
        let q = QTensor::quantize_onto(&dense, GgmlDType::Q8_0, &dev).unwrap();
        let head = FrozenLinear::new(FrozenWeight::Ggml(Arc::new(q)), None);
        let w_host = head.weight().dequantize(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
        let h0 = rand_t((n, hid), 8);
        let tg: Vec<u32> = (0..n as u32).map(|i| (i * 131 + 17) % vocab as u32).collect();
        let m: Vec<f32> =
            (0..n).map(|i| if i % 5 == 2 || (40..60).contains(&i) { 0.0 } else { 1.0 }).collect();
        let (targets, mask) = (
            Tensor::new(tg.as_slice(), &Device::Cpu).unwrap(),
            Tensor::new(m.as_slice(), &Device::Cpu).unwrap(),
        );
        let gy = rand_t((n, 1), 9).squeeze(1).unwrap();
        let hv = Var::from_tensor(&h0).unwrap();
        let lp =
            candle_nn::ops::log_softmax(&hv.as_tensor().matmul(&w_host.t().unwrap()).unwrap(), D::Minus1)
                .unwrap();
        let want = (lp.gather(&targets.unsqueeze(1).unwrap(), 1).unwrap().squeeze(1).unwrap().neg().unwrap()
            * &mask)
            .unwrap();
        let g_want = (&want * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let g_want = g_want.get(hv.as_tensor()).unwrap();
        let put = |t: &Tensor| t.to_device(&dev).unwrap();
        for (dt, tol) in [(DType::F32, 1e-4f32), (DType::BF16, 2e-2)] {
            for (chunk, slice_rows) in [(7, 96), (64, 1000)] {
                let hd = Var::from_tensor(&put(&h0).to_dtype(dt).unwrap()).unwrap();
                let op = HeadCe {
                    head: head.clone(),
                    targets: put(&targets).unsqueeze(1).unwrap(),
                    mask: put(&mask).unsqueeze(1).unwrap(),
                    mask_host: m.clone(),
                    chunk,
                    slice_rows: Some(slice_rows),
                    lse: Mutex::new(None),
                };
                let got = hd.as_tensor().apply_op1_arc(Arc::new(Box::new(op))).unwrap();
                let gyd = put(&gy);
                let g = (&got * &gyd).unwrap().sum_all().unwrap().backward().unwrap();
                let got = got.to_device(&Device::Cpu).unwrap();
                assert!(rel(&got, &want) < tol, "{dt:?} {chunk}/{slice_rows}: loss {}", rel(&got, &want));
                let g = g
                    .get(hd.as_tensor())
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_device(&Device::Cpu)
                    .unwrap();
                assert!(rel(&g, g_want) < tol, "{dt:?} {chunk}/{slice_rows}: grad {}", rel(&g, g_want));
            }
        }
    }
}
