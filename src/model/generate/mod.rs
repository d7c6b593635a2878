//! Text generation: one prefill of the prompt through the KV cache, then one
//! token at a time until a stop token, the token budget, the context limit,
//! or the caller says stop. Pieces of text are handed to the caller as soon as
//! they are whole UTF-8 characters. An adapter, when given, is applied beside
//! the frozen base on every step; it is never merged into the base weights.

use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::Serialize;

pub mod sampling;

use super::{Adapter, Base, KvCache, ModelError};
use crate::model::tokenizer::{Tok, TokError};
use sampling::Sampler;
pub use sampling::Sampling;

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt} tokens; the model's context holds {context}")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("model forward pass failed at position {pos}: {source}")]
    Forward { pos: usize, source: Box<dyn std::error::Error + Send + Sync> },
    #[error(transparent)]
    Tok(#[from] TokError),
}

pub type Result<T, E = GenError> = std::result::Result<T, E>;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-sequence or end-of-turn token.
    Eos,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The KV cache reached the model's context length.
    ContextFull,
    /// The callback returned false.
    Cancelled,
}

/// The outcome of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub text: String,
    /// Generated ids, the stop token excluded.
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    /// Single-token forward passes run after the prefill.
    pub decode_steps: usize,
    pub stop: StopReason,
}

impl Generation {
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_secs)
    }

    pub fn decode_tokens_per_sec(&self) -> f64 {
        rate(self.decode_steps, self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// What generation needs from a model: feed ids at the cache's position and
/// get the last position's logits back.
pub trait Step {
    fn step(&mut self, ids: &[u32]) -> Result<Vec<f32>>;
    /// Positions already in the cache.
    fn pos(&self) -> usize;
    /// Most positions the model can attend over.
    fn context(&self) -> usize;
}

/// Generate from `prompt` through any [`Step`]: the loop shared by every model.
pub fn generate_with(
    model: &mut dyn Step,
    tok: &Tok,
    prompt: &[u32],
    s: &Sampling,
    max_tokens: usize,
    on_token: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(GenError::EmptyPrompt);
    }
    let context = model.context();
    if model.pos() + prompt.len() > context {
        return Err(GenError::PromptTooLong { prompt: prompt.len(), context });
    }
    let stops = tok.eos_ids();
    let mut sampler = Sampler::new(s);
    let mut stream = tok.stream();
    let mut history = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut text = String::new();

    let t0 = Instant::now();
    let mut logits = if max_tokens > 0 { model.step(prompt)? } else { Vec::new() };
    let prefill_secs = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut decode_steps = 0;
    let mut stop = StopReason::MaxTokens;
    let vocab = tok.vocab_size();
    while tokens.len() < max_tokens {
        // Embedding tables are often padded past the tokenizer's last id; never pick padding.
        logits.truncate(vocab);
        let id = sampler.sample(&mut logits, &history);
        if stops.contains(&id) {
            stop = StopReason::Eos;
            break;
        }
        tokens.push(id);
        history.push(id);
        if let Some(piece) = stream.push(id)? {
            text.push_str(&piece);
            if !on_token(&piece) {
                stop = StopReason::Cancelled;
                break;
            }
        }
        if tokens.len() == max_tokens {
            break;
        }
        if model.pos() >= context {
            stop = StopReason::ContextFull;
            break;
        }
        logits = model.step(&[id])?;
        decode_steps += 1;
    }
    if let Some(rest) = stream.finish() {
        text.push_str(&rest);
        if stop != StopReason::Cancelled {
            on_token(&rest);
        }
    }
    Ok(Generation {
        text,
        tokens,
        prompt_tokens: prompt.len(),
        prefill_secs,
        decode_secs: t1.elapsed().as_secs_f64(),
        decode_steps,
        stop,
    })
}

/// A base model (and optional adapter) with its own KV cache, fed step by step.
pub struct Session<'a> {
    base: &'a Base,
    adapter: Option<&'a Adapter>,
    cache: KvCache,
}

impl<'a> Session<'a> {
    pub fn new(base: &'a Base, adapter: Option<&'a Adapter>) -> Self {
        Self { base, adapter, cache: base.new_cache() }
    }

    pub fn reset(&mut self) {
        self.cache.reset();
    }
}

impl Step for Session<'_> {
    fn step(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let pos = self.cache.pos();
        let run = |cache: &mut KvCache| -> Result<Vec<f32>, ModelError> {
            let input = Tensor::new(ids, self.base.device())?.unsqueeze(0)?;
            let logits = self.base.forward(&input, cache, self.adapter)?;
            Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
        };
        run(&mut self.cache).map_err(|e| GenError::Forward { pos, source: Box::new(e) })
    }

    fn pos(&self) -> usize {
        self.cache.pos()
    }

    fn context(&self) -> usize {
        self.base.config.max_position
    }
}

/// Generate from `prompt` with a fresh cache; `on_token` receives each piece
/// of text as it completes and returns false to stop early.
pub fn generate(
    base: &Base,
    adapter: Option<&Adapter>,
    tok: &Tok,
    prompt: &[u32],
    s: &Sampling,
    max_tokens: usize,
    on_token: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation> {
    let mut session = Session::new(base, adapter);
    generate_with(&mut session, tok, prompt, s, max_tokens, on_token)
}
