//! The frozen lm_head and the masked cross-entropy as one op with its own backward.
//!
//! Differentiating `log_softmax(h Wᵀ)` through candle's graph keeps about a dozen
//! (positions × vocabulary) f32 tensors alive per chunk (the logits, the softmax's
//! intermediates and each one's gradient): 74 MiB apiece for 128 positions of a 151,936-token
//! vocabulary. This op walks the positions in chunks; per chunk its forward computes the
//! logits, the log-sum-exp and the per-token loss and drops the logits, and its backward
//! recomputes the chunk's logits and returns only `∂L/∂h = ((softmax − onehot) · g) W`. At most
//! three (chunk × vocabulary) f32 tensors exist at once, and none outlives its chunk.

use std::sync::Arc;

use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor, D};

use super::custom_op::{cpu_storage_of, cuda_storage_of, tensor_of};
use super::error::{ModelError, Result};
use super::qlinear::FrozenLinear;

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
    use crate::model::qlinear::FrozenWeight;
    use crate::model::testing::{rand_t, rel};
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
}
