//! `warsha ask`: answer one question with the base model and the active
//! adapter, streaming the answer and citing the chunks it was given.

use std::io::Write;

use anyhow::{Context, Result};

use super::Ctx;
use crate::answer::{Answerer, Origin};
use crate::cli::AskArgs;

pub fn run(ctx: &Ctx, args: &AskArgs) -> Result<()> {
    if let Some(mut conn) = super::serve::service(ctx)? {
        return super::serve::ask(&mut conn, &args.question, args.max_tokens, args.out.json);
    }
    let model_path = ctx
        .config
        .model_path()
        .context("no base model configured: set [model] path (a .gguf file or a safetensors directory)")?;
    let _lock = ctx.data.lock()?;
    let mut store = ctx.open_store()?;
    let (base, tok) = ctx.load_base(&model_path)?;
    let active = store.active_adapter()?;
    let adapter = match &active {
        Some(row) => Some((row.id, crate::adapters::load_adapter(&ctx.data.root().join(&row.path), &base)?)),
        None => None,
    };
    let answerer = Answerer {
        base: &base,
        tok: &tok,
        adapter: adapter.as_ref().map(|(id, a)| (*id, a)),
        max_tokens: args.max_tokens,
    };
    let json = args.out.json;
    let mut stdout = std::io::stdout();
    let answer = answerer.ask(&mut store, &args.question, Origin::Cli, &mut |piece| {
        if !json {
            // Streaming is best-effort: a closed pipe must not lose the recorded answer.
            let _ = write!(stdout, "{piece}").and_then(|_| stdout.flush());
        }
    })?;
    if json {
        println!("{}", serde_json::to_string(&answer)?);
        return Ok(());
    }
    println!();
    println!(
        "— {} (question #{}, answer #{}, {} ms)",
        match answer.adapter_id {
            Some(id) => format!("adapter #{id}"),
            None => "bare base model".into(),
        },
        answer.question_id,
        answer.answer_id,
        answer.latency_ms
    );
    for s in &answer.sources {
        println!("  source: {} (document {}, chunk {})", s.name, s.document_id, s.chunk_id);
    }
    Ok(())
}
