//! The SSE order checks, end to end against a scripted server: a thread that answers
//! the stress tool's subscribe requests with an event-stream head and, on each publish,
//! writes the events a script gives it (ids and payload order chosen to break or keep
//! the order). Nothing here needs a holdfast or nchan binary, so these tests always run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

mod common;

use common::stress;

/// One event the server writes: its `id:` line (none when `None`) and the payload of
/// which publish (1-based) it carries.
type Event = (Option<&'static str>, usize);

/// Reads one request (head and `Content-Length` body) from `s`.
fn read_request(s: &mut TcpStream) -> (String, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "request body cut short");
                buf.extend_from_slice(&chunk[..n]);
            }
            return (head, buf[end + 4..end + 4 + len].to_vec());
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "request head cut short");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Starts the scripted server; returns (public, admin) addresses. `script[k]` is what
/// every stream gets when publish k + 1 arrives. Its threads end with the test process.
fn scripted_server(script: Vec<Vec<Event>>) -> (String, String) {
    let public = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs = (
        public.local_addr().unwrap().to_string(),
        admin.local_addr().unwrap().to_string(),
    );
    let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let subs = Arc::clone(&streams);
    std::thread::spawn(move || {
        for s in public.incoming() {
            let mut s = s.unwrap();
            let (head, _) = read_request(&mut s);
            assert!(head.contains("Accept: text/event-stream"), "{head}");
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: hi\n\n")
                .unwrap();
            subs.lock().unwrap().push(s);
        }
    });
    std::thread::spawn(move || {
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        for s in admin.incoming() {
            let mut s = s.unwrap();
            let (head, body) = read_request(&mut s);
            let (status, answer) = if head.starts_with("GET /stats ") {
                let n = streams.lock().unwrap().len();
                ("200 OK", format!(r#"{{"sse_streams":{n}}}"#))
            } else {
                assert!(head.starts_with("POST /pub/"), "{head}");
                payloads.push(body);
                let mut out = Vec::new();
                for &(id, which) in script.get(payloads.len() - 1).into_iter().flatten() {
                    if let Some(id) = id {
                        out.extend_from_slice(format!("id: {id}\n").as_bytes());
                    }
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(&payloads[which - 1]);
                    out.extend_from_slice(b"\n\n");
                }
                for sub in streams.lock().unwrap().iter_mut() {
                    sub.write_all(&out).unwrap();
                }
                ("201 Created", r#"{"id":"1"}"#.to_owned())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    addrs
}

/// Runs the stress tool in SSE mode, 2 streams, 3 publishes; returns (exit code, summary).
fn run(protocol: &str, script: Vec<Vec<Event>>) -> (i32, Value) {
    let (public, admin) = scripted_server(script);
    stress(&[
        "--target",
        &public,
        "--admin",
        &admin,
        "--mode",
        "sse",
        "--protocol",
        protocol,
        "--connections",
        "2",
        "--procs",
        "1",
        "--publish",
        "3",
        "--publish-interval",
        "50ms",
        "--hold",
        "200ms",
        "--source-ips",
        "127.0.0.1",
    ])
}

#[test]
fn ids_in_order_with_nothing_lost_pass() {
    // nchan's ids roll over from one second's tags to the next.
    for (protocol, ids) in [
        (
            "holdfast",
            ["1795299660917246", "1795299660917247", "1795299660917300"],
        ),
        ("nchan", ["1795299650:0", "1795299650:1", "1795299651:0"]),
    ] {
        let script = (0..3).map(|k| vec![(Some(ids[k]), k + 1)]).collect();
        let (code, s) = run(protocol, script);
        assert_eq!(code, 0, "{protocol}: {s:#}");
        assert_eq!(s["received"], 6, "{protocol}: {s:#}");
        assert_eq!(s["lost"], 0, "{protocol}: {s:#}");
        assert_eq!(s["errors"], serde_json::json!({}), "{protocol}: {s:#}");
        assert_eq!(s["latency_us"]["count"], 6, "{protocol}: {s:#}");
    }
}

#[test]
fn ids_going_back_missing_ids_and_payloads_out_of_order_are_counted() {
    for (protocol, ids) in [
        ("holdfast", ["200", "100", "300", "bogus:1"]),
        ("nchan", ["20:1", "20:0", "21:0", "300"]),
    ] {
        let script = vec![
            vec![(Some(ids[0]), 1)],
            // The id goes back; the payload is the right one, so it is received.
            vec![(Some(ids[1]), 2)],
            // A good one, then message 1 again, once without an id and once with an id
            // that is not of this dialect.
            vec![(Some(ids[2]), 3), (None, 1), (Some(ids[3]), 1)],
        ];
        let (code, s) = run(protocol, script);
        assert_eq!(code, 1, "{protocol}: order errors fail the run: {s:#}");
        assert_eq!(s["ok"], false, "{protocol}: {s:#}");
        assert_eq!(s["received"], 6, "{protocol}: {s:#}");
        assert_eq!(s["lost"], 0, "{protocol}: {s:#}");
        assert_eq!(s["duplicates"], 0, "{protocol}: {s:#}");
        assert_eq!(
            s["errors"],
            serde_json::json!({"event_id_order": 2, "bad_event_id": 4, "out_of_order": 4}),
            "{protocol}: {s:#}"
        );
    }
}
