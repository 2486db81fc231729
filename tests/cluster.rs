//! Cluster mode (`--redis`, issue 12): three holdfast nodes on one real `redis-server`,
//! end to end over real sockets. Each test has its own Redis and its own nodes.
//!
//! Cross-node delivery, ids across nodes, a long-poll loop that changes node on every
//! poll (one channel and several), SSE resumed on another node, cluster-wide delete, a
//! node SIGKILLed mid-stream, every node restarted, Redis restarted empty, Redis stopped,
//! Redis frozen (SIGSTOP), Redis's subscriber connections killed, and the gap signal
//! for a buffer eviction seen from another node.
//!
//! Every test publishes on a node other than the one its subscriber is on, so a node
//! that only delivers its own publishes fails them. The standalone restart gap (issue
//! 12's last case) is `a_cursor_from_before_a_restart_is_told_of_the_gap` in
//! tests/longpoll.rs and `a_last_event_id_from_before_a_restart_is_told_of_the_gap` in
//! tests/sse.rs.
//!
//! Cluster mode is holdfast only: the tokio peer has no `--redis`, so under
//! `HOLDFAST_BIN=…holdfast-tokio` every test here returns at once, saying so.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{wait_health, Cluster, Rng};
use common::http::{request_bytes, Conn, Response};
use common::protocol::{
    assert_delivery, cursor_now, id_num, park, poll, publish, publish_full, publish_id, request,
    stat, wait_stat,
};
use common::sse::{Sse, SseEvent};
use common::timing::{now_micros, wait_until};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn skip(test: &str) -> bool {
    common::cluster::skip_without_cluster_mode(test)
}

/// A message as published.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pub {
    id: String,
    channel: String,
    body: String,
}

/// A message as a subscriber received it; `lost` is the gap signal that came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    id: String,
    channel: String,
    body: String,
    lost: bool,
}

fn pub_msg(admin: SocketAddr, channel: &str, body: &str) -> Pub {
    Pub {
        id: publish(admin, channel, body),
        channel: channel.to_string(),
        body: body.to_string(),
    }
}

/// Publishes `count` messages `{prefix}{i}` on `admin`, one after the other.
fn pub_many(
    admin: SocketAddr,
    channel: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> Vec<Pub> {
    range
        .map(|i| pub_msg(admin, channel, &format!("{prefix}{i}")))
        .collect()
}

/// A publish whose answer must come within `within`; Err if it does not (or the
/// connection fails).
fn try_publish(
    admin: SocketAddr,
    channel: &str,
    body: &str,
    within: Duration,
) -> Result<Response, String> {
    let stream = TcpStream::connect_timeout(&admin, within).map_err(|e| format!("connect: {e}"))?;
    let mut c = Conn::from_stream(stream);
    c.set_read_timeout(within);
    c.try_send(&request_bytes(
        "POST",
        &format!("/pub/{channel}"),
        &[],
        Some(body.as_bytes()),
    ))
    .map_err(|e| format!("send: {e}"))?;
    c.read_response()
        .map_err(|e| format!("no answer to POST /pub/{channel} within {within:?}: {e}"))
}

/// Publishes until a `201` (a `503` or a failed connection is retried every 100 ms),
/// for at most `within`; returns the id. Every attempt sends the same body, so a
/// `503` that Redis did carry out shows up as a copy of it.
fn publish_retry(admin: SocketAddr, channel: &str, body: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let last = match try_publish(admin, channel, body, 5 * SEC) {
            Ok(r) if r.status == 201 => return publish_id(&r),
            Ok(r) if r.status == 503 => r.brief(),
            Ok(r) => panic!("publish on {admin}: unexpected answer {}", r.brief()),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "publish on {admin} not accepted within {within:?}; last: {last}"
        );
        thread::sleep(100 * MS);
    }
}

fn got_of(r: &Response) -> Got {
    Got {
        id: r.message_id(),
        channel: r.header("channel").unwrap_or_default().to_string(),
        body: r.body_str(),
        lost: r.header("messages-lost") == Some("true"),
    }
}

fn lost(r: &Response) -> bool {
    r.header("messages-lost") == Some("true")
}

/// One `GET path` on a fresh connection whose answer must come before `deadline`.
fn get_until(addr: SocketAddr, path: &str, deadline: Instant) -> Result<Response, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("deadline passed".into());
    }
    let stream = TcpStream::connect_timeout(&addr, left.min(5 * SEC))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut c = Conn::from_stream(stream);
    c.set_read_timeout(left.max(MS));
    c.try_send(&request_bytes("GET", path, &[], None))
        .map_err(|e| format!("send to {addr}: {e}"))?;
    c.read_response()
        .map_err(|e| format!("GET {path} on {addr}: {e}"))
}

/// The client's long-poll loop (docs/protocol.md): poll `/sub/{channels}?since=C`,
/// take `Message-Id` from the `200` or `204` as the next cursor. Poll `i` goes to
/// `nodes[i % len]`. Stops after `want` messages; Err (with what was received) on a
/// status other than 200/204, a failed request, or when `within` has passed.
fn poll_loop(
    nodes: &[SocketAddr],
    channels: &str,
    since: &str,
    want: usize,
    poll_timeout: &str,
    within: Duration,
) -> Result<Vec<Got>, (Vec<Got>, String)> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut cursor = since.to_string();
    let mut i = 0;
    while got.len() < want {
        let node = nodes[i % nodes.len()];
        i += 1;
        let path = format!("/sub/{channels}?since={cursor}&timeout={poll_timeout}");
        let r = match get_until(node, &path, deadline) {
            Ok(r) => r,
            Err(e) => {
                let e = format!("after {} of {want} messages: {e}", got.len());
                return Err((got, e));
            }
        };
        match r.status {
            200 => {
                let g = got_of(&r);
                cursor = g.id.clone();
                got.push(g);
            }
            204 => cursor = r.message_id(),
            _ => {
                let e = format!("GET {path} on {node}: {}", r.brief());
                return Err((got, e));
            }
        }
    }
    Ok(got)
}

/// Asserts `got` is exactly `want` (same ids, channels, bodies, in order) with no gap
/// signal anywhere.
fn assert_exactly(what: &str, got: &[Got], want: &[Pub]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.id == w.id && g.channel == w.channel && g.body == w.body && !g.lost,
            "{what}: message {i} differs: got {g:?}, want {w:?} (no gap signal)\n\
             received: {got:?}"
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: received {} messages, published {}; missing from {:?}",
        got.len(),
        want.len(),
        want.get(got.len())
    );
}

/// Reads blocks from `s` until `n` events with an `id:` have come, or `deadline`;
/// returns every block read (gap frames included).
fn sse_take(s: &mut Sse, n: usize, deadline: Instant) -> Result<Vec<SseEvent>, String> {
    let mut blocks = Vec::new();
    while blocks
        .iter()
        .filter(|e: &&SseEvent| e.id().is_some())
        .count()
        < n
    {
        match s.poll_block(deadline) {
            Ok(Some(b)) => blocks.push(SseEvent::parse(b)),
            Ok(None) => {
                return Err(format!(
                    "deadline passed with {} of {n} events; got {blocks:?}",
                    blocks.iter().filter(|e| e.id().is_some()).count()
                ))
            }
            Err(e) => return Err(format!("stream failed: {e}; got {blocks:?}")),
        }
    }
    Ok(blocks)
}

/// Event blocks as deliveries on the single channel `channel` (`lost` when an
/// `event: lost` frame came right before). Other frames are kept as bodies of an
/// id-less entry, so an assertion shows them.
fn sse_as_got(blocks: &[SseEvent], channel: &str) -> Vec<Got> {
    let mut out = Vec::new();
    let mut gap = false;
    for b in blocks {
        match (b.id(), b.event()) {
            (None, Some("lost")) => gap = true,
            (Some(id), None) => {
                out.push(Got {
                    id: id.to_string(),
                    channel: channel.to_string(),
                    body: b.data(),
                    lost: gap,
                });
                gap = false;
            }
            _ => out.push(Got {
                id: String::new(),
                channel: String::new(),
                body: b.raw.clone(),
                lost: false,
            }),
        }
    }
    out
}

fn wait_stat_at_least(admin: SocketAddr, field: &str, want: u64, within: Duration) {
    let mut last = 0;
    let ok = wait_until(
        || {
            last = stat(admin, field);
            last >= want
        },
        within,
    );
    assert!(
        ok,
        "/stats {field} on {admin} did not reach {want} within {within:?} (last {last})"
    );
}

/// `/health` on every listener of `addrs` answers `want` within `within`.
fn assert_health(addrs: &[SocketAddr], want: u16, within: Duration, why: &str) {
    for &a in addrs {
        let (ok, last) = wait_health(a, want, within);
        assert!(
            ok,
            "{why}: /health on {a} not {want} within {within:?} (last {last:?})"
        );
    }
}

// --- 1 ---------------------------------------------------------------------------------

/// A poll parked on node A is answered by a publish on node B (with a cursor, and
/// without one on node C), and the publish answer counts this node's subscribers and
/// the nodes subscribed in Redis.
#[test]
fn a_publish_on_one_node_answers_a_poll_parked_on_another() {
    if skip("a_publish_on_one_node_answers_a_poll_parked_on_another") {
        return;
    }
    let c = Cluster::start(3, &[]);
    let (a, b, cc) = (c.node(0), c.node(1), c.node(2));
    let m0 = publish(b.admin, "x1", "zero");

    let mut parked = park(a.public, &format!("/sub/x1?since={m0}&timeout=20"));
    wait_stat(a.admin, "parked", 1, 5 * SEC);
    assert!(
        parked.quiet_for(200 * MS),
        "poll on A answered before anything newer than its cursor was published"
    );
    let m1 = publish(b.admin, "x1", "one");
    let r = parked.response();
    assert_eq!(assert_delivery(&r, "x1", b"one"), m1);
    assert!(!lost(&r), "{}", r.brief());

    // No cursor: only what is published from now on, from another node.
    let mut fresh = park(cc.public, "/sub/x1?timeout=20");
    wait_stat(cc.admin, "parked", 1, 5 * SEC);
    assert!(
        fresh.quiet_for(200 * MS),
        "old message delivered to a poll without cursor"
    );
    let m2 = publish(a.admin, "x1", "two");
    let r = fresh.response();
    assert_eq!(assert_delivery(&r, "x1", b"two"), m2);
    assert!(!lost(&r), "{}", r.brief());

    // The 201 body in cluster mode: B's own subscribers (none) and the nodes subscribed.
    let mut parked = park(a.public, &format!("/sub/x1?since={m2}&timeout=20"));
    wait_stat(a.admin, "parked", 1, 5 * SEC);
    wait_stat_at_least(a.admin, "backplane_channels", 1, 5 * SEC);
    let r = publish_full(b.admin, "x1", b"three", None);
    let m3 = publish_id(&r);
    let v = r.json();
    assert_eq!(v["channel"], "x1", "{v}");
    assert_eq!(
        v["subscribers"].as_u64(),
        Some(0),
        "B has no subscriber: {v}"
    );
    assert!(
        v["nodes"].as_u64().is_some_and(|n| n >= 1),
        "node A is subscribed to x1 in Redis: {v}"
    );
    assert_eq!(
        v["buffered"].as_u64(),
        Some(4),
        "zero, one, two, three: {v}"
    );
    assert_eq!(assert_delivery(&parked.response(), "x1", b"three"), m3);
    // `published` counts the publishes each node carried out (B: zero, one, three).
    assert_eq!(
        (stat(a.admin, "published"), stat(b.admin, "published")),
        (1, 3),
        "published on A and B"
    );
}

// --- 2 ---------------------------------------------------------------------------------

/// Ids strictly increase across all channels of all nodes, never below the wall clock
/// in microseconds; concurrent publishes on three nodes get distinct ids; and they come
/// from one counter: set ahead of the clock in Redis, every node continues above it.
#[test]
fn ids_strictly_increase_across_nodes_and_channels() {
    if skip("ids_strictly_increase_across_nodes_and_channels") {
        return;
    }
    let c = Cluster::start(3, &[]);
    let channels = ["i-a", "i-b", "i-c", "i-d"];
    let mut last = 0u64;
    for i in 0..48 {
        let node = c.node(i % 3);
        let ch = channels[(i / 3 + i) % channels.len()];
        let before = now_micros();
        let id = id_num(&publish(node.admin, ch, format!("s{i}")));
        assert!(
            id > last,
            "publish {i} on node {} to {ch}: id {id} not above the previous {last}",
            i % 3
        );
        assert!(
            id >= before,
            "id {id} below the wall clock in µs ({before})"
        );
        last = id;
    }

    // Concurrently: each node's own ids increase, and no id is given twice.
    let admins: Vec<SocketAddr> = c.nodes.iter().map(|n| n.admin).collect();
    let per_node: Vec<Vec<u64>> = thread::scope(|s| {
        let handles: Vec<_> = admins
            .iter()
            .enumerate()
            .map(|(n, &admin)| {
                s.spawn(move || {
                    (0..20)
                        .map(|i| {
                            let ch = channels[(n + i) % channels.len()];
                            id_num(&publish(admin, ch, format!("c{n}-{i}")))
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("publisher thread"))
            .collect()
    });
    let mut all: Vec<u64> = Vec::new();
    for (n, ids) in per_node.iter().enumerate() {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "node {n}'s successive ids do not increase: {ids:?}"
        );
        assert!(
            ids[0] > last,
            "node {n}: id {} after {last} was issued",
            ids[0]
        );
        all.extend(ids);
    }
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "an id was issued twice across nodes");

    // Ids taken from the clock increase anyway; what makes them one sequence is the one
    // counter (`holdfast:id`, the last id issued). Put it a minute ahead of the clock,
    // as if some node had run ahead: every node's next id must be above it.
    let ahead = now_micros() + 60_000_000;
    assert_eq!(
        c.redis.cli(&["SET", "holdfast:id", &ahead.to_string()]),
        "OK"
    );
    let mut last = ahead;
    for i in 0..6 {
        let id = id_num(&publish(
            c.node(i % 3).admin,
            channels[i % 4],
            format!("a{i}"),
        ));
        assert!(
            id > last,
            "node {}: id {id} not above {last} (the cluster's last id, {ahead} at first)",
            i % 3
        );
        last = id;
    }
}

// --- 3 ---------------------------------------------------------------------------------

/// Publishes `n` messages from a background thread, each on a random node (of
/// `admins`) to a random channel of `channels`, with random sleeps of 0-3 ms; returns
/// what it published, in order.
fn random_publisher(
    admins: Vec<SocketAddr>,
    channels: &'static [&'static str],
    n: usize,
    seed: u64,
) -> thread::JoinHandle<Vec<Pub>> {
    thread::spawn(move || {
        let mut rng = Rng(seed);
        (0..n)
            .map(|i| {
                let admin = admins[rng.below(admins.len() as u64) as usize];
                let ch = channels[rng.below(channels.len() as u64) as usize];
                let p = pub_msg(admin, ch, &format!("m{i}"));
                thread::sleep(rng.below(4) as u32 * MS);
                p
            })
            .collect()
    })
}

/// A balancer without stickiness: every poll goes to the next node, while publishes land
/// on random nodes. Every message is received exactly once, in order, with no gap
/// signal; for one channel, then for three channels with one cursor.
#[test]
fn a_poll_loop_that_changes_node_every_poll_gets_every_message_once_in_order() {
    if skip("a_poll_loop_that_changes_node_every_poll_gets_every_message_once_in_order") {
        return;
    }
    const N: usize = 200;
    let c = Cluster::start(3, &["--buffer-messages", "1024"]);
    let publics: Vec<SocketAddr> = c.nodes.iter().map(|n| n.public).collect();
    let admins: Vec<SocketAddr> = c.nodes.iter().map(|n| n.admin).collect();

    for (channels, list) in [(&["one"][..], "one"), (&["a", "b", "c"][..], "a,b,c")] {
        let publisher = random_publisher(admins.clone(), channels, N, 0x9e37_79b9_7f4a_7c15);
        let got = poll_loop(&publics, list, "0", N, "5", 30 * SEC);
        let published = publisher.join().expect("publisher thread panicked");
        let got = got.unwrap_or_else(|(got, e)| {
            panic!(
                "/sub/{list}: {e}\nreceived {} of {N}; last {:?}",
                got.len(),
                got.last()
            )
        });
        assert_exactly(&format!("/sub/{list} across nodes"), &got, &published);
    }
}

// --- 4 ---------------------------------------------------------------------------------

/// An event stream on node A fed by publishes on node B, dropped after k events and
/// resumed on node C with `Last-Event-ID`: the rest, nothing lost, nothing repeated, and
/// no `event: lost`.
#[test]
fn an_event_stream_fed_from_another_node_resumes_on_a_third() {
    if skip("an_event_stream_fed_from_another_node_resumes_on_a_third") {
        return;
    }
    let c = Cluster::start(3, &[]);
    let (a, b, cc) = (c.node(0), c.node(1), c.node(2));
    let mut s = Sse::open(a.public, "/sub/s4?since=0", &[]);
    wait_stat(a.admin, "sse_streams", 1, 5 * SEC);
    let mut published = pub_many(b.admin, "s4", "e", 0..6);
    let blocks = sse_take(&mut s, 4, Instant::now() + 10 * SEC).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly("stream on A", &sse_as_got(&blocks, "s4"), &published[..4]);
    drop(s);
    published.extend(pub_many(b.admin, "s4", "e", 6..10));

    let last = published[3].id.clone();
    let mut s = Sse::open(cc.public, "/sub/s4", &[("Last-Event-ID", last.as_str())]);
    let blocks = sse_take(&mut s, 6, Instant::now() + 10 * SEC).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly("resumed on C", &sse_as_got(&blocks, "s4"), &published[4..]);
    // Live from a third node.
    wait_stat(cc.admin, "sse_streams", 1, 5 * SEC);
    let more = pub_many(a.admin, "s4", "e", 10..12);
    let blocks = sse_take(&mut s, 2, Instant::now() + 10 * SEC).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly("live on C", &sse_as_got(&blocks, "s4"), &more);
    s.quiet_for(300 * MS).unwrap();
}

// --- 5 ---------------------------------------------------------------------------------

/// `DELETE /pub/ch` on node B ends the channel everywhere: polls parked on A get `410`
/// (alone or among other channels), a stream on C gets `event: deleted` and is closed;
/// a second DELETE anywhere is `404`; a cursor older than the dropped messages is told.
#[test]
fn a_delete_on_one_node_ends_the_channel_on_every_node() {
    if skip("a_delete_on_one_node_ends_the_channel_on_every_node") {
        return;
    }
    let c = Cluster::start(3, &[]);
    let (a, b, cc) = (c.node(0), c.node(1), c.node(2));
    let m1 = publish(b.admin, "d5", "one");
    let m2 = publish(b.admin, "d5", "two");
    let mut alone = park(a.public, &format!("/sub/d5?since={m2}&timeout=30"));
    let mut among = park(a.public, &format!("/sub/x5,d5?since={m2}&timeout=30"));
    let mut stream = Sse::open(cc.public, "/sub/d5", &[("Last-Event-ID", m2.as_str())]);
    wait_stat(a.admin, "parked", 2, 5 * SEC);
    wait_stat(cc.admin, "sse_streams", 1, 5 * SEC);
    // Both nodes subscribed in Redis (the delete notice travels there).
    wait_stat_at_least(a.admin, "backplane_channels", 1, 5 * SEC);
    wait_stat_at_least(cc.admin, "backplane_channels", 1, 5 * SEC);

    let r = request(b.admin, "DELETE", "/pub/d5", &[], None);
    assert_eq!(r.status, 204, "DELETE on B: {}", r.brief());
    for (what, conn) in [("/sub/d5", &mut alone), ("/sub/x5,d5", &mut among)] {
        let r = conn.response();
        assert_eq!(
            r.status,
            410,
            "{what} parked on A after DELETE on B: {}",
            r.brief()
        );
    }
    let ev = stream.event_within(10 * SEC);
    assert_eq!(
        (ev.event(), ev.data()),
        (Some("deleted"), "d5".to_string()),
        "stream on C after DELETE on B: {ev:?}"
    );
    stream.wait_end(5 * SEC).unwrap();

    // m2 was dropped by the delete: a cursor before it is told with the next message.
    let m3 = publish(cc.admin, "d5", "three");
    let r = poll(a.public, &format!("/sub/d5?since={m1}&timeout=5"));
    assert_eq!(assert_delivery(&r, "d5", b"three"), m3);
    assert!(
        lost(&r),
        "m2 was deleted and the client was not told: {}",
        r.brief()
    );
    // Gone everywhere: deleting it again, on any node, is 404 (the nodes' polls were
    // answered and the stream closed, so nobody waits on it; "three" went with it).
    let r = request(b.admin, "DELETE", "/pub/d5", &[], None);
    assert_eq!(r.status, 204, "DELETE after \"three\": {}", r.brief());
    for (name, node) in [("A", a), ("B", b), ("C", cc)] {
        let r = request(node.admin, "DELETE", "/pub/d5", &[], None);
        assert_eq!(r.status, 404, "second DELETE, on {name}: {}", r.brief());
    }
}

// --- 6 ---------------------------------------------------------------------------------

/// A client had k of n messages from node A's stream when A was SIGKILLed; more are
/// published on B; it resumes on C (and on A's replacement) with `Last-Event-ID` and
/// gets everything after its last event, in order, with no `event: lost`.
#[test]
fn a_node_killed_mid_stream_loses_nothing_for_a_client_that_resumes_elsewhere() {
    if skip("a_node_killed_mid_stream_loses_nothing_for_a_client_that_resumes_elsewhere") {
        return;
    }
    let mut c = Cluster::start(3, &[]);
    let mut s = Sse::open(c.node(0).public, "/sub/k6?since=0", &[]);
    wait_stat(c.node(0).admin, "sse_streams", 1, 5 * SEC);
    let b = c.node(1).admin;
    let mut published = pub_many(b, "k6", "k", 0..8);
    let blocks = sse_take(&mut s, 5, Instant::now() + 10 * SEC).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly("stream on A", &sse_as_got(&blocks, "k6"), &published[..5]);

    c.kill(0);
    s.wait_end(5 * SEC)
        .expect("the stream of a SIGKILLed node ends");
    published.extend(pub_many(b, "k6", "k", 8..12));
    let last = published[4].id.clone();

    let mut s = Sse::open(
        c.node(2).public,
        "/sub/k6",
        &[("Last-Event-ID", last.as_str())],
    );
    let blocks = sse_take(&mut s, 7, Instant::now() + 10 * SEC).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly("resumed on C", &sse_as_got(&blocks, "k6"), &published[5..]);
    s.quiet_for(300 * MS).unwrap();

    // A's replacement, started after the messages were published, knows them too.
    c.replace(0);
    let mut s = Sse::open(
        c.node(0).public,
        "/sub/k6",
        &[("Last-Event-ID", last.as_str())],
    );
    let blocks = sse_take(&mut s, 7, Instant::now() + 10 * SEC).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly(
        "resumed on A's replacement",
        &sse_as_got(&blocks, "k6"),
        &published[5..],
    );
}

// --- 7 ---------------------------------------------------------------------------------

/// Every node SIGKILLed and replaced, Redis kept: a client with a cursor from before gets
/// what it missed, on long-poll and on a stream, with no gap signal (the buffer is in
/// Redis, so the new nodes can vouch for the old cursor). Then Redis itself restarted
/// with its data: the same, and the open stream goes on.
#[test]
fn every_node_restarted_with_redis_kept_loses_nothing() {
    if skip("every_node_restarted_with_redis_kept_loses_nothing") {
        return;
    }
    let mut c = Cluster::start(3, &[]);
    let mut published = pub_many(c.node(0).admin, "r7", "r", 1..4);
    let r = poll(c.node(1).public, "/sub/r7?since=0&timeout=5");
    let m1 = assert_delivery(&r, "r7", b"r1");

    c.restart_all();
    published.push(pub_msg(c.node(1).admin, "r7", "r4"));

    // The long-poll loop, from the old cursor, each poll on another new node.
    let publics: Vec<SocketAddr> = c.nodes.iter().map(|n| n.public).rev().collect();
    let got = poll_loop(&publics, "r7", &m1, 3, "5", 20 * SEC)
        .unwrap_or_else(|(got, e)| panic!("{e}; received {got:?}"));
    assert_exactly(
        "long-poll after every node restarted",
        &got,
        &published[1..],
    );

    let mut s = Sse::open(
        c.node(0).public,
        "/sub/r7",
        &[("Last-Event-ID", m1.as_str())],
    );
    let blocks = sse_take(&mut s, 3, Instant::now() + 10 * SEC).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly(
        "stream after every node restarted",
        &sse_as_got(&blocks, "r7"),
        &published[1..],
    );

    // Redis restarted with its data (saved, loaded again): the nodes reconnect, the
    // stream on node 0 goes on, and the old cursor still gets everything, with no gap.
    c.redis.restart_keep_data();
    let all: Vec<SocketAddr> = c.nodes.iter().flat_map(|n| [n.public, n.admin]).collect();
    assert_health(
        &all,
        200,
        15 * SEC,
        "nodes back on Redis restarted with its data",
    );
    let id = publish_retry(c.node(2).admin, "r7", "r5", 10 * SEC);
    published.push(Pub {
        id,
        channel: "r7".into(),
        body: "r5".into(),
    });
    let blocks = sse_take(&mut s, 1, Instant::now() + 10 * SEC).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly(
        "stream across a Redis restart with its data",
        &sse_as_got(&blocks, "r7"),
        &published[4..],
    );
    let got = poll_loop(&publics, "r7", &m1, 4, "5", 20 * SEC)
        .unwrap_or_else(|(got, e)| panic!("{e}; received {got:?}"));
    assert_exactly(
        "long-poll across a Redis restart with its data",
        &got,
        &published[1..],
    );
}

// --- 8 ---------------------------------------------------------------------------------

/// Redis restarted empty: a client whose cursor is from before gets the gap signal with
/// its next delivery (long-poll and stream), and new ids are still above every old one.
#[test]
fn redis_restarted_empty_is_a_signalled_gap_and_ids_keep_increasing() {
    if skip("redis_restarted_empty_is_a_signalled_gap_and_ids_keep_increasing") {
        return;
    }
    let mut c = Cluster::start(3, &[]);
    let m1 = publish(c.node(0).admin, "e8", "one");
    let m2 = publish(c.node(0).admin, "e8", "two (lost with Redis's data)");
    let r = poll(c.node(0).public, "/sub/e8?since=0&timeout=5");
    assert_eq!(assert_delivery(&r, "e8", b"one"), m1);

    c.redis.restart_empty();
    let all: Vec<SocketAddr> = c.nodes.iter().flat_map(|n| [n.public, n.admin]).collect();
    assert_health(&all, 200, 15 * SEC, "nodes back on the restarted Redis");

    let m3 = publish_retry(c.node(1).admin, "e8", "three", 10 * SEC);
    assert!(
        id_num(&m3) > id_num(&m2),
        "id {m3} after Redis lost its data is not above the old {m2}"
    );
    let r = poll(c.node(2).public, &format!("/sub/e8?since={m1}&timeout=5"));
    assert_eq!(assert_delivery(&r, "e8", b"three"), m3);
    assert!(
        lost(&r),
        "m2 went with Redis's data and the client was not told: {}",
        r.brief()
    );

    let mut s = Sse::open(
        c.node(1).public,
        "/sub/e8",
        &[("Last-Event-ID", m1.as_str())],
    );
    let ev = s.event_within(10 * SEC);
    assert_eq!(
        (ev.event(), ev.data()),
        (Some("lost"), m3.clone()),
        "stream from a cursor before Redis lost its data: {ev:?}"
    );
    let ev = s.event_within(10 * SEC);
    assert_eq!(
        (ev.id(), ev.data()),
        (Some(m3.as_str()), "three".to_string())
    );

    // Every node keeps issuing ids above all the old ones.
    let mut last = id_num(&m3);
    for i in 0..6 {
        let id = id_num(&publish(c.node(i % 3).admin, "e8-more", format!("x{i}")));
        assert!(id > last, "id {id} on node {} after {last}", i % 3);
        last = id;
    }
}

/// Ids never go behind one a node has already issued or delivered, also after Redis
/// lost its data, and the loss is signalled (docs/protocol.md, Cluster mode). Ids taken
/// from the clock would hide a miss, so the cluster's counter is first put a minute
/// ahead of the clock (as after a burst, or when Redis comes back on a host whose clock
/// is behind). Node A issues m1 and m2, node B delivers m1 to a client; Redis restarts
/// empty, taking m2 with it. The next id from B must be above m1 and the next from A
/// above m2, and the client, polling node C with `since=m1`, must get B's message with
/// the gap signal (m2 is gone). With ids that went back below m1 the client would be
/// answered nothing at all.
#[test]
fn ids_stay_above_what_nodes_delivered_when_redis_loses_its_data() {
    if skip("ids_stay_above_what_nodes_delivered_when_redis_loses_its_data") {
        return;
    }
    let mut c = Cluster::start(3, &[]);
    let ahead = now_micros() + 60_000_000;
    assert_eq!(
        c.redis.cli(&["SET", "holdfast:id", &ahead.to_string()]),
        "OK"
    );
    let m1 = publish(c.node(0).admin, "g8", "one");
    assert!(id_num(&m1) > ahead, "id {m1} not above the counter {ahead}");
    let m2 = publish(c.node(0).admin, "g8", "two (lost with Redis's data)");
    let r = poll(c.node(1).public, "/sub/g8?since=0&timeout=5");
    assert_eq!(assert_delivery(&r, "g8", b"one"), m1);

    c.redis.restart_empty();
    let all: Vec<SocketAddr> = c.nodes.iter().flat_map(|n| [n.public, n.admin]).collect();
    assert_health(&all, 200, 15 * SEC, "nodes back on the restarted Redis");

    let by_b = publish_retry(c.node(1).admin, "g8", "three", 10 * SEC);
    let by_a = publish_retry(c.node(0).admin, "g8", "four", 10 * SEC);
    let r = poll(c.node(2).public, &format!("/sub/g8?since={m1}&timeout=2"));
    assert!(
        id_num(&by_b) > id_num(&m1) && id_num(&by_a) > id_num(&m2).max(id_num(&by_b)),
        "after Redis lost its data: node B (which delivered {m1}) issued {by_b}, then \
         node A (which issued {m1} and {m2}) {by_a}; a client at {m1} is then answered {}",
        r.brief()
    );
    assert_eq!(assert_delivery(&r, "g8", b"three"), by_b);
    assert!(
        lost(&r),
        "m2 ({m2}) went with Redis's data and the client at m1 was not told: {}",
        r.brief()
    );
}

/// Redis came back from an older snapshot (an RDB taken before the last publishes, a
/// crash under `appendfsync everysec`, a lagging replica promoted): its `P:id` is behind
/// ids the nodes saw, and the messages after the snapshot are gone. The nodes notice and
/// a cursor from before them is told with its next delivery; ids stay above all of them.
#[test]
fn redis_back_from_an_older_snapshot_is_a_signalled_gap() {
    if skip("redis_back_from_an_older_snapshot_is_a_signalled_gap") {
        return;
    }
    let mut c = Cluster::start(3, &[]);
    let b1 = publish(c.node(2).admin, "snap", "one");
    assert_eq!(c.redis.cli(&["SAVE"]), "OK", "SAVE");
    let b2 = publish(c.node(2).admin, "snap", "two (after the snapshot)");
    let b3 = publish(c.node(2).admin, "snap", "three (after the snapshot)");
    // Redis dies without saving and comes back with the snapshot: b2 and b3 are gone.
    c.redis.stop();
    c.redis.start_again();
    let all: Vec<SocketAddr> = c.nodes.iter().flat_map(|n| [n.public, n.admin]).collect();
    assert_health(&all, 200, 15 * SEC, "nodes back on the restored Redis");

    let b4 = publish_retry(c.node(0).admin, "snap", "four", 10 * SEC);
    assert!(
        id_num(&b4) > id_num(&b3),
        "id {b4} issued after the restore is not above {b3}, issued before it"
    );
    let r = poll(c.node(1).public, &format!("/sub/snap?since={b1}&timeout=5"));
    assert_eq!(assert_delivery(&r, "snap", b"four"), b4);
    assert!(
        lost(&r),
        "{b2} and {b3} went with the newer data and the client at {b1} was not told: {}",
        r.brief()
    );
}

// --- 9 ---------------------------------------------------------------------------------

/// Redis stopped: a publish is `503` + `Retry-After` within ~3 s, `/health` is `503` on
/// the nodes, a poll parked before the stop stays parked; after Redis is back, the first
/// message published reaches that poll and `/health` is `200` again.
#[test]
fn redis_stopped_fails_publishes_fast_and_keeps_parked_polls() {
    if skip("redis_stopped_fails_publishes_fast_and_keeps_parked_polls") {
        return;
    }
    let mut c = Cluster::start(3, &[]);
    let (a, b) = (c.node(0), c.node(1));
    let (a_public, a_admin, b_public, b_admin) = (a.public, a.admin, b.public, b.admin);
    let mut parked = park(a_public, "/sub/s9?since=0&timeout=60");
    // A poll whose own timeout ends during the outage: 204 as usual.
    let mut short = park(a_public, "/sub/s9b?since=0&timeout=2");
    wait_stat(a_admin, "parked", 2, 5 * SEC);
    assert_eq!(stat(b_admin, "backplane_up"), 1, "before the stop");

    c.redis.stop();
    let t = Instant::now();
    let r = try_publish(b_admin, "s9", "while Redis is down", 10 * SEC)
        .unwrap_or_else(|e| panic!("publish with Redis stopped: {e}"));
    let took = t.elapsed();
    assert_eq!(r.status, 503, "publish with Redis stopped: {}", r.brief());
    assert_eq!(r.header("retry-after"), Some("1"), "{}", r.brief());
    assert_eq!(r.body_str(), "backplane unavailable\n", "{}", r.brief());
    assert!(took <= 3 * SEC, "publish with Redis stopped took {took:?}");

    assert_health(
        &[a_public, a_admin, b_public, b_admin],
        503,
        5 * SEC,
        "Redis stopped",
    );
    let h = common::protocol::get(a_public, "/health");
    assert!(
        h.body_str().contains("backplane down"),
        "/health body while Redis is stopped: {}",
        h.brief()
    );
    assert_eq!(stat(b_admin, "backplane_up"), 0, "while Redis is stopped");
    let r = short.response();
    assert_eq!(r.status, 204, "timeout=2 during the outage: {}", r.brief());
    assert_eq!(r.message_id(), "0", "{}", r.brief());
    assert!(
        parked.quiet_for(500 * MS),
        "the poll parked on A was answered or closed while Redis was down"
    );
    assert_eq!(stat(a_admin, "parked"), 1, "the poll parked on A is gone");

    c.redis.start_again();
    let id = publish_retry(b_admin, "s9", "after Redis came back", 15 * SEC);
    let r = parked
        .read_response()
        .unwrap_or_else(|e| panic!("the parked poll got nothing after Redis came back: {e}"));
    assert_eq!(r.status, 200, "{}", r.brief());
    assert_eq!(r.body_str(), "after Redis came back", "{}", r.brief());
    assert!(
        id_num(&r.message_id()) <= id_num(&id),
        "delivered {} after the publish answered {id}",
        r.message_id()
    );
    assert!(!lost(&r), "cursor 0 is never told of a gap: {}", r.brief());
    assert_health(
        &[a_public, a_admin, b_public, b_admin],
        200,
        10 * SEC,
        "Redis back",
    );
    assert_eq!(stat(b_admin, "backplane_up"), 1, "after Redis came back");
}

// --- 10 --------------------------------------------------------------------------------

/// Redis frozen with SIGSTOP (its socket still accepts): a publish is `503` within ~3 s
/// instead of hanging, `/health` goes `503`; after SIGCONT publishing and delivery work
/// again and `/health` is `200`.
#[test]
fn redis_frozen_fails_publishes_fast_and_recovers_after_thaw() {
    if skip("redis_frozen_fails_publishes_fast_and_recovers_after_thaw") {
        return;
    }
    let mut c = Cluster::start(3, &[]);
    let (a_public, a_admin) = (c.node(0).public, c.node(0).admin);
    let (b_public, b_admin) = (c.node(1).public, c.node(1).admin);
    let c_admin = c.node(2).admin;
    let mut parked = park(a_public, "/sub/f10?since=0&timeout=60");
    wait_stat(a_admin, "parked", 1, 5 * SEC);
    wait_stat_at_least(a_admin, "backplane_channels", 1, 5 * SEC);

    c.redis.freeze();
    let t = Instant::now();
    let r = try_publish(b_admin, "f10", "frozen", 10 * SEC);
    let took = t.elapsed();
    let r = r.unwrap_or_else(|e| {
        c.redis.thaw();
        panic!("publish with Redis frozen: {e} (after {took:?})")
    });
    assert_eq!(r.status, 503, "publish with Redis frozen: {}", r.brief());
    assert!(
        r.header("retry-after").is_some(),
        "503 without Retry-After: {}",
        r.brief()
    );
    assert!(took <= 3 * SEC, "publish with Redis frozen took {took:?}");

    // The probe finds the wedged connection (about 3 s).
    assert_health(&[a_public, b_public, b_admin], 503, 8 * SEC, "Redis frozen");
    assert!(
        parked.quiet_for(200 * MS),
        "the poll parked on A was answered or closed while Redis was frozen"
    );

    c.redis.thaw();
    let id = publish_retry(b_admin, "f10", "thawed", 15 * SEC);
    // The 503'd "frozen" publish may have been carried out once Redis woke up: it may
    // come first, as a message of its own.
    let mut seen = Vec::new();
    let mut next = parked.read_response().map_err(|e| e.to_string());
    loop {
        let r = next.unwrap_or_else(|e| panic!("after thaw, got {seen:?} then: {e}"));
        assert_eq!(r.status, 200, "after thaw: {}", r.brief());
        assert!(!lost(&r), "after thaw: {}", r.brief());
        let g = got_of(&r);
        seen.push(g.clone());
        if g.body == "thawed" {
            assert_eq!(g.id, id, "{seen:?}");
            break;
        }
        assert!(
            g.body == "frozen" && seen.len() == 1,
            "after thaw: unexpected deliveries {seen:?}"
        );
        next = get_until(
            a_public,
            &format!("/sub/f10?since={}&timeout=10", g.id),
            Instant::now() + 15 * SEC,
        );
    }
    assert_health(
        &[a_public, a_admin, b_public, b_admin],
        200,
        10 * SEC,
        "Redis thawed",
    );

    // Delivery across nodes works as before. (The cursor is taken afresh: the "frozen"
    // publish, if Redis carried it out after "thawed", has a larger id.)
    let now = cursor_now(a_public, "f10");
    assert!(id_num(&now) >= id_num(&id), "cursor {now} below {id}");
    let mut parked = park(a_public, &format!("/sub/f10?since={now}&timeout=20"));
    wait_stat(a_admin, "parked", 1, 5 * SEC);
    let m = publish(c_admin, "f10", "later");
    assert_eq!(assert_delivery(&parked.response(), "f10", b"later"), m);
}

// --- 11 --------------------------------------------------------------------------------

/// Redis's subscriber connections killed every 100 ms, 10 times, while messages are
/// published on node B: a long-poll loop on A and a stream on C still get every message,
/// in order, with no gap signal (the nodes reconnect and catch up from Redis), and
/// `backplane_reconnects` shows the kills happened.
#[test]
fn killed_subscriber_connections_lose_nothing() {
    if skip("killed_subscriber_connections_lose_nothing") {
        return;
    }
    const N: usize = 60;
    let c = Cluster::start(3, &["--buffer-messages", "256"]);
    let (a, b, cc) = (c.node(0), c.node(1), c.node(2));
    let mut stream = Sse::open(cc.public, "/sub/k11?since=0", &[]);
    wait_stat(cc.admin, "sse_streams", 1, 5 * SEC);
    wait_stat_at_least(cc.admin, "backplane_channels", 1, 5 * SEC);
    let b_admin = b.admin;
    let redis = &c.redis;

    let (published, polled, killed) = thread::scope(|s| {
        let publisher = s.spawn(move || {
            (0..N)
                .map(|i| {
                    let p = pub_msg(b_admin, "k11", &format!("k{i}"));
                    thread::sleep(20 * MS);
                    p
                })
                .collect::<Vec<Pub>>()
        });
        let killer = s.spawn(move || {
            let mut killed = 0;
            for _ in 0..10 {
                thread::sleep(100 * MS);
                killed += redis.kill_pubsub_clients();
            }
            killed
        });
        let polled = poll_loop(&[a.public], "k11", "0", N, "30", 20 * SEC);
        (
            publisher.join().expect("publisher thread panicked"),
            polled,
            killer.join().expect("killer thread panicked"),
        )
    });
    assert!(killed > 0, "CLIENT KILL TYPE pubsub killed no connection");
    let polled = polled.unwrap_or_else(|(got, e)| panic!("long-poll on A: {e}; received {got:?}"));
    assert_exactly("long-poll loop on A", &polled, &published);
    let blocks =
        sse_take(&mut stream, N, Instant::now() + 10 * SEC).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly("stream on C", &sse_as_got(&blocks, "k11"), &published);

    let metrics = common::protocol::get(a.admin, "/metrics").body_str();
    assert!(
        metrics.contains("holdfast_backplane_reconnects_total"),
        "/metrics has no holdfast_backplane_reconnects_total:\n{metrics}"
    );
    for (name, node) in [("A", a), ("C", cc)] {
        let n = stat(node.admin, "backplane_reconnects");
        assert!(
            n > 0,
            "node {name}: backplane_reconnects {n} after {killed} kills"
        );
    }
}

// --- review findings --------------------------------------------------------------------

/// A delete made while a node's pub/sub connection is down reaches that node anyway,
/// in order, from its catch-up: its parked poll gets `410`, its stream `event:
/// deleted`, and its cache no longer answers with a deleted message.
#[test]
fn a_delete_made_while_a_node_was_cut_off_reaches_it() {
    if skip("a_delete_made_while_a_node_was_cut_off_reaches_it") {
        return;
    }
    let c = Cluster::start(2, &[]);
    let (a, b) = (c.node(0), c.node(1));
    let before = publish(b.admin, "other-d", "cursor");
    let m = publish(b.admin, "gone", "m");
    // A holds the channel: a poll parked after m, a stream, and m in its cache.
    let r = poll(a.public, &format!("/sub/gone?since={before}&timeout=5"));
    assert_eq!(assert_delivery(&r, "gone", b"m"), m);
    let mut parked = park(a.public, &format!("/sub/gone?since={m}&timeout=30"));
    let mut stream = Sse::open(a.public, "/sub/gone", &[("Last-Event-ID", m.as_str())]);
    wait_stat(a.admin, "parked", 1, 5 * SEC);
    wait_stat(a.admin, "sse_streams", 1, 5 * SEC);
    let reconnects = stat(a.admin, "backplane_reconnects");

    // Cut every node's subscription, and delete at once, before they are back.
    assert!(
        c.redis.kill_pubsub_clients() > 0,
        "no pub/sub connection to kill"
    );
    let r = request(b.admin, "DELETE", "/pub/gone", &[], None);
    assert_eq!(r.status, 204, "DELETE on B: {}", r.brief());

    let r = parked.response();
    assert_eq!(r.status, 410, "poll parked on A: {}", r.brief());
    let ev = stream.event_within(10 * SEC);
    assert_eq!(
        (ev.event(), ev.data()),
        (Some("deleted"), "gone".to_string()),
        "stream on A: {ev:?}"
    );
    assert!(
        stat(a.admin, "backplane_reconnects") > reconnects,
        "A's subscription was not cut, so this proves nothing"
    );
    // m went with the delete: a cursor before it is told, never handed m.
    let p = publish(b.admin, "gone", "after");
    let r = poll(a.public, &format!("/sub/gone?since={before}&timeout=5"));
    assert_eq!(assert_delivery(&r, "gone", b"after"), p);
    assert!(lost(&r), "{}", r.brief());
}

/// Nodes with different `--buffer-messages` (a rolling change of the flag): Redis
/// keeps what the publishing node's flag says, and a node with a smaller one still
/// replays all of it, in order, with the gap told once and nothing skipped.
#[test]
fn a_node_with_a_smaller_buffer_replays_everything_redis_holds() {
    if skip("a_node_with_a_smaller_buffer_replays_everything_redis_holds") {
        return;
    }
    let c = Cluster::start(1, &["--buffer-messages", "16"]);
    let small = c.start_node_with(&["--buffer-messages", "3"]);
    let before = publish(c.node(0).admin, "other-w", "cursor");
    let published = pub_many(c.node(0).admin, "w", "w", 0..21);
    // Redis holds the newest 16 (the publisher's flag): w5..w20.
    let mut s = Sse::open(
        small.public,
        "/sub/w",
        &[("Last-Event-ID", before.as_str())],
    );
    let blocks = sse_take(&mut s, 16, Instant::now() + 10 * SEC).unwrap_or_else(|e| panic!("{e}"));
    let got = sse_as_got(&blocks, "w");
    assert!(
        got[0].lost,
        "w0..w4 were evicted and the stream was not told: {got:?}"
    );
    let mut want = Vec::new();
    for (i, p) in published[5..].iter().enumerate() {
        want.push(Got {
            id: p.id.clone(),
            channel: "w".into(),
            body: p.body.clone(),
            lost: i == 0,
        });
    }
    assert_eq!(got, want, "replay on the node with --buffer-messages 3");
    // A long-poll loop there from the same cursor gets the same, one at a time.
    let mut cursor = before;
    for p in &published[5..] {
        let r = poll(small.public, &format!("/sub/w?since={cursor}&timeout=5"));
        assert_eq!(assert_delivery(&r, "w", p.body.as_bytes()), p.id);
        cursor = p.id.clone();
    }
}

/// A cursor no id can reach (a client made it up, past what Redis's scripts count
/// exactly) is answered like any cursor above everything: the poll times out, and the
/// node's Redis connection is not disturbed.
#[test]
fn a_made_up_cursor_past_every_id_is_just_a_cursor() {
    if skip("a_made_up_cursor_past_every_id_is_just_a_cursor") {
        return;
    }
    let c = Cluster::start(1, &[]);
    let a = c.node(0);
    for cursor in [u64::MAX, 1 << 53, (1 << 53) + 1] {
        let r = poll(
            a.public,
            &format!("/sub/never{cursor}?since={cursor}&timeout=0"),
        );
        assert_eq!(r.status, 204, "since={cursor}: {}", r.brief());
    }
    let r = pub_msg(a.admin, "never", "after");
    assert!(!r.id.is_empty());
    assert_eq!(stat(a.admin, "backplane_publish_errors"), 0);
}

/// `--message-ttl` applies to the buffer in Redis: a message older than it is gone for
/// every node, and a cursor from before it is told; a node that never held the channel
/// reads that from Redis.
#[test]
fn expired_messages_are_gone_everywhere_and_told() {
    if skip("expired_messages_are_gone_everywhere_and_told") {
        return;
    }
    let c = Cluster::start(2, &["--message-ttl", "1s"]);
    let (a, b) = (c.node(0), c.node(1));
    let before = publish(b.admin, "other-t", "cursor");
    let old = publish(b.admin, "ttl", "old");
    std::thread::sleep(1500 * MS);
    // Expired: nothing buffered, and a cursor before it is told with the next message.
    let r = poll(a.public, "/sub/ttl?since=0&timeout=0");
    assert_eq!(
        r.status,
        204,
        "an expired message was delivered: {}",
        r.brief()
    );
    let new = publish(b.admin, "ttl", "new");
    let r = poll(a.public, &format!("/sub/ttl?since={before}&timeout=5"));
    assert_eq!(assert_delivery(&r, "ttl", b"new"), new);
    assert!(
        lost(&r),
        "{old} expired unseen and the client was not told: {}",
        r.brief()
    );
    let r = poll(a.public, &format!("/sub/ttl?since={old}&timeout=5"));
    assert_eq!(assert_delivery(&r, "ttl", b"new"), new);
    assert!(!lost(&r), "nothing was missed after {old}: {}", r.brief());
}

// --- 13 --------------------------------------------------------------------------------

/// `--buffer-messages 2`: five messages published on B push three out of the channel's
/// buffer; a cursor from before them, polled on A, gets the first retained message with
/// `Messages-Lost: true` (and a stream on C gets `event: lost` first); `since=0` and a
/// cursor within the buffer are not told.
#[test]
fn an_eviction_is_signalled_on_another_node() {
    if skip("an_eviction_is_signalled_on_another_node") {
        return;
    }
    let c = Cluster::start(3, &["--buffer-messages", "2"]);
    let (a, b, cc) = (c.node(0), c.node(1), c.node(2));
    let before = publish(cc.admin, "other13", "cursor");
    let p = pub_many(b.admin, "ev13", "p", 0..5);

    let r = poll(a.public, &format!("/sub/ev13?since={before}&timeout=5"));
    assert_eq!(assert_delivery(&r, "ev13", b"p3"), p[3].id);
    assert!(
        lost(&r),
        "p0..p2 were evicted and the client was not told: {}",
        r.brief()
    );
    let r = poll(
        a.public,
        &format!("/sub/other13,ev13?since={before}&timeout=5"),
    );
    assert_eq!(assert_delivery(&r, "ev13", b"p3"), p[3].id);
    assert!(lost(&r), "multi-channel: {}", r.brief());

    let r = poll(a.public, &format!("/sub/ev13?since={}&timeout=5", p[3].id));
    assert_eq!(assert_delivery(&r, "ev13", b"p4"), p[4].id);
    assert!(!lost(&r), "{}", r.brief());
    let r = poll(a.public, "/sub/ev13?since=0&timeout=5");
    assert_eq!(assert_delivery(&r, "ev13", b"p3"), p[3].id);
    assert!(!lost(&r), "since=0 is never told: {}", r.brief());

    let mut s = Sse::open(
        cc.public,
        "/sub/ev13",
        &[("Last-Event-ID", before.as_str())],
    );
    let blocks = sse_take(&mut s, 2, Instant::now() + 10 * SEC).unwrap_or_else(|e| panic!("{e}"));
    let got = sse_as_got(&blocks, "ev13");
    assert_eq!(
        got,
        vec![
            Got {
                id: p[3].id.clone(),
                channel: "ev13".into(),
                body: "p3".into(),
                lost: true
            },
            Got {
                id: p[4].id.clone(),
                channel: "ev13".into(),
                body: "p4".into(),
                lost: false
            },
        ],
        "stream on C from a cursor before the evicted messages"
    );
}
