//! Delivery to waiting subscribers: the `blocked.c` of holdfast.
//!
//! Lifecycle of a waiting subscriber. A subscribe that finds nothing newer than its
//! cursor is registered by the store on every channel (under this worker's group) and
//! linked into this worker's park lists ([`Worker::link_waiter`]), then the state
//! machine parks it (long-poll) or makes it a stream. It leaves the lists in exactly one
//! of these ways, each through [`Worker::unpark`], which also unregisters it from the
//! store:
//! - a long-poll is answered once ([`Worker::answer_parked`]): a message (fan-out), its
//!   timeout (`204`), its channel deleted (`410`), or shutdown (`503`); then its
//!   pipelined input is resumed;
//! - a stream is ended ([`Worker::end_stream`]): its channel deleted, shutdown, its
//!   subscriber token expired, or a reader too slow for `--stream-max-backlog`;
//! - the client goes away (`socket.rs` closes it).
//!
//! Fan-out renders each message once per worker: the long-poll head once, each stream
//! framing (and `named` flavour) once on first use, and every subscriber gets the shared
//! bytes in one `writev`.

use bytes::Bytes;
use holdfast::http::respond;
use holdfast::park::NIL;
use holdfast::stats::{dec, inc};
use holdfast::store::{ChannelKey, Message};
use holdfast::stream::{Event, Framing};

use super::conn::{Input, Slots};
use super::routes::StreamStart;
use super::worker::Worker;

/// How a parked long-poll is answered.
pub enum Answer<'a> {
    /// A message: the shared head (rendered once per fan-out) and payload.
    Message {
        head: &'a [u8],
        payload: &'a Bytes,
        lost: bool,
    },
    /// Its hold time passed: `204` with the cursor.
    Timeout,
    /// Its channel was deleted: `410`.
    Deleted,
    /// The server is shutting down: `503` + `Retry-After`, then close.
    ShuttingDown,
}

/// Why a stream ends.
#[derive(Clone, Copy)]
pub enum End<'a> {
    /// This channel was deleted.
    Deleted(&'a str),
    /// The server is shutting down.
    Shutdown,
    /// Its subscriber token expired.
    Expired,
    /// A WebSocket closes with this code: the client closed (the same code echoed) or
    /// sent what it may not.
    Close(u16),
}

impl Worker {
    /// Links `key` into the park lists of the first `n` channels in `self.keys` (the store
    /// registered it there) and records its cursor. Long-poll and stream alike.
    pub(super) fn link_waiter(&mut self, key: usize, n: usize, cursor: u64) {
        let keys = self.keys;
        self.parking
            .park(&mut Slots(&mut self.conns), key as u32, &keys[..n]);
        self.conns[key].wait_from(cursor);
    }

    /// Starts the stream `key` whose head and replay `routes.rs` rendered into `out`:
    /// writes them (queued behind any earlier response still unsent) and links the
    /// connection on its channels.
    pub(super) fn start_stream(&mut self, key: usize, start: StreamStart) {
        self.send_out(key, None);
        self.link_waiter(key, start.channels, start.cursor);
        let input = Input::Streaming {
            framing: start.framing,
            named: start.channels > 1,
            lost: start.lost,
            expiry: start.expiry,
            unix_ms: self.unix_ms,
        };
        self.step(key, input);
        inc(self.shared.stats.streams(start.framing));
    }

    /// Takes `key` off every park list and out of the store's subscriber counts.
    pub(super) fn unpark(&mut self, key: usize) {
        let store = &self.shared.store;
        let group = self.group;
        self.parking
            .unpark(&mut Slots(&mut self.conns), key as u32, |k, emptied| {
                store.unsubscribe(k, group, 1, emptied)
            });
        let streaming = self.conns[key].framing();
        self.step(key, Input::Unparked);
        if let Some(framing) = streaming {
            dec(self.shared.stats.streams(framing));
        } else {
            dec(&self.shared.stats.parked);
        }
    }

    /// Answers the parked long-poll `key` — the one way a long-poll is answered.
    pub(super) fn answer_parked(&mut self, key: usize, answer: Answer<'_>) {
        let c = &self.conns[key];
        let shutting_down = matches!(answer, Answer::ShuttingDown);
        let close = c.closing() || shutting_down;
        let cursor = c.cursor();
        let gen = c.gen();
        let origin = c.origin();
        self.unpark(key);
        // Only a cross-origin poll pays for holding the lines past `&mut self` calls.
        let shared = (origin != 0).then(|| self.shared.clone());
        let cors = shared
            .as_ref()
            .and_then(|s| s.cors.as_ref())
            .map_or(&b""[..], |c| c.lines(origin));
        match answer {
            Answer::Message {
                head,
                payload,
                lost,
            } => {
                self.send(
                    key,
                    &[head, cors, respond::message_tail(lost, close)],
                    Some(payload),
                );
                inc(&self.shared.stats.delivered);
            }
            Answer::Timeout => {
                self.out.clear();
                respond::timeout(&mut self.out, cursor, &self.date, close, cors);
                self.send_out(key, None);
                inc(&self.shared.stats.poll_timeouts);
            }
            Answer::Deleted => {
                self.out.clear();
                respond::simple_with(
                    &mut self.out,
                    410,
                    &self.date,
                    close,
                    &[],
                    cors,
                    Some(b"text/plain; charset=utf-8"),
                    b"channel deleted\n",
                );
                self.send_out(key, None);
            }
            Answer::ShuttingDown => {
                self.render_shutting_down(cors);
                self.send_out(key, None);
            }
        }
        self.request_done(key, close);
        if shutting_down {
            self.settle(key);
        } else {
            // Pipelined requests behind it, later in this loop iteration.
            self.resume.push((key as u32, gen));
        }
    }

    /// The parked long-poll `key` reached its hold time.
    pub(super) fn poll_timed_out(&mut self, key: usize) {
        self.answer_parked(key, Answer::Timeout);
    }

    /// Ends the stream `key`: unlinks it, writes its framing's last words, and closes
    /// once they are written.
    pub(super) fn end_stream(&mut self, key: usize, why: End<'_>) {
        let Some(framing) = self.conns[key].framing() else {
            return;
        };
        self.unpark(key);
        self.out.clear();
        match why {
            End::Deleted(channel) => framing.deleted(&mut self.out, channel),
            End::Shutdown => framing.shutdown(&mut self.out),
            End::Expired => {
                framing.expired(&mut self.out);
                inc(&self.shared.stats.streams_expired);
            }
            End::Close(code) => holdfast::stream::websocket::close(&mut self.out, code),
        }
        if !self.out.is_empty() {
            self.send_out(key, None);
        }
        self.step(key, Input::Ended);
        self.settle(key);
    }

    /// Writes `msg` to every subscriber on channel `key` whose cursor is older: parked
    /// long-polls are answered, streams get one more message.
    pub(super) fn fan_out(&mut self, key: ChannelKey, msg: &Message, evicted_max: u64) {
        let mut node = self.parking.first(key);
        if node == NIL {
            return;
        }
        let ev = Event::from(msg);
        self.out.clear();
        respond::message_head(&mut self.out, &ev, msg.content_type.as_deref(), &self.date);
        let head = std::mem::take(&mut self.out);
        // Stream frames, rendered on first use: one per framing and `named` flavour.
        let mut frames: [Option<Bytes>; 2 * Framing::COUNT] = Default::default();
        while node != NIL {
            let next = self.parking.next(&mut Slots(&mut self.conns), node);
            let ck = self.parking.conn_of(node) as usize;
            let c = &self.conns[ck];
            if msg.id > c.cursor() {
                let lost = c.gap_before(evicted_max);
                match c.framing() {
                    Some(framing) => {
                        let named = c.named();
                        let frame = frames[framing.index() * 2 + usize::from(named)]
                            .get_or_insert_with(|| {
                                let mut v = Vec::with_capacity(msg.payload.len() + 64);
                                framing.message(&mut v, &ev, named);
                                Bytes::from(v)
                            })
                            .clone();
                        self.conns[ck].delivered(msg.id);
                        // Empty (no allocation) unless a gap must be told first.
                        let mut gap = Vec::new();
                        if lost {
                            framing.lost(&mut gap, msg.id);
                        }
                        self.send(ck, &[&gap], Some(&frame));
                        inc(&self.shared.stats.delivered);
                        self.stream_overflowed(ck);
                    }
                    None => {
                        let answer = Answer::Message {
                            head: &head,
                            payload: &msg.payload,
                            lost,
                        };
                        self.answer_parked(ck, answer);
                    }
                }
            }
            node = next;
        }
        self.out = head;
    }

    /// Channel `key` was deleted: its long-polls get `410`, its streams end.
    pub(super) fn channel_deleted(&mut self, key: ChannelKey, channel: &str) {
        loop {
            let node = self.parking.first(key);
            if node == NIL {
                return;
            }
            let ck = self.parking.conn_of(node) as usize;
            if self.conns[ck].framing().is_some() {
                self.end_stream(ck, End::Deleted(channel));
            } else {
                self.answer_parked(ck, Answer::Deleted);
            }
        }
    }

    /// Writes a heartbeat on the stream `key` and re-arms its timer `ms` from now.
    pub(super) fn heartbeat(&mut self, key: usize, ms: u64) {
        let Some(framing) = self.conns[key].framing() else {
            return;
        };
        self.send(key, &[framing.heartbeat()], None);
        if self.stream_overflowed(key) {
            return;
        }
        self.wheel
            .insert(&mut Slots(&mut self.conns), key as u32, self.now + ms);
    }

    /// Closes a stream whose write failed or whose unsent bytes passed
    /// `--stream-max-backlog` (a reader that stopped reading). Returns true if closed; the
    /// client resumes with its cursor.
    pub(super) fn stream_overflowed(&mut self, key: usize) -> bool {
        let c = &self.conns[key];
        let backlog = c.io.as_ref().map_or(0, |io| io.output_bytes());
        if c.is_dead() || backlog > self.shared.stream_max_backlog {
            self.close(key);
            return true;
        }
        false
    }

    /// Shutdown begins: parked polls get `503`, streams end, idle connections close,
    /// the rest finish their current request and close.
    pub(super) fn shut_down_conn(&mut self, key: usize) {
        let c = &self.conns[key];
        if c.framing().is_some() {
            self.end_stream(key, End::Shutdown);
        } else if c.is_waiting() {
            self.answer_parked(key, Answer::ShuttingDown);
        } else if c.phase() == super::conn::Phase::Backplane {
            // Its reply may never come now: answered as unavailable, then closed.
            self.backplane_answered(key, super::backplane::Reply::Unavailable);
            if self.conns.contains(key) {
                self.step(key, Input::CloseAfter);
                self.settle(key);
            }
        } else if c.phase() == super::conn::Phase::Idle && !c.has_input() {
            self.close(key);
        } else {
            self.step(key, Input::CloseAfter);
        }
    }
}
