//! Grouped Q8_0 matmuls of 1, 4, 16 and 64 tokens with the weights in cache (one 4 MB matrix,
//! reused) and streamed from DRAM (32 different ones, 136 MB): GMAC/s on the pool. The gap
//! between the two at 4-64 tokens is what `packed::dot16`'s `ahead` prefetch narrows.
//! `cargo run --release -p glm5-kernels --example multi_token [threads]`

use std::time::Instant;

use glm5_kernels::{pool, Acts, Matrix, WFormat};

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    pool::set_threads(threads);
    let (rows, cols) = (2048, 2048);
    for copies in [1usize, 32] {
        let mats: Vec<Matrix> = (0..copies)
            .map(|c| {
                let w: Vec<f32> = (0..rows * cols)
                    .map(|i| (((i + c) * 7919 % 1000) as f32 - 500.0) / 1e4)
                    .collect();
                Matrix::quantize(&w, rows, cols, WFormat::Q8_0)
                    .expect("2048 columns fit Q8_0")
                    .packed()
            })
            .collect();
        for n in [1usize, 4, 16, 64] {
            let x: Vec<f32> = (0..cols * n).map(|i| (i as f32).sin()).collect();
            let a = Acts::new(&x, cols);
            let reps = 64 / copies;
            let mut best = 0f64;
            for _ in 0..3 {
                let t = Instant::now();
                for _ in 0..reps {
                    for m in &mats {
                        std::hint::black_box(glm5_kernels::matrix::matmul_many(&[(m, &a)]));
                    }
                }
                let macs = (reps * copies * rows * cols * n) as f64;
                best = best.max(macs / t.elapsed().as_secs_f64() / 1e9);
            }
            println!(
                "{:>4} MB of weights, {n:>2} tokens: {best:.0} GMAC/s",
                (copies * mats[0].nbytes()) >> 20
            );
        }
    }
}
