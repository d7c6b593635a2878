//! The row-wise steps of the tiled attention on a CUDA device (kernels in
//! src/train/ops/cuda_attn.cu): the masked softmax of a tile of scores with its log-sum-exp, the
//! probabilities again from a saved log-sum-exp, and the score gradient. Each is one pass over
//! the tile in the compute dtype; the products around them stay with cuBLAS.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{Storage, Tensor};

use crate::kernels::cuda::cuda_kernel::{by_dtype, kernel_name};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cuda_attn.ptx"));
const MODULE: &str = "warsha_attn";
const THREADS: u32 = 256;

fn err(msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuda attention: {msg}"))
}

/// Where a tile's rows and columns sit in the sequence (see the .cu file).
#[derive(Debug, Clone, Copy)]
pub struct TileGeom {
    /// Query positions in the tile.
    pub len: usize,
    /// Rows of one batch row: kv heads × grouped heads × len.
    pub rows_per_batch: usize,
    pub i0: usize,
    pub k0: usize,
    /// Sequence length (the stride of `seg_start`).
    pub t: usize,
}

fn cfg(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Runs `f` with a contiguous view of `t`'s elements.
fn view<T: CudaDType, R>(
    t: &Tensor,
    f: impl FnOnce(&CudaView<T>, &CudaDevice) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (st, l) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*st else { return Err(err("tensor is not on a CUDA device")) };
    let (o1, o2) = l.contiguous_offsets().ok_or_else(|| err("tensor is not contiguous"))?;
    f(&cs.as_cuda_slice::<T>()?.slice(o1..o2), cs.device())
}

fn wrap<T: CudaDType>(s: CudaSlice<T>, dev: &CudaDevice, shape: &[usize]) -> Tensor {
    let st = Storage::Cuda(CudaStorage::wrap_cuda_slice(s, dev.clone()));
    Tensor::from_storage(st, shape, BackpropOp::none(), false)
}

fn rows_cols(s: &Tensor) -> candle_core::Result<(usize, usize)> {
    let cols = s.dim(candle_core::D::Minus1)?;
    Ok((s.elem_count() / cols.max(1), cols))
}

/// Masked softmax of scores `s (…, cols)` scaled by `scale`: (probabilities in s's dtype and
/// shape, log-sum-exp per row (rows,) f32).
pub fn softmax_fwd(
    s: &Tensor,
    seg_start: &Tensor,
    g: TileGeom,
    scale: f32,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (rows, cols) = rows_cols(s)?;
    let name = kernel_name("attn_softmax_fwd", s.dtype())?;
    by_dtype!(s.dtype(), T, {
        view::<T, _>(s, |sv, dev| {
            view::<u32, _>(seg_start, |segv, _| {
                let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
                // SAFETY: the kernel writes every element of both outputs.
                let mut lse: CudaSlice<f32> = unsafe { dev.alloc::<f32>(rows)? };
                let mut p: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * cols)? };
                let ints = [cols, g.len, g.rows_per_batch, g.i0, g.k0, g.t].map(|v| v as i32);
                {
                    let mut b = func.builder();
                    b.arg(sv).arg(segv);
                    for v in &ints {
                        b.arg(v);
                    }
                    b.arg(&scale).arg(&mut lse).arg(&mut p);
                    // SAFETY: argument order and types match attn_softmax_fwd_* in the .cu file.
                    unsafe { b.launch(cfg(rows)) }.map_err(err)?;
                }
                Ok((wrap(p, dev, s.dims()), wrap(lse, dev, &[rows])))
            })
        })
    })
}

/// The probabilities again from scores and the saved log-sum-exp (rows,) f32.
pub fn probs(
    s: &Tensor,
    lse: &Tensor,
    seg_start: &Tensor,
    g: TileGeom,
    scale: f32,
) -> candle_core::Result<Tensor> {
    let (rows, cols) = rows_cols(s)?;
    let name = kernel_name("attn_probs", s.dtype())?;
    by_dtype!(s.dtype(), T, {
        view::<T, _>(s, |sv, dev| {
            view::<f32, _>(lse, |lv, _| {
                view::<u32, _>(seg_start, |segv, _| {
                    let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
                    // SAFETY: the kernel writes every element.
                    let mut p: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * cols)? };
                    let ints = [cols, g.len, g.rows_per_batch, g.i0, g.k0, g.t].map(|v| v as i32);
                    {
                        let mut b = func.builder();
                        b.arg(sv).arg(lv).arg(segv);
                        for v in &ints {
                            b.arg(v);
                        }
                        b.arg(&scale).arg(&mut p);
                        // SAFETY: argument order and types match attn_probs_* in the .cu file.
                        unsafe { b.launch(cfg(rows)) }.map_err(err)?;
                    }
                    Ok(wrap(p, dev, s.dims()))
                })
            })
        })
    })
}

/// `p ∘ (dp − d[row]) · scale` for p, dp (…, cols) in one dtype and d (rows,) f32.
pub fn dscores(p: &Tensor, dp: &Tensor, d: &Tensor, scale: f32) -> candle_core::Result<Tensor> {
    let (rows, cols) = rows_cols(p)?;
    if dp.dims() != p.dims() || dp.dtype() != p.dtype() || d.elem_count() != rows {
        return Err(err(format!("dscores shapes {:?} {:?} {:?}", p.dims(), dp.dims(), d.dims())));
    }
    let name = kernel_name("attn_dscores", p.dtype())?;
    by_dtype!(p.dtype(), T, {
        view::<T, _>(p, |pv, dev| {
            view::<T, _>(dp, |dpv, _| {
                view::<f32, _>(d, |dv, _| {
                    let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
                    // SAFETY: the kernel writes every element.
                    let mut ds: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * cols)? };
                    let c = cols as i32;
                    {
                        let mut b = func.builder();
                        b.arg(pv).arg(dpv).arg(dv).arg(&c).arg(&scale).arg(&mut ds);
                        // SAFETY: argument order and types match attn_dscores_* in the .cu file.
                        unsafe { b.launch(cfg(rows)) }.map_err(err)?;
                    }
                    Ok(wrap(ds, dev, p.dims()))
                })
            })
        })
    })
}
