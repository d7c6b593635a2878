//! `warsha bench infer`: prefill and decode tokens/s of a model through the
//! same session and KV cache that generation uses, plus the process's peak
//! resident memory. One warm-up pass first, then `REPS` timed passes.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use super::Ctx;
use crate::cli::BenchInferArgs;
use crate::model::generate::{Session, Step};
use crate::model::sampling::argmax;
use crate::model::tokenizer::Tok;
use crate::train::device::Placement;

/// Timed passes after the warm-up.
const REPS: usize = 3;

/// Text the prompt is cut from: English and Arabic, as the box sees them.
const PROMPT_TEXT: &str = "Before servicing the hydraulic press, switch off the main isolator, \
    lock it, and bleed the accumulator until the gauge reads zero. \
    قبل صيانة المكبس الهيدروليكي افصل المفتاح الرئيسي وأقفله، ثم فرّغ المركم حتى يقرأ المؤشر صفراً. ";

#[derive(Debug, Serialize)]
struct InferBench {
    model: String,
    device: String,
    /// CPU threads candle's matmuls use (RAYON_NUM_THREADS, else every core).
    threads: usize,
    prompt_tokens: usize,
    decode_tokens: usize,
    reps: usize,
    load_secs: f64,
    prefill_tokens_per_sec: f64,
    prefill_tokens_per_sec_runs: Vec<f64>,
    decode_tokens_per_sec: f64,
    decode_tokens_per_sec_runs: Vec<f64>,
    weight_bytes: usize,
    peak_rss_mib: Option<f64>,
}

pub fn run(ctx: &Ctx, args: &BenchInferArgs) -> Result<()> {
    if args.prompt_tokens == 0 || args.decode_tokens == 0 {
        bail!("--prompt-tokens and --decode-tokens must be at least 1");
    }
    let placement = Placement::resolve(&args.device, None, &ctx.config.model.quant)?;
    let t = Instant::now();
    let (base, tok) = ctx.load_base_on(&args.model, &placement)?;
    let load_secs = t.elapsed().as_secs_f64();
    let prompt = prompt_ids(&tok, args.prompt_tokens)?;

    let mut session = Session::new(&base, None);
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for rep in 0..=REPS {
        session.reset();
        let t = Instant::now();
        let mut logits = session.step(&prompt)?;
        let p = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..args.decode_tokens {
            let id = argmax(&logits);
            logits = session.step(&[id])?;
        }
        let d = t.elapsed().as_secs_f64();
        if rep > 0 {
            prefill.push(args.prompt_tokens as f64 / p);
            decode.push(args.decode_tokens as f64 / d);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let report = InferBench {
        model: args.model.display().to_string(),
        device: args.device.clone(),
        threads: candle_core::utils::get_num_threads(),
        prompt_tokens: args.prompt_tokens,
        decode_tokens: args.decode_tokens,
        reps: REPS,
        load_secs,
        prefill_tokens_per_sec: mean(&prefill),
        prefill_tokens_per_sec_runs: prefill,
        decode_tokens_per_sec: mean(&decode),
        decode_tokens_per_sec_runs: decode,
        weight_bytes: base.weight_bytes(),
        peak_rss_mib: peak_rss_mib(),
    };
    if args.out.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("model        {} ({}, {} threads)", report.model, report.device, report.threads);
        println!(
            "load         {:.2} s, weights {:.1} MiB",
            report.load_secs,
            report.weight_bytes as f64 / 1048576.0
        );
        println!(
            "prefill      {:.1} tokens/s ({} tokens, mean of {REPS} after a warm-up)",
            report.prefill_tokens_per_sec, report.prompt_tokens
        );
        println!(
            "decode       {:.1} tokens/s ({} tokens)",
            report.decode_tokens_per_sec, report.decode_tokens
        );
        match report.peak_rss_mib {
            Some(m) => println!("peak RSS     {m:.1} MiB"),
            None => println!("peak RSS     unknown (no /proc/self/status)"),
        }
    }
    Ok(())
}

/// Exactly `n` ids of real text (repeated as needed), BOS first when the model wants one.
fn prompt_ids(tok: &Tok, n: usize) -> Result<Vec<u32>> {
    let once = tok.encode(PROMPT_TEXT, false)?;
    let mut ids: Vec<u32> = if tok.add_bos() { tok.bos_id().into_iter().collect() } else { Vec::new() };
    while ids.len() < n {
        ids.extend_from_slice(&once);
    }
    ids.truncate(n);
    Ok(ids)
}

/// The process's peak resident set (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    crate::sys::peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0))
}
