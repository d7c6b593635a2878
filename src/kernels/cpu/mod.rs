//! Quantized-weight × f32 matrix products on x86-64 CPUs for the GGUF block types
//! the appliance meets (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K).
//!
//! candle multiplies row by row with one dot product per (weight row, input row)
//! pair, re-decoding every weight block for every input row, and has no SIMD
//! product at all for Q4_1 or Q5_0 (SmolLM2's Q4_1 file, and the Q5_0 tensors
//! that llama.cpp's Q4_K_M files fall back to when a row is not a multiple of 256).
//! Here each weight row is decoded once into a small buffer of uniform 32-value
//! blocks (`value = scale·q + offset`, q unsigned, one scale and offset per half
//! block so Q6_K's 16-value scales fit too) that stays in L1, and every input row
//! is then multiplied against it with 8-bit integer dot products (AVX-VNNI where
//! the CPU has it, AVX2 otherwise). Inputs are rounded to 8 bits per 32 values,
//! as llama.cpp does.
//!
//! Several weights that share one input (q/k/v, gate/up) run as one parallel
//! job, so the input is quantized once and the thread pool wakes once.
//!
//! It takes raw GGUF block bytes and f32 rows; it knows nothing of `Base`, LoRA or training.

mod dot;
mod quant;
mod unpack;

use candle_core::quantized::GgmlDType;

use quant::Acts;
use unpack::Format;

/// One weight of a [`matmul_many`] call: raw GGUF blocks of an (rows, k) matrix.
pub struct Part<'a> {
    pub dtype: GgmlDType,
    pub data: &'a [u8],
    pub rows: usize,
}

/// Which instruction forms the dot products.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Isa {
    /// `vpdpbusd` (AVX-VNNI): u8 × i8 summed into i32 lanes without saturation.
    Vnni,
    /// `vpmaddubsw` + `vpmaddwd`: exact while weights stay below 64 (up to 6 bits).
    Avx2,
}

fn isa() -> Option<Isa> {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    if !avx2 {
        None
    } else if is_x86_feature_detected!("avxvnni") {
        Some(Isa::Vnni)
    } else {
        Some(Isa::Avx2)
    }
}

/// True when this CPU runs products of `dtype` weights with an inner size of `k` here.
pub fn supports(dtype: GgmlDType, k: usize) -> bool {
    let (Some(isa), Some(f)) = (isa(), Format::of(dtype)) else {
        return false;
    };
    // 8-bit weights would saturate vpmaddubsw's 16-bit pair sums.
    let exact = isa == Isa::Vnni || f != Format::Q8_0;
    exact && k.is_multiple_of(f.values_per_block())
}

/// `y (m, n) = x (m, k) · Wᵀ` for one weight; see [`matmul_many`].
#[cfg(test)]
pub fn matmul(dtype: GgmlDType, data: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    let mut out = matmul_many(&[Part { dtype, data, rows: n }], k, x, m);
    out.pop().unwrap_or_default()
}

/// `y_i (m, rows_i) = x (m, k) · W_iᵀ` for weights that share the input `x`, in one
/// job over all their rows. Callers check [`supports`] for every part first.
pub fn matmul_many(parts: &[Part<'_>], k: usize, x: &[f32], m: usize) -> Vec<Vec<f32>> {
    match isa() {
        Some(isa) => run(isa, parts, k, x, m),
        None => parts.iter().map(|p| vec![0.0; m * p.rows]).collect(),
    }
}

fn run(isa: Isa, parts: &[Part<'_>], k: usize, x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let acts = Acts::quantize(x, m, k);
    let formats: Vec<Format> = parts.iter().filter_map(|p| Format::of(p.dtype)).collect();
    if formats.len() != parts.len() {
        return parts.iter().map(|p| vec![0.0; m * p.rows]).collect();
    }
    let mut outs: Vec<Vec<f32>> = parts.iter().map(|p| vec![0f32; m * p.rows]).collect();
    // Raw pointers are not Send; the job gets their addresses.
    let out_addrs: Vec<usize> = outs.iter_mut().map(|o| o.as_mut_ptr() as usize).collect();
    let ends: Vec<usize> = parts
        .iter()
        .scan(0, |acc, p| {
            *acc += p.rows;
            Some(*acc)
        })
        .collect();
    let total = ends.last().copied().unwrap_or(0);
    let pool = candle_core::utils::barrier_pool();
    pool.execute_chunked(total, |rows| {
        let mut buf = dot::RowBuf::new(k);
        let mut g = rows.start;
        while g < rows.end {
            // The part that global row g falls in, and the stretch of this chunk inside it.
            let pi = ends.partition_point(|&e| e <= g);
            let start = ends[pi] - parts[pi].rows;
            let end = rows.end.min(ends[pi]);
            let out = dot::Out { ptr: out_addrs[pi] as *mut f32, n: parts[pi].rows };
            // SAFETY: `isa` came from runtime detection; each part's data holds `rows` whole
            // rows of `k` values (checked by `supports` and the callers' shapes); this chunk
            // writes only its own weight rows' columns of `outs`, which outlive the job.
            unsafe {
                dot::products(
                    isa,
                    formats[pi],
                    parts[pi].data,
                    g - start..end - start,
                    k,
                    &acts,
                    out,
                    &mut buf,
                )
            };
            g = end;
        }
    });
    outs
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    fn data(n: usize, seed: usize) -> Vec<f32> {
        // Uneven magnitudes per row so block scales differ.
        (0..n)
            .map(|i| (((i + seed) * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / 256 % 5) as f32))
            .collect()
    }

    /// Every format against the exact product with candle's own dequantization of the
    /// same blocks; only the 8-bit rounding of the input separates them.
    #[test]
    fn every_format_matches_the_product_of_its_dequantized_weight() {
        let types = [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ];
        let (n, k) = (37, 512);
        for t in types {
            if !supports(t, k) {
                println!("skipping {t:?}: not supported on this CPU");
                continue;
            }
            let w = Tensor::from_vec(data(n * k, 3), (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, t).unwrap();
            let wd = q.dequantize(&Device::Cpu).unwrap();
            for m in [1, 2, 3, 4, 5, 9, 70] {
                let x = data(m * k, 11 + m);
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                let want: Vec<f32> =
                    xt.matmul(&wd.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                // The plain AVX2 form is checked too wherever AVX-VNNI made it the default.
                let isas = if isa() == Some(Isa::Vnni) && t != GgmlDType::Q8_0 {
                    vec![Isa::Vnni, Isa::Avx2]
                } else {
                    isa().into_iter().collect()
                };
                for i in isas {
                    let data = q.data().unwrap();
                    let got = run(i, &[Part { dtype: t, data: &data, rows: n }], k, &x, m).remove(0);
                    let err = got.iter().zip(&want).fold(0f32, |e, (a, b)| e.max((a - b).abs())) / scale;
                    // 8-bit rounding of the input costs ~4e-4 here; a misplaced bit or scale costs > 1e-1.
                    assert!(err < 2e-3, "{t:?} {i:?} m={m}: relative error {err}");
                }
            }
        }
    }

    /// A row's result must not depend on the rows computed with it (generation
    /// feeds one row, scoring and training many): bit for bit.
    #[test]
    fn each_row_is_the_same_alone_or_in_a_batch() {
        let (n, k) = (19, 768);
        for t in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q8_0] {
            if !supports(t, k) {
                continue;
            }
            let w = Tensor::from_vec(data(n * k, 2), (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, t).unwrap();
            let raw = q.data().unwrap();
            let x = data(70 * k, 9);
            let all = matmul(t, &raw, n, k, &x, 70);
            for (i, row) in x.chunks(k).enumerate() {
                assert_eq!(matmul(t, &raw, n, k, row, 1), all[i * n..(i + 1) * n], "{t:?} row {i}");
            }
        }
    }

    #[test]
    fn grouped_weights_equal_separate_products() {
        let k = 256;
        let ws: Vec<(GgmlDType, usize)> =
            vec![(GgmlDType::Q4_1, 20), (GgmlDType::Q5_0, 7), (GgmlDType::Q4K, 33)];
        if ws.iter().any(|(t, _)| !supports(*t, k)) {
            return;
        }
        let qs: Vec<QTensor> = ws
            .iter()
            .enumerate()
            .map(|(i, (t, n))| {
                let w = Tensor::from_vec(data(n * k, i), (*n, k), &Device::Cpu).unwrap();
                QTensor::quantize(&w, *t).unwrap()
            })
            .collect();
        let raw: Vec<Vec<u8>> = qs.iter().map(|q| q.data().unwrap().into_owned()).collect();
        let x = data(6 * k, 5);
        let parts: Vec<Part> =
            ws.iter().zip(&raw).map(|((t, n), d)| Part { dtype: *t, data: d, rows: *n }).collect();
        let together = matmul_many(&parts, k, &x, 6);
        for (p, y) in parts.iter().zip(&together) {
            assert_eq!(y, &matmul(p.dtype, p.data, p.rows, k, &x, 6));
        }
    }
}

#[cfg(test)]
mod real_weights {
    use super::*;
    use candle_core::quantized::gguf_file;
    use candle_core::{Device, Tensor};

    /// Every projection type of a real GGUF file, several input row counts.
    #[test]
    fn real_gguf_weights_match_their_dequantized_product() {
        let path = std::path::Path::new("/work/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !path.is_file() {
            return;
        }
        let mut f = std::fs::File::open(path).unwrap();
        let c = gguf_file::Content::read(&mut f).unwrap();
        for name in
            ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.3.ffn_gate.weight", "token_embd.weight"]
        {
            let q = c.tensor(&mut f, name, &Device::Cpu).unwrap();
            let (n, k) = q.shape().dims2().unwrap();
            let wd = q.dequantize(&Device::Cpu).unwrap();
            for m in [1, 5, 6, 9, 70] {
                let x: Vec<f32> = (0..m * k).map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0).collect();
                let got = matmul(q.dtype(), &q.data().unwrap(), n, k, &x, m);
                let xt = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
                let want: Vec<f32> =
                    xt.matmul(&wd.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                let err = got.iter().zip(&want).fold(0f32, |e, (a, b)| e.max((a - b).abs())) / scale;
                assert!(err < 2e-2, "{name} m={m}: {err}");
            }
        }
    }
}
