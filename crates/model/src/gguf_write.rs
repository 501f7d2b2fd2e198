//! `glm5 quantize`: an HF folder (BF16, F32 or block FP8) -> a llama.cpp `glm-dsa` GGUF, with
//! the converter's conventions (`gguf_map`): merged experts, `attn_k_b`/`attn_v_b`, the MTP
//! block, the indexer keys, and the GLM tokenizer (`tokenizer.ggml.*`, plus the whole
//! `tokenizer.json` as `tokenizer.huggingface.json` and the chat template).
//!
//! Tensors are converted one at a time (a merged expert tensor one expert at a time) and
//! streamed to the file, so memory stays near one expert's f32 copy.

use std::path::Path;

use glm5_format::{Checkpoint, GgmlType, GgufSplitWriter, GgufValue as V};
use glm5_kernels::lowbit::LowBit;
use glm5_kernels::{Matrix, WFormat};
use serde_json::Value;

use crate::config::{Config, IndexerType};
use crate::gguf_map::{gguf_name, ARCH};
use crate::source::{ggml_type_of, Quant};
use crate::spec::{tensor_specs, Role, TensorSpec};
use crate::weights::{self, load_f32};
use crate::{Error, Result};

/// What goes into the file for one planned tensor.
enum Item {
    /// One HF tensor, as a vector (F32) or a matrix in `format`.
    Plain(TensorSpec, WFormat),
    /// All routed experts' `proj` of one layer, stacked.
    Experts(Vec<TensorSpec>, WFormat),
    /// `kv_b_proj` of a layer, split: `k_b` (transposed per head) or `v_b`.
    KvB(TensorSpec, WFormat, bool),
}

fn llama_file_type(q: Quant) -> u32 {
    match q {
        Quant::Uniform(WFormat::F32) | Quant::Reference => 0,
        Quant::Uniform(WFormat::F16) => 1,
        Quant::Uniform(WFormat::Q8_0) => 7,
        Quant::Q4KM => 15,
        Quant::Q5KM => 17,
        Quant::Uniform(WFormat::Q6K) => 18,
        Quant::Uniform(WFormat::BF16) => 32,
        Quant::Uniform(WFormat::Low(LowBit::IQ4NL)) => 25,
        Quant::Uniform(WFormat::Low(LowBit::IQ4XS)) => 30,
        Quant::Uniform(_) => 0,
    }
}

/// The file's metadata; tokenizer, chat template and sampling defaults come from `text_dir`.
fn metadata(cfg: &Config, dir: &Path, text_dir: &Path, quant: Quant) -> Result<Vec<(String, V)>> {
    let k = |s: &str| format!("{ARCH}.{s}");
    let u = |x: usize| V::U32(x as u32);
    let mut m: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::Str(ARCH.into())),
        (
            "general.name".into(),
            V::Str(
                dir.file_name()
                    .map_or("glm5".into(), |n| n.to_string_lossy().into()),
            ),
        ),
        ("general.file_type".into(), V::U32(llama_file_type(quant))),
        ("general.quantization_version".into(), V::U32(2)),
        (
            k("block_count"),
            u(cfg.num_hidden_layers + cfg.num_nextn_predict_layers),
        ),
        (k("context_length"), u(cfg.max_position_embeddings)),
        (k("embedding_length"), u(cfg.hidden_size)),
        (k("feed_forward_length"), u(cfg.intermediate_size)),
        (k("attention.head_count"), u(cfg.num_attention_heads)),
        (k("attention.head_count_kv"), u(1)),
        (
            k("rope.freq_base"),
            V::F32(cfg.rope_parameters.rope_theta as f32),
        ),
        (
            k("attention.layer_norm_rms_epsilon"),
            V::F32(cfg.rms_norm_eps as f32),
        ),
        (k("expert_used_count"), u(cfg.num_experts_per_tok)),
        (k("expert_count"), u(cfg.n_routed_experts)),
        (k("expert_shared_count"), u(cfg.n_shared_experts)),
        (k("expert_group_count"), u(cfg.n_group)),
        (k("expert_group_used_count"), u(cfg.topk_group)),
        (
            k("leading_dense_block_count"),
            u(cfg
                .mlp_layer_types
                .iter()
                .take_while(|t| **t == crate::MlpType::Dense)
                .count()),
        ),
        (k("vocab_size"), u(cfg.vocab_size)),
        (k("attention.kv_lora_rank"), u(cfg.kv_lora_rank)),
        (
            k("attention.key_length"),
            u(cfg.kv_lora_rank + cfg.qk_rope_head_dim),
        ),
        (k("attention.value_length"), u(cfg.kv_lora_rank)),
        (k("attention.key_length_mla"), u(cfg.qk_head_dim())),
        (k("attention.value_length_mla"), u(cfg.v_head_dim)),
        (
            k("expert_feed_forward_length"),
            u(cfg.moe_intermediate_size),
        ),
        (
            k("expert_weights_scale"),
            V::F32(cfg.routed_scaling_factor as f32),
        ),
        (k("expert_weights_norm"), V::Bool(cfg.norm_topk_prob)),
        (k("expert_gating_func"), V::U32(2)), // sigmoid
        (k("rope.dimension_count"), u(cfg.qk_rope_head_dim)),
        (k("nextn_predict_layers"), u(cfg.num_nextn_predict_layers)),
    ];
    if let Some(q) = cfg.q_lora_rank {
        m.push((k("attention.q_lora_rank"), u(q)));
    }
    if let Some(ix) = &cfg.indexer {
        m.push((k("attention.indexer.head_count"), u(ix.index_n_heads)));
        m.push((k("attention.indexer.key_length"), u(ix.index_head_dim)));
        m.push((k("attention.indexer.top_k"), u(ix.index_topk)));
        let types = ix
            .indexer_types
            .iter()
            .map(|t| V::Bool(*t == IndexerType::Full));
        m.push((k("attention.indexer.types"), V::Array(types.collect())));
    }
    if let crate::config::RopeScaling::Yarn {
        factor,
        original_max_position_embeddings,
        mscale_all_dim,
        ..
    } = &cfg.rope_parameters.scaling
    {
        m.push((k("rope.scaling.type"), V::Str("yarn".into())));
        m.push((k("rope.scaling.factor"), V::F32(*factor as f32)));
        m.push((
            k("rope.scaling.original_context_length"),
            u(*original_max_position_embeddings),
        ));
        if let Some(a) = mscale_all_dim {
            // The converter's convention: 0.1 * mscale_all_dim.
            m.push((
                k("rope.scaling.yarn_log_multiplier"),
                V::F32((0.1 * a) as f32),
            ));
        }
    }
    sampling_metadata(text_dir, &mut m);
    tokenizer_metadata(cfg, text_dir, &mut m)?;
    Ok(m)
}

/// `general.sampling.*` from `generation_config.json`, as llama.cpp's converter copies them
/// (`do_sample: false` is written as temperature 0, what it means).
fn sampling_metadata(dir: &Path, m: &mut Vec<(String, V)>) {
    let Some(g) = std::fs::read(dir.join("generation_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return;
    };
    let greedy = g["do_sample"].as_bool() == Some(false);
    for (hf, key) in [
        ("temperature", "temp"),
        ("top_k", "top_k"),
        ("top_p", "top_p"),
        ("min_p", "min_p"),
        ("repetition_penalty", "penalty_repeat"),
    ] {
        let v = match (hf, greedy) {
            ("temperature", true) => Some(0.0),
            _ => g[hf].as_f64(),
        };
        let Some(v) = v else { continue };
        let value = match key {
            "top_k" => V::I32(v as i32),
            _ => V::F32(v as f32),
        };
        m.push((format!("general.sampling.{key}"), value));
    }
}

/// `tokenizer.ggml.*` for llama.cpp (gpt2-style BPE, `glm4` pre-tokenizer, special tokens as
/// control), and `tokenizer.huggingface.json` / `tokenizer.chat_template` for glm5.
fn tokenizer_metadata(cfg: &Config, dir: &Path, m: &mut Vec<(String, V)>) -> Result<()> {
    let path = dir.join("tokenizer.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(()); // weights-only folders (synth) carry no tokenizer
    };
    let bad = |reason: &str| Error::Config {
        path: path.clone(),
        field: "model".into(),
        reason: reason.into(),
    };
    let tj: Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let vocab = tj["model"]["vocab"]
        .as_object()
        .ok_or_else(|| bad("no BPE vocab"))?;
    let mut tokens = vec![String::new(); cfg.vocab_size];
    let mut types = vec![5i32; cfg.vocab_size]; // unused until filled
    for (t, id) in vocab {
        if let Some(i) = id
            .as_u64()
            .map(|i| i as usize)
            .filter(|&i| i < tokens.len())
        {
            tokens[i] = t.clone();
            types[i] = 1;
        }
    }
    for a in tj["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(i), Some(c)) = (a["id"].as_u64(), a["content"].as_str()) {
            if (i as usize) < tokens.len() {
                tokens[i as usize] = c.to_string();
                types[i as usize] = if a["special"].as_bool() == Some(true) {
                    3
                } else {
                    4
                };
            }
        }
    }
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[PAD{i}]");
        }
    }
    let merges: Vec<V> = tj["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|mg| match mg {
            Value::String(s) => Some(V::Str(s.clone())),
            Value::Array(p) => Some(V::Str(format!("{} {}", p[0].as_str()?, p[1].as_str()?))),
            _ => None,
        })
        .collect();
    let id_of = |s: &str| tokens.iter().position(|t| t == s).map(|i| V::U32(i as u32));
    m.push(("tokenizer.ggml.model".into(), V::Str("gpt2".into())));
    m.push(("tokenizer.ggml.pre".into(), V::Str("glm4".into())));
    m.push((
        "tokenizer.ggml.tokens".into(),
        V::Array(tokens.iter().map(|t| V::Str(t.clone())).collect()),
    ));
    m.push((
        "tokenizer.ggml.token_type".into(),
        V::Array(types.into_iter().map(V::I32).collect()),
    ));
    m.push(("tokenizer.ggml.merges".into(), V::Array(merges)));
    for (key, tok) in [
        ("eos", "<|endoftext|>"),
        ("eot", "<|user|>"),
        ("unk", "<|endoftext|>"),
        ("bos", "<|endoftext|>"),
    ] {
        if let Some(id) = id_of(tok) {
            m.push((format!("tokenizer.ggml.{key}_token_id"), id));
        }
    }
    m.push(("tokenizer.huggingface.json".into(), V::Str(text)));
    let template = std::fs::read_to_string(dir.join("chat_template.jinja"))
        .ok()
        .or_else(|| {
            let tc: Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?,
            )
            .ok()?;
            tc["chat_template"].as_str().map(str::to_string)
        });
    if let Some(t) = template {
        m.push(("tokenizer.chat_template".into(), V::Str(t)));
    }
    Ok(())
}

/// Write `dir` as a GGUF at `out` with weights in `quant`. `progress(name, done, total)` is
/// called after each tensor. Returns the file size.
pub fn write_gguf(
    dir: &Path,
    out: &Path,
    quant: Quant,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<u64> {
    let parts = write_gguf_split(dir, out, quant, None, None, progress)?;
    Ok(parts.iter().map(|p| p.1).sum())
}

/// `write_gguf` as a split set of parts of at most `max_part_bytes` of tensor data each
/// (`NAME-00001-of-0000n.gguf` beside `out`; one part is `out` itself), with the tokenizer,
/// chat template and sampling defaults of `tokenizer` (a folder) instead of `dir`'s when given
/// (weights-only folders such as `glm5 synth` output: llama.cpp refuses a GGUF without
/// `tokenizer.ggml.*`). Returns each part's path and size. On an error, no part is left behind.
pub fn write_gguf_split(
    dir: &Path,
    out: &Path,
    quant: Quant,
    max_part_bytes: Option<u64>,
    tokenizer: Option<&Path>,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Vec<(std::path::PathBuf, u64)>> {
    let ckpt = Checkpoint::open(dir)?;
    let cfg = Config::from_json(&ckpt.config, &dir.join("config.json"))?;
    let report = weights::check(&cfg, &ckpt)?;
    if let Some(name) = report.missing.first() {
        return Err(Error::MissingTensor {
            dir: dir.to_path_buf(),
            name: name.clone(),
        });
    }
    let n_main = cfg.num_hidden_layers;
    let specs: Vec<TensorSpec> = tensor_specs(&cfg)
        .into_iter()
        .filter(|s| ckpt.contains(&s.name))
        .collect();
    // Plan: (gguf name, shape, type, item).
    let mut plan: Vec<(String, Vec<usize>, GgmlType, Item)> = Vec::new();
    let mut experts: std::collections::BTreeMap<String, Vec<TensorSpec>> = Default::default();
    for s in specs {
        let (gname, slot) = gguf_name(&s.name, n_main).ok_or_else(|| Error::Gguf {
            path: out.to_path_buf(),
            tensor: s.name.clone(),
            reason: "no glm-dsa GGUF name for this tensor".into(),
        })?;
        let cols = *s.shape.last().expect("tensors have a shape");
        let (role, ndim) = (s.role, s.shape.len());
        let matrix_format = |name: &str| match role {
            Role::Norm | Role::NormBias | Role::RouterBias => WFormat::F32,
            _ if ndim == 1 => WFormat::F32,
            _ if name.ends_with("mlp.gate.weight") => WFormat::F32,
            _ => quant.format_for(&cfg, name, cols),
        };
        if slot.is_some() {
            experts.entry(gname.clone()).or_default().push(s);
            let list = &experts[&gname];
            if list.len() == cfg.n_routed_experts {
                let first = &list[0];
                let f = matrix_format(&first.name);
                let shape = vec![list.len(), first.shape[0], first.shape[1]];
                let list = experts.remove(&gname).expect("just filled");
                plan.push((gname, shape, ggml_type_of(f), Item::Experts(list, f)));
            }
            continue;
        }
        if s.name.ends_with("kv_b_proj.weight") {
            let (nh, nope, vd, r) = (
                cfg.num_attention_heads,
                cfg.qk_nope_head_dim,
                cfg.v_head_dim,
                cfg.kv_lora_rank,
            );
            let fk = quant.format_for(&cfg, &s.name, nope);
            let fv = quant.format_for(&cfg, &s.name, r);
            let kb = gname.replace("attn_kv_b", "attn_k_b");
            let vb = gname.replace("attn_kv_b", "attn_v_b");
            plan.push((
                kb,
                vec![nh, r, nope],
                ggml_type_of(fk),
                Item::KvB(s.clone(), fk, true),
            ));
            plan.push((
                vb,
                vec![nh, vd, r],
                ggml_type_of(fv),
                Item::KvB(s, fv, false),
            ));
            continue;
        }
        let f = matrix_format(&s.name);
        plan.push((gname, s.shape.clone(), ggml_type_of(f), Item::Plain(s, f)));
    }
    let meta = metadata(&cfg, dir, tokenizer.unwrap_or(dir), quant)?;
    let mut w = GgufSplitWriter::create(
        out,
        &meta,
        plan.iter()
            .map(|(n, s, t, _)| (n.clone(), s.clone(), *t))
            .collect(),
        max_part_bytes,
    )?;
    let paths = w.paths().to_vec();
    let written =
        write_items(&cfg, &ckpt, out, plan, &mut w, progress).and_then(|()| Ok(w.finish()?));
    if written.is_err() {
        paths.iter().for_each(|p| drop(std::fs::remove_file(p)));
    }
    written
}

/// Convert each planned tensor and hand it to `w`.
fn write_items(
    cfg: &Config,
    ckpt: &Checkpoint,
    out: &Path,
    plan: Vec<(String, Vec<usize>, GgmlType, Item)>,
    w: &mut GgufSplitWriter,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<()> {
    let total = plan.len();
    let store =
        |name: &str, v: Vec<f32>, rows: usize, cols: usize, f: WFormat| -> Result<Vec<u8>> {
            Matrix::quantize(&v, rows, cols, f)
                .map(|m| m.bytes().to_vec())
                .map_err(|reason| Error::Quantize {
                    path: out.to_path_buf(),
                    name: name.into(),
                    reason,
                })
        };
    for (i, (gname, _, _, item)) in plan.into_iter().enumerate() {
        let data = match item {
            Item::Plain(s, f) => {
                let v = load_f32(cfg, ckpt, &s.name, &s.shape)?;
                let cols = *s.shape.last().expect("shape");
                store(&s.name, v, s.numel() / cols, cols, f)?
            }
            Item::Experts(list, f) => {
                let mut bytes = Vec::new();
                for s in &list {
                    let v = load_f32(cfg, ckpt, &s.name, &s.shape)?;
                    bytes.extend(store(&s.name, v, s.shape[0], s.shape[1], f)?);
                }
                bytes
            }
            Item::KvB(s, f, is_k) => {
                let (nh, nope, vd, r) = (
                    cfg.num_attention_heads,
                    cfg.qk_nope_head_dim,
                    cfg.v_head_dim,
                    cfg.kv_lora_rank,
                );
                let v = load_f32(cfg, ckpt, &s.name, &s.shape)?;
                let (k_all, v_all) = crate::gguf_map::split_kv_b(&v, nh, nope, vd, r);
                let out_v = if is_k { k_all } else { v_all };
                let (rows, cols) = if is_k { (nh * r, nope) } else { (nh * vd, r) };
                store(&s.name, out_v, rows, cols, f)?
            }
        };
        w.write_tensor(&gname, &data)?;
        progress(&gname, i + 1, total);
    }
    Ok(())
}
