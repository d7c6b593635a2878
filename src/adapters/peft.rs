//! The Hugging Face PEFT adapter layout: `adapter_config.json` plus
//! `adapter_model.safetensors` whose tensors are named
//! `base_model.model.model.layers.{i}.{module}.lora_{A,B}.weight`.
//!
//! Reading accepts what PEFT's `save_pretrained` writes for a causal LM
//! LoRA (f32/f16/bf16 tensors; rsLoRA folded into alpha) and refuses, by
//! name, what this product cannot apply (DoRA, per-layer rank or alpha
//! patterns, extra trained modules, biases, embeddings). Writing produces
//! f32 tensors in name order and a config PEFT's `LoraConfig` loads, each
//! file written to a temporary name, fsynced and renamed.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};

use super::weights::{LoraPair, LoraWeights, Module};
use super::AdapterError;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Read a PEFT adapter directory.
pub fn read_dir(dir: &Path) -> Result<LoraWeights, AdapterError> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path)
        .map_err(|source| AdapterError::Io { path: cfg_path.clone(), source })?;
    let cfg: Value = serde_json::from_str(&text)
        .map_err(|e| AdapterError::Config { path: cfg_path.clone(), reason: e.to_string() })?;
    let (rank, alpha, dropout) =
        parse_config(&cfg).map_err(|reason| AdapterError::Config { path: cfg_path, reason })?;
    let w_path = dir.join(WEIGHTS_FILE);
    if !w_path.exists() && dir.join("adapter_model.bin").exists() {
        return Err(AdapterError::Unsupported {
            path: dir.join("adapter_model.bin"),
            what: "pickled adapter_model.bin; save the adapter with safe_serialization=True".into(),
        });
    }
    let bytes = std::fs::read(&w_path).map_err(|source| AdapterError::Io { path: w_path.clone(), source })?;
    let pairs = parse_tensors(&w_path, &bytes, rank)?;
    Ok(LoraWeights { rank, alpha, dropout, pairs })
}

fn parse_config(cfg: &Value) -> Result<(usize, f64, f64), String> {
    let s = |k: &str| cfg.get(k).and_then(Value::as_str);
    if s("peft_type") != Some("LORA") {
        return Err(format!("peft_type is {:?}, expected \"LORA\"", cfg.get("peft_type")));
    }
    if let Some(t) = s("task_type") {
        if t != "CAUSAL_LM" {
            return Err(format!("task_type is {t:?}, expected \"CAUSAL_LM\""));
        }
    }
    let rank =
        cfg.get("r").and_then(Value::as_u64).filter(|&r| r > 0).ok_or("r: expected a positive integer")?
            as usize;
    let mut alpha = cfg.get("lora_alpha").and_then(Value::as_f64).ok_or("lora_alpha: expected a number")?;
    let dropout = cfg.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
    if flag("fan_in_fan_out") {
        return Err("fan_in_fan_out = true (Conv1D-style weights) is not supported".into());
    }
    if flag("use_dora") {
        return Err("use_dora = true: DoRA adapters are not supported".into());
    }
    if flag("use_rslora") {
        // rsLoRA scales by alpha/sqrt(r); the same update under alpha'/r needs alpha' = alpha·sqrt(r).
        alpha *= (rank as f64).sqrt();
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if cfg.get(k).and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
            return Err(format!("{k} is set: per-layer ranks or scales are not supported"));
        }
    }
    // Newer PEFT variants whose update is not plain `alpha/r · B A x` on a projection.
    for k in ["lora_bias", "use_qalora", "use_bdlora"] {
        if flag(k) {
            return Err(format!("{k} = true: this LoRA variant is not supported"));
        }
    }
    for k in ["layer_replication", "trainable_token_indices", "target_parameters", "alora_invocation_tokens"]
    {
        if cfg.get(k).is_some_and(|v| !v.is_null()) {
            return Err(format!("{k} is set: this LoRA variant is not supported"));
        }
    }
    if cfg.get("modules_to_save").is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty())) {
        return Err("modules_to_save is set: fully trained extra modules are not supported".into());
    }
    if s("bias").is_some_and(|b| b != "none") {
        return Err(format!("bias = {:?}: trained biases are not supported", s("bias").unwrap_or_default()));
    }
    match cfg.get("target_modules") {
        Some(Value::Array(a)) => {
            for t in a {
                let name = t.as_str().unwrap_or_default();
                if Module::by_peft_leaf(name).is_none() {
                    return Err(format!(
                        "target_modules has {name:?}; supported: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj"
                    ));
                }
            }
        }
        // A regex string: the tensors themselves say which modules are adapted.
        Some(Value::String(_)) => {}
        _ => return Err("target_modules: expected a list of module names".into()),
    }
    Ok((rank, alpha, dropout))
}

/// Parse `base_model.model.model.layers.{i}.{module}.lora_{A|B}[.adapter].weight`.
fn parse_name(name: &str) -> Option<(usize, Module, char)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let m = crate::adapters::weights::MODULES
        .iter()
        .copied()
        .find(|m| rest.starts_with(&format!("{}.", m.peft)))?;
    let tail = &rest[m.peft.len() + 1..];
    let which = tail.strip_prefix("lora_")?.chars().next()?;
    let after = tail.get("lora_".len() + 1..)?;
    // PEFT omits the adapter name when saving; other tools keep ".default".
    let ok = after == ".weight"
        || after
            .strip_prefix('.')
            .and_then(|x| x.strip_suffix(".weight"))
            .is_some_and(|n| !n.is_empty() && !n.contains('.'));
    (ok && (which == 'A' || which == 'B')).then_some((layer, m, which))
}

fn to_f32(path: &Path, name: &str, v: &TensorView<'_>) -> Result<Vec<f32>, AdapterError> {
    let d = v.data();
    Ok(match v.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        other => {
            return Err(AdapterError::Tensor {
                path: path.to_path_buf(),
                name: name.to_string(),
                reason: format!("dtype {other:?}; expected F32, F16 or BF16"),
            })
        }
    })
}

fn parse_tensors(
    path: &Path,
    bytes: &[u8],
    rank: usize,
) -> Result<BTreeMap<(usize, Module), LoraPair>, AdapterError> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| AdapterError::Safetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    type Half = (Vec<f32>, [usize; 2]);
    let mut halves: BTreeMap<(usize, Module), (Option<Half>, Option<Half>)> = BTreeMap::new();
    for (name, view) in st.iter() {
        let Some((layer, m, which)) = parse_name(name) else {
            return Err(AdapterError::Tensor {
                path: path.to_path_buf(),
                name: name.to_string(),
                reason: "not a LoRA A/B weight of a decoder layer projection (q/k/v/o/gate/up/down)".into(),
            });
        };
        let shape: [usize; 2] = view.shape().try_into().map_err(|_| AdapterError::Tensor {
            path: path.to_path_buf(),
            name: name.to_string(),
            reason: format!("expected a matrix, found shape {:?}", view.shape()),
        })?;
        let data = to_f32(path, name, &view)?;
        let e = halves.entry((layer, m)).or_default();
        if which == 'A' {
            e.0 = Some((data, shape));
        } else {
            e.1 = Some((data, shape));
        }
    }
    let mut pairs = BTreeMap::new();
    for ((layer, m), (a, b)) in halves {
        let missing = |w: &str| AdapterError::Tensor {
            path: path.to_path_buf(),
            name: LoraWeights::peft_name(layer, m, w),
            reason: "missing (each LoRA pair needs both A and B)".into(),
        };
        let (a, a_shape) = a.ok_or_else(|| missing("A"))?;
        let (b, b_shape) = b.ok_or_else(|| missing("B"))?;
        if a_shape[0] != rank || b_shape[1] != rank {
            return Err(AdapterError::Shape {
                tensor: LoraWeights::peft_name(layer, m, if a_shape[0] != rank { "A" } else { "B" }),
                expected: if a_shape[0] != rank { vec![rank, a_shape[1]] } else { vec![b_shape[0], rank] },
                found: if a_shape[0] != rank { a_shape.to_vec() } else { b_shape.to_vec() },
            });
        }
        pairs.insert((layer, m), LoraPair { a, b, a_shape, b_shape });
    }
    if pairs.is_empty() {
        return Err(AdapterError::Tensor {
            path: path.to_path_buf(),
            name: String::new(),
            reason: "no LoRA tensors".into(),
        });
    }
    Ok(pairs)
}

/// The `adapter_config.json` PEFT reads for these weights.
pub fn config_json(w: &LoraWeights, base_model: &str) -> Value {
    let targets: Vec<&str> =
        w.modules().iter().map(|m| m.peft.rsplit('.').next().unwrap_or(m.peft)).collect();
    json!({
        "alpha_pattern": {},
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": w.alpha,
        "lora_dropout": w.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": w.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false
    })
}

/// The safetensors bytes of `w`: f32, tensors in name order.
pub fn weights_bytes(w: &LoraWeights) -> Result<Vec<u8>, AdapterError> {
    let mut owned: BTreeMap<String, (Vec<u8>, Vec<usize>)> = BTreeMap::new();
    for (&(layer, m), p) in &w.pairs {
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        owned.insert(LoraWeights::peft_name(layer, m, "A"), (le(&p.a), p.a_shape.to_vec()));
        owned.insert(LoraWeights::peft_name(layer, m, "B"), (le(&p.b), p.b_shape.to_vec()));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (name, (data, shape)) in &owned {
        let v = TensorView::new(Dtype::F32, shape.clone(), data)
            .map_err(|e| AdapterError::Safetensors { path: WEIGHTS_FILE.into(), reason: e.to_string() })?;
        views.push((name.clone(), v));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| AdapterError::Safetensors { path: WEIGHTS_FILE.into(), reason: e.to_string() })
}

/// Write `w` as a PEFT directory (created if needed; files replaced atomically).
pub fn write_dir(dir: &Path, w: &LoraWeights, base_model: &str) -> Result<(), AdapterError> {
    std::fs::create_dir_all(dir).map_err(|source| AdapterError::Io { path: dir.to_path_buf(), source })?;
    let cfg = serde_json::to_vec_pretty(&config_json(w, base_model)).unwrap_or_default();
    write_atomic(&dir.join(WEIGHTS_FILE), &weights_bytes(w)?)?;
    write_atomic(&dir.join(CONFIG_FILE), &cfg)?;
    Ok(())
}

/// Write to `path.tmp`, fsync, rename over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AdapterError> {
    let io = |source| AdapterError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights() -> LoraWeights {
        let mut pairs = BTreeMap::new();
        for (layer, short) in [(0, "q"), (1, "down")] {
            let m = Module::by_short(short).unwrap();
            let (r, out, inp) = (2, 3, 4);
            let a: Vec<f32> = (0..r * inp).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..out * r).map(|i| (i as f32 * 0.11).cos() * 1e-3).collect();
            pairs.insert((layer, m), LoraPair { a, b, a_shape: [r, inp], b_shape: [out, r] });
        }
        LoraWeights { rank: 2, alpha: 4.0, dropout: 0.05, pairs }
    }

    #[test]
    fn write_then_read_is_bit_exact() {
        let dir = tempfile::tempdir().unwrap();
        let w = weights();
        write_dir(dir.path(), &w, "tiny").unwrap();
        let back = read_dir(dir.path()).unwrap();
        assert_eq!(back, w);
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(cfg["target_modules"], json!(["q_proj", "down_proj"]));
        assert_eq!(cfg["r"], 2);
    }

    #[test]
    fn names_with_adapter_suffix_are_accepted_and_others_refused() {
        let (l, m, w) =
            parse_name("base_model.model.model.layers.3.mlp.up_proj.lora_B.default.weight").unwrap();
        assert_eq!((l, m.short, w), (3, "up", 'B'));
        assert!(parse_name("base_model.model.lm_head.lora_A.weight").is_none());
        assert!(
            parse_name("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector").is_none()
        );
        assert!(parse_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight").is_none());
    }

    #[test]
    fn rslora_is_folded_into_alpha_and_dora_is_refused() {
        let mut cfg = config_json(&weights(), "x");
        cfg["use_rslora"] = json!(true);
        let (r, alpha, _) = parse_config(&cfg).unwrap();
        assert!((alpha - 4.0 * (r as f64).sqrt()).abs() < 1e-12);
        cfg["use_dora"] = json!(true);
        assert!(parse_config(&cfg).unwrap_err().contains("DoRA"));
    }
}
