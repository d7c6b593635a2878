//! After a training round: score the candidate and the incumbent (the
//! active adapter, or the bare base model) on the same inputs, let the gate
//! decide, and record everything — both evaluations in `evals`, the
//! candidate's figures and reasons on its row, and the state switch
//! (promoted atomically, or rejected with the reasons).
//!
//! The incumbent is not re-scored when an evaluation of it on exactly the
//! same inputs (eval set, held-out text, reviews, options; see
//! `eval::suite::inputs_sha256`), base model and placement (device, dtype,
//! quantization) is already stored.

use serde::Serialize;
use serde_json::json;

use super::registry::{promote, Switch};
use super::runtime::{base_sha256, load_adapter};
use super::AdapterError;
use crate::config::Config;
use crate::data_dir::DataDir;
use crate::eval::gate::{decide, Decision, EvalConfig};
use crate::eval::inputs::{EvalInputs, InputsError};
use crate::eval::suite::{inputs_sha256, run_suite, EvalError, SuiteInputs, SuiteOptions};
use crate::eval::{Metrics, Report};
use crate::model::tokenizer::Tok;
use crate::model::Base;
use crate::store::evals::EvalPlacement;
use crate::store::Store;
use crate::train::device::Placement;

/// Everything `evaluate_and_gate` decided and measured.
/// What can stop a gating pass (boxed: the model's errors are large).
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Adapter(Box<AdapterError>),
    #[error(transparent)]
    Eval(Box<EvalError>),
    #[error(transparent)]
    Inputs(Box<InputsError>),
}

impl From<AdapterError> for GateError {
    fn from(e: AdapterError) -> Self {
        GateError::Adapter(Box::new(e))
    }
}

impl From<EvalError> for GateError {
    fn from(e: EvalError) -> Self {
        GateError::Eval(Box::new(e))
    }
}

impl From<InputsError> for GateError {
    fn from(e: InputsError) -> Self {
        GateError::Inputs(Box::new(e))
    }
}

impl From<crate::store::StoreError> for GateError {
    fn from(e: crate::store::StoreError) -> Self {
        GateError::Adapter(Box::new(AdapterError::Store(e)))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GateOutcome {
    pub candidate_id: i64,
    /// None: the bare base model was the incumbent.
    pub incumbent_id: Option<i64>,
    pub candidate: Report,
    pub incumbent: Metrics,
    /// True when the incumbent's figures came from a stored evaluation.
    pub incumbent_reused: bool,
    pub decision: Decision,
    /// The registry switch when promoted.
    pub switch: Option<Switch>,
}

/// Score `candidate_id` and the incumbent, decide, record. The candidate
/// must be in state `candidate` or `imported`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_and_gate(
    store: &mut Store,
    data: &DataDir,
    eval_cfg: &EvalConfig,
    keep_adapters: usize,
    base: &Base,
    tok: &Tok,
    candidate_id: i64,
    inputs: &SuiteInputs<'_>,
    opts: &SuiteOptions,
) -> Result<GateOutcome, GateError> {
    let row = store.adapter(candidate_id)?.ok_or(AdapterError::NotFound(candidate_id))?;
    if row.state != "candidate" && row.state != "imported" {
        return Err(AdapterError::State {
            id: candidate_id,
            state: row.state,
            why: "only a candidate or imported adapter goes through the gate".into(),
        }
        .into());
    }
    let base_sha = base_sha256(base);
    let placement = Placement::of(base).key();
    let set_hash = inputs.eval_set.sha256.clone();
    let want = inputs_sha256(inputs, opts);

    let active = store.active_adapter()?;
    let incumbent_id = active.as_ref().map(|r| r.id);
    let stored = store
        .latest_eval(incumbent_id, base_sha.as_deref(), &placement, &set_hash)?
        .and_then(|e| serde_json::from_value::<Metrics>(e.metrics).ok())
        .filter(|m| m.inputs_sha256 == want);
    let (incumbent, reused) = match stored {
        Some(m) => (m, true),
        None => {
            let adapter = match &active {
                Some(r) => Some(load_adapter(&data.root().join(&r.path), base)?),
                None => None,
            };
            let rep = run_suite(base, tok, adapter.as_ref(), inputs, opts)?;
            record(store, incumbent_id, base_sha.as_deref(), &placement, &rep)?;
            (rep.metrics, false)
        }
    };

    let adapter = load_adapter(&data.root().join(&row.path), base)?;
    let candidate = run_suite(base, tok, Some(&adapter), inputs, opts)?;
    record(store, Some(candidate_id), base_sha.as_deref(), &placement, &candidate)?;
    let decision = decide(&candidate.metrics, &incumbent, eval_cfg);
    let reasons = json!({
        "promote": decision.promote,
        "reasons": decision.reasons,
        "incumbent": incumbent_id,
    });
    let figures = json!({"candidate": candidate.metrics, "incumbent": incumbent});
    store.set_adapter_metrics(candidate_id, &figures)?;
    let switch = if decision.promote {
        Some(promote(store, data, candidate_id, Some(&reasons), keep_adapters)?)
    } else {
        store.set_adapter_state(candidate_id, "rejected", Some(&reasons))?;
        None
    };
    Ok(GateOutcome {
        candidate_id,
        incumbent_id,
        candidate,
        incumbent,
        incumbent_reused: reused,
        decision,
        switch,
    })
}

/// [`evaluate_and_gate`] with everything taken from the data dir: the
/// candidate's recorded held-out split, the eval set, the unused reviews,
/// the `[eval]` margins and `[retention] keep_adapters` from `cfg`, and the
/// default suite options. What the service and the demo call after a round.
pub fn gate_candidate(
    store: &mut Store,
    data: &DataDir,
    cfg: &Config,
    base: &Base,
    tok: &Tok,
    candidate_id: i64,
) -> Result<GateOutcome, GateError> {
    let row = store.adapter(candidate_id)?.ok_or(AdapterError::NotFound(candidate_id))?;
    let inputs = EvalInputs::gather(store, cfg, row.data_snapshot.as_ref())?;
    let opts = SuiteOptions::default();
    evaluate_and_gate(
        store,
        data,
        &cfg.eval,
        cfg.retention.keep_adapters,
        base,
        tok,
        candidate_id,
        &inputs.borrow(),
        &opts,
    )
}

fn record(
    store: &mut Store,
    adapter_id: Option<i64>,
    base_sha: Option<&str>,
    placement: &EvalPlacement,
    rep: &Report,
) -> Result<i64, GateError> {
    let metrics = serde_json::to_value(&rep.metrics).unwrap_or_default();
    Ok(store.insert_eval(adapter_id, base_sha, placement, &rep.eval_set_sha256, &metrics)?)
}
