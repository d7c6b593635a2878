//! One decoder block of the CPU training path: the forward, keeping what its backward needs,
//! and the backward, which returns the gradient of the block's input and the adapter's
//! gradients. Every projection is `x Wᵀ (+ bias) + scale · (drop(x) Aᵀ) Bᵀ`; the frozen `W`
//! only ever meets the input (forward) or the output gradient (backward), never a gradient
//! of its own.

use candle_core::{Tensor, Var};

use super::attn::{self, AttnShape};
use super::gemm::{matmul, threads_for, Mat};
use super::ops::{self, Rope};
use super::{with_f32, with_weight, Geometry};
use crate::model::base::Base;
use crate::model::error::Result;
use crate::model::lora::{Adapter, Target};
use crate::model::lora_op::DropMask;
use crate::model::phases;

/// What the backward of one block needs from its forward (the input is kept by the caller).
pub struct Saved {
    rstd1: Vec<f32>,
    xn1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    lse: Vec<f32>,
    h1: Vec<f32>,
    rstd2: Vec<f32>,
    xn2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Each adapted projection's branch state.
    lora: [Option<Branch>; 7],
}

/// What a LoRA branch's backward needs from its forward.
pub struct Branch {
    /// The rank-r product `drop(x) Aᵀ` (rows, r).
    h: Vec<f32>,
    /// The dropout's keep bytes and `1/keep`, drawn once per forward: hashing again in the
    /// backward cost more than the branch's products.
    mask: Option<(Vec<u8>, f32)>,
}

/// The adapter and dropout stream of one pass.
pub struct Pass<'a> {
    pub adapter: Option<&'a Adapter>,
    pub dropout_step: Option<u64>,
}

/// Gradients of the adapter's tensors, in the order they were produced.
pub type Grads = Vec<(Var, Tensor)>;

impl Pass<'_> {
    /// Keep bytes and `1/keep` of projection `t`'s dropout over `n` input elements.
    fn mask(&self, li: usize, t: Target, n: usize) -> Option<(Vec<u8>, f32)> {
        let a = self.adapter?;
        let d = a.dropout(li, t, self.dropout_step?)?;
        let m = DropMask { seed: d.seed, keep: d.keep as f32 };
        Some((m.bytes(n), 1.0 / m.keep))
    }
}

/// The dropped input of a LoRA branch: `x` itself without dropout.
fn dropped<'a>(x: &'a [f32], mask: Option<&(Vec<u8>, f32)>, scratch: &'a mut Vec<f32>) -> &'a [f32] {
    match mask {
        Some((m, inv)) => {
            scratch.resize(x.len(), 0.0);
            ops::apply_mask(x, m, *inv, scratch);
            scratch
        }
        None => x,
    }
}

impl Base {
    /// `y (rows, out) = x Wᵀ (+ bias) + LoRA(x)`; returns the branch's state if adapted.
    fn cpu_proj(
        &self,
        li: usize,
        t: Target,
        x: &[f32],
        rows: usize,
        pass: &Pass,
        y: &mut [f32],
    ) -> Result<Option<Branch>> {
        let lin = self.layers[li].proj(t);
        let (out, inp) = lin.dims();
        with_weight(lin.weight(), |w| {
            matmul(
                y,
                out,
                Mat::new(x, rows, inp),
                Mat::new(w, out, inp).t(),
                1.0,
                false,
                threads_for(rows, out, inp),
            )
        })?;
        if let Some(bias) = lin.bias() {
            with_f32(bias, |b| ops::add_bias(y, b))?;
        }
        let Some(pair) = pass.adapter.and_then(|a| a.pair(li, t)) else { return Ok(None) };
        let scale = pass.adapter.map(|a| a.scale()).unwrap_or(1.0) as f32;
        let r = pair.a.dims()[0];
        let mut scratch = Vec::new();
        let mask = pass.mask(li, t, rows * inp);
        let xd = dropped(x, mask.as_ref(), &mut scratch);
        let mut h = vec![0.0f32; rows * r];
        with_f32(pair.a.as_tensor(), |a| {
            matmul(
                &mut h,
                r,
                Mat::new(xd, rows, inp),
                Mat::new(a, r, inp).t(),
                1.0,
                false,
                threads_for(rows, r, inp),
            )
        })?;
        with_f32(pair.b.as_tensor(), |b| {
            matmul(
                y,
                out,
                Mat::new(&h, rows, r),
                Mat::new(b, out, r).t(),
                scale,
                true,
                threads_for(rows, out, r),
            )
        })?;
        Ok(Some(Branch { h, mask }))
    }

    /// Backward of [`Base::cpu_proj`]: `gx += gy W (+ LoRA's part)` when `gx` is given, and the
    /// adapter's gradients pushed to `grads`.
    #[allow(clippy::too_many_arguments)]
    fn cpu_proj_backward(
        &self,
        li: usize,
        t: Target,
        x: &[f32],
        branch: Option<&Branch>,
        gy: &[f32],
        rows: usize,
        pass: &Pass,
        mut gx: Option<&mut [f32]>,
        grads: &mut Grads,
    ) -> Result<()> {
        let lin = self.layers[li].proj(t);
        let (out, inp) = lin.dims();
        if let Some(gx) = gx.as_deref_mut() {
            with_weight(lin.weight(), |w| {
                matmul(
                    gx,
                    inp,
                    Mat::new(gy, rows, out),
                    Mat::new(w, out, inp),
                    1.0,
                    true,
                    threads_for(rows, inp, out),
                )
            })?;
        }
        let (Some(pair), Some(Branch { h, mask })) = (pass.adapter.and_then(|a| a.pair(li, t)), branch)
        else {
            return Ok(());
        };
        let scale = pass.adapter.map(|a| a.scale()).unwrap_or(1.0) as f32;
        let r = pair.a.dims()[0];
        let gyv = Mat::new(gy, rows, out);
        let mut gb = vec![0.0f32; out * r];
        matmul(&mut gb, r, gyv.t(), Mat::new(h, rows, r), scale, false, threads_for(out, r, rows));
        let mut gh = vec![0.0f32; rows * r];
        with_f32(pair.b.as_tensor(), |b| {
            matmul(&mut gh, r, gyv, Mat::new(b, out, r), scale, false, threads_for(rows, r, out))
        })?;
        let mut scratch = Vec::new();
        let xd = dropped(x, mask.as_ref(), &mut scratch);
        let mut ga = vec![0.0f32; r * inp];
        matmul(
            &mut ga,
            inp,
            Mat::new(&gh, rows, r).t(),
            Mat::new(xd, rows, inp),
            1.0,
            false,
            threads_for(r, inp, rows),
        );
        if let Some(gx) = gx {
            with_f32(pair.a.as_tensor(), |a| {
                let (ghv, av) = (Mat::new(&gh, rows, r), Mat::new(a, r, inp));
                match mask {
                    Some((m, inv)) => {
                        scratch.resize(rows * inp, 0.0);
                        matmul(&mut scratch, inp, ghv, av, 1.0, false, threads_for(rows, inp, r));
                        ops::add_masked(&scratch, m, *inv, gx);
                    }
                    None => matmul(gx, inp, ghv, av, 1.0, true, threads_for(rows, inp, r)),
                }
            })?;
        }
        let dev = self.device();
        grads.push((pair.a.clone(), Tensor::from_vec(ga, (r, inp), dev)?));
        grads.push((pair.b.clone(), Tensor::from_vec(gb, (out, r), dev)?));
        Ok(())
    }

    /// Rotates q and k (or, `inverse`, their gradients) in place by each row's position.
    fn cpu_rope(&self, geo: &Geometry, q: &mut [f32], k: &mut [f32], inverse: bool) -> Result<()> {
        let c = &self.config;
        with_f32(&self.cos, |cos| {
            with_f32(&self.sin, |sin| {
                let rope = Rope { cos, sin, pos: &geo.pos, head_dim: c.head_dim };
                rope.apply(q, c.num_heads, inverse);
                rope.apply(k, c.num_kv_heads, inverse);
            })
        })?
    }

    fn cpu_attn_shape<'a>(&self, geo: &'a Geometry) -> AttnShape<'a> {
        let c = &self.config;
        AttnShape {
            b: geo.b,
            t: geo.t,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            seg_start: &geo.seg_start,
        }
    }

    /// Block `li` on input `x` (rows, hidden): its output and what the backward needs.
    pub(super) fn cpu_block_forward(
        &self,
        li: usize,
        x: &[f32],
        geo: &Geometry,
        pass: &Pass,
    ) -> Result<(Vec<f32>, Saved)> {
        let c = &self.config;
        let layer = &self.layers[li];
        let rows = geo.b * geo.t;
        let (hid, qd, kvd, mlp) =
            (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size);
        let eps = c.rms_eps as f32;
        let zeros = |n: usize| vec![0.0f32; n];
        let (mut xn1, mut rstd1) = (zeros(rows * hid), zeros(rows));
        with_f32(&layer.attn_norm, |w| ops::rms_norm(x, w, eps, &mut xn1, &mut rstd1))?;
        phases::mark(&self.device, "f norm");
        let mut lora: [Option<Branch>; 7] = Default::default();
        let (mut q, mut k, mut v) = (zeros(rows * qd), zeros(rows * kvd), zeros(rows * kvd));
        lora[0] = self.cpu_proj(li, Target::Q, &xn1, rows, pass, &mut q)?;
        lora[1] = self.cpu_proj(li, Target::K, &xn1, rows, pass, &mut k)?;
        lora[2] = self.cpu_proj(li, Target::V, &xn1, rows, pass, &mut v)?;
        phases::mark(&self.device, "f q/k/v");
        self.cpu_rope(geo, &mut q, &mut k, false)?;
        phases::mark(&self.device, "f rope");
        let (mut o, mut lse) = (zeros(rows * qd), zeros(geo.b * c.num_heads * geo.t));
        attn::forward(&self.cpu_attn_shape(geo), &q, &k, &v, &mut o, &mut lse);
        phases::mark(&self.device, "f attention");
        let mut h1 = zeros(rows * hid);
        lora[3] = self.cpu_proj(li, Target::O, &o, rows, pass, &mut h1)?;
        ops::add_into(&mut h1, x);
        phases::mark(&self.device, "f o");
        let (mut xn2, mut rstd2) = (zeros(rows * hid), zeros(rows));
        with_f32(&layer.mlp_norm, |w| ops::rms_norm(&h1, w, eps, &mut xn2, &mut rstd2))?;
        phases::mark(&self.device, "f norm");
        let (mut gate, mut up, mut m) = (zeros(rows * mlp), zeros(rows * mlp), zeros(rows * mlp));
        lora[4] = self.cpu_proj(li, Target::Gate, &xn2, rows, pass, &mut gate)?;
        lora[5] = self.cpu_proj(li, Target::Up, &xn2, rows, pass, &mut up)?;
        phases::mark(&self.device, "f gate/up");
        ops::swiglu(&gate, &up, &mut m);
        phases::mark(&self.device, "f swiglu");
        let mut out = zeros(rows * hid);
        lora[6] = self.cpu_proj(li, Target::Down, &m, rows, pass, &mut out)?;
        ops::add_into(&mut out, &h1);
        phases::mark(&self.device, "f down");
        let saved = Saved { rstd1, xn1, q, k, v, o, lse, h1, rstd2, xn2, gate, up, lora };
        Ok((out, saved))
    }

    /// Backward of block `li`: from `dout` (consumed), the gradient of the block's input `x`
    /// (None when `need_dx` is false: the first block's input is the frozen embedding).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn cpu_block_backward(
        &self,
        li: usize,
        x: &[f32],
        s: &Saved,
        dout: Vec<f32>,
        geo: &Geometry,
        pass: &Pass,
        need_dx: bool,
        grads: &mut Grads,
    ) -> Result<Option<Vec<f32>>> {
        let c = &self.config;
        let layer = &self.layers[li];
        let rows = geo.b * geo.t;
        let (hid, qd, kvd, mlp) =
            (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size);
        let zeros = |n: usize| vec![0.0f32; n];
        let h = |t: Target| s.lora[t.index()].as_ref();
        // The block's output gradient is also the residual stream's (h1 and, later, x).
        let mut dh = dout;
        let mut m = zeros(rows * mlp);
        ops::swiglu(&s.gate, &s.up, &mut m);
        let mut dm = zeros(rows * mlp);
        self.cpu_proj_backward(li, Target::Down, &m, h(Target::Down), &dh, rows, pass, Some(&mut dm), grads)?;
        phases::mark(&self.device, "b down");
        let (mut dgate, mut dup) = (m, zeros(rows * mlp));
        ops::swiglu_backward(&s.gate, &s.up, &dm, &mut dgate, &mut dup);
        phases::mark(&self.device, "b swiglu");
        drop(dm);
        let mut dxn = zeros(rows * hid);
        self.cpu_proj_backward(
            li,
            Target::Gate,
            &s.xn2,
            h(Target::Gate),
            &dgate,
            rows,
            pass,
            Some(&mut dxn),
            grads,
        )?;
        self.cpu_proj_backward(
            li,
            Target::Up,
            &s.xn2,
            h(Target::Up),
            &dup,
            rows,
            pass,
            Some(&mut dxn),
            grads,
        )?;
        drop((dgate, dup));
        phases::mark(&self.device, "b gate/up");
        with_f32(&layer.mlp_norm, |w| ops::rms_norm_backward(&s.h1, w, &s.rstd2, &dxn, &mut dh))?;
        phases::mark(&self.device, "b norm");
        let mut d_o = zeros(rows * qd);
        self.cpu_proj_backward(li, Target::O, &s.o, h(Target::O), &dh, rows, pass, Some(&mut d_o), grads)?;
        phases::mark(&self.device, "b o");
        let (mut dq, mut dk, mut dv) = (zeros(rows * qd), zeros(rows * kvd), zeros(rows * kvd));
        attn::backward(
            &self.cpu_attn_shape(geo),
            &s.q,
            &s.k,
            &s.v,
            &s.o,
            &s.lse,
            &d_o,
            &mut dq,
            &mut dk,
            &mut dv,
        );
        drop(d_o);
        phases::mark(&self.device, "b attention");
        self.cpu_rope(geo, &mut dq, &mut dk, true)?;
        phases::mark(&self.device, "b rope");
        dxn.fill(0.0);
        let mut gx = if need_dx { Some(dxn.as_mut_slice()) } else { None };
        self.cpu_proj_backward(
            li,
            Target::Q,
            &s.xn1,
            h(Target::Q),
            &dq,
            rows,
            pass,
            gx.as_deref_mut(),
            grads,
        )?;
        self.cpu_proj_backward(
            li,
            Target::K,
            &s.xn1,
            h(Target::K),
            &dk,
            rows,
            pass,
            gx.as_deref_mut(),
            grads,
        )?;
        self.cpu_proj_backward(li, Target::V, &s.xn1, h(Target::V), &dv, rows, pass, gx, grads)?;
        phases::mark(&self.device, "b q/k/v");
        if !need_dx {
            return Ok(None);
        }
        with_f32(&layer.attn_norm, |w| ops::rms_norm_backward(x, w, &s.rstd1, &dxn, &mut dh))?;
        phases::mark(&self.device, "b norm");
        Ok(Some(dh))
    }
}
