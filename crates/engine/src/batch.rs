//! What the scheduler needs of a model: per-sequence caches, one batched forward that returns the
//! logits of each sequence's last rows, and (with an MTP layer) drafts for speculative decoding.
//! A trait so the scheduler can be tested with a fake model.

use glm5_model::mtp::MtpInput;
use glm5_model::{KvCache, Model};

use crate::error::Result;

/// Per sequence: its logits rows, and its new tokens' routing.
pub type LogitsAndRoutes = (Vec<Vec<f32>>, Vec<Vec<u32>>);

pub trait BatchModel: Send + Sync + 'static {
    type Cache: Send + 'static;
    fn vocab_size(&self) -> usize;
    fn max_context(&self) -> usize;
    /// An empty cache; `draft`: the sequence will use `draft` (keeps what drafting needs).
    fn new_cache(&self, draft: bool) -> Self::Cache;
    fn cache_len(cache: &Self::Cache) -> usize;
    /// Make room for `tokens` positions in all (the sequence's final length), so a long one
    /// does not reallocate its cache as it grows.
    fn reserve(_cache: &mut Self::Cache, _tokens: usize) {}
    /// Drop positions from `len` on.
    fn truncate(cache: &mut Self::Cache, len: usize);
    /// An independent copy (a prefix-cache hit).
    fn fork(cache: &Self::Cache) -> Self::Cache;
    /// Bytes of cache per token (for `/metrics` and admission reports).
    fn cache_bytes_per_token(&self) -> usize;
    /// Append each sequence's tokens to its cache; return the logits of its last `rows[i]`
    /// tokens, `[rows[i], vocab_size]` flattened, in batch order.
    fn forward(
        &self,
        batch: &mut [(&[u32], &mut Self::Cache)],
        rows: &[usize],
    ) -> Result<Vec<Vec<f32>>>;
    /// `(layers, experts per token)` of the routing `forward_routed` reports; `None` for a
    /// model without routed experts.
    fn routing_shape(&self) -> Option<(usize, usize)> {
        None
    }
    /// `forward`, and for each sequence the experts its new tokens were routed to,
    /// `[tokens, layers, experts per token]` flattened (`routing_shape`; empty without one).
    fn forward_routed(
        &self,
        batch: &mut [(&[u32], &mut Self::Cache)],
        rows: &[usize],
    ) -> Result<LogitsAndRoutes> {
        let logits = self.forward(batch, rows)?;
        Ok((logits, vec![Vec::new(); batch.len()]))
    }
    /// Write a cache for the disk prefix cache; `false` where this model's caches cannot be.
    fn write_cache(_cache: &Self::Cache, _w: &mut dyn std::io::Write) -> std::io::Result<bool> {
        Ok(false)
    }
    /// A cache written by `write_cache`, checked against this model's layout (`InvalidData`
    /// when it does not fit).
    fn read_cache(&self, _r: &mut dyn std::io::Read) -> std::io::Result<Option<Self::Cache>> {
        Ok(None)
    }
    /// Whether `draft` can propose tokens (the model has an MTP layer in use).
    fn can_draft(&self) -> bool {
        false
    }
    /// Speculative decoding's draft: for each `(tokens, cache, k)`, where `tokens` is the whole
    /// sequence so far (the cache holds all of it but the newest tokens), propose up to `k`
    /// tokens to follow `tokens`. With `k == 0` it only catches the draft state up with the
    /// cache (a prompt chunk). Returns the drafts in batch order.
    fn draft(&self, batch: &mut [(&[u32], &mut Self::Cache, usize)]) -> Result<Vec<Vec<u32>>> {
        Ok(vec![Vec::new(); batch.len()])
    }
}

/// Mutable references to `items[i]` for each index of `idx` (distinct), in that order.
pub(crate) fn pick_mut<T>(items: &mut [T], idx: impl IntoIterator<Item = usize>) -> Vec<&mut T> {
    let mut slots: Vec<Option<&mut T>> = items.iter_mut().map(Some).collect();
    idx.into_iter()
        .map(|i| slots[i].take().expect("each index once"))
        .collect()
}

/// A sequence's cache for [`Model`]: the KV cache (main layers and MTP layer) and the main
/// model's final-normed hidden states at positions `kv.mtp_len .. kv.len`, which wait for the
/// token after them to become the MTP layer's input (only when `mtp` is on).
#[derive(Clone, Debug)]
pub struct SeqCache {
    pub kv: KvCache,
    pub pending: Vec<f32>,
    /// This sequence drafts with the MTP layer (keeps `pending` and the MTP cache).
    pub mtp: bool,
    hidden: usize,
}

impl SeqCache {
    /// A cache that drafts when `mtp` is set and the model has an MTP layer.
    pub fn new(model: &Model, mtp: bool) -> SeqCache {
        SeqCache {
            kv: model.new_cache(),
            pending: Vec::new(),
            mtp: mtp && model.mtp.is_some(),
            hidden: model.cfg.hidden_size,
        }
    }

    pub fn truncate(&mut self, len: usize) {
        let mtp_before = self.kv.mtp_len;
        self.kv.truncate(len);
        let keep = len.saturating_sub(mtp_before) * self.hidden;
        self.pending.truncate(keep);
    }
}

impl BatchModel for Model {
    type Cache = SeqCache;
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn max_context(&self) -> usize {
        self.cfg.max_position_embeddings
    }
    fn new_cache(&self, draft: bool) -> SeqCache {
        SeqCache::new(self, draft)
    }
    fn cache_len(cache: &SeqCache) -> usize {
        cache.kv.len
    }
    fn reserve(cache: &mut SeqCache, tokens: usize) {
        cache.kv.reserve(tokens);
    }
    fn truncate(cache: &mut SeqCache, len: usize) {
        cache.truncate(len);
    }
    fn fork(cache: &SeqCache) -> SeqCache {
        cache.clone()
    }
    fn write_cache(cache: &SeqCache, w: &mut dyn std::io::Write) -> std::io::Result<bool> {
        cache.kv.write_to(w)?;
        w.write_all(&[u8::from(cache.mtp)])?;
        w.write_all(&(cache.pending.len() as u64).to_le_bytes())?;
        for x in &cache.pending {
            w.write_all(&x.to_le_bytes())?;
        }
        Ok(true)
    }
    fn read_cache(&self, r: &mut dyn std::io::Read) -> std::io::Result<Option<SeqCache>> {
        let like = SeqCache::new(self, true);
        let kv = like.kv.read_like(r)?;
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        let mut n = [0u8; 8];
        r.read_exact(&mut n)?;
        let n = u64::from_le_bytes(n) as usize;
        let h = self.cfg.hidden_size;
        // `pending` holds the hidden states the MTP layer has not taken yet: at most the
        // positions past `mtp_len`.
        if !n.is_multiple_of(h) || n / h > kv.len.saturating_sub(kv.mtp_len) + 1 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{n} pending values do not fit the cache"),
            ));
        }
        let mut raw = vec![0u8; 4 * n];
        r.read_exact(&mut raw)?;
        let pending = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Some(SeqCache {
            kv,
            pending,
            mtp: b[0] == 1 && like.mtp,
            hidden: h,
        }))
    }
    fn cache_bytes_per_token(&self) -> usize {
        self.kv_format()
            .bytes_per_token(&self.cfg, usize::from(self.mtp.is_some()))
    }
    fn forward(
        &self,
        batch: &mut [(&[u32], &mut SeqCache)],
        rows: &[usize],
    ) -> Result<Vec<Vec<f32>>> {
        forward_seqs(self, batch, rows, None)
    }
    fn routing_shape(&self) -> Option<(usize, usize)> {
        (self.cfg.n_routed_experts > 0)
            .then_some((self.cfg.num_hidden_layers, self.cfg.num_experts_per_tok))
    }
    fn forward_routed(
        &self,
        batch: &mut [(&[u32], &mut SeqCache)],
        rows: &[usize],
    ) -> Result<LogitsAndRoutes> {
        let mut routes = Vec::new(); // [sum n, layers, k]
        let logits = forward_seqs(self, batch, rows, Some(&mut routes))?;
        let per_token = routes.len() / batch.iter().map(|(t, _)| t.len()).sum::<usize>().max(1);
        let mut at = 0;
        let split = batch
            .iter()
            .map(|(t, _)| {
                at += t.len();
                routes[(at - t.len()) * per_token..at * per_token].to_vec()
            })
            .collect();
        Ok((logits, split))
    }
    fn can_draft(&self) -> bool {
        self.mtp.is_some()
    }
    fn draft(&self, batch: &mut [(&[u32], &mut SeqCache, usize)]) -> Result<Vec<Vec<u32>>> {
        draft_seqs(self, batch)
    }
}

/// `BatchModel::forward` for [`Model`], with the routing when `routes` is given.
fn forward_seqs(
    model: &Model,
    batch: &mut [(&[u32], &mut SeqCache)],
    rows: &[usize],
    routes: Option<&mut Vec<u32>>,
) -> Result<Vec<Vec<f32>>> {
    let h = model.cfg.hidden_size;
    let hidden = {
        let mut kv: Vec<(&[u32], &mut KvCache)> =
            batch.iter_mut().map(|(t, c)| (*t, &mut c.kv)).collect();
        model.forward_batch_routed(&mut kv, None, routes)? // [sum n, hidden]
    };
    let mut last = Vec::new(); // [sum rows, hidden]
    let mut end = 0;
    for ((t, c), &r) in batch.iter_mut().zip(rows) {
        let start = end;
        end += t.len();
        if c.mtp {
            c.pending.extend_from_slice(&hidden[start * h..end * h]);
        }
        last.extend_from_slice(&hidden[(end - r) * h..end * h]);
    }
    let logits = model.logits(&last, last.len() / h); // [sum rows, vocab]
    let v = model.cfg.vocab_size;
    let mut out = Vec::with_capacity(batch.len());
    let mut at = 0;
    for &r in rows {
        out.push(logits[at * v..(at + r) * v].to_vec());
        at += r;
    }
    Ok(out)
}

/// `BatchModel::draft` for [`Model`].
fn draft_seqs(
    model: &Model,
    batch: &mut [(&[u32], &mut SeqCache, usize)],
) -> Result<Vec<Vec<u32>>> {
    let mut drafts = vec![Vec::new(); batch.len()];
    if model.mtp.is_none() {
        return Ok(drafts);
    }
    let (h, v) = (model.cfg.hidden_size, model.cfg.vocab_size);
    // 1. Catch up: pair each pending hidden state at position p with tokens[p + 1].
    let mut pending: Vec<Vec<f32>> = Vec::with_capacity(batch.len());
    let mut ran = Vec::new(); // (batch index, pairs)
    for (i, (tokens, c, _)) in batch.iter_mut().enumerate() {
        if !c.mtp {
            pending.push(Vec::new());
            continue;
        }
        let from = c.kv.mtp_len;
        let to = c.kv.len.min(tokens.len().saturating_sub(1));
        let pairs = to.saturating_sub(from);
        let mut p = std::mem::take(&mut c.pending);
        let rest = p.split_off(pairs * h);
        c.pending = rest;
        pending.push(p);
        if pairs > 0 {
            ran.push((i, pairs));
        }
    }
    let mut u_last: Vec<Option<Vec<f32>>> = vec![None; batch.len()];
    if !ran.is_empty() {
        let u = {
            let seqs = pick_mut(batch, ran.iter().map(|r| r.0));
            let mut inputs: Vec<MtpInput> = seqs
                .into_iter()
                .zip(&ran)
                .map(|((tokens, c, _), &(i, pairs))| {
                    let from = c.kv.mtp_len;
                    MtpInput {
                        hidden: &pending[i],
                        next: &tokens[from + 1..from + 1 + pairs],
                        cache: &mut c.kv,
                    }
                })
                .collect();
            model.mtp_forward(&mut inputs, None)?
        };
        let mut end = 0;
        for &(i, pairs) in &ran {
            end += pairs;
            u_last[i] = Some(u[(end - 1) * h..end * h].to_vec());
        }
    }
    // 2. Draft: a sequence whose MTP state reached its last token proposes `k` tokens, each
    //    from the MTP layer fed its own previous output (chained); the chained positions are
    //    dropped again afterwards (they are recomputed from the verified hidden states).
    let mut active: Vec<(usize, Vec<f32>)> = Vec::new();
    for (i, (tokens, c, k)) in batch.iter().enumerate() {
        if *k > 0 && c.kv.mtp_len + 1 == tokens.len() {
            if let Some(u) = u_last[i].take() {
                active.push((i, u));
            }
        }
    }
    let keep: Vec<usize> = batch.iter().map(|(_, c, _)| c.kv.mtp_len).collect();
    while !active.is_empty() {
        let u: Vec<f32> = active.iter().flat_map(|(_, u)| u.iter().copied()).collect();
        let logits = model.mtp_logits(&u)?; // [active, vocab]
        for (j, (i, _)) in active.iter().enumerate() {
            drafts[*i].push(crate::sampler::argmax(&logits[j * v..(j + 1) * v]));
        }
        active.retain(|(i, _)| drafts[*i].len() < batch[*i].2);
        if active.is_empty() {
            break;
        }
        let next: Vec<[u32; 1]> = active
            .iter()
            .map(|(i, _)| [*drafts[*i].last().expect("drafted")])
            .collect();
        let u = {
            let seqs = pick_mut(batch, active.iter().map(|a| a.0));
            let mut inputs: Vec<MtpInput> = seqs
                .into_iter()
                .zip(active.iter().zip(&next))
                .map(|((_, c, _), ((_, u), next))| MtpInput {
                    hidden: u,
                    next,
                    cache: &mut c.kv,
                })
                .collect();
            model.mtp_forward(&mut inputs, None)?
        };
        for (j, (_, ul)) in active.iter_mut().enumerate() {
            *ul = u[j * h..(j + 1) * h].to_vec();
        }
    }
    for ((_, c, _), keep) in batch.iter_mut().zip(keep) {
        c.kv.truncate_mtp(keep);
    }
    Ok(drafts)
}
