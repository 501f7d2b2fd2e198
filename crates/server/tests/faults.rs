//! The server when its engine fails: the request in flight gets a 500 in the API's JSON shape,
//! `/health` says so, and `serve_on` ends with an error instead of keeping a dead port open.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{http, limits};
use glm5_engine::batch::BatchModel;
use glm5_engine::scheduler::{self, EngineConfig};
use glm5_engine::ModelDir;
use glm5_server::AppState;
use serde_json::Value;

/// A model that panics on a batch holding token 7 (a bug in model code, simulated), and
/// otherwise answers token 100 forever.
struct Faulty;

impl BatchModel for Faulty {
    type Cache = usize;
    fn vocab_size(&self) -> usize {
        4096
    }
    fn max_context(&self) -> usize {
        1024
    }
    fn new_cache(&self, _draft: bool) -> usize {
        0
    }
    fn cache_len(c: &usize) -> usize {
        *c
    }
    fn truncate(c: &mut usize, len: usize) {
        *c = len.min(*c);
    }
    fn fork(c: &usize) -> usize {
        *c
    }
    fn cache_bytes_per_token(&self) -> usize {
        4
    }
    fn forward(
        &self,
        batch: &mut [(&[u32], &mut usize)],
        rows: &[usize],
    ) -> glm5_engine::Result<Vec<Vec<f32>>> {
        std::thread::sleep(Duration::from_millis(5));
        let mut out = Vec::new();
        for ((t, c), &r) in batch.iter_mut().zip(rows) {
            assert!(!t.contains(&7), "simulated fault");
            **c += t.len();
            let mut l = vec![0f32; r * 4096];
            for row in l.chunks_mut(4096) {
                row[100] = 10.0;
            }
            out.push(l);
        }
        Ok(out)
    }
}

#[test]
fn a_failed_engine_is_a_500_then_the_server_stops() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/glm5-tiny");
    let md = ModelDir::load_as(
        &dir,
        glm5_model::Quant::Uniform(glm5_kernels::WFormat::BF16),
    )
    .unwrap();
    let template = md.template().unwrap();
    let tokenizer = Arc::new(md.tokenizer);
    let engine = scheduler::start(
        Arc::new(Faulty),
        tokenizer.clone(),
        EngineConfig {
            max_seqs: 4,
            max_queue: 16,
            ctx: 1024,
            kv_budget_tokens: 4096,
            prefill_chunk: 64,
            prefix_cache_tokens: 0,
            draft: 0,
            prefix_disk: None,
        },
    );
    let state = Arc::new(AppState {
        engine,
        tokenizer,
        template,
        model_name: "faulty".into(),
        api_key: None,
        stop_token_ids: vec![],
        defaults: Default::default(),
        default_max_tokens: 16,
        max_body: 1 << 20,
        responses: Default::default(),
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                glm5_server::serve_on(l, state, limits(), std::future::pending()).await
            })
    });
    let (st, _, body) = http(addr, "GET", "/health", &[], "");
    assert_eq!((st, body.as_str()), (200, "ok"));
    let (st, _, body) = http(
        addr,
        "POST",
        "/v1/completions",
        &[],
        r#"{"prompt": [5, 6, 7, 8], "max_tokens": 4}"#,
    );
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(st, 500, "{body}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("engine failed"),
        "{body}"
    );
    // /health turns 503 (or the port is already closed), and serve_on ends with an error.
    if let Ok(mut s) = std::net::TcpStream::connect(addr) {
        use std::io::{Read, Write};
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 503"), "{out}");
    }
    let ended = server.join().unwrap();
    assert!(
        ended.is_err(),
        "serve_on ends with an error once the engine failed"
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the port is closed"
    );
}
