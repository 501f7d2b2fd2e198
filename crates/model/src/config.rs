//! Typed `config.json` for the GLM-5 family: `glm_moe_dsa` (GLM-5/5.1/5.2), `glm4_moe_lite`
//! (GLM-4.7-Flash) and `deepseek_v32` (DeepSeek-V3.2). Field names are the HF keys verbatim; the
//! defaults and derivations are those of the HF transformers 5.23 config classes.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{Error, Result};

/// The `model_type` values glm5 runs.
pub const SUPPORTED_MODEL_TYPES: [&str; 3] = ["glm_moe_dsa", "glm4_moe_lite", "deepseek_v32"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    GlmMoeDsa,
    Glm4MoeLite,
    DeepseekV32,
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::GlmMoeDsa => "glm_moe_dsa",
            ModelType::Glm4MoeLite => "glm4_moe_lite",
            ModelType::DeepseekV32 => "deepseek_v32",
        }
    }
}

/// Per-layer indexer mode (`indexer_types`): "full" runs the lightning indexer, "shared" reuses
/// the previous full layer's top-k selection (GLM-5.2 IndexShare).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexerType {
    Full,
    Shared,
}

/// Per-layer MLP kind (`mlp_layer_types`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpType {
    Dense,
    Sparse,
}

/// RoPE parameters (`rope_parameters`, or legacy `rope_theta` + `rope_scaling`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Default,
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        attention_factor: Option<f64>,
        truncate: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeParameters {
    pub rope_theta: f64,
    pub scaling: RopeScaling,
}

/// DSA lightning-indexer settings; absent for `glm4_moe_lite`.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexerConfig {
    pub index_topk: usize,
    pub index_head_dim: usize,
    pub index_n_heads: usize,
    pub indexer_types: Vec<IndexerType>,
}

/// Block-wise FP8 (`quantization_config` with `quant_method: fp8`).
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8Config {
    pub weight_block_size: [usize; 2],
    pub modules_to_not_convert: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub moe_intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub n_shared_experts: usize,
    pub n_routed_experts: usize,
    pub routed_scaling_factor: f64,
    pub kv_lora_rank: usize,
    /// `None` means no query compression (`q_proj` instead of `q_a_proj`/`q_b_proj`).
    pub q_lora_rank: Option<usize>,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    pub qk_nope_head_dim: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub num_experts_per_tok: usize,
    pub norm_topk_prob: bool,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub rope_parameters: RopeParameters,
    /// MLA RoPE on interleaved pairs (true for the whole family as HF runs it).
    pub rope_interleave: bool,
    /// Indexer RoPE on interleaved pairs (GLM-5: true; DeepSeek-V3.2: half-split).
    pub indexer_rope_interleave: bool,
    pub mlp_layer_types: Vec<MlpType>,
    pub indexer: Option<IndexerConfig>,
    pub num_nextn_predict_layers: usize,
    pub eos_token_id: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub fp8: Option<Fp8Config>,
}

/// Reads typed fields out of the raw JSON object, naming the field in every error.
struct Fields<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn err(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::Config {
            path: self.path.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        }
    }
    fn present(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.err(key, format!("expected a non-negative integer, got {v}"))),
        }
    }
    fn positive_or(&self, key: &str, default: usize) -> Result<usize> {
        let v = self.usize_or(key, default)?;
        if v == 0 {
            return Err(self.err(key, "must be > 0"));
        }
        Ok(v)
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(key, format!("expected a number, got {v}"))),
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, format!("expected true or false, got {v}"))),
        }
    }
    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = || self.err(key, "expected a token id or a list of token ids");
        match self.present(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|x| x as u32).ok_or_else(bad))
                .collect(),
            Some(v) => Ok(vec![v.as_u64().ok_or_else(bad)? as u32]),
        }
    }
    fn str_list(&self, key: &str) -> Result<Option<Vec<String>>> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.err(key, "expected a list of strings"))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(self.err(key, "expected a list of strings")),
        }
    }
}

impl Config {
    /// Parse `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Config> {
        let v = glm5_format::read_json(path)?;
        Config::from_json(&v, path)
    }

    /// Parse an already-read `config.json` value; `path` is only used in error messages.
    pub fn from_json(v: &Value, path: &Path) -> Result<Config> {
        let obj = v.as_object().ok_or_else(|| Error::Config {
            path: path.to_path_buf(),
            field: "<root>".into(),
            reason: "config.json must be a JSON object".into(),
        })?;
        let f = Fields { path, obj };
        let model_type = match f.present("model_type").and_then(Value::as_str) {
            Some("glm_moe_dsa") => ModelType::GlmMoeDsa,
            Some("glm4_moe_lite") => ModelType::Glm4MoeLite,
            Some("deepseek_v32") => ModelType::DeepseekV32,
            other => {
                return Err(Error::UnsupportedModelType {
                    path: path.to_path_buf(),
                    found: other
                        .map(str::to_string)
                        .unwrap_or_else(|| "<missing>".into()),
                })
            }
        };
        // Defaults per HF 5.23 config class.
        use ModelType::*;
        let d = |glm: usize, lite: usize, ds: usize| match model_type {
            GlmMoeDsa => glm,
            Glm4MoeLite => lite,
            DeepseekV32 => ds,
        };
        let num_hidden_layers = f.positive_or("num_hidden_layers", d(78, 47, 61))?;
        let num_attention_heads = f.positive_or("num_attention_heads", d(64, 20, 128))?;
        let q_lora_rank = match f.present("q_lora_rank") {
            None if obj.contains_key("q_lora_rank") => None, // explicit null
            None => Some(d(2048, 768, 1536)),
            Some(_) => Some(f.positive_or("q_lora_rank", 0)?),
        };
        let first_k_dense_replace = f.usize_or("first_k_dense_replace", d(3, 1, 3))?;
        let mlp_layer_types = match f.str_list("mlp_layer_types")? {
            Some(list) => list
                .iter()
                .map(|s| match s.as_str() {
                    "dense" => Ok(MlpType::Dense),
                    "sparse" => Ok(MlpType::Sparse),
                    other => Err(f.err("mlp_layer_types", format!("unknown layer type '{other}'"))),
                })
                .collect::<Result<Vec<_>>>()?,
            None => {
                // glm4_moe_lite ignores first_k_dense_replace in HF: exactly one dense layer.
                let n_dense = match model_type {
                    Glm4MoeLite => 1.min(num_hidden_layers),
                    _ => first_k_dense_replace.min(num_hidden_layers),
                };
                (0..num_hidden_layers)
                    .map(|i| {
                        if i < n_dense {
                            MlpType::Dense
                        } else {
                            MlpType::Sparse
                        }
                    })
                    .collect()
            }
        };
        if mlp_layer_types.len() != num_hidden_layers {
            return Err(f.err(
                "mlp_layer_types",
                format!(
                    "has {} entries for {num_hidden_layers} layers",
                    mlp_layer_types.len()
                ),
            ));
        }
        let indexer = match model_type {
            Glm4MoeLite => None,
            _ => Some(parse_indexer(&f, model_type, num_hidden_layers)?),
        };
        let rope_parameters = parse_rope(&f, model_type)?;
        let fp8 = parse_fp8(&f)?;
        let cfg = Config {
            model_type,
            vocab_size: f.positive_or("vocab_size", d(154880, 154880, 129280))?,
            hidden_size: f.positive_or("hidden_size", d(6144, 2048, 7168))?,
            intermediate_size: f.positive_or("intermediate_size", d(12288, 10240, 18432))?,
            moe_intermediate_size: f.positive_or("moe_intermediate_size", d(2048, 1536, 2048))?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: f.positive_or("num_key_value_heads", num_attention_heads)?,
            n_shared_experts: f.usize_or("n_shared_experts", 1)?,
            n_routed_experts: f.positive_or("n_routed_experts", d(256, 64, 256))?,
            routed_scaling_factor: f
                .f64_or("routed_scaling_factor", d(25, 18, 25) as f64 / 10.0)?,
            kv_lora_rank: f.positive_or("kv_lora_rank", 512)?,
            q_lora_rank,
            qk_rope_head_dim: f.positive_or("qk_rope_head_dim", 64)?,
            v_head_dim: f.positive_or("v_head_dim", d(256, 256, 128))?,
            qk_nope_head_dim: f.positive_or("qk_nope_head_dim", d(192, 192, 128))?,
            n_group: f.positive_or("n_group", d(1, 1, 8))?,
            topk_group: f.positive_or("topk_group", d(1, 1, 4))?,
            num_experts_per_tok: f.positive_or("num_experts_per_tok", d(8, 4, 8))?,
            norm_topk_prob: f.bool_or("norm_topk_prob", true)?,
            max_position_embeddings: f
                .positive_or("max_position_embeddings", d(202752, 202752, 163840))?,
            rms_norm_eps: f.f64_or(
                "rms_norm_eps",
                if model_type == DeepseekV32 {
                    1e-6
                } else {
                    1e-5
                },
            )?,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            rope_parameters,
            rope_interleave: f.bool_or("rope_interleave", true)?,
            indexer_rope_interleave: f
                .bool_or("indexer_rope_interleave", model_type == GlmMoeDsa)?,
            mlp_layer_types,
            indexer,
            num_nextn_predict_layers: f.usize_or("num_nextn_predict_layers", 0)?,
            eos_token_id: f.token_ids("eos_token_id")?,
            bos_token_id: f.token_ids("bos_token_id")?.first().copied(),
            pad_token_id: f.token_ids("pad_token_id")?.first().copied(),
            fp8,
        };
        cfg.validate(&f)?;
        Ok(cfg)
    }

    fn validate(&self, f: &Fields) -> Result<()> {
        if let Some(act) = f.present("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(f.err(
                    "hidden_act",
                    format!("only \"silu\" is supported, got {act}"),
                ));
            }
        }
        if f.bool_or("attention_bias", false)? {
            return Err(f.err(
                "attention_bias",
                "attention biases are not supported (no GLM-5 checkpoint has them)",
            ));
        }
        if !self.qk_rope_head_dim.is_multiple_of(2) {
            return Err(f.err("qk_rope_head_dim", "must be even"));
        }
        if self.num_key_value_heads != self.num_attention_heads {
            return Err(f.err(
                "num_key_value_heads",
                "MLA expands K/V per head: must equal num_attention_heads",
            ));
        }
        if !self.n_routed_experts.is_multiple_of(self.n_group) {
            return Err(f.err(
                "n_group",
                format!(
                    "n_routed_experts {} is not divisible by n_group {}",
                    self.n_routed_experts, self.n_group
                ),
            ));
        }
        if self.topk_group > self.n_group {
            return Err(f.err(
                "topk_group",
                format!("{} exceeds n_group {}", self.topk_group, self.n_group),
            ));
        }
        let per_group = self.n_routed_experts / self.n_group;
        if self.n_group > 1 && per_group < 2 {
            return Err(f.err(
                "n_group",
                "group-limited routing needs at least 2 experts per group",
            ));
        }
        if self.num_experts_per_tok > self.topk_group * per_group {
            return Err(f.err(
                "num_experts_per_tok",
                format!(
                    "{} exceeds the experts in the top {} groups",
                    self.num_experts_per_tok, self.topk_group
                ),
            ));
        }
        if let Some(ix) = &self.indexer {
            if ix.index_head_dim < self.qk_rope_head_dim {
                return Err(f.err("index_head_dim", "must be at least qk_rope_head_dim"));
            }
        }
        if let Some(q) = &self.fp8 {
            if q.weight_block_size[0] == 0 || q.weight_block_size[1] == 0 {
                return Err(f.err(
                    "quantization_config.weight_block_size",
                    "block sizes must be > 0",
                ));
            }
        }
        Ok(())
    }

    /// Per-head query/key width (`qk_nope_head_dim + qk_rope_head_dim`).
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// The MLA softmax scale: `qk_head_dim^-0.5`, times YaRN's `mscale(factor, mscale_all_dim)^2`.
    pub fn attention_scale(&self) -> f64 {
        let base = (self.qk_head_dim() as f64).powf(-0.5);
        match &self.rope_parameters.scaling {
            RopeScaling::Yarn {
                factor,
                mscale_all_dim: Some(m),
                ..
            } if *m != 0.0 => {
                let s = yarn_get_mscale(*factor, *m);
                base * s * s
            }
            _ => base,
        }
    }

    /// Width of one latent KV cache row: `kv_lora_rank + qk_rope_head_dim` (576 for GLM-5).
    pub fn latent_dim(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }

    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.mlp_layer_types
            .get(layer)
            .copied()
            .unwrap_or(MlpType::Sparse)
            == MlpType::Sparse
    }

    /// Whether layer `layer` runs its own indexer (MTP layers always do).
    pub fn has_indexer(&self, layer: usize) -> bool {
        match &self.indexer {
            None => false,
            Some(ix) => {
                ix.indexer_types
                    .get(layer)
                    .copied()
                    .unwrap_or(IndexerType::Full)
                    == IndexerType::Full
            }
        }
    }
}

/// YaRN's `0.1 * mscale * ln(scale) + 1` (1 for scale <= 1).
pub fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

fn parse_indexer(f: &Fields, model_type: ModelType, n_layers: usize) -> Result<IndexerConfig> {
    let indexer_types = if let Some(list) = f.str_list("indexer_types")? {
        list.iter()
            .map(|s| match s.as_str() {
                "full" => Ok(IndexerType::Full),
                "shared" => Ok(IndexerType::Shared),
                other => Err(f.err("indexer_types", format!("unknown indexer type '{other}'"))),
            })
            .collect::<Result<Vec<_>>>()?
    } else if model_type == ModelType::GlmMoeDsa {
        match f.present("index_topk_pattern") {
            Some(Value::String(p)) => p
                .chars()
                .map(|c| match c {
                    'F' => Ok(IndexerType::Full),
                    'S' => Ok(IndexerType::Shared),
                    other => Err(f.err(
                        "index_topk_pattern",
                        format!("unknown letter '{other}' (expected F or S)"),
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(Value::Array(_)) => f
                .str_list("index_topk_pattern")?
                .unwrap_or_default()
                .iter()
                .map(|s| match s.as_str() {
                    "full" => Ok(IndexerType::Full),
                    "shared" => Ok(IndexerType::Shared),
                    other => Err(f.err(
                        "index_topk_pattern",
                        format!("unknown indexer type '{other}'"),
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => {
                return Err(f.err("index_topk_pattern", "expected a string of F/S or a list"))
            }
            None => {
                // HF 5.23: layer i is full iff max(i - offset + 1, 0) % freq == 0.
                let freq = f.usize_or("index_topk_freq", 1)?.max(1);
                let offset = f.usize_or("index_skip_topk_offset", 2)? as i64;
                (0..n_layers as i64)
                    .map(|i| {
                        if ((i - offset + 1).max(0) as usize).is_multiple_of(freq) {
                            IndexerType::Full
                        } else {
                            IndexerType::Shared
                        }
                    })
                    .collect()
            }
        }
    } else {
        vec![IndexerType::Full; n_layers]
    };
    if indexer_types.len() != n_layers {
        return Err(f.err(
            "indexer_types",
            format!("has {} entries for {n_layers} layers", indexer_types.len()),
        ));
    }
    if indexer_types.first() == Some(&IndexerType::Shared) {
        return Err(f.err(
            "indexer_types",
            "layer 0 is \"shared\" but has no previous full layer to share from",
        ));
    }
    Ok(IndexerConfig {
        index_topk: f.positive_or("index_topk", 2048)?,
        index_head_dim: f.positive_or("index_head_dim", 128)?,
        index_n_heads: f.positive_or(
            "index_n_heads",
            if model_type == ModelType::DeepseekV32 {
                64
            } else {
                32
            },
        )?,
        indexer_types,
    })
}

fn parse_rope(f: &Fields, _model_type: ModelType) -> Result<RopeParameters> {
    let field = if f.present("rope_parameters").is_some() {
        "rope_parameters"
    } else {
        "rope_scaling"
    };
    let empty = Map::new();
    let rp = match f.present(field) {
        None => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(f.err(field, "expected an object")),
    };
    let sub = Fields {
        path: f.path,
        obj: rp,
    };
    let top_theta = f.f64_or("rope_theta", 10000.0)?;
    let rope_theta = sub.f64_or("rope_theta", top_theta)?;
    if rope_theta <= 1.0 {
        return Err(f.err(&format!("{field}.rope_theta"), "must be > 1"));
    }
    let ty = rp
        .get("rope_type")
        .or_else(|| rp.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let scaling = match ty {
        "default" => RopeScaling::Default,
        "yarn" => {
            let max_pos = f.usize_or("max_position_embeddings", 163840)?;
            let orig = sub.usize_or(
                "original_max_position_embeddings",
                f.usize_or("original_max_position_embeddings", max_pos)?,
            )?;
            let factor = match sub.present("factor") {
                Some(_) => sub.f64_or("factor", 1.0)?,
                None => max_pos as f64 / orig as f64,
            };
            let opt = |k: &str| -> Result<Option<f64>> {
                sub.present(k).map(|_| sub.f64_or(k, 0.0)).transpose()
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast: opt("beta_fast")?.filter(|b| *b != 0.0).unwrap_or(32.0),
                beta_slow: opt("beta_slow")?.filter(|b| *b != 0.0).unwrap_or(1.0),
                mscale: opt("mscale")?,
                mscale_all_dim: opt("mscale_all_dim")?,
                attention_factor: opt("attention_factor")?,
                truncate: sub.bool_or("truncate", true)?,
            }
        }
        other => {
            return Err(f.err(
                &format!("{field}.rope_type"),
                format!("unsupported rope type '{other}' (supported: default, yarn)"),
            ))
        }
    };
    Ok(RopeParameters {
        rope_theta,
        scaling,
    })
}

fn parse_fp8(f: &Fields) -> Result<Option<Fp8Config>> {
    let Some(q) = f.present("quantization_config") else {
        return Ok(None);
    };
    let Some(q) = q.as_object() else {
        return Err(f.err("quantization_config", "expected an object"));
    };
    let sub = Fields {
        path: f.path,
        obj: q,
    };
    match q.get("quant_method").and_then(Value::as_str) {
        Some("fp8") => {}
        other => {
            return Err(f.err(
                "quantization_config.quant_method",
                format!(
                    "unsupported quantization {:?} (supported: fp8 with weight_block_size)",
                    other.unwrap_or("<missing>")
                ),
            ))
        }
    }
    if let Some(fmt) = q.get("fmt").and_then(Value::as_str) {
        if fmt != "e4m3" {
            return Err(f.err(
                "quantization_config.fmt",
                format!("only e4m3 is supported, got '{fmt}'"),
            ));
        }
    }
    let block = match q.get("weight_block_size") {
        Some(Value::Array(a)) if a.len() == 2 => {
            let b: Vec<usize> = a
                .iter()
                .filter_map(|x| x.as_u64().map(|x| x as usize))
                .collect();
            if b.len() != 2 {
                return Err(f.err(
                    "quantization_config.weight_block_size",
                    "expected two integers",
                ));
            }
            [b[0], b[1]]
        }
        _ => {
            return Err(f.err(
                "quantization_config.weight_block_size",
                "expected [rows, cols] (per-tensor FP8 is not supported)",
            ))
        }
    };
    Ok(Some(Fp8Config {
        weight_block_size: block,
        modules_to_not_convert: sub.str_list("modules_to_not_convert")?.unwrap_or_default(),
    }))
}

/// Path helper for error messages when a config did not come from a file.
pub fn memory_path() -> PathBuf {
    PathBuf::from("<config>")
}
