//! The model folder's `tokenizer.json` through the `tokenizers` crate (pure-Rust regex), and
//! incremental detokenization that never emits half a UTF-8 character.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
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
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            reason: format!("not a valid tokenizer.json: {e}"),
        })?;
        Ok(Tokenizer { inner, path })
    }

    /// A `tokenizer.json` held in memory (a GGUF's `tokenizer.huggingface.json`); `origin`
    /// names it in messages.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer {
            path: origin.to_path_buf(),
            reason: format!("not a valid tokenizer.json: {e}"),
        })?;
        Ok(Tokenizer {
            inner,
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

/// Streams text out of a growing token sequence. Byte-level BPE tokens can end inside a UTF-8
/// character; decoding a window of recent tokens and holding back text that ends in U+FFFD keeps
/// every emitted piece valid, and the concatenation of the pieces equals `decode(all ids)`.
#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
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

    /// Add one token; return the text that is now safe to show (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
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
