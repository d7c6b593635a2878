//! The MLP's gate `silu(gate) · up` as one op with its own backward, for the training path on
//! a GPU. candle differentiates SiLU through seven element-wise kernels (negate, exp, add,
//! reciprocal, and the derivative's products) over intermediate-sized tensors, plus the
//! product's two; here forward and backward are one kernel each, the backward writing both
//! gradients in one pass.
//!
//! On the CPU the op runs the composite form; the training path there keeps the composite.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};

use crate::kernels::custom_op::{cpu_storage_of, tensor_of};
use crate::model::error::Result;

/// `silu(gate) · up` for two tensors of one shape and dtype, differentiable in both.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(gate.contiguous()?.apply_op2_arc(&up.contiguous()?, Arc::new(Box::new(SwiGlu)))?)
}

struct SwiGlu;

impl SwiGlu {
    /// (d gate, d up) in f32 tensor ops: `dy·up·s·(1 + g(1 − s))` and `dy·g·s`, s = sigmoid(g).
    fn backward_host(gate: &Tensor, up: &Tensor, dy: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let dt = gate.dtype();
        let (g, u, d) = (gate.to_dtype(DType::F32)?, up.to_dtype(DType::F32)?, dy.to_dtype(DType::F32)?);
        let s = (g.neg()?.exp()? + 1.0)?.recip()?;
        let silu = (&g * &s)?;
        let dsilu = (&s * ((&g * (1.0 - &s)?)? + 1.0)?)?;
        let dg = ((&d * &u)? * dsilu)?;
        let du = (d * silu)?;
        Ok((dg.to_dtype(dt)?, du.to_dtype(dt)?))
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (tensor_of(s1, l1, Storage::Cpu)?, tensor_of(s2, l2, Storage::Cpu)?);
        cpu_storage_of(&(g.silu()? * u)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((crate::train::ops::cuda_fused::swiglu_fwd(s1, l1, s2, l2)?, l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, u, d) = (gate.detach(), up.detach(), grad.detach());
        #[cfg(feature = "cuda")]
        if g.device().is_cuda() {
            let (dg, du) = crate::train::ops::cuda_fused::swiglu_bwd(&g, &u, &d)?;
            return Ok((Some(dg), Some(du)));
        }
        let (dg, du) = Self::backward_host(&g, &u, &d)?;
        Ok((Some(dg), Some(du)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{rand_t, rel};
    use candle_core::Var;

    fn composite_grads(g0: &Tensor, u0: &Tensor, gy: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (g, u) = (Var::from_tensor(g0).unwrap(), Var::from_tensor(u0).unwrap());
        let y = (g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap();
        let gr = (&y * gy).unwrap().sum_all().unwrap().backward().unwrap();
        (y, gr.get(g.as_tensor()).unwrap().clone(), gr.get(u.as_tensor()).unwrap().clone())
    }

    /// Values and both gradients against `silu(gate) · up` differentiated by candle's graph.
    #[test]
    fn swiglu_op_matches_composite_values_and_gradients() {
        let (g0, u0, gy) = ((rand_t((5, 33), 1) * 4.0).unwrap(), rand_t((5, 33), 2), rand_t((5, 33), 3));
        let (want, dg_want, du_want) = composite_grads(&g0, &u0, &gy);
        let (g, u) = (Var::from_tensor(&g0).unwrap(), Var::from_tensor(&u0).unwrap());
        let got = swiglu(g.as_tensor(), u.as_tensor()).unwrap();
        assert!(rel(&got, &want) < 1e-6, "value {}", rel(&got, &want));
        let gr = (&got * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let (dg, du) = (gr.get(g.as_tensor()).unwrap(), gr.get(u.as_tensor()).unwrap());
        assert!(rel(dg, &dg_want) < 1e-5, "d gate {}", rel(dg, &dg_want));
        assert!(rel(du, &du_want) < 1e-5, "d up {}", rel(du, &du_want));
    }

    /// The kernels against the composite form on the host, three dtypes.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_swiglu_matches_composite_on_the_host() {
        use candle_core::Device;
        let Ok(dev) = Device::new_cuda(0) else { return };
        let (g0, u0, gy) =
            ((rand_t((130, 8960), 4) * 4.0).unwrap(), rand_t((130, 8960), 5), rand_t((130, 8960), 6));
        let (want, dg_want, du_want) = composite_grads(&g0, &u0, &gy);
        for (dt, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 1e-2), (DType::F16, 2e-3)] {
            let put =
                |t: &Tensor| Var::from_tensor(&t.to_device(&dev).unwrap().to_dtype(dt).unwrap()).unwrap();
            let (g, u) = (put(&g0), put(&u0));
            let y = swiglu(g.as_tensor(), u.as_tensor()).unwrap();
            let back = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
            assert!(rel(&back(&y), &want) < tol, "{dt:?} value {}", rel(&back(&y), &want));
            let gyd = gy.to_device(&dev).unwrap().to_dtype(dt).unwrap();
            let gr = (y * gyd).unwrap().sum_all().unwrap().backward().unwrap();
            let (dg, du) = (back(gr.get(g.as_tensor()).unwrap()), back(gr.get(u.as_tensor()).unwrap()));
            assert!(rel(&dg, &dg_want) < tol, "{dt:?} d gate {}", rel(&dg, &dg_want));
            assert!(rel(&du, &du_want) < tol, "{dt:?} d up {}", rel(&du, &du_want));
        }
    }
}
