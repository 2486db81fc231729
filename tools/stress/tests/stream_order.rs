//! The WebSocket and ndjson modes end to end against a scripted server, as
//! `sse_order.rs` does for SSE: a thread answers the stress tool's subscribe requests
//! (a `101` with the right `Sec-WebSocket-Accept`, or a chunked `application/x-ndjson`
//! head) and, on each publish, writes what a script says to every stream: JSON-envelope
//! objects with chosen ids and payloads (holdfast), raw payload frames (nchan), and the
//! heartbeats, fragments and signals a real server may send between them. Nothing here
//! needs a holdfast or nchan binary, so these tests always run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

mod common;

use common::stress;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    /// holdfast's WebSocket: one text frame per JSON object.
    Ws,
    /// nchan's WebSocket: the raw payload in a text frame.
    NchanWs,
    /// holdfast's ndjson: one chunk per line, empty lines as heartbeats.
    Ndjson,
}

/// What the server writes on a publish: a message (its `id`, none when `None`, and the
/// payload of which publish, 1-based), or a literal object/line/frame.
#[derive(Clone, Copy)]
enum Out {
    Msg(Option<&'static str>, usize),
    Raw(&'static str),
    /// A WebSocket close frame with this code (ndjson: the terminating chunk).
    Close(u16),
}

fn read_request(s: &mut TcpStream) -> (String, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = header(&head, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
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

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An unmasked server frame with FIN set.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    if payload.len() < 126 {
        f.push(payload.len() as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

/// One ndjson line as holdfast sends it: a chunk holding the line and its newline.
fn chunk(line: &[u8]) -> Vec<u8> {
    let mut c = format!("{:x}\r\n", line.len() + 1).into_bytes();
    c.extend_from_slice(line);
    c.extend_from_slice(b"\n\r\n");
    c
}

/// What every stream gets for one publish.
fn render(t: Transport, outs: &[Out], payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut w = Vec::new();
    // A heartbeat first, so every publish also checks that one is skipped.
    w.extend(match t {
        Transport::Ndjson => b"1\r\n\n\r\n".to_vec(),
        _ => frame(0x9, b""),
    });
    for out in outs {
        match *out {
            Out::Msg(id, which) => {
                let data = String::from_utf8(payloads[which - 1].clone()).unwrap();
                let obj = match id {
                    Some(id) => json!({"id": id, "channel": "c", "data": data}),
                    None => json!({"channel": "c", "data": data}),
                };
                let text = obj.to_string();
                w.extend(match t {
                    Transport::Ndjson => chunk(text.as_bytes()),
                    Transport::Ws => {
                        // Fragmented, with a ping between the fragments.
                        let (a, b) = text.as_bytes().split_at(text.len() / 2);
                        let mut first = frame(0x1, a);
                        first[0] &= 0x7F;
                        [first, frame(0x9, b"x"), frame(0x0, b)].concat()
                    }
                    Transport::NchanWs => frame(0x1, data.as_bytes()),
                });
            }
            Out::Raw(text) => w.extend(match t {
                Transport::Ndjson => chunk(text.as_bytes()),
                _ => frame(0x1, text.as_bytes()),
            }),
            Out::Close(code) => w.extend(match t {
                Transport::Ndjson => b"0\r\n\r\n".to_vec(),
                _ => frame(0x8, &code.to_be_bytes()),
            }),
        }
    }
    w
}

/// Starts the scripted server; returns (public, admin) addresses. `script[k]` is what
/// every stream gets when publish k + 1 arrives. Its threads end with the test process.
fn scripted_server(t: Transport, script: Vec<Vec<Out>>) -> (String, String) {
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
            if t == Transport::Ndjson {
                assert!(head.starts_with("GET /sub/c?stream=ndjson "), "{head}");
                s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
                      Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                )
                .unwrap();
            } else {
                assert_eq!(header(&head, "upgrade"), Some("websocket"), "{head}");
                assert_eq!(header(&head, "sec-websocket-version"), Some("13"));
                let key = header(&head, "sec-websocket-key").expect("a key");
                let nonce = base64::engine::general_purpose::STANDARD
                    .decode(key)
                    .unwrap();
                assert_eq!(nonce.len(), 16, "{key}");
                let mut h = Sha1::new();
                h.update(key.as_bytes());
                h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
                let accept = base64::engine::general_purpose::STANDARD.encode(h.finalize());
                write!(
                    s,
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .unwrap();
            }
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
                (
                    "200 OK",
                    format!(r#"{{"websockets":{n},"ndjson_streams":{n}}}"#),
                )
            } else {
                assert!(head.starts_with("POST /pub/"), "{head}");
                payloads.push(body);
                let outs = script.get(payloads.len() - 1).cloned().unwrap_or_default();
                let bytes = render(t, &outs, &payloads);
                for sub in streams.lock().unwrap().iter_mut() {
                    // A stream the tool already dropped (after a close frame) may be gone.
                    let _ = sub.write_all(&bytes);
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

/// Runs the stress tool against the scripted server: 2 streams, 3 publishes.
fn run(t: Transport, script: Vec<Vec<Out>>) -> (i32, Value) {
    let (public, admin) = scripted_server(t, script);
    let (mode, protocol) = match t {
        Transport::Ws => ("websocket", "holdfast"),
        Transport::NchanWs => ("websocket", "nchan"),
        Transport::Ndjson => ("ndjson", "holdfast"),
    };
    stress(&[
        "--target",
        &public,
        "--admin",
        &admin,
        "--mode",
        mode,
        "--protocol",
        protocol,
        "--channel",
        "c",
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
fn messages_in_order_pass_through_heartbeats_and_fragments() {
    for t in [Transport::Ws, Transport::NchanWs, Transport::Ndjson] {
        let ids = ["1795299660917246", "1795299660917247", "1795299660917300"];
        let script = (0..3)
            .map(|k| vec![Out::Msg(Some(ids[k]), k + 1)])
            .collect();
        let (code, s) = run(t, script);
        assert_eq!(code, 0, "{t:?}: {s:#}");
        assert_eq!(s["held"], 2, "{t:?}: {s:#}");
        assert_eq!(s["received"], 6, "{t:?}: {s:#}");
        assert_eq!(s["lost"], 0, "{t:?}: {s:#}");
        assert_eq!(s["errors"], json!({}), "{t:?}: {s:#}");
        assert_eq!(s["latency_us"]["count"], 6, "{t:?}: {s:#}");
        assert!(
            s["message_bytes"].as_u64().unwrap() > 6 * 10,
            "{t:?}: {s:#}"
        );
    }
}

#[test]
fn ids_going_back_missing_ids_and_payloads_out_of_order_are_counted() {
    for t in [Transport::Ws, Transport::Ndjson] {
        let script = vec![
            vec![Out::Msg(Some("200"), 1)],
            // The id goes back; the payload is the right one, so it is received.
            vec![Out::Msg(Some("100"), 2)],
            // A good one, then message 1 again, once without an id and once with an id
            // that is not holdfast's.
            vec![
                Out::Msg(Some("300"), 3),
                Out::Msg(None, 1),
                Out::Msg(Some("1795299650:0"), 1),
            ],
        ];
        let (code, s) = run(t, script);
        assert_eq!(code, 1, "{t:?}: order errors fail the run: {s:#}");
        assert_eq!(s["received"], 6, "{t:?}: {s:#}");
        assert_eq!(s["lost"], 0, "{t:?}: {s:#}");
        assert_eq!(
            s["errors"],
            json!({"event_id_order": 2, "bad_event_id": 4, "out_of_order": 4}),
            "{t:?}: {s:#}"
        );
    }
}

#[test]
fn signals_foreign_objects_and_the_end_of_a_stream_are_counted() {
    for (t, end) in [
        (Transport::Ws, "ws_close_1000"),
        (Transport::Ndjson, "closed"),
    ] {
        let script = vec![
            vec![
                Out::Raw(r#"{"event":"lost","next":"5"}"#),
                Out::Msg(Some("5"), 1),
                Out::Raw("t=1;n=1"),
                Out::Raw(r#"{"id":"6","channel":"c","data":"AAE=","encoding":"base64"}"#),
                Out::Raw(r#"{"id":"7","channel":"other","data":"t=1;n=1"}"#),
            ],
            vec![Out::Msg(Some("8"), 2)],
            vec![
                Out::Msg(Some("9"), 3),
                Out::Raw(r#"{"event":"deleted","channel":"c"}"#),
                Out::Close(1000),
            ],
        ];
        let (code, s) = run(t, script);
        // Every message arrived in order: these errors say what else came, and do not
        // fail the run by themselves.
        assert_eq!(code, 0, "{t:?}: {s:#}");
        assert_eq!(
            (&s["received"], &s["lost"]),
            (&json!(6), &json!(0)),
            "{s:#}"
        );
        let mut want = json!({
            "messages_lost": 2,
            "bad_envelope": 2,
            "bad_payload": 2,
            "unexpected_message": 2,
            "channel_deleted": 2,
        });
        want[end] = json!(2);
        assert_eq!(s["errors"], want, "{t:?}: {s:#}");
    }
}
