//! TXT and Markdown: the text module decides the encoding (UTF-8, UTF-16,
//! Windows-1256, ISO-8859-6) and refuses bytes that do not decode, naming the
//! offset; nothing is replaced silently.

use super::{train_text, Extracted};
use crate::ingest::reason::Reject;
use crate::text::decode::{decode, DecodeError};

pub fn extract(bytes: &[u8]) -> Result<Extracted, Reject> {
    let d = decode(bytes).map_err(decode_reject)?;
    if looks_binary(&d.text) {
        return Err(Reject::Binary);
    }
    Ok(Extracted { text: train_text(&d.text), encoding: Some(d.encoding.to_string()), ..Default::default() })
}

/// Map the text module's refusal to a reason; NUL bytes mean a binary file.
pub(super) fn decode_reject(e: DecodeError) -> Reject {
    if e.encoding == "binary" {
        Reject::Binary
    } else {
        Reject::BadEncoding { encoding: e.encoding.to_string(), offset: e.offset, detail: e.reason }
    }
}

/// Control characters other than layout ones are rare in text and common in
/// binary data that happened to decode as an 8-bit code page.
pub(super) fn looks_binary(s: &str) -> bool {
    let mut total = 0usize;
    let mut control = 0usize;
    for c in s.chars().take(64 * 1024) {
        total += 1;
        if c == '\0' || (c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\u{c}')) {
            control += 1;
        }
    }
    control > 0 && control * 100 >= total.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_text_is_kept_in_train_form() {
        let e = extract("سلامة العمال أولاً\r\nSafety first\n".as_bytes()).unwrap();
        assert_eq!(e.encoding.as_deref(), Some("utf-8"));
        assert!(e.text.contains("سلامة") && e.text.contains("Safety first") && !e.text.contains('\r'));
    }

    #[test]
    fn binary_is_refused() {
        let mut b = b"\x7fELF\x02\x01\x01\0\0\0\0\0".to_vec();
        b.extend((0..2000u32).map(|i| (i * 7 % 256) as u8));
        assert_eq!(extract(&b), Err(Reject::Binary));
    }
}
