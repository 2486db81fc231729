//! Shutdown under load: 3,000 long-polls parked over 600 channels (5 each) while two
//! publishers sweep the channels, one publish each; SIGTERM lands mid-sweep.
//!
//! Every parked poll is answered: `503` with `Retry-After: 1`, or `200` with a message
//! whose publish was acknowledged (`201`) — never a message nobody was told about. Every
//! acknowledged publish reached exactly the subscribers its `201` said it was handed to
//! (`"subscribers": N`): none of them was answered `503` instead. A publish that was not
//! acknowledged failed visibly (closed connection or `503`) — that is how an undelivered
//! message is reported to its publisher. The process exits 0 within 2.5 s.
//!
//! The only test in this binary: its sockets count against the open-file limit.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::http::{request_bytes, Conn, Response};
use common::net::{connect_from, source_addr};
use common::protocol::{id_num, wait_stat};
use common::server::Server;
use common::timing::wait_until;

const CHANNELS: usize = 600;
const PER_CHANNEL: usize = 5;
const PUBLISHERS: usize = 2;
/// SIGTERM goes out once this many publishes were acknowledged: about a quarter of the
/// sweep, so some channels were published before it and some after.
const TERM_AFTER: usize = 150;
const SEC: Duration = Duration::from_secs(1);

/// What one publish came to.
#[derive(Debug)]
enum Publish {
    /// 201: (message id, subscribers it was handed to).
    Acked(u64, u64),
    /// Any other answer, or none: the publisher knows it did not go through.
    Failed(String),
}

fn sweep(
    admin: SocketAddr,
    me: usize,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Vec<(usize, Publish)> {
    let mut c = Conn::open(admin);
    c.set_read_timeout(5 * SEC);
    let mut out = Vec::new();
    for ch in (me..CHANNELS).step_by(PUBLISHERS) {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let body = format!("for sd{ch}");
        let sent = c.try_send(&request_bytes(
            "POST",
            &format!("/pub/sd{ch}"),
            &[],
            Some(body.as_bytes()),
        ));
        let r = match sent.and_then(|_| c.read_response()) {
            Ok(r) if r.status == 201 => {
                let v = r.json();
                let id = id_num(v["id"].as_str().expect("id"));
                let n = v["subscribers"].as_u64().expect("subscribers");
                acked.fetch_add(1, Ordering::SeqCst);
                Publish::Acked(id, n)
            }
            Ok(r) => Publish::Failed(r.brief()),
            Err(e) => Publish::Failed(e.to_string()),
        };
        let failed = matches!(r, Publish::Failed(_));
        out.push((ch, r));
        if failed {
            break; // the server is going away; the rest are not attempted
        }
        thread::sleep(Duration::from_millis(1));
    }
    out
}

#[test]
fn sigterm_with_3000_parked_and_publishes_in_flight_loses_no_acknowledged_message() {
    holdfast::sys::raise_fd_limit().expect("raise the open-file limit");
    let mut s = Server::start(&[]);
    let request = |ch: usize| request_bytes("GET", &format!("/sub/sd{ch}?timeout=60"), &[], None);
    let mut polls: Vec<(usize, Conn)> = Vec::with_capacity(CHANNELS * PER_CHANNEL);
    for i in 0..CHANNELS * PER_CHANNEL {
        let ch = i % CHANNELS;
        let stream =
            connect_from(source_addr(i, 4), s.public).unwrap_or_else(|e| panic!("poll {i}: {e}"));
        let mut c = Conn::from_stream(stream);
        c.send(&request(ch));
        polls.push((ch, c));
    }
    wait_stat(s.admin, "parked", (CHANNELS * PER_CHANNEL) as u64, 60 * SEC);

    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|me| {
            let (acked, stop, admin) = (acked.clone(), stop.clone(), s.admin);
            thread::spawn(move || sweep(admin, me, acked, stop))
        })
        .collect();
    assert!(
        wait_until(|| acked.load(Ordering::SeqCst) >= TERM_AFTER, 30 * SEC),
        "publishers did not get {TERM_AFTER} acknowledgements"
    );
    let t = Instant::now();
    s.terminate();

    // Every parked poll is answered.
    let mut answers: Vec<(usize, Result<Response, String>)> = Vec::new();
    for (ch, mut c) in polls {
        c.set_read_timeout(5 * SEC);
        answers.push((ch, c.read_response().map_err(|e| e.to_string())));
    }
    let status = s.wait_exit(5 * SEC);
    let exited_in = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let published: Vec<(usize, Publish)> = publishers
        .into_iter()
        .flat_map(|p| p.join().expect("publisher panicked"))
        .collect();

    let mut acks: HashMap<u64, (usize, u64)> = HashMap::new();
    let mut failed = Vec::new();
    for (ch, p) in &published {
        match p {
            Publish::Acked(id, n) => {
                acks.insert(*id, (*ch, *n));
            }
            Publish::Failed(why) => failed.push(format!("sd{ch}: {why}")),
        }
    }
    let mut problems = Vec::new();
    let mut delivered: HashMap<u64, u64> = HashMap::new();
    let (mut ok, mut unavailable) = (0, 0);
    for (i, (ch, a)) in answers.iter().enumerate() {
        match a {
            Ok(r) if r.status == 503 => {
                unavailable += 1;
                if r.header("retry-after") != Some("1") {
                    problems.push(format!(
                        "poll {i}: 503 without Retry-After: 1: {}",
                        r.brief()
                    ));
                }
            }
            Ok(r) if r.status == 200 => {
                ok += 1;
                let id = id_num(&r.message_id());
                *delivered.entry(id).or_default() += 1;
                match acks.get(&id) {
                    Some((pch, _)) if pch == ch && r.body == format!("for sd{ch}").as_bytes() => {}
                    Some(_) => problems.push(format!(
                        "poll {i} on sd{ch} got another channel's message: {}",
                        r.brief()
                    )),
                    None => problems.push(format!(
                        "poll {i} on sd{ch} got message {id}, whose publish was never \
                         acknowledged: {}",
                        r.brief()
                    )),
                }
            }
            Ok(r) => problems.push(format!("poll {i}: {}", r.brief())),
            Err(e) => problems.push(format!("poll {i} on sd{ch} got no answer: {e}")),
        }
    }
    for (id, (ch, n)) in &acks {
        let got = delivered.get(id).copied().unwrap_or(0);
        if got != *n {
            problems.push(format!(
                "message {id} on sd{ch}: its 201 said it was handed to {n} subscribers, \
                 {got} received it"
            ));
        }
    }
    eprintln!(
        "SIGTERM after {} acknowledged publishes; {} acknowledged in all, {} failed \
         (first: {:?}); parked polls: {ok} got a message, {unavailable} got 503; exit \
         {status:?} after {exited_in:?}",
        TERM_AFTER,
        acks.len(),
        failed.len(),
        failed.first()
    );
    problems.truncate(20);
    assert!(problems.is_empty(), "{problems:#?}");
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running {exited_in:?} after SIGTERM; output:\n{}",
            s.output()
        )
    });
    assert!(status.success(), "exit {status:?}; output:\n{}", s.output());
    assert!(
        exited_in <= 2 * SEC + SEC / 2,
        "exit took {exited_in:?} after SIGTERM"
    );
    // The test exercised what it is about: messages delivered before the signal, polls
    // answered 503 by it, and publishes cut off by it.
    assert!(
        ok > 0 && unavailable > 0,
        "{ok} delivered, {unavailable} 503"
    );
    assert!(
        acks.len() < CHANNELS,
        "every publish was acknowledged: SIGTERM came after the sweep"
    );
}
