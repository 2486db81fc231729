//! Smoke test of the `holdfast-tokio` binary over real sockets: it starts, prints both
//! listening lines, releases a parked poll with a publish, answers a timed-out poll with
//! `204` + `Message-Id`, streams an SSE event, streams ndjson lines (chunked, ending with
//! the terminating chunk), and upgrades a WebSocket that gets a burst of messages once
//! and in order, then `deleted` and close `1000`. The repository's end-to-end suite
//! (`HOLDFAST_BIN=… cargo test -p holdfast`) covers the rest of `docs/protocol.md`.
//!
//! Every read has a timeout and every loop a bound, so a broken server fails the test
//! instead of hanging it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use holdfast_stress::startup;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The server process; killed on drop.
struct Server {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_holdfast-tokio"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--threads",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run holdfast-tokio");
    let stdout = child.stdout.take().expect("stdout is piped");
    let listening = startup::read_listening(stdout, IO_TIMEOUT).unwrap_or_else(|e| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("holdfast-tokio: {e}")
    });
    Server {
        child,
        public: listening.public,
        admin: listening.admin,
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
    s
}

fn send(s: &mut TcpStream, method: &str, target: &str, headers: &str, body: &[u8]) {
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: t\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write head");
    s.write_all(body).expect("write body");
}

/// Reads until `buf` holds `\r\n\r\n`; returns the head's length.
fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 4096];
    for _ in 0..1000 {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return i + 4;
        }
        let n = s.read(&mut chunk).expect("read response head");
        assert!(n > 0, "closed before a complete head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
    panic!("no end of head in {} bytes", buf.len());
}

fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// One `Content-Length`-framed response.
fn response(s: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    let head_len = read_head(s, &mut buf);
    let (status, headers) = parse_head(&buf[..head_len]);
    let mut r = Response {
        status,
        headers,
        body: buf.split_off(head_len),
    };
    let len: usize = r
        .header("content-length")
        .map_or(0, |v| v.parse().expect("numeric Content-Length"));
    let mut chunk = [0u8; 4096];
    for _ in 0..1000 {
        if r.body.len() >= len {
            break;
        }
        let n = s.read(&mut chunk).expect("read body");
        assert!(n > 0, "closed inside the body");
        r.body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(r.body.len(), len, "body length");
    r
}

fn request(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> Response {
    let mut s = connect(addr);
    send(&mut s, method, target, "", body);
    response(&mut s)
}

fn publish(admin: SocketAddr, channel: &str, body: &[u8]) -> String {
    let r = request(admin, "POST", &format!("/pub/{channel}"), body);
    assert_eq!(
        r.status,
        201,
        "publish: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    let json = String::from_utf8_lossy(&r.body).into_owned();
    let id = json
        .strip_prefix("{\"id\":\"")
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no id in {json}"));
    id.to_string()
}

/// Polls `/stats` until `field` equals `want`, for at most 5 s.
fn wait_stat(admin: SocketAddr, field: &str, want: u64) {
    let needle = format!("\"{field}\":{want},");
    let deadline = Instant::now() + Duration::from_secs(5);
    for _ in 0..500 {
        let r = request(admin, "GET", "/stats", b"");
        if String::from_utf8_lossy(&r.body).contains(&needle) {
            return;
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("/stats {field} did not reach {want}");
}

#[test]
fn parked_poll_is_released_by_a_publish() {
    let s = start();
    let mut poll = connect(s.public);
    send(&mut poll, "GET", "/sub/smoke?timeout=20", "", b"");
    wait_stat(s.admin, "parked", 1);
    let id = publish(s.admin, "smoke", b"hello tokio");
    let r = response(&mut poll);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello tokio");
    assert_eq!(r.header("message-id"), Some(id.as_str()));
    assert_eq!(r.header("channel"), Some("smoke"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.header("date").is_some());
    wait_stat(s.admin, "parked", 0);
}

#[test]
fn poll_timeout_is_204_with_message_id() {
    let s = start();
    let id = publish(s.admin, "quiet", b"before");
    let t = Instant::now();
    let r = request(s.public, "GET", "/sub/quiet?timeout=500ms", b"");
    assert!(t.elapsed() >= Duration::from_millis(400), "did not hold");
    assert_eq!(r.status, 204);
    // No cursor: the newest id when the request arrived.
    assert_eq!(r.header("message-id"), Some(id.as_str()));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.body.is_empty());
}

#[test]
fn sse_stream_receives_an_event() {
    let s = start();
    let mut stream = connect(s.public);
    send(
        &mut stream,
        "GET",
        "/sub/live",
        "Accept: text/event-stream\r\n",
        b"",
    );
    let mut buf = Vec::new();
    let head_len = read_head(&mut stream, &mut buf);
    let (status, headers) = parse_head(&buf[..head_len]);
    assert_eq!(status, 200);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("content-type"), Some("text/event-stream"));
    assert!(header("content-length").is_none() && header("transfer-encoding").is_none());
    wait_stat(s.admin, "sse_streams", 1);
    let id = publish(s.admin, "live", b"line one\nline two");
    let want = format!("retry: 2000\n\nid: {id}\ndata: line one\ndata: line two\n\n");
    let mut got = buf.split_off(head_len);
    let mut chunk = [0u8; 4096];
    for _ in 0..100 {
        if got.len() >= want.len() {
            break;
        }
        let n = stream.read(&mut chunk).expect("read event");
        assert!(
            n > 0,
            "stream closed early: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), want);
}

/// Publishes `n` messages `m0`…, pipelined on one connection (a burst the stream's
/// queue takes faster than one turn of the stream's task drains it); returns their ids.
fn publish_burst(admin: SocketAddr, channel: &str, n: usize) -> Vec<String> {
    let mut s = connect(admin);
    let mut out = Vec::new();
    for i in 0..n {
        let body = format!("m{i}");
        out.extend_from_slice(
            format!(
                "POST /pub/{channel} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    s.write_all(&out).expect("write publishes");
    // The answers arrive back to back: one buffer across them.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    (0..n)
        .map(|_| {
            let head_len = read_head(&mut s, &mut buf);
            let (status, headers) = parse_head(&buf[..head_len]);
            assert_eq!(status, 201);
            let len: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .expect("Content-Length");
            for _ in 0..1000 {
                if buf.len() >= head_len + len {
                    break;
                }
                let n = s.read(&mut chunk).expect("read an answer");
                assert!(n > 0, "closed inside an answer");
                buf.extend_from_slice(&chunk[..n]);
            }
            let json = String::from_utf8_lossy(&buf[head_len..head_len + len]).into_owned();
            buf.drain(..head_len + len);
            json.split('"')
                .nth(3)
                .expect("id in the answer")
                .to_string()
        })
        .collect()
}

/// Reads one server frame (unmasked): `(opcode, payload)`.
fn ws_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u8, Vec<u8>) {
    let mut chunk = [0u8; 16384];
    for _ in 0..10_000 {
        if buf.len() >= 2 {
            let (len, at) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => (usize::MAX, 0),
                n => (n as usize, 2),
            };
            assert_eq!(buf[1] & 0x80, 0, "a server frame is not masked");
            if len != usize::MAX && buf.len() >= at + len {
                let opcode = buf[0] & 0x0f;
                let payload = buf[at..at + len].to_vec();
                buf.drain(..at + len);
                return (opcode, payload);
            }
        }
        let n = s.read(&mut chunk).expect("read a frame");
        assert!(n > 0, "closed before a complete frame");
        buf.extend_from_slice(&chunk[..n]);
    }
    panic!("no complete frame");
}

#[test]
fn websocket_gets_a_burst_once_in_order_then_deleted_and_close_1000() {
    let s = start();
    let mut ws = connect(s.public);
    send(
        &mut ws,
        "GET",
        "/sub/ws",
        "Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        b"",
    );
    let mut buf = Vec::new();
    let head_len = read_head(&mut ws, &mut buf);
    let (status, headers) = parse_head(&buf[..head_len]);
    buf.drain(..head_len);
    assert_eq!(status, 101);
    let accept = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, v)| v.as_str());
    assert_eq!(
        accept,
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "RFC 6455's example"
    );
    wait_stat(s.admin, "websockets", 1);
    let ids = publish_burst(s.admin, "ws", 500);
    for (i, id) in ids.iter().enumerate() {
        let (opcode, payload) = ws_frame(&mut ws, &mut buf);
        assert_eq!(opcode, 1, "a text frame");
        let want = format!("{{\"id\":\"{id}\",\"channel\":\"ws\",\"data\":\"m{i}\"}}");
        assert_eq!(String::from_utf8_lossy(&payload), want, "message {i}");
    }
    assert_eq!(request(s.admin, "DELETE", "/pub/ws", b"").status, 204);
    let (opcode, payload) = ws_frame(&mut ws, &mut buf);
    assert_eq!(opcode, 1);
    assert_eq!(payload, b"{\"event\":\"deleted\",\"channel\":\"ws\"}");
    assert_eq!(
        ws_frame(&mut ws, &mut buf),
        (8, vec![0x03, 0xe8]),
        "close 1000"
    );
    wait_stat(s.admin, "websockets", 0);
}

#[test]
fn ndjson_stream_is_chunked_lines_ending_with_the_terminating_chunk() {
    let s = start();
    let id = publish(s.admin, "nd", b"first");
    let mut stream = connect(s.public);
    send(&mut stream, "GET", "/sub/nd?stream=ndjson&since=0", "", b"");
    let mut buf = Vec::new();
    let head_len = read_head(&mut stream, &mut buf);
    let (status, headers) = parse_head(&buf[..head_len]);
    assert_eq!(status, 200);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("content-type"), Some("application/x-ndjson"));
    assert_eq!(header("transfer-encoding"), Some("chunked"));
    assert_eq!(header("cache-control"), Some("no-store"));
    assert_eq!(header("x-accel-buffering"), Some("no"));
    wait_stat(s.admin, "ndjson_streams", 1);
    assert_eq!(request(s.admin, "DELETE", "/pub/nd", b"").status, 204);
    let mut got = buf.split_off(head_len);
    let mut chunk = [0u8; 4096];
    for _ in 0..100 {
        let n = stream.read(&mut chunk).expect("read the stream");
        if n == 0 {
            break; // the server closes after the body
        }
        got.extend_from_slice(&chunk[..n]);
    }
    let first = format!("{{\"id\":\"{id}\",\"channel\":\"nd\",\"data\":\"first\"}}\n");
    let last = "{\"event\":\"deleted\",\"channel\":\"nd\"}\n";
    let want = format!(
        "{:x}\r\n{first}\r\n{:x}\r\n{last}\r\n0\r\n\r\n",
        first.len(),
        last.len()
    );
    assert_eq!(String::from_utf8_lossy(&got).to_lowercase(), want);
    wait_stat(s.admin, "ndjson_streams", 0);
}
