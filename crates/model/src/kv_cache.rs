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
    /// Tokens stored.
    pub len: usize,
    kv_lora_rank: usize,
    rope_dim: usize,
    index_dim: usize,
}

impl KvCache {
    /// An empty cache for the main layers of `cfg` plus its MTP layers.
    pub fn new(cfg: &Config) -> KvCache {
        KvCache {
            layers: vec![LayerKv::default(); cfg.num_hidden_layers + cfg.num_nextn_predict_layers],
            len: 0,
            kv_lora_rank: cfg.kv_lora_rank,
            rope_dim: cfg.qk_rope_head_dim,
            index_dim: cfg.indexer.as_ref().map_or(0, |ix| ix.index_head_dim),
        }
    }

    /// Drop every position from `len` on (speculative-decoding rollback).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for l in &mut self.layers {
            l.latent.truncate(len * self.kv_lora_rank);
            l.k_rope.truncate(len * self.rope_dim);
            if !l.index_k.is_empty() {
                l.index_k.truncate(len * self.index_dim);
            }
        }
        self.len = len;
    }

    /// Bytes held (f32 storage).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.latent.len() + l.k_rope.len() + l.index_k.len()) * 4)
            .sum()
    }
}
