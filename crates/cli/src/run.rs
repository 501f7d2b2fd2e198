//! `glm5 run` and `glm5 chat`: text generation in the terminal.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{anyhow, Context, Result};
use clap::Args;
use glm5_engine::{
    default_model_dir, generate, ChatInput, FinishReason, GenerateRequest, ModelDir, Output,
    SamplingParams, Session,
};
use serde_json::{json, Map, Value};

/// Sampling and stopping flags shared by `run` and `chat`; unset flags take the model's
/// generation_config.json defaults.
#[derive(Args, Debug, Clone)]
pub struct GenArgs {
    /// Model folder; the bundled default model when omitted.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Most tokens to generate.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling mass (1 = off).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Drop tokens below this fraction of the most likely one's probability (0 = off).
    #[arg(long)]
    pub min_p: Option<f32>,
    /// transformers-style repetition penalty (1 = off).
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    #[arg(long)]
    pub presence_penalty: Option<f32>,
    #[arg(long)]
    pub frequency_penalty: Option<f32>,
    /// Same seed, same text.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Start the answer with reasoning (the template's default).
    #[arg(long, overrides_with = "no_think")]
    pub think: bool,
    /// Answer without reasoning (`enable_thinking=false`).
    #[arg(long)]
    pub no_think: bool,
    /// A system message for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// How to hold the weights and how many threads to compute with.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Weight format in memory: bf16, f16, f32, q8_0, q4_k (the Q4_K_M mix), q6_k, or reference
    /// (f32 with expanded K/V, the path checked against transformers). A GGUF's quantized
    /// tensors are used as stored.
    #[arg(long, default_value = "bf16")]
    pub quant: String,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Attend to every causal key instead of the DSA indexer's top-k (for comparison; the
    /// same below `index_topk` tokens of context).
    #[arg(long)]
    pub dense_attention: bool,
    /// Speculative decoding with the model's Multi-Token-Prediction layer: it drafts tokens
    /// that one batched forward of the model then verifies (same output, greedy or sampled).
    #[arg(long)]
    pub mtp: bool,
    /// Tokens the MTP layer drafts per step (with --mtp).
    #[arg(long, default_value_t = 3)]
    pub draft: usize,
    /// KV cache rows (the latent and rope key of every token and layer): bf16, or f32.
    /// Default bf16; f32 with --quant f32 or reference.
    #[arg(long)]
    pub kv_cache: Option<String>,
    /// The indexer's cached keys: bf16, f32, or q8 (8-bit with a scale per key, scored in
    /// integers: a quarter of f32's bytes and the fastest long-context scan). Default: as
    /// --kv-cache.
    #[arg(long)]
    pub index_cache: Option<String>,
}

impl LoadArgs {
    /// Apply the attention and MTP choices to a loaded model; returns the tokens to draft per
    /// step (0 without --mtp, whose MTP layer is then dropped from memory).
    pub fn configure(
        &self,
        model: &mut glm5_model::Model,
        path: &std::path::Path,
    ) -> Result<usize> {
        model.dense_attention = self.dense_attention;
        let parse = |flag: &str, v: &Option<String>, default| match v {
            None => Ok(default),
            Some(s) => row_format(flag, s),
        };
        let now = model.kv_format();
        let kv = parse("kv-cache", &self.kv_cache, now.kv)?;
        let index = parse(
            "index-cache",
            &self.index_cache,
            if self.kv_cache.is_some() {
                kv
            } else {
                now.index
            },
        )?;
        model
            .set_kv_format(glm5_model::KvFormat { kv, index })
            .map_err(|e| {
                let flag = if e.to_string().starts_with("index") {
                    "--index-cache"
                } else {
                    "--kv-cache"
                };
                anyhow!("{flag}: {e}")
            })?;
        if !self.mtp {
            model.mtp = None;
            return Ok(0);
        }
        if self.draft == 0 || self.draft > 16 {
            return Err(anyhow!("--draft {}: must be 1 to 16", self.draft));
        }
        if model.mtp.is_none() {
            return Err(anyhow!(
                "--mtp: {} has no MTP layer (num_nextn_predict_layers is {}, or model.layers.{}.* is not in the weights)",
                path.display(),
                model.cfg.num_nextn_predict_layers,
                model.cfg.num_hidden_layers
            ));
        }
        Ok(self.draft)
    }

    pub fn quant(&self) -> Result<glm5_model::Quant> {
        glm5_kernels::pool::set_threads(self.threads);
        glm5_model::Quant::parse(&self.quant).ok_or_else(|| {
            anyhow!(
                "--quant {}: unknown format (bf16, f16, f32, q8_0, q4_k, q4_k_m, q6_k, reference)",
                self.quant
            )
        })
    }
}

/// A cache row format flag's value (`--kv-cache`, `--index-cache`).
pub fn row_format(flag: &str, s: &str) -> Result<glm5_model::RowFormat> {
    glm5_model::RowFormat::parse(s)
        .ok_or_else(|| anyhow!("--{flag} {s}: unknown format (bf16, f32, q8)"))
}

/// `--model`, or the bundled model when it is omitted.
pub fn model_path(model: Option<&PathBuf>) -> Result<PathBuf> {
    match model {
        Some(d) => Ok(d.clone()),
        None => default_model_dir().ok_or_else(|| {
            anyhow!("the bundled model (models/glm5-tiny) was not found next to the glm5 executable; pass --model DIR or set GLM5_MODEL")
        }),
    }
}

impl GenArgs {
    fn load(&self) -> Result<ModelDir> {
        let dir = model_path(self.model.as_ref())?;
        let t0 = std::time::Instant::now();
        let mut md = ModelDir::load_with(&dir, self.load.quant()?, self.load.mtp)?;
        self.load.configure(&mut md.model, &dir)?;
        eprintln!(
            "loaded {} ({}, {} layers) in {:.2} s",
            dir.display(),
            md.model.cfg.model_type.as_str(),
            md.model.cfg.num_hidden_layers,
            t0.elapsed().as_secs_f64()
        );
        Ok(md)
    }

    /// One sequence's session, drafting with the MTP layer under --mtp.
    fn session<'m>(&self, md: &'m ModelDir) -> Result<Session<'m>> {
        Ok(if self.load.mtp {
            Session::with_mtp(&md.model, self.load.draft)?
        } else {
            Session::new(&md.model)
        })
    }

    fn request(&self, md: &ModelDir, prompt: Vec<u32>) -> Result<GenerateRequest> {
        let d = &md.generation.params;
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repeat_penalty.unwrap_or(d.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            seed: self.seed,
            logit_bias: Vec::new(),
        };
        params.validate()?;
        Ok(GenerateRequest {
            prompt,
            params,
            max_tokens: self
                .max_tokens
                .or(md.generation.max_new_tokens)
                .unwrap_or(256),
            stop: self.stop.clone(),
            stop_token_ids: if self.ignore_eos {
                vec![]
            } else {
                md.stop_token_ids.clone()
            },
        })
    }

    fn thinking(&self) -> bool {
        !self.no_think
    }
}

fn stats(out: &Output) {
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let computed = out.prompt_tokens - out.cached_tokens;
    eprintln!(
        "prompt: {} tokens ({} cached) in {:.2} s, {:.1} tok/s | decode: {} tokens in {:.2} s, {:.1} tok/s | finish: {}",
        out.prompt_tokens,
        out.cached_tokens,
        out.prefill_secs,
        rate(computed, out.prefill_secs),
        out.tokens.len(),
        out.decode_secs,
        rate(out.tokens.len(), out.decode_secs),
        finish_name(&out.finish)
    );
    let sp = &out.spec;
    if sp.steps > 0 {
        eprintln!(
            "mtp: {} verify steps, {} of {} drafts accepted, {:.2} tokens per step",
            sp.steps,
            sp.accepted,
            sp.drafted,
            sp.acceptance_length()
        );
    }
}

fn finish_name(f: &FinishReason) -> String {
    match f {
        FinishReason::StopToken(t) => format!("stop token {t}"),
        FinishReason::StopString(s) => format!("stop string {s:?}"),
        FinishReason::Length => "max tokens".into(),
        FinishReason::ContextFull => "context full".into(),
        FinishReason::Cancelled => "cancelled".into(),
        FinishReason::Aborted => "aborted".into(),
    }
}

fn chat_prompt(md: &ModelDir, messages: Vec<Value>, think: bool) -> Result<Vec<u32>> {
    let template = md.template()?;
    let mut kwargs = Map::new();
    kwargs.insert("enable_thinking".into(), Value::Bool(think));
    let text = template.render(&ChatInput {
        messages,
        tools: None,
        add_generation_prompt: true,
        kwargs,
    })?;
    Ok(md.tokenizer.encode(&text)?)
}

/// `glm5 run [--chat] [PROMPT]`: print the continuation on stdout as it is generated.
pub fn run(args: &GenArgs, prompt: Option<String>, chat: bool, truncate: bool) -> Result<()> {
    let prompt = match prompt {
        Some(p) => p,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the prompt from stdin")?;
            s
        }
    };
    let md = args.load()?;
    let mut ids = if chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        chat_prompt(&md, messages, args.thinking())?
    } else {
        md.tokenizer.encode(&prompt)?
    };
    let ctx = md.model.cfg.max_position_embeddings;
    if truncate && ids.len() >= ctx {
        let keep = ctx / 2;
        eprintln!(
            "prompt truncated from {} to its last {keep} tokens",
            ids.len()
        );
        ids.drain(..ids.len() - keep);
    }
    let req = args.request(&md, ids)?;
    let mut session = args.session(&md)?;
    let mut stdout = std::io::stdout().lock();
    let out = generate(&mut session, &md.tokenizer, &req, |piece| {
        let _ = stdout.write_all(piece.as_bytes());
        let _ = stdout.flush();
        true
    })?;
    if std::io::stdout().is_terminal() && !out.text.ends_with('\n') {
        println!();
    }
    stats(&out);
    Ok(())
}

static GENERATING: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

/// `glm5 chat`: a multi-turn conversation in the terminal.
pub fn chat(args: &GenArgs) -> Result<()> {
    let md = args.load()?;
    md.template()?;
    ctrlc::set_handler(|| {
        if GENERATING.load(Ordering::SeqCst) {
            STOP.store(true, Ordering::SeqCst);
        } else {
            eprintln!();
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;
    let tty = std::io::stdout().is_terminal();
    eprintln!(
        "chat with {}: /reset clears the history, /exit quits, Ctrl-C stops an answer",
        md.dir.display()
    );
    let mut session = args.session(&md)?;
    let mut messages = base_messages(args);
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        print!("> ");
        std::io::stdout().flush()?;
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            return Ok(());
        }
        let text = line.trim_end_matches(['\n', '\r']);
        match text.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                messages = base_messages(args);
                println!("(history cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(json!({"role": "user", "content": text}));
        let ids = chat_prompt(&md, messages.clone(), args.thinking())?;
        let req = args.request(&md, ids)?;
        let mut shown = ThinkPrinter::new(args.thinking(), tty);
        STOP.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
        let result = generate(&mut session, &md.tokenizer, &req, |piece| {
            shown.push(piece);
            !STOP.load(Ordering::SeqCst)
        });
        GENERATING.store(false, Ordering::SeqCst);
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                messages.pop();
                eprintln!("error: {}", e.to_string().replace('\n', " "));
                continue;
            }
        };
        shown.end();
        if out.finish == FinishReason::Cancelled {
            eprintln!("(stopped)");
        }
        let (reasoning, answer) = split_reasoning(&out.text, args.thinking());
        messages
            .push(json!({"role": "assistant", "content": answer, "reasoning_content": reasoning}));
        if std::env::var_os("GLM5_CHAT_STATS").is_some() {
            stats(&out);
        }
    }
}

fn base_messages(args: &GenArgs) -> Vec<Value> {
    match &args.system {
        Some(s) => vec![json!({"role": "system", "content": s})],
        None => vec![],
    }
}

/// The generated text starts inside `<think>` when thinking is on: split it at `</think>`.
pub fn split_reasoning(text: &str, thinking: bool) -> (String, String) {
    match text.split_once("</think>") {
        Some((r, a)) => (r.trim().to_string(), a.trim().to_string()),
        None if thinking => (text.trim().to_string(), String::new()),
        None => (String::new(), text.trim().to_string()),
    }
}

/// Prints reasoning dimmed (on a terminal) and the answer plainly, hiding the `</think>` marker.
struct ThinkPrinter {
    in_think: bool,
    tty: bool,
    held: String,
}

impl ThinkPrinter {
    fn new(thinking: bool, tty: bool) -> Self {
        let p = ThinkPrinter {
            in_think: thinking,
            tty,
            held: String::new(),
        };
        if thinking && tty {
            print!("\x1b[2m");
        }
        p
    }

    fn push(&mut self, piece: &str) {
        let mut out = std::io::stdout().lock();
        if !self.in_think {
            let _ = out.write_all(piece.as_bytes());
        } else {
            self.held.push_str(piece);
            if let Some((r, a)) = self.held.split_once("</think>") {
                let _ = out.write_all(r.as_bytes());
                let _ = out.write_all(if self.tty { b"\x1b[0m\n" } else { b"\n" });
                let _ = out.write_all(a.trim_start().as_bytes());
                self.in_think = false;
                self.held.clear();
            } else {
                // Keep a possible partial "</think>" back.
                let keep = (1..=8.min(self.held.len()))
                    .rev()
                    .find(|&k| {
                        self.held.is_char_boundary(self.held.len() - k)
                            && "</think>".starts_with(&self.held[self.held.len() - k..])
                    })
                    .unwrap_or(0);
                let cut = self.held.len() - keep;
                let _ = out.write_all(&self.held.as_bytes()[..cut]);
                self.held.drain(..cut);
            }
        }
        let _ = out.flush();
    }

    fn end(&mut self) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(self.held.as_bytes());
        if self.tty {
            let _ = out.write_all(b"\x1b[0m");
        }
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}
