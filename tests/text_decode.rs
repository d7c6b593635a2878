//! Encoding round-trips: text written the ways Arabic offices write it comes
//! back exactly, with the encoding named; damaged or binary input is refused
//! with the offset of the first bad byte.

use encoding_rs::{Encoding, ISO_8859_6, WINDOWS_1256};
use warsha::text::decode::decode;

const SAMPLES: &[&str] = &[
    "تعليمات الصيانة الدورية للمضخة رقم 3: افحص الضغط (12 بار) قبل التشغيل.",
    "إغلاق الصمام الرئيسي، ثم فك الغطاء وتنظيف الفلتر؛ هل تم التسجيل في الدفتر؟",
    "سلام",
    "مستوى الزيت منخفض في الضاغط\r\nاتصل بقسم الصيانة فورا\r\n",
    "Pump P-101: ضغط التشغيل 6 bar",
];

fn single_byte(enc: &'static Encoding, s: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = enc.encode(s);
    assert!(!unmappable, "{} cannot hold {s:?}", enc.name());
    bytes.into_owned()
}

fn utf16(s: &str, big_endian: bool, bom: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if bom {
        out.extend(if big_endian { [0xFE, 0xFF] } else { [0xFF, 0xFE] });
    }
    for u in s.encode_utf16() {
        out.extend(if big_endian { u.to_be_bytes() } else { u.to_le_bytes() });
    }
    out
}

#[test]
fn cp1256_arabic_round_trips() {
    for s in SAMPLES {
        let d = decode(&single_byte(WINDOWS_1256, s)).unwrap();
        assert_eq!((d.text.as_str(), d.encoding, d.had_bom), (*s, "windows-1256", false));
    }
}

#[test]
fn iso_8859_6_arabic_round_trips() {
    // ISO-8859-6 has no ASCII-range differences, so only Arabic that the
    // code page can hold; the two 8-bit pages agree on ء…ض and "سلام" reads
    // the same in both, so that one is not a test of detection.
    for s in SAMPLES.iter().filter(|s| **s != "سلام") {
        let d = decode(&single_byte(ISO_8859_6, s)).unwrap();
        assert_eq!((d.text.as_str(), d.encoding), (*s, "iso-8859-6"), "{s}");
    }
}

#[test]
fn utf16_both_orders_with_and_without_bom_round_trip() {
    for s in SAMPLES {
        for big_endian in [false, true] {
            for bom in [true, false] {
                let d = decode(&utf16(s, big_endian, bom)).unwrap();
                let want = if big_endian { "utf-16be" } else { "utf-16le" };
                assert_eq!((d.text.as_str(), d.encoding, d.had_bom), (*s, want, bom), "{s} be={big_endian}");
            }
        }
    }
}

#[test]
fn utf8_with_and_without_bom_round_trips() {
    for s in SAMPLES {
        let d = decode(s.as_bytes()).unwrap();
        assert_eq!((d.text.as_str(), d.encoding, d.had_bom), (*s, "utf-8", false));
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend_from_slice(s.as_bytes());
        let d = decode(&bytes).unwrap();
        assert_eq!((d.text.as_str(), d.encoding, d.had_bom), (*s, "utf-8", true));
    }
}

#[test]
fn english_utf16_without_bom_is_not_mistaken_for_binary() {
    let d = decode(&utf16("Maintenance log, line 4\n", false, false)).unwrap();
    assert_eq!((d.text.as_str(), d.encoding), ("Maintenance log, line 4\n", "utf-16le"));
}

#[test]
fn bad_utf8_inside_a_bom_file_reports_offset_after_the_bom() {
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice("صيانة".as_bytes());
    bytes.push(0xC3);
    bytes.extend_from_slice(b"(ok");
    let e = decode(&bytes).unwrap_err();
    assert_eq!((e.offset, e.encoding), (3 + "صيانة".len(), "utf-8"));
}

#[test]
fn binary_files_are_refused_with_the_offset() {
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10";
    let e = decode(png).unwrap_err();
    assert!(e.to_string().starts_with("binary data"), "{e}");
    assert_eq!(e.offset, 8);
    let elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0";
    assert!(decode(elf).is_err());
}

#[test]
fn utf16_with_a_control_character_is_refused_at_its_byte() {
    let mut bytes = utf16("ضغط", false, true);
    bytes.extend([0x01, 0x00]);
    let e = decode(&bytes).unwrap_err();
    assert_eq!((e.offset, e.encoding), (8, "utf-16le"));
}
