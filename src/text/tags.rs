//! Tags computed per text: language (by the script of its letters), the
//! share of Arabic letters, whether it is diacritized, and a light dialect
//! guess from marker words (see `dialect.rs` and docs/TEXT.md for the rules
//! and the measured accuracy).

use super::chars::{is_arabic_letter, is_diacritic, is_latin_letter};
use super::dialect;

/// Share of letters of one script above which a text counts as that script.
pub const SCRIPT_SHARE: f32 = 0.8;
/// Harakat per Arabic letter at or above which a text counts as diacritized
/// (fully vocalized text has ~0.7–1.0; a stray shadda or tanwin gives < 0.1).
pub const DIACRITIZED_RATIO: f32 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    Ar,
    En,
    Mixed,
    Other,
}

impl Lang {
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Ar => "ar",
            Lang::En => "en",
            Lang::Mixed => "mixed",
            Lang::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Lang::Ar, Lang::En, Lang::Mixed, Lang::Other].into_iter().find(|l| l.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    Msa,
    Egyptian,
    Gulf,
    Levantine,
    Maghrebi,
}

impl Dialect {
    pub const ALL: [Dialect; 5] =
        [Dialect::Msa, Dialect::Egyptian, Dialect::Gulf, Dialect::Levantine, Dialect::Maghrebi];

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Msa => "msa",
            Dialect::Egyptian => "egyptian",
            Dialect::Gulf => "gulf",
            Dialect::Levantine => "levantine",
            Dialect::Maghrebi => "maghrebi",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tags {
    pub lang: Lang,
    /// Arabic letters over all letters (0 when there are no letters).
    pub arabic_share: f32,
    pub diacritized: bool,
    /// None when the text has no Arabic to speak of (lang is en or other).
    pub dialect: Option<Dialect>,
}

pub fn tags(s: &str) -> Tags {
    let (mut letters, mut arabic, mut latin, mut marks) = (0usize, 0usize, 0usize, 0usize);
    for c in s.chars() {
        if is_arabic_letter(c) {
            arabic += 1;
            letters += 1;
        } else if is_diacritic(c) {
            marks += 1;
        } else if c.is_alphabetic() {
            letters += 1;
            latin += usize::from(is_latin_letter(c));
        }
    }
    let share = |n: usize| if letters == 0 { 0.0 } else { n as f32 / letters as f32 };
    let arabic_share = share(arabic);
    let lang = if letters == 0 {
        Lang::Other
    } else if arabic_share >= SCRIPT_SHARE {
        Lang::Ar
    } else if share(latin) >= SCRIPT_SHARE {
        Lang::En
    } else if arabic > 0 && latin > 0 && share(arabic + latin) >= SCRIPT_SHARE {
        Lang::Mixed
    } else {
        Lang::Other
    };
    let diacritized = arabic > 0 && marks as f32 / arabic as f32 >= DIACRITIZED_RATIO;
    let dialect = matches!(lang, Lang::Ar | Lang::Mixed).then(|| dialect::guess(s));
    Tags { lang, arabic_share, diacritized, dialect }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arabic_english_mixed_and_other() {
        let t = tags("افحص ضغط المضخة قبل التشغيل");
        assert_eq!((t.lang, t.arabic_share), (Lang::Ar, 1.0));
        assert_eq!(tags("Check the pump pressure before start-up").lang, Lang::En);
        let m = tags("افحص ضغط pump P-101 قبل start");
        assert_eq!(m.lang, Lang::Mixed);
        assert!(m.arabic_share > 0.3 && m.arabic_share < 0.7, "{}", m.arabic_share);
        assert_eq!(tags("12.5 / 3000 ±0.2").lang, Lang::Other);
        assert_eq!(tags("12.5 bar, 3000 rpm").lang, Lang::En);
        assert_eq!(tags("Прочность стали").lang, Lang::Other);
        assert_eq!(tags("").arabic_share, 0.0);
    }

    #[test]
    fn english_has_no_dialect() {
        assert_eq!(tags("Close the valve").dialect, None);
        assert_eq!(tags("أغلق الصمام").dialect, Some(Dialect::Msa));
    }

    #[test]
    fn diacritized_threshold() {
        assert!(tags("أَغْلِقِ الصِّمَامَ").diacritized);
        // One shadda in a long sentence is not a diacritized text.
        assert!(!tags("يجب فحص المضخة الرئيسية قبل التشغيل وبعده كلّ يوم").diacritized);
    }

    #[test]
    fn names_round_trip() {
        for d in Dialect::ALL {
            assert_eq!(Dialect::parse(d.as_str()), Some(d));
        }
        assert_eq!(Lang::parse("mixed"), Some(Lang::Mixed));
    }
}
