//! `GET /sub/{channel}[,{channel}…]`: long-poll and streams (Server-Sent Events).
//!
//! Owns the subscriber's side of docs/protocol.md: the two modes. What a request asks for
//! (channels, cursor from `?since=` and `Last-Event-ID`, `?timeout=`) and the `400`
//! texts come from holdfast's [`holdfast::subscribe::parse`]; whether it is a stream and
//! how the stream is framed, from [`Framing::for_request`].
//!
//! Long-poll: ask the store for the oldest message newer than the cursor; if there is
//! none, the store registers the subscriber on every channel and the request future
//! parks in a `select!` over the channels' `Notify`s (armed *before* asking the store, so
//! no publish slips between the check and the wait), a `tokio::time::sleep` for the
//! timeout, and the shutdown `watch`. Woken, it arms again and re-asks the store. The
//! future's drop (the answer went out, or hyper dropped it because the client left)
//! unregisters it from the store and the hub.
//!
//! Stream: register the stream in the hub, then drain the store's buffer into the first
//! frame until the store registers it (same no-gap argument), and hand hyper a
//! [`StreamBody`] that carries on from there.
//!
//! Private channels (`--subscribe-key`): after the request parses (its `400`s first), its
//! token ([`find_token`]: `Authorization`, `?token=`, the `--token-cookie` cookie) must
//! grant every channel (`SubscribeKey::check`), else `401`/`403` and nothing waits. The
//! token's `exp` then bounds the request: a long-poll's hold is the smaller of its
//! timeout and the time left, a stream ends at `exp` with `event: expired`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use holdfast::auth::find_token;
use holdfast::http::parse::has_token;
use holdfast::stats::{dec, inc};
use holdfast::store::{ChannelKey, Cursor, Message, Subscribed};
use holdfast::stream::{Event, Framing};
use hyper::header::{self, HeaderName};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

use crate::guard_io::{ConnShared, InFlight};
use crate::respond::{self, Body};
use crate::server::App;
use crate::stream::{Start, StreamBody, StreamGuard};

/// The peer's store is built standalone (`Store::new`), which answers every subscribe
/// itself; only a cluster node's store asks for a backplane read.
const STANDALONE: &str = "a standalone store never answers Subscribed::Fetch";

const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

pub async fn handle(
    app: &Arc<App>,
    conn: &Arc<ConnShared>,
    flight: InFlight,
    parts: &Parts,
    list: &str,
) -> Response<Body> {
    let query = parts.uri.query().unwrap_or("").as_bytes();
    // The last one, trimmed, as holdfast's head parser takes it.
    let last_event_id = last_header(parts, LAST_EVENT_ID).map(<[u8]>::trim_ascii);
    let holds = app.limits.holds;
    // The names are copied out: the parsed request is about 1 KiB (room for 64 names),
    // too much to keep in the future of every parked poll.
    let (names, cursor, timeout) =
        match holdfast::subscribe::parse(list.as_bytes(), query, last_event_id, holds) {
            Ok(sub) => (sub.names().to_vec(), sub.cursor, sub.timeout),
            Err(why) => return respond::text(StatusCode::BAD_REQUEST, why),
        };
    // Private channels: the token is checked once, here, after the request's own syntax
    // and before anything waits; what is kept is how long it has left.
    let token_left = match &app.subscribe_key {
        None => None,
        Some(key) => {
            let token = find_token(
                last_header(parts, header::AUTHORIZATION),
                query,
                parts.headers.get(header::COOKIE).map(|v| v.as_bytes()),
                &app.token_cookie,
            );
            match key.check(token, &names) {
                Ok(exp) => Some(time_left(exp)),
                Err(why) => {
                    inc(&app.stats.token_refused);
                    return respond::token_refused(&why);
                }
            }
        }
    };
    // SSE only for now: ndjson and WebSocket subscribers are holdfast's so far (issue
    // 14); the peer answers them as long-polls.
    let framing = Framing::for_request(holdfast::stream::Asks {
        event_stream: parts
            .headers
            .get_all(header::ACCEPT)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"text/event-stream")),
        ..Default::default()
    });
    // A token accepted within the leeway but already past `exp` may read what is
    // buffered, never wait (as in holdfast): no stream, and `401` rather than an empty
    // poll the client would repeat at once.
    let expired = token_left.is_some_and(|left| left.is_zero());
    // A client that has closed its side gets an answer now, as from holdfast: no stream,
    // no parking.
    if let Some(framing) = framing {
        if !app.shutting_down() && !conn.client_closed() {
            if expired {
                return token_expired(app);
            }
            // A stream ends at its token's expiry, on the monotonic clock from now (an
            // `exp` too far ahead for the clock to represent is as good as none).
            let now = tokio::time::Instant::now();
            let expires = token_left.and_then(|left| now.checked_add(left));
            return open_stream(app, conn, flight, framing, &names, cursor, expires);
        }
    }
    // A long-poll is held no longer than its token (none left: answered at once).
    let timeout = token_left.map_or(timeout, |left| timeout.min(left));
    long_poll(app, conn, &names, cursor, timeout, expired).await
}

/// `401 token expired`, counted like any token refusal.
fn token_expired(app: &App) -> Response<Body> {
    inc(&app.stats.token_refused);
    respond::token_refused(&holdfast::auth::Denied::Token(
        holdfast::auth::TokenError::Expired,
    ))
}

/// The last value of header `name`, as holdfast's head parser takes it.
fn last_header(parts: &Parts, name: HeaderName) -> Option<&[u8]> {
    parts
        .headers
        .get_all(name)
        .iter()
        .next_back()
        .map(|v| v.as_bytes())
}

/// Time left until `exp` (seconds since the Unix epoch) on the wall clock, where `exp`
/// lives; zero once it has passed (a token inside `--token-leeway`).
fn time_left(exp: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(exp).saturating_sub(now)
}

/// A long-poll registered in the store; unregistered on drop.
struct Parked<'a> {
    app: &'a App,
    keys: Vec<ChannelKey>,
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        // `group_done: false`. The hub is the peer's one group, done with a channel only
        // when no other long-poll or stream is on it, which it could tell only by holding
        // its lock across this call: the reverse of the store → hub order of publishes.
        // The store forgets the channel's groups when its last subscriber leaves.
        let group = self.app.hub.group();
        for &key in &self.keys {
            self.app.store.unsubscribe(key, group, 1, false);
        }
        dec(&self.app.stats.parked);
    }
}

fn deliver(app: &App, msg: &Message, lost: bool) -> Response<Body> {
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
    expired: bool,
) -> Response<Body> {
    let shutting_down = app.shutting_down();
    if timeout.is_zero() || shutting_down || conn.client_closed() {
        return match app.store.subscribe(names, cursor, None, app.now_ms()) {
            Ok(Subscribed::Ready { msg, lost }) => deliver(app, &msg, lost),
            Ok(Subscribed::Waiting { .. }) if shutting_down => respond::shutting_down(),
            Ok(Subscribed::Waiting { .. }) if expired => token_expired(app),
            Ok(Subscribed::Waiting { cursor, .. }) => timed_out(app, cursor),
            Ok(Subscribed::Fetch) => unreachable!("{}", STANDALONE),
            Err(_) => respond::too_many_channels(),
        };
    }

    let watch = app.hub.watch(names);
    let mut armed = watch.arm();
    let mut keys = vec![ChannelKey::NONE; names.len()];
    let cursor = match app.store.subscribe(
        names,
        cursor,
        Some((app.hub.group(), &mut keys)),
        app.now_ms(),
    ) {
        Ok(Subscribed::Ready { msg, lost }) => return deliver(app, &msg, lost),
        Ok(Subscribed::Waiting { cursor, .. }) => cursor,
        Ok(Subscribed::Fetch) => unreachable!("{}", STANDALONE),
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
    framing: Framing,
    names: &[&str],
    cursor: Cursor,
    expires: Option<tokio::time::Instant>,
) -> Response<Body> {
    let named = names.len() > 1;
    let (tx, rx) = mpsc::unbounded_channel();
    conn.open_stream(app.hub.max_backlog());
    let Some(reg) = app.hub.add_stream(names, framing, tx, conn.clone()) else {
        return respond::shutting_down();
    };
    let mut first = Vec::with_capacity(512);
    first.extend_from_slice(framing.preamble());
    let mut keys = vec![ChannelKey::NONE; names.len()];
    let group = app.hub.group();
    let mut next = cursor;
    let cursor = loop {
        let now = app.now_ms();
        match app
            .store
            .subscribe(names, next, Some((group, &mut keys)), now)
        {
            Err(_) => return respond::too_many_channels(),
            Ok(Subscribed::Ready { msg, lost }) => {
                if lost {
                    framing.lost(&mut first, msg.id);
                }
                framing.message(&mut first, &Event::from(&*msg), named);
                inc(&app.stats.delivered);
                next = Cursor::Since(msg.id);
            }
            // Nothing newer: the store has registered the stream on every channel. A gap
            // seen now is announced with the next message.
            Ok(Subscribed::Waiting { cursor, lost }) => break (cursor, lost),
            Ok(Subscribed::Fetch) => unreachable!("{}", STANDALONE),
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
    let start = Start {
        first: first.into(),
        cursor,
        lost,
        expires,
    };
    let body = StreamBody::new(
        framing,
        start,
        rx,
        conn.clone(),
        app.limits.sse_heartbeat,
        guard,
    );
    respond::stream(framing, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_is_measured_on_the_wall_clock_and_never_negative() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(time_left(now - 10), Duration::ZERO, "inside the leeway");
        assert_eq!(time_left(0), Duration::ZERO);
        let left = time_left(now + 60);
        assert!(left > Duration::from_secs(58) && left <= Duration::from_secs(60));
        // Far beyond what a monotonic instant can hold: no panic, no deadline.
        let huge = time_left(u64::MAX);
        assert!(std::time::Instant::now().checked_add(huge).is_none());
    }
}
