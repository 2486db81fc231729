//! The server behind a real nginx running the shipped `tuning/nginx.conf` (only its
//! ports and paths templated; see `common::nginx`): the long-poll and SSE protocol
//! checks again, with every subscriber request going through nginx, plus what the
//! config itself promises — reused upstream connections, unbuffered streams, the
//! admin paths not exposed, client addresses forwarded, 503 + `Retry-After` while the
//! server is down — and what a proxied held request costs nginx.
//!
//! nginx must be installed (`apt-get install nginx`; `.ci/run` does): without it every
//! test here fails saying so.

mod common;

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::http::{request_bytes, Conn};
use common::net::raise_fd_limit_for;
use common::nginx::Nginx;
use common::protocol::{
    assert_delivery, cursor_now, get, park, poll, publish, publish_full, publish_id, request, stat,
    wait_stat,
};
use common::server::Server;
use common::sse::Sse;
use common::timing::{assert_between, wait_until};

const SEC: Duration = Duration::from_secs(1);

/// The server under test with `flags`, and nginx in front of its public listener.
fn start(flags: &[&str]) -> (Server, Nginx) {
    let s = Server::start(flags);
    let n = Nginx::start(s.public, &[]);
    (s, n)
}

// ---------------------------------------------------------------------------------
// Long-poll through nginx
// ---------------------------------------------------------------------------------

#[test]
fn cursor_loop_through_nginx_receives_every_message_once_in_order() {
    const N: usize = 200;
    // The buffer holds all N, so the poller may fall behind without a gap.
    let (s, n) = start(&["--buffer-messages", "256"]);
    let cursor = cursor_now(n.addr, "loop");
    let admin = s.admin;
    let publisher = thread::spawn(move || {
        let mut conn = Conn::open(admin);
        (0..N)
            .map(|i| {
                let body = format!("message {i}");
                let r = conn.request("POST", "/pub/loop", &[], Some(body.as_bytes()));
                let id = publish_id(&r);
                if i % 20 == 0 {
                    thread::sleep(Duration::from_millis(5));
                }
                id
            })
            .collect::<Vec<_>>()
    });
    // One keep-alive client connection to nginx for the whole loop.
    let mut client = Conn::open(n.addr);
    let mut got = Vec::new();
    let mut since = cursor;
    let deadline = Instant::now() + 60 * SEC;
    while got.len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} messages after 60 s; nginx logs:\n{}",
            got.len(),
            n.logs()
        );
        let r = client.get(&format!("/sub/loop?since={since}&timeout=5"));
        match r.status {
            200 => {
                assert_eq!(r.header("messages-lost"), None, "gap: {}", r.brief());
                let i = got.len();
                since = assert_delivery(&r, "loop", format!("message {i}").as_bytes());
                got.push(since.clone());
            }
            204 => since = r.message_id(),
            _ => panic!("poll through nginx: {}", r.brief()),
        }
    }
    let published = publisher.join().expect("publisher thread");
    assert_eq!(got, published, "ids received through nginx vs published");
}

#[test]
fn poll_timeout_through_nginx_is_204_with_the_cursor() {
    let (_s, n) = start(&[]);
    let since = cursor_now(n.addr, "quiet");
    let mut c = Conn::open(n.addr);
    let t = Instant::now();
    let r = c.get(&format!("/sub/quiet?since={since}&timeout=1"));
    assert_between(
        "timeout=1 through nginx",
        t.elapsed(),
        Duration::from_millis(900),
        3 * SEC,
    );
    assert_eq!(r.status, 204, "{}", r.brief());
    assert_eq!(r.message_id(), since, "{}", r.brief());
    assert_eq!(r.header("cache-control"), Some("no-store"), "{}", r.brief());
    // The client connection is kept and serves the next poll.
    let t = Instant::now();
    let r = c.get(&format!("/sub/quiet?since={since}&timeout=0"));
    assert_eq!(r.status, 204, "{}", r.brief());
    assert!(t.elapsed() < SEC, "timeout=0 took {:?}", t.elapsed());
}

#[test]
fn parked_poll_through_nginx_is_answered_by_a_publish() {
    let (s, n) = start(&[]);
    let mut c = park(n.addr, "/sub/wake?timeout=30");
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    let id = publish_full(s.admin, "wake", b"hello", Some("text/plain"));
    let id = publish_id(&id);
    let r = c.response();
    assert_eq!(assert_delivery(&r, "wake", b"hello"), id);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain"),
        "{}",
        r.brief()
    );
    assert_eq!(r.header("cache-control"), Some("no-store"), "{}", r.brief());
}

#[test]
fn gap_is_reported_through_nginx() {
    let (s, n) = start(&["--buffer-messages", "2"]);
    let ids: Vec<String> = (0..5)
        .map(|i| publish(s.admin, "gap", format!("m{i}")))
        .collect();
    // Cursor at m0: m1 and m2 are evicted, the oldest still buffered is m3.
    let r = poll(n.addr, &format!("/sub/gap?since={}", ids[0]));
    assert_eq!(assert_delivery(&r, "gap", b"m3"), ids[3]);
    assert_eq!(r.header("messages-lost"), Some("true"), "{}", r.brief());
    let r = poll(n.addr, &format!("/sub/gap?since={}", ids[3]));
    assert_eq!(assert_delivery(&r, "gap", b"m4"), ids[4]);
    assert_eq!(r.header("messages-lost"), None, "{}", r.brief());
}

#[test]
fn multi_channel_poll_through_nginx() {
    let (s, n) = start(&[]);
    let since = cursor_now(n.addr, "a,b,c");
    let mut c = park(n.addr, &format!("/sub/a,b,c?since={since}&timeout=30"));
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    let b = publish(s.admin, "b", "to b");
    let r = c.response();
    assert_eq!(assert_delivery(&r, "b", b"to b"), b);
    // Two more while nobody waits: the oldest comes first.
    let cc = publish(s.admin, "c", "to c");
    let a = publish(s.admin, "a", "to a");
    let r = c.get(&format!("/sub/a,b,c?since={b}&timeout=5"));
    assert_eq!(assert_delivery(&r, "c", b"to c"), cc);
    let r = c.get(&format!("/sub/a,b,c?since={cc}&timeout=5"));
    assert_eq!(assert_delivery(&r, "a", b"to a"), a);
}

#[test]
fn client_leaving_through_nginx_frees_the_server_slot() {
    let (s, n) = start(&[]);
    let c = park(n.addr, "/sub/gone?timeout=60");
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    drop(c);
    wait_stat(s.admin, "parked", 0, 3 * SEC);

    let sse = Sse::open(n.addr, "/sub/gone", &[]);
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    drop(sse);
    wait_stat(s.admin, "sse_streams", 0, 3 * SEC);
}

#[test]
fn health_passes_and_admin_paths_are_not_exposed() {
    let (s, n) = start(&[]);
    let r = get(n.addr, "/health");
    assert_eq!(r.status, 200, "{}", r.brief());
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
    }
    let r = get(s.admin, "/pub/secret");
    assert_eq!(r.status, 404, "something was published: {}", r.brief());
}

// ---------------------------------------------------------------------------------
// SSE through nginx
// ---------------------------------------------------------------------------------

#[test]
fn sse_events_stream_through_nginx_as_they_are_published() {
    let (s, n) = start(&[]);
    let mut sse = Sse::open(n.addr, "/sub/live", &[]);
    let head = sse.head.as_ref().expect("Sse::open reads the head");
    assert_eq!(
        head.header("cache-control"),
        Some("no-store"),
        "{}",
        head.brief()
    );
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    // One at a time, each read before the next is published: an event nginx kept in a
    // buffer would not arrive within the bound.
    for i in 0..5 {
        let body = format!("live {i}\nsecond line");
        let t = Instant::now();
        let id = publish(s.admin, "live", &body);
        let ev = sse.event_within(2 * SEC);
        assert!(
            t.elapsed() < SEC,
            "event {i} took {:?} through nginx",
            t.elapsed()
        );
        assert_eq!(ev.id(), Some(id.as_str()), "{}", ev.raw);
        assert_eq!(ev.event(), None, "{}", ev.raw);
        assert_eq!(ev.data(), body, "{}", ev.raw);
    }
}

#[test]
fn sse_resumes_from_last_event_id_through_nginx() {
    let (s, n) = start(&[]);
    let ids: Vec<String> = (0..3)
        .map(|i| publish(s.admin, "re", format!("r{i}")))
        .collect();
    let mut sse = Sse::open(n.addr, "/sub/re", &[("Last-Event-ID", &ids[0])]);
    for (i, id) in ids.iter().enumerate().skip(1) {
        let ev = sse.event_within(5 * SEC);
        assert_eq!(ev.id(), Some(id.as_str()), "{}", ev.raw);
        assert_eq!(ev.data(), format!("r{i}"), "{}", ev.raw);
    }
    let id = publish(s.admin, "re", "after");
    let ev = sse.event_within(5 * SEC);
    assert_eq!((ev.id(), ev.data().as_str()), (Some(id.as_str()), "after"));
    // Two channels: events are named.
    let mut multi = Sse::open(n.addr, "/sub/re,other", &[("Last-Event-ID", &ids[2])]);
    let ev = multi.event_within(5 * SEC);
    assert_eq!(ev.id(), Some(id.as_str()), "{}", ev.raw);
    assert_eq!(ev.event(), Some("re"), "{}", ev.raw);
}

#[test]
fn sse_heartbeats_reach_the_client_through_nginx() {
    let (s, n) = start(&["--sse-heartbeat", "1"]);
    let mut sse = Sse::open(n.addr, "/sub/hb", &[]);
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    let t = Instant::now();
    let blocks = sse
        .blocks_for(Duration::from_millis(3500))
        .unwrap_or_else(|e| panic!("stream failed: {e}"));
    assert!(blocks.is_empty(), "no events were published: {blocks:?}");
    let beats: Vec<Duration> = sse.comments.iter().map(|(at, _)| *at - t).collect();
    assert!(
        beats.len() >= 2,
        "{} heartbeats in 3.5 s through nginx (every 1 s expected): {:?}",
        beats.len(),
        sse.comments
    );
    assert!(
        sse.comments.iter().all(|(_, l)| l.starts_with(':')),
        "{:?}",
        sse.comments
    );
    // Each arrives on its own, not held back until the next one.
    for w in beats.windows(2) {
        assert!(w[1] - w[0] < Duration::from_millis(1800), "{beats:?}");
    }
}

// ---------------------------------------------------------------------------------
// Shutdown and the server being down
// ---------------------------------------------------------------------------------

#[test]
fn sigterm_reaches_parked_polls_through_nginx_as_503_with_retry_after() {
    let (mut s, n) = start(&[]);
    let mut c = park(n.addr, "/sub/bye?timeout=60");
    let mut sse = Sse::open(n.addr, "/sub/bye", &[]);
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    s.terminate();
    let r = c.response();
    assert_eq!(r.status, 503, "{}", r.brief());
    assert_eq!(r.header("retry-after"), Some("1"), "{}", r.brief());
    // The stream ends cleanly (chunked terminator), so EventSource reconnects.
    match sse.wait_end(3 * SEC) {
        Ok(()) => {}
        Err(e) => panic!("SSE stream through nginx did not end on SIGTERM: {e}"),
    }
    assert!(
        s.wait_exit(3 * SEC).is_some(),
        "server still running after SIGTERM:\n{}",
        s.output()
    );
    // Down: nginx answers like the server did, 503 + Retry-After, on the same client
    // connection.
    let r = c.get("/sub/bye?timeout=5");
    assert_eq!(r.status, 503, "{}", r.brief());
    assert_eq!(r.header("retry-after"), Some("1"), "{}", r.brief());
    let r = get(n.addr, "/health");
    assert_eq!(r.status, 503, "{}", r.brief());
}

// ---------------------------------------------------------------------------------
// What the config promises about the upstream side
// ---------------------------------------------------------------------------------

/// /proc/net/tcp's spelling of `addr` (IPv4 only): the address as a little-endian hex
/// word, then the port, e.g. `0100007F:84BF` for 127.0.0.1:33983.
fn proc_tcp_addr(addr: SocketAddr) -> String {
    let IpAddr::V4(ip) = addr.ip() else {
        panic!("{addr} is not IPv4");
    };
    let o = ip.octets();
    format!(
        "{:02X}{:02X}{:02X}{:02X}:{:04X}",
        o[3],
        o[2],
        o[1],
        o[0],
        addr.port()
    )
}

/// The other end (as listed) of every TCP connection to `server`, in any state
/// (TIME_WAIT included), from /proc/net/tcp: one entry per connection to the server.
fn connections_to(server: SocketAddr) -> BTreeSet<String> {
    let me = proc_tcp_addr(server);
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let mut out = BTreeSet::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[3] == "0A" {
            continue; // short, or a listening socket
        }
        // The client side (nginx) lists the server as remote, the server side as local;
        // either way the entry is keyed by the client's address and port.
        if f[2] == me {
            out.insert(f[1].to_string());
        } else if f[1] == me {
            out.insert(f[2].to_string());
        }
    }
    out
}

/// The /proc/net/tcp lines with `server` at either end (for failure messages).
fn tcp_lines_with(server: SocketAddr) -> String {
    let hex = proc_tcp_addr(server);
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&hex))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn upstream_connections_are_reused_across_requests() {
    const REQUESTS: usize = 100;
    let (s, n) = start(&[]);
    // Connections an earlier user of this port left in TIME_WAIT are not ours.
    let before = connections_to(s.public);
    for i in 0..REQUESTS {
        // A new client connection each time: only the upstream side can be reused.
        let path = if i % 2 == 0 {
            "/health"
        } else {
            "/sub/reuse?timeout=0"
        };
        let r = get(n.addr, path);
        assert!(r.status == 200 || r.status == 204, "{}", r.brief());
    }
    // A connection nginx opened and closed is still listed, in TIME_WAIT, so one look
    // at the end sees every connection these requests used.
    let seen: BTreeSet<String> = connections_to(s.public)
        .difference(&before)
        .cloned()
        .collect();
    let workers = n.workers().len();
    assert!(
        !seen.is_empty(),
        "no connection to the server seen in /proc/net/tcp"
    );
    assert!(
        seen.len() <= workers,
        "{REQUESTS} requests through nginx opened {} connections to the server \
         (at most one per worker, {workers}, when upstream keepalive works); \
         /proc/net/tcp lines with {}:\n{}\nserver output:\n{}",
        seen.len(),
        s.public,
        tcp_lines_with(s.public),
        s.output()
    );
    // The server sees the same: its only connections are nginx's idle cached ones
    // and this /stats request.
    let conns = stat(s.admin, "connections");
    assert!(conns <= workers as u64 + 1, "server connections: {conns}");
}

/// One request nginx sends upstream, captured by a listener standing in for the server.
fn capture_upstream_request(client_headers: &[(&str, &str)], path: &str) -> (String, String) {
    let fake = TcpListener::bind("127.0.0.1:0").expect("bind");
    let n = Nginx::start(fake.local_addr().expect("addr"), &[]);
    let mut client = Conn::open(n.addr);
    client.send_request("GET", path, client_headers, None);
    let (mut up, _) = accept_within(&fake, 5 * SEC);
    up.set_read_timeout(Some(5 * SEC)).expect("timeout");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match up.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            r => panic!("reading nginx's upstream request: {r:?}; got {head:?}"),
        }
    }
    up.write_all(b"HTTP/1.1 204 No Content\r\nMessage-Id: 7\r\n\r\n")
        .expect("answer");
    let r = client.response();
    assert_eq!(r.status, 204, "{}", r.brief());
    let head = String::from_utf8_lossy(&head).into_owned();
    let client_ip = n.addr.ip().to_string();
    (head, client_ip)
}

fn accept_within(l: &TcpListener, within: Duration) -> (TcpStream, SocketAddr) {
    l.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + within;
    loop {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false).expect("blocking");
                return (s, a);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "nginx did not connect upstream within {within:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn nginx_sends_http11_keepalive_requests_with_client_address_headers() {
    let (head, client_ip) = capture_upstream_request(
        &[("X-Forwarded-For", "203.0.113.9"), ("Last-Event-ID", "42")],
        "/sub/a,b~c?since=5&timeout=30",
    );
    let lines: Vec<&str> = head.split("\r\n").collect();
    // The URI exactly as the client sent it, over HTTP/1.1.
    assert_eq!(
        lines[0], "GET /sub/a,b~c?since=5&timeout=30 HTTP/1.1",
        "{head}"
    );
    let header = |name: &str| {
        lines
            .iter()
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect::<Vec<_>>()
    };
    // No `Connection: close`: the connection stays open for reuse.
    assert!(header("connection").is_empty(), "{head}");
    assert_eq!(header("x-real-ip"), vec![client_ip.clone()], "{head}");
    // The client's own X-Forwarded-For is kept; nginx appends the address it saw.
    assert_eq!(
        header("x-forwarded-for"),
        vec![format!("203.0.113.9, {client_ip}")],
        "{head}"
    );
    assert_eq!(header("last-event-id"), vec!["42".to_string()], "{head}");
}

/// `name VALUE;` of the first directive `name` outside comments in the shipped config,
/// as whole seconds (`150s`, `2m`, `50`).
fn conf_seconds(name: &str) -> u64 {
    let conf = common::nginx::shipped_conf();
    let value = conf
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .find_map(|l| l.strip_prefix(name).filter(|v| v.starts_with(' ')))
        .unwrap_or_else(|| panic!("{name} not set in tuning/nginx.conf"))
        .trim()
        .trim_end_matches(';')
        .to_string();
    let (num, mult) = match value.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (value.trim_end_matches('s'), 1),
    };
    num.parse::<u64>()
        .unwrap_or_else(|_| panic!("{name} {value:?} is not whole seconds or minutes"))
        * mult
}

#[test]
fn shipped_timeouts_fit_the_servers_defaults() {
    // A poll may be held for --max-poll-timeout (120 s); nginx must wait longer.
    let read = conf_seconds("proxy_read_timeout");
    assert!(read >= 120 + 10, "proxy_read_timeout {read}s");
    // nginx closes idle upstream connections before the server's 60 s keep-alive does.
    let conf = common::nginx::shipped_conf();
    let upstream = &conf[conf.find("upstream holdfast").expect("upstream block")..];
    let upstream_idle: u64 = upstream
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .find_map(|l| l.strip_prefix("keepalive_timeout "))
        .and_then(|v| v.trim_end_matches(';').trim_end_matches('s').parse().ok())
        .expect("keepalive_timeout in the upstream block");
    assert!(
        upstream_idle < 60,
        "upstream keepalive_timeout {upstream_idle}s"
    );
}

// ---------------------------------------------------------------------------------
// Cost of a proxied held request
// ---------------------------------------------------------------------------------

/// Kernel-wide `Slab:` from /proc/meminfo, bytes.
fn slab_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Slab:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Holds `NGINX_COST_HELD` (default 2000) long-polls through nginx and prints what each
/// costs nginx's workers (RSS growth ÷ N), the server, and the kernel (slab growth ÷ N,
/// machine-wide, so only indicative while other work runs). tuning/README.md quotes it:
/// `cargo test --release --test nginx held_poll_cost -- --nocapture`.
#[test]
fn held_poll_cost_through_nginx() {
    let held: usize = std::env::var("NGINX_COST_HELD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    raise_fd_limit_for(held);
    let (s, n) = start(&[]);
    let workers = n.workers();
    // Warm up: one request per worker's pools before the baseline.
    for _ in 0..20 {
        let _ = get(n.addr, "/sub/cost?timeout=0");
    }
    let nginx_before = n.workers_rss();
    let server_before = stat(s.admin, "rss_bytes");
    let slab_before = slab_bytes();
    let request = request_bytes("GET", "/sub/cost?timeout=120", &[], None);
    let t = Instant::now();
    let mut conns = Vec::with_capacity(held);
    for i in 0..held {
        assert!(t.elapsed() < 120 * SEC, "only {i} connections in 120 s");
        let mut c = Conn::open(n.addr);
        c.try_send(&request)
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        conns.push(c);
    }
    let mut parked = 0;
    let all = wait_until(
        || {
            parked = stat(s.admin, "parked");
            parked == held as u64
        },
        60 * SEC,
    );
    assert!(
        all,
        "only {parked} of {held} polls parked behind nginx; nginx logs:\n{}",
        n.logs()
    );
    thread::sleep(SEC / 2);
    let nginx_after = n.workers_rss();
    let server_after = stat(s.admin, "rss_bytes");
    let slab_after = slab_bytes();
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / held as f64;
    let nginx_fds: usize = workers
        .iter()
        .map(|w| {
            std::fs::read_dir(format!("/proc/{w}/fd"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum();
    let nginx_per = per(nginx_before, nginx_after);
    eprintln!(
        "{held} long-polls held through nginx ({} workers):\n  \
         nginx workers: {nginx_per:.0} bytes RSS per held request \
         ({nginx_before} -> {nginx_after}); {nginx_fds} open fds in all\n  \
         server: {:.0} bytes RSS per held request ({server_before} -> {server_after})\n  \
         kernel slab (machine-wide, 4 sockets per held request on one host): \
         {:.0} bytes per held request ({slab_before} -> {slab_after})",
        workers.len(),
        per(server_before, server_after),
        per(slab_before, slab_after),
    );
    assert!(
        nginx_fds >= 2 * held,
        "nginx holds {nginx_fds} fds for {held} held requests (2 each expected)"
    );
    // proxy_bind spreads the upstream connections over several source addresses, so
    // the ephemeral port range is not a limit per nginx but per source address.
    let sources: BTreeSet<String> = connections_to(s.public)
        .iter()
        .filter_map(|a| a.split(':').next().map(str::to_string))
        .collect();
    eprintln!(
        "  upstream connections come from {} source addresses",
        sources.len()
    );
    assert!(
        sources.len() >= 4,
        "{held} upstream connections from only {sources:?}"
    );
    // A generous bound: a held request buffered to memory or disk would cost far more.
    assert!(
        nginx_per < 32.0 * 1024.0,
        "nginx costs {nginx_per:.0} bytes per held request"
    );
    // All still served: one publish answers every one of them through nginx.
    let id = publish(s.admin, "cost", "done");
    for (i, c) in conns.iter_mut().enumerate().step_by(97) {
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("held poll {i}: {e}"));
        assert_eq!(assert_delivery(&r, "cost", b"done"), id);
    }
}
