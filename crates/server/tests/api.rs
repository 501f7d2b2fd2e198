//! The real router over the bundled model on a loopback port, driven with raw HTTP/1.1: JSON
//! bodies, the SSE chunk sequences of both APIs, tool calls, errors, prefix caching and
//! cancellation.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[test]
fn openai_chat_plain_streamed_and_tool_calls() {
    let addr = start(None, 4, 16, true);
    let (st, v) = post(
        addr,
        "/v1/chat/completions",
        &json!({
        "model": "glm5-tiny", "temperature": 0, "max_tokens": 40,
        "messages": [{"role": "user", "content": "And God said, Let there be light: and there was light."}]}),
    );
    assert_eq!(st, 200, "{v}");
    let msg = &v["choices"][0]["message"];
    assert!(!msg["content"].as_str().unwrap().is_empty(), "{v}");
    assert!(!msg["content"].as_str().unwrap().contains("think>"), "{v}");
    assert!(
        msg["reasoning_content"].as_str().is_some(),
        "thinking is on by default: {v}"
    );
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64().unwrap()
            + v["usage"]["prompt_tokens"].as_u64().unwrap(),
        v["usage"]["total_tokens"].as_u64().unwrap()
    );

    // Streamed, same greedy text, ending in a finish reason, a usage chunk and [DONE].
    let body = json!({"temperature": 0, "max_tokens": 40, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "And God said, Let there be light: and there was light."}]});
    let (st, head, b) = http(addr, "POST", "/v1/chat/completions", &[], &body.to_string());
    assert_eq!(st, 200);
    assert!(head.contains("text/event-stream"), "{head}");
    let events = sse(&b);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e.1).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text.trim(), msg["content"].as_str().unwrap());
    let fin = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert!(fin == "stop" || fin == "length", "{fin}");
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert!(
        chunks.last().unwrap()["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    // A forced (named) tool call is parsed into tool_calls, not left in content (vLLM #48095).
    // Forced calls start at once (no reasoning first); the model would otherwise think first.
    for (choice, name) in [
        (
            json!({"type": "function", "function": {"name": "get_verse"}}),
            "get_verse",
        ),
        (json!("required"), "get_verse"),
    ] {
        let (st, v) = post(
            addr,
            "/v1/chat/completions",
            &json!({
            "temperature": 0, "max_tokens": 60, "tools": [get_verse()], "tool_choice": choice,
            "messages": [{"role": "user", "content": "And God said, Let there be light: and there was light."}]}),
        );
        assert_eq!(st, 200, "{v}");
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{v}");
        let call = &c["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], name, "{v}");
        assert!(c["message"]["reasoning_content"].is_null(), "{v}");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(args.is_object());
        assert!(
            !c["message"]["content"]
                .as_str()
                .unwrap_or("")
                .contains("<tool_call>"),
            "{v}"
        );
    }

    // Multi-turn tool use: the result goes back; no <think> leaks into content (vLLM #27703).
    let (st, v) = post(
        addr,
        "/v1/chat/completions",
        &json!({
        "temperature": 0, "max_tokens": 60, "tools": [get_verse()],
        "messages": [
            {"role": "user", "content": "Read Genesis 1:3."},
            {"role": "assistant", "content": null, "reasoning_content": "The user wants a verse, so I call get_verse.",
             "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_verse", "arguments": "{\"book\": \"Genesis\", \"chapter\": 1, \"verse\": 3}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "And God said, Let there be light: and there was light."}]}),
    );
    assert_eq!(st, 200, "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
    assert!(
        !content.contains("<think>") && !content.contains("</think>"),
        "{v}"
    );

    // Logprobs, n and seed.
    let (st, v) = post(
        addr,
        "/v1/chat/completions",
        &json!({
        "temperature": 0.8, "seed": 5, "n": 2, "max_tokens": 8, "logprobs": true, "top_logprobs": 2,
        "chat_template_kwargs": {"enable_thinking": false},
        "messages": [{"role": "user", "content": "In the beginning"}]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    let lp = &v["choices"][0]["logprobs"]["content"][0];
    assert!(
        lp["logprob"].as_f64().unwrap() <= 0.0 && lp["top_logprobs"].as_array().unwrap().len() == 2,
        "{v}"
    );
}

#[test]
fn anthropic_messages_plain_streamed_and_tool_use() {
    let addr = start(None, 4, 16, true);
    let (st, v) = post(
        addr,
        "/v1/messages",
        &json!({
        "model": "glm5-tiny", "max_tokens": 40, "temperature": 0, "system": "You are a helpful assistant who knows the King James Bible.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "And God said, Let there be light: and there was light."}]}]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["type"], "message");
    let kinds: Vec<&str> = v["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "thinking", "{v}");
    assert!(kinds.contains(&"text"), "{v}");
    assert!(["end_turn", "max_tokens"].contains(&v["stop_reason"].as_str().unwrap()));

    // Tool use forced, then the streaming event sequence.
    let tool = json!({"name": "get_verse", "description": "Look up one verse of the King James Bible.",
        "input_schema": get_verse()["function"]["parameters"]});
    let body = json!({"max_tokens": 60, "temperature": 0, "stream": true, "tools": [tool],
        "tool_choice": {"type": "tool", "name": "get_verse"},
        "messages": [{"role": "user", "content": "And God said, Let there be light: and there was light."}]});
    let (st, _, b) = http(addr, "POST", "/v1/messages", &[], &body.to_string());
    assert_eq!(st, 200);
    let events = sse(&b);
    let names: Vec<&str> = events.iter().map(|e| e.0.as_deref().unwrap()).collect();
    assert_eq!(names[0], "message_start");
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
    let starts: Vec<Value> = events
        .iter()
        .filter(|e| e.0.as_deref() == Some("content_block_start"))
        .map(|e| serde_json::from_str(&e.1).unwrap())
        .collect();
    assert_eq!(
        starts.last().unwrap()["content_block"]["type"],
        "tool_use",
        "{b}"
    );
    assert_eq!(starts.last().unwrap()["content_block"]["name"], "get_verse");
    let delta: Value = serde_json::from_str(&events[names.len() - 2].1).unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    // Every block that starts stops, indices in order.
    let stops = names.iter().filter(|n| **n == "content_block_stop").count();
    assert_eq!(stops, starts.len());

    // The tool_result round trip.
    let (st, v) = post(
        addr,
        "/v1/messages",
        &json!({"max_tokens": 40, "temperature": 0,
        "tools": [{"name": "get_verse", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "Read Genesis 1:3."},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "I call get_verse.", "signature": ""},
                {"type": "tool_use", "id": "toolu_1", "name": "get_verse", "input": {"book": "Genesis", "chapter": 1, "verse": 3}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "And God said, Let there be light: and there was light."}]}]}),
    );
    assert_eq!(st, 200, "{v}");
    for b in v["content"].as_array().unwrap() {
        assert!(!b["text"].as_str().unwrap_or("").contains("think>"), "{v}");
    }
    let (st, v) = post(
        addr,
        "/v1/messages/count_tokens",
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(st, 200);
    assert!(v["input_tokens"].as_u64().unwrap() > 2);
}

#[test]
fn errors_are_4xx_with_the_api_s_body_and_the_server_goes_on() {
    let addr = start(Some("sekrit"), 2, 16, true);
    let auth = [("authorization", "Bearer sekrit")];
    let ask = |path: &str, body: &str, h: &[(&str, &str)]| {
        let (st, _, b) = http(addr, "POST", path, h, body);
        (st, serde_json::from_str::<Value>(&b).unwrap_or(Value::Null))
    };
    let (st, v) = ask("/v1/chat/completions", "{}", &[]);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key")),
        "{v}"
    );
    let (st, v) = ask("/v1/messages", "{}", &[("x-api-key", "wrong")]);
    assert_eq!(
        (st, v["type"].as_str(), v["error"]["type"].as_str()),
        (401, Some("error"), Some("authentication_error")),
        "{v}"
    );
    let (st, v) = ask("/v1/chat/completions", "{not json", &auth);
    assert_eq!(st, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    let (st, v) = ask(
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#,
        &auth,
    );
    assert_eq!(
        (st, v["error"]["param"].as_str()),
        (400, Some("temperature")),
        "{v}"
    );
    let (st, v) = ask(
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "x"}], "model": "gpt-4"}"#,
        &auth,
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("model_not_found")),
        "{v}"
    );
    let long = "verily ".repeat(1500);
    let (st, v) = ask(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": long}]}).to_string(),
        &auth,
    );
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("context"),
        "{v}"
    );
    let (st, v) = ask(
        "/v1/messages",
        r#"{"messages": [{"role": "user", "content": "x"}]}"#,
        &[("x-api-key", "sekrit")],
    );
    assert_eq!(
        (st, v["error"]["type"].as_str()),
        (400, Some("invalid_request_error")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens"),
        "{v}"
    );
    let (st, v) = ask(
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "x"}], "tools": [], "tool_choice": {"type": "function", "function": {"name": "nope"}}, "n": 0}"#,
        &auth,
    );
    assert_eq!((st, v["error"]["param"].as_str()), (400, Some("n")), "{v}");
    // Still serving.
    let (st, v) = ask(
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 3}"#,
        &auth,
    );
    assert_eq!(st, 200, "{v}");
    let (st, _, body) = http(addr, "GET", "/health", &[], "");
    assert_eq!((st, body.as_str()), (200, "ok"));
}

#[test]
fn prefix_cache_cancellation_and_metrics() {
    let addr = start(None, 4, 16, false);
    let system = "You are a helpful assistant who knows the King James Bible. ".repeat(30);
    let body = |q: &str| json!({"max_tokens": 4, "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]});
    let (_, v) = post(addr, "/v1/chat/completions", &body("In the beginning"));
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let (_, v) = post(
        addr,
        "/v1/chat/completions",
        &body("And the earth was without form"),
    );
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached > 300, "the system prompt is reused: {v}");

    // A client that hangs up mid-stream has its sequence cancelled.
    let mut s = TcpStream::connect(addr).unwrap();
    let b = json!({"max_tokens": 1000, "stream": true, "messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"enable_thinking": false}}).to_string();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    )
    .unwrap();
    let mut buf = [0u8; 2048];
    let _ = s.read(&mut buf).unwrap();
    drop(s);
    let mut text = String::new();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        text = http(addr, "GET", "/metrics", &[], "").2;
        if text.contains("glm5_requests_cancelled_total 1") {
            break;
        }
    }
    for want in [
        "glm5_requests_cancelled_total 1",
        "glm5_time_to_first_token_seconds_count",
        "glm5_queue_depth",
        "glm5_batch_size_mean",
        "glm5_inter_token_latency_seconds_bucket",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
}

/// `serve --mtp`: concurrent greedy requests with MTP drafting give exactly the text of a server
/// without it (streamed and not), and /metrics reports the acceptance.
#[test]
fn mtp_serving_gives_the_same_greedy_text_and_reports_acceptance() {
    let plain = start(None, 4, 16, false);
    let spec = start_with(None, 4, 16, false, 3);
    let prompts = [
        "And God said, Let there be light: and there was light.",
        "Read Genesis 1:3.",
        "Who was the first king of Israel?",
        "Continue: In the beginning",
    ];
    let body = |p: &str, stream: bool| {
        json!({"model": "glm5-tiny", "temperature": 0, "max_tokens": 48, "stream": stream,
               "messages": [{"role": "user", "content": p}]})
    };
    let text = |addr: SocketAddr, p: &str| {
        let (st, v) = post(addr, "/v1/chat/completions", &body(p, false));
        assert_eq!(st, 200, "{v}");
        let m = &v["choices"][0]["message"];
        format!("{}|{}", m["reasoning_content"], m["content"])
    };
    let want: Vec<String> = prompts.iter().map(|p| text(plain, p)).collect();
    let got: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = prompts
            .iter()
            .map(|p| s.spawn(move || text(spec, p)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(got, want);
    // Streamed: the deltas add up to the same content.
    let (st, _, b) = http(
        spec,
        "POST",
        "/v1/chat/completions",
        &[],
        &body(prompts[0], true).to_string(),
    );
    assert_eq!(st, 200);
    let streamed: String = sse(&b)
        .iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(_, d)| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(
        want[0].ends_with(&format!("|\"{streamed}\"")) || want[0].ends_with(&streamed),
        "{streamed:?} vs {}",
        want[0]
    );
    let metrics = http(spec, "GET", "/metrics", &[], "").2;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("glm5_{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from {metrics}"))
            .parse()
            .unwrap()
    };
    assert!(value("spec_verify_steps_total") > 0.0);
    assert!(value("spec_accepted_tokens_total") > 0.0);
    assert!(value("spec_acceptance_length_mean") > 1.0);
}
