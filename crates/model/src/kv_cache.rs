//! The compressed KV cache: per layer only the normalised latent (`kv_lora_rank`), the roped
//! shared key (`qk_rope_head_dim`) and, for layers with their own indexer, the indexer key
//! (`index_head_dim`). K and V are re-expanded from the latent when attention needs them.

use std::io::{self, Read, Write};

use glm5_kernels::rows::{RowFormat, Rows};

use crate::config::Config;

/// Storage formats of the cache: `kv` for the latent and rope key rows, `index` for the
/// indexer keys (8-bit allowed there only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvFormat {
    pub kv: RowFormat,
    pub index: RowFormat,
}

impl KvFormat {
    pub const F32: KvFormat = KvFormat {
        kv: RowFormat::F32,
        index: RowFormat::F32,
    };
    /// The default for every weight format but the reference path: bf16 rows (the precision
    /// the model was trained and is served in), half the bytes of f32.
    pub const BF16: KvFormat = KvFormat {
        kv: RowFormat::Bf16,
        index: RowFormat::Bf16,
    };

    /// Cache bytes per token of context: every layer's latent and rope key, the indexer key of
    /// each layer with its own indexer, over `layers` main layers plus `mtp` MTP layers.
    pub fn bytes_per_token(&self, cfg: &Config, mtp: usize) -> usize {
        let layers = cfg.num_hidden_layers + mtp;
        let indexed = (0..layers).filter(|&l| cfg.has_indexer(l)).count();
        let index = cfg.indexer.as_ref().map_or(0, |ix| ix.index_head_dim);
        layers * self.kv.row_bytes(cfg.latent_dim())
            + if index > 0 {
                indexed * self.index.row_bytes(index)
            } else {
                0
            }
    }
}

#[derive(Clone, Debug)]
pub struct LayerKv {
    /// `[T, kv_lora_rank + qk_rope_head_dim]`: the latent after `kv_a_layernorm`, then the
    /// shared rope key after RoPE (the 576 values per token of GLM-5).
    pub kv: Rows,
    /// `[T, index_head_dim]`, after `k_norm` and RoPE (empty for shared-indexer layers).
    pub index_k: Rows,
}

#[derive(Clone, Debug)]
pub struct KvCache {
    pub layers: Vec<LayerKv>,
    /// Tokens stored in the main layers (`layers[..num_hidden_layers]`).
    pub len: usize,
    /// Positions stored in the MTP layer (`layers[num_hidden_layers]`): entry `i` pairs the
    /// main model's hidden state at `i` with the token at `i + 1`, so it lags `len` until the
    /// next token is known.
    pub mtp_len: usize,
    main_layers: usize,
    format: KvFormat,
}

impl KvCache {
    /// An empty cache for the main layers of `cfg` plus its MTP layers, stored as `fmt` says.
    pub fn new(cfg: &Config, fmt: KvFormat) -> KvCache {
        let index = cfg.indexer.as_ref().map_or(4, |ix| ix.index_head_dim);
        let layer = LayerKv {
            kv: Rows::new(fmt.kv, cfg.latent_dim()),
            index_k: Rows::new(fmt.index, index),
        };
        KvCache {
            layers: vec![layer; cfg.num_hidden_layers + cfg.num_nextn_predict_layers],
            len: 0,
            mtp_len: 0,
            main_layers: cfg.num_hidden_layers,
            format: fmt,
        }
    }

    pub fn format(&self) -> KvFormat {
        self.format
    }

    /// Drop every position from `len` on, in the main layers and the MTP layer (speculative
    /// decoding's rollback, a prefix-cache hit). An MTP entry at `len - 1` stays: it paired
    /// with the old token at `len`, which only makes the next draft less likely to be accepted.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            let main = self.main_layers;
            for l in &mut self.layers[..main] {
                l.cut(len);
            }
            self.len = len;
        }
        self.truncate_mtp(len);
    }

    /// Drop the MTP layer's positions from `len` on (its drafts beyond the verified tokens).
    pub fn truncate_mtp(&mut self, len: usize) {
        if len < self.mtp_len {
            let main = self.main_layers;
            for l in &mut self.layers[main..] {
                l.cut(len);
            }
            self.mtp_len = len;
        }
    }

    /// Room for `tokens` positions in every layer without reallocating (see `Rows::reserve`:
    /// address space only until written).
    pub fn reserve(&mut self, tokens: usize) {
        for l in &mut self.layers {
            l.kv.reserve(tokens);
            l.index_k.reserve(tokens);
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.kv.bytes() + l.index_k.bytes())
            .sum()
    }
}

impl KvCache {
    /// The cache as bytes (the disk prefix cache): lengths, then every layer's rows.
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        for n in [self.layers.len(), self.len, self.mtp_len] {
            w.write_all(&(n as u64).to_le_bytes())?;
        }
        for l in &self.layers {
            l.kv.write_to(w)?;
            l.index_k.write_to(w)?;
        }
        Ok(())
    }

    /// A cache written by `write_to`, which must have the layout of `self` (an empty cache of
    /// the same model and format); else `InvalidData` says what differs.
    pub fn read_like(&self, r: &mut dyn Read) -> io::Result<KvCache> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let mut n = [0usize; 3];
        for x in &mut n {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            *x = u64::from_le_bytes(b) as usize;
        }
        let [layers, len, mtp_len] = n;
        if layers != self.layers.len() {
            return Err(bad(format!(
                "{layers} layers stored, the model has {}",
                self.layers.len()
            )));
        }
        let mut out = KvCache {
            layers: Vec::with_capacity(layers),
            len,
            mtp_len,
            main_layers: self.main_layers,
            format: self.format,
        };
        for (i, like) in self.layers.iter().enumerate() {
            let kv = Rows::read_from(r)?;
            let index_k = Rows::read_from(r)?;
            let main = i < self.main_layers;
            let want = if main { len } else { mtp_len };
            for (got, like) in [(&kv, &like.kv), (&index_k, &like.index_k)] {
                if got.width() != like.width() || got.format() != like.format() {
                    return Err(bad(format!(
                        "layer {i}: rows of width {} ({}) stored, the model wants {} ({})",
                        got.width(),
                        got.format().name(),
                        like.width(),
                        like.format().name()
                    )));
                }
            }
            if kv.len() != want || !(index_k.is_empty() || index_k.len() == want) {
                return Err(bad(format!(
                    "layer {i}: {} positions stored, {want} expected",
                    kv.len()
                )));
            }
            out.layers.push(LayerKv { kv, index_k });
        }
        Ok(out)
    }
}

impl LayerKv {
    fn cut(&mut self, len: usize) {
        self.kv.truncate(len);
        self.index_k.truncate(len);
    }
}
