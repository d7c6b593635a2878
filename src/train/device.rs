//! Where training runs and in which precision: f32 on CPU; on CUDA bf16 when
//! the GPU has bf16 kernels (compute capability 8.0 and up), otherwise f16
//! with dynamic loss scaling (a Turing card such as the GTX 1650).

use candle_core::{DType, Device};

use super::TrainError;

/// Shorten how long candle's CPU thread-pool workers spin at a barrier before
/// they sleep, unless the operator set `CANDLE_BARRIER_POOL_SPIN_LIMIT`. With
/// candle's default the spinning took several times the CPU of the work itself
/// whenever the cores were shared (ingest, queries, other processes); 2,000
/// rounds keep the same speed on an idle box (SmolLM2 training 70.9 vs 71.5
/// tokens/s) with 13% less CPU. Every core stays in use: a single-threaded pool
/// trained 13% slower and ran generation's quantized products on one core.
/// Call before the first tensor op.
pub fn tame_cpu_threads() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "2000");
    }
}

/// User + system CPU seconds this process has used.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Pick the device for `spec` ("auto", "cpu" or "cuda") and its compute dtype.
pub fn select(spec: &str) -> Result<(Device, DType), TrainError> {
    match spec {
        "cpu" => Ok((Device::Cpu, DType::F32)),
        "cuda" => {
            let d = Device::new_cuda(0).map_err(|e| TrainError::Device(format!("cuda: {e}")))?;
            let dt = cuda_dtype(&d);
            Ok((d, dt))
        }
        _ => {
            if cfg!(feature = "cuda") {
                if let Ok(d) = Device::new_cuda(0) {
                    let dt = cuda_dtype(&d);
                    return Ok((d, dt));
                }
            }
            Ok((Device::Cpu, DType::F32))
        }
    }
}

fn cuda_dtype(d: &Device) -> DType {
    match compute_capability(d) {
        Some((major, _)) if major >= 8 => DType::BF16,
        _ => DType::F16,
    }
}

/// The GPU's compute capability (major, minor); None on CPU.
#[cfg(feature = "cuda")]
pub fn compute_capability(d: &Device) -> Option<(i32, i32)> {
    use candle_core::cuda::cudarc::driver::{result, sys};
    let Device::Cuda(c) = d else { return None };
    let dev = c.cuda_stream().context().cu_device();
    // SAFETY: attribute queries on a device handle owned by a live context.
    let major = unsafe {
        result::device::get_attribute(
            dev,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
        )
    }
    .ok()?;
    let minor = unsafe {
        result::device::get_attribute(
            dev,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
        )
    }
    .ok()?;
    Some((major, minor))
}

#[cfg(not(feature = "cuda"))]
pub fn compute_capability(_d: &Device) -> Option<(i32, i32)> {
    None
}

/// "cpu", "cuda".
pub fn name(d: &Device) -> &'static str {
    if d.is_cpu() {
        "cpu"
    } else if d.is_cuda() {
        "cuda"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_trains_in_f32_and_auto_falls_back_to_cpu_without_a_gpu() {
        let (d, dt) = select("cpu").unwrap();
        assert!(d.is_cpu());
        assert_eq!(dt, DType::F32);
        if !cfg!(feature = "cuda") {
            assert!(select("auto").unwrap().0.is_cpu());
            assert!(select("cuda").is_err());
        }
    }
}
