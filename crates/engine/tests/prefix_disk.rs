//! The prefix cache on disk: a long prompt's cache written by one engine is read back by the
//! next (a restart), the output is the same as without it, and a damaged or foreign file is
//! ignored rather than trusted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use glm5_engine::prefix_disk::DiskConfig;
use glm5_engine::scheduler::{self, EngineConfig, EngineHandle, Event, Request};
use glm5_engine::{ModelDir, SamplingParams};

fn engine(dir: Option<&Path>, model_id: &str) -> (EngineHandle, Arc<glm5_engine::Tokenizer>) {
    let md = ModelDir::load_as(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/glm5-tiny"),
        glm5_model::Quant::Uniform(glm5_kernels::WFormat::BF16),
    )
    .unwrap();
    let tok = Arc::new(md.tokenizer);
    let h = scheduler::start(
        Arc::new(md.model),
        tok.clone(),
        EngineConfig {
            max_seqs: 2,
            max_queue: 8,
            ctx: 2048,
            kv_budget_tokens: 8192,
            prefill_chunk: 256,
            prefix_cache_tokens: 0,
            draft: 0,
            prefix_disk: dir.map(|d| DiskConfig {
                dir: d.to_path_buf(),
                model_id: model_id.into(),
                budget_bytes: 1 << 30,
                min_tokens: 64,
            }),
        },
    );
    (h, tok)
}

/// Greedy text of `prompt`, and the prompt tokens that came from the cache.
fn run(h: &EngineHandle, prompt: Vec<u32>) -> (Vec<u32>, usize) {
    let mut rx = h
        .submit(Request {
            prompt,
            params: SamplingParams::greedy(),
            max_tokens: 12,
            stop: vec![],
            stop_token_ids: vec![],
            logprobs: None,
            skip_special_tokens: false,
            ..Default::default()
        })
        .unwrap();
    let mut ids = Vec::new();
    loop {
        match rx.blocking_recv().unwrap() {
            Event::Token { id, .. } => ids.push(id),
            Event::Done(u, _) => return (ids, u.cached_tokens),
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
}

fn kv_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kv"))
        .collect()
}

fn wait_for_file(dir: &Path) -> PathBuf {
    for _ in 0..200 {
        if let Some(f) = kv_files(dir).pop() {
            return f;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("no cache file was written in {}", dir.display());
}

#[test]
fn a_long_prompt_survives_a_restart_and_gives_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, tok) = engine(None, "m");
    let system = "You are a helpful assistant who knows the King James Bible. ".repeat(20);
    let ask = |q: &str| tok.encode(&format!("{system}{q}")).unwrap();
    let (want, cached) = run(&plain, ask("In the beginning"));
    assert_eq!(cached, 0);
    drop(plain);

    let (first, _) = engine(Some(dir.path()), "m");
    let (got, cached) = run(&first, ask("In the beginning"));
    assert_eq!((got.as_slice(), cached), (want.as_slice(), 0));
    let file = wait_for_file(dir.path());
    drop(first);

    // A restart: the shared system prompt comes back from disk; the text is unchanged.
    let (second, _) = engine(Some(dir.path()), "m");
    let (again, cached) = run(&second, ask("In the beginning"));
    assert_eq!(again, want);
    assert_eq!(
        cached,
        ask("In the beginning").len() - 1,
        "all but the last prompt token"
    );
    let (_, cached) = run(&second, ask("And the earth"));
    assert!(cached > 200, "the common prefix is reused: {cached}");
    let hits = second
        .metrics
        .prefix_disk_hit_tokens_total
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(hits > 400, "{hits}");
    drop(second);

    // Another model's identity ignores the entries; a damaged file is dropped, not trusted.
    let (other, _) = engine(Some(dir.path()), "another model");
    assert_eq!(run(&other, ask("In the beginning")), (want.clone(), 0));
    drop(other);
    for f in kv_files(dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    }
    let (damaged, _) = engine(Some(dir.path()), "m");
    assert_eq!(run(&damaged, ask("In the beginning")), (want, 0));
    assert!(!file.exists() || std::fs::metadata(&file).unwrap().len() > 0);
}
