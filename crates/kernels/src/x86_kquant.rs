//! AVX-512 VNNI kernels for the regrouped K-quant layouts (`packed`): 16 rows of Q4_K or Q6_K
//! against 1-4 activation rows, each the SIMD twin of `packed::dot16_ref`.

// As in `x86`: intrinsics bodies whose contract is stated once on the public entry points.
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::qdot::ActRow;
use crate::x86::prefetch_l2;

/// `packed::dot16` for grouped Q4_K: one 16-row group times 1-4 activation rows, AVX-512 VNNI.
///
/// # Safety
/// AVX-512 BW/VL/VNNI must be available; `group` must hold `acts[i].d.len() / 8` grouped
/// super-blocks. With `ahead`, the first pass prefetches the next group.
pub unsafe fn dot16_q4_k(group: &[u8], acts: &[ActRow], out: &mut [[f32; 16]], ahead: bool) {
    // 1-2 tokens: two integer chains per sub-block and token; 3-4 tokens in one pass with one
    // chain each, so that the accumulators still fit the 32 registers (the integer sums are
    // the same either way). One pass for 4 tokens against two of 2, alternating in one
    // process on the bench model: 512-token Q4_K_M prompt +9, +32, +18, -7%; 4-token verify
    // faster in 6 of 9 pairs (median -3%).
    match acts.len() {
        4 => return dot16_q4_k_zmm::<4, 1>(group, acts, out, ahead),
        3 => return dot16_q4_k_zmm::<3, 1>(group, acts, out, ahead),
        _ => {}
    }
    for (i, (a, o)) in acts.chunks(2).zip(out.chunks_mut(2)).enumerate() {
        match a.len() {
            2 => dot16_q4_k_zmm::<2, 2>(group, a, o, ahead && i == 0),
            _ => dot16_q4_k_zmm::<1, 2>(group, a, o, ahead && i == 0),
        }
    }
}

/// The 6-bit scale and min of sub-block `j` for 16 rows, from the 12 interleaved scale bytes
/// (`quant::scale_min_k4`, 16 rows at a time).
#[inline(always)]
unsafe fn scale_min_x16(blk: *const u8, j: usize) -> (__m128i, __m128i) {
    let s = |k: usize| _mm_loadu_si128(blk.add(64 + 16 * k) as *const __m128i);
    let (m6, m4) = (_mm_set1_epi8(0x3F), _mm_set1_epi8(0x0F));
    let top2 = |x: __m128i| _mm_and_si128(_mm_srli_epi16(x, 2), _mm_set1_epi8(0x30));
    if j < 4 {
        (_mm_and_si128(s(j), m6), _mm_and_si128(s(j + 4), m6))
    } else {
        let hi = s(j + 4);
        (
            _mm_or_si128(_mm_and_si128(hi, m4), top2(s(j - 4))),
            _mm_or_si128(_mm_and_si128(_mm_srli_epi16(hi, 4), m4), top2(s(j))),
        )
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot16_q4_k_zmm<const T: usize, const C: usize>(
    group: &[u8],
    acts: &[ActRow],
    out: &mut [[f32; 16]],
    ahead: bool,
) {
    let g = group.as_ptr();
    let nsb = acts[0].d.len() / 8;
    let mut xq = [std::ptr::null::<i32>(); T];
    let mut xd = [std::ptr::null::<f32>(); T];
    let mut xs = [std::ptr::null::<i32>(); T];
    for t in 0..T {
        xq[t] = acts[t].qs.as_ptr() as *const i32;
        xd[t] = acts[t].d.as_ptr();
        xs[t] = acts[t].s16.as_ptr();
    }
    let m4 = _mm512_set1_epi8(0x0F);
    let f32x16 = |v: __m128i| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
    // Per token: the scaled sums in two accumulators (even and odd sub-block pairs) and the
    // mins' terms in a third, so no chain of dependent FMAs runs through the whole row.
    let mut acc = [[_mm512_setzero_ps(); 2]; T];
    let mut mins = [_mm512_setzero_ps(); T];
    for sb in 0..nsb {
        let blk = g.add(sb * 2304);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
        let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32) as *const __m256i));
        for p in 0..4 {
            if ahead {
                prefetch_l2(blk.wrapping_add(nsb * 2304 + p * 576), 576);
            }
            let (sc0, mn0) = scale_min_x16(blk, 2 * p);
            let (sc1, mn1) = scale_min_x16(blk, 2 * p + 1);
            let (dsc0, dm0) = (
                _mm512_mul_ps(f32x16(sc0), d),
                _mm512_mul_ps(f32x16(mn0), dmin),
            );
            let (dsc1, dm1) = (
                _mm512_mul_ps(f32x16(sc1), d),
                _mm512_mul_ps(f32x16(mn1), dmin),
            );
            // C chains per sub-block and token (quads c with the same c % C).
            let mut ilo = [[_mm512_setzero_si512(); C]; T];
            let mut ihi = [[_mm512_setzero_si512(); C]; T];
            for c in 0..8 {
                let w = _mm512_loadu_si512(blk.add(256 + (p * 8 + c) * 64) as *const _);
                // The high nibbles stay in place (16x their value): one op, and the sums
                // are scaled by 1/16 below, exactly.
                let lo = _mm512_and_si512(w, m4);
                let hi = _mm512_andnot_si512(m4, w);
                for t in 0..T {
                    // Quad c of activation blocks sb*8 + 2p and sb*8 + 2p + 1.
                    let q = xq[t].add(sb * 64 + p * 16 + c);
                    ilo[t][c % C] = _mm512_dpbusd_epi32(
                        ilo[t][c % C],
                        lo,
                        _mm512_set1_epi32(q.read_unaligned()),
                    );
                    ihi[t][c % C] = _mm512_dpbusd_epi32(
                        ihi[t][c % C],
                        hi,
                        _mm512_set1_epi32(q.add(8).read_unaligned()),
                    );
                }
            }
            for t in 0..T {
                let ab = sb * 8 + 2 * p;
                let (xd0, xd1) = (*xd[t].add(ab), *xd[t].add(ab + 1));
                let s = xs[t].add(2 * ab);
                let (xs0, xs1) = (
                    (*s + *s.add(1)) as f32 * xd0,
                    (*s.add(2) + *s.add(3)) as f32 * xd1,
                );
                let sum = |v: [__m512i; C]| {
                    v.iter()
                        .fold(_mm512_setzero_si512(), |a, b| _mm512_add_epi32(a, *b))
                };
                let i0 = _mm512_cvtepi32_ps(sum(ilo[t]));
                let i1 = _mm512_mul_ps(_mm512_cvtepi32_ps(sum(ihi[t])), _mm512_set1_ps(0.0625));
                let a = &mut acc[t][p % 2];
                *a = _mm512_fmadd_ps(i0, _mm512_mul_ps(dsc0, _mm512_set1_ps(xd0)), *a);
                *a = _mm512_fmadd_ps(i1, _mm512_mul_ps(dsc1, _mm512_set1_ps(xd1)), *a);
                mins[t] = _mm512_fmadd_ps(dm0, _mm512_set1_ps(xs0), mins[t]);
                mins[t] = _mm512_fmadd_ps(dm1, _mm512_set1_ps(xs1), mins[t]);
            }
        }
    }
    for t in 0..T {
        let sum = _mm512_sub_ps(_mm512_add_ps(acc[t][0], acc[t][1]), mins[t]);
        _mm512_storeu_ps(out[t].as_mut_ptr(), sum);
    }
}

/// `packed::dot16` for grouped Q6_K: one 16-row group times each activation row, AVX-512 VNNI.
///
/// # Safety
/// AVX-512 BW/VL/VNNI must be available; `group` must hold `acts[i].d.len() / 8` grouped
/// super-blocks. With `ahead`, the first pass prefetches the next group.
pub unsafe fn dot16_q6_k(group: &[u8], acts: &[ActRow], out: &mut [[f32; 16]], ahead: bool) {
    for (i, (a, o)) in acts.iter().zip(out.iter_mut()).enumerate() {
        dot16_q6_k_zmm(group, *a, o, ahead && i == 0);
    }
}

/// Per half super-block: 8 quads of the 2-bit highs and 16 of the nibble lows make 4 x 8
/// 6-bit quads of 16 rows, one `vpdpbusd` each, into 8 sub-block sums that start at
/// `-32 * sum(x)` (the offset of Q6_K's unsigned quants).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot16_q6_k_zmm(group: &[u8], a: ActRow, out: &mut [f32; 16], ahead: bool) {
    let g = group.as_ptr();
    let xq = a.qs.as_ptr() as *const i32;
    let nsb = a.d.len() / 8;
    let (m4, m2) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x03));
    let mut acc = _mm512_setzero_ps();
    for sb in 0..nsb {
        let blk = g.add(sb * 3360);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
        for h in 0..2 {
            if ahead {
                prefetch_l2(blk.wrapping_add(nsb * 3360 + h * 1680), 1680);
            }
            let mut is: [__m512i; 8] = std::array::from_fn(|j| {
                _mm512_set1_epi32(-32 * *a.s16.get_unchecked(sb * 16 + h * 8 + j))
            });
            for c in 0..8 {
                let ld = |off: usize| _mm512_loadu_si512(blk.add(off) as *const _);
                // Lines 3k, 3k + 1, 3k + 2 for k = 8h + c (`packed::q6_k_line`): in order.
                let k = 288 + (h * 8 + c) * 192;
                let (hb, l0, l1) = (ld(k), ld(k + 64), ld(k + 128));
                for m in 0..4 {
                    let low = match m {
                        0 => _mm512_and_si512(l0, m4),
                        1 => _mm512_and_si512(l1, m4),
                        2 => _mm512_and_si512(_mm512_srli_epi16(l0, 4), m4),
                        _ => _mm512_and_si512(_mm512_srli_epi16(l1, 4), m4),
                    };
                    let high = match m {
                        0 => _mm512_and_si512(hb, m2),
                        1 => _mm512_and_si512(_mm512_srli_epi16(hb, 2), m2),
                        2 => _mm512_and_si512(_mm512_srli_epi16(hb, 4), m2),
                        _ => _mm512_and_si512(_mm512_srli_epi16(hb, 6), m2),
                    };
                    let q = _mm512_or_si512(low, _mm512_slli_epi16(high, 4));
                    let x = xq.add(sb * 64 + h * 32 + 8 * m + c).read_unaligned();
                    let j = 2 * m + c / 4;
                    is[j] = _mm512_dpbusd_epi32(is[j], q, _mm512_set1_epi32(x));
                }
            }
            for (j, isj) in is.iter().enumerate() {
                let s = h * 8 + j;
                let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                    blk.add(32 + s * 16) as *const __m128i,
                )));
                let xd = *a.d.get_unchecked(sb * 8 + s / 2);
                let w = _mm512_mul_ps(_mm512_mul_ps(sc, d), _mm512_set1_ps(xd));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*isj), w, acc);
            }
        }
    }
    _mm512_storeu_ps(out.as_mut_ptr(), acc);
}
