//! Choosing the next token from logits: penalties, temperature, top-k, top-p, min-p, and a seeded
//! random draw. The order follows transformers' `generate`: repetition penalty, then presence and
//! frequency penalties (OpenAI semantics, generated tokens only), temperature, top-k, top-p, min-p.

use std::collections::HashMap;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax; ties go to the lower id).
    pub temperature: f32,
    /// 0 means off.
    pub top_k: usize,
    /// 1 means off.
    pub top_p: f32,
    /// 0 means off.
    pub min_p: f32,
    /// 1 means off. Divides positive logits and multiplies negative ones of every token already
    /// in the prompt or the output (transformers' `repetition_penalty`).
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated.
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
    /// Added to a token's logit before anything else (OpenAI's `logit_bias`: -100 bans a
    /// token, 100 all but forces it).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Reject values no sampler could honour, naming the parameter.
    pub fn validate(&self) -> Result<()> {
        let bad = |param: &'static str, reason: &str| {
            Err(Error::BadParam {
                param,
                reason: reason.into(),
            })
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", "must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "must be in [0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty", "must be a finite number > 0");
        }
        if !self.presence_penalty.is_finite() || !self.frequency_penalty.is_finite() {
            return bad("presence_penalty", "penalties must be finite numbers");
        }
        if self
            .logit_bias
            .iter()
            .any(|&(_, b)| !(-100.0..=100.0).contains(&b))
        {
            return bad("logit_bias", "biases must be numbers in [-100, 100]");
        }
        Ok(())
    }
}

/// xoshiro256** seeded through SplitMix64: small, fast and value-stable across releases, so the
/// same seed gives the same text on every machine and version.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[derive(Debug, Clone)]
pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
    /// How often each token was generated so far (for presence/frequency penalties).
    generated: HashMap<u32, u32>,
    /// Tokens of the prompt and the output (for the repetition penalty).
    seen: std::collections::HashSet<u32>,
}

impl Sampler {
    /// A sampler for one sequence. Without a seed, one is drawn from the clock.
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Sampler {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Sampler {
            params,
            rng: Rng::new(seed),
            generated: HashMap::new(),
            seen: prompt.iter().copied().collect(),
        }
    }

    /// Record a token that became part of the output (called by `sample`, and by callers that
    /// force a token).
    pub fn accept(&mut self, token: u32) {
        *self.generated.entry(token).or_insert(0) += 1;
        self.seen.insert(token);
    }

    /// Pick the next token from one row of logits and record it.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let mut l = logits.to_vec();
        self.apply_penalties(&mut l);
        let t = if self.params.temperature == 0.0 {
            argmax(&l)
        } else {
            let probs = self.probs(&l);
            let u = self.rng.next_f64() as f32;
            draw(&probs, u)
        };
        self.accept(t);
        t
    }

    /// Speculative decoding's verification of one drafted token: pick the next token from one
    /// row of the target model's logits, taking `draft` when the rules allow, and record it.
    /// Greedy: the argmax (the draft is accepted when it is the argmax). Sampling: drafts are
    /// the MTP layer's argmax, a one-hot proposal `q`, so the standard rule (accept with
    /// probability `min(1, p(d) / q(d))`, else draw from `max(0, p - q)` normalised) reads:
    /// accept with probability `p(d)`, else draw from `p` without `d`. Either way the token is
    /// distributed exactly as `sample` would draw it.
    pub fn verify(&mut self, logits: &[f32], draft: Option<u32>) -> u32 {
        let Some(d) = draft.filter(|&d| (d as usize) < logits.len()) else {
            return self.sample(logits);
        };
        let mut l = logits.to_vec();
        self.apply_penalties(&mut l);
        let t = if self.params.temperature == 0.0 {
            argmax(&l)
        } else {
            let mut probs = self.probs(&l);
            let pd = probs.get(d as usize).copied().unwrap_or(0.0);
            if (self.rng.next_f64() as f32) < pd {
                d
            } else {
                probs[d as usize] = 0.0;
                if probs.iter().all(|&x| x == 0.0) {
                    d // p was one-hot at d (rounding): nothing else can be drawn
                } else {
                    normalize(&mut probs);
                    draw(&probs, self.rng.next_f64() as f32)
                }
            }
        };
        self.accept(t);
        t
    }

    pub fn apply_penalties(&self, l: &mut [f32]) {
        let p = &self.params;
        for &(t, b) in &p.logit_bias {
            if let Some(x) = l.get_mut(t as usize) {
                *x += b;
            }
        }
        if p.repetition_penalty != 1.0 {
            for &t in &self.seen {
                if let Some(x) = l.get_mut(t as usize) {
                    *x = if *x > 0.0 {
                        *x / p.repetition_penalty
                    } else {
                        *x * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.generated {
                if let Some(x) = l.get_mut(t as usize) {
                    *x -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
    }

    /// The logits whose softmax the next token is drawn from before top-k/top-p/min-p: after
    /// the penalties, divided by the temperature (left as they are when greedy).
    pub fn scaled(&self, logits: &[f32]) -> Vec<f32> {
        let mut l = logits.to_vec();
        self.apply_penalties(&mut l);
        let t = self.params.temperature;
        if t > 0.0 {
            l.iter_mut().for_each(|x| *x /= t);
        }
        l
    }

    /// The distribution sampled from (after temperature and the masks), for temperature > 0.
    pub fn probs(&self, logits: &[f32]) -> Vec<f32> {
        let p = &self.params;
        let scaled: Vec<f32> = logits.iter().map(|x| x / p.temperature).collect();
        let mut probs = softmax(&scaled);
        if p.top_k > 0 {
            mask_top_k(&mut probs, p.top_k);
        }
        if p.top_p < 1.0 {
            mask_top_p(&mut probs, p.top_p);
        }
        if p.min_p > 0.0 {
            mask_min_p(&mut probs, p.min_p);
        }
        normalize(&mut probs);
        probs
    }
}

pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[best] {
            best = i;
        }
    }
    best as u32
}

fn softmax(l: &[f32]) -> Vec<f32> {
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = l.iter().map(|&x| (x - m).exp()).collect();
    normalize(&mut p);
    p
}

fn normalize(p: &mut [f32]) {
    let s: f64 = p.iter().map(|&x| x as f64).sum();
    if s > 0.0 {
        for x in p.iter_mut() {
            *x = (*x as f64 / s) as f32;
        }
    }
}

/// Ids of the nonzero entries sorted by probability, highest first (ties: lower id first).
fn order(p: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).filter(|&i| p[i] > 0.0).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx
}

/// Keep the `k` most likely tokens (ties: lower id first). A selection, not a sort: linear in
/// the vocabulary.
pub fn mask_top_k(p: &mut [f32], k: usize) {
    if k >= p.len() {
        return;
    }
    let mut idx: Vec<usize> = (0..p.len()).collect();
    let cmp = |a: &usize, b: &usize| p[*b].total_cmp(&p[*a]).then(a.cmp(b));
    if k > 0 {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    for &i in &idx[k..] {
        p[i] = 0.0;
    }
}

/// Keep the smallest set of most likely tokens whose mass reaches `top_p` (at least one).
pub fn mask_top_p(p: &mut [f32], top_p: f32) {
    let total: f64 = p.iter().map(|&x| x as f64).sum();
    let mut cum = 0.0f64;
    let mut keep = true;
    for i in order(p) {
        if keep {
            cum += p[i] as f64 / total;
            if cum >= top_p as f64 {
                keep = false;
            }
        } else {
            p[i] = 0.0;
        }
    }
}

/// Drop tokens less likely than `min_p` times the most likely one.
pub fn mask_min_p(p: &mut [f32], min_p: f32) {
    let max = p.iter().copied().fold(0.0, f32::max);
    for x in p.iter_mut() {
        if *x < min_p * max {
            *x = 0.0;
        }
    }
}

/// Inverse-CDF draw with `u` in [0, 1).
fn draw(p: &[f32], u: f32) -> u32 {
    let mut cum = 0.0f32;
    let mut last = 0;
    for (i, &x) in p.iter().enumerate() {
        if x > 0.0 {
            cum += x;
            last = i;
            if u < cum {
                return i as u32;
            }
        }
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist() -> Vec<f32> {
        vec![0.05, 0.4, 0.1, 0.3, 0.15]
    }

    #[test]
    fn top_k_keeps_the_k_largest() {
        let mut p = dist();
        mask_top_k(&mut p, 2);
        assert_eq!(p, vec![0.0, 0.4, 0.0, 0.3, 0.0]);
    }

    /// The linear selection keeps exactly the set a full sort keeps, ties to the lower id.
    #[test]
    fn top_k_selection_equals_a_full_sort_with_ties() {
        let mut rng = Rng::new(3);
        for n in [1, 2, 7, 100, 4099] {
            for k in [0, 1, 2, 5, 40, n - 1, n] {
                // Few distinct values, so ties are everywhere.
                let p: Vec<f32> = (0..n).map(|_| (rng.next_u64() % 6) as f32 / 8.0).collect();
                let mut idx: Vec<usize> = (0..n).collect();
                idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
                let mut want = p.clone();
                for &i in &idx[k.min(n)..] {
                    want[i] = 0.0;
                }
                let mut got = p.clone();
                mask_top_k(&mut got, k);
                assert_eq!(got, want, "n={n} k={k}");
            }
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        let mut p = dist();
        mask_top_p(&mut p, 0.7); // 0.4 + 0.3 = 0.7 reaches it
        assert_eq!(p, vec![0.0, 0.4, 0.0, 0.3, 0.0]);
        let mut p = dist();
        mask_top_p(&mut p, 0.71); // needs 0.15 too
        assert_eq!(p, vec![0.0, 0.4, 0.0, 0.3, 0.15]);
        let mut p = dist();
        mask_top_p(&mut p, 0.01); // always at least the best one
        assert_eq!(p, vec![0.0, 0.4, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn min_p_is_relative_to_the_best() {
        let mut p = dist();
        mask_min_p(&mut p, 0.3); // threshold 0.12
        assert_eq!(p, vec![0.0, 0.4, 0.0, 0.3, 0.15]);
    }

    #[test]
    fn greedy_ties_go_to_the_lower_id() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn penalties_follow_transformers_and_openai() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params, &[0, 1]);
        s.accept(2);
        s.accept(2);
        let mut l = vec![4.0, -4.0, 1.0, 1.0];
        s.apply_penalties(&mut l);
        assert_eq!(l, vec![2.0, -8.0, 0.5 - 0.5 - 0.5, 1.0]);
    }

    #[test]
    fn same_seed_same_draws_and_frequencies_follow_probs() {
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            ..Default::default()
        };
        let logits: Vec<f32> = dist().iter().map(|p| p.ln()).collect();
        let run = |n| {
            let mut s = Sampler::new(params.clone(), &[]);
            (0..n).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(50), run(50));
        let draws = run(20000);
        for (t, &p) in dist().iter().enumerate() {
            let f = draws.iter().filter(|&&d| d as usize == t).count() as f32 / 20000.0;
            assert!((f - p).abs() < 0.015, "token {t}: {f} vs {p}");
        }
    }

    #[test]
    fn bad_params_are_named() {
        let p = SamplingParams {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().to_string().contains("top_p"));
    }
}
