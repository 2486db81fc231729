//! Request framing: where the request at the front of a connection's input ends, as a
//! pure function over bytes. The server calls [`Framer::next`] on its read buffer after
//! every read; the fuzz target (`fuzz/src/lib.rs`) calls the same function on arbitrary
//! splits of arbitrary input.
//!
//! A [`Framer`] carries what must survive between reads of one request: how much of the
//! head was already scanned for its end (so a slow client costs linear, not quadratic,
//! work), the body's progress (a `Content-Length` total, or a chunked decoder and the
//! body decoded so far), and whether `100 Continue` was sent. After a request has been
//! handled the caller drops its bytes from the input and calls [`Framer::reset`].
//!
//! Chunked framing already decoded is cut out of the input as it goes
//! ([`Framed::Partial::cut`]), so the raw bytes held for a chunked body are bounded by
//! the decoded body, not by how the client chunked it (1-byte chunks take 6 bytes each).

use super::chunked::{ChunkError, ChunkedDecoder};
use super::parse::{self, BodyLen, Parsed, Request};

/// Raw chunked bytes allowed per byte of the body limit (chunk-size lines, CRLFs): the
/// input limit a server applies while a chunked body arrives is about this times the
/// body limit.
pub const CHUNKED_OVERHEAD: usize = 2;

/// The progress of one request across reads.
#[derive(Default)]
pub struct Framer {
    /// Bytes of the head already scanned for its end (see [`parse::head_end`]).
    scanned: usize,
    body: Option<BodyProgress>,
    /// `100 Continue` already sent for this request.
    continue_sent: bool,
    /// The decoded body of a complete chunked request (lent out by [`Framed::Request`]).
    decoded: Vec<u8>,
    /// That request's raw body bytes still in the input, once it is complete: framing
    /// the same input again (a request handled a second time, as cluster mode does
    /// after a backplane reply) gives the same request, although decoded chunk framing
    /// has been cut from the input meanwhile.
    complete: Option<usize>,
}

/// How far the body of the request at the front of the input has arrived.
enum BodyProgress {
    /// `Content-Length`: the head is read, the body is still arriving.
    Length,
    /// Chunked: raw bytes after the head consumed (and not yet cut), and the body.
    Chunked {
        decoder: ChunkedDecoder,
        consumed: usize,
        body: Vec<u8>,
    },
}

/// What the input holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed<'a> {
    /// Not a whole request yet; call again when more input arrives.
    Partial {
        /// Answer `100 Continue` now (the client waits for it before sending the body).
        send_continue: bool,
        /// `(start, len)`: bytes of the input that are decoded framing. The caller must
        /// remove them (shifting what follows to `start`) before the next call.
        cut: Option<(usize, usize)>,
    },
    /// A whole request: its head, its (decoded) body, and how many input bytes it took.
    Request {
        req: Request<'a>,
        body: &'a [u8],
        len: usize,
    },
    /// A request to refuse with `status` and then close; nothing after it is trusted.
    /// `forwarded` is the proxy-reported client, when the head was readable.
    Refused {
        status: u16,
        reason: &'static str,
        forwarded: Option<&'a [u8]>,
    },
}

impl Framer {
    pub fn new() -> Framer {
        Framer::default()
    }

    /// Forgets the request just handled (its bytes must be gone from the input).
    pub fn reset(&mut self) {
        self.scanned = 0;
        self.body = None;
        self.continue_sent = false;
        self.complete = None;
        // A large decoded body is not kept for the connection's next request.
        if self.decoded.capacity() > 0 {
            self.decoded = Vec::new();
        }
    }

    /// Whether a request's body is being read (input is expected).
    pub fn in_body(&self) -> bool {
        self.body.is_some()
    }

    /// Frames the request at the front of `input` (the connection's unhandled bytes);
    /// bodies over `max_body` are refused with `413`.
    pub fn next<'a>(&'a mut self, input: &'a [u8], max_body: usize) -> Framed<'a> {
        let head_end = match parse::head_end(input, &mut self.scanned) {
            Some(e) => e,
            None => {
                return match parse::check_partial(input) {
                    Err(e) => refused(e.status(), e.reason(), None),
                    Ok(()) => partial(false, None),
                };
            }
        };
        let req = match parse::parse_head(&input[..head_end]) {
            Ok(Parsed::Complete(r)) => r,
            // head_end saw a blank line that httparse does not accept as the end.
            Ok(Parsed::Partial) => return refused(400, "malformed request", None),
            Err(e) => return refused(e.status(), e.reason(), None),
        };
        let head_len = req.head_len;
        let fwd = req.forwarded_for;
        let expect = req.expect_continue && !self.continue_sent;
        match req.body {
            BodyLen::None => Framed::Request {
                req,
                body: &[],
                len: head_len,
            },
            BodyLen::Length(n) => {
                if n > max_body as u64 {
                    return refused(413, "message too large", fwd);
                }
                let total = head_len + n as usize;
                if input.len() < total {
                    self.body = Some(BodyProgress::Length);
                    self.continue_sent |= expect;
                    return partial(expect, None);
                }
                Framed::Request {
                    req,
                    body: &input[head_len..total],
                    len: total,
                }
            }
            BodyLen::Chunked => {
                if let Some(used) = self.complete {
                    return Framed::Request {
                        req,
                        body: &self.decoded,
                        len: head_len + used,
                    };
                }
                let (mut decoder, mut used, mut body) = match self.body.take() {
                    Some(BodyProgress::Chunked {
                        decoder,
                        consumed,
                        body,
                    }) => (decoder, consumed, body),
                    _ => (ChunkedDecoder::new(), 0, Vec::new()),
                };
                match decoder.decode(&input[head_len + used..], &mut body, max_body as u64) {
                    Ok(n) => used += n,
                    Err(ChunkError::TooLarge) => return refused(413, "message too large", fwd),
                    Err(ChunkError::Malformed) => {
                        return refused(400, "malformed chunked body", fwd)
                    }
                }
                if !decoder.is_done() {
                    let cut = (used > 0).then_some((head_len, used));
                    self.body = Some(BodyProgress::Chunked {
                        decoder,
                        consumed: 0,
                        body,
                    });
                    self.continue_sent |= expect;
                    return partial(expect, cut);
                }
                self.decoded = body;
                self.complete = Some(used);
                Framed::Request {
                    req,
                    body: &self.decoded,
                    len: head_len + used,
                }
            }
        }
    }
}

fn partial<'a>(send_continue: bool, cut: Option<(usize, usize)>) -> Framed<'a> {
    Framed::Partial { send_continue, cut }
}

fn refused<'a>(status: u16, reason: &'static str, forwarded: Option<&'a [u8]>) -> Framed<'a> {
    Framed::Refused {
        status,
        reason,
        forwarded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to a framer in pieces of `step` bytes, as a server would (cutting
    /// what it is told to cut); returns the (method path, body) of each request and the
    /// refusal that ended the input, if any, and how many `100 Continue`s were asked for.
    /// (path, body) of each request framed.
    type Requests = Vec<(String, Vec<u8>)>;

    fn frame_all(input: &[u8], step: usize, max: usize) -> (Requests, Option<u16>, usize) {
        let mut f = Framer::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut out = vec![];
        let mut continues = 0;
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match f.next(&buf, max) {
                    Framed::Partial { send_continue, cut } => {
                        continues += usize::from(send_continue);
                        if let Some((start, n)) = cut {
                            buf.drain(start..start + n);
                        }
                        break;
                    }
                    Framed::Request { req, body, len } => {
                        let path = String::from_utf8_lossy(req.path).into_owned();
                        let body = body.to_vec();
                        // Framed again before it is consumed (cluster mode handles a
                        // request a second time after a backplane reply): the same.
                        match f.next(&buf, max) {
                            Framed::Request {
                                req: r2,
                                body: b2,
                                len: l2,
                            } => assert_eq!(
                                (r2.path, b2, l2),
                                (path.as_bytes(), &body[..], len),
                                "framed twice"
                            ),
                            _ => panic!("framed twice: not the same request"),
                        }
                        out.push((path, body));
                        buf.drain(..len);
                        f.reset();
                    }
                    Framed::Refused { status, .. } => return (out, Some(status), continues),
                }
            }
        }
        (out, None, continues)
    }

    #[test]
    fn requests_are_framed_whatever_the_split() {
        let input = b"GET /a HTTP/1.1\r\n\r\n\
            POST /pub/x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            PUT /pub/y HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
            GET /b HTTP/1.1\r\n\r\n";
        let want = vec![
            ("/a".to_string(), vec![]),
            ("/pub/x".to_string(), b"hello".to_vec()),
            ("/pub/y".to_string(), b"abcde".to_vec()),
            ("/b".to_string(), vec![]),
        ];
        for step in 1..input.len() + 1 {
            let (got, refused, _) = frame_all(input, step, 1024);
            assert_eq!(got, want, "step {step}");
            assert_eq!(refused, None, "step {step}");
        }
    }

    #[test]
    fn refusals() {
        let table: &[(&[u8], usize, u16)] = &[
            (b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 10, 413),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n",
                10,
                413,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                10,
                400,
            ),
            (b"THIS IS NOT HTTP\r\n\r\n", 10, 400),
            (b"GET / HTTP/2.0\r\n\r\n", 10, 505),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                10,
                501,
            ),
        ];
        for &(input, max, status) in table {
            for step in [1, input.len()] {
                let (_, refused, _) = frame_all(input, step, max);
                assert_eq!(
                    refused,
                    Some(status),
                    "{:?} step {step}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn continue_is_asked_for_once_per_request() {
        let input = b"POST /pub/x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc";
        let (got, _, continues) = frame_all(input, 1, 1024);
        assert_eq!(got.len(), 1);
        assert_eq!(continues, 1);
        // Whole at once: the body is here, nothing to ask for.
        let (_, _, continues) = frame_all(input, input.len(), 1024);
        assert_eq!(continues, 0);
    }

    #[test]
    fn decoded_chunk_framing_is_cut_as_it_goes() {
        // 1-byte chunks: 6 raw bytes each. What the caller holds stays near the decoded
        // size, not the raw size.
        let mut input = b"POST /pub/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let head = input.len();
        for _ in 0..1000 {
            input.extend_from_slice(b"1\r\nz\r\n");
        }
        let mut f = Framer::new();
        let mut buf = Vec::new();
        let mut most = 0;
        for piece in input.chunks(60) {
            buf.extend_from_slice(piece);
            match f.next(&buf, 4096) {
                Framed::Partial { cut, .. } => {
                    if let Some((start, n)) = cut {
                        buf.drain(start..start + n);
                    }
                }
                other => panic!("{other:?}"),
            }
            most = most.max(buf.len());
        }
        assert!(most < head + 70, "held {most} raw bytes");
        buf.extend_from_slice(b"0\r\n\r\n");
        match f.next(&buf, 4096) {
            Framed::Request { body, .. } => assert_eq!(body, &[b'z'; 1000][..]),
            other => panic!("{other:?}"),
        }
    }
}
