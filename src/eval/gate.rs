//! The promotion gate: a pure decision over the candidate's and the
//! incumbent's metric sets (the incumbent is the active adapter, or the bare
//! base model when none is active) and the `[eval]` margins.
//!
//! The rule, in full (also in docs/EVAL.md):
//! 1. Primary measures: answer-token loss, fact-token loss (lower is better,
//!    compared relatively), multiple-choice accuracy and QA token F1 (higher
//!    is better, compared absolutely). A measure *improves* when it moves the
//!    right way by at least its margin (strictly, when the margin is 0); it
//!    *worsens* when it moves the wrong way by more than its allowance: a
//!    loss by more than its own margin (relative), a score by more than
//!    `score_tolerance` (absolute).
//! 2. Guards: plain held-out loss may rise by at most
//!    `heldout_loss_tolerance` (relative), and no tracked score (headline
//!    score, exact match, chrF, the perturbed scores) may fall by more than
//!    `score_tolerance`.
//! 3. Promote when at least one primary measure improves, none worsens, and
//!    every guard holds. A measure that either side lacks is not compared
//!    (and said so); with no comparable primary measure nothing is promoted.
//!    Metric sets scored on different inputs are never compared.
//!
//! Held-out loss is a guard, never a reason to promote: it rewards
//! memorized wording and can drift up while the facts are being learned
//! (REFERENCE §1).

use serde::{Deserialize, Serialize};

pub use crate::config::Eval as EvalConfig;

use super::report::Metrics;

/// The gate's verdict and every reason behind it, in plain words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub promote: bool,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Improved,
    Same,
    Worse,
}

/// A lower-is-better loss compared relatively.
fn loss_verdict(name: &str, cand: f64, inc: f64, margin: f64) -> (Verdict, String) {
    let rel = if inc > 0.0 { (cand - inc) / inc } else { cand - inc };
    let pct = rel * 100.0;
    let margin_pct = margin * 100.0;
    if cand < inc && -rel >= margin {
        (
            Verdict::Improved,
            format!("{name} improved {inc:.4} → {cand:.4} ({pct:+.1}%, margin {margin_pct:.1}%)"),
        )
    } else if rel > margin {
        (
            Verdict::Worse,
            format!("{name} worsened {inc:.4} → {cand:.4} ({pct:+.1}%, allowed +{margin_pct:.1}%)"),
        )
    } else {
        (Verdict::Same, format!("{name} unchanged within margin {inc:.4} → {cand:.4} ({pct:+.1}%)"))
    }
}

/// A higher-is-better score compared absolutely.
fn score_verdict(name: &str, cand: f64, inc: f64, margin: f64, tolerance: f64) -> (Verdict, String) {
    let d = cand - inc;
    if d > 0.0 && d >= margin {
        (Verdict::Improved, format!("{name} improved {inc:.3} → {cand:.3} ({d:+.3}, margin {margin:.3})"))
    } else if d < -tolerance {
        (Verdict::Worse, format!("{name} fell {inc:.3} → {cand:.3} ({d:+.3}, allowed -{tolerance:.3})"))
    } else {
        (Verdict::Same, format!("{name} unchanged within margin {inc:.3} → {cand:.3} ({d:+.3})"))
    }
}

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite())
}

/// Decide whether `candidate` replaces `incumbent` (see the module rule).
pub fn decide(candidate: &Metrics, incumbent: &Metrics, cfg: &EvalConfig) -> Decision {
    let mut reasons = Vec::new();
    if candidate.inputs_sha256 != incumbent.inputs_sha256 {
        reasons.push(format!(
            "metrics were scored on different inputs ({} vs {}); score both on the same eval set and held-out text",
            short(&candidate.inputs_sha256),
            short(&incumbent.inputs_sha256)
        ));
        return Decision { promote: false, reasons };
    }
    let mut verdicts = Vec::new();
    let mut not_compared = Vec::new();
    type Pick = fn(&Metrics) -> Option<f64>;
    let losses: [(&str, Pick, f64); 2] = [
        ("answer-token loss", |m| m.answer_loss, cfg.answer_loss_margin),
        ("fact-token loss", |m| m.fact_loss, cfg.fact_loss_margin),
    ];
    for (name, pick, margin) in losses {
        match (finite(pick(candidate)), finite(pick(incumbent))) {
            (Some(c), Some(i)) => verdicts.push(loss_verdict(name, c, i, margin)),
            _ => not_compared.push(name),
        }
    }
    let scores: [(&str, Pick, f64); 2] = [
        ("multiple-choice accuracy", |m| m.choice_accuracy, cfg.choice_accuracy_margin),
        ("QA token F1", |m| m.qa_f1, cfg.qa_f1_margin),
    ];
    for (name, pick, margin) in scores {
        match (finite(pick(candidate)), finite(pick(incumbent))) {
            (Some(c), Some(i)) => verdicts.push(score_verdict(name, c, i, margin, cfg.score_tolerance)),
            _ => not_compared.push(name),
        }
    }
    let improved = verdicts.iter().filter(|(v, _)| *v == Verdict::Improved).count();
    let worse = verdicts.iter().filter(|(v, _)| *v == Verdict::Worse).count();

    let mut guard_failed = false;
    match (finite(candidate.heldout_loss), finite(incumbent.heldout_loss)) {
        (Some(c), Some(i)) => {
            let rel = if i > 0.0 { (c - i) / i } else { c - i };
            let tol = cfg.heldout_loss_tolerance;
            if rel > tol {
                guard_failed = true;
                reasons.push(format!(
                    "held-out loss rose {i:.4} → {c:.4} ({:+.1}%, allowed +{:.1}%)",
                    rel * 100.0,
                    tol * 100.0
                ));
            } else {
                reasons
                    .push(format!("held-out loss {i:.4} → {c:.4} ({:+.1}%) within tolerance", rel * 100.0));
            }
        }
        _ => not_compared.push("held-out loss"),
    }
    let tracked: [(&str, Pick); 5] = [
        ("headline score", |m| Some(m.score)),
        ("QA exact match", |m| m.qa_exact),
        ("QA chrF", |m| m.qa_chrf),
        ("perturbed multiple-choice accuracy", |m| m.perturbed_choice_accuracy),
        ("perturbed answer likelihood", |m| m.perturbed_answer_likelihood),
    ];
    for (name, pick) in tracked {
        if let (Some(c), Some(i)) = (finite(pick(candidate)), finite(pick(incumbent))) {
            if c - i < -cfg.score_tolerance {
                guard_failed = true;
                reasons.push(format!(
                    "{name} fell {i:.3} → {c:.3} ({:+.3}, allowed -{:.3})",
                    c - i,
                    cfg.score_tolerance
                ));
            }
        }
    }
    let promote = improved > 0 && worse == 0 && !guard_failed;
    let head = if verdicts.is_empty() {
        "rejected: no primary measure could be compared".to_string()
    } else if promote {
        format!("promoted: {improved} primary measure(s) improved, none worsened, guards hold")
    } else if improved == 0 {
        "rejected: no primary measure improved by its margin".to_string()
    } else if worse > 0 {
        format!("rejected: {worse} primary measure(s) worsened beyond tolerance")
    } else {
        "rejected: a guard failed".to_string()
    };
    let mut all = vec![head];
    all.extend(verdicts.into_iter().map(|(_, r)| r));
    all.extend(reasons);
    if !not_compared.is_empty() {
        all.push(format!("not compared (missing on one side): {}", not_compared.join(", ")));
    }
    Decision { promote, reasons: all }
}

fn short(h: &str) -> &str {
    if h.is_empty() {
        "none"
    } else {
        &h[..h.len().min(12)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg() -> EvalConfig {
        Config::defaults().eval
    }

    fn base() -> Metrics {
        Metrics {
            score: 0.40,
            heldout_loss: Some(2.50),
            fact_loss: Some(3.00),
            answer_loss: Some(2.00),
            choice_accuracy: Some(0.40),
            qa_f1: Some(0.20),
            qa_exact: Some(0.0),
            qa_chrf: Some(0.30),
            perturbed_choice_accuracy: Some(0.35),
            perturbed_answer_likelihood: Some(0.12),
            ..Default::default()
        }
    }

    #[test]
    fn identical_metrics_are_not_promoted() {
        let d = decide(&base(), &base(), &cfg());
        assert!(!d.promote);
        assert!(d.reasons[0].contains("no primary measure improved"), "{:?}", d.reasons);
    }

    #[test]
    fn margins_are_inclusive_and_zero_margin_needs_a_strict_gain() {
        let mut c = base();
        c.answer_loss = Some(2.00 * 0.98);
        assert!(decide(&c, &base(), &cfg()).promote, "exactly the 2% margin counts");
        let mut c = base();
        c.answer_loss = Some(2.00 * 0.99);
        assert!(!decide(&c, &base(), &cfg()).promote, "1% is inside the margin");
        let mut c = base();
        c.choice_accuracy = Some(0.40 + 1e-9);
        assert!(decide(&c, &base(), &cfg()).promote, "margin 0: any strict gain");
    }

    #[test]
    fn a_huge_gain_cannot_buy_off_a_worse_primary_measure() {
        let mut c = base();
        c.fact_loss = Some(1.0);
        c.answer_loss = Some(2.10); // +5% > 2% allowance
        let d = decide(&c, &base(), &cfg());
        assert!(!d.promote);
        assert!(d.reasons.iter().any(|r| r.starts_with("answer-token loss worsened")), "{:?}", d.reasons);
    }

    #[test]
    fn nan_candidate_is_never_promoted() {
        let mut c = base();
        c.answer_loss = Some(f64::NAN);
        c.fact_loss = Some(f64::INFINITY);
        c.choice_accuracy = None;
        c.qa_f1 = None;
        let d = decide(&c, &base(), &cfg());
        assert!(!d.promote);
        assert!(d.reasons[0].contains("no primary measure could be compared"), "{:?}", d.reasons);
    }
}
