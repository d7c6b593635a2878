//! Gathering what the suite scores from the data dir: the eval set (the
//! operator's own in `<data_dir>/eval/`, else the installed or source-tree
//! `assets/eval/`), the held-out documents of a training run's split, and
//! the reviewed answers no run has used.

use std::path::{Path, PathBuf};

use super::set::{EvalSet, EvalSetError};
use super::suite::{ReviewItem, SuiteInputs};
use crate::config::Config;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    #[error("no eval set found: put *.jsonl files (docs/EVAL.md) in {0}")]
    NoEvalSet(PathBuf),
    #[error(transparent)]
    Set(#[from] EvalSetError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Owned suite inputs; [`EvalInputs::borrow`] gives the suite's view.
#[derive(Debug, Clone)]
pub struct EvalInputs {
    pub eval_set: EvalSet,
    pub heldout: Vec<String>,
    pub reviews: Vec<ReviewItem>,
}

impl EvalInputs {
    pub fn borrow(&self) -> SuiteInputs<'_> {
        SuiteInputs { eval_set: &self.eval_set, heldout: &self.heldout, reviews: &self.reviews }
    }

    /// Everything for one evaluation. `snapshot` is the `data_snapshot` of
    /// the training run whose split should be used (its `heldout_documents`);
    /// without one, the configured split of today's documents.
    pub fn gather(
        store: &Store,
        cfg: &Config,
        snapshot: Option<&serde_json::Value>,
    ) -> Result<Self, InputsError> {
        let dir = eval_set_dir(&cfg.paths.data_dir)
            .ok_or_else(|| InputsError::NoEvalSet(cfg.paths.data_dir.join("eval")))?;
        let eval_set = EvalSet::load(&dir)?;
        Ok(Self { eval_set, heldout: heldout_texts(store, cfg, snapshot)?, reviews: reviews(store)? })
    }
}

/// Where the eval set is, in order: `<data_dir>/eval/`, `/usr/share/warsha/eval`,
/// `<prefix>/share/warsha/eval` beside the executable, the source tree's `assets/eval/`.
pub fn eval_set_dir(data_dir: &Path) -> Option<PathBuf> {
    let mut candidates = vec![data_dir.join("eval"), PathBuf::from("/usr/share/warsha/eval")];
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

/// Held-out document texts (train form), in document order.
pub fn heldout_texts(
    store: &Store,
    cfg: &Config,
    snapshot: Option<&serde_json::Value>,
) -> Result<Vec<String>, StoreError> {
    let docs = store.document_texts()?;
    let recorded: Option<Vec<i64>> = snapshot
        .and_then(|s| s.get("heldout_documents"))
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let held = match recorded {
        Some(ids) => ids,
        None => {
            let pairs: Vec<(i64, String)> = docs.iter().map(|(id, sha, _)| (*id, sha.clone())).collect();
            crate::train::dataset::split_documents(&pairs, cfg.train.heldout_fraction, cfg.train.seed).1
        }
    };
    Ok(docs.into_iter().filter(|(id, _, _)| held.contains(id)).map(|(_, _, t)| t).collect())
}

/// Reviewed answers no training run has used, as QA items.
pub fn reviews(store: &Store) -> Result<Vec<ReviewItem>, StoreError> {
    Ok(store
        .unused_reviews()?
        .into_iter()
        .map(|r| ReviewItem { review_id: r.review_id, question: r.question, answer: r.answer })
        .collect())
}
