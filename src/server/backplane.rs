//! Cluster mode's backplane: the threads that talk to Redis, so a worker never does.
//!
//! Workers hand it [`Job`]s (publish, delete, read for a subscriber this node cannot
//! answer from its cache) and get a [`Reply`] in their mailbox, keyed by connection and
//! request; the connection waits in `Phase::Backplane` meanwhile, under a timer
//! (`--redis-timeout`) that answers `503` if Redis does not. Two threads:
//!
//! - **control** (`holdfast-redis`): owns the command connection (scripts of
//!   `holdfast::cluster`, pipelined: every job queued while the last batch ran goes out
//!   in one write), the write half of the pub/sub connection (`SUBSCRIBE`, `UNSUBSCRIBE`,
//!   the `PING` probe), reconnection with backoff, the catch-up after a reconnect, and
//!   unsubscribing channels nobody here holds any more.
//! - **reader** (`holdfast-redis-sub`, one per pub/sub connection): parses what Redis
//!   pushes (the `redis` crate's RESP parser) and appends each message to the store in
//!   arrival order, which is id order; acknowledgements and pongs go to control.
//!
//! Order and completeness. One pub/sub connection carries every channel, and Redis
//! publishes inside the script that assigns the id, so messages arrive in id order; the
//! store appends them with [`Store::append`], which refuses an id it has already passed
//! (a duplicate). After a (re)connect the reader holds what arrives while control
//! re-subscribes, reads `P:id` (= `R`), reads the entries and deletes in
//! `(newest appended, R]` of every channel subscribed when the connection opened
//! (a page at a time, all bounded by `R`), applies them in id order, and only then
//! lets the reader apply what it held (ids up to `R` come back as duplicates). So a
//! node cut off for a while delivers what it missed, in order, without a false gap; what
//! Redis itself no longer has is reported through the channel's lost floor.
//!
//! Liveness: a `PING` on the pub/sub connection every second; no `pong` for
//! [`PROBE_DEAD`] and the socket is shut, which the reader sees as an error, so a
//! connection that looks open but is not answered (a stopped Redis, a dead path) is
//! replaced rather than trusted. The command connection has read and write timeouts of
//! `--redis-timeout`. [`Backplane::up`] (what `/health` reports) is true while the
//! pub/sub connection is caught up and the command connection works.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast::cluster::{self, Envelope, Fetched, Keys};
use holdfast::store::{AppendError, Cursor, Message, PublishError};
use redis::Value;

use super::worker::Shared;

/// Probe interval on the pub/sub connection.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// No pong for this long: the pub/sub connection is dead, whatever the socket says.
const PROBE_DEAD: Duration = Duration::from_secs(3);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often channels nobody here holds are looked for (two looks in a row and the
/// node unsubscribes).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// Channels per catch-up read (one script call each, all bounded by the same `R`).
const CATCH_UP_CHUNK: usize = 256;
/// Entries per channel per page of a replay or catch-up read (at least).
const PAGE_MIN: usize = 256;
/// Messages held by the reader during a catch-up before the connection is given up.
const HELD_MAX: usize = 1_000_000;

/// What a reader does with a message, decided under one lock shared with control.
enum Feed {
    /// Hold it: control is catching up and will apply it afterwards.
    Hold(Vec<(String, Vec<u8>)>),
    /// Apply it now.
    Live,
    /// This connection was given up: apply nothing more from it (a newer connection's
    /// catch-up may already have gone past what it still delivers).
    Dead,
}

type SharedFeed = Arc<Mutex<Feed>>;

fn lock_feed(f: &SharedFeed) -> MutexGuard<'_, Feed> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

/// Who a reply is for: a connection slot, its generation and the request's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    pub worker: usize,
    pub key: usize,
    pub gen: u16,
    pub seq: u32,
}

/// Work for the backplane.
pub enum Job {
    Publish {
        channel: Box<str>,
        content_type: Option<Bytes>,
        payload: Bytes,
        to: ReplyTo,
    },
    Delete {
        channel: Box<str>,
        to: ReplyTo,
    },
    /// A subscribe this node cannot answer from its cache: make sure the node receives
    /// the channels, then read them. `all`: every buffered message newer than the cursor
    /// (a stream's replay), else the oldest one (a long-poll).
    Fetch {
        names: Vec<Box<str>>,
        cursor: Cursor,
        all: bool,
        to: ReplyTo,
    },
}

impl Job {
    fn to(&self) -> ReplyTo {
        match self {
            Job::Publish { to, .. } | Job::Delete { to, .. } | Job::Fetch { to, .. } => *to,
        }
    }
}

/// The backplane's answer to a job.
#[derive(Debug)]
pub enum Reply {
    Published {
        id: u64,
        nodes: u64,
        buffered: u64,
    },
    Deleted {
        existed: bool,
    },
    /// `messages` (oldest first; empty if none), whether the cursor missed something,
    /// and the cursor to park with when there are none (`R` for `Latest`).
    Fetched {
        messages: Vec<Arc<Message>>,
        lost: bool,
        cursor: u64,
    },
    /// Redis did not answer in time, refused, or is unreachable: `503`.
    Unavailable,
}

/// What a catch-up read found, to be applied in id order.
enum Missed {
    Message(cluster::Entry),
    /// A delete of channel `.0` (an index into the catch-up's names), which lost up to
    /// `.1`.
    Delete(usize, u64),
}

/// What the reader tells control.
enum Event {
    Acked(u64, String),
    Pong(u64),
    Closed(u64),
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<(Instant, Job)>,
    events: Vec<Event>,
}

/// Counters for `/stats`.
#[derive(Default)]
pub struct BackplaneStats {
    /// Publishes this node carried out (answered `201`).
    pub published: AtomicU64,
    pub reconnects: AtomicU64,
    pub catchups: AtomicU64,
    pub fetches: AtomicU64,
    pub received: AtomicU64,
    pub publish_errors: AtomicU64,
    pub channels: AtomicU64,
    pub lag_us: AtomicU64,
}

/// The part workers and the backplane threads share.
pub struct Backplane {
    url: String,
    keys: Keys,
    timeout: Duration,
    ttl_ms: u64,
    cap: usize,
    queue: Mutex<Queue>,
    cv: Condvar,
    up: AtomicBool,
    stop: AtomicBool,
    /// The Redis epoch last seen (0: none yet).
    epoch: AtomicU64,
    /// The newest id this node has seen issued (its own publishes, reads of `P:id`):
    /// every publish asks Redis for an id above it, so ids never go behind what this
    /// node delivered, even if Redis lost `P:id`.
    seen: AtomicU64,
    pub stats: BackplaneStats,
}

impl Backplane {
    pub fn new(url: &str, prefix: &str, timeout: Duration, ttl_ms: u64, cap: usize) -> Backplane {
        Backplane {
            url: url.to_string(),
            keys: Keys::new(prefix),
            timeout,
            ttl_ms,
            cap,
            queue: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            up: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            stats: BackplaneStats::default(),
        }
    }

    /// Whether this node delivers cross-node messages and can publish (`/health`).
    pub fn up(&self) -> bool {
        self.up.load(SeqCst)
    }

    /// How long a worker waits for a reply before answering `503`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job (from a worker).
    pub fn submit(&self, job: Job) {
        self.lock().jobs.push_back((Instant::now(), job));
        self.cv.notify_one();
    }

    fn event(&self, e: Event) {
        self.lock().events.push(e);
        self.cv.notify_one();
    }

    /// Stops the threads (shutdown).
    pub fn stop(&self) {
        self.stop.store(true, SeqCst);
        self.cv.notify_one();
    }

    /// Applies one pub/sub payload of `channel` to the store (reader thread, or control
    /// while it releases what the reader held).
    fn apply(&self, shared: &Shared, channel: &str, payload: &[u8]) {
        let Some(env) = Envelope::parse(payload) else {
            eprintln!("holdfast: redis: ignoring a malformed message on channel {channel}");
            return;
        };
        let epoch = match env {
            Envelope::Message { epoch, .. } | Envelope::Deleted { epoch, .. } => epoch,
        };
        self.see_epoch(shared, epoch);
        self.stats.received.fetch_add(1, Relaxed);
        match env {
            Envelope::Message {
                id,
                floor,
                content_type,
                payload,
                ..
            } => {
                let ct = content_type.map(Bytes::copy_from_slice);
                let r = shared.store.append(
                    channel,
                    id,
                    ct,
                    Bytes::copy_from_slice(payload),
                    shared.now_ms(),
                    floor,
                );
                match r {
                    Ok(_) | Err(AppendError::IdNotNewer { .. }) => {}
                    Err(AppendError::Refused(PublishError::TooManyChannels)) => {
                        // Not kept here: the cache no longer vouches for this channel.
                        shared.store.uncover(channel);
                    }
                    Err(AppendError::Refused(PublishError::Closed)) => {}
                }
            }
            Envelope::Deleted { last, id, .. } => {
                shared.store.deleted_elsewhere(channel, last, id);
            }
        }
    }

    /// A new epoch means Redis lost its data: every older cursor may have missed
    /// messages.
    fn see_epoch(&self, shared: &Shared, epoch: u64) {
        // Only forward: a late envelope from before the loss must not flip it back.
        let old = self.epoch.fetch_max(epoch, SeqCst);
        if old != 0 && old < epoch {
            eprintln!(
                "holdfast: redis: data began again (epoch {old} -> {epoch}); older cursors are told of a gap"
            );
            shared.store.begin_epoch(epoch);
        }
    }
}

/// Starts the control thread.
pub fn start(shared: Arc<Shared>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("holdfast-redis".into())
        .spawn(move || Control::new(shared).run())
}

/// Where and how to open the pub/sub connection.
struct Target {
    addr: String,
    password: Option<String>,
    username: Option<String>,
}

fn target_of(url: &str) -> Result<Target, String> {
    let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| e.to_string())?;
    let addr = match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
        other => return Err(format!("unsupported address {other:?}")),
    };
    let s = info.redis_settings();
    Ok(Target {
        addr,
        password: s.password().map(str::to_string),
        username: s.username().map(str::to_string),
    })
}

/// The pub/sub connection as control sees it.
struct Sub {
    id: u64,
    writer: TcpStream,
    /// Messages the reader holds until the catch-up is done (`None`: apply directly).
    feed: SharedFeed,
    /// The channels subscribed when it was opened: the catch-up covers these (later
    /// ones are read when their first request comes).
    initial: Vec<String>,
    caught_up: bool,
    ping_sent: Option<Instant>,
    last_pong: Instant,
    next_ping: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SubState {
    /// `SUBSCRIBE` sent on the current connection, not yet acknowledged.
    Pending,
    Acked,
}

struct Control {
    shared: Arc<Shared>,
    bp: Arc<Backplane>,
    target: Option<Target>,
    cmd: Option<redis::Connection>,
    /// When the command connection last answered: idle for [`PROBE_EVERY`], it is
    /// checked with a read of `P:id` (which also notices Redis losing data).
    cmd_used: Instant,
    cmd_retry: Instant,
    cmd_backoff: Duration,
    shas: Option<[String; 3]>,
    sub: Option<Sub>,
    sub_retry: Instant,
    sub_backoff: Duration,
    next_conn_id: u64,
    connected_once: bool,
    subscribed: HashMap<String, SubState>,
    /// Fetch jobs waiting for their channels' acknowledgements.
    waiting: Vec<(Instant, Job)>,
    next_reconcile: Instant,
    unheld: HashSet<String>,
    /// Channels acknowledged on a caught-up connection whose view is not marked yet.
    acked: Vec<String>,
}

fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => bulk(other)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse().ok()),
    }
}

/// A script reply in the shape `holdfast::cluster` parses.
fn to_reply(v: &Value) -> cluster::Reply {
    match v {
        Value::Array(a) => cluster::Reply::Array(a.iter().map(to_reply).collect()),
        Value::Int(i) => cluster::Reply::Int(*i),
        other => cluster::Reply::Bytes(bulk(other).unwrap_or_default().to_vec()),
    }
}

impl Control {
    fn new(shared: Arc<Shared>) -> Control {
        let bp = shared.backplane.clone().expect("cluster mode");
        let target = match target_of(&bp.url) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("holdfast: redis: bad URL {}: {e}", bp.url);
                None
            }
        };
        let now = Instant::now();
        Control {
            shared,
            bp,
            target,
            cmd: None,
            cmd_used: now,
            cmd_retry: now,
            cmd_backoff: BACKOFF_MIN,
            shas: None,
            sub: None,
            sub_retry: now,
            sub_backoff: BACKOFF_MIN,
            next_conn_id: 1,
            connected_once: false,
            subscribed: HashMap::new(),
            waiting: Vec::new(),
            next_reconcile: now + RECONCILE_EVERY,
            unheld: HashSet::new(),
            acked: Vec::new(),
        }
    }

    fn run(mut self) {
        loop {
            let (jobs, events) = {
                let mut q = self.bp.lock();
                if q.jobs.is_empty() && q.events.is_empty() && !self.bp.stop.load(SeqCst) {
                    q = self
                        .bp
                        .cv
                        .wait_timeout(q, Duration::from_millis(100))
                        .map(|(q, _)| q)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                (std::mem::take(&mut q.jobs), std::mem::take(&mut q.events))
            };
            if self.bp.stop.load(SeqCst) {
                for (_, job) in jobs.into_iter().chain(self.waiting.drain(..)) {
                    reply(&self.shared, job.to(), Reply::Unavailable);
                }
                if let Some(sub) = self.sub.take() {
                    let _ = sub.writer.shutdown(Shutdown::Both);
                }
                return;
            }
            for e in events {
                self.on_event(e);
            }
            self.ensure_cmd();
            self.check_cmd();
            self.ensure_sub();
            let mut writes = Vec::new();
            for (at, job) in jobs {
                match job {
                    Job::Fetch { .. } => self.waiting.push((at, job)),
                    _ => writes.push((at, job)),
                }
            }
            self.run_writes(writes, true);
            self.subscribe_waiting();
            if self.cmd.is_none() {
                // Redis is out of reach right now (the command connection could not be
                // opened): a subscribe that needs it is told at once rather than after
                // --redis-timeout. A pub/sub connection being replaced while commands
                // work is a blip: those wait for it (bounded by the same timeout).
                for (_, job) in self.waiting.drain(..) {
                    reply(&self.shared, job.to(), Reply::Unavailable);
                }
            }
            self.catch_up_if_ready();
            self.mark_acked();
            self.run_fetches();
            if self.waiting.is_empty() && self.waiting.capacity() > 256 {
                self.waiting = Vec::new();
            }
            self.probe();
            self.reconcile();
            let up = self.cmd.is_some() && self.sub.as_ref().is_some_and(|s| s.caught_up);
            self.bp.up.store(up, SeqCst);
            self.bp
                .stats
                .channels
                .store(self.subscribed.len() as u64, Relaxed);
        }
    }

    fn on_event(&mut self, e: Event) {
        let current = self.sub.as_ref().map(|s| s.id);
        match e {
            Event::Acked(id, name) if Some(id) == current => {
                if let Some(s) = self.subscribed.get_mut(&name) {
                    *s = SubState::Acked;
                    self.acked.push(name);
                }
            }
            Event::Pong(id) if Some(id) == current => {
                let now = Instant::now();
                if let Some(sub) = self.sub.as_mut() {
                    if let Some(sent) = sub.ping_sent.take() {
                        let lag = now.duration_since(sent).as_micros() as u64;
                        self.bp.stats.lag_us.store(lag, Relaxed);
                    }
                    sub.last_pong = now;
                }
            }
            Event::Closed(id) if Some(id) == current => self.drop_sub("lost"),
            _ => {}
        }
    }

    fn drop_sub(&mut self, why: &str) {
        if let Some(sub) = self.sub.take() {
            eprintln!("holdfast: redis: subscription connection {why}; reconnecting");
            *lock_feed(&sub.feed) = Feed::Dead;
            let _ = sub.writer.shutdown(Shutdown::Both);
        }
        self.bp.up.store(false, SeqCst);
        for s in self.subscribed.values_mut() {
            *s = SubState::Pending;
        }
        self.sub_retry = Instant::now() + self.sub_backoff;
        self.sub_backoff = (self.sub_backoff * 2).min(BACKOFF_MAX);
    }

    fn drop_cmd(&mut self, why: &str) {
        if self.cmd.take().is_some() {
            eprintln!("holdfast: redis: command connection {why}; reconnecting");
        }
        self.bp.up.store(false, SeqCst);
        self.cmd_retry = Instant::now() + self.cmd_backoff;
        self.cmd_backoff = (self.cmd_backoff * 2).min(BACKOFF_MAX);
    }

    /// Opens the command connection and loads the scripts, if due.
    fn ensure_cmd(&mut self) {
        if self.cmd.is_some() || Instant::now() < self.cmd_retry {
            return;
        }
        let t = self.bp.timeout;
        let r = (|| -> redis::RedisResult<(redis::Connection, [String; 3])> {
            let client = redis::Client::open(self.bp.url.as_str())?;
            let mut con = client.get_connection_with_timeout(t)?;
            con.set_read_timeout(Some(t))?;
            con.set_write_timeout(Some(t))?;
            let mut load = |src: String| -> redis::RedisResult<String> {
                redis::cmd("SCRIPT").arg("LOAD").arg(src).query(&mut con)
            };
            let shas = [
                load(cluster::publish_script())?,
                load(cluster::delete_script())?,
                load(cluster::fetch_script())?,
            ];
            Ok((con, shas))
        })();
        match r {
            Ok((con, shas)) => {
                self.cmd = Some(con);
                self.shas = Some(shas);
                self.cmd_backoff = BACKOFF_MIN;
            }
            Err(e) => {
                self.cmd_retry = Instant::now() + self.cmd_backoff;
                self.cmd_backoff = (self.cmd_backoff * 2).min(BACKOFF_MAX);
                if self.cmd_backoff == BACKOFF_MAX {
                    // Once per second at most while Redis stays away.
                    eprintln!("holdfast: redis: cannot connect: {e}");
                }
            }
        }
    }

    /// Checks an idle command connection (a Redis `timeout`, or a middlebox that drops
    /// idle connections, must not cost the next publish its answer) and, with the same
    /// read, notices Redis losing data without waiting for a publish.
    fn check_cmd(&mut self) {
        if self.cmd.is_some() && self.cmd_used.elapsed() >= PROBE_EVERY {
            self.cmd_used = Instant::now();
            let _ = self.fetch(&[], None, 0, "");
        }
    }

    /// Opens the pub/sub connection and subscribes to every channel held, if due.
    fn ensure_sub(&mut self) {
        if self.sub.is_some() || Instant::now() < self.sub_retry {
            return;
        }
        let Some(target) = &self.target else {
            return;
        };
        let t = self.bp.timeout;
        let r = (|| -> std::io::Result<TcpStream> {
            let addrs: Vec<SocketAddr> = target.addr.to_socket_addrs()?.collect();
            let mut last = std::io::Error::other("no address");
            for a in addrs {
                match TcpStream::connect_timeout(&a, t) {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })();
        let stream = match r {
            Ok(s) => s,
            Err(_) => {
                self.sub_retry = Instant::now() + self.sub_backoff;
                self.sub_backoff = (self.sub_backoff * 2).min(BACKOFF_MAX);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(t));
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        if self.connected_once {
            self.bp.stats.reconnects.fetch_add(1, Relaxed);
        }
        self.connected_once = true;
        let feed = Arc::new(Mutex::new(Feed::Hold(Vec::new())));
        let now = Instant::now();
        let mut sub = Sub {
            id,
            writer: stream,
            feed: feed.clone(),
            initial: self.subscribed.keys().cloned().collect(),
            caught_up: false,
            ping_sent: None,
            last_pong: now,
            next_ping: now + PROBE_EVERY,
        };
        let mut hello = Vec::new();
        if let Some(pw) = &target.password {
            let mut c = redis::cmd("AUTH");
            if let Some(u) = &target.username {
                c.arg(u);
            }
            hello.extend(c.arg(pw).get_packed_command());
        }
        let names: Vec<&String> = self.subscribed.keys().collect();
        for chunk in names.chunks(1024) {
            let mut c = redis::cmd("SUBSCRIBE");
            for n in chunk {
                c.arg(self.bp.keys.pubsub(n));
            }
            hello.extend(c.get_packed_command());
        }
        if sub.writer.write_all(&hello).is_err() {
            self.sub_retry = Instant::now() + self.sub_backoff;
            return;
        }
        for s in self.subscribed.values_mut() {
            *s = SubState::Pending;
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("holdfast-redis-sub".into())
            .spawn(move || read_loop(id, read_half, shared, feed));
        if spawned.is_err() {
            let _ = sub.writer.shutdown(Shutdown::Both);
            return;
        }
        self.sub_backoff = BACKOFF_MIN;
        self.sub = Some(sub);
    }

    /// Publishes and deletes, pipelined in one round trip.
    fn run_writes(&mut self, mut jobs: Vec<(Instant, Job)>, retry: bool) {
        // A job whose worker has answered 503 by now is not carried out late: its
        // publisher may already have retried.
        let timeout = self.bp.timeout;
        jobs.retain(|(at, job)| {
            let fresh = at.elapsed() < timeout;
            if !fresh {
                self.bp.stats.publish_errors.fetch_add(1, Relaxed);
                reply(&self.shared, job.to(), Reply::Unavailable);
            }
            fresh
        });
        if jobs.is_empty() {
            return;
        }
        let (Some(con), Some(shas)) = (self.cmd.as_mut(), self.shas.as_ref()) else {
            for (_, job) in jobs {
                self.bp.stats.publish_errors.fetch_add(1, Relaxed);
                reply(&self.shared, job.to(), Reply::Unavailable);
            }
            return;
        };
        let keys = &self.bp.keys;
        let node_last = self.shared.store.last_id().max(self.bp.seen.load(SeqCst));
        let meta_ttl = self.bp.ttl_ms + cluster::META_GRACE_MS;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (_, job) in &jobs {
            match job {
                Job::Publish {
                    channel,
                    content_type,
                    payload,
                    ..
                } => {
                    pipe.cmd("EVALSHA")
                        .arg(&shas[0])
                        .arg(4)
                        .arg(keys.id())
                        .arg(keys.epoch())
                        .arg(keys.stream(channel))
                        .arg(keys.meta(channel))
                        .arg(node_last)
                        .arg(self.bp.ttl_ms)
                        .arg(self.bp.cap)
                        .arg(meta_ttl)
                        .arg(content_type.as_deref().unwrap_or_default())
                        .arg(if content_type.is_some() { "1" } else { "0" })
                        .arg(payload.as_ref())
                        .arg(keys.pubsub(channel));
                }
                Job::Delete { channel, .. } => {
                    pipe.cmd("EVALSHA")
                        .arg(&shas[1])
                        .arg(4)
                        .arg(keys.id())
                        .arg(keys.epoch())
                        .arg(keys.stream(channel))
                        .arg(keys.meta(channel))
                        .arg(keys.pubsub(channel))
                        .arg(meta_ttl)
                        .arg(node_last);
                }
                Job::Fetch { .. } => unreachable!("fetches are not pipelined"),
            }
        }
        let result = pipe.query::<Vec<Value>>(con);
        if result.is_ok() {
            self.cmd_used = Instant::now();
        }
        match result {
            Ok(values) if values.len() == jobs.len() => {
                // Scripts Redis no longer has (SCRIPT FLUSH, a failover that kept the
                // connection): those jobs did not run; load the scripts and run them
                // once more.
                let mut again = Vec::new();
                for ((at, job), v) in jobs.into_iter().zip(values) {
                    if matches!(&v, Value::ServerError(e) if e.code() == "NOSCRIPT") && retry {
                        again.push((at, job));
                        continue;
                    }
                    let r = match (&job, &v) {
                        (Job::Publish { .. }, Value::Array(a)) if a.len() == 4 => {
                            match (int(&a[0]), int(&a[1]), int(&a[2]), int(&a[3])) {
                                (Some(id), Some(nodes), Some(buffered), Some(epoch)) => {
                                    self.bp.see_epoch(&self.shared, epoch);
                                    self.bp.seen.fetch_max(id, SeqCst);
                                    self.bp.stats.published.fetch_add(1, Relaxed);
                                    Reply::Published {
                                        id,
                                        nodes,
                                        buffered,
                                    }
                                }
                                _ => Reply::Unavailable,
                            }
                        }
                        (Job::Delete { .. }, v) if int(v).is_some() => Reply::Deleted {
                            existed: int(v) == Some(1),
                        },
                        (_, v) => {
                            eprintln!("holdfast: redis: unexpected script reply {v:?}");
                            Reply::Unavailable
                        }
                    };
                    if matches!(r, Reply::Unavailable) {
                        self.bp.stats.publish_errors.fetch_add(1, Relaxed);
                    }
                    reply(&self.shared, job.to(), r);
                }
                if !again.is_empty() {
                    self.drop_cmd("lost its scripts (NOSCRIPT)");
                    self.cmd_retry = Instant::now();
                    self.ensure_cmd();
                    self.run_writes(again, false);
                }
            }
            other => {
                if let Err(e) = &other {
                    self.drop_cmd(&format!("failed ({e})"));
                }
                for (_, job) in jobs {
                    self.bp.stats.publish_errors.fetch_add(1, Relaxed);
                    reply(&self.shared, job.to(), Reply::Unavailable);
                }
            }
        }
    }

    /// Subscribes to the channels waiting fetches need; answers those that waited too
    /// long.
    fn subscribe_waiting(&mut self) {
        let now = Instant::now();
        let mut new = Vec::new();
        let timeout = self.bp.timeout;
        let shared = &self.shared;
        self.waiting.retain(|(at, job)| {
            if now.duration_since(*at) >= timeout {
                reply(shared, job.to(), Reply::Unavailable);
                return false;
            }
            true
        });
        for (_, job) in &self.waiting {
            if let Job::Fetch { names, .. } = job {
                for n in names {
                    if !self.subscribed.contains_key(&**n) {
                        self.subscribed.insert(n.to_string(), SubState::Pending);
                        new.push(n.to_string());
                    }
                }
            }
        }
        if new.is_empty() {
            return;
        }
        if let Some(sub) = self.sub.as_mut() {
            let mut c = redis::cmd("SUBSCRIBE");
            for n in &new {
                c.arg(self.bp.keys.pubsub(n));
            }
            if sub.writer.write_all(&c.get_packed_command()).is_err() {
                self.drop_sub("write failed");
            }
        }
    }

    /// After a (re)connect, once the channels subscribed at connect time are
    /// acknowledged: read what was missed (messages and deletes), apply it in id order,
    /// then let the reader apply what it held.
    fn catch_up_if_ready(&mut self) {
        let Some(sub) = self.sub.as_ref() else {
            return;
        };
        let ready = !sub.caught_up
            && sub
                .initial
                .iter()
                .all(|n| self.subscribed.get(n).is_none_or(|s| *s == SubState::Acked));
        if !ready || self.cmd.is_none() {
            return;
        }
        let names: Vec<String> = sub
            .initial
            .iter()
            .filter(|n| self.subscribed.contains_key(*n))
            .cloned()
            .collect();
        let from = self.shared.store.last_id();
        // The first read fixes `R`; the others are bounded by it, so the whole catch-up
        // is one consistent range however many calls it takes.
        let mut newest = String::new();
        let mut missed: Vec<(u64, Missed)> = Vec::new();
        let mut chunks: Vec<(usize, &[String])> = names
            .chunks(CATCH_UP_CHUNK)
            .enumerate()
            .map(|(i, c)| (i * CATCH_UP_CHUNK, c))
            .collect();
        if chunks.is_empty() {
            chunks.push((0, &[]));
        }
        for (base, chunk) in chunks {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let Some(f) = self.fetch_all(&refs, from, &newest, None) else {
                self.drop_sub("catch-up read failed");
                return;
            };
            if newest.is_empty() {
                newest = f.newest.to_string();
            }
            for (i, name) in refs.iter().enumerate() {
                self.shared.store.raise_floor(name, f.floors[i]);
                let d = f.deletes[i];
                if d > from && d <= f.newest {
                    missed.push((d, Missed::Delete(base + i, f.floors[i])));
                }
            }
            missed.extend(f.entries.into_iter().map(|mut e| {
                e.channel += base;
                (e.id, Missed::Message(e))
            }));
        }
        missed.sort_by_key(|m| m.0);
        let now = self.shared.now_ms();
        let store = &self.shared.store;
        let Some(sub) = self.sub.as_mut() else {
            return;
        };
        // Hold the reader while the missed messages go in, then release what it held.
        let mut feed = lock_feed(&sub.feed);
        for (id, m) in missed {
            match m {
                Missed::Message(e) => {
                    let r = store.append(
                        &names[e.channel],
                        e.id,
                        e.content_type.map(Bytes::from),
                        Bytes::from(e.payload),
                        now,
                        0,
                    );
                    if let Err(AppendError::Refused(PublishError::TooManyChannels)) = r {
                        store.uncover(&names[e.channel]);
                    }
                }
                Missed::Delete(i, last) => {
                    store.deleted_elsewhere(&names[i], last, id);
                }
            }
        }
        if let Feed::Hold(v) = std::mem::replace(&mut *feed, Feed::Live) {
            for (name, payload) in v {
                self.bp.apply(&self.shared, &name, &payload);
            }
        }
        drop(feed);
        sub.caught_up = true;
        // The catch-up took this thread's time (pongs may wait in the queue): start the
        // probe afresh rather than judge the connection by it.
        let now = Instant::now();
        sub.ping_sent = None;
        sub.last_pong = now;
        sub.next_ping = now + PROBE_EVERY;
        self.bp.stats.catchups.fetch_add(1, Relaxed);
    }

    /// Newly acknowledged channels: one read of `P:id` (= `R`) for all of them, and
    /// the cache vouches for them from `R` on (every later message reaches this node).
    /// Requests that arrive meanwhile for the same channels need no read of their own.
    fn mark_acked(&mut self) {
        if self.acked.is_empty() || !self.sub.as_ref().is_some_and(|s| s.caught_up) {
            return;
        }
        let names = std::mem::take(&mut self.acked);
        let refs: Vec<&str> = names
            .iter()
            .filter(|n| self.subscribed.get(*n) == Some(&SubState::Acked))
            .map(String::as_str)
            .collect();
        let token = self.shared.store.cover_token();
        if let Some(f) = self.fetch(&[], None, 0, "") {
            self.shared.store.cover(&refs, f.newest, token);
        }
    }

    /// Answers the fetches whose channels are all acknowledged on a caught-up
    /// connection.
    fn run_fetches(&mut self) {
        if !self.sub.as_ref().is_some_and(|s| s.caught_up) || self.waiting.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.waiting);
        for (at, job) in waiting {
            let Job::Fetch {
                names,
                cursor,
                all,
                to,
            } = &job
            else {
                continue;
            };
            let ready = names
                .iter()
                .all(|n| self.subscribed.get(&**n) == Some(&SubState::Acked));
            if !ready || self.cmd.is_none() {
                self.waiting.push((at, job));
                continue;
            }
            let refs: Vec<&str> = names.iter().map(|n| &**n).collect();
            let c = match cursor {
                Cursor::Since(c) => Some(*c),
                Cursor::Latest => None,
            };
            // The cache vouches for it by now (an earlier read or acknowledgement):
            // the worker answers it from there.
            if let Some(k) = self.shared.store.covered_from(&refs) {
                if c.is_none_or(|c| c >= k) {
                    let r = Reply::Fetched {
                        messages: Vec::new(),
                        lost: false,
                        cursor: c.unwrap_or_else(|| k.max(self.shared.store.last_id())),
                    };
                    reply(&self.shared, *to, r);
                    continue;
                }
            }
            let token = self.shared.store.cover_token();
            let f = match (c, *all) {
                (None, _) => self.fetch(&refs, None, 0, ""),
                (Some(c), false) => self.fetch(&refs, Some(c), 1, ""),
                (Some(c), true) => self.fetch_all(&refs, c, "", Some(at + self.bp.timeout)),
            };
            let Some(mut f) = f else {
                reply(&self.shared, *to, Reply::Unavailable);
                continue;
            };
            self.bp.stats.fetches.fetch_add(1, Relaxed);
            let store = &self.shared.store;
            let r = match c {
                None => {
                    store.cover(&refs, f.newest, token);
                    Reply::Fetched {
                        messages: Vec::new(),
                        lost: false,
                        cursor: f.newest,
                    }
                }
                Some(c) => {
                    f.sort();
                    for (name, floor) in refs.iter().zip(&f.floors) {
                        store.raise_floor(name, *floor);
                    }
                    // A cursor above every id Redis has issued comes from data Redis no
                    // longer has (or was forged): a false alarm at worst.
                    let lost = f.lost_for(c) || c > f.newest;
                    if !*all {
                        f.entries.truncate(1);
                    }
                    // Nothing on these channels in (c, R] but what was returned (all of
                    // it, for a replay), and everything after R reaches this node in
                    // order: the cache vouches from the newest returned (or c), or for a
                    // single message at least from R.
                    let from = match f.entries.last() {
                        Some(_) if !*all => f.newest,
                        Some(e) => e.id.max(c),
                        None => c,
                    };
                    store.cover(&refs, from, token);
                    let messages = f
                        .entries
                        .into_iter()
                        .map(|e| {
                            Arc::new(Message::unbuffered(
                                e.id,
                                Arc::from(refs[e.channel]),
                                e.content_type.map(Bytes::from),
                                Bytes::from(e.payload),
                            ))
                        })
                        .collect();
                    Reply::Fetched {
                        messages,
                        lost,
                        cursor: c,
                    }
                }
            };
            reply(&self.shared, *to, r);
        }
    }

    /// Every buffered entry of `names` in `(from, R]`, read a page at a time: Redis
    /// keeps as many as the publishing node's `--buffer-messages`, which may be more
    /// than this node's. Each page is cut at the oldest "last entry" of the channels
    /// that filled it, so the pages join without a hole.
    fn fetch_all(
        &mut self,
        names: &[&str],
        from: u64,
        newest: &str,
        deadline: Option<Instant>,
    ) -> Option<Fetched> {
        let per = self.bp.cap.max(PAGE_MIN);
        let mut out: Option<Fetched> = None;
        let mut cursor = from;
        let mut bound = newest.to_string();
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // Its worker has answered 503 by now: stop reading for it.
                return None;
            }
            let mut f = self.fetch(names, Some(cursor), per, &bound)?;
            f.sort();
            let mut filled = vec![0usize; names.len()];
            let mut last = vec![0u64; names.len()];
            for e in &f.entries {
                filled[e.channel] += 1;
                last[e.channel] = e.id;
            }
            let cut = (0..names.len())
                .filter(|&i| filled[i] >= per)
                .map(|i| last[i])
                .min();
            if let Some(cut) = cut {
                f.entries.retain(|e| e.id <= cut);
            }
            match out.as_mut() {
                None => {
                    bound = f.newest.to_string();
                    out = Some(f);
                }
                Some(o) => {
                    o.entries.append(&mut f.entries);
                    // Trims and deletes between two pages count: the highest floor.
                    for (a, b) in o.floors.iter_mut().zip(&f.floors) {
                        *a = (*a).max(*b);
                    }
                    for (a, b) in o.deletes.iter_mut().zip(&f.deletes) {
                        *a = (*a).max(*b);
                    }
                }
            }
            match cut {
                Some(cut) if cut > cursor => cursor = cut,
                Some(_) => {
                    eprintln!("holdfast: redis: a read did not advance; stream entries not written by holdfast?");
                    return None;
                }
                None => return out,
            }
        }
    }

    /// Pings the pub/sub connection; replaces it if pongs stopped coming.
    fn probe(&mut self) {
        // Pongs that arrived while this iteration ran count: a long iteration is not a
        // dead connection.
        let events = std::mem::take(&mut self.bp.lock().events);
        for e in events {
            self.on_event(e);
        }
        let now = Instant::now();
        let Some(sub) = self.sub.as_mut() else {
            return;
        };
        if sub
            .ping_sent
            .is_some_and(|sent| now.duration_since(sent) >= PROBE_DEAD)
            || now.duration_since(sub.last_pong) >= PROBE_DEAD + PROBE_EVERY
        {
            self.drop_sub("stopped answering (probe)");
            return;
        }
        if now >= sub.next_ping {
            sub.next_ping = now + PROBE_EVERY;
            if sub.ping_sent.is_none() {
                sub.ping_sent = Some(now);
            }
            if sub
                .writer
                .write_all(&redis::cmd("PING").get_packed_command())
                .is_err()
            {
                self.drop_sub("write failed");
            }
        }
    }

    /// Unsubscribes from channels nobody here has held for two looks in a row.
    fn reconcile(&mut self) {
        let now = Instant::now();
        if now < self.next_reconcile {
            return;
        }
        self.next_reconcile = now + RECONCILE_EVERY;
        let wanted: HashSet<&str> = self
            .waiting
            .iter()
            .flat_map(|(_, j)| match j {
                Job::Fetch { names, .. } => names.iter().map(|n| &**n).collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect();
        let mut drop = Vec::new();
        let mut unheld = HashSet::new();
        for name in self.subscribed.keys() {
            // A channel still being subscribed stays: its acknowledgement must not be
            // taken for a later SUBSCRIBE's.
            if wanted.contains(name.as_str())
                || self.subscribed.get(name) != Some(&SubState::Acked)
                || self.shared.store.held(name)
            {
                continue;
            }
            if self.unheld.contains(name) && self.shared.store.uncover(name) {
                drop.push(name.clone());
            } else {
                unheld.insert(name.clone());
            }
        }
        self.unheld = unheld;
        if drop.is_empty() {
            return;
        }
        for n in &drop {
            self.subscribed.remove(n);
        }
        if let Some(sub) = self.sub.as_mut() {
            let mut c = redis::cmd("UNSUBSCRIBE");
            for n in &drop {
                c.arg(self.bp.keys.pubsub(n));
            }
            if sub.writer.write_all(&c.get_packed_command()).is_err() {
                self.drop_sub("write failed");
            }
        }
    }

    /// Runs the read script for `names` from `cursor` (`None`: the latest); once more
    /// after reloading the scripts if Redis lost them.
    fn fetch(
        &mut self,
        names: &[&str],
        cursor: Option<u64>,
        per_channel: usize,
        newest: &str,
    ) -> Option<Fetched> {
        match self.fetch_once(names, cursor, per_channel, newest) {
            Err(true) => {
                self.drop_cmd("lost its scripts (NOSCRIPT)");
                self.cmd_retry = Instant::now();
                self.ensure_cmd();
                self.fetch_once(names, cursor, per_channel, newest).ok()
            }
            r => r.ok(),
        }
    }

    /// [`fetch`](Control::fetch) without the retry: `Err(true)` if Redis had lost the
    /// scripts.
    fn fetch_once(
        &mut self,
        names: &[&str],
        cursor: Option<u64>,
        per_channel: usize,
        newest: &str,
    ) -> Result<Fetched, bool> {
        let (Some(con), Some(shas)) = (self.cmd.as_mut(), self.shas.as_ref()) else {
            return Err(false);
        };
        let keys = &self.bp.keys;
        let mut c = redis::cmd("EVALSHA");
        c.arg(&shas[2])
            .arg(2 + 2 * names.len())
            .arg(keys.id())
            .arg(keys.epoch());
        for n in names {
            c.arg(keys.stream(n)).arg(keys.meta(n));
        }
        match cursor {
            // Lua numbers are doubles: a cursor past 2^53 (no id gets there; a client
            // made it up) reads as "above everything", exactly.
            Some(x) => c.arg(x.min(cluster::MAX_ID)),
            None => c.arg("L"),
        };
        let node_last = self.shared.store.last_id().max(self.bp.seen.load(SeqCst));
        c.arg(per_channel)
            .arg(self.bp.ttl_ms)
            .arg(self.bp.ttl_ms + cluster::META_GRACE_MS)
            .arg(newest)
            .arg(node_last);
        match c.query::<Value>(con) {
            Ok(v) => {
                self.cmd_used = Instant::now();
                let f = cluster::parse_fetch(
                    &to_reply(&v),
                    if cursor.is_some() { names.len() } else { 0 },
                );
                let Some(f) = f else {
                    eprintln!("holdfast: redis: unexpected read reply {v:?}");
                    return Err(false);
                };
                self.bp.see_epoch(&self.shared, f.epoch);
                self.bp.seen.fetch_max(f.newest, SeqCst);
                Ok(f)
            }
            Err(e) if e.code() == Some("NOSCRIPT") => Err(true),
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                self.drop_cmd(&format!("failed ({e})"));
                Err(false)
            }
            // Redis answered with an error (a script refused): the connection is fine.
            Err(e) => {
                eprintln!("holdfast: redis: read refused: {e}");
                Err(false)
            }
        }
    }
}

/// Hands `r` to the worker that asked.
fn reply(shared: &Shared, to: ReplyTo, r: Reply) {
    shared.mailboxes.reply(to, r);
}

/// The reader thread of one pub/sub connection.
fn read_loop(id: u64, stream: TcpStream, shared: Arc<Shared>, feed: SharedFeed) {
    let Some(bp) = shared.backplane.clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut parser = redis::Parser::new();
    loop {
        let v = match parser.parse_value(&mut reader) {
            Ok(v) => v,
            Err(_) => break,
        };
        let items = match v {
            Value::Array(items) => items,
            Value::Push { kind, data } => {
                let mut items = vec![Value::SimpleString(kind.to_string())];
                items.extend(data);
                items
            }
            Value::ServerError(e) => {
                eprintln!("holdfast: redis: subscription refused: {e:?}");
                break;
            }
            // The probe's answer while subscribed to nothing (not in pub/sub mode).
            Value::SimpleString(s) if s.eq_ignore_ascii_case("pong") => {
                bp.event(Event::Pong(id));
                continue;
            }
            _ => continue,
        };
        let kind = items.first().and_then(bulk).unwrap_or_default();
        match kind {
            b"message" => {
                let (Some(ch), Some(payload)) =
                    (items.get(1).and_then(bulk), items.get(2).and_then(bulk))
                else {
                    continue;
                };
                let Some(name) = bp.keys.channel_of(ch) else {
                    continue;
                };
                let mut f = lock_feed(&feed);
                match &mut *f {
                    Feed::Hold(v) => {
                        if v.len() >= HELD_MAX {
                            break;
                        }
                        v.push((name.to_string(), payload.to_vec()));
                    }
                    // Applied under the lock, so control's release of the held
                    // messages and this stay in order.
                    Feed::Live => bp.apply(&shared, name, payload),
                    Feed::Dead => return,
                }
            }
            b"subscribe" => {
                if let Some(name) = items
                    .get(1)
                    .and_then(bulk)
                    .and_then(|c| bp.keys.channel_of(c))
                {
                    bp.event(Event::Acked(id, name.to_string()));
                }
            }
            b"pong" => bp.event(Event::Pong(id)),
            _ => {}
        }
    }
    bp.event(Event::Closed(id));
}
