//! DeepSeek Sparse Attention's lightning indexer: per query, score every causal key in one pass
//! (`sum_h w_h * relu(scale * q_h . k_t)`, no `[heads, keys]` intermediate) and select the
//! `index_topk` best in time linear in the number of keys (a selection, not a sort).

use std::cmp::Ordering;

use crate::fvec;
use crate::qdot::Isa;

/// Reference: scores of one query over `keys` `[T, d]`, keys after `last` masked to -inf.
/// `q` is `[heads, d]`, `w` the head weights `[heads]`.
pub fn indexer_scores_ref(
    q: &[f32],
    w: &[f32],
    keys: &[f32],
    d: usize,
    scale: f32,
    last: usize,
) -> Vec<f32> {
    keys.chunks_exact(d)
        .enumerate()
        .map(|(t, k)| {
            if t > last {
                return f32::NEG_INFINITY;
            }
            w.iter()
                .zip(q.chunks_exact(d))
                .map(|(wh, qh)| wh * (crate::cpu::dot(qh, k) * scale).max(0.0))
                .sum()
        })
        .collect()
}

/// `indexer_scores_ref` for keys `t0..t1` only, into `out[..t1 - t0]`: AVX-512 (four keys per
/// pass) where detected and `d` is a multiple of 16, else the plain loop.
pub fn indexer_scores(
    q: &[f32],
    w: &[f32],
    keys: &[f32],
    d: usize,
    scale: f32,
    last: usize,
    (t0, t1): (usize, usize),
    out: &mut [f32],
) {
    assert!(
        q.len() == w.len() * d && out.len() == t1 - t0 && keys.len() >= t1 * d,
        "indexer scores: q {} for {} heads of {d}, keys {}, range {t0}..{t1}, out {}",
        q.len(),
        w.len(),
        keys.len(),
        out.len()
    );
    // Causal keys are computed; the rest are masked.
    let c1 = t1.min(last + 1).max(t0);
    out[c1 - t0..].fill(f32::NEG_INFINITY);
    let out = &mut out[..c1 - t0];
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512Vnni && d.is_multiple_of(16) {
        // SAFETY: AVX-512F was detected; shapes checked above.
        unsafe { crate::x86::indexer_scores_f32(q, w, keys, d, scale, (t0, c1), out) };
        return;
    }
    for (o, t) in out.iter_mut().zip(t0..c1) {
        let k = &keys[t * d..(t + 1) * d];
        let mut s = 0f32;
        for (wh, qh) in w.iter().zip(q.chunks_exact(d)) {
            s += wh * (fvec::dot(qh, k) * scale).max(0.0);
        }
        *o = s;
    }
}

/// The order `cpu::topk` ranks by: larger first, NaN last, equal values lower index first.
fn rank(x: &[f32], a: usize, b: usize) -> Ordering {
    x[b].partial_cmp(&x[a])
        .unwrap_or_else(|| x[a].is_nan().cmp(&x[b].is_nan()))
        .then(a.cmp(&b))
}

/// The positions of the `k` largest values (the set `cpu::topk` returns), ascending; linear in
/// `x.len()`.
pub fn topk_set(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    if k == 0 {
        return Vec::new();
    }
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, |&a, &b| rank(x, a, b));
        idx.truncate(k);
        idx.sort_unstable();
    }
    idx
}
