//! The tokenizer rebuilt from a GGUF's `tokenizer.ggml.*` against the HF `tokenizer.json` ids
//! (testdata/text/tokenizer_cases.json, from Python `tokenizers`): on the metadata that
//! `glm5 quantize` writes, and on the metadata llama.cpp's own `convert_hf_to_gguf.py` wrote
//! for the bundled model (testdata/gguf/glm5-tiny-vocab.gguf, made by
//! scripts/make_gguf_fixtures.py).

use std::path::{Path, PathBuf};

use glm5_engine::gguf_tokenizer::tokenizer_json;
use glm5_engine::Tokenizer;
use glm5_format::{GgufFile, GgufValue, GgufWriter};
use glm5_model::gguf_write::write_gguf;
use glm5_model::Quant;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn check_cases(tok: &Tokenizer, what: &str) {
    let path = root().join("testdata/text/tokenizer_cases.json");
    let cases: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    for c in cases["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let expected: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text).unwrap(), expected, "{what}: {text:?}");
        assert_eq!(
            tok.decode(&expected).unwrap(),
            c["decoded"].as_str().unwrap(),
            "{what}: decoding {text:?}"
        );
    }
}

fn rebuilt(file: &GgufFile) -> Tokenizer {
    let json = tokenizer_json(file).unwrap();
    Tokenizer::from_bytes(json.as_bytes(), &file.path).unwrap()
}

#[test]
fn tokenizer_from_glm5_gguf_metadata_matches_hf() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny-q8_0.gguf");
    write_gguf(
        &root().join("models/glm5-tiny"),
        &out,
        Quant::parse("q8_0").unwrap(),
        &mut |_, _, _| {},
    )
    .unwrap();
    let file = GgufFile::open(&out).unwrap();
    check_cases(&rebuilt(&file), "glm5 quantize metadata");
}

#[test]
fn tokenizer_from_llama_cpp_converter_metadata_matches_hf() {
    let path = root().join("testdata/gguf/glm5-tiny-vocab.gguf");
    let file = GgufFile::open(&path).unwrap();
    assert!(file.get("tokenizer.huggingface.json").is_none());
    check_cases(&rebuilt(&file), "convert_hf_to_gguf.py metadata");
}

/// A copy of `file`'s metadata with `key` set to `value` (no tensors).
fn with_key(dir: &Path, file: &GgufFile, key: &str, value: GgufValue) -> GgufFile {
    let mut meta: Vec<(String, GgufValue)> = file
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != key && !k.starts_with("GGUF."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.push((key.to_string(), value));
    let out = dir.join(format!("{key}.gguf"));
    GgufWriter::create(&out, &meta, Vec::new())
        .unwrap()
        .finish()
        .unwrap();
    GgufFile::open(&out).unwrap()
}

#[test]
fn unknown_tokenizer_metadata_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let file = GgufFile::open(&root().join("testdata/gguf/glm5-tiny-vocab.gguf")).unwrap();
    for (key, value, needle) in [
        (
            "tokenizer.ggml.model",
            GgufValue::Str("llama".into()),
            "tokenizer.ggml.model is 'llama'",
        ),
        (
            "tokenizer.ggml.pre",
            GgufValue::Str("qwen2".into()),
            "tokenizer.ggml.pre is 'qwen2'",
        ),
        (
            "tokenizer.ggml.merges",
            GgufValue::U32(3),
            "tokenizer.ggml.merges is not an array",
        ),
        (
            "tokenizer.ggml.token_type",
            GgufValue::Array(vec![GgufValue::I32(1)]),
            "tokenizer.ggml.token_type has 1 entries",
        ),
    ] {
        let changed = with_key(tmp.path(), &file, key, value);
        let err = tokenizer_json(&changed).unwrap_err();
        assert!(err.contains(needle), "{key}: {err}");
    }
}
