//! GEMV weight-streaming rate per format: `cargo run --release -p glm5-kernels --example
//! gemv_bandwidth [threads]` (`HOT=1`: a cache-resident matrix, the kernel's compute ceiling). Rotates over enough 2048x2048 matrices (>= 512 MiB) that every call
//! reads from DRAM; prints GB/s of weight bytes (median of the passes).

use std::time::Instant;

use glm5_kernels::{pool, Bytes, Matrix, WFormat};

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let threads = pool::set_threads(threads);
    println!(
        "isa {} threads {threads}",
        glm5_kernels::Isa::detect().name()
    );
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2048);
    let cols = 2048;
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 1e4)
        .collect();
    let x: Vec<f32> = (0..cols).map(|i| (i as f32).sin()).collect();
    let hot = std::env::var("HOT").is_ok();
    println!(
        "plain streaming read: {:.1} GB/s (best of 5, 1 GiB)",
        glm5_kernels::membw::read_bandwidth_gb_s(1024, 5)
    );
    let rows = if hot { 128 } else { rows };
    for (fmt, grouped) in [
        (WFormat::Q8_0, true),
        (WFormat::Q8_0, false),
        (WFormat::Q4K, true),
        (WFormat::Q4K, false),
        (WFormat::Q6K, true),
        (WFormat::Q6K, false),
        (WFormat::BF16, false),
    ] {
        let plain = Matrix::quantize(&w[..rows * cols], rows, cols, fmt).unwrap();
        // Each copy its own bytes (a grouped matrix's clone would share them).
        let copy = || {
            let m = Matrix::from_bytes(fmt, rows, cols, Bytes::Owned(plain.bytes().to_vec()));
            let m = m.unwrap();
            if grouped {
                m.packed()
            } else {
                m
            }
        };
        let one = copy();
        // Stream: enough copies that each call reads DRAM; HOT=1: one L2-sized matrix, many times.
        let copies = if hot {
            2000
        } else {
            (512 << 20) / one.nbytes() + 1
        };
        let ms: Vec<Matrix> = (0..if hot { 1 } else { copies }).map(|_| copy()).collect();
        let mut rates = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            for m in ms.iter().cycle().take(copies) {
                std::hint::black_box(m.matmul(&x));
            }
            rates.push((copies * one.nbytes()) as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{:>9}: {:.1} GB/s (median of 5; best {:.1})",
            format!("{:?}", one).replace("Matrix", ""),
            rates[2],
            rates[4]
        );
    }
}
