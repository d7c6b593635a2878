//! `warsha train`: one turn of the loop now (`cycle::run_cycle`): gate a
//! candidate an earlier round left ungated, resume a paused round or start
//! one on the data dir's material, then gate the new adapter — promoted or
//! rejected like the nightly round. `--plan` prints the memory plan instead.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Ctx;
use crate::cli::TrainArgs;
use crate::cycle::{run_cycle, CycleEvent, CycleInputs, CycleOutcome};
use crate::eval::suite::SuiteOptions;
use crate::model::tokenizer::Tok;
use crate::model::Base;
use crate::train::round::{self, RoundOutcome, RoundStatus};
use crate::train::stop::StopWhen;
use crate::train::{device, install_stop_signals, window_deadline, LocalTime};

pub fn run(ctx: &Ctx, args: TrainArgs) -> Result<()> {
    if !args.plan {
        if let Some(mut conn) = super::serve::service(ctx)? {
            let verb = if args.resume {
                serde_json::json!({"verb": "resume"})
            } else {
                serde_json::json!({"verb": "train-now", "steps": args.steps})
            };
            return super::serve::call(
                &mut conn,
                verb,
                args.out.json,
                "round started; `warsha status` follows it",
            );
        }
    }
    let cfg = &ctx.config;
    let model_path = cfg.model_path().context(
        "no base model configured: set [model] path (a .gguf file or a safetensors directory; \
         relative paths are taken inside <data_dir>/models)",
    )?;
    if !model_path.exists() {
        bail!("base model {} does not exist ([model] path)", model_path.display());
    }
    ctx.data.create()?;
    let _lock = ctx.data.lock()?;
    let mut store = ctx.open_store()?;
    let (base, tok) = ctx.load_base(&model_path)?;

    if args.plan {
        return print_plan(ctx, &base, &tok, &mut store, args.out.json);
    }
    if args.resume && store.latest_resumable_run()?.is_none() {
        bail!("no paused or interrupted training run to resume");
    }
    let flag = install_stop_signals().context("installing the SIGTERM handler")?;
    let now = Instant::now();
    let mut deadline = args.max_minutes.map(|m| now + Duration::from_secs_f64(m.max(0.0) * 60.0));
    if let Some(left) = window_deadline(LocalTime::now(), cfg) {
        // Inside the nightly window its end also stops the round (outside it, a manual round runs on).
        let end = now + left;
        deadline = Some(deadline.map_or(end, |d| d.min(end)));
    }
    let inputs = CycleInputs {
        config: cfg,
        data_dir: &ctx.data,
        base: &base,
        tok: &tok,
        base_model: model_path.display().to_string(),
        steps: args.steps,
        stop: StopWhen { flag: Some(flag), deadline },
        only_if_new: false,
        suite: SuiteOptions::default(),
    };
    let json = args.out.json;
    let mut bar: Option<ProgressBar> = None;
    let mut hook = |e: &CycleEvent<'_>| {
        match e {
            CycleEvent::Training { max_steps, .. } => bar = Some(progress_bar(json, *max_steps)),
            CycleEvent::Step { report: r, .. } => {
                if let Some(b) = &bar {
                    b.set_position(r.step as u64);
                    b.set_message(format!(
                        "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                        r.loss, r.lr, r.positions_per_s
                    ));
                }
            }
            CycleEvent::Gating { .. } | CycleEvent::GatingLeftover { .. } => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
        }
        if json {
            emit(&serde_json::json!(e));
        } else if let CycleEvent::GatingLeftover { adapter_id } = e {
            println!("gating adapter #{adapter_id}, trained by an earlier round that ended before its gate");
        } else if let CycleEvent::Gating { adapter_id, .. } = e {
            println!("gating adapter #{adapter_id}: scoring it and the active model on the eval set");
        }
    };
    // A candidate left ungated by a stopped process is gated first; then this round trains.
    let out = loop {
        let out = run_cycle(&mut store, &inputs, &mut hook)?;
        match &out {
            CycleOutcome::Promoted(g) | CycleOutcome::Rejected(g) if g.round.is_none() => {
                report(&out, json);
                continue;
            }
            _ => break out,
        }
    };
    if let Some(b) = bar.take() {
        b.finish_and_clear();
    }
    report(&out, json);
    Ok(())
}

/// A progress line on stdout: best-effort (a reader that went away must not stop the round).
fn emit(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}").and_then(|_| out.flush());
}

fn report(out: &CycleOutcome, json: bool) {
    let (round, gate) = match out {
        CycleOutcome::Promoted(g) | CycleOutcome::Rejected(g) => (g.round.as_deref(), Some(&*g.gate)),
        CycleOutcome::Paused { round, .. } => (Some(&**round), None),
        CycleOutcome::NothingNew => (None, None),
    };
    if json {
        // `outcome` is the round's (status done/paused); `gate` the decision.
        emit(&serde_json::json!({
            "event": if round.is_some() { "done" } else { "gated" },
            "result": out.word(),
            "outcome": round,
            "gate": gate.map(|g| serde_json::json!({
                "adapter": g.candidate_id,
                "promoted": g.decision.promote,
                "reasons": g.decision.reasons,
                "incumbent": g.incumbent_id,
                "score": {"candidate": g.candidate.metrics.score, "incumbent": g.incumbent.score},
            })),
        }));
        return;
    }
    if let Some(out) = round {
        print_round(out);
    }
    if let Some(g) = gate {
        let incumbent =
            g.incumbent_id.map(|i| format!("adapter #{i}")).unwrap_or_else(|| "the bare base model".into());
        println!(
            "gate            adapter #{} {} (against {incumbent})",
            g.candidate_id,
            if g.decision.promote {
                "promoted: it answers questions now"
            } else {
                "rejected: the active model stays"
            }
        );
        for r in &g.decision.reasons {
            println!("  {r}");
        }
    }
}

fn print_round(out: &RoundOutcome) {
    let s = &out.samples;
    println!(
        "run #{}: {} at step {}/{}{}",
        out.run_id,
        match out.status {
            RoundStatus::Done => "done",
            RoundStatus::Paused => "paused",
        },
        out.steps_done,
        out.max_steps,
        out.resumed_from_step.map(|s| format!(" (resumed from step {s})")).unwrap_or_default()
    );
    println!(
        "data            {} documents ({} held out), {} Q&A + {} reviewed samples; {} document rows, {} Q&A rows x{}",
        s.train_documents, s.heldout_documents, s.qa_samples, s.review_samples, s.doc_rows, s.qa_rows, s.qa_repeat
    );
    let p = &out.plan;
    println!(
        "shape           seq {}, micro-batch {} x {} accumulation, recompute {}; predicted peak {:.0} MiB of {} MiB",
        p.shape.seq_len, p.shape.micro_batch, p.shape.grad_accum, p.shape.recompute, p.estimate.total_mib(), p.budget_mib
    );
    if let Some(l) = out.last_loss {
        println!("last step loss  {l:.4} (per-token cross-entropy)");
    }
    match out.status {
        RoundStatus::Done => {
            if let Some(h) = out.heldout_loss {
                println!("held-out loss   {h:.4}");
            }
            if let (Some(id), Some(dir)) = (out.adapter_id, &out.adapter_dir) {
                println!("adapter         #{id} in {}", dir.display());
            }
        }
        RoundStatus::Paused => {
            let why = match out.stop_reason {
                Some(crate::train::StopReason::Signal) => "stop signal",
                _ => "deadline",
            };
            println!("stopped         {why}; the next `warsha train` continues from the checkpoint");
        }
    }
}

fn progress_bar(json: bool, total: usize) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn print_plan(ctx: &Ctx, base: &Base, tok: &Tok, store: &mut crate::store::Store, json: bool) -> Result<()> {
    let cfg = &ctx.config;
    let lora = round::lora_config(cfg)?;
    let sources = store.training_sources()?;
    let snap = round::snapshot_of(&sources, cfg);
    let material = round::tokenize(&sources, &snap, tok, cfg.train.seq_len)?;
    let (stream, held) = round::pack(&material, cfg.train.seq_len, cfg.train.seed);
    let rows = stream.counts().0 + stream.counts().1 + held.len();
    let inp =
        round::plan_input(base, &lora, round::host_data_bytes(tok.vocab_size(), rows, cfg.train.seq_len));
    let plan = round::plan_for(cfg, &inp, base.config.max_position)?;
    if json {
        println!("{}", serde_json::json!({"plan": plan, "input": inp, "samples": material.counts}));
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let e = &plan.estimate;
    println!(
        "shape           seq {}, micro-batch {} x {} accumulation, recompute {}",
        plan.shape.seq_len, plan.shape.micro_batch, plan.shape.grad_accum, plan.shape.recompute
    );
    println!("budget          {} MiB ({})", plan.budget_mib, device::name(base.device()));
    println!("predicted peak  {:.0} MiB", e.total_mib());
    println!("  weights       {:.0} MiB", mib(e.weights));
    println!("  lora+adam     {:.0} MiB ({} parameters)", mib(e.lora), inp.lora_params);
    println!("  activations   {:.0} MiB", mib(e.activations));
    println!("  logits        {:.0} MiB", mib(e.logits));
    println!("  data+tok      {:.0} MiB", mib(e.data));
    println!("  runtime       {:.0} MiB", mib(e.runtime));
    for (s, need) in &plan.rejected {
        println!(
            "  (did not fit: seq {}, micro-batch {}, recompute {}: ~{need} MiB)",
            s.seq_len, s.micro_batch, s.recompute
        );
    }
    Ok(())
}
