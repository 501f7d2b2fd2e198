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

/// The mean time, in ns, for a cache line to go from one pool thread to another and back
/// (`trips` times): how far apart the threads sit. On the development VM
/// it reads ~30-70 ns with both on one CCD (which share that CCD's ~32 GB/s link to memory)
/// and ~300-360 ns on two CCDs (each with its own link: ~55 GB/s together). `None` with one
/// thread, or when the worker did not answer within a second.
pub fn thread_round_trip_ns(trips: usize) -> Option<f64> {
    use std::sync::atomic::Ordering;
    if pool::global().threads() < 2 || trips == 0 {
        return None;
    }
    let line = pool::Padded(std::sync::atomic::AtomicUsize::new(0));
    let deadline = std::time::Duration::from_secs(1);
    let took = std::sync::Mutex::new(None);
    // The two chunks run on two threads: whichever thread takes one spins in it until the
    // other is taken.
    pool::run_split(2, &|c| {
        let t = Instant::now();
        let mut t1 = t;
        // Chunk 0 writes odd values and waits for the next even one; chunk 1 answers. The
        // first trip (which waits for the other thread to start) is not timed.
        for i in 0..=trips {
            if i == 1 {
                t1 = Instant::now();
            }
            let (wait, then) = if c == 0 {
                line.0.store(2 * i + 1, Ordering::Release);
                (2 * i + 2, None)
            } else {
                (2 * i + 1, Some(2 * i + 2))
            };
            let mut spins = 0u32;
            while line.0.load(Ordering::Acquire) < wait {
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(4096) && t.elapsed() > deadline {
                    // Give up (and release the other side, which may be waiting too).
                    line.0.store(usize::MAX, Ordering::Release);
                    return;
                }
            }
            if line.0.load(Ordering::Acquire) == usize::MAX {
                return;
            }
            if let Some(v) = then {
                line.0.store(v, Ordering::Release);
            }
        }
        if c == 0 {
            *took.lock().unwrap_or_else(|e| e.into_inner()) = Some(t1.elapsed());
        }
    });
    let took = took.into_inner().unwrap_or_else(|e| e.into_inner())?;
    (line.0.load(Ordering::Acquire) != usize::MAX).then(|| took.as_secs_f64() / trips as f64 * 1e9)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_round_trip_is_measured_with_two_threads() {
        let rt = super::thread_round_trip_ns(2000);
        if crate::pool::global().threads() >= 2 {
            let ns = rt.expect("the worker answers");
            assert!(ns > 0.0 && ns < 1e6, "{ns} ns");
        } else {
            assert!(rt.is_none());
        }
    }
}
