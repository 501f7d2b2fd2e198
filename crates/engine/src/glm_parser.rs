//! Streaming parser for GLM-5 output: reasoning (`...</think>`), answer text, and tool calls in
//! GLM's XML format `<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>...</tool_call>`
//! (SGLang/vLLM call these the `glm45` reasoning and `glm47` tool-call parsers).
//!
//! Fed text in arbitrary chunks, it gives the same events as when fed the whole text at once, never
//! shows part of a tag as text, and never fails: what cannot be read as a tool call comes back as
//! text. It handles the peers' known failures (shared/docs/peers.md §3): zero-argument calls, a
//! missing `<arg_key>` opener, stray tags inside keys, a missing `</tool_call>` at the end, a
//! tool call right after reasoning without `</think>`, and `<think>` re-opened in later turns.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Reasoning(String),
    Text(String),
    ToolCall {
        name: String,
        arguments: Map<String, Value>,
    },
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Reasoning,
    Text,
    ToolCall,
}

/// Tool schemas by name: `function.parameters.properties.K.type`, used to type argument values.
#[derive(Debug, Clone, Default)]
pub struct ToolSchemas {
    tools: Vec<(String, Value)>,
}

impl ToolSchemas {
    /// From an OpenAI `tools` array (`{"type": "function", "function": {name, parameters}}`) or
    /// bare `{name, parameters}` / Anthropic `{name, input_schema}` objects.
    pub fn new(tools: &[Value]) -> ToolSchemas {
        let tools = tools
            .iter()
            .filter_map(|t| {
                let f = t.get("function").unwrap_or(t);
                let name = f.get("name")?.as_str()?.to_string();
                let params = f
                    .get("parameters")
                    .or_else(|| f.get("input_schema"))
                    .cloned()
                    .unwrap_or(Value::Null);
                Some((name, params))
            })
            .collect();
        ToolSchemas { tools }
    }

    /// The tools' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.iter().map(|(n, _)| n.as_str())
    }

    fn known(&self, name: &str) -> bool {
        self.tools.is_empty() || self.tools.iter().any(|(n, _)| n == name)
    }

    fn param_type(&self, name: &str, key: &str) -> Option<String> {
        let (_, schema) = self.tools.iter().find(|(n, _)| n == name)?;
        declared_type(schema.get("properties")?.get(key)?).map(str::to_string)
    }
}

/// A parameter's JSON-schema type as it decides how its value is written: `string` (or none)
/// verbatim, anything else as JSON. For `["integer", "null"]` the first non-null type decides.
pub fn declared_type(param: &Value) -> Option<&str> {
    match param.get("type")? {
        Value::String(s) => Some(s),
        Value::Array(a) => a.iter().filter_map(Value::as_str).find(|s| *s != "null"),
        _ => None,
    }
}

#[derive(Debug)]
pub struct GlmParser {
    state: State,
    buf: String,
    schemas: ToolSchemas,
}

impl GlmParser {
    /// `in_reasoning`: the prompt ended with `<think>` (thinking on), so the output starts as
    /// reasoning.
    pub fn new(in_reasoning: bool, schemas: ToolSchemas) -> GlmParser {
        GlmParser {
            state: if in_reasoning {
                State::Reasoning
            } else {
                State::Text
            },
            buf: String::new(),
            schemas,
        }
    }

    pub fn push(&mut self, chunk: &str) -> Vec<Event> {
        self.buf.push_str(chunk);
        let mut out = Vec::new();
        self.drain(&mut out, false);
        merge(out)
    }

    /// End of output: flush held text and recover an unterminated tool call.
    pub fn finish(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.drain(&mut out, true);
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            State::ToolCall => match parse_call(&rest, &self.schemas) {
                Some(ev) => out.push(ev),
                None => push_text(&mut out, State::Text, &format!("{CALL_OPEN}{rest}")),
            },
            s => push_text(&mut out, s, &rest),
        }
        merge(out)
    }

    fn drain(&mut self, out: &mut Vec<Event>, at_end: bool) {
        loop {
            match self.state {
                State::Reasoning | State::Text => {
                    let tags: &[&str] = if self.state == State::Reasoning {
                        &[THINK_CLOSE, CALL_OPEN, THINK_OPEN]
                    } else {
                        &[CALL_OPEN, THINK_OPEN, THINK_CLOSE]
                    };
                    match find_first(&self.buf, tags) {
                        Some((at, tag)) => {
                            let before: String = self.buf.drain(..at + tag.len()).collect();
                            push_text(out, self.state, &before[..at]);
                            self.state = match tag {
                                CALL_OPEN => State::ToolCall,
                                THINK_OPEN => State::Reasoning,
                                _ => State::Text, // </think>
                            };
                        }
                        None => {
                            let hold = if at_end {
                                0
                            } else {
                                partial_tag_len(&self.buf, tags)
                            };
                            let cut = self.buf.len() - hold;
                            let text: String = self.buf.drain(..cut).collect();
                            push_text(out, self.state, &text);
                            return;
                        }
                    }
                }
                State::ToolCall => match self.buf.find(CALL_CLOSE) {
                    Some(at) => {
                        let body: String = self.buf.drain(..at + CALL_CLOSE.len()).collect();
                        let body = &body[..at];
                        match parse_call(body, &self.schemas) {
                            Some(ev) => out.push(ev),
                            None => push_text(
                                out,
                                State::Text,
                                &format!("{CALL_OPEN}{body}{CALL_CLOSE}"),
                            ),
                        }
                        self.state = State::Text;
                    }
                    None => return,
                },
            }
        }
    }
}

fn push_text(out: &mut Vec<Event>, state: State, text: &str) {
    if text.is_empty() {
        return;
    }
    out.push(match state {
        State::Reasoning => Event::Reasoning(text.to_string()),
        _ => Event::Text(text.to_string()),
    });
}

/// Adjacent text events of one kind become one.
pub fn merge(events: Vec<Event>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    for e in events {
        match (out.last_mut(), e) {
            (Some(Event::Text(a)), Event::Text(b)) => a.push_str(&b),
            (Some(Event::Reasoning(a)), Event::Reasoning(b)) => a.push_str(&b),
            (_, e) => out.push(e),
        }
    }
    out
}

fn find_first<'t>(s: &str, tags: &[&'t str]) -> Option<(usize, &'t str)> {
    tags.iter()
        .filter_map(|t| s.find(t).map(|at| (at, *t)))
        .min_by_key(|(at, _)| *at)
}

/// Length of the longest suffix of `s` that is a proper prefix of one of `tags`.
fn partial_tag_len(s: &str, tags: &[&str]) -> usize {
    let start = s.len().saturating_sub(12);
    for i in start..s.len() {
        if s.is_char_boundary(i) && tags.iter().any(|t| t.starts_with(&s[i..])) {
            return s.len() - i;
        }
    }
    0
}

/// Parse the body between `<tool_call>` and `</tool_call>`; `None` when it is not a tool call.
fn parse_call(body: &str, schemas: &ToolSchemas) -> Option<Event> {
    const KO: &str = "<arg_key>";
    const KC: &str = "</arg_key>";
    const VO: &str = "<arg_value>";
    const VC: &str = "</arg_value>";
    let first_tag = find_first(body, &[KO, KC, VO]);
    let (head, mut rest) = match first_tag {
        Some((at, _)) => (&body[..at], &body[at..]),
        None => (body, ""),
    };
    // A missing <arg_key> opener: "name\nkey</arg_key>..." -> the name is the first line.
    let mut pending_key: Option<String> = None;
    let name = if matches!(first_tag, Some((_, KC))) {
        let (n, k) = head
            .trim_start()
            .split_once(['\n', ' '])
            .unwrap_or((head, ""));
        pending_key = Some(k.to_string());
        rest = &rest[KC.len()..];
        n.trim()
    } else {
        head.trim()
    };
    if name.is_empty() || name.contains(char::is_whitespace) || name.contains(['<', '>']) {
        return None;
    }
    if !schemas.known(name) {
        return None;
    }
    let mut arguments = Map::new();
    loop {
        let key = match pending_key.take() {
            Some(k) => k,
            None => {
                rest = rest.trim_start();
                if rest.is_empty() {
                    break;
                }
                let r = rest.strip_prefix(KO)?;
                let (k, after) = r.split_once(KC)?;
                rest = after;
                k.to_string()
            }
        };
        let key = strip_tags(&key);
        if key.is_empty() {
            return None;
        }
        rest = rest.trim_start();
        let r = rest.strip_prefix(VO)?;
        let (v, after) = match r.split_once(VC) {
            Some(x) => x,
            None => (r, ""), // unterminated last value
        };
        rest = after;
        let value = typed_value(schemas.param_type(name, &key).as_deref(), v);
        arguments.insert(key, value);
    }
    Some(Event::ToolCall {
        name: name.to_string(),
        arguments,
    })
}

/// Remove leftover tags (`<arg_value>`, `</tool_call>`, ...) and whitespace from a key.
fn strip_tags(k: &str) -> String {
    let mut out = String::new();
    let mut rest = k;
    while let Some(open) = rest.find('<') {
        match rest[open..].find('>') {
            Some(close) => {
                out.push_str(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}

/// A value typed by the parameter's JSON-schema type: strings stay verbatim; other declared types
/// are read as JSON when they parse, else kept as the string.
fn typed_value(ty: Option<&str>, v: &str) -> Value {
    match ty {
        Some("string") | None => Value::String(v.to_string()),
        Some(_) => {
            serde_json::from_str::<Value>(v.trim()).unwrap_or_else(|_| Value::String(v.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schemas() -> ToolSchemas {
        ToolSchemas::new(&[
            json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                               "opts": {"type": "object"}, "zip": {"type": "string"}}}}}),
            json!({"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}),
        ])
    }

    fn call(name: &str, args: Value) -> Event {
        Event::ToolCall {
            name: name.into(),
            arguments: args.as_object().unwrap().clone(),
        }
    }

    /// (thinking, output, expected events)
    fn corpus() -> Vec<(bool, &'static str, Vec<Event>)> {
        use Event::*;
        vec![
            (true, "Let me think.</think>The answer is 4.", vec![Reasoning("Let me think.".into()), Text("The answer is 4.".into())]),
            (false, "Plain answer with a < sign and <b>html</b>.", vec![Text("Plain answer with a < sign and <b>html</b>.".into())]),
            (true, "Need weather.</think><tool_call>get_weather<arg_key>city</arg_key><arg_value>Zürich</arg_value><arg_key>days</arg_key><arg_value>3</arg_value></tool_call>",
             vec![Reasoning("Need weather.".into()), call("get_weather", json!({"city": "Zürich", "days": 3}))]),
            // zero-argument call (vLLM #32436)
            (false, "<tool_call>now</tool_call>", vec![call("now", json!({}))]),
            // several calls, whitespace between tags, typed values; a string-typed number stays a string
            (false, "Checking.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>zip</arg_key><arg_value>75001</arg_value><arg_key>opts</arg_key><arg_value>{\"u\": \"C\"}</arg_value>\n</tool_call>\n<tool_call>now</tool_call>",
             vec![Text("Checking.\n".into()), call("get_weather", json!({"city": "Paris", "zip": "75001", "opts": {"u": "C"}})), Text("\n".into()), call("now", json!({}))]),
            // missing <arg_key> opener (vLLM #47190)
            (false, "<tool_call>get_weather\ncity</arg_key><arg_value>Rome</arg_value></tool_call>", vec![call("get_weather", json!({"city": "Rome"}))]),
            // stray tag inside a key (vLLM #54971)
            (false, "<tool_call>get_weather<arg_key><arg_value>city</arg_key><arg_value>Oslo</arg_value></tool_call>", vec![call("get_weather", json!({"city": "Oslo"}))]),
            // tool call straight after reasoning, without </think> (glm45 detector)
            (true, "I should call it<tool_call>now</tool_call>", vec![Reasoning("I should call it".into()), call("now", json!({}))]),
            // unterminated call at the end of output
            (false, "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Lima", vec![call("get_weather", json!({"city": "Lima"}))]),
            // garbage inside tool_call tags comes back as text, never a crash
            (false, "x<tool_call><arg_value>oops</tool_call>y", vec![Text("x<tool_call><arg_value>oops</tool_call>y".into())]),
            (false, "<tool_call>unknown_tool</tool_call>", vec![Text("<tool_call>unknown_tool</tool_call>".into())]),
            // <think> re-opened in a later turn never leaks into text (vLLM #27703); stray </think> dropped
            (false, "<think>hidden</think>shown</think> too", vec![Reasoning("hidden".into()), Text("shown too".into())]),
            // a value that fails to parse as its declared type stays a string
            (false, "<tool_call>get_weather<arg_key>days</arg_key><arg_value>three</arg_value></tool_call>", vec![call("get_weather", json!({"days": "three"}))]),
            // text ending in a partial tag at the very end is text
            (false, "ends with </thi", vec![Text("ends with </thi".into())]),
        ]
    }

    fn run_chunks(thinking: bool, text: &str, sizes: &mut dyn FnMut() -> usize) -> Vec<Event> {
        let mut p = GlmParser::new(thinking, schemas());
        let mut events = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let n = sizes().max(1).min(chars.len() - i);
            let chunk: String = chars[i..i + n].iter().collect();
            events.extend(p.push(&chunk));
            i += n;
        }
        events.extend(p.finish());
        merge(events)
    }

    #[test]
    fn corpus_whole_and_in_random_chunks() {
        let mut seed = 12345u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) % 7) as usize + 1
        };
        for (thinking, text, expected) in corpus() {
            assert_eq!(
                run_chunks(thinking, text, &mut || usize::MAX),
                expected,
                "whole: {text:?}"
            );
            for _ in 0..20 {
                assert_eq!(
                    run_chunks(thinking, text, &mut rnd),
                    expected,
                    "chunked: {text:?}"
                );
            }
            assert_eq!(
                run_chunks(thinking, text, &mut || 1),
                expected,
                "char by char: {text:?}"
            );
        }
    }

    #[test]
    fn never_shows_part_of_a_tag() {
        let mut p = GlmParser::new(false, schemas());
        assert_eq!(p.push("answer <tool"), vec![Event::Text("answer ".into())]);
        assert_eq!(
            p.push("_call>now</tool_call>"),
            vec![call("now", json!({}))]
        );
    }
}
