//! Training and scoring on top of the decoder: the loss and adapter gradients
//! of one micro-batch (with optional per-block recomputation), and teacher-forced
//! log-probabilities. The lm_head and cross-entropy run over chunks of positions
//! (`fused_ce.rs`), so logits for a whole sequence never exist at once and nothing of
//! (positions × vocabulary) size outlives a chunk; the final hidden state's gradient is
//! then pushed through the blocks.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var, D};

use super::block::{rms_norm_train, TrainGeom};
use crate::model::error::{ModelError, Result};
use crate::model::phases;
use crate::model::{Adapter, Base, Batch, LossOut, TrainOptions};
use crate::train::ops::fused_ce::head_cross_entropy;

impl Batch {
    fn dims(&self) -> Result<(usize, usize)> {
        let (b, t) = self.input_ids.dims2()?;
        for (name, x) in [("targets", &self.targets), ("loss_mask", &self.loss_mask)] {
            if x.dims() != [b, t] {
                return Err(ModelError::Input(format!(
                    "{name} has shape {:?}, expected [{b}, {t}]",
                    x.dims()
                )));
            }
        }
        Ok((b, t))
    }

    /// Targets (flattened) with unmasked positions set to 0 so any id is accepted there,
    /// and the mask as f32, both on `device`.
    fn flat_targets(&self, vocab: usize, device: &Device) -> Result<(Tensor, Tensor, Vec<f32>)> {
        let (tg, mask) = self.host_targets(vocab)?;
        let n = tg.len();
        Ok((Tensor::from_vec(tg, n, device)?, Tensor::from_vec(mask.clone(), n, device)?, mask))
    }

    /// [`Batch::flat_targets`] on the host: targets (unmasked positions set to 0) and mask.
    pub(crate) fn host_targets(&self, vocab: usize) -> Result<(Vec<u32>, Vec<f32>)> {
        let mask: Vec<f32> = self.loss_mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut tg: Vec<u32> = self.targets.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        for (i, (t, m)) in tg.iter_mut().zip(&mask).enumerate() {
            if *m == 0.0 {
                *t = 0;
            } else if *t as usize >= vocab {
                return Err(ModelError::Input(format!(
                    "target id {t} at position {i} is outside the vocabulary"
                )));
            }
        }
        Ok((tg, mask))
    }
}

impl Base {
    /// Final norm + lm_head + log-softmax for rows of hidden states (n, hidden): (n, vocab) f32.
    fn head_logprobs(&self, h: &Tensor) -> Result<Tensor> {
        let hn = rms_norm_train(h, &self.final_norm, self.config.rms_eps)?;
        let logits = self.lm_head.forward(&hn)?.to_dtype(DType::F32)?;
        Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
    }

    fn check_adapter(&self, adapter: &Adapter) -> Result<()> {
        if adapter.num_layers() != self.config.num_layers {
            return Err(ModelError::Input(format!(
                "adapter has {} layers, model {}",
                adapter.num_layers(),
                self.config.num_layers
            )));
        }
        Ok(())
    }

    /// Training: loss and gradients of the adapter's vars for one micro-batch. f32 on the
    /// host runs the CPU path (`train::cpu`), everything else candle's autograd graph.
    pub fn loss_and_grads(&self, batch: &Batch, adapter: &Adapter, opts: &TrainOptions) -> Result<LossOut> {
        self.check_adapter(adapter)?;
        batch.dims()?;
        if self.trains_on_cpu_path() {
            return self.cpu_loss_and_grads(batch, adapter, opts);
        }
        self.loss_and_grads_graph(batch, adapter, opts)
    }

    /// [`Base::loss_and_grads`] through candle's autograd graph, on any device.
    pub(crate) fn loss_and_grads_graph(
        &self,
        batch: &Batch,
        adapter: &Adapter,
        opts: &TrainOptions,
    ) -> Result<LossOut> {
        self.check_adapter(adapter)?;
        let (b, t) = batch.dims()?;
        let step = adapter.next_step();
        let drop = if opts.dropout { Some(step) } else { None };
        let geo = self.train_geom(b, t, batch.segment_ids.as_ref())?;
        let h0 = self.embed(&batch.input_ids.to_device(&self.device)?)?;
        phases::mark(&self.device, "mask+embed");
        let n_layers = self.layers.len();
        let mut out = GradStore::default();
        if !opts.recompute {
            let (loss_sum, tokens, mut grads) = self.backward_whole(&h0, &geo, batch, adapter, drop, opts)?;
            for (_, v) in adapter.vars() {
                if let Some(gv) = grads.remove(v.as_tensor()) {
                    out.insert(v.as_tensor(), gv);
                }
            }
            return Ok(LossOut { loss_sum, tokens, grads: out });
        }
        // Forward keeping only block inputs; the graphs of each block are dropped at once.
        let mut inputs = Vec::with_capacity(n_layers);
        let mut h = h0;
        for li in 0..n_layers {
            let next = self.block_train(li, &h, &geo, Some(adapter), drop)?.detach();
            inputs.push(h);
            h = next;
        }
        let (loss_sum, tokens, mut g) = self.chunked_ce(&h, batch, opts)?;
        phases::mark(&self.device, "lm_head+loss");
        if tokens > 0 {
            for li in (0..n_layers).rev() {
                let hv = Var::from_tensor(&inputs[li])?;
                let y = self.block_train(li, hv.as_tensor(), &geo, Some(adapter), drop)?;
                let mut grads = (y * &g)?.sum_all()?.backward()?;
                phases::mark(&self.device, "block backward");
                for v in adapter.layer_vars(li) {
                    if let Some(gv) = grads.remove(v.as_tensor()) {
                        out.insert(v.as_tensor(), gv);
                    }
                }
                if li > 0 {
                    g = grads.remove(hv.as_tensor()).ok_or_else(|| {
                        ModelError::Input(format!("no gradient reached block {li}'s input"))
                    })?;
                }
                inputs.truncate(li);
                phases::mark(&self.device, "gradient bookkeeping");
            }
        }
        Ok(LossOut { loss_sum, tokens, grads: out })
    }

    /// One graph through all blocks and one backward; returns candle's whole GradStore.
    fn backward_whole(
        &self,
        h0: &Tensor,
        geo: &TrainGeom,
        batch: &Batch,
        adapter: &Adapter,
        drop: Option<u64>,
        opts: &TrainOptions,
    ) -> Result<(f64, usize, GradStore)> {
        let mut h = h0.clone();
        for li in 0..self.layers.len() {
            h = self.block_train(li, &h, geo, Some(adapter), drop)?;
        }
        let (loss_sum, tokens, g) = self.chunked_ce(&h.detach(), batch, opts)?;
        let grads = if tokens > 0 { (h * g)?.sum_all()?.backward()? } else { GradStore::default() };
        Ok((loss_sum, tokens, grads))
    }

    /// Masked cross-entropy over the final hidden states `h` (b, t, hidden), the lm_head and
    /// loss fused over chunks of positions. Returns the loss sum, the token count and
    /// ∂(loss·scale)/∂h (detached).
    pub(crate) fn chunked_ce(
        &self,
        h: &Tensor,
        batch: &Batch,
        opts: &TrainOptions,
    ) -> Result<(f64, usize, Tensor)> {
        let (b, t, hid) = h.dims3()?;
        let n = b * t;
        let (targets, mask, mask_host) = batch.flat_targets(self.config.vocab_size, &self.device)?;
        let tokens = mask_host.iter().filter(|&&m| m != 0.0).count();
        if tokens == 0 {
            return Ok((0.0, 0, h.zeros_like()?));
        }
        let hv = Var::from_tensor(&h.reshape((n, hid))?)?;
        let hn = rms_norm_train(hv.as_tensor(), &self.final_norm, self.config.rms_eps)?;
        let loss = head_cross_entropy(&hn, &self.lm_head, &targets, &mask, opts.ce_chunk)?.sum_all()?;
        let loss_sum = loss.to_scalar::<f32>()? as f64;
        let grads = (loss * opts.loss_scale as f64)?.backward()?;
        let g = grads
            .get(hv.as_tensor())
            .ok_or_else(|| ModelError::Input("no gradient reached the final hidden state".into()))?;
        Ok((loss_sum, tokens, g.reshape((b, t, hid))?))
    }

    /// Scoring (no grads): log p(target_t | ids_≤t) for every position, f32 (b, t).
    pub fn target_logprobs(&self, batch: &Batch, adapter: Option<&Adapter>) -> Result<Tensor> {
        if let Some(a) = adapter {
            self.check_adapter(a)?;
        }
        batch.dims()?;
        if self.trains_on_cpu_path() && self.lm_head.bias().is_none() {
            return self.cpu_target_logprobs(batch, adapter);
        }
        self.target_logprobs_graph(batch, adapter)
    }

    /// [`Base::target_logprobs`] through the decoder's tensor ops, on any device.
    pub(crate) fn target_logprobs_graph(&self, batch: &Batch, adapter: Option<&Adapter>) -> Result<Tensor> {
        let (b, t) = batch.dims()?;
        let geo: TrainGeom = self.train_geom(b, t, batch.segment_ids.as_ref())?;
        let mut h = self.embed(&batch.input_ids.to_device(&self.device)?)?;
        for li in 0..self.layers.len() {
            h = self.block_train(li, &h, &geo, adapter, None)?.detach();
        }
        let n = b * t;
        let hf = h.reshape((n, self.config.hidden_size))?;
        let mut tg: Vec<u32> = batch.targets.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        tg.iter_mut().for_each(|x| {
            if *x as usize >= self.config.vocab_size {
                *x = 0
            }
        });
        let tg = Tensor::from_vec(tg, n, &self.device)?;
        let chunk = 256;
        let mut pieces = Vec::new();
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let lp = self.head_logprobs(&hf.narrow(0, start, len)?)?.detach();
            pieces.push(lp.gather(&tg.narrow(0, start, len)?.unsqueeze(1)?, 1)?.squeeze(1)?);
        }
        Ok(Tensor::cat(&pieces, 0)?.reshape((b, t))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LoadOptions, LoraConfig, ModelConfig, QuantKind};

    /// The service shares one loaded base between the trainer and the query server.
    #[test]
    fn base_and_adapter_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Base>();
        shared::<Adapter>();
    }

    /// The whole backward over quantized layers: candle's GradStore must hold no tensor
    /// shaped like any frozen weight (only adapter vars and activation-shaped entries).
    #[test]
    fn backward_over_quantized_layers_holds_no_weight_sized_gradient() {
        for quant in [QuantKind::Nf4, QuantKind::Q4K] {
            let cfg = ModelConfig::from_shape_name("tiny-qwen2").unwrap();
            let base = Base::random(&cfg, quant, 1, &LoadOptions::default()).unwrap();
            let ad = Adapter::new(&cfg, &LoraConfig::default(), 2, &Device::Cpu).unwrap();
            let (b, t) = (2, 5);
            let ids = Tensor::from_vec((0..10u32).collect::<Vec<_>>(), (b, t), &Device::Cpu).unwrap();
            let batch = Batch {
                input_ids: ids.clone(),
                targets: ids,
                loss_mask: Tensor::ones((b, t), DType::F32, &Device::Cpu).unwrap(),
                segment_ids: None,
            };
            let geo = base.train_geom(b, t, None).unwrap();
            let h0 = base.embed(&batch.input_ids).unwrap();
            let opts = TrainOptions::default();
            let (_, _, grads) = base.backward_whole(&h0, &geo, &batch, &ad, Some(0), &opts).unwrap();
            let mut weight_shapes: Vec<Vec<usize>> = Vec::new();
            for l in &base.layers {
                for p in &l.proj {
                    let (o, i) = p.dims();
                    weight_shapes.push(vec![o, i]);
                }
            }
            weight_shapes.push(vec![cfg.vocab_size, cfg.hidden_size]);
            let var_ids: Vec<_> = ad.vars().iter().map(|(_, v)| v.as_tensor().id()).collect();
            let mut weight_like_bytes = 0usize;
            for id in grads.get_ids() {
                let g = grads.get_id(*id).unwrap();
                if var_ids.contains(id) {
                    continue;
                }
                assert!(
                    !weight_shapes.contains(&g.dims().to_vec()),
                    "{quant:?}: gradient of shape {:?}",
                    g.dims()
                );
                // Activation-shaped: (b, …) or flattened rows (b·t, …) such as a dropout mask.
                let act = g.rank() >= 3 || g.dims()[0] == b * t;
                assert!(act, "{quant:?}: non-activation gradient of shape {:?}", g.dims());
                weight_like_bytes += g.elem_count() * 4;
            }
            // Everything else is activation-sized bookkeeping of constants (norm weights,
            // RoPE tables, the mask): far below one projection's dense f32 gradient per layer.
            let dense_bytes: usize = weight_shapes.iter().map(|s| s[0] * s[1] * 4).sum();
            assert!(weight_like_bytes * 10 < dense_bytes, "{weight_like_bytes} vs {dense_bytes}");
            for id in &var_ids {
                assert!(grads.get_id(*id).is_some());
            }
        }
    }

    /// The training path (tiled attention, fused lm_head + cross-entropy, with and without
    /// recomputation) against one graph of the composite forms differentiated by candle:
    /// the loss and every LoRA tensor's gradient, over packed segments and masked positions.
    #[test]
    fn fused_training_path_matches_composite_loss_and_lora_gradients() {
        let cfg = ModelConfig::from_shape_name("tiny-qwen2").unwrap();
        let base = Base::random(&cfg, QuantKind::Nf4, 3, &LoadOptions::default()).unwrap();
        let ad = Adapter::new(&cfg, &LoraConfig::default(), 2, &Device::Cpu).unwrap();
        crate::model::testing::randomize_lora(&ad, 9);
        let (b, t) = (2, 21);
        let ids: Vec<u32> = (0..(b * t) as u32).map(|i| (i * 31 + 7) % cfg.vocab_size as u32).collect();
        let tg: Vec<u32> = ids.iter().map(|i| (i * 13 + 1) % cfg.vocab_size as u32).collect();
        let seg: Vec<u32> =
            (0..b * t).map(|p| if p < t { (p / 8) as u32 } else { u32::from(p % t >= 17) }).collect();
        let mask: Vec<f32> =
            (0..b * t).map(|p| if p % t >= 17 && p >= t || p % 5 == 0 { 0.0 } else { 1.0 }).collect();
        let dev = Device::Cpu;
        let batch = Batch {
            input_ids: Tensor::from_vec(ids, (b, t), &dev).unwrap(),
            targets: Tensor::from_vec(tg, (b, t), &dev).unwrap(),
            loss_mask: Tensor::from_vec(mask, (b, t), &dev).unwrap(),
            segment_ids: Some(Tensor::from_vec(seg, (b, t), &dev).unwrap()),
        };

        let mut geo = base.train_geom(b, t, batch.segment_ids.as_ref()).unwrap();
        geo.composite = true;
        let mut h = base.embed(&batch.input_ids).unwrap();
        for li in 0..cfg.num_layers {
            h = base.block_train(li, &h, &geo, Some(&ad), None).unwrap();
        }
        let lp = base.head_logprobs(&h.reshape((b * t, cfg.hidden_size)).unwrap()).unwrap();
        let picked = lp.gather(&batch.targets.flatten_all().unwrap().unsqueeze(1).unwrap(), 1).unwrap();
        let want = (picked.squeeze(1).unwrap() * batch.loss_mask.flatten_all().unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .neg()
            .unwrap();
        let want_grads = want.backward().unwrap();
        let want = want.to_scalar::<f32>().unwrap() as f64;

        let rel = |a: &Tensor, b: &Tensor| {
            let n = |x: Tensor| x.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
            n((a - b).unwrap()) / n(b.clone())
        };
        for recompute in [false, true] {
            for ce_chunk in [3, 128] {
                let opts = TrainOptions { recompute, dropout: false, ce_chunk, loss_scale: 1.0 };
                let out = base.loss_and_grads(&batch, &ad, &opts).unwrap();
                assert!(((out.loss_sum - want) / want).abs() < 1e-5, "loss {} vs {want}", out.loss_sum);
                for (name, v) in ad.vars() {
                    let g = out.grads.get(v.as_tensor()).unwrap();
                    let w = want_grads.get(v.as_tensor()).unwrap();
                    let e = rel(g, w);
                    assert!(e < 1e-5, "recompute {recompute}, chunk {ce_chunk}: {name} off by {e}");
                }
            }
        }
    }
}
