//! Malformed input over real sockets: one server, a few hundred connections, each sending
//! random bytes or a mutation of a valid request (truncated, bytes flipped, inserted or
//! deleted, parser-tripping tokens spliced in, pieces repeated past the size limits),
//! written in arbitrary pieces, with the write side then either half-closed or left open.
//!
//! Oracle, per connection: everything the server sends parses as HTTP/1.x responses with
//! a 1xx, 2xx, 4xx or 5xx status; nothing follows a response that says
//! `Connection: close`; random bytes never get a 2xx; an unmutated request gets the answer
//! it should; and the connection is closed (or an event stream starts) within the
//! timeouts plus a margin — never a hang. After all cases the server has not crashed,
//! serves a normal poll and publish, and holds no leftover connection.
//!
//! Cases come from proptest strategies with a fixed seed and run 32 at a time (a case
//! may wait out a one-second timeout); a failing case is shrunk afterwards and printed.
//! `PROPTEST_CASES` scales the count (default 256).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use common::fuzzing::{
    mutated_bytes, mutated_request, parse_responses, Mutation, WireParse, VALID_REQUESTS,
};
use common::http::IO_TIMEOUT;
use common::protocol::{assert_delivery, cursor_now, park, publish, stats};
use common::server::Server;
use common::timing::wait_until;

const SEED: [u8; 32] = *b"holdfast malformed-input seed 01";
const PARALLEL: usize = 32;
/// Flags: every timeout one second, so a case that waits one out ends quickly.
const FLAGS: &[&str] = &[
    "--header-timeout",
    "1",
    "--keepalive-timeout",
    "1",
    "--poll-timeout",
    "1",
    "--max-poll-timeout",
    "1",
];
/// A connection must be finished with by then: a few one-second timeouts in a row
/// (a parked pipelined poll, then the keep-alive wait) plus a wide margin for CI.
const CASE_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Payload {
    Random {
        bytes: Vec<u8>,
        admin: bool,
    },
    Mutated {
        index: usize,
        mutations: Vec<Mutation>,
    },
}

#[derive(Debug, Clone)]
struct Case {
    payload: Payload,
    /// Where the bytes are split into separate writes.
    cuts: Vec<Index>,
    /// Shut the write side after sending (else leave it open and wait for the server).
    half_close: bool,
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        match &self.payload {
            Payload::Random { bytes, .. } => bytes.clone(),
            Payload::Mutated { index, mutations } => mutated_bytes(*index, mutations),
        }
    }

    fn admin(&self) -> bool {
        match &self.payload {
            Payload::Random { admin, .. } => *admin,
            Payload::Mutated { index, .. } => VALID_REQUESTS[*index].admin,
        }
    }
}

fn case() -> impl Strategy<Value = Case> {
    let payload = prop_oneof![
        1 => (prop::collection::vec(any::<u8>(), 0..600), any::<bool>())
            .prop_map(|(bytes, admin)| Payload::Random { bytes, admin }),
        4 => mutated_request().prop_map(|(index, mutations)| Payload::Mutated { index, mutations }),
    ];
    (
        payload,
        prop::collection::vec(any::<Index>(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(payload, cuts, half_close)| Case {
            payload,
            cuts,
            half_close,
        })
}

/// Sends the case and reads until the server closes, an event stream starts, or the
/// deadline passes. Ok(the bytes received, whether an event stream was left open).
fn exchange(addr: SocketAddr, case: &Case) -> Result<(Vec<u8>, bool), String> {
    let bytes = case.bytes();
    let mut s =
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut cuts: Vec<usize> = case.cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(bytes.len());
    let mut from = 0;
    for &to in &cuts {
        if to <= from {
            continue;
        }
        // A write error is the server closing early (e.g. after refusing the head).
        if s.write_all(&bytes[from..to]).is_err() {
            break;
        }
        from = to;
        thread::sleep(Duration::from_millis(2));
    }
    if case.half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = CASE_DEADLINE.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(format!(
                "connection still open after {CASE_DEADLINE:?}; received {:?}",
                String::from_utf8_lossy(&got[..got.len().min(500)])
            ));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => return Ok((got, false)),
            Ok(n) => {
                got.extend_from_slice(&chunk[..n]);
                if let Ok(p) = parse_responses(&got) {
                    if p.open_body && p.responses.last().is_some_and(|r| r.is_event_stream()) {
                        return Ok((got, true));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return Ok((got, false))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// A case's final statuses, or what was wrong.
type CaseResult = Result<Vec<u16>, String>;

/// Runs one case.
fn run_case(s: &Server, case: &Case) -> CaseResult {
    let addr = if case.admin() { s.admin } else { s.public };
    let (got, _stream_open) = exchange(addr, case)?;
    let WireParse { responses, .. } = parse_responses(&got).map_err(|e| {
        format!(
            "not HTTP: {e}; received {:?}",
            String::from_utf8_lossy(&got[..got.len().min(500)])
        )
    })?;
    for (i, r) in responses.iter().enumerate() {
        let ok =
            r.status == 100 || (200..300).contains(&r.status) || (400..600).contains(&r.status);
        if !ok {
            return Err(format!("response {i} has status {}: {r:?}", r.status));
        }
        if r.closes() && i + 1 < responses.len() {
            return Err(format!(
                "response {i} says Connection: close but {} more followed: {responses:?}",
                responses.len() - i - 1
            ));
        }
    }
    let finals: Vec<u16> = responses
        .iter()
        .map(|r| r.status)
        .filter(|s| !(100..200).contains(s))
        .collect();
    match &case.payload {
        Payload::Random { .. } => {
            if let Some(s) = finals.iter().find(|s| (200..300).contains(*s)) {
                return Err(format!("random bytes were answered {s}: {responses:?}"));
            }
        }
        Payload::Mutated { index, mutations } if mutations.is_empty() => {
            let want = VALID_REQUESTS[*index].expect;
            let matches = finals.len() == want.len()
                && finals
                    .iter()
                    .zip(want)
                    .all(|(s, allowed)| allowed.contains(s));
            if !matches {
                return Err(format!(
                    "valid request answered {finals:?}, expected one of {want:?} each: {responses:?}"
                ));
            }
        }
        Payload::Mutated { .. } => {}
    }
    Ok(finals)
}

/// Shrinks a failing case with proptest's value tree, re-running it against `s`
/// (bounded in iterations and time). Returns the smallest failing case and its error.
fn shrink(s: &Server, mut tree: impl ValueTree<Value = Case>, first: String) -> (Case, String) {
    let mut best = (tree.current(), first);
    let deadline = Instant::now() + Duration::from_secs(60);
    if !tree.simplify() {
        return best;
    }
    for _ in 0..200 {
        if Instant::now() > deadline {
            break;
        }
        let c = tree.current();
        match run_case(s, &c) {
            Err(e) => {
                best = (c, e);
                if !tree.simplify() {
                    break;
                }
            }
            Ok(_) => {
                if !tree.complicate() {
                    break;
                }
            }
        }
    }
    best
}

#[test]
fn malformed_requests_get_an_http_answer_or_a_close_and_the_server_keeps_serving() {
    let cases: usize = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    let mut s = Server::start(FLAGS);
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &SEED),
    );
    let strategy = case();
    let mut trees = Vec::with_capacity(cases);
    for _ in 0..cases {
        trees.push(strategy.new_tree(&mut runner).expect("generate a case"));
    }
    let inputs: Vec<Case> = trees.iter().map(|t| t.current()).collect();

    let t = Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, CaseResult)>> = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..PARALLEL {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = inputs.get(i) else { break };
                let r = run_case(&s, case);
                results.lock().unwrap().push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    let mut histogram = std::collections::BTreeMap::new();
    for (_, r) in &results {
        match r {
            Ok(statuses) if statuses.is_empty() => {
                *histogram.entry("closed".to_string()).or_insert(0) += 1
            }
            Ok(statuses) => {
                for st in statuses {
                    *histogram.entry(st.to_string()).or_insert(0) += 1;
                }
            }
            Err(_) => *histogram.entry("FAILED".to_string()).or_insert(0) += 1,
        }
    }
    eprintln!("{cases} cases in {:?}: {histogram:?}", t.elapsed());

    let failures: Vec<(usize, String)> = results
        .into_iter()
        .filter_map(|(i, r)| r.err().map(|e| (i, e)))
        .collect();
    if let Some((i, first)) = failures.first().cloned() {
        let tree = trees.swap_remove(i);
        let (minimal, why) = shrink(&s, tree, first);
        panic!(
            "{} of {cases} cases failed; first (case {i}), shrunk to {minimal:?} with bytes {:?}:\n{why}\n\
             all failures: {failures:#?}\nserver output:\n{}",
            failures.len(),
            String::from_utf8_lossy(&minimal.bytes()),
            s.output()
        );
    }

    // Still alive, never panicked, and serving.
    assert!(s.is_running(), "the server exited; output:\n{}", s.output());
    assert!(
        !s.output().contains("panicked"),
        "the server panicked:\n{}",
        s.output()
    );
    let cursor = cursor_now(s.public, "after-fuzz");
    let mut sub = park(
        s.public,
        &format!("/sub/after-fuzz?since={cursor}&timeout=10"),
    );
    let id = publish(s.admin, "after-fuzz", "still serving");
    assert_eq!(
        assert_delivery(&sub.response(), "after-fuzz", b"still serving"),
        id
    );
    drop(sub);
    // Nothing left behind: every fuzz connection was closed and nothing is parked
    // (lingering closes take up to two seconds).
    let mut last = serde_json::Value::Null;
    let clean = wait_until(
        || {
            last = stats(s.admin);
            last["connections"].as_u64() == Some(1) && last["parked"].as_u64() == Some(0)
        },
        Duration::from_secs(6),
    );
    assert!(clean, "connections left open after the fuzz cases: {last}");
}
