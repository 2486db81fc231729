//! Request heads: a thin layer over `httparse` that enforces the size limits of
//! `docs/protocol.md` and extracts the handful of headers holdfast acts on.
//!
//! Partial input is not an error ([`Parsed::Partial`]); the caller keeps the bytes and
//! calls again when more arrive. To keep a slow client from making us re-parse a growing
//! head on every byte (quadratic work), [`head_end`] finds the blank line by scanning only
//! bytes not scanned before, and `httparse` runs once the head is complete.
//! The returned [`Request`] borrows the caller's buffer; nothing is allocated.

/// Longest request line (method, target, version), excluding CRLF.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Largest header section (all header lines, excluding the request line).
pub const MAX_HEADERS_BYTES: usize = 16 * 1024;
/// Most header fields.
pub const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    /// CORS preflights (`--allow-origin`).
    Options,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    None,
    Length(u64),
    Chunked,
}

/// Why a head was refused; each maps to one status code, after which we close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400: malformed request line, header, or framing.
    Bad(&'static str),
    /// 414: request line over [`MAX_REQUEST_LINE`].
    UriTooLong,
    /// 431: header section over [`MAX_HEADERS_BYTES`] or more than [`MAX_HEADERS`] fields.
    HeadersTooLarge,
    /// 501: a transfer coding other than chunked.
    NotImplemented,
    /// 505: not HTTP/1.x.
    Version,
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::Bad(_) => 400,
            HeadError::UriTooLong => 414,
            HeadError::HeadersTooLarge => 431,
            HeadError::NotImplemented => 501,
            HeadError::Version => 505,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            HeadError::Bad(why) => why,
            HeadError::UriTooLong => "request line too long",
            HeadError::HeadersTooLarge => "request headers too large",
            HeadError::NotImplemented => "unsupported transfer coding",
            HeadError::Version => "HTTP version not supported",
        }
    }
}

/// A parsed request head, borrowing the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// Path without the query.
    pub path: &'a [u8],
    /// Query string without the `?` (empty if none).
    pub query: &'a [u8],
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub body: BodyLen,
    /// The client allows the connection to stay open after this request.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Accept` lists `text/event-stream`.
    pub wants_sse: bool,
    /// `Accept` lists `application/x-ndjson`.
    pub wants_ndjson: bool,
    /// `Upgrade` lists `websocket`.
    pub websocket: bool,
    /// `Connection` lists `upgrade`.
    pub connection_upgrade: bool,
    /// `Sec-WebSocket-Key`.
    pub ws_key: Option<&'a [u8]>,
    /// `Sec-WebSocket-Version`.
    pub ws_version: Option<&'a [u8]>,
    pub last_event_id: Option<&'a [u8]>,
    pub content_type: Option<&'a [u8]>,
    /// `Authorization` (the admin secret, or a subscriber's bearer token).
    pub authorization: Option<&'a [u8]>,
    /// `Cookie` (a subscriber token may ride in one); the first such header.
    pub cookie: Option<&'a [u8]>,
    /// `Origin` (CORS, `--allow-origin`).
    pub origin: Option<&'a [u8]>,
    /// The client address a proxy reported: `X-Real-IP`, else the last `X-Forwarded-For`
    /// entry (the one the nearest proxy appended). Only meaningful behind a trusted proxy.
    pub forwarded_for: Option<&'a [u8]>,
    /// Bytes of the head including the blank line.
    pub head_len: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    Complete(Request<'a>),
    Partial,
}

/// Finds the end of the head (index just past the blank line) in `buf`, scanning from
/// `*scanned` (minus the three bytes a terminator may straddle) and updating it.
/// Accepts bare-LF line endings as RFC 9112 allows.
pub fn head_end(buf: &[u8], scanned: &mut usize) -> Option<usize> {
    let start = scanned.saturating_sub(3);
    let mut i = start;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        if nl >= 1 && buf[nl - 1] == b'\n' {
            return Some(nl + 1);
        }
        if nl >= 2 && buf[nl - 1] == b'\r' && buf[nl - 2] == b'\n' {
            return Some(nl + 1);
        }
        i = nl + 1;
    }
    *scanned = buf.len();
    None
}

/// Checks the size limits on an incomplete head so an endless head is refused early.
pub fn check_partial(buf: &[u8]) -> Result<(), HeadError> {
    match buf.iter().position(|&b| b == b'\n') {
        None if buf.len() > MAX_REQUEST_LINE + 1 => Err(HeadError::UriTooLong),
        Some(nl) if nl > MAX_REQUEST_LINE + 1 => Err(HeadError::UriTooLong),
        Some(nl) if buf.len() - nl - 1 > MAX_HEADERS_BYTES + 2 => Err(HeadError::HeadersTooLarge),
        _ => Ok(()),
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Whether the request line is `METHOD SP TARGET SP HTTP/d.d`: well-formed but for the
/// version's value. Method and target must be visible ASCII, with single spaces between
/// the three parts, as httparse reads them.
fn names_an_http_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(buf);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let visible = |p: &[u8]| !p.is_empty() && p.iter().all(u8::is_ascii_graphic);
    visible(method) && visible(target) && is_http_version(version)
}

/// A well-formed `HTTP-version` (RFC 9112 §2.3): `HTTP/` digit `.` digit. One that is
/// neither `HTTP/1.0` nor `HTTP/1.1` is answered `505`; the tokio peer's request-line
/// scan applies the same rule.
pub fn is_http_version(v: &[u8]) -> bool {
    matches!(v, [b'H', b'T', b'T', b'P', b'/', a, b'.', b]
        if a.is_ascii_digit() && b.is_ascii_digit())
}

/// Does a comma-separated header value list contain `token` (case-insensitive)? Used
/// for `Connection` and `Accept` here and by the tokio peer.
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| {
        let t = trim(t);
        let t = t.split(|&b| b == b';').next().unwrap_or(t);
        trim(t).eq_ignore_ascii_case(token)
    })
}

/// Parses a complete head `buf[..end]` (see [`head_end`]).
pub fn parse_head(buf: &[u8]) -> Result<Parsed<'_>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            check_partial(buf)?;
            return Ok(Parsed::Partial);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadersTooLarge),
        Err(httparse::Error::Version) => {
            // httparse says "version" for anything after the target that is not
            // `HTTP/1.x`; only a well-formed `HTTP/d.d` is an unsupported version (505),
            // the rest is not HTTP at all (400).
            check_partial(buf)?;
            return Err(if names_an_http_version(buf) {
                HeadError::Version
            } else {
                HeadError::Bad("malformed request")
            });
        }
        Err(_) => {
            check_partial(buf)?;
            return Err(HeadError::Bad("malformed request"));
        }
    };
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(head_len);
    if line_end > MAX_REQUEST_LINE + 1 {
        return Err(HeadError::UriTooLong);
    }
    if head_len - line_end - 1 > MAX_HEADERS_BYTES + 2 {
        return Err(HeadError::HeadersTooLarge);
    }
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("").as_bytes();
    if target.first() != Some(&b'/') {
        return Err(HeadError::Bad("request target must be an absolute path"));
    }
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &target[target.len()..]),
    };
    let minor = req.version.unwrap_or(1);

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut conn_close = false;
    let mut expect_continue = false;
    let mut wants_sse = false;
    let mut wants_ndjson = false;
    let mut websocket = false;
    let mut connection_upgrade = false;
    let mut ws_key = None;
    let mut ws_version = None;
    let mut last_event_id = None;
    let mut content_type = None;
    let mut authorization = None;
    let mut cookie = None;
    let mut origin = None;
    let mut real_ip = None;
    let mut xff = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(HeadError::Bad("invalid Content-Length"))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HeadError::Bad("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !value.eq_ignore_ascii_case(b"chunked") || chunked {
                return Err(HeadError::NotImplemented);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            conn_close |= has_token(value, b"close");
            connection_upgrade |= has_token(value, b"upgrade");
        } else if name.eq_ignore_ascii_case(b"expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            }
        } else if name.eq_ignore_ascii_case(b"accept") {
            wants_sse |= has_token(value, b"text/event-stream");
            wants_ndjson |= has_token(value, b"application/x-ndjson");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            websocket |= has_token(value, b"websocket");
        } else if name.eq_ignore_ascii_case(b"sec-websocket-key") {
            ws_key = Some(value);
        } else if name.eq_ignore_ascii_case(b"sec-websocket-version") {
            ws_version = Some(value);
        } else if name.eq_ignore_ascii_case(b"last-event-id") {
            last_event_id = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-type") {
            content_type = Some(value);
        } else if name.eq_ignore_ascii_case(b"authorization") {
            authorization = Some(value);
        } else if name.eq_ignore_ascii_case(b"cookie") {
            cookie = cookie.or(Some(value));
        } else if name.eq_ignore_ascii_case(b"origin") {
            origin = Some(value);
        } else if name.eq_ignore_ascii_case(b"x-real-ip") {
            real_ip = Some(value);
        } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff = value.rsplit(|&b| b == b',').next().map(trim);
        }
    }
    // Both framings at once is how request smuggling starts: refuse it (RFC 9112 §6.3).
    let body = match (chunked, content_length) {
        (true, Some(_)) => {
            return Err(HeadError::Bad(
                "both Content-Length and Transfer-Encoding given",
            ))
        }
        (true, None) => BodyLen::Chunked,
        (false, Some(0)) | (false, None) => BodyLen::None,
        (false, Some(n)) => BodyLen::Length(n),
    };
    if chunked && minor == 0 {
        return Err(HeadError::Bad("chunked body in an HTTP/1.0 request"));
    }
    // HTTP/1.0 keep-alive is not offered (so `Connection: keep-alive` is not looked at):
    // such requests are answered and closed.
    let keep_alive = if minor == 0 { false } else { !conn_close };
    Ok(Parsed::Complete(Request {
        method,
        path,
        query,
        minor,
        body,
        keep_alive,
        expect_continue: expect_continue && minor == 1,
        wants_sse,
        wants_ndjson,
        websocket,
        connection_upgrade,
        ws_key,
        ws_version,
        last_event_id,
        content_type,
        authorization,
        cookie,
        origin,
        forwarded_for: real_ip.or(xff).filter(|v| !v.is_empty()),
        head_len,
    }))
}

/// Iterates `key=value` pairs of a query string (no percent-decoding: every value we
/// accept is digits or a duration).
pub fn query_pairs(query: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|&b| b == b'=') {
            Some(eq) => (&p[..eq], &p[eq + 1..]),
            None => (p, &p[p.len()..]),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> Request<'_> {
        match parse_head(buf) {
            Ok(Parsed::Complete(r)) => r,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    const SUB: &[u8] = b"GET /sub/a,b?since=12&timeout=5 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nLast-Event-ID: 99\r\n\r\n";
    const PUB: &[u8] = b"POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello";

    #[test]
    fn subscribe_head() {
        let r = complete(SUB);
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, b"/sub/a,b");
        assert_eq!(r.query, b"since=12&timeout=5");
        assert_eq!((r.minor, r.keep_alive, r.wants_sse), (1, true, true));
        assert_eq!(r.last_event_id, Some(&b"99"[..]));
        assert_eq!(r.head_len, SUB.len());
        let pairs: Vec<_> = query_pairs(r.query).collect();
        assert_eq!(
            pairs,
            vec![(&b"since"[..], &b"12"[..]), (&b"timeout"[..], &b"5"[..])]
        );
    }

    #[test]
    fn publish_head() {
        let r = complete(PUB);
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.body, BodyLen::Length(5));
        assert!(r.expect_continue);
        assert_eq!(r.content_type, Some(&b"text/plain"[..]));
        assert_eq!(r.head_len, PUB.len() - 5);
    }

    #[test]
    fn every_prefix_is_partial() {
        for req in [SUB, PUB] {
            let head = complete(req).head_len;
            for n in 0..head {
                assert_eq!(parse_head(&req[..n]), Ok(Parsed::Partial), "prefix {n}");
                let mut scanned = 0;
                assert_eq!(head_end(&req[..n], &mut scanned), None, "prefix {n}");
            }
        }
    }

    #[test]
    fn head_end_incremental_matches_whole() {
        for req in [SUB, PUB, b"GET / HTTP/1.1\n\n".as_slice()] {
            let whole = head_end(req, &mut 0).unwrap();
            // Feed one byte at a time, as a slow client would.
            let mut scanned = 0;
            let mut found = None;
            for n in 1..=req.len() {
                if let Some(e) = head_end(&req[..n], &mut scanned) {
                    found = Some(e);
                    break;
                }
            }
            assert_eq!(found, Some(whole));
        }
    }

    #[test]
    fn table() {
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST_LINE));
        let long_headers = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(300)
        );
        let many_headers = format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(65));
        let cases: Vec<(&[u8], Result<(), HeadError>)> = vec![
            (b"GET / HTTP/1.1\r\n\r\n", Ok(())),
            (b"GET / HTTP/1.0\r\n\r\n", Ok(())),
            (b"GET / HTTP/1.1\n\n", Ok(())),
            (b"GET\r\n\r\n", Err(HeadError::Bad("malformed request"))),
            (b"GET / HTTP/2.0\r\n\r\n", Err(HeadError::Version)),
            (b"GET / HTTP/1.2\r\n\r\n", Err(HeadError::Version)),
            (b"GET / HTTP/3.0\n\n", Err(HeadError::Version)),
            // Not an HTTP version at all: malformed, not "unsupported version".
            (
                b"THIS IS NOT HTTP\r\n\r\n",
                Err(HeadError::Bad("malformed request")),
            ),
            (
                b"GET / FOO/1.1\r\n\r\n",
                Err(HeadError::Bad("malformed request")),
            ),
            (
                b"GET / HTTP/1\r\n\r\n",
                Err(HeadError::Bad("malformed request")),
            ),
            (
                b"GET / HTTP/12.0\r\n\r\n",
                Err(HeadError::Bad("malformed request")),
            ),
            // The version slot is the third part, not whatever ends the line.
            (
                b"GET / x HTTP/2.0\r\n\r\n",
                Err(HeadError::Bad("malformed request")),
            ),
            (
                b"GET /a b HTTP/2.0\r\n\r\n",
                Err(HeadError::Bad("malformed request")),
            ),
            (
                b"GET  / HTTP/2.0\r\n\r\n",
                Err(HeadError::Bad("malformed request")),
            ),
            (
                "GET /\u{e9} HTTP/2.0\r\n\r\n".as_bytes(),
                Err(HeadError::Bad("malformed request")),
            ),
            (
                b"GET nope HTTP/1.1\r\n\r\n",
                Err(HeadError::Bad("request target must be an absolute path")),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                Err(HeadError::Bad("invalid Content-Length")),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                Err(HeadError::Bad("conflicting Content-Length headers")),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                Err(HeadError::NotImplemented),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                Err(HeadError::Bad(
                    "both Content-Length and Transfer-Encoding given",
                )),
            ),
            (long_line.as_bytes(), Err(HeadError::UriTooLong)),
            (long_headers.as_bytes(), Err(HeadError::HeadersTooLarge)),
            (many_headers.as_bytes(), Err(HeadError::HeadersTooLarge)),
        ];
        for (input, want) in cases {
            let got = parse_head(input).map(|p| assert!(matches!(p, Parsed::Complete(_))));
            assert_eq!(
                got,
                want,
                "{:?}",
                String::from_utf8_lossy(&input[..input.len().min(60)])
            );
        }
    }

    #[test]
    fn partial_heads_hit_limits_early() {
        let line = vec![b'a'; MAX_REQUEST_LINE + 10];
        assert_eq!(check_partial(&line), Err(HeadError::UriTooLong));
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        head.extend(std::iter::repeat_n(b'x', MAX_HEADERS_BYTES + 10));
        assert_eq!(check_partial(&head), Err(HeadError::HeadersTooLarge));
        assert_eq!(check_partial(b"GET / HTTP/1.1\r\nHost"), Ok(()));
    }

    #[test]
    fn forwarded_client_address() {
        let r = complete(b"GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1, 203.0.113.9 \r\n\r\n");
        assert_eq!(r.forwarded_for, Some(&b"203.0.113.9"[..]));
        let r = complete(
            b"GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\nX-Real-IP: 198.51.100.7\r\n\r\n",
        );
        assert_eq!(r.forwarded_for, Some(&b"198.51.100.7"[..]));
        assert_eq!(complete(b"GET / HTTP/1.1\r\n\r\n").forwarded_for, None);
    }

    #[test]
    fn connection_semantics() {
        let r = complete(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(!r.keep_alive);
        let r = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(!r.keep_alive, "HTTP/1.0 always closes");
        let r = complete(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(r.body, BodyLen::Chunked);
        let r = complete(b"GET / HTTP/1.1\r\nAccept: text/html, text/event-stream;q=0.9\r\n\r\n");
        assert!(r.wants_sse);
    }
}
