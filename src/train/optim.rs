//! The optimizer side of a step: AdamW over the adapter's f32 parameters with
//! its moments kept as plain tensors (so a checkpoint can hold them and a
//! resumed run continues bit-for-bit), the global gradient norm, and clipping.
//!
//! candle's own `AdamW` keeps its moments private and offers neither clipping
//! nor a way to save state; LoRA parameters are few (a few million), so the
//! update is written here with tensor ops that run on CPU and CUDA alike.

use candle_core::{DType, Result, Tensor, Var};

/// AdamW hyper-parameters (the learning rate comes per step from the schedule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (applied as `p -= lr * wd * p`, not through the gradient).
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW with bias correction and f32 moments, one slot per named parameter.
#[derive(Debug)]
pub struct AdamW {
    params: AdamWParams,
    slots: Vec<Slot>,
    /// Updates applied so far (bias correction uses it).
    t: u64,
}

#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// The optimizer's resumable state: moments by parameter name and the update count.
#[derive(Debug, Clone)]
pub struct AdamWState {
    pub t: u64,
    pub moments: Vec<(String, Tensor, Tensor)>,
}

impl AdamW {
    /// Moments start at zero; parameters must be f32 (moments follow the parameter's dtype).
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let mut slots = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            if var.dtype() != DType::F32 {
                candle_core::bail!("parameter {name} is {:?}; trainable parameters must be f32", var.dtype());
            }
            let m = var.as_tensor().zeros_like()?;
            let v = var.as_tensor().zeros_like()?;
            slots.push(Slot { name, var, m, v });
        }
        Ok(Self { params, slots, t: 0 })
    }

    pub fn params(&self) -> AdamWParams {
        self.params
    }

    pub fn steps_taken(&self) -> u64 {
        self.t
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.slots.iter().map(|s| &s.var)
    }

    /// One update. `grads[i]` belongs to the i-th parameter (the order given to `new`);
    /// they are the final gradients (already averaged, unscaled and clipped).
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            candle_core::bail!("{} gradients for {} parameters", grads.len(), self.slots.len());
        }
        self.t += 1;
        let p = self.params;
        let t = self.t as i32;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2 = 1.0 - p.beta2.powi(t);
        // lr_hat folds the first-moment correction into the step size; the
        // second-moment correction scales v before the square root.
        let lr_hat = lr / bc1;
        let decay = 1.0 - lr * p.weight_decay;
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let g = g.to_dtype(DType::F32)?;
            #[cfg(feature = "cuda")]
            if g.device().is_cuda() {
                let c = crate::kernels::cuda::cuda_adamw::Coeffs {
                    beta1: p.beta1 as f32,
                    beta2: p.beta2 as f32,
                    inv_bc2: (1.0 / bc2) as f32,
                    eps: p.eps as f32,
                    lr_hat: lr_hat as f32,
                    decay: if p.weight_decay != 0.0 { decay as f32 } else { 1.0 },
                };
                crate::kernels::cuda::cuda_adamw::update_in_place(
                    slot.var.as_tensor(),
                    &g.contiguous()?,
                    &slot.m,
                    &slot.v,
                    c,
                )?;
                continue;
            }
            let m = ((&slot.m * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            let v = ((&slot.v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let denom = ((&v * (1.0 / bc2))?.sqrt()? + p.eps)?;
            let update = (m.div(&denom)? * lr_hat)?;
            let w = slot.var.as_tensor();
            let next = if p.weight_decay != 0.0 { ((w * decay)? - update)? } else { (w - update)? };
            slot.var.set(&next)?;
            slot.m = m;
            slot.v = v;
        }
        Ok(())
    }

    /// A copy of the moments for a checkpoint, on the host: the device moments are updated in
    /// place by the next step.
    pub fn state(&self) -> Result<AdamWState> {
        let host =
            |t: &Tensor| if t.device().is_cpu() { t.copy() } else { t.to_device(&candle_core::Device::Cpu) };
        let moments = self
            .slots
            .iter()
            .map(|s| Ok((s.name.clone(), host(&s.m)?, host(&s.v)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamWState { t: self.t, moments })
    }

    /// Restore moments saved by [`AdamW::state`]; every parameter must be present with its shape.
    pub fn load_state(&mut self, state: AdamWState) -> Result<()> {
        let mut by_name: std::collections::HashMap<String, (Tensor, Tensor)> =
            state.moments.into_iter().map(|(n, m, v)| (n, (m, v))).collect();
        for slot in &mut self.slots {
            let Some((m, v)) = by_name.remove(&slot.name) else {
                candle_core::bail!("optimizer state has no moments for {}", slot.name);
            };
            let want = slot.var.shape();
            if m.shape() != want || v.shape() != want {
                candle_core::bail!(
                    "optimizer moments for {} have shape {:?}/{:?}, parameter is {:?}",
                    slot.name,
                    m.shape(),
                    v.shape(),
                    want
                );
            }
            // Copies of their own: the CUDA update writes the moments in place, and the loaded
            // tensors may share storage (with each other or with whoever loaded them).
            let dev = slot.var.device();
            slot.m = m.to_dtype(DType::F32)?.to_device(dev)?.copy()?;
            slot.v = v.to_dtype(DType::F32)?.to_device(dev)?.copy()?;
        }
        if let Some(extra) = by_name.keys().next() {
            candle_core::bail!("optimizer state names {extra}, which is not a parameter of this adapter");
        }
        self.t = state.t;
        Ok(())
    }
}

/// Euclidean norm over all gradients together (f64 accumulation across tensors).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let sums = per_tensor(grads, |g| g.sqr()?.sum_all())?;
    Ok(sums.iter().map(|&s| s as f64).sum::<f64>().sqrt())
}

/// The factor that brings `norm` down to `max_norm` (1.0 when clipping is off or not needed).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// Whether every gradient is finite (a NaN or inf anywhere means an f16 overflow).
pub fn all_finite(grads: &[Tensor]) -> Result<bool> {
    // NaN and ±inf both survive a sum as non-finite.
    let sums = per_tensor(grads, |g| g.abs()?.sum_all())?;
    Ok(sums.iter().all(|s| s.is_finite()))
}

/// One f32 scalar per gradient, read back together: a device round trip per tensor would
/// stall the launch queue hundreds of times a step.
fn per_tensor(grads: &[Tensor], f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Vec<f32>> {
    if grads.is_empty() {
        return Ok(Vec::new());
    }
    let parts = grads.iter().map(|g| f(&g.to_dtype(DType::F32)?)?.reshape(1)).collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)?.to_vec1::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Scalar AdamW written out by hand, the reference for the tensor version.
    fn reference(p0: f64, grads: &[f64], lr: f64, hp: AdamWParams) -> f64 {
        let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
        for (i, g) in grads.iter().enumerate() {
            let t = (i + 1) as i32;
            m = hp.beta1 * m + (1.0 - hp.beta1) * g;
            v = hp.beta2 * v + (1.0 - hp.beta2) * g * g;
            let mh = m / (1.0 - hp.beta1.powi(t));
            let vh = v / (1.0 - hp.beta2.powi(t));
            p -= lr * hp.weight_decay * p;
            p -= lr * mh / (vh.sqrt() + hp.eps);
        }
        p
    }

    #[test]
    fn adamw_matches_scalar_reference_with_decoupled_decay() {
        let dev = Device::Cpu;
        let hp = AdamWParams { weight_decay: 0.1, ..Default::default() };
        let var = Var::from_tensor(&Tensor::new(&[0.5f32, -1.5, 2.0], &dev).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], hp).unwrap();
        let gs = [[0.1f32, -0.3, 2.0], [0.2, 0.1, -1.0], [-0.5, 0.0, 0.7]];
        for g in gs {
            opt.step(&[Tensor::new(&g, &dev).unwrap()], 1e-2).unwrap();
        }
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for (j, p0) in [0.5, -1.5, 2.0].iter().enumerate() {
            let g: Vec<f64> = gs.iter().map(|r| r[j] as f64).collect();
            let want = reference(*p0, &g, 1e-2, hp);
            assert!((got[j] as f64 - want).abs() < 1e-6, "param {j}: {} vs {want}", got[j]);
        }
        assert_eq!(opt.steps_taken(), 3);
    }

    /// The one-kernel CUDA update against the same scalar reference, with and without decay.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_adamw_kernel_matches_scalar_reference() {
        let Ok(dev) = Device::new_cuda(0) else { return };
        for wd in [0.0, 0.1] {
            let hp = AdamWParams { weight_decay: wd, ..Default::default() };
            let p0 = [0.5f32, -1.5, 2.0, 0.0, 3.0];
            let var = Var::from_tensor(&Tensor::new(&p0, &dev).unwrap()).unwrap();
            let mut opt = AdamW::new(vec![("w".into(), var.clone())], hp).unwrap();
            let gs =
                [[0.1f32, -0.3, 2.0, 0.0, 1e-4], [0.2, 0.1, -1.0, 5.0, -1e-4], [-0.5, 0.0, 0.7, -2.0, 0.0]];
            for g in gs {
                opt.step(&[Tensor::new(&g, &dev).unwrap()], 1e-2).unwrap();
            }
            let got = var.as_tensor().to_vec1::<f32>().unwrap();
            for (j, p) in p0.iter().enumerate() {
                let g: Vec<f64> = gs.iter().map(|r| r[j] as f64).collect();
                let want = reference(*p as f64, &g, 1e-2, hp);
                assert!((got[j] as f64 - want).abs() < 1e-6, "wd {wd} param {j}: {} vs {want}", got[j]);
            }
        }
    }

    #[test]
    fn restored_state_continues_identically() {
        let dev = Device::Cpu;
        let hp = AdamWParams::default();
        let mk = || Var::from_tensor(&Tensor::new(&[1.0f32, 2.0], &dev).unwrap()).unwrap();
        let g1 = Tensor::new(&[0.3f32, -0.2], &dev).unwrap();
        let g2 = Tensor::new(&[-0.1f32, 0.4], &dev).unwrap();
        let a = mk();
        let mut oa = AdamW::new(vec![("p".into(), a.clone())], hp).unwrap();
        oa.step(std::slice::from_ref(&g1), 0.1).unwrap();
        let saved = oa.state().unwrap();
        let snapshot = a.as_tensor().copy().unwrap();
        oa.step(std::slice::from_ref(&g2), 0.1).unwrap();

        let b = Var::from_tensor(&snapshot).unwrap();
        let mut ob = AdamW::new(vec![("p".into(), b.clone())], hp).unwrap();
        ob.load_state(saved).unwrap();
        ob.step(std::slice::from_ref(&g2), 0.1).unwrap();
        assert_eq!(a.as_tensor().to_vec1::<f32>().unwrap(), b.as_tensor().to_vec1::<f32>().unwrap());
    }

    #[test]
    fn load_state_rejects_missing_or_misshapen_moments() {
        let dev = Device::Cpu;
        let var = Var::zeros((2, 3), DType::F32, &dev).unwrap();
        let mut opt = AdamW::new(vec![("a".into(), var)], AdamWParams::default()).unwrap();
        let bad = AdamWState {
            t: 1,
            moments: vec![(
                "a".into(),
                Tensor::zeros((3, 2), DType::F32, &dev).unwrap(),
                Tensor::zeros((3, 2), DType::F32, &dev).unwrap(),
            )],
        };
        assert!(opt.load_state(bad).unwrap_err().to_string().contains("shape"));
        let missing = AdamWState { t: 1, moments: vec![] };
        assert!(opt.load_state(missing).unwrap_err().to_string().contains("no moments"));
    }

    #[test]
    fn norm_clip_and_finiteness() {
        let dev = Device::Cpu;
        let g = [Tensor::new(&[3.0f32], &dev).unwrap(), Tensor::new(&[4.0f32], &dev).unwrap()];
        assert!((global_norm(&g).unwrap() - 5.0).abs() < 1e-9);
        assert!((clip_factor(5.0, 1.0) * 5.0 - 1.0).abs() < 1e-6);
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        assert_eq!(clip_factor(5.0, 0.0), 1.0);
        assert!(all_finite(&g).unwrap());
        let bad = [Tensor::new(&[1.0f32, f32::INFINITY], &dev).unwrap()];
        assert!(!all_finite(&bad).unwrap());
        let nan = [Tensor::new(&[f32::NAN], &dev).unwrap()];
        assert!(!all_finite(&nan).unwrap());
    }
}
