//! The Llama-family decoder, inference side: Llama and Qwen2 (Llama with a
//! bias on q/k/v, and tied embeddings in the small sizes), as one architecture
//! family whose differences are all in [`ModelConfig`](crate::model::ModelConfig).
//! A block is RMSNorm → GQA attention with RoPE → residual → RMSNorm → SwiGLU
//! MLP → residual; this file computes it for generation (fused kernels, KV
//! cache, last-position logits). A new family gets a file of its own beside it.
//!
//! The same block for training is in `train::ops::block` (autograd graph) and
//! `train::cpu::block` (graph-free CPU); they share the RoPE tables
//! (`ModelConfig::rope_tables`) and the segment positions, and
//! `tests/model_core.rs` holds all three to the same log-probabilities.

use candle_core::{DType, Tensor};

use crate::model::base::{Base, KvCache};
use crate::model::error::{ModelError, Result};
use crate::model::lora::{Adapter, Target};
use crate::model::weights::qlinear::{FrozenLinear, FrozenWeight};

impl Base {
    /// Token embeddings (…) u32 → (…, hidden) in the compute dtype.
    pub(crate) fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let e = match self.embed.as_ref() {
            FrozenWeight::Ggml(q) => q.embedding(ids)?,
            FrozenWeight::Dense(w) => {
                let mut dims = ids.dims().to_vec();
                dims.push(w.dim(1)?);
                w.index_select(&ids.flatten_all()?, 0)?.reshape(dims)?
            }
            FrozenWeight::Nf4(_) => {
                return Err(ModelError::Input("NF4 token embeddings are not supported".into()));
            }
        };
        Ok(e.to_dtype(self.dtype)?)
    }

    /// Projections of one input (q/k/v, or gate/up) for inference, the base products
    /// computed as one job, each with the adapter's delta added when present.
    fn projs<const N: usize>(
        &self,
        li: usize,
        ts: [Target; N],
        x: &Tensor,
        adapter: Option<&Adapter>,
    ) -> Result<[Tensor; N]> {
        let lins = ts.map(|t| self.layers[li].proj(t));
        let ys = FrozenLinear::forward_group(&lins, x)?;
        let mut out = Vec::with_capacity(N);
        for (y, t) in ys.into_iter().zip(ts) {
            out.push(match adapter.map(|a| a.delta(li, t, x, None)).transpose()?.flatten() {
                Some(d) => (y + d)?,
                None => y,
            });
        }
        out.try_into().map_err(|_| ModelError::Input("projection count".into()))
    }

    /// A projection with the adapter's delta added when present.
    pub(crate) fn proj(
        &self,
        li: usize,
        t: Target,
        x: &Tensor,
        adapter: Option<&Adapter>,
        dropout_step: Option<u64>,
    ) -> Result<Tensor> {
        let y = self.layers[li].proj(t).forward(x)?;
        match adapter.map(|a| a.delta(li, t, x, dropout_step)).transpose()?.flatten() {
            Some(d) => Ok((y + d)?),
            None => Ok(y),
        }
    }

    /// Inference: feeds `ids` (b, t) u32 at the cache's position; returns f32 logits
    /// (b, vocab) of the last position.
    pub fn forward(&self, ids: &Tensor, cache: &mut KvCache, adapter: Option<&Adapter>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t == 0 {
            return Err(ModelError::Input("empty input".into()));
        }
        let pos = cache.pos;
        if pos + t > self.config.max_position {
            return Err(ModelError::Input(format!(
                "sequence of {} positions exceeds the model's {}",
                pos + t,
                self.config.max_position
            )));
        }
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let mask = if t > 1 { Some(self.causal_mask(t, pos)?) } else { None };
        let mut h = self.embed(ids)?;
        for li in 0..self.layers.len() {
            h = self.block_infer(li, &h, &cos, &sin, mask.as_ref(), &mut cache.layers[li], adapter)?;
        }
        cache.pos += t;
        let last = h.narrow(1, t - 1, 1)?;
        let last =
            candle_nn::ops::rms_norm(&last.contiguous()?, &self.final_norm, self.config.rms_eps as f32)?;
        let logits = self.lm_head.forward_infer(&last)?;
        Ok(logits.reshape((b, self.config.vocab_size))?.to_dtype(DType::F32)?)
    }

    /// (t, pos + t) additive mask: query i sees keys up to pos + i.
    fn causal_mask(&self, t: usize, pos: usize) -> Result<Tensor> {
        let total = pos + t;
        let m: Vec<f32> = (0..t)
            .flat_map(|i| (0..total).map(move |j| if j <= pos + i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        Ok(Tensor::from_vec(m, (t, total), &self.device)?.to_dtype(self.dtype)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn block_infer(
        &self,
        li: usize,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut Option<(Tensor, Tensor)>,
        adapter: Option<&Adapter>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let layer = &self.layers[li];
        let (b, t, _) = h.dims3()?;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let x = candle_nn::ops::rms_norm(h, &layer.attn_norm, c.rms_eps as f32)?;
        let [q, k, v] = self.projs(li, [Target::Q, Target::K, Target::V], &x, adapter)?;
        let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = match cache.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let total = k.dim(2)?;
        let g = nh / nkv;
        // Grouped-query attention without copying K/V: the g query heads that
        // share a KV head are stacked along the query axis.
        let q = q.reshape((b, nkv, g * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?;
        let att = match mask {
            Some(m) => {
                att.reshape((b, nkv, g, t, total))?.broadcast_add(m)?.reshape((b, nkv, g * t, total))?
            }
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let o = att.matmul(&v)?; // (b, nkv, g*t, hd)
        let o = o.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        let [o] = self.projs(li, [Target::O], &o, adapter)?;
        let h = (h + o)?;
        let x = candle_nn::ops::rms_norm(&h, &layer.mlp_norm, c.rms_eps as f32)?;
        let [gate, up] = self.projs(li, [Target::Gate, Target::Up], &x, adapter)?;
        let m = (candle_nn::ops::silu(&gate)? * up)?;
        let [down] = self.projs(li, [Target::Down], &m, adapter)?;
        Ok((h + down)?)
    }
}
