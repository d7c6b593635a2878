//! What a training or scoring pass takes and returns: a micro-batch of token
//! sequences, the pass's options, and its loss with the adapter's gradients. The
//! passes themselves live in `train::ops` (autograd graph) and `train::cpu`.

use candle_core::backprop::GradStore;
use candle_core::Tensor;

/// One micro-batch of token sequences.
pub struct Batch {
    /// (b, t) u32.
    pub input_ids: Tensor,
    /// (b, t) u32: the token each position should predict.
    pub targets: Tensor,
    /// (b, t) f32: 1 where the position's loss counts.
    pub loss_mask: Tensor,
    /// (b, t) u32: packed documents; no attention across segments, positions restart.
    pub segment_ids: Option<Tensor>,
}

/// Positions per lm_head + cross-entropy chunk. Each chunk briefly holds three
/// (positions × vocabulary) f32 tensors (37 MiB apiece at 64 × 151,936): at 64
/// the chunk's transient stays under ~150 MiB, and more chunks cost little since each already
/// fills the GPU.
pub const DEFAULT_CE_CHUNK: usize = 64;

#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Keep only each block's input during the forward pass and recompute the block
    /// during the backward pass.
    pub recompute: bool,
    pub dropout: bool,
    /// Positions per lm_head + cross-entropy chunk.
    pub ce_chunk: usize,
    /// Multiplies the loss before differentiation (dynamic loss scaling for f16).
    pub loss_scale: f32,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self { recompute: false, dropout: true, ce_chunk: DEFAULT_CE_CHUNK, loss_scale: 1.0 }
    }
}

pub struct LossOut {
    /// Sum of per-token cross-entropy over masked tokens (unscaled).
    pub loss_sum: f64,
    pub tokens: usize,
    /// Gradients of `loss_sum · loss_scale` for the adapter's vars only.
    pub grads: GradStore,
}
