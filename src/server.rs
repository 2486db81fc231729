//! Starting and stopping a server: binds the listeners (one `SO_REUSEPORT` socket per
//! worker and address), builds the shared state, spawns the workers, and hands back a
//! [`Handle`] with the bound addresses. Used by `main.rs` and by tests.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Poll, Waker};

use crate::config::Config;
use crate::event_loop::{bind_listener, Worker, WAKER};
use crate::pubsub::{Note, Store, StoreConfig};
use crate::reserve::Reserve;
use crate::stats::{Snapshot, Stats};
use crate::sys;

/// Descriptors kept back from `--max-connections` for listeners, epoll, wakers,
/// stdio and the spare used on `EMFILE`.
const FD_RESERVE_BASE: u64 = 32;
const FD_RESERVE_PER_THREAD: u64 = 8;

/// One worker's mailbox: notes pushed by publishers on any thread.
pub struct WorkerInbox {
    pub inbox: Mutex<Vec<Note>>,
    pub woken: AtomicBool,
    waker: Waker,
}

/// Everything the workers share.
pub struct Shared {
    pub store: Store,
    pub stats: Stats,
    pub workers: Vec<WorkerInbox>,
    pub shutdown: AtomicBool,
    pub max_connections: usize,
    pub max_message_size: usize,
    pub poll_timeout_ms: u64,
    pub max_poll_timeout_ms: u64,
    pub header_timeout_ms: u64,
    pub keepalive_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    pub sse_heartbeat_ms: u64,
    pub sse_max_backlog: usize,
    pub trust_proxy: bool,
    /// The spare descriptor for refusing clients at the open-file limit.
    pub reserve: Reserve,
    epoch: Instant,
}

impl Shared {
    /// Milliseconds on the server's monotonic clock (only loops call this).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Queues `note` for each worker in `mask`. Called with the store lock held, which
    /// keeps every inbox in id order; the (syscall) wake-up happens after, in [`wake`].
    ///
    /// [`wake`]: Shared::wake
    pub fn deliver_note(&self, mask: u64, note: Note) {
        let mut m = mask;
        while m != 0 {
            let w = m.trailing_zeros() as usize;
            m &= m - 1;
            self.workers[w]
                .inbox
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(note.clone());
        }
    }

    /// Wakes the workers in `mask`, once per batch: a worker already woken and not yet
    /// drained is not woken again.
    pub fn wake(&self, mask: u64) {
        let mut m = mask;
        while m != 0 {
            let w = m.trailing_zeros() as usize;
            m &= m - 1;
            let wk = &self.workers[w];
            if !wk.woken.swap(true, SeqCst) {
                let _ = wk.waker.wake();
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.stats
            .snapshot(&self.store.stats(), sys::rss_bytes(), self.max_connections)
    }
}

/// A running server.
pub struct Handle {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub max_connections: usize,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Handle {
    /// Starts a graceful shutdown: parked polls get 503, listeners close.
    pub fn shutdown(&self) {
        self.shared.store.close();
        self.shared.shutdown.store(true, SeqCst);
        self.shared
            .wake(u64::MAX >> (64 - self.shared.workers.len()));
    }

    /// Waits for every worker to finish.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// The counters as `/stats` reports them.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot()
    }
}

/// Binds one socket per worker on `addr` (resolving port 0 once, so all share it).
fn bind_all(addr: SocketAddr, n: usize) -> io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let first = bind_listener(addr)?;
    let bound = first.local_addr()?;
    let mut v = vec![first];
    for _ in 1..n {
        v.push(bind_listener(bound)?);
    }
    Ok((bound, v))
}

/// The default connection cap for an open-file limit.
pub fn default_max_connections(nofile: u64, threads: usize) -> usize {
    let reserve = FD_RESERVE_BASE + FD_RESERVE_PER_THREAD * threads as u64;
    nofile.saturating_sub(reserve).max(1) as usize
}

/// Starts the server described by `cfg`.
pub fn start(cfg: &Config) -> io::Result<Handle> {
    if let Err(msg) = cfg.validate() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    }
    let threads = cfg.thread_count();
    let nofile = sys::raise_fd_limit().unwrap_or(1024);
    let max_connections = cfg
        .max_connections
        .unwrap_or_else(|| default_max_connections(nofile, threads));

    let (public, mut pub_ls) = bind_all(cfg.listen, threads)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.listen)))?;
    let (admin, mut adm_ls) = bind_all(cfg.admin_listen, threads).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", cfg.admin_listen),
        )
    })?;

    let mut polls = Vec::with_capacity(threads);
    let mut inboxes = Vec::with_capacity(threads);
    for _ in 0..threads {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        inboxes.push(WorkerInbox {
            inbox: Mutex::new(Vec::new()),
            woken: AtomicBool::new(false),
            waker,
        });
        polls.push(poll);
    }
    let ms = |d: Duration| d.as_millis() as u64;
    let shared = Arc::new(Shared {
        store: Store::new(StoreConfig {
            buffer_messages: cfg.buffer_messages,
            message_ttl_ms: ms(cfg.message_ttl),
            max_bytes: usize::try_from(cfg.max_memory).unwrap_or(usize::MAX),
            max_channels: cfg.max_channels,
        }),
        stats: Stats::default(),
        workers: inboxes,
        shutdown: AtomicBool::new(false),
        max_connections,
        max_message_size: cfg.max_message_size as usize,
        poll_timeout_ms: ms(cfg.poll_timeout),
        max_poll_timeout_ms: ms(cfg.max_poll_timeout),
        header_timeout_ms: ms(cfg.header_timeout),
        keepalive_timeout_ms: ms(cfg.keepalive_timeout),
        shutdown_grace_ms: 1500,
        sse_heartbeat_ms: ms(cfg.sse_heartbeat),
        sse_max_backlog: cfg.sse_max_backlog as usize,
        trust_proxy: cfg.trust_proxy,
        reserve: Reserve::new(),
        epoch: Instant::now(),
    });

    let mut handles = Vec::with_capacity(threads);
    for (id, poll) in polls.into_iter().enumerate() {
        let ls = vec![
            (false, mio::net::TcpListener::from_std(pub_ls.remove(0))),
            (true, mio::net::TcpListener::from_std(adm_ls.remove(0))),
        ];
        let worker = Worker::new(id, shared.clone(), poll, ls)?;
        let t = std::thread::Builder::new()
            .name(format!("holdfast-w{id}"))
            .spawn(move || worker.run())?;
        handles.push(t);
    }
    Ok(Handle {
        public,
        admin,
        max_connections,
        shared,
        threads: handles,
    })
}
