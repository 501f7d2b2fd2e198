//! Attention over gathered cache rows, the two halves of one (query, key chunk) unit of absorbed
//! MLA: `scores` (every head against every key, `[heads, keys]`) and `accumulate` (the
//! probability-weighted sum of the keys' first `r` values per head). AVX-512 register-blocked
//! where detected and the widths allow, else the plain reference twins.

use crate::qdot::Isa;

/// `s[h * nk + j] = q[h] . keys[j]` for `q` `[nh, w]` and `keys` `[nk, w]`.
pub fn scores(q: &[f32], keys: &[f32], w: usize, nh: usize, s: &mut [f32]) {
    check(q, keys, w, nh, s.len(), "scores");
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512Vnni && w.is_multiple_of(16) {
        // SAFETY: AVX-512F was detected; shapes checked.
        unsafe { crate::x86_attn::scores(q, keys, w, nh, s) };
        return;
    }
    scores_ref(q, keys, w, nh, s);
}

/// Reference twin of `scores`.
pub fn scores_ref(q: &[f32], keys: &[f32], w: usize, nh: usize, s: &mut [f32]) {
    let nk = check(q, keys, w, nh, s.len(), "scores");
    for h in 0..nh {
        for j in 0..nk {
            s[h * nk + j] = crate::cpu::dot(&q[h * w..(h + 1) * w], &keys[j * w..(j + 1) * w]);
        }
    }
}

/// `o[h, ..r] += sum_j p[j * nh + h] * keys[j, ..r]` for `p` `[nk, nh]`, `keys` `[nk, w]` and
/// `o` `[nh, r]`.
pub fn accumulate(p: &[f32], keys: &[f32], w: usize, r: usize, nh: usize, o: &mut [f32]) {
    check_acc(p, keys, w, r, nh, o.len());
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512Vnni && r.is_multiple_of(64) {
        // SAFETY: AVX-512F was detected; shapes checked.
        unsafe { crate::x86_attn::accumulate(p, keys, w, r, nh, o) };
        return;
    }
    accumulate_ref(p, keys, w, r, nh, o);
}

/// Reference twin of `accumulate`.
pub fn accumulate_ref(p: &[f32], keys: &[f32], w: usize, r: usize, nh: usize, o: &mut [f32]) {
    let nk = check_acc(p, keys, w, r, nh, o.len());
    for j in 0..nk {
        for h in 0..nh {
            let pj = p[j * nh + h];
            for (od, kd) in o[h * r..(h + 1) * r]
                .iter_mut()
                .zip(&keys[j * w..j * w + r])
            {
                *od += pj * kd;
            }
        }
    }
}

fn check(q: &[f32], keys: &[f32], w: usize, nh: usize, s: usize, what: &str) -> usize {
    assert!(
        w > 0 && q.len() == nh * w && keys.len().is_multiple_of(w) && s == nh * keys.len() / w,
        "attention {what}: q {} for {nh} heads of {w}, keys {}, out {s}",
        q.len(),
        keys.len()
    );
    keys.len() / w
}

fn check_acc(p: &[f32], keys: &[f32], w: usize, r: usize, nh: usize, o: usize) -> usize {
    assert!(
        w > 0
            && r <= w
            && keys.len().is_multiple_of(w)
            && p.len() == nh * keys.len() / w
            && o == nh * r,
        "attention accumulate: p {} for {nh} heads, keys {} of width {w}, r {r}, out {o}",
        p.len(),
        keys.len()
    );
    keys.len() / w
}
