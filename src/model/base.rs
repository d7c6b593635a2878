//! The decoder shared by qwen2 and llama: RMSNorm, GQA attention with RoPE,
//! SwiGLU MLP, tied or separate lm_head, every projection a [`FrozenLinear`]
//! that an [`Adapter`] may wrap, and its inference forward (fused kernels, KV
//! cache, last-position logits). The training forwards over a `Base` (only ops
//! with a backward; packed segments) live in `train::ops` and `train::cpu`.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::model::config::ModelConfig;
use crate::model::error::{ModelError, Result};
use crate::model::lora::{Adapter, Target};
use crate::model::weights::qlinear::{FrozenLinear, FrozenWeight};

/// The compute settings a model is loaded with.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Activation dtype: F32 on CPU; BF16 or F16 on CUDA.
    pub dtype: DType,
    /// 4-bit format for weights that arrive unquantized (safetensors, random).
    pub quant: QuantKind,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, dtype: DType::F32, quant: QuantKind::Nf4 }
    }
}

/// The 4-bit format for base weights quantized at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKind {
    /// NF4 with double-quantized scales (QLoRA).
    Nf4,
    /// GGUF Q4_K (falls back to Q4_1 where a row is not a multiple of 256 wide).
    Q4K,
}

impl std::str::FromStr for QuantKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "nf4" => Ok(QuantKind::Nf4),
            "q4k" | "q4_k" => Ok(QuantKind::Q4K),
            _ => Err(ModelError::Quant(s.to_string())),
        }
    }
}

/// One decoder block's frozen weights.
pub struct Layer {
    pub attn_norm: Tensor,
    pub mlp_norm: Tensor,
    /// Indexed by [`Target::index`]: q, k, v, o, gate, up, down.
    pub proj: [FrozenLinear; 7],
}

impl Layer {
    pub fn proj(&self, t: Target) -> &FrozenLinear {
        &self.proj[t.index()]
    }
}

/// Per-layer key/value history for incremental decoding.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    pos: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers], pos: 0 }
    }

    /// Number of positions already fed.
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.pos = 0;
    }
}

/// A frozen, quantized base model.
pub struct Base {
    pub config: ModelConfig,
    pub(crate) layers: Vec<Layer>,
    /// Token embedding table (vocab, hidden); also the lm_head when tied.
    pub(crate) embed: Arc<FrozenWeight>,
    pub(crate) lm_head: FrozenLinear,
    pub(crate) final_norm: Tensor,
    /// (max_position, head_dim/2) in the compute dtype.
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    /// The format weights were quantized to at load (GGUF blocks keep their own).
    pub(crate) quant: QuantKind,
    pub(crate) files: Vec<(PathBuf, String)>,
}

impl Base {
    /// Assembles a model from its parts; RoPE tables are built here.
    pub(crate) fn assemble(
        config: ModelConfig,
        layers: Vec<Layer>,
        embed: Arc<FrozenWeight>,
        lm_head: Option<FrozenLinear>,
        final_norm: Tensor,
        opts: &crate::model::base::LoadOptions,
        files: Vec<(PathBuf, String)>,
    ) -> Result<Self> {
        let half = config.head_dim / 2;
        let maxp = config.max_position;
        let (c, s) = config.rope_tables(None);
        let cos = Tensor::from_vec(c, (maxp, half), &opts.device)?.to_dtype(opts.dtype)?;
        let sin = Tensor::from_vec(s, (maxp, half), &opts.device)?.to_dtype(opts.dtype)?;
        let lm_head = lm_head.unwrap_or_else(|| FrozenLinear::from_arc(embed.clone(), None));
        Ok(Self {
            config,
            layers,
            embed,
            lm_head,
            final_norm,
            cos,
            sin,
            dtype: opts.dtype,
            device: opts.device.clone(),
            quant: opts.quant,
            files,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn quant(&self) -> QuantKind {
        self.quant
    }

    /// Every file the model was read from, with its sha256.
    pub fn files(&self) -> &[(PathBuf, String)] {
        &self.files
    }

    /// Resident bytes of the frozen base (weights, norms, biases, RoPE tables).
    pub fn weight_bytes(&self) -> usize {
        let t = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                t(&l.attn_norm) + t(&l.mlp_norm) + l.proj.iter().map(|p| p.storage_bytes()).sum::<usize>()
            })
            .sum();
        let head =
            if Arc::ptr_eq(self.lm_head.weight(), &self.embed) { 0 } else { self.lm_head.storage_bytes() };
        layers + self.embed.storage_bytes() + head + t(&self.final_norm) + t(&self.cos) + t(&self.sin)
    }

    pub fn layer(&self, i: usize) -> &Layer {
        &self.layers[i]
    }

    /// The token embedding table (vocab, hidden).
    pub fn embedding(&self) -> &Arc<FrozenWeight> {
        &self.embed
    }

    pub fn final_norm(&self) -> &Tensor {
        &self.final_norm
    }

    pub fn lm_head(&self) -> &FrozenLinear {
        &self.lm_head
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

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
