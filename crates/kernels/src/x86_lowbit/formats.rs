//! Each low-bit format's blocks decoded in AVX2 registers (`Fmt`): the 32 values of a
//! sub-block as signed bytes, and the scales (and offsets) of its two 16-value halves.

// Intrinsics bodies whose contract is stated once on the public entry points.
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::grids::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KVALUES_IQ4NL,
};
use crate::x86::f16_at;

/// A u64 whose byte `j` is -1 where bit `j` of `bits` is set, else +1.
const fn pm1(bits: u8) -> u64 {
    let mut v = 0u64;
    let mut j = 0;
    while j < 8 {
        let b: u64 = if bits >> j & 1 == 1 { 0xFF } else { 0x01 };
        v |= b << (8 * j);
        j += 1;
    }
    v
}

/// `pm1` of every byte.
static SIGN8: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = pm1(i as u8);
        i += 1;
    }
    t
};

/// `pm1` of `ksigns_iq2xs[i]`: 7 sign bits and their parity as the eighth.
static SIGN7: [u64; 128] = {
    let mut t = [0u64; 128];
    let mut i = 0;
    while i < 128 {
        let parity = (i as u8).count_ones() as u8 & 1;
        t[i] = pm1(i as u8 | parity << 7);
        i += 1;
    }
    t
};

/// One format's blocks, in registers.
pub(super) trait Fmt {
    /// Bytes per block of `VALUES` values.
    const BYTES: usize;
    const VALUES: usize;
    /// Whether the values carry an offset (`mn`).
    const MIN: bool;
    /// Whether both halves of a sub-block share one scale (and offset).
    const PER32: bool = false;
    /// Sub-block `j` (32 values) of the block at `b`: the values as signed bytes, and the
    /// scales and offsets of its two halves.
    unsafe fn sub(b: *const u8, j: usize) -> (__m256i, [f32; 2], [f32; 2]);
    /// Whether the block's scales are worked out once for all of its sub-blocks (`scales`,
    /// `values`) rather than per sub-block (`sub`): the k-quants' packed scales and mins.
    const HOIST: bool = false;
    /// Whether the values are never negative (they then meet the activations unsigned, with no
    /// sign adjustment).
    const UNSIGNED: bool = false;
    /// The scales and offsets of the block's 16-value groups.
    unsafe fn scales(_b: *const u8, _sc: &mut [f32; 16], _mn: &mut [f32; 16]) {}
    /// Sub-block `j`'s values alone.
    unsafe fn values(b: *const u8, j: usize) -> __m256i {
        Self::sub(b, j).0
    }
}

/// `sub` of a format that hoists its scales: for `decode_row`, which takes one sub-block at a
/// time.
#[inline(always)]
pub(super) unsafe fn hoisted_sub<F: Fmt>(b: *const u8, j: usize) -> (__m256i, [f32; 2], [f32; 2]) {
    let (mut sc, mut mn) = ([0f32; 16], [0f32; 16]);
    F::scales(b, &mut sc, &mut mn);
    (
        F::values(b, j),
        [sc[2 * j], sc[2 * j + 1]],
        [mn[2 * j], mn[2 * j + 1]],
    )
}

#[inline(always)]
unsafe fn u16_at(p: *const u8) -> u16 {
    (p as *const u16).read_unaligned()
}

#[inline(always)]
unsafe fn u32_at(p: *const u8) -> u32 {
    (p as *const u32).read_unaligned()
}

/// 16 bytes of nibbles -> 32 values 0..15: low nibbles first, then high ones.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let v = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Byte `k` is 0xFF where bit `k` of `x` is set.
#[inline(always)]
unsafe fn bits_to_bytes(x: u32) -> __m256i {
    let v = _mm256_set1_epi32(x as i32);
    let shuf = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let b = _mm256_shuffle_epi8(v, shuf);
    // Each byte keeps its own bit clear: all ones exactly where that bit was set.
    let others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_or_si256(b, others), _mm256_set1_epi64x(-1))
}

/// Four 8-value grid entries signed by four +-1 words.
#[inline(always)]
unsafe fn signed64(g: [u64; 4], s: [u64; 4]) -> __m256i {
    let g = _mm256_setr_epi64x(g[0] as i64, g[1] as i64, g[2] as i64, g[3] as i64);
    let s = _mm256_setr_epi64x(s[0] as i64, s[1] as i64, s[2] as i64, s[3] as i64);
    _mm256_sign_epi8(g, s)
}

/// Eight 4-value grid entries signed by four +-1 words (two entries per word).
#[inline(always)]
unsafe fn signed32(g: [u32; 8], s: [u64; 4]) -> __m256i {
    let g = _mm256_setr_epi32(
        g[0] as i32,
        g[1] as i32,
        g[2] as i32,
        g[3] as i32,
        g[4] as i32,
        g[5] as i32,
        g[6] as i32,
        g[7] as i32,
    );
    let s = _mm256_setr_epi64x(s[0] as i64, s[1] as i64, s[2] as i64, s[3] as i64);
    _mm256_sign_epi8(g, s)
}

/// `8 * grid + shift` for IQ1 entries ({-1, 0, 1}) and +-1 shift words.
#[inline(always)]
unsafe fn iq1(g: [u64; 4], shift: [u64; 4]) -> __m256i {
    let g = _mm256_setr_epi64x(g[0] as i64, g[1] as i64, g[2] as i64, g[3] as i64);
    let s = _mm256_setr_epi64x(
        shift[0] as i64,
        shift[1] as i64,
        shift[2] as i64,
        shift[3] as i64,
    );
    _mm256_add_epi8(_mm256_sign_epi8(_mm256_set1_epi8(8), g), s)
}

const PLUS: u64 = 0x0101_0101_0101_0101;
const MINUS: u64 = 0xFFFF_FFFF_FFFF_FFFF;

pub(super) struct Q4_0;
impl Fmt for Q4_0 {
    const PER32: bool = true;
    const BYTES: usize = 18;
    const VALUES: usize = 32;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn sub(b: *const u8, _: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        let d = f16_at(b);
        let q = _mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8));
        (q, [d; 2], [0.0; 2])
    }
}

pub(super) struct Q4_1;
impl Fmt for Q4_1 {
    const UNSIGNED: bool = true;
    const PER32: bool = true;
    const BYTES: usize = 20;
    const VALUES: usize = 32;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn sub(b: *const u8, _: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        (nibbles(b.add(4)), [f16_at(b); 2], [f16_at(b.add(2)); 2])
    }
}

/// Q5_0 (`MIN` false, offset -16) and Q5_1 (`MIN` true, offset in `m`).
pub(super) struct Q5<const MIN: bool>;
impl<const M: bool> Fmt for Q5<M> {
    const PER32: bool = true;
    // Q5_1 keeps its values 0..31; Q5_0 subtracts 16.
    const UNSIGNED: bool = M;
    const BYTES: usize = if M { 24 } else { 22 };
    const VALUES: usize = 32;
    const MIN: bool = M;
    #[inline(always)]
    unsafe fn sub(b: *const u8, _: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        let at = if M { 4 } else { 2 };
        let high = _mm256_and_si256(bits_to_bytes(u32_at(b.add(at))), _mm256_set1_epi8(0x10));
        let q = _mm256_or_si256(nibbles(b.add(at + 4)), high);
        if M {
            (q, [f16_at(b); 2], [f16_at(b.add(2)); 2])
        } else {
            (
                _mm256_sub_epi8(q, _mm256_set1_epi8(16)),
                [f16_at(b); 2],
                [0.0; 2],
            )
        }
    }
}

#[inline(always)]
unsafe fn iq4_levels(n: __m256i) -> __m256i {
    let t = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
    _mm256_shuffle_epi8(_mm256_set_m128i(t, t), n)
}

pub(super) struct IQ4NL;
impl Fmt for IQ4NL {
    const PER32: bool = true;
    const BYTES: usize = 18;
    const VALUES: usize = 32;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn sub(b: *const u8, _: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        (iq4_levels(nibbles(b.add(2))), [f16_at(b); 2], [0.0; 2])
    }
}

pub(super) struct IQ4XS;
impl Fmt for IQ4XS {
    const PER32: bool = true;
    const BYTES: usize = 136;
    const VALUES: usize = 256;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn sub(b: *const u8, j: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        let (d, scales_h) = (f16_at(b), u16_at(b.add(2)));
        let low = (*b.add(4 + j / 2) >> (4 * (j % 2))) & 0x0F;
        let ls = low | ((((scales_h >> (2 * j)) & 3) as u8) << 4);
        let dl = d * (ls as i32 - 32) as f32;
        (iq4_levels(nibbles(b.add(8 + 16 * j))), [dl; 2], [0.0; 2])
    }
}

/// Eight unsigned bytes (the low half of `v`) as floats.
#[inline(always)]
unsafe fn u8_floats(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
}

/// Eight signed bytes (the low half of `v`) as floats.
#[inline(always)]
unsafe fn i8_floats(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
}

/// Eight bytes (two words) times `unit`, each value written twice: a scale per 32 values
/// as scales per 16.
#[inline(always)]
unsafe fn spread_twice(v: [u32; 2], unit: f32, out: &mut [f32; 16]) {
    let bytes = _mm_setr_epi32(v[0] as i32, v[1] as i32, 0, 0);
    let f = _mm256_mul_ps(u8_floats(bytes), _mm256_set1_ps(unit));
    let lo = _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
    let hi = _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7));
    _mm256_storeu_ps(out.as_mut_ptr(), lo);
    _mm256_storeu_ps(out.as_mut_ptr().add(8), hi);
}

/// Q5_K (a k-quant `lowbit` does not hold, but whose blocks decode the same way): 4-bit values
/// plus a fifth bit, a 6-bit scale and min per 32.
pub(super) struct Q5K;
impl Fmt for Q5K {
    const UNSIGNED: bool = true;
    const PER32: bool = true;
    const BYTES: usize = 176;
    const VALUES: usize = 256;
    const MIN: bool = true;
    const HOIST: bool = true;
    #[inline(always)]
    unsafe fn scales(b: *const u8, sc: &mut [f32; 16], mn: &mut [f32; 16]) {
        // `quant::scale_min_k4` for all eight sub-blocks at once, four bytes at a time: bytes
        // 0-3 hold scales 0-3 (low 6 bits) and the top bits of scales 4-7, bytes 4-7 the same
        // for the mins, bytes 8-11 the low nibbles of scales 4-7 and, above them, of mins 4-7.
        let (d, dmin) = (f16_at(b), f16_at(b.add(2)));
        let u: [u32; 3] =
            std::array::from_fn(|i| (b.add(4 + 4 * i) as *const u32).read_unaligned());
        let (six, low, top) = (0x3F3F_3F3Fu32, 0x0F0F_0F0Fu32, 0x0303_0303u32);
        let scales = [u[0] & six, (u[2] & low) | (((u[0] >> 6) & top) << 4)];
        let mins = [u[1] & six, ((u[2] >> 4) & low) | (((u[1] >> 6) & top) << 4)];
        spread_twice(scales, d, sc);
        spread_twice(mins, -dmin, mn);
    }
    #[inline(always)]
    unsafe fn values(b: *const u8, j: usize) -> __m256i {
        let nib = _mm256_loadu_si256(b.add(48 + 32 * (j / 2)) as *const __m256i);
        let low = _mm256_and_si256(
            _mm256_srl_epi16(nib, _mm_cvtsi32_si128(4 * (j % 2) as i32)),
            _mm256_set1_epi8(0x0F),
        );
        let qh = _mm256_loadu_si256(b.add(16) as *const __m256i);
        let bit = _mm256_and_si256(
            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32)),
            _mm256_set1_epi8(1),
        );
        _mm256_or_si256(low, _mm256_slli_epi16(bit, 4))
    }
    #[inline(always)]
    unsafe fn sub(b: *const u8, j: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        hoisted_sub::<Self>(b, j)
    }
}

/// Q2_K's and Q3_K's 2-bit values of sub-block `j` from 64 bytes at `qs`.
#[inline(always)]
unsafe fn two_bits(qs: *const u8, j: usize) -> __m256i {
    let v = _mm256_loadu_si256(qs.add(32 * (j / 4)) as *const __m256i);
    let shifted = _mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * (j % 4) as i32));
    _mm256_and_si256(shifted, _mm256_set1_epi8(3))
}

pub(super) struct Q2K;
impl Fmt for Q2K {
    const UNSIGNED: bool = true;
    const BYTES: usize = 84;
    const VALUES: usize = 256;
    const MIN: bool = true;
    const HOIST: bool = true;
    #[inline(always)]
    unsafe fn scales(b: *const u8, sc: &mut [f32; 16], mn: &mut [f32; 16]) {
        // Sixteen bytes: scale in the low nibble, min in the high one.
        let (d, dmin) = (f16_at(b.add(80)), f16_at(b.add(82)));
        let packed = _mm_loadu_si128(b as *const __m128i);
        let m4 = _mm_set1_epi8(0x0F);
        let (lo, hi) = (
            _mm_and_si128(packed, m4),
            _mm_and_si128(_mm_srli_epi16(packed, 4), m4),
        );
        let (dv, mv) = (_mm256_set1_ps(d), _mm256_set1_ps(-dmin));
        _mm256_storeu_ps(sc.as_mut_ptr(), _mm256_mul_ps(u8_floats(lo), dv));
        _mm256_storeu_ps(
            sc.as_mut_ptr().add(8),
            _mm256_mul_ps(u8_floats(_mm_srli_si128(lo, 8)), dv),
        );
        _mm256_storeu_ps(mn.as_mut_ptr(), _mm256_mul_ps(u8_floats(hi), mv));
        _mm256_storeu_ps(
            mn.as_mut_ptr().add(8),
            _mm256_mul_ps(u8_floats(_mm_srli_si128(hi, 8)), mv),
        );
    }
    #[inline(always)]
    unsafe fn values(b: *const u8, j: usize) -> __m256i {
        two_bits(b.add(16), j)
    }
    #[inline(always)]
    unsafe fn sub(b: *const u8, j: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        hoisted_sub::<Self>(b, j)
    }
}

pub(super) struct Q3K;
impl Fmt for Q3K {
    const BYTES: usize = 110;
    const VALUES: usize = 256;
    const MIN: bool = false;
    const HOIST: bool = true;
    #[inline(always)]
    unsafe fn scales(b: *const u8, sc: &mut [f32; 16], _: &mut [f32; 16]) {
        // Scale s: low 4 bits from byte s (s < 8: low nibble) or s - 8 (high nibble) of the
        // first 8 bytes, high 2 bits from byte 8 + s % 4 shifted by 2 * (s / 4); minus 32.
        let d = f16_at(b.add(108));
        let p = b.add(96);
        let m4 = _mm_set1_epi8(0x0F);
        let first = _mm_loadl_epi64(p as *const __m128i);
        let low = _mm_unpacklo_epi64(
            _mm_and_si128(first, m4),
            _mm_and_si128(_mm_srli_epi16(first, 4), m4),
        );
        let h = _mm_set1_epi32((p.add(8) as *const i32).read_unaligned());
        let high = _mm_and_si128(
            _mm_srlv_epi32(h, _mm_setr_epi32(0, 2, 4, 6)),
            _mm_set1_epi8(3),
        );
        let six = _mm_sub_epi8(
            _mm_or_si128(low, _mm_slli_epi16(high, 4)),
            _mm_set1_epi8(32),
        );
        let dv = _mm256_set1_ps(d);
        _mm256_storeu_ps(sc.as_mut_ptr(), _mm256_mul_ps(i8_floats(six), dv));
        _mm256_storeu_ps(
            sc.as_mut_ptr().add(8),
            _mm256_mul_ps(i8_floats(_mm_srli_si128(six, 8)), dv),
        );
    }
    #[inline(always)]
    unsafe fn values(b: *const u8, j: usize) -> __m256i {
        let hm = _mm256_loadu_si256(b as *const __m256i);
        let hbit = _mm256_and_si256(
            _mm256_srl_epi16(hm, _mm_cvtsi32_si128(j as i32)),
            _mm256_set1_epi8(1),
        );
        // A clear high bit subtracts 4.
        let four = _mm256_slli_epi16(_mm256_xor_si256(hbit, _mm256_set1_epi8(1)), 2);
        _mm256_sub_epi8(two_bits(b.add(32), j), four)
    }
    #[inline(always)]
    unsafe fn sub(b: *const u8, j: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        hoisted_sub::<Self>(b, j)
    }
}

pub(super) struct IQ2XXS;
impl Fmt for IQ2XXS {
    const PER32: bool = true;
    const BYTES: usize = 66;
    const VALUES: usize = 256;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn sub(b: *const u8, j: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        let g = b.add(2 + 8 * j);
        let aux = u32_at(g.add(4));
        let db = f16_at(b) * (0.5 + (aux >> 28) as f32) * 0.25;
        let grid = std::array::from_fn(|l| IQ2XXS_GRID[*g.add(l) as usize]);
        let signs = std::array::from_fn(|l| SIGN7[((aux >> (7 * l)) & 127) as usize]);
        (signed64(grid, signs), [db; 2], [0.0; 2])
    }
}

pub(super) struct IQ2XS;
impl Fmt for IQ2XS {
    const BYTES: usize = 74;
    const VALUES: usize = 256;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn sub(b: *const u8, j: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        let d = f16_at(b);
        let sc = *b.add(66 + j);
        let v: [u16; 4] = std::array::from_fn(|l| u16_at(b.add(2 + 8 * j + 2 * l)));
        let grid = std::array::from_fn(|l| IQ2XS_GRID[(v[l] & 511) as usize]);
        let signs = std::array::from_fn(|l| SIGN7[(v[l] >> 9) as usize]);
        let db = |s: u8| d * (0.5 + s as f32) * 0.25;
        (
            signed64(grid, signs),
            [db(sc & 0x0F), db(sc >> 4)],
            [0.0; 2],
        )
    }
}

pub(super) struct IQ2S;
impl Fmt for IQ2S {
    const BYTES: usize = 82;
    const VALUES: usize = 256;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn sub(b: *const u8, j: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        let d = f16_at(b);
        let (qs, signs, qh) = (b.add(2 + 4 * j), b.add(34 + 4 * j), *b.add(66 + j));
        let sc = *b.add(74 + j);
        let grid = std::array::from_fn(|l| {
            IQ2S_GRID[*qs.add(l) as usize | (((qh >> (2 * l)) & 3) as usize) << 8]
        });
        let signs = std::array::from_fn(|l| SIGN8[*signs.add(l) as usize]);
        let db = |s: u8| d * (0.5 + s as f32) * 0.25;
        (
            signed64(grid, signs),
            [db(sc & 0x0F), db(sc >> 4)],
            [0.0; 2],
        )
    }
}

pub(super) struct IQ3XXS;
impl Fmt for IQ3XXS {
    const PER32: bool = true;
    const BYTES: usize = 98;
    const VALUES: usize = 256;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn sub(b: *const u8, j: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        let aux = u32_at(b.add(66 + 4 * j));
        let db = f16_at(b) * (0.5 + (aux >> 28) as f32) * 0.5;
        let qs = b.add(2 + 8 * j);
        let grid = std::array::from_fn(|i| IQ3XXS_GRID[*qs.add(i) as usize]);
        let signs = std::array::from_fn(|l| SIGN7[((aux >> (7 * l)) & 127) as usize]);
        (signed32(grid, signs), [db; 2], [0.0; 2])
    }
}

pub(super) struct IQ3S;
impl Fmt for IQ3S {
    const PER32: bool = true;
    const BYTES: usize = 110;
    const VALUES: usize = 256;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn sub(b: *const u8, j: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        let ls = (*b.add(106 + j / 2) >> (4 * (j % 2))) & 0x0F;
        let db = f16_at(b) * (1 + 2 * ls) as f32;
        let (qs, qh, signs) = (b.add(2 + 8 * j), *b.add(66 + j), b.add(74 + 4 * j));
        let grid = std::array::from_fn(|i| {
            IQ3S_GRID[*qs.add(i) as usize | (((qh >> i) & 1) as usize) << 8]
        });
        let signs = std::array::from_fn(|l| SIGN8[*signs.add(l) as usize]);
        (signed32(grid, signs), [db; 2], [0.0; 2])
    }
}

pub(super) struct IQ1S;
impl Fmt for IQ1S {
    const PER32: bool = true;
    const BYTES: usize = 50;
    const VALUES: usize = 256;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn sub(b: *const u8, j: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        let qh = u16_at(b.add(34 + 2 * j));
        let dl = f16_at(b) * (2 * ((qh >> 12) & 7) + 1) as f32 / 8.0;
        let qs = b.add(2 + 4 * j);
        let grid = std::array::from_fn(|l| {
            IQ1S_GRID[*qs.add(l) as usize | (((qh >> (3 * l)) & 7) as usize) << 8]
        });
        let shift = if qh & 0x8000 == 0 { PLUS } else { MINUS };
        (iq1(grid, [shift; 4]), [dl; 2], [0.0; 2])
    }
}

pub(super) struct IQ1M;
impl Fmt for IQ1M {
    const BYTES: usize = 56;
    const VALUES: usize = 256;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn sub(b: *const u8, j: usize) -> (__m256i, [f32; 2], [f32; 2]) {
        let s: [u16; 4] = std::array::from_fn(|i| u16_at(b.add(48 + 2 * i)));
        let bits = (s[0] >> 12) | ((s[1] >> 8) & 0xF0) | ((s[2] >> 4) & 0xF00) | (s[3] & 0xF000);
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(bits as i16)));
        let scale = |i: usize| d * (2 * ((s[i / 4] >> (3 * (i % 4))) & 7) + 1) as f32 / 8.0;
        let h: [u8; 4] = std::array::from_fn(|l| {
            let g = 4 * j + l;
            (*b.add(32 + g / 2) >> (4 * (g % 2))) & 0x0F
        });
        let grid = std::array::from_fn(|l| {
            IQ1S_GRID[*b.add(4 * j + l) as usize | ((h[l] & 7) as usize) << 8]
        });
        let shift = std::array::from_fn(|l| if h[l] & 8 == 0 { PLUS } else { MINUS });
        (iq1(grid, shift), [scale(2 * j), scale(2 * j + 1)], [0.0; 2])
    }
}
