//! A connection's heap state: its read buffer (with the framing of the request at its
//! front) and its queue of output the socket has not taken yet. I/O-free: reads come
//! through any `Read`, writes are the server's business.
//!
//! The server borrows an [`Io`] from a per-worker pool only while a connection has bytes
//! in flight and gives it back when the connection is idle, parked or streaming with
//! nothing queued, so a held connection owns no heap memory.

use std::collections::VecDeque;
use std::io::{self, Read};

use bytes::Bytes;

use crate::http::framing::{Framed, Framer};

/// Per-connection heap state, pooled per worker.
///
/// The read buffer is `rbuf`; input read and not yet handled is `rbuf[rpos..rend]`. The
/// bytes past `rend` are spare room for the next read. `rbuf` is kept at its full length
/// (up to its capacity) and zeroed only when it grows, so a read is handed the spare room
/// as it is: filling it on every read (`resize` before, `truncate` after) cost a memset
/// of ~4 KiB per read, which is most of the work a one-byte-per-read client causes.
#[derive(Default)]
pub struct Io {
    rbuf: Vec<u8>,
    /// Start of unhandled input in `rbuf`.
    rpos: usize,
    /// End of input in `rbuf`; `rpos <= rend <= rbuf.len()`.
    rend: usize,
    /// The request at the front of the input, across reads.
    framer: Framer,
    /// Output not yet accepted by the socket, in order.
    wq: VecDeque<Bytes>,
    wq_bytes: usize,
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

    /// Frames the request at the front of the input (see [`Framer::next`]). After a
    /// `Partial` the caller applies its `cut` with [`cut`](Io::cut); after a `Request`
    /// it calls [`consume`](Io::consume) with its length once it is handled.
    pub fn frame(&mut self, max_body: usize) -> Framed<'_> {
        self.framer.next(&self.rbuf[self.rpos..self.rend], max_body)
    }

    /// Removes `len` bytes of decoded chunk framing at `start` (relative to the input).
    pub fn cut(&mut self, (start, len): (usize, usize)) {
        let from = self.rpos + start;
        self.rbuf.copy_within(from + len..self.rend, from);
        self.rend -= len;
    }

    /// Input buffered and not yet handled, or a request body still expected.
    pub fn has_input(&self) -> bool {
        self.rpos < self.rend || self.framer.in_body()
    }

    /// Output queued and not yet written.
    pub fn has_output(&self) -> bool {
        !self.wq.is_empty()
    }

    /// Bytes queued and not yet written.
    pub fn output_bytes(&self) -> usize {
        self.wq_bytes
    }

    /// The oldest queued output.
    pub fn front_output(&self) -> Option<&Bytes> {
        self.wq.front()
    }

    /// `n` bytes of the oldest queued output were written.
    pub fn output_written(&mut self, n: usize) {
        let Some(front) = self.wq.front_mut() else {
            return;
        };
        debug_assert!(n <= front.len(), "wrote {n} of {}", front.len());
        self.wq_bytes -= n;
        if n >= front.len() {
            self.wq.pop_front();
        } else {
            let _ = front.split_to(n);
        }
    }

    /// Forgets the handled request at the front of the buffer.
    pub fn consume(&mut self, n: usize) {
        self.rpos += n;
        self.framer.reset();
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
            // The framer's scan position counts from `rpos`: it does not move.
            self.rpos = 0;
        }
    }

    /// Puts `input` back in front of whatever is buffered, as unhandled input, and
    /// forgets the framing state: the request at its front is framed afresh.
    pub fn unread(&mut self, input: &[u8]) {
        self.compact();
        let need = self.rend + input.len();
        if self.rbuf.len() < need {
            self.rbuf.resize(need, 0);
        }
        self.rbuf.copy_within(0..self.rend, input.len());
        self.rbuf[..input.len()].copy_from_slice(input);
        self.rend = need;
        self.framer.reset();
    }

    /// Drops all buffered input and any body in progress: nothing after it is trusted
    /// to be a request.
    pub fn discard_input(&mut self) {
        self.rpos = 0;
        self.rend = 0;
        self.framer.reset();
    }

    /// Ready for reuse by another connection. A buffer up to `KEEP_CAPACITY` is kept,
    /// still zeroed-once; a larger one is replaced by 4 KiB, zeroed at its first read.
    pub fn reset(&mut self) {
        if self.rbuf.capacity() > Self::KEEP_CAPACITY {
            self.rbuf = Vec::with_capacity(4096);
        }
        self.rpos = 0;
        self.rend = 0;
        self.framer.reset();
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
        assert_eq!((io.rpos, io.rend, io.rbuf.len()), (4000, 4096, 4096));
        let n = io
            .read_from(&mut Scribble { n: 10, fill: 2 }, LIMIT)
            .unwrap();
        assert_eq!(n, 10);
        assert_eq!((io.rpos, io.rend, io.rbuf.len()), (0, 106, 4096));
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
        // A body is expected: the head says so.
        io.read_from(&mut &b"\r\nContent-Length: 100\r\n\r\n"[..], LIMIT)
            .unwrap();
        assert!(matches!(io.frame(1000), Framed::Partial { .. }));
        assert!(io.has_input());
        io.discard_input();
        assert!(io.input().is_empty());
        assert_eq!((io.rpos, io.rend), (0, 0));
        assert!(!io.has_input(), "no body expected any more");
    }

    #[test]
    fn unhandled_input_goes_out_and_back_in_front() {
        let mut io = Io::default();
        let mut src: &[u8] = b"GET /a HTTP/1.1\r\n\r\nGET /b";
        io.read_from(&mut src, 1024).unwrap();
        let saved = io.input().to_vec();
        io.discard_input();
        let mut more: &[u8] = b" HTTP/1.1\r\n\r\n";
        io.read_from(&mut more, 1024).unwrap();
        io.unread(&saved);
        assert_eq!(
            io.input(),
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
        );
        match io.frame(0) {
            crate::http::framing::Framed::Request { req, len, .. } => {
                assert_eq!((req.path, len), (&b"/a"[..], 19));
            }
            _ => panic!("the first request is framed again"),
        }
    }
}
