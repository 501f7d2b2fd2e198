//! A chat prompt from messages and tools: rendered by the model's template with the client's
//! text guarded (a control token it spells stays text), tokenized, with the grammar a forced
//! call, a strict tool or a JSON response format imposes on the output.

use glm5_engine::constrain::Constraint;
use glm5_engine::glm_grammar;
use glm5_engine::glm_parser::ToolSchemas;
use glm5_engine::ChatInput;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::State;

/// Which tool the model must call.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

/// OpenAI's `tool_choice` (chat: `{"type": "function", "function": {"name"}}`, Responses:
/// `{"type": "function", "name"}`; either form is read from both).
pub fn tool_choice(o: &Map<String, Value>) -> Result<ToolChoice, ApiError> {
    match o.get("tool_choice") {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(ApiError::param(
                "tool_choice",
                format!("'{other}' is not one of auto, none, required"),
            )),
        },
        Some(v) => v
            .pointer("/function/name")
            .or_else(|| v.get("name"))
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Named(n.to_string()))
            .ok_or_else(|| {
                ApiError::param(
                    "tool_choice",
                    "expected a string or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                )
            }),
    }
}

/// A rendered, tokenized chat prompt and how to read the output.
pub struct Prepared {
    pub prompt: Vec<u32>,
    /// The output starts with reasoning (the prompt ended with `<think>`).
    pub in_reasoning: bool,
    /// Text appended to the prompt for a forced tool call; the parser reads it first.
    pub forced: String,
    pub schemas: ToolSchemas,
    pub parse_tools: bool,
    /// More than one tool call may be returned (`parallel_tool_calls`); if not, calls after the
    /// first are dropped.
    pub parallel_calls: bool,
    /// The grammar the output must follow (a forced tool call, a JSON answer).
    pub constraint: Option<Constraint>,
}

/// How to build a chat prompt besides its messages.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// OpenAI-form tools (`{"type": "function", "function": {...}}`).
    pub tools: Option<Vec<Value>>,
    pub choice: ToolChoice,
    pub thinking: bool,
    /// Passed to the template as `reasoning_effort` (GLM-5.3's templates read it).
    pub reasoning_effort: Option<String>,
    /// The last message is an assistant turn to continue (Anthropic's prefill, vLLM's
    /// `continue_final_message`) rather than a finished one.
    pub continue_final: bool,
    /// More than one tool call may be returned (`parallel_tool_calls`).
    pub parallel_calls: bool,
    /// The answer must be one JSON value valid against this schema (`response_format`).
    pub json_schema: Option<Value>,
}

impl ChatOptions {
    pub fn new(tools: Option<Vec<Value>>, choice: ToolChoice, thinking: bool) -> ChatOptions {
        ChatOptions {
            tools,
            choice,
            thinking,
            reasoning_effort: None,
            continue_final: false,
            parallel_calls: true,
            json_schema: None,
        }
    }
}

/// The marker `Tokenizer::guard` puts into control tokens spelled by request text: private-use
/// characters around a per-process random number, so that no client text holds it by chance.
fn marker() -> &'static str {
    static M: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        format!("\u{F8FF}{:016x}\u{F8FF}", h.finish())
    })
}

/// Every string inside `v` (keys too) guarded: no control token left whole.
fn guard_all(state: &State, v: &Value) -> Value {
    let g = |s: &str| state.tokenizer.guard(s, marker(), &[]);
    match v {
        Value::String(s) => Value::String(g(s)),
        Value::Array(a) => Value::Array(a.iter().map(|x| guard_all(state, x)).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, x)| (g(k), guard_all(state, x))).collect())
        }
        v => v.clone(),
    }
}

/// A template message with its client-written text guarded. An assistant's `content` keeps its
/// `<think>`/`</think>` (the template splits earlier reasoning out of it); nothing else keeps a
/// control token: only the template's own markup becomes one.
fn guard_message(state: &State, m: &Value) -> Value {
    let mut out = guard_all(state, m);
    if m["role"] == "assistant" {
        if let Some(c) = m.get("content").and_then(Value::as_str) {
            out["content"] =
                Value::String(state.tokenizer.guard(c, marker(), &["<think>", "</think>"]));
        }
    }
    if let Some(role) = m.get("role") {
        out["role"] = role.clone();
    }
    out
}

/// A tool whose arguments must follow its schema (`strict: true`, OpenAI chat or Responses
/// form).
fn is_strict(t: &Value) -> bool {
    t.pointer("/function/strict")
        .or_else(|| t.get("strict"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Render `messages` (template form: `role`, `content`, `reasoning_content`, `tool_calls` with
/// mapping arguments) with the options' tools (OpenAI form) and tokenize. Text from the client
/// is encoded as text: a control token it spells never becomes one (`Tokenizer::guard`).
pub fn prepare_chat(
    state: &State,
    mut messages: Vec<Value>,
    opts: ChatOptions,
) -> Result<Prepared, ApiError> {
    let ChatOptions {
        tools,
        choice,
        thinking,
        reasoning_effort,
        continue_final,
        parallel_calls,
        json_schema,
    } = opts;
    let tools = tools.filter(|t| !t.is_empty() && choice != ToolChoice::None);
    if matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) && tools.is_none() {
        return Err(ApiError::param(
            "tool_choice",
            "requires a tool to call, and 'tools' is empty",
        ));
    }
    if let (ToolChoice::Named(n), Some(ts)) = (&choice, &tools) {
        if !ToolSchemas::new(ts).names().any(|t| t == n) {
            return Err(ApiError::param(
                "tool_choice",
                format!("names the tool '{n}', which is not in 'tools'"),
            ));
        }
    }
    // The assistant turn to continue: its reasoning and text go after the generation prompt.
    let prefill = match messages.last() {
        Some(m) if continue_final && m["role"] == "assistant" => {
            let m = messages.pop().unwrap_or_default();
            let text = m.get("content").and_then(Value::as_str).unwrap_or("");
            let reasoning = m
                .get("reasoning_content")
                .and_then(Value::as_str)
                .unwrap_or("");
            Some((reasoning.to_string(), text.to_string()))
        }
        _ => None,
    };
    let forced = match (&choice, &tools) {
        (ToolChoice::Required, Some(_)) => "<tool_call>".to_string(),
        (ToolChoice::Named(n), Some(_)) => format!("<tool_call>{n}"),
        _ => String::new(),
    };
    // A forced call starts right away: no reasoning first. A prefill without reasoning
    // continues after a closed (empty) one.
    let thinking = match &prefill {
        Some((r, _)) => !r.is_empty(),
        None => thinking && forced.is_empty(),
    };
    let mut kwargs = Map::new();
    kwargs.insert("enable_thinking".into(), Value::Bool(thinking));
    if let Some(e) = reasoning_effort {
        kwargs.insert("reasoning_effort".into(), Value::String(e));
    }
    let guarded: Vec<Value> = messages.iter().map(|m| guard_message(state, m)).collect();
    let mut text = state
        .template
        .render(&ChatInput {
            messages: guarded,
            tools: tools
                .as_ref()
                .map(|t| t.iter().map(|x| guard_all(state, x)).collect()),
            add_generation_prompt: true,
            kwargs,
        })
        .map_err(|e| ApiError::param("messages", e.to_string()))?;
    let mut in_reasoning = text.ends_with("<think>");
    if let Some((reasoning, prefill)) = &prefill {
        if in_reasoning {
            text.push_str(&state.tokenizer.guard(reasoning.trim(), marker(), &[]));
            text.push_str("</think>");
            in_reasoning = false;
        }
        text.push_str(&state.tokenizer.guard(prefill, marker(), &[]));
    }
    text.push_str(&forced);
    let prompt = state
        .tokenizer
        .encode_guarded(&text, marker())
        .map_err(ApiError::from)?;
    // A forced call is constrained to a valid call of the named (or any) tool; a JSON answer to
    // its schema.
    let grammar = match (&choice, &tools, &json_schema) {
        (ToolChoice::Named(n), Some(ts), _) => Some((
            "tool_choice",
            glm_grammar::tool_call_lark(ts, Some(n), parallel_calls),
        )),
        (ToolChoice::Required, Some(ts), _) => Some((
            "tool_choice",
            glm_grammar::tool_call_lark(ts, None, parallel_calls),
        )),
        (_, _, Some(schema)) => Some((
            "response_format",
            glm_grammar::json_answer_lark(schema, in_reasoning),
        )),
        (ToolChoice::Auto, Some(ts), None) if ts.iter().any(is_strict) => Some((
            "tools",
            glm_grammar::strict_calls_lark(ts, in_reasoning, parallel_calls),
        )),
        _ => None,
    };
    let constraint = match grammar {
        None => None,
        Some((param, g)) => Some(
            state
                .tokenizer
                .grammars()
                .and_then(|c| c.lark(&g))
                .map_err(|e| ApiError::param(param, e.to_string()))?,
        ),
    };
    Ok(Prepared {
        prompt,
        in_reasoning,
        forced,
        schemas: ToolSchemas::new(tools.as_deref().unwrap_or(&[])),
        parse_tools: tools.is_some(),
        parallel_calls,
        constraint,
    })
}
