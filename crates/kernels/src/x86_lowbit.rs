//! x86-64 twin of `lowbit::dot_decoded_ref`: a decoded low-bit row (small signed integers,
//! a scale per 16 values) times 8-bit activations. Per 32 values one signed byte product
//! (AVX2 `maddubs` of |w| with sign-adjusted activations, or VNNI `vpdpbusd` on 256-bit
//! vectors) gives eight 4-value sums, lanes 0-3 the first 16 values and 4-7 the second, which
//! meet their two scales in one FMA.

// Intrinsics bodies whose contract is stated once on the public entry point.
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::lowbit::DecodedRow;
use crate::qdot::ActRow;

/// # Safety
/// AVX2+FMA (and for `vnni`, AVX-512 VL/VNNI) must be available; `w` and `a` have the same
/// number of values.
pub unsafe fn dot_decoded(w: &DecodedRow, a: ActRow, vnni: bool) -> f32 {
    assert_eq!(
        w.q.len(),
        a.qs.len(),
        "decoded row and activations differ in length"
    );
    if vnni {
        dot_vnni(w, a)
    } else {
        dot_avx2(w, a)
    }
}

#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
unsafe fn dot_vnni(w: &DecodedRow, a: ActRow) -> f32 {
    body::<true>(w, a)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(w: &DecodedRow, a: ActRow) -> f32 {
    body::<false>(w, a)
}

#[inline(always)]
unsafe fn body<const VNNI: bool>(w: &DecodedRow, a: ActRow) -> f32 {
    let (wp, xp) = (w.q.as_ptr(), a.qs.as_ptr());
    let ones = _mm256_set1_epi16(1);
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let nb = a.d.len();
    for b in 0..nb {
        let wv = _mm256_loadu_si256(wp.add(b * 32) as *const __m256i);
        let xv = _mm256_loadu_si256(xp.add(b * 32) as *const __m256i);
        // |w| * (x with w's sign): the signed product as unsigned x signed bytes.
        let aw = _mm256_sign_epi8(wv, wv);
        let sx = _mm256_sign_epi8(xv, wv);
        let sums = if VNNI {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx)
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones)
        };
        let d = *a.d.get_unchecked(b);
        let (s0, s1) = (*w.sc.get_unchecked(2 * b), *w.sc.get_unchecked(2 * b + 1));
        let scale = _mm256_set_m128(_mm_set1_ps(s1 * d), _mm_set1_ps(s0 * d));
        if b % 2 == 0 {
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc0);
        } else {
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc1);
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

#[inline(always)]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}
