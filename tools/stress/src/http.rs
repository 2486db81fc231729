//! The little HTTP/1.1 a subscriber needs: rendering subscribe requests, parsing
//! response heads (httparse), splitting an SSE stream into events, reading a
//! WebSocket's server frames and an ndjson body's lines, parsing the JSON envelope
//! both carry, and reading the `t=<unix micros>;n=<seq>` payloads the parent
//! publishes. Pure functions over bytes, so the table tests below cover them without
//! sockets.

use std::fmt::Write as _;

use base64::Engine as _;
use sha1::{Digest, Sha1};

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

/// What one subscribe request says.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub mode: Mode,
    pub protocol: Protocol,
    pub host: &'a str,
    pub channel: &'a str,
    /// `timeout=` of a long-poll, seconds.
    pub poll_timeout_secs: u64,
    /// Where a long-poll resumes.
    pub cursor: &'a Cursor,
    /// WebSocket: the `Sec-WebSocket-Key`, base64 of 16 random bytes ([`ws_key`]).
    pub ws_key: &'a str,
}

/// Renders a subscribe request into `out` (cleared first).
pub fn subscribe_request(out: &mut Vec<u8>, r: &Request<'_>) {
    let (channel, host) = (r.channel, r.host);
    let mut s = String::with_capacity(192);
    match r.mode {
        Mode::Sse => {
            let _ = write!(
                s,
                "GET /sub/{channel} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
            );
        }
        Mode::Ndjson => {
            let _ = write!(
                s,
                "GET /sub/{channel}?stream=ndjson HTTP/1.1\r\nHost: {host}\r\n"
            );
        }
        Mode::Websocket => {
            let _ = write!(
                s,
                "GET /sub/{channel} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
                r.ws_key
            );
        }
        Mode::Longpoll => {
            let _ = write!(s, "GET /sub/{channel}?timeout={}", r.poll_timeout_secs);
            if let (Protocol::Holdfast, Some(id)) = (r.protocol, &r.cursor.id) {
                let _ = write!(s, "&since={id}");
            }
            let _ = write!(s, " HTTP/1.1\r\nHost: {host}\r\n");
            if r.protocol == Protocol::Nchan {
                if let Some(lm) = &r.cursor.last_modified {
                    let _ = write!(s, "If-Modified-Since: {lm}\r\n");
                }
                if let Some(etag) = &r.cursor.etag {
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
    /// `Content-Type: application/x-ndjson`.
    pub ndjson: bool,
    /// `Upgrade: websocket`.
    pub upgrade_websocket: bool,
    /// `Sec-WebSocket-Accept`.
    pub ws_accept: Option<String>,
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
            let v = v.to_ascii_lowercase();
            h.event_stream = v.starts_with("text/event-stream");
            h.ndjson = v.starts_with("application/x-ndjson");
        } else if name.eq_ignore_ascii_case("upgrade") {
            h.upgrade_websocket = v.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            h.ws_accept = Some(v.to_owned());
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

/// RFC 6455 §1.3: what the server appends to the key before hashing it.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A `Sec-WebSocket-Key`: base64 of 16 (random) bytes, 24 characters.
pub fn ws_key(nonce: [u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with: base64(SHA-1(key + GUID)).
pub fn ws_accept(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// One WebSocket message or control frame from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum WsFrame {
    /// A whole text message (its fragments joined).
    Text(Vec<u8>),
    /// A whole binary message: never one of holdfast's, nor nchan's for a `text/plain`
    /// publish.
    Binary(Vec<u8>),
    Ping,
    Pong,
    /// The close frame's status code, if it carried one.
    Close(Option<u16>),
}

/// Reads the frames a server sends (RFC 6455 §5.2): unmasked, any of the three length
/// forms, data messages possibly fragmented (control frames may come between the
/// fragments). Anything else a server may not send is an error: a masked frame,
/// reserved bits, an unknown opcode, a fragmented or over-125-byte control frame, a
/// continuation with nothing to continue, a new data frame inside a fragmented message,
/// or a message longer than [`MAX_BODY`].
#[derive(Debug, Default)]
pub struct WsParser {
    /// A fragmented message under way: its opcode and the bytes so far.
    partial: Option<(u8, Vec<u8>)>,
}

impl WsParser {
    /// Consumes every complete frame of `buf`, calling `on_frame` per whole message or
    /// control frame, and returns the bytes consumed (a partial frame stays in the
    /// buffer). `Err`: the server broke the protocol; the connection is no good.
    pub fn feed(&mut self, buf: &[u8], mut on_frame: impl FnMut(WsFrame)) -> Result<usize, ()> {
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            let [b0, b1, ..] = *rest else {
                return Ok(at);
            };
            let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
            if b0 & 0x70 != 0 || b1 & 0x80 != 0 {
                return Err(()); // reserved bits, or a masked server frame
            }
            let (len, head) = match b1 & 0x7F {
                126 if rest.len() >= 4 => (u64::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
                127 if rest.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&rest[2..10]);
                    (u64::from_be_bytes(n), 10)
                }
                126 | 127 => return Ok(at),
                n => (u64::from(n), 2),
            };
            let control = opcode & 0x8 != 0;
            if control && (!fin || len > 125) {
                return Err(());
            }
            let so_far = match (&self.partial, opcode) {
                (Some((_, p)), 0x0) => p.len() as u64,
                _ => 0,
            };
            if len + so_far > MAX_BODY as u64 {
                return Err(());
            }
            let end = head + len as usize;
            if rest.len() < end {
                return Ok(at);
            }
            let payload = &rest[head..end];
            at += end;
            match opcode {
                0x0 => {
                    let Some((_, p)) = &mut self.partial else {
                        return Err(());
                    };
                    p.extend_from_slice(payload);
                    if fin {
                        if let Some((op, p)) = self.partial.take() {
                            on_frame(data_frame(op, p));
                        }
                    }
                }
                0x1 | 0x2 => {
                    if self.partial.is_some() {
                        return Err(());
                    }
                    if fin {
                        on_frame(data_frame(opcode, payload.to_vec()));
                    } else {
                        self.partial = Some((opcode, payload.to_vec()));
                    }
                }
                0x8 => on_frame(WsFrame::Close(
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                )),
                0x9 => on_frame(WsFrame::Ping),
                0xA => on_frame(WsFrame::Pong),
                _ => return Err(()),
            }
        }
    }
}

fn data_frame(opcode: u8, payload: Vec<u8>) -> WsFrame {
    if opcode == 0x1 {
        WsFrame::Text(payload)
    } else {
        WsFrame::Binary(payload)
    }
}

/// One object of the JSON envelope holdfast's WebSocket and ndjson streams carry
/// (`docs/protocol.md`, "The JSON envelope").
#[derive(Debug, PartialEq, Eq)]
pub enum Envelope {
    /// A message. `id` is `None` when the object has no string `id` (the protocol's ids
    /// are strings); `base64` when the payload came base64-encoded (not UTF-8: never
    /// one of this tool's).
    Message {
        id: Option<String>,
        channel: Option<String>,
        data: String,
        base64: bool,
    },
    Lost,
    Deleted,
    Expired,
    Shutdown,
}

/// Parses one envelope object; `None` when it is not one (not JSON, not an object, no
/// `data` and no known `event`).
pub fn parse_envelope(bytes: &[u8]) -> Option<Envelope> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let o = v.as_object()?;
    let text = |k: &str| o.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    if let Some(event) = o.get("event") {
        return match event.as_str()? {
            "lost" => Some(Envelope::Lost),
            "deleted" => Some(Envelope::Deleted),
            "expired" => Some(Envelope::Expired),
            "shutdown" => Some(Envelope::Shutdown),
            _ => None,
        };
    }
    Some(Envelope::Message {
        id: text("id"),
        channel: text("channel"),
        data: text("data")?,
        base64: o.get("encoding").and_then(|e| e.as_str()) == Some("base64"),
    })
}

/// Splits an ndjson body into lines: calls `on_line` for every complete non-empty line
/// (without its `\n`, and without a `\r` before it) and returns the bytes consumed. An
/// empty line is holdfast's heartbeat and is skipped.
pub fn ndjson_feed(buf: &[u8], mut on_line: impl FnMut(&[u8])) -> usize {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        start += nl + 1;
        if !line.is_empty() {
            on_line(line);
        }
    }
    start
}

/// Incremental decoder for a `Transfer-Encoding: chunked` body: holdfast's ndjson
/// streams, and an SSE body from a server or proxy that chunks (holdfast's SSE bodies
/// are close-delimited, and so are nchan 1.3.6's: no `Transfer-Encoding` on its
/// EventSource responses).
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
            (
                Mode::Ndjson,
                Protocol::Holdfast,
                &cur,
                "GET /sub/c?stream=ndjson HTTP/1.1\r\nHost: h:1\r\n\r\n",
            ),
            (
                Mode::Websocket,
                Protocol::Nchan,
                &cur,
                "GET /sub/c HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            ),
        ];
        let mut out = b"stale".to_vec();
        for &(mode, protocol, cursor, want) in cases {
            let r = Request {
                mode,
                protocol,
                host: "h:1",
                channel: "c",
                poll_timeout_secs: 9,
                cursor,
                ws_key: "dGhlIHNhbXBsZSBub25jZQ==",
            };
            subscribe_request(&mut out, &r);
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
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

    #[test]
    fn websocket_keys_and_accepts() {
        // RFC 6455 §1.3's example: this nonce, this key, this accept.
        let key = ws_key(*b"the sample nonce");
        assert_eq!(key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(ws_accept(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n\
                    Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81";
        let h = parse_head(raw).unwrap().unwrap();
        assert_eq!(h.status, 101);
        assert!(h.upgrade_websocket && !h.ndjson && !h.event_stream);
        assert_eq!(h.ws_accept.as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_eq!(
            h.len,
            raw.len() - 1,
            "the frame byte after the head is not the head's"
        );
        let nd = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
                   Transfer-Encoding: chunked\r\n\r\n";
        let h = parse_head(nd).unwrap().unwrap();
        assert!(h.ndjson && h.chunked && !h.upgrade_websocket);
    }

    /// A server frame: FIN and `opcode`, unmasked, with the shortest length form.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xFFFF => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn websocket_frames_split_across_reads() {
        let long = vec![b'x'; 300]; // the 16-bit length form
        let huge = vec![b'y'; 70_000]; // the 64-bit length form
        let mut stream = Vec::new();
        for f in [
            frame(true, 0x9, b""),
            frame(true, 0x1, br#"{"id":"5","channel":"c","data":"t=1;n=1"}"#),
            frame(false, 0x1, b"t=2;"),
            frame(true, 0x9, b"hb"), // a ping between the fragments
            frame(false, 0x0, b"n="),
            frame(true, 0x0, b"2"),
            frame(true, 0x1, &long),
            frame(true, 0x2, &huge),
            frame(true, 0xA, b""),
            frame(true, 0x8, &1001u16.to_be_bytes()),
            frame(true, 0x8, b""),
        ] {
            stream.extend(f);
        }
        let want = vec![
            WsFrame::Ping,
            WsFrame::Text(br#"{"id":"5","channel":"c","data":"t=1;n=1"}"#.to_vec()),
            WsFrame::Ping,
            WsFrame::Text(b"t=2;n=2".to_vec()),
            WsFrame::Text(long.clone()),
            WsFrame::Binary(huge.clone()),
            WsFrame::Pong,
            WsFrame::Close(Some(1001)),
            WsFrame::Close(None),
        ];
        for chunk in [1, 2, 3, 7, 1000, stream.len()] {
            let mut p = WsParser::default();
            let (mut buf, mut got) = (Vec::new(), Vec::new());
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                let used = p.feed(&buf, |f| got.push(f)).unwrap();
                buf.drain(..used);
            }
            assert!(buf.is_empty(), "chunk {chunk}");
            assert_eq!(got, want, "chunk size {chunk}");
        }
    }

    #[test]
    fn frames_a_server_may_not_send_are_errors() {
        let masked = {
            let mut f = frame(true, 0x1, b"abcd");
            f[1] |= 0x80;
            f
        };
        let mut too_long = vec![0x82, 127];
        too_long.extend_from_slice(&(MAX_BODY as u64 + 1).to_be_bytes());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("masked", masked),
            ("reserved bit", {
                let mut f = frame(true, 0x1, b"a");
                f[0] |= 0x40;
                f
            }),
            ("unknown opcode", frame(true, 0x3, b"")),
            ("fragmented ping", frame(false, 0x9, b"")),
            ("long ping", frame(true, 0x9, &[0; 126])),
            ("lone continuation", frame(true, 0x0, b"x")),
            (
                "data inside a fragmented message",
                [frame(false, 0x1, b"a"), frame(true, 0x1, b"b")].concat(),
            ),
            ("over MAX_BODY", too_long),
        ];
        for (what, bytes) in cases {
            let r = WsParser::default().feed(&bytes, |_| {});
            assert_eq!(r, Err(()), "{what}");
        }
    }

    #[test]
    fn envelopes_of_every_kind() {
        let cases: &[(&str, Option<Envelope>)] = &[
            (
                r#"{"id":"18446744073709551615","channel":"news","data":"t=1;n=2"}"#,
                Some(Envelope::Message {
                    id: Some("18446744073709551615".into()),
                    channel: Some("news".into()),
                    data: "t=1;n=2".into(),
                    base64: false,
                }),
            ),
            (
                r#"{"id":"7","channel":"c","data":"AAH/","encoding":"base64"}"#,
                Some(Envelope::Message {
                    id: Some("7".into()),
                    channel: Some("c".into()),
                    data: "AAH/".into(),
                    base64: true,
                }),
            ),
            // A number is not the protocol's id: the message still reads, without one.
            (
                r#"{"id":7,"channel":"c","data":"x\n\u00e9"}"#,
                Some(Envelope::Message {
                    id: None,
                    channel: Some("c".into()),
                    data: "x\né".into(),
                    base64: false,
                }),
            ),
            (r#"{"event":"lost","next":"9"}"#, Some(Envelope::Lost)),
            (
                r#"{"event":"deleted","channel":"c"}"#,
                Some(Envelope::Deleted),
            ),
            (r#"{"event":"expired"}"#, Some(Envelope::Expired)),
            (r#"{"event":"shutdown"}"#, Some(Envelope::Shutdown)),
            (r#"{"event":"party"}"#, None),
            (r#"{"id":"1","channel":"c"}"#, None),
            ("t=1;n=1", None),
            ("[1,2]", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(&parse_envelope(text.as_bytes()), want, "{text}");
        }
    }

    #[test]
    fn ndjson_lines_skip_heartbeats_and_wait_for_their_newline() {
        // holdfast's chunks: one line each, heartbeats as empty lines.
        let body = b"4\r\n{\"a\"\r\n2\r\n:1\r\n2\r\n}\n\r\n1\r\n\n\r\n3\r\n{}\n\r\n0\r\n\r\n";
        let want: Vec<&[u8]> = vec![b"{\"a\":1}", b"{}"];
        for step in 1..=body.len() {
            let mut d = Chunked::default();
            let (mut raw, mut text) = (Vec::new(), Vec::new());
            let mut got: Vec<Vec<u8>> = Vec::new();
            for piece in body.chunks(step) {
                raw.extend_from_slice(piece);
                let used = d.decode(&raw, &mut text).unwrap();
                raw.drain(..used);
                let used = ndjson_feed(&text, |l| got.push(l.to_vec()));
                text.drain(..used);
            }
            assert!(d.done() && text.is_empty(), "step {step}");
            assert_eq!(got, want, "step {step}");
        }
        let mut got = Vec::new();
        assert_eq!(
            ndjson_feed(b"\r\n{}\r\n{\"x\"", |l| got.push(l.to_vec())),
            6
        );
        assert_eq!(got, vec![b"{}".to_vec()]);
    }
}
