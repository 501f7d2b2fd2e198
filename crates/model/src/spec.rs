//! What a config implies about a checkpoint: every tensor name with its shape and role, the
//! parameter counts, and the KV-cache size per token. Only this file and `weights.rs` know the
//! checkpoint's string names.

use crate::config::Config;

/// What a tensor is for; decides FP8 eligibility and how `synth` initialises it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Embedding,
    LmHead,
    /// RMSNorm / LayerNorm scale.
    Norm,
    /// LayerNorm bias (indexer `k_norm.bias`).
    NormBias,
    /// A projection that GLM-5-FP8 stores block-quantized.
    Linear,
    /// A projection that stays high precision (router `gate`, indexer `weights_proj`, MTP `eh_proj`).
    LinearHighPrecision,
    /// `e_score_correction_bias`, kept in f32.
    RouterBias,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
    /// Decoder layer index (MTP layers count from `num_hidden_layers`).
    pub layer: Option<usize>,
    /// Routed expert index, for the active-parameter count.
    pub expert: Option<usize>,
    pub mtp: bool,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Builder<'a> {
    cfg: &'a Config,
    out: Vec<TensorSpec>,
    layer: Option<usize>,
    mtp: bool,
}

impl Builder<'_> {
    fn push(&mut self, name: String, shape: Vec<usize>, role: Role, expert: Option<usize>) {
        self.out.push(TensorSpec {
            name,
            shape,
            role,
            layer: self.layer,
            expert,
            mtp: self.mtp,
        });
    }

    fn mlp(&mut self, p: &str, inter: usize, expert: Option<usize>) {
        let h = self.cfg.hidden_size;
        self.push(
            format!("{p}.gate_proj.weight"),
            vec![inter, h],
            Role::Linear,
            expert,
        );
        self.push(
            format!("{p}.up_proj.weight"),
            vec![inter, h],
            Role::Linear,
            expert,
        );
        self.push(
            format!("{p}.down_proj.weight"),
            vec![h, inter],
            Role::Linear,
            expert,
        );
    }

    fn decoder_layer(&mut self, l: usize, moe: bool, indexer: bool) {
        let c = self.cfg;
        let (h, nh) = (c.hidden_size, c.num_attention_heads);
        let p = format!("model.layers.{l}");
        self.layer = Some(l);
        self.push(
            format!("{p}.input_layernorm.weight"),
            vec![h],
            Role::Norm,
            None,
        );
        self.push(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            Role::Norm,
            None,
        );
        let a = format!("{p}.self_attn");
        match c.q_lora_rank {
            Some(qr) => {
                self.push(
                    format!("{a}.q_a_proj.weight"),
                    vec![qr, h],
                    Role::Linear,
                    None,
                );
                self.push(
                    format!("{a}.q_a_layernorm.weight"),
                    vec![qr],
                    Role::Norm,
                    None,
                );
                self.push(
                    format!("{a}.q_b_proj.weight"),
                    vec![nh * c.qk_head_dim(), qr],
                    Role::Linear,
                    None,
                );
            }
            None => self.push(
                format!("{a}.q_proj.weight"),
                vec![nh * c.qk_head_dim(), h],
                Role::Linear,
                None,
            ),
        }
        self.push(
            format!("{a}.kv_a_proj_with_mqa.weight"),
            vec![c.latent_dim(), h],
            Role::Linear,
            None,
        );
        self.push(
            format!("{a}.kv_a_layernorm.weight"),
            vec![c.kv_lora_rank],
            Role::Norm,
            None,
        );
        self.push(
            format!("{a}.kv_b_proj.weight"),
            vec![nh * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank],
            Role::Linear,
            None,
        );
        self.push(
            format!("{a}.o_proj.weight"),
            vec![h, nh * c.v_head_dim],
            Role::Linear,
            None,
        );
        if let (true, Some(ix)) = (indexer, &c.indexer) {
            let i = format!("{a}.indexer");
            let qr = c.q_lora_rank.unwrap_or(h);
            let d = ix.index_head_dim;
            self.push(
                format!("{i}.wq_b.weight"),
                vec![ix.index_n_heads * d, qr],
                Role::Linear,
                None,
            );
            self.push(format!("{i}.wk.weight"), vec![d, h], Role::Linear, None);
            self.push(format!("{i}.k_norm.weight"), vec![d], Role::Norm, None);
            self.push(format!("{i}.k_norm.bias"), vec![d], Role::NormBias, None);
            self.push(
                format!("{i}.weights_proj.weight"),
                vec![ix.index_n_heads, h],
                Role::LinearHighPrecision,
                None,
            );
        }
        if moe {
            let m = format!("{p}.mlp");
            let e = c.n_routed_experts;
            self.push(
                format!("{m}.gate.weight"),
                vec![e, h],
                Role::LinearHighPrecision,
                None,
            );
            self.push(
                format!("{m}.gate.e_score_correction_bias"),
                vec![e],
                Role::RouterBias,
                None,
            );
            for x in 0..e {
                self.mlp(
                    &format!("{m}.experts.{x}"),
                    c.moe_intermediate_size,
                    Some(x),
                );
            }
            if c.n_shared_experts > 0 {
                self.mlp(
                    &format!("{m}.shared_experts"),
                    c.moe_intermediate_size * c.n_shared_experts,
                    None,
                );
            }
        } else {
            self.mlp(&format!("{p}.mlp"), c.intermediate_size, None);
        }
    }
}

/// Every tensor the config implies, main model first, then the MTP layers.
pub fn tensor_specs(cfg: &Config) -> Vec<TensorSpec> {
    let mut b = Builder {
        cfg,
        out: Vec::new(),
        layer: None,
        mtp: false,
    };
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    b.push(
        "model.embed_tokens.weight".into(),
        vec![v, h],
        Role::Embedding,
        None,
    );
    for l in 0..cfg.num_hidden_layers {
        b.decoder_layer(l, cfg.is_moe_layer(l), cfg.has_indexer(l));
    }
    b.layer = None;
    b.push("model.norm.weight".into(), vec![h], Role::Norm, None);
    if !cfg.tie_word_embeddings {
        b.push("lm_head.weight".into(), vec![v, h], Role::LmHead, None);
    }
    b.mtp = true;
    for k in 0..cfg.num_nextn_predict_layers {
        let l = cfg.num_hidden_layers + k;
        let p = format!("model.layers.{l}");
        b.layer = Some(l);
        b.push(format!("{p}.enorm.weight"), vec![h], Role::Norm, None);
        b.push(format!("{p}.hnorm.weight"), vec![h], Role::Norm, None);
        b.push(
            format!("{p}.eh_proj.weight"),
            vec![h, 2 * h],
            Role::LinearHighPrecision,
            None,
        );
        b.push(
            format!("{p}.shared_head.norm.weight"),
            vec![h],
            Role::Norm,
            None,
        );
        b.decoder_layer(l, true, cfg.indexer.is_some());
    }
    b.out
}

/// Parameter counts implied by the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamCounts {
    /// All parameters of the main model (embeddings and head included, MTP excluded).
    pub total: u64,
    /// Parameters touched per token: `total` minus the embedding table and the routed experts a
    /// token does not pick (`n_routed_experts - num_experts_per_tok` per MoE layer).
    pub active: u64,
    /// Parameters of the MTP layers (sharing embeddings and head with the main model).
    pub mtp: u64,
}

pub fn param_counts(cfg: &Config) -> ParamCounts {
    let specs = tensor_specs(cfg);
    let mut total = 0u64;
    let mut mtp = 0u64;
    let mut embed = 0u64;
    let mut expert_params = 0u64;
    for s in &specs {
        let n = s.numel() as u64;
        if s.mtp {
            mtp += n;
            continue;
        }
        total += n;
        if s.role == Role::Embedding {
            embed += n;
        }
        if s.expert.is_some() {
            expert_params += n;
        }
    }
    // Active experts: top-k of n_routed per MoE layer.
    let active_experts =
        expert_params * cfg.num_experts_per_tok as u64 / cfg.n_routed_experts as u64;
    let embed_active = if cfg.tie_word_embeddings { 0 } else { embed };
    ParamCounts {
        total,
        active: total - embed_active - expert_params + active_experts,
        mtp,
    }
}

/// Values stored in the KV cache per token, summed over the main layers:
/// the latent row (`kv_lora_rank + qk_rope_head_dim`) plus, for layers that run an indexer,
/// one `index_head_dim` key.
pub fn kv_values_per_token(cfg: &Config) -> (usize, usize) {
    let latent = cfg.num_hidden_layers * cfg.latent_dim();
    let index = (0..cfg.num_hidden_layers)
        .filter(|&l| cfg.has_indexer(l))
        .count()
        * cfg.indexer.as_ref().map_or(0, |ix| ix.index_head_dim);
    (latent, index)
}
