//! The model core: configuration, the qwen2/llama decoder over frozen quantized
//! weights, LoRA adapters, loading (GGUF, safetensors), training loss and scoring;
//! tokenizing, chat templates, text generation, and installing models into the data dir.

pub mod attention;
pub mod chat;
pub mod config;
pub(crate) mod cpu_train;
#[cfg(feature = "cuda")]
pub mod cuda_attn;
#[cfg(feature = "cuda")]
pub mod cuda_dequant;
#[cfg(feature = "cuda")]
pub mod cuda_dropout;
#[cfg(feature = "cuda")]
mod cuda_fused;
#[cfg(feature = "cuda")]
mod cuda_kernel;
#[cfg(feature = "cuda")]
pub mod cuda_mem;
mod custom_op;
pub mod decoder;
pub mod error;
pub mod fetch;
pub mod fused_ce;
pub mod generate;
pub mod info;
pub mod load;
pub mod lora;
pub mod lora_op;
pub mod loss;
pub mod nf4;
mod norm_op;
pub mod phases;
pub mod qlinear;
#[cfg(target_arch = "x86_64")]
mod qmm_cpu;
mod rope_op;
pub mod sampling;
mod swiglu_op;
#[cfg(test)]
pub(crate) mod testing;
pub mod tokenizer;

pub use config::{Arch, ModelConfig};
pub use decoder::{Base, KvCache, LoadOptions, QuantKind};
pub use error::{ModelError, Result};
pub use lora::{Adapter, LoraConfig, Target};
pub use loss::{Batch, LossOut, TrainOptions};
