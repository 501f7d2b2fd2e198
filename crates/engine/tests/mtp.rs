//! Speculative decoding with the MTP layer through `generate`: greedy output token for token
//! identical to plain decoding, on the bundled trained model (whose drafts are mostly accepted)
//! and on a random synthetic model (whose drafts are mostly rejected, so rollback runs often),
//! past `index_topk` so the DSA selection and the indexer-key cache take part.

use std::path::{Path, PathBuf};

use glm5_engine::{generate, GenerateRequest, Output, SamplingParams, Session, Tokenizer};
use glm5_kernels::WFormat;
use glm5_model::synth::{write_checkpoint, SynthDType, SynthOptions};
use glm5_model::{Config, Model, Quant};
use serde_json::json;

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/glm5-tiny")
}

fn run(
    s: &mut Session,
    tok: &Tokenizer,
    prompt: &[u32],
    n: usize,
    params: SamplingParams,
) -> Output {
    let req = GenerateRequest {
        prompt: prompt.to_vec(),
        params,
        max_tokens: n,
        stop: vec![],
        stop_token_ids: vec![],
    };
    generate(s, tok, &req, |_| true).unwrap()
}

/// Greedy with and without drafts over `prompts`; returns (accepted, drafted).
fn check_identical(
    m: &Model,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    n: usize,
    k: usize,
) -> (usize, usize) {
    let (mut acc, mut drafted) = (0, 0);
    for (i, p) in prompts.iter().enumerate() {
        let plain = run(&mut Session::new(m), tok, p, n, SamplingParams::greedy());
        let mut s = Session::with_mtp(m, k).unwrap();
        let spec = run(&mut s, tok, p, n, SamplingParams::greedy());
        assert_eq!(spec.tokens, plain.tokens, "prompt {i}, draft {k}");
        assert_eq!(spec.text, plain.text);
        // The same session goes on from its rolled-back cache: a second turn is still exact.
        let mut p2 = p.clone();
        p2.extend_from_slice(&spec.tokens[..n / 2]);
        let again = run(&mut s, tok, &p2, n / 2, SamplingParams::greedy());
        assert_eq!(
            again.tokens,
            plain.tokens[n / 2..],
            "prompt {i}: reused session"
        );
        assert!(again.cached_tokens > 0);
        acc += spec.spec.accepted;
        drafted += spec.spec.drafted;
    }
    (acc, drafted)
}

#[test]
fn greedy_is_identical_with_mtp_on_the_bundled_model() {
    let tok = Tokenizer::from_path(&bundled()).unwrap();
    let texts = [
        "And God said",
        "In the beginning was the Word",
        "The LORD is my shepherd; I shall not want.",
        "And it came to pass in those days",
        "Blessed are the poor in spirit",
        "Then Jesus answered and said unto them",
    ];
    let mut prompts: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t).unwrap()).collect();
    // One prompt past index_topk (128).
    prompts.push(tok.encode(&texts.concat().repeat(6)).unwrap());
    assert!(prompts.last().unwrap().len() > 128);
    for quant in [Quant::Uniform(WFormat::BF16), Quant::Uniform(WFormat::Q8_0)] {
        let m = Model::load_as(&bundled(), quant).unwrap();
        for k in [1, 3] {
            let (acc, drafted) = check_identical(&m, &tok, &prompts, 40, k);
            assert!(
                acc * 3 > drafted,
                "{quant:?} draft {k}: {acc} of {drafted} accepted"
            );
        }
    }
}

#[test]
fn greedy_is_identical_with_mtp_on_a_synthetic_model() {
    let v = json!({
        "model_type": "glm_moe_dsa", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 96,
        "moe_intermediate_size": 32, "num_hidden_layers": 3, "first_k_dense_replace": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": 48, "kv_lora_rank": 32,
        "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 16, "n_routed_experts": 8,
        "num_experts_per_tok": 2, "index_n_heads": 2, "index_head_dim": 32, "index_topk": 8,
        "indexer_types": ["full", "shared", "full"], "num_nextn_predict_layers": 1,
        "max_position_embeddings": 512,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::from_json(&v, &dir.path().join("config.json")).unwrap();
    let opts = SynthOptions {
        seed: 11,
        dtype: SynthDType::Bf16,
        max_shard_bytes: 1 << 30,
    };
    write_checkpoint(&v, &cfg, dir.path(), &opts, &|_| {}).unwrap();
    let tok = Tokenizer::from_path(&bundled()).unwrap(); // ids < 256 are byte tokens
    let prompts: Vec<Vec<u32>> = (0..6)
        .map(|s| {
            (0..3 + 7 * s)
                .map(|i| ((i * 37 + s * 11) % 250) as u32)
                .collect()
        })
        .collect();
    for quant in [Quant::Uniform(WFormat::F32), Quant::Uniform(WFormat::Q8_0)] {
        let m = Model::load_as(dir.path(), quant).unwrap();
        assert!(m.mtp.is_some());
        for k in [2, 4] {
            let (_, drafted) = check_identical(&m, &tok, &prompts, 30, k);
            assert!(drafted > 0);
        }
    }
}
