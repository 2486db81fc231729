//! Shared harness for the end-to-end tests: runs the server binary as a child process
//! and speaks HTTP/1.1 to it as raw bytes over `std::net::TcpStream`.
//!
//! Nothing here depends on holdfast internals, only on `docs/protocol.md` and the start-up
//! interface (flags, the two `listening …=ADDR` lines on stdout, `/stats`), so the
//! same suite can run against the tokio peer: set `HOLDFAST_BIN` to its path.
//!
//! Every read has a timeout (10 s unless a test says otherwise), so no test can hang.
//!
//! One module per concern; a test imports what it uses by path
//! (`use common::http::Conn;`).
//!
//! `dead_code` is allowed per module, below, and nowhere else: every `tests/*.rs` is a
//! crate of its own that compiles this whole tree and uses only part of it, so each
//! helper is unused in some test binary (cli.rs needs only `server_bin`), and `pub` does
//! not help in a test binary. A helper no test uses at all goes unnoticed by that allow;
//! to find one, build the tests without it and look for the items that every test
//! binary reports.

/// The server under test as a child process: start, stop, output.
#[allow(dead_code)]
pub mod server;

/// Other processes from /proc: CPU time, RSS, children; signalling a process group.
#[allow(dead_code)]
pub mod process;

/// The raw HTTP/1.1 client: request bytes, `Conn`, `Response`.
#[allow(dead_code)]
pub mod http;

/// The holdfast protocol over that client: publish, poll, park, cursors, `/stats`.
#[allow(dead_code)]
pub mod protocol;

/// The Server-Sent-Events client.
#[allow(dead_code)]
pub mod sse;

/// Sockets in bulk: source addresses, `connect_many`, resets, the open-file limit.
#[allow(dead_code)]
pub mod net;

/// Waiting, duration assertions, quantiles, the clock.
#[allow(dead_code)]
pub mod timing;

/// nginx running the shipped config in front of the server (nginx.rs, browser.rs).
#[allow(dead_code)]
pub mod nginx;

/// Headless Chromium on a test page, the page's own static server (browser*.rs).
#[allow(dead_code)]
pub mod chromium;

/// Valid requests, mutations of them, a strict response reader (parser_props.rs,
/// malformed_input.rs).
#[allow(dead_code)]
pub mod fuzzing;

/// A real `redis-server` on a free port, stopped, restarted, frozen (cluster.rs).
#[allow(dead_code)]
pub mod redis;

/// Several holdfast nodes in cluster mode on one Redis (cluster.rs).
#[allow(dead_code)]
pub mod cluster;

/// The raw WebSocket client and the JSON envelope (websocket.rs, ndjson.rs).
#[allow(dead_code)]
pub mod ws;

/// Scenarios the stream transports share, run over either (`ObjectStream` for `Ws` and
/// `Ndjson`); the small-receive-buffer socket (websocket.rs, ndjson.rs, sse.rs).
#[allow(dead_code)]
pub mod streams;
