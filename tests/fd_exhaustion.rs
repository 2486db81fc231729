//! Exhaustion: the server at its `--max-connections` cap, and out of file descriptors
//! for real (`EMFILE`, arranged by starting it under `prlimit --nofile=300:300` with a
//! cap far above that). Either way new connections get `503` or are closed, the server
//! does not spin while it stays exhausted (its CPU time over a 3 s stretch with clients
//! knocking stays low), existing connections keep working, and once clients leave it
//! serves new ones again.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::http::{request_bytes, Conn, Response, IO_TIMEOUT};
use common::server::Server;
use common::timing::wait_until;

const SEC: Duration = Duration::from_secs(1);
/// How long the server is held exhausted while its CPU time is measured.
const CAPPED: Duration = Duration::from_secs(3);
/// A server that is not spinning spends a few milliseconds refusing the knocks in that
/// time; a spinning one spends the whole 3 s (one core) or more.
const MAX_CPU_WHILE_CAPPED: Duration = Duration::from_millis(500);

/// How a new connection was treated.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    Served,
    Refused503,
    Closed,
    /// No answer at all within the wait: left in the accept queue.
    NoAnswer,
}

/// Opens a connection, asks `GET /health`, and classifies the answer. A served
/// connection is returned to be held open.
fn knock(addr: SocketAddr, wait: Duration) -> (Admission, Option<Conn>) {
    let mut c = match std::net::TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
        Ok(s) => Conn::from_stream(s),
        Err(e) => panic!("connect to {addr} failed outright ({e}); the listener should accept"),
    };
    c.set_read_timeout(wait);
    // The request may race the server's refusal and fail to write: that is a close.
    if c.try_send(&request_bytes("GET", "/health", &[], None))
        .is_err()
    {
        return (Admission::Closed, None);
    }
    match c.read_response() {
        Ok(r) if r.status == 200 => (Admission::Served, Some(c)),
        Ok(r) if r.status == 503 => {
            assert_eq!(r.header("retry-after"), Some("1"), "{}", r.brief());
            c.wait_closed(5 * SEC)
                .unwrap_or_else(|e| panic!("503 for the connection cap but not closed: {e}"));
            (Admission::Refused503, None)
        }
        Ok(r) => panic!("a new connection got {}", r.brief()),
        Err(e) if e.kind() == ErrorKind::TimedOut => (Admission::NoAnswer, None),
        Err(_) => (Admission::Closed, None),
    }
}

/// `GET path` on `c`, answered within 2 s or an error.
fn ask(c: &mut Conn, path: &str) -> std::io::Result<Response> {
    c.set_read_timeout(2 * SEC);
    c.try_send(&request_bytes("GET", path, &[], None))?;
    c.read_response()
}

/// Knocks every 50 ms for `CAPPED`, asserting each one is refused, and returns the
/// server's CPU time over that stretch.
fn cpu_while_knocking(s: &Server, addr: SocketAddr) -> (Duration, Vec<Admission>) {
    let cpu = s.cpu_time();
    let t = Instant::now();
    let mut seen = Vec::new();
    while t.elapsed() < CAPPED {
        let (a, _) = knock(addr, 2 * SEC);
        seen.push(a);
        thread::sleep(Duration::from_millis(50));
    }
    (s.cpu_time() - cpu, seen)
}

#[test]
fn at_the_connection_cap_new_connections_get_503_without_a_spin_and_service_resumes() {
    const CAP: usize = 500;
    holdfast::sys::raise_fd_limit().expect("raise the open-file limit");
    let s = Server::start(&["--max-connections", "500"]);
    // The admin connection counts against the cap too; it is kept for /stats.
    let mut admin = Conn::open(s.admin);
    assert_eq!(admin.get("/health").status, 200);
    let mut held = Vec::with_capacity(CAP);
    for i in 0..CAP - 1 {
        match knock(s.public, 5 * SEC) {
            (Admission::Served, Some(c)) => held.push(c),
            (other, _) => panic!("connection {i} of {CAP} was not served: {other:?}"),
        }
    }
    let st = admin.get("/stats").json();
    assert_eq!(st["connections"].as_u64(), Some(CAP as u64), "{st}");

    // Over the cap: a burst left waiting in the accept queue, then steady knocking.
    let burst: Vec<Conn> = (0..30).map(|_| Conn::open(s.public)).collect();
    let (cpu, seen) = cpu_while_knocking(&s, s.public);
    eprintln!("server CPU over {CAPPED:?} at the cap: {cpu:?}; knocks: {seen:?}");
    assert!(
        seen.iter()
            .all(|a| matches!(a, Admission::Refused503 | Admission::Closed)),
        "connections over the cap must get 503 or be closed: {seen:?}"
    );
    assert!(
        seen.contains(&Admission::Refused503),
        "at --max-connections new connections get 503 (docs/protocol.md): {seen:?}"
    );
    assert!(
        cpu < MAX_CPU_WHILE_CAPPED,
        "server used {cpu:?} of CPU in {CAPPED:?} at its connection cap (spinning?)"
    );
    for (i, mut c) in burst.into_iter().enumerate() {
        let got = c
            .wait_closed(5 * SEC)
            .unwrap_or_else(|e| panic!("burst connection {i} over the cap: {e}"));
        let text = String::from_utf8_lossy(&got);
        assert!(
            got.is_empty() || text.starts_with("HTTP/1.1 503"),
            "burst connection {i} got {text:?}"
        );
    }
    // Connections held all along still work.
    let r = held[0].get("/health");
    assert_eq!(r.status, 200, "{}", r.brief());
    assert_eq!(admin.get("/health").status, 200);

    // 100 clients leave; new ones are served again.
    held.truncate(CAP - 1 - 100);
    let mut last = 0;
    let freed = wait_until(
        || {
            last = admin.get("/stats").json()["connections"]
                .as_u64()
                .unwrap_or(0);
            last <= (CAP - 100) as u64
        },
        5 * SEC,
    );
    assert!(
        freed,
        "connections did not drop after 100 clients left: {last}"
    );
    for i in 0..50 {
        let (a, c) = knock(s.public, 5 * SEC);
        assert_eq!(
            a,
            Admission::Served,
            "new connection {i} after clients left"
        );
        held.extend(c);
    }
}

#[test]
fn out_of_file_descriptors_new_connections_are_refused_without_a_spin_and_service_resumes() {
    const NOFILE: u64 = 300;
    holdfast::sys::raise_fd_limit().expect("raise the open-file limit");
    let prlimit = Command::new("prlimit").arg("--version").output();
    assert!(
        prlimit.is_ok_and(|o| o.status.success()),
        "this test needs prlimit (util-linux) to start the server with a low open-file limit"
    );
    // The cap is far above the descriptors the process may open, so EMFILE comes first.
    let limit = format!("--nofile={NOFILE}:{NOFILE}");
    let s = Server::start_wrapped(&["prlimit", &limit], &["--max-connections", "100000"]);
    let mut admin = Conn::open(s.admin);
    assert_eq!(admin.get("/health").status, 200);

    // Open connections until the server, out of descriptors, has refused ten.
    let mut held = Vec::new();
    let mut refused = Vec::new();
    let t = Instant::now();
    while refused.len() < 10 {
        assert!(
            held.len() < NOFILE as usize,
            "{} connections served with an open-file limit of {NOFILE}",
            held.len()
        );
        assert!(t.elapsed() < 60 * SEC, "still opening after 60 s");
        // A descriptor freed by one worker's refusal may be taken by the other worker's
        // accept, so a connection is now and then served between refusals: held too.
        match knock(s.public, 2 * SEC) {
            (Admission::Served, Some(c)) => held.push(c),
            (a, _) => refused.push(a),
        }
    }
    eprintln!(
        "out of descriptors after {} connections; then {refused:?}",
        held.len()
    );
    assert!(
        held.len() as u64 >= NOFILE / 2,
        "only {} connections served before refusals began (limit {NOFILE})",
        held.len()
    );
    // Every problem is collected first, so that one run shows all of them.
    let mut problems = Vec::new();
    let stuck = refused
        .iter()
        .filter(|a| **a == Admission::NoAnswer)
        .count();
    if stuck > 0 {
        problems.push(format!(
            "out of descriptors, {stuck} of the first {} refused connections waited \
             unanswered in the accept queue instead of getting 503 or a close: {refused:?}",
            refused.len()
        ));
    }

    let (cpu, seen) = cpu_while_knocking(&s, s.public);
    eprintln!("server CPU over {CAPPED:?} out of descriptors: {cpu:?}; knocks: {seen:?}");
    if cpu >= MAX_CPU_WHILE_CAPPED {
        problems.push(format!(
            "server used {cpu:?} of CPU in {CAPPED:?} out of file descriptors (spinning?)"
        ));
    }
    let stuck = seen.iter().filter(|a| **a == Admission::NoAnswer).count();
    if stuck > 0 {
        problems.push(format!(
            "{stuck} of {} knocks while out of descriptors went unanswered: {seen:?}",
            seen.len()
        ));
    }
    // The connections it holds still work, on both workers, admin included.
    let mut unserved = Vec::new();
    for (i, c) in held.iter_mut().enumerate().take(8) {
        match ask(c, "/health") {
            Ok(r) if r.status == 200 => {}
            Ok(r) => unserved.push(format!("held connection {i}: {}", r.brief())),
            Err(e) => unserved.push(format!("held connection {i}: {e}")),
        }
    }
    if !unserved.is_empty() {
        problems.push(format!(
            "connections served before the exhaustion stopped being served during it: \
             {unserved:#?}"
        ));
    }
    match ask(&mut admin, "/stats") {
        Ok(st) if st.status == 200 => assert!(
            st.json()["connections"].as_u64() >= Some(held.len() as u64),
            "{}",
            st.brief()
        ),
        other => problems.push(format!(
            "the admin connection kept from before was not served: {other:?}"
        )),
    }

    // Everyone leaves: new clients are served again, many of them.
    let n = held.len();
    held.clear();
    let mut last = String::new();
    let freed = wait_until(
        || {
            // A fresh connection each time: the kept admin one may sit on a stuck worker.
            match ask(&mut Conn::open(s.admin), "/stats") {
                Ok(st) if st.status == 200 => {
                    let conns = st.json()["connections"].as_u64().unwrap_or(u64::MAX);
                    last = conns.to_string();
                    conns <= 2
                }
                other => {
                    last = format!("{other:?}");
                    false
                }
            }
        },
        10 * SEC,
    );
    if !freed {
        problems.push(format!(
            "connections did not drop after {n} clients left: last /stats {last}"
        ));
    }
    let mut outcomes = Vec::new();
    for _ in 0..n / 2 {
        let (a, c) = knock(s.public, 2 * SEC);
        outcomes.push(a);
        held.extend(c);
        if outcomes
            .iter()
            .rev()
            .take(3)
            .all(|a| *a == Admission::NoAnswer)
            && outcomes.len() >= 3
        {
            break;
        }
    }
    if !outcomes.iter().all(|a| *a == Admission::Served) {
        problems.push(format!(
            "after clients left, new connections were not all served: {outcomes:?}"
        ));
    }
    assert!(!s.output().contains("panicked"), "{}", s.output());
    assert!(problems.is_empty(), "{problems:#?}");
}
