//! WebSocket subscribers (RFC 6455): hyper's upgrade plus `tokio-tungstenite`.
//!
//! The subscribe handler validates the upgrade (holdfast's
//! [`check_upgrade`](holdfast::stream::websocket::check_upgrade): `400`, `426`), opens
//! the stream like any other (hub, store, replay) and answers `101 Switching Protocols`
//! with `Sec-WebSocket-Accept` ([`switching_protocols`]). The stream itself — a
//! [`WebSocket`] holding the request's `hyper::upgrade::OnUpgrade` — is left with the
//! connection (`ConnShared::set_upgrade`); once hyper has written the `101` and handed
//! the socket over, the connection task runs it ([`WebSocket::run`]), so the upgraded
//! connection keeps its place under `--max-connections` and in the shutdown wait, and
//! no second task is spawned.
//!
//! Once open, the task is a `select!` over the token's expiry, the stream's queue from
//! the hub, the client's frames, and a heartbeat `Interval`:
//! - each message or signal is one text message holding its JSON envelope
//!   ([`frames`]); queued messages are fed to tungstenite together and flushed once;
//! - a ping every `--sse-heartbeat`; tungstenite answers the client's pings with pongs
//!   (with the same payload) as the task keeps reading, and unsolicited pongs are read
//!   and ignored;
//! - the end: the signal object, then a close frame (`1000` deleted, `1001` shutdown,
//!   `1008` expired); the connection task then closes the socket as it closes any
//!   connection (FIN, then up to 2 s draining input, where the client's close frame
//!   arrives);
//! - the client's close frame: tungstenite answers it with the same code and ends;
//! - a data frame from the client gets close `1003`, or `1009` over 64 KiB; tungstenite
//!   refuses both itself ([`config`]) and its errors map to holdfast's codes where they
//!   can ([`refusal`]): protocol errors `1002`, a close reason that is not UTF-8 `1007`.
//!
//! A reader too slow for `--stream-max-backlog` is cut like an SSE stream: the hub
//! counts bytes in, this task counts bytes out, and the connection task drops the
//! connection without a close frame.
//!
//! Memory: tungstenite eagerly allocates its read buffer, 128 KiB by default; a
//! subscriber only ever sends control frames (a data frame ends the stream), so it is
//! set to [`READ_BUFFER`], tungstenite's own advice for many mostly idle connections.
//! Writes are batched up to [`WRITE_BUFFER`] before tungstenite writes to the socket.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use holdfast::stats::inc;
use holdfast::stream::websocket::{accept_key, BadUpgrade, MAX_CLIENT_PAYLOAD, VERSION};
use holdfast::stream::Framing;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::frames;
use crate::guard_io::{ConnShared, GuardedIo};
use crate::hub::StreamItem;
use crate::respond::{self, Body};
use crate::stream::{Position, Start, StreamGuard};

/// tungstenite's read buffer, allocated per connection (its default is 128 KiB).
const READ_BUFFER: usize = 4 * 1024;

/// Frames fed to tungstenite are written to the socket once this many bytes are
/// buffered, or at the flush after a batch.
const WRITE_BUFFER: usize = 8 * 1024;

/// Messages taken off the queue and fed to tungstenite before one flush.
const BATCH: usize = 64;

const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
const SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");

/// The socket the connection task gets back to linger on, if it can.
pub type Upgrade = Pin<Box<dyn Future<Output = Option<GuardedIo>> + Send>>;

/// A refused upgrade: `400` with holdfast's text, or `426` with
/// `Sec-WebSocket-Version: 13`.
pub fn refused(bad: BadUpgrade) -> Response<Body> {
    let status = StatusCode::from_u16(bad.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = respond::text(status, bad.body());
    if bad == BadUpgrade::Version {
        r.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        debug_assert_eq!(VERSION, b"13");
    }
    r
}

/// The `101` answering an upgrade whose `Sec-WebSocket-Key` is `key`.
pub fn switching_protocols(key: &[u8]) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    // base64: always a valid header value.
    if let Ok(accept) = HeaderValue::from_bytes(&accept_key(key)) {
        h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    r
}

/// tungstenite's limits do the refusing: a subscriber may send no data message at
/// all, so the message limit is 0 and any data frame with a payload fails as soon as
/// tungstenite has read it (the first fragment of a fragmented one; an empty one comes
/// through as a message). A frame announcing more than 64 KiB fails on its header,
/// before its payload is read. [`refusal`] tells the two apart by the limit hit.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_frame_size(Some(MAX_FRAME))
        .max_message_size(Some(0))
}

/// Longest client frame told `1003` rather than `1009` (holdfast's limit).
const MAX_FRAME: usize = MAX_CLIENT_PAYLOAD as usize;

/// How a stream ends.
enum End {
    /// A signal object, then a close frame with this code.
    Signal(Utf8Bytes, CloseCode),
    /// A close frame with this code: the client sent what it may not.
    Refuse(CloseCode),
    /// The client sent a close frame: tungstenite has queued the answer.
    Answer,
    /// The connection is gone or broken: nothing more can be sent.
    Gone,
}

/// The close code for a frame tungstenite refused, or `None` if the connection is gone
/// (an I/O error, a close without a close frame): nothing to answer.
fn refusal(e: &WsError) -> Option<CloseCode> {
    match e {
        // A data message (the limit for messages is 0: see `config`).
        WsError::Capacity(CapacityError::MessageTooLong { max_size: 0, .. }) => {
            Some(CloseCode::Unsupported)
        }
        // A frame over `MAX_FRAME`.
        WsError::Capacity(_) => Some(CloseCode::Size),
        // Data frames (a continuation is one): this endpoint takes none.
        WsError::Protocol(ProtocolError::UnexpectedContinueFrame)
        | WsError::Protocol(ProtocolError::ExpectedFragment(_)) => Some(CloseCode::Unsupported),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some(CloseCode::Protocol),
        // A close reason (or a text message) that is not UTF-8.
        WsError::Utf8(_) => Some(CloseCode::Invalid),
        _ => None,
    }
}

/// An open WebSocket stream, waiting for hyper to hand over the connection.
pub struct WebSocket {
    /// Replayed from the store's buffer when the stream opened (gap signals included).
    pub first: Vec<Utf8Bytes>,
    pub start: Start,
    pub rx: mpsc::UnboundedReceiver<StreamItem>,
    pub conn: Arc<ConnShared>,
    pub heartbeat: Duration,
    pub guard: StreamGuard,
}

impl WebSocket {
    /// Runs the stream on the upgraded connection; returns the socket for the
    /// connection task to close gracefully (FIN, then drain), or `None` if the upgrade
    /// did not happen.
    pub async fn run(mut self, on_upgrade: OnUpgrade) -> Option<GuardedIo> {
        let upgraded = on_upgrade.await.ok()?;
        let io = TokioIo::new(upgraded);
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await;
        let end = self.serve(&mut ws).await.unwrap_or(End::Gone);
        finish(&mut ws, end).await;
        // Left the hub and the store, the gauge drops; the socket closes after.
        drop(self);
        let upgraded = ws.into_inner().into_inner();
        upgraded
            .downcast::<TokioIo<GuardedIo>>()
            .ok()
            .map(|parts| parts.io.into_inner())
    }

    async fn serve<S>(&mut self, ws: &mut WebSocketStream<S>) -> Result<End, WsError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        for text in self.first.drain(..) {
            ws.feed(Message::Text(text)).await?;
        }
        ws.flush().await?;
        self.first = Vec::new();
        let mut position = Position::new(self.start.cursor, self.start.lost);
        let every = self.heartbeat;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let expires = self.start.expires;
        // Without a token the branch is disabled and the timer never polled.
        let expiry = tokio::time::sleep_until(expires.unwrap_or_else(Instant::now));
        tokio::pin!(expiry);
        let app = self.guard.app.clone();
        loop {
            tokio::select! {
                biased;
                // Past its token's expiry nothing more is sent, not even what is queued.
                () = &mut expiry, if expires.is_some() => {
                    inc(&app.stats.streams_expired);
                    let signal = frames::expired(Framing::WebSocket).into_text();
                    return Ok(End::Signal(signal, CloseCode::Policy));
                }
                item = self.rx.recv() => {
                    // What is queued goes out in one flush: this item and up to
                    // `BATCH - 1` more (the rest on the next turn).
                    let mut item = item;
                    let mut fed = 0;
                    let end = loop {
                        // `None`: the hub dropped our sender, the server is shutting down.
                        let Some(queued) = item else {
                            let signal = frames::shutdown(Framing::WebSocket)
                                .map_or_else(Utf8Bytes::default, frames::Frame::into_text);
                            break Some(End::Signal(signal, CloseCode::Away));
                        };
                        if let Some(end) = self.feed(ws, &mut position, queued).await? {
                            break Some(end);
                        }
                        fed += 1;
                        if fed == BATCH {
                            break None;
                        }
                        item = match self.rx.try_recv() {
                            Ok(queued) => Some(queued),
                            Err(mpsc::error::TryRecvError::Empty) => break None,
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                        };
                    };
                    ws.flush().await?;
                    if let Some(end) = end {
                        return Ok(end);
                    }
                }
                msg = ws.next() => match msg {
                    // tungstenite has queued the pong; it goes out with the next read
                    // or write.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) => return Ok(End::Answer),
                    Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Frame(_))) => {
                        return Ok(End::Refuse(CloseCode::Unsupported));
                    }
                    Some(Err(e)) => return Ok(refusal(&e).map_or(End::Gone, End::Refuse)),
                    None => return Ok(End::Gone),
                },
                _ = heartbeat.tick() => ws.send(Message::Ping(Bytes::new())).await?,
            }
        }
    }

    /// Feeds what the hub queued to tungstenite (without flushing); `Some` if it ends
    /// the stream.
    async fn feed<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        position: &mut Position,
        item: StreamItem,
    ) -> Result<Option<End>, WsError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match item {
            StreamItem::Message {
                id,
                evicted_max,
                frame,
            } => {
                self.conn.taken(frame.len());
                let Some(lost) = position.advance(id, evicted_max) else {
                    return Ok(None); // already sent from the store's buffer
                };
                inc(&self.guard.app.stats.delivered);
                if lost {
                    let gap = frames::lost(Framing::WebSocket, id).into_text();
                    ws.feed(Message::Text(gap)).await?;
                }
                ws.feed(Message::Text(frame.into_text())).await?;
                Ok(None)
            }
            StreamItem::Deleted { key, channel } => {
                if !self.guard.keys.contains(&key) {
                    return Ok(None); // an older incarnation, deleted before we registered
                }
                let signal = frames::deleted(Framing::WebSocket, &channel).into_text();
                Ok(Some(End::Signal(signal, CloseCode::Normal)))
            }
        }
    }
}

/// Ends the stream as `end` says: its last frames.
async fn finish<S>(ws: &mut WebSocketStream<S>, end: End)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let code = match end {
        End::Gone => return,
        // tungstenite answers with the client's code; flushing sends it.
        End::Answer => {
            let _ = ws.flush().await;
            return;
        }
        End::Signal(signal, code) => {
            if ws.feed(Message::Text(signal)).await.is_err() {
                return;
            }
            code
        }
        End::Refuse(code) => code,
    };
    let close = CloseFrame {
        code,
        reason: Utf8Bytes::default(),
    };
    let _ = ws.close(Some(close)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tungstenite_errors_map_to_holdfasts_close_codes() {
        let code = |e: WsError| refusal(&e).map(u16::from);
        let too_long = CapacityError::MessageTooLong {
            size: 70_000,
            max_size: MAX_FRAME,
        };
        assert_eq!(code(WsError::Capacity(too_long)), Some(1009));
        let data = CapacityError::MessageTooLong {
            size: 2,
            max_size: 0,
        };
        assert_eq!(code(WsError::Capacity(data)), Some(1003));
        assert_eq!(
            code(WsError::Protocol(ProtocolError::UnmaskedFrameFromClient)),
            Some(1002)
        );
        assert_eq!(
            code(WsError::Protocol(ProtocolError::UnexpectedContinueFrame)),
            Some(1003)
        );
        assert_eq!(code(WsError::Utf8("bad".into())), Some(1007));
        assert_eq!(
            code(WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            )),
            None
        );
        assert_eq!(
            code(WsError::Io(std::io::ErrorKind::BrokenPipe.into())),
            None
        );
    }

    #[test]
    fn handshake_answers() {
        let r = switching_protocols(b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            r.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(r.headers()["upgrade"], "websocket");
        let r = refused(BadUpgrade::Version);
        assert_eq!(r.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(r.headers()["sec-websocket-version"], "13");
        let r = refused(BadUpgrade::BadKey);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.headers().get("sec-websocket-version").is_none());
    }
}
