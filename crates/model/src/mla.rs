//! Multi-head Latent Attention with the DSA lightning indexer: projections, rope, the latent
//! cache and the selection per sequence; the expanded reference attention here, the absorbed
//! fast path in `absorbed`.

use glm5_kernels::matrix::matmul_many;
use glm5_kernels::pool::{self, SyncPtr};
use glm5_kernels::{cpu, dsa, Acts, Matrix};
use rayon::prelude::*;

use crate::absorbed::{causal_keys, Absorbed, SeqPart};
use crate::config::Config;
use crate::glm_moe_dsa::{Linear, Loader};
use crate::kv_cache::LayerKv;
use crate::rope::{self, Rope};
use crate::source::Quant;
use crate::trace::Trace;
use crate::Result;

use std::sync::OnceLock;

/// Most indexer scores (queries x keys) held at once in a prefill.
const MAX_INDEX_SCORES: usize = 1 << 22;

thread_local! {
    /// Per-thread scratch for widened cache rows (kept between calls: no allocation per unit).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The calling thread's buffer for a layer's indexer scores, kept between layers and
    /// steps: every value is written before it is read, so it is never cleared, and a decode
    /// step allocates (and faults in) no fresh pages for it.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `q_a_layernorm` / `kv_a_layernorm` / indexer `k_norm` eps in HF (constructed without eps).
const LATENT_NORM_EPS: f32 = 1e-6;

pub enum QProj {
    /// `q_a_proj -> q_a_layernorm -> q_b_proj` (GLM-5, DeepSeek-V3.2).
    Lora {
        q_a_proj: Linear,
        q_a_layernorm: Vec<f32>,
        q_b_proj: Linear,
    },
    /// `q_proj` (configs with `q_lora_rank: null`).
    Full { q_proj: Linear },
}

pub struct Indexer {
    pub wq_b: Linear,
    pub wk: Linear,
    pub k_norm_weight: Vec<f32>,
    pub k_norm_bias: Vec<f32>,
    pub weights_proj: Linear,
}

pub struct Attention {
    pub q: QProj,
    pub kv_a_proj_with_mqa: Linear,
    pub kv_a_layernorm: Vec<f32>,
    /// The reference path's `kv_b_proj`; the fast path holds `absorbed` instead.
    pub kv_b_proj: Option<Linear>,
    pub absorbed: Option<Absorbed>,
    pub o_proj: Linear,
    /// `None` on layers whose `indexer_types` entry is "shared", and on `glm4_moe_lite`.
    pub indexer: Option<Indexer>,
}

/// Per-query selected key positions: `None` means dense (every causal key).
pub type Selection = Option<Vec<Vec<usize>>>;

/// One sequence of a batch at one layer: its `n` new rows, its cache, and the selection of the
/// last layer that had an indexer (reused by shared-indexer layers).
pub struct SeqKv<'a> {
    pub n: usize,
    pub kv: &'a mut LayerKv,
    pub selection: Selection,
    /// Attend to every causal key (the indexer still caches its keys): `--dense-attention`.
    pub dense: bool,
}

impl Attention {
    pub fn load(ld: &Loader, p: &str, with_indexer: bool) -> Result<Attention> {
        let c = ld.cfg;
        let (h, nh) = (c.hidden_size, c.num_attention_heads);
        let q = match c.q_lora_rank {
            Some(qr) => QProj::Lora {
                q_a_proj: ld.linear(&format!("{p}.q_a_proj"), qr, h)?,
                q_a_layernorm: ld.vector(&format!("{p}.q_a_layernorm.weight"), qr)?,
                q_b_proj: ld.linear(&format!("{p}.q_b_proj"), nh * c.qk_head_dim(), qr)?,
            },
            None => QProj::Full {
                q_proj: ld.linear(&format!("{p}.q_proj"), nh * c.qk_head_dim(), h)?,
            },
        };
        let indexer = match (&c.indexer, with_indexer) {
            (Some(ix), true) => {
                let i = format!("{p}.indexer");
                let d = ix.index_head_dim;
                Some(Indexer {
                    wq_b: ld.linear(
                        &format!("{i}.wq_b"),
                        ix.index_n_heads * d,
                        c.q_lora_rank.unwrap_or(h),
                    )?,
                    wk: ld.linear(&format!("{i}.wk"), d, h)?,
                    k_norm_weight: ld.vector(&format!("{i}.k_norm.weight"), d)?,
                    k_norm_bias: ld.vector(&format!("{i}.k_norm.bias"), d)?,
                    weights_proj: ld.linear(&format!("{i}.weights_proj"), ix.index_n_heads, h)?,
                })
            }
            _ => None,
        };
        Ok(Attention {
            q,
            kv_a_proj_with_mqa: ld.linear(&format!("{p}.kv_a_proj_with_mqa"), c.latent_dim(), h)?,
            kv_a_layernorm: ld.vector(&format!("{p}.kv_a_layernorm.weight"), c.kv_lora_rank)?,
            kv_b_proj: match ld.quant {
                Quant::Reference => Some(ld.linear(
                    &format!("{p}.kv_b_proj"),
                    nh * (c.qk_nope_head_dim + c.v_head_dim),
                    c.kv_lora_rank,
                )?),
                _ => None,
            },
            absorbed: match ld.quant {
                Quant::Reference => None,
                _ => Some(Absorbed::load(ld, p)?),
            },
            o_proj: ld.linear(&format!("{p}.o_proj"), h, nh * c.v_head_dim)?,
            indexer,
        })
    }

    /// `x`: `[n, hidden]` (after `input_layernorm`), the tokens of every sequence in `seqs`
    /// back to back (sequence `s` owns `seqs[s].n` rows, at its positions `past..past + n`).
    /// Appends each sequence's rows to its cache, updates its selection (for the next shared
    /// layer) and returns `[n, hidden]`. Projections run once over all rows; the cache, the
    /// indexer and attention run per sequence.
    pub fn forward(
        &self,
        cfg: &Config,
        rope: &Rope,
        x: &[f32],
        seqs: &mut [SeqKv],
        layer: usize,
        mut trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>> {
        let n: usize = seqs.iter().map(|s| s.n).sum();
        let nh = cfg.num_attention_heads;
        let qk = cfg.qk_head_dim();
        let lat = cfg.latent_dim();

        // One pool dispatch for everything that reads x: q_a (or q), kv_a and the indexer's
        // key and head-weight projections.
        let xa = Acts::new(x, cfg.hidden_size);
        let q_first = match &self.q {
            QProj::Lora { q_a_proj, .. } => &q_a_proj.w,
            QProj::Full { q_proj } => &q_proj.w,
        };
        let mut jobs = vec![(q_first, &xa), (&self.kv_a_proj_with_mqa.w, &xa)];
        if let Some(ix) = &self.indexer {
            jobs.push((&ix.wk.w, &xa));
            jobs.push((&ix.weights_proj.w, &xa));
        }
        let mut outs = matmul_many(&jobs).into_iter();
        let (q_first_out, ckv) = (outs.next().expect("q"), outs.next().expect("kv_a")); // [n, *], [n, r + rope]
        let ix_x = self
            .indexer
            .as_ref()
            .map(|_| (outs.next().expect("wk"), outs.next().expect("weights_proj")));

        // Query: [n, nh, qk] with each head [nope | rope]; the indexer's query shares q_resid.
        let (q, ix_q) = match &self.q {
            QProj::Lora {
                q_a_layernorm,
                q_b_proj,
                ..
            } => {
                let q_resid = cpu::rms_norm(&q_first_out, q_a_layernorm, LATENT_NORM_EPS); // [n, q_lora_rank]
                let ra = Acts::new(&q_resid, q_resid.len() / n);
                let mut jobs = vec![(&q_b_proj.w, &ra)];
                if let Some(ix) = &self.indexer {
                    jobs.push((&ix.wq_b.w, &ra));
                }
                let mut o = matmul_many(&jobs).into_iter();
                let qb = o.next().expect("q_b");
                (qb, o.next())
            }
            QProj::Full { .. } => {
                let ix_q = self.indexer.as_ref().map(|ix| ix.wq_b.forward(x, n));
                (q_first_out, ix_q)
            }
        };

        // Per sequence: rope, cache and selection; `q` becomes [n, nh, qk] roped.
        let mut q = q;
        let mut row = 0;
        let mut pasts = Vec::with_capacity(seqs.len());
        for s in seqs.iter_mut() {
            let rows = row..row + s.n;
            let cut = |v: &[f32], w: usize| v[rows.start * w..rows.end * w].to_vec();
            let ix = match (&ix_x, &ix_q, &cfg.indexer) {
                (Some((k, w)), Some(q), Some(c)) => Some(IndexerProj {
                    q: cut(q, c.index_n_heads * c.index_head_dim),
                    k: cut(k, c.index_head_dim),
                    w: cut(w, c.index_n_heads),
                }),
                _ => None,
            };
            pasts.push(self.prepare(
                cfg,
                rope,
                &mut q[rows.start * nh * qk..rows.end * nh * qk],
                &ckv[rows.start * lat..rows.end * lat],
                ix,
                s,
                layer,
                trace.as_deref_mut(),
            ));
            row = rows.end;
        }
        // Attention -> out [n, nh * v_head_dim]: absorbed over every sequence at once (one
        // pass over W_UK and W_UV for the whole batch), or expanded per sequence.
        let out = match (&self.absorbed, &self.kv_b_proj) {
            (Some(ab), _) => {
                let parts: Vec<SeqPart> = seqs
                    .iter()
                    .zip(&pasts)
                    .map(|(s, &past)| SeqPart {
                        kv: &*s.kv,
                        selection: &s.selection,
                        past,
                        n: s.n,
                    })
                    .collect();
                ab.attend(cfg, &q, &parts)
            }
            (None, Some(kv_b)) => {
                let vd = cfg.v_head_dim;
                let mut out = vec![0f32; n * nh * vd];
                let mut row = 0;
                for (s, &past) in seqs.iter().zip(&pasts) {
                    let rows = row..row + s.n;
                    let o = expanded_attention(
                        cfg,
                        kv_b,
                        &q[rows.start * nh * qk..rows.end * nh * qk],
                        &*s.kv,
                        &s.selection,
                        past,
                        s.n,
                    );
                    out[rows.start * nh * vd..rows.end * nh * vd].copy_from_slice(&o);
                    row = rows.end;
                }
                out
            }
            (None, None) => unreachable!("attention holds kv_b_proj or its absorbed form"),
        };
        Ok(self.o_proj.forward(&out, n))
    }

    /// One sequence's `n` rows before attention: ropes `q` `[n, nh, qk]` in place, appends
    /// `ckv` `[n, r + rope]` to the cache as [normed latent | roped key], and leaves this layer's
    /// selection in `s.selection`. Returns the cache length before these rows.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        cfg: &Config,
        rope: &Rope,
        q: &mut [f32],
        ckv: &[f32],
        ix_proj: Option<IndexerProj>,
        s: &mut SeqKv,
        layer: usize,
        trace: Option<&mut Trace>,
    ) -> usize {
        let (n, kv) = (s.n, &mut *s.kv);
        let past = kv.kv.len();
        let (nh, nope, rd, r) = (
            cfg.num_attention_heads,
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.kv_lora_rank,
        );
        let qk = cfg.qk_head_dim();
        let cos_sin: Vec<(Vec<f32>, Vec<f32>)> = (0..n).map(|i| rope.cos_sin(past + i)).collect();
        for i in 0..n {
            for h in 0..nh {
                let o = (i * nh + h) * qk + nope;
                rope::apply(
                    &mut q[o..o + rd],
                    &cos_sin[i].0,
                    &cos_sin[i].1,
                    cfg.rope_interleave,
                );
            }
        }

        // Compressed KV: [n, kv_lora_rank + rope] -> cache rows [normed latent | roped key].
        let mut rows = ckv.to_vec();
        for (i, row) in rows.chunks_exact_mut(r + rd).enumerate() {
            let normed = cpu::rms_norm(&row[..r], &self.kv_a_layernorm, LATENT_NORM_EPS);
            row[..r].copy_from_slice(&normed);
            rope::apply(
                &mut row[r..],
                &cos_sin[i].0,
                &cos_sin[i].1,
                cfg.rope_interleave,
            );
        }
        kv.kv.push(&rows);

        // Selection: this layer's indexer, or the previous full layer's.
        let selection = match (&self.indexer, &cfg.indexer, ix_proj) {
            (Some(ix), Some(ixc), Some(proj)) => ix.select(
                cfg,
                if s.dense { usize::MAX } else { ixc.index_topk },
                ixc.index_n_heads,
                ixc.index_head_dim,
                proj,
                n,
                past,
                &cos_sin,
                kv,
                self.absorbed.is_some(),
                layer,
                trace,
            ),
            (None, Some(_), _) => s.selection.take(),
            _ => None,
        };
        s.selection = selection;
        past
    }

    /// The weights only a dense prefill reads (per-head `W_UK`, `expanded.rs`): held, but not
    /// part of a decode step's traffic.
    pub fn prefill_weights(&self) -> Vec<&Matrix> {
        self.absorbed.iter().flat_map(|a| a.k_bt.iter()).collect()
    }

    /// Every weight matrix a decode step reads, for accounting.
    pub fn weights(&self) -> Vec<&Matrix> {
        let mut v = match &self.q {
            QProj::Lora {
                q_a_proj, q_b_proj, ..
            } => vec![&q_a_proj.w, &q_b_proj.w],
            QProj::Full { q_proj } => vec![&q_proj.w],
        };
        v.push(&self.kv_a_proj_with_mqa.w);
        v.push(&self.o_proj.w);
        if let Some(kv_b) = &self.kv_b_proj {
            v.push(&kv_b.w);
        }
        if let Some(ab) = &self.absorbed {
            v.extend(ab.k_b.iter().chain(&ab.v_b));
        }
        if let Some(ix) = &self.indexer {
            v.extend([&ix.wq_b.w, &ix.wk.w, &ix.weights_proj.w]);
        }
        v
    }
}

/// The reference attention: expand K/V for every cached position (`kv_b_proj` over the latent
/// cache, `[T, nh, nope + v]`), then softmax attention per query and head. Returns
/// `[n, nh * v_head_dim]`.
fn expanded_attention(
    cfg: &Config,
    kv_b_proj: &Linear,
    q: &[f32],
    kv: &LayerKv,
    selection: &Selection,
    past: usize,
    n: usize,
) -> Vec<f32> {
    let (nh, nope, rd, vd) = (
        cfg.num_attention_heads,
        cfg.qk_nope_head_dim,
        cfg.qk_rope_head_dim,
        cfg.v_head_dim,
    );
    let qk = cfg.qk_head_dim();
    let t_total = past + n;
    {
        // Rows [T, r + rope] -> latent [T, r] and rope keys [T, rope].
        let rows = kv.kv.to_f32(0, t_total);
        let r = cfg.kv_lora_rank;
        let latent: Vec<f32> = rows
            .chunks_exact(r + rd)
            .flat_map(|x| x[..r].iter().copied())
            .collect();
        let k_rope: Vec<f32> = rows
            .chunks_exact(r + rd)
            .flat_map(|x| x[r..].iter().copied())
            .collect();
        let kv_full = kv_b_proj.forward(&latent, t_total);
        let scale = cfg.attention_scale() as f32;
        let w = nope + vd;
        let mut out = vec![0f32; n * nh * vd];
        out.par_chunks_mut(nh * vd)
            .enumerate()
            .for_each(|(i, out_i)| {
                let pos = past + i;
                let keys: Vec<usize> = match &selection {
                    Some(sel) => causal_keys(&sel[i], pos),
                    None => (0..=pos).collect(),
                };
                for h in 0..nh {
                    let qh = &q[(i * nh + h) * qk..(i * nh + h + 1) * qk];
                    let mut s: Vec<f32> = keys
                        .iter()
                        .map(|&t| {
                            let k_nope = &kv_full[(t * nh + h) * w..(t * nh + h) * w + nope];
                            let k_rope = &k_rope[t * rd..(t + 1) * rd];
                            (cpu::dot(&qh[..nope], k_nope) + cpu::dot(&qh[nope..], k_rope)) * scale
                        })
                        .collect();
                    cpu::softmax(&mut s);
                    let o = &mut out_i[h * vd..(h + 1) * vd];
                    for (p, &t) in s.iter().zip(&keys) {
                        let v = &kv_full[(t * nh + h) * w + nope..(t * nh + h + 1) * w];
                        for d in 0..vd {
                            o[d] += p * v[d];
                        }
                    }
                }
            });
        out
    }
}

/// The indexer's projections of one chunk: `wq_b(q_resid)` `[n, heads * d]`, `wk(x)` `[n, d]`
/// and `weights_proj(x)` `[n, heads]`.
struct IndexerProj {
    q: Vec<f32>,
    k: Vec<f32>,
    w: Vec<f32>,
}

impl Indexer {
    /// The lightning indexer: per query, the `min(index_topk, T)` key positions with the largest
    /// `sum_h w_h relu(q_h . k_t / sqrt(d))`, causal positions only competing with each other.
    fn select(
        &self,
        cfg: &Config,
        index_topk: usize,
        n_heads: usize,
        d: usize,
        proj: IndexerProj,
        n: usize,
        past: usize,
        cos_sin: &[(Vec<f32>, Vec<f32>)],
        kv: &mut LayerKv,
        fast: bool,
        layer: usize,
        trace: Option<&mut Trace>,
    ) -> Selection {
        let rd = cfg.qk_rope_head_dim;
        let il = cfg.indexer_rope_interleave;
        // Queries [n, n_heads, d], rope dims first.
        let mut qi = proj.q;
        // Keys [n, d]: LayerNorm (with bias) over all d, then rope on the first rope dims.
        let mut ki = cpu::layer_norm(
            &proj.k,
            &self.k_norm_weight,
            &self.k_norm_bias,
            LATENT_NORM_EPS,
        );
        for i in 0..n {
            for h in 0..n_heads {
                let o = (i * n_heads + h) * d;
                rope::apply(&mut qi[o..o + rd], &cos_sin[i].0, &cos_sin[i].1, il);
            }
            rope::apply(&mut ki[i * d..i * d + rd], &cos_sin[i].0, &cos_sin[i].1, il);
        }
        kv.index_k.push(&ki);
        let t_total = past + n;
        if t_total <= index_topk && trace.is_none() {
            // Every causal key is selected: attention is dense, the scores change nothing.
            return None;
        }
        // Head weights [n, n_heads] scaled by n_heads^-0.5.
        let head_scale = (n_heads as f32).powf(-0.5);
        let wts: Vec<f32> = proj.w.iter().map(|v| v * head_scale).collect();
        let softmax_scale = (d as f32).powf(-0.5);
        let k_all = &kv.index_k;
        let k = index_topk.min(t_total);
        if fast && trace.is_none() {
            // Fused scores on the pool in (query, key chunk) units, then a linear top-k per
            // query on the pool: [group, t_total] scores at a time, so a long prefill holds
            // at most MAX_INDEX_SCORES of them, never [n, t_total].
            let chunk = 1024;
            let per_q = t_total.div_ceil(chunk);
            let group = (MAX_INDEX_SCORES / t_total).clamp(1, n);
            let mut scores = SCORES.take();
            scores.resize(group * t_total, 0.0);
            let mut sel: Vec<Vec<usize>> = Vec::with_capacity(n);
            for i0 in (0..n).step_by(group) {
                let g = group.min(n - i0);
                // Each query prepared once for the cache's format, on the pool.
                let queries: Vec<OnceLock<dsa::IndexQuery>> =
                    (0..g).map(|_| OnceLock::new()).collect();
                pool::run(g, &|x| {
                    let i = i0 + x;
                    let _ = queries[x].set(dsa::IndexQuery::new(
                        &qi[i * n_heads * d..(i + 1) * n_heads * d],
                        &wts[i * n_heads..(i + 1) * n_heads],
                        d,
                        k_all.format(),
                    ));
                });
                let sp = SyncPtr(scores.as_mut_ptr());
                pool::run(g * per_q, &|u| {
                    let (x, c) = (u / per_q, u % per_q);
                    let (t0, t1) = (c * chunk, ((c + 1) * chunk).min(t_total));
                    // SAFETY: unit (x, c) alone writes scores[x][t0..t1].
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(sp.get().add(x * t_total + t0), t1 - t0)
                    };
                    let q = queries[x]
                        .get()
                        .expect("every query of the group was prepared");
                    SCRATCH.with_borrow_mut(|scratch| {
                        dsa::indexer_scores_rows(
                            q,
                            k_all,
                            softmax_scale,
                            past + i0 + x,
                            (t0, t1),
                            out,
                            scratch,
                        )
                    });
                });
                let picked: Vec<OnceLock<Vec<usize>>> = (0..g).map(|_| OnceLock::new()).collect();
                pool::run(g, &|x| {
                    let _ =
                        picked[x].set(dsa::topk_set(&scores[x * t_total..(x + 1) * t_total], k));
                });
                sel.extend(
                    picked
                        .into_iter()
                        .map(|p| p.into_inner().expect("every query picked")),
                );
            }
            SCORES.set(scores);
            return Some(sel);
        }
        let k_all = k_all.to_f32(0, t_total);
        let scores: Vec<Vec<f32>> = (0..n)
            .into_par_iter()
            .map(|i| {
                dsa::indexer_scores_ref(
                    &qi[i * n_heads * d..(i + 1) * n_heads * d],
                    &wts[i * n_heads..(i + 1) * n_heads],
                    &k_all,
                    d,
                    softmax_scale,
                    past + i,
                )
            })
            .collect();
        let sel: Vec<Vec<usize>> = scores.iter().map(|s| cpu::topk(s, k)).collect();
        if let Some(tr) = trace {
            let p = format!("layers.{layer}.self_attn.indexer");
            tr.record(format!("{p}.scores"), vec![n, t_total], scores.concat());
            tr.record(
                format!("{p}.topk"),
                vec![n, k],
                sel.iter().flatten().map(|&v| v as f32).collect(),
            );
        }
        Some(sel)
    }
}
