//! What the scheduler needs of a model: per-sequence caches and one batched forward that
//! returns the logits after each sequence's last token. A trait so the scheduler can be tested
//! with a fake model.

use glm5_model::{KvCache, Model};

use crate::error::Result;

pub trait BatchModel: Send + Sync + 'static {
    type Cache: Send + 'static;
    fn vocab_size(&self) -> usize;
    fn max_context(&self) -> usize;
    fn new_cache(&self) -> Self::Cache;
    fn cache_len(cache: &Self::Cache) -> usize;
    /// Drop positions from `len` on.
    fn truncate(cache: &mut Self::Cache, len: usize);
    /// An independent copy (a prefix-cache hit).
    fn fork(cache: &Self::Cache) -> Self::Cache;
    /// Bytes of cache per token (for `/metrics` and admission reports).
    fn cache_bytes_per_token(&self) -> usize;
    /// Append each sequence's tokens to its cache; return `[vocab_size]` logits after each
    /// sequence's last token, in batch order.
    fn forward(&self, batch: &mut [(&[u32], &mut Self::Cache)]) -> Result<Vec<Vec<f32>>>;
}

impl BatchModel for Model {
    type Cache = KvCache;
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn max_context(&self) -> usize {
        self.cfg.max_position_embeddings
    }
    fn new_cache(&self) -> KvCache {
        Model::new_cache(self)
    }
    fn cache_len(cache: &KvCache) -> usize {
        cache.len
    }
    fn truncate(cache: &mut KvCache, len: usize) {
        cache.truncate(len);
    }
    fn fork(cache: &KvCache) -> KvCache {
        cache.clone()
    }
    fn cache_bytes_per_token(&self) -> usize {
        // f32 latent and rope key on every layer; indexer keys only where a layer has its own
        // indexer ("shared" layers reuse the previous selection).
        let c = &self.cfg;
        let index = c.indexer.as_ref().map_or(0, |ix| ix.index_head_dim);
        let indexed = (0..c.num_hidden_layers)
            .filter(|&l| c.has_indexer(l))
            .count();
        (c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) + indexed * index) * 4
    }
    fn forward(&self, batch: &mut [(&[u32], &mut KvCache)]) -> Result<Vec<Vec<f32>>> {
        let h = self.cfg.hidden_size;
        let hidden = self.forward_batch(batch, None)?; // [sum n, hidden]
        let mut last = Vec::with_capacity(batch.len() * h); // [batch, hidden]
        let mut end = 0;
        for (t, _) in batch.iter() {
            end += t.len();
            last.extend_from_slice(&hidden[(end - 1) * h..end * h]);
        }
        let logits = self.logits(&last, batch.len()); // [batch, vocab]
        Ok(logits
            .chunks_exact(self.cfg.vocab_size)
            .map(<[f32]>::to_vec)
            .collect())
    }
}
