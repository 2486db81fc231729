//! WebSocket (RFC 6455) as a stream transport: the opening handshake, the frames the
//! server sends, and a parser for the frames a subscriber may send back.
//!
//! Why holdfast's own codec rather than `tungstenite`: tungstenite drives a connection
//! through a `Read + Write` object it owns, with its own input and output buffers per
//! connection (kilobytes each), so every idle WebSocket would own heap memory. A
//! subscriber stream only ever *sends* one kind of data frame (text, unmasked, one per
//! message, rendered once per message per worker and shared like an SSE event) and only
//! has to *understand* control frames from the client. Both fit in this file, and an
//! idle WebSocket then costs what an idle SSE stream costs: its slot. The handshake's
//! hash and encoding come from the maintained `sha1` and `base64` crates.
//!
//! What a client may send, and what it gets:
//! - `ping` (≤ 125 bytes): a `pong` with the same payload;
//! - `pong`: ignored (an unsolicited pong is allowed);
//! - `close`: the server answers `close` with the same code (`1000` if none) and ends;
//! - a data frame (text, binary, continuation): `close 1003` (this endpoint only
//!   sends); one longer than [`MAX_CLIENT_PAYLOAD`] gets `1009` instead;
//! - an unmasked frame, reserved bits set, an unknown opcode, a fragmented or over-long
//!   control frame, a close payload of one byte or with an invalid code: `1002`; a
//!   close reason that is not UTF-8: `1007`.

use base64::Engine;
use sha1::{Digest, Sha1};

use super::{json, Event};

/// RFC 6455 §1.3.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The version this server speaks (RFC 6455 §4.1); anything else gets `426`.
pub const VERSION: &[u8] = b"13";

/// Longest client data frame told `1003` rather than `1009`: a client frame is never
/// buffered beyond this anyway.
pub const MAX_CLIENT_PAYLOAD: u64 = 64 * 1024;

/// `ping` with no payload: the heartbeat.
pub const PING: &[u8] = &[0x89, 0x00];

/// Why an upgrade request is refused: `400` with the text, or `426` (wrong version,
/// with `Sec-WebSocket-Version: 13`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadUpgrade {
    NotGet,
    Http10,
    NoConnectionUpgrade,
    BadKey,
    Version,
}

impl BadUpgrade {
    pub fn status(self) -> u16 {
        match self {
            BadUpgrade::Version => 426,
            BadUpgrade::NotGet => 405,
            _ => 400,
        }
    }

    pub fn body(self) -> &'static str {
        match self {
            BadUpgrade::NotGet => "a WebSocket upgrade is a GET\n",
            BadUpgrade::Http10 => "a WebSocket upgrade needs HTTP/1.1\n",
            BadUpgrade::NoConnectionUpgrade => "a WebSocket upgrade needs Connection: Upgrade\n",
            BadUpgrade::BadKey => "Sec-WebSocket-Key must be 16 bytes in base64\n",
            BadUpgrade::Version => "WebSocket version 13 only (Sec-WebSocket-Version: 13)\n",
        }
    }
}

/// Checks the upgrade headers of a request that asked for `Upgrade: websocket`.
pub fn check_upgrade(
    get: bool,
    http11: bool,
    connection_upgrade: bool,
    key: Option<&[u8]>,
    version: Option<&[u8]>,
) -> Result<(), BadUpgrade> {
    if !get {
        return Err(BadUpgrade::NotGet);
    }
    if !http11 {
        return Err(BadUpgrade::Http10);
    }
    if !connection_upgrade {
        return Err(BadUpgrade::NoConnectionUpgrade);
    }
    if version != Some(VERSION) {
        return Err(BadUpgrade::Version);
    }
    let key = key.ok_or(BadUpgrade::BadKey)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| BadUpgrade::BadKey)?;
    if decoded.len() != 16 {
        return Err(BadUpgrade::BadKey);
    }
    Ok(())
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)), 28 characters.
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    let digest = h.finalize();
    let mut out = [0u8; 28];
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(digest, &mut out);
    out
}

/// The `101` that opens the WebSocket: `lines` as for the other transports' heads.
pub fn handshake(out: &mut Vec<u8>, key: &[u8], date: &[u8], lines: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nDate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept_key(key));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(lines);
    out.extend_from_slice(b"\r\n");
}

/// Frames what `body` writes as one unmasked frame with `opcode` (FIN set).
fn frame(out: &mut Vec<u8>, opcode: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    body(out);
    let len = out.len() - start;
    let mut head = [0u8; 10];
    head[0] = 0x80 | opcode;
    let n = if len < 126 {
        head[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        head[1] = 126;
        head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    out.splice(start..start, head[..n].iter().copied());
}

/// One message: a text frame holding the JSON envelope.
pub fn message(out: &mut Vec<u8>, ev: &Event<'_>) {
    frame(out, 0x1, |o| json::message(o, ev));
}

pub fn lost(out: &mut Vec<u8>, next_id: u64) {
    frame(out, 0x1, |o| json::lost(o, next_id));
}

/// A close frame with `code` and no reason.
pub fn close(out: &mut Vec<u8>, code: u16) {
    frame(out, 0x8, |o| o.extend_from_slice(&code.to_be_bytes()));
}

/// A pong echoing `payload`.
pub fn pong(out: &mut Vec<u8>, payload: &[u8]) {
    frame(out, 0xA, |o| o.extend_from_slice(payload));
}

/// Close codes (RFC 6455 §7.4.1).
pub mod code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// The last frames of a stream whose channel was deleted: the signal, then `close 1000`.
pub fn deleted(out: &mut Vec<u8>, channel: &str) {
    frame(out, 0x1, |o| json::deleted(o, channel));
    close(out, code::NORMAL);
}

/// The last frames of a stream whose token expired: the signal, then `close 1008`.
pub fn expired(out: &mut Vec<u8>) {
    frame(out, 0x1, |o| o.extend_from_slice(json::EXPIRED));
    close(out, code::POLICY);
}

/// The last frames of a stream the server ends at shutdown: the signal, `close 1001`.
pub fn shutdown(out: &mut Vec<u8>) {
    frame(out, 0x1, |o| o.extend_from_slice(json::SHUTDOWN));
    close(out, code::GOING_AWAY);
}

/// What one client frame asks of the server.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// Answer with a pong carrying this payload (unmasked).
    Ping(Vec<u8>),
    /// Nothing to do.
    Pong,
    /// The client closes with this code (`1000` if it gave none): answer and end.
    Close(u16),
}

/// Parses the client frame at the start of `buf`. `Ok(None)`: incomplete, read more.
/// `Ok(Some((frame, used)))`: one frame of `used` bytes. `Err(code)`: the connection
/// must be closed with `code` (see the module doc).
pub fn parse_client_frame(buf: &[u8]) -> Result<Option<(ClientFrame, usize)>, u16> {
    use code::*;
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(PROTOCOL_ERROR);
    }
    let opcode = b0 & 0x0F;
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().unwrap_or_default()), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let control = opcode & 0x08 != 0;
    match opcode {
        0x0..=0x2 | 0x8..=0xA => {}
        _ => return Err(PROTOCOL_ERROR),
    }
    if !masked {
        return Err(PROTOCOL_ERROR);
    }
    if control && (!fin || len > 125) {
        return Err(PROTOCOL_ERROR);
    }
    if !control {
        // A subscriber stream takes no data: refused as soon as its header is known.
        return Err(if len > MAX_CLIENT_PAYLOAD {
            TOO_BIG
        } else {
            UNSUPPORTED_DATA
        });
    }
    let Some(mask) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    at += 4;
    let len = len as usize;
    let Some(payload) = buf.get(at..at + len) else {
        return Ok(None);
    };
    let data: Vec<u8> = payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    let used = at + len;
    let frame = match opcode {
        0x9 => ClientFrame::Ping(data),
        0xA => ClientFrame::Pong,
        _ => {
            let code = match data.len() {
                0 => NORMAL,
                1 => return Err(PROTOCOL_ERROR),
                _ => {
                    let c = u16::from_be_bytes([data[0], data[1]]);
                    // Codes an endpoint may send (§7.4.1-2): 1000-1003, 1007-1011,
                    // 3000-4999.
                    let valid = matches!(c, 1000..=1003 | 1007..=1011 | 3000..=4999);
                    if !valid {
                        return Err(PROTOCOL_ERROR);
                    }
                    if std::str::from_utf8(&data[2..]).is_err() {
                        return Err(INVALID_PAYLOAD);
                    }
                    c
                }
            };
            ClientFrame::Close(code)
        }
    };
    Ok(Some((frame, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut v = vec![b0];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n <= 0xffff => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    #[test]
    fn the_accept_key_is_the_rfcs_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrades_are_checked() {
        let key = Some(&b"dGhlIHNhbXBsZSBub25jZQ=="[..]);
        let v13 = Some(VERSION);
        assert_eq!(check_upgrade(true, true, true, key, v13), Ok(()));
        assert_eq!(
            check_upgrade(false, true, true, key, v13),
            Err(BadUpgrade::NotGet)
        );
        assert_eq!(
            check_upgrade(true, false, true, key, v13),
            Err(BadUpgrade::Http10)
        );
        assert_eq!(
            check_upgrade(true, true, false, key, v13),
            Err(BadUpgrade::NoConnectionUpgrade)
        );
        assert_eq!(
            check_upgrade(true, true, true, key, Some(b"8")),
            Err(BadUpgrade::Version)
        );
        assert_eq!(
            check_upgrade(true, true, true, key, None),
            Err(BadUpgrade::Version)
        );
        for bad in [None, Some(&b"short"[..]), Some(b"!!!notbase64!!!!!!!!!!!=")] {
            assert_eq!(
                check_upgrade(true, true, true, bad, v13),
                Err(BadUpgrade::BadKey)
            );
        }
        assert_eq!(BadUpgrade::Version.status(), 426);
    }

    #[test]
    fn server_frames_have_the_right_lengths() {
        for len in [0usize, 125, 126, 65_535, 65_536, 70_000] {
            let mut out = vec![];
            frame(&mut out, 0x1, |o| o.resize(o.len() + len, b'x'));
            let (head, n) = match len {
                0..=125 => (2, len),
                126..=65_535 => (4, u16::from_be_bytes([out[2], out[3]]) as usize),
                _ => (
                    10,
                    u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
                ),
            };
            assert_eq!(out[0], 0x81);
            assert_eq!(out[1] & 0x80, 0, "server frames are unmasked");
            assert_eq!((n, out.len()), (len, head + len));
        }
        let mut out = vec![];
        deleted(&mut out, "c");
        let text_len = out[1] as usize;
        assert_eq!(
            &out[2 + text_len..],
            &[0x88, 2, 0x03, 0xe8],
            "then close 1000"
        );
    }

    #[test]
    fn client_frames_are_parsed_or_refused_with_the_right_code() {
        let ping = client(0x89, b"hi");
        assert_eq!(
            parse_client_frame(&ping),
            Ok(Some((ClientFrame::Ping(b"hi".to_vec()), ping.len())))
        );
        for cut in 0..ping.len() {
            assert_eq!(parse_client_frame(&ping[..cut]), Ok(None), "cut at {cut}");
        }
        let pong = client(0x8A, b"");
        assert_eq!(parse_client_frame(&pong), Ok(Some((ClientFrame::Pong, 6))));
        let close = client(0x88, &[0x03, 0xe9, b'o', b'k']);
        assert_eq!(
            parse_client_frame(&close),
            Ok(Some((ClientFrame::Close(1001), close.len())))
        );
        assert_eq!(
            parse_client_frame(&client(0x88, b"")),
            Ok(Some((ClientFrame::Close(1000), 6)))
        );
        let cases: [(Vec<u8>, u16); 9] = [
            (client(0x81, b"data"), 1003),
            (client(0x82, b"data"), 1003),
            (client(0x80, b"data"), 1003),
            (client(0x82, &vec![0; 70_000]), 1009),
            (client(0x83, b""), 1002),
            (client(0xC9, b""), 1002),
            (client(0x09, b""), 1002),
            (client(0x89, &[0; 126]), 1002),
            (client(0x88, &[0x03]), 1002),
        ];
        for (f, want) in cases {
            assert_eq!(parse_client_frame(&f), Err(want), "{:x?}", &f[..2]);
        }
        assert_eq!(
            parse_client_frame(&client(0x88, &[0x03, 0xec])),
            Err(1002),
            "1004"
        );
        assert_eq!(
            parse_client_frame(&client(0x88, &[0x03, 0xe8, 0xff])),
            Err(1007)
        );
        let unmasked = [0x89, 0x00];
        assert_eq!(parse_client_frame(&unmasked), Err(1002));
        // A data frame is refused from its header alone, before its payload arrives.
        assert_eq!(
            parse_client_frame(&client(0x82, &[0; 70_000])[..10]),
            Err(1009)
        );
    }
}
