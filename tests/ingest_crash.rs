//! A crash at any moment of ingestion, then a restart: every file is
//! accounted for exactly once, in the database and in the folders. The real
//! binary runs as a child process and dies by SIGKILL or at named fault
//! points (`WARSHA_FAULT=crash-after-…`, which abort like a power cut).

mod ingest_support;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use ingest_support::*;

/// The files of one drop: name → bytes, and whether each should end ingested/duplicate.
fn drop_set(env: &Env, n: usize) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for i in 0..n {
        let (name, body): (String, Vec<u8>) = match i % 6 {
            0 => (format!("empty {i}.txt"), vec![]),
            1 => (format!("same {i}.txt"), b"identical content in several files".to_vec()),
            2 => (format!("q&a {i}.csv"), format!("question,answer\nما رقم {i}؟,{i}\n").into_bytes()),
            3 => (format!("sub/doc {i}.docx"), docx(&para(&format!("فقرة {i} من الدليل")))),
            _ => (format!("ملف {i}.txt"), format!("نص الوثيقة رقم {i}: افحص الصمام.").into_bytes()),
        };
        env.put(&name, &body);
        files.insert(name, body);
    }
    files
}

/// Every original is in processed/ or rejected/ exactly once with its bytes,
/// the database has one closed row per file, and one document per distinct content.
fn assert_accounted_once(env: &Env, files: &BTreeMap<String, Vec<u8>>) {
    let db = env.db();
    let open: i64 =
        db.query_row("SELECT count(*) FROM files WHERE closed_at IS NULL", [], |r| r.get(0)).unwrap();
    assert_eq!(open, 0, "open jobs left");
    let mut rows: BTreeMap<String, Vec<(String, Option<String>)>> = BTreeMap::new();
    let mut stmt = db.prepare("SELECT path, state, moved_to FROM files").unwrap();
    for r in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))).unwrap() {
        let (p, s, m) = r.unwrap();
        rows.entry(p).or_default().push((s, m));
    }
    assert_eq!(rows.len(), files.len(), "rows: {rows:#?}");
    for (name, bytes) in files {
        let r = &rows[name];
        assert_eq!(r.len(), 1, "{name}: {r:?}");
        let (state, moved_to) = &r[0];
        let want = if bytes.is_empty() { "rejected" } else { state.as_str() };
        assert_eq!(state, want);
        let moved = moved_to.as_deref().unwrap_or_else(|| panic!("{name} not moved"));
        let folder = if state == "rejected" { "rejected/" } else { "processed/" };
        assert_eq!(moved, format!("{folder}{name}"), "{name}: moved without a suffix");
        assert_eq!(&std::fs::read(env.drop.join(moved)).unwrap(), bytes, "{name} bytes");
        assert!(!env.drop.join(name).exists(), "{name} still in the drop folder");
    }
    let distinct: std::collections::BTreeSet<&Vec<u8>> = files.values().filter(|b| !b.is_empty()).collect();
    let docs: i64 = db.query_row("SELECT count(*) FROM documents", [], |r| r.get(0)).unwrap();
    assert_eq!(docs as usize, distinct.len());
    let processed = env.files_under("processed").len();
    let rejected = env.files_under("rejected").len();
    let n_empty = files.values().filter(|b| b.is_empty()).count();
    assert_eq!(processed, files.len() - n_empty);
    assert_eq!(rejected, 2 * n_empty, "each rejected file with one .error.txt");
    // The spool holds one copy per distinct accepted content.
    let spool =
        std::fs::read_dir(env.data.join("spool")).unwrap().flatten().filter(|e| e.file_name() != "tmp");
    let copies: usize = spool.map(|d| std::fs::read_dir(d.path()).unwrap().count()).sum();
    assert_eq!(copies, distinct.len());
}

fn run_to_completion(env: &Env) {
    let out = env.cli().args(["ingest", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_crash_at_each_step_is_repaired_on_restart() {
    for point in ["crash-after-spool", "crash-after-pending", "crash-after-record", "crash-after-move"] {
        let env = Env::new("");
        let files = drop_set(&env, 12);
        let out = env.cli().args(["ingest", "--json"]).env("WARSHA_FAULT", point).output().unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        run_to_completion(&env);
        assert_accounted_once(&env, &files);
    }
}

#[test]
fn kill_9_at_random_moments_then_restart_accounts_for_every_file() {
    let env = Env::new("");
    // Enough files that a pass outlasts the kill times even on an idle machine.
    let files = drop_set(&env, 800);
    // Kill times spread over the settle delay (1 s) and the work after it.
    let kills = [1150u64, 1400, 1700, 2100, 1300, 2600];
    let mut killed_mid_work = 0;
    for ms in kills {
        let mut child =
            env.cli().args(["ingest", "--json"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed_mid_work += 1;
        }
        child.wait().unwrap();
    }
    assert!(killed_mid_work >= 2, "the runs finished too fast to be interrupted");
    run_to_completion(&env);
    assert_accounted_once(&env, &files);
    // The database survived every kill intact.
    let ok: String = env.db().query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
}
