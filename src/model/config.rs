//! Model hyperparameters: one [`ModelConfig`] describes a qwen2 or llama
//! decoder, read from GGUF metadata or a Hugging Face `config.json`, or named
//! by shape for benchmarks and tests.

use std::path::Path;

use candle_core::quantized::gguf_file;

use crate::model::error::{ModelError, Result};

/// The decoder families this crate runs. They share one implementation and
/// differ by configuration (qwen2 has q/k/v biases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Qwen2,
    Llama,
}

impl Arch {
    pub fn as_str(&self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Llama => "llama",
        }
    }
}

/// Llama 3 style frequency-dependent RoPE rescaling.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    pub max_position: usize,
    pub tie_embeddings: bool,
    pub attn_bias: bool,
    pub rope_scaling: Option<RopeScaling>,
}

impl ModelConfig {
    /// Qwen2-1.5B(-Instruct): the base of the reference QLoRA work.
    pub fn qwen2_1_5b() -> Self {
        Self {
            arch: Arch::Qwen2,
            vocab_size: 151_936,
            hidden_size: 1536,
            intermediate_size: 8960,
            num_layers: 28,
            num_heads: 12,
            num_kv_heads: 2,
            head_dim: 128,
            rope_theta: 1_000_000.0,
            rms_eps: 1e-6,
            max_position: 32_768,
            tie_embeddings: true,
            attn_bias: true,
            rope_scaling: None,
        }
    }

    /// Known shapes by name; the tiny ones are what tests build random models of
    /// (their input widths are multiples of 256 so every GGUF block type fits).
    pub fn from_shape_name(name: &str) -> Option<Self> {
        let tiny = Self {
            arch: Arch::Qwen2,
            vocab_size: 384,
            hidden_size: 256,
            intermediate_size: 512,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 64,
            rope_theta: 10_000.0,
            rms_eps: 1e-6,
            max_position: 512,
            tie_embeddings: true,
            attn_bias: true,
            rope_scaling: None,
        };
        Some(match name {
            "qwen2-1.5b" => Self::qwen2_1_5b(),
            "qwen2.5-0.5b" => Self {
                hidden_size: 896,
                intermediate_size: 4864,
                num_layers: 24,
                num_heads: 14,
                head_dim: 64,
                ..Self::qwen2_1_5b()
            },
            "smollm2-135m" => Self {
                arch: Arch::Llama,
                vocab_size: 49_152,
                hidden_size: 576,
                intermediate_size: 1536,
                num_layers: 30,
                num_heads: 9,
                num_kv_heads: 3,
                head_dim: 64,
                rope_theta: 100_000.0,
                rms_eps: 1e-5,
                max_position: 8192,
                tie_embeddings: true,
                attn_bias: false,
                rope_scaling: None,
            },
            "tiny-qwen2" => tiny,
            "tiny-llama" => {
                Self { arch: Arch::Llama, tie_embeddings: false, attn_bias: false, rms_eps: 1e-5, ..tiny }
            }
            _ => return None,
        })
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// (out, in) of each projection a LoRA adapter can target.
    pub fn proj_shape(&self, t: crate::model::lora::Target) -> (usize, usize) {
        use crate::model::lora::Target::*;
        let (h, i) = (self.hidden_size, self.intermediate_size);
        match t {
            Q => (self.q_dim(), h),
            K | V => (self.kv_dim(), h),
            O => (h, self.q_dim()),
            Gate | Up => (i, h),
            Down => (h, i),
        }
    }

    /// Number of base parameters (embedding counted once when tied).
    pub fn num_params(&self) -> usize {
        let per_layer: usize = crate::model::lora::Target::ALL
            .iter()
            .map(|t| {
                let (o, i) = self.proj_shape(*t);
                o * i
            })
            .sum::<usize>()
            + 2 * self.hidden_size
            + if self.attn_bias { self.q_dim() + 2 * self.kv_dim() } else { 0 };
        let emb = self.vocab_size * self.hidden_size;
        per_layer * self.num_layers + emb * if self.tie_embeddings { 1 } else { 2 } + self.hidden_size
    }

    fn validate(self, path: &Path) -> Result<Self> {
        let bad = |key: &str, reason: String| ModelError::BadValue {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(bad(
                "num_kv_heads",
                format!("{} heads not divisible by {} kv heads", self.num_heads, self.num_kv_heads),
            ));
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim == 0 {
            return Err(bad("head_dim", format!("{} is not a positive even number", self.head_dim)));
        }
        if self.hidden_size == 0 || self.num_layers == 0 || self.vocab_size == 0 {
            return Err(bad("hidden_size", "zero-sized model".into()));
        }
        Ok(self)
    }

    /// Reads the hyperparameters from GGUF metadata. `vocab_rows` is the row count
    /// of `token_embd.weight`, used when the metadata omits the vocabulary size.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path, vocab_rows: usize) -> Result<Self> {
        let md = &content.metadata;
        let missing = |key: &str| ModelError::MissingKey { path: path.to_path_buf(), key: key.to_string() };
        let bad = |key: &str, e: candle_core::Error| ModelError::BadValue {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason: e.to_string(),
        };
        let arch_name = md
            .get("general.architecture")
            .ok_or_else(|| missing("general.architecture"))?
            .to_string()
            .map_err(|e| bad("general.architecture", e))?
            .clone();
        let arch = match arch_name.as_str() {
            "qwen2" => Arch::Qwen2,
            "llama" => Arch::Llama,
            _ => return Err(ModelError::Arch { path: path.to_path_buf(), arch: arch_name }),
        };
        let a = arch_name.as_str();
        let get_u = |k: &str| -> Result<usize> {
            let key = format!("{a}.{k}");
            let v = md.get(&key).ok_or_else(|| missing(&key))?;
            Ok(v.to_u64().map_err(|e| bad(&key, e))? as usize)
        };
        let get_f = |k: &str| -> Result<Option<f64>> {
            let key = format!("{a}.{k}");
            match md.get(&key) {
                None => Ok(None),
                // Shortest decimal of the f32, so 1e-6 reads back as 1e-6 rather than 9.99e-7.
                Some(v) => {
                    let f = v.to_f32().map_err(|e| bad(&key, e))?;
                    Ok(Some(f.to_string().parse::<f64>().unwrap_or(f as f64)))
                }
            }
        };
        let hidden = get_u("embedding_length")?;
        let heads = get_u("attention.head_count")?;
        let kv = get_u("attention.head_count_kv").unwrap_or(heads);
        let head_dim = get_u("attention.key_length").unwrap_or(hidden / heads.max(1));
        let vocab = get_u("vocab_size").unwrap_or(vocab_rows);
        let cfg = Self {
            arch,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: get_u("feed_forward_length")?,
            num_layers: get_u("block_count")?,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim,
            rope_theta: get_f("rope.freq_base")?.unwrap_or(10_000.0),
            rms_eps: get_f("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
            max_position: get_u("context_length").unwrap_or(4096),
            tie_embeddings: !content.tensor_infos.contains_key("output.weight"),
            attn_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            rope_scaling: None,
        };
        cfg.validate(path)
    }

    /// Reads a Hugging Face `config.json` (qwen2 or llama `model_type`).
    pub fn from_config_json(text: &str, path: &Path) -> Result<Self> {
        let bad = |key: &str, reason: &str| ModelError::BadValue {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason: reason.to_string(),
        };
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad("config.json", &e.to_string()))?;
        let model_type = v.get("model_type").and_then(|x| x.as_str()).unwrap_or("");
        let arch = match model_type {
            "qwen2" => Arch::Qwen2,
            "llama" => Arch::Llama,
            other => return Err(ModelError::Arch { path: path.to_path_buf(), arch: other.to_string() }),
        };
        let req = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| ModelError::MissingKey { path: path.to_path_buf(), key: k.to_string() })
        };
        let hidden = req("hidden_size")?;
        let heads = req("num_attention_heads")?;
        let rope_scaling = match v.get("rope_scaling") {
            Some(s) if s.get("rope_type").and_then(|x| x.as_str()) == Some("llama3") => {
                let f = |k: &str, d: f64| s.get(k).and_then(|x| x.as_f64()).unwrap_or(d);
                Some(RopeScaling {
                    factor: f("factor", 8.0),
                    low_freq_factor: f("low_freq_factor", 1.0),
                    high_freq_factor: f("high_freq_factor", 4.0),
                    original_max_position: f("original_max_position_embeddings", 8192.0) as usize,
                })
            }
            Some(s) if !s.is_null() => {
                return Err(bad("rope_scaling", "only llama3 rope scaling is supported"))
            }
            _ => None,
        };
        let cfg = Self {
            arch,
            vocab_size: req("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: req("intermediate_size")?,
            num_layers: req("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: req("num_key_value_heads").unwrap_or(heads),
            head_dim: req("head_dim").unwrap_or(hidden / heads.max(1)),
            rope_theta: v.get("rope_theta").and_then(|x| x.as_f64()).unwrap_or(10_000.0),
            rms_eps: v.get("rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6),
            max_position: req("max_position_embeddings").unwrap_or(4096),
            tie_embeddings: v.get("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false),
            attn_bias: match arch {
                Arch::Qwen2 => true,
                Arch::Llama => v.get("attention_bias").and_then(|x| x.as_bool()).unwrap_or(false),
            },
            rope_scaling,
        };
        cfg.validate(path)
    }

    /// The RoPE tables every path rotates by: (max_position, head_dim/2) row-major cos and
    /// sin of `position · inv_freq`, each frequency divided by its entry of `factors` when
    /// given (Llama 3 GGUF `rope_freqs`; the caller checks the length).
    pub fn rope_tables(&self, factors: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
        let inv = self.inv_freq();
        let maxp = self.max_position;
        let (mut c, mut s) = (Vec::with_capacity(maxp * inv.len()), Vec::with_capacity(maxp * inv.len()));
        for p in 0..maxp {
            for (i, f) in inv.iter().enumerate() {
                let a = match factors {
                    Some(d) => p as f64 * f / d[i] as f64,
                    None => p as f64 * f,
                };
                c.push(a.cos() as f32);
                s.push(a.sin() as f32);
            }
        }
        (c, s)
    }

    /// Inverse RoPE frequencies (head_dim / 2 of them), with Llama 3 rescaling applied.
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim;
        (0..d / 2)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / d as f64);
                match &self.rope_scaling {
                    None => f,
                    Some(s) => {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let low = s.original_max_position as f64 / s.low_freq_factor;
                        let high = s.original_max_position as f64 / s.high_freq_factor;
                        if wavelen < high {
                            f
                        } else if wavelen > low {
                            f / s.factor
                        } else {
                            let smooth = (s.original_max_position as f64 / wavelen - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_names_give_consistent_configs() {
        for n in ["qwen2-1.5b", "qwen2.5-0.5b", "smollm2-135m", "tiny-qwen2", "tiny-llama"] {
            let c = ModelConfig::from_shape_name(n).unwrap();
            assert_eq!(c.num_heads % c.num_kv_heads, 0, "{n}");
        }
        // Qwen2-1.5B has about 1.54 B parameters.
        let p = ModelConfig::qwen2_1_5b().num_params() as f64;
        assert!((1.50e9..1.56e9).contains(&p), "{p}");
        assert!(ModelConfig::from_shape_name("gpt9").is_none());
    }

    #[test]
    fn config_json_reads_qwen2_and_llama3_scaling() {
        let q = r#"{"model_type":"qwen2","vocab_size":151936,"hidden_size":896,"intermediate_size":4864,
            "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"rope_theta":1000000.0,
            "rms_norm_eps":1e-6,"max_position_embeddings":32768,"tie_word_embeddings":true}"#;
        let c = ModelConfig::from_config_json(q, Path::new("config.json")).unwrap();
        assert_eq!(c, ModelConfig::from_shape_name("qwen2.5-0.5b").unwrap());
        let l = r#"{"model_type":"llama","vocab_size":128256,"hidden_size":2048,"intermediate_size":8192,
            "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"rope_theta":500000.0,
            "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"}}"#;
        let c = ModelConfig::from_config_json(l, Path::new("config.json")).unwrap();
        assert!(!c.attn_bias && c.head_dim == 64);
        let f = c.inv_freq();
        assert_eq!(f[0], 1.0); // high frequencies are untouched
        let plain = 1.0 / 500000f64.powf(62.0 / 64.0);
        assert!((f[31] - plain / 32.0).abs() < 1e-12 * plain); // the lowest is divided by the factor
        let bad = r#"{"model_type":"gpt2"}"#;
        assert!(matches!(ModelConfig::from_config_json(bad, Path::new("c")), Err(ModelError::Arch { .. })));
    }
}
