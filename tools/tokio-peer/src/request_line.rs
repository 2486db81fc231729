//! A request line scanned as it arrives, for the two answers hyper cannot give as
//! docs/protocol.md (and holdfast) want them.
//!
//! - **Over 8 KiB** (`414`): hyper answers `414` only for URIs over 64 KiB and otherwise
//!   buffers an endless line up to `max_buf_size`, then answers `431`.
//! - **A well-formed `HTTP/d.d` that is not 1.0 or 1.1** (`505`): hyper answers every
//!   version it cannot parse `400`. Anything else in the version's place (`FOO/1.1`,
//!   `HTTP/1`, no version at all) is not HTTP and stays hyper's `400`, as in holdfast
//!   (`holdfast::http::parse`).
//!
//! The scan follows httparse's request-line grammar (the parser under both holdfast and
//! hyper): a method token, one space, a target, one space, the version, then `\r\n` or
//! `\n`; a line that strays from it is hyper's to refuse. A target with non-ASCII bytes
//! is left to hyper as well (httparse also wants it UTF-8, which this scan does not
//! check), so a `505` is only claimed for a line holdfast would answer `505`.
//!
//! hyper parses the first bytes of a head as soon as they arrive (then waits for the
//! blank line) and refuses a partial version that cannot become `HTTP/1.0` or `HTTP/1.1`
//! (`HTTP/2` before the `.0` arrives), so whether the line is a `505` or a `400` would
//! depend on where the client's segments split it. The scan therefore says how many of
//! the bytes just read hyper must not see yet ([`Scan::Partial`]'s `hold`): the
//! version's suspect tail, at most [`MAX_HOLD`] bytes, kept by the socket wrapper until
//! the line ends or stops looking like a version.

use holdfast::http::parse::{is_http_version, HeadError, MAX_REQUEST_LINE};

/// Longest version token: `HTTP/d.d`.
const VERSION_LEN: usize = 8;
/// Most bytes [`Scan::Partial`] holds back: `d.d` and the `\r` of `HTTP/d.d\r`.
pub const MAX_HOLD: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Method,
    Target,
    Version,
    /// Off httparse's grammar, or a non-ASCII target: hyper decides.
    Other,
}

/// The request line of one head, fed the bytes as they arrive.
#[derive(Debug, Clone, Copy)]
pub struct LineScan {
    /// Bytes seen, without the `\n`.
    len: usize,
    part: Part,
    /// Bytes in the current part (all of them for the version, even past 8).
    part_len: usize,
    /// The version's first [`VERSION_LEN`] bytes.
    version: [u8; VERSION_LEN],
    /// A `\r` followed the version.
    cr: bool,
}

/// What a [`LineScan::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The line goes on; the last `hold` bytes fed must not reach hyper yet.
    Partial { hold: usize },
    /// The line ended (or is already too long): refuse it with this, or (`None`) let
    /// hyper have it.
    Done(Option<HeadError>),
}

impl Default for LineScan {
    fn default() -> LineScan {
        LineScan {
            len: 0,
            part: Part::Method,
            part_len: 0,
            version: [0; VERSION_LEN],
            cr: false,
        }
    }
}

/// httparse's `tchar` (a method).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl LineScan {
    /// Scans the next bytes of the line (they may run past its end).
    pub fn feed(&mut self, bytes: &[u8]) -> Scan {
        let nl = bytes.iter().position(|&b| b == b'\n');
        let line = &bytes[..nl.unwrap_or(bytes.len())];
        if self.part != Part::Other {
            for &b in line {
                self.step(b);
            }
        }
        self.len += line.len();
        // holdfast's rule: more than 8 KiB (plus the CR) before the line end.
        let too_long = self.len > MAX_REQUEST_LINE + 1;
        if nl.is_none() {
            if too_long {
                return Scan::Done(Some(HeadError::UriTooLong));
            }
            return Scan::Partial {
                hold: self.suspect_tail(),
            };
        }
        // A whole line that fits hyper's buffer is hyper's to parse (the service answers
        // `414` for one over 8 KiB), unless hyper would answer it `400` where holdfast
        // answers `505`; the limit comes first there too.
        Scan::Done(self.unsupported_version().then_some(if too_long {
            HeadError::UriTooLong
        } else {
            HeadError::Version
        }))
    }

    fn step(&mut self, b: u8) {
        let part = self.part;
        let next = match part {
            Part::Method if is_token(b) => Part::Method,
            Part::Target if (b'!'..=b'~').contains(&b) => Part::Target,
            Part::Method | Part::Target if b == b' ' && self.part_len > 0 => {
                self.part_len = 0;
                if part == Part::Method {
                    Part::Target
                } else {
                    Part::Version
                }
            }
            Part::Version if !self.cr && b == b'\r' => {
                self.cr = true;
                return;
            }
            Part::Version if !self.cr => {
                if let Some(slot) = self.version.get_mut(self.part_len) {
                    *slot = b;
                }
                Part::Version
            }
            _ => Part::Other,
        };
        if next == part {
            self.part_len += 1;
        }
        self.part = next;
    }

    /// The line so far ends in a well-formed `HTTP/d.d` that is neither 1.0 nor 1.1.
    fn unsupported_version(&self) -> bool {
        self.part == Part::Version
            && self.part_len == VERSION_LEN
            && is_http_version(&self.version)
            && !matches!(&self.version, b"HTTP/1.0" | b"HTTP/1.1")
    }

    /// How many of the last bytes fed are a version that hyper would refuse already but
    /// that may still become a well-formed `HTTP/d.d` (`HTTP/2`, `HTTP/1.2`, with its
    /// `\r`): from the first byte that is not on the way to `HTTP/1.0` or `HTTP/1.1`.
    fn suspect_tail(&self) -> usize {
        if self.part != Part::Version || self.part_len > VERSION_LEN {
            return 0;
        }
        let v = &self.version[..self.part_len];
        let pattern_so_far = v.iter().enumerate().all(|(i, &b)| match i {
            0..=4 => b == b"HTTP/"[i],
            6 => b == b'.',
            _ => b.is_ascii_digit(),
        });
        let from = match v {
            _ if !pattern_so_far => return 0,
            [_, _, _, _, _, major, ..] if *major != b'1' => 5,
            [_, _, _, _, _, _, _, minor] if *minor > b'1' => 7,
            _ => return 0,
        };
        let hold = self.part_len - from + usize::from(self.cr);
        debug_assert!(hold <= MAX_HOLD);
        hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(pieces: &[&[u8]]) -> Vec<Scan> {
        let mut s = LineScan::default();
        pieces.iter().map(|p| s.feed(p)).collect()
    }

    fn verdict(line: &[u8]) -> Option<HeadError> {
        match scan(&[line])[..] {
            [Scan::Done(v)] => v,
            ref other => panic!("{:?}: {other:?}", String::from_utf8_lossy(line)),
        }
    }

    #[test]
    fn only_a_well_formed_other_version_is_505() {
        let table: &[(&[u8], Option<HeadError>)] = &[
            (b"GET / HTTP/1.1\r\n", None),
            (b"GET / HTTP/1.0\n", None),
            (b"GET / HTTP/2.0\r\n\r\n", Some(HeadError::Version)),
            (b"GET / HTTP/1.2\r\n", Some(HeadError::Version)),
            (b"GET / HTTP/0.9\r\n", Some(HeadError::Version)),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                Some(HeadError::Version),
            ),
            (b"GET /sub/a?since=1 HTTP/3.0\n", Some(HeadError::Version)),
            // Not an HTTP version, or not a request line httparse reads to the version:
            // hyper's 400, as holdfast's.
            (b"THIS IS NOT HTTP\r\n", None),
            (b"GET / FOO/1.1\r\n", None),
            (b"GET / HTTP/1\r\n", None),
            (b"GET / HTTP/12.0\r\n", None),
            (b"GET / HTTP/2.0 \r\n", None),
            (b"GET / HTTP/2.0\rx\r\n", None),
            (b"GET HTTP/2.0\r\n", None),
            (b"GET  / HTTP/2.0\r\n", None),
            (b"GET /\xc3\xa9 HTTP/2.0\r\n", None),
            (b"G(T / HTTP/2.0\r\n", None),
            (b"\r\nGET / HTTP/2.0\r\n", None),
        ];
        for (line, want) in table {
            assert_eq!(verdict(line), *want, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn a_suspect_version_is_held_until_the_line_ends() {
        let hold = |n| Scan::Partial { hold: n };
        assert_eq!(
            scan(&[b"GET / HTTP/", b"2", b".0", b"\r", b"\n"]),
            [
                hold(0),
                hold(1),
                hold(3),
                hold(4),
                Scan::Done(Some(HeadError::Version))
            ]
        );
        assert_eq!(
            scan(&[b"GET / HTTP/1.", b"2\r", b"\n\r\n"]),
            [hold(0), hold(2), Scan::Done(Some(HeadError::Version))]
        );
        // No longer a version: let hyper refuse it.
        assert_eq!(
            scan(&[b"GET / HTTP/2", b".0x", b"\r\n"]),
            [hold(1), hold(0), Scan::Done(None)]
        );
        assert_eq!(
            scan(&[b"GET / HTTP/1.1", b"\r", b"\n"]),
            [hold(0), hold(0), Scan::Done(None)]
        );
        assert_eq!(scan(&[b"GET / HTTP/2.0"]), [hold(3)]);
    }

    #[test]
    fn a_line_over_8_kib_is_414_whatever_its_version() {
        let target = vec![b'a'; MAX_REQUEST_LINE];
        let mut s = LineScan::default();
        assert_eq!(s.feed(b"GET /"), Scan::Partial { hold: 0 });
        assert_eq!(s.feed(&target), Scan::Done(Some(HeadError::UriTooLong)));
        let mut s = LineScan::default();
        let mut line = b"GET /".to_vec();
        line.extend_from_slice(&target);
        line.extend_from_slice(b" HTTP/2.0\r\n");
        assert_eq!(s.feed(&line), Scan::Done(Some(HeadError::UriTooLong)));
        // A whole line with a version hyper reads is left to it (and the service).
        line.truncate(line.len() - 10);
        line.extend_from_slice(b"HTTP/1.1\r\n");
        assert_eq!(LineScan::default().feed(&line), Scan::Done(None));
    }
}
