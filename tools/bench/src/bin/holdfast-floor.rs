//! holdfast-floor: the "physical floor" the benchmark harness runs beside holdfast. It
//! speaks just enough of holdfast's subscriber protocol (`docs/protocol.md`) for
//! holdfast-stress to count its deliveries exactly as it counts holdfast's: long-polls
//! with `since=`, SSE, ndjson and WebSocket streams on the public listener; `/stats` and
//! `POST /pub/CHANNEL` on the admin listener. Whatever it costs per held connection and
//! per delivery is what the kernel costs, plus as close to nothing as a program can add.
//!
//! Why it is the floor: one thread, one level-triggered epoll, raw `accept4`/`read`/
//! `send`/`close`. A held connection costs user space one 8-byte [`Conn`] in a table
//! indexed by fd and one 4-byte entry in its kind's held list; no buffer, no allocation,
//! no timer. A publish renders each wire form once and then does exactly one `send` per
//! held socket of those shared bytes, the least any server can do to deliver.
//!
//! What it deliberately does not do: channels (there is one; the name in `/sub/NAME` is
//! ignored, every subscriber gets every publish, the envelope names the publish's
//! channel); timeouts (`timeout=` is ignored: a poll stays parked until a publish or the
//! client leaves); heartbeats; lost-message signals or buffer limits beyond a ring of the
//! last 16 long-poll answers for `since=`; WebSocket pings and close echoes (a client's
//! close frame, or anything it sends on a stream, is dropped or ends the socket); more
//! than one thread. Requests are parsed by hand for the few things it needs. Answers are
//! keep-alive unless the request says `Connection: close` (holdfast-stress publishes
//! that way and reads to the end); `/stats` `connections` counts the asker too.
//!
//! Rare paths use small side tables keyed by fd, so the common path pays nothing for
//! them: a request that did not arrive in one read (heads capped at 8 KiB, publish
//! bodies at 64 KiB), and output that did not fit in a full send buffer (EPOLLOUT is
//! armed until it drains).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{IntoRawFd, RawFd};

use base64::Engine as _;
use clap::Parser;
use sha1::{Digest, Sha1};

const MAX_HEAD: usize = 8 * 1024;
const MAX_BODY: usize = 64 * 1024;
/// Long-poll answers kept for `since=`.
const RING: usize = 16;
/// std listens with a backlog of 128, too small for the harness's 25,000 connects/s
/// ramps; the kernel caps this at `net.core.somaxconn`.
const BACKLOG: i32 = 65535;
/// RFC 6455 §1.3: appended to the client's key before hashing.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
const TOO_LARGE: &[u8] =
    b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
    Cache-Control: no-store\r\nConnection: close\r\n\r\n";
const NDJSON_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
    Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
const WS_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Accept: ";

#[derive(Parser, Debug)]
#[command(
    name = "holdfast-floor",
    version,
    about = "Bare-epoll reference server: the least work per held connection and per delivery"
)]
struct Args {
    /// Subscriber listener (long-poll, SSE, ndjson, WebSocket).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Admin listener (`GET /stats`, `POST /pub/CHANNEL`).
    #[arg(long, default_value = "127.0.0.1:0")]
    admin_listen: SocketAddr,
}

/// What a connection is. The held kinds come first: their number is their held list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Parked = 0,
    Sse = 1,
    Ndjson = 2,
    Ws = 3,
    /// Public connection waiting for (or between) requests.
    Public,
    Admin,
    #[default]
    Free,
}

impl Kind {
    fn held(self) -> Option<usize> {
        (self as u8 <= Kind::Ws as u8).then_some(self as usize)
    }
}

/// One per fd number. `idx` is the position in `Floor::held[kind]` for a held kind, so
/// removing a closed socket is one `swap_remove`.
#[derive(Clone, Copy, Debug, Default)]
struct Conn {
    kind: Kind,
    /// The request said `Connection: close`: close once the answer is written.
    close_after: bool,
    /// Output is waiting in `Floor::unsent` (EPOLLOUT armed).
    unsent: bool,
    idx: u32,
}
const _: () = assert!(std::mem::size_of::<Conn>() == 8);

struct Floor {
    epfd: RawFd,
    listeners: [RawFd; 2],
    accept_paused: bool,
    conns: Vec<Conn>,
    held: [Vec<RawFd>; 4],
    unsent: HashMap<RawFd, Vec<u8>>,
    partial: HashMap<RawFd, Vec<u8>>,
    /// (id, long-poll answer), oldest first; the newest is what parked polls get.
    ring: VecDeque<(u64, Vec<u8>)>,
    /// The current publish as SSE, ndjson and WebSocket bytes; reused, never freed.
    frames: [Vec<u8>; 3],
    last_id: u64,
    connections: u64,
    published: u64,
    delivered: u64,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = sys::raise_nofile() {
        eprintln!("holdfast-floor: could not raise RLIMIT_NOFILE: {e}");
    }
    if let Err(e) = start(&args) {
        eprintln!("holdfast-floor: {e}");
        std::process::exit(1);
    }
}

fn start(args: &Args) -> io::Result<()> {
    let (public, public_addr) = listener(args.listen)?;
    let (admin, admin_addr) = listener(args.admin_listen)?;
    let epfd = sys::epoll_create()?;
    for fd in [public, admin] {
        sys::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32)?;
    }
    let mut out = io::stdout().lock();
    writeln!(out, "listening public={public_addr}")?;
    writeln!(out, "listening admin={admin_addr}")?;
    out.flush()?;
    drop(out);
    Floor {
        epfd,
        listeners: [public, admin],
        accept_paused: false,
        conns: Vec::new(),
        held: Default::default(),
        unsent: HashMap::new(),
        partial: HashMap::new(),
        ring: VecDeque::with_capacity(RING),
        frames: Default::default(),
        last_id: 0,
        connections: 0,
        published: 0,
        delivered: 0,
    }
    .run()
}

/// Binds with std (which sets SO_REUSEADDR and listens with a backlog of 128), then
/// calls `listen` again: on Linux that only updates the backlog of a listening socket.
fn listener(addr: SocketAddr) -> io::Result<(RawFd, SocketAddr)> {
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    let local = l.local_addr()?;
    let fd = l.into_raw_fd();
    sys::listen(fd, BACKLOG)?;
    Ok((fd, local))
}

impl Floor {
    fn run(&mut self) -> io::Result<()> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        // The one read buffer: every read of every socket lands here.
        let mut buf = vec![0u8; MAX_HEAD + MAX_BODY];
        loop {
            let n = match sys::epoll_wait(self.epfd, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for ev in &events[..n] {
                let (fd, bits) = (ev.u64 as RawFd, ev.events);
                if self.listeners.contains(&fd) {
                    self.accept(fd);
                    continue;
                }
                // An event may be stale (its fd closed earlier in this batch, perhaps
                // reused by an accept since): only a read or write result closes a
                // socket, never the event's bits, so a stale one costs one EAGAIN.
                if bits & libc::EPOLLOUT as u32 != 0 {
                    self.flush(fd);
                }
                if bits & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    self.readable(fd, &mut buf);
                }
            }
        }
    }

    fn accept(&mut self, lfd: RawFd) {
        let kind = if lfd == self.listeners[0] {
            Kind::Public
        } else {
            Kind::Admin
        };
        loop {
            let fd = match sys::accept(lfd) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Level-triggered: the pending connection would wake us forever.
                    // Stop listening until a close frees a descriptor.
                    self.pause_accept(true);
                    return;
                }
                Err(_) => return,
            };
            if sys::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32).is_err() {
                sys::close(fd);
                continue;
            }
            let i = fd as usize;
            if self.conns.len() <= i {
                self.conns.resize(i + 1, Conn::default());
            }
            self.conns[i] = Conn {
                kind,
                ..Conn::default()
            };
            self.connections += 1;
        }
    }

    fn pause_accept(&mut self, pause: bool) {
        let op = if pause {
            libc::EPOLL_CTL_DEL
        } else {
            libc::EPOLL_CTL_ADD
        };
        for fd in self.listeners {
            let _ = sys::epoll_ctl(self.epfd, op, fd, libc::EPOLLIN as u32);
        }
        self.accept_paused = pause;
    }

    fn close(&mut self, fd: RawFd) {
        let c = std::mem::take(&mut self.conns[fd as usize]);
        if c.kind == Kind::Free {
            return;
        }
        if let Some(k) = c.kind.held() {
            let list = &mut self.held[k];
            let i = c.idx as usize;
            debug_assert_eq!(list.get(i), Some(&fd), "held list {k} index {i}");
            list.swap_remove(i);
            if let Some(&moved) = list.get(i) {
                self.conns[moved as usize].idx = i as u32;
            }
        }
        if c.unsent {
            self.unsent.remove(&fd);
        }
        self.partial.remove(&fd);
        self.connections -= 1;
        // Closing the last descriptor of the socket also takes it out of the epoll set.
        sys::close(fd);
        if self.accept_paused {
            self.pause_accept(false);
        }
    }

    fn hold(&mut self, fd: RawFd, kind: Kind) {
        let Some(k) = kind.held() else { return };
        let c = &mut self.conns[fd as usize];
        c.kind = kind;
        c.idx = self.held[k].len() as u32;
        self.held[k].push(fd);
    }

    fn readable(&mut self, fd: RawFd, buf: &mut [u8]) {
        let kind = self.conns.get(fd as usize).map_or(Kind::Free, |c| c.kind);
        if kind == Kind::Free {
            return;
        }
        let n = match sys::read(fd, buf) {
            Ok(0) => return self.close(fd),
            Ok(n) => n,
            Err(e) if transient(&e) => return,
            Err(_) => return self.close(fd),
        };
        match kind {
            Kind::Public | Kind::Admin => self.input(fd, &buf[..n]),
            // A client's close frame (opcode 8), if it starts this read: end the socket.
            // Anything else a subscriber sends on a held connection is dropped.
            Kind::Ws if buf[0] & 0x0f == 0x8 => self.close(fd),
            _ => {}
        }
    }

    /// Request bytes: joined to an earlier partial request if there is one.
    fn input(&mut self, fd: RawFd, new: &[u8]) {
        match self.partial.remove(&fd) {
            Some(mut p) => {
                p.extend_from_slice(new);
                self.requests(fd, &p);
            }
            None => self.requests(fd, new),
        }
    }

    /// Handles the complete requests at the start of `data` while the connection still
    /// takes requests; keeps an incomplete one in `partial`. Bytes after a request that
    /// parks or opens a stream are dropped.
    fn requests(&mut self, fd: RawFd, mut data: &[u8]) {
        while !data.is_empty() {
            let kind = self.conns[fd as usize].kind;
            if !matches!(kind, Kind::Public | Kind::Admin) {
                return;
            }
            let req = match parse(data) {
                Parse::Partial => {
                    self.partial.insert(fd, data.to_vec());
                    return;
                }
                Parse::Bad => return self.close(fd),
                Parse::Done(r) => r,
            };
            if req.body_len > MAX_BODY {
                self.conns[fd as usize].close_after = true;
                self.send(fd, TOO_LARGE);
                return;
            }
            let end = req.head_len + req.body_len;
            if data.len() < end {
                self.partial.insert(fd, data.to_vec());
                return;
            }
            self.conns[fd as usize].close_after = req.close;
            if kind == Kind::Public {
                self.subscribe(fd, &req);
            } else {
                self.admin(fd, &req, &data[req.head_len..end]);
            }
            data = &data[end..];
        }
    }

    fn subscribe(&mut self, fd: RawFd, req: &Req<'_>) {
        let channel = req.path.strip_prefix(b"/sub/").unwrap_or_default();
        if req.method != b"GET" || channel.is_empty() {
            self.send(fd, NOT_FOUND);
            return;
        }
        let (ndjson, since) = query(req.query);
        // Held before the head is sent, so a failed send's close finds it in its list.
        if req.websocket && !req.ws_key.is_empty() {
            let mut head = [0u8; WS_101.len() + 28 + 4];
            head[..WS_101.len()].copy_from_slice(WS_101);
            head[WS_101.len()..][..28].copy_from_slice(&ws_accept(req.ws_key));
            head[WS_101.len() + 28..].copy_from_slice(b"\r\n\r\n");
            self.stream(fd, Kind::Ws, &head);
        } else if req.event_stream {
            self.stream(fd, Kind::Sse, SSE_HEAD);
        } else if ndjson {
            self.stream(fd, Kind::Ndjson, NDJSON_HEAD);
        } else {
            let found = since.and_then(|s| self.ring.iter().position(|(id, _)| *id > s));
            match found {
                Some(i) => {
                    let answer = std::mem::take(&mut self.ring[i].1);
                    self.send(fd, &answer);
                    self.ring[i].1 = answer;
                }
                None => self.hold(fd, Kind::Parked),
            }
        }
    }

    fn stream(&mut self, fd: RawFd, kind: Kind, head: &[u8]) {
        self.conns[fd as usize].close_after = false;
        self.hold(fd, kind);
        self.send(fd, head);
    }

    fn admin(&mut self, fd: RawFd, req: &Req<'_>, body: &[u8]) {
        let channel = req.path.strip_prefix(b"/pub/").unwrap_or_default();
        // Admin answers allocate a String each: a few per run, never per subscriber.
        if req.method == b"GET" && req.path == b"/stats" {
            let [p, s, j, w] = self.held.each_ref().map(Vec::len);
            let json = format!(
                "{{\"connections\":{},\"parked\":{p},\"sse_streams\":{s},\"ndjson_streams\":{j},\
                 \"websockets\":{w},\"published\":{},\"delivered\":{}}}",
                self.connections, self.published, self.delivered
            );
            self.json(fd, "200 OK", &json);
        } else if req.method == b"POST" && !channel.is_empty() {
            // Answered before the fan-out, as a server acknowledges a publish and then
            // delivers it: the publisher does not wait for N writes (under a million
            // connections on two cores that is seconds, past a publisher's timeout).
            let held: usize = self.held.iter().map(Vec::len).sum();
            let id = self.last_id + 1;
            self.json(
                fd,
                "201 Created",
                &format!("{{\"id\":\"{id}\",\"subscribers\":{held}}}"),
            );
            self.publish(channel, body);
        } else {
            self.send(fd, NOT_FOUND);
        }
    }

    fn json(&mut self, fd: RawFd, status: &str, body: &str) {
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(fd, answer.as_bytes());
    }

    /// The point of the program: render once, then one `send` per held socket. Returns
    /// the message id and the number of sockets written.
    fn publish(&mut self, channel: &[u8], body: &[u8]) -> (u64, u64) {
        self.last_id += 1;
        let id = self.last_id;
        // The oldest answer's allocation is reused once the ring is full.
        let mut answer = match self.ring.len() {
            RING => self.ring.pop_front().map(|(_, a)| a).unwrap_or_default(),
            _ => Vec::new(),
        };
        render_answer(&mut answer, id, body);
        let mut frames = std::mem::take(&mut self.frames);
        let [sse, ndjson, ws] = &mut frames;
        render_sse(sse, id, body);
        render_envelope(ws, id, channel, body);
        render_ndjson(ndjson, ws);
        frame_ws(ws);

        let mut written = 0;
        // Every parked poll is answered and leaves the list; its connection then waits
        // for its next request. A failed send closes a `Public` connection, which is in
        // no list, so the taken list is not disturbed.
        let mut parked = std::mem::take(&mut self.held[Kind::Parked as usize]);
        for &fd in &parked {
            self.conns[fd as usize].kind = Kind::Public;
            written += u64::from(self.send(fd, &answer));
        }
        parked.clear();
        self.held[Kind::Parked as usize] = parked;
        // Backwards: a failed send's swap_remove moves an already visited socket into
        // the current slot.
        for (kind, frame) in [
            (Kind::Sse, &*sse),
            (Kind::Ndjson, &*ndjson),
            (Kind::Ws, &*ws),
        ] {
            let mut i = self.held[kind as usize].len();
            while i > 0 {
                i -= 1;
                let fd = self.held[kind as usize][i];
                written += u64::from(self.send(fd, frame));
            }
        }
        self.frames = frames;
        self.ring.push_back((id, answer));
        self.published += 1;
        self.delivered += written;
        (id, written)
    }

    /// Sends `bytes`, or queues them behind output already waiting. False: the socket
    /// failed and was closed.
    fn send(&mut self, fd: RawFd, bytes: &[u8]) -> bool {
        let c = self.conns[fd as usize];
        if c.unsent {
            self.unsent.entry(fd).or_default().extend_from_slice(bytes);
            return true;
        }
        let n = loop {
            match sys::send(fd, bytes) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                Err(_) => {
                    self.close(fd);
                    return false;
                }
            }
        };
        if n < bytes.len() {
            self.unsent.insert(fd, bytes[n..].to_vec());
            self.conns[fd as usize].unsent = true;
            let both = (libc::EPOLLIN | libc::EPOLLOUT) as u32;
            if sys::epoll_ctl(self.epfd, libc::EPOLL_CTL_MOD, fd, both).is_err() {
                self.close(fd);
                return false;
            }
        } else if c.close_after {
            self.close(fd);
        }
        true
    }

    /// EPOLLOUT: writes what is waiting; disarms EPOLLOUT once it is all out.
    fn flush(&mut self, fd: RawFd) {
        let Some(mut q) = self.unsent.remove(&fd) else {
            return;
        };
        match sys::send(fd, &q) {
            Ok(n) => drop(q.drain(..n)),
            Err(e) if transient(&e) => {}
            Err(_) => return self.close(fd),
        }
        if !q.is_empty() {
            self.unsent.insert(fd, q);
            return;
        }
        let c = &mut self.conns[fd as usize];
        c.unsent = false;
        if c.close_after
            || sys::epoll_ctl(self.epfd, libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32).is_err()
        {
            self.close(fd);
        }
    }
}

/// EAGAIN or EINTR: try again at the next event.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// The few things of a request head the floor acts on.
#[derive(Debug, Default, PartialEq, Eq)]
struct Req<'a> {
    method: &'a [u8],
    path: &'a [u8],
    query: &'a [u8],
    head_len: usize,
    body_len: usize,
    websocket: bool,
    ws_key: &'a [u8],
    event_stream: bool,
    close: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Parse<'a> {
    Partial,
    Bad,
    Done(Req<'a>),
}

fn parse(buf: &[u8]) -> Parse<'_> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Parse::Bad
        } else {
            Parse::Partial
        };
    };
    if end + 4 > MAX_HEAD {
        return Parse::Bad;
    }
    let mut lines = buf[..end].split(|&b| b == b'\n').map(trim);
    let mut words = lines.next().unwrap_or_default().split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Parse::Bad;
    };
    if method.is_empty() || !version.starts_with(b"HTTP/1.") {
        return Parse::Bad;
    }
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &b""[..]),
    };
    let mut req = Req {
        method,
        path,
        query,
        head_len: end + 4,
        ..Req::default()
    };
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Parse::Bad;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("content-length") {
            match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                Some(n) => req.body_len = n,
                None => return Parse::Bad,
            }
        } else if is("upgrade") {
            req.websocket = value.eq_ignore_ascii_case(b"websocket");
        } else if is("sec-websocket-key") {
            req.ws_key = value;
        } else if is("accept") {
            req.event_stream = contains_ignore_case(value, b"text/event-stream");
        } else if is("connection") {
            req.close = value.eq_ignore_ascii_case(b"close");
        }
    }
    Parse::Done(req)
}

fn trim(s: &[u8]) -> &[u8] {
    let s = s.strip_suffix(b"\r").unwrap_or(s);
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// (`stream=ndjson`, the last `since=` that parses). A poll without `since` waits for
/// the next message, as on holdfast.
fn query(q: &[u8]) -> (bool, Option<u64>) {
    let (mut ndjson, mut since) = (false, None);
    for pair in q.split(|&b| b == b'&') {
        if pair == b"stream=ndjson" {
            ndjson = true;
        } else if let Some(v) = pair.strip_prefix(b"since=") {
            if let Some(n) = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()) {
                since = Some(n);
            }
        }
    }
    (ndjson, since)
}

fn ws_accept(key: &[u8]) -> [u8; 28] {
    let digest = Sha1::new()
        .chain_update(key)
        .chain_update(WS_GUID)
        .finalize();
    let mut out = [0u8; 28];
    // 20 bytes always encode to exactly 28 base64 characters.
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(digest, &mut out);
    out
}

fn render_answer(out: &mut Vec<u8>, id: u64, body: &[u8]) {
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nMessage-Id: {id}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body);
}

/// One SSE event; a body with line breaks becomes several `data:` lines.
fn render_sse(out: &mut Vec<u8>, id: u64, body: &[u8]) {
    out.clear();
    let _ = writeln!(out, "id: {id}");
    for line in body.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// holdfast's JSON envelope (src/stream/json.rs). A body that is not UTF-8 is sent
/// lossily rather than base64: the harness only publishes text.
fn render_envelope(out: &mut Vec<u8>, id: u64, channel: &[u8], body: &[u8]) {
    out.clear();
    let _ = write!(out, "{{\"id\":\"{id}\",\"channel\":");
    json_str(out, channel);
    out.extend_from_slice(b",\"data\":");
    json_str(out, body);
    out.push(b'}');
}

fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in String::from_utf8_lossy(s).as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => drop(write!(out, "\\u{b:04x}")),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// The envelope plus its newline, as one chunk.
fn render_ndjson(out: &mut Vec<u8>, envelope: &[u8]) {
    out.clear();
    let _ = write!(out, "{:x}\r\n", envelope.len() + 1);
    out.extend_from_slice(envelope);
    out.extend_from_slice(b"\n\r\n");
}

/// Wraps `payload` in place into one unmasked FIN text frame (7-, 16- or 64-bit length).
fn frame_ws(payload: &mut Vec<u8>) {
    let len = payload.len();
    let mut head = [0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let n = match len {
        0..=125 => {
            head[1] = len as u8;
            2
        }
        126..=0xffff => {
            head[1] = 126;
            head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            head[1] = 127;
            head[2..].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    payload.splice(0..0, head[..n].iter().copied());
}

/// Every libc call, each returning `io::Result`.
mod sys {
    use std::io;
    use std::os::fd::RawFd;

    fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    fn cvt_len(r: libc::ssize_t) -> io::Result<usize> {
        usize::try_from(r).map_err(|_| io::Error::last_os_error())
    }

    pub fn raise_nofile() -> io::Result<()> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid, writable rlimit for the call.
        cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is an initialised rlimit; the kernel only reads it.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }).map(drop)
    }

    pub fn listen(fd: RawFd, backlog: i32) -> io::Result<()> {
        // SAFETY: plain syscall on a descriptor this program owns; no memory passed.
        cvt(unsafe { libc::listen(fd, backlog) }).map(drop)
    }

    pub fn epoll_create() -> io::Result<RawFd> {
        // SAFETY: plain syscall; no memory passed.
        cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
    }

    pub fn epoll_ctl(epfd: RawFd, op: libc::c_int, fd: RawFd, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events,
            u64: fd as u64,
        };
        // SAFETY: `ev` is a valid epoll_event for the call (ignored for DEL); the kernel
        // copies it.
        cvt(unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) }).map(drop)
    }

    pub fn epoll_wait(epfd: RawFd, events: &mut [libc::epoll_event]) -> io::Result<usize> {
        let max = events.len().min(libc::c_int::MAX as usize) as libc::c_int;
        // SAFETY: the kernel writes at most `max` entries, all inside `events`.
        let n = cvt(unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), max, -1) })?;
        Ok(n as usize)
    }

    pub fn accept(lfd: RawFd) -> io::Result<RawFd> {
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: null address and length pointers are allowed: the peer address is not
        // wanted.
        cvt(unsafe { libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), flags) })
    }

    pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        cvt_len(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
    }

    /// `send` with MSG_NOSIGNAL: a peer gone away is EPIPE here, not SIGPIPE.
    pub fn send(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
        // SAFETY: `bytes` is valid for reads of `bytes.len()` bytes.
        cvt_len(unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) })
    }

    pub fn close(fd: RawFd) {
        // SAFETY: `fd` is a socket this program accepted and no longer refers to.
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_every_prefix_is_partial() {
        let raw: &[u8] = b"GET /sub/news?timeout=30&since=7 HTTP/1.1\r\nHost: x\r\n\
            ACCEPT:  Text/Event-Stream \r\nupgrade: WebSocket\r\nSec-WebSocket-Key: k==\r\n\
            Connection: close\r\nContent-Length: 3\r\n\r\nabc";
        let Parse::Done(r) = parse(raw) else {
            panic!("{:?}", parse(raw))
        };
        assert_eq!(
            r,
            Req {
                method: b"GET",
                path: b"/sub/news",
                query: b"timeout=30&since=7",
                head_len: raw.len() - 3,
                body_len: 3,
                websocket: true,
                ws_key: b"k==",
                event_stream: true,
                close: true,
            }
        );
        for n in 0..raw.len() - 3 {
            assert_eq!(parse(&raw[..n]), Parse::Partial, "prefix {n}");
        }
    }

    #[test]
    fn bad_heads() {
        let long = [
            &b"GET / HTTP/1.1\r\nX: "[..],
            &[b'a'; MAX_HEAD],
            b"\r\n\r\n",
        ]
        .concat();
        let cases: &[&[u8]] = &[
            b"GET /\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"POST /pub/x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            &long,
            &[b'a'; MAX_HEAD + 1],
        ];
        for c in cases {
            assert_eq!(parse(c), Parse::Bad, "{:?}", String::from_utf8_lossy(c));
        }
    }

    #[test]
    fn queries() {
        type Case = (&'static [u8], (bool, Option<u64>));
        let cases: &[Case] = &[
            (b"", (false, None)),
            (b"timeout=30", (false, None)),
            (b"since=5&timeout=1&since=9", (false, Some(9))),
            (b"since=x", (false, None)),
            (b"stream=ndjson&since=0", (true, Some(0))),
        ];
        for (q, want) in cases {
            assert_eq!(query(q), *want, "{:?}", String::from_utf8_lossy(q));
        }
    }

    #[test]
    fn websocket_accept_is_rfc_6455s_example() {
        assert_eq!(
            &ws_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn wire_forms() {
        let mut out = Vec::new();
        render_answer(&mut out, 7, b"hi");
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nMessage-Id: 7\r\nContent-Type: application/octet-stream\r\n\
              Content-Length: 2\r\n\r\nhi"
        );
        render_sse(&mut out, 3, b"a\nb");
        assert_eq!(out, b"id: 3\ndata: a\ndata: b\n\n");
        render_envelope(&mut out, 9, b"n\"s", b"q\"\\\n\x01");
        assert_eq!(
            out,
            br#"{"id":"9","channel":"n\"s","data":"q\"\\\n\u0001"}"#
        );
        let mut chunk = Vec::new();
        render_ndjson(&mut chunk, b"{}");
        assert_eq!(chunk, b"3\r\n{}\n\r\n");
    }

    #[test]
    fn websocket_length_forms() {
        for (len, head) in [
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65535, vec![0x81, 126, 0xff, 0xff]),
            (65536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut p = vec![b'x'; len];
            frame_ws(&mut p);
            assert_eq!(&p[..head.len()], &head[..], "length {len}");
            assert_eq!(p.len(), head.len() + len);
        }
    }
}
