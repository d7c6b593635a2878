//! Visual order for terminals without bidi support: each line is shaped
//! (`shape.rs`), then reordered per UAX #9 with unicode-bidi. Right-to-left
//! runs are reversed by cluster (a letter keeps its marks after it, as
//! terminals expect) and paired brackets are mirrored, which such terminals
//! do not do either.

use unicode_bidi::BidiInfo;
use unicode_normalization::char::is_combining_mark;

use super::shape::shape_line;

/// Shape and reorder every line of `s` (logical, train form) into visual order.
pub fn visual(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for (k, line) in s.split('\n').enumerate() {
        if k > 0 {
            out.push('\n');
        }
        let (body, cr) = match line.strip_suffix('\r') {
            Some(b) => (b, "\r"),
            None => (line, ""),
        };
        visual_line(&shape_line(body), &mut out);
        out.push_str(cr);
    }
    out
}

fn visual_line(line: &str, out: &mut String) {
    if line.is_empty() {
        return;
    }
    let info = BidiInfo::new(line, None);
    for para in &info.paragraphs {
        let (levels, runs) = info.visual_runs(para, para.range.clone());
        for run in runs {
            let text = &line[run.clone()];
            if levels[run.start].is_rtl() {
                push_reversed(text, out);
            } else {
                out.push_str(text);
            }
        }
    }
}

/// Reverse a right-to-left run by clusters (base + following marks).
fn push_reversed(run: &str, out: &mut String) {
    let mut clusters: Vec<&str> = Vec::new();
    let mut start = 0;
    for (i, c) in run.char_indices() {
        if i > start && !is_combining_mark(c) {
            clusters.push(&run[start..i]);
            start = i;
        }
    }
    if start < run.len() {
        clusters.push(&run[start..]);
    }
    for cluster in clusters.iter().rev() {
        for c in cluster.chars() {
            out.push(mirror(c));
        }
    }
}

/// The bracket a right-to-left run shows in place of `c` (UAX #9 mirroring
/// for the pairs Arabic text uses).
pub fn mirror(c: char) -> char {
    match c {
        '(' => ')',
        ')' => '(',
        '[' => ']',
        ']' => '[',
        '{' => '}',
        '}' => '{',
        '<' => '>',
        '>' => '<',
        '«' => '»',
        '»' => '«',
        '‹' => '›',
        '›' => '‹',
        _ => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arabic_line_is_reversed_and_shaped() {
        // باب in visual order: isolated beh, final alef, initial beh.
        assert_eq!(visual("باب"), "\u{FE8F}\u{FE8E}\u{FE91}");
    }

    #[test]
    fn latin_and_digits_inside_arabic_keep_their_order() {
        let v = visual("المضخة P-101 تعمل");
        assert!(v.contains("P-101"), "{v}");
        // The Arabic paragraph starts at the right: the last word comes first.
        assert!(v.starts_with(&shape_line("تعمل").chars().rev().collect::<String>()), "{v}");
    }

    #[test]
    fn lines_are_reordered_separately() {
        let v = visual("ab\nبا\r\ncd");
        assert_eq!(v, "ab\n\u{FE8E}\u{FE91}\r\ncd");
    }

    #[test]
    fn brackets_mirror_in_rtl_runs() {
        assert_eq!(visual("(ب)"), "(\u{FE8F})");
    }
}
