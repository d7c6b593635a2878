//! The data directory's layout and its single-writer lock.
//!
//! ```text
//! warsha.db            the record of everything
//! spool/ab/abcdef….ext content-addressed copies of accepted originals
//! models/              base models
//! adapters/<id>/       adapter_model.safetensors, adapter_config.json
//! checkpoints/<run>/   resumable training state
//! run/warsha.sock      the service socket; run/warsha.lock the writer lock
//! ```

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("{path} is held by another warsha process (pid {holder}); stop it or use its socket")]
    Locked { path: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Create the layout's folders (idempotent).
    pub fn create(&self) -> Result<(), DataDirError> {
        for sub in ["", "spool", "models", "adapters", "checkpoints", "run"] {
            let p = self.root.join(sub);
            std::fs::create_dir_all(&p).map_err(|source| DataDirError::Create { path: p, source })?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn db(&self) -> PathBuf {
        self.root.join("warsha.db")
    }
    pub fn spool(&self) -> PathBuf {
        self.root.join("spool")
    }
    pub fn models(&self) -> PathBuf {
        self.root.join("models")
    }
    pub fn adapters(&self) -> PathBuf {
        self.root.join("adapters")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn socket(&self) -> PathBuf {
        self.root.join("run").join("warsha.sock")
    }

    /// Take the single-writer lock (non-blocking). Held until the guard drops;
    /// the kernel releases it if the process dies, so a crash never leaves a
    /// stale lock behind.
    pub fn lock(&self) -> Result<WriterLock, DataDirError> {
        let path = self.root.join("run").join("warsha.lock");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|source| DataDirError::Create { path: parent.to_path_buf(), source })?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| DataDirError::Lock { path: path.clone(), source })?;
        // An exclusive flock(2) on Linux: it belongs to this open file and
        // goes with it when the guard drops or the process dies.
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default().trim().to_string();
                return Err(DataDirError::Locked { path, holder });
            }
            Err(TryLockError::Error(source)) => return Err(DataDirError::Lock { path, source }),
        }
        let _ = file.set_len(0);
        let _ = std::io::Write::write_all(&mut &file, std::process::id().to_string().as_bytes());
        Ok(WriterLock { _file: file })
    }
}

/// Proof that this process is the data dir's one writer.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::new(dir.path());
        d.create().unwrap();
        let g = d.lock().unwrap();
        // flock locks belong to the open file description, so a second open
        // in the same process conflicts just as another process would.
        assert!(matches!(d.lock(), Err(DataDirError::Locked { .. })));
        drop(g);
        d.lock().unwrap();
    }
}
