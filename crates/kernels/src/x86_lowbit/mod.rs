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

use crate::lowbit::{DecodedRow, LowBit};
use crate::qdot::ActRow;
use crate::x86::hsum256;

mod formats;

use formats::*;

/// Bytes ahead of the current block to prefetch (as `x86::PREFETCH`).
const PREFETCH: usize = 1024;

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

/// `product` of values known to be non-negative (at most 63): no sign adjustment.
#[inline(always)]
unsafe fn unsigned_product<const VNNI: bool>(q: __m256i, x: __m256i) -> __m256i {
    if VNNI {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, x)
    } else {
        _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1))
    }
}

/// The product for format `F`'s values: unsigned where they are never negative.
#[inline(always)]
unsafe fn product_of<F: Fmt, const VNNI: bool>(q: __m256i, x: __m256i) -> __m256i {
    if F::UNSIGNED {
        unsigned_product::<VNNI>(q, x)
    } else {
        product::<VNNI>(q, x)
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
                let sums = _mm256_cvtepi32_ps(product_of::<F, VNNI>(F::values(bp, j), x));
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
            let sums = _mm256_cvtepi32_ps(product_of::<F, VNNI>(q, x));
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
