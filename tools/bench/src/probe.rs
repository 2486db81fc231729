//! Does a server speak the transport a scenario needs? One request before any load:
//! a WebSocket upgrade (RFC 6455's sample key, so the expected `Sec-WebSocket-Accept` is
//! a constant) or an ndjson subscribe (`?stream=ndjson`), on a channel of its own
//! (`probe`), answered within a bound. A server that does not speak it shows here as a
//! long-poll answer (`200`/`204`), a refusal (`400`, `426`), or no head at all, when it
//! parks the request as a long-poll; the scenario then reports that in its row rather
//! than a stress run that waits out its own timeouts and counts every connection as
//! failed.

use crate::scenarios::Scenario;
use crate::server::{self, Server};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The streaming transports the probe knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Ndjson,
}

/// RFC 6455 §1.3's sample `Sec-WebSocket-Key` and the accept it calls for.
const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

impl Transport {
    /// The transport scenario `s` needs, if it is one the probe checks.
    pub fn of(s: Scenario) -> Option<Transport> {
        match s {
            Scenario::WsIdle | Scenario::WsFanout => Some(Transport::WebSocket),
            Scenario::NdjsonIdle | Scenario::NdjsonFanout => Some(Transport::Ndjson),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "WebSocket",
            Transport::Ndjson => "ndjson streams",
        }
    }

    fn request(self, host: &str) -> String {
        match self {
            Transport::WebSocket => format!(
                "GET /sub/probe HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: {SAMPLE_KEY}\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            ),
            Transport::Ndjson => {
                format!("GET /sub/probe?stream=ndjson HTTP/1.1\r\nHost: {host}\r\n\r\n")
            }
        }
    }
}

/// Sends the transport's subscribe to `server` and reads the answer's head for at most
/// `wait`. `Err` says, for the report, what the server did instead.
pub fn probe(server: &Server, t: Transport, wait: Duration) -> Result<(), String> {
    let who = server.kind.name();
    let head = read_head(server, t, wait)
        .map_err(|e| format!("{who}: the {} probe failed: {e}", t.name()))?;
    match head {
        Some(head) => judge(t, &head).map_err(|why| format!("{who} {why}")),
        None => {
            // holdfast-kind servers count parked long-polls; the probe's connection is
            // still open, so a parked probe shows.
            let parked = match server.kind {
                server::Kind::Nchan => None,
                _ => server::http_get(server.admin, "/stats")
                    .ok()
                    .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                    .and_then(|v| v.get("parked")?.as_u64()),
            };
            Err(no_answer(who, t, wait, parked))
        }
    }
}

/// The message for a probe that got no head within `wait`.
fn no_answer(who: &str, t: Transport, wait: Duration, parked: Option<u64>) -> String {
    let what = match t {
        Transport::WebSocket => "the upgrade",
        Transport::Ndjson => "the ndjson subscribe",
    };
    let mut m = format!(
        "{who} does not speak {}: no answer to {what} within {} s",
        t.name(),
        wait.as_secs_f64()
    );
    if let Some(p) = parked.filter(|&p| p > 0) {
        m.push_str(&format!(
            " and its /stats shows parked={p}: it took the request for a long-poll"
        ));
    }
    m
}

/// The head of the answer (up to the blank line), or `None` when none came in time.
fn read_head(server: &Server, t: Transport, wait: Duration) -> io::Result<Option<String>> {
    let deadline = Instant::now() + wait;
    let mut s = TcpStream::connect_timeout(&server.public, wait)?;
    s.set_write_timeout(Some(wait))?;
    s.write_all(t.request(&server.public.to_string()).as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || buf.len() > 16 * 1024 {
            return Ok(None);
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut chunk) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection without an answer",
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether a response head (status line and headers, no blank line) opens transport
/// `t`; `Err` completes the sentence "SERVER …" for the report.
fn judge(t: Transport, head: &str) -> Result<(), String> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("").trim();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    match t {
        Transport::WebSocket => {
            if status != 101 {
                return Err(format!(
                    "does not speak WebSocket: it answered the upgrade with `{status_line}` \
                     instead of `101 Switching Protocols`"
                ));
            }
            let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            match header("sec-websocket-accept") {
                Some(SAMPLE_ACCEPT) if upgrade => Ok(()),
                accept => Err(format!(
                    "answered the upgrade with a bad handshake: `Upgrade: {}`, \
                     `Sec-WebSocket-Accept: {}` (want `websocket`, `{SAMPLE_ACCEPT}`)",
                    header("upgrade").unwrap_or("(none)"),
                    accept.unwrap_or("(none)")
                )),
            }
        }
        Transport::Ndjson => {
            let ctype = header("content-type").unwrap_or("(none)");
            if status == 200
                && ctype
                    .to_ascii_lowercase()
                    .starts_with("application/x-ndjson")
            {
                Ok(())
            } else {
                Err(format!(
                    "does not speak ndjson streams: it answered `?stream=ndjson` with \
                     `{status_line}` and `Content-Type: {ctype}` instead of `200` and \
                     `application/x-ndjson`"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_that_open_the_transport_and_heads_that_do_not() {
        use Transport::{Ndjson, WebSocket};
        let ws = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {SAMPLE_ACCEPT}"
        );
        let cases: &[(Transport, &str, Result<(), &str>)] = &[
            (WebSocket, &ws, Ok(())),
            (
                WebSocket,
                "HTTP/1.1 204 No Content\r\nMessage-Id: 7",
                Err("with `HTTP/1.1 204 No Content` instead of `101"),
            ),
            (
                WebSocket,
                "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13",
                Err("`HTTP/1.1 426 Upgrade Required`"),
            ),
            (
                WebSocket,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Accept: AAAA",
                Err("bad handshake: `Upgrade: websocket`, `Sec-WebSocket-Accept: AAAA`"),
            ),
            (
                Ndjson,
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
                 Transfer-Encoding: chunked",
                Ok(()),
            ),
            (
                Ndjson,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3",
                Err("`HTTP/1.1 200 OK` and `Content-Type: text/plain`"),
            ),
            (
                Ndjson,
                "HTTP/1.1 400 Bad Request",
                Err("`Content-Type: (none)`"),
            ),
        ];
        for (t, head, want) in cases {
            match (judge(*t, head), want) {
                (Ok(()), Ok(())) => {}
                (Err(got), Err(part)) => assert!(got.contains(part), "{t:?} {head:?}: {got}"),
                (got, want) => panic!("{t:?} {head:?}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_parked_probe_is_called_a_long_poll() {
        let w = Duration::from_secs(2);
        let m = no_answer("holdfast-tokio", Transport::WebSocket, w, Some(1));
        assert_eq!(
            m,
            "holdfast-tokio does not speak WebSocket: no answer to the upgrade within 2 s \
             and its /stats shows parked=1: it took the request for a long-poll"
        );
        let m = no_answer("nchan", Transport::Ndjson, w, None);
        assert!(
            m.ends_with("no answer to the ndjson subscribe within 2 s"),
            "{m}"
        );
        assert!(!no_answer("x", Transport::Ndjson, w, Some(0)).contains("parked"));
    }

    #[test]
    fn the_requests_ask_for_the_transport() {
        let ws = Transport::WebSocket.request("127.0.0.1:1");
        assert!(ws.starts_with("GET /sub/probe HTTP/1.1\r\n"), "{ws}");
        for h in [
            "Upgrade: websocket\r\n",
            "Connection: Upgrade\r\n",
            "Sec-WebSocket-Version: 13\r\n",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ] {
            assert!(ws.contains(h), "{ws}");
        }
        assert!(ws.ends_with("\r\n\r\n"));
        let nd = Transport::Ndjson.request("h");
        assert_eq!(
            nd,
            "GET /sub/probe?stream=ndjson HTTP/1.1\r\nHost: h\r\n\r\n"
        );
        assert_eq!(
            Transport::of(Scenario::WsFanout),
            Some(Transport::WebSocket)
        );
        assert_eq!(Transport::of(Scenario::NdjsonIdle), Some(Transport::Ndjson));
        assert_eq!(Transport::of(Scenario::SseIdle), None);
    }
}
