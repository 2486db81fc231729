//! HTTP/1.1 behaviour on both listeners: framing, keep-alive, pipelining, HTTP/1.0,
//! `Connection: close`, the error rows (400/404/405/414/431/505), the header and keep-alive
//! timeouts, and `--max-connections`.

mod common;

use std::time::{Duration, Instant};

use common::http::{assert_close_is_consistent, request_bytes, Conn, Response};
use common::protocol::{
    assert_delivery, get, id_num, park, poll, publish, publish_id, request, stat, wait_stat,
};
use common::server::{testing_holdfast, Server};
use common::timing::{assert_between, wait_until};

const SEC: Duration = Duration::from_secs(1);

/// Asserts the response announces close and the connection then closes.
fn assert_error_then_close(c: &mut Conn, status: u16, what: &str) {
    let r = c
        .read_response()
        .unwrap_or_else(|e| panic!("{what}: no {status} response: {e}"));
    assert_eq!(r.status, status, "{what}: {}", r.brief());
    assert_announced_close_then_closed(c, &r, what);
}

/// Asserts `r` (an error response read from `c`) is framed, announces close, and that
/// the connection then closes.
fn assert_announced_close_then_closed(c: &mut Conn, r: &Response, what: &str) {
    let status = r.status;
    assert!(
        r.closes(),
        "{what}: {status} without Connection: close: {}",
        r.brief()
    );
    assert!(
        r.content_length().is_some(),
        "{what}: no Content-Length: {}",
        r.brief()
    );
    c.assert_closed(5 * SEC);
}

/// (listener, method, target, body, expected status)
type Case<'a> = (
    std::net::SocketAddr,
    &'a str,
    &'a str,
    Option<&'a [u8]>,
    u16,
);

#[test]
fn every_response_has_content_length() {
    let s = Server::start(&[]);
    publish(s.admin, "cl", "body");
    let cases: Vec<Case> = vec![
        (s.public, "GET", "/health", None, 200),
        (s.public, "GET", "/nope", None, 404),
        (s.public, "POST", "/sub/cl", Some(b""), 405),
        (s.public, "GET", "/sub/a$b?timeout=0", None, 400),
        (s.public, "GET", "/sub/cl?since=0&timeout=0", None, 200),
        (s.public, "GET", "/sub/empty?timeout=0", None, 204),
        (s.admin, "GET", "/health", None, 200),
        (s.admin, "GET", "/stats", None, 200),
        (s.admin, "GET", "/metrics", None, 200),
        (s.admin, "POST", "/pub/cl", Some(b"more"), 201),
        (s.admin, "GET", "/pub/cl", None, 200),
        (s.admin, "GET", "/pub/unknown", None, 404),
        (s.admin, "PATCH", "/pub/cl", Some(b""), 405),
        (s.admin, "DELETE", "/pub/cl", None, 204),
    ];
    for (addr, method, path, body, status) in cases {
        let mut c = Conn::open(addr);
        let r = c.request(method, path, &[], body);
        let what = format!("{method} {path}: {}", r.brief());
        assert_eq!(r.status, status, "{what}");
        assert!(r.header("transfer-encoding").is_none(), "{what}");
        if status == 204 {
            assert!(matches!(r.content_length(), None | Some(0)), "{what}");
        } else {
            assert_eq!(r.content_length(), Some(r.body.len() as u64), "{what}");
        }
        // A request the server understood but refused (400 for a channel name) may
        // close, if it says so; everything else keeps the connection.
        if status != 400 {
            assert!(!r.closes(), "closed a keep-alive connection: {what}");
        }
        assert_close_is_consistent(&mut c, &r);
    }
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let s = Server::start(&[]);
    let mut c = Conn::open(s.public);
    for _ in 0..5 {
        let r = c.get("/health");
        assert_eq!(r.status, 200, "{}", r.brief());
        assert_eq!(r.body_str().trim(), "ok");
        assert!(!r.closes(), "{}", r.brief());
    }
    let mut a = Conn::open(s.admin);
    for i in 0..5 {
        let r = a.request("POST", "/pub/ka", &[], Some(format!("m{i}").as_bytes()));
        publish_id(&r);
        let r = a.get("/stats");
        assert_eq!(r.status, 200, "{}", r.brief());
        assert_eq!(r.json()["published"].as_u64(), Some(i + 1));
    }
    // The public connection still works after the admin traffic.
    let r = c.get("/sub/ka?since=0&timeout=0");
    assert_delivery(&r, "ka", b"m0");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Server::start(&[]);
    let mut a = Conn::open(s.admin);
    let mut batch = Vec::new();
    batch.extend(request_bytes("POST", "/pub/pipe", &[], Some(b"one")));
    batch.extend(request_bytes("POST", "/pub/pipe", &[], Some(b"two")));
    batch.extend(request_bytes("GET", "/pub/pipe", &[], None));
    batch.extend(request_bytes("GET", "/nope", &[], None));
    batch.extend(request_bytes("GET", "/health", &[], None));
    a.send(&batch);
    let id1 = publish_id(&a.response());
    let id2 = publish_id(&a.response());
    assert!(id_num(&id2) > id_num(&id1));
    let info = a.response();
    assert_eq!(info.status, 200, "{}", info.brief());
    assert_eq!(info.json()["last_id"].as_str(), Some(id2.as_str()));
    assert_eq!(a.response().status, 404);
    let h = a.response();
    assert_eq!((h.status, h.body_str().trim()), (200, "ok"));

    let mut p = Conn::open(s.public);
    let mut batch = Vec::new();
    batch.extend(request_bytes(
        "GET",
        "/sub/pipe?since=0&timeout=0",
        &[],
        None,
    ));
    batch.extend(request_bytes("GET", "/health", &[], None));
    batch.extend(request_bytes(
        "GET",
        &format!("/sub/pipe?since={id1}&timeout=0"),
        &[],
        None,
    ));
    batch.extend(request_bytes(
        "GET",
        &format!("/sub/pipe?since={id2}&timeout=0"),
        &[],
        None,
    ));
    p.send(&batch);
    assert_eq!(assert_delivery(&p.response(), "pipe", b"one"), id1);
    assert_eq!(p.response().status, 200);
    assert_eq!(assert_delivery(&p.response(), "pipe", b"two"), id2);
    let r = p.response();
    assert_eq!(r.status, 204, "{}", r.brief());
}

#[test]
fn parked_poll_holds_the_pipelined_requests_behind_it() {
    let s = Server::start(&[]);
    let mut p = Conn::open(s.public);
    let mut batch = Vec::new();
    batch.extend(request_bytes("GET", "/sub/hold?timeout=30", &[], None));
    batch.extend(request_bytes("GET", "/health", &[], None));
    batch.extend(request_bytes(
        "GET",
        "/sub/hold?since=0&timeout=0",
        &[],
        None,
    ));
    p.send(&batch);
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    assert!(
        p.quiet_for(Duration::from_millis(500)),
        "requests behind a parked poll were answered before it"
    );
    let id = publish(s.admin, "hold", "release");
    assert_eq!(assert_delivery(&p.response(), "hold", b"release"), id);
    let h = p.response();
    assert_eq!(
        (h.status, h.body_str().trim()),
        (200, "ok"),
        "{}",
        h.brief()
    );
    assert_eq!(assert_delivery(&p.response(), "hold", b"release"), id);

    // Held behind a poll that times out.
    let mut batch = Vec::new();
    batch.extend(request_bytes(
        "GET",
        &format!("/sub/hold?since={id}&timeout=1"),
        &[],
        None,
    ));
    batch.extend(request_bytes("GET", "/health", &[], None));
    p.send(&batch);
    let t = Instant::now();
    let r = p.response();
    assert_eq!(r.status, 204, "{}", r.brief());
    assert!(t.elapsed() >= SEC / 2, "poll did not hold");
    assert_eq!(p.response().status, 200);
}

#[test]
fn http10_request_is_answered_then_closed() {
    let s = Server::start(&[]);
    let mut c = Conn::open(s.public);
    c.send(b"GET /health HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.brief());
    assert_eq!(r.body_str().trim(), "ok");
    assert!(
        r.closes(),
        "HTTP/1.0 answer without Connection: close: {}",
        r.brief()
    );
    c.assert_closed(5 * SEC);

    let mut c = Conn::open(s.public);
    c.send(b"GET /sub/ten?timeout=0 HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 204, "{}", r.brief());
    c.assert_closed(5 * SEC);

    let mut c = Conn::open(s.admin);
    c.send(b"POST /pub/ten HTTP/1.0\r\nContent-Length: 3\r\n\r\nold");
    publish_id(&c.response());
    c.assert_closed(5 * SEC);
}

#[test]
fn connection_close_is_honoured() {
    let s = Server::start(&[]);
    let mut c = Conn::open(s.public);
    // The second request must not be answered: the first said close.
    let mut batch = request_bytes("GET", "/health", &[("Connection", "close")], None);
    batch.extend(request_bytes("GET", "/health", &[], None));
    c.send(&batch);
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.brief());
    assert!(r.closes(), "{}", r.brief());
    c.assert_closed(5 * SEC);

    let mut c = Conn::open(s.admin);
    let r = c.request("POST", "/pub/bye", &[("Connection", "close")], Some(b"x"));
    publish_id(&r);
    assert!(r.closes(), "{}", r.brief());
    c.assert_closed(5 * SEC);
}

#[test]
fn header_names_are_case_insensitive() {
    let s = Server::start(&[]);
    let mut c = Conn::open(s.admin);
    c.send(b"POST /pub/case HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nCONTENT-TYPE: text/x-case\r\n\r\nhi");
    let id = publish_id(&c.response());
    let mut p = Conn::open(s.public);
    p.send(b"GET /sub/case?timeout=0 HTTP/1.1\r\nHOST: x\r\nlast-event-id: 0\r\n\r\n");
    let r = p.response();
    assert_eq!(assert_delivery(&r, "case", b"hi"), id);
    assert_eq!(r.header("content-type"), Some("text/x-case"));
}

#[test]
fn malformed_request_line_is_400_then_close() {
    let s = Server::start(&[]);
    for (addr, raw) in [
        (s.public, &b"GARBAGE\r\n\r\n"[..]),
        (s.public, b"GET /health\r\n\r\n"),
        (s.public, b"GET /health HTTP/1.1 trailing\r\n\r\n"),
        (s.admin, b"\x01\x02\x03 / HTTP/1.1\r\n\r\n"),
    ] {
        let mut c = Conn::open(addr);
        let _ = c.try_send(raw);
        assert_error_then_close(&mut c, 400, &format!("{:?}", String::from_utf8_lossy(raw)));
    }
}

/// Where the version belongs (docs/protocol.md, "Request heads"): a well-formed
/// `HTTP/` digit `.` digit other than 1.0 and 1.1 is `505`; anything else there is not
/// an HTTP version at all, a malformed request line: `400`. Either way, then close.
/// Every case is tried and the wrong answers are reported together.
#[test]
fn a_version_that_is_not_http_is_400_and_an_unsupported_http_version_is_505() {
    let s = Server::start(&[]);
    let cases = [
        // Not an HTTP version: 400.
        (s.public, &b"THIS IS NOT HTTP\r\n\r\n"[..], 400),
        (s.public, b"GET / FOO/1.1\r\n\r\n", 400),
        (s.admin, b"GET / FOO/1.1\r\n\r\n", 400),
        (s.public, b"GET /health http/1.1\r\n\r\n", 400),
        (s.public, b"GET /health HTTP/1.10\r\n\r\n", 400),
        (s.public, b"GET /health HTTP/11\r\n\r\n", 400),
        // The version slot is the third part of the line, not its last word.
        (s.public, b"GET / x HTTP/2.0\r\n\r\n", 400),
        // Well-formed, neither 1.0 nor 1.1: 505.
        (s.public, b"GET / HTTP/2.0\r\n\r\n", 505),
        (s.public, b"GET / HTTP/1.2\r\n\r\n", 505),
        (s.public, b"GET /health HTTP/0.9\r\n\r\n", 505),
        (s.admin, b"GET /stats HTTP/2.0\r\n\r\n", 505),
    ];
    let mut wrong = Vec::new();
    for (addr, raw, status) in cases {
        let what = format!("{:?}", String::from_utf8_lossy(raw));
        let mut c = Conn::open(addr);
        let _ = c.try_send(raw);
        match c.read_response() {
            Ok(r) if r.status == status => assert_announced_close_then_closed(&mut c, &r, &what),
            Ok(r) => wrong.push(format!("{what}: want {status}, got {}", r.status)),
            Err(e) => wrong.push(format!("{what}: want {status}, got no response: {e}")),
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
}

#[test]
fn malformed_header_is_400_then_close() {
    let s = Server::start(&[]);
    for raw in [
        &b"GET /health HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n"[..],
        b"POST /pub/h HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /pub/h HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    ] {
        let mut c = Conn::open(s.admin);
        let _ = c.try_send(raw);
        assert_error_then_close(&mut c, 400, &format!("{:?}", String::from_utf8_lossy(raw)));
    }
    assert_eq!(stat(s.admin, "published"), 0);
}

#[test]
fn request_line_over_8k_is_414_then_close() {
    let s = Server::start(&[]);
    let long = format!(
        "GET /health?pad={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(9000)
    );
    let mut c = Conn::open(s.public);
    let _ = c.try_send(long.as_bytes());
    assert_error_then_close(&mut c, 414, "9 KB request line");

    // Detected without waiting for the end of the line.
    let mut c = Conn::open(s.admin);
    let _ = c.try_send(format!("GET /health?pad={}", "a".repeat(17000)).as_bytes());
    assert_error_then_close(&mut c, 414, "17 KB unterminated request line");

    // Well under the limit is not 414.
    let ok = format!("/sub/x?timeout=0&pad={}", "a".repeat(7000));
    let r = poll(s.public, &ok);
    assert_ne!(r.status, 414, "7 KB request line refused: {}", r.brief());
}

#[test]
fn headers_over_16k_are_431_then_close() {
    let s = Server::start(&[]);
    let big = "v".repeat(1000);
    let headers: Vec<(String, &str)> = (0..20)
        .map(|i| (format!("X-Big-{i}"), big.as_str()))
        .collect();
    let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let mut c = Conn::open(s.public);
    let _ = c.try_send(&request_bytes("GET", "/health", &h, None));
    assert_error_then_close(&mut c, 431, "20 KB of headers");

    // 12 KB of headers is fine.
    let r = request(s.public, "GET", "/health", &h[..12], None);
    assert_eq!(r.status, 200, "12 KB of headers: {}", r.brief());
}

#[test]
fn more_than_64_header_fields_are_431_then_close() {
    let s = Server::start(&[]);
    let names: Vec<String> = (0..64).map(|i| format!("X-H{i}")).collect();
    let h: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    // Host + 63 = 64 fields: allowed.
    let r = request(s.admin, "GET", "/health", &h[..63], None);
    assert_eq!(r.status, 200, "64 header fields: {}", r.brief());
    // Host + 64 = 65 fields.
    let mut c = Conn::open(s.admin);
    let _ = c.try_send(&request_bytes("GET", "/health", &h, None));
    assert_error_then_close(&mut c, 431, "65 header fields");
}

#[test]
fn unknown_paths_are_404_on_each_listener() {
    let s = Server::start(&[]);
    for path in [
        "/",
        "/nope",
        "/stats",
        "/metrics",
        "/pub/x",
        "/subx/a",
        "/health/x",
    ] {
        let r = get(s.public, path);
        assert_eq!(r.status, 404, "public {path}: {}", r.brief());
    }
    for path in ["/", "/nope", "/sub/x", "/pubx/a", "/stats/x"] {
        let r = get(s.admin, path);
        assert_eq!(r.status, 404, "admin {path}: {}", r.brief());
    }
}

fn allow_has(r: &Response, methods: &[&str]) {
    for m in methods {
        assert!(r.has_token("allow", m), "Allow lacks {m}: {}", r.brief());
    }
}

#[test]
fn known_path_with_wrong_method_is_405_with_allow() {
    let s = Server::start(&[]);
    let r = request(s.public, "POST", "/sub/x", &[], Some(b""));
    assert_eq!(r.status, 405, "{}", r.brief());
    allow_has(&r, &["GET"]);

    let r = request(s.public, "DELETE", "/sub/x", &[], None);
    assert_eq!(r.status, 405, "{}", r.brief());
    allow_has(&r, &["GET"]);

    let r = request(s.admin, "PATCH", "/pub/x", &[], Some(b""));
    assert_eq!(r.status, 405, "{}", r.brief());
    allow_has(&r, &["GET", "POST", "PUT", "DELETE"]);

    for addr in [s.public, s.admin] {
        let r = request(addr, "POST", "/health", &[], Some(b""));
        assert_eq!(r.status, 405, "{}", r.brief());
        allow_has(&r, &["GET"]);
    }
    for path in ["/stats", "/metrics"] {
        let r = request(s.admin, "POST", path, &[], Some(b""));
        assert_eq!(r.status, 405, "POST {path}: {}", r.brief());
        allow_has(&r, &["GET"]);
    }
    assert_eq!(stat(s.admin, "published"), 0);
}

/// Reads until the server closes; returns the time it took and what arrived.
fn time_to_close(c: &mut Conn, limit: Duration) -> (Duration, Vec<u8>) {
    let t = Instant::now();
    let got = c.wait_closed(limit).unwrap_or_else(|e| panic!("{e}"));
    (t.elapsed(), got)
}

fn assert_nothing_or_408(got: &[u8]) {
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408") || got.starts_with(b"HTTP/1.0 408"),
        "unexpected bytes before close: {:?}",
        String::from_utf8_lossy(got)
    );
}

#[test]
fn header_timeout_closes_a_partial_head() {
    let s = Server::start(&["--header-timeout", "1"]);
    let mut c = Conn::open(s.public);
    c.send(b"GET /health HTTP/1.1\r\nHo");
    let (took, got) = time_to_close(&mut c, 6 * SEC);
    assert_between("partial head closed", took, SEC / 2, 3500 * SEC / 1000);
    assert_nothing_or_408(&got);
}

#[test]
fn header_timeout_bounds_the_whole_head_not_each_byte() {
    let s = Server::start(&["--header-timeout", "1"]);
    let mut c = Conn::open(s.admin);
    let head = format!(
        "GET /health HTTP/1.1\r\nX-Slow: {}\r\n\r\n",
        "z".repeat(100)
    );
    let t = Instant::now();
    let mut closed_at = None;
    for b in head.as_bytes() {
        if c.try_send(&[*b]).is_err() || !c.quiet_for(Duration::from_millis(150)) {
            closed_at = Some(t.elapsed());
            break;
        }
        if t.elapsed() > 6 * SEC {
            break;
        }
    }
    let took = closed_at
        .unwrap_or_else(|| panic!("a head dripped one byte per 150 ms was not cut off after 6 s"));
    assert_between("dripping head closed", took, SEC / 2, 3500 * SEC / 1000);
}

#[test]
fn a_slow_but_timely_head_is_served() {
    let s = Server::start(&["--header-timeout", "2"]);
    let mut c = Conn::open(s.public);
    c.send(b"GET /health HTTP/1.1\r\n");
    std::thread::sleep(Duration::from_millis(300));
    c.send(b"Host: x\r\n");
    std::thread::sleep(Duration::from_millis(300));
    c.send(b"\r\n");
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.brief());
}

#[test]
fn keepalive_timeout_closes_an_idle_connection() {
    let s = Server::start(&["--keepalive-timeout", "1"]);
    let mut c = Conn::open(s.public);
    assert_eq!(c.get("/health").status, 200);
    let (took, got) = time_to_close(&mut c, 6 * SEC);
    assert_between("idle keep-alive closed", took, SEC / 2, 3500 * SEC / 1000);
    assert_nothing_or_408(&got);
}

#[test]
fn keepalive_timeout_restarts_with_each_request() {
    let s = Server::start(&["--keepalive-timeout", "1"]);
    let mut c = Conn::open(s.admin);
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(2500) {
        let r = c.get("/health");
        assert_eq!(r.status, 200, "at {:?}: {}", t.elapsed(), r.brief());
        std::thread::sleep(Duration::from_millis(400));
    }
}

#[test]
fn header_and_keepalive_timeouts_do_not_cut_parked_polls() {
    let s = Server::start(&["--header-timeout", "1", "--keepalive-timeout", "1"]);
    let t = Instant::now();
    let r = poll(s.public, "/sub/patient?since=0&timeout=3");
    assert_eq!(r.status, 204, "{}", r.brief());
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "cut at {:?}",
        t.elapsed()
    );

    let mut c = park(s.public, "/sub/patient?timeout=10");
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    std::thread::sleep(Duration::from_millis(2500));
    let id = publish(s.admin, "patient", "still here");
    assert_eq!(assert_delivery(&c.response(), "patient", b"still here"), id);
}

/// Opens `n` public connections and proves each is being served.
fn open_served(public: std::net::SocketAddr, n: usize) -> Vec<Conn> {
    (0..n)
        .map(|i| {
            let mut c = Conn::open(public);
            let r = c.get("/health");
            assert_eq!(r.status, 200, "connection {i} under the cap: {}", r.brief());
            c
        })
        .collect()
}

fn assert_rejected_with_503(public: std::net::SocketAddr) {
    let mut extra = Conn::open(public);
    let _ = extra.try_send(&request_bytes("GET", "/health", &[], None));
    let r = extra
        .read_response()
        .unwrap_or_else(|e| panic!("connection over the cap got no 503: {e}"));
    assert_eq!(r.status, 503, "{}", r.brief());
    assert!(r.closes(), "{}", r.brief());
    extra.assert_closed(5 * SEC);
}

#[test]
fn max_connections_rejects_the_next_with_503_and_recovers() {
    let s = Server::start(&["--max-connections", "3"]);
    let mut held = open_served(s.public, 3);
    assert_rejected_with_503(s.public);
    assert_rejected_with_503(s.public);

    for (i, c) in held.iter_mut().enumerate() {
        let r = c.get("/health");
        assert_eq!(
            r.status,
            200,
            "held connection {i} after rejections: {}",
            r.brief()
        );
    }

    drop(held.pop());
    let mut served = None;
    let ok = wait_until(
        || {
            let mut c = Conn::open(s.public);
            let r = c
                .try_send(&request_bytes("GET", "/health", &[], None))
                .and_then(|_| c.read_response());
            match r {
                Ok(r) if r.status == 200 => {
                    served = Some(c);
                    true
                }
                _ => false,
            }
        },
        5 * SEC,
    );
    assert!(ok, "no new connection served after one of the 3 closed");
    // And the cap holds again with the new one.
    assert_rejected_with_503(s.public);
    drop(served);
}

#[test]
fn server_does_not_spin_at_max_connections() {
    let s = Server::start(&["--max-connections", "2"]);
    let _held = open_served(s.public, 2);
    // Connections over the cap, some never reading, some reading.
    let _pending: Vec<Conn> = (0..5).map(|_| Conn::open(s.public)).collect();
    assert_rejected_with_503(s.public);
    std::thread::sleep(Duration::from_millis(300));
    let before = s.cpu_time();
    std::thread::sleep(2 * SEC);
    let used = s.cpu_time() - before;
    assert!(
        used < Duration::from_millis(500),
        "server used {used:?} CPU in 2 s while at --max-connections"
    );
}

/// Logging is holdfast's own (not protocol), so this runs against holdfast only.
#[test]
fn refused_requests_are_logged_with_the_proxy_reported_client_when_trusted() {
    if !testing_holdfast() {
        return;
    }
    let big = vec![b'x'; 2048];
    let headers = [("X-Forwarded-For", "10.9.9.9, 203.0.113.9")];
    for (flags, want, not) in [
        (
            &["--max-message-size", "1KiB"][..],
            "413 to 127.0.0.1",
            "203.0.113.9",
        ),
        (
            &["--max-message-size", "1KiB", "--trust-proxy"][..],
            "413 to 203.0.113.9",
            "10.9.9.9",
        ),
    ] {
        let s = Server::start(flags);
        let r = request(s.admin, "POST", "/pub/log", &headers, Some(&big));
        assert_eq!(r.status, 413, "{}", r.brief());
        let logged = wait_until(|| s.output().contains(want), Duration::from_secs(2));
        let out = s.output();
        assert!(logged, "{flags:?}: log lacks {want:?}:\n{out}");
        assert!(!out.contains(not), "{flags:?}: log names {not:?}:\n{out}");
    }
}

/// A client may half-close (`shutdown(SHUT_WR)`, as `nc -N` does) once its request is
/// sent and still expects the answer. Repeated, with the body arriving a moment after
/// the head and the FIN right behind it, so that the close lands while the server is
/// still working on the request.
#[test]
fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let s = Server::start(&[]);
    let head = "PUT /pub/half HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut failures = Vec::new();
    for i in 0..50 {
        let mut c = Conn::open(s.admin);
        c.send(head.as_bytes());
        std::thread::sleep(Duration::from_millis(2));
        c.send(b"5\r\nhello\r\n0\r\n\r\n");
        c.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown(SHUT_WR)");
        match c.read_response() {
            Ok(r) if r.status == 201 => {}
            Ok(r) => failures.push(format!("attempt {i}: {}", r.brief())),
            Err(e) => failures.push(format!("attempt {i}: no answer: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 50 half-closed publishes went unanswered or wrong: {failures:#?}",
        failures.len()
    );
    assert_eq!(stat(s.admin, "published"), 50);
}
