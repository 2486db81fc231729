//! A raw WebSocket client (RFC 6455) written for the tests, over the raw HTTP client's
//! `Conn`: the upgrade request and its `Sec-WebSocket-Accept` (SHA-1 computed here, not
//! by the crate the server uses), masked client frames (well-formed or deliberately
//! broken), and a strict reader of server frames. Every read is bounded by a deadline.
//!
//! Also what both JSON-envelope transports share in the tests (tests/websocket.rs,
//! tests/ndjson.rs): the envelope objects of `docs/protocol.md`, a strict reader of
//! newline-delimited JSON streams (the chunked framing parsed properly, lines split
//! wherever chunks end), and publishing thousands of messages pipelined on one
//! keep-alive admin connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::http::{
    find, io_err, is_timeout, parse_response_head, request_bytes, Conn, Response, IO_TIMEOUT,
};
use super::protocol::publish_id;

/// RFC 6455 §1.3: the example key and the accept value it must get.
pub const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// RFC 6455 §1.3: appended to the key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// SHA-1 (FIPS 180-4), written here so the test's accept value does not come from the
/// same code as the server's.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6u32),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hv, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hv = hv.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (o, v) in out.chunks_mut(4).zip(h) {
        o.copy_from_slice(&v.to_be_bytes());
    }
    out
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with.
pub fn accept_for(key: &str) -> String {
    b64(&sha1(format!("{key}{GUID}").as_bytes()))
}

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b
}

/// A fresh key: base64 of 16 random bytes, as a browser makes one.
pub fn random_key() -> String {
    b64(&random_bytes(16))
}

/// The upgrade request for `path` with `key`, plus `headers` (after the upgrade ones).
pub fn upgrade_request(path: &str, key: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut all = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ];
    all.extend_from_slice(headers);
    request_bytes("GET", path, &all, None)
}

/// The head of a client frame: `b0` (FIN, RSV and opcode bits as given), the length
/// `len` in its shortest encoding, and the mask key if any. The payload is not included.
pub fn frame_head(b0: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
    let m = if mask.is_some() { 0x80 } else { 0 };
    let mut v = vec![b0];
    if len < 126 {
        v.push(m | len as u8);
    } else if len <= 0xFFFF {
        v.push(m | 126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(m | 127);
        v.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(k) = mask {
        v.extend_from_slice(&k);
    }
    v
}

/// A whole client frame: head, then the payload masked with `mask` (sent as is when
/// `mask` is None: an unmasked frame, which a server must refuse).
pub fn client_frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut v = frame_head(b0, payload.len() as u64, mask);
    match mask {
        Some(k) => v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4])),
        None => v.extend_from_slice(payload),
    }
    v
}

/// A well-formed client frame (FIN set, masked with a random key).
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let k = random_bytes(4);
    client_frame(0x80 | opcode, payload, Some([k[0], k[1], k[2], k[3]]))
}

/// A close frame's payload: the code, then the reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// One frame the server sent, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// The three reserved bits (must be 0: no extension was negotiated).
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A close frame's code (None for another frame, or a close without a code).
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// A short description for assertion messages.
    pub fn brief(&self) -> String {
        let mut p = String::from_utf8_lossy(&self.payload).into_owned();
        if p.len() > 200 {
            let mut cut = 200;
            while !p.is_char_boundary(cut) {
                cut -= 1;
            }
            p.truncate(cut);
            p.push_str(&format!("... ({} bytes)", self.payload.len()));
        }
        format!(
            "frame fin={} rsv={} opcode={:#x} masked={} payload {p:?}",
            self.fin, self.rsv, self.opcode, self.masked
        )
    }

    /// Asserts a server data frame as the protocol sends every message and signal: one
    /// unfragmented, unmasked text frame holding one JSON object with no raw line
    /// break. Returns the object.
    pub fn object(&self) -> Value {
        assert!(
            self.fin && self.rsv == 0 && !self.masked && self.opcode == TEXT,
            "expected one unmasked final text frame: {}",
            self.brief()
        );
        let text = std::str::from_utf8(&self.payload)
            .unwrap_or_else(|_| panic!("a text frame that is not UTF-8: {}", self.brief()));
        assert!(
            !text.contains('\n') && !text.contains('\r'),
            "a raw line break in an object: {text:?}"
        );
        let v: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("text frame is not JSON ({e}): {text:?}"));
        assert!(v.is_object(), "not a JSON object: {text:?}");
        v
    }
}

/// Parses one server frame at the start of `buf`: Ok(None) if incomplete.
fn parse_frame(buf: &[u8]) -> io::Result<Option<(Frame, usize)>> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let (len, mut at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (
                u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
                10,
            ),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > 64 * 1024 * 1024 {
        return Err(io_err(
            io::ErrorKind::InvalidData,
            format!("a server frame announcing {len} bytes"),
        ));
    }
    let masked = b1 & 0x80 != 0;
    let mask = if masked {
        let Some(k) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };
    let len = len as usize;
    let Some(raw) = buf.get(at..at + len) else {
        return Ok(None);
    };
    let payload = match mask {
        Some(k) => raw.iter().enumerate().map(|(i, b)| b ^ k[i % 4]).collect(),
        None => raw.to_vec(),
    };
    let frame = Frame {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0F,
        masked,
        payload,
    };
    Ok(Some((frame, at + len)))
}

/// How a read of frames ended when it did not yield a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum NoFrame {
    /// The deadline passed with the connection open.
    Timeout,
    /// The server closed the connection (FIN or reset); `partial` bytes of an
    /// unfinished frame were left.
    Closed { partial: usize },
}

/// One open WebSocket: the connection after a `101`.
pub struct Ws {
    pub conn: Conn,
    /// The `101` response.
    pub head: Response,
    /// Pings received while [`Ws::object`] and friends skipped them: arrival time and
    /// payload.
    pub pings: Vec<(Instant, Vec<u8>)>,
}

impl Ws {
    /// Connects to `addr`, upgrades `path` with a random key plus `headers`, and
    /// asserts the `101` (status, `Upgrade`, `Connection`, the accept value).
    pub fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Ws {
        Ws::upgrade(Conn::open(addr), path, headers)
    }

    /// Like [`Ws::connect`] on an already connected socket.
    pub fn upgrade(conn: Conn, path: &str, headers: &[(&str, &str)]) -> Ws {
        let key = random_key();
        match Ws::try_upgrade(conn, path, &key, headers) {
            Ok(ws) => ws,
            Err(r) => panic!("upgrade of {path} refused: {}", r.brief()),
        }
    }

    /// Sends the upgrade and reads the answer: Ok if it is a `101` (asserted to be a
    /// correct one for `key`), else Err(the response).
    pub fn try_upgrade(
        mut conn: Conn,
        path: &str,
        key: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, Response> {
        conn.send(&upgrade_request(path, key, headers));
        let head = conn
            .read_response()
            .unwrap_or_else(|e| panic!("reading the answer to the upgrade of {path}: {e}"));
        if head.status != 101 {
            return Err(head);
        }
        assert_switching(&head, key);
        Ok(Ws {
            conn,
            head,
            pings: Vec::new(),
        })
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.conn.send(bytes);
    }

    /// Writes `bytes`, tolerating a server that has already closed.
    pub fn send_lenient(&mut self, bytes: &[u8]) {
        let _ = self.conn.try_send(bytes);
    }

    /// Reads the next frame, waiting until `deadline`.
    pub fn poll_frame(&mut self, deadline: Instant) -> Result<Frame, NoFrame> {
        loop {
            match parse_frame(&self.conn.buf) {
                Ok(Some((f, used))) => {
                    self.conn.buf.drain(..used);
                    return Ok(f);
                }
                Ok(None) => {}
                Err(e) => panic!("{e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NoFrame::Timeout);
            }
            self.conn
                .set_read_timeout(left.max(Duration::from_millis(1)));
            match self.conn.fill() {
                Ok(0) => {
                    return Err(NoFrame::Closed {
                        partial: self.conn.buf.len(),
                    })
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut || is_timeout(&e) => {
                    return Err(NoFrame::Timeout)
                }
                Err(e) => panic!("reading frames: {e}"),
            }
        }
    }

    /// The next frame within `within`; panics on timeout or close.
    pub fn frame_within(&mut self, within: Duration) -> Frame {
        match self.poll_frame(Instant::now() + within) {
            Ok(f) => f,
            Err(e) => panic!(
                "no frame within {within:?}: {e:?}; unparsed bytes {:?}",
                self.unparsed()
            ),
        }
    }

    pub fn frame(&mut self) -> Frame {
        self.frame_within(IO_TIMEOUT)
    }

    /// The next frame that is not a ping (pings are recorded in `pings`).
    pub fn poll_data(&mut self, deadline: Instant) -> Result<Frame, NoFrame> {
        loop {
            let f = self.poll_frame(deadline)?;
            if f.opcode == PING {
                self.pings.push((Instant::now(), f.payload));
                continue;
            }
            return Ok(f);
        }
    }

    /// The next non-ping frame within `within`; panics on timeout or close.
    pub fn data_within(&mut self, within: Duration) -> Frame {
        match self.poll_data(Instant::now() + within) {
            Ok(f) => f,
            Err(e) => panic!(
                "no frame within {within:?}: {e:?}; unparsed bytes {:?}",
                self.unparsed()
            ),
        }
    }

    /// The next JSON object (skipping pings), within `within`.
    pub fn object_within(&mut self, within: Duration) -> Value {
        self.data_within(within).object()
    }

    /// The next JSON object (skipping pings).
    pub fn object(&mut self) -> Value {
        self.object_within(IO_TIMEOUT)
    }

    /// Asserts nothing but pings arrives, and the connection stays open, for `dur`.
    pub fn quiet_for(&mut self, dur: Duration) {
        match self.poll_data(Instant::now() + dur) {
            Err(NoFrame::Timeout) => {}
            Ok(f) => panic!("expected nothing, got {}", f.brief()),
            Err(e) => panic!("expected an open, quiet socket: {e:?}"),
        }
    }

    /// Asserts the next non-ping frame is a close with `code` (and a UTF-8 reason), as
    /// a server sends it (final, unmasked).
    pub fn expect_close(&mut self, code: u16, within: Duration) {
        let f = self.data_within(within);
        assert!(
            f.opcode == CLOSE && f.fin && !f.masked && f.rsv == 0,
            "expected close {code}, got {}",
            f.brief()
        );
        assert_eq!(f.close_code(), Some(code), "close code of {}", f.brief());
        assert!(
            std::str::from_utf8(&f.payload[2..]).is_ok(),
            "close reason is not UTF-8: {}",
            f.brief()
        );
    }

    /// Waits up to `within` for the server to close the TCP connection, asserting it
    /// sends nothing more (pings aside) before it does.
    pub fn expect_eof(&mut self, within: Duration) {
        match self.poll_data(Instant::now() + within) {
            Err(NoFrame::Closed { partial: 0 }) => {}
            Err(e) => panic!("expected the connection to close within {within:?}: {e:?}"),
            Ok(f) => panic!("expected the connection to close, got {}", f.brief()),
        }
    }

    /// The close handshake after a server's close frame: answers it with `code`, then
    /// expects the connection to close within `within`.
    pub fn answer_close(&mut self, code: u16, within: Duration) {
        self.send_lenient(&masked(CLOSE, &code.to_be_bytes()));
        self.expect_eof(within);
    }

    fn unparsed(&self) -> String {
        let b = &self.conn.buf;
        format!("{:?}", String::from_utf8_lossy(&b[..b.len().min(200)]))
    }
}

/// Asserts `head` is a correct `101` for `key`: `Upgrade: websocket`, `Connection`
/// listing `upgrade`, and the right `Sec-WebSocket-Accept`.
pub fn assert_switching(head: &Response, key: &str) {
    assert_eq!(head.status, 101, "{}", head.brief());
    assert!(
        head.header("upgrade")
            .is_some_and(|u| u.trim().eq_ignore_ascii_case("websocket")),
        "101 without Upgrade: websocket: {}",
        head.brief()
    );
    assert!(
        head.has_token("connection", "upgrade"),
        "101 without Connection: Upgrade: {}",
        head.brief()
    );
    assert_eq!(
        head.header_all("sec-websocket-accept"),
        vec![accept_for(key).as_str()],
        "Sec-WebSocket-Accept for key {key}: {}",
        head.brief()
    );
}

// ---------------------------------------------------------------------------------
// The JSON envelope (docs/protocol.md, "The JSON envelope")
// ---------------------------------------------------------------------------------

/// A message whose payload is UTF-8 text.
pub fn message(id: &str, channel: &str, data: &str) -> Value {
    json!({"id": id, "channel": channel, "data": data})
}

/// A message whose payload is not UTF-8: standard padded base64.
pub fn binary_message(id: &str, channel: &str, payload: &[u8]) -> Value {
    json!({"id": id, "channel": channel, "data": b64(payload), "encoding": "base64"})
}

pub fn lost(next: &str) -> Value {
    json!({"event": "lost", "next": next})
}

pub fn deleted(channel: &str) -> Value {
    json!({"event": "deleted", "channel": channel})
}

pub fn expired() -> Value {
    json!({"event": "expired"})
}

pub fn shutdown() -> Value {
    json!({"event": "shutdown"})
}

/// A message object's id and data (panics on anything else).
pub fn id_and_data(v: &Value) -> (String, String) {
    match (v["id"].as_str(), v["data"].as_str()) {
        (Some(id), Some(d)) if v.get("event").is_none() => (id.to_string(), d.to_string()),
        _ => panic!("expected a message object, got {v}"),
    }
}

// ---------------------------------------------------------------------------------
// Newline-delimited JSON streams (docs/protocol.md, "Newline-delimited JSON streams")
// ---------------------------------------------------------------------------------

/// How reading an ndjson stream ended when it did not yield a line.
#[derive(Debug, PartialEq, Eq)]
pub enum NoLine {
    /// The deadline passed with the stream open.
    Timeout,
    /// The terminating chunk came (after any trailers); `partial` bytes of an
    /// unfinished line were left before it.
    Ended { partial: usize },
    /// The connection closed without the terminating chunk; `partial` bytes of an
    /// unfinished line (or chunk) were left.
    Closed { partial: usize },
}

/// A client reading one ndjson stream: the head, then the chunked body de-chunked
/// strictly (hex size line, data, CRLF; the zero-size chunk and trailers end it) and
/// split into lines wherever they fall across chunks. Every read has a deadline.
pub struct Ndjson {
    pub conn: Conn,
    pub head: Response,
    /// De-chunked body bytes not yet split into lines.
    body: Vec<u8>,
    /// Bytes of the current chunk still to come.
    chunk_left: usize,
    /// A chunk's data has been read; its CRLF is due.
    crlf_due: bool,
    /// The terminating chunk and the trailer section were read.
    pub ended: bool,
    /// Empty lines (heartbeats) skipped by [`Ndjson::object`], with their arrival.
    pub heartbeats: Vec<Instant>,
    /// Chunks seen, for messages.
    pub chunks: usize,
}

impl Ndjson {
    /// `GET path` with `headers` (the caller picks `Accept` or `?stream=ndjson`) on a
    /// fresh connection; returns once the head is read, whatever it says.
    pub fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Ndjson {
        Ndjson::request_on(Conn::open(addr), path, headers)
    }

    pub fn request_on(mut conn: Conn, path: &str, headers: &[(&str, &str)]) -> Ndjson {
        conn.send(&request_bytes("GET", path, headers, None));
        let deadline = Instant::now() + IO_TIMEOUT;
        let head_end = loop {
            if let Some(i) = find(&conn.buf, b"\r\n\r\n") {
                break i;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no response head for {path} within {IO_TIMEOUT:?}"
            );
            conn.set_read_timeout(left);
            match conn.fill() {
                Ok(0) => panic!(
                    "closed before a response head for {path}: {:?}",
                    String::from_utf8_lossy(&conn.buf)
                ),
                Ok(_) => {}
                Err(e) => panic!("reading the head for {path}: {e}"),
            }
        };
        let text = String::from_utf8_lossy(&conn.buf[..head_end]).into_owned();
        conn.buf.drain(..head_end + 4);
        let (version, status, reason, headers) =
            parse_response_head(&text).unwrap_or_else(|e| panic!("head {text:?}: {e}"));
        let head = Response {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        Ndjson {
            conn,
            head,
            body: Vec::new(),
            chunk_left: 0,
            crlf_due: false,
            ended: false,
            heartbeats: Vec::new(),
            chunks: 0,
        }
    }

    /// Opens `path` with `Accept: application/x-ndjson` and asserts the stream's head.
    pub fn open(addr: SocketAddr, path: &str) -> Ndjson {
        let n = Ndjson::request(addr, path, &[("Accept", "application/x-ndjson")]);
        n.assert_stream_head();
        n
    }

    /// Asserts the head of an ndjson stream: `200`, `application/x-ndjson`, chunked.
    pub fn assert_stream_head(&self) {
        let h = &self.head;
        assert_eq!(h.status, 200, "ndjson stream: {}", h.brief());
        assert_eq!(
            h.header("content-type"),
            Some("application/x-ndjson"),
            "{}",
            h.brief()
        );
        assert!(
            h.has_token("transfer-encoding", "chunked"),
            "an ndjson stream is chunked: {}",
            h.brief()
        );
        assert_eq!(h.header("content-length"), None, "{}", h.brief());
    }

    /// De-chunks what has arrived. Err names a framing error.
    fn dechunk(&mut self) -> Result<(), String> {
        let raw = &mut self.conn.buf;
        while !self.ended {
            if self.chunk_left > 0 {
                let take = self.chunk_left.min(raw.len());
                self.body.extend(raw.drain(..take));
                self.chunk_left -= take;
                if self.chunk_left > 0 {
                    return Ok(());
                }
            }
            if self.crlf_due {
                if raw.len() < 2 {
                    return Ok(());
                }
                if &raw[..2] != b"\r\n" {
                    return Err(format!(
                        "chunk data not followed by CRLF: {:?}",
                        String::from_utf8_lossy(&raw[..raw.len().min(40)])
                    ));
                }
                raw.drain(..2);
                self.crlf_due = false;
            }
            let Some(end) = find(raw, b"\r\n") else {
                if raw.len() > 1024 {
                    return Err("a chunk-size line over 1 KiB".into());
                }
                return Ok(());
            };
            let line = String::from_utf8_lossy(&raw[..end]).into_owned();
            let size_text = line.split(';').next().unwrap_or_default();
            if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("bad chunk-size line {line:?}"));
            }
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|e| format!("chunk size {line:?}: {e}"))?;
            if size == 0 {
                // Trailer fields, then the empty line that ends the body.
                let mut at = end + 2;
                loop {
                    let Some(e) = find(&raw[at..], b"\r\n") else {
                        return Ok(()); // wait for the rest of the trailer section
                    };
                    at += e + 2;
                    if e == 0 {
                        break;
                    }
                }
                raw.drain(..at);
                self.ended = true;
                self.chunks += 1;
                return Ok(());
            }
            raw.drain(..end + 2);
            self.chunks += 1;
            self.chunk_left = size;
            self.crlf_due = true;
        }
        Ok(())
    }

    /// The next line (without its `\n`; empty for a heartbeat), waiting until
    /// `deadline`.
    pub fn poll_line(&mut self, deadline: Instant) -> Result<String, NoLine> {
        loop {
            if let Err(e) = self.dechunk() {
                panic!("ndjson stream framing: {e}");
            }
            if let Some(i) = self.body.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.body.drain(..=i).collect();
                let line = String::from_utf8(line[..i].to_vec())
                    .unwrap_or_else(|_| panic!("a line that is not UTF-8: {line:?}"));
                return Ok(line);
            }
            if self.ended {
                return Err(NoLine::Ended {
                    partial: self.body.len(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NoLine::Timeout);
            }
            self.conn
                .set_read_timeout(left.max(Duration::from_millis(1)));
            match self.conn.fill() {
                Ok(0) => {
                    return Err(NoLine::Closed {
                        partial: self.body.len() + self.conn.buf.len(),
                    })
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut || is_timeout(&e) => {
                    return Err(NoLine::Timeout)
                }
                Err(e) => panic!("reading the ndjson stream: {e}"),
            }
        }
    }

    /// The next non-empty line (empty ones are recorded in `heartbeats`).
    pub fn poll_object_line(&mut self, deadline: Instant) -> Result<String, NoLine> {
        loop {
            let l = self.poll_line(deadline)?;
            if l.is_empty() {
                self.heartbeats.push(Instant::now());
                continue;
            }
            return Ok(l);
        }
    }

    /// The next JSON object (skipping heartbeats) within `within`; panics otherwise.
    pub fn object_within(&mut self, within: Duration) -> Value {
        match self.poll_object_line(Instant::now() + within) {
            Ok(l) => {
                let v: Value = serde_json::from_str(&l)
                    .unwrap_or_else(|e| panic!("a line that is not JSON ({e}): {l:?}"));
                assert!(v.is_object(), "a line that is not an object: {l:?}");
                v
            }
            Err(e) => panic!(
                "no line within {within:?}: {e:?}; {} chunks so far, unsplit body {:?}",
                self.chunks,
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            ),
        }
    }

    pub fn object(&mut self) -> Value {
        self.object_within(IO_TIMEOUT)
    }

    /// Asserts no line but heartbeats arrives, and the stream stays open, for `dur`.
    pub fn quiet_for(&mut self, dur: Duration) {
        match self.poll_object_line(Instant::now() + dur) {
            Err(NoLine::Timeout) => {}
            Ok(l) => panic!("expected nothing, got {l:?}"),
            Err(e) => panic!("expected an open, quiet stream: {e:?}"),
        }
    }

    /// Asserts the body ends cleanly next: the terminating chunk, with no unfinished
    /// line before it and no heartbeat or line in between.
    pub fn expect_end(&mut self, within: Duration) {
        match self.poll_line(Instant::now() + within) {
            Err(NoLine::Ended { partial: 0 }) => {}
            Ok(l) => panic!("expected the end of the body, got the line {l:?}"),
            Err(e) => panic!("expected the terminating chunk within {within:?}: {e:?}"),
        }
    }

    /// After the end of the body: the server closes the connection within `within`
    /// without sending anything more.
    pub fn expect_closed(&mut self, within: Duration) {
        let extra = self
            .conn
            .wait_closed(within)
            .unwrap_or_else(|e| panic!("after the end of the body: {e}"));
        assert!(
            extra.is_empty(),
            "bytes after the terminating chunk: {:?}",
            String::from_utf8_lossy(&extra)
        );
    }
}

// ---------------------------------------------------------------------------------
// Bulk publishing
// ---------------------------------------------------------------------------------

/// Publishes `payloads` to `channel` back to back, pipelined on one keep-alive admin
/// connection (a writer thread sends every request while this thread reads the
/// answers), and returns their ids in order. Panics on any answer but `201`.
pub fn publish_pipelined(admin: SocketAddr, channel: &str, payloads: Vec<Vec<u8>>) -> Vec<String> {
    let stream = TcpStream::connect_timeout(&admin, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {admin}: {e}"));
    let mut reader = Conn::from_stream(stream.try_clone().expect("clone the socket"));
    reader.set_read_timeout(Duration::from_secs(30));
    let n = payloads.len();
    let path = format!("/pub/{channel}");
    let writer = thread::spawn(move || {
        let mut w = io::BufWriter::with_capacity(64 * 1024, stream);
        for p in payloads {
            w.write_all(&request_bytes("POST", &path, &[], Some(&p)))
                .expect("write a pipelined publish");
        }
        w.flush().expect("flush the pipelined publishes");
        w.into_inner().map_err(|_| ()).expect("writer")
    });
    let ids = (0..n)
        .map(|i| {
            let r = reader
                .read_response()
                .unwrap_or_else(|e| panic!("answer to pipelined publish {i} of {n}: {e}"));
            publish_id(&r)
        })
        .collect();
    drop(writer.join().expect("publisher thread"));
    ids
}
