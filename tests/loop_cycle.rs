//! The learning loop's turn (`cycle::run_cycle`) on SmolLM2-135M (GGUF
//! Q4_1), short sequences and a few steps: `warsha train` gates what it
//! trains by itself; reviews recorded with `warsha review` are the next
//! round's targets (the correction, never the rejected answer); a round
//! stopped at a step boundary returns Paused and the next turn resumes it
//! with the losses of an uninterrupted run; a candidate left ungated is
//! gated by the next turn; `warsha adapters gate ID` gates a candidate.
//!
//! The GGUF comes from `WARSHA_TEST_GGUF`; without it the tests say so and
//! pass, except under `CI=true`, where a missing model fails them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use warsha::config::Config;
use warsha::cycle::{run_cycle, CycleEvent, CycleInputs, CycleOutcome};
use warsha::data_dir::DataDir;
use warsha::eval::suite::SuiteOptions;
use warsha::model::tokenizer::Tok;
use warsha::model::Base;
use warsha::store::Store;
use warsha::train::round::{run_round, RoundInputs, RoundStatus};
use warsha::train::stop::StopWhen;

/// The tests train on the same two cores: one at a time keeps each quick.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn model_path() -> Option<PathBuf> {
    let p = PathBuf::from(
        std::env::var("WARSHA_TEST_GGUF")
            .unwrap_or_else(|_| "/work/models/SmolLM2-135M-Instruct.Q4_1.gguf".into()),
    );
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} not present: set WARSHA_TEST_GGUF (CI must run these tests)",
        p.display()
    );
    println!("skipping: {} not present (set WARSHA_TEST_GGUF)", p.display());
    None
}

const DOCS: [(&str, &str); 4] = [
    ("press.txt", "Hydraulic press P-12: check the oil level every Monday. The filter is replaced every 500 hours. Maximum pressure is 210 bar."),
    ("boiler.md", "Boiler B-3 runs at 8 bar. The safety valve is tested each month by the shift lead, and the log is signed."),
    ("lathe.txt", "Lathe L-7 spindle speed must not exceed 2400 rpm. Coolant is changed every two weeks; the sump holds 60 litres."),
    ("safety.txt", "يجب ارتداء النظارات الواقية عند تشغيل المخرطة. صمام الأمان يُختبر كل شهر، والضغط الأقصى ٢١٠ بار."),
];

/// Three questions: the gate stays cheap on two cores.
const EVAL_SET: &str = r#"{"id": "en-1", "task": "choice", "question": "What is the maximum pressure of press P-12?", "answer": "210 bar", "choices": ["8 bar", "60 bar", "210 bar", "2400 bar"], "lang": "en"}
{"id": "en-2", "task": "choice", "question": "How often is the boiler safety valve tested?", "answer": "Every month", "choices": ["Every day", "Every month", "Every year"], "lang": "en"}
{"id": "en-3", "task": "qa", "question": "How much coolant does the lathe L-7 sump hold?", "answer": "60 litres", "lang": "en"}
"#;

/// A data dir with four documents and a Q&A set, a small eval set, and a config pointing at the model.
fn data_dir(model: &Path, steps: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    // The store creates the schema; the rows go in over a plain connection.
    drop(Store::open(&dir.path().join("warsha.db")).unwrap());
    let mut db = rusqlite::Connection::open(dir.path().join("warsha.db")).unwrap();
    let tx = db.transaction().unwrap();
    for (i, (name, text)) in DOCS.iter().enumerate() {
        tx.execute(
            "INSERT INTO documents (id, sha256, name, kind, spool_path, bytes, text) VALUES (?1, ?2, ?3, 'txt', 'spool/x', 1, ?4)",
            rusqlite::params![i as i64 + 1, format!("{:064x}", i + 1), name, text],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO chunks (document_id, ord, text, search_text, tokens) VALUES (?1, 0, ?2, ?2, 20)",
            rusqlite::params![i as i64 + 1, text],
        )
        .unwrap();
    }
    tx.execute_batch(
        "INSERT INTO documents (id, sha256, name, kind, spool_path, bytes, text) VALUES (9, 'qa', 'faq.csv', 'csv', 'spool/q', 1, 'q,a');
         INSERT INTO qa_pairs (document_id, ord, question, answer) VALUES
           (9, 0, 'What is the maximum pressure of press P-12?', '210 bar.'),
           (9, 1, 'How often is the boiler safety valve tested?', 'Every month, by the shift lead.');",
    )
    .unwrap();
    tx.commit().unwrap();
    std::fs::create_dir_all(dir.path().join("eval")).unwrap();
    std::fs::write(dir.path().join("eval/small.jsonl"), EVAL_SET).unwrap();
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

fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{:?}: {}", c, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn losses(store: &Store, run: i64) -> Vec<f64> {
    store.run_steps(run).unwrap().into_iter().map(|r| r.loss).collect()
}

/// The gate's small suite: short greedy answers, no perturbed copies.
fn suite() -> SuiteOptions {
    SuiteOptions { max_new_tokens: 12, max_perturbed: 0, ..Default::default() }
}

#[test]
fn reviews_become_the_next_rounds_targets_and_train_gates_by_itself() {
    let Some(model) = model_path() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (d, cfg) = data_dir(&model, 2);
    {
        let mut s = Store::open(&d.path().join("warsha.db")).unwrap();
        let none: [serde_json::Value; 0] = [];
        s.record_answer("Who tests the boiler safety valve?", "cli", None, "The shift lead.", &none, 4, 1)
            .unwrap();
        s.record_answer("How much coolant does lathe L-7 hold?", "tui", None, "40 litres.", &none, 3, 1)
            .unwrap();
        s.record_answer("What is the press's maximum pressure?", "tui", None, "8 bar.", &none, 3, 1).unwrap();
    }
    let review = |args: &[&str]| warsha(d.path(), &cfg).arg("review").args(args).output().unwrap();
    let v: serde_json::Value = serde_json::from_str(&run_ok(warsha(d.path(), &cfg).args([
        "review",
        "1",
        "approve",
        "--reviewer",
        "Samira",
        "--json",
    ])))
    .unwrap();
    assert_eq!(
        (v["review"]["verdict"].as_str(), v["review"]["reviewer"].as_str()),
        (Some("approved"), Some("Samira"))
    );
    assert!(v["review"]["reviewer_uid"].is_u64(), "{v}");
    run_ok(warsha(d.path(), &cfg).args([
        "review",
        "2",
        "correct",
        "60 litres.",
        "--note",
        "see the sump label",
    ]));
    run_ok(warsha(d.path(), &cfg).args(["review", "3", "reject", "wrong machine: 8 bar is the boiler"]));
    // Refusals name the fault and record nothing.
    let out = review(&["99", "approve"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer with id 99"));
    let out = review(&["2", "correct"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("correction needs"));
    let out = review(&["3", "reject"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a reason"));

    let s = Store::open_read_only(&d.path().join("warsha.db")).unwrap();
    let targets = |src: &warsha::store::TrainingSources| -> Vec<String> {
        src.reviews.iter().map(|r| r.answer.clone()).collect()
    };
    assert_eq!(targets(&s.training_sources().unwrap()), ["The shift lead.", "60 litres."]);
    let eval: Vec<String> = s.unused_reviews().unwrap().into_iter().map(|r| r.answer).collect();
    assert_eq!(eval, ["The shift lead.", "60 litres."], "until a round uses them they are eval material");
    assert_eq!(s.reviews_of(3).unwrap()[0].note.as_deref(), Some("wrong machine: 8 bar is the boiler"));
    drop(s);

    // `warsha train` trains, then gates: the adapter is promoted or rejected, not left a candidate.
    let stdout = run_ok(warsha(d.path(), &cfg).args(["train", "--json"]));
    let done = last_json(&stdout);
    assert_eq!(done["outcome"]["status"], "done", "{done}");
    assert_eq!(done["outcome"]["samples"]["review_samples"], 2);
    let result = done["result"].as_str().unwrap().to_string();
    assert!(result == "promoted" || result == "rejected", "{done}");
    assert!(!done["gate"]["reasons"].as_array().unwrap().is_empty());
    let s = Store::open_read_only(&d.path().join("warsha.db")).unwrap();
    let run = s.run(1).unwrap().unwrap();
    let adapter = s.adapter(run.adapter_id.unwrap()).unwrap().unwrap();
    assert_eq!(adapter.state, if result == "promoted" { "active" } else { "rejected" });
    assert!(adapter.reasons.is_some() && adapter.metrics.is_some());
    assert!(s.ungated_candidates().unwrap().is_empty());
    // The round learned the approved answer and the correction, not the rejected answer.
    assert_eq!(
        targets(&s.training_sources_for(&run.data_snapshot).unwrap()),
        ["The shift lead.", "60 litres."]
    );
    assert_eq!(run.data_snapshot.reviews.len(), 2);
    let rejected = s.reviews_of(3).unwrap()[0].id;
    assert!(!run.data_snapshot.reviews.contains(&rejected));
    // Used by a round: no longer eval material, and nothing new is left.
    assert!(s.unused_reviews().unwrap().is_empty());
    assert!(!s.new_material().unwrap().any());
    // The gate refuses an adapter it already decided on.
    let out = warsha(d.path(), &cfg).args(["adapters", "gate", &adapter.id.to_string()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only a candidate or imported adapter"));
}

struct Loaded {
    base: Base,
    tok: Tok,
}

fn load(model: &Path) -> Loaded {
    warsha::train::device::tame_cpu_threads();
    let placement =
        warsha::train::device::Placement::resolve("cpu", None, &Config::defaults().model.quant).unwrap();
    Loaded {
        base: Base::load(model, &placement.load_options()).unwrap(),
        tok: Tok::for_model(model).unwrap(),
    }
}

#[test]
fn a_paused_round_resumes_on_its_trajectory_and_a_leftover_candidate_is_gated() {
    let Some(model) = model_path() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The base is loaded once and shared by every turn, as the service does.
    let m = load(&model);
    let open = |d: &Path, cfg: &Path| {
        let config = Config::load(Some(cfg), Some(d)).unwrap();
        (config, DataDir::new(d), Store::open(&d.join("warsha.db")).unwrap())
    };

    // A: a round that ends without its gate (a process that died right after training).
    let (a, a_cfg) = data_dir(&model, 4);
    let (config, data, mut store) = open(a.path(), &a_cfg);
    let round = |store: &mut Store, steps| {
        let inp = RoundInputs {
            config: &config,
            data_dir: &data,
            base: &m.base,
            tok: &m.tok,
            base_model: model.display().to_string(),
            steps: Some(steps),
            resume: false,
            stop: StopWhen::never(),
        };
        run_round(store, inp, &mut |_| {}).unwrap()
    };
    let r = round(&mut store, 4);
    assert_eq!(r.status, RoundStatus::Done);
    let full = losses(&store, r.run_id);
    assert_eq!(full.len(), 4);
    let leftover = r.adapter_id.unwrap();
    assert_eq!(store.ungated_candidates().unwrap().len(), 1);
    let inputs = CycleInputs {
        config: &config,
        data_dir: &data,
        base: &m.base,
        tok: &m.tok,
        base_model: model.display().to_string(),
        steps: None,
        stop: StopWhen::never(),
        only_if_new: true,
        suite: suite(),
    };
    let mut events = Vec::new();
    let out =
        run_cycle(&mut store, &inputs, &mut |e| events.push(serde_json::json!(e)["event"].clone())).unwrap();
    match &out {
        CycleOutcome::Promoted(g) | CycleOutcome::Rejected(g) => {
            assert_eq!(g.adapter, leftover);
            assert!(g.round.is_none(), "the leftover is gated without training");
            assert!(!g.reasons.is_empty());
        }
        other => panic!("the leftover candidate was not gated: {other:?}"),
    }
    assert_eq!(events, ["gating_leftover"]);
    assert!(store.ungated_candidates().unwrap().is_empty());
    // Nothing new since that round: the nightly rule trains nothing.
    assert!(matches!(run_cycle(&mut store, &inputs, &mut |_| {}).unwrap(), CycleOutcome::NothingNew));

    // `warsha adapters gate ID` on a second candidate.
    let second = round(&mut store, 2).adapter_id.unwrap();
    drop(store);
    let v = last_json(&run_ok(warsha(a.path(), &a_cfg).args([
        "adapters",
        "gate",
        &second.to_string(),
        "--json",
    ])));
    assert_eq!(v["adapter"], second);
    assert!(v["promoted"].is_boolean() && !v["reasons"].as_array().unwrap().is_empty(), "{v}");
    let store = Store::open_read_only(&a.path().join("warsha.db")).unwrap();
    let state = store.adapter(second).unwrap().unwrap().state;
    assert_eq!(state, if v["promoted"] == true { "active" } else { "rejected" });
    drop(store);

    // B: the same round stopped at a step boundary by the stop flag, then resumed by the next turn.
    let (b, b_cfg) = data_dir(&model, 4);
    let (config, data, mut store) = open(b.path(), &b_cfg);
    let flag = AtomicBool::new(false);
    let inputs = CycleInputs {
        config: &config,
        data_dir: &data,
        base: &m.base,
        tok: &m.tok,
        base_model: model.display().to_string(),
        steps: None,
        stop: StopWhen { flag: Some(&flag), deadline: None },
        only_if_new: true,
        suite: suite(),
    };
    let mut stop_at_two = |e: &CycleEvent<'_>| {
        if let CycleEvent::Step { report, max_steps } = e {
            assert_eq!(*max_steps, 4);
            if report.step == 2 {
                flag.store(true, Ordering::SeqCst);
            }
        }
    };
    let paused = match run_cycle(&mut store, &inputs, &mut stop_at_two).unwrap() {
        CycleOutcome::Paused { run_id, round } => {
            assert_eq!(round.steps_done, 2);
            run_id
        }
        other => panic!("expected a paused round: {other:?}"),
    };
    assert_eq!(store.run(paused).unwrap().unwrap().status, "paused");
    flag.store(false, Ordering::SeqCst);
    let mut steps = Vec::new();
    let out = run_cycle(&mut store, &inputs, &mut |e| {
        if let CycleEvent::Step { report, .. } = e {
            steps.push(report.step);
        }
    })
    .unwrap();
    let g = match out {
        CycleOutcome::Promoted(g) | CycleOutcome::Rejected(g) => g,
        other => panic!("expected the resumed round to be gated: {other:?}"),
    };
    let r = g.round.unwrap();
    assert_eq!((r.run_id, r.resumed_from_step, r.steps_done), (paused, Some(2), 4));
    assert_eq!(steps, [3, 4]);
    let resumed = losses(&store, paused);
    assert_eq!(resumed.len(), 4);
    for (x, y) in full.iter().zip(&resumed) {
        assert!((x - y).abs() < 1e-5, "uninterrupted {full:?} vs paused and resumed {resumed:?}");
    }
    assert_ne!(store.adapter(g.adapter).unwrap().unwrap().state, "candidate");
}
