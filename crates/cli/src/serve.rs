//! `glm5 serve`: load a model, start the engine thread, serve HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use glm5_engine::prefix_disk::DiskConfig;
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
    /// Require this key (`Authorization: Bearer KEY` or `x-api-key: KEY`). Prefer
    /// GLM5_API_KEY or --api-key-file: a key on the command line is visible to every user in
    /// `ps`.
    #[arg(long, env = "GLM5_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Read the required key from this file (its first line).
    #[arg(long, conflicts_with = "api_key")]
    pub api_key_file: Option<PathBuf>,
    /// The model id clients send and /v1/models lists (default: the folder or file name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Another name to accept in requests' `model` (repeatable; `*` accepts any), e.g. the
    /// model ids Claude Code sends for its side requests.
    #[arg(long)]
    pub model_alias: Vec<String>,
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
    /// Also keep long prompts' KV caches in this folder, so that a prompt seen before (an
    /// agent's system prompt and tools) is read back after a restart instead of recomputed.
    #[arg(long)]
    pub prefix_cache_dir: Option<PathBuf>,
    /// Gigabytes the --prefix-cache-dir folder may hold (least recently used go first).
    #[arg(long, default_value_t = 20.0)]
    pub prefix_cache_disk_gb: f64,
    /// Prompts shorter than this many tokens are not written to --prefix-cache-dir.
    #[arg(long, default_value_t = 1024)]
    pub prefix_cache_disk_min: usize,
    /// Largest request body accepted, in bytes (larger ones get a 413).
    #[arg(long, default_value_t = glm5_server::DEFAULT_MAX_BODY)]
    pub max_body: usize,
    /// Seconds requests in flight get to finish after Ctrl-C or SIGTERM (then they are cut).
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Open connections at most (more wait to be accepted until one closes).
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a client has to send its request headers (also how long an idle connection
    /// stays open); a stalled one is disconnected.
    #[arg(long, default_value_t = 30)]
    pub header_timeout: u64,
    /// Default max_tokens when a request sets none (default: generation_config.json's
    /// `max_new_tokens`, else 1024).
    #[arg(long)]
    pub default_max_tokens: Option<usize>,
    /// Take the tokenizer and chat template from this folder or GGUF instead (for weights
    /// that ship none, such as `glm5 synth` output).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub load: LoadArgs,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let key = api_key(args)?;
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
            prefix_disk: args.prefix_cache_dir.as_ref().map(|d| DiskConfig {
                dir: d.clone(),
                model_id: model_identity(&dir, &args.load),
                budget_bytes: (args.prefix_cache_disk_gb.max(0.0) * 1e9) as u64,
                min_tokens: args.prefix_cache_disk_min.max(1),
            }),
        },
    );
    let state = Arc::new(AppState {
        engine,
        tokenizer,
        template,
        model_name: name,
        model_aliases: args.model_alias.clone(),
        api_key: key,
        stop_token_ids,
        defaults: generation.params,
        default_max_tokens: args
            .default_max_tokens
            .or(generation.max_new_tokens)
            .unwrap_or(1024),
        max_body: args.max_body,
        responses: Default::default(),
    });
    let limits = glm5_server::Limits {
        header_read_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
        shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout),
        max_connections: args.max_connections,
    };
    glm5_server::serve_blocking(state, addr, limits).with_context(|| format!("serving on {addr}"))
}

/// What a stored KV cache depends on: the model's files (names, sizes, modification times),
/// the weight and cache formats, and this build's cache layout.
fn model_identity(path: &std::path::Path, load: &LoadArgs) -> String {
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    let mut id = format!(
        "glm5 {} quant={} kv={:?} index={:?} dense={}",
        env!("CARGO_PKG_VERSION"),
        load.quant,
        load.kv_cache,
        load.index_cache,
        load.dense_attention
    );
    for f in files {
        let Ok(m) = std::fs::metadata(&f) else {
            continue;
        };
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let abs = std::fs::canonicalize(&f).unwrap_or(f);
        id.push_str(&format!("|{}:{}:{mtime}", abs.display(), m.len()));
    }
    id
}

/// The key from --api-key-file, GLM5_API_KEY or --api-key (with a warning: argv is public).
fn api_key(args: &ServeArgs) -> Result<Option<String>> {
    if let Some(f) = &args.api_key_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("--api-key-file {}: cannot read", f.display()))?;
        let key = text.lines().next().unwrap_or("").trim().to_string();
        if key.is_empty() {
            anyhow::bail!("--api-key-file {}: the file holds no key", f.display());
        }
        return Ok(Some(key));
    }
    if std::env::args().any(|a| a == "--api-key" || a.starts_with("--api-key=")) {
        eprintln!(
            "warning: --api-key on the command line is visible to other users (ps); use GLM5_API_KEY or --api-key-file"
        );
    }
    Ok(args.api_key.clone().filter(|k| !k.is_empty()))
}
