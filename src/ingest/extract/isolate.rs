//! Running one extraction in a child process of the same binary
//! (`warsha __extract FILE KIND`): own process group, `RLIMIT_AS` address
//! space limit and no core dumps, set in the child before exec; a wall-clock
//! timeout after which the whole group (pdftotext included) is killed. The
//! child prints one JSON value, `{"Ok": Extracted}` or `{"Err": Reject}`;
//! anything else (a panic, a signal, an allocation failure) rejects the file
//! with what happened, and the caller carries on with the next one.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::Extracted;
use crate::config;
use crate::ingest::names::Kind;
use crate::ingest::reason::Reject;

const MIB: u64 = 1 << 20;

/// How extractions are run: which binary, for how long, with how much memory.
#[derive(Debug, Clone)]
pub struct Extractor {
    exe: PathBuf,
    timeout: Duration,
    memory_limit: u64,
    max_unpacked: u64,
    fault: Option<String>,
}

impl Extractor {
    /// `exe` is a warsha binary (the running one: `std::env::current_exe()`).
    pub fn new(exe: PathBuf, cfg: &config::Ingest) -> Self {
        let max_file = cfg.max_file_mib.saturating_mul(MIB);
        Self {
            exe,
            timeout: Duration::from_secs(cfg.extract_timeout_secs),
            // Room for the binary's own mappings plus a few copies of the
            // largest file's text (decoding, normalization, JSON output).
            memory_limit: (1024 * MIB).max(512 * MIB + max_file.saturating_mul(12)),
            // A DOCX's XML is a few times its text; beyond this it is a bomb.
            max_unpacked: (64 * MIB).max(max_file.saturating_mul(8)),
            fault: None,
        }
    }

    /// Arm a named failure point in the child (`extract-panic`,
    /// `extract-hang`, `extract-oom`): tests of the isolation itself.
    pub fn with_fault(mut self, name: &str) -> Self {
        self.fault = Some(name.to_string());
        self
    }

    pub fn with_memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = bytes;
        self
    }

    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }

    /// Extract `file` (a spool copy) as `kind` in a child process.
    pub fn run(&self, file: &Path, kind: Kind) -> Result<Extracted, Reject> {
        let limit = self.memory_limit;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("__extract")
            .arg(file)
            .arg(kind.as_str())
            .arg("--max-unpacked")
            .arg(self.max_unpacked.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A panic's message, not a backtrace, is what the reason should quote.
        cmd.env("RUST_BACKTRACE", "0");
        if let Some(f) = &self.fault {
            cmd.env("WARSHA_FAULT", f);
        }
        let limits = crate::sys::ChildLimits { address_space_bytes: limit };
        // SAFETY: apply_in_child makes only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || limits.apply_in_child());
        }
        let mut child = cmd.spawn().map_err(|e| Reject::Crashed { detail: format!("cannot start: {e}") })?;
        let pid = child.id();
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let out_thread = std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut v);
            }
            v
        });
        let err_thread = std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(s) = stderr.as_mut() {
                // Keep a bounded tail: a looping parser may print without end.
                let mut buf = [0u8; 8192];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    v.extend_from_slice(&buf[..n]);
                    if v.len() > 64 * 1024 {
                        v.drain(..v.len() - 16 * 1024);
                    }
                }
            }
            v
        });
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let st = child.wait();
            let _ = tx.send(());
            st
        });
        let timed_out = rx.recv_timeout(self.timeout).is_err();
        if timed_out {
            crate::sys::kill_process_group(pid);
        }
        let status = waiter.join().map_err(|_| Reject::Crashed { detail: "waiter thread".into() })?;
        // Descendants that outlived the child (pdftotext) go with the group.
        crate::sys::kill_process_group(pid);
        let out = out_thread.join().unwrap_or_default();
        let err = err_thread.join().unwrap_or_default();
        if timed_out {
            return Err(Reject::Timeout { secs: self.timeout.as_secs() });
        }
        let status = status.map_err(|e| Reject::Crashed { detail: e.to_string() })?;
        if status.success() {
            return match serde_json::from_slice::<Result<Extracted, Reject>>(&out) {
                Ok(r) => r,
                Err(e) => Err(Reject::Crashed { detail: format!("unreadable result: {e}") }),
            };
        }
        let err = String::from_utf8_lossy(&err);
        if err.contains("memory allocation")
            || err.contains("out of memory")
            || err.contains("Cannot allocate")
        {
            return Err(Reject::OutOfMemory { limit_mib: self.memory_limit / MIB });
        }
        // A panic prints "thread 'main' panicked at FILE:LINE:" then the message.
        let lines: Vec<&str> = err.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let last = match lines.iter().position(|l| l.contains("panicked at")) {
            Some(i) => lines.get(i + 1).copied().unwrap_or(lines[i]),
            None => lines.iter().rev().find(|l| !l.contains("RUST_BACKTRACE")).copied().unwrap_or(""),
        };
        let how = match (status.code(), status.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "stopped".to_string(),
        };
        let detail = if last.is_empty() { how } else { format!("{how}: {}", truncate(last, 300)) };
        Err(Reject::Crashed { detail })
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The child's side: extract and print the JSON result on stdout.
pub fn child_main(file: &Path, kind: &str, max_unpacked: u64) -> std::io::Result<()> {
    let res = match Kind::parse(kind) {
        Some(k) => super::extract(file, k, super::Limits { max_unpacked }),
        None => Err(Reject::Unsupported { ext: kind.to_string() }),
    };
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    serde_json::to_writer(&mut w, &res).map_err(std::io::Error::other)?;
    std::io::Write::flush(&mut w)
}
