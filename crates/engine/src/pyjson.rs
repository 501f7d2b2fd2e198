//! `json.dumps` exactly as Python writes it, for the chat template's `tojson` filter: transformers
//! renders templates with `json.dumps(x, ensure_ascii=False)` by default, with `", "` and `": "`
//! separators, keys in insertion order and floats in `repr` form. minijinja's own `tojson`
//! escapes `<`, `>`, `&` and `'` for HTML and would not match byte for byte.

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub ensure_ascii: bool,
    pub indent: Option<String>,
    pub item_sep: String,
    pub key_sep: String,
    pub sort_keys: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            ensure_ascii: false,
            indent: None,
            item_sep: ", ".into(),
            key_sep: ": ".into(),
            sort_keys: false,
        }
    }
}

impl DumpOptions {
    /// Python's rule: with an indent, the default item separator loses its trailing space.
    pub fn with_indent(mut self, indent: Option<String>) -> Self {
        if indent.is_some() && self.item_sep == ", " {
            self.item_sep = ",".into();
        }
        self.indent = indent;
        self
    }
}

pub fn dumps(v: &Value, opt: &DumpOptions) -> String {
    let mut out = String::new();
    write_value(&mut out, v, opt, 0);
    out
}

fn newline(out: &mut String, opt: &DumpOptions, depth: usize) {
    if let Some(ind) = &opt.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(ind);
        }
    }
}

fn write_value(out: &mut String, v: &Value, opt: &DumpOptions, depth: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else {
                out.push_str(&py_float(n.as_f64().unwrap_or(f64::NAN)));
            }
        }
        Value::String(s) => write_str(out, s, opt.ensure_ascii),
        Value::Array(a) => {
            if a.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opt.item_sep);
                }
                newline(out, opt, depth + 1);
                write_value(out, x, opt, depth + 1);
            }
            newline(out, opt, depth);
            out.push(']');
        }
        Value::Object(m) => {
            if m.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut items: Vec<(&String, &Value)> = m.iter().collect();
            if opt.sort_keys {
                items.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, x)) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(&opt.item_sep);
                }
                newline(out, opt, depth + 1);
                write_str(out, k, opt.ensure_ascii);
                out.push_str(&opt.key_sep);
                write_value(out, x, opt, depth + 1);
            }
            newline(out, opt, depth);
            out.push('}');
        }
    }
}

fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7f => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, positional for exponents -4..16,
/// otherwise `d.ddde+XX`.
pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{f:e}"); // shortest digits, e.g. "1.5e-5", "1e16"
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_dumps() {
        let v = json!({"b": 1, "a": [1.5, "x\u{e9}\u{1F600}<>&'", null, true], "c": {}});
        // json.dumps(v, ensure_ascii=False)
        assert_eq!(
            dumps(&v, &DumpOptions::default()),
            "{\"b\": 1, \"a\": [1.5, \"x\u{e9}\u{1F600}<>&'\", null, true], \"c\": {}}"
        );
        // json.dumps(v)  (ensure_ascii=True)
        let opt = DumpOptions {
            ensure_ascii: true,
            ..Default::default()
        };
        assert_eq!(
            dumps(&v, &opt),
            "{\"b\": 1, \"a\": [1.5, \"x\\u00e9\\ud83d\\ude00<>&'\", null, true], \"c\": {}}"
        );
        // json.dumps(v, indent=2, sort_keys=True)
        let opt = DumpOptions {
            sort_keys: true,
            ..Default::default()
        }
        .with_indent(Some("  ".into()));
        assert_eq!(
            dumps(&json!({"b": [1, 2], "a": "\n"}), &opt),
            "{\n  \"a\": \"\\n\",\n  \"b\": [\n    1,\n    2\n  ]\n}"
        );
    }

    #[test]
    fn floats_as_python_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789.25, "123456789.25"),
            (-2.5e300, "-2.5e+300"),
        ] {
            assert_eq!(py_float(f), s, "{f}");
        }
    }
}
