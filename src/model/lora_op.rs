//! The adapter branch `scale · (drop(x) Aᵀ) Bᵀ` as one op with its own backward.
//!
//! Built from candle ops, the branch keeps for the backward an f32 copy of the input, the
//! dropout mask, the masked input, the rank-r product and the full-width f32 output and its
//! scaled copy: for the MLP's down projection at 2,048 positions that is over 300 MiB for one
//! projection, and one recomputed block held about 1 GB. This op keeps nothing but its inputs
//! (the activation, which the frozen projection holds anyway, and A, B): the backward
//! regenerates the dropout mask from its seed (masks are a function of the seed, on the
//! device and on the host alike) and recomputes the rank-r product, which is cheap.
//! Arithmetic is f32 throughout, as in the composite form.

use std::sync::Arc;

use rayon::prelude::*;

use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor};

use crate::kernels::custom_op::{cpu_storage_of, cuda_storage_of, tensor_of};
use crate::model::error::Result;

/// Inverted-dropout settings of one branch application.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    pub seed: u64,
    /// Probability of keeping an element, in (0, 1].
    pub keep: f64,
}

/// An f32 mask of `shape`: `1/keep` where kept, else 0; the same for the same seed (the
/// host's and the device's hashes differ: each is reproducible on its own side).
pub fn dropout_mask(dev: &Device, shape: (usize, usize), d: Dropout) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if dev.is_cuda() {
        return Ok(crate::kernels::cuda::cuda_dropout::mask(dev, shape, d.seed, d.keep)?);
    }
    let mask = DropMask { seed: d.seed, keep: d.keep as f32 };
    let inv = 1.0 / mask.keep;
    let m: Vec<f32> = (0..shape.0 * shape.1).map(|i| if mask.kept(i) { inv } else { 0.0 }).collect();
    Ok(Tensor::from_vec(m, shape, dev)?)
}

/// `scale · (drop(x) Aᵀ) Bᵀ` for x (rows, in) in the compute dtype, A (r, in) and B (out, r)
/// f32; (rows, out) in x's dtype, differentiable in x, A and B.
pub fn lora_branch(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<Dropout>,
) -> Result<Tensor> {
    let op = LoraBranch { scale, dropout };
    Ok(x.contiguous()?.apply_op3_arc(a, b, Arc::new(Box::new(op)))?)
}

struct LoraBranch {
    scale: f64,
    dropout: Option<Dropout>,
}

fn to_candle(e: crate::model::error::ModelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl LoraBranch {
    /// The input in f32 with the dropout mask applied.
    fn dropped(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let xf = x.to_dtype(DType::F32)?;
        match self.dropout {
            Some(d) if d.keep < 1.0 => xf * dropout_mask(x.device(), x.dims2()?, d).map_err(to_candle)?,
            _ => Ok(xf),
        }
    }

    fn forward(&self, x: &Tensor, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.dropped(x)?.matmul(&a.t()?)?;
        (h.matmul(&b.t()?)? * self.scale)?.to_dtype(x.dtype())
    }

    fn backward(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<[Tensor; 3]> {
        let xd = self.dropped(x)?;
        let h = xd.matmul(&a.t()?)?;
        let gy = (grad.to_dtype(DType::F32)? * self.scale)?;
        let gb = gy.t()?.matmul(&h)?;
        let gh = gy.matmul(b)?;
        drop(gy);
        let ga = gh.t()?.matmul(&xd)?;
        drop(xd);
        let gx = gh.matmul(a)?;
        let gx = match self.dropout {
            Some(d) if d.keep < 1.0 => (gx * dropout_mask(x.device(), x.dims2()?, d).map_err(to_candle)?)?,
            _ => gx,
        };
        Ok([gx.to_dtype(x.dtype())?, ga, gb])
    }
}

impl CustomOp3 for LoraBranch {
    fn name(&self) -> &'static str {
        "lora-branch"
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
        let (x, a, b) = (
            tensor_of(s1, l1, Storage::Cpu)?,
            tensor_of(s2, l2, Storage::Cpu)?,
            tensor_of(s3, l3, Storage::Cpu)?,
        );
        cpu_storage_of(&self.forward(&x, &a, &b)?)
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
        let (x, a, b) = (
            tensor_of(s1, l1, Storage::Cuda)?,
            tensor_of(s2, l2, Storage::Cuda)?,
            tensor_of(s3, l3, Storage::Cuda)?,
        );
        cuda_storage_of(&self.forward(&x, &a, &b)?)
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [gx, ga, gb] = self.backward(&x.detach(), &a.detach(), &b.detach(), &grad.detach())?;
        Ok((Some(gx), Some(ga), Some(gb)))
    }
}

/// Inverted dropout whose mask is a hash of (seed, element index): the same mask on every
/// recomputation, with no generator state to carry. One 64-bit hash decides four elements
/// (16 bits each, so a keep probability is honoured to 1/65,536).
#[derive(Debug, Clone, Copy)]
pub struct DropMask {
    pub seed: u64,
    pub keep: f32,
}

impl DropMask {
    #[inline(always)]
    fn hash(&self, group: usize) -> u64 {
        let mut z = self.seed.wrapping_add((group as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[inline(always)]
    fn threshold(&self) -> u64 {
        (f64::from(self.keep) * 65_536.0).round() as u64
    }

    #[inline]
    pub fn kept(&self, i: usize) -> bool {
        (self.hash(i / 4) >> (16 * (i % 4))) & 0xFFFF < self.threshold()
    }

    /// The keep decisions of elements `0..n` as bytes (1 kept, 0 dropped), one hash per four.
    pub fn bytes(&self, n: usize) -> Vec<u8> {
        let thr = self.threshold();
        let mut m = vec![0u8; n];
        m.par_chunks_mut(16_384).enumerate().for_each(|(c, ms)| {
            let g0 = c * 16_384 / 4;
            for (g, quad) in ms.chunks_mut(4).enumerate() {
                let z = self.hash(g0 + g);
                for (l, b) in quad.iter_mut().enumerate() {
                    *b = u8::from((z >> (16 * l)) & 0xFFFF < thr);
                }
            }
        });
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{rand_t, rel};
    use candle_core::Var;

    /// Output and the gradients of x, A and B against the branch written with candle ops and
    /// the same mask, with dropout on and off.
    #[test]
    fn lora_branch_matches_composite_values_and_gradients() {
        let (rows, inp, out, r) = (13, 40, 24, 4);
        let (x0, a0, b0) = (rand_t((rows, inp), 1), rand_t((r, inp), 2), rand_t((out, r), 3));
        let gy = rand_t((rows, out), 4);
        for dropout in [None, Some(Dropout { seed: 77, keep: 0.8 })] {
            let vars = || [&x0, &a0, &b0].map(|t| Var::from_tensor(t).unwrap());
            let [x, a, b] = vars();
            let mut xd = x.as_tensor().clone();
            if let Some(d) = dropout {
                xd = (xd * dropout_mask(&Device::Cpu, (rows, inp), d).unwrap()).unwrap();
            }
            let want = (xd.matmul(&a.t().unwrap()).unwrap().matmul(&b.t().unwrap()).unwrap() * 2.0).unwrap();
            let gw = (&want * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let [x2, a2, b2] = vars();
            let got = lora_branch(x2.as_tensor(), a2.as_tensor(), b2.as_tensor(), 2.0, dropout).unwrap();
            assert!(rel(&got, &want) < 1e-6, "{dropout:?}: value {}", rel(&got, &want));
            let g = (&got * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, (p, q)) in ["x", "A", "B"].iter().zip([(&x2, &x), (&a2, &a), (&b2, &b)]) {
                let (gp, gq) = (g.get(p.as_tensor()).unwrap(), gw.get(q.as_tensor()).unwrap());
                assert!(rel(gp, gq) < 1e-5, "{dropout:?}: grad {name} {}", rel(gp, gq));
            }
        }
    }
}
