//! The crate's CUDA code that no single training op owns: the header every kernel
//! includes (`cuda_common.cuh`), kernel naming and dtype dispatch for launchers
//! (`cuda_kernel`), the LoRA dropout mask (`cuda_dropout`), the fused AdamW update
//! (`cuda_adamw`), and device memory figures and pool settings (`cuda_mem`).
//!
//! It knows nothing of `Base`, LoRA's adapters, the training loop or SQLite.

pub(crate) mod cuda_adamw;
pub(crate) mod cuda_dropout;
pub(crate) mod cuda_kernel;
pub mod cuda_mem;
