//! Constrained decoding through llguidance (the grammar engine llama.cpp, vLLM and SGLang use):
//! a grammar (Lark, with JSON Schemas inline) becomes a per-step mask over the vocabulary, so
//! only tokens that keep the output inside the grammar can be sampled.
//!
//! The vocabulary is handed to llguidance as each token's bytes (`Tokenizer::token_bytes`);
//! added tokens carry llguidance's special-token marker, so a grammar names them as `<think>`.

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Plain-text encoding of byte strings (what llguidance asks for when it needs tokens).
type Encode = Box<dyn Fn(&[u8]) -> Vec<u32> + Send + Sync>;

/// The vocabulary as llguidance sees it.
struct Vocab {
    trie: TokTrie,
    encode: Encode,
}

impl TokenizerEnv for Vocab {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        (self.encode)(s)
    }
}

/// Compiles grammars for one tokenizer (built once, on first use).
pub struct Grammars {
    factory: ParserFactory,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grammars")
    }
}

fn bad(reason: String) -> Error {
    Error::BadParam {
        param: "grammar",
        reason,
    }
}

impl Grammars {
    pub fn new(tok: &Tokenizer, plain: Arc<tokenizers::Tokenizer>) -> Result<Grammars> {
        let n = tok.vocab_size() as u32;
        let words: Vec<Vec<u8>> = (0..n)
            .map(|id| {
                let b = tok.token_bytes(id);
                if tok.is_added(id) {
                    [vec![TokTrie::SPECIAL_TOKEN_MARKER], b].concat()
                } else {
                    b
                }
            })
            .collect();
        // The end of a grammar is signalled by stop tokens, which the caller allows itself.
        let eos = tok.token_id("<|endoftext|>").unwrap_or(n - 1);
        let trie = TokTrie::from(&TokRxInfo::new(n, eos), &words);
        let encode = move |s: &[u8]| -> Vec<u32> {
            plain
                .encode_fast(String::from_utf8_lossy(s).as_ref(), false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        };
        let env: TokEnv = Arc::new(Vocab {
            trie,
            encode: Box::new(encode),
        });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| bad(format!("the vocabulary cannot be used for grammars: {e}")))?;
        factory.set_stderr_log_level(0);
        Ok(Grammars { factory })
    }

    /// A constraint from a Lark grammar.
    pub fn lark(&self, src: &str) -> Result<Constraint> {
        self.make(TopLevelGrammar::from_lark(src.to_string()))
    }

    /// A constraint to one JSON value valid against `schema`.
    pub fn json_schema(&self, schema: &serde_json::Value) -> Result<Constraint> {
        self.make(TopLevelGrammar::from_json_schema(schema.clone()))
    }

    fn make(&self, g: TopLevelGrammar) -> Result<Constraint> {
        let parser = self
            .factory
            .create_parser(g)
            .map_err(|e| bad(e.to_string()))?;
        let m = Matcher::new(Ok(parser));
        if let Some(e) = m.get_error() {
            return Err(bad(e));
        }
        Ok(Constraint { m })
    }
}

/// One sequence's grammar state.
pub struct Constraint {
    m: Matcher,
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Constraint {
            m: self.m.deep_clone(),
        }
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Constraint")
    }
}

impl Constraint {
    /// Set the logits of tokens the grammar does not allow next to -inf. Where the grammar may
    /// end, `stops` stay allowed; where it must end, only they are.
    pub fn mask(&mut self, logits: &mut [f32], stops: &[u32]) -> Result<()> {
        let fail = Error::Grammar;
        let accepting = self.m.is_accepting().map_err(|e| fail(e.to_string()))?;
        if self.m.is_stopped() {
            for (t, x) in logits.iter_mut().enumerate() {
                if !stops.contains(&(t as u32)) {
                    *x = f32::NEG_INFINITY;
                }
            }
            return Ok(());
        }
        let allowed = self.m.compute_mask().map_err(|e| fail(e.to_string()))?;
        // The model's vocabulary may be larger than the tokenizer's (padded embeddings, or a
        // borrowed tokenizer): ids past the grammar's vocabulary are never allowed.
        let known = allowed.len();
        for (t, x) in logits.iter_mut().enumerate() {
            let grammar_allows = t < known && allowed.is_allowed(t as u32);
            let t = t as u32;
            if !(grammar_allows || accepting && stops.contains(&t)) {
                *x = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advance past a sampled token (a stop token ends the grammar).
    pub fn accept(&mut self, token: u32, stops: &[u32]) -> Result<()> {
        if stops.contains(&token) || self.m.is_stopped() {
            return Ok(());
        }
        self.m
            .consume_token(token)
            .map_err(|e| Error::Grammar(e.to_string()))
    }
}

/// `Grammars` for a tokenizer, built on first use.
#[derive(Default)]
pub(crate) struct LazyGrammars(OnceLock<std::result::Result<Grammars, String>>);

impl LazyGrammars {
    pub(crate) fn get(&self, build: impl FnOnce() -> Result<Grammars>) -> Result<&Grammars> {
        self.0
            .get_or_init(|| build().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| bad(e.clone()))
    }
}
