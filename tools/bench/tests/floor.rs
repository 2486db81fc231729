//! holdfast-floor end to end: the binary on 127.0.0.1:0, raw bytes over std
//! `TcpStream`s, every answer compared byte for byte where the wire form is fixed.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use holdfast_stress::startup;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast-floor");
const TIMEOUT: Duration = Duration::from_secs(5);

struct Floor {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
}

impl Floor {
    fn start() -> Floor {
        let mut child = Command::new(BIN)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn holdfast-floor");
        let stdout = child.stdout.take().expect("piped stdout");
        let l = match startup::read_listening(stdout, TIMEOUT) {
            Ok(l) => l,
            Err(e) => {
                let _ = child.kill();
                panic!("{e}");
            }
        };
        Floor {
            child,
            public: l.public,
            admin: l.admin,
        }
    }

    fn stats(&self) -> serde_json::Value {
        let mut s = connect(self.admin);
        s.write_all(b"GET /stats HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let (status, _, body) = response(&mut s);
        assert_eq!(status, 200);
        serde_json::from_slice(&body).unwrap()
    }

    fn gauge(&self, key: &str) -> u64 {
        self.stats()[key].as_u64().unwrap()
    }

    /// Waits (the floor serves sockets in readiness order) until `key` reads `want`.
    fn wait(&self, key: &str, want: u64) {
        let until = Instant::now() + TIMEOUT;
        loop {
            let have = self.gauge(key);
            if have == want {
                return;
            }
            assert!(Instant::now() < until, "{key} is {have}, want {want}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Publishes and returns the answer's JSON.
    fn publish(&self, channel: &str, body: &str) -> serde_json::Value {
        let mut s = connect(self.admin);
        let req = format!(
            "POST /pub/{channel} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let (status, _, answer) = response(&mut s);
        assert_eq!(status, 201);
        serde_json::from_slice(&answer).unwrap()
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Reads one response with a `Content-Length`: (status, head, body).
fn response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut raw = Vec::new();
    let mut b = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).expect("response head");
        raw.push(b[0]);
    }
    let head = String::from_utf8(raw).unwrap();
    let status = head[9..12].parse().unwrap();
    let len = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    (status, head, body)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    s.read_exact(&mut b).unwrap();
    b
}

fn expect_bytes(s: &mut TcpStream, want: &[u8]) {
    let got = read_n(s, want.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(want),
        "bytes on the wire"
    );
}

fn nothing_arrives(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_millis(150)))
        .unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected silence, got {other:?} {:?}", &b[..8]),
    }
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
}

fn answer(id: u64, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nMessage-Id: {id}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn subscribe(f: &Floor, req: &str) -> TcpStream {
    let mut s = connect(f.public);
    s.write_all(req.as_bytes()).unwrap();
    s
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
    Cache-Control: no-store\r\nConnection: close\r\n\r\n";
const NDJSON_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
    Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
const SSE_REQ: &str = "GET /sub/x HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n";
const NDJSON_REQ: &str = "GET /sub/x?stream=ndjson HTTP/1.1\r\n\r\n";
const WS_REQ: &str = "GET /sub/news HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn a_parked_poll_is_answered_by_the_next_publish_and_the_ring_serves_since() {
    let f = Floor::start();
    let mut s = subscribe(&f, "GET /sub/news?timeout=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    f.wait("parked", 1);
    nothing_arrives(&mut s);

    let p = f.publish("news", "hello");
    assert_eq!(p, serde_json::json!({"id": "1", "subscribers": 1}));
    expect_bytes(&mut s, &answer(1, "hello"));
    let st = f.stats();
    assert_eq!(
        (st["parked"].as_u64(), st["published"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(st["delivered"], 1);

    // Keep-alive: the next poll on the same connection parks until message 2.
    s.write_all(b"GET /sub/news?since=1&timeout=1 HTTP/1.1\r\n\r\n")
        .unwrap();
    f.wait("parked", 1);
    nothing_arrives(&mut s);
    assert_eq!(f.publish("news", "world")["id"], "2");
    let (status, head, body) = response(&mut s);
    assert_eq!((status, header(&head, "message-id")), (200, Some("2")));
    assert_eq!(body, b"world");

    // A poll from behind is answered at once from the ring, oldest first.
    let mut late = subscribe(&f, "GET /sub/news?since=0 HTTP/1.1\r\n\r\n");
    expect_bytes(&mut late, &answer(1, "hello"));
    late.write_all(b"GET /sub/news?since=1 HTTP/1.1\r\n\r\n")
        .unwrap();
    expect_bytes(&mut late, &answer(2, "world"));
    late.write_all(b"GET /sub/news?since=2 HTTP/1.1\r\n\r\n")
        .unwrap();
    f.wait("parked", 1);
    nothing_arrives(&mut late);
}

#[test]
fn sse_streams_get_one_event_per_publish() {
    let f = Floor::start();
    let mut s = subscribe(&f, SSE_REQ);
    expect_bytes(&mut s, SSE_HEAD);
    f.wait("sse_streams", 1);
    f.publish("x", "a");
    f.publish("x", "b\nc");
    expect_bytes(&mut s, b"id: 1\ndata: a\n\nid: 2\ndata: b\ndata: c\n\n");
}

#[test]
fn ndjson_streams_get_one_chunk_per_publish() {
    let f = Floor::start();
    let mut s = subscribe(&f, NDJSON_REQ);
    expect_bytes(&mut s, NDJSON_HEAD);
    f.wait("ndjson_streams", 1);
    for (id, body) in [("1", "plain"), ("2", "quote \" and \\ back")] {
        f.publish("news", body);
        let mut size = Vec::new();
        while !size.ends_with(b"\r\n") {
            size.extend(read_n(&mut s, 1));
        }
        let size = usize::from_str_radix(std::str::from_utf8(&size).unwrap().trim(), 16).unwrap();
        let chunk = read_n(&mut s, size + 2);
        assert!(chunk.ends_with(b"\n\r\n"), "{chunk:?}");
        let v: serde_json::Value = serde_json::from_slice(&chunk[..size - 1]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": id, "channel": "news", "data": body})
        );
    }
}

#[test]
fn websockets_handshake_per_rfc_6455_and_get_text_frames() {
    let f = Floor::start();
    let mut s = subscribe(&f, WS_REQ);
    expect_bytes(
        &mut s,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    );
    f.wait("websockets", 1);
    let body = "y".repeat(200); // the 16-bit length form
    f.publish("news", &body);
    let head = read_n(&mut s, 4);
    assert_eq!(head[..2], [0x81, 126]);
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let v: serde_json::Value = serde_json::from_slice(&read_n(&mut s, len)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"id": "1", "channel": "news", "data": body})
    );

    // A client's (masked, empty) close frame ends the socket.
    s.write_all(&[0x88, 0x80, 1, 2, 3, 4]).unwrap();
    assert_eq!(s.read(&mut [0u8; 16]).unwrap(), 0);
    f.wait("websockets", 0);
}

#[test]
fn closed_subscribers_leave_the_gauges_and_the_fan_out() {
    let f = Floor::start();
    let poll = subscribe(&f, "GET /sub/a HTTP/1.1\r\n\r\n");
    let mut sse: Vec<TcpStream> = (0..3).map(|_| subscribe(&f, SSE_REQ)).collect();
    let nd = subscribe(&f, NDJSON_REQ);
    let ws = subscribe(&f, WS_REQ);
    for key in ["parked", "ndjson_streams", "websockets"] {
        f.wait(key, 1);
    }
    f.wait("sse_streams", 3);
    // Six subscribers and the asker (an earlier asker's close may still be in flight).
    f.wait("connections", 7);

    // The middle SSE stream goes: the last one moves into its slot and still counts.
    drop(sse.remove(1));
    drop((poll, nd, ws));
    for key in ["parked", "ndjson_streams", "websockets"] {
        f.wait(key, 0);
    }
    f.wait("sse_streams", 2);
    f.wait("connections", 3);
    assert_eq!(f.publish("x", "m")["subscribers"], 2);
    for s in &mut sse {
        expect_bytes(s, SSE_HEAD);
        expect_bytes(s, b"id: 1\ndata: m\n\n");
    }
    assert_eq!(f.gauge("delivered"), 2);

    // Now the one that moved goes: its removal must use its new slot.
    drop(sse.pop());
    f.wait("sse_streams", 1);
    assert_eq!(f.publish("x", "n")["subscribers"], 1);
    expect_bytes(&mut sse[0], b"id: 2\ndata: n\n\n");
    f.wait("connections", 2);
}

#[test]
fn unknown_routes_are_404_and_keep_the_connection() {
    let f = Floor::start();
    for (addr, reqs) in [
        (f.public, ["GET /nope", "GET /sub/", "POST /sub/x"]),
        (f.admin, ["GET /pub/x", "POST /pub/", "GET /stats/x"]),
    ] {
        let mut s = connect(addr);
        for r in reqs {
            s.write_all(format!("{r} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
                .unwrap();
            let (status, head, _) = response(&mut s);
            assert_eq!(status, 404, "{r}: {head}");
        }
    }
}

#[test]
fn a_publish_split_across_reads_and_one_asking_to_close() {
    let f = Floor::start();
    let mut s = connect(f.admin);
    s.write_all(b"POST /pub/x HTTP/1.1\r\nConn").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(b"ection: close\r\nContent-Length: 5\r\n\r\nab")
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(b"cde").unwrap();
    // holdfast-stress publishes with `Connection: close` and reads to the end.
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 201 Created\r\n"), "{raw}");
    assert!(raw.ends_with("{\"id\":\"1\",\"subscribers\":0}"), "{raw}");

    let mut late = subscribe(&f, "GET /sub/x?since=0 HTTP/1.1\r\n\r\n");
    expect_bytes(&mut late, &answer(1, "abcde"));
}

#[test]
fn an_oversized_publish_is_413() {
    let f = Floor::start();
    let mut s = connect(f.admin);
    s.write_all(b"POST /pub/x HTTP/1.1\r\nContent-Length: 70000\r\n\r\n")
        .unwrap();
    let (status, _, _) = response(&mut s);
    assert_eq!(status, 413);
    assert_eq!(f.gauge("published"), 0);
}

#[test]
fn bad_flags_exit_2() {
    let status = Command::new(BIN)
        .arg("--no-such-flag")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}

#[test]
fn a_subscriber_that_stops_reading_gets_everything_in_order_later() {
    let f = Floor::start();
    let mut slow = subscribe(&f, SSE_REQ);
    let mut quick = subscribe(&f, SSE_REQ);
    f.wait("sse_streams", 2);
    // 7.2 MB: past the 4 MB send buffer (tcp_wmem max) plus the ~128 KB a receiver that
    // never reads holds, so the floor's sends to `slow` come up short and queue.
    let body = "z".repeat(60_000);
    let event = move |id: u64| format!("id: {id}\ndata: {}\n\n", "z".repeat(60_000)).into_bytes();
    let reader = std::thread::spawn(move || {
        expect_bytes(&mut quick, SSE_HEAD);
        for id in 1..=120 {
            expect_bytes(&mut quick, &event(id));
        }
    });
    for _ in 0..120 {
        assert_eq!(f.publish("x", &body)["subscribers"], 2);
    }
    reader.join().unwrap();
    expect_bytes(&mut slow, SSE_HEAD);
    for id in 1..=120 {
        expect_bytes(&mut slow, &event(id));
    }
    nothing_arrives(&mut slow);
}
