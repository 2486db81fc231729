//! HTTP streaming as newline-delimited JSON (`application/x-ndjson`): a `200` with
//! `Transfer-Encoding: chunked` that stays open, for `fetch()` + `ReadableStream`,
//! backend services and proxies that mangle `text/event-stream`.
//!
//! Each message or signal is one line, the [`json`](super::json) envelope plus `\n`,
//! sent as one chunk. A heartbeat is an empty line (a chunk holding `\n`), so every
//! non-empty line parses as JSON. A stream that ends (channel deleted, token expired,
//! shutdown) writes its signal line and then the terminating chunk, so a client sees a
//! clean end of body rather than a cut connection.

use super::{json, Event};

/// The stream's response headers (besides `Date`).
pub const HEADERS: &[(&str, &str)] = &[
    ("Content-Type", "application/x-ndjson"),
    ("Cache-Control", "no-store"),
    ("X-Accel-Buffering", "no"),
    ("Transfer-Encoding", "chunked"),
    ("Connection", "close"),
];

/// An empty line, as one chunk.
pub const HEARTBEAT: &[u8] = b"1\r\n\n\r\n";

/// The terminating chunk.
pub const END: &[u8] = b"0\r\n\r\n";

/// Frames what `line` writes (one JSON object, no line break) as one chunk holding the
/// object and a newline.
fn chunk(out: &mut Vec<u8>, line: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    line(out);
    out.push(b'\n');
    let len = out.len() - start;
    // The size line, in hex, without allocating: at most 16 digits and CRLF.
    let mut size = [0u8; 18];
    let digits = (len.max(1).ilog2() / 4 + 1) as usize;
    for (i, d) in size[..digits].iter_mut().enumerate() {
        *d = b"0123456789abcdef"[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    size[digits..digits + 2].copy_from_slice(b"\r\n");
    out.splice(start..start, size[..digits + 2].iter().copied());
    out.extend_from_slice(b"\r\n");
}

pub fn message(out: &mut Vec<u8>, ev: &Event<'_>) {
    chunk(out, |o| json::message(o, ev));
}

pub fn lost(out: &mut Vec<u8>, next_id: u64) {
    chunk(out, |o| json::lost(o, next_id));
}

/// The last lines of a stream whose channel was deleted.
pub fn deleted(out: &mut Vec<u8>, channel: &str) {
    chunk(out, |o| json::deleted(o, channel));
    out.extend_from_slice(END);
}

/// The last lines of a stream whose token expired.
pub fn expired(out: &mut Vec<u8>) {
    chunk(out, |o| o.extend_from_slice(json::EXPIRED));
    out.extend_from_slice(END);
}

/// The last lines of a stream the server ends because it is shutting down.
pub fn shutdown(out: &mut Vec<u8>) {
    chunk(out, |o| o.extend_from_slice(json::SHUTDOWN));
    out.extend_from_slice(END);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::chunked::ChunkedDecoder;

    /// Decodes a chunked body with the server's own request-body decoder: the body,
    /// and whether it ended exactly at the end of `body`.
    fn dechunk(body: &[u8]) -> (Vec<u8>, bool) {
        let mut d = ChunkedDecoder::new();
        let mut out = vec![];
        let used = d.decode(body, &mut out, u64::MAX).unwrap();
        (out, d.is_done() && used == body.len())
    }

    #[test]
    fn chunk_sizes_are_hex_without_leading_zeros() {
        for len in [1usize, 15, 16, 255, 256, 4095, 70_000] {
            let mut out = vec![];
            chunk(&mut out, |o| o.resize(len - 1, b'x'));
            let head = format!("{len:x}\r\n");
            assert!(out.starts_with(head.as_bytes()), "{len}: {:?}", &out[..8]);
            assert_eq!(out.len(), head.len() + len + 2);
        }
    }

    #[test]
    fn lines_are_chunks_and_endings_terminate_the_body() {
        let mut out = vec![];
        message(
            &mut out,
            &Event {
                id: 5,
                channel: "c",
                payload: "é\n".as_bytes(),
            },
        );
        out.extend_from_slice(HEARTBEAT);
        lost(&mut out, 9);
        deleted(&mut out, "c");
        let (body, complete) = dechunk(&out);
        assert!(complete, "ends with the terminating chunk");
        let text = String::from_utf8(body).unwrap();
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), 4, "{text:?}");
        assert_eq!(lines[1], "", "the heartbeat is an empty line");
        for l in [lines[0], lines[2], lines[3]] {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["data"], "é\n");
    }
}
