//! `holdfast-tokio`: the holdfast protocol (docs/protocol.md) served by tokio + hyper, so
//! that benchmarks can compare holdfast's hand-rolled event loop with "the tokio way".
//!
//! Map: `main` (flags → runtime → signals) → [`server`] (listeners, accept loops, one task
//! per connection running a hyper HTTP/1 connection) → [`service`] (routing, publish,
//! admin endpoints) and [`subscribe`] (long-poll and streams: SSE, ndjson, WebSocket) on
//! top of [`hub`] (publisher → subscriber wake-ups: the store's notifier) and holdfast's
//! I/O-free `store::Store`; [`stream`] is an SSE or ndjson stream's response body,
//! [`websocket`] a WebSocket stream (hyper's upgrade, `tokio-tungstenite`), [`frames`]
//! what each transport carries, [`guard_io`] the socket wrapper that enforces
//! the timeouts and request-line answers hyper has no knob for ([`request_line`]),
//! [`respond`] the response builders, [`cors`] the `--allow-origin` headers.
//!
//! Everything shared with holdfast comes from its library, its I/O-free core; holdfast's
//! mio server is in its binary crate, out of this crate's reach.
#![deny(unsafe_code)]

mod cors;
mod frames;
mod guard_io;
mod hub;
mod request_line;
mod respond;
mod server;
mod service;
mod stream;
mod subscribe;
mod websocket;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use holdfast::config::Config;

fn main() -> ExitCode {
    // The same flags, defaults and validation as holdfast; only the name in --help differs.
    let matches = Config::command().name("holdfast-tokio").get_matches();
    let cfg = match Config::from_arg_matches(&matches) {
        Ok(cfg) => cfg,
        Err(e) => e.exit(),
    };
    if let Err(msg) = cfg.validate() {
        eprintln!("holdfast-tokio: {msg}");
        return ExitCode::from(2);
    }
    // Checked before anything starts, like a bad flag (the server reads them again).
    let keys = cfg
        .admin_token()
        .map(drop)
        .and_then(|()| cfg.subscribe_key().map(drop));
    if let Err(msg) = keys {
        eprintln!("holdfast-tokio: {msg}");
        return ExitCode::from(2);
    }
    if cfg.redis_url().is_some() {
        // The peer is the single-node comparison point (README); cluster mode is the
        // mio server's alone.
        eprintln!("holdfast-tokio: --redis: the tokio peer has no cluster mode");
        return ExitCode::from(2);
    }
    let threads = cfg.thread_count();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("holdfast-tokio-w")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("holdfast-tokio: cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(run(cfg, threads));
    // Connections still open after the grace period are dropped with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

async fn run(cfg: Config, threads: usize) -> ExitCode {
    // Installed before the listening lines go out: a script may signal us right after.
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("holdfast-tokio: cannot set up signal handling: {e}");
            return ExitCode::from(1);
        }
    };
    let server = match server::Server::bind(&cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("holdfast-tokio: {e}");
            return ExitCode::from(1);
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening public={}", server.public);
        let _ = writeln!(out, "listening admin={}", server.admin);
        let _ = writeln!(
            out,
            "threads={threads} max_connections={}",
            server.max_connections
        );
        let _ = out.flush();
    }
    let name = signals.recv().await;
    eprintln!("holdfast-tokio: {name}, shutting down");
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// SIGINT and SIGTERM, taken over from their default (terminate) action.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first of the two.
    async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
