//! The GLM-5 family decoder (`glm_moe_dsa`, `glm4_moe_lite`, `deepseek_v32` as config options),
//! reference path: f32 compute over weights of any stored dtype, following HF transformers
//! 5.23 step by step (shared/docs/glm5-architecture.md section 3).

use glm5_format::Checkpoint;
use glm5_kernels::matrix::matmul_many;
use glm5_kernels::qdot::Q8Acts;
use glm5_kernels::rows::RowFormat;
use glm5_kernels::{cpu, fused, fvec, pool, Acts, Matrix, WFormat};

use crate::config::Config;
use crate::kv_cache::{KvCache, KvFormat};
use crate::mla::{Attention, Selection, SeqKv};
use crate::mtp::Mtp;
use crate::rope::Rope;
use crate::source::{GgufSource, HfSource, Quant, Source};
use crate::trace::Trace;
use crate::weights;
use crate::{Error, Result};

/// A linear layer `y = x W^T` with `W: [out_dim, in_dim]` in any stored format.
pub struct Linear {
    pub w: Matrix,
}

impl Linear {
    pub fn out_dim(&self) -> usize {
        self.w.rows
    }

    /// `x: [n, in_dim]` -> `[n, out_dim]`.
    pub fn forward(&self, x: &[f32], _n: usize) -> Vec<f32> {
        self.w.matmul(x)
    }
}

/// Reads tensors by checkpoint name with the shapes the config implies, and stores them as
/// `quant` says.
pub struct Loader<'a> {
    pub cfg: &'a Config,
    pub src: &'a dyn Source,
    pub quant: Quant,
}

impl Loader<'_> {
    /// `{prefix}.weight` as a `[out, in]` linear layer.
    pub fn linear(&self, prefix: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
        let name = format!("{prefix}.weight");
        if self.quant != Quant::Reference {
            if let Some(w) = self.src.stored(&name, out_dim, in_dim)? {
                let w = if self.src.repack() { w.packed() } else { w };
                return Ok(Linear { w });
            }
        }
        let w = self.src.f32(self.cfg, &name, &[out_dim, in_dim])?;
        self.store(&name, w, out_dim, in_dim)
    }

    /// f32 values `[rows, cols]` in the format `quant` picks for `name`.
    pub fn store(&self, name: &str, w: Vec<f32>, rows: usize, cols: usize) -> Result<Linear> {
        let format = self.quant.format_for(self.cfg, name, cols);
        self.store_as(name, w, rows, cols, format)
    }

    /// f32 values `[rows, cols]` stored as `format` (`name` for the error).
    pub fn store_as(
        &self,
        name: &str,
        w: Vec<f32>,
        rows: usize,
        cols: usize,
        format: WFormat,
    ) -> Result<Linear> {
        if format == WFormat::F32 {
            return Ok(Linear {
                w: Matrix::from_f32(w, rows, cols),
            });
        }
        Matrix::quantize(&w, rows, cols, format)
            .map(|w| Linear { w: w.packed() })
            .map_err(|reason| Error::Quantize {
                path: self.src.location().to_path_buf(),
                name: name.to_string(),
                reason,
            })
    }

    /// `{prefix}.weight` kept in f32 whatever `quant` says (the router).
    pub fn linear_f32(&self, prefix: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
        let w = self
            .src
            .f32(self.cfg, &format!("{prefix}.weight"), &[out_dim, in_dim])?;
        Ok(Linear {
            w: Matrix::from_f32(w, out_dim, in_dim),
        })
    }

    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.src.f32(self.cfg, name, &[len])
    }
}

/// SwiGLU MLP: `down_proj(silu(gate_proj(x)) * up_proj(x))`.
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    fn load(ld: &Loader, p: &str, inter: usize) -> Result<Mlp> {
        let h = ld.cfg.hidden_size;
        Ok(Mlp {
            gate_proj: ld.linear(&format!("{p}.gate_proj"), inter, h)?,
            up_proj: ld.linear(&format!("{p}.up_proj"), inter, h)?,
            down_proj: ld.linear(&format!("{p}.down_proj"), h, inter)?,
        })
    }

    /// `x: [n, hidden]` -> `[n, hidden]`.
    pub fn forward(&self, x: &[f32], _n: usize) -> Vec<f32> {
        let xa = Acts::new(x, self.gate_proj.w.cols);
        let (g, u) = (&self.gate_proj.w, &self.up_proj.w);
        // A decode step's SwiGLU and its quantization inside the gate/up dispatch (as in
        // `Moe::forward`; same bits).
        if fused::fits(g, u, &xa) {
            let (act, q) = fused::swiglu_many(&[(g, u, &xa)]).pop().expect("one MLP");
            let acts = Acts::quantized(&act, g.rows, q); // [n, inter]
            return matmul_many(&[(&self.down_proj.w, &acts)])
                .pop()
                .expect("one matmul");
        }
        let gu = matmul_many(&[(g, &xa), (u, &xa)]);
        let act = fvec::swiglu(&gu[0], &gu[1]); // [n, inter]
        self.down_proj.w.matmul(&act)
    }
}

/// Routed experts with a sigmoid router plus correction bias, and the shared expert.
pub struct Moe {
    /// Router `gate.weight`: `[n_routed_experts, hidden]`.
    pub gate: Linear,
    pub e_score_correction_bias: Vec<f32>,
    pub experts: Vec<Mlp>,
    pub shared_experts: Option<Mlp>,
}

impl Moe {
    fn load(ld: &Loader, p: &str) -> Result<Moe> {
        let c = ld.cfg;
        let e = c.n_routed_experts;
        let experts = (0..e)
            .map(|x| Mlp::load(ld, &format!("{p}.experts.{x}"), c.moe_intermediate_size))
            .collect::<Result<Vec<_>>>()?;
        let shared_experts = match c.n_shared_experts {
            0 => None,
            s => Some(Mlp::load(
                ld,
                &format!("{p}.shared_experts"),
                c.moe_intermediate_size * s,
            )?),
        };
        Ok(Moe {
            gate: ld.linear_f32(&format!("{p}.gate"), e, c.hidden_size)?,
            e_score_correction_bias: ld.vector(&format!("{p}.gate.e_score_correction_bias"), e)?,
            experts,
            shared_experts,
        })
    }

    /// The router for one token: `(expert ids, weights)` and the (group-masked) selection scores.
    pub fn route(&self, cfg: &Config, logits: &[f32]) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
        let e = cfg.n_routed_experts;
        let scores: Vec<f32> = logits.iter().map(|&l| cpu::sigmoid(l)).collect();
        let mut choice: Vec<f32> = scores
            .iter()
            .zip(&self.e_score_correction_bias)
            .map(|(s, b)| s + b)
            .collect();
        // Group-limited routing: a group's score is the sum of its two best experts.
        let per_group = e / cfg.n_group;
        let group_scores: Vec<f32> = choice
            .chunks(per_group)
            .map(|g| cpu::topk(g, 2).iter().map(|&i| g[i]).sum())
            .collect();
        let keep = cpu::topk(&group_scores, cfg.topk_group);
        for (g, chunk) in choice.chunks_mut(per_group).enumerate() {
            if !keep.contains(&g) {
                chunk.iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
            }
        }
        let idx = cpu::topk(&choice, cfg.num_experts_per_tok);
        let mut w: Vec<f32> = idx.iter().map(|&i| scores[i]).collect(); // without the bias
        if cfg.norm_topk_prob {
            let denom = w.iter().sum::<f32>() + 1e-20;
            w.iter_mut().for_each(|v| *v /= denom);
        }
        w.iter_mut()
            .for_each(|v| *v *= cfg.routed_scaling_factor as f32);
        (idx, w, choice)
    }

    /// `x: [n, hidden]` -> `[n, hidden]`.
    fn forward(
        &self,
        cfg: &Config,
        x: &[f32],
        n: usize,
        layer: usize,
        trace: Option<&mut Trace>,
        routed: Option<&mut Vec<u32>>,
    ) -> Vec<f32> {
        let h = cfg.hidden_size;
        let logits = self.gate.forward(x, n); // [n, n_routed_experts], f32
        let routes: Vec<_> = logits
            .chunks(cfg.n_routed_experts)
            .map(|l| self.route(cfg, l))
            .collect();
        if let Some(out) = routed {
            // [n, num_experts_per_tok], in the router's selection order.
            out.extend(routes.iter().flat_map(|r| r.0.iter().map(|&e| e as u32)));
        }
        if let Some(tr) = trace {
            let p = format!("layers.{layer}.mlp.gate");
            let k = cfg.num_experts_per_tok;
            tr.record(
                format!("{p}.topk"),
                vec![n, k],
                routes
                    .iter()
                    .flat_map(|r| r.0.iter().map(|&i| i as f32))
                    .collect(),
            );
            tr.record(
                format!("{p}.scores_for_choice"),
                vec![n, cfg.n_routed_experts],
                routes.iter().flat_map(|r| r.2.clone()).collect(),
            );
        }
        // Group tokens by expert: one pass over each chosen expert's weights, and all experts'
        // gate/up rows (then all down rows) in one pool dispatch.
        let mut users: Vec<Vec<(usize, f32)>> = vec![Vec::new(); self.experts.len()];
        for (t, r) in routes.iter().enumerate() {
            for (&e, &w) in r.0.iter().zip(&r.1) {
                users[e].push((t, w));
            }
        }
        let active: Vec<usize> = (0..self.experts.len())
            .filter(|&e| !users[e].is_empty())
            .collect();
        // An expert that every token chose, in order (every expert of a decode step), reads
        // `x` itself, quantized once; the others read their users' rows gathered.
        let everyone = |e: usize| users[e].iter().map(|u| u.0).eq(0..n);
        let xall = Acts::new(x, h);
        // A prefill's per-expert copies and products run on the pool, one expert per unit
        // (they were ~6% of a 512-token prompt on one thread); a decode step's stay here.
        let par = n * h >= pool::PARALLEL_MIN;
        let xs: Vec<Option<Vec<f32>>> = pool::map(active.len(), par, &|k| {
            let e = active[k];
            (!everyone(e)).then(|| {
                let mut v = Vec::with_capacity(users[e].len() * h);
                for &(t, _) in &users[e] {
                    v.extend_from_slice(&x[t * h..(t + 1) * h]);
                }
                v
            })
        });
        // The gathered rows' 8-bit forms are copied from `xall`'s (each token's row is quantized
        // once, not once per expert that chose it).
        let acts: Vec<Option<Acts>> = pool::map(active.len(), par, &|k| {
            xs[k].as_ref().map(|v| {
                let rows: Vec<usize> = users[active[k]].iter().map(|u| u.0).collect();
                Acts::gather(&xall, &rows, v)
            })
        });
        let mut jobs = Vec::new();
        for (k, &e) in active.iter().enumerate() {
            let a = acts[k].as_ref().unwrap_or(&xall);
            jobs.push((&self.experts[e].gate_proj.w, a));
            jobs.push((&self.experts[e].up_proj.w, a));
        }
        if let Some(s) = &self.shared_experts {
            jobs.push((&s.gate_proj.w, &xall));
            jobs.push((&s.up_proj.w, &xall));
        }
        // A decode step's SwiGLU and the quantization of its hidden rows run inside the gate/up
        // dispatch, each unit on the rows it just computed (`fused::swiglu_many`, same bits);
        // otherwise after it.
        let fused = !par
            && jobs
                .chunks(2)
                .all(|gu| fused::fits(gu[0].0, gu[1].0, gu[0].1));
        // With `fused`, the hidden rows' 8-bit forms come along (`q8`, else empty).
        let (hidden, q8): (Vec<Vec<f32>>, Vec<Q8Acts>) = if fused {
            let mlps: Vec<_> = jobs
                .chunks(2)
                .map(|gu| (gu[0].0, gu[1].0, gu[0].1))
                .collect();
            fused::swiglu_many(&mlps).into_iter().unzip()
        } else {
            let gu = matmul_many(&jobs);
            let hidden = pool::map(gu.len() / 2, par, &|k| {
                fvec::swiglu(&gu[2 * k], &gu[2 * k + 1])
            });
            (hidden, Vec::new())
        };
        // Otherwise a decode step's routed hidden rows (one width, a few KB) are quantized
        // together, each expert's matmul reading its rows of them (one call instead of one per
        // expert); a prefill's, per expert on the pool (no copy of megabytes).
        let (routed_x, routed);
        let hacts: Vec<Acts> = if fused {
            hidden
                .iter()
                .zip(q8)
                .zip(jobs.iter().step_by(2))
                .map(|((h, q), (m, _))| Acts::quantized(h, m.rows, q))
                .collect()
        } else if par {
            pool::map(hidden.len(), par, &|k| {
                Acts::new(&hidden[k], jobs[2 * k].0.rows)
            })
        } else {
            routed_x = hidden[..active.len()].concat(); // [sum of users, moe_intermediate_size]
            routed = Acts::new(&routed_x, jobs[0].0.rows);
            let mut v = Vec::with_capacity(hidden.len());
            let mut row = 0;
            for &e in &active {
                v.push(Acts::rows(&routed, row, row + users[e].len()));
                row += users[e].len();
            }
            if let Some(s) = &self.shared_experts {
                v.push(Acts::new(&hidden[active.len()], s.down_proj.w.cols));
            }
            v
        };
        let mut down = Vec::new();
        for (k, &e) in active.iter().enumerate() {
            down.push((&self.experts[e].down_proj.w, &hacts[k]));
        }
        if let Some(s) = &self.shared_experts {
            down.push((&s.down_proj.w, &hacts[active.len()]));
        }
        let outs = matmul_many(&down); // per expert [users, hidden], then the shared [n, hidden]

        // Per token, its experts' outputs in ascending expert order, then the shared expert's
        // (the order, and so the bits, of adding expert by expert over all tokens).
        let mut from: Vec<Vec<(usize, usize, f32)>> = vec![Vec::new(); n]; // (k, user, weight)
        for (k, &e) in active.iter().enumerate() {
            for (u, &(t, wt)) in users[e].iter().enumerate() {
                from[t].push((k, u, wt));
            }
        }
        let mut y = vec![0f32; n * h];
        pool::rows_mut(&mut y, h, 8, &|t0, ys| {
            for (i, yt) in ys.chunks_mut(h).enumerate() {
                let t = t0 + i;
                for &(k, u, wt) in &from[t] {
                    fvec::axpy(yt, wt, &outs[k][u * h..(u + 1) * h]);
                }
                if self.shared_experts.is_some() {
                    let s = &outs[active.len()][t * h..(t + 1) * h];
                    yt.iter_mut().zip(s).for_each(|(a, b)| *a += b);
                }
            }
        });
        y
    }
}

pub enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

pub struct DecoderLayer {
    pub input_layernorm: Vec<f32>,
    pub post_attention_layernorm: Vec<f32>,
    pub self_attn: Attention,
    pub mlp: Ffn,
}

impl DecoderLayer {
    pub fn load(ld: &Loader, l: usize, moe: bool, with_indexer: bool) -> Result<DecoderLayer> {
        let c = ld.cfg;
        let p = format!("model.layers.{l}");
        Ok(DecoderLayer {
            input_layernorm: ld.vector(&format!("{p}.input_layernorm.weight"), c.hidden_size)?,
            post_attention_layernorm: ld.vector(
                &format!("{p}.post_attention_layernorm.weight"),
                c.hidden_size,
            )?,
            self_attn: Attention::load(ld, &format!("{p}.self_attn"), with_indexer)?,
            mlp: if moe {
                Ffn::Moe(Moe::load(ld, &format!("{p}.mlp"))?)
            } else {
                Ffn::Dense(Mlp::load(ld, &format!("{p}.mlp"), c.intermediate_size)?)
            },
        })
    }

    /// Every weight matrix, for accounting.
    pub fn weights(&self) -> Vec<&Matrix> {
        let mut v = self.self_attn.weights();
        v.extend(self.self_attn.prefill_weights());
        match &self.mlp {
            Ffn::Dense(m) => v.extend([&m.gate_proj.w, &m.up_proj.w, &m.down_proj.w]),
            Ffn::Moe(m) => {
                v.push(&m.gate.w);
                for e in m.experts.iter().chain(&m.shared_experts) {
                    v.extend([&e.gate_proj.w, &e.up_proj.w, &e.down_proj.w]);
                }
            }
        }
        v
    }

    /// `h = x + attn(input_layernorm(x)); out = h + mlp(post_attention_layernorm(h))`.
    /// `x`: `[n, hidden]`, the rows of every sequence in `seqs` back to back. `routed`: an MoE
    /// layer appends each row's chosen experts, `[n, num_experts_per_tok]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        cfg: &Config,
        rope: &Rope,
        x: &mut [f32],
        seqs: &mut [SeqKv],
        layer: usize,
        mut trace: Option<&mut Trace>,
        routed: Option<&mut Vec<u32>>,
    ) -> Result<()> {
        let n: usize = seqs.iter().map(|s| s.n).sum();
        let eps = cfg.rms_norm_eps as f32;
        let normed = cpu::rms_norm(x, &self.input_layernorm, eps);
        let attn = self
            .self_attn
            .forward(cfg, rope, &normed, seqs, layer, trace.as_deref_mut())?;
        x.iter_mut().zip(&attn).for_each(|(a, b)| *a += b);
        let normed = cpu::rms_norm(x, &self.post_attention_layernorm, eps);
        let ffn = match &self.mlp {
            Ffn::Dense(m) => m.forward(&normed, n),
            Ffn::Moe(m) => m.forward(cfg, &normed, n, layer, trace.as_deref_mut(), routed),
        };
        x.iter_mut().zip(&ffn).for_each(|(a, b)| *a += b);

        if let Some(tr) = trace {
            tr.record(
                format!("layers.{layer}.output"),
                vec![n, cfg.hidden_size],
                x.to_vec(),
            );
        }
        Ok(())
    }
}

/// The whole model. `quant` says how its weights are held: `Quant::Reference` is the f32
/// reference path (expanded K/V attention); anything else is the fast path (stored or
/// quantized weights, absorbed MLA over the latent cache).
pub struct Model {
    pub cfg: Config,
    pub quant: Quant,
    /// `[vocab_size, hidden]`; rows are looked up, and it is the head when tied.
    pub embed_tokens: Matrix,
    pub layers: Vec<DecoderLayer>,
    pub norm: Vec<f32>,
    /// `None` when tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
    pub rope: Rope,
    /// The Multi-Token-Prediction layer, when the checkpoint has one (`crate::mtp`).
    pub mtp: Option<Mtp>,
    /// Skip the DSA selection and attend to every causal key (for comparison; the indexer
    /// keys are still cached). Off by default.
    pub dense_attention: bool,
    /// How new caches store their rows (`set_kv_format`): f32 for f32 weights and the
    /// reference path, bf16 otherwise.
    kv_format: KvFormat,
}

impl Model {
    /// Open a checkpoint folder, check it against its config and load every main-model tensor
    /// on the reference path.
    pub fn load(dir: &std::path::Path) -> Result<Model> {
        Model::load_as(dir, Quant::Reference)
    }

    /// Open an HF folder or a `.gguf` file and hold its weights as `quant` says (a GGUF's
    /// quantized tensors are used as stored), with the MTP layer where the weights have one.
    pub fn load_as(path: &std::path::Path, quant: Quant) -> Result<Model> {
        Model::load_with(path, quant, true)
    }

    /// `load_as`, loading the MTP layer only when `mtp` is true: without speculative decoding
    /// its weights (a whole MoE layer) never enter memory, not even while loading.
    pub fn load_with(path: &std::path::Path, quant: Quant, mtp: bool) -> Result<Model> {
        if path.is_file() {
            let src = GgufSource::open(path)?;
            let cfg = Config::from_json(&crate::gguf_map::config_json(&src.file)?, path)?;
            return Model::from_source(cfg, &src, quant, mtp);
        }
        let ckpt = Checkpoint::open(path)?;
        let cfg = Config::from_json(&ckpt.config, &path.join("config.json"))?;
        let report = weights::check(&cfg, &ckpt)?;
        if let Some(name) = report.missing.first() {
            return Err(Error::MissingTensor {
                dir: path.to_path_buf(),
                name: name.clone(),
            });
        }
        Model::from_source(cfg, &HfSource { ckpt: &ckpt }, quant, mtp)
    }

    pub fn from_checkpoint(cfg: Config, ckpt: &Checkpoint) -> Result<Model> {
        Model::from_source(cfg, &HfSource { ckpt }, Quant::Reference, true)
    }

    pub fn from_source(cfg: Config, src: &dyn Source, quant: Quant, mtp: bool) -> Result<Model> {
        let ld = Loader {
            cfg: &cfg,
            src,
            quant,
        };
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| DecoderLayer::load(&ld, l, cfg.is_moe_layer(l), cfg.has_indexer(l)))
            .collect::<Result<Vec<_>>>()?;
        let embed_tokens = ld.linear("model.embed_tokens", v, h)?.w;
        let norm = ld.vector("model.norm.weight", h)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(ld.linear("lm_head", v, h)?)
        };
        let rope = Rope::new(&cfg);
        let mtp = if mtp {
            Mtp::load_if_present(&ld)?
        } else {
            None
        };
        Ok(Model {
            cfg,
            quant,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            mtp,
            dense_attention: false,
            kv_format: match quant {
                Quant::Reference | Quant::Uniform(WFormat::F32) => KvFormat::F32,
                _ => KvFormat::BF16,
            },
        })
    }

    /// Bytes of weights held (stored form).
    pub fn weight_bytes(&self) -> usize {
        let mtp = self.mtp.iter().flat_map(|m| m.weights());
        self.weights()
            .into_iter()
            .chain(mtp)
            .map(|m| m.nbytes())
            .sum()
    }

    /// Every weight matrix of the main model (not the MTP layer), for accounting.
    pub fn weights(&self) -> Vec<&Matrix> {
        let mut v = vec![&self.embed_tokens];
        if let Some(hd) = &self.lm_head {
            v.push(&hd.w);
        }
        for l in &self.layers {
            v.extend(l.weights());
        }
        v
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(&self.cfg, self.kv_format)
    }

    pub fn kv_format(&self) -> KvFormat {
        self.kv_format
    }

    /// Store the rows of caches made from now on as `fmt` (`--kv-cache`, `--index-cache`).
    /// The reference path keeps f32 rows; 8-bit rows are for the indexer keys only.
    pub fn set_kv_format(&mut self, fmt: KvFormat) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::KvFormat(format!("{field}: {why}")));
        if fmt.kv == RowFormat::Q8 {
            return bad(
                "kv cache",
                "8-bit rows are for the indexer keys only (use f32 or bf16)".into(),
            );
        }
        if self.quant == Quant::Reference && fmt != KvFormat::F32 {
            return bad(
                "kv cache",
                "the reference path computes in f32 and keeps an f32 cache".into(),
            );
        }
        if let (RowFormat::Q8, Some(ix)) = (fmt.index, &self.cfg.indexer) {
            if !ix.index_head_dim.is_multiple_of(4) {
                return bad(
                    "index cache",
                    format!(
                        "8-bit keys need index_head_dim divisible by 4, not {}",
                        ix.index_head_dim
                    ),
                );
            }
        }
        self.kv_format = fmt;
        Ok(())
    }

    /// Run `tokens` at positions `cache.len ..`, appending them to the cache.
    /// Returns the final-normed hidden states `[n, hidden]`.
    pub fn forward_hidden(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>> {
        self.forward_batch(&mut [(tokens, cache)], trace)
    }

    /// Several sequences in one forward pass: each appends its tokens to its own cache. The
    /// matmuls and experts run once over all rows; attention runs per sequence. Returns the
    /// final-normed hidden states of every row, `[sum n, hidden]`, sequences back to back.
    pub fn forward_batch(
        &self,
        seqs: &mut [(&[u32], &mut KvCache)],
        trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>> {
        self.forward_batch_routed(seqs, trace, None)
    }

    /// `forward_batch`, also writing into `routes` the experts each row was routed to in every
    /// layer: `[sum n, num_hidden_layers, num_experts_per_tok]`, in the router's selection
    /// order, 0 in dense layers (the layout of SGLang's `routed_experts`).
    pub fn forward_batch_routed(
        &self,
        seqs: &mut [(&[u32], &mut KvCache)],
        mut trace: Option<&mut Trace>,
        mut routes: Option<&mut Vec<u32>>,
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let n: usize = seqs.iter().map(|(t, _)| t.len()).sum();
        if seqs.is_empty() || seqs.iter().any(|(t, _)| t.is_empty()) {
            return Err(Error::EmptyInput);
        }
        for (tokens, cache) in seqs.iter() {
            if cache.len + tokens.len() > cfg.max_position_embeddings {
                return Err(Error::ContextOverflow {
                    pos: cache.len + tokens.len(),
                    max: cfg.max_position_embeddings,
                });
            }
        }
        let mut x = self.embed(seqs.iter().flat_map(|(t, _)| t.iter()).copied(), n)?; // [n, hidden]
        let mut selections: Vec<Selection> = vec![None; seqs.len()];
        let (layers, k) = (self.layers.len(), cfg.num_experts_per_tok);
        if let Some(r) = routes.as_deref_mut() {
            r.clear();
            r.resize(n * layers * k, 0);
        }
        let mut layer_routes = Vec::new(); // [n, k] of one layer
        for (l, layer) in self.layers.iter().enumerate() {
            let mut slots: Vec<SeqKv> = seqs
                .iter_mut()
                .zip(selections.iter_mut())
                .map(|((t, c), sel)| SeqKv {
                    n: t.len(),
                    kv: &mut c.layers[l],
                    selection: sel.take(),
                    dense: self.dense_attention,
                })
                .collect();
            layer_routes.clear();
            let want = routes.is_some().then_some(&mut layer_routes);
            layer.forward(
                cfg,
                &self.rope,
                &mut x,
                &mut slots,
                l,
                trace.as_deref_mut(),
                want,
            )?;
            for (slot, sel) in slots.into_iter().zip(selections.iter_mut()) {
                *sel = slot.selection;
            }
            if let Some(r) = routes.as_deref_mut() {
                for (row, ids) in layer_routes.chunks_exact(k).enumerate() {
                    r[(row * layers + l) * k..][..k].copy_from_slice(ids);
                }
            }
        }
        for (t, c) in seqs.iter_mut() {
            c.len += t.len();
        }
        Ok(cpu::rms_norm(&x, &self.norm, cfg.rms_norm_eps as f32))
    }

    /// `embed_tokens` rows of `n` token ids: `[n, hidden]`.
    pub fn embed(&self, tokens: impl Iterator<Item = u32>, n: usize) -> Result<Vec<f32>> {
        let vocab_size = self.cfg.vocab_size;
        let mut x = Vec::with_capacity(n * self.cfg.hidden_size);
        for t in tokens {
            if t as usize >= vocab_size {
                return Err(Error::TokenOutOfRange { id: t, vocab_size });
            }
            x.extend(self.embed_tokens.row_f32(t as usize));
        }
        Ok(x)
    }

    /// Logits `[n, vocab_size]` for `tokens` appended to the cache.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>> {
        let hidden = self.forward_hidden(tokens, cache, trace)?;
        Ok(self.logits(&hidden, tokens.len()))
    }

    /// `lm_head(hidden)`: `[n, hidden]` -> `[n, vocab_size]`.
    pub fn logits(&self, hidden: &[f32], _n: usize) -> Vec<f32> {
        match &self.lm_head {
            Some(head) => head.w.matmul(hidden),
            None => self.embed_tokens.matmul(hidden),
        }
    }
}
