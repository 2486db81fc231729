//! The start-up lines of a holdfast-protocol server (holdfast and holdfast-tokio). Once
//! it serves, a server prints on stdout, one per line:
//!
//! ```text
//! listening public=127.0.0.1:41234
//! listening admin=127.0.0.1:41235
//! threads=2 max_connections=19952
//! ```
//!
//! This is the one parser of those lines, for everything that starts a server and needs
//! its addresses: the end-to-end tests (tests/common), the bench harness (tools/bench)
//! and the smoke tests of this crate and of tools/tokio-peer.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// One stdout line of a server, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// `listening public=ADDR`
    Public(SocketAddr),
    /// `listening admin=ADDR`
    Admin(SocketAddr),
    /// `threads=N max_connections=M`
    Limits { threads: u32, max_connections: u64 },
    /// Anything else (not a start-up line).
    Other,
}

/// Parses one line (surrounding whitespace ignored). Err for a line that starts like a
/// start-up line but does not parse, e.g. `listening public=nonsense`: a broken start-up
/// interface is reported as such rather than waited out.
pub fn parse_line(line: &str) -> Result<Line, String> {
    let line = line.trim();
    let bad = || format!("malformed start-up line {line:?}");
    if let Some(rest) = line.strip_prefix("listening ") {
        let (kind, addr): (fn(SocketAddr) -> Line, &str) =
            if let Some(a) = rest.strip_prefix("public=") {
                (Line::Public, a)
            } else if let Some(a) = rest.strip_prefix("admin=") {
                (Line::Admin, a)
            } else {
                return Err(bad());
            };
        return addr.parse().map(kind).map_err(|_| bad());
    }
    if line.starts_with("threads=") {
        let mut fields = line.split(' ');
        let mut field = |key: &str| fields.next().and_then(|f| f.strip_prefix(key));
        let threads = field("threads=").and_then(|v| v.parse().ok());
        let max_connections = field("max_connections=").and_then(|v| v.parse().ok());
        return match (threads, max_connections, fields.next()) {
            (Some(threads), Some(max_connections), None) => Ok(Line::Limits {
                threads,
                max_connections,
            }),
            _ => Err(bad()),
        };
    }
    Ok(Line::Other)
}

/// A server's two listening addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    pub public: SocketAddr,
    pub admin: SocketAddr,
}

/// Why [`wait_listening`] gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupError {
    /// Both listening lines did not come within this long.
    Timeout(Duration),
    /// The line source ended first (the server closed its stdout: it exited).
    Closed,
    /// A start-up line that does not parse ([`parse_line`]'s message).
    Malformed(String),
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = "`listening public=ADDR` and `listening admin=ADDR`";
        match self {
            StartupError::Timeout(d) => write!(f, "server did not print {lines} within {d:?}"),
            StartupError::Closed => {
                write!(
                    f,
                    "server closed its stdout (exited?) before printing {lines}"
                )
            }
            StartupError::Malformed(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for StartupError {}

/// Takes lines from `lines` until both listening lines were seen (other lines are
/// skipped) or `limit` passes.
pub fn wait_listening(
    lines: &Receiver<String>,
    limit: Duration,
) -> Result<Listening, StartupError> {
    let deadline = Instant::now() + limit;
    let (mut public, mut admin) = (None, None);
    loop {
        if let (Some(public), Some(admin)) = (public, admin) {
            return Ok(Listening { public, admin });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).map_err(|e| match e {
            RecvTimeoutError::Timeout => StartupError::Timeout(limit),
            RecvTimeoutError::Disconnected => StartupError::Closed,
        })?;
        match parse_line(&line).map_err(StartupError::Malformed)? {
            Line::Public(a) => public = Some(a),
            Line::Admin(a) => admin = Some(a),
            Line::Limits { .. } | Line::Other => {}
        }
    }
}

/// [`wait_listening`] on a server's `stdout`, read by a thread of its own that goes on
/// draining (and discarding) the pipe afterwards, so the server never blocks on a full
/// pipe.
pub fn read_listening(
    stdout: impl Read + Send + 'static,
    limit: Duration,
) -> Result<Listening, StartupError> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                // The receiver is gone once both lines were read; keep draining.
                Ok(_) => {
                    let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                }
            }
        }
    });
    wait_listening(&rx, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_both_servers_print() {
        assert_eq!(
            parse_line("listening public=127.0.0.1:41234\n"),
            Ok(Line::Public("127.0.0.1:41234".parse().unwrap()))
        );
        assert_eq!(
            parse_line("listening admin=[::1]:8081"),
            Ok(Line::Admin("[::1]:8081".parse().unwrap()))
        );
        assert_eq!(
            parse_line("threads=2 max_connections=19952"),
            Ok(Line::Limits {
                threads: 2,
                max_connections: 19952
            })
        );
        assert_eq!(parse_line("holdfast: started"), Ok(Line::Other));
        assert_eq!(parse_line(""), Ok(Line::Other));
    }

    #[test]
    fn malformed_start_up_lines_are_errors() {
        for line in [
            "listening public=",
            "listening public=localhost",
            "listening public=127.0.0.1:1 extra",
            "listening other=127.0.0.1:1",
            "threads=2",
            "threads=x max_connections=1",
            "threads=2 max_connections=1 more=3",
        ] {
            assert!(parse_line(line).is_err(), "{line:?} parsed");
        }
    }

    #[test]
    fn waits_for_both_addresses_in_any_order() {
        let (tx, rx) = mpsc::channel();
        for l in [
            "hello",
            "listening admin=127.0.0.1:2",
            "listening public=127.0.0.1:1",
        ] {
            tx.send(l.to_string()).unwrap();
        }
        let got = wait_listening(&rx, Duration::from_secs(1)).unwrap();
        assert_eq!(got.public, "127.0.0.1:1".parse().unwrap());
        assert_eq!(got.admin, "127.0.0.1:2".parse().unwrap());

        tx.send("listening public=127.0.0.1:1".into()).unwrap();
        let err = wait_listening(&rx, Duration::from_millis(50)).unwrap_err();
        assert_eq!(err, StartupError::Timeout(Duration::from_millis(50)));
        drop(tx);
        assert_eq!(
            wait_listening(&rx, Duration::from_secs(1)),
            Err(StartupError::Closed)
        );
    }
}
