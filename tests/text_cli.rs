//! `warsha text normalize` as operators and scripts run it: the built binary,
//! stdin in, only the normalized text out.

use std::io::Write;
use std::process::{Command, Stdio};

fn run(form: &str, input: &[u8]) -> (bool, Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warsha"))
        .args(["--data-dir", dir.path().to_str().unwrap(), "text", "normalize", "--form", form])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    (out.status.success(), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn search_form_of_stdin_has_nothing_added() {
    let (ok, out, err) = run("search", "ﺍﻟﺼﻴﺎﻧﺔ  الدوريّة\nPUMP P-101 ٣\n".as_bytes());
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8(out).unwrap(), "الصيانه الدوريه\npump p-101 3\n");
}

#[test]
fn train_form_keeps_diacritics_and_drops_controls() {
    let (ok, out, err) = run("train", "\u{202B}أَغْلِقِ الصـمام\u{202C}".as_bytes());
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8(out).unwrap(), "أَغْلِقِ الصمام");
}

#[test]
fn display_form_is_shaped_visual_order() {
    let (ok, out, err) = run("display", "باب\n".as_bytes());
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8(out).unwrap(), "\u{FE8F}\u{FE8E}\u{FE91}\n");
}

#[test]
fn utf16_stdin_is_decoded() {
    let mut bytes = vec![0xFF, 0xFE];
    for u in "مضخة\n".encode_utf16() {
        bytes.extend(u.to_le_bytes());
    }
    let (ok, out, err) = run("search", &bytes);
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8(out).unwrap(), "مضخه\n");
}

#[test]
fn invalid_utf8_fails_with_the_byte_offset() {
    let mut bytes = "سطر سليم\n".repeat(10_000).into_bytes();
    let at = bytes.len() + 2;
    bytes.extend_from_slice(b"ok\xC3(\n");
    let (ok, _, err) = run("search", &bytes);
    assert!(!ok);
    assert!(err.contains(&format!("invalid UTF-8 at byte {at}")), "{err}");
}

#[test]
fn binary_stdin_is_refused() {
    let (ok, out, err) = run("train", b"\x7fELF\x02\x01\x01\0\0\0\0\0");
    assert!(!ok);
    assert!(out.is_empty());
    assert!(err.contains("binary data"), "{err}");
}
