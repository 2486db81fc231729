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
use std::io::{self, Read};

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
            .is_some_and(|io| io.rpos < io.rend || io.body.is_some())
    }
}

/// How far the body of the request at the front of the buffer has arrived.
pub enum BodyProgress {
    /// `Content-Length`: the request is complete once the input holds this many bytes.
    Length { total: usize },
    /// Chunked: raw bytes after the head consumed so far, and the decoded body.
    Chunked {
        decoder: ChunkedDecoder,
        consumed: usize,
        body: Vec<u8>,
    },
}

/// Per-connection heap state, pooled per worker.
///
/// The read buffer is `rbuf`; input read and not yet handled is `rbuf[rpos..rend]`. The
/// bytes past `rend` are spare room for the next read. `rbuf` is kept at its full length
/// (up to its capacity) and zeroed only when it grows, so a read is handed the spare room
/// as it is: filling it on every read (`resize` before, `truncate` after) cost a memset
/// of ~4 KiB per read, which is most of the work a one-byte-per-read client causes.
#[derive(Default)]
pub struct Io {
    pub rbuf: Vec<u8>,
    /// Start of unhandled input in `rbuf`.
    pub rpos: usize,
    /// End of input in `rbuf`; `rpos <= rend <= rbuf.len()`.
    pub rend: usize,
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

    /// Input read and not yet handled.
    pub fn input(&self) -> &[u8] {
        &self.rbuf[self.rpos..self.rend]
    }

    /// Bytes of input read and not yet handled.
    pub fn buffered(&self) -> usize {
        self.rend - self.rpos
    }

    /// One read from `src` into the buffer, at most `limit - buffered` bytes. `Ok(0)` is
    /// end of input, so the caller stops before `limit` is reached (a read into no room
    /// would look the same).
    ///
    /// With less than 1 KiB of room left, a full buffer is compacted and any other grown
    /// (to twice its size, at least 4 KiB more than it holds); only the new bytes are
    /// zeroed.
    pub fn read_from(&mut self, src: &mut impl Read, limit: usize) -> io::Result<usize> {
        debug_assert!(
            self.buffered() < limit,
            "read with {} buffered, limit {limit}",
            self.buffered()
        );
        // Compact before growing: a keep-alive client whose every read ends a request
        // and starts the next never empties the buffer, so without this it would double
        // with the total bytes sent rather than with what is unhandled.
        if self.rpos > 0 && self.rbuf.len() - self.rend < 1024 {
            self.compact();
        }
        if self.rbuf.len() - self.rend < 1024 {
            let grown = (self.rend + 4096).max(2 * self.rbuf.len());
            self.rbuf.resize(grown, 0);
        }
        let room = (self.rbuf.len() - self.rend).min(limit - self.buffered());
        let n = src.read(&mut self.rbuf[self.rend..self.rend + room])?;
        // A `Read` that claims more than it was given is a bug, not input.
        debug_assert!(n <= room, "read {n} bytes into {room}");
        self.rend += n.min(room);
        Ok(n)
    }

    /// Forgets the handled request at the front of the buffer.
    pub fn consume(&mut self, n: usize) {
        self.rpos += n;
        self.scanned = 0;
        self.body = None;
        self.continue_sent = false;
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
        }
    }

    /// Moves unhandled input to the front so the buffer does not creep.
    pub fn compact(&mut self) {
        if self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            self.rend -= self.rpos;
            self.scanned = self.scanned.saturating_sub(self.rpos);
            self.rpos = 0;
        }
    }

    /// Drops all buffered input and any body in progress: nothing after it is trusted
    /// to be a request.
    pub fn discard_input(&mut self) {
        self.rpos = 0;
        self.rend = 0;
        self.scanned = 0;
        self.body = None;
    }

    /// Ready for reuse by another connection. A buffer up to `KEEP_CAPACITY` is kept,
    /// still zeroed-once; a larger one is replaced by 4 KiB, zeroed at its first read.
    pub fn reset(&mut self) {
        if self.rbuf.capacity() > Self::KEEP_CAPACITY {
            self.rbuf = Vec::with_capacity(4096);
        }
        self.rpos = 0;
        self.rend = 0;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that fills all the room it is given with `fill` and says it read `n`.
    struct Scribble {
        n: usize,
        fill: u8,
    }
    impl Read for Scribble {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(self.fill);
            Ok(self.n.min(buf.len()))
        }
    }

    /// A socket with nothing to read.
    struct Drained;
    impl Read for Drained {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    const LIMIT: usize = 64 * 1024;

    #[test]
    fn spare_room_is_not_zeroed_again_on_every_read() {
        // The regression: every read refilled the spare room with zeros (~4 KiB per
        // one-byte read). The room the second read sees must still hold what the first
        // read left there.
        let mut io = Io::default();
        assert_eq!(
            io.read_from(&mut Scribble { n: 1, fill: 7 }, LIMIT)
                .unwrap(),
            1
        );
        let ptr = io.rbuf.as_ptr();
        struct Check;
        impl Read for Check {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                assert!(buf.len() > 1024, "room {}", buf.len());
                assert!(buf.iter().all(|&b| b == 7), "spare room was rewritten");
                buf[0] = b'x';
                Ok(1)
            }
        }
        assert_eq!(io.read_from(&mut Check, LIMIT).unwrap(), 1);
        assert!(io.read_from(&mut Drained, LIMIT).is_err());
        assert_eq!(io.input(), &[7, b'x']);
        assert_eq!(io.rbuf.as_ptr(), ptr, "no reallocation");
    }

    #[test]
    fn pipelined_input_that_never_drains_does_not_grow_the_buffer() {
        // Each read ends one request and starts the next: rpos never returns to 0.
        let mut io = Io::default();
        io.read_from(&mut Scribble { n: 100, fill: 1 }, LIMIT)
            .unwrap();
        for _ in 0..100_000 {
            io.read_from(&mut Scribble { n: 600, fill: 2 }, LIMIT)
                .unwrap();
            io.consume(600);
            assert_eq!(io.buffered(), 100);
        }
        assert!(
            io.rbuf.len() <= 8192,
            "buffer grew to {} bytes holding 100 unhandled",
            io.rbuf.len()
        );
    }

    #[test]
    fn byte_by_byte_input_arrives_intact() {
        let head = b"GET /sub/a?timeout=30 HTTP/1.1\r\nHost: t\r\n\r\n";
        let mut io = Io::default();
        for i in 0..head.len() {
            assert_eq!(io.read_from(&mut &head[i..i + 1], LIMIT).unwrap(), 1);
            assert!(io.read_from(&mut Drained, LIMIT).is_err());
            assert_eq!(io.input(), &head[..i + 1]);
        }
        assert_eq!(io.buffered(), head.len());
        io.consume(head.len());
        assert_eq!((io.rpos, io.rend, io.buffered()), (0, 0, 0));
        assert_eq!(
            io.rbuf.len(),
            4096,
            "the buffer is kept for the next request"
        );
    }

    #[test]
    fn reads_stop_at_the_limit() {
        // (limit, already buffered, room the read may use)
        for (limit, have, room) in [(10, 0, 10), (10, 9, 1), (5000, 1000, 3096), (100, 50, 50)] {
            let mut io = Io::default();
            if have > 0 {
                io.read_from(&mut Scribble { n: have, fill: 1 }, LIMIT)
                    .unwrap();
            }
            let n = io
                .read_from(
                    &mut Scribble {
                        n: usize::MAX,
                        fill: 2,
                    },
                    limit,
                )
                .unwrap();
            assert_eq!(n, room, "limit {limit}, {have} buffered");
            assert_eq!(io.buffered(), have + room);
        }
        // The end of input is an empty read, not an error.
        let mut io = Io::default();
        assert_eq!(io.read_from(&mut &b""[..], LIMIT).unwrap(), 0);
        assert_eq!(io.buffered(), 0);
    }

    #[test]
    fn a_full_buffer_with_handled_input_in_front_is_compacted_not_grown() {
        let mut io = Io::default();
        io.read_from(&mut Scribble { n: 4096, fill: 1 }, LIMIT)
            .unwrap();
        io.consume(4000);
        io.scanned = 50;
        assert_eq!((io.rpos, io.rend, io.rbuf.len()), (4000, 4096, 4096));
        let n = io
            .read_from(&mut Scribble { n: 10, fill: 2 }, LIMIT)
            .unwrap();
        assert_eq!(n, 10);
        assert_eq!((io.rpos, io.rend, io.rbuf.len()), (0, 106, 4096));
        assert_eq!(io.scanned, 0, "scanned is relative to rpos");
        assert!(io.input()[..96].iter().all(|&b| b == 1));
        assert!(io.input()[96..].iter().all(|&b| b == 2));
    }

    #[test]
    fn a_buffer_short_of_room_grows_keeping_its_input() {
        // (bytes buffered before the read, buffer length after it): grown to twice its
        // size once less than 1 KiB is free, else left as it is.
        let table = [
            (0, 4096),
            (3000, 4096),
            (3100, 8192),
            (8192, 16384),
            (20000, 32768),
        ];
        for (have, len) in table {
            let mut io = Io::default();
            let mut src = Scribble { n: have, fill: 3 };
            while io.buffered() < have {
                src.n = have - io.buffered();
                io.read_from(&mut src, LIMIT).unwrap();
            }
            io.read_from(&mut Scribble { n: 1, fill: 4 }, LIMIT)
                .unwrap();
            assert_eq!(io.rbuf.len(), len, "{have} buffered");
            assert_eq!(io.buffered(), have + 1);
            assert!(io.input()[..have].iter().all(|&b| b == 3));
            assert_eq!(io.input()[have], 4);
        }
    }

    #[test]
    fn reset_keeps_a_small_buffer_and_replaces_a_large_one() {
        let mut io = Io::default();
        io.read_from(&mut Scribble { n: 100, fill: 1 }, LIMIT)
            .unwrap();
        let ptr = io.rbuf.as_ptr();
        io.reset();
        assert_eq!((io.rpos, io.rend, io.rbuf.as_ptr()), (0, 0, ptr));
        assert_eq!(io.read_from(&mut &b"a"[..], LIMIT).unwrap(), 1);
        assert_eq!(io.input(), b"a");

        let mut io = Io::default();
        while io.buffered() < 20_000 {
            io.read_from(&mut Scribble { n: 4096, fill: 1 }, LIMIT)
                .unwrap();
        }
        assert!(io.rbuf.capacity() > Io::KEEP_CAPACITY);
        io.reset();
        assert_eq!(io.rbuf.capacity(), 4096);
        assert_eq!(io.read_from(&mut &b"b"[..], LIMIT).unwrap(), 1);
        assert_eq!(io.input(), b"b");
    }

    #[test]
    fn discarded_input_is_gone() {
        let mut io = Io::default();
        io.read_from(&mut &b"GET / HTTP/1.1\r\nX: 1"[..], LIMIT)
            .unwrap();
        io.scanned = 10;
        io.body = Some(BodyProgress::Length { total: 100 });
        io.discard_input();
        assert!(io.input().is_empty());
        assert_eq!((io.rpos, io.rend, io.scanned), (0, 0, 0));
        assert!(io.body.is_none());
    }
}
