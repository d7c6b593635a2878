//! QLoRA training: the dataset built from the store, the optimizer loop with
//! accumulation, clipping, mixed precision and loss scaling, checkpoints that
//! resume a round exactly, the memory planner, and per-step metrics.
//!
//! The trainer knows the model only through `model::Base::loss_and_grads` and
//! the adapter's f32 `Var`s; it knows SQLite only through `Store` methods in
//! `store/train.rs`. [`round::run_round`] is the one entry point the CLI, the
//! demo and the service share.

pub mod checkpoint;
pub(crate) mod cpu;
pub mod dataset;
pub mod dense;
pub mod device;
pub(crate) mod ops;
pub mod optim;
pub mod plan;
pub mod round;
pub mod scaler;
pub mod schedule;
pub mod stop;
pub mod trainer;

use std::path::PathBuf;

pub use stop::{install_stop_signals, window_deadline, LocalTime, StopReason};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("out of memory even at the smallest training shape: {0}")]
    OutOfMemory(String),
    #[error(transparent)]
    Plan(#[from] plan::NoFit),
    #[error("nothing to train on: ingest documents or Q&A sets first (`warsha ingest`)")]
    NoData,
    #[error("cannot resume run #{run_id}: {reason}")]
    ResumeMismatch { run_id: i64, reason: String },
    #[error("tokenizing the training material: {0}")]
    Tokenize(String),
    #[error("device: {0}")]
    Device(String),
}

impl TrainError {
    /// A model error, with out-of-memory told apart (the loop backs off on it).
    pub fn from_model(e: crate::model::ModelError) -> Self {
        let m = e.to_string();
        if plan::is_oom(&m) {
            TrainError::OutOfMemory(m)
        } else {
            TrainError::Model(e)
        }
    }

    /// An error message from a failed computation, classified (out-of-memory or not).
    pub fn from_message(msg: String) -> Self {
        if plan::is_oom(&msg) {
            TrainError::OutOfMemory(msg)
        } else {
            TrainError::Candle(candle_core::Error::Msg(msg))
        }
    }
}
