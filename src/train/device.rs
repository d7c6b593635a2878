//! Where the model runs and in which precision — the one place that decides,
//! for training, generation, evaluation and the benchmarks alike: f32 on CPU;
//! on CUDA bf16 when the GPU has bf16 kernels (compute capability 8.0 and up),
//! otherwise f16 with dynamic loss scaling (a Turing card such as the GTX
//! 1650); weights that arrive unquantized are quantized to `[model] quant`.
//!
//! [`Placement`] is that decision as a value, built from the config (with the
//! benchmarks' overrides); nothing else picks a device or dtype.

use candle_core::{DType, Device};

use super::TrainError;
use crate::config;
use crate::model::{Base, LoadOptions, QuantKind};
use crate::store::evals::EvalPlacement;

/// The device, compute dtype and load-time quantization a model runs with.
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: Device,
    pub dtype: DType,
    pub quant: QuantKind,
}

impl Placement {
    /// `[model] device` and `[model] quant`.
    pub fn from_config(m: &config::Model) -> Result<Self, TrainError> {
        Self::resolve(&m.device, None, &m.quant)
    }

    /// A device spec ("auto", "cpu", "cuda"), an optional dtype instead of the
    /// device's choice ("f32" anywhere, "bf16" or "f16" on CUDA) and a quant name.
    pub fn resolve(device: &str, dtype: Option<&str>, quant: &str) -> Result<Self, TrainError> {
        let quant: QuantKind = quant.parse()?;
        let (device, auto) = select(device)?;
        let dtype = match dtype {
            None => auto,
            Some("f32") => DType::F32,
            Some("bf16") if device.is_cuda() => DType::BF16,
            Some("f16") if device.is_cuda() => DType::F16,
            Some(other) => {
                return Err(TrainError::Device(format!(
                    "dtype {other}: f32 anywhere, bf16 or f16 on a CUDA device"
                )))
            }
        };
        Ok(Self { device, dtype, quant })
    }

    /// What [`Base::load`] takes.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions { device: self.device.clone(), dtype: self.dtype, quant: self.quant }
    }

    /// The placement a loaded model runs with.
    pub fn of(base: &Base) -> Self {
        Self { device: base.device().clone(), dtype: base.dtype(), quant: base.quant() }
    }

    /// The placement by name, as recorded beside an evaluation: figures
    /// measured under one placement are not reused for another.
    pub fn key(&self) -> EvalPlacement {
        EvalPlacement {
            device: name(&self.device).to_string(),
            dtype: format!("{:?}", self.dtype).to_lowercase(),
            quant: match self.quant {
                QuantKind::Nf4 => "nf4",
                QuantKind::Q4K => "q4k",
            }
            .to_string(),
        }
    }
}

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

/// Pick the device for `spec` ("auto", "cpu" or "cuda") and its compute dtype.
fn select(spec: &str) -> Result<(Device, DType), TrainError> {
    match spec {
        "cpu" => Ok((Device::Cpu, DType::F32)),
        "cuda" => {
            let d = Device::new_cuda(0).map_err(|e| TrainError::Device(format!("cuda: {e}")))?;
            let dt = cuda_dtype(&d);
            Ok((d, dt))
        }
        "auto" => {
            if cfg!(feature = "cuda") {
                if let Ok(d) = Device::new_cuda(0) {
                    let dt = cuda_dtype(&d);
                    return Ok((d, dt));
                }
            }
            Ok((Device::Cpu, DType::F32))
        }
        other => Err(TrainError::Device(format!("unknown device {other:?} (auto, cpu or cuda)"))),
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
    fn placement_takes_the_dtype_override_only_where_the_device_has_it() {
        let p = Placement::resolve("cpu", None, "q4k").unwrap();
        assert_eq!(p.key(), EvalPlacement { device: "cpu".into(), dtype: "f32".into(), quant: "q4k".into() });
        assert!(Placement::resolve("cpu", Some("bf16"), "nf4").is_err());
        assert!(Placement::resolve("cpu", None, "int3").is_err());
        assert_eq!(Placement::resolve("cpu", Some("f32"), "nf4").unwrap().dtype, DType::F32);
    }

    #[test]
    fn cpu_trains_in_f32_and_auto_falls_back_to_cpu_without_a_gpu() {
        let (d, dt) = select("cpu").unwrap();
        assert!(d.is_cpu());
        assert_eq!(dt, DType::F32);
        if !cfg!(feature = "cuda") {
            assert!(select("auto").unwrap().0.is_cpu());
            assert!(select("cuda").is_err());
        }
        assert!(select("gpu").is_err(), "an unknown name is refused, not taken for auto");
    }
}
