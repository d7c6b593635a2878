//! Answering an operator's question: retrieve the chunks that match it
//! (FTS5 over the search form), put the best few in front of the question,
//! generate with the base model and the active adapter, and record the
//! question, the answer and its sources.
//!
//! The sources are what the operator checks the answer against, so they are
//! recorded whether or not the model used them well.

use std::time::Instant;

use serde::Serialize;

use crate::model::generate::{generate, GenError, Sampling};
use crate::model::tokenizer::{Tok, TokError};
use crate::model::{Adapter, Base};
use crate::store::ingest::ChunkHit;
use crate::store::{Store, StoreError};
use crate::text::normalize::search_form;

/// Chunks retrieved per question.
const SOURCES: usize = 3;
/// Characters of each chunk put into the prompt: a small model's context is
/// better spent on the question than on long passages.
const CONTEXT_CHARS: usize = 600;

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("generation failed: {0}")]
    Gen(#[from] GenError),
    #[error("tokenizer: {0}")]
    Tok(#[from] TokError),
    #[error("the question is empty")]
    Empty,
}

#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub chunk_id: i64,
    pub document_id: i64,
    pub name: String,
    pub heading: Option<String>,
    pub excerpt: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub question_id: i64,
    pub answer_id: i64,
    pub adapter_id: Option<i64>,
    pub text: String,
    pub sources: Vec<Source>,
    pub tokens: usize,
    pub latency_ms: u64,
}

/// Who asks, recorded with the question.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    Cli,
    Tui,
    Demo,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Cli => "cli",
            Origin::Tui => "tui",
            Origin::Demo => "demo",
        }
    }
}

/// What generation runs on: the frozen base, the tokenizer and the active adapter.
pub struct Answerer<'a> {
    pub base: &'a Base,
    pub tok: &'a Tok,
    pub adapter: Option<(i64, &'a Adapter)>,
    pub max_tokens: usize,
}

impl Answerer<'_> {
    /// Answer `question`, streaming text pieces to `on_text`, and record it.
    pub fn ask(
        &self,
        store: &mut Store,
        question: &str,
        origin: Origin,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Answer, AnswerError> {
        let question = question.trim();
        if question.is_empty() {
            return Err(AnswerError::Empty);
        }
        let started = Instant::now();
        let (sources, prompt) = retrieve(store, self.tok, question)?;
        let generation = self.generate(&prompt, &mut |piece| {
            on_text(piece);
            true
        })?;
        let latency_ms = started.elapsed().as_millis() as u64;
        let text = generation.text.trim().to_string();
        let adapter_id = self.adapter.map(|(id, _)| id);
        let (question_id, answer_id) = store.record_answer(
            question,
            origin.as_str(),
            adapter_id,
            &text,
            &sources,
            generation.tokens.len(),
            latency_ms,
        )?;
        Ok(Answer {
            question_id,
            answer_id,
            adapter_id,
            text,
            sources,
            tokens: generation.tokens.len(),
            latency_ms,
        })
    }
}

impl Answerer<'_> {
    /// Greedy generation from a prompt made by [`retrieve`]; `on_text`
    /// returning false stops it (a client that went away).
    pub fn generate(
        &self,
        prompt: &[u32],
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<crate::model::generate::Generation, AnswerError> {
        let sampling =
            Sampling { greedy: true, temperature: 0.0, top_p: 1.0, top_k: 0, repeat_penalty: 1.0, seed: 0 };
        Ok(generate(
            self.base,
            self.adapter.map(|(_, a)| a),
            self.tok,
            prompt,
            &sampling,
            self.max_tokens,
            on_text,
        )?)
    }
}

/// The sources for `question` and the prompt that puts them before it.
/// Reads only: the service runs it on a query thread's read-only connection.
pub fn retrieve(store: &Store, tok: &Tok, question: &str) -> Result<(Vec<Source>, Vec<u32>), AnswerError> {
    let hits = store.search_chunks(&search_form(question), SOURCES)?;
    let prompt = tok.chat_prompt(Some(&system_prompt(&hits)), question)?;
    Ok((hits.iter().map(source_of).collect(), prompt))
}

fn system_prompt(hits: &[ChunkHit]) -> String {
    let mut s = String::from(
        "You are the plant's maintenance assistant. Answer briefly and exactly, in the language of the question.",
    );
    if !hits.is_empty() {
        s.push_str(" Plant documents that may help:");
        for h in hits {
            s.push_str("\n[");
            s.push_str(&h.name);
            s.push_str("] ");
            s.push_str(&excerpt(&h.text, CONTEXT_CHARS));
        }
    }
    s
}

fn source_of(h: &ChunkHit) -> Source {
    Source {
        chunk_id: h.chunk_id,
        document_id: h.document_id,
        name: h.name.clone(),
        heading: h.heading.clone(),
        excerpt: excerpt(&h.text, 200),
    }
}

/// The first `max` characters, cut at a character boundary.
fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_cuts_arabic_at_char_boundary() {
        let s = "صمام الأمان يفتح عند ضغط ٣٢ بار";
        let e = excerpt(s, 4);
        assert_eq!(e, "صمام…");
        assert_eq!(excerpt("short", 10), "short");
    }
}
