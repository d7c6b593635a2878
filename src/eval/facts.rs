//! Fact spans: the parts of a plant's text that carry checkable facts —
//! numbers, measured values with their units, fault codes and part numbers.
//!
//! The rule (documented in docs/EVAL.md):
//! 1. Text splits into words at whitespace; a word's leading and trailing
//!    punctuation (`.,;:!?()[]{}"'«»،؛؟`) is not part of it.
//! 2. A word that contains a digit (ASCII `0-9`, Arabic-Indic `٠-٩` or
//!    Extended Arabic-Indic `۰-۹`) is a fact: `45`, `3.5`, `1,200`, `E-17`,
//!    `HF-220`, `M12`, `220V`, `10%`, `١٢٠`, `و45` (a clitic stays attached).
//! 3. Up to two words right after a fact word that are known units (`Nm`,
//!    `bar`, `°C`, `rpm`, `نيوتن`, `متر`, `بار`, `دقيقة`, …) extend that fact:
//!    `45 Nm`, `45 نيوتن متر`, `6 bar`.
//!
//! Spans are byte ranges into the original string, in order, never
//! overlapping. Teacher-forced loss on these tokens measures whether the
//! model learned the plant's facts rather than its wording (REFERENCE §1).

use std::ops::Range;

/// Units recognised after a number, compared case-insensitively (ASCII) and
/// with trailing punctuation removed.
const UNITS: &[&str] = &[
    "nm",
    "n·m",
    "n.m",
    "bar",
    "mbar",
    "psi",
    "pa",
    "kpa",
    "mpa",
    "mm",
    "cm",
    "km",
    "µm",
    "um",
    "kg",
    "ml",
    "kv",
    "ma",
    "kw",
    "kwh",
    "hz",
    "khz",
    "rpm",
    "°c",
    "°f",
    "%",
    "hr",
    "hrs",
    "hour",
    "hours",
    "min",
    "mins",
    "minute",
    "minutes",
    "sec",
    "second",
    "seconds",
    "ms",
    "day",
    "days",
    "week",
    "weeks",
    "month",
    "months",
    "°",
    "degrees",
    "mm²",
    "m³",
    "l/min",
    "m/s",
    "ملم",
    "مم",
    "سم",
    "م",
    "متر",
    "مترا",
    "أمتار",
    "كم",
    "كجم",
    "كغ",
    "كيلوغرام",
    "كيلوجرام",
    "كيلو",
    "غرام",
    "جرام",
    "طن",
    "لتر",
    "لترات",
    "مل",
    "بار",
    "باسكال",
    "فولت",
    "أمبير",
    "امبير",
    "واط",
    "كيلوواط",
    "هرتز",
    "دورة",
    "دقيقة",
    "دقائق",
    "ثانية",
    "ثوان",
    "ثواني",
    "ساعة",
    "ساعات",
    "يوم",
    "أيام",
    "ايام",
    "أسبوع",
    "أسابيع",
    "شهر",
    "أشهر",
    "درجة",
    "درجات",
    "مئوية",
    "نيوتن",
    "نيوتن·متر",
    "بالمئة",
    "بالمائة",
];

/// One-letter units, matched with their case so that English words ("a",
/// "s") after a number are not taken for units.
const SHORT_UNITS: &[&str] = &["A", "V", "W", "m", "g", "s", "h", "t", "l", "L", "C", "F", "K"];

const EDGE_PUNCT: &[char] =
    &['.', ',', ';', ':', '!', '?', '(', ')', '[', ']', '{', '}', '"', '\'', '«', '»', '،', '؛', '؟'];

/// True for the three digit sets that appear in Arabic and English plant text.
pub fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || ('\u{0660}'..='\u{0669}').contains(&c) || ('\u{06F0}'..='\u{06F9}').contains(&c)
}

/// Words with their byte ranges, edge punctuation trimmed, and whether
/// punctuation followed (a clause ends: no unit can follow); empty words dropped.
fn words(s: &str) -> Vec<(Range<usize>, bool)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices().chain(std::iter::once((s.len(), ' '))) {
        match (c.is_whitespace(), start) {
            (true, Some(b)) => {
                if let Some(r) = trim_edges(s, b..i) {
                    out.push((r.clone(), r.end < i));
                }
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    out
}

fn trim_edges(s: &str, r: Range<usize>) -> Option<Range<usize>> {
    let w = &s[r.clone()];
    // `%` and `°` are meaningful at the edges (10%, 90°), so only EDGE_PUNCT goes.
    let lead = w.len() - w.trim_start_matches(EDGE_PUNCT).len();
    let trimmed = w.trim_start_matches(EDGE_PUNCT).trim_end_matches(EDGE_PUNCT);
    (!trimmed.is_empty()).then(|| r.start + lead..r.start + lead + trimmed.len())
}

fn is_unit(word: &str) -> bool {
    SHORT_UNITS.contains(&word) || UNITS.contains(&word.to_lowercase().as_str())
}

/// The fact spans of `s` (see the module rule), in order, non-overlapping.
pub fn fact_spans(s: &str) -> Vec<Range<usize>> {
    let ws = words(s);
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut i = 0;
    while i < ws.len() {
        let w = &s[ws[i].0.clone()];
        if !w.chars().any(is_digit) {
            i += 1;
            continue;
        }
        let mut span = ws[i].0.clone();
        let mut clause_end = ws[i].1;
        let mut j = i + 1;
        while !clause_end && j < ws.len() && j <= i + 2 && is_unit(&s[ws[j].0.clone()]) {
            span.end = ws[j].0.end;
            clause_end = ws[j].1;
            j += 1;
        }
        out.push(span);
        i = j;
    }
    out
}

/// The fact strings of `s` (for reports and tests).
pub fn facts(s: &str) -> Vec<&str> {
    fact_spans(s).into_iter().map(|r| &s[r]).collect()
}

/// `s` cut into consecutive pieces, each flagged true when it is a fact. A
/// fact piece takes the single space before it, so that each piece starts
/// where a byte-level BPE pre-tokenizer would start a token anyway, and the
/// pieces' token ids, concatenated, match the text's own tokenization in all
/// but rare merges across the boundary.
pub fn fact_segments(s: &str) -> Vec<(&str, bool)> {
    let mut out = Vec::new();
    let mut at = 0;
    for r in fact_spans(s) {
        let mut start = r.start;
        if start > at && s[..start].ends_with(' ') {
            start -= 1;
        }
        if start > at {
            out.push((&s[at..start], false));
        }
        out.push((&s[start..r.end], true));
        at = r.end;
    }
    if at < s.len() {
        out.push((&s[at..], false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_codes_and_units_are_facts() {
        let s = "Tighten the HF-220 clamp to 45 Nm, then clear fault E-17 within 3.5 minutes.";
        assert_eq!(facts(s), vec!["HF-220", "45 Nm", "E-17", "3.5 minutes"]);
    }

    #[test]
    fn arabic_units_and_digit_sets() {
        let s = "اربط المسمار بعزم ٤٥ نيوتن متر، وضغط الزيت 6 بار (الرمز E-17).";
        assert_eq!(facts(s), vec!["٤٥ نيوتن متر", "6 بار", "E-17"]);
        assert_eq!(facts("كل ۳ ساعات"), vec!["۳ ساعات"]);
    }

    #[test]
    fn words_without_digits_are_not_facts() {
        assert!(facts("Replace the filter element; check the seal.").is_empty());
        // A unit word alone is not a fact.
        assert!(facts("pressure in bar").is_empty());
    }

    #[test]
    fn english_words_after_numbers_are_not_units() {
        assert_eq!(facts("Step 3 a new seal goes in"), vec!["3"]);
        assert_eq!(facts("Fuse 16 A, relay 24 V"), vec!["16 A", "24 V"]);
        // Punctuation after the number ends the phrase.
        assert_eq!(facts("line 3, bar stock"), vec!["3"]);
    }

    #[test]
    fn clitics_and_percent_stay_attached() {
        assert_eq!(facts("وبنسبة 10% و45 دقيقة"), vec!["10%", "و45 دقيقة"]);
    }

    #[test]
    fn segments_cover_the_text_exactly() {
        let s = "Set 220V at line 3, code HF-220.";
        let segs = fact_segments(s);
        let joined: String = segs.iter().map(|(p, _)| *p).collect();
        assert_eq!(joined, s);
        let fact_pieces: Vec<&str> = segs.iter().filter(|(_, f)| *f).map(|(p, _)| *p).collect();
        assert_eq!(fact_pieces, vec![" 220V", " 3", " HF-220"]);
        assert_eq!(fact_segments("42"), vec![("42", true)]);
        assert_eq!(fact_segments(""), Vec::<(&str, bool)>::new());
    }
}
