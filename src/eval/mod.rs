//! The evaluation suite and the promotion gate: what decides whether a
//! freshly trained adapter replaces the active one.
//!
//! - [`metrics`]: exact match, token F1, chrF, perplexity (pure).
//! - [`facts`]: the fact-span rule (numbers, units, codes, part numbers).
//! - [`set`]: the fixed eval set's JSONL format and hash.
//! - [`report`]: the metric set, per-question results, the headline score.
//! - [`gate`]: the pure promotion decision over two metric sets.
//! - [`suite`]: [`run_suite`], every measure for one adapter on a base model.
//! - [`inputs`]: the eval set, held-out text and reviews from the data dir.
//!
//! docs/EVAL.md describes every measure and the gate's rule for operators.

pub mod facts;
pub mod gate;
pub mod inputs;
pub mod metrics;
pub mod report;
pub mod set;
pub mod suite;

pub use gate::{decide, Decision, EvalConfig};
pub use report::{headline_score, ItemResult, Metrics, Report};
pub use set::{EvalItem, EvalSet, EvalSetError, Task};
pub use suite::{run_suite, EvalError, ReviewItem, SuiteInputs, SuiteOptions};
