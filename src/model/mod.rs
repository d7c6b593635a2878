//! The model core: the [`Base`] model over frozen quantized weights (the Llama-family
//! decoder of decoder.rs and its inference forward), configuration, weights and their loading
//! (GGUF, safetensors, NF4), LoRA adapters, the tokenizer and chat templates, and
//! text generation.
//!
//! It knows nothing of SQLite, the data dir or the drop folder, and nothing of the
//! training loop: the training passes over a `Base` live in `train::ops` (autograd
//! graph) and `train::cpu` (graph-free CPU path); the kernels it calls live in
//! `kernels/`.

pub(crate) mod base;
pub(crate) mod batch;
pub mod config;
mod decoder;
pub mod error;
pub mod generate;
pub mod info;
pub(crate) mod lora;
pub(crate) mod lora_op;
pub mod phases;
#[cfg(test)]
pub(crate) mod testing;
pub mod tokenizer;
pub(crate) mod weights;

pub use base::{Base, KvCache, Layer, LoadOptions, QuantKind};
pub use batch::{Batch, LossOut, TrainOptions, DEFAULT_CE_CHUNK};
pub use config::{Arch, ModelConfig};
pub use error::{ModelError, Result};
pub use generate::sampling;
pub use lora::{Adapter, LoraConfig, Target};
pub use weights::load::sha256_file;
