//! PEFT interchange, pinned by fixtures from scripts/make_peft_fixtures.py
//! (Hugging Face transformers + PEFT), for a tiny qwen2 and a tiny llama:
//!
//! - an adapter saved by PEFT, imported by us, gives PEFT's logits;
//! - our export of an adapter is the very directory PEFT loaded to produce
//!   `logits_ours`, and gives those logits in our model too;
//! - the GGUF export of the same adapter reads back bit-exactly.
//!
//! The fixture models are f16 GGUF files, which `Base::load` keeps dense
//! (no 4-bit quantization), so the comparison is exact up to f32 arithmetic
//! order: 1e-4 absolute on logits of magnitude ~10.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use warsha::adapters::registry::{dir_stats, export, import_peft, ExportFormat};
use warsha::adapters::{gguf, load_adapter, peft, BaseShapes, LoraPair, LoraWeights, MODULES};
use warsha::data_dir::DataDir;
use warsha::model::{Adapter, Base, Batch, LoadOptions};
use warsha::store::adapters::NewAdapter;
use warsha::store::Store;

const TOL: f32 = 1e-4;

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft").join(arch)
}

fn ids(arch: &str) -> Vec<Vec<u32>> {
    serde_json::from_str(&std::fs::read_to_string(fixture(arch).join("ids.json")).unwrap()).unwrap()
}

/// (batch, seq, vocab) logits from a fixture file.
fn logits(path: &Path) -> Vec<Vec<Vec<f32>>> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap().remove("logits").unwrap();
    t.to_vec3::<f32>().unwrap()
}

fn load_base(arch: &str) -> Base {
    Base::load(&fixture(arch).join("model.gguf"), &LoadOptions::default()).unwrap()
}

/// Our logits at every position, one token at a time through the KV cache.
fn our_logits(base: &Base, adapter: Option<&Adapter>, seq: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = base.new_cache();
    seq.iter()
        .map(|&t| {
            let x = Tensor::new(&[t], base.device()).unwrap().unsqueeze(0).unwrap();
            base.forward(&x, &mut cache, adapter).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap()
        })
        .collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Compare our inference logits and our scoring path's log-probabilities with a reference.
fn assert_matches(base: &Base, adapter: Option<&Adapter>, arch: &str, reference: &Path) {
    let want = logits(reference);
    let seqs = ids(arch);
    for (s, seq) in seqs.iter().enumerate() {
        let got = our_logits(base, adapter, seq);
        let d = max_abs_diff(&got, &want[s]);
        eprintln!(
            "{arch} {}: sequence {s}: max |Δlogit| = {d:.2e}",
            reference.file_name().unwrap().to_string_lossy()
        );
        assert!(d < TOL, "{arch} {}: sequence {s}: max |Δlogit| = {d:e}", reference.display());
    }
    // The scoring path (target_logprobs) against log-softmax of the reference.
    let (b, t) = (seqs.len(), seqs[0].len() - 1);
    let inp: Vec<u32> = seqs.iter().flat_map(|s| s[..t].to_vec()).collect();
    let tgt: Vec<u32> = seqs.iter().flat_map(|s| s[1..].to_vec()).collect();
    let batch = Batch {
        input_ids: Tensor::from_vec(inp, (b, t), &Device::Cpu).unwrap(),
        targets: Tensor::from_vec(tgt.clone(), (b, t), &Device::Cpu).unwrap(),
        loss_mask: Tensor::ones((b, t), candle_core::DType::F32, &Device::Cpu).unwrap(),
        segment_ids: None,
    };
    let lp = base.target_logprobs(&batch, adapter).unwrap().to_vec2::<f32>().unwrap();
    for s in 0..b {
        for j in 0..t {
            let row = &want[s][j];
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
            let expect = row[tgt[s * t + j] as usize] - lse;
            assert!((lp[s][j] - expect).abs() < TOL, "{arch}: log p at ({s},{j}): {} vs {expect}", lp[s][j]);
        }
    }
}

#[test]
fn fixture_models_load_dense_and_match_transformers_without_an_adapter() {
    for arch in ["qwen2", "llama"] {
        let base = load_base(arch);
        assert_matches(&base, None, arch, &fixture(arch).join("logits_base.safetensors"));
    }
}

#[test]
fn peft_saved_adapter_imported_gives_peft_logits() {
    for arch in ["qwen2", "llama"] {
        let base = load_base(arch);
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::new(tmp.path());
        data.create().unwrap();
        let mut store = Store::open(&data.db()).unwrap();
        let shapes = BaseShapes::from(&base.config);
        let row = import_peft(&mut store, &data, &fixture(arch).join("peft_saved"), &shapes, None).unwrap();
        let w = peft::read_dir(&data.root().join(&row.path)).unwrap();
        assert!(w.pairs.values().all(|p| p.b.iter().any(|&x| x != 0.0)), "fixture B matrices are non-zero");
        let adapter = load_adapter(&data.root().join(&row.path), &base).unwrap();
        assert_matches(&base, Some(&adapter), arch, &fixture(arch).join("logits_peft.safetensors"));
        // Without the adapter the logits differ clearly: the comparison above is not vacuous.
        let plain = our_logits(&base, None, &ids(arch)[0]);
        let want = logits(&fixture(arch).join("logits_peft.safetensors"));
        assert!(max_abs_diff(&plain, &want[0]) > 0.1, "{arch}: the adapter must change the logits");
    }
}

/// Exactly representable values, the same on every machine.
fn known_weights(shapes: &BaseShapes) -> LoraWeights {
    let r = 4;
    let mut pairs = BTreeMap::new();
    for layer in 0..shapes.num_layers {
        for (mi, m) in MODULES.iter().enumerate() {
            let (out, inp) = shapes.dims(*m);
            let v = |k: usize| (((k * 29 + layer * 7 + mi * 3) % 61) as f32 - 30.0) / 128.0;
            pairs.insert(
                (layer, *m),
                LoraPair {
                    a: (0..r * inp).map(v).collect(),
                    b: (0..out * r).map(|k| v(k + 13)).collect(),
                    a_shape: [r, inp],
                    b_shape: [out, r],
                },
            );
        }
    }
    LoraWeights { rank: r, alpha: 8.0, dropout: 0.0, pairs }
}

fn files_equal(a: &Path, b: &Path) -> bool {
    std::fs::read(a).ok() == std::fs::read(b).ok()
}

#[test]
fn our_peft_export_is_what_peft_loaded_and_gives_its_logits() {
    for arch in ["qwen2", "llama"] {
        let base = load_base(arch);
        let shapes = BaseShapes::from(&base.config);
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::new(tmp.path());
        data.create().unwrap();
        let mut store = Store::open(&data.db()).unwrap();
        // A trained adapter as the registry holds it, exported with `adapters export`.
        let dir = data.adapters().join("run-1");
        peft::write_dir(&dir, &known_weights(&shapes), "trainer").unwrap();
        let (sha256, bytes) = dir_stats(&dir).unwrap();
        let id = store
            .insert_adapter(&NewAdapter {
                state: "candidate".into(),
                path: "adapters/run-1".into(),
                sha256,
                bytes,
                rank: 4,
                alpha: 8.0,
                targets: MODULES.iter().map(|m| m.short.to_string()).collect(),
                ..Default::default()
            })
            .unwrap();
        let out = tmp.path().join("export");
        export(&store, &data, id, ExportFormat::Peft, &out, &shapes, &format!("tiny-{arch}")).unwrap();

        let committed = fixture(arch).join("ours");
        if std::env::var_os("WARSHA_WRITE_PEFT_FIXTURES").is_some() {
            std::fs::create_dir_all(&committed).unwrap();
            for f in [peft::WEIGHTS_FILE, peft::CONFIG_FILE] {
                std::fs::copy(out.join(f), committed.join(f)).unwrap();
            }
            continue;
        }
        for f in [peft::WEIGHTS_FILE, peft::CONFIG_FILE] {
            assert!(
                files_equal(&out.join(f), &committed.join(f)),
                "{arch}: {f} differs from the committed export"
            );
        }
        let adapter = load_adapter(&out, &base).unwrap();
        assert_matches(&base, Some(&adapter), arch, &fixture(arch).join("logits_ours.safetensors"));

        // The GGUF export of the same adapter reads back to the same weights.
        let gdir = tmp.path().join("gguf");
        let files = export(&store, &data, id, ExportFormat::Gguf, &gdir, &shapes, "x").unwrap();
        let (got_arch, back) = gguf::read_file(&files[0], &shapes).unwrap();
        assert_eq!(got_arch, arch);
        assert_eq!(back, known_weights(&shapes));
    }
}
