//! Scenarios the stream transports share (tests/websocket.rs, tests/ndjson.rs), written
//! once and run over either: the `ObjectStream` trait is what a scenario needs of a
//! subscriber that carries the JSON envelope (open one, read the next object, read
//! what a cut-off one still holds), implemented for `Ws` and `Ndjson`. Also the
//! small-receive-buffer socket and the sized payloads the slow-reader tests use
//! (tests/sse.rs too), and a server with a subscribe key plus an expiring token for
//! the expiry tests.
//!
//! A scenario checks exactly what each test's guard comment names; what differs by
//! transport (the gauge, how a cut-off connection must look) lives in the impls.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::http::{Conn, IO_TIMEOUT};
use super::nginx::TempDir;
use super::protocol::{id_num, publish, stat, wait_stat};
use super::server::Server;
use super::ws::{
    id_and_data, message, publish_pipelined, Ndjson, NoFrame, NoLine, Ws, CLOSE, PING,
};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// A client socket with a small receive buffer, so the server sees backpressure soon.
pub fn connect_small_rcvbuf(to: SocketAddr, bytes: usize) -> TcpStream {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    sock.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    sock.connect_timeout(&SockAddr::from(to), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {to}: {e}"));
    sock.into()
}

/// Message `i` of a slow-reader test: `message 000042 ` then one letter (by `i`) up to
/// `size` bytes, so a payload names its place and a mix-up shows.
pub fn sized_payload(i: usize, size: usize) -> String {
    let mut p = format!("message {i:06} ").into_bytes();
    p.resize(size, b'a' + (i % 26) as u8);
    String::from_utf8(p).expect("ascii")
}

/// A server started with `--subscribe-key` naming a file that holds `secret`, in a
/// scratch directory `tag` (kept while the returned `TempDir` lives).
pub fn server_with_subscribe_key(tag: &str, secret: &str) -> (TempDir, Server) {
    let dir = TempDir::new(tag);
    let key = dir.path.join("subscribe.key");
    fs::write(&key, format!("{secret}\n")).expect("write the key");
    let s = Server::start(&["--subscribe-key", key.to_str().expect("utf-8 path")]);
    (dir, s)
}

/// An HS256 subscribe token for `channel` signed with `secret`, expiring `secs` whole
/// seconds from now; returns the token and its `exp`.
pub fn token_expiring_in(secret: &str, channel: &str, secs: u64) -> (String, u64) {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + secs;
    let token = encode(
        &Header::new(Algorithm::HS256),
        &json!({"channels": [channel], "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()).expect("an HMAC key"),
    )
    .expect("sign");
    (token, exp)
}

/// A subscriber connection carrying JSON envelope objects (WebSocket or ndjson).
pub trait ObjectStream: Sized {
    /// The `/stats` gauge that counts open ones.
    const GAUGE: &'static str;
    /// What the test messages call one ("socket", "stream").
    const NOUN: &'static str;

    /// Opens one on `path` (no other headers) and checks its head.
    fn open(to: SocketAddr, path: &str) -> Self;

    /// Opens one on `path` over an already connected `conn` and checks its head.
    fn open_on(conn: Conn, path: &str) -> Self;

    /// The next message object, skipping heartbeats; `Err` says why none came.
    fn poll_object(&mut self, deadline: Instant) -> Result<Value, String>;

    /// The next object within the default timeout; panics otherwise.
    fn object(&mut self) -> Value;

    /// Asserts nothing but heartbeats arrives, and the connection stays open, for `dur`.
    fn quiet_for(&mut self, dur: Duration);

    /// On a connection the server cut off: the next message object the kernel still
    /// held, or `None` once the connection is closed; panics on whatever a cut-off
    /// connection must not show (a close frame, a terminating chunk, staying open).
    fn cut_off_next(&mut self, deadline: Instant) -> Option<Value>;

    /// Anything worth printing about what was read (ndjson: how many chunks).
    fn note(&self) -> String {
        String::new()
    }
}

impl ObjectStream for Ws {
    const GAUGE: &'static str = "websockets";
    const NOUN: &'static str = "socket";

    fn open(to: SocketAddr, path: &str) -> Ws {
        Ws::connect(to, path, &[])
    }

    fn open_on(conn: Conn, path: &str) -> Ws {
        Ws::upgrade(conn, path, &[])
    }

    fn poll_object(&mut self, deadline: Instant) -> Result<Value, String> {
        self.poll_data(deadline)
            .map(|f| f.object())
            .map_err(|e| format!("{e:?}"))
    }

    fn object(&mut self) -> Value {
        Ws::object(self)
    }

    fn quiet_for(&mut self, dur: Duration) {
        Ws::quiet_for(self, dur)
    }

    // What the kernel held for it: complete message frames, in order, maybe a cut
    // frame at the end, and never a close frame.
    fn cut_off_next(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            match self.poll_frame(deadline) {
                Ok(f) => {
                    assert_ne!(f.opcode, CLOSE, "a cut-off socket got a close frame");
                    if f.opcode == PING {
                        continue;
                    }
                    return Some(f.object());
                }
                Err(NoFrame::Closed { .. }) => return None,
                Err(NoFrame::Timeout) => panic!("the cut-off socket stayed open"),
            }
        }
    }
}

impl ObjectStream for Ndjson {
    const GAUGE: &'static str = "ndjson_streams";
    const NOUN: &'static str = "stream";

    fn open(to: SocketAddr, path: &str) -> Ndjson {
        Ndjson::open(to, path)
    }

    fn open_on(conn: Conn, path: &str) -> Ndjson {
        let n = Ndjson::request_on(conn, path, &[("Accept", "application/x-ndjson")]);
        n.assert_stream_head();
        n
    }

    fn poll_object(&mut self, deadline: Instant) -> Result<Value, String> {
        let l = self
            .poll_object_line(deadline)
            .map_err(|e| format!("{e:?}"))?;
        Ok(serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
    }

    fn object(&mut self) -> Value {
        Ndjson::object(self)
    }

    fn quiet_for(&mut self, dur: Duration) {
        Ndjson::quiet_for(self, dur)
    }

    fn cut_off_next(&mut self, deadline: Instant) -> Option<Value> {
        match self.poll_object_line(deadline) {
            Ok(l) => Some(serde_json::from_str(&l).expect("a JSON line")),
            Err(NoLine::Closed { .. }) => None,
            Err(e) => panic!("the cut-off stream: {e:?} (a cut has no terminating chunk)"),
        }
    }

    fn note(&self) -> String {
        format!(" ({} chunks)", self.chunks)
    }
}

/// Waits until the server counts `n` open `S`.
fn wait_open<S: ObjectStream>(s: &Server, n: u64) {
    wait_stat(s.admin, S::GAUGE, n, 10 * SEC);
}

/// The `--stream-max-backlog` scenario: a connection that never reads while large
/// messages are published is cut off (its gauge goes to 0) without a proper ending;
/// what it did receive is an in-order prefix of what was published, and resuming with
/// `?since=` its last id delivers every later message (all still buffered) exactly
/// once, with no gap signal.
pub fn never_reading_is_cut_off_and_resumes_with_since<S: ObjectStream>() {
    const SIZE: usize = 60_000;
    const MAX_PUBLISHES: usize = 600;
    let noun = S::NOUN;
    let s = Server::start(&[
        "--stream-max-backlog",
        "64KiB",
        "--max-message-size",
        "64KiB",
        "--buffer-messages",
        "1000",
    ]);
    let payload = |i: usize| sized_payload(i, SIZE);
    let mut slow = S::open_on(
        Conn::from_stream(connect_small_rcvbuf(s.public, 4096)),
        "/sub/bp",
    );
    wait_open::<S>(&s, 1);
    let t = Instant::now();
    let mut published: Vec<String> = Vec::new();
    let mut cut = false;
    for i in 0..MAX_PUBLISHES {
        if t.elapsed() > 60 * SEC {
            break;
        }
        published.push(publish(s.admin, "bp", payload(i)));
        if stat(s.admin, S::GAUGE) == 0 {
            cut = true;
            break;
        }
    }
    assert!(
        cut,
        "a {noun} that never reads was not cut off after {} messages of {SIZE} bytes in \
         {:?} with --stream-max-backlog 64KiB",
        published.len(),
        t.elapsed()
    );
    eprintln!(
        "cut off after {} messages in {:?}",
        published.len(),
        t.elapsed()
    );
    let mut got: Vec<String> = Vec::new();
    let deadline = Instant::now() + 30 * SEC;
    while let Some(v) = slow.cut_off_next(deadline) {
        let (id, data) = id_and_data(&v);
        assert_eq!(data, payload(got.len()), "message {} payload", got.len());
        got.push(id);
    }
    assert!(
        got.len() < published.len(),
        "the cut-off {noun} got everything"
    );
    assert_eq!(got[..], published[..got.len()], "an in-order prefix");

    let since = got.last().map_or("0", |s| s.as_str());
    let mut again = S::open(s.public, &format!("/sub/bp?since={since}"));
    for (i, id) in published.iter().enumerate().skip(got.len()) {
        assert_eq!(
            again.object(),
            message(id, "bp", &payload(i)),
            "resumed message {i} (objects are compared whole)"
        );
    }
    again.quiet_for(300 * MS);
}

/// Reads `n` message objects within `within` in all, asserting each is a message of
/// `channel`; returns (id, data) pairs. Panics naming how many arrived.
fn read_messages<S: ObjectStream>(
    st: &mut S,
    n: usize,
    channel: &str,
    within: Duration,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + within;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let v = match st.poll_object(deadline) {
            Ok(v) => v,
            Err(e) => panic!("only {} of {n} messages within {within:?}: {e}", out.len()),
        };
        assert_eq!(v["channel"], channel, "message {}: {v}", out.len());
        out.push(id_and_data(&v));
    }
    out
}

/// The volume-and-resumption scenario: 10,000 messages published back to back
/// (pipelined) arrive each exactly once, in order, ids strictly increasing; then,
/// while 2,000 more are published, the connection is dropped mid-stream and a new one
/// with `?since=` the last id received gets exactly the rest: nothing lost, nothing
/// repeated, no gap signal.
pub fn ten_thousand_once_in_order_then_a_dropped_one_resumes<S: ObjectStream>() {
    const N: usize = 10_000;
    const M: usize = 2_000;
    let s = Server::start(&[
        "--buffer-messages",
        "16384",
        "--stream-max-backlog",
        "16MiB",
    ]);
    let mut st = S::open(s.public, "/sub/bulk");
    wait_open::<S>(&s, 1);
    let admin = s.admin;
    let t = Instant::now();
    let publisher = thread::spawn(move || {
        let payloads = (0..N).map(|i| format!("m{i}").into_bytes()).collect();
        publish_pipelined(admin, "bulk", payloads)
    });
    let got = read_messages(&mut st, N, "bulk", 90 * SEC);
    let ids = publisher.join().expect("publisher");
    eprintln!(
        "{N} messages published and received in {:?}{}",
        t.elapsed(),
        st.note()
    );
    for (i, (id, data)) in got.iter().enumerate() {
        assert_eq!(*data, format!("m{i}"), "message {i}");
        assert_eq!(*id, ids[i], "message {i}'s id");
        if i > 0 {
            assert!(
                id_num(id) > id_num(&got[i - 1].0),
                "ids not increasing at {i}"
            );
        }
    }
    st.quiet_for(200 * MS);

    let publisher = thread::spawn(move || {
        let payloads = (N..N + M).map(|i| format!("m{i}").into_bytes()).collect();
        publish_pipelined(admin, "bulk", payloads)
    });
    let before = read_messages(&mut st, M / 4, "bulk", 60 * SEC);
    drop(st);
    let ids = publisher.join().expect("publisher");
    wait_open::<S>(&s, 0);
    let last = &before.last().expect("some messages").0;
    let mut st = S::open(s.public, &format!("/sub/bulk?since={last}"));
    let after = read_messages(&mut st, M - M / 4, "bulk", 60 * SEC);
    for (i, (id, data)) in before.iter().chain(after.iter()).enumerate() {
        assert_eq!(
            *data,
            format!("m{}", N + i),
            "message {} after the drop",
            N + i
        );
        assert_eq!(*id, ids[i], "message {}'s id", N + i);
    }
    st.quiet_for(300 * MS);
}
