//! One optimizer step at a time: micro-batches through
//! `Base::loss_and_grads`, gradients summed across the accumulation window,
//! divided by the step's target-token count (so k micro-batches equal one
//! batch of k), unscaled and checked for overflow under f16 loss scaling,
//! clipped by global norm, and applied by AdamW at the scheduled rate.
//!
//! The loss reported is the true per-token cross-entropy of the whole step
//! (sum of CE over every counted target / number of targets), never divided
//! by the accumulation factor.

use std::time::Instant;

use candle_core::{Device, Tensor, Var};

use super::checkpoint::{self, Loaded, Shape, TrainState};
use super::dataset::{BatchData, Row, RowStream};
use super::optim::{self, AdamW, AdamWParams};
use super::plan;
use super::scaler::LossScaler;
use super::schedule::Schedule;
use super::TrainError;
use crate::model::DEFAULT_CE_CHUNK;
use crate::model::{phases, Adapter, Base, Batch, TrainOptions};

/// Figures of one optimizer step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepReport {
    /// 1-based: optimizer steps completed after this one.
    pub step: usize,
    /// Per-token cross-entropy over the step's counted targets.
    pub loss: f64,
    pub target_tokens: usize,
    /// Positions run through the model (rows × sequence length).
    pub positions: usize,
    pub lr: f64,
    /// Global gradient norm before clipping (None when the step was skipped).
    pub grad_norm: Option<f64>,
    /// True when f16 overflow (or an empty step) left the weights unchanged.
    pub skipped: bool,
    pub secs: f64,
    pub positions_per_s: f64,
    pub peak_mem_bytes: Option<u64>,
}

/// One step's gradients before clipping and the update.
#[derive(Debug)]
pub struct StepGrads {
    /// In the adapter's `vars()` order.
    pub grads: Vec<Tensor>,
    pub loss_sum: f64,
    pub tokens: usize,
    pub positions: usize,
}

/// A test hook that can make a micro-batch fail (simulating out-of-memory).
pub type FaultHook<'a> = Box<dyn FnMut(&Shape) -> Option<String> + 'a>;

/// The optimizer loop's state around a shared base model and one adapter.
pub struct Trainer<'a> {
    base: &'a Base,
    adapter: &'a Adapter,
    vars: Vec<Var>,
    opt: AdamW,
    pub shape: Shape,
    pub schedule: Schedule,
    pub scaler: LossScaler,
    pub grad_clip: f64,
    pub ce_chunk: usize,
    pub dropout: bool,
    /// Optimizer steps completed.
    pub step: usize,
    pub seed: u64,
    dropout_calls: u64,
    pub fault: Option<FaultHook<'a>>,
}

impl<'a> Trainer<'a> {
    /// `seed` must be the one the adapter was created with (it is recorded in checkpoints).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        base: &'a Base,
        adapter: &'a Adapter,
        shape: Shape,
        schedule: Schedule,
        scaler: LossScaler,
        adam: AdamWParams,
        grad_clip: f64,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let named = adapter.vars();
        let vars = named.iter().map(|(_, v)| v.clone()).collect();
        let opt = AdamW::new(named, adam)?;
        Ok(Self {
            base,
            adapter,
            vars,
            opt,
            shape,
            schedule,
            scaler,
            grad_clip,
            ce_chunk: DEFAULT_CE_CHUNK,
            dropout: adapter.lora().dropout > 0.0,
            step: 0,
            seed,
            dropout_calls: 0,
            fault: None,
        })
    }

    pub fn adapter(&self) -> &Adapter {
        self.adapter
    }

    fn options(&self) -> TrainOptions {
        TrainOptions {
            recompute: self.shape.recompute,
            dropout: self.dropout,
            ce_chunk: self.ce_chunk,
            loss_scale: self.scaler.scale(),
        }
    }

    /// One optimizer step over `grad_accum` micro-batches from `data`. On an
    /// error the data position is where the step began (so a caller that backs
    /// off after out-of-memory redoes the same rows).
    pub fn step(&mut self, data: &mut RowStream) -> Result<StepReport, TrainError> {
        let start = data.position();
        match self.step_inner(data) {
            Ok(r) => Ok(r),
            Err(e) => {
                data.seek(start);
                Err(e)
            }
        }
    }

    /// Run the step's `grad_accum` micro-batches and return the summed
    /// gradients divided by the step's target-token count (and the loss
    /// scale): the gradient of the mean per-token cross-entropy.
    pub fn accumulate(&mut self, data: &mut RowStream) -> Result<StepGrads, TrainError> {
        let opts = self.options();
        let device = self.base.device().clone();
        let mut acc: Vec<Option<Tensor>> = vec![None; self.vars.len()];
        let (mut loss_sum, mut tokens, mut positions) = (0f64, 0usize, 0usize);
        for _ in 0..self.shape.grad_accum {
            let rows = data.next_rows(self.shape.micro_batch);
            let bd = BatchData::from_rows(&rows);
            if let Some(msg) = self.fault.as_mut().and_then(|f| f(&self.shape)) {
                return Err(TrainError::from_message(msg));
            }
            let batch = to_batch(&bd, &device)?;
            self.dropout_calls += 1;
            let out =
                self.base.loss_and_grads(&batch, self.adapter, &opts).map_err(TrainError::from_model)?;
            loss_sum += out.loss_sum;
            tokens += out.tokens;
            positions += bd.rows * bd.seq_len;
            for (slot, var) in acc.iter_mut().zip(&self.vars) {
                if let Some(g) = out.grads.get(var.as_tensor()) {
                    *slot = Some(match slot.take() {
                        Some(a) => (a + g)?,
                        None => g.clone(),
                    });
                }
            }
        }
        let k = 1.0 / (tokens.max(1) as f64 * f64::from(self.scaler.scale()));
        let mut grads = Vec::with_capacity(self.vars.len());
        for (slot, var) in acc.into_iter().zip(&self.vars) {
            grads.push(match slot {
                Some(g) => (g * k)?,
                None => var.as_tensor().zeros_like()?,
            });
        }
        Ok(StepGrads { grads, loss_sum, tokens, positions })
    }

    fn step_inner(&mut self, data: &mut RowStream) -> Result<StepReport, TrainError> {
        let t0 = Instant::now();
        let dev = self.base.device().clone();
        phases::start(&dev);
        let StepGrads { mut grads, loss_sum, tokens, positions } = self.accumulate(data)?;
        phases::mark(&dev, "gradient sums");
        let lr = self.schedule.lr(self.step);
        let mut grad_norm = None;
        let mut skipped = true;
        if tokens > 0 {
            // A NaN or ±inf in any gradient makes the norm non-finite: one pass answers both.
            let norm = optim::global_norm(&grads)?;
            phases::mark(&dev, "norm");
            if self.scaler.update(norm.is_finite()) {
                let f = optim::clip_factor(norm, self.grad_clip);
                if f != 1.0 {
                    for g in &mut grads {
                        *g = (&*g * f)?;
                    }
                }
                self.opt.step(&grads, lr)?;
                phases::mark(&dev, "clip+optimizer");
                grad_norm = Some(norm);
                skipped = false;
            } else {
                tracing::warn!(
                    step = self.step + 1,
                    scale = self.scaler.scale,
                    "gradient overflow; step skipped"
                );
            }
        }
        self.step += 1;
        phases::report();
        phases::report_pool();
        let secs = t0.elapsed().as_secs_f64();
        Ok(StepReport {
            step: self.step,
            loss: if tokens > 0 { loss_sum / tokens as f64 } else { f64::NAN },
            target_tokens: tokens,
            positions,
            lr,
            grad_norm,
            skipped,
            secs,
            positions_per_s: positions as f64 / secs.max(1e-9),
            peak_mem_bytes: peak_memory(self.base.device()),
        })
    }

    /// The resumable state for a checkpoint at the current step.
    pub fn state(&self, run_id: i64, data: &RowStream) -> TrainState {
        TrainState {
            version: checkpoint::FORMAT_VERSION,
            run_id,
            step: self.step,
            schedule: self.schedule,
            position: data.position(),
            seed: self.seed,
            dropout_calls: self.dropout_calls,
            scaler: self.scaler,
            shape: self.shape,
            adam_t: self.opt.steps_taken(),
        }
    }

    /// Write a checkpoint into `dir`, keeping the newest `keep`.
    pub fn save(
        &self,
        dir: &std::path::Path,
        run_id: i64,
        data: &RowStream,
        keep: usize,
    ) -> Result<std::path::PathBuf, TrainError> {
        let weights: Vec<(String, Tensor)> =
            self.adapter.vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        checkpoint::save(dir, &self.state(run_id, data), &weights, &self.opt.state()?, keep)
    }

    /// Continue from a checkpoint: weights, moments, step, schedule, scaler,
    /// shape and the adapter's dropout stream. The adapter must be freshly
    /// created with the checkpoint's seed.
    pub fn restore(&mut self, loaded: Loaded, data: &mut RowStream) -> Result<(), TrainError> {
        let path = loaded.path.clone();
        let bad = |reason: String| TrainError::Checkpoint { path: path.clone(), reason };
        if loaded.state.seed != self.seed {
            return Err(bad(format!(
                "adapter seed {} differs from the run's {}",
                self.seed, loaded.state.seed
            )));
        }
        let mut by_name: std::collections::HashMap<String, Tensor> = loaded.adapter.into_iter().collect();
        for (name, var) in self.adapter.vars() {
            let t = by_name.remove(&name).ok_or_else(|| bad(format!("no weights for {name}")))?;
            if t.shape() != var.shape() {
                return Err(bad(format!(
                    "{name} has shape {:?}, adapter wants {:?}",
                    t.shape(),
                    var.shape()
                )));
            }
            var.set(&t.to_device(var.device())?)?;
        }
        if let Some(extra) = by_name.keys().next() {
            return Err(bad(format!("weights for {extra}, which this adapter does not have")));
        }
        self.opt.load_state(loaded.adam)?;
        let s = loaded.state;
        self.step = s.step;
        self.schedule = s.schedule;
        self.scaler = s.scaler;
        self.shape = s.shape;
        self.dropout_calls = s.dropout_calls;
        for _ in 0..s.dropout_calls {
            self.adapter.next_step();
        }
        data.seek(s.position);
        Ok(())
    }

    /// Take the next smaller shape after an out-of-memory error; false at the bottom.
    pub fn back_off(&mut self) -> bool {
        match plan::back_off(self.shape) {
            Some(s) => {
                tracing::warn!(from = ?self.shape, to = ?s, "out of memory; backing off");
                self.shape = s;
                true
            }
            None => false,
        }
    }
}

/// Upload a micro-batch.
pub fn to_batch(bd: &BatchData, device: &Device) -> Result<Batch, TrainError> {
    let shape = (bd.rows, bd.seq_len);
    Ok(Batch {
        input_ids: Tensor::from_vec(bd.input.clone(), shape, device)?,
        targets: Tensor::from_vec(bd.target.clone(), shape, device)?,
        loss_mask: Tensor::from_vec(bd.mask.clone(), shape, device)?,
        segment_ids: Some(Tensor::from_vec(bd.segment.clone(), shape, device)?),
    })
}

/// Per-token cross-entropy of `rows` under base + adapter (no gradients):
/// the held-out loss. `None` when the rows hold no target.
pub fn eval_loss(
    base: &Base,
    adapter: Option<&Adapter>,
    rows: &[Row],
    micro_batch: usize,
) -> Result<Option<f64>, TrainError> {
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in rows.chunks(micro_batch.max(1)) {
        let refs: Vec<&Row> = chunk.iter().collect();
        let bd = BatchData::from_rows(&refs);
        let batch = to_batch(&bd, base.device())?;
        let lp = base.target_logprobs(&batch, adapter).map_err(TrainError::from_model)?;
        let lp = lp.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        for (l, m) in lp.iter().zip(&bd.mask) {
            if *m != 0.0 {
                sum -= f64::from(*l);
                n += 1;
            }
        }
    }
    Ok((n > 0).then(|| sum / n as f64))
}

/// Peak memory so far: VmHWM on CPU; on CUDA the device's used memory now
/// (the driver keeps no per-process high-water mark), context included.
pub fn peak_memory(device: &Device) -> Option<u64> {
    match device {
        Device::Cpu => crate::sys::peak_rss_bytes(),
        _ => cuda_used_bytes(device),
    }
}

#[cfg(feature = "cuda")]
fn cuda_used_bytes(device: &Device) -> Option<u64> {
    use candle_core::cuda::cudarc::driver::result;
    let Device::Cuda(d) = device else { return None };
    d.cuda_stream().context().bind_to_thread().ok()?;
    let (free, total) = result::mem_get_info().ok()?;
    Some((total - free) as u64)
}

#[cfg(not(feature = "cuda"))]
fn cuda_used_bytes(_device: &Device) -> Option<u64> {
    None
}
