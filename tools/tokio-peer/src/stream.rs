//! A stream's response body (an SSE event stream or an ndjson stream), and what every
//! stream holds on to ([`StreamGuard`]) and where it is in the id sequence
//! ([`Position`]), shared with the WebSocket task (`websocket.rs`).
//!
//! Owns one open body stream: the first frame (the framing's preamble plus every
//! buffered message newer than the cursor, rendered when the stream opened), then what
//! the [`hub`](crate::hub) queues for it, then heartbeats. hyper polls the body only
//! when it has room to write, so the queue is where a slow reader's backlog builds up;
//! the hub counts bytes in and this body counts bytes out (the cut-off rule is in
//! `guard_io::ConnShared::queue`).
//!
//! Every byte comes from holdfast's renderers through [`frames`]: for SSE holdfast's
//! [`Framing`] bytes (`id:`, `event:` for multi-channel streams, one `data:` per line,
//! base64 `event: binary` for non-UTF-8 payloads, `event: lost` before the first
//! message after a gap, `event: deleted` then end, `event: expired` then end when the
//! subscriber token runs out); for ndjson one JSON envelope line per message or signal,
//! an empty line as the heartbeat, and the signal line then the end of the body on
//! deleted / expired / shutdown, which hyper frames (chunked) and terminates. This body
//! only decides when to send what.
//!
//! The body holds the stream's [`StreamGuard`]: when hyper drops the body (the client
//! left, the stream ended, the connection was cut) the stream leaves the hub and the store
//! and the counters drop.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use holdfast::stats::{dec, inc};
use holdfast::store::ChannelKey;
use holdfast::stream::Framing;
use hyper::body::Frame;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};

use crate::frames;
use crate::guard_io::{ConnShared, InFlight, ParkGuard};
use crate::hub::{StreamItem, StreamReg};
use crate::server::App;

/// Everything an open stream holds on to; released on drop.
pub struct StreamGuard {
    pub app: Arc<App>,
    /// Its transport: which `/stats` gauge counts it.
    pub framing: Framing,
    pub _reg: StreamReg,
    /// The stream's registration in the store, one key per channel.
    pub keys: Vec<ChannelKey>,
    /// An open stream is parked: the client's EOF ends it.
    pub _park: ParkGuard,
    /// Keeps the connection "busy" for the socket wrapper (no idle deadline).
    pub _flight: InFlight,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // `false`: see `subscribe::Parked`.
        let group = self.app.hub.group();
        for &key in &self.keys {
            self.app.store.unsubscribe(key, group, 1, false);
        }
        dec(self.app.stats.streams(self.framing));
    }
}

/// Where a stream is in the id sequence: the last id it sent, and a gap still to be
/// announced.
pub struct Position {
    cursor: u64,
    lost: bool,
}

impl Position {
    /// `cursor`: the last id sent (or the store's cursor); `lost`: a gap seen when the
    /// stream opened, announced before the next message.
    pub fn new(cursor: u64, lost: bool) -> Position {
        Position { cursor, lost }
    }

    /// A message the hub queued: `None` if it was already sent (from the store's buffer
    /// when the stream opened), else whether a gap comes before it.
    pub fn advance(&mut self, id: u64, evicted_max: u64) -> Option<bool> {
        if id <= self.cursor {
            return None;
        }
        let lost = self.lost || (self.cursor != 0 && evicted_max > self.cursor);
        self.lost = false;
        self.cursor = id;
        Some(lost)
    }
}

/// The body of a stream response; see the module docs.
pub struct StreamBody {
    /// The stream's wire format: every byte below is rendered by it.
    framing: Framing,
    /// Sent before anything else, one body frame each (hyper makes each an ndjson
    /// chunk).
    first: std::vec::IntoIter<Bytes>,
    /// A message's frame, held back behind the gap frame (`lost`) that precedes it.
    pending: Option<Bytes>,
    rx: mpsc::UnboundedReceiver<StreamItem>,
    /// The connection: the stream's backlog accounting.
    conn: Arc<ConnShared>,
    heartbeat: Interval,
    /// The token's expiry: then `event: expired`, and the stream ends. Boxed (a
    /// `Sleep` is `!Unpin`), and only for a stream that has a token.
    expiry: Option<Pin<Box<Sleep>>>,
    position: Position,
    done: bool,
    guard: StreamGuard,
}

/// Where a stream starts (after what it replays from the store's buffer).
pub struct Start {
    /// Id of the last message in `first`, or the store's cursor if there is none.
    pub cursor: u64,
    /// A gap seen when the stream opened, announced before the next message.
    pub lost: bool,
    /// Its subscriber token's expiry (`--subscribe-key`): the stream ends then.
    pub expires: Option<Instant>,
}

impl StreamBody {
    /// `first`: the preamble and every buffered message newer than the request's cursor,
    /// none of them empty (an empty frame would be an empty chunk: the end of a chunked
    /// body).
    pub fn new(
        framing: Framing,
        first: Vec<Bytes>,
        start: Start,
        rx: mpsc::UnboundedReceiver<StreamItem>,
        conn: Arc<ConnShared>,
        heartbeat: Duration,
        guard: StreamGuard,
    ) -> StreamBody {
        let mut heartbeat = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        StreamBody {
            framing,
            first: first.into_iter(),
            pending: None,
            rx,
            conn,
            heartbeat,
            expiry: start
                .expires
                .map(|at| Box::pin(tokio::time::sleep_until(at))),
            position: Position::new(start.cursor, start.lost),
            done: false,
            guard,
        }
    }

    fn data(b: Bytes) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Poll::Ready(Some(Ok(Frame::data(b))))
    }
}

impl hyper::body::Body for StreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(b) = this.first.next().or_else(|| this.pending.take()) {
            return Self::data(b);
        }
        if this.conn.is_cut() {
            this.done = true;
            return Poll::Ready(Some(Err(io::Error::other(
                "stream fell more than --stream-max-backlog behind",
            ))));
        }
        // Past its token's expiry nothing more is sent, not even what is queued.
        if let Some(expiry) = this.expiry.as_mut() {
            if expiry.as_mut().poll(cx).is_ready() {
                this.done = true;
                inc(&this.guard.app.stats.streams_expired);
                return Self::data(frames::expired(this.framing).into_body());
            }
        }
        loop {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(StreamItem::Message {
                    id,
                    evicted_max,
                    frame,
                })) => {
                    this.conn.taken(frame.len());
                    let Some(lost) = this.position.advance(id, evicted_max) else {
                        continue; // already sent from the store's buffer
                    };
                    inc(&this.guard.app.stats.delivered);
                    let frame = frame.into_body();
                    if lost {
                        this.pending = Some(frame);
                        return Self::data(frames::lost(this.framing, id).into_body());
                    }
                    return Self::data(frame);
                }
                Poll::Ready(Some(StreamItem::Deleted { key, channel })) => {
                    if !this.guard.keys.contains(&key) {
                        continue; // an older incarnation, deleted before we registered
                    }
                    this.done = true;
                    return Self::data(frames::deleted(this.framing, &channel).into_body());
                }
                // The hub dropped our sender: the server is shutting down.
                Poll::Ready(None) => {
                    this.done = true;
                    return match frames::shutdown(this.framing) {
                        Some(last) => Self::data(last.into_body()),
                        None => Poll::Ready(None),
                    };
                }
                Poll::Pending => break,
            }
        }
        if this.heartbeat.poll_tick(cx).is_ready() {
            return Self::data(Bytes::from_static(frames::heartbeat(this.framing)));
        }
        Poll::Pending
    }
}
