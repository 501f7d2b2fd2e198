//! Compute ceiling of each row-dot kernel with everything in L1/L2:
//! `cargo run --release -p glm5-kernels --example dot_rate`.

use std::time::Instant;

use glm5_kernels::qdot::{self, Isa, Q8Acts};
use glm5_kernels::{Matrix, WFormat};

fn main() {
    let cols = 2048;
    let rows = 64;
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 1e4)
        .collect();
    let x: Vec<f32> = (0..cols).map(|i| (i as f32).sin()).collect();
    let acts = Q8Acts::quantize(&x, cols);
    for isa in [Isa::detect(), Isa::Avx2, Isa::Scalar] {
        // Q8_0 and Q4_K regrouped by 16 rows, 1 and 4 activation rows.
        let acts4 = Q8Acts::quantize(&x.repeat(4), cols);
        for (fmt, n) in [
            (WFormat::Q8_0, 1),
            (WFormat::Q8_0, 4),
            (WFormat::Q4K, 1),
            (WFormat::Q4K, 4),
            (WFormat::Q6K, 1),
        ] {
            let g = Matrix::quantize(&w, rows, cols, fmt).unwrap().packed();
            if !g.is_grouped() {
                continue;
            }
            let reps = 2000;
            let rowsv: Vec<_> = (0..n).map(|t| acts4.row(t)).collect();
            let rb = fmt.row_bytes(cols);
            let t = Instant::now();
            let mut y = [[0f32; 16]; 4];
            for _ in 0..reps {
                for gi in 0..rows / 16 {
                    let group = &g.bytes()[gi * 16 * rb..(gi + 1) * 16 * rb];
                    glm5_kernels::packed::dot16(fmt, group, &rowsv, &mut y, isa, false);
                    std::hint::black_box(&y);
                }
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{:>11} {}x16 n={n}: {:.1} GB/s of weights, {:.1} GMAC/s",
                isa.name(),
                fmt.name(),
                (reps * g.nbytes()) as f64 / secs / 1e9,
                (reps * rows * cols * n) as f64 / secs / 1e9
            );
        }
        for fmt in [WFormat::Q8_0, WFormat::Q4K, WFormat::Q6K] {
            let m = Matrix::quantize(&w, rows, cols, fmt).unwrap();
            let reps = 2000;
            let t = Instant::now();
            let mut s = 0f32;
            for _ in 0..reps {
                for r in 0..rows {
                    s += qdot::dot_q(fmt, m.row_bytes(r), acts.row(0), isa);
                }
            }
            let secs = t.elapsed().as_secs_f64();
            std::hint::black_box(s);
            println!(
                "{:>11} {:>5}: {:.1} GB/s of weights, {:.1} ns per row of {cols}",
                isa.name(),
                fmt.name(),
                (reps * m.nbytes()) as f64 / secs / 1e9,
                secs / (reps * rows) as f64 * 1e9
            );
        }
    }
}
