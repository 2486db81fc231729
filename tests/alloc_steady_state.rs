//! A parked long-poll allocates nothing in the steady state: once pools and tables have
//! grown, a request that is read, parked, waits and times out costs zero allocations.
//!
//! Runs the server in this process (one worker) under a counting global allocator.
//! One test in this file, so no other test thread allocates during the window; the test
//! thread itself only writes a static request and reads into a stack buffer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use holdfast::sys::CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

/// Reads one response without allocating; returns its length.
fn read_response(s: &mut TcpStream, buf: &mut [u8; 4096]) -> usize {
    let mut n = 0;
    loop {
        let r = s.read(&mut buf[n..]).expect("read response");
        assert!(r > 0, "server closed the connection");
        n += r;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            return n;
        }
    }
}

#[test]
fn park_wait_timeout_cycle_allocates_nothing() {
    let mut cfg = holdfast::Config::for_tests();
    cfg.threads = Some(1);
    let server = holdfast::start(&cfg).expect("start server");

    // A message keeps the channel alive (TTL 1 h), so the cycle below does not create
    // and free the channel each time; the cursor is that message's id.
    let mut admin = TcpStream::connect(server.admin).unwrap();
    admin
        .write_all(b"POST /pub/steady HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = read_response(&mut admin, &mut buf);
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    let id: String = text
        .split("\"id\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("id in publish response")
        .to_owned();
    let request = format!("GET /sub/steady?since={id}&timeout=300ms HTTP/1.1\r\nHost: t\r\n\r\n");
    let request = request.as_bytes();

    let mut sub = TcpStream::connect(server.public).unwrap();
    sub.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Warm up: pools, the park-list map and the wheel reach their working size.
    for _ in 0..3 {
        sub.write_all(request).unwrap();
        let n = read_response(&mut sub, &mut buf);
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 204"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }

    let mut counts = [0u64; 3];
    for c in counts.iter_mut() {
        ALLOC.arm();
        sub.write_all(request).unwrap();
        let n = read_response(&mut sub, &mut buf);
        *c = ALLOC.disarm();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 204"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    assert_eq!(
        counts,
        [0, 0, 0],
        "allocations during read → park → wait → timeout → respond"
    );
    server.shutdown();
    server.join();
}
