//! Fan-out at scale: 15 000 parked long-polls on one channel, one publish, every one of
//! them answered with the payload. The only test in this binary, because its sockets
//! count against the test process's open-file limit.
//!
//! It also measures what a parked long-poll costs the server in user space: RSS growth
//! from before the first connection to all 15 000 parked, divided by 15 000 (README's
//! figure; `cargo test --release --test fanout -- --nocapture` prints it). The bound
//! asserted is the design target, 64 bytes (the issue asked for at most 256); measured
//! 56-57 in both debug and release builds, so a regression of one word per connection
//! (e.g. the slab growing by doubling, which cost 74) fails it.

mod common;

use std::time::{Duration, Instant};

use common::http::{request_bytes, IO_TIMEOUT};
use common::net::{connect_many, raise_fd_limit_for};
use common::protocol::{get, publish_full, publish_id, stat, wait_stat};
use common::server::{testing_holdfast, Server};

const SUBSCRIBERS: usize = 15_000;
const SOURCE_ADDRS: u8 = 8; // 127.0.0.2 ..= 127.0.0.9
const PAYLOAD: &[u8] = b"fan-out payload \x00\x01\xff";

#[test]
fn one_publish_reaches_15000_parked_polls() {
    raise_fd_limit_for(SUBSCRIBERS);
    // Started after raising the limit: the child inherits it.
    let s = Server::start(&["--threads", "2"]);
    let request = request_bytes("GET", "/sub/fan?timeout=60", &[], None);
    // One request first, so the baseline includes what any served request allocates
    // once (pools, the channel's park list map), not what parking costs per connection.
    let _ = get(s.public, "/sub/fan?timeout=0");
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
                    && r.header("message-id") == Some(id.as_str()) =>
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
