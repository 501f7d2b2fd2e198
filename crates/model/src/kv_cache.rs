//! The compressed KV cache: per layer only the normalised latent (`kv_lora_rank`), the roped
//! shared key (`qk_rope_head_dim`) and, for layers with their own indexer, the indexer key
//! (`index_head_dim`). K and V are re-expanded from the latent when attention needs them.

use crate::config::Config;

#[derive(Clone, Debug, Default)]
pub struct LayerKv {
    /// `[T, kv_lora_rank]`, after `kv_a_layernorm`.
    pub latent: Vec<f32>,
    /// `[T, qk_rope_head_dim]`, after RoPE.
    pub k_rope: Vec<f32>,
    /// `[T, index_head_dim]`, after `k_norm` and RoPE (empty for shared-indexer layers).
    pub index_k: Vec<f32>,
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
    shape: RowShape,
}

/// Values per cached row of each kind.
#[derive(Clone, Copy, Debug)]
struct RowShape {
    kv_lora_rank: usize,
    rope_dim: usize,
    index_dim: usize,
}

impl RowShape {
    fn cut(&self, l: &mut LayerKv, len: usize) {
        l.latent.truncate(len * self.kv_lora_rank);
        l.k_rope.truncate(len * self.rope_dim);
        if !l.index_k.is_empty() {
            l.index_k.truncate(len * self.index_dim);
        }
    }
}

impl KvCache {
    /// An empty cache for the main layers of `cfg` plus its MTP layers.
    pub fn new(cfg: &Config) -> KvCache {
        KvCache {
            layers: vec![LayerKv::default(); cfg.num_hidden_layers + cfg.num_nextn_predict_layers],
            len: 0,
            mtp_len: 0,
            main_layers: cfg.num_hidden_layers,
            shape: RowShape {
                kv_lora_rank: cfg.kv_lora_rank,
                rope_dim: cfg.qk_rope_head_dim,
                index_dim: cfg.indexer.as_ref().map_or(0, |ix| ix.index_head_dim),
            },
        }
    }

    /// Drop every position from `len` on, in the main layers and the MTP layer (speculative
    /// decoding's rollback, a prefix-cache hit). An MTP entry at `len - 1` stays: it paired
    /// with the old token at `len`, which only makes the next draft less likely to be accepted.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            let main = self.main_layers;
            for l in &mut self.layers[..main] {
                self.shape.cut(l, len);
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
                self.shape.cut(l, len);
            }
            self.mtp_len = len;
        }
    }

    /// Bytes held (f32 storage).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.latent.len() + l.k_rope.len() + l.index_k.len()) * 4)
            .sum()
    }
}
