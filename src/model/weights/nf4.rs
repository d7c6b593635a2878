//! NF4 with double quantization, as in QLoRA: weights in blocks of 64 share
//! one absmax scale and are stored as 4-bit indices into the NormalFloat
//! codebook; the absmax scales themselves are stored as 8-bit codes in groups
//! of 256 (one f32 scale per group around one f32 mean offset), so the format
//! costs 4 + 8/64 + 32/(64·256) ≈ 4.127 bits per weight.

use candle_core::{DType, Device, Storage, Tensor};

use crate::model::error::{ModelError, Result};

/// The 16 NormalFloat-4 levels: quantiles of N(0,1) rescaled to [-1, 1], with an exact zero.
pub const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Weights sharing one absmax scale.
pub const BLOCK: usize = 64;
/// Absmax scales sharing one second-level f32 scale.
pub const GROUP: usize = 256;

/// A frozen (out, in) weight matrix in NF4 with double-quantized scales.
pub struct Nf4Tensor {
    rows: usize,
    cols: usize,
    /// Two indices per byte, element 2j in the low nibble.
    packed: Tensor,
    /// Per-block absmax as u8 codes: absmax = offset + (code - 128) / 127 · group_scale.
    absmax_codes: Tensor,
    group_scales: Tensor,
    offset: f32,
}

fn nearest_level(v: f32) -> u8 {
    // Midpoints between consecutive levels decide the index.
    let mut idx = 0u8;
    for i in 0..15 {
        if v > (NF4_LEVELS[i] + NF4_LEVELS[i + 1]) * 0.5 {
            idx = i as u8 + 1;
        }
    }
    idx
}

impl Nf4Tensor {
    /// Quantizes an (out, in) matrix; `in` must be a multiple of 64. The work is done
    /// on the CPU and the packed result placed on `device`.
    pub fn quantize(w: &Tensor, device: &Device) -> Result<Self> {
        let (rows, cols) = w.dims2()?;
        if cols % BLOCK != 0 {
            return Err(ModelError::Input(format!(
                "NF4 needs an input width divisible by {BLOCK}, got {cols}"
            )));
        }
        let data = w.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let nblocks = data.len() / BLOCK;
        let absmax: Vec<f32> =
            data.chunks(BLOCK).map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs()))).collect();
        // Second level: centre on the mean, then 8-bit codes per group of 256 scales.
        let offset = (absmax.iter().map(|&a| a as f64).sum::<f64>() / nblocks.max(1) as f64) as f32;
        let mut codes = Vec::with_capacity(nblocks);
        let mut scales = Vec::with_capacity(nblocks.div_ceil(GROUP));
        let mut deq_absmax = Vec::with_capacity(nblocks);
        for g in absmax.chunks(GROUP) {
            let s = g.iter().fold(0f32, |m, a| m.max((a - offset).abs()));
            let s = if s > 0.0 { s } else { 1.0 };
            scales.push(s);
            for &a in g {
                let c = ((a - offset) / s * 127.0).round().clamp(-127.0, 127.0);
                codes.push((c + 128.0) as u8);
                deq_absmax.push(offset + c / 127.0 * s);
            }
        }
        // Indices are chosen against the scale that dequantization will see.
        let mut packed = vec![0u8; data.len() / 2];
        for (bi, block) in data.chunks(BLOCK).enumerate() {
            let a = deq_absmax[bi];
            let inv = if a > 0.0 { 1.0 / a } else { 0.0 };
            for (j, pair) in block.chunks(2).enumerate() {
                let lo = nearest_level(pair[0] * inv);
                let hi = nearest_level(pair[1] * inv);
                packed[(bi * BLOCK) / 2 + j] = lo | (hi << 4);
            }
        }
        Ok(Self {
            rows,
            cols,
            packed: Tensor::from_vec(packed, data.len() / 2, device)?,
            absmax_codes: Tensor::from_vec(codes, nblocks, device)?,
            group_scales: Tensor::from_vec(scales, nblocks.div_ceil(GROUP), device)?,
            offset,
        })
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The stored parts: packed nibbles, absmax codes, group scales and the scale offset.
    #[cfg(feature = "cuda")]
    pub(crate) fn parts(&self) -> (&Tensor, &Tensor, &Tensor, f32) {
        (&self.packed, &self.absmax_codes, &self.group_scales, self.offset)
    }

    pub fn device(&self) -> &Device {
        self.packed.device()
    }

    /// Resident bytes of the packed weight and its scales.
    pub fn storage_bytes(&self) -> usize {
        self.packed.elem_count() + self.absmax_codes.elem_count() + 4 * self.group_scales.elem_count() + 4
    }

    pub fn bits_per_param(&self) -> f64 {
        self.storage_bytes() as f64 * 8.0 / (self.rows * self.cols) as f64
    }

    /// The dense (out, in) matrix in `dtype` on the weight's device.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        let t = match self.device() {
            Device::Cpu => {
                let v = self.dequantize_cpu()?;
                Tensor::from_vec(v, (self.rows, self.cols), &Device::Cpu)?
            }
            _ => self.dequantize_tensor_ops()?,
        };
        Ok(t.to_dtype(dtype)?)
    }

    fn dequantize_cpu(&self) -> Result<Vec<f32>> {
        let packed = cpu_slice_u8(&self.packed)?;
        let codes = cpu_slice_u8(&self.absmax_codes)?;
        let scales = self.group_scales.to_vec1::<f32>()?;
        let n = self.rows * self.cols;
        let mut out = vec![0f32; n];
        let threads = candle_core::utils::get_num_threads().clamp(1, 8);
        let nblocks = n / BLOCK;
        let per = nblocks.div_ceil(threads);
        std::thread::scope(|s| {
            for (ti, chunk) in out.chunks_mut(per * BLOCK).enumerate() {
                let (packed, codes, scales) = (&packed, &codes, &scales);
                let offset = self.offset;
                s.spawn(move || {
                    for (lb, blk) in chunk.chunks_mut(BLOCK).enumerate() {
                        let bi = ti * per + lb;
                        let a = offset + (codes[bi] as f32 - 128.0) / 127.0 * scales[bi / GROUP];
                        let p = &packed[bi * BLOCK / 2..(bi + 1) * BLOCK / 2];
                        for (j, &byte) in p.iter().enumerate() {
                            blk[2 * j] = NF4_LEVELS[(byte & 15) as usize] * a;
                            blk[2 * j + 1] = NF4_LEVELS[(byte >> 4) as usize] * a;
                        }
                    }
                });
            }
        });
        Ok(out)
    }

    /// Device-generic dequantization from tensor ops (used off the CPU until a fused
    /// kernel exists): unpack nibbles arithmetically, look the levels up, scale.
    fn dequantize_tensor_ops(&self) -> Result<Tensor> {
        let dev = self.device();
        let p = self.packed.to_dtype(DType::F32)?;
        let hi = (&p / 16.0)?.floor()?;
        let lo = (&p - (&hi * 16.0)?)?;
        let idx = Tensor::stack(&[&lo, &hi], 1)?.flatten_all()?.to_dtype(DType::U32)?;
        let levels = Tensor::new(&NF4_LEVELS, dev)?;
        let vals = levels.index_select(&idx, 0)?;
        let nblocks = self.absmax_codes.elem_count();
        let ngroups = self.group_scales.elem_count();
        let pad = ngroups * GROUP - nblocks;
        let codes = self.absmax_codes.to_dtype(DType::F32)?;
        let codes =
            if pad > 0 { Tensor::cat(&[&codes, &Tensor::zeros(pad, DType::F32, dev)?], 0)? } else { codes };
        let absmax = ((codes - 128.0)? / 127.0)?
            .reshape((ngroups, GROUP))?
            .broadcast_mul(&self.group_scales.unsqueeze(1)?)?
            .flatten_all()?
            .narrow(0, 0, nblocks)?
            .affine(1.0, self.offset as f64)?;
        let w = vals.reshape((nblocks, BLOCK))?.broadcast_mul(&absmax.unsqueeze(1)?)?;
        Ok(w.reshape((self.rows, self.cols))?)
    }
}

fn cpu_slice_u8(t: &Tensor) -> Result<Vec<u8>> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => {
            let v = c.as_slice::<u8>()?;
            Ok(v[l.start_offset()..l.start_offset() + t.elem_count()].to_vec())
        }
        _ => Err(ModelError::Input("expected a CPU tensor".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let (u1, u2): (f32, f32) = (r.random::<f32>().max(1e-9), r.random());
                (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos() * 0.02
            })
            .collect()
    }

    #[test]
    fn nf4_round_trip_error_is_bounded_per_block() {
        let (rows, cols) = (96, 512);
        let w = gaussian(rows * cols, 7);
        let t = Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu).unwrap();
        let q = Nf4Tensor::quantize(&t, &Device::Cpu).unwrap();
        let d = q.dequantize(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Largest half-gap between levels is (1 - 0.6962) / 2 = 0.1519 of the block absmax;
        // the 8-bit absmax adds at most half a code step of its group scale.
        let mut sq = 0f64;
        let mut ref_sq = 0f64;
        for (b, (wb, db)) in w.chunks(BLOCK).zip(d.chunks(BLOCK)).enumerate() {
            let absmax = wb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (x, y) in wb.iter().zip(db) {
                let err = (x - y).abs();
                assert!(err <= 0.1520 * absmax + 0.01 * absmax + 1e-7, "block {b}: {x} vs {y}");
                sq += (err as f64).powi(2);
                ref_sq += (*x as f64).powi(2);
            }
        }
        let rel_rms = (sq / ref_sq).sqrt();
        // NF4 on Gaussian weights: about 10% relative RMS error.
        assert!(rel_rms < 0.12, "relative RMS error {rel_rms}");
        assert!(rel_rms > 0.02, "suspiciously exact: {rel_rms}");
    }

    #[test]
    fn nf4_double_quant_costs_about_4_127_bits_per_weight() {
        let t = Tensor::from_vec(gaussian(1024 * 1024, 3), (1024, 1024), &Device::Cpu).unwrap();
        let q = Nf4Tensor::quantize(&t, &Device::Cpu).unwrap();
        let bits = q.bits_per_param();
        assert!((bits - 4.127).abs() < 0.001, "{bits} bits/param");
    }

    #[test]
    fn nf4_tensor_op_dequant_equals_cpu_dequant() {
        // 320 blocks: the second scale group is partial.
        let t = Tensor::from_vec(gaussian(64 * 320, 5), (64, 320), &Device::Cpu).unwrap();
        let q = Nf4Tensor::quantize(&t, &Device::Cpu).unwrap();
        let a = q.dequantize(DType::F32).unwrap();
        let b = q.dequantize_tensor_ops().unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-7, "{diff}");
        // Exact zeros and the extremes are representable.
        let z = Tensor::zeros((4, 64), DType::F32, &Device::Cpu).unwrap();
        let qz = Nf4Tensor::quantize(&z, &Device::Cpu).unwrap();
        assert_eq!(
            qz.dequantize(DType::F32).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
    }
}
