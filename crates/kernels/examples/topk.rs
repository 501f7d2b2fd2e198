//! Times `dsa::topk_set`: the 2,048 best of 32K indexer-like scores (ReLU'd sums, so many
//! values share a histogram bucket), as a decode step at 32K context selects once per layer.
//! `cargo run --release -p glm5-kernels --example topk [-- threads]`

use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    glm5_kernels::pool::set_threads(threads);
    let mut s = 1u64;
    let mut rnd = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let x: Vec<f32> = (0..32768)
        .map(|_| (0..4).map(|_| rnd().max(0.0)).sum::<f32>())
        .collect();
    let reps = 2000;
    let t = Instant::now();
    let mut n = 0;
    for _ in 0..reps {
        n += glm5_kernels::dsa::topk_set(&x, 2048).len();
    }
    assert_eq!(n, reps * 2048);
    println!(
        "{threads} threads: {:.1} us per top-2048 of 32768",
        t.elapsed().as_secs_f64() / reps as f64 * 1e6
    );
}
