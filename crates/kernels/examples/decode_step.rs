//! One decode step's weight matmuls at the bench model's shapes (12 layers: attention
//! projections, 8 routed experts + the shared one, in the dispatches the model makes), grouped
//! Q8_0 (or Q4_K, Q6_K), streamed from DRAM: GB/s of weights per step, against a plain read.
//! `cargo run --release -p glm5-kernels --example decode_step [threads] [q8_0|q4_k|q6_k]`
//! (`ROUNDS=1` prints every round: the machine's bandwidth changes between them).
//! `PLACEMENT=N`: N rounds, each timing the step as the model dispatches it (five dispatches
//! per layer) and as one dispatch of all its matmuls, against a plain read, and sorting the
//! rounds by where the two threads sat (their cache-line round trip before and after: one CCD
//! or two); prints the median ratios per placement.

use std::time::Instant;

use glm5_kernels::{pool, Acts, Bytes, Matrix, WFormat};

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    pool::set_threads(threads);
    let format = match std::env::args().nth(2).as_deref() {
        None | Some("q8_0") => WFormat::Q8_0,
        Some("q4_k") => WFormat::Q4K,
        Some("q6_k") => WFormat::Q6K,
        Some(f) => panic!("format {f}: expected q8_0, q4_k or q6_k"),
    };
    let h = 2048;
    let mk = |rows: usize, cols: usize| {
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 1e4)
            .collect();
        let m = Matrix::quantize(&w, rows, cols, format).unwrap();
        let m = Matrix::from_bytes(format, rows, cols, Bytes::Owned(m.bytes().to_vec()));
        m.unwrap().packed()
    };
    // Per layer: [q_a | kv_a], [q_b], [o_proj], 9 x [gate | up], 9 x [down].
    let proto: Vec<(usize, usize)> = vec![(768, h), (576, h), (3072, 768), (h, 2048)];
    let layers = 12;
    let mut mats: Vec<Vec<Matrix>> = Vec::new();
    for _ in 0..layers {
        let mut l: Vec<Matrix> = proto.iter().map(|&(r, c)| mk(r, c)).collect();
        for _ in 0..9 {
            l.push(mk(1536, h));
        }
        for _ in 0..9 {
            l.push(mk(h, 768));
        }
        mats.push(l);
    }
    let bytes: usize = mats.iter().flatten().map(|m| m.nbytes()).sum();
    let xh: Vec<f32> = (0..h).map(|i| (i as f32).sin()).collect();
    let x768: Vec<f32> = (0..768).map(|i| (i as f32).cos()).collect();
    let (ah, a768) = (Acts::new(&xh, h), Acts::new(&x768, 768));
    let one_dispatch = std::cell::Cell::new(false);
    let step = || {
        if one_dispatch.get() {
            let mut jobs = Vec::new();
            for l in &mats {
                jobs.extend([(&l[0], &ah), (&l[1], &ah), (&l[2], &a768), (&l[3], &ah)]);
                jobs.extend(l[4..13].iter().map(|m| (m, &ah)));
                jobs.extend(l[13..22].iter().map(|m| (m, &a768)));
            }
            glm5_kernels::matrix::matmul_many(&jobs);
            return;
        }
        for l in &mats {
            glm5_kernels::matrix::matmul_many(&[(&l[0], &ah), (&l[1], &ah)]);
            glm5_kernels::matrix::matmul_many(&[(&l[2], &a768)]);
            glm5_kernels::matrix::matmul_many(&[(&l[3], &ah)]);
            let up: Vec<_> = l[4..13].iter().map(|m| (m, &ah)).collect();
            glm5_kernels::matrix::matmul_many(&up);
            let down: Vec<_> = l[13..22].iter().map(|m| (m, &a768)).collect();
            glm5_kernels::matrix::matmul_many(&down);
        }
    };
    step();
    // Alternate with a plain read of the same bytes: this machine's bandwidth changes from one
    // minute to the next, so only rounds taken side by side compare.
    let slices: Vec<&[u8]> = mats.iter().flatten().map(|m| m.bytes()).collect();
    if let Some(n) = std::env::var("PLACEMENT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let trip = || glm5_kernels::membw::thread_round_trip_ns(2000).unwrap_or(0.0);
        // Per placement: (per-layer dispatches, one dispatch) / plain read, per round.
        let mut by: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..n {
            let before = trip();
            let mut rate = [0f64; 2];
            for (i, one) in [false, true].into_iter().enumerate() {
                one_dispatch.set(one);
                let t = Instant::now();
                step();
                rate[i] = bytes as f64 / t.elapsed().as_secs_f64() / 1e9;
            }
            let p = glm5_kernels::membw::read_slices_gb_s(&slices, 1);
            // Two CCDs: a round trip of ~300 ns against ~30-80 ns (`--example placement`);
            // rounds during which the threads moved are left out.
            let two = [before, trip()].map(|t| t > 200.0);
            if two[0] == two[1] {
                by[two[0] as usize].push((rate[0] / p, rate[1] / p));
            }
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).expect("rates are numbers"));
            v[v.len() / 2]
        };
        for (name, v) in ["one CCD", "two CCDs"].iter().zip(by) {
            if !v.is_empty() {
                println!(
                    "{name}: {} rounds; as the model dispatches {:.1}% of a plain read, one dispatch {:.1}%",
                    v.len(),
                    100.0 * median(v.iter().map(|x| x.0).collect()),
                    100.0 * median(v.iter().map(|x| x.1).collect())
                );
            }
        }
        return;
    }
    let (mut kernel, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let t = Instant::now();
        step();
        step();
        kernel.push(2.0 * bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
        plain.push(glm5_kernels::membw::read_slices_gb_s(&slices, 2));
    }
    if std::env::var_os("ROUNDS").is_some() {
        for (k, p) in kernel.iter().zip(&plain) {
            println!(
                "round: kernel {k:.1} GB/s, plain {p:.1} GB/s = {:.0}%",
                100.0 * k / p
            );
        }
    }
    let ratio: Vec<f64> = kernel.iter().zip(&plain).map(|(k, p)| k / p).collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).expect("rates are numbers"));
        v[v.len() / 2]
    };
    println!(
        "{} MB per step: median {:.1} GB/s; plain read of the same bytes {:.1} GB/s; median ratio {:.0}%",
        bytes >> 20,
        median(kernel),
        median(plain),
        100.0 * median(ratio)
    );
}
