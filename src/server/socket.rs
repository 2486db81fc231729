//! Socket I/O of a connection: readiness dispatch, reading into the connection's
//! buffer, writing (at once if the socket takes it, else queued), flushing the queue,
//! lingering after a final response, and closing.
//!
//! Replies are written as soon as they are rendered (one `writev` of head, tail and the
//! shared payload); only what the socket refuses is copied into the connection's write
//! queue, and the writable event that follows flushes it (redis's "install the write
//! handler only when the socket is full"). The connection's `Io` is borrowed from the
//! worker's pool for exactly as long as it holds bytes.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};

use bytes::Bytes;
use holdfast::buffer::Io;
use holdfast::stats::dec;
use holdfast::stream::Framing;

use super::conn::{Input, Phase, Slots};
use super::worker::Worker;

/// Pooled `Io` boxes kept per worker; more are freed (a burst does not pin memory).
const POOL_MAX: usize = 1024;
/// Most unhandled input buffered while a request is parked (pipelined requests behind
/// it wait, bounded).
pub const MAX_BUFFERED_INPUT: usize = 64 * 1024;

impl Worker {
    /// A readiness event for connection `key`.
    pub(super) fn on_ready(&mut self, key: usize, readable: bool, writable: bool, hup: bool) {
        if writable && self.conns[key].has_output() {
            self.flush(key);
        }
        let c = &self.conns[key];
        if c.is_dead() {
            self.close(key);
            return;
        }
        match c.phase() {
            Phase::Backplane => {
                // The request stays buffered until the reply; a client that half-closed
                // still gets its answer (a publish may already be carried out), and the
                // timer bounds the wait either way.
                if readable {
                    self.read_input(key, MAX_BUFFERED_INPUT);
                    if self.conns[key].is_dead() {
                        self.close(key);
                    } else {
                        self.release_io(key);
                    }
                }
            }
            Phase::Parked | Phase::Stream(_) => {
                // A stream whose backlog just drained gives its buffers back now, so an
                // idle stream owns nothing but its slot.
                let websocket = c.framing() == Some(Framing::WebSocket);
                self.release_io(key);
                if hup {
                    // Gone (or half-closed) while waiting: nothing will be read again,
                    // even if a full input buffer keeps us from seeing the EOF by reading.
                    self.close(key);
                } else if readable && websocket {
                    self.read_websocket(key);
                } else if readable {
                    self.read_while_parked(key);
                }
            }
            Phase::Linger => {
                if readable {
                    self.drain_linger(key);
                }
            }
            Phase::Idle | Phase::Head | Phase::Send => {
                if readable || !c.has_output() {
                    self.drive(key);
                } else {
                    self.settle(key);
                }
            }
        }
    }

    pub(super) fn take_io(&mut self, key: usize) -> Box<Io> {
        match self.conns[key].io.take() {
            Some(io) => io,
            None => self.pool.pop().unwrap_or_default(),
        }
    }

    /// Returns the conn's `Io` to the pool if it holds nothing.
    pub(super) fn release_io(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if c.has_input() || c.has_output() {
            return;
        }
        if let Some(io) = c.io.take() {
            self.recycle(io);
        }
    }

    fn recycle(&mut self, mut io: Box<Io>) {
        if self.pool.len() < POOL_MAX {
            io.reset();
            self.pool.push(io);
        }
    }

    /// Reads what the socket has into the conn's buffer, up to `limit` buffered bytes.
    /// Returns false if nothing more will come (EOF or error), having told the state
    /// machine.
    pub(super) fn read_input(&mut self, key: usize, limit: usize) -> bool {
        let mut io = self.take_io(key);
        let c = &mut self.conns[key];
        let mut ended = None;
        loop {
            if io.buffered() >= limit {
                break; // not draining: resumed later by `drive`
            }
            match io.read_from(&mut c.stream, limit) {
                Ok(0) => {
                    ended = Some(Input::ClientClosed);
                    break;
                }
                Ok(_) => {}
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => {
                        ended = Some(Input::Failed);
                        break;
                    }
                },
            }
        }
        c.io = Some(io);
        match ended {
            Some(input) => {
                self.step(key, input);
                false
            }
            None => true,
        }
    }

    fn read_while_parked(&mut self, key: usize) {
        // Pipelined requests behind a parked poll wait in the buffer (bounded); what
        // matters now is noticing a client that went away.
        if !self.read_input(key, MAX_BUFFERED_INPUT) || self.conns[key].input_ended() {
            self.close(key);
        } else {
            self.release_io(key);
        }
    }

    /// Reads and drops input until the client closes (then closes) or would block.
    pub(super) fn drain_linger(&mut self, key: usize) {
        let c = &mut self.conns[key];
        let mut sink = [0u8; 4096];
        loop {
            match c.stream.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.close(key);
    }

    /// The state machine chose to linger: shut the write side so the client sees the
    /// end, drop its further input, and close when it closes or `ms` pass.
    pub(super) fn start_linger(&mut self, key: usize, ms: u64) {
        let c = &mut self.conns[key];
        if c.stream.shutdown(Shutdown::Write).is_err() {
            self.close(key);
            return;
        }
        if let Some(io) = c.io.as_mut() {
            io.discard_input();
        }
        self.wheel
            .insert(&mut Slots(&mut self.conns), key as u32, self.now + ms);
        self.release_io(key);
        // The client may have closed already; edge-triggered means we must look now.
        self.drain_linger(key);
    }

    /// Writes the worker's scratch buffer `out` (a rendered response), then `payload`.
    pub(super) fn send_out(&mut self, key: usize, payload: Option<&Bytes>) {
        let out = std::mem::take(&mut self.out);
        self.send(key, &[&out], payload);
        self.out = out;
    }

    /// Writes `parts` then `payload` now if the socket takes them, queueing the rest.
    pub(super) fn send(&mut self, key: usize, parts: &[&[u8]], payload: Option<&Bytes>) {
        // What the socket refuses would be queued in an `Io` that the handler's caller
        // then overwrites (see `Worker::handling`).
        #[cfg(debug_assertions)]
        debug_assert_ne!(
            self.handling,
            Some(key),
            "write to {key} inside its handler"
        );
        let c = &mut self.conns[key];
        if c.is_dead() {
            return;
        }
        let mut written = 0;
        if !c.has_output() {
            let mut slices: [IoSlice<'_>; 4] = [IoSlice::new(&[]); 4];
            let mut n = 0;
            for p in parts.iter().filter(|p| !p.is_empty()) {
                slices[n] = IoSlice::new(p);
                n += 1;
            }
            if let Some(p) = payload.filter(|p| !p.is_empty()) {
                slices[n] = IoSlice::new(p);
                n += 1;
            }
            match write_all_vectored(&mut c.stream, &mut slices[..n]) {
                Ok(w) => written = w,
                Err(_) => {
                    self.step(key, Input::Failed);
                    return;
                }
            }
        }
        let total: usize =
            parts.iter().map(|p| p.len()).sum::<usize>() + payload.map_or(0, |p| p.len());
        if written == total {
            return;
        }
        // Queue the rest: copies of our scratch parts, slices of the shared payload.
        let mut io = self.take_io(key);
        let mut skip = written;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            io.push_output(Bytes::copy_from_slice(&p[skip..]));
            skip = 0;
        }
        if let Some(p) = payload {
            if skip < p.len() {
                io.push_output(p.slice(skip..));
            }
        }
        self.conns[key].io = Some(io);
    }

    /// Writes queued output until it is gone or the socket is full.
    pub(super) fn flush(&mut self, key: usize) {
        let c = &mut self.conns[key];
        let Some(io) = c.io.as_mut() else { return };
        let mut failed = false;
        while let Some(front) = io.front_output() {
            match c.stream.write(front) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => io.output_written(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.step(key, Input::Failed);
        }
    }

    /// Closes `key` now: off the park lists and the wheel, buffers back to the pool.
    pub(super) fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        if self.conns[key].is_waiting() {
            self.unpark(key);
        }
        self.awaiting.remove(&key);
        self.wheel.cancel(&mut Slots(&mut self.conns), key as u32);
        let mut c = self.conns.remove(key);
        if let Some(io) = c.io.take() {
            self.recycle(io);
        }
        dec(&self.shared.stats.connections);
    }
}

/// `writev` until everything is written or the socket is full; returns bytes written.
fn write_all_vectored(s: &mut TcpStream, mut slices: &mut [IoSlice<'_>]) -> io::Result<usize> {
    let mut total = 0;
    while !slices.is_empty() {
        match s.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                total += n;
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}
