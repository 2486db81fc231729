//! Response bodies and builders.
//!
//! Owns the one response body type ([`Body`]: a complete buffer, or a stream) and the
//! responses docs/protocol.md fixes: deliveries, the 204 timeout, the text answers for
//! errors, 503 on shutdown, and the head of a stream (its headers are its [`Framing`]'s).
//! hyper adds `Date` and `Content-Length` (from the exact size hint of a complete body);
//! nothing here sets them by hand.

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use holdfast::auth::Denied;
use holdfast::store::Message;
use holdfast::stream::Framing;
use hyper::body::{Frame, SizeHint};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Response, StatusCode, Version};

use crate::stream::StreamBody;

pub const MESSAGE_ID: HeaderName = HeaderName::from_static("message-id");
pub const CHANNEL: HeaderName = HeaderName::from_static("channel");
pub const MESSAGES_LOST: HeaderName = HeaderName::from_static("messages-lost");

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const CLOSE: HeaderValue = HeaderValue::from_static("close");

/// Every response body this server sends.
pub enum Body {
    /// A complete body (`None` once sent, or when empty).
    Full(Option<Bytes>),
    Stream(Box<StreamBody>),
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Body {
        let b = b.into();
        Body::Full((!b.is_empty()).then_some(b))
    }

    pub fn empty() -> Body {
        Body::Full(None)
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(s) => Pin::new(s.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            // Unknown length (see `stream`).
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

pub fn with_body(status: StatusCode, content_type: HeaderValue, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, content_type);
    r
}

/// A short `text/plain` answer.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_body(
        status,
        TEXT,
        Body::full(Bytes::from_static(body.as_bytes())),
    )
}

/// `401`: an admin request without the admin secret (`--admin-token-file`).
pub fn admin_token_required() -> Response<Body> {
    let mut r = text(StatusCode::UNAUTHORIZED, "admin token required\n");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"holdfast admin\""),
    );
    r
}

/// `401` / `403`: a subscribe whose token does not let it in (`--subscribe-key`), with
/// holdfast's `WWW-Authenticate` challenge and text.
pub fn token_refused(why: &Denied) -> Response<Body> {
    let status = StatusCode::from_u16(why.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut r = with_body(status, TEXT, Body::full(why.body()));
    // The challenge is quoted ASCII (realm, error code, a fixed description).
    if let Ok(challenge) = HeaderValue::try_from(why.www_authenticate()) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    }
    r
}

pub fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    with_body(status, JSON, Body::full(body))
}

pub fn no_content() -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// `405` with the methods the path allows.
pub fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Adds `Connection: close`: the server closes after this response.
pub fn closing(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut().insert(header::CONNECTION, CLOSE);
    r
}

/// `503` + `Retry-After: 1`, then close: the server is shutting down.
pub fn shutting_down() -> Response<Body> {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n");
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    closing(r)
}

/// `503` + `Retry-After: 1`: `--max-channels` refused a new channel (keeps the connection).
pub fn too_many_channels() -> Response<Body> {
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "channel limit reached (--max-channels)\n",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// `200` carrying one message.
pub fn delivery(msg: &Message, lost: bool) -> Response<Body> {
    let ct = msg
        .content_type
        .as_ref()
        .and_then(|ct| HeaderValue::from_maybe_shared(ct.clone()).ok())
        .unwrap_or(OCTET_STREAM);
    let mut r = with_body(StatusCode::OK, ct, Body::full(msg.payload.clone()));
    let h = r.headers_mut();
    h.insert(MESSAGE_ID, HeaderValue::from(msg.id));
    // Channel names are `[A-Za-z0-9._~:@-]`, always a valid header value.
    if let Ok(ch) = HeaderValue::from_str(&msg.channel) {
        h.insert(CHANNEL, ch);
    }
    h.insert(header::CACHE_CONTROL, NO_STORE);
    if lost {
        h.insert(MESSAGES_LOST, HeaderValue::from_static("true"));
    }
    r
}

/// `204` after a poll timed out: `Message-Id` is the cursor to send next.
pub fn no_message(cursor: u64) -> Response<Body> {
    let mut r = no_content();
    let h = r.headers_mut();
    h.insert(MESSAGE_ID, HeaderValue::from(cursor));
    h.insert(header::CACHE_CONTROL, NO_STORE);
    r
}

/// A framing's response headers, parsed once per process: `HeaderName::from_static`
/// wants lower case, and holdfast's names are written as it sends them.
/// `Transfer-Encoding` is left to hyper, which frames the body (see [`stream`]).
fn stream_headers(framing: Framing) -> &'static [(HeaderName, HeaderValue)] {
    static PARSED: [OnceLock<Vec<(HeaderName, HeaderValue)>>; Framing::COUNT] =
        [const { OnceLock::new() }; Framing::COUNT];
    PARSED[framing.index()].get_or_init(|| {
        framing
            .headers()
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("transfer-encoding"))
            .filter_map(|&(name, value)| {
                // Static, valid names and values (holdfast writes them verbatim).
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_static(value),
                ))
            })
            .collect()
    })
}

/// The `200` opening a stream, with its framing's headers.
///
/// hyper writes a body of unknown length as `Transfer-Encoding: chunked` on an HTTP/1.1
/// response and as close-delimited only on an HTTP/1.0 one. An ndjson stream is
/// chunked, as docs/protocol.md has it: hyper chunks each line and writes the
/// terminating chunk when the body ends. A close-delimited stream (SSE) is marked
/// HTTP/1.0: the status line reads `HTTP/1.0 200 OK` and the bytes after the head are
/// the stream itself, as docs/protocol.md and holdfast have them.
pub fn stream(framing: Framing, body: StreamBody) -> Response<Body> {
    let mut r = Response::new(Body::Stream(Box::new(body)));
    let h = r.headers_mut();
    for (name, value) in stream_headers(framing) {
        // Clones of parsed headers: a reference count, no allocation per stream.
        h.insert(name.clone(), value.clone());
    }
    if framing.close_delimited() {
        *r.version_mut() = Version::HTTP_10;
        r = closing(r);
    }
    r
}
