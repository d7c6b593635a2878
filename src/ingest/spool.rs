//! Content-addressed copies of originals in the data dir:
//! `spool/ab/abcdef….ext`, named by the sha256 of the bytes.
//!
//! A copy is written to `spool/tmp/`, hashed on the way, fsynced, renamed to
//! its final name and the folder fsynced, so a crash leaves either no copy or a
//! complete one (stale temp files are removed at the next start). The same
//! bytes always land on the same name: writing them twice is harmless.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// A copy written and synced under `spool/tmp/`, not yet under its final name.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

/// Remove temp files a crash left behind (only the writer-lock holder calls this).
pub fn clean_tmp(spool: &Path) -> std::io::Result<usize> {
    let dir = spool.join("tmp");
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            std::fs::remove_file(e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Copy `src` into `spool/tmp/`, hashing; stop with `FileTooLarge` past `max_bytes`.
pub fn stage(spool: &Path, src: &mut impl Read, max_bytes: u64) -> Result<Staged, SpoolError> {
    let dir = spool.join("tmp");
    std::fs::create_dir_all(&dir).map_err(|e| SpoolError::io(&dir, e))?;
    let tmp = dir.join(format!("{}-{}.part", std::process::id(), NEXT_TMP.fetch_add(1, Ordering::Relaxed)));
    let out = (|| {
        let mut f = File::create(&tmp)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut bytes = 0u64;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            bytes += n as u64;
            if bytes > max_bytes {
                return Ok(None);
            }
            hasher.update(&buf[..n]);
            f.write_all(&buf[..n])?;
        }
        f.sync_all()?;
        Ok(Some((hex::encode(hasher.finalize()), bytes)))
    })();
    match out {
        Ok(Some((sha256, bytes))) => Ok(Staged { tmp, sha256, bytes }),
        Ok(None) => {
            let _ = std::fs::remove_file(&tmp);
            Err(SpoolError::FileTooLarge)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(SpoolError::Read(e))
        }
    }
}

/// Relative path (to the data dir) of the spool copy for `sha256` with `ext`.
pub fn spool_rel(sha256: &str, ext: &str) -> String {
    let ext = ext.to_ascii_lowercase();
    format!("spool/{}/{}.{}", &sha256[..2], sha256, ext)
}

impl Staged {
    /// Move the synced copy to its content-addressed name; returns that name
    /// relative to the data dir.
    pub fn commit(self, data_dir: &Path, ext: &str) -> Result<String, SpoolError> {
        let rel = spool_rel(&self.sha256, ext);
        let dest = data_dir.join(&rel);
        let Some(dir) = dest.parent() else {
            return Err(SpoolError::io(&dest, std::io::ErrorKind::InvalidInput.into()));
        };
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, e))?;
            if let Some(spool) = dir.parent() {
                sync_dir(spool).map_err(|e| SpoolError::io(spool, e))?;
            }
        }
        if dest.exists() {
            // Same name, same sha256: the bytes are already there.
            let _ = std::fs::remove_file(&self.tmp);
            return Ok(rel);
        }
        std::fs::rename(&self.tmp, &dest).map_err(|e| SpoolError::io(&dest, e))?;
        sync_dir(dir).map_err(|e| SpoolError::io(dir, e))?;
        Ok(rel)
    }

    /// Throw the copy away (the original changed while it was read).
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// fsync a directory so a rename or create inside it survives a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("reading the original: {0}")]
    Read(std::io::Error),
    #[error("the file grew past the size limit while it was copied")]
    FileTooLarge,
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl SpoolError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        SpoolError::Io { path: path.to_path_buf(), source }
    }
}

/// sha256 of a file's bytes (used to find an original after a crash).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_copy_is_content_addressed_and_byte_equal() {
        let d = tempfile::tempdir().unwrap();
        let spool = d.path().join("spool");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let st = stage(&spool, &mut &data[..], 1 << 20).unwrap();
        let sha = st.sha256.clone();
        let rel = st.commit(d.path(), "TXT").unwrap();
        assert_eq!(rel, format!("spool/{}/{}.txt", &sha[..2], sha));
        assert_eq!(std::fs::read(d.path().join(&rel)).unwrap(), data);
        // Twice: same name, no second file, no temp left.
        let rel2 = stage(&spool, &mut &data[..], 1 << 20).unwrap().commit(d.path(), "txt").unwrap();
        assert_eq!(rel, rel2);
        assert_eq!(std::fs::read_dir(spool.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn growing_past_the_limit_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let data = vec![7u8; 5000];
        assert!(matches!(stage(d.path(), &mut &data[..], 4000), Err(SpoolError::FileTooLarge)));
        assert_eq!(std::fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    }
}
