//! What a model file says about itself: GGUF metadata and tensor tables, or a
//! Hugging Face safetensors directory's `config.json` and tensor headers.
//! Reading only headers, never tensor data, so inspecting a model costs
//! milliseconds (plus one streaming sha256 pass when asked for).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::tokenizer::chat::ChatTemplate;
use crate::model::tokenizer::Tok;

#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a readable GGUF file: {reason}")]
    Gguf { path: PathBuf, reason: String },
    #[error("{path}: metadata key `{key}` is missing or not a {expected}")]
    Key { path: PathBuf, key: String, expected: &'static str },
    #[error("{path}: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path} is neither a .gguf file nor a directory holding config.json and *.safetensors")]
    UnknownFormat { path: PathBuf },
}

pub type Result<T, E = InfoError> = std::result::Result<T, E>;

/// The metadata and tensor table of a GGUF file.
pub struct GgufMeta {
    path: PathBuf,
    content: Content,
}

impl GgufMeta {
    pub fn read(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| InfoError::Io { path: path.to_path_buf(), source })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader)
            .map_err(|e| InfoError::Gguf { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(Self { path: path.to_path_buf(), content })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn content(&self) -> &Content {
        &self.content
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.to_string().ok()).map(String::as_str)
    }

    /// Any integer type, as writers differ in which width they use.
    pub fn int(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(value_int)
    }

    pub fn float(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Value::F32(v) => Some(f64::from(*v)),
            Value::F64(v) => Some(*v),
            other => value_int(other).map(|v| v as f64),
        }
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            other => value_int(other).map(|v| v != 0),
        }
    }

    /// An array of strings; `Ok(None)` when absent, an error when present with another type.
    pub fn strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let bad =
            || InfoError::Key { path: self.path.clone(), key: key.to_string(), expected: "string array" };
        let arr = v.to_vec().map_err(|_| bad())?;
        arr.iter()
            .map(|x| x.to_string().map(String::as_str).map_err(|_| bad()))
            .collect::<Result<_>>()
            .map(Some)
    }

    /// An array of integers; `Ok(None)` when absent.
    pub fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let bad =
            || InfoError::Key { path: self.path.clone(), key: key.to_string(), expected: "integer array" };
        let arr = v.to_vec().map_err(|_| bad())?;
        arr.iter().map(|x| value_int(x).ok_or_else(bad)).collect::<Result<_>>().map(Some)
    }

    pub fn arch(&self) -> Option<&str> {
        self.str("general.architecture")
    }

    /// `{arch}.{suffix}`, e.g. `llama.block_count`.
    pub fn arch_int(&self, suffix: &str) -> Option<i64> {
        self.arch().and_then(|a| self.int(&format!("{a}.{suffix}")))
    }

    pub fn arch_float(&self, suffix: &str) -> Option<f64> {
        self.arch().and_then(|a| self.float(&format!("{a}.{suffix}")))
    }
}

fn value_int(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => i64::from(*x),
        Value::I8(x) => i64::from(*x),
        Value::U16(x) => i64::from(*x),
        Value::I16(x) => i64::from(*x),
        Value::U32(x) => i64::from(*x),
        Value::I32(x) => i64::from(*x),
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

/// One file of a model, with its digest.
#[derive(Debug, Clone, Serialize)]
pub struct FileDigest {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// How many tensors are stored in one type.
#[derive(Debug, Clone, Serialize)]
pub struct QuantCount {
    pub dtype: String,
    pub tensors: usize,
}

/// Everything `warsha model info` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub format: &'static str,
    pub architecture: String,
    pub name: Option<String>,
    pub layers: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub vocab_size: Option<usize>,
    pub context_length: Option<usize>,
    pub rope_theta: Option<f64>,
    pub quant_types: Vec<QuantCount>,
    pub parameters: u64,
    pub bytes: u64,
    pub files: Vec<FileDigest>,
    /// "embedded", "tokenizer.json" or "none".
    pub tokenizer: &'static str,
    /// "chatml", "llama3", "zephyr" or "none".
    pub chat_template: &'static str,
}

/// Inspect a model; `with_sha` adds a full read of every file for its sha256.
pub fn inspect(path: &Path, with_sha: bool) -> Result<ModelInfo> {
    if path.is_dir() {
        inspect_safetensors(path, with_sha)
    } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) || is_gguf(path) {
        inspect_gguf(path, with_sha)
    } else {
        Err(InfoError::UnknownFormat { path: path.to_path_buf() })
    }
}

fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

fn usize_of(v: Option<i64>) -> Option<usize> {
    v.and_then(|x| usize::try_from(x).ok())
}

fn inspect_gguf(path: &Path, with_sha: bool) -> Result<ModelInfo> {
    let meta = GgufMeta::read(path)?;
    let mut quant: BTreeMap<String, usize> = BTreeMap::new();
    let mut parameters = 0u64;
    for info in meta.content.tensor_infos.values() {
        *quant.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
        parameters += info.shape.elem_count() as u64;
    }
    let vocab_size = usize_of(meta.arch_int("vocab_size"))
        .or_else(|| meta.strings("tokenizer.ggml.tokens").ok().flatten().map(|t| t.len()));
    let source = Tok::locate(path);
    let template = ChatTemplate::detect(meta.str("tokenizer.chat_template"), meta.arch());
    let file = digest(path, with_sha)?;
    Ok(ModelInfo {
        path: path.to_path_buf(),
        format: "gguf",
        architecture: meta.arch().unwrap_or("unknown").to_string(),
        name: meta.str("general.name").map(str::to_string),
        layers: usize_of(meta.arch_int("block_count")),
        hidden_size: usize_of(meta.arch_int("embedding_length")),
        intermediate_size: usize_of(meta.arch_int("feed_forward_length")),
        heads: usize_of(meta.arch_int("attention.head_count")),
        kv_heads: usize_of(meta.arch_int("attention.head_count_kv")),
        vocab_size,
        context_length: usize_of(meta.arch_int("context_length")),
        rope_theta: meta.arch_float("rope.freq_base"),
        quant_types: quant.into_iter().map(|(dtype, tensors)| QuantCount { dtype, tensors }).collect(),
        parameters,
        bytes: file.bytes,
        files: vec![file],
        tokenizer: source.label(),
        chat_template: template.kind(),
    })
}

fn inspect_safetensors(dir: &Path, with_sha: bool) -> Result<ModelInfo> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|source| InfoError::Io { path: config_path.clone(), source })?;
    let cfg: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| InfoError::Safetensors { path: config_path.clone(), reason: e.to_string() })?;
    let num = |k: &str| cfg.get(k).and_then(serde_json::Value::as_u64).and_then(|v| usize::try_from(v).ok());
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| InfoError::Io { path: dir.to_path_buf(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(InfoError::UnknownFormat { path: dir.to_path_buf() });
    }
    let mut quant: BTreeMap<String, usize> = BTreeMap::new();
    let mut parameters = 0u64;
    let mut files = Vec::new();
    for shard in &shards {
        for (dtype, elems) in safetensors_header(shard)? {
            *quant.entry(dtype).or_default() += 1;
            parameters += elems;
        }
        files.push(digest(shard, with_sha)?);
    }
    let tpl_src = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("chat_template").and_then(|t| t.as_str()).map(str::to_string));
    let arch = cfg.get("model_type").and_then(|v| v.as_str()).unwrap_or("unknown").to_string();
    let template = ChatTemplate::detect(tpl_src.as_deref(), Some(&arch));
    Ok(ModelInfo {
        path: dir.to_path_buf(),
        format: "safetensors",
        name: cfg.get("architectures").and_then(|a| a.get(0)).and_then(|v| v.as_str()).map(str::to_string),
        architecture: arch,
        layers: num("num_hidden_layers"),
        hidden_size: num("hidden_size"),
        intermediate_size: num("intermediate_size"),
        heads: num("num_attention_heads"),
        kv_heads: num("num_key_value_heads").or(num("num_attention_heads")),
        vocab_size: num("vocab_size"),
        context_length: num("max_position_embeddings"),
        rope_theta: cfg.get("rope_theta").and_then(serde_json::Value::as_f64),
        quant_types: quant.into_iter().map(|(dtype, tensors)| QuantCount { dtype, tensors }).collect(),
        parameters,
        bytes: files.iter().map(|f| f.bytes).sum(),
        files,
        tokenizer: Tok::locate(dir).label(),
        chat_template: template.kind(),
    })
}

/// (dtype, element count) of every tensor in one safetensors file, from its header alone.
fn safetensors_header(path: &Path) -> Result<Vec<(String, u64)>> {
    let bad = |reason: String| InfoError::Safetensors { path: path.to_path_buf(), reason };
    let mut f = File::open(path).map_err(|source| InfoError::Io { path: path.to_path_buf(), source })?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|source| InfoError::Io { path: path.to_path_buf(), source })?;
    let len = u64::from_le_bytes(len);
    // Headers are a few hundred KB at most; a huge length means a corrupt file.
    if len > 100 << 20 {
        return Err(bad(format!("header length {len} is implausible")));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(|source| InfoError::Io { path: path.to_path_buf(), source })?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&buf).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let mut out = Vec::new();
    for (name, t) in header.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let dtype =
            t.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad(format!("{name}: no dtype")))?;
        let shape =
            t.get("shape").and_then(|s| s.as_array()).ok_or_else(|| bad(format!("{name}: no shape")))?;
        let elems = shape.iter().map(|d| d.as_u64().unwrap_or(0)).product::<u64>();
        out.push((dtype.to_string(), elems));
    }
    Ok(out)
}

fn digest(path: &Path, with_sha: bool) -> Result<FileDigest> {
    let bytes =
        std::fs::metadata(path).map_err(|source| InfoError::Io { path: path.to_path_buf(), source })?.len();
    let sha256 = if with_sha { sha256_file(path)? } else { String::new() };
    Ok(FileDigest { path: path.to_path_buf(), bytes, sha256 })
}

/// Streaming sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io = |source| InfoError::Io { path: path.to_path_buf(), source };
    let mut f = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
