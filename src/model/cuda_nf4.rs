//! NF4 dequantization on a CUDA device in one kernel launch (src/model/cuda_nf4.cu, compiled to
//! PTX by build.rs). The portable path in nf4.rs builds the dense matrix from a dozen tensor ops
//! with f32 temporaries several times the weight's dense size; this one reads the packed nibbles
//! and 8-bit scales once and writes the dense matrix once, in the compute dtype, so the frozen
//! projection's forward and backward hold a single dense copy for the length of one product.

use candle_core::cuda::cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cuda_nf4.ptx"));
const MODULE: &str = "warsha_nf4";
const BLOCK: usize = 64;
const GROUP: usize = 256;

/// Dense `(rows, cols)` matrix in `dtype` (F32, F16 or BF16) from NF4 parts that live on a CUDA
/// device: `packed` (u8, two indices per byte), `codes` (u8, one per 64-block), `scales` (f32,
/// one per 256 blocks) and the scalar `offset` of the double quantization.
pub fn dequantize(
    packed: &Tensor,
    codes: &Tensor,
    scales: &Tensor,
    offset: f32,
    (rows, cols): (usize, usize),
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let op = Nf4Dequant { offset, rows, cols, dtype };
    packed.apply_op3_no_bwd(codes, scales, &op)
}

struct Nf4Dequant {
    offset: f32,
    rows: usize,
    cols: usize,
    dtype: DType,
}

fn err(msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("nf4 dequant (cuda): {msg}"))
}

fn contiguous_view<'a, T: candle_core::cuda::CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<candle_core::cuda::cudarc::driver::CudaView<'a, T>> {
    let slice: &CudaSlice<T> = s.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(slice.slice(a..b)),
        None => Err(err(format!("{what} is not contiguous"))),
    }
}

impl CustomOp3 for Nf4Dequant {
    fn name(&self) -> &'static str {
        "nf4-dequant"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        // CPU weights are expanded by Nf4Tensor's own threaded loop; this op is the device path.
        Err(err("called on CPU tensors"))
    }

    fn cuda_fwd(
        &self,
        packed: &CudaStorage,
        packed_l: &Layout,
        codes: &CudaStorage,
        codes_l: &Layout,
        scales: &CudaStorage,
        scales_l: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let n = self.rows * self.cols;
        if n % BLOCK != 0 {
            return Err(err(format!("{}x{} is not a whole number of 64-blocks", self.rows, self.cols)));
        }
        let words = n / 8;
        let blocks = n / BLOCK;
        if packed_l.shape().elem_count() != n / 2
            || codes_l.shape().elem_count() != blocks
            || scales_l.shape().elem_count() != blocks.div_ceil(GROUP)
        {
            return Err(err(format!(
                "parts do not match {}x{}: packed {:?}, codes {:?}, scales {:?}",
                self.rows,
                self.cols,
                packed_l.shape(),
                codes_l.shape(),
                scales_l.shape()
            )));
        }
        let dev: &CudaDevice = packed.device();
        let packed_v = contiguous_view::<u8>(packed, packed_l, "packed")?;
        let codes_v = contiguous_view::<u8>(codes, codes_l, "codes")?;
        let scales_v = contiguous_view::<f32>(scales, scales_l, "scales")?;
        // The kernel reads the packed stream as 32-bit words.
        let stream = dev.cuda_stream();
        let (ptr, _guard) = packed_v.device_ptr(&stream);
        if ptr % 4 != 0 {
            return Err(err("packed weights are not 4-byte aligned"));
        }
        drop(_guard);

        let name = match self.dtype {
            DType::F32 => "nf4_dequant_f32",
            DType::F16 => "nf4_dequant_f16",
            DType::BF16 => "nf4_dequant_bf16",
            other => return Err(err(format!("no kernel for {other:?} output"))),
        };
        let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        let threads = 256u32;
        let grid = words.div_ceil(threads as usize).min(65_535 * 16) as u32;
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let offset = self.offset;
        let words_arg = words;
        let storage = match self.dtype {
            DType::F32 => {
                // SAFETY: every element is written by the kernel before the slice is read.
                let out = unsafe { dev.alloc::<f32>(n)? };
                let mut b = func.builder();
                b.arg(&packed_v).arg(&codes_v).arg(&scales_v).arg(&offset).arg(&out).arg(&words_arg);
                unsafe { b.launch(cfg) }.map_err(err)?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }
            DType::F16 => {
                let out = unsafe { dev.alloc::<half::f16>(n)? };
                let mut b = func.builder();
                b.arg(&packed_v).arg(&codes_v).arg(&scales_v).arg(&offset).arg(&out).arg(&words_arg);
                unsafe { b.launch(cfg) }.map_err(err)?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }
            _ => {
                let out = unsafe { dev.alloc::<half::bf16>(n)? };
                let mut b = func.builder();
                b.arg(&packed_v).arg(&codes_v).arg(&scales_v).arg(&offset).arg(&out).arg(&words_arg);
                unsafe { b.launch(cfg) }.map_err(err)?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }
        };
        Ok((storage, Shape::from((self.rows, self.cols))))
    }
}
