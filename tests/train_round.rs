//! Training rounds through the real binary on SmolLM2-135M (GGUF Q4_1) and a
//! small data dir: a round registers an adapter in PEFT layout with its
//! metrics and gates it; `kill -9` mid-round then `--resume` reproduces the
//! uninterrupted run's losses; SIGTERM pauses at a checkpoint and the paused
//! run resumes to the end. The GGUF comes from `WARSHA_TEST_GGUF` (default
//! under /work/models); without it the tests say so and pass.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use warsha::store::Store;

fn model_path() -> Option<PathBuf> {
    let p = PathBuf::from(
        std::env::var("WARSHA_TEST_GGUF")
            .unwrap_or_else(|_| "/work/models/SmolLM2-135M-Instruct.Q4_1.gguf".into()),
    );
    if p.is_file() {
        Some(p)
    } else {
        println!("skipping: {} not present (set WARSHA_TEST_GGUF)", p.display());
        None
    }
}

const DOCS: [(&str, &str); 4] = [
    ("press.txt", "Hydraulic press P-12: check the oil level every Monday. The filter is replaced every 500 hours. Maximum pressure is 210 bar."),
    ("boiler.md", "Boiler B-3 runs at 8 bar. The safety valve is tested each month by the shift lead, and the log is signed."),
    ("lathe.txt", "Lathe L-7 spindle speed must not exceed 2400 rpm. Coolant is changed every two weeks; the sump holds 60 litres."),
    ("safety.txt", "يجب ارتداء النظارات الواقية عند تشغيل المخرطة. صمام الأمان يُختبر كل شهر، والضغط الأقصى ٢١٠ بار."),
];

/// A data dir with four documents, a Q&A set and one corrected answer, and a config pointing at the model.
fn data_dir(model: &Path, steps: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    // The store creates the schema; the rows go in over a plain connection.
    drop(Store::open(&dir.path().join("warsha.db")).unwrap());
    let mut db = rusqlite::Connection::open(dir.path().join("warsha.db")).unwrap();
    let tx = db.transaction().unwrap();
    (|| -> rusqlite::Result<()> {
            for (i, (name, text)) in DOCS.iter().enumerate() {
                tx.execute(
                    "INSERT INTO documents (id, sha256, name, kind, spool_path, bytes, text) VALUES (?1, ?2, ?3, 'txt', 'spool/x', 1, ?4)",
                    rusqlite::params![i as i64 + 1, format!("{:064x}", i + 1), name, text],
                )
                ?;
                tx.execute(
                    "INSERT INTO chunks (document_id, ord, text, search_text, tokens) VALUES (?1, 0, ?2, ?2, 20)",
                    rusqlite::params![i as i64 + 1, text],
                )
                ?;
            }
            tx.execute_batch(
                "INSERT INTO documents (id, sha256, name, kind, spool_path, bytes, text) VALUES (9, 'qa', 'faq.csv', 'csv', 'spool/q', 1, 'q,a');
                 INSERT INTO qa_pairs (document_id, ord, question, answer) VALUES
                   (9, 0, 'What is the maximum pressure of press P-12?', '210 bar.'),
                   (9, 1, 'How often is the boiler safety valve tested?', 'Every month, by the shift lead.'),
                   (9, 2, 'ما هو الضغط الأقصى للمكبس؟', '٢١٠ بار.');
                 INSERT INTO questions (id, text, origin) VALUES (1, 'How much coolant does lathe L-7 hold?', 'cli');
                 INSERT INTO answers (id, question_id, text, sources) VALUES (1, 1, '40 litres.', '[]');
                 INSERT INTO reviews (answer_id, verdict, correction) VALUES (1, 'corrected', '60 litres.');",
            )
    })()
    .unwrap();
    tx.commit().unwrap();
    // A two-question eval set keeps the gate each round ends with quick.
    std::fs::create_dir_all(dir.path().join("eval")).unwrap();
    std::fs::write(
        dir.path().join("eval/small.jsonl"),
        "{\"id\": \"1\", \"task\": \"choice\", \"question\": \"What is the maximum pressure of press P-12?\", \
         \"answer\": \"210 bar\", \"choices\": [\"8 bar\", \"210 bar\"], \"lang\": \"en\"}\n\
         {\"id\": \"2\", \"task\": \"qa\", \"question\": \"How much coolant does lathe L-7 hold?\", \
         \"answer\": \"60 litres\", \"lang\": \"en\"}\n",
    )
    .unwrap();
    let cfg = dir.path().join("warsha.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\npath = {:?}\ndevice = \"cpu\"\n[train]\nseq_len = 64\nmicro_batch = 1\ngrad_accum = 2\n\
             max_steps = {steps}\ncheckpoint_every = 2\nlr = 1e-3\nwarmup_steps = 1\nheldout_fraction = 0.25\n\
             [schedule]\nwindow_start = \"00:00\"\nwindow_end = \"00:00\"\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    (dir, cfg)
}

fn warsha(dir: &Path, cfg: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warsha"));
    c.arg("--data-dir").arg(dir).arg("--config").arg(cfg);
    c
}

fn losses(dir: &Path, run: i64) -> Vec<f64> {
    let s = Store::open_read_only(&dir.join("warsha.db")).unwrap();
    s.run_steps(run).unwrap().into_iter().map(|r| r.loss).collect()
}

/// Start a round and return the child once it reported `min_step` steps on stdout.
fn start_until(dir: &Path, cfg: &Path, extra: &[&str], min_step: u64) -> std::process::Child {
    let mut child = warsha(dir, cfg)
        .args(["train", "--json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["event"] == "step" && v["report"]["step"].as_u64().unwrap() >= min_step {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return child;
        }
    }
    let status = child.wait().unwrap();
    panic!("the round ended ({status}) before step {min_step}");
}

#[test]
fn kill_minus_nine_then_resume_matches_the_uninterrupted_run() {
    let Some(model) = model_path() else { return };
    // Uninterrupted.
    let (a, a_cfg) = data_dir(&model, 6);
    let out = warsha(a.path(), &a_cfg).args(["train", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_string();
    let done: serde_json::Value = serde_json::from_str(&last).unwrap();
    let o = &done["outcome"];
    assert_eq!(o["status"], "done");
    let full = losses(a.path(), 1);
    assert_eq!(full.len(), 6);
    assert!(full.iter().all(|l| l.is_finite() && *l > 0.0));
    // The round registered a candidate adapter in PEFT layout, with its figures.
    let s = Store::open_read_only(&a.path().join("warsha.db")).unwrap();
    let run = s.run(1).unwrap().unwrap();
    assert_eq!(run.status, "done");
    assert!(run.heldout_loss.unwrap() > 0.0);
    assert_eq!(run.data_snapshot.heldout_documents.len(), 1);
    assert_eq!(run.data_snapshot.qa_pairs.len(), 3);
    let db = rusqlite::Connection::open(a.path().join("warsha.db")).unwrap();
    let (state, path): (String, String) = db
        .query_row("SELECT state, path FROM adapters WHERE id = ?1", [run.adapter_id.unwrap()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    // `train` ends with the gate: promoted or rejected, never left a candidate.
    assert!(state == "active" || state == "rejected", "{state}");
    let adir = a.path().join(path);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["target_modules"][0], "q_proj");
    assert!(adir.join("adapter_model.safetensors").metadata().unwrap().len() > 1_000_000);
    let used: i64 =
        db.query_row("SELECT count(*) FROM reviews WHERE used_in_run = 1", [], |r| r.get(0)).unwrap();
    assert_eq!(used, 1);
    let peaks: Vec<Option<f64>> = s.run_steps(1).unwrap().iter().map(|r| r.peak_mem_mib).collect();
    assert!(peaks.iter().all(|p| p.is_some_and(|m| m > 100.0)), "{peaks:?}");

    // Killed with SIGKILL after step 3 (last checkpoint: step 2), then resumed.
    let (b, b_cfg) = data_dir(&model, 6);
    let mut child = start_until(b.path(), &b_cfg, &[], 3);
    child.kill().unwrap();
    child.wait().unwrap();
    let out = warsha(b.path(), &b_cfg).args(["train", "--resume", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_string();
    let done: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(done["outcome"]["status"], "done");
    assert!(done["outcome"]["resumed_from_step"].as_u64().unwrap() >= 2);
    let resumed = losses(b.path(), 1);
    assert_eq!(resumed.len(), 6);
    for (x, y) in full.iter().zip(&resumed) {
        assert!((x - y).abs() < 1e-5, "uninterrupted {full:?} vs resumed {resumed:?}");
    }
}

#[test]
fn sigterm_pauses_at_a_checkpoint_and_the_next_round_finishes_it() {
    let Some(model) = model_path() else { return };
    let (c, c_cfg) = data_dir(&model, 4);
    let mut child = start_until(c.path(), &c_cfg, &[], 1);
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM must end the round cleanly: {status}");
    let s = Store::open_read_only(&c.path().join("warsha.db")).unwrap();
    let run = s.run(1).unwrap().unwrap();
    assert_eq!(run.status, "paused");
    let ckpts: Vec<_> = std::fs::read_dir(c.path().join("checkpoints/run-1")).unwrap().collect();
    assert!(!ckpts.is_empty());
    drop(s);
    let out = warsha(c.path(), &c_cfg).args(["train", "--resume", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = Store::open_read_only(&c.path().join("warsha.db")).unwrap();
    let run = s.run(1).unwrap().unwrap();
    assert_eq!((run.status.as_str(), run.steps_done), ("done", 4));
    // Nothing to resume any more: a clear refusal.
    let out = warsha(c.path(), &c_cfg).args(["train", "--resume"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no paused or interrupted"));
    // The plan is printed without training.
    let out = warsha(c.path(), &c_cfg).args(["train", "--plan", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["plan"]["estimate"]["total"].as_u64().unwrap() > 100 << 20);
}
