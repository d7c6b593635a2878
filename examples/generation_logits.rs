//! Greedy generation with every logit vector the decoder produced, for
//! comparing warsha's inference path with another implementation
//! (`scripts/check_adapter_interchange.py`).
//!
//! ```text
//! cargo run --release --example generation_logits -- MODEL PROMPT MAX_TOKENS OUT.safetensors \
//!     [--adapter DIR] [--follow ID,ID,...]
//! ```
//!
//! The prompt is encoded as `warsha model generate --raw` encodes it and
//! decoded greedily through the same loop (`generate_with`), so the tokens
//! are the CLI's. Row `i` of `logits` in OUT is what the model returned before
//! generated token `i` was chosen: the prefill's last position for `i = 0`,
//! then one single-token decode step each. With `--follow` the given tokens
//! are fed instead of the model's choices (same cache steps), so that two
//! models can be compared along one sequence. Prints one JSON line with the
//! prompt ids, the generated (or followed) ids and the text.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use warsha::adapters::load_adapter;
use warsha::model::generate::{generate_with, Sampling, Session, Step};
use warsha::model::tokenizer::Tok;
use warsha::model::{Base, LoadOptions};

/// A [`Step`] that keeps a copy of every logit vector it hands out.
struct Recording<'a> {
    inner: Session<'a>,
    rows: Vec<Vec<f32>>,
}

impl Step for Recording<'_> {
    fn step(&mut self, ids: &[u32]) -> warsha::model::generate::Result<Vec<f32>> {
        let logits = self.inner.step(ids)?;
        self.rows.push(logits.clone());
        Ok(logits)
    }

    fn pos(&self) -> usize {
        self.inner.pos()
    }

    fn context(&self) -> usize {
        self.inner.context()
    }
}

fn main() -> Result<()> {
    let usage =
        "usage: generation_logits MODEL PROMPT MAX_TOKENS OUT.safetensors [--adapter DIR] [--follow IDS]";
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut take_flag = |flag: &str| -> Result<Option<String>> {
        let Some(i) = args.iter().position(|a| a == flag) else { return Ok(None) };
        if i + 1 >= args.len() {
            bail!("{flag} needs a value; {usage}");
        }
        let v = args.remove(i + 1);
        args.remove(i);
        Ok(Some(v))
    };
    let adapter_dir = take_flag("--adapter")?;
    let follow: Option<Vec<u32>> = take_flag("--follow")?
        .map(|s| s.split(',').map(|t| t.trim().parse::<u32>()).collect::<Result<_, _>>())
        .transpose()
        .context("--follow: comma-separated token ids")?;
    let [model, prompt_text, max_tokens, out] = args.as_slice() else { bail!("{usage}") };
    let model = PathBuf::from(model);
    let max_tokens: usize = max_tokens.parse().context("MAX_TOKENS")?;
    let base = Base::load(&model, &LoadOptions::default())?;
    let tok = Tok::for_model(&model)?;
    let adapter = adapter_dir.map(|d| load_adapter(PathBuf::from(d).as_path(), &base)).transpose()?;
    let prompt = tok.encode(prompt_text, tok.add_bos())?;

    let mut rec = Recording { inner: Session::new(&base, adapter.as_ref()), rows: Vec::new() };
    let (tokens, text, stop) = match follow {
        None => {
            let g = generate_with(&mut rec, &tok, &prompt, &Sampling::greedy(), max_tokens, &mut |_| true)?;
            (g.tokens, g.text, Some(g.stop))
        }
        Some(ids) => {
            let ids: Vec<u32> = ids.into_iter().take(max_tokens).collect();
            rec.step(&prompt)?;
            // The last followed token needs no logits after it, as in generation.
            for &id in ids.iter().take(ids.len().saturating_sub(1)) {
                rec.step(&[id])?;
            }
            let text = tok.decode(&ids)?;
            (ids, text, None)
        }
    };
    let vocab = rec.rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rec.rows.concat();
    let logits = Tensor::from_vec(flat, (rec.rows.len(), vocab), &Device::Cpu)?;
    logits.save_safetensors("logits", out)?;
    let line = serde_json::json!({
        "prompt_ids": prompt,
        "tokens": tokens,
        "text": text,
        "stop": stop,
    });
    println!("{line}");
    Ok(())
}
