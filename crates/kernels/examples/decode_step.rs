//! One decode step's weight matmuls at the bench model's shapes (12 layers: attention
//! projections, 8 routed experts + the shared one, in the dispatches the model makes), grouped
//! Q8_0 (or Q4_K, Q6_K), streamed from DRAM: GB/s of weights per step, against a plain read.
//! `cargo run --release -p glm5-kernels --example decode_step [threads] [q8_0|q4_k|q6_k]`
//! (`ROUNDS=1` prints every round: the machine's bandwidth changes between them)

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
    let step = || {
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
