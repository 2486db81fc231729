//! Wake-ups from publishers to subscribers: the peer's [`Notifier`], the store's one way
//! of telling the server about messages and deleted channels.
//!
//! The store routes notes to subscriber [`Group`]s (holdfast has one per worker thread).
//! The peer has exactly one, this hub: every long-poll and stream registers in the store
//! under [`Hub::group`], and every note comes here.
//!
//! Owns, per channel name that has someone waiting on it (one `HashMap` behind a
//! `Mutex`):
//! - a [`Signal`]: a `tokio::sync::Notify` that parked long-polls wait on, plus the
//!   highest generation of a deleted incarnation of the channel. A publish calls
//!   `notify_waiters`; each woken poll re-reads the store, which stays the single source
//!   of truth for "the oldest message newer than my cursor" and for gap detection. A
//!   parked poll therefore holds only its `Notified` futures (one small box per channel)
//!   and no message queue — the lean choice for the case holdfast is built around.
//! - the streams on the channel: one unbounded `mpsc` sender per stream, fed in publish
//!   order (the store calls us under its lock), with the rendered frame shared by every
//!   stream (rendered once per message and transport, and for SSE per `named` flavour:
//!   see [`frames`]). Streams
//!   get the message itself rather than a wake-up, so a burst of publishes never outruns
//!   a stream's task and turns into a gap (`event: lost`); what bounds a stream is its
//!   byte backlog (`--stream-max-backlog`): the publisher counts bytes in, the stream
//!   (an SSE or ndjson body, a WebSocket task) counts bytes out, and a stream over the
//!   limit while its socket refuses writes is cut by aborting its connection (the rule
//!   is in `guard_io::ConnShared::queue`).
//!
//! Lock order: the store lock, then the hub lock (the store calls [`Notifier::note`] while
//! holding its lock). Subscribers take the two one at a time, never nested.
//!
//! No publish is missed between a subscriber's check and its wait: a long-poll creates
//! and enables its `Notified` futures before it asks the store, and a stream is in the
//! hub before the store registers it; messages a stream receives twice (from the store's
//! buffer and as a note) are dropped by id.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use holdfast::store::{ChannelKey, Group, Groups, Note, Notifier};
use holdfast::stream::{Event, Framing};
use slab::Slab;
use tokio::sync::futures::Notified;
use tokio::sync::{mpsc, Notify};

use crate::frames::{self, Frame};
use crate::guard_io::ConnShared;

/// What long-polls on one channel wait for.
#[derive(Default)]
pub struct Signal {
    notify: Notify,
    /// Highest generation of a deleted incarnation of this channel (0: none).
    deleted_gen: AtomicU32,
}

/// What the hub sends a stream.
pub enum StreamItem {
    /// A published message, already rendered for this stream's transport.
    Message {
        id: u64,
        evicted_max: u64,
        frame: Frame,
    },
    /// An incarnation of one of the stream's channels was deleted.
    Deleted { key: ChannelKey, channel: Arc<str> },
}

struct StreamTx {
    tx: mpsc::UnboundedSender<StreamItem>,
    framing: Framing,
    /// Subscribed to more than one channel: frames name the channel.
    named: bool,
    /// The stream's connection: its backlog, and (one stream per connection: a stream
    /// ends its connection) its identity.
    conn: Arc<ConnShared>,
}

impl StreamTx {
    fn push(&self, item: StreamItem, len: usize) {
        if self.conn.queue(len) {
            // A send fails only if the body is gone, and then its registration is going
            // too.
            let _ = self.tx.send(item);
        }
    }
}

#[derive(Default)]
struct Entry {
    signal: Arc<Signal>,
    streams: Slab<StreamTx>,
}

impl Entry {
    /// Nobody but the hub refers to it.
    fn unused(&self) -> bool {
        Arc::strong_count(&self.signal) == 1 && self.streams.is_empty()
    }
}

#[derive(Default)]
struct Inner {
    channels: HashMap<Arc<str>, Entry>,
    /// Shutting down: no new streams.
    closed: bool,
}

impl Inner {
    fn entry(&mut self, name: &str) -> (Arc<str>, &mut Entry) {
        let key = match self.channels.get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(name);
                self.channels.insert(k.clone(), Entry::default());
                k
            }
        };
        let entry = self
            .channels
            .get_mut(&key)
            .unwrap_or_else(|| unreachable!("entry inserted above"));
        (key, entry)
    }

    fn drop_if_unused(&mut self, name: &str) {
        if self.channels.get(name).is_some_and(Entry::unused) {
            self.channels.remove(name);
        }
    }
}

pub struct Hub {
    inner: Mutex<Inner>,
    max_backlog: usize,
    group: Group,
}

impl Hub {
    /// Built before the store, which takes it as its notifier.
    pub fn new(max_backlog: usize) -> Arc<Hub> {
        Arc::new(Hub {
            inner: Mutex::default(),
            max_backlog,
            group: Group::new(0).unwrap_or_else(|| unreachable!("the store has group 0")),
        })
    }

    /// The store's subscriber group for everything the hub wakes: the peer's only one.
    pub fn group(&self) -> Group {
        self.group
    }

    /// `--stream-max-backlog`.
    pub fn max_backlog(&self) -> usize {
        self.max_backlog
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (every update is one
        // insert or remove), so keep serving rather than poisoning every request.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The signals of `names` (in order), for a long-poll about to park.
    pub fn watch(self: &Arc<Self>, names: &[&str]) -> Watch {
        let mut g = self.lock();
        let signals = names
            .iter()
            .map(|n| {
                let (name, e) = g.entry(n);
                (name, e.signal.clone())
            })
            .collect();
        Watch {
            hub: self.clone(),
            signals,
        }
    }

    /// Registers a stream on `names`, framed with `framing`; `None` once shutdown has
    /// begun.
    pub fn add_stream(
        self: &Arc<Self>,
        names: &[&str],
        framing: Framing,
        tx: mpsc::UnboundedSender<StreamItem>,
        conn: Arc<ConnShared>,
    ) -> Option<StreamReg> {
        let mut g = self.lock();
        if g.closed {
            return None;
        }
        let named = names.len() > 1;
        let slots = names
            .iter()
            .map(|n| {
                let (name, e) = g.entry(n);
                let slot = e.streams.insert(StreamTx {
                    tx: tx.clone(),
                    framing,
                    named,
                    conn: conn.clone(),
                });
                (name, slot)
            })
            .collect();
        Some(StreamReg {
            hub: self.clone(),
            conn,
            slots,
        })
    }

    /// Shutdown: drops every stream's senders, which ends their bodies.
    pub fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        for e in g.channels.values_mut() {
            e.streams.clear();
        }
        g.channels.retain(|_, e| !e.unused());
    }
}

impl Notifier for Hub {
    /// Called by the store with its lock held, in id order: wakes the channel's parked
    /// long-polls and queues the message (framed) or the deletion for its streams.
    fn note(&self, _: Groups, note: Note) {
        let g = self.lock();
        match note {
            Note::Message {
                msg, evicted_max, ..
            } => {
                let Some(e) = g.channels.get(&*msg.channel) else {
                    return;
                };
                e.signal.notify.notify_waiters();
                // Rendered on first use, once per transport (and SSE flavour).
                let mut rendered: [Option<Frame>; frames::KINDS] = Default::default();
                let ev = Event::from(&*msg);
                for (_, s) in e.streams.iter() {
                    let frame = rendered[frames::kind(s.framing, s.named)]
                        .get_or_insert_with(|| frames::message(s.framing, &ev, s.named))
                        .clone();
                    let len = frame.len();
                    let item = StreamItem::Message {
                        id: msg.id,
                        evicted_max,
                        frame,
                    };
                    s.push(item, len);
                }
            }
            Note::Deleted { key, channel } => {
                let Some(e) = g.channels.get(&*channel) else {
                    return;
                };
                e.signal
                    .deleted_gen
                    .fetch_max(key.generation(), Ordering::AcqRel);
                e.signal.notify.notify_waiters();
                for (_, s) in e.streams.iter() {
                    let item = StreamItem::Deleted {
                        key,
                        channel: channel.clone(),
                    };
                    s.push(item, 0);
                }
            }
        }
    }

    /// Nothing left to do once the store's lock is released. tokio's wake-ups are the
    /// `Waker::wake` calls inside `notify_waiters` and the `mpsc` sends in
    /// [`note`](Notifier::note): they schedule the woken tasks on the runtime (at most
    /// unparking an idle worker) and cannot be separated from the hand-off itself, which
    /// must happen under the lock to keep id order.
    fn wake(&self, _: Groups) {}
}

/// A long-poll's hold on the signals of its channels; released on drop.
pub struct Watch {
    hub: Arc<Hub>,
    signals: Vec<(Arc<str>, Arc<Signal>)>,
}

impl Watch {
    /// Fresh `Notified` futures for every channel, enabled, so that a publish from now
    /// on wakes them even before they are first polled.
    pub fn arm(&self) -> Armed<'_> {
        Armed(
            self.signals
                .iter()
                .map(|(_, s)| {
                    let mut n = Box::pin(s.notify.notified());
                    n.as_mut().enable();
                    n
                })
                .collect(),
        )
    }

    /// Whether the channel incarnation of any of `keys` (one per channel, same order)
    /// has been deleted.
    pub fn deleted(&self, keys: &[ChannelKey]) -> bool {
        self.signals
            .iter()
            .zip(keys)
            .any(|((_, s), &k)| s.deleted_gen.load(Ordering::Acquire) >= k.generation())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut g = self.hub.lock();
        for (name, signal) in self.signals.drain(..) {
            drop(signal);
            g.drop_if_unused(&name);
        }
    }
}

/// Armed wake-ups for one wait; see [`Watch::arm`].
pub struct Armed<'a>(Vec<Pin<Box<Notified<'a>>>>);

impl Armed<'_> {
    /// Resolves when any of the channels was notified.
    pub async fn any(&mut self) {
        std::future::poll_fn(|cx| {
            for n in &mut self.0 {
                if n.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await;
    }
}

/// A stream's registration in the hub; removed on drop.
pub struct StreamReg {
    hub: Arc<Hub>,
    conn: Arc<ConnShared>,
    slots: Vec<(Arc<str>, usize)>,
}

impl Drop for StreamReg {
    fn drop(&mut self) {
        let mut g = self.hub.lock();
        for (name, slot) in self.slots.drain(..) {
            if let Some(e) = g.channels.get_mut(&name) {
                // After `close` the slot may be empty (or, in theory, reused): only
                // remove our own sender.
                if e.streams
                    .get(slot)
                    .is_some_and(|s| Arc::ptr_eq(&s.conn, &self.conn))
                {
                    e.streams.remove(slot);
                }
            }
            g.drop_if_unused(&name);
        }
    }
}
