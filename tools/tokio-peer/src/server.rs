//! Listeners, accept loops, one task per connection, and shutdown.
//!
//! Owns: the shared [`App`] state (store, counters, hub, limits, shutdown signal), the two
//! listener sockets with one accept-loop task each, the connection cap (a `Semaphore`,
//! one permit per open connection), and the per-connection task that runs hyper's HTTP/1
//! state machine over a [`GuardedIo`] socket.
//!
//! A connection's task: `serve_connection` (with upgrades) until hyper is done, the
//! socket wrapper times out, a stream asks for an abort, or shutdown starts (then
//! `graceful_shutdown`: in-flight responses finish, idle connections close). A
//! connection hyper upgraded after a WebSocket's `101` goes on in the same task: the
//! subscribe handler left the stream with the connection (`ConnShared::set_upgrade`),
//! and the task runs it, so an upgraded connection keeps its permit. When the server is
//! the one closing, the task lingers for up to [`LINGER`]: it sends FIN and drains what
//! the client still sends, so that closing with unread input does not turn into a reset
//! that destroys the response the client has not read yet (holdfast does the same).
//!
//! Shutdown: the `watch` flips to `true`; accept loops stop (listeners close); parked polls
//! answer 503; streams end; connections finish within [`SHUTDOWN_GRACE`], after which
//! `main` drops the runtime. Every connection task holds a clone of an `mpsc::Sender`, so
//! "all connections are gone" is the channel closing (tokio's graceful-shutdown idiom).

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use holdfast::config::Config;
use holdfast::http::parse::{MAX_HEADERS_BYTES, MAX_REQUEST_LINE};
use holdfast::http::respond;
use holdfast::stats::{dec, inc, Snapshot, Stats};
use holdfast::store::Store;
use holdfast::subscribe::Holds;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::cors::CorsHeaders;
use crate::guard_io::{ConnShared, GuardedIo, Outcome, Timeouts};
use crate::hub::Hub;
use crate::service;

/// How long a connection the server closes keeps draining input after its FIN.
const LINGER: Duration = Duration::from_secs(2);
/// How long shutdown waits for connections to finish (docs/protocol.md: exit within 2 s).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// Pause after `accept` fails for lack of descriptors and the spare descriptor could not
/// take a client off the queue (the backlog holds the clients).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Limits from the flags, in the units the handlers use.
pub struct Limits {
    pub max_message_size: usize,
    /// Long-poll hold times.
    pub holds: Holds,
    pub header_timeout: Duration,
    pub sse_heartbeat: Duration,
}

/// Everything the connection tasks share.
pub struct App {
    /// Tells `hub` about every message and deletion (the hub is its notifier).
    pub store: Store,
    pub stats: Stats,
    pub hub: Arc<Hub>,
    pub limits: Limits,
    /// `--admin-token-file`: the secret every admin request but `/health` must carry.
    pub admin_token: Option<holdfast::auth::AdminToken>,
    /// `--subscribe-key`: every subscribe must carry a token it verifies.
    pub subscribe_key: Option<holdfast::auth::SubscribeKey>,
    /// `--token-cookie`: the cookie a subscriber token may ride in.
    pub token_cookie: Box<str>,
    /// `--allow-origin`: CORS on the public listener.
    pub cors: Option<CorsHeaders>,
    pub max_connections: usize,
    shutdown: watch::Sender<bool>,
    epoch: Instant,
}

impl App {
    /// Milliseconds on a monotonic clock: the `now` the store's TTL logic takes.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// A receiver for [`shutdown_started`].
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.stats.snapshot(
            &self.store.stats(),
            holdfast::sys::rss_bytes(),
            self.max_connections,
        )
    }
}

/// Resolves once shutdown has begun (at once if it already has).
pub async fn shutdown_started(rx: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which happens only as the process exits.
    let _ = rx.wait_for(|s| *s).await;
}

/// A bound, running server.
pub struct Server {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub max_connections: usize,
    app: Arc<App>,
    /// Closed when the last connection task (and accept loop) has ended.
    all_done: mpsc::Receiver<()>,
}

impl Server {
    /// Binds both listeners and starts accepting.
    pub async fn bind(cfg: &Config) -> io::Result<Server> {
        let bad = |msg| io::Error::new(io::ErrorKind::InvalidInput, msg);
        let admin_token = cfg.admin_token().map_err(bad)?;
        let subscribe_key = cfg.subscribe_key().map_err(bad)?;
        let cors = match cfg.cors().map_err(bad)? {
            Some(policy) => Some(CorsHeaders::new(policy).map_err(bad)?),
            None => None,
        };
        let nofile = holdfast::sys::raise_fd_limit().unwrap_or(1024);
        let max_connections = cfg.max_connections_for(nofile);
        let public_l = listen(cfg.listen).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.listen))
        })?;
        let admin_l = listen(cfg.admin_listen).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", cfg.admin_listen),
            )
        })?;
        let public = public_l.local_addr()?;
        let admin = admin_l.local_addr()?;

        // The hub first: the store tells it about messages.
        let hub = Hub::new(cfg.stream_max_backlog as usize);
        let app = Arc::new(App {
            store: Store::new(cfg.store_config(), hub.clone()),
            stats: Stats::default(),
            hub,
            admin_token,
            subscribe_key,
            token_cookie: cfg.token_cookie.as_str().into(),
            cors,
            limits: Limits {
                max_message_size: cfg.max_message_size as usize,
                holds: cfg.holds(),
                header_timeout: cfg.header_timeout,
                sse_heartbeat: cfg.sse_heartbeat,
            },
            max_connections,
            shutdown: watch::channel(false).0,
            epoch: Instant::now(),
        });
        let timeouts = Timeouts {
            header: cfg.header_timeout,
            keepalive: cfg.keepalive_timeout,
        };

        let mut http = http1::Builder::new();
        http
            // hyper's own limit on a head it cannot parse: larger than any head
            // docs/protocol.md allows, so the exact 414/431 answers come from `service`.
            .max_buf_size(MAX_REQUEST_LINE + MAX_HEADERS_BYTES + 1024)
            // The slow-loris and idle limits live in `GuardedIo` (see its docs for why
            // hyper's header_read_timeout cannot express both).
            .header_read_timeout(None)
            .keep_alive(true);
        let http = Arc::new(http);

        let permits = Arc::new(Semaphore::new(max_connections));
        let (done_tx, all_done) = mpsc::channel(1);
        for (listener, admin) in [(public_l, false), (admin_l, true)] {
            let acceptor = Acceptor {
                app: app.clone(),
                http: http.clone(),
                permits: permits.clone(),
                timeouts,
                admin,
                done: done_tx.clone(),
                spare: File::open("/dev/null").ok(),
            };
            tokio::spawn(acceptor.run(listener));
        }
        tokio::spawn(expire_loop(app.clone()));
        Ok(Server {
            public,
            admin,
            max_connections,
            app,
            all_done,
        })
    }

    /// Graceful shutdown, bounded by [`SHUTDOWN_GRACE`].
    pub async fn shutdown(mut self) {
        // Refuse publishes first: every acknowledged one is then already in the store,
        // where a parked poll woken by the shutdown signal looks once more (subscribe.rs).
        self.app.store.close();
        self.app.shutdown.send_replace(true);
        // Streams end when their senders go; parked polls watch the flag.
        self.app.hub.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.all_done.recv()).await;
    }
}

/// A listening socket with `SO_REUSEADDR` and a deep accept queue (the kernel clamps the
/// backlog to `net.core.somaxconn`), like holdfast's.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(65_535)
}

/// Evicts expired messages once a second, so `/stats` and idle channels are current
/// even when no request touches the store.
async fn expire_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        app.store.expire(app.now_ms());
    }
}

/// One listener's accept loop.
struct Acceptor {
    app: Arc<App>,
    http: Arc<http1::Builder>,
    permits: Arc<Semaphore>,
    timeouts: Timeouts,
    admin: bool,
    done: mpsc::Sender<()>,
    /// A descriptor held in reserve: out of descriptors, closing it lets the loop take
    /// one client off the queue and answer it `503` (the nginx / libuv idiom).
    spare: Option<File>,
}

impl Acceptor {
    async fn run(mut self, listener: TcpListener) {
        let mut stop = self.app.shutdown_signal();
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = shutdown_started(&mut stop) => return,
            };
            match accepted {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if is_fd_exhaustion(&e) => {
                    if !self.refuse_with_spare(&listener) {
                        // Nothing taken off the queue (or no spare to re-arm): retry
                        // shortly instead of spinning on an accept that keeps failing.
                        eprintln!("holdfast-tokio: accept: {e}; pausing");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
                // Aborted handshakes and the like concern one client only.
                Err(_) => {}
            }
        }
    }

    /// Out of descriptors: frees the spare, accepts one queued client, answers it `503`
    /// and closes it, then re-arms the spare. False if no client was refused this way or
    /// the spare could not be re-armed (another thread took the descriptor): the caller
    /// then backs off, as `accept` fails with `EMFILE` before it looks at the queue.
    fn refuse_with_spare(&mut self, listener: &TcpListener) -> bool {
        if self.spare.take().is_none() {
            // Lost last time; take it back if a descriptor has come free since.
            self.spare = File::open("/dev/null").ok();
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let took = match listener.poll_accept(&mut cx) {
            Poll::Ready(Ok((stream, _))) => {
                refuse(&self.app, stream);
                true
            }
            _ => false,
        };
        self.spare = File::open("/dev/null").ok();
        took && self.spare.is_some()
    }

    fn admit(&self, stream: TcpStream) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            refuse(&self.app, stream);
            return;
        };
        let _ = stream.set_nodelay(true);
        inc(&self.app.stats.accepted);
        inc(&self.app.stats.connections);
        let conn = Connection {
            app: self.app.clone(),
            http: self.http.clone(),
            timeouts: self.timeouts,
            admin: self.admin,
            _permit: permit,
            _done: self.done.clone(),
        };
        tokio::spawn(conn.serve(stream));
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    // EMFILE (24) and ENFILE (23) on Linux.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// Answers a connection over the cap with `503` and closes it, without a task: the socket
/// is fresh, so the short response fits its send buffer and a non-blocking write suffices.
fn refuse(app: &App, stream: TcpStream) {
    inc(&app.stats.rejected);
    let Ok(mut s) = stream.into_std() else { return };
    let mut out = Vec::with_capacity(256);
    respond::text(
        &mut out,
        503,
        &http_date_now(),
        true,
        &[("Retry-After", b"1")],
        "connection limit reached\n",
    );
    let _ = s.write(&out);
    let _ = s.shutdown(Shutdown::Write);
    // Drop what the client already sent so the close is a FIN, not a reset (bounded: a
    // client streaming data at us does not keep the accept loop here).
    let mut sink = [0u8; 1024];
    for _ in 0..64 {
        if !matches!(s.read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
}

/// Today's IMF-fixdate, for the few responses written without hyper.
pub fn http_date_now() -> [u8; 29] {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut date = [b' '; 29];
    respond::http_date(secs, &mut date);
    date
}

/// One accepted connection; its fields live as long as its task.
struct Connection {
    app: Arc<App>,
    http: Arc<http1::Builder>,
    timeouts: Timeouts,
    admin: bool,
    _permit: OwnedSemaphorePermit,
    _done: mpsc::Sender<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        dec(&self.app.stats.connections);
    }
}

impl Connection {
    async fn serve(self, stream: TcpStream) {
        let shared = Arc::new(ConnShared::default());
        let io = GuardedIo::new(stream, shared.clone(), self.timeouts);
        let svc = service::service(self.app.clone(), shared.clone(), self.admin);
        let mut conn = self
            .http
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        let mut stop = self.app.shutdown_signal();
        let finished = tokio::select! {
            r = &mut conn => Some(r),
            () = shared.aborted() => None,
            () = shutdown_started(&mut stop) => {
                // In-flight responses finish (parked polls answer 503 on their own),
                // idle connections close now.
                std::pin::Pin::new(&mut conn).graceful_shutdown();
                tokio::select! {
                    r = &mut conn => Some(r),
                    () = shared.aborted() => None,
                }
            }
        };
        // Taken whatever happened: it holds `shared` (see `ConnShared::take_upgrade`).
        let websocket = shared.take_upgrade();
        if finished.is_none() {
            return; // a stream fell too far behind: drop the socket at once
        }
        let Some(parts) = conn.into_parts() else {
            // Upgraded: the WebSocket stream runs here, until it ends or falls too far
            // behind (then the socket is dropped at once, without a close frame).
            let Some(websocket) = websocket else { return };
            let io = tokio::select! {
                io = websocket => io,
                () = shared.aborted() => None,
            };
            if let Some(io) = io {
                self.linger(io).await;
            }
            return;
        };
        let mut io = parts.io.into_inner();
        match io.outcome() {
            // The client closed, or sat idle past a deadline: nothing more to say.
            Outcome::Eof | Outcome::TimedOut => {}
            // A request line hyper would answer otherwise (see `request_line`).
            Outcome::Refused(e) => {
                let mut out = Vec::with_capacity(192);
                let why = format!("{}\n", e.reason());
                respond::text(&mut out, e.status(), &http_date_now(), true, &[], &why);
                let stream = io.stream_mut();
                if stream.write_all(&out).await.is_ok() {
                    self.linger(io).await;
                }
            }
            Outcome::Open => self.linger(io).await,
        }
    }

    /// FIN, then drain input until the client closes or [`LINGER`] passes (cut short by
    /// shutdown), so unread input does not make the kernel reset the connection.
    async fn linger(&self, io: GuardedIo) {
        let mut stream = io.into_stream();
        if stream.shutdown().await.is_err() || self.app.shutting_down() {
            return;
        }
        let mut stop = self.app.shutdown_signal();
        let mut sink = tokio::io::sink();
        let drain = tokio::io::copy(&mut stream, &mut sink);
        tokio::select! {
            _ = tokio::time::timeout(LINGER, drain) => {}
            () = shutdown_started(&mut stop) => {}
        }
    }
}
