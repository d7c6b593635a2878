//! LoRA weights as plain f32 matrices, independent of any tensor library:
//! what the PEFT and GGUF writers and readers exchange, and what is checked
//! against a base model's shapes before an adapter is accepted.
//!
//! Conventions (PEFT's): for a projection `W: (out, in)`, `A: (r, in)` and
//! `B: (out, r)` row-major, and the update is `(alpha / r) · B A x`.

use std::collections::BTreeMap;

use super::AdapterError;

/// A projection a LoRA pair can attach to, with its names in each format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Module {
    /// `[lora] targets` spelling.
    pub short: &'static str,
    /// PEFT / Hugging Face module path inside a decoder layer.
    pub peft: &'static str,
    /// llama.cpp tensor name inside `blk.N.`.
    pub gguf: &'static str,
}

/// Every supported projection, in the order tensors are written.
pub const MODULES: [Module; 7] = [
    Module { short: "q", peft: "self_attn.q_proj", gguf: "attn_q" },
    Module { short: "k", peft: "self_attn.k_proj", gguf: "attn_k" },
    Module { short: "v", peft: "self_attn.v_proj", gguf: "attn_v" },
    Module { short: "o", peft: "self_attn.o_proj", gguf: "attn_output" },
    Module { short: "gate", peft: "mlp.gate_proj", gguf: "ffn_gate" },
    Module { short: "up", peft: "mlp.up_proj", gguf: "ffn_up" },
    Module { short: "down", peft: "mlp.down_proj", gguf: "ffn_down" },
];

impl Module {
    pub fn by_short(s: &str) -> Option<Module> {
        MODULES.iter().copied().find(|m| m.short == s)
    }

    /// From a PEFT `target_modules` entry: "q_proj" or a full path ending in it.
    pub fn by_peft_leaf(s: &str) -> Option<Module> {
        let leaf = s.rsplit('.').next().unwrap_or(s);
        MODULES.iter().copied().find(|m| m.peft.rsplit('.').next() == Some(leaf))
    }
}

/// The shapes of a base model that an adapter must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseShapes {
    /// "llama" or "qwen2" (GGUF `general.architecture`).
    pub arch: String,
    pub num_layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl BaseShapes {
    /// (out, in) of a projection's weight.
    pub fn dims(&self, m: Module) -> (usize, usize) {
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        match m.short {
            "q" => (q, self.hidden),
            "k" | "v" => (kv, self.hidden),
            "o" => (self.hidden, q),
            "gate" | "up" => (self.intermediate, self.hidden),
            _ => (self.hidden, self.intermediate),
        }
    }
}

/// One A/B pair.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    /// (r, in), row-major.
    pub a: Vec<f32>,
    /// (out, r), row-major.
    pub b: Vec<f32>,
    pub a_shape: [usize; 2],
    pub b_shape: [usize; 2],
}

/// A whole adapter: its hyperparameters and every pair by (layer, module).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraWeights {
    pub rank: usize,
    /// Scale numerator: the update is `alpha / rank · B A x`.
    pub alpha: f64,
    pub dropout: f64,
    pub pairs: BTreeMap<(usize, Module), LoraPair>,
}

impl LoraWeights {
    /// The modules present, in [`MODULES`] order.
    pub fn modules(&self) -> Vec<Module> {
        MODULES.iter().copied().filter(|m| self.pairs.keys().any(|(_, pm)| pm == m)).collect()
    }

    pub fn num_params(&self) -> usize {
        self.pairs.values().map(|p| p.a.len() + p.b.len()).sum()
    }

    /// The PEFT tensor name of a pair's A (`"A"`) or B (`"B"`) matrix.
    pub fn peft_name(layer: usize, m: Module, which: &str) -> String {
        format!("base_model.model.model.layers.{layer}.{}.lora_{which}.weight", m.peft)
    }

    /// Check every pair against the base: layer in range, A = (r, in), B = (out, r).
    /// The error names the tensor with the expected and found shapes.
    pub fn check_against(&self, base: &BaseShapes) -> Result<(), AdapterError> {
        for (&(layer, m), p) in &self.pairs {
            if layer >= base.num_layers {
                return Err(AdapterError::Mismatch {
                    tensor: Self::peft_name(layer, m, "A"),
                    reason: format!("layer {layer} does not exist: the base has {} layers", base.num_layers),
                });
            }
            let (out, inp) = base.dims(m);
            for (which, want, found) in
                [("A", [self.rank, inp], p.a_shape), ("B", [out, self.rank], p.b_shape)]
            {
                if want != found {
                    return Err(AdapterError::Shape {
                        tensor: Self::peft_name(layer, m, which),
                        expected: want.to_vec(),
                        found: found.to_vec(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// llama.cpp stores llama-architecture Q and K weights with each head's rows
/// interleaved (the two rotary halves alternate), as its converter permutes
/// them for its RoPE kernel. A LoRA B matrix's rows are output rows, so the
/// same permutation applies to B of `q` (over `num_heads`) and `k` (over
/// `num_kv_heads`). Row `h·d + 2i + j` of the result is row `h·d + j·d/2 + i`
/// of the input (d = head_dim).
pub fn permute_rows_for_gguf(b: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0.0; b.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let dst = h * d + 2 * i + j;
                let src = h * d + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&b[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The inverse of [`permute_rows_for_gguf`].
pub fn unpermute_rows_from_gguf(b: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0.0; b.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * d + 2 * i + j;
                let dst = h * d + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&b[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes() -> BaseShapes {
        BaseShapes {
            arch: "llama".into(),
            num_layers: 2,
            hidden: 64,
            intermediate: 128,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
        }
    }

    fn pair(r: usize, out: usize, inp: usize) -> LoraPair {
        LoraPair { a: vec![0.0; r * inp], b: vec![0.0; out * r], a_shape: [r, inp], b_shape: [out, r] }
    }

    #[test]
    fn shape_mismatch_names_tensor_expected_and_found() {
        let mut w = LoraWeights { rank: 4, alpha: 8.0, dropout: 0.0, pairs: BTreeMap::new() };
        let k = Module::by_short("k").unwrap();
        w.pairs.insert((1, k), pair(4, 64, 64)); // k_proj out is 2·16 = 32, not 64
        let e = w.check_against(&shapes()).unwrap_err().to_string();
        assert!(e.contains("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"), "{e}");
        assert!(e.contains("[32, 4]") && e.contains("[64, 4]"), "{e}");
        w.pairs.insert((1, k), pair(4, 32, 64));
        w.check_against(&shapes()).unwrap();
        w.pairs.insert((2, k), pair(4, 32, 64));
        assert!(w.check_against(&shapes()).unwrap_err().to_string().contains("layer 2"));
    }

    #[test]
    fn gguf_row_permutation_matches_the_reshape_swap_definition() {
        // heads=1, d=4: rows [r0 r1 r2 r3] → reshape (1, 2, 2) → swap → rows [r0 r2 r1 r3].
        let b: Vec<f32> = (0..8).map(|x| x as f32).collect(); // 4 rows × 2 cols
        let p = permute_rows_for_gguf(&b, 4, 2, 1);
        assert_eq!(p, vec![0., 1., 4., 5., 2., 3., 6., 7.]);
        let b: Vec<f32> = (0..96).map(|x| x as f32).collect(); // 32 rows × 3 cols, 2 heads of 16
        assert_eq!(unpermute_rows_from_gguf(&permute_rows_for_gguf(&b, 32, 3, 2), 32, 3, 2), b);
    }

    #[test]
    fn module_names() {
        assert_eq!(Module::by_peft_leaf("q_proj").unwrap().short, "q");
        assert_eq!(Module::by_peft_leaf("model.layers.0.mlp.down_proj").unwrap().gguf, "ffn_down");
        assert!(Module::by_peft_leaf("lm_head").is_none());
    }
}
