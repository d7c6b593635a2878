//! The adapter registry and its interchange formats.
//!
//! Every adapter the box has trained or imported lives in
//! `<data_dir>/adapters/<name>/` (PEFT layout) and has one row in the
//! `adapters` table with its lineage (parent, run, data snapshot), size,
//! sha256, metrics and state. This module owns the rules over those rows:
//! promotion and rollback switch the active adapter atomically (one
//! `BEGIN IMMEDIATE` transaction), a rejected adapter never becomes active,
//! and retention keeps the newest `[retention] keep_adapters`, deleting a
//! retired adapter's directory only after the database has committed its
//! new state (a crash in between leaves an orphan directory, never a row
//! pointing at nothing).
//!
//! - [`weights`]: LoRA matrices as plain f32, checked against base shapes.
//! - [`peft`]: Hugging Face PEFT directories (read, write).
//! - [`gguf`]: llama.cpp LoRA GGUF files (write, read back).
//! - [`registry`]: promote, rollback, retention, import, export.
//! - [`runtime`]: a registry adapter loaded on a base model.
//! - [`gating`]: score a candidate, decide, record the outcome.

pub mod gating;
pub mod gguf;
pub mod peft;
pub mod registry;
pub mod runtime;
pub mod weights;

use std::path::PathBuf;

use crate::store::StoreError;

pub use gating::{evaluate_and_gate, gate_candidate, GateError, GateOutcome};
pub use registry::{export, import_peft, promote, rollback, ExportFormat, Switch};
pub use runtime::{base_sha256, load_adapter};
pub use weights::{BaseShapes, LoraPair, LoraWeights, Module, MODULES};

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: tensor {name}: {reason}")]
    Tensor { path: PathBuf, name: String, reason: String },
    #[error("tensor {tensor}: expected shape {expected:?}, found {found:?}")]
    Shape { tensor: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor {tensor}: {reason}")]
    Mismatch { tensor: String, reason: String },
    #[error("{path}: unsupported: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: bad safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: GGUF: {reason}")]
    Gguf { path: PathBuf, reason: String },
    #[error("loading adapter {path}: {source}")]
    Load { path: PathBuf, source: Box<crate::model::ModelError> },
    #[error("no adapter with id {0}")]
    NotFound(i64),
    #[error("adapter {id} is {state}: {why}")]
    State { id: i64, state: String, why: String },
    #[error("no adapter is active: nothing to roll back (the bare base model answers)")]
    NothingActive,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::store::adapters::Refusal> for AdapterError {
    fn from(r: crate::store::adapters::Refusal) -> Self {
        use crate::store::adapters::Refusal;
        match r {
            Refusal::NotFound(id) => AdapterError::NotFound(id),
            Refusal::State { id, state, why } => AdapterError::State { id, state, why },
            Refusal::NothingActive => AdapterError::NothingActive,
        }
    }
}
