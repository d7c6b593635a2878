//! Q4_1 and Q5_0 × f32 matrix products for x86-64 CPUs with AVX2, FMA and F16C.
//! candle has no SIMD path for these types (Q4_1 is the SmolLM2 GGUF the
//! appliance ships with; llama.cpp's Q4_K_M files use Q5_0 wherever a row is not
//! a multiple of 256 wide, as in Qwen2.5-0.5B), so its scalar fallback dominated
//! inference time. Activations are
//! rounded to 8 bits per block of 32 (scale and scaled sum kept, as Q8_1),
//! and each weight block is unpacked once for up to four activation rows.

const QK: usize = 32;
/// The two block layouts handled here.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// f16 scale, f16 minimum, 16 bytes of nibbles: value = d·q + m.
    Q4_1,
    /// f16 scale, 32 fifth bits, 16 bytes of nibbles: value = d·(q − 16).
    Q5_0,
}

impl Kind {
    const fn block_bytes(self) -> usize {
        match self {
            Kind::Q4_1 => 20,
            Kind::Q5_0 => 22,
        }
    }
}

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
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
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
pub fn matmul(kind: Kind, w: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    let nb = k / QK;
    let bb = kind.block_bytes();
    debug_assert_eq!(w.len(), n * nb * bb);
    let xq = quantize_rows(x, m, k);
    let mut y = vec![0f32; m * n];
    let y_ptr = y.as_mut_ptr() as usize;
    let pool = candle_core::utils::barrier_pool();
    pool.execute_chunked(n, |rows| {
        for r in rows {
            let wrow = &w[r * nb * bb..(r + 1) * nb * bb];
            let mut i = 0;
            while i < m {
                let cnt = (m - i).min(4);
                let xs = &xq[i * nb..(i + cnt) * nb];
                let mut out = [0f32; 4];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: callers check `available()` (AVX2, FMA, F16C) before calling `matmul`.
                unsafe {
                    match (kind, cnt) {
                        (Kind::Q4_1, 4) => dot_rows::<4, false>(wrow, xs, nb, &mut out),
                        (Kind::Q4_1, 3) => dot_rows::<3, false>(wrow, xs, nb, &mut out),
                        (Kind::Q4_1, 2) => dot_rows::<2, false>(wrow, xs, nb, &mut out),
                        (Kind::Q4_1, _) => dot_rows::<1, false>(wrow, xs, nb, &mut out),
                        (Kind::Q5_0, 4) => dot_rows::<4, true>(wrow, xs, nb, &mut out),
                        (Kind::Q5_0, 3) => dot_rows::<3, true>(wrow, xs, nb, &mut out),
                        (Kind::Q5_0, 2) => dot_rows::<2, true>(wrow, xs, nb, &mut out),
                        (Kind::Q5_0, _) => dot_rows::<1, true>(wrow, xs, nb, &mut out),
                    }
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

/// Dots of one weight row with `R` activation rows (R ≤ 4), written to `out[..R]`.
/// `Q5` selects the Q5_0 layout, else Q4_1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows<const R: usize, const Q5: bool>(
    wrow: &[u8],
    xs: &[XBlock],
    nb: usize,
    out: &mut [f32; 4],
) {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    // For Q5_0: byte e of the block gets bit e of the 32-bit fifth-bit word.
    let byte_of = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bit_of = _mm256_setr_epi8(
        1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8,
        16, 32, 64, -128,
    );
    let sixteen = _mm256_set1_epi8(0x10);
    let bb = if Q5 { 22 } else { 20 };
    let mut acc = [_mm256_setzero_ps(); R];
    let mut mins = [0f32; R];
    let wp = wrow.as_ptr();
    for b in 0..nb {
        let blk = wp.add(b * bb);
        let (d, mn, q) = if Q5 {
            let d =
                _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const u16).read_unaligned() as i32)));
            let qh = (blk.add(2) as *const i32).read_unaligned();
            let raw = _mm_loadu_si128(blk.add(6) as *const __m128i);
            let lo = _mm_and_si128(raw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
            let sel = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(qh), byte_of), bit_of);
            let fifth = _mm256_and_si256(_mm256_cmpeq_epi8(sel, bit_of), sixteen);
            (d, -16.0 * d, _mm256_or_si256(_mm256_set_m128i(hi, lo), fifth))
        } else {
            // d and m are two consecutive f16 values.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
            let raw = _mm_loadu_si128(blk.add(4) as *const __m128i);
            let lo = _mm_and_si128(raw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
            (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)), _mm256_set_m128i(hi, lo))
        };
        for j in 0..R {
            let xb = xs.get_unchecked(j * nb + b);
            let yv = _mm256_load_si256(xb.qs.as_ptr() as *const __m256i);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, yv), ones);
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(p), acc[j]);
            mins[j] += mn * xb.s;
        }
    }
    for j in 0..R {
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
    fn q4_1_and_q5_0_kernels_match_candles_scalar_products() {
        for (kind, t) in [(Kind::Q4_1, GgmlDType::Q4_1), (Kind::Q5_0, GgmlDType::Q5_0)] {
            check(kind, t);
        }
    }

    fn check(kind: Kind, t: GgmlDType) {
        if !available() {
            println!("skipping: no AVX2/FMA");
            return;
        }
        let (n, k) = (70, 576);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1).collect();
        let q = QTensor::quantize(&Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap(), t).unwrap();
        for m in [1, 3, 4, 9] {
            let x: Vec<f32> = (0..m * k).map(|i| (i * 104729 % 997) as f32 / 498.0 - 1.0).collect();
            let got = matmul(kind, &q.data().unwrap(), n, k, &x, m);
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
            // (candle's scalar Q5_0 product disagrees with its own dequantization by ~10%
            // here, so for Q5_0 only the exact product is the reference.)
            if kind == Kind::Q4_1 {
                assert!(err(&got, &want) < 2e-3, "{kind:?} m={m}: vs candle {}", err(&got, &want));
                assert!(err(&got, &exact) <= err(&want, &exact) * 1.2 + 1e-6, "m={m}");
            }
            assert!(err(&got, &exact) < 1e-2, "{kind:?} m={m}: vs exact {}", err(&got, &exact));
        }
    }
}
