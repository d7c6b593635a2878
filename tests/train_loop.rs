//! The optimizer loop on tiny random models (tokenizer-free id data): it
//! learns a memorizable set, accumulation is exact, prompts carry no loss,
//! a checkpoint resumes to the same loss trajectory, and an out-of-memory
//! error backs off to a smaller step without changing what is learned.

use candle_core::{Device, Tensor};
use warsha::model::{Adapter, Base, LoadOptions, LoraConfig, ModelConfig, QuantKind, Target};
use warsha::train::checkpoint::{self, Shape};
use warsha::train::dataset::{self, Row, RowStream, Sample, SplitMix64};
use warsha::train::optim::AdamWParams;
use warsha::train::scaler::LossScaler;
use warsha::train::schedule::Schedule;
use warsha::train::trainer::{self, Trainer};
use warsha::train::TrainError;

fn tiny(name: &str) -> Base {
    let cfg = ModelConfig::from_shape_name(name).unwrap();
    Base::random(&cfg, QuantKind::Q4K, 3, &LoadOptions::default()).unwrap()
}

fn lora(rank: usize, dropout: f64) -> LoraConfig {
    LoraConfig { rank, alpha: 2.0 * rank as f64, dropout, targets: Target::ALL.to_vec() }
}

/// Chat-like samples: a prompt (no loss) then an answer and an end id (loss).
fn qa_samples(n: usize, seed: u64) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let prompt: Vec<u32> =
                std::iter::once(1).chain((0..6).map(|_| 10 + rng.below(300) as u32)).collect();
            let answer: Vec<u32> = (0..5).map(|_| 10 + rng.below(300) as u32).chain([2]).collect();
            (prompt, answer)
        })
        .collect()
}

fn chat(prompt: &[u32], answer: &[u32]) -> Sample {
    let ids: Vec<u32> = prompt.iter().chain(answer).copied().collect();
    let loss_on = (0..ids.len()).map(|i| i >= prompt.len()).collect();
    Sample { ids, loss_on }
}

fn random_doc_rows(n: usize, seq: usize, seed: u64) -> Vec<Row> {
    let mut rng = SplitMix64::new(seed);
    let samples: Vec<Sample> = (0..n)
        .map(|i| {
            let len = seq + 1 - (i % 3) * 3;
            Sample::causal((0..len).map(|_| rng.below(384) as u32).collect())
        })
        .collect();
    dataset::pack(&samples, seq)
}

fn trainer<'a>(base: &'a Base, adapter: &'a Adapter, shape: Shape, lr: f64, steps: usize) -> Trainer<'a> {
    Trainer::new(
        base,
        adapter,
        shape,
        Schedule::new(lr, 2, steps),
        LossScaler::disabled(),
        AdamWParams::default(),
        1.0,
        17,
    )
    .unwrap()
}

fn greedy(base: &Base, adapter: &Adapter, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = base.new_cache();
    let mut ids = Tensor::new(prompt, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = base.forward(&ids, &mut cache, Some(adapter)).unwrap();
        let next = logits.squeeze(0).unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap();
        out.push(next);
        ids = Tensor::new(&[next], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    }
    out
}

#[test]
fn fifty_steps_memorize_answers_that_greedy_decoding_reproduces() {
    let base = tiny("tiny-llama");
    let adapter = Adapter::new(&base.config, &lora(8, 0.0), 17, &Device::Cpu).unwrap();
    let qa = qa_samples(4, 5);
    let samples: Vec<Sample> = qa.iter().map(|(p, a)| chat(p, a)).collect();
    let mut stream = RowStream::new(Vec::new(), dataset::pack(&samples, 32), 1);
    let shape = Shape { seq_len: 32, micro_batch: 1, grad_accum: 2, recompute: false };
    let mut tr = trainer(&base, &adapter, shape, 1e-2, 50);
    let mut losses = Vec::new();
    for _ in 0..50 {
        losses.push(tr.step(&mut stream).unwrap().loss);
    }
    let first = losses[0];
    let last = losses[45..].iter().sum::<f64>() / 5.0;
    assert!(first > 4.0, "a random model starts near ln(384): {first}");
    assert!(last < 0.1 * first, "loss did not fall: {first} -> {last} ({losses:?})");
    for (p, a) in &qa {
        assert_eq!(&greedy(&base, &adapter, p, a.len()), a, "prompt {p:?}");
    }
}

#[test]
fn k_accumulated_micro_batches_equal_one_batch_of_k() {
    let base = tiny("tiny-qwen2");
    let rows = random_doc_rows(4, 24, 9);
    assert_eq!(rows.len(), 4);
    let a1 = Adapter::new(&base.config, &lora(4, 0.0), 17, &Device::Cpu).unwrap();
    let a2 = Adapter::new(&base.config, &lora(4, 0.0), 17, &Device::Cpu).unwrap();
    // B starts at zero, so give both adapters the same non-zero B to exercise every gradient.
    for ((_, v1), (_, v2)) in a1.vars().iter().zip(a2.vars()) {
        let t = (v1.as_tensor().ones_like().unwrap() * 0.01).unwrap();
        v1.set(&t).unwrap();
        v2.set(&t).unwrap();
    }
    let mut s1 = RowStream::new(rows.clone(), Vec::new(), 4);
    let mut s2 = RowStream::new(rows, Vec::new(), 4);
    let mut t1 =
        trainer(&base, &a1, Shape { seq_len: 24, micro_batch: 1, grad_accum: 4, recompute: false }, 1e-3, 4);
    let mut t2 =
        trainer(&base, &a2, Shape { seq_len: 24, micro_batch: 4, grad_accum: 1, recompute: true }, 1e-3, 4);
    let g1 = t1.accumulate(&mut s1).unwrap();
    let g2 = t2.accumulate(&mut s2).unwrap();
    assert_eq!(g1.tokens, g2.tokens);
    assert!(
        (g1.loss_sum - g2.loss_sum).abs() < 1e-3 * g1.loss_sum.abs(),
        "{} vs {}",
        g1.loss_sum,
        g2.loss_sum
    );
    let mut worst = 0f32;
    let mut nonzero = 0;
    for (x, y) in g1.grads.iter().zip(&g2.grads) {
        let d = (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        worst = worst.max(d);
        if x.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0 {
            nonzero += 1;
        }
    }
    assert!(worst < 1e-5, "accumulated gradients differ by {worst}");
    assert_eq!(nonzero, g1.grads.len(), "every LoRA parameter gets a gradient");
}

#[test]
fn prompt_tokens_of_a_chat_sample_carry_no_loss() {
    let base = tiny("tiny-llama");
    let adapter = Adapter::new(&base.config, &lora(4, 0.0), 17, &Device::Cpu).unwrap();
    let (p, a) = &qa_samples(1, 8)[0];
    let rows = dataset::pack(&[chat(p, a)], 16);
    let mut stream = RowStream::new(Vec::new(), rows.clone(), 1);
    let mut tr = trainer(
        &base,
        &adapter,
        Shape { seq_len: 16, micro_batch: 1, grad_accum: 1, recompute: false },
        1e-3,
        1,
    );
    let g = tr.accumulate(&mut stream).unwrap();
    assert_eq!(g.tokens, a.len(), "only answer and end tokens count");
    // The loss equals -log p over the answer positions alone.
    let bd = dataset::BatchData::from_rows(&[&rows[0]]);
    let lp = base
        .target_logprobs(&trainer::to_batch(&bd, &Device::Cpu).unwrap(), Some(&adapter))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let answer_only: f64 =
        lp.iter().zip(&bd.mask).filter(|(_, &m)| m != 0.0).map(|(&l, _)| -(l as f64)).sum();
    assert!((g.loss_sum - answer_only).abs() < 1e-3, "{} vs {answer_only}", g.loss_sum);
    let held = trainer::eval_loss(&base, Some(&adapter), &rows, 1).unwrap().unwrap();
    assert!((held - answer_only / a.len() as f64).abs() < 1e-4);
}

/// Run `steps` optimizer steps, optionally checkpointing after `ckpt_at`.
fn run_steps(
    base: &Base,
    from: Option<&std::path::Path>,
    ckpt: Option<(&std::path::Path, usize)>,
    steps: usize,
) -> Vec<f64> {
    let adapter = Adapter::new(&base.config, &lora(4, 0.1), 17, &Device::Cpu).unwrap();
    let mut stream =
        RowStream::new(random_doc_rows(5, 24, 2), dataset::pack(&[chat(&[1, 5, 6], &[7, 8, 2])], 24), 3);
    let shape = Shape { seq_len: 24, micro_batch: 2, grad_accum: 2, recompute: false };
    let mut tr = trainer(base, &adapter, shape, 5e-3, steps);
    if let Some(dir) = from {
        let l = checkpoint::load_latest(dir, &Device::Cpu).unwrap().unwrap();
        tr.restore(l, &mut stream).unwrap();
    }
    let mut losses = Vec::new();
    while tr.step < steps {
        losses.push(tr.step(&mut stream).unwrap().loss);
        if let Some((dir, at)) = ckpt {
            if tr.step == at {
                tr.save(dir, 1, &stream, 2).unwrap();
            }
        }
    }
    losses
}

#[test]
fn resumed_checkpoint_continues_the_same_loss_trajectory() {
    let base = tiny("tiny-qwen2");
    let dir = tempfile::tempdir().unwrap();
    let full = run_steps(&base, None, Some((dir.path(), 4)), 8);
    // A fresh adapter, optimizer and data stream, restored from step 4, with dropout on.
    let resumed = run_steps(&base, Some(dir.path()), None, 8);
    assert_eq!(resumed.len(), 4);
    for (a, b) in full[4..].iter().zip(&resumed) {
        assert!((a - b).abs() < 1e-5, "{:?} vs {resumed:?}", &full[4..]);
    }
    assert!(full.iter().all(|l| l.is_finite()));
}

#[test]
fn out_of_memory_backs_off_and_learns_the_same() {
    let base = tiny("tiny-qwen2");
    let rows = random_doc_rows(6, 24, 4);
    let reference = {
        let adapter = Adapter::new(&base.config, &lora(4, 0.0), 17, &Device::Cpu).unwrap();
        let mut s = RowStream::new(rows.clone(), Vec::new(), 5);
        let mut tr = trainer(
            &base,
            &adapter,
            Shape { seq_len: 24, micro_batch: 1, grad_accum: 4, recompute: false },
            5e-3,
            3,
        );
        (0..3).map(|_| tr.step(&mut s).unwrap().loss).collect::<Vec<_>>()
    };
    let adapter = Adapter::new(&base.config, &lora(4, 0.0), 17, &Device::Cpu).unwrap();
    let mut s = RowStream::new(rows, Vec::new(), 5);
    let mut tr = trainer(
        &base,
        &adapter,
        Shape { seq_len: 24, micro_batch: 4, grad_accum: 1, recompute: false },
        5e-3,
        3,
    );
    // The device "runs out of memory" for any micro-batch above one row.
    tr.fault = Some(Box::new(|s: &Shape| {
        (s.micro_batch > 1).then(|| "CUDA_ERROR_OUT_OF_MEMORY: out of memory".to_string())
    }));
    let mut losses = Vec::new();
    let mut backoffs = 0;
    while tr.step < 3 {
        match tr.step(&mut s) {
            Ok(r) => losses.push(r.loss),
            Err(TrainError::OutOfMemory(_)) => {
                assert!(tr.back_off());
                backoffs += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(backoffs, 2);
    assert_eq!(tr.shape, Shape { seq_len: 24, micro_batch: 1, grad_accum: 4, recompute: false });
    for (a, b) in losses.iter().zip(&reference) {
        assert!((a - b).abs() < 1e-5, "{losses:?} vs {reference:?}");
    }
}
