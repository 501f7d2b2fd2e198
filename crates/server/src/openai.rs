//! OpenAI `POST /v1/chat/completions` and `GET /v1/models`, and what `/v1/completions` shares
//! with them (request fields, usage, choices).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use glm5_engine::scheduler::{TokenLogprob, Usage};
use glm5_engine::FinishReason;
use serde_json::{json, Value};

use crate::common::*;
use crate::error::ApiError;
use crate::State;

fn model_json(state: &State) -> Value {
    json!({
        "id": state.model_name,
        "object": "model",
        "created": unix_time(),
        "owned_by": "glm5",
        "max_model_len": state.engine.cfg.ctx,
    })
}

pub async fn models(Extract(state): Extract<State>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_json(&state)]}))
}

/// `GET /v1/models/{id}` (the SDKs' `models.retrieve`).
pub async fn model(
    Extract(state): Extract<State>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let mut o = Obj::new();
    o.insert("model".into(), json!(id));
    match check_model(&state, &o) {
        Ok(()) => Json(model_json(&state)).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn chat_completions(Extract(state): Extract<State>, body: Bytes) -> Response {
    chat(state, &body)
        .await
        .unwrap_or_else(|e| e.into_response())
}

/// OpenAI messages -> the template's form (arguments as mappings, text parts joined).
fn template_messages(msgs: &[Value]) -> Result<Vec<Value>, ApiError> {
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = |f: &str| format!("messages[{i}]{f}");
            let m = m
                .as_object()
                .ok_or_else(|| ApiError::param(&at(""), "expected an object"))?;
            let role = get_str(m, "role")
                .map_err(|_| ApiError::param(&at(".role"), "expected a string"))?
                .ok_or_else(|| ApiError::param(&at(".role"), "is required"))?;
            if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
                return Err(ApiError::param(
                    &at(".role"),
                    format!("unknown role '{role}'"),
                ));
            }
            let role = if role == "developer" { "system" } else { role };
            let content = text_content(m.get("content").unwrap_or(&Value::Null), &at(".content"))?;
            let mut out = json!({"role": role, "content": content});
            if let Some(r) = m.get("reasoning_content").and_then(Value::as_str) {
                out["reasoning_content"] = json!(r);
            }
            if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
                let calls = calls
                    .as_array()
                    .ok_or_else(|| ApiError::param(&at(".tool_calls"), "expected an array"))?;
                let mut conv = Vec::new();
                for (j, c) in calls.iter().enumerate() {
                    let f = c.get("function").unwrap_or(c);
                    let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::param(
                            &at(&format!(".tool_calls[{j}].function.name")),
                            "is required",
                        )
                    })?;
                    let args = match f.get("arguments") {
                        None | Some(Value::Null) => json!({}),
                        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
                        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                            Ok(v @ Value::Object(_)) => v,
                            _ => {
                                return Err(ApiError::param(
                                    &at(&format!(".tool_calls[{j}].function.arguments")),
                                    "must be a JSON object encoded as a string",
                                ))
                            }
                        },
                        Some(v @ Value::Object(_)) => v.clone(),
                        Some(_) => {
                            return Err(ApiError::param(
                                &at(&format!(".tool_calls[{j}].function.arguments")),
                                "must be a JSON object encoded as a string",
                            ))
                        }
                    };
                    conv.push(
                        json!({"type": "function", "function": {"name": name, "arguments": args}}),
                    );
                }
                out["tool_calls"] = Value::Array(conv);
            }
            Ok(out)
        })
        .collect()
}

/// `response_format`: text, json_object (any object) or json_schema (`json_schema.schema`);
/// chat only.
fn response_format(o: &Obj, chat: bool) -> Result<Option<Value>, ApiError> {
    let Some(rf) = get_obj(o, "response_format")? else {
        return Ok(None);
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") | None => Ok(None),
        Some(_) if !chat => Err(ApiError::param(
            "response_format",
            "is for /v1/chat/completions; completions take plain text",
        )),
        Some("json_object") => Ok(Some(json!({"type": "object"}))),
        Some("json_schema") => match rf.get("json_schema").and_then(|j| j.get("schema")) {
            Some(s @ Value::Object(_)) => Ok(Some(s.clone())),
            _ => Err(ApiError::param(
                "response_format.json_schema.schema",
                "is required and must be a JSON Schema object",
            )),
        },
        Some(t) => Err(ApiError::param(
            "response_format.type",
            format!("'{t}' is not one of text, json_object, json_schema"),
        )),
    }
}

/// `reasoning_effort`: none (thinking off), minimal, low, medium, high or xhigh; the template
/// reads it where the checkpoint's does (GLM-5.3).
fn reasoning_effort(o: &Obj) -> Result<Option<String>, ApiError> {
    const EFFORTS: [&str; 6] = ["none", "minimal", "low", "medium", "high", "xhigh"];
    match get_str(o, "reasoning_effort")? {
        None => Ok(None),
        Some(e) if EFFORTS.contains(&e) => Ok(Some(e.to_string())),
        Some(e) => Err(ApiError::param(
            "reasoning_effort",
            format!("'{e}' is not one of {}", EFFORTS.join(", ")),
        )),
    }
}

pub(crate) fn finish_name(f: &FinishReason, tool_calls: bool) -> &'static str {
    match f {
        _ if tool_calls => "tool_calls",
        FinishReason::Length | FinishReason::ContextFull => "length",
        _ => "stop",
    }
}

/// One choice's usage into the response's: the prompt is counted once, completions add up.
pub(crate) fn add_usage(total: &mut Usage, u: &Usage) {
    total.prompt_tokens = u.prompt_tokens;
    total.cached_tokens = total.cached_tokens.max(u.cached_tokens);
    total.completion_tokens += u.completion_tokens;
}

pub(crate) fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

fn logprob_json(state: &State, lp: &TokenLogprob) -> Value {
    let entry = |id: u32, l: f32| {
        let bytes = state.tokenizer.token_bytes(id);
        json!({"token": String::from_utf8_lossy(&bytes), "logprob": l, "bytes": bytes})
    };
    let mut e = entry(lp.token, lp.logprob);
    e["top_logprobs"] = Value::Array(lp.top.iter().map(|&(id, l)| entry(id, l)).collect());
    e
}

fn call_json(index: usize, name: &str, args: &Obj) -> Value {
    json!({"index": index, "id": new_id("call_"), "type": "function",
           "function": {"name": name, "arguments": Value::Object(args.clone()).to_string()}})
}

/// The common fields of a request: sampling, limits, choices.
pub(crate) struct Common {
    pub(crate) params: glm5_engine::SamplingParams,
    pub(crate) max_tokens: Option<u64>,
    pub(crate) stop: Vec<String>,
    pub(crate) n: usize,
    pub(crate) logprobs: Option<usize>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    /// `response_format` json_object / json_schema: the schema the answer must follow.
    pub(crate) json_schema: Option<Value>,
    /// `skip_special_tokens` (vLLM's, default true): leave control tokens out of the text.
    pub(crate) skip_special_tokens: bool,
}

pub(crate) fn common(state: &State, o: &Obj, chat: bool) -> Result<Common, ApiError> {
    check_model(state, o)?;
    let n = get_u64(o, "n")?.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ApiError::param("n", "must be between 1 and 16"));
    }
    let logprobs = if chat {
        let top = get_u64(o, "top_logprobs")?;
        match (get_bool(o, "logprobs")?.unwrap_or(false), top) {
            (_, Some(t)) if t > 20 => {
                return Err(ApiError::param("top_logprobs", "must be at most 20"))
            }
            (true, t) => Some(t.unwrap_or(0) as usize),
            (false, Some(_)) => {
                return Err(ApiError::param("top_logprobs", "needs 'logprobs': true"))
            }
            (false, None) => None,
        }
    } else {
        match get_u64(o, "logprobs")? {
            Some(t) if t > 20 => return Err(ApiError::param("logprobs", "must be at most 20")),
            t => t.map(|t| t as usize),
        }
    };
    let max_tokens = match get_u64(o, "max_completion_tokens")? {
        Some(0) => {
            return Err(ApiError::param(
                "max_completion_tokens",
                "must be at least 1",
            ))
        }
        Some(m) => Some(m),
        None => get_u64(o, "max_tokens")?,
    };
    if max_tokens == Some(0) {
        return Err(ApiError::param("max_tokens", "must be at least 1"));
    }
    let json_schema = response_format(o, chat)?;
    let include_usage = get_obj(o, "stream_options")?
        .and_then(|so| so.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Common {
        params: sampling(state, o)?,
        max_tokens,
        stop: get_stops(o, "stop")?,
        n: n as usize,
        logprobs,
        stream: get_bool(o, "stream")?.unwrap_or(false),
        include_usage,
        json_schema,
        skip_special_tokens: get_bool(o, "skip_special_tokens")?.unwrap_or(true),
    })
}

/// Submit `n` copies of a prompt (seeds `seed`, `seed + 1`, ...) and wrap their event streams.
pub(crate) fn submit_all(
    state: &State,
    c: &Common,
    prompt: &[u32],
    prep: Option<&Prepared>,
) -> Result<Vec<Reader>, ApiError> {
    (0..c.n)
        .map(|i| {
            let mut params = c.params.clone();
            params.seed = params.seed.map(|s| s.wrapping_add(i as u64));
            let mut req = request(
                state,
                prompt.to_vec(),
                params,
                c.max_tokens,
                c.stop.clone(),
                c.logprobs,
            );
            req.constraint = prep.and_then(|p| p.constraint.clone());
            req.skip_special_tokens = c.skip_special_tokens;
            let rx = state.engine.submit(req)?;
            Ok(Reader::new(rx, prep))
        })
        .collect()
}

async fn chat(state: State, body: &[u8]) -> Result<Response, ApiError> {
    let o = parse_body(body)?;
    let c = common(&state, &o, true)?;
    let msgs = get_array(&o, "messages")?
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::param("messages", "is required and must not be empty"))?;
    let messages = template_messages(msgs)?;
    let tools = get_array(&o, "tools")?.cloned();
    for (i, t) in tools.iter().flatten().enumerate() {
        if t.pointer("/function/name")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(ApiError::param(
                &format!("tools[{i}].function.name"),
                "is required",
            ));
        }
        if t.pointer("/function/parameters")
            .is_some_and(|p| !p.is_object() && !p.is_null())
        {
            return Err(ApiError::param(
                &format!("tools[{i}].function.parameters"),
                "must be a JSON Schema object",
            ));
        }
    }
    let mut opts = ChatOptions::new(tools, tool_choice(&o)?, true);
    if let Some(k) = get_obj(&o, "chat_template_kwargs")? {
        opts.thinking = get_bool(k, "enable_thinking")?.unwrap_or(true);
    }
    opts.reasoning_effort = reasoning_effort(&o)?;
    if opts.reasoning_effort.as_deref() == Some("none") {
        opts.thinking = false;
    }
    opts.continue_final = get_bool(&o, "continue_final_message")?.unwrap_or(false);
    opts.parallel_calls = get_bool(&o, "parallel_tool_calls")?.unwrap_or(true);
    opts.json_schema = c.json_schema.clone();
    if opts.continue_final && msgs.last().and_then(|m| m.get("role")) != Some(&json!("assistant")) {
        return Err(ApiError::param(
            "continue_final_message",
            "needs the last message to be the assistant's",
        ));
    }
    let prep = prepare_chat(&state, messages, opts)?;
    let readers = submit_all(&state, &c, &prep.prompt, Some(&prep))?;
    let id = new_id("chatcmpl-");
    if c.stream {
        return Ok(sse(chat_stream(state, id, readers, c.include_usage)));
    }
    let mut choices = Vec::new();
    let mut usage = Usage::default();
    for (index, mut r) in readers.into_iter().enumerate() {
        let (mut reasoning, mut content, mut calls, mut lps) =
            (String::new(), String::new(), Vec::new(), Vec::new());
        let finish = loop {
            match r.next().await {
                Some(Out::Reasoning(s)) => reasoning.push_str(&s),
                Some(Out::Text(s)) => content.push_str(&s),
                Some(Out::ToolCall { name, arguments }) => {
                    let mut v = call_json(calls.len(), &name, &arguments);
                    v.as_object_mut().expect("object").remove("index");
                    calls.push(v);
                }
                Some(Out::Logprob(lp)) => lps.push(logprob_json(&state, &lp)),
                Some(Out::Done(u, f)) => {
                    add_usage(&mut usage, &u);
                    break f;
                }
                Some(Out::Error(e)) => return Err(engine_failed(e)),
                None => return Err(engine_failed(DROPPED.into())),
            }
        };
        let content = content.trim_start_matches('\n').to_string();
        let mut message = json!({
            "role": "assistant",
            "content": if content.is_empty() && !calls.is_empty() { Value::Null } else { json!(content) },
        });
        if !reasoning.is_empty() {
            message["reasoning_content"] = json!(reasoning.trim());
        }
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls.clone());
        }
        choices.push(json!({
            "index": index,
            "message": message,
            "logprobs": if c.logprobs.is_some() { json!({"content": lps}) } else { Value::Null },
            "finish_reason": finish_name(&finish, !calls.is_empty()),
        }));
    }
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_time(),
        "model": state.model_name,
        "choices": choices,
        "usage": usage_json(&usage),
    }))
    .into_response())
}

pub fn engine_failed(e: String) -> ApiError {
    ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e)
}

pub fn sse(events: impl Stream<Item = Sse> + Send + 'static) -> Response {
    axum::response::sse::Sse::new(events.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub(crate) fn data(v: &Value) -> Sse {
    Sse::default().data(v.to_string())
}

/// One choice's chunks: role first, then reasoning/content/tool-call deltas (with logprobs),
/// then the finish reason. Usage is added to `total` when the choice ends.
fn choice_chunks(
    state: State,
    id: String,
    index: usize,
    reader: Reader,
    total: Arc<Mutex<Usage>>,
    include_usage: bool,
) -> impl Stream<Item = Sse> + Send {
    let chunk = move |state: &State, id: &str, delta: Value, logprobs: Value, finish: Value| {
        let mut v = json!({
            "id": id, "object": "chat.completion.chunk", "created": unix_time(),
            "model": state.model_name,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        });
        if include_usage {
            v["usage"] = Value::Null;
        }
        data(&v)
    };
    let first = chunk(
        &state,
        &id,
        json!({"role": "assistant", "content": ""}),
        Value::Null,
        Value::Null,
    );
    let st = (state, id, reader, 0usize, false);
    stream::once(async move { first }).chain(stream::unfold(
        st,
        move |(state, id, mut r, calls, ended)| {
            let total = total.clone();
            async move {
                if ended {
                    return None;
                }
                let ev = match r.next().await? {
                    Out::Reasoning(s) => chunk(
                        &state,
                        &id,
                        json!({"reasoning_content": s}),
                        Value::Null,
                        Value::Null,
                    ),
                    Out::Text(s) => {
                        chunk(&state, &id, json!({"content": s}), Value::Null, Value::Null)
                    }
                    Out::ToolCall { name, arguments } => {
                        let c = chunk(
                            &state,
                            &id,
                            json!({"tool_calls": [call_json(calls, &name, &arguments)]}),
                            Value::Null,
                            Value::Null,
                        );
                        return Some((c, (state, id, r, calls + 1, false)));
                    }
                    Out::Logprob(lp) => {
                        let l = json!({"content": [logprob_json(&state, &lp)]});
                        chunk(&state, &id, json!({}), l, Value::Null)
                    }
                    Out::Done(u, f) => {
                        {
                            let mut t = total.lock().unwrap_or_else(|e| e.into_inner());
                            add_usage(&mut t, &u);
                        }
                        let c = chunk(
                            &state,
                            &id,
                            json!({}),
                            Value::Null,
                            json!(finish_name(&f, calls > 0)),
                        );
                        return Some((c, (state, id, r, calls, true)));
                    }
                    Out::Error(e) => {
                        let c = data(&engine_failed(e).body());
                        return Some((c, (state, id, r, calls, true)));
                    }
                };
                Some((ev, (state, id, r, calls, false)))
            }
        },
    ))
}

fn chat_stream(
    state: State,
    id: String,
    readers: Vec<Reader>,
    include_usage: bool,
) -> impl Stream<Item = Sse> + Send {
    let total = Arc::new(Mutex::new(Usage::default()));
    let choices: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            choice_chunks(
                state.clone(),
                id.clone(),
                i,
                r,
                total.clone(),
                include_usage,
            )
            .boxed()
        })
        .collect();
    let tail = stream::once(async move {
        let mut out = Vec::new();
        if include_usage {
            let u = *total.lock().unwrap_or_else(|e| e.into_inner());
            out.push(data(&json!({
                "id": id, "object": "chat.completion.chunk", "created": unix_time(),
                "model": state.model_name, "choices": [], "usage": usage_json(&u),
            })));
        }
        out.push(Sse::default().data("[DONE]"));
        stream::iter(out)
    })
    .flatten();
    stream::select_all(choices).chain(tail)
}
