//! Observability and the admin listener: `/stats`, `/metrics`, `/health`, and a client
//! that closes while parked being noticed and freed.

mod common;

use std::time::{Duration, Instant};

use common::http::Conn;
use common::protocol::{
    assert_delivery, get, park, poll, publish, publish_full, publish_id, stat, stats, wait_stat,
};
use common::server::Server;
use common::timing::wait_until;

const SEC: Duration = Duration::from_secs(1);

const STAT_FIELDS: [&str; 9] = [
    "connections",
    "parked",
    "sse_streams",
    "channels",
    "messages_buffered",
    "published",
    "delivered",
    "poll_timeouts",
    "rss_bytes",
];

#[test]
fn stats_has_every_field_as_an_integer() {
    let s = Server::start(&[]);
    let r = get(s.admin, "/stats");
    assert_eq!(r.status, 200, "{}", r.brief());
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.to_ascii_lowercase().contains("json")),
        "{}",
        r.brief()
    );
    let v = r.json();
    assert!(v.is_object(), "{v}");
    for f in STAT_FIELDS {
        assert!(
            v[f].is_u64(),
            "/stats field {f} missing or not an integer: {v}"
        );
    }
    assert!(v["rss_bytes"].as_u64() > Some(0), "{v}");
    assert!(
        v["connections"].as_u64() >= Some(1),
        "the /stats request itself: {v}"
    );
    for f in [
        "parked",
        "sse_streams",
        "channels",
        "messages_buffered",
        "published",
        "delivered",
        "poll_timeouts",
    ] {
        assert_eq!(v[f].as_u64(), Some(0), "fresh server {f}: {v}");
    }
}

#[test]
fn stats_count_what_happens() {
    let s = Server::start(&[]);
    publish(s.admin, "s1", "a");
    publish(s.admin, "s1", "b");
    publish(s.admin, "s2", "c");
    let v = stats(s.admin);
    assert_eq!(v["published"].as_u64(), Some(3), "{v}");
    assert_eq!(v["messages_buffered"].as_u64(), Some(3), "{v}");
    assert_eq!(v["channels"].as_u64(), Some(2), "{v}");
    assert_eq!(v["delivered"].as_u64(), Some(0), "{v}");
    assert_eq!(v["poll_timeouts"].as_u64(), Some(0), "{v}");

    // A poll that times out.
    let r = poll(s.public, "/sub/s3?since=0&timeout=1");
    assert_eq!(r.status, 204, "{}", r.brief());
    wait_stat(s.admin, "poll_timeouts", 1, 2 * SEC);

    // Two parked polls, then one delivery to both.
    let mut p1 = park(s.public, "/sub/s1?timeout=20");
    let mut p2 = park(s.public, "/sub/s1,s2?timeout=20");
    wait_stat(s.admin, "parked", 2, 5 * SEC);
    assert!(stat(s.admin, "connections") >= 3);
    publish(s.admin, "s1", "d");
    assert_eq!(p1.response().status, 200);
    assert_eq!(p2.response().status, 200);
    wait_stat(s.admin, "parked", 0, 2 * SEC);
    wait_stat(s.admin, "delivered", 2, 2 * SEC);
    let v = stats(s.admin);
    assert_eq!(v["published"].as_u64(), Some(4), "{v}");
    assert_eq!(v["messages_buffered"].as_u64(), Some(4), "{v}");
    assert_eq!(v["sse_streams"].as_u64(), Some(0), "{v}");
}

fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| {
            v.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("metric {name} has no number: {v:?}"))
        })
}

/// The value of the `/stats` field `field` in `/metrics` text: `holdfast_{field}`, or for
/// a counter the Prometheus-conventional `holdfast_{field}_total`.
fn metric(text: &str, field: &str) -> Option<f64> {
    metric_value(text, &format!("holdfast_{field}"))
        .or_else(|| metric_value(text, &format!("holdfast_{field}_total")))
}

#[test]
fn metrics_is_prometheus_text_with_the_stats() {
    let s = Server::start(&[]);
    for i in 0..3 {
        publish(s.admin, "met", format!("m{i}"));
    }
    let mut p = park(s.public, "/sub/quiet?timeout=20");
    wait_stat(s.admin, "parked", 1, 5 * SEC);

    let r = get(s.admin, "/metrics");
    assert_eq!(r.status, 200, "{}", r.brief());
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/plain")),
        "{}",
        r.brief()
    );
    let text = r.body_str();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut parts = line.rsplitn(2, ' ');
        let value = parts.next().unwrap_or_default();
        let name = parts.next().unwrap_or_default();
        let bare = name.split('{').next().unwrap_or_default();
        assert!(
            !bare.is_empty()
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !bare.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        assert!(value.parse::<f64>().is_ok(), "bad metric value in {line:?}");
    }
    for f in STAT_FIELDS {
        assert!(
            metric(&text, f).is_some(),
            "no holdfast_{f} (or holdfast_{f}_total) line in:\n{text}"
        );
    }
    assert_eq!(metric(&text, "published"), Some(3.0), "{text}");
    assert_eq!(metric(&text, "parked"), Some(1.0), "{text}");
    assert!(metric(&text, "rss_bytes") > Some(0.0), "{text}");

    let id = publish(s.admin, "quiet", "wake");
    assert_eq!(assert_delivery(&p.response(), "quiet", b"wake"), id);
    wait_until(
        || metric(&get(s.admin, "/metrics").body_str(), "parked") == Some(0.0),
        2 * SEC,
    );
    let text = get(s.admin, "/metrics").body_str();
    assert_eq!(metric(&text, "published"), Some(4.0), "{text}");
    assert_eq!(metric(&text, "parked"), Some(0.0), "{text}");
}

#[test]
fn health_is_200_ok_on_both_listeners() {
    let s = Server::start(&[]);
    for addr in [s.public, s.admin] {
        let r = get(addr, "/health");
        assert_eq!(r.status, 200, "{}", r.brief());
        assert_eq!(r.body_str().trim(), "ok", "{}", r.brief());
    }
}

#[test]
fn client_closing_while_parked_frees_its_slot() {
    let s = Server::start(&[]);
    let polls: Vec<Conn> = (0..3)
        .map(|_| park(s.public, "/sub/leave?timeout=60"))
        .collect();
    wait_stat(s.admin, "parked", 3, 5 * SEC);
    let mut polls = polls.into_iter();
    let keep = polls.next().expect("three polls");
    drop(polls);

    let t = Instant::now();
    wait_stat(s.admin, "parked", 1, SEC);
    eprintln!("two closed parked polls noticed in {:?}", t.elapsed());
    drop(keep);
    wait_stat(s.admin, "parked", 0, SEC);

    // Nobody left to hand a message to.
    let r = publish_full(s.admin, "leave", b"anyone?", None);
    publish_id(&r);
    assert_eq!(r.json()["subscribers"].as_u64(), Some(0), "{}", r.brief());

    // The connections are gone too (only our own /stats connection remains).
    let ok = wait_until(|| stat(s.admin, "connections") <= 1, 3 * SEC);
    assert!(ok, "connections not freed: {}", stats(s.admin));
}

#[test]
fn closed_multi_channel_poll_is_unlinked_from_every_channel() {
    let s = Server::start(&[]);
    let gone = park(s.public, "/sub/m1,m2,m3?timeout=60");
    let mut stays = park(s.public, "/sub/m3?timeout=60");
    wait_stat(s.admin, "parked", 2, 5 * SEC);
    drop(gone);
    wait_stat(s.admin, "parked", 1, SEC);
    for ch in ["m1", "m2", "m3"] {
        let r = publish_full(s.admin, ch, b"x", None);
        publish_id(&r);
        let want = u64::from(ch == "m3");
        assert_eq!(
            r.json()["subscribers"].as_u64(),
            Some(want),
            "{ch}: {}",
            r.brief()
        );
    }
    assert_delivery(&stays.response(), "m3", b"x");
}
