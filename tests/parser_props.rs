//! Property tests of request parsing — the stable-toolchain run of the fuzz targets in
//! `fuzz/`. The fuzz target bodies (`fuzz/src/lib.rs`) are included here by path and
//! called with proptest input: random bytes, mutations of valid requests (truncations,
//! flipped and inserted bytes, spliced tokens, oversized repeats), arbitrary read
//! boundaries, and chunked bodies encoded every legal way. No panic; a head's verdict
//! and a chunked body's decoding do not depend on how the bytes were split across reads.
//!
//! Bounded (`PROPTEST_CASES`, default 256 per property) and seeded by proptest as usual;
//! a failure prints the minimal input and is saved under `tests/proptest-regressions/`.

mod common;

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod fuzz_targets;

use holdfast::http::parse::{head_end, parse_head, BodyLen, Method, Parsed};
use proptest::prelude::*;

use common::fuzzing::{mutated_bytes, mutated_request, VALID_REQUESTS};
use fuzz_targets::{assert_same_verdict, decode_with, head_verdict, HeadVerdict, MAXES};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(256),
        ..ProptestConfig::default()
    }
}

/// Bytes that request heads are made of, so random strings get past the first byte.
const HEADISH: &[u8] = b"\r\n\r\n\r\n: /?=&,;GETPOSHTUD1.0-abcxyz\t\x00\xff";

/// Read boundaries: up to 12 offsets into a buffer of any length (scaled on use).
fn cuts() -> impl Strategy<Value = Vec<prop::sample::Index>> {
    prop::collection::vec(any::<prop::sample::Index>(), 0..12)
}

fn offsets(cuts: &[prop::sample::Index], len: usize) -> Vec<usize> {
    let mut v: Vec<usize> = cuts.iter().map(|i| i.index(len + 1)).collect();
    v.sort_unstable();
    v
}

/// A chunked encoding of `body`: chunk sizes, an optional extension per chunk, LF or
/// CRLF line ends, optional trailers, hex digits in either case.
#[derive(Debug, Clone)]
struct Encoding {
    sizes: Vec<usize>,
    ext: Vec<bool>,
    bare_lf: bool,
    upper: bool,
    trailers: Vec<String>,
}

fn encoding() -> impl Strategy<Value = Encoding> {
    (
        prop::collection::vec(1usize..300, 0..8),
        prop::collection::vec(any::<bool>(), 8),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec("[A-Za-z-]{1,10}: [ -~]{0,20}", 0..3),
    )
        .prop_map(|(sizes, ext, bare_lf, upper, trailers)| Encoding {
            sizes,
            ext,
            bare_lf,
            upper,
            trailers,
        })
}

fn encode(body: &[u8], e: &Encoding) -> Vec<u8> {
    let eol: &[u8] = if e.bare_lf { b"\n" } else { b"\r\n" };
    let mut out = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = e
            .sizes
            .get(i)
            .copied()
            .unwrap_or(rest.len())
            .min(rest.len());
        let size = if e.upper {
            format!("{n:X}")
        } else {
            format!("{n:x}")
        };
        out.extend_from_slice(size.as_bytes());
        if e.ext[i % e.ext.len()] {
            out.extend_from_slice(b";name=\"v\"");
        }
        out.extend_from_slice(eol);
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(eol);
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0");
    out.extend_from_slice(eol);
    for t in &e.trailers {
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(eol);
    out
}

#[test]
fn valid_requests_parse_completely_whole_and_split() {
    for (i, r) in VALID_REQUESTS.iter().enumerate() {
        let whole = head_verdict(r.bytes, &[]);
        let HeadVerdict::Complete(head) = &whole else {
            panic!("valid request {i} gave {whole:?}");
        };
        let bytewise: Vec<usize> = (1..r.bytes.len()).collect();
        assert_eq!(head_verdict(r.bytes, &bytewise), whole, "request {i}");
        // Every proper prefix of the head is incomplete, never refused.
        for n in 0..head.head_len {
            assert_eq!(
                head_verdict(&r.bytes[..n], &[]),
                HeadVerdict::Incomplete,
                "request {i}, prefix {n}"
            );
        }
    }
}

#[test]
fn fuzz_targets_accept_their_seed_inputs() {
    // The same seeds `fuzz/README.md` tells libFuzzer to start from.
    for r in VALID_REQUESTS {
        fuzz_targets::head(r.bytes);
    }
    for pick in 0..MAXES.len() as u8 {
        let mut input = vec![pick];
        input.extend_from_slice(b"3;x=y\r\nabc\r\n2\nde\n0\r\nT: 1\r\n\r\nNEXT");
        fuzz_targets::chunked(&input);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic_and_split_does_not_matter(
        data in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        fuzz_targets::head(&data);
        fuzz_targets::chunked(&data);
    }

    #[test]
    fn head_like_bytes_never_panic(
        data in prop::collection::vec(prop::sample::select(HEADISH), 0..300),
        cuts in cuts(),
    ) {
        fuzz_targets::head(&data);
        let whole = head_verdict(&data, &[]);
        assert_same_verdict(&data, &whole, &head_verdict(&data, &offsets(&cuts, data.len())), "cuts");
    }

    #[test]
    fn mutated_requests_never_panic_and_split_does_not_matter(
        (index, mutations) in mutated_request(),
        cuts in cuts(),
    ) {
        let data = mutated_bytes(index, &mutations);
        fuzz_targets::head(&data);
        let whole = head_verdict(&data, &[]);
        let split = head_verdict(&data, &offsets(&cuts, data.len()));
        assert_same_verdict(&data, &whole, &split, "cuts");
        // head_end agrees between one shot and a byte at a time, from any start.
        let mut scanned = 0;
        let one_shot = head_end(&data, &mut scanned);
        let mut scanned = 0;
        let mut bytewise = None;
        for n in 0..=data.len() {
            if let Some(e) = head_end(&data[..n], &mut scanned) {
                bytewise = Some(e);
                break;
            }
        }
        prop_assert_eq!(one_shot, bytewise);
        // The body after a complete head is decodable or refused; never a panic.
        if let Ok(Parsed::Complete(r)) = parse_head(&data[..one_shot.unwrap_or(0)]) {
            if r.body == BodyLen::Chunked {
                // The head's last byte stands in for the target's limit-picking byte.
                fuzz_targets::chunked(&data[r.head_len - 1..]);
            }
        }
    }

    #[test]
    fn unmutated_valid_requests_keep_their_meaning_under_any_split(
        index in 0..VALID_REQUESTS.len(),
        cuts in cuts(),
    ) {
        let bytes = VALID_REQUESTS[index].bytes;
        let split = head_verdict(bytes, &offsets(&cuts, bytes.len()));
        let HeadVerdict::Complete(head) = split else {
            panic!("valid request {index} gave {split:?}");
        };
        prop_assert!(matches!(
            head.method,
            Method::Get | Method::Post | Method::Put | Method::Delete
        ));
        prop_assert!(head.path.starts_with(b"/"));
    }

    #[test]
    fn chunked_round_trip_under_any_split(
        body in prop::collection::vec(any::<u8>(), 0..1500),
        enc in encoding(),
        cuts in cuts(),
        next in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let encoded = encode(&body, &enc);
        let mut input = encoded.clone();
        input.extend_from_slice(&next);
        for max in [body.len() as u64, u64::MAX] {
            let d = decode_with(&input, max, &offsets(&cuts, input.len()));
            prop_assert_eq!(d.result, Ok(()));
            prop_assert!(d.done, "not done after {:?}", String::from_utf8_lossy(&encoded));
            prop_assert_eq!(d.consumed, encoded.len(), "stops at the end of the body");
            prop_assert_eq!(&d.body, &body);
        }
        if !body.is_empty() {
            // One byte under the limit is refused as too large, never truncated.
            let d = decode_with(&input, body.len() as u64 - 1, &offsets(&cuts, input.len()));
            prop_assert!(d.result.is_err(), "{d:?}");
        }
    }

    #[test]
    fn mutated_chunked_bodies_never_panic_and_split_does_not_matter(
        body in prop::collection::vec(any::<u8>(), 0..300),
        enc in encoding(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        pick in any::<u8>(),
    ) {
        let mut input = vec![pick];
        input.extend_from_slice(&encode(&body, &enc));
        for (i, b) in &flips {
            let n = i.index(input.len() - 1) + 1;
            input[n] = *b;
        }
        fuzz_targets::chunked(&input);
    }
}
