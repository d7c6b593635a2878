//! Choosing the next token from logits: greedy argmax, or a seeded draw after
//! repetition penalty, temperature, top-k and top-p. The random generator is
//! our own (xoshiro256**), so a seed gives the same tokens on every build and
//! platform, independent of any crate's choice of default generator.

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// Plain argmax of the raw logits; every other field is ignored.
    pub greedy: bool,
    /// Divides the logits; at or below 1e-5 the draw becomes an argmax (after the penalty).
    pub temperature: f64,
    /// Keep the smallest set of most likely tokens whose probability reaches this (1.0: off).
    pub top_p: f64,
    /// Keep only the k most likely tokens (0: off).
    pub top_k: usize,
    /// Logits of tokens seen in the last [`REPEAT_WINDOW`] positions are pushed
    /// down by this factor (1.0: off), as llama.cpp does.
    pub repeat_penalty: f32,
    pub seed: u64,
}

/// How far back the repetition penalty looks.
pub const REPEAT_WINDOW: usize = 64;

impl Default for Sampling {
    fn default() -> Self {
        Self {
            greedy: false,
            temperature: 0.7,
            top_p: 0.9,
            top_k: 40,
            repeat_penalty: 1.1,
            seed: 299_792_458,
        }
    }
}

impl Sampling {
    pub fn greedy() -> Self {
        Self { greedy: true, ..Self::default() }
    }
}

/// xoshiro256** seeded through splitmix64.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self { s: [next(), next(), next(), next()] }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Index of the largest logit; the lowest index wins a tie, NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// Push down the logits of tokens in `recent`: positive ones are divided by
/// `penalty`, negative ones multiplied, so either way the token loses ground.
pub fn apply_repeat_penalty(logits: &mut [f32], recent: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = std::collections::HashSet::with_capacity(recent.len());
    for &id in recent {
        if !seen.insert(id) {
            continue;
        }
        if let Some(l) = logits.get_mut(id as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// A seeded token chooser for one generation.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: Sampling,
    rng: Rng,
}

impl Sampler {
    pub fn new(cfg: &Sampling) -> Self {
        Self { cfg: cfg.clone(), rng: Rng::new(cfg.seed) }
    }

    /// Choose the next id. `history` is every id so far (prompt included);
    /// `logits` is modified in place.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        if self.cfg.greedy || logits.is_empty() {
            return argmax(logits);
        }
        let recent = &history[history.len().saturating_sub(REPEAT_WINDOW)..];
        apply_repeat_penalty(logits, recent, self.cfg.repeat_penalty);
        if self.cfg.temperature <= 1e-5 {
            return argmax(logits);
        }
        let inv_t = (1.0 / self.cfg.temperature) as f32;
        // Candidates in a total order (logit desc, id asc) so ties never depend on the sort.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_nan())
            .map(|(i, &v)| (i as u32, v * inv_t))
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = if self.cfg.top_k == 0 { cand.len() } else { self.cfg.top_k.min(cand.len()) };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, order);
            cand.truncate(k);
        }
        cand.sort_unstable_by(order);
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|&(_, v)| f64::from(v - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        let mut keep = probs.len();
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let mass: f64 = probs[..keep].iter().sum();
        let mut u = self.rng.next_f64() * mass;
        for (i, p) in probs[..keep].iter().enumerate() {
            if u < *p {
                return cand[i].0;
            }
            u -= p;
        }
        cand[keep - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![0.5, 2.0, -1.0, 1.9, 0.0, 3.1, 3.0, -2.0]
    }

    #[test]
    fn greedy_is_argmax_with_lowest_index_on_ties() {
        let mut s = Sampler::new(&Sampling::greedy());
        assert_eq!(s.sample(&mut logits(), &[5, 5, 5]), 5, "greedy ignores the penalty");
        assert_eq!(argmax(&[1.0, 4.0, 4.0, f32::NAN]), 1);
    }

    #[test]
    fn top_k_one_matches_greedy_for_any_seed() {
        for seed in 0..50 {
            let cfg =
                Sampling { top_k: 1, repeat_penalty: 1.0, temperature: 1.5, seed, ..Sampling::default() };
            assert_eq!(Sampler::new(&cfg).sample(&mut logits(), &[]), 5);
        }
    }

    #[test]
    fn same_seed_gives_same_tokens_and_seeds_differ() {
        let cfg =
            Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, repeat_penalty: 1.0, ..Sampling::default() };
        let draw = |seed| {
            let mut s = Sampler::new(&Sampling { seed, ..cfg.clone() });
            (0..200).map(|_| s.sample(&mut logits(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // The draw follows the distribution: token 5 (p≈0.37) is the most frequent.
        let d = draw(7);
        let count = |t| d.iter().filter(|&&x| x == t).count();
        assert!(count(5) > count(1) && count(5) > 50, "{d:?}");
    }

    #[test]
    fn temperature_near_zero_is_argmax_after_penalty() {
        let cfg = Sampling { temperature: 0.0, repeat_penalty: 1.5, ..Sampling::default() };
        let mut s = Sampler::new(&cfg);
        assert_eq!(s.sample(&mut logits(), &[]), 5);
        // 3.1/1.5 < 3.0: a repeated token loses to the runner-up.
        assert_eq!(s.sample(&mut logits(), &[5]), 6);
        // A very low positive temperature concentrates on the argmax too.
        let cfg =
            Sampling { temperature: 1e-3, repeat_penalty: 1.0, top_k: 0, top_p: 1.0, ..Sampling::default() };
        let mut s = Sampler::new(&cfg);
        assert!((0..100).all(|_| s.sample(&mut logits(), &[]) == 5));
    }

    #[test]
    fn repetition_penalty_lowers_a_repeated_token_either_sign() {
        let mut l = logits();
        apply_repeat_penalty(&mut l, &[1, 2, 1, 1], 2.0);
        assert_eq!(l[1], 1.0, "positive logit divided once, however often repeated");
        assert_eq!(l[2], -2.0, "negative logit multiplied");
        assert_eq!(l[5], 3.1, "others untouched");
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p(5)≈0.37, p(6)≈0.34: top_p 0.5 keeps exactly {5, 6}.
        let cfg =
            Sampling { temperature: 1.0, top_k: 0, top_p: 0.5, repeat_penalty: 1.0, seed: 3, greedy: false };
        let mut s = Sampler::new(&cfg);
        let drawn: std::collections::BTreeSet<u32> = (0..300).map(|_| s.sample(&mut logits(), &[])).collect();
        assert_eq!(drawn.into_iter().collect::<Vec<_>>(), vec![5, 6]);
    }
}
