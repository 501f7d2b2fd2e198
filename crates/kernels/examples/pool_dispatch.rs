//! Cost of one pool dispatch: `pool::run(n, f)` with trivial chunks, back to back, as a decode
//! step issues ~130 of them per token. `cargo run --release -p glm5-kernels --example
//! pool_dispatch [threads]`
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use glm5_kernels::pool;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    pool::set_threads(threads);
    let hits = AtomicUsize::new(0);
    for n in [2usize, 8, 64] {
        let reps = 200_000;
        let t = Instant::now();
        for _ in 0..reps {
            pool::run(n, &|_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
        }
        let us = t.elapsed().as_secs_f64() / reps as f64 * 1e6;
        println!("{threads} threads, {n:>2} empty chunks: {us:.2} us per dispatch");
    }
    assert!(hits.load(Ordering::Relaxed) > 0);
}
