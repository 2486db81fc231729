//! A Server-Sent-Events client on top of [`super::http::Conn`]: the stream request, the
//! head and the `retry:` preamble, then event blocks (parsed into [`SseEvent`]), comment
//! lines with their arrival times, and the end of the stream. A chunked stream (as nginx
//! re-frames it) is de-chunked first. Every read is bounded by a deadline.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::http::{
    find, io_err, is_timeout, parse_response_head, request_bytes, Conn, Response, IO_TIMEOUT,
};

/// `GET path` with `Accept: text/event-stream` plus `headers`.
pub fn sse_request_bytes(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut all = vec![("Accept", "text/event-stream")];
    all.extend_from_slice(headers);
    request_bytes("GET", path, &all, None)
}

/// The text every event stream starts with.
pub const SSE_PREAMBLE: &str = "retry: 2000\n\n";

/// One event block, parsed. `raw` is the block exactly as received (its lines and the
/// blank line ending it), without comment lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub raw: String,
    pub fields: Vec<(String, String)>,
}

impl SseEvent {
    /// Parses a block as returned by [`Sse::next_block`] (`name: value` lines; the one
    /// space after the colon is not part of the value, as EventSource reads it).
    pub fn parse(raw: String) -> SseEvent {
        let fields = raw
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once(':') {
                Some((n, v)) => (n.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect();
        SseEvent { raw, fields }
    }

    /// The last value of field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn id(&self) -> Option<&str> {
        self.field("id")
    }

    pub fn event(&self) -> Option<&str> {
        self.field("event")
    }

    /// The `data:` values in order.
    pub fn data_lines(&self) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n == "data")
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The data as EventSource hands it to the application: lines joined with `\n`.
    pub fn data(&self) -> String {
        self.data_lines().join("\n")
    }
}

/// At most the first 200 bytes of `b`, quoted, and its length if longer.
fn snippet(b: &[u8]) -> String {
    if b.len() <= 200 {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        format!(
            "{:?}... ({} bytes)",
            String::from_utf8_lossy(&b[..200]),
            b.len()
        )
    }
}

/// A client reading one event stream. Every read is bounded by a deadline.
///
/// The server's stream is close-delimited. A proxy in front of it (nginx,
/// tests/nginx.rs) re-frames it for an HTTP/1.1 client as `Transfer-Encoding: chunked`;
/// when the head says so, the body is de-chunked before it is split into blocks (as a
/// browser does), and the zero-size chunk ends the stream as a close would.
pub struct Sse {
    pub conn: Conn,
    /// The response head (its body is empty: the stream body is read block by block).
    pub head: Option<Response>,
    /// Comment lines (e.g. `: hb`) with the time they were parsed, in arrival order.
    pub comments: Vec<(Instant, String)>,
    /// Lines of the block being read.
    partial: String,
    /// Set by [`Sse::read_head`] when the head says `Transfer-Encoding: chunked`.
    chunked: Option<Dechunk>,
}

/// De-chunking state of a chunked stream: `Conn::buf` holds the bytes received, `body`
/// what has been de-chunked and not yet split into lines.
#[derive(Default)]
struct Dechunk {
    body: Vec<u8>,
    /// Bytes of the current chunk still to come.
    chunk_left: usize,
    /// The zero-size chunk was seen: the stream has ended.
    ended: bool,
}

impl Dechunk {
    /// Moves what can be de-chunked from `raw` to `body`.
    fn take_from(&mut self, raw: &mut Vec<u8>) -> io::Result<()> {
        loop {
            if self.ended {
                return Ok(());
            }
            if self.chunk_left > 0 {
                let take = self.chunk_left.min(raw.len());
                self.body.extend(raw.drain(..take));
                self.chunk_left -= take;
                if self.chunk_left > 0 {
                    return Ok(());
                }
                // Then the chunk's own CRLF, which the size line parsing skips.
            }
            // [CRLF] size [; ext] CRLF
            let start = if raw.starts_with(b"\r\n") { 2 } else { 0 };
            let Some(end) = find(&raw[start..], b"\r\n") else {
                return Ok(());
            };
            let line = String::from_utf8_lossy(&raw[start..start + end]).into_owned();
            if line.is_empty() {
                return Ok(()); // only the CRLF so far
            }
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io_err(io::ErrorKind::InvalidData, format!("chunk {line:?}")))?;
            raw.drain(..start + end + 2);
            if size == 0 {
                self.ended = true;
                return Ok(());
            }
            self.chunk_left = size;
        }
    }
}

impl Sse {
    /// Sends the stream request on `conn` without reading anything.
    pub fn begin(mut conn: Conn, path: &str, headers: &[(&str, &str)]) -> Sse {
        conn.send(&sse_request_bytes(path, headers));
        Sse::requested(conn)
    }

    /// A reader for `conn`, on which the stream request ([`sse_request_bytes`]) has
    /// already been sent (e.g. by [`connect_many`]).
    pub fn requested(conn: Conn) -> Sse {
        Sse {
            conn,
            head: None,
            comments: Vec::new(),
            partial: String::new(),
            chunked: None,
        }
    }

    /// Connects, requests `path` as an event stream, and checks the answer is a `200`
    /// `text/event-stream` whose body starts with `retry: 2000` and a blank line.
    pub fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut s = Sse::begin(Conn::open(addr), path, headers);
        s.expect_stream_start(IO_TIMEOUT);
        s
    }

    /// Reads the head and the preamble, asserting both.
    pub fn expect_stream_start(&mut self, within: Duration) {
        let head = self
            .read_head(within)
            .unwrap_or_else(|e| panic!("reading the event-stream head: {e}"));
        assert_eq!(head.status, 200, "event stream: {}", head.brief());
        assert_eq!(
            head.header("content-type"),
            Some("text/event-stream"),
            "{}",
            head.brief()
        );
        let first = self
            .next_block(within)
            .unwrap_or_else(|e| panic!("reading the stream preamble: {e}"));
        assert_eq!(first, SSE_PREAMBLE, "first bytes of the stream body");
    }

    /// Reads the response head (status line and headers) and nothing of the body.
    pub fn read_head(&mut self, within: Duration) -> io::Result<Response> {
        let deadline = Instant::now() + within;
        let head_end = loop {
            if let Some(i) = find(&self.conn.buf, b"\r\n\r\n") {
                break i;
            }
            if self.fill_until(deadline)? == 0 {
                return Err(io_err(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed before a complete response head; got {:?}",
                        String::from_utf8_lossy(&self.conn.buf)
                    ),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.conn.buf[..head_end]).into_owned();
        self.conn.buf.drain(..head_end + 4);
        let (version, status, reason, headers) = parse_response_head(&head)?;
        let resp = Response {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        if resp.has_token("transfer-encoding", "chunked") {
            self.chunked = Some(Dechunk::default());
        }
        self.head = Some(resp.clone());
        Ok(resp)
    }

    /// One read into the buffer, waiting at most until `deadline`. Ok(0) at end of
    /// stream; a `TimedOut` error if the deadline passed.
    fn fill_until(&mut self, deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io_err(io::ErrorKind::TimedOut, "deadline passed"));
        }
        self.conn
            .set_read_timeout(left.max(Duration::from_millis(1)));
        match self.conn.fill() {
            Err(e) if is_timeout(&e) => Err(io_err(io::ErrorKind::TimedOut, "deadline passed")),
            r => r,
        }
    }

    /// The body bytes received and not yet split into lines.
    fn unread(&self) -> &[u8] {
        match &self.chunked {
            Some(d) => &d.body,
            None => &self.conn.buf,
        }
    }

    /// Takes complete lines from the body; returns a block once a blank line ends it.
    /// Comment lines are recorded in `comments` and left out of blocks.
    fn take_block(&mut self) -> io::Result<Option<String>> {
        let body = match &mut self.chunked {
            Some(d) => {
                d.take_from(&mut self.conn.buf)?;
                &mut d.body
            }
            None => &mut self.conn.buf,
        };
        while let Some(i) = body.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&body[..i]).into_owned();
            body.drain(..=i);
            if line.is_empty() {
                let mut block = std::mem::take(&mut self.partial);
                block.push('\n');
                return Ok(Some(block));
            }
            if line.starts_with(':') {
                self.comments.push((Instant::now(), line));
                continue;
            }
            self.partial.push_str(&line);
            self.partial.push('\n');
        }
        Ok(None)
    }

    /// Reads until a block is complete or `deadline` passes (Ok(None)). End of stream
    /// (a close, or a chunked stream's zero-size chunk) is an `UnexpectedEof` error
    /// naming what was left unfinished.
    pub fn poll_block(&mut self, deadline: Instant) -> io::Result<Option<String>> {
        loop {
            if let Some(block) = self.take_block()? {
                return Ok(Some(block));
            }
            let end = if self.chunked.as_ref().is_some_and(|d| d.ended) {
                "stream ended (zero-size chunk)"
            } else {
                match self.fill_until(deadline) {
                    Ok(0) if self.chunked.is_some() => "connection closed inside a chunked body",
                    Ok(0) => "stream closed",
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(None),
                    Err(e) => return Err(e),
                }
            };
            return Err(io_err(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{end}; unfinished block {}, unfinished line {}",
                    snippet(self.partial.as_bytes()),
                    snippet(self.unread())
                ),
            ));
        }
    }

    /// The next block (lines up to and including the blank line that ends it).
    pub fn next_block(&mut self, within: Duration) -> io::Result<String> {
        match self.poll_block(Instant::now() + within)? {
            Some(b) => Ok(b),
            None => Err(io_err(
                io::ErrorKind::TimedOut,
                format!(
                    "no complete event within {within:?}; unfinished block {}, \
                     unfinished line {}",
                    snippet(self.partial.as_bytes()),
                    snippet(self.unread())
                ),
            )),
        }
    }

    pub fn next_event(&mut self, within: Duration) -> io::Result<SseEvent> {
        self.next_block(within).map(SseEvent::parse)
    }

    /// The next block, panicking on timeout or end of stream.
    pub fn block(&mut self) -> String {
        self.next_block(IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("reading an event: {e}"))
    }

    /// The next event, panicking on timeout or end of stream.
    pub fn event(&mut self) -> SseEvent {
        self.event_within(IO_TIMEOUT)
    }

    /// The next event within `within`, panicking on timeout or end of stream.
    pub fn event_within(&mut self, within: Duration) -> SseEvent {
        self.next_event(within)
            .unwrap_or_else(|e| panic!("reading an event: {e}"))
    }

    /// Every block that completes within `dur` (comments are recorded meanwhile).
    pub fn blocks_for(&mut self, dur: Duration) -> io::Result<Vec<String>> {
        let deadline = Instant::now() + dur;
        let mut out = Vec::new();
        while let Some(b) = self.poll_block(deadline)? {
            out.push(b);
        }
        Ok(out)
    }

    /// True if no block completes (and the stream stays open) for `dur`.
    pub fn quiet_for(&mut self, dur: Duration) -> Result<(), String> {
        match self.blocks_for(dur) {
            Ok(b) if b.is_empty() => Ok(()),
            Ok(b) => Err(format!("unexpected events: {b:?}")),
            Err(e) => Err(format!("stream failed: {e}")),
        }
    }

    /// Waits up to `within` for the stream to end properly, skipping any events: the
    /// zero-size chunk of a chunked stream, the close of a close-delimited one. Err says
    /// what happened instead (still open, closed inside a chunk, a framing error).
    pub fn wait_end(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            match self.poll_block(deadline) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(format!("still open after {within:?}")),
                Err(e)
                    if e.kind() == io::ErrorKind::UnexpectedEof
                        && self.chunked.as_ref().is_none_or(|d| d.ended) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Waits up to `within` for the server to close a close-delimited stream; Ok(the
    /// bytes that came after the last complete block, including any unfinished block)
    /// or Err if it stayed open.
    pub fn wait_eof(&mut self, within: Duration) -> Result<Vec<u8>, String> {
        let mut rest = std::mem::take(&mut self.partial).into_bytes();
        let more = self.conn.wait_closed(within)?;
        rest.extend_from_slice(&more);
        Ok(rest)
    }
}
