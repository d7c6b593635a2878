//! Text-level scores for generated answers against a reference: exact match
//! and token F1 over word tokens, and chrF (character n-gram F-score).
//!
//! These functions compare the strings they are given; the suite passes them
//! the search form of both sides (`text::normalize::search_form`), so that
//! diacritics, alef/yeh/teh-marbuta variants, tatweel and case never decide a
//! score. Everything here is pure and allocation-light: it runs on ~30 short
//! answers per evaluation.

use std::collections::HashMap;

/// Word tokens: maximal runs of alphanumeric characters (Arabic letters and
/// both digit sets count as alphanumeric). Punctuation and spaces separate.
pub fn word_tokens(s: &str) -> Vec<&str> {
    s.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).collect()
}

/// 1.0 when both sides have the same word tokens in the same order.
pub fn exact_match(prediction: &str, reference: &str) -> f64 {
    if word_tokens(prediction) == word_tokens(reference) {
        1.0
    } else {
        0.0
    }
}

/// Harmonic mean of token precision and recall over the multiset of word
/// tokens (the SQuAD-style answer F1). Two empty sides score 1; one empty side 0.
pub fn token_f1(prediction: &str, reference: &str) -> f64 {
    let p = word_tokens(prediction);
    let r = word_tokens(reference);
    if p.is_empty() || r.is_empty() {
        return if p.is_empty() && r.is_empty() { 1.0 } else { 0.0 };
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &r {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0usize;
    for t in &p {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / r.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Largest character n-gram order of chrF.
pub const CHRF_ORDER: usize = 6;
/// chrF's beta: recall weighs beta² = 4 times as much as precision.
pub const CHRF_BETA: f64 = 2.0;

/// chrF in [0, 1] (Popović 2015): character n-grams of orders 1..=6 over the
/// text with whitespace removed; precision and recall are each averaged over
/// the orders that both sides are long enough to have, then combined as an
/// F-score with beta = 2. Two empty sides score 1; one empty side 0.
pub fn chrf(prediction: &str, reference: &str) -> f64 {
    let hyp: Vec<char> = prediction.chars().filter(|c| !c.is_whitespace()).collect();
    let refr: Vec<char> = reference.chars().filter(|c| !c.is_whitespace()).collect();
    if hyp.is_empty() || refr.is_empty() {
        return if hyp.is_empty() && refr.is_empty() { 1.0 } else { 0.0 };
    }
    let (mut p_sum, mut r_sum, mut orders) = (0.0f64, 0.0f64, 0usize);
    for n in 1..=CHRF_ORDER {
        if hyp.len() < n || refr.len() < n {
            break;
        }
        let h = ngram_counts(&hyp, n);
        let r = ngram_counts(&refr, n);
        let matched: usize = h.iter().map(|(g, &c)| c.min(r.get(g).copied().unwrap_or(0))).sum();
        p_sum += matched as f64 / (hyp.len() + 1 - n) as f64;
        r_sum += matched as f64 / (refr.len() + 1 - n) as f64;
        orders += 1;
    }
    let p = p_sum / orders as f64;
    let r = r_sum / orders as f64;
    let b2 = CHRF_BETA * CHRF_BETA;
    if p + r == 0.0 {
        0.0
    } else {
        (1.0 + b2) * p * r / (b2 * p + r)
    }
}

fn ngram_counts(chars: &[char], n: usize) -> HashMap<&[char], usize> {
    let mut m = HashMap::with_capacity(chars.len());
    for w in chars.windows(n) {
        *m.entry(w).or_default() += 1;
    }
    m
}

/// Perplexity of a mean per-token cross-entropy (natural log).
pub fn perplexity(mean_loss: f64) -> f64 {
    mean_loss.exp()
}

/// Running sum of per-token negative log-likelihoods.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossSum {
    pub nll: f64,
    pub tokens: usize,
}

impl LossSum {
    pub fn add(&mut self, nll: f64, tokens: usize) {
        self.nll += nll;
        self.tokens += tokens;
    }

    /// Mean per-token loss, or None when nothing was counted.
    pub fn mean(&self) -> Option<f64> {
        (self.tokens > 0).then(|| self.nll / self.tokens as f64)
    }
}

/// Arithmetic mean of the values present; None when none are.
pub fn mean_present(values: &[Option<f64>]) -> Option<f64> {
    let v: Vec<f64> = values.iter().flatten().copied().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_ignores_punctuation_and_spacing() {
        assert_eq!(exact_match("45 Nm.", "45  nm"), 0.0, "case is the normalizer's job");
        assert_eq!(exact_match("45 nm.", "45  nm"), 1.0);
        assert_eq!(exact_match("45 nm", "46 nm"), 0.0);
    }

    #[test]
    fn token_f1_counts_repeated_tokens_once_each() {
        // prediction "the the valve" vs reference "the valve": 2 common of 3 predicted, 2 of 2 reference.
        let f = token_f1("the the valve", "the valve");
        assert!((f - 0.8).abs() < 1e-12, "{f}");
        assert_eq!(token_f1("", ""), 1.0);
        assert_eq!(token_f1("x", ""), 0.0);
        assert_eq!(token_f1("pump", "valve"), 0.0);
    }

    #[test]
    fn token_f1_splits_arabic_words() {
        let f = token_f1("عزم الشد 45 نيوتن متر", "45 نيوتن متر");
        // 3 common of 5 predicted and of 3 reference: P=0.6, R=1 → F=0.75.
        assert!((f - 0.75).abs() < 1e-12, "{f}");
    }

    #[test]
    fn chrf_identical_is_one_and_disjoint_is_zero() {
        assert!((chrf("hydraulic filter", "hydraulic filter") - 1.0).abs() < 1e-12);
        assert!((chrf("hydraulicfilter", "hydraulic filter") - 1.0).abs() < 1e-12, "whitespace ignored");
        assert_eq!(chrf("abc", "xyz"), 0.0);
        assert_eq!(chrf("", "x"), 0.0);
    }

    #[test]
    fn chrf_hand_computed_case() {
        // hyp "ab", ref "abc": order 1: matches 2, P=2/2, R=2/3; order 2: "ab" matches 1, P=1/1, R=1/2.
        // Higher orders stop at the shorter side. P=1, R=(2/3+1/2)/2=7/12. F2 = 5·P·R/(4P+R).
        let p = 1.0;
        let r = 7.0 / 12.0;
        let want = 5.0 * p * r / (4.0 * p + r);
        assert!((chrf("ab", "abc") - want).abs() < 1e-12);
    }

    #[test]
    fn chrf_rewards_recall_more_than_precision() {
        // Same overlap, but one side misses reference content and the other adds extra content.
        let short = chrf("pressure", "pressure relief valve");
        let long = chrf("pressure relief valve", "pressure");
        assert!(long > short, "recall-weighted: {long} vs {short}");
    }

    #[test]
    fn loss_sum_and_perplexity() {
        let mut l = LossSum::default();
        assert_eq!(l.mean(), None);
        l.add(3.0, 2);
        l.add(1.0, 2);
        assert_eq!(l.mean(), Some(1.0));
        assert!((perplexity(1.0) - std::f64::consts::E).abs() < 1e-12);
        assert_eq!(mean_present(&[Some(1.0), None, Some(0.0)]), Some(0.5));
        assert_eq!(mean_present(&[None]), None);
    }
}
