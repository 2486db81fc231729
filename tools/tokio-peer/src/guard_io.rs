//! The socket hyper reads and writes: a `TcpStream` wrapper that enforces the limits of
//! docs/protocol.md that hyper has no knob for.
//!
//! Owns three things:
//! - **Header timeout** (`--header-timeout`, slow-loris): a request head must be complete
//!   within the limit, counted from accept for a new connection and from the first byte
//!   of the next head on a kept-alive one.
//! - **Keep-alive timeout** (`--keepalive-timeout`): a connection with no request in
//!   flight and no bytes arriving is closed after the limit; this also bounds a response
//!   the client will not read, as the deadline starts when the response is handed to
//!   hyper, written or not.
//! - **The request line** as it arrives ([`request_line`](crate::request_line)): over
//!   8 KiB is `414` (detected before the line ends, so a client cannot park an endless
//!   line in hyper's buffer), and a well-formed `HTTP/d.d` other than 1.0 and 1.1 is
//!   `505` (hyper would answer `400`). The few bytes of a version hyper would refuse
//!   before the line ends are held back from it until the line does, so the answer does
//!   not depend on how the client's segments split the line.
//!
//! Why not hyper's `header_read_timeout`: hyper 1.x starts that timer as soon as it
//! starts waiting for a head, i.e. at the end of the previous response, so on a kept-alive
//! connection it is also the idle timeout; docs/protocol.md wants 10 s for the head and 60 s
//! idle. One deadline here, re-armed only on phase changes (a `tokio::time::Sleep`
//! reset, not a new timer per read), covers both.
//!
//! The phase comes from [`ConnShared`]: the service bumps `started` and holds an
//! [`InFlight`] guard while it works on a request (for a stream: while it is open).
//! Phases: `Head` (deadline = header timeout; scanning the request line) → `Busy` (no
//! deadline: a parked poll may last minutes) → `Idle` (deadline = keep-alive timeout) →
//! `Head` again on the next byte. The wrapper sees a transition at its next poll, and the
//! end of a request is always followed by one: hyper writes the response through it.
//! A newly armed deadline is registered with the task at once.
//!
//! A deadline or a refused request line fails the read with an error, which ends hyper's
//! connection without a response; the connection task then reads [`GuardedIo::outcome`]
//! and writes the `414` or `505` itself.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::atomic::{
    Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed, Ordering::Release, Ordering::SeqCst,
};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use holdfast::http::parse::HeadError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::request_line::{LineScan, Scan, MAX_HOLD};
use crate::websocket::Upgrade;

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub keepalive: Duration,
}

/// State shared by a connection's socket wrapper, its service and its task.
#[derive(Default)]
pub struct ConnShared {
    /// Requests hyper has handed to the service so far.
    started: AtomicU32,
    /// Requests (and streams) whose response is not complete yet.
    in_flight: AtomicU32,
    /// Raised by a stream whose client fell too far behind: the connection task
    /// drops the connection without waiting for hyper.
    abort: Notify,
    /// The connection's stream backlog, if it opened one.
    backlog: Backlog,
    /// The client closed its side (read returned 0).
    eof: AtomicBool,
    /// Requests parked (a long-poll waiting, a stream open). See [`GuardedIo`] on
    /// holding back the client's EOF.
    parked: AtomicU32,
    /// The socket wrapper's read waker while it holds back an EOF.
    reader: Mutex<Option<Waker>>,
    /// A WebSocket stream waiting for hyper to hand over the connection after its
    /// `101`; the connection task takes it when hyper is done.
    upgrade: Mutex<Option<Upgrade>>,
}

/// How far a connection's stream is behind (a stream ends its connection, so a
/// connection carries at most one).
///
/// `queued` is what the hub handed to the stream's queue and its body has not taken yet.
/// hyper polls the body only when it has room to write, so the queue grows while the
/// socket refuses bytes, and the body drains it as soon as the socket takes them. A queue
/// over the limit is therefore not by itself a slow reader: a publish burst can arrive
/// before the stream's task runs. The stream is cut when the queue is over the limit
/// *and* the socket refused the last write (the same rule as holdfast's "unsent bytes":
/// what the client has not accepted), checked by whichever side moves second — the
/// publisher adding bytes, or the socket wrapper seeing a write refused. A queue
/// [`HARD_CAP`] times the limit is cut regardless, so a stream whose task is starved
/// cannot hold unbounded memory.
#[derive(Default)]
struct Backlog {
    /// Bytes queued and not yet taken by the body.
    queued: AtomicUsize,
    /// `--stream-max-backlog`, set when the stream opens (0: no stream).
    limit: AtomicUsize,
    /// The socket refused the last write (a write it accepts clears it).
    refused: AtomicBool,
    /// Over the limit: nothing more is queued and the body ends.
    cut: AtomicBool,
}

/// A queue this many times `--stream-max-backlog` is cut even if the socket never refused.
const HARD_CAP: usize = 4;

impl ConnShared {
    /// Marks a request as started; the guard ends it when dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Release);
        self.in_flight.fetch_add(1, SeqCst);
        InFlight(self.clone())
    }

    /// Whether the client has closed its side: a subscribe answered now does not park.
    pub fn client_closed(&self) -> bool {
        self.eof.load(SeqCst)
    }

    /// A request parks (until the guard drops): an EOF from the client now means it is
    /// gone, so one held back is handed to hyper, which drops the request.
    pub fn park(self: &Arc<Self>) -> ParkGuard {
        self.parked.fetch_add(1, SeqCst);
        self.wake_reader();
        ParkGuard(self.clone())
    }

    /// Whether hyper may see the client's EOF now: nothing is in flight, or what is in
    /// flight waits for a publish that a gone client does not need.
    fn eof_deliverable(&self) -> bool {
        self.in_flight.load(SeqCst) == 0 || self.parked.load(SeqCst) > 0
    }

    fn wake_reader(&self) {
        if self.eof.load(SeqCst) {
            let w = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(w) = w {
                w.wake();
            }
        }
    }

    /// Asks the connection task to drop the connection now.
    pub fn abort(&self) {
        self.abort.notify_one();
    }

    /// Resolves once [`abort`](Self::abort) has been called (a stored permit counts).
    pub async fn aborted(&self) {
        self.abort.notified().await;
    }

    /// A stream opened on this connection, allowed `limit` unsent bytes.
    pub fn open_stream(&self, limit: usize) {
        self.backlog.limit.store(limit.max(1), SeqCst);
    }

    /// The publisher queues `len` bytes for the stream. False if the stream is cut (now
    /// or before) and the bytes must not be queued.
    pub fn queue(&self, len: usize) -> bool {
        let b = &self.backlog;
        if b.cut.load(Acquire) {
            return false;
        }
        let queued = b.queued.fetch_add(len, SeqCst) + len;
        let limit = b.limit.load(Acquire);
        let over = queued > limit && b.refused.load(SeqCst);
        if over || queued > limit.saturating_mul(HARD_CAP) {
            self.cut();
            return false;
        }
        true
    }

    /// The body took `len` bytes off the queue.
    pub fn taken(&self, len: usize) {
        self.backlog.queued.fetch_sub(len, SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.backlog.cut.load(Acquire)
    }

    fn cut(&self) {
        if !self.backlog.cut.swap(true, AcqRel) {
            self.abort();
        }
    }

    /// Leaves a WebSocket stream for the connection task to run once hyper has written
    /// the `101` and handed over the socket.
    pub fn set_upgrade(&self, ws: Upgrade) {
        *self.upgrade.lock().unwrap_or_else(|e| e.into_inner()) = Some(ws);
    }

    /// The WebSocket stream left by [`set_upgrade`](Self::set_upgrade), if any. The
    /// connection task always takes it when hyper is done: it holds this `ConnShared`
    /// (through its guards), so leaving it here would keep both alive.
    pub fn take_upgrade(&self) -> Option<Upgrade> {
        self.upgrade
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The socket refused a write: cut the stream if its queue is over the limit.
    fn write_refused(&self) {
        let b = &self.backlog;
        b.refused.store(true, SeqCst);
        let limit = b.limit.load(Acquire);
        if limit > 0 && b.queued.load(SeqCst) > limit {
            self.cut();
        }
    }

    /// The socket accepted a write.
    fn write_accepted(&self) {
        // Load first: the flag lives in a line the publisher reads.
        if self.backlog.refused.load(Relaxed) {
            self.backlog.refused.store(false, SeqCst);
        }
    }
}

/// A request in progress; see [`ConnShared::begin`].
pub struct InFlight(Arc<ConnShared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
        self.0.wake_reader();
    }
}

/// A parked request; see [`ConnShared::park`].
pub struct ParkGuard(Arc<ConnShared>);

impl Drop for ParkGuard {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, SeqCst);
    }
}

/// Request-line bytes read but held back from hyper.
#[derive(Default)]
struct Held {
    bytes: [u8; MAX_HOLD],
    len: usize,
}

impl Held {
    fn set(&mut self, bytes: &[u8]) {
        self.bytes[..bytes.len()].copy_from_slice(bytes);
        self.len = bytes.len();
    }

    fn drop_front(&mut self, n: usize) {
        self.bytes.copy_within(n..self.len, 0);
        self.len -= n;
    }
}

/// How the connection ended, as far as the socket wrapper knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Neither side has closed: the server is closing (Connection: close, an error, a
    /// shutdown), so the connection task lingers.
    Open,
    /// The client closed its side.
    Eof,
    /// A header or keep-alive deadline passed.
    TimedOut,
    /// The request line is refused (`414` or `505`): answer it.
    Refused(HeadError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Busy,
    Idle,
}

pub struct GuardedIo {
    stream: TcpStream,
    conn: Arc<ConnShared>,
    timeouts: Timeouts,
    phase: Phase,
    /// `ConnShared::started` as of the last poll.
    seen_started: u32,
    deadline: Pin<Box<Sleep>>,
    /// The current request line; `None` once the line is complete (or while not reading
    /// a head).
    line: Option<LineScan>,
    /// The end of what was read of the request line, held back from hyper (see
    /// `request_line`); already scanned.
    held: Held,
    outcome: Outcome,
    /// The client's EOF was read and is being held back from hyper.
    eof_held: bool,
}

impl GuardedIo {
    pub fn new(stream: TcpStream, conn: Arc<ConnShared>, timeouts: Timeouts) -> GuardedIo {
        GuardedIo {
            stream,
            conn,
            timeouts,
            phase: Phase::Head,
            seen_started: 0,
            // A new connection's head deadline counts from accept.
            deadline: Box::pin(tokio::time::sleep(timeouts.header)),
            line: Some(LineScan::default()),
            held: Held::default(),
            outcome: Outcome::Open,
            eof_held: false,
        }
    }

    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Moves the deadline and registers it with the connection task right away, so it
    /// fires even if hyper does not poll this socket again before then.
    fn arm(&mut self, after: Duration, cx: &mut Context<'_>) {
        self.deadline.as_mut().reset(Instant::now() + after);
        let _ = self.deadline.as_mut().poll(cx);
    }

    /// Catches up with what the service did since the last poll. The end of a request is
    /// always seen promptly: its guard drops when the service future completes, and hyper
    /// then writes the response through this wrapper.
    fn sync_phase(&mut self, cx: &mut Context<'_>) {
        let started = self.conn.started.load(Acquire);
        if started != self.seen_started {
            self.seen_started = started;
            self.phase = Phase::Busy;
            self.line = None;
        }
        if self.phase == Phase::Busy && self.conn.in_flight.load(Acquire) == 0 {
            self.phase = Phase::Idle;
            self.arm(self.timeouts.keepalive, cx);
        }
    }

    /// Accounts for bytes just read; returns how many of the last of them hyper must not
    /// see yet.
    fn on_bytes(&mut self, bytes: &[u8], cx: &mut Context<'_>) -> io::Result<usize> {
        if self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.line = Some(LineScan::default());
            self.arm(self.timeouts.header, cx);
        }
        let Some(line) = self.line.as_mut() else {
            return Ok(0);
        };
        match line.feed(bytes) {
            Scan::Partial { hold } => Ok(hold),
            Scan::Done(refused) => {
                self.line = None;
                match refused {
                    None => Ok(0),
                    Some(e) => {
                        self.outcome = Outcome::Refused(e);
                        Err(io::Error::new(io::ErrorKind::InvalidData, e.reason()))
                    }
                }
            }
        }
    }

    /// The client's EOF, handed to hyper only when [`ConnShared::eof_deliverable`]. hyper
    /// (without `half_close`, which would stop it reading at all while a request is in
    /// flight, so a parked poll would never notice its client leave) treats an EOF that
    /// arrives before the response is written as the client gone and drops the response.
    /// A client that half-closes after sending its request (`shutdown(SHUT_WR)`, as
    /// `nc -N` does) still wants the answer; holdfast answers it, and so does this peer by
    /// holding the EOF until the response is complete, unless the request is parked.
    fn poll_held_eof(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.conn.eof_deliverable() {
            *self.conn.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            // Re-check: a request may have ended or parked before the waker was stored.
            if !self.conn.eof_deliverable() {
                return Poll::Pending;
            }
        }
        self.outcome = Outcome::Eof;
        Poll::Ready(Ok(()))
    }

    /// Accounts for a write's outcome: a refused one counts against a stream backlog and
    /// against the phase's deadline.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if r.is_pending() {
            self.conn.write_refused();
            self.check_deadline(cx)?;
        } else {
            self.conn.write_accepted();
        }
        r
    }

    /// Called when an operation is pending: fails it if the phase's deadline has passed
    /// (and registers the timer otherwise). A request in flight has no deadline here.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.phase != Phase::Busy && self.deadline.as_mut().poll(cx).is_ready() {
            self.outcome = Outcome::TimedOut;
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(())
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.outcome, Outcome::TimedOut | Outcome::Refused(_)) {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        }
        this.sync_phase(cx);
        if this.eof_held {
            return this.poll_held_eof(cx);
        }
        let before = buf.filled().len();
        loop {
            // Held bytes go first, behind them what the socket has now.
            let held = this.held.len;
            if held > 0 && buf.remaining() <= held {
                // No room behind them (hyper always leaves more): hand them over.
                let n = held.min(buf.remaining());
                buf.put_slice(&this.held.bytes[..n]);
                this.held.drop_front(n);
                return Poll::Ready(Ok(()));
            }
            buf.put_slice(&this.held.bytes[..held]);
            match Pin::new(&mut this.stream).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    this.held.len = 0;
                    let new = &buf.filled()[before + held..];
                    if new.is_empty() {
                        if held > 0 {
                            // The client closed mid-line: hyper gets the rest of the line
                            // now and the EOF on its next read.
                            return Poll::Ready(Ok(()));
                        }
                        this.conn.eof.store(true, SeqCst);
                        this.eof_held = true;
                        return this.poll_held_eof(cx);
                    }
                    // On an error the bytes just read are not handed to hyper: the
                    // connection ends either way.
                    let hold = match this.on_bytes(new, cx) {
                        Ok(hold) => hold.min(MAX_HOLD).min(buf.filled().len() - before),
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    let end = buf.filled().len();
                    this.held.set(&buf.filled()[end - hold..]);
                    buf.set_filled(end - hold);
                    if buf.filled().len() > before {
                        return Poll::Ready(Ok(()));
                    }
                    // Everything read is held: read on, so that the socket registers the
                    // wake-up if it has nothing more.
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Still held.
                    buf.set_filled(before);
                    this.check_deadline(cx)?;
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.sync_phase(cx);
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.sync_phase(cx);
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Outcome::Refused(_) = this.outcome {
            // hyper takes a read error before any byte of a request as the client gone
            // and closes quietly: the FIN waits for the connection task's answer.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}
