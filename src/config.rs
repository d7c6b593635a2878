//! Configuration: TOML whose defaults are `assets/warsha.toml` (compiled in),
//! overlaid by the operator's file, then by `--data-dir`.
//!
//! A user file may set any subset of keys. Unknown keys and out-of-range
//! values are errors that name the key, the value and what is allowed: a typo
//! in an appliance's config must never be silently ignored.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The built-in defaults, every key commented.
pub const DEFAULT_TOML: &str = include_str!("../assets/warsha.toml");

/// Where the service looks when no `--config` is given.
pub const SYSTEM_CONFIG: &str = "/etc/warsha/warsha.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("config {origin}: [{section}] {key} = {value}: {allowed}")]
    Invalid { origin: String, section: &'static str, key: &'static str, value: String, allowed: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub paths: Paths,
    pub ingest: Ingest,
    pub model: Model,
    pub gpu: Gpu,
    pub lora: Lora,
    pub train: Train,
    pub schedule: Schedule,
    pub eval: Eval,
    pub retention: Retention,
    pub service: Service,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingest {
    pub drop_folder: PathBuf,
    pub stability_secs: u64,
    pub poll_secs: u64,
    pub rescan_secs: u64,
    pub force_polling: bool,
    pub ignore: Vec<String>,
    pub processed_dir: String,
    pub rejected_dir: String,
    pub max_file_mib: u64,
    pub extract_timeout_secs: u64,
    pub chunk_tokens: usize,
    pub chunk_overlap: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub path: String,
    pub quant: String,
    pub device: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    pub vram_budget_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lora {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Train {
    pub seq_len: usize,
    pub micro_batch: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub max_steps: usize,
    pub checkpoint_every: usize,
    pub grad_clip: f64,
    pub weight_decay: f64,
    pub recompute: String,
    pub heldout_fraction: f64,
    pub seed: u64,
    pub host_budget_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub window_start: String,
    pub window_end: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eval {
    pub answer_loss_margin: f64,
    pub fact_loss_margin: f64,
    pub choice_accuracy_margin: f64,
    pub qa_f1_margin: f64,
    pub heldout_loss_tolerance: f64,
    pub score_tolerance: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub keep_adapters: usize,
    pub keep_checkpoints: usize,
    pub events_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub group: String,
    pub max_clients: usize,
    pub max_line_bytes: usize,
    pub read_timeout_secs: u64,
    pub write_timeout_secs: u64,
}

/// The LoRA projection names accepted in `[lora] targets`.
pub const LORA_TARGETS: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

impl Config {
    /// The compiled-in defaults.
    pub fn defaults() -> Self {
        // The defaults are part of the binary and covered by a test; failing
        // here is a build defect, not an input error.
        Self::from_layers(None).unwrap_or_else(|e| panic!("built-in defaults invalid: {e}"))
    }

    /// Load: defaults, then `file` (or the system file when it exists), then
    /// the data-dir override.
    pub fn load(file: Option<&Path>, data_dir: Option<&Path>) -> Result<Self, ConfigError> {
        let chosen = match file {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(SYSTEM_CONFIG)).filter(|p| p.is_file()),
        };
        let user = match &chosen {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                Some((path.display().to_string(), text))
            }
            None => None,
        };
        let mut cfg = Self::from_layers(user.as_ref().map(|(o, t)| (o.as_str(), t.as_str())))?;
        if let Some(dir) = data_dir {
            cfg.paths.data_dir = dir.to_path_buf();
        }
        Ok(cfg)
    }

    /// Parse a user TOML text over the defaults (`origin` names it in errors).
    pub fn from_layers(user: Option<(&str, &str)>) -> Result<Self, ConfigError> {
        let mut merged = parse_table("built-in defaults", DEFAULT_TOML)?;
        let origin = user.map(|(o, _)| o.to_string()).unwrap_or_else(|| "built-in defaults".into());
        if let Some((o, text)) = user {
            let overlay = parse_table(o, text)?;
            merge(&mut merged, overlay, &origin)?;
        }
        let cfg: Config = toml::Value::Table(merged).try_into().map_err(|e: toml::de::Error| {
            ConfigError::Parse { origin: origin.clone(), message: e.message().to_string() }
        })?;
        cfg.validate(&origin)?;
        Ok(cfg)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |section: &'static str, key: &'static str, value: String, allowed: &str| {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                section,
                key,
                value,
                allowed: allowed.to_string(),
            })
        };
        let i = &self.ingest;
        if i.stability_secs == 0 || i.stability_secs > 3600 {
            return bad("ingest", "stability_secs", i.stability_secs.to_string(), "1..=3600 seconds");
        }
        if i.poll_secs == 0 || i.poll_secs > 3600 {
            return bad("ingest", "poll_secs", i.poll_secs.to_string(), "1..=3600 seconds");
        }
        if i.rescan_secs == 0 {
            return bad("ingest", "rescan_secs", "0".into(), "a positive number of seconds");
        }
        for (key, name) in [("processed_dir", &i.processed_dir), ("rejected_dir", &i.rejected_dir)] {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                let key = if key == "processed_dir" { "processed_dir" } else { "rejected_dir" };
                return bad("ingest", key, format!("{name:?}"), "a plain folder name (no '/')");
            }
        }
        if i.max_file_mib == 0 {
            return bad("ingest", "max_file_mib", "0".into(), "a positive size in MiB");
        }
        if i.extract_timeout_secs == 0 {
            return bad("ingest", "extract_timeout_secs", "0".into(), "a positive number of seconds");
        }
        if i.chunk_tokens < 16 || i.chunk_tokens > 8192 {
            return bad("ingest", "chunk_tokens", i.chunk_tokens.to_string(), "16..=8192");
        }
        if i.chunk_overlap >= i.chunk_tokens {
            return bad("ingest", "chunk_overlap", i.chunk_overlap.to_string(), "less than chunk_tokens");
        }
        if !["nf4", "q4k"].contains(&self.model.quant.as_str()) {
            return bad("model", "quant", format!("{:?}", self.model.quant), "\"nf4\" or \"q4k\"");
        }
        if !["auto", "cpu", "cuda"].contains(&self.model.device.as_str()) {
            return bad(
                "model",
                "device",
                format!("{:?}", self.model.device),
                "\"auto\", \"cpu\" or \"cuda\"",
            );
        }
        if self.gpu.vram_budget_mib < 256 {
            return bad("gpu", "vram_budget_mib", self.gpu.vram_budget_mib.to_string(), "at least 256 MiB");
        }
        let l = &self.lora;
        if l.rank == 0 || l.rank > 512 {
            return bad("lora", "rank", l.rank.to_string(), "1..=512");
        }
        if !(l.alpha.is_finite() && l.alpha > 0.0) {
            return bad("lora", "alpha", l.alpha.to_string(), "a positive number");
        }
        if !(0.0..1.0).contains(&l.dropout) {
            return bad("lora", "dropout", l.dropout.to_string(), "0.0 <= dropout < 1.0");
        }
        if l.targets.is_empty() {
            return bad("lora", "targets", "[]".into(), "at least one of q, k, v, o, gate, up, down");
        }
        for t in &l.targets {
            if !LORA_TARGETS.contains(&t.as_str()) {
                return bad("lora", "targets", format!("{t:?}"), "any of q, k, v, o, gate, up, down");
            }
        }
        let t = &self.train;
        if t.seq_len < 16 || t.seq_len > 32768 {
            return bad("train", "seq_len", t.seq_len.to_string(), "16..=32768 tokens");
        }
        if t.micro_batch == 0 || t.micro_batch > 256 {
            return bad("train", "micro_batch", t.micro_batch.to_string(), "1..=256");
        }
        if t.grad_accum == 0 || t.grad_accum > 4096 {
            return bad("train", "grad_accum", t.grad_accum.to_string(), "1..=4096");
        }
        if !(t.lr.is_finite() && t.lr > 0.0 && t.lr < 1.0) {
            return bad("train", "lr", t.lr.to_string(), "0 < lr < 1");
        }
        if t.max_steps == 0 {
            return bad("train", "max_steps", "0".into(), "a positive number of optimizer steps");
        }
        if t.checkpoint_every == 0 {
            return bad("train", "checkpoint_every", "0".into(), "a positive number of optimizer steps");
        }
        if !(t.grad_clip.is_finite() && t.grad_clip >= 0.0) {
            return bad("train", "grad_clip", t.grad_clip.to_string(), "0 (off) or a positive norm");
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return bad("train", "weight_decay", t.weight_decay.to_string(), "a non-negative number");
        }
        if !["auto", "on", "off"].contains(&t.recompute.as_str()) {
            return bad("train", "recompute", format!("{:?}", t.recompute), "\"auto\", \"on\" or \"off\"");
        }
        if !(0.0..0.9).contains(&t.heldout_fraction) {
            return bad("train", "heldout_fraction", t.heldout_fraction.to_string(), "0.0 <= fraction < 0.9");
        }
        for (key, v) in
            [("window_start", &self.schedule.window_start), ("window_end", &self.schedule.window_end)]
        {
            if parse_hhmm(v).is_none() {
                let key = if key == "window_start" { "window_start" } else { "window_end" };
                return bad("schedule", key, format!("{v:?}"), "local time \"HH:MM\" (00:00..23:59)");
            }
        }
        let e = &self.eval;
        for (key, v) in [
            ("answer_loss_margin", e.answer_loss_margin),
            ("fact_loss_margin", e.fact_loss_margin),
            ("choice_accuracy_margin", e.choice_accuracy_margin),
            ("qa_f1_margin", e.qa_f1_margin),
            ("heldout_loss_tolerance", e.heldout_loss_tolerance),
            ("score_tolerance", e.score_tolerance),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return bad("eval", static_eval_key(key), v.to_string(), "0.0..=1.0");
            }
        }
        if self.retention.keep_adapters < 2 {
            return bad(
                "retention",
                "keep_adapters",
                self.retention.keep_adapters.to_string(),
                "at least 2 (active and previous)",
            );
        }
        if self.retention.keep_checkpoints == 0 {
            return bad("retention", "keep_checkpoints", "0".into(), "at least 1");
        }
        let sv = &self.service;
        if sv.group.trim().is_empty() {
            return bad("service", "group", "\"\"".into(), "a group name");
        }
        if sv.max_clients == 0 || sv.max_clients > 1024 {
            return bad("service", "max_clients", sv.max_clients.to_string(), "1..=1024");
        }
        if sv.max_line_bytes < 1024 || sv.max_line_bytes > 16 << 20 {
            return bad("service", "max_line_bytes", sv.max_line_bytes.to_string(), "1024..=16777216 bytes");
        }
        for (key, v) in
            [("read_timeout_secs", sv.read_timeout_secs), ("write_timeout_secs", sv.write_timeout_secs)]
        {
            if v == 0 || v > 3600 {
                let key = if key == "read_timeout_secs" { "read_timeout_secs" } else { "write_timeout_secs" };
                return bad("service", key, v.to_string(), "1..=3600 seconds");
            }
        }
        Ok(())
    }

    /// `[model] path` resolved against `<data_dir>/models`, or None when unset.
    pub fn model_path(&self) -> Option<PathBuf> {
        if self.model.path.trim().is_empty() {
            return None;
        }
        let p = PathBuf::from(&self.model.path);
        Some(if p.is_absolute() { p } else { self.paths.data_dir.join("models").join(p) })
    }

    /// Nightly window as minutes after local midnight (start, end).
    pub fn window_minutes(&self) -> (u32, u32) {
        // validate() guarantees both parse.
        let s = parse_hhmm(&self.schedule.window_start).unwrap_or(22 * 60);
        let e = parse_hhmm(&self.schedule.window_end).unwrap_or(5 * 60);
        (s, e)
    }
}

fn static_eval_key(key: &str) -> &'static str {
    match key {
        "answer_loss_margin" => "answer_loss_margin",
        "fact_loss_margin" => "fact_loss_margin",
        "choice_accuracy_margin" => "choice_accuracy_margin",
        "qa_f1_margin" => "qa_f1_margin",
        "heldout_loss_tolerance" => "heldout_loss_tolerance",
        _ => "score_tolerance",
    }
}

/// "HH:MM" → minutes after midnight.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn parse_table(origin: &str, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        message: e.to_string().trim().to_string(),
    })
}

/// Overlay `user` on `base` section by section, rejecting unknown sections
/// and keys by name (serde's own message lacks the section).
fn merge(base: &mut toml::Table, user: toml::Table, origin: &str) -> Result<(), ConfigError> {
    for (section, value) in user {
        let Some(base_section) = base.get_mut(&section).and_then(|v| v.as_table_mut()) else {
            let known: Vec<&str> = base.keys().map(String::as_str).collect();
            return Err(ConfigError::Parse {
                origin: origin.to_string(),
                message: format!("unknown section [{section}]; known sections: {}", known.join(", ")),
            });
        };
        let toml::Value::Table(entries) = value else {
            return Err(ConfigError::Parse {
                origin: origin.to_string(),
                message: format!("`{section}` must be a section ([{section}]), not a value"),
            });
        };
        for (key, v) in entries {
            let Some(old) = base_section.get(&key) else {
                let known: Vec<&str> = base_section.keys().map(String::as_str).collect();
                return Err(ConfigError::Parse {
                    origin: origin.to_string(),
                    message: format!("unknown key `{key}` in [{section}]; known keys: {}", known.join(", ")),
                });
            };
            if !same_kind(old, &v) {
                return Err(ConfigError::Parse {
                    origin: origin.to_string(),
                    message: format!(
                        "[{section}] {key} = {v}: expected {} (like the default {old})",
                        kind_name(old)
                    ),
                });
            }
            base_section.insert(key, v);
        }
    }
    Ok(())
}

fn same_kind(a: &toml::Value, b: &toml::Value) -> bool {
    use toml::Value::*;
    matches!(
        (a, b),
        (String(_), String(_))
            | (Integer(_), Integer(_))
            | (Float(_), Float(_))
            | (Float(_), Integer(_))
            | (Boolean(_), Boolean(_))
            | (Array(_), Array(_))
            | (Table(_), Table(_))
    )
}

fn kind_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "true or false",
        toml::Value::Array(_) => "a list",
        _ => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::defaults();
        assert_eq!(c.gpu.vram_budget_mib, 4096);
        assert_eq!(c.lora.targets.len(), 7);
        assert_eq!(c.window_minutes(), (22 * 60, 5 * 60));
    }

    #[test]
    fn subset_overrides_rest_default() {
        let c = Config::from_layers(Some(("t.toml", "[train]\nseq_len = 256\nlr = 1\n"))).unwrap_err();
        assert!(c.to_string().contains("lr"), "{c}");
        let c = Config::from_layers(Some(("t.toml", "[train]\nseq_len = 256\n"))).unwrap();
        assert_eq!(c.train.seq_len, 256);
        assert_eq!(c.train.max_steps, Config::defaults().train.max_steps);
    }

    #[test]
    fn integer_accepted_where_float_expected() {
        let c = Config::from_layers(Some(("t.toml", "[lora]\nalpha = 16\n"))).unwrap();
        assert_eq!(c.lora.alpha, 16.0);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_layers(Some(("t.toml", "[ingest]\nstabilty_secs = 5\n"))).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("stabilty_secs") && m.contains("[ingest]") && m.contains("t.toml"), "{m}");
        let e = Config::from_layers(Some(("t.toml", "[ingset]\nx = 1\n"))).unwrap_err();
        assert!(e.to_string().contains("[ingset]"), "{e}");
    }

    #[test]
    fn bad_values_name_key_value_and_allowed() {
        let cases = [
            ("[lora]\ntargets = [\"q\", \"qkv\"]\n", "targets", "qkv"),
            ("[schedule]\nwindow_start = \"25:00\"\n", "window_start", "25:00"),
            ("[model]\nquant = \"int3\"\n", "quant", "int3"),
            ("[gpu]\nvram_budget_mib = \"four\"\n", "vram_budget_mib", "four"),
            ("[train]\nrecompute = \"maybe\"\n", "recompute", "maybe"),
        ];
        for (text, key, value) in cases {
            let m = Config::from_layers(Some(("t.toml", text))).unwrap_err().to_string();
            assert!(m.contains(key) && m.contains(value), "{text} -> {m}");
        }
    }

    #[test]
    fn hhmm() {
        assert_eq!(parse_hhmm("00:00"), Some(0));
        assert_eq!(parse_hhmm("23:59"), Some(23 * 60 + 59));
        assert_eq!(parse_hhmm("24:00"), None);
        assert_eq!(parse_hhmm("7:00"), None);
    }
}
