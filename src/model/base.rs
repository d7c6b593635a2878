//! The [`Base`] model: a frozen, quantized decoder (its layers of
//! [`FrozenLinear`] projections that an [`Adapter`](crate::model::Adapter) may wrap, the embedding, the
//! final norm, the RoPE tables), the options it is loaded with and its KV cache.
//! The inference math of its architecture family is in `decoder.rs`; the
//! training forwards over a `Base` (only ops with a backward; packed segments)
//! live in `train::ops` and `train::cpu`.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::model::config::ModelConfig;
use crate::model::error::{ModelError, Result};
use crate::model::lora::Target;
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
    pub(super) layers: Vec<Option<(Tensor, Tensor)>>,
    pub(super) pos: usize,
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
}
