//! Where the two threads run, and what memory bandwidth that placement gives: a cache-line
//! round trip between two threads (one writes, the other answers), then a 1 GiB read by both
//! threads (half each) and by one, every `PAUSE_MS`. On the 2-vCPU development VM the round trip
//! takes one of three values, and the two-thread bandwidth follows it:
//! ~32 ns (one physical core's two SMT threads) or ~70 ns (two cores of one CCD): ~31 GB/s,
//! one CCD's link; ~300-360 ns (two CCDs): ~50-55 GB/s, each CCD its own link.
//! `cargo run --release -p glm5-kernels --example placement [rounds]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Wrapping sum of the bytes as 64-bit words (vectorizes).
fn sum(x: &[u8]) -> u64 {
    let mut acc = [0u64; 8];
    for c in x.chunks_exact(64) {
        for (i, a) in acc.iter_mut().enumerate() {
            *a = a.wrapping_add(u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().unwrap()));
        }
    }
    acc.iter().fold(0, |a, b| a.wrapping_add(*b))
}

/// A counter on a cache line of its own.
#[repr(align(128))]
struct Line(AtomicU64);

const TRIPS: u64 = 200_000;
const PAUSE_MS: u64 = 1500;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let big: Arc<Vec<u8>> = Arc::new((0..1usize << 30).map(|i| i as u8).collect());
    let flag = Arc::new(Line(AtomicU64::new(0)));
    let bar = Arc::new(Barrier::new(2));
    let (b2, f2, big2) = (bar.clone(), flag.clone(), big.clone());
    let other = std::thread::spawn(move || {
        let mut s = 0u64;
        for _ in 0..rounds {
            b2.wait();
            // Answer every odd value with the next even one.
            for i in 0..TRIPS {
                let want = 2 * i + 1;
                while f2.0.load(Ordering::Acquire) != want {
                    std::hint::spin_loop();
                }
                f2.0.store(want + 1, Ordering::Release);
            }
            b2.wait();
            s = s.wrapping_add(sum(&big2[big2.len() / 2..]));
            b2.wait();
        }
        s
    });
    let mut s = 0u64;
    for _ in 0..rounds {
        flag.0.store(0, Ordering::Relaxed);
        bar.wait();
        let t = Instant::now();
        for i in 0..TRIPS {
            flag.0.store(2 * i + 1, Ordering::Release);
            while flag.0.load(Ordering::Acquire) != 2 * i + 2 {
                std::hint::spin_loop();
            }
        }
        let trip = t.elapsed().as_secs_f64() / TRIPS as f64 * 1e9;
        bar.wait();
        let t = Instant::now();
        s = s.wrapping_add(sum(&big[..big.len() / 2]));
        bar.wait();
        let two = big.len() as f64 / t.elapsed().as_secs_f64() / 1e9;
        let t = Instant::now();
        s = s.wrapping_add(sum(&big[..big.len() / 2]));
        let one = (big.len() / 2) as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!(
            "round trip {trip:6.1} ns   read: 2 threads {two:5.1} GB/s, 1 thread {one:5.1} GB/s"
        );
        std::thread::sleep(Duration::from_millis(PAUSE_MS));
    }
    std::hint::black_box(s.wrapping_add(other.join().unwrap()));
}
