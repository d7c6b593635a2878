//! `warsha eval [--adapter ID] [--json]`: run the evaluation suite on one
//! adapter (default: the active one; 0: the bare base model), store the
//! result in `evals`, print it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::Ctx;
use crate::adapters::{base_sha256, load_adapter};
use crate::cli::EvalArgs;
use crate::eval::inputs::EvalInputs;
use crate::eval::suite::{run_suite, SuiteOptions};
use crate::eval::Report;
use crate::train::device::Placement;

pub fn run(ctx: &Ctx, args: EvalArgs) -> Result<()> {
    let Some(model_path) = ctx.config.model_path() else {
        bail!("no base model configured: set [model] path (a .gguf file or safetensors directory)");
    };
    let _lock = ctx.data.lock()?;
    let mut store = ctx.open_store()?;
    let row = match args.adapter {
        Some(0) => None,
        Some(id) => Some(store.adapter(id)?.with_context(|| format!("no adapter with id {id}"))?),
        None => store.active_adapter()?,
    };
    if let Some(r) = &row {
        if r.state == "retired" {
            bail!("adapter {} is retired: its files were deleted", r.id);
        }
    }
    let (base, tok) = ctx.load_base(&model_path)?;
    let adapter = match &row {
        Some(r) => Some(load_adapter(&ctx.data.root().join(&r.path), &base)?),
        None => None,
    };
    let inputs =
        EvalInputs::gather(&store, &ctx.config, row.as_ref().and_then(|r| r.data_snapshot.as_ref()))?;
    let set_dir =
        inputs.eval_set.files.first().and_then(|f| f.parent()).map(Path::to_path_buf).unwrap_or_default();
    let report = run_suite(&base, &tok, adapter.as_ref(), &inputs.borrow(), &SuiteOptions::default())?;
    let metrics = serde_json::to_value(&report.metrics)?;
    let adapter_id = row.as_ref().map(|r| r.id);
    let placement = Placement::of(&base).key();
    store.insert_eval(
        adapter_id,
        base_sha256(&base).as_deref(),
        &placement,
        &report.eval_set_sha256,
        &metrics,
    )?;
    if args.out.json {
        println!("{}", json!({"adapter_id": adapter_id, "eval_set": set_dir, "report": report}));
    } else {
        let who = match &row {
            Some(r) => format!("adapter {} ({})", r.id, r.state),
            None => "the bare base model".to_string(),
        };
        print_report(&who, &set_dir, &report);
    }
    Ok(())
}

pub fn print_report(who: &str, set_dir: &Path, r: &Report) {
    let m = &r.metrics;
    let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    println!("evaluation of {who} on {} ({:.1} s)", set_dir.display(), m.seconds);
    println!("  score                 {:.3}", m.score);
    println!(
        "  held-out loss / ppl   {} / {}  ({} tokens)",
        f(m.heldout_loss),
        f(m.heldout_ppl),
        m.heldout_tokens
    );
    println!("  fact-token loss       {}  ({} tokens)", f(m.fact_loss), m.fact_tokens);
    println!("  answer-token loss     {}  (likelihood {})", f(m.answer_loss), f(m.answer_likelihood));
    println!("  choice accuracy       {}  ({} questions)", f(m.choice_accuracy), m.choice_items);
    println!(
        "  QA exact / F1 / chrF  {} / {} / {}  ({} questions)",
        f(m.qa_exact),
        f(m.qa_f1),
        f(m.qa_chrf),
        m.qa_items
    );
    println!(
        "  perturbed likelihood / accuracy  {} / {}  (drop {}, {} questions)",
        f(m.perturbed_answer_likelihood),
        f(m.perturbed_choice_accuracy),
        f(m.robustness_drop),
        m.perturbed_items
    );
}
