//! The real router over the bundled model on a loopback port, and raw HTTP/1.1 helpers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use glm5_engine::batch::BatchModel;
use glm5_engine::scheduler::{self, EngineConfig};
use glm5_engine::ModelDir;
use glm5_server::AppState;
use serde_json::{json, Value};

/// Tests use a short header-read timeout so that the stall test is quick.
pub fn limits() -> glm5_server::Limits {
    glm5_server::Limits {
        header_read_timeout: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(5),
        max_connections: 8,
    }
}

/// `eos`: stop at the model's stop tokens (off: every request runs to max_tokens).
pub fn start(api_key: Option<&str>, max_seqs: usize, max_queue: usize, eos: bool) -> SocketAddr {
    start_with(api_key, max_seqs, max_queue, eos, 0)
}

/// `draft`: speculative decoding with the MTP layer (0: off).
pub fn start_with(
    api_key: Option<&str>,
    max_seqs: usize,
    max_queue: usize,
    eos: bool,
    draft: usize,
) -> SocketAddr {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/glm5-tiny");
    let md = ModelDir::load_as(&dir, glm5_model::Quant::Uniform(glm5_kernels_f32())).unwrap();
    let template = md.template().unwrap();
    let ModelDir {
        model,
        tokenizer,
        generation,
        stop_token_ids,
        ..
    } = md;
    let tokenizer = Arc::new(tokenizer);
    let engine = scheduler::start(
        Arc::new(model),
        tokenizer.clone(),
        EngineConfig {
            max_seqs,
            max_queue,
            ctx: 1024,
            kv_budget_tokens: 8192,
            prefill_chunk: 256,
            prefix_cache_tokens: 4096,
            draft,
            prefix_disk: None,
        },
    );
    let state = Arc::new(AppState {
        engine,
        tokenizer,
        template,
        model_name: "glm5-tiny".into(),
        model_aliases: vec!["claude-haiku-4-5".into()],
        api_key: api_key.map(str::to_string),
        stop_token_ids: if eos { stop_token_ids } else { vec![] },
        defaults: generation.params,
        default_max_tokens: 64,
        max_body: 1 << 20,
        responses: Default::default(),
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            glm5_server::serve_on(l, state, limits(), std::future::pending())
                .await
                .unwrap();
        });
    });
    addr
}

pub fn glm5_kernels_f32() -> glm5_kernels::WFormat {
    glm5_kernels::WFormat::BF16
}

/// Status, headers (lowercase names) and de-chunked body of one request.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let head = head.to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, head, body)
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, b) = http(addr, "POST", path, &[], &body.to_string());
    (
        status,
        serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}")),
    )
}

/// `data:` payloads of an SSE body (with their `event:` names, if any).
pub fn sse(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .filter_map(|e| {
            let mut name = None;
            let mut data = None;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                }
                if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(d.to_string());
                }
            }
            data.map(|d| (name, d))
        })
        .collect()
}

pub fn get_verse() -> Value {
    json!({"type": "function", "function": {
        "name": "get_verse", "description": "Look up one verse of the King James Bible.",
        "parameters": {"type": "object", "properties": {
            "book": {"type": "string", "description": "Book name, e.g. Genesis"},
            "chapter": {"type": "integer"}, "verse": {"type": "integer"}},
            "required": ["book", "chapter", "verse"]}}})
}

/// A model with the bundled model's vocabulary that answers token 100 forever, at once; it
/// panics on a batch holding `panic_on` (a bug in model code, simulated).
pub struct Fast {
    pub panic_on: Option<u32>,
}

impl BatchModel for Fast {
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
        let mut out = Vec::new();
        for ((t, c), &r) in batch.iter_mut().zip(rows) {
            if let Some(p) = self.panic_on {
                assert!(!t.contains(&p), "simulated fault");
            }
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

/// A server state over `Fast` with the bundled tokenizer and template.
pub fn fake_state(panic_on: Option<u32>) -> Arc<AppState> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/glm5-tiny");
    let md = ModelDir::load_as(
        &dir,
        glm5_model::Quant::Uniform(glm5_kernels::WFormat::BF16),
    )
    .unwrap();
    let template = md.template().unwrap();
    let tokenizer = Arc::new(md.tokenizer);
    let engine = scheduler::start(
        Arc::new(Fast { panic_on }),
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
    Arc::new(AppState {
        engine,
        tokenizer,
        template,
        model_name: "fast".into(),
        model_aliases: vec![],
        api_key: None,
        stop_token_ids: vec![],
        defaults: Default::default(),
        default_max_tokens: 16,
        max_body: 1 << 20,
        responses: Default::default(),
    })
}
