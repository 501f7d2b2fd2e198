//! Cost of constrained decoding per generated token: the llguidance mask and advance for a
//! forced tool call and for a json_schema answer, over a model's vocabulary.
//!
//!     cargo run --release -p glm5-engine --example grammar_cost -- [MODEL_DIR_OR_GGUF]

use std::path::PathBuf;
use std::time::Instant;

use glm5_engine::glm_grammar::{json_answer_lark, tool_call_lark};
use glm5_engine::{ModelDir, Tokenizer};
use serde_json::json;

/// (compile ms, mask + advance us per token, tokens).
fn per_token_us(tok: &Tokenizer, lark: &str, text: &str, reps: usize) -> (f64, f64, usize) {
    let t0 = Instant::now();
    let c = tok.grammars().unwrap().lark(lark).unwrap();
    let compile = t0.elapsed().as_secs_f64() * 1e3;
    let ids = tok.encode(text).unwrap();
    let stops = [0u32];
    let mut logits = vec![0.0f32; tok.vocab_size()];
    let t0 = Instant::now();
    for _ in 0..reps {
        let mut c = c.clone();
        for &t in &ids {
            logits.fill(0.0);
            c.mask(&mut logits, &stops).unwrap();
            assert!(
                logits[t as usize].is_finite(),
                "the grammar refuses {:?} after {:?}",
                tok.decode(&[t]).unwrap(),
                tok.decode(&ids[..ids.iter().position(|&x| x == t).unwrap_or(0)])
                    .unwrap()
            );
            c.accept(t, &stops).unwrap();
        }
    }
    (
        compile,
        t0.elapsed().as_secs_f64() * 1e6 / (reps * ids.len()) as f64,
        ids.len(),
    )
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/glm5-tiny")
        });
    let tok = ModelDir::load_tokenizer(&path).unwrap();
    let t0 = Instant::now();
    tok.grammars().unwrap(); // the vocabulary's token trie, once per process
    println!(
        "{}: vocabulary {}, grammar compiler built in {:.1} ms",
        path.display(),
        tok.vocab_size(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    let tools = vec![
        json!({"type": "function", "function": {"name": "exec_command", "parameters": {
        "type": "object", "properties": {"cmd": {"type": "string"}, "timeout_ms": {"type": "integer"},
        "env": {"type": "object", "additionalProperties": {"type": "string"}}},
        "required": ["cmd"], "additionalProperties": false}}}),
    ];
    let call = "<arg_key>cmd</arg_key><arg_value>grep -rn \"fn main\" crates/ | head -20</arg_value><arg_key>timeout_ms</arg_key><arg_value>10000</arg_value><arg_key>env</arg_key><arg_value>{\"LANG\": \"C\"}</arg_value></tool_call>";
    let (ms, us, n) = per_token_us(
        &tok,
        &tool_call_lark(&tools, Some("exec_command"), true),
        call,
        20,
    );
    println!("forced tool call: compiled in {ms:.2} ms; {us:.1} us per token ({n} tokens)");
    let schema = json!({"type": "object", "properties": {"title": {"type": "string"},
        "steps": {"type": "array", "items": {"type": "object", "properties": {
            "file": {"type": "string"}, "line": {"type": "integer"}}, "required": ["file", "line"]}}},
        "required": ["title", "steps"], "additionalProperties": false});
    let answer = r#"{"title": "Fix the off-by-one in the parser", "steps": [{"file": "src/parse.rs", "line": 120}, {"file": "src/lex.rs", "line": 7}]}"#;
    let (ms, us, n) = per_token_us(&tok, &json_answer_lark(&schema, false), answer, 20);
    println!("json_schema answer: compiled in {ms:.2} ms; {us:.1} us per token ({n} tokens)");
}
