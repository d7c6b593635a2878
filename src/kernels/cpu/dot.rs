//! Products of decoded weight rows with 8-bit input rows: 32 unsigned weight bytes
//! times 32 signed input bytes into eight i32 lanes per block, scaled per half
//! block in f32, plus each half block's offset times its input sum.
//!
//! Up to four input rows (generation) use each weight block straight from
//! registers. More rows (a prompt, a scored sequence) decode the weight row once
//! into a buffer that stays in L1 and take the input rows four at a time.

use std::arch::x86_64::*;
use std::ops::Range;

use super::quant::{Acts, QK};
use super::unpack::{Blocks, Format, Q4K, Q4_0, Q4_1, Q5K, Q5_0, Q5_1, Q6K, Q8_0};
use super::Isa;

/// One decoded weight row.
pub(super) struct RowBuf {
    q: Vec<__m256i>,
    scale: Vec<__m256>,
    /// Per block, the offsets of its two halves.
    offset: Vec<[f32; 2]>,
}

impl RowBuf {
    pub fn new(k: usize) -> Self {
        // SAFETY: all-zero bit patterns are valid SIMD values.
        let zero = unsafe { (_mm256_setzero_si256(), _mm256_setzero_ps()) };
        let nb = k / QK;
        Self { q: vec![zero.0; nb], scale: vec![zero.1; nb], offset: vec![[0.0; 2]; nb] }
    }
}

/// Where a job writes: row `i` of the inputs and weight row `r` land at `out[i·n + r]`.
#[derive(Clone, Copy)]
pub(super) struct Out {
    pub ptr: *mut f32,
    pub n: usize,
}

/// Weight rows `rows` of `data` (format `f`, inner size `k`) times every input row.
///
/// # Safety
/// `isa` must come from runtime detection; `data` must hold whole rows covering
/// `rows`; `out` must have room for every (input row, weight row) written, and no
/// other thread may write those places.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn products(
    isa: Isa,
    f: Format,
    data: &[u8],
    rows: Range<usize>,
    k: usize,
    acts: &Acts,
    out: Out,
    buf: &mut RowBuf,
) {
    match f {
        Format::Q4_0 => products_for::<Q4_0>(isa, data, rows, k, acts, out, buf),
        Format::Q4_1 => products_for::<Q4_1>(isa, data, rows, k, acts, out, buf),
        Format::Q5_0 => products_for::<Q5_0>(isa, data, rows, k, acts, out, buf),
        Format::Q5_1 => products_for::<Q5_1>(isa, data, rows, k, acts, out, buf),
        Format::Q8_0 => products_for::<Q8_0>(isa, data, rows, k, acts, out, buf),
        Format::Q4K => products_for::<Q4K>(isa, data, rows, k, acts, out, buf),
        Format::Q5K => products_for::<Q5K>(isa, data, rows, k, acts, out, buf),
        Format::Q6K => products_for::<Q6K>(isa, data, rows, k, acts, out, buf),
    }
}

unsafe fn products_for<B: Blocks>(
    isa: Isa,
    data: &[u8],
    rows: Range<usize>,
    k: usize,
    acts: &Acts,
    out: Out,
    buf: &mut RowBuf,
) {
    debug_assert!(rows.end * (k / B::VALUES) * B::BYTES <= data.len());
    let d = data.as_ptr();
    match (isa, acts.rows) {
        (Isa::Vnni, 1) => direct_vnni::<B, 1>(d, rows, k, acts, out, buf),
        (Isa::Vnni, 2) => direct_vnni::<B, 2>(d, rows, k, acts, out, buf),
        (Isa::Vnni, 3) => direct_vnni::<B, 3>(d, rows, k, acts, out, buf),
        (Isa::Vnni, 4) => direct_vnni::<B, 4>(d, rows, k, acts, out, buf),
        (Isa::Vnni, _) => buffered_vnni::<B>(d, rows, k, acts, out, buf),
        (Isa::Avx2, 1) => direct_avx2::<B, 1>(d, rows, k, acts, out, buf),
        (Isa::Avx2, 2) => direct_avx2::<B, 2>(d, rows, k, acts, out, buf),
        (Isa::Avx2, 3) => direct_avx2::<B, 3>(d, rows, k, acts, out, buf),
        (Isa::Avx2, 4) => direct_avx2::<B, 4>(d, rows, k, acts, out, buf),
        (Isa::Avx2, _) => buffered_avx2::<B>(d, rows, k, acts, out, buf),
    }
}

macro_rules! dot_bytes {
    (true, $q:expr, $x:expr) => {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), $q, $x)
    };
    (false, $q:expr, $x:expr) => {
        _mm256_madd_epi16(_mm256_maddubs_epi16($q, $x), _mm256_set1_epi16(1))
    };
}

/// How far ahead of the block being decoded the weight bytes are requested.
const PREFETCH: usize = 4096;

#[inline(always)]
unsafe fn total(a: __m256, b: __m256, off: __m128) -> f32 {
    let v = _mm256_add_ps(a, b);
    let s4 = _mm_add_ps(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)), off);
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
}

/// The three products for one instruction set, written once as a macro because each
/// needs its `target_feature` set on the function itself.
macro_rules! products {
    ($direct:ident, $buffered:ident, $group:ident, $features:literal, $vnni:tt) => {
        #[target_feature(enable = $features)]
        unsafe fn $direct<B: Blocks, const R: usize>(
            data: *const u8,
            rows: Range<usize>,
            k: usize,
            acts: &Acts,
            out: Out,
            buf: &mut RowBuf,
        ) {
            let nb = k / QK;
            let nsb = k / B::VALUES;
            let row_bytes = nsb * B::BYTES;
            let xq = acts.q.as_ptr() as *const __m256i;
            for r in rows {
                let row = data.add(r * row_bytes);
                // Two accumulators per input row, one per stored block parity, so the
                // FMA latency does not serialize single-row generation.
                // The same sums in the same order as the buffered product, so a row's
                // result does not depend on how many rows come with it.
                let mut acc = [[_mm256_setzero_ps(); R]; 2];
                let offs = buf.offset.as_mut_ptr();
                let block = |sb: usize, acc: &mut [__m256; R]| {
                    B::decode(row.add(sb * B::BYTES), |j, q, sc, o| {
                        let b = sb * (B::VALUES / QK) + j;
                        _mm_store_sd(offs.add(b) as *mut f64, _mm_castps_pd(o));
                        for i in 0..R {
                            let xi = i * nb + b;
                            let p = dot_bytes!($vnni, q, _mm256_loadu_si256(xq.add(xi)));
                            let t = _mm256_mul_ps(_mm256_cvtepi32_ps(p), sc);
                            acc[i] = _mm256_fmadd_ps(t, _mm256_set1_ps(*acts.d.get_unchecked(xi)), acc[i]);
                        }
                    })
                };
                let [acc0, acc1] = &mut acc;
                let mut sb = 0;
                while sb + 1 < nsb {
                    // Generation streams every weight once per token; asking for the
                    // bytes a few hundred cycles ahead keeps the loads from stalling.
                    _mm_prefetch::<_MM_HINT_T0>(row.add(sb * B::BYTES + PREFETCH) as *const i8);
                    block(sb, acc0);
                    block(sb + 1, acc1);
                    sb += 2;
                }
                if sb < nsb {
                    block(sb, acc0);
                }
                for i in 0..R {
                    *out.ptr.add(i * out.n + r) = total(acc[0][i], acc[1][i], offsets(buf, acts, i));
                }
            }
        }

        #[target_feature(enable = $features)]
        unsafe fn $buffered<B: Blocks>(
            data: *const u8,
            rows: Range<usize>,
            k: usize,
            acts: &Acts,
            out: Out,
            buf: &mut RowBuf,
        ) {
            for inputs in input_chunks(acts.rows) {
                for r in rows.clone() {
                    decode_row::<B>(data, r, k, buf);
                    let mut i = inputs.start;
                    while i + 4 <= inputs.end {
                        $group::<4>(buf, acts, i, out, r, B::VALUES / QK);
                        i += 4;
                    }
                    match inputs.end - i {
                        3 => $group::<3>(buf, acts, i, out, r, B::VALUES / QK),
                        2 => $group::<2>(buf, acts, i, out, r, B::VALUES / QK),
                        1 => $group::<1>(buf, acts, i, out, r, B::VALUES / QK),
                        _ => {}
                    }
                }
            }
        }

        #[target_feature(enable = $features)]
        /// `sub`: 32-value blocks per stored block; blocks alternate accumulators by
        /// stored block, as in the direct product.
        unsafe fn $group<const R: usize>(
            buf: &RowBuf,
            acts: &Acts,
            first: usize,
            out: Out,
            r: usize,
            sub: usize,
        ) {
            let nb = acts.blocks;
            let xq = acts.q.as_ptr() as *const __m256i;
            let mut acc = [[_mm256_setzero_ps(); R]; 2];
            for b in 0..nb {
                let acc = &mut acc[(b / sub) & 1];
                let q = *buf.q.get_unchecked(b);
                let sc = *buf.scale.get_unchecked(b);
                for i in 0..R {
                    let xi = (first + i) * nb + b;
                    let p = dot_bytes!($vnni, q, _mm256_loadu_si256(xq.add(xi)));
                    let t = _mm256_mul_ps(_mm256_cvtepi32_ps(p), sc);
                    acc[i] = _mm256_fmadd_ps(t, _mm256_set1_ps(*acts.d.get_unchecked(xi)), acc[i]);
                }
            }
            for i in 0..R {
                let row = first + i;
                *out.ptr.add(row * out.n + r) = total(acc[0][i], acc[1][i], offsets(buf, acts, row));
            }
        }
    };
}

/// Weight rows are decoded again for every chunk of this many input rows, so that the
/// chunk's 8-bit inputs stay in L2 while all weight rows pass over them.
const INPUT_CHUNK: usize = 64;

fn input_chunks(m: usize) -> impl Iterator<Item = Range<usize>> {
    (0..m).step_by(INPUT_CHUNK).map(move |s| s..m.min(s + INPUT_CHUNK))
}

/// Decodes weight row `r` into `buf`.
#[inline(always)]
unsafe fn decode_row<B: Blocks>(data: *const u8, r: usize, k: usize, buf: &mut RowBuf) {
    let nsb = k / B::VALUES;
    let row = data.add(r * nsb * B::BYTES);
    for sb in 0..nsb {
        B::decode(row.add(sb * B::BYTES), |j, q, sc, o| {
            let b = sb * (B::VALUES / QK) + j;
            *buf.q.get_unchecked_mut(b) = q;
            *buf.scale.get_unchecked_mut(b) = sc;
            _mm_store_sd(buf.offset.as_mut_ptr().add(b) as *mut f64, _mm_castps_pd(o));
        });
    }
}

/// Σ over half blocks of weight offset × input sum, for one input row, as one flat
/// product: far fewer operations than folding it into the block loop.
#[inline(always)]
unsafe fn offsets(buf: &RowBuf, acts: &Acts, row: usize) -> __m128 {
    let nb = acts.blocks;
    let off = buf.offset.as_flattened();
    let xs = acts.s[row * nb..(row + 1) * nb].as_flattened();
    let mut o = _mm256_setzero_ps();
    let mut j = 0;
    while j + 8 <= off.len() {
        o = _mm256_fmadd_ps(_mm256_loadu_ps(off.as_ptr().add(j)), _mm256_loadu_ps(xs.as_ptr().add(j)), o);
        j += 8;
    }
    let mut rest = _mm_add_ps(_mm256_castps256_ps128(o), _mm256_extractf128_ps(o, 1));
    while j < off.len() {
        rest = _mm_add_ss(rest, _mm_set_ss(off[j] * xs[j]));
        j += 1;
    }
    rest
}

products!(direct_vnni, buffered_vnni, group_vnni, "avx2,fma,f16c,avxvnni", true);
products!(direct_avx2, buffered_avx2, group_avx2, "avx2,fma,f16c", false);
