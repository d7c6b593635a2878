//! The memory planner: predicts a round's peak memory from the model's
//! dimensions, the resident size of its frozen weights, the LoRA setup and
//! the shape of a step (sequence length, micro-batch, recomputation), and
//! picks the largest shape that fits the budget before training starts.
//! When the device still runs out of memory, [`back_off`] gives the next
//! smaller shape so the round continues instead of dying.
//!
//! What is counted (bytes): the frozen weights as loaded; LoRA parameters,
//! their accumulated gradients, one micro-batch's gradients and two AdamW
//! moments (all f32); activations that backward keeps alive (every block's,
//! or with recomputation one input per block plus one block being replayed);
//! the chunked lm_head/cross-entropy logits; the tokenizer and packed data;
//! the runtime (process baseline on CPU, context + cuBLAS on CUDA). The
//! per-block coefficients count the tensors the decoder's training graph
//! holds per token and were fitted against measured peaks (see tests).

use serde::Serialize;

use super::checkpoint::Shape;

/// A CUDA context plus cuBLAS handles, measured on an H200 (~684 MiB).
pub const CUDA_CONTEXT_BYTES: u64 = 700 * MIB;
/// What the stream-ordered allocator's pool holds beyond the live tensors at the peak. Freed
/// blocks stay mapped until the pool is trimmed and are split between sizes, so the process
/// figure runs above the tensors counted here: on an H200 (Qwen2-1.5B shape, r=16, seq 512) by
/// 220 to 1,000 MiB across runs while the optimizer reallocated its moments every step (third
/// series), by 100 to 320 MiB of mapped-but-free pool since it updates them in place (fourth
/// series, where the allowance over-predicts by 13–19%); kept, since over-predicting only
/// costs a smaller shape (bench/gpu-h200.md).
pub const CUDA_POOL_SLACK_BYTES: u64 = 400 * MIB;
/// Process baseline on CPU: binary, shared libraries, SQLite, thread stacks.
pub const CPU_BASELINE_BYTES: u64 = 48 * MIB;
const MIB: u64 = 1024 * 1024;

/// Model dimensions the estimate needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Dims {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// Everything the estimate depends on besides the step shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanInput {
    pub dims: Dims,
    pub device: DeviceKind,
    /// Resident bytes of the frozen base (quantized weights and any dense tables).
    pub weight_bytes: u64,
    /// Bytes of a dense training copy of the projections (CPU only; 0: not offered).
    pub dense_bytes: u64,
    /// Trainable LoRA parameters (f32).
    pub lora_params: u64,
    /// LoRA rank and the number of adapted projections per block.
    pub rank: usize,
    pub targets_per_block: usize,
    /// Bytes per activation element: 4 (f32), 2 (bf16/f16).
    pub act_bytes: usize,
    /// Positions per lm_head + cross-entropy chunk.
    pub ce_chunk: usize,
    /// Tokenizer and packed training rows held in memory.
    pub host_data_bytes: u64,
}

/// The predicted peak, by part (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub weights: u64,
    pub lora: u64,
    pub activations: u64,
    pub logits: u64,
    pub data: u64,
    pub runtime: u64,
    pub total: u64,
}

impl Estimate {
    pub fn total_mib(&self) -> f64 {
        self.total as f64 / MIB as f64
    }
}

/// A chosen shape with its estimate and the budget it was checked against.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryPlan {
    pub shape: Shape,
    /// Train on a dense copy of the frozen projections (CPU speed trade).
    pub dense_weights: bool,
    pub estimate: Estimate,
    pub budget_mib: u64,
    /// Shapes tried before this one (they did not fit).
    pub rejected: Vec<(Shape, u64)>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "no training shape fits {budget_mib} MiB: even seq {seq_len}, micro-batch 1 with recomputation needs ~{need_mib} MiB. \
     Raise the budget ([gpu] vram_budget_mib / [train] host_budget_mib), use a smaller model, or lower [lora] rank"
)]
pub struct NoFit {
    pub budget_mib: u64,
    pub need_mib: u64,
    pub seq_len: usize,
}

/// Activation elements alive per token per block at the start of backward
/// (no recomputation), counted from the training graph: hidden-sized tensors
/// (the two norms' parts, residuals, frozen outputs, LoRA branch outputs and
/// their sums, rotary parts, the attention output and its reshaped copy),
/// MLP-sized ones (gate and up with their branches and sums, SiLU and the
/// product) and key/value-sized ones. The LoRA branch keeps nothing of its own
/// and attention keeps no score matrix (both recompute in their backward).
/// Checked against peak RSS of SmolLM2-135M on CPU at seq 64/128/256 with and
/// without recomputation (tests/train_plan.rs).
const PER_TOKEN_HIDDEN: f64 = 24.0;
const PER_TOKEN_INTER: f64 = 8.0;
const PER_TOKEN_KV: f64 = 11.0;
/// Score-sized f32 tensors alive at once inside one attention tile (scores,
/// probabilities, their gradient and the accumulating parts).
const TILE_COPIES: f64 = 5.0;
/// Logit-sized f32 tensors alive at once in a cross-entropy chunk.
const LOGIT_COPIES: f64 = 3.0;
/// With recomputation: the replayed block's graph plus its gradients.
const REPLAY_BLOCKS: f64 = 1.5;
/// The widest dense slice of the lm_head the GPU path expands (`model::cuda_dequant::SLICE_BYTES`).
const CUDA_HEAD_SLICE_BYTES: f64 = (64 * MIB) as f64;

/// Transient f32 elements per token while one block's backward runs on the CPU path: the
/// output and residual gradients, the MLP product recomputed with its gradient and the two
/// projections' gradients, the attention output's and q/k/v's gradients, a dropout scratch.
const CPU_BACKWARD_HIDDEN: f64 = 6.0;
const CPU_BACKWARD_INTER: f64 = 4.0;

/// [`estimate`] for the CPU training path (`train::cpu`), which holds plain buffers
/// rather than a graph: per block and token it keeps the two norms' outputs and inverse
/// RMS, q, k, v after rotation, the attention output and its log-sum-exp, the residual
/// after attention, gate and up, and each adapted projection's rank-r product and dropout
/// mask.
fn estimate_cpu(inp: &PlanInput, shape: &Shape, dense: bool) -> Estimate {
    let d = &inp.dims;
    let tokens = (shape.micro_batch * shape.seq_len) as f64;
    let (h, i) = (d.hidden as f64, d.intermediate as f64);
    let (q, kv) = ((d.heads * d.head_dim) as f64, (d.kv_heads * d.head_dim) as f64);
    let saved = 3.0 * h
        + 2.0 * q
        + 2.0 * kv
        + 2.0 * i
        + d.heads as f64
        + 2.0
        + (inp.rank * inp.targets_per_block) as f64
        // Each branch's dropout keep bytes: a byte per input element (the down projection's
        // input is MLP-wide), in f32 units.
        + (inp.targets_per_block as f64 * h + i) / 4.0;
    let backward = CPU_BACKWARD_HIDDEN * h + CPU_BACKWARD_INTER * i;
    let inputs = tokens * h * 4.0 * d.layers as f64;
    let blocks = if shape.recompute { 1.0 } else { d.layers as f64 };
    let activations = inputs + tokens * (saved * blocks + backward) * 4.0;
    // A dense head: one chunk of logits plus the normalized states and their gradient; a
    // quantized one goes through the graph path's op (three chunk-sized copies and one
    // expanded slice of the table).
    let chunk = inp.ce_chunk.min(shape.seq_len) as f64 * shape.micro_batch as f64;
    let logits = if dense {
        let rows = crate::train::cpu::head::chunk_rows(d.vocab).min(shape.micro_batch * shape.seq_len);
        rows as f64 * d.vocab as f64 * 4.0 + 3.0 * tokens * h * 4.0
    } else {
        LOGIT_COPIES * chunk * d.vocab as f64 * 4.0
            + (crate::model::weights::qlinear::BWD_SLICE_ELEMS * 4) as f64
    };
    let weights = inp.weight_bytes + if dense { inp.dense_bytes } else { 0 };
    let lora = inp.lora_params * 4 * 5;
    let (activations, logits) = (activations as u64, logits as u64);
    let total = weights + lora + activations + logits + inp.host_data_bytes + CPU_BASELINE_BYTES;
    Estimate {
        weights,
        lora,
        activations,
        logits,
        data: inp.host_data_bytes,
        runtime: CPU_BASELINE_BYTES,
        total,
    }
}

/// Predicted peak memory of one step of `shape`.
pub fn estimate(inp: &PlanInput, shape: &Shape, dense: bool) -> Estimate {
    if inp.device == DeviceKind::Cpu && inp.act_bytes == 4 {
        return estimate_cpu(inp, shape, dense);
    }
    let d = &inp.dims;
    let tokens = (shape.micro_batch * shape.seq_len) as f64;
    let kv = (d.kv_heads * d.head_dim) as f64;
    let per_token = PER_TOKEN_HIDDEN * d.hidden as f64
        + PER_TOKEN_INTER * d.intermediate as f64
        + PER_TOKEN_KV * kv
        + (inp.rank * inp.targets_per_block) as f64 * 2.0;
    let seq = shape.seq_len as f64;
    let rows = shape.micro_batch as f64;
    // One attention tile at a time, plus the (t, t) additive mask table.
    let tile = (rows * d.heads as f64 * seq * seq).min(crate::train::ops::attention::TILE_ELEMS as f64);
    let attention = (TILE_COPIES * tile + rows * seq * seq) * 4.0;
    let block = tokens * per_token * inp.act_bytes as f64 + attention;
    let inputs = tokens * d.hidden as f64 * inp.act_bytes as f64 * d.layers as f64;
    let acts = if shape.recompute {
        inputs + REPLAY_BLOCKS * block
    } else {
        // Every block's graph, and the gradients of the one backward is in.
        (block - attention) * (d.layers as f64 + 1.0) + attention
    };
    let chunk = inp.ce_chunk.min(shape.seq_len) as f64 * shape.micro_batch as f64;
    let logits = match inp.device {
        DeviceKind::Cpu => {
            let mut l = LOGIT_COPIES * chunk * d.vocab as f64 * 4.0;
            if !dense {
                // The quantized lm_head's backward dequantizes the whole table for a moment.
                l += (d.vocab * d.hidden * inp.act_bytes) as f64;
            }
            l
        }
        // One dense vocabulary slice of the head, a chunk's logits and their gradient in the
        // compute dtype, and the f32 hidden-state gradient being accumulated.
        DeviceKind::Cuda => {
            ((d.vocab * d.hidden * inp.act_bytes) as f64).min(CUDA_HEAD_SLICE_BYTES)
                + 2.0 * chunk * d.vocab as f64 * inp.act_bytes as f64
                + tokens * d.hidden as f64 * 4.0 * 2.0
        }
    };
    // Parameters, summed gradients, one micro-batch's gradients, two moments.
    let lora = inp.lora_params * 4 * 5;
    let runtime = match inp.device {
        DeviceKind::Cpu => CPU_BASELINE_BYTES,
        DeviceKind::Cuda => CUDA_CONTEXT_BYTES + CUDA_POOL_SLACK_BYTES,
    };
    // Host data counts only where it lives in the budgeted memory.
    let data = match inp.device {
        DeviceKind::Cpu => inp.host_data_bytes,
        DeviceKind::Cuda => 0,
    };
    let weights = inp.weight_bytes + if dense { inp.dense_bytes } else { 0 };
    let activations = acts as u64;
    let logits = logits as u64;
    // With recomputation the cross-entropy chunks and the replayed blocks come
    // one after the other, so only the larger of the two adds to the block inputs.
    let dynamic = if shape.recompute {
        (inputs + (REPLAY_BLOCKS * block).max(logits as f64)) as u64
    } else {
        activations + logits
    };
    let total = weights + lora + dynamic + data + runtime;
    Estimate { weights, lora, activations, logits, data, runtime, total }
}

/// How recomputation may be chosen (`[train] recompute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recompute {
    Auto,
    On,
    Off,
}

impl Recompute {
    pub fn parse(s: &str) -> Self {
        match s {
            "on" => Recompute::On,
            "off" => Recompute::Off,
            _ => Recompute::Auto,
        }
    }
}

/// Shapes to try, preferred first: the configured sequence length, then
/// shorter ones; within one, the configured micro-batch halving to 1, each
/// without and then with recomputation. Samples per optimizer step stay
/// constant (grad_accum grows as the micro-batch shrinks).
pub fn candidates(seq_len: usize, micro_batch: usize, grad_accum: usize, mode: Recompute) -> Vec<Shape> {
    let samples = micro_batch * grad_accum;
    let mut out = Vec::new();
    let mut seq = seq_len;
    loop {
        let mut mb = micro_batch;
        loop {
            let accum = samples.div_ceil(mb);
            let rcs: &[bool] = match mode {
                Recompute::Auto => &[false, true],
                Recompute::On => &[true],
                Recompute::Off => &[false],
            };
            for &recompute in rcs {
                out.push(Shape { seq_len: seq, micro_batch: mb, grad_accum: accum, recompute });
            }
            if mb == 1 {
                break;
            }
            mb /= 2;
        }
        if seq <= 64 || seq / 2 < 64 {
            break;
        }
        seq /= 2;
    }
    out
}

/// The first candidate whose estimate fits `budget_mib`; on CPU each shape is
/// tried with the dense training copy first (faster), then without.
pub fn choose(inp: &PlanInput, budget_mib: u64, shapes: &[Shape]) -> Result<MemoryPlan, NoFit> {
    let budget = budget_mib * MIB;
    let mut rejected = Vec::new();
    let dense_options: &[bool] = if inp.dense_bytes > 0 { &[true, false] } else { &[false] };
    for s in shapes {
        for &dense in dense_options {
            let e = estimate(inp, s, dense);
            if e.total <= budget {
                return Ok(MemoryPlan { shape: *s, dense_weights: dense, estimate: e, budget_mib, rejected });
            }
        }
        rejected.push((*s, estimate(inp, s, false).total / MIB));
    }
    let last = shapes.last().copied().unwrap_or(Shape {
        seq_len: 64,
        micro_batch: 1,
        grad_accum: 1,
        recompute: true,
    });
    Err(NoFit { budget_mib, need_mib: estimate(inp, &last, false).total / MIB, seq_len: last.seq_len })
}

/// The next smaller shape after an out-of-memory error: halve the micro-batch
/// (doubling accumulation), then turn recomputation on, then halve the
/// sequence (doubling accumulation again). `None` at the bottom.
pub fn back_off(s: Shape) -> Option<Shape> {
    if s.micro_batch > 1 {
        return Some(Shape { micro_batch: s.micro_batch / 2, grad_accum: s.grad_accum * 2, ..s });
    }
    if !s.recompute {
        return Some(Shape { recompute: true, ..s });
    }
    if s.seq_len / 2 >= 32 {
        return Some(Shape { seq_len: s.seq_len / 2, grad_accum: s.grad_accum * 2, ..s });
    }
    None
}

/// Whether an error message is a device or host allocation failure.
pub fn is_oom(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out of memory")
        || m.contains("cuda_error_out_of_memory")
        || m.contains("memory allocation of")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smol() -> PlanInput {
        PlanInput {
            dims: Dims {
                hidden: 576,
                intermediate: 1536,
                layers: 30,
                heads: 9,
                kv_heads: 3,
                head_dim: 64,
                vocab: 49152,
            },
            device: DeviceKind::Cpu,
            weight_bytes: 98 * MIB,
            dense_bytes: 0,
            lora_params: 4_884_480,
            rank: 16,
            targets_per_block: 7,
            act_bytes: 4,
            ce_chunk: 128,
            host_data_bytes: 8 * MIB,
        }
    }

    #[test]
    fn recompute_and_smaller_batches_shrink_the_estimate() {
        let inp = smol();
        let s = Shape { seq_len: 512, micro_batch: 4, grad_accum: 4, recompute: false };
        let full = estimate(&inp, &s, false).total;
        let rc = estimate(&inp, &Shape { recompute: true, ..s }, false).total;
        let mb1 = estimate(&inp, &Shape { micro_batch: 1, ..s }, false).total;
        assert!(rc < full / 2, "{rc} vs {full}");
        assert!(mb1 < full / 2);
    }

    #[test]
    fn chooses_the_first_shape_that_fits_and_says_why_not_otherwise() {
        let inp = smol();
        let shapes = candidates(512, 4, 4, Recompute::Auto);
        assert_eq!(shapes[0], Shape { seq_len: 512, micro_batch: 4, grad_accum: 4, recompute: false });
        assert_eq!(shapes[1], Shape { seq_len: 512, micro_batch: 4, grad_accum: 4, recompute: true });
        assert_eq!(shapes[2], Shape { seq_len: 512, micro_batch: 2, grad_accum: 8, recompute: false });
        let big = choose(&inp, 1 << 20, &shapes).unwrap();
        assert_eq!(big.shape, shapes[0]);
        assert!(big.rejected.is_empty());
        let need0 = estimate(&inp, &shapes[0], false).total / MIB;
        let tight = choose(&inp, need0 - 1, &shapes).unwrap();
        assert_ne!(tight.shape, shapes[0]);
        assert!(tight.estimate.total <= (need0 - 1) * MIB);
        let e = choose(&inp, 100, &shapes).unwrap_err();
        assert!(e.to_string().contains("100 MiB"), "{e}");
    }

    #[test]
    fn back_off_walks_down_to_nothing() {
        let mut s = Shape { seq_len: 128, micro_batch: 4, grad_accum: 2, recompute: false };
        let mut seen = vec![s];
        while let Some(n) = back_off(s) {
            assert!(n.micro_batch * n.grad_accum * n.seq_len >= s.micro_batch * s.grad_accum * s.seq_len);
            s = n;
            seen.push(s);
        }
        assert_eq!(seen[1], Shape { seq_len: 128, micro_batch: 2, grad_accum: 4, recompute: false });
        assert_eq!(seen[3], Shape { seq_len: 128, micro_batch: 1, grad_accum: 8, recompute: true });
        assert_eq!(s.seq_len, 32);
    }

    #[test]
    fn oom_messages_are_recognized() {
        assert!(is_oom("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"));
        assert!(is_oom("memory allocation of 123 bytes failed"));
        assert!(!is_oom("shape mismatch in matmul"));
    }

    /// The GPU estimate against the process peaks measured on an H200 for the Qwen2-1.5B shape
    /// (NF4 projections, Q8_0 tied head, recomputation; bench/gpu-h200.json, third series):
    /// within a fifth of each.
    #[test]
    fn cuda_estimate_is_within_a_fifth_of_h200_peaks() {
        let qwen = |rank: usize, targets: usize, lora_params: u64| PlanInput {
            dims: Dims {
                hidden: 1536,
                intermediate: 8960,
                layers: 28,
                heads: 12,
                kv_heads: 2,
                head_dim: 128,
                vocab: 151_936,
            },
            device: DeviceKind::Cuda,
            weight_bytes: 932_528_272,
            dense_bytes: 0,
            lora_params,
            rank,
            targets_per_block: targets,
            act_bytes: 2,
            ce_chunk: 64,
            host_data_bytes: 0,
        };
        let shape = |seq_len| Shape { seq_len, micro_batch: 1, grad_accum: 1, recompute: true };
        let all = qwen(16, 7, 18_464_768);
        // (input, seq, measured MiB): bf16 runs of the main call, f16 ones, and the first call's
        // seq-512 runs (the highest and lowest pool figures seen).
        let runs = [
            (qwen(8, 4, 2_179_072), 512, 2152.0),
            (all.clone(), 512, 2856.0),
            (all.clone(), 1024, 2600.0),
            (all.clone(), 2048, 2952.0),
            (all.clone(), 512, 2536.0),
            (all.clone(), 2048, 2984.0),
            (all.clone(), 512, 3240.0),
            (all, 512, 2280.0),
        ];
        for (inp, seq, measured) in runs {
            let ratio = estimate(&inp, &shape(seq), false).total_mib() / measured;
            assert!((0.8..=1.2).contains(&ratio), "seq {seq}, r={}: predicted/measured {ratio:.3}", inp.rank);
        }
    }
}
