//! The three normalization forms (rules in docs/TEXT.md):
//!
//! - **train**: what the model learns to write. NFC, Arabic presentation forms
//!   folded to base letters by their compatibility decomposition (and only
//!   those: the rest of the text gets NFC, never NFKC), tatweel, zero-width
//!   characters and bidi controls deleted. Diacritics, hamza forms, ة, ى,
//!   digits and whitespace stay exactly as written.
//! - **search**: retrieval, dedup and answer matching. The train form with
//!   harakat removed, alef variants → ا, ى → ي, ة → ه, Arabic-Indic and
//!   Persian digits → ASCII, Latin lowercased and whitespace collapsed.
//! - **display**: the train form reordered to visual order and shaped, for
//!   terminals that do neither (see `display.rs`).
//!
//! Train and search are idempotent and `search(train(x)) == search(x)`. The
//! search form is the hot path of ingest and retrieval, so clean text (NFC
//! already, nothing to fold) takes a single pass over its chars with a table
//! lookup per Arabic char and falls back to the general path only when a
//! character needs composition or folding.

use std::borrow::Cow;
use std::sync::OnceLock;

use unicode_normalization::char::{canonical_combining_class, decompose_compatible};
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use super::chars::{is_latin_letter, is_presentation_form, is_removed_in_train};

/// Which normalization form to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    Train,
    Search,
    Display,
}

impl Form {
    pub fn as_str(self) -> &'static str {
        match self {
            Form::Train => "train",
            Form::Search => "search",
            Form::Display => "display",
        }
    }
}

pub fn normalize(s: &str, form: Form) -> String {
    match form {
        Form::Train => train_form(s),
        Form::Search => search_form(s),
        Form::Display => display_form(s),
    }
}

/// What the model learns to write (see the module docs).
pub fn train_form(s: &str) -> String {
    train_cow(s).into_owned()
}

/// The form used for retrieval, dedup and answer matching.
pub fn search_form(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    if search_fast(s, &mut out) {
        return out;
    }
    // Not clean: fold and compose once, after which the fast path almost
    // always applies (it fails on the train form only for an uncomposed
    // combining hamza/madda or a Latin letter with a multi-char lowercase).
    let train = train_cow(s);
    out.clear();
    if search_fast(&train, &mut out) {
        return out;
    }
    out.clear();
    search_general(&train, out)
}

/// The train form in visual order with contextual letter shapes, line by line.
pub fn display_form(s: &str) -> String {
    super::display::visual(&train_cow(s))
}

/// Train form, borrowing when the input is already in it.
pub(crate) fn train_cow(s: &str) -> Cow<'_, str> {
    if is_train_clean(s) {
        return Cow::Borrowed(s);
    }
    let mut folded = String::with_capacity(s.len());
    for c in s.chars() {
        if is_removed_in_train(c) {
            continue;
        }
        if is_presentation_form(c) {
            // Full compatibility decomposition of this one character; the
            // tatweel some ligatures decompose into is deleted like any other.
            decompose_compatible(c, |d| {
                if !is_removed_in_train(d) {
                    folded.push(d)
                }
            });
        } else {
            folded.push(c);
        }
    }
    // Deletion happens before composition: a removed ZWJ between a letter and
    // a combining hamza must not block NFC, or train would not be idempotent.
    if is_train_clean(&folded) {
        Cow::Owned(folded)
    } else {
        Cow::Owned(folded.nfc().collect())
    }
}

/// Per-char facts about the Arabic block U+0600–U+06FF, where almost all of
/// the hot path's non-ASCII characters live.
struct ArabicBlock {
    /// Canonical combining class.
    ccc: [u8; 256],
    /// NFC quick check is not "yes" (combining madda/hamza above/below).
    nfc_maybe: [bool; 256],
    /// Deleted by train (tatweel).
    removed: [bool; 256],
    /// Search-form action.
    search: [SearchAct; 256],
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SearchAct {
    Keep,
    Drop,
    Map(char),
}

fn arabic_block() -> &'static ArabicBlock {
    static BLOCK: OnceLock<ArabicBlock> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut b = ArabicBlock {
            ccc: [0; 256],
            nfc_maybe: [false; 256],
            removed: [false; 256],
            search: [SearchAct::Keep; 256],
        };
        for i in 0..256u32 {
            let Some(c) = char::from_u32(0x0600 + i) else { continue };
            let i = i as usize;
            b.ccc[i] = canonical_combining_class(c);
            b.nfc_maybe[i] = is_nfc_quick(std::iter::once(c)) != IsNormalized::Yes;
            b.removed[i] = is_removed_in_train(c);
            b.search[i] = search_act(c);
        }
        b
    })
}

/// The search rules for one character of the train form, whitespace aside.
fn search_act(c: char) -> SearchAct {
    match c {
        '\u{064B}'..='\u{0652}' | '\u{0670}' => SearchAct::Drop,
        '\u{0622}' | '\u{0623}' | '\u{0625}' | '\u{0671}' => SearchAct::Map('\u{0627}'),
        '\u{0649}' => SearchAct::Map('\u{064A}'),
        '\u{0629}' => SearchAct::Map('\u{0647}'),
        '\u{0660}'..='\u{0669}' => digit(c as u32 - 0x0660),
        '\u{06F0}'..='\u{06F9}' => digit(c as u32 - 0x06F0),
        _ => SearchAct::Keep,
    }
}

fn digit(d: u32) -> SearchAct {
    SearchAct::Map(char::from_digit(d, 10).unwrap_or('0'))
}

/// True when `s` is its own train form: NFC by quick check, nothing to fold
/// or delete. Byte-wise, with a table lookup for the Arabic block.
fn is_train_clean(s: &str) -> bool {
    let block = arabic_block();
    let bytes = s.as_bytes();
    let mut last_ccc = 0u8;
    let mut i = 0usize;
    while i < bytes.len() {
        let b = bytes[i];
        let ccc = if b < 0x80 {
            i += 1;
            0
        } else if (0xC2..=0xCB).contains(&b) {
            // U+0080–U+02FF: starters, NFC "yes", nothing to fold.
            i += 2;
            0
        } else if (0xD8..=0xDB).contains(&b) && i + 1 < bytes.len() {
            let idx = (((b - 0xD8) as usize) << 6) | (bytes[i + 1] & 0x3F) as usize;
            if block.nfc_maybe[idx] || block.removed[idx] {
                return false;
            }
            i += 2;
            block.ccc[idx]
        } else {
            let Some(c) = s[i..].chars().next() else { return false };
            i += c.len_utf8();
            match other_char(c) {
                Some(ccc) => ccc,
                None => return false,
            }
        };
        if ccc != 0 && last_ccc > ccc {
            return false;
        }
        last_ccc = ccc;
    }
    true
}

/// Combining class of a char outside ASCII/Latin-1/Arabic when it can pass
/// through train unchanged by itself, `None` when it needs the general path.
#[inline]
fn other_char(c: char) -> Option<u8> {
    if is_removed_in_train(c) || is_presentation_form(c) {
        return None;
    }
    if is_nfc_quick(std::iter::once(c)) != IsNormalized::Yes {
        return None;
    }
    Some(canonical_combining_class(c))
}

/// Collapses whitespace runs to one space and trims, as chars are pushed.
struct Spaces<'a> {
    out: &'a mut String,
    pending: bool,
}

impl Spaces<'_> {
    #[inline]
    fn push(&mut self, c: char) {
        if self.pending {
            if !self.out.is_empty() {
                self.out.push(' ');
            }
            self.pending = false;
        }
        self.out.push(c);
    }
}

/// One pass over text that is already its own train form; false (output
/// unusable) as soon as a char needs the general path. Works on bytes: runs
/// of chars the search form keeps as they are (most Arabic letters, lowercase
/// ASCII, single spaces between words) are copied as slices, and only the
/// chars that change are pushed one by one.
fn search_fast(s: &str, out: &mut String) -> bool {
    let block = arabic_block();
    let bytes = s.as_bytes();
    let mut last_ccc = 0u8;
    let mut pending = false; // whitespace seen and not yet emitted
    let mut run = 0usize; // start of the verbatim run not yet copied
    let mut i = 0usize;
    // Copy the verbatim run before `end`, then the pending space if any.
    macro_rules! flush {
        ($end:expr) => {
            if run < $end {
                out.push_str(&s[run..$end]);
            }
        };
    }
    macro_rules! emit_space {
        () => {
            if pending {
                if !out.is_empty() {
                    out.push(' ');
                }
                pending = false;
            }
        };
    }
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            last_ccc = 0;
            if b == b' '
                && !pending
                && (run < i || !out.is_empty())
                && bytes.get(i + 1).is_some_and(|&n| !may_start_whitespace(n))
            {
                // A single space between words stays as it is.
                i += 1;
            } else if b.is_ascii_whitespace() || b == 0x0B {
                flush!(i);
                pending = true;
                i += 1;
                run = i;
            } else if b.is_ascii_uppercase() {
                flush!(i);
                emit_space!();
                out.push(char::from(b.to_ascii_lowercase()));
                i += 1;
                run = i;
            } else {
                if pending {
                    flush!(i);
                    emit_space!();
                    run = i;
                }
                i += 1;
            }
            continue;
        }
        if (0xD8..=0xDB).contains(&b) && i + 1 < bytes.len() {
            // U+0600–U+06FF: two bytes, index from the payload bits.
            let idx = (((b - 0xD8) as usize) << 6) | (bytes[i + 1] & 0x3F) as usize;
            if block.nfc_maybe[idx] || block.removed[idx] {
                return false;
            }
            let ccc = block.ccc[idx];
            if ccc != 0 && last_ccc > ccc {
                return false;
            }
            last_ccc = ccc;
            match block.search[idx] {
                SearchAct::Keep => {
                    if pending {
                        flush!(i);
                        emit_space!();
                        run = i;
                    }
                }
                SearchAct::Drop => {
                    if run < i && bytes[i - 1] == b' ' && !pending {
                        // A space kept in the run may yet be trailing or
                        // doubled once this mark is gone: make it pending.
                        flush!(i - 1);
                        pending = true;
                    } else {
                        flush!(i);
                    }
                    run = i + 2;
                }
                SearchAct::Map(m) => {
                    flush!(i);
                    emit_space!();
                    out.push(m);
                    run = i + 2;
                }
            }
            i += 2;
            continue;
        }
        let Some(c) = s[i..].chars().next() else { return false };
        let len = c.len_utf8();
        let ccc = if (c as u32) <= 0x2FF {
            0
        } else {
            match other_char(c) {
                Some(ccc) => ccc,
                None => return false,
            }
        };
        if ccc != 0 && last_ccc > ccc {
            return false;
        }
        last_ccc = ccc;
        flush!(i);
        if c.is_whitespace() {
            pending = true;
        } else {
            emit_space!();
            if is_latin_letter(c) {
                // Every char here is NFC-quick-check "yes", so none can
                // compose with what precedes it; a one-char lowercase keeps
                // that true.
                let mut lower = c.to_lowercase();
                match (lower.next(), lower.next()) {
                    (Some(l), None) => out.push(l),
                    _ => return false,
                }
            } else {
                out.push(c);
            }
        }
        i += len;
        run = i;
    }
    flush!(bytes.len());
    true
}

/// Whether a UTF-8 byte can begin a whitespace char (ASCII whitespace, or the
/// lead byte of U+0085/U+00A0, U+1680, U+2000–U+205F, U+3000).
#[inline]
fn may_start_whitespace(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ' | 0xC2 | 0xE1 | 0xE2 | 0xE3)
}

/// Search rules over a train-form string, then NFC again until stable: a
/// mapping can expose a combining hamza to a new base (ى + ٔ → ي + ٔ → ئ).
/// Each extra round only happens when composition shortened the text, so
/// the loop ends.
fn search_general(train: &str, mut out: String) -> String {
    let mut cur = Cow::Borrowed(train);
    loop {
        out.clear();
        search_map(&cur, &mut out);
        if is_nfc_quick(out.chars()) == IsNormalized::Yes || unicode_normalization::is_nfc(&out) {
            return out;
        }
        cur = Cow::Owned(out.nfc().collect());
    }
}

fn search_map(s: &str, out: &mut String) {
    let mut sp = Spaces { out, pending: false };
    for c in s.chars() {
        if c.is_whitespace() {
            sp.pending = true;
        } else if c.is_ascii() {
            sp.push(c.to_ascii_lowercase());
        } else if is_latin_letter(c) {
            for l in c.to_lowercase() {
                sp.push(l);
            }
        } else {
            match search_act(c) {
                SearchAct::Keep => sp.push(c),
                SearchAct::Drop => {}
                SearchAct::Map(m) => sp.push(m),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn general(s: &str) -> String {
        search_general(&train_cow(s), String::new())
    }

    #[test]
    fn fast_and_general_search_agree_on_clean_text() {
        for s in [
            "الصيانةُ الدوريّة للمضخة رقم ٣ في الخط B",
            "  Pump   P-101  ",
            "قَالَ: \tافحص\n\nالصمام",
            "ÉCOLE Ｆｕｌｌ ١٢٣ ۴۵",
            "",
            "a \u{064E}",
            "a \u{064E} b",
            " \u{064E}a ",
            "x \u{00A0}y\u{2003}z € A",
            "قال أحمد:  إنّ  الضغط\u{0085}عالٍ ",
        ] {
            let mut fast = String::new();
            assert!(search_fast(s, &mut fast), "{s:?} should take the fast path");
            assert_eq!(fast, general(s), "{s:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        #[test]
        fn fast_path_agrees_with_the_general_path(
            s in "[ a-zA-Z\t\n\u{00A0}\u{2003}\u{0600}-\u{06FF}éÉ€]{0,30}"
        ) {
            let mut fast = String::new();
            if search_fast(&s, &mut fast) {
                proptest::prop_assert_eq!(fast, general(&s));
            }
        }
    }

    #[test]
    fn unsorted_marks_leave_the_fast_path() {
        // shadda (33) before fatha (30) is not NFC.
        let s = "ب\u{0651}\u{064E}";
        assert!(!is_train_clean(s));
        assert_eq!(train_form(s), "ب\u{064E}\u{0651}");
    }

    #[test]
    fn exposed_combining_hamza_recomposes_in_search() {
        // alef maksura + combining hamza above does not compose in NFC; after
        // ى → ي it does, and the result must be stable.
        let s = "\u{0649}\u{0654}";
        let once = search_form(s);
        assert_eq!(once, "\u{0626}");
        assert_eq!(search_form(&once), once);
    }

    #[test]
    fn arabic_block_table_matches_the_rules() {
        let b = arabic_block();
        assert!(b.nfc_maybe[0x54] && b.nfc_maybe[0x53] && b.nfc_maybe[0x55]);
        assert!(b.removed[0x40]);
        assert_eq!(b.ccc[0x4E], 30);
        assert!(b.search[0x51] == SearchAct::Drop && b.search[0x54] == SearchAct::Keep);
    }
}
