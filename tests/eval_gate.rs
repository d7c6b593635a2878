//! The promotion gate on constructed metric sets: a clearly better adapter
//! is promoted, a worse one rejected, mixed results follow the documented
//! rule, and the first adapter is judged against the bare base model.

use warsha::config::Config;
use warsha::eval::gate::{decide, EvalConfig};
use warsha::eval::Metrics;

fn cfg() -> EvalConfig {
    Config::defaults().eval
}

/// The bare base model on a small plant eval set.
fn bare_base() -> Metrics {
    Metrics {
        score: 0.31,
        heldout_loss: Some(2.40),
        heldout_ppl: Some(2.40f64.exp()),
        fact_loss: Some(3.10),
        answer_loss: Some(2.20),
        answer_likelihood: Some((-2.20f64).exp()),
        choice_accuracy: Some(0.40),
        qa_exact: Some(0.0),
        qa_f1: Some(0.42),
        qa_chrf: Some(0.35),
        perturbed_answer_likelihood: Some(0.10),
        perturbed_choice_accuracy: Some(0.35),
        inputs_sha256: "same-inputs".into(),
        ..Default::default()
    }
}

#[test]
fn first_adapter_that_learned_the_facts_is_promoted_over_the_bare_base() {
    // REFERENCE §1's shape: held-out loss drifts up a little while fact loss
    // and multiple-choice accuracy improve a lot.
    let mut c = bare_base();
    c.heldout_loss = Some(2.40 * 1.06);
    c.fact_loss = Some(3.10 * 0.55);
    c.answer_loss = Some(2.20 * 0.80);
    c.choice_accuracy = Some(0.65);
    c.qa_f1 = Some(0.44);
    c.score = 0.45;
    let d = decide(&c, &bare_base(), &cfg());
    assert!(d.promote, "{:#?}", d.reasons);
    assert!(d.reasons.iter().any(|r| r.starts_with("fact-token loss improved")), "{:#?}", d.reasons);
}

#[test]
fn worse_adapter_is_rejected_with_reasons() {
    let mut c = bare_base();
    c.fact_loss = Some(3.50);
    c.answer_loss = Some(2.60);
    c.choice_accuracy = Some(0.30);
    c.qa_f1 = Some(0.20);
    c.score = 0.20;
    let d = decide(&c, &bare_base(), &cfg());
    assert!(!d.promote);
    for want in ["fact-token loss worsened", "answer-token loss worsened", "multiple-choice accuracy fell"] {
        assert!(d.reasons.iter().any(|r| r.starts_with(want)), "missing {want:?} in {:#?}", d.reasons);
    }
}

#[test]
fn mixed_result_with_one_primary_regression_is_rejected() {
    // Facts learned, but answering got worse beyond tolerance: not promoted.
    let mut c = bare_base();
    c.fact_loss = Some(2.00);
    c.qa_f1 = Some(0.30); // -0.12 < -0.05
    let d = decide(&c, &bare_base(), &cfg());
    assert!(!d.promote, "{:#?}", d.reasons);
    assert!(d.reasons[0].contains("worsened"), "{:#?}", d.reasons);
}

#[test]
fn mixed_result_within_tolerance_is_promoted() {
    // One primary measure improves; the others move a little the wrong way
    // but inside their allowance.
    let mut c = bare_base();
    c.fact_loss = Some(2.50);
    c.answer_loss = Some(2.20 * 1.01); // +1% < 2% margin
    c.choice_accuracy = Some(0.38); // -0.02 > -0.05
    let d = decide(&c, &bare_base(), &cfg());
    assert!(d.promote, "{:#?}", d.reasons);
}

#[test]
fn held_out_loss_alone_cannot_promote_and_its_rise_beyond_tolerance_rejects() {
    let mut c = bare_base();
    c.heldout_loss = Some(1.50); // much better, but only a guard
    let d = decide(&c, &bare_base(), &cfg());
    assert!(!d.promote, "{:#?}", d.reasons);

    let mut c = bare_base();
    c.fact_loss = Some(2.00);
    c.heldout_loss = Some(2.40 * 1.15); // +15% > 10% tolerance
    let d = decide(&c, &bare_base(), &cfg());
    assert!(!d.promote);
    assert!(d.reasons.iter().any(|r| r.starts_with("held-out loss rose")), "{:#?}", d.reasons);
}

#[test]
fn a_tracked_score_falling_beyond_tolerance_rejects() {
    let mut c = bare_base();
    c.fact_loss = Some(2.00);
    c.perturbed_choice_accuracy = Some(0.20); // robustness collapsed
    let d = decide(&c, &bare_base(), &cfg());
    assert!(!d.promote);
    assert!(
        d.reasons.iter().any(|r| r.starts_with("perturbed multiple-choice accuracy fell")),
        "{:#?}",
        d.reasons
    );
}

#[test]
fn metric_sets_from_different_inputs_are_never_compared() {
    let mut c = bare_base();
    c.fact_loss = Some(1.0);
    c.inputs_sha256 = "other-inputs".into();
    let d = decide(&c, &bare_base(), &cfg());
    assert!(!d.promote);
    assert!(d.reasons[0].contains("different inputs"), "{:#?}", d.reasons);
}

#[test]
fn missing_measures_are_skipped_and_named() {
    // An eval set without choice questions: accuracy is absent on both sides.
    let mut inc = bare_base();
    inc.choice_accuracy = None;
    let mut c = inc.clone();
    c.answer_loss = Some(1.5);
    let d = decide(&c, &inc, &cfg());
    assert!(d.promote, "{:#?}", d.reasons);
    assert!(
        d.reasons.iter().any(|r| r.contains("not compared") && r.contains("multiple-choice")),
        "{:#?}",
        d.reasons
    );
}
