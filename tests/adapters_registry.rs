//! The adapter registry on a real data dir and SQLite file: promotion and
//! rollback switch atomically, a rejected adapter never becomes active,
//! retention keeps the newest N and deletes only retired directories, and
//! PEFT import/export round-trips bit-exactly with clear shape errors.

use std::collections::BTreeMap;
use std::path::Path;

use warsha::adapters::registry::{
    apply_retention, dir_stats, export, import_peft, promote, rollback, ExportFormat,
};
use warsha::adapters::{peft, AdapterError, BaseShapes, LoraPair, LoraWeights, MODULES};
use warsha::data_dir::DataDir;
use warsha::store::adapters::NewAdapter;
use warsha::store::Store;

fn shapes() -> BaseShapes {
    BaseShapes {
        arch: "qwen2".into(),
        num_layers: 2,
        hidden: 64,
        intermediate: 128,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
    }
}

/// Exactly representable, distinct per seed.
fn weights(seed: usize) -> LoraWeights {
    let base = shapes();
    let r = 4;
    let mut pairs = BTreeMap::new();
    for layer in 0..base.num_layers {
        for (mi, m) in MODULES.iter().enumerate() {
            let (out, inp) = base.dims(*m);
            let v = |k: usize| (((k * 37 + seed * 11 + layer * 5 + mi) % 101) as f32 - 50.0) / 256.0;
            pairs.insert(
                (layer, *m),
                LoraPair {
                    a: (0..r * inp).map(v).collect(),
                    b: (0..out * r).map(|k| v(k + 3)).collect(),
                    a_shape: [r, inp],
                    b_shape: [out, r],
                },
            );
        }
    }
    LoraWeights { rank: r, alpha: 8.0, dropout: 0.05, pairs }
}

struct Env {
    _tmp: tempfile::TempDir,
    data: DataDir,
    store: Store,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::new(tmp.path());
    data.create().unwrap();
    let store = Store::open(&data.db()).unwrap();
    Env { _tmp: tmp, data, store }
}

/// A trained candidate as the trainer leaves it: PEFT files plus a row.
fn candidate(e: &mut Env, name: &str, seed: usize, parent: Option<i64>) -> i64 {
    let dir = e.data.adapters().join(name);
    peft::write_dir(&dir, &weights(seed), "tiny-qwen2").unwrap();
    let (sha256, bytes) = dir_stats(&dir).unwrap();
    e.store
        .insert_adapter(&NewAdapter {
            parent_id: parent,
            state: "candidate".into(),
            path: format!("adapters/{name}"),
            sha256,
            bytes,
            rank: 4,
            alpha: 8.0,
            targets: MODULES.iter().map(|m| m.short.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
}

fn state(e: &Env, id: i64) -> String {
    e.store.adapter(id).unwrap().unwrap().state
}

#[test]
fn promote_then_rollback_restores_the_previous_adapter() {
    let mut e = env();
    let a = candidate(&mut e, "run-1", 1, None);
    let b = candidate(&mut e, "run-2", 2, Some(a));
    let s = promote(&mut e.store, &e.data, a, None, 5).unwrap();
    assert_eq!(s.active.unwrap().id, a);
    assert!(s.replaced.is_none(), "the first adapter replaces the bare base");
    let s = promote(&mut e.store, &e.data, b, None, 5).unwrap();
    assert_eq!(s.active.unwrap().id, b);
    assert_eq!(s.replaced.unwrap().id, a);
    assert_eq!(state(&e, a), "previous");

    let s = rollback(&mut e.store, &e.data, 5).unwrap();
    assert_eq!(s.active.as_ref().unwrap().id, a);
    assert_eq!(e.store.active_adapter().unwrap().unwrap().id, a);
    assert_eq!(state(&e, b), "rejected", "a rolled-back adapter is not offered again");

    // Rolling back past the first adapter leaves the bare base model answering.
    let s = rollback(&mut e.store, &e.data, 5).unwrap();
    assert!(s.active.is_none());
    assert!(e.store.active_adapter().unwrap().is_none());
    assert!(matches!(rollback(&mut e.store, &e.data, 5), Err(AdapterError::NothingActive)));
}

#[test]
fn rejected_adapter_never_becomes_active() {
    let mut e = env();
    let a = candidate(&mut e, "run-1", 1, None);
    let b = candidate(&mut e, "run-2", 2, Some(a));
    promote(&mut e.store, &e.data, a, None, 5).unwrap();
    e.store
        .set_adapter_state(b, "rejected", Some(&serde_json::json!(["no primary measure improved"])))
        .unwrap();
    let err = promote(&mut e.store, &e.data, b, None, 5).unwrap_err();
    assert!(err.to_string().contains("never becomes active"), "{err}");
    assert_eq!(state(&e, b), "rejected");
    assert_eq!(e.store.active_adapter().unwrap().unwrap().id, a, "the active adapter is untouched");
    // Nor through a rollback: the rejected one is not a rollback target.
    let s = rollback(&mut e.store, &e.data, 5).unwrap();
    assert!(s.active.is_none());
    assert_eq!(state(&e, b), "rejected");
}

#[test]
fn promotion_refuses_weights_changed_on_disk() {
    let mut e = env();
    let a = candidate(&mut e, "run-1", 1, None);
    peft::write_dir(&e.data.adapters().join("run-1"), &weights(9), "tiny-qwen2").unwrap();
    let err = promote(&mut e.store, &e.data, a, None, 5).unwrap_err().to_string();
    assert!(err.contains("changed on disk"), "{err}");
    assert_eq!(state(&e, a), "candidate");
}

#[test]
fn retention_keeps_the_newest_and_deletes_only_retired_dirs() {
    let mut e = env();
    let mut ids = Vec::new();
    for i in 0..6 {
        let parent = ids.last().copied();
        ids.push(candidate(&mut e, &format!("run-{i}"), i, parent));
    }
    promote(&mut e.store, &e.data, ids[0], None, 10).unwrap();
    promote(&mut e.store, &e.data, ids[1], None, 10).unwrap();
    // keep 3: active (1) and newest previous (0) always, plus the newest other (5).
    let s = apply_retention(&mut e.store, &e.data, 3).unwrap();
    let mut retired: Vec<i64> = s.retired.iter().map(|r| r.id).collect();
    retired.sort();
    assert_eq!(retired, vec![ids[2], ids[3], ids[4]]);
    for (i, id) in ids.iter().enumerate() {
        let dir = e.data.adapters().join(format!("run-{i}"));
        let row = e.store.adapter(*id).unwrap().unwrap();
        assert_eq!(row.state == "retired", !dir.exists(), "run-{i}: {} vs dir {}", row.state, dir.exists());
    }
    assert_eq!(state(&e, ids[1]), "active");
    assert_eq!(state(&e, ids[0]), "previous");
    assert_eq!(state(&e, ids[5]), "candidate");
}

#[test]
fn import_rejects_a_mismatched_adapter_naming_the_tensor_and_shapes() {
    let mut e = env();
    let src = tempfile::tempdir().unwrap();
    let mut w = weights(1);
    // An adapter made for a model with 48-wide k/v heads.
    let k = MODULES[1];
    let p = w.pairs.get_mut(&(1, k)).unwrap();
    p.b = vec![0.5; 48 * 4];
    p.b_shape = [48, 4];
    peft::write_dir(src.path(), &w, "other-model").unwrap();
    let err = import_peft(&mut e.store, &e.data, src.path(), &shapes(), None).unwrap_err().to_string();
    assert!(err.contains("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"), "{err}");
    assert!(err.contains("expected shape [32, 4], found [48, 4]"), "{err}");
    assert!(e.store.adapters().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(e.data.adapters()).unwrap().count(), 0, "nothing left behind");
}

fn read_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn peft_export_then_import_is_bit_exact() {
    let mut e = env();
    let id = candidate(&mut e, "run-1", 3, None);
    let out = tempfile::tempdir().unwrap();
    let files =
        export(&e.store, &e.data, id, ExportFormat::Peft, out.path(), &shapes(), "tiny-qwen2").unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(peft::read_dir(out.path()).unwrap(), weights(3));
    // The exported weights file is byte-identical to the stored one.
    assert_eq!(
        read_bytes(&out.path().join(peft::WEIGHTS_FILE)),
        read_bytes(&e.data.adapters().join("run-1").join(peft::WEIGHTS_FILE))
    );

    // Into another box: imported with the same sha256 and identical tensors.
    let mut other = env();
    let row = import_peft(&mut other.store, &other.data, out.path(), &shapes(), Some("base-sha")).unwrap();
    assert_eq!(row.state, "imported");
    assert_eq!(row.sha256, e.store.adapter(id).unwrap().unwrap().sha256);
    assert_eq!(peft::read_dir(&other.data.root().join(&row.path)).unwrap(), weights(3));
    // Importing the same weights twice is refused by name.
    let again = import_peft(&mut other.store, &other.data, out.path(), &shapes(), None).unwrap_err();
    assert!(again.to_string().contains("already in the registry"), "{again}");
    // An imported adapter can be promoted.
    promote(&mut other.store, &other.data, row.id, None, 5).unwrap();
    assert_eq!(other.store.active_adapter().unwrap().unwrap().id, row.id);
}
