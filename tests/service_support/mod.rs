//! A real `warsha serve` process on a temp data dir, with a NOTIFY_SOCKET
//! listener and socket clients, for the service tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The real test model; a missing model fails under CI and skips elsewhere.
pub fn model() -> Option<PathBuf> {
    let p = std::env::var_os("WARSHA_TEST_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.cache/warsha/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and no model at {} (WARSHA_TEST_GGUF)",
        p.display()
    );
    eprintln!("skip: no model at {} (set WARSHA_TEST_GGUF)", p.display());
    None
}

pub struct Service {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub drop: PathBuf,
    pub config: PathBuf,
    pub child: Child,
    pub notes: Arc<Mutex<Vec<String>>>,
    env: Vec<(String, String)>,
}

/// Settings that keep a test short: 1 s settle, tiny rounds.
pub fn config_text(dir: &Path, model: Option<&Path>, extra: &str) -> String {
    format!(
        r#"[paths]
data_dir = "{data}"
[ingest]
drop_folder = "{drop}"
stability_secs = 1
rescan_secs = 5
[model]
path = "{model}"
[train]
max_steps = 4
seq_len = 32
grad_accum = 1
micro_batch = 1
checkpoint_every = 1
warmup_steps = 0
[schedule]
window_start = "{ws:02}:00"
window_end = "{we:02}:00"
{extra}
"#,
        ws = (local_hour() + 12) % 24,
        we = (local_hour() + 13) % 24,
        data = dir.join("data").display(),
        drop = dir.join("drop").display(),
        model = model.map(|m| m.display().to_string()).unwrap_or_default(),
    )
}

/// The local hour now: the tests' nightly window is put half a day away, so
/// that only their explicit requests start rounds.
fn local_hour() -> u32 {
    let out = Command::new("date")
        .arg("+%H")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    out.ok().and_then(|h| h.parse().ok()).unwrap_or(0)
}

impl Service {
    pub fn start(dir: &Path, model: Option<&Path>, extra: &str, env: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir.join("drop")).unwrap();
        let config = dir.join("warsha.toml");
        std::fs::write(&config, config_text(dir, model, extra)).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::spawn(dir, config, env)
    }

    fn spawn(dir: &Path, config: PathBuf, env: Vec<(String, String)>) -> Self {
        let sock = dir.join(format!("notify-{}.sock", Instant::now().elapsed().as_nanos() + rand_suffix()));
        let _ = std::fs::remove_file(&sock);
        let listener = UnixDatagram::bind(&sock).unwrap();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let n2 = notes.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = listener.recv(&mut buf) {
                n2.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("serve.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warsha"));
        cmd.arg("--config")
            .arg(&config)
            .arg("serve")
            .env_remove("WARSHA_DATA_DIR")
            .env("NOTIFY_SOCKET", &sock)
            .env("WATCHDOG_USEC", "1000000")
            .env("WARSHA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.try_clone().unwrap());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Self {
            dir: dir.to_path_buf(),
            data: dir.join("data"),
            drop: dir.join("drop"),
            config,
            child,
            notes,
            env,
        }
    }

    /// A fresh process on the same data dir (after a crash or a stop), without `drop_env`.
    pub fn restart(self, drop_env: &[&str]) -> Self {
        let env = self.env.iter().filter(|(k, _)| !drop_env.contains(&k.as_str())).cloned().collect();
        let (dir, config) = (self.dir.clone(), self.config.clone());
        std::mem::forget(self);
        Self::spawn(&dir, config, env)
    }

    pub fn socket(&self) -> PathBuf {
        self.data.join("run").join("warsha.sock")
    }

    pub fn wait_note(&self, prefix: &str, within: Duration) -> bool {
        wait(within, || self.notes.lock().unwrap().iter().any(|n| n.lines().any(|l| l.starts_with(prefix))))
    }

    pub fn client(&self) -> Client {
        let s = UnixStream::connect(self.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
        Client { reader: BufReader::new(s.try_clone().unwrap()), writer: s }
    }

    /// The last lines of the service's log, for failure messages.
    pub fn log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and the seconds it took to exit.
    pub fn term(&mut self) -> (f64, std::process::ExitStatus) {
        let t = Instant::now();
        unsafe_kill(self.child.id() as i32, 15);
        let st = self.child.wait().unwrap();
        (t.elapsed().as_secs_f64(), st)
    }

    pub fn sql(&self, q: &str) -> Vec<Vec<Value>> {
        sql(&self.data.join("warsha.db"), q)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn unsafe_kill(pid: i32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

pub fn sql(db: &Path, q: &str) -> Vec<Vec<Value>> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut st = c.prepare(q).unwrap();
    let n = st.column_count();
    st.query_map([], |r| {
        Ok((0..n)
            .map(|i| match r.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(x) => json!(x),
                rusqlite::types::ValueRef::Real(x) => json!(x),
                rusqlite::types::ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
                rusqlite::types::ValueRef::Blob(_) => json!("<blob>"),
            })
            .collect())
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

pub fn wait(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

pub struct Client {
    pub reader: BufReader<UnixStream>,
    pub writer: UnixStream,
}

impl Client {
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, v: Value) {
        let mut line = v.to_string();
        line.push('\n');
        self.send_raw(line.as_bytes());
    }

    pub fn next(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => serde_json::from_str(&line).ok(),
        }
    }

    /// Send a request and read records until its last one (ok, error or done).
    pub fn call(&mut self, v: Value) -> Vec<Value> {
        self.send(v);
        let mut out = Vec::new();
        while let Some(r) = self.next() {
            let last = r.get("ok").is_some() || r.get("error").is_some() || r.get("done").is_some();
            out.push(r);
            if last {
                break;
            }
        }
        out
    }
}
