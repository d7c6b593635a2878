//! Bringing a registry adapter to life on a loaded base model: its shapes
//! from the base's configuration, and its PEFT directory loaded as the
//! model's [`Adapter`] (applied beside the frozen base, never merged).

use std::path::Path;

use super::{peft, AdapterError, BaseShapes};
use crate::model::{Adapter, Base, LoraConfig, ModelConfig, Target};

impl From<&ModelConfig> for BaseShapes {
    fn from(c: &ModelConfig) -> Self {
        BaseShapes {
            arch: c.arch.as_str().to_string(),
            num_layers: c.num_layers,
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        }
    }
}

/// Load an adapter directory (PEFT layout) for `base`, checking every shape first.
pub fn load_adapter(dir: &Path, base: &Base) -> Result<Adapter, AdapterError> {
    let w = peft::read_dir(dir)?;
    w.check_against(&BaseShapes::from(&base.config))?;
    let load = |source| AdapterError::Load { path: dir.to_path_buf(), source: Box::new(source) };
    let targets =
        w.modules().iter().map(|m| m.short.parse::<Target>()).collect::<Result<Vec<_>, _>>().map_err(load)?;
    let lora = LoraConfig { rank: w.rank, alpha: w.alpha, dropout: w.dropout, targets };
    Adapter::load_safetensors(&dir.join(peft::WEIGHTS_FILE), &base.config, &lora, base.device()).map_err(load)
}

/// The sha256 the base model is recorded under (its first file).
pub fn base_sha256(base: &Base) -> Option<String> {
    base.files().first().map(|(_, sha)| sha.clone())
}
