//! Bad input gives one line naming the file/tensor and exit status 2 - never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use glm5_format::{SafetensorsWriter, Shard, TensorSpec};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/golden")
        .join(name)
}

/// Copy a golden fixture into a temp dir.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(golden(name).join(f), dir.path().join(f)).unwrap();
    }
    dir
}

/// Run `glm5 args...`; returns (exit code, stderr).
fn glm5(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_glm5"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn inspect_fails(dir: &Path, needles: &[&str]) {
    let (code, err) = glm5(&["inspect", "--model", dir.to_str().unwrap()]);
    assert_eq!(code, 2, "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "'{n}' not in: {err}");
    }
}

/// Rewrite `model.safetensors` keeping only the tensors `keep` accepts.
fn rewrite_shard(dir: &Path, keep: impl Fn(&str) -> bool) {
    let path = dir.join("model.safetensors");
    let shard = Shard::open(&path).unwrap();
    let views: Vec<_> = shard
        .names()
        .filter(|n| keep(n))
        .map(|n| shard.get(n).unwrap())
        .collect();
    let specs = views
        .iter()
        .map(|v| TensorSpec {
            name: v.name.to_string(),
            dtype: v.dtype,
            shape: v.shape.to_vec(),
        })
        .collect();
    let tmp = dir.join("new.safetensors");
    let mut w = SafetensorsWriter::create(&tmp, specs, &BTreeMap::new()).unwrap();
    for v in &views {
        w.write_tensor(v.name, v.bytes).unwrap();
    }
    w.finish().unwrap();
    drop(views);
    drop(shard);
    std::fs::rename(tmp, path).unwrap();
}

#[test]
fn hf_checkpoint_inspects_cleanly() {
    let (code, err) = glm5(&[
        "inspect",
        "--model",
        golden("dsa_f32").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn missing_model_folder_and_config() {
    inspect_fails(
        Path::new("/nonexistent/model"),
        &["/nonexistent/model", "no such path"],
    );
    let dir = copy_fixture("dsa_f32");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    inspect_fails(dir.path(), &["config.json", "not found"]);
}

#[test]
fn not_a_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"glm_moe_dsa\"}",
    )
    .unwrap();
    inspect_fails(dir.path(), &["no model.safetensors"]);
}

#[test]
fn unknown_model_type_lists_supported() {
    let dir = copy_fixture("dsa_f32");
    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"llama\"}",
    )
    .unwrap();
    inspect_fails(
        dir.path(),
        &["llama", "glm_moe_dsa", "glm4_moe_lite", "deepseek_v32"],
    );
}

#[test]
fn malformed_config_names_the_field() {
    let dir = copy_fixture("dsa_f32");
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        text.replace("\"hidden_size\": 32", "\"hidden_size\": \"big\""),
    )
    .unwrap();
    inspect_fails(dir.path(), &["config.json", "hidden_size"]);
    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    inspect_fails(dir.path(), &["config.json", "invalid JSON"]);
}

#[test]
fn shard_listed_in_index_but_absent() {
    let dir = copy_fixture("dsa_f32");
    let idx = r#"{"metadata": {}, "weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), idx).unwrap();
    inspect_fails(
        dir.path(),
        &["model-00002-of-00002.safetensors", "model.norm.weight"],
    );
}

#[test]
fn truncated_shard() {
    let dir = copy_fixture("dsa_f32");
    let p = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&p).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len - 1000).unwrap();
    inspect_fails(dir.path(), &["model.safetensors", "truncated"]);
    f.set_len(4).unwrap();
    inspect_fails(dir.path(), &["model.safetensors", "truncated"]);
}

#[test]
fn garbage_and_oversized_headers() {
    let dir = copy_fixture("dsa_f32");
    let p = dir.path().join("model.safetensors");
    let mut bytes = 12u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"not json!!!!");
    std::fs::write(&p, &bytes).unwrap();
    inspect_fails(dir.path(), &["model.safetensors", "header"]);
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&p, &bytes).unwrap();
    inspect_fails(dir.path(), &["model.safetensors"]);
}

#[test]
fn unsupported_dtype_names_the_tensor() {
    let dir = copy_fixture("dsa_f32");
    let header = r#"{"weird":{"dtype":"F8_E5M2","shape":[2],"data_offsets":[0,2]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0, 0]);
    std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
    inspect_fails(dir.path(), &["model.safetensors", "weird", "F8_E5M2"]);
}

#[test]
fn wrong_shape_for_config() {
    let dir = copy_fixture("dsa_f32");
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        text.replace("\"intermediate_size\": 48", "\"intermediate_size\": 50"),
    )
    .unwrap();
    inspect_fails(
        dir.path(),
        &["model.safetensors", "model.layers.0.mlp", "[50, 32]"],
    );
}

#[test]
fn fp8_weight_without_scale() {
    let dir = copy_fixture("dsa_fp8");
    rewrite_shard(dir.path(), |n| {
        n != "model.layers.0.self_attn.o_proj.weight_scale_inv"
    });
    inspect_fails(
        dir.path(),
        &[
            "model.safetensors",
            "model.layers.0.self_attn.o_proj.weight",
            "scale",
        ],
    );
}

#[test]
fn missing_tensor_is_reported_by_inspect_and_fatal_for_logits() {
    let dir = copy_fixture("dsa_f32");
    rewrite_shard(dir.path(), |n| n != "model.layers.1.mlp.up_proj.weight");
    let (code, _) = glm5(&["inspect", "--model", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0);
    let out = dir.path().join("l.npy");
    let (code, err) = glm5(&[
        "logits",
        "--model",
        dir.path().to_str().unwrap(),
        "--tokens",
        "1,2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");
}

#[test]
fn logits_cli_matches_between_prefill_and_step() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
    let m = golden("dsa_share_groups");
    let toks = "5,9,1,33,2,70,8,8,8,12";
    assert_eq!(
        glm5(&[
            "logits",
            "--model",
            m.to_str().unwrap(),
            "--tokens",
            toks,
            "--out",
            a.to_str().unwrap()
        ])
        .0,
        0
    );
    assert_eq!(
        glm5(&[
            "logits",
            "--model",
            m.to_str().unwrap(),
            "--tokens",
            toks,
            "--out",
            b.to_str().unwrap(),
            "--step"
        ])
        .0,
        0
    );
    let (sa, va) = glm5_format::read_npy_f32(&a).unwrap();
    let (sb, vb) = glm5_format::read_npy_f32(&b).unwrap();
    assert_eq!(sa, vec![10, 96]);
    assert_eq!(sa, sb);
    let scale = va.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = va
        .iter()
        .zip(&vb)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff <= 1e-5 * scale, "{diff}");
    let (code, err) = glm5(&[
        "logits",
        "--model",
        m.to_str().unwrap(),
        "--tokens",
        "1,500",
        "--out",
        a.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("500"), "{err}");
}

/// This session's new flags: a context depth past the model's context, and a bad listen
/// address, fail with one line naming the flag, exit 2.
#[test]
fn bench_ctx_and_serve_address_are_checked() {
    let (code, err) = glm5(&[
        "bench",
        "--prompt-tokens",
        "4",
        "--gen-tokens",
        "2",
        "--reps",
        "1",
        "--ctx",
        "999999",
    ]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains("--ctx 999999"), "{err}");
    let (code, err) = glm5(&["serve", "--host", "not an address", "--port", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--host not an address"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // A context above the model's window is refused, not silently capped.
    let (code, err) = glm5(&["serve", "--port", "0", "--ctx", "999999"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--ctx 999999 is larger than the model's context window"),
        "{err}"
    );
}

#[test]
fn mtp_on_a_model_without_an_mtp_layer_and_a_bad_draft_length() {
    let dir = golden("dsa_f32");
    let base = [
        "bench",
        "--prompt-tokens",
        "4",
        "--gen-tokens",
        "2",
        "--reps",
        "1",
        "--mtp",
    ];
    let mut args = base.to_vec();
    args.extend(["--model", dir.to_str().unwrap()]);
    let (code, err) = glm5(&args);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(
        err.contains("--mtp") && err.contains("no MTP layer"),
        "{err}"
    );
    let mut args = base.to_vec();
    args.extend(["--draft", "0"]);
    let (code, err) = glm5(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--draft 0"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_cache_formats_name_their_flag() {
    let base = [
        "bench",
        "--prompt-tokens",
        "4",
        "--gen-tokens",
        "2",
        "--reps",
        "1",
    ];
    for (extra, want) in [
        (vec!["--kv-cache", "q8"], "--kv-cache"),
        (vec!["--index-cache", "fp4"], "--index-cache fp4"),
        (
            vec!["--quant", "reference", "--kv-cache", "bf16"],
            "--kv-cache",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend(extra);
        let (code, err) = glm5(&args);
        assert_eq!(code, 2, "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        assert!(err.contains(want), "{want}: {err}");
    }
    let (code, err) = glm5(&["inspect", "--model", "models/glm5-tiny", "--kv-cache", "q8"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--kv-cache q8"), "{err}");
}

/// `inspect --check-tensors` decodes every weight: a NaN in a safetensors shard or in a GGUF
/// block is named with its file and tensor (exit 2); a clean file passes.
#[test]
fn check_tensors_names_a_nan_weight() {
    let dir = copy_fixture("dsa_f32");
    let model = dir.path().to_str().unwrap();
    let (code, err) = glm5(&["inspect", "--model", model, "--check-tensors", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("every value is finite"), "{err}");

    // Poison one f32 of a known tensor in place (its byte range from the header).
    let path = dir.path().join("model.safetensors");
    let (start, name) = {
        let shard = Shard::open(&path).unwrap();
        let name = shard
            .names()
            .find(|n| n.ends_with("mlp.gate.weight"))
            .unwrap()
            .to_string();
        let v = shard.get(&name).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(v.bytes.len())
            .position(|w| w == v.bytes)
            .unwrap();
        (at + 4 * 3, name)
    };
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let (code, err) = glm5(&["inspect", "--model", model, "--check-tensors"]);
    assert_eq!(code, 2, "{err}");
    let last = err.trim_end().lines().last().unwrap();
    assert!(
        last.contains(&format!("tensor '{name}' holds NaN at element 3")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A GGUF: a Q8_0 block whose scale is NaN.
    let gguf = dir.path().join("m.gguf");
    let clean = copy_fixture("dsa_f32");
    let (code, err) = glm5(&[
        "quantize",
        "--model",
        clean.path().to_str().unwrap(),
        "--out",
        gguf.to_str().unwrap(),
        "--type",
        "q8_0",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = glm5(&[
        "inspect",
        "--model",
        gguf.to_str().unwrap(),
        "--check-tensors",
    ]);
    assert_eq!(code, 0, "{err}");
    let file = glm5_format::GgufFile::open(&gguf).unwrap();
    let t = file
        .tensors
        .values()
        .find(|t| t.ggml_type == glm5_format::GgmlType::Q8_0)
        .unwrap();
    let (tname, at) = (t.name.clone(), t.start + 34); // the second block's f16 scale
    drop(file);
    let mut bytes = std::fs::read(&gguf).unwrap();
    bytes[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
    std::fs::write(&gguf, bytes).unwrap();
    let (code, err) = glm5(&[
        "inspect",
        "--model",
        gguf.to_str().unwrap(),
        "--check-tensors",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("tensor '{tname}' holds NaN at element 32")),
        "{err}"
    );
}
