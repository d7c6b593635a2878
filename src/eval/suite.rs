//! The evaluation suite: scores one adapter (or the bare base model) on the
//! held-out text, the fixed eval set and the operators' approved reviews,
//! and returns the [`Report`] that the gate and `warsha eval` use.
//!
//! Measures (docs/EVAL.md has the operator's version):
//! - held-out text: plain per-token loss and perplexity, and the loss on
//!   fact tokens alone (see [`super::facts`]) — one teacher-forced pass;
//! - every question: teacher-forced loss on the reference answer's tokens and
//!   the end-of-turn token, inside the chat template (`Tok::chat_sample`);
//! - choice questions: each option scored by its mean per-token
//!   log-probability (length-normalized per token); the best is the pick.
//!   The correct option's sum also counts toward the answer loss, so the
//!   options are scored once;
//! - qa questions and reviews: a greedy answer (chat template, at most
//!   `max_new_tokens`, cut at the first line break) against the reference:
//!   exact match, token F1 and chrF on the search form of both;
//! - robustness: up to `max_perturbed` Arabic and mixed questions (spread
//!   evenly over the set) rewritten by one `text::perturb` perturbation each
//!   (cycling through all of them, seeded), scored again by answer
//!   likelihood and choice accuracy; the drop is clean minus perturbed on
//!   the same questions.
//!
//! Everything teacher-forced runs through `Base::target_logprobs` in
//! length-sorted, right-padded batches of at most `batch_tokens` positions.

use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::facts::fact_segments;
use super::metrics::{chrf, exact_match, mean_present, perplexity, token_f1, LossSum};
use super::report::{headline_score, ItemResult, Metrics, Report};
use super::set::{EvalItem, EvalSet, Task};
use crate::model::generate::{generate, GenError, Sampling};
use crate::model::tokenizer::{Tok, TokError};
use crate::model::{Adapter, Base, Batch, ModelError};
use crate::text::normalize::search_form;
use crate::text::perturb;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("scoring failed: {0}")]
    Model(#[from] ModelError),
    #[error("scoring failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("generating an answer to {id}: {source}")]
    Gen { id: String, source: GenError },
    #[error("tokenizing {what}: {source}")]
    Tok { what: String, source: TokError },
}

/// A reviewed answer used as a QA item: the operator's correction, or the
/// approved answer itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewItem {
    pub review_id: i64,
    pub question: String,
    pub answer: String,
}

/// What the suite scores.
#[derive(Debug, Clone, Copy)]
pub struct SuiteInputs<'a> {
    pub eval_set: &'a EvalSet,
    /// Held-out document texts (train form).
    pub heldout: &'a [String],
    pub reviews: &'a [ReviewItem],
}

/// How much of it, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteOptions {
    /// Held-out tokens scored at most (the texts are taken in order).
    pub max_heldout_tokens: usize,
    /// Held-out window length in tokens.
    pub window: usize,
    /// Greedy answer length limit.
    pub max_new_tokens: usize,
    /// Positions (batch × length) per teacher-forced pass.
    pub batch_tokens: usize,
    /// Score perturbed copies of at most this many Arabic/mixed questions (0: none).
    pub max_perturbed: usize,
    pub seed: u64,
    /// System prompt for every question (None: the template's default).
    pub system: Option<String>,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        Self {
            max_heldout_tokens: 1024,
            window: 256,
            max_new_tokens: 48,
            batch_tokens: 2048,
            max_perturbed: 8,
            seed: 7,
            system: None,
        }
    }
}

/// One teacher-forced sequence: ids and, per id, whether it counts as a target.
struct Seq {
    ids: Vec<u32>,
    scored: Vec<bool>,
}

/// log p(ids[j] | ids[<j]) for every j ≥ 1 of every sequence, in input order.
fn token_logprobs(
    base: &Base,
    adapter: Option<&Adapter>,
    seqs: &[Seq],
    batch_tokens: usize,
) -> Result<Vec<Vec<f32>>, EvalError> {
    let mut order: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].ids.len() >= 2).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].ids.len()));
    let mut out = vec![Vec::new(); seqs.len()];
    let total: usize = order.iter().map(|&i| seqs[i].ids.len() - 1).sum();
    tracing::debug!(sequences = order.len(), positions = total, "eval: teacher-forced pass");
    let mut at = 0;
    while at < order.len() {
        let t = seqs[order[at]].ids.len() - 1;
        let b = (batch_tokens / t.max(1)).max(1).min(order.len() - at);
        let group = &order[at..at + b];
        let (mut inp, mut tgt, mut mask) =
            (Vec::with_capacity(b * t), Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        for &i in group {
            let s = &seqs[i];
            let n = s.ids.len() - 1;
            inp.extend_from_slice(&s.ids[..n]);
            tgt.extend_from_slice(&s.ids[1..]);
            mask.extend(std::iter::repeat_n(1f32, n));
            inp.extend(std::iter::repeat_n(0u32, t - n));
            tgt.extend(std::iter::repeat_n(0u32, t - n));
            mask.extend(std::iter::repeat_n(0f32, t - n));
        }
        let dev = base.device();
        let batch = Batch {
            input_ids: Tensor::from_vec(inp, (b, t), dev)?,
            targets: Tensor::from_vec(tgt, (b, t), dev)?,
            loss_mask: Tensor::from_vec(mask, (b, t), dev)?,
            segment_ids: None,
        };
        let lp: Vec<f32> =
            base.target_logprobs(&batch, adapter)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        for (row, &i) in group.iter().enumerate() {
            let n = seqs[i].ids.len() - 1;
            out[i] = lp[row * t..row * t + n].to_vec();
        }
        at += b;
    }
    Ok(out)
}

/// Sum of the log-probabilities of the targets a mask marks (mask over ids;
/// entry j ≥ 1 marks target j), and their count.
fn masked_sum(lp: &[f32], mask: &[bool]) -> (f64, usize) {
    let mut sum = 0.0f64;
    let mut n = 0;
    for (j, &l) in lp.iter().enumerate() {
        if mask.get(j + 1).copied().unwrap_or(false) {
            sum += l as f64;
            n += 1;
        }
    }
    (sum, n)
}

/// Sum of log-probabilities and count of scored targets, per sequence, in input order.
fn score(
    base: &Base,
    adapter: Option<&Adapter>,
    seqs: &[Seq],
    batch_tokens: usize,
) -> Result<Vec<(f64, usize)>, EvalError> {
    let lps = token_logprobs(base, adapter, seqs, batch_tokens)?;
    Ok(lps.iter().zip(seqs).map(|(lp, s)| masked_sum(lp, &s.scored)).collect())
}

/// The text up to its first line break, or up to a sentence-final mark
/// (`.`, `!`, `?`, `؟`) followed by whitespace; None while neither has come.
fn first_sentence(s: &str) -> Option<&str> {
    let s = s.trim_start();
    let mut prev: Option<(usize, char)> = None;
    for (i, c) in s.char_indices() {
        if c == '\n' {
            return Some(&s[..i]);
        }
        if let Some((j, p)) = prev {
            if c.is_whitespace() && matches!(p, '.' | '!' | '?' | '؟') {
                return Some(&s[..j + p.len_utf8()]);
            }
        }
        prev = Some((i, c));
    }
    None
}

fn tok_err(what: &str) -> impl Fn(TokError) -> EvalError + '_ {
    move |source| EvalError::Tok { what: what.to_string(), source }
}

/// Held-out windows with every target scored, and per window the mask of
/// its fact tokens.
fn heldout_seqs(
    tok: &Tok,
    texts: &[String],
    opts: &SuiteOptions,
) -> Result<(Vec<Seq>, Vec<Vec<bool>>), EvalError> {
    let (mut plain, mut facts) = (Vec::new(), Vec::new());
    let mut budget = opts.max_heldout_tokens;
    for text in texts {
        if budget == 0 {
            break;
        }
        let mut ids = Vec::new();
        let mut is_fact = Vec::new();
        if tok.add_bos() {
            if let Some(b) = tok.bos_id() {
                ids.push(b);
                is_fact.push(false);
            }
        }
        for (piece, fact) in fact_segments(text) {
            let p = tok.encode(piece, false).map_err(tok_err("held-out text"))?;
            is_fact.extend(std::iter::repeat_n(fact, p.len()));
            ids.extend(p);
        }
        // Windows overlap by one token so every token after the first is a target once.
        let w = opts.window.max(2);
        let mut start = 0;
        while start + 1 < ids.len() && budget > 0 {
            let end = (start + w).min(ids.len()).min(start + 1 + budget);
            let win = ids[start..end].to_vec();
            budget -= end - start - 1;
            let mut all = vec![true; win.len()];
            all[0] = false;
            let mut f = is_fact[start..end].to_vec();
            f[0] = false;
            plain.push(Seq { ids: win, scored: all });
            facts.push(f);
            start = end - 1;
        }
    }
    Ok((plain, facts))
}

fn chat_seq(tok: &Tok, system: Option<&str>, q: &str, a: &str, id: &str) -> Result<Seq, EvalError> {
    let (ids, scored) = tok.chat_sample(system, q, a).map_err(tok_err(id))?;
    Ok(Seq { ids, scored })
}

/// Answer loss and (for choice items) the picked option, per item.
struct Scored {
    /// (sum log-prob, tokens) of the reference answer.
    answer: (f64, usize),
    /// Index of the best option by mean per-token log-probability.
    pick: Option<usize>,
}

fn score_items(
    base: &Base,
    tok: &Tok,
    adapter: Option<&Adapter>,
    items: &[(EvalItem, String)],
    opts: &SuiteOptions,
) -> Result<Vec<Scored>, EvalError> {
    let sys = opts.system.as_deref();
    let mut seqs = Vec::new();
    let mut spans = Vec::with_capacity(items.len());
    for (item, question) in items {
        let first = seqs.len();
        if item.task == Task::Choice {
            for c in &item.choices {
                // An option is judged by its own tokens: the end-of-turn
                // marker's probability says how willing the model is to stop
                // talking, not whether the option is right.
                let mut seq = chat_seq(tok, sys, question, c, &item.id)?;
                for (scored, id) in seq.scored.iter_mut().zip(&seq.ids) {
                    *scored = *scored && !tok.is_special(*id);
                }
                seqs.push(seq);
            }
        } else {
            seqs.push(chat_seq(tok, sys, question, &item.answer, &item.id)?);
        }
        spans.push(first..seqs.len());
    }
    let s = score(base, adapter, &seqs, opts.batch_tokens)?;
    Ok(items
        .iter()
        .zip(spans)
        .map(|((item, _), span)| {
            let opt = &s[span];
            if item.task == Task::Choice {
                let mean = |(sum, n): (f64, usize)| if n > 0 { sum / n as f64 } else { f64::NEG_INFINITY };
                let pick = (0..opt.len()).max_by(|&a, &b| mean(opt[a]).total_cmp(&mean(opt[b])));
                let answer = item.answer_index().map(|i| opt[i]).unwrap_or((0.0, 0));
                Scored { answer, pick }
            } else {
                Scored { answer: opt[0], pick: None }
            }
        })
        .collect())
}

fn mean_loss(xs: impl Iterator<Item = (f64, usize)>) -> LossSum {
    let mut l = LossSum::default();
    for (sum, n) in xs {
        l.add(-sum, n);
    }
    l
}

fn accuracy(items: &[(EvalItem, String)], scored: &[Scored]) -> Option<f64> {
    let picks: Vec<bool> = items
        .iter()
        .zip(scored)
        .filter(|((i, _), _)| i.task == Task::Choice)
        .map(|((i, _), s)| s.pick.is_some() && s.pick == i.answer_index())
        .collect();
    (!picks.is_empty()).then(|| picks.iter().filter(|&&c| c).count() as f64 / picks.len() as f64)
}

/// sha256 over everything that decides the figures, so that two metric sets
/// are compared only when they were scored on the same material.
pub fn inputs_sha256(inputs: &SuiteInputs<'_>, opts: &SuiteOptions) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(inputs.eval_set.sha256.as_bytes());
    for t in inputs.heldout {
        field(t.as_bytes());
    }
    for r in inputs.reviews {
        field(&r.review_id.to_le_bytes());
        field(r.question.as_bytes());
        field(r.answer.as_bytes());
    }
    field(serde_json::to_string(opts).unwrap_or_default().as_bytes());
    hex::encode(h.finalize())
}

/// Run every measure for `adapter` (None: the bare base model).
pub fn run_suite(
    base: &Base,
    tok: &Tok,
    adapter: Option<&Adapter>,
    inputs: &SuiteInputs<'_>,
    opts: &SuiteOptions,
) -> Result<Report, EvalError> {
    let started = Instant::now();
    let mut m = Metrics { inputs_sha256: inputs_sha256(inputs, opts), ..Default::default() };

    // Held-out text: plain and fact-token loss from the same windows.
    let phase = Instant::now();
    let (plain, facts) = heldout_seqs(tok, inputs.heldout, opts)?;
    if !plain.is_empty() {
        let lps = token_logprobs(base, adapter, &plain, opts.batch_tokens)?;
        let l = mean_loss(lps.iter().zip(&plain).map(|(lp, s)| masked_sum(lp, &s.scored)));
        m.heldout_loss = l.mean();
        m.heldout_ppl = l.mean().map(perplexity);
        m.heldout_tokens = l.tokens;
        // Fact loss: the same log-probabilities under the fact mask.
        let fl = mean_loss(lps.iter().zip(&facts).map(|(lp, f)| masked_sum(lp, f)));
        m.fact_loss = fl.mean();
        m.fact_tokens = fl.tokens;
    }
    tracing::info!(
        windows = plain.len(),
        tokens = m.heldout_tokens,
        secs = phase.elapsed().as_secs_f64(),
        "eval: held-out text scored"
    );

    // Questions: eval set and reviews, answer loss and choices.
    let mut items: Vec<(EvalItem, String)> =
        inputs.eval_set.items.iter().map(|i| (i.clone(), i.question.clone())).collect();
    for r in inputs.reviews {
        let item = EvalItem {
            id: format!("review-{}", r.review_id),
            task: Task::Qa,
            question: r.question.clone(),
            answer: r.answer.clone(),
            choices: vec![],
            lang: "mixed".into(),
            dialect: None,
            source: None,
        };
        items.push((item, r.question.clone()));
    }
    let phase = Instant::now();
    let scored = score_items(base, tok, adapter, &items, opts)?;
    tracing::info!(
        items = items.len(),
        secs = phase.elapsed().as_secs_f64(),
        "eval: answers and options scored"
    );
    let al = mean_loss(scored.iter().map(|s| s.answer));
    m.answer_loss = al.mean();
    m.answer_tokens = al.tokens;
    m.answer_likelihood = al.mean().map(|l| (-l).exp());
    m.choice_accuracy = accuracy(&items, &scored);
    m.choice_items = items.iter().filter(|(i, _)| i.task == Task::Choice).count();

    // Greedy answers for qa items.
    let phase = Instant::now();
    let mut generated = 0usize;
    let mut results = Vec::with_capacity(items.len());
    let (mut em, mut f1, mut cf) = (Vec::new(), Vec::new(), Vec::new());
    for ((item, q), s) in items.iter().zip(&scored) {
        let answer_loss = (s.answer.1 > 0).then(|| -s.answer.0 / s.answer.1 as f64);
        if item.task == Task::Choice {
            let prediction = s.pick.and_then(|p| item.choices.get(p)).cloned().unwrap_or_default();
            let correct = s.pick.is_some() && s.pick == item.answer_index();
            results.push(ItemResult {
                id: item.id.clone(),
                task: "choice".into(),
                answer_loss,
                prediction,
                correct: Some(correct),
                f1: None,
                chrf: None,
            });
            continue;
        }
        let prompt = tok.chat_prompt(opts.system.as_deref(), q).map_err(tok_err(&item.id))?;
        // References are one short sentence: stop at the first line break or
        // sentence end after some text.
        let mut so_far = String::new();
        let mut on_token = |piece: &str| {
            so_far.push_str(piece);
            first_sentence(&so_far).is_none()
        };
        let g =
            generate(base, adapter, tok, &prompt, &Sampling::greedy(), opts.max_new_tokens, &mut on_token)
                .map_err(|source| EvalError::Gen { id: item.id.clone(), source })?;
        generated += g.tokens.len();
        let text = g.text.trim_start();
        let answer = first_sentence(text).unwrap_or(text).trim().to_string();
        let (p, r) = (search_form(&answer), search_form(&item.answer));
        let (e, f, c) = (exact_match(&p, &r), token_f1(&p, &r), chrf(&p, &r));
        em.push(e);
        f1.push(f);
        cf.push(c);
        results.push(ItemResult {
            id: item.id.clone(),
            task: "qa".into(),
            answer_loss,
            prediction: answer,
            correct: Some(e == 1.0),
            f1: Some(f),
            chrf: Some(c),
        });
    }
    let avg = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    m.qa_exact = avg(&em);
    m.qa_f1 = avg(&f1);
    m.qa_chrf = avg(&cf);
    m.qa_items = f1.len();
    tracing::info!(
        answers = m.qa_items,
        tokens = generated,
        secs = phase.elapsed().as_secs_f64(),
        "eval: greedy answers scored"
    );

    if opts.max_perturbed > 0 {
        let phase = Instant::now();
        robustness(base, tok, adapter, &items, &scored, opts, &mut m)?;
        tracing::info!(
            items = m.perturbed_items,
            secs = phase.elapsed().as_secs_f64(),
            "eval: perturbed questions scored"
        );
    }
    m.score = headline_score(m.choice_accuracy, m.qa_f1, m.answer_likelihood);
    m.seconds = started.elapsed().as_secs_f64();
    Ok(Report { metrics: m, items: results, eval_set_sha256: inputs.eval_set.sha256.clone() })
}

/// Perturbed copies of the Arabic and mixed questions, scored like the originals.
fn robustness(
    base: &Base,
    tok: &Tok,
    adapter: Option<&Adapter>,
    items: &[(EvalItem, String)],
    clean: &[Scored],
    opts: &SuiteOptions,
    m: &mut Metrics,
) -> Result<(), EvalError> {
    let kinds = perturb::all();
    if kinds.is_empty() {
        return Ok(());
    }
    let eligible: Vec<usize> = (0..items.len())
        .filter(|&n| items[n].0.lang != "en" && !items[n].0.id.starts_with("review-"))
        .collect();
    // An even spread over the eligible questions, so a capped run still
    // covers both tasks and every part of the set.
    let take = eligible.len().min(opts.max_perturbed);
    let chosen: Vec<usize> = (0..take).map(|k| eligible[k * eligible.len() / take.max(1)]).collect();
    let mut pert = Vec::new();
    let mut clean_sub = Vec::new();
    for (k, &n) in chosen.iter().enumerate() {
        let ((item, q), s) = (&items[n], &clean[n]);
        let p = kinds[k % kinds.len()];
        let changed = perturb::perturb(q, p, opts.seed.wrapping_add(n as u64));
        if changed == *q {
            continue;
        }
        pert.push((item.clone(), changed));
        clean_sub.push(Scored { answer: s.answer, pick: s.pick });
    }
    m.perturbed_items = pert.len();
    if pert.is_empty() {
        return Ok(());
    }
    let scored = score_items(base, tok, adapter, &pert, opts)?;
    let lik = |s: &[Scored]| mean_loss(s.iter().map(|x| x.answer)).mean().map(|l| (-l).exp());
    let (clean_lik, pert_lik) = (lik(&clean_sub), lik(&scored));
    let (clean_acc, pert_acc) = (accuracy(&pert, &clean_sub), accuracy(&pert, &scored));
    m.perturbed_answer_likelihood = pert_lik;
    m.perturbed_choice_accuracy = pert_acc;
    let drop = |c: Option<f64>, p: Option<f64>| c.zip(p).map(|(c, p)| c - p);
    m.robustness_drop = mean_present(&[drop(clean_lik, pert_lik), drop(clean_acc, pert_acc)]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::first_sentence;

    #[test]
    fn first_sentence_stops_at_sentence_ends_not_decimal_points() {
        assert_eq!(first_sentence("  The torque is 3.5 Nm. Then"), Some("The torque is 3.5 Nm."));
        assert_eq!(first_sentence("E-63\nmore"), Some("E-63"));
        assert_eq!(first_sentence("كل 1000 ساعة؟ نعم"), Some("كل 1000 ساعة؟"));
        assert_eq!(first_sentence("still going 3.5"), None);
    }
}
