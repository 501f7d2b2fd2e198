//! The streamed GLM output parser, fuzzed: texts made of its tags, fragments of them and
//! ordinary text, fed whole and in random chunks, give the same events (adjacent text of one
//! kind merged), never panic, and lose no text outside the tags. Cases: GLM5_FUZZ_CASES
//! (default 500).

use glm5_engine::glm_parser::{merge, Event, GlmParser, ToolSchemas};
use proptest::prelude::*;
use serde_json::json;

fn cases() -> u32 {
    std::env::var("GLM5_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(
            &[
                "<think>",
                "</think>",
                "<tool_call>",
                "</tool_call>",
                "<arg_key>",
                "</arg_key>",
                "<arg_value>",
                "</arg_value>",
                "get_verse",
                "book",
                "chapter",
                "Genesis",
                "3",
                "{\"a\": [1, 2]}",
                "<",
                ">",
                "</",
                "<tool",
                "_call>",
                "\n",
                " ",
            ][..]
        )
        .prop_map(str::to_string),
        "\\PC{0,6}",
    ]
}

fn run(thinking: bool, chunks: &[String]) -> Vec<Event> {
    let tools = [
        json!({"type": "function", "function": {"name": "get_verse", "parameters": {
        "type": "object", "properties": {"book": {"type": "string"}, "chapter": {"type": "integer"}}}}}),
    ];
    let mut p = GlmParser::new(thinking, ToolSchemas::new(&tools));
    let mut events = Vec::new();
    for c in chunks {
        events.extend(p.push(c));
    }
    events.extend(p.finish());
    merge(events)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn chunking_never_changes_the_events(
        parts in proptest::collection::vec(piece(), 0..24),
        cuts in proptest::collection::vec(1usize..8, 0..40),
        thinking in any::<bool>(),
    ) {
        let text: String = parts.concat();
        let whole = run(thinking, std::slice::from_ref(&text));
        // The same text cut at arbitrary character positions.
        let chars: Vec<char> = text.chars().collect();
        let mut chunks = Vec::new();
        let mut at = 0;
        for c in cuts.iter().cycle().take(chars.len()) {
            if at >= chars.len() {
                break;
            }
            let end = (at + c).min(chars.len());
            chunks.push(chars[at..end].iter().collect::<String>());
            at = end;
        }
        if at < chars.len() {
            chunks.push(chars[at..].iter().collect());
        }
        prop_assert_eq!(run(thinking, &chunks), whole.clone(), "{:?}", text);
        // Text with no tag at all comes back whole.
        if !text.contains('<') {
            let shown: String = whole
                .iter()
                .map(|e| match e {
                    Event::Text(s) | Event::Reasoning(s) => s.clone(),
                    Event::ToolCall { .. } => String::new(),
                })
                .collect();
            prop_assert_eq!(shown, text);
        }
    }
}
