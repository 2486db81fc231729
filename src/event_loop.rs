//! One worker per thread: its own `mio::Poll`, `SO_REUSEPORT` listener sockets,
//! connection slab, timer wheel, park lists, and an inbox of publish notes.
//!
//! Each iteration, in this fixed order (nginx's habit): sleep in `poll` until the next
//! timer deadline → read the clock once → dispatch socket events → expire timers → drain
//! the inbox of publish notes and fan messages out → resume connections that were
//! released by a delivery → (worker 0) expire old messages. Shared-nothing except the
//! pub/sub store and the counters.
//!
//! Readiness is edge-triggered: every read and accept drains to `WouldBlock` unless the
//! connection is deliberately not reading (parked with a full buffer, or output
//! backpressure), in which case it is read again when that ends. A stale event for a slot
//! that was freed and reused is dropped by the generation in its token.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::conn::{flag, BodyProgress, Conn, Io, Phase, Slots};
use crate::http::chunked::{ChunkError, ChunkedDecoder};
use crate::http::parse::{self, BodyLen, Method, Parsed, Request};
use crate::http::respond;
use crate::park::{Parking, NIL};
use crate::pubsub::{self, ChannelKey, Cursor, Note, Subscribed};
use crate::server::Shared;
use crate::sse;
use crate::stats::{dec, inc};
use crate::sys;
use crate::wheel::Wheel;

pub const WAKER: Token = Token(usize::MAX);
const LISTEN_PUBLIC: Token = Token(usize::MAX - 1);
const LISTEN_ADMIN: Token = Token(usize::MAX - 2);

/// Pooled `Io` boxes kept per worker; more are freed (a burst does not pin memory).
const POOL_MAX: usize = 1024;
/// Stop handling pipelined requests while this much output waits for the client.
const MAX_PENDING_OUTPUT: usize = 256 * 1024;
/// Most unhandled input buffered per connection (beyond a request and its body).
const MAX_BUFFERED_INPUT: usize = 64 * 1024;
/// How long a closing connection drains input before it is closed anyway.
const LINGER_MS: u64 = 2000;
/// Raw chunked bytes allowed per byte of `--max-message-size` (chunk-size lines, CRLFs).
const CHUNKED_OVERHEAD: usize = 2;

fn token(key: usize, gen: u32) -> Token {
    Token(((gen as usize) << 32) | key)
}

/// What handling one request left to do.
enum Outcome {
    /// A response is rendered in `Worker::out` (plus an optional shared payload).
    Respond { payload: Option<Bytes>, close: bool },
    /// The request parked; nothing to write now.
    Parked,
}

pub struct Worker {
    id: usize,
    shared: Arc<Shared>,
    poll: Poll,
    listeners: Vec<(Token, TcpListener)>,
    conns: Slab<Conn>,
    wheel: Wheel,
    parking: Parking,
    // Boxes move between this pool and `Conn::io` (8 bytes in the slot) without copying.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<Io>>,
    /// Scratch for rendering responses; reused, so rendering does not allocate.
    out: Vec<u8>,
    date: [u8; 29],
    date_secs: u64,
    now: u64,
    next_gen: u32,
    notes: Vec<Note>,
    /// Connections released by a delivery whose pipelined input must be handled.
    resume: Vec<(u32, u32)>,
    keys: [ChannelKey; pubsub::MAX_CHANNELS_PER_SUB],
    next_sweep: u64,
    /// When to look at the listeners again (see [`Worker::retry_accept_soon`]).
    accept_retry: Option<u64>,
    /// When an unexpected accept error was last logged.
    accept_error_logged: Option<u64>,
    shutting_down: Option<u64>,
    /// Refused-request log lines written in the current second, and suppressed ones.
    log_second: u64,
    log_lines: u32,
    log_suppressed: u32,
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

/// Refused-request log lines per worker per second; more are counted, not written, so
/// a flood of bad requests cannot turn into a flood of log I/O.
const LOG_LINES_PER_SEC: u32 = 10;

impl Worker {
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        poll: Poll,
        listeners: Vec<(bool, TcpListener)>,
    ) -> io::Result<Worker> {
        let mut ls = Vec::new();
        for (admin, mut l) in listeners {
            let t = if admin { LISTEN_ADMIN } else { LISTEN_PUBLIC };
            poll.registry().register(&mut l, t, Interest::READABLE)?;
            ls.push((t, l));
        }
        let now = shared.now_ms();
        let slots = shared.max_connections.min(1 << 24);
        Ok(Worker {
            id,
            shared,
            poll,
            listeners: ls,
            // Sized for the whole connection cap up front: the allocation is virtual
            // until slots are used (the kernel maps pages on first touch), and the slab
            // never reallocates, so RSS grows by one slot per connection with no
            // doubling slack and no copy of every live slot at each growth step.
            conns: Slab::with_capacity(slots),
            wheel: Wheel::new(now),
            parking: Parking::new(),
            pool: Vec::new(),
            out: Vec::with_capacity(16 * 1024),
            date: [b' '; 29],
            date_secs: u64::MAX,
            now,
            next_gen: 1,
            notes: Vec::new(),
            resume: Vec::new(),
            keys: [0; pubsub::MAX_CHANNELS_PER_SUB],
            next_sweep: now + 1000,
            accept_retry: None,
            accept_error_logged: None,
            shutting_down: None,
            log_second: 0,
            log_lines: 0,
            log_suppressed: 0,
        })
    }

    /// Runs until shutdown completes.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("holdfast: worker {}: poll failed: {e}", self.id);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            self.tick_clock();
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    t @ (LISTEN_PUBLIC | LISTEN_ADMIN) => self.accept(t),
                    Token(t) => {
                        let key = t & 0xffff_ffff;
                        let gen = (t >> 32) as u32;
                        if self.conns.get(key).is_some_and(|c| c.gen == gen) {
                            self.on_ready(
                                key,
                                ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                                ev.is_writable(),
                                ev.is_read_closed() || ev.is_error(),
                            );
                        }
                    }
                }
            }
            if self.accept_retry.is_some_and(|at| self.now >= at) {
                self.accept_retry = None;
                self.accept(LISTEN_PUBLIC);
                self.accept(LISTEN_ADMIN);
            }
            self.expire_timers();
            self.drain_inbox();
            self.resume_released();
            if self.id == 0 && self.now >= self.next_sweep {
                self.shared.store.expire(self.now);
                self.next_sweep = self.now + 1000;
            }
            if self.shared.shutdown.load(SeqCst) && self.shutting_down.is_none() {
                self.begin_shutdown();
            }
            if let Some(deadline) = self.shutting_down {
                if self.conns.is_empty() || self.now >= deadline {
                    return;
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let mut next = self.wheel.next_deadline();
        if self.id == 0 {
            next = Some(next.map_or(self.next_sweep, |n| n.min(self.next_sweep)));
        }
        if self.shutting_down.is_some() {
            next = Some(next.map_or(self.now + 50, |n| n.min(self.now + 50)));
        }
        if let Some(at) = self.accept_retry {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next.map(|at| Duration::from_millis(at.saturating_sub(self.now)))
    }

    fn tick_clock(&mut self) {
        self.now = self.shared.now_ms();
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs != self.date_secs {
            self.date_secs = secs;
            respond::http_date(secs, &mut self.date);
        }
    }

    // ---- accept -------------------------------------------------------------------

    fn accept(&mut self, t: Token) {
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
        respond::text(
            &mut self.out,
            503,
            &self.date,
            true,
            &[("Retry-After", b"1")],
            "connection limit reached\n",
        );
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
        let deadline = self.now + self.shared.header_timeout_ms;
        self.conns[key].phase = Phase::Idle;
        self.wheel
            .insert(&mut Slots(&mut self.conns), key as u32, deadline);
        // Edge-triggered: the request may already be here.
        self.drive(key);
    }

    // ---- readiness ------------------------------------------------------------------

    fn on_ready(&mut self, key: usize, readable: bool, writable: bool, hup: bool) {
        if writable && self.conns[key].has_output() {
            self.flush(key);
        }
        let c = &self.conns[key];
        if c.has(flag::DEAD) {
            self.close(key);
            return;
        }
        match c.phase {
            Phase::Parked | Phase::Stream => {
                // A stream whose backlog just drained gives its buffers back now, so an
                // idle stream owns nothing but its slot.
                self.release_io(key);
                if hup {
                    // Gone (or half-closed) while waiting: nothing will be read again,
                    // even if a full input buffer keeps us from seeing the EOF by reading.
                    self.close(key);
                } else if readable {
                    self.read_while_parked(key);
                }
            }
            Phase::Linger => {
                if readable {
                    self.drain_linger(key);
                }
            }
            _ => {
                if readable || !c.has_output() {
                    self.drive(key);
                } else {
                    self.settle(key);
                }
            }
        }
    }

    fn take_io(&mut self, key: usize) -> Box<Io> {
        match self.conns[key].io.take() {
            Some(io) => io,
            None => self.pool.pop().unwrap_or_default(),
        }
    }

    /// Returns the conn's `Io` to the pool if it holds nothing.
    fn release_io(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if c.has_input() || c.has_output() {
            return;
        }
        if let Some(mut io) = c.io.take() {
            if self.pool.len() < POOL_MAX {
                io.reset();
                self.pool.push(io);
            }
        }
    }

    /// Reads what the socket has into the conn's buffer. Returns false if nothing more
    /// will come (EOF or error), having set the flags.
    fn read_input(&mut self, key: usize, limit: usize) -> bool {
        let mut io = self.take_io(key);
        let c = &mut self.conns[key];
        let mut open = true;
        loop {
            if io.buffered() >= limit {
                break; // not draining: resumed later by `drive`
            }
            match io.read_from(&mut c.stream, limit) {
                Ok(0) => {
                    c.set(flag::EOF);
                    open = false;
                    break;
                }
                Ok(_) => {}
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => {
                        c.set(flag::EOF | flag::DEAD);
                        open = false;
                        break;
                    }
                },
            }
        }
        c.io = Some(io);
        open
    }

    fn read_while_parked(&mut self, key: usize) {
        // Pipelined requests behind a parked poll wait in the buffer (bounded); what
        // matters now is noticing a client that went away.
        if !self.read_input(key, MAX_BUFFERED_INPUT) || self.conns[key].has(flag::EOF) {
            self.close(key);
        } else {
            self.release_io(key);
        }
    }

    fn drain_linger(&mut self, key: usize) {
        let c = &mut self.conns[key];
        let mut sink = [0u8; 4096];
        loop {
            match c.stream.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.close(key);
    }

    /// Reads and handles requests until the conn parks, blocks, or runs out of input.
    fn drive(&mut self, key: usize) {
        loop {
            let c = &self.conns[key];
            if matches!(c.phase, Phase::Parked | Phase::Stream | Phase::Linger) || c.has(flag::DEAD)
            {
                break;
            }
            if c.io
                .as_ref()
                .is_some_and(|io| io.wq_bytes > MAX_PENDING_OUTPUT)
            {
                break; // resumed by `flush`
            }
            if c.has(flag::CLOSE_AFTER) {
                break;
            }
            if c.has_input() && !c.has(flag::EOF) && self.handle_buffered(key) {
                continue;
            }
            if !self.conns.contains(key) {
                return;
            }
            let c = &self.conns[key];
            if c.has(flag::EOF) {
                // Answer what was complete before the close, then go.
                if c.has_input()
                    && !c.has(flag::CLOSE_AFTER)
                    && c.phase != Phase::Parked
                    && self.handle_buffered(key)
                {
                    continue;
                }
                if self.conns.contains(key) {
                    self.conns[key].set(flag::CLOSE_AFTER);
                }
                break;
            }
            let before = c.io.as_ref().map_or(0, |io| io.buffered());
            let open = self.read_input(
                key,
                MAX_BUFFERED_INPUT + self.shared.max_message_size * CHUNKED_OVERHEAD,
            );
            let after = self.conns[key].io.as_ref().map_or(0, |io| io.buffered());
            if after == before {
                if open {
                    break; // WouldBlock
                }
                continue; // EOF: loop once more to answer buffered requests
            }
        }
        if self.conns.contains(key) {
            self.settle(key);
        }
    }

    /// Handles the request at the front of the buffer if it is complete. Returns true if
    /// one was handled (so the caller should look for another).
    fn handle_buffered(&mut self, key: usize) -> bool {
        let mut io = self.take_io(key);
        let max = self.shared.max_message_size;
        // Not `io.input()`: `buf` is read while other fields of `io` are updated.
        let buf = &io.rbuf[io.rpos..io.rend];
        let mut scanned = io.scanned;
        let head_end = match parse::head_end(buf, &mut scanned) {
            Some(e) => e,
            None => {
                io.scanned = scanned;
                let err = parse::check_partial(buf).err();
                self.conns[key].io = Some(io);
                if let Some(err) = err {
                    self.reject(key, err.status(), err.reason(), None);
                    return true;
                }
                return false;
            }
        };
        io.scanned = scanned;
        let req = match parse::parse_head(&buf[..head_end]) {
            Ok(Parsed::Complete(r)) => r,
            Ok(Parsed::Partial) => {
                // head_end saw a blank line that httparse does not accept as the end.
                self.conns[key].io = Some(io);
                self.reject(key, 400, "malformed request", None);
                return true;
            }
            Err(err) => {
                self.conns[key].io = Some(io);
                self.reject(key, err.status(), err.reason(), None);
                return true;
            }
        };
        // Body framing.
        let head_len = req.head_len;
        // The proxy-reported client, copied out of the buffer for the refusal log.
        let mut fwd = [0u8; 64];
        let fwd_len = req.forwarded_for.map_or(0, |f| {
            let n = f.len().min(fwd.len());
            fwd[..n].copy_from_slice(&f[..n]);
            n
        });
        let fwd = (fwd_len > 0).then_some(&fwd[..fwd_len]);
        let (body, consumed): (&[u8], usize) = match req.body {
            BodyLen::None => (&[], head_len),
            BodyLen::Length(n) => {
                if n > max as u64 {
                    self.conns[key].io = Some(io);
                    self.reject(key, 413, "message too large", fwd);
                    return true;
                }
                let total = head_len + n as usize;
                if buf.len() < total {
                    let expect = req.expect_continue && !io.continue_sent;
                    io.body = Some(BodyProgress::Length { total });
                    io.continue_sent |= expect;
                    self.conns[key].io = Some(io);
                    if expect {
                        self.send(key, &[respond::CONTINUE], None);
                    }
                    return false;
                }
                (&buf[head_len..total], total)
            }
            BodyLen::Chunked => {
                let expect = req.expect_continue && !io.continue_sent;
                let (mut decoder, mut used, mut bodyv) = match io.body.take() {
                    Some(BodyProgress::Chunked {
                        decoder,
                        consumed,
                        body,
                    }) => (decoder, consumed, body),
                    _ => (ChunkedDecoder::new(), 0, Vec::new()),
                };
                match decoder.decode(&buf[head_len + used..], &mut bodyv, max as u64) {
                    Ok(n) => used += n,
                    Err(e) => {
                        self.conns[key].io = Some(io);
                        match e {
                            ChunkError::TooLarge => self.reject(key, 413, "message too large", fwd),
                            ChunkError::Malformed => {
                                self.reject(key, 400, "malformed chunked body", fwd)
                            }
                        }
                        return true;
                    }
                }
                if !decoder.is_done() {
                    // Drop the framing decoded so far from the buffer (the head stays), so
                    // the raw bytes held are bounded by the decoded body, not by how the
                    // client chunked it: 1-byte chunks take 6 bytes each.
                    if used > 0 {
                        let from = io.rpos + head_len;
                        io.rbuf.copy_within(from + used..io.rend, from);
                        io.rend -= used;
                        used = 0;
                    }
                    io.body = Some(BodyProgress::Chunked {
                        decoder,
                        consumed: used,
                        body: bodyv,
                    });
                    io.continue_sent |= expect;
                    self.conns[key].io = Some(io);
                    if expect {
                        self.send(key, &[respond::CONTINUE], None);
                    }
                    return false;
                }
                // Complete: handle with the decoded body.
                let outcome = self.handle(key, &req, &bodyv);
                let keep_alive = req.keep_alive;
                return self.finish(key, io, head_len + used, outcome, keep_alive);
            }
        };
        let outcome = self.handle(key, &req, body);
        let keep_alive = req.keep_alive;
        self.finish(key, io, consumed, outcome, keep_alive)
    }

    /// After `handle`: consume the request, write the response, note keep-alive.
    fn finish(
        &mut self,
        key: usize,
        mut io: Box<Io>,
        consumed: usize,
        outcome: Outcome,
        keep_alive: bool,
    ) -> bool {
        io.consume(consumed);
        self.conns[key].io = Some(io);
        match outcome {
            Outcome::Respond { payload, close } => {
                let close = close || !keep_alive;
                let out = std::mem::take(&mut self.out);
                self.send(key, &[&out], payload.as_ref());
                self.out = out;
                self.request_done(key, close);
            }
            Outcome::Parked => {
                if !keep_alive {
                    self.conns[key].set(flag::CLOSE_AFTER);
                }
                self.release_io(key);
            }
        }
        true
    }

    fn request_done(&mut self, key: usize, close: bool) {
        let c = &mut self.conns[key];
        c.set(flag::SERVED);
        if close {
            c.set(flag::CLOSE_AFTER);
        }
        // Force `settle` to re-arm the timer for whatever comes next.
        c.phase = Phase::Idle;
        self.wheel.cancel(&mut Slots(&mut self.conns), key as u32);
    }

    /// A request we refuse: error response, then close.
    fn reject(&mut self, key: usize, code: u16, why: &str, forwarded: Option<&[u8]>) {
        self.log_refused(key, code, why, forwarded);
        self.out.clear();
        let mut body = [0u8; 128];
        let n = why.len().min(126);
        body[..n].copy_from_slice(&why.as_bytes()[..n]);
        body[n] = b'\n';
        respond::simple(
            &mut self.out,
            code,
            &self.date,
            true,
            &[],
            Some(b"text/plain; charset=utf-8"),
            &body[..n + 1],
        );
        let out = std::mem::take(&mut self.out);
        self.send(key, &[&out], None);
        self.out = out;
        if let Some(io) = self.conns[key].io.as_mut() {
            io.discard_input();
        }
        self.request_done(key, true);
    }

    /// One stderr line per refused request, rate-limited per worker. The client is the
    /// socket peer, or with `--trust-proxy` the address the proxy reported.
    fn log_refused(&mut self, key: usize, code: u16, why: &str, forwarded: Option<&[u8]>) {
        let second = self.now / 1000;
        if second != self.log_second {
            if self.log_suppressed > 0 {
                eprintln!(
                    "holdfast: {} more refused requests not logged",
                    self.log_suppressed
                );
            }
            self.log_second = second;
            self.log_lines = 0;
            self.log_suppressed = 0;
        }
        if self.log_lines >= LOG_LINES_PER_SEC {
            self.log_suppressed += 1;
            return;
        }
        self.log_lines += 1;
        let via = match forwarded.filter(|_| self.shared.trust_proxy) {
            Some(f) => String::from_utf8_lossy(f).into_owned(),
            None => self.conns[key]
                .stream
                .peer_addr()
                .map_or_else(|_| "unknown".into(), |a| a.ip().to_string()),
        };
        eprintln!("holdfast: {code} to {via}: {why}");
    }

    // ---- output -------------------------------------------------------------------

    /// Writes `parts` then `payload` now if the socket takes them, queueing the rest.
    fn send(&mut self, key: usize, parts: &[&[u8]], payload: Option<&Bytes>) {
        let c = &mut self.conns[key];
        if c.has(flag::DEAD) {
            return;
        }
        let mut written = 0;
        if !c.has_output() {
            let mut slices: [IoSlice<'_>; 4] = [IoSlice::new(&[]); 4];
            let mut n = 0;
            for p in parts.iter().filter(|p| !p.is_empty()) {
                slices[n] = IoSlice::new(p);
                n += 1;
            }
            if let Some(p) = payload.filter(|p| !p.is_empty()) {
                slices[n] = IoSlice::new(p);
                n += 1;
            }
            match write_all_vectored(&mut c.stream, &mut slices[..n]) {
                Ok(w) => written = w,
                Err(_) => {
                    c.set(flag::DEAD);
                    return;
                }
            }
        }
        let total: usize =
            parts.iter().map(|p| p.len()).sum::<usize>() + payload.map_or(0, |p| p.len());
        if written == total {
            return;
        }
        // Queue the rest: copies of our scratch parts, slices of the shared payload.
        let mut io = self.take_io(key);
        let mut skip = written;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            io.push_output(Bytes::copy_from_slice(&p[skip..]));
            skip = 0;
        }
        if let Some(p) = payload {
            if skip < p.len() {
                io.push_output(p.slice(skip..));
            }
        }
        self.conns[key].io = Some(io);
    }

    /// Writes queued output; on completion resumes reading.
    fn flush(&mut self, key: usize) {
        let c = &mut self.conns[key];
        let Some(io) = c.io.as_mut() else { return };
        while let Some(front) = io.wq.front_mut() {
            match c.stream.write(front) {
                Ok(0) => {
                    c.set(flag::DEAD);
                    return;
                }
                Ok(n) => {
                    io.wq_bytes -= n;
                    if n == front.len() {
                        io.wq.pop_front();
                    } else {
                        let _ = front.split_to(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.set(flag::DEAD);
                    return;
                }
            }
        }
    }

    /// Recomputes the phase and timer from the conn's state; closes it if it is done.
    fn settle(&mut self, key: usize) {
        let c = &self.conns[key];
        if c.has(flag::DEAD) {
            self.close(key);
            return;
        }
        if matches!(c.phase, Phase::Parked | Phase::Stream | Phase::Linger) {
            return;
        }
        let has_out = c.has_output();
        if c.has(flag::CLOSE_AFTER) && !has_out {
            self.start_linger(key);
            return;
        }
        let (phase, ms) = if has_out {
            (Phase::Send, self.shared.keepalive_timeout_ms)
        } else if c.has_input() || !c.has(flag::SERVED) {
            (Phase::Head, self.shared.header_timeout_ms)
        } else {
            (Phase::Idle, self.shared.keepalive_timeout_ms)
        };
        let fresh = !c.timer.is_armed();
        if phase != c.phase || fresh {
            // A new connection's header deadline counts from accept: keep it.
            let keep =
                c.phase == Phase::Idle && phase == Phase::Head && !c.has(flag::SERVED) && !fresh;
            self.conns[key].phase = phase;
            if !keep {
                self.wheel
                    .insert(&mut Slots(&mut self.conns), key as u32, self.now + ms);
            }
        }
        self.release_io(key);
    }

    fn start_linger(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if c.has(flag::EOF) || c.stream.shutdown(Shutdown::Write).is_err() {
            self.close(key);
            return;
        }
        c.phase = Phase::Linger;
        if let Some(io) = c.io.as_mut() {
            io.discard_input();
        }
        self.wheel.insert(
            &mut Slots(&mut self.conns),
            key as u32,
            self.now + LINGER_MS,
        );
        self.release_io(key);
        self.drain_linger_if_ready(key);
    }

    fn drain_linger_if_ready(&mut self, key: usize) {
        // The client may have closed already; edge-triggered means we must look now.
        self.drain_linger(key);
    }

    fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        if matches!(self.conns[key].phase, Phase::Parked | Phase::Stream) {
            self.unpark(key);
        }
        self.wheel.cancel(&mut Slots(&mut self.conns), key as u32);
        let mut c = self.conns.remove(key);
        if let Some(mut io) = c.io.take() {
            if self.pool.len() < POOL_MAX {
                io.reset();
                self.pool.push(io);
            }
        }
        dec(&self.shared.stats.connections);
    }

    // ---- timers -------------------------------------------------------------------

    fn expire_timers(&mut self) {
        while let Some(k) = self.wheel.poll(&mut Slots(&mut self.conns), self.now) {
            let key = k as usize;
            match self.conns[key].phase {
                Phase::Parked => {
                    self.unpark(key);
                    inc(&self.shared.stats.poll_timeouts);
                    let c = &self.conns[key];
                    let close = c.has(flag::CLOSE_AFTER);
                    self.out.clear();
                    respond::timeout(&mut self.out, c.cursor, &self.date, close);
                    let out = std::mem::take(&mut self.out);
                    self.send(key, &[&out], None);
                    self.out = out;
                    self.request_done(key, close);
                    self.resume.push((key as u32, self.conns[key].gen));
                }
                Phase::Stream => self.heartbeat(key),
                // Header, keep-alive, send and linger timeouts all end the connection.
                _ => self.close(key),
            }
        }
    }

    // ---- long-poll ----------------------------------------------------------------

    fn unpark(&mut self, key: usize) {
        let store = &self.shared.store;
        let id = self.id;
        self.parking
            .unpark(&mut Slots(&mut self.conns), key as u32, |k, emptied| {
                store.unsubscribe(k, id, 1, emptied)
            });
        let c = &mut self.conns[key];
        let streaming = c.phase == Phase::Stream;
        c.phase = Phase::Idle;
        c.clear(flag::LOST);
        if streaming {
            dec(&self.shared.stats.sse_streams);
        } else {
            dec(&self.shared.stats.parked);
        }
    }

    /// Sends a heartbeat comment on an SSE stream and re-arms its timer.
    fn heartbeat(&mut self, key: usize) {
        self.send(key, &[sse::HEARTBEAT], None);
        if self.stream_overflowed(key) {
            return;
        }
        self.wheel.insert(
            &mut Slots(&mut self.conns),
            key as u32,
            self.now + self.shared.sse_heartbeat_ms,
        );
    }

    /// Closes a stream whose write failed or whose unsent bytes passed
    /// `--sse-max-backlog` (a reader that stopped reading). Returns true if closed.
    fn stream_overflowed(&mut self, key: usize) -> bool {
        let c = &self.conns[key];
        let backlog = c.io.as_ref().map_or(0, |io| io.wq_bytes);
        if c.has(flag::DEAD) || backlog > self.shared.sse_max_backlog {
            self.close(key);
            return true;
        }
        false
    }

    fn drain_inbox(&mut self) {
        let me = &self.shared.workers[self.id];
        me.woken.store(false, SeqCst);
        {
            let mut inbox = me.inbox.lock().unwrap_or_else(|e| e.into_inner());
            if inbox.is_empty() {
                return;
            }
            std::mem::swap(&mut *inbox, &mut self.notes);
        }
        let mut notes = std::mem::take(&mut self.notes);
        for note in notes.drain(..) {
            match note {
                Note::Message {
                    key,
                    msg,
                    evicted_max,
                } => self.fan_out(key, &msg, evicted_max),
                Note::Deleted { key, channel } => self.channel_deleted(key, &channel),
            }
        }
        self.notes = notes;
    }

    /// Writes `msg` to every parked poll on channel `key` whose cursor is older.
    /// The head is rendered once; each subscriber gets it, a static tail, and the
    /// shared payload in one `writev`.
    fn fan_out(&mut self, key: ChannelKey, msg: &pubsub::Message, evicted_max: u64) {
        let mut node = self.parking.first(key);
        if node == NIL {
            return;
        }
        self.out.clear();
        respond::message_head(&mut self.out, msg, &self.date);
        let head = std::mem::take(&mut self.out);
        let payload = msg.payload.clone();
        // SSE frames, rendered on first use: without and with the `event:` line.
        let mut frames: [Option<Bytes>; 2] = [None, None];
        while node != NIL {
            let next = self.parking.next(&mut Slots(&mut self.conns), node);
            let ck = self.parking.conn_of(node) as usize;
            let c = &self.conns[ck];
            if c.phase == Phase::Stream {
                if msg.id > c.cursor {
                    let lost = c.has(flag::LOST) || (c.cursor != 0 && evicted_max > c.cursor);
                    let named = c.has(flag::MULTI);
                    let frame = frames[named as usize]
                        .get_or_insert_with(|| {
                            let mut v = Vec::with_capacity(msg.payload.len() + 64);
                            sse::event(&mut v, msg, named);
                            Bytes::from(v)
                        })
                        .clone();
                    self.conns[ck].cursor = msg.id;
                    self.conns[ck].clear(flag::LOST);
                    let mut gap = Vec::new();
                    if lost {
                        sse::lost(&mut gap, msg.id);
                    }
                    self.send(ck, &[&gap], Some(&frame));
                    inc(&self.shared.stats.delivered);
                    self.stream_overflowed(ck);
                }
            } else if msg.id > c.cursor {
                let lost = c.has(flag::LOST) || (c.cursor != 0 && evicted_max > c.cursor);
                let close = c.has(flag::CLOSE_AFTER);
                self.unpark(ck);
                self.wheel.cancel(&mut Slots(&mut self.conns), ck as u32);
                self.send(
                    ck,
                    &[&head, respond::message_tail(lost, close)],
                    Some(&payload),
                );
                inc(&self.shared.stats.delivered);
                self.request_done(ck, close);
                self.resume.push((ck as u32, self.conns[ck].gen));
            }
            node = next;
        }
        self.out = head;
    }

    fn channel_deleted(&mut self, key: ChannelKey, channel: &str) {
        loop {
            let node = self.parking.first(key);
            if node == NIL {
                return;
            }
            let ck = self.parking.conn_of(node) as usize;
            if self.conns[ck].phase == Phase::Stream {
                self.end_stream(ck, Some(channel));
                continue;
            }
            let close = self.conns[ck].has(flag::CLOSE_AFTER);
            self.unpark(ck);
            self.wheel.cancel(&mut Slots(&mut self.conns), ck as u32);
            self.out.clear();
            respond::text(
                &mut self.out,
                410,
                &self.date,
                close,
                &[],
                "channel deleted\n",
            );
            let out = std::mem::take(&mut self.out);
            self.send(ck, &[&out], None);
            self.out = out;
            self.request_done(ck, close);
            self.resume.push((ck as u32, self.conns[ck].gen));
        }
    }

    /// Ends an SSE stream: unlinks it, sends `event: deleted` if a channel went away,
    /// then closes once the output is written.
    fn end_stream(&mut self, key: usize, deleted: Option<&str>) {
        self.unpark(key);
        self.wheel.cancel(&mut Slots(&mut self.conns), key as u32);
        if let Some(ch) = deleted {
            self.out.clear();
            sse::deleted(&mut self.out, ch);
            let out = std::mem::take(&mut self.out);
            self.send(key, &[&out], None);
            self.out = out;
        }
        self.conns[key].set(flag::CLOSE_AFTER | flag::SERVED);
        self.settle(key);
    }

    fn resume_released(&mut self) {
        while let Some((k, gen)) = self.resume.pop() {
            let key = k as usize;
            if self.conns.get(key).is_some_and(|c| c.gen == gen) {
                self.drive(key);
            }
        }
    }

    fn begin_shutdown(&mut self) {
        // The store refused publishes before the flag was raised; every acknowledged one
        // has its note in an inbox. Deliver those before answering the rest with 503.
        self.drain_inbox();
        self.shutting_down = Some(self.now + self.shared.shutdown_grace_ms);
        for (_, mut l) in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let c = &mut self.conns[key];
            match c.phase {
                Phase::Parked => {
                    self.unpark(key);
                    self.wheel.cancel(&mut Slots(&mut self.conns), key as u32);
                    self.render_shutting_down();
                    let out = std::mem::take(&mut self.out);
                    self.send(key, &[&out], None);
                    self.out = out;
                    self.request_done(key, true);
                    self.settle(key);
                }
                Phase::Stream => self.end_stream(key, None),
                Phase::Idle if !c.has_input() => self.close(key),
                _ => c.set(flag::CLOSE_AFTER),
            }
        }
    }

    // ---- requests -----------------------------------------------------------------

    fn handle(&mut self, key: usize, req: &Request<'_>, body: &[u8]) -> Outcome {
        self.out.clear();
        let admin = self.conns[key].has(flag::ADMIN);
        let path = req.path;
        let m = req.method;
        if path == b"/health" {
            return match m {
                Method::Get | Method::Head => self.text(req, 200, "ok\n"),
                _ => self.not_allowed(req, b"GET, HEAD"),
            };
        }
        if !admin {
            if let Some(chs) = path.strip_prefix(b"/sub/") {
                return match m {
                    Method::Get => self.subscribe(key, req, chs),
                    _ => self.not_allowed(req, b"GET"),
                };
            }
            return self.text(req, 404, "not found\n");
        }
        if let Some(ch) = path.strip_prefix(b"/pub/") {
            if !pubsub::valid_channel_name(ch) {
                return self.text(req, 400, "invalid channel name\n");
            }
            // Valid names are ASCII.
            let ch = std::str::from_utf8(ch).unwrap_or_default();
            return match m {
                Method::Post | Method::Put => self.publish(req, ch, body),
                Method::Get | Method::Head => self.channel_info(req, ch),
                Method::Delete => self.delete(req, ch),
                Method::Other => self.not_allowed(req, b"GET, HEAD, POST, PUT, DELETE"),
            };
        }
        match (path, m) {
            (b"/stats" | b"/metrics", Method::Get | Method::Head) => {
                let snap = self.shared.snapshot();
                let mut body = Vec::with_capacity(1024);
                if path == b"/stats" {
                    snap.json(&mut body);
                    self.respond(req, 200, &[], Some(b"application/json"), &body)
                } else {
                    snap.prometheus(&mut body);
                    self.respond(req, 200, &[], Some(b"text/plain; version=0.0.4"), &body)
                }
            }
            (b"/stats" | b"/metrics", _) => self.not_allowed(req, b"GET, HEAD"),
            _ => self.text(req, 404, "not found\n"),
        }
    }

    fn respond(
        &mut self,
        req: &Request<'_>,
        code: u16,
        headers: &[(&str, &[u8])],
        ct: Option<&[u8]>,
        body: &[u8],
    ) -> Outcome {
        self.out.clear();
        respond::simple(
            &mut self.out,
            code,
            &self.date,
            !req.keep_alive,
            headers,
            ct,
            body,
        );
        if req.method == Method::Head {
            self.out.truncate(self.out.len() - body.len());
        }
        Outcome::Respond {
            payload: None,
            close: false,
        }
    }

    fn text(&mut self, req: &Request<'_>, code: u16, body: &str) -> Outcome {
        self.respond(
            req,
            code,
            &[],
            Some(b"text/plain; charset=utf-8"),
            body.as_bytes(),
        )
    }

    /// Renders the `503` + `Retry-After: 1` (then close) of a server shutting down.
    fn render_shutting_down(&mut self) {
        self.out.clear();
        respond::text(
            &mut self.out,
            503,
            &self.date,
            true,
            &[("Retry-After", b"1")],
            "server shutting down\n",
        );
    }

    fn shutting_down_response(&mut self) -> Outcome {
        self.render_shutting_down();
        Outcome::Respond {
            payload: None,
            close: true,
        }
    }

    /// `--max-channels` refused a new channel: 503 (it may clear as channels expire).
    fn too_many_channels(&mut self, req: &Request<'_>) -> Outcome {
        let body = b"channel limit reached (--max-channels)\n";
        self.respond(
            req,
            503,
            &[("Retry-After", b"1")],
            Some(b"text/plain; charset=utf-8"),
            body,
        )
    }

    fn not_allowed(&mut self, req: &Request<'_>, allow: &[u8]) -> Outcome {
        let body = b"method not allowed\n";
        self.respond(
            req,
            405,
            &[("Allow", allow)],
            Some(b"text/plain; charset=utf-8"),
            body,
        )
    }

    fn publish(&mut self, req: &Request<'_>, ch: &str, body: &[u8]) -> Outcome {
        let ct = req
            .content_type
            .filter(|c| !c.is_empty())
            .map(Bytes::copy_from_slice);
        let payload = Bytes::copy_from_slice(body);
        let shared = &self.shared;
        let mut wake = 0u64;
        let info = shared
            .store
            .publish(ch, ct, payload, self.now, |mask, note| {
                wake |= mask;
                shared.deliver_note(mask, note);
            });
        shared.wake(wake & !(1 << self.id));
        let info = match info {
            Ok(info) => info,
            Err(pubsub::PublishError::TooManyChannels) => return self.too_many_channels(req),
            Err(pubsub::PublishError::Closed) => return self.shutting_down_response(),
        };
        let mut json = Vec::with_capacity(128);
        json.extend_from_slice(b"{\"id\":\"");
        let _ = write!(json, "{}\",\"channel\":", info.id);
        respond::json_str(&mut json, ch);
        let _ = write!(
            json,
            ",\"subscribers\":{},\"buffered\":{}}}",
            info.subscribers, info.buffered
        );
        self.respond(req, 201, &[], Some(b"application/json"), &json)
    }

    fn channel_info(&mut self, req: &Request<'_>, ch: &str) -> Outcome {
        let Some(i) = self.shared.store.info(ch, self.now) else {
            return self.text(req, 404, "no such channel\n");
        };
        let mut json = Vec::with_capacity(192);
        json.extend_from_slice(b"{\"channel\":");
        respond::json_str(&mut json, ch);
        let _ = write!(
            json,
            ",\"buffered\":{},\"bytes\":{},\"subscribers\":{},\"first_id\":\"{}\",\"last_id\":\"{}\",\"evicted_max\":\"{}\"}}",
            i.buffered, i.bytes, i.subscribers, i.first_id, i.last_id, i.evicted_max
        );
        self.respond(req, 200, &[], Some(b"application/json"), &json)
    }

    fn delete(&mut self, req: &Request<'_>, ch: &str) -> Outcome {
        let shared = &self.shared;
        let mut wake = 0u64;
        let existed = shared.store.delete(ch, |mask, note| {
            wake |= mask;
            shared.deliver_note(mask, note);
        });
        shared.wake(wake & !(1 << self.id));
        if !existed {
            return self.text(req, 404, "no such channel\n");
        }
        self.respond(req, 204, &[], None, b"")
    }

    fn subscribe(&mut self, key: usize, req: &Request<'_>, list: &[u8]) -> Outcome {
        // Channels: comma-separated, valid, at most 64, duplicates ignored.
        let mut names: [&str; pubsub::MAX_CHANNELS_PER_SUB] = [""; pubsub::MAX_CHANNELS_PER_SUB];
        let mut n = 0;
        for name in list.split(|&b| b == b',') {
            if !pubsub::valid_channel_name(name) {
                return self.text(req, 400, "invalid channel name\n");
            }
            let name = std::str::from_utf8(name).unwrap_or_default();
            if names[..n].contains(&name) {
                continue;
            }
            if n == pubsub::MAX_CHANNELS_PER_SUB {
                return self.text(req, 400, "too many channels (at most 64)\n");
            }
            names[n] = name;
            n += 1;
        }
        let names = &names[..n];
        let mut since = None;
        let mut timeout_ms = self.shared.poll_timeout_ms;
        for (k, v) in parse::query_pairs(req.query) {
            match k {
                b"since" => match parse_u64(v) {
                    Some(c) => since = Some(c),
                    None => return self.text(req, 400, "since must be a message id\n"),
                },
                b"timeout" => match std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| crate::config::parse_duration(s).ok())
                {
                    Some(d) => {
                        timeout_ms = (d.as_millis() as u64).min(self.shared.max_poll_timeout_ms)
                    }
                    None => return self.text(req, 400, "timeout must be seconds (or 500ms, 2m)\n"),
                },
                _ => {}
            }
        }
        // Both given: the newer wins. An EventSource opened with `?since=X` keeps that URL
        // and adds `Last-Event-ID` on reconnect; taking the query alone would replay from X
        // every time.
        if let Some(v) = req.last_event_id {
            match parse_u64(v) {
                Some(c) => since = Some(since.map_or(c, |s| s.max(c))),
                None => return self.text(req, 400, "Last-Event-ID must be a message id\n"),
            }
        }
        let cursor = since.map_or(Cursor::Latest, Cursor::Since);
        if req.wants_sse && self.shutting_down.is_none() && !self.conns[key].has(flag::EOF) {
            return self.open_stream(key, req, names, cursor);
        }
        let park =
            timeout_ms > 0 && self.shutting_down.is_none() && !self.conns[key].has(flag::EOF);
        let id = self.id;
        let keys = &mut self.keys[..names.len()];
        let r = self
            .shared
            .store
            .subscribe(names, cursor, park.then_some((id, keys)), self.now);
        let Ok(r) = r else {
            return self.too_many_channels(req);
        };
        match r {
            Subscribed::Ready { msg, lost } => {
                self.out.clear();
                respond::message_head(&mut self.out, &msg, &self.date);
                self.out
                    .extend_from_slice(respond::message_tail(lost, !req.keep_alive));
                inc(&self.shared.stats.delivered);
                Outcome::Respond {
                    payload: Some(msg.payload.clone()),
                    close: false,
                }
            }
            Subscribed::Waiting { cursor, lost } if park => {
                self.link_waiter(key, names.len(), cursor, Phase::Parked, timeout_ms);
                if lost {
                    self.conns[key].set(flag::LOST);
                }
                inc(&self.shared.stats.parked);
                Outcome::Parked
            }
            Subscribed::Waiting { cursor, .. } => {
                if self.shutting_down.is_some() {
                    return self.shutting_down_response();
                }
                inc(&self.shared.stats.poll_timeouts);
                self.out.clear();
                respond::timeout(&mut self.out, cursor, &self.date, !req.keep_alive);
                Outcome::Respond {
                    payload: None,
                    close: false,
                }
            }
        }
    }

    /// Turns the request into an SSE stream: head, every buffered message newer than
    /// the cursor, then the connection is linked like a parked poll and stays open.
    fn open_stream(
        &mut self,
        key: usize,
        req: &Request<'_>,
        names: &[&str],
        mut cursor: Cursor,
    ) -> Outcome {
        self.out.clear();
        sse::response_head(&mut self.out, &self.date);
        let named = names.len() > 1;
        let id = self.id;
        let last = loop {
            let keys = &mut self.keys[..names.len()];
            match self
                .shared
                .store
                .subscribe(names, cursor, Some((id, keys)), self.now)
            {
                Err(_) => return self.too_many_channels(req),
                Ok(Subscribed::Ready { msg, lost }) => {
                    if lost {
                        sse::lost(&mut self.out, msg.id);
                    }
                    sse::event(&mut self.out, &msg, named);
                    inc(&self.shared.stats.delivered);
                    cursor = Cursor::Since(msg.id);
                }
                // Nothing newer: the store registered us on every channel. A gap seen
                // now (a channel freed after losing messages newer than the cursor)
                // is announced with the next event, as for a long-poll.
                Ok(Subscribed::Waiting { cursor, lost }) => break (cursor, lost),
            }
        };
        let (last, lost) = last;
        let out = std::mem::take(&mut self.out);
        self.send(key, &[&out], None);
        self.out = out;
        let heartbeat = self.shared.sse_heartbeat_ms;
        self.link_waiter(key, names.len(), last, Phase::Stream, heartbeat);
        let c = &mut self.conns[key];
        c.set(flag::CLOSE_AFTER | flag::SERVED);
        if named {
            c.set(flag::MULTI);
        }
        if lost {
            c.set(flag::LOST);
        }
        inc(&self.shared.stats.sse_streams);
        Outcome::Parked
    }

    /// Links `key` into the waiter lists of the first `n` channels in `self.keys` (the
    /// store registered it there), records its cursor and phase, and arms its timer
    /// (poll timeout or heartbeat) `after_ms` from now. Shared by long-poll and SSE.
    fn link_waiter(&mut self, key: usize, n: usize, cursor: u64, phase: Phase, after_ms: u64) {
        let keys = self.keys;
        self.parking
            .park(&mut Slots(&mut self.conns), key as u32, &keys[..n]);
        let c = &mut self.conns[key];
        c.cursor = cursor;
        c.phase = phase;
        self.wheel
            .insert(&mut Slots(&mut self.conns), key as u32, self.now + after_ms);
    }
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// `writev` until everything is written or the socket is full; returns bytes written.
fn write_all_vectored(s: &mut TcpStream, mut slices: &mut [IoSlice<'_>]) -> io::Result<usize> {
    let mut total = 0;
    while !slices.is_empty() {
        match s.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                total += n;
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

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

/// Used by `Server::start` to check the clock base.
pub fn monotonic_ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<Worker>();
    let _ = sys::page_size;
}
