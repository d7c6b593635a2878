//! Every format is read, and every bad input ends rejected with its reason,
//! an `NAME.error.txt` beside it, and nothing lost.

mod ingest_support;

use std::time::Duration;

use ingest_support::*;
use warsha::ingest::{Outcome, State};

fn drain(env: &Env) -> Vec<Outcome> {
    let mut outs = Vec::new();
    let left = env.worker(Duration::ZERO).drain(Duration::from_secs(120), |o| outs.push(o.clone())).unwrap();
    assert!(left.is_empty(), "{left:?}");
    outs
}

fn by_path<'a>(outs: &'a [Outcome], path: &str) -> &'a Outcome {
    outs.iter().find(|o| o.path == path).unwrap_or_else(|| panic!("no outcome for {path}: {outs:#?}"))
}

#[test]
fn each_bad_input_is_rejected_with_its_reason_beside_it() {
    let env = Env::new("max_file_mib = 1");
    let good_docx = docx(&para("نص سليم"));
    let mut bomb_xml = String::from(r#"<w:document xmlns:w="x"><w:body><w:p><w:r><w:t>"#);
    bomb_xml.push_str(&" ".repeat(70 << 20));
    bomb_xml.push_str("</w:t></w:r></w:p></w:body></w:document>");
    let bomb = zip_with(&[("word/document.xml", bomb_xml.into_bytes())]);
    assert!(bomb.len() < 1 << 20, "the bomb itself is small: {}", bomb.len());
    let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
    elf.extend((0..4000u32).map(|i| (i * 31 % 256) as u8));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.txt", vec![], "empty file"),
        ("binary.txt", elf, "binary data"),
        ("truncated.docx", good_docx[..good_docx.len() / 2].to_vec(), "damaged or password-protected DOCX"),
        ("bomb.docx", bomb, "zip bomb"),
        ("scanned.pdf", image_pdf(), "scanned: no text layer"),
        ("garbage.pdf", b"%PDF-1.4\nthis is not a pdf at all\n".to_vec(), "unreadable PDF"),
        ("photo.xyz", b"some bytes".to_vec(), "unsupported file type \".xyz\"; supported: .txt .md"),
        ("no-qa.csv", b"name,age\nsalem,40\n".to_vec(), "no question and answer columns"),
        ("all-bad.jsonl", b"{oops\n[1,2]\n".to_vec(), "no question–answer rows"),
        ("big.txt", vec![b'a'; (1 << 20) + 10], "file too large: 2 MiB (limit 1 MiB"),
    ];
    for (name, bytes, _) in &cases {
        env.put(name, bytes);
    }
    let outs = drain(&env);
    for (name, bytes, want) in &cases {
        let o = by_path(&outs, name);
        assert_eq!(o.state, State::Rejected, "{name}: {o:?}");
        let reason = o.reason.as_deref().unwrap();
        assert!(reason.contains(want), "{name}: {reason:?} should contain {want:?}");
        assert_eq!(
            &std::fs::read(env.drop.join("rejected").join(name)).unwrap(),
            bytes,
            "{name} moved unchanged"
        );
        let err =
            std::fs::read_to_string(env.drop.join("rejected").join(format!("{name}.error.txt"))).unwrap();
        assert!(err.contains(reason) && err.contains("لم يُقبل هذا الملف"), "{name}: {err}");
        assert!(!env.drop.join(name).exists());
    }
    let db = env.db();
    let n: i64 = db.query_row("SELECT count(*) FROM documents", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0);
    let events: i64 = db
        .query_row(
            "SELECT count(*) FROM events WHERE level = 'warn' AND message LIKE 'rejected %'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(events as usize, cases.len());
}

#[test]
fn encrypted_pdf_is_rejected_as_encrypted() {
    if !has_tool("qpdf") {
        eprintln!("qpdf not installed: encrypted PDF case skipped");
        return;
    }
    let env = Env::new("");
    let plain = env.dir.path().join("plain.pdf");
    std::fs::write(&plain, text_pdf("Confidential pump settings")).unwrap();
    let enc = env.drop.join("locked.pdf");
    let st = std::process::Command::new("qpdf")
        .args(["--encrypt", "user-pw", "owner-pw", "256", "--"])
        .arg(&plain)
        .arg(&enc)
        .status()
        .unwrap();
    assert!(st.success());
    let outs = drain(&env);
    let o = by_path(&outs, "locked.pdf");
    assert_eq!((o.state, o.reason.as_deref()), (State::Rejected, Some("encrypted PDF")));
}

#[test]
fn every_format_is_read_and_bytes_are_kept_exactly() {
    let env = Env::new("");
    let arabic = "سلامة العمال أولاً: افحص ضغط الصمام قبل التشغيل.\n";
    let (cp1256, _, bad) = encoding_rs::WINDOWS_1256.encode(arabic);
    assert!(!bad);
    let mut utf16 = vec![0xFF, 0xFE];
    for u in "تعليمات المضخة P-101\nPump instructions\n".encode_utf16() {
        utf16.extend(u.to_le_bytes());
    }
    let csv = "\u{feff}السؤال;الجواب\n\"ما ضغط التشغيل؟\";\"6 بار\nكحد أقصى\"\nبلا جواب;\nq;a;extra\n\"متى نغير الزيت؟\";كل 500 ساعة\n";
    let jsonl = [
        r#"{"instruction":"ما هي معدات الوقاية؟","input":"","output":"الخوذة والقفازات والنظارات."}"#,
        "not json",
        r#"{"messages":[{"role":"user","content":"Who signs the permit?"},{"role":"assistant","content":"The shift supervisor."}]}"#,
    ]
    .join("\n");
    let table = r#"<w:tbl><w:tr><w:tc><w:p><w:r><w:t>القطعة</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>العزم</w:t></w:r></w:p></w:tc></w:tr><w:tr><w:tc><w:p><w:r><w:t>M12</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>80 Nm</w:t></w:r></w:p></w:tc></w:tr></w:tbl>"#;
    let docx_body = format!(
        r#"<w:p><w:pPr><w:pStyle w:val="Heading1"/><w:bidi/></w:pPr><w:r><w:t>دليل التركيب</w:t></w:r></w:p>{}{table}"#,
        para("اربط البراغي بالعزم المحدد")
    );
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("utf8.txt", arabic.as_bytes().to_vec()),
        ("cp1256.txt", cp1256.into_owned()),
        ("utf16.txt", utf16),
        ("manual.md", "# Lockout\n\nIsolate energy before work.\n\n## Steps\n\nTag the switch.\n".into()),
        ("faq.csv", csv.as_bytes().to_vec()),
        ("chat.jsonl", jsonl.into_bytes()),
        ("assembly.docx", docx(&docx_body)),
        ("press.pdf", text_pdf("Hydraulic press: check oil level daily")),
    ];
    for (name, bytes) in &files {
        env.put(name, bytes);
    }
    let outs = drain(&env);
    let store = env.store();
    for (name, bytes) in &files {
        let o = by_path(&outs, name);
        assert_eq!(o.state, State::Ingested, "{name}: {o:?}");
        assert!(o.chunks >= 1);
        let (doc, text) = store.document(o.document_id.unwrap()).unwrap().unwrap();
        assert_eq!(&std::fs::read(env.data.join(&doc.spool_path)).unwrap(), bytes, "{name} spooled exactly");
        assert_eq!(
            &std::fs::read(env.drop.join("processed").join(name)).unwrap(),
            bytes,
            "{name} moved exactly"
        );
        let want = match *name {
            "utf8.txt" | "cp1256.txt" => "افحص ضغط الصمام",
            "utf16.txt" => "تعليمات المضخة P-101",
            "manual.md" => "Tag the switch.",
            "faq.csv" => "كل 500 ساعة",
            "chat.jsonl" => "The shift supervisor.",
            "assembly.docx" => "# دليل التركيب\n\nاربط البراغي بالعزم المحدد\n\nالقطعة | العزم\nM12 | 80 Nm",
            _ => "Hydraulic press: check oil level daily",
        };
        assert!(text.contains(want), "{name}: {text:?}");
    }
    let enc = |n: &str| store.document(by_path(&outs, n).document_id.unwrap()).unwrap().unwrap().0.encoding;
    assert_eq!(enc("cp1256.txt").as_deref(), Some("windows-1256"));
    assert_eq!(enc("utf16.txt").as_deref(), Some("utf-16le"));
    // Q&A rows: good lines kept, bad ones reported by line number.
    let (faq, _) = store.document(by_path(&outs, "faq.csv").document_id.unwrap()).unwrap().unwrap();
    assert_eq!(faq.qa_pairs, 2);
    let w = faq.warnings.unwrap().to_string();
    assert!(w.contains("line 4:") && w.contains("line 5:"), "{w}");
    let (chat, _) = store.document(by_path(&outs, "chat.jsonl").document_id.unwrap()).unwrap().unwrap();
    assert_eq!(chat.qa_pairs, 2);
    assert!(chat.warnings.unwrap().to_string().contains("line 2: not JSON"));
    // Retrieval over the search form finds Arabic without its diacritics or hamza.
    let hits = store.search_chunks(&warsha::text::normalize::search_form("اربط البراغي"), 3).unwrap();
    assert_eq!(hits[0].name, "assembly.docx");
    let hits = store.search_chunks(&warsha::text::normalize::search_form("اولا سلامه"), 5).unwrap();
    assert!(hits.iter().any(|h| h.name == "utf8.txt"), "{hits:?}");
}

#[test]
fn invalid_utf8_is_reported_not_replaced() {
    let env = Env::new("");
    // Valid UTF-8 Arabic, then a stray continuation byte: no 8-bit code page
    // reading makes this clean Arabic text either.
    let mut b = "نص عربي سليم ".repeat(20).into_bytes();
    b.extend_from_slice(&[0xD8, 0x20, 0xFF, 0xFE, 0x00, 0x41]);
    env.put("broken.txt", &b);
    let outs = drain(&env);
    let o = by_path(&outs, "broken.txt");
    assert_eq!(o.state, State::Rejected);
    let r = o.reason.as_deref().unwrap();
    assert!(r.contains("byte") || r.contains("binary"), "{r}");
}

#[test]
fn duplicates_across_restarts_make_no_second_document_and_names_never_collide() {
    let env = Env::new("");
    env.put("report.txt", "Line 3 torque values: 80 Nm.\n".as_bytes());
    let first = drain(&env);
    assert_eq!(first[0].state, State::Ingested);
    // A restart (new worker, new store handle), the same bytes under another
    // name, and different bytes under the same name.
    env.put("copy of report.txt", "Line 3 torque values: 80 Nm.\n".as_bytes());
    env.put("report.txt", "Line 4 torque values: 95 Nm.\n".as_bytes());
    let second = drain(&env);
    let dup = by_path(&second, "copy of report.txt");
    assert_eq!(dup.state, State::Duplicate);
    assert_eq!(dup.document_id, first[0].document_id);
    assert!(dup.reason.as_deref().unwrap().contains("same content as document"));
    assert_eq!(by_path(&second, "report.txt").state, State::Ingested);
    assert_eq!(env.files_under("processed"), vec!["copy of report.txt", "report (2).txt", "report.txt"]);
    assert_eq!(
        std::fs::read(env.drop.join("processed/report.txt")).unwrap(),
        b"Line 3 torque values: 80 Nm.\n"
    );
    assert_eq!(
        std::fs::read(env.drop.join("processed/report (2).txt")).unwrap(),
        b"Line 4 torque values: 95 Nm.\n"
    );
    let n: i64 = env.db().query_row("SELECT count(*) FROM documents", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 2);
}

#[test]
fn temporary_names_are_ignored_once_and_left_untouched() {
    let env = Env::new("");
    for n in [
        "~$plan.docx",
        "movie.mkv.part",
        "upload.filepart",
        ".DS_Store",
        "Thumbs.db",
        "._manual.pdf",
        ".~lock.plan.odt#",
    ] {
        env.put(n, b"temp");
    }
    env.put("$RECYCLE.BIN/old.txt", b"deleted");
    env.put("line 2/real.txt", b"A real document in a subfolder.");
    let outs = drain(&env);
    assert_eq!(outs.iter().filter(|o| o.state == State::Ignored).count(), 7, "{outs:#?}");
    assert_eq!(by_path(&outs, "line 2/real.txt").state, State::Ingested);
    assert!(env.drop.join("~$plan.docx").exists() && env.drop.join("$RECYCLE.BIN/old.txt").exists());
    assert!(env.drop.join("processed/line 2/real.txt").exists());
    // A second pass records nothing new.
    assert!(drain(&env).is_empty());
    let n: i64 = env.db().query_row("SELECT count(*) FROM files", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 8);
}

#[test]
fn a_symlink_pointing_outside_is_never_followed() {
    let env = Env::new("");
    let secret = env.dir.path().join("secret.txt");
    std::fs::write(&secret, "outside the drop folder").unwrap();
    std::os::unix::fs::symlink(&secret, env.drop.join("link.txt")).unwrap();
    std::fs::create_dir(env.dir.path().join("outdir")).unwrap();
    std::fs::write(env.dir.path().join("outdir/inner.txt"), "also outside").unwrap();
    std::os::unix::fs::symlink(env.dir.path().join("outdir"), env.drop.join("linked-folder")).unwrap();
    let outs = drain(&env);
    let o = by_path(&outs, "link.txt");
    assert_eq!(o.state, State::Rejected);
    assert!(o.reason.as_deref().unwrap().contains("symbolic link"));
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "outside the drop folder");
    assert!(std::fs::symlink_metadata(env.drop.join("rejected/link.txt")).unwrap().file_type().is_symlink());
    assert!(outs.iter().all(|o| !o.path.contains("inner")), "{outs:?}");
    let n: i64 = env.db().query_row("SELECT count(*) FROM documents", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0);
}

#[test]
fn odd_file_names_are_data_not_shell() {
    let env = Env::new("");
    let names = [
        "name with  spaces.txt",
        "دليل الصيانة ٢٠٢٤.txt",
        "line\nbreak.txt",
        "quote\"s and 'single'.txt",
        "-rf.txt",
        "$(touch pwned).txt",
        "semi;colon|pipe&amp.txt",
    ];
    for (i, n) in names.iter().enumerate() {
        env.put(n, format!("document number {i} about pumps").as_bytes());
    }
    let outs = drain(&env);
    for n in names {
        assert_eq!(by_path(&outs, n).state, State::Ingested, "{n:?}");
        assert!(env.drop.join("processed").join(n).is_file(), "{n:?}");
    }
    assert!(!env.drop.join("pwned").exists() && !std::path::Path::new("pwned").exists());
}
