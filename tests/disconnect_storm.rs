//! Disconnect storm: 15,000 parked long-polls all reset at once (`SO_LINGER` 0, so each
//! close is an RST). The server notices every one: `/stats` `parked` and `connections`
//! return to their baseline within a second or so, its RSS falls back near where it was
//! before the polls arrived, and it goes on serving.
//!
//! The only test in this binary: its sockets count against the open-file limit.

mod common;

use std::time::{Duration, Instant};

use common::*;

const SUBSCRIBERS: usize = 15_000;
const SOURCE_ADDRS: u8 = 8;
/// The issue asks for a second; CI machines are shared, so the test allows this long
/// and prints the time it measured.
const NOTICE_WITHIN: Duration = Duration::from_secs(3);

#[test]
fn fifteen_thousand_parked_polls_reset_at_once_are_all_freed() {
    raise_fd_limit_for(SUBSCRIBERS);
    let s = Server::start(&["--threads", "2"]);
    let request = request_bytes("GET", "/sub/storm?timeout=120", &[], None);
    // Warm up what any served request allocates once, as the fan-out test does.
    let _ = get(s.public, "/sub/storm?timeout=0");
    let base = stats(s.admin);
    let (rss_before, conns_before) = (
        base["rss_bytes"].as_u64().unwrap(),
        base["connections"].as_u64().unwrap(),
    );

    let t = Instant::now();
    let conns = connect_many(s.public, SUBSCRIBERS, SOURCE_ADDRS, &request);
    wait_stat(
        s.admin,
        "parked",
        SUBSCRIBERS as u64,
        Duration::from_secs(60),
    );
    let rss_parked = stat(s.admin, "rss_bytes");
    eprintln!(
        "{SUBSCRIBERS} parked in {:?}; server RSS {rss_before} -> {rss_parked}",
        t.elapsed()
    );

    // The storm: every connection reset, as fast as the client can close them.
    let t = Instant::now();
    for c in conns {
        reset(c.stream);
    }
    let closed_in = t.elapsed();
    let mut last = serde_json::Value::Null;
    let freed = wait_until(
        || {
            last = stats(s.admin);
            last["parked"].as_u64() == Some(0) && last["connections"].as_u64() == Some(conns_before)
        },
        NOTICE_WITHIN,
    );
    let noticed_in = t.elapsed();
    eprintln!(
        "resets sent in {closed_in:?}; parked and connections back to baseline after \
         {noticed_in:?}"
    );
    assert!(
        freed,
        "{NOTICE_WITHIN:?} after {SUBSCRIBERS} resets the server still counts {} parked \
         and {} connections (baseline {conns_before})",
        last["parked"], last["connections"]
    );

    // Memory: back near the baseline, within 1 MB plus 10% of the parked growth. The
    // connection slab keeps the pages its slots touched (56 bytes × 15,000 ≈ 840 KB);
    // the 1 MB covers that, not a leak of anything per connection.
    let rss_after = stat(s.admin, "rss_bytes");
    let growth = rss_parked.saturating_sub(rss_before);
    let allowed = rss_before + 1024 * 1024 + growth / 10;
    eprintln!(
        "server RSS before {rss_before}, parked {rss_parked} (+{growth}), after the storm \
         {rss_after} (allowed {allowed})"
    );
    if testing_holdfast() {
        assert!(
            rss_after <= allowed,
            "RSS after the storm {rss_after} is over baseline {rss_before} + 1 MB + 10% of \
             the parked growth {growth}"
        );
    }

    // Still serving: the channel the storm was on delivers to a new subscriber.
    let cursor = cursor_now(s.public, "storm");
    let mut sub = park(s.public, &format!("/sub/storm?since={cursor}&timeout=10"));
    let r = publish_full(s.admin, "storm", b"after the storm", None);
    publish_id(&r);
    assert_delivery(&sub.response(), "storm", b"after the storm");
}
