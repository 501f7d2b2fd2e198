//! llama.cpp's `glm-dsa` GGUF conventions (gguf-py `constants.py` / `tensor_mapping.py`, the
//! converter's `GlmMoeDsaModel(DeepseekV2Model)`): tensor names, the metadata keys that make up
//! a config, and how the converter reshapes tensors.
//!
//! * Routed experts are merged per layer into `ffn_{gate,up,down}_exps` `[n_expert, rows, cols]`.
//! * `kv_b_proj` `[n_head * (nope + v), kv_lora_rank]` is split into `attn_k_b`
//!   `[n_head, kv_lora_rank, nope]` (transposed per head) and `attn_v_b` `[n_head, v, kv_lora_rank]`.
//! * The MTP layer is block `num_hidden_layers` with its own `nextn.*` tensors.
//! * `attention.indexer.types` is a bool per main layer: true = full, false = shared.

use glm5_format::{GgufFile, GgufValue};
use serde_json::{json, Map, Value};

use crate::{Error, Result};

pub const ARCH: &str = "glm-dsa";

/// Split `kv_b_proj` `[nh * (nope + v), r]` the converter's way: `attn_k_b` = per head `W_UK^T`,
/// `[nh * r, nope]`, and `attn_v_b` = per head `W_UV`, `[nh * v, r]`.
pub fn split_kv_b(w: &[f32], nh: usize, nope: usize, vd: usize, r: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut k_b, mut v_b) = (
        Vec::with_capacity(nh * r * nope),
        Vec::with_capacity(nh * vd * r),
    );
    for rows in w.chunks_exact((nope + vd) * r) {
        for c in 0..r {
            k_b.extend((0..nope).map(|d| rows[d * r + c]));
        }
        v_b.extend_from_slice(&rows[nope * r..]);
    }
    (k_b, v_b)
}

/// The layer index in an HF name `model.layers.{l}.…`.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// HF name -> (GGUF name, expert index into a merged tensor).
pub fn gguf_name(hf: &str, n_main: usize) -> Option<(String, Option<usize>)> {
    let top = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some((t.into(), None));
    }
    let l = layer_of(hf)?;
    let rest = hf.strip_prefix(&format!("model.layers.{l}."))?;
    let b = format!("blk.{l}");
    if let Some(e) = rest.strip_prefix("mlp.experts.") {
        let (idx, proj) = e.split_once('.')?;
        let idx: usize = idx.parse().ok()?;
        let g = match proj {
            "gate_proj.weight" => "ffn_gate_exps",
            "up_proj.weight" => "ffn_up_exps",
            "down_proj.weight" => "ffn_down_exps",
            _ => return None,
        };
        return Some((format!("{b}.{g}.weight"), Some(idx)));
    }
    let g = match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_a_proj.weight" => "attn_q_a.weight",
        "self_attn.q_a_layernorm.weight" => "attn_q_a_norm.weight",
        "self_attn.q_b_proj.weight" => "attn_q_b.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.kv_a_proj_with_mqa.weight" => "attn_kv_a_mqa.weight",
        "self_attn.kv_a_layernorm.weight" => "attn_kv_a_norm.weight",
        "self_attn.kv_b_proj.weight" => "attn_kv_b.weight",
        "self_attn.k_b_proj.weight" => "attn_k_b.weight",
        "self_attn.v_b_proj.weight" => "attn_v_b.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.indexer.wq_b.weight" => "indexer.attn_q_b.weight",
        "self_attn.indexer.wk.weight" => "indexer.attn_k.weight",
        "self_attn.indexer.k_norm.weight" => "indexer.k_norm.weight",
        "self_attn.indexer.k_norm.bias" => "indexer.k_norm.bias",
        "self_attn.indexer.weights_proj.weight" => "indexer.proj.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "mlp.gate.weight" => "ffn_gate_inp.weight",
        "mlp.gate.e_score_correction_bias" => "exp_probs_b.bias",
        "mlp.shared_experts.gate_proj.weight" => "ffn_gate_shexp.weight",
        "mlp.shared_experts.up_proj.weight" => "ffn_up_shexp.weight",
        "mlp.shared_experts.down_proj.weight" => "ffn_down_shexp.weight",
        _ if l >= n_main => match rest {
            "enorm.weight" => "nextn.enorm.weight",
            "hnorm.weight" => "nextn.hnorm.weight",
            "eh_proj.weight" => "nextn.eh_proj.weight",
            "shared_head.norm.weight" => "nextn.shared_head_norm.weight",
            "shared_head.head.weight" => "nextn.shared_head_head.weight",
            "embed_tokens.weight" => "nextn.embed_tokens.weight",
            _ => return None,
        },
        _ => return None,
    };
    Some((format!("{b}.{g}"), None))
}

fn key<'a>(f: &'a GgufFile, k: &str) -> Option<&'a GgufValue> {
    f.get(&format!("{ARCH}.{k}"))
}

fn need_u(f: &GgufFile, k: &str) -> Result<usize> {
    key(f, k)
        .and_then(GgufValue::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| Error::Gguf {
            path: f.path.clone(),
            tensor: format!("{ARCH}.{k}"),
            reason: "required metadata key is missing or not an integer".into(),
        })
}

fn check_arch(f: &GgufFile) -> Result<()> {
    match f.architecture() {
        Some(ARCH) => Ok(()),
        other => Err(Error::Gguf {
            path: f.path.clone(),
            tensor: "general.architecture".into(),
            reason: format!(
                "architecture '{}' is not {ARCH} (glm5 runs GLM-5 family GGUFs)",
                other.unwrap_or("<missing>")
            ),
        }),
    }
}

/// Main-model layers: `block_count` minus the MTP blocks.
pub fn main_layers(f: &GgufFile) -> Result<usize> {
    check_arch(f)?;
    let blocks = need_u(f, "block_count")?;
    let nextn = key(f, "nextn_predict_layers")
        .and_then(GgufValue::as_u64)
        .unwrap_or(0) as usize;
    blocks
        .checked_sub(nextn)
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::Gguf {
            path: f.path.clone(),
            tensor: format!("{ARCH}.block_count"),
            reason: format!("{blocks} blocks cannot hold {nextn} MTP layers and a main model"),
        })
}

/// An HF-style `config.json` object from the GGUF metadata, for `Config::from_json`.
pub fn config_json(f: &GgufFile) -> Result<Value> {
    let n_main = main_layers(f)?;
    let u = |k: &str| need_u(f, k);
    let opt_u = |k: &str| key(f, k).and_then(GgufValue::as_u64);
    let opt_f = |k: &str| key(f, k).and_then(GgufValue::as_f64);
    let rope_dim = u("rope.dimension_count")?;
    let key_mla = u("attention.key_length_mla")?;
    let vocab = match opt_u("vocab_size") {
        Some(v) => v as usize,
        None => f
            .tensors
            .get("token_embd.weight")
            .map(|t| t.shape()[0])
            .ok_or_else(|| Error::MissingTensor {
                dir: f.path.clone(),
                name: "token_embd.weight".into(),
            })?,
    };
    let mut c = Map::new();
    c.insert("model_type".into(), json!("glm_moe_dsa"));
    c.insert("architectures".into(), json!(["GlmMoeDsaForCausalLM"]));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("hidden_size".into(), json!(u("embedding_length")?));
    c.insert("intermediate_size".into(), json!(u("feed_forward_length")?));
    c.insert(
        "moe_intermediate_size".into(),
        json!(u("expert_feed_forward_length")?),
    );
    c.insert("num_hidden_layers".into(), json!(n_main));
    let heads = u("attention.head_count")?;
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(heads));
    match opt_u("attention.q_lora_rank") {
        Some(q) => c.insert("q_lora_rank".into(), json!(q)),
        None => c.insert("q_lora_rank".into(), Value::Null),
    };
    c.insert("kv_lora_rank".into(), json!(u("attention.kv_lora_rank")?));
    c.insert("qk_rope_head_dim".into(), json!(rope_dim));
    c.insert(
        "qk_nope_head_dim".into(),
        json!(key_mla.saturating_sub(rope_dim)),
    );
    c.insert("v_head_dim".into(), json!(u("attention.value_length_mla")?));
    c.insert(
        "first_k_dense_replace".into(),
        json!(opt_u("leading_dense_block_count").unwrap_or(0)),
    );
    c.insert("n_routed_experts".into(), json!(u("expert_count")?));
    c.insert("num_experts_per_tok".into(), json!(u("expert_used_count")?));
    c.insert(
        "n_shared_experts".into(),
        json!(opt_u("expert_shared_count").unwrap_or(0)),
    );
    c.insert(
        "n_group".into(),
        json!(opt_u("expert_group_count").unwrap_or(1).max(1)),
    );
    c.insert(
        "topk_group".into(),
        json!(opt_u("expert_group_used_count").unwrap_or(1).max(1)),
    );
    c.insert(
        "routed_scaling_factor".into(),
        json!(opt_f("expert_weights_scale").unwrap_or(1.0)),
    );
    c.insert(
        "norm_topk_prob".into(),
        json!(key(f, "expert_weights_norm")
            .and_then(GgufValue::as_bool)
            .unwrap_or(false)),
    );
    c.insert(
        "max_position_embeddings".into(),
        json!(u("context_length")?),
    );
    c.insert(
        "rms_norm_eps".into(),
        json!(opt_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5)),
    );
    let mut rope = Map::new();
    rope.insert(
        "rope_theta".into(),
        json!(opt_f("rope.freq_base").unwrap_or(10000.0)),
    );
    match key(f, "rope.scaling.type").and_then(GgufValue::as_str) {
        Some("yarn") => {
            rope.insert("rope_type".into(), json!("yarn"));
            rope.insert(
                "factor".into(),
                json!(opt_f("rope.scaling.factor").unwrap_or(1.0)),
            );
            if let Some(o) = opt_u("rope.scaling.original_context_length") {
                rope.insert("original_max_position_embeddings".into(), json!(o));
            }
            if let Some(m) = opt_f("rope.scaling.yarn_log_multiplier") {
                // The converter writes 0.1 * mscale_all_dim.
                rope.insert("mscale_all_dim".into(), json!(m / 0.1));
                rope.insert("mscale".into(), json!(m / 0.1));
            }
        }
        _ => {
            rope.insert("rope_type".into(), json!("default"));
        }
    }
    c.insert("rope_parameters".into(), Value::Object(rope));
    c.insert("rope_interleave".into(), json!(true));
    c.insert("indexer_rope_interleave".into(), json!(true));
    c.insert(
        "index_n_heads".into(),
        json!(u("attention.indexer.head_count")?),
    );
    c.insert(
        "index_head_dim".into(),
        json!(u("attention.indexer.key_length")?),
    );
    c.insert("index_topk".into(), json!(u("attention.indexer.top_k")?));
    if let Some(types) = key(f, "attention.indexer.types").and_then(GgufValue::as_array) {
        let t: Vec<&str> = types
            .iter()
            .map(|v| {
                if v.as_bool().unwrap_or(true) {
                    "full"
                } else {
                    "shared"
                }
            })
            .collect();
        c.insert("indexer_types".into(), json!(t));
    }
    c.insert(
        "num_nextn_predict_layers".into(),
        json!(opt_u("nextn_predict_layers").unwrap_or(0)),
    );
    c.insert(
        "tie_word_embeddings".into(),
        json!(!f.tensors.contains_key("output.weight")),
    );
    if let Some(eos) = f
        .get("tokenizer.ggml.eos_token_id")
        .and_then(GgufValue::as_u64)
    {
        c.insert("eos_token_id".into(), json!([eos]));
    }
    if let Some(bos) = f
        .get("tokenizer.ggml.bos_token_id")
        .and_then(GgufValue::as_u64)
    {
        c.insert("bos_token_id".into(), json!(bos));
    }
    Ok(Value::Object(c))
}
