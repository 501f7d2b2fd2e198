//! The model folder's `tokenizer.json` through the `tokenizers` crate (pure-Rust regex),
//! encoding that keeps untrusted text from becoming control tokens, and incremental
//! detokenization that never emits half a UTF-8 character nor a hidden control token.
//!
//! Untrusted text (a user's message, a tool's result) may spell a control token
//! (`<|assistant|>`, `<tool_call>`). Encoded as transformers does, it would become that token and
//! could forge a turn or a call. So such text is *guarded* before the chat template renders it
//! (`guard`: a marker string is put inside each control token it spells), and the rendered prompt
//! is encoded by `encode_guarded`: control tokens that are whole become their ids, everything
//! between them (markers removed) is encoded as plain text, as `split_special_tokens=True` does.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::constrain::{Grammars, LazyGrammars};
use crate::error::{Error, Result};

/// Control tokens the output parser reads (reasoning and tool-call markup): they stay in the
/// generated text; the other control tokens a model emits are hidden from it.
pub const OUTPUT_MARKUP: [&str; 8] = [
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
];

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with special tokens encoded as the text they spell.
    plain: Arc<tokenizers::Tokenizer>,
    grammars: LazyGrammars,
    /// Added tokens (id, text), matched leftmost-longest as the `tokenizers` crate does.
    added: Vec<(u32, String)>,
    added_matcher: AhoCorasick,
    /// Special tokens that generated text leaves out (all but `OUTPUT_MARKUP`).
    hidden: HashSet<u32>,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({})", self.path.display())
    }
}

impl Tokenizer {
    /// Load `tokenizer.json` (a file, or a model folder holding one).
    pub fn from_path(path: &Path) -> Result<Tokenizer> {
        let path = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Tokenizer::from_bytes(&bytes, &path)
    }

    /// A `tokenizer.json` held in memory (a GGUF's `tokenizer.huggingface.json`); `origin`
    /// names it in messages.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer {
            path: origin.to_path_buf(),
            reason: format!("not a valid tokenizer.json: {e}"),
        })?;
        Tokenizer::new(inner, origin)
    }

    fn new(inner: tokenizers::Tokenizer, origin: &Path) -> Result<Tokenizer> {
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        let mut added: Vec<(u32, String)> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, t.content))
            .filter(|(_, t)| !t.is_empty())
            .collect();
        added.sort();
        let hidden = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && !OUTPUT_MARKUP.contains(&t.content.as_str()))
            .map(|(id, _)| id)
            .collect();
        let added_matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(added.iter().map(|(_, t)| t))
            .map_err(|e| Error::Tokenizer {
                path: origin.to_path_buf(),
                reason: format!("its added tokens cannot be matched: {e}"),
            })?;
        Ok(Tokenizer {
            inner,
            plain: Arc::new(plain),
            grammars: LazyGrammars::default(),
            added,
            added_matcher,
            hidden,
            path: origin.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids of `text`. Special tokens written in the text (`<|user|>`) become their ids,
    /// as `tokenizer.encode(text, add_special_tokens=False)` does in transformers; no BOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| self.err(format!("encoding failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` with every special token it spells encoded as plain text.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .plain
            .encode_fast(text, false)
            .map_err(|e| self.err(format!("encoding failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `text` with `marker` put after the first character of every added token it spells, except
    /// those in `keep`, so that none of them is read as a control token by `encode_guarded`.
    pub fn guard(&self, text: &str, marker: &str, keep: &[&str]) -> String {
        let mut text = text.to_string();
        // A broken token may leave a shorter one inside it (`</x>` holding `x>`): go again until
        // no token is left whole. Each round breaks every match it finds, so this ends.
        loop {
            let mut out = String::with_capacity(text.len());
            let mut at = 0;
            for m in self.added_matcher.find_iter(&text) {
                let token = &text[m.start()..m.end()];
                if keep.contains(&token) {
                    continue;
                }
                let first = token.chars().next().map_or(0, char::len_utf8);
                out.push_str(&text[at..m.start() + first]);
                out.push_str(marker);
                at = m.start() + first;
            }
            if at == 0 {
                return text;
            }
            out.push_str(&text[at..]);
            text = out;
        }
    }

    /// Token ids of a rendered prompt whose untrusted parts went through `guard(.., marker, ..)`:
    /// the added tokens written whole are their ids; the text between them, with `marker`
    /// removed, is encoded as plain text. Equals `encode` on text that holds no marker.
    pub fn encode_guarded(&self, text: &str, marker: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut at = 0;
        let plain = |seg: &str, ids: &mut Vec<u32>| -> Result<()> {
            if !seg.is_empty() {
                ids.extend(self.encode_plain(&seg.replace(marker, ""))?);
            }
            Ok(())
        };
        for m in self.added_matcher.find_iter(text) {
            plain(&text[at..m.start()], &mut ids)?;
            ids.push(self.added[m.pattern().as_usize()].0);
            at = m.end();
        }
        plain(&text[at..], &mut ids)?;
        Ok(ids)
    }

    /// The bytes a token stands for, even when they are part of a UTF-8 character (where
    /// `decode(&[id])` gives U+FFFD): byte-level BPE pieces are mapped back through GPT-2's
    /// byte alphabet; added tokens are their text.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let piece = self.id_to_token(id).unwrap_or_default();
        if self.is_added(id) {
            return piece.into_bytes();
        }
        let bytes: Option<Vec<u8>> = piece.chars().map(byte_of_char).collect();
        bytes.unwrap_or_else(|| self.decode(&[id]).unwrap_or_default().into_bytes())
    }

    /// An added token (a control token, or text the vocabulary adds whole).
    pub fn is_added(&self, id: u32) -> bool {
        self.added.binary_search_by_key(&id, |(i, _)| *i).is_ok()
    }

    /// The grammar compiler for this vocabulary (built on first use).
    pub fn grammars(&self) -> Result<&Grammars> {
        self.grammars
            .get(|| Grammars::new(self, self.plain.clone()))
    }

    /// A control token that generated text leaves out (`<|assistant|>`, `</tool_response>`;
    /// not the reasoning and tool-call markup the output parser reads).
    pub fn is_hidden(&self, id: u32) -> bool {
        self.hidden.contains(&id)
    }

    /// Text of `ids`, special tokens included (they carry `</think>` and tool-call markup).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| self.err(format!("decoding failed: {e}")))
    }

    /// The id of a token written as text (`"<|user|>"`), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn err(&self, reason: String) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            reason,
        }
    }
}

/// The byte that GPT-2's byte-level alphabet writes as `c`: printable Latin-1 bytes stand for
/// themselves, the other 68 are shifted to U+0100..U+0143 in byte order.
fn byte_of_char(c: char) -> Option<u8> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let c = c as u32;
    if c < 0x100 {
        return printable(c).then_some(c as u8);
    }
    let n = (c - 0x100) as usize;
    (0u32..0x100)
        .filter(|&b| !printable(b))
        .nth(n)
        .map(|b| b as u8)
}

/// Streams text out of a growing token sequence. Byte-level BPE tokens can end inside a UTF-8
/// character; decoding a window of recent tokens and holding back text that ends in U+FFFD keeps
/// every emitted piece valid, and the concatenation of the pieces equals `decode(all ids)`.
#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
    /// Show the control tokens that `Tokenizer::is_hidden` names.
    show_hidden: bool,
    ids: Vec<u32>,
    /// Start of the window that is decoded for context.
    prefix: usize,
    /// End of what has been emitted.
    read: usize,
    /// `decode(ids[prefix..read])`, kept so each push decodes once.
    prefix_text: String,
}

impl Detokenizer {
    pub fn new() -> Detokenizer {
        Detokenizer::default()
    }

    /// `show`: keep the control tokens that `Tokenizer::is_hidden` names in the text.
    pub fn showing_hidden(show: bool) -> Detokenizer {
        Detokenizer {
            show_hidden: show,
            ..Detokenizer::default()
        }
    }

    /// Add one token; return the text that is now safe to show (possibly empty; always empty
    /// for a hidden control token unless `show_hidden`).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        if !self.show_hidden && tok.is_hidden(id) {
            return Ok(String::new());
        }
        self.ids.push(id);
        let now = tok.decode(&self.ids[self.prefix..])?;
        let before = &self.prefix_text;
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.starts_with(before.as_str())
        {
            let piece = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            self.prefix_text = tok.decode(&self.ids[self.prefix..self.read])?;
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back (an incomplete character at the very end comes out as U+FFFD).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let now = tok.decode(&self.ids[self.prefix..])?;
        let before = std::mem::take(&mut self.prefix_text);
        self.prefix = self.read;
        self.read = self.ids.len();
        self.prefix_text = tok.decode(&self.ids[self.prefix..self.read])?;
        Ok(match now.strip_prefix(&before) {
            Some(rest) => rest.to_string(),
            None => now,
        })
    }
}
