//! What a subscribe request asks for, read from its path, query and `Last-Event-ID`:
//! the channels, the cursor and how long a long-poll may be held. Both servers call
//! [`parse`], so the rules and the error texts of `docs/protocol.md` exist once.
//!
//! No allocation: the channel names borrow the request and sit in a fixed array of
//! [`MAX_CHANNELS_PER_SUB`] (about 1 KiB of stack).

use std::time::Duration;

use crate::config::parse_duration;
use crate::http::parse::query_pairs;
use crate::store::{valid_channel_name, Cursor, MAX_CHANNELS_PER_SUB};

/// A valid subscribe request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe<'a> {
    names: [&'a str; MAX_CHANNELS_PER_SUB],
    len: usize,
    pub cursor: Cursor,
    /// How long a long-poll is held: `?timeout=`, capped, or the default.
    pub timeout: Duration,
    /// `?stream=ndjson`: newline-delimited JSON, as `Accept: application/x-ndjson` asks.
    pub ndjson: bool,
}

impl<'a> Subscribe<'a> {
    /// The channels, de-duplicated, in request order.
    pub fn names(&self) -> &[&'a str] {
        &self.names[..self.len]
    }
}

/// The hold times a server applies.
#[derive(Debug, Clone, Copy)]
pub struct Holds {
    /// Without `?timeout=`.
    pub default: Duration,
    /// The most `?timeout=` may ask for.
    pub max: Duration,
}

/// Reads `list` (the path after `/sub/`: comma-separated names), the query string and the
/// `Last-Event-ID` header. The error is the `400` body to send.
pub fn parse<'a>(
    list: &'a [u8],
    query: &[u8],
    last_event_id: Option<&[u8]>,
    holds: Holds,
) -> Result<Subscribe<'a>, &'static str> {
    let mut names = [""; MAX_CHANNELS_PER_SUB];
    let mut len = 0;
    for name in list.split(|&b| b == b',') {
        if !valid_channel_name(name) {
            return Err("invalid channel name\n");
        }
        // Valid names are ASCII.
        let name = std::str::from_utf8(name).unwrap_or_default();
        if names[..len].contains(&name) {
            continue;
        }
        if len == MAX_CHANNELS_PER_SUB {
            return Err("too many channels (at most 64)\n");
        }
        names[len] = name;
        len += 1;
    }
    // A repeated parameter counts once, with its last value: take the last of each,
    // then check it.
    let (mut since_q, mut timeout_q, mut stream_q) = (None, None, None);
    for (k, v) in query_pairs(query) {
        match k {
            b"since" => since_q = Some(v),
            b"timeout" => timeout_q = Some(v),
            b"stream" => stream_q = Some(v),
            _ => {}
        }
    }
    let mut since = match since_q {
        Some(v) => Some(parse_id(v).ok_or("since must be a message id\n")?),
        None => None,
    };
    let timeout = match timeout_q {
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| parse_duration(s).ok())
            .ok_or("timeout must be seconds (or 500ms, 2m)\n")?
            .min(holds.max),
        None => holds.default,
    };
    let ndjson = match stream_q {
        Some(b"ndjson") => true,
        Some(_) => return Err("stream must be ndjson\n"),
        None => false,
    };
    // Both given: the newer wins. An EventSource opened with `?since=X` keeps that URL
    // and adds `Last-Event-ID` on reconnect; taking the query alone would replay from X
    // every time.
    if let Some(v) = last_event_id {
        let c = parse_id(v).ok_or("Last-Event-ID must be a message id\n")?;
        since = Some(since.map_or(c, |s| s.max(c)));
    }
    Ok(Subscribe {
        names,
        len,
        cursor: since.map_or(Cursor::Latest, Cursor::Since),
        timeout,
        ndjson,
    })
}

/// A message id: 1 to 20 ASCII digits that fit a `u64`.
pub fn parse_id(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_parameter_counts_once_with_its_last_value() {
        let p = |q: &str| parse(b"a", q.as_bytes(), None, HOLDS);
        let s = p("since=x&since=5&timeout=nope&timeout=2&stream=sse&stream=ndjson").unwrap();
        assert_eq!(s.cursor, Cursor::Since(5));
        assert_eq!(s.timeout, Duration::from_secs(2));
        assert!(s.ndjson);
        assert!(p("stream=ndjson&stream=sse").is_err());
        assert!(p("since=5&since=x").is_err());
    }

    const HOLDS: Holds = Holds {
        default: Duration::from_secs(30),
        max: Duration::from_secs(120),
    };

    fn ok(list: &str, query: &str, lei: Option<&str>) -> (Vec<String>, Cursor, Duration) {
        let s = parse(
            list.as_bytes(),
            query.as_bytes(),
            lei.map(str::as_bytes),
            HOLDS,
        )
        .unwrap_or_else(|e| panic!("{list}?{query}: {e}"));
        let names = s.names().iter().map(|n| n.to_string()).collect();
        (names, s.cursor, s.timeout)
    }

    #[test]
    fn valid_requests() {
        let secs = Duration::from_secs;
        type Row<'a> = (
            &'a str,
            &'a str,
            Option<&'a str>,
            &'a [&'a str],
            Cursor,
            Duration,
        );
        let table: &[Row<'_>] = &[
            ("a", "", None, &["a"], Cursor::Latest, secs(30)),
            ("a,b,a", "", None, &["a", "b"], Cursor::Latest, secs(30)),
            ("a", "since=0", None, &["a"], Cursor::Since(0), secs(30)),
            (
                "a",
                "since=5&timeout=2",
                None,
                &["a"],
                Cursor::Since(5),
                secs(2),
            ),
            (
                "a",
                "timeout=500ms",
                None,
                &["a"],
                Cursor::Latest,
                Duration::from_millis(500),
            ),
            ("a", "timeout=1h", None, &["a"], Cursor::Latest, secs(120)),
            ("a", "timeout=0", None, &["a"], Cursor::Latest, secs(0)),
            ("a", "", Some("9"), &["a"], Cursor::Since(9), secs(30)),
            // The newer of the two cursors wins, whichever carries it.
            (
                "a",
                "since=5",
                Some("9"),
                &["a"],
                Cursor::Since(9),
                secs(30),
            ),
            (
                "a",
                "since=12",
                Some("9"),
                &["a"],
                Cursor::Since(12),
                secs(30),
            ),
            (
                "a",
                "other=x&since=3",
                None,
                &["a"],
                Cursor::Since(3),
                secs(30),
            ),
        ];
        for &(list, query, lei, names, cursor, timeout) in table {
            let got = ok(list, query, lei);
            assert_eq!(got.0, names, "{list}?{query}");
            assert_eq!((got.1, got.2), (cursor, timeout), "{list}?{query} {lei:?}");
        }
        let many: Vec<String> = (0..64).map(|i| format!("c{i}")).collect();
        assert_eq!(ok(&many.join(","), "", None).0.len(), 64);
    }

    #[test]
    fn refused_requests_say_why() {
        let many: String = (0..65)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let table: &[(&str, &str, Option<&str>, &str)] = &[
            ("", "", None, "invalid channel name\n"),
            ("a,", "", None, "invalid channel name\n"),
            ("a b", "", None, "invalid channel name\n"),
            (&many, "", None, "too many channels (at most 64)\n"),
            ("a", "since=x", None, "since must be a message id\n"),
            ("a", "since=-1", None, "since must be a message id\n"),
            (
                "a",
                "since=99999999999999999999",
                None,
                "since must be a message id\n",
            ),
            (
                "a",
                "timeout=soon",
                None,
                "timeout must be seconds (or 500ms, 2m)\n",
            ),
            ("a", "", Some("x1"), "Last-Event-ID must be a message id\n"),
        ];
        for &(list, query, lei, why) in table {
            let got = parse(
                list.as_bytes(),
                query.as_bytes(),
                lei.map(str::as_bytes),
                HOLDS,
            );
            assert_eq!(got.err(), Some(why), "{list}?{query} {lei:?}");
        }
    }
}
