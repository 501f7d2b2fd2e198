//! DeepSeek Sparse Attention's lightning indexer: per query, score every causal key in one pass
//! (`sum_h w_h * relu(scale * q_h . k_t)`, no `[heads, keys]` intermediate) and select the
//! `index_topk` best in time linear in the number of keys (a selection, not a sort).

use std::sync::OnceLock;

use crate::fvec;
use crate::pool;
use crate::qdot::Isa;
use crate::rows::{RowFormat, Rows};

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

/// `indexer_scores_ref` for keys `t0..t1` only, into `out[..t1 - t0]`: AVX-512 (eight keys per
/// pass, the heads of a key in one vector) where detected, else the plain loop.
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
    if let Prep::Lanes(qt, wv) = &IndexQuery::new(q, w, d, RowFormat::F32).prep {
        // SAFETY: the lane packing exists only where AVX-512 was detected; shapes checked
        // above.
        unsafe {
            crate::x86_attn::indexer_scores_packed::<false>(
                (qt, wv),
                (w.len(), d),
                keys.as_ptr() as *const u8,
                scale,
                (t0, c1),
                out,
            )
        };
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

/// The positions of the `k` largest values (the set `cpu::topk` returns), ascending; linear in
/// `x.len()`. Values map to order-preserving integer keys; a histogram of the keys' top 12
/// bits finds the bucket that holds the `k`-th largest; a second pass keeps the positions in
/// buckets above it and gathers that bucket's keys, among which a selection finds the
/// threshold: values above it are kept, and the lowest-indexed values equal to it. A long `x`
/// (a decode step's scores over a long context) is split in parts that run both passes on the
/// pool; any split gives the same set.
pub fn topk_set(x: &[f32], k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    if k >= x.len() {
        return (0..x.len()).collect();
    }
    if x.len() <= TOPK_SMALL {
        return topk_small(x, k);
    }
    let parts = x.len().div_ceil(TOPK_PART);
    let part = |p: usize| p * TOPK_PART..((p + 1) * TOPK_PART).min(x.len());
    let hists: Vec<OnceLock<Vec<u32>>> = (0..parts).map(|_| OnceLock::new()).collect();
    pool::run(parts, &|p| {
        let mut hist = vec![0u32; 1 << TOPK_BITS];
        for &v in &x[part(p)] {
            hist[bucket(topk_key(v))] += 1;
        }
        let _ = hists[p].set(hist);
    });
    let mut hist = vec![0u32; 1 << TOPK_BITS];
    for h in &hists {
        for (a, b) in hist.iter_mut().zip(h.get().expect("every part counted")) {
            *a += b;
        }
    }
    // Walk down from the top bucket: `above` values lie in buckets above `b`, and bucket `b`
    // reaches the k-th (the counts sum to `x.len() > k`, so this stops at bucket 0 latest).
    let (mut b, mut above) = ((1 << TOPK_BITS) - 1, 0);
    while above + (hist[b] as usize) < k {
        above += hist[b] as usize;
        b -= 1;
    }
    // Per part, ascending: the positions above bucket b, and bucket b's (position, key).
    let gathered: Vec<OnceLock<Gathered>> = (0..parts).map(|_| OnceLock::new()).collect();
    pool::run(parts, &|p| {
        let (mut sure, mut cand) = (Vec::new(), Vec::new());
        for i in part(p) {
            let u = topk_key(x[i]);
            match bucket(u).cmp(&b) {
                std::cmp::Ordering::Greater => sure.push(i),
                std::cmp::Ordering::Equal => cand.push((i, u)),
                std::cmp::Ordering::Less => {}
            }
        }
        let _ = gathered[p].set((sure, cand));
    });
    let gathered: Vec<_> = gathered
        .into_iter()
        .map(|g| g.into_inner().expect("every part gathered"))
        .collect();
    let mut keys: Vec<u32> = gathered
        .iter()
        .flat_map(|(_, c)| c.iter().map(|c| c.1))
        .collect();
    let th = *keys
        .select_nth_unstable_by(k - above - 1, |a, b| b.cmp(a))
        .1;
    let mut ties = k - above - keys.iter().filter(|&&u| u > th).count();
    let mut out = Vec::with_capacity(k);
    for (sure, cand) in &gathered {
        // Merge the part's two ascending lists, keeping the bucket's values above th and the
        // first `ties` equal to it.
        let mut s = sure.iter().peekable();
        for &(i, u) in cand {
            while let Some(j) = s.next_if(|&&j| j < i) {
                out.push(*j);
            }
            if u > th || (u == th && ties > 0) {
                if u == th {
                    ties -= 1;
                }
                out.push(i);
            }
        }
        out.extend(s);
    }
    debug_assert_eq!(out.len(), k);
    out
}

/// `topk_set` for a short `x` (a decode step's scores over a short context): the threshold
/// key by selection on a copy of the keys, then one ascending pass. The histogram's 4,096
/// buckets cost more than the whole selection for a few hundred values.
fn topk_small(x: &[f32], k: usize) -> Vec<usize> {
    let keys: Vec<u32> = x.iter().map(|&v| topk_key(v)).collect();
    let mut sel = keys.clone();
    let th = *sel.select_nth_unstable_by(k - 1, |a, b| b.cmp(a)).1;
    let mut ties = k - keys.iter().filter(|&&u| u > th).count();
    let mut out = Vec::with_capacity(k);
    for (i, &u) in keys.iter().enumerate() {
        if u > th || (u == th && ties > 0) {
            if u == th {
                ties -= 1;
            }
            out.push(i);
        }
    }
    debug_assert_eq!(out.len(), k);
    out
}

/// Values up to which `topk_set` selects directly instead of by histogram (GLM-5's
/// `index_topk` of 2048 only selects from more keys than this, so its steps keep the
/// histogram; small models with a short `index_topk` select directly).
const TOPK_SMALL: usize = 2048;

/// One part's positions above the threshold bucket, and the bucket's (position, key).
type Gathered = (Vec<usize>, Vec<(usize, u32)>);

/// Values per part of `topk_set`'s passes.
const TOPK_PART: usize = 8192;
/// Bits of the order key that `topk_set`'s histogram counts.
const TOPK_BITS: u32 = 12;

/// `order_key` as an unsigned integer that orders the same way.
fn topk_key(v: f32) -> u32 {
    (order_key(v) as u32) ^ 0x8000_0000
}

fn bucket(u: u32) -> usize {
    (u >> (32 - TOPK_BITS)) as usize
}

/// An integer that orders as `rank` does: by value, NaN below everything, -0 equal to +0.
fn order_key(v: f32) -> i32 {
    if v.is_nan() {
        return i32::MIN;
    }
    let b = if v == 0.0 { 0 } else { v.to_bits() as i32 };
    // Negative floats order backwards in their bits: flip all but the sign.
    b ^ (((b >> 31) as u32) >> 1) as i32
}

/// A query prepared for the 8-bit key scan: per head, the query quantized to i8 (symmetric),
/// the sum of its values (to undo the keys' +128 offset) and its scale.
pub struct QueryQ8 {
    pub q: Vec<i8>,
    pub sum: Vec<i32>,
    pub scale: Vec<f32>,
}

impl QueryQ8 {
    /// `q` is `[heads, d]`.
    pub fn new(q: &[f32], d: usize) -> QueryQ8 {
        let heads = q.len() / d;
        let mut q8 = vec![0i8; q.len()];
        let scale: Vec<f32> = q
            .chunks_exact(d)
            .zip(q8.chunks_exact_mut(d))
            .map(|(x, o)| crate::rows::quantize_i8(x, o))
            .collect();
        let sum: Vec<i32> = q8
            .chunks_exact(d)
            .map(|o| o.iter().map(|&v| v as i32).sum())
            .collect();
        debug_assert_eq!(sum.len(), heads);
        QueryQ8 { q: q8, sum, scale }
    }
}

/// One indexer query (`q` `[heads, d]`, head weights `w` `[heads]`) prepared once for the scan
/// over a cache of `format`, then used for every key chunk: f32 and bf16 keys take the query
/// with its heads in vector lanes (on AVX-512), 8-bit keys the query quantized the same way.
pub struct IndexQuery<'a> {
    q: &'a [f32],
    w: &'a [f32],
    d: usize,
    prep: Prep,
}

enum Prep {
    Plain,
    /// `[groups][d][16]` and the head weights per group of 16, zero past the last head.
    Lanes(Vec<f32>, Vec<f32>),
    Q8(QueryQ8),
}

impl<'a> IndexQuery<'a> {
    pub fn new(q: &'a [f32], w: &'a [f32], d: usize, format: RowFormat) -> IndexQuery<'a> {
        assert!(
            q.len() == w.len() * d,
            "indexer query: {} values for {} heads of {d}",
            q.len(),
            w.len()
        );
        let prep = match format {
            RowFormat::Q8 => Prep::Q8(QueryQ8::new(q, d)),
            _ if Isa::detect() == Isa::Avx512Vnni => {
                let mut wv = vec![0f32; w.len().div_ceil(crate::attn::LANES) * crate::attn::LANES];
                wv[..w.len()].copy_from_slice(w);
                Prep::Lanes(crate::attn::heads_in_lanes(q, w.len(), d), wv)
            }
            _ => Prep::Plain,
        };
        IndexQuery { q, w, d, prep }
    }
}

/// `indexer_scores` over cached rows in any `RowFormat`, for keys `t0..t1` into
/// `out[..t1 - t0]`. f32 and bf16 rows are read in place by the AVX-512 scan (bf16 widened
/// into `scratch` a chunk at a time otherwise); 8-bit rows are scored in integers against the
/// query quantized the same way (`QueryQ8`), the scan DeepSeek's own indexer runs in FP8.
pub fn indexer_scores_rows(
    q: &IndexQuery,
    keys: &Rows,
    scale: f32,
    last: usize,
    (t0, t1): (usize, usize),
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let d = keys.width();
    assert!(
        t1 <= keys.len() && out.len() == t1 - t0 && d == q.d,
        "indexer scores: keys {t0}..{t1} of {} cached of width {d}, out {}, query width {}",
        keys.len(),
        out.len(),
        q.d
    );
    // Only causal keys are scored; the rest are masked.
    let c1 = t1.min(last + 1).max(t0);
    out[c1 - t0..].fill(f32::NEG_INFINITY);
    let out = &mut out[..c1 - t0];
    match (&q.prep, keys.format()) {
        (Prep::Q8(qq), RowFormat::Q8) => {
            indexer_scores_q8(qq, q.w, keys, scale, last, (t0, c1), out)
        }
        #[cfg(target_arch = "x86_64")]
        (Prep::Lanes(qt, wv), RowFormat::F32 | RowFormat::Bf16) => {
            let heads = (q.w.len(), q.d);
            // SAFETY: the lane packing exists only where AVX-512 was detected; rows t0..c1
            // are stored (checked above) and `out` holds c1 - t0 values.
            unsafe {
                match (keys.as_f32(), keys.as_bf16()) {
                    (Some(k), _) => crate::x86_attn::indexer_scores_packed::<false>(
                        (qt, wv),
                        heads,
                        k.as_ptr() as *const u8,
                        scale,
                        (t0, c1),
                        out,
                    ),
                    (_, Some(k)) => crate::x86_attn::indexer_scores_packed::<true>(
                        (qt, wv),
                        heads,
                        k.as_ptr() as *const u8,
                        scale,
                        (t0, c1),
                        out,
                    ),
                    _ => unreachable!("f32 or bf16 rows"),
                }
            }
        }
        (_, RowFormat::F32) => {
            let k = keys.as_f32().expect("f32 rows");
            indexer_scores(q.q, q.w, k, d, scale, last, (t0, c1), out);
        }
        (_, RowFormat::Bf16) => {
            keys.widen_into(t0, c1, scratch);
            if c1 > t0 {
                indexer_scores(q.q, q.w, scratch, d, scale, c1 - 1 - t0, (0, c1 - t0), out);
            }
        }
        (_, RowFormat::Q8) => {
            let qq = QueryQ8::new(q.q, d);
            indexer_scores_q8(&qq, q.w, keys, scale, last, (t0, c1), out);
        }
    }
}

/// The 8-bit scan: `sum_h w_h relu(scale * sq_h * sk_t * (q8_h . k8_t))`, keys after `last`
/// masked. AVX-512 VNNI (16 keys per pass) where detected and `t0` starts a block.
pub fn indexer_scores_q8(
    qq: &QueryQ8,
    w: &[f32],
    keys: &Rows,
    scale: f32,
    last: usize,
    (t0, t1): (usize, usize),
    out: &mut [f32],
) {
    let d = keys.width();
    let (bytes, kscale) = keys.as_q8().expect("8-bit rows");
    let c1 = t1.min(last + 1).max(t0);
    out[c1 - t0..].fill(f32::NEG_INFINITY);
    let qscale: Vec<f32> = qq.scale.iter().map(|s| s * scale).collect();
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512Vnni && t0.is_multiple_of(crate::rows::Q8_BLOCK) {
        // SAFETY: AVX-512 VNNI was detected; the blocks up to c1 <= keys.len() exist.
        unsafe {
            crate::x86_attn::indexer_scores_q8(
                &qq.q,
                &qq.sum,
                &qscale,
                w,
                (bytes, kscale),
                d,
                (t0, c1),
                &mut out[..c1 - t0],
            )
        };
        return;
    }
    indexer_scores_q8_ref(qq, w, keys, scale, (t0, c1), &mut out[..c1 - t0]);
}

/// Reference twin of `indexer_scores_q8` (every key of `t0..t1` causal).
pub fn indexer_scores_q8_ref(
    qq: &QueryQ8,
    w: &[f32],
    keys: &Rows,
    scale: f32,
    (t0, t1): (usize, usize),
    out: &mut [f32],
) {
    let d = keys.width();
    let (bytes, kscale) = keys.as_q8().expect("8-bit rows");
    for (o, t) in out.iter_mut().zip(t0..t1) {
        let mut s = 0f32;
        for (h, wh) in w.iter().enumerate() {
            let mut dot = 0i32;
            for j in 0..d {
                let k = bytes[crate::rows::q8_index(t, j, d)] as i32 - 128;
                dot += k * qq.q[h * d + j] as i32;
            }
            s += wh * (dot as f32 * qq.scale[h] * scale * kscale[t]).max(0.0);
        }
        *o = s;
    }
}
