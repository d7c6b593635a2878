//! Inputs rounded to 8 bits per block of 32 values: the integer values, their
//! scale, and the scaled sum of each half block (what a weight block's offset
//! multiplies).

use std::arch::x86_64::*;

pub(super) const QK: usize = 32;

/// `m` rows of `k` inputs as `m · k/32` blocks, row after row.
pub(super) struct Acts {
    pub q: Vec<[i8; QK]>,
    pub d: Vec<f32>,
    /// `d · Σ q` over values 0..16 and 16..32.
    pub s: Vec<[f32; 2]>,
    pub rows: usize,
    pub blocks: usize,
}

impl Acts {
    /// Callers hold `x.len() == m · k` with `k` a multiple of 32, on a CPU with AVX2.
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Acts {
        let nb = k / QK;
        let total = (m * nb).min(x.len() / QK);
        let mut a = Acts {
            q: vec![[0; QK]; total],
            d: vec![0.0; total],
            s: vec![[0.0; 2]; total],
            rows: m,
            blocks: nb,
        };
        for i in 0..total {
            // SAFETY: the block lies inside `x` (total ≤ len/32); AVX2 was detected by the caller.
            let (d, sums) = unsafe { quantize_block(x.as_ptr().add(i * QK), &mut a.q[i]) };
            a.d[i] = d;
            a.s[i] = [d * sums[0] as f32, d * sums[1] as f32];
        }
        a
    }
}

/// One block: scale = max|x| / 127, values rounded to nearest (ties to even).
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_block(x: *const f32, out: &mut [i8; QK]) -> (f32, [i32; 2]) {
    let v = [
        _mm256_loadu_ps(x),
        _mm256_loadu_ps(x.add(8)),
        _mm256_loadu_ps(x.add(16)),
        _mm256_loadu_ps(x.add(24)),
    ];
    let sign = _mm256_set1_ps(-0.0);
    let mut amax = _mm256_setzero_ps();
    for vi in v {
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, vi));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let m1 = _mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1));
    let d = _mm_cvtss_f32(m1) / 127.0;
    let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let q: [__m256i; 4] = [
        _mm256_cvtps_epi32(_mm256_mul_ps(v[0], id)),
        _mm256_cvtps_epi32(_mm256_mul_ps(v[1], id)),
        _mm256_cvtps_epi32(_mm256_mul_ps(v[2], id)),
        _mm256_cvtps_epi32(_mm256_mul_ps(v[3], id)),
    ];
    let hsum = |a: __m256i, b: __m256i| -> i32 {
        let s = _mm256_add_epi32(a, b);
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1)))
    };
    let sums = [hsum(q[0], q[1]), hsum(q[2], q[3])];
    // Packing interleaves the 128-bit lanes; the permute restores value order.
    let p16a = _mm256_packs_epi32(q[0], q[1]);
    let p16b = _mm256_packs_epi32(q[2], q[3]);
    let p8 = _mm256_packs_epi16(p16a, p16b);
    let ordered = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, ordered);
    (d, sums)
}
