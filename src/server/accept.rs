//! Accepting connections: the listener sockets (one `SO_REUSEPORT` socket per worker
//! and address), the accept loop, the connection cap, and refusing clients with `503`
//! when descriptors or slots run out, using the spare descriptor in `reserve.rs`.
//!
//! A refused client is answered and closed here and never gets a slot: the answer is
//! written with one `write` (it fits any socket buffer), the write side is shut, and a
//! bounded amount of its input is drained so the close is a FIN, not a reset.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use holdfast::http::respond;
use holdfast::stats::inc;
use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::conn::{Conn, Input};
use super::worker::{Worker, LISTEN_ADMIN};

/// A connection's token: slab key in the low 32 bits, slot generation in the high 32.
fn token(key: usize, gen: u16) -> Token {
    Token(((gen as usize) << 32) | key)
}

/// What spending the descriptor reserve on one queued client did.
enum Spent {
    /// Accepted it, answered 503, closed it.
    Refused,
    /// The queue was empty.
    Drained,
    /// Accept failed (another worker took the freed descriptor).
    Failed,
}

/// Times in a row the reserve may fail to refuse a client before the accept loop stops
/// and retries after [`ACCEPT_RETRY_MS`].
const ACCEPT_STALLS: u32 = 8;
/// See [`Worker::retry_accept_soon`].
const ACCEPT_RETRY_MS: u64 = 10;

/// Binds one listener socket with `SO_REUSEPORT` so every worker can own one.
pub fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    // The kernel clamps this to net.core.somaxconn.
    s.listen(65_535)?;
    Ok(s.into())
}

impl Worker {
    pub(super) fn accept(&mut self, t: Token) {
        let admin = t == LISTEN_ADMIN;
        let shared = Arc::clone(&self.shared);
        // Lost to another worker's accept last time descriptors ran out: take it back.
        shared.reserve.check();
        let mut stalls = 0;
        loop {
            let Some(idx) = self.listeners.iter().position(|(lt, _)| *lt == t) else {
                return;
            };
            match self.listeners[idx].1.accept() {
                Ok((stream, _)) => {
                    if shared.reserve.check() {
                        self.admit(stream.into(), admin);
                    } else {
                        // This connection holds the reserve's descriptor (src/reserve.rs).
                        self.refuse(stream.into());
                        shared.reserve.refill();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of descriptors: spend the reserve to take one connection off
                    // the queue and refuse it. Without this the queue stays full and,
                    // level or edge, we would spin or stall. accept4 reports EMFILE
                    // before it looks at the queue, so only an accept that finds the
                    // queue empty ends the loop.
                    let spent = shared
                        .reserve
                        .spend(|| match self.listeners[idx].1.accept() {
                            Ok((s, _)) => {
                                self.refuse(s.into());
                                Spent::Refused
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Spent::Drained,
                            Err(_) => Spent::Failed,
                        });
                    match spent {
                        Some(Spent::Drained) => return,
                        Some(Spent::Refused) if shared.reserve.is_full() => stalls = 0,
                        // Another worker's accept took the freed descriptor (it gives it
                        // back in `Reserve::check` within microseconds), or the spare
                        // could not be re-opened: clients may still be queued, and an
                        // edge-triggered listener will not say so again.
                        _ => {
                            stalls += 1;
                            if stalls > ACCEPT_STALLS {
                                self.retry_accept_soon();
                                return;
                            }
                            std::thread::yield_now();
                            shared.reserve.check();
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM)
                    ) => {}
                Err(e) => {
                    // ENOBUFS, ENOMEM and the like: the queue may still hold clients.
                    // Logged once a second at most, as it repeats every retry.
                    if self
                        .accept_error_logged
                        .is_none_or(|t| self.now >= t + 1000)
                    {
                        self.accept_error_logged = Some(self.now);
                        eprintln!("holdfast: worker {}: accept: {e}", self.id);
                    }
                    self.retry_accept_soon();
                    return;
                }
            }
        }
    }

    /// Looks at both listeners again after [`ACCEPT_RETRY_MS`]: set when an accept loop
    /// had to stop while clients may still be queued (edge-triggered readiness will not
    /// report them again until another client arrives).
    fn retry_accept_soon(&mut self) {
        let at = self.now + ACCEPT_RETRY_MS;
        self.accept_retry = Some(self.accept_retry.map_or(at, |r| r.min(at)));
    }

    fn refuse(&mut self, mut s: TcpStream) {
        inc(&self.shared.stats.rejected);
        self.out.clear();
        respond::unavailable(&mut self.out, &self.date, "connection limit reached\n");
        let _ = s.write(&self.out);
        let _ = s.shutdown(Shutdown::Write);
        // Drop what the client already sent so the close is a FIN, not a reset (bounded:
        // a client streaming data at us does not keep the worker here).
        let mut sink = [0u8; 1024];
        for _ in 0..64 {
            if !matches!(s.read(&mut sink), Ok(n) if n > 0) {
                break;
            }
        }
    }

    fn admit(&mut self, stream: TcpStream, admin: bool) {
        let stats = &self.shared.stats;
        if stats.connections.load(Relaxed) as usize >= self.shared.max_connections
            || self.shutting_down.is_some()
        {
            self.refuse(stream);
            return;
        }
        let _ = stream.set_nodelay(true);
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= (u32::MAX - 2) as usize {
            self.refuse(stream);
            return;
        }
        // Registered by fd: the slot holds a plain std socket (4 bytes), not mio's wrapper.
        // Closing the fd removes it from epoll, so `close` needs no deregister call.
        let fd = stream.as_raw_fd();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&fd),
            token(key, gen),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            eprintln!("holdfast: register: {e}");
            return;
        }
        entry.insert(Conn::new(stream, gen, admin));
        inc(&stats.connections);
        inc(&stats.accepted);
        self.step(key, Input::Accepted);
        // Edge-triggered: the request may already be here.
        self.drive(key);
    }
}
