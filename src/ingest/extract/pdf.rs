//! PDF through poppler's `pdftotext` (a subprocess: its crashes and hangs
//! stay outside; the extract child's process group and limits cover it).
//!
//! pdftotext writes Arabic wrapped in bidi embedding controls, and for some
//! producers in visual order (characters reversed). The controls are dropped
//! (the train form deletes them); a line is put back in logical order when
//! its Arabic words read backwards: presentation forms reveal it (a word that
//! starts with a final form), and so does the article ال showing up as a
//! trailing لا. Presentation forms are then folded by the train form.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{train_text, Extracted};
use crate::ingest::reason::Reject;
use crate::text::mirror;

pub fn extract(path: &Path) -> Result<Extracted, Reject> {
    let out = Command::new("pdftotext")
        .args(["-enc", "UTF-8", "-nopgbrk"])
        .arg(path)
        .arg("-")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Reject::PdfToolMissing,
            _ => Reject::Crashed { detail: format!("pdftotext: {e}") },
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.to_ascii_lowercase().contains("password") || has_encrypt_dict(path) {
            return Err(Reject::PdfEncrypted);
        }
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("pdftotext failed");
        return Err(Reject::PdfUnreadable { detail: first.trim().to_string() });
    }
    let raw = String::from_utf8_lossy(&out.stdout);
    if raw.trim().is_empty() {
        return Err(Reject::PdfScanned);
    }
    let mut warnings = Vec::new();
    let mut fixed = 0usize;
    let mut text = String::with_capacity(raw.len());
    for line in raw.lines() {
        let line: String = line.chars().filter(|&c| !is_bidi_control(c)).collect();
        if reads_backwards(&line) {
            fixed += 1;
            text.push_str(&to_logical(&line));
        } else {
            text.push_str(&line);
        }
        text.push('\n');
    }
    if fixed > 0 {
        warnings.push(format!("{fixed} lines of Arabic in visual order put back in logical order"));
    }
    Ok(Extracted { text: train_text(&text), encoding: None, warnings, qa: Vec::new() })
}

fn has_encrypt_dict(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.windows(8).any(|w| w == b"/Encrypt"))
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn is_arabic(c: char) -> bool {
    matches!(c, '\u{0600}'..='\u{06ff}' | '\u{0750}'..='\u{077f}' | '\u{fb50}'..='\u{fdff}' | '\u{fe70}'..='\u{feff}')
}

/// Arabic presentation-form B letters come in groups: isolated, final,
/// initial, medial (some letters only isolated and final).
fn form_b(c: char) -> Option<Form> {
    let u = c as u32;
    if !(0xFE80..=0xFEFC).contains(&u) {
        return None;
    }
    // Two-form letters (hamza carriers, alef, dal, ra, waw, …) and lam-alef.
    const TWO: &[(u32, u32)] = &[
        (0xFE81, 0xFE88),
        (0xFE8D, 0xFE8E),
        (0xFE93, 0xFE94),
        (0xFEA9, 0xFEB0),
        (0xFEED, 0xFEF0),
        (0xFEF5, 0xFEFC),
    ];
    if u == 0xFE80 {
        return Some(Form::Isolated);
    }
    if let Some(&(lo, _)) = TWO.iter().find(|(lo, hi)| (*lo..=*hi).contains(&u)) {
        return Some(if (u - lo).is_multiple_of(2) { Form::Isolated } else { Form::Final });
    }
    // Four-form letters start at 0xFE89 (yeh with hamza) … grouped by four.
    let base = [
        0xFE89u32, 0xFE8F, 0xFE95, 0xFE99, 0xFE9D, 0xFEA1, 0xFEA5, 0xFEB1, 0xFEB5, 0xFEB9, 0xFEBD, 0xFEC1,
        0xFEC5, 0xFEC9, 0xFECD, 0xFED1, 0xFED5, 0xFED9, 0xFEDD, 0xFEE1, 0xFEE5, 0xFEE9, 0xFEF1,
    ];
    let lo = base.iter().rev().find(|&&b| b <= u)?;
    Some(match u - lo {
        0 => Form::Isolated,
        1 => Form::Final,
        2 => Form::Initial,
        _ => Form::Medial,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Isolated,
    Final,
    Initial,
    Medial,
}

/// Does this line's Arabic read backwards?
fn reads_backwards(line: &str) -> bool {
    let mut forward = 0i32;
    let mut backward = 0i32;
    for word in line.split(|c: char| !is_arabic(c)).filter(|w| w.chars().count() >= 2) {
        let first = word.chars().next().and_then(form_b);
        let last = word.chars().last().and_then(form_b);
        match (first, last) {
            (Some(Form::Initial), _) | (_, Some(Form::Final)) => forward += 1,
            (Some(Form::Final), _) | (_, Some(Form::Initial)) => backward += 1,
            _ => {}
        }
        let n = word.chars().count();
        if n >= 4 && word.starts_with("ال") {
            forward += 1;
        } else if n >= 4 && word.ends_with("لا") {
            backward += 1;
        }
    }
    backward > forward
}

/// Reverse a visual-order line, keeping runs of left-to-right text (digits,
/// Latin) in their own order and mirroring brackets.
fn to_logical(line: &str) -> String {
    let rev: Vec<char> = line.chars().rev().map(mirror).collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < rev.len() {
        if is_ltr(rev[i]) {
            let mut j = i;
            // Extend over LTR chars and neutrals between LTR chars ("6.5 bar").
            let mut end = i;
            while j < rev.len() && !is_arabic(rev[j]) {
                if is_ltr(rev[j]) {
                    end = j;
                }
                j += 1;
            }
            out.extend(rev[i..=end].iter().rev().map(|&c| mirror(c)));
            i = end + 1;
        } else {
            out.push(rev[i]);
            i += 1;
        }
    }
    out
}

fn is_ltr(c: char) -> bool {
    c.is_ascii_alphanumeric() || (c.is_alphabetic() && !is_arabic(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visual_order_arabic_is_restored_keeping_numbers() {
        let logical = "ضغط الصمام 6.5 bar (الأقصى)";
        let visual: String = logical.chars().rev().map(mirror).collect();
        // Digits and Latin stay left-to-right inside visual order.
        let visual = visual.replace("rab 5.6", "6.5 bar");
        assert!(reads_backwards(&visual));
        assert_eq!(to_logical(&visual), logical);
        assert!(!reads_backwards(logical));
    }

    #[test]
    fn presentation_forms_reveal_reversal() {
        // سلام in presentation forms, logical: initial seen, medial lam, final alef, isolated meem.
        let logical = "\u{FEB3}\u{FEE0}\u{FE8E}\u{FEE1}";
        assert!(!reads_backwards(logical));
        let visual: String = logical.chars().rev().collect();
        assert!(reads_backwards(&visual));
    }
}
