//! Disconnect storm: 15,000 parked long-polls all reset at once (`SO_LINGER` 0, so each
//! close is an RST). The server notices every one: `/stats` `parked` and `connections`
//! return to their baseline within a second or so, and it goes on serving.
//!
//! Then it must have freed what those connections held, for reuse: a second wave of
//! 15,000 parked polls, the size of the first, must fit in the memory the first left
//! behind. RSS after the storm cannot tell on its own: the allocator keeps freed pages
//! (holdfast's slab keeps its slots, its pool its buffers), so RSS barely falls whether
//! the server freed its per-connection memory or leaked it. What tells is the next
//! wave: reused memory costs no new pages, leaked memory makes the second wave take as
//! much again.
//!
//! The only test in this binary: its sockets count against the open-file limit.

mod common;

use std::time::{Duration, Instant};

use common::http::{request_bytes, Conn};
use common::net::{connect_many, raise_fd_limit_for, reset};
use common::process::rss_of;
use common::protocol::{
    assert_delivery, cursor_now, get, park, publish_full, publish_id, stats, wait_stat,
};
use common::server::{testing_holdfast, Server};
use common::timing::wait_until;

const SUBSCRIBERS: usize = 15_000;
const SOURCE_ADDRS: u8 = 8;
/// The issue asks for a second; CI machines are shared, so the test allows this long
/// and prints the time it measured.
const NOTICE_WITHIN: Duration = Duration::from_secs(3);
/// How much more RSS holdfast may have with the second wave parked than it had with
/// the first. A parked poll holds only its 56-byte connection slot (its buffers went
/// back to the pool when it parked, and a hang-up closes it without reading), so the
/// first wave grows RSS by ~850 KB and the second must add nothing. Measured (debug
/// build, 2 threads, 29 runs): +0 to +24 KiB. With the slab slot of every closed
/// connection leaked (held by a placeholder), the second wave came out +848 to +856 KB
/// (and the old check, RSS after the storm against the baseline plus 1 MB, still
/// passed). 256 KiB is ten times the noise and under a third of that.
const SECOND_WAVE_SLACK: u64 = 256 * 1024;
/// The bound for another server under test (the tokio peer, `HOLDFAST_BIN`), as a
/// share of its first wave's growth. It cannot meet holdfast's: its connections are
/// tasks with buffers from malloc, and freed memory is only partly reused by the next
/// wave. Measured (debug build, 10 runs): the first wave grows RSS by ~250 MB, the
/// second by a further 35-49% of that; later waves add less and less (+117, +66, +26,
/// +3 MB over five waves; the same shape with `MALLOC_ARENA_MAX=1`), so that is the
/// allocator's fragmentation settling, not a per-connection leak. 75% lets it through and still
/// fails a peer that frees nothing (100%: a second ~250 MB).
const PEER_SECOND_WAVE_SLACK_PCT: u64 = 75;

/// Opens `SUBSCRIBERS` polls on `/sub/storm`, waits until the server counts them all
/// parked, and returns them.
fn park_wave(s: &Server, wave: u32) -> Vec<Conn> {
    let request = request_bytes("GET", "/sub/storm?timeout=120", &[], None);
    let t = Instant::now();
    let conns = connect_many(s.public, SUBSCRIBERS, SOURCE_ADDRS, &request);
    wait_stat(
        s.admin,
        "parked",
        SUBSCRIBERS as u64,
        Duration::from_secs(60),
    );
    eprintln!("wave {wave}: {SUBSCRIBERS} parked in {:?}", t.elapsed());
    conns
}

#[test]
fn fifteen_thousand_parked_polls_reset_at_once_are_all_freed() {
    raise_fd_limit_for(SUBSCRIBERS);
    let s = Server::start(&["--threads", "2"]);
    // Warm up what any served request allocates once, as the fan-out test does.
    let _ = get(s.public, "/sub/storm?timeout=0");
    // The baseline: no connection but the one asking `/stats` (the warm-up's close may
    // not have been handled yet; counting it made the baseline 2 in some runs, which
    // the server then rightly undercut after the storm).
    wait_stat(s.admin, "connections", 1, Duration::from_secs(5));
    let rss_before = rss_of(s.pid());

    let conns = park_wave(&s, 1);
    let rss_first = rss_of(s.pid());

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
            last["parked"].as_u64() == Some(0) && last["connections"].as_u64() == Some(1)
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
         and {} connections (baseline 1: the one asking)",
        last["parked"], last["connections"]
    );
    let rss_storm = rss_of(s.pid());

    // The second wave: as many polls again, on memory the first wave freed.
    let conns = park_wave(&s, 2);
    let rss_second = rss_of(s.pid());
    let first_growth = rss_first.saturating_sub(rss_before);
    let allowed = rss_first
        + if testing_holdfast() {
            SECOND_WAVE_SLACK
        } else {
            first_growth * PEER_SECOND_WAVE_SLACK_PCT / 100
        };
    eprintln!(
        "server RSS: before {rss_before}, first wave parked {rss_first} (+{first_growth}), \
         after the storm {rss_storm}, second wave parked {rss_second} ({:+} on the first; \
         allowed up to {allowed})",
        rss_second as i64 - rss_first as i64
    );
    assert!(
        rss_second <= allowed,
        "with a second wave of {SUBSCRIBERS} parked polls the server's RSS is {rss_second}, \
         {} bytes over the {rss_first} it had with the first wave (allowed {}): the memory \
         of the connections the storm closed was not reused",
        rss_second - rss_first,
        allowed - rss_first
    );
    drop(conns);

    // Still serving: the channel the storm was on delivers to a new subscriber.
    let cursor = cursor_now(s.public, "storm");
    let mut sub = park(s.public, &format!("/sub/storm?since={cursor}&timeout=10"));
    let r = publish_full(s.admin, "storm", b"after the storm", None);
    publish_id(&r);
    assert_delivery(&sub.response(), "storm", b"after the storm");
}
