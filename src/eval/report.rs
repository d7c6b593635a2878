//! What one evaluation produces: the metric set the gate compares
//! ([`Metrics`], stored as JSON in `evals.metrics` and `adapters.metrics`),
//! the per-question details people read ([`ItemResult`]), and the headline
//! score.
//!
//! Losses are mean per-token cross-entropies in nats. Every measure is an
//! `Option`: a suite without choice questions has no choice accuracy, and the
//! gate skips what either side lacks instead of comparing against a made-up 0.

use serde::{Deserialize, Serialize};

use super::metrics::mean_present;

/// The figures of one evaluation of one adapter (or the bare base).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Headline in [0, 1]: mean of choice accuracy, QA token F1 and answer
    /// likelihood (those present). See [`headline_score`].
    pub score: f64,
    /// Plain per-token loss on held-out text, and its perplexity.
    pub heldout_loss: Option<f64>,
    pub heldout_ppl: Option<f64>,
    pub heldout_tokens: usize,
    /// Loss on the fact tokens (numbers, units, codes) of held-out text.
    pub fact_loss: Option<f64>,
    pub fact_tokens: usize,
    /// Teacher-forced loss on the reference answer tokens (chat template).
    pub answer_loss: Option<f64>,
    pub answer_tokens: usize,
    /// exp(-answer_loss): the geometric-mean probability of an answer token.
    pub answer_likelihood: Option<f64>,
    /// Multiple-choice accuracy by mean per-token log-likelihood of each option.
    pub choice_accuracy: Option<f64>,
    pub choice_items: usize,
    /// Greedy answers against references, on the search form.
    pub qa_exact: Option<f64>,
    pub qa_f1: Option<f64>,
    pub qa_chrf: Option<f64>,
    pub qa_items: usize,
    /// The same questions with Arabic surface perturbations.
    pub perturbed_answer_likelihood: Option<f64>,
    pub perturbed_choice_accuracy: Option<f64>,
    /// Mean drop (clean − perturbed) over answer likelihood and choice
    /// accuracy; positive = the perturbations hurt.
    pub robustness_drop: Option<f64>,
    pub perturbed_items: usize,
    /// sha256 over everything scored (eval set bytes, held-out texts, reviews,
    /// suite options): two evaluations are comparable only when it matches.
    pub inputs_sha256: String,
    /// Seconds the suite took.
    pub seconds: f64,
}

/// The headline score in [0, 1]: the mean of the components present among
/// choice accuracy, QA token F1 and answer likelihood (exp of minus the mean
/// answer-token loss, the per-token probability the model gives the
/// reference answer). All three rise as the model learns the plant's
/// answers; the likelihood moves first, accuracy and F1 follow.
pub fn headline_score(
    choice_accuracy: Option<f64>,
    qa_f1: Option<f64>,
    answer_likelihood: Option<f64>,
) -> f64 {
    mean_present(&[choice_accuracy, qa_f1, answer_likelihood.map(|l| l.clamp(0.0, 1.0))]).unwrap_or(0.0)
}

/// One question's outcome, for people reading `warsha eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    pub id: String,
    pub task: String,
    /// Mean answer-token loss of the reference answer.
    pub answer_loss: Option<f64>,
    /// Greedy answer (qa) or the chosen option (choice).
    pub prediction: String,
    pub correct: Option<bool>,
    pub f1: Option<f64>,
    pub chrf: Option<f64>,
}

/// The suite's full result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub metrics: Metrics,
    pub items: Vec<ItemResult>,
    /// sha256 of the eval set file bytes (the `evals.eval_set_hash` column).
    pub eval_set_sha256: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headline_is_the_mean_of_present_components() {
        assert_eq!(headline_score(Some(0.5), Some(0.25), Some(0.75)), 0.5);
        assert_eq!(headline_score(None, Some(0.2), None), 0.2);
        assert_eq!(headline_score(None, None, None), 0.0);
        assert_eq!(headline_score(Some(1.0), None, Some(1.5)), 1.0, "likelihood is clipped");
    }

    #[test]
    fn metrics_round_trip_through_json() {
        let m = Metrics { score: 0.4, answer_loss: Some(1.25), choice_items: 3, ..Default::default() };
        let back: Metrics = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}
