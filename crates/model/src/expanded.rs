//! Dense prefill attention with K and V expanded per head (the multi-head form of MLA that
//! vLLM and SGLang use for prefill; decode keeps the absorbed form over the latent rows).
//!
//! Absorbed attention costs `nh * (kv_lora_rank + rope + kv_lora_rank)` multiply-adds per
//! (query, key) pair: 17,408 at the bench model's 16 heads of rank 512. Expanded, a pair costs
//! `nh * (qk_nope + rope + v_head_dim)` = 5,120, after one expansion per key (`W_UK c_t`,
//! `W_UV c_t`: the int8 products the absorbed form spends per query instead). In a prompt
//! without a cached prefix the keys are the queries, so the expansion costs what the absorbed
//! per-query products cost, and every pair is 3.4x cheaper.
//!
//! ```text
//! c     = latent rows 0..T of the cache                  [T, kv_lora_rank]
//! k_nope[h] = c W_UK[h]^T                                [T, qk_nope]     (k_bt, int8 matmul)
//! v[h]      = c W_UV[h]^T                                [T, v_head_dim]  (v_b, int8 matmul)
//! s[h]  = scale (q_nope[h] k_nope[h]^T + q_rope[h] k_rope^T), causal   [n, T]  (gemm)
//! o[h]  = softmax(s[h]) v[h]                             [n, v_head_dim] (gemm)
//! ```

use glm5_kernels::matrix::matmul_many;
use glm5_kernels::pool::{self, SyncPtr};
use glm5_kernels::{fvec, Acts};

use crate::absorbed::{Absorbed, SeqPart};
use crate::config::Config;

/// Queries per (head, query block) unit.
const QB: usize = 32;

thread_local! {
    /// The calling thread's score block `[QB, T]`, kept between units and layers.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `dst[m, n] (= dst * alpha if read) + beta * lhs[m, k] rhs[k, n]`, single-threaded, with
/// explicit (row, column) strides.
///
/// # Safety
/// Every index the strides and sizes reach lies in its buffer.
unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    read: Option<f32>,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2,
            dst.1,
            read.is_some(),
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            read.unwrap_or(0.0),
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

impl Absorbed {
    /// Attention for one sequence's prefill rows, every key of `0..past + n` visible to its
    /// causal queries (no indexer selection): `q: [n, nh, qk]` roped; returns `[n, nh * v]`.
    pub(crate) fn attend_expanded(&self, cfg: &Config, q: &[f32], part: &SeqPart) -> Vec<f32> {
        let (nh, nope, rd, vd, r) = (
            cfg.num_attention_heads,
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.v_head_dim,
            cfg.kv_lora_rank,
        );
        let qk = nope + rd;
        let (n, past) = (part.n, part.past);
        let t_all = past + n;
        let scale = cfg.attention_scale() as f32;
        // The cache rows [T, r + rd] as f32, split into the latent [T, r] and k_rope [T, rd].
        let rows = part.kv.kv.to_f32(0, t_all);
        let w = r + rd;
        let mut c = vec![0f32; t_all * r];
        let mut k_rope = vec![0f32; t_all * rd];
        for t in 0..t_all {
            c[t * r..(t + 1) * r].copy_from_slice(&rows[t * w..t * w + r]);
            k_rope[t * rd..(t + 1) * rd].copy_from_slice(&rows[t * w + r..(t + 1) * w]);
        }
        drop(rows);
        // Expansion: per head k_nope [T, nope] and v [T, vd], one dispatch.
        let ca = Acts::new(&c, r);
        let jobs: Vec<_> = self
            .k_bt
            .iter()
            .chain(&self.v_b)
            .map(|m| (m, &ca))
            .collect();
        let kv = matmul_many(&jobs);
        let (k_nope, v) = kv.split_at(nh);
        // Units (head, block of QB queries): scores against the block's visible keys, softmax
        // rows, then the values straight into the block's rows of `out` for that head.
        let mut out = vec![0f32; n * nh * vd];
        let dst = SyncPtr(out.as_mut_ptr());
        let blocks = n.div_ceil(QB);
        pool::run(nh * blocks, &|u| {
            let (h, b) = (u % nh, u / nh);
            let (i0, i1) = (b * QB, ((b + 1) * QB).min(n));
            let (m, keys) = (i1 - i0, past + i1);
            SCORES.with_borrow_mut(|s| {
                s.resize(m * keys, 0.0);
                let sp = s.as_mut_ptr();
                let qp = q[(i0 * nh + h) * qk..].as_ptr();
                let row = (nh * qk) as isize;
                // SAFETY: s is [m, keys]; q rows i0..i1 of head h are [m, qk] at stride
                // nh * qk; k_nope[h] is [T, nope], k_rope [T, rd], keys <= T.
                unsafe {
                    gemm(
                        (m, keys, nope),
                        (sp, keys as isize, 1),
                        None,
                        (qp, row, 1),
                        (k_nope[h].as_ptr(), 1, nope as isize),
                        scale,
                    );
                    gemm(
                        (m, keys, rd),
                        (sp, keys as isize, 1),
                        Some(1.0),
                        (qp.add(nope), row, 1),
                        (k_rope.as_ptr(), 1, rd as isize),
                        scale,
                    );
                }
                for (x, sr) in s.chunks_exact_mut(keys).enumerate() {
                    // Query i0 + x sees keys 0..=past + i0 + x.
                    let (vis, hidden) = sr.split_at_mut(past + i0 + x + 1);
                    let mx = vis.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                    let l = fvec::exp_sub(vis, mx);
                    vis.iter_mut().for_each(|p| *p /= l);
                    hidden.fill(0.0);
                }
                // SAFETY: s is [m, keys], v[h] is [T, vd]; this unit alone writes rows
                // i0..i1, columns h * vd..(h + 1) * vd of out [n, nh * vd].
                unsafe {
                    gemm(
                        (m, vd, keys),
                        (dst.get().add(i0 * nh * vd + h * vd), (nh * vd) as isize, 1),
                        None,
                        (sp, keys as isize, 1),
                        (v[h].as_ptr(), vd as isize, 1),
                        1.0,
                    );
                }
            });
        });
        out
    }
}
