//! The `glm5` command. It only wires the library crates together: argument parsing, progress
//! bars, output formatting and exit codes (0 ok, 2 bad input or any other failure).
#![recursion_limit = "256"]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc keeps freed pages for reuse: the forward pass allocates and frees tens of MB per
/// layer, and glibc's malloc returned them to the kernel each time (munmap, page faults, TLB
/// shootdowns across the pool's threads): half of long-prompt time went there.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod bench_mtp;
mod check_tensors;
mod inspect;
mod kld;
mod logits;
mod quantize;
mod run;
mod serve;
mod synth;

#[derive(Parser)]
#[command(name = "glm5", version, about = "Run GLM-5-family models on CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DTypeArg {
    Bf16,
    F32,
    Fp8,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a checkpoint: sizes, parameter counts, KV-cache bytes, missing tensors.
    Inspect {
        /// HF checkpoint folder (config.json + safetensors) or GGUF file.
        #[arg(long)]
        model: PathBuf,
        /// Context length for the memory estimate.
        #[arg(long, default_value_t = 4096)]
        ctx: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// KV cache row format for the estimate (bf16 or f32).
        #[arg(long, default_value = "bf16")]
        kv_cache: String,
        /// Indexer key cache format for the estimate (bf16, f32 or q8); default as --kv-cache.
        #[arg(long)]
        index_cache: Option<String>,
        /// Also decode every weight and check that each value is finite (names the first NaN
        /// or Inf and exits 2).
        #[arg(long)]
        check_tensors: bool,
    },
    /// Write a checkpoint with deterministic random weights for a config.
    Synth {
        /// config.json to build the checkpoint for.
        #[arg(long)]
        config: PathBuf,
        /// Output folder (created).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = DTypeArg::Bf16)]
        dtype: DTypeArg,
        /// Largest shard size in MiB.
        #[arg(long, default_value_t = 2048)]
        shard_mib: u64,
    },
    /// Write float32 logits [n_tokens, vocab] of a token sequence to a .npy file.
    Logits {
        #[arg(long)]
        model: PathBuf,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        #[arg(long)]
        out: PathBuf,
        /// Feed the tokens one at a time through the KV cache instead of one prefill.
        #[arg(long)]
        step: bool,
        /// Prefill in chunks of this many tokens (ignored with --step).
        #[arg(long)]
        chunk: Option<usize>,
        /// Also write named intermediates (layers.N.self_attn.indexer.topk, ...) to this
        /// safetensors file.
        #[arg(long)]
        trace: Option<PathBuf>,
    },
    /// Generate text from a prompt; the continuation goes to stdout, statistics to stderr.
    Run {
        #[command(flatten)]
        gen: run::GenArgs,
        /// Wrap the prompt in the model's chat template as a user message.
        #[arg(long)]
        chat: bool,
        /// Keep only the end of a prompt longer than the context instead of failing.
        #[arg(long)]
        truncate: bool,
        /// The prompt (read from stdin when omitted).
        prompt: Option<String>,
    },
    /// An interactive multi-turn chat in the terminal (/reset, /exit; Ctrl-C stops an answer).
    Chat {
        #[command(flatten)]
        gen: run::GenArgs,
    },
    /// Write an HF folder as a GGUF file (llama.cpp's glm-dsa layout).
    Quantize {
        /// HF model folder.
        #[arg(long)]
        model: PathBuf,
        /// Output .gguf file.
        #[arg(long)]
        out: PathBuf,
        /// q8_0, q6_k, q5_k_m, q4_k_m, iq4_xs, iq4_nl, bf16, f16 or f32.
        #[arg(long = "type", default_value = "q8_0")]
        ty: String,
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Write a split set (OUT-00001-of-0000n.gguf, ...) of parts holding at most this
        /// much tensor data each, as llama.cpp's gguf-split: e.g. 50G, 500M (decimal units).
        #[arg(long)]
        split_max_size: Option<String>,
        /// Take the tokenizer, chat template and sampling defaults from this HF folder
        /// (for weights that ship none, such as `glm5 synth` output).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
    },
    /// Measure prompt and decode speed, weight bytes per token and this machine's memory
    /// bandwidth (decode as a fraction of that roofline).
    Bench(bench::BenchArgs),
    /// Compare a (quantized) model's next-token distributions with a base model's: KL
    /// divergence, top-1 agreement, perplexities.
    Kld(kld::KldArgs),
    /// Serve the model over HTTP: OpenAI (/v1/chat/completions, /v1/completions, /v1/models)
    /// and Anthropic (/v1/messages) APIs with continuous batching, plus /health and /metrics.
    Serve(serve::ServeArgs),
}

/// mimalloc's `mi_option_purge_delay` (its `mimalloc.h` option enum, v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed pages 10 s before returning them to the kernel (mimalloc's default is 1 s). A
/// 512-token prefill allocates ~100 MB of transient buffers; once purged, every page of them
/// faults again on the next prompt (~7 us a fault on this VM: 8-9% of a 512-token prompt's
/// time in `clear_page_erms` when prompts came more than 1 s apart). Peak RSS is unchanged:
/// freed pages are reused before new ones are taken. `MIMALLOC_PURGE_DELAY` still overrides.
fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one allocator option; mimalloc allows this at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    }
}

fn main() -> ExitCode {
    keep_freed_pages();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect {
            model,
            ctx,
            json,
            kv_cache,
            index_cache,
            check_tensors,
        } => {
            let index = index_cache.as_deref().unwrap_or(&kv_cache);
            inspect::run(&model, ctx, json, &kv_cache, index).and_then(|()| {
                if check_tensors {
                    let n = check_tensors::check(&model)?;
                    eprintln!("checked {n} tensors: every value is finite");
                }
                Ok(())
            })
        }
        Command::Synth {
            config,
            out,
            seed,
            dtype,
            shard_mib,
        } => synth::run(&config, &out, seed, dtype, shard_mib),
        Command::Logits {
            model,
            tokens,
            out,
            step,
            chunk,
            trace,
        } => logits::run(&model, &tokens, &out, step, chunk, trace.as_deref()),
        Command::Run {
            gen,
            chat,
            truncate,
            prompt,
        } => run::run(&gen, prompt, chat, truncate),
        Command::Chat { gen } => run::chat(&gen),
        Command::Quantize {
            model,
            out,
            ty,
            threads,
            split_max_size,
            tokenizer,
        } => quantize::run(
            &model,
            &out,
            &ty,
            threads,
            split_max_size.as_deref(),
            tokenizer.as_deref(),
        ),
        Command::Bench(args) => bench::run(&args),
        Command::Kld(args) => kld::run(&args),
        Command::Serve(args) => serve::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error chain on one line.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}
