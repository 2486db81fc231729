//! The frames a WebSocket subscriber sends back (its stream is in `Phase::Stream`, linked
//! like any other: see `deliver.rs`). The codec is `holdfast::stream::websocket`; this
//! file reads what arrived and answers it: a ping gets a pong, a close gets a close with
//! the same code and the stream ends, anything else ends the stream with the close code
//! the codec chose (`1002`, `1003`, `1007`, `1009`). Bytes of a frame not yet complete
//! wait in the connection's `Io`, which goes back to the pool once they are consumed,
//! so an idle WebSocket owns nothing but its slot.

use holdfast::stream::websocket::{self, ClientFrame};

use super::deliver::End;
use super::socket::MAX_BUFFERED_INPUT;
use super::worker::Worker;

impl Worker {
    /// The socket of WebSocket stream `key` is readable.
    pub(super) fn read_websocket(&mut self, key: usize) {
        if !self.read_input(key, MAX_BUFFERED_INPUT) {
            // Closed without a close frame (or reset): nothing to answer.
            self.close(key);
            return;
        }
        self.websocket_input(key);
    }

    /// Handles every complete client frame buffered for stream `key`.
    pub(super) fn websocket_input(&mut self, key: usize) {
        loop {
            let Some(io) = self.conns.get_mut(key).and_then(|c| c.io.as_mut()) else {
                return;
            };
            match websocket::parse_client_frame(io.input()) {
                Ok(None) => break,
                Ok(Some((frame, used))) => {
                    io.consume(used);
                    match frame {
                        ClientFrame::Ping(payload) => {
                            self.out.clear();
                            websocket::pong(&mut self.out, &payload);
                            self.send_out(key, None);
                            if self.stream_overflowed(key) {
                                return;
                            }
                        }
                        ClientFrame::Pong => {}
                        ClientFrame::Close(code) => {
                            self.end_stream(key, End::Close(code));
                            return;
                        }
                    }
                }
                Err(code) => {
                    self.end_stream(key, End::Close(code));
                    return;
                }
            }
        }
        let c = &self.conns[key];
        if c.input_ended() {
            self.close(key);
        } else if c
            .io
            .as_ref()
            .is_some_and(|io| io.buffered() >= MAX_BUFFERED_INPUT)
        {
            // Cannot happen with the codec's limits (a frame it would wait for is at
            // most 139 bytes), but never let a client pin a full buffer.
            self.end_stream(key, End::Close(websocket::code::TOO_BIG));
        } else {
            self.release_io(key);
        }
    }
}
