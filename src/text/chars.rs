//! Character classes shared by the normalization forms, the tags and the
//! perturbations. Ranges are written out here once so that every rule in
//! docs/TEXT.md points at one definition.

/// Arabic presentation forms (A: U+FB50–U+FDFF, B: U+FE70–U+FEFF), folded to
/// base letters in the train form.
#[inline]
pub fn is_presentation_form(c: char) -> bool {
    matches!(c, '\u{FB50}'..='\u{FDFF}' | '\u{FE70}'..='\u{FEFF}')
}

/// Characters the train form deletes: tatweel, zero-width characters, the
/// byte-order mark / ZWNBSP, and bidi controls (marks, embeddings, isolates).
#[inline]
pub fn is_removed_in_train(c: char) -> bool {
    matches!(
        c,
        '\u{0640}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// The harakat removed by the search form: fathatan … sukun, and the
/// superscript (dagger) alef.
#[inline]
pub fn is_diacritic(c: char) -> bool {
    matches!(c, '\u{064B}'..='\u{0652}' | '\u{0670}')
}

/// Letters of the Arabic script (base letters and presentation forms), not
/// marks, digits or punctuation.
#[inline]
pub fn is_arabic_letter(c: char) -> bool {
    match c {
        '\u{0620}'..='\u{063F}' | '\u{0641}'..='\u{064A}' | '\u{066E}'..='\u{066F}' => true,
        '\u{0671}'..='\u{06D3}' | '\u{06D5}' | '\u{06EE}'..='\u{06EF}' | '\u{06FA}'..='\u{06FC}' => true,
        '\u{06FF}' | '\u{0750}'..='\u{077F}' | '\u{08A0}'..='\u{08C9}' => c.is_alphabetic(),
        '\u{FB50}'..='\u{FDFF}' | '\u{FE70}'..='\u{FEFC}' => c.is_alphabetic(),
        _ => false,
    }
}

/// Letters of the Latin script (basic, Latin-1, extended blocks, IPA and
/// full-width forms). The search form lowercases exactly these.
#[inline]
pub fn is_latin_letter(c: char) -> bool {
    match c {
        'A'..='Z' | 'a'..='z' => true,
        '\u{00C0}'..='\u{024F}' => c != '\u{00D7}' && c != '\u{00F7}',
        '\u{0250}'..='\u{02AF}'
        | '\u{1D00}'..='\u{1D7F}'
        | '\u{1E00}'..='\u{1EFF}'
        | '\u{2C60}'..='\u{2C7F}'
        | '\u{A720}'..='\u{A7FF}'
        | '\u{AB30}'..='\u{AB6F}'
        | '\u{FF21}'..='\u{FF3A}'
        | '\u{FF41}'..='\u{FF5A}' => c.is_alphabetic(),
        '\u{FB00}'..='\u{FB06}' => true,
        _ => false,
    }
}

/// Alef with hamza above/below, with madda, and alef wasla: the variants the
/// search form folds to bare alef.
#[inline]
pub fn is_alef_variant(c: char) -> bool {
    matches!(c, '\u{0622}' | '\u{0623}' | '\u{0625}' | '\u{0671}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bom_is_both_presentation_and_removed() {
        assert!(is_presentation_form('\u{FEFF}'));
        assert!(is_removed_in_train('\u{FEFF}'));
    }

    #[test]
    fn letters_are_classified_by_script() {
        for c in "السلامةپگ".chars() {
            assert!(is_arabic_letter(c), "{c}");
        }
        for c in "٣ًـ؟،".chars() {
            assert!(!is_arabic_letter(c), "{c:?}");
        }
        assert!(is_latin_letter('É') && is_latin_letter('ｚ') && !is_latin_letter('×'));
        assert!(!is_latin_letter('Ω') && !is_latin_letter('ب'));
    }
}
