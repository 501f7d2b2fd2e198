//! One sequence's state between engine steps.

use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::{Event, Request, Submitted, TokenLogprob, Usage};
use crate::generate::StopMatcher;
use crate::sampler::Sampler;
use crate::tokenizer::Detokenizer;

pub(super) struct Seq<C> {
    pub req: Request,
    /// Prompt, then generated tokens.
    pub tokens: Vec<u32>,
    /// `None` while waiting (never admitted, or preempted).
    pub cache: Option<C>,
    pub sampler: Sampler,
    pub detok: Detokenizer,
    pub stops: StopMatcher,
    pub tx: UnboundedSender<Event>,
    pub usage: Usage,
    pub arrived: Instant,
    pub last_token: Option<Instant>,
    /// Tokens drafted to follow `tokens`, verified by the next step.
    pub drafts: Vec<u32>,
    /// `Event::Admitted` was sent.
    pub admitted: bool,
    /// Log-probability of each prompt token given those before it, once computed
    /// (`Request::prompt_logprobs`).
    pub prompt_lp: Vec<Option<TokenLogprob>>,
    /// Routing of every computed position, `[positions, layers, experts per token]`
    /// (`Request::routed_experts`).
    pub routes: Vec<u32>,
}

impl<C> Seq<C> {
    pub fn new(sub: Submitted) -> Seq<C> {
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
            prompt_lp: if req.prompt_logprobs.is_some() {
                vec![None; req.prompt.len()]
            } else {
                Vec::new()
            },
            req,
            cache: None,
            detok: Detokenizer::showing_hidden(show_hidden),
            tx,
            arrived,
            last_token: None,
            drafts: Vec::new(),
            admitted: false,
            routes: Vec::new(),
        }
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.req.prompt.len()
    }

    /// The first position whose logits the prompt's log-probabilities need.
    pub fn first_logprob_row(&self) -> Option<usize> {
        self.req.prompt_logprobs.map(|s| s.max(1) - 1)
    }

    /// Positions a prefix-cache hit may cover: what this request reports (prompt
    /// log-probabilities, routing) must be computed, not read back.
    pub fn reuse_limit(&self) -> usize {
        let lp = self.first_logprob_row().unwrap_or(usize::MAX);
        let routes = self.req.routed_experts.unwrap_or(usize::MAX);
        lp.min(routes)
    }
}
