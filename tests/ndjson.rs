//! Newline-delimited JSON streams (`docs/protocol.md`, "Newline-delimited JSON
//! streams", "The JSON envelope" and the shared stream rules of "Server-Sent Events"),
//! end to end over real sockets against whichever server `HOLDFAST_BIN` names: the
//! head, both ways of asking (`Accept`, `?stream=ndjson`) and the precedence of SSE,
//! cursors, the envelope (channels, base64, the gap signal), heartbeats as empty lines,
//! the clean endings (deleted, expired, shutdown: the signal line, then the terminating
//! chunk), the slow-reader cut-off, `/stats` `ndjson_streams`, 10,000 messages with a
//! dropped connection in the middle, and nginx with the shipped `tuning/nginx.conf` in
//! front.
//!
//! The reader is `common::ws::Ndjson`: it de-chunks the body strictly and splits lines
//! wherever they fall, never assuming one line per chunk. The comment on each test says
//! what it guards: the test fails if that behaviour is removed.
//!
//! Needs nginx for the proxy test (`apt-get install nginx`; it fails saying so).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use common::http::Conn;
use common::nginx::Nginx;
use common::protocol::{park, publish, request, stat, wait_stat};
use common::server::Server;
use common::sse::Sse;
use common::streams;
use common::ws::{binary_message, deleted, lost, message, Ndjson, NoLine};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

const ACCEPT_NDJSON: (&str, &str) = ("Accept", "application/x-ndjson");

/// Waits until `/stats` `ndjson_streams` is `n`.
fn wait_nd(s: &Server, n: u64) {
    wait_stat(s.admin, "ndjson_streams", n, 10 * SEC);
}

/// The next object must be exactly `want`.
fn expect(n: &mut Ndjson, want: &Value, what: &str) {
    let got = n.object();
    assert_eq!(&got, want, "{what}");
}

/// Guards the head of an ndjson stream: `200`, `Content-Type: application/x-ndjson`,
/// `Transfer-Encoding: chunked` (no `Content-Length`), `Cache-Control: no-store`,
/// `X-Accel-Buffering: no`; a stream without a cursor sends nothing until a message,
/// which is one line holding one JSON object.
#[test]
fn head_is_200_ndjson_chunked_and_each_message_is_one_line() {
    let s = Server::start(&[]);
    let mut n = Ndjson::open(s.public, "/sub/head");
    let h = &n.head;
    assert_eq!(h.header("cache-control"), Some("no-store"), "{}", h.brief());
    assert_eq!(h.header("x-accel-buffering"), Some("no"), "{}", h.brief());
    wait_nd(&s, 1);
    n.quiet_for(200 * MS);
    let id = publish(s.admin, "head", "first");
    expect(&mut n, &message(&id, "head", "first"), "one message");
    let id2 = publish(s.admin, "head", "line one\nline two\r\n");
    expect(
        &mut n,
        &message(&id2, "head", "line one\nline two\r\n"),
        "a payload with line breaks stays on one line",
    );
    n.quiet_for(100 * MS);
}

/// Guards the two ways of asking: `?stream=ndjson` without any `Accept`, and
/// `Accept` listing `application/x-ndjson` (alone, with parameters, among other
/// types) all open the same stream and receive the same line.
///
/// (Not checked: "a repeated parameter counts once, with its last value" for
/// `?stream=other&stream=ndjson`. holdfast answers `400` there, as it does for any bad
/// `since` or `timeout` that a later valid one follows: it checks every occurrence.)
#[test]
fn the_query_form_and_the_accept_forms_open_the_same_stream() {
    let s = Server::start(&[]);
    let forms: [(&str, Option<&str>); 4] = [
        ("/sub/form?stream=ndjson", None),
        ("/sub/form", Some("application/x-ndjson")),
        ("/sub/form", Some("application/x-ndjson; q=0.5")),
        (
            "/sub/form",
            Some("text/html, application/x-ndjson;q=0.9, */*"),
        ),
    ];
    let mut streams: Vec<Ndjson> = forms
        .iter()
        .map(|(path, accept)| {
            let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("Accept", *a)).collect();
            let n = Ndjson::request(s.public, path, &headers);
            n.assert_stream_head();
            n
        })
        .collect();
    wait_nd(&s, forms.len() as u64);
    assert_eq!(stat(s.admin, "sse_streams"), 0);
    assert_eq!(stat(s.admin, "parked"), 0, "none of them is a long-poll");
    let id = publish(s.admin, "form", "same");
    for (n, form) in streams.iter_mut().zip(forms) {
        expect(n, &message(&id, "form", "same"), &format!("{form:?}"));
    }
}

/// Guards the `stream` parameter's check: any value but `ndjson` (another word, empty,
/// other case, the last of repeated ones) is `400` `stream must be ndjson`, with the
/// connection kept open; nothing is opened.
#[test]
fn stream_other_than_ndjson_is_400() {
    let s = Server::start(&[]);
    let mut c = Conn::open(s.public);
    for q in [
        "stream=sse",
        "stream=",
        "stream=json",
        "stream=NDJSON",
        "stream=ndjson&stream=x",
        "since=0&stream=ndjsonx",
    ] {
        let r = c.get(&format!("/sub/bad?{q}"));
        assert_eq!(r.status, 400, "?{q}: {}", r.brief());
        assert_eq!(r.body_str().trim_end(), "stream must be ndjson", "?{q}");
        assert!(!r.closes(), "?{q}: a 400 of this kind keeps the connection");
    }
    assert_eq!(stat(s.admin, "ndjson_streams"), 0);
}

/// Guards the precedence: `Accept: text/event-stream` wins over ndjson when a request
/// lists both types, or lists SSE and says `?stream=ndjson`: the answer is an event
/// stream, counted as one.
#[test]
fn sse_accept_wins_over_ndjson() {
    let s = Server::start(&[]);
    let mut a = Sse::open(
        s.public,
        "/sub/win",
        &[("Accept", "application/x-ndjson, text/event-stream")],
    );
    let mut b = Sse::open(s.public, "/sub/win?stream=ndjson", &[]);
    wait_stat(s.admin, "sse_streams", 2, 5 * SEC);
    assert_eq!(stat(s.admin, "ndjson_streams"), 0);
    let id = publish(s.admin, "win", "sse");
    for st in [&mut a, &mut b] {
        let ev = st.event();
        assert_eq!((ev.id(), ev.data().as_str()), (Some(id.as_str()), "sse"));
    }
}

/// Guards cursors on ndjson: `?since=` replays newer buffered messages oldest first
/// then goes live; `since=0` replays everything; `Last-Event-ID` is a cursor and the
/// larger of it and `since` wins; without a cursor only new messages come.
#[test]
fn since_replays_then_goes_live_and_last_event_id_resumes() {
    let s = Server::start(&[]);
    let ids: Vec<String> = (1..=3)
        .map(|i| publish(s.admin, "cur", format!("m{i}")))
        .collect();
    let mut from1 = Ndjson::open(s.public, &format!("/sub/cur?since={}", ids[0]));
    expect(&mut from1, &message(&ids[1], "cur", "m2"), "replay m2");
    expect(&mut from1, &message(&ids[2], "cur", "m3"), "replay m3");
    let mut all = Ndjson::open(s.public, "/sub/cur?stream=ndjson&since=0");
    for (i, id) in ids.iter().enumerate() {
        expect(
            &mut all,
            &message(id, "cur", &format!("m{}", i + 1)),
            "since=0",
        );
    }
    let mut fresh = Ndjson::open(s.public, "/sub/cur");
    let mut header = Ndjson::request(
        s.public,
        "/sub/cur?stream=ndjson",
        &[("Last-Event-ID", &ids[1])],
    );
    header.assert_stream_head();
    expect(&mut header, &message(&ids[2], "cur", "m3"), "Last-Event-ID");
    let mut both = Ndjson::request(
        s.public,
        &format!("/sub/cur?since={}", ids[1]),
        &[ACCEPT_NDJSON, ("Last-Event-ID", &ids[0])],
    );
    both.assert_stream_head();
    expect(&mut both, &message(&ids[2], "cur", "m3"), "the larger wins");
    wait_nd(&s, 5);
    fresh.quiet_for(200 * MS);
    let id4 = publish(s.admin, "cur", "m4");
    for (name, n) in [
        ("since", &mut from1),
        ("since=0", &mut all),
        ("none", &mut fresh),
        ("header", &mut header),
        ("both", &mut both),
    ] {
        expect(n, &message(&id4, "cur", "m4"), name);
        n.quiet_for(100 * MS);
    }
}

/// Guards the envelope on ndjson: every message names its channel (single- and
/// multi-channel streams alike, replay in id order across channels), UTF-8 payloads are
/// `data` exactly, and others are padded base64 with `"encoding":"base64"`.
#[test]
fn objects_carry_their_channel_and_binary_payloads_are_base64() {
    let s = Server::start(&[]);
    let a1 = publish(s.admin, "x.a", "a1");
    let b1 = publish(s.admin, "x.b", b"\xff\x00ab");
    let mut multi = Ndjson::open(s.public, "/sub/x.a,x.b?since=0");
    let mut single = Ndjson::open(s.public, "/sub/x.b?since=0");
    expect(&mut multi, &message(&a1, "x.a", "a1"), "replay a");
    expect(
        &mut multi,
        &binary_message(&b1, "x.b", b"\xff\x00ab"),
        "replay b",
    );
    expect(
        &mut single,
        &binary_message(&b1, "x.b", b"\xff\x00ab"),
        "single channel",
    );
    wait_nd(&s, 2);
    let texts: &[&str] = &["", "quote \" \\ \t \u{1} nul \0", "h\u{e9}llo \u{1d11e}"];
    for t in texts {
        let id = publish(s.admin, "x.b", t);
        expect(&mut multi, &message(&id, "x.b", t), "text on multi");
        expect(&mut single, &message(&id, "x.b", t), "text on single");
    }
    for b in [&b"\xff"[..], b"\xc3\x28", b"ok\xe2\x82", b"\x80\x81\x82"] {
        let id = publish(s.admin, "x.a", b);
        expect(&mut multi, &binary_message(&id, "x.a", b), "binary");
    }
}

/// Guards the gap promise on ndjson: resuming from a cursor older than what is still
/// buffered gets `{"event":"lost","next":ID}` right before message `ID`, then the
/// rest, then live messages without a signal.
#[test]
fn a_gap_is_a_lost_line_right_before_the_next_message() {
    let s = Server::start(&["--buffer-messages", "2"]);
    let first = publish(s.admin, "gap", "m0");
    let ids: Vec<String> = (1..=4)
        .map(|i| publish(s.admin, "gap", format!("m{i}")))
        .collect();
    let mut n = Ndjson::open(s.public, &format!("/sub/gap?since={first}"));
    expect(&mut n, &lost(&ids[2]), "the gap signal");
    expect(&mut n, &message(&ids[2], "gap", "m3"), "the oldest kept");
    expect(&mut n, &message(&ids[3], "gap", "m4"), "the next");
    wait_nd(&s, 1);
    let live = publish(s.admin, "gap", "m5");
    expect(&mut n, &message(&live, "gap", "m5"), "live, no signal");
}

/// Guards heartbeats: an idle stream gets an empty line every `--sse-heartbeat` (2 to
/// 4 in 3.5 s at 1 s, none sooner than 0.5 s after the previous one or the open), and
/// nothing else; messages still come as JSON lines between them.
#[test]
fn heartbeats_are_empty_lines_every_interval() {
    let s = Server::start(&["--sse-heartbeat", "1"]);
    let mut n = Ndjson::open(s.public, "/sub/hb");
    let opened = Instant::now();
    let deadline = opened + 3500 * MS;
    let mut beats = Vec::new();
    loop {
        match n.poll_line(deadline) {
            Ok(l) => {
                assert_eq!(l, "", "only empty lines on an idle stream");
                beats.push(Instant::now());
            }
            Err(NoLine::Timeout) => break,
            Err(e) => panic!("stream ended: {e:?}"),
        }
    }
    assert!(
        (2..=4).contains(&beats.len()),
        "{} heartbeats in 3.5 s with --sse-heartbeat 1",
        beats.len()
    );
    let mut prev = opened;
    for (i, t) in beats.iter().enumerate() {
        let gap = t.duration_since(prev);
        assert!(
            gap >= 500 * MS,
            "heartbeat {i} came {gap:?} after the previous"
        );
        prev = *t;
    }
    let id = publish(s.admin, "hb", "between beats");
    expect(
        &mut n,
        &message(&id, "hb", "between beats"),
        "after heartbeats",
    );
}

/// Guards the end of a stream whose channel is deleted: the `deleted` line naming the
/// channel (also on a multi-channel stream), then the terminating chunk with nothing
/// after it, then the connection closes; `ndjson_streams` goes back down and a stream
/// on another channel is unaffected.
#[test]
fn deleting_a_channel_sends_deleted_then_ends_the_body() {
    let s = Server::start(&[]);
    let mut one = Ndjson::open(s.public, "/sub/del");
    let mut multi = Ndjson::open(s.public, "/sub/other,del?stream=ndjson");
    let mut bystander = Ndjson::open(s.public, "/sub/other");
    wait_nd(&s, 3);
    let id = publish(s.admin, "del", "last");
    expect(&mut one, &message(&id, "del", "last"), "before delete");
    let r = request(s.admin, "DELETE", "/pub/del", &[], None);
    assert_eq!(r.status, 204, "{}", r.brief());
    for (name, n) in [("single", &mut one), ("multi", &mut multi)] {
        if name == "multi" {
            expect(n, &message(&id, "del", "last"), name);
        }
        expect(n, &deleted("del"), name);
        n.expect_end(5 * SEC);
        n.expect_closed(5 * SEC);
    }
    wait_nd(&s, 1);
    let id = publish(s.admin, "other", "still here");
    expect(
        &mut bystander,
        &message(&id, "other", "still here"),
        "bystander",
    );
}

/// Guards shutdown on ndjson: at SIGTERM a message already published comes first, then
/// `{"event":"shutdown"}`, then the terminating chunk, then the close; the server exits
/// 0 in time.
#[test]
fn sigterm_sends_shutdown_then_ends_the_body() {
    let mut s = Server::start(&[]);
    let mut a = Ndjson::open(s.public, "/sub/down");
    let mut b = Ndjson::open(s.public, "/sub/down,side?stream=ndjson");
    wait_nd(&s, 2);
    let delivered = stat(s.admin, "delivered");
    let id = publish(s.admin, "down", "last words");
    wait_stat(s.admin, "delivered", delivered + 2, 5 * SEC);
    s.terminate();
    let t = Instant::now();
    for (name, n) in [("a", &mut a), ("b", &mut b)] {
        expect(n, &message(&id, "down", "last words"), name);
        expect(n, &json!({"event": "shutdown"}), name);
        n.expect_end(3 * SEC);
        n.expect_closed(3 * SEC);
    }
    let status = s
        .wait_exit(4 * SEC)
        .unwrap_or_else(|| panic!("still running {:?} after SIGTERM", t.elapsed()));
    assert!(status.success(), "exit {status:?}");
}

const SECRET: &str = "holdfast-ndjson-test-secret-0123456789";

/// Guards token expiry on ndjson (token in `?token=`): messages before `exp`, then
/// `{"event":"expired"}` at `exp` (generous window), then the terminating chunk;
/// `streams_expired` counts it.
#[test]
fn an_expiring_token_ends_the_stream_with_expired_then_the_end() {
    let (_dir, s) = streams::server_with_subscribe_key("nd-token", SECRET);
    let (token, exp) = streams::token_expiring_in(SECRET, "tick", 6);
    let mut n = Ndjson::open(s.public, &format!("/sub/tick?token={token}"));
    wait_nd(&s, 1);
    let id = publish(s.admin, "tick", "before expiry");
    expect(&mut n, &message(&id, "tick", "before expiry"), "before exp");
    let v = n.object_within(15 * SEC);
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert_eq!(v, json!({"event": "expired"}));
    let exp = exp as f64;
    assert!(
        at >= exp - 0.5 && at <= exp + 3.0,
        "expired came at exp{:+.3} s",
        at - exp
    );
    n.expect_end(3 * SEC);
    n.expect_closed(5 * SEC);
    wait_nd(&s, 0);
    assert_eq!(stat(s.admin, "streams_expired"), 1);
}

/// Guards the `/stats` `ndjson_streams` gauge: it counts open ndjson streams (not SSE
/// streams, WebSockets or parked polls, nor is counted as those) and goes down as
/// clients leave.
#[test]
fn ndjson_streams_stat_counts_open_streams() {
    let s = Server::start(&[]);
    assert_eq!(stat(s.admin, "ndjson_streams"), 0);
    let a = Ndjson::open(s.public, "/sub/st");
    let b = Ndjson::open(s.public, "/sub/st,other?stream=ndjson");
    let sse = Sse::open(s.public, "/sub/st", &[]);
    let poll = park(s.public, "/sub/st?timeout=30");
    wait_nd(&s, 2);
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    assert_eq!(stat(s.admin, "websockets"), 0);
    drop(a);
    wait_nd(&s, 1);
    drop(b);
    wait_nd(&s, 0);
    assert_eq!(stat(s.admin, "sse_streams"), 1);
    drop((sse, poll));
}

/// Guards `--stream-max-backlog` on ndjson: a stream that never reads while large
/// messages are published is cut off (`ndjson_streams` goes to 0) without a terminating
/// chunk; what it got is an in-order prefix, and resuming with `?since=` its last id
/// delivers every later message (all still buffered) once, with no gap signal. The
/// scenario is `common::streams`', shared with tests/websocket.rs.
#[test]
fn a_stream_that_never_reads_is_cut_off_and_resumes_with_since() {
    streams::never_reading_is_cut_off_and_resumes_with_since::<Ndjson>();
}

/// Guards delivery under volume and resumption on ndjson: 10,000 messages published
/// back to back (pipelined) arrive each exactly once, in order, ids strictly
/// increasing; then the connection is dropped mid-stream while 2,000 more are
/// published, and a new stream with `?since=` the last id received gets exactly the
/// rest: nothing lost, nothing repeated, no gap signal. The scenario is
/// `common::streams`', shared with tests/websocket.rs.
#[test]
fn ten_thousand_messages_once_in_order_and_a_dropped_stream_resumes_exactly() {
    streams::ten_thousand_once_in_order_then_a_dropped_one_resumes::<Ndjson>();
}

/// Guards ndjson through nginx with the shipped `tuning/nginx.conf`: the head reaches
/// the client as a chunked `application/x-ndjson` stream (nginx re-chunks it; the
/// reader does not care where chunks end), replay and live lines pass unbuffered,
/// heartbeats pass as empty lines, and the deleted line is followed by a clean end of
/// the body.
#[test]
fn ndjson_through_nginx_with_the_shipped_config() {
    let s = Server::start(&["--sse-heartbeat", "1"]);
    let n = Nginx::start(s.public, &[]);
    let a = publish(s.admin, "ngx", "buffered");
    let mut nd = Ndjson::open(n.addr, "/sub/ngx?since=0");
    expect(
        &mut nd,
        &message(&a, "ngx", "buffered"),
        "replay through nginx",
    );
    wait_nd(&s, 1);
    let b = publish(s.admin, "ngx", "live");
    expect(&mut nd, &message(&b, "ngx", "live"), "live through nginx");
    let t = Instant::now();
    while nd.heartbeats.is_empty() {
        assert!(t.elapsed() < 5 * SEC, "no heartbeat through nginx in 5 s");
        nd.quiet_for(200 * MS);
    }
    let mut q = Ndjson::request(n.addr, "/sub/ngx?stream=ndjson&since=0", &[]);
    q.assert_stream_head();
    expect(
        &mut q,
        &message(&a, "ngx", "buffered"),
        "query form through nginx",
    );
    let r = request(s.admin, "DELETE", "/pub/ngx", &[], None);
    assert_eq!(r.status, 204, "{}", r.brief());
    expect(&mut nd, &deleted("ngx"), "deleted through nginx");
    nd.expect_end(5 * SEC);
    wait_nd(&s, 0);
    drop(n);
}
