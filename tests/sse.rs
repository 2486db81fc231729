//! Server-Sent Events: the response head and preamble, the exact event framing (line
//! splitting, `event:` for multi-channel streams, base64 `event: binary`), cursors
//! (`since`, `Last-Event-ID`, none), gaps, channel deletion, heartbeats, cutting off a
//! reader that stopped reading, `/stats` `sse_streams`, mixed fan-out with long-polls,
//! resuming, and shutdown.

mod common;

use std::time::{Duration, Instant};

use common::http::{Conn, IO_TIMEOUT};
use common::protocol::{
    assert_delivery, id_num, park, publish, publish_full, publish_id, request, stat, wait_stat,
};
use common::server::Server;
use common::sse::{Sse, SseEvent, SSE_PREAMBLE};
use common::streams::{connect_small_rcvbuf, sized_payload};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// The exact text of a non-binary event: `id:`, `event:` if named, one `data:` per line.
fn text_event(id: &str, event: Option<&str>, lines: &[&str]) -> String {
    let mut s = format!("id: {id}\n");
    if let Some(e) = event {
        s.push_str(&format!("event: {e}\n"));
    }
    for l in lines {
        s.push_str(&format!("data: {l}\n"));
    }
    s.push('\n');
    s
}

/// Publishes and returns the id, asserting the server stored it.
fn pub_id(s: &Server, channel: &str, body: impl AsRef<[u8]>) -> String {
    publish(s.admin, channel, body)
}

/// Text payloads and the `data:` lines each must become (split on CRLF, CR or LF).
const TEXT_CASES: &[(&[u8], &[&str])] = &[
    (b"hello", &["hello"]),
    (b"a\nb\r\nc\rd", &["a", "b", "c", "d"]),
    (b"", &[""]),
    (b"end\n", &["end", ""]),
    (b"x\r\n\r\ny", &["x", "", "y"]),
    (b"\r\n", &["", ""]),
    (b"\n\r", &["", "", ""]),
    (b"\r\r\n", &["", "", ""]),
    (b"\n\nmiddle\n\n", &["", "", "middle", "", ""]),
    (
        "h\u{e9}llo w\u{f6}rld \u{2713} \u{1d11e}".as_bytes(),
        &["h\u{e9}llo w\u{f6}rld \u{2713} \u{1d11e}"],
    ),
    (
        b"data: injected\n\nid: 1\nevent: x\nretry: 1",
        &["data: injected", "", "id: 1", "event: x", "retry: 1"],
    ),
    (b":not a comment", &[":not a comment"]),
    (b"  spaces  \ttab\t", &["  spaces  \ttab\t"]),
    (b"nul\x00byte", &["nul\x00byte"]),
];

/// Non-UTF-8 payloads and their standard, padded base64.
const BINARY_CASES: &[(&[u8], &str)] = &[
    (b"\xff\x00ab", "/wBhYg=="),
    (b"\xff", "/w=="),
    (b"\xc3\x28", "wyg="),
    (b"\x80\x81\x82", "gIGC"),
    (b"ok\xe2\x82", "b2vigg=="),
    (b"\xed\xa0\x80", "7aCA"),
    (b"\xff\n\xfe", "/wr+"),
    (b"line\r\n\xfe", "bGluZQ0K/g=="),
];

/// Decodes standard, padded base64 (strict: a wrong length, character or padding is an
/// error).
fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let b = s.as_bytes();
    if b.len() % 4 != 0 {
        return Err(format!("length {} is not a multiple of 4", b.len()));
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (i, q) in b.chunks(4).enumerate() {
        let last = i == b.len() / 4 - 1;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err(format!(
                "bad padding in quad {i} {:?}",
                &s[i * 4..i * 4 + 4]
            ));
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = n << 6 | val(c).ok_or_else(|| format!("bad base64 character {:?}", c as char))?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Ok(out)
}

#[test]
fn base64_decoder_self_check() {
    for (raw, enc) in BINARY_CASES {
        assert_eq!(base64_decode(enc).as_deref(), Ok(*raw), "{enc}");
    }
    assert!(base64_decode("/w=").is_err());
    assert!(base64_decode("/w==/w==").is_err());
    assert!(base64_decode("/w-=").is_err());
}

// ---------------------------------------------------------------------------------

#[test]
fn stream_head_is_close_delimited_event_stream_starting_with_retry() {
    let s = Server::start(&[]);
    let mut c = Sse::begin(Conn::open(s.public), "/sub/head", &[]);
    let h = c.read_head(IO_TIMEOUT).expect("event-stream head");
    assert_eq!(h.status, 200, "{}", h.brief());
    assert_eq!(
        h.header("content-type"),
        Some("text/event-stream"),
        "{}",
        h.brief()
    );
    assert_eq!(h.header("cache-control"), Some("no-store"), "{}", h.brief());
    assert_eq!(h.header("x-accel-buffering"), Some("no"), "{}", h.brief());
    assert!(h.closes(), "no `Connection: close`: {}", h.brief());
    assert!(
        h.header("content-length").is_none(),
        "an event stream has no Content-Length: {}",
        h.brief()
    );
    assert!(
        h.header("transfer-encoding").is_none(),
        "the stream is close-delimited, not chunked: {}",
        h.brief()
    );
    // The body begins with exactly `retry: 2000\n\n`.
    let first = c.block();
    assert_eq!(first, SSE_PREAMBLE);
    assert!(c.comments.is_empty(), "comments before the preamble");
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    // Nothing more until something is published; the stream stays open.
    c.quiet_for(300 * MS).unwrap();
    assert!(
        c.comments.is_empty(),
        "unexpected comments: {:?}",
        c.comments
    );
    let id = pub_id(&s, "head", b"first");
    assert_eq!(c.block(), text_event(&id, None, &["first"]));
}

#[test]
fn live_events_are_framed_line_by_line() {
    let s = Server::start(&[]);
    let mut c = Sse::open(s.public, "/sub/fr", &[]);
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    for (payload, lines) in TEXT_CASES {
        let id = pub_id(&s, "fr", payload);
        let got = c
            .next_block(IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("event for {payload:?}: {e}"));
        assert_eq!(
            got,
            text_event(&id, None, lines),
            "payload {:?}",
            String::from_utf8_lossy(payload)
        );
        // What EventSource hands the application is the payload with breaks as `\n`.
        let ev = SseEvent::parse(got);
        assert_eq!(ev.data(), lines.join("\n"));
    }
    c.quiet_for(200 * MS).unwrap();
}

#[test]
fn buffered_events_use_the_same_framing() {
    let s = Server::start(&["--buffer-messages", "64"]);
    let ids: Vec<String> = TEXT_CASES
        .iter()
        .map(|(p, _)| pub_id(&s, "bf", p))
        .collect();
    let mut c = Sse::open(s.public, "/sub/bf?since=0", &[]);
    for ((payload, lines), id) in TEXT_CASES.iter().zip(&ids) {
        let got = c
            .next_block(IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("replayed event for {payload:?}: {e}"));
        assert_eq!(
            got,
            text_event(id, None, lines),
            "payload {:?}",
            String::from_utf8_lossy(payload)
        );
    }
    c.quiet_for(200 * MS).unwrap();
}

#[test]
fn non_utf8_payload_is_a_base64_binary_event() {
    let s = Server::start(&["--buffer-messages", "64"]);
    let mut live = Sse::open(s.public, "/sub/bin", &[]);
    let mut multi = Sse::open(s.public, "/sub/bin,other", &[]);
    wait_stat(s.admin, "sse_streams", 2, 5 * SEC);

    // A long one, checked by decoding: every byte value, starting with an invalid one.
    let long: Vec<u8> = (0..3001u32)
        .map(|i| (255u32.wrapping_sub(i * 7)) as u8)
        .collect();
    assert!(std::str::from_utf8(&long).is_err());

    let mut ids = Vec::new();
    for (payload, b64) in BINARY_CASES {
        let id = pub_id(&s, "bin", payload);
        let want = format!("id: {id}\nevent: binary\ndata: {b64}\n\n");
        assert_eq!(live.block(), want, "payload {payload:?} (single channel)");
        // A binary event is `event: binary` on multi-channel streams too.
        assert_eq!(multi.block(), want, "payload {payload:?} (two channels)");
        ids.push(id);
    }
    let id = pub_id(&s, "bin", &long);
    for c in [&mut live, &mut multi] {
        let ev = c.event();
        assert_eq!(ev.id(), Some(id.as_str()));
        assert_eq!(ev.event(), Some("binary"), "{:?}", ev.raw);
        let data = ev.data_lines();
        assert_eq!(data.len(), 1, "base64 must be one data line: {:?}", ev.raw);
        assert_eq!(
            base64_decode(data[0]).unwrap_or_else(|e| panic!("{e}: {:?}", data[0])),
            long
        );
        assert_eq!(ev.fields.len(), 3, "{:?}", ev.raw);
    }
    ids.push(id);

    // The same frames when replayed from the buffer.
    let mut replay = Sse::open(s.public, "/sub/bin?since=0", &[]);
    for ((_, b64), id) in BINARY_CASES.iter().zip(&ids) {
        assert_eq!(
            replay.block(),
            format!("id: {id}\nevent: binary\ndata: {b64}\n\n")
        );
    }
    let ev = replay.event();
    assert_eq!(ev.id(), Some(ids.last().unwrap().as_str()));
    assert_eq!(base64_decode(&ev.data()).unwrap(), long);
}

#[test]
fn multi_channel_stream_names_each_event_single_channel_stream_does_not() {
    let s = Server::start(&[]);
    let mut single = Sse::open(s.public, "/sub/na", &[]);
    let mut multi = Sse::open(s.public, "/sub/na,nb", &[]);
    let mut other = Sse::open(s.public, "/sub/nb,nc", &[]);
    wait_stat(s.admin, "sse_streams", 3, 5 * SEC);

    let a = pub_id(&s, "na", b"x\ny");
    assert_eq!(single.block(), text_event(&a, None, &["x", "y"]));
    assert_eq!(multi.block(), text_event(&a, Some("na"), &["x", "y"]));

    let b = pub_id(&s, "nb", b"");
    assert_eq!(multi.block(), text_event(&b, Some("nb"), &[""]));
    assert_eq!(other.block(), text_event(&b, Some("nb"), &[""]));

    let c = pub_id(&s, "nc", b"cc");
    assert_eq!(other.block(), text_event(&c, Some("nc"), &["cc"]));

    single.quiet_for(200 * MS).unwrap();
    multi.quiet_for(MS).unwrap();
    other.quiet_for(MS).unwrap();
}

#[test]
fn stream_without_cursor_gets_only_new_messages() {
    let s = Server::start(&[]);
    let old = pub_id(&s, "nc", b"old");
    let mut c = Sse::open(s.public, "/sub/nc", &[]);
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    c.quiet_for(300 * MS)
        .unwrap_or_else(|e| panic!("message published before the stream was sent: {e}"));
    let new = pub_id(&s, "nc", b"new");
    assert!(id_num(&new) > id_num(&old));
    assert_eq!(c.block(), text_event(&new, None, &["new"]));
}

#[test]
fn since_replays_newer_buffered_messages_in_order_then_live_ones() {
    let s = Server::start(&[]);
    let mut ids = Vec::new();
    for i in 1..=4 {
        ids.push(pub_id(&s, "rp", format!("m{i}").as_bytes()));
        pub_id(&s, "noise", b"not for rp");
    }
    let mut c = Sse::open(s.public, &format!("/sub/rp?since={}", ids[1]), &[]);
    assert_eq!(c.block(), text_event(&ids[2], None, &["m3"]));
    assert_eq!(c.block(), text_event(&ids[3], None, &["m4"]));
    c.quiet_for(300 * MS).unwrap();

    let mut all = Sse::open(s.public, "/sub/rp?since=0", &[]);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(all.block(), text_event(id, None, &[&format!("m{}", i + 1)]));
    }
    all.quiet_for(MS).unwrap();

    let live = pub_id(&s, "rp", b"m5");
    assert_eq!(c.block(), text_event(&live, None, &["m5"]));
    assert_eq!(all.block(), text_event(&live, None, &["m5"]));
}

#[test]
fn last_event_id_header_is_the_cursor_and_the_newer_of_it_and_since_wins() {
    let s = Server::start(&[]);
    let ids: Vec<String> = (1..=3)
        .map(|i| pub_id(&s, "le", format!("m{i}").as_bytes()))
        .collect();
    let mut c = Sse::open(s.public, "/sub/le", &[("Last-Event-ID", &ids[0])]);
    assert_eq!(c.block(), text_event(&ids[1], None, &["m2"]));
    assert_eq!(c.block(), text_event(&ids[2], None, &["m3"]));
    c.quiet_for(300 * MS).unwrap();

    let mut both = Sse::open(
        s.public,
        &format!("/sub/le?since={}", ids[1]),
        &[("Last-Event-ID", &ids[0])],
    );
    assert_eq!(both.block(), text_event(&ids[2], None, &["m3"]));
    both.quiet_for(300 * MS).unwrap();

    // A reconnect to a `?since=` URL carries a newer Last-Event-ID: no replay from `since`.
    let mut again = Sse::open(
        s.public,
        &format!("/sub/le?since={}", ids[0]),
        &[("Last-Event-ID", &ids[1])],
    );
    assert_eq!(again.block(), text_event(&ids[2], None, &["m3"]));
    again.quiet_for(300 * MS).unwrap();
}

#[test]
fn multi_channel_replay_is_in_id_order() {
    let s = Server::start(&[]);
    let plan = [
        ("ma", "a1"),
        ("mb", "b1"),
        ("ma", "a2"),
        ("mb", "b2"),
        ("ma", "a3"),
    ];
    let ids: Vec<String> = plan
        .iter()
        .map(|(ch, p)| pub_id(&s, ch, p.as_bytes()))
        .collect();
    let mut c = Sse::open(s.public, "/sub/mb,ma?since=0", &[]);
    for ((ch, p), id) in plan.iter().zip(&ids) {
        assert_eq!(c.block(), text_event(id, Some(ch), &[p]));
    }
    c.quiet_for(200 * MS).unwrap();
    let live = pub_id(&s, "mb", b"b3");
    assert_eq!(c.block(), text_event(&live, Some("mb"), &["b3"]));
}

#[test]
fn gap_is_a_lost_event_naming_the_next_id_right_before_it() {
    let s = Server::start(&["--buffer-messages", "2"]);
    let ids: Vec<String> = (1..=4)
        .map(|i| pub_id(&s, "gap", format!("m{i}").as_bytes()))
        .collect();
    // m1 and m2 are evicted. A client that saw m1 missed m2.
    for headers in [vec![], vec![("Last-Event-ID", ids[0].as_str())]] {
        let path = if headers.is_empty() {
            format!("/sub/gap?since={}", ids[0])
        } else {
            "/sub/gap".to_string()
        };
        let mut c = Sse::open(s.public, &path, &headers);
        assert_eq!(
            c.block(),
            format!("event: lost\ndata: {}\n\n", ids[2]),
            "{path} {headers:?}"
        );
        assert_eq!(c.block(), text_event(&ids[2], None, &["m3"]));
        assert_eq!(c.block(), text_event(&ids[3], None, &["m4"]));
        c.quiet_for(200 * MS).unwrap();
    }
    // A client that saw m2 missed nothing; since=0 means "whatever is buffered".
    for path in [
        format!("/sub/gap?since={}", ids[1]),
        "/sub/gap?since=0".into(),
    ] {
        let mut c = Sse::open(s.public, &path, &[]);
        assert_eq!(c.block(), text_event(&ids[2], None, &["m3"]), "{path}");
        assert_eq!(c.block(), text_event(&ids[3], None, &["m4"]), "{path}");
        c.quiet_for(200 * MS).unwrap();
    }
    // On a two-channel stream the gap is reported the same way.
    let mut c = Sse::open(s.public, &format!("/sub/gap,x?since={}", ids[0]), &[]);
    assert_eq!(c.block(), format!("event: lost\ndata: {}\n\n", ids[2]));
    assert_eq!(c.block(), text_event(&ids[2], Some("gap"), &["m3"]));
    assert_eq!(c.block(), text_event(&ids[3], Some("gap"), &["m4"]));
}

/// A stream on two channels, one of which expired and was freed while the client was
/// away: the gap is announced with the first event, even when that event comes from the
/// other channel (the cursor moves past the freed channel's lost ids with it).
#[test]
fn a_gap_on_a_freed_channel_is_announced_on_a_multi_channel_stream() {
    let s = Server::start(&["--message-ttl", "1"]);
    let read = pub_id(&s, "away", b"read");
    pub_id(&s, "away", b"missed");
    std::thread::sleep(Duration::from_millis(2500));
    wait_stat(s.admin, "channels", 0, 3 * SEC);

    let mut c = Sse::open(s.public, &format!("/sub/away,other?since={read}"), &[]);
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    let next = pub_id(&s, "other", b"next");
    assert_eq!(c.block(), format!("event: lost\ndata: {next}\n\n"));
    assert_eq!(c.block(), text_event(&next, Some("other"), &["next"]));
    // Announced once.
    let after = pub_id(&s, "away", b"after");
    assert_eq!(c.block(), text_event(&after, Some("away"), &["after"]));
}

#[test]
fn deleting_the_channel_sends_deleted_then_closes_the_stream() {
    let s = Server::start(&[]);
    let mut a = Sse::open(s.public, "/sub/gone", &[]);
    let mut b = Sse::open(s.public, "/sub/stay,gone", &[]);
    let mut c = Sse::open(s.public, "/sub/stay", &[]);
    wait_stat(s.admin, "sse_streams", 3, 5 * SEC);
    let id = pub_id(&s, "gone", b"before");
    assert_eq!(a.block(), text_event(&id, None, &["before"]));
    assert_eq!(b.block(), text_event(&id, Some("gone"), &["before"]));

    let r = request(s.admin, "DELETE", "/pub/gone", &[], None);
    assert_eq!(r.status, 204, "{}", r.brief());
    for (name, st) in [("single", &mut a), ("two-channel", &mut b)] {
        assert_eq!(
            st.next_block(5 * SEC)
                .unwrap_or_else(|e| panic!("{name} stream: {e}")),
            "event: deleted\ndata: gone\n\n",
            "{name} stream"
        );
        let rest = st
            .wait_eof(5 * SEC)
            .unwrap_or_else(|e| panic!("{name} stream after event: deleted: {e}"));
        assert!(
            rest.is_empty(),
            "{name} stream: bytes after event: deleted: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    // The stream on the other channel is untouched.
    let id = pub_id(&s, "stay", b"still here");
    assert_eq!(c.block(), text_event(&id, None, &["still here"]));
}

#[test]
fn idle_stream_gets_a_heartbeat_comment_every_interval() {
    let s = Server::start(&["--sse-heartbeat", "1"]);
    let mut c = Sse::open(s.public, "/sub/hb", &[]);
    let opened = Instant::now();
    let blocks = c.blocks_for(2500 * MS).expect("stream stays open");
    assert!(blocks.is_empty(), "events on an idle stream: {blocks:?}");
    let lines: Vec<&str> = c.comments.iter().map(|(_, l)| l.as_str()).collect();
    // A comment line is `: hb` and a newline; nothing else (no `\r`, no other text).
    assert!(
        lines.iter().all(|l| *l == ": hb"),
        "heartbeat lines: {lines:?}"
    );
    assert!(
        (2..=3).contains(&lines.len()),
        "{} heartbeats in 2.5 s with --sse-heartbeat 1: {lines:?}",
        lines.len()
    );
    let mut prev = opened;
    for (i, (t, _)) in c.comments.iter().enumerate() {
        let gap = t.duration_since(prev);
        assert!(
            gap >= 800 * MS,
            "heartbeat {i} came {gap:?} after the previous one (or the open)"
        );
        prev = *t;
    }
    // Events still frame correctly between heartbeats.
    let id = pub_id(&s, "hb", b"after beats");
    assert_eq!(c.block(), text_event(&id, None, &["after beats"]));
}

#[test]
fn stream_that_stops_reading_is_cut_off_while_a_reader_gets_everything() {
    const SIZE: usize = 60_000;
    const MAX_PUBLISHES: usize = 600;
    const KEPT: usize = 4;
    let s = Server::start(&[
        "--sse-max-backlog",
        "64KiB",
        "--max-message-size",
        "64KiB",
        "--buffer-messages",
        "4",
    ]);
    let payload = |i: usize| sized_payload(i, SIZE).into_bytes();
    // Warm-up: one message of full size through publish and a stream.
    let mut fast = Sse::open(s.public, "/sub/bp", &[]);
    let warm = pub_id(&s, "bp", payload(0));
    assert_eq!(fast.event().id(), Some(warm.as_str()));

    let mut slow = Sse::begin(
        Conn::from_stream(connect_small_rcvbuf(s.public, 4096)),
        "/sub/bp",
        &[],
    );
    wait_stat(s.admin, "sse_streams", 2, 5 * SEC);
    let rss_before = stat(s.admin, "rss_bytes");

    let t = Instant::now();
    let mut published: Vec<String> = Vec::new();
    let mut cut_after = None;
    for i in 1..=MAX_PUBLISHES {
        if t.elapsed() > 60 * SEC {
            break;
        }
        let id = pub_id(&s, "bp", payload(i));
        let ev = fast
            .next_event(IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("reading stream missed message {i}: {e}"));
        assert_eq!(ev.id(), Some(id.as_str()), "reading stream, message {i}");
        assert!(
            ev.data().as_bytes() == payload(i),
            "reading stream, message {i}: payload differs ({} bytes)",
            ev.data().len()
        );
        published.push(id);
        if stat(s.admin, "sse_streams") < 2 {
            cut_after = Some(i);
            break;
        }
    }
    let Some(cut_after) = cut_after else {
        panic!(
            "a stream that never reads was not cut off after {} messages of {SIZE} bytes \
             in {:?} with --sse-max-backlog 64KiB",
            published.len(),
            t.elapsed()
        )
    };
    eprintln!(
        "non-reading stream cut off after {cut_after} messages ({} bytes) in {:?}",
        cut_after * SIZE,
        t.elapsed()
    );
    // The reader keeps receiving every message after the cut.
    for i in cut_after + 1..=cut_after + 5 {
        let id = pub_id(&s, "bp", payload(i));
        let ev = fast.event();
        assert_eq!(ev.id(), Some(id.as_str()), "reading stream, message {i}");
        assert!(
            ev.data().as_bytes() == payload(i),
            "reading stream, message {i}: payload differs"
        );
        published.push(id);
    }
    assert_eq!(stat(s.admin, "sse_streams"), 1);
    let rss_after = stat(s.admin, "rss_bytes");
    eprintln!("server RSS {rss_before} -> {rss_after}");
    assert!(
        rss_after < rss_before + 4 * 1024 * 1024,
        "server RSS grew from {rss_before} to {rss_after} while a stream was not reading"
    );

    // The cut-off client reads what the kernel held, then end of stream.
    slow.expect_stream_start(IO_TIMEOUT);
    let mut slow_ids: Vec<String> = Vec::new();
    let deadline = Instant::now() + 30 * SEC;
    let eof = loop {
        match slow.poll_block(deadline) {
            Ok(Some(b)) => {
                let ev = SseEvent::parse(b);
                let id = ev
                    .id()
                    .unwrap_or_else(|| panic!("{:?}", ev.raw))
                    .to_string();
                slow_ids.push(id);
            }
            Ok(None) => break false,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break true,
            Err(e) => panic!("reading the cut-off stream: {e}"),
        }
    };
    assert!(
        eof,
        "cut-off stream not closed after {} events",
        slow_ids.len()
    );
    assert!(
        slow_ids.len() < published.len(),
        "cut-off stream got every message"
    );
    // What it got is an in-order prefix of what was published after it opened.
    assert_eq!(slow_ids[..], published[..slow_ids.len()]);

    // Resuming from its last event loses nothing still buffered.
    let last = slow_ids.last().cloned().unwrap_or(warm);
    let mut again = Sse::open(s.public, "/sub/bp", &[("Last-Event-ID", &last)]);
    let pos = published
        .iter()
        .position(|id| *id == last)
        .map_or(0, |p| p + 1);
    let missing = &published[pos..];
    let buffered = &published[published.len() - KEPT..];
    if missing.len() > buffered.len() {
        assert_eq!(
            again.block(),
            format!("event: lost\ndata: {}\n\n", buffered[0])
        );
    }
    for id in missing.iter().rev().take(KEPT).rev() {
        assert_eq!(again.event().id(), Some(id.as_str()));
    }
    again.quiet_for(200 * MS).unwrap();
}

#[test]
fn slow_reader_within_the_backlog_catches_up_and_loses_nothing() {
    // 3.6 MB published while the client reads nothing: more than a 4 KiB receive buffer
    // and the kernel's send buffer hold, so the server queues the rest, but less than
    // the backlog allowed, so the stream must survive and deliver everything in order.
    const SIZE: usize = 60_000;
    const COUNT: usize = 60;
    let s = Server::start(&[
        "--sse-max-backlog",
        "8MiB",
        "--max-message-size",
        "64KiB",
        "--buffer-messages",
        "4",
    ]);
    let mut slow = Sse::begin(
        Conn::from_stream(connect_small_rcvbuf(s.public, 4096)),
        "/sub/catch",
        &[],
    );
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    let payload = |i: usize| sized_payload(i, SIZE).into_bytes();
    let ids: Vec<String> = (0..COUNT)
        .map(|i| pub_id(&s, "catch", payload(i)))
        .collect();
    assert_eq!(
        stat(s.admin, "sse_streams"),
        1,
        "stream cut off below its backlog"
    );
    slow.expect_stream_start(IO_TIMEOUT);
    for (i, id) in ids.iter().enumerate() {
        let ev = slow
            .next_event(IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("message {i} of {COUNT}: {e}"));
        assert_eq!(ev.id(), Some(id.as_str()), "message {i}");
        assert!(
            ev.data().as_bytes() == payload(i),
            "message {i}: payload differs ({} bytes)",
            ev.data().len()
        );
    }
    // Caught up: live delivery goes on.
    let id = pub_id(&s, "catch", b"live");
    assert_eq!(slow.block(), text_event(&id, None, &["live"]));
    assert_eq!(stat(s.admin, "sse_streams"), 1);
}

#[test]
fn sse_streams_stat_counts_open_streams() {
    let s = Server::start(&[]);
    assert_eq!(stat(s.admin, "sse_streams"), 0);
    let a = Sse::open(s.public, "/sub/st", &[]);
    let b = Sse::open(s.public, "/sub/st,other", &[]);
    let c = Sse::open(s.public, "/sub/elsewhere?since=0", &[]);
    wait_stat(s.admin, "sse_streams", 3, 5 * SEC);
    // A parked long-poll is `parked`, not a stream, and streams are not `parked`.
    assert_eq!(stat(s.admin, "parked"), 0);
    let poll = park(s.public, "/sub/st?timeout=30");
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    assert_eq!(stat(s.admin, "sse_streams"), 3);

    drop(b);
    wait_stat(s.admin, "sse_streams", 2, 5 * SEC);
    drop(a);
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    drop(c);
    wait_stat(s.admin, "sse_streams", 0, 5 * SEC);
    drop(poll);
    wait_stat(s.admin, "parked", 0, 5 * SEC);
    assert_eq!(stat(s.admin, "sse_streams"), 0);
}

#[test]
fn long_polls_and_streams_on_one_channel_share_one_publish() {
    let s = Server::start(&[]);
    let mut polls: Vec<Conn> = (0..3)
        .map(|_| park(s.public, "/sub/mix?timeout=30"))
        .collect();
    let mut streams: Vec<Sse> = (0..3)
        .map(|i| {
            let path = if i == 2 { "/sub/mix,side" } else { "/sub/mix" };
            Sse::open(s.public, path, &[])
        })
        .collect();
    wait_stat(s.admin, "parked", 3, 5 * SEC);
    wait_stat(s.admin, "sse_streams", 3, 5 * SEC);

    let r = publish_full(s.admin, "mix", b"to everyone", None);
    let id = publish_id(&r);
    assert_eq!(
        r.json()["subscribers"].as_u64(),
        Some(6),
        "subscribers in {}",
        r.brief()
    );
    for p in &mut polls {
        assert_eq!(assert_delivery(&p.response(), "mix", b"to everyone"), id);
    }
    for (i, st) in streams.iter_mut().enumerate() {
        let name = (i == 2).then_some("mix");
        assert_eq!(st.block(), text_event(&id, name, &["to everyone"]));
    }
    wait_stat(s.admin, "parked", 0, 5 * SEC);
    assert_eq!(stat(s.admin, "sse_streams"), 3);
    // Streams stay subscribed; the next publish reaches them again.
    let id2 = pub_id(&s, "mix", b"again");
    for st in &mut streams {
        assert_eq!(st.event().id(), Some(id2.as_str()));
    }
}

#[test]
fn resume_with_last_event_id_gets_exactly_the_missing_messages() {
    let s = Server::start(&[]);
    let mut c = Sse::open(s.public, "/sub/rs", &[]);
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(pub_id(&s, "rs", format!("m{i}").as_bytes()));
    }
    // Read two; the third reaches the socket but the client goes away first.
    assert_eq!(c.block(), text_event(&ids[0], None, &["m1"]));
    assert_eq!(c.block(), text_event(&ids[1], None, &["m2"]));
    drop(c);
    wait_stat(s.admin, "sse_streams", 0, 5 * SEC);
    for i in 4..=6 {
        ids.push(pub_id(&s, "rs", format!("m{i}").as_bytes()));
    }

    let mut c = Sse::open(s.public, "/sub/rs", &[("Last-Event-ID", &ids[1])]);
    for (i, id) in ids.iter().enumerate().skip(2) {
        assert_eq!(
            c.block(),
            text_event(id, None, &[&format!("m{}", i + 1)]),
            "resumed message {}",
            i + 1
        );
    }
    c.quiet_for(300 * MS)
        .unwrap_or_else(|e| panic!("duplicates after resuming: {e}"));
    let id7 = pub_id(&s, "rs", b"m7");
    assert_eq!(c.block(), text_event(&id7, None, &["m7"]));
    c.quiet_for(200 * MS).unwrap();
}

#[test]
fn sigterm_ends_streams_after_flushing_and_exits_zero() {
    let mut s = Server::start(&[]);
    let mut a = Sse::open(s.public, "/sub/down", &[]);
    let mut b = Sse::open(s.public, "/sub/down,other", &[]);
    wait_stat(s.admin, "sse_streams", 2, 5 * SEC);
    // A message handed to both streams but not yet read by either client.
    let delivered = stat(s.admin, "delivered");
    let id = pub_id(&s, "down", b"last words");
    wait_stat(s.admin, "delivered", delivered + 2, 5 * SEC);

    s.terminate();
    let t = Instant::now();
    let budget = 2500 * MS;
    assert_eq!(a.block(), text_event(&id, None, &["last words"]));
    assert_eq!(b.block(), text_event(&id, Some("down"), &["last words"]));
    for (name, st) in [("a", &mut a), ("b", &mut b)] {
        let left = budget.saturating_sub(t.elapsed()).max(MS);
        let rest = st
            .wait_eof(left)
            .unwrap_or_else(|e| panic!("stream {name} after SIGTERM: {e}"));
        assert!(
            rest.is_empty(),
            "stream {name}: unfinished bytes at the end: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    // Nothing was left to flush, so the streams end at once rather than when a grace
    // period runs out or the process exits.
    assert!(
        t.elapsed() < SEC,
        "idle streams ended {:?} after SIGTERM",
        t.elapsed()
    );
    let left = budget.saturating_sub(t.elapsed()).max(MS);
    let status = s
        .wait_exit(left)
        .unwrap_or_else(|| panic!("server still running {budget:?} after SIGTERM"));
    assert!(status.success(), "exit {status:?}; output:\n{}", s.output());
    assert!(t.elapsed() <= budget, "took {:?}", t.elapsed());
}

/// Regression: a stream's head and replay were written while the connection's buffers
/// were out of their slot, so what the socket did not take at once was queued in a
/// second buffer that was then dropped — the client got a cut-off first event and then
/// live events after it (holdfast before 2026-12-02). A replay far larger than the
/// socket buffers must arrive whole, in order, followed by a live event.
#[test]
fn a_replay_larger_than_the_socket_buffers_arrives_whole() {
    const N: usize = 8;
    const SIZE: usize = 1 << 20;
    let s = Server::start(&[
        "--max-message-size",
        "1MiB",
        "--buffer-messages",
        "16",
        "--sse-max-backlog",
        "64MiB",
    ]);
    let payload = |i: usize| {
        let mut p = format!("message {i:02} ").into_bytes();
        p.resize(SIZE, b'a' + i as u8);
        p
    };
    let ids: Vec<String> = (0..N).map(|i| pub_id(&s, "big", payload(i))).collect();
    let mut c = Sse::begin(
        Conn::from_stream(connect_small_rcvbuf(s.public, 4096)),
        "/sub/big?since=0",
        &[],
    );
    // Let the server write what the socket takes and queue the rest before reading.
    std::thread::sleep(Duration::from_millis(300));
    c.expect_stream_start(10 * SEC);
    for (i, id) in ids.iter().enumerate() {
        let ev = c.event_within(30 * SEC);
        assert_eq!(ev.id(), Some(id.as_str()), "replayed message {i}");
        assert!(
            ev.data().as_bytes() == payload(i),
            "replayed message {i}: payload differs ({} bytes)",
            ev.data().len()
        );
    }
    let live = pub_id(&s, "big", b"live");
    let ev = c.event_within(10 * SEC);
    assert_eq!(
        (ev.id(), ev.data()),
        (Some(live.as_str()), "live".to_string())
    );
}

/// An EventSource that reconnects after the server restarted sends a `Last-Event-ID`
/// of the old run: the events that run buffered and the client never read are gone,
/// so the stream says `event: lost` before the first event — whether that event is
/// replayed at once or arrives live later.
#[test]
fn a_last_event_id_from_before_a_restart_is_told_of_the_gap() {
    let old = Server::start(&[]);
    let m1 = pub_id(&old, "r", b"m1");
    let _m2 = pub_id(&old, "r", b"m2 (never read, lost in the restart)");
    drop(old);

    let s = Server::start(&[]);
    // Nothing buffered yet: the gap is announced with the first live event.
    let mut live = Sse::open(s.public, "/sub/r", &[("Last-Event-ID", m1.as_str())]);
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    let m3 = pub_id(&s, "r", b"m3");
    assert_eq!(live.block(), format!("event: lost\ndata: {m3}\n\n"));
    assert_eq!(live.block(), text_event(&m3, None, &["m3"]));
    // m3 buffered: the gap is announced before its replay.
    let mut replay = Sse::open(s.public, "/sub/r", &[("Last-Event-ID", m1.as_str())]);
    assert_eq!(replay.block(), format!("event: lost\ndata: {m3}\n\n"));
    assert_eq!(replay.block(), text_event(&m3, None, &["m3"]));
    // A cursor of this run is not told.
    let m4 = pub_id(&s, "r", b"m4");
    let mut fine = Sse::open(s.public, "/sub/r", &[("Last-Event-ID", m3.as_str())]);
    assert_eq!(fine.block(), text_event(&m4, None, &["m4"]));
    fine.quiet_for(200 * MS).unwrap();
}
