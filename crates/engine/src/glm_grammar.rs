//! Grammars (llguidance Lark) for GLM's output formats, so that a forced tool call is a valid
//! call every time and `response_format` output is valid JSON.
//!
//! A call is `NAME<arg_key>K</arg_key><arg_value>V</arg_value>...</tool_call>` after the
//! `<tool_call>` control token (the tags are control tokens too). A value is written verbatim
//! for a `string` (or untyped) parameter and as JSON otherwise, as the chat template renders
//! past calls and as `glm_parser` reads them; the JSON is constrained by the parameter's schema.

use serde_json::Value;

/// A Lark string literal.
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// `schema` for `%json`, with whitespace between JSON tokens bounded (a sampled model can
/// otherwise spend its whole budget on newlines inside an object). A schema's own
/// `x-guidance` options win.
fn json_schema(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Some(o) = s.as_object_mut() {
        o.entry("x-guidance").or_insert_with(
            || serde_json::json!({"whitespace_flexible": true, "whitespace_pattern": "[ \\n\\t]{0,8}"}),
        );
    }
    s
}

/// Whether a parameter's value is written verbatim (as `glm_parser` reads it back).
fn is_verbatim(schema: &Value) -> bool {
    crate::glm_parser::declared_type(schema).is_none_or(|t| t == "string")
}

/// Rules for one tool's arguments, named `args_{i}`; pushed onto `out`.
fn args_rules(i: usize, params: &Value, out: &mut Vec<String>) {
    let props = params.get("properties").and_then(Value::as_object);
    let mut pairs = Vec::new();
    for (j, (key, schema)) in props.into_iter().flatten().enumerate() {
        let value = if is_verbatim(schema) {
            "TEXT".to_string()
        } else {
            out.push(format!("v_{i}_{j}: %json {}", json_schema(schema)));
            format!("v_{i}_{j}")
        };
        pairs.push(format!(
            "<arg_key> {} </arg_key> <arg_value> {value} </arg_value>",
            lit(key)
        ));
    }
    // Other keys where the schema allows them (or says nothing about properties).
    let open = params.get("additionalProperties") != Some(&Value::Bool(false));
    if pairs.is_empty() || open && props.is_none() {
        pairs.push("<arg_key> KEY </arg_key> <arg_value> TEXT </arg_value>".into());
    }
    out.push(format!("pair_{i}: {}", pairs.join(" | ")));
    out.push(format!("args_{i}: pair_{i}*"));
}

/// The grammar of a forced tool call's continuation. `tools` are in OpenAI form; `named`: the
/// prompt already ends with `<tool_call>NAME`, else with `<tool_call>`. `parallel`: more calls
/// may follow the first.
pub fn tool_call_lark(tools: &[Value], named: Option<&str>, parallel: bool) -> String {
    let mut rules = Vec::new();
    let mut calls = Vec::new();
    let mut first = None;
    for (i, t) in tools.iter().enumerate() {
        let f = t.get("function").unwrap_or(t);
        let Some(name) = f.get("name").and_then(Value::as_str) else {
            continue;
        };
        let params = f
            .get("parameters")
            .or_else(|| f.get("input_schema"))
            .cloned()
            .unwrap_or(Value::Null);
        args_rules(i, &params, &mut rules);
        calls.push(format!("{} args_{i} </tool_call>", lit(name)));
        if named == Some(name) {
            first = Some(format!("args_{i} </tool_call>"));
        }
    }
    rules.push(format!("call: {}", calls.join(" | ")));
    let first = first.unwrap_or_else(|| "call".into());
    let more = if parallel { " (<tool_call> call)*" } else { "" };
    let mut g = format!("start: {first}{more}\n");
    for r in rules {
        g.push_str(&r);
        g.push('\n');
    }
    g.push_str("KEY: /[^<>\\s][^<>]*/\nTEXT: /(?s:.*)/\n");
    g
}

/// The grammar of a free answer in which every tool call follows its tool's schema (tools
/// declared `strict`, `tool_choice` auto): reasoning (when the output starts inside it), text,
/// then any calls. Text holds no control token but the call markup.
pub fn strict_calls_lark(tools: &[Value], in_reasoning: bool, parallel: bool) -> String {
    let calls = tool_call_lark(tools, None, parallel);
    // Reuse the call rules; only the start differs.
    let rules = calls.split_once('\n').map_or("", |(_, r)| r);
    let more = if parallel {
        "(<tool_call> call)*"
    } else {
        "(<tool_call> call)?"
    };
    let think = if in_reasoning { "THINK </think> " } else { "" };
    format!("start: {think}TEXT {more}\nTHINK: /(?s:.*)/\n{rules}")
}

/// The grammar of a `response_format` answer: one JSON value valid against `schema`, after the
/// reasoning when the output starts inside it.
pub fn json_answer_lark(schema: &Value, in_reasoning: bool) -> String {
    let start = if in_reasoning {
        "start: THINK </think> answer"
    } else {
        "start: answer"
    };
    format!(
        "{start}\nanswer: %json {}\nTHINK: /(?s:.*)/\n",
        json_schema(schema)
    )
}
