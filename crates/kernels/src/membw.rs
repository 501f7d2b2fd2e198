//! This machine's memory read bandwidth, measured the way decode reads weights: every pool
//! thread streams its own slice of a buffer much larger than the caches, summing it.

use std::time::Instant;

use crate::pool;

/// Best-of-`reps` read bandwidth in GB/s over a fresh `mib`-MiB buffer, using the global pool.
pub fn read_bandwidth_gb_s(mib: usize, reps: usize) -> f64 {
    // Touch every page, with non-trivial values.
    let buf: Vec<u8> = (0..mib << 20).map(|i| (i % 251) as u8).collect();
    read_slices_gb_s(&[&buf], reps)
}

/// Best-of-`reps` read bandwidth in GB/s over the given buffers (the model's own weights: the
/// bytes decode streams, already resident, so the test adds no memory), on the global pool.
pub fn read_slices_gb_s(slices: &[&[u8]], reps: usize) -> f64 {
    const CHUNK: usize = 4 << 20;
    let units: Vec<&[u8]> = slices.iter().flat_map(|s| s.chunks(CHUNK)).collect();
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let mut best = 0f64;
    for _ in 0..reps.max(1) {
        let sink = std::sync::atomic::AtomicU64::new(0);
        let t = Instant::now();
        pool::run(units.len(), &|u| {
            let s = sum_bytes(units[u]);
            sink.fetch_add(s & 1, std::sync::atomic::Ordering::Relaxed);
        });
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sink.load(std::sync::atomic::Ordering::Relaxed));
        best = best.max(total as f64 / secs / 1e9);
    }
    best
}

/// Wrapping sum of the bytes as 64-bit words (8 independent lanes; vectorizes).
fn sum_bytes(x: &[u8]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = x.chunks_exact(64);
    for c in &mut chunks {
        for (i, a) in acc.iter_mut().enumerate() {
            let w = u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            *a = a.wrapping_add(w);
        }
    }
    let tail = chunks.remainder().iter().map(|&b| b as u64).sum::<u64>();
    acc.iter().fold(tail, |s, a| s.wrapping_add(*a))
}
