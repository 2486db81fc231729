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

use crate::cli::{Mode, WorkerSpec};
use crate::http::{self, Chunked, Cursor, SseEvent, SseParser};

const WAKER: Token = Token(usize::MAX);
/// Time allowed for a handshake, and for an SSE response head.
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
    /// A request is (being) sent and its answer (long-poll) or head (SSE) awaited.
    Waiting,
    /// SSE: head received, events flowing.
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
    /// Set for a chunked SSE body; `body` then holds the decoded bytes.
    chunked: Option<Chunked>,
    body: Vec<u8>,
    /// Highest `n` received; the same `n` again is a duplicate, a lower one is out of
    /// order.
    last_seq: u32,
    /// SSE: the previous event's id as an ordered pair (`http::parse_event_id`); each
    /// message's id must be above it. (0, 0) before the first.
    last_event_id: (u64, u64),
    /// Subscribed and waiting (counted in `Counts::holding`).
    holding: bool,
    /// Held or failed (counted in `Counts::settled`).
    settled: bool,
    /// Held at the snapshot: every publish must reach this connection.
    counted: bool,
}

impl Conn {
    fn new(target: usize, deadline: Instant) -> Conn {
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

    fn delivery(&mut self, c: &mut Conn, payload: &[u8]) {
        let Some((sent_us, n)) = http::parse_payload(payload) else {
            return self.error(errors::BAD_PAYLOAD);
        };
        if n == 0 || n > self.spec.publish {
            return self.error(errors::UNEXPECTED_MESSAGE);
        }
        if n == c.last_seq {
            self.counts.duplicates += 1;
            return;
        }
        if n < c.last_seq {
            return self.error(errors::OUT_OF_ORDER);
        }
        c.last_seq = n;
        if c.counted {
            self.counts.received += 1;
            self.hist
                .saturating_record(unix_micros().saturating_sub(sent_us).max(1));
        }
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
        let mut c = Conn::new(target, now + CONNECT_TIMEOUT);
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
    http::subscribe_request(
        &mut c.out,
        spec.mode,
        spec.protocol,
        &ctx.hosts[c.target],
        &spec.channel,
        spec.poll_timeout_secs,
        &c.cursor,
    );
    c.out_pos = 0;
    c.deadline = match spec.mode {
        Mode::Longpoll => now + Duration::from_secs(spec.poll_timeout_secs) + RESPONSE_GRACE,
        Mode::Sse => now + CONNECT_TIMEOUT,
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
        // A long-poll is held once its request is out; an SSE stream once its head is in.
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
            Mode::Sse => sse_input(c, ctx),
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

/// Reads the SSE head, then splits the stream into events.
fn sse_input(c: &mut Conn, ctx: &mut Ctx) {
    if c.phase == Phase::Waiting {
        let head = match http::parse_head(&c.rbuf) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(()) => return ctx.fail(c, errors::BAD_RESPONSE),
        };
        if head.status != 200 {
            return ctx.fail(c, &errors::status(head.status));
        }
        if !head.event_stream {
            return ctx.fail(c, errors::BAD_RESPONSE);
        }
        c.rbuf.drain(..head.len);
        c.chunked = head.chunked.then(Chunked::default);
        c.phase = Phase::Streaming;
        ctx.hold(c);
    }
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
    let mut events = Vec::new();
    let used = c.sse.feed(src, |e| events.push(e));
    src.drain(..used);
    let too_long = src.len() > http::MAX_HEAD;
    if src.is_empty() && src.capacity() > 4096 {
        *src = Vec::new();
    }
    for e in events {
        match e {
            SseEvent::Message { id, data } => {
                check_event_id(c, ctx, id.as_deref());
                ctx.delivery(c, &data);
            }
            SseEvent::Lost => ctx.error(errors::MESSAGES_LOST),
            SseEvent::Deleted => ctx.error(errors::CHANNEL_DELETED),
            SseEvent::Binary => ctx.error(errors::BAD_PAYLOAD),
        }
    }
    if too_long {
        ctx.fail(c, errors::BAD_RESPONSE);
    } else if ended {
        ctx.fail(c, errors::CLOSED);
    }
}

/// Checks one SSE message's `id:` against the previous one on the stream: present, of
/// the protocol's dialect, and above it. A bad id is counted and the delivery still
/// counts by its payload, so loss and order are judged on `n` either way.
fn check_event_id(c: &mut Conn, ctx: &mut Ctx, id: Option<&str>) {
    match id.and_then(|id| http::parse_event_id(ctx.spec.protocol, id)) {
        None => ctx.error(errors::BAD_EVENT_ID),
        Some(eid) if eid <= c.last_event_id => ctx.error(errors::EVENT_ID_ORDER),
        Some(eid) => c.last_event_id = eid,
    }
}
