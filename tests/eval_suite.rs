//! The evaluation suite and the gate's wiring on a real model
//! (SmolLM2-135M-Instruct Q4_1; `WARSHA_TEST_GGUF` or /work/models, skipped
//! when absent): the measures point the right way on questions any
//! instruct model knows, results are tied to their inputs, and a candidate
//! that learned nothing is rejected with its reasons recorded while the
//! incumbent's evaluation is reused on identical inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use warsha::adapters::registry::dir_stats;
use warsha::adapters::{evaluate_and_gate, peft, BaseShapes, LoraPair, LoraWeights, MODULES};
use warsha::config::Config;
use warsha::data_dir::DataDir;
use warsha::eval::suite::inputs_sha256;
use warsha::eval::{run_suite, EvalSet, SuiteInputs, SuiteOptions};
use warsha::model::tokenizer::Tok;
use warsha::model::{Base, LoadOptions};
use warsha::store::adapters::NewAdapter;
use warsha::store::Store;

fn gguf() -> Option<PathBuf> {
    let p = std::env::var_os("WARSHA_TEST_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skip: no model at {} (set WARSHA_TEST_GGUF)", p.display());
        None
    }
}

const SET: &str = r#"{"id":"c1","task":"choice","question":"What is the capital of France?","answer":"Paris","choices":["Paris","Banana","Seventeen"],"lang":"en"}
{"id":"c2","task":"choice","question":"How many days are in a week?","answer":"Seven","choices":["Purple","Seven","Spoon"],"lang":"en"}
{"id":"c3","task":"choice","question":"ما هي عاصمة فرنسا؟","answer":"باريس","choices":["باريس","موزة"],"lang":"ar"}
{"id":"q1","task":"qa","question":"What is the capital of France? Answer in one word.","answer":"Paris","lang":"en"}
{"id":"q2","task":"qa","question":"ما هي عاصمة فرنسا؟","answer":"باريس","lang":"ar"}
"#;

const HELDOUT: &str = "Replace the hydraulic filter element HF-220 every 1000 hours. \
Tighten the M16 mould bolts to 210 Nm. Alarm E-22 means the oil is above 55 °C.";

fn opts() -> SuiteOptions {
    SuiteOptions { max_new_tokens: 12, ..SuiteOptions::default() }
}

#[test]
fn suite_measures_point_the_right_way_on_known_answers() {
    let Some(path) = gguf() else { return };
    let base = Base::load(&path, &LoadOptions::default()).unwrap();
    let tok = Tok::for_model(&path).unwrap();
    let set = EvalSet::parse(Path::new("known.jsonl"), SET.as_bytes()).unwrap();
    let heldout = vec![HELDOUT.to_string()];
    let inputs = SuiteInputs { eval_set: &set, heldout: &heldout, reviews: &[] };
    let rep = run_suite(&base, &tok, None, &inputs, &opts()).unwrap();
    let m = &rep.metrics;
    eprintln!("{}", serde_json::to_string_pretty(&rep).unwrap());

    // English options any instruct model ranks right by likelihood.
    let picks: BTreeMap<&str, bool> = rep
        .items
        .iter()
        .filter(|i| i.task == "choice")
        .map(|i| (i.id.as_str(), i.correct == Some(true)))
        .collect();
    // A 135M model is no oracle: the clear-cut English item must be right,
    // and at least two of the three overall.
    assert!(picks["c1"], "{picks:?}");
    assert!(picks.values().filter(|&&ok| ok).count() >= 2, "{picks:?}");
    assert_eq!(m.choice_items, 3);
    let q1 = rep.items.iter().find(|i| i.id == "q1").unwrap();
    assert!(q1.prediction.contains("Paris"), "greedy answer {:?}", q1.prediction);
    assert!(q1.f1.unwrap() > 0.0);
    assert_eq!(m.qa_items, 2);

    // Losses: finite, positive, counted; facts are a strict subset of the held-out tokens.
    for l in [m.heldout_loss, m.fact_loss, m.answer_loss] {
        assert!(l.is_some_and(|x| x.is_finite() && x > 0.0), "{m:?}");
    }
    assert!(
        m.fact_tokens > 0 && m.fact_tokens < m.heldout_tokens,
        "{} of {}",
        m.fact_tokens,
        m.heldout_tokens
    );
    assert!((m.heldout_ppl.unwrap() - m.heldout_loss.unwrap().exp()).abs() < 1e-9);
    assert!((0.0..=1.0).contains(&m.score));
    // The Arabic questions were perturbed and scored again.
    assert!(m.perturbed_items >= 1 && m.perturbed_answer_likelihood.is_some(), "{m:?}");
    assert_eq!(m.inputs_sha256, inputs_sha256(&inputs, &opts()));
    assert_eq!(rep.eval_set_sha256, set.sha256);
}

/// An adapter whose update is large noise: it has learned nothing and damages the model.
fn noise(shapes: &BaseShapes, seed: usize) -> LoraWeights {
    let r = 4;
    let mut pairs = BTreeMap::new();
    for layer in 0..shapes.num_layers {
        for (mi, m) in MODULES.iter().enumerate() {
            let (out, inp) = shapes.dims(*m);
            let v = |k: usize| (((k * 31 + layer * 17 + mi * 5 + seed) % 97) as f32 - 48.0) / 48.0;
            pairs.insert(
                (layer, *m),
                LoraPair {
                    a: (0..r * inp).map(|k| v(k) * 0.3).collect(),
                    b: (0..out * r).map(|k| v(k + 7) * 0.3).collect(),
                    a_shape: [r, inp],
                    b_shape: [out, r],
                },
            );
        }
    }
    LoraWeights { rank: r, alpha: 8.0, dropout: 0.0, pairs }
}

#[test]
fn gate_rejects_a_noise_adapter_records_why_and_reuses_the_incumbent_evaluation() {
    let Some(path) = gguf() else { return };
    let base = Base::load(&path, &LoadOptions::default()).unwrap();
    let tok = Tok::for_model(&path).unwrap();
    let set = EvalSet::parse(Path::new("known.jsonl"), SET.as_bytes()).unwrap();
    let heldout = vec![HELDOUT.to_string()];
    let inputs = SuiteInputs { eval_set: &set, heldout: &heldout, reviews: &[] };
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::new(tmp.path());
    data.create().unwrap();
    let mut store = Store::open(&data.db()).unwrap();
    let cfg = Config::defaults();
    let shapes = BaseShapes::from(&base.config);
    let mut ids = Vec::new();
    for (seed, name) in ["run-1", "run-2"].into_iter().enumerate() {
        let dir = data.adapters().join(name);
        peft::write_dir(&dir, &noise(&shapes, seed), "smollm2").unwrap();
        let (sha256, bytes) = dir_stats(&dir).unwrap();
        ids.push(
            store
                .insert_adapter(&NewAdapter {
                    state: "candidate".into(),
                    path: format!("adapters/{name}"),
                    sha256,
                    bytes,
                    rank: 4,
                    alpha: 8.0,
                    targets: MODULES.iter().map(|m| m.short.to_string()).collect(),
                    ..Default::default()
                })
                .unwrap(),
        );
    }
    let o = opts();
    let first = evaluate_and_gate(&mut store, &data, &cfg.eval, 5, &base, &tok, ids[0], &inputs, &o).unwrap();
    eprintln!("{:#?}", first.decision);
    assert!(!first.decision.promote, "{:#?}", first.decision);
    assert!(first.incumbent_id.is_none(), "the bare base model is the first incumbent");
    assert!(!first.incumbent_reused);
    let row = store.adapter(ids[0]).unwrap().unwrap();
    assert_eq!(row.state, "rejected");
    assert!(row.reasons.unwrap()["reasons"].as_array().unwrap().len() > 1);
    assert!(row.metrics.unwrap()["candidate"]["score"].is_number());
    assert!(store.active_adapter().unwrap().is_none());

    let second =
        evaluate_and_gate(&mut store, &data, &cfg.eval, 5, &base, &tok, ids[1], &inputs, &o).unwrap();
    assert!(second.incumbent_reused, "the base's evaluation on identical inputs is reused");
    // Reused from the database: the same inputs and figures (JSON keeps f64 to ~1 ulp).
    assert_eq!(second.incumbent.inputs_sha256, first.incumbent.inputs_sha256);
    assert!((second.incumbent.score - first.incumbent.score).abs() < 1e-12);
    assert_eq!(
        second.incumbent.answer_loss.map(|l| (l * 1e9).round()),
        first.incumbent.answer_loss.map(|l| (l * 1e9).round())
    );
    // Both candidates and the base were scored once each.
    let evals = store.evals().unwrap();
    assert_eq!(evals.iter().filter(|e| e.adapter_id.is_none()).count(), 1);
    assert_eq!(evals.len(), 3);
    // A rejected candidate cannot go through the gate again.
    assert!(evaluate_and_gate(&mut store, &data, &cfg.eval, 5, &base, &tok, ids[0], &inputs, &o).is_err());
}
