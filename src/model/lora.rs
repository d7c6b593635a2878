//! LoRA adapters: `y = W x + (alpha/r) · B A x` around any frozen projection,
//! with trainable f32 `A` (r×in, Kaiming-uniform) and `B` (out×r, zero), seeded
//! inverted dropout on the adapter input during training, and PEFT tensor
//! names so adapters move to and from Python PEFT unchanged.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::model::config::ModelConfig;
use crate::model::error::{ModelError, Result};
use crate::model::lora_op::{lora_branch, Dropout};

/// A projection inside a decoder layer that an adapter can wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] =
        [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    pub fn as_str(&self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        }
    }

    /// The module path PEFT uses inside `model.layers.N`.
    pub fn peft_module(&self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    pub(crate) fn index(&self) -> usize {
        *self as usize
    }
}

impl FromStr for Target {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        Target::ALL
            .iter()
            .find(|t| t.as_str() == s || t.peft_module().ends_with(&format!(".{s}")))
            .copied()
            .ok_or_else(|| ModelError::Target(s.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<Target>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { rank: 16, alpha: 32.0, dropout: 0.05, targets: Target::ALL.to_vec() }
    }
}

/// One adapted projection: `A` (r, in) and `B` (out, r).
pub struct LoraPair {
    pub a: Var,
    pub b: Var,
}

/// The trainable adapter for a whole model.
pub struct Adapter {
    lora: LoraConfig,
    /// `layers[i][target.index()]`.
    layers: Vec<[Option<LoraPair>; 7]>,
    seed: u64,
    /// Counts training forwards so each gets fresh, reproducible dropout masks.
    step: AtomicU64,
}

fn peft_name(layer: usize, t: Target, ab: &str) -> String {
    format!("base_model.model.model.layers.{layer}.{}.lora_{ab}.weight", t.peft_module())
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Adapter {
    pub fn new(cfg: &ModelConfig, lora: &LoraConfig, seed: u64, device: &Device) -> Result<Self> {
        if lora.rank == 0 {
            return Err(ModelError::Input("LoRA rank must be positive".into()));
        }
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for li in 0..cfg.num_layers {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            for &t in &lora.targets {
                let (out, inp) = cfg.proj_shape(t);
                let mut rng =
                    rand::rngs::StdRng::seed_from_u64(mix(seed ^ mix(li as u64 * 8 + t.index() as u64)));
                // Kaiming-uniform with a = sqrt(5), as torch's nn.Linear and PEFT: bound = 1/sqrt(fan_in).
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..lora.rank * inp).map(|_| rng.random_range(-bound..bound)).collect();
                let a = Tensor::from_vec(a, (lora.rank, inp), device)?;
                let b = Tensor::zeros((out, lora.rank), DType::F32, device)?;
                slots[t.index()] = Some(LoraPair { a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)? });
            }
            layers.push(slots);
        }
        Ok(Self { lora: lora.clone(), layers, seed, step: AtomicU64::new(0) })
    }

    pub fn lora(&self) -> &LoraConfig {
        &self.lora
    }

    pub fn scale(&self) -> f64 {
        self.lora.alpha / self.lora.rank as f64
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn pair(&self, layer: usize, t: Target) -> Option<&LoraPair> {
        self.layers.get(layer).and_then(|l| l[t.index()].as_ref())
    }

    /// Every trainable tensor, sorted by PEFT name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut v = Vec::new();
        for (li, slots) in self.layers.iter().enumerate() {
            for t in Target::ALL {
                if let Some(p) = &slots[t.index()] {
                    v.push((peft_name(li, t, "A"), p.a.clone()));
                    v.push((peft_name(li, t, "B"), p.b.clone()));
                }
            }
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The vars of one layer (for per-block backward).
    pub(crate) fn layer_vars(&self, layer: usize) -> Vec<Var> {
        self.layers
            .get(layer)
            .map(|s| s.iter().flatten().flat_map(|p| [p.a.clone(), p.b.clone()]).collect())
            .unwrap_or_default()
    }

    pub fn num_params(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The dropout of projection `t` in `layer` at training pass `step`; None when off.
    pub(crate) fn dropout(&self, layer: usize, t: Target, step: u64) -> Option<Dropout> {
        (self.lora.dropout > 0.0).then(|| Dropout {
            seed: mix(self.seed ^ mix(step.wrapping_mul(0x1_0000) + (layer * 8 + t.index()) as u64)),
            keep: 1.0 - self.lora.dropout,
        })
    }

    /// Rewinds the dropout stream (tests that run two paths over the same pass).
    #[cfg(test)]
    pub(crate) fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }

    /// Advances the dropout stream; one call per training forward/backward pass.
    pub(crate) fn next_step(&self) -> u64 {
        self.step.fetch_add(1, Ordering::Relaxed)
    }

    /// The adapter's contribution `(alpha/r) · B A drop(x)` for `x (…, in)` in the
    /// compute dtype; returned in x's dtype. `dropout_step` is Some during training.
    pub fn delta(
        &self,
        layer: usize,
        t: Target,
        x: &Tensor,
        dropout_step: Option<u64>,
    ) -> Result<Option<Tensor>> {
        let Some(p) = self.pair(layer, t) else { return Ok(None) };
        let dims = x.dims().to_vec();
        let inp = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / inp.max(1);
        let dropout = dropout_step.and_then(|step| self.dropout(layer, t, step));
        let y =
            lora_branch(&x.reshape((rows, inp))?, p.a.as_tensor(), p.b.as_tensor(), self.scale(), dropout)?;
        let mut out_dims = dims;
        if let Some(l) = out_dims.last_mut() {
            *l = p.b.dims()[0];
        }
        Ok(Some(y.reshape(out_dims)?))
    }

    /// Writes the adapter with PEFT tensor names (f32) atomically: temp file, fsync, rename.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| ModelError::Io { path: path.to_path_buf(), source: e };
        let map: HashMap<String, Tensor> =
            self.vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        candle_core::safetensors::save(&map, tmp.path())?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Loads a PEFT adapter file, checking every expected tensor and its shape.
    pub fn load_safetensors(
        path: &Path,
        cfg: &ModelConfig,
        lora: &LoraConfig,
        device: &Device,
    ) -> Result<Self> {
        let mut map = candle_core::safetensors::load(path, device)?;
        let mut ad = Self::new(cfg, lora, 0, device)?;
        for (li, slots) in ad.layers.iter_mut().enumerate() {
            for t in Target::ALL {
                let Some(p) = slots[t.index()].as_mut() else { continue };
                for (ab, var) in [("A", &mut p.a), ("B", &mut p.b)] {
                    let name = peft_name(li, t, ab);
                    let tensor = map.remove(&name).ok_or_else(|| ModelError::MissingTensor {
                        path: path.to_path_buf(),
                        name: name.clone(),
                    })?;
                    if tensor.dims() != var.dims() {
                        return Err(ModelError::Shape {
                            path: path.to_path_buf(),
                            name,
                            got: tensor.dims().to_vec(),
                            expected: var.dims().to_vec(),
                        });
                    }
                    *var = Var::from_tensor(&tensor.to_dtype(DType::F32)?)?;
                }
            }
        }
        if let Some(extra) = map.keys().min() {
            return Err(ModelError::BadValue {
                path: path.to_path_buf(),
                key: extra.clone(),
                reason: "tensor not expected for the configured targets/layers".into(),
            });
        }
        Ok(ad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_name_like_peft() {
        assert_eq!("gate".parse::<Target>().unwrap(), Target::Gate);
        assert_eq!("q_proj".parse::<Target>().unwrap(), Target::Q);
        assert!("qkv".parse::<Target>().is_err());
        assert_eq!(
            peft_name(3, Target::Down, "B"),
            "base_model.model.model.layers.3.mlp.down_proj.lora_B.weight"
        );
    }

    #[test]
    fn adapter_round_trips_through_safetensors_and_rejects_wrong_shapes() {
        let cfg = ModelConfig::from_shape_name("tiny-llama").unwrap();
        let lora = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec![Target::Q, Target::Down] };
        let ad = Adapter::new(&cfg, &lora, 9, &Device::Cpu).unwrap();
        assert_eq!(ad.vars().len(), 2 * 2 * cfg.num_layers);
        // A is Kaiming-uniform within ±1/sqrt(in); B starts at zero.
        let a = &ad.pair(0, Target::Q).unwrap().a;
        let bound = 1.0 / (cfg.hidden_size as f32).sqrt();
        let amax = a.as_tensor().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(amax <= bound && amax > 0.8 * bound);
        ad.pair(0, Target::Q)
            .unwrap()
            .b
            .set(&Tensor::ones((cfg.q_dim(), 4), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("adapter_model.safetensors");
        ad.save_safetensors(&p).unwrap();
        let back = Adapter::load_safetensors(&p, &cfg, &lora, &Device::Cpu).unwrap();
        for ((n1, v1), (n2, v2)) in ad.vars().iter().zip(back.vars().iter()) {
            assert_eq!(n1, n2);
            let d = (v1.as_tensor() - v2.as_tensor()).unwrap().abs().unwrap().sum_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{n1}");
        }
        let other = LoraConfig { rank: 8, ..lora.clone() };
        match Adapter::load_safetensors(&p, &cfg, &other, &Device::Cpu) {
            Err(ModelError::Shape { name, .. }) => assert!(name.contains("lora_A"), "{name}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("rank mismatch accepted"),
        }
        let more = LoraConfig { targets: vec![Target::Q, Target::Down, Target::V], ..lora };
        assert!(matches!(
            Adapter::load_safetensors(&p, &cfg, &more, &Device::Cpu),
            Err(ModelError::MissingTensor { .. })
        ));
    }
}
