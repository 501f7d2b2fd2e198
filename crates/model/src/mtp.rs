//! The Multi-Token-Prediction layer (glm5-architecture.md section 4), stored as
//! `model.layers.{num_hidden_layers}.*`, computed as SGLang's and vLLM's DeepSeek "nextn" layer:
//!
//! ```text
//! e = embed_tokens(t_{i+1})                                  [n, hidden]
//! u = eh_proj(concat(enorm(e), hnorm(h_i)))                  [n, 2 hidden] -> [n, hidden]
//! u = DecoderLayer_N(u) at RoPE position i                   its own MLA + indexer + MoE cache
//! logits = lm_head(shared_head.norm(u))                      [n, vocab]
//! ```
//!
//! `h_i` is the main model's final-normed hidden state at position `i`. A chained draft step feeds
//! back `u` before `shared_head.norm` (vLLM's proposer; the bundled model was trained that way).
//! The embedding at position 0 is not zeroed (SGLang; vLLM zeroes it). Only the first MTP layer
//! is used, recursively, for every draft step (GLM-5 has one, trained shared across 3 steps).

use glm5_kernels::{cpu, Matrix};

use crate::glm_moe_dsa::{DecoderLayer, Linear, Loader, Model};
use crate::kv_cache::KvCache;
use crate::mla::SeqKv;
use crate::trace::Trace;
use crate::{Error, Result};

pub struct Mtp {
    /// The checkpoint's layer number (`num_hidden_layers`).
    pub index: usize,
    pub enorm: Vec<f32>,
    pub hnorm: Vec<f32>,
    /// `[hidden, 2 hidden]`: input `[embedding | hidden state]`.
    pub eh_proj: Linear,
    pub layer: DecoderLayer,
    pub shared_head_norm: Vec<f32>,
}

impl Mtp {
    /// The first MTP layer when the config declares one and the weights hold it.
    pub(crate) fn load_if_present(ld: &Loader) -> Result<Option<Mtp>> {
        let c = ld.cfg;
        let l = c.num_hidden_layers;
        let p = format!("model.layers.{l}");
        if c.num_nextn_predict_layers == 0 || !ld.src.contains(&format!("{p}.eh_proj.weight")) {
            return Ok(None);
        }
        let h = c.hidden_size;
        Ok(Some(Mtp {
            index: l,
            enorm: ld.vector(&format!("{p}.enorm.weight"), h)?,
            hnorm: ld.vector(&format!("{p}.hnorm.weight"), h)?,
            eh_proj: ld.linear(&format!("{p}.eh_proj"), h, 2 * h)?,
            // The MTP block is always MoE and always runs its own indexer.
            layer: DecoderLayer::load(ld, l, true, c.indexer.is_some())?,
            shared_head_norm: ld.vector(&format!("{p}.shared_head.norm.weight"), h)?,
        }))
    }

    pub fn weights(&self) -> Vec<&Matrix> {
        let mut v = vec![&self.eh_proj.w];
        v.extend(self.layer.weights());
        v
    }
}

/// One sequence's input to the MTP layer: `hidden` `[n, hidden]` (states at the positions
/// `cache.mtp_len ..`), `next` the `n` tokens that follow those positions.
pub struct MtpInput<'a> {
    pub hidden: &'a [f32],
    pub next: &'a [u32],
    pub cache: &'a mut KvCache,
}

impl Model {
    /// Run the MTP layer over each sequence's pairs, appending them to its MTP cache. Returns
    /// `u` before `shared_head.norm`, `[sum n, hidden]`, sequences back to back.
    pub fn mtp_forward(
        &self,
        seqs: &mut [MtpInput],
        mut trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let mtp = self.mtp.as_ref().ok_or(Error::NoMtpLayer)?;
        let h = cfg.hidden_size;
        let eps = cfg.rms_norm_eps as f32;
        let n: usize = seqs.iter().map(|s| s.next.len()).sum();
        if seqs.is_empty() || seqs.iter().any(|s| s.next.is_empty()) {
            return Err(Error::EmptyInput);
        }
        for s in seqs.iter() {
            assert_eq!(
                s.hidden.len(),
                s.next.len() * h,
                "one hidden row per next token"
            );
            if s.cache.mtp_len + s.next.len() > cfg.max_position_embeddings {
                return Err(Error::ContextOverflow {
                    pos: s.cache.mtp_len + s.next.len(),
                    max: cfg.max_position_embeddings,
                });
            }
        }
        let e = self.embed(seqs.iter().flat_map(|s| s.next.iter()).copied(), n)?; // [n, hidden]
        let e = cpu::rms_norm(&e, &mtp.enorm, eps);
        let hidden: Vec<f32> = seqs.iter().flat_map(|s| s.hidden.iter()).copied().collect();
        let hn = cpu::rms_norm(&hidden, &mtp.hnorm, eps);
        let mut cat = Vec::with_capacity(n * 2 * h); // [n, 2 hidden] = [enorm(e) | hnorm(h)]
        for i in 0..n {
            cat.extend_from_slice(&e[i * h..(i + 1) * h]);
            cat.extend_from_slice(&hn[i * h..(i + 1) * h]);
        }
        let mut u = mtp.eh_proj.forward(&cat, n); // [n, hidden]
        if let Some(tr) = trace.as_deref_mut() {
            tr.record(
                format!("layers.{}.eh_proj", mtp.index),
                vec![n, h],
                u.clone(),
            );
        }
        let mut slots: Vec<SeqKv> = seqs
            .iter_mut()
            .map(|s| SeqKv {
                n: s.next.len(),
                kv: &mut s.cache.layers[mtp.index],
                selection: None,
                dense: self.dense_attention,
            })
            .collect();
        mtp.layer
            .forward(cfg, &self.rope, &mut u, &mut slots, mtp.index, trace, None)?;
        for s in seqs.iter_mut() {
            s.cache.mtp_len += s.next.len();
        }
        Ok(u)
    }

    /// `lm_head(shared_head.norm(u))`: `[n, hidden]` -> `[n, vocab_size]`.
    pub fn mtp_logits(&self, u: &[f32]) -> Result<Vec<f32>> {
        let mtp = self.mtp.as_ref().ok_or(Error::NoMtpLayer)?;
        let normed = cpu::rms_norm(u, &mtp.shared_head_norm, self.cfg.rms_norm_eps as f32);
        Ok(self.logits(&normed, u.len() / self.cfg.hidden_size))
    }
}
