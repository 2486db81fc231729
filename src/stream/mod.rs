//! Stream framing: how a long-lived subscriber response carries messages and signals.
//!
//! Both servers open, feed and end every stream through [`Framing`]: the response head,
//! replayed and live messages, heartbeats, the gap (`lost`) and `deleted` signals, and
//! what is written when the server shuts down. Nothing else in either server knows a
//! stream's wire format, so a new transport (chunked newline-delimited JSON, WebSocket)
//! is one more variant here and one more file beside `sse.rs`.
//!
//! Rendering takes an [`Event`] (id, channel, payload), not the store's message type, and
//! writes into a caller-owned buffer: a message is rendered once per variant (and
//! per `named` flavour) and the bytes are shared by every stream that receives it.

pub mod sse;

use crate::store::Message;

/// A stream transport. SSE is the only one today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `text/event-stream` (see [`sse`]).
    Sse,
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
    pub const COUNT: usize = 1;

    /// `0..COUNT`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The framing a subscribe request asks for, from what its `Accept` header lists;
    /// `None` means a long-poll.
    pub fn for_request(accepts_event_stream: bool) -> Option<Framing> {
        accepts_event_stream.then_some(Framing::Sse)
    }

    /// Response headers of the stream's `200` (besides `Date`). A server that renders its
    /// own head uses [`head`](Framing::head); one that builds responses through a
    /// library (the tokio peer) sets these.
    pub fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Framing::Sse => sse::HEADERS,
        }
    }

    /// Whether the body ends only when the connection closes (so the connection cannot
    /// be kept alive after the stream).
    pub fn close_delimited(self) -> bool {
        match self {
            Framing::Sse => true,
        }
    }

    /// The first body bytes, before any message.
    pub fn preamble(self) -> &'static [u8] {
        match self {
            Framing::Sse => sse::PREAMBLE,
        }
    }

    /// The whole response head (status line, `Date`, [`headers`](Framing::headers),
    /// `lines` — header lines rendered ahead, such as an allowed origin's CORS headers —
    /// blank line) followed by the [`preamble`](Framing::preamble).
    pub fn head(self, out: &mut Vec<u8>, date: &[u8], lines: &[u8]) {
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
        }
    }

    /// The gap signal, written just before the message with id `next_id`: messages the
    /// stream should have had before it are gone.
    pub fn lost(self, out: &mut Vec<u8>, next_id: u64) {
        match self {
            Framing::Sse => sse::lost(out, next_id),
        }
    }

    /// The last bytes of a stream whose channel `channel` was deleted.
    pub fn deleted(self, out: &mut Vec<u8>, channel: &str) {
        match self {
            Framing::Sse => sse::deleted(out, channel),
        }
    }

    /// The last bytes of a stream whose subscriber token expired: the client must
    /// come back with a fresh token (the same one now gets `401`).
    pub fn expired(self, out: &mut Vec<u8>) {
        match self {
            Framing::Sse => sse::expired(out),
        }
    }

    /// Keeps proxies and clients from timing out an idle stream.
    pub fn heartbeat(self) -> &'static [u8] {
        match self {
            Framing::Sse => sse::HEARTBEAT,
        }
    }

    /// The last bytes of a stream the server ends because it is shutting down. SSE has
    /// none: the close ends the stream and EventSource reconnects after `retry:`.
    pub fn shutdown(self, out: &mut Vec<u8>) {
        match self {
            Framing::Sse => {
                let _ = out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sse_head_is_close_delimited_and_carries_the_preamble() {
        let mut out = vec![];
        Framing::Sse.head(&mut out, b"Thu, 01 Jan 1970 00:00:00 GMT", b"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\
             Content-Type: text/event-stream\r\nCache-Control: no-store\r\n\
             X-Accel-Buffering: no\r\nConnection: close\r\n\r\nretry: 2000\n\n"
        );
        assert!(Framing::Sse.close_delimited());
        assert_eq!(Framing::for_request(true), Some(Framing::Sse));
        assert_eq!(Framing::for_request(false), None);
        let mut out = vec![];
        Framing::Sse.shutdown(&mut out);
        assert!(out.is_empty());
    }
}
