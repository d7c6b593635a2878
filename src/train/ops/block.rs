//! The decoder block on the autograd-graph training path: the per-forward constants
//! (RoPE tables for each row's positions, the segment mask) and one block built from the
//! training ops, each with its own backward on a GPU.

use candle_core::{DType, Device, Tensor};

use super::attention::{attention, AttnMask};
use crate::model::error::Result;
use crate::model::phases;
use crate::model::{Adapter, Base, Target};

/// RMSNorm with a backward, computed in f32 and returned in x's dtype: on a GPU one op with
/// its own kernels ([`super::norm_op`]), on the CPU the composite of differentiable ops.
pub(crate) fn rms_norm_train(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cuda() {
        return super::norm_op::rms_norm(x, w, eps);
    }
    Ok(super::norm_op::rms_norm_composite(x, w, eps)?)
}

/// The per-forward constants of the training path, shared by every block.
pub(crate) struct TrainGeom {
    /// (b, 1, t, head_dim) full-width RoPE tables for each row's positions.
    pub cos: Tensor,
    pub sin: Tensor,
    /// Causal within a segment, blocked across segments.
    pub mask: AttnMask,
    /// Use the composite attention (whole score matrix) as a reference.
    #[cfg(test)]
    pub composite: bool,
}

impl Base {
    /// Positions restart at each segment; attention never crosses a segment.
    pub(crate) fn train_geom(&self, b: usize, t: usize, segments: Option<&Tensor>) -> Result<TrainGeom> {
        let seg: Vec<u32> = match segments {
            Some(s) => s.to_device(&Device::Cpu)?.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?,
            None => vec![0; b * t],
        };
        let mask = AttnMask::from_segments(&seg, b, t, &self.device)?;
        let pos = mask.positions(self.config.max_position)?;
        let pos = Tensor::from_vec(pos, b * t, &self.device)?;
        let full = |tab: &Tensor| -> Result<Tensor> {
            let f = Tensor::cat(&[tab, tab], 1)?;
            Ok(f.index_select(&pos, 0)?.reshape((b, 1, t, self.config.head_dim))?)
        };
        Ok(TrainGeom {
            cos: full(&self.cos)?,
            sin: full(&self.sin)?,
            mask,
            #[cfg(test)]
            composite: false,
        })
    }

    /// One block on the training path. `dropout_step` is Some when dropout is on.
    pub(crate) fn block_train(
        &self,
        li: usize,
        h: &Tensor,
        geo: &TrainGeom,
        adapter: Option<&Adapter>,
        dropout_step: Option<u64>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let layer = &self.layers[li];
        let (b, t, _) = h.dims3()?;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let x = rms_norm_train(h, &layer.attn_norm, c.rms_eps)?;
        let q = self.proj(li, Target::Q, &x, adapter, dropout_step)?;
        let k = self.proj(li, Target::K, &x, adapter, dropout_step)?;
        let v = self.proj(li, Target::V, &x, adapter, dropout_step)?;
        phases::mark(&self.device, "norm+q/k/v");
        let q = rope_train(&q.reshape((b, t, nh, hd))?.transpose(1, 2)?, geo)?;
        let k = rope_train(&k.reshape((b, t, nkv, hd))?.transpose(1, 2)?, geo)?;
        let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
        phases::mark(&self.device, "rope");
        #[cfg(test)]
        let o = if geo.composite {
            super::attention::composite_attention(&q, &k, &v, &geo.mask)?
        } else {
            attention(&q, &k, &v, &geo.mask)?
        };
        #[cfg(not(test))]
        let o = attention(&q, &k, &v, &geo.mask)?;
        phases::mark(&self.device, "attention");
        let o = o.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        let h = (h + self.proj(li, Target::O, &o, adapter, dropout_step)?)?;
        phases::mark(&self.device, "o");
        let x = rms_norm_train(&h, &layer.mlp_norm, c.rms_eps)?;
        let gate = self.proj(li, Target::Gate, &x, adapter, dropout_step)?;
        let up = self.proj(li, Target::Up, &x, adapter, dropout_step)?;
        let m =
            if x.device().is_cuda() { super::swiglu_op::swiglu(&gate, &up)? } else { (gate.silu()? * up)? };
        let out = (h + self.proj(li, Target::Down, &m, adapter, dropout_step)?)?;
        phases::mark(&self.device, "norm+mlp");
        Ok(out)
    }
}

/// `x·cos + rotate_half(x)·sin` for x (b, heads, t, d): on a GPU one op with its own kernels
/// ([`super::rope_op`]), on the CPU the composite of differentiable ops.
fn rope_train(x: &Tensor, geo: &TrainGeom) -> Result<Tensor> {
    if x.device().is_cuda() {
        return super::rope_op::rope(x, &geo.cos, &geo.sin);
    }
    Ok(super::rope_op::rope_composite(x, &geo.cos, &geo.sin, 1.0)?)
}
