//! Mapped model files, and what happens when one changes under its mapping.
//!
//! A file that is truncated while mapped makes the next read of a page past its new end raise
//! SIGBUS, which kills the process with a bare "Bus error". Every mapping is registered here
//! with its file's path; on Unix a SIGBUS handler looks the faulting address up and, when it
//! lies in a model file, writes one line naming the file and exits with status 2. The fault
//! cannot be turned into an error for the one request that hit it: the read happens inside a
//! kernel with no way back, so the process ends either way (a supervisor restarts it); what the
//! handler adds is the cause. Faults elsewhere keep the default behaviour.

use std::ffi::CString;
use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Once;

use memmap2::Mmap;

/// Mappings tracked at once (model files and their split parts; more are simply not named).
const SLOTS: usize = 512;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    /// A leaked, NUL-terminated message line for this file (null: free slot).
    line: AtomicPtr<u8>,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    line: AtomicPtr::new(std::ptr::null_mut()),
};
static SLOTS_TABLE: [Slot; SLOTS] = [FREE; SLOTS];

/// A read-only mapping of a model file, registered for the SIGBUS message while it lives.
pub struct Mapped {
    map: Mmap,
    slot: Option<usize>,
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mapped({} bytes)", self.map.len())
    }
}

impl Mapped {
    pub fn new(map: Mmap, path: &Path) -> Mapped {
        install();
        let line = format!(
            "error: {}: the file changed (truncated or rewritten) while glm5 had it mapped; reading it failed (SIGBUS). Do not modify model files while they are in use.\n",
            path.display()
        );
        let line = CString::new(line.replace('\0', "?")).unwrap_or_default();
        let ptr = line.into_raw().cast::<u8>();
        let slot = (0..SLOTS).find(|&i| {
            SLOTS_TABLE[i]
                .line
                .compare_exchange(
                    std::ptr::null_mut(),
                    ptr,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        });
        match slot {
            Some(i) => {
                SLOTS_TABLE[i].len.store(map.len(), Ordering::Release);
                SLOTS_TABLE[i]
                    .start
                    .store(map.as_ptr() as usize, Ordering::Release);
            }
            // SAFETY: the pointer came from `CString::into_raw` just above and was not stored.
            None => drop(unsafe { CString::from_raw(ptr.cast()) }),
        }
        Mapped { map, slot }
    }
}

impl Deref for Mapped {
    type Target = Mmap;
    fn deref(&self) -> &Mmap {
        &self.map
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let s = &SLOTS_TABLE[i];
            s.start.store(0, Ordering::Release);
            s.len.store(0, Ordering::Release);
            let p = s.line.swap(std::ptr::null_mut(), Ordering::AcqRel);
            if !p.is_null() {
                // SAFETY: stored by `new` from `CString::into_raw`; swapped out once.
                drop(unsafe { CString::from_raw(p.cast()) });
            }
        }
    }
}

fn install() {
    static ONCE: Once = Once::new();
    #[cfg(unix)]
    ONCE.call_once(|| {
        // SAFETY: installs a handler that only reads atomics, calls write(2) and _exit(2),
        // which are async-signal-safe; the previous handler is restored for foreign faults.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                on_sigbus;
            sa.sa_sigaction = handler as libc::sighandler_t;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    });
    #[cfg(not(unix))]
    ONCE.call_once(|| {});
}

#[cfg(unix)]
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: `info` is the kernel's siginfo for this signal; only atomics are read, and
    // write/_exit/signal/raise are async-signal-safe.
    unsafe {
        let addr = (*info).si_addr() as usize;
        for s in &SLOTS_TABLE {
            let start = s.start.load(Ordering::Acquire);
            let len = s.len.load(Ordering::Acquire);
            let line = s.line.load(Ordering::Acquire);
            if start != 0 && !line.is_null() && addr >= start && addr < start + len {
                let n = libc::strlen(line.cast());
                libc::write(2, line.cast(), n);
                libc::_exit(2);
            }
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}
