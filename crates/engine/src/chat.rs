//! The model's own Jinja chat template, rendered with minijinja the way transformers'
//! `apply_chat_template` renders it: `trim_blocks` and `lstrip_blocks` on, Python string methods
//! (`strip`, `split`, `items`), a `tojson` filter that writes exactly what Python's `json.dumps`
//! writes, `raise_exception`, and the special tokens of `tokenizer_config.json` in scope.

use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, ErrorKind};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::pyjson::{self, DumpOptions};

/// What one rendering needs besides the template: the conversation, tools, and the keyword
/// arguments that `apply_chat_template(**kwargs)` would forward (`enable_thinking`, ...).
#[derive(Debug, Clone, Default)]
pub struct ChatInput {
    pub messages: Vec<Value>,
    pub tools: Option<Vec<Value>>,
    pub add_generation_prompt: bool,
    pub kwargs: Map<String, Value>,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    path: PathBuf,
    /// `bos_token`, `eos_token`, ... from tokenizer_config.json, as transformers passes them.
    special: Map<String, Value>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatTemplate({})", self.path.display())
    }
}

const NAME: &str = "chat_template";

/// A JSON file of a model folder; `None` when it does not exist.
pub(crate) fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::BadFile {
                path: path.to_path_buf(),
                reason: format!("invalid JSON: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl ChatTemplate {
    /// The template of a model folder: `chat_template.jinja`, else `tokenizer_config.json`'s
    /// `chat_template` (a string, or a list of `{name, template}` where `default` is taken).
    pub fn from_model_dir(dir: &Path) -> Result<ChatTemplate> {
        let tc_path = dir.join("tokenizer_config.json");
        let tc = read_json(&tc_path)?;
        let mut special = Map::new();
        if let Some(Value::Object(m)) = &tc {
            for (k, v) in m {
                if k.ends_with("_token") {
                    // AddedToken objects carry the text in "content".
                    let text = v.get("content").cloned().unwrap_or_else(|| v.clone());
                    special.insert(k.clone(), text);
                }
            }
        }
        let jinja = dir.join("chat_template.jinja");
        let (source, path) = match std::fs::read_to_string(&jinja) {
            Ok(s) => (s, jinja),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let found = tc.as_ref().and_then(|t| t.get("chat_template")).cloned();
                let source = match found {
                    Some(Value::String(s)) => s,
                    Some(Value::Array(list)) => list
                        .iter()
                        .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                        .and_then(|t| t.get("template").and_then(Value::as_str))
                        .map(str::to_string)
                        .ok_or_else(|| Error::BadFile {
                            path: tc_path.clone(),
                            reason: "'chat_template' is a list without a 'default' entry".into(),
                        })?,
                    Some(_) => {
                        return Err(Error::BadFile {
                            path: tc_path,
                            reason: "'chat_template' is neither a string nor a list".into(),
                        })
                    }
                    None => {
                        return Err(Error::NoTemplate {
                            dir: dir.to_path_buf(),
                        })
                    }
                };
                (source, tc_path)
            }
            Err(source) => {
                return Err(Error::Io {
                    path: jinja,
                    source,
                })
            }
        };
        ChatTemplate::from_source(source, path, special)
    }

    pub fn from_source(
        source: String,
        path: PathBuf,
        special: Map<String, Value>,
    ) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, source)
            .map_err(|e| Error::TemplateSyntax {
                path: path.clone(),
                reason: one_line(&e),
            })?;
        Ok(ChatTemplate { env, path, special })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn render(&self, input: &ChatInput) -> Result<String> {
        let mut ctx = self.special.clone();
        for (k, v) in &input.kwargs {
            ctx.insert(k.clone(), v.clone());
        }
        ctx.insert("messages".into(), Value::Array(input.messages.clone()));
        ctx.insert(
            "tools".into(),
            input.tools.clone().map_or(Value::Null, Value::Array),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Value::Bool(input.add_generation_prompt),
        );
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| self.render_err(&e))?;
        tmpl.render(JValue::from_serialize(&ctx))
            .map_err(|e| self.render_err(&e))
    }

    fn render_err(&self, e: &minijinja::Error) -> Error {
        Error::TemplateRender {
            path: self.path.clone(),
            reason: one_line(e),
        }
    }
}

fn one_line(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    if let Some(line) = e.line() {
        s = format!("{s} (line {line})");
    }
    s.replace('\n', " ")
}

fn raise_exception(msg: String) -> std::result::Result<JValue, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: JValue, kwargs: Kwargs) -> std::result::Result<JValue, minijinja::Error> {
    let bad = |m: String| minijinja::Error::new(ErrorKind::InvalidOperation, m);
    let v: Value = serde_json::to_value(&value).map_err(|e| bad(format!("tojson: {e}")))?;
    let mut opt = DumpOptions {
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ..Default::default()
    };
    if let Some(seps) = kwargs.get::<Option<Vec<String>>>("separators")? {
        if seps.len() != 2 {
            return Err(bad("tojson: separators must be a pair".into()));
        }
        opt.item_sep = seps[0].clone();
        opt.key_sep = seps[1].clone();
    }
    let indent: Option<JValue> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(i) if i.is_none() => None,
        Some(i) => Some(match i.as_i64() {
            Some(n) => " ".repeat(n.max(0) as usize),
            None => i.to_string(),
        }),
    };
    opt = opt.with_indent(indent);
    kwargs.assert_all_used()?;
    Ok(JValue::from_safe_string(pyjson::dumps(&v, &opt)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, messages: Value) -> Result<String> {
        let t = ChatTemplate::from_source(src.into(), "t.jinja".into(), Map::new())?;
        t.render(&ChatInput {
            messages: messages.as_array().unwrap().clone(),
            ..Default::default()
        })
    }

    #[test]
    fn python_methods_and_tojson() {
        let out = render(
            "{% for m in messages %}{{ m.content.strip().split(',')[1] }}|{{ m.x | tojson }}{% endfor %}",
            json!([{"content": "  a,b  ", "x": {"k": "é<", "n": [1, 2.5]}}]),
        )
        .unwrap();
        assert_eq!(out, "b|{\"k\": \"é<\", \"n\": [1, 2.5]}");
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        let out = render("A\n  {% if true %}\nB\n  {% endif %}\nC\n", json!([])).unwrap();
        // jinja2 with trim_blocks + lstrip_blocks, keep_trailing_newline=False
        assert_eq!(out, "A\nB\nC");
    }

    #[test]
    fn raise_exception_is_a_render_error() {
        let e = render("{{ raise_exception('no system role') }}", json!([])).unwrap_err();
        assert!(e.to_string().contains("no system role"), "{e}");
        let e = render("{% if %}", json!([])).unwrap_err();
        assert!(e.to_string().contains("t.jinja"), "{e}");
    }
}
