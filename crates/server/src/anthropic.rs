//! Anthropic `POST /v1/messages` (and `/v1/messages/count_tokens`): system prompt, content
//! blocks, `tool_use` / `tool_result`, `thinking` blocks, and the streaming event sequence
//! (`message_start`, `content_block_start` / `_delta` / `_stop`, `message_delta`,
//! `message_stop`).

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::response::sse::Event as Sse;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, StreamExt};
use glm5_engine::scheduler::Usage;
use glm5_engine::FinishReason;
use serde_json::{json, Value};

use crate::common::*;
use crate::error::{Api, ApiError};
use crate::openai::{engine_failed, sse};
use crate::State;

pub async fn messages(Extract(state): Extract<State>, body: Bytes) -> Response {
    match run(state, &body).await {
        Ok(r) => r,
        Err(e) => e.for_api(Api::Anthropic).into_response(),
    }
}

pub async fn count_tokens(Extract(state): Extract<State>, body: Bytes) -> Response {
    let go = || -> Result<Response, ApiError> {
        let o = parse_body(&body)?;
        let prep = prepare(&state, &o)?;
        Ok(Json(json!({"input_tokens": prep.prompt.len()})).into_response())
    };
    go().unwrap_or_else(|e| e.for_api(Api::Anthropic).into_response())
}

/// Anthropic messages -> the template's messages: `tool_result` blocks become `tool` messages,
/// `tool_use` blocks the assistant's `tool_calls`, `thinking` blocks its `reasoning_content`.
fn template_messages(o: &Obj) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    if let Some(sys) = o.get("system").filter(|v| !v.is_null()) {
        out.push(json!({"role": "system", "content": text_content(sys, "system")?}));
    }
    let msgs = get_array(o, "messages")?
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::param("messages", "is required and must not be empty"))?;
    for (i, m) in msgs.iter().enumerate() {
        let at = |f: &str| format!("messages[{i}]{f}");
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        // Claude Code puts system messages inside `messages`; they render where they stand.
        if role == "system" {
            let c = text_content(m.get("content").unwrap_or(&Value::Null), &at(".content"))?;
            out.push(json!({"role": "system", "content": c}));
            continue;
        }
        if role != "user" && role != "assistant" {
            return Err(ApiError::param(
                &at(".role"),
                "must be 'user', 'assistant' or 'system'",
            ));
        }
        let content = m.get("content").cloned().unwrap_or(Value::Null);
        let blocks = match content {
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(a) => a,
            v => {
                return Err(ApiError::param(
                    &at(".content"),
                    format!("expected a string or blocks, got {v}"),
                ))
            }
        };
        let (mut text, mut reasoning, mut calls) = (String::new(), String::new(), Vec::new());
        for (j, b) in blocks.iter().enumerate() {
            let bt = |f: &str| at(&format!(".content[{j}]{f}"));
            match b.get("type").and_then(Value::as_str) {
                Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                Some("thinking") => {
                    reasoning.push_str(b.get("thinking").and_then(Value::as_str).unwrap_or(""))
                }
                Some("redacted_thinking") => {}
                Some("tool_use") if role == "assistant" => {
                    let name = b
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| ApiError::param(&bt(".name"), "is required"))?;
                    let input = b.get("input").cloned().unwrap_or(json!({}));
                    if !input.is_object() {
                        return Err(ApiError::param(&bt(".input"), "must be an object"));
                    }
                    calls.push(
                        json!({"type": "function", "function": {"name": name, "arguments": input}}),
                    );
                }
                Some("tool_result") if role == "user" => {
                    let mut c =
                        text_content(b.get("content").unwrap_or(&Value::Null), &bt(".content"))?;
                    if b.get("is_error") == Some(&Value::Bool(true)) {
                        c = format!("Error: {c}");
                    }
                    out.push(json!({"role": "tool", "content": c}));
                }
                Some(t) => {
                    return Err(ApiError::param(
                        &bt(".type"),
                        format!("'{t}' blocks are not supported in {role} messages"),
                    ))
                }
                None => return Err(ApiError::param(&bt(".type"), "is required")),
            }
        }
        if role == "assistant" {
            let mut a = json!({"role": "assistant", "content": text});
            if !reasoning.is_empty() {
                a["reasoning_content"] = json!(reasoning);
            }
            if !calls.is_empty() {
                a["tool_calls"] = Value::Array(calls);
            }
            out.push(a);
        } else if !text.is_empty()
            || !blocks
                .iter()
                .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        {
            out.push(json!({"role": "user", "content": text}));
        }
    }
    Ok(out)
}

fn prepare(state: &State, o: &Obj) -> Result<Prepared, ApiError> {
    check_model(state, o)?;
    let messages = template_messages(o)?;
    let tools = match get_array(o, "tools")? {
        None => None,
        Some(ts) => Some(
            ts.iter()
                .enumerate()
                .map(|(i, t)| {
                    let name = t.get("name").and_then(Value::as_str).ok_or_else(|| ApiError::param(&format!("tools[{i}].name"), "is required"))?;
                    if t.get("input_schema").is_some_and(|s| !s.is_object()) {
                        return Err(ApiError::param(&format!("tools[{i}].input_schema"), "must be a JSON Schema object"));
                    }
                    Ok(json!({"type": "function", "function": {
                        "name": name,
                        "description": t.get("description").cloned().unwrap_or(json!("")),
                        "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"})),
                    }}))
                })
                .collect::<Result<Vec<_>, ApiError>>()?,
        ),
    };
    let choice = match get_obj(o, "tool_choice")? {
        None => ToolChoice::Auto,
        Some(c) => match c.get("type").and_then(Value::as_str) {
            Some("auto") => ToolChoice::Auto,
            Some("none") => ToolChoice::None,
            Some("any") => ToolChoice::Required,
            Some("tool") => ToolChoice::Named(
                get_str(c, "name")?
                    .ok_or_else(|| ApiError::param("tool_choice.name", "is required"))?
                    .to_string(),
            ),
            _ => {
                return Err(ApiError::param(
                    "tool_choice.type",
                    "must be auto, any, tool or none",
                ))
            }
        },
    };
    let thinking = match get_obj(o, "thinking")? {
        None => true,
        Some(t) => match t.get("type").and_then(Value::as_str) {
            Some("enabled") | Some("adaptive") => true,
            Some("disabled") => false,
            _ => {
                return Err(ApiError::param(
                    "thinking.type",
                    "must be 'enabled' or 'disabled'",
                ))
            }
        },
    };
    // A last assistant message is a prefill: the reply continues it.
    let continue_final = messages.last().is_some_and(|m| m["role"] == "assistant");
    let parallel_calls = match get_obj(o, "tool_choice")? {
        Some(c) => !get_bool(c, "disable_parallel_tool_use")?.unwrap_or(false),
        None => true,
    };
    // Claude Code's `output_config.effort` (low, medium, high, max) is the template's
    // `reasoning_effort` where the checkpoint reads one (GLM-5.3).
    let reasoning_effort = match get_obj(o, "output_config")? {
        Some(c) => get_str(c, "effort")?.map(str::to_string),
        None => None,
    };
    let opts = ChatOptions {
        continue_final,
        parallel_calls,
        reasoning_effort,
        ..ChatOptions::new(tools, choice, thinking)
    };
    prepare_chat(state, messages, opts)
}

fn stop_reason(f: &FinishReason, tool_use: bool) -> (&'static str, Value) {
    match f {
        _ if tool_use => ("tool_use", Value::Null),
        FinishReason::StopString(s) => ("stop_sequence", json!(s)),
        FinishReason::Length | FinishReason::ContextFull => ("max_tokens", Value::Null),
        _ => ("end_turn", Value::Null),
    }
}

async fn run(state: State, body: &[u8]) -> Result<Response, ApiError> {
    let o = parse_body(body)?;
    let max_tokens =
        get_u64(&o, "max_tokens")?.ok_or_else(|| ApiError::param("max_tokens", "is required"))?;
    if max_tokens == 0 {
        return Err(ApiError::param("max_tokens", "must be at least 1"));
    }
    let prep = prepare(&state, &o)?;
    let params = sampling(&state, &o)?;
    let mut req = request(
        &state,
        prep.prompt.clone(),
        params,
        Some(max_tokens),
        get_stops(&o, "stop_sequences")?,
        None,
    );
    req.constraint = prep.constraint.clone();
    let rx = state.engine.submit(req)?;
    let reader = Reader::new(rx, Some(&prep));
    let id = new_id("msg_");
    if get_bool(&o, "stream")?.unwrap_or(false) {
        return Ok(stream_events(state, id, prep.prompt.len(), reader));
    }
    let mut r = reader;
    let mut content: Vec<Value> = Vec::new();
    let mut push = |kind: &str, s: String| match content.last_mut() {
        Some(b) if b["type"] == kind => {
            let key = if kind == "thinking" {
                "thinking"
            } else {
                "text"
            };
            let joined = format!("{}{s}", b[key].as_str().unwrap_or(""));
            b[key] = json!(joined);
        }
        _ if kind == "thinking" => {
            content.push(json!({"type": "thinking", "thinking": s, "signature": ""}))
        }
        _ => content.push(json!({"type": "text", "text": s})),
    };
    let mut calls = Vec::new();
    let (usage, finish) = loop {
        match r.next().await {
            Some(Out::Reasoning(s)) => push("thinking", s),
            Some(Out::Text(s)) => push("text", s),
            Some(Out::ToolCall { name, arguments }) => calls.push(json!({
                "type": "tool_use", "id": new_id("toolu_"), "name": name, "input": arguments,
            })),
            Some(Out::Logprob(_)) => {}
            Some(Out::Done(u, f)) => break (u, f),
            Some(Out::Error(e)) => return Err(engine_failed(e)),
            None => return Err(engine_failed(DROPPED.into())),
        }
    };
    for b in &mut content {
        for key in ["thinking", "text"] {
            if let Some(s) = b.get(key).and_then(Value::as_str) {
                b[key] = json!(s.trim());
            }
        }
    }
    content.retain(|b| b.get("text").is_none_or(|t| t != ""));
    let tool_use = !calls.is_empty();
    content.extend(calls);
    let (reason, seq) = stop_reason(&finish, tool_use);
    Ok(Json(json!({
        "id": id, "type": "message", "role": "assistant", "model": state.model_name,
        "content": content, "stop_reason": reason, "stop_sequence": seq,
        "usage": usage_json(&usage),
    }))
    .into_response())
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens - u.cached_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "cache_creation_input_tokens": 0,
        "output_tokens": u.completion_tokens,
    })
}

fn event(name: &str, v: Value) -> Sse {
    Sse::default().event(name).data(v.to_string())
}

/// The open content block while streaming.
#[derive(Clone, Copy, PartialEq)]
enum Block {
    None,
    Thinking,
    Text,
}

struct StreamState {
    state: State,
    id: String,
    prompt_tokens: usize,
    /// Prompt tokens from the prefix cache, as `message_start` reported them (`None` before).
    cached: Option<usize>,
    reader: Reader,
    index: usize,
    open: Block,
    tool_use: bool,
    ended: bool,
}

impl StreamState {
    /// Close the open block; open `kind` if it is a different one.
    fn switch(&mut self, kind: Block, out: &mut Vec<Sse>) {
        if self.open == kind {
            return;
        }
        if self.open != Block::None {
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": self.index}),
            ));
            self.index += 1;
        }
        self.open = kind;
        let block = match kind {
            Block::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            Block::Text => json!({"type": "text", "text": ""}),
            Block::None => return,
        };
        out.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": self.index, "content_block": block}),
        ));
    }

    /// Usage as both `message_start` and `message_delta` report it: the input side as known at
    /// admission, so the two agree.
    fn usage(&self, output_tokens: usize) -> Value {
        let cached = self.cached.unwrap_or(0);
        usage_json(&Usage {
            prompt_tokens: self.prompt_tokens,
            cached_tokens: cached.min(self.prompt_tokens),
            completion_tokens: output_tokens,
        })
    }

    async fn next(&mut self) -> Option<Vec<Sse>> {
        if self.ended {
            return None;
        }
        if self.cached.is_none() {
            self.cached = Some(self.reader.admitted().await);
            return Some(vec![event(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant",
                    "model": self.state.model_name, "content": [], "stop_reason": null,
                    "stop_sequence": null, "usage": self.usage(0),
                }}),
            )]);
        }
        let mut out = Vec::new();
        match self.reader.next().await {
            Some(Out::Reasoning(s)) => {
                self.switch(Block::Thinking, &mut out);
                out.push(event("content_block_delta", json!({"type": "content_block_delta", "index": self.index, "delta": {"type": "thinking_delta", "thinking": s}})));
            }
            Some(Out::Text(s)) => {
                if self.open != Block::Text && s.trim().is_empty() {
                    return Some(out);
                }
                self.switch(Block::Text, &mut out);
                out.push(event("content_block_delta", json!({"type": "content_block_delta", "index": self.index, "delta": {"type": "text_delta", "text": s}})));
            }
            Some(Out::ToolCall { name, arguments }) => {
                self.switch(Block::None, &mut out);
                self.tool_use = true;
                let i = self.index;
                out.push(event("content_block_start", json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": new_id("toolu_"), "name": name, "input": {}}})));
                out.push(event("content_block_delta", json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": Value::Object(arguments).to_string()}})));
                out.push(event(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": i}),
                ));
                self.index += 1;
            }
            Some(Out::Logprob(_)) => {}
            Some(Out::Done(u, f)) => {
                self.switch(Block::None, &mut out);
                let (reason, seq) = stop_reason(&f, self.tool_use);
                out.push(event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": seq}, "usage": self.usage(u.completion_tokens)})));
                out.push(event("message_stop", json!({"type": "message_stop"})));
                self.ended = true;
            }
            Some(Out::Error(e)) => {
                out.push(event(
                    "error",
                    engine_failed(e).for_api(Api::Anthropic).body(),
                ));
                self.ended = true;
            }
            None => {
                out.push(event(
                    "error",
                    engine_failed(DROPPED.into()).for_api(Api::Anthropic).body(),
                ));
                self.ended = true;
            }
        }
        Some(out)
    }
}

fn stream_events(state: State, id: String, prompt_tokens: usize, reader: Reader) -> Response {
    let st = StreamState {
        state,
        id,
        prompt_tokens,
        cached: None,
        reader,
        index: 0,
        open: Block::None,
        tool_use: false,
        ended: false,
    };
    let body = stream::unfold(st, |mut st| async move {
        st.next().await.map(|evs| (stream::iter(evs), st))
    })
    .flatten();
    sse(body)
}
