//! The command line: `warsha ingest` on the drop folder and on paths in
//! place, one JSON line per file; `warsha docs list|show`; the writer lock;
//! the extraction child stays out of `--help`.

mod ingest_support;

use ingest_support::*;
use serde_json::Value;

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn ingest_paths_in_place_prints_one_json_line_per_file_and_moves_nothing() {
    let env = Env::new("");
    let src = env.dir.path().join("manuals");
    std::fs::create_dir_all(src.join("line 1")).unwrap();
    std::fs::write(src.join("line 1/pump.md"), "# المضخة\n\nافحص مستوى الزيت يوميًا.\n").unwrap();
    std::fs::write(src.join("notes.txt"), "Valve V-7 opens at 6 bar.").unwrap();
    std::fs::write(src.join("~$lock.docx"), "x").unwrap();
    std::fs::write(src.join("image.png"), "\u{89}PNG").unwrap();
    let single = env.dir.path().join("single.txt");
    std::fs::write(&single, "Valve V-7 opens at 6 bar.").unwrap();
    let out = env.cli().args(["ingest", "--json"]).arg(&src).arg(&single).output().unwrap();
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 5, "{lines:?}");
    let state = |suffix: &str| {
        let l = lines.iter().find(|l| l["path"].as_str().unwrap().ends_with(suffix)).unwrap();
        for key in ["path", "state", "document_id", "chunks", "reason"] {
            assert!(l.get(key).is_some(), "{key} missing in {l}");
        }
        l["state"].as_str().unwrap().to_string()
    };
    assert_eq!(state("line 1/pump.md"), "ingested");
    assert_eq!(state("notes.txt"), "ingested");
    assert_eq!(state("~$lock.docx"), "ignored");
    assert_eq!(state("image.png"), "rejected");
    assert_eq!(state("single.txt"), "duplicate");
    assert!(src.join("notes.txt").exists() && src.join("image.png").exists(), "in place: nothing moved");
    assert!(!src.join("processed").exists() && !src.join("image.png.error.txt").exists());

    let list = env.cli().args(["docs", "list", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&list.stdout).unwrap();
    let docs = v["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(v["files"].as_array().unwrap().len(), 5);
    let pump = docs.iter().find(|d| d["name"] == "pump.md").unwrap();
    let id = pump["id"].as_i64().unwrap().to_string();
    let show = env.cli().args(["docs", "show", &id, "--json"]).output().unwrap();
    let d: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(d["lang"], "ar");
    assert!(d["text"].as_str().unwrap().contains("افحص مستوى الزيت"));
    let plain = env.cli().args(["docs", "show", &id]).output().unwrap();
    assert!(String::from_utf8_lossy(&plain.stdout).contains("# المضخة"));
    let missing = env.cli().args(["docs", "show", "999"]).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no document 999"));
}

#[test]
fn ingest_without_paths_drains_the_drop_folder_once() {
    let env = Env::new("");
    env.put("a.txt", "أول ملف".as_bytes());
    env.put("sub/b.csv", "question,answer\nWhat is LOTO?,Lockout-tagout.\n".as_bytes());
    env.put("c.exe", b"MZ");
    let lines = json_lines(&env.cli().args(["ingest", "--json"]).output().unwrap());
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(env.files_under("processed"), vec!["a.txt", "sub/b.csv"]);
    assert_eq!(env.files_under("rejected"), vec!["c.exe", "c.exe.error.txt"]);
    let plain = env.cli().arg("ingest").output().unwrap();
    assert!(String::from_utf8_lossy(&plain.stdout).contains("0 ingested"), "a second pass finds nothing");
    let events = env.store().recent_events(10).unwrap();
    assert!(events.iter().any(|e| e.message.starts_with("drop folder pass: 2 ingested")), "{events:?}");
}

#[test]
fn a_second_writer_is_refused_while_one_holds_the_lock() {
    let env = Env::new("");
    let dd = warsha::data_dir::DataDir::new(&env.data);
    dd.create().unwrap();
    let _held = dd.lock().unwrap();
    let out = env.cli().args(["ingest"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("held by another warsha process"));
}

#[test]
fn the_extraction_child_is_hidden_from_help() {
    let out = std::process::Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("ingest") && !help.contains("__extract"), "{help}");
}
