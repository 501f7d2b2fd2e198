//! What every API shares: typed reads of request fields (a wrong type is a 400 naming the
//! field), sampling parameters, and turning engine events into parsed output (reasoning, text,
//! tool calls) as they arrive. Building the prompt is in `prompt`.

use std::collections::VecDeque;

use glm5_engine::glm_parser::{Event as Parsed, GlmParser};
use glm5_engine::scheduler::{Event, Request, TokenLogprob, Usage};
use glm5_engine::{FinishReason, SamplingParams};
use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::ApiError;
pub use crate::prompt::*;
use crate::State;

pub type Obj = Map<String, Value>;

/// What a client is told when its request's events stop before `Done`.
pub const DROPPED: &str = "the engine dropped the request";

/// A message's text: a string, null, or an array of `{"type": "text", "text"}` parts (OpenAI
/// content parts and Anthropic text blocks alike); other part types are refused.
pub fn text_content(v: &Value, param: &str) -> Result<String, ApiError> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut s = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => s.push_str(p.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some(t) => {
                        return Err(ApiError::param(
                            param,
                            format!("content of type '{t}' is not supported here (text only)"),
                        ))
                    }
                    None => return Err(ApiError::param(param, "a content part has no 'type'")),
                }
            }
            Ok(s)
        }
        v => Err(ApiError::param(
            param,
            format!("expected a string or an array of text parts, got {v}"),
        )),
    }
}

/// The request body as a JSON object.
pub fn parse_body(bytes: &[u8]) -> Result<Obj, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::bad_request(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

fn present<'a>(o: &'a Obj, k: &str) -> Option<&'a Value> {
    o.get(k).filter(|v| !v.is_null())
}

pub fn get_f32(o: &Obj, k: &str) -> Result<Option<f32>, ApiError> {
    present(o, k)
        .map(|v| {
            v.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| ApiError::param(k, format!("expected a number, got {v}")))
        })
        .transpose()
}

pub fn get_u64(o: &Obj, k: &str) -> Result<Option<u64>, ApiError> {
    present(o, k)
        .map(|v| {
            v.as_u64().ok_or_else(|| {
                ApiError::param(k, format!("expected a non-negative integer, got {v}"))
            })
        })
        .transpose()
}

pub fn get_bool(o: &Obj, k: &str) -> Result<Option<bool>, ApiError> {
    present(o, k)
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| ApiError::param(k, format!("expected true or false, got {v}")))
        })
        .transpose()
}

pub fn get_str<'a>(o: &'a Obj, k: &str) -> Result<Option<&'a str>, ApiError> {
    present(o, k)
        .map(|v| {
            v.as_str()
                .ok_or_else(|| ApiError::param(k, format!("expected a string, got {v}")))
        })
        .transpose()
}

pub fn get_array<'a>(o: &'a Obj, k: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
    present(o, k)
        .map(|v| {
            v.as_array()
                .ok_or_else(|| ApiError::param(k, "expected an array"))
        })
        .transpose()
}

pub fn get_obj<'a>(o: &'a Obj, k: &str) -> Result<Option<&'a Obj>, ApiError> {
    present(o, k)
        .map(|v| {
            v.as_object()
                .ok_or_else(|| ApiError::param(k, "expected an object"))
        })
        .transpose()
}

/// `stop`: a string or an array of strings.
pub fn get_stops(o: &Obj, k: &str) -> Result<Vec<String>, ApiError> {
    match present(o, k) {
        None => Ok(vec![]),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::param(k, "expected strings"))
            })
            .collect(),
        Some(v) => Err(ApiError::param(
            k,
            format!("expected a string or an array of strings, got {v}"),
        )),
    }
}

/// The `model` field: absent, or the name this server serves.
pub fn check_model(state: &State, o: &Obj) -> Result<(), ApiError> {
    match get_str(o, "model")? {
        Some(m)
            if m != state.model_name && !state.model_aliases.iter().any(|a| a == m || a == "*") =>
        {
            Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                format!(
                    "the model '{m}' does not exist; this server serves '{}'",
                    state.model_name
                ),
            )
            .with_code("model_not_found"))
        }
        _ => Ok(()),
    }
}

/// Sampling parameters: the request's, else the model's generation_config.json defaults.
pub fn sampling(state: &State, o: &Obj) -> Result<SamplingParams, ApiError> {
    let d = &state.defaults;
    let p =
        SamplingParams {
            temperature: get_f32(o, "temperature")?.unwrap_or(d.temperature),
            top_k: get_u64(o, "top_k")?.map_or(d.top_k, |v| v as usize),
            top_p: get_f32(o, "top_p")?.unwrap_or(d.top_p),
            min_p: get_f32(o, "min_p")?.unwrap_or(d.min_p),
            repetition_penalty: get_f32(o, "repetition_penalty")?.unwrap_or(d.repetition_penalty),
            presence_penalty: get_f32(o, "presence_penalty")?.unwrap_or(d.presence_penalty),
            frequency_penalty: get_f32(o, "frequency_penalty")?.unwrap_or(d.frequency_penalty),
            seed: match present(o, "seed") {
                None => None,
                Some(v) => Some(v.as_i64().map(|s| s as u64).ok_or_else(|| {
                    ApiError::param("seed", format!("expected an integer, got {v}"))
                })?),
            },
            logit_bias: logit_bias(state, o)?,
        };
    p.validate().map_err(ApiError::from)?;
    Ok(p)
}

/// `logit_bias`: `{"token id": bias}`, ids inside the vocabulary.
fn logit_bias(state: &State, o: &Obj) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(m) = get_obj(o, "logit_bias")? else {
        return Ok(vec![]);
    };
    let vocab = state.tokenizer.vocab_size();
    m.iter()
        .map(|(k, v)| {
            let id = k
                .parse::<u32>()
                .ok()
                .filter(|&id| (id as usize) < vocab)
                .ok_or_else(|| {
                    ApiError::param(
                        "logit_bias",
                        format!("'{k}' is not a token id of this model (0..{vocab})"),
                    )
                })?;
            let b = v.as_f64().ok_or_else(|| {
                ApiError::param(
                    "logit_bias",
                    format!("the bias of {k} is not a number: {v}"),
                )
            })?;
            Ok((id, b as f32))
        })
        .collect()
}

/// The engine request for a prompt.
pub fn request(
    state: &State,
    prompt: Vec<u32>,
    params: SamplingParams,
    max_tokens: Option<u64>,
    stop: Vec<String>,
    logprobs: Option<usize>,
) -> Request {
    Request {
        prompt,
        params,
        max_tokens: max_tokens.map_or(state.default_max_tokens, |m| m as usize),
        stop,
        stop_token_ids: state.stop_token_ids.clone(),
        logprobs,
        skip_special_tokens: true,
        ..Default::default()
    }
}

/// What a client sees of one generation, in order.
#[derive(Debug, Clone)]
pub enum Out {
    Reasoning(String),
    Text(String),
    ToolCall { name: String, arguments: Obj },
    Logprob(TokenLogprob),
    Done(Usage, FinishReason),
    Error(String),
}

/// Engine events -> parsed output, incrementally.
pub struct Reader {
    rx: UnboundedReceiver<Event>,
    parser: Option<GlmParser>,
    parse_tools: bool,
    parallel_calls: bool,
    calls: usize,
    /// Prompt tokens taken from the prefix cache, once the engine admitted the request.
    cached: Option<usize>,
    pending: VecDeque<Out>,
    done: bool,
}

impl Reader {
    /// `parser`: read reasoning and tool calls (chat); `None` for plain text (completions).
    pub fn new(rx: UnboundedReceiver<Event>, prep: Option<&Prepared>) -> Reader {
        let mut r = Reader {
            rx,
            parser: prep.map(|p| GlmParser::new(p.in_reasoning, p.schemas.clone())),
            parse_tools: prep.is_some_and(|p| p.parse_tools),
            parallel_calls: prep.is_none_or(|p| p.parallel_calls),
            calls: 0,
            cached: None,
            pending: VecDeque::new(),
            done: false,
        };
        if let Some(p) = prep.filter(|p| !p.forced.is_empty()) {
            r.feed(&p.forced.clone());
        }
        r
    }

    fn feed(&mut self, text: &str) {
        match &mut self.parser {
            None => {
                if !text.is_empty() {
                    self.pending.push_back(Out::Text(text.to_string()))
                }
            }
            Some(p) => {
                let evs = p.push(text);
                self.absorb(evs);
            }
        }
    }

    fn absorb(&mut self, evs: Vec<Parsed>) {
        for e in evs {
            self.pending.push_back(match e {
                Parsed::Reasoning(s) => Out::Reasoning(s),
                Parsed::Text(s) => Out::Text(s),
                Parsed::ToolCall { .. }
                    if self.parse_tools && !self.parallel_calls && self.calls > 0 =>
                {
                    continue
                }
                Parsed::ToolCall { name, arguments } if self.parse_tools => {
                    self.calls += 1;
                    Out::ToolCall { name, arguments }
                }
                // Tools were not offered (or tool_choice was "none"): the call stays text.
                Parsed::ToolCall { name, arguments } => Out::Text(glm_call_text(&name, &arguments)),
            });
        }
    }

    /// Wait until the engine admits the request (or it ends); the prompt tokens it found in the
    /// prefix cache (0 if it ended first).
    pub async fn admitted(&mut self) -> usize {
        while self.cached.is_none() && !self.done {
            let ev = self.rx.recv().await;
            self.take(ev);
        }
        self.cached.unwrap_or(0)
    }

    /// The next piece of output; `None` after `Done` or `Error`.
    pub async fn next(&mut self) -> Option<Out> {
        loop {
            if let Some(o) = self.pending.pop_front() {
                return Some(o);
            }
            if self.done {
                return None;
            }
            let ev = self.rx.recv().await;
            self.take(ev);
        }
    }

    /// One engine event into pending output (`None`: the engine dropped the request).
    fn take(&mut self, ev: Option<Event>) {
        match ev {
            Some(Event::Token { text, logprob, .. }) => {
                if let Some(lp) = logprob {
                    self.pending.push_back(Out::Logprob(lp));
                }
                self.feed(&text);
            }
            Some(Event::Text(text)) => self.feed(&text),
            Some(Event::Admitted { cached_tokens }) => self.cached = Some(cached_tokens),
            // Only `/generate` asks for these.
            Some(Event::PromptLogprobs(_) | Event::Routes(_)) => {}
            Some(Event::Done(usage, finish)) => {
                if let Some(p) = &mut self.parser {
                    let evs = p.finish();
                    self.absorb(evs);
                }
                self.pending.push_back(Out::Done(usage, finish));
                self.done = true;
            }
            Some(Event::Error(e)) => {
                self.pending.push_back(Out::Error(e));
                self.done = true;
            }
            None => {
                self.pending.push_back(Out::Error(DROPPED.into()));
                self.done = true;
            }
        }
    }
}

/// A tool call written back in GLM's format (when it is not returned as a call).
fn glm_call_text(name: &str, args: &Obj) -> String {
    let mut s = format!("<tool_call>{name}");
    for (k, v) in args {
        let v = match v {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        s.push_str(&format!("<arg_key>{k}</arg_key><arg_value>{v}</arg_value>"));
    }
    s + "</tool_call>"
}

/// A fresh id with a prefix (`chatcmpl-`, `msg_`, `call_`, `toolu_`).
pub fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{:04x}", t ^ (n << 48), n & 0xffff)
}

pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
