//! Helpers shared by the model's unit tests: seeded random tensors and a
//! relative error.

use candle_core::{Device, Shape, Tensor};

/// Uniform values in [-1, 1) of `shape`, the same for the same seed.
pub fn rand_t<S: Into<Shape>>(shape: S, seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let shape: Shape = shape.into();
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..shape.elem_count()).map(|_| r.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// ‖a − b‖ / ‖b‖ over all elements.
pub fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    let s = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    d / s
}

/// Small seeded values in every LoRA tensor: a fresh adapter's B is zero, which would leave
/// A's gradient zero in any comparison.
pub fn randomize_lora(ad: &super::Adapter, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    for (_, v) in ad.vars() {
        let x: Vec<f32> = (0..v.elem_count()).map(|_| r.random_range(-0.05f32..0.05)).collect();
        v.set(&Tensor::from_vec(x, v.shape(), &Device::Cpu).unwrap()).unwrap();
    }
}
