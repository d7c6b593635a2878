//! RMSNorm as one op with its own backward, for the training path on a GPU.
//!
//! From differentiable tensor ops the norm is nine kernels forward (casts, square, mean,
//! add, square root, divide, cast, multiply) and about twenty-five in its backward, with f32
//! copies of the input between them; a 28-block model runs 56 norms twice (recomputation)
//! and differentiates them once per step. Here the forward is one kernel and the backward one
//! kernel that recomputes the row's scale from the saved input, both in the compute dtype with
//! f32 accumulation. The weight is frozen: it gets no gradient.
//!
//! On the CPU the op runs the composite form (forward) and the closed-form gradient in f32
//! tensor ops (backward); the training path there keeps the composite norm.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor, D};

use crate::kernels::custom_op::{cpu_storage_of, tensor_of};
use crate::model::error::Result;

/// `x · rsqrt(mean(x²) + eps) · w` over the last axis, in x's dtype, differentiable in `x`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let w = w.to_dtype(x.dtype())?.contiguous()?;
    Ok(x.contiguous()?.apply_op2_arc(&w, Arc::new(Box::new(RmsNorm { eps })))?)
}

/// The composite form: f32 arithmetic, the normalized value cast back before the weight.
pub(crate) fn rms_norm_composite(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dt = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xf.broadcast_div(&(ms + eps)?.sqrt()?)?;
    y.to_dtype(dt)?.broadcast_mul(w)
}

struct RmsNorm {
    eps: f64,
}

impl RmsNorm {
    /// `dx = r·g·w − x·r³·Σ(g·w·x)/n` with `r = rsqrt(mean(x²) + eps)`, in f32 tensor ops.
    fn backward_host(&self, x: &Tensor, w: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
        let n = x.dim(D::Minus1)? as f64;
        let xf = x.to_dtype(DType::F32)?;
        let gw = g.to_dtype(DType::F32)?.broadcast_mul(&w.to_dtype(DType::F32)?)?;
        let r = (xf.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        let dot = (&gw * &xf)?.sum_keepdim(D::Minus1)?;
        let k = ((r.powf(3.0)? * dot)? / n)?;
        let dx = (gw.broadcast_mul(&r)? - xf.broadcast_mul(&k)?)?;
        dx.to_dtype(x.dtype())
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (tensor_of(s1, l1, Storage::Cpu)?, tensor_of(s2, l2, Storage::Cpu)?);
        cpu_storage_of(&rms_norm_composite(&x, &w, self.eps)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let y = crate::train::ops::cuda_fused::rms_norm_fwd(s1, l1, s2, l2, self.eps as f32)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, g) = (x.detach(), w.detach(), grad.detach());
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            return Ok((
                Some(crate::train::ops::cuda_fused::rms_norm_bwd(&x, &w, &g, self.eps as f32)?),
                None,
            ));
        }
        Ok((Some(self.backward_host(&x, &w, &g)?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{rand_t, rel};
    use candle_core::Var;

    /// Values and the input gradient against the composite norm differentiated by candle's
    /// graph, on rows of a 3-D input.
    #[test]
    fn rms_norm_op_matches_composite_values_and_gradient() {
        let (x0, w, gy) = (rand_t((2, 7, 96), 1), (rand_t(96, 2) + 1.5).unwrap(), rand_t((2, 7, 96), 3));
        let x = Var::from_tensor(&x0).unwrap();
        let want = rms_norm_composite(x.as_tensor(), &w, 1e-6).unwrap();
        let gw = (&want * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let x2 = Var::from_tensor(&x0).unwrap();
        let got = rms_norm(x2.as_tensor(), &w, 1e-6).unwrap();
        assert!(rel(&got, &want) < 1e-6, "value {}", rel(&got, &want));
        let g = (&got * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let (gp, gq) = (g.get(x2.as_tensor()).unwrap(), gw.get(x.as_tensor()).unwrap());
        assert!(rel(gp, gq) < 1e-5, "grad {}", rel(gp, gq));
    }

    /// The kernels against the composite form on the host: f32 within 1e-5, bf16 and f16
    /// within their rounding.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_rms_norm_matches_composite_on_the_host() {
        use candle_core::Device;
        let Ok(dev) = Device::new_cuda(0) else { return };
        let (x0, w, gy) =
            (rand_t((3, 50, 1536), 4), (rand_t(1536, 5) + 1.0).unwrap(), rand_t((3, 50, 1536), 6));
        let x = Var::from_tensor(&x0).unwrap();
        let want = rms_norm_composite(x.as_tensor(), &w, 1e-6).unwrap();
        let gw = (&want * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let gx_want = gw.get(x.as_tensor()).unwrap();
        for (dt, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 1e-2), (DType::F16, 2e-3)] {
            let put = |t: &Tensor| t.to_device(&dev).unwrap().to_dtype(dt).unwrap();
            let xv = Var::from_tensor(&put(&x0)).unwrap();
            let y = rms_norm(xv.as_tensor(), &put(&w), 1e-6).unwrap();
            let back = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
            assert!(rel(&back(&y), &want) < tol, "{dt:?} value {}", rel(&back(&y), &want));
            let g = (y * put(&gy)).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = back(g.get(xv.as_tensor()).unwrap());
            assert!(rel(&gx, gx_want) < tol, "{dt:?} grad {}", rel(&gx, gx_want));
        }
    }
}
