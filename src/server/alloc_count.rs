//! A global allocator that counts allocations while armed, for the test that proves a
//! parked poll's cycle allocates nothing (`worker::tests`). Compiled into test builds
//! only; production uses the system allocator directly. The one `unsafe` outside
//! `holdfast::sys`: a `GlobalAlloc` cannot be written without it.
//!
//! Only threads that opted in ([`count_this_thread`]: the server's workers, in test
//! builds) are counted, so other tests of the same binary running beside the check
//! cannot make it fail, and the check needs no retries.
#![allow(unsafe_code)]

use std::cell::Cell;

thread_local! {
    /// Whether this thread's allocations are counted. Const-initialised without a
    /// destructor, so reading it never allocates.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

/// Counts this thread's allocations from now on (while the allocator is armed).
pub fn count_this_thread() {
    COUNTED.with(|c| c.set(true));
}

/// A global allocator that counts allocations while armed, for tests that prove a code
/// path allocates nothing (`#[global_allocator] static A: CountingAlloc = CountingAlloc::new();`).
/// Unarmed it costs one relaxed load per allocation.
pub struct CountingAlloc {
    armed: std::sync::atomic::AtomicBool,
    count: std::sync::atomic::AtomicU64,
}

impl CountingAlloc {
    pub const fn new() -> Self {
        CountingAlloc {
            armed: std::sync::atomic::AtomicBool::new(false),
            count: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Starts counting from zero.
    pub fn arm(&self) {
        self.count.store(0, std::sync::atomic::Ordering::SeqCst);
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops counting; returns the allocations (including reallocations) seen.
    pub fn disarm(&self) -> u64 {
        self.armed.store(false, std::sync::atomic::Ordering::SeqCst);
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn note(&self) {
        if self.armed.load(std::sync::atomic::Ordering::Relaxed)
            && COUNTED.try_with(Cell::get).unwrap_or(false)
        {
            self.count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees are ours; counting touches only atomics and never allocates.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        self.note();
        // SAFETY: forwarded contract (layout has non-zero size, per GlobalAlloc).
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        self.note();
        // SAFETY: forwarded contract.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (we forward every alloc).
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        self.note();
        // SAFETY: forwarded contract; `ptr`/`layout` came from `System`.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}
