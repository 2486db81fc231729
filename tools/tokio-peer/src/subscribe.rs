//! `GET /sub/{channel}[,{channel}…]`: long-poll and streams (Server-Sent Events,
//! newline-delimited JSON, WebSocket).
//!
//! Owns the subscriber's side of docs/protocol.md: the modes. What a request asks for
//! (channels, cursor from `?since=` and `Last-Event-ID`, `?timeout=`, `?stream=ndjson`)
//! and the `400` texts come from holdfast's [`holdfast::subscribe::parse`]; whether it is
//! a stream and which transport, from [`Framing::for_request`] (an upgrade wins, then
//! `Accept: text/event-stream`, then ndjson). A WebSocket upgrade is checked after the
//! request's own `400`s and before the token, in holdfast's order: holdfast's
//! `check_upgrade` (`400`, `426`), then with `--allow-origin` an `Origin` not listed
//! (`403`).
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
//! frame(s) until the store registers it (same no-gap argument), and hand hyper a
//! [`StreamBody`] that carries on from there (SSE, ndjson), or answer `101` and leave a
//! [`WebSocket`] with the connection for after the upgrade.
//!
//! Private channels (`--subscribe-key`): after the request parses (its `400`s first), its
//! token ([`find_token`]: `Authorization`, `?token=`, the `--token-cookie` cookie) must
//! grant every channel (`SubscribeKey::check`), else `401`/`403` and nothing waits. The
//! token's `exp` then bounds the request: a long-poll's hold is the smaller of its
//! timeout and the time left, a stream ends at `exp` with its `expired` signal.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use holdfast::auth::find_token;
use holdfast::http::parse::has_token;
use holdfast::stats::{dec, inc};
use holdfast::store::{ChannelKey, Cursor, Message, Subscribed};
use holdfast::stream::{websocket::check_upgrade, Asks, Event, Framing};
use hyper::header::{self, HeaderName};
use hyper::http::request::Parts;
use hyper::upgrade::OnUpgrade;
use hyper::{Response, StatusCode, Version};
use tokio::sync::mpsc;

use crate::frames::{self, Frame};
use crate::guard_io::{ConnShared, InFlight};
use crate::hub::StreamItem;
use crate::respond::{self, Body};
use crate::server::App;
use crate::stream::{Start, StreamBody, StreamGuard};
use crate::websocket::{self, WebSocket};

/// The peer's store is built standalone (`Store::new`), which answers every subscribe
/// itself; only a cluster node's store asks for a backplane read.
const STANDALONE: &str = "a standalone store never answers Subscribed::Fetch";

const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");

/// `origin`: the request's allowed CORS origin (0: none or not allowed); `upgrade`:
/// hyper's handle for taking the connection over (a request with `Upgrade`).
pub async fn handle(
    app: &Arc<App>,
    conn: &Arc<ConnShared>,
    flight: InFlight,
    origin: u32,
    parts: &Parts,
    list: &str,
    upgrade: Option<OnUpgrade>,
) -> Response<Body> {
    let query = parts.uri.query().unwrap_or("").as_bytes();
    // The last one, trimmed, as holdfast's head parser takes it.
    let last_event_id = last_header(parts, LAST_EVENT_ID).map(<[u8]>::trim_ascii);
    let holds = app.limits.holds;
    // The names are copied out: the parsed request is about 1 KiB (room for 64 names),
    // too much to keep in the future of every parked poll.
    let (names, cursor, timeout, ndjson) =
        match holdfast::subscribe::parse(list.as_bytes(), query, last_event_id, holds) {
            Ok(sub) => (sub.names().to_vec(), sub.cursor, sub.timeout, sub.ndjson),
            Err(why) => return respond::text(StatusCode::BAD_REQUEST, why),
        };
    let websocket = lists(parts, header::UPGRADE, b"websocket");
    if websocket {
        // Only GETs get here (other methods are `405` for the path).
        if let Err(bad) = check_upgrade(
            true,
            parts.version == Version::HTTP_11,
            lists(parts, header::CONNECTION, b"upgrade"),
            last_header(parts, SEC_WEBSOCKET_KEY),
            last_header(parts, SEC_WEBSOCKET_VERSION),
        ) {
            return websocket::refused(bad);
        }
        // A browser opens a WebSocket from any page, with its cookies (cross-site
        // WebSocket hijacking): with --allow-origin, only listed origins may.
        if app.cors.is_some() && crate::cors::origin(&parts.headers).is_some() && origin == 0 {
            return respond::text(StatusCode::FORBIDDEN, "origin not allowed\n");
        }
    }
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
    let framing = Framing::for_request(Asks {
        event_stream: lists(parts, header::ACCEPT, b"text/event-stream"),
        ndjson: ndjson || lists(parts, header::ACCEPT, b"application/x-ndjson"),
        websocket,
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
            let ws = match framing {
                Framing::WebSocket => {
                    // hyper offers the upgrade for every HTTP/1.1 request with `Upgrade`,
                    // which `check_upgrade` has required.
                    let Some(upgrade) = upgrade else {
                        return respond::text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "cannot upgrade this connection\n",
                        );
                    };
                    let key = last_header(parts, SEC_WEBSOCKET_KEY).unwrap_or_default();
                    Some((upgrade, key))
                }
                _ => None,
            };
            let opened = open_stream(app, conn, flight, framing, &names, cursor, expires);
            return match (opened, ws) {
                (Err(refused), _) => refused.response(),
                (Ok(opened), None) => opened.body(app, conn),
                (Ok(opened), Some((upgrade, key))) => opened.websocket(app, conn, upgrade, key),
            };
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

/// Whether any `name` header lists `token` (comma-separated, case-insensitive), as
/// holdfast's head parser takes `Accept`, `Upgrade` and `Connection`.
fn lists(parts: &Parts, name: HeaderName, token: &[u8]) -> bool {
    parts
        .headers
        .get_all(name)
        .iter()
        .any(|v| has_token(v.as_bytes(), token))
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

/// A stream registered in the hub and the store, with what it replays.
struct Opened {
    framing: Framing,
    /// The replay: holdfast's rendering of every buffered message newer than the cursor
    /// (with a gap signal where one is due), for this transport.
    first: Vec<Frame>,
    start: Start,
    rx: mpsc::UnboundedReceiver<StreamItem>,
    guard: StreamGuard,
}

/// Why a stream could not open.
enum NotOpened {
    /// Shutdown began: no new streams.
    ShuttingDown,
    /// Registering would create a channel beyond `--max-channels`.
    TooManyChannels,
}

impl NotOpened {
    fn response(self) -> Response<Body> {
        match self {
            NotOpened::ShuttingDown => respond::shutting_down(),
            NotOpened::TooManyChannels => respond::too_many_channels(),
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
) -> Result<Opened, NotOpened> {
    let named = names.len() > 1;
    let (tx, rx) = mpsc::unbounded_channel();
    conn.open_stream(app.hub.max_backlog());
    let Some(reg) = app.hub.add_stream(names, framing, tx, conn.clone()) else {
        return Err(NotOpened::ShuttingDown);
    };
    let mut first = Vec::new();
    let mut keys = vec![ChannelKey::NONE; names.len()];
    let group = app.hub.group();
    let mut next = cursor;
    let cursor = loop {
        let now = app.now_ms();
        match app
            .store
            .subscribe(names, next, Some((group, &mut keys)), now)
        {
            Err(_) => return Err(NotOpened::TooManyChannels),
            Ok(Subscribed::Ready { msg, lost }) => {
                if lost {
                    first.push(frames::lost(framing, msg.id));
                }
                first.push(frames::message(framing, &Event::from(&*msg), named));
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
    inc(app.stats.streams(framing));
    let guard = StreamGuard {
        app: app.clone(),
        framing,
        _reg: reg,
        keys,
        _park: conn.park(),
        _flight: flight,
    };
    Ok(Opened {
        framing,
        first,
        start: Start {
            cursor,
            lost,
            expires,
        },
        rx,
        guard,
    })
}

impl Opened {
    /// An SSE or ndjson stream: a `200` whose body carries on from the replay.
    fn body(self, app: &App, conn: &Arc<ConnShared>) -> Response<Body> {
        let first = match self.framing {
            // An ndjson line is one chunk.
            Framing::Ndjson => self.first.into_iter().map(Frame::into_body).collect(),
            // An event stream is not chunked: the preamble and the replay go out as one.
            _ => {
                let preamble = self.framing.preamble();
                let len = self.first.iter().map(Frame::len).sum::<usize>() + preamble.len();
                let mut first = Vec::with_capacity(len);
                first.extend_from_slice(preamble);
                for frame in self.first {
                    first.extend_from_slice(&frame.into_body());
                }
                if first.is_empty() {
                    Vec::new()
                } else {
                    vec![first.into()]
                }
            }
        };
        let body = StreamBody::new(
            self.framing,
            first,
            self.start,
            self.rx,
            conn.clone(),
            app.limits.sse_heartbeat,
            self.guard,
        );
        respond::stream(self.framing, body)
    }

    /// A WebSocket: the `101`, with the stream left for the connection task to run
    /// once hyper has handed the connection over.
    fn websocket(
        self,
        app: &App,
        conn: &Arc<ConnShared>,
        upgrade: OnUpgrade,
        key: &[u8],
    ) -> Response<Body> {
        let ws = WebSocket {
            first: self.first.into_iter().map(Frame::into_text).collect(),
            start: self.start,
            rx: self.rx,
            conn: conn.clone(),
            heartbeat: app.limits.sse_heartbeat,
            guard: self.guard,
        };
        conn.set_upgrade(Box::pin(ws.run(upgrade)));
        websocket::switching_protocols(key)
    }
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
