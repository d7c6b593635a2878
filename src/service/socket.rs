//! The service socket: `<data_dir>/run/warsha.sock`, mode 0660, owned by the
//! configured group. One thread accepts; one thread per client (capped)
//! reads bounded lines with a timeout and writes records with a timeout, so
//! a vanished or slow client costs only its own thread. No TCP anywhere.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use super::peer::{self, Peer};
use super::protocol::{self, DocsAction, Verb};
use super::writer::Request;
use super::{ModelState, ServiceError, Shared};
use crate::store::Store;

pub struct Listener {
    shared: Arc<Shared>,
    listener: UnixListener,
}

impl Listener {
    /// Bind the socket. A socket file left by a dead service is replaced; a
    /// live one cannot be (the data-dir lock is already ours).
    pub fn bind(shared: Arc<Shared>) -> Result<Self, ServiceError> {
        let path = shared.data.socket();
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| ServiceError::io(format!("binding {}", path.display()), e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| ServiceError::io(format!("chmod {}", path.display()), e))?;
        let group = shared.config().service.group;
        match peer::group_gid(&group) {
            Some(gid) => {
                if let Err(e) = peer::chown_group(&path, gid) {
                    tracing::warn!(group, error = %e, "cannot give the socket to its group");
                }
            }
            None => tracing::warn!(
                group,
                "[service] group does not exist: only root and the service's user may connect"
            ),
        }
        listener.set_nonblocking(true).map_err(|e| ServiceError::io("socket", e))?;
        Ok(Self { shared, listener })
    }

    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name("warsha-listen".into()).spawn(move || self.accept_loop())
    }

    fn accept_loop(self) {
        while !self.shared.stopping() {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    fn admit(&self, stream: UnixStream) {
        let _ = stream.set_nonblocking(false);
        let cfg = self.shared.config().service;
        let _ = stream.set_write_timeout(Some(Duration::from_secs(cfg.write_timeout_secs)));
        let mut out = Out {
            stream: match stream.try_clone() {
                Ok(s) => s,
                Err(_) => return,
            },
            broken: false,
        };
        let peer = match peer::peer_of(&stream) {
            Ok(p) => p,
            Err(e) => {
                out.send(&protocol::error(
                    &Value::Null,
                    "refused",
                    &format!("cannot identify the client: {e}"),
                ));
                return;
            }
        };
        let gid = peer::group_gid(&cfg.group);
        if !peer::allowed(&peer, gid) {
            tracing::warn!(uid = peer.uid, pid = peer.pid, "socket client refused: not in the service group");
            out.send(&protocol::error(
                &Value::Null,
                "forbidden",
                &format!(
                    "uid {} may not use this service: it is not root, the service user, or in group {:?}",
                    peer.uid, cfg.group
                ),
            ));
            return;
        }
        if self.shared.clients.fetch_add(1, Ordering::SeqCst) >= cfg.max_clients {
            self.shared.clients.fetch_sub(1, Ordering::SeqCst);
            out.send(&protocol::error(
                &Value::Null,
                "busy",
                &format!("{} clients already connected; try again", cfg.max_clients),
            ));
            return;
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new().name("warsha-client".into()).spawn(move || {
            Client { shared: shared.clone(), out, peer, ro: None }.serve(stream);
            shared.clients.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            self.shared.clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The writing half of a client connection. After a failed write (the
/// client left, or did not read within the write timeout) it is `broken`
/// and the client's thread ends.
pub struct Out {
    stream: UnixStream,
    pub broken: bool,
}

impl Out {
    pub fn send(&mut self, v: &Value) -> bool {
        if self.broken {
            return false;
        }
        let mut line = v.to_string();
        line.push('\n');
        if self.stream.write_all(line.as_bytes()).and_then(|_| self.stream.flush()).is_err() {
            self.broken = true;
        }
        !self.broken
    }
}

struct Client {
    shared: Arc<Shared>,
    out: Out,
    peer: Peer,
    ro: Option<Store>,
}

impl Client {
    fn serve(&mut self, stream: UnixStream) {
        let cfg = self.shared.config().service;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(cfg.read_timeout_secs)));
        let cap = cfg.max_line_bytes;
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match (&mut reader).take(cap as u64 + 1).read_until(b'\n', &mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    let msg = format!("no request for {} s; closing", cfg.read_timeout_secs);
                    self.out.send(&protocol::error(&Value::Null, "idle", &msg));
                    return;
                }
                Err(_) => return,
            }
            if buf.last() == Some(&b'\n') {
                buf.pop();
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
            } else if buf.len() > cap {
                // The rest of an oversized line cannot be told from the next request: end here.
                let msg = format!("request line longer than {cap} bytes; closing");
                self.out.send(&protocol::error(&Value::Null, "too-long", &msg));
                return;
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match protocol::parse(&buf) {
                Err(r) => {
                    self.out.send(&protocol::error(&r.id, r.code, &r.message));
                }
                Ok((id, verb)) => self.dispatch(&id, verb),
            }
            if self.out.broken || self.shared.stopping() {
                return;
            }
        }
    }

    fn store(&mut self) -> Result<&Store, String> {
        if self.ro.is_none() {
            self.ro = Some(Store::open_read_only(&self.shared.data.db()).map_err(|e| e.to_string())?);
        }
        self.ro.as_ref().ok_or_else(|| "no database".to_string())
    }

    fn dispatch(&mut self, id: &Value, verb: Verb) {
        let uid = self.peer.uid;
        let req = |tx| -> Option<Request> {
            Some(match &verb {
                Verb::IngestNow => Request::IngestNow { uid, reply: tx },
                Verb::TrainNow { steps } => Request::TrainNow { steps: *steps, uid, reply: tx },
                Verb::Pause => Request::Pause { uid, reply: tx },
                Verb::Resume => Request::Resume { uid, reply: tx },
                Verb::Promote { adapter } => Request::Promote { adapter: *adapter, uid, reply: tx },
                Verb::Rollback => Request::Rollback { uid, reply: tx },
                Verb::Review { answer, verdict, text, note, reviewer } => Request::Review {
                    answer: *answer,
                    verdict: verdict.as_str().into(),
                    text: text.clone(),
                    note: note.clone(),
                    reviewer: reviewer.clone(),
                    uid,
                    reply: tx,
                },
                Verb::Reload => Request::Reload { uid, reply: tx },
                _ => return None,
            })
        };
        let (tx, rx) = mpsc::channel();
        if let Some(r) = req(tx) {
            let rec = match self.shared.requests.send(r).ok().and_then(|_| rx.recv().ok()) {
                Some(Ok(v)) => protocol::ok(id, v),
                Some(Err(msg)) => protocol::error(id, "refused", &msg),
                None => protocol::error(id, "stopping", "the service is stopping"),
            };
            self.out.send(&rec);
            return;
        }
        let rec = match verb {
            Verb::Ask { question, max_tokens } => {
                let shared = self.shared.clone();
                let store = match self.store() {
                    Ok(_) => self.ro.take(),
                    Err(e) => {
                        self.out.send(&protocol::error(id, "database", &e));
                        return;
                    }
                };
                if let Some(store) = store {
                    super::query::ask(&shared, &mut self.out, &store, id, &question, max_tokens, uid);
                    self.ro = Some(store);
                }
                return;
            }
            Verb::Events { level, component } => {
                self.events(id, level.as_deref(), component.as_deref());
                return;
            }
            Verb::Status => self.status().map(|v| protocol::ok(id, v)),
            Verb::Docs { action: DocsAction::List, .. } => self.store().and_then(|s| {
                let files = s.files_list(10_000).map_err(|e| e.to_string())?;
                let docs = s.documents_list().map_err(|e| e.to_string())?;
                Ok(protocol::ok(id, json!({"files": files, "documents": docs})))
            }),
            Verb::Docs { action: DocsAction::Show, document } => match document {
                None => Err("docs show needs \"document\"".into()),
                Some(d) => self.store().and_then(|s| match s.document(d).map_err(|e| e.to_string())? {
                    Some((row, text)) => Ok(protocol::ok(id, json!({"document": row, "text": text}))),
                    None => Err(format!("no document {d}")),
                }),
            },
            _ => Err("unhandled verb".into()),
        };
        let rec = rec.unwrap_or_else(|msg| protocol::error(id, "refused", &msg));
        self.out.send(&rec);
    }

    fn status(&mut self) -> Result<Value, String> {
        let live = self.shared.live.lock().map(|l| l.clone()).unwrap_or_default();
        let (model, problem) = match &self.shared.model {
            ModelState::Loaded(m) => (Some(m.path.display().to_string()), None),
            ModelState::Missing(why) => (None, Some(why.clone())),
        };
        let report = self.store()?.status_report(10).map_err(|e| e.to_string())?;
        let mut db = serde_json::to_value(&report).map_err(|e| e.to_string())?;
        if let Some(obj) = db.as_object_mut() {
            let counts: serde_json::Map<String, Value> =
                report.counts.iter().map(|c| (c.table.to_string(), c.rows.into())).collect();
            obj.insert("counts".into(), counts.into());
            obj.insert("data_dir".into(), self.shared.data.root().display().to_string().into());
            obj.insert("model".into(), model.clone().into());
        }
        Ok(json!({
            "service": {
                "pid": std::process::id(),
                "activity": live.activity,
                "training": live.training,
                "paused": live.paused,
                "settling_files": live.settling_files,
                "model": model,
                "model_problem": problem,
                "clients": self.shared.clients.load(Ordering::Relaxed),
                "questions_waiting": self.shared.lease.questions(),
            },
            "database": db,
        }))
    }

    /// Stream new events (from now on) until the client leaves or the service stops.
    fn events(&mut self, id: &Value, level: Option<&str>, component: Option<&str>) {
        let rank = |l: &str| ["error", "warn", "info", "debug"].iter().position(|x| *x == l);
        let max = match level.map(|l| (l, rank(l))) {
            None => 2,
            Some((_, Some(r))) => r,
            Some((l, None)) => {
                self.out.send(&protocol::error(
                    id,
                    "bad-arguments",
                    &format!("level {l:?}: error, warn, info or debug"),
                ));
                return;
            }
        };
        let mut last = match self.store().and_then(|s| s.last_event_id().map_err(|e| e.to_string())) {
            Ok(n) => n,
            Err(e) => {
                self.out.send(&protocol::error(id, "database", &e));
                return;
            }
        };
        if !self.out.send(&json!({"id": id, "streaming": "events"})) {
            return;
        }
        while !self.shared.stopping() && !self.out.broken {
            let batch = match self.store().and_then(|s| s.events_after(last, 500).map_err(|e| e.to_string()))
            {
                Ok(b) => b,
                Err(e) => {
                    self.out.send(&protocol::error(id, "database", &e));
                    return;
                }
            };
            for e in batch {
                last = e.id;
                let shown =
                    rank(&e.level).is_some_and(|r| r <= max) && component.is_none_or(|c| c == e.component);
                if shown && !self.out.send(&json!({"id": id, "event": e})) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
