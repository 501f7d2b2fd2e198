//! x86-64 SIMD twins of `qdot`'s reference dots: AVX2 (`maddubs` + `madd`) and AVX-512 VNNI
//! (`vpdpbusd` on 256-bit vectors), one body per format instantiated for both, with software
//! prefetch 1 KiB ahead in the weight stream (rust-stack.md §3.3: that reached the DRAM ceiling).

// Every function here is an intrinsics body whose contract is stated once on the public entry
// points; wrapping each intrinsic call in its own `unsafe` block would only add noise.
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::qdot::{ActRow, WFormat};

/// Bytes ahead of the current weight block to prefetch.
const PREFETCH: usize = 1024;

/// Bytes ahead of the current block that the 1-token grouped Q8_0 kernel prefetches into L2
/// (the same weight stream, so no new stream for the hardware prefetchers to track): a decode
/// step on the bench model was faster with it in 331 of 512 alternating step pairs (medians
/// -0.4 to -3.7%, in both vCPU placements). Other distances won 55% (1,024), 62% (1,536) and
/// 68% (2,560) of their pairs, but 4,096 only 28% (+2 to +7%); the Q4_K/Q6_K group kernels
/// lost with it at 2,048 (49 of 512 pairs won, +10 to +20%).
const PREFETCH_L2_1TOKEN: usize = 2048;

/// `Some(dot)` for the formats with a SIMD kernel, `None` otherwise.
///
/// # Safety
/// AVX2+FMA+F16C (and for `vnni`, AVX-512 BW/VL/VNNI) must be available; `w` must hold as many
/// values of `fmt` as `a` has.
pub unsafe fn dot_q(fmt: WFormat, w: &[u8], a: ActRow, vnni: bool) -> Option<f32> {
    let nb = a.d.len();
    debug_assert_eq!(a.qs.len(), nb * 32);
    debug_assert!(w.len() >= fmt.row_bytes(nb * 32));
    // SAFETY: forwarded from the caller.
    unsafe {
        Some(match (fmt, vnni) {
            (WFormat::Q8_0, true) => q8_0_zmm(w, a),
            (WFormat::Q8_0, false) => q8_0_avx2(w, a),
            (WFormat::Q4K, true) => q4_k_vnni(w, a),
            (WFormat::Q4K, false) => q4_k_avx2(w, a),
            (WFormat::Q6K, true) => q6_k_vnni(w, a),
            (WFormat::Q6K, false) => q6_k_avx2(w, a),
            _ => return None,
        })
    }
}

#[inline(always)]
pub(crate) unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[inline(always)]
pub(crate) unsafe fn f16_at(p: *const u8) -> f32 {
    // A broadcast load: no false dependency on whatever register would hold the upper lanes.
    let bits = (p as *const i16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(bits)))
}

/// `u8 x i8` dot in groups of 4 bytes -> 8 x i32.
#[inline(always)]
unsafe fn dp<const VNNI: bool>(u: __m256i, s: __m256i) -> __m256i {
    if VNNI {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    } else {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
}

#[inline(always)]
unsafe fn loadu(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// The f16 at `p` in all 8 lanes (a broadcast load: no false dependency on a register's upper
/// lanes, which a scalar `vpinsrw` conversion would carry into the accumulator chain).
#[inline(always)]
unsafe fn f16_bcast8(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16((p as *const i16).read_unaligned()))
}

#[inline(always)]
unsafe fn q8_0_block<const VNNI: bool>(
    blk: *const u8,
    x: *const u8,
    dx: f32,
    acc: __m256,
) -> __m256 {
    _mm_prefetch(blk.wrapping_add(PREFETCH) as *const i8, _MM_HINT_T0);
    let vw = loadu(blk.add(2));
    let vx = loadu(x);
    // Sign trick: |w| as unsigned, x carrying w's sign.
    let d = dp::<VNNI>(_mm256_sign_epi8(vw, vw), _mm256_sign_epi8(vx, vw));
    let scale = _mm256_mul_ps(f16_bcast8(blk), _mm256_set1_ps(dx));
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), scale, acc)
}

#[inline(always)]
unsafe fn q8_0<const VNNI: bool>(w: &[u8], a: ActRow) -> f32 {
    let (wp, xp) = (w.as_ptr(), a.qs.as_ptr() as *const u8);
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let nb = a.d.len();
    let mut b = 0;
    while b + 2 <= nb {
        acc0 = q8_0_block::<VNNI>(wp.add(b * 34), xp.add(b * 32), *a.d.get_unchecked(b), acc0);
        acc1 = q8_0_block::<VNNI>(
            wp.add(b * 34 + 34),
            xp.add(b * 32 + 32),
            *a.d.get_unchecked(b + 1),
            acc1,
        );
        b += 2;
    }
    if b < nb {
        acc0 = q8_0_block::<VNNI>(wp.add(b * 34), xp.add(b * 32), *a.d.get_unchecked(b), acc0);
    }
    hsum256(_mm256_add_ps(acc0, acc1))
}

#[inline(always)]
unsafe fn q4_k<const VNNI: bool>(w: &[u8], a: ActRow) -> f32 {
    let (wp, xp) = (w.as_ptr(), a.qs.as_ptr() as *const u8);
    let m4 = _mm256_set1_epi8(0x0F);
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut mins = 0f32;
    for sb in 0..a.d.len() / 8 {
        let blk = wp.add(sb * 144);
        _mm_prefetch(blk.wrapping_add(PREFETCH) as *const i8, _MM_HINT_T0);
        _mm_prefetch(blk.wrapping_add(PREFETCH + 64) as *const i8, _MM_HINT_T0);
        let (d, dmin) = (f16_at(blk), f16_at(blk.add(2)));
        let scales = std::slice::from_raw_parts(blk.add(4), 12);
        for p in 0..4 {
            let nib = loadu(blk.add(16 + p * 32));
            let lo = _mm256_and_si256(nib, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(nib, 4), m4);
            let ab = sb * 8 + 2 * p;
            let x0 = loadu(xp.add(ab * 32));
            let x1 = loadu(xp.add(ab * 32 + 32));
            let (sc0, m0) = crate::quant::scale_min_k4(2 * p, scales);
            let (sc1, m1) = crate::quant::scale_min_k4(2 * p + 1, scales);
            let (dx0, dx1) = (*a.d.get_unchecked(ab), *a.d.get_unchecked(ab + 1));
            acc0 = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(dp::<VNNI>(lo, x0)),
                _mm256_set1_ps(d * sc0 as f32 * dx0),
                acc0,
            );
            acc1 = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(dp::<VNNI>(hi, x1)),
                _mm256_set1_ps(d * sc1 as f32 * dx1),
                acc1,
            );
            let s = a.s16;
            let xs0 = (s.get_unchecked(2 * ab) + s.get_unchecked(2 * ab + 1)) as f32;
            let xs1 = (s.get_unchecked(2 * ab + 2) + s.get_unchecked(2 * ab + 3)) as f32;
            mins += dmin * (m0 as f32 * dx0 * xs0 + m1 as f32 * dx1 * xs1);
        }
    }
    hsum256(_mm256_add_ps(acc0, acc1)) - mins
}

#[inline(always)]
unsafe fn q6_k<const VNNI: bool>(w: &[u8], a: ActRow) -> f32 {
    let (wp, xp) = (w.as_ptr(), a.qs.as_ptr() as *const u8);
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut corr = 0f32;
    for sb in 0..a.d.len() / 8 {
        let blk = wp.add(sb * 210);
        _mm_prefetch(blk.wrapping_add(PREFETCH) as *const i8, _MM_HINT_T0);
        _mm_prefetch(blk.wrapping_add(PREFETCH + 64) as *const i8, _MM_HINT_T0);
        _mm_prefetch(blk.wrapping_add(PREFETCH + 128) as *const i8, _MM_HINT_T0);
        let d = f16_at(blk.add(208));
        let sc = blk.add(192) as *const i8;
        for half in 0..2 {
            let ql0 = loadu(blk.add(half * 64));
            let ql1 = loadu(blk.add(half * 64 + 32));
            let qh = loadu(blk.add(128 + half * 32));
            let hbits = |shift: i32| -> __m256i {
                let h = match shift {
                    0 => qh,
                    2 => _mm256_srli_epi16(qh, 2),
                    4 => _mm256_srli_epi16(qh, 4),
                    _ => _mm256_srli_epi16(qh, 6),
                };
                _mm256_slli_epi16(_mm256_and_si256(h, m2), 4)
            };
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), hbits(0)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), hbits(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), hbits(4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), hbits(6)),
            ];
            for (k, qk) in q.iter().enumerate() {
                let ab = sb * 8 + half * 4 + k; // activation block of 32
                let si = half * 8 + k * 2; // scale of the first 16 values
                let x = loadu(xp.add(ab * 32));
                let dx = d * *a.d.get_unchecked(ab);
                let (s0, s1) = (*sc.add(si) as f32, *sc.add(si + 1) as f32);
                let scale = _mm256_setr_m128(_mm_set1_ps(dx * s0), _mm_set1_ps(dx * s1));
                let prod = _mm256_cvtepi32_ps(dp::<VNNI>(*qk, x));
                if k & 1 == 0 {
                    acc0 = _mm256_fmadd_ps(prod, scale, acc0);
                } else {
                    acc1 = _mm256_fmadd_ps(prod, scale, acc1);
                }
                let s = a.s16;
                corr += 32.0
                    * dx
                    * (s0 * *s.get_unchecked(2 * ab) as f32
                        + s1 * *s.get_unchecked(2 * ab + 1) as f32);
            }
        }
    }
    hsum256(_mm256_add_ps(acc0, acc1)) - corr
}

/// Q8_0 with 512-bit VNNI: two blocks per `vpdpbusd` (rust-stack.md §3.3: the variant that
/// reached the DRAM ceiling with two threads).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_0_zmm(w: &[u8], a: ActRow) -> f32 {
    let (wp, xp) = (w.as_ptr(), a.qs.as_ptr() as *const u8);
    let nb = a.d.len();
    let zero = _mm512_setzero_si512();
    // Lanes 0-7 take the first block's scale, 8-15 the second's.
    let pair = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut b = 0;
    let step = |b: usize, acc: __m512| -> __m512 {
        let blk = wp.add(b * 34);
        _mm_prefetch(blk.wrapping_add(PREFETCH) as *const i8, _MM_HINT_T0);
        _mm_prefetch(blk.wrapping_add(PREFETCH + 64) as *const i8, _MM_HINT_T0);
        let vw = _mm512_inserti64x4(
            _mm512_castsi256_si512(loadu(blk.add(2))),
            loadu(blk.add(36)),
            1,
        );
        let vx = _mm512_loadu_si512(xp.add(b * 32) as *const _);
        // |w| as unsigned; x negated where w < 0.
        let neg = _mm512_movepi8_mask(vw);
        let sx = _mm512_mask_sub_epi8(vx, neg, zero, vx);
        let d = _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(vw), sx);
        let h0 = (blk as *const i16).read_unaligned();
        let h1 = (blk.add(34) as *const i16).read_unaligned();
        let ws = _mm512_cvtph_ps(_mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_set1_epi16(h0)),
            _mm_set1_epi16(h1),
            1,
        ));
        let xs = _mm512_permutexvar_ps(
            pair,
            _mm512_castps128_ps512(_mm_castpd_ps(
                _mm_load_sd(a.d.as_ptr().add(b) as *const f64),
            )),
        );
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(ws, xs), acc)
    };
    while b + 4 <= nb {
        acc0 = step(b, acc0);
        acc1 = step(b + 2, acc1);
        b += 4;
    }
    if b + 2 <= nb {
        acc0 = step(b, acc0);
        b += 2;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    if b < nb {
        s += hsum256(q8_0_block::<true>(
            wp.add(b * 34),
            xp.add(b * 32),
            *a.d.get_unchecked(b),
            _mm256_setzero_ps(),
        ));
    }
    s
}

macro_rules! instantiate {
    ($body:ident, $vnni:ident, $avx2:ident) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $vnni(w: &[u8], a: ActRow) -> f32 {
            // SAFETY: features enabled above; bounds per `dot_q`'s contract.
            unsafe { $body::<true>(w, a) }
        }
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $avx2(w: &[u8], a: ActRow) -> f32 {
            // SAFETY: as above.
            unsafe { $body::<false>(w, a) }
        }
    };
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_avx2(w: &[u8], a: ActRow) -> f32 {
    q8_0::<false>(w, a)
}
instantiate!(q4_k, q4_k_vnni, q4_k_avx2);
instantiate!(q6_k, q6_k_vnni, q6_k_avx2);

/// Float weight row (`F32`, `F16` or `BF16` bytes) times f32 activations, AVX-512F.
///
/// # Safety
/// AVX-512F and F16C must be available; `w` holds `x.len()` values of `fmt`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma,avx2")]
pub unsafe fn dot_f(fmt: WFormat, w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 2];
    let full = n / 16 * 16;
    let mut i = 0;
    while i < full {
        let wv = match fmt {
            WFormat::F32 => _mm512_loadu_ps(wp.add(i * 4) as *const f32),
            WFormat::BF16 => {
                let h = _mm256_loadu_si256(wp.add(i * 2) as *const __m256i);
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
            }
            _ => _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(i * 2) as *const __m256i)),
        };
        let k = (i / 16) & 1;
        acc[k] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xp.add(i)), acc[k]);
        i += 16;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    if full < n {
        let bpv = fmt.block_bytes();
        s += crate::qdot::dot_f_ref(fmt, &w[full * bpv..n * bpv], &x[full..]);
    }
    s
}

/// Prefetch the cache lines of `[p, p + len)` into L2 (`p` may point past the end of an
/// allocation: a prefetch never faults).
#[inline(always)]
pub(crate) unsafe fn prefetch_l2(p: *const u8, len: usize) {
    let mut o = 0;
    while o < len {
        _mm_prefetch(p.wrapping_add(o) as *const i8, _MM_HINT_T1);
        o += 64;
    }
}

/// `packed::dot16`: one 16-row group times 1-4 activation rows, AVX-512 VNNI or AVX2. With
/// `ahead`, the VNNI kernel also prefetches the group that follows (`packed::dot16`).
///
/// # Safety
/// The ISA must be available; `group` must hold `acts[i].d.len()` grouped blocks.
pub unsafe fn dot16(group: &[u8], acts: &[ActRow], out: &mut [[f32; 16]], vnni: bool, ahead: bool) {
    if vnni {
        match acts.len() {
            4 => dot16_zmm::<4>(group, acts, out, ahead),
            3 => dot16_zmm::<3>(group, acts, out, ahead),
            2 => dot16_zmm::<2>(group, acts, out, ahead),
            1 => dot16_zmm::<1>(group, acts, out, ahead),
            _ => {}
        }
    } else {
        for (a, o) in acts.iter().zip(out.iter_mut()) {
            *o = dot16_avx2(group, *a);
        }
    }
}

/// Per block: 8 loads of 16 rows x 4 weights, each meeting a broadcast quad of every token's
/// activations in one `vpdpbusd`; two integer chains per token, then one scale FMA per token.
/// With `ahead`, each block also prefetches the same block of the next group into L2; with one
/// token and no `ahead`, the bytes `PREFETCH_L2_1TOKEN` further on in the weight stream.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot16_zmm<const T: usize>(
    group: &[u8],
    acts: &[ActRow],
    out: &mut [[f32; 16]],
    ahead: bool,
) {
    let g = group.as_ptr();
    let nb = acts[0].d.len();
    let mut xq = [std::ptr::null::<i32>(); T];
    let mut xd = [std::ptr::null::<f32>(); T];
    let mut xb = [std::ptr::null::<i32>(); T];
    for t in 0..T {
        xq[t] = acts[t].qs.as_ptr() as *const i32;
        xd[t] = acts[t].d.as_ptr();
        xb[t] = acts[t].bias.as_ptr();
    }
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let blk = g.add(b * 544);
        if ahead {
            prefetch_l2(blk.wrapping_add(nb * 544), 544);
        } else if T == 1 {
            prefetch_l2(blk.wrapping_add(PREFETCH_L2_1TOKEN), 544);
        }
        let sc = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
        let mut w = [_mm512_setzero_si512(); 8];
        for (c, wc) in w.iter_mut().enumerate() {
            *wc = _mm512_loadu_si512(blk.add(32 + 64 * c) as *const _);
        }
        for t in 0..T {
            let q = xq[t].add(b * 8);
            let mut i0 = _mm512_set1_epi32(*xb[t].add(b));
            let mut i1 = _mm512_setzero_si512();
            for c in (0..8).step_by(2) {
                i0 = _mm512_dpbusd_epi32(i0, w[c], _mm512_set1_epi32(q.add(c).read_unaligned()));
                i1 = _mm512_dpbusd_epi32(
                    i1,
                    w[c + 1],
                    _mm512_set1_epi32(q.add(c + 1).read_unaligned()),
                );
            }
            let s = _mm512_mul_ps(sc, _mm512_set1_ps(*xd[t].add(b)));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(i0, i1)), s, acc[t]);
        }
    }
    for t in 0..T {
        _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
    }
}

/// AVX2: the group as two halves of 8 rows; weights back to signed, `maddubs` with the sign
/// moved onto the activations.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot16_avx2(group: &[u8], a: ActRow) -> [f32; 16] {
    let g = group.as_ptr();
    let q = a.qs.as_ptr() as *const i32;
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 2];
    for b in 0..a.d.len() {
        let blk = g.add(b * 544);
        let xd = _mm256_set1_ps(*a.d.get_unchecked(b));
        for (h, acc) in acc.iter_mut().enumerate() {
            let mut isum = _mm256_setzero_si256();
            for c in 0..8 {
                let w = _mm256_xor_si256(loadu(blk.add(32 + 64 * c + 32 * h)), flip);
                let x = _mm256_set1_epi32(q.add(b * 8 + c).read_unaligned());
                let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, ones));
            }
            let sc = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16 * h) as *const __m128i));
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(sc, xd), *acc);
        }
    }
    let mut out = [0f32; 16];
    _mm256_storeu_ps(out.as_mut_ptr(), acc[0]);
    _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[1]);
    out
}

/// f32 dot product, AVX-512F (masked tail).
///
/// # Safety
/// AVX-512F must be available; `a.len() == b.len()`.
#[target_feature(enable = "avx512f,fma,avx2")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut i = 0;
    while i + 32 <= n {
        acc[0] = _mm512_fmadd_ps(
            _mm512_loadu_ps(ap.add(i)),
            _mm512_loadu_ps(bp.add(i)),
            acc[0],
        );
        acc[1] = _mm512_fmadd_ps(
            _mm512_loadu_ps(ap.add(i + 16)),
            _mm512_loadu_ps(bp.add(i + 16)),
            acc[1],
        );
        i += 32;
    }
    while i < n {
        let m: __mmask16 = if n - i >= 16 {
            0xFFFF
        } else {
            (1u16 << (n - i)) - 1
        };
        acc[0] = _mm512_fmadd_ps(
            _mm512_maskz_loadu_ps(m, ap.add(i)),
            _mm512_maskz_loadu_ps(m, bp.add(i)),
            acc[0],
        );
        i += 16;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

/// `y += alpha * x`, AVX-512F (masked tail).
///
/// # Safety
/// AVX-512F must be available; `y.len() == x.len()`.
#[target_feature(enable = "avx512f,fma,avx2")]
pub unsafe fn axpy_f32(y: &mut [f32], alpha: f32, x: &[f32]) {
    let n = y.len();
    let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
    let a = _mm512_set1_ps(alpha);
    let mut i = 0;
    while i < n {
        let m: __mmask16 = if n - i >= 16 {
            0xFFFF
        } else {
            (1u16 << (n - i)) - 1
        };
        let v = _mm512_fmadd_ps(
            a,
            _mm512_maskz_loadu_ps(m, xp.add(i)),
            _mm512_maskz_loadu_ps(m, yp.add(i)),
        );
        _mm512_mask_storeu_ps(yp.add(i), m, v);
        i += 16;
    }
}

/// `iters` rounds of 12 independent 512-bit `vpdpbusd` (64 int8 MACs each): the integer
/// compute ceiling.
///
/// # Safety
/// AVX-512 VNNI must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn vnni_loop(iters: usize, seed: i32) -> i32 {
    let a = _mm512_set1_epi32(seed);
    let b = _mm512_set1_epi32(seed.rotate_left(7));
    let mut acc = [_mm512_set1_epi32(seed); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_dpbusd_epi32(*v, a, b);
        }
    }
    let s = acc
        .iter()
        .fold(_mm512_setzero_si512(), |s, v| _mm512_add_epi32(s, *v));
    _mm512_reduce_add_epi32(s)
}

/// `iters` rounds of 12 independent 512-bit f32 FMAs: the float compute ceiling.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f,fma")]
pub unsafe fn fma_loop(iters: usize, seed: f32) -> f32 {
    let a = _mm512_set1_ps(seed);
    let b = _mm512_set1_ps(0.999);
    let mut acc = [_mm512_set1_ps(seed); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, b, a);
        }
    }
    let s = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v));
    _mm512_reduce_add_ps(s)
}

/// `qdot::quantize_block_ref` on AVX-512, the same values bit for bit (round half away from
/// zero by truncation and a compare).
///
/// # Safety
/// AVX-512F/BW must be available; `xs` and `qs` hold 32 values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn quantize_block(xs: &[f32], qs: &mut [i8]) -> (f32, i32, i32) {
    debug_assert!(xs.len() == 32 && qs.len() == 32);
    let (x0, x1) = (
        _mm512_loadu_ps(xs.as_ptr()),
        _mm512_loadu_ps(xs.as_ptr().add(16)),
    );
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
    let d = amax / 127.0;
    let id = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let round = |v: __m512| {
        let v = _mm512_mul_ps(v, id);
        let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let half = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(
            _mm512_abs_ps(_mm512_sub_ps(v, t)),
            _mm512_set1_ps(0.5),
        );
        // t + sign(v) where the dropped fraction is at least one half.
        let one = _mm512_or_ps(_mm512_set1_ps(1.0), _mm512_and_ps(v, _mm512_set1_ps(-0.0)));
        _mm512_cvttps_epi32(_mm512_mask_add_ps(t, half, t, one))
    };
    let (q0, q1) = (round(x0), round(x1));
    _mm_storeu_si128(qs.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(
        qs.as_mut_ptr().add(16) as *mut __m128i,
        _mm512_cvtepi32_epi8(q1),
    );
    (d, _mm512_reduce_add_epi32(q0), _mm512_reduce_add_epi32(q1))
}

/// Blocks of 32 activations to 8 bits (`quantize_block` each, in one loop the compiler can
/// inline and pipeline): per block its scale `d`, the two 16-value halves' quant sums `s16`
/// and `bias = -128 * (s0 + s1)`.
///
/// # Safety
/// As `quantize_block`; `qs` holds `xs.len()` values, `d` and `bias` one per block, `s16` two.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn quantize_blocks(
    xs: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    s16: &mut [i32],
    bias: &mut [i32],
) {
    for (i, (x, q)) in xs.chunks_exact(32).zip(qs.chunks_exact_mut(32)).enumerate() {
        let (di, s0, s1) = quantize_block(x, q);
        (d[i], s16[2 * i], s16[2 * i + 1]) = (di, s0, s1);
        bias[i] = -128 * (s0 + s1);
    }
}
