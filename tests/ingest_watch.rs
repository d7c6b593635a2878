//! The watcher feeds the worker: files dropped while the service runs are
//! taken (inotify, and polling where inotify is blind), and a drop folder
//! that vanishes and comes back is picked up again.

mod ingest_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ingest_support::*;
use warsha::ingest::watch::{channel, Watcher};
use warsha::ingest::worker::Worker;
use warsha::ingest::{Outcome, State};

/// Run a watcher and a worker on their own threads; outcomes come back on a channel.
struct Service {
    stop: Arc<AtomicBool>,
    watcher: Option<Watcher>,
    worker: Option<std::thread::JoinHandle<()>>,
    outcomes: mpsc::Receiver<Outcome>,
}

impl Service {
    fn start(env: &Env) -> Service {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = channel();
        let watcher = Watcher::spawn(&env.cfg.ingest, tx, stop.clone()).unwrap();
        let pipeline = env.pipeline();
        let (otx, orx) = mpsc::channel();
        let flag = stop.clone();
        let worker = std::thread::spawn(move || {
            let w = Worker::with_delay(pipeline, Some(rx), flag, Duration::from_millis(300));
            w.run(|o| {
                let _ = otx.send(o.clone());
            })
            .unwrap();
        });
        Service { stop, watcher: Some(watcher), worker: Some(worker), outcomes: orx }
    }

    fn expect(&self, path: &str, within: Duration) -> Outcome {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.outcomes.recv_timeout(left) {
                Ok(o) if o.path == path => return o,
                Ok(_) => continue,
                Err(_) => panic!("{path} not taken within {within:?}"),
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.watcher.take() {
            w.stop();
        }
        if let Some(t) = self.worker.take() {
            t.join().unwrap();
        }
    }
}

#[test]
fn files_dropped_while_running_are_taken_from_events() {
    let env = Env::new("rescan_secs = 3600");
    env.put("before.txt", b"there before the service started");
    let svc = Service::start(&env);
    assert_eq!(svc.expect("before.txt", Duration::from_secs(20)).state, State::Ingested);
    env.put("line 5/after.txt", "وصل بعد بدء الخدمة".as_bytes());
    assert_eq!(svc.expect("line 5/after.txt", Duration::from_secs(20)).state, State::Ingested);
    assert!(env.drop.join("processed/line 5/after.txt").is_file());
}

#[test]
fn forced_polling_sees_new_files() {
    let env = Env::new("force_polling = true\npoll_secs = 1\nrescan_secs = 3600");
    let svc = Service::start(&env);
    std::thread::sleep(Duration::from_millis(300));
    env.put("polled.txt", b"seen by polling");
    assert_eq!(svc.expect("polled.txt", Duration::from_secs(20)).state, State::Ingested);
}

#[test]
fn a_drop_folder_that_vanishes_is_picked_up_again_when_it_returns() {
    let env = Env::new("poll_secs = 1\nrescan_secs = 3600");
    let svc = Service::start(&env);
    env.put("first.txt", b"first file");
    assert_eq!(svc.expect("first.txt", Duration::from_secs(20)).state, State::Ingested);
    // Unplugged: the folder goes away (with what was in it) ...
    let away = env.dir.path().join("unplugged");
    std::fs::rename(&env.drop, &away).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // ... and comes back with a new file on it.
    std::fs::write(away.join("while away.txt"), b"written while unplugged").unwrap();
    std::fs::rename(&away, &env.drop).unwrap();
    assert_eq!(svc.expect("while away.txt", Duration::from_secs(20)).state, State::Ingested);
    env.put("after return.txt", b"after the folder came back");
    assert_eq!(svc.expect("after return.txt", Duration::from_secs(20)).state, State::Ingested);
    let store = env.store();
    let msgs: Vec<String> = store.recent_events(50).unwrap().into_iter().map(|e| e.message).collect();
    assert!(
        msgs.iter().any(|m| m.contains("is gone")) && msgs.iter().any(|m| m.contains("is back")),
        "{msgs:?}"
    );
}
