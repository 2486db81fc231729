//! What each stream transport carries, rendered by holdfast and framed by the library
//! that owns the wire.
//!
//! - **SSE**: holdfast's [`Framing`] bytes as they are. The event stream is
//!   close-delimited, so hyper writes them verbatim.
//! - **ndjson**: the [`json`] envelope plus `\n`, one line per message or signal, handed
//!   to hyper as a body frame; hyper frames the body (chunked, on an HTTP/1.1 response of
//!   unknown length) and writes the terminating chunk when the body ends.
//! - **WebSocket**: the [`json`] envelope as one text message, which tungstenite frames.
//!
//! holdfast's own ndjson and WebSocket bytes (`Framing::message` and friends for those
//! variants) are pre-chunked and pre-framed for a raw socket and are never used here.
//! Every message or signal is rendered once per transport (and, for SSE, per `event:`
//! flavour) and shared by every stream that receives it.

use bytes::Bytes;
use holdfast::stream::{json, Event, Framing};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One message or signal, ready for its transport.
#[derive(Clone)]
pub enum Frame {
    /// Response-body bytes (an SSE event, an ndjson line).
    Body(Bytes),
    /// A WebSocket text message.
    Text(Utf8Bytes),
}

impl Frame {
    /// Bytes of payload (what the stream's backlog counts).
    pub fn len(&self) -> usize {
        match self {
            Frame::Body(b) => b.len(),
            Frame::Text(t) => t.len(),
        }
    }

    /// As response-body bytes (a text message gives its bytes, without a copy).
    pub fn into_body(self) -> Bytes {
        match self {
            Frame::Body(b) => b,
            Frame::Text(t) => t.into(),
        }
    }

    /// As a WebSocket text message. Only [`Framing::WebSocket`] frames are sent that way,
    /// and those are rendered as text: the other arm only keeps this total.
    pub fn into_text(self) -> Utf8Bytes {
        match self {
            Frame::Text(t) => t,
            Frame::Body(b) => text(b.into()),
        }
    }
}

/// The envelope is UTF-8 by construction (`json_str` of a `&str`, base64 for payloads
/// that are not UTF-8); the lossy arm is never taken.
fn text(v: Vec<u8>) -> Utf8Bytes {
    match String::from_utf8(v) {
        Ok(s) => s.into(),
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned().into(),
    }
}

/// The JSON envelope written by `render`, framed for `framing` (ndjson or WebSocket).
fn envelope(framing: Framing, render: impl FnOnce(&mut Vec<u8>)) -> Frame {
    let mut v = Vec::with_capacity(96);
    render(&mut v);
    if framing == Framing::WebSocket {
        Frame::Text(text(v))
    } else {
        v.push(b'\n');
        Frame::Body(v.into())
    }
}

/// Holdfast's SSE bytes written by `render`.
fn sse(render: impl FnOnce(&mut Vec<u8>)) -> Frame {
    let mut v = Vec::with_capacity(96);
    render(&mut v);
    Frame::Body(v.into())
}

/// Index of a message's rendering in a per-message cache of [`KINDS`] entries: SSE has
/// two (with or without the `event:` line of a multi-channel stream), the JSON
/// transports one each (every JSON message names its channel).
pub fn kind(framing: Framing, named: bool) -> usize {
    match framing {
        Framing::Sse => usize::from(named),
        Framing::Ndjson => 2,
        Framing::WebSocket => 3,
    }
}

/// Entries of a per-message cache indexed by [`kind`].
pub const KINDS: usize = 4;

/// One message; `named`: the stream covers more than one channel (SSE's `event:` line).
pub fn message(framing: Framing, msg: &Event<'_>, named: bool) -> Frame {
    match framing {
        Framing::Sse => sse(|o| framing.message(o, msg, named)),
        _ => envelope(framing, |o| json::message(o, msg)),
    }
}

/// The gap signal, sent just before message `next_id`.
pub fn lost(framing: Framing, next_id: u64) -> Frame {
    match framing {
        Framing::Sse => sse(|o| framing.lost(o, next_id)),
        _ => envelope(framing, |o| json::lost(o, next_id)),
    }
}

/// The last frame of a stream whose channel `channel` was deleted.
pub fn deleted(framing: Framing, channel: &str) -> Frame {
    match framing {
        Framing::Sse => sse(|o| framing.deleted(o, channel)),
        _ => envelope(framing, |o| json::deleted(o, channel)),
    }
}

/// The last frame of a stream whose subscriber token expired.
pub fn expired(framing: Framing) -> Frame {
    match framing {
        Framing::Sse => sse(|o| framing.expired(o)),
        _ => envelope(framing, |o| o.extend_from_slice(json::EXPIRED)),
    }
}

/// The last frame of a stream the server ends because it is shutting down (none for
/// SSE: the close ends it, and `EventSource` reconnects).
pub fn shutdown(framing: Framing) -> Option<Frame> {
    match framing {
        Framing::Sse => None,
        _ => Some(envelope(framing, |o| o.extend_from_slice(json::SHUTDOWN))),
    }
}

/// A body stream's heartbeat: SSE's comment line, ndjson's empty line. (A WebSocket's
/// is a ping: see `websocket`.)
pub fn heartbeat(framing: Framing) -> &'static [u8] {
    match framing {
        Framing::Ndjson => b"\n",
        _ => framing.heartbeat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(payload: &[u8]) -> Event<'_> {
        Event {
            id: 7,
            channel: "c",
            payload,
        }
    }

    #[test]
    fn json_transports_carry_the_envelope_unframed() {
        let line = message(Framing::Ndjson, &ev(b"a\nb"), true).into_body();
        assert_eq!(
            &line[..],
            b"{\"id\":\"7\",\"channel\":\"c\",\"data\":\"a\\u000ab\"}\n"
        );
        let text = message(Framing::WebSocket, &ev(b"\xff"), false).into_text();
        assert_eq!(
            text.as_str(),
            "{\"id\":\"7\",\"channel\":\"c\",\"data\":\"/w==\",\"encoding\":\"base64\"}"
        );
        assert_eq!(
            lost(Framing::WebSocket, 9).into_text().as_str(),
            "{\"event\":\"lost\",\"next\":\"9\"}"
        );
        assert_eq!(
            &deleted(Framing::Ndjson, "c").into_body()[..],
            b"{\"event\":\"deleted\",\"channel\":\"c\"}\n"
        );
        assert_eq!(
            &expired(Framing::Ndjson).into_body()[..],
            b"{\"event\":\"expired\"}\n"
        );
        assert_eq!(
            shutdown(Framing::WebSocket).map(|f| f.into_text().to_string()),
            Some("{\"event\":\"shutdown\"}".to_string())
        );
        assert_eq!(heartbeat(Framing::Ndjson), b"\n");
    }

    #[test]
    fn sse_is_holdfasts_bytes() {
        let mut want = vec![];
        Framing::Sse.message(&mut want, &ev(b"x"), true);
        assert_eq!(message(Framing::Sse, &ev(b"x"), true).into_body(), want);
        assert!(shutdown(Framing::Sse).is_none());
        assert_eq!(heartbeat(Framing::Sse), Framing::Sse.heartbeat());
        let kinds = [
            kind(Framing::Sse, false),
            kind(Framing::Sse, true),
            kind(Framing::Ndjson, true),
            kind(Framing::WebSocket, false),
        ];
        assert_eq!(kinds, [0, 1, 2, 3]);
        assert!(kinds.iter().all(|&k| k < KINDS));
    }
}
