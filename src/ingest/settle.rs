//! Settling: a file is taken only when its size and mtime stayed the same
//! over the stability delay. Each path is looked at when it is first noted
//! and again once the delay has passed; any change restarts its clock. The
//! mtime may be one a copy tool preserved (old), so its age alone proves
//! nothing: two looks are always needed. FAT/exFAT mtimes have 2 s
//! resolution, which the default 5 s delay covers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::pipeline::mtime_ns;

#[derive(Debug, Clone, Copy)]
struct Look {
    size: u64,
    mtime: i64,
    since: Instant,
    next: Instant,
}

#[derive(Debug)]
pub struct Settler {
    delay: Duration,
    looks: HashMap<PathBuf, Look>,
}

impl Settler {
    pub fn new(delay: Duration) -> Self {
        Self { delay, looks: HashMap::new() }
    }

    fn stat(path: &Path) -> Option<(u64, i64)> {
        std::fs::symlink_metadata(path).ok().map(|m| (m.len(), mtime_ns(&m)))
    }

    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Start watching `path` (a no-op when it is already being watched).
    pub fn note(&mut self, path: PathBuf, now: Instant) {
        if self.looks.contains_key(&path) {
            return;
        }
        if let Some((size, mtime)) = Self::stat(&path) {
            self.looks.insert(path, Look { size, mtime, since: now, next: now + self.delay });
        }
    }

    /// Restart a path's clock (it changed while it was being copied).
    pub fn restart(&mut self, path: PathBuf, now: Instant) {
        self.looks.remove(&path);
        self.note(path, now);
    }

    pub fn forget(&mut self, path: &Path) {
        self.looks.remove(path);
    }

    /// A path whose size and mtime held still for the delay, with them;
    /// re-looks at paths that are due and restarts those that changed.
    pub fn ready(&mut self, now: Instant) -> Option<(PathBuf, (u64, i64))> {
        let due: Vec<PathBuf> =
            self.looks.iter().filter(|(_, l)| l.next <= now).map(|(p, _)| p.clone()).collect();
        for p in due {
            let Some((size, mtime)) = Self::stat(&p) else {
                self.looks.remove(&p);
                continue;
            };
            let Some(l) = self.looks.get_mut(&p) else { continue };
            if (size, mtime) == (l.size, l.mtime) && now.duration_since(l.since) >= self.delay {
                self.looks.remove(&p);
                return Some((p, (size, mtime)));
            }
            if (size, mtime) != (l.size, l.mtime) {
                *l = Look { size, mtime, since: now, next: now + self.delay };
            } else {
                l.next = l.since + self.delay;
            }
        }
        None
    }

    /// When the next path is due for a look.
    pub fn next_due(&self) -> Option<Instant> {
        self.looks.values().map(|l| l.next).min()
    }

    pub fn len(&self) -> usize {
        self.looks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.looks.is_empty()
    }

    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.looks.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_still_growing_is_not_ready() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.txt");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(b"part one").unwrap();
        let delay = Duration::from_millis(300);
        let mut s = Settler::new(delay);
        let t0 = Instant::now();
        s.note(p.clone(), t0);
        assert!(s.ready(t0).is_none(), "not before the delay");
        f.write_all(b" part two").unwrap();
        f.sync_all().unwrap();
        assert!(s.ready(t0 + delay).is_none(), "changed: clock restarts");
        let (got, (size, _)) = s.ready(t0 + delay * 2 + Duration::from_millis(1)).unwrap();
        assert_eq!(got, p);
        assert_eq!(size, 17);
        assert!(s.is_empty());
    }
}
