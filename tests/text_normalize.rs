//! Golden tables for the train and search forms: every rule of docs/TEXT.md
//! has a row, so a change of behaviour shows up as a named failing row.

use warsha::text::normalize::{normalize, search_form, train_form, Form};

/// (what the row pins, input, train form, search form)
const GOLDEN: &[(&str, &str, &str, &str)] = &[
    ("presentation-form السلام", "ﺍﻟﺴﻼﻡ", "السلام", "السلام"),
    ("presentation-form الصيانة", "ﺍﻟﺼﻴﺎﻧﺔ", "الصيانة", "الصيانه"),
    (
        "lam-alef ligatures with hamza and madda",
        "\u{FEF7}\u{FEF8}\u{FEF9}\u{FEFA}\u{FEF5}\u{FEF6}\u{FEFB}\u{FEFC}",
        "لألألإلإلآلآلالا",
        "لالالالالالالالا",
    ),
    ("allah ligature", "\u{FDF2}", "الله", "الله"),
    (
        "tatweel inside a decomposition",
        "\u{FCF2}\u{FCF3}\u{FCF4}",
        // NFC sorts the marks by combining class: fatha, damma, kasra, then shaddas.
        "\u{064E}\u{064F}\u{0650}\u{0651}\u{0651}\u{0651}",
        "",
    ),
    ("multi-word ligature", "\u{FDFA}", "صلى الله عليه وسلم", "صلي الله عليه وسلم"),
    ("isolated harakat forms", "\u{FE70}\u{FE71}", " \u{064B}\u{064B}", ""),
    ("presentation words in a sentence", "ﺑﺴﻢ ﷲ", "بسم الله", "بسم الله"),
    (
        "compatibility chars outside the Arabic ranges keep NFC",
        "\u{FB01} x\u{00B2} \u{FF26}\u{FF55}\u{FF4C}\u{FF4C}",
        "\u{FB01} x\u{00B2} \u{FF26}\u{FF55}\u{FF4C}\u{FF4C}",
        "\u{FB01} x\u{00B2} \u{FF46}\u{FF55}\u{FF4C}\u{FF4C}",
    ),
    ("tatweel", "الصـــيانة", "الصيانة", "الصيانه"),
    ("zero-width characters", "صي\u{200C}انة\u{200B}", "صيانة", "صيانه"),
    ("bidi embedding and marks", "\u{202B}المضخة P-101\u{202C}\u{200F}", "المضخة P-101", "المضخه p-101"),
    ("bidi isolates and LRM", "\u{2067}مرحبا\u{2069} \u{200E}ok", "مرحبا ok", "مرحبا ok"),
    ("BOM/ZWNBSP anywhere", "\u{FEFF}x\u{FEFF}y\u{FEFF}", "xy", "xy"),
    ("NFC reorders marks", "ب\u{0651}\u{064E}", "ب\u{064E}\u{0651}", "ب"),
    ("NFC composes Latin", "e\u{0301}", "\u{00E9}", "\u{00E9}"),
    ("NFC composes decomposed hamza", "ا\u{0654}", "أ", "ا"),
    ("ZWJ removed before composing", "ا\u{200D}\u{0654}", "أ", "ا"),
    ("diacritics kept in train, removed in search", "أَغْلِقِ الصِّمَامَ", "أَغْلِقِ الصِّمَامَ", "اغلق الصمام"),
    ("superscript alef", "هٰذا", "هٰذا", "هذا"),
    (
        "hamza forms: alef variants fold, waw/yaa hamza stay",
        "مسؤول رئيس إنتاج آلة ٱلحمد مستوى",
        "مسؤول رئيس إنتاج آلة ٱلحمد مستوى",
        "مسؤول رئيس انتاج اله الحمد مستوي",
    ),
    (
        "arabic-indic and persian digits",
        "الضغط ٣٫٥ بار و ۱۲ درجة",
        "الضغط ٣٫٥ بار و ۱۲ درجة",
        "الضغط 3٫5 بار و 12 درجه",
    ),
    (
        "mixed arabic english digits, whitespace kept in train",
        "Pump  P-101\tتعمل\n  بشكل   جيد  ",
        "Pump  P-101\tتعمل\n  بشكل   جيد  ",
        "pump p-101 تعمل بشكل جيد",
    ),
    (
        "only Latin is lowercased",
        "\u{0130}stanbul ΑΒΓ Ünité",
        "\u{0130}stanbul ΑΒΓ Ünité",
        "i\u{0307}stanbul ΑΒΓ ünité",
    ),
    ("alef maksura + combining hamza settles", "ى\u{0654}", "ى\u{0654}", "\u{0626}"),
    ("second hamza on hamza-alef settles", "أ\u{0654}", "أ\u{0654}", "ا"),
    ("whitespace only", " \t\n\u{00A0} ", " \t\n\u{00A0} ", ""),
    ("empty", "", "", ""),
];

#[test]
fn golden_train_and_search_forms() {
    let mut failures = Vec::new();
    for &(what, input, train, search) in GOLDEN {
        let (t, s) = (train_form(input), search_form(input));
        if t != train {
            failures.push(format!("{what}: train {t:?} != {train:?}"));
        }
        if s != search {
            failures.push(format!("{what}: search {s:?} != {search:?}"));
        }
        assert_eq!(normalize(input, Form::Train), t);
        assert_eq!(normalize(input, Form::Search), s);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn golden_rows_are_fixed_points() {
    for &(what, input, train, search) in GOLDEN {
        assert_eq!(train_form(train), train, "{what}");
        assert_eq!(search_form(search), search, "{what}");
        assert_eq!(search_form(train), search_form(input), "{what}");
    }
}

#[test]
fn every_presentation_form_folds_out_of_the_presentation_ranges() {
    for cp in (0xFB50..=0xFDFF).chain(0xFE70..=0xFEFF) {
        let Some(c) = char::from_u32(cp) else { continue };
        let t = train_form(&c.to_string());
        let assigned = unicode_normalization::char::is_public_assigned(c);
        let has_decomposition = {
            let mut n = 0;
            unicode_normalization::char::decompose_compatible(c, |d| n += usize::from(d != c));
            n > 0
        };
        if has_decomposition {
            assert!(
                t.chars().all(|d| !matches!(d as u32, 0xFB50..=0xFDFF | 0xFE70..=0xFEFF)),
                "U+{cp:04X} → {t:?}"
            );
            assert!(!t.contains('\u{0640}'), "U+{cp:04X} left a tatweel");
        } else if cp != 0xFEFF {
            // Ornate parentheses, noncharacters, unassigned: nothing to fold.
            assert_eq!(t, c.to_string(), "U+{cp:04X} (assigned: {assigned})");
        }
    }
}

#[test]
fn display_is_visual_and_shaped() {
    // السلام: logical alef-lam-seen-lam+alef-meem, visual from the left:
    // meem isolated (alef does not join left), lam-alef final, seen medial,
    // lam initial, alef isolated.
    assert_eq!(normalize("السلام", Form::Display), "\u{FEE1}\u{FEFC}\u{FEB4}\u{FEDF}\u{FE8D}");
    // Presentation-form input is folded first, so display agrees with it.
    assert_eq!(normalize("ﺍﻟﺴﻼﻡ", Form::Display), normalize("السلام", Form::Display));
    // English stays as typed; bidi controls are gone.
    assert_eq!(normalize("\u{200E}Pump P-101", Form::Display), "Pump P-101");
    // Digits in an Arabic line keep their left-to-right order.
    let v = normalize("الضغط 12 بار", Form::Display);
    assert!(v.contains("12"), "{v}");
    assert!(v.starts_with('\u{FEAD}'), "{v}");
}
