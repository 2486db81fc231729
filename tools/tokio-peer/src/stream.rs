//! A stream's response body (an SSE event stream today).
//!
//! Owns one open stream: the first frame (the framing's preamble plus every buffered
//! message newer than the cursor, rendered when the stream opened), then what the
//! [`hub`](crate::hub) queues for it, then heartbeats. hyper polls the body only when it
//! has room to write, so the queue is where a slow reader's backlog builds up; the hub
//! counts bytes in and this body counts bytes out (the cut-off rule is in
//! `guard_io::ConnShared::queue`).
//!
//! Every byte of the stream comes from holdfast's [`Framing`] (for SSE: `id:`, `event:`
//! for multi-channel streams, one `data:` per line, base64 `event: binary` for
//! non-UTF-8 payloads, `event: lost` before the first message after a gap,
//! `event: deleted` then end, `event: expired` then end when the subscriber token runs
//! out); this body only decides when to send what.
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

use crate::guard_io::{ConnShared, InFlight, ParkGuard};
use crate::hub::{StreamItem, StreamReg};
use crate::server::App;

/// Everything an open stream holds on to; released on drop.
pub struct StreamGuard {
    pub app: Arc<App>,
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
        dec(&self.app.stats.sse_streams);
    }
}

/// The body of a stream response; see the module docs.
pub struct StreamBody {
    /// The stream's wire format: every byte below is rendered by it.
    framing: Framing,
    /// Sent before anything else.
    first: Option<Bytes>,
    /// A message's frame, held back behind the gap frame (`lost`) that precedes it.
    pending: Option<Bytes>,
    rx: mpsc::UnboundedReceiver<StreamItem>,
    /// The connection: the stream's backlog accounting.
    conn: Arc<ConnShared>,
    heartbeat: Interval,
    /// The token's expiry: then `event: expired`, and the stream ends. Boxed (a
    /// `Sleep` is `!Unpin`), and only for a stream that has a token.
    expiry: Option<Pin<Box<Sleep>>>,
    /// Id of the last message sent.
    cursor: u64,
    /// A gap seen when the stream opened, announced before the next event.
    lost: bool,
    done: bool,
    guard: StreamGuard,
}

/// Where a stream starts.
pub struct Start {
    /// The preamble and every buffered message newer than the request's cursor.
    pub first: Bytes,
    /// Id of the last message in `first`, or the store's cursor if there is none.
    pub cursor: u64,
    /// A gap seen when the stream opened, announced before the next message.
    pub lost: bool,
    /// Its subscriber token's expiry (`--subscribe-key`): the stream ends then.
    pub expires: Option<Instant>,
}

impl StreamBody {
    pub fn new(
        framing: Framing,
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
            first: Some(start.first),
            pending: None,
            rx,
            conn,
            heartbeat,
            expiry: start
                .expires
                .map(|at| Box::pin(tokio::time::sleep_until(at))),
            cursor: start.cursor,
            lost: start.lost,
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
        if let Some(b) = this.first.take().or_else(|| this.pending.take()) {
            return Self::data(b);
        }
        if this.conn.is_cut() {
            this.done = true;
            return Poll::Ready(Some(Err(io::Error::other(
                "stream fell more than --sse-max-backlog behind",
            ))));
        }
        // Past its token's expiry nothing more is sent, not even what is queued.
        if let Some(expiry) = this.expiry.as_mut() {
            if expiry.as_mut().poll(cx).is_ready() {
                this.done = true;
                inc(&this.guard.app.stats.streams_expired);
                let mut last = Vec::with_capacity(48);
                this.framing.expired(&mut last);
                return Self::data(last.into());
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
                    if id <= this.cursor {
                        continue; // already sent from the store's buffer
                    }
                    let lost = this.lost || (this.cursor != 0 && evicted_max > this.cursor);
                    this.lost = false;
                    this.cursor = id;
                    inc(&this.guard.app.stats.delivered);
                    if lost {
                        let mut gap = Vec::with_capacity(32);
                        this.framing.lost(&mut gap, id);
                        this.pending = Some(frame);
                        return Self::data(gap.into());
                    }
                    return Self::data(frame);
                }
                Poll::Ready(Some(StreamItem::Deleted { key, channel })) => {
                    if !this.guard.keys.contains(&key) {
                        continue; // an older incarnation, deleted before we registered
                    }
                    let mut last = Vec::with_capacity(32 + channel.len());
                    this.framing.deleted(&mut last, &channel);
                    this.done = true;
                    return Self::data(last.into());
                }
                // The hub dropped our sender: the server is shutting down.
                Poll::Ready(None) => {
                    this.done = true;
                    let mut last = Vec::new();
                    this.framing.shutdown(&mut last);
                    if last.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Self::data(last.into());
                }
                Poll::Pending => break,
            }
        }
        if this.heartbeat.poll_tick(cx).is_ready() {
            return Self::data(Bytes::from_static(this.framing.heartbeat()));
        }
        Poll::Pending
    }
}
