//! The little HTTP/1.1 a subscriber needs: rendering subscribe requests, parsing
//! response heads (httparse), splitting an SSE stream into events, and reading the
//! `t=<unix micros>;n=<seq>` payloads the parent publishes. Pure functions over bytes,
//! so the table tests below cover them without sockets.

use std::fmt::Write as _;

use crate::cli::{Mode, Protocol};

/// Largest response head or SSE line accepted before the response counts as bad.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest long-poll body accepted (the payloads here are ~40 bytes).
pub const MAX_BODY: usize = 1 << 20;

/// Where the next long-poll resumes: holdfast's `Message-Id`, or nchan's
/// `Last-Modified` + `Etag` pair. Empty before the first answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub id: Option<String>,
    pub last_modified: Option<String>,
    pub etag: Option<String>,
}

/// Renders a subscribe request into `out` (cleared first).
pub fn subscribe_request(
    out: &mut Vec<u8>,
    mode: Mode,
    protocol: Protocol,
    host: &str,
    channel: &str,
    poll_timeout_secs: u64,
    cursor: &Cursor,
) {
    let mut s = String::with_capacity(160);
    match mode {
        Mode::Sse => {
            let _ = write!(
                s,
                "GET /sub/{channel} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
            );
        }
        Mode::Longpoll => {
            let _ = write!(s, "GET /sub/{channel}?timeout={poll_timeout_secs}");
            if let (Protocol::Holdfast, Some(id)) = (protocol, &cursor.id) {
                let _ = write!(s, "&since={id}");
            }
            let _ = write!(s, " HTTP/1.1\r\nHost: {host}\r\n");
            if protocol == Protocol::Nchan {
                if let Some(lm) = &cursor.last_modified {
                    let _ = write!(s, "If-Modified-Since: {lm}\r\n");
                }
                if let Some(etag) = &cursor.etag {
                    let _ = write!(s, "If-None-Match: {etag}\r\n");
                }
            }
        }
    }
    s.push_str("\r\n");
    out.clear();
    out.extend_from_slice(s.as_bytes());
}

/// The parts of a response head this client acts on, copied out of the buffer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub status: u16,
    pub content_length: Option<usize>,
    pub chunked: bool,
    pub close: bool,
    pub event_stream: bool,
    pub messages_lost: bool,
    pub cursor: Cursor,
}

/// `Ok(None)`: incomplete. `Err`: not a response this client understands.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let mut h = Head {
        len,
        status: r.code.ok_or(())?,
        ..Head::default()
    };
    for hd in r.headers.iter() {
        let v = std::str::from_utf8(hd.value).map_err(|_| ())?.trim();
        let name = hd.name;
        if name.eq_ignore_ascii_case("content-length") {
            h.content_length = Some(v.parse().map_err(|_| ())?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            h.chunked = v.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            h.close = v.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("content-type") {
            h.event_stream = v.to_ascii_lowercase().starts_with("text/event-stream");
        } else if name.eq_ignore_ascii_case("messages-lost") {
            h.messages_lost = v.eq_ignore_ascii_case("true");
        } else if name.eq_ignore_ascii_case("message-id") {
            h.cursor.id = Some(v.to_owned());
        } else if name.eq_ignore_ascii_case("last-modified") {
            h.cursor.last_modified = Some(v.to_owned());
        } else if name.eq_ignore_ascii_case("etag") {
            h.cursor.etag = Some(v.to_owned());
        }
    }
    Ok(Some(h))
}

/// A published payload: `t=<unix micros at send>;n=<seq>`.
pub fn parse_payload(p: &[u8]) -> Option<(u64, u32)> {
    let s = std::str::from_utf8(p).ok()?.trim();
    let (t, n) = s.split_once(';')?;
    Some((
        t.strip_prefix("t=")?.parse().ok()?,
        n.strip_prefix("n=")?.parse().ok()?,
    ))
}

pub fn payload(t_us: u64, seq: u32) -> String {
    format!("t={t_us};n={seq}")
}

/// One complete SSE event.
#[derive(Debug, PartialEq, Eq)]
pub enum SseEvent {
    /// A message (no `event:` field, `message`, or a channel name), with the `id:`
    /// field of this event if it had one (the SSE "last event ID" carried over from
    /// an earlier event does not count: both servers put an id on every message).
    Message { id: Option<String>, data: Vec<u8> },
    /// holdfast's gap notice.
    Lost,
    /// The channel was deleted; the stream ends.
    Deleted,
    /// A payload holdfast had to base64 (not UTF-8): never one of ours.
    Binary,
}

/// Accumulates the fields of the event being read.
#[derive(Debug, Default)]
pub struct SseParser {
    event: Option<String>,
    id: Option<String>,
    data: Vec<u8>,
    has_data: bool,
}

impl SseParser {
    /// Consumes every complete line of `buf`, calling `on_event` per event, and
    /// returns the bytes consumed (a partial last line stays in the buffer).
    pub fn feed(&mut self, buf: &[u8], mut on_event: impl FnMut(SseEvent)) -> usize {
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let mut line = &buf[start..start + nl];
            start += nl + 1;
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            if line.is_empty() {
                if let Some(ev) = self.dispatch() {
                    on_event(ev);
                }
                continue;
            }
            if line[0] == b':' {
                continue; // comment (heartbeat)
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"data" => {
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                    self.has_data = true;
                }
                b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
                b"id" => self.id = Some(String::from_utf8_lossy(value).into_owned()),
                _ => {} // retry, unknown fields
            }
        }
        start
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        let id = self.id.take();
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        let data = std::mem::take(&mut self.data);
        Some(match event.as_deref() {
            Some("lost") => SseEvent::Lost,
            Some("deleted") => SseEvent::Deleted,
            Some("binary") => SseEvent::Binary,
            _ => SseEvent::Message { id, data },
        })
    }
}

/// An SSE event id in a form that orders: `(major, minor)`, compared as a pair.
///
/// - holdfast (both servers of this repository): a decimal `u64`, strictly increasing
///   across the server (`docs/protocol.md`), so `(id, 0)`.
/// - nchan: `TIME:TAG`, the publish time in seconds and a counter within that second
///   (`1795299650:0`, `1795299650:1`, `1795299651:0`), so `(TIME, TAG)`. nchan does not
///   promise more than "an id to resume from"; ordering by the pair is what its ids do
///   for one channel on one server, checked against libnginx-mod-nchan 1.3.6. Multi-channel
///   forms (`TIME:[TAG,TAG]`) are not used by this tool and do not parse.
///
/// `None`: not an id of that dialect.
pub fn parse_event_id(protocol: Protocol, id: &str) -> Option<(u64, u64)> {
    let digits = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match protocol {
        Protocol::Holdfast => Some((digits(id)?, 0)),
        Protocol::Nchan => {
            let (time, tag) = id.split_once(':')?;
            Some((digits(time)?, digits(tag)?))
        }
    }
}

/// Incremental decoder for a `Transfer-Encoding: chunked` SSE body. holdfast's SSE
/// bodies are close-delimited, and so are nchan 1.3.6's (checked: no
/// `Transfer-Encoding` on its EventSource responses); this is for a server or proxy
/// that chunks.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a size line.
    #[default]
    Size,
    /// Inside a chunk with this many bytes left.
    Data(usize),
    /// Expecting the CRLF that ends a chunk.
    DataEnd,
    /// The zero-size last chunk arrived: the body is over.
    Done,
}

impl Chunked {
    /// Appends the decoded bytes of `input` to `out`; returns how many input bytes
    /// were consumed (an incomplete size line or chunk end stays for the next call).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ()> {
        let mut i = 0;
        loop {
            let rest = &input[i..];
            match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Size => {
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        return if rest.len() > 1024 { Err(()) } else { Ok(i) };
                    };
                    let line = std::str::from_utf8(&rest[..nl]).map_err(|_| ())?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16).map_err(|_| ())?;
                    i += nl + 1;
                    self.state = if size == 0 {
                        ChunkState::Done
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(n) => {
                    let take = n.min(rest.len());
                    out.extend_from_slice(&rest[..take]);
                    i += take;
                    if take < n {
                        self.state = ChunkState::Data(n - take);
                        return Ok(i);
                    }
                    self.state = ChunkState::DataEnd;
                }
                ChunkState::DataEnd => match rest {
                    [b'\n', ..] => {
                        i += 1;
                        self.state = ChunkState::Size;
                    }
                    [b'\r', b'\n', ..] => {
                        i += 2;
                        self.state = ChunkState::Size;
                    }
                    [] | [b'\r'] => return Ok(i),
                    _ => return Err(()),
                },
            }
        }
    }

    /// The last chunk has been read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_cursor_the_protocol_uses() {
        let cur = Cursor {
            id: Some("42".into()),
            last_modified: Some("Thu, 01 Jan 1970 00:00:01 GMT".into()),
            etag: Some("0".into()),
        };
        let cases: &[(Mode, Protocol, &Cursor, &str)] = &[
            (
                Mode::Longpoll,
                Protocol::Holdfast,
                &Cursor::default(),
                "GET /sub/c?timeout=9 HTTP/1.1\r\nHost: h:1\r\n\r\n",
            ),
            (
                Mode::Longpoll,
                Protocol::Holdfast,
                &cur,
                "GET /sub/c?timeout=9&since=42 HTTP/1.1\r\nHost: h:1\r\n\r\n",
            ),
            (
                Mode::Longpoll,
                Protocol::Nchan,
                &cur,
                "GET /sub/c?timeout=9 HTTP/1.1\r\nHost: h:1\r\n\
                 If-Modified-Since: Thu, 01 Jan 1970 00:00:01 GMT\r\nIf-None-Match: 0\r\n\r\n",
            ),
            (
                Mode::Sse,
                Protocol::Holdfast,
                &cur,
                "GET /sub/c HTTP/1.1\r\nHost: h:1\r\nAccept: text/event-stream\r\n\r\n",
            ),
        ];
        let mut out = b"stale".to_vec();
        for (mode, proto, cursor, want) in cases {
            subscribe_request(&mut out, *mode, *proto, "h:1", "c", 9, cursor);
            assert_eq!(std::str::from_utf8(&out).unwrap(), *want);
        }
    }

    #[test]
    fn heads_are_parsed_and_every_prefix_is_incomplete() {
        let raw = b"HTTP/1.1 200 OK\r\nMessage-Id: 77\r\nmessages-lost: true\r\n\
                    Content-Length: 3\r\nEtag: \"e\"\r\nLast-Modified: x\r\n\r\nabc";
        let h = parse_head(raw).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.content_length, Some(3));
        assert_eq!(h.len, raw.len() - 3);
        assert!(h.messages_lost && !h.close && !h.chunked);
        assert_eq!(h.cursor.id.as_deref(), Some("77"));
        assert_eq!(h.cursor.etag.as_deref(), Some("\"e\""));
        assert_eq!(h.cursor.last_modified.as_deref(), Some("x"));
        for i in 0..h.len {
            assert_eq!(parse_head(&raw[..i]), Ok(None), "prefix {i}");
        }
    }

    #[test]
    fn bad_heads_are_errors() {
        for raw in [
            &b"HTTP/1.1 2x0 OK\r\n\r\n"[..],
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        ] {
            assert_eq!(
                parse_head(raw),
                Err(()),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(parse_head(&vec![b'a'; MAX_HEAD + 1]), Err(()));
    }

    #[test]
    fn payloads() {
        assert_eq!(parse_payload(payload(123, 4).as_bytes()), Some((123, 4)));
        for bad in [
            &b""[..],
            b"t=1",
            b"n=1;t=2",
            b"t=x;n=1",
            b"t=1;n=-1",
            b"\xff",
        ] {
            assert_eq!(parse_payload(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sse_events_split_across_reads() {
        let stream = b"retry: 2000\n\n: hb\r\nid: 5\r\ndata: t=1;n=1\r\n\r\n\
                       event: news\ndata: a\ndata: b\n\nevent: lost\ndata: 9\n\n\
                       event: binary\ndata: AAE=\n\nevent: deleted\ndata: c\n\n";
        let want = vec![
            SseEvent::Message {
                id: Some("5".into()),
                data: b"t=1;n=1".to_vec(),
            },
            SseEvent::Message {
                id: None,
                data: b"a\nb".to_vec(),
            },
            SseEvent::Lost,
            SseEvent::Binary,
            SseEvent::Deleted,
        ];
        for chunk in [1, 2, 7, stream.len()] {
            let mut p = SseParser::default();
            let mut got = Vec::new();
            let mut buf = Vec::new();
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                let used = p.feed(&buf, |e| got.push(e));
                buf.drain(..used);
            }
            assert!(buf.is_empty());
            assert_eq!(got, want, "chunk size {chunk}");
        }
    }

    #[test]
    fn an_id_belongs_to_its_own_event_only() {
        // nchan's framing: a comment first, then `id:` before `data:`.
        let stream = b": hi\n\nid: 1795299650:0\ndata: t=1;n=1\n\nid: 7\n\ndata: x\n\n";
        let mut p = SseParser::default();
        let mut got = Vec::new();
        assert_eq!(p.feed(stream, |e| got.push(e)), stream.len());
        assert_eq!(
            got,
            vec![
                SseEvent::Message {
                    id: Some("1795299650:0".into()),
                    data: b"t=1;n=1".to_vec()
                },
                // The id-only event is not dispatched, and its id does not carry over.
                SseEvent::Message {
                    id: None,
                    data: b"x".to_vec()
                },
            ]
        );
    }

    #[test]
    fn event_ids_of_each_dialect() {
        use Protocol::{Holdfast, Nchan};
        type Case = (Protocol, &'static str, Option<(u64, u64)>);
        let cases: &[Case] = &[
            (
                Holdfast,
                "1795299660917246",
                Some((1_795_299_660_917_246, 0)),
            ),
            (Holdfast, "0", Some((0, 0))),
            (Holdfast, "", None),
            (Holdfast, "+5", None),
            (Holdfast, "12 ", None),
            (Holdfast, "1795299650:0", None),
            (Holdfast, "18446744073709551616", None), // u64::MAX + 1
            (Nchan, "1795299650:0", Some((1_795_299_650, 0))),
            (Nchan, "1795299650:12", Some((1_795_299_650, 12))),
            (Nchan, "1795299650", None),
            (Nchan, "1795299650:[0,1]", None),
            (Nchan, ":0", None),
            (Nchan, "1795299650:-1", None),
        ];
        for &(proto, id, want) in cases {
            assert_eq!(parse_event_id(proto, id), want, "{proto:?} {id:?}");
        }
        // nchan's ids order as pairs: a later second beats a larger tag.
        let a = parse_event_id(Nchan, "1795299650:9").unwrap();
        let b = parse_event_id(Nchan, "1795299651:0").unwrap();
        assert!(a < b);
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let raw = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\nworld!\n0\r\n\r\n";
        for step in 1..=raw.len() {
            let mut d = Chunked::default();
            let (mut buf, mut out) = (Vec::new(), Vec::new());
            for piece in raw.chunks(step) {
                buf.extend_from_slice(piece);
                let used = d.decode(&buf, &mut out).unwrap();
                buf.drain(..used);
            }
            assert_eq!(out, b"hello world!", "step {step}");
            assert!(d.done(), "step {step}");
        }
        for bad in [&b"zz\r\n"[..], b"2\r\nabX"] {
            assert_eq!(Chunked::default().decode(bad, &mut Vec::new()), Err(()));
        }
    }
}
