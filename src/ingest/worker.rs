//! The ingest worker: owns the pipeline (and so the store), takes hints from
//! the watcher, settles paths and does one unit of work per [`Worker::tick`].
//! The long-running service calls `tick` in a loop on its own thread (see
//! [`Worker::run`]); `warsha ingest` runs the same worker until the drop
//! folder is drained ([`Worker::drain`]).

use std::collections::VecDeque;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pipeline::{Candidate, Origin, Outcome, Pipeline, State};
use super::settle::Settler;
use super::IngestError;
use crate::store::Level;

/// What the watcher tells the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Something changed at this path (file or folder).
    Path(PathBuf),
    /// Events may have been lost: look at everything.
    Rescan,
    /// The drop folder disappeared (unplugged, unmounted).
    FolderGone,
    /// The drop folder is back.
    FolderBack,
}

/// The result of one unit of work.
#[derive(Debug, Clone, PartialEq)]
pub enum Tick {
    /// A file reached its recorded state.
    Did(Outcome),
    /// Files are settling; the next one is due in this long.
    Waiting(Duration),
    /// Nothing to do until a hint arrives.
    Idle,
    /// The stop flag is set.
    Stopped,
}

pub struct Worker {
    pipeline: Pipeline,
    hints: Option<Receiver<Hint>>,
    stop: Arc<AtomicBool>,
    settler: Settler,
    resume_pending: bool,
    scan_pending: bool,
    /// Folders to walk again: files created in a new folder before the
    /// watch on it was set up raise no event of their own.
    rewalk: Vec<(PathBuf, Instant)>,
    done: VecDeque<Outcome>,
    /// The settled file whose job is running (for a caller that catches a panic).
    in_hand: Option<PathBuf>,
}

impl Worker {
    /// A worker that starts by finishing open jobs and scanning the drop folder.
    pub fn new(pipeline: Pipeline, hints: Option<Receiver<Hint>>, stop: Arc<AtomicBool>) -> Self {
        let delay = Duration::from_secs(pipeline.config().stability_secs);
        Self::with_delay(pipeline, hints, stop, delay)
    }

    /// As [`Worker::new`] with another stability delay (tests, benchmarks).
    pub fn with_delay(
        pipeline: Pipeline,
        hints: Option<Receiver<Hint>>,
        stop: Arc<AtomicBool>,
        delay: Duration,
    ) -> Self {
        Self {
            pipeline,
            hints,
            stop,
            settler: Settler::new(delay),
            resume_pending: true,
            scan_pending: true,
            rewalk: Vec::new(),
            done: VecDeque::new(),
            in_hand: None,
        }
    }

    pub fn pipeline(&mut self) -> &mut Pipeline {
        &mut self.pipeline
    }

    /// Files noticed but not settled yet.
    pub fn settling(&self) -> Vec<PathBuf> {
        self.settler.paths().cloned().collect()
    }

    /// One unit of work.
    pub fn tick(&mut self) -> Result<Tick, IngestError> {
        if self.stop.load(Ordering::Relaxed) {
            return Ok(Tick::Stopped);
        }
        if let Some(o) = self.done.pop_front() {
            return Ok(Tick::Did(o));
        }
        if self.resume_pending {
            self.resume_pending = false;
            let resumed = self.pipeline.resume()?;
            if !resumed.is_empty() {
                tracing::info!(jobs = resumed.len(), "finished jobs left open by an earlier run");
            }
            self.done.extend(resumed);
            if let Some(o) = self.done.pop_front() {
                return Ok(Tick::Did(o));
            }
        }
        while let Some(h) = self.hints.as_ref().and_then(|rx| rx.try_recv().ok()) {
            self.hint(h)?;
        }
        if self.scan_pending {
            self.scan_pending = false;
            let root = self.pipeline.drop_root().to_path_buf();
            if root.is_dir() {
                self.walk_dir(&root)?;
            }
            if let Some(o) = self.done.pop_front() {
                return Ok(Tick::Did(o));
            }
        }
        let now = Instant::now();
        if self.rewalk.iter().any(|(_, t)| *t <= now) {
            let (due, later): (Vec<_>, Vec<_>) = self.rewalk.drain(..).partition(|(_, t)| *t <= now);
            self.rewalk = later;
            for (dir, _) in due {
                self.walk_dir(&dir)?;
            }
        }
        if let Some((path, settled)) = self.settler.ready(now) {
            let Some(c) = self.candidate(&path) else { return Ok(Tick::Waiting(Duration::ZERO)) };
            self.in_hand = Some(path.clone());
            let taken = self.pipeline.take(&c, Some(settled));
            self.in_hand = None;
            return match taken? {
                Some(o) if o.state == State::Waiting => {
                    self.settler.restart(path, Instant::now());
                    Ok(Tick::Waiting(Duration::ZERO))
                }
                Some(o) => Ok(Tick::Did(o)),
                None => Ok(Tick::Waiting(Duration::ZERO)),
            };
        }
        if let Some(o) = self.done.pop_front() {
            return Ok(Tick::Did(o));
        }
        let next = self.settler.next_due().into_iter().chain(self.rewalk.iter().map(|(_, t)| *t)).min();
        match next {
            Some(t) => Ok(Tick::Waiting(t.saturating_duration_since(now))),
            None => Ok(Tick::Idle),
        }
    }

    /// The file whose job a `tick` that did not return (it panicked) was
    /// running; taking it also drops it from the settling set.
    pub fn abandon_in_hand(&mut self) -> Option<(PathBuf, String)> {
        let path = self.in_hand.take()?;
        self.settler.forget(&path);
        let rel = rel_string(self.pipeline.drop_root(), &path);
        Some((path, rel))
    }

    /// Block for at most `max` until a hint arrives (or the stop flag is set).
    pub fn wait(&mut self, max: Duration) -> Result<(), IngestError> {
        let Some(rx) = self.hints.as_ref() else {
            std::thread::sleep(max);
            return Ok(());
        };
        // Short slices so that the stop flag is honoured promptly.
        let until = Instant::now() + max;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(h) => return self.hint(h),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(left.min(Duration::from_millis(200)));
                }
            }
        }
    }

    /// The service loop: tick until stopped; `on` sees every outcome. An
    /// error (a move refused by the filesystem, a full disk) is recorded and
    /// retried with a growing pause; it never ends the loop, and the file's
    /// row says where its job stopped.
    pub fn run(mut self, mut on: impl FnMut(&Outcome)) -> Result<(), IngestError> {
        let mut failures = 0u32;
        loop {
            let step = self.tick().and_then(|t| {
                match t {
                    Tick::Stopped => return Ok(true),
                    Tick::Did(o) => on(&o),
                    Tick::Waiting(d) => self.wait(d)?,
                    Tick::Idle => self.wait(Duration::from_secs(1))?,
                }
                Ok(false)
            });
            match step {
                Ok(true) => return Ok(()),
                Ok(false) => failures = 0,
                Err(e) => {
                    failures += 1;
                    self.record_failure(&e);
                    self.wait(Duration::from_secs(1 << failures.min(5)))?;
                }
            }
        }
    }

    fn record_failure(&mut self, e: &IngestError) {
        let msg = format!("ingest step failed (retried later): {e}");
        if self.pipeline.store().event(Level::Error, "ingest", &msg, None).is_err() {
            tracing::error!("{msg}");
        }
        // The file stays where it is (its row, if any, stays open): the next
        // rescan or start takes it up again.
    }

    /// One pass: finish open jobs, take everything in the drop folder that
    /// settles within `bound`, and return what was still changing then.
    pub fn drain(
        &mut self,
        bound: Duration,
        mut on: impl FnMut(&Outcome),
    ) -> Result<Vec<Outcome>, IngestError> {
        let start = Instant::now();
        let mut failures = 0;
        loop {
            let t = match self.tick() {
                Ok(t) => {
                    failures = 0;
                    t
                }
                // One file's trouble must not end the pass for the others;
                // a store that keeps failing does.
                Err(e) if failures < 5 => {
                    failures += 1;
                    self.record_failure(&e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match t {
                Tick::Did(o) => on(&o),
                Tick::Stopped | Tick::Idle => break,
                Tick::Waiting(d) => {
                    let left = bound.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::sleep(d.min(left));
                }
            }
        }
        let root = self.pipeline.drop_root().to_path_buf();
        let mut left: Vec<Outcome> = self
            .settler
            .paths()
            .map(|p| Outcome {
                path: rel_string(&root, p),
                state: State::Waiting,
                document_id: None,
                chunks: 0,
                reason: Some(format!("still changing after {} s; left for the next pass", bound.as_secs())),
            })
            .collect();
        left.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(left)
    }

    fn hint(&mut self, h: Hint) -> Result<(), IngestError> {
        match h {
            Hint::Rescan => self.scan_pending = true,
            Hint::Path(p) => self.look_at(&p)?,
            Hint::FolderGone => {
                let root = self.pipeline.drop_root().display().to_string();
                self.pipeline.store().event(
                    Level::Warn,
                    "ingest",
                    &format!("drop folder {root} is gone; waiting for it to return"),
                    None,
                )?;
                let gone: Vec<PathBuf> = self.settler.paths().cloned().collect();
                for p in gone {
                    self.settler.forget(&p);
                }
            }
            Hint::FolderBack => {
                let root = self.pipeline.drop_root().display().to_string();
                self.pipeline.store().event(
                    Level::Info,
                    "ingest",
                    &format!("drop folder {root} is back"),
                    None,
                )?;
                self.resume_pending = true;
                self.scan_pending = true;
            }
        }
        Ok(())
    }

    /// Note a path (a file, or every file under a folder) for settling.
    fn look_at(&mut self, path: &Path) -> Result<(), IngestError> {
        let root = self.pipeline.drop_root().to_path_buf();
        let Ok(rel) = path.strip_prefix(&root) else { return Ok(()) };
        if rel.as_os_str().is_empty() {
            // The folder itself: coalesce into one scan.
            self.scan_pending = true;
            return Ok(());
        }
        if self.skipped(rel) {
            return Ok(());
        }
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            self.settler.forget(path);
            return Ok(());
        };
        if meta.is_dir() {
            self.walk_dir(path)?;
            if path != root {
                let again = Instant::now() + self.settler.delay().max(Duration::from_millis(200));
                self.rewalk.push((path.to_path_buf(), again));
            }
        } else {
            self.note_file(path.to_path_buf())?;
        }
        Ok(())
    }

    fn walk_dir(&mut self, dir: &Path) -> Result<(), IngestError> {
        let root = self.pipeline.drop_root().to_path_buf();
        let mut files = Vec::new();
        walk(dir, &mut |p, is_dir| is_dir && self.skipped(p.strip_prefix(&root).unwrap_or(p)), &mut files);
        for f in files {
            self.note_file(f)?;
        }
        Ok(())
    }

    fn note_file(&mut self, path: PathBuf) -> Result<(), IngestError> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(pattern) = self.pipeline.ignore().file_match(&name) {
            if let Some(c) = self.candidate(&path) {
                if let Some(o) = self.pipeline.record_ignored(&c, &pattern)? {
                    self.done.push_back(o);
                }
            }
            return Ok(());
        }
        self.settler.note(path, Instant::now());
        Ok(())
    }

    /// Folders the worker never enters: processed/, rejected/ (top level) and
    /// ignored folder names anywhere.
    fn skipped(&self, rel: &Path) -> bool {
        let cfg = self.pipeline.config();
        let mut comps = rel.components().filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy()),
            _ => None,
        });
        let Some(first) = comps.next() else { return false };
        if first == cfg.processed_dir.as_str() || first == cfg.rejected_dir.as_str() {
            return true;
        }
        let ignore = self.pipeline.ignore();
        std::iter::once(first).chain(comps).any(|c| ignore.dir_matches(&c))
    }

    fn candidate(&self, path: &Path) -> Option<Candidate> {
        let root = self.pipeline.drop_root();
        let rel = path.strip_prefix(root).ok()?;
        Some(Candidate {
            abs: path.to_path_buf(),
            rel: rel.to_string_lossy().into_owned(),
            origin: Origin::Drop,
        })
    }
}

fn rel_string(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).to_string_lossy().into_owned()
}

/// Every non-directory entry under `dir` (symlinks included, never
/// followed), skipping folders for which `skip(path, true)` holds.
pub fn walk(dir: &Path, skip: &mut dyn FnMut(&Path, bool) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if !skip(&p, true) {
                walk(&p, skip, out);
            }
        } else {
            out.push(p);
        }
    }
}
