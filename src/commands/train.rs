//! `warsha train`: run (or resume) a training round on the data dir's
//! material with the configured base model, or print the memory plan.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Ctx;
use crate::cli::TrainArgs;
use crate::model::tokenizer::Tok;
use crate::model::Base;
use crate::train::round::{self, RoundInputs, RoundStatus};
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
            return super::serve::call(&mut conn, verb, args.out.json, "round started; `warsha status` follows it");
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
    let steps_total = if args.resume { None } else { Some(args.steps.unwrap_or(cfg.train.max_steps)) };
    let bar = progress_bar(args.out.json, steps_total);
    let inputs = RoundInputs {
        config: cfg,
        data_dir: &ctx.data,
        base: &base,
        tok: &tok,
        base_model: model_path.display().to_string(),
        steps: args.steps,
        resume: args.resume,
        stop: StopWhen { flag: Some(flag), deadline },
    };
    let json = args.out.json;
    let mut on_step = |r: &crate::train::trainer::StepReport| {
        bar.set_position(r.step as u64);
        bar.set_message(format!("loss {:.4}  lr {:.2e}  {:.0} tok/s", r.loss, r.lr, r.positions_per_s));
        if json {
            if let Ok(line) = serde_json::to_string(&serde_json::json!({"event": "step", "step": r})) {
                // A reader that went away must not stop the round: progress lines are best-effort.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}").and_then(|_| out.flush());
            }
        }
    };
    let out = round::run_round(&mut store, inputs, &mut on_step)?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::json!({"event": "done", "outcome": out}));
        return Ok(());
    }
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
                println!("adapter         #{id} (candidate) in {}", dir.display());
            }
        }
        RoundStatus::Paused => {
            let why = match out.stop_reason {
                Some(crate::train::StopReason::Signal) => "stop signal",
                _ => "deadline",
            };
            println!("stopped         {why}; `warsha train --resume` continues from the checkpoint");
        }
    }
    Ok(())
}

fn progress_bar(json: bool, total: Option<usize>) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(total.map(|t| t as u64), ProgressDrawTarget::stderr());
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
