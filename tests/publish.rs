//! Publishing on the admin listener: the 201 JSON, channel info, DELETE, size limit,
//! request body framings (Content-Length, chunked, `Expect: 100-continue`), PUT,
//! Content-Type and payload fidelity, and message ids.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::http::{assert_close_is_consistent, request_bytes, Conn};
use common::protocol::{
    assert_delivery, get, id_num, park, poll, publish, publish_full, publish_id, request, stat,
    wait_stat,
};
use common::server::Server;
use common::timing::now_micros;

const SEC: Duration = Duration::from_secs(1);

#[test]
fn publish_returns_201_with_id_channel_subscribers_and_buffered() {
    let before = now_micros();
    let s = Server::start(&["--buffer-messages", "2"]);
    let mut last = 0;
    for (i, want_buffered) in [1u64, 2, 2].into_iter().enumerate() {
        let r = publish_full(s.admin, "info", format!("m{i}").as_bytes(), None);
        assert_eq!(r.status, 201, "{}", r.brief());
        assert!(
            r.header("content-type")
                .is_some_and(|ct| ct.to_ascii_lowercase().contains("json")),
            "201 without a JSON Content-Type: {}",
            r.brief()
        );
        let v = r.json();
        let id = v["id"]
            .as_str()
            .unwrap_or_else(|| panic!("id is not a string: {v}"));
        let id = id_num(id);
        assert!(id > last, "ids not increasing: {id} after {last}");
        assert!(
            id >= before,
            "id {id} is not seeded from the wall clock in microseconds (>= {before})"
        );
        last = id;
        assert_eq!(v["channel"], "info", "{v}");
        assert_eq!(v["subscribers"].as_u64(), Some(0), "{v}");
        assert_eq!(v["buffered"].as_u64(), Some(want_buffered), "{v}");
    }
}

#[test]
fn publish_reports_the_subscribers_it_was_handed_to() {
    let s = Server::start(&[]);
    let mut polls = [
        park(s.public, "/sub/room?timeout=20"),
        park(s.public, "/sub/room?timeout=20"),
        park(s.public, "/sub/lobby,room?timeout=20"),
        park(s.public, "/sub/lobby?timeout=20"),
    ];
    wait_stat(s.admin, "parked", 4, 5 * SEC);
    let r = publish_full(s.admin, "room", b"hi all", None);
    let id = publish_id(&r);
    assert_eq!(r.json()["subscribers"].as_u64(), Some(3), "{}", r.brief());
    for c in &mut polls[..3] {
        assert_eq!(assert_delivery(&c.response(), "room", b"hi all"), id);
    }
    assert!(polls[3].quiet_for(Duration::from_millis(200)));
    // They have all left: nobody to hand the next one to.
    wait_stat(s.admin, "parked", 1, 2 * SEC);
    let r = publish_full(s.admin, "room", b"again", None);
    publish_id(&r);
    assert_eq!(r.json()["subscribers"].as_u64(), Some(0), "{}", r.brief());
}

#[test]
fn get_channel_info_and_404_for_unknown() {
    let s = Server::start(&[]);
    publish(s.admin, "inf", "one");
    let id2 = publish(s.admin, "inf", "two");
    let r = get(s.admin, "/pub/inf");
    assert_eq!(r.status, 200, "{}", r.brief());
    let v = r.json();
    assert_eq!(v["channel"], "inf", "{v}");
    assert_eq!(v["buffered"].as_u64(), Some(2), "{v}");
    assert_eq!(v["subscribers"].as_u64(), Some(0), "{v}");
    assert_eq!(v["last_id"].as_str(), Some(id2.as_str()), "{v}");

    let p = park(s.public, &format!("/sub/inf?since={id2}&timeout=20"));
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    let v = get(s.admin, "/pub/inf").json();
    assert_eq!(v["subscribers"].as_u64(), Some(1), "{v}");
    drop(p);

    let r = get(s.admin, "/pub/never-published");
    assert_eq!(r.status, 404, "{}", r.brief());
}

#[test]
fn delete_returns_204_and_parked_polls_get_410() {
    let s = Server::start(&[]);
    let id = publish(s.admin, "doomed", "x");
    let oid = publish(s.admin, "other", "y");
    let mut victim = park(s.public, &format!("/sub/doomed?since={id}&timeout=30"));
    let mut bystander = park(s.public, &format!("/sub/other?since={oid}&timeout=30"));
    wait_stat(s.admin, "parked", 2, 5 * SEC);

    let r = request(s.admin, "DELETE", "/pub/doomed", &[], None);
    assert_eq!(r.status, 204, "{}", r.brief());
    assert!(
        matches!(r.content_length(), None | Some(0)),
        "{}",
        r.brief()
    );

    let g = victim.response();
    assert_eq!(g.status, 410, "{}", g.brief());
    assert!(!g.body.is_empty(), "410 should carry a short text");

    // The other channel is untouched.
    wait_stat(s.admin, "parked", 1, 2 * SEC);
    let id2 = publish(s.admin, "other", "z");
    assert_eq!(assert_delivery(&bystander.response(), "other", b"z"), id2);

    // The channel and its messages are gone.
    let r = get(s.admin, "/pub/doomed");
    assert_eq!(r.status, 404, "{}", r.brief());
    let r = poll(s.public, "/sub/doomed?since=0&timeout=0");
    assert_eq!(
        r.status,
        204,
        "deleted messages still delivered: {}",
        r.brief()
    );
    let r = request(s.admin, "DELETE", "/pub/doomed", &[], None);
    assert_eq!(r.status, 404, "{}", r.brief());
}

#[test]
fn deleting_one_channel_of_a_multi_channel_poll_gives_410_and_unlinks_the_rest() {
    let s = Server::start(&[]);
    let mut c = park(s.public, "/sub/keep,drop?timeout=30");
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    // Nothing published to `drop` yet: it exists because someone waits on it.
    let r = request(s.admin, "DELETE", "/pub/drop", &[], None);
    assert_eq!(r.status, 204, "{}", r.brief());
    let g = c.response();
    assert_eq!(g.status, 410, "{}", g.brief());
    wait_stat(s.admin, "parked", 0, 2 * SEC);
    // The poll is gone from `keep` too: a publish there is handed to nobody.
    let r = publish_full(s.admin, "keep", b"after", None);
    assert_eq!(r.json()["subscribers"].as_u64(), Some(0), "{}", r.brief());
}

#[test]
fn delete_unknown_channel_is_404() {
    let s = Server::start(&[]);
    let r = request(s.admin, "DELETE", "/pub/nothing-here", &[], None);
    assert_eq!(r.status, 404, "{}", r.brief());
}

#[test]
fn body_over_max_message_size_is_413() {
    let s = Server::start(&["--max-message-size", "1KiB"]);
    let id = publish(s.admin, "big", vec![b'a'; 1024]);

    let mut c = Conn::open(s.admin);
    let _ = c.try_send(&request_bytes(
        "POST",
        "/pub/big",
        &[],
        Some(&vec![b'b'; 1025]),
    ));
    let r = c.response();
    assert_eq!(r.status, 413, "{}", r.brief());
    assert_close_is_consistent(&mut c, &r);

    // Chunked, over the limit only in total.
    let mut c = Conn::open(s.admin);
    let mut req = request_bytes(
        "POST",
        "/pub/big",
        &[("Transfer-Encoding", "chunked")],
        None,
    );
    for part in [600usize, 425] {
        req.extend_from_slice(format!("{part:x}\r\n").as_bytes());
        req.extend_from_slice(&vec![b'c'; part]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let _ = c.try_send(&req);
    let r = c.response();
    assert_eq!(r.status, 413, "chunked: {}", r.brief());

    // Neither oversized body was stored.
    let v = get(s.admin, "/pub/big").json();
    assert_eq!(v["buffered"].as_u64(), Some(1), "{v}");
    assert_eq!(v["last_id"].as_str(), Some(id.as_str()), "{v}");
}

#[test]
fn oversized_content_length_with_expect_is_rejected_before_the_body() {
    let s = Server::start(&["--max-message-size", "1KiB"]);
    let mut c = Conn::open(s.admin);
    c.send_request(
        "POST",
        "/pub/big",
        &[("Expect", "100-continue"), ("Content-Length", "2000")],
        None,
    );
    let r = c.response();
    assert_eq!(r.status, 413, "{}", r.brief());
}

/// A body under --max-message-size (64 KiB by default) sent in 1-byte chunks: 6 raw
/// bytes per payload byte, 240 KB of framing for 40,000 bytes. It must be accepted,
/// however the client chose to chunk it, not stall at a raw-buffer limit.
#[test]
fn a_body_in_one_byte_chunks_is_accepted_up_to_the_message_size() {
    let s = Server::start(&[]);
    let payload: Vec<u8> = (0..40_000).map(|i| b'a' + (i % 26) as u8).collect();
    let mut raw = request_bytes(
        "POST",
        "/pub/tiny-chunks",
        &[("Transfer-Encoding", "chunked")],
        None,
    );
    for &b in &payload {
        raw.extend_from_slice(b"1\r\n");
        raw.push(b);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let mut c = Conn::open(s.admin);
    c.send(&raw);
    let r = c.response();
    let id = publish_id(&r);
    let m = poll(s.public, "/sub/tiny-chunks?since=0&timeout=0");
    assert_eq!(assert_delivery(&m, "tiny-chunks", &payload), id);
}

#[test]
fn chunked_publish_body_is_reassembled() {
    let s = Server::start(&[]);
    let mut c = Conn::open(s.admin);
    c.send(&request_bytes(
        "POST",
        "/pub/chunky",
        &[
            ("Transfer-Encoding", "chunked"),
            ("Content-Type", "text/plain"),
        ],
        None,
    ));
    for part in [
        "5\r\nhello\r\n",
        "6\r\n world\r\n",
        "A\r\n, chunked!\r\n",
        "0\r\n\r\n",
    ] {
        std::thread::sleep(Duration::from_millis(30));
        c.send(part.as_bytes());
    }
    let r = c.response();
    let id = publish_id(&r);
    // The connection is positioned after the body.
    let h = c.get("/health");
    assert_eq!(h.status, 200, "{}", h.brief());

    let m = poll(s.public, "/sub/chunky?since=0&timeout=0");
    assert_eq!(assert_delivery(&m, "chunky", b"hello world, chunked!"), id);
    assert_eq!(m.header("content-type"), Some("text/plain"));
}

#[test]
fn chunked_body_with_extensions_and_trailers() {
    let s = Server::start(&[]);
    let mut c = Conn::open(s.admin);
    let mut req = request_bytes(
        "POST",
        "/pub/ext",
        &[("Transfer-Encoding", "chunked")],
        None,
    );
    req.extend_from_slice(b"3;name=value\r\nabc\r\n3\r\ndef\r\n0\r\nX-Trailer: t\r\n\r\n");
    c.send(&req);
    let id = publish_id(&c.response());
    assert_eq!(c.get("/health").status, 200);
    let m = poll(s.public, "/sub/ext?since=0&timeout=0");
    assert_eq!(assert_delivery(&m, "ext", b"abcdef"), id);
}

#[test]
fn expect_100_continue_is_honoured() {
    let s = Server::start(&[]);
    let mut c = Conn::open(s.admin);
    c.send_request(
        "POST",
        "/pub/ask",
        &[("Expect", "100-continue"), ("Content-Length", "5")],
        None,
    );
    c.set_read_timeout(5 * SEC);
    let interim = c
        .read_any_response()
        .expect("no 100 Continue before the body was sent");
    assert_eq!(interim.status, 100, "{}", interim.brief());
    assert_eq!(interim.version, "HTTP/1.1");
    c.send(b"hello");
    let r = c.response();
    let id = publish_id(&r);
    let m = poll(s.public, "/sub/ask?since=0&timeout=0");
    assert_eq!(assert_delivery(&m, "ask", b"hello"), id);
}

#[test]
fn put_publishes_like_post() {
    let s = Server::start(&[]);
    let r = request(s.admin, "PUT", "/pub/putch", &[], Some(b"via put"));
    let id = publish_id(&r);
    assert_eq!(r.json()["channel"], "putch");
    let m = poll(s.public, "/sub/putch?since=0&timeout=0");
    assert_eq!(assert_delivery(&m, "putch", b"via put"), id);
}

#[test]
fn content_type_is_kept_and_defaults_to_octet_stream() {
    let s = Server::start(&[]);
    let id1 = publish_id(&publish_full(
        s.admin,
        "ct",
        br#"{"k":1}"#,
        Some("application/json; charset=utf-8"),
    ));
    let id2 = publish_id(&publish_full(s.admin, "ct", b"raw", None));

    let r = poll(s.public, "/sub/ct?since=0&timeout=0");
    assert_eq!(assert_delivery(&r, "ct", br#"{"k":1}"#), id1);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let r = poll(s.public, &format!("/sub/ct?since={id1}&timeout=0"));
    assert_eq!(assert_delivery(&r, "ct", b"raw"), id2);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
}

fn binary_payload() -> Vec<u8> {
    let mut p: Vec<u8> = (0..=255u8).collect();
    p.extend_from_slice(b"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\0\0\xff");
    p.extend((0..=255u8).rev());
    p
}

#[test]
fn payload_is_delivered_byte_for_byte() {
    let s = Server::start(&[]);
    let payload = binary_payload();
    let id = publish(s.admin, "bin", &payload);
    let r = poll(s.public, "/sub/bin?since=0&timeout=0");
    assert_eq!(assert_delivery(&r, "bin", &payload), id);
    assert_eq!(r.content_length(), Some(payload.len() as u64));

    // The same through the wake-up path of a parked poll.
    let mut c = park(s.public, &format!("/sub/bin?since={id}&timeout=20"));
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    let id2 = publish(s.admin, "bin", &payload);
    assert_eq!(assert_delivery(&c.response(), "bin", &payload), id2);
}

#[test]
fn largest_allowed_payload_is_delivered_intact() {
    let s = Server::start(&[]);
    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let id = publish(s.admin, "max", &payload);
    let mut c = park(s.public, &format!("/sub/max?since={id}&timeout=20"));
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    let id2 = publish(s.admin, "max", &payload);
    assert_eq!(assert_delivery(&c.response(), "max", &payload), id2);
    let r = poll(s.public, "/sub/max?since=0&timeout=0");
    assert_eq!(assert_delivery(&r, "max", &payload), id);
}

#[test]
fn empty_payload_is_delivered() {
    let s = Server::start(&[]);
    let id = publish(s.admin, "void", b"");
    let r = poll(s.public, "/sub/void?since=0&timeout=0");
    assert_eq!(assert_delivery(&r, "void", b""), id);
    assert_eq!(r.content_length(), Some(0));
}

#[test]
fn ids_strictly_increase_across_channels() {
    let s = Server::start(&[]);
    let mut c = Conn::open(s.admin);
    let mut last = 0u64;
    for i in 0..60 {
        let ch = format!("ch{}", i % 6);
        let r = c.request("POST", &format!("/pub/{ch}"), &[], Some(b"x"));
        let id = id_num(&publish_id(&r));
        assert!(id > last, "id {id} after {last} (publish {i} on {ch})");
        last = id;
    }

    // Concurrent publishers never get the same id.
    let admin = s.admin;
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Conn::open(admin);
                (0..50)
                    .map(|_| {
                        let r = c.request("POST", &format!("/pub/t{t}"), &[], Some(b"y"));
                        id_num(&publish_id(&r))
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut all = HashSet::new();
    for h in handles {
        let ids = h.join().expect("publisher thread");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        for id in ids {
            assert!(id > last, "id {id} not above earlier {last}");
            assert!(all.insert(id), "duplicate id {id}");
        }
    }
}

#[test]
fn ids_never_go_backwards_across_a_restart() {
    let s = Server::start(&[]);
    let mut last = 0;
    for _ in 0..20 {
        last = id_num(&publish(s.admin, "r", "x"));
    }
    drop(s);
    let s = Server::start(&[]);
    let first = id_num(&publish(s.admin, "r", "y"));
    assert!(first > last, "id {first} after restart is not above {last}");
}

#[test]
fn bad_channel_name_on_publish_is_400() {
    let s = Server::start(&[]);
    let long = "p".repeat(129);
    for bad in ["a$b", "a+b", "a,b", "", long.as_str()] {
        let r = request(s.admin, "POST", &format!("/pub/{bad}"), &[], Some(b"x"));
        assert_eq!(r.status, 400, "channel {bad:?}: {}", r.brief());
    }
    let ok = "p".repeat(128);
    publish(s.admin, &ok, "fits");
}

#[test]
fn publishing_is_impossible_on_the_public_listener() {
    let s = Server::start(&[]);
    for method in ["POST", "PUT", "GET", "DELETE"] {
        let r = request(s.public, method, "/pub/sneaky", &[], Some(b"x"));
        assert_eq!(r.status, 404, "{method} /pub on public: {}", r.brief());
    }
    let r = get(s.admin, "/pub/sneaky");
    assert_eq!(r.status, 404, "a message was stored: {}", r.brief());
    assert_eq!(stat(s.admin, "published"), 0);
}
