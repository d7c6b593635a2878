//! The SQLite store on real database files: migrations, concurrent readers,
//! corruption, read-only opens.

use std::path::Path;
use std::process::Command;

use warsha::store::{Level, Store, StoreError};

fn warsha(data_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warsha"));
    c.arg("--data-dir").arg(data_dir).env_remove("WARSHA_CONFIG");
    c
}

#[test]
fn migrates_from_empty_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("warsha.db");
    {
        let s = Store::open(&db).unwrap();
        assert_eq!(s.schema_version().unwrap(), warsha::store::schema_version_latest());
    }
    let mut s = Store::open(&db).unwrap();
    s.event(Level::Info, "test", "reopened", None).unwrap();
    let set = s.settings().unwrap();
    assert_eq!(set.journal_mode, "wal");
    assert_eq!(set.synchronous, 2, "synchronous=FULL");
    assert!(set.foreign_keys);
    drop(s);
    let ro = Store::open_read_only(&db).unwrap();
    assert_eq!(ro.recent_events(5).unwrap().len(), 1);
}

#[test]
fn read_only_store_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("warsha.db");
    Store::open(&db).unwrap();
    let mut ro = Store::open_read_only(&db).unwrap();
    assert!(ro.is_read_only());
    assert!(ro.event(Level::Info, "tui", "must not land", None).is_err());
}

#[test]
fn reader_process_never_sees_busy_while_writer_commits_1000_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("warsha.db")).unwrap();
    // Readers are real processes: `warsha status --json` opens the same file.
    let mut readers = Vec::new();
    let mut written = 0;
    for batch in 0..10 {
        readers.push(warsha(dir.path()).args(["status", "--json"]).output_spawn());
        for i in 0..100 {
            store
                .event(
                    Level::Debug,
                    "test",
                    &format!("row {}", batch * 100 + i),
                    Some(serde_json::json!({"i": i})),
                )
                .unwrap();
            written += 1;
        }
    }
    assert_eq!(written, 1000);
    for r in readers {
        let out = r.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "reader failed: {stderr}");
        assert!(!stderr.contains("locked") && !stderr.contains("busy"), "{stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["counts"]["events"].as_i64().unwrap() <= 1000);
    }
    let db = rusqlite::Connection::open(store.path()).unwrap();
    let n: i64 = db.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1000);
}

#[test]
fn in_process_readers_run_beside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("warsha.db");
    let mut store = Store::open(&db).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let db = db.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let ro = Store::open_read_only(&db).unwrap();
                let mut last = 0i64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let report = ro.status_report(0).unwrap();
                    let n = report.counts.iter().find(|c| c.table == "events").map_or(0, |c| c.rows);
                    assert!(n >= last, "count went backwards");
                    last = n;
                }
                last
            })
        })
        .collect();
    for i in 0..1000 {
        store.event(Level::Debug, "test", &format!("row {i}"), None).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        assert!(h.join().unwrap() <= 1000);
    }
}

#[test]
fn garbage_file_is_reported_as_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("warsha.db");
    std::fs::write(&db, b"this is not a database, it is a shopping list\n".repeat(200)).unwrap();
    let err = Store::open(&db).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("warsha.db"), "{err}");
    let out = warsha(dir.path()).arg("status").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("integrity") && stderr.lines().count() == 1, "{stderr}");
}

#[test]
fn damaged_pages_fail_quick_check() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("warsha.db");
    {
        let mut s = Store::open(&db).unwrap();
        for i in 0..2000 {
            s.event(Level::Info, "fill", &format!("{i:0>200}"), None).unwrap();
        }
        // Fold the WAL into the main file so the damage below hits real pages.
        rusqlite::Connection::open(&db).unwrap().execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    }
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 64 * 4096);
    // Scribble over the middle of the file, leaving the header intact.
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 3 * 4096] {
        *b = 0xA5;
    }
    std::fs::write(&db, &bytes).unwrap();
    let err = Store::open(&db).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("warsha.db");
    Store::open(&db).unwrap();
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA user_version = 99;").unwrap();
    }
    let err = Store::open(&db).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err:?}");
}

trait SpawnOutput {
    fn output_spawn(&mut self) -> std::process::Child;
}

impl SpawnOutput for Command {
    fn output_spawn(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    }
}
