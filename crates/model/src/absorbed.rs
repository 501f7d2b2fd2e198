//! Absorbed MLA attention (the fast path): per-head `W_UK` / `W_UV` products around attention
//! over the latent cache rows, for every sequence of a batch at once.

use glm5_kernels::matrix::matmul_many;
use glm5_kernels::pool::{self, SyncPtr};
use glm5_kernels::{attn, fvec, Acts, Matrix, WFormat};

use crate::config::Config;
use crate::glm_moe_dsa::Loader;
use crate::kv_cache::LayerKv;
use crate::mla::Selection;
use crate::Result;

use std::sync::OnceLock;

/// A sequence's rows in one forward from which attention takes each query's keys whole
/// (prefill) instead of in chunks spread over the threads (decode, verify steps).
const PREFILL_ROWS: usize = 32;

/// Most attention units (query, key chunk) whose partials are held at once.
const MAX_UNITS: usize = 256;

thread_local! {
    /// The calling thread's buffer for a layer's attention partials, kept between layers and
    /// steps: every value is written before it is read, so it is never cleared, and a decode
    /// step allocates (and faults in) no fresh pages for it.
    static PARTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `kv_b_proj` split per head for attention over the latent cache ("absorbed" MLA): scores
/// `q_nope . (W_UK c_t) = (W_UK^T q_nope) . c_t` and outputs `W_UV (sum_t p_t c_t)`, so K and V
/// are never expanded.
pub struct Absorbed {
    /// Per head `W_UK^T`: `[kv_lora_rank, qk_nope_head_dim]` (llama.cpp `attn_k_b`).
    pub k_b: Vec<Matrix>,
    /// Per head `W_UV`: `[v_head_dim, kv_lora_rank]` (llama.cpp `attn_v_b`).
    pub v_b: Vec<Matrix>,
    /// Per head `W_UK`: `[qk_nope_head_dim, kv_lora_rank]`, for the expanded prefill
    /// (`expanded.rs`), in the format the loader picks for `kv_b_proj`.
    pub k_bt: Vec<Matrix>,
}

/// Per head `[rows, cols]` blocks of `w: [nh * rows, cols]` transposed: `[nh * cols, rows]`.
fn transpose_heads(w: &[f32], nh: usize, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(w.len());
    for h in w.chunks_exact(rows * cols).take(nh) {
        for c in 0..cols {
            out.extend((0..rows).map(|r| h[r * cols + c]));
        }
    }
    out
}

/// One sequence's rows in a batched absorbed attention: its cache (these rows appended), the
/// layer's selection for its rows, and the cache length before them.
#[derive(Clone)]
pub(crate) struct SeqPart<'a> {
    pub kv: &'a LayerKv,
    pub selection: &'a Selection,
    pub past: usize,
    pub n: usize,
}

/// The selected positions a query at `pos` may attend to, ascending.
pub(crate) fn causal_keys(sel: &[usize], pos: usize) -> Vec<usize> {
    let mut k: Vec<usize> = sel.iter().copied().filter(|&t| t <= pos).collect();
    k.sort_unstable();
    k
}

impl Absorbed {
    pub(crate) fn load(ld: &Loader, p: &str) -> Result<Absorbed> {
        let c = ld.cfg;
        let (nh, nope, vd, r) = (
            c.num_attention_heads,
            c.qk_nope_head_dim,
            c.v_head_dim,
            c.kv_lora_rank,
        );
        let per_head = |m: Matrix, rows: usize| -> Vec<Matrix> {
            (0..nh)
                .map(|h| m.slice_rows(h * rows, (h + 1) * rows))
                .collect()
        };
        // A GGUF stores the split form; use it as stored.
        let k_name = format!("{p}.k_b_proj.weight");
        let v_name = format!("{p}.v_b_proj.weight");
        let kv_name = format!("{p}.kv_b_proj.weight");
        if let (Some(k), Some(v)) = (
            ld.src.stored(&k_name, nh * r, nope)?,
            ld.src.stored(&v_name, nh * vd, r)?,
        ) {
            // W_UK from the stored W_UK^T (dequantized, transposed, stored again): Q8_0 when
            // it was stored quantized (so its products stay int8), else as stored.
            let k_t = transpose_heads(&k.to_f32(), nh, r, nope);
            let fmt = if k.format.is_quantized() {
                WFormat::Q8_0
            } else {
                k.format
            };
            let k_bt = ld.store_as(&k_name, k_t, nh * nope, r, fmt)?.w;
            return Ok(Absorbed {
                k_b: per_head(k.packed(), r),
                v_b: per_head(v.packed(), vd),
                k_bt: per_head(k_bt, nope),
            });
        }
        let w = ld.src.f32(c, &kv_name, &[nh * (nope + vd), r])?;
        let (k_all, v_all) = crate::gguf_map::split_kv_b(&w, nh, nope, vd, r);
        // W_UK: the first `nope` rows of each head's `nope + vd` in kv_b_proj.
        let k_t: Vec<f32> = w
            .chunks_exact((nope + vd) * r)
            .flat_map(|h| h[..nope * r].iter().copied())
            .collect();
        let k_bt = ld.store(&kv_name, k_t, nh * nope, r)?.w;
        let k_b = ld.store(&kv_name, k_all, nh * r, nope)?.w;
        let v_b = ld.store(&kv_name, v_all, nh * vd, r)?.w;
        let (k_b, v_b, k_bt) = (per_head(k_b, r), per_head(v_b, vd), per_head(k_bt, nope));
        Ok(Absorbed { k_b, v_b, k_bt })
    }

    /// Attention over the latent caches for `q: [n, nh, qk]` (roped), the rows of every part
    /// in order; returns `[n, nh * v_head_dim]`. The per-head `W_UK`/`W_UV` products run once
    /// for all parts' rows, and the (query, key chunk) units of all parts share pool dispatches:
    /// a decode step of 16 sequences makes 5 dispatches per layer here, not 80. Every row's
    /// values are the same as when its sequence runs alone (each row's products, chunks and
    /// merge depend on that row only).
    pub(crate) fn attend(&self, cfg: &Config, q: &[f32], parts: &[SeqPart]) -> Vec<f32> {
        let (nh, qk, vd) = (cfg.num_attention_heads, cfg.qk_head_dim(), cfg.v_head_dim);
        // A prefill of dense attention (every causal key visible) takes the expanded form;
        // the other parts (decode rows, verify steps, selected keys) stay absorbed together.
        let expand = |p: &SeqPart| p.n >= PREFILL_ROWS && p.selection.is_none();
        if parts.iter().any(expand) {
            let starts: Vec<usize> = parts
                .iter()
                .scan(0, |s, p| {
                    *s += p.n;
                    Some(*s - p.n)
                })
                .collect();
            // The absorbed parts' query rows, back to back, attended together.
            let rest: Vec<SeqPart> = parts.iter().filter(|p| !expand(p)).cloned().collect();
            let mut q_rest = Vec::new();
            for (k, p) in parts.iter().enumerate() {
                if !expand(p) {
                    q_rest.extend_from_slice(&q[starts[k] * nh * qk..(starts[k] + p.n) * nh * qk]);
                }
            }
            let o_rest = if rest.is_empty() {
                Vec::new()
            } else {
                self.attend(cfg, &q_rest, &rest)
            };
            let mut out = Vec::with_capacity(q.len() / qk * vd);
            let mut at = 0; // rows of o_rest taken
            for (k, p) in parts.iter().enumerate() {
                if expand(p) {
                    let qp = &q[starts[k] * nh * qk..(starts[k] + p.n) * nh * qk];
                    out.extend(self.attend_expanded(cfg, qp, p));
                } else {
                    out.extend_from_slice(&o_rest[at * nh * vd..(at + p.n) * nh * vd]);
                    at += p.n;
                }
            }
            return out;
        }
        let n: usize = parts.iter().map(|p| p.n).sum();
        // Per row: its part and its position in that part's sequence.
        let (of, pos): (Vec<&SeqPart>, Vec<usize>) = parts
            .iter()
            .flat_map(|p| (0..p.n).map(move |i| (p, p.past + i)))
            .unzip();
        let (nh, nope, rd, vd, r) = (
            cfg.num_attention_heads,
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.v_head_dim,
            cfg.kv_lora_rank,
        );
        let qk = cfg.qk_head_dim();
        let scale = cfg.attention_scale() as f32;
        // q_lat[h] = W_UK[h]^T q_nope[h]: per head [n, r]. The heads' q_nope rows [nh, n,
        // nope] are quantized once; each head's matmul reads its n rows of them.
        let mut q_nope = Vec::with_capacity(nh * n * nope);
        for h in 0..nh {
            for i in 0..n {
                q_nope.extend_from_slice(&q[(i * nh + h) * qk..(i * nh + h) * qk + nope]);
            }
        }
        let all = Acts::new(&q_nope, nope);
        let acts: Vec<Acts> = (0..nh)
            .map(|h| Acts::rows(&all, h * n, (h + 1) * n))
            .collect();
        let jobs: Vec<_> = self.k_b.iter().zip(&acts).collect();
        let q_lat = matmul_many(&jobs);
        // o_lat[h] = sum_t softmax_t(scale * (q_lat . c_t + q_rope . k_rope_t)) c_t: per head [n, r].
        // Units are (query, chunk of its keys): each latent row is read once for all heads, and
        // a long context splits across threads; the chunks' partial softmax sums merge below.
        let keys: Vec<Vec<usize>> = (0..n)
            .map(|i| match of[i].selection {
                Some(sel) => causal_keys(&sel[pos[i] - of[i].past], pos[i]),
                None => (0..=pos[i]).collect(),
            })
            .collect();
        // A few rows of a sequence (decode, a verify step) split each query's keys into chunks
        // small enough that one query still spreads over the threads. A query's chunking
        // depends only on its own keys and on its sequence's row count being below
        // PREFILL_ROWS, never on the other sequences of the batch, so a row computes the same
        // bits in a verify step or a batch as in decode. A prefill's queries spread the work
        // by themselves: one chunk each, so no partial sums to merge (512-token prompt +6 to
        // +20% in 4 of 4 in-process alternating pairs, 2048 tokens +5 and +7%). Two chunks per
        // thread rather than four: at context 512 a decode step was 1-3% faster (faster in 19-24
        // of 32 alternating step pairs in 6 of 8 runs), its single-threaded merge reading half
        // the partial sums.
        let threads = pool::global().threads();
        let per: Vec<usize> = keys
            .iter()
            .zip(&of)
            .map(|(k, p)| {
                if p.n >= PREFILL_ROWS {
                    k.len().max(1)
                } else {
                    (k.len() / (2 * threads)).clamp(32, 256)
                }
            })
            .collect();
        let chunks: Vec<usize> = keys
            .iter()
            .zip(&per)
            .map(|(k, p)| k.len().div_ceil(*p))
            .collect();
        let w = r + rd;
        let part = nh * (r + 2);
        // o_lat: [nh, n, r].
        let mut o_lat = vec![0f32; nh * n * r];
        // Queries go in groups of at most MAX_UNITS units, so a long prefill's partials stay
        // bounded (8 MB at 16 heads, 34 MB at GLM-5's 64).
        let mut i0 = 0;
        while i0 < n {
            let (mut i1, mut nu) = (i0 + 1, chunks[i0]);
            while i1 < n && nu + chunks[i1] <= MAX_UNITS {
                nu += chunks[i1];
                i1 += 1;
            }
            // Per query the scaled query over a whole cache row, [nh, r + rope] = [q_lat | q_rope]
            // * scale, packed for the unit kernel over the cache's row format.
            let packed: Vec<OnceLock<attn::PackedQuery>> =
                (i0..i1).map(|_| OnceLock::new()).collect();
            pool::run(i1 - i0, &|x| {
                let i = i0 + x;
                let mut qcat = vec![0f32; nh * w];
                for (h, row) in qcat.chunks_exact_mut(w).enumerate() {
                    for (o, v) in row[..r].iter_mut().zip(&q_lat[h][i * r..(i + 1) * r]) {
                        *o = v * scale;
                    }
                    let qh = (i * nh + h) * qk;
                    for (o, v) in row[r..].iter_mut().zip(&q[qh + nope..qh + qk]) {
                        *o = v * scale;
                    }
                }
                let fmt = of[i].kv.kv.format();
                let _ = packed[x].set(attn::PackedQuery::new(&qcat, nh, w, r, fmt));
            });
            let units: Vec<(usize, usize)> = (i0..i1)
                .flat_map(|i| (0..chunks[i]).map(move |c| (i, c)))
                .collect();
            // Per unit and head: running max m, sum of exp l, unnormalized output o [r].
            let mut parts = PARTS.take();
            parts.resize(units.len() * part, 0.0);
            let parts_ptr = SyncPtr(parts.as_mut_ptr());
            pool::run(units.len(), &|u| {
                let (i, c) = units[u];
                let ks = &keys[i][c * per[i]..((c + 1) * per[i]).min(keys[i].len())];
                // SAFETY: unit u alone writes its `part` values.
                let out =
                    unsafe { std::slice::from_raw_parts_mut(parts_ptr.get().add(u * part), part) };
                let q = packed[i - i0]
                    .get()
                    .expect("every query of the group was packed");
                attn::unit(q, &of[i].kv.kv, ks, r, out);
            });
            // Merge each query's chunks (on the pool: a prefill group holds up to 256 queries).
            let first: Vec<usize> = (i0..i1)
                .scan(0, |u, i| {
                    let f = *u;
                    *u += chunks[i];
                    Some(f)
                })
                .collect();
            let dsts: Vec<SyncPtr> = o_lat
                .chunks_exact_mut(n * r)
                .map(|o| SyncPtr(o.as_mut_ptr()))
                .collect();
            // Fewer queries than threads (decode): the heads split over the threads too (a
            // decode step faster in 555 of 1,024 alternating pairs; same bits: each head's merge
            // is its own).
            let hsplit = if i1 - i0 < threads {
                (2 * threads).min(nh)
            } else {
                1
            };
            pool::run((i1 - i0) * hsplit, &|xu| {
                let (x, hg) = (xu / hsplit, xu % hsplit);
                let (i, u) = (i0 + x, first[x]);
                let unit = |c: usize| &parts[(u + c) * part..(u + c + 1) * part];
                let heads = hg * nh / hsplit..(hg + 1) * nh / hsplit;
                for (h, oh) in dsts.iter().enumerate().take(heads.end).skip(heads.start) {
                    let m = (0..chunks[i]).fold(f32::NEG_INFINITY, |a, c| a.max(unit(c)[2 * h]));
                    let w: Vec<f32> = (0..chunks[i]).map(|c| (unit(c)[2 * h] - m).exp()).collect();
                    let l: f32 = (0..chunks[i]).map(|c| w[c] * unit(c)[2 * h + 1]).sum();
                    // SAFETY: unit (query i, head group) alone writes row i of its heads' o_lat.
                    let dst = unsafe { std::slice::from_raw_parts_mut(oh.get().add(i * r), r) };
                    for (c, wc) in w.iter().enumerate() {
                        let o = &unit(c)[2 * nh + h * r..2 * nh + (h + 1) * r];
                        fvec::axpy(dst, wc / l, o);
                    }
                }
            });
            PARTS.set(parts);
            i0 = i1;
        }
        // out[h] = W_UV[h] o_lat[h]: per head [n, v] -> [n, nh, v] (o_lat quantized once).
        let all = Acts::new(&o_lat, r);
        let acts: Vec<Acts> = (0..nh)
            .map(|h| Acts::rows(&all, h * n, (h + 1) * n))
            .collect();
        let jobs: Vec<_> = self.v_b.iter().zip(&acts).collect();
        let per_head = matmul_many(&jobs);
        let mut out = vec![0f32; n * nh * vd];
        for (h, oh) in per_head.iter().enumerate() {
            for i in 0..n {
                out[(i * nh + h) * vd..(i * nh + h + 1) * vd]
                    .copy_from_slice(&oh[i * vd..(i + 1) * vd]);
            }
        }
        out
    }
}
