//! Config derivations, parameter counts, and `synth` round trips.

use std::path::Path;

use glm5_model::config::memory_path;
use glm5_model::spec::{param_counts, tensor_specs};
use glm5_model::synth::{write_checkpoint, SynthDType, SynthOptions};
use glm5_model::{weights, Config, IndexerType, Model};
use proptest::prelude::*;
use serde_json::{json, Value};

/// testdata/glm5-bench.json is a verbatim copy of shared/bench/glm5-bench.json.
fn bench_config_json() -> Value {
    serde_json::from_str(include_str!("../../../testdata/glm5-bench.json")).unwrap()
}

fn parse(v: &Value) -> Config {
    Config::from_json(v, &memory_path()).unwrap()
}

#[test]
fn bench_config_param_counts() {
    let cfg = parse(&bench_config_json());
    let p = param_counts(&cfg);
    let within = |x: u64, target: f64| ((x as f64 - target) / target).abs() < 0.005;
    assert!(within(p.total, 3.71e9), "total {}", p.total);
    assert!(within(p.active, 0.733e9), "active {}", p.active);
    assert!(p.mtp > 0);
}

#[test]
fn glm5_full_size_param_counts() {
    // The published GLM-5 config: about 744B total, about 40B active.
    let cfg = parse(&json!({"model_type": "glm_moe_dsa", "num_nextn_predict_layers": 1}));
    let p = param_counts(&cfg);
    assert!((p.total as f64 / 1e9 - 743.9).abs() < 1.0, "{}", p.total);
    let active_with_embed = p.active as f64 + (cfg.vocab_size * cfg.hidden_size) as f64;
    assert!((active_with_embed / 1e9 - 40.8).abs() < 1.0, "{}", p.active);
}

#[test]
fn indexer_types_derivation_matches_hf() {
    let mk = |extra: Value| {
        let mut v = json!({"model_type": "glm_moe_dsa", "num_hidden_layers": 8});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        parse(&v).indexer.unwrap().indexer_types
    };
    use IndexerType::{Full as F, Shared as S};
    assert_eq!(mk(json!({})), vec![F; 8]);
    // freq 3, offset 2: full iff max(i - 1, 0) % 3 == 0.
    assert_eq!(
        mk(json!({"index_topk_freq": 3, "index_skip_topk_offset": 2})),
        vec![F, F, S, S, F, S, S, F]
    );
    assert_eq!(
        mk(json!({"index_topk_pattern": "FFSSFSSF"})),
        vec![F, F, S, S, F, S, S, F]
    );
    assert_eq!(
        mk(
            json!({"indexer_types": ["full", "shared", "full", "full", "full", "full", "full", "full"]})
        )[1],
        S
    );
    let bad = json!({"model_type": "glm_moe_dsa", "num_hidden_layers": 2, "indexer_types": ["shared", "full"]});
    let err = Config::from_json(&bad, &memory_path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("indexer_types"), "{err}");
}

#[test]
fn family_defaults() {
    let lite = parse(
        &json!({"model_type": "glm4_moe_lite", "num_hidden_layers": 4, "first_k_dense_replace": 3}),
    );
    assert!(lite.indexer.is_none());
    // HF's Glm4MoeLiteConfig ignores first_k_dense_replace: exactly one dense layer.
    assert_eq!((0..4).filter(|&l| !lite.is_moe_layer(l)).count(), 1);
    let ds = parse(&json!({"model_type": "deepseek_v32"}));
    assert!(!ds.indexer_rope_interleave);
    assert_eq!((ds.n_group, ds.topk_group), (8, 4));
    let glm = parse(&json!({"model_type": "glm_moe_dsa"}));
    assert!(glm.indexer_rope_interleave && glm.rope_interleave);
    assert!((glm.attention_scale() - 1.0 / 16.0).abs() < 1e-12);
}

fn tiny_config() -> Value {
    json!({
        "model_type": "glm_moe_dsa", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "moe_intermediate_size": 16, "num_hidden_layers": 3, "first_k_dense_replace": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": 24, "kv_lora_rank": 16,
        "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 12, "n_routed_experts": 8,
        "num_experts_per_tok": 2, "index_n_heads": 2, "index_head_dim": 16, "index_topk": 4,
        "num_nextn_predict_layers": 1, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}
    })
}

fn synth(dir: &Path, dtype: SynthDType, seed: u64, shard: u64) -> Config {
    let v = tiny_config();
    let cfg = parse(&v);
    let opts = SynthOptions {
        seed,
        dtype,
        max_shard_bytes: shard,
    };
    write_checkpoint(&v, &cfg, dir, &opts, &|_| {}).unwrap();
    cfg
}

#[test]
fn synth_roundtrip_all_dtypes() {
    for dtype in [SynthDType::F32, SynthDType::Bf16, SynthDType::Fp8] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = synth(dir.path(), dtype, 7, 20_000);
        let ckpt = glm5_format::Checkpoint::open(dir.path()).unwrap();
        assert!(ckpt.shards().len() > 1, "expected several shards");
        let report = weights::check(&cfg, &ckpt).unwrap();
        assert!(
            report.missing.is_empty() && report.unexpected.is_empty(),
            "{report:?}"
        );
        assert!(report.mtp_present);
        let n_specs = tensor_specs(&cfg).len();
        assert!(ckpt.names().count() >= n_specs);
        let model = Model::load(dir.path()).unwrap();
        let logits = model
            .forward(&[1, 2, 3, 4, 5, 6], &mut model.new_cache(), None)
            .unwrap();
        assert!(logits.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn synth_is_deterministic_and_seeded() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    synth(a.path(), SynthDType::Bf16, 3, 1 << 30);
    synth(b.path(), SynthDType::Bf16, 3, 1 << 30);
    synth(c.path(), SynthDType::Bf16, 4, 1 << 30);
    let read = |d: &Path| std::fs::read(d.join("model-00001-of-00001.safetensors")).unwrap();
    assert_eq!(read(a.path()), read(b.path()));
    assert_ne!(read(a.path()), read(c.path()));
    // Realistic scales: matrices ~ N(0, 0.02), norms near 1.
    let ckpt = glm5_format::Checkpoint::open(a.path()).unwrap();
    let w = ckpt
        .get("model.layers.1.mlp.experts.3.up_proj.weight")
        .unwrap()
        .to_f32();
    let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
    assert!((std - 0.02).abs() < 0.003, "std {std}");
    let n = ckpt
        .get("model.layers.0.input_layernorm.weight")
        .unwrap()
        .to_f32();
    assert!(n.iter().all(|x| (x - 1.0).abs() < 0.5));
    assert_eq!(
        ckpt.get("model.layers.1.mlp.gate.e_score_correction_bias")
            .unwrap()
            .dtype,
        glm5_format::DType::F32
    );
}

fn cases() -> u32 {
    std::env::var("GLM5_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Any JSON object: the config parser returns Ok or an error, never panics.
    #[test]
    fn config_parser_never_panics(
        keys in proptest::collection::vec(
            prop_oneof![
                Just("num_hidden_layers"), Just("hidden_size"), Just("n_group"), Just("topk_group"),
                Just("num_experts_per_tok"), Just("n_routed_experts"), Just("indexer_types"),
                Just("index_topk_pattern"), Just("index_topk_freq"), Just("rope_parameters"),
                Just("quantization_config"), Just("mlp_layer_types"), Just("q_lora_rank"), Just("eos_token_id")
            ], 0..6),
        vals in proptest::collection::vec(
            prop_oneof![
                Just(json!(0)), Just(json!(1)), Just(json!(3)), Just(json!(-1)), Just(json!(1e30)),
                Just(json!("FS")), Just(json!(["full"])), Just(json!(null)), Just(json!({"rope_type": "yarn"})),
                Just(json!({"quant_method": "fp8", "weight_block_size": [0, 128]})), Just(json!([1, "x"]))
            ], 6),
        model_type in prop_oneof![Just("glm_moe_dsa"), Just("glm4_moe_lite"), Just("deepseek_v32"), Just("x")],
    ) {
        let mut v = json!({"model_type": model_type});
        for (k, val) in keys.iter().zip(vals) {
            v[*k] = val;
        }
        if let Ok(cfg) = Config::from_json(&v, &memory_path()) {
            // A config that parses is usable: the spec can be built (small ones only).
            if cfg.num_hidden_layers <= 4 && cfg.hidden_size <= 64 {
                let _ = tensor_specs(&cfg);
            }
        }
    }
}
