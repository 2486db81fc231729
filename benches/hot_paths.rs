//! Criterion benches for the per-request and per-connection hot paths: request-head
//! parsing, reading a head that arrives one byte per readiness event (a slow-loris
//! client), the timer wheel at a million entries, parking and unparking, and rendering
//! one message for fan-out. `cargo bench --bench hot_paths`; CI compiles them
//! (`cargo bench --no-run`) so they keep building.

use std::hint::black_box;
use std::io::{self, Read};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use holdfast::buffer::Io;
use holdfast::http::framing::Framed;
use holdfast::http::parse::{head_end, parse_head, Parsed};
use holdfast::http::respond;
use holdfast::park::{ParkLink, ParkSlots, Parking};
use holdfast::store::{ChannelKey, Cursor, Group, Silent, Store, StoreConfig, Subscribed};
use holdfast::stream::{Event, Framing};
use holdfast::wheel::{TimerNode, TimerSlots, Wheel};
use std::sync::Arc;

const SUB: &[u8] = b"GET /sub/user.42,group.7,all?since=1732200000000042&timeout=30 HTTP/1.1\r\n\
Host: push.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\n\
Accept: */*\r\nAccept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\n\
X-Forwarded-For: 203.0.113.9\r\nX-Real-IP: 203.0.113.9\r\n\r\n";

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(SUB.len() as u64));
    g.bench_function("subscribe_head", |b| {
        b.iter(|| {
            let mut scanned = 0;
            let end = head_end(black_box(SUB), &mut scanned).expect("complete head");
            match parse_head(&SUB[..end]) {
                Ok(Parsed::Complete(r)) => black_box(r.head_len),
                _ => unreachable!("valid request"),
            }
        })
    });
    g.finish();
}

/// A socket with nothing to read.
struct Drained;
impl Read for Drained {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// What the worker does for a slow-loris client: per readiness event, read one byte,
/// read again to `WouldBlock`, and frame the input (which looks only at the new byte
/// for the end of the head; the last byte completes and parses it).
fn dribble(c: &mut Criterion) {
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Bytes(SUB.len() as u64));
    let mut io = Io::default();
    g.bench_function("subscribe_head_byte_by_byte", |b| {
        b.iter(|| {
            for i in 0..SUB.len() {
                let n = io
                    .read_from(&mut &SUB[i..i + 1], 64 * 1024)
                    .expect("one byte");
                debug_assert_eq!(n, 1);
                assert!(io.read_from(&mut Drained, 64 * 1024).is_err());
                let len = match io.frame(64 * 1024) {
                    Framed::Partial { .. } => continue,
                    Framed::Request { len, .. } => black_box(len),
                    Framed::Refused { status, .. } => panic!("refused: {status}"),
                };
                io.consume(len);
            }
            assert!(io.input().is_empty(), "the head ends with the last byte");
        })
    });
    g.finish();
}

struct Nodes(Vec<TimerNode>);
impl TimerSlots for Nodes {
    fn node(&mut self, key: u32) -> &mut TimerNode {
        &mut self.0[key as usize]
    }
}

const WHEEL_N: u32 = 1_000_000;

/// Deadlines spread over 0..120 s, like poll timeouts armed at different moments.
fn deadline(i: u32) -> u64 {
    (u64::from(i).wrapping_mul(2_654_435_761) % 120_000) + 1
}

fn wheel(c: &mut Criterion) {
    let mut g = c.benchmark_group("wheel_1M");
    g.throughput(Throughput::Elements(u64::from(WHEEL_N)));
    g.sample_size(10);
    g.bench_function("insert", |b| {
        b.iter_batched(
            || {
                (
                    Wheel::new(0),
                    Nodes(vec![TimerNode::new(); WHEEL_N as usize]),
                )
            },
            |(mut w, mut n)| {
                for i in 0..WHEEL_N {
                    w.insert(&mut n, i, deadline(i));
                }
                (w, n)
            },
            BatchSize::PerIteration,
        )
    });
    let full = || {
        let mut w = Wheel::new(0);
        let mut n = Nodes(vec![TimerNode::new(); WHEEL_N as usize]);
        for i in 0..WHEEL_N {
            w.insert(&mut n, i, deadline(i));
        }
        (w, n)
    };
    g.bench_function("cancel", |b| {
        b.iter_batched(
            full,
            |(mut w, mut n)| {
                for i in 0..WHEEL_N {
                    w.cancel(&mut n, i);
                }
                (w, n)
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("expire", |b| {
        b.iter_batched(
            full,
            |(mut w, mut n)| {
                // Advance second by second, as a loop that wakes once a second would.
                let mut fired = 0u32;
                for now in (1_000..=121_000).step_by(1_000) {
                    while w.poll(&mut n, now).is_some() {
                        fired += 1;
                    }
                }
                assert_eq!(fired, WHEEL_N);
                (w, n)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

struct Links(Vec<ParkLink>);
impl ParkSlots for Links {
    fn link(&mut self, conn: u32) -> &mut ParkLink {
        &mut self.0[conn as usize]
    }
}

/// Real channel keys: parking only stores and compares them.
fn channel_keys(n: usize) -> Vec<ChannelKey> {
    let store = Store::new(StoreConfig::unbounded(16, 60_000), Arc::new(Silent));
    let group = Group::new(0).expect("group 0");
    (0..n)
        .map(|i| {
            let name = format!("c{i}");
            let mut key = [ChannelKey::NONE];
            let parked = Some((group, &mut key[..]));
            store
                .subscribe(&[&name], Cursor::Latest, parked, 0)
                .unwrap();
            key[0]
        })
        .collect()
}

fn park(c: &mut Criterion) {
    const N: u32 = 10_000;
    let k = channel_keys(19);
    let mut g = c.benchmark_group("park");
    g.throughput(Throughput::Elements(u64::from(N)));
    let mut links = Links(vec![ParkLink::new(); N as usize]);
    let mut p = Parking::new();
    g.bench_function("park_unpark_single_channel", |b| {
        b.iter(|| {
            for i in 0..N {
                p.park(&mut links, i, &[k[(i % 16) as usize]]);
            }
            for i in 0..N {
                p.unpark(&mut links, i, |k, e| {
                    black_box((k, e));
                });
            }
        })
    });
    g.bench_function("park_unpark_three_channels", |b| {
        b.iter(|| {
            for i in 0..N {
                p.park(&mut links, i, &[k[1], k[2], k[(i % 16) as usize + 3]]);
            }
            for i in 0..N {
                p.unpark(&mut links, i, |k, e| {
                    black_box((k, e));
                });
            }
        })
    });
    g.finish();
}

fn render(c: &mut Criterion) {
    let store = Store::with_seed(
        StoreConfig::unbounded(16, 60_000),
        1_732_200_000_000_000,
        Arc::new(Silent),
    );
    store
        .publish(
            "news",
            Some(Bytes::from_static(b"application/json")),
            Bytes::from(vec![b'x'; 512]),
            0,
        )
        .unwrap();
    let msg = match store
        .subscribe(&["news"], Cursor::Since(0), None, 0)
        .unwrap()
    {
        Subscribed::Ready { msg, .. } => msg,
        other => panic!("{other:?}"),
    };
    let mut date = [0u8; 29];
    respond::http_date(1_795_000_000, &mut date);
    let mut g = c.benchmark_group("render");
    let mut out = Vec::with_capacity(1024);
    g.bench_function("message_head_once_per_fanout", |b| {
        b.iter(|| {
            out.clear();
            let m = black_box(&msg);
            respond::message_head(
                &mut out,
                &Event::from(&**m),
                m.content_type.as_deref(),
                &date,
            );
            black_box(out.len())
        })
    });
    g.bench_function("sse_event_once_per_fanout", |b| {
        b.iter(|| {
            out.clear();
            Framing::Sse.message(&mut out, &Event::from(&**black_box(&msg)), true);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, parse, dribble, wheel, park, render);
criterion_main!(benches);
