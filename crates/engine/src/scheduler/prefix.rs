//! The prefix cache: finished sequences' caches in RAM (and long ones on disk), found again by
//! the longest common prefix of a new prompt.

use std::sync::atomic::Ordering;

use super::seq::Seq;
use super::step::Scheduler;
use crate::batch::BatchModel;

impl<M: BatchModel> Scheduler<M> {
    /// A cache for `tokens`: the longest cached prefix (at most all but the last token, whose
    /// logits are needed, and at most `limit` tokens), or an empty one. Returns it and how
    /// many tokens it holds.
    pub(super) fn lookup_prefix(&mut self, tokens: &[u32], limit: usize) -> (M::Cache, usize) {
        let best = self
            .prefix
            .iter()
            .enumerate()
            .map(|(i, (t, _))| {
                let common = t.iter().zip(tokens).take_while(|(a, b)| a == b).count();
                (common.min(tokens.len() - 1).min(limit), i)
            })
            .max();
        let in_ram = best.map_or(0, |(c, _)| c);
        if let Some(hit) = self.lookup_disk(tokens, in_ram, limit) {
            return hit;
        }
        match best {
            Some((common, i)) if common > 0 => {
                let entry = self.prefix.remove(i);
                let mut cache = M::fork(&entry.1);
                M::truncate(&mut cache, common);
                self.prefix.push(entry); // most recently used
                self.metrics
                    .prefix_hit_tokens_total
                    .fetch_add(common, Ordering::Relaxed);
                (cache, common)
            }
            _ => (self.model.new_cache(self.cfg.draft > 0), 0),
        }
    }

    /// A cache read from disk when it holds more of `tokens` than the RAM cache (`in_ram`).
    fn lookup_disk(
        &mut self,
        tokens: &[u32],
        in_ram: usize,
        limit: usize,
    ) -> Option<(M::Cache, usize)> {
        let disk = self.disk.as_mut()?;
        let (i, common) = disk.best(tokens)?;
        let common = common.min(tokens.len() - 1).min(limit);
        if common <= in_ram {
            return None;
        }
        let model = self.model.clone();
        let mut cache = disk.load(i, |r| model.read_cache(r))?;
        M::truncate(&mut cache, common);
        for counter in [
            &self.metrics.prefix_hit_tokens_total,
            &self.metrics.prefix_disk_hit_tokens_total,
        ] {
            counter.fetch_add(common, Ordering::Relaxed);
        }
        Some((cache, common))
    }

    pub(super) fn keep_prefix(&mut self, s: Seq<M::Cache>) {
        let Some(cache) = s.cache else { return };
        let len = M::cache_len(&cache);
        if let Some(disk) = self.disk.as_mut() {
            let tokens = &s.tokens[..len.min(s.tokens.len())];
            if disk.wants(tokens) {
                // A copy for the writer thread (the cache itself goes on to the RAM cache).
                let copy = M::fork(&cache);
                let bytes = (len * self.model.cache_bytes_per_token()) as u64;
                disk.store(
                    tokens.to_vec(),
                    bytes,
                    Box::new(move |w| M::write_cache(&copy, w)),
                );
            }
        }
        if self.cfg.prefix_cache_tokens == 0 || len == 0 || len > self.cfg.prefix_cache_tokens {
            return;
        }
        let mut tokens = s.tokens;
        tokens.truncate(len);
        // An entry that this one extends is redundant.
        self.prefix
            .retain(|(t, _)| !(t.len() <= tokens.len() && tokens[..t.len()] == t[..]));
        self.prefix.push((tokens, cache));
        while self.prefix.iter().map(|(t, _)| t.len()).sum::<usize>() > self.cfg.prefix_cache_tokens
        {
            self.prefix.remove(0);
        }
    }
}
