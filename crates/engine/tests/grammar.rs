//! Constrained decoding: GLM tool-call and JSON grammars over the bundled vocabulary accept
//! exactly the token sequences of valid output.

use std::path::Path;

use glm5_engine::constrain::Constraint;
use glm5_engine::glm_grammar::{json_answer_lark, strict_calls_lark, tool_call_lark};
use glm5_engine::Tokenizer;
use serde_json::json;

fn tok() -> Tokenizer {
    Tokenizer::from_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/glm5-tiny"))
        .unwrap()
}

/// Whether the constraint lets `text` (encoded as the model would write it) through, token by
/// token, and may end after it.
fn accepts(tok: &Tokenizer, c: &Constraint, text: &str, stops: &[u32]) -> bool {
    let mut c = c.clone();
    for t in tok.encode(text).unwrap() {
        let mut logits = vec![0.0f32; tok.vocab_size()];
        c.mask(&mut logits, stops).unwrap();
        if logits[t as usize] == f32::NEG_INFINITY {
            return false;
        }
        c.accept(t, stops).unwrap();
    }
    let mut logits = vec![0.0f32; tok.vocab_size()];
    c.mask(&mut logits, stops).unwrap();
    stops.iter().any(|&s| logits[s as usize] == 0.0)
}

fn verse_tools() -> Vec<serde_json::Value> {
    vec![
        json!({"type": "function", "function": {"name": "get_verse", "parameters": {"type": "object",
            "properties": {"book": {"type": "string"}, "chapter": {"type": "integer"},
                           "verse": {"type": ["integer", "null"]}},
            "required": ["book", "chapter", "verse"], "additionalProperties": false}}}),
        json!({"type": "function", "function": {"name": "ls", "parameters": {"type": "object"}}}),
    ]
}

#[test]
fn a_forced_call_follows_the_schema() {
    let tok = tok();
    let stops = [tok.token_id("<|observation|>").unwrap()];
    let g = tok.grammars().unwrap();
    let named = g
        .lark(&tool_call_lark(&verse_tools(), Some("get_verse"), false))
        .unwrap();
    let ok = "<arg_key>book</arg_key><arg_value>Genesis <1> & co</arg_value><arg_key>chapter</arg_key><arg_value>1</arg_value><arg_key>verse</arg_key><arg_value>null</arg_value></tool_call>";
    assert!(accepts(&tok, &named, ok, &stops));
    assert!(accepts(&tok, &named, "</tool_call>", &stops));
    for bad in [
        "<arg_key>chapter</arg_key><arg_value>one</arg_value></tool_call>",
        "<arg_key>author</arg_key><arg_value>Moses</arg_value></tool_call>",
        "<arg_key>book</arg_key><arg_value>Genesis</arg_value>",
        "text instead of a call",
        "</tool_call><tool_call>ls</tool_call>",
    ] {
        assert!(!accepts(&tok, &named, bad, &stops), "{bad}");
    }
    // Any tool, several calls; an open schema takes any key.
    let any = g.lark(&tool_call_lark(&verse_tools(), None, true)).unwrap();
    assert!(accepts(
        &tok,
        &any,
        "ls<arg_key>path</arg_key><arg_value>/tmp</arg_value></tool_call><tool_call>get_verse<arg_key>chapter</arg_key><arg_value>3</arg_value></tool_call>",
        &stops
    ));
    assert!(!accepts(&tok, &any, "rm</tool_call>", &stops));
}

#[test]
fn a_json_answer_follows_the_schema() {
    let tok = tok();
    let stops = [tok.token_id("<|user|>").unwrap()];
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"},
        "n": {"type": "integer"}}, "required": ["name", "n"], "additionalProperties": false});
    let g = tok.grammars().unwrap();
    let plain = g.lark(&json_answer_lark(&schema, false)).unwrap();
    assert!(accepts(&tok, &plain, r#"{"name": "Adam", "n": 1}"#, &stops));
    assert!(!accepts(&tok, &plain, r#"{"name": "Adam"}"#, &stops));
    assert!(!accepts(
        &tok,
        &plain,
        r#"{"name": "Adam", "n": 1, "x": 2}"#,
        &stops
    ));
    assert!(!accepts(
        &tok,
        &plain,
        r#"Sure! {"name": "Adam", "n": 1}"#,
        &stops
    ));
    let thinking = g.lark(&json_answer_lark(&schema, true)).unwrap();
    assert!(accepts(
        &tok,
        &thinking,
        r#"Let me see.</think>{"name": "Eve", "n": 2}"#,
        &stops
    ));
    assert!(!accepts(
        &tok,
        &thinking,
        r#"{"name": "Eve", "n": 2}"#,
        &stops
    ));
    assert!(g.lark("start: %json {\"type\": 5}").is_err());
}

#[test]
fn strict_tools_leave_text_free_and_calls_valid() {
    let tok = tok();
    let stops = [tok.token_id("<|observation|>").unwrap()];
    let g = tok.grammars().unwrap();
    let c = g
        .lark(&strict_calls_lark(&verse_tools(), true, true))
        .unwrap();
    assert!(accepts(&tok, &c, "hm</think>Sure.", &stops));
    assert!(accepts(
        &tok,
        &c,
        "hm</think>Sure.<tool_call>get_verse<arg_key>chapter</arg_key><arg_value>3</arg_value></tool_call>",
        &stops
    ));
    assert!(!accepts(
        &tok,
        &c,
        "hm</think><tool_call>get_verse<arg_key>chapter</arg_key><arg_value>three</arg_value></tool_call>",
        &stops
    ));
    assert!(!accepts(&tok, &c, "hm</think>a<|assistant|>b", &stops));
    let one = g
        .lark(&strict_calls_lark(&verse_tools(), false, false))
        .unwrap();
    assert!(!accepts(
        &tok,
        &one,
        "<tool_call>ls</tool_call><tool_call>ls</tool_call>",
        &stops
    ));
    assert!(accepts(&tok, &one, "<tool_call>ls</tool_call>", &stops));
}

/// A model whose vocabulary is larger than the tokenizer's (padded embeddings, a borrowed
/// tokenizer): the ids past the tokenizer's are masked, not read out of bounds (found by the
/// soak on the bench model, whose 32,768 logits meet the bundled 4,096-token tokenizer).
#[test]
fn logits_wider_than_the_vocabulary_are_masked_past_its_end() {
    let tok = tok();
    let stop = tok.token_id("<|observation|>").unwrap();
    let mut c = tok
        .grammars()
        .unwrap()
        .lark(&tool_call_lark(&verse_tools(), Some("get_verse"), false))
        .unwrap();
    let mut logits = vec![0.0f32; 32768];
    c.mask(&mut logits, &[stop]).unwrap();
    assert!(logits[tok.vocab_size()..]
        .iter()
        .all(|&x| x == f32::NEG_INFINITY));
    assert!(logits[..tok.vocab_size()].iter().any(|x| x.is_finite()));
}
