//! The mio server: starting and stopping it. Binds the listeners (one `SO_REUSEPORT`
//! socket per worker and address), builds the shared state, spawns the workers, and
//! hands back a [`Handle`] with the bound addresses.
//!
//! The map (see `docs/architecture.md`): [`worker`] runs the loop and owns the mailbox;
//! [`accept`] takes connections (with the descriptor [`reserve`]); [`socket`] reads,
//! writes, lingers and closes; [`requests`] drives a connection's requests through the
//! framing in `holdfast::http::framing`; [`routes`] maps a request to its handler;
//! [`deliver`] answers parked polls and feeds streams (the `blocked.c` of holdfast);
//! [`conn`] is the connection state machine; [`backplane`] is cluster mode's Redis side.
//! Only `main.rs` uses this module.

pub mod accept;
#[cfg(test)]
pub mod alloc_count;
pub mod backplane;
pub mod conn;
pub mod deliver;
pub mod requests;
pub mod reserve;
pub mod routes;
pub mod socket;
pub mod websocket;
pub mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use holdfast::config::Config;
use holdfast::stats::Stats;
use holdfast::store::{Groups, Store};
use holdfast::sys;
use mio::Poll;

use crate::server::backplane::Backplane;
use crate::server::conn::Timeouts;
use crate::server::reserve::Reserve;
use crate::server::worker::{Mailboxes, Shared, Worker};

/// How long a shutdown waits for connections to finish before workers exit anyway.
const SHUTDOWN_GRACE_MS: u64 = 1500;
/// How long a closing connection drains input before it is closed anyway.
const LINGER_MS: u64 = 2000;

/// A running server.
pub struct Handle {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub max_connections: usize,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    backplane: Option<JoinHandle<()>>,
}

impl Handle {
    /// Starts a graceful shutdown: parked polls get 503, listeners close.
    pub fn shutdown(&self) {
        // Refuse publishes first: every acknowledged one has its notes queued before a
        // worker sees the flag (see `Worker::begin_shutdown`).
        self.shared.store.close();
        self.shared.shutdown.store(true, SeqCst);
        if let Some(bp) = &self.shared.backplane {
            bp.stop();
        }
        self.shared
            .mailboxes
            .wake_all(Groups::first(self.threads.len()));
    }

    /// Waits for every worker to finish.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(t) = self.backplane {
            let _ = t.join();
        }
    }
}

/// Binds one socket per worker on `addr` (resolving port 0 once, so all share it).
fn bind_all(addr: SocketAddr, n: usize) -> io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let bind = |a| {
        accept::bind_listener(a)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
    };
    let first = bind(addr)?;
    let bound = first.local_addr()?;
    let mut v = vec![first];
    for _ in 1..n {
        v.push(bind(bound)?);
    }
    Ok((bound, v))
}

/// Starts the server described by `cfg`.
pub fn start(cfg: &Config) -> io::Result<Handle> {
    if let Err(msg) = cfg.validate() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    }
    let bad = |msg| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let admin_token = cfg.admin_token().map_err(bad)?;
    let subscribe_key = cfg.subscribe_key().map_err(bad)?;
    let cors = cfg.cors().map_err(bad)?;
    let threads = cfg.thread_count();
    let nofile = sys::raise_fd_limit().unwrap_or(1024);
    let max_connections = cfg.max_connections_for(nofile);

    let (public, pub_ls) = bind_all(cfg.listen, threads)?;
    let (admin, adm_ls) = bind_all(cfg.admin_listen, threads)?;

    let mut polls = Vec::with_capacity(threads);
    for _ in 0..threads {
        polls.push(Poll::new()?);
    }
    let mailboxes = Arc::new(Mailboxes::new(&polls)?);
    let ms = |d: Duration| d.as_millis() as u64;
    let backplane = cfg.redis_url().map(|url| {
        Arc::new(Backplane::new(
            url,
            &cfg.redis_prefix,
            cfg.redis_timeout,
            ms(cfg.message_ttl),
            cfg.buffer_messages,
        ))
    });
    let store = match backplane {
        Some(_) => Store::for_cluster(cfg.store_config(), mailboxes.clone()),
        None => Store::new(cfg.store_config(), mailboxes.clone()),
    };
    let shared = Arc::new(Shared {
        store,
        backplane,
        admin_token,
        subscribe_key,
        token_cookie: cfg.token_cookie.as_str().into(),
        cors,
        stats: Stats::default(),
        mailboxes,
        shutdown: AtomicBool::new(false),
        max_connections,
        max_message_size: cfg.max_message_size as usize,
        holds: cfg.holds(),
        timeouts: Timeouts {
            header: ms(cfg.header_timeout),
            keepalive: ms(cfg.keepalive_timeout),
            heartbeat: ms(cfg.sse_heartbeat),
            linger: LINGER_MS,
        },
        shutdown_grace_ms: SHUTDOWN_GRACE_MS,
        stream_max_backlog: cfg.stream_max_backlog as usize,
        trust_proxy: cfg.trust_proxy,
        reserve: Reserve::new(),
        epoch: std::time::Instant::now(),
    });

    let backplane = match shared.backplane {
        Some(_) => Some(backplane::start(shared.clone())?),
        None => None,
    };
    let mut handles = Vec::with_capacity(threads);
    for ((id, poll), (p, a)) in polls
        .into_iter()
        .enumerate()
        .zip(pub_ls.into_iter().zip(adm_ls))
    {
        let worker = Worker::new(id, shared.clone(), poll, p, a)?;
        let t = std::thread::Builder::new()
            .name(format!("holdfast-w{id}"))
            .spawn(move || {
                // Test builds count the workers' allocations (`alloc_count.rs`).
                #[cfg(test)]
                alloc_count::count_this_thread();
                worker.run()
            })?;
        handles.push(t);
    }
    Ok(Handle {
        public,
        admin,
        max_connections,
        shared,
        threads: handles,
        backplane,
    })
}
