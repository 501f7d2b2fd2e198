//! OpenAI Responses API: `POST /v1/responses` and `GET /v1/responses/{id}` (what the `openai`
//! SDK's `client.responses` and the Codex CLI speak). Input items (messages, `reasoning`,
//! `function_call` / `function_call_output`, `custom_tool_call` / `_output`) become the chat
//! template's messages; the output is `reasoning`, `message` and `function_call` /
//! `custom_tool_call` items; tools inside a `namespace` tool are offered as `NS__NAME` and their
//! calls name the namespace. Stored responses (`store`, on by default) let a later request
//! continue from `previous_response_id`. The streamed event sequence is in `responses_stream`.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::{Path, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use glm5_engine::scheduler::Usage;
use glm5_engine::FinishReason;
use serde_json::{json, Value};

use crate::common::*;
use crate::error::ApiError;
use crate::openai::engine_failed;
use crate::responses_stream::stream_response;
use crate::State;

/// Responses kept for `previous_response_id` and `GET /v1/responses/{id}`, oldest dropped
/// first.
pub const STORED_RESPONSES: usize = 1024;

/// A stored response and the conversation it ends (its input items, then its output items).
#[derive(Debug, Clone)]
struct Stored {
    id: String,
    response: Value,
    conversation: Vec<Value>,
}

#[derive(Debug, Default)]
pub struct ResponseStore {
    kept: Mutex<VecDeque<Stored>>,
}

impl ResponseStore {
    fn get(&self, id: &str) -> Option<Stored> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().find(|s| s.id == id).cloned()
    }

    fn put(&self, s: Stored) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= STORED_RESPONSES {
            kept.pop_front();
        }
        kept.push_back(s);
    }
}

/// A request, read: what the engine gets and what the response echoes.
pub struct Plan {
    pub prep: Prepared,
    pub tools: Tools,
    /// The conversation so far as input items (previous response's, then this request's).
    pub conversation: Vec<Value>,
    /// The request's fields the response object repeats.
    pub echo: Value,
    pub store: bool,
}

pub async fn create(Extract(state): Extract<State>, body: Bytes) -> Response {
    run(state, &body)
        .await
        .unwrap_or_else(|e| e.into_response())
}

pub async fn retrieve(Extract(state): Extract<State>, Path(id): Path<String>) -> Response {
    match state.responses.get(&id) {
        Some(s) => Json(s.response).into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no stored response with id '{id}'"),
        )
        .into_response(),
    }
}

/// Text of a message's `content`: a string or `input_text` / `output_text` parts.
fn item_text(v: &Value, param: &str) -> Result<String, ApiError> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .try_fold(String::new(), |mut s, (j, p)| {
                match p.get("type").and_then(Value::as_str) {
                    Some(
                        "input_text" | "output_text" | "text" | "summary_text" | "reasoning_text",
                    ) => {
                        s.push_str(p.get("text").and_then(Value::as_str).unwrap_or(""));
                        Ok(s)
                    }
                    Some("refusal") => Ok(s),
                    t => Err(ApiError::param(
                        &format!("{param}[{j}].type"),
                        format!("{t:?} content is not supported (text only)"),
                    )),
                }
            }),
        v => Err(ApiError::param(
            param,
            format!("expected a string or content parts, got {v}"),
        )),
    }
}

/// Input items -> the template's messages. Calls join the assistant message they follow;
/// reasoning joins the next assistant message.
fn template_messages(items: &[Value]) -> Result<Vec<Value>, ApiError> {
    let mut out: Vec<Value> = Vec::new();
    let mut reasoning = String::new();
    // The assistant message that calls attach to: the last message, if it is the assistant's.
    let assistant = |out: &mut Vec<Value>, reasoning: &mut String| -> usize {
        let open = out.last().is_some_and(|m| m["role"] == "assistant");
        if !open {
            out.push(json!({"role": "assistant", "content": ""}));
        }
        if !reasoning.is_empty() {
            let m = out.last_mut().expect("pushed");
            m["reasoning_content"] = json!(std::mem::take(reasoning));
        }
        out.len() - 1
    };
    for (i, it) in items.iter().enumerate() {
        let at = |f: &str| format!("input[{i}]{f}");
        let kind = it.get("type").and_then(Value::as_str).unwrap_or("message");
        match kind {
            "message" => {
                let role = it.get("role").and_then(Value::as_str).unwrap_or("");
                let content =
                    item_text(it.get("content").unwrap_or(&Value::Null), &at(".content"))?;
                match role {
                    "system" | "developer" => {
                        out.push(json!({"role": "system", "content": content}))
                    }
                    "user" => out.push(json!({"role": "user", "content": content})),
                    "assistant" => {
                        let k = assistant(&mut out, &mut reasoning);
                        let m = &mut out[k];
                        let joined = format!("{}{content}", m["content"].as_str().unwrap_or(""));
                        m["content"] = json!(joined);
                    }
                    r => {
                        return Err(ApiError::param(
                            &at(".role"),
                            format!("unknown role '{r}' (user, assistant, system or developer)"),
                        ))
                    }
                }
            }
            "reasoning" => {
                let content =
                    item_text(it.get("content").unwrap_or(&Value::Null), &at(".content"))?;
                let text = if content.is_empty() {
                    item_text(it.get("summary").unwrap_or(&Value::Null), &at(".summary"))?
                } else {
                    content
                };
                reasoning.push_str(&text);
            }
            "function_call" | "custom_tool_call" => {
                let name = it
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::param(&at(".name"), "is required"))?;
                let name = match it.get("namespace").and_then(Value::as_str) {
                    Some(ns) => flat_name(ns, name),
                    None => name.to_string(),
                };
                let args = if kind == "custom_tool_call" {
                    json!({"input": it.get("input").and_then(Value::as_str).unwrap_or("")})
                } else {
                    match it.get("arguments").and_then(Value::as_str).map(str::trim) {
                        None | Some("") => json!({}),
                        Some(s) => match serde_json::from_str::<Value>(s) {
                            Ok(v @ Value::Object(_)) => v,
                            _ => {
                                return Err(ApiError::param(
                                    &at(".arguments"),
                                    "must be a JSON object encoded as a string",
                                ))
                            }
                        },
                    }
                };
                let k = assistant(&mut out, &mut reasoning);
                let call =
                    json!({"type": "function", "function": {"name": name, "arguments": args}});
                match out[k].get_mut("tool_calls").and_then(Value::as_array_mut) {
                    Some(calls) => calls.push(call),
                    None => out[k]["tool_calls"] = json!([call]),
                }
            }
            "function_call_output" | "custom_tool_call_output" => {
                let output = item_text(it.get("output").unwrap_or(&Value::Null), &at(".output"))?;
                out.push(json!({"role": "tool", "content": output}));
            }
            // Results of hosted tools, which are never offered here (see `tools`).
            "web_search_call" | "file_search_call" | "image_generation_call" => {}
            t => {
                return Err(ApiError::param(
                    &at(".type"),
                    format!("items of type '{t}' are not supported"),
                ))
            }
        }
    }
    Ok(out)
}

/// Tools as the model sees them, and how its calls map back.
#[derive(Debug, Default)]
pub struct Tools {
    /// The template's (OpenAI chat) form; `None` when no tool is offered.
    pub chat: Option<Vec<Value>>,
    /// Tools declared `custom` (free-form input): their calls come back as `custom_tool_call`.
    pub custom: Vec<String>,
    /// Tools inside a `namespace` tool: (name the model sees `NS__NAME`, namespace, name).
    pub namespaced: Vec<(String, String, String)>,
}

/// The name the model sees for `name` in namespace `ns` (Codex's flat form).
fn flat_name(ns: &str, name: &str) -> String {
    format!(
        "{}__{}",
        ns.trim_end_matches('_'),
        name.trim_start_matches('_')
    )
}

/// `tools`: function and custom tools, also inside `namespace` tools. Hosted tools (web_search,
/// file_search, code_interpreter, ...) run on OpenAI's servers; glm5 has nothing to run them
/// with, so they are not offered to the model (Codex sends web_search by default).
fn tools(o: &Obj) -> Result<Tools, ApiError> {
    let Some(ts) = get_array(o, "tools")? else {
        return Ok(Tools::default());
    };
    let mut out = Tools {
        chat: Some(Vec::new()),
        ..Tools::default()
    };
    let mut add = |t: &Value, at: &str, ns: Option<&str>| -> Result<(), ApiError> {
        let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "function" && kind != "custom" {
            return Ok(());
        }
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::param(&format!("{at}.name"), "is required"))?;
        let seen = match ns {
            Some(ns) => {
                let flat = flat_name(ns, name);
                out.namespaced
                    .push((flat.clone(), ns.to_string(), name.to_string()));
                flat
            }
            None => name.to_string(),
        };
        let parameters = if kind == "custom" {
            out.custom.push(seen.clone());
            json!({"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]})
        } else {
            match t.get("parameters") {
                None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
                Some(p @ Value::Object(_)) => p.clone(),
                Some(_) => {
                    return Err(ApiError::param(
                        &format!("{at}.parameters"),
                        "must be a JSON Schema object",
                    ))
                }
            }
        };
        let description = t.get("description").cloned().unwrap_or(json!(""));
        out.chat
            .get_or_insert_with(Vec::new)
            .push(json!({"type": "function", "function": {
            "name": seen, "description": description, "parameters": parameters,
            "strict": t.get("strict").and_then(Value::as_bool).unwrap_or(false)}}));
        Ok(())
    };
    for (i, t) in ts.iter().enumerate() {
        let at = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) == Some("namespace") {
            let ns = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::param(&format!("{at}.name"), "is required"))?;
            let inner = t.get("tools").and_then(Value::as_array).ok_or_else(|| {
                ApiError::param(&format!("{at}.tools"), "a namespace needs its tools")
            })?;
            for (j, x) in inner.iter().enumerate() {
                add(x, &format!("{at}.tools[{j}]"), Some(ns))?;
            }
        } else {
            add(t, &at, None)?;
        }
    }
    Ok(out)
}

/// Read a request into a prompt and what the response repeats.
pub fn plan(state: &State, o: &Obj) -> Result<Plan, ApiError> {
    check_model(state, o)?;
    let mut conversation = match get_str(o, "previous_response_id")? {
        None => vec![],
        Some(id) => {
            state
                .responses
                .get(id)
                .ok_or_else(|| {
                    ApiError::param(
                        "previous_response_id",
                        format!("no stored response with id '{id}'"),
                    )
                })?
                .conversation
        }
    };
    match o.get("input") {
        Some(Value::String(s)) => conversation.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) if !items.is_empty() => {
            conversation.extend(items.iter().cloned())
        }
        _ => {
            return Err(ApiError::param(
                "input",
                "is required: a string or a non-empty array of items",
            ))
        }
    }
    let mut messages = Vec::new();
    if let Some(ins) = get_str(o, "instructions")? {
        messages.push(json!({"role": "system", "content": ins}));
    }
    messages.extend(template_messages(&conversation)?);
    let tools = tools(o)?;
    let mut opts = ChatOptions::new(tools.chat.clone(), tool_choice(o)?, true);
    let reasoning = get_obj(o, "reasoning")?;
    if let Some(e) = reasoning
        .map(|r| get_str(r, "effort"))
        .transpose()?
        .flatten()
    {
        if !["none", "minimal", "low", "medium", "high", "xhigh"].contains(&e) {
            return Err(ApiError::param(
                "reasoning.effort",
                format!("'{e}' is not a known effort"),
            ));
        }
        opts.thinking = e != "none";
        opts.reasoning_effort = Some(e.to_string());
    }
    if let Some(f) = get_obj(o, "text")?.and_then(|t| t.get("format")) {
        opts.json_schema = match f.get("type").and_then(Value::as_str) {
            Some("text") | None => None,
            Some("json_object") => Some(json!({"type": "object"})),
            Some("json_schema") => match f.get("schema") {
                Some(s @ Value::Object(_)) => Some(s.clone()),
                _ => {
                    return Err(ApiError::param(
                        "text.format.schema",
                        "is required and must be a JSON Schema object",
                    ))
                }
            },
            Some(t) => {
                return Err(ApiError::param(
                    "text.format.type",
                    format!("'{t}' is not one of text, json_object, json_schema"),
                ))
            }
        };
    }
    opts.parallel_calls = get_bool(o, "parallel_tool_calls")?.unwrap_or(true);
    let prep = prepare_chat(state, messages, opts)?;
    let field = |k: &str| o.get(k).cloned().unwrap_or(Value::Null);
    let echo = json!({
        "instructions": field("instructions"),
        "tools": o.get("tools").cloned().unwrap_or(json!([])),
        "tool_choice": o.get("tool_choice").cloned().unwrap_or(json!("auto")),
        "temperature": field("temperature"),
        "top_p": field("top_p"),
        "max_output_tokens": field("max_output_tokens"),
        "parallel_tool_calls": prep.parallel_calls,
        "previous_response_id": field("previous_response_id"),
        "reasoning": reasoning.cloned().map_or(json!({"effort": null, "summary": null}), Value::Object),
        "text": o.get("text").cloned().unwrap_or(json!({"format": {"type": "text"}})),
        "truncation": o.get("truncation").cloned().unwrap_or(json!("disabled")),
        "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
        "store": get_bool(o, "store")?.unwrap_or(true),
    });
    Ok(Plan {
        prep,
        tools,
        conversation,
        store: get_bool(o, "store")?.unwrap_or(true),
        echo,
    })
}

/// The response object around `output`.
pub fn response_json(
    state: &State,
    plan: &Plan,
    id: &str,
    created: u64,
    output: &[Value],
    done: Option<(&Usage, &FinishReason)>,
) -> Value {
    let mut r = json!({
        "id": id, "object": "response", "created_at": created, "model": state.model_name,
        "status": "in_progress", "output": output, "error": null, "incomplete_details": null,
        "usage": null,
    });
    for (k, v) in plan.echo.as_object().into_iter().flatten() {
        r[k] = v.clone();
    }
    if let Some((u, f)) = done {
        let incomplete = matches!(f, FinishReason::Length | FinishReason::ContextFull);
        r["status"] = json!(if incomplete {
            "incomplete"
        } else {
            "completed"
        });
        if incomplete {
            r["incomplete_details"] = json!({"reason": "max_output_tokens"});
        }
        let reasoning: usize = output
            .iter()
            .filter(|i| i["type"] == "reasoning")
            .flat_map(|i| i["content"].as_array().cloned().unwrap_or_default())
            .map(|c| {
                state
                    .tokenizer
                    .encode_plain(c["text"].as_str().unwrap_or(""))
                    .map_or(0, |t| t.len())
            })
            .sum();
        r["usage"] = json!({
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning.min(u.completion_tokens)},
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        });
    }
    r
}

/// A finished call as an output item (`custom_tool_call` for custom tools; a namespaced
/// tool's call names its namespace).
pub fn call_item(plan: &Plan, name: &str, arguments: &Obj) -> Value {
    let mut item = if plan.tools.custom.iter().any(|c| c == name) {
        let input = arguments.get("input").and_then(Value::as_str).unwrap_or("");
        json!({"type": "custom_tool_call", "id": new_id("ctc_"), "call_id": new_id("call_"),
               "name": name, "input": input, "status": "completed"})
    } else {
        json!({"type": "function_call", "id": new_id("fc_"), "call_id": new_id("call_"),
               "name": name, "arguments": Value::Object(arguments.clone()).to_string(),
               "status": "completed"})
    };
    if let Some((_, ns, inner)) = plan.tools.namespaced.iter().find(|(f, ..)| f == name) {
        item["name"] = json!(inner);
        item["namespace"] = json!(ns);
    }
    item
}

/// Keep a finished response for `previous_response_id` (when `store`).
pub fn keep(state: &State, plan: &Plan, response: &Value) {
    if !plan.store {
        return;
    }
    let mut conversation = plan.conversation.clone();
    conversation.extend(response["output"].as_array().cloned().unwrap_or_default());
    state.responses.put(Stored {
        id: response["id"].as_str().unwrap_or("").to_string(),
        response: response.clone(),
        conversation,
    });
}

async fn run(state: State, body: &[u8]) -> Result<Response, ApiError> {
    let o = parse_body(body)?;
    let plan = plan(&state, &o)?;
    let max_tokens = get_u64(&o, "max_output_tokens")?;
    if max_tokens == Some(0) {
        return Err(ApiError::param("max_output_tokens", "must be at least 1"));
    }
    let mut req = request(
        &state,
        plan.prep.prompt.clone(),
        sampling(&state, &o)?,
        max_tokens,
        vec![],
        None,
    );
    req.constraint = plan.prep.constraint.clone();
    let rx = state.engine.submit(req)?;
    let reader = Reader::new(rx, Some(&plan.prep));
    let (id, created) = (new_id("resp_"), unix_time());
    if get_bool(&o, "stream")?.unwrap_or(false) {
        return Ok(stream_response(state, plan, id, created, reader));
    }
    let mut r = reader;
    let mut output: Vec<Value> = Vec::new();
    let append = |output: &mut Vec<Value>, kind: &str, s: &str| {
        let (key, item) = match kind {
            "reasoning" => (
                "content",
                json!({"type": "reasoning", "id": new_id("rs_"), "summary": [],
                                              "content": [{"type": "reasoning_text", "text": ""}]}),
            ),
            _ => (
                "content",
                json!({"type": "message", "id": new_id("msg_"), "status": "completed",
                                     "role": "assistant",
                                     "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]}),
            ),
        };
        if output.last().is_none_or(|i| i["type"] != kind) {
            if s.trim().is_empty() {
                return;
            }
            output.push(item);
        }
        let part = &mut output.last_mut().expect("pushed")[key][0];
        let t = format!("{}{s}", part["text"].as_str().unwrap_or(""));
        part["text"] = json!(t.trim_start());
    };
    let (usage, finish) = loop {
        match r.next().await {
            Some(Out::Reasoning(s)) => append(&mut output, "reasoning", &s),
            Some(Out::Text(s)) => append(&mut output, "message", &s),
            Some(Out::ToolCall { name, arguments }) => {
                output.push(call_item(&plan, &name, &arguments))
            }
            Some(Out::Logprob(_)) => {}
            Some(Out::Done(u, f)) => break (u, f),
            Some(Out::Error(e)) => return Err(engine_failed(e)),
            None => return Err(engine_failed(DROPPED.into())),
        }
    };
    let response = response_json(
        &state,
        &plan,
        &id,
        created,
        &output,
        Some((&usage, &finish)),
    );
    keep(&state, &plan, &response);
    Ok(Json(response).into_response())
}
