//! Training on the CPU without an autograd graph: each decoder block's forward keeps what
//! its hand-written backward needs, in plain row-major f32 buffers, and the backward walks
//! the blocks in reverse, producing the gradient of each block's input and the adapter's
//! gradients directly.
//!
//! The graph path (candle's autograd over tensor ops, `train::ops`) runs every small step — a
//! norm's square, mean, sqrt and divide, RoPE's narrow/neg/cat, a cast — as its own op with a
//! fresh buffer, and its backward as several more plus a gradient accumulation each. On a
//! two-core box those passes, not the matrix products, were two thirds of a step. Here each
//! step is one pass ([`ops`]), attention tiles its scores ([`attn`]), and every product is one
//! GEMM over views of the buffers ([`gemm`]). With a dense lm_head the head and cross-entropy
//! are one pass over the positions with loss ([`head`]); a quantized head goes through the
//! graph path's sliced op. Results agree with the graph path to float rounding (tests below).
//!
//! This path must not call candle's autograd (no `Var` backward, no graph ops in a block's
//! backward); it knows the model through `model::{Base, Adapter}` and nothing of SQLite.

mod attn;
mod block;
mod gemm;
pub(crate) mod head;
mod ops;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Storage, Tensor};

use crate::model::base::Base;
use crate::model::error::Result;
use crate::model::lora::Adapter;
use crate::model::phases;
use crate::model::weights::qlinear::{for_each_dense_slice, FrozenWeight, BWD_SLICE_ELEMS};
use crate::model::{Batch, LossOut, TrainOptions};
use crate::train::ops::attention::{segment_positions, segment_starts};
use block::Pass;

/// Calls `f` with the tensor's values as a contiguous f32 slice, borrowed when the tensor
/// already is one on the CPU, else converted once.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (s, l) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) = (&*s, l.contiguous_offsets()) {
            return Ok(f(&v[a..b]));
        }
    }
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(f(&v))
}

/// Calls `f` with a frozen weight as a dense (out, in) f32 matrix: the training copy itself
/// when the weights are held dense, else expanded for this one use.
fn with_weight<R>(w: &FrozenWeight, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    match w {
        FrozenWeight::Dense(t) => with_f32(t, f),
        other => with_f32(&other.dequantize(DType::F32)?, f),
    }
}

/// Calls `f(first_row, rows)` over row slices of a frozen weight as dense f32, each at most
/// a few MiB: borrowed from a dense copy, expanded slice by slice from GGUF blocks.
fn for_each_weight_rows(w: &FrozenWeight, mut f: impl FnMut(usize, &[f32])) -> Result<()> {
    let (n, k) = w.dims();
    match w {
        FrozenWeight::Ggml(q) if q.device().is_cpu() => {
            for_each_dense_slice(q, n, k, |r0, t| {
                with_f32(&t, |s| f(r0, s)).map_err(candle_core::Error::wrap)
            })?;
        }
        _ => with_weight(w, |all| {
            let rows = (BWD_SLICE_ELEMS / k.max(1)).max(1);
            for r0 in (0..n).step_by(rows) {
                f(r0, &all[r0 * k..(r0 + rows).min(n) * k]);
            }
        })?,
    }
    Ok(())
}

/// Per-position geometry of a batch: positions restart at each packed segment, and no
/// position sees keys before its segment's start.
pub(crate) struct Geometry {
    b: usize,
    t: usize,
    pos: Vec<u32>,
    seg_start: Vec<usize>,
}

impl Geometry {
    fn new(base: &Base, b: usize, t: usize, segments: Option<&Tensor>) -> Result<Self> {
        let seg: Vec<u32> = match segments {
            Some(s) => s.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?,
            None => vec![0; b * t],
        };
        let seg_start = segment_starts(&seg, b, t)?;
        let pos = segment_positions(&seg_start, t, base.config.max_position)?;
        Ok(Self { b, t, pos, seg_start })
    }
}

impl Base {
    /// Whether training runs on the CPU path of this module (f32 on the host).
    pub(crate) fn trains_on_cpu_path(&self) -> bool {
        self.device.is_cpu() && self.dtype == DType::F32
    }

    /// Scoring on the CPU path: `log p(target_t | ids_≤t)` for every position, (b, t) f32;
    /// see [`Base::target_logprobs`].
    pub(crate) fn cpu_target_logprobs(&self, batch: &Batch, adapter: Option<&Adapter>) -> Result<Tensor> {
        let (b, t) = batch.input_ids.dims2()?;
        let pass = Pass { adapter, dropout_step: None };
        let geo = Geometry::new(self, b, t, batch.segment_ids.as_ref())?;
        let mut h: Vec<f32> = self.embed(&batch.input_ids)?.flatten_all()?.to_vec1()?;
        for li in 0..self.layers.len() {
            h = self.cpu_block_forward(li, &h, &geo, &pass)?.0;
        }
        let vocab = self.config.vocab_size;
        let mut targets: Vec<u32> = batch.targets.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        targets.iter_mut().for_each(|x| {
            if *x as usize >= vocab {
                *x = 0
            }
        });
        let lp = with_f32(&self.final_norm, |norm| -> Result<Vec<f32>> {
            let mut acc = head::TargetLogProbs::new(&h, norm, self.config.rms_eps as f32, &targets);
            for_each_weight_rows(self.lm_head.weight(), |r0, w| acc.add_slice(r0, w))?;
            Ok(acc.finish())
        })??;
        Ok(Tensor::from_vec(lp, (b, t), &self.device)?)
    }

    /// The masked loss sum, the token count and `∂(loss · scale)/∂h` of the final hidden
    /// states `h` (b·t, hidden): in one pass with a dense lm_head, else through the graph
    /// path's op, which walks a quantized head in slices.
    fn cpu_head(&self, h: Vec<f32>, batch: &Batch, opts: &TrainOptions) -> Result<(f64, usize, Vec<f32>)> {
        let (b, t) = batch.input_ids.dims2()?;
        let (vocab, hid) = self.lm_head.dims();
        if let (FrozenWeight::Dense(w), None) = (self.lm_head.weight().as_ref(), self.lm_head.bias()) {
            let (targets, mask) = batch.host_targets(vocab)?;
            let tokens = mask.iter().filter(|&&m| m != 0.0).count();
            let (loss, g) = with_f32(w, |w| {
                with_f32(&self.final_norm, |norm| {
                    head::loss_and_grad(&head::HeadInput {
                        h: &h,
                        norm,
                        eps: self.config.rms_eps as f32,
                        w,
                        vocab,
                        targets: &targets,
                        mask: &mask,
                        scale: opts.loss_scale,
                    })
                })
            })??;
            return Ok((loss, tokens, g));
        }
        let last = Tensor::from_vec(h, (b, t, hid), &self.device)?;
        let (loss, tokens, g) = self.chunked_ce(&last, batch, opts)?;
        Ok((loss, tokens, g.flatten_all()?.to_vec1()?))
    }

    /// Loss and adapter gradients of one micro-batch; see [`Base::loss_and_grads`].
    pub(crate) fn cpu_loss_and_grads(
        &self,
        batch: &Batch,
        adapter: &Adapter,
        opts: &TrainOptions,
    ) -> Result<LossOut> {
        let (b, t) = batch.input_ids.dims2()?;
        let step = adapter.next_step();
        let pass = Pass { adapter: Some(adapter), dropout_step: opts.dropout.then_some(step) };
        let geo = Geometry::new(self, b, t, batch.segment_ids.as_ref())?;
        let n = self.layers.len();
        let mut h: Vec<f32> = self.embed(&batch.input_ids)?.flatten_all()?.to_vec1()?;
        phases::mark(&self.device, "mask+embed");
        // Block inputs always; the rest of each block's state only without recomputation.
        let mut inputs = Vec::with_capacity(n);
        let mut saved = Vec::with_capacity(if opts.recompute { 0 } else { n });
        for li in 0..n {
            let (out, s) = self.cpu_block_forward(li, &h, &geo, &pass)?;
            inputs.push(std::mem::replace(&mut h, out));
            if !opts.recompute {
                saved.push(s);
            }
        }
        phases::mark(&self.device, "blocks forward");
        let (loss_sum, tokens, g) = self.cpu_head(h, batch, opts)?;
        phases::mark(&self.device, "lm_head+loss");
        let mut grads = Vec::new();
        if tokens > 0 {
            let mut g = Some(g);
            for li in (0..n).rev() {
                let (Some(x), Some(dout)) = (inputs.pop(), g.take()) else { break };
                let s = match saved.pop() {
                    Some(s) => s,
                    None => self.cpu_block_forward(li, &x, &geo, &pass)?.1,
                };
                g = self.cpu_block_backward(li, &x, &s, dout, &geo, &pass, li > 0, &mut grads)?;
            }
        }
        phases::mark(&self.device, "blocks backward");
        let mut out = GradStore::default();
        for (v, gr) in grads {
            out.insert(v.as_tensor(), gr);
        }
        Ok(LossOut { loss_sum, tokens, grads: out })
    }
}

#[cfg(test)]
mod tests {
    use crate::model::testing::rel;
    use crate::model::{Adapter, Base, LoadOptions, LoraConfig, ModelConfig, QuantKind};
    use crate::model::{Batch, TrainOptions};
    use candle_core::{Device, Tensor};

    /// The CPU path against candle's autograd over the same model: loss and every LoRA
    /// gradient, over packed segments, masked positions and two rows, with dropout on and
    /// off, with and without recomputation, on both architectures' shapes (qwen2 has q/k/v
    /// biases).
    #[test]
    fn cpu_path_matches_the_autograd_graph() {
        for shape in ["tiny-qwen2", "tiny-llama"] {
            let Some(cfg) = ModelConfig::from_shape_name(shape) else { continue };
            let nf4 = Base::random(&cfg, QuantKind::Nf4, 3, &LoadOptions::default()).unwrap();
            // Dense weights take the one-pass lm_head and cross-entropy; NF4 the sliced op.
            let dense = crate::train::dense::densify(&nf4).unwrap();
            let ad = Adapter::new(&cfg, &LoraConfig::default(), 2, &Device::Cpu).unwrap();
            crate::model::testing::randomize_lora(&ad, 9);
            let (b, t) = (2, 70);
            let v = cfg.vocab_size as u32;
            let ids: Vec<u32> = (0..(b * t) as u32).map(|i| (i * 31 + 7) % v).collect();
            let tg: Vec<u32> = ids.iter().map(|i| (i * 13 + 1) % v).collect();
            let seg: Vec<u32> =
                (0..b * t).map(|p| if p < t { (p / 23) as u32 } else { u32::from(p % t >= 66) }).collect();
            let mask: Vec<f32> = (0..b * t).map(|p| if p % 7 == 0 { 0.0 } else { 1.0 }).collect();
            let dev = Device::Cpu;
            let batch = Batch {
                input_ids: Tensor::from_vec(ids, (b, t), &dev).unwrap(),
                targets: Tensor::from_vec(tg, (b, t), &dev).unwrap(),
                loss_mask: Tensor::from_vec(mask, (b, t), &dev).unwrap(),
                segment_ids: Some(Tensor::from_vec(seg, (b, t), &dev).unwrap()),
            };
            for (base, dropout, recompute) in [
                (&nf4, false, false),
                (&nf4, true, true),
                (&dense, false, false),
                (&dense, true, false),
                (&dense, true, true),
            ] {
                {
                    let opts = TrainOptions { recompute, dropout, ce_chunk: 32, loss_scale: 2.0 };
                    // Both passes draw the same dropout stream position.
                    let ad_step = ad.next_step();
                    ad.set_step(ad_step);
                    let want = base.loss_and_grads_graph(&batch, &ad, &opts).unwrap();
                    ad.set_step(ad_step);
                    let got = base.cpu_loss_and_grads(&batch, &ad, &opts).unwrap();
                    let dense = matches!(
                        base.lm_head().weight().as_ref(),
                        crate::model::weights::qlinear::FrozenWeight::Dense(_)
                    );
                    let what = format!("{shape}, dense {dense}, dropout {dropout}, recompute {recompute}");
                    assert_eq!(got.tokens, want.tokens);
                    assert!(((got.loss_sum - want.loss_sum) / want.loss_sum).abs() < 1e-5, "{what}: loss");
                    if !dropout {
                        let lp = base.cpu_target_logprobs(&batch, Some(&ad)).unwrap();
                        let lp_want = base.target_logprobs_graph(&batch, Some(&ad)).unwrap();
                        assert!(rel(&lp, &lp_want) < 1e-5, "{what}: log-probabilities");
                    }
                    for (name, v) in ad.vars() {
                        let (g, w) =
                            (got.grads.get(v.as_tensor()).unwrap(), want.grads.get(v.as_tensor()).unwrap());
                        let e = rel(g, w);
                        assert!(e < 1e-5, "{what}: {name} off by {e}");
                    }
                }
            }
        }
    }

    /// The same agreement on a real model at a real length (SmolLM2-135M from
    /// `WARSHA_TEST_GGUF`, 256 positions: four attention tiles, nine heads over three KV heads,
    /// a tied 49,152-token head), with dropout, on the dense training copy the trainer uses.
    #[test]
    fn cpu_path_matches_the_autograd_graph_on_a_real_model() {
        let Some(path) = std::env::var_os("WARSHA_TEST_GGUF").map(std::path::PathBuf::from) else {
            println!("skipping: WARSHA_TEST_GGUF not set");
            return;
        };
        let loaded = Base::load(&path, &LoadOptions::default()).unwrap();
        let base = crate::train::dense::densify(&loaded).unwrap();
        let ad = Adapter::new(&base.config, &LoraConfig::default(), 2, &Device::Cpu).unwrap();
        crate::model::testing::randomize_lora(&ad, 9);
        let t = 256;
        let v = base.config.vocab_size as u32;
        let ids: Vec<u32> = (0..t as u32).map(|i| (i * 7919 + 7) % v).collect();
        let dev = Device::Cpu;
        let batch = Batch {
            input_ids: Tensor::from_vec(ids.clone(), (1, t), &dev).unwrap(),
            targets: Tensor::from_vec(ids, (1, t), &dev).unwrap(),
            loss_mask: Tensor::ones((1, t), candle_core::DType::F32, &dev).unwrap(),
            segment_ids: None,
        };
        let opts = TrainOptions { recompute: false, dropout: true, ce_chunk: 64, loss_scale: 1.0 };
        let step = ad.next_step();
        ad.set_step(step);
        let want = base.loss_and_grads_graph(&batch, &ad, &opts).unwrap();
        ad.set_step(step);
        let got = base.cpu_loss_and_grads(&batch, &ad, &opts).unwrap();
        assert!(((got.loss_sum - want.loss_sum) / want.loss_sum).abs() < 1e-5, "loss");
        for (name, v) in ad.vars() {
            let e = rel(got.grads.get(v.as_tensor()).unwrap(), want.grads.get(v.as_tensor()).unwrap());
            // Thirty blocks of f32 rounding in different orders: the first layers' gradients
            // differ by up to ~1.2e-5.
            assert!(e < 1e-4, "{name} off by {e}");
        }
    }
}
