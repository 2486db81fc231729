//! Long-poll subscribe: the 200/204 outcomes, cursor semantics (`since`, `since=0`, no
//! cursor, `Last-Event-ID`), timeouts and their clamp, multi-channel polls, gaps and TTL.

mod common;

use std::time::{Duration, Instant};

use common::protocol::{
    assert_delivery, cursor_now, get, id_num, park, poll, poll_with, publish, publish_full,
    publish_id, stat, wait_stat,
};
use common::server::Server;
use common::timing::assert_between;

const SEC: Duration = Duration::from_secs(1);

#[test]
fn buffered_message_is_answered_at_once_with_protocol_headers() {
    let s = Server::start(&[]);
    let r = publish_full(s.admin, "news", b"hello", Some("text/plain"));
    let id = publish_id(&r);

    let t = Instant::now();
    let r = poll(s.public, "/sub/news?since=0");
    assert!(
        t.elapsed() < 2 * SEC,
        "buffered message was not answered at once"
    );
    assert_eq!(assert_delivery(&r, "news", b"hello"), id);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain"),
        "{}",
        r.brief()
    );
    assert_eq!(r.header("cache-control"), Some("no-store"), "{}", r.brief());
    assert_eq!(r.content_length(), Some(5), "{}", r.brief());
    assert!(r.header("messages-lost").is_none(), "{}", r.brief());
}

#[test]
fn parked_poll_is_answered_by_a_publish() {
    let s = Server::start(&[]);
    let mut c = park(s.public, "/sub/wake?timeout=20");
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    assert!(
        c.quiet_for(Duration::from_millis(300)),
        "parked poll answered early"
    );

    let id = publish(s.admin, "wake", "ping");
    let r = c.response();
    assert_eq!(assert_delivery(&r, "wake", b"ping"), id);
    assert_eq!(r.header("cache-control"), Some("no-store"), "{}", r.brief());
    assert!(r.header("messages-lost").is_none(), "{}", r.brief());
    wait_stat(s.admin, "parked", 0, 2 * SEC);
}

#[test]
fn parked_poll_with_cursor_is_answered_by_a_publish() {
    let s = Server::start(&[]);
    let id1 = publish(s.admin, "c", "one");
    let mut c = park(s.public, &format!("/sub/c?since={id1}&timeout=20"));
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    let id2 = publish(s.admin, "c", "two");
    assert_eq!(assert_delivery(&c.response(), "c", b"two"), id2);
}

#[test]
fn poll_without_cursor_ignores_messages_published_before_it() {
    let s = Server::start(&[]);
    let id1 = publish(s.admin, "nc", "old");

    // Parked without a cursor: the old message is not delivered, the next one is.
    let mut c = park(s.public, "/sub/nc?timeout=20");
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    assert!(
        c.quiet_for(Duration::from_millis(300)),
        "old message delivered to a poll without cursor"
    );
    let id2 = publish(s.admin, "nc", "new");
    assert_eq!(assert_delivery(&c.response(), "nc", b"new"), id2);
    assert!(id_num(&id2) > id_num(&id1));
}

#[test]
fn timeout_without_cursor_returns_newest_id_so_nothing_is_lost_between_polls() {
    let s = Server::start(&[]);
    let id1 = publish(s.admin, "gap", "before");

    let r = poll(s.public, "/sub/gap?timeout=1");
    assert_eq!(r.status, 204, "{}", r.brief());
    assert_eq!(
        r.message_id(),
        id1,
        "204 without cursor must carry the newest id"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"), "{}", r.brief());
    assert!(r.body.is_empty());

    // Published between two polls: the next poll with the 204's cursor gets it.
    let id2 = publish(s.admin, "gap", "between");
    let r2 = poll(
        s.public,
        &format!("/sub/gap?since={}&timeout=5", r.message_id()),
    );
    assert_eq!(assert_delivery(&r2, "gap", b"between"), id2);
}

#[test]
fn short_poll_without_cursor_on_unknown_channel_gives_usable_cursor() {
    let s = Server::start(&[]);
    let t = Instant::now();
    let c0 = cursor_now(s.public, "fresh");
    assert!(t.elapsed() < 2 * SEC, "timeout=0 parked");
    let id = publish(s.admin, "fresh", "first");
    assert!(
        id_num(&id) > id_num(&c0),
        "cursor {c0} from an unknown channel would skip message {id}"
    );
    let r = poll(s.public, &format!("/sub/fresh?since={c0}&timeout=5"));
    assert_eq!(assert_delivery(&r, "fresh", b"first"), id);
}

#[test]
fn timeout_gives_204_with_the_given_cursor() {
    let s = Server::start(&[]);
    let t = Instant::now();
    let r = poll(s.public, "/sub/empty?since=0&timeout=1");
    assert_between("timeout=1", t.elapsed(), SEC / 2, 5 * SEC);
    assert_eq!(r.status, 204, "{}", r.brief());
    assert_eq!(r.message_id(), "0");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{}", r.brief());
    assert!(r.body.is_empty());
    assert!(
        matches!(r.content_length(), None | Some(0)),
        "{}",
        r.brief()
    );

    let id = publish(s.admin, "empty", "x");
    let r = poll(s.public, &format!("/sub/empty?since={id}&timeout=1"));
    assert_eq!(r.status, 204, "{}", r.brief());
    assert_eq!(r.message_id(), id);
}

#[test]
fn timeout_parameter_sets_the_hold() {
    let s = Server::start(&[]);
    let t = Instant::now();
    let r = poll(s.public, "/sub/hold?since=0&timeout=2");
    assert_eq!(r.status, 204, "{}", r.brief());
    assert_between(
        "timeout=2",
        t.elapsed(),
        Duration::from_millis(1500),
        6 * SEC,
    );
}

#[test]
fn poll_timeout_flag_is_the_default_hold() {
    let s = Server::start(&["--poll-timeout", "1"]);
    let t = Instant::now();
    let r = poll(s.public, "/sub/dflt?since=0");
    assert_eq!(r.status, 204, "{}", r.brief());
    assert_between("--poll-timeout 1", t.elapsed(), SEC / 2, 5 * SEC);
}

#[test]
fn poll_timeout_flag_accepts_milliseconds() {
    let s = Server::start(&["--poll-timeout", "500ms"]);
    let t = Instant::now();
    let r = poll(s.public, "/sub/ms?since=0");
    assert_eq!(r.status, 204, "{}", r.brief());
    assert_between(
        "--poll-timeout 500ms",
        t.elapsed(),
        Duration::from_millis(250),
        4 * SEC,
    );
}

#[test]
fn timeout_is_clamped_to_max_poll_timeout() {
    let s = Server::start(&["--poll-timeout", "1", "--max-poll-timeout", "1"]);
    let t = Instant::now();
    let r = poll(s.public, "/sub/clamp?since=0&timeout=100");
    assert_eq!(r.status, 204, "{}", r.brief());
    assert_between("timeout=100 clamped to 1", t.elapsed(), SEC / 2, 5 * SEC);
}

#[test]
fn timeout_zero_is_short_polling() {
    let s = Server::start(&[]);
    let t = Instant::now();
    let r = poll(s.public, "/sub/short?since=0&timeout=0");
    assert!(
        t.elapsed() < 2 * SEC,
        "timeout=0 parked for {:?}",
        t.elapsed()
    );
    assert_eq!(r.status, 204, "{}", r.brief());
    assert_eq!(r.message_id(), "0");

    let id = publish(s.admin, "short", "now");
    let r = poll(s.public, "/sub/short?since=0&timeout=0");
    assert_eq!(assert_delivery(&r, "short", b"now"), id);
    let t = Instant::now();
    let r = poll(s.public, &format!("/sub/short?since={id}&timeout=0"));
    assert!(
        t.elapsed() < 2 * SEC,
        "timeout=0 parked for {:?}",
        t.elapsed()
    );
    assert_eq!(r.status, 204, "{}", r.brief());
    assert_eq!(r.message_id(), id);
}

#[test]
fn since_returns_the_oldest_newer_message() {
    let s = Server::start(&[]);
    let ids: Vec<String> = ["m1", "m2", "m3"]
        .iter()
        .map(|b| publish(s.admin, "seq", b))
        .collect();
    let r = poll(s.public, "/sub/seq?since=0&timeout=0");
    assert_eq!(assert_delivery(&r, "seq", b"m1"), ids[0]);
    let r = poll(s.public, &format!("/sub/seq?since={}&timeout=0", ids[0]));
    assert_eq!(assert_delivery(&r, "seq", b"m2"), ids[1]);
    let r = poll(s.public, &format!("/sub/seq?since={}&timeout=0", ids[1]));
    assert_eq!(assert_delivery(&r, "seq", b"m3"), ids[2]);
    let r = poll(s.public, &format!("/sub/seq?since={}&timeout=1", ids[2]));
    assert_eq!(r.status, 204, "{}", r.brief());
    assert_eq!(r.message_id(), ids[2]);
}

#[test]
fn since_zero_returns_oldest_buffered_and_never_reports_loss() {
    let s = Server::start(&["--buffer-messages", "2"]);
    for b in ["a", "b", "c", "d"] {
        publish(s.admin, "z", b);
    }
    let r = poll(s.public, "/sub/z?since=0&timeout=0");
    assert_delivery(&r, "z", b"c");
    assert!(
        r.header("messages-lost").is_none(),
        "since=0 must not report loss: {}",
        r.brief()
    );
}

#[test]
fn cursor_older_than_an_evicted_message_reports_messages_lost() {
    let s = Server::start(&["--buffer-messages", "2"]);
    let ids: Vec<String> = ["m1", "m2", "m3", "m4"]
        .iter()
        .map(|b| publish(s.admin, "lossy", b))
        .collect();

    // Cursor m1: m2 was evicted, so the oldest buffered (m3) comes with Messages-Lost.
    let r = poll(s.public, &format!("/sub/lossy?since={}&timeout=0", ids[0]));
    assert_eq!(assert_delivery(&r, "lossy", b"m3"), ids[2]);
    assert_eq!(r.header("messages-lost"), Some("true"), "{}", r.brief());

    // Cursor m2: everything after it is still buffered, nothing lost.
    let r = poll(s.public, &format!("/sub/lossy?since={}&timeout=0", ids[1]));
    assert_eq!(assert_delivery(&r, "lossy", b"m3"), ids[2]);
    assert!(r.header("messages-lost").is_none(), "{}", r.brief());

    let r = poll(s.public, &format!("/sub/lossy?since={}&timeout=0", ids[2]));
    assert_eq!(assert_delivery(&r, "lossy", b"m4"), ids[3]);
    assert!(r.header("messages-lost").is_none(), "{}", r.brief());
}

#[test]
fn last_event_id_header_is_the_cursor_without_since() {
    let s = Server::start(&[]);
    let id1 = publish(s.admin, "lei", "one");
    let id2 = publish(s.admin, "lei", "two");
    let r = poll_with(s.public, "/sub/lei?timeout=1", &[("Last-Event-ID", &id1)]);
    assert_eq!(assert_delivery(&r, "lei", b"two"), id2);

    let r = poll_with(s.public, "/sub/lei?timeout=1", &[("Last-Event-ID", &id2)]);
    assert_eq!(r.status, 204, "{}", r.brief());
    assert_eq!(r.message_id(), id2);
}

#[test]
fn the_newer_of_since_and_last_event_id_is_the_cursor() {
    let s = Server::start(&[]);
    let id1 = publish(s.admin, "both", "one");
    let id2 = publish(s.admin, "both", "two");
    // Query newer than header: the query's cursor.
    let r = poll_with(
        s.public,
        &format!("/sub/both?since={id1}&timeout=0"),
        &[("Last-Event-ID", "0")],
    );
    assert_eq!(assert_delivery(&r, "both", b"two"), id2);
    // Header newer than query (an EventSource reconnecting to a `?since=` URL): the header's.
    let r = poll_with(
        s.public,
        "/sub/both?since=0&timeout=0",
        &[("Last-Event-ID", &id1)],
    );
    assert_eq!(assert_delivery(&r, "both", b"two"), id2);
}

#[test]
fn multi_channel_poll_returns_the_oldest_across_channels() {
    let s = Server::start(&[]);
    let a1 = publish(s.admin, "a", "a1");
    let b1 = publish(s.admin, "b", "b1");
    let a2 = publish(s.admin, "a", "a2");

    let r = poll(s.public, "/sub/a,b?since=0&timeout=0");
    assert_eq!(assert_delivery(&r, "a", b"a1"), a1);
    let r = poll(s.public, &format!("/sub/b,a?since={a1}&timeout=0"));
    assert_eq!(assert_delivery(&r, "b", b"b1"), b1);
    let r = poll(s.public, &format!("/sub/a,b?since={b1}&timeout=0"));
    assert_eq!(assert_delivery(&r, "a", b"a2"), a2);
}

#[test]
fn multi_channel_parked_poll_is_woken_by_any_of_its_channels() {
    let s = Server::start(&[]);
    let mut c = park(s.public, "/sub/x,y,z?timeout=20");
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    publish(s.admin, "other", "not mine");
    assert!(
        c.quiet_for(Duration::from_millis(300)),
        "woken by a foreign channel"
    );
    let id = publish(s.admin, "y", "for y");
    assert_eq!(assert_delivery(&c.response(), "y", b"for y"), id);
}

#[test]
fn polling_loop_over_two_channels_gets_every_message_once_in_id_order() {
    let s = Server::start(&[]);
    let mut expected: Vec<(String, String, String)> = Vec::new(); // (id, channel, body)
    let pubs = |ch: &str, body: &str, exp: &mut Vec<(String, String, String)>| {
        let id = publish(s.admin, ch, body);
        if ch != "c" {
            exp.push((id, ch.to_string(), body.to_string()));
        }
    };
    for (ch, body) in [
        ("a", "a0"),
        ("b", "b0"),
        ("c", "c0"),
        ("a", "a1"),
        ("b", "b1"),
        ("b", "b2"),
        ("c", "c1"),
        ("a", "a2"),
    ] {
        pubs(ch, body, &mut expected);
    }

    let mut got: Vec<(String, String, String)> = Vec::new();
    let mut cursor = "0".to_string();
    let mut published_more = false;
    let deadline = Instant::now() + 60 * SEC;
    while Instant::now() < deadline {
        let r = poll(s.public, &format!("/sub/a,b?since={cursor}&timeout=1"));
        match r.status {
            200 => {
                assert!(r.header("messages-lost").is_none(), "{}", r.brief());
                let id = r.message_id();
                assert!(
                    id_num(&id) > id_num(&cursor),
                    "id went backwards: {}",
                    r.brief()
                );
                let ch = r.header("channel").expect("Channel header").to_string();
                got.push((id.clone(), ch, r.body_str()));
                cursor = id;
                if got.len() == 3 && !published_more {
                    // Published between polls: must not be missed.
                    published_more = true;
                    pubs("b", "b3", &mut expected);
                    pubs("c", "c2", &mut expected);
                    pubs("a", "a3", &mut expected);
                }
            }
            204 => {
                assert_eq!(r.message_id(), cursor);
                break;
            }
            _ => panic!("unexpected: {}", r.brief()),
        }
    }
    assert_eq!(got, expected);
}

#[test]
fn message_ttl_evicts_old_messages_and_reports_the_loss() {
    let s = Server::start(&["--message-ttl", "1"]);
    let c0 = cursor_now(s.public, "ttl");
    let id1 = publish(s.admin, "ttl", "expires");
    assert_eq!(
        assert_delivery(
            &poll(s.public, "/sub/ttl?since=0&timeout=0"),
            "ttl",
            b"expires"
        ),
        id1
    );
    // A parked subscriber keeps the channel alive while its message expires.
    let mut holder = park(s.public, &format!("/sub/ttl?since={id1}&timeout=30"));
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    std::thread::sleep(Duration::from_millis(2500));

    let r = poll(s.public, "/sub/ttl?since=0&timeout=0");
    assert_eq!(
        r.status,
        204,
        "message outlived --message-ttl 1: {}",
        r.brief()
    );

    let id2 = publish(s.admin, "ttl", "fresh");
    let r = holder.response();
    assert_eq!(assert_delivery(&r, "ttl", b"fresh"), id2);
    assert!(r.header("messages-lost").is_none(), "{}", r.brief());

    let r = poll(s.public, &format!("/sub/ttl?since={c0}&timeout=0"));
    assert_eq!(assert_delivery(&r, "ttl", b"fresh"), id2);
    assert_eq!(
        r.header("messages-lost"),
        Some("true"),
        "expired message not reported: {}",
        r.brief()
    );
}

#[test]
fn channel_is_freed_after_its_messages_expire() {
    let s = Server::start(&["--message-ttl", "1"]);
    publish(s.admin, "gone", "bye");
    assert_eq!(stat(s.admin, "channels"), 1);
    std::thread::sleep(Duration::from_millis(2500));
    let r = poll(s.public, "/sub/gone?since=0&timeout=0");
    assert_eq!(r.status, 204, "{}", r.brief());
    wait_stat(s.admin, "messages_buffered", 0, 3 * SEC);
    wait_stat(s.admin, "channels", 0, 3 * SEC);
    let r = get(s.admin, "/pub/gone");
    assert_eq!(r.status, 404, "freed channel still known: {}", r.brief());
}

/// A client away longer than the TTL: its channel's messages expired and the channel,
/// with no one left on it, was freed. Coming back with its cursor, it must still hear
/// that it missed something (`docs/protocol.md`: messages are never lost silently).
#[test]
fn a_client_returning_to_a_freed_channel_is_told_what_it_missed() {
    let s = Server::start(&["--message-ttl", "1"]);
    let read = publish(s.admin, "away", "read");
    let missed = publish(s.admin, "away", "missed");
    std::thread::sleep(Duration::from_millis(2500));
    wait_stat(s.admin, "channels", 0, 3 * SEC);

    // Nothing buffered, so the poll parks (re-creating the channel) ...
    let mut back = park(s.public, &format!("/sub/away?since={read}&timeout=30"));
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    let next = publish(s.admin, "away", "next");
    // ... and the next message says that `missed` is gone.
    let r = back.response();
    assert_eq!(assert_delivery(&r, "away", b"next"), next);
    assert_eq!(
        r.header("messages-lost"),
        Some("true"),
        "message {missed} expired with its channel and the returning client was not told: {}",
        r.brief()
    );
    // A client that had read `missed` too is not told of a gap.
    let r = poll(s.public, &format!("/sub/away?since={missed}&timeout=0"));
    assert_eq!(assert_delivery(&r, "away", b"next"), next);
    assert!(r.header("messages-lost").is_none(), "{}", r.brief());
}

#[test]
fn channel_names_follow_the_allowed_pattern() {
    let s = Server::start(&[]);
    let ok_name = "Az09._~:@-";
    let r = poll(s.public, &format!("/sub/{ok_name}?timeout=0"));
    assert_eq!(r.status, 204, "{}", r.brief());
    let long_ok = "x".repeat(128);
    let r = poll(s.public, &format!("/sub/{long_ok}?timeout=0"));
    assert_eq!(r.status, 204, "128-character name: {}", r.brief());

    let long_bad = "x".repeat(129);
    for bad in [
        "a$b",
        "a+b",
        "a%20b",
        "a*b",
        "a!b",
        long_bad.as_str(),
        "",
        "a,,b",
        "a,",
        ",a",
    ] {
        let r = poll(s.public, &format!("/sub/{bad}?timeout=0"));
        assert_eq!(r.status, 400, "channel {bad:?}: {}", r.brief());
    }
}

#[test]
fn at_most_64_channels_per_poll() {
    let s = Server::start(&[]);
    let names = |n: usize| {
        (0..n)
            .map(|i| format!("ch{i}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let r = poll(s.public, &format!("/sub/{}?timeout=0", names(64)));
    assert_eq!(r.status, 204, "64 channels: {}", r.brief());
    let r = poll(s.public, &format!("/sub/{}?timeout=0", names(65)));
    assert_eq!(r.status, 400, "65 channels: {}", r.brief());
}

#[test]
fn bad_since_or_timeout_is_400() {
    let s = Server::start(&[]);
    for q in [
        "since=abc",
        "since=12x",
        "since=-1",
        "timeout=abc",
        "timeout=1x",
        "since=0&timeout=soon",
    ] {
        let r = poll(s.public, &format!("/sub/q?{q}"));
        assert_eq!(r.status, 400, "?{q}: {}", r.brief());
    }
}

/// A client whose cursor comes from before the server restarted: what the old run
/// buffered and the client never read is gone, and the new run cannot know what that
/// was. The next delivery must say so (`docs/protocol.md`: never a silent loss), also
/// to a poll that parks first; a cursor of this run, and `0`, are not told.
#[test]
fn a_cursor_from_before_a_restart_is_told_of_the_gap() {
    let old = Server::start(&[]);
    let m1 = publish(old.admin, "r", "m1");
    let _m2 = publish(old.admin, "r", "m2 (never read, lost in the restart)");
    drop(old);

    let s = Server::start(&[]);
    let mut parked = park(s.public, &format!("/sub/r?since={m1}&timeout=30"));
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    let m3 = publish(s.admin, "r", "m3");
    assert!(id_num(&m3) > id_num(&m1), "ids continue above the old run");
    let r = parked.response();
    assert_eq!(assert_delivery(&r, "r", b"m3"), m3);
    assert_eq!(
        r.header("messages-lost"),
        Some("true"),
        "m2 was lost in the restart and the parked client was not told: {}",
        r.brief()
    );
    let r = poll(s.public, &format!("/sub/r?since={m1}&timeout=0"));
    assert_eq!(assert_delivery(&r, "r", b"m3"), m3);
    assert_eq!(r.header("messages-lost"), Some("true"), "{}", r.brief());
    // Nothing to be told: everything buffered, or a cursor of this run.
    let r = poll(s.public, "/sub/r?since=0&timeout=0");
    assert_eq!(assert_delivery(&r, "r", b"m3"), m3);
    assert!(r.header("messages-lost").is_none(), "{}", r.brief());
    let m4 = publish(s.admin, "r", "m4");
    let r = poll(s.public, &format!("/sub/r?since={m3}&timeout=0"));
    assert_eq!(assert_delivery(&r, "r", b"m4"), m4);
    assert!(r.header("messages-lost").is_none(), "{}", r.brief());
    // A client with no cursor whose first poll timed out before anything was published
    // holds this run's starting cursor: not a gap.
    let s2 = Server::start(&[]);
    let r = poll(s2.public, "/sub/q?timeout=0");
    assert_eq!(r.status, 204, "{}", r.brief());
    let start = r.header("message-id").expect("cursor on a 204").to_string();
    let q1 = publish(s2.admin, "q", "q1");
    let r = poll(s2.public, &format!("/sub/q?since={start}&timeout=0"));
    assert_eq!(assert_delivery(&r, "q", b"q1"), q1);
    assert!(r.header("messages-lost").is_none(), "{}", r.brief());
}
