//! Counters and histograms the engine keeps for `/metrics` (rendered by the server).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus-style histogram: cumulative bucket counts, sum and count.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (b, &le) in self.buckets.iter_mut().zip(&LATENCY_BUCKETS) {
            if v <= le {
                *b += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests_total: AtomicUsize,
    pub prompt_tokens_total: AtomicUsize,
    pub generation_tokens_total: AtomicUsize,
    pub prefix_hit_tokens_total: AtomicUsize,
    /// Of those, tokens read back from the prefix cache on disk.
    pub prefix_disk_hit_tokens_total: AtomicUsize,
    pub cancelled_total: AtomicUsize,
    pub preempted_total: AtomicUsize,
    pub steps_total: AtomicUsize,
    /// Sum over steps of the sequences in the step's batch (mean batch size = this / steps).
    pub batch_seqs_total: AtomicUsize,
    pub batch_tokens_total: AtomicUsize,
    pub step_micros_total: AtomicU64,
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    /// Speculative decoding: verification steps, tokens drafted, drafts accepted.
    pub spec_steps_total: AtomicUsize,
    pub spec_draft_tokens_total: AtomicUsize,
    pub spec_accepted_tokens_total: AtomicUsize,
    pub ttft: Mutex<Histogram>,
    pub itl: Mutex<Histogram>,
}

impl Metrics {
    pub(crate) fn set_gauges(&self, waiting: usize, running: usize) {
        self.waiting.store(waiting, Ordering::Relaxed);
        self.running.store(running, Ordering::Relaxed);
    }

    pub(crate) fn observe_batch(&self, seqs: usize, tokens: usize, took: Duration) {
        self.steps_total.fetch_add(1, Ordering::Relaxed);
        self.batch_seqs_total.fetch_add(seqs, Ordering::Relaxed);
        self.batch_tokens_total.fetch_add(tokens, Ordering::Relaxed);
        self.step_micros_total
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub(crate) fn observe_ttft(&self, d: Duration) {
        self.ttft
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(d.as_secs_f64());
    }

    pub(crate) fn observe_itl(&self, d: Duration) {
        self.itl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(d.as_secs_f64());
    }
}
