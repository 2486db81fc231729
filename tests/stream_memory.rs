//! Idle WebSocket and ndjson streams at scale (issue 14): 15 000 of each, one publish
//! reaches every one, and what an idle one costs the server in user space: RSS growth
//! from before the first connection to all 15 000 open, divided by 15 000
//! (`cargo test --release --test stream_memory -- --nocapture` prints it). The bound
//! asserted for holdfast is 64 bytes, as for a parked long-poll and an idle SSE stream:
//! an idle stream of any transport is its 56-byte slot (the tokio peer is measured and
//! printed, not bounded). The tests run one at a time (`SERIAL`): their sockets count
//! against the test process's open-file limit.

mod common;

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::http::{request_bytes, Conn};
use common::net::{connect_many, raise_fd_limit_for};
use common::protocol::{publish_full, publish_id, stat, wait_stat};
use common::server::{testing_holdfast, Server};

const STREAMS: usize = 15_000;
const SOURCE_ADDRS: u8 = 8; // 127.0.0.2 ..= 127.0.0.9
const PAYLOAD: &str = "fan-out over a stream";

static SERIAL: Mutex<()> = Mutex::new(());

fn websocket_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: holdfast\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

fn ndjson_request(path: &str) -> Vec<u8> {
    request_bytes("GET", path, &[("Accept", "application/x-ndjson")], None)
}

#[test]
fn idle_websockets_cost_at_most_64_bytes_and_one_publish_reaches_15000() {
    idle_streams(websocket_request, "websockets", "101");
}

#[test]
fn idle_ndjson_streams_cost_at_most_64_bytes_and_one_publish_reaches_15000() {
    idle_streams(ndjson_request, "ndjson_streams", "200");
}

/// Reads from `c` into `buf` until `buf` contains `needle` or `deadline` passes.
fn read_until(c: &mut Conn, buf: &mut Vec<u8>, needle: &[u8], deadline: Instant) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        if buf.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        c.set_read_timeout(left.max(Duration::from_millis(1)));
        match c.stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Opens 15 000 streams with `request`, waits for `gauge` to count them, measures RSS
/// per stream, publishes once, and checks every stream received the message: the head
/// (`status`), then the JSON envelope with the id (in a text frame for a WebSocket).
fn idle_streams(request: fn(&str) -> Vec<u8>, gauge: &str, status: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    raise_fd_limit_for(STREAMS);
    let s = Server::start(&["--threads", "2"]);
    // A few streams first (opened, answered, closed), spread over both workers, so the
    // baseline holds what serving one allocates once per worker, not what holding one
    // costs.
    let head_line = format!("HTTP/1.1 {status} ");
    for _ in 0..16 {
        let mut c = Conn::open(s.public);
        c.send(&request("/sub/warm"));
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(
            read_until(&mut c, &mut buf, b"\r\n\r\n", deadline)
                && buf.starts_with(head_line.as_bytes()),
            "warm-up {gauge}: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
    wait_stat(s.admin, gauge, 0, Duration::from_secs(10));
    let rss_before = stat(s.admin, "rss_bytes");

    let t = Instant::now();
    let mut conns = connect_many(s.public, STREAMS, SOURCE_ADDRS, &request("/sub/fan"));
    eprintln!("{STREAMS} {gauge} requests sent in {:?}", t.elapsed());
    wait_stat(s.admin, gauge, STREAMS as u64, Duration::from_secs(60));
    let rss_open = stat(s.admin, "rss_bytes");
    let per = rss_open.saturating_sub(rss_before) as f64 / STREAMS as f64;
    eprintln!(
        "user-space bytes per idle {gauge} connection: {per:.1} \
         (server RSS {rss_before} -> {rss_open} over {STREAMS})"
    );
    if testing_holdfast() {
        assert!(
            per <= 64.0,
            "an idle {gauge} connection costs {per:.1} bytes of server RSS (budget 64)"
        );
    }

    let t = Instant::now();
    let r = publish_full(s.admin, "fan", PAYLOAD.as_bytes(), None);
    let id = publish_id(&r);
    assert_eq!(
        r.json()["subscribers"].as_u64(),
        Some(STREAMS as u64),
        "{}",
        r.brief()
    );
    let want = format!(r#"{{"id":"{id}","channel":"fan","data":"{PAYLOAD}"}}"#);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut delivered = 0;
    let mut failures = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        let mut buf = Vec::new();
        if !read_until(c, &mut buf, want.as_bytes(), deadline) {
            failures.push(format!(
                "stream {i}: {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(300)])
            ));
            continue;
        }
        let ok_head = buf.starts_with(head_line.as_bytes());
        // A WebSocket carries the object in one unmasked text frame: 0x81, its length.
        let at = buf
            .windows(want.len())
            .position(|w| w == want.as_bytes())
            .unwrap_or(0);
        let framed = gauge != "websockets"
            || (at >= 2 && buf[at - 2] == 0x81 && buf[at - 1] as usize == want.len());
        if ok_head && framed {
            delivered += 1;
        } else {
            failures.push(format!("stream {i}: {:?}", String::from_utf8_lossy(&buf)));
        }
    }
    eprintln!("{delivered} deliveries read in {:?}", t.elapsed());
    failures.truncate(5);
    assert_eq!(delivered, STREAMS, "first failures: {failures:#?}");
    drop(conns);
    wait_stat(s.admin, gauge, 0, Duration::from_secs(30));
}
