//! One unit of absorbed MLA attention: a query's heads against a chunk of its selected cache
//! rows. Per head it returns the chunk's softmax partials (running max `m`, sum of exponentials
//! `l`) and the unnormalized weighted sum of the rows' first `r` values, so chunks of one query
//! merge exactly afterwards.
//!
//! The AVX-512 twin reads the cache rows where they lie (f32, or bf16 widened a block of keys
//! at a time in L1), prefetching the next rows while it scores the current ones. Scores come
//! out `[keys, heads]` with every head of a key in one vector: the query is packed transposed
//! (`[w][16 heads]`) and each key value is broadcast against it, so no horizontal sums are
//! needed. (`vdpbf16ps` over the bf16 rows was tried: on Zen 5 its one pipe is shared by both
//! SMT threads, so two threads ran no faster than one.)

use crate::qdot::Isa;
use crate::rows::{RowFormat, Rows};

/// Head lanes per vector.
pub const LANES: usize = 16;

/// One query's scaled `[q_lat | q_rope]` per head, `[nh, w]`, and its transposed packing for the
/// SIMD unit kernel over rows of one format.
pub struct PackedQuery {
    nh: usize,
    w: usize,
    /// `[groups][w][16]` (`heads_in_lanes`) when `lanes`, for the SIMD twin; else `[nh, w]` as
    /// given, for the reference.
    q: Vec<f32>,
    lanes: bool,
}

impl PackedQuery {
    /// `q` `[nh, w]` packed for rows stored as `format` whose weighted sums take `r` values.
    pub fn new(q: &[f32], nh: usize, w: usize, r: usize, format: RowFormat) -> PackedQuery {
        assert!(
            w > 0 && r <= w && q.len() == nh * w,
            "attention query: {} values for {nh} heads of {w}, r {r}",
            q.len()
        );
        let lanes = simd(format, r);
        PackedQuery {
            nh,
            w,
            q: if lanes {
                heads_in_lanes(q, nh, w)
            } else {
                q.to_vec()
            },
            lanes,
        }
    }
}

/// `q` `[nh, w]` transposed into groups of 16 head lanes, `[ceil(nh / 16)][w][16]`, zero past
/// the last head: one load then holds value `d` of every head of a group.
pub fn heads_in_lanes(q: &[f32], nh: usize, w: usize) -> Vec<f32> {
    let mut f = vec![0f32; nh.div_ceil(LANES) * w * LANES];
    // Written in order, one line of 16 lanes at a time, from 16 sequential row streams.
    for (g, fg) in f.chunks_exact_mut(w * LANES).enumerate() {
        let heads = (g * LANES..nh.min((g + 1) * LANES)).enumerate();
        for (d, line) in fg.chunks_exact_mut(LANES).enumerate() {
            for (l, h) in heads.clone() {
                line[l] = q[h * w + d];
            }
        }
    }
    f
}

/// Whether the SIMD twin runs for rows of `format` whose sums take `r` values.
fn simd(format: RowFormat, r: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Isa::detect() == Isa::Avx512Vnni && r.is_multiple_of(32) && format != RowFormat::Q8
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (format, r, Isa::detect());
        false
    }
}

std::thread_local! {
    /// Per thread: the unit's scores `[keys, heads]` and a block of widened keys.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The unit of query `q` over cache rows `ts` (non-empty) of `rows`: `out[2h], out[2h + 1]` =
/// head h's max score `m` and `l = sum_t exp(s_t - m)`; `out[2 nh + h r..]` = `sum_t exp(s_t -
/// m) rows[t][..r]`, for scores `s_t = q[h] . rows[t]`.
pub fn unit(q: &PackedQuery, rows: &Rows, ts: &[usize], r: usize, out: &mut [f32]) {
    check(q, rows, ts, r, out.len());
    #[cfg(target_arch = "x86_64")]
    if q.lanes {
        let qf = &q.q;
        let dims = (q.nh, q.w, r);
        SCRATCH.with_borrow_mut(|(s, block)| {
            s.resize(ts.len() * q.nh.div_ceil(LANES) * LANES, 0.0);
            block.resize(8 * q.w, 0.0);
            let scratch = (&mut s[..], &mut block[..]);
            // SAFETY: the packing exists only where `simd` found AVX-512 and `r % 32 == 0`;
            // `check` bounds every row index; the scratch is sized as the kernel needs.
            unsafe {
                match (rows.as_f32(), rows.as_bf16()) {
                    (Some(v), _) => crate::x86_attn::unit::<false>(
                        qf,
                        dims,
                        v.as_ptr() as *const u8,
                        ts,
                        scratch,
                        out,
                    ),
                    (_, Some(v)) => crate::x86_attn::unit::<true>(
                        qf,
                        dims,
                        v.as_ptr() as *const u8,
                        ts,
                        scratch,
                        out,
                    ),
                    _ => unreachable!("packed only for f32 and bf16 rows"),
                }
            }
        });
        return;
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
