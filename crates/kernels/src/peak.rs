//! This machine's compute ceilings, measured: int8 multiply-accumulates (`vpdpbusd`) and f32
//! FMAs per second on every pool thread at once, each thread running independent chains in
//! registers. `glm5 bench` states prompt processing as a fraction of these.

use std::time::Instant;

use crate::pool;
use crate::qdot::Isa;

/// Best-of-`reps` peak in operations per second (a multiply-add counts 2) of `f(iters)` run
/// over the pool; `ops_per_iter` per call per iteration.
fn measure(reps: usize, ops_per_iter: f64, f: &(dyn Fn(usize) + Sync)) -> f64 {
    // Many chunks per thread, handed out by the pool's counter, as a matmul's would be.
    let chunks = 16 * pool::global().threads();
    let iters = 250_000;
    let mut best = 0f64;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        pool::run(chunks, &|_| f(iters));
        let secs = t.elapsed().as_secs_f64();
        best = best.max(chunks as f64 * iters as f64 * ops_per_iter / secs);
    }
    best
}

/// Int8 peak in GOP/s (2 per multiply-add), or `None` without AVX-512 VNNI.
pub fn int8_peak_gops(reps: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512Vnni {
        // SAFETY: AVX-512 VNNI was detected.
        let f = |n: usize| {
            std::hint::black_box(unsafe { crate::x86::vnni_loop(n, 3) });
        };
        return Some(measure(reps, 12.0 * 64.0 * 2.0, &f) / 1e9);
    }
    None
}

/// f32 peak in GFLOP/s (2 per FMA), or `None` without AVX-512.
pub fn f32_peak_gflops(reps: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512Vnni {
        // SAFETY: AVX-512F was detected.
        let f = |n: usize| {
            std::hint::black_box(unsafe { crate::x86::fma_loop(n, 0.5) });
        };
        return Some(measure(reps, 12.0 * 16.0 * 2.0, &f) / 1e9);
    }
    None
}
