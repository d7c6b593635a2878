//! Frozen-weight dequantization on a CUDA device, straight into the compute dtype and a slice of
//! rows at a time (kernels in src/model/weights/cuda_dequant.cu, compiled to PTX by build.rs).
//!
//! Two costs of the portable path matter on a 4 GB card. candle's own dequantization writes f32
//! and the cast to bf16 writes a second copy, so a weight briefly costs six bytes per parameter;
//! and the frozen projection's backward expands the whole matrix at once. For the tied lm_head
//! of a Qwen2 vocabulary (151,936 × 1,536) that is 1.4 GB of transient memory for every
//! cross-entropy chunk. Here NF4 and Q8_0 expand directly to bf16/f16/f32, and [`input_grad`]
//! walks the rows in slices of at most [`SLICE_BYTES`], accumulating
//! `∂L/∂x = Σ ∂L/∂y[:, rows] · W[rows, :]` in f32, so the transient is one slice.

use std::ops::Range;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDevice, CudaStorage};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Tensor};

use crate::model::weights::qlinear::FrozenWeight;

use crate::kernels::cuda::cuda_kernel::kernel_name;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cuda_dequant.ptx"));
const MODULE: &str = "warsha_dequant";
/// Largest dense slice of a frozen weight that the backward pass expands at once.
pub const SLICE_BYTES: usize = 64 << 20;
const NF4_BLOCK: usize = 64;
const NF4_GROUP: usize = 256;
const Q8_0_BLOCK: usize = 32;
const Q8_0_BYTES: usize = 34;

fn err(msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuda dequant: {msg}"))
}

fn launch_cfg(items: usize) -> LaunchConfig {
    let threads = 256u32;
    let grid = items.div_ceil(threads as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Allocates `n` elements of `dtype`, pushes the arguments `$push` gives, then the output
/// (every kernel takes it last), launches, and wraps the output as storage.
macro_rules! launch_into {
    ($dev:expr, $dtype:expr, $n:expr, $func:expr, $cfg:expr, |$b:ident| $push:block) => {{
        let dev: &CudaDevice = $dev;
        macro_rules! go {
                    ($t:ty) => {{
                        // SAFETY: the kernel writes all `n` elements before anything reads them.
                        let mut out: CudaSlice<$t> = unsafe { dev.alloc::<$t>($n)? };
                        {
                            let mut $b = $func.builder();
                            $push
                            $b.arg(&mut out);
                            // SAFETY: argument order and types match the kernel's signature in the .cu file.
                            unsafe { $b.launch($cfg) }.map_err(err)?;
                        }
                        CudaStorage::wrap_cuda_slice(out, dev.clone())
                    }};
                }
        match $dtype {
            DType::F32 => go!(f32),
            DType::F16 => go!(half::f16),
            _ => go!(half::bf16),
        }
    }};
}

/// NF4 rows → dense, as a custom op over the three parts (packed, codes, scales).
struct Nf4Rows {
    offset: f32,
    cols: usize,
    rows: Range<usize>,
    dtype: DType,
}

impl CustomOp3 for Nf4Rows {
    fn name(&self) -> &'static str {
        "nf4-rows"
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
        Err(err("the NF4 row kernel runs on CUDA devices only"))
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
        let total = packed_l.shape().elem_count() * 2;
        let blocks = total / NF4_BLOCK;
        if !total.is_multiple_of(NF4_BLOCK)
            || codes_l.shape().elem_count() != blocks
            || scales_l.shape().elem_count() != blocks.div_ceil(NF4_GROUP)
            || self.rows.end * self.cols > total
            || !(self.rows.start * self.cols).is_multiple_of(8)
            || !(self.rows.len() * self.cols).is_multiple_of(8)
        {
            return Err(err(format!(
                "NF4 parts do not match: packed {:?}, codes {:?}, scales {:?}, rows {:?} of width {}",
                packed_l.shape(),
                codes_l.shape(),
                scales_l.shape(),
                self.rows,
                self.cols
            )));
        }
        let contiguous = |l: &Layout, what: &str| {
            l.contiguous_offsets().ok_or_else(|| err(format!("NF4 {what} is not contiguous")))
        };
        let (p0, p1) = contiguous(packed_l, "packed")?;
        let (c0, c1) = contiguous(codes_l, "codes")?;
        let (s0, s1) = contiguous(scales_l, "scales")?;
        if p0 % 4 != 0 {
            return Err(err("NF4 packed nibbles do not start on a 4-byte boundary"));
        }
        let dev = packed.device();
        let packed = packed.as_cuda_slice::<u8>()?.slice(p0..p1);
        let codes = codes.as_cuda_slice::<u8>()?.slice(c0..c1);
        let scales = scales.as_cuda_slice::<f32>()?.slice(s0..s1);
        let n = self.rows.len() * self.cols;
        let first_word = (self.rows.start * self.cols / 8) as u64;
        let words = (n / 8) as u64;
        let func = dev.get_or_load_custom_func(&kernel_name("nf4_rows", self.dtype)?, MODULE, PTX)?;
        let offset = self.offset;
        let storage = launch_into!(dev, self.dtype, n, func, launch_cfg(n / 8), |b| {
            b.arg(&packed).arg(&codes).arg(&scales).arg(&offset).arg(&first_word).arg(&words);
        });
        Ok((storage, Shape::from((self.rows.len(), self.cols))))
    }
}

/// Q8_0 rows → dense. The quantized data is not a tensor, so the op is applied to any tensor
/// on the same device (its contents are not read) and reads the blocks through the QTensor.
struct Q8_0Rows {
    q: Arc<QTensor>,
    cols: usize,
    rows: Range<usize>,
    dtype: DType,
}

impl CustomOp1 for Q8_0Rows {
    fn name(&self) -> &'static str {
        "q8_0-rows"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(err("the Q8_0 row kernel runs on CUDA devices only"))
    }

    fn cuda_fwd(&self, carrier: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        if !self.cols.is_multiple_of(Q8_0_BLOCK)
            || self.rows.end * self.cols > self.q.shape().elem_count()
            || self.q.storage_size_in_bytes() < self.rows.end * self.cols / Q8_0_BLOCK * Q8_0_BYTES
        {
            return Err(err(format!(
                "Q8_0 rows {:?} of width {} out of {:?}",
                self.rows,
                self.cols,
                self.q.shape()
            )));
        }
        let dev = carrier.device();
        let stream = dev.cuda_stream();
        let n = self.rows.len() * self.cols;
        let first_quad = (self.rows.start * self.cols / 4) as u64;
        let quads = (n / 4) as u64;
        let func = dev.get_or_load_custom_func(&kernel_name("q8_0_rows", self.dtype)?, MODULE, PTX)?;
        let (ptr, guard) = self.q.device_ptr_with_guard(&stream)?;
        let data = ptr as u64;
        let storage = launch_into!(dev, self.dtype, n, func, launch_cfg(n / 4), |b| {
            b.arg(&data).arg(&first_quad).arg(&quads);
        });
        drop(guard);
        Ok((storage, Shape::from((self.rows.len(), self.cols))))
    }
}

/// Rows `rows` of a frozen (out, in) weight on a CUDA device as a dense tensor in `dtype`,
/// from the kernels here; None for storage types they do not cover (the caller then uses
/// candle's dequantization of the whole matrix).
pub fn weight_rows(
    w: &FrozenWeight,
    rows: Range<usize>,
    dtype: DType,
) -> candle_core::Result<Option<Tensor>> {
    let (_, cols) = w.dims();
    match w {
        FrozenWeight::Nf4(n) if n.device().is_cuda() => {
            let (packed, codes, scales, offset) = n.parts();
            let op = Nf4Rows { offset, cols, rows, dtype };
            Ok(Some(packed.apply_op3_no_bwd(codes, scales, &op)?))
        }
        FrozenWeight::Ggml(q) if q.dtype() == GgmlDType::Q8_0 && q.device().is_cuda() => {
            let carrier = Tensor::zeros(1, DType::U8, &q.device())?;
            let op = Q8_0Rows { q: q.clone(), cols, rows, dtype };
            Ok(Some(carrier.apply_op1_no_bwd(&op)?))
        }
        _ => Ok(None),
    }
}

/// `∂L/∂x = ∂L/∂y · W` for a frozen (out, in) weight on a CUDA device, expanding at most
/// [`SLICE_BYTES`] of `W` at a time. `grad` is (…, out); the result (…, in) in grad's dtype.
/// None when the weight's type has no row kernel and the whole matrix is small enough that
/// slicing buys nothing.
pub fn input_grad(w: &FrozenWeight, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let (n, k) = w.dims();
    let dtype = grad.dtype();
    let dense_bytes = n * k * dtype.size_in_bytes();
    let covered = matches!(w, FrozenWeight::Nf4(_))
        || matches!(w, FrozenWeight::Ggml(q) if q.dtype() == GgmlDType::Q8_0);
    if !covered {
        return Ok(None);
    }
    let m = grad.elem_count() / n;
    let g = grad.reshape((m, n))?;
    if dense_bytes <= SLICE_BYTES {
        let Some(wd) = weight_rows(w, 0..n, dtype)? else { return Ok(None) };
        return Ok(Some(g.matmul(&wd)?));
    }
    // Rows per slice: a multiple of 8 keeps NF4 slices on whole 32-bit words.
    let per = ((SLICE_BYTES / (k * dtype.size_in_bytes())) / 8 * 8).max(8);
    let mut acc: Option<Tensor> = None;
    for r0 in (0..n).step_by(per) {
        let r1 = (r0 + per).min(n);
        let Some(wd) = weight_rows(w, r0..r1, dtype)? else { return Ok(None) };
        let part = g.narrow(1, r0, r1 - r0)?.contiguous()?.matmul(&wd)?.to_dtype(DType::F32)?;
        drop(wd);
        acc = Some(match acc {
            None => part,
            Some(a) => (a + part)?,
        });
    }
    match acc {
        Some(a) => Ok(Some(a.to_dtype(dtype)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    //! These run where a CUDA device is present (the GPU benchmark machine); elsewhere they
    //! return early, since the crate's CI builds without the `cuda` feature anyway.
    use super::*;
    use crate::model::weights::nf4::Nf4Tensor;
    use crate::model::weights::qlinear::FrozenLinear;
    use candle_core::{Device, Var};

    fn cuda() -> Option<Device> {
        Device::new_cuda(0).ok()
    }

    fn gaussian(shape: (usize, usize), dev: &Device) -> Tensor {
        Tensor::randn(0f32, 0.02, shape, dev).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
        let b = b.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn nf4_kernel_matches_cpu_dequantization() {
        let Some(dev) = cuda() else { return };
        // 96 x 4160: 6240 blocks, the last scale group partial; rows not a multiple of 256.
        let w = gaussian((96, 4160), &Device::Cpu);
        let cpu = Nf4Tensor::quantize(&w, &Device::Cpu).unwrap();
        let reference = cpu.dequantize(DType::F32).unwrap();
        let gpu = FrozenWeight::Nf4(Nf4Tensor::quantize(&w, &dev).unwrap());
        // The device may fuse the scale's multiply-add (one rounding instead of two): allow
        // one f32 ulp of the largest weight, nothing more.
        let ulp = 2e-7 * reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let full = weight_rows(&gpu, 0..96, DType::F32).unwrap().unwrap();
        assert!(max_abs_diff(&full, &reference) <= ulp);
        let part = weight_rows(&gpu, 8..40, DType::F32).unwrap().unwrap();
        assert!(max_abs_diff(&part, &reference.narrow(0, 8, 32).unwrap()) <= ulp);
        for dt in [DType::BF16, DType::F16] {
            let d = weight_rows(&gpu, 0..96, dt).unwrap().unwrap();
            assert_eq!(d.dtype(), dt);
            // Rounded once to the narrow type: within half of its ulp (2^-8 bf16, 2^-11 f16).
            let rel = if dt == DType::BF16 { 4e-3 } else { 5e-4 };
            let r = reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(max_abs_diff(&d, &reference) <= rel * r, "{dt:?}");
        }
    }

    #[test]
    fn q8_0_kernel_matches_candle_dequantization() {
        let Some(dev) = cuda() else { return };
        let w = gaussian((300, 1536), &Device::Cpu);
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let reference = q.dequantize(&Device::Cpu).unwrap();
        let qd = QTensor::quantize_onto(&w, GgmlDType::Q8_0, &dev).unwrap();
        let fw = FrozenWeight::Ggml(Arc::new(qd));
        let full = weight_rows(&fw, 0..300, DType::F32).unwrap().unwrap();
        assert_eq!(max_abs_diff(&full, &reference), 0.0);
        let part = weight_rows(&fw, 17..211, DType::BF16).unwrap().unwrap();
        let r = reference.narrow(0, 17, 194).unwrap().to_dtype(DType::BF16).unwrap();
        assert_eq!(max_abs_diff(&part, &r), 0.0);
    }

    #[test]
    fn sliced_input_grad_matches_one_product() {
        let Some(dev) = cuda() else { return };
        // A vocabulary-sized table, large enough that the backward slices it.
        let (n, k) = (40_000, 1024);
        let w = gaussian((n, k), &dev);
        let q = QTensor::quantize_onto(&w.to_device(&Device::Cpu).unwrap(), GgmlDType::Q8_0, &dev).unwrap();
        let fw = FrozenWeight::Ggml(Arc::new(q));
        assert!(n * k * 4 > SLICE_BYTES);
        let g = gaussian((64, n), &dev);
        let sliced = input_grad(&fw, &g).unwrap().unwrap();
        let dense = weight_rows(&fw, 0..n, DType::F32).unwrap().unwrap();
        let whole = g.matmul(&dense).unwrap();
        let scale = whole.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max_abs_diff(&sliced, &whole) / scale < 1e-5);
    }

    #[test]
    fn frozen_linear_grads_on_cuda_match_dense_reference() {
        let Some(dev) = cuda() else { return };
        let wc = gaussian((512, 1024), &Device::Cpu);
        for (name, lin) in [
            ("nf4", FrozenLinear::new(FrozenWeight::Nf4(Nf4Tensor::quantize(&wc, &dev).unwrap()), None)),
            (
                "q8_0",
                FrozenLinear::new(
                    FrozenWeight::Ggml(Arc::new(QTensor::quantize_onto(&wc, GgmlDType::Q8_0, &dev).unwrap())),
                    None,
                ),
            ),
            (
                "q4k",
                FrozenLinear::new(
                    FrozenWeight::Ggml(Arc::new(QTensor::quantize_onto(&wc, GgmlDType::Q4K, &dev).unwrap())),
                    None,
                ),
            ),
        ] {
            for dt in [DType::F32, DType::BF16, DType::F16] {
                let wd = lin.weight().dequantize(DType::F32).unwrap();
                let x0 = gaussian((6, 1024), &dev).to_dtype(dt).unwrap();
                let gy = gaussian((6, 512), &dev).to_dtype(dt).unwrap();
                let x = Var::from_tensor(&x0).unwrap();
                let y = lin.forward(x.as_tensor()).unwrap();
                assert_eq!(y.dtype(), dt, "{name} {dt:?}");
                let grads = (y.to_dtype(DType::F32).unwrap() * gy.to_dtype(DType::F32).unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let gx = grads.get(x.as_tensor()).unwrap().to_dtype(DType::F32).unwrap();
                let gx_ref = gy.to_dtype(DType::F32).unwrap().matmul(&wd).unwrap();
                let scale = gx_ref.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let tol = if dt == DType::F32 { 1e-5 } else { 2e-2 };
                let rel = max_abs_diff(&gx, &gx_ref) / scale;
                assert!(rel < tol, "{name} {dt:?}: {rel}");
            }
        }
    }

    /// Where the time and memory of a Qwen2-1.5B step go on the device: device memory after
    /// load, then for each length the no-grad forward (blocks + lm_head + log-softmax) beside
    /// the full loss-and-gradients step. Heavy: run explicitly with `--ignored` on a GPU.
    #[test]
    #[ignore]
    fn qwen2_1_5b_step_on_cuda() {
        use crate::model::{
            Adapter, Base, Batch, LoadOptions, LoraConfig, ModelConfig, QuantKind, Target, TrainOptions,
        };
        use std::time::Instant;
        let Some(dev) = cuda() else { return };
        let Device::Cuda(cd) = &dev else { return };
        let used = || {
            dev.synchronize().unwrap();
            let (free, total) = crate::kernels::cuda::cuda_mem::mem_info(cd).unwrap();
            (total - free) as f64 / 1048576.0
        };
        println!("device used at start: {:.0} MiB", used());
        let cfg = ModelConfig::qwen2_1_5b();
        let opts = LoadOptions { device: dev.clone(), dtype: DType::BF16, quant: QuantKind::Nf4 };
        let base = Base::random(&cfg, QuantKind::Nf4, 7, &opts).unwrap();
        println!("after load: {:.0} MiB (weights {:.0} MiB)", used(), base.weight_bytes() as f64 / 1048576.0);
        let lora = LoraConfig { rank: 16, alpha: 32.0, dropout: 0.05, targets: Target::ALL.to_vec() };
        let adapter = Adapter::new(&cfg, &lora, 5, &dev).unwrap();
        println!("after adapter: {:.0} MiB", used());
        for seq in [512usize, 2048] {
            let ids: Vec<u32> = (0..=seq as u32).map(|i| (i * 7919) % cfg.vocab_size as u32).collect();
            let batch = Batch {
                input_ids: Tensor::new(&ids[..seq], &dev).unwrap().unsqueeze(0).unwrap(),
                targets: Tensor::new(&ids[1..], &dev).unwrap().unsqueeze(0).unwrap(),
                loss_mask: Tensor::ones((1, seq), DType::F32, &dev).unwrap(),
                segment_ids: None,
            };
            let time = |f: &mut dyn FnMut()| {
                f();
                dev.synchronize().unwrap();
                let t = Instant::now();
                for _ in 0..3 {
                    f();
                }
                dev.synchronize().unwrap();
                t.elapsed().as_secs_f64() / 3.0
            };
            let fwd = time(&mut || {
                base.target_logprobs(&batch, Some(&adapter)).unwrap();
            });
            for ce_chunk in [128usize, 32] {
                let topts = TrainOptions { recompute: true, dropout: true, ce_chunk, loss_scale: 1.0 };
                let mut out = None;
                let step = time(&mut || {
                    out = Some(base.loss_and_grads(&batch, &adapter, &topts).unwrap());
                });
                let o = out.take().unwrap();
                for (_, v) in adapter.vars() {
                    let g = o.grads.get(v.as_tensor()).expect("every LoRA tensor gets a gradient");
                    let s = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                    assert!(s.is_finite());
                }
                println!(
                    "seq {seq} ce_chunk {ce_chunk}: no-grad forward {:.3}s, loss+grads (recompute) {step:.3}s \
                     ({:.0} tok/s), loss {:.3}, used after {:.0} MiB",
                    fwd,
                    seq as f64 / step,
                    o.loss_sum / o.tokens as f64,
                    used()
                );
            }
        }
    }
}
