//! SIGTERM: parked polls are answered `503` with `Retry-After: 1`, and the process exits
//! with status 0 promptly.

mod common;

use std::time::{Duration, Instant};

use common::http::Conn;
use common::protocol::{get, park, publish, wait_stat};
use common::server::Server;

const SEC: Duration = Duration::from_secs(1);

#[test]
fn sigterm_answers_parked_polls_with_503_and_exits_zero() {
    let mut s = Server::start(&[]);
    let id = publish(s.admin, "busy", "x");
    let mut polls = [
        park(s.public, "/sub/idle?timeout=60"),
        park(s.public, "/sub/idle?timeout=60"),
        park(s.public, &format!("/sub/busy?since={id}&timeout=60")),
        park(s.public, "/sub/busy,idle,third?timeout=60"),
        park(s.public, "/sub/fourth?since=0"),
    ];
    wait_stat(s.admin, "parked", polls.len() as u64, 5 * SEC);
    let mut idle = Conn::open(s.public);
    assert_eq!(idle.get("/health").status, 200);

    let t = Instant::now();
    s.terminate();
    for (i, c) in polls.iter_mut().enumerate() {
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("parked poll {i} got no answer on SIGTERM: {e}"));
        assert_eq!(r.status, 503, "poll {i}: {}", r.brief());
        assert_eq!(
            r.header("retry-after"),
            Some("1"),
            "poll {i}: {}",
            r.brief()
        );
        assert!(
            !r.body.is_empty(),
            "poll {i}: 503 should carry a short text"
        );
        assert!(
            r.closes(),
            "poll {i}: the server closes, so it must say so: {}",
            r.brief()
        );
        c.assert_closed(3 * SEC);
    }
    let status = s.wait_exit(2 * SEC + (SEC / 2)).unwrap_or_else(|| {
        panic!(
            "server still running {:?} after SIGTERM; output:\n{}",
            t.elapsed(),
            s.output()
        )
    });
    assert!(
        status.success(),
        "exit status {status:?}; output:\n{}",
        s.output()
    );
    assert!(
        t.elapsed() <= 2 * SEC + SEC / 2,
        "exit took {:?}",
        t.elapsed()
    );
    // The idle keep-alive connection was closed, not left dangling.
    idle.assert_closed(SEC);
}

#[test]
fn sigterm_on_an_idle_server_exits_zero() {
    let mut s = Server::start(&[]);
    assert_eq!(get(s.public, "/health").status, 200);
    let t = Instant::now();
    s.terminate();
    let status = s
        .wait_exit(2 * SEC)
        .unwrap_or_else(|| panic!("still running after SIGTERM; output:\n{}", s.output()));
    assert!(
        status.success(),
        "exit status {status:?}; output:\n{}",
        s.output()
    );
    assert!(t.elapsed() <= 2 * SEC);
}
