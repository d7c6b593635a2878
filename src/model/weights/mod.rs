//! The frozen base weights: reading GGUF and safetensors files into a [`super::Base`]
//! (`load`), NF4 quantization (`nf4`), and the frozen linear layer that multiplies by
//! quantized, NF4 or dense weights on the CPU or a GPU (`qlinear`, with the GPU
//! dequantization kernels in `cuda_dequant`).
//!
//! Nothing here knows of LoRA's training, the training loop or SQLite.

#[cfg(feature = "cuda")]
pub(crate) mod cuda_dequant;
pub(crate) mod load;
pub(crate) mod nf4;
pub(crate) mod qlinear;
