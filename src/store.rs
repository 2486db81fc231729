//! The store: the channel registry and per-channel message buffers, shared by every
//! thread of a server.
//!
//! Owns: channels (name → bounded ring of messages), message ids, TTL eviction, gap
//! bookkeeping, and the count of subscribers per channel together with the set of
//! subscriber [`Groups`] that hold them. It does no I/O and knows nothing of threads or
//! sockets: callers pass `now` (milliseconds on any monotonic clock), and the store tells
//! the embedding server about new messages and deleted channels through the [`Notifier`]
//! it was built with — holdfast's workers (one group each) and the tokio peer's hub (one
//! group) each implement it.
//!
//! One publish path: [`Store::publish`] (the store assigns the id) and [`Store::append`]
//! (the id was assigned elsewhere, e.g. by a backplane) both append under the lock, hand
//! a [`Note`] to [`Notifier::note`] for the groups holding subscribers while the lock is
//! still held (so every group sees notes in id order), and call [`Notifier::wake`] once
//! after it is released (the wake-up is a syscall; it stays outside the lock).
//!
//! Invariants:
//! - Ids are strictly increasing across **all** channels: one counter, seeded from the
//!   wall clock in microseconds, advanced under the store lock.
//! - One lock covers the whole store. That is what makes a multi-channel cursor sound:
//!   with ids global, a subscriber's "oldest message newer than my cursor on any of these
//!   channels" must see every message with a smaller id already appended, and notes must
//!   reach each worker in id order. Per-channel locks would allow a higher id to become
//!   visible before a lower one on another channel, and a looping client would skip it.
//!   Cost: publish and subscribe each take the lock once for O(channels in the request);
//!   fan-out to parked subscribers happens in the workers, outside the lock.
//! - A cursor older than the store's first id comes from an earlier run of the process:
//!   what that run lost cannot be known, so its next delivery carries the gap signal.
//! - A channel with no buffered messages and no subscribers is freed at once. If it had
//!   evicted (or, deleted, dropped) messages, a tombstone keeps the newest such id, and
//!   the channel re-created under that name starts from it, so a client that comes back
//!   with an older cursor still gets `Messages-Lost` (see [`Tombstones`]).
//! - Every non-empty channel has exactly one entry in the expiry heap, whose time is no
//!   later than its oldest message's expiry; so the TTL sweep costs O(log channels) per
//!   channel it touches, and nothing per idle channel.
//! - Buffered messages are charged `payload + content type + MESSAGE_OVERHEAD` bytes
//!   against `max_bytes`; past it, the globally oldest messages are evicted first (a
//!   FIFO of ids in publish order, compacted when stale entries pile up), and their
//!   channels record the gap like any other eviction.
//! - At most `max_channels` channels exist; creating one more (publish, or a subscriber
//!   parking on a new name) is refused with [`TooManyChannels`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use slab::Slab;

/// Longest channel name.
pub const MAX_CHANNEL_NAME: usize = 128;
/// Most channels in one subscribe request.
pub const MAX_CHANNELS_PER_SUB: usize = 64;

/// Identifies one incarnation of a channel: a deleted and re-created channel gets a new
/// key, so a stale note or unsubscribe for the old one is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    slot: u32,
    gen: u32,
}

impl ChannelKey {
    /// A key that names no channel (an unused entry in a caller's array).
    pub const NONE: ChannelKey = ChannelKey {
        slot: u32::MAX,
        gen: 0,
    };

    /// The incarnation's generation. The store numbers every channel it creates from
    /// one counter, so a later incarnation of a name has a larger generation (until the
    /// counter wraps after 2^32 channel creations).
    pub fn generation(self) -> u32 {
        self.gen
    }

    /// A key for unit tests of code that only stores and compares keys.
    #[cfg(test)]
    pub(crate) fn test(n: u32) -> ChannelKey {
        ChannelKey { slot: n, gen: 1 }
    }
}

/// A subscriber group: whatever the embedding server routes notes to (holdfast: one
/// worker thread; the tokio peer: its one hub). At most [`MAX_GROUPS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group(u8);

/// Most subscriber groups a store tells apart (a `u64` set per channel).
pub const MAX_GROUPS: usize = 64;

impl Group {
    /// Group `i`; `None` if `i >= MAX_GROUPS`.
    pub fn new(i: usize) -> Option<Group> {
        (i < MAX_GROUPS).then_some(Group(i as u8))
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A set of [`Group`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Groups(u64);

impl Groups {
    pub const EMPTY: Groups = Groups(0);

    /// Groups `0..n`.
    pub fn first(n: usize) -> Groups {
        Groups(if n >= MAX_GROUPS {
            u64::MAX
        } else {
            (1u64 << n) - 1
        })
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn insert(&mut self, g: Group) {
        self.0 |= 1 << g.0;
    }

    fn remove(&mut self, g: Group) {
        self.0 &= !(1 << g.0);
    }

    /// Lowest index first.
    pub fn iter(self) -> impl Iterator<Item = Group> {
        let mut m = self.0;
        std::iter::from_fn(move || {
            if m == 0 {
                return None;
            }
            let g = m.trailing_zeros() as u8;
            m &= m - 1;
            Some(Group(g))
        })
    }
}

/// How the store tells its server about messages and deletions. Implemented by
/// holdfast's worker mailboxes and by the tokio peer's hub.
pub trait Notifier: Send + Sync {
    /// Called with the store lock held, in id order: hand `note` to each of `groups`.
    /// Must not block or call back into the store.
    fn note(&self, groups: Groups, note: Note);

    /// Called once per publish or delete after the lock is released, with the groups
    /// that were handed a note: wake them (coalescing is the implementation's business).
    fn wake(&self, groups: Groups);
}

/// A [`Notifier`] that drops everything (tests, benches, a store nobody waits on).
pub struct Silent;

impl Notifier for Silent {
    fn note(&self, _: Groups, _: Note) {}
    fn wake(&self, _: Groups) {}
}

/// `[A-Za-z0-9._~:@-]{1,128}`.
pub fn valid_channel_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"._~:@-".contains(&b))
}

/// One published message. Shared (`Arc`) between the buffer and every delivery; built
/// by the store when it is appended ([`Store::publish`], [`Store::append`]).
#[derive(Debug)]
pub struct Message {
    pub id: u64,
    pub channel: Arc<str>,
    /// As published; `None` means `application/octet-stream`.
    pub content_type: Option<Bytes>,
    pub payload: Bytes,
    expires_at: u64,
}

impl Message {
    /// A message that is delivered but not buffered here (a backplane read it from
    /// elsewhere).
    pub fn unbuffered(
        id: u64,
        channel: Arc<str>,
        content_type: Option<Bytes>,
        payload: Bytes,
    ) -> Message {
        Message {
            id,
            channel,
            content_type,
            payload,
            expires_at: 0,
        }
    }
}

/// What a group is told about a channel it has subscribers on.
#[derive(Debug, Clone)]
pub enum Note {
    /// A new message; `evicted_max` is the channel's newest evicted id at publish time
    /// (a subscriber whose cursor is below it has missed something).
    Message {
        key: ChannelKey,
        msg: Arc<Message>,
        evicted_max: u64,
    },
    /// The channel was deleted; its subscribers get 410 / `event: deleted`.
    Deleted { key: ChannelKey, channel: Arc<str> },
}

/// Where a subscriber starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// Messages with id greater than this (`0`: everything buffered).
    Since(u64),
    /// Only messages published after now.
    Latest,
}

/// Result of [`Store::subscribe`].
#[derive(Debug)]
pub enum Subscribed {
    /// The oldest message newer than the cursor on any of the channels.
    Ready { msg: Arc<Message>, lost: bool },
    /// Nothing to deliver. If `park` was requested, the subscriber is now registered on
    /// every channel (keys written to the caller's slice) and must later be
    /// unsubscribed. `cursor` is the effective cursor; `lost` says a gap already exists.
    Waiting { cursor: u64, lost: bool },
    /// Cluster mode: this store cannot vouch for the cursor on some of the channels (it
    /// does not hold them, or the cursor is older than its view of them); the answer
    /// must come from the backplane. Nothing was registered.
    Fetch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishInfo {
    pub id: u64,
    pub subscribers: u32,
    pub buffered: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub buffered: usize,
    pub subscribers: u32,
    pub first_id: u64,
    pub last_id: u64,
    pub evicted_max: u64,
    pub bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub channels: usize,
    pub messages_buffered: usize,
    pub bytes_buffered: usize,
    pub published: u64,
    pub last_id: u64,
    /// Bytes charged against the memory cap (payloads, content types, overhead).
    pub bytes_charged: usize,
    pub evicted_for_memory: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct StoreConfig {
    pub buffer_messages: usize,
    pub message_ttl_ms: u64,
    /// Cap on the bytes charged for buffered messages (see [`MESSAGE_OVERHEAD`]).
    pub max_bytes: usize,
    pub max_channels: usize,
}

impl StoreConfig {
    /// No memory or channel cap (tests, benches).
    pub fn unbounded(buffer_messages: usize, message_ttl_ms: u64) -> StoreConfig {
        StoreConfig {
            buffer_messages,
            message_ttl_ms,
            max_bytes: usize::MAX,
            max_channels: usize::MAX,
        }
    }
}

/// Bytes charged per buffered message beyond its payload and content type: the shared
/// `Message` allocation, its ring slot and its entry in the eviction FIFO.
pub const MESSAGE_OVERHEAD: usize = 128;

/// Why a publish was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishError {
    /// `--max-channels` refused a new channel.
    TooManyChannels,
    /// The store was closed for shutdown ([`Store::close`]).
    Closed,
}

/// Why [`Store::append`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendError {
    /// The id is not newer than `last`, the newest id the store has seen.
    IdNotNewer { last: u64 },
    /// Refused as a publish would be.
    Refused(PublishError),
}

/// The channel limit (`--max-channels`) refused a new channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyChannels;

fn charge(m: &Message) -> usize {
    m.payload.len() + m.content_type.as_ref().map_or(0, |c| c.len()) + MESSAGE_OVERHEAD
}

struct Channel {
    name: Arc<str>,
    gen: u32,
    ring: VecDeque<Arc<Message>>,
    /// Newest id evicted from this channel (0: none).
    evicted_max: u64,
    /// Newest id ever published here (0: none).
    last_id: u64,
    subscribers: u32,
    /// The groups holding subscribers here.
    groups: Groups,
    bytes: usize,
}

/// Freed channels' newest lost ids, so that freeing a channel never turns a gap into a
/// silent one.
///
/// Keyed by a 64-bit hash of the name (random keys per process): 16 bytes of data per
/// entry, about 48 with the table and the queue, at most [`TOMBSTONES`] entries. When
/// full, the oldest tombstone is folded into one of [`FOLD_BUCKETS`] buckets (by hash;
/// each keeps the largest id folded into it), which every channel created afterwards
/// under a name hashing there starts from. Both ways of losing precision err towards
/// saying `Messages-Lost` when nothing was lost (a hash collision keeps the larger id; a
/// bucket answers for every name that hashes to it), never the other way: after K more
/// tombstones than the table holds, a name never seen before gets a spurious gap for an
/// older cursor with probability about 1 - e^(-K / FOLD_BUCKETS). A re-created channel
/// reads its tombstone but does not consume it: ids only grow, so a later tombstone for
/// the name supersedes it.
struct Tombstones {
    hasher: RandomState,
    lost_max: HashMap<u64, u64>,
    /// Hashes in the order their first tombstone was laid.
    order: VecDeque<u64>,
    /// Largest lost id of the tombstones dropped from the table, per hash bucket;
    /// allocated when the first one is dropped.
    folded: Vec<u64>,
    cap: usize,
    buckets: usize,
}

/// Most tombstones kept exactly (about 3 MiB: the hash table's buckets and the queue).
const TOMBSTONES: usize = 65_536;
/// Buckets for tombstones dropped from the table (512 KiB once in use).
const FOLD_BUCKETS: usize = 65_536;

impl Tombstones {
    fn new(cap: usize, buckets: usize) -> Tombstones {
        Tombstones {
            hasher: RandomState::new(),
            lost_max: HashMap::new(),
            order: VecDeque::new(),
            folded: Vec::new(),
            cap: cap.max(1),
            buckets: buckets.max(1),
        }
    }

    /// Channel `name` is freed having lost messages up to id `lost`.
    fn bury(&mut self, name: &str, lost: u64) {
        if lost == 0 {
            return;
        }
        let h = self.hasher.hash_one(name);
        let e = self.lost_max.entry(h).or_insert_with(|| {
            self.order.push_back(h);
            0
        });
        *e = (*e).max(lost);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                if let Some(id) = self.lost_max.remove(&old) {
                    if self.folded.is_empty() {
                        self.folded = vec![0; self.buckets];
                    }
                    let b = &mut self.folded[(old % self.buckets as u64) as usize];
                    *b = (*b).max(id);
                }
            }
        }
    }

    /// The newest id a channel named `name` may have lost before it was (re-)created.
    fn lost_before(&self, name: &str) -> u64 {
        let h = self.hasher.hash_one(name);
        let own = self.lost_max.get(&h).copied().unwrap_or(0);
        let folded = self
            .folded
            .get((h % self.buckets as u64) as usize)
            .copied()
            .unwrap_or(0);
        own.max(folded)
    }
}

struct Inner {
    slots: Slab<Channel>,
    by_name: HashMap<Arc<str>, usize>,
    expiry: BinaryHeap<Reverse<(u64, ChannelKey)>>,
    next_gen: u32,
    last_id: u64,
    /// The id this store started above: every id at or below it was assigned before the
    /// store existed (an earlier run of the process), so a cursor below it cannot be
    /// vouched for.
    first_above: u64,
    published: u64,
    buffered: usize,
    bytes: usize,
    /// Bytes charged against `max_bytes`.
    charged: usize,
    /// Ids of buffered messages in publish order, for oldest-first eviction under the
    /// memory cap. May hold ids already evicted otherwise (skipped when popped).
    order: VecDeque<(u64, ChannelKey)>,
    /// Messages evicted to stay under the memory cap.
    evicted_for_memory: u64,
    /// Shutting down: publishes are refused.
    closed: bool,
    tombs: Tombstones,
    /// Cluster mode only (`None` standalone, where the store sees every message): per
    /// channel name, the cursor from which this store's view of the channel is complete
    /// — every message with a larger id is in the ring, was evicted (and counted in
    /// `evicted_max` or a tombstone), or will still be appended, in order. Set and
    /// lowered by the backplane ([`Store::cover`]); a subscribe whose cursor is older
    /// than it (or a channel without an entry) gets [`Subscribed::Fetch`].
    covered: Option<HashMap<Arc<str>, u64>>,
    /// Views forgotten so far ([`Store::uncover`]): a mark read from the backplane
    /// before one was forgotten is not set afterwards ([`Store::cover_token`]).
    uncovers: u64,
}

/// The shared store. Cheap to share behind an `Arc`.
pub struct Store {
    cfg: StoreConfig,
    inner: Mutex<Inner>,
    notifier: Arc<dyn Notifier>,
}

fn key_of(slot: usize, gen: u32) -> ChannelKey {
    ChannelKey {
        slot: slot as u32,
        gen,
    }
}

impl Inner {
    fn channel(&mut self, key: ChannelKey) -> Option<&mut Channel> {
        self.slots
            .get_mut(key.slot as usize)
            .filter(|c| c.gen == key.gen)
    }

    fn free_if_unused(&mut self, slot: usize) {
        let c = &self.slots[slot];
        if c.ring.is_empty() && c.subscribers == 0 {
            let c = self.slots.remove(slot);
            self.by_name.remove(&c.name);
            self.tombs.bury(&c.name, c.evicted_max);
        }
    }

    /// Evicts the oldest message of `slot` (ring overflow or TTL).
    fn evict_front(&mut self, slot: usize) {
        let c = &mut self.slots[slot];
        if let Some(m) = c.ring.pop_front() {
            c.evicted_max = c.evicted_max.max(m.id);
            c.bytes -= m.payload.len();
            self.buffered -= 1;
            self.bytes -= m.payload.len();
            self.charged -= charge(&m);
        }
    }

    /// Evicts the globally oldest messages until the charge is within `max`.
    fn enforce_memory(&mut self, max: usize) {
        while self.charged > max {
            let Some((id, key)) = self.order.pop_front() else {
                break;
            };
            let slot = key.slot as usize;
            let Some(c) = self.channel(key) else {
                continue;
            };
            if c.ring.front().is_some_and(|m| m.id == id) {
                self.evict_front(slot);
                self.evicted_for_memory += 1;
                self.free_if_unused(slot);
            }
        }
        // Entries for messages evicted by ring overflow, TTL or deletion stay until
        // popped; drop them when they outnumber live ones. O(n), amortised O(1).
        if self.order.len() > 2 * self.buffered + 1024 {
            let (slots, order) = (&self.slots, &mut self.order);
            order.retain(|&(id, key)| {
                slots
                    .get(key.slot as usize)
                    .filter(|c| c.gen == key.gen)
                    .and_then(|c| c.ring.front())
                    .is_some_and(|front| front.id <= id)
            });
        }
    }

    fn slot_for_subscribe(&mut self, name: &str) -> usize {
        if let Some(&slot) = self.by_name.get(name) {
            return slot;
        }
        let evicted_max = self.tombs.lost_before(name);
        let name: Arc<str> = Arc::from(name);
        self.next_gen = self.next_gen.wrapping_add(1);
        let slot = self.slots.insert(Channel {
            name: name.clone(),
            gen: self.next_gen,
            ring: VecDeque::new(),
            evicted_max,
            last_id: 0,
            subscribers: 0,
            groups: Groups::EMPTY,
            bytes: 0,
        });
        self.by_name.insert(name, slot);
        slot
    }
}

impl Store {
    /// A store whose ids start above the wall clock in microseconds, so ids stay
    /// increasing across restarts of the process while the clock does.
    pub fn new(cfg: StoreConfig, notifier: Arc<dyn Notifier>) -> Store {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Store::with_seed(cfg, seed, notifier)
    }

    /// A cluster node's store: a cache of the channels it holds, fed in id order by the
    /// backplane through [`Store::append`]. Ids come from the backplane (so the store has
    /// no seed and no restart rule of its own: the backplane's epoch stands for it), and
    /// a subscribe is answered here only where [`Store::cover`] vouched for the cursor.
    pub fn for_cluster(cfg: StoreConfig, notifier: Arc<dyn Notifier>) -> Store {
        let s = Store::with_seed(cfg, 0, notifier);
        s.lock().covered = Some(HashMap::new());
        s
    }

    /// A store whose first id will be `seed + 1` (tests).
    pub fn with_seed(cfg: StoreConfig, seed: u64, notifier: Arc<dyn Notifier>) -> Store {
        Store {
            cfg,
            notifier,
            inner: Mutex::new(Inner {
                slots: Slab::new(),
                by_name: HashMap::new(),
                expiry: BinaryHeap::new(),
                next_gen: 0,
                last_id: seed,
                first_above: seed,
                published: 0,
                buffered: 0,
                bytes: 0,
                charged: 0,
                order: VecDeque::new(),
                evicted_for_memory: 0,
                closed: false,
                tombs: Tombstones::new(TOMBSTONES, FOLD_BUCKETS),
                covered: None,
                uncovers: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a worker panicked mid-update; the data is still the
        // last consistent state of each field we touch, and refusing service would turn
        // one bug into an outage, so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a message under the next id, notifies the groups holding subscribers on
    /// the channel (under the lock, so every group sees notes in id order) and wakes
    /// them (after it).
    pub fn publish(
        &self,
        channel: &str,
        content_type: Option<Bytes>,
        payload: Bytes,
        now: u64,
    ) -> Result<PublishInfo, PublishError> {
        let (info, woken) = {
            let mut g = self.lock();
            let id = g.last_id + 1;
            self.insert_locked(&mut g, channel, id, content_type, payload, now)?
        };
        self.wake(woken);
        Ok(info)
    }

    /// Appends a message whose id was assigned elsewhere (a backplane carrying another
    /// node's publish), with the same notes and wake-up as [`publish`](Store::publish).
    /// `id` must be newer than every id this store has seen; an older one is refused
    /// with [`AppendError::IdNotNewer`], since appending it would break the order every
    /// cursor relies on. `lost_floor` is the newest id of the channel that its origin
    /// no longer holds (`0`: none): a cursor below it has missed something.
    pub fn append(
        &self,
        channel: &str,
        id: u64,
        content_type: Option<Bytes>,
        payload: Bytes,
        now: u64,
        lost_floor: u64,
    ) -> Result<PublishInfo, AppendError> {
        let (info, woken) = {
            let mut g = self.lock();
            if id <= g.last_id {
                return Err(AppendError::IdNotNewer { last: g.last_id });
            }
            if lost_floor > 0 {
                Self::raise_floor_locked(&mut g, channel, lost_floor.min(id - 1));
            }
            self.insert_locked(&mut g, channel, id, content_type, payload, now)
                .map_err(AppendError::Refused)?
        };
        self.wake(woken);
        Ok(info)
    }

    /// Records that `channel` lost every id up to `floor` it did not deliver: its
    /// `evicted_max`, or the tombstone of a channel not held here.
    fn raise_floor_locked(inner: &mut Inner, channel: &str, floor: u64) {
        match inner.by_name.get(channel) {
            Some(&slot) => {
                let c = &mut inner.slots[slot];
                c.evicted_max = c.evicted_max.max(floor);
            }
            None => inner.tombs.bury(channel, floor),
        }
    }

    /// Cluster mode: the backplane learned that `channel` no longer holds ids up to
    /// `floor` (evicted, expired or deleted elsewhere, or lost with Redis's data).
    pub fn raise_floor(&self, channel: &str, floor: u64) {
        if floor > 0 {
            Self::raise_floor_locked(&mut self.lock(), channel, floor);
        }
    }

    /// Cluster mode: the backplane's data began again at `epoch` (Redis lost what it
    /// held): every cursor below it may have missed messages, on every channel.
    pub fn begin_epoch(&self, epoch: u64) {
        let mut g = self.lock();
        let floor = epoch.saturating_sub(1);
        g.first_above = g.first_above.max(floor);
        for (_, c) in g.slots.iter_mut() {
            c.evicted_max = c.evicted_max.max(floor);
        }
    }

    /// Taken before a backplane read whose result will be passed to
    /// [`cover`](Store::cover).
    pub fn cover_token(&self) -> u64 {
        self.lock().uncovers
    }

    /// Cluster mode: this store now sees every message of each of `names` with an id
    /// above `from` (see `Inner::covered`); an existing, lower mark stays. Nothing is
    /// marked if a view was forgotten since `token` was taken (a message may have been
    /// dropped meanwhile that the read did not know of).
    pub fn cover(&self, names: &[&str], from: u64, token: u64) {
        let mut g = self.lock();
        if g.uncovers != token {
            return;
        }
        let Some(covered) = g.covered.as_mut() else {
            return;
        };
        for name in names {
            match covered.get_mut(*name) {
                Some(k) => *k = (*k).min(from),
                None => {
                    covered.insert(Arc::from(*name), from);
                }
            }
        }
    }

    /// Cluster mode: where this store's view of all of `names` begins (the largest of
    /// their marks), if it has one for each.
    pub fn covered_from(&self, names: &[&str]) -> Option<u64> {
        let g = self.lock();
        let covered = g.covered.as_ref()?;
        names
            .iter()
            .map(|n| covered.get(*n).copied())
            .try_fold(0, |acc, k| Some(acc.max(k?)))
    }

    /// The newest id this store has seen.
    pub fn last_id(&self) -> u64 {
        self.lock().last_id
    }

    /// Cluster mode: forget the view of `name` if nobody here subscribes to it (the
    /// backplane is about to stop receiving it). False if it has subscribers.
    pub fn uncover(&self, name: &str) -> bool {
        let mut g = self.lock();
        let inner = &mut *g;
        if let Some(&slot) = inner.by_name.get(name) {
            if inner.slots[slot].subscribers > 0 {
                return false;
            }
        }
        if let Some(covered) = inner.covered.as_mut() {
            covered.remove(name);
        }
        inner.uncovers += 1;
        true
    }

    /// Cluster mode: forget every view (the backplane cannot keep them complete).
    pub fn uncover_all(&self) {
        let mut g = self.lock();
        g.uncovers += 1;
        if let Some(c) = g.covered.as_mut() {
            c.clear();
        }
    }

    /// Names with at least one subscriber here.
    pub fn held(&self, name: &str) -> bool {
        let g = self.lock();
        g.by_name
            .get(name)
            .is_some_and(|&slot| g.slots[slot].subscribers > 0)
    }

    fn wake(&self, groups: Groups) {
        if !groups.is_empty() {
            self.notifier.wake(groups);
        }
    }

    /// The one publish path, under the lock: append message `id` (newer than every id
    /// seen) and hand its note to the groups holding subscribers; returns those groups,
    /// to be woken once the lock is released.
    fn insert_locked(
        &self,
        inner: &mut Inner,
        channel: &str,
        id: u64,
        content_type: Option<Bytes>,
        payload: Bytes,
        now: u64,
    ) -> Result<(PublishInfo, Groups), PublishError> {
        debug_assert!(id > inner.last_id, "id {id} after {}", inner.last_id);
        if inner.closed {
            return Err(PublishError::Closed);
        }
        Self::sweep_locked(inner, now);
        if !inner.by_name.contains_key(channel) && inner.slots.len() >= self.cfg.max_channels {
            return Err(PublishError::TooManyChannels);
        }
        let slot = inner.slot_for_subscribe(channel);
        inner.last_id = id;
        inner.published += 1;
        let cap = self.cfg.buffer_messages;
        let c = &mut inner.slots[slot];
        let msg = Arc::new(Message {
            id,
            channel: c.name.clone(),
            content_type,
            payload,
            expires_at: now.saturating_add(self.cfg.message_ttl_ms),
        });
        let was_empty = c.ring.is_empty();
        c.bytes += msg.payload.len();
        c.last_id = id;
        c.ring.push_back(msg.clone());
        let key = key_of(slot, c.gen);
        inner.buffered += 1;
        inner.bytes += msg.payload.len();
        inner.charged += charge(&msg);
        inner.order.push_back((id, key));
        while inner.slots[slot].ring.len() > cap {
            inner.evict_front(slot);
        }
        // The new message is the newest anywhere, so it survives (the cap is validated
        // to exceed one largest message).
        inner.enforce_memory(self.cfg.max_bytes);
        let c = &inner.slots[slot];
        let info = PublishInfo {
            id,
            subscribers: c.subscribers,
            buffered: c.ring.len(),
        };
        let groups = c.groups;
        if !groups.is_empty() {
            self.notifier.note(
                groups,
                Note::Message {
                    key,
                    msg: msg.clone(),
                    evicted_max: c.evicted_max,
                },
            );
        }
        if was_empty {
            inner.expiry.push(Reverse((msg.expires_at, key)));
        }
        Ok((info, groups))
    }

    /// Looks for the oldest message newer than `cursor` on `names`. If there is none and
    /// `park` is set, registers one subscriber of group `group` on each channel
    /// (creating it if needed) and writes the channel keys to `keys[..names.len()]`.
    ///
    /// Names must already be valid (see [`valid_channel_name`]).
    pub fn subscribe(
        &self,
        names: &[&str],
        cursor: Cursor,
        park: Option<(Group, &mut [ChannelKey])>,
        now: u64,
    ) -> Result<Subscribed, TooManyChannels> {
        let mut g = self.lock();
        let inner = &mut *g;
        Self::sweep_locked(inner, now);
        // A cursor from before this store existed (a client that comes back after a
        // restart): whatever that run buffered and the client never got is gone, and
        // nothing here remembers it, so say so. A false alarm when nothing was missed is
        // allowed; a silent gap is not. `0` asks for everything buffered and is never told.
        let mut lost = matches!(cursor, Cursor::Since(c) if c != 0 && c < inner.first_above);
        if let Some(covered) = &inner.covered {
            let vouched = names.iter().all(|n| {
                covered.get(*n).is_some_and(|&k| match cursor {
                    Cursor::Since(c) => k <= c,
                    Cursor::Latest => true,
                })
            });
            if !vouched {
                return Ok(Subscribed::Fetch);
            }
        }
        let cursor = match cursor {
            Cursor::Since(c) => c,
            // In cluster mode "now" is also at least where each channel's view begins:
            // what came before that was published before this request.
            Cursor::Latest => names
                .iter()
                .filter_map(|n| inner.covered.as_ref()?.get(*n).copied())
                .fold(inner.last_id, u64::max),
        };
        let mut best: Option<&Arc<Message>> = None;
        for name in names {
            let Some(&slot) = inner.by_name.get(*name) else {
                // Freed (or never created): nothing buffered, but it may have lost
                // messages newer than the cursor before it was freed.
                lost |= cursor != 0 && inner.tombs.lost_before(name) > cursor;
                continue;
            };
            let c = &inner.slots[slot];
            lost |= cursor != 0 && c.evicted_max > cursor;
            // Ids in a ring are increasing: binary search for the first id > cursor.
            let i = c.ring.partition_point(|m| m.id <= cursor);
            if let Some(m) = c.ring.get(i) {
                if best.is_none_or(|b| m.id < b.id) {
                    best = Some(m);
                }
            }
        }
        if let Some(m) = best {
            return Ok(Subscribed::Ready {
                msg: m.clone(),
                lost,
            });
        }
        if let Some((group, keys)) = park {
            let missing = names
                .iter()
                .filter(|n| !inner.by_name.contains_key(**n))
                .count();
            if missing > 0 && inner.slots.len() + missing > self.cfg.max_channels {
                return Err(TooManyChannels);
            }
            for (name, key) in names.iter().zip(keys.iter_mut()) {
                let slot = inner.slot_for_subscribe(name);
                let c = &mut inner.slots[slot];
                c.subscribers += 1;
                c.groups.insert(group);
                *key = key_of(slot, c.gen);
            }
        }
        Ok(Subscribed::Waiting { cursor, lost })
    }

    /// Refuses every later publish. Servers call it when shutdown starts, before telling
    /// workers, so every publish that was acknowledged has already queued its notes and
    /// can be delivered before parked subscribers are sent away.
    pub fn close(&self) {
        self.lock().closed = true;
    }

    /// Removes `n` subscribers of group `group` from channel `key`; `group_done` says
    /// the group holds no more subscribers there (a group that cannot tell passes
    /// `false`: the channel forgets every group once its last subscriber leaves).
    /// Unknown (deleted) keys are ignored.
    pub fn unsubscribe(&self, key: ChannelKey, group: Group, n: u32, group_done: bool) {
        let mut g = self.lock();
        let inner = &mut *g;
        let slot = key.slot as usize;
        let Some(c) = inner.channel(key) else {
            return;
        };
        debug_assert!(
            c.subscribers >= n,
            "unsubscribe {n} from {} with {} subscribers",
            c.name,
            c.subscribers
        );
        c.subscribers = c.subscribers.saturating_sub(n);
        if group_done {
            c.groups.remove(group);
        }
        if c.subscribers == 0 {
            c.groups = Groups::EMPTY;
        }
        inner.free_if_unused(slot);
    }

    /// Deletes a channel: drops its messages, hands `Note::Deleted` to the groups
    /// holding subscribers there and wakes them. Returns false if the channel did not
    /// exist.
    pub fn delete(&self, name: &str) -> bool {
        let groups = {
            let mut g = self.lock();
            match self.delete_locked(&mut g, name) {
                Some(groups) => groups,
                None => return false,
            }
        };
        self.wake(groups);
        true
    }

    /// Cluster mode: the channel was deleted at the backplane by the delete with id
    /// `id` (from the same sequence as messages), when its newest message was `last`.
    /// Like [`delete`](Store::delete), and a cursor below `last` hears of the gap even
    /// if this store never held the channel. Refused (false), like an append, if `id`
    /// is not newer than every id seen: it was applied already.
    pub fn deleted_elsewhere(&self, name: &str, last: u64, id: u64) -> bool {
        let groups = {
            let mut g = self.lock();
            if id <= g.last_id {
                return false;
            }
            g.last_id = id;
            let groups = self.delete_locked(&mut g, name).unwrap_or(Groups::EMPTY);
            if last > 0 {
                g.tombs.bury(name, last);
            }
            groups
        };
        self.wake(groups);
        true
    }

    fn delete_locked(&self, inner: &mut Inner, name: &str) -> Option<Groups> {
        let slot = inner.by_name.remove(name)?;
        let c = inner.slots.remove(slot);
        // A client that comes back with an older cursor hears that these are gone.
        let dropped = c.ring.back().map_or(0, |m| m.id);
        inner.tombs.bury(&c.name, c.evicted_max.max(dropped));
        inner.buffered -= c.ring.len();
        inner.bytes -= c.bytes;
        inner.charged -= c.ring.iter().map(|m| charge(m)).sum::<usize>();
        if !c.groups.is_empty() {
            self.notifier.note(
                c.groups,
                Note::Deleted {
                    key: key_of(slot, c.gen),
                    channel: c.name.clone(),
                },
            );
        }
        Some(c.groups)
    }

    pub fn info(&self, name: &str, now: u64) -> Option<ChannelInfo> {
        let mut g = self.lock();
        let inner = &mut *g;
        Self::sweep_locked(inner, now);
        let &slot = inner.by_name.get(name)?;
        let c = &inner.slots[slot];
        Some(ChannelInfo {
            buffered: c.ring.len(),
            subscribers: c.subscribers,
            first_id: c.ring.front().map_or(0, |m| m.id),
            last_id: c.last_id,
            evicted_max: c.evicted_max,
            bytes: c.bytes,
        })
    }

    /// Evicts messages older than the TTL. Workers call it about once a second; publish,
    /// subscribe and info also call it, so a reader never sees an expired message.
    pub fn expire(&self, now: u64) {
        Self::sweep_locked(&mut self.lock(), now);
    }

    fn sweep_locked(inner: &mut Inner, now: u64) {
        while let Some(&Reverse((at, key))) = inner.expiry.peek() {
            if at > now {
                break;
            }
            inner.expiry.pop();
            let slot = key.slot as usize;
            if inner.channel(key).is_none() {
                continue; // deleted or freed since
            }
            while inner.slots[slot]
                .ring
                .front()
                .is_some_and(|m| m.expires_at <= now)
            {
                inner.evict_front(slot);
            }
            let c = &inner.slots[slot];
            if let Some(front) = c.ring.front() {
                inner.expiry.push(Reverse((front.expires_at, key)));
            } else {
                inner.free_if_unused(slot);
            }
        }
    }

    pub fn stats(&self) -> StoreStats {
        let g = self.lock();
        StoreStats {
            channels: g.slots.len(),
            messages_buffered: g.buffered,
            bytes_buffered: g.bytes,
            published: g.published,
            last_id: g.last_id,
            bytes_charged: g.charged,
            evicted_for_memory: g.evicted_for_memory,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G0: Group = Group(0);
    const G3: Group = Group(3);

    fn store(buffer: usize, ttl: u64) -> Store {
        Store::with_seed(StoreConfig::unbounded(buffer, ttl), 1000, Arc::new(Silent))
    }

    /// Records every note and wake-up it is given.
    #[derive(Default)]
    struct Recorder {
        notes: Mutex<Vec<(Groups, Note)>>,
        wakes: Mutex<Vec<Groups>>,
    }

    impl Notifier for Recorder {
        fn note(&self, groups: Groups, note: Note) {
            self.notes.lock().unwrap().push((groups, note));
        }
        fn wake(&self, groups: Groups) {
            self.wakes.lock().unwrap().push(groups);
        }
    }

    fn recorded(buffer: usize, ttl: u64) -> (Store, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let s = Store::with_seed(StoreConfig::unbounded(buffer, ttl), 1000, rec.clone());
        (s, rec)
    }

    fn publish(s: &Store, ch: &str, body: &'static str, now: u64) -> u64 {
        s.publish(ch, None, Bytes::from_static(body.as_bytes()), now)
            .expect("no channel cap")
            .id
    }

    fn sub(
        s: &Store,
        names: &[&str],
        c: Cursor,
        park: Option<(Group, &mut [ChannelKey])>,
        now: u64,
    ) -> Subscribed {
        s.subscribe(names, c, park, now).expect("no channel cap")
    }

    fn ready(r: Subscribed) -> (u64, bool) {
        match r {
            Subscribed::Ready { msg, lost } => (msg.id, lost),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn channel_names() {
        let table: &[(&[u8], bool)] = &[
            (b"a", true),
            (b"user.42:inbox@eu-1~x_y", true),
            (b"", false),
            (b"a b", false),
            (b"a/b", false),
            (b"a,b", false),
            (b"%41", false),
            ("é".as_bytes(), false),
        ];
        for (name, ok) in table {
            assert_eq!(valid_channel_name(name), *ok, "{:?}", name);
        }
        assert!(valid_channel_name(&[b'x'; 128]));
        assert!(!valid_channel_name(&[b'x'; 129]));
    }

    #[test]
    fn ids_increase_across_channels_from_the_seed() {
        let s = store(16, 60_000);
        let a = publish(&s, "a", "1", 0);
        let b = publish(&s, "b", "2", 0);
        let c = publish(&s, "a", "3", 0);
        assert_eq!((a, b, c), (1001, 1002, 1003));
        assert!(Store::new(s.cfg, Arc::new(Silent)).stats().last_id > 1_600_000_000_000_000);
    }

    #[test]
    fn oldest_newer_than_cursor_in_order() {
        let s = store(16, 60_000);
        let ids: Vec<u64> = (0..5).map(|_| publish(&s, "a", "x", 0)).collect();
        let mut cursor = 0;
        for want in &ids {
            let (id, lost) = ready(sub(&s, &["a"], Cursor::Since(cursor), None, 0));
            assert_eq!((id, lost), (*want, false));
            cursor = id;
        }
        assert!(matches!(
            sub(&s, &["a"], Cursor::Since(cursor), None, 0),
            Subscribed::Waiting { cursor: c, lost: false } if c == cursor
        ));
    }

    #[test]
    fn multi_channel_picks_oldest_across_channels() {
        let s = store(16, 60_000);
        let a1 = publish(&s, "a", "x", 0);
        let b1 = publish(&s, "b", "x", 0);
        let a2 = publish(&s, "a", "x", 0);
        let mut seen = vec![];
        let mut cursor = 0;
        while let Subscribed::Ready { msg, .. } =
            sub(&s, &["b", "a", "zzz"], Cursor::Since(cursor), None, 0)
        {
            seen.push(msg.id);
            cursor = msg.id;
        }
        assert_eq!(seen, vec![a1, b1, a2]);
    }

    #[test]
    fn latest_cursor_skips_existing_messages() {
        let s = store(16, 60_000);
        let last = publish(&s, "a", "x", 0);
        match sub(&s, &["a"], Cursor::Latest, None, 0) {
            Subscribed::Waiting { cursor, .. } => assert_eq!(cursor, last),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn overflow_eviction_reports_gap_but_not_for_since_zero() {
        let s = store(2, 60_000);
        let first = publish(&s, "a", "1", 0);
        publish(&s, "a", "2", 0);
        let third = publish(&s, "a", "3", 0);
        let (id, lost) = ready(sub(&s, &["a"], Cursor::Since(0), None, 0));
        assert_eq!((id, lost), (first + 1, false));
        // Cursor older than the evicted message `first`.
        let (id, lost) = ready(sub(&s, &["a"], Cursor::Since(first - 1), None, 0));
        assert_eq!((id, lost), (first + 1, true));
        // Cursor at the evicted message: nothing lost.
        let (id, lost) = ready(sub(&s, &["a"], Cursor::Since(first), None, 0));
        assert_eq!((id, lost), (first + 1, false));
        assert_eq!(s.info("a", 0).unwrap().buffered, 2);
        assert_eq!(s.info("a", 0).unwrap().last_id, third);
    }

    #[test]
    fn ttl_evicts_and_frees_channel() {
        let s = store(16, 1000);
        let id = publish(&s, "a", "1", 0);
        publish(&s, "a", "2", 500);
        s.expire(999);
        assert_eq!(s.info("a", 999).unwrap().buffered, 2);
        s.expire(1000);
        let info = s.info("a", 1000).unwrap();
        assert_eq!((info.buffered, info.evicted_max), (1, id));
        let (_, lost) = ready(sub(&s, &["a"], Cursor::Since(id - 1), None, 1000));
        assert!(lost);
        s.expire(1500);
        assert!(
            s.info("a", 1500).is_none(),
            "empty channel without subscribers freed"
        );
        assert_eq!(s.stats().channels, 0);
        assert_eq!(s.stats().messages_buffered, 0);
    }

    fn waiting_lost(r: Subscribed) -> bool {
        match r {
            Subscribed::Waiting { lost, .. } => lost,
            other => panic!("expected to wait, got {other:?}"),
        }
    }

    #[test]
    fn a_channel_freed_after_its_messages_expired_still_reports_the_gap() {
        // (how the channel's messages went away, cursor offset from the last one read)
        for (how, deleted) in [("ttl", false), ("delete", true)] {
            let s = store(16, 1000);
            let read = publish(&s, "a", "read", 0);
            let missed = publish(&s, "a", "missed", 10);
            if deleted {
                assert!(s.delete("a"));
            } else {
                s.expire(1010);
            }
            assert!(s.info("a", 1010).is_none(), "{how}: channel freed");
            // Coming back with the cursor it had: nothing buffered, but a gap.
            assert!(
                waiting_lost(sub(&s, &["a"], Cursor::Since(read), None, 1010)),
                "{how}: gap reported while waiting"
            );
            // Parking re-creates the channel; the next delivery carries the gap.
            let mut keys = [ChannelKey::NONE; 1];
            sub(&s, &["a"], Cursor::Since(read), Some((G0, &mut keys)), 1010);
            let next = publish(&s, "a", "next", 1020);
            let (id, lost) = ready(sub(&s, &["a"], Cursor::Since(read), None, 1020));
            assert_eq!(id, next);
            assert!(lost, "{how}: a client that missed {missed} is told");
            // A client that had read the lost message too is not.
            let (_, lost) = ready(sub(&s, &["a"], Cursor::Since(missed), None, 1020));
            assert!(!lost, "{how}: no gap for a client past the lost ids");
            // Nor is one with no cursor or `since=0`.
            let (_, lost) = ready(sub(&s, &["a"], Cursor::Since(0), None, 1020));
            assert!(!lost, "{how}: since=0 never reports a gap");
        }
    }

    #[test]
    fn tombstones_are_bounded_and_a_forgotten_one_errs_towards_reporting_a_gap() {
        // One bucket: a dropped tombstone answers for every name.
        let mut t = Tombstones::new(2, 1);
        t.bury("a", 10);
        t.bury("b", 20);
        t.bury("a", 15); // same name again: raises it, keeps its place
        assert_eq!((t.lost_before("a"), t.lost_before("b")), (15, 20));
        assert_eq!(t.lost_before("never"), 0);
        t.bury("c", 5); // over the cap: "a" (the oldest) is folded
        assert_eq!(
            t.lost_before("c"),
            15,
            "a folded id answers for its whole bucket"
        );
        assert_eq!(t.lost_before("a"), 15);
        assert_eq!(t.lost_before("b"), 20);
        assert_eq!(t.lost_before("never"), 15);
        t.bury("d", 0); // nothing lost: no tombstone
        assert_eq!(t.lost_before("b"), 20, "b not pushed out by a no-op");
    }

    #[test]
    fn folded_tombstones_never_under_report_and_touch_few_other_names() {
        let mut t = Tombstones::new(1, 1024);
        for i in 1..=100u64 {
            t.bury(&format!("gone{i}"), 1000 + i);
        }
        assert_eq!(t.lost_max.len(), 1, "the table holds its cap");
        for i in 1..=100u64 {
            assert!(t.lost_before(&format!("gone{i}")) >= 1000 + i, "gone{i}");
        }
        // 99 folded into 1,024 buckets: about 9% of other names see a (spurious) gap.
        let spurious = (0..1000)
            .filter(|i| t.lost_before(&format!("other{i}")) > 0)
            .count();
        assert!(
            spurious < 300,
            "{spurious} of 1000 unrelated names report a gap"
        );
    }

    #[test]
    fn parked_subscribers_get_notes_and_keep_channel_alive() {
        let (s, rec) = recorded(16, 1000);
        let mut keys = [ChannelKey::NONE; 2];
        let r = sub(&s, &["a", "b"], Cursor::Latest, Some((G3, &mut keys)), 0);
        assert!(matches!(r, Subscribed::Waiting { .. }));
        assert_eq!(s.stats().channels, 2);
        let info = s.publish("b", None, Bytes::from_static(b"x"), 0).unwrap();
        assert_eq!(info.subscribers, 1);
        {
            let notes = rec.notes.lock().unwrap();
            assert_eq!(notes.len(), 1);
            assert_eq!(notes[0].0.iter().collect::<Vec<_>>(), [G3]);
            assert!(matches!(&notes[0].1, Note::Message { key, .. } if *key == keys[1]));
            assert_eq!(rec.wakes.lock().unwrap()[..], [notes[0].0]);
        }
        // A channel nobody waits on notifies and wakes nobody.
        s.publish("c", None, Bytes::from_static(b"x"), 0).unwrap();
        assert_eq!(rec.notes.lock().unwrap().len(), 1);
        assert_eq!(rec.wakes.lock().unwrap().len(), 1);
        // Expiry leaves the channel while someone listens.
        s.expire(5000);
        assert!(s.info("b", 5000).is_some());
        s.unsubscribe(keys[0], G3, 1, true);
        s.unsubscribe(keys[1], G3, 1, true);
        assert_eq!(s.stats().channels, 0, "expired and unsubscribed: all freed");
    }

    #[test]
    fn delete_notifies_and_recreated_channel_has_new_key() {
        let (s, rec) = recorded(16, 1000);
        let mut keys = [ChannelKey::NONE; 1];
        sub(&s, &["a"], Cursor::Latest, Some((G0, &mut keys)), 0);
        assert!(s.delete("a"));
        assert!(matches!(rec.notes.lock().unwrap()[..],
            [(g, Note::Deleted { key, .. })] if g == Groups::first(1) && key == keys[0]));
        assert_eq!(rec.wakes.lock().unwrap()[..], [Groups::first(1)]);
        assert!(!s.delete("a"));
        // Unsubscribe of the old incarnation is ignored, even after re-creation.
        let mut keys2 = [ChannelKey::NONE; 1];
        sub(&s, &["a"], Cursor::Latest, Some((G0, &mut keys2)), 0);
        assert_ne!(keys[0], keys2[0]);
        s.unsubscribe(keys[0], G0, 1, true);
        assert_eq!(s.info("a", 0).unwrap().subscribers, 1);
        assert!(keys2[0].generation() > keys[0].generation());
    }

    #[test]
    fn a_cursor_from_before_the_store_existed_is_told_of_a_gap() {
        // Seed 1000: this store's ids start at 1001; 999 came from an earlier run.
        let s = store(16, 60_000);
        let (idle, _) = recorded(16, 60_000);
        let mut keys = [ChannelKey::NONE; 1];
        // Nothing buffered yet: the subscriber parks knowing of the gap.
        let r = sub(&idle, &["a"], Cursor::Since(999), Some((G0, &mut keys)), 0);
        assert!(waiting_lost(r), "parked with a cursor from an earlier run");
        let first = publish(&s, "a", "first of this run", 0);
        assert_eq!(first, 1001);
        // (cursor, lost): before this run, at its start, within it, and `0`.
        for (cursor, want) in [
            (1, true),
            (999, true),
            (1000, false),
            (1001, false),
            (0, false),
        ] {
            let r = sub(&s, &["a"], Cursor::Since(cursor), None, 0);
            let lost = match r {
                Subscribed::Ready { lost, .. } | Subscribed::Waiting { lost, .. } => lost,
                Subscribed::Fetch => unreachable!("standalone"),
            };
            assert_eq!(lost, want, "cursor {cursor}");
        }
        // No cursor: only what comes next, nothing to be told, even before any publish.
        let (fresh, _) = recorded(16, 60_000);
        assert!(!waiting_lost(sub(&fresh, &["a"], Cursor::Latest, None, 0)));
    }

    #[test]
    fn append_takes_ids_assigned_elsewhere_only_if_newer() {
        let (s, rec) = recorded(16, 1000);
        let mut keys = [ChannelKey::NONE; 1];
        sub(&s, &["a"], Cursor::Latest, Some((G3, &mut keys)), 0);
        let mine = publish(&s, "a", "local", 0);
        assert_eq!(mine, 1001);
        let far = s
            .append("a", 5000, None, Bytes::from_static(b"remote"), 0, 0)
            .unwrap();
        assert_eq!(far.id, 5000);
        // Not newer than what the store has seen: refused, nothing appended.
        for id in [5000, 4999, 1] {
            assert_eq!(
                s.append("a", id, None, Bytes::from_static(b"x"), 0, 0),
                Err(AppendError::IdNotNewer { last: 5000 })
            );
        }
        // The store's own ids carry on above it.
        assert_eq!(publish(&s, "b", "next", 0), 5001);
        let (id, lost) = ready(sub(&s, &["a"], Cursor::Since(mine), None, 0));
        assert_eq!((id, lost), (5000, false));
        assert_eq!(s.info("a", 0).unwrap().buffered, 2);
        // The appended message was noted and woke the parked group like a publish.
        assert_eq!(rec.notes.lock().unwrap().len(), 2);
        assert_eq!(rec.wakes.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_channel_forgets_its_groups_when_its_last_subscriber_leaves() {
        let (s, rec) = recorded(16, 1000);
        let mut keys = [ChannelKey::NONE; 1];
        for _ in 0..2 {
            sub(&s, &["a"], Cursor::Latest, Some((G0, &mut keys)), 0);
        }
        publish(&s, "a", "keep the channel", 0);
        // A group that cannot tell when it is done passes false each time.
        s.unsubscribe(keys[0], G0, 1, false);
        publish(&s, "a", "one left", 0);
        assert_eq!(rec.notes.lock().unwrap().len(), 2);
        s.unsubscribe(keys[0], G0, 1, false);
        publish(&s, "a", "nobody", 0);
        assert_eq!(
            rec.notes.lock().unwrap().len(),
            2,
            "no note once nobody listens"
        );
    }
    #[test]
    fn memory_cap_evicts_globally_oldest_first_and_records_the_gap() {
        let per = 100 + MESSAGE_OVERHEAD;
        let s = Store::with_seed(
            StoreConfig {
                max_bytes: 3 * per,
                ..StoreConfig::unbounded(16, 60_000)
            },
            1000,
            Arc::new(Silent),
        );
        let body = || Bytes::from(vec![b'x'; 100]);
        let mut ids = vec![];
        for ch in ["a", "b", "a", "c"] {
            ids.push(s.publish(ch, None, body(), 0).unwrap().id);
        }
        // Four messages of `per` bytes under a 3 × `per` cap: the oldest (a's first) went.
        let st = s.stats();
        assert_eq!((st.messages_buffered, st.evicted_for_memory), (3, 1));
        assert!(st.bytes_charged <= 3 * per);
        let (id, lost) = ready(sub(&s, &["a"], Cursor::Since(ids[0] - 1), None, 0));
        assert_eq!((id, lost), (ids[2], true));
        // One more evicts b's only message; b is freed (no subscribers).
        s.publish("c", None, body(), 0).unwrap();
        assert!(s.info("b", 0).is_none());
        assert_eq!(s.stats().messages_buffered, 3);
    }

    #[test]
    fn stale_eviction_entries_are_compacted() {
        let s = Store::with_seed(
            StoreConfig {
                max_bytes: 1 << 30,
                ..StoreConfig::unbounded(1, 60_000)
            },
            0,
            Arc::new(Silent),
        );
        // Ring overflow evicts all but the newest; the FIFO must not keep them all.
        for _ in 0..10_000 {
            s.publish("a", None, Bytes::from_static(b"x"), 0).unwrap();
        }
        assert!(s.lock().order.len() <= 1024 + 2 + 1);
    }

    #[test]
    fn closed_store_refuses_publishes() {
        let s = store(16, 1000);
        publish(&s, "a", "1", 0);
        s.close();
        let r = s.publish("a", None, Bytes::from_static(b"2"), 0);
        assert_eq!(r, Err(PublishError::Closed));
        assert_eq!(s.stats().published, 1);
    }

    #[test]
    fn channel_cap_refuses_new_channels_only() {
        let s = Store::with_seed(
            StoreConfig {
                max_channels: 2,
                ..StoreConfig::unbounded(16, 60_000)
            },
            0,
            Arc::new(Silent),
        );
        let b = || Bytes::from_static(b"x");
        assert!(s.publish("a", None, b(), 0).is_ok());
        assert!(s.publish("b", None, b(), 0).is_ok());
        assert_eq!(
            s.publish("c", None, b(), 0),
            Err(PublishError::TooManyChannels)
        );
        assert!(s.publish("a", None, b(), 0).is_ok(), "existing channel");
        let mut keys = [ChannelKey::NONE; 2];
        let r = s.subscribe(&["a", "new"], Cursor::Latest, Some((G0, &mut keys)), 0);
        assert!(matches!(r, Err(TooManyChannels)));
        // Nothing was registered by the refused subscribe.
        assert_eq!(s.info("a", 0).unwrap().subscribers, 0);
        // Reading without parking never creates channels, so it is not refused.
        assert!(s.subscribe(&["new"], Cursor::Latest, None, 0).is_ok());
    }

    fn remote(s: &Store, ch: &str, id: u64, floor: u64) -> Result<PublishInfo, AppendError> {
        s.append(ch, id, None, Bytes::from_static(b"r"), 0, floor)
    }

    #[test]
    fn a_cluster_store_answers_only_where_the_backplane_vouched() {
        let s = Store::for_cluster(StoreConfig::unbounded(16, 60_000), Arc::new(Silent));
        let mut keys = [ChannelKey::NONE; 2];
        // Nothing vouched for yet: every cursor, even "latest", goes to the backplane,
        // and nothing is registered.
        for c in [Cursor::Since(0), Cursor::Since(50), Cursor::Latest] {
            assert!(matches!(
                sub(&s, &["a"], c, Some((G3, &mut keys[..1])), 0),
                Subscribed::Fetch
            ));
        }
        assert_eq!(s.stats().channels, 0, "a Fetch registers nothing");
        // Vouched from 100 on: older cursors still go to the backplane.
        s.cover(&["a"], 100, s.cover_token());
        assert!(matches!(
            sub(&s, &["a"], Cursor::Since(99), None, 0),
            Subscribed::Fetch
        ));
        remote(&s, "a", 120, 0).unwrap();
        match sub(&s, &["a"], Cursor::Since(100), None, 0) {
            Subscribed::Ready { msg, lost } => assert!(msg.id == 120 && !lost),
            other => panic!("{other:?}"),
        }
        // A lower mark widens the view; a higher one never narrows it.
        s.cover(&["a"], 40, s.cover_token());
        s.cover(&["a"], 500, s.cover_token());
        assert!(matches!(
            sub(&s, &["a"], Cursor::Since(40), None, 0),
            Subscribed::Ready { .. }
        ));
        // One channel of several not vouched for: the whole request goes to the backplane.
        assert!(matches!(
            sub(&s, &["a", "b"], Cursor::Since(200), None, 0),
            Subscribed::Fetch
        ));
        // A cluster store has no restart rule of its own: a cursor far below its first
        // id is not told of a gap by the store (the backplane's epoch answers that).
        s.cover(&["b"], 1, s.cover_token());
        assert!(!waiting_lost(sub(&s, &["b"], Cursor::Since(1), None, 0)));
        // Uncovering a channel with subscribers is refused; without, it is forgotten.
        assert!(matches!(
            sub(
                &s,
                &["b"],
                Cursor::Since(1000),
                Some((G3, &mut keys[..1])),
                0
            ),
            Subscribed::Waiting { .. }
        ));
        assert!(!s.uncover("b"));
        s.unsubscribe(keys[0], G3, 1, true);
        let stale = s.cover_token();
        assert!(s.uncover("b"));
        assert!(matches!(
            sub(&s, &["b"], Cursor::Since(1000), None, 0),
            Subscribed::Fetch
        ));
        // A mark read before a view was forgotten is not set afterwards.
        s.cover(&["b"], 1, stale);
        assert!(matches!(
            sub(&s, &["b"], Cursor::Since(1000), None, 0),
            Subscribed::Fetch
        ));
    }

    #[test]
    fn a_cluster_store_takes_the_origins_lost_floor_and_epochs() {
        let s = Store::for_cluster(StoreConfig::unbounded(16, 60_000), Arc::new(Silent));
        s.cover(&["a", "b", "c"], 0, s.cover_token());
        // The origin no longer holds ids up to 150 on "a": a cursor below is told.
        remote(&s, "a", 200, 150).unwrap();
        match sub(&s, &["a"], Cursor::Since(100), None, 0) {
            Subscribed::Ready { msg, lost } => assert!(msg.id == 200 && lost),
            other => panic!("{other:?}"),
        }
        match sub(&s, &["a"], Cursor::Since(150), None, 0) {
            Subscribed::Ready { lost, .. } => assert!(!lost),
            other => panic!("{other:?}"),
        }
        // A floor for a channel not held here is kept as its tombstone.
        s.raise_floor("b", 180);
        assert!(waiting_lost(sub(&s, &["b"], Cursor::Since(170), None, 0)));
        assert!(!waiting_lost(sub(&s, &["b"], Cursor::Since(180), None, 0)));
        // Deleted at the origin: a channel never held here still reports the gap; the
        // delete is applied once, in id order.
        assert!(s.deleted_elsewhere("c", 190, 300));
        assert!(!s.deleted_elsewhere("c", 190, 300), "applied twice");
        assert_eq!(
            remote(&s, "c", 250, 0),
            Err(AppendError::IdNotNewer { last: 300 })
        );
        assert!(waiting_lost(sub(&s, &["c"], Cursor::Since(189), None, 0)));
        assert!(!waiting_lost(sub(&s, &["c"], Cursor::Since(190), None, 0)));
        // Redis lost its data: everything below the new epoch may be gone.
        s.begin_epoch(1000);
        remote(&s, "a", 1000, 0).unwrap();
        match sub(&s, &["a"], Cursor::Since(200), None, 0) {
            Subscribed::Ready { msg, lost } => assert!(msg.id == 1000 && lost),
            other => panic!("{other:?}"),
        }
        // Ids from elsewhere must still only grow.
        assert_eq!(
            remote(&s, "a", 999, 0),
            Err(AppendError::IdNotNewer { last: 1000 })
        );
    }
}
