//! A worker process: opens its share of the connections at its share of the rate, from
//! its own source addresses, and keeps them subscribed with one nonblocking mio event
//! loop (no thread per connection). It reports progress to the parent every 250 ms as
//! JSON lines on stdout and takes two commands on stdin: `snapshot` (count and mark
//! the subscriptions that every publish must reach) and `finish` (close everything,
//! send the result, exit). End of stdin counts as `finish`, and the worker also
//! finishes by itself after `max_secs`, so it never outlives a lost parent for long.
//!
//! Connections are never reused or reopened: slot `i` of `conns` is connection `i` of
//! this worker for the whole run, so a token is just that index. A failure is counted
//! once, by kind, and closes the connection for good.
//!
//! Cost: one `Conn` (312 bytes on x86-64 plus buffers that stay empty while parked) per
//! connection; the timeout scan walks every slot every 250 ms, which is fine for a
//! load generator of 15,000 sockets per process (the server is the side that must
//! not scan).

use std::io::{self, BufRead, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, SockRef, Socket, Type};

use holdfast_stress::errors::{self, classify};
use holdfast_stress::report::{self, Counts, Report};

use crate::cli::{Mode, Protocol, WorkerSpec};
use crate::http::{self, Chunked, Cursor, Envelope, SseEvent, SseParser, WsFrame, WsParser};

const WAKER: Token = Token(usize::MAX);
/// Time allowed for a handshake, and for a stream's response head (SSE, ndjson, or a
/// WebSocket's `101`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long past its own `timeout=` a long-poll may stay unanswered.
const RESPONSE_GRACE: Duration = Duration::from_secs(30);
const REPORT_EVERY: Duration = Duration::from_millis(250);
/// Connections opened per loop turn at most, so events keep being served while ramping.
const MAX_OPEN_PER_TURN: u64 = 256;

enum Cmd {
    Snapshot,
    Finish,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Handshake under way.
    Connecting,
    /// A request is (being) sent and its answer (long-poll) or head (streams) awaited.
    Waiting,
    /// A stream (SSE, ndjson, WebSocket): head received, events flowing.
    Streaming,
    Closed,
}

struct Conn {
    sock: Option<TcpStream>,
    target: usize,
    phase: Phase,
    /// When the current phase times out (unused while streaming).
    deadline: Instant,
    out: Vec<u8>,
    out_pos: usize,
    rbuf: Vec<u8>,
    cursor: Cursor,
    sse: SseParser,
    /// WebSocket: the frame reader (a fragmented message in progress), and the 16 random
    /// bytes whose base64 is this connection's `Sec-WebSocket-Key`.
    ws: WsParser,
    ws_nonce: [u8; 16],
    /// Set for a chunked stream body (ndjson; SSE through a proxy that chunks); `body`
    /// then holds the decoded bytes.
    chunked: Option<Chunked>,
    body: Vec<u8>,
    /// Highest `n` received; the same `n` again is a duplicate, a lower one is out of
    /// order.
    last_seq: u32,
    /// SSE, and the JSON envelope's `id` (WebSocket, ndjson): the previous message's id
    /// as an ordered pair (`http::parse_event_id`); each message's id must be above it.
    /// (0, 0) before the first.
    last_event_id: (u64, u64),
    /// Subscribed and waiting (counted in `Counts::holding`).
    holding: bool,
    /// Held or failed (counted in `Counts::settled`).
    settled: bool,
    /// Held at the snapshot: every publish must reach this connection.
    counted: bool,
}

impl Conn {
    fn new(target: usize, deadline: Instant, ws_nonce: [u8; 16]) -> Conn {
        Conn {
            sock: None,
            target,
            phase: Phase::Connecting,
            deadline,
            out: Vec::new(),
            out_pos: 0,
            rbuf: Vec::new(),
            cursor: Cursor::default(),
            sse: SseParser::default(),
            ws: WsParser::default(),
            ws_nonce,
            chunked: None,
            body: Vec::new(),
            last_seq: 0,
            last_event_id: (0, 0),
            holding: false,
            settled: false,
            counted: false,
        }
    }
}

/// Everything but the connection table, so a connection and the counters can be
/// borrowed at the same time.
struct Ctx {
    spec: WorkerSpec,
    hosts: Vec<String>,
    counts: Counts,
    hist: Histogram<u64>,
    told_other: bool,
    /// splitmix64 state for the WebSocket keys.
    rng: u64,
}

impl Ctx {
    fn error(&mut self, kind: &str) {
        *self.counts.errors.entry(kind.to_owned()).or_default() += 1;
    }

    /// Counts `kind` and closes the connection for good.
    fn fail(&mut self, c: &mut Conn, kind: &str) {
        if c.phase == Phase::Closed {
            return;
        }
        self.error(kind);
        if c.holding {
            c.holding = false;
            self.counts.holding -= 1;
        }
        self.settle(c);
        c.phase = Phase::Closed;
        c.sock = None;
        c.out = Vec::new();
        c.rbuf = Vec::new();
        c.body = Vec::new();
    }

    fn fail_io(&mut self, c: &mut Conn, e: &io::Error) {
        let kind = classify(e, c.phase == Phase::Connecting);
        if kind == errors::IO_OTHER && !self.told_other {
            self.told_other = true;
            eprintln!(
                "holdfast-stress worker {}: socket error counted as {kind}: {e}",
                self.spec.id
            );
        }
        self.fail(c, kind);
    }

    fn settle(&mut self, c: &mut Conn) {
        if !c.settled {
            c.settled = true;
            self.counts.settled += 1;
        }
    }

    fn hold(&mut self, c: &mut Conn) {
        if !c.holding {
            c.holding = true;
            self.counts.holding += 1;
        }
        self.settle(c);
    }

    /// Takes one delivered payload; true when it counted as a message received (first
    /// arrival, in order, on a subscription counted at the snapshot).
    fn delivery(&mut self, c: &mut Conn, payload: &[u8]) -> bool {
        let Some((sent_us, n)) = http::parse_payload(payload) else {
            self.error(errors::BAD_PAYLOAD);
            return false;
        };
        if n == 0 || n > self.spec.publish {
            self.error(errors::UNEXPECTED_MESSAGE);
            return false;
        }
        if n == c.last_seq {
            self.counts.duplicates += 1;
            return false;
        }
        if n < c.last_seq {
            self.error(errors::OUT_OF_ORDER);
            return false;
        }
        c.last_seq = n;
        if c.counted {
            self.counts.received += 1;
            self.hist
                .saturating_record(unix_micros().saturating_sub(sent_us).max(1));
        }
        c.counted
    }

    /// A fresh WebSocket nonce (splitmix64 over a seed from the kernel): RFC 6455 asks
    /// for a random key per connection; this is not cryptography, only a key no two
    /// connections share.
    fn nonce(&mut self) -> [u8; 16] {
        let mut next = || {
            self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&next().to_le_bytes());
        out[8..].copy_from_slice(&next().to_le_bytes());
        out
    }
}

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Entry point of `holdfast-stress --worker SPEC_JSON`; returns the exit status.
pub fn main(spec_json: &str) -> i32 {
    let spec: WorkerSpec = match serde_json::from_str(spec_json) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("holdfast-stress worker: bad spec: {e}");
            return 2;
        }
    };
    let id = spec.id;
    // The parent checked that the share fits under the hard limit.
    let _ = holdfast::sys::raise_fd_limit();
    match Worker::new(spec).and_then(|mut w| w.run()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("holdfast-stress worker {id}: {e}");
            1
        }
    }
}

struct Worker {
    poll: Poll,
    conns: Vec<Conn>,
    ctx: Ctx,
    scratch: Vec<u8>,
    start: Instant,
}

impl Worker {
    fn new(spec: WorkerSpec) -> io::Result<Worker> {
        let spec_id = spec.id as u64;
        if spec.sources.is_empty() || spec.targets.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no source addresses or no targets",
            ));
        }
        Ok(Worker {
            poll: Poll::new()?,
            conns: Vec::with_capacity(spec.connections as usize),
            ctx: Ctx {
                hosts: spec.targets.iter().map(|t| t.to_string()).collect(),
                spec,
                counts: Counts::default(),
                hist: report::new_histogram(),
                told_other: false,
                rng: seed(spec_id),
            },
            scratch: vec![0; 64 * 1024],
            start: Instant::now(),
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        let waker = Arc::new(Waker::new(self.poll.registry(), WAKER)?);
        std::thread::spawn(move || read_commands(tx, waker));

        let n = self.ctx.spec.connections;
        let self_deadline = self.start + Duration::from_secs_f64(self.ctx.spec.max_secs);
        let mut events = Events::with_capacity(1024);
        let mut next_report = self.start;
        let mut ramped = false;
        loop {
            let now = Instant::now();
            let next_open = self.open_due(now);
            let mut timeout = next_report.saturating_duration_since(now);
            if let Some(t) = next_open {
                timeout = timeout.min(t.saturating_duration_since(now));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let now = Instant::now();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                if let Some(c) = self.conns.get_mut(ev.token().0) {
                    on_ready(c, &mut self.ctx, ev, &mut self.scratch, now);
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                match cmd {
                    Cmd::Snapshot => self.snapshot()?,
                    Cmd::Finish => return self.finish(),
                }
            }
            if !ramped && self.ctx.counts.opened == n && self.ctx.counts.settled == n {
                ramped = true;
                next_report = now; // tell the parent at once
            }
            if now >= next_report {
                self.expire(now);
                let counts = self.ctx.counts.clone();
                emit(&Report::Progress { counts, ramped })?;
                next_report = now + REPORT_EVERY;
            }
            if now >= self_deadline {
                return self.finish();
            }
        }
    }

    /// Opens the connections due by now; returns when the next one is due, if any.
    fn open_due(&mut self, now: Instant) -> Option<Instant> {
        let n = self.ctx.spec.connections;
        let rate = self.ctx.spec.rate.max(1.0);
        let elapsed = now.duration_since(self.start).as_secs_f64();
        let due = ((elapsed * rate) as u64 + 1).min(n);
        let mut budget = MAX_OPEN_PER_TURN;
        while self.ctx.counts.opened < due && budget > 0 {
            self.open_one(now);
            budget -= 1;
        }
        let opened = self.ctx.counts.opened;
        if opened >= n {
            None
        } else if opened < due {
            Some(now) // behind schedule: come straight back
        } else {
            Some(self.start + Duration::from_secs_f64(opened as f64 / rate))
        }
    }

    fn open_one(&mut self, now: Instant) {
        let idx = self.conns.len();
        let spec = &self.ctx.spec;
        let target = ((spec.first_index + idx as u64) % spec.targets.len() as u64) as usize;
        let dst = spec.targets[target];
        let src = spec.sources[idx % spec.sources.len()];
        self.ctx.counts.opened += 1;
        let nonce = match spec.mode {
            Mode::Websocket => self.ctx.nonce(),
            _ => [0; 16],
        };
        let mut c = Conn::new(target, now + CONNECT_TIMEOUT, nonce);
        let res = connect(src, dst).and_then(|mut s| {
            self.poll.registry().register(
                &mut s,
                Token(idx),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(s)
        });
        match res {
            Ok(s) => c.sock = Some(s),
            Err(e) => self.ctx.fail_io(&mut c, &e),
        }
        self.conns.push(c);
    }

    /// Fails connections stuck in a handshake or waiting for an answer too long.
    fn expire(&mut self, now: Instant) {
        for c in &mut self.conns {
            if now < c.deadline {
                continue;
            }
            match c.phase {
                Phase::Connecting => self.ctx.fail(c, errors::CONNECT_TIMEOUT),
                Phase::Waiting => self.ctx.fail(c, errors::RESPONSE_TIMEOUT),
                Phase::Streaming | Phase::Closed => {}
            }
        }
    }

    fn snapshot(&mut self) -> io::Result<()> {
        let mut per = vec![0u64; self.ctx.spec.targets.len()];
        for c in &mut self.conns {
            c.counted = c.holding;
            if c.counted {
                per[c.target] += 1;
            }
        }
        emit(&Report::Snapshot {
            held: per.iter().sum(),
            held_per_target: per,
        })
    }

    /// Sends the result first (closing 15,000 sockets takes the kernel a while, and the
    /// parent should not wait for that to have its numbers), then resets every
    /// connection: linger 0 makes `close` send RST, one packet instead of a FIN
    /// exchange, and leaves no TIME_WAIT behind (the kernel keeps at most
    /// `tcp_max_tw_buckets`, 131,072 here, fewer than one run's 200,000).
    fn finish(&mut self) -> io::Result<()> {
        emit(&Report::Result {
            counts: self.ctx.counts.clone(),
            latency: report::histogram_pairs(&self.ctx.hist),
        })?;
        for c in &self.conns {
            if let Some(s) = &c.sock {
                let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
            }
        }
        self.conns.clear();
        Ok(())
    }
}

/// A seed for the WebSocket keys: 8 bytes of `/dev/urandom`, mixed with the time and
/// the worker's id (the time alone, should the device not read).
fn seed(worker: u64) -> u64 {
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u64::from_le_bytes(b) ^ unix_micros() ^ worker.rotate_left(32)
}

fn read_commands(tx: mpsc::Sender<Cmd>, waker: Arc<Waker>) {
    let stdin = io::stdin();
    for line in stdin.lock().lines() {
        let cmd = match line.as_deref().map(str::trim) {
            Ok(report::CMD_SNAPSHOT) => Cmd::Snapshot,
            Ok(report::CMD_FINISH) | Err(_) => break,
            Ok(_) => continue,
        };
        if tx.send(cmd).is_err() {
            return;
        }
        let _ = waker.wake();
    }
    let _ = tx.send(Cmd::Finish);
    let _ = waker.wake();
}

fn emit(r: &Report) -> io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut out = io::stdout().lock();
    out.write_all(&line)?;
    out.flush()
}

/// A nonblocking socket bound to `src` (port chosen by the kernel) with a connect to
/// `dst` under way.
fn connect(src: Ipv4Addr, dst: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None)?;
    s.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
    match s.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(errors::EINPROGRESS_NO) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

fn on_ready(c: &mut Conn, ctx: &mut Ctx, ev: &Event, scratch: &mut [u8], now: Instant) {
    let Some(sock) = c.sock.as_ref() else {
        return;
    };
    if c.phase == Phase::Connecting {
        match sock.take_error() {
            Ok(Some(e)) | Err(e) => return ctx.fail_io(c, &e),
            Ok(None) => {}
        }
        match sock.peer_addr() {
            Ok(_) => {}
            // A wake-up before the handshake finished; the next event will tell.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => return ctx.fail_io(c, &e),
        }
        ctx.counts.connected += 1;
        c.phase = Phase::Waiting;
        send_request(c, ctx, now);
    } else if ev.is_writable() && c.out_pos < c.out.len() {
        flush(c, ctx);
    }
    if c.phase != Phase::Closed && (ev.is_readable() || ev.is_read_closed() || ev.is_error()) {
        read(c, ctx, scratch, now, ev.is_read_closed() || ev.is_error());
    }
}

/// Renders the next subscribe request (with the connection's cursor) and sends it.
fn send_request(c: &mut Conn, ctx: &mut Ctx, now: Instant) {
    let spec = &ctx.spec;
    let ws_key = match spec.mode {
        Mode::Websocket => http::ws_key(c.ws_nonce),
        _ => String::new(),
    };
    http::subscribe_request(
        &mut c.out,
        &http::Request {
            mode: spec.mode,
            protocol: spec.protocol,
            host: &ctx.hosts[c.target],
            channel: &spec.channel,
            poll_timeout_secs: spec.poll_timeout_secs,
            cursor: &c.cursor,
            ws_key: &ws_key,
        },
    );
    c.out_pos = 0;
    c.deadline = match spec.mode {
        Mode::Longpoll => now + Duration::from_secs(spec.poll_timeout_secs) + RESPONSE_GRACE,
        Mode::Sse | Mode::Websocket | Mode::Ndjson => now + CONNECT_TIMEOUT,
    };
    flush(c, ctx);
}

fn flush(c: &mut Conn, ctx: &mut Ctx) {
    let res = loop {
        let Some(sock) = c.sock.as_mut() else { return };
        if c.out_pos == c.out.len() {
            break Ok(());
        }
        match sock.write(&c.out[c.out_pos..]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => c.out_pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    match res {
        // A long-poll is held once its request is out; a stream once its head is in.
        Ok(()) if ctx.spec.mode == Mode::Longpoll => ctx.hold(c),
        Ok(()) => {}
        Err(e) => ctx.fail_io(c, &e),
    }
}

/// Reads and acts on what arrived. `hup`: the peer's FIN (or an error) came with this
/// event, so read on until the 0 or the error, which no later event will announce.
fn read(c: &mut Conn, ctx: &mut Ctx, scratch: &mut [u8], now: Instant, hup: bool) {
    loop {
        let Some(sock) = c.sock.as_mut() else { return };
        let short = match sock.read(scratch) {
            Ok(0) => {
                // Whatever a well-behaved server sends, it never ends a subscription
                // by closing: any close is unexpected.
                return ctx.fail(c, errors::CLOSED);
            }
            Ok(n) => {
                c.rbuf.extend_from_slice(&scratch[..n]);
                n < scratch.len()
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return ctx.fail_io(c, &e),
        };
        match ctx.spec.mode {
            Mode::Longpoll => longpoll_input(c, ctx, now),
            Mode::Sse | Mode::Websocket | Mode::Ndjson => stream_input(c, ctx),
        }
        // A short read emptied the socket's queue; data or a FIN arriving later is a
        // new edge, so the read that would only say WouldBlock is skipped (one
        // syscall less per delivery).
        if c.phase == Phase::Closed || (short && !hup) {
            return;
        }
    }
}

/// Acts on a complete long-poll answer: a message (200), "nothing new" (holdfast 204,
/// nchan 304 or 408), or anything else (counted by status, connection closed). After a
/// 200 or a timeout the connection polls again from its new cursor.
fn longpoll_input(c: &mut Conn, ctx: &mut Ctx, now: Instant) {
    let head = match http::parse_head(&c.rbuf) {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(()) => return ctx.fail(c, errors::BAD_RESPONSE),
    };
    let timeout = matches!(head.status, 204 | 304 | 408);
    if head.status != 200 && !timeout {
        return ctx.fail(c, &errors::status(head.status));
    }
    let body_len = match (head.status, head.content_length) {
        (200, Some(n)) if !head.chunked && n <= http::MAX_BODY => n,
        (200, _) => return ctx.fail(c, errors::BAD_RESPONSE),
        (_, n) => n.unwrap_or(0),
    };
    let end = head.len + body_len;
    if c.rbuf.len() < end {
        return;
    }
    if c.rbuf.len() > end {
        // This client never pipelines, so bytes past the answer are not HTTP.
        return ctx.fail(c, errors::BAD_RESPONSE);
    }
    if timeout {
        ctx.counts.timeouts += 1;
    } else {
        if head.messages_lost {
            ctx.error(errors::MESSAGES_LOST);
        }
        let body = std::mem::take(&mut c.rbuf);
        ctx.delivery(c, &body[head.len..end]);
    }
    c.rbuf = Vec::new();
    let Cursor {
        id,
        last_modified,
        etag,
    } = head.cursor;
    c.cursor.id = id.or(c.cursor.id.take());
    c.cursor.last_modified = last_modified.or(c.cursor.last_modified.take());
    c.cursor.etag = etag.or(c.cursor.etag.take());
    if head.close {
        // The server will not take the next poll on this connection.
        return ctx.fail(c, errors::CLOSED);
    }
    send_request(c, ctx, now);
}

/// Reads a stream's head (SSE, ndjson: `200`; WebSocket: `101`), then what the stream
/// carries.
fn stream_input(c: &mut Conn, ctx: &mut Ctx) {
    let mode = ctx.spec.mode;
    if c.phase == Phase::Waiting {
        let head = match http::parse_head(&c.rbuf) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(()) => return ctx.fail(c, errors::BAD_RESPONSE),
        };
        if let Err(kind) = check_stream_head(mode, &head, c.ws_nonce) {
            return ctx.fail(c, &kind);
        }
        c.rbuf.drain(..head.len);
        c.chunked = (head.chunked && mode != Mode::Websocket).then(Chunked::default);
        c.phase = Phase::Streaming;
        ctx.hold(c);
    }
    match mode {
        Mode::Websocket => websocket_input(c, ctx),
        _ => text_stream_input(c, ctx),
    }
}

/// Whether a stream's response head opens the stream `mode` asked for; `Err` is the
/// error kind that fails the connection. A server that does not speak the transport
/// shows here: a long-poll answer (`status_200`, `status_204`) to an upgrade or an
/// ndjson request, a `400`, or no head at all (`response_timeout`, when it parks the
/// request as a long-poll).
fn check_stream_head(mode: Mode, head: &http::Head, ws_nonce: [u8; 16]) -> Result<(), String> {
    let want = if mode == Mode::Websocket { 101 } else { 200 };
    if head.status != want {
        return Err(errors::status(head.status));
    }
    match mode {
        Mode::Websocket => {
            let accept = http::ws_accept(&http::ws_key(ws_nonce));
            if head.upgrade_websocket && head.ws_accept.as_deref() == Some(accept.as_str()) {
                Ok(())
            } else {
                Err(errors::BAD_HANDSHAKE.to_owned())
            }
        }
        Mode::Ndjson if !head.ndjson => Err(errors::BAD_RESPONSE.to_owned()),
        Mode::Sse if !head.event_stream => Err(errors::BAD_RESPONSE.to_owned()),
        _ => Ok(()),
    }
}

/// What a text stream yielded, acted on once the buffer is no longer borrowed.
enum Item {
    Sse(SseEvent),
    Line(Vec<u8>),
}

/// An SSE or ndjson body: decodes the chunks if it is chunked, then splits it into
/// SSE events or JSON lines.
fn text_stream_input(c: &mut Conn, ctx: &mut Ctx) {
    let mut ended = false;
    if let Some(dec) = &mut c.chunked {
        match dec.decode(&c.rbuf, &mut c.body) {
            Ok(used) => {
                c.rbuf.drain(..used);
                ended = dec.done();
            }
            Err(()) => return ctx.fail(c, errors::BAD_RESPONSE),
        }
    }
    let src = if c.chunked.is_some() {
        &mut c.body
    } else {
        &mut c.rbuf
    };
    let mut items = Vec::new();
    let used = match ctx.spec.mode {
        Mode::Sse => c.sse.feed(src, |e| items.push(Item::Sse(e))),
        _ => http::ndjson_feed(src, |l| items.push(Item::Line(l.to_vec()))),
    };
    src.drain(..used);
    let too_long = src.len() > http::MAX_HEAD;
    if src.is_empty() && src.capacity() > 4096 {
        *src = Vec::new();
    }
    for item in items {
        match item {
            Item::Sse(SseEvent::Message { id, data }) => {
                check_event_id(c, ctx, id.as_deref());
                ctx.delivery(c, &data);
            }
            Item::Sse(SseEvent::Lost) => ctx.error(errors::MESSAGES_LOST),
            Item::Sse(SseEvent::Deleted) => ctx.error(errors::CHANNEL_DELETED),
            Item::Sse(SseEvent::Binary) => ctx.error(errors::BAD_PAYLOAD),
            Item::Line(line) => envelope(c, ctx, &line),
        }
    }
    if too_long {
        ctx.fail(c, errors::BAD_RESPONSE);
    } else if ended {
        ctx.fail(c, errors::CLOSED);
    }
}

/// A WebSocket after its `101`: server frames. Text frames are messages (holdfast: the
/// JSON envelope; nchan: the raw payload); pings and pongs are read and not answered (a
/// subscriber sends nothing); a close frame ends the subscription, counted by its code.
fn websocket_input(c: &mut Conn, ctx: &mut Ctx) {
    let mut frames = Vec::new();
    let fed = c.ws.feed(&c.rbuf, |f| frames.push(f));
    if let Ok(used) = fed {
        c.rbuf.drain(..used);
        if c.rbuf.is_empty() && c.rbuf.capacity() > 4096 {
            c.rbuf = Vec::new();
        }
    }
    for f in frames {
        match f {
            WsFrame::Text(p) => match ctx.spec.protocol {
                Protocol::Holdfast => envelope(c, ctx, &p),
                Protocol::Nchan => {
                    if ctx.delivery(c, &p) {
                        ctx.counts.message_bytes += p.len() as u64;
                    }
                }
            },
            WsFrame::Binary(_) => ctx.error(errors::BAD_PAYLOAD),
            WsFrame::Ping | WsFrame::Pong => {}
            WsFrame::Close(code) => return ctx.fail(c, &errors::ws_close(code)),
        }
    }
    if fed.is_err() {
        ctx.fail(c, errors::BAD_RESPONSE);
    }
}

/// One JSON-envelope object (a WebSocket text frame or an ndjson line from holdfast):
/// a message is checked like an SSE event (its `id` above the previous one, its
/// channel this run's) and delivered by its `data`; a signal is counted.
fn envelope(c: &mut Conn, ctx: &mut Ctx, bytes: &[u8]) {
    match http::parse_envelope(bytes) {
        None => ctx.error(errors::BAD_ENVELOPE),
        Some(Envelope::Message {
            id,
            channel,
            data,
            base64,
        }) => {
            let Some(channel) = channel else {
                return ctx.error(errors::BAD_ENVELOPE);
            };
            check_event_id(c, ctx, id.as_deref());
            if channel != ctx.spec.channel {
                return ctx.error(errors::UNEXPECTED_MESSAGE);
            }
            if base64 {
                return ctx.error(errors::BAD_PAYLOAD);
            }
            if ctx.delivery(c, data.as_bytes()) {
                ctx.counts.message_bytes += bytes.len() as u64;
            }
        }
        Some(Envelope::Lost) => ctx.error(errors::MESSAGES_LOST),
        Some(Envelope::Deleted) => ctx.error(errors::CHANNEL_DELETED),
        Some(Envelope::Expired) => ctx.error(errors::STREAM_EXPIRED),
        Some(Envelope::Shutdown) => ctx.error(errors::SERVER_SHUTDOWN),
    }
}

/// Checks one message's id (SSE `id:`, or the JSON envelope's `id`) against the
/// previous one on the stream: present, of the protocol's dialect, and above it. A bad id is counted and the delivery still
/// counts by its payload, so loss and order are judged on `n` either way.
fn check_event_id(c: &mut Conn, ctx: &mut Ctx, id: Option<&str>) {
    match id.and_then(|id| http::parse_event_id(ctx.spec.protocol, id)) {
        None => ctx.error(errors::BAD_EVENT_ID),
        Some(eid) if eid <= c.last_event_id => ctx.error(errors::EVENT_ID_ORDER),
        Some(eid) => c.last_event_id = eid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_head_must_open_the_transport_asked_for() {
        let nonce = *b"the sample nonce";
        let head = |status: u16, f: &dyn Fn(&mut http::Head)| {
            let mut h = http::Head {
                status,
                ..http::Head::default()
            };
            f(&mut h);
            h
        };
        let ws_ok = |h: &mut http::Head| {
            h.upgrade_websocket = true;
            h.ws_accept = Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into());
        };
        let cases: Vec<(Mode, http::Head, Result<(), &str>)> = vec![
            (Mode::Websocket, head(101, &ws_ok), Ok(())),
            // A server that answers the upgrade as a long-poll, or refuses it.
            (Mode::Websocket, head(200, &|_| {}), Err("status_200")),
            (Mode::Websocket, head(204, &|_| {}), Err("status_204")),
            (Mode::Websocket, head(426, &|_| {}), Err("status_426")),
            (
                Mode::Websocket,
                head(101, &|h| {
                    ws_ok(h);
                    h.ws_accept = Some("dGhlIHNhbXBsZSBub25jZQ==".into());
                }),
                Err("bad_handshake"),
            ),
            (
                Mode::Websocket,
                head(101, &|h| {
                    ws_ok(h);
                    h.upgrade_websocket = false;
                }),
                Err("bad_handshake"),
            ),
            (Mode::Ndjson, head(200, &|h| h.ndjson = true), Ok(())),
            (Mode::Ndjson, head(200, &|_| {}), Err("bad_response")),
            (Mode::Ndjson, head(204, &|_| {}), Err("status_204")),
            (Mode::Sse, head(200, &|h| h.event_stream = true), Ok(())),
            (
                Mode::Sse,
                head(200, &|h| h.ndjson = true),
                Err("bad_response"),
            ),
        ];
        for (mode, h, want) in cases {
            let got = check_stream_head(mode, &h, nonce);
            assert_eq!(got, want.map_err(str::to_owned), "{mode:?} {h:?}");
        }
    }
}
