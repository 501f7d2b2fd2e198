//! The tokenizer stored in a GGUF's metadata (`tokenizer.ggml.*`, as llama.cpp's converter
//! writes it), rebuilt as a `tokenizer.json` for the `tokenizers` crate: GLM's byte-level BPE
//! (`tokenizer.ggml.model = "gpt2"`) with the pre-tokenizer `tokenizer.ggml.pre` names.
//!
//! Token types (llama.cpp's `llama_token_type`): 1 normal and 6 byte tokens form the BPE
//! vocabulary; 3 control and 4 user-defined tokens are added tokens (special and not, as the
//! converter mapped them from `added_tokens`); 5 unused (`[PAD123]` fillers) are left out.
//! Like llama.cpp for the `glm4`/`glm5` pre-tokenizers, a pre-token that is a whole vocabulary
//! entry is taken as it is (`ignore_merges`).

use glm5_format::{GgufFile, GgufValue};
use serde_json::{json, Value};

/// GLM-4's pre-tokenizer split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_CHATGLM4`, written the way
/// GLM's own `tokenizer.json` writes it).
const GLM4_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values glm5 rebuilds, with their split regex and `ignore_merges`.
const PRE: [(&str, &str, bool); 3] = [
    ("glm4", GLM4_SPLIT, true),
    ("glm5", GLM4_SPLIT, true),
    ("chatglm-bpe", GLM4_SPLIT, false),
];

const NORMAL: i64 = 1;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const BYTE: i64 = 6;

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, String> {
    let arr = file
        .get(key)
        .ok_or_else(|| format!("{key} is missing"))?
        .as_array()
        .ok_or_else(|| format!("{key} is not an array"))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| format!("{key}[{i}] is not a string"))
        })
        .collect()
}

fn token_types(file: &GgufFile, n: usize) -> Result<Vec<i64>, String> {
    let key = "tokenizer.ggml.token_type";
    let Some(v) = file.get(key) else {
        return Ok(vec![NORMAL; n]);
    };
    let arr = v
        .as_array()
        .ok_or_else(|| format!("{key} is not an array"))?;
    if arr.len() != n {
        return Err(format!("{key} has {} entries for {n} tokens", arr.len()));
    }
    arr.iter()
        .enumerate()
        .map(|(i, v)| match v {
            GgufValue::I32(t) => Ok(*t as i64),
            other => other
                .as_u64()
                .map(|t| t as i64)
                .ok_or_else(|| format!("{key}[{i}] is not an integer")),
        })
        .collect()
}

/// The `tokenizer.json` text for `file`'s `tokenizer.ggml.*`, or the reason it cannot be
/// built (naming the metadata key).
pub fn tokenizer_json(file: &GgufFile) -> Result<String, String> {
    let model = file
        .get("tokenizer.ggml.model")
        .ok_or("the file has no tokenizer (tokenizer.ggml.model is missing)")?
        .as_str()
        .ok_or("tokenizer.ggml.model is not a string")?;
    if model != "gpt2" {
        return Err(format!(
            "tokenizer.ggml.model is '{model}'; glm5 rebuilds byte-level BPE tokenizers \
             ('gpt2', GLM's) only"
        ));
    }
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(GgufValue::as_str)
        .unwrap_or("default");
    let &(_, split, ignore_merges) = PRE.iter().find(|p| p.0 == pre).ok_or_else(|| {
        let known: Vec<&str> = PRE.iter().map(|p| p.0).collect();
        format!(
            "tokenizer.ggml.pre is '{pre}', a pre-tokenizer glm5 does not know (known: {})",
            known.join(", ")
        )
    })?;
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let types = token_types(file, tokens.len())?;
    let merges = strings(file, "tokenizer.ggml.merges")?;

    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, (&tok, &ty)) in tokens.iter().zip(&types).enumerate() {
        match ty {
            NORMAL | BYTE => {
                vocab.insert(tok.to_string(), json!(id));
            }
            CONTROL | USER_DEFINED => added.push(json!({
                "id": id,
                "content": tok,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": ty == CONTROL,
            })),
            _ => {}
        }
    }
    let tj = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": split},
                    "behavior": "Isolated",
                    "invert": false,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": false,
                    "trim_offsets": false,
                    "use_regex": false,
                },
            ],
        },
        "post_processor": null,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": true,
            "trim_offsets": true,
            "use_regex": true,
        },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": Value::Object(vocab),
            "merges": merges,
        },
    });
    Ok(tj.to_string())
}

/// The special-token ids the GGUF names that end a turn (`eos`, `eot`, `eom`).
pub fn stop_ids(file: &GgufFile) -> Vec<u32> {
    ["eos", "eot", "eom"]
        .iter()
        .filter_map(|k| file.get(&format!("tokenizer.ggml.{k}_token_id"))?.as_u64())
        .map(|id| id as u32)
        .collect()
}
