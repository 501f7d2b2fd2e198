//! The per-row work a decode step does on one thread between its matmul dispatches, at the
//! bench model's widths: `rms_norm` and 8-bit activation quantization of a 2,048-value row,
//! SwiGLU of a 768-value row. Nanoseconds per call (median of 101 batches of 1,000 calls).
//! `cargo run --release -p glm5-kernels --example serial_ops`

use std::time::Instant;

use glm5_kernels::{cpu, fvec, qdot::Q8Acts};

fn time(f: &mut dyn FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..101)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..1000 {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[50]
}

fn main() {
    let x: Vec<f32> = (0..2048)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 97.0)
        .collect();
    let w: Vec<f32> = (0..2048).map(|i| 1.0 + (i % 7) as f32 / 10.0).collect();
    let ns = time(&mut || {
        std::hint::black_box(cpu::rms_norm(std::hint::black_box(&x), &w, 1e-5));
    });
    println!("rms_norm 2048:      {ns:8.1} ns");
    let ns = time(&mut || {
        std::hint::black_box(Q8Acts::quantize(std::hint::black_box(&x), 2048));
    });
    println!("quantize 2048:      {ns:8.1} ns");
    let ns = time(&mut || {
        std::hint::black_box(fvec::swiglu(&x[..768], std::hint::black_box(&x[768..1536])));
    });
    println!("swiglu 768:         {ns:8.1} ns");
}
