//! A training round end to end, as the CLI, the demo and the service run it:
//! gather the material (or the resumed run's snapshot of it), tokenize and
//! pack it, plan memory, train with checkpoints and per-step metrics until
//! the last step, a stop signal or the deadline, then score the held-out
//! documents, save the adapter (PEFT layout) and register it as a candidate.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;

use super::checkpoint;
use super::dataset::{self, Row, RowStream, Sample};
use super::optim::AdamWParams;
use super::plan::{self, DeviceKind, Dims, MemoryPlan, PlanInput, Recompute};
use super::scaler::LossScaler;
use super::schedule::Schedule;
use super::stop::{StopReason, StopWhen};
use super::trainer::{self, StepReport, Trainer};
use super::TrainError;
use crate::config::Config;
use crate::data_dir::DataDir;
use crate::model::tokenizer::Tok;
use crate::model::{Adapter, Base, LoraConfig, Target};
use crate::store::{DataSnapshot, NewAdapter, StepRow, Store, TrainingSources};

/// What a round needs besides the store.
pub struct RoundInputs<'a> {
    pub config: &'a Config,
    pub data_dir: &'a DataDir,
    /// Loaded once and shared (the service also answers questions with it).
    pub base: &'a Base,
    pub tok: &'a Tok,
    /// How the base is named in the run row and the adapter's config (its path).
    pub base_model: String,
    /// Optimizer steps (default `[train] max_steps`); ignored when resuming.
    pub steps: Option<usize>,
    /// Continue the latest paused/interrupted run when there is one.
    pub resume: bool,
    pub stop: StopWhen<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoundStatus {
    /// All steps ran; the adapter is saved and registered as a candidate.
    Done,
    /// Stopped early (signal or deadline) at a checkpoint; the next round resumes it.
    Paused,
}

/// The result of [`run_round`].
#[derive(Debug, Clone, Serialize)]
pub struct RoundOutcome {
    pub run_id: i64,
    pub status: RoundStatus,
    pub stop_reason: Option<StopReason>,
    pub resumed_from_step: Option<usize>,
    pub steps_done: usize,
    pub max_steps: usize,
    pub last_loss: Option<f64>,
    pub heldout_loss: Option<f64>,
    pub adapter_id: Option<i64>,
    pub adapter_dir: Option<PathBuf>,
    pub checkpoint: Option<PathBuf>,
    pub plan: MemoryPlan,
    pub samples: SampleCounts,
}

/// How much material a round learns from.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SampleCounts {
    pub train_documents: usize,
    pub heldout_documents: usize,
    pub qa_samples: usize,
    pub review_samples: usize,
    pub doc_rows: usize,
    pub qa_rows: usize,
    pub qa_repeat: usize,
    pub heldout_rows: usize,
}

/// Tokenized material, before packing (kept so an out-of-memory back-off to a
/// shorter sequence can repack it).
pub struct Material {
    pub doc: Vec<Sample>,
    pub chat: Vec<Sample>,
    pub heldout: Vec<Sample>,
    pub counts: SampleCounts,
}

/// The LoRA settings of `[lora]`.
pub fn lora_config(cfg: &Config) -> Result<LoraConfig, TrainError> {
    let targets = cfg
        .lora
        .targets
        .iter()
        .map(|t| t.parse::<Target>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(TrainError::from_model)?;
    Ok(LoraConfig { rank: cfg.lora.rank, alpha: cfg.lora.alpha, dropout: cfg.lora.dropout, targets })
}

/// Split documents, pin the snapshot, and tokenize everything.
pub fn snapshot_of(sources: &TrainingSources, cfg: &Config) -> DataSnapshot {
    let docs: Vec<(i64, String)> = sources.docs.iter().map(|d| (d.id, d.sha256.clone())).collect();
    let (train, held) = dataset::split_documents(&docs, cfg.train.heldout_fraction, cfg.train.seed);
    DataSnapshot {
        train_documents: train,
        heldout_documents: held,
        qa_pairs: sources.qa.iter().map(|q| q.id).collect(),
        reviews: sources.reviews.iter().map(|r| r.id).collect(),
    }
}

/// Token samples from the material: each chunk (BOS/EOS as the model asks)
/// is a causal sample; Q&A pairs and reviewed answers are chat samples with
/// loss on the answer only. Text stays in train form (diacritics, ة, ى).
pub fn tokenize(
    sources: &TrainingSources,
    snap: &DataSnapshot,
    tok: &Tok,
    seq_len: usize,
) -> Result<Material, TrainError> {
    let tk = |e: crate::model::tokenizer::TokError| TrainError::Tokenize(e.to_string());
    let mut m =
        Material { doc: Vec::new(), chat: Vec::new(), heldout: Vec::new(), counts: SampleCounts::default() };
    for d in &sources.docs {
        let held = snap.heldout_documents.contains(&d.id);
        if !held && !snap.train_documents.contains(&d.id) {
            continue;
        }
        for chunk in &d.chunks {
            let ids = tok.encode_document(chunk).map_err(tk)?;
            let parts = dataset::split_long(Sample::causal(ids), seq_len);
            if held {
                m.heldout.extend(parts);
            } else {
                m.doc.extend(parts);
            }
        }
        if held {
            m.counts.heldout_documents += 1;
        } else {
            m.counts.train_documents += 1;
        }
    }
    for q in &sources.qa {
        let (ids, mask) = tok.chat_sample(q.system.as_deref(), &q.question, &q.answer).map_err(tk)?;
        if let Some(s) = dataset::truncate_chat(Sample { ids, loss_on: mask }, seq_len) {
            m.chat.push(s);
            m.counts.qa_samples += 1;
        }
    }
    for r in &sources.reviews {
        let (ids, mask) = tok.chat_sample(None, &r.question, &r.answer).map_err(tk)?;
        if let Some(s) = dataset::truncate_chat(Sample { ids, loss_on: mask }, seq_len) {
            m.chat.push(s);
            m.counts.review_samples += 1;
        }
    }
    Ok(m)
}

/// Pack the material at `seq_len` into a seeded row stream and held-out rows.
pub fn pack(m: &Material, seq_len: usize, seed: u64) -> (RowStream, Vec<Row>) {
    let resplit = |v: &[Sample]| -> Vec<Sample> {
        v.iter().flat_map(|s| dataset::split_long(s.clone(), seq_len)).collect()
    };
    let chat: Vec<Sample> =
        m.chat.iter().filter_map(|s| dataset::truncate_chat(s.clone(), seq_len)).collect();
    let stream =
        RowStream::new(dataset::pack(&resplit(&m.doc), seq_len), dataset::pack(&chat, seq_len), seed);
    let held = dataset::pack(&resplit(&m.heldout), seq_len);
    (stream, held)
}

/// The planner's inputs for this base and LoRA setup.
pub fn plan_input(base: &Base, lora: &LoraConfig, host_data_bytes: u64) -> PlanInput {
    let c = &base.config;
    let per_layer: usize = lora
        .targets
        .iter()
        .map(|&t| {
            let (o, i) = c.proj_shape(t);
            lora.rank * (o + i)
        })
        .sum();
    PlanInput {
        dims: Dims {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            layers: c.num_layers,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            vocab: c.vocab_size,
        },
        device: if base.device().is_cpu() { DeviceKind::Cpu } else { DeviceKind::Cuda },
        weight_bytes: base.weight_bytes() as u64,
        dense_bytes: if base.device().is_cpu() { super::dense::dense_bytes(base, base.dtype()) } else { 0 },
        lora_params: (per_layer * c.num_layers) as u64,
        rank: lora.rank,
        targets_per_block: lora.targets.len(),
        act_bytes: base.dtype().size_in_bytes(),
        ce_chunk: crate::model::DEFAULT_CE_CHUNK,
        host_data_bytes,
    }
}

/// Plan the step shape for `[train]` within the device's budget.
pub fn plan_for(cfg: &Config, inp: &PlanInput, max_position: usize) -> Result<MemoryPlan, TrainError> {
    let t = &cfg.train;
    let seq = t.seq_len.min(max_position);
    let shapes = plan::candidates(seq, t.micro_batch, t.grad_accum, Recompute::parse(&t.recompute));
    let budget = match inp.device {
        DeviceKind::Cpu => t.host_budget_mib,
        DeviceKind::Cuda => cfg.gpu.vram_budget_mib,
    };
    Ok(plan::choose(inp, budget, &shapes)?)
}

/// Bytes a tokenizer of `vocab` entries and `rows` packed rows hold in memory.
pub fn host_data_bytes(vocab: usize, rows: usize, seq_len: usize) -> u64 {
    // Vocabulary, merges and lookup tables: about 400 bytes per entry in the tokenizers crate.
    (vocab * 400 + rows * seq_len * 13) as u64
}

fn loss_scaler_for(base: &Base) -> LossScaler {
    if base.dtype() == candle_core::DType::F16 {
        LossScaler::dynamic()
    } else {
        LossScaler::disabled()
    }
}

fn run_config(cfg: &Config, base: &Base, plan: &MemoryPlan, max_steps: usize) -> serde_json::Value {
    json!({
        "lora": cfg.lora,
        "train": cfg.train,
        "max_steps": max_steps,
        "device": if base.device().is_cpu() { "cpu" } else { "cuda" },
        "dtype": format!("{:?}", base.dtype()).to_lowercase(),
        "plan": plan,
    })
}

/// Run (or resume) one training round. Progress goes to `on_step` after each
/// optimizer step; the run row and its steps are kept current in `store`.
pub fn run_round(
    store: &mut Store,
    inp: RoundInputs<'_>,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<RoundOutcome, TrainError> {
    run_round_lending(store, inp, &mut |_, r| on_step(r))
}

/// [`run_round`] whose step-boundary callback also gets the store back between
/// steps: the service's one writer keeps serving other threads' writes (and
/// waits out a question holding the model) there while a round trains.
pub fn run_round_lending(
    store: &mut Store,
    inp: RoundInputs<'_>,
    on_step: &mut dyn FnMut(&mut Store, &StepReport),
) -> Result<RoundOutcome, TrainError> {
    let cfg = inp.config;
    let base_sha = inp.base.files().first().map(|(_, s)| s.clone());
    let previous = if inp.resume { store.latest_resumable_run()? } else { None };
    if previous.is_none() {
        let n = store.mark_stale_runs_interrupted()?;
        if n > 0 {
            tracing::info!(runs = n, "runs left running by a stopped process marked interrupted");
        }
    }
    let (run_id, snap, max_steps) = match &previous {
        Some(r) => {
            if let (Some(want), Some(have)) = (&r.base_sha256, &base_sha) {
                if want != have {
                    return Err(TrainError::ResumeMismatch {
                        run_id: r.id,
                        reason: format!("it trained base sha256 {want}, the loaded model is {have}"),
                    });
                }
            }
            (r.id, r.data_snapshot.clone(), r.max_steps.max(0) as usize)
        }
        None => {
            let sources = store.training_sources()?;
            let snap = snapshot_of(&sources, cfg);
            if snap.train_documents.is_empty() && snap.qa_pairs.is_empty() && snap.reviews.is_empty() {
                return Err(TrainError::NoData);
            }
            let steps = inp.steps.unwrap_or(cfg.train.max_steps).max(1);
            let id = store.create_run(&inp.base_model, base_sha.as_deref(), &json!({}), &snap, steps)?;
            (id, snap, steps)
        }
    };
    match round_body(store, &inp, run_id, &snap, max_steps, previous.is_some(), on_step) {
        Ok(o) => Ok(o),
        Err(e) => {
            let msg = e.to_string();
            if let Err(se) = store.set_run_status(run_id, "failed", Some(&msg), true) {
                tracing::error!(run_id, error = %se, "could not mark the run failed");
            }
            Err(e)
        }
    }
}

fn round_body(
    store: &mut Store,
    inp: &RoundInputs<'_>,
    run_id: i64,
    snap: &DataSnapshot,
    max_steps: usize,
    resuming: bool,
    on_step: &mut dyn FnMut(&mut Store, &StepReport),
) -> Result<RoundOutcome, TrainError> {
    let cfg = inp.config;
    let base = inp.base;
    let ckpt_dir = inp.data_dir.checkpoints().join(format!("run-{run_id}"));
    store.set_run_checkpoint_dir(run_id, &format!("checkpoints/run-{run_id}"))?;
    let loaded = if resuming { checkpoint::load_latest(&ckpt_dir, base.device())? } else { None };
    let lora = lora_config(cfg)?;
    let seed = loaded.as_ref().map(|l| l.state.seed).unwrap_or(cfg.train.seed);

    let sources = store.training_sources_for(snap)?;
    // Plan on the configured shape unless a checkpoint fixes it (the data order depends on it).
    let probe = plan_input(base, &lora, host_data_bytes(inp.tok.vocab_size(), 0, cfg.train.seq_len));
    let mut plan = plan_for(cfg, &probe, base.config.max_position)?;
    if let Some(l) = &loaded {
        plan.estimate = plan::estimate(&probe, &l.state.shape, plan.dense_weights);
        plan.shape = l.state.shape;
    }
    let material = tokenize(&sources, snap, inp.tok, plan.shape.seq_len)?;
    let (mut stream, mut heldout) = pack(&material, plan.shape.seq_len, seed);
    if stream.is_empty() {
        return Err(TrainError::NoData);
    }
    let mut counts = material.counts;
    let fill_counts = |c: &mut SampleCounts, s: &RowStream, h: &[Row]| {
        (c.doc_rows, c.qa_rows) = s.counts();
        c.qa_repeat = s.qa_repeat();
        c.heldout_rows = h.len();
    };
    fill_counts(&mut counts, &stream, &heldout);

    let dense_base = if plan.dense_weights { Some(super::dense::densify(base)?) } else { None };
    let base = dense_base.as_ref().unwrap_or(base);
    let adapter = Adapter::new(&base.config, &lora, seed, base.device()).map_err(TrainError::from_model)?;
    let schedule = Schedule::new(cfg.train.lr, cfg.train.warmup_steps, max_steps);
    let adam = AdamWParams { weight_decay: cfg.train.weight_decay, ..Default::default() };
    let mut tr = Trainer::new(
        base,
        &adapter,
        plan.shape,
        schedule,
        loss_scaler_for(base),
        adam,
        cfg.train.grad_clip,
        seed,
    )?;
    let resumed_from_step = match loaded {
        Some(l) => {
            tracing::info!(run_id, step = l.state.step, path = %l.path.display(), "resuming from checkpoint");
            tr.restore(l, &mut stream)?;
            Some(tr.step)
        }
        None => None,
    };
    store.truncate_steps(run_id, tr.step as i64)?;
    store.set_run_status(run_id, "running", None, false)?;
    store.set_run_config(run_id, &run_config(cfg, base, &plan, max_steps))?;

    let keep = cfg.retention.keep_checkpoints;
    let mut last_loss = None;
    let mut stop_reason = None;
    while tr.step < max_steps {
        if let Some(r) = inp.stop.check() {
            stop_reason = Some(r);
            break;
        }
        let rep = loop {
            match tr.step(&mut stream) {
                Ok(r) => break r,
                Err(TrainError::OutOfMemory(msg)) => {
                    let before = tr.shape;
                    if !tr.back_off() {
                        return Err(TrainError::OutOfMemory(msg));
                    }
                    if tr.shape.seq_len != before.seq_len {
                        // Shorter rows: repack and keep the epoch, at the same share of it.
                        let pos = stream.position();
                        let share = pos.index as f64 / stream.epoch_len().max(1) as f64;
                        (stream, heldout) = pack(&material, tr.shape.seq_len, seed);
                        let index = (share * stream.epoch_len() as f64) as u64;
                        stream.seek(dataset::Position { epoch: pos.epoch, index });
                        fill_counts(&mut counts, &stream, &heldout);
                    }
                    plan.shape = tr.shape;
                    plan.estimate = plan::estimate(&probe, &tr.shape, plan.dense_weights);
                    store.set_run_config(run_id, &run_config(cfg, base, &plan, max_steps))?;
                    store.event(
                        crate::store::Level::Warn,
                        "train",
                        "out of memory: training continues with a smaller step",
                        Some(json!({"run_id": run_id, "from": before, "to": tr.shape, "error": msg})),
                    )?;
                }
                Err(e) => return Err(e),
            }
        };
        store.record_step(
            run_id,
            &StepRow {
                step: rep.step as i64,
                loss: rep.loss,
                lr: rep.lr,
                grad_norm: rep.grad_norm,
                tokens_per_s: Some(rep.positions_per_s),
                peak_mem_mib: rep.peak_mem_bytes.map(|b| b as f64 / (1024.0 * 1024.0)),
            },
        )?;
        if rep.loss.is_finite() {
            last_loss = Some(rep.loss);
        }
        on_step(store, &rep);
        if tr.step % cfg.train.checkpoint_every == 0 && tr.step < max_steps {
            tr.save(&ckpt_dir, run_id, &stream, keep)?;
        }
    }
    let last_ckpt = Some(tr.save(&ckpt_dir, run_id, &stream, keep)?);
    let mut out = RoundOutcome {
        run_id,
        status: RoundStatus::Paused,
        stop_reason,
        resumed_from_step,
        steps_done: tr.step,
        max_steps,
        last_loss,
        heldout_loss: None,
        adapter_id: None,
        adapter_dir: None,
        checkpoint: last_ckpt,
        plan,
        samples: counts,
    };
    if stop_reason.is_some() {
        store.set_run_status(run_id, "paused", None, false)?;
        return Ok(out);
    }
    let heldout_loss = trainer::eval_loss(base, Some(&adapter), &heldout, tr.shape.micro_batch)?;
    let rel = PathBuf::from("adapters").join(format!("run-{run_id}"));
    let dir = inp.data_dir.root().join(&rel);
    let (sha, bytes) = save_adapter(&adapter, &dir, &inp.base_model)?;
    let targets: Vec<String> = lora.targets.iter().map(|t| peft_leaf(*t).to_string()).collect();
    let rel_s = rel.to_string_lossy().to_string();
    let adapter_id = store.insert_candidate_adapter(&NewAdapter {
        run_id,
        path: &rel_s,
        sha256: &sha,
        bytes: bytes as i64,
        base_sha256: base_sha_of(base).as_deref(),
        rank: lora.rank as i64,
        alpha: lora.alpha,
        targets: &targets,
        data_snapshot: snap,
    })?;
    store.finish_run(run_id, heldout_loss, Some(adapter_id), &snap.reviews)?;
    out.status = RoundStatus::Done;
    out.heldout_loss = heldout_loss;
    out.adapter_id = Some(adapter_id);
    out.adapter_dir = Some(dir);
    Ok(out)
}

fn base_sha_of(base: &Base) -> Option<String> {
    base.files().first().map(|(_, s)| s.clone())
}

/// PEFT's module name for a target ("q_proj", "gate_proj", …).
pub fn peft_leaf(t: Target) -> &'static str {
    let m = t.peft_module();
    m.rsplit('.').next().unwrap_or(m)
}

/// Write `adapter_model.safetensors` and `adapter_config.json` (PEFT layout)
/// into `dir`; returns the weights file's sha256 and size.
pub fn save_adapter(adapter: &Adapter, dir: &Path, base_model: &str) -> Result<(String, u64), TrainError> {
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Io { path: dir.to_path_buf(), source })?;
    let weights = dir.join("adapter_model.safetensors");
    adapter.save_safetensors(&weights).map_err(TrainError::from_model)?;
    let l = adapter.lora();
    let cfg = json!({
        "base_model_name_or_path": base_model,
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": l.rank,
        "lora_alpha": l.alpha,
        "lora_dropout": l.dropout,
        "target_modules": l.targets.iter().map(|t| peft_leaf(*t)).collect::<Vec<_>>(),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "use_rslora": false,
        "use_dora": false,
    });
    let text = serde_json::to_string_pretty(&cfg).unwrap_or_default();
    checkpoint::write_atomic(&dir.join("adapter_config.json"), text.as_bytes())?;
    let sha = crate::model::sha256_file(&weights).map_err(TrainError::from_model)?;
    let bytes = std::fs::metadata(&weights)
        .map(|m| m.len())
        .map_err(|source| TrainError::Io { path: weights, source })?;
    Ok((sha, bytes))
}
