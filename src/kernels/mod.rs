//! Compute kernels with no model in them: the CPU SIMD quantized matrix products
//! (`cpu`, x86-64), the CUDA launch and dtype dispatch, the CUDA kernels shared by
//! several paths (dropout mask, AdamW, device memory) in `cuda`, and the helpers that
//! turn candle storages into tensors for custom ops (`custom_op`).
//!
//! Kernels know nothing of `Base`, LoRA, training or SQLite: they take slices, shapes
//! and dtypes.

#[cfg(target_arch = "x86_64")]
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub(crate) mod custom_op;
