//! LoRA dropout masks made on the CUDA device (kernel in src/kernels/cuda/cuda_dropout.cu).
//!
//! The portable path draws every mask element on the host and uploads it: for the Qwen2-1.5B
//! shape at 512 positions that is about 260 million draws and 1 GB of transfers per forward
//! pass, twice per step with recomputation, which dominated the step time on a GPU. Here each
//! element is a stateless hash of (seed, index), so a block's recomputation reproduces its
//! forward mask exactly. The masks differ from the CPU path's draws, not in distribution.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cuda_dropout.ptx"));
const MODULE: &str = "warsha_dropout";

fn err(msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuda dropout: {msg}"))
}

struct Mask {
    shape: Shape,
    seed: u64,
    keep: f32,
}

impl CustomOp1 for Mask {
    fn name(&self) -> &'static str {
        "dropout-mask"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(err("the mask kernel runs on CUDA devices only"))
    }

    fn cuda_fwd(&self, carrier: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = carrier.device();
        let n = self.shape.elem_count();
        let func = dev.get_or_load_custom_func("dropout_mask_f32", MODULE, PTX)?;
        let threads = 256u32;
        let grid = n.div_ceil(threads as usize).clamp(1, 1 << 16) as u32;
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the kernel writes all `n` elements before anything reads them.
        let mut out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(n)? };
        let (seed, keep, inv, count) = (self.seed, self.keep, 1.0f32 / self.keep, n as u64);
        {
            let mut b = func.builder();
            b.arg(&seed).arg(&keep).arg(&inv).arg(&count).arg(&mut out);
            // SAFETY: argument order and types match dropout_mask_f32 in the .cu file.
            unsafe { b.launch(cfg) }.map_err(err)?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), self.shape.clone()))
    }
}

/// An f32 mask of `shape` on `device` (a CUDA device): `1/keep` where kept, else 0.
pub fn mask(device: &Device, shape: impl Into<Shape>, seed: u64, keep: f64) -> candle_core::Result<Tensor> {
    if !(keep > 0.0 && keep <= 1.0) {
        return Err(err(format!("keep probability {keep} outside (0, 1]")));
    }
    let carrier = Tensor::zeros(1, DType::U8, device)?;
    carrier.apply_op1_no_bwd(&Mask { shape: shape.into(), seed, keep: keep as f32 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_reproducible_and_keeps_the_asked_share() {
        let Ok(dev) = Device::new_cuda(0) else { return };
        let a = mask(&dev, (512, 8960), 42, 0.95).unwrap();
        let b = mask(&dev, (512, 8960), 42, 0.95).unwrap();
        let c = mask(&dev, (512, 8960), 43, 0.95).unwrap();
        let diff = |x: &Tensor, y: &Tensor| {
            (x - y).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
        };
        assert_eq!(diff(&a, &b), 0.0, "same seed, same mask");
        assert!(diff(&a, &c) > 0.0, "another seed, another mask");
        let v = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let kept = v.iter().filter(|&&x| x != 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.95).abs() < 0.002, "kept share {kept}");
        assert!(v.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.95).abs() < 1e-6));
        // The mean of the mask is ~1, so dropout keeps the expected activation.
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        assert!((mean - 1.0).abs() < 0.003, "mean {mean}");
    }
}
