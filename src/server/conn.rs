//! One client connection and its state machine.
//!
//! A connection is in one [`Phase`], which decides what its single timer means (header
//! deadline, keep-alive, poll timeout, heartbeat, send timeout, linger). Every change of
//! phase happens here, in [`Conn::step`]: the worker feeds it an [`Input`] (the timer
//! fired, the request parked, a response was queued, a round of work ended…) and gets
//! back the [`Action`] it must carry out (arm the timer, answer a timed-out poll, write a
//! heartbeat, shut the write side and linger, close). A timer firing is one more input
//! to the same function, not a second code path; the worker never assigns a phase.
//!
//! ```text
//!   accept ──► Idle ◄──────────── Answered ─────────────┐
//!               │ bytes (Settle)                        │
//!               ▼                                       │
//!              Head ── request handled ──► Parked ── delivery / Timer ──┘
//!               │   └──────────────────► Stream ── heartbeat (Timer) ─┐
//!               │ output blocked (Settle)   ▲ └──────────────────────┘
//!               ▼                           │ Ended (delete, shutdown, overflow)
//!              Send ── flushed ──► Idle/Head │
//!   close-after + nothing queued (Settle) ──► Linger ── EOF or Timer ──► closed
//! ```
//!
//! Memory: the slot is [`Conn`] — socket, generation, timer links, park links, cursor,
//! phase, flags and one word the phase gives a meaning (a parked poll's CORS origin, a
//! stream's token expiry) — 56 bytes, asserted below. Everything else (`holdfast::buffer::Io`:
//! read buffer, request framing, write queue) is boxed, taken from a per-worker pool
//! when bytes arrive or a write would block, and returned when the connection goes idle
//! or parks. A parked long-poll or an idle keep-alive connection owns no heap memory.

use std::net::TcpStream;

use holdfast::buffer::Io;
use holdfast::park::{ParkLink, ParkSlots};
use holdfast::stream::Framing;
use holdfast::wheel::{TimerNode, TimerSlots};

/// What the connection is doing, and so what its timer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the first byte of a request; timer: keep-alive (header timeout on a
    /// connection that has not sent a request yet).
    Idle,
    /// A request is partly read; timer: header timeout, armed at its first byte.
    Head,
    /// A long-poll is parked; timer: poll timeout.
    Parked,
    /// A stream is open and linked like a parked poll; timer: heartbeat.
    Stream(Framing),
    /// A response is partly written and the socket is full; timer: send timeout.
    Send,
    /// Final response written, write side shut; reading and dropping input until the
    /// client closes, so our close does not turn into a reset that eats the response.
    Linger,
    /// Cluster mode: the request at the front waits for the backplane's reply (it stays
    /// in the read buffer and is handled again with the reply); timer: a little past
    /// `--redis-timeout`, then `503`.
    Backplane,
}

/// The timeouts the state machine arms, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: u64,
    pub keepalive: u64,
    pub heartbeat: u64,
    pub linger: u64,
}

/// Something that happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Accepted: the first head must arrive within the header timeout.
    Accepted,
    /// Its timer fired; `unix_ms` is the wall clock (a stream's token expiry is on it).
    Timer { unix_ms: u64 },
    /// Its request parked as a long-poll held for `hold_ms`.
    Parked {
        hold_ms: u64,
        /// A gap was already known (the delivery says `Messages-Lost`).
        lost: bool,
        /// The client asked to close after the response.
        close_after: bool,
        /// The allowed CORS origin its answer names (`Cors::lookup`; 0: none).
        origin: u32,
    },
    /// Its request became a stream.
    Streaming {
        framing: Framing,
        /// On more than one channel: messages name their channel.
        named: bool,
        lost: bool,
        /// Its subscriber token's expiry: the stream ends then.
        expiry: Expiry,
        /// The wall clock now.
        unix_ms: u64,
    },
    /// Taken off the park lists (answered, ended, or gone).
    Unparked,
    /// Its request went to the backplane; the reply is due within `ms`.
    Deferred { ms: u64 },
    /// The backplane's reply came (or its timer fired): the request is handled again.
    Resumed,
    /// A response was queued; `close` ends the connection after it.
    Answered { close: bool },
    /// Its stream ended (channel deleted, shutdown, backlog overflow): close once the
    /// last bytes are written.
    Ended,
    /// The write side failed: the connection is dead.
    Failed,
    /// The client closed its side (or reset): no more input will come.
    ClientClosed,
    /// Finish the current request, then close (the client asked for it, or the server
    /// is shutting down).
    CloseAfter,
    /// A round of work on it ended: recompute what it waits for.
    Settle,
}

/// What the worker must do after [`Conn::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing (the timer stays as it is).
    None,
    /// Arm the timer `ms` from now (replacing any deadline).
    Arm(u64),
    /// Cancel the timer.
    Disarm,
    /// A parked poll timed out: answer it (`204`).
    AnswerTimeout,
    /// The backplane did not reply in time: answer `503`.
    BackplaneTimeout,
    /// A stream's heartbeat is due: write one, then arm the timer `ms` from now.
    Heartbeat(u64),
    /// A stream's token expired: end it (final event, then close).
    Expire,
    /// Shut the write side, drain input, arm the timer `ms` from now (close if the shut
    /// fails or the client already closed).
    Linger(u64),
    /// Close now.
    Close,
}

/// Flag bits in `Conn::flags`.
mod flag {
    /// Accepted on the admin listener.
    pub const ADMIN: u8 = 1;
    /// Close once the current response is written.
    pub const CLOSE_AFTER: u8 = 2;
    /// A gap was already known when the subscriber parked (`Messages-Lost` on delivery).
    pub const LOST: u8 = 4;
    /// At least one request has completed (timer for `Idle` is keep-alive, not header).
    pub const SERVED: u8 = 8;
    /// The peer closed its write side (or reset); no more input will come.
    pub const EOF: u8 = 16;
    /// A write failed: the connection is dead, close it when control returns.
    pub const DEAD: u8 = 32;
    /// A stream on more than one channel (events carry their channel).
    pub const NAMED: u8 = 64;
}

/// A subscriber token's expiry as a stream keeps it: seconds after [`Expiry::BASE`]
/// (4 bytes rather than 8; 0 = no token). Compared with the wall clock, since `exp` is
/// wall-clock time, at every heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry(u32);

impl Expiry {
    /// 2023-11-14 (Unix 1.7e9): the stored seconds reach to the year 2160.
    const BASE: u64 = 1_700_000_000;
    pub const NONE: Expiry = Expiry(0);

    /// From a token's `exp` (seconds since the Unix epoch). One already past, or before
    /// the base, is stored as expired; one past the range as its end.
    pub fn at(exp: u64) -> Expiry {
        Expiry(exp.saturating_sub(Self::BASE).clamp(1, u32::MAX as u64) as u32)
    }

    /// Milliseconds left at `unix_ms` (0 once expired); `None` without a token.
    pub fn left_ms(self, unix_ms: u64) -> Option<u64> {
        match self.0 {
            0 => None,
            s => Some(((s as u64 + Self::BASE) * 1000).saturating_sub(unix_ms)),
        }
    }
}

/// A connection slot. Hot: one per held connection, so every byte counts.
pub struct Conn {
    pub stream: TcpStream,
    /// Borrowed from the worker's pool while bytes are in flight.
    pub io: Option<Box<Io>>,
    timer: TimerNode,
    /// Parked or streaming: deliver only messages with a larger id.
    cursor: u64,
    link: ParkLink,
    /// What the phase needs besides the timer: `Parked`, the CORS origin its answer
    /// names (0: none); `Stream`, its token's [`Expiry`]. 0 in every other phase.
    aux: u32,
    /// Token generation (the worker's accept counter): an event whose generation
    /// differs is for an earlier occupant. 16 bits suffice: a stale reference can only
    /// come from the same poll batch (epoll reports an fd once per batch, and no slot is
    /// closed then reused within it without 65,536 accepts in between) or the same loop
    /// iteration's resume list (filled and drained with no accept in between); nginx
    /// keeps one bit, `ev->instance`, for this. A backplane reply also carries its
    /// request's own sequence number, which closing the connection forgets.
    gen: u16,
    phase: Phase,
    flags: u8,
}

/// The memory budget of a parked connection: the slot is everything it holds.
const _: () = assert!(std::mem::size_of::<Conn>() <= 56);

impl Conn {
    pub fn new(stream: TcpStream, gen: u16, admin: bool) -> Conn {
        Conn {
            stream,
            io: None,
            gen,
            timer: TimerNode::new(),
            cursor: 0,
            link: ParkLink::new(),
            aux: 0,
            phase: Phase::Idle,
            flags: if admin { flag::ADMIN } else { 0 },
        }
    }

    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    fn set(&mut self, f: u8) {
        self.flags |= f;
    }

    pub fn gen(&self) -> u16 {
        self.gen
    }

    /// A parked poll's CORS origin (`Cors::lookup`; 0: none).
    pub fn origin(&self) -> u32 {
        match self.phase {
            Phase::Parked => self.aux,
            _ => 0,
        }
    }

    /// A stream's token expiry.
    fn expiry(&self) -> Expiry {
        match self.phase {
            Phase::Stream(_) => Expiry(self.aux),
            _ => Expiry::NONE,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Parked as a long-poll or streaming: linked in the park lists.
    pub fn is_waiting(&self) -> bool {
        matches!(self.phase, Phase::Parked | Phase::Stream(_))
    }

    /// Parked, streaming, or waiting for the backplane: no request is read meanwhile.
    pub fn is_held(&self) -> bool {
        self.is_waiting() || self.phase == Phase::Backplane
    }

    /// The framing of its stream, if it is one.
    pub fn framing(&self) -> Option<Framing> {
        match self.phase {
            Phase::Stream(f) => Some(f),
            _ => None,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.has(flag::ADMIN)
    }

    /// It closes once what is queued is written.
    pub fn closing(&self) -> bool {
        self.has(flag::CLOSE_AFTER)
    }

    /// No more input will come from the client.
    pub fn input_ended(&self) -> bool {
        self.has(flag::EOF)
    }

    /// A write failed.
    pub fn is_dead(&self) -> bool {
        self.has(flag::DEAD)
    }

    /// A stream on more than one channel.
    pub fn named(&self) -> bool {
        self.has(flag::NAMED)
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Whether a delivery of a message newer than the cursor must signal a gap, given
    /// the channel's newest evicted id.
    pub fn gap_before(&self, evicted_max: u64) -> bool {
        self.has(flag::LOST) || (self.cursor != 0 && evicted_max > self.cursor)
    }

    /// A stream was sent message `id`: the cursor moves on and a known gap was told.
    pub fn delivered(&mut self, id: u64) {
        self.cursor = id;
        self.flags &= !flag::LOST;
    }

    /// Records where a waiting subscriber starts (before it parks or streams).
    pub fn wait_from(&mut self, cursor: u64) {
        self.cursor = cursor;
    }

    /// Output queued and not yet written.
    pub fn has_output(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.has_output())
    }

    /// Input buffered and not yet handled (or a body being read).
    pub fn has_input(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.has_input())
    }

    /// The transition function: every phase change goes through here.
    pub fn step(&mut self, input: Input, t: &Timeouts) -> Action {
        match input {
            Input::Accepted => {
                self.phase = Phase::Idle;
                Action::Arm(t.header)
            }
            Input::Timer { unix_ms } => match self.phase {
                // Answered by the worker, which then steps `Unparked` and `Answered`.
                Phase::Parked => Action::AnswerTimeout,
                Phase::Backplane => Action::BackplaneTimeout,
                // The timer is due at the next heartbeat or the token's expiry,
                // whichever comes first.
                Phase::Stream(_) => match self.expiry().left_ms(unix_ms) {
                    Some(0) => Action::Expire,
                    Some(left) => Action::Heartbeat(t.heartbeat.min(left)),
                    None => Action::Heartbeat(t.heartbeat),
                },
                // Header, keep-alive, send and linger timeouts all end the connection.
                Phase::Idle | Phase::Head | Phase::Send | Phase::Linger => Action::Close,
            },
            Input::Parked {
                hold_ms,
                lost,
                close_after,
                origin,
            } => {
                debug_assert!(!self.is_waiting(), "parked twice");
                self.phase = Phase::Parked;
                self.aux = origin;
                if lost {
                    self.set(flag::LOST);
                }
                if close_after {
                    self.set(flag::CLOSE_AFTER);
                }
                Action::Arm(hold_ms)
            }
            Input::Streaming {
                framing,
                named,
                lost,
                expiry,
                unix_ms,
            } => {
                debug_assert!(!self.is_waiting(), "streaming twice");
                self.phase = Phase::Stream(framing);
                self.aux = expiry.0;
                // A stream ends its connection (close-delimited body).
                self.set(flag::SERVED | flag::CLOSE_AFTER);
                if named {
                    self.set(flag::NAMED);
                }
                if lost {
                    self.set(flag::LOST);
                }
                match expiry.left_ms(unix_ms) {
                    Some(left) => Action::Arm(t.heartbeat.min(left)),
                    None => Action::Arm(t.heartbeat),
                }
            }
            Input::Deferred { ms } => {
                debug_assert!(!self.is_waiting(), "deferred while waiting");
                self.phase = Phase::Backplane;
                Action::Arm(ms)
            }
            Input::Resumed => {
                debug_assert_eq!(self.phase, Phase::Backplane);
                // The next `Settle` arms the timer for whatever comes next.
                self.phase = Phase::Head;
                Action::Disarm
            }
            Input::Unparked => {
                debug_assert!(self.is_waiting(), "unparked in {:?}", self.phase);
                self.phase = Phase::Idle;
                self.aux = 0;
                self.flags &= !(flag::LOST | flag::NAMED);
                Action::None
            }
            Input::Answered { close } => {
                self.set(flag::SERVED);
                if close {
                    self.set(flag::CLOSE_AFTER);
                }
                // The next `Settle` arms the timer for whatever comes next.
                self.phase = Phase::Idle;
                Action::Disarm
            }
            Input::Ended => {
                self.set(flag::SERVED | flag::CLOSE_AFTER);
                self.phase = Phase::Idle;
                Action::Disarm
            }
            Input::Failed => {
                self.set(flag::EOF | flag::DEAD);
                Action::None
            }
            Input::ClientClosed => {
                self.set(flag::EOF);
                Action::None
            }
            Input::CloseAfter => {
                self.set(flag::CLOSE_AFTER);
                Action::None
            }
            Input::Settle => self.settle(t),
        }
    }

    /// After a round of work: what the connection now waits for, from its buffers.
    fn settle(&mut self, t: &Timeouts) -> Action {
        if self.is_dead() {
            return Action::Close;
        }
        if self.is_waiting() || matches!(self.phase, Phase::Linger | Phase::Backplane) {
            return Action::None;
        }
        let has_out = self.has_output();
        if self.closing() && !has_out {
            if self.input_ended() {
                return Action::Close;
            }
            self.phase = Phase::Linger;
            return Action::Linger(t.linger);
        }
        let (phase, ms) = if has_out {
            (Phase::Send, t.keepalive)
        } else if self.has_input() || !self.has(flag::SERVED) {
            (Phase::Head, t.header)
        } else {
            (Phase::Idle, t.keepalive)
        };
        let fresh = !self.timer.is_armed();
        if phase == self.phase && !fresh {
            return Action::None;
        }
        // A new connection's header deadline counts from accept: keep it.
        let keep =
            self.phase == Phase::Idle && phase == Phase::Head && !self.has(flag::SERVED) && !fresh;
        self.phase = phase;
        if keep {
            Action::None
        } else {
            Action::Arm(ms)
        }
    }
}

/// The slab of connections gives the timer wheel and the park lists their links.
pub struct Slots<'a>(pub &'a mut slab::Slab<Conn>);

impl TimerSlots for Slots<'_> {
    fn node(&mut self, key: u32) -> &mut TimerNode {
        &mut self.0[key as usize].timer
    }
}

impl ParkSlots for Slots<'_> {
    fn link(&mut self, conn: u32) -> &mut ParkLink {
        &mut self.0[conn as usize].link
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    const T: Timeouts = Timeouts {
        header: 10,
        keepalive: 20,
        heartbeat: 30,
        linger: 40,
    };

    fn conn() -> Conn {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        Conn::new(s, 1, false)
    }

    #[test]
    fn a_timer_means_what_the_phase_says() {
        let mut c = conn();
        assert_eq!(c.step(Input::Accepted, &T), Action::Arm(10));
        assert_eq!(
            c.step(Input::Timer { unix_ms: 0 }, &T),
            Action::Close,
            "header timeout"
        );
        let p = Input::Parked {
            hold_ms: 500,
            lost: false,
            close_after: false,
            origin: 3,
        };
        assert_eq!(c.step(p, &T), Action::Arm(500));
        assert_eq!(
            c.step(Input::Timer { unix_ms: 0 }, &T),
            Action::AnswerTimeout
        );
        assert_eq!(c.origin(), 3, "a parked poll keeps its origin");
        assert_eq!(c.phase(), Phase::Parked, "parked until answered");
        assert_eq!(c.step(Input::Unparked, &T), Action::None);
        assert_eq!(c.step(Input::Answered { close: false }, &T), Action::Disarm);
        // Served, nothing buffered, nothing queued: keep-alive.
        assert_eq!(c.step(Input::Settle, &T), Action::Arm(20));
        assert_eq!(c.phase(), Phase::Idle);
        assert_eq!(
            c.step(Input::Timer { unix_ms: 0 }, &T),
            Action::Close,
            "keep-alive timeout"
        );
    }

    #[test]
    fn a_stream_heartbeats_and_ends_by_lingering() {
        let mut c = conn();
        c.step(Input::Accepted, &T);
        let s = Input::Streaming {
            framing: Framing::Sse,
            named: true,
            lost: true,
            expiry: Expiry::NONE,
            unix_ms: 0,
        };
        assert_eq!(c.step(s, &T), Action::Arm(30));
        assert!(c.named() && c.gap_before(0) && c.closing());
        assert_eq!(
            c.step(Input::Timer { unix_ms: 0 }, &T),
            Action::Heartbeat(30)
        );
        c.wait_from(5);
        c.delivered(6);
        assert!(!c.gap_before(6) && c.gap_before(7));
        assert_eq!(c.step(Input::Settle, &T), Action::None, "streams stay");
        c.step(Input::Unparked, &T);
        assert_eq!(c.step(Input::Ended, &T), Action::Disarm);
        assert_eq!(c.step(Input::Settle, &T), Action::Linger(40));
        assert_eq!(c.phase(), Phase::Linger);
        assert_eq!(
            c.step(Input::Timer { unix_ms: 0 }, &T),
            Action::Close,
            "linger timeout"
        );
    }

    #[test]
    fn settle_keeps_the_first_header_deadline_and_closes_the_dead() {
        let mut c = conn();
        c.step(Input::Accepted, &T);
        // The wheel armed the timer; model that.
        c.timer = armed();
        assert_eq!(
            c.step(Input::Settle, &T),
            Action::None,
            "deadline from accept"
        );
        assert_eq!(c.phase(), Phase::Head);
        c.step(Input::Answered { close: true }, &T);
        c.step(Input::ClientClosed, &T);
        assert_eq!(
            c.step(Input::Settle, &T),
            Action::Close,
            "client already gone"
        );
        let mut c = conn();
        c.step(Input::Failed, &T);
        assert_eq!(c.step(Input::Settle, &T), Action::Close);
    }

    #[test]
    fn a_stream_ends_at_its_token_expiry_not_after() {
        let exp = 1_800_000_000u64;
        let ms = |s: u64| s * 1000;
        let mut c = conn();
        c.step(Input::Accepted, &T);
        let s = Input::Streaming {
            framing: Framing::Sse,
            named: false,
            lost: false,
            expiry: Expiry::at(exp),
            unix_ms: ms(exp) - 100,
        };
        assert_eq!(c.step(s, &T), Action::Arm(30), "heartbeat first");
        // 50 ms before: a heartbeat, the next due in 30; 20 ms before: due at the expiry.
        assert_eq!(
            c.step(
                Input::Timer {
                    unix_ms: ms(exp) - 50
                },
                &T
            ),
            Action::Heartbeat(30)
        );
        assert_eq!(
            c.step(
                Input::Timer {
                    unix_ms: ms(exp) - 20
                },
                &T
            ),
            Action::Heartbeat(20)
        );
        assert_eq!(
            c.step(Input::Timer { unix_ms: ms(exp) }, &T),
            Action::Expire
        );
        assert_eq!(
            c.step(
                Input::Timer {
                    unix_ms: ms(exp) + 9
                },
                &T
            ),
            Action::Expire
        );
        assert_eq!(c.origin(), 0, "a stream has no origin to keep");
        c.step(Input::Unparked, &T);
        assert_eq!(c.aux, 0, "cleared when unparked");
        // Expired already (accepted within the leeway): the first timer is now.
        let mut c = conn();
        let s = Input::Streaming {
            framing: Framing::Sse,
            named: false,
            lost: false,
            expiry: Expiry::at(exp),
            unix_ms: ms(exp) + 2000,
        };
        assert_eq!(c.step(s, &T), Action::Arm(0));
        assert_eq!(
            Expiry::at(5).left_ms(0),
            Some(ms(1_700_000_001)),
            "before the base: the base + 1 s"
        );
        assert_eq!(Expiry::NONE.left_ms(0), None);
    }

    fn armed() -> TimerNode {
        let mut w = holdfast::wheel::Wheel::new(0);
        struct One(TimerNode);
        impl TimerSlots for One {
            fn node(&mut self, _: u32) -> &mut TimerNode {
                &mut self.0
            }
        }
        let mut one = One(TimerNode::new());
        w.insert(&mut one, 0, 100);
        one.0
    }
}
