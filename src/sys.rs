//! The operating-system calls the crate makes beyond `std`, each behind a
//! safe, typed function: resource usage and peak memory, the file-system
//! type under a path, resource limits and process groups for isolated
//! children, a rename that never replaces, and the local time of day.
//!
//! This is the one module that calls `libc` (the CUDA driver's own bindings
//! aside); it knows nothing of what the callers do with the answers.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Whose resource usage to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// This process (every thread).
    Process,
    /// Children this process has waited for.
    Children,
}

/// CPU seconds (user + system) and peak resident set of one side of [`Usage`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResourceUsage {
    pub cpu_seconds: f64,
    /// Largest resident set, in KiB (for children: the largest single child).
    pub max_rss_kib: u64,
}

/// getrusage(2); zeros when the call fails.
pub fn resource_usage(who: Usage) -> ResourceUsage {
    let who = match who {
        Usage::Process => libc::RUSAGE_SELF,
        Usage::Children => libc::RUSAGE_CHILDREN,
    };
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return ResourceUsage::default();
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    ResourceUsage {
        cpu_seconds: tv(ru.ru_utime) + tv(ru.ru_stime),
        max_rss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
    }
}

/// The process's peak resident set (VmHWM) in bytes, Linux only.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

/// The process's current resident set (VmRSS) in bytes.
pub fn rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|k| k * 1024)
}

fn proc_status_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The `f_type` magic of the file system holding `path` (statfs(2)), as an
/// unsigned 32-bit value; None when the path cannot be read.
pub fn filesystem_magic(path: &Path) -> Option<u32> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills the zeroed struct for a valid, NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    // f_type is signed on some targets: the magic is its low 32 bits.
    #[allow(clippy::unnecessary_cast)]
    Some((st.f_type as i64 & 0xFFFF_FFFF) as u32)
}

/// Limits for a child, applied between fork and exec by
/// [`ChildLimits::apply_in_child`]: its own process group (so the whole tree
/// can be killed at once), no core dumps, and an address-space ceiling.
#[derive(Debug, Clone, Copy)]
pub struct ChildLimits {
    pub address_space_bytes: u64,
}

impl ChildLimits {
    /// Only async-signal-safe calls, no allocation: meant for
    /// `CommandExt::pre_exec`.
    pub fn apply_in_child(&self) -> io::Result<()> {
        // SAFETY: setpgid and setrlimit on the calling process with structs we own.
        unsafe {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            let core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // No core file is a nicety: a failure here does not stop the child.
            libc::setrlimit(libc::RLIMIT_CORE, &core);
            let lim = self.address_space_bytes as libc::rlim_t;
            let lim = libc::rlimit { rlim_cur: lim, rlim_max: lim };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// SIGKILL every process in the group led by `pid` (a child started with
/// [`ChildLimits`]). A group that is already gone is not an error.
pub fn kill_process_group(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) on a negative pid addresses that process group only.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// Open `path` for reading without following a final symlink and without
/// blocking on a FIFO or device (O_NOFOLLOW | O_NONBLOCK).
pub fn open_no_follow(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)
}

/// rename(2) that fails with `AlreadyExists` instead of replacing: renameat2
/// RENAME_NOREPLACE, or link + unlink where the file system lacks it.
pub fn rename_noreplace(src: &Path, dest: &Path) -> io::Result<()> {
    let s = CString::new(src.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let d = CString::new(dest.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated paths.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, s.as_ptr(), libc::AT_FDCWD, d.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
            match std::fs::hard_link(src, dest) {
                Ok(()) => std::fs::remove_file(src),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
                Err(_) if std::fs::symlink_metadata(dest).is_err() => std::fs::rename(src, dest),
                Err(_) => Err(io::ErrorKind::AlreadyExists.into()),
            }
        }
        _ => Err(err),
    }
}

/// Seconds since local midnight in the system time zone (localtime_r); UTC
/// when the zone cannot be read.
pub fn local_seconds_of_day() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r writes into the tm we own; null means failure.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return t.rem_euclid(86_400) as u32;
    }
    (tm.tm_hour as u32 * 3600 + tm.tm_min as u32 * 60 + tm.tm_sec as u32) % 86_400
}

/// The process id, user id and group id of a Unix socket's peer (SO_PEERCRED),
/// as the kernel recorded them when it connected.
pub fn peer_credentials(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<(i32, u32, u32)> {
    use std::os::fd::AsRawFd;
    // SAFETY: getsockopt writes at most `len` bytes into the zeroed ucred we own.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid, cred.gid))
}

/// The gid of a group name, when the group exists.
pub fn group_id(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: getgrnam_r fills grp from buf, both owned here; a too-small buf reports ERANGE.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_memory_figures_are_read() {
        let u = resource_usage(Usage::Process);
        assert!(u.max_rss_kib > 0);
        assert!(u.cpu_seconds >= 0.0);
        assert!(peak_rss_bytes().unwrap() >= rss_bytes().unwrap() / 2);
        assert!(local_seconds_of_day() < 86_400);
    }

    #[test]
    fn filesystem_magic_reads_a_real_path_and_refuses_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(filesystem_magic(dir.path()).is_some());
        assert!(filesystem_magic(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn rename_noreplace_refuses_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        std::fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert!(!a.exists());
    }

    #[test]
    fn open_no_follow_refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_no_follow(&target).is_ok());
        assert!(open_no_follow(&link).is_err());
    }
}
