//! Slow SSE readers at scale: 1,000 event streams that never read, next to 4 that do,
//! while 48 messages of 32–60 KB are published with `--sse-max-backlog 64KiB`. The
//! readers get every message in order and are never cut; every non-reading stream is
//! cut (`sse_streams` falls to the readers); the server's memory stays bounded (payloads
//! are shared, not copied per stream); and a cut stream resumes with `Last-Event-ID`
//! and loses nothing still buffered.
//!
//! The non-reading clients have a 4 KiB receive buffer and a 1460-byte MSS (a real
//! network's, instead of loopback's 64 KiB, which lets the kernel queue megabytes per
//! socket and would put 1,000 such sockets into TCP memory pressure for the machine).
//!
//! The only test in this binary: its sockets count against the open-file limit.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use common::http::{Conn, IO_TIMEOUT};
use common::net::source_addr;
use common::protocol::{cursor_now, publish, publish_id, stat, wait_stat};
use common::server::Server;
use common::sse::{Sse, SseEvent};
use common::timing::wait_until;

const SLOW: usize = 1_000;
const READERS: usize = 4;
const MESSAGES: usize = 48;
const SEC: Duration = Duration::from_secs(1);

fn payload(i: usize) -> Vec<u8> {
    // 32–60 KB, each distinct, valid UTF-8 with no line breaks (one `data:` line).
    let size = 32_000 + (i * 7_919) % 28_001;
    let mut p = format!("message {i:06} ").into_bytes();
    p.resize(size, b'a' + (i % 26) as u8);
    p
}

/// A non-reading client: small receive buffer and a real-network MSS.
fn connect_slow(i: usize, to: SocketAddr) -> TcpStream {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.set_mss(1460).expect("TCP_MAXSEG");
    sock.bind(&SockAddr::from(SocketAddr::new(
        source_addr(i, 4).into(),
        0,
    )))
    .expect("bind");
    sock.connect_timeout(&SockAddr::from(to), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("slow stream {i}: connect {to}: {e}"));
    sock.into()
}

/// Reads `MESSAGES` events; Err describes the first thing that went wrong.
fn read_all(mut sse: Sse, ids: std::sync::mpsc::Receiver<String>) -> Result<usize, String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    for i in 0..MESSAGES {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = sse
            .next_event(left.max(Duration::from_millis(1)))
            .map_err(|e| format!("message {i}: {e}"))?;
        let want = ids
            .recv_timeout(left.max(Duration::from_millis(1)))
            .map_err(|_| format!("message {i}: publisher gave no id"))?;
        if ev.id() != Some(want.as_str()) {
            return Err(format!("message {i}: id {:?}, want {want}", ev.id()));
        }
        if ev.data().as_bytes() != payload(i) {
            return Err(format!(
                "message {i}: payload differs ({} bytes)",
                ev.data().len()
            ));
        }
    }
    Ok(MESSAGES)
}

#[test]
fn a_thousand_streams_that_never_read_are_cut_with_bounded_memory_while_readers_get_everything() {
    holdfast::sys::raise_fd_limit().expect("raise the open-file limit");
    let s = Server::start(&[
        "--sse-max-backlog",
        "64KiB",
        "--max-message-size",
        "64KiB",
        "--buffer-messages",
        "64",
    ]);
    // Warm-up: one full-size message through publish and a stream, so the baseline
    // includes what serving any large message allocates once.
    {
        let mut warm = Sse::open(s.public, "/sub/warm", &[]);
        let id = publish(s.admin, "warm", payload(0));
        assert_eq!(warm.event().id(), Some(id.as_str()));
    }
    let cursor = cursor_now(s.public, "slow");

    let mut readers = Vec::new();
    let mut id_feeds = Vec::new();
    for _ in 0..READERS {
        let sse = Sse::open(s.public, &format!("/sub/slow?since={cursor}"), &[]);
        let (tx, rx) = std::sync::mpsc::channel();
        id_feeds.push(tx);
        readers.push(thread::spawn(move || read_all(sse, rx)));
    }
    let mut slow: Vec<Sse> = (0..SLOW)
        .map(|i| {
            Sse::begin(
                Conn::from_stream(connect_slow(i, s.public)),
                &format!("/sub/slow?since={cursor}"),
                &[],
            )
        })
        .collect();
    wait_stat(s.admin, "sse_streams", (SLOW + READERS) as u64, 30 * SEC);
    let rss_before = stat(s.admin, "rss_bytes");

    let t = Instant::now();
    let mut ids = Vec::with_capacity(MESSAGES);
    let mut rss_peak = rss_before;
    let mut publisher = Conn::open(s.admin);
    for i in 0..MESSAGES {
        let id = publish_id(&publisher.request("POST", "/pub/slow", &[], Some(&payload(i))));
        for feed in &id_feeds {
            let _ = feed.send(id.clone());
        }
        ids.push(id);
        if i % 4 == 3 {
            rss_peak = rss_peak.max(stat(s.admin, "rss_bytes"));
        }
    }
    let published_in = t.elapsed();
    let mut streams = 0;
    let all_cut = wait_until(
        || {
            streams = stat(s.admin, "sse_streams");
            rss_peak = rss_peak.max(stat(s.admin, "rss_bytes"));
            streams <= READERS as u64
        },
        30 * SEC,
    );
    let cut_in = t.elapsed();
    let results: Vec<Result<usize, String>> = readers
        .into_iter()
        .map(|r| r.join().expect("reader thread panicked"))
        .collect();
    let rss_after = stat(s.admin, "rss_bytes");
    let published_bytes: usize = (0..MESSAGES).map(|i| payload(i).len()).sum();
    eprintln!(
        "{MESSAGES} messages ({published_bytes} bytes) published in {published_in:?}; \
         non-reading streams cut by {cut_in:?} (sse_streams now {streams}); server RSS \
         {rss_before} -> peak {rss_peak} -> {rss_after}"
    );

    for (r, result) in results.iter().enumerate() {
        assert_eq!(
            result.as_ref(),
            Ok(&MESSAGES),
            "reader {r} did not get every message in order"
        );
    }
    assert!(
        all_cut,
        "{} of {SLOW} streams that never read are still open {cut_in:?} after publishing \
         {published_bytes} bytes with --sse-max-backlog 64KiB",
        streams.saturating_sub(READERS as u64)
    );
    // The readers have hung up too: nothing is left open.
    wait_stat(s.admin, "sse_streams", 0, 5 * SEC);

    // Bounded memory: the buffered messages (shared by every stream) plus per-stream
    // bookkeeping. Copying payloads per stream would cost up to 64 KiB per stream
    // (64 MB here) before the cut; the bound is a quarter of that.
    let bound = rss_before + 2 * published_bytes as u64 + 16 * 1024 * 1024;
    assert!(
        rss_peak <= bound,
        "server RSS peaked at {rss_peak} (from {rss_before}) with {SLOW} slow streams; \
         bound {bound}"
    );

    // A cut stream resumes with Last-Event-ID and loses nothing still buffered.
    let mut cut = slow.swap_remove(0);
    cut.expect_stream_start(IO_TIMEOUT);
    let mut last = cursor.clone();
    let mut got = 0;
    while let Ok(Some(block)) = cut.poll_block(Instant::now() + 5 * SEC) {
        let ev = SseEvent::parse(block);
        let id = ev.id().expect("event id").to_string();
        assert_eq!(id, ids[got], "cut stream, message {got} before the cut");
        got += 1;
        last = id;
    }
    assert!(
        got < MESSAGES,
        "a stream that never read got all {got} messages"
    );
    eprintln!("a cut stream held {got} complete messages; resuming from the next");
    let mut resumed = Sse::open(s.public, "/sub/slow", &[("Last-Event-ID", last.as_str())]);
    for (i, id) in ids.iter().enumerate().skip(got) {
        let ev = resumed.event();
        assert_eq!(ev.id(), Some(id.as_str()), "resumed stream, message {i}");
        assert!(
            ev.data().as_bytes() == payload(i),
            "resumed stream, message {i}"
        );
    }
    drop(slow);
}
