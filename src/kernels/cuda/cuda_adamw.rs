//! The AdamW update of one parameter tensor as a single kernel on a CUDA device (kernel in
//! src/kernels/cuda/cuda_adamw.cu), written over the parameter and its moments; the tensor form in
//! optim.rs stays the reference and the CPU path.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda::CudaStorage;
use candle_core::{InplaceOp3, Layout, Result, Storage, Tensor};

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

/// The update written over the parameter `p` (a `Var`'s tensor) and the moments `m` and `v`,
/// which keep their allocations from step to step. `m` and `v` must be contiguous tensors of
/// their own (not views of each other or of `p`): the optimizer owns them.
pub fn update_in_place(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, c: Coeffs) -> Result<()> {
    // candle rejects moments that share the parameter's storage; the kernel below rejects
    // moments and gradient that overlap each other.
    p.inplace_op3(m, v, &InPlace { g: g.clone(), c })
}

/// The in-place op: the parameter is the destination candle hands over mutably; the moments
/// arrive as sources and are written through their device pointers; the gradient is read.
struct InPlace {
    g: Tensor,
    c: Coeffs,
}

impl InplaceOp3 for InPlace {
    fn name(&self) -> &'static str {
        "adamw-in-place"
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        Err(err("the in-place update runs on CUDA only"))
    }

    fn cuda_fwd(
        &self,
        dst: &mut CudaStorage,
        dst_l: &Layout,
        ms: &CudaStorage,
        ml: &Layout,
        vs: &CudaStorage,
        vl: &Layout,
    ) -> Result<()> {
        let c = self.c;
        let n = dst_l.shape().elem_count();
        let range = |l: &Layout| {
            let (o1, o2) = l.contiguous_offsets().ok_or_else(|| err("tensor is not contiguous"))?;
            if o2 - o1 != n {
                return Err(err("tensors differ in size"));
            }
            Ok(o1..o2)
        };
        let dev = dst.device().clone();
        let stream = dev.cuda_stream();
        let func = dev.get_or_load_custom_func("adamw_f32_inplace", MODULE, PTX)?;
        let (gguard, gl) = self.g.storage_and_layout();
        let Storage::Cuda(gs) = &*gguard else { return Err(err("gradient is not on a CUDA device")) };
        let (gr, mr, vr) = (range(gl)?, range(ml)?, range(vl)?);
        let g = gs.as_cuda_slice::<f32>()?.slice(gr);
        let m = ms.as_cuda_slice::<f32>()?.slice(mr);
        let v = vs.as_cuda_slice::<f32>()?.slice(vr);
        // SAFETY (for the writes through m and v below): the optimizer slot is the only owner of
        // these storages, training runs on one host thread, and the kernel is ordered on the one
        // stream after every earlier reader.
        let (m_ptr, _m_rec) = m.device_ptr(&stream);
        let (v_ptr, _v_rec) = v.device_ptr(&stream);
        let (g_ptr, _g_rec) = g.device_ptr(&stream);
        let bytes = (n * std::mem::size_of::<f32>()) as u64;
        let overlap = |a: u64, b: u64| a < b + bytes && b < a + bytes;
        if n > 0 && (overlap(m_ptr, v_ptr) || overlap(m_ptr, g_ptr) || overlap(v_ptr, g_ptr)) {
            return Err(err("moments and gradient must not overlap"));
        }
        let dr = range(dst_l)?;
        let mut p = dst.as_cuda_slice_mut::<f32>()?.slice_mut(dr);
        let threads = 256u32;
        let grid = n.div_ceil(threads as usize).clamp(1, 1 << 16) as u32;
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let mut b = func.builder();
        b.arg(&mut p).arg(&g).arg(&m_ptr).arg(&v_ptr).arg(&n);
        for x in [&c.beta1, &c.beta2, &c.inv_bc2, &c.eps, &c.lr_hat, &c.decay] {
            b.arg(x);
        }
        // SAFETY: argument order and types match adamw_f32_inplace in the .cu file; the device
        // pointers are passed by value as the kernel's float* parameters.
        unsafe { b.launch(cfg) }.map_err(err)?;
        Ok(())
    }
}
