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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::batch::{pick_mut, BatchModel};
use crate::constrain::Constraint;
use crate::error::{Error, Result};
use crate::generate::{FinishReason, StopMatcher};
use crate::metrics::Metrics;
use crate::prefix_disk::{DiskConfig, DiskPrefixes};
use crate::sampler::{Sampler, SamplingParams};
use crate::tokenizer::{Detokenizer, Tokenizer};

/// One generation request, already tokenized.
#[derive(Debug, Clone)]
pub struct Request {
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

/// The server's side: submit requests, read events. Cheap to clone.
pub struct EngineHandle {
    tx: mpsc::Sender<Submitted>,
    queued: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
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
                reason: format!("token id {bad} is outside the vocabulary"),
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
        if self.tx.send(sub).is_err() {
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
}

/// One sequence's state between steps.
struct Seq<C> {
    req: Request,
    /// Prompt, then generated tokens.
    tokens: Vec<u32>,
    /// `None` while waiting (never admitted, or preempted).
    cache: Option<C>,
    sampler: Sampler,
    detok: Detokenizer,
    stops: StopMatcher,
    tx: UnboundedSender<Event>,
    usage: Usage,
    arrived: Instant,
    last_token: Option<Instant>,
    /// Tokens drafted to follow `tokens`, verified by the next step.
    drafts: Vec<u32>,
    /// `Event::Admitted` was sent.
    admitted: bool,
}

impl<C> Seq<C> {
    fn new(sub: Submitted) -> Seq<C> {
        let Submitted { req, tx, arrived } = sub;
        let show_hidden = !req.skip_special_tokens;
        Seq {
            sampler: Sampler::new(req.params.clone(), &req.prompt),
            stops: StopMatcher::new(&req.stop),
            tokens: req.prompt.clone(),
            usage: Usage {
                prompt_tokens: req.prompt.len(),
                ..Default::default()
            },
            req,
            cache: None,
            detok: Detokenizer::showing_hidden(show_hidden),
            tx,
            arrived,
            last_token: None,
            drafts: Vec::new(),
            admitted: false,
        }
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.req.prompt.len()
    }
}

/// Start the engine thread; it runs until every handle is dropped.
pub fn start<M: BatchModel>(
    model: Arc<M>,
    tok: Arc<Tokenizer>,
    mut cfg: EngineConfig,
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
    };
    std::thread::Builder::new()
        .name("glm5-engine".into())
        .spawn(move || sched.run(rx))
        .expect("spawning the engine thread");
    handle
}

pub(crate) struct Scheduler<M: BatchModel> {
    model: Arc<M>,
    tok: Arc<Tokenizer>,
    cfg: EngineConfig,
    waiting: VecDeque<Seq<M::Cache>>,
    running: Vec<Seq<M::Cache>>,
    /// Finished sequences' caches, least recently used first: (tokens in the cache, cache).
    prefix: Vec<(Vec<u32>, M::Cache)>,
    /// Long prefixes on disk.
    disk: Option<DiskPrefixes>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    /// Cleared when the engine thread ends.
    alive: Arc<AtomicBool>,
}

impl<M: BatchModel> Scheduler<M> {
    /// Serve requests until every handle is gone. A panic inside a step (a bug, or a fault the
    /// model code did not turn into an error) fails every request in flight or waiting with an
    /// error event, marks the engine dead (`EngineHandle::alive`) and ends the thread; later
    /// submissions get `EngineStopped`.
    fn run(&mut self, rx: mpsc::Receiver<Submitted>) {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve(&rx)));
        self.alive.store(false, Ordering::SeqCst);
        if let Err(panic) = caught {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            let msg = format!("the engine failed ({what}); the server must be restarted");
            eprintln!("glm5: {msg}");
            let pending: Vec<_> = rx.try_iter().map(Seq::<M::Cache>::new).collect();
            for s in self
                .running
                .drain(..)
                .chain(self.waiting.drain(..))
                .chain(pending)
            {
                let _ = s.tx.send(Event::Error(msg.clone()));
            }
            self.queued.store(0, Ordering::SeqCst);
            self.metrics.set_gauges(0, 0);
        }
    }

    fn serve(&mut self, rx: &mpsc::Receiver<Submitted>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(s) => self.waiting.push_back(Seq::new(s)),
                    Err(_) => return,
                }
            }
            while let Ok(s) = rx.try_recv() {
                self.waiting.push_back(Seq::new(s));
            }
            self.step();
            self.metrics
                .set_gauges(self.waiting.len(), self.running.len());
        }
    }

    /// One scheduling step: drop cancelled sequences, admit, run one batched forward, emit.
    pub(crate) fn step(&mut self) {
        self.drop_cancelled();
        self.admit();
        self.preempt_over_budget();
        self.metrics
            .set_gauges(self.waiting.len(), self.running.len());
        if self.running.is_empty() {
            return;
        }
        // Work: decode tokens first (one each), then prompt chunks within the prefill budget.
        let mut budget = self.cfg.prefill_chunk;
        let mut work: Vec<(usize, usize, usize)> = Vec::new(); // (running index, from, to)
        for (i, s) in self.running.iter().enumerate() {
            let have = M::cache_len(s.cache.as_ref().expect("running sequences hold a cache"));
            if s.tokens.len() - have == 1 {
                work.push((i, have, have + 1));
            }
        }
        for (i, s) in self.running.iter().enumerate() {
            let have = M::cache_len(s.cache.as_ref().expect("running"));
            let left = s.tokens.len() - have;
            if left > 1 && budget > 0 {
                let take = left.min(budget);
                budget -= take;
                work.push((i, have, have + take));
            }
        }
        if work.is_empty() {
            return;
        }
        work.sort_unstable();
        // A decode piece carries the sequence's drafts after its token; all their rows come back.
        let pieces: Vec<Vec<u32>> = work
            .iter()
            .map(|&(i, from, to)| {
                let s = &self.running[i];
                let mut p = s.tokens[from..to].to_vec();
                if to == s.tokens.len() {
                    p.extend_from_slice(&s.drafts);
                }
                p
            })
            .collect();
        let rows: Vec<usize> = work
            .iter()
            .zip(&pieces)
            .map(|(&(_, from, to), p)| 1 + p.len() - (to - from))
            .collect();
        let t0 = Instant::now();
        let result = {
            let mut slots: Vec<Option<&mut M::Cache>> =
                self.running.iter_mut().map(|s| s.cache.as_mut()).collect();
            let mut batch: Vec<(&[u32], &mut M::Cache)> = Vec::with_capacity(work.len());
            for (&(i, _, _), piece) in work.iter().zip(&pieces) {
                let cache = slots[i].take().expect("one piece of work per sequence");
                batch.push((&piece[..], cache));
            }
            self.model.forward(&mut batch, &rows)
        };
        self.metrics
            .observe_batch(work.len(), pieces.iter().map(Vec::len).sum(), t0.elapsed());
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                self.fail(work.iter().map(|w| w.0).collect(), &e.to_string());
                return;
            }
        };
        // Sample where a sequence's piece reached its last token, row by row while the drafts
        // are accepted; roll the cache back past the first rejected draft.
        let v = self.model.vocab_size();
        let mut finished = Vec::new();
        for (&(i, _, to), all) in work.iter().zip(logits) {
            if to != self.running[i].tokens.len() {
                continue;
            }
            let drafts = std::mem::take(&mut self.running[i].drafts);
            let mut accepted = 0;
            for (j, row) in all.chunks_exact(v).enumerate() {
                let draft = drafts.get(j).copied();
                if let Some(done) = self.advance(i, row, draft) {
                    finished.push((i, done));
                    break;
                }
                if draft.is_none() || self.running[i].tokens.last() != draft.as_ref() {
                    break;
                }
                accepted += 1;
            }
            if !drafts.is_empty() {
                let s = &mut self.running[i];
                let keep = s.tokens.len() - 1;
                M::truncate(s.cache.as_mut().expect("running"), keep);
                let m = &self.metrics;
                m.spec_steps_total.fetch_add(1, Ordering::Relaxed);
                m.spec_draft_tokens_total
                    .fetch_add(drafts.len(), Ordering::Relaxed);
                m.spec_accepted_tokens_total
                    .fetch_add(accepted, Ordering::Relaxed);
            }
        }
        // Draft for the sequences that go on; a failed draft leaves their caches unknown.
        let mut failed: Vec<(usize, String)> = Vec::new();
        if self.cfg.draft > 0 {
            let drafting: Vec<usize> = work
                .iter()
                .map(|w| w.0)
                .filter(|i| !finished.iter().any(|f| f.0 == *i))
                .collect();
            if let Err(e) = self.draft(&drafting) {
                failed = drafting.into_iter().map(|i| (i, e.to_string())).collect();
            }
        }
        let mut gone: Vec<(usize, std::result::Result<FinishReason, String>)> = finished
            .into_iter()
            .map(|(i, f)| (i, Ok(f)))
            .chain(failed.into_iter().map(|(i, e)| (i, Err(e))))
            .collect();
        gone.sort_unstable_by_key(|g| std::cmp::Reverse(g.0));
        for (i, end) in gone {
            let s = self.running.remove(i);
            match end {
                Ok(finish) => self.finish(s, finish),
                Err(msg) => {
                    let _ = s.tx.send(Event::Error(msg));
                }
            }
        }
    }

    /// The caches of these running sequences are in an unknown state: fail them.
    fn fail(&mut self, mut failed: Vec<usize>, msg: &str) {
        failed.sort_unstable_by(|a, b| b.cmp(a));
        for i in failed {
            let s = self.running.remove(i);
            let _ = s.tx.send(Event::Error(msg.to_string()));
        }
    }

    /// Draft the next tokens of running sequences `idx` (those now decoding; the others, mid
    /// prompt, only bring the draft state up to date).
    fn draft(&mut self, idx: &[usize]) -> Result<()> {
        let (k, ctx) = (self.cfg.draft, self.cfg.ctx);
        let mut batch: Vec<(&[u32], &mut M::Cache, usize)> = Vec::with_capacity(idx.len());
        let mut order = Vec::with_capacity(idx.len());
        for s in pick_mut(&mut self.running, idx.iter().copied()) {
            let cache = s.cache.as_mut().expect("running");
            let decoding = s.tokens.len() == M::cache_len(cache) + 1;
            let room = (s
                .req
                .max_tokens
                .saturating_sub(s.tokens.len() - s.req.prompt.len()))
            .saturating_sub(1)
            .min(ctx.saturating_sub(s.tokens.len() + 1));
            let k = if decoding { k.min(room) } else { 0 };
            batch.push((&s.tokens[..], cache, k));
            order.push(&mut s.drafts);
        }
        let drafts = self.model.draft(&mut batch)?;
        drop(batch);
        for (slot, d) in order.into_iter().zip(drafts) {
            *slot = d;
        }
        Ok(())
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|s| !s.tx.is_closed());
        let gone = before - self.waiting.len();
        self.queued.fetch_sub(gone, Ordering::SeqCst);
        // A client that hangs up before its request is admitted is cancelled too.
        self.metrics
            .cancelled_total
            .fetch_add(gone, Ordering::Relaxed);
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].tx.is_closed() {
                let s = self.running.remove(i);
                self.metrics.cancelled_total.fetch_add(1, Ordering::Relaxed);
                self.keep_prefix(s);
            } else {
                i += 1;
            }
        }
    }

    /// KV tokens the running sequences hold, plus what they compute this step at most.
    fn kv_in_use(&self) -> usize {
        self.running
            .iter()
            .map(|s| {
                s.tokens.len().max(s.cache.as_ref().map_or(0, M::cache_len)) + 1 + s.drafts.len()
            })
            .sum()
    }

    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_seqs {
            let Some(s) = self.waiting.front() else { break };
            // Admit while the budget holds its tokens so far (optimistic, like vLLM: decode
            // growth is handled by preemption).
            if !self.running.is_empty()
                && self.kv_in_use() + s.tokens.len() + 1 > self.cfg.kv_budget_tokens
            {
                break;
            }
            let mut s = self.waiting.pop_front().expect("front exists");
            self.queued.fetch_sub(1, Ordering::SeqCst);
            let (mut cache, hit) = self.lookup_prefix(&s.tokens);
            // Its final length: the prompt, every token it may generate, a verify step's drafts.
            M::reserve(
                &mut cache,
                s.req.prompt.len() + s.req.max_tokens + self.cfg.draft,
            );
            if s.generated() == 0 {
                s.usage.cached_tokens = hit;
            }
            if !s.admitted {
                s.admitted = true;
                let _ = s.tx.send(Event::Admitted { cached_tokens: hit });
            }
            s.cache = Some(cache);
            self.running.push(s);
        }
    }

    /// While the running sequences would outgrow the KV budget, send the most recently admitted
    /// back to the front of the queue without its cache (it is recomputed when readmitted).
    fn preempt_over_budget(&mut self) {
        while self.running.len() > 1 && self.kv_in_use() > self.cfg.kv_budget_tokens {
            let mut s = self.running.pop().expect("more than one");
            s.cache = None;
            s.drafts.clear();
            self.metrics.preempted_total.fetch_add(1, Ordering::Relaxed);
            self.queued.fetch_add(1, Ordering::SeqCst);
            self.waiting.push_front(s);
        }
    }

    /// A cache for `tokens`: the longest cached prefix (at most all but the last token, whose
    /// logits are needed), or an empty one. Returns it and how many tokens it holds.
    fn lookup_prefix(&mut self, tokens: &[u32]) -> (M::Cache, usize) {
        let best = self
            .prefix
            .iter()
            .enumerate()
            .map(|(i, (t, _))| {
                let common = t.iter().zip(tokens).take_while(|(a, b)| a == b).count();
                (common.min(tokens.len() - 1), i)
            })
            .max();
        let in_ram = best.map_or(0, |(c, _)| c);
        if let Some(hit) = self.lookup_disk(tokens, in_ram) {
            return hit;
        }
        match best {
            Some((common, i)) if common > 0 => {
                let entry = self.prefix.remove(i);
                let mut cache = M::fork(&entry.1);
                M::truncate(&mut cache, common);
                self.prefix.push(entry); // most recently used
                self.metrics
                    .prefix_hit_tokens_total
                    .fetch_add(common, Ordering::Relaxed);
                (cache, common)
            }
            _ => (self.model.new_cache(self.cfg.draft > 0), 0),
        }
    }

    /// A cache read from disk when it holds more of `tokens` than the RAM cache (`in_ram`).
    fn lookup_disk(&mut self, tokens: &[u32], in_ram: usize) -> Option<(M::Cache, usize)> {
        let disk = self.disk.as_mut()?;
        let (i, common) = disk.best(tokens)?;
        let common = common.min(tokens.len() - 1);
        if common <= in_ram {
            return None;
        }
        let model = self.model.clone();
        let mut cache = disk.load(i, |r| model.read_cache(r))?;
        M::truncate(&mut cache, common);
        for counter in [
            &self.metrics.prefix_hit_tokens_total,
            &self.metrics.prefix_disk_hit_tokens_total,
        ] {
            counter.fetch_add(common, Ordering::Relaxed);
        }
        Some((cache, common))
    }

    fn keep_prefix(&mut self, s: Seq<M::Cache>) {
        let Some(cache) = s.cache else { return };
        let len = M::cache_len(&cache);
        if let Some(disk) = self.disk.as_mut() {
            let tokens = &s.tokens[..len.min(s.tokens.len())];
            if disk.wants(tokens) {
                // A copy for the writer thread (the cache itself goes on to the RAM cache).
                let copy = M::fork(&cache);
                let bytes = (len * self.model.cache_bytes_per_token()) as u64;
                disk.store(
                    tokens.to_vec(),
                    bytes,
                    Box::new(move |w| M::write_cache(&copy, w)),
                );
            }
        }
        if self.cfg.prefix_cache_tokens == 0 || len == 0 || len > self.cfg.prefix_cache_tokens {
            return;
        }
        let mut tokens = s.tokens;
        tokens.truncate(len);
        // An entry that this one extends is redundant.
        self.prefix
            .retain(|(t, _)| !(t.len() <= tokens.len() && tokens[..t.len()] == t[..]));
        self.prefix.push((tokens, cache));
        while self.prefix.iter().map(|(t, _)| t.len()).sum::<usize>() > self.cfg.prefix_cache_tokens
        {
            self.prefix.remove(0);
        }
    }

    /// Sample the next token of running sequence `i` (verifying `draft`, if any); `Some` when
    /// it finished.
    fn advance(&mut self, i: usize, logits: &[f32], draft: Option<u32>) -> Option<FinishReason> {
        let tok = self.tok.clone();
        let ctx = self.cfg.ctx;
        let s = &mut self.running[i];
        if s.generated() >= s.req.max_tokens {
            return Some(FinishReason::Length);
        }
        let t = match &mut s.req.constraint {
            None => s.sampler.verify(logits, draft),
            Some(c) => {
                let mut masked = logits.to_vec();
                let t = c
                    .mask(&mut masked, &s.req.stop_token_ids)
                    .map(|()| s.sampler.verify(&masked, draft))
                    .and_then(|t| c.accept(t, &s.req.stop_token_ids).map(|()| t));
                match t {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = s.tx.send(Event::Error(e.to_string()));
                        return Some(FinishReason::Cancelled);
                    }
                }
            }
        };
        let now = Instant::now();
        match s.last_token {
            None => self.metrics.observe_ttft(now - s.arrived),
            Some(prev) => self.metrics.observe_itl(now - prev),
        }
        s.last_token = Some(now);
        self.metrics
            .generation_tokens_total
            .fetch_add(1, Ordering::Relaxed);
        if s.req.stop_token_ids.contains(&t) {
            return Some(FinishReason::StopToken(t));
        }
        s.tokens.push(t);
        s.usage.completion_tokens += 1;
        let logprob = s.req.logprobs.map(|k| token_logprob(logits, t, k));
        let piece = match s.detok.push(&tok, t) {
            Ok(p) => p,
            Err(e) => {
                let _ = s.tx.send(Event::Error(e.to_string()));
                return Some(FinishReason::Cancelled);
            }
        };
        let (show, hit) = s.stops.push(&piece);
        let _ = s.tx.send(Event::Token {
            id: t,
            text: show,
            logprob,
        });
        if let Some(stop) = hit {
            return Some(FinishReason::StopString(stop));
        }
        if s.generated() >= s.req.max_tokens {
            return Some(FinishReason::Length);
        }
        if s.tokens.len() >= ctx {
            return Some(FinishReason::ContextFull);
        }
        None
    }

    fn finish(&mut self, mut s: Seq<M::Cache>, finish: FinishReason) {
        if !matches!(
            finish,
            FinishReason::StopString(_) | FinishReason::Cancelled
        ) {
            let rest = s.stops.end(&s.detok.flush(&self.tok).unwrap_or_default());
            if !rest.is_empty() {
                let _ = s.tx.send(Event::Text(rest));
            }
        }
        self.metrics
            .prompt_tokens_total
            .fetch_add(s.usage.prompt_tokens, Ordering::Relaxed);
        let _ = s.tx.send(Event::Done(s.usage, finish));
        self.keep_prefix(s);
    }
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
