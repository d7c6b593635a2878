//! Rotary position embedding as one op with its own backward, for the training path on a GPU.
//!
//! The composite form (two narrows, a negation, a concatenation, two broadcast products and a
//! sum, on a transposed view) is six kernels forward and about fifteen in its backward, for
//! queries and keys of every block, twice with recomputation. Here each direction is one
//! kernel that reads the input through its strides and writes a contiguous result. The tables
//! are the per-row cos/sin the training geometry already holds (positions restart at each
//! packed segment), full width, so the backward is the same rotation with sin negated.
//!
//! On the CPU the op runs the composite form; the training path there keeps the composite.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor, D};

use crate::kernels::custom_op::{cpu_storage_of, tensor_of};
use crate::model::error::Result;

/// `x·cos + rotate_half(x)·sin` for x (b, heads, t, d) with tables (b, 1, t, d) in x's dtype;
/// a contiguous (b, heads, t, d) result, differentiable in `x`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let op = Rope { cos: cos.contiguous()?, sin: sin.contiguous()? };
    Ok(x.apply_op1_arc(Arc::new(Box::new(op)))?)
}

/// The composite form with `sign` on the rotated half (−1: the transpose, i.e. the backward).
pub(crate) fn rope_composite(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    sign: f64,
) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    let rot = if sign < 0.0 { rot.neg()? } else { rot };
    x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?
}

struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = tensor_of(s, l, Storage::Cpu)?;
        cpu_storage_of(&rope_composite(&x, &self.cos, &self.sin, 1.0)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((crate::train::ops::cuda_fused::rope(s, l, &self.cos, &self.sin, 1.0)?, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad.detach();
        #[cfg(feature = "cuda")]
        if g.device().is_cuda() {
            return Ok(Some(crate::train::ops::cuda_fused::rope_tensor(&g, &self.cos, &self.sin, -1.0)?));
        }
        Ok(Some(rope_composite(&g, &self.cos, &self.sin, -1.0)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{rand_t, rel};
    use candle_core::Var;

    /// Tables as the training geometry builds them: each half repeats the other.
    fn tables(b: usize, t: usize, d: usize, seed: u64) -> (Tensor, Tensor) {
        let a = (rand_t((b, 1, t, d / 2), seed) * 3.0).unwrap();
        let full = Tensor::cat(&[&a, &a], D::Minus1).unwrap();
        (full.cos().unwrap(), full.sin().unwrap())
    }

    /// Values and the input gradient against the composite form differentiated by candle's
    /// graph, on the transposed view the decoder hands it.
    #[test]
    fn rope_op_matches_composite_values_and_gradient() {
        let (b, t, h, d) = (2, 9, 3, 16);
        let (cos, sin) = tables(b, t, d, 1);
        let (x0, gy) = (rand_t((b, t, h, d), 2), rand_t((b, h, t, d), 3));
        let x = Var::from_tensor(&x0).unwrap();
        let want = rope_composite(&x.as_tensor().transpose(1, 2).unwrap(), &cos, &sin, 1.0).unwrap();
        let gw = (&want * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let x2 = Var::from_tensor(&x0).unwrap();
        let got = rope(&x2.as_tensor().transpose(1, 2).unwrap(), &cos, &sin).unwrap();
        assert!(rel(&got, &want) < 1e-6, "value {}", rel(&got, &want));
        let g = (&got * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let (gp, gq) = (g.get(x2.as_tensor()).unwrap(), gw.get(x.as_tensor()).unwrap());
        assert!(rel(gp, gq) < 1e-5, "grad {}", rel(gp, gq));
    }

    /// The kernel against the composite form on the host, strided input, three dtypes.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_rope_matches_composite_on_the_host() {
        use candle_core::{DType, Device};
        let Ok(dev) = Device::new_cuda(0) else { return };
        let (b, t, h, d) = (2, 70, 12, 128);
        let (cos, sin) = tables(b, t, d, 4);
        let (x0, gy) = (rand_t((b, t, h, d), 5), rand_t((b, h, t, d), 6));
        let x = Var::from_tensor(&x0).unwrap();
        let want = rope_composite(&x.as_tensor().transpose(1, 2).unwrap(), &cos, &sin, 1.0).unwrap();
        let gw = (&want * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let gx_want = gw.get(x.as_tensor()).unwrap();
        for (dt, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 1e-2), (DType::F16, 2e-3)] {
            let put = |t: &Tensor| t.to_device(&dev).unwrap().to_dtype(dt).unwrap();
            let xv = Var::from_tensor(&put(&x0)).unwrap();
            let y = rope(&xv.as_tensor().transpose(1, 2).unwrap(), &put(&cos), &put(&sin)).unwrap();
            let back = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
            assert!(rel(&back(&y), &want) < tol, "{dt:?} value {}", rel(&back(&y), &want));
            let g = (y * put(&gy)).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = back(g.get(xv.as_tensor()).unwrap());
            assert!(rel(&gx, gx_want) < tol, "{dt:?} grad {}", rel(&gx, gx_want));
        }
    }
}
