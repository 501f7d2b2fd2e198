//! The text path against the Python reference: fixtures in testdata/text/ were made by
//! scripts/make_text_fixtures.py from the bundled model folder (tokenizers 0.23, transformers 5.23).

use std::path::{Path, PathBuf};

use glm5_engine::{
    generate, ChatInput, ChatTemplate, Detokenizer, GenerateRequest, ModelDir, SamplingParams,
    Session, Tokenizer,
};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_dir() -> PathBuf {
    root().join("models/glm5-tiny")
}

fn fixture(name: &str) -> Value {
    let path = root().join("testdata/text").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn token_ids_match_python_tokenizers() {
    let tok = Tokenizer::from_path(&model_dir()).unwrap();
    let cases = fixture("tokenizer_cases.json");
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let expected = ids(&c["ids"]);
        assert_eq!(tok.encode(text).unwrap(), expected, "encoding {text:?}");
        let decoded = tok.decode(&expected).unwrap();
        assert_eq!(decoded, c["decoded"].as_str().unwrap(), "decoding {text:?}");

        // Streaming one token at a time gives the same text, and never half a character.
        let mut d = Detokenizer::showing_hidden(true);
        let mut streamed = String::new();
        for &id in &expected {
            let piece = d.push(&tok, id).unwrap();
            if !decoded.contains('\u{FFFD}') {
                assert!(
                    !piece.contains('\u{FFFD}'),
                    "{text:?}: broken piece {piece:?}"
                );
            }
            streamed.push_str(&piece);
        }
        streamed.push_str(&d.flush(&tok).unwrap());
        assert_eq!(streamed, decoded, "streaming {text:?}");
    }
}

#[test]
fn chat_template_matches_apply_chat_template() {
    let template = ChatTemplate::from_model_dir(&model_dir()).unwrap();
    let tok = Tokenizer::from_path(&model_dir()).unwrap();
    let cases = fixture("chat_cases.json");
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for (i, c) in cases.iter().enumerate() {
        let input = ChatInput {
            messages: c["messages"].as_array().unwrap().clone(),
            tools: c["tools"].as_array().cloned(),
            add_generation_prompt: c["add_generation_prompt"].as_bool().unwrap(),
            kwargs: c["kwargs"].as_object().unwrap().clone(),
        };
        let text = template.render(&input).unwrap();
        assert_eq!(text, c["expected"].as_str().unwrap(), "case {i}");
        assert_eq!(
            tok.encode(&text).unwrap(),
            ids(&c["expected_ids"]),
            "case {i} ids"
        );
    }
}

/// Greedy generation equals transformers' greedy `generate`, up to the first step where the two
/// best reference logits are within `TIE` (there either choice is right).
#[test]
fn greedy_generation_matches_transformers() {
    const TIE: f64 = 1e-3;
    let md = ModelDir::load(&model_dir()).unwrap();
    let fx = fixture("greedy_cases.json");
    let stop_ids = ids(&fx["stop_ids"]);
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    let mut session = Session::new(&md.model);
    for c in cases {
        let prompt = ids(&c["prompt_ids"]);
        assert_eq!(
            md.tokenizer
                .encode(c["prompt_text"].as_str().unwrap())
                .unwrap(),
            prompt
        );
        // transformers pads after a stop token; compare through the first one.
        let mut expected = ids(&c["new_ids"]);
        if let Some(at) = expected.iter().position(|t| stop_ids.contains(t)) {
            expected.truncate(at + 1);
        }
        let gaps: Vec<f64> = c["top2_gaps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_f64().unwrap())
            .collect();
        let req = GenerateRequest {
            prompt,
            params: SamplingParams::greedy(),
            max_tokens: 32,
            stop: vec![],
            stop_token_ids: stop_ids.clone(),
        };
        let out = generate(&mut session, &md.tokenizer, &req, |_| true).unwrap();
        let mut got = out.tokens.clone();
        if let glm5_engine::FinishReason::StopToken(t) = out.finish {
            got.push(t);
        }
        let sure = gaps.iter().take_while(|&&g| g > TIE).count();
        let n = sure.min(expected.len());
        assert!(
            n >= 8.min(expected.len()),
            "{}: too few decisive steps to compare",
            c["kind"]
        );
        assert_eq!(
            &got[..n.min(got.len())],
            &expected[..n],
            "{}: {:?}",
            c["kind"],
            c["new_text"]
        );
    }
}

#[test]
fn broken_tokenizer_and_template_name_the_file() {
    let dir = tempfile_dir();
    std::fs::write(dir.join("tokenizer.json"), b"{not json").unwrap();
    let e = Tokenizer::from_path(&dir).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    let e = ChatTemplate::from_model_dir(&dir).unwrap_err().to_string();
    assert!(
        e.contains("chat template") || e.contains("chat_template"),
        "{e}"
    );
    std::fs::write(dir.join("chat_template.jinja"), b"{% for %}").unwrap();
    let e = ChatTemplate::from_model_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("chat_template.jinja"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("glm5-text-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The bundled model was trained on GLM tool calls: with a tool in the prompt it calls it, and the
/// parser turns its output into a typed call (chapter and verse are integers by the schema).
#[test]
fn bundled_model_calls_its_tool_and_the_parser_reads_it() {
    use glm5_engine::glm_parser::{Event, GlmParser, ToolSchemas};
    let md = ModelDir::load(&model_dir()).unwrap();
    let tool = serde_json::json!({"type": "function", "function": {
        "name": "get_verse", "description": "Look up one verse of the King James Bible.",
        "parameters": {"type": "object", "properties": {
            "book": {"type": "string", "description": "Book name, e.g. Genesis"},
            "chapter": {"type": "integer"}, "verse": {"type": "integer"}},
            "required": ["book", "chapter", "verse"]}}});
    let prompt = md
        .template()
        .unwrap()
        .render(&ChatInput {
            messages: vec![serde_json::json!({"role": "user", "content": "Read Genesis 1:3."})],
            tools: Some(vec![tool.clone()]),
            add_generation_prompt: true,
            kwargs: Default::default(),
        })
        .unwrap();
    let req = GenerateRequest {
        prompt: md.tokenizer.encode(&prompt).unwrap(),
        params: SamplingParams::greedy(),
        max_tokens: 80,
        stop: vec![],
        stop_token_ids: md.stop_token_ids.clone(),
    };
    let mut session = Session::new(&md.model);
    let out = generate(&mut session, &md.tokenizer, &req, |_| true).unwrap();
    let observation = md.tokenizer.token_id("<|observation|>").unwrap();
    assert_eq!(
        out.finish,
        glm5_engine::FinishReason::StopToken(observation),
        "{:?}",
        out.text
    );
    let mut parser = GlmParser::new(true, ToolSchemas::new(&[tool]));
    let mut events = parser.push(&out.text);
    events.extend(parser.finish());
    let call = events
        .iter()
        .find_map(|e| match e {
            Event::ToolCall { name, arguments } => Some((name, arguments)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no tool call in {:?}", out.text));
    assert_eq!(call.0, "get_verse");
    assert!(call.1["book"].is_string(), "{:?}", call.1);
    assert!(
        call.1["chapter"].is_u64() && call.1["verse"].is_u64(),
        "{:?}",
        call.1
    );
    assert!(matches!(events[0], Event::Reasoning(_)), "{events:?}");
}
