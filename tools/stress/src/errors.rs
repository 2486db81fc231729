//! Names of the error kinds the summary counts. Every failure a connection or a
//! publish can meet maps to exactly one of these, so nothing is hidden in a total.

use std::io;

pub const CONNECT_REFUSED: &str = "connect_refused";
/// EADDRNOTAVAIL: no free (source address, port) pair, or a source address not local.
pub const ADDR_NOT_AVAILABLE: &str = "addr_not_available";
/// EADDRINUSE at bind: the ephemeral ports of a source address ran out.
pub const ADDR_IN_USE: &str = "addr_in_use";
/// EMFILE: this worker's open-file limit.
pub const EMFILE: &str = "emfile";
/// ENFILE: the system-wide file table.
pub const ENFILE: &str = "enfile";
/// The handshake did not finish within the connect timeout (or the kernel gave up).
pub const CONNECT_TIMEOUT: &str = "connect_timeout";
/// No answer to a request long after the poll's own timeout (or no SSE head in time).
pub const RESPONSE_TIMEOUT: &str = "response_timeout";
/// The server closed a held connection it should have kept open.
pub const CLOSED: &str = "closed";
/// ECONNRESET / ECONNABORTED.
pub const RESET: &str = "reset";
/// Not HTTP/1.1 this client understands, or an oversized head or body.
pub const BAD_RESPONSE: &str = "bad_response";
/// A delivery whose body is not `t=<micros>;n=<seq>`.
pub const BAD_PAYLOAD: &str = "bad_payload";
/// A well-formed payload with a sequence number this run never published.
pub const UNEXPECTED_MESSAGE: &str = "unexpected_message";
/// A payload whose `n` is below the last one the subscription received: the order of
/// delivery broke. (A late first arrival and a repeat of an older message cannot be told
/// apart without per-message state; both break the order guarantee. The same `n` again
/// counts as a duplicate instead.)
pub const OUT_OF_ORDER: &str = "out_of_order";
/// SSE: an event id at or below the previous one on the same stream (holdfast: decimal
/// ids; nchan: `TIME:TAG` pairs, see `http::parse_event_id`).
pub const EVENT_ID_ORDER: &str = "event_id_order";
/// SSE: a message event without an `id:` field, or with one that is not an id of the
/// protocol's dialect.
pub const BAD_EVENT_ID: &str = "bad_event_id";
/// The server said it dropped messages (`Messages-Lost: true`, SSE `event: lost`).
pub const MESSAGES_LOST: &str = "messages_lost";
/// SSE `event: deleted`, or the JSON envelope's `{"event":"deleted"}` (WebSocket, ndjson).
pub const CHANNEL_DELETED: &str = "channel_deleted";
/// WebSocket, ndjson: `{"event":"expired"}`, the subscriber token ran out.
pub const STREAM_EXPIRED: &str = "stream_expired";
/// WebSocket, ndjson: `{"event":"shutdown"}`, the server is shutting down.
pub const SERVER_SHUTDOWN: &str = "server_shutdown";
/// WebSocket, ndjson: a frame or line that is not the JSON envelope of
/// `docs/protocol.md` (not JSON, not an object, or neither a message nor a known signal).
pub const BAD_ENVELOPE: &str = "bad_envelope";
/// WebSocket: a `101` without `Upgrade: websocket`, or whose `Sec-WebSocket-Accept` is
/// not the one the key asks for.
pub const BAD_HANDSHAKE: &str = "bad_handshake";
/// Any other socket error (the first one's text goes to stderr).
pub const IO_OTHER: &str = "io_other";
/// A worker process that could not start, crashed, or never reported its result.
pub const WORKER_FAILED: &str = "worker_failed";
/// A publish that got no 2xx (the status is in the kind: `publish_status_404`) or
/// could not be sent (`publish_io`).
pub const PUBLISH_IO: &str = "publish_io";

// Linux errno values std has no stable ErrorKind for. libc is reserved for
// holdfast's sys.rs, and this tool only runs on Linux.
const ENFILE_NO: i32 = 23;
const EMFILE_NO: i32 = 24;
/// EINPROGRESS: a nonblocking connect has started.
pub const EINPROGRESS_NO: i32 = 115;

/// Maps a socket error to its kind. `connecting`: the error ended a handshake.
pub fn classify(e: &io::Error, connecting: bool) -> &'static str {
    match e.raw_os_error() {
        Some(EMFILE_NO) => return EMFILE,
        Some(ENFILE_NO) => return ENFILE,
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => CONNECT_REFUSED,
        io::ErrorKind::AddrNotAvailable => ADDR_NOT_AVAILABLE,
        io::ErrorKind::AddrInUse => ADDR_IN_USE,
        io::ErrorKind::TimedOut if connecting => CONNECT_TIMEOUT,
        io::ErrorKind::TimedOut => RESPONSE_TIMEOUT,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => RESET,
        io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof => CLOSED,
        _ => IO_OTHER,
    }
}

/// `status_503`: an unexpected HTTP status, by code.
pub fn status(code: u16) -> String {
    format!("status_{code}")
}

/// `ws_close_1000`: the server sent a WebSocket close frame with this code
/// (`ws_close` when it had none). The subscription ends there.
pub fn ws_close(code: Option<u16>) -> String {
    match code {
        Some(c) => format!("ws_close_{c}"),
        None => "ws_close".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_to_kind() {
        let cases = [
            (111, true, CONNECT_REFUSED),
            (99, true, ADDR_NOT_AVAILABLE),
            (98, true, ADDR_IN_USE),
            (24, true, EMFILE),
            (23, false, ENFILE),
            (110, true, CONNECT_TIMEOUT),
            (110, false, RESPONSE_TIMEOUT),
            (104, false, RESET),
            (32, false, CLOSED),
            (22, false, IO_OTHER),
        ];
        for (errno, connecting, want) in cases {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(classify(&e, connecting), want, "errno {errno}");
        }
        assert_eq!(status(503), "status_503");
        assert_eq!(ws_close(Some(1001)), "ws_close_1001");
        assert_eq!(ws_close(None), "ws_close");
    }
}
