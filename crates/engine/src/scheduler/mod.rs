//! Continuous batching: the engine thread, its scheduler, and the handle the server talks to.
//!
//! Every step the scheduler admits waiting requests (while the KV budget and `max_seqs` allow),
//! gives each running sequence its next piece of work (one decode token, or a chunk of its
//! prompt within the step's prefill budget), runs them all in one batched forward, samples,
//! detokenizes and sends the text out as events. A sequence whose receiver is gone (the client
//! disconnected) is dropped before the next step. When the KV budget runs out, the most
//! recently admitted sequence is preempted: its cache is freed and it waits to be recomputed
//! (its output so far is kept). Finished sequences leave their cache in a prefix cache, so a
//! later prompt that starts the same way (a system prompt, a tool list, the previous turns)
//! resumes from it instead of recomputing it.
//!
//! The same channel carries control messages (`Control`): abort requests, pause and continue,
//! flush the prefix cache, load new weights (what an RL trainer drives between its steps).

mod control;
mod prefix;
mod seq;
mod step;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::Instant;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use crate::batch::BatchModel;
use crate::constrain::Constraint;
use crate::error::{Error, Result};
use crate::generate::FinishReason;
use crate::metrics::Metrics;
use crate::prefix_disk::{DiskConfig, DiskPrefixes};
use crate::sampler::SamplingParams;
use crate::tokenizer::Tokenizer;

pub use control::{Control, PauseMode, WeightLoader};
use step::Scheduler;

/// One generation request, already tokenized.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The client's name for it (what `Control::Abort` names).
    pub id: Option<String>,
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    /// `Some(k)`: report each sampled token's log-probability and the `k` most likely ones.
    pub logprobs: Option<usize>,
    /// Leave hidden control tokens (`Tokenizer::is_hidden`) out of the text.
    pub skip_special_tokens: bool,
    /// Only tokens this grammar allows are sampled (stop tokens where it may end).
    pub constraint: Option<Constraint>,
    /// Log-probabilities are those of the distribution sampled from: after penalties and
    /// temperature, before top-k/top-p/min-p (what an RL trainer recomputes); raw logits' when
    /// greedy. Off: the raw logits' (OpenAI's `logprobs`).
    pub logprobs_sampled: bool,
    /// `Some(start)`: the log-probability of every prompt token from position `start` on, given
    /// the tokens before it (`Event::PromptLogprobs`; position 0 has none).
    pub prompt_logprobs: Option<usize>,
    /// `Some(start)`: the experts every token from position `start` on was routed to, up to the
    /// last one computed (`Event::Routes`).
    pub routed_experts: Option<usize>,
    /// A sampled stop token is sent as a token of the output (with its log-probability) before
    /// the request finishes, instead of being left out.
    pub emit_stop_token: bool,
}

/// A token's log-probability under the model (log-softmax of the raw logits) and the most
/// likely alternatives, highest first.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A sampled token and the text that became safe to show with it (often the token's own
    /// text; empty while a stop string or a UTF-8 character is incomplete).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The request got a slot; `cached_tokens` of its prompt came from the prefix cache. Sent
    /// once, before any token.
    Admitted {
        cached_tokens: usize,
    },
    /// Text released at the end (held back until the sequence finished).
    Text(String),
    /// The prompt's log-probabilities (`Request::prompt_logprobs`), sent before `Done`: one
    /// entry per position from the requested start, `None` at position 0.
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    /// Routing (`Request::routed_experts`), sent before `Done`: `[tokens, layers, experts per
    /// token]` flattened, for positions from the requested start to the last one computed.
    Routes(Vec<u32>),
    Done(Usage, FinishReason),
    Error(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens found in the prefix cache (not recomputed).
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences decoded together at most.
    pub max_seqs: usize,
    /// Requests waiting for a slot at most; more are refused (`Error::QueueFull`).
    pub max_queue: usize,
    /// Context per sequence (prompt + output), at most the model's.
    pub ctx: usize,
    /// Tokens of KV cache all running sequences may hold together.
    pub kv_budget_tokens: usize,
    /// Prompt tokens computed per step, over all sequences (chunked prefill).
    pub prefill_chunk: usize,
    /// Tokens the prefix cache may hold (0 turns it off).
    pub prefix_cache_tokens: usize,
    /// Speculative decoding: tokens the model's MTP layer drafts per sequence and step (0: off;
    /// also off when the model cannot draft).
    pub draft: usize,
    /// Keep long prefixes on disk too (across restarts); `None`: RAM only.
    pub prefix_disk: Option<DiskConfig>,
}

/// A request on its way to the engine thread, with the sender of its events.
struct Submitted {
    req: Request,
    tx: UnboundedSender<Event>,
    arrived: Instant,
}

/// What the engine thread receives, in order.
enum Msg {
    Submit(Box<Submitted>),
    Control(Control, oneshot::Sender<std::result::Result<usize, String>>),
}

/// State the server reads without asking the engine thread.
#[derive(Default)]
struct Shared {
    paused: AtomicBool,
    weight_version: RwLock<String>,
}

/// The server's side: submit requests, read events. Cheap to clone.
pub struct EngineHandle {
    tx: mpsc::Sender<Msg>,
    queued: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
    shared: Arc<Shared>,
    pub cfg: EngineConfig,
    pub metrics: Arc<Metrics>,
    vocab: usize,
}

impl Clone for EngineHandle {
    fn clone(&self) -> Self {
        EngineHandle {
            tx: self.tx.clone(),
            queued: self.queued.clone(),
            alive: self.alive.clone(),
            shared: self.shared.clone(),
            cfg: self.cfg.clone(),
            metrics: self.metrics.clone(),
            vocab: self.vocab,
        }
    }
}

impl EngineHandle {
    /// Queue a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request. Fails at once for a prompt that does not fit or a full queue.
    pub fn submit(&self, mut req: Request) -> Result<UnboundedReceiver<Event>> {
        if !self.alive() {
            return Err(Error::EngineStopped);
        }
        req.params.validate()?;
        if req.prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if req.prompt.len() >= self.cfg.ctx {
            return Err(Error::PromptTooLong {
                prompt: req.prompt.len(),
                ctx: self.cfg.ctx,
            });
        }
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(Error::BadParam {
                param: "prompt",
                reason: format!(
                    "token id {bad} is outside the vocabulary (0..{})",
                    self.vocab
                ),
            });
        }
        if req.routed_experts.is_some_and(|s| s > req.prompt.len()) {
            return Err(Error::BadParam {
                param: "routed_experts_start_len",
                reason: format!("must be at most the prompt's {} tokens", req.prompt.len()),
            });
        }
        req.max_tokens = req.max_tokens.min(self.cfg.ctx - req.prompt.len());
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.cfg.max_queue {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::QueueFull {
                waiting: self.cfg.max_queue,
            });
        }
        let (tx, rx) = unbounded_channel();
        let sub = Submitted {
            req,
            tx,
            arrived: Instant::now(),
        };
        self.metrics.requests_total.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Msg::Submit(Box::new(sub))).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::EngineStopped);
        }
        Ok(rx)
    }

    /// Whether the engine thread is running (false after it failed).
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Requests waiting for a slot.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Sequences being generated (paused ones included).
    pub fn running(&self) -> usize {
        self.metrics.running.load(Ordering::Relaxed)
    }

    /// Whether generation is paused (`Control::Pause`).
    pub fn paused(&self) -> bool {
        self.shared.paused.load(Ordering::SeqCst)
    }

    /// The name of the weights being served ("default" until a reload names them).
    pub fn weight_version(&self) -> String {
        self.shared
            .weight_version
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Rename the weights being served.
    pub fn set_weight_version(&self, v: &str) {
        *self
            .shared
            .weight_version
            .write()
            .unwrap_or_else(|e| e.into_inner()) = v.to_string();
    }

    /// Run a control message on the engine thread, between two steps. `Ok(n)`: the requests
    /// it concerned (aborted, paused, kept across a reload); `Err`: why it could not be done.
    pub async fn control(&self, c: Control) -> std::result::Result<usize, String> {
        let (tx, rx) = oneshot::channel();
        if !self.alive() || self.tx.send(Msg::Control(c, tx)).is_err() {
            return Err(Error::EngineStopped.to_string());
        }
        rx.await
            .unwrap_or_else(|_| Err(Error::EngineStopped.to_string()))
    }
}

/// Start the engine thread; it runs until every handle is dropped.
pub fn start<M: BatchModel>(model: Arc<M>, tok: Arc<Tokenizer>, cfg: EngineConfig) -> EngineHandle {
    start_reloadable(model, tok, cfg, None)
}

/// `start`, with the function `Control::Reload` loads new weights with (`None`: reloads are
/// refused).
pub fn start_reloadable<M: BatchModel>(
    model: Arc<M>,
    tok: Arc<Tokenizer>,
    mut cfg: EngineConfig,
    loader: Option<WeightLoader<M>>,
) -> EngineHandle {
    cfg.ctx = cfg.ctx.clamp(2, model.max_context());
    cfg.max_seqs = cfg.max_seqs.max(1);
    cfg.prefill_chunk = cfg.prefill_chunk.max(1);
    cfg.kv_budget_tokens = cfg.kv_budget_tokens.max(cfg.ctx);
    if !model.can_draft() {
        cfg.draft = 0;
    }
    let (tx, rx) = mpsc::channel();
    let handle = EngineHandle {
        tx,
        queued: Arc::new(AtomicUsize::new(0)),
        alive: Arc::new(AtomicBool::new(true)),
        shared: Arc::new(Shared {
            paused: AtomicBool::new(false),
            weight_version: RwLock::new("default".into()),
        }),
        cfg: cfg.clone(),
        metrics: Arc::new(Metrics::default()),
        vocab: model.vocab_size(),
    };
    let disk = cfg.prefix_disk.clone().and_then(|d| {
        let dir = d.dir.clone();
        DiskPrefixes::open(d)
            .map_err(|e| {
                eprintln!(
                    "glm5: prefix cache folder {}: {e}; keeping prefixes in RAM only",
                    dir.display()
                )
            })
            .ok()
    });
    let mut sched = Scheduler {
        model,
        tok,
        cfg,
        disk,
        waiting: VecDeque::new(),
        running: Vec::new(),
        prefix: Vec::new(),
        queued: handle.queued.clone(),
        metrics: handle.metrics.clone(),
        alive: handle.alive.clone(),
        shared: handle.shared.clone(),
        loader,
        paused: false,
    };
    std::thread::Builder::new()
        .name("glm5-engine".into())
        .spawn(move || sched.run(rx))
        .expect("spawning the engine thread");
    handle
}

/// Log-softmax of the raw logits at `token`, and the `k` most likely tokens (ties: lower id).
pub fn token_logprob(logits: &[f32], token: u32, k: usize) -> TokenLogprob {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + logits
        .iter()
        .map(|&x| ((x - m) as f64).exp())
        .sum::<f64>()
        .ln() as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k);
    if k > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(idx.len());
        let cmp = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
        idx.sort_unstable_by(cmp);
        top = idx
            .into_iter()
            .map(|i| (i, logits[i as usize] - lse))
            .collect();
    }
    TokenLogprob {
        token,
        logprob: logits[token as usize] - lse,
        top,
    }
}
