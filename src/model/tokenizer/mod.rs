//! The tokenizer of a base model: loaded from a `tokenizer.json` beside (or
//! inside) the model, or rebuilt from a GGUF file's own vocabulary, merges and
//! token types, so that a single `.gguf` copied from a USB stick is enough.
//!
//! Special tokens (GGUF token type 3 "control", 4 "user defined") become
//! added tokens, so `<|im_start|>` in a chat prompt encodes as one id. Decoding
//! skips control tokens. [`Utf8Stream`] turns ids into text as they are
//! generated without ever emitting half of a multi-byte character.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

pub mod chat;

use crate::model::info::{GgufMeta, InfoError};
use chat::{ChatTemplate, ModelTemplate};

#[derive(Debug, thiserror::Error)]
pub enum TokError {
    #[error(transparent)]
    Meta(#[from] InfoError),
    #[error("{path}: no tokenizer: neither a tokenizer.json beside it nor a vocabulary in its metadata")]
    NotFound { path: PathBuf },
    #[error("{path}: tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)")]
    Unsupported { path: PathBuf, model: String },
    #[error("{path}: {reason}")]
    Build { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizers(String),
    #[error("the user message is empty")]
    EmptyMessage,
    #[error("chat template `{template}` needs the token {token:?}, which this vocabulary lacks")]
    MissingToken { template: &'static str, token: String },
    #[error("the model's chat template: {reason}")]
    Template { reason: String },
}

pub type Result<T, E = TokError> = std::result::Result<T, E>;

fn tk(e: tokenizers::Error) -> TokError {
    TokError::Tokenizers(e.to_string())
}

/// Where a model's tokenizer comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokSource {
    /// Built from the GGUF file's metadata.
    Embedded,
    /// A `tokenizer.json` file.
    Json(PathBuf),
    None,
}

impl TokSource {
    pub fn label(&self) -> &'static str {
        match self {
            TokSource::Embedded => "embedded",
            TokSource::Json(_) => "tokenizer.json",
            TokSource::None => "none",
        }
    }
}

/// GPT-2 style pre-tokenizer splits, as the families were trained with.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// End-of-turn and end-of-text tokens of the families we know; generation stops on any present.
const STOP_TOKENS: &[&str] =
    &["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "<end_of_turn>", "</s>"];

/// A model's tokenizer with its special ids and chat template.
pub struct Tok {
    inner: Tokenizer,
    source: TokSource,
    bos: Option<u32>,
    stop: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    template: ChatTemplate,
    /// The model's own template, when it ships one that renders; prompts are
    /// laid out by it, and by `template` otherwise.
    jinja: Option<ModelTemplate>,
    /// Raw bytes of every id for byte-level vocabularies (None otherwise).
    pieces: Option<Vec<Vec<u8>>>,
    special: HashSet<u32>,
}

impl std::fmt::Debug for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tok")
            .field("source", &self.source)
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos)
            .field("stop", &self.stop)
            .field("template", &self.template.kind())
            .field("own_template", &self.jinja.is_some())
            .finish()
    }
}

/// What the model's metadata says about special tokens, whatever the file format.
#[derive(Default)]
struct Specials {
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: Option<bool>,
    add_eos: Option<bool>,
    template: Option<String>,
    arch: Option<String>,
}

impl Tok {
    /// Where `for_model` would take the tokenizer from, without building it.
    pub fn locate(path: &Path) -> TokSource {
        if path.is_dir() {
            let json = path.join("tokenizer.json");
            return if json.is_file() { TokSource::Json(json) } else { TokSource::None };
        }
        if let Some(json) = beside(path) {
            return TokSource::Json(json);
        }
        match GgufMeta::read(path) {
            Ok(m) if m.get("tokenizer.ggml.tokens").is_some() => TokSource::Embedded,
            _ => TokSource::None,
        }
    }

    /// The tokenizer of a `.gguf` file or a safetensors directory.
    pub fn for_model(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let json = path.join("tokenizer.json");
            if !json.is_file() {
                return Err(TokError::NotFound { path: path.to_path_buf() });
            }
            let specials = hf_specials(path);
            let inner = Tokenizer::from_file(&json)
                .map_err(|e| TokError::Build { path: json.clone(), reason: e.to_string() })?;
            return Ok(Self::assemble(inner, TokSource::Json(json), specials, None));
        }
        let meta = GgufMeta::read(path)?;
        let specials = gguf_specials(&meta);
        let n_vocab = meta.strings("tokenizer.ggml.tokens")?.map(|t| t.len());
        if let Some(json) = beside(path) {
            match Tokenizer::from_file(&json) {
                Ok(inner) if n_vocab.is_none_or(|n| inner.get_vocab_size(true) == n) => {
                    return Ok(Self::assemble(inner, TokSource::Json(json), specials, None));
                }
                Ok(inner) => tracing::warn!(
                    json = %json.display(),
                    json_vocab = inner.get_vocab_size(true),
                    model_vocab = n_vocab.unwrap_or(0),
                    "tokenizer.json does not match the model's vocabulary; using the model's own"
                ),
                Err(e) => tracing::warn!(json = %json.display(), error = %e, "unreadable tokenizer.json"),
            }
        }
        let (inner, types) = from_gguf(&meta)?;
        Ok(Self::assemble(inner, TokSource::Embedded, specials, Some(types)))
    }

    fn assemble(mut inner: Tokenizer, source: TokSource, sp: Specials, types: Option<Vec<i64>>) -> Self {
        // Post-processors of some tokenizer.json files add BOS themselves; we decide that here.
        inner.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        let vocab = inner.get_vocab(true);
        let special: HashSet<u32> = match &types {
            Some(t) => t.iter().enumerate().filter(|(_, &ty)| ty == 3).map(|(i, _)| i as u32).collect(),
            None => {
                inner.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(i, _)| *i).collect()
            }
        };
        let mut template = ChatTemplate::detect(sp.template.as_deref(), sp.arch.as_deref());
        if template == ChatTemplate::None && vocab.contains_key("<|im_start|>") {
            template = ChatTemplate::ChatMl { default_system: None };
        }
        let mut stop = sp.eos.clone();
        let ends = STOP_TOKENS.iter().copied().chain(template.end_of_turn());
        for id in ends.filter_map(|t| vocab.get(t).copied()) {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
        let pieces = match inner.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => Some(byte_pieces(&inner)),
            _ => None,
        };
        let add_bos = sp.add_bos.unwrap_or(false) && sp.bos.is_some();
        let text_of = |id: Option<u32>| id.and_then(|i| inner.id_to_token(i));
        let jinja = sp.template.as_deref().and_then(|src| {
            let bos = text_of(sp.bos);
            let eos = text_of(sp.eos.first().copied());
            ModelTemplate::compile(src, bos.as_deref(), eos.as_deref())
                .inspect_err(|e| {
                    tracing::warn!(error = %e, layout = template.kind(), "laying prompts out by the family layout instead")
                })
                .ok()
        });
        Self {
            inner,
            source,
            bos: sp.bos,
            stop,
            add_bos,
            add_eos: sp.add_eos.unwrap_or(false),
            template,
            jinja,
            pieces,
            special,
        }
    }

    pub fn source(&self) -> &TokSource {
        &self.source
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Whether prompts are laid out by the model's own chat template.
    pub fn uses_own_template(&self) -> bool {
        self.jinja.is_some()
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Encode text; special-token strings in it (e.g. `<|im_start|>`) become their single ids.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(tk)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Encode a whole document as the model's metadata asks (BOS/EOS when it says so).
    pub fn encode_document(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text, self.add_bos)?;
        if self.add_eos {
            ids.extend(self.stop.first());
        }
        Ok(ids)
    }

    /// Text of `ids`, control tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tk)
    }

    /// Ids that end generation: the model's EOS and the template's end-of-turn token.
    pub fn eos_ids(&self) -> &[u32] {
        &self.stop
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Whether the model expects BOS at the start of a sequence.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The chat prompt up to the start of the assistant's turn.
    pub fn chat_prompt(&self, system: Option<&str>, user: &str) -> Result<Vec<u32>> {
        let Some(jinja) = &self.jinja else {
            let text = self.template.render(system, user)?;
            return self.encode(&text, self.add_bos);
        };
        let text = jinja.render(system, user)?;
        // A template that writes BOS itself gets it once, as its id.
        match text.strip_prefix(jinja.bos_text()).filter(|_| !jinja.bos_text().is_empty()) {
            Some(rest) => self.encode(rest, true),
            None => self.encode(&text, self.add_bos),
        }
    }

    /// A training sample: prompt, answer and end-of-turn token, with a mask
    /// true exactly on the answer's tokens and the end-of-turn token.
    pub fn chat_sample(
        &self,
        system: Option<&str>,
        user: &str,
        answer: &str,
    ) -> Result<(Vec<u32>, Vec<bool>)> {
        let mut ids = self.chat_prompt(system, user)?;
        let prompt_len = ids.len();
        ids.extend(self.encode(answer, false)?);
        let end = match self.template.end_of_turn() {
            Some(t) => self.token_id(t).ok_or_else(|| TokError::MissingToken {
                template: self.template.kind(),
                token: t.to_string(),
            })?,
            None => *self.stop.first().ok_or_else(|| TokError::MissingToken {
                template: self.template.kind(),
                token: "an end-of-sequence token".to_string(),
            })?,
        };
        ids.push(end);
        let mask = (0..ids.len()).map(|i| i >= prompt_len).collect();
        Ok((ids, mask))
    }

    /// An incremental decoder for generated ids.
    pub fn stream(&self) -> Utf8Stream<'_> {
        Utf8Stream { tok: self, pending: Vec::new(), fallback: self.inner.decode_stream(true) }
    }
}

/// Turns generated ids into text pieces that are always whole UTF-8
/// characters; the pieces concatenate to `Tok::decode` of all the ids.
pub struct Utf8Stream<'a> {
    tok: &'a Tok,
    pending: Vec<u8>,
    fallback: tokenizers::DecodeStream<
        'a,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        DecoderWrapper,
    >,
}

impl Utf8Stream<'_> {
    /// Feed one id; returns the text that became complete, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        let Some(pieces) = &self.tok.pieces else {
            return self.fallback.step(id).map_err(tk);
        };
        if self.tok.special.contains(&id) {
            return Ok(None);
        }
        if let Some(bytes) = pieces.get(id as usize) {
            self.pending.extend_from_slice(bytes);
        }
        Ok(self.take(false))
    }

    /// Whatever is left at the end (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> Option<String> {
        self.take(true)
    }

    fn take(&mut self, all: bool) -> Option<String> {
        // Commit everything up to the last point that later bytes cannot change:
        // valid characters, and invalid sequences already known to be invalid.
        let mut end = 0;
        let mut rest = &self.pending[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(_) => {
                    end = self.pending.len();
                    break;
                }
                Err(e) => match e.error_len() {
                    Some(bad) => {
                        end += e.valid_up_to() + bad;
                        rest = &rest[e.valid_up_to() + bad..];
                    }
                    None => {
                        end += e.valid_up_to();
                        if all {
                            end = self.pending.len();
                        }
                        break;
                    }
                },
            }
        }
        if end == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&self.pending[..end]).into_owned();
        self.pending.drain(..end);
        Some(text)
    }
}

/// `<stem>.tokenizer.json` or `tokenizer.json` in the model file's folder.
fn beside(model: &Path) -> Option<PathBuf> {
    let dir = model.parent()?;
    let stem = model.file_stem()?.to_string_lossy();
    [dir.join(format!("{stem}.tokenizer.json")), dir.join("tokenizer.json")].into_iter().find(|p| p.is_file())
}

fn gguf_specials(meta: &GgufMeta) -> Specials {
    let id = |k: &str| meta.int(k).and_then(|v| u32::try_from(v).ok());
    let mut eos: Vec<u32> = Vec::new();
    for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(v) = id(k).filter(|v| !eos.contains(v)) {
            eos.push(v);
        }
    }
    let pre = meta.str("tokenizer.ggml.pre").unwrap_or("default");
    Specials {
        bos: id("tokenizer.ggml.bos_token_id"),
        eos,
        // llama.cpp's defaults when the file says nothing: Llama 3 wants BOS, GPT-2 style BPE does not.
        add_bos: meta
            .bool("tokenizer.ggml.add_bos_token")
            .or(Some(matches!(pre, "llama-bpe" | "llama3" | "llama-v3"))),
        add_eos: meta.bool("tokenizer.ggml.add_eos_token"),
        template: meta.str("tokenizer.chat_template").map(str::to_string),
        arch: meta.arch().map(str::to_string),
    }
}

/// Special tokens of a Hugging Face directory (tokenizer_config.json, config.json, generation_config.json).
fn hf_specials(dir: &Path) -> Specials {
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
    };
    let tcfg = read("tokenizer_config.json").unwrap_or_default();
    let cfg = read("config.json").unwrap_or_default();
    let gen = read("generation_config.json").unwrap_or_default();
    let ids = |v: Option<&serde_json::Value>| -> Vec<u32> {
        match v {
            Some(serde_json::Value::Array(a)) => {
                a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect()
            }
            Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            None => Vec::new(),
        }
    };
    let mut eos = ids(gen.get("eos_token_id"));
    for e in ids(cfg.get("eos_token_id")) {
        if !eos.contains(&e) {
            eos.push(e);
        }
    }
    Specials {
        bos: ids(cfg.get("bos_token_id")).first().copied(),
        eos,
        add_bos: tcfg.get("add_bos_token").and_then(|v| v.as_bool()),
        add_eos: tcfg.get("add_eos_token").and_then(|v| v.as_bool()),
        template: tcfg.get("chat_template").and_then(|v| v.as_str()).map(str::to_string),
        arch: cfg.get("model_type").and_then(|v| v.as_str()).map(str::to_string),
    }
}

/// A byte-level BPE tokenizer from `tokenizer.ggml.*`; also returns the token types.
fn from_gguf(meta: &GgufMeta) -> Result<(Tokenizer, Vec<i64>)> {
    let path = meta.path().to_path_buf();
    let model = meta.str("tokenizer.ggml.model").ok_or_else(|| TokError::NotFound { path: path.clone() })?;
    if model != "gpt2" {
        return Err(TokError::Unsupported { path, model: model.to_string() });
    }
    let tokens =
        meta.strings("tokenizer.ggml.tokens")?.ok_or_else(|| TokError::NotFound { path: path.clone() })?;
    let merges = meta.strings("tokenizer.ggml.merges")?.unwrap_or_default();
    let types = meta.ints("tokenizer.ggml.token_type")?.unwrap_or_else(|| vec![1; tokens.len()]);
    if types.len() != tokens.len() {
        return Err(TokError::Build {
            path,
            reason: format!("{} token types for {} tokens", types.len(), tokens.len()),
        });
    }
    let mut vocab = tokenizers::models::bpe::Vocab::default();
    vocab.reserve(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        // Keep the first id of a duplicated string, as llama.cpp's text-to-id map does.
        vocab.entry((*t).to_string()).or_insert(i as u32);
    }
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| TokError::Build {
                path: path.clone(),
                reason: format!("merge {m:?} has no space"),
            })
        })
        .collect::<Result<_>>()?;
    let pre = meta.str("tokenizer.ggml.pre").unwrap_or("default");
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(matches!(pre, "llama-bpe" | "llama3" | "llama-v3"))
        .build()
        .map_err(|e| TokError::Build { path: path.clone(), reason: e.to_string() })?;
    let mut tok = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, false);
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map(Into::into)
            .map_err(|e| TokError::Build { path: path.clone(), reason: e.to_string() })
    };
    let pre_tok: PreTokenizerWrapper = match pre {
        "qwen2" => {
            tok.with_normalizer(Some(NFC)).map_err(tk)?;
            Sequence::new(vec![split(QWEN2_SPLIT)?, byte_level.into()]).into()
        }
        "llama-bpe" | "llama3" | "llama-v3" => {
            Sequence::new(vec![split(LLAMA3_SPLIT)?, byte_level.into()]).into()
        }
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.use_regex(true).into()]).into(),
        "gpt-2" | "gpt2" | "default" => byte_level.use_regex(true).into(),
        other => {
            tracing::warn!(pre = other, "unknown pre-tokenizer; using GPT-2 splits");
            byte_level.use_regex(true).into()
        }
    };
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &ty)| ty == 3 || ty == 4)
        .map(|(t, &ty)| AddedToken::from(*t, ty == 3).normalized(false))
        .collect();
    tok.add_special_tokens(added).map_err(tk)?;
    Ok((tok, types))
}

/// The GPT-2 byte-to-character table, inverted.
fn byte_decoder() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for b in 0u32..256 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            shifted += 1;
            255 + shifted
        };
        if let Some(c) = char::from_u32(c) {
            map.insert(c, b as u8);
        }
    }
    map
}

/// Bytes of every id, mirroring the byte-level decoder: a token whose characters
/// all map to bytes gives those bytes, any other token its own UTF-8 text.
fn byte_pieces(tok: &Tokenizer) -> Vec<Vec<u8>> {
    let table = byte_decoder();
    let n = tok.get_vocab_size(true);
    (0..n as u32)
        .map(|id| {
            let Some(t) = tok.id_to_token(id) else { return Vec::new() };
            t.chars()
                .map(|c| table.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_else(|| t.into_bytes())
        })
        .collect()
}
