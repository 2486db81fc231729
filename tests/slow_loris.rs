//! Slow-loris: 2,000 connections each dribbling one header byte every 200 ms, replaced as
//! the server closes them, for several header-timeout periods. Every one is closed at
//! `--header-timeout` (2 s) — not much before, not much after — while ordinary
//! poll + publish round trips keep completing with a latency bounded relative to an
//! unloaded baseline measured first in the same test.
//!
//! The only test in this binary: its sockets count against the process's open-file limit.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::http::Conn;
use common::net::{connect_from, source_addr};
use common::protocol::{assert_delivery, cursor_now, publish_id, stat, stats, wait_stat};
use common::server::Server;
use common::timing::{quantile, wait_until};

const LORIS: usize = 2_000;
const DRIBBLE: Duration = Duration::from_millis(200);
const SLICES: usize = 10;
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long ordinary traffic is measured under the loris load: enough for two full
/// generations of loris connections to time out and be replaced.
const LOADED: Duration = Duration::from_secs(5);
const BASELINE_ROUNDS: usize = 100;
const PACE: Duration = Duration::from_millis(10);
/// The head a loris sends, one byte per tick; it never reaches the blank line.
const HEAD: &[u8] = b"GET /sub/loris?timeout=30 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

struct Loris {
    stream: TcpStream,
    opened: Instant,
    sent: usize,
    got: Vec<u8>,
}

/// What the loris thread saw: how long each connection lived before the server closed
/// it, bytes the server sent on any of them, and connections still open at the end.
struct LorisReport {
    lifetimes: Vec<Duration>,
    answered: Vec<String>,
    still_open: usize,
    max_open: usize,
}

fn open_loris(i: usize, public: SocketAddr) -> Loris {
    let stream = connect_from(source_addr(i, 4), public)
        .unwrap_or_else(|e| panic!("loris connection {i}: {e}"));
    stream.set_nonblocking(true).expect("nonblocking");
    Loris {
        stream,
        opened: Instant::now(),
        sent: 0,
        got: Vec::new(),
    }
}

/// Keeps `LORIS` connections dribbling until `stop`, replacing each one the server
/// closes; then waits (bounded) for the server to close the rest.
fn run_loris(public: SocketAddr, stop: Arc<AtomicBool>, ready: Arc<AtomicBool>) -> LorisReport {
    let mut conns: Vec<Option<Loris>> = (0..LORIS).map(|i| Some(open_loris(i, public))).collect();
    ready.store(true, Ordering::SeqCst);
    let mut report = LorisReport {
        lifetimes: Vec::new(),
        answered: Vec::new(),
        still_open: 0,
        max_open: 0,
    };
    let mut opened = LORIS;
    let mut drain_deadline = None;
    // Each connection writes once per DRIBBLE, but they are spread over it in SLICES
    // groups, as independent clients would be, rather than all at the same instant.
    let slice_pause = DRIBBLE / SLICES as u32;
    for round in 0usize.. {
        let tick = Instant::now();
        let stopping = stop.load(Ordering::SeqCst);
        if stopping && drain_deadline.is_none() {
            drain_deadline = Some(tick + HEADER_TIMEOUT + Duration::from_secs(5));
        }
        let slice = round % SLICES;
        for slot in conns.iter_mut().skip(slice).step_by(SLICES) {
            let Some(l) = slot.as_mut() else { continue };
            if !dribble(l) {
                continue;
            }
            report.lifetimes.push(l.opened.elapsed());
            if !l.got.is_empty() && report.answered.len() < 10 {
                report
                    .answered
                    .push(String::from_utf8_lossy(&l.got).into_owned());
            }
            *slot = if stopping {
                None
            } else {
                opened += 1;
                Some(open_loris(opened, public))
            };
        }
        let open = conns.iter().filter(|c| c.is_some()).count();
        report.max_open = report.max_open.max(open);
        if open == 0 || drain_deadline.is_some_and(|d| tick > d) {
            report.still_open = open;
            return report;
        }
        thread::sleep(slice_pause.saturating_sub(tick.elapsed()));
    }
    unreachable!("the loop returns")
}

/// Writes the next byte of the head and reads whatever the server sent. Returns true
/// if the server has closed the connection.
fn dribble(l: &mut Loris) -> bool {
    let byte = HEAD.get(l.sent).copied().unwrap_or(b'a');
    let mut closed = match l.stream.write(&[byte]) {
        Ok(_) => {
            l.sent += 1;
            false
        }
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    let mut buf = [0u8; 1024];
    loop {
        match l.stream.read(&mut buf) {
            Ok(0) => closed = true,
            Ok(n) => {
                l.got.extend_from_slice(&buf[..n]);
                continue;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => closed = true,
        }
        return closed;
    }
}

/// One ordinary round trip: a fresh subscriber connection polls with its cursor, the
/// publisher (keep-alive) publishes, the subscriber reads the message. Returns the time
/// from opening the subscriber connection to reading the delivery, and the new cursor.
fn round_trip(s: &Server, publisher: &mut Conn, cursor: &str, n: usize) -> (Duration, String) {
    let t = Instant::now();
    let mut sub = Conn::open(s.public);
    sub.send_request(
        "GET",
        &format!("/sub/ordinary?since={cursor}&timeout=20"),
        &[],
        None,
    );
    let body = format!("ordinary {n}");
    let id = publish_id(&publisher.request("POST", "/pub/ordinary", &[], Some(body.as_bytes())));
    let r = sub.response();
    assert_eq!(assert_delivery(&r, "ordinary", body.as_bytes()), id);
    (t.elapsed(), id)
}

#[test]
fn two_thousand_slow_loris_connections_are_cut_at_the_header_timeout_while_others_are_served() {
    holdfast::sys::raise_fd_limit().expect("raise the open-file limit");
    let s = Server::start(&["--header-timeout", "2"]);
    let mut publisher = Conn::open(s.admin);
    let mut cursor = cursor_now(s.public, "ordinary");

    // Unloaded baseline.
    let mut base = Vec::with_capacity(BASELINE_ROUNDS);
    for n in 0..BASELINE_ROUNDS {
        let (took, id) = round_trip(&s, &mut publisher, &cursor, n);
        base.push(took);
        cursor = id;
        thread::sleep(PACE);
    }
    let connections_before = stat(s.admin, "connections");

    // The same traffic under the loris load.
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let loris = {
        let (stop, ready, public) = (stop.clone(), ready.clone(), s.public);
        thread::spawn(move || run_loris(public, stop, ready))
    };
    assert!(
        wait_until(|| ready.load(Ordering::SeqCst), Duration::from_secs(60)),
        "{LORIS} loris connections not open within 60 s"
    );
    let t = Instant::now();
    let cpu = s.cpu_time();
    let mut loaded = Vec::new();
    let mut n = BASELINE_ROUNDS;
    while t.elapsed() < LOADED {
        let (took, id) = round_trip(&s, &mut publisher, &cursor, n);
        loaded.push(took);
        cursor = id;
        n += 1;
        thread::sleep(PACE);
    }
    let during = stats(s.admin);
    let cpu = s.cpu_time() - cpu;
    stop.store(true, Ordering::SeqCst);
    let report = loris.join().expect("loris thread panicked");

    let (base_p50, base_p99) = (quantile(&mut base, 0.5), quantile(&mut base, 0.99));
    let (p50, p99) = (quantile(&mut loaded, 0.5), quantile(&mut loaded, 0.99));
    let mut lifetimes = report.lifetimes.clone();
    let (shortest, longest) = (quantile(&mut lifetimes, 0.0), quantile(&mut lifetimes, 1.0));
    eprintln!(
        "round trip unloaded p50 {base_p50:?} p99 {base_p99:?}; under {LORIS} loris \
         p50 {p50:?} p99 {p99:?} over {} rounds; {} loris closed, lifetimes {shortest:?}..{longest:?}; \
         server connections during load {}, server CPU {cpu:?}",
        loaded.len(),
        report.lifetimes.len(),
        during["connections"]
    );

    assert_eq!(
        report.still_open, 0,
        "{} loris connections still open {HEADER_TIMEOUT:?} + 5 s after the last byte",
        report.still_open
    );
    assert!(
        report.lifetimes.len() >= 2 * LORIS,
        "only {} loris connections were closed in {LOADED:?} (each should last {HEADER_TIMEOUT:?})",
        report.lifetimes.len()
    );
    assert!(
        report.answered.is_empty(),
        "the server sent bytes to an incomplete head: {:?}",
        report.answered
    );
    // Closed at the header timeout: not early (the server did not refuse them for some
    // other reason; it reads its clock once per loop iteration, so a deadline armed late
    // in a busy iteration is early by that iteration's length), and not late (allowing a
    // dribble tick and CI scheduling noise).
    assert!(
        shortest >= HEADER_TIMEOUT / 2,
        "a loris connection was closed after {shortest:?}, before the header timeout"
    );
    assert!(
        longest <= HEADER_TIMEOUT + Duration::from_secs(3),
        "a loris connection lived {longest:?} with a {HEADER_TIMEOUT:?} header timeout"
    );
    assert!(
        during["connections"].as_u64().unwrap_or(0) >= LORIS as u64 / 2,
        "the loris connections were not being held during the measurement: {during}"
    );
    // The median is held to the ratio; the p99 gets a wider absolute margin
    // because on a shared two-core machine a debug-build server handling 10,000 loris
    // reads a second is itself descheduled now and then (measured here: p99 40–180 ms
    // against an unloaded 4–6 ms at load average 6–17). A server that stopped serving
    // others until the loris connections timed out would show seconds.
    let bound = base_p50 * 20 + Duration::from_millis(50);
    assert!(
        p50 <= bound,
        "round-trip median under slow-loris load {p50:?} exceeds 20 × unloaded median \
         {base_p50:?} + 50 ms = {bound:?}"
    );
    let bound = base_p99 * 20 + Duration::from_millis(250);
    assert!(
        p99 <= bound,
        "round-trip p99 under slow-loris load {p99:?} exceeds 20 × unloaded p99 \
         {base_p99:?} + 250 ms = {bound:?}"
    );
    wait_stat(
        s.admin,
        "connections",
        connections_before,
        Duration::from_secs(5),
    );
}
