//! The compressed KV cache: per layer only the normalised latent (`kv_lora_rank`), the roped
//! shared key (`qk_rope_head_dim`) and, for layers with their own indexer, the indexer key
//! (`index_head_dim`). K and V are re-expanded from the latent when attention needs them.

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

impl LayerKv {
    fn cut(&mut self, len: usize) {
        self.kv.truncate(len);
        self.index_k.truncate(len);
    }
}
