//! The model layer's error type: every failure names the file, tensor or key
//! it concerns, so a bad model file is reported in terms an operator can act on.

use std::path::PathBuf;

/// Errors raised while loading, running or saving models and adapters.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: missing metadata key {key}")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: bad value for {key}: {reason}")]
    BadValue { path: PathBuf, key: String, reason: String },
    #[error("{path}: missing tensor {name}")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor {name} has shape {got:?}, expected {expected:?}")]
    Shape { path: PathBuf, name: String, got: Vec<usize>, expected: Vec<usize> },
    #[error("{path}: unsupported architecture {arch:?} (supported: qwen2, llama)")]
    Arch { path: PathBuf, arch: String },
    #[error("{path}: not a GGUF file or a directory with config.json and *.safetensors")]
    UnknownFormat { path: PathBuf },
    #[error("unknown LoRA target {0:?} (expected q, k, v, o, gate, up, down)")]
    Target(String),
    #[error("unknown quantization {0:?} (expected nf4 or q4k)")]
    Quant(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
