//! `GET /sub/{channel}[,{channel}…]`: long-poll and Server-Sent Events.
//!
//! Owns the subscriber's side of PROTOCOL.md: parsing the channel list and the cursor
//! (`?since=`, `Last-Event-ID`, none), `?timeout=`, and the two modes.
//!
//! Long-poll: ask the store for the oldest message newer than the cursor; if there is
//! none, the store registers the subscriber on every channel and the request future
//! parks in a `select!` over the channels' `Notify`s (armed *before* asking the store, so
//! no publish slips between the check and the wait), a `tokio::time::sleep` for the
//! timeout, and the shutdown `watch`. Woken, it arms again and re-asks the store. The
//! future's drop (the answer went out, or hyper dropped it because the client left)
//! unregisters it from the store and the hub.
//!
//! SSE: register the stream in the hub, then drain the store's buffer into the first
//! frame until the store registers it (same no-gap argument), and hand hyper an
//! [`SseBody`] that carries on from there.

use std::sync::Arc;
use std::time::Duration;

use holdfast::http::parse::query_pairs;
use holdfast::pubsub::{valid_channel_name, ChannelKey, Cursor, Subscribed, MAX_CHANNELS_PER_SUB};
use holdfast::stats::{dec, inc};
use hyper::header::{self, HeaderName};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

use crate::guard_io::{ConnShared, InFlight};
use crate::respond::{self, Body};
use crate::server::App;
use crate::service::has_token;
use crate::sse::{SseBody, StreamGuard};

/// The store tracks which of holdfast's event loops hold subscribers (a bit per loop).
/// Here every subscriber is woken through the one hub, so all register as loop 0, and
/// the bit is never cleared: that costs one hub lookup per publish on a channel that has
/// had subscribers, while clearing it safely would need the store and hub locks together
/// in the order publish does not take them.
pub const WORKER: usize = 0;

const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

pub async fn handle(
    app: &Arc<App>,
    conn: &Arc<ConnShared>,
    flight: InFlight,
    parts: &Parts,
    list: &str,
) -> Response<Body> {
    let names = match channels(list) {
        Ok(n) => n,
        Err(why) => return respond::text(StatusCode::BAD_REQUEST, why),
    };
    let (cursor, timeout) = match params(app, parts) {
        Ok(p) => p,
        Err(why) => return respond::text(StatusCode::BAD_REQUEST, why),
    };
    let sse = parts
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"text/event-stream"));
    // A client that has closed its side gets an answer now, as from holdfast: no stream,
    // no parking.
    if sse && !app.shutting_down() && !conn.client_closed() {
        return open_stream(app, conn, flight, &names, cursor);
    }
    long_poll(app, conn, &names, cursor, timeout).await
}

/// Valid, de-duplicated channel names, at most 64.
fn channels(list: &str) -> Result<Vec<&str>, &'static str> {
    let mut names = Vec::with_capacity(1);
    for name in list.split(',') {
        if !valid_channel_name(name.as_bytes()) {
            return Err("invalid channel name\n");
        }
        if names.contains(&name) {
            continue;
        }
        if names.len() == MAX_CHANNELS_PER_SUB {
            return Err("too many channels (at most 64)\n");
        }
        names.push(name);
    }
    Ok(names)
}

/// The cursor and the hold time.
fn params(app: &App, parts: &Parts) -> Result<(Cursor, Duration), &'static str> {
    let mut since = None;
    let mut timeout = app.limits.poll_timeout;
    for (k, v) in query_pairs(parts.uri.query().unwrap_or("").as_bytes()) {
        match k {
            b"since" => since = Some(parse_id(v).ok_or("since must be a message id\n")?),
            b"timeout" => {
                timeout = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| holdfast::config::parse_duration(s).ok())
                    .ok_or("timeout must be seconds (or 500ms, 2m)\n")?
                    .min(app.limits.max_poll_timeout);
            }
            _ => {}
        }
    }
    // Both given: the newer wins (an EventSource reconnecting to a `?since=` URL).
    if let Some(v) = parts.headers.get_all(LAST_EVENT_ID).iter().next_back() {
        let c =
            parse_id(v.as_bytes().trim_ascii()).ok_or("Last-Event-ID must be a message id\n")?;
        since = Some(since.map_or(c, |s| s.max(c)));
    }
    Ok((since.map_or(Cursor::Latest, Cursor::Since), timeout))
}

fn parse_id(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A long-poll registered in the store; unregistered on drop.
struct Parked<'a> {
    app: &'a App,
    keys: Vec<ChannelKey>,
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        for &key in &self.keys {
            self.app.store.unsubscribe(key, WORKER, 1, false);
        }
        dec(&self.app.stats.parked);
    }
}

fn deliver(app: &App, msg: &holdfast::pubsub::Message, lost: bool) -> Response<Body> {
    inc(&app.stats.delivered);
    respond::delivery(msg, lost)
}

fn timed_out(app: &App, cursor: u64) -> Response<Body> {
    inc(&app.stats.poll_timeouts);
    respond::no_message(cursor)
}

async fn long_poll(
    app: &Arc<App>,
    conn: &Arc<ConnShared>,
    names: &[&str],
    cursor: Cursor,
    timeout: Duration,
) -> Response<Body> {
    let shutting_down = app.shutting_down();
    if timeout.is_zero() || shutting_down || conn.client_closed() {
        return match app.store.subscribe(names, cursor, None, app.now_ms()) {
            Ok(Subscribed::Ready { msg, lost }) => deliver(app, &msg, lost),
            Ok(Subscribed::Waiting { .. }) if shutting_down => respond::shutting_down(),
            Ok(Subscribed::Waiting { cursor, .. }) => timed_out(app, cursor),
            Err(_) => respond::too_many_channels(),
        };
    }

    let watch = app.hub.watch(names);
    let mut armed = watch.arm();
    let mut keys = vec![0; names.len()];
    let cursor = match app
        .store
        .subscribe(names, cursor, Some((WORKER, &mut keys)), app.now_ms())
    {
        Ok(Subscribed::Ready { msg, lost }) => return deliver(app, &msg, lost),
        Ok(Subscribed::Waiting { cursor, .. }) => cursor,
        Err(_) => return respond::too_many_channels(),
    };
    inc(&app.stats.parked);
    let parked = Parked { app, keys };
    // From here the client leaving (EOF) ends the request.
    let _park = conn.park();

    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut stop = app.shutdown_signal();
    loop {
        tokio::select! {
            () = armed.any() => {}
            () = &mut deadline => return timed_out(app, cursor),
            () = crate::server::shutdown_started(&mut stop) => {
                // A publish acknowledged before shutdown may have notified us in the same
                // instant: look once more so it is delivered, not answered with 503.
                let now = app.now_ms();
                if let Ok(Subscribed::Ready { msg, lost }) =
                    app.store.subscribe(names, Cursor::Since(cursor), None, now)
                {
                    return deliver(app, &msg, lost);
                }
                return respond::shutting_down();
            }
        }
        // Arm again before looking, so a publish racing with the look is not lost.
        armed = watch.arm();
        if watch.deleted(&parked.keys) {
            return respond::text(StatusCode::GONE, "channel deleted\n");
        }
        let now = app.now_ms();
        if let Ok(Subscribed::Ready { msg, lost }) =
            app.store.subscribe(names, Cursor::Since(cursor), None, now)
        {
            return deliver(app, &msg, lost);
        }
    }
}

fn open_stream(
    app: &Arc<App>,
    conn: &Arc<ConnShared>,
    flight: InFlight,
    names: &[&str],
    cursor: Cursor,
) -> Response<Body> {
    let named = names.len() > 1;
    let (tx, rx) = mpsc::unbounded_channel();
    conn.open_stream(app.hub.max_backlog());
    let Some(reg) = app.hub.add_stream(names, tx, conn.clone()) else {
        return respond::shutting_down();
    };
    let mut first = Vec::with_capacity(512);
    first.extend_from_slice(holdfast::sse::PREAMBLE);
    let mut keys = vec![0; names.len()];
    let mut next = cursor;
    let cursor = loop {
        let now = app.now_ms();
        match app
            .store
            .subscribe(names, next, Some((WORKER, &mut keys)), now)
        {
            Err(_) => return respond::too_many_channels(),
            Ok(Subscribed::Ready { msg, lost }) => {
                if lost {
                    holdfast::sse::lost(&mut first, msg.id);
                }
                holdfast::sse::event(&mut first, &msg, named);
                inc(&app.stats.delivered);
                next = Cursor::Since(msg.id);
            }
            // Nothing newer: the store has registered the stream on every channel. A gap
            // seen now is announced with the next event.
            Ok(Subscribed::Waiting { cursor, lost }) => break (cursor, lost),
        }
    };
    let (cursor, lost) = cursor;
    inc(&app.stats.sse_streams);
    let guard = StreamGuard {
        app: app.clone(),
        _reg: reg,
        keys,
        _park: conn.park(),
        _flight: flight,
    };
    let body = SseBody::new(
        first.into(),
        rx,
        conn.clone(),
        app.limits.sse_heartbeat,
        cursor,
        lost,
        guard,
    );
    respond::event_stream(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_lists() {
        let many: Vec<String> = (0..65).map(|i| format!("c{i}")).collect();
        let table: &[(&str, Result<Vec<&str>, ()>)] = &[
            ("a", Ok(vec!["a"])),
            ("a,b,a", Ok(vec!["a", "b"])),
            ("Az09._~:@-", Ok(vec!["Az09._~:@-"])),
            ("", Err(())),
            ("a,", Err(())),
            (",a", Err(())),
            ("a,,b", Err(())),
            ("a$b", Err(())),
            ("a%20b", Err(())),
        ];
        for (list, want) in table {
            assert_eq!(channels(list).map_err(|_| ()), *want, "{list:?}");
        }
        assert_eq!(channels(&many[..64].join(",")).map(|v| v.len()), Ok(64));
        assert!(channels(&many.join(",")).is_err(), "65 channels");
        // Duplicates do not count against the limit.
        let dup = format!("{},c0", many[..64].join(","));
        assert_eq!(channels(&dup).map(|v| v.len()), Ok(64));
    }

    #[test]
    fn message_ids() {
        let table: &[(&[u8], Option<u64>)] = &[
            (b"0", Some(0)),
            (b"1732200000000042", Some(1_732_200_000_000_042)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"", None),
            (b"-1", None),
            (b"12x", None),
            (b" 1", None),
            (b"000000000000000000001", None),
        ];
        for (v, want) in table {
            assert_eq!(parse_id(v), *want, "{:?}", String::from_utf8_lossy(v));
        }
    }
}
