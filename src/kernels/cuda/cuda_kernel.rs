//! What every launcher of the crate's own CUDA kernels shares: a kernel's name for the
//! compute dtype it reads or writes (`base_f32`, `base_bf16`, `base_f16`), and dispatch from
//! a candle dtype to the matching Rust element type.

use candle_core::DType;

/// `base` suffixed with the dtype its kernels are built for.
pub fn kernel_name(base: &str, dtype: DType) -> candle_core::Result<String> {
    let sfx = match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => return Err(candle_core::Error::Msg(format!("no CUDA kernel {base} for {other:?}"))),
    };
    Ok(format!("{base}_{sfx}"))
}

/// Runs `$body` with `$t` bound to the Rust element type of `$dtype` (f32, bf16 or f16).
macro_rules! by_dtype {
    ($dtype:expr, $t:ident, $body:block) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            candle_core::DType::F16 => {
                type $t = half::f16;
                $body
            }
            other => Err(candle_core::Error::Msg(format!("no CUDA kernel for {other:?}"))),
        }
    };
}
pub(crate) use by_dtype;
