//! The continuous-batching scheduler with a fake model whose next token depends on the whole
//! cached sequence (so a wrong cache, a lost token or a mixed-up batch changes the output):
//! batching, admission, cancellation, preemption, prefix caching, stop strings, queue limits.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glm5_engine::batch::BatchModel;
use glm5_engine::scheduler::{self, EngineConfig, EngineHandle, Event, Request, Usage};
use glm5_engine::{Error, FinishReason, SamplingParams, Tokenizer};

const VOCAB: usize = 4096;

#[derive(Default)]
struct Fake {
    /// Tokens computed (prefill and decode) over all calls.
    computed: AtomicUsize,
    /// Sequences per forward call.
    batches: Mutex<Vec<usize>>,
    delay: Duration,
    /// While set, `forward` waits: lets a test queue several requests before the first step,
    /// so they meet in the scheduler however the threads happen to be timed.
    held: AtomicBool,
    /// A drafter (speculative decoding) that is right except at every `n`-th position.
    wrong_every: Option<usize>,
    /// Logits spread over four tokens (a distribution to sample) instead of one-hot.
    spread: bool,
    /// `forward` panics when a batch holds this token (a bug in model code, simulated).
    panic_on: Option<u32>,
}

/// The next token after `seq`: a hash of every token, kept to ordinary text tokens.
fn next_of(seq: &[u32]) -> u32 {
    let h = seq.iter().fold(1469598103934665603u64, |h, &t| {
        (h ^ t as u64).wrapping_mul(1099511628211)
    });
    (h % 3000) as u32 + 100
}

/// Fake logits after `seq`: one-hot at `next_of`, or (`spread`) four tokens 100..104 with
/// logits in [0, 4) from the hash and every other token impossible.
fn logits_of(seq: &[u32], spread: bool) -> Vec<f32> {
    let mut l = vec![0f32; VOCAB];
    if spread {
        l.iter_mut().for_each(|x| *x = -1e9);
        let h = next_of(seq) as u64 * 2654435761;
        for j in 0..4 {
            l[100 + j] = ((h >> (5 * j)) & 0x1f) as f32 / 8.0;
        }
    } else {
        l[next_of(seq) as usize] = 5.0;
    }
    l
}

impl BatchModel for Fake {
    type Cache = Vec<u32>;
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn max_context(&self) -> usize {
        256
    }
    fn new_cache(&self, _draft: bool) -> Vec<u32> {
        Vec::new()
    }
    fn cache_len(c: &Vec<u32>) -> usize {
        c.len()
    }
    fn truncate(c: &mut Vec<u32>, len: usize) {
        c.truncate(len);
    }
    fn fork(c: &Vec<u32>) -> Vec<u32> {
        c.clone()
    }
    fn cache_bytes_per_token(&self) -> usize {
        4
    }
    fn forward(
        &self,
        batch: &mut [(&[u32], &mut Vec<u32>)],
        rows: &[usize],
    ) -> glm5_engine::Result<Vec<Vec<f32>>> {
        while self.held.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(self.delay);
        if let Some(p) = self.panic_on {
            assert!(
                batch.iter().all(|(t, _)| !t.contains(&p)),
                "simulated fault on token {p}"
            );
        }
        self.batches.lock().unwrap().push(batch.len());
        Ok(batch
            .iter_mut()
            .zip(rows)
            .map(|((t, c), &r)| {
                c.extend_from_slice(t);
                self.computed.fetch_add(t.len(), Ordering::Relaxed);
                (c.len() + 1 - r..=c.len())
                    .flat_map(|end| logits_of(&c[..end], self.spread))
                    .collect()
            })
            .collect())
    }
    fn can_draft(&self) -> bool {
        self.wrong_every.is_some()
    }
    fn draft(
        &self,
        batch: &mut [(&[u32], &mut Vec<u32>, usize)],
    ) -> glm5_engine::Result<Vec<Vec<u32>>> {
        let n = self.wrong_every.expect("drafting");
        Ok(batch
            .iter()
            .map(|(tokens, cache, k)| {
                assert!(
                    *k == 0 || cache.len() + 1 == tokens.len(),
                    "drafts follow the cache"
                );
                let mut seq = tokens.to_vec();
                for _ in 0..*k {
                    let right = if self.spread {
                        100 + next_of(&seq) % 4
                    } else {
                        next_of(&seq)
                    };
                    seq.push(if seq.len() % n == 0 { right + 1 } else { right });
                }
                seq[tokens.len()..].to_vec()
            })
            .collect())
    }
}

fn tokenizer() -> Arc<Tokenizer> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/glm5-tiny");
    Arc::new(Tokenizer::from_path(&dir).unwrap())
}

fn config() -> EngineConfig {
    EngineConfig {
        max_seqs: 4,
        max_queue: 64,
        ctx: 256,
        kv_budget_tokens: 4096,
        prefill_chunk: 16,
        prefix_cache_tokens: 1024,
        draft: 0,
        prefix_disk: None,
    }
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request {
        prompt,
        params: SamplingParams::greedy(),
        max_tokens,
        stop: vec![],
        stop_token_ids: vec![],
        logprobs: None,
        skip_special_tokens: false,
        ..Default::default()
    }
}

/// What greedy decoding of the fake model gives, computed directly.
fn expected(prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        seq.push(next_of(&seq));
    }
    seq[prompt.len()..].to_vec()
}

fn prompt(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (seed * 131 + i * 17) % 3000 + 50)
        .collect()
}

/// Tokens, text, usage and finish of one request, read to the end.
fn collect(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> (Vec<u32>, String, Usage, FinishReason) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    loop {
        match rx
            .blocking_recv()
            .expect("the engine ends every request with Done")
        {
            Event::Token { id, text: t, .. } => {
                ids.push(id);
                text.push_str(&t);
            }
            Event::Text(t) => text.push_str(&t),
            Event::Admitted { .. } | Event::PromptLogprobs(_) | Event::Routes(_) => {}
            Event::Done(u, f) => return (ids, text, u, f),
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
}

fn start(fake: Fake, cfg: EngineConfig) -> (Arc<Fake>, EngineHandle) {
    let m = Arc::new(fake);
    let h = scheduler::start(m.clone(), tokenizer(), cfg);
    (m, h)
}

#[test]
fn concurrent_requests_are_batched_and_each_gets_its_own_tokens() {
    let (m, h) = start(
        Fake {
            delay: Duration::from_millis(2),
            held: AtomicBool::new(true),
            ..Default::default()
        },
        config(),
    );
    let rxs: Vec<_> = (0..8)
        .map(|i| {
            h.submit(request(prompt(i, 5 + 7 * i as usize), 20))
                .unwrap()
        })
        .collect();
    m.held.store(false, Ordering::Release);
    for (i, rx) in rxs.into_iter().enumerate() {
        let (ids, _, usage, finish) = collect(rx);
        assert_eq!(
            ids,
            expected(&prompt(i as u32, 5 + 7 * i), 20),
            "request {i}"
        );
        assert_eq!(finish, FinishReason::Length);
        assert_eq!(usage.completion_tokens, 20);
    }
    let batches = m.batches.lock().unwrap();
    assert!(
        batches.iter().all(|&b| b <= 4),
        "max_seqs is 4: {batches:?}"
    );
    assert!(
        batches.iter().filter(|&&b| b == 4).count() > 10,
        "{batches:?}"
    );
}

#[test]
fn a_dropped_receiver_cancels_its_sequence_and_the_rest_go_on() {
    let (_, h) = start(
        Fake {
            delay: Duration::from_millis(1),
            ..Default::default()
        },
        config(),
    );
    let mut doomed = h.submit(request(prompt(1, 8), 200)).unwrap();
    let keep = h.submit(request(prompt(2, 8), 30)).unwrap();
    // Read the admission and two tokens, then hang up.
    assert!(matches!(
        doomed.blocking_recv(),
        Some(Event::Admitted { .. })
    ));
    for _ in 0..2 {
        assert!(matches!(doomed.blocking_recv(), Some(Event::Token { .. })));
    }
    drop(doomed);
    let (ids, ..) = collect(keep);
    assert_eq!(ids, expected(&prompt(2, 8), 30));
    for _ in 0..200 {
        if h.metrics.cancelled_total.load(Ordering::Relaxed) == 1
            && h.metrics.running.load(Ordering::Relaxed) == 0
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "the cancelled sequence was not dropped: cancelled {} running {}",
        h.metrics.cancelled_total.load(Ordering::Relaxed),
        h.metrics.running.load(Ordering::Relaxed)
    );
}

#[test]
fn a_request_dropped_while_waiting_is_cancelled_and_leaves_the_queue() {
    let (_, h) = start(
        Fake {
            delay: Duration::from_millis(1),
            ..Default::default()
        },
        EngineConfig {
            max_seqs: 1,
            ..config()
        },
    );
    let busy = h.submit(request(prompt(1, 8), 60)).unwrap();
    let waiting = h.submit(request(prompt(2, 8), 10)).unwrap();
    drop(waiting);
    let (ids, ..) = collect(busy);
    assert_eq!(ids, expected(&prompt(1, 8), 60));
    for _ in 0..200 {
        if h.metrics.cancelled_total.load(Ordering::Relaxed) == 1 && h.queue_depth() == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "the waiting request was not cancelled: cancelled {} queued {}",
        h.metrics.cancelled_total.load(Ordering::Relaxed),
        h.queue_depth()
    );
}

#[test]
fn preemption_under_a_small_kv_budget_keeps_every_output_exact() {
    let cfg = EngineConfig {
        kv_budget_tokens: 256,
        ..config()
    };
    let fake = Fake {
        held: AtomicBool::new(true),
        ..Default::default()
    };
    let (m, h) = start(fake, cfg);
    let rxs: Vec<_> = (0..4)
        .map(|i| h.submit(request(prompt(i, 30), 60)).unwrap())
        .collect();
    // All four are queued before the first step: 4 x (30 + 60) tokens cannot fit in 256.
    m.held.store(false, Ordering::Release);
    for (i, rx) in rxs.into_iter().enumerate() {
        let (ids, ..) = collect(rx);
        assert_eq!(ids, expected(&prompt(i as u32, 30), 60), "request {i}");
    }
    assert!(h.metrics.preempted_total.load(Ordering::Relaxed) > 0);
}

#[test]
fn a_repeated_prefix_is_not_recomputed() {
    let (m, h) = start(Fake::default(), config());
    let system = prompt(7, 100);
    let mut first = system.clone();
    first.extend(prompt(8, 10));
    let (ids, _, usage, _) = collect(h.submit(request(first.clone(), 5)).unwrap());
    assert_eq!(ids, expected(&first, 5));
    assert_eq!(usage.cached_tokens, 0);
    let before = m.computed.load(Ordering::Relaxed);
    let mut second = system.clone();
    second.extend(prompt(9, 12));
    let (ids, _, usage, _) = collect(h.submit(request(second.clone(), 5)).unwrap());
    assert_eq!(ids, expected(&second, 5));
    assert_eq!(usage.cached_tokens, 100);
    // 12 new prompt tokens and 4 decode steps (the 5th token needs no forward).
    assert_eq!(m.computed.load(Ordering::Relaxed) - before, 12 + 4);
    // The same prompt again: all but its last token come from the cache.
    let (_, _, usage, _) = collect(h.submit(request(second.clone(), 5)).unwrap());
    assert_eq!(usage.cached_tokens, second.len() - 1);
}

#[test]
fn stop_strings_stop_tokens_and_logprobs() {
    let (_, h) = start(Fake::default(), config());
    let p = prompt(3, 6);
    let (_, full_text, ..) = collect(h.submit(request(p.clone(), 30)).unwrap());
    let want = expected(&p, 30);
    // A stop string from the middle of the text: output ends right before it.
    let mid = full_text
        .char_indices()
        .nth(full_text.chars().count() / 2)
        .unwrap()
        .0;
    let stop: String = full_text[mid..].chars().take(3).collect();
    let cut = full_text.find(&stop).unwrap();
    let mut r = request(p.clone(), 30);
    r.stop = vec![stop.clone()];
    let (_, text, _, finish) = collect(h.submit(r).unwrap());
    assert_eq!(text, full_text[..cut]);
    assert_eq!(finish, FinishReason::StopString(stop));
    // A stop token: the 5th generated token ends the output and is not part of it.
    let mut r = request(p.clone(), 30);
    r.stop_token_ids = vec![want[4]];
    r.logprobs = Some(3);
    let mut rx = h.submit(r).unwrap();
    let mut got = Vec::new();
    let finish = loop {
        match rx.blocking_recv().unwrap() {
            Event::Token { id, logprob, .. } => {
                let lp = logprob.expect("logprobs were asked for");
                assert_eq!(lp.token, id);
                assert_eq!(lp.top.len(), 3);
                assert_eq!(lp.top[0].0, id, "greedy picks the most likely token");
                assert!(lp.logprob < 0.0 && lp.top[0].1 >= lp.top[1].1);
                got.push(id);
            }
            Event::Done(_, f) => break f,
            _ => {}
        }
    };
    let first = want.iter().position(|&t| t == want[4]).unwrap();
    assert_eq!(got, want[..first]);
    assert_eq!(finish, FinishReason::StopToken(want[4]));
}

#[test]
fn a_full_queue_refuses_and_a_long_prompt_is_rejected() {
    let cfg = EngineConfig {
        max_seqs: 1,
        max_queue: 2,
        ..config()
    };
    let (_, h) = start(
        Fake {
            delay: Duration::from_millis(20),
            ..Default::default()
        },
        cfg,
    );
    let e = h.submit(request(prompt(1, 256), 5)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::PromptTooLong {
                prompt: 256,
                ctx: 256
            }
        ),
        "{e}"
    );
    let e = h.submit(request(vec![5000], 5)).unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    // One runs, two wait, the fourth is refused.
    let mut rxs = vec![h.submit(request(prompt(1, 4), 50)).unwrap()];
    std::thread::sleep(Duration::from_millis(50));
    rxs.push(h.submit(request(prompt(2, 4), 5)).unwrap());
    rxs.push(h.submit(request(prompt(3, 4), 5)).unwrap());
    let e = h.submit(request(prompt(4, 4), 5)).unwrap_err();
    assert!(matches!(e, Error::QueueFull { waiting: 2 }), "{e}");
    for rx in rxs {
        collect(rx);
    }
    // Room again.
    collect(h.submit(request(prompt(5, 4), 2)).unwrap());
}

fn with_draft(cfg: EngineConfig, k: usize) -> EngineConfig {
    EngineConfig { draft: k, ..cfg }
}

/// Speculative decoding in the scheduler: drafts that are sometimes wrong, verified in the
/// batched forward and rolled back, give exactly the greedy output, with preemption and the
/// prefix cache in play; the acceptance counters move.
#[test]
fn drafted_tokens_are_verified_and_greedy_output_is_unchanged() {
    let mut cfg = with_draft(config(), 3);
    cfg.kv_budget_tokens = 300; // forces preemption with 4 sequences of ~100 tokens
    let (m, h) = start(
        Fake {
            wrong_every: Some(4),
            held: AtomicBool::new(true),
            ..Default::default()
        },
        cfg,
    );
    let shared = prompt(7, 40);
    let rxs: Vec<_> = (0..6)
        .map(|i| {
            let mut p = shared.clone();
            p.extend(prompt(i, 3 + i as usize));
            h.submit(request(p, 50)).unwrap()
        })
        .collect();
    m.held.store(false, Ordering::Release);
    for (i, rx) in rxs.into_iter().enumerate() {
        let mut p = shared.clone();
        p.extend(prompt(i as u32, 3 + i));
        let (ids, _, usage, finish) = collect(rx);
        assert_eq!(ids, expected(&p, 50), "request {i}");
        assert_eq!(
            (usage.completion_tokens, finish),
            (50, FinishReason::Length)
        );
    }
    let mt = &h.metrics;
    let steps = mt.spec_steps_total.load(Ordering::Relaxed);
    let accepted = mt.spec_accepted_tokens_total.load(Ordering::Relaxed);
    let drafted = mt.spec_draft_tokens_total.load(Ordering::Relaxed);
    assert!(
        steps > 0 && accepted > 0 && accepted < drafted,
        "{steps} {accepted} {drafted}"
    );
    // Fewer forward calls than tokens: several tokens per step.
    assert!(
        m.batches.lock().unwrap().len() < 6 * 50 / 2,
        "{} forward calls",
        m.batches.lock().unwrap().len()
    );
}

/// Sampled output with drafts follows the model's distribution exactly: the joint frequencies
/// of the first three tokens over 3,000 seeded requests against the exact probabilities
/// (chi-square, cells with an expectation under 5 pooled).
#[test]
fn sampling_with_drafts_keeps_the_model_distribution() {
    let n = 3000;
    let (_, h) = start(
        Fake {
            wrong_every: Some(3),
            spread: true,
            ..Default::default()
        },
        EngineConfig {
            max_seqs: 16,
            max_queue: 4096,
            ..with_draft(config(), 2)
        },
    );
    let p = prompt(3, 6);
    let rxs: Vec<_> = (0..n)
        .map(|i| {
            let mut r = request(p.clone(), 3);
            r.params = SamplingParams {
                seed: Some(i as u64),
                ..Default::default()
            };
            h.submit(r).unwrap()
        })
        .collect();
    let mut counts = std::collections::HashMap::<Vec<u32>, f64>::new();
    for rx in rxs {
        *counts.entry(collect(rx).0).or_default() += 1.0;
    }
    let probs = |seq: &[u32]| -> Vec<f64> {
        let l = logits_of(seq, true);
        let e: Vec<f64> = (100..104).map(|t| (l[t] as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    };
    let (mut chi2, mut pooled_obs, mut pooled_exp, mut cells) = (0.0, 0.0, 0.0, 0);
    for a in 100..104u32 {
        for b in 100..104u32 {
            for c in 100..104u32 {
                let mut s = p.clone();
                let pa = probs(&s)[(a - 100) as usize];
                s.push(a);
                let pb = probs(&s)[(b - 100) as usize];
                s.push(b);
                let pc = probs(&s)[(c - 100) as usize];
                let exp = n as f64 * pa * pb * pc;
                let obs = counts.get(&vec![a, b, c]).copied().unwrap_or(0.0);
                if exp < 5.0 {
                    pooled_obs += obs;
                    pooled_exp += exp;
                } else {
                    chi2 += (obs - exp).powi(2) / exp;
                    cells += 1;
                }
            }
        }
    }
    if pooled_exp > 0.0 {
        chi2 += (pooled_obs - pooled_exp).powi(2) / pooled_exp.max(1e-9);
        cells += 1;
    }
    // 99.9th percentile of chi-square with up to 63 degrees of freedom is below 104.
    assert!(cells > 10, "{cells} cells");
    assert!(chi2 < 104.0, "chi-square {chi2:.1} over {cells} cells");
    eprintln!("chi-square {chi2:.1} over {cells} cells");
    assert!(h.metrics.spec_accepted_tokens_total.load(Ordering::Relaxed) > 0);
}

/// A panic inside a step fails every request in flight and waiting with an error event (none
/// hangs), the handle reports the engine dead, and later submissions are refused.
#[test]
fn a_panic_in_the_engine_fails_every_request_and_marks_it_dead() {
    let (_, h) = start(
        Fake {
            delay: Duration::from_millis(2),
            panic_on: Some(7),
            ..Default::default()
        },
        EngineConfig {
            max_seqs: 8,
            ..config()
        },
    );
    // Four long requests in flight, then one whose batch faults.
    let mut rxs: Vec<_> = (0..4)
        .map(|i| h.submit(request(prompt(i + 1, 8), 200)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    assert!(h.alive());
    rxs.push(h.submit(request(vec![5, 6, 7, 8], 10)).unwrap());
    for mut rx in rxs {
        let end = loop {
            match rx.blocking_recv() {
                Some(Event::Error(e)) => break Some(e),
                Some(Event::Done(..)) => break None,
                Some(_) => {}
                None => break Some("dropped".into()),
            }
        };
        let e = end.expect("a request in flight when the engine failed ends with an error");
        assert!(e.contains("simulated fault") || e == "dropped", "{e}");
    }
    for _ in 0..100 {
        if !h.alive() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!h.alive());
    assert!(matches!(
        h.submit(request(prompt(9, 8), 4)),
        Err(Error::EngineStopped)
    ));
}
