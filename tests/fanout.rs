//! Fan-out at scale: 15 000 parked long-polls, one publish, every one of them answered
//! with the payload; standalone, and in cluster mode on a real Redis. The tests of this
//! binary run one at a time (`SERIAL`), because their sockets count against the test
//! process's open-file limit.
//!
//! They also measure what a parked long-poll costs the server in user space: RSS growth
//! from before the first connection to all 15 000 parked, divided by 15 000 (README's
//! figure; `cargo test --release --test fanout -- --nocapture` prints it). The bound
//! asserted is the design target, 64 bytes (the issue asked for at most 256); measured
//! 56-57 in both debug and release builds, so a regression of one word per connection
//! (e.g. the slab growing by doubling, which cost 74) fails it. Cluster mode (issue 12)
//! keeps the same bound: a parked poll has the same slot and no Redis state of its own;
//! the node holds one Redis subscription per channel, not per subscriber. So do private
//! channels with CORS (issue 13): a JWT per poll and an allowed `Origin`.

mod common;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::http::{request_bytes, IO_TIMEOUT};
use common::net::{connect_many, raise_fd_limit_for};
use common::protocol::{get, publish_full, publish_id, stat, stats, wait_stat, PrivateSubscriber};
use common::server::{testing_holdfast, Server};

const SUBSCRIBERS: usize = 15_000;
const SOURCE_ADDRS: u8 = 8; // 127.0.0.2 ..= 127.0.0.9
const PAYLOAD: &[u8] = b"fan-out payload \x00\x01\xff";

/// Held by each test for its whole run: two tests holding 15 000 sockets each at once
/// would pass the open-file limit.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A test that failed while holding it leaves it poisoned; the next may still run.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn one_publish_reaches_15000_parked_polls() {
    fan_out_to_parked_polls(&[], &[], None);
}

/// With private channels and CORS on (issue 13): every poll carries a JWT and an
/// allowed `Origin`. The token is checked once and dropped; the slot keeps only the
/// origin's index, so the bound is the same 64 bytes, and every answer, given by the
/// publish long after the request, still names the origin.
#[test]
fn with_tokens_and_cors_a_parked_poll_still_costs_at_most_64_bytes() {
    let p = PrivateSubscriber::new("fanout-tokens", &["fan*"]);
    fan_out_to_parked_polls(&p.flags(), &p.headers(), Some(PrivateSubscriber::ORIGIN));
}

/// 15 000 long-polls sent with `headers` to a server started with `flags`, parked, one
/// publish answers them all; measures RSS per parked poll. `origin`: every answer must
/// carry `Access-Control-Allow-Origin` with it.
fn fan_out_to_parked_polls(flags: &[&str], headers: &[(&str, &str)], origin: Option<&str>) {
    let _serial = serial();
    raise_fd_limit_for(SUBSCRIBERS);
    // Started after raising the limit: the child inherits it.
    let mut all = vec!["--threads", "2"];
    all.extend_from_slice(flags);
    let s = Server::start(&all);
    let request = request_bytes("GET", "/sub/fan?timeout=60", headers, None);
    // A few requests first, on their own connections so that each worker thread gets
    // some, so the baseline includes what a served request allocates once per worker
    // (pools, the channel's park list map, the malloc arena a thread's first token
    // check creates), not what parking costs per connection.
    for _ in 0..16 {
        let warm = common::protocol::request(s.public, "GET", "/sub/fan?timeout=0", headers, None);
        assert_eq!(warm.status, 204, "{}", warm.brief());
    }
    let rss_before = stat(s.admin, "rss_bytes");

    let t = Instant::now();
    let mut conns = connect_many(s.public, SUBSCRIBERS, SOURCE_ADDRS, &request);
    eprintln!("{SUBSCRIBERS} polls sent in {:?}", t.elapsed());

    let t = Instant::now();
    wait_stat(
        s.admin,
        "parked",
        SUBSCRIBERS as u64,
        Duration::from_secs(60),
    );
    eprintln!("all parked after a further {:?}", t.elapsed());
    let rss_parked = stat(s.admin, "rss_bytes");
    let per_conn = rss_parked.saturating_sub(rss_before) as f64 / SUBSCRIBERS as f64;
    eprintln!(
        "user-space bytes per parked long-poll: {per_conn:.1} \
         (server RSS {rss_before} -> {rss_parked} over {SUBSCRIBERS} parked)"
    );
    // The budget is holdfast's design goal; another server under test (the tokio peer)
    // is measured and printed, not held to it.
    if testing_holdfast() {
        assert!(
            per_conn <= 64.0,
            "a parked long-poll costs {per_conn:.1} bytes of server RSS (budget 64)"
        );
    }

    let t = Instant::now();
    let r = publish_full(s.admin, "fan", PAYLOAD, None);
    let id = publish_id(&r);
    assert_eq!(
        r.json()["subscribers"].as_u64(),
        Some(SUBSCRIBERS as u64),
        "{}",
        r.brief()
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut delivered = 0;
    let mut failures: Vec<String> = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            failures.push(format!("read deadline passed at connection {i}"));
            break;
        }
        c.set_read_timeout(left.min(IO_TIMEOUT));
        match c.read_response() {
            Ok(r)
                if r.status == 200
                    && r.body == PAYLOAD
                    && r.header("message-id") == Some(id.as_str())
                    && r.header("access-control-allow-origin") == origin =>
            {
                delivered += 1
            }
            Ok(r) => failures.push(format!("connection {i}: {}", r.brief())),
            Err(e) => failures.push(format!("connection {i}: {e}")),
        }
    }
    eprintln!("{delivered} deliveries read in {:?}", t.elapsed());
    failures.truncate(10);
    assert_eq!(delivered, SUBSCRIBERS, "first failures: {failures:#?}");
    wait_stat(s.admin, "parked", 0, Duration::from_secs(10));
}

/// Channels the cluster test spreads its subscribers over: the node holds one Redis
/// subscription for each.
const CLUSTER_CHANNELS: usize = 60;

/// The same measurement in cluster mode: 15 000 parked long-polls over 60 channels on
/// node A, which holds one Redis subscription per channel; bytes per parked poll must
/// stay within 64. This is the steady state of a node that holds its channels: each
/// channel gets one poll first (so its subscription is confirmed), then the 15 000
/// arrive channel after channel, 250 at a time as fast as they connect. (Polls that
/// reach a node before it holds their channel wait for Redis meanwhile, with a copy of
/// their request: a transient cost this test does not count; see docs/architecture.md.)
/// Then one publish per channel on node B reaches all 15 000 through Redis.
#[test]
fn a_parked_poll_in_cluster_mode_costs_at_most_64_bytes() {
    if !testing_holdfast() {
        eprintln!(
            "SKIPPED: the server under test is not holdfast (HOLDFAST_BIN); the tokio peer \
             has no cluster mode"
        );
        return;
    }
    let _serial = serial();
    raise_fd_limit_for(SUBSCRIBERS + CLUSTER_CHANNELS);
    let redis = common::redis::Redis::start();
    let url = redis.url();
    let flags = [
        "--threads",
        "2",
        "--redis",
        &url,
        "--redis-prefix",
        "fanout",
    ];
    // Started after raising the limit: the children inherit it.
    let a = Server::start(&flags);
    let b = Server::start(&flags);

    // Warm-up, so that the baseline includes what cluster mode allocates once (the Redis
    // connections, the subscription's state, a message's round trip) and what any served
    // request allocates once: a poll on a channel of its own, answered by a publish on B.
    let mut warm = common::protocol::park(a.public, "/sub/warmup?timeout=30");
    let warm_ok = common::timing::wait_until(
        || stat(a.admin, "parked") == 1 && stat(a.admin, "backplane_channels") >= 1,
        Duration::from_secs(10),
    );
    assert!(
        warm_ok,
        "the warm-up poll was not parked with its subscription: {}",
        stats(a.admin)
    );
    publish_full(b.admin, "warmup", b"warm", None);
    let r = warm.response();
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"warm"[..]),
        "{}",
        r.brief()
    );
    drop(warm);
    let _ = get(a.public, "/sub/warmup?timeout=0");
    wait_stat(a.admin, "parked", 0, Duration::from_secs(10));
    // The node takes hold of each channel: one poll per channel, parked (and answered
    // by the publishes below, like the rest).
    let mut holders = Vec::with_capacity(CLUSTER_CHANNELS);
    for ch in 0..CLUSTER_CHANNELS {
        let holder = common::protocol::park(a.public, &format!("/sub/fan{ch}?timeout=60"));
        holders.push((ch, holder));
    }
    wait_stat(
        a.admin,
        "parked",
        CLUSTER_CHANNELS as u64,
        Duration::from_secs(10),
    );
    let channels_before = stat(a.admin, "backplane_channels");
    let rss_before = stat(a.admin, "rss_bytes");

    let t = Instant::now();
    let per_channel = SUBSCRIBERS / CLUSTER_CHANNELS;
    let mut conns = Vec::with_capacity(SUBSCRIBERS);
    for ch in 0..CLUSTER_CHANNELS {
        let request = request_bytes("GET", &format!("/sub/fan{ch}?timeout=60"), &[], None);
        for c in connect_many(a.public, per_channel, SOURCE_ADDRS, &request) {
            conns.push((ch, c));
        }
    }
    eprintln!(
        "{SUBSCRIBERS} polls over {CLUSTER_CHANNELS} channels sent in {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    wait_stat(
        a.admin,
        "parked",
        (SUBSCRIBERS + CLUSTER_CHANNELS) as u64,
        Duration::from_secs(60),
    );
    let subscribed = common::timing::wait_until(
        || stat(a.admin, "backplane_channels") >= CLUSTER_CHANNELS as u64,
        Duration::from_secs(30),
    );
    assert!(
        subscribed,
        "node A does not hold a Redis subscription per channel: {}",
        stats(a.admin)
    );
    eprintln!(
        "all parked and subscribed after a further {:?}",
        t.elapsed()
    );
    let rss_parked = stat(a.admin, "rss_bytes");
    let per_conn = rss_parked.saturating_sub(rss_before) as f64 / SUBSCRIBERS as f64;
    eprintln!(
        "cluster mode: user-space bytes per parked long-poll: {per_conn:.1} (server RSS \
         {rss_before} -> {rss_parked} over {SUBSCRIBERS} parked on {CLUSTER_CHANNELS} \
         channels; backplane_channels {channels_before} -> {})",
        stat(a.admin, "backplane_channels")
    );
    assert!(
        per_conn <= 64.0,
        "in cluster mode a parked long-poll costs {per_conn:.1} bytes of server RSS (budget \
         64); /stats: {}",
        stats(a.admin)
    );

    // One publish per channel on B, which has no subscribers: every poll on A gets it
    // through Redis.
    let t = Instant::now();
    let mut ids = Vec::with_capacity(CLUSTER_CHANNELS);
    for ch in 0..CLUSTER_CHANNELS {
        let payload = format!("cluster fan-out {ch}");
        let r = publish_full(b.admin, &format!("fan{ch}"), payload.as_bytes(), None);
        let j = r.json();
        assert_eq!(
            (j["subscribers"].as_u64(), j["nodes"].as_u64()),
            (Some(0), Some(1)),
            "publish on B to fan{ch}: B has no subscribers, A is the one node subscribed: {}",
            r.brief()
        );
        ids.push((publish_id(&r), payload));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut delivered = 0;
    let mut failures: Vec<String> = Vec::new();
    conns.extend(holders);
    for (i, (ch, c)) in conns.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            failures.push(format!("read deadline passed at connection {i}"));
            break;
        }
        c.set_read_timeout(left.min(IO_TIMEOUT));
        let (id, payload) = &ids[*ch];
        match c.read_response() {
            Ok(r)
                if r.status == 200
                    && r.body == payload.as_bytes()
                    && r.header("message-id") == Some(id.as_str()) =>
            {
                delivered += 1
            }
            Ok(r) => failures.push(format!("connection {i} (fan{ch}): {}", r.brief())),
            Err(e) => failures.push(format!("connection {i} (fan{ch}): {e}")),
        }
    }
    eprintln!(
        "{delivered} deliveries from node B through Redis read in {:?}",
        t.elapsed()
    );
    failures.truncate(10);
    assert_eq!(
        delivered,
        SUBSCRIBERS + CLUSTER_CHANNELS,
        "first failures: {failures:#?}"
    );
    wait_stat(a.admin, "parked", 0, Duration::from_secs(10));
    drop((a, b));
    drop(redis);
}
