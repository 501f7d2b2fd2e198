//! AVX-512 twins of `attn`'s and `dsa`'s cache kernels: one attention unit over the cache rows
//! where they lie (f32, or bf16 widened in L1; scores `[keys, 16 heads]` by broadcasting each
//! key value against the transposed query, then a vector softmax and the weighted sum of the
//! rows, 16 heads x 16 values per block, or 8/4/1 heads x 32 for the rest), bf16 widening, and
//! the lightning indexer's scan over f32/bf16 keys (heads in lanes) and over 8-bit keys with
//! `vpdpbusd`.

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

/// `exp(x)` per lane: Cephes' range reduction by `ln 2` and degree-6 polynomial, scaled by
/// `2^n` with `vscalefps`. Inputs are clamped to [-103.9, 88.7] (the f32 range of the result).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn exp_ps(x: __m512) -> __m512 {
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-103.9)),
        _mm512_set1_ps(88.7),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let p = _mm512_fmadd_ps(
        p,
        _mm512_mul_ps(r, r),
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    _mm512_scalef_ps(p, n)
}

/// `out[i] = silu(g[i]) * u[i] = g[i] u[i] / (1 + exp(-g[i]))`, 16 lanes at a time (masked tail).
///
/// # Safety
/// AVX-512F must be available; `g`, `u` and `out` have the same length.
#[target_feature(enable = "avx512f")]
pub unsafe fn swiglu(g: &[f32], u: &[f32], out: &mut [f32]) {
    let n = g.len();
    let (gp, up, op) = (g.as_ptr(), u.as_ptr(), out.as_mut_ptr());
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m: __mmask16 = if n - i >= 16 {
            0xFFFF
        } else {
            (1u16 << (n - i)) - 1
        };
        let gv = _mm512_maskz_loadu_ps(m, gp.add(i));
        let e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        let num = _mm512_mul_ps(gv, _mm512_maskz_loadu_ps(m, up.add(i)));
        _mm512_mask_storeu_ps(op.add(i), m, _mm512_div_ps(num, _mm512_add_ps(one, e)));
        i += 16;
    }
}

/// `x[i] = exp(x[i] - m)` in place; returns the sum of the new values (16 lanes at a time,
/// masked tail, summed lane-wise then across lanes).
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
pub unsafe fn exp_sub(x: &mut [f32], m: f32) -> f32 {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mv = _mm512_set1_ps(m);
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let k: __mmask16 = if n - i >= 16 {
            0xFFFF
        } else {
            (1u16 << (n - i)) - 1
        };
        let e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), mv));
        _mm512_mask_storeu_ps(p.add(i), k, e);
        acc = _mm512_mask_add_ps(acc, k, acc, e);
        i += 16;
    }
    _mm512_reduce_add_ps(acc)
}

/// Prefetch every cache line of rows `ts` (`row_bytes` each) into L1.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn prefetch_rows(base: *const u8, ts: &[usize], row_bytes: usize) {
    for &t in ts {
        let p = base.wrapping_add(t * row_bytes);
        let mut o = 0;
        while o < row_bytes {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(o) as *const i8);
            o += 64;
        }
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(row_bytes - 1) as *const i8);
    }
}

/// Keys per scores block.
const KB: usize = 8;

/// Scores of `J` f32 keys against one group of 16 heads (`qf` `[w][16]`), into
/// `s[j * hp..][..16]`: each key value is broadcast to every head lane, so the `J` chains need
/// no horizontal sum. While the keys are read, the `next` rows (`eb` bytes per value) are
/// prefetched at the same pace, one line per 64 bytes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scores<const J: usize>(
    qf: *const f32,
    w: usize,
    keys: [*const f32; J],
    (next, eb): (&[*const u8], usize),
    s: *mut f32,
    hp: usize,
) {
    let mut acc = [_mm512_setzero_ps(); J];
    let line = 64 / eb;
    for d0 in (0..w).step_by(line) {
        for n in next {
            _mm_prefetch::<_MM_HINT_T0>(n.wrapping_add(d0 * eb) as *const i8);
        }
        for d in d0..(d0 + line).min(w) {
            let qv = _mm512_loadu_ps(qf.add(d * 16));
            for j in 0..J {
                acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(*keys[j].add(d)), qv, acc[j]);
            }
        }
    }
    for j in 0..J {
        _mm512_storeu_ps(s.add(j * hp), acc[j]);
    }
}

/// Values `0..16` of a row at `p` as one f32 vector (bf16 widened).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load16<const BF16: bool>(p: *const u8) -> __m512 {
    if BF16 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
    } else {
        _mm512_loadu_ps(p as *const f32)
    }
}

/// Values `0..32` of a row at `p` as two f32 vectors.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load32<const BF16: bool>(p: *const u8) -> (__m512, __m512) {
    let half = if BF16 { 32 } else { 64 };
    (load16::<BF16>(p), load16::<BF16>(p.add(half)))
}

/// `o[h][d0..d0 + 32] = sum_j e[j][h] row_j[d0..d0 + 32]` for heads `h0..h0 + HB`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn accumulate<const BF16: bool, const HB: usize>(
    (e, hp): (*const f32, usize),
    (base, row_bytes, ts): (*const u8, usize, &[usize]),
    (h0, d0, r): (usize, usize, usize),
    o: *mut f32,
) {
    let off = d0 * if BF16 { 2 } else { 4 };
    let mut acc = [[_mm512_setzero_ps(); 2]; HB];
    for (j, &t) in ts.iter().enumerate() {
        let (v0, v1) = load32::<BF16>(base.add(t * row_bytes + off));
        for (a, x) in acc.iter_mut().enumerate() {
            let pa = _mm512_set1_ps(*e.add(j * hp + h0 + a));
            x[0] = _mm512_fmadd_ps(pa, v0, x[0]);
            x[1] = _mm512_fmadd_ps(pa, v1, x[1]);
        }
    }
    for (a, x) in acc.iter().enumerate() {
        _mm512_storeu_ps(o.add((h0 + a) * r + d0), x[0]);
        _mm512_storeu_ps(o.add((h0 + a) * r + d0 + 16), x[1]);
    }
}

/// `o[h][d0..d0 + 16] = sum_j e[j][h] row_j[d0..d0 + 16]` for the 16 heads `h0..h0 + 16`:
/// one row load (and widening) per key serves 16 FMAs, against two loads per 16 in
/// `accumulate`'s 8 heads x 32 values.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn accumulate16<const BF16: bool>(
    (e, hp): (*const f32, usize),
    (base, row_bytes, ts): (*const u8, usize, &[usize]),
    (h0, d0, r): (usize, usize, usize),
    o: *mut f32,
) {
    let off = d0 * if BF16 { 2 } else { 4 };
    let mut acc = [_mm512_setzero_ps(); 16];
    for (j, &t) in ts.iter().enumerate() {
        let v = load16::<BF16>(base.add(t * row_bytes + off));
        let ej = e.add(j * hp + h0);
        for (a, x) in acc.iter_mut().enumerate() {
            *x = _mm512_fmadd_ps(_mm512_set1_ps(*ej.add(a)), v, *x);
        }
    }
    for (a, x) in acc.iter().enumerate() {
        _mm512_storeu_ps(o.add((h0 + a) * r + d0), *x);
    }
}

/// The unit's tail after scoring: softmax partials per head over `s` `[nk][hp]` (which becomes
/// the exponentials), then the weighted sums of the rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn finish<const BF16: bool>(
    s: &mut [f32],
    (nh, hp, r): (usize, usize, usize),
    (base, row_bytes, ts): (*const u8, usize, &[usize]),
    out: &mut [f32],
) {
    let nk = ts.len();
    let sp = s.as_mut_ptr();
    let (ml, o) = out.split_at_mut(2 * nh);
    for g in 0..hp / 16 {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for j in 0..nk {
            m = _mm512_max_ps(m, _mm512_loadu_ps(sp.add(j * hp + g * 16)));
        }
        let mut l = _mm512_setzero_ps();
        for j in 0..nk {
            let x = sp.add(j * hp + g * 16);
            let e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(x), m));
            _mm512_storeu_ps(x, e);
            l = _mm512_add_ps(l, e);
        }
        let (mut mv, mut lv) = ([0f32; 16], [0f32; 16]);
        _mm512_storeu_ps(mv.as_mut_ptr(), m);
        _mm512_storeu_ps(lv.as_mut_ptr(), l);
        for x in 0..16.min(nh - g * 16) {
            let h = g * 16 + x;
            (ml[2 * h], ml[2 * h + 1]) = (mv[x], lv[x]);
        }
    }
    let op = o.as_mut_ptr();
    let rows = (base, row_bytes, ts);
    // Whole groups of 16 heads 16 values at a time, the rest 8, 4 or 1 heads x 32 values.
    let h16 = nh / 16 * 16;
    for h0 in (0..h16).step_by(16) {
        for d0 in (0..r).step_by(16) {
            accumulate16::<BF16>((sp, hp), rows, (h0, d0, r), op);
        }
    }
    for d0 in (0..r).step_by(32) {
        let mut h0 = h16;
        while h0 + 8 <= nh {
            accumulate::<BF16, 8>((sp, hp), rows, (h0, d0, r), op);
            h0 += 8;
        }
        while h0 + 4 <= nh {
            accumulate::<BF16, 4>((sp, hp), rows, (h0, d0, r), op);
            h0 += 4;
        }
        while h0 < nh {
            accumulate::<BF16, 1>((sp, hp), rows, (h0, d0, r), op);
            h0 += 1;
        }
    }
}

/// `attn::unit` over rows `[T, w]` (f32, or bf16 bits when `BF16`) with the query packed
/// `[groups][w][16]`. bf16 keys are widened a block at a time into `block` (in L1) for the
/// scores; the weighted sums widen as they read.
///
/// # Safety
/// AVX-512F/BW must be available; `r % 32 == 0`, every `ts` a row of `rows` (`T * w` values
/// of `eb` bytes at `base`), `s.len() >= ts.len() * 16 * ceil(nh / 16)`, `out.len() == nh *
/// (r + 2)`.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn unit<const BF16: bool>(
    qf: &[f32],
    (nh, w, r): (usize, usize, usize),
    base: *const u8,
    ts: &[usize],
    (s, block): (&mut [f32], &mut [f32]),
    out: &mut [f32],
) {
    let (groups, nk) = (nh.div_ceil(16), ts.len());
    let hp = groups * 16;
    let eb = if BF16 { 2 } else { 4 };
    let row_bytes = eb * w;
    let (sp, bp) = (s.as_mut_ptr(), block.as_mut_ptr());
    let q = |g: usize| qf.as_ptr().add(g * w * 16);
    let row = |t: usize| base.wrapping_add(t * row_bytes);
    prefetch_rows(base, &ts[..KB.min(nk)], row_bytes);
    let mut j0 = 0;
    while j0 < nk {
        let jn = (nk - j0).min(KB);
        if BF16 {
            for b in 0..jn {
                let src = std::slice::from_raw_parts(row(ts[j0 + b]) as *const u16, w);
                bf16_to_f32(src, std::slice::from_raw_parts_mut(bp.add(b * w), w));
            }
        }
        // Key b of the block: the stored row (f32) or its widened copy.
        let keys: [*const f32; KB] = std::array::from_fn(|b| {
            if BF16 {
                bp.wrapping_add(b.min(jn - 1) * w) as *const f32
            } else {
                row(ts[j0 + b.min(jn - 1)]) as *const f32
            }
        });
        let nts = &ts[(j0 + KB).min(nk)..(j0 + 2 * KB).min(nk)];
        let next: [*const u8; KB] = std::array::from_fn(|b| row(nts.get(b).copied().unwrap_or(0)));
        let next = &next[..nts.len()];
        if jn == KB {
            for g in 0..groups {
                let next = if g == 0 { next } else { &[] };
                scores::<KB>(q(g), w, keys, (next, eb), sp.add(j0 * hp + g * 16), hp);
            }
        } else {
            for (b, &k) in keys.iter().enumerate().take(jn) {
                for g in 0..groups {
                    scores::<1>(q(g), w, [k], (&[], eb), sp.add((j0 + b) * hp + g * 16), hp);
                }
            }
        }
        j0 += jn;
    }
    finish::<BF16>(s, (nh, hp, r), (base, row_bytes, ts), out);
}

/// Lightning-indexer scores of keys `t0..t1` for one query: per key
/// `sum_h w_h * relu(scale * q_h . k_t)`, over f32 rows or, with `BF16`, bf16 rows (their
/// bits) read where they lie, each block of eight keys widened into L1 just before it is
/// scored. Eight keys at a time, every head of a key in one vector: the query comes packed
/// in lanes (`qt` `[groups][d][16]`, `wv` the head weights per group, as `dsa::IndexQuery`
/// packs them) and each key value is broadcast against it, so a key needs one horizontal sum,
/// not one per head.
///
/// # Safety
/// AVX-512F/BW must be available; `base` holds rows `t0..t1` of width `d`,
/// `out.len() == t1 - t0`, `qt.len() == wv.len() * d` with `wv.len() >= heads` a multiple of 16.
#[target_feature(enable = "avx512f,avx512bw,fma,avx2")]
pub unsafe fn indexer_scores_packed<const BF16: bool>(
    (qt, wv): (&[f32], &[f32]),
    (heads, d): (usize, usize),
    base: *const u8,
    scale: f32,
    (t0, t1): (usize, usize),
    out: &mut [f32],
) {
    debug_assert!(out.len() == t1 - t0 && qt.len() == wv.len() * d && wv.len() >= heads);
    const J: usize = 8;
    let groups = wv.len() / 16;
    let mut blk = vec![0f32; if BF16 { J * d } else { 0 }];
    let qp = qt.as_ptr();
    let (sv, zero) = (_mm512_set1_ps(scale), _mm512_setzero_ps());
    let mut t = t0;
    while t < t1 {
        let m = (t1 - t).min(J);
        // Past the last key the block repeats it (computed, not stored).
        let rows: [*const f32; J] = if BF16 {
            for i in 0..m {
                let src = std::slice::from_raw_parts(base.add((t + i) * d * 2) as *const u16, d);
                bf16_to_f32(src, &mut blk[i * d..(i + 1) * d]);
            }
            std::array::from_fn(|i| blk.as_ptr().add(i.min(m - 1) * d))
        } else {
            std::array::from_fn(|i| (base as *const f32).add((t + i.min(m - 1)) * d))
        };
        let mut tot = [zero; J];
        for g in 0..groups {
            let qg = qp.add(g * d * 16);
            let mut acc = [zero; J];
            for j in 0..d {
                let qv = _mm512_loadu_ps(qg.add(j * 16));
                for i in 0..J {
                    acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(*rows[i].add(j)), qv, acc[i]);
                }
            }
            let wg = _mm512_loadu_ps(wv.as_ptr().add(g * 16));
            for i in 0..J {
                let relu = _mm512_max_ps(_mm512_mul_ps(acc[i], sv), zero);
                tot[i] = _mm512_fmadd_ps(wg, relu, tot[i]);
            }
        }
        for i in 0..m {
            out[t - t0 + i] = _mm512_reduce_add_ps(tot[i]);
        }
        t += m;
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
