//! Stream framing: how a long-lived subscriber response carries messages and signals.
//!
//! Both servers open, feed and end every stream through [`Framing`]: the response head,
//! replayed and live messages, heartbeats, the gap (`lost`) and `deleted` signals, and
//! what is written when the server shuts down. Nothing else in either server knows a
//! stream's wire format: each transport is one variant here and one file beside this
//! one — [`sse`], [`ndjson`] (chunked newline-delimited JSON) and [`websocket`] — and
//! the last two share the [`json`] envelope.
//!
//! The bytes rendered here are what goes on a raw socket (the mio server). A server
//! whose HTTP library frames bodies itself (the tokio peer: hyper chunks, tungstenite
//! frames) renders the envelope with [`json`] and lets the library frame it.
//!
//! Rendering takes an [`Event`] (id, channel, payload), not the store's message type, and
//! writes into a caller-owned buffer: a message is rendered once per variant (and
//! per `named` flavour) and the bytes are shared by every stream that receives it.

pub mod json;
pub mod ndjson;
pub mod sse;
pub mod websocket;

use crate::store::Message;

/// A stream transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `text/event-stream` (see [`sse`]).
    Sse,
    /// `application/x-ndjson`, chunked (see [`ndjson`]).
    Ndjson,
    /// RFC 6455 (see [`websocket`]).
    WebSocket,
}

/// What a subscribe request asks for, as far as the transport goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asks {
    /// `Accept` lists `text/event-stream`.
    pub event_stream: bool,
    /// `Accept` lists `application/x-ndjson`, or the query says `?stream=ndjson`.
    pub ndjson: bool,
    /// `Upgrade: websocket` (checked separately: see [`websocket::check_upgrade`]).
    pub websocket: bool,
}

/// What a stream is given to render one message.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub id: u64,
    pub channel: &'a str,
    pub payload: &'a [u8],
}

impl<'a> From<&'a Message> for Event<'a> {
    fn from(m: &'a Message) -> Event<'a> {
        Event {
            id: m.id,
            channel: &m.channel,
            payload: &m.payload,
        }
    }
}

impl Framing {
    /// Number of variants (for tables indexed by [`index`](Framing::index)).
    pub const COUNT: usize = 3;

    /// `0..COUNT`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The framing a subscribe request asks for; `None` means a long-poll. An upgrade
    /// wins over `Accept`; `Accept: text/event-stream` over ndjson.
    pub fn for_request(asks: Asks) -> Option<Framing> {
        if asks.websocket {
            Some(Framing::WebSocket)
        } else if asks.event_stream {
            Some(Framing::Sse)
        } else if asks.ndjson {
            Some(Framing::Ndjson)
        } else {
            None
        }
    }

    /// The name `/stats` and logs use.
    pub fn name(self) -> &'static str {
        match self {
            Framing::Sse => "sse",
            Framing::Ndjson => "ndjson",
            Framing::WebSocket => "websocket",
        }
    }

    /// Response headers of the stream's `200` (besides `Date`). A server that renders its
    /// own head uses [`head`](Framing::head); one that builds responses through a
    /// library (the tokio peer) sets these.
    pub fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Framing::Sse => sse::HEADERS,
            Framing::Ndjson => ndjson::HEADERS,
            // The `101`'s headers depend on the request's key: see [`websocket::handshake`].
            Framing::WebSocket => &[],
        }
    }

    /// Whether the body ends only when the connection closes (so the connection cannot
    /// be kept alive after the stream).
    pub fn close_delimited(self) -> bool {
        match self {
            Framing::Sse => true,
            Framing::Ndjson | Framing::WebSocket => false,
        }
    }

    /// The first body bytes, before any message.
    pub fn preamble(self) -> &'static [u8] {
        match self {
            Framing::Sse => sse::PREAMBLE,
            Framing::Ndjson | Framing::WebSocket => b"",
        }
    }

    /// The whole response head (status line, `Date`, [`headers`](Framing::headers),
    /// `lines` — header lines rendered ahead, such as an allowed origin's CORS headers —
    /// blank line) followed by the [`preamble`](Framing::preamble). A WebSocket's is
    /// the `101` answering `ws_key` (the request's `Sec-WebSocket-Key`).
    pub fn head(self, out: &mut Vec<u8>, date: &[u8], lines: &[u8], ws_key: &[u8]) {
        if self == Framing::WebSocket {
            websocket::handshake(out, ws_key, date, lines);
            return;
        }
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nDate: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
        for (name, value) in self.headers() {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(lines);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.preamble());
    }

    /// One message; `named` marks a stream on more than one channel, whose messages
    /// must say which channel they came from.
    pub fn message(self, out: &mut Vec<u8>, ev: &Event<'_>, named: bool) {
        match self {
            Framing::Sse => sse::event(out, ev, named),
            Framing::Ndjson => ndjson::message(out, ev),
            Framing::WebSocket => websocket::message(out, ev),
        }
    }

    /// The gap signal, written just before the message with id `next_id`: messages the
    /// stream should have had before it are gone.
    pub fn lost(self, out: &mut Vec<u8>, next_id: u64) {
        match self {
            Framing::Sse => sse::lost(out, next_id),
            Framing::Ndjson => ndjson::lost(out, next_id),
            Framing::WebSocket => websocket::lost(out, next_id),
        }
    }

    /// The last bytes of a stream whose channel `channel` was deleted.
    pub fn deleted(self, out: &mut Vec<u8>, channel: &str) {
        match self {
            Framing::Sse => sse::deleted(out, channel),
            Framing::Ndjson => ndjson::deleted(out, channel),
            Framing::WebSocket => websocket::deleted(out, channel),
        }
    }

    /// The last bytes of a stream whose subscriber token expired: the client must
    /// come back with a fresh token (the same one now gets `401`).
    pub fn expired(self, out: &mut Vec<u8>) {
        match self {
            Framing::Sse => sse::expired(out),
            Framing::Ndjson => ndjson::expired(out),
            Framing::WebSocket => websocket::expired(out),
        }
    }

    /// Keeps proxies and clients from timing out an idle stream.
    pub fn heartbeat(self) -> &'static [u8] {
        match self {
            Framing::Sse => sse::HEARTBEAT,
            Framing::Ndjson => ndjson::HEARTBEAT,
            Framing::WebSocket => websocket::PING,
        }
    }

    /// The last bytes of a stream the server ends because it is shutting down. SSE has
    /// none: the close ends the stream and EventSource reconnects after `retry:`.
    pub fn shutdown(self, out: &mut Vec<u8>) {
        match self {
            Framing::Sse => {
                let _ = out;
            }
            Framing::Ndjson => ndjson::shutdown(out),
            Framing::WebSocket => websocket::shutdown(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sse_head_is_close_delimited_and_carries_the_preamble() {
        let mut out = vec![];
        Framing::Sse.head(&mut out, b"Thu, 01 Jan 1970 00:00:00 GMT", b"", b"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\
             Content-Type: text/event-stream\r\nCache-Control: no-store\r\n\
             X-Accel-Buffering: no\r\nConnection: close\r\n\r\nretry: 2000\n\n"
        );
        assert!(Framing::Sse.close_delimited());
        let asks = |event_stream, ndjson, websocket| Asks {
            event_stream,
            ndjson,
            websocket,
        };
        assert_eq!(
            Framing::for_request(asks(true, true, false)),
            Some(Framing::Sse)
        );
        assert_eq!(
            Framing::for_request(asks(false, true, false)),
            Some(Framing::Ndjson)
        );
        assert_eq!(
            Framing::for_request(asks(true, true, true)),
            Some(Framing::WebSocket)
        );
        assert_eq!(Framing::for_request(Asks::default()), None);
        let mut out = vec![];
        Framing::Sse.shutdown(&mut out);
        assert!(out.is_empty());
    }
}
