//! holdfast's I/O-free core: everything both servers share — the mio server in this
//! package's binary (`src/server/`) and the tokio peer (`tools/tokio-peer`). Neither the
//! event loop nor any socket code is in this library, so the peer cannot reach them.
//!
//! Map: [`config`] (flags) · [`auth`] (the admin secret) · [`store`] (channels, buffers, ids, gaps; tells a
//! [`store::Notifier`] about messages) · [`subscribe`] (what a subscribe request asks
//! for) · [`stream`] (stream framing: SSE today) · [`http`] (request heads, request
//! framing, chunked bodies, response rendering) · [`buffer`] (a connection's read buffer
//! and write queue) · [`park`] (per-worker waiter lists) · [`wheel`] (timers) ·
//! [`cluster`] (cluster mode's Redis layout, scripts and envelopes) · [`stats`] (counters) · [`sys`] (the only `unsafe`: libc calls std lacks).
//! The contract all of it implements is `docs/protocol.md`.
#![deny(unsafe_code)]

pub mod auth;
pub mod buffer;
pub mod cluster;
pub mod config;
pub mod cors;
pub mod http;
pub mod park;
pub mod stats;
pub mod store;
pub mod stream;
pub mod subscribe;
pub mod sys;
pub mod wheel;

pub use config::Config;
