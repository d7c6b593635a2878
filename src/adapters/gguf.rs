//! llama.cpp's LoRA adapter file (`llama-cli --lora FILE`): a GGUF with
//! `general.type = "adapter"`, `adapter.type = "lora"`,
//! `general.architecture` equal to the base's, `adapter.lora.alpha` (f32),
//! and one tensor pair per adapted projection named
//! `blk.{i}.{attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down}.weight.lora_{a,b}`.
//!
//! Shapes in ggml order (fastest dimension first): `lora_a` is `[in, r]`
//! and `lora_b` is `[r, out]` — the same bytes as PEFT's row-major `A (r, in)`
//! and `B (out, r)`. llama.cpp checks `a.ne[0] == W.ne[0]`,
//! `b.ne[1] == W.ne[1]` and `a.ne[1] == b.ne[0]`, and scales by
//! `alpha / a.ne[1]`. For the llama architecture the B rows of `q` and `k`
//! are permuted as llama.cpp permutes those base weights
//! ([`super::weights::permute_rows_for_gguf`]); qwen2 needs no permutation.

use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::weights::{
    permute_rows_for_gguf, unpermute_rows_from_gguf, BaseShapes, LoraPair, LoraWeights, MODULES,
};
use super::AdapterError;

fn gguf_err(path: &Path, e: impl std::fmt::Display) -> AdapterError {
    AdapterError::Gguf { path: path.to_path_buf(), reason: e.to_string() }
}

/// The heads over which a B matrix's rows are permuted, if any.
fn permute_heads(base: &BaseShapes, short: &str) -> Option<usize> {
    match (base.arch.as_str(), short) {
        ("llama", "q") => Some(base.num_heads),
        ("llama", "k") => Some(base.num_kv_heads),
        _ => None,
    }
}

/// The GGUF bytes of `w` for a base of shape `base`.
pub fn to_bytes(w: &LoraWeights, base: &BaseShapes, name: &str) -> Result<Vec<u8>, AdapterError> {
    let here = Path::new("adapter.gguf");
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(2 * w.pairs.len());
    for (&(layer, m), p) in &w.pairs {
        let b = match permute_heads(base, m.short) {
            Some(h) => permute_rows_for_gguf(&p.b, p.b_shape[0], p.b_shape[1], h),
            None => p.b.clone(),
        };
        let a = Tensor::from_slice(&p.a, (p.a_shape[0], p.a_shape[1]), &Device::Cpu)
            .map_err(|e| gguf_err(here, e))?;
        let b =
            Tensor::from_vec(b, (p.b_shape[0], p.b_shape[1]), &Device::Cpu).map_err(|e| gguf_err(here, e))?;
        let stem = format!("blk.{layer}.{}.weight", m.gguf);
        for (suffix, t) in [("lora_a", a), ("lora_b", b)] {
            let q = QTensor::quantize(&t, GgmlDType::F32).map_err(|e| gguf_err(here, e))?;
            tensors.push((format!("{stem}.{suffix}"), q));
        }
    }
    let meta = [
        ("general.architecture", gguf_file::Value::String(base.arch.clone())),
        ("general.type", gguf_file::Value::String("adapter".into())),
        ("general.name", gguf_file::Value::String(name.to_string())),
        ("adapter.type", gguf_file::Value::String("lora".into())),
        ("adapter.lora.alpha", gguf_file::Value::F32(w.alpha as f32)),
    ];
    let meta_refs: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &meta_refs, &tensor_refs).map_err(|e| gguf_err(here, e))?;
    Ok(out.into_inner())
}

/// Write `w` as a llama.cpp LoRA GGUF file (atomically).
pub fn write_file(path: &Path, w: &LoraWeights, base: &BaseShapes, name: &str) -> Result<(), AdapterError> {
    let bytes = to_bytes(w, base, name)?;
    super::peft::write_atomic(path, &bytes)
}

/// Read a llama.cpp LoRA GGUF back into PEFT-convention weights (undoing the
/// llama q/k permutation). `rank` comes from the tensors; `alpha` from the
/// metadata. Returns the architecture with the weights.
pub fn read_file(path: &Path, base: &BaseShapes) -> Result<(String, LoraWeights), AdapterError> {
    let bytes =
        std::fs::read(path).map_err(|source| AdapterError::Io { path: path.to_path_buf(), source })?;
    let mut r = Cursor::new(bytes);
    let content = gguf_file::Content::read(&mut r).map_err(|e| gguf_err(path, e))?;
    let get_str = |k: &str| content.metadata.get(k).and_then(|v| v.to_string().ok()).cloned();
    if get_str("general.type").as_deref() != Some("adapter")
        || get_str("adapter.type").as_deref() != Some("lora")
    {
        return Err(gguf_err(path, "not a LoRA adapter (general.type/adapter.type)"));
    }
    let arch =
        get_str("general.architecture").ok_or_else(|| gguf_err(path, "missing general.architecture"))?;
    let alpha = content
        .metadata
        .get("adapter.lora.alpha")
        .and_then(|v| v.to_f32().ok())
        .ok_or_else(|| gguf_err(path, "missing adapter.lora.alpha (f32)"))? as f64;
    let mut pairs = std::collections::BTreeMap::new();
    let mut rank = 0;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names.iter().filter(|n| n.ends_with(".lora_a")) {
        let stem = name.trim_end_matches(".lora_a");
        let parsed = stem.strip_prefix("blk.").and_then(|s| s.split_once('.')).and_then(|(l, rest)| {
            let m = MODULES.iter().copied().find(|m| rest == format!("{}.weight", m.gguf))?;
            Some((l.parse::<usize>().ok()?, m))
        });
        let (layer, m) = parsed.ok_or_else(|| gguf_err(path, format!("unexpected tensor {name}")))?;
        let (a, a_shape) = read_matrix(&content, &mut r, path, name)?;
        let (b, b_shape) = read_matrix(&content, &mut r, path, &format!("{stem}.lora_b"))?;
        let b = match permute_heads(base, m.short).filter(|_| arch == base.arch) {
            Some(h) => unpermute_rows_from_gguf(&b, b_shape[0], b_shape[1], h),
            None => b,
        };
        rank = a_shape[0];
        pairs.insert((layer, m), LoraPair { a, b, a_shape, b_shape });
    }
    if pairs.is_empty() {
        return Err(gguf_err(path, "no lora_a/lora_b tensors"));
    }
    Ok((arch, LoraWeights { rank, alpha, dropout: 0.0, pairs }))
}

fn read_matrix(
    content: &gguf_file::Content,
    r: &mut Cursor<Vec<u8>>,
    path: &Path,
    name: &str,
) -> Result<(Vec<f32>, [usize; 2]), AdapterError> {
    let t = content.tensor(r, name, &Device::Cpu).map_err(|e| gguf_err(path, format!("{name}: {e}")))?;
    let t = t.dequantize(&Device::Cpu).map_err(|e| gguf_err(path, e))?;
    let (rows, cols) = t.dims2().map_err(|e| gguf_err(path, format!("{name}: {e}")))?;
    let v = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| gguf_err(path, e))?;
    Ok((v, [rows, cols]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::weights::Module;

    fn base(arch: &str) -> BaseShapes {
        BaseShapes {
            arch: arch.into(),
            num_layers: 2,
            hidden: 64,
            intermediate: 96,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
        }
    }

    fn weights(base: &BaseShapes) -> LoraWeights {
        let mut pairs = std::collections::BTreeMap::new();
        let r = 4;
        for layer in 0..2 {
            for m in MODULES {
                let (out, inp) = base.dims(m);
                let a = (0..r * inp).map(|i| ((i + layer) as f32 * 0.013).sin()).collect();
                let b = (0..out * r).map(|i| ((i + 7 * layer) as f32 * 0.029).cos()).collect();
                pairs.insert((layer, m), LoraPair { a, b, a_shape: [r, inp], b_shape: [out, r] });
            }
        }
        LoraWeights { rank: r, alpha: 8.0, dropout: 0.0, pairs }
    }

    #[test]
    fn gguf_round_trip_is_bit_exact_for_both_archs() {
        let dir = tempfile::tempdir().unwrap();
        for arch in ["llama", "qwen2"] {
            let b = base(arch);
            let w = weights(&b);
            let p = dir.path().join(format!("{arch}.gguf"));
            write_file(&p, &w, &b, "t").unwrap();
            let (got_arch, back) = read_file(&p, &b).unwrap();
            assert_eq!(got_arch, arch);
            assert_eq!(back, w, "{arch}");
        }
    }

    #[test]
    fn llama_q_and_k_are_stored_permuted_and_the_rest_as_is() {
        let b = base("llama");
        let w = weights(&b);
        let bytes = to_bytes(&w, &b, "t").unwrap();
        let mut r = Cursor::new(bytes);
        let c = gguf_file::Content::read(&mut r).unwrap();
        let info = &c.tensor_infos["blk.1.attn_k.weight.lora_b"];
        // candle reports dims slowest-first: (out, r) = ggml ne [r, out].
        assert_eq!(info.shape.dims(), &[32, 4]);
        assert_eq!(c.tensor_infos["blk.0.ffn_down.weight.lora_a"].shape.dims(), &[4, 96]);
        let stored = |n: &str| {
            c.tensor(&mut r.clone(), n, &Device::Cpu)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let k = &w.pairs[&(1, Module::by_short("k").unwrap())];
        assert_eq!(stored("blk.1.attn_k.weight.lora_b"), permute_rows_for_gguf(&k.b, 32, 4, 2));
        let v = &w.pairs[&(1, Module::by_short("v").unwrap())];
        assert_eq!(stored("blk.1.attn_v.weight.lora_b"), v.b);
        assert_eq!(c.metadata["adapter.lora.alpha"].to_f32().unwrap(), 8.0);
        assert_eq!(c.metadata["general.type"].to_string().unwrap(), "adapter");
    }
}
