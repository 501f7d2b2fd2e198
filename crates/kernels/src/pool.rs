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
    /// The next chunk of each range: one range (`run`: every thread claims from one counter),
    /// or one per participant (`run_split`: 0 the caller, then the workers).
    next: Vec<Padded>,
    /// Per participant: the chunks it has finished, of any range.
    done: Vec<Padded>,
}

/// An atomic on a cache line of its own (two threads' counters never share one).
#[repr(align(128))]
pub(crate) struct Padded(pub(crate) AtomicUsize);

// SAFETY: `f` is `Sync` and is only dereferenced while the owning `run` call waits (see `Job`).
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// The chunks of range `p`.
    fn range(&self, p: usize) -> std::ops::Range<usize> {
        let parts = self.next.len();
        p * self.n / parts..(p + 1) * self.n / parts
    }

    /// Claim and run chunks until none are left: participant `me`'s own range first (the only
    /// one, when shared), then what is left of the others'.
    fn work(&self, me: usize) {
        let parts = self.next.len();
        for k in 0..parts {
            let p = (me + k) % parts;
            let end = self.range(p).end;
            loop {
                let i = self.next[p].0.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                // SAFETY: i < n, and every claim of range p's counter below its end is a
                // distinct chunk, so the caller of `run` is still waiting for this one.
                unsafe { (*self.f)(i) };
                self.done[me].0.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// Whether every chunk has finished.
    fn finished(&self) -> bool {
        self.done
            .iter()
            .map(|d| d.0.load(Ordering::Acquire))
            .sum::<usize>()
            >= self.n
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
                .spawn(move || worker(s, w))
                .expect("spawning a pool worker thread");
        }
        ThreadPool { shared, threads }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run `f(i)` for every `i` in `0..n`, in parallel; returns when all are done. Every thread
    /// claims the next chunk from one shared counter, so neighbouring chunks run at the same time
    /// (a prefill's units that share weight rows meet in the cache).
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        self.post(n, f, false)
    }

    /// `run`, but each thread starts on its own contiguous share of `0..n` (in order) with a
    /// counter on its own cache line, and only then takes what is left of the others'. For
    /// dispatches of a few rows (a decode step's), where claims are frequent against the work:
    /// when the two threads sit on different CCDs (a cache-line round trip of ~330 ns instead
    /// of ~70), a shared counter's line crossed between them at every claim; split, a decode
    /// step took 1-5% less time (medians; faster in 21-27 of 32 step pairs) and ran the same
    /// on one CCD.
    pub fn run_split(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        self.post(n, f, true)
    }

    fn post(&self, n: usize, f: &(dyn Fn(usize) + Sync), split: bool) {
        if n == 0 {
            return;
        }
        if n == 1 || self.threads == 1 || IN_JOB.with(|c| c.get()) {
            (0..n).for_each(f);
            return;
        }
        // SAFETY (lifetime erasure): see `Job`; we wait until every chunk has finished.
        let f: *const (dyn Fn(usize) + Sync + '_) = f;
        let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        let parts = self.threads;
        let counter = |v: usize| Padded(AtomicUsize::new(v));
        let job = Arc::new(Job {
            f,
            n,
            // Split: participant p's range starts at p * n / parts (`Job::range`).
            next: (0..if split { parts } else { 1 })
                .map(|p| counter(p * n / parts))
                .collect(),
            done: (0..parts).map(|_| counter(0)).collect(),
        });
        {
            let mut slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(job.clone());
            self.shared.generation.fetch_add(1, Ordering::Release);
            self.shared.wake.notify_all();
        }
        IN_JOB.with(|c| c.set(true));
        job.work(0);
        IN_JOB.with(|c| c.set(false));
        while !job.finished() {
            std::hint::spin_loop();
        }
    }
}

/// Worker `id` (1..threads; the caller of `run` is participant 0).
fn worker(s: Arc<Shared>, id: usize) {
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
            job.work(id);
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

/// A slice that pool units write in disjoint ranges (`range`), bounds-checked.
pub struct Disjoint<'a, T> {
    ptr: *mut T,
    len: usize,
    _slice: std::marker::PhantomData<&'a mut [T]>,
}
// SAFETY: a `Disjoint` only hands out ranges that its users promise never overlap (`range`'s
// contract), so sharing it moves `T`s across threads like `&mut [T]` split would.
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    pub fn new(s: &'a mut [T]) -> Disjoint<'a, T> {
        Disjoint {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _slice: std::marker::PhantomData,
        }
    }

    /// The values `r` of the slice.
    ///
    /// # Safety
    /// No two live results may overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn range(&self, r: std::ops::Range<usize>) -> &mut [T] {
        assert!(
            r.start <= r.end && r.end <= self.len,
            "range {r:?} of {}",
            self.len
        );
        // SAFETY: in bounds (checked above), and the caller keeps live ranges apart.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }
}

/// Values below which the row-parallel helpers stay on the calling thread (a pool dispatch
/// costs about a microsecond; a decode step's rows are a few thousand values).
pub const PARALLEL_MIN: usize = 1 << 15;

/// `f(i, rows)` for the row chunks of `out` (`width` values per row, `rows_per` rows per
/// chunk; `i` the chunk's first row), on the pool when `out` holds at least `PARALLEL_MIN`
/// values.
pub fn rows_mut<T: Send>(
    out: &mut [T],
    width: usize,
    rows_per: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let width = width.max(1);
    let rows = out.len() / width;
    if out.len() < PARALLEL_MIN || rows < 2 {
        for (c, chunk) in out.chunks_mut(rows_per.max(1) * width).enumerate() {
            f(c * rows_per.max(1), chunk);
        }
        return;
    }
    let per = rows_per.max(1);
    let d = Disjoint::new(out);
    run(rows.div_ceil(per), &|c| {
        let (r0, r1) = (c * per, ((c + 1) * per).min(rows));
        // SAFETY: chunk c alone covers rows r0..r1.
        f(r0, unsafe { d.range(r0 * width..r1 * width) });
    });
}

/// `[f(0), .., f(n - 1)]`, computed on the pool when `parallel`, else in order here.
pub fn map<T: Send + Sync>(n: usize, parallel: bool, f: &(dyn Fn(usize) -> T + Sync)) -> Vec<T> {
    if !parallel {
        return (0..n).map(f).collect();
    }
    let out: Vec<OnceLock<T>> = (0..n).map(|_| OnceLock::new()).collect();
    run(n, &|i| {
        let _ = out[i].set(f(i));
    });
    out.into_iter()
        .map(|o| o.into_inner().expect("every index ran"))
        .collect()
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

/// `global().run_split(n, f)`.
pub fn run_split(n: usize, f: &(dyn Fn(usize) + Sync)) {
    global().run_split(n, f)
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
    fn every_chunk_runs_exactly_once_split() {
        // Ranges of uneven sizes (n not a multiple of the threads), fewer chunks than threads.
        for threads in [2, 3] {
            let pool = ThreadPool::new(threads);
            for n in [0, 1, 2, 5, 7, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run_split(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "{threads} threads, n={n}"
                );
            }
        }
    }

    #[test]
    fn rows_mut_hands_every_row_to_one_chunk_at_its_offset() {
        // Below and above PARALLEL_MIN, widths that do not divide it, a short last chunk.
        for (rows, width, per) in [(3, 5, 2), (1, 40_000, 4), (4099, 9, 16), (777, 64, 7)] {
            let mut out = vec![0usize; rows * width];
            rows_mut(&mut out, width, per, &|r0, chunk| {
                assert!(chunk.len() <= per * width && chunk.len().is_multiple_of(width));
                for (i, v) in chunk.iter_mut().enumerate() {
                    *v += r0 * width + i + 1;
                }
            });
            assert!(
                out.iter().enumerate().all(|(i, &v)| v == i + 1),
                "{rows} x {width}"
            );
        }
    }

    #[test]
    fn map_keeps_the_order_on_and_off_the_pool() {
        for par in [false, true] {
            let v = map(1000, par, &|i| i * i);
            assert_eq!(v, (0..1000).map(|i| i * i).collect::<Vec<_>>());
        }
    }

    #[test]
    #[should_panic(expected = "range")]
    fn disjoint_checks_its_bounds() {
        let mut v = [0u8; 4];
        let d = Disjoint::new(&mut v);
        // SAFETY: the only range taken (it panics before any slice exists).
        let _ = unsafe { d.range(2..5) };
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
