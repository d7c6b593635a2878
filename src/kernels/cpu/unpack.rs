//! Decoding stored GGUF blocks into uniform 32-value blocks: 32 unsigned 8-bit
//! values `q` in a 256-bit register with `value = scale·q + offset`, one scale and
//! offset per half block (Q6_K scales every 16 values). Layouts follow the GGUF
//! block definitions. Every decoder is `inline(always)` so it compiles into the
//! `target_feature` products that call it; nothing here runs on its own.

use std::arch::x86_64::*;

use super::quant::QK;

/// One GGUF block type.
pub(super) trait Blocks {
    /// Values in one stored block (a multiple of 32).
    const VALUES: usize;
    /// Bytes of one stored block.
    const BYTES: usize;
    /// Decodes the stored block at `p`, calling `emit(j, …)` for its j-th 32 values.
    unsafe fn decode(p: *const u8, emit: impl FnMut(usize, __m256i, __m256, __m128));
}

pub(super) struct Q4_0;
pub(super) struct Q4_1;
pub(super) struct Q5_0;
pub(super) struct Q5_1;
pub(super) struct Q8_0;
pub(super) struct Q4K;
pub(super) struct Q5K;
pub(super) struct Q6K;

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((p as *const u16).read_unaligned() as i32)))
}

/// Two consecutive f16 values (scale, then minimum).
#[inline(always)]
unsafe fn f16x2_at(p: *const u8) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1)))
}

#[inline(always)]
unsafe fn same(s: f32) -> __m256 {
    _mm256_set1_ps(s)
}

#[inline(always)]
unsafe fn halves(lo: f32, hi: f32) -> __m256 {
    _mm256_set_m128(_mm_set1_ps(hi), _mm_set1_ps(lo))
}

#[inline(always)]
unsafe fn offs(lo: f32, hi: f32) -> __m128 {
    _mm_setr_ps(lo, hi, 0.0, 0.0)
}

/// 16 bytes of nibbles: values 0..16 in the low halves, 16..32 in the high halves.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let raw = _mm_loadu_si128(p as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask))
}

/// 0x10 in byte i where bit i of the little-endian u32 at `p` is set.
#[inline(always)]
unsafe fn fifth_bits(p: *const u8) -> __m256i {
    let qh = (p as *const i32).read_unaligned();
    let byte_of = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bit_of = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let sel = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(qh), byte_of), bit_of);
    _mm256_and_si256(_mm256_cmpeq_epi8(sel, bit_of), _mm256_set1_epi8(0x10))
}

impl Blocks for Q4_0 {
    const VALUES: usize = QK;
    const BYTES: usize = 18;
    #[inline(always)]
    unsafe fn decode(p: *const u8, mut emit: impl FnMut(usize, __m256i, __m256, __m128)) {
        let d = f16_at(p);
        emit(0, nibbles(p.add(2)), same(d), offs(-8.0 * d, -8.0 * d));
    }
}

impl Blocks for Q4_1 {
    const VALUES: usize = QK;
    const BYTES: usize = 20;
    #[inline(always)]
    unsafe fn decode(p: *const u8, mut emit: impl FnMut(usize, __m256i, __m256, __m128)) {
        let (d, m) = f16x2_at(p);
        emit(0, nibbles(p.add(4)), same(d), offs(m, m));
    }
}

impl Blocks for Q5_0 {
    const VALUES: usize = QK;
    const BYTES: usize = 22;
    #[inline(always)]
    unsafe fn decode(p: *const u8, mut emit: impl FnMut(usize, __m256i, __m256, __m128)) {
        let d = f16_at(p);
        let q = _mm256_or_si256(nibbles(p.add(6)), fifth_bits(p.add(2)));
        emit(0, q, same(d), offs(-16.0 * d, -16.0 * d));
    }
}

impl Blocks for Q5_1 {
    const VALUES: usize = QK;
    const BYTES: usize = 24;
    #[inline(always)]
    unsafe fn decode(p: *const u8, mut emit: impl FnMut(usize, __m256i, __m256, __m128)) {
        let (d, m) = f16x2_at(p);
        let q = _mm256_or_si256(nibbles(p.add(8)), fifth_bits(p.add(4)));
        emit(0, q, same(d), offs(m, m));
    }
}

impl Blocks for Q8_0 {
    const VALUES: usize = QK;
    const BYTES: usize = 34;
    #[inline(always)]
    unsafe fn decode(p: *const u8, mut emit: impl FnMut(usize, __m256i, __m256, __m128)) {
        let d = f16_at(p);
        // i8 → u8 by flipping the sign bit: q = v + 128.
        let q = _mm256_xor_si256(_mm256_loadu_si256(p.add(2) as *const __m256i), _mm256_set1_epi8(-128));
        emit(0, q, same(d), offs(-128.0 * d, -128.0 * d));
    }
}

/// The 6-bit scale and minimum of sub-block j from Q4_K/Q5_K's packed 12 bytes.
#[inline(always)]
unsafe fn scale_min_k4(j: usize, s: *const u8) -> (f32, f32) {
    let b = |i: usize| *s.add(i);
    let (sc, mn) = if j < 4 {
        (b(j) & 63, b(j + 4) & 63)
    } else {
        ((b(j + 4) & 0x0F) | ((b(j - 4) >> 6) << 4), (b(j + 4) >> 4) | ((b(j) >> 6) << 4))
    };
    (sc as f32, mn as f32)
}

/// Q4_K and Q5_K: d, dmin, 12 bytes of 6-bit scales and minimums, [32 bytes of fifth
/// bits,] 128 bytes of nibbles; eight sub-blocks of 32, value = d·sc·q − dmin·mn.
#[inline(always)]
unsafe fn decode_k<const FIVE: bool>(p: *const u8, mut emit: impl FnMut(usize, __m256i, __m256, __m128)) {
    let (d, dmin) = f16x2_at(p);
    let scales = p.add(4);
    let qs = if FIVE { p.add(48) } else { p.add(16) };
    let low4 = _mm256_set1_epi8(0x0F);
    let qh = if FIVE { _mm256_loadu_si256(p.add(16) as *const __m256i) } else { _mm256_setzero_si256() };
    for pair in 0..4 {
        let raw = _mm256_loadu_si256(qs.add(32 * pair) as *const __m256i);
        for half in 0..2 {
            let j = 2 * pair + half;
            let mut q = _mm256_and_si256(if half == 0 { raw } else { _mm256_srli_epi16(raw, 4) }, low4);
            if FIVE {
                let bit = _mm256_set1_epi8((1u8 << j) as i8);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                q = _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
            }
            let (sc, mn) = scale_min_k4(j, scales);
            emit(j, q, same(d * sc), offs(-dmin * mn, -dmin * mn));
        }
    }
}

impl Blocks for Q4K {
    const VALUES: usize = 256;
    const BYTES: usize = 144;
    #[inline(always)]
    unsafe fn decode(p: *const u8, emit: impl FnMut(usize, __m256i, __m256, __m128)) {
        decode_k::<false>(p, emit)
    }
}

impl Blocks for Q5K {
    const VALUES: usize = 256;
    const BYTES: usize = 176;
    #[inline(always)]
    unsafe fn decode(p: *const u8, emit: impl FnMut(usize, __m256i, __m256, __m128)) {
        decode_k::<true>(p, emit)
    }
}

impl Blocks for Q6K {
    const VALUES: usize = 256;
    const BYTES: usize = 210;
    /// 128 bytes of low nibbles, 64 of 2-bit high parts, 16 signed scales (one per 16
    /// values), d last; value = d·sc·(q − 32). Each half of 128 values takes 64
    /// low-nibble bytes and 32 high-part bytes.
    #[inline(always)]
    unsafe fn decode(p: *const u8, mut emit: impl FnMut(usize, __m256i, __m256, __m128)) {
        let d = f16_at(p.add(208));
        let low4 = _mm256_set1_epi8(0x0F);
        for half in 0..2 {
            let ql = p.add(64 * half);
            let a = _mm256_loadu_si256(ql as *const __m256i);
            let b = _mm256_loadu_si256(ql.add(32) as *const __m256i);
            let h = _mm256_loadu_si256(p.add(128 + 32 * half) as *const __m256i);
            let sc = p.add(192 + 8 * half) as *const i8;
            for s in 0..4 {
                let low = match s {
                    0 => _mm256_and_si256(a, low4),
                    1 => _mm256_and_si256(b, low4),
                    2 => _mm256_and_si256(_mm256_srli_epi16(a, 4), low4),
                    _ => _mm256_and_si256(_mm256_srli_epi16(b, 4), low4),
                };
                // Bits 2s and 2s+1 of each high-part byte, moved to bits 4 and 5.
                let high = match s {
                    0 => _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(0x03)), 4),
                    1 => _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(0x0C)), 2),
                    2 => _mm256_and_si256(h, _mm256_set1_epi8(0x30)),
                    _ => _mm256_srli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(0xC0u8 as i8)), 2),
                };
                let (lo, hi) = (d * *sc.add(2 * s) as f32, d * *sc.add(2 * s + 1) as f32);
                emit(4 * half + s, _mm256_or_si256(low, high), halves(lo, hi), offs(-32.0 * lo, -32.0 * hi));
            }
        }
    }
}

/// The GGUF block types handled here.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl Format {
    pub fn of(t: candle_core::quantized::GgmlDType) -> Option<Format> {
        use candle_core::quantized::GgmlDType as G;
        Some(match t {
            G::Q4_0 => Format::Q4_0,
            G::Q4_1 => Format::Q4_1,
            G::Q5_0 => Format::Q5_0,
            G::Q5_1 => Format::Q5_1,
            G::Q8_0 => Format::Q8_0,
            G::Q4K => Format::Q4K,
            G::Q5K => Format::Q5K,
            G::Q6K => Format::Q6K,
            _ => return None,
        })
    }

    pub fn values_per_block(self) -> usize {
        match self {
            Format::Q4K | Format::Q5K | Format::Q6K => 256,
            _ => QK,
        }
    }
}
