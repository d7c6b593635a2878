//! `ask` on a client thread: retrieval on the client's read-only
//! connection, generation under the GPU lease (the trainer waits at its
//! next step boundary), the answer recorded by the loop. Records stream in
//! the order pieces, sources, final (docs/PROTOCOL.md).

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::protocol;
use super::socket::Out;
use super::writer::{AnswerRecord, Request};
use super::{ModelState, Shared};
use crate::answer::{retrieve, Answerer};
use crate::store::Store;

const DEFAULT_MAX_TOKENS: usize = 256;

/// The active adapter for answers, loaded when it changes.
fn active_adapter(
    sh: &Shared,
    store: &Store,
    base: &crate::model::Base,
) -> Result<Option<(i64, Arc<crate::model::Adapter>)>, String> {
    let Some(row) = store.active_adapter().map_err(|e| e.to_string())? else { return Ok(None) };
    let mut cached = sh.answer_adapter.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((id, a)) = cached.as_ref() {
        if *id == row.id {
            return Ok(Some((*id, a.clone())));
        }
    }
    let a =
        crate::adapters::load_adapter(&sh.data.root().join(&row.path), base).map_err(|e| e.to_string())?;
    let a = Arc::new(a);
    *cached = Some((row.id, a.clone()));
    Ok(Some((row.id, a)))
}

pub fn ask(
    sh: &Shared,
    out: &mut Out,
    store: &Store,
    id: &Value,
    question: &str,
    max_tokens: Option<usize>,
    uid: u32,
) {
    let started = Instant::now();
    let model = match &sh.model {
        ModelState::Loaded(m) => m.clone(),
        ModelState::Missing(why) => {
            out.send(&protocol::error(id, "no-model", &format!("no model: {why}")));
            return;
        }
    };
    let question = question.trim();
    if question.is_empty() {
        out.send(&protocol::error(id, "bad-arguments", "the question is empty"));
        return;
    }
    let prepared = retrieve(store, &model.tok, question)
        .map_err(|e| e.to_string())
        .and_then(|(s, p)| active_adapter(sh, store, &model.base).map(|a| (s, p, a)));
    let (sources, prompt, adapter) = match prepared {
        Ok(x) => x,
        Err(e) => {
            out.send(&protocol::error(id, "failed", &e));
            return;
        }
    };
    // The lease first (the trainer's step in flight ends), then one generation at a time.
    let lease = sh.lease.question();
    let gen_lock = sh.generation.lock().unwrap_or_else(|e| e.into_inner());
    let load_ns = started.elapsed().as_nanos() as u64;
    let answerer = Answerer {
        base: &model.base,
        tok: &model.tok,
        adapter: adapter.as_ref().map(|(i, a)| (*i, a.as_ref())),
        max_tokens: max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).clamp(1, 4096),
    };
    let mut first_piece_ns = None;
    let generation = answerer.generate(&prompt, &mut |piece| {
        first_piece_ns.get_or_insert_with(|| started.elapsed().as_nanos() as u64);
        out.send(&json!({"id": id, "piece": piece}))
    });
    drop(gen_lock);
    drop(lease);
    let generation = match generation {
        Ok(g) => g,
        Err(e) => {
            out.send(&protocol::error(id, "failed", &e.to_string()));
            return;
        }
    };
    out.send(&json!({"id": id, "sources": sources.iter().map(|s| json!({
        "document": s.name,
        "document_id": s.document_id,
        "chunk_id": s.chunk_id,
        "heading": s.heading,
        "passage": s.excerpt,
    })).collect::<Vec<_>>()}));
    let latency_ms = started.elapsed().as_millis() as u64;
    let text = generation.text.trim().to_string();
    let (tx, rx) = mpsc::channel();
    let record = AnswerRecord {
        question: question.to_string(),
        origin: format!("socket:uid={uid}"),
        adapter_id: adapter.as_ref().map(|(i, _)| *i),
        text,
        sources,
        tokens: generation.tokens.len(),
        latency_ms,
    };
    // Recorded even when the client left mid-stream: the question was asked.
    let ids = sh
        .requests
        .send(Request::RecordAnswer { answer: record, reply: tx })
        .ok()
        .and_then(|_| rx.recv_timeout(Duration::from_secs(600)).ok());
    let (question_id, answer_id, record_error) = match ids {
        Some(Ok(v)) => (v["question_id"].clone(), v["answer_id"].clone(), None),
        Some(Err(e)) => (Value::Null, Value::Null, Some(e)),
        None => (Value::Null, Value::Null, Some("the service is stopping".to_string())),
    };
    let ns = |s: f64| (s * 1e9) as u64;
    out.send(&json!({
        "id": id,
        "done": true,
        "question_id": question_id,
        "answer_id": answer_id,
        "adapter_id": adapter.as_ref().map(|(i, _)| *i),
        "record_error": record_error,
        "total_duration": started.elapsed().as_nanos() as u64,
        "load_duration": load_ns,
        "first_piece_duration": first_piece_ns,
        "prompt_eval_count": generation.prompt_tokens,
        "prompt_eval_duration": ns(generation.prefill_secs),
        "eval_count": generation.tokens.len(),
        "eval_duration": ns(generation.decode_secs),
    }));
}
