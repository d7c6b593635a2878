//! `warsha serve`: the one long-lived process that owns the database, the
//! model and the GPU, and runs the loop unattended.
//!
//! Threading model (one process; every thread named `warsha-*`):
//!
//! - **loop** (`warsha-loop`, [`writer`]): the single writer. It owns the one
//!   read-write [`Store`] — inside the ingest [`Worker`]'s pipeline, so ingest
//!   writes need no hop — and runs, in turn: the typed [`writer::Request`]s
//!   other threads send it (each with its own reply channel), one ingest
//!   `tick` inside `catch_unwind` (a closed [`writer::IngestStep`]), and the
//!   scheduler's decision. A training round runs on this same thread: the
//!   round lends the store back at every optimizer-step boundary, where the
//!   loop serves the queued requests, pings the watchdog and waits while a
//!   question holds the [`lease::Lease`]. Ingest ticks wait while a round
//!   trains (files stay in the drop folder, their rows open; nothing is
//!   lost). WATCHDOG=1 and STATUS= come from this thread, so a hung loop
//!   stops the pings.
//! - **watch** (`warsha-watch`, [`crate::ingest::watch`]): turns filesystem
//!   events into hints on a channel the worker drains; never touches the store.
//! - **listener** (`warsha-listen`, [`socket`]): accepts connections on
//!   `<data_dir>/run/warsha.sock`, checks the peer's uid (SO_PEERCRED), and
//!   starts one **client** thread (`warsha-client`) per connection, up to
//!   `[service] max_clients`. A client thread reads with its own read-only
//!   connection, answers questions itself (retrieval, then generation under
//!   the lease) and sends everything that writes to the loop.
//!
//! Shared, read-mostly state is in [`Shared`] (an `Arc`): the loaded model
//! (`Arc`, loaded once; absent or unloadable leaves the service running and
//! saying "no model"), the config (replaced on SIGHUP/`reload`), the lease,
//! the stop/pause flags and the live status the loop publishes. Nothing but
//! the loop writes SQL; no thread blocks another except through the lease
//! (the trainer's step boundary) and the loop's request queue.

pub mod client;
mod lease;
mod notify;
mod peer;
pub mod protocol;
mod query;
pub mod schedule;
mod socket;
mod writer;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};

use crate::config::Config;
use crate::data_dir::DataDir;
use crate::ingest::extract::Extractor;
use crate::ingest::pipeline::Pipeline;
use crate::ingest::watch::Watcher;
use crate::ingest::worker::{Hint, Worker};
use crate::model::tokenizer::Tok;
use crate::model::Base;
use crate::store::{Level, Store};

pub use lease::Lease;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    DataDir(#[from] crate::data_dir::DataDirError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Ingest(#[from] crate::ingest::IngestError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

impl ServiceError {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ServiceError::Io { what: what.into(), source }
    }
}

/// The base model and its tokenizer, loaded once and shared by the trainer
/// and the query threads.
pub struct Model {
    pub base: Base,
    pub tok: Tok,
    pub path: PathBuf,
}

/// How the service came to have (or not have) a model.
pub enum ModelState {
    Loaded(Arc<Model>),
    /// No model configured or installed, or it failed to load: the reason.
    Missing(String),
}

/// What the loop publishes for `status` and STATUS=.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Live {
    /// The one-line activity, as in STATUS=.
    pub activity: String,
    pub training: Option<Progress>,
    pub paused: bool,
    pub settling_files: usize,
    /// The adapter the gate is scoring.
    pub gating: Option<i64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Progress {
    pub run_id: Option<i64>,
    pub step: usize,
    pub max_steps: usize,
    pub window_ends: Option<String>,
}

/// State every thread may read.
pub struct Shared {
    pub data: DataDir,
    pub config: RwLock<Config>,
    pub config_file: Option<PathBuf>,
    pub model: ModelState,
    pub lease: Lease,
    /// SIGTERM/SIGINT: stop taking work and exit.
    pub term: Arc<AtomicBool>,
    /// SIGHUP: re-read the config.
    pub hup: Arc<AtomicBool>,
    /// Stop the running round at its next step boundary (term or pause).
    pub halt: AtomicBool,
    pub live: Mutex<Live>,
    pub clients: AtomicUsize,
    pub requests: mpsc::Sender<writer::Request>,
    pub hints: mpsc::Sender<Hint>,
    /// The active adapter loaded for answers, by id.
    pub answer_adapter: Mutex<Option<(i64, Arc<crate::model::Adapter>)>>,
    /// One generation at a time (a small box has one model's worth of compute).
    pub generation: Mutex<()>,
}

impl Shared {
    pub fn config(&self) -> Config {
        self.config.read().map(|c| c.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }
    pub fn stopping(&self) -> bool {
        self.term.load(Ordering::Relaxed)
    }
}

/// The driver's compute cache in the state directory, so that a restarted
/// service does not JIT-compile its kernels again (24 s on the first CUDA
/// step of a fresh process). Must run before any CUDA initialisation, while
/// the process has a single thread.
pub fn keep_cuda_cache(data: &DataDir) {
    if std::env::var_os("CUDA_CACHE_PATH").is_none() {
        let dir = data.root().join("cache").join("cuda");
        if std::fs::create_dir_all(&dir).is_ok() {
            std::env::set_var("CUDA_CACHE_PATH", &dir);
        }
    }
    if std::env::var_os("CUDA_CACHE_MAXSIZE").is_none() {
        std::env::set_var("CUDA_CACHE_MAXSIZE", (1u64 << 30).to_string());
    }
}

/// The model to serve: `[model] path`, else the newest model recorded in the
/// data dir. Absent or unloadable is not an error: the service runs without.
fn load_model(
    cfg: &Config,
    store: &Store,
    load: &dyn Fn(&Path) -> anyhow::Result<(Base, Tok)>,
) -> ModelState {
    let path = cfg.model_path().or_else(|| {
        store.models().ok().and_then(|m| m.last().map(|r| cfg.paths.data_dir.join("models").join(&r.path)))
    });
    let Some(path) = path else {
        return ModelState::Missing("no model configured ([model] path) or installed".into());
    };
    if !path.exists() {
        return ModelState::Missing(format!("model {} does not exist", path.display()));
    }
    // A corrupt file must not take the service down with it.
    match std::panic::catch_unwind(AssertUnwindSafe(|| load(&path))) {
        Ok(Ok((base, tok))) => ModelState::Loaded(Arc::new(Model { base, tok, path })),
        Ok(Err(e)) => ModelState::Missing(format!("model {} failed to load: {e:#}", path.display())),
        Err(_) => ModelState::Missing(format!("model {} failed to load (loader panicked)", path.display())),
    }
}

/// Everything `serve` needs from the command line.
pub struct ServeArgs<'a> {
    pub config: Config,
    pub config_file: Option<PathBuf>,
    pub load: &'a dyn Fn(&Path) -> anyhow::Result<(Base, Tok)>,
}

/// Run the service until SIGTERM. READY=1 goes out only after the migrations
/// ran, the model loaded (or was found absent) and the watch is up.
pub fn serve(args: ServeArgs<'_>) -> Result<(), ServiceError> {
    let cfg = args.config;
    let data = DataDir::new(cfg.paths.data_dir.clone());
    keep_cuda_cache(&data);
    data.create()?;
    let _lock = data.lock()?;
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, term.clone()).map_err(|e| ServiceError::io("signal handler", e))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .map_err(|e| ServiceError::io("signal handler", e))?;

    let mut store = Store::open(&data.db())?;
    let model = load_model(&cfg, &store, args.load);
    match &model {
        ModelState::Loaded(m) => {
            store.event(Level::Info, "service", &format!("model {} loaded", m.path.display()), None)?;
        }
        ModelState::Missing(why) => {
            store.event(Level::Warn, "service", &format!("no model: {why}"), None)?;
        }
    }
    let exe = std::env::current_exe().map_err(|e| ServiceError::io("locating the warsha binary", e))?;
    let extractor = Extractor::new(exe, &cfg.ingest);
    let pipeline = Pipeline::new(store, data.clone(), cfg.ingest.clone(), extractor)?;
    let (hint_tx, hint_rx) = crate::ingest::watch::channel();
    let stop_ingest = Arc::new(AtomicBool::new(false));
    let worker = Worker::new(pipeline, Some(hint_rx), stop_ingest.clone());
    let watcher = Watcher::spawn(&cfg.ingest, hint_tx.clone(), stop_ingest.clone())
        .map_err(|e| ServiceError::io("starting the drop-folder watch", e))?;

    let (req_tx, req_rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        data: data.clone(),
        config: RwLock::new(cfg),
        config_file: args.config_file,
        model,
        lease: Lease::default(),
        term,
        hup,
        halt: AtomicBool::new(false),
        live: Mutex::new(Live::default()),
        clients: AtomicUsize::new(0),
        requests: req_tx,
        hints: hint_tx,
        answer_adapter: Mutex::new(None),
        generation: Mutex::new(()),
    });
    let listener = socket::Listener::bind(shared.clone())?;
    let listen_thread = listener.spawn().map_err(|e| ServiceError::io("starting the socket listener", e))?;

    let result = writer::Loop::new(shared.clone(), req_rx, worker).run();
    notify::stopping();
    stop_ingest.store(true, Ordering::Relaxed);
    watcher.stop();
    let _ = listen_thread.join();
    let _ = std::fs::remove_file(data.socket());
    tracing::info!("service stopped");
    result
}
