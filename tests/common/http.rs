//! A raw HTTP/1.1 client over `std::net::TcpStream`: request bytes, a connection with
//! its read buffer (pipelined responses are kept apart) and response parsing. Every
//! read has a timeout ([`IO_TIMEOUT`] unless a test sets another), so no test can hang.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Default timeout for every connect, read and write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of a header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether a comma-separated header contains `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The response says the server closes the connection after it.
    pub fn closes(&self) -> bool {
        self.has_token("connection", "close")
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body_str()))
    }

    /// `Message-Id`, asserted present.
    pub fn message_id(&self) -> String {
        self.header("message-id")
            .unwrap_or_else(|| panic!("no Message-Id in {self:?}"))
            .to_string()
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad Content-Length {v:?}"))
        })
    }

    /// Short one-line description for assertion messages.
    pub fn brief(&self) -> String {
        let mut body = self.body_str();
        body.truncate(200);
        format!(
            "{} {} {:?} headers {:?} body {:?}",
            self.version, self.status, self.reason, self.headers, body
        )
    }
}

pub(super) fn io_err(kind: io::ErrorKind, msg: impl Into<String>) -> io::Error {
    io::Error::new(kind, msg.into())
}

pub(super) fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

pub(super) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Builds a request: request line, `Host`, the given headers, and `Content-Length` when
/// there is a body and the headers give neither a length nor a transfer coding.
pub fn request_bytes(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n").into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    let framed = headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    });
    if let Some(body) = body {
        if !framed {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
    out
}

/// A client connection with a read buffer (so pipelined responses are kept apart).
pub struct Conn {
    pub stream: TcpStream,
    /// Bytes received and not yet parsed.
    pub(super) buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Conn::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Conn {
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).expect("timeout");
    }

    /// Writes all bytes; errors are returned (a server may close early, e.g. after 413).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).expect("write request");
    }

    pub fn send_request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) {
        self.send(&request_bytes(method, target, headers, body));
    }

    /// Sends a request and reads its final response (panics on I/O errors).
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        self.send_request(method, target, headers, body);
        self.response()
    }

    pub fn get(&mut self, target: &str) -> Response {
        self.request("GET", target, &[], None)
    }

    /// Reads the next final response, skipping 1xx interim responses.
    pub fn response(&mut self) -> Response {
        self.read_response()
            .unwrap_or_else(|e| panic!("reading response: {e}"))
    }

    /// Reads the next final response, skipping 1xx interim responses.
    pub fn read_response(&mut self) -> io::Result<Response> {
        loop {
            let r = self.read_any_response()?;
            if !(100..200).contains(&r.status) || r.status == 101 {
                return Ok(r);
            }
        }
    }

    /// Reads one more byte chunk into the buffer; Ok(0) at end of stream (a reset after
    /// the peer closed counts as end of stream).
    pub(super) fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_reset(&e) => return Ok(0),
                Err(e) if is_timeout(&e) => {
                    return Err(io_err(
                        io::ErrorKind::TimedOut,
                        format!(
                            "read timed out; {} unparsed bytes buffered: {:?}",
                            self.buf.len(),
                            String::from_utf8_lossy(&self.buf[..self.buf.len().min(300)])
                        ),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads exactly one response, interim (1xx) or final.
    pub fn read_any_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.fill()? == 0 {
                return Err(io_err(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec())
            .map_err(|_| io_err(io::ErrorKind::InvalidData, "response head is not UTF-8"))?;
        self.buf.drain(..head_end + 4);
        let (version, status, reason, headers) = parse_response_head(&head)?;
        let mut resp = Response {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(resp);
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            resp.body = self.read_chunked()?;
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.trim().parse().map_err(|_| {
                io_err(
                    io::ErrorKind::InvalidData,
                    format!("bad Content-Length {len:?}"),
                )
            })?;
            while self.buf.len() < len {
                if self.fill()? == 0 {
                    return Err(io_err(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "closed after {} of {len} body bytes; head {:?}",
                            self.buf.len(),
                            resp.headers
                        ),
                    ));
                }
            }
            resp.body = self.buf.drain(..len).collect();
        } else {
            // Body delimited by close.
            loop {
                match self.fill() {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        return Err(io_err(
                            e.kind(),
                            format!(
                                "response {status} has neither Content-Length nor chunked \
                                 framing and the connection stayed open: {e}"
                            ),
                        ))
                    }
                }
            }
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io_err(
                    io::ErrorKind::UnexpectedEof,
                    "closed inside chunked body",
                ));
            }
        }
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| {
                io_err(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if size == 0 {
                // Trailers until an empty line.
                while !self.read_line()?.is_empty() {}
                return Ok(body);
            }
            while self.buf.len() < size + 2 {
                if self.fill()? == 0 {
                    return Err(io_err(io::ErrorKind::UnexpectedEof, "closed inside chunk"));
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Waits up to `within` for the server to close the connection (EOF or reset).
    /// Ok(bytes received before the close) or Err(description) if it stayed open.
    pub fn wait_closed(&mut self, within: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + within;
        let mut got = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "connection still open after {within:?}; received {:?}",
                    String::from_utf8_lossy(&got)
                ));
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_reset(&e) => return Ok(got),
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(format!("read error while waiting for close: {e}")),
            }
        }
    }

    /// Asserts the server closes the connection within `within` without sending more.
    pub fn assert_closed(&mut self, within: Duration) {
        match self.wait_closed(within) {
            Ok(extra) => assert!(
                extra.is_empty(),
                "expected close, got more bytes first: {:?}",
                String::from_utf8_lossy(&extra)
            ),
            Err(e) => panic!("{e}"),
        }
    }

    /// True if nothing at all arrives (and the connection stays open) for `dur`.
    pub fn quiet_for(&mut self, dur: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.stream.set_read_timeout(Some(dur)).expect("timeout");
        let mut chunk = [0u8; 1024];
        let quiet = match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Err(e) => is_timeout(&e),
        };
        self.stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("timeout");
        quiet
    }
}

/// After `resp` on `conn`: if the response announced `Connection: close`, the server must
/// close; otherwise the connection must still serve a request (`GET /health`, which both
/// listeners have).
pub fn assert_close_is_consistent(conn: &mut Conn, resp: &Response) {
    if resp.closes() {
        conn.assert_closed(Duration::from_secs(5));
    } else {
        let r = conn
            .try_send(&request_bytes("GET", "/health", &[], None))
            .and_then(|_| conn.read_response());
        match r {
            Ok(h) => assert_eq!(
                h.status,
                200,
                "connection kept after {} but next request failed: {}",
                resp.status,
                h.brief()
            ),
            Err(e) => panic!(
                "response {} had no `Connection: close` but the connection is unusable: {e}",
                resp.brief()
            ),
        }
    }
}

/// Splits a response head (without the blank line) into version, status, reason and
/// headers; shared by the plain and the SSE client.
#[allow(clippy::type_complexity)]
pub(super) fn parse_response_head(
    head: &str,
) -> io::Result<(String, u16, String, Vec<(String, String)>)> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_string();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| {
            io_err(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines {
        let (n, v) = line.split_once(':').ok_or_else(|| {
            io_err(
                io::ErrorKind::InvalidData,
                format!("bad header line {line:?}"),
            )
        })?;
        headers.push((n.to_string(), v.trim().to_string()));
    }
    Ok((version, status, reason, headers))
}
