//! A persistent thread pool for the hot loops (rust-stack.md §4.2-4.3).
//!
//! `run(n, f)` calls `f(0..n)` across the pool: the calling thread works too, and every thread
//! takes the next chunk index from one atomic counter, so a core that is busy with something
//! else does not hold up the rest. `run` returns when every *chunk* is done, not when every
//! thread has checked in. Workers spin briefly between jobs (ops in a forward pass follow each
//! other within microseconds), then park on a condvar so an idle server burns no CPU.
//!
//! A `run` from inside a pool job runs inline on the calling thread (no nested parallelism).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(300);

/// One job: `n` chunks of `f`. `f` is a pointer to a closure on the caller's stack; it is called
/// only for a chunk index claimed below `n`, and the caller does not return before all `n` are
/// done, so `f` is alive whenever it is called. A worker that arrives late only touches the
/// counters, which the `Arc` keeps alive.
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
}

// SAFETY: `f` is `Sync` and is only dereferenced while the owning `run` call waits (see `Job`).
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Claim and run chunks until none are left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            // SAFETY: i < n, so the caller of `run` is still waiting for this chunk.
            unsafe { (*self.f)(i) };
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

struct Shared {
    generation: AtomicU64,
    slot: Mutex<Option<Arc<Job>>>,
    wake: Condvar,
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    threads: usize,
}

thread_local! {
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

impl ThreadPool {
    /// A pool of `threads` threads in all: the caller plus `threads - 1` workers.
    pub fn new(threads: usize) -> ThreadPool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            slot: Mutex::new(None),
            wake: Condvar::new(),
        });
        for w in 1..threads {
            let s = shared.clone();
            thread::Builder::new()
                .name(format!("glm5-worker-{w}"))
                .spawn(move || worker(s))
                .expect("spawning a pool worker thread");
        }
        ThreadPool { shared, threads }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run `f(i)` for every `i` in `0..n`, in parallel; returns when all are done.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        if n == 1 || self.threads == 1 || IN_JOB.with(|c| c.get()) {
            (0..n).for_each(f);
            return;
        }
        // SAFETY (lifetime erasure): see `Job`; we wait for `done == n` before returning.
        let f: *const (dyn Fn(usize) + Sync + '_) = f;
        let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        let job = Arc::new(Job {
            f,
            n,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        });
        {
            let mut slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(job.clone());
            self.shared.generation.fetch_add(1, Ordering::Release);
            self.shared.wake.notify_all();
        }
        IN_JOB.with(|c| c.set(true));
        job.work();
        IN_JOB.with(|c| c.set(false));
        while job.done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
    }
}

fn worker(s: Arc<Shared>) {
    IN_JOB.with(|c| c.set(true));
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        while s.generation.load(Ordering::Acquire) == seen {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                let slot = s.slot.lock().unwrap_or_else(|e| e.into_inner());
                let _parked = s
                    .wake
                    .wait_while(slot, |_| s.generation.load(Ordering::Acquire) == seen)
                    .unwrap_or_else(|e| e.into_inner());
                break;
            }
        }
        seen = s.generation.load(Ordering::Acquire);
        let job = s
            .slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .cloned();
        if let Some(job) = job {
            job.work();
        }
    }
}

/// A raw output pointer that pool units share; each unit writes only its own disjoint part
/// (the caller's obligation, stated at each write).
pub struct SyncPtr(pub *mut f32);
// SAFETY: see the type's contract: writes through it never overlap.
unsafe impl Sync for SyncPtr {}
unsafe impl Send for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    pub fn get(&self) -> *mut f32 {
        self.0
    }
}

static GLOBAL: OnceLock<ThreadPool> = OnceLock::new();
static REQUESTED: AtomicUsize = AtomicUsize::new(0);

/// Ask for `n` threads in the global pool (0 = one per available core). Takes effect only
/// before the pool's first use; returns the number the pool has or will have.
pub fn set_threads(n: usize) -> usize {
    if GLOBAL.get().is_none() {
        REQUESTED.store(n, Ordering::Relaxed);
    }
    global().threads()
}

/// The process-wide pool, created on first use.
pub fn global() -> &'static ThreadPool {
    GLOBAL.get_or_init(|| {
        let n = match REQUESTED.load(Ordering::Relaxed) {
            0 => thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        ThreadPool::new(n)
    })
}

/// `global().run(n, f)`.
pub fn run(n: usize, f: &(dyn Fn(usize) + Sync)) {
    global().run(n, f)
}

/// Split `0..len` into chunks of `chunk` (the last one shorter) and run `f(range)` on the pool.
pub fn for_chunks(len: usize, chunk: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    let chunk = chunk.max(1);
    run(len.div_ceil(chunk), &|c| {
        f(c * chunk..((c + 1) * chunk).min(len))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_exactly_once() {
        let pool = ThreadPool::new(3);
        for n in [0, 1, 2, 7, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n={n}");
        }
    }

    #[test]
    fn nested_runs_do_not_deadlock() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(3, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn survives_parking_between_jobs() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        for _ in 0..3 {
            pool.run(8, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
            thread::sleep(SPIN * 3);
        }
        assert_eq!(total.load(Ordering::Relaxed), 24);
    }
}
