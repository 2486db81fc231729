//! One client connection: its slot in the worker's slab, and the heap state it borrows
//! only while it has bytes in flight.
//!
//! A connection is in one [`Phase`]; the phase decides what its single timer means
//! (header deadline, keep-alive, poll timeout, send timeout, linger) and what an input
//! event does. Transitions happen in the worker (`event_loop.rs`) through `settle`, which
//! recomputes the phase from the facts (parked? output pending? input buffered?) after
//! every piece of work, so a timeout is just one more input to the same handler.
//!
//! Memory: the slot is [`Conn`] — socket, generation, timer links, park links, cursor,
//! phase and flags — 56 bytes, asserted below. Everything else ([`Io`]: read buffer,
//! write queue, body decoder) is boxed, taken from a per-worker pool when bytes arrive or
//! a write would block, and returned when the connection goes idle or parks. A parked
//! long-poll or an idle keep-alive connection therefore owns no heap memory at all.

use std::collections::VecDeque;

use bytes::Bytes;
use std::net::TcpStream;

use crate::http::chunked::ChunkedDecoder;
use crate::park::{ParkLink, ParkSlots};
use crate::wheel::{TimerNode, TimerSlots};

/// What the connection is doing, and so what its timer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Waiting for the first byte of a request; timer: keep-alive (header timeout on a
    /// connection that has not sent a request yet).
    Idle,
    /// A request is partly read; timer: header timeout, armed at its first byte.
    Head,
    /// A long-poll is parked; timer: poll timeout.
    Parked,
    /// An SSE stream is open and linked like a parked poll; timer: heartbeat.
    Stream,
    /// A response is partly written and the socket is full; timer: send timeout.
    Send,
    /// Final response written, write side shut; reading and dropping input until the
    /// client closes, so our close does not turn into a reset that eats the response.
    Linger,
}

/// Flag bits in [`Conn::flags`].
pub mod flag {
    /// Accepted on the admin listener.
    pub const ADMIN: u8 = 1;
    /// Close once the current response is written.
    pub const CLOSE_AFTER: u8 = 2;
    /// A gap was already known when the long-poll parked (`Messages-Lost` on delivery).
    pub const LOST: u8 = 4;
    /// At least one request has completed (timer for `Idle` is keep-alive, not header).
    pub const SERVED: u8 = 8;
    /// The peer closed its write side (or reset); no more input will come.
    pub const EOF: u8 = 16;
    /// A write failed: the connection is dead, close it when control returns.
    pub const DEAD: u8 = 32;
    /// An SSE stream on more than one channel (events carry `event: CHANNEL`).
    pub const MULTI: u8 = 64;
}

/// A connection slot. Hot: one per held connection, so every byte counts.
pub struct Conn {
    pub stream: TcpStream,
    /// Token generation: an event whose generation differs is for an earlier occupant.
    pub gen: u32,
    pub timer: TimerNode,
    pub io: Option<Box<Io>>,
    /// Parked: the effective cursor (deliver only messages with a larger id).
    pub cursor: u64,
    pub link: ParkLink,
    pub phase: Phase,
    pub flags: u8,
}

/// The memory budget of a parked connection: the slot is everything it holds.
const _: () = assert!(std::mem::size_of::<Conn>() <= 56);

impl Conn {
    pub fn new(stream: TcpStream, gen: u32, admin: bool) -> Conn {
        Conn {
            stream,
            gen,
            timer: TimerNode::new(),
            io: None,
            cursor: 0,
            link: ParkLink::new(),
            phase: Phase::Idle,
            flags: if admin { flag::ADMIN } else { 0 },
        }
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    pub fn set(&mut self, f: u8) {
        self.flags |= f;
    }

    pub fn clear(&mut self, f: u8) {
        self.flags &= !f;
    }

    /// Output queued and not yet written.
    pub fn has_output(&self) -> bool {
        self.io.as_ref().is_some_and(|io| !io.wq.is_empty())
    }

    /// Input buffered and not yet handled (or a body being read).
    pub fn has_input(&self) -> bool {
        self.io
            .as_ref()
            .is_some_and(|io| io.rpos < io.rbuf.len() || io.body.is_some())
    }
}

/// How far the body of the request at the front of the buffer has arrived.
pub enum BodyProgress {
    /// `Content-Length`: the request is complete once `rbuf[rpos..]` holds this many bytes.
    Length { total: usize },
    /// Chunked: raw bytes after the head consumed so far, and the decoded body.
    Chunked {
        decoder: ChunkedDecoder,
        consumed: usize,
        body: Vec<u8>,
    },
}

/// Per-connection heap state, pooled per worker.
#[derive(Default)]
pub struct Io {
    pub rbuf: Vec<u8>,
    /// Start of unhandled input in `rbuf`.
    pub rpos: usize,
    /// Bytes of the current head already scanned for its end (see `parse::head_end`).
    pub scanned: usize,
    pub body: Option<BodyProgress>,
    /// `100 Continue` already sent for the request at the front.
    pub continue_sent: bool,
    /// Output not yet accepted by the socket, in order.
    pub wq: VecDeque<Bytes>,
    pub wq_bytes: usize,
}

impl Io {
    /// Largest read buffer kept when an `Io` goes back to the pool.
    pub const KEEP_CAPACITY: usize = 16 * 1024;

    /// Forgets the handled request at the front of the buffer.
    pub fn consume(&mut self, n: usize) {
        self.rpos += n;
        self.scanned = 0;
        self.body = None;
        self.continue_sent = false;
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
    }

    /// Moves unhandled input to the front so the buffer does not creep.
    pub fn compact(&mut self) {
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.scanned = self.scanned.saturating_sub(self.rpos);
            self.rpos = 0;
        }
    }

    /// Ready for reuse by another connection.
    pub fn reset(&mut self) {
        self.rbuf.clear();
        if self.rbuf.capacity() > Self::KEEP_CAPACITY {
            self.rbuf = Vec::with_capacity(4096);
        }
        self.rpos = 0;
        self.scanned = 0;
        self.body = None;
        self.continue_sent = false;
        self.wq.clear();
        self.wq_bytes = 0;
    }

    pub fn push_output(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.wq_bytes += b.len();
            self.wq.push_back(b);
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
