//! `glm5 serve`: load a model, start the engine thread, serve HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use glm5_engine::scheduler::{self, EngineConfig};
use glm5_engine::ModelDir;
use glm5_server::AppState;

use crate::run::LoadArgs;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Model folder or .gguf file; the bundled default model when omitted.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require this key (`Authorization: Bearer KEY` or `x-api-key: KEY`); also read from
    /// GLM5_API_KEY.
    #[arg(long, env = "GLM5_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The model id clients send and /v1/models lists (default: the folder or file name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Sequences decoded together at most.
    #[arg(long, default_value_t = 16)]
    pub max_seqs: usize,
    /// Requests that may wait for a slot; more get 429 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Context per sequence (default: the model's max_position_embeddings).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// KV-cache tokens all running sequences may hold together (default: max-seqs x ctx, at
    /// most 4 GiB of cache).
    #[arg(long)]
    pub kv_budget: Option<usize>,
    /// Prompt tokens computed per engine step (chunked prefill).
    #[arg(long, default_value_t = 512)]
    pub prefill_chunk: usize,
    /// Tokens kept in the prefix cache (0 = off; default: 4 x ctx, at most 1 GiB of cache).
    #[arg(long)]
    pub prefix_cache: Option<usize>,
    /// Largest request body accepted, in bytes (larger ones get a 413).
    #[arg(long, default_value_t = glm5_server::DEFAULT_MAX_BODY)]
    pub max_body: usize,
    /// Seconds a client has to send its request headers; a stalled one is disconnected.
    #[arg(long, default_value_t = 30)]
    pub header_timeout: u64,
    /// Default max_tokens when a request sets none.
    #[arg(long, default_value_t = 1024)]
    pub default_max_tokens: usize,
    /// Take the tokenizer and chat template from this folder or GGUF instead (for weights
    /// that ship none, such as `glm5 synth` output).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub load: LoadArgs,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let dir = crate::run::model_path(args.model.as_ref())?;
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("--host {} --port {}: not an address", args.host, args.port))?;
    let t0 = std::time::Instant::now();
    let mut md = match &args.tokenizer {
        Some(t) => ModelDir::load_with_tokenizer(&dir, args.load.quant()?, args.load.mtp, t)?,
        None => ModelDir::load_with(&dir, args.load.quant()?, args.load.mtp)?,
    };
    let draft = args.load.configure(&mut md.model, &dir)?;
    let template = md.template()?;
    let name = args.model_name.clone().unwrap_or_else(|| {
        dir.file_stem()
            .map_or("glm5".into(), |s| s.to_string_lossy().into_owned())
    });
    let ModelDir {
        model,
        tokenizer,
        generation,
        stop_token_ids,
        ..
    } = md;
    let window = model.cfg.max_position_embeddings;
    let ctx = match args.ctx {
        Some(c) if c > window => anyhow::bail!(
            "--ctx {c} is larger than the model's context window of {window} tokens (max_position_embeddings in {})",
            dir.display()
        ),
        Some(0) => anyhow::bail!("--ctx must be at least 1"),
        Some(c) => c,
        None => window,
    };
    eprintln!(
        "loaded {} ({}, {} layers) in {:.2} s; serving it as '{name}' with context {ctx}, up to {} sequences at once",
        dir.display(),
        model.cfg.model_type.as_str(),
        model.cfg.num_hidden_layers,
        t0.elapsed().as_secs_f64(),
        args.max_seqs
    );
    let per_token = glm5_engine::batch::BatchModel::cache_bytes_per_token(&model).max(1);
    let kv_budget = args
        .kv_budget
        .unwrap_or((args.max_seqs * ctx).min((4usize << 30) / per_token));
    let prefix_cache = args
        .prefix_cache
        .unwrap_or((4 * ctx).min((1usize << 30) / per_token));
    eprintln!(
        "KV cache: {per_token} bytes per token; budget {kv_budget} tokens for running sequences, {prefix_cache} for the prefix cache"
    );
    let tokenizer = Arc::new(tokenizer);
    let engine = scheduler::start(
        Arc::new(model),
        tokenizer.clone(),
        EngineConfig {
            max_seqs: args.max_seqs,
            max_queue: args.max_queue,
            ctx,
            kv_budget_tokens: kv_budget,
            prefill_chunk: args.prefill_chunk,
            prefix_cache_tokens: prefix_cache,
            draft,
        },
    );
    let state = Arc::new(AppState {
        engine,
        tokenizer,
        template,
        model_name: name,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        stop_token_ids,
        defaults: generation.params,
        default_max_tokens: generation.max_new_tokens.unwrap_or(args.default_max_tokens),
        max_body: args.max_body,
        responses: Default::default(),
    });
    let limits = glm5_server::Limits {
        header_read_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
    };
    glm5_server::serve_blocking(state, addr, limits).with_context(|| format!("serving on {addr}"))
}
