//! glm5-server: `glm5 serve`'s HTTP side. OpenAI Chat Completions, Completions and Responses,
//! Anthropic Messages, `/v1/models`, `/health` and Prometheus `/metrics`, over an `EngineHandle` (the
//! continuous-batching engine runs on its own thread; tokio only moves bytes), and a chat page at
//! `/`. GLM output is
//! parsed into reasoning, text and tool calls while it streams. Knows nothing of tensors.

mod anthropic;
pub mod common;
mod completions;
pub mod error;
mod listen;
mod openai;
mod prompt;
mod responses;
mod responses_stream;

pub use responses::ResponseStore;

pub use listen::{serve, serve_blocking, serve_on, Limits};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use glm5_engine::metrics::{Histogram, LATENCY_BUCKETS};
use glm5_engine::scheduler::EngineHandle;
use glm5_engine::{ChatTemplate, SamplingParams, Tokenizer};

use crate::error::{Api, ApiError};

/// Everything a handler needs.
pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    /// The id clients name in `model` (and `/v1/models` lists).
    pub model_name: String,
    /// Other names accepted in `model` (`--model-alias`: e.g. the model ids an agent sends for
    /// its side requests).
    pub model_aliases: Vec<String>,
    pub api_key: Option<String>,
    pub stop_token_ids: Vec<u32>,
    pub defaults: SamplingParams,
    pub default_max_tokens: usize,
    /// Request bodies larger than this get a 413 (`--max-body`).
    pub max_body: usize,
    /// Responses API results kept for `previous_response_id`.
    pub responses: ResponseStore,
}

/// A request body limit that holds a 200K-token agent context with its tool definitions.
pub const DEFAULT_MAX_BODY: usize = 64 << 20;

pub type State = Arc<AppState>;

pub fn router(state: State) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/{id}", get(responses::retrieve))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/", get(chat_page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|uri: Uri| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {}", uri.path()),
            )
            .for_api(api_for(uri.path()))
            .into_response()
        })
        .layer(DefaultBodyLimit::max(state.max_body))
        .layer(middleware::from_fn_with_state(state.clone(), json_errors))
        .with_state(state)
}

/// 200 `ok` while the engine runs; 503 in the API's JSON once it has failed.
async fn health(axum::extract::State(state): axum::extract::State<State>) -> Response {
    if state.engine.alive() {
        "ok".into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine has failed").into_response()
    }
}

/// The chat page: one static file, no build step, no outside resources; it talks to
/// `/v1/chat/completions` like any client (streaming, reasoning folded, stop, settings).
async fn chat_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("chat.html"),
    )
        .into_response()
}

/// The API a path belongs to, for the shape of its error bodies.
fn api_for(path: &str) -> Api {
    if path.starts_with("/v1/messages") {
        Api::Anthropic
    } else {
        Api::OpenAi
    }
}

/// Errors that axum itself answers (405, 413, a malformed request) come as plain text; clients
/// read errors as the API's JSON, so they are rewritten into it.
async fn json_errors(
    axum::extract::State(state): axum::extract::State<State>,
    req: Request,
    next: Next,
) -> Response {
    let (api, method) = (api_for(req.uri().path()), req.method().clone());
    let r = next.run(req).await;
    let status = r.status();
    let json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return r;
    }
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => format!("{method} is not allowed on this endpoint"),
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is larger than this server's limit of {} bytes (glm5 serve --max-body)",
            state.max_body
        ),
        _ => {
            let body = axum::body::to_bytes(r.into_body(), 1 << 16)
                .await
                .unwrap_or_default();
            String::from_utf8_lossy(&body).into_owned()
        }
    };
    ApiError::new(status, message).for_api(api).into_response()
}

/// `Authorization: Bearer KEY` (OpenAI) or `x-api-key: KEY` (Anthropic), when a key is set.
async fn auth(
    axum::extract::State(state): axum::extract::State<State>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let Some(key) = &state.api_key else {
        return next.run(req).await;
    };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let x = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let matches = |given: Option<&str>| given.is_some_and(|g| same_secret(g, key));
    if matches(bearer) | matches(x) {
        return next.run(req).await;
    }
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid or missing API key")
        .for_api(api_for(req.uri().path()))
        .into_response()
}

/// Whether `given` equals `key`, in time that depends only on their lengths (not on where
/// they first differ), so that timing does not reveal the key a byte at a time.
fn same_secret(given: &str, key: &str) -> bool {
    let (a, b) = (given.as_bytes(), key.as_bytes());
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    // black_box: the comparison must not become an early-exit loop.
    std::hint::black_box(diff) == 0 && a.len() == b.len()
}

/// Prometheus text exposition of the engine's counters.
async fn metrics(axum::extract::State(state): axum::extract::State<State>) -> Response {
    let m = &state.engine.metrics;
    let mut s = String::new();
    let mut counter = |name: &str, help: &str, kind: &str, v: f64| {
        s.push_str(&format!(
            "# HELP glm5_{name} {help}\n# TYPE glm5_{name} {kind}\nglm5_{name} {v}\n"
        ));
    };
    let c = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed) as f64;
    counter(
        "requests_total",
        "Requests accepted.",
        "counter",
        c(&m.requests_total),
    );
    counter(
        "prompt_tokens_total",
        "Prompt tokens of finished requests.",
        "counter",
        c(&m.prompt_tokens_total),
    );
    counter(
        "generation_tokens_total",
        "Tokens generated.",
        "counter",
        c(&m.generation_tokens_total),
    );
    counter(
        "prefix_cache_hit_tokens_total",
        "Prompt tokens taken from the prefix cache.",
        "counter",
        c(&m.prefix_hit_tokens_total),
    );
    counter(
        "prefix_cache_disk_hit_tokens_total",
        "Prompt tokens read back from the prefix cache on disk (--prefix-cache-dir).",
        "counter",
        c(&m.prefix_disk_hit_tokens_total),
    );
    counter(
        "requests_cancelled_total",
        "Requests cancelled by a client disconnect.",
        "counter",
        c(&m.cancelled_total),
    );
    counter(
        "preemptions_total",
        "Sequences preempted for KV memory.",
        "counter",
        c(&m.preempted_total),
    );
    counter(
        "engine_steps_total",
        "Batched forward passes.",
        "counter",
        c(&m.steps_total),
    );
    counter(
        "batch_sequences_total",
        "Sum over steps of the sequences per step (mean batch size = this / engine_steps_total).",
        "counter",
        c(&m.batch_seqs_total),
    );
    counter(
        "batch_tokens_total",
        "Sum over steps of the tokens per step.",
        "counter",
        c(&m.batch_tokens_total),
    );
    counter(
        "queue_depth",
        "Requests waiting for a slot.",
        "gauge",
        state.engine.queue_depth() as f64,
    );
    counter(
        "running_sequences",
        "Sequences being generated.",
        "gauge",
        c(&m.running),
    );
    counter(
        "spec_verify_steps_total",
        "Speculative decoding (--mtp): verify steps of a drafting sequence.",
        "counter",
        c(&m.spec_steps_total),
    );
    counter(
        "spec_draft_tokens_total",
        "Speculative decoding: tokens drafted by the MTP layer.",
        "counter",
        c(&m.spec_draft_tokens_total),
    );
    counter(
        "spec_accepted_tokens_total",
        "Speculative decoding: drafted tokens the model accepted.",
        "counter",
        c(&m.spec_accepted_tokens_total),
    );
    let spec_steps = c(&m.spec_steps_total);
    counter(
        "spec_acceptance_length_mean",
        "Tokens produced per verify step (accepted drafts + 1).",
        "gauge",
        if spec_steps > 0.0 {
            (c(&m.spec_accepted_tokens_total) + spec_steps) / spec_steps
        } else {
            0.0
        },
    );
    let steps = c(&m.steps_total);
    counter(
        "batch_size_mean",
        "Mean sequences per batched forward pass.",
        "gauge",
        if steps > 0.0 {
            c(&m.batch_seqs_total) / steps
        } else {
            0.0
        },
    );
    let hist = |s: &mut String, name: &str, help: &str, h: &Histogram| {
        s.push_str(&format!(
            "# HELP glm5_{name} {help}\n# TYPE glm5_{name} histogram\n"
        ));
        for (le, n) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            s.push_str(&format!("glm5_{name}_bucket{{le=\"{le}\"}} {n}\n"));
        }
        s.push_str(&format!(
            "glm5_{name}_bucket{{le=\"+Inf\"}} {}\nglm5_{name}_sum {}\nglm5_{name}_count {}\n",
            h.count, h.sum, h.count
        ));
    };
    let ttft = m.ttft.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let itl = m.itl.lock().unwrap_or_else(|e| e.into_inner()).clone();
    hist(
        &mut s,
        "time_to_first_token_seconds",
        "Time from arrival to the first token.",
        &ttft,
    );
    hist(
        &mut s,
        "inter_token_latency_seconds",
        "Time between a sequence's tokens.",
        &itl,
    );
    ([("content-type", "text/plain; version=0.0.4")], s).into_response()
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn keys_compare_whole() {
        assert!(same_secret("sk-abc", "sk-abc"));
        for other in ["sk-abd", "sk-ab", "sk-abcd", "", "SK-ABC"] {
            assert!(!same_secret(other, "sk-abc"), "{other}");
        }
    }
}
