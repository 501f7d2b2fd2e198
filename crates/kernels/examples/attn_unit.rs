//! Times one attention unit (`attn::unit`) at the bench model's shape: 16 heads, rows of
//! 512 + 64, a chunk of 256 keys scattered over a 32K-row cache, f32 and bf16 rows. Prints
//! GFLOP/s of the unit (scores + weighted sum) for comparison with `glm5 bench`'s f32 peak.
//!
//! `cargo run --release -p glm5-kernels --example attn_unit [-- keys [r]]` (r below 512 sums
//! fewer values, to time the scores apart)

use std::time::Instant;

use glm5_kernels::attn;
use glm5_kernels::rows::{RowFormat, Rows};

fn main() {
    let nk: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let (nh, rd, t_all) = (16, 64, 32768);
    let r: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let w = 512 + rd;
    let mut seed = 1u64;
    let mut rnd = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let vals: Vec<f32> = (0..t_all * w).map(|_| rnd()).collect();
    let q: Vec<f32> = (0..nh * w).map(|_| rnd() * 0.1).collect();
    let ts: Vec<usize> = (0..nk).map(|i| (i * 7919 * 13) % t_all).collect();
    let flops = 2.0 * (nh * nk * (w + r)) as f64;
    for fmt in [RowFormat::F32, RowFormat::Bf16] {
        let mut rows = Rows::new(fmt, w);
        rows.push(&vals);
        let packed = attn::PackedQuery::new(&q, nh, w, r, fmt);
        let mut out = vec![0f32; nh * (r + 2)];
        let reps = 2000;
        for (label, spread) in [("L2-resident", false), ("scattered", true)] {
            let t0 = Instant::now();
            for k in 0..reps {
                let sel: Vec<usize> = if spread {
                    ts.iter().map(|t| (t + k * 1031) % t_all).collect()
                } else {
                    ts.clone()
                };
                attn::unit(&packed, &rows, &sel, r, &mut out);
            }
            let dt = t0.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{:>4} rows, {nk} keys, {label:>11}: {:7.1} us/unit, {:6.1} GFLOP/s",
                fmt.name(),
                dt * 1e6,
                flops / dt / 1e9
            );
        }
    }
}
