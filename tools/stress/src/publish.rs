//! The parent's side of the servers: publishing through the admin listeners and
//! reading holdfast's `/stats`. One blocking request per connection
//! (`Connection: close`) with a timeout on every step: a few dozen requests per run
//! do not need an event loop.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use holdfast_stress::errors;

const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ANSWER: u64 = 1 << 20;

/// Sends one request and reads the whole answer; returns (status, body).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.set_nodelay(true)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req)?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut raw)?;
    parse_answer(&raw).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad answer"))
}

fn parse_answer(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(raw).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let len = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let body = &raw[n..];
    let body = match len {
        Some(len) => body.get(..len)?,
        None => body,
    };
    Some((r.code?, body.to_vec()))
}

/// Publishes `payload` to `channel`; `Err` is the error kind to count.
pub fn publish(admin: SocketAddr, channel: &str, payload: &str) -> Result<(), String> {
    match request(
        admin,
        "POST",
        &format!("/pub/{channel}"),
        payload.as_bytes(),
    ) {
        Ok((s, _)) if (200..300).contains(&s) => Ok(()),
        Ok((s, _)) => Err(format!("publish_status_{s}")),
        Err(_) => Err(errors::PUBLISH_IO.to_owned()),
    }
}

/// holdfast's count of held subscriptions of one kind (`parked` or `sse_streams`).
pub fn held_on_server(admin: SocketAddr, key: &str) -> Option<u64> {
    let (status, body) = request(admin, "GET", "/stats", b"").ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()?
        .get(key)?
        .as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Case = (&'static [u8], Option<(u16, &'static [u8])>);

    #[test]
    fn answers() {
        let cases: &[Case] = &[
            (
                b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}trailing",
                Some((201, b"{}")),
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\nto the close",
                Some((200, b"to the close")),
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", None),
            (b"HTTP/1.1 200 OK\r\n", None),
            (b"garbage\r\n\r\n", None),
        ];
        for (raw, want) in cases {
            let got = parse_answer(raw);
            assert_eq!(
                got.as_ref().map(|(s, b)| (*s, b.as_slice())),
                *want,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
