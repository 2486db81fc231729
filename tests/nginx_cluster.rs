//! Three holdfast nodes on one Redis (cluster mode) behind a real nginx running the
//! shipped `tuning/nginx-cluster.conf`, only its ports and paths templated
//! (`common::nginx::Nginx::start_cluster`). Every subscriber request goes through nginx;
//! every publish goes straight to some node's admin listener, as the config intends.
//!
//! - a long-poll cursor loop whose polls nginx spreads over the nodes, fed by publishes
//!   on random nodes, receives every message once, in order;
//! - an event stream through nginx receives what is published on the other nodes, as
//!   it is published;
//! - a node SIGKILLed: the poll parked on it is moved by nginx and answered, and the
//!   requests after it are all answered by the other nodes, none with an error;
//! - `/health` reaches a node; the admin paths are nginx's own 404, never proxied.
//!
//! nginx, redis-server and cluster mode are needed: nginx and Redis as for tests/nginx.rs
//! and tests/cluster.rs (`.ci/run` installs both). The tokio peer has no `--redis`, so
//! under `HOLDFAST_BIN=…holdfast-tokio` every test here returns at once, saying so.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Rng};
use common::http::{Conn, Response};
use common::nginx::Nginx;
use common::protocol::{
    assert_delivery, cursor_now, get, id_num, park, publish, publish_id, request, stat,
};
use common::sse::Sse;
use common::timing::wait_until;

const SEC: Duration = Duration::from_secs(1);

fn skip(test: &str) -> bool {
    common::cluster::skip_without_cluster_mode(test)
}

/// Three nodes on a fresh Redis, each started with `flags`, and nginx with the shipped
/// cluster config in front of their public listeners.
fn start(flags: &[&str]) -> (Cluster, Nginx) {
    let c = Cluster::start(3, flags);
    let publics: Vec<SocketAddr> = c.nodes.iter().map(|s| s.public).collect();
    let n = Nginx::start_cluster(&publics);
    (c, n)
}

/// `field` of every node's `/stats`, in node order.
fn stats_of(c: &Cluster, field: &str) -> Vec<u64> {
    c.nodes.iter().map(|s| stat(s.admin, field)).collect()
}

/// Waits up to `within` until `field` summed over the nodes is `want`; returns the
/// per-node values then (panics with the last ones otherwise).
fn wait_sum(c: &Cluster, field: &str, want: u64, within: Duration) -> Vec<u64> {
    let mut last = Vec::new();
    let ok = wait_until(
        || {
            last = stats_of(c, field);
            last.iter().sum::<u64>() == want
        },
        within,
    );
    assert!(
        ok,
        "/stats {field} over the nodes did not add up to {want} within {within:?} \
         (last {last:?})"
    );
    last
}

/// The body of nginx's own error page: a response with it never came from a node.
fn is_nginx_page(r: &Response) -> bool {
    r.body_str().contains("<center>nginx</center>")
}

// ---------------------------------------------------------------------------------
// 1. Long-poll through nginx, publishes on any node
// ---------------------------------------------------------------------------------

/// One client, one keep-alive connection to nginx, polling with its cursor while
/// another thread publishes on a random node's admin listener each time. nginx
/// balances each poll on its own (least_conn, no stickiness), so the loop's polls land
/// on all three nodes; it must still see every message once, in publish order, with
/// no gap signal.
#[test]
fn cursor_loop_through_nginx_gets_every_message_once_in_order() {
    if skip("cursor_loop_through_nginx_gets_every_message_once_in_order") {
        return;
    }
    const N: usize = 90;
    // Every node's buffer holds all N, so the poller may fall behind without a gap.
    let (c, n) = start(&["--buffer-messages", "256"]);
    let delivered_before = stats_of(&c, "delivered");
    let cursor = cursor_now(n.addr, "loop");
    let admins: Vec<SocketAddr> = c.nodes.iter().map(|s| s.admin).collect();
    let publisher = thread::spawn(move || {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut conns: Vec<Conn> = admins.iter().map(|a| Conn::open(*a)).collect();
        let mut per_node = [0usize; 3];
        let ids = (0..N)
            .map(|i| {
                let k = rng.below(3) as usize;
                per_node[k] += 1;
                let body = format!("message {i}");
                let r = conns[k].request("POST", "/pub/loop", &[], Some(body.as_bytes()));
                let id = publish_id(&r);
                if i % 10 == 0 {
                    thread::sleep(Duration::from_millis(5));
                }
                id
            })
            .collect::<Vec<_>>();
        (ids, per_node)
    });
    let mut client = Conn::open(n.addr);
    let mut got: Vec<String> = Vec::new();
    let mut since = cursor.clone();
    let deadline = Instant::now() + 20 * SEC;
    while got.len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} messages after 20 s; nginx logs:\n{}",
            got.len(),
            n.logs()
        );
        let r = client.get(&format!("/sub/loop?since={since}&timeout=5"));
        match r.status {
            200 => {
                assert_eq!(r.header("messages-lost"), None, "gap: {}", r.brief());
                let i = got.len();
                let id = assert_delivery(&r, "loop", format!("message {i}").as_bytes());
                assert!(
                    id_num(&id) > id_num(&since),
                    "message {i}: id {id} not above the cursor {since}"
                );
                since = id.clone();
                got.push(id);
            }
            204 => since = r.message_id(),
            _ => panic!(
                "poll through nginx: {}\nnginx logs:\n{}",
                r.brief(),
                n.logs()
            ),
        }
    }
    let (published, per_node) = publisher.join().expect("publisher thread");
    assert!(
        per_node.iter().all(|&k| k > 0),
        "the publishes did not use every node: {per_node:?}"
    );
    assert_eq!(got, published, "ids received through nginx vs published");
    // Nothing more: no message delivered twice after the last one.
    let r = client.get(&format!("/sub/loop?since={since}&timeout=0"));
    assert_eq!(r.status, 204, "after the last message: {}", r.brief());
    // The polls were spread: every node answered some of them with a message.
    let delivered: Vec<u64> = stats_of(&c, "delivered")
        .iter()
        .zip(&delivered_before)
        .map(|(a, b)| a - b)
        .collect();
    assert!(
        delivered.iter().all(|&d| d > 0),
        "messages delivered per node {delivered:?}: nginx did not spread the polls over \
         the three nodes"
    );
}

// ---------------------------------------------------------------------------------
// 2. SSE through nginx, publishes on the other nodes
// ---------------------------------------------------------------------------------

/// An event stream through nginx lands on one node; publishes on each of the two
/// others reach it through Redis and nginx, one at a time, each well within a second.
/// Then the stream is resumed through nginx with `Last-Event-ID` (on whichever node
/// nginx picks) and gets what was published meanwhile.
#[test]
fn sse_through_nginx_receives_publishes_on_other_nodes() {
    if skip("sse_through_nginx_receives_publishes_on_other_nodes") {
        return;
    }
    let (c, n) = start(&[]);
    let mut sse = Sse::open(n.addr, "/sub/live", &[]);
    let streams = wait_sum(&c, "sse_streams", 1, 5 * SEC);
    let holder = streams
        .iter()
        .position(|&s| s == 1)
        .expect("a node holds it");
    // The holder is subscribed to the channel in Redis before anything is published.
    let holder_admin = c.node(holder).admin;
    assert!(
        wait_until(|| stat(holder_admin, "backplane_channels") >= 1, 5 * SEC),
        "node {holder} did not subscribe to the channel in Redis"
    );
    let others: Vec<usize> = (0..3).filter(|&k| k != holder).collect();
    let mut last = String::new();
    for round in 0..2 {
        for &k in &others {
            let body = format!("live {round} from node {k}\nsecond line");
            let t = Instant::now();
            let id = publish(c.node(k).admin, "live", &body);
            let ev = sse.event_within(2 * SEC);
            assert!(
                t.elapsed() < SEC,
                "event published on node {k} took {:?} to reach the stream on node \
                 {holder} through nginx",
                t.elapsed()
            );
            assert_eq!(ev.id(), Some(id.as_str()), "{}", ev.raw);
            assert_eq!(ev.data(), body, "{}", ev.raw);
            last = id;
        }
    }
    drop(sse);
    // Missed while disconnected, published on the node that held the stream.
    let missed = publish(holder_admin, "live", "while away");
    let mut again = Sse::open(n.addr, "/sub/live", &[("Last-Event-ID", last.as_str())]);
    let ev = again.event_within(5 * SEC);
    assert_eq!(
        (ev.id(), ev.data().as_str()),
        (Some(missed.as_str()), "while away"),
        "{}",
        ev.raw
    );
}

// ---------------------------------------------------------------------------------
// 3. A node killed under nginx
// ---------------------------------------------------------------------------------

/// Three polls parked through nginx (least_conn spreads them), then a node holding one
/// is SIGKILLed. nginx moves that poll to another node (proxy_next_upstream `error`,
/// within its 5 s bound) and a publish on a surviving node answers all three. Then a
/// bounded run of requests (polls on fresh and kept-alive connections, /health): every
/// one is answered by a live node, never nginx's 503 (its error_page for 502/504) nor
/// a 502. With the killed node as the only upstream, every one would be a 503.
#[test]
fn polls_through_nginx_keep_being_answered_after_a_node_is_killed() {
    if skip("polls_through_nginx_keep_being_answered_after_a_node_is_killed") {
        return;
    }
    const REQUESTS: usize = 30;
    let (mut c, n) = start(&[]);
    let m0 = publish(c.node(1).admin, "k", "before");
    let poll_path = format!("/sub/k?since={m0}&timeout=20");
    let mut parked = Vec::new();
    // nginx moves a request only in its first 5 s (proxy_next_upstream_timeout): the
    // kill must come well within that of the first park.
    let first_park = Instant::now();
    for i in 0..3 {
        parked.push(park(n.addr, &poll_path));
        wait_sum(&c, "parked", i + 1, 5 * SEC);
    }
    let per_node = stats_of(&c, "parked");
    let victim = per_node
        .iter()
        .position(|&p| p > 0)
        .expect("some node holds a poll");
    let victim_addr = c.node(victim).public;
    let survivor = (victim + 1) % 3;
    let t = Instant::now();
    let parked_for = first_park.elapsed();
    c.kill(victim);
    let m1 = publish(c.node(survivor).admin, "k", "after");
    for (i, p) in parked.iter_mut().enumerate() {
        let r = p.read_response().unwrap_or_else(|e| {
            panic!(
                "parked poll {i} (per node {per_node:?}, node {victim} killed \
                 {parked_for:?} after the first park): {e}\nnginx logs:\n{}",
                n.logs()
            )
        });
        assert_eq!(
            r.status,
            200,
            "parked poll {i} (per node {per_node:?}, node {victim} killed \
             {parked_for:?} after the first park): {}\nnginx logs:\n{}",
            r.brief(),
            n.logs()
        );
        assert_eq!(assert_delivery(&r, "k", b"after"), m1);
    }
    assert!(
        t.elapsed() < 5 * SEC,
        "the parked polls took {:?} after the kill",
        t.elapsed()
    );
    // nginx did send to the killed node, and moved on.
    let logs = n.logs();
    assert!(
        logs.contains(&victim_addr.to_string()),
        "nginx's error log does not mention the killed node {victim_addr}: the poll \
         parked there was not moved by nginx?\n{logs}"
    );

    let mut kept = Conn::open(n.addr);
    let poll_now = format!("/sub/k?since={m0}&timeout=5");
    let t = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..REQUESTS {
        let (what, r) = match i % 3 {
            0 => ("poll, new connection", get(n.addr, &poll_now)),
            1 => ("poll, kept connection", kept.get(&poll_now)),
            _ => ("/health", get(n.addr, "/health")),
        };
        statuses.push(r.status);
        assert_eq!(
            r.status,
            200,
            "request {i} ({what}) after node {victim} was killed: {}\nstatuses so far \
             {statuses:?}\nnginx logs:\n{}",
            r.brief(),
            n.logs()
        );
        assert!(!is_nginx_page(&r), "{}", r.brief());
        if i % 3 == 2 {
            assert_eq!(r.body_str().trim_end(), "ok", "{}", r.brief());
        } else {
            assert_eq!(assert_delivery(&r, "k", b"after"), m1);
        }
    }
    assert!(
        t.elapsed() < 5 * SEC,
        "{REQUESTS} requests took {:?}",
        t.elapsed()
    );
}

// ---------------------------------------------------------------------------------
// 4. What nginx exposes
// ---------------------------------------------------------------------------------

/// /health through nginx is a node's `200 ok`. The admin paths are nginx's own 404
/// (`location ~ ^/(pub|stats|metrics)`): not proxied at all, so not even a node's
/// public listener (whose 404 is `not found`) sees them, and nothing is published.
#[test]
fn health_passes_and_admin_paths_are_nginx_404s() {
    if skip("health_passes_and_admin_paths_are_nginx_404s") {
        return;
    }
    let (c, n) = start(&[]);
    for _ in 0..3 {
        let r = get(n.addr, "/health");
        assert_eq!(r.status, 200, "{}", r.brief());
        assert_eq!(
            r.body_str().trim_end(),
            "ok",
            "not a node's answer: {}",
            r.brief()
        );
    }
    // A node's own 404 is told apart from nginx's.
    let r = get(c.node(0).public, "/pub/secret");
    assert_eq!(r.status, 404, "{}", r.brief());
    assert!(!is_nginx_page(&r), "{}", r.brief());
    for (method, path) in [
        ("POST", "/pub/secret"),
        ("PUT", "/pub/secret"),
        ("GET", "/pub/secret"),
        ("DELETE", "/pub/secret"),
        ("GET", "/stats"),
        ("GET", "/metrics"),
    ] {
        let r = request(n.addr, method, path, &[], Some(b"x"));
        assert_eq!(
            r.status,
            404,
            "{method} {path} through nginx: {}",
            r.brief()
        );
        assert!(
            is_nginx_page(&r),
            "{method} {path} through nginx was proxied to a node: {}",
            r.brief()
        );
    }
    assert_eq!(
        stats_of(&c, "published"),
        vec![0, 0, 0],
        "something was published through nginx"
    );
}
