//! The loop thread: the one writer. It owns the read-write store (inside
//! the ingest worker's pipeline), serves other threads' [`Request`]s, runs
//! ingest ticks and training rounds, and sends WATCHDOG=1 and STATUS=.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::notify::{self, Heartbeat};
use super::schedule::{self, Decision, Last, Now, Situation};
use super::{ModelState, Progress, ServiceError, Shared};
use crate::answer::Source;
use crate::config::Config;
use crate::cycle::{run_cycle_lending, CycleError, CycleEvent, CycleInputs, CycleOutcome};
use crate::eval::suite::SuiteOptions;
use crate::ingest::pipeline::Outcome;
use crate::ingest::worker::{Hint, Tick, Worker};
use crate::store::reviews::NewReview;
use crate::store::{Level, Store};
use crate::train::stop::StopWhen;
use crate::train::{window_deadline, LocalTime, TrainError};

/// A reply: a JSON result or the reason it failed, in words.
pub type Reply = Sender<Result<Value, String>>;

/// What other threads ask of the writer. Every variant that changes state
/// carries the client's uid, recorded with the change.
pub enum Request {
    RecordAnswer {
        answer: AnswerRecord,
        reply: Reply,
    },
    Promote {
        adapter: i64,
        uid: u32,
        reply: Reply,
    },
    Rollback {
        uid: u32,
        reply: Reply,
    },
    Review {
        answer: i64,
        verdict: String,
        text: Option<String>,
        note: Option<String>,
        reviewer: Option<String>,
        uid: u32,
        reply: Reply,
    },
    TrainNow {
        steps: Option<usize>,
        uid: u32,
        reply: Reply,
    },
    Pause {
        uid: u32,
        reply: Reply,
    },
    Resume {
        uid: u32,
        reply: Reply,
    },
    IngestNow {
        uid: u32,
        reply: Reply,
    },
    Reload {
        uid: u32,
        reply: Reply,
    },
}

/// An answer generated on a client thread, to be recorded.
pub struct AnswerRecord {
    pub question: String,
    pub origin: String,
    pub adapter_id: Option<i64>,
    pub text: String,
    pub sources: Vec<Source>,
    pub tokens: usize,
    pub latency_ms: u64,
}

/// One ingest tick, as the loop sees it: a panic is an outcome, not an exit.
pub enum IngestStep {
    Did(Outcome),
    Waiting(Duration),
    Idle,
    Stopped,
    Failed(String),
    Panicked { file: Option<String>, message: String },
}

/// A turn the scheduler decided on.
struct Turn {
    steps: Option<usize>,
    /// Time left for it (the window's end).
    deadline: Option<Duration>,
    only_if_new: bool,
}

/// Decisions the requests make for the loop.
#[derive(Default)]
struct Control {
    /// A round asked for (train-now, resume, or a crashed round to finish): its step count.
    train_now: Option<Option<usize>>,
    paused: bool,
    /// The scheduler has decided once since the service started.
    looked: bool,
    /// When the scheduler looks again (None: at once).
    next_look: Option<Instant>,
    /// When old events were last deleted (`[retention] events_days`).
    pruned: Option<Instant>,
}

pub struct Loop {
    shared: std::sync::Arc<Shared>,
    rx: Receiver<Request>,
    worker: Worker,
    beat: Heartbeat,
    ctl: Control,
}

impl Loop {
    pub fn new(shared: std::sync::Arc<Shared>, rx: Receiver<Request>, worker: Worker) -> Self {
        Self { shared, rx, worker, beat: Heartbeat::new(), ctl: Control::default() }
    }

    pub fn run(mut self) -> Result<(), ServiceError> {
        let status = self.activity(None);
        notify::ready(&status);
        self.beat.status(&status);
        self.recover()?;
        loop {
            self.beat.beat();
            if self.shared.stopping() {
                break;
            }
            if self.shared.hup.swap(false, Ordering::Relaxed) {
                let _ = reload(&self.shared, self.worker.pipeline().store(), 0);
            }
            while let Ok(req) = self.rx.try_recv() {
                handle(self.worker.pipeline().store(), &self.shared, &mut self.ctl, req, false);
            }
            self.retention();
            if let Some(steps) = self.round_due() {
                self.round(steps);
                continue;
            }
            let step = self.ingest_tick();
            let wait = match &step {
                IngestStep::Did(_) => Duration::ZERO,
                IngestStep::Waiting(d) => (*d).min(Duration::from_millis(200)),
                IngestStep::Idle => Duration::from_millis(200),
                IngestStep::Stopped => break,
                IngestStep::Failed(_) | IngestStep::Panicked { .. } => Duration::from_secs(1),
            };
            self.record_step(step);
            let line = self.activity(None);
            self.beat.status(&line);
            if !wait.is_zero() {
                match self.rx.recv_timeout(wait) {
                    Ok(req) => {
                        handle(self.worker.pipeline().store(), &self.shared, &mut self.ctl, req, false)
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
                }
            }
        }
        self.worker.pipeline().store().event(Level::Info, "service", "stopping on signal", None)?;
        Ok(())
    }

    /// Work a crash left behind: a round that was running resumes now (a
    /// candidate trained but never gated is gated by the first turn).
    fn recover(&mut self) -> Result<(), ServiceError> {
        let store = self.worker.pipeline().store();
        if let Some(run) = store.latest_resumable_run()? {
            if run.status != "paused" {
                store.event(
                    Level::Info,
                    "train",
                    &format!("run #{} was {} when the service stopped: resuming it", run.id, run.status),
                    None,
                )?;
                self.ctl.train_now = Some(None);
            }
        }
        Ok(())
    }

    /// Old events go once a day.
    fn retention(&mut self) {
        if self.ctl.pruned.is_some_and(|t| t.elapsed() < Duration::from_secs(86_400)) {
            return;
        }
        self.ctl.pruned = Some(Instant::now());
        let days = self.shared.config().retention.events_days;
        match self.worker.pipeline().store().prune_events(days) {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, days, "old events deleted"),
            Err(e) => tracing::warn!(error = %e, "could not delete old events"),
        }
    }

    fn ingest_tick(&mut self) -> IngestStep {
        match catch_unwind(AssertUnwindSafe(|| self.worker.tick())) {
            Ok(Ok(Tick::Did(o))) => IngestStep::Did(o),
            Ok(Ok(Tick::Waiting(d))) => IngestStep::Waiting(d),
            Ok(Ok(Tick::Idle)) => IngestStep::Idle,
            Ok(Ok(Tick::Stopped)) => IngestStep::Stopped,
            Ok(Err(e)) => IngestStep::Failed(e.to_string()),
            Err(payload) => {
                let message = panic_message(&*payload);
                let file = self.worker.abandon_in_hand().map(|(_, rel)| rel);
                IngestStep::Panicked { file, message }
            }
        }
    }

    fn record_step(&mut self, step: IngestStep) {
        if matches!(step, IngestStep::Did(_)) {
            // New material: the scheduler looks again.
            self.ctl.next_look = None;
        }
        let store = self.worker.pipeline().store();
        let r = match step {
            IngestStep::Did(o) => {
                let msg = format!("{} {}", o.state.as_str(), o.path);
                store.event(Level::Info, "ingest", &msg, serde_json::to_value(&o).ok()).map(|_| ())
            }
            IngestStep::Failed(e) => store
                .event(Level::Error, "ingest", &format!("ingest step failed (retried later): {e}"), None)
                .map(|_| ()),
            IngestStep::Panicked { file, message } => {
                let reason = format!("internal error while ingesting: {message}");
                let mut r = Ok(());
                if let Some(rel) = &file {
                    if let Ok(Some(row)) = store.file_open_at(rel, "drop") {
                        r = store.file_finish(row.id, "rejected", Some(&reason), None, true);
                    }
                }
                let what = file.as_deref().unwrap_or("(no file in hand)");
                r.and(store.event(Level::Error, "ingest", &format!("{what}: {reason}"), None).map(|_| ()))
            }
            IngestStep::Waiting(_) | IngestStep::Idle | IngestStep::Stopped => Ok(()),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "could not record an ingest outcome");
        }
    }

    /// The scheduler's decision (`schedule::decide`), taken when it said to
    /// look again, or at once after a request or new material.
    fn round_due(&mut self) -> Option<Turn> {
        let train_now = self.ctl.train_now.take();
        if train_now.is_none() && (self.ctl.paused || self.ctl.next_look.is_some_and(|t| Instant::now() < t))
        {
            return None;
        }
        let cfg = self.shared.config();
        let first = std::mem::replace(&mut self.ctl.looked, true);
        let store = self.worker.pipeline().store();
        let situation = (|| -> Result<_, crate::store::StoreError> {
            Ok((
                store.ungated_candidates()?.is_empty(),
                Situation {
                    now: Now::current(),
                    last: store.last_round()?.as_ref().map(Last::from),
                    new_material: store.new_material()?.any(),
                    train_now: train_now.is_some(),
                    first_since_boot: !first,
                },
            ))
        })();
        let (none_ungated, situation) = match situation {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "scheduler cannot read the store");
                self.ctl.next_look = Some(Instant::now() + Duration::from_secs(60));
                return None;
            }
        };
        let steps = train_now.flatten();
        let only_if_new = train_now.is_none();
        if !none_ungated {
            return Some(Turn { steps, deadline: None, only_if_new: false });
        }
        match schedule::decide(&cfg, &situation) {
            Decision::Start { deadline } | Decision::Resume { deadline } => {
                Some(Turn { steps, deadline, only_if_new })
            }
            Decision::CatchUp { deadline, .. } => Some(Turn { steps, deadline: Some(deadline), only_if_new }),
            Decision::Wait { wait, .. } => {
                self.ctl.next_look = Some(Instant::now() + wait.min(Duration::from_secs(60)));
                None
            }
        }
    }

    /// One turn of the loop (round → gate → promote or reject) on this thread.
    fn round(&mut self, turn: Turn) {
        let ModelState::Loaded(model) = &self.shared.model else {
            let store = self.worker.pipeline().store();
            let _ = store.event(Level::Warn, "train", "no model: cannot train", None);
            self.ctl.next_look = Some(Instant::now() + Duration::from_secs(600));
            return;
        };
        let model = model.clone();
        let cfg = self.shared.config();
        let Loop { shared, rx, worker, beat, ctl } = self;
        let store = worker.pipeline().store();
        let now = Instant::now();
        let window_ends =
            turn.deadline.filter(|_| window_deadline(LocalTime::now(), &cfg).is_some()).map(|d| {
                let t = (LocalTime::now().secs_of_day as u64 + d.as_secs()) % 86_400;
                format!("{:02}:{:02}", t / 3600, t % 3600 / 60)
            });
        shared.halt.store(false, Ordering::Relaxed);
        let inputs = CycleInputs {
            config: &cfg,
            data_dir: &shared.data,
            base: &model.base,
            tok: &model.tok,
            base_model: model.path.display().to_string(),
            steps: turn.steps,
            stop: StopWhen { flag: Some(&shared.halt), deadline: turn.deadline.map(|d| now + d) },
            only_if_new: turn.only_if_new,
            suite: SuiteOptions::default(),
        };
        let mut hook = |store: &mut Store, ev: &CycleEvent<'_>| {
            let boundary = match ev {
                CycleEvent::Training { max_steps, .. } => {
                    set_progress(shared, Some(progress(0, *max_steps, &window_ends)));
                    true
                }
                CycleEvent::Step { max_steps, report } => {
                    set_progress(shared, Some(progress(report.step, *max_steps, &window_ends)));
                    true
                }
                CycleEvent::GatingLeftover { adapter_id } | CycleEvent::Gating { adapter_id, .. } => {
                    set_progress(shared, None);
                    set_gating(shared, Some(*adapter_id));
                    false
                }
            };
            beat.status(&activity_line(shared, 0));
            // A step boundary: serve the queue, yield to questions, stop if asked.
            loop {
                beat.beat();
                while let Ok(req) = rx.try_recv() {
                    handle(store, shared, ctl, req, true);
                }
                if shared.stopping() {
                    shared.halt.store(true, Ordering::Relaxed);
                }
                if !boundary {
                    shared.lease.round_ended();
                    break;
                }
                if shared.lease.step_boundary(Duration::from_millis(50)) {
                    break;
                }
            }
        };
        let result = run_cycle_lending(store, &inputs, &mut hook);
        shared.lease.round_ended();
        set_progress(shared, None);
        set_gating(shared, None);
        let store = worker.pipeline().store();
        let _ = match result {
            Ok(out) => {
                let msg = match &out {
                    CycleOutcome::Promoted(g) | CycleOutcome::Rejected(g) => {
                        format!("adapter #{} {} by the gate: {}", g.adapter, out.word(), g.reasons.join("; "))
                    }
                    CycleOutcome::Paused { run_id, round } => {
                        format!(
                            "run #{run_id} paused at step {}/{} (checkpointed)",
                            round.steps_done, round.max_steps
                        )
                    }
                    CycleOutcome::NothingNew => "nothing new to learn".into(),
                };
                let component = if matches!(out, CycleOutcome::Promoted(_) | CycleOutcome::Rejected(_)) {
                    "gate"
                } else {
                    "train"
                };
                store.event(Level::Info, component, &msg, serde_json::to_value(&out).ok())
            }
            Err(CycleError::Train(e)) if matches!(*e, TrainError::NoData) => {
                ctl.next_look = Some(Instant::now() + Duration::from_secs(60));
                store.event(Level::Info, "train", "nothing to train on yet", None)
            }
            Err(e) => {
                ctl.next_look = Some(Instant::now() + Duration::from_secs(600));
                store.event(Level::Error, "train", &format!("training turn failed: {e}"), None)
            }
        };
    }

    fn activity(&self, _: Option<()>) -> String {
        activity_line(&self.shared, self.worker.settling().len())
    }
}

fn progress(step: usize, max_steps: usize, window_ends: &Option<String>) -> Progress {
    Progress { run_id: None, step, max_steps, window_ends: window_ends.clone() }
}

fn set_gating(sh: &Shared, adapter: Option<i64>) {
    sh.live.lock().unwrap_or_else(|e| e.into_inner()).gating = adapter;
}

fn set_progress(sh: &Shared, p: Option<Progress>) {
    let mut live = sh.live.lock().unwrap_or_else(|e| e.into_inner());
    live.training = p;
}

/// The one-line activity of STATUS= and `status`.
fn activity_line(sh: &Shared, settling: usize) -> String {
    let mut live = sh.live.lock().unwrap_or_else(|e| e.into_inner());
    live.settling_files = settling;
    let mut s = match &live.training {
        Some(p) => {
            let mut s = format!("training step {}/{}", p.step, p.max_steps);
            if let Some(end) = &p.window_ends {
                s.push_str(&format!(", window ends {end}"));
            }
            s
        }
        None if live.gating.is_some() => format!("gating adapter #{}", live.gating.unwrap_or_default()),
        None if settling > 0 => format!("ingesting {settling} files"),
        None if live.paused => "idle (training paused)".into(),
        None => "idle".into(),
    };
    if let ModelState::Missing(_) = sh.model {
        s = if s == "idle" { "no model".into() } else { format!("no model; {s}") };
    }
    live.activity = s.clone();
    s
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

fn by(uid: u32) -> Option<Value> {
    Some(json!({"uid": uid}))
}

/// Serve one request with the store (the loop's own, or lent by a round).
fn handle(store: &mut Store, sh: &Shared, ctl: &mut Control, req: Request, in_round: bool) {
    let cfg = sh.config();
    let (reply, result) = match req {
        Request::RecordAnswer { answer: a, reply } => {
            let r = store
                .record_answer(
                    &a.question,
                    &a.origin,
                    a.adapter_id,
                    &a.text,
                    &a.sources,
                    a.tokens,
                    a.latency_ms,
                )
                .map(|(q, a)| json!({"question_id": q, "answer_id": a}))
                .map_err(|e| e.to_string());
            (reply, r)
        }
        Request::Promote { adapter, uid, reply } => {
            let why = json!({"manual": true, "uid": uid});
            let r = crate::adapters::registry::promote(
                store,
                &sh.data,
                adapter,
                Some(&why),
                cfg.retention.keep_adapters,
            )
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::to_value(s).map_err(|e| e.to_string()));
            if r.is_ok() {
                let _ = store.event(
                    Level::Info,
                    "adapters",
                    &format!("adapter #{adapter} promoted by uid {uid}"),
                    by(uid),
                );
            }
            (reply, r)
        }
        Request::Rollback { uid, reply } => {
            let r = crate::adapters::registry::rollback(store, &sh.data, cfg.retention.keep_adapters)
                .map_err(|e| e.to_string())
                .and_then(|s| serde_json::to_value(s).map_err(|e| e.to_string()));
            if r.is_ok() {
                let _ = store.event(Level::Info, "adapters", &format!("rolled back by uid {uid}"), by(uid));
            }
            (reply, r)
        }
        Request::Review { answer, verdict, text, note, reviewer, uid, reply } => {
            let r = NewReview::from_request(answer, &verdict, text, note, reviewer, Some(uid))
                .map_err(|e| e.to_string())
                .and_then(|rv| store.record_review(&rv).map_err(|e| e.to_string()))
                .and_then(|rec| serde_json::to_value(&rec).map_err(|e| e.to_string()));
            if r.is_ok() {
                // New material for the scheduler.
                ctl.next_look = None;
            }
            (reply, r)
        }
        Request::TrainNow { steps, uid, reply } => {
            let r = if in_round {
                Err("a round is already training".to_string())
            } else if let ModelState::Missing(why) = &sh.model {
                Err(format!("no model: {why}"))
            } else {
                ctl.train_now = Some(steps);
                ctl.paused = false;
                let _ = store.event(Level::Info, "train", &format!("train-now by uid {uid}"), by(uid));
                Ok(json!({"started": true}))
            };
            (reply, r)
        }
        Request::Pause { uid, reply } => {
            ctl.paused = true;
            sh.halt.store(true, Ordering::Relaxed);
            set_paused(sh, true);
            let _ = store.event(Level::Info, "train", &format!("training paused by uid {uid}"), by(uid));
            (reply, Ok(json!({"paused": true, "round_running": in_round})))
        }
        Request::Resume { uid, reply } => {
            ctl.paused = false;
            sh.halt.store(false, Ordering::Relaxed);
            set_paused(sh, false);
            let resumable = matches!(store.latest_resumable_run(), Ok(Some(_)));
            if resumable && !in_round && !matches!(sh.model, ModelState::Missing(_)) {
                ctl.train_now = Some(None);
            }
            let _ = store.event(Level::Info, "train", &format!("training resumed by uid {uid}"), by(uid));
            (reply, Ok(json!({"paused": false, "resuming_run": resumable && !in_round})))
        }
        Request::IngestNow { uid, reply } => {
            let _ = sh.hints.send(Hint::Rescan);
            let _ = store.event(Level::Info, "ingest", &format!("ingest-now by uid {uid}"), by(uid));
            (reply, Ok(json!({"scanning": true, "deferred_until_round_ends": in_round})))
        }
        Request::Reload { uid, reply } => (reply, reload(sh, store, uid)),
    };
    // A client that went away does not need its reply.
    let _ = reply.send(result);
}

fn set_paused(sh: &Shared, paused: bool) {
    sh.live.lock().unwrap_or_else(|e| e.into_inner()).paused = paused;
}

/// Re-read the config; a bad file keeps the running config and says why.
fn reload(sh: &Shared, store: &mut Store, uid: u32) -> Result<Value, String> {
    match Config::load(sh.config_file.as_deref(), Some(sh.data.root())) {
        Ok(c) => {
            *sh.config.write().unwrap_or_else(|e| e.into_inner()) = c;
            let _ = store.event(
                Level::Info,
                "service",
                "config reloaded (drop-folder settings apply at the next start)",
                by(uid),
            );
            Ok(json!({"reloaded": true}))
        }
        Err(e) => {
            let msg = format!("config reload refused, the running config is kept: {e}");
            let _ = store.event(Level::Warn, "service", &msg, by(uid));
            Err(msg)
        }
    }
}
