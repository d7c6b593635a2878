//! Seeded perturbations of Arabic text for robustness evaluation: the
//! variations real operators' writing shows (missing or extra harakat, alef
//! variants, tatweel, ة/ه and ى/ي confusion, typos). The same text, kind and
//! seed always give the same output (a SplitMix64 generator defined here,
//! independent of any crate's RNG versioning).

use super::chars::{is_alef_variant, is_arabic_letter, is_diacritic, is_latin_letter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Perturbation {
    /// Add a haraka after about half of the letters that have none.
    AddDiacritics,
    /// Remove every haraka (U+064B–U+0652, U+0670).
    StripDiacritics,
    /// Replace alef variants (ا أ إ آ) by other variants.
    SwapAlef,
    /// Insert tatweel between joining letters.
    InsertTatweel,
    /// ة → ه, and word-final ه → ة.
    TaaMarbuta,
    /// ى → ي, and word-final ي → ى.
    AlefMaksura,
    /// Character-level typos: delete, duplicate, swap neighbours, substitute.
    Typos,
}

const ALL: [Perturbation; 7] = [
    Perturbation::AddDiacritics,
    Perturbation::StripDiacritics,
    Perturbation::SwapAlef,
    Perturbation::InsertTatweel,
    Perturbation::TaaMarbuta,
    Perturbation::AlefMaksura,
    Perturbation::Typos,
];

pub fn all() -> &'static [Perturbation] {
    &ALL
}

impl Perturbation {
    pub fn as_str(self) -> &'static str {
        match self {
            Perturbation::AddDiacritics => "add-diacritics",
            Perturbation::StripDiacritics => "strip-diacritics",
            Perturbation::SwapAlef => "swap-alef",
            Perturbation::InsertTatweel => "insert-tatweel",
            Perturbation::TaaMarbuta => "taa-marbuta",
            Perturbation::AlefMaksura => "alef-maksura",
            Perturbation::Typos => "typos",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// SplitMix64: tiny, well distributed, and stable forever.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x5741_5253_4841_5445)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

const HARAKAT: [char; 6] = ['\u{064E}', '\u{064F}', '\u{0650}', '\u{0652}', '\u{0651}', '\u{064B}'];
const ALEFS: [char; 4] = ['\u{0627}', '\u{0623}', '\u{0625}', '\u{0622}'];
const TATWEEL: char = '\u{0640}';

/// Letters after which tatweel may stand (they join to the left).
fn joins_left(c: char) -> bool {
    is_arabic_letter(c)
        && !matches!(
            c,
            'ا' | 'أ' | 'إ' | 'آ' | 'ٱ' | 'ء' | 'ؤ' | 'د' | 'ذ' | 'ر' | 'ز' | 'و' | 'ى' | 'ة' | 'ژ'
        )
}

pub fn perturb(s: &str, p: Perturbation, seed: u64) -> String {
    let mut rng = Rng::new(seed.wrapping_add(p as u64));
    let chars: Vec<char> = s.chars().collect();
    match p {
        Perturbation::StripDiacritics => chars.into_iter().filter(|&c| !is_diacritic(c)).collect(),
        Perturbation::AddDiacritics => {
            let eligible =
                |i: usize| is_arabic_letter(chars[i]) && chars.get(i + 1).is_none_or(|&n| !is_diacritic(n));
            let picked = pick(&mut rng, chars.len(), 0.5, eligible);
            let mut out = String::with_capacity(s.len() * 2);
            for (i, &c) in chars.iter().enumerate() {
                out.push(c);
                if picked[i] {
                    out.push(HARAKAT[rng.below(HARAKAT.len())]);
                }
            }
            out
        }
        Perturbation::SwapAlef => {
            let picked = pick(&mut rng, chars.len(), 0.5, |i| chars[i] == 'ا' || is_alef_variant(chars[i]));
            let mut out = chars.clone();
            for (i, c) in out.iter_mut().enumerate().filter(|(i, _)| picked[*i]) {
                let others: Vec<char> = ALEFS.into_iter().filter(|&a| a != chars[i]).collect();
                *c = others[rng.below(others.len())];
            }
            out.into_iter().collect()
        }
        Perturbation::InsertTatweel => {
            let eligible =
                |i: usize| joins_left(chars[i]) && chars.get(i + 1).is_some_and(|&n| is_arabic_letter(n));
            let picked = pick(&mut rng, chars.len(), 0.3, eligible);
            let mut out = String::with_capacity(s.len() * 2);
            for (i, &c) in chars.iter().enumerate() {
                out.push(c);
                if picked[i] {
                    out.push(TATWEEL);
                }
            }
            out
        }
        Perturbation::TaaMarbuta => swap_final(&chars, 'ة', 'ه', &mut rng),
        Perturbation::AlefMaksura => swap_final(&chars, 'ى', 'ي', &mut rng),
        Perturbation::Typos => typos(chars, &mut rng),
    }
}

/// Mark each eligible position with probability `p`; when that marks none,
/// mark one eligible position, so a perturbation changes what it can.
fn pick(rng: &mut Rng, n: usize, p: f64, eligible: impl Fn(usize) -> bool) -> Vec<bool> {
    let candidates: Vec<usize> = (0..n).filter(|&i| eligible(i)).collect();
    let mut picked = vec![false; n];
    for &i in &candidates {
        picked[i] = rng.chance(p);
    }
    if !candidates.is_empty() && !candidates.iter().any(|&i| picked[i]) {
        picked[candidates[rng.below(candidates.len())]] = true;
    }
    picked
}

fn word_final(chars: &[char], i: usize) -> bool {
    let mut j = i + 1;
    while j < chars.len() && is_diacritic(chars[j]) {
        j += 1;
    }
    chars.get(j).is_none_or(|&c| !is_arabic_letter(c))
}

/// `a` → `b` anywhere, `b` → `a` at the end of a word, each half the time.
fn swap_final(chars: &[char], a: char, b: char, rng: &mut Rng) -> String {
    let eligible = |i: usize| chars[i] == a || (chars[i] == b && i > 0 && word_final(chars, i));
    let picked = pick(rng, chars.len(), 0.5, eligible);
    chars
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if !picked[i] {
                c
            } else if c == a {
                b
            } else {
                a
            }
        })
        .collect()
}

/// About one typo per 15 letters (at least one when there are letters).
fn typos(mut chars: Vec<char>, rng: &mut Rng) -> String {
    let letters = |cs: &[char]| -> Vec<usize> {
        (0..cs.len()).filter(|&i| is_arabic_letter(cs[i]) || is_latin_letter(cs[i])).collect()
    };
    let count = letters(&chars).len().div_ceil(15);
    for _ in 0..count {
        let pos = letters(&chars);
        if pos.is_empty() {
            break;
        }
        let i = pos[rng.below(pos.len())];
        match rng.below(4) {
            0 => {
                chars.remove(i);
            }
            1 => chars.insert(i, chars[i]),
            2 if i + 1 < chars.len() && !chars[i + 1].is_whitespace() => chars.swap(i, i + 1),
            _ => chars[i] = substitute(chars[i], rng),
        }
    }
    chars.into_iter().collect()
}

/// A different letter of the same script.
fn substitute(c: char, rng: &mut Rng) -> char {
    const AR: &[char] = &[
        'ا', 'ب', 'ت', 'ث', 'ج', 'ح', 'خ', 'د', 'ذ', 'ر', 'ز', 'س', 'ش', 'ص', 'ض', 'ط', 'ظ', 'ع', 'غ', 'ف',
        'ق', 'ك', 'ل', 'م', 'ن', 'ه', 'و', 'ي',
    ];
    const LA: &[char] = &[
        'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r', 's', 't',
        'u', 'v', 'w', 'x', 'y', 'z',
    ];
    let set = if is_arabic_letter(c) { AR } else { LA };
    let mut r = set[rng.below(set.len())];
    if r == c {
        r = set[(rng.below(set.len() - 1) + set.iter().position(|&x| x == c).unwrap_or(0) + 1) % set.len()];
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::normalize::search_form;

    const S: &str = "يجب فحص المضخة الرئيسية قبل التشغيل، وإغلاق الصمام الأول على اليمين ومراجعة الكتالوج";

    #[test]
    fn same_seed_same_output_different_seed_differs() {
        for &p in all() {
            assert_eq!(perturb(S, p, 7), perturb(S, p, 7), "{p:?}");
            if p != Perturbation::StripDiacritics {
                assert_ne!(perturb(S, p, 7), S, "{p:?} changed nothing");
            }
        }
        assert_ne!(perturb(S, Perturbation::Typos, 1), perturb(S, Perturbation::Typos, 2));
    }

    #[test]
    fn orthographic_perturbations_keep_the_search_form() {
        // Everything but typos is exactly what the search form folds away.
        for p in [
            Perturbation::AddDiacritics,
            Perturbation::StripDiacritics,
            Perturbation::SwapAlef,
            Perturbation::InsertTatweel,
            Perturbation::TaaMarbuta,
            Perturbation::AlefMaksura,
        ] {
            for seed in 0..20 {
                let out = perturb(S, p, seed);
                assert_eq!(search_form(&out), search_form(S), "{p:?} seed {seed}: {out}");
            }
        }
    }

    #[test]
    fn strip_diacritics_removes_all_harakat() {
        assert_eq!(perturb("أَغْلِقِ الصِّمَامَ", Perturbation::StripDiacritics, 0), "أغلق الصمام");
    }

    #[test]
    fn taa_marbuta_swaps_only_word_final_ha() {
        let out = perturb("مضخة هيدروليكية هنا", Perturbation::TaaMarbuta, 3);
        assert!(out.starts_with("مضخ") && out.contains(" هيدروليكي") && out.ends_with(" هنا"), "{out}");
    }

    #[test]
    fn typos_are_bounded() {
        let out = perturb(S, Perturbation::Typos, 11);
        let diff = (out.chars().count() as i64 - S.chars().count() as i64).abs();
        assert!(diff <= 6, "{out}");
        assert_eq!(perturb("", Perturbation::Typos, 1), "");
        assert_eq!(perturb("123 ،", Perturbation::Typos, 1), "123 ،");
    }

    #[test]
    fn names_round_trip() {
        for &p in all() {
            assert_eq!(Perturbation::parse(p.as_str()), Some(p));
        }
    }
}
