//! Server-Sent Events (the `text/event-stream` format): the one [`Framing`] variant
//! today. Rendered once per message and shared by every stream that receives it.
//!
//! A message becomes `id: ID\n`, `event: CHANNEL\n` (only for streams subscribed to more
//! than one channel), one `data: LINE\n` per payload line (lines split on `\r\n`, `\r` or
//! `\n`, as EventSource splits them), and a blank line. A payload that is not UTF-8
//! cannot be carried in `data:` lines, so it is sent as `event: binary` with the payload
//! base64-encoded (standard alphabet, padded) in one `data:` line. Gaps, deletion,
//! token expiry and heartbeats have their own small frames below. The body is
//! close-delimited: the stream ends when the connection does, which every HTTP/1.x client and proxy
//! understands, so a shutdown sends nothing and EventSource reconnects after `retry:`.
//!
//! [`Framing`]: super::Framing

use std::io::Write;

use base64::Engine;

use super::Event;

/// The stream's response headers (besides `Date`).
pub const HEADERS: &[(&str, &str)] = &[
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-store"),
    ("X-Accel-Buffering", "no"),
    ("Connection", "close"),
];
/// First bytes of every stream: how long EventSource waits before reconnecting.
pub const PREAMBLE: &[u8] = b"retry: 2000\n\n";
/// Comment line that keeps proxies from timing out an idle stream.
pub const HEARTBEAT: &[u8] = b": hb\n";

/// Renders `ev` as one event; `named` adds the `event:` line with the channel.
pub fn event(out: &mut Vec<u8>, ev: &Event<'_>, named: bool) {
    let _ = writeln!(out, "id: {}", ev.id);
    match std::str::from_utf8(ev.payload) {
        Ok(text) => {
            if named {
                let _ = writeln!(out, "event: {}", ev.channel);
            }
            for line in lines(text) {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        Err(_) => {
            out.extend_from_slice(b"event: binary\ndata: ");
            let start = out.len();
            let enc = base64::engine::general_purpose::STANDARD;
            out.resize(
                start + base64::encoded_len(ev.payload.len(), true).unwrap_or(0),
                0,
            );
            let n = enc.encode_slice(ev.payload, &mut out[start..]).unwrap_or(0);
            out.truncate(start + n);
            out.push(b'\n');
        }
    }
    out.push(b'\n');
}

/// The frame sent before the first message after a gap: delivery resumes at `next_id`.
pub fn lost(out: &mut Vec<u8>, next_id: u64) {
    let _ = write!(out, "event: lost\ndata: {next_id}\n\n");
}

/// The last frame of a stream whose channel was deleted.
pub fn deleted(out: &mut Vec<u8>, channel: &str) {
    let _ = write!(out, "event: deleted\ndata: {channel}\n\n");
}

/// The last frame of a stream whose subscriber token expired.
pub fn expired(out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: expired\ndata: token expired\n\n");
}

/// Splits on `\r\n`, `\r` or `\n`; an empty payload is one empty line.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let table: &[(&[u8], bool, &str)] = &[
            (b"hello", false, "id: 42\ndata: hello\n\n"),
            (b"hello", true, "id: 42\nevent: news\ndata: hello\n\n"),
            (
                b"a\nb\r\nc\rd",
                false,
                "id: 42\ndata: a\ndata: b\ndata: c\ndata: d\n\n",
            ),
            (b"", false, "id: 42\ndata: \n\n"),
            (b"end\n", false, "id: 42\ndata: end\ndata: \n\n"),
            (
                b"\xff\x00ab",
                true,
                "id: 42\nevent: binary\ndata: /wBhYg==\n\n",
            ),
        ];
        for (payload, named, want) in table {
            let mut out = vec![];
            let ev = Event {
                id: 42,
                channel: "news",
                payload,
            };
            event(&mut out, &ev, *named);
            assert_eq!(String::from_utf8(out).unwrap(), *want, "{payload:?}");
        }
        let mut out = vec![];
        lost(&mut out, 7);
        deleted(&mut out, "news");
        assert_eq!(
            out,
            b"event: lost\ndata: 7\n\nevent: deleted\ndata: news\n\n"
        );
    }
}
