//! The AdamW update of one parameter tensor as a single kernel on a CUDA device (kernel in
//! src/train/cuda_adamw.cu); the tensor form in optim.rs stays the reference and the CPU path.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{Result, Storage, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cuda_adamw.ptx"));
const MODULE: &str = "warsha_adamw";

fn err(msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuda adamw: {msg}"))
}

/// Scalars of one update, already folded as optim.rs folds them.
#[derive(Debug, Clone, Copy)]
pub struct Coeffs {
    pub beta1: f32,
    pub beta2: f32,
    /// 1 / (1 − β₂ᵗ).
    pub inv_bc2: f32,
    pub eps: f32,
    /// lr / (1 − β₁ᵗ).
    pub lr_hat: f32,
    /// 1 − lr · weight decay.
    pub decay: f32,
}

/// New (parameter, m, v) from f32 tensors of one shape on one CUDA device.
pub fn update(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, c: Coeffs) -> Result<(Tensor, Tensor, Tensor)> {
    let n = p.elem_count();
    let guards = [p, g, m, v].map(|t| t.storage_and_layout());
    let mut views = Vec::with_capacity(4);
    let mut dev: Option<CudaDevice> = None;
    for (st, l) in &guards {
        let Storage::Cuda(cs) = &**st else { return Err(err("tensor is not on a CUDA device")) };
        let (o1, o2) = l.contiguous_offsets().ok_or_else(|| err("tensor is not contiguous"))?;
        if o2 - o1 != n {
            return Err(err("tensors differ in size"));
        }
        views.push(cs.as_cuda_slice::<f32>()?.slice(o1..o2));
        dev.get_or_insert_with(|| cs.device().clone());
    }
    let dev = dev.ok_or_else(|| err("no tensors"))?;
    let func = dev.get_or_load_custom_func("adamw_f32", MODULE, PTX)?;
    // SAFETY: the kernel writes all n elements of each output.
    let (mut po, mut mo, mut vo): (CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>) =
        unsafe { (dev.alloc::<f32>(n)?, dev.alloc::<f32>(n)?, dev.alloc::<f32>(n)?) };
    let threads = 256u32;
    let grid = n.div_ceil(threads as usize).clamp(1, 1 << 16) as u32;
    let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    {
        let mut b = func.builder();
        for v in &views {
            b.arg(v);
        }
        b.arg(&n);
        for x in [&c.beta1, &c.beta2, &c.inv_bc2, &c.eps, &c.lr_hat, &c.decay] {
            b.arg(x);
        }
        b.arg(&mut po).arg(&mut mo).arg(&mut vo);
        // SAFETY: argument order and types match adamw_f32 in the .cu file.
        unsafe { b.launch(cfg) }.map_err(err)?;
    }
    drop(views);
    drop(guards);
    let wrap = |s: CudaSlice<f32>| {
        Tensor::from_storage(
            Storage::Cuda(CudaStorage::wrap_cuda_slice(s, dev.clone())),
            p.shape().clone(),
            BackpropOp::none(),
            false,
        )
    };
    Ok((wrap(po), wrap(mo), wrap(vo)))
}
