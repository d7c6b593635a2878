//! The final norm, the lm_head and the masked cross-entropy, forward and backward in one
//! pass over the positions that carry loss.
//!
//! The loss's own gradient is a constant, so each position's logit gradient
//! `(softmax − onehot) · mask · scale` is known as soon as its logits are: one product forms a
//! chunk's logits, the softmax turns them into their gradient in place, and a second product
//! takes that back to the hidden state. The graph path's op needs a third product (it
//! recomputes the logits in its backward). Positions without loss (prompt tokens, padding)
//! never meet the head at all.

use rayon::prelude::*;

use super::gemm::{matmul, threads_for, Mat};
use super::ops;

/// Bytes of logits one chunk may hold.
const CHUNK_BYTES: usize = 64 << 20;

/// Positions per chunk for a vocabulary: as many as [`CHUNK_BYTES`] of f32 logits hold (341
/// at 49,152 tokens, 110 at 151,936), at least 64. Each product re-packs the whole head, so
/// a chunk of 64 spent more time packing than multiplying.
pub fn chunk_rows(vocab: usize) -> usize {
    (CHUNK_BYTES / 4 / vocab.max(1)).max(64)
}

/// What one call needs: rows of final hidden states and their targets.
pub struct HeadInput<'a> {
    /// (n, hidden) before the final norm.
    pub h: &'a [f32],
    pub norm: &'a [f32],
    pub eps: f32,
    /// (vocab, hidden).
    pub w: &'a [f32],
    pub vocab: usize,
    pub targets: &'a [u32],
    pub mask: &'a [f32],
    /// Multiplies the gradient (loss scaling).
    pub scale: f32,
}

/// Returns the masked loss sum and `∂(loss · scale)/∂h` (n, hidden).
pub fn loss_and_grad(inp: &HeadInput) -> (f64, Vec<f32>) {
    let hid = inp.norm.len();
    let n = inp.targets.len();
    let (mut hn, mut rstd) = (vec![0.0f32; n * hid], vec![0.0f32; n]);
    ops::rms_norm(inp.h, inp.norm, inp.eps, &mut hn, &mut rstd);
    let rows: Vec<usize> = (0..n).filter(|&i| inp.mask[i] != 0.0).collect();
    let mut dhn = vec![0.0f32; n * hid];
    let mut loss = 0f64;
    let chunk_len = chunk_rows(inp.vocab).min(rows.len().max(1));
    let (mut x, mut g) = (vec![0.0f32; chunk_len * hid], vec![0.0f32; chunk_len * hid]);
    let mut logits = vec![0.0f32; chunk_len * inp.vocab];
    let wv = Mat::new(inp.w, inp.vocab, hid);
    for chunk in rows.chunks(chunk_len) {
        let m = chunk.len();
        for (j, &i) in chunk.iter().enumerate() {
            x[j * hid..(j + 1) * hid].copy_from_slice(&hn[i * hid..(i + 1) * hid]);
        }
        let l = &mut logits[..m * inp.vocab];
        matmul(
            l,
            inp.vocab,
            Mat::new(&x[..m * hid], m, hid),
            wv.t(),
            1.0,
            false,
            threads_for(m, inp.vocab, hid),
        );
        loss += l
            .par_chunks_mut(inp.vocab)
            .zip(chunk.par_iter())
            .map(|(row, &i)| {
                let coef = inp.mask[i] * inp.scale;
                let tgt = inp.targets[i] as usize;
                let picked = row[tgt];
                let lse = ops::softmax_in_place(row);
                row.iter_mut().for_each(|p| *p *= coef);
                row[tgt] -= coef;
                f64::from((lse - picked) * inp.mask[i])
            })
            .sum::<f64>();
        matmul(
            &mut g[..m * hid],
            hid,
            Mat::new(l, m, inp.vocab),
            wv,
            1.0,
            false,
            threads_for(m, hid, inp.vocab),
        );
        for (j, &i) in chunk.iter().enumerate() {
            dhn[i * hid..(i + 1) * hid].copy_from_slice(&g[j * hid..(j + 1) * hid]);
        }
    }
    let mut dh = vec![0.0f32; n * hid];
    ops::rms_norm_backward(inp.h, inp.norm, &rstd, &dhn, &mut dh);
    (loss, dh)
}

/// Teacher-forced log-probabilities of targets, the head walked in vocabulary slices with a
/// running log-sum-exp per position, so a quantized head is expanded one slice at a time.
pub struct TargetLogProbs<'a> {
    hn: Vec<f32>,
    hid: usize,
    targets: &'a [u32],
    /// Running max, sum of exp(logit − max), and the target's logit, per position.
    max: Vec<f32>,
    sum: Vec<f32>,
    picked: Vec<f32>,
    logits: Vec<f32>,
}

impl<'a> TargetLogProbs<'a> {
    /// From final hidden states `h` (n, hidden) before the final norm.
    pub fn new(h: &[f32], norm: &[f32], eps: f32, targets: &'a [u32]) -> Self {
        let (n, hid) = (targets.len(), norm.len());
        let (mut hn, mut rstd) = (vec![0.0f32; n * hid], vec![0.0f32; n]);
        ops::rms_norm(h, norm, eps, &mut hn, &mut rstd);
        Self {
            hn,
            hid,
            targets,
            max: vec![f32::NEG_INFINITY; n],
            sum: vec![0.0; n],
            picked: vec![0.0; n],
            logits: Vec::new(),
        }
    }

    /// Takes head rows `v0..v0 + w.len()/hidden` (row-major f32) into every position.
    pub fn add_slice(&mut self, v0: usize, w: &[f32]) {
        let (n, hid) = (self.targets.len(), self.hid);
        let nr = w.len() / hid;
        self.logits.resize(n * nr, 0.0);
        matmul(
            &mut self.logits,
            nr,
            Mat::new(&self.hn, n, hid),
            Mat::new(w, nr, hid).t(),
            1.0,
            false,
            threads_for(n, nr, hid),
        );
        let targets = self.targets;
        self.logits
            .par_chunks_mut(nr)
            .zip(self.max.par_iter_mut())
            .zip(self.sum.par_iter_mut())
            .zip(self.picked.par_iter_mut())
            .enumerate()
            .for_each(|(i, (((row, m), s), p))| {
                let t = targets[i] as usize;
                if (v0..v0 + nr).contains(&t) {
                    *p = row[t - v0];
                }
                let new_m = m.max(ops::max(row));
                ops::exp_shifted(row, 1.0, new_m);
                *s = *s * ops::exp(*m - new_m) + ops::sum(row);
                *m = new_m;
            });
    }

    /// `log p(target)` per position.
    pub fn finish(self) -> Vec<f32> {
        self.picked.iter().zip(&self.max).zip(&self.sum).map(|((p, m), s)| p - (m + s.ln())).collect()
    }
}
