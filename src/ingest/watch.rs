//! The watcher: a thread that turns filesystem events on the drop folder
//! into [`Hint`]s for the worker. inotify is blind on network and FUSE
//! mounts and loses events when its queue overflows, so events are only
//! hints: the worker also scans at start, on every overflow (`Rescan`), and
//! every `rescan_secs`; on nfs/cifs/smb/fuse (by `statfs` f_type) or with
//! `force_polling` a polling watcher replaces inotify. A drop folder that
//! disappears is reported, retried every `poll_secs`, and watched again when
//! it returns.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{
    Config as NotifyConfig, EventKind, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher as _,
};

use super::worker::Hint;
use crate::config;

/// A running watcher thread.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How the folder is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Events,
    Polling,
}

impl Watcher {
    /// Start watching `cfg.drop_folder`, sending hints on `tx`. The thread
    /// ends when `stop` is set, [`Watcher::stop`] is called, or `tx` closes.
    pub fn spawn(cfg: &config::Ingest, tx: Sender<Hint>, stop: Arc<AtomicBool>) -> std::io::Result<Self> {
        let cfg = cfg.clone();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("warsha-watch".into())
            .spawn(move || watch_loop(&cfg, &tx, &flag))?;
        Ok(Self { stop, thread: Some(thread) })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Filesystems where inotify sees nothing of what other machines write.
pub fn needs_polling(path: &Path) -> bool {
    const NFS: i64 = 0x6969;
    const SMB: i64 = 0x517B;
    const CIFS: i64 = 0xFF53_4D42;
    const SMB2: i64 = 0xFE53_4D42;
    const FUSE: i64 = 0x6573_5546;
    const V9FS: i64 = 0x0102_1997;
    let Some(t) = crate::sys::filesystem_magic(path).map(i64::from) else { return false };
    [NFS, SMB, CIFS, SMB2, FUSE, V9FS].contains(&t)
}

/// Events that can mean a new or changed file. Reads are not: the worker's
/// own scans and copies raise them, and hinting on them would loop.
fn worth_a_look(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Any | EventKind::Other => true,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Remove(_) => false,
    }
}

/// Held only to keep the watch alive: dropping it stops notify's thread.
#[allow(dead_code)]
enum Active {
    Events(RecommendedWatcher),
    Polling(PollWatcher),
}

fn start(cfg: &config::Ingest, tx: &Sender<Hint>) -> Result<(Active, Mode), notify::Error> {
    let root = cfg.drop_folder.clone();
    let txe = tx.clone();
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(ev) if ev.need_rescan() => {
            let _ = txe.send(Hint::Rescan);
        }
        Ok(ev) if worth_a_look(&ev.kind) => {
            for p in ev.paths {
                let _ = txe.send(Hint::Path(p));
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "watch error; rescanning");
            let _ = txe.send(Hint::Rescan);
        }
    };
    if cfg.force_polling || needs_polling(&root) {
        let nc = NotifyConfig::default().with_poll_interval(Duration::from_secs(cfg.poll_secs));
        let mut w = PollWatcher::new(handler, nc)?;
        w.watch(&root, RecursiveMode::Recursive)?;
        Ok((Active::Polling(w), Mode::Polling))
    } else {
        let mut w = RecommendedWatcher::new(handler, NotifyConfig::default())?;
        w.watch(&root, RecursiveMode::Recursive)?;
        Ok((Active::Events(w), Mode::Events))
    }
}

/// (device, inode) of the folder: a remount shows up as a different one.
fn identity(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
}

fn watch_loop(cfg: &config::Ingest, tx: &Sender<Hint>, stop: &AtomicBool) {
    let root: PathBuf = cfg.drop_folder.clone();
    let poll = Duration::from_secs(cfg.poll_secs);
    let rescan = Duration::from_secs(cfg.rescan_secs);
    let mut active: Option<(Active, (u64, u64))> = None;
    let mut reported_gone = false;
    let mut last_check = Instant::now();
    let mut last_rescan = Instant::now();
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if active.is_none() && (first || now.duration_since(last_check) >= poll) {
            first = false;
            last_check = now;
            match identity(&root) {
                Some(id) => match start(cfg, tx) {
                    Ok((w, mode)) => {
                        tracing::info!(folder = %root.display(), ?mode, "watching the drop folder");
                        active = Some((w, id));
                        last_rescan = now;
                        let back = if reported_gone { Hint::FolderBack } else { Hint::Rescan };
                        reported_gone = false;
                        if tx.send(back).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(folder = %root.display(), error = %e, "cannot watch; retrying"),
                },
                None if !reported_gone => {
                    tracing::warn!(folder = %root.display(), "drop folder missing; retrying");
                    reported_gone = true;
                    if tx.send(Hint::FolderGone).is_err() {
                        return;
                    }
                }
                None => {}
            }
        } else if let Some((_, id)) = &active {
            if now.duration_since(last_check) >= poll.min(Duration::from_secs(2)) {
                last_check = now;
                if identity(&root) != Some(*id) {
                    tracing::warn!(folder = %root.display(), "drop folder vanished; retrying");
                    active = None;
                    reported_gone = true;
                    if tx.send(Hint::FolderGone).is_err() {
                        return;
                    }
                    continue;
                }
            }
            if now.duration_since(last_rescan) >= rescan {
                last_rescan = now;
                if tx.send(Hint::Rescan).is_err() {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Dropping the notify watcher ends its own thread.
    drop(active);
}

/// A channel pair for [`Watcher::spawn`] and the worker.
pub fn channel() -> (Sender<Hint>, mpsc::Receiver<Hint>) {
    mpsc::channel()
}
