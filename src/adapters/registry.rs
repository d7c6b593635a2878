//! Registry operations that touch both the database and the adapter
//! directories: promote, rollback, retention, import and export.
//!
//! Each state switch is one store operation (one `BEGIN IMMEDIATE`
//! transaction that reads the rows it decides on, so two writers can never
//! interleave a promotion); this module adds the file-system steps around
//! it: the weights' hash before, each retired row's directory checked inside
//! the transaction, and those directories removed only after it committed.

use std::path::{Component, Path, PathBuf};

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::weights::{BaseShapes, LoraWeights};
use super::{gguf, peft, AdapterError};
use crate::data_dir::DataDir;
use crate::store::adapters::{AdapterRow, NewAdapter, Transition};
use crate::store::Store;

/// The outcome of a promotion, rollback or retention pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Switch {
    /// The adapter now answering (None: the bare base model).
    pub active: Option<AdapterRow>,
    /// The adapter that was active before, now `previous` (promote) or `rejected` (rollback).
    pub replaced: Option<AdapterRow>,
    /// Adapters retired by retention; their directories are gone.
    pub retired: Vec<AdapterRow>,
    /// Directories that could not be removed (left for the operator; the rows are retired).
    pub leftover_dirs: Vec<PathBuf>,
}

/// sha256 (hex) of an adapter directory's weights file, and the bytes of all its files.
pub fn dir_stats(dir: &Path) -> Result<(String, i64), AdapterError> {
    let w = dir.join(peft::WEIGHTS_FILE);
    let bytes = std::fs::read(&w).map_err(|source| AdapterError::Io { path: w.clone(), source })?;
    let sha = hex::encode(Sha256::digest(&bytes));
    let mut total = 0i64;
    let rd = std::fs::read_dir(dir).map_err(|source| AdapterError::Io { path: dir.to_path_buf(), source })?;
    for e in rd.flatten() {
        if let Ok(m) = e.metadata() {
            if m.is_file() {
                total += m.len() as i64;
            }
        }
    }
    Ok((sha, total))
}

/// The directory of a registry row, refusing paths that leave `adapters/`.
fn row_dir(data: &DataDir, row: &AdapterRow) -> Result<PathBuf, AdapterError> {
    let rel = Path::new(&row.path);
    let inside = rel.starts_with("adapters")
        && rel.components().all(|c| matches!(c, Component::Normal(_)))
        && rel.components().count() == 2;
    if !inside {
        return Err(AdapterError::State {
            id: row.id,
            state: row.state.clone(),
            why: format!("its path {:?} is not a directory under adapters/", row.path),
        });
    }
    Ok(data.root().join(rel))
}

/// Make adapter `id` the active one. The current active adapter becomes
/// `previous`; rejected and retired adapters are refused; the weights file
/// must still match the recorded sha256. Retention runs in the same
/// transaction.
pub fn promote(
    store: &mut Store,
    data: &DataDir,
    id: i64,
    reasons: Option<&serde_json::Value>,
    keep: usize,
) -> Result<Switch, AdapterError> {
    let row = store.adapter(id)?.ok_or(AdapterError::NotFound(id))?;
    let dir = row_dir(data, &row)?;
    let (sha, _) = dir_stats(&dir)?;
    if sha != row.sha256 {
        return Err(AdapterError::State {
            id,
            state: row.state,
            why: format!("{} changed on disk (sha256 {sha}, recorded {})", dir.display(), row.sha256),
        });
    }
    let t = store.promote_adapter(id, reasons, keep, |v| row_dir(data, v).map(drop))?;
    Ok(remove_dirs(data, t))
}

/// Undo the last promotion: the active adapter becomes `rejected` (reason:
/// rolled back) and the newest `previous` becomes active again — or, when
/// there is none, the bare base model answers.
pub fn rollback(store: &mut Store, data: &DataDir, keep: usize) -> Result<Switch, AdapterError> {
    let why = json!({"rolled_back": true, "message": "rolled back: the previous adapter was restored"});
    let t = store.rollback_adapter(&why, keep, |v| row_dir(data, v).map(drop))?;
    Ok(remove_dirs(data, t))
}

/// Retire what lies beyond `keep` (its own transaction), then delete those directories.
pub fn apply_retention(store: &mut Store, data: &DataDir, keep: usize) -> Result<Switch, AdapterError> {
    let retired = store.retire_adapters(keep, |v| row_dir(data, v).map(drop))?;
    let active = store.active_adapter()?;
    Ok(remove_dirs(data, Transition { active, retired, ..Default::default() }))
}

/// Delete the directories of the rows a committed switch retired.
fn remove_dirs(data: &DataDir, t: Transition) -> Switch {
    let mut s = Switch { active: t.active, replaced: t.replaced, retired: t.retired, leftover_dirs: vec![] };
    // Vetted inside the transaction, so every retired row has a directory under adapters/.
    for d in s.retired.iter().filter_map(|r| row_dir(data, r).ok()) {
        match std::fs::remove_dir_all(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e, "could not remove a retired adapter directory");
                s.leftover_dirs.push(d);
            }
        }
    }
    for r in &mut s.retired {
        r.state = "retired".into();
    }
    s
}

/// Import a PEFT adapter directory trained elsewhere: read it, check every
/// tensor against the base's shapes (the error names the tensor, expected and
/// found shapes), write it as f32 into `adapters/imported-<sha12>/` (a
/// temporary directory renamed into place) and record it as `imported`.
pub fn import_peft(
    store: &mut Store,
    data: &DataDir,
    src: &Path,
    base: &BaseShapes,
    base_sha256: Option<&str>,
) -> Result<AdapterRow, AdapterError> {
    let w = peft::read_dir(src)?;
    w.check_against(base)?;
    let weights = peft::weights_bytes(&w)?;
    let sha = hex::encode(Sha256::digest(&weights));
    if let Some(existing) = store.adapters()?.into_iter().find(|r| r.sha256 == sha && r.state != "retired") {
        return Err(AdapterError::State {
            id: existing.id,
            state: existing.state,
            why: format!("the same weights are already in the registry ({})", existing.path),
        });
    }
    let src_cfg: serde_json::Value = std::fs::read_to_string(src.join(peft::CONFIG_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let base_name = src_cfg.get("base_model_name_or_path").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let name = format!("imported-{}", &sha[..12]);
    let adapters = data.adapters();
    let tmp = adapters.join(format!(".tmp-{name}"));
    let dest = adapters.join(&name);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| AdapterError::Io { path: p, source }
    };
    std::fs::create_dir_all(&adapters).map_err(io(&adapters))?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    peft::write_atomic(&tmp.join(peft::WEIGHTS_FILE), &weights)?;
    let cfg = serde_json::to_vec_pretty(&peft::config_json(&w, &base_name)).unwrap_or_default();
    peft::write_atomic(&tmp.join(peft::CONFIG_FILE), &cfg)?;
    if dest.exists() {
        // A directory left by a retired row or an interrupted import of the same weights.
        std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
    }
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    let (_, bytes) = dir_stats(&dest)?;
    let row = NewAdapter {
        state: "imported".into(),
        path: format!("adapters/{name}"),
        sha256: sha,
        bytes,
        base_sha256: base_sha256.map(str::to_string),
        rank: w.rank as i64,
        alpha: w.alpha,
        targets: w.modules().iter().map(|m| m.short.to_string()).collect(),
        data_snapshot: Some(json!({
            "imported_from": src.canonicalize().unwrap_or_else(|_| src.to_path_buf()),
            "base_model_name_or_path": base_name,
        })),
        ..Default::default()
    };
    let id = store.insert_adapter(&row)?;
    store.adapter(id)?.ok_or(AdapterError::NotFound(id))
}

/// Interchange formats of `warsha adapters export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Peft,
    Gguf,
}

/// The name of the GGUF file an export writes.
pub const GGUF_FILE: &str = "adapter_model.gguf";

/// Write adapter `id` into `out` (created): PEFT files or one llama.cpp GGUF.
/// The weights are checked against `base` first. Returns the files written.
pub fn export(
    store: &Store,
    data: &DataDir,
    id: i64,
    format: ExportFormat,
    out: &Path,
    base: &BaseShapes,
    base_name: &str,
) -> Result<Vec<PathBuf>, AdapterError> {
    let row = store.adapter(id)?.ok_or(AdapterError::NotFound(id))?;
    if row.state == "retired" {
        return Err(AdapterError::State { id, state: row.state, why: "its files were deleted".into() });
    }
    let w: LoraWeights = peft::read_dir(&row_dir(data, &row)?)?;
    w.check_against(base)?;
    std::fs::create_dir_all(out).map_err(|source| AdapterError::Io { path: out.to_path_buf(), source })?;
    match format {
        ExportFormat::Peft => {
            peft::write_dir(out, &w, base_name)?;
            Ok(vec![out.join(peft::WEIGHTS_FILE), out.join(peft::CONFIG_FILE)])
        }
        ExportFormat::Gguf => {
            let p = out.join(GGUF_FILE);
            gguf::write_file(&p, &w, base, &format!("warsha adapter {id}"))?;
            Ok(vec![p])
        }
    }
}
