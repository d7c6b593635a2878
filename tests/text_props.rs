//! Properties over arbitrary input: nothing panics, train and search are
//! idempotent, search ignores what train already normalized away, and
//! perturbations are deterministic. Strings are drawn with a bias towards
//! the Arabic blocks, presentation forms, marks and invisible controls where
//! the rules interact.

use proptest::prelude::*;
use warsha::text::decode::decode;
use warsha::text::normalize::{display_form, search_form, train_form};
use warsha::text::perturb::{all, perturb};
use warsha::text::tags::tags;

fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('\u{0600}', '\u{06FF}'),
        2 => prop::char::range('\u{FB50}', '\u{FDFF}'),
        2 => prop::char::range('\u{FE70}', '\u{FEFF}'),
        1 => prop::sample::select(vec![
            '\u{200B}', '\u{200C}', '\u{200D}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202E}',
            '\u{2066}', '\u{2069}', '\u{FEFF}', '\u{0640}', ' ', '\t', '\n', '\u{00A0}', '\u{0301}',
            '\u{0307}', 'e', 'A', 'I', '\u{0130}', '\u{FB01}', '\u{FF21}',
        ]),
        1 => prop::char::range('\u{0300}', '\u{036F}'),
        2 => any::<char>(),
    ]
}

fn tricky_string() -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..40).prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn train_is_idempotent(s in tricky_string()) {
        let t = train_form(&s);
        prop_assert_eq!(train_form(&t), t);
    }

    #[test]
    fn search_is_idempotent(s in tricky_string()) {
        let x = search_form(&s);
        prop_assert_eq!(search_form(&x), x);
    }

    #[test]
    fn search_of_train_is_search(s in tricky_string()) {
        prop_assert_eq!(search_form(&train_form(&s)), search_form(&s));
    }

    #[test]
    fn arbitrary_strings_do_not_panic(s in any::<String>()) {
        let t = train_form(&s);
        prop_assert_eq!(train_form(&t), t.clone());
        let x = search_form(&s);
        prop_assert_eq!(search_form(&x), x);
        let _ = display_form(&s);
        let _ = tags(&s);
    }

    #[test]
    fn display_and_tags_do_not_panic(s in tricky_string()) {
        let _ = display_form(&s);
        let t = tags(&s);
        prop_assert!((0.0..=1.0).contains(&t.arabic_share));
    }

    #[test]
    fn arbitrary_bytes_decode_or_report_an_offset_inside(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        match decode(&bytes) {
            Ok(d) => prop_assert!(!d.text.contains('\0')),
            Err(e) => prop_assert!(e.offset < bytes.len().max(1), "{} for {} bytes", e, bytes.len()),
        }
    }

    #[test]
    fn perturbations_are_deterministic_and_never_panic(s in tricky_string(), seed in any::<u64>()) {
        for &p in all() {
            prop_assert_eq!(perturb(&s, p, seed), perturb(&s, p, seed));
        }
    }
}
