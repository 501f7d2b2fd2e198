//! One unit of absorbed MLA attention: a query's heads against a chunk of its selected cache
//! rows. Per head it returns the chunk's softmax partials (running max `m`, sum of exponentials
//! `l`) and the unnormalized weighted sum of the rows' first `r` values, so chunks of one query
//! merge exactly afterwards.
//!
//! The AVX-512 twin reads the cache rows where they lie (f32, or bf16 with no widening pass),
//! prefetching the next rows while it scores the current ones. Scores come out `[keys, heads]`
//! with every head of a key in one vector: the query is packed transposed (`[w][16 heads]`)
//! and each key value is broadcast against it, so no horizontal sums are needed. Over bf16 rows
//! `vdpbf16ps` multiplies two dimensions at a time; the query is split into a bf16 high and low
//! part, so the scores keep f32 accuracy for the bf16 keys as stored.

use half::bf16;

use crate::qdot::Isa;
use crate::rows::{RowFormat, Rows};

/// Head lanes per vector.
pub const LANES: usize = 16;

/// One query's scaled `[q_lat | q_rope]` per head, `[nh, w]`, and its transposed packing for the
/// SIMD unit kernel over rows of one format.
pub struct PackedQuery {
    nh: usize,
    w: usize,
    q: Vec<f32>,
    packed: Packed,
}

enum Packed {
    /// No SIMD twin for this machine or shape: the reference runs.
    None,
    /// `[groups][w][16]`.
    F32(Vec<f32>),
    /// bf16 pairs of dimensions `(2p, 2p + 1)` as one u32, `[groups][w / 2][16]`, high and low.
    Bf16 { hi: Vec<u32>, lo: Vec<u32> },
}

impl PackedQuery {
    /// `q` `[nh, w]` packed for rows stored as `format` whose weighted sums take `r` values.
    pub fn new(q: &[f32], nh: usize, w: usize, r: usize, format: RowFormat) -> PackedQuery {
        assert!(
            w > 0 && r <= w && q.len() == nh * w,
            "attention query: {} values for {nh} heads of {w}, r {r}",
            q.len()
        );
        let groups = nh.div_ceil(LANES);
        // Value d of head lane l in group g (zero past the last head).
        let lane = |g: usize, l: usize, d: usize| {
            let h = g * LANES + l;
            if h < nh {
                q[h * w + d]
            } else {
                0.0
            }
        };
        let packed = match (simd(format, w, r), format) {
            (false, _) | (_, RowFormat::Q8) => Packed::None,
            (true, RowFormat::F32) => {
                let mut f = Vec::with_capacity(groups * w * LANES);
                for g in 0..groups {
                    for d in 0..w {
                        f.extend((0..LANES).map(|l| lane(g, l, d)));
                    }
                }
                Packed::F32(f)
            }
            (true, RowFormat::Bf16) => {
                let n = groups * w / 2 * LANES;
                let (mut hi, mut lo) = (Vec::with_capacity(n), Vec::with_capacity(n));
                // v = high + low, both bf16 (round to nearest even).
                let split = |v: f32| {
                    let h = bf16::from_f32(v);
                    (
                        h.to_bits() as u32,
                        bf16::from_f32(v - h.to_f32()).to_bits() as u32,
                    )
                };
                for g in 0..groups {
                    for p in 0..w / 2 {
                        for l in 0..LANES {
                            let (h0, l0) = split(lane(g, l, 2 * p));
                            let (h1, l1) = split(lane(g, l, 2 * p + 1));
                            hi.push(h0 | h1 << 16);
                            lo.push(l0 | l1 << 16);
                        }
                    }
                }
                Packed::Bf16 { hi, lo }
            }
        };
        PackedQuery {
            nh,
            w,
            q: q.to_vec(),
            packed,
        }
    }
}

/// Whether the SIMD twin runs for rows of `format`, width `w`, sums over `r` values.
fn simd(format: RowFormat, w: usize, r: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let ok = Isa::detect() == Isa::Avx512Vnni && r.is_multiple_of(32);
        match format {
            RowFormat::F32 => ok,
            RowFormat::Bf16 => ok && w.is_multiple_of(2) && crate::x86_attn::has_bf16(),
            RowFormat::Q8 => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (format, w, r, Isa::detect());
        false
    }
}

std::thread_local! {
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The unit of query `q` over cache rows `ts` (non-empty) of `rows`: `out[2h], out[2h + 1]` =
/// head h's max score `m` and `l = sum_t exp(s_t - m)`; `out[2 nh + h r..]` = `sum_t exp(s_t -
/// m) rows[t][..r]`, for scores `s_t = q[h] . rows[t]`.
pub fn unit(q: &PackedQuery, rows: &Rows, ts: &[usize], r: usize, out: &mut [f32]) {
    check(q, rows, ts, r, out.len());
    #[cfg(target_arch = "x86_64")]
    {
        let (nh, w) = (q.nh, q.w);
        let done = SCORES.with_borrow_mut(|s| {
            s.resize(ts.len() * nh.div_ceil(LANES) * LANES, 0.0);
            match (&q.packed, rows.as_f32(), rows.as_bf16()) {
                // SAFETY: the packing exists only where `simd` found AVX-512 (and BF16 for
                // bf16 rows) and the widths it needs; `check` bounds every row index.
                (Packed::F32(qf), Some(v), _) => unsafe {
                    crate::x86_attn::unit_f32(qf, (nh, w, r), v, ts, s, out);
                    true
                },
                (Packed::Bf16 { hi, lo }, _, Some(v)) => unsafe {
                    crate::x86_attn::unit_bf16((hi, lo), (nh, w, r), v, ts, s, out);
                    true
                },
                _ => false,
            }
        });
        if done {
            return;
        }
    }
    unit_ref(&q.q, q.nh, rows, ts, r, out);
}

/// Reference twin of `unit` (`q` `[nh, w]` unpacked).
pub fn unit_ref(q: &[f32], nh: usize, rows: &Rows, ts: &[usize], r: usize, out: &mut [f32]) {
    let w = rows.width();
    let nk = ts.len();
    let mut keys = vec![0f32; nk * w];
    for (&t, k) in ts.iter().zip(keys.chunks_exact_mut(w)) {
        rows.row_into(t, k);
    }
    let (ml, o) = out.split_at_mut(2 * nh);
    for h in 0..nh {
        let qh = &q[h * w..(h + 1) * w];
        let s: Vec<f32> = keys
            .chunks_exact(w)
            .map(|k| crate::cpu::dot(qh, k))
            .collect();
        let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let oh = &mut o[h * r..(h + 1) * r];
        oh.fill(0.0);
        let mut l = 0f32;
        for (sj, k) in s.iter().zip(keys.chunks_exact(w)) {
            let e = (sj - m).exp();
            l += e;
            for (od, kd) in oh.iter_mut().zip(&k[..r]) {
                *od += e * kd;
            }
        }
        (ml[2 * h], ml[2 * h + 1]) = (m, l);
    }
}

fn check(q: &PackedQuery, rows: &Rows, ts: &[usize], r: usize, out: usize) {
    let (nh, w) = (q.nh, q.w);
    assert!(
        rows.width() == w && !ts.is_empty() && out == nh * (r + 2),
        "attention unit: query of {nh} heads x {w}, rows of width {}, {} keys, r {r}, out {out}",
        rows.width(),
        ts.len()
    );
    if let Some(&t) = ts.iter().max() {
        assert!(t < rows.len(), "attention unit: row {t} of {}", rows.len());
    }
}
