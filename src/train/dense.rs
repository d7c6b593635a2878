//! A training view of a quantized base with its projections dequantized once
//! (a CPU speed trade). candle's CPU kernels for some GGUF block types (Q4_1
//! among them) have no SIMD dot product, and the frozen projection's backward
//! dequantizes its weight on every call; with the weights held dense, forward
//! and backward both run on the f32 GEMM. The frozen weights are not changed:
//! the dense copy holds exactly the values the quantized blocks encode. The
//! token-embedding lookup keeps the quantized table. The memory planner
//! decides whether the copy fits (`Shape::dense_weights`).

use candle_core::DType;

use super::TrainError;
use crate::model::base::Layer;
use crate::model::weights::qlinear::{FrozenLinear, FrozenWeight};
use crate::model::Base;

/// Bytes a dense copy of every projection and the lm_head takes in `dtype`.
pub fn dense_bytes(base: &Base, dtype: DType) -> u64 {
    let c = &base.config;
    let per_layer: usize = crate::model::Target::ALL
        .iter()
        .map(|&t| {
            let (o, i) = c.proj_shape(t);
            o * i
        })
        .sum();
    ((per_layer * c.num_layers + c.vocab_size * c.hidden_size) * dtype.size_in_bytes()) as u64
}

fn densify_linear(l: &FrozenLinear, dtype: DType) -> Result<FrozenLinear, TrainError> {
    let w = l.weight().dequantize(dtype).map_err(TrainError::from_model)?.contiguous()?;
    Ok(FrozenLinear::new(FrozenWeight::Dense(w), l.bias().cloned()))
}

/// A base sharing norms, RoPE tables and the embedding table with `base`,
/// whose projections and lm_head are dense in the compute dtype.
pub fn densify(base: &Base) -> Result<Base, TrainError> {
    let dt = base.dtype();
    let mut layers = Vec::with_capacity(base.layers.len());
    for l in &base.layers {
        let proj = [
            densify_linear(&l.proj[0], dt)?,
            densify_linear(&l.proj[1], dt)?,
            densify_linear(&l.proj[2], dt)?,
            densify_linear(&l.proj[3], dt)?,
            densify_linear(&l.proj[4], dt)?,
            densify_linear(&l.proj[5], dt)?,
            densify_linear(&l.proj[6], dt)?,
        ];
        layers.push(Layer { attn_norm: l.attn_norm.clone(), mlp_norm: l.mlp_norm.clone(), proj });
    }
    Ok(Base {
        config: base.config.clone(),
        layers,
        embed: base.embed.clone(),
        lm_head: densify_linear(&base.lm_head, dt)?,
        final_norm: base.final_norm.clone(),
        cos: base.cos.clone(),
        sin: base.sin.clone(),
        dtype: dt,
        device: base.device.clone(),
        quant: base.quant,
        files: base.files.clone(),
    })
}
