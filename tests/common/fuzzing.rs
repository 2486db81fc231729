//! Bytes of valid requests and mutations of them, for property tests against the parser
//! (`tests/parser_props.rs`) and against a live server (`tests/malformed_input.rs`).

use holdfast::http::chunked::ChunkedDecoder;
use proptest::prelude::*;
use proptest::sample::Index;

/// A request a server must answer normally; `expect[i]` lists the statuses allowed
/// for the i-th final response. `admin` says which listener it is for.
#[derive(Debug)]
pub struct ValidRequest {
    pub admin: bool,
    pub bytes: &'static [u8],
    pub expect: &'static [&'static [u16]],
}

/// Polls never park here for long: every one carries `timeout=0`, or the server runs
/// with a short `--max-poll-timeout`.
pub const VALID_REQUESTS: &[ValidRequest] = &[
    ValidRequest {
        admin: false,
        bytes: b"GET /sub/fz?timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n",
        expect: &[&[204]],
    },
    ValidRequest {
        admin: false,
        bytes: b"GET /sub/fz,fy?since=0&timeout=0 HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n",
        expect: &[&[200, 204]],
    },
    ValidRequest {
        admin: false,
        bytes: b"GET /sub/fz?timeout=0 HTTP/1.1\r\nhost: x\r\nLast-Event-ID: 0\r\n\r\n",
        expect: &[&[200, 204]],
    },
    ValidRequest {
        admin: false,
        bytes: b"GET /sub/fz?timeout=0 HTTP/1.1\nHost: x\nConnection: close\n\n",
        expect: &[&[200, 204]],
    },
    ValidRequest {
        admin: false,
        bytes: b"GET /health HTTP/1.0\r\n\r\n",
        expect: &[&[200]],
    },
    ValidRequest {
        admin: false,
        bytes: b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /sub/fy?timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n",
        expect: &[&[200], &[204]],
    },
    ValidRequest {
        admin: true,
        bytes: b"POST /pub/fz HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        expect: &[&[201]],
    },
    ValidRequest {
        admin: true,
        bytes: b"PUT /pub/fy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        expect: &[&[201]],
    },
    ValidRequest {
        admin: true,
        bytes: b"POST /pub/fz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
        expect: &[&[201]],
    },
    ValidRequest {
        admin: true,
        bytes: b"POST /pub/fz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n",
        expect: &[&[201]],
    },
    ValidRequest {
        admin: true,
        bytes: b"GET /pub/fz HTTP/1.1\r\nHost: x\r\n\r\nGET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        expect: &[&[200, 404], &[200]],
    },
    ValidRequest {
        admin: true,
        bytes: b"DELETE /pub/fq HTTP/1.1\r\nHost: x\r\n\r\n",
        expect: &[&[204, 404]],
    },
];

/// Byte strings that parsers trip on, spliced in by [`Mutation::Token`].
pub const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b"\n\n",
    b"\n\r\n",
    b":",
    b" ",
    b"\t",
    b"\0",
    b"\xff\xfe",
    b"%00",
    b",",
    b"?",
    b"/",
    b"0",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"Content-Length: 99999999999999999999999\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 1, 2\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"Last-Event-ID: 18446744073709551616\r\n",
    b"ffffffffffffffffff\r\n",
    b"0\r\n\r\n",
    b"GET /health HTTP/1.1\r\n\r\n",
    b"X: y\r\n",
];

/// One edit of a request's bytes; positions are fractions of the current length.
#[derive(Debug, Clone)]
pub enum Mutation {
    Truncate(Index),
    Flip(Index, u8),
    Delete(Index, u8),
    Insert(Index, Vec<u8>),
    Token(Index, Index),
    /// Repeat the `len` bytes at `at` `times` times (oversized lines and headers).
    Repeat {
        at: Index,
        len: u8,
        times: u16,
    },
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => any::<Index>().prop_map(Mutation::Truncate),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => (any::<Index>(), 1u8..32).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Mutation::Token(i, t)),
        1 => (any::<Index>(), 1u8..40, 1u16..1200)
            .prop_map(|(at, len, times)| Mutation::Repeat { at, len, times }),
    ]
}

/// Applies `m` to `bytes`.
pub fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let at = |i: &Index, len: usize| i.index(len + 1);
    match m {
        Mutation::Truncate(i) => {
            let n = at(i, bytes.len());
            bytes.truncate(n);
        }
        Mutation::Flip(i, b) => {
            if !bytes.is_empty() {
                let n = i.index(bytes.len());
                bytes[n] = *b;
            }
        }
        Mutation::Delete(i, n) => {
            let start = at(i, bytes.len());
            let end = (start + usize::from(*n)).min(bytes.len());
            bytes.drain(start..end);
        }
        Mutation::Insert(i, v) => {
            let n = at(i, bytes.len());
            bytes.splice(n..n, v.iter().copied());
        }
        Mutation::Token(i, t) => {
            let n = at(i, bytes.len());
            let tok = TOKENS[t.index(TOKENS.len())];
            bytes.splice(n..n, tok.iter().copied());
        }
        Mutation::Repeat { at: i, len, times } => {
            let start = at(i, bytes.len());
            let end = (start + usize::from(*len)).min(bytes.len());
            let piece = bytes[start..end].to_vec();
            let extra: Vec<u8> = piece
                .iter()
                .copied()
                .cycle()
                .take(piece.len() * usize::from(*times))
                .collect();
            bytes.splice(end..end, extra);
        }
    }
}

/// A valid request (its index in [`VALID_REQUESTS`]) with 0–3 mutations applied.
pub fn mutated_request() -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (
        0..VALID_REQUESTS.len(),
        prop::collection::vec(mutation(), 0..4),
    )
}

pub fn mutated_bytes(index: usize, mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = VALID_REQUESTS[index].bytes.to_vec();
    for m in mutations {
        apply(&mut bytes, m);
    }
    bytes
}

/// One response as read off the wire.
#[derive(Debug, Clone)]
pub struct WireResponse {
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl WireResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    pub fn is_event_stream(&self) -> bool {
        self.status == 200
            && self
                .header("content-type")
                .is_some_and(|v| v.starts_with("text/event-stream"))
    }
}

/// What [`parse_responses`] found in the bytes a server sent.
#[derive(Debug)]
pub struct WireParse {
    pub responses: Vec<WireResponse>,
    /// The last response's body runs to the end of the connection (event stream or
    /// close-delimited): nothing after it can be parsed as a response.
    pub open_body: bool,
}

/// Splits `bytes` into HTTP/1.x responses, checking each status line, header line
/// and body framing. Err names the first thing that is not HTTP.
pub fn parse_responses(bytes: &[u8]) -> Result<WireParse, String> {
    let mut responses = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Err(format!(
                "incomplete response head: {:?}",
                String::from_utf8_lossy(&rest[..rest.len().min(300)])
            ));
        };
        // RFC 9110 §5.5: a field value is visible ASCII, spaces, tabs and obs-text
        // (bytes 0x80 and up, e.g. a publisher's Content-Type passed through); no
        // other control byte. Names are tokens.
        let head_bytes = &rest[..end];
        if let Some(b) = head_bytes
            .iter()
            .find(|&&b| (b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n') || b == 0x7f)
        {
            return Err(format!(
                "control byte {b:#04x} in response head {:?}",
                String::from_utf8_lossy(head_bytes)
            ));
        }
        let head = String::from_utf8_lossy(head_bytes);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        if !status_line.is_ascii() {
            return Err(format!("status line is not ASCII: {status_line:?}"));
        }
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        let status: u16 = parts
            .next()
            .filter(|s| s.len() == 3)
            .and_then(|s| s.parse().ok())
            .filter(|_| version == "HTTP/1.1" || version == "HTTP/1.0")
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        let mut headers = Vec::new();
        for line in lines {
            let (n, v) = line
                .split_once(':')
                .filter(|(n, _)| !n.is_empty() && n.chars().all(tchar))
                .ok_or_else(|| format!("bad header line {line:?} in {head:?}"))?;
            headers.push((n.to_string(), v.trim().to_string()));
        }
        let mut resp = WireResponse {
            version,
            status,
            headers,
            body_len: 0,
        };
        pos += end + 4;
        let body = &bytes[pos..];
        if (100..200).contains(&status) || status == 204 || status == 304 {
            responses.push(resp);
            continue;
        }
        if resp.is_event_stream() {
            responses.push(resp);
            return Ok(WireParse {
                responses,
                open_body: true,
            });
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let n = d
                .decode(body, &mut out, u64::MAX)
                .map_err(|e| format!("bad chunked response body: {e:?}"))?;
            if !d.is_done() {
                return Err("chunked response body ends early".to_string());
            }
            resp.body_len = out.len();
            pos += n;
        } else if let Some(cl) = resp.header("content-length") {
            let n: usize = cl
                .parse()
                .map_err(|_| format!("bad Content-Length {cl:?}"))?;
            if body.len() < n {
                return Err(format!(
                    "response {status} body ends after {} of {n} bytes",
                    body.len()
                ));
            }
            resp.body_len = n;
            pos += n;
        } else {
            resp.body_len = body.len();
            responses.push(resp);
            return Ok(WireParse {
                responses,
                open_body: true,
            });
        }
        responses.push(resp);
    }
    Ok(WireParse {
        responses,
        open_body: false,
    })
}
