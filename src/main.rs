//! `holdfast` binary: flags → config → server; waits for SIGINT/SIGTERM, then shuts
//! down gracefully (parked polls get 503 + Retry-After) and exits 0.
//!
//! The mio server lives in [`server`], compiled into this binary only; the library
//! (`src/lib.rs`) is the I/O-free core it shares with the tokio peer.
#![deny(unsafe_code)]

mod server;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use holdfast::config::Config;
use holdfast::sys;

/// Counts allocations for the steady-state test (`server::worker::tests`); test builds
/// only.
#[cfg(test)]
#[global_allocator]
static ALLOC: server::alloc_count::CountingAlloc = server::alloc_count::CountingAlloc::new();

fn main() -> ExitCode {
    let cfg = Config::parse();
    if let Err(msg) = cfg.validate() {
        eprintln!("holdfast: {msg}");
        return ExitCode::from(2);
    }
    // Block the shutdown signals before any worker exists, so every thread inherits
    // the mask and only our `sigwait` below receives them.
    if let Err(e) = sys::block_shutdown_signals() {
        eprintln!("holdfast: cannot set up signal handling: {e}");
        return ExitCode::from(1);
    }
    let handle = match server::start(&cfg) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("holdfast: {e}");
            // A flag's file that cannot serve (--admin-token-file) is bad input, like
            // a bad flag; anything else (a listener that cannot be bound) is not.
            let bad_input = e.kind() == std::io::ErrorKind::InvalidInput;
            return ExitCode::from(if bad_input { 2 } else { 1 });
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening public={}", handle.public);
        let _ = writeln!(out, "listening admin={}", handle.admin);
        let _ = writeln!(
            out,
            "threads={} max_connections={}",
            cfg.thread_count(),
            handle.max_connections
        );
        let _ = out.flush();
    }
    match sys::wait_shutdown_signal() {
        Ok(sig) => eprintln!("holdfast: signal {sig}, shutting down"),
        Err(e) => eprintln!("holdfast: waiting for signals failed ({e}); shutting down"),
    }
    handle.shutdown();
    handle.join();
    ExitCode::SUCCESS
}
