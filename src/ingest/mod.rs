//! Drop-folder ingestion: watch, settle, spool, extract, chunk, index — and
//! never lose an operator's file.
//!
//! Threading: the [`watch::Watcher`] runs on its own thread and only sends
//! hints ("look at this path", "rescan"); one [`worker::Worker`] owns the
//! store and does one unit of work per [`worker::Worker::tick`]. The store is
//! the queue: every file gets a `files` row before anything irreversible
//! happens to it, each step is idempotent, and a crash at any point is
//! repaired by re-running the open rows ([`pipeline::Pipeline::resume`]).
//!
//! A file's steps: settle (size and mtime unchanged over the stability
//! delay, and it opens) → spool (content-addressed copy, synced) → row
//! `pending` with its sha256 → extract in an isolated child process → one
//! transaction: document, chunks, Q&A pairs and the state → move the original
//! to `processed/` or `rejected/` (with `NAME.error.txt`) → row closed with
//! `moved_to`. Parsing never runs in this process.

pub mod chunk;
pub mod extract;
pub mod names;
pub mod pipeline;
pub mod reason;
pub mod settle;
pub mod spool;
pub mod watch;
pub mod worker;

use std::sync::OnceLock;

pub use pipeline::{Outcome, Pipeline, State};
pub use reason::Reject;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("watching {path}: {source}")]
    Watch { path: std::path::PathBuf, source: notify::Error },
}

impl IngestError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        IngestError::Io { path: path.to_path_buf(), source }
    }
}

/// Named failure points for crash and isolation tests, from the comma-separated
/// `WARSHA_FAULT` environment variable (read once). Production never sets it.
pub fn fault(name: &str) -> bool {
    static FAULTS: OnceLock<Vec<String>> = OnceLock::new();
    FAULTS
        .get_or_init(|| {
            std::env::var("WARSHA_FAULT")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default()
        })
        .iter()
        .any(|f| f == name)
}

/// Die like a power cut at the named point, when asked to (`WARSHA_FAULT=crash-after-spool`, …).
pub(crate) fn crash_point(name: &str) {
    if fault(name) {
        tracing::error!(point = name, "fault point: aborting");
        std::process::abort();
    }
}
