//! OpenAI `POST /v1/completions`: a prompt string or token ids, no chat template; streamed or
//! not, `n` choices, logprobs, echo.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::response::sse::Event as Sse;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, StreamExt};
use glm5_engine::scheduler::{TokenLogprob, Usage};
use serde_json::{json, Value};

use crate::common::*;
use crate::error::ApiError;
use crate::openai::{
    add_usage, common, data, engine_failed, finish_name, sse, submit_all, usage_json,
};
use crate::State;

pub async fn completions(Extract(state): Extract<State>, body: Bytes) -> Response {
    complete(state, &body)
        .await
        .unwrap_or_else(|e| e.into_response())
}

/// `/v1/completions`: `prompt` is a string or an array of token ids; no chat template.
async fn complete(state: State, body: &[u8]) -> Result<Response, ApiError> {
    let o = parse_body(body)?;
    let c = common(&state, &o, false)?;
    let prompt = match o.get("prompt") {
        Some(Value::String(s)) => state.tokenizer.encode(s).map_err(ApiError::from)?,
        Some(Value::Array(a)) if a.iter().all(Value::is_u64) && !a.is_empty() => {
            let vocab = state.tokenizer.vocab_size() as u64;
            a.iter()
                .map(|v| match v.as_u64() {
                    Some(id) if id < vocab => Ok(id as u32),
                    _ => Err(ApiError::param(
                        "prompt",
                        format!("token id {v} is outside the vocabulary (0..{vocab})"),
                    )),
                })
                .collect::<Result<Vec<u32>, ApiError>>()?
        }
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => state
            .tokenizer
            .encode(a[0].as_str().unwrap_or(""))
            .map_err(ApiError::from)?,
        _ => {
            return Err(ApiError::param(
                "prompt",
                "expected a string, a one-string array or an array of token ids",
            ))
        }
    };
    if get_str(&o, "suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::param("suffix", "is not supported"));
    }
    let echo = get_bool(&o, "echo")?.unwrap_or(false);
    let echoed = if echo {
        state.tokenizer.decode(&prompt).map_err(ApiError::from)?
    } else {
        String::new()
    };
    let readers = submit_all(&state, &c, &prompt, None)?;
    let id = new_id("cmpl-");
    let make = |state: &State, id: &str, index: usize, text: &str, lp: Value, finish: Value| {
        json!({"id": id, "object": "text_completion", "created": unix_time(), "model": state.model_name,
               "choices": [{"index": index, "text": text, "logprobs": lp, "finish_reason": finish}]})
    };
    let lp_json = |state: &State, lps: &[TokenLogprob]| {
        let text = |id: u32| state.tokenizer.decode(&[id]).unwrap_or_default();
        json!({
            "tokens": lps.iter().map(|l| text(l.token)).collect::<Vec<_>>(),
            "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
            "top_logprobs": lps.iter().map(|l| {
                l.top.iter().map(|&(t, p)| (text(t), json!(p))).collect::<serde_json::Map<_, _>>()
            }).collect::<Vec<_>>(),
        })
    };
    if c.stream {
        let total = Arc::new(Mutex::new(Usage::default()));
        let choices: Vec<_> = readers
            .into_iter()
            .enumerate()
            .map(|(index, r)| {
                let (state, id, echoed) = (state.clone(), id.clone(), echoed.clone());
                let total = total.clone();
                let head = (!echoed.is_empty())
                    .then(|| data(&make(&state, &id, index, &echoed, Value::Null, Value::Null)));
                stream::iter(head)
                    .chain(stream::unfold((r, false), move |(mut r, ended)| {
                        let (state, id, total) = (state.clone(), id.clone(), total.clone());
                        async move {
                            if ended {
                                return None;
                            }
                            Some(match r.next().await? {
                                Out::Text(s) | Out::Reasoning(s) => (
                                    data(&make(&state, &id, index, &s, Value::Null, Value::Null)),
                                    (r, false),
                                ),
                                Out::Logprob(lp) => (
                                    data(&make(
                                        &state,
                                        &id,
                                        index,
                                        "",
                                        lp_json(&state, &[lp]),
                                        Value::Null,
                                    )),
                                    (r, false),
                                ),
                                Out::ToolCall { .. } => (Sse::default().comment(""), (r, false)),
                                Out::Done(u, f) => (
                                    {
                                        add_usage(
                                            &mut total.lock().unwrap_or_else(|e| e.into_inner()),
                                            &u,
                                        );
                                        data(&make(
                                            &state,
                                            &id,
                                            index,
                                            "",
                                            Value::Null,
                                            json!(finish_name(&f, false)),
                                        ))
                                    },
                                    (r, true),
                                ),
                                Out::Error(e) => (data(&engine_failed(e).body()), (r, true)),
                            })
                        }
                    }))
                    .boxed()
            })
            .collect();
        let include_usage = c.include_usage;
        let tail = stream::once(async move {
            let mut out = Vec::new();
            if include_usage {
                let u = *total.lock().unwrap_or_else(|e| e.into_inner());
                out.push(data(&json!({
                    "id": id, "object": "text_completion", "created": unix_time(),
                    "model": state.model_name, "choices": [], "usage": usage_json(&u),
                })));
            }
            out.push(Sse::default().data("[DONE]"));
            stream::iter(out)
        })
        .flatten();
        return Ok(sse(stream::select_all(choices).chain(tail)));
    }
    let mut choices = Vec::new();
    let mut usage = Usage::default();
    for (index, mut r) in readers.into_iter().enumerate() {
        let (mut text, mut lps) = (echoed.clone(), Vec::new());
        let finish = loop {
            match r.next().await {
                Some(Out::Text(s)) | Some(Out::Reasoning(s)) => text.push_str(&s),
                Some(Out::Logprob(lp)) => lps.push(lp),
                Some(Out::ToolCall { .. }) => {}
                Some(Out::Done(u, f)) => {
                    add_usage(&mut usage, &u);
                    break f;
                }
                Some(Out::Error(e)) => return Err(engine_failed(e)),
                None => return Err(engine_failed(DROPPED.into())),
            }
        };
        let lp = if c.logprobs.is_some() {
            lp_json(&state, &lps)
        } else {
            Value::Null
        };
        let mut v = make(
            &state,
            &id,
            index,
            &text,
            lp,
            json!(finish_name(&finish, false)),
        );
        choices.push(v["choices"][0].take());
    }
    Ok(Json(json!({
        "id": id, "object": "text_completion", "created": unix_time(), "model": state.model_name,
        "choices": choices, "usage": usage_json(&usage),
    }))
    .into_response())
}
