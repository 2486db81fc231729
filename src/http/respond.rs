//! Response rendering into a caller-owned `Vec<u8>` (a per-worker scratch buffer), so
//! rendering allocates nothing once the buffer has grown to its working size.
//!
//! A message delivered to many parked subscribers is rendered once: [`message_head`]
//! writes every header that is the same for all of them, and one of four static
//! [`message_tail`]s adds what differs (gap flag, connection close). The payload goes out
//! as its own shared `Bytes` slice in the same `writev`.

use std::io::Write;

use crate::stream::Event;

pub fn reason(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// `HTTP/1.1 100 Continue`, sent before reading a body the client holds back.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A response with a small body. `headers` are extra `(name, value)` pairs.
pub fn simple(
    out: &mut Vec<u8>,
    code: u16,
    date: &[u8],
    close: bool,
    headers: &[(&str, &[u8])],
    content_type: Option<&[u8]>,
    body: &[u8],
) {
    simple_with(out, code, date, close, headers, b"", content_type, body);
}

/// [`simple`] plus `lines`: header lines rendered ahead (`Name: value\r\n` each; the
/// CORS headers of an allowed origin).
#[allow(clippy::too_many_arguments)]
pub fn simple_with(
    out: &mut Vec<u8>,
    code: u16,
    date: &[u8],
    close: bool,
    headers: &[(&str, &[u8])],
    lines: &[u8],
    content_type: Option<&[u8]>,
    body: &[u8],
) {
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", code, reason(code));
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(lines);
    if let Some(ct) = content_type {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(ct);
        out.extend_from_slice(b"\r\n");
    }
    if code != 204 && code >= 200 {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A plain-text error or status body (`text/plain; charset=utf-8`).
pub fn text(
    out: &mut Vec<u8>,
    code: u16,
    date: &[u8],
    close: bool,
    headers: &[(&str, &[u8])],
    body: &str,
) {
    simple(
        out,
        code,
        date,
        close,
        headers,
        Some(b"text/plain; charset=utf-8"),
        body.as_bytes(),
    );
}

/// A `503` with `Retry-After: 1` and `body`, closing the connection: the answer of a
/// server that cannot take this client now (connection limit, shutdown).
pub fn unavailable(out: &mut Vec<u8>, date: &[u8], body: &str) {
    text(out, 503, date, true, &[("Retry-After", b"1")], body);
}

/// Everything of a `200` message delivery up to (not including) the per-subscriber tail;
/// the payload follows the tail. `content_type` `None` is `application/octet-stream`.
pub fn message_head(out: &mut Vec<u8>, ev: &Event<'_>, content_type: Option<&[u8]>, date: &[u8]) {
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nDate: {}\r\nMessage-Id: {}\r\nChannel: {}\r\nContent-Type: ",
        std::str::from_utf8(date).unwrap_or(""),
        ev.id,
        ev.channel
    );
    out.extend_from_slice(content_type.unwrap_or(b"application/octet-stream"));
    let _ = write!(
        out,
        "\r\nCache-Control: no-store\r\nContent-Length: {}\r\n",
        ev.payload.len()
    );
}

/// The end of a message head: optional gap flag, optional close, blank line.
pub fn message_tail(lost: bool, close: bool) -> &'static [u8] {
    match (lost, close) {
        (false, false) => b"\r\n",
        (true, false) => b"Messages-Lost: true\r\n\r\n",
        (false, true) => b"Connection: close\r\n\r\n",
        (true, true) => b"Messages-Lost: true\r\nConnection: close\r\n\r\n",
    }
}

/// The `204` a long-poll gets when it times out; `lines` as for [`simple_with`].
pub fn timeout(out: &mut Vec<u8>, cursor: u64, date: &[u8], close: bool, lines: &[u8]) {
    let mut id = [0u8; 20];
    let n = fmt_u64(cursor, &mut id);
    simple_with(
        out,
        204,
        date,
        close,
        &[("Message-Id", &id[..n]), ("Cache-Control", b"no-store")],
        lines,
        None,
        b"",
    );
}

/// Writes `n` in decimal into `buf`, returns the length (no allocation).
pub fn fmt_u64(n: u64, buf: &mut [u8; 20]) -> usize {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut v = n;
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    buf[..len].copy_from_slice(&tmp[i..]);
    len
}

/// Escapes a string for a JSON string literal (channel names never need it, content does).
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut b = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`). Also used by the bench harness for its dated
/// output directories.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Renders an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) for `unix_secs` without
/// allocating; workers call it once a second.
pub fn http_date(unix_secs: u64, out: &mut [u8; 29]) {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let (year, month, day) = (year as u64, month as usize, u64::from(day));
    let two = |v: u64| [b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8];
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    out[3..5].copy_from_slice(b", ");
    out[5..7].copy_from_slice(&two(day));
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[month - 1]);
    out[11] = b' ';
    out[12..14].copy_from_slice(&two(year / 100));
    out[14..16].copy_from_slice(&two(year));
    out[16] = b' ';
    out[17..19].copy_from_slice(&two(secs / 3600));
    out[19] = b':';
    out[20..22].copy_from_slice(&two(secs / 60 % 60));
    out[22] = b':';
    out[23..25].copy_from_slice(&two(secs % 60));
    out[25..].copy_from_slice(b" GMT");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_days() {
        for (days, want) in [
            (0, (1970, 1, 1)),
            (19_723, (2024, 1, 1)),
            (19_782, (2024, 2, 29)),
            (11_016, (2000, 2, 29)),
        ] {
            assert_eq!(civil_from_days(days), want, "day {days}");
        }
    }

    #[test]
    fn renders_simple_responses() {
        let mut out = vec![];
        text(&mut out, 404, b"D", true, &[], "no such path\n");
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nDate: D\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 13\r\nConnection: close\r\n\r\nno such path\n"
        );
        out.clear();
        timeout(&mut out, 1234, b"D", false, b"");
        assert_eq!(
            out,
            b"HTTP/1.1 204 No Content\r\nDate: D\r\nMessage-Id: 1234\r\nCache-Control: no-store\r\n\r\n"
        );
    }

    #[test]
    fn dates() {
        let mut d = [0; 29];
        for (secs, want) in [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_795_000_000, "Wed, 18 Nov 2026 11:06:40 GMT"),
        ] {
            http_date(secs, &mut d);
            assert_eq!(std::str::from_utf8(&d).unwrap(), want);
        }
    }

    #[test]
    fn numbers_and_json() {
        let mut b = [0; 20];
        for n in [0, 7, 10, 1_732_200_000_000_042, u64::MAX] {
            let len = fmt_u64(n, &mut b);
            assert_eq!(&b[..len], n.to_string().as_bytes());
        }
        let mut out = vec![];
        json_str(&mut out, "a\"b\\c\n");
        assert_eq!(out, br#""a\"b\\c\u000a""#);
    }
}
