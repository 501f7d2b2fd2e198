//! The generation loop of one sequence: prefill (reusing the cached prefix), then sample, detokenize
//! incrementally and stop on a stop token, a stop string, `max_tokens`, the context end or a cancel.

use std::time::Instant;

use glm5_model::Model;

use crate::batch::{BatchModel, SeqCache};

use crate::error::{Error, Result};
use crate::sampler::{Sampler, SamplingParams};
use crate::tokenizer::{Detokenizer, Tokenizer};

/// What the generation loop needs of a model: append tokens to its cache and return the logits of
/// the last one. A trait so that engine logic can be tested with a fake model.
pub trait LanguageModel {
    fn vocab_size(&self) -> usize;
    fn max_context(&self) -> usize;
    /// Tokens currently in the cache.
    fn cached(&self) -> &[u32];
    /// Drop cached positions from `len` on.
    fn truncate(&mut self, len: usize);
    /// Append `tokens` and return the logits `[vocab_size]` after the last one.
    fn extend(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Append `tokens` and return the logits after each, `[tokens.len(), vocab_size]`.
    fn extend_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Tokens to draft per step for speculative decoding (0: off).
    fn draft_len(&self) -> usize {
        0
    }
    /// Up to `k` proposed tokens to follow the cached tokens and `next`.
    fn draft(&mut self, _next: u32, _k: usize) -> Result<Vec<u32>> {
        Ok(Vec::new())
    }
}

/// A model with one sequence's KV cache, drafting `draft` tokens per step with the model's MTP
/// layer when that is above 0.
pub struct Session<'m> {
    pub model: &'m Model,
    pub cache: SeqCache,
    tokens: Vec<u32>,
    pub draft: usize,
}

impl<'m> Session<'m> {
    pub fn new(model: &'m Model) -> Session<'m> {
        Session {
            model,
            cache: SeqCache::new(model, false),
            tokens: Vec::new(),
            draft: 0,
        }
    }

    /// Speculative decoding with `k` drafted tokens per step (the model must hold its MTP
    /// layer).
    pub fn with_mtp(model: &'m Model, k: usize) -> Result<Session<'m>> {
        if model.mtp.is_none() {
            return Err(glm5_model::Error::NoMtpLayer.into());
        }
        let mut s = Session::new(model);
        s.cache = SeqCache::new(model, k > 0);
        s.draft = k;
        Ok(s)
    }
}

impl LanguageModel for Session<'_> {
    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }
    fn max_context(&self) -> usize {
        self.model.cfg.max_position_embeddings
    }
    fn cached(&self) -> &[u32] {
        &self.tokens
    }
    fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
        self.tokens.truncate(len);
    }
    fn extend(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.run(tokens, 1)
    }
    fn extend_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.run(tokens, tokens.len())
    }
    fn draft_len(&self) -> usize {
        self.draft
    }
    fn draft(&mut self, next: u32, k: usize) -> Result<Vec<u32>> {
        // `next` joins the sequence for the draft only (it is not in the cache yet).
        self.tokens.push(next);
        let out = BatchModel::draft(self.model, &mut [(&self.tokens, &mut self.cache, k)]);
        self.tokens.pop();
        Ok(out?.pop().unwrap_or_default())
    }
}

/// Tokens per forward pass of a long prompt (as `serve --prefill-chunk` defaults to, and
/// llama.cpp's `n_ubatch`): a pass's transient buffers grow with its rows, so chunks bound a
/// long prompt's peak memory. At 512 rows the weights are already read once per 512 tokens.
pub const PREFILL_CHUNK: usize = 512;

impl Session<'_> {
    /// Append `tokens`; the logits of the last `rows` of them, `[rows, vocab]` flattened.
    fn run(&mut self, tokens: &[u32], rows: usize) -> Result<Vec<f32>> {
        let first_wanted = tokens.len() - rows.min(tokens.len());
        let mut logits = Vec::new();
        for (i, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
            let (start, end) = (i * PREFILL_CHUNK, i * PREFILL_CHUNK + chunk.len());
            let r = end - first_wanted.clamp(start, end); // wanted rows in this chunk
            let mut out = BatchModel::forward(self.model, &mut [(chunk, &mut self.cache)], &[r])?;
            logits.extend(out.pop().unwrap_or_default());
            self.tokens.extend_from_slice(chunk);
            if self.cache.mtp && rows == 1 && tokens.len() > 1 {
                // A prompt: feed the MTP layer every pair whose next token is known now, so
                // its pending hidden states stay one row.
                BatchModel::draft(self.model, &mut [(&self.tokens, &mut self.cache, 0)])?;
            }
        }
        Ok(logits)
    }
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FinishReason {
    /// A stop token id was sampled (it is not part of the text).
    StopToken(u32),
    /// A stop string appeared (the text ends before it).
    StopString(String),
    /// `max_tokens` reached.
    Length,
    /// The model's context is full.
    ContextFull,
    /// The caller's callback asked to stop.
    Cancelled,
    /// Aborted by the server's control plane (`/abort_request`, a pause that aborts).
    Aborted,
}

#[derive(Debug, Clone)]
pub struct Output {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens that were already in the cache and not recomputed.
    pub cached_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    pub spec: SpecStats,
}

/// Speculative decoding's counts: verification steps, tokens drafted, drafts accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpecStats {
    pub steps: usize,
    pub drafted: usize,
    pub accepted: usize,
}

impl SpecStats {
    /// Tokens produced per verification step (accepted drafts plus the target's own token).
    pub fn acceptance_length(&self) -> f64 {
        if self.steps == 0 {
            return 0.0;
        }
        (self.accepted + self.steps) as f64 / self.steps as f64
    }
}

/// Holds back text that could be the start of a stop string, so a stop string is never shown.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Feed new text; returns the text safe to emit and the stop string hit, if any.
    pub fn push(&mut self, piece: &str) -> (String, Option<String>) {
        self.pending.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, s)) = hit {
            let out = self.pending[..at].to_string();
            let s = s.clone();
            self.pending.clear();
            return (out, Some(s));
        }
        // Longest suffix of `pending` that is a proper prefix of some stop string.
        let mut hold = 0;
        for (i, _) in self.pending.char_indices() {
            let suffix = &self.pending[i..];
            if self.stops.iter().any(|s| s.starts_with(suffix)) {
                hold = self.pending.len() - i;
                break;
            }
        }
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, None)
    }

    /// The held-back text once generation ended without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// At the end of generation: the detokenizer's last text `tail` plus whatever is held back,
    /// cut at a stop string if the tail completes one.
    pub fn end(&mut self, tail: &str) -> String {
        let (show, hit) = self.push(tail);
        if hit.is_some() {
            show
        } else {
            show + &self.finish()
        }
    }
}

/// Generate a continuation of `req.prompt`. `on_text` receives each new piece of text as soon as
/// it is safe to show and returns `false` to cancel.
pub fn generate(
    lm: &mut dyn LanguageModel,
    tok: &Tokenizer,
    req: &GenerateRequest,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Output> {
    req.params.validate()?;
    let ctx = lm.max_context();
    if req.prompt.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    if req.prompt.len() >= ctx {
        return Err(Error::PromptTooLong {
            prompt: req.prompt.len(),
            ctx,
        });
    }
    if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= lm.vocab_size()) {
        return Err(Error::BadParam {
            param: "prompt",
            reason: format!("token id {bad} is outside the vocabulary"),
        });
    }
    // Reuse the longest cached prefix, but recompute at least the last prompt token.
    let common = lm
        .cached()
        .iter()
        .zip(&req.prompt)
        .take_while(|(a, b)| a == b)
        .count()
        .min(req.prompt.len() - 1);
    lm.truncate(common);
    let t0 = Instant::now();
    let logits = lm.extend(&req.prompt[common..])?;
    let prefill_secs = t0.elapsed().as_secs_f64();

    let mut sampler = Sampler::new(req.params.clone(), &req.prompt);
    let mut detok = Detokenizer::new();
    let mut stops = StopMatcher::new(&req.stop);
    let (mut tokens, mut text) = (Vec::new(), String::new());
    let mut spec = SpecStats::default();
    // Rows of logits not yet sampled, each with the drafted token it verifies (if any).
    let mut rows: std::collections::VecDeque<(Vec<f32>, Option<u32>)> =
        [(logits, None)].into_iter().collect();
    let t1 = Instant::now();
    let finish = loop {
        if tokens.len() >= req.max_tokens {
            break FinishReason::Length;
        }
        let (logits, draft) = rows.pop_front().expect("a row is always queued");
        let t = sampler.verify(&logits, draft);
        if draft.is_some() && draft == Some(t) {
            spec.accepted += 1;
        }
        if req.stop_token_ids.contains(&t) {
            break FinishReason::StopToken(t);
        }
        tokens.push(t);
        let piece = detok.push(tok, t)?;
        let (show, hit) = stops.push(&piece);
        text.push_str(&show);
        if !show.is_empty() && !on_text(&show) {
            break FinishReason::Cancelled;
        }
        if let Some(s) = hit {
            break FinishReason::StopString(s);
        }
        let next_pos = req.prompt.len() + tokens.len();
        if next_pos + 1 > ctx {
            break FinishReason::ContextFull;
        }
        if draft == Some(t) && !rows.is_empty() {
            continue; // the next row already follows t
        }
        // Rejected (or nothing drafted): the cache holds every output token but t.
        rows.clear();
        lm.truncate(next_pos - 1);
        if tokens.len() < req.max_tokens {
            let room = (req.max_tokens - tokens.len() - 1).min(ctx - next_pos - 1);
            let k = lm.draft_len().min(room);
            let drafts = if k > 0 { lm.draft(t, k)? } else { Vec::new() };
            let mut feed = vec![t];
            feed.extend_from_slice(&drafts);
            let all = if drafts.is_empty() {
                lm.extend(&feed)?
            } else {
                spec.steps += 1;
                spec.drafted += drafts.len();
                lm.extend_all(&feed)?
            };
            let v = all.len() / feed.len();
            for (j, row) in all.chunks_exact(v).enumerate() {
                rows.push_back((row.to_vec(), drafts.get(j).copied()));
            }
        }
    };
    if !matches!(
        finish,
        FinishReason::StopString(_) | FinishReason::Cancelled
    ) {
        let rest = stops.end(&detok.flush(tok)?);
        text.push_str(&rest);
        if !rest.is_empty() {
            on_text(&rest);
        }
    }
    Ok(Output {
        tokens,
        text,
        finish,
        prompt_tokens: req.prompt.len(),
        cached_tokens: common,
        prefill_secs,
        decode_secs: t1.elapsed().as_secs_f64(),
        spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_held_back_and_cut() {
        let mut m = StopMatcher::new(&["</stop>".into(), "XY".into()]);
        assert_eq!(m.push("hello </st"), ("hello ".into(), None));
        assert_eq!(m.push("o"), (String::new(), None));
        assert_eq!(m.push("p> more"), (String::new(), Some("</stop>".into())));
        let mut m = StopMatcher::new(&["XY".into()]);
        assert_eq!(m.push("aX"), ("a".into(), None));
        assert_eq!(m.push("Z"), ("XZ".into(), None));
        assert_eq!(m.push("éX"), ("é".into(), None));
        assert_eq!(m.finish(), "X");
    }

    #[test]
    fn earliest_stop_string_wins() {
        let mut m = StopMatcher::new(&["bc".into(), "ab".into()]);
        assert_eq!(m.push("xabc"), ("x".into(), Some("ab".into())));
    }
}
