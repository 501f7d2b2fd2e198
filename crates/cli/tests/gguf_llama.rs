//! GGUFs as llama.cpp's tools write them: the converter's metadata alone (tokenizer from
//! `tokenizer.ggml.*`, sampling defaults from `general.sampling.*`), and split sets
//! (`gguf-split`'s naming and keys) opened from any part.

use std::path::{Path, PathBuf};
use std::process::Command;

use glm5_format::{GgufFile, GgufWriter};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn glm5(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_glm5"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `glm5 quantize` of the bundled model to `out` with `extra` arguments: (exit code, stderr).
fn try_quantize(out: &Path, extra: &[&str]) -> (i32, String) {
    let bundled = root().join("models/glm5-tiny");
    let mut args = vec![
        "quantize",
        "--model",
        bundled.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = glm5(&args);
    (code, err)
}

/// `try_quantize` at Q8_0 unless `extra` names a type; it must succeed.
fn quantize(out: &Path, extra: &[&str]) {
    let (code, err) = try_quantize(out, extra);
    assert_eq!(code, 0, "{err}");
}

fn greedy(model: &Path) -> String {
    let (code, out, err) = glm5(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--quant",
        "q8_0",
        "--temperature",
        "0",
        "--max-tokens",
        "32",
        "--ignore-eos",
        "And God said, Let there be light",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());
    out
}

/// `meta`'s metadata with `tensors`' tensors, written to `out`.
fn relabel(meta: &Path, tensors: &Path, out: &Path) {
    let (m, t) = (
        GgufFile::open(meta).unwrap(),
        GgufFile::open(tensors).unwrap(),
    );
    let metadata: Vec<_> = m.metadata.into_iter().collect();
    let plan = t
        .order
        .iter()
        .map(|n| (n.clone(), t.tensors[n].shape(), t.tensors[n].ggml_type))
        .collect();
    let mut w = GgufWriter::create(out, &metadata, plan).unwrap();
    for n in &t.order {
        w.write_tensor(n, t.bytes(&t.tensors[n])).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn llama_cpp_converter_metadata_runs_like_the_hf_folder() {
    // The converter's own file for the bundled model holds the same tensor bytes as
    // `glm5 quantize` writes at one type (checked when the fixture was made); its metadata is
    // committed (testdata/gguf, scripts/make_gguf_fixtures.py).
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours.gguf");
    quantize(&ours, &[]);
    let theirs = tmp.path().join("converter.gguf");
    let vocab = root().join("testdata/gguf/glm5-tiny-vocab.gguf");
    relabel(&vocab, &ours, &theirs);
    let file = GgufFile::open(&theirs).unwrap();
    assert!(file.get("tokenizer.huggingface.json").is_none());
    assert_eq!(greedy(&theirs), greedy(&root().join("models/glm5-tiny")));
    // Its sampling defaults are the converter's general.sampling.* (temperature 0.7 here):
    // the same seed twice gives the same text, and it is not the greedy text.
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--model", theirs.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--max-tokens", "24", "--ignore-eos", "And God said"]);
        let (code, out, err) = glm5(&args);
        assert_eq!(code, 0, "{err}");
        out
    };
    let sampled = run(&["--seed", "7"]);
    assert_eq!(sampled, run(&["--seed", "7"]));
    assert_ne!(sampled, run(&["--temperature", "0"]));
}

#[test]
fn split_sets_open_from_any_part() {
    let tmp = tempfile::tempdir().unwrap();
    let single = tmp.path().join("one.gguf");
    quantize(&single, &[]);
    let set = tmp.path().join("tiny.gguf");
    quantize(&set, &["--split-max-size", "3M"]);
    let part = |i: usize| tmp.path().join(format!("tiny-{i:05}-of-00004.gguf"));
    assert!(!set.exists());
    for i in 1..=4 {
        assert!(part(i).is_file(), "part {i}");
    }
    let want = greedy(&single);
    assert_eq!(greedy(&part(1)), want);
    assert_eq!(greedy(&part(3)), want);

    // A part of another set in place of part 2: one line naming it.
    let other = tmp.path().join("other.gguf");
    quantize(&other, &["--split-max-size", "5M"]);
    std::fs::copy(tmp.path().join("other-00002-of-00002.gguf"), part(2)).unwrap();
    let (code, _, err) = glm5(&["run", "--model", part(1).to_str().unwrap(), "x"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("tiny-00002-of-00004.gguf") && err.contains("does not belong"),
        "{err}"
    );

    // A missing part: one line naming it.
    std::fs::remove_file(part(2)).unwrap();
    let (code, _, err) = glm5(&["run", "--model", part(4).to_str().unwrap(), "x"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("tiny-00002-of-00004.gguf") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn bad_split_sizes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.gguf");
    for bad in ["0", "12Q", "G", "5.5G"] {
        let (code, err) = try_quantize(&out, &["--split-max-size", bad]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("--split-max-size"), "{bad}: {err}");
    }
}

#[test]
fn weights_without_a_tokenizer_borrow_one_when_quantized() {
    // `glm5 synth` output has no tokenizer; llama.cpp refuses a GGUF without tokenizer.ggml.*.
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("synth");
    let config = root().join("models/glm5-tiny/config.json");
    let (code, _, err) = glm5(&[
        "synth",
        "--config",
        config.to_str().unwrap(),
        "--out",
        weights.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let out = tmp.path().join("synth.gguf");
    let bundled = root().join("models/glm5-tiny");
    let (code, _, err) = glm5(&[
        "quantize",
        "--model",
        weights.to_str().unwrap(),
        "--tokenizer",
        bundled.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let file = GgufFile::open(&out).unwrap();
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .unwrap()
        .as_array()
        .unwrap();
    assert_eq!(tokens.len(), 4096);
    assert!(file.get("tokenizer.chat_template").is_some());
    let (code, text, err) = glm5(&[
        "run",
        "--model",
        out.to_str().unwrap(),
        "--max-tokens",
        "4",
        "Hi",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!text.is_empty());
}

#[test]
fn weights_read_in_place_decode_like_regrouped_ones() {
    // GLM5_GGUF_IN_PLACE=1 is what a file larger than half the available memory gets: no
    // regrouped copy, every weight read from the mapping by the plain-row kernels.
    let tmp = tempfile::tempdir().unwrap();
    for ty in ["q8_0", "q4_k_m"] {
        let file = tmp.path().join(format!("{ty}.gguf"));
        quantize(&file, &["--type", ty]);
        let run = |in_place: &str| {
            let out = Command::new(env!("CARGO_BIN_EXE_glm5"))
                .env("GLM5_GGUF_IN_PLACE", in_place)
                .args([
                    "run",
                    "--model",
                    file.to_str().unwrap(),
                    "--temperature",
                    "0",
                ])
                .args(["--max-tokens", "32", "--ignore-eos", "And God said"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(run("1"), run("0"), "{ty}");
    }
}
