//! holdfast: an HTTP/1.1 long-polling and Server-Sent-Events pub/sub server whose
//! reason to exist is cost per held connection.
//!
//! Map: [`config`] (flags) → [`server`] (start/stop) → [`event_loop`] (one mio worker
//! per thread) driving [`conn`]ections through [`http`] parsing and rendering; parked
//! subscribers wait in [`park`] lists with timeouts on the [`wheel`]; messages live in the
//! shared [`pubsub`] store; [`stats`] counts; [`sys`] holds the only `unsafe`.
#![deny(unsafe_code)]

pub mod config;
pub mod conn;
pub mod event_loop;
pub mod http;
pub mod park;
pub mod pubsub;
pub mod reserve;
pub mod server;
pub mod sse;
pub mod stats;
pub mod sys;
pub mod wheel;

pub use config::Config;
pub use server::{start, Handle};
