//! Multi-head Latent Attention with the DSA lightning indexer (reference path, f32).

use glm5_kernels::cpu;
use rayon::prelude::*;

use crate::config::Config;
use crate::glm_moe_dsa::{Linear, Loader};
use crate::kv_cache::LayerKv;
use crate::rope::{self, Rope};
use crate::trace::Trace;
use crate::Result;

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
    pub kv_b_proj: Linear,
    pub o_proj: Linear,
    /// `None` on layers whose `indexer_types` entry is "shared", and on `glm4_moe_lite`.
    pub indexer: Option<Indexer>,
}

/// Per-query selected key positions: `None` means dense (every causal key).
pub type Selection = Option<Vec<Vec<usize>>>;

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
            kv_b_proj: ld.linear(
                &format!("{p}.kv_b_proj"),
                nh * (c.qk_nope_head_dim + c.v_head_dim),
                c.kv_lora_rank,
            )?,
            o_proj: ld.linear(&format!("{p}.o_proj"), h, nh * c.v_head_dim)?,
            indexer,
        })
    }

    /// `x`: `[n, hidden]` (after `input_layernorm`) at positions `past..past + n`.
    /// Appends this chunk to `kv`, returns `[n, hidden]` and the selection used (for sharing).
    pub fn forward(
        &self,
        cfg: &Config,
        rope: &Rope,
        x: &[f32],
        n: usize,
        kv: &mut LayerKv,
        prev_selection: &Selection,
        layer: usize,
        trace: Option<&mut Trace>,
    ) -> Result<(Vec<f32>, Selection)> {
        let past = kv.k_rope.len() / cfg.qk_rope_head_dim;
        let (nh, nope, rd, vd, r) = (
            cfg.num_attention_heads,
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.v_head_dim,
            cfg.kv_lora_rank,
        );
        let qk = cfg.qk_head_dim();
        let cos_sin: Vec<(Vec<f32>, Vec<f32>)> = (0..n).map(|i| rope.cos_sin(past + i)).collect();

        // Query: [n, nh, qk] with each head [nope | rope].
        let (mut q, q_resid) = match &self.q {
            QProj::Lora {
                q_a_proj,
                q_a_layernorm,
                q_b_proj,
            } => {
                let q_resid =
                    cpu::rms_norm(&q_a_proj.forward(x, n), q_a_layernorm, LATENT_NORM_EPS); // [n, q_lora_rank]
                (q_b_proj.forward(&q_resid, n), Some(q_resid))
            }
            QProj::Full { q_proj } => (q_proj.forward(x, n), None),
        };
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

        // Compressed KV: [n, kv_lora_rank + rope] -> cache the normed latent and the roped key.
        let ckv = self.kv_a_proj_with_mqa.forward(x, n);
        for i in 0..n {
            let row = &ckv[i * (r + rd)..(i + 1) * (r + rd)];
            kv.latent.extend(cpu::rms_norm(
                &row[..r],
                &self.kv_a_layernorm,
                LATENT_NORM_EPS,
            ));
            let mut k_rot = row[r..].to_vec();
            rope::apply(
                &mut k_rot,
                &cos_sin[i].0,
                &cos_sin[i].1,
                cfg.rope_interleave,
            );
            kv.k_rope.extend(k_rot);
        }
        let t_total = past + n;

        // Selection: this layer's indexer, or the previous full layer's.
        let selection = match (&self.indexer, &cfg.indexer) {
            (Some(ix), Some(ixc)) => {
                let q_in = q_resid.as_deref().unwrap_or(x);
                Some(ix.select(
                    cfg,
                    ixc.index_topk,
                    ixc.index_n_heads,
                    ixc.index_head_dim,
                    x,
                    q_in,
                    n,
                    past,
                    &cos_sin,
                    kv,
                    layer,
                    trace,
                ))
            }
            (None, Some(_)) => prev_selection.clone(),
            _ => None,
        };

        // Expand K/V for every cached position: [T, nh, nope + v].
        let kv_full = self.kv_b_proj.forward(&kv.latent, t_total);
        let scale = cfg.attention_scale() as f32;
        let w = nope + vd;
        let mut out = vec![0f32; n * nh * vd];
        out.par_chunks_mut(nh * vd)
            .enumerate()
            .for_each(|(i, out_i)| {
                let pos = past + i;
                let keys: Vec<usize> = match &selection {
                    Some(sel) => {
                        let mut k: Vec<usize> =
                            sel[i].iter().copied().filter(|&t| t <= pos).collect();
                        k.sort_unstable();
                        k
                    }
                    None => (0..=pos).collect(),
                };
                for h in 0..nh {
                    let qh = &q[(i * nh + h) * qk..(i * nh + h + 1) * qk];
                    let mut s: Vec<f32> = keys
                        .iter()
                        .map(|&t| {
                            let k_nope = &kv_full[(t * nh + h) * w..(t * nh + h) * w + nope];
                            let k_rope = &kv.k_rope[t * rd..(t + 1) * rd];
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
        Ok((self.o_proj.forward(&out, n), selection))
    }
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
        x: &[f32],
        q_resid: &[f32],
        n: usize,
        past: usize,
        cos_sin: &[(Vec<f32>, Vec<f32>)],
        kv: &mut LayerKv,
        layer: usize,
        trace: Option<&mut Trace>,
    ) -> Vec<Vec<usize>> {
        let rd = cfg.qk_rope_head_dim;
        let il = cfg.indexer_rope_interleave;
        // Queries [n, n_heads, d], rope dims first.
        let mut qi = self.wq_b.forward(q_resid, n);
        // Keys [n, d]: LayerNorm (with bias) over all d, then rope on the first rope dims.
        let mut ki = cpu::layer_norm(
            &self.wk.forward(x, n),
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
        kv.index_k.extend_from_slice(&ki);
        let t_total = past + n;
        // Head weights [n, n_heads] scaled by n_heads^-0.5.
        let head_scale = (n_heads as f32).powf(-0.5);
        let wts: Vec<f32> = self
            .weights_proj
            .forward(x, n)
            .iter()
            .map(|v| v * head_scale)
            .collect();
        let softmax_scale = (d as f32).powf(-0.5);
        let k_all = &kv.index_k;
        let scores: Vec<Vec<f32>> = (0..n)
            .into_par_iter()
            .map(|i| {
                (0..t_total)
                    .map(|t| {
                        if t > past + i {
                            return f32::NEG_INFINITY;
                        }
                        let kt = &k_all[t * d..(t + 1) * d];
                        (0..n_heads)
                            .map(|h| {
                                let qh = &qi[(i * n_heads + h) * d..(i * n_heads + h + 1) * d];
                                wts[i * n_heads + h] * (cpu::dot(qh, kt) * softmax_scale).max(0.0)
                            })
                            .sum()
                    })
                    .collect()
            })
            .collect();
        let k = index_topk.min(t_total);
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
        sel
    }
}
