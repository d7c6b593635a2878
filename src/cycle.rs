//! One turn of the learning loop, written once: round → gate → promote or
//! reject. The service's scheduler, `warsha train`, `warsha demo` and
//! `warsha adapters gate` all come through here.
//!
//! The store is the queue. A turn first looks for work a stopped process
//! left behind, in rows: an adapter trained but never gated is gated (and
//! that is the turn); else a paused or interrupted round is resumed from its
//! last checkpoint with the same trajectory; only then does a new round
//! start. A round that runs to its last step is gated at once, so every turn
//! that finishes a round ends in a recorded decision.
//!
//! This module owns the order of those steps and nothing else: it takes an
//! already-loaded base model (the service loads it once and shares it with
//! the query server), never opens the database or takes the writer lock
//! itself, and knows nothing of threads, sockets or the command line. The
//! caller's [`CycleEvent`] hook sees each step boundary and may block there
//! (the service's GPU lease waits in it while a question uses the model);
//! the stop conditions are checked right after it returns.

use serde::Serialize;

use crate::adapters::{evaluate_and_gate, GateError, GateOutcome};
use crate::config::Config;
use crate::data_dir::DataDir;
use crate::eval::inputs::EvalInputs;
use crate::eval::suite::SuiteOptions;
use crate::model::tokenizer::Tok;
use crate::model::Base;
use crate::store::{NewMaterial, Store, StoreError};
use crate::train::round::{self, RoundInputs, RoundOutcome, RoundStatus};
use crate::train::stop::StopWhen;
use crate::train::trainer::StepReport;
use crate::train::TrainError;

/// What a turn needs besides the store (opened read-write by the caller,
/// who holds the data dir's writer lock or is the service's writer).
pub struct CycleInputs<'a> {
    pub config: &'a Config,
    pub data_dir: &'a DataDir,
    /// Loaded once by the caller; never loaded here.
    pub base: &'a Base,
    pub tok: &'a Tok,
    /// How the base is named in the run row and the adapter's config (its path).
    pub base_model: String,
    /// Optimizer steps of a new round (default `[train] max_steps`); a resumed round keeps its own.
    pub steps: Option<usize>,
    /// Window end, stop flag: checked at every step boundary. A round stopped
    /// by them checkpoints and the turn returns [`CycleOutcome::Paused`].
    pub stop: StopWhen<'a>,
    /// Start a new round only when there is [`NewMaterial`] since the last
    /// finished round (the nightly rule); false for an explicit "train now".
    /// Leftover work (an ungated candidate, a paused round) is done either way.
    pub only_if_new: bool,
    /// How the gate's suite runs (the demo trims it for two CPU cores).
    pub suite: SuiteOptions,
}

/// What a turn is doing, for progress lines and the service's STATUS=.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum CycleEvent<'a> {
    /// A candidate left ungated by an earlier process is being gated.
    GatingLeftover { adapter_id: i64 },
    /// A round is about to train: `resume_run` is the run it continues.
    Training { resume_run: Option<i64>, max_steps: usize },
    /// Between optimizer steps: the hook may block here (the GPU lease).
    Step { max_steps: usize, report: &'a StepReport },
    /// The round's candidate is being scored against the incumbent.
    Gating { adapter_id: i64, run_id: i64 },
}

/// How a turn ended. Errors are [`CycleError`].
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CycleOutcome {
    /// The gate promoted `adapter`; it answers questions now.
    Promoted(Gated),
    /// The gate kept the incumbent; `adapter` is `rejected` with the reasons.
    Rejected(Gated),
    /// The round stopped at the window's end or the stop flag after a
    /// checkpoint; the next turn resumes `run_id` with the same trajectory.
    Paused { run_id: i64, round: Box<RoundOutcome> },
    /// No leftover work and nothing new to learn (only with `only_if_new`).
    NothingNew,
}

/// A gate decision reached by a turn.
#[derive(Debug, Clone, Serialize)]
pub struct Gated {
    pub adapter: i64,
    /// The gate's reasons: every measure's before → after, and the verdict.
    pub reasons: Vec<String>,
    /// The round that trained it in this turn (None: a leftover candidate was gated).
    pub round: Option<Box<RoundOutcome>>,
    pub gate: Box<GateOutcome>,
}

impl CycleOutcome {
    fn gated(gate: GateOutcome, round: Option<RoundOutcome>) -> Self {
        let g = Gated {
            adapter: gate.candidate_id,
            reasons: gate.decision.reasons.clone(),
            round: round.map(Box::new),
            gate: Box::new(gate),
        };
        if g.gate.decision.promote {
            CycleOutcome::Promoted(g)
        } else {
            CycleOutcome::Rejected(g)
        }
    }

    /// One word for logs and status lines.
    pub fn word(&self) -> &'static str {
        match self {
            CycleOutcome::Promoted(_) => "promoted",
            CycleOutcome::Rejected(_) => "rejected",
            CycleOutcome::Paused { .. } => "paused",
            CycleOutcome::NothingNew => "nothing new",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Train(Box<TrainError>),
    #[error(transparent)]
    Gate(Box<GateError>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the round ended without an adapter (run #{0})")]
    NoAdapter(i64),
}

impl From<TrainError> for CycleError {
    fn from(e: TrainError) -> Self {
        CycleError::Train(Box::new(e))
    }
}

impl From<GateError> for CycleError {
    fn from(e: GateError) -> Self {
        CycleError::Gate(Box::new(e))
    }
}

/// Run one turn of the loop (see the module's paragraph for the order).
pub fn run_cycle(
    store: &mut Store,
    inp: &CycleInputs<'_>,
    hook: &mut dyn FnMut(&CycleEvent<'_>),
) -> Result<CycleOutcome, CycleError> {
    run_cycle_lending(store, inp, &mut |_, e| hook(e))
}

/// [`run_cycle`] whose hook also gets the store at every event: the
/// service's single writer serves the other threads' writes there (between
/// optimizer steps too) while the turn runs on its thread.
pub fn run_cycle_lending(
    store: &mut Store,
    inp: &CycleInputs<'_>,
    hook: &mut dyn FnMut(&mut Store, &CycleEvent<'_>),
) -> Result<CycleOutcome, CycleError> {
    if let Some(left) = store.ungated_candidates()?.into_iter().next() {
        tracing::info!(adapter = left.id, "gating a candidate an earlier round left ungated");
        hook(store, &CycleEvent::GatingLeftover { adapter_id: left.id });
        let gate = gate(store, inp, left.id)?;
        return Ok(CycleOutcome::gated(gate, None));
    }
    let resumable = store.latest_resumable_run()?;
    if resumable.is_none() && inp.only_if_new {
        let new: NewMaterial = store.new_material()?;
        if !new.any() {
            return Ok(CycleOutcome::NothingNew);
        }
        tracing::info!(?new, "new material since the last round");
    }
    let max_steps = match &resumable {
        Some(r) => r.max_steps.max(0) as usize,
        None => inp.steps.unwrap_or(inp.config.train.max_steps).max(1),
    };
    hook(store, &CycleEvent::Training { resume_run: resumable.as_ref().map(|r| r.id), max_steps });
    let round_inputs = RoundInputs {
        config: inp.config,
        data_dir: inp.data_dir,
        base: inp.base,
        tok: inp.tok,
        base_model: inp.base_model.clone(),
        steps: Some(max_steps),
        resume: resumable.is_some(),
        stop: inp.stop,
    };
    let mut on_step = |s: &mut Store, r: &StepReport| hook(s, &CycleEvent::Step { max_steps, report: r });
    let round = round::run_round_lending(store, round_inputs, &mut on_step)?;
    match round.status {
        RoundStatus::Paused => Ok(CycleOutcome::Paused { run_id: round.run_id, round: Box::new(round) }),
        RoundStatus::Done => {
            let adapter = round.adapter_id.ok_or(CycleError::NoAdapter(round.run_id))?;
            hook(store, &CycleEvent::Gating { adapter_id: adapter, run_id: round.run_id });
            let gate = gate(store, inp, adapter)?;
            Ok(CycleOutcome::gated(gate, Some(round)))
        }
    }
}

/// Gate one adapter (a candidate, or an imported one) with the turn's suite
/// options: score it and the incumbent, decide, promote or reject, record.
/// What `warsha adapters gate ID` runs.
pub fn gate(store: &mut Store, inp: &CycleInputs<'_>, adapter_id: i64) -> Result<GateOutcome, CycleError> {
    gate_with(store, inp.config, inp.data_dir, inp.base, inp.tok, adapter_id, &inp.suite)
}

/// [`gate`] without the round's inputs.
pub fn gate_with(
    store: &mut Store,
    cfg: &Config,
    data: &DataDir,
    base: &Base,
    tok: &Tok,
    adapter_id: i64,
    suite: &SuiteOptions,
) -> Result<GateOutcome, CycleError> {
    let row = store
        .adapter(adapter_id)?
        .ok_or(GateError::from(crate::adapters::AdapterError::NotFound(adapter_id)))?;
    let inputs = EvalInputs::gather(store, cfg, row.data_snapshot.as_ref()).map_err(GateError::from)?;
    let out = evaluate_and_gate(
        store,
        data,
        &cfg.eval,
        cfg.retention.keep_adapters,
        base,
        tok,
        adapter_id,
        &inputs.borrow(),
        suite,
    )?;
    tracing::info!(
        adapter = adapter_id,
        promoted = out.decision.promote,
        reasons = %out.decision.reasons.join("; "),
        "gate decided"
    );
    Ok(out)
}
