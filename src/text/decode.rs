//! Bytes → text for files from Arabic offices: UTF-8 (with or without BOM),
//! UTF-16 LE/BE (with BOM, or without one when the byte statistics leave no
//! doubt), Windows-1256 and ISO-8859-6. The encoding is detected, never
//! assumed, and nothing is replaced silently: input that does not decode
//! cleanly, or that is binary, is refused with the byte offset of the first
//! offending byte so the operator can find it.
//!
//! Detection order: byte-order mark; UTF-16 without BOM (one byte of every
//! pair is nearly always 0x00 or 0x06, which no 8-bit text contains); NUL
//! bytes (binary); strict UTF-8; then the 8-bit Arabic code page whose
//! decoding looks most like Arabic text.

use encoding_rs::{Encoding, ISO_8859_6, WINDOWS_1256};

/// Decoded text and how it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub text: String,
    /// "utf-8", "utf-16le", "utf-16be", "windows-1256" or "iso-8859-6".
    pub encoding: &'static str,
    pub had_bom: bool,
}

/// Why bytes were refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} at byte {offset} (read as {encoding})")]
pub struct DecodeError {
    /// Offset of the first offending byte in the input (BOM included).
    pub offset: usize,
    /// The encoding the bytes were being read as ("binary" for NUL bytes).
    pub encoding: &'static str,
    pub reason: String,
}

impl DecodeError {
    fn new(offset: usize, encoding: &'static str, reason: impl Into<String>) -> Self {
        Self { offset, encoding, reason: reason.into() }
    }
}

pub const UTF_8: &str = "utf-8";
pub const UTF_16LE: &str = "utf-16le";
pub const UTF_16BE: &str = "utf-16be";
pub const CP1256: &str = "windows-1256";
pub const ISO_8859_6_NAME: &str = "iso-8859-6";

/// Detect the encoding of `bytes` and decode them (see the module docs).
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        return utf8(rest, 3, true);
    }
    if let Some(rest) = bytes.strip_prefix(b"\xFF\xFE") {
        return utf16(rest, 2, false, true);
    }
    if let Some(rest) = bytes.strip_prefix(b"\xFE\xFF") {
        return utf16(rest, 2, true, true);
    }
    if let Some(big_endian) = sniff_utf16(bytes) {
        return utf16(bytes, 0, big_endian, false);
    }
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(DecodeError::new(at, "binary", "binary data (NUL byte)"));
    }
    match std::str::from_utf8(bytes) {
        Ok(_) => utf8(bytes, 0, false),
        Err(e) if mostly_utf8(bytes) => Err(utf8_error(e, 0)),
        Err(_) => single_byte(bytes),
    }
}

fn utf8(bytes: &[u8], base: usize, had_bom: bool) -> Result<Decoded, DecodeError> {
    let text = std::str::from_utf8(bytes).map_err(|e| utf8_error(e, base))?;
    if let Some((i, c)) = text.char_indices().find(|&(_, c)| is_binary_char(c)) {
        return Err(binary(base + i, UTF_8, c));
    }
    Ok(Decoded { text: text.to_owned(), encoding: UTF_8, had_bom })
}

fn utf8_error(e: std::str::Utf8Error, base: usize) -> DecodeError {
    let reason = match e.error_len() {
        Some(_) => "invalid UTF-8 sequence",
        None => "truncated UTF-8 sequence at end of input",
    };
    DecodeError::new(base + e.valid_up_to(), UTF_8, reason)
}

fn utf16(bytes: &[u8], base: usize, big_endian: bool, had_bom: bool) -> Result<Decoded, DecodeError> {
    let encoding = if big_endian { UTF_16BE } else { UTF_16LE };
    if bytes.len() % 2 == 1 {
        return Err(DecodeError::new(base + bytes.len() - 1, encoding, "odd number of bytes in UTF-16"));
    }
    let units = bytes.chunks_exact(2).map(|p| {
        let pair = [p[0], p[1]];
        if big_endian {
            u16::from_be_bytes(pair)
        } else {
            u16::from_le_bytes(pair)
        }
    });
    let mut text = String::with_capacity(bytes.len());
    let mut unit = 0usize;
    for r in char::decode_utf16(units) {
        let at = base + 2 * unit;
        match r {
            Ok(c) if is_binary_char(c) => return Err(binary(at, encoding, c)),
            Ok(c) => {
                text.push(c);
                unit += c.len_utf16();
            }
            Err(e) => {
                let reason = format!("unpaired UTF-16 surrogate {:04X}", e.unpaired_surrogate());
                return Err(DecodeError::new(at, encoding, reason));
            }
        }
    }
    Ok(Decoded { text, encoding, had_bom })
}

/// UTF-16 without a BOM: in text of the Basic Latin and Arabic blocks, the
/// high byte of every code unit is 0x00 or 0x06. Some(true) for big-endian.
fn sniff_utf16(bytes: &[u8]) -> Option<bool> {
    if bytes.len() < 2 {
        return None;
    }
    let pairs = bytes.len() / 2;
    let high = |parity: usize| {
        bytes.iter().skip(parity).step_by(2).take(pairs).filter(|&&b| b == 0x00 || b == 0x06).count() as f64
            / pairs as f64
    };
    let (even, odd) = (high(0), high(1));
    if odd >= 0.7 && even <= 0.3 {
        Some(false)
    } else if even >= 0.7 && odd <= 0.3 {
        Some(true)
    } else {
        None
    }
}

/// Invalid UTF-8 that is nonetheless mostly valid multi-byte UTF-8 is a
/// damaged UTF-8 file (report it), not an 8-bit code page.
fn mostly_utf8(bytes: &[u8]) -> bool {
    let (mut multibyte, mut errors) = (0usize, 0usize);
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                multibyte += s.chars().filter(|c| !c.is_ascii()).count();
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                multibyte +=
                    std::str::from_utf8(good).map_or(0, |s| s.chars().filter(|c| !c.is_ascii()).count());
                // A sequence cut at the very end is a truncation, not evidence
                // against UTF-8.
                errors += usize::from(e.error_len().is_some());
                rest = &bad[e.error_len().unwrap_or(bad.len())..];
            }
        }
    }
    multibyte > 0 && multibyte >= 4 * errors
}

/// Windows-1256 or ISO-8859-6, whichever reads as more plausible Arabic.
/// ISO-8859-6 leaves many bytes unassigned; those rule it out.
fn single_byte(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let read = |enc: &'static Encoding| {
        let (text, errors) = enc.decode_without_bom_handling(bytes);
        (!errors).then(|| text.into_owned())
    };
    let cp = read(WINDOWS_1256);
    let iso = read(ISO_8859_6);
    let (text, encoding) = match (cp, iso) {
        (Some(cp), Some(iso)) if plausibility(&iso) > plausibility(&cp) => (iso, ISO_8859_6_NAME),
        (Some(cp), _) => (cp, CP1256),
        (None, Some(iso)) => (iso, ISO_8859_6_NAME),
        (None, None) => return Err(DecodeError::new(0, CP1256, "undecodable 8-bit text")),
    };
    // One byte per char in both code pages, so a char index is a byte offset.
    if let Some((i, c)) = text.chars().enumerate().find(|&(_, c)| is_binary_char(c)) {
        return Err(binary(i, encoding, c));
    }
    Ok(Decoded { text, encoding, had_bom: false })
}

/// Arabic letters and marks count for a reading; Latin accented letters,
/// symbols and C1 controls (what the other code page's Arabic turns into)
/// count against it.
fn plausibility(text: &str) -> i64 {
    text.chars()
        .map(|c| match c {
            '\u{0600}'..='\u{06FF}' => 1,
            '\u{0080}'..='\u{009F}' => -50,
            _ if c.is_ascii() || c == '\u{00A0}' => 0,
            _ => -3,
        })
        .sum()
}

/// Control characters that do not occur in text (everything in C0/C1 except
/// tab, line feed, vertical tab, form feed, carriage return and NEL).
fn is_binary_char(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r' | '\u{85}')
}

fn binary(offset: usize, encoding: &'static str, c: char) -> DecodeError {
    let reason = if c == '\0' {
        "binary data (NUL byte)".to_string()
    } else {
        format!("binary data (control character U+{:04X})", c as u32)
    };
    DecodeError::new(offset, encoding, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_is_empty_utf8() {
        let d = decode(b"").unwrap();
        assert_eq!((d.text.as_str(), d.encoding, d.had_bom), ("", UTF_8, false));
    }

    #[test]
    fn utf8_bom_is_stripped_and_recorded() {
        let d = decode("\u{FEFF}صيانة".as_bytes()).unwrap();
        assert_eq!((d.text.as_str(), d.encoding, d.had_bom), ("صيانة", UTF_8, true));
    }

    #[test]
    fn damaged_utf8_reports_the_offset_instead_of_guessing_cp1256() {
        let mut bytes = "الصيانة الدورية للمضخة".as_bytes().to_vec();
        bytes.insert(10, 0xFF);
        let e = decode(&bytes).unwrap_err();
        assert_eq!((e.offset, e.encoding), (10, UTF_8));
        let truncated = &"صمام".as_bytes()[..7];
        let e = decode(truncated).unwrap_err();
        assert_eq!(e.offset, 6);
        assert!(e.reason.contains("truncated"), "{e}");
    }

    #[test]
    fn nul_bytes_are_binary_with_their_offset() {
        let e = decode(b"PK\x03\x04\x00\x00\x01\x02\x03\x04abcdefgh").unwrap_err();
        assert_eq!((e.offset, e.encoding), (4, "binary"));
        assert!(e.to_string().contains("binary data"), "{e}");
        let e = decode(b"hello\0world, a long enough line of text").unwrap_err();
        assert_eq!(e.offset, 5);
    }

    #[test]
    fn control_characters_are_binary() {
        let e = decode(b"line one\nline \x07two").unwrap_err();
        assert_eq!(e.offset, 14);
        assert!(e.reason.contains("U+0007"), "{e}");
    }

    #[test]
    fn unpaired_surrogate_is_reported_with_offset() {
        let mut bytes = vec![0xFF, 0xFE];
        for u in [0x0628u16, 0xD800, 0x0627] {
            bytes.extend(u.to_le_bytes());
        }
        let e = decode(&bytes).unwrap_err();
        assert_eq!((e.offset, e.encoding), (4, UTF_16LE));
    }

    #[test]
    fn odd_utf16_is_reported() {
        let e = decode(b"\xFF\xFEa\x00b").unwrap_err();
        assert_eq!((e.offset, e.encoding), (4, UTF_16LE));
    }
}
