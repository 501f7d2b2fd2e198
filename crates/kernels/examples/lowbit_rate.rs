//! Compute ceiling of the low-bit formats' decode + dot (one weight row decoded, then dotted
//! with one activation row), everything in L1/L2:
//! `cargo run --release -p glm5-kernels --example lowbit_rate`.

use std::time::Instant;

use glm5_kernels::lowbit::LowBit;
use glm5_kernels::qdot::{self, Isa, Q8Acts, WFormat};

fn main() {
    let (cols, rows) = (2048, 64);
    let x: Vec<f32> = (0..cols).map(|i| (i as f32).sin()).collect();
    let acts = Q8Acts::quantize(&x, cols);
    let mut seed = 0x9E3779B97F4A7C15u64;
    for isa in [Isa::detect(), Isa::Scalar] {
        let formats = LowBit::ALL.map(WFormat::Low);
        for fmt in formats.into_iter().chain([WFormat::Q5K, WFormat::Q4K]) {
            let rb = fmt.row_bytes(cols);
            let bytes: Vec<u8> = (0..rows * rb)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8 & 0x3F // small f16 exponents: finite scales
                })
                .collect();
            let reps = if isa == Isa::Scalar { 50 } else { 500 };
            let t = Instant::now();
            let mut s = 0f32;
            for _ in 0..reps {
                for r in 0..rows {
                    s += qdot::dot_q(fmt, &bytes[r * rb..(r + 1) * rb], acts.row(0), isa);
                }
            }
            let secs = t.elapsed().as_secs_f64();
            std::hint::black_box(s);
            println!(
                "{:>11} {:>7}: {:5.1} GB/s of weights, {:5.2} G values/s",
                isa.name(),
                fmt.name(),
                (reps * rows * rb) as f64 / secs / 1e9,
                (reps * rows * cols) as f64 / secs / 1e9
            );
        }
    }
}
