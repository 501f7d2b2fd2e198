//! This machine's memory read bandwidth, measured the way decode reads weights: every pool
//! thread streams its own slice of a buffer much larger than the caches, summing it.

use std::time::Instant;

use crate::pool;

/// Best-of-`reps` read bandwidth in GB/s over a `mib`-MiB buffer, using the global pool.
pub fn read_bandwidth_gb_s(mib: usize, reps: usize) -> f64 {
    let n = (mib << 20) / 4;
    // Touch every page (and keep the values non-trivial so the sum is not folded away).
    let buf: Vec<f32> = (0..n).map(|i| (i & 1023) as f32).collect();
    let chunk = 1 << 20; // 4 MiB per unit
    let mut best = 0f64;
    for _ in 0..reps.max(1) {
        let sink = std::sync::atomic::AtomicU32::new(0);
        let t = Instant::now();
        pool::for_chunks(n, chunk, &|r| {
            let s = sum(&buf[r]);
            sink.fetch_add(s.to_bits() & 1, std::sync::atomic::Ordering::Relaxed);
        });
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sink.load(std::sync::atomic::Ordering::Relaxed));
        best = best.max((n * 4) as f64 / secs / 1e9);
    }
    best
}

fn sum(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected.
        return unsafe { sum_avx2(x) };
    }
    sum_plain(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(x: &[f32]) -> f32 {
    sum_plain(x)
}

/// Sum with 16 independent accumulators (vectorizes to full-width loads).
#[inline(always)]
fn sum_plain(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
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
