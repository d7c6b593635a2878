//! Contextual shaping of Arabic letters into presentation forms (isolated,
//! initial, medial, final, and the lam-alef ligatures), for terminals that
//! draw each code point as it comes. Works on one line in logical order;
//! `display.rs` reorders afterwards. Joining follows the Unicode joining
//! types: dual-joining letters connect on both sides, right-joining letters
//! (alef, dal, ra, waw, …) only to the preceding letter, marks are transparent.

use std::sync::OnceLock;

use unicode_normalization::char::is_combining_mark;

/// Presentation forms of one letter: isolated, final, initial, medial.
#[derive(Clone, Copy)]
struct Forms([Option<char>; 4]);

const ISOLATED: usize = 0;
const FINAL: usize = 1;
const INITIAL: usize = 2;
const MEDIAL: usize = 3;

/// Letters of U+0621–U+064A in the order of their forms in U+FE80–U+FEF4,
/// with how many forms each has (1: hamza, 2: right-joining, 4: dual-joining).
const FE80_LAYOUT: &[(u32, u8)] = &[
    (0x621, 1),
    (0x622, 2),
    (0x623, 2),
    (0x624, 2),
    (0x625, 2),
    (0x626, 4),
    (0x627, 2),
    (0x628, 4),
    (0x629, 2),
    (0x62A, 4),
    (0x62B, 4),
    (0x62C, 4),
    (0x62D, 4),
    (0x62E, 4),
    (0x62F, 2),
    (0x630, 2),
    (0x631, 2),
    (0x632, 2),
    (0x633, 4),
    (0x634, 4),
    (0x635, 4),
    (0x636, 4),
    (0x637, 4),
    (0x638, 4),
    (0x639, 4),
    (0x63A, 4),
    (0x641, 4),
    (0x642, 4),
    (0x643, 4),
    (0x644, 4),
    (0x645, 4),
    (0x646, 4),
    (0x647, 4),
    (0x648, 2),
    (0x649, 2),
    (0x64A, 4),
];

/// Persian/Urdu letters common in plant documents (پ چ ژ ک گ ی): base letter,
/// first form in U+FB50–U+FBFF, number of forms.
const FB50_LETTERS: &[(u32, u32, u8)] = &[
    (0x67E, 0xFB56, 4),
    (0x686, 0xFB7A, 4),
    (0x698, 0xFB8A, 2),
    (0x6A9, 0xFB8E, 4),
    (0x6AF, 0xFB92, 4),
    (0x6CC, 0xFBFC, 4),
];

const LAM: char = '\u{0644}';

/// Lam-alef ligatures (isolated, final) by the alef that follows lam.
fn lam_alef(alef: char) -> Option<(char, char)> {
    match alef {
        '\u{0622}' => Some(('\u{FEF5}', '\u{FEF6}')),
        '\u{0623}' => Some(('\u{FEF7}', '\u{FEF8}')),
        '\u{0625}' => Some(('\u{FEF9}', '\u{FEFA}')),
        '\u{0627}' => Some(('\u{FEFB}', '\u{FEFC}')),
        _ => None,
    }
}

/// Forms of the letters of U+0600–U+06FF, indexed by code point − 0x600.
fn forms_table() -> &'static [Option<Forms>; 256] {
    static TABLE: OnceLock<[Option<Forms>; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [None; 256];
        let mut add = |base: u32, first: u32, count: u8| {
            let mut f = [None; 4];
            for (k, slot) in f.iter_mut().enumerate().take(count as usize) {
                *slot = char::from_u32(first + k as u32);
            }
            t[(base - 0x600) as usize] = Some(Forms(f));
        };
        let mut next = 0xFE80;
        for &(base, count) in FE80_LAYOUT {
            add(base, next, count);
            next += count as u32;
        }
        for &(base, first, count) in FB50_LETTERS {
            add(base, first, count);
        }
        t
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Joining {
    /// Connects to both neighbours.
    Dual,
    /// Connects to the preceding letter only.
    Right,
    /// Causes joining on both sides without a shape of its own (tatweel, ZWJ).
    Causing,
    /// Skipped when looking for neighbours (combining marks).
    Transparent,
    None,
}

fn joining(c: char) -> Joining {
    let cp = c as u32;
    if (0x600..0x700).contains(&cp) {
        if let Some(Forms(f)) = forms_table()[(cp - 0x600) as usize] {
            return match (f[FINAL], f[MEDIAL]) {
                (Some(_), Some(_)) => Joining::Dual,
                (Some(_), None) => Joining::Right,
                _ => Joining::None,
            };
        }
    }
    match c {
        '\u{0640}' | '\u{200D}' => Joining::Causing,
        _ if is_combining_mark(c) => Joining::Transparent,
        _ => Joining::None,
    }
}

fn forms_of(c: char) -> Option<Forms> {
    let cp = c as u32;
    if (0x600..0x700).contains(&cp) {
        forms_table()[(cp - 0x600) as usize]
    } else {
        None
    }
}

/// Shape one line of logical-order text.
pub fn shape_line(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let joins: Vec<Joining> = chars.iter().map(|&c| joining(c)).collect();
    let neighbour = |from: usize, step: isize| -> Option<usize> {
        let mut i = from as isize + step;
        while i >= 0 && (i as usize) < chars.len() {
            if joins[i as usize] != Joining::Transparent {
                return Some(i as usize);
            }
            i += step;
        }
        None
    };
    let mut out = String::with_capacity(line.len() * 3 / 2);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let Some(Forms(forms)) = forms_of(c) else {
            out.push(c);
            i += 1;
            continue;
        };
        let joins_prev =
            neighbour(i, -1).is_some_and(|p| matches!(joins[p], Joining::Dual | Joining::Causing));
        let next = neighbour(i, 1);
        if c == LAM {
            if let Some((iso, fin)) = next.and_then(|n| lam_alef(chars[n])) {
                // Marks written on the lam follow the ligature.
                let n = next.unwrap_or(i);
                out.push(if joins_prev { fin } else { iso });
                out.extend(&chars[i + 1..n]);
                i = n + 1;
                continue;
            }
        }
        let joins_next = joins[i] == Joining::Dual
            && next.is_some_and(|n| matches!(joins[n], Joining::Dual | Joining::Right | Joining::Causing));
        let want = match (joins_prev, joins_next) {
            (true, true) => MEDIAL,
            (true, false) => FINAL,
            (false, true) => INITIAL,
            (false, false) => ISOLATED,
        };
        out.push(forms[want].or(forms[ISOLATED]).unwrap_or(c));
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicode_normalization::char::decompose_compatible;

    fn base_of(c: char) -> String {
        let mut s = String::new();
        decompose_compatible(c, |d| s.push(d));
        s
    }

    #[test]
    fn every_table_form_decomposes_to_its_letter() {
        for (i, f) in forms_table().iter().enumerate() {
            let Some(Forms(forms)) = f else { continue };
            let base = char::from_u32(0x600 + i as u32).unwrap();
            for form in forms.iter().flatten() {
                let nfc: String =
                    unicode_normalization::UnicodeNormalization::nfc(base_of(*form).chars()).collect();
                assert_eq!(nfc, base.to_string(), "form U+{:04X}", *form as u32);
            }
        }
    }

    #[test]
    fn word_gets_initial_medial_final_forms() {
        // باب: beh initial, alef final, beh isolated (alef does not join left).
        assert_eq!(shape_line("باب"), "\u{FE91}\u{FE8E}\u{FE8F}");
        // محمد: meem initial, hah medial, meem medial, dal final.
        assert_eq!(shape_line("محمد"), "\u{FEE3}\u{FEA4}\u{FEE4}\u{FEAA}");
    }

    #[test]
    fn lam_alef_becomes_one_ligature() {
        // سلام: seen initial, lam-alef final ligature, meem isolated.
        assert_eq!(shape_line("سلام"), "\u{FEB3}\u{FEFC}\u{FEE1}");
        // لأن: the ligature does not join left, so noon stands isolated.
        assert_eq!(shape_line("لأن"), "\u{FEF7}\u{FEE5}");
    }

    #[test]
    fn marks_are_transparent_to_joining() {
        // بَب: the fatha does not break the join.
        assert_eq!(shape_line("ب\u{064E}ب"), "\u{FE91}\u{064E}\u{FE90}");
    }
}
