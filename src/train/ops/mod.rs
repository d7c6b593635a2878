//! The autograd-graph training path: the decoder block built only from ops with a
//! backward (`block`), the loss, gradients and scoring of a micro-batch (`loss`), and
//! the training ops with their own forward and backward — RMSNorm (`norm_op`), RoPE
//! (`rope_op`), SwiGLU (`swiglu_op`), tiled segment-masked attention (`attention`) and
//! the chunked lm_head + cross-entropy (`fused_ce`) — each beside its CUDA launchers and
//! kernels (`cuda_attn`, `cuda_fused`).
//!
//! It knows the model through `model::{Base, Adapter}` and nothing of SQLite or the
//! training loop above it.

pub(crate) mod attention;
pub(crate) mod block;
#[cfg(feature = "cuda")]
pub(crate) mod cuda_attn;
#[cfg(feature = "cuda")]
pub(crate) mod cuda_fused;
pub(crate) mod fused_ce;
pub(crate) mod loss;
pub(crate) mod norm_op;
pub(crate) mod rope_op;
pub(crate) mod swiglu_op;
