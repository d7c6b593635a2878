//! A Q4_1 × f32 matrix product for x86-64 CPUs with AVX2 and FMA. candle has
//! no SIMD path for Q4_1 (the type of the SmolLM2 GGUF the appliance ships
//! with), so its scalar fallback dominated inference time. Activations are
//! rounded to 8 bits per block of 32 (scale and scaled sum kept, as Q8_1),
//! and each weight block is unpacked once for up to four activation rows.

use half::f16;

const QK: usize = 32;
/// Bytes of one GGUF Q4_1 block: f16 scale, f16 minimum, 16 bytes of nibbles.
const BLOCK_BYTES: usize = 20;

/// One activation block: 32 signed 8-bit values, their scale, and scale·Σq.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct XBlock {
    qs: [i8; QK],
    d: f32,
    s: f32,
}

/// True when this CPU can run the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn quantize_rows(x: &[f32], m: usize, k: usize) -> Vec<XBlock> {
    let nb = k / QK;
    let mut out = vec![XBlock { qs: [0; QK], d: 0.0, s: 0.0 }; m * nb];
    for (i, blk) in out.iter_mut().enumerate() {
        let src = &x[i * QK..(i + 1) * QK];
        let amax = src.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in blk.qs.iter_mut().zip(src) {
            let r = (v * id).round() as i32;
            *q = r as i8;
            sum += r;
        }
        blk.d = d;
        blk.s = d * sum as f32;
    }
    out
}

/// `y (m, n) = x (m, k) · Wᵀ` with W (n, k) given as raw Q4_1 blocks. Callers check
/// [`available`] first; `k` must be a multiple of 32.
pub fn matmul(w: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    let nb = k / QK;
    debug_assert_eq!(w.len(), n * nb * BLOCK_BYTES);
    let xq = quantize_rows(x, m, k);
    let mut y = vec![0f32; m * n];
    let y_ptr = y.as_mut_ptr() as usize;
    let pool = candle_core::utils::barrier_pool();
    pool.execute_chunked(n, |rows| {
        for r in rows {
            let wrow = &w[r * nb * BLOCK_BYTES..(r + 1) * nb * BLOCK_BYTES];
            let mut i = 0;
            while i < m {
                let cnt = (m - i).min(4);
                let mut out = [0f32; 4];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: callers check `available()` (AVX2 + FMA) before calling `matmul`.
                unsafe {
                    dot_rows(wrow, &xq[i * nb..(i + cnt) * nb], nb, cnt, &mut out)
                };
                for (j, v) in out.iter().take(cnt).enumerate() {
                    // SAFETY: each (row i+j, column r) is written by exactly one worker.
                    unsafe { *(y_ptr as *mut f32).add((i + j) * n + r) = *v };
                }
                i += cnt;
            }
        }
    });
    y
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows(wrow: &[u8], xs: &[XBlock], nb: usize, cnt: usize, out: &mut [f32; 4]) {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = [0f32; 4];
    for b in 0..nb {
        let blk = &wrow[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
        let d = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
        let mn = f16::from_bits(u16::from_le_bytes([blk[2], blk[3]])).to_f32();
        let raw = _mm_loadu_si128(blk[4..].as_ptr() as *const __m128i);
        let lo = _mm_and_si128(raw, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
        let q = _mm256_set_m128i(hi, lo);
        for j in 0..cnt {
            let xb = &xs[j * nb + b];
            let yv = _mm256_load_si256(xb.qs.as_ptr() as *const __m256i);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, yv), ones);
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(p), acc[j]);
            mins[j] += mn * xb.s;
        }
    }
    for j in 0..cnt {
        let v = acc[j];
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
        out[j] = _mm_cvtss_f32(s1) + mins[j];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    #[test]
    fn q4_1_kernel_matches_candles_scalar_q4_1_product() {
        if !available() {
            println!("skipping: no AVX2/FMA");
            return;
        }
        let (n, k) = (70, 576);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1).collect();
        let q =
            QTensor::quantize(&Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap(), GgmlDType::Q4_1).unwrap();
        for m in [1, 3, 4, 9] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729 % 997) as f32 / 498.0 - 1.0)).collect();
            let got = matmul(&q.data().unwrap(), n, k, &x, m);
            let xt = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
            let want: Vec<f32> = QMatMul::from_qtensor(
                QTensor::quantize(&q.dequantize(&Device::Cpu).unwrap(), GgmlDType::Q4_1).unwrap(),
            )
            .unwrap()
            .forward(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
            let exact: Vec<f32> = xt
                .matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let scale = exact.iter().fold(0f32, |a, v| a.max(v.abs()));
            let err =
                |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |e, (x, y)| e.max((x - y).abs())) / scale;
            // candle keeps the activation scale in f16, this kernel in f32: both round
            // activations to 8 bits, so they agree to that precision and this one is no worse.
            assert!(err(&got, &want) < 2e-3, "m={m}: vs candle {}", err(&got, &want));
            assert!(err(&got, &exact) <= err(&want, &exact) * 1.2 + 1e-6, "m={m}");
            assert!(err(&got, &exact) < 1e-2, "m={m}: vs exact {}", err(&got, &exact));
        }
    }
}
