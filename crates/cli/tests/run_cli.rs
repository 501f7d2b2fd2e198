//! `glm5 run` on the bundled model, and its bad-input behaviour: one line naming the file or
//! parameter, exit status 2, never a panic.

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn bundled() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/glm5-tiny")
}

/// Run `glm5 args...` with `stdin`; returns (exit code, stdout, stderr).
fn glm5(args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_glm5"))
        .args(args)
        .env_remove("GLM5_MODEL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let (code, _, err) = glm5(args, "");
    assert_eq!(code, 2, "stderr: {err}");
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(last.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(last.contains(n), "'{n}' not in: {err}");
    }
}

#[test]
fn default_model_writes_only_the_continuation_on_stdout() {
    let (code, out, err) = glm5(
        &["run", "--max-tokens", "12", "--seed", "3", "And God said"],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.trim().is_empty(), "no text; stderr: {err}");
    assert!(!out.contains("tok/s"), "stats leaked to stdout: {out}");
    assert!(err.contains("decode: ") && err.contains("tok/s"), "{err}");
    // Same seed, same text; the prompt can come from stdin.
    let (_, again, _) = glm5(
        &["run", "--max-tokens", "12", "--seed", "3"],
        "And God said",
    );
    assert_eq!(out, again);
}

#[test]
fn chat_flag_and_stop_string() {
    let (code, out, err) = glm5(
        &[
            "run",
            "--chat",
            "--no-think",
            "--temperature",
            "0",
            "--max-tokens",
            "40",
            "--stop",
            ",",
        ],
        "And God said, Let there be light: and there was light.",
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(','), "stop string printed: {out:?}");
}

#[test]
fn not_a_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    fails_with(&["run", "--model", d, "hi"], &["tokenizer.json"]);
    fails_with(&["run", "--model", "/no/such/dir", "hi"], &["/no/such/dir"]);
}

/// A copy of the bundled model whose `file` is replaced by `contents` (or removed).
fn broken_copy(file: &str, contents: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(bundled()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    match contents {
        Some(c) => std::fs::write(dir.path().join(file), c).unwrap(),
        None => std::fs::remove_file(dir.path().join(file)).unwrap(),
    }
    dir
}

#[test]
fn broken_tokenizer_and_template_files_are_named() {
    let d = broken_copy("tokenizer.json", Some("{\"model\": 3"));
    fails_with(
        &["run", "--model", d.path().to_str().unwrap(), "hi"],
        &["tokenizer.json"],
    );
    let d = broken_copy("chat_template.jinja", Some("{% if %}"));
    fails_with(
        &["run", "--chat", "--model", d.path().to_str().unwrap(), "hi"],
        &["chat_template.jinja"],
    );
    let d = broken_copy("chat_template.jinja", None);
    fails_with(
        &["run", "--chat", "--model", d.path().to_str().unwrap(), "hi"],
        &["chat template"],
    );
    let d = broken_copy("generation_config.json", Some("{\"temperature\": \"hot\"}"));
    fails_with(
        &["run", "--model", d.path().to_str().unwrap(), "hi"],
        &["generation_config.json", "temperature"],
    );
}

#[test]
fn prompt_longer_than_the_context() {
    let long = "And God said, Let there be light. ".repeat(400);
    fails_with(&["run", "--max-tokens", "4"], &[]);
    let (code, _, err) = glm5(&["run", "--max-tokens", "4"], &long);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("context") && err.contains("--truncate"),
        "{err}"
    );
    let (code, _, err) = glm5(&["run", "--max-tokens", "4", "--truncate"], &long);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn bad_sampling_parameters_are_named() {
    fails_with(&["run", "--top-p", "0", "hi"], &["top_p"]);
    fails_with(&["run", "--temperature=-1", "hi"], &["temperature"]);
}

/// `bench --ctx` with an 8-bit indexer cache on the bundled model (past its index_topk of 128):
/// the formats, bytes per token and a `contexts` entry with the cache it filled.
#[test]
fn bench_reports_cache_formats_and_context_depths() {
    let m = bundled();
    let (code, out, err) = glm5(
        &[
            "bench",
            "--model",
            m.to_str().unwrap(),
            "--prompt-tokens",
            "8",
            "--gen-tokens",
            "4",
            "--reps",
            "1",
            "--ctx",
            "300",
            "--index-cache",
            "q8",
            "--json",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["kv_cache_format"], "bf16");
    assert_eq!(v["index_cache_format"], "q8");
    // 4 layers of 80 bf16 values (latent 64 + rope 16); 3 layers with their own indexer keep
    // a key of 32 bytes + a scale (the 4th shares the selection).
    assert_eq!(v["kv_bytes_per_token"], 4 * 80 * 2 + 3 * (32 + 4));
    let c = &v["contexts"][0];
    assert_eq!(c["ctx"], 300);
    assert!(c["decode_tokens_per_s"].as_f64().unwrap() > 0.0, "{c}");
    let kv = c["kv_cache_bytes"].as_u64().unwrap();
    assert!((304 * 748..=320 * 748).contains(&kv), "{kv}");
    // The memory budget counts the caches the run held at once (this depth's).
    let weights = v["weight_bytes"].as_u64().unwrap();
    let budget = v["rss_budget_bytes"].as_u64().unwrap();
    assert_eq!(budget, ((weights + kv) as f64 * 1.1) as u64, "{v}");
}
