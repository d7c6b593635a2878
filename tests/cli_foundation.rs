//! The command-line surface and configuration, through the real binary.

use std::process::Command;

fn warsha() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warsha"));
    c.env_remove("WARSHA_CONFIG").env_remove("WARSHA_DATA_DIR");
    c
}

#[test]
fn help_lists_every_command_of_the_design() {
    let out = warsha().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in [
        "serve", "tui", "status", "ingest", "docs", "ask", "train", "eval", "adapters", "model", "text",
        "bench", "demo",
    ] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(cmd)), "--help lacks {cmd}:\n{help}");
    }
    for sub in [
        vec!["adapters", "--help"],
        vec!["model", "--help"],
        vec!["bench", "--help"],
        vec!["docs", "--help"],
        vec!["text", "normalize", "--help"],
        vec!["train", "--help"],
    ] {
        let out = warsha().args(&sub).output().unwrap();
        assert!(out.status.success(), "{sub:?}");
    }
}

#[test]
fn status_json_on_an_empty_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fresh");
    let out = warsha().arg("--data-dir").arg(&data).args(["status", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim().lines().count(), 1, "one JSON object: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["database"].is_null() && v["schema_version"].is_null(), "{v}");
    assert!(v["active_adapter"].is_null());
    // status only reads: it never creates the database.
    assert!(!data.join("warsha.db").exists());
}

#[test]
fn status_json_counts_an_ingested_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let doc = dir.path().join("note.txt");
    std::fs::write(&doc, "The press runs at 3.5 bar.\n").unwrap();
    let ing = warsha().arg("--data-dir").arg(&data).arg("ingest").arg(&doc).output().unwrap();
    assert!(ing.status.success(), "{}", String::from_utf8_lossy(&ing.stderr));
    let out = warsha().arg("--data-dir").arg(&data).args(["status", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_version"], warsha::store::schema_version_latest() as u64);
    assert_eq!(v["counts"]["documents"], 1, "{v}");
    for t in ["runs", "run_steps", "adapters", "questions", "answers"] {
        assert_eq!(v["counts"][t], 0, "{t}");
    }
}

#[test]
fn unknown_config_key_exits_nonzero_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("warsha.toml");
    std::fs::write(&cfg, "[train]\nseq_len = 256\nlearning_rate = 0.1\n").unwrap();
    let out =
        warsha().arg("--config").arg(&cfg).arg("--data-dir").arg(dir.path()).arg("status").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("learning_rate") && stderr.contains("warsha.toml"), "{stderr}");
}

#[test]
fn bad_config_value_names_key_value_and_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("warsha.toml");
    std::fs::write(&cfg, "[lora]\nrank = 0\n").unwrap();
    let out =
        warsha().arg("--config").arg(&cfg).arg("--data-dir").arg(dir.path()).arg("status").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rank") && stderr.contains("= 0") && stderr.contains("1..=512"), "{stderr}");
}

#[test]
fn data_dir_from_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = warsha().env("WARSHA_DATA_DIR", dir.path()).args(["status", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data_dir"], dir.path().display().to_string());
}
