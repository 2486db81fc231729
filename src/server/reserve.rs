//! The descriptor reserve: one spare descriptor per process, so that out of descriptors
//! (`EMFILE`) a worker can still take a client off its accept queue and answer it `503`
//! rather than leave it waiting unanswered (the trick nginx and libuv use).
//!
//! Workers accept on their own `SO_REUSEPORT` sockets but share one descriptor table, so
//! the descriptor one worker frees to refuse a client can be taken by another worker's
//! ordinary `accept`, which would then serve its client and leave the reserve empty for
//! as long as the process stays at its limit: every client after that waits unanswered.
//! So an ordinary accept first makes sure the reserve is full; if it cannot be re-filled,
//! the connection just accepted holds the reserve's descriptor: the caller refuses it and
//! re-fills the reserve with the descriptor that frees.
//!
//! Cost on the ordinary path: one atomic load per accepted connection. The lock is taken
//! only while the reserve is empty or being spent, i.e. at the descriptor limit.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

pub struct Reserve {
    spare: Mutex<Option<File>>,
    /// `spare` is `Some` (a hint for the ordinary path; the lock has the truth).
    full: AtomicBool,
}

impl Default for Reserve {
    fn default() -> Self {
        Self::new()
    }
}

impl Reserve {
    /// Opens the spare descriptor (a reserve that cannot open one starts empty and is
    /// re-filled on the next accept).
    pub fn new() -> Reserve {
        let r = Reserve {
            spare: Mutex::new(None),
            full: AtomicBool::new(false),
        };
        r.refill();
        r
    }

    fn lock(&self) -> MutexGuard<'_, Option<File>> {
        // The guarded value is an `Option<File>`: always consistent.
        self.spare.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the reserve holds its descriptor, re-filling it if not. Called after every
    /// ordinary accept: false means the descriptor just accepted is the reserve's (the
    /// process is at its limit), so the caller refuses that connection and calls
    /// [`refill`](Self::refill).
    pub fn check(&self) -> bool {
        self.full.load(Ordering::SeqCst) || self.refill()
    }

    /// Opens the spare descriptor if the reserve lacks it; whether it now holds one.
    pub fn refill(&self) -> bool {
        let mut g = self.lock();
        if g.is_none() {
            *g = File::open("/dev/null").ok();
        }
        let full = g.is_some();
        self.full.store(full, Ordering::Release);
        full
    }

    /// Out of descriptors: closes the spare, runs `refuse_one` (accept one client and
    /// answer it, which frees its descriptor again), and re-opens the spare. `None` if
    /// the reserve was empty. Other workers' accepts that race for the freed descriptor
    /// wait on the lock in [`check`](Self::check) and give it back.
    pub fn spend<T>(&self, refuse_one: impl FnOnce() -> T) -> Option<T> {
        let mut g = self.lock();
        let spare = g.take()?;
        // "Empty" must be visible before the descriptor is free: a worker whose accept
        // takes it then sees the reserve empty and gives the descriptor back in `check`.
        self.full.store(false, Ordering::SeqCst);
        drop(spare);
        let out = refuse_one();
        *g = File::open("/dev/null").ok();
        self.full.store(g.is_some(), Ordering::Release);
        Some(out)
    }

    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_frees_the_spare_for_the_refusal_and_takes_it_back() {
        let r = Reserve::new();
        assert!(r.is_full());
        let seen = r.spend(|| r.is_full());
        assert_eq!(seen, Some(false), "spare is out while a client is refused");
        assert!(r.is_full());
    }

    #[test]
    fn an_empty_reserve_has_nothing_to_spend_until_refilled() {
        let r = Reserve::new();
        *r.lock() = None;
        r.full.store(false, Ordering::Release);
        assert!(r.spend(|| ()).is_none());
        assert!(r.check(), "check re-fills when a descriptor is free");
        assert!(r.spend(|| ()).is_some());
    }
}
