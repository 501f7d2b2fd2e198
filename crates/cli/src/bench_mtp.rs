//! `glm5 bench --mtp`: greedy decode with and without MTP speculative decoding in the same run
//! (speed-up, acceptance, identical output), and what one verify step of `k + 1` tokens and one
//! `k`-token draft cost next to one plain decode step.

use std::time::Instant;

use anyhow::{anyhow, Result};
use glm5_engine::sampler::argmax;
use glm5_engine::{LanguageModel, Session};
use glm5_model::Model;

pub struct MtpBench {
    pub draft: usize,
    pub plain_tokens_per_s: f64,
    pub mtp_tokens_per_s: f64,
    /// Tokens produced per verify step (accepted drafts + 1).
    pub acceptance_length: f64,
    /// Accepted drafts over drafted tokens.
    pub acceptance_rate: f64,
    /// Greedy tokens equal with and without MTP.
    pub identical: bool,
    /// Time of a `k + 1`-token verify forward over a 1-token decode forward.
    pub verify_cost: f64,
    /// Time of drafting `k` tokens over a 1-token decode forward.
    pub draft_cost: f64,
}

/// Greedy decode of `gen` tokens after `prompt`: the tokens, tok/s, verify steps, drafts made
/// and drafts accepted. `k == 0` is plain decoding.
fn decode(
    model: &Model,
    prompt: &[u32],
    gen: usize,
    k: usize,
) -> Result<(Vec<u32>, f64, usize, usize, usize)> {
    let mut s = if k > 0 {
        Session::with_mtp(model, k)?
    } else {
        Session::new(model)
    };
    let mut t = argmax(&s.extend(prompt)?);
    let mut out = vec![t];
    let (mut steps, mut drafted, mut accepted) = (0, 0, 0);
    let v = model.cfg.vocab_size;
    let t0 = Instant::now();
    while out.len() < gen {
        let drafts = if k > 0 {
            s.draft(t, k.min(gen - out.len() - 1))?
        } else {
            Vec::new()
        };
        let mut feed = vec![t];
        feed.extend_from_slice(&drafts);
        let rows = s.extend_all(&feed)?;
        steps += usize::from(!drafts.is_empty());
        drafted += drafts.len();
        for (j, row) in rows.chunks_exact(v).enumerate() {
            t = argmax(row);
            out.push(t);
            if drafts.get(j) != Some(&t) {
                break;
            }
            accepted += 1;
        }
        // Keep the cache up to the last accepted token (the newest `t` is not in it yet).
        let keep = prompt.len() + out.len() - 1;
        s.truncate(keep);
    }
    let secs = t0.elapsed().as_secs_f64();
    out.truncate(gen);
    Ok((out, (gen - 1) as f64 / secs, steps, drafted, accepted))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn measure(
    model: &Model,
    prompt: &[u32],
    gen: usize,
    k: usize,
    reps: usize,
) -> Result<MtpBench> {
    if gen < 2 {
        return Err(anyhow!("--mtp needs --gen-tokens of at least 2"));
    }
    let (mut plain, mut mtp) = (Vec::new(), Vec::new());
    let (mut identical, mut steps, mut drafted, mut accepted) = (true, 0, 0, 0);
    for _ in 0..reps {
        let (a, ra, ..) = decode(model, prompt, gen, 0)?;
        let (b, rb, st, dr, ac) = decode(model, prompt, gen, k)?;
        identical &= a == b;
        plain.push(ra);
        mtp.push(rb);
        (steps, drafted, accepted) = (steps + st, drafted + dr, accepted + ac);
    }
    // Step costs at the end of the prompt, medians of 9.
    let mut s = Session::with_mtp(model, k)?;
    let t = argmax(&s.extend(prompt)?);
    let len = prompt.len();
    let feed: Vec<u32> = std::iter::repeat_n(t, k + 1).collect();
    let (mut one, mut many, mut draft) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..9 {
        let c = Instant::now();
        s.extend(&feed[..1])?;
        one.push(c.elapsed().as_secs_f64());
        s.truncate(len);
        let c = Instant::now();
        s.extend_all(&feed)?;
        many.push(c.elapsed().as_secs_f64());
        s.truncate(len);
        let saved = s.cache.clone();
        let c = Instant::now();
        s.draft(t, k)?;
        draft.push(c.elapsed().as_secs_f64());
        s.cache = saved;
    }
    let one = median(one);
    Ok(MtpBench {
        draft: k,
        plain_tokens_per_s: median(plain),
        mtp_tokens_per_s: median(mtp),
        acceptance_length: (accepted + steps) as f64 / steps.max(1) as f64,
        acceptance_rate: accepted as f64 / drafted.max(1) as f64,
        identical,
        verify_cost: median(many) / one,
        draft_cost: median(draft) / one,
    })
}
