//! Resumable training state on disk: one safetensors file per checkpoint
//! (`checkpoints/<run>/step-000010.safetensors`) holding the LoRA weights, the
//! AdamW moments and, in its metadata, the JSON [`TrainState`] (step, schedule,
//! data position, RNG, loss scaler, the memory plan in force).
//!
//! One file means one atomic rename: it is written to a temporary name,
//! fsynced, renamed, and the directory fsynced, so a power cut leaves either
//! the previous checkpoint or the new one, never half of one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::dataset::Position;
use super::optim::AdamWState;
use super::scaler::LossScaler;
use super::schedule::Schedule;
use super::TrainError;

/// Bumped when the layout changes; older files are refused with a clear error.
pub const FORMAT_VERSION: u32 = 1;
const STATE_KEY: &str = "warsha.train_state";
const EXT: &str = "safetensors";

/// The settings the memory planner chose (and any out-of-memory back-off since).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub seq_len: usize,
    pub micro_batch: usize,
    pub grad_accum: usize,
    pub recompute: bool,
}

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub version: u32,
    pub run_id: i64,
    /// Optimizer steps completed.
    pub step: usize,
    pub schedule: Schedule,
    pub position: Position,
    /// The adapter's seed (initialization and dropout masks).
    pub seed: u64,
    /// Training passes the adapter has counted: its dropout stream position.
    pub dropout_calls: u64,
    pub scaler: LossScaler,
    pub shape: Shape,
    pub adam_t: u64,
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub state: TrainState,
    pub adapter: Vec<(String, Tensor)>,
    pub adam: AdamWState,
}

/// Write `bytes` to `path` atomically: temp file, fsync, rename, fsync directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| TrainError::Io { path: p, source }
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(())
}

fn file_name(step: usize) -> String {
    format!("step-{step:06}.{EXT}")
}

fn step_of(path: &Path) -> Option<usize> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("step-")?.strip_suffix(&format!(".{EXT}"))?.parse().ok()
}

/// Checkpoint files in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<(usize, PathBuf)>, TrainError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(TrainError::Io { path: dir.to_path_buf(), source }),
    };
    let mut out: Vec<(usize, PathBuf)> =
        rd.filter_map(|e| e.ok().map(|e| e.path())).filter_map(|p| step_of(&p).map(|s| (s, p))).collect();
    out.sort();
    Ok(out)
}

/// Save a checkpoint and keep only the newest `keep` (older ones and stray
/// temporary files are removed after the new one is durable).
pub fn save(
    dir: &Path,
    state: &TrainState,
    adapter: &[(String, Tensor)],
    adam: &AdamWState,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let path = dir.join(file_name(state.step));
    let fmt = |reason: String| TrainError::Checkpoint { path: path.clone(), reason };
    let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(adapter.len() * 3);
    for (name, t) in adapter {
        tensors.push((format!("adapter/{name}"), t.to_device(&Device::Cpu)?));
    }
    for (name, m, v) in &adam.moments {
        tensors.push((format!("adam_m/{name}"), m.to_device(&Device::Cpu)?));
        tensors.push((format!("adam_v/{name}"), v.to_device(&Device::Cpu)?));
    }
    let json = serde_json::to_string(state).map_err(|e| fmt(e.to_string()))?;
    let meta: HashMap<String, String> = [(STATE_KEY.to_string(), json)].into();
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
        .map_err(|e| fmt(e.to_string()))?;
    write_atomic(&path, &bytes)?;
    prune(dir, keep.max(1))?;
    Ok(path)
}

fn prune(dir: &Path, keep: usize) -> Result<(), TrainError> {
    let all = list(dir)?;
    for (_, p) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_file(p).map_err(|source| TrainError::Io { path: p.clone(), source })?;
    }
    // Temporary files of an interrupted write: never a valid checkpoint.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with('.') && n.contains(".tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Read a checkpoint; tensors land on `device`.
pub fn load(path: &Path, device: &Device) -> Result<Loaded, TrainError> {
    let fmt = |reason: String| TrainError::Checkpoint { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| fmt(e.to_string()))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| fmt(format!("no {STATE_KEY} metadata: not a warsha checkpoint")))?;
    let state: TrainState = serde_json::from_str(json).map_err(|e| fmt(e.to_string()))?;
    if state.version != FORMAT_VERSION {
        return Err(fmt(format!("format version {} (this warsha reads {FORMAT_VERSION})", state.version)));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
    let mut adapter = Vec::new();
    let mut m_by: HashMap<String, Tensor> = HashMap::new();
    let mut v_by: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in tensors {
        if let Some(n) = name.strip_prefix("adapter/") {
            adapter.push((n.to_string(), t));
        } else if let Some(n) = name.strip_prefix("adam_m/") {
            m_by.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix("adam_v/") {
            v_by.insert(n.to_string(), t);
        } else {
            return Err(fmt(format!("unexpected tensor {name}")));
        }
    }
    adapter.sort_by(|a, b| a.0.cmp(&b.0));
    let mut moments = Vec::with_capacity(m_by.len());
    let mut names: Vec<String> = m_by.keys().cloned().collect();
    names.sort();
    for n in names {
        let m = m_by.remove(&n).ok_or_else(|| fmt(format!("no first moment for {n}")))?;
        let v = v_by.remove(&n).ok_or_else(|| fmt(format!("no second moment for {n}")))?;
        moments.push((n, m, v));
    }
    if let Some(n) = v_by.keys().next() {
        return Err(fmt(format!("second moment for {n} without a first")));
    }
    let adam = AdamWState { t: state.adam_t, moments };
    Ok(Loaded { path: path.to_path_buf(), state, adapter, adam })
}

/// The newest checkpoint in `dir` that reads back whole (a damaged newest
/// file falls back to the one before it, with a warning).
pub fn load_latest(dir: &Path, device: &Device) -> Result<Option<Loaded>, TrainError> {
    for (_, p) in list(dir)?.into_iter().rev() {
        match load(&p, device) {
            Ok(l) => return Ok(Some(l)),
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "skipping unreadable checkpoint"),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn state(step: usize) -> TrainState {
        TrainState {
            version: FORMAT_VERSION,
            run_id: 3,
            step,
            schedule: Schedule::new(1e-3, 2, 10),
            position: Position { epoch: 1, index: 5 },
            seed: 9,
            dropout_calls: 17,
            scaler: LossScaler::dynamic(),
            shape: Shape { seq_len: 64, micro_batch: 2, grad_accum: 4, recompute: true },
            adam_t: step as u64,
        }
    }

    #[test]
    fn roundtrip_keeps_tensors_and_state_and_prunes_old() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 6.0, &dev).unwrap().reshape((2, 3)).unwrap();
        let adam =
            AdamWState { t: 4, moments: vec![("x".into(), (&a * 0.5).unwrap(), (&a * 0.25).unwrap())] };
        for step in [2, 4, 6] {
            save(dir.path(), &state(step), &[("x".into(), a.clone())], &adam, 2).unwrap();
        }
        let steps: Vec<usize> = list(dir.path()).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![4, 6]);
        let l = load_latest(dir.path(), &dev).unwrap().unwrap();
        assert_eq!(l.state, state(6));
        assert_eq!(l.adapter[0].0, "x");
        assert_eq!(l.adapter[0].1.to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        assert_eq!(
            l.adam.moments[0].2.to_vec2::<f32>().unwrap(),
            (&a * 0.25).unwrap().to_vec2::<f32>().unwrap()
        );
        assert_eq!(l.adam.moments[0].1.dtype(), DType::F32);
    }

    #[test]
    fn truncated_newest_falls_back_to_previous() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let a = Tensor::ones((4,), DType::F32, &dev).unwrap();
        let adam = AdamWState { t: 1, moments: vec![("x".into(), a.clone(), a.clone())] };
        save(dir.path(), &state(1), &[("x".into(), a.clone())], &adam, 3).unwrap();
        let p2 = save(dir.path(), &state(2), &[("x".into(), a.clone())], &adam, 3).unwrap();
        let bytes = std::fs::read(&p2).unwrap();
        std::fs::write(&p2, &bytes[..bytes.len() / 2]).unwrap();
        let l = load_latest(dir.path(), &dev).unwrap().unwrap();
        assert_eq!(l.state.step, 1);
        assert!(load(&p2, &dev).is_err());
    }

    #[test]
    fn foreign_safetensors_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("step-000001.safetensors");
        let t = Tensor::ones((2,), DType::F32, &Device::Cpu).unwrap();
        let bytes = safetensors::serialize([("w", &t)], None).unwrap();
        std::fs::write(&p, bytes).unwrap();
        let e = load(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("not a warsha checkpoint") && e.contains("step-000001"), "{e}");
        assert!(load_latest(dir.path(), &Device::Cpu).unwrap().is_none());
    }
}
