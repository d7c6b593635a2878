//! `warsha bench train`: training throughput (forward + backward + optimizer,
//! positions per second) and peak memory on a fixed synthetic batch, with the
//! memory planner's prediction beside the measurement.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use serde_json::json;

use super::Ctx;
use crate::cli::BenchTrainArgs;
use crate::model::{Adapter, Base, LoraConfig, ModelConfig, Target};
use crate::train::checkpoint::Shape;
use crate::train::dataset::{self, Sample, SplitMix64};
use crate::train::device::{self, Placement};
use crate::train::optim::AdamWParams;
use crate::train::plan;
use crate::train::round;
use crate::train::scaler::LossScaler;
use crate::train::schedule::Schedule;
use crate::train::trainer::Trainer;

pub fn run(ctx: &Ctx, a: BenchTrainArgs) -> Result<()> {
    let cfg = &ctx.config;
    device::tame_cpu_threads();
    let placement = Placement::resolve(&a.device, a.dtype.as_deref(), &cfg.model.quant)?;
    let (dev, dtype, quant) = (placement.device.clone(), placement.dtype, placement.quant);
    // Polls this process's device memory (context included) through load, warm-up and steps.
    let sampler = start_device_sampler(&dev);
    let opts = placement.load_options();
    let t_load = Instant::now();
    let (base, label) = match (&a.model, &a.shape) {
        (Some(p), None) => (
            Base::load(p, &opts).with_context(|| format!("loading {}", p.display()))?,
            p.display().to_string(),
        ),
        (None, Some(name)) => {
            let mc = ModelConfig::from_shape_name(name).with_context(|| {
                format!(
                    "unknown shape {name:?} (qwen2-1.5b, qwen2.5-0.5b, smollm2-135m, tiny-qwen2, tiny-llama)"
                )
            })?;
            (Base::random(&mc, quant, 7, &opts)?, format!("random {name}"))
        }
        _ => bail!("give exactly one of --model PATH or --shape NAME"),
    };
    let dense = dev.is_cpu() && !a.quantized;
    let dense_base = if dense { Some(crate::train::dense::densify(&base)?) } else { None };
    let load_secs = t_load.elapsed().as_secs_f64();
    let targets = a.targets.split(',').map(|t| t.trim().parse::<Target>()).collect::<Result<Vec<_>, _>>()?;
    let lora = LoraConfig { rank: a.rank, alpha: cfg.lora.alpha, dropout: cfg.lora.dropout, targets };
    let seq = a.seq.min(base.config.max_position);
    let shape = Shape { seq_len: seq, micro_batch: 1, grad_accum: 1, recompute: a.recompute };

    // One fixed row of random ids, every position a counted target.
    let mut rng = SplitMix64::new(11);
    let vocab = base.config.vocab_size as u64;
    let ids: Vec<u32> = (0..=seq).map(|_| rng.below(vocab) as u32).collect();
    let rows = dataset::pack(&[Sample::causal(ids)], seq);
    let mut stream = dataset::RowStream::new(rows, Vec::new(), 1);

    // The quantized base stays loaded beside its dense copy, as in the service.
    let inp = round::plan_input(&base, &lora, 0);
    let base = dense_base.as_ref().unwrap_or(&base);
    let predicted = plan::estimate(&inp, &shape, dense);
    let adapter = Adapter::new(&base.config, &lora, 5, &dev)?;
    let scaler = if dtype == DType::F16 { LossScaler::dynamic() } else { LossScaler::disabled() };
    let steps = a.steps.max(1);
    let mut tr = Trainer::new(
        base,
        &adapter,
        shape,
        Schedule::new(1e-4, 0, steps + 1),
        scaler,
        AdamWParams::default(),
        1.0,
        5,
    )?;
    if let Some(c) = a.ce_chunk {
        tr.ce_chunk = c.max(1);
    }
    // The first step allocates and warms caches; it is reported, not timed.
    let warm = tr.step(&mut stream)?;
    let mut secs = Vec::with_capacity(steps);
    let mut last = warm.clone();
    let mut skipped = 0usize;
    let mut device_peak = warm.peak_mem_bytes;
    let t0 = Instant::now();
    let cpu0 = cpu_seconds();
    for _ in 0..steps {
        last = tr.step(&mut stream)?;
        secs.push(last.secs);
        skipped += usize::from(last.skipped);
        device_peak = device_peak.max(last.peak_mem_bytes);
    }
    let total = t0.elapsed().as_secs_f64();
    let sampled_peak_mib = finish_device_sampler(sampler);
    let pool = pool_figures(&dev);
    let cpu = cpu_seconds() - cpu0;
    let tokens_per_s = (steps * seq) as f64 / total;
    let peak_rss = crate::sys::peak_rss_bytes();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let measured = if dev.is_cpu() { peak_rss } else { device_peak };
    let v = json!({
        "model": label,
        "device": device::name(&dev),
        "dtype": format!("{dtype:?}").to_lowercase(),
        "seq": seq,
        "rank": a.rank,
        "targets": a.targets,
        "recompute": a.recompute,
        "ce_chunk": tr.ce_chunk,
        "dense_weights": dense,
        "steps": steps,
        "load_secs": load_secs,
        "warmup_step_secs": warm.secs,
        "step_secs": secs,
        "tokens_per_s": tokens_per_s,
        "cpu_secs": cpu,
        "tokens_per_cpu_s": (steps * seq) as f64 / cpu.max(1e-9),
        "loss_first": warm.loss,
        "loss_last": last.loss,
        "loss_scale": tr.scaler.enabled.then_some(tr.scaler.scale),
        "skipped_steps": skipped,
        "lora_params": inp.lora_params,
        "weight_mib": mib(inp.weight_bytes),
        "peak_rss_mib": peak_rss.map(mib),
        "peak_device_mib": if dev.is_cpu() { None } else { sampled_peak_mib.or(device_peak.map(mib)) },
        "peak_device_method": sampled_peak_mib.map(|_| "driver per-process figure (NVML), polled every 5 ms"),
        "pool": pool,
        "device_used_after_steps_mib": if dev.is_cpu() { None } else { device_peak.map(mib) },
        "predicted_peak_mib": predicted.total_mib(),
        "predicted": predicted,
        "predicted_over_measured": measured.map(|m| predicted.total as f64 / m as f64),
    });
    if a.out.json {
        println!("{v}");
        return Ok(());
    }
    println!("model           {label} on {} ({:?})", device::name(&dev), dtype);
    println!("setting         seq {seq}, r={}, targets {}, recompute {}", a.rank, a.targets, a.recompute);
    println!("throughput      {tokens_per_s:.1} tokens/s (forward+backward+optimizer, {steps} steps)");
    if let Some(p) = peak_rss {
        println!("peak RSS        {:.0} MiB", mib(p));
    }
    if let Some(p) = sampled_peak_mib {
        println!("device memory   {p:.0} MiB peak (this process, context included)");
    } else if let (false, Some(p)) = (dev.is_cpu(), device_peak) {
        println!("device memory   {:.0} MiB (sampled after each step, context included)", mib(p));
    }
    println!("planner         {:.0} MiB predicted", predicted.total_mib());
    println!("loss            {:.4} -> {:.4}", warm.loss, last.loss);
    Ok(())
}

#[cfg(feature = "cuda")]
fn start_device_sampler(dev: &candle_core::Device) -> Option<crate::kernels::cuda::cuda_mem::PeakSampler> {
    match dev {
        candle_core::Device::Cuda(c) => {
            crate::kernels::cuda::cuda_mem::PeakSampler::start(c, std::time::Duration::from_millis(5)).ok()
        }
        _ => None,
    }
}

#[cfg(feature = "cuda")]
fn finish_device_sampler(s: Option<crate::kernels::cuda::cuda_mem::PeakSampler>) -> Option<f64> {
    s.map(|s| s.finish().best_mib())
}

/// The allocator pool's policy and high-water marks over the run (live tensors, mapped).
#[cfg(feature = "cuda")]
fn pool_figures(dev: &candle_core::Device) -> Option<serde_json::Value> {
    use crate::kernels::cuda::cuda_mem;
    let candle_core::Device::Cuda(c) = dev else { return None };
    let s = cuda_mem::pool_highs(c);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Some(json!({
        "used_peak_mib": mib(s.used_high),
        "reserved_peak_mib": mib(s.reserved_high),
        "reserved_after_mib": mib(s.reserved),
    }))
}

#[cfg(not(feature = "cuda"))]
fn pool_figures(_dev: &candle_core::Device) -> Option<serde_json::Value> {
    None
}

#[cfg(not(feature = "cuda"))]
fn start_device_sampler(_dev: &candle_core::Device) -> Option<()> {
    None
}

#[cfg(not(feature = "cuda"))]
fn finish_device_sampler(_s: Option<()>) -> Option<f64> {
    None
}

/// User + system CPU seconds this process has used.
fn cpu_seconds() -> f64 {
    crate::sys::resource_usage(crate::sys::Usage::Process).cpu_seconds
}
