//! The engine thread's loop and one scheduling step.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use super::control::WeightLoader;
use super::seq::Seq;
use super::{token_logprob, EngineConfig, Event, Msg, Shared};
use crate::batch::{pick_mut, BatchModel};
use crate::error::Result;
use crate::generate::FinishReason;
use crate::metrics::Metrics;
use crate::prefix_disk::DiskPrefixes;
use crate::tokenizer::Tokenizer;

pub(super) struct Scheduler<M: BatchModel> {
    pub model: Arc<M>,
    pub tok: Arc<Tokenizer>,
    pub cfg: EngineConfig,
    pub waiting: VecDeque<Seq<M::Cache>>,
    pub running: Vec<Seq<M::Cache>>,
    /// Finished sequences' caches, least recently used first: (tokens in the cache, cache).
    pub prefix: Vec<(Vec<u32>, M::Cache)>,
    /// Long prefixes on disk.
    pub disk: Option<DiskPrefixes>,
    pub queued: Arc<AtomicUsize>,
    pub metrics: Arc<Metrics>,
    /// Cleared when the engine thread ends.
    pub alive: Arc<AtomicBool>,
    pub shared: Arc<Shared>,
    pub loader: Option<WeightLoader<M>>,
    /// No steps run while paused (`Control::Pause`).
    pub paused: bool,
}

impl<M: BatchModel> Scheduler<M> {
    /// Serve requests until every handle is gone. A panic inside a step (a bug, or a fault the
    /// model code did not turn into an error) fails every request in flight or waiting with an
    /// error event, marks the engine dead (`EngineHandle::alive`) and ends the thread; later
    /// submissions get `EngineStopped`.
    pub fn run(&mut self, rx: mpsc::Receiver<Msg>) {
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
            let pending: Vec<_> = rx
                .try_iter()
                .filter_map(|m| match m {
                    Msg::Submit(s) => Some(Seq::<M::Cache>::new(*s)),
                    Msg::Control(_, reply) => {
                        let _ = reply.send(Err(msg.clone()));
                        None
                    }
                })
                .collect();
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

    fn serve(&mut self, rx: &mpsc::Receiver<Msg>) {
        loop {
            if self.paused || (self.running.is_empty() && self.waiting.is_empty()) {
                match rx.recv() {
                    Ok(m) => self.receive(m),
                    Err(_) => return,
                }
            }
            while let Ok(m) = rx.try_recv() {
                self.receive(m);
            }
            if !self.paused {
                self.step();
            }
            self.metrics
                .set_gauges(self.waiting.len(), self.running.len());
        }
    }

    fn receive(&mut self, m: Msg) {
        match m {
            Msg::Submit(s) => self.waiting.push_back(Seq::new(*s)),
            Msg::Control(c, reply) => {
                let _ = reply.send(self.control(c));
            }
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
        // Rows whose logits come back: the last (and the drafts'), or from the first prompt
        // position whose next token's log-probability is wanted.
        let rows: Vec<usize> = work
            .iter()
            .zip(&pieces)
            .map(|(&(i, from, to), p)| {
                let drafts = p.len() - (to - from);
                match self.running[i].logprob_rows(from, to) {
                    Some(first) => to - first + drafts,
                    None => 1 + drafts,
                }
            })
            .collect();
        let routed = work
            .iter()
            .any(|w| self.running[w.0].req.routed_experts.is_some());
        let t0 = Instant::now();
        let result = {
            let mut slots: Vec<Option<&mut M::Cache>> =
                self.running.iter_mut().map(|s| s.cache.as_mut()).collect();
            let mut batch: Vec<(&[u32], &mut M::Cache)> = Vec::with_capacity(work.len());
            for (&(i, _, _), piece) in work.iter().zip(&pieces) {
                let cache = slots[i].take().expect("one piece of work per sequence");
                batch.push((&piece[..], cache));
            }
            if routed {
                self.model.forward_routed(&mut batch, &rows)
            } else {
                self.model
                    .forward(&mut batch, &rows)
                    .map(|l| (l, Vec::new()))
            }
        };
        self.metrics
            .observe_batch(work.len(), pieces.iter().map(Vec::len).sum(), t0.elapsed());
        let (logits, routes) = match result {
            Ok(r) => r,
            Err(e) => {
                self.fail(work.iter().map(|w| w.0).collect(), &e.to_string());
                return;
            }
        };
        for ((&(i, from, _), r), piece) in work.iter().zip(routes).zip(&pieces) {
            let s = &mut self.running[i];
            if s.req.routed_experts.is_some() && !r.is_empty() {
                let per = r.len() / piece.len();
                s.routes.truncate(from * per);
                s.routes.extend_from_slice(&r);
            }
        }
        // Sample where a sequence's piece reached its last token, row by row while the drafts
        // are accepted; roll the cache back past the first rejected draft.
        let v = self.model.vocab_size();
        let mut finished = Vec::new();
        for (&(i, from, to), all) in work.iter().zip(logits) {
            if let Some(first) = self.running[i].logprob_rows(from, to) {
                self.running[i].record_prompt_logprobs(first, to, &all, v);
            }
            if to != self.running[i].tokens.len() {
                continue;
            }
            let drafts = std::mem::take(&mut self.running[i].drafts);
            let sampled = &all[all.len() - (1 + drafts.len()) * v..];
            let mut accepted = 0;
            for (j, row) in sampled.chunks_exact(v).enumerate() {
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
            let (mut cache, hit) = self.lookup_prefix(&s.tokens, s.reuse_limit());
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

    /// Sample the next token of running sequence `i` (verifying `draft`, if any); `Some` when
    /// it finished.
    fn advance(&mut self, i: usize, logits: &[f32], draft: Option<u32>) -> Option<FinishReason> {
        let tok = self.tok.clone();
        let ctx = self.cfg.ctx;
        let s = &mut self.running[i];
        if s.generated() >= s.req.max_tokens {
            return Some(FinishReason::Length);
        }
        let masked = match &mut s.req.constraint {
            None => None,
            Some(c) => {
                let mut masked = logits.to_vec();
                if let Err(e) = c.mask(&mut masked, &s.req.stop_token_ids) {
                    let _ = s.tx.send(Event::Error(e.to_string()));
                    return Some(FinishReason::Cancelled);
                }
                Some(masked)
            }
        };
        let logits = masked.as_deref().unwrap_or(logits);
        // The distribution sampled from, before the sampler records this token.
        let sampled = s.req.logprobs_sampled.then(|| s.sampler.scaled(logits));
        let t = s.sampler.verify(logits, draft);
        if let Some(c) = &mut s.req.constraint {
            if let Err(e) = c.accept(t, &s.req.stop_token_ids) {
                let _ = s.tx.send(Event::Error(e.to_string()));
                return Some(FinishReason::Cancelled);
            }
        }
        let logprob = s
            .req
            .logprobs
            .map(|k| token_logprob(sampled.as_deref().unwrap_or(logits), t, k));
        let now = Instant::now();
        match s.last_token {
            None => self.metrics.observe_ttft(now - s.arrived),
            Some(prev) => self.metrics.observe_itl(now - prev),
        }
        s.last_token = Some(now);
        self.metrics
            .generation_tokens_total
            .fetch_add(1, Ordering::Relaxed);
        let stop = s.req.stop_token_ids.contains(&t);
        if stop && !s.req.emit_stop_token {
            return Some(FinishReason::StopToken(t));
        }
        s.tokens.push(t);
        s.usage.completion_tokens += 1;
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
        if stop {
            return Some(FinishReason::StopToken(t));
        }
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

    pub(super) fn finish(&mut self, mut s: Seq<M::Cache>, finish: FinishReason) {
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
        if let Some(start) = s.req.prompt_logprobs {
            let lp = s.prompt_lp.get(start..).unwrap_or_default().to_vec();
            let _ = s.tx.send(Event::PromptLogprobs(lp));
        }
        if let Some(start) = s.req.routed_experts {
            let per = self.model.routing_shape().map_or(0, |(l, k)| l * k);
            let rows = (s.routes.len().checked_div(per).unwrap_or(0)).min(s.tokens.len() - 1);
            let routes = s.routes.get(start * per..rows * per).unwrap_or_default();
            let _ = s.tx.send(Event::Routes(routes.to_vec()));
        }
        let _ = s.tx.send(Event::Done(s.usage, finish));
        self.keep_prefix(s);
    }
}

impl<C> Seq<C> {
    /// The first position of `from..to` whose logits give a wanted prompt log-probability
    /// (that of the prompt token after it).
    fn logprob_rows(&self, from: usize, to: usize) -> Option<usize> {
        let first = self.first_logprob_row()?.max(from);
        let end = to.min(self.req.prompt.len().saturating_sub(1));
        (first < end).then_some(first)
    }

    /// Store the prompt log-probabilities from `all`, the logits of positions `first..` (at
    /// least up to `to`).
    fn record_prompt_logprobs(&mut self, first: usize, to: usize, all: &[f32], v: usize) {
        let end = to.min(self.req.prompt.len() - 1);
        let k = self.req.logprobs.unwrap_or(0);
        let temperature = self.req.params.temperature;
        for (p, row) in (first..end).zip(all.chunks_exact(v)) {
            let next = self.tokens[p + 1];
            let lp = if self.req.logprobs_sampled && temperature > 0.0 {
                let scaled: Vec<f32> = row.iter().map(|x| x / temperature).collect();
                token_logprob(&scaled, next, k)
            } else {
                token_logprob(row, next, k)
            };
            self.prompt_lp[p + 1] = Some(lp);
        }
    }
}
