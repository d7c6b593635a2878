//! Building a [`Base`]: from a GGUF file (every projection stays in its GGUF
//! block type), from a Hugging Face safetensors directory (quantized at load to
//! NF4 or Q4_K, one matrix at a time), or with random weights of a named shape
//! (benchmarks). Every source file's sha256 is recorded.

use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use crate::model::base::{Base, Layer, LoadOptions, QuantKind};
use crate::model::config::{Arch, ModelConfig};
use crate::model::error::{ModelError, Result};
use crate::model::lora::Target;
use crate::model::weights::nf4::Nf4Tensor;
use crate::model::weights::qlinear::{FrozenLinear, FrozenWeight};

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io = |e| ModelError::Io { path: path.to_path_buf(), source: e };
    let mut f = File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Moves a CPU QTensor to `device` (a no-op on the CPU).
fn to_device(q: QTensor, device: &Device) -> Result<QTensor> {
    if device.is_cpu() {
        return Ok(q);
    }
    let shape = q.shape().clone();
    let dtype = q.dtype();
    let storage = QStorage::from_data(q.data()?, device, dtype)?;
    Ok(QTensor::new(storage, shape)?)
}

/// Undoes llama.cpp's reordering of q/k rows for llama GGUF files (pairs interleaved
/// per head), giving Hugging Face's rotate-half layout that PEFT adapters assume.
fn unpermute_rows(q: QTensor, heads: usize) -> Result<QTensor> {
    let (n, k) = q.shape().dims2()?;
    let dtype = q.dtype();
    let row_bytes = k / dtype.block_size() * dtype.type_size();
    let data = q.data()?;
    let hd = n / heads;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for half in 0..2 {
            for i in 0..hd / 2 {
                let dst = h * hd + half * (hd / 2) + i;
                let src = h * hd + 2 * i + half;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Ok(QTensor::new(QStorage::from_data(Cow::Owned(out), &Device::Cpu, dtype)?, (n, k))?)
}

fn frozen_from_q(q: QTensor, opts: &LoadOptions) -> Result<FrozenWeight> {
    Ok(match q.dtype() {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
            FrozenWeight::Dense(q.dequantize(&Device::Cpu)?.to_dtype(opts.dtype)?.to_device(&opts.device)?)
        }
        _ => FrozenWeight::Ggml(Arc::new(to_device(q, &opts.device)?)),
    })
}

struct Gguf<'a> {
    path: &'a Path,
    file: File,
    content: gguf_file::Content,
}

impl Gguf<'_> {
    fn q(&mut self, name: &str) -> Result<QTensor> {
        if !self.content.tensor_infos.contains_key(name) {
            return Err(ModelError::MissingTensor { path: self.path.to_path_buf(), name: name.to_string() });
        }
        Ok(self.content.tensor(&mut self.file, name, &Device::Cpu)?)
    }

    fn dense(&mut self, name: &str, opts: &LoadOptions, expected: &[usize]) -> Result<Tensor> {
        let t = self.q(name)?.dequantize(&Device::Cpu)?;
        if t.dims() != expected {
            return Err(ModelError::Shape {
                path: self.path.to_path_buf(),
                name: name.to_string(),
                got: t.dims().to_vec(),
                expected: expected.to_vec(),
            });
        }
        Ok(t.to_dtype(opts.dtype)?.to_device(&opts.device)?)
    }
}

fn gguf_name(t: Target) -> &'static str {
    match t {
        Target::Q => "attn_q",
        Target::K => "attn_k",
        Target::V => "attn_v",
        Target::O => "attn_output",
        Target::Gate => "ffn_gate",
        Target::Up => "ffn_up",
        Target::Down => "ffn_down",
    }
}

impl Base {
    /// Loads a `.gguf` file or a Hugging Face safetensors directory.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        if path.is_dir() {
            return Self::load_safetensors_dir(path, opts);
        }
        let mut magic = [0u8; 4];
        let io = |e| ModelError::Io { path: path.to_path_buf(), source: e };
        File::open(path).map_err(io)?.read_exact(&mut magic).map_err(io)?;
        if &magic != b"GGUF" {
            return Err(ModelError::UnknownFormat { path: path.to_path_buf() });
        }
        Self::load_gguf(path, opts)
    }

    fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let io = |e| ModelError::Io { path: path.to_path_buf(), source: e };
        let mut file = File::open(path).map_err(io)?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| ModelError::BadValue {
            path: path.to_path_buf(),
            key: "header".into(),
            reason: e.to_string(),
        })?;
        let vocab_rows =
            content.tensor_infos.get("token_embd.weight").map(|i| i.shape.dims()[0]).ok_or_else(|| {
                ModelError::MissingTensor { path: path.to_path_buf(), name: "token_embd.weight".into() }
            })?;
        let mut cfg = ModelConfig::from_gguf(&content, path, vocab_rows)?;
        let mut g = Gguf { path, file, content };
        let freq_factors = if g.content.tensor_infos.contains_key("rope_freqs.weight") {
            Some(g.q("rope_freqs.weight")?.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
        } else {
            None
        };
        let h = cfg.hidden_size;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for li in 0..cfg.num_layers {
            let attn_norm = g.dense(&format!("blk.{li}.attn_norm.weight"), opts, &[h])?;
            let mlp_norm = g.dense(&format!("blk.{li}.ffn_norm.weight"), opts, &[h])?;
            let mut proj = Vec::with_capacity(7);
            for t in Target::ALL {
                let name = format!("blk.{li}.{}.weight", gguf_name(t));
                let mut q = g.q(&name)?;
                let (out, inp) = cfg.proj_shape(t);
                if q.shape().dims() != [out, inp] {
                    return Err(ModelError::Shape {
                        path: path.to_path_buf(),
                        name,
                        got: q.shape().dims().to_vec(),
                        expected: vec![out, inp],
                    });
                }
                if cfg.arch == Arch::Llama && matches!(t, Target::Q | Target::K) {
                    let heads = if t == Target::Q { cfg.num_heads } else { cfg.num_kv_heads };
                    q = unpermute_rows(q, heads)?;
                }
                let bias_name = format!("blk.{li}.{}.bias", gguf_name(t));
                let bias = if g.content.tensor_infos.contains_key(&bias_name) {
                    Some(g.dense(&bias_name, opts, &[out])?)
                } else {
                    None
                };
                proj.push(FrozenLinear::new(frozen_from_q(q, opts)?, bias));
            }
            let proj: [FrozenLinear; 7] =
                proj.try_into().map_err(|_| ModelError::Input("internal: projection count".into()))?;
            layers.push(Layer { attn_norm, mlp_norm, proj });
        }
        let embed = Arc::new(frozen_from_q(g.q("token_embd.weight")?, opts)?);
        let lm_head = if cfg.tie_embeddings {
            None
        } else {
            Some(FrozenLinear::new(frozen_from_q(g.q("output.weight")?, opts)?, None))
        };
        let final_norm = g.dense("output_norm.weight", opts, &[h])?;
        if let Some(f) = freq_factors {
            cfg.rope_scaling = None;
            let files = vec![(path.to_path_buf(), sha256_file(path)?)];
            let mut base = Base::assemble(cfg, layers, embed, lm_head, final_norm, opts, files)?;
            base.apply_freq_factors(&f)?;
            return Ok(base);
        }
        let files = vec![(path.to_path_buf(), sha256_file(path)?)];
        Base::assemble(cfg, layers, embed, lm_head, final_norm, opts, files)
    }

    /// Rebuilds the RoPE tables with per-frequency divisors (Llama 3 GGUF `rope_freqs`).
    fn apply_freq_factors(&mut self, factors: &[f32]) -> Result<()> {
        let inv = self.config.inv_freq();
        if factors.len() != inv.len() {
            return Err(ModelError::Input(format!(
                "rope_freqs has {} entries, expected {}",
                factors.len(),
                inv.len()
            )));
        }
        let maxp = self.config.max_position;
        let (c, s) = self.config.rope_tables(Some(factors));
        self.cos = Tensor::from_vec(c, (maxp, inv.len()), &self.device)?.to_dtype(self.dtype)?;
        self.sin = Tensor::from_vec(s, (maxp, inv.len()), &self.device)?.to_dtype(self.dtype)?;
        Ok(())
    }

    fn load_safetensors_dir(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| ModelError::Io { path: p, source: e }
        };
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(ModelError::UnknownFormat { path: dir.to_path_buf() });
        }
        let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
        let cfg = ModelConfig::from_config_json(&text, &cfg_path)?;
        let mut st_files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "safetensors")
                    && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("model"))
            })
            .collect();
        st_files.sort();
        if st_files.is_empty() {
            return Err(ModelError::UnknownFormat { path: dir.to_path_buf() });
        }
        let mut files = vec![(cfg_path.clone(), sha256_file(&cfg_path)?)];
        for p in &st_files {
            files.push((p.clone(), sha256_file(p)?));
        }
        let tok = dir.join("tokenizer.json");
        if tok.is_file() {
            files.push((tok.clone(), sha256_file(&tok)?));
        }
        // SAFETY: the files are mapped read-only for the duration of the load; the model
        // directory is not modified while the service loads it.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&st_files)? };
        let dir_path = dir.to_path_buf();
        let get = |name: &str, expected: &[usize]| -> Result<Tensor> {
            let t = st
                .load(name, &Device::Cpu)
                .map_err(|_| ModelError::MissingTensor { path: dir_path.clone(), name: name.to_string() })?;
            if t.dims() != expected {
                return Err(ModelError::Shape {
                    path: dir_path.clone(),
                    name: name.to_string(),
                    got: t.dims().to_vec(),
                    expected: expected.to_vec(),
                });
            }
            Ok(t)
        };
        let h = cfg.hidden_size;
        let dense = |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(opts.dtype)?.to_device(&opts.device)?) };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for li in 0..cfg.num_layers {
            let pre = format!("model.layers.{li}");
            let attn_norm = dense(get(&format!("{pre}.input_layernorm.weight"), &[h])?)?;
            let mlp_norm = dense(get(&format!("{pre}.post_attention_layernorm.weight"), &[h])?)?;
            let mut proj = Vec::with_capacity(7);
            for t in Target::ALL {
                let (out, inp) = cfg.proj_shape(t);
                let w = get(&format!("{pre}.{}.weight", t.peft_module()), &[out, inp])?;
                let bias = if cfg.attn_bias && matches!(t, Target::Q | Target::K | Target::V) {
                    Some(dense(get(&format!("{pre}.{}.bias", t.peft_module()), &[out])?)?)
                } else {
                    None
                };
                proj.push(FrozenLinear::new(quantize_weight(&w, opts)?, bias));
            }
            let proj: [FrozenLinear; 7] =
                proj.try_into().map_err(|_| ModelError::Input("internal: projection count".into()))?;
            layers.push(Layer { attn_norm, mlp_norm, proj });
        }
        let vh = [cfg.vocab_size, h];
        let embed = Arc::new(quantize_table(&get("model.embed_tokens.weight", &vh)?, opts)?);
        let lm_head = if cfg.tie_embeddings {
            None
        } else {
            Some(FrozenLinear::new(quantize_table(&get("lm_head.weight", &vh)?, opts)?, None))
        };
        let final_norm = dense(get("model.norm.weight", &[h])?)?;
        Base::assemble(cfg, layers, embed, lm_head, final_norm, opts, files)
    }

    /// Random weights of the given shape, quantized to `quant` one matrix at a time
    /// (no dense copy of the whole model ever exists). For benchmarks and tests.
    pub fn random(cfg: &ModelConfig, quant: QuantKind, seed: u64, opts: &LoadOptions) -> Result<Self> {
        let opts = LoadOptions { quant, ..opts.clone() };
        let mut rng = SplitMix(seed);
        let h = cfg.hidden_size;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        let dense = |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(opts.dtype)?.to_device(&opts.device)?) };
        for _ in 0..cfg.num_layers {
            let attn_norm = dense(rng.tensor(&[h], 1.0, 0.1)?)?;
            let mlp_norm = dense(rng.tensor(&[h], 1.0, 0.1)?)?;
            let mut proj = Vec::with_capacity(7);
            for t in Target::ALL {
                let (out, inp) = cfg.proj_shape(t);
                let w = rng.tensor(&[out, inp], 0.0, 0.035)?;
                let bias = if cfg.attn_bias && matches!(t, Target::Q | Target::K | Target::V) {
                    Some(dense(rng.tensor(&[out], 0.0, 0.05)?)?)
                } else {
                    None
                };
                proj.push(FrozenLinear::new(quantize_weight(&w, &opts)?, bias));
            }
            let proj: [FrozenLinear; 7] =
                proj.try_into().map_err(|_| ModelError::Input("internal: projection count".into()))?;
            layers.push(Layer { attn_norm, mlp_norm, proj });
        }
        let embed = Arc::new(rng.table(cfg.vocab_size, h, &opts)?);
        let lm_head = if cfg.tie_embeddings {
            None
        } else {
            Some(FrozenLinear::new(rng.table(cfg.vocab_size, h, &opts)?, None))
        };
        let final_norm = dense(rng.tensor(&[h], 1.0, 0.1)?)?;
        Base::assemble(cfg.clone(), layers, embed, lm_head, final_norm, &opts, Vec::new())
    }
}

/// Quantizes one dense projection to the configured 4-bit type.
pub(crate) fn quantize_weight(w: &Tensor, opts: &LoadOptions) -> Result<FrozenWeight> {
    let (_, inp) = w.dims2()?;
    Ok(match opts.quant {
        QuantKind::Nf4 => FrozenWeight::Nf4(Nf4Tensor::quantize(w, &opts.device)?),
        QuantKind::Q4K => {
            let t = if inp % 256 == 0 { GgmlDType::Q4K } else { GgmlDType::Q4_1 };
            let q = QTensor::quantize(&w.to_dtype(DType::F32)?, t)?;
            FrozenWeight::Ggml(Arc::new(to_device(q, &opts.device)?))
        }
    })
}

/// Embedding tables (and an untied lm_head) are kept in Q8_0: a quarter of f32, rows
/// gathered by dequantizing only the looked-up rows.
pub(crate) fn quantize_table(w: &Tensor, opts: &LoadOptions) -> Result<FrozenWeight> {
    let q = QTensor::quantize(&w.to_dtype(DType::F32)?, GgmlDType::Q8_0)?;
    Ok(FrozenWeight::Ggml(Arc::new(to_device(q, &opts.device)?)))
}

/// A small, fast deterministic generator for random test/benchmark weights.
struct SplitMix(u64);

impl SplitMix {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// A random (rows, cols) Q8_0 table built a slice of rows at a time, so the dense
    /// f32 table (933 MB for Qwen2-1.5B's vocabulary) never exists at once.
    fn table(&mut self, rows: usize, cols: usize, opts: &LoadOptions) -> Result<FrozenWeight> {
        let step = ((1 << 22) / cols.max(1)).max(1);
        let mut bytes = Vec::new();
        for r0 in (0..rows).step_by(step) {
            let r = step.min(rows - r0);
            let q = QTensor::quantize(&self.tensor(&[r, cols], 0.0, 0.05)?, GgmlDType::Q8_0)?;
            bytes.extend_from_slice(&q.data()?);
        }
        let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, GgmlDType::Q8_0)?;
        let q = QTensor::new(storage, (rows, cols))?;
        Ok(FrozenWeight::Ggml(Arc::new(to_device(q, &opts.device)?)))
    }

    /// Uniform values with the given mean and standard deviation.
    fn tensor(&mut self, shape: &[usize], mean: f32, std: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let a = std * 3f32.sqrt();
        let v: Vec<f32> = (0..n).map(|_| mean + a * (2.0 * self.next_f32() - 1.0)).collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    }
}
