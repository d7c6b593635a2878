//! Launchers for the fused training-path kernels (src/train/ops/cuda_fused.cu): RMSNorm, rotary
//! embedding and SwiGLU forward and backward, and the two row-wise steps of the sliced
//! lm_head + cross-entropy. Inputs are read where they lie (no copy into a fresh storage) and
//! every output is a new storage the kernel writes in full.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{Layout, Shape, Storage, Tensor};

use crate::kernels::cuda::cuda_kernel::{by_dtype, kernel_name};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cuda_fused.ptx"));
const MODULE: &str = "warsha_fused";
const THREADS: u32 = 256;

fn err(msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuda fused op: {msg}"))
}

fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn per_elem(n: usize) -> LaunchConfig {
    let grid = n.div_ceil(THREADS as usize).max(1) as u32;
    LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// The elements a contiguous layout covers.
fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> candle_core::Result<CudaView<'a, T>> {
    let (o1, o2) = l.contiguous_offsets().ok_or_else(|| err("input is not contiguous"))?;
    Ok(s.as_cuda_slice::<T>()?.slice(o1..o2))
}

/// Runs `f` on a tensor's CUDA storage and layout.
fn with<R>(
    t: &Tensor,
    f: impl FnOnce(&CudaStorage, &Layout) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cuda(cs) => f(cs, l),
        _ => Err(err("tensor is not on a CUDA device")),
    }
}

fn tensor(s: CudaStorage, shape: &Shape) -> Tensor {
    Tensor::from_storage(Storage::Cuda(s), shape.clone(), BackpropOp::none(), false)
}

/// RMSNorm of contiguous rows `x` with weight `w (cols,)`, both in one dtype.
pub fn rms_norm_fwd(
    x: &CudaStorage,
    xl: &Layout,
    w: &CudaStorage,
    wl: &Layout,
    eps: f32,
) -> candle_core::Result<CudaStorage> {
    let cols = xl.dims().last().copied().unwrap_or(1);
    let rows = xl.shape().elem_count() / cols.max(1);
    if wl.shape().elem_count() != cols || x.dtype() != w.dtype() {
        return Err(err(format!("rms norm: weight {:?} for rows of {cols}", wl.dims())));
    }
    let dev = x.device().clone();
    let f = dev.get_or_load_custom_func(&kernel_name("rmsnorm_fwd", x.dtype())?, MODULE, PTX)?;
    by_dtype!(x.dtype(), T, {
        let (xv, wv) = (view::<T>(x, xl)?, view::<T>(w, wl)?);
        // SAFETY: the kernel writes every element of y.
        let mut y: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * cols)? };
        let c = cols as i32;
        let mut b = f.builder();
        b.arg(&xv).arg(&wv).arg(&c).arg(&eps).arg(&mut y);
        // SAFETY: arguments match rmsnorm_fwd_* in the .cu file.
        unsafe { b.launch(per_row(rows)) }.map_err(err)?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    })
}

/// The input gradient of [`rms_norm_fwd`] for an output gradient `g` of x's shape.
pub fn rms_norm_bwd(x: &Tensor, w: &Tensor, g: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    let (x, g) = (x.contiguous()?, g.to_dtype(x.dtype())?.contiguous()?);
    let cols = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / cols.max(1);
    with(&x, |xs, xl| {
        with(w, |ws, wl| {
            with(&g, |gs, gl| {
                let dev = xs.device().clone();
                let f = dev.get_or_load_custom_func(&kernel_name("rmsnorm_bwd", xs.dtype())?, MODULE, PTX)?;
                by_dtype!(xs.dtype(), T, {
                    let (xv, wv, gv) = (view::<T>(xs, xl)?, view::<T>(ws, wl)?, view::<T>(gs, gl)?);
                    // SAFETY: the kernel writes every element of dx.
                    let mut dx: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * cols)? };
                    let c = cols as i32;
                    let mut b = f.builder();
                    b.arg(&xv).arg(&wv).arg(&gv).arg(&c).arg(&eps).arg(&mut dx);
                    // SAFETY: arguments match rmsnorm_bwd_* in the .cu file.
                    unsafe { b.launch(per_row(rows)) }.map_err(err)?;
                    Ok(tensor(CudaStorage::wrap_cuda_slice(dx, dev.clone()), x.shape()))
                })
            })
        })
    })
}

/// `x·cos + sign·rotate_half(x)·sin` for x (b, h, t, d) in any strided layout; cos and sin
/// contiguous (b, 1, t, d) in x's dtype. The result is contiguous (b, h, t, d).
pub fn rope(
    x: &CudaStorage,
    xl: &Layout,
    cos: &Tensor,
    sin: &Tensor,
    sign: f32,
) -> candle_core::Result<CudaStorage> {
    let (b_, h, t, d) = xl.shape().dims4()?;
    if cos.dims() != [b_, 1, t, d] || sin.dims() != cos.dims() || cos.dtype() != x.dtype() {
        return Err(err(format!("rope tables {:?} for input {:?}", cos.dims(), xl.dims())));
    }
    let n = b_ * h * t * d;
    let st = xl.stride();
    let args: [i64; 5] = [xl.start_offset() as i64, st[0] as i64, st[1] as i64, st[2] as i64, st[3] as i64];
    let dev = x.device().clone();
    let f = dev.get_or_load_custom_func(&kernel_name("rope", x.dtype())?, MODULE, PTX)?;
    with(cos, |cs, cl| {
        with(sin, |ss, sl| {
            by_dtype!(x.dtype(), T, {
                let xv = x.as_cuda_slice::<T>()?;
                let (cv, sv) = (view::<T>(cs, cl)?, view::<T>(ss, sl)?);
                // SAFETY: the kernel writes every element of y.
                let mut y: CudaSlice<T> = unsafe { dev.alloc::<T>(n)? };
                let ints = [h, t, d].map(|v| v as i32);
                let count = n as u64;
                let mut b = f.builder();
                b.arg(xv);
                for a in &args {
                    b.arg(a);
                }
                b.arg(&cv).arg(&sv);
                for v in &ints {
                    b.arg(v);
                }
                b.arg(&sign).arg(&count).arg(&mut y);
                // SAFETY: arguments match rope_* in the .cu file.
                unsafe { b.launch(per_elem(n)) }.map_err(err)?;
                Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
            })
        })
    })
}

/// [`rope`] on a tensor, as a graph-free tensor.
pub fn rope_tensor(x: &Tensor, cos: &Tensor, sin: &Tensor, sign: f32) -> candle_core::Result<Tensor> {
    let s = with(x, |xs, xl| rope(xs, xl, cos, sin, sign))?;
    Ok(tensor(s, x.shape()))
}

/// `silu(gate) · up` for two contiguous tensors of one shape and dtype.
pub fn swiglu_fwd(
    g: &CudaStorage,
    gl: &Layout,
    u: &CudaStorage,
    ul: &Layout,
) -> candle_core::Result<CudaStorage> {
    let n = gl.shape().elem_count();
    if ul.shape() != gl.shape() || g.dtype() != u.dtype() {
        return Err(err(format!("swiglu shapes {:?} {:?}", gl.dims(), ul.dims())));
    }
    let dev = g.device().clone();
    let f = dev.get_or_load_custom_func(&kernel_name("swiglu_fwd", g.dtype())?, MODULE, PTX)?;
    by_dtype!(g.dtype(), T, {
        let (gv, uv) = (view::<T>(g, gl)?, view::<T>(u, ul)?);
        // SAFETY: the kernel writes every element of y.
        let mut y: CudaSlice<T> = unsafe { dev.alloc::<T>(n)? };
        let count = n as u64;
        let mut b = f.builder();
        b.arg(&gv).arg(&uv).arg(&count).arg(&mut y);
        // SAFETY: arguments match swiglu_fwd_* in the .cu file.
        unsafe { b.launch(per_elem(n)) }.map_err(err)?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    })
}

/// The gradients (d gate, d up) of [`swiglu_fwd`] for an output gradient `dy`.
pub fn swiglu_bwd(gate: &Tensor, up: &Tensor, dy: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let (gate, up) = (gate.contiguous()?, up.contiguous()?);
    let dy = dy.to_dtype(gate.dtype())?.contiguous()?;
    let n = gate.elem_count();
    with(&gate, |gs, gl| {
        with(&up, |us, ul| {
            with(&dy, |ds, dl| {
                let dev = gs.device().clone();
                let f = dev.get_or_load_custom_func(&kernel_name("swiglu_bwd", gs.dtype())?, MODULE, PTX)?;
                by_dtype!(gs.dtype(), T, {
                    let (gv, uv, dv) = (view::<T>(gs, gl)?, view::<T>(us, ul)?, view::<T>(ds, dl)?);
                    // SAFETY: the kernel writes every element of both outputs.
                    let mut dg: CudaSlice<T> = unsafe { dev.alloc::<T>(n)? };
                    let mut du: CudaSlice<T> = unsafe { dev.alloc::<T>(n)? };
                    let count = n as u64;
                    let mut b = f.builder();
                    b.arg(&gv).arg(&uv).arg(&dv).arg(&count).arg(&mut dg).arg(&mut du);
                    // SAFETY: arguments match swiglu_bwd_* in the .cu file.
                    unsafe { b.launch(per_elem(n)) }.map_err(err)?;
                    Ok((
                        tensor(CudaStorage::wrap_cuda_slice(dg, dev.clone()), gate.shape()),
                        tensor(CudaStorage::wrap_cuda_slice(du, dev.clone()), gate.shape()),
                    ))
                })
            })
        })
    })
}

/// Running per-row state of a log-sum-exp taken over vocabulary slices, with the target's
/// logit picked on the way.
pub struct LseFold {
    dev: CudaDevice,
    n: usize,
    m: CudaSlice<f32>,
    s: CudaSlice<f32>,
    picked: CudaSlice<f32>,
}

impl LseFold {
    pub fn new(dev: &CudaDevice, n: usize) -> candle_core::Result<Self> {
        let m = dev.clone_htod(&vec![f32::NEG_INFINITY; n])?;
        Ok(Self { dev: dev.clone(), n, m, s: dev.alloc_zeros::<f32>(n)?, picked: dev.alloc_zeros::<f32>(n)? })
    }

    /// Folds logits `z (len, cols)` of rows `row0 ..` for vocabulary columns `col0 ..`; `targets`
    /// (n,) u32 holds every row's target.
    pub fn fold(
        &mut self,
        z: &Tensor,
        targets: &Tensor,
        row0: usize,
        col0: usize,
    ) -> candle_core::Result<()> {
        let (len, cols) = z.dims2()?;
        let z = z.contiguous()?;
        let f = self.dev.get_or_load_custom_func(&kernel_name("ce_fold", z.dtype())?, MODULE, PTX)?;
        let (r0, c) = (col0 as i32, cols as i32);
        with(&z, |zs, zl| {
            with(targets, |ts, tl| {
                by_dtype!(zs.dtype(), T, {
                    let zv = view::<T>(zs, zl)?;
                    let tv = view::<u32>(ts, tl)?.slice(row0..row0 + len);
                    let mut m = self.m.slice_mut(row0..row0 + len);
                    let mut s = self.s.slice_mut(row0..row0 + len);
                    let mut p = self.picked.slice_mut(row0..row0 + len);
                    let mut b = f.builder();
                    b.arg(&zv).arg(&tv).arg(&r0).arg(&c).arg(&mut m).arg(&mut s).arg(&mut p);
                    // SAFETY: arguments match ce_fold_* in the .cu file.
                    unsafe { b.launch(per_row(len)) }.map_err(err)?;
                    Ok(())
                })
            })
        })
    }

    /// (log-sum-exp (n,), picked logit (n,)) as f32 tensors.
    pub fn finish(self) -> candle_core::Result<(Tensor, Tensor)> {
        let shape = Shape::from(self.n);
        let m = tensor(CudaStorage::wrap_cuda_slice(self.m, self.dev.clone()), &shape);
        let s = tensor(CudaStorage::wrap_cuda_slice(self.s, self.dev.clone()), &shape);
        let p = tensor(CudaStorage::wrap_cuda_slice(self.picked, self.dev.clone()), &shape);
        Ok(((s.log()? + m)?, p))
    }
}

/// `(exp(z − lse) − onehot) · coef` for one vocabulary slice (columns `col0 ..`) of a chunk of
/// rows; `lse`, `coef` (len,) f32 and `targets` (len,) u32 belong to the chunk's rows.
pub fn ce_dz(
    z: &Tensor,
    lse: &Tensor,
    coef: &Tensor,
    targets: &Tensor,
    col0: usize,
) -> candle_core::Result<Tensor> {
    let (len, cols) = z.dims2()?;
    let z = z.contiguous()?;
    let (lse, coef, targets) = (lse.contiguous()?, coef.contiguous()?, targets.contiguous()?);
    if lse.elem_count() != len || coef.elem_count() != len || targets.elem_count() != len {
        return Err(err("cross-entropy slice: per-row inputs do not match the chunk"));
    }
    let (r0, c) = (col0 as i32, cols as i32);
    with(&z, |zs, zl| {
        with(&lse, |ls, ll| {
            with(&coef, |cs, cl| {
                with(&targets, |ts, tl| {
                    let dev = zs.device().clone();
                    let f = dev.get_or_load_custom_func(&kernel_name("ce_dz", zs.dtype())?, MODULE, PTX)?;
                    by_dtype!(zs.dtype(), T, {
                        let zv = view::<T>(zs, zl)?;
                        let (lv, cv, tv) = (view::<f32>(ls, ll)?, view::<f32>(cs, cl)?, view::<u32>(ts, tl)?);
                        // SAFETY: the kernel writes every element of dz.
                        let mut dz: CudaSlice<T> = unsafe { dev.alloc::<T>(len * cols)? };
                        let mut b = f.builder();
                        b.arg(&zv).arg(&lv).arg(&cv).arg(&tv).arg(&r0).arg(&c).arg(&mut dz);
                        // SAFETY: arguments match ce_dz_* in the .cu file.
                        unsafe { b.launch(per_row(len)) }.map_err(err)?;
                        Ok(tensor(CudaStorage::wrap_cuda_slice(dz, dev.clone()), z.shape()))
                    })
                })
            })
        })
    })
}
