//! Step costs of the bundled model at a given context: one decode row, a verify of `k + 1`
//! rows, and the MTP layer + head for one row; microseconds, medians.
//! `cargo run --release -p glm5-model --example tiny_step [ctx] [threads] [mode]`
//! (`mode` `decode` or `verify` loops only that, for `perf`).

use std::time::Instant;

use glm5_kernels::{pool, WFormat};
use glm5_model::{Model, Quant};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (ctx, threads) = (arg(1, 300), arg(2, 1));
    let mode = std::env::args().nth(3).unwrap_or_default();
    pool::set_threads(threads);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/glm5-tiny");
    let model = Model::load_with(&root, Quant::Uniform(WFormat::Q8_0), true).expect("load");
    let prompt: Vec<u32> = (0..ctx).map(|i| ((i * 7919 + 17) % 4000) as u32).collect();
    let mut cache = model.new_cache();
    model.forward(&prompt, &mut cache, None).expect("prefill");
    let reps = if mode.is_empty() { 200 } else { 20000 };
    let (mut one, mut four) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        if mode != "verify" {
            let t = Instant::now();
            model.forward(&[5], &mut cache, None).unwrap();
            one.push(t.elapsed().as_secs_f64() * 1e6);
            cache.truncate(ctx);
        }
        if mode != "decode" {
            let t = Instant::now();
            model.forward(&[5, 6, 7, 8], &mut cache, None).unwrap();
            four.push(t.elapsed().as_secs_f64() * 1e6);
            cache.truncate(ctx);
        }
    }
    if mode.is_empty() {
        let (a, b) = (median(one), median(four));
        println!(
            "ctx {ctx}, {threads} threads: decode {a:.1} us, verify 4 {b:.1} us = {:.2}x",
            b / a
        );
    }
}
