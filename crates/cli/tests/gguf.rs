//! GGUF end to end: `glm5 quantize` writes a file that `glm5 run` loads and decodes exactly as
//! quantize-on-load does; broken GGUFs give one line naming the file and tensor, exit 2.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bundled() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/glm5-tiny")
}

/// Run `glm5 args...` with `stdin`; returns (exit code, stdout, stderr).
fn glm5(args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_glm5"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
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

fn quantize(dir: &Path, ty: &str) -> PathBuf {
    let out = dir.join(format!("tiny-{ty}.gguf"));
    let (code, _, err) = glm5(
        &[
            "quantize",
            "--model",
            bundled().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--type",
            ty,
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    out
}

fn greedy(model: &str, quant: &str) -> String {
    let (code, out, err) = glm5(
        &[
            "run",
            "--model",
            model,
            "--quant",
            quant,
            "--temperature",
            "0",
            "--max-tokens",
            "40",
            "--ignore-eos",
        ],
        "And God said, Let there be light",
    );
    assert_eq!(code, 0, "{err}");
    out
}

#[test]
fn quantized_gguf_decodes_like_quantize_on_load() {
    let tmp = tempfile::tempdir().unwrap();
    for (ty, quant) in [
        ("q8_0", "q8_0"),
        ("q4_k_m", "q4_k"),
        ("bf16", "bf16"),
        ("iq4_xs", "iq4_xs"),
        ("q5_k_m", "q5_k"),
    ] {
        let file = quantize(tmp.path(), ty);
        let from_gguf = greedy(file.to_str().unwrap(), quant);
        let on_load = greedy(bundled().to_str().unwrap(), quant);
        assert!(!from_gguf.is_empty());
        assert_eq!(from_gguf, on_load, "{ty}");
    }
}

/// Overwrite the bytes after the first occurrence of `needle` (+ `skip`) with `with`.
fn patch(bytes: &mut [u8], needle: &[u8], skip: usize, with: &[u8]) {
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in file", String::from_utf8_lossy(needle)))
        + needle.len()
        + skip;
    bytes[at..at + with.len()].copy_from_slice(with);
}

fn run_fails(file: &Path, needles: &[&str]) {
    let (code, _, err) = glm5(&["run", "--model", file.to_str().unwrap()], "hi");
    assert_eq!(code, 2, "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
}

#[test]
fn broken_ggufs_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(quantize(tmp.path(), "q8_0")).unwrap();
    let write = |name: &str, b: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };

    let truncated = write("truncated.gguf", &good[..good.len() / 2]);
    run_fails(&truncated, &["truncated.gguf", "truncated", "tensor '"]);

    let mut b = good.clone();
    // The first occurrence is the architecture value.
    let at = b.windows(7).position(|w| w == b"glm-dsa").unwrap();
    b[at..at + 7].copy_from_slice(b"llamaxx");
    let other = write("other-arch.gguf", &b);
    run_fails(
        &other,
        &["other-arch.gguf", "general.architecture", "llamaxx"],
    );

    // output_norm.weight: name, n_dims u32, one u64 dim, then the type u32 -> 99.
    let mut b = good.clone();
    patch(&mut b, b"output_norm.weight", 4 + 8, &99u32.to_le_bytes());
    let unknown = write("unknown-type.gguf", &b);
    run_fails(
        &unknown,
        &["unknown-type.gguf", "output_norm.weight", "type 99"],
    );

    // Metadata says 16 experts; the merged expert tensors hold 8.
    let mut b = good.clone();
    patch(&mut b, b"glm-dsa.expert_count", 4, &16u32.to_le_bytes());
    let count = write("expert-count.gguf", &b);
    run_fails(
        &count,
        &["expert-count.gguf", "tensor 'blk.1.", "does not match"],
    );

    // output_norm.weight's data offset (after name, n_dims, one dim, type) moved by one byte,
    // then onto the first tensor's bytes.
    let offset_at = |b: &[u8]| {
        b.windows(18)
            .position(|w| w == b"output_norm.weight")
            .unwrap()
            + 18
            + 4
            + 8
            + 4
    };
    let mut b = good.clone();
    let at = offset_at(&b);
    let offset = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    b[at..at + 8].copy_from_slice(&(offset + 1).to_le_bytes());
    let shifted = write("shifted.gguf", &b);
    run_fails(
        &shifted,
        &[
            "shifted.gguf",
            "output_norm.weight",
            "not a multiple of the alignment",
        ],
    );
    let mut b = good.clone();
    let at = offset_at(&b);
    b[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    let overlapping = write("overlapping.gguf", &b);
    run_fails(&overlapping, &["overlapping.gguf", "overlaps tensor '"]);

    let not_gguf = write("not.gguf", b"definitely not a gguf file");
    run_fails(&not_gguf, &["not.gguf", "GGUF"]);
}

#[test]
fn quantize_rejects_bad_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.gguf");
    let (code, _, err) = glm5(
        &[
            "quantize",
            "--model",
            bundled().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--type",
            "q3_k",
        ],
        "",
    );
    assert_eq!(code, 2);
    assert!(err.contains("--type q3_k"), "{err}");
    assert!(!out.exists());
    let (code, _, err) = glm5(&["run", "--quant", "int3"], "hi");
    assert_eq!(code, 2);
    assert!(err.contains("--quant int3"), "{err}");
}

#[test]
fn kld_compares_a_quantized_model_with_its_base() {
    let m = bundled();
    let m = m.to_str().unwrap();
    let kld = |quant: &str| -> serde_json::Value {
        let (code, out, err) = glm5(
            &[
                "kld", "--model", m, "--quant", quant, "--tokens", "64", "--json",
            ],
            "",
        );
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    // The base against itself: no divergence at all.
    let same = kld("bf16");
    assert_eq!(same["kl_max"].as_f64(), Some(0.0), "{same}");
    assert_eq!(same["top1_agreement_pct"].as_f64(), Some(100.0));
    // Q8_0 is close to BF16, Q4_K_M further away; neither is identical.
    let (q8, q4) = (kld("q8_0"), kld("q4_k_m"));
    let mean = |v: &serde_json::Value| v["kl_mean"].as_f64().unwrap();
    assert!(
        0.0 < mean(&q8) && mean(&q8) < mean(&q4) && mean(&q4) < 0.1,
        "{q8} {q4}"
    );
    assert!(q4["top1_agreement_pct"].as_f64().unwrap() > 80.0, "{q4}");
    // Bad arguments: one line naming the flag, exit 2.
    let (code, _, err) = glm5(&["kld", "--model", m, "--base-quant", "int3"], "");
    assert_eq!((code, err.trim().lines().count()), (2, 1), "{err}");
    assert!(err.contains("--base-quant int3"), "{err}");
    let (code, _, err) = glm5(&["kld", "--model", m, "--text", "/nonexistent.txt"], "");
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent.txt"), "{err}");
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-30)).sqrt()
}

/// A GGUF stores `W_UK^T` (`attn_k_b`); a prefill of 32 rows or more attends in the expanded
/// form with `W_UK` rebuilt from it at load (transposed, stored again), and must agree with
/// the same model stepping token by token through the absorbed form (which reads `attn_k_b`).
/// BF16 keeps f32 activations, so the two forms agree to float rounding; at Q8_0 they quantize
/// different activations to 8 bits (the latent rows, the query), which moves the logits
/// ~1e-2 relative, as it does for quantize-on-load. A wrong `W_UK` moves them by ~1.
#[test]
fn gguf_prefill_agrees_with_its_own_step_decode() {
    let tmp = tempfile::tempdir().unwrap();
    for (ty, bound) in [("bf16", 1e-4), ("q8_0", 3e-2)] {
        let file = quantize(tmp.path(), ty);
        let q = glm5_model::Quant::parse(ty).unwrap();
        let m = glm5_model::Model::load_with(&file, q, false).unwrap();
        let tokens: Vec<u32> = (0..48).map(|i| (i * 7919 + 13) % 4000).collect();
        let full = m.forward(&tokens, &mut m.new_cache(), None).unwrap();
        let mut cache = m.new_cache();
        let mut steps = Vec::new();
        for t in &tokens {
            steps.extend(m.forward(&[*t], &mut cache, None).unwrap());
        }
        let e = rel_err(&full, &steps);
        println!("{ty}: prefill vs step decode, relative error {e:.2e}");
        assert!(e < bound, "{ty}: relative error {e}");
    }
}

/// `glm5 inspect` reads a GGUF as it reads the HF folder it came from (same config, parameter
/// and KV counts, nothing missing, bytes per GGML type), and names a tensor the file lacks and
/// one it cannot place.
#[test]
fn inspect_reads_a_gguf_like_its_hf_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let file = quantize(tmp.path(), "q4_k_m");
    let inspect = |model: &Path| {
        let (code, out, err) = glm5(
            &["inspect", "--model", model.to_str().unwrap(), "--json"],
            "",
        );
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let (g, hf) = (inspect(&file), inspect(&bundled()));
    for k in [
        "model_type",
        "num_hidden_layers",
        "moe_layers",
        "params_total",
        "params_active",
        "params_mtp",
        "mtp_layers_present",
        "kv_bytes_per_token",
    ] {
        assert_eq!(g[k], hf[k], "{k}");
    }
    assert_eq!(g["missing_tensors"], serde_json::json!([]), "{g}");
    assert_eq!(g["unexpected_tensors"], serde_json::json!([]), "{g}");
    let types = g["bytes_per_dtype"].as_object().unwrap();
    assert!(
        types.contains_key("Q4_K") && types.contains_key("F32"),
        "{g}"
    );
    let sum: u64 = types.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(g["weight_bytes"].as_u64(), Some(sum));
    assert!(sum < hf["weight_bytes"].as_u64().unwrap());

    // One tensor renamed in place (same length): missing under its name, unexpected under
    // the new one.
    let mut bytes = std::fs::read(&file).unwrap();
    let name = b"blk.0.attn_q_a.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap();
    bytes[at + 13] = b'x';
    let renamed = tmp.path().join("renamed.gguf");
    std::fs::write(&renamed, &bytes).unwrap();
    let r = inspect(&renamed);
    assert_eq!(
        (
            r["missing_tensors"].clone(),
            r["unexpected_tensors"].clone()
        ),
        (
            serde_json::json!(["blk.0.attn_q_a.weight"]),
            serde_json::json!(["blk.0.attn_q_x.weight"])
        ),
        "{r}"
    );
}
