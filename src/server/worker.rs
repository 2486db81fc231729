//! The worker loop and its mailbox. One worker per thread: its own `mio::Poll`,
//! `SO_REUSEPORT` listener sockets, connection slab, timer wheel, park lists, `Io` pool,
//! and a mailbox of store notes.
//!
//! Each iteration, in this fixed order (nginx's habit): sleep in `poll` until the next
//! timer deadline → read the clock once → dispatch socket events → expire timers → drain
//! the mailbox and fan messages out → resume connections that were released by a
//! delivery → (worker 0) expire old messages. Shared-nothing except the store, the
//! counters and the mailboxes.
//!
//! Readiness is edge-triggered: every read and accept drains to `WouldBlock` unless the
//! connection is deliberately not reading (parked with a full buffer, or output
//! backpressure), in which case it is read again when that ends. A stale event for a slot
//! that was freed and reused is dropped by the generation in its token.
//!
//! The files beside this one add to [`Worker`]: `accept.rs`, `socket.rs`, `requests.rs`,
//! `routes.rs`, `deliver.rs`; `conn.rs` decides every phase change.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use holdfast::buffer::Io;
use holdfast::http::respond;
use holdfast::park::Parking;
use holdfast::stats::{Snapshot, Stats};
use holdfast::store::{ChannelKey, Group, Groups, Note, Notifier, Store, MAX_CHANNELS_PER_SUB};
use holdfast::subscribe::Holds;
use holdfast::sys;
use holdfast::wheel::Wheel;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::backplane::{Backplane, Job, Reply, ReplyTo};
use super::conn::{Action, Conn, Input, Phase, Slots, Timeouts};
use super::reserve::Reserve;

/// The tokens the loop dispatches on besides connections (whose tokens carry a slab key
/// and a generation, see `accept.rs`).
pub const WAKER: Token = Token(usize::MAX);
pub const LISTEN_PUBLIC: Token = Token(usize::MAX - 1);
pub const LISTEN_ADMIN: Token = Token(usize::MAX - 2);

/// A request waiting for the backplane: its number, and the connection's unhandled
/// input if it gave its buffers back meanwhile.
pub(super) type Awaiting = (u32, Option<Box<[u8]>>);

/// Tables sized by a burst of backplane replies are shrunk back to this many entries.
const SHRINK_ABOVE: usize = 256;

/// Everything the workers share.
pub struct Shared {
    pub store: Store,
    /// Cluster mode's Redis side (`None` standalone).
    pub backplane: Option<Arc<Backplane>>,
    /// `--admin-token-file`: the secret every admin request but `/health` must carry.
    pub admin_token: Option<holdfast::auth::AdminToken>,
    /// `--subscribe-key`: every subscribe must carry a token it verifies.
    pub subscribe_key: Option<holdfast::auth::SubscribeKey>,
    /// `--token-cookie`.
    pub token_cookie: Box<str>,
    /// `--allow-origin`.
    pub cors: Option<holdfast::cors::Cors>,
    pub stats: Stats,
    pub mailboxes: Arc<Mailboxes>,
    pub shutdown: AtomicBool,
    pub max_connections: usize,
    pub max_message_size: usize,
    pub holds: Holds,
    pub timeouts: Timeouts,
    pub shutdown_grace_ms: u64,
    pub stream_max_backlog: usize,
    pub trust_proxy: bool,
    /// The spare descriptor for refusing clients at the open-file limit.
    pub reserve: Reserve,
    pub(super) epoch: Instant,
}

impl Shared {
    /// Milliseconds on the server's monotonic clock (only loops call this).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s =
            self.stats
                .snapshot(&self.store.stats(), sys::rss_bytes(), self.max_connections);
        if let Some(bp) = &self.backplane {
            let b = &bp.stats;
            // The store counts what reached this node's cache; "published" means the
            // publishes this node carried out, as on a single node.
            for f in s.fields.iter_mut().filter(|f| f.0 == "published") {
                f.2 = b.published.load(std::sync::atomic::Ordering::Relaxed);
            }
            let ld =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            s.fields.extend([
                ("backplane_up", "gauge", u64::from(bp.up())),
                ("backplane_reconnects", "counter", ld(&b.reconnects)),
                ("backplane_catchups", "counter", ld(&b.catchups)),
                ("backplane_fetches", "counter", ld(&b.fetches)),
                ("backplane_received", "counter", ld(&b.received)),
                ("backplane_publish_errors", "counter", ld(&b.publish_errors)),
                ("backplane_channels", "gauge", ld(&b.channels)),
                ("backplane_lag_us", "gauge", ld(&b.lag_us)),
            ]);
        }
        s
    }
}

/// One worker's mailbox: notes pushed by publishers on any thread.
struct Mailbox {
    notes: Mutex<Vec<Note>>,
    /// The backplane's answers to this worker's requests (cluster mode).
    replies: Mutex<Vec<(ReplyTo, Reply)>>,
    /// Set while the worker is awake and will drain its mailbox before it sleeps again,
    /// or after a wake-up was sent: either way no other wake-up is needed. A worker
    /// that publishes therefore never wakes itself with a syscall.
    awake: AtomicBool,
    waker: Waker,
}

/// Every worker's mailbox: the store's [`Notifier`] for this server (one group per
/// worker).
pub struct Mailboxes(Vec<Mailbox>);

impl Mailboxes {
    /// One mailbox per poll, woken through a `Waker` registered there as [`WAKER`].
    pub fn new(polls: &[Poll]) -> io::Result<Mailboxes> {
        let mut v = Vec::with_capacity(polls.len());
        for p in polls {
            v.push(Mailbox {
                notes: Mutex::new(Vec::new()),
                replies: Mutex::new(Vec::new()),
                awake: AtomicBool::new(false),
                waker: Waker::new(p.registry(), WAKER)?,
            });
        }
        Ok(Mailboxes(v))
    }

    /// Wakes `groups` even if they look awake (shutdown).
    pub fn wake_all(&self, groups: Groups) {
        for g in groups.iter() {
            if let Some(m) = self.0.get(g.index()) {
                m.awake.store(true, SeqCst);
                let _ = m.waker.wake();
            }
        }
    }

    fn mailbox(&self, id: usize) -> &Mailbox {
        &self.0[id]
    }

    /// Hands a backplane reply to the worker that asked and wakes it if asleep.
    pub fn reply(&self, to: ReplyTo, reply: Reply) {
        let Some(m) = self.0.get(to.worker) else {
            return;
        };
        m.replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((to, reply));
        if !m.awake.swap(true, SeqCst) {
            let _ = m.waker.wake();
        }
    }
}

impl Notifier for Mailboxes {
    /// Under the store lock: every mailbox receives notes in id order.
    fn note(&self, groups: Groups, note: Note) {
        for g in groups.iter() {
            if let Some(m) = self.0.get(g.index()) {
                m.notes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(note.clone());
            }
        }
    }

    /// After the store lock: one syscall per worker that is asleep and not yet woken.
    fn wake(&self, groups: Groups) {
        for g in groups.iter() {
            if let Some(m) = self.0.get(g.index()) {
                if !m.awake.swap(true, SeqCst) {
                    let _ = m.waker.wake();
                }
            }
        }
    }
}

pub struct Worker {
    pub(super) id: usize,
    pub(super) group: Group,
    pub(super) shared: Arc<Shared>,
    pub(super) poll: Poll,
    pub(super) listeners: Vec<(Token, TcpListener)>,
    pub(super) conns: Slab<Conn>,
    pub(super) wheel: Wheel,
    pub(super) parking: Parking,
    // Boxes move between this pool and `Conn::io` (8 bytes in the slot) without copying.
    #[allow(clippy::vec_box)]
    pub(super) pool: Vec<Box<Io>>,
    /// Scratch for rendering responses; reused, so rendering does not allocate.
    pub(super) out: Vec<u8>,
    pub(super) date: [u8; 29],
    date_secs: u64,
    pub(super) now: u64,
    /// The wall clock (ms since the Unix epoch) read with `now`: token expiries.
    pub(super) unix_ms: u64,
    /// The CORS origin of the request being handled (`Cors::lookup`; 0: none).
    pub(super) origin: u32,
    pub(super) next_gen: u16,
    notes: Vec<Note>,
    replies: Vec<(ReplyTo, Reply)>,
    /// Requests waiting for the backplane: connection slot → request number, and the
    /// connection's unhandled input if it gave its buffers back meanwhile.
    pub(super) awaiting: std::collections::HashMap<usize, Awaiting>,
    pub(super) next_seq: u32,
    /// The backplane's reply for the request being handled again (routes take it).
    pub(super) reply: Option<Reply>,
    /// Connections released by a delivery whose pipelined input must be handled.
    pub(super) resume: Vec<(u32, u16)>,
    pub(super) keys: [ChannelKey; MAX_CHANNELS_PER_SUB],
    next_sweep: u64,
    /// When to look at the listeners again (see `Worker::retry_accept_soon`).
    pub(super) accept_retry: Option<u64>,
    /// When an unexpected accept error was last logged.
    pub(super) accept_error_logged: Option<u64>,
    pub(super) shutting_down: Option<u64>,
    /// Refused-request log lines written in the current second, and suppressed ones.
    pub(super) log_second: u64,
    pub(super) log_lines: u32,
    pub(super) log_suppressed: u32,
    /// The connection whose request is being handled: its `Io` is out of its slot, so
    /// nothing may be written to it until the handler returns (debug builds check this
    /// in `send`; handlers return an `Outcome` instead of writing).
    #[cfg(debug_assertions)]
    pub(super) handling: Option<usize>,
}

impl Worker {
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        poll: Poll,
        public: std::net::TcpListener,
        admin: std::net::TcpListener,
    ) -> io::Result<Worker> {
        let group = Group::new(id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too many workers"))?;
        let mut ls = Vec::new();
        for (t, l) in [(LISTEN_PUBLIC, public), (LISTEN_ADMIN, admin)] {
            let mut l = TcpListener::from_std(l);
            poll.registry().register(&mut l, t, Interest::READABLE)?;
            ls.push((t, l));
        }
        let now = shared.now_ms();
        let slots = shared.max_connections.min(1 << 24);
        Ok(Worker {
            id,
            group,
            shared,
            poll,
            listeners: ls,
            // Sized for the whole connection cap up front: the allocation is virtual
            // until slots are used (the kernel maps pages on first touch), and the slab
            // never reallocates, so RSS grows by one slot per connection with no
            // doubling slack and no copy of every live slot at each growth step.
            conns: Slab::with_capacity(slots),
            wheel: Wheel::new(now),
            parking: Parking::new(),
            pool: Vec::new(),
            out: Vec::with_capacity(16 * 1024),
            date: [b' '; 29],
            date_secs: u64::MAX,
            now,
            unix_ms: 0,
            origin: 0,
            next_gen: 1,
            notes: Vec::new(),
            replies: Vec::new(),
            awaiting: std::collections::HashMap::new(),
            next_seq: 1,
            reply: None,
            resume: Vec::new(),
            keys: [ChannelKey::NONE; MAX_CHANNELS_PER_SUB],
            next_sweep: now + 1000,
            accept_retry: None,
            accept_error_logged: None,
            shutting_down: None,
            log_second: 0,
            log_lines: 0,
            log_suppressed: 0,
            #[cfg(debug_assertions)]
            handling: None,
        })
    }

    /// Runs until shutdown completes.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("holdfast: worker {}: poll failed: {e}", self.id);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            // Awake until the mailbox is drained below: a publish meanwhile (ours or
            // another thread's) need not wake us.
            self.shared
                .mailboxes
                .mailbox(self.id)
                .awake
                .store(true, SeqCst);
            self.tick_clock();
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    t @ (LISTEN_PUBLIC | LISTEN_ADMIN) => self.accept(t),
                    Token(t) => {
                        let key = t & 0xffff_ffff;
                        let gen = (t >> 32) as u16;
                        if self.conns.get(key).is_some_and(|c| c.gen() == gen) {
                            self.on_ready(
                                key,
                                ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                                ev.is_writable(),
                                ev.is_read_closed() || ev.is_error(),
                            );
                        }
                    }
                }
            }
            if self.accept_retry.is_some_and(|at| self.now >= at) {
                self.accept_retry = None;
                self.accept(LISTEN_PUBLIC);
                self.accept(LISTEN_ADMIN);
            }
            self.expire_timers();
            self.drain_mailbox();
            self.resume_released();
            if self.id == 0 && self.now >= self.next_sweep {
                self.shared.store.expire(self.now);
                self.next_sweep = self.now + 1000;
            }
            if self.shared.shutdown.load(SeqCst) && self.shutting_down.is_none() {
                self.begin_shutdown();
            }
            if let Some(deadline) = self.shutting_down {
                if self.conns.is_empty() || self.now >= deadline {
                    return;
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let mut next = self.wheel.next_deadline();
        if self.id == 0 {
            next = Some(next.map_or(self.next_sweep, |n| n.min(self.next_sweep)));
        }
        if self.shutting_down.is_some() {
            next = Some(next.map_or(self.now + 50, |n| n.min(self.now + 50)));
        }
        if let Some(at) = self.accept_retry {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next.map(|at| Duration::from_millis(at.saturating_sub(self.now)))
    }

    fn tick_clock(&mut self) {
        self.now = self.shared.now_ms();
        self.unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let secs = self.unix_ms / 1000;
        if secs != self.date_secs {
            self.date_secs = secs;
            respond::http_date(secs, &mut self.date);
        }
    }

    /// Feeds `input` to connection `key`'s state machine and carries out what it says.
    pub(super) fn step(&mut self, key: usize, input: Input) {
        let action = self.conns[key].step(input, &self.shared.timeouts);
        self.apply(key, action);
    }

    /// Carries out what the state machine asked for.
    pub(super) fn apply(&mut self, key: usize, action: Action) {
        match action {
            Action::None => {}
            Action::Arm(ms) => {
                self.wheel
                    .insert(&mut Slots(&mut self.conns), key as u32, self.now + ms)
            }
            Action::Disarm => self.wheel.cancel(&mut Slots(&mut self.conns), key as u32),
            Action::AnswerTimeout => self.poll_timed_out(key),
            Action::BackplaneTimeout => self.backplane_answered(key, Reply::Unavailable),
            Action::Heartbeat(ms) => self.heartbeat(key, ms),
            Action::Expire => self.end_stream(key, super::deliver::End::Expired),
            Action::Linger(ms) => self.start_linger(key, ms),
            Action::Close => self.close(key),
        }
    }

    /// After a round of work on `key`: what it waits for now. A connection that is
    /// neither waiting nor lingering gives its buffers back if they hold nothing.
    pub(super) fn settle(&mut self, key: usize) {
        self.step(key, Input::Settle);
        if self
            .conns
            .get(key)
            .is_some_and(|c| !c.is_waiting() && c.phase() != Phase::Linger)
        {
            self.release_io(key);
        }
    }

    /// A timer firing is one more input to each connection's state machine.
    fn expire_timers(&mut self) {
        while let Some(k) = self.wheel.poll(&mut Slots(&mut self.conns), self.now) {
            let unix_ms = self.unix_ms;
            self.step(k as usize, Input::Timer { unix_ms });
        }
    }

    fn drain_mailbox(&mut self) {
        let me = self.shared.mailboxes.mailbox(self.id);
        // Cleared before the mailbox is read: a note pushed after this load sees a
        // sleeping worker and wakes it.
        me.awake.store(false, SeqCst);
        // Standalone, no reply ever comes: no lock per iteration for them.
        if self.shared.backplane.is_some() {
            let mut replies = me.replies.lock().unwrap_or_else(|e| e.into_inner());
            if !replies.is_empty() {
                std::mem::swap(&mut *replies, &mut self.replies);
            }
        }
        let mut replies = std::mem::take(&mut self.replies);
        let burst = replies.len() > SHRINK_ABOVE;
        for (to, reply) in replies.drain(..) {
            let current = self
                .conns
                .get(to.key)
                .is_some_and(|c| c.gen() == to.gen && c.phase() == Phase::Backplane)
                && self.awaiting.get(&to.key).is_some_and(|a| a.0 == to.seq);
            if current {
                self.backplane_answered(to.key, reply);
            }
        }
        if burst {
            // A burst of first requests for channels not held yet: give its tables
            // back rather than keep them at their peak for good.
            replies.shrink_to(SHRINK_ABOVE);
            if self.awaiting.len() < SHRINK_ABOVE {
                self.awaiting.shrink_to(SHRINK_ABOVE);
            }
        }
        self.replies = replies;
        let me = self.shared.mailboxes.mailbox(self.id);
        {
            let mut notes = me.notes.lock().unwrap_or_else(|e| e.into_inner());
            if notes.is_empty() {
                return;
            }
            std::mem::swap(&mut *notes, &mut self.notes);
        }
        let mut notes = std::mem::take(&mut self.notes);
        for note in notes.drain(..) {
            match note {
                Note::Message {
                    key,
                    msg,
                    evicted_max,
                } => self.fan_out(key, &msg, evicted_max),
                Note::Deleted { key, channel } => self.channel_deleted(key, &channel),
            }
        }
        self.notes = notes;
    }

    /// Queues `job` for the backplane on behalf of the request at the front of `key`,
    /// which waits for the reply in `Phase::Backplane`.
    pub(super) fn defer_to_backplane(&mut self, key: usize, job: impl FnOnce(ReplyTo) -> Job) {
        let Some(bp) = self.shared.backplane.clone() else {
            return;
        };
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.awaiting.insert(key, (seq, None));
        let to = ReplyTo {
            worker: self.id,
            key,
            gen: self.conns[key].gen(),
            seq,
        };
        bp.submit(job(to));
        // A little past the backplane's own deadline, so its 503 usually comes first.
        let ms = bp.timeout().as_millis() as u64 + 500;
        self.step(key, Input::Deferred { ms });
    }

    /// The backplane answered (or its timer fired): handle the request at the front
    /// again with the reply, then go on with the connection.
    pub(super) fn backplane_answered(&mut self, key: usize, reply: Reply) {
        if let Some((_, Some(input))) = self.awaiting.remove(&key) {
            let mut io = self.take_io(key);
            io.unread(&input);
            self.conns[key].io = Some(io);
        }
        if self.awaiting.is_empty() && self.awaiting.capacity() > SHRINK_ABOVE {
            // A burst is over: do not keep its table.
            self.awaiting.shrink_to(SHRINK_ABOVE);
        }
        self.step(key, Input::Resumed);
        self.reply = Some(reply);
        self.drive(key);
        self.reply = None;
    }

    fn resume_released(&mut self) {
        while let Some((k, gen)) = self.resume.pop() {
            let key = k as usize;
            if self.conns.get(key).is_some_and(|c| c.gen() == gen) {
                self.drive(key);
            }
        }
    }

    fn begin_shutdown(&mut self) {
        // The store refused publishes before the flag was raised; every acknowledged one
        // has its note in a mailbox. Deliver those before answering the rest with 503.
        self.drain_mailbox();
        self.shutting_down = Some(self.now + self.shared.shutdown_grace_ms);
        for (_, mut l) in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.shut_down_conn(key);
        }
    }
}

#[cfg(test)]
mod tests {
    //! A parked long-poll allocates nothing in the steady state: once pools and tables
    //! have grown, a request that is read, parked, waits and times out costs zero
    //! allocations. Runs the server in this process (one worker) under the counting
    //! allocator of test builds (`main.rs`), which counts the worker thread only, so
    //! other tests of this binary running meanwhile do not disturb it.

    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use crate::ALLOC;

    /// Reads one response without allocating; returns its length.
    fn read_response(s: &mut TcpStream, buf: &mut [u8; 4096]) -> usize {
        let mut n = 0;
        loop {
            let r = s.read(&mut buf[n..]).expect("read response");
            assert!(r > 0, "server closed the connection");
            n += r;
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                return n;
            }
        }
    }

    #[test]
    fn park_wait_timeout_cycle_allocates_nothing() {
        let mut cfg = holdfast::Config::for_tests();
        cfg.threads = Some(1);
        let server = crate::server::start(&cfg).expect("start server");

        // A message keeps the channel alive (TTL 1 h), so the cycle below does not
        // create and free the channel each time; the cursor is that message's id.
        let mut admin = TcpStream::connect(server.admin).unwrap();
        admin
            .write_all(b"POST /pub/steady HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = read_response(&mut admin, &mut buf);
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(text.starts_with("HTTP/1.1 201"), "{text}");
        let id: String = text
            .split("\"id\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("id in publish response")
            .to_owned();
        let request =
            format!("GET /sub/steady?since={id}&timeout=300ms HTTP/1.1\r\nHost: t\r\n\r\n");
        let request = request.as_bytes();

        let mut sub = TcpStream::connect(server.public).unwrap();
        sub.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut cycle = |buf: &mut [u8; 4096]| {
            sub.write_all(request).unwrap();
            let n = read_response(&mut sub, buf);
            (n, buf[..n].starts_with(b"HTTP/1.1 204"))
        };
        // Warm up: pools, the park-list map and the wheel reach their working size.
        for _ in 0..3 {
            let (n, ok) = cycle(&mut buf);
            assert!(ok, "{}", String::from_utf8_lossy(&buf[..n]));
        }

        let mut counts = [0u64; 5];
        for c in counts.iter_mut() {
            ALLOC.arm();
            let (n, ok) = cycle(&mut buf);
            *c = ALLOC.disarm();
            assert!(ok, "{}", String::from_utf8_lossy(&buf[..n]));
        }
        assert_eq!(
            counts, [0; 5],
            "allocations during read → park → wait → timeout → respond"
        );
        server.shutdown();
        server.join();
    }
}
