//! The bodies of holdfast's fuzz targets, as plain functions. libFuzzer calls them from
//! `fuzz_targets/` (nightly: `cargo +nightly fuzz run head`), and the main crate's
//! `tests/parser_props.rs` includes this file by path and calls the same functions with
//! proptest-generated input, so the stable toolchain runs every check in `cargo test`.
//! This file therefore depends on nothing but `holdfast`.
//!
//! Each function panics — a finding — when a property fails:
//!
//! - [`head`]: `head_end`, `check_partial` and `parse_head` never panic; the server's
//!   verdict on a request — reached by the server's own request framing,
//!   `holdfast::http::framing::Framer`, driven as the server drives it (needs more
//!   bytes / refused with status S / complete request R with its body) — does not
//!   depend on how the bytes were split across reads; a complete head ends exactly where
//!   `head_end` finds the blank line (else the bytes in between would be read as a body
//!   or as the next request).
//! - [`chunked`]: `ChunkedDecoder` never panics, never produces more than `max` body
//!   bytes, consumes all it is given unless the body ended, and gives the same body, the
//!   same end and the same error whether fed at once or a byte at a time.

use holdfast::http::chunked::{ChunkError, ChunkedDecoder};
use holdfast::http::framing::{Framed, Framer};
use holdfast::http::parse::{self, BodyLen, Method};

/// What the server decides about the bytes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadVerdict {
    /// Needs more bytes (the header timeout will end it if they never come).
    Incomplete,
    /// Refused with this status, then closed.
    Refused(u16),
    /// A complete head.
    Complete(Head),
}

/// A parsed head, owned, so that verdicts reached on different buffers compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: Method,
    pub path: Vec<u8>,
    pub query: Vec<u8>,
    pub minor: u8,
    pub body: BodyLen,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub wants_sse: bool,
    pub last_event_id: Option<Vec<u8>>,
    pub content_type: Option<Vec<u8>>,
    pub head_len: usize,
    /// The decoded body.
    pub body_bytes: Vec<u8>,
    /// The input after the request, buffered or not yet read: the start of the next
    /// request. (The request's raw
    /// length is not comparable across splits: decoded chunk framing is cut as it goes.)
    pub rest: Vec<u8>,
}

/// The body limit the verdicts are reached with (the server's default).
pub const MAX_BODY: usize = 64 * 1024;

/// The verdict the server reaches when `data` arrives in reads ending at `cuts`
/// (offsets into `data`; out-of-order or out-of-range ones are skipped) and finally at
/// `data.len()`: the server's own [`Framer`], called after every read on the bytes
/// buffered so far, with the decoded chunk framing it asks to cut removed, as
/// `Worker::handle_buffered` does.
pub fn head_verdict(data: &[u8], cuts: &[usize]) -> HeadVerdict {
    let mut framer = Framer::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = 0;
    for &len in cuts.iter().chain(std::iter::once(&data.len())) {
        if len <= seen || len > data.len() {
            continue;
        }
        buf.extend_from_slice(&data[seen..len]);
        seen = len;
        match framer.next(&buf, MAX_BODY) {
            Framed::Partial { cut, .. } => {
                if let Some((start, n)) = cut {
                    assert!(start + n <= buf.len(), "cut {start}+{n} of {}", buf.len());
                    buf.drain(start..start + n);
                }
            }
            Framed::Refused { status, .. } => return HeadVerdict::Refused(status),
            Framed::Request { req: r, body, len } => {
                let mut scanned = 0;
                let end = parse::head_end(&buf, &mut scanned);
                assert_eq!(
                    end,
                    Some(r.head_len),
                    "parse_head and head_end disagree on where the head ends: {:?}",
                    String::from_utf8_lossy(&buf[..r.head_len.min(buf.len())])
                );
                assert!(
                    (r.head_len..=buf.len()).contains(&len),
                    "request of {len} bytes, head {}, buffer {}",
                    r.head_len,
                    buf.len()
                );
                return HeadVerdict::Complete(Head {
                    method: r.method,
                    path: r.path.to_vec(),
                    query: r.query.to_vec(),
                    minor: r.minor,
                    body: r.body,
                    keep_alive: r.keep_alive,
                    expect_continue: r.expect_continue,
                    wants_sse: r.wants_sse,
                    last_event_id: r.last_event_id.map(<[u8]>::to_vec),
                    content_type: r.content_type.map(<[u8]>::to_vec),
                    head_len: r.head_len,
                    body_bytes: body.to_vec(),
                    rest: [&buf[len..], &data[seen..]].concat(),
                });
            }
        }
    }
    HeadVerdict::Incomplete
}

/// Asserts two verdicts on the same bytes agree. A refusal may carry a different status
/// when a head breaks two rules at once (which one is seen first depends on where the
/// reads ended: a 9 KiB request line with 65 headers is 414 when read slowly and 431
/// when it arrives whole); refused is refused.
pub fn assert_same_verdict(data: &[u8], a: &HeadVerdict, b: &HeadVerdict, how: &str) {
    let same = match (a, b) {
        (HeadVerdict::Refused(_), HeadVerdict::Refused(_)) => true,
        _ => a == b,
    };
    assert!(
        same,
        "verdict depends on how the bytes arrive ({how}): {a:?} vs {b:?} for {:?}",
        String::from_utf8_lossy(&data[..data.len().min(400)])
    );
}

/// Fuzz target `head`: any bytes, parsed whole, a byte at a time, and in pieces whose
/// sizes come from the input itself.
pub fn head(data: &[u8]) {
    // The parts on arbitrary input, including input past the end of a head.
    let _ = parse::check_partial(data);
    let _ = parse::parse_head(data);
    let mut scanned = 0;
    let _ = parse::head_end(data, &mut scanned);

    let whole = head_verdict(data, &[]);
    let bytewise: Vec<usize> = (1..data.len()).collect();
    assert_same_verdict(
        data,
        &whole,
        &head_verdict(data, &bytewise),
        "byte at a time",
    );
    let step = data.first().map_or(1, |&b| usize::from(b % 13) + 1);
    let pieces: Vec<usize> = (1..data.len()).step_by(step).collect();
    assert_same_verdict(data, &whole, &head_verdict(data, &pieces), "in pieces");
}

/// The outcome of decoding one chunked body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub result: Result<(), ChunkError>,
    /// Input bytes consumed (0 after an error: the decoder does not report it then).
    pub consumed: usize,
    pub body: Vec<u8>,
    pub done: bool,
}

/// Decodes `input` as the event loop does when it arrives in reads ending at `cuts`: each
/// call gets everything after what earlier calls consumed.
pub fn decode_with(input: &[u8], max: u64, cuts: &[usize]) -> Decoded {
    let mut d = ChunkedDecoder::new();
    let mut body = Vec::new();
    let mut consumed = 0;
    let mut seen = 0;
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        if end <= seen || end > input.len() || d.is_done() {
            continue;
        }
        seen = end;
        match d.decode(&input[consumed..end], &mut body, max) {
            Ok(n) => {
                assert!(
                    n <= end - consumed,
                    "consumed {n} of {} bytes",
                    end - consumed
                );
                if !d.is_done() {
                    assert_eq!(n, end - consumed, "stopped before the end of its input");
                }
                consumed += n;
            }
            Err(e) => {
                return Decoded {
                    result: Err(e),
                    consumed: 0,
                    body,
                    done: false,
                }
            }
        }
        assert!(
            body.len() as u64 <= max,
            "decoded {} bytes with a limit of {max}",
            body.len()
        );
    }
    Decoded {
        result: Ok(()),
        consumed,
        done: d.is_done(),
        body,
    }
}

/// Body limits the `chunked` target picks from with its first input byte.
pub const MAXES: [u64; 6] = [0, 1, 7, 300, 65_536, u64::MAX];

/// Fuzz target `chunked`: the first byte picks the body limit, the rest is the body.
pub fn chunked(data: &[u8]) {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    let max = MAXES[usize::from(pick) % MAXES.len()];
    let whole = decode_with(input, max, &[]);
    let bytewise: Vec<usize> = (1..input.len()).collect();
    assert_eq!(
        whole,
        decode_with(input, max, &bytewise),
        "decoding depends on how the bytes arrive (byte at a time) for {:?}",
        String::from_utf8_lossy(input)
    );
    let step = usize::from(pick / 8 % 13) + 1;
    let pieces: Vec<usize> = (1..input.len()).step_by(step).collect();
    assert_eq!(
        whole,
        decode_with(input, max, &pieces),
        "decoding depends on how the bytes arrive (pieces of {step}) for {:?}",
        String::from_utf8_lossy(input)
    );
}
