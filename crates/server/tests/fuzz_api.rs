//! Every endpoint's request JSON, fuzzed: bodies built from the fields the APIs read, with
//! values of every JSON type (and hostile strings), go to the real router over a fast fake
//! model. Whatever comes in, the answer is a 2xx or a 4xx in the API's own JSON shape: never a
//! 5xx, never a panic, never a hang. Cases: GLM5_FUZZ_CASES (default 200).

mod common;

use axum::body::Body;
use axum::http::Request;
use common::fake_state;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tower::ServiceExt;

fn cases() -> u32 {
    std::env::var("GLM5_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "input",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "n",
    "stream",
    "stop",
    "stop_sequences",
    "tools",
    "tool_choice",
    "response_format",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "seed",
    "system",
    "thinking",
    "instructions",
    "previous_response_id",
    "text",
    "reasoning",
    "reasoning_effort",
    "stream_options",
    "chat_template_kwargs",
    "parallel_tool_calls",
    "continue_final_message",
    "echo",
    "suffix",
    "metadata",
    "skip_special_tokens",
    "output_config",
    "include",
    "store",
    "role",
    "content",
    "type",
    "name",
    "function",
    "parameters",
    "input_schema",
    "arguments",
    "call_id",
    "output",
    "id",
    "tool_use_id",
    "json_schema",
    "schema",
    "strict",
    "effort",
    "format",
    "enable_thinking",
    "include_usage",
    "namespace",
    "is_error",
    "budget_tokens",
    "repetition_penalty",
];

const WORDS: &[&str] = &[
    "auto",
    "none",
    "required",
    "any",
    "tool",
    "user",
    "assistant",
    "system",
    "developer",
    "text",
    "input_text",
    "output_text",
    "function",
    "function_call",
    "function_call_output",
    "custom",
    "namespace",
    "web_search",
    "reasoning",
    "message",
    "tool_use",
    "tool_result",
    "thinking",
    "json_schema",
    "json_object",
    "enabled",
    "disabled",
    "adaptive",
    "high",
    "glm5-tiny",
    "fast",
    "<|assistant|>",
    "<tool_call>",
    "</think>",
    "[gMASK]",
    "",
    "object",
    "string",
    "integer",
    "resp_x",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(-1),
            Just(4096),
            Just(i64::MAX),
            -5i64..300
        ]
        .prop_map(|v| json!(v)),
        prop_oneof![Just(0.5f64), Just(-0.0), Just(1e308), Just(2.5)].prop_map(|v| json!(v)),
        proptest::sample::select(WORDS).prop_map(|w| json!(w)),
        "\\PC{0,16}".prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(FIELDS), inner), 0..6).prop_map(
                |kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            ),
        ]
    })
}

/// A body: mostly a well-formed request for every endpoint (messages, prompt, input, a small
/// max_tokens, streamed or not) with one or two fields replaced by anything; sometimes chaos.
fn body() -> impl Strategy<Value = Value> {
    let message = (
        proptest::sample::select(&["user", "assistant", "system", "tool"][..]),
        leaf(),
    )
        .prop_map(|(r, c)| json!({"role": r, "content": c}));
    let nearly_valid = (
        proptest::collection::vec(message, 0..3),
        any::<bool>(),
        proptest::collection::vec((proptest::sample::select(FIELDS), value()), 0..3),
    )
        .prop_map(|(history, stream, fields)| {
            let mut messages = history;
            messages.push(json!({"role": "user", "content": "In the beginning"}));
            let mut o = Map::new();
            o.insert("messages".into(), Value::Array(messages));
            o.insert("prompt".into(), json!("In the beginning"));
            o.insert("input".into(), json!("In the beginning"));
            o.insert("max_tokens".into(), json!(4));
            o.insert("max_output_tokens".into(), json!(4));
            o.insert("stream".into(), json!(stream));
            for (k, v) in fields {
                o.insert(k.to_string(), v);
            }
            Value::Object(o)
        });
    let chaos = proptest::collection::vec((proptest::sample::select(FIELDS), value()), 0..8)
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
    prop_oneof![3 => nearly_valid, 1 => chaos]
}

const ENDPOINTS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn any_request_json_gets_a_2xx_or_a_4xx_in_the_api_s_shape(
        path in proptest::sample::select(ENDPOINTS),
        body in body(),
        raw in proptest::option::weighted(0.1, "\\PC{0,40}"),
    ) {
        thread_local! {
            static APP: (tokio::runtime::Runtime, std::sync::Arc<glm5_server::AppState>) = (
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
                fake_state(None),
            );
        }
        let text = raw.unwrap_or_else(|| body.to_string());
        let (status, bytes, sse) = APP.with(|(rt, state)| {
            rt.block_on(async {
                let req = Request::post(path)
                    .header("content-type", "application/json")
                    .body(Body::from(text.clone()))
                    .unwrap();
                let call = glm5_server::router(state.clone()).oneshot(req);
                let r = tokio::time::timeout(std::time::Duration::from_secs(60), call)
                    .await
                    .expect("answered within 60 s")
                    .unwrap();
                let status = r.status().as_u16();
                let sse = r
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                let body = tokio::time::timeout(
                    std::time::Duration::from_secs(60),
                    axum::body::to_bytes(r.into_body(), 64 << 20),
                )
                .await
                .expect("the body ends within 60 s")
                .unwrap();
                (status, body, sse)
            })
        });
        let shown = String::from_utf8_lossy(&bytes);
        if std::env::var_os("GLM5_FUZZ_LOG").is_some() {
            eprintln!("fuzz_api: {path} {status} sse={sse}");
        }
        prop_assert!(status < 500, "{path} {text} -> {status} {shown}");
        if sse {
            prop_assert!(!bytes.is_empty());
        } else {
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| TestCaseError::fail(format!("{path} {text}: not JSON ({e}): {shown}")))?;
            if status >= 400 {
                let anthropic = path.starts_with("/v1/messages");
                let ok = if anthropic {
                    v["type"] == "error" && v["error"]["message"].is_string()
                } else {
                    v["error"]["message"].is_string()
                };
                prop_assert!(ok, "{path} {text} -> {status}: {shown}");
            }
        }
    }
}
