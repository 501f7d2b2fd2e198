//! x86-64 twins of `lowbit`'s reference: each format's 32-value blocks decoded in registers
//! (nibbles split by shifts and masks, IQ4 levels by `pshufb`, grid entries gathered as
//! 64- or 32-bit lanes and signed by a table of +-1 bytes) straight into the signed byte
//! product with the 8-bit activations (AVX2 `maddubs` of |w| with sign-adjusted activations,
//! or VNNI `vpdpbusd`). The product's eight 4-value sums (lanes 0-3 the block's first 16
//! values, 4-7 the second) meet the two per-16 scales in one FMA.
//!
//! `dot` fuses decode and dot (one activation row: decode); `decode_row` writes the same
//! integers to a `DecodedRow` once for several activation rows (prefill, verify); `dot_decoded`
//! dots such a row.

// Intrinsics bodies whose contract is stated once on the public entry points.
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::grids::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KVALUES_IQ4NL,
};
use crate::lowbit::{DecodedRow, LowBit};
use crate::qdot::ActRow;
use crate::x86::{f16_at, hsum256};

/// Bytes ahead of the current block to prefetch (as `x86::PREFETCH`).
const PREFETCH: usize = 1024;

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
trait Fmt {
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
unsafe fn hoisted_sub<F: Fmt>(b: *const u8, j: usize) -> (__m256i, [f32; 2], [f32; 2]) {
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

struct Q4_0;
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

struct Q4_1;
impl Fmt for Q4_1 {
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
struct Q5<const MIN: bool>;
impl<const M: bool> Fmt for Q5<M> {
    const PER32: bool = true;
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

struct IQ4NL;
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

struct IQ4XS;
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

/// Q5_K (a k-quant `lowbit` does not hold, but whose blocks decode the same way): 4-bit values
/// plus a fifth bit, a 6-bit scale and min per 32.
struct Q5K;
impl Fmt for Q5K {
    const PER32: bool = true;
    const BYTES: usize = 176;
    const VALUES: usize = 256;
    const MIN: bool = true;
    const HOIST: bool = true;
    #[inline(always)]
    unsafe fn scales(b: *const u8, sc: &mut [f32; 16], mn: &mut [f32; 16]) {
        let (d, dmin) = (f16_at(b), f16_at(b.add(2)));
        let packed = std::slice::from_raw_parts(b.add(4), 12);
        for j in 0..8 {
            let (s, m) = crate::quant::scale_min_k4(j, packed);
            (sc[2 * j], sc[2 * j + 1]) = (d * s as f32, d * s as f32);
            let m = -(dmin * m as f32);
            (mn[2 * j], mn[2 * j + 1]) = (m, m);
        }
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

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q5_k_vnni(w: &[u8], a: ActRow) -> f32 {
    dot_fmt::<Q5K, true>(w, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k_avx2(w: &[u8], a: ActRow) -> f32 {
    dot_fmt::<Q5K, false>(w, a)
}

/// A stored Q5_K row times one activation row.
///
/// # Safety
/// As `dot`.
pub unsafe fn dot_q5_k(w: &[u8], a: ActRow, vnni: bool) -> f32 {
    assert!(
        a.qs.len().is_multiple_of(256) && w.len() >= a.qs.len() / 256 * 176,
        "q5_k row of {} bytes for {} activations",
        w.len(),
        a.qs.len()
    );
    if vnni {
        q5_k_vnni(w, a)
    } else {
        q5_k_avx2(w, a)
    }
}

/// Q2_K's and Q3_K's 2-bit values of sub-block `j` from 64 bytes at `qs`.
#[inline(always)]
unsafe fn two_bits(qs: *const u8, j: usize) -> __m256i {
    let v = _mm256_loadu_si256(qs.add(32 * (j / 4)) as *const __m256i);
    let shifted = _mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * (j % 4) as i32));
    _mm256_and_si256(shifted, _mm256_set1_epi8(3))
}

struct Q2K;
impl Fmt for Q2K {
    const BYTES: usize = 84;
    const VALUES: usize = 256;
    const MIN: bool = true;
    const HOIST: bool = true;
    #[inline(always)]
    unsafe fn scales(b: *const u8, sc: &mut [f32; 16], mn: &mut [f32; 16]) {
        let (d, dmin) = (f16_at(b.add(80)), f16_at(b.add(82)));
        let packed = std::slice::from_raw_parts(b, 16);
        for g in 0..16 {
            sc[g] = d * (packed[g] & 0x0F) as f32;
            mn[g] = -(dmin * (packed[g] >> 4) as f32);
        }
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

struct Q3K;
impl Fmt for Q3K {
    const BYTES: usize = 110;
    const VALUES: usize = 256;
    const MIN: bool = false;
    const HOIST: bool = true;
    #[inline(always)]
    unsafe fn scales(b: *const u8, sc: &mut [f32; 16], _: &mut [f32; 16]) {
        let d = f16_at(b.add(108));
        let packed = std::slice::from_raw_parts(b.add(96), 12);
        for s in 0..16 {
            let low = if s < 8 {
                packed[s] & 0x0F
            } else {
                packed[s - 8] >> 4
            };
            let high = (packed[8 + s % 4] >> (2 * (s / 4))) & 3;
            sc[s] = d * ((low | (high << 4)) as i32 - 32) as f32;
        }
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

struct IQ2XXS;
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

struct IQ2XS;
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

struct IQ2S;
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

struct IQ3XXS;
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

struct IQ3S;
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

struct IQ1S;
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

struct IQ1M;
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

/// The signed product of 32 decoded values with 32 activations: eight 4-value sums.
#[inline(always)]
unsafe fn product<const VNNI: bool>(q: __m256i, x: __m256i) -> __m256i {
    let aq = _mm256_sign_epi8(q, q);
    let sx = _mm256_sign_epi8(x, q);
    if VNNI {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), aq, sx)
    } else {
        _mm256_madd_epi16(_mm256_maddubs_epi16(aq, sx), _mm256_set1_epi16(1))
    }
}

/// Decode and dot, block by block.
#[inline(always)]
unsafe fn dot_fmt<F: Fmt, const VNNI: bool>(w: &[u8], a: ActRow) -> f32 {
    let per = F::VALUES / 32;
    // (Folded away: hoisted scales come in 256-value blocks, eight sub-blocks.)
    assert!(
        !F::HOIST || per == 8,
        "hoisted scales need 256-value blocks"
    );
    let (wp, xp) = (w.as_ptr(), a.qs.as_ptr());
    // Two accumulators (and two for the offsets), alternating by block: one FMA chain would
    // wait on its own latency every 32 values.
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut mins = [0f32; 2];
    let mut min_acc = _mm256_setzero_ps();
    for blk in 0..a.d.len() / per {
        let bp = wp.add(blk * F::BYTES);
        if blk % (256 / F::VALUES) == 0 {
            _mm_prefetch(bp.wrapping_add(PREFETCH) as *const i8, _MM_HINT_T0);
        }
        if F::HOIST {
            let (mut sc, mut mn) = ([0f32; 16], [0f32; 16]);
            F::scales(bp, &mut sc, &mut mn);
            for j in 0..per {
                let b = blk * per + j;
                let x = _mm256_loadu_si256(xp.add(32 * b) as *const __m256i);
                let sums = _mm256_cvtepi32_ps(product::<VNNI>(F::values(bp, j), x));
                let d = _mm256_set1_ps(*a.d.get_unchecked(b));
                let scale = if F::PER32 {
                    _mm256_set1_ps(sc[2 * j])
                } else {
                    _mm256_set_m128(_mm_set1_ps(sc[2 * j + 1]), _mm_set1_ps(sc[2 * j]))
                };
                acc[j % 2] = _mm256_fmadd_ps(sums, _mm256_mul_ps(scale, d), acc[j % 2]);
            }
            if F::MIN {
                // sum over 16-value groups g of d[g / 2] * mn[g] * s16[g], in registers:
                // the products per group, added in pairs (hadd keeps 128-bit lanes, so the
                // pairs land in order 0,1,4,5 | 2,3,6,7), then times the block scales.
                let g0 = blk * 16;
                let s16 = a.s16.as_ptr().add(g0) as *const __m256i;
                let t0 = _mm256_mul_ps(
                    _mm256_loadu_ps(mn.as_ptr()),
                    _mm256_cvtepi32_ps(_mm256_loadu_si256(s16)),
                );
                let t1 = _mm256_mul_ps(
                    _mm256_loadu_ps(mn.as_ptr().add(8)),
                    _mm256_cvtepi32_ps(_mm256_loadu_si256(s16.add(1))),
                );
                let pairs = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
                    _mm256_hadd_ps(t0, t1),
                ));
                let d = _mm256_loadu_ps(a.d.as_ptr().add(g0 / 2));
                min_acc = _mm256_fmadd_ps(_mm256_castpd_ps(pairs), d, min_acc);
            }
            continue;
        }
        for j in 0..per {
            let b = blk * per + j;
            let (q, sc, mn) = F::sub(bp, j);
            let x = _mm256_loadu_si256(xp.add(32 * b) as *const __m256i);
            let sums = _mm256_cvtepi32_ps(product::<VNNI>(q, x));
            let d = *a.d.get_unchecked(b);
            let scale = if F::PER32 {
                _mm256_set1_ps(sc[0] * d)
            } else {
                _mm256_set_m128(_mm_set1_ps(sc[1] * d), _mm_set1_ps(sc[0] * d))
            };
            acc[b % 2] = _mm256_fmadd_ps(sums, scale, acc[b % 2]);
            if F::MIN {
                let s = a.s16.get_unchecked(2 * b..2 * b + 2);
                mins[b % 2] += d * (mn[0] * s[0] as f32 + mn[1] * s[1] as f32);
            }
        }
    }
    hsum256(_mm256_add_ps(acc[0], acc[1])) + hsum256(min_acc) + (mins[0] + mins[1])
}

/// Decode a row into `out` (sized by the caller).
#[inline(always)]
unsafe fn decode_fmt<F: Fmt>(w: &[u8], out: &mut DecodedRow) {
    let per = F::VALUES / 32;
    let blocks = out.q.len() / F::VALUES;
    let (qp, wp) = (out.q.as_mut_ptr(), w.as_ptr());
    for blk in 0..blocks {
        for j in 0..per {
            let b = blk * per + j;
            let (q, sc, mn) = F::sub(wp.add(blk * F::BYTES), j);
            _mm256_storeu_si256(qp.add(32 * b) as *mut __m256i, q);
            out.sc[2 * b..2 * b + 2].copy_from_slice(&sc);
            out.mn[2 * b..2 * b + 2].copy_from_slice(&mn);
        }
    }
}

/// Run `$body::<F>` for `$l`'s format type.
macro_rules! by_format {
    ($l:expr, $body:ident $(::<$c:tt>)?, ($($arg:expr),*)) => {
        match $l {
            LowBit::Q4_0 => $body::<Q4_0 $(, $c)?>($($arg),*),
            LowBit::Q4_1 => $body::<Q4_1 $(, $c)?>($($arg),*),
            LowBit::Q5_0 => $body::<Q5<false> $(, $c)?>($($arg),*),
            LowBit::Q5_1 => $body::<Q5<true> $(, $c)?>($($arg),*),
            LowBit::IQ4NL => $body::<IQ4NL $(, $c)?>($($arg),*),
            LowBit::Q2K => $body::<Q2K $(, $c)?>($($arg),*),
            LowBit::Q3K => $body::<Q3K $(, $c)?>($($arg),*),
            LowBit::IQ4XS => $body::<IQ4XS $(, $c)?>($($arg),*),
            LowBit::IQ2XXS => $body::<IQ2XXS $(, $c)?>($($arg),*),
            LowBit::IQ2XS => $body::<IQ2XS $(, $c)?>($($arg),*),
            LowBit::IQ2S => $body::<IQ2S $(, $c)?>($($arg),*),
            LowBit::IQ3XXS => $body::<IQ3XXS $(, $c)?>($($arg),*),
            LowBit::IQ3S => $body::<IQ3S $(, $c)?>($($arg),*),
            LowBit::IQ1S => $body::<IQ1S $(, $c)?>($($arg),*),
            LowBit::IQ1M => $body::<IQ1M $(, $c)?>($($arg),*),
        }
    };
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_vnni(l: LowBit, w: &[u8], a: ActRow) -> f32 {
    by_format!(l, dot_fmt::<true>, (w, a))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(l: LowBit, w: &[u8], a: ActRow) -> f32 {
    by_format!(l, dot_fmt::<false>, (w, a))
}

/// A stored row of `l` times one activation row.
///
/// # Safety
/// AVX2+FMA+F16C (and for `vnni`, AVX-512 VL/VNNI) must be available.
pub unsafe fn dot(l: LowBit, w: &[u8], a: ActRow, vnni: bool) -> f32 {
    let blocks = a.qs.len() / l.block_len();
    assert!(
        a.qs.len().is_multiple_of(l.block_len()) && w.len() >= blocks * l.block_bytes(),
        "{} row of {} bytes for {} activations",
        l.name(),
        w.len(),
        a.qs.len()
    );
    if vnni {
        dot_vnni(l, w, a)
    } else {
        dot_avx2(l, w, a)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_avx2(l: LowBit, w: &[u8], out: &mut DecodedRow) {
    by_format!(l, decode_fmt, (w, out))
}

/// `DecodedRow::decode` in registers: the same integers and scales.
///
/// # Safety
/// AVX2+FMA+F16C must be available.
pub unsafe fn decode_row(l: LowBit, w: &[u8], out: &mut DecodedRow) {
    let n = w.len() / l.block_bytes() * l.block_len();
    out.q.resize(n, 0);
    out.sc.resize(n / 16, 0.0);
    out.mn.resize(n / 16, 0.0);
    out.has_min = l.has_min();
    decode_avx2(l, w, out)
}

/// A decoded row times one activation row.
///
/// # Safety
/// AVX2+FMA (and for `vnni`, AVX-512 VL/VNNI) must be available.
pub unsafe fn dot_decoded(w: &DecodedRow, a: ActRow, vnni: bool) -> f32 {
    assert_eq!(
        w.q.len(),
        a.qs.len(),
        "decoded row and activations differ in length"
    );
    if vnni {
        decoded_vnni(w, a)
    } else {
        decoded_avx2(w, a)
    }
}

#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
unsafe fn decoded_vnni(w: &DecodedRow, a: ActRow) -> f32 {
    decoded::<true>(w, a)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn decoded_avx2(w: &DecodedRow, a: ActRow) -> f32 {
    decoded::<false>(w, a)
}

#[inline(always)]
unsafe fn decoded<const VNNI: bool>(w: &DecodedRow, a: ActRow) -> f32 {
    let (wp, xp) = (w.q.as_ptr(), a.qs.as_ptr());
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let nb = a.d.len();
    for b in 0..nb {
        let q = _mm256_loadu_si256(wp.add(b * 32) as *const __m256i);
        let x = _mm256_loadu_si256(xp.add(b * 32) as *const __m256i);
        let sums = _mm256_cvtepi32_ps(product::<VNNI>(q, x));
        let d = *a.d.get_unchecked(b);
        let (s0, s1) = (*w.sc.get_unchecked(2 * b), *w.sc.get_unchecked(2 * b + 1));
        let scale = _mm256_set_m128(_mm_set1_ps(s1 * d), _mm_set1_ps(s0 * d));
        if b % 2 == 0 {
            acc0 = _mm256_fmadd_ps(sums, scale, acc0);
        } else {
            acc1 = _mm256_fmadd_ps(sums, scale, acc1);
        }
    }
    let mut sum = hsum256(_mm256_add_ps(acc0, acc1));
    if w.has_min {
        for g in 0..2 * nb {
            sum += a.d[g / 2] * (w.mn[g] * a.s16[g] as f32);
        }
    }
    sum
}
