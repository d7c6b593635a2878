//! Who is at the other end of the socket: SO_PEERCRED, and whether that
//! user may use the service (root, the service's own user, members of the
//! configured group). The system calls themselves are in `crate::sys`.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

pub fn peer_of(s: &UnixStream) -> std::io::Result<Peer> {
    let (pid, uid, gid) = crate::sys::peer_credentials(s.as_fd())?;
    Ok(Peer { pid, uid, gid })
}

/// The gid of a group name, when the group exists.
pub fn group_gid(name: &str) -> Option<u32> {
    crate::sys::group_id(name)
}

pub fn own_uid() -> u32 {
    crate::sys::effective_uid()
}

/// Whether `peer` may use the service. Supplementary groups are read from
/// /proc of the connecting process (its credentials at connect time).
pub fn allowed(peer: &Peer, gid: Option<u32>) -> bool {
    if peer.uid == 0 || peer.uid == own_uid() {
        return true;
    }
    let Some(gid) = gid else { return false };
    if peer.gid == gid {
        return true;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", peer.pid)).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse::<u32>().ok() == Some(gid)))
}

/// Give the socket to `gid` (keeping the owner).
pub fn chown_group(path: &Path, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, None, Some(gid))
}
