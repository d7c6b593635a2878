//! `warsha eval [--adapter ID] [--json]`: run the evaluation suite on one
//! adapter (default: the active one; 0: the bare base model), store the
//! result in `evals`, print it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::Ctx;
use crate::adapters::gating::{base_sha256, load_adapter};
use crate::cli::EvalArgs;
use crate::eval::suite::{run_suite, ReviewItem, SuiteInputs, SuiteOptions};
use crate::eval::{EvalSet, Report};
use crate::model::tokenizer::Tok;
use crate::model::{Base, LoadOptions};
use crate::store::Store;

/// Where the eval set is looked for, in order: the operator's own set in
/// `<data_dir>/eval/`, the installed one, the source tree's `assets/eval/`.
pub fn eval_set_dir(ctx: &Ctx) -> Option<PathBuf> {
    let mut candidates = vec![ctx.data.root().join("eval"), PathBuf::from("/usr/share/warsha/eval")];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            candidates.push(prefix.join("share/warsha/eval"));
        }
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/eval"));
    candidates.into_iter().find(|d| has_jsonl(d))
}

fn has_jsonl(d: &Path) -> bool {
    std::fs::read_dir(d)
        .map(|rd| rd.flatten().any(|e| e.path().extension().is_some_and(|x| x == "jsonl")))
        .unwrap_or(false)
}

/// Held-out document texts: the split recorded with the adapter's training
/// run when there is one, else the configured split of today's documents.
pub fn heldout_texts(ctx: &Ctx, store: &Store, snapshot: Option<&serde_json::Value>) -> Result<Vec<String>> {
    let docs = store.document_texts()?;
    let recorded: Option<Vec<i64>> = snapshot
        .and_then(|s| s.get("heldout_documents"))
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let held: Vec<i64> = match recorded {
        Some(ids) => ids,
        None => {
            let pairs: Vec<(i64, String)> = docs.iter().map(|(id, sha, _)| (*id, sha.clone())).collect();
            crate::train::dataset::split_documents(&pairs, ctx.config.train.heldout_fraction, ctx.config.train.seed).1
        }
    };
    Ok(docs.into_iter().filter(|(id, _, _)| held.contains(id)).map(|(_, _, t)| t).collect())
}

pub fn reviews(store: &Store) -> Result<Vec<ReviewItem>> {
    Ok(store
        .unused_reviews()?
        .into_iter()
        .map(|r| ReviewItem { review_id: r.review_id, question: r.question, answer: r.answer })
        .collect())
}

pub fn run(ctx: &Ctx, args: EvalArgs) -> Result<()> {
    let Some(model_path) = ctx.config.model_path() else {
        bail!("no base model configured: set [model] path (a .gguf file or safetensors directory)");
    };
    let Some(set_dir) = eval_set_dir(ctx) else {
        bail!("no eval set found: put *.jsonl files (docs/EVAL.md) in {}", ctx.data.root().join("eval").display());
    };
    let set = EvalSet::load(&set_dir)?;
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
    let opts = load_options(ctx)?;
    let base = Base::load(&model_path, &opts).with_context(|| format!("loading {}", model_path.display()))?;
    let tok = Tok::for_model(&model_path)?;
    let adapter = match &row {
        Some(r) => Some(load_adapter(&ctx.data.root().join(&r.path), &base)?),
        None => None,
    };
    let heldout = heldout_texts(ctx, &store, row.as_ref().and_then(|r| r.data_snapshot.as_ref()))?;
    let reviews = reviews(&store)?;
    let inputs = SuiteInputs { eval_set: &set, heldout: &heldout, reviews: &reviews };
    let report = run_suite(&base, &tok, adapter.as_ref(), &inputs, &SuiteOptions::default())?;
    let metrics = serde_json::to_value(&report.metrics)?;
    let adapter_id = row.as_ref().map(|r| r.id);
    store.insert_eval(adapter_id, base_sha256(&base).as_deref(), &report.eval_set_sha256, &metrics)?;
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

/// Load options from `[model]`: CPU with f32 activations unless CUDA is asked for and built in.
pub fn load_options(ctx: &Ctx) -> Result<LoadOptions> {
    let quant = ctx.config.model.quant.parse()?;
    Ok(LoadOptions { quant, ..LoadOptions::default() })
}

pub fn print_report(who: &str, set_dir: &Path, r: &Report) {
    let m = &r.metrics;
    let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    println!("evaluation of {who} on {} ({:.1} s)", set_dir.display(), m.seconds);
    println!("  score                 {:.3}", m.score);
    println!("  held-out loss / ppl   {} / {}  ({} tokens)", f(m.heldout_loss), f(m.heldout_ppl), m.heldout_tokens);
    println!("  fact-token loss       {}  ({} tokens)", f(m.fact_loss), m.fact_tokens);
    println!("  answer-token loss     {}  (likelihood {})", f(m.answer_loss), f(m.answer_likelihood));
    println!("  choice accuracy       {}  ({} questions)", f(m.choice_accuracy), m.choice_items);
    println!("  QA exact / F1 / chrF  {} / {} / {}  ({} questions)", f(m.qa_exact), f(m.qa_f1), f(m.qa_chrf), m.qa_items);
    println!(
        "  perturbed likelihood / accuracy  {} / {}  (drop {}, {} questions)",
        f(m.perturbed_answer_likelihood),
        f(m.perturbed_choice_accuracy),
        f(m.robustness_drop),
        m.perturbed_items
    );
}
