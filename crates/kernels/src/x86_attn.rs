//! AVX-512 twins of `attn`'s and `dsa`'s cache kernels: register-blocked attention over
//! gathered latent rows (4 heads x 4 keys for scores, 4 heads x 64 dims for the weighted sum),
//! bf16 widening, and the lightning indexer over 8-bit keys with `vpdpbusd`.

// Every function here is an intrinsics body whose contract is stated once on its entry point.
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::rows::Q8_BLOCK;

/// `out[i] = f32(bf16 bits src[i])`.
///
/// # Safety
/// AVX-512F/BW must be available; `out.len() >= src.len()`.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn bf16_to_f32(src: &[u16], out: &mut [f32]) {
    let n = src.len();
    let (sp, op) = (src.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 16 <= n {
        let h = _mm256_loadu_si256(sp.add(i) as *const __m256i);
        let v = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
        _mm512_storeu_ps(op.add(i), _mm512_castsi512_ps(v));
        i += 16;
    }
    while i < n {
        *op.add(i) = f32::from_bits((*sp.add(i) as u32) << 16);
        i += 1;
    }
}

/// One `HB x KB` block of `attn::scores`: heads `h0..h0+HB`, keys `j0..j0+KB`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scores_block<const HB: usize, const KB: usize>(
    q: *const f32,
    keys: *const f32,
    w: usize,
    nk: usize,
    (h0, j0): (usize, usize),
    s: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); KB]; HB];
    let mut d = 0;
    while d < w {
        let mut kv = [_mm512_setzero_ps(); KB];
        for (b, k) in kv.iter_mut().enumerate() {
            *k = _mm512_loadu_ps(keys.add((j0 + b) * w + d));
        }
        for (a, row) in acc.iter_mut().enumerate() {
            let qv = _mm512_loadu_ps(q.add((h0 + a) * w + d));
            for (b, x) in row.iter_mut().enumerate() {
                *x = _mm512_fmadd_ps(qv, kv[b], *x);
            }
        }
        d += 16;
    }
    for (a, row) in acc.iter().enumerate() {
        for (b, x) in row.iter().enumerate() {
            *s.add((h0 + a) * nk + j0 + b) = _mm512_reduce_add_ps(*x);
        }
    }
}

/// `attn::scores` with `w % 16 == 0`.
///
/// # Safety
/// AVX-512F must be available; shapes as `attn::scores` checks them.
#[target_feature(enable = "avx512f")]
pub unsafe fn scores(q: &[f32], keys: &[f32], w: usize, nh: usize, s: &mut [f32]) {
    let nk = keys.len() / w;
    let (qp, kp, sp) = (q.as_ptr(), keys.as_ptr(), s.as_mut_ptr());
    let (hf, kf) = (nh / 4 * 4, nk / 4 * 4);
    for h0 in (0..hf).step_by(4) {
        for j0 in (0..kf).step_by(4) {
            scores_block::<4, 4>(qp, kp, w, nk, (h0, j0), sp);
        }
        for j0 in kf..nk {
            scores_block::<4, 1>(qp, kp, w, nk, (h0, j0), sp);
        }
    }
    for h0 in hf..nh {
        for j0 in (0..kf).step_by(4) {
            scores_block::<1, 4>(qp, kp, w, nk, (h0, j0), sp);
        }
        for j0 in kf..nk {
            scores_block::<1, 1>(qp, kp, w, nk, (h0, j0), sp);
        }
    }
}

/// One block of `attn::accumulate`: heads `h0..h0+HB`, dims `d0..d0+64`, over every key.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn accumulate_block<const HB: usize>(
    p: *const f32,
    keys: *const f32,
    (w, r, nh, nk): (usize, usize, usize, usize),
    (h0, d0): (usize, usize),
    o: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); 4]; HB];
    for (a, row) in acc.iter_mut().enumerate() {
        for (c, x) in row.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(o.add((h0 + a) * r + d0 + 16 * c));
        }
    }
    for j in 0..nk {
        let kr = keys.add(j * w + d0);
        let kv = [
            _mm512_loadu_ps(kr),
            _mm512_loadu_ps(kr.add(16)),
            _mm512_loadu_ps(kr.add(32)),
            _mm512_loadu_ps(kr.add(48)),
        ];
        for (a, row) in acc.iter_mut().enumerate() {
            let pa = _mm512_set1_ps(*p.add(j * nh + h0 + a));
            for (c, x) in row.iter_mut().enumerate() {
                *x = _mm512_fmadd_ps(pa, kv[c], *x);
            }
        }
    }
    for (a, row) in acc.iter().enumerate() {
        for (c, x) in row.iter().enumerate() {
            _mm512_storeu_ps(o.add((h0 + a) * r + d0 + 16 * c), *x);
        }
    }
}

/// `attn::accumulate` with `r % 64 == 0`.
///
/// # Safety
/// AVX-512F must be available; shapes as `attn::accumulate` checks them.
#[target_feature(enable = "avx512f")]
pub unsafe fn accumulate(p: &[f32], keys: &[f32], w: usize, r: usize, nh: usize, o: &mut [f32]) {
    let nk = keys.len() / w;
    let (pp, kp, op) = (p.as_ptr(), keys.as_ptr(), o.as_mut_ptr());
    let hf = nh / 4 * 4;
    for d0 in (0..r).step_by(64) {
        for h0 in (0..hf).step_by(4) {
            accumulate_block::<4>(pp, kp, (w, r, nh, nk), (h0, d0), op);
        }
        for h0 in hf..nh {
            accumulate_block::<1>(pp, kp, (w, r, nh, nk), (h0, d0), op);
        }
    }
}

/// `dsa::indexer_scores_q8` for whole blocks: `out[(t - t0)]` for `t0..t1`, `t0` a multiple of
/// `Q8_BLOCK`. `q8` holds each head's quantized query `[heads, d]` as i8, `qsum` its sums,
/// `qscale` the per-head factor `w_h`-free dequant scale times the softmax scale.
///
/// # Safety
/// AVX-512F/BW/VNNI must be available; `bytes` must hold the blocks up to `t1`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn indexer_scores_q8(
    q8: &[i8],
    qsum: &[i32],
    qscale: &[f32],
    w: &[f32],
    (bytes, kscale): (&[u8], &[f32]),
    d: usize,
    (t0, t1): (usize, usize),
    out: &mut [f32],
) {
    let heads = w.len();
    let groups = d / 4;
    let qp = q8.as_ptr() as *const i32;
    let mut t = t0;
    while t < t1 {
        let blk = bytes.as_ptr().add(t / Q8_BLOCK * Q8_BLOCK * d);
        let m = (t1 - t).min(Q8_BLOCK);
        let mask: __mmask16 = if m == 16 { 0xFFFF } else { (1u16 << m) - 1 };
        let ks = _mm512_maskz_loadu_ps(mask, kscale.as_ptr().add(t));
        let mut total = _mm512_setzero_ps();
        let mut h0 = 0;
        while h0 < heads {
            let hb = (heads - h0).min(8);
            let mut acc = [_mm512_setzero_si512(); 8];
            for g in 0..groups {
                let kv = _mm512_loadu_si512(blk.add(g * 64) as *const __m512i);
                for (a, x) in acc.iter_mut().enumerate().take(hb) {
                    let qg = _mm512_set1_epi32(*qp.add((h0 + a) * groups + g));
                    *x = _mm512_dpbusd_epi32(*x, kv, qg);
                }
            }
            for (a, x) in acc.iter().enumerate().take(hb) {
                let h = h0 + a;
                // dot(k + 128, q) - 128 * sum(q) = dot(k, q)
                let dot = _mm512_sub_epi32(*x, _mm512_set1_epi32(128 * qsum[h]));
                let v = _mm512_mul_ps(
                    _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(qscale[h])),
                    ks,
                );
                let v = _mm512_max_ps(v, _mm512_setzero_ps());
                total = _mm512_fmadd_ps(_mm512_set1_ps(w[h]), v, total);
            }
            h0 += hb;
        }
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(t - t0), mask, total);
        t += m;
    }
}
