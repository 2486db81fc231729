//! Driving a connection's requests: read, frame (`holdfast::http::framing`), hand the
//! request to its route, write the answer, and go on with pipelined input until the
//! connection parks, streams, blocks on output, or runs out of input. Also the
//! refusal of a request that cannot be served (error response, then close) and its
//! rate-limited log line.

use holdfast::http::framing::{Framed, CHUNKED_OVERHEAD};
use holdfast::http::parse::BodyLen;
use holdfast::http::respond;
use holdfast::stream::Framing;

use super::conn::{Input, Phase};
use super::routes::Outcome;
use super::socket::MAX_BUFFERED_INPUT;
use super::worker::Worker;

/// Stop handling pipelined requests while this much output waits for the client.
const MAX_PENDING_OUTPUT: usize = 256 * 1024;

/// Refused-request log lines per worker per second; more are counted, not written, so
/// a flood of bad requests cannot turn into a flood of log I/O.
const LOG_LINES_PER_SEC: u32 = 10;

impl Worker {
    /// Reads and handles requests until the conn parks, blocks, or runs out of input.
    pub(super) fn drive(&mut self, key: usize) {
        loop {
            let c = &self.conns[key];
            if c.is_held() || c.phase() == Phase::Linger || c.is_dead() {
                break;
            }
            if c.io
                .as_ref()
                .is_some_and(|io| io.output_bytes() > MAX_PENDING_OUTPUT)
            {
                break; // resumed by `flush`
            }
            if c.closing() {
                break;
            }
            if c.has_input() && !c.input_ended() && self.handle_buffered(key) {
                continue;
            }
            if !self.conns.contains(key) {
                return;
            }
            let c = &self.conns[key];
            if c.input_ended() {
                // Answer what was complete before the close, then go.
                if c.has_input() && !c.closing() && !c.is_held() && self.handle_buffered(key) {
                    continue;
                }
                if self.conns.contains(key) {
                    self.step(key, Input::CloseAfter);
                }
                break;
            }
            let before = c.io.as_ref().map_or(0, |io| io.buffered());
            let open = self.read_input(
                key,
                MAX_BUFFERED_INPUT + self.shared.max_message_size * CHUNKED_OVERHEAD,
            );
            let after = self.conns[key].io.as_ref().map_or(0, |io| io.buffered());
            if after == before {
                if open {
                    break; // WouldBlock
                }
                continue; // EOF: loop once more to answer buffered requests
            }
        }
        if self.conns.contains(key) {
            self.settle(key);
        }
    }

    /// Handles the request at the front of the buffer if it is complete. Returns true if
    /// one was handled or refused (so the caller should look for another).
    fn handle_buffered(&mut self, key: usize) -> bool {
        let mut io = self.take_io(key);
        let max = self.shared.max_message_size;
        let (outcome, len, keep_alive, has_body) = match io.frame(max) {
            Framed::Partial { send_continue, cut } => {
                if let Some(cut) = cut {
                    io.cut(cut);
                }
                self.conns[key].io = Some(io);
                if send_continue {
                    self.send(key, &[respond::CONTINUE], None);
                }
                return false;
            }
            Framed::Refused {
                status,
                reason,
                forwarded,
            } => {
                // The proxy-reported client, copied out of the buffer for the log.
                let mut fwd = [0u8; 64];
                let n = forwarded.map_or(0, |f| {
                    let n = f.len().min(fwd.len());
                    fwd[..n].copy_from_slice(&f[..n]);
                    n
                });
                self.conns[key].io = Some(io);
                self.reject(key, status, reason, (n > 0).then_some(&fwd[..n]));
                return true;
            }
            Framed::Request { req, body, len } => {
                #[cfg(debug_assertions)]
                {
                    self.handling = Some(key);
                }
                let outcome = self.handle(key, &req, body);
                #[cfg(debug_assertions)]
                {
                    self.handling = None;
                }
                let has_body = !matches!(req.body, BodyLen::None);
                (outcome, len, req.keep_alive, has_body)
            }
        };
        if matches!(outcome, Outcome::Deferred) {
            // Handled again, from the buffer, when the backplane replies. A request
            // without a body (a subscribe) gives its buffers back meanwhile and keeps a
            // copy of its bytes, so a burst of first requests for channels this node
            // does not hold yet does not pin a read buffer each.
            if !has_body && !io.has_output() {
                if let Some(a) = self.awaiting.get_mut(&key) {
                    a.1 = Some(io.input().into());
                    io.discard_input();
                }
            }
            self.conns[key].io = Some(io);
            self.release_io(key);
            return true;
        }
        io.consume(len);
        self.conns[key].io = Some(io);
        match outcome {
            Outcome::Respond { payload, close } => {
                self.send_out(key, payload.as_ref());
                self.request_done(key, close || !keep_alive);
            }
            // The state machine already knows whether the client asked to close after
            // the answer.
            Outcome::Parked => self.release_io(key),
            Outcome::Deferred => unreachable!("handled above"),
            Outcome::Stream(start) => {
                let websocket = start.framing == Framing::WebSocket;
                self.start_stream(key, start);
                if websocket {
                    // Frames the client sent right behind its upgrade request.
                    self.websocket_input(key);
                } else {
                    self.release_io(key);
                }
            }
        }
        true
    }

    /// A response to the request at the front was queued; `close` ends the connection
    /// after it.
    pub(super) fn request_done(&mut self, key: usize, close: bool) {
        self.step(key, Input::Answered { close });
    }

    /// A request we refuse: error response, then close.
    fn reject(&mut self, key: usize, code: u16, why: &str, forwarded: Option<&[u8]>) {
        self.log_refused(key, code, why, forwarded);
        self.out.clear();
        let mut body = [0u8; 128];
        let n = why.len().min(126);
        body[..n].copy_from_slice(&why.as_bytes()[..n]);
        body[n] = b'\n';
        respond::simple(
            &mut self.out,
            code,
            &self.date,
            true,
            &[],
            Some(b"text/plain; charset=utf-8"),
            &body[..n + 1],
        );
        self.send_out(key, None);
        if let Some(io) = self.conns[key].io.as_mut() {
            io.discard_input();
        }
        self.request_done(key, true);
    }

    /// One stderr line per refused request, rate-limited per worker. The client is the
    /// socket peer, or with `--trust-proxy` the address the proxy reported.
    fn log_refused(&mut self, key: usize, code: u16, why: &str, forwarded: Option<&[u8]>) {
        let second = self.now / 1000;
        if second != self.log_second {
            if self.log_suppressed > 0 {
                eprintln!(
                    "holdfast: {} more refused requests not logged",
                    self.log_suppressed
                );
            }
            self.log_second = second;
            self.log_lines = 0;
            self.log_suppressed = 0;
        }
        if self.log_lines >= LOG_LINES_PER_SEC {
            self.log_suppressed += 1;
            return;
        }
        self.log_lines += 1;
        let via = match forwarded.filter(|_| self.shared.trust_proxy) {
            Some(f) => String::from_utf8_lossy(f).into_owned(),
            None => self.conns[key]
                .stream
                .peer_addr()
                .map_or_else(|_| "unknown".into(), |a| a.ip().to_string()),
        };
        eprintln!("holdfast: {code} to {via}: {why}");
    }
}
