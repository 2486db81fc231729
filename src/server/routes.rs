//! Routes and handlers: which request goes where (`docs/protocol.md` lists them), and
//! what each handler answers. Public listener: `/sub/…` and `/health`; admin listener:
//! `/pub/…` (publish, info, delete), `/stats`, `/metrics`, `/health`.
//!
//! A handler renders its response into the worker's scratch buffer and returns an
//! [`Outcome`]; `requests.rs` writes it. A subscribe that waits hands the connection
//! to `deliver.rs` (parked or streaming) and returns [`Outcome::Parked`].

use std::io::Write;

use bytes::Bytes;
use holdfast::auth::{find_token, Denied, TokenError};
use holdfast::http::parse::{Method, Request};
use holdfast::http::respond;
use holdfast::stats::inc;
use holdfast::store::{valid_channel_name, Cursor, Message, PublishError, Subscribed};
use holdfast::stream::websocket::{self, BadUpgrade};
use holdfast::stream::{Asks, Event, Framing};
use holdfast::subscribe;

use super::backplane::{Job, Reply};
use super::conn::{Expiry, Input};
use super::worker::{Shared, Worker};

/// What handling one request left to do.
pub enum Outcome {
    /// A response is rendered in `Worker::out` (plus an optional shared payload).
    Respond { payload: Option<Bytes>, close: bool },
    /// The request parked; nothing to write now.
    Parked,
    /// Cluster mode: the request went to the backplane and stays in the buffer; it is
    /// handled again with the reply (`Worker::reply`).
    Deferred,
    /// The request becomes a stream: its head and replay are rendered in `Worker::out`,
    /// the store registered it on `channels` channels (keys in `Worker::keys`).
    /// `requests.rs` writes and links it once the connection's buffers are back in
    /// their slot, so the bytes queue behind any earlier response still unsent.
    Stream(StreamStart),
}

/// A stream about to start (see [`Outcome::Stream`]).
pub struct StreamStart {
    pub framing: Framing,
    pub channels: usize,
    /// The newest id already written (replayed) or skipped.
    pub cursor: u64,
    /// A gap is known: announce it before the next message.
    pub lost: bool,
    /// Its subscriber token's expiry: the stream ends then.
    pub expiry: Expiry,
}

/// The CORS header lines for allowed origin `origin` (empty for 0 or without
/// `--allow-origin`). A free function, so a caller can hold them while writing into
/// another field of the worker.
pub(super) fn cors_lines(shared: &Shared, origin: u32) -> &[u8] {
    match &shared.cors {
        Some(c) if origin != 0 => c.lines(origin),
        _ => b"",
    }
}

impl Worker {
    /// Routes one complete request to its handler.
    pub(super) fn handle(&mut self, key: usize, req: &Request<'_>, body: &[u8]) -> Outcome {
        self.out.clear();
        let admin = self.conns[key].is_admin();
        let path = req.path;
        let m = req.method;
        self.origin = match &self.shared.cors {
            Some(c) if !admin => c.lookup(req.origin),
            _ => 0,
        };
        if path == b"/health" {
            return match m {
                Method::Get | Method::Head => match &self.shared.backplane {
                    // A node that cannot deliver cross-node messages (or publish) asks
                    // the balancer to route around it.
                    Some(bp) if !bp.up() => self.unavailable(req, "backplane down\n"),
                    _ => self.text(req, 200, "ok\n"),
                },
                _ => self.not_allowed(req, b"GET, HEAD"),
            };
        }
        if admin {
            if let Some(t) = &self.shared.admin_token {
                if !t.allows(req.authorization) {
                    return self.respond(
                        req,
                        401,
                        &[("WWW-Authenticate", b"Bearer realm=\"holdfast admin\"")],
                        Some(b"text/plain; charset=utf-8"),
                        b"admin token required\n",
                    );
                }
            }
        }
        if !admin {
            if let Some(chs) = path.strip_prefix(b"/sub/") {
                return match m {
                    Method::Get => self.subscribe(key, req, chs),
                    Method::Options if self.shared.cors.is_some() => self.preflight(req),
                    _ => self.not_allowed(req, b"GET"),
                };
            }
            return self.text(req, 404, "not found\n");
        }
        if let Some(ch) = path.strip_prefix(b"/pub/") {
            if !valid_channel_name(ch) {
                return self.text(req, 400, "invalid channel name\n");
            }
            // Valid names are ASCII.
            let ch = std::str::from_utf8(ch).unwrap_or_default();
            return match m {
                Method::Post | Method::Put => self.publish(key, req, ch, body),
                Method::Get | Method::Head => self.channel_info(req, ch),
                Method::Delete => self.delete(key, req, ch),
                Method::Options | Method::Other => {
                    self.not_allowed(req, b"GET, HEAD, POST, PUT, DELETE")
                }
            };
        }
        match (path, m) {
            (b"/stats" | b"/metrics", Method::Get | Method::Head) => {
                let snap = self.shared.snapshot();
                let mut body = Vec::with_capacity(1024);
                if path == b"/stats" {
                    snap.json(&mut body);
                    self.respond(req, 200, &[], Some(b"application/json"), &body)
                } else {
                    snap.prometheus(&mut body);
                    self.respond(req, 200, &[], Some(b"text/plain; version=0.0.4"), &body)
                }
            }
            (b"/stats" | b"/metrics", _) => self.not_allowed(req, b"GET, HEAD"),
            _ => self.text(req, 404, "not found\n"),
        }
    }

    fn respond(
        &mut self,
        req: &Request<'_>,
        code: u16,
        headers: &[(&str, &[u8])],
        ct: Option<&[u8]>,
        body: &[u8],
    ) -> Outcome {
        self.out.clear();
        respond::simple_with(
            &mut self.out,
            code,
            &self.date,
            !req.keep_alive,
            headers,
            cors_lines(&self.shared, self.origin),
            ct,
            body,
        );
        if req.method == Method::Head {
            self.out.truncate(self.out.len() - body.len());
        }
        Outcome::Respond {
            payload: None,
            close: false,
        }
    }

    fn text(&mut self, req: &Request<'_>, code: u16, body: &str) -> Outcome {
        self.respond(
            req,
            code,
            &[],
            Some(b"text/plain; charset=utf-8"),
            body.as_bytes(),
        )
    }

    /// Renders the `503` + `Retry-After: 1` (then close) of a server shutting down;
    /// `cors` as for [`respond::simple_with`].
    pub(super) fn render_shutting_down(&mut self, cors: &[u8]) {
        self.out.clear();
        respond::simple_with(
            &mut self.out,
            503,
            &self.date,
            true,
            &[("Retry-After", b"1")],
            cors,
            Some(b"text/plain; charset=utf-8"),
            b"server shutting down\n",
        );
    }

    fn shutting_down_response(&mut self) -> Outcome {
        let shared = self.shared.clone();
        self.render_shutting_down(cors_lines(&shared, self.origin));
        Outcome::Respond {
            payload: None,
            close: true,
        }
    }

    /// `503` + `Retry-After: 1` with `why` (the connection stays open).
    fn unavailable(&mut self, req: &Request<'_>, why: &str) -> Outcome {
        self.respond(
            req,
            503,
            &[("Retry-After", b"1")],
            Some(b"text/plain; charset=utf-8"),
            why.as_bytes(),
        )
    }

    /// Redis did not answer in time (or refused): `503`; a publish may still have been
    /// carried out (`docs/protocol.md`).
    fn backplane_unavailable(&mut self, req: &Request<'_>) -> Outcome {
        self.unavailable(req, "backplane unavailable\n")
    }

    /// `--max-channels` refused a new channel: 503 (it may clear as channels expire).
    fn too_many_channels(&mut self, req: &Request<'_>) -> Outcome {
        let body = b"channel limit reached (--max-channels)\n";
        self.respond(
            req,
            503,
            &[("Retry-After", b"1")],
            Some(b"text/plain; charset=utf-8"),
            body,
        )
    }

    fn not_allowed(&mut self, req: &Request<'_>, allow: &[u8]) -> Outcome {
        let body = b"method not allowed\n";
        self.respond(
            req,
            405,
            &[("Allow", allow)],
            Some(b"text/plain; charset=utf-8"),
            body,
        )
    }

    fn publish(&mut self, key: usize, req: &Request<'_>, ch: &str, body: &[u8]) -> Outcome {
        let ct = req
            .content_type
            .filter(|c| !c.is_empty())
            .map(Bytes::copy_from_slice);
        if self.shared.backplane.is_some() {
            return match self.reply.take() {
                None => {
                    let payload = Bytes::copy_from_slice(body);
                    self.defer_to_backplane(key, |to| Job::Publish {
                        channel: ch.into(),
                        content_type: ct,
                        payload,
                        to,
                    });
                    Outcome::Deferred
                }
                Some(Reply::Published {
                    id,
                    nodes,
                    buffered,
                }) => {
                    let here = self
                        .shared
                        .store
                        .info(ch, self.now)
                        .map_or(0, |i| i.subscribers);
                    let mut json = Vec::with_capacity(160);
                    json.extend_from_slice(b"{\"id\":\"");
                    let _ = write!(json, "{id}\",\"channel\":");
                    respond::json_str(&mut json, ch);
                    let _ = write!(
                        json,
                        ",\"subscribers\":{here},\"nodes\":{nodes},\"buffered\":{buffered}}}"
                    );
                    self.respond(req, 201, &[], Some(b"application/json"), &json)
                }
                Some(_) => self.backplane_unavailable(req),
            };
        }
        let payload = Bytes::copy_from_slice(body);
        let info = match self.shared.store.publish(ch, ct, payload, self.now) {
            Ok(info) => info,
            Err(PublishError::TooManyChannels) => return self.too_many_channels(req),
            Err(PublishError::Closed) => return self.shutting_down_response(),
        };
        let mut json = Vec::with_capacity(128);
        json.extend_from_slice(b"{\"id\":\"");
        let _ = write!(json, "{}\",\"channel\":", info.id);
        respond::json_str(&mut json, ch);
        let _ = write!(
            json,
            ",\"subscribers\":{},\"buffered\":{}}}",
            info.subscribers, info.buffered
        );
        self.respond(req, 201, &[], Some(b"application/json"), &json)
    }

    fn channel_info(&mut self, req: &Request<'_>, ch: &str) -> Outcome {
        let Some(i) = self.shared.store.info(ch, self.now) else {
            return self.text(req, 404, "no such channel\n");
        };
        let mut json = Vec::with_capacity(192);
        json.extend_from_slice(b"{\"channel\":");
        respond::json_str(&mut json, ch);
        let _ = write!(
            json,
            ",\"buffered\":{},\"bytes\":{},\"subscribers\":{},\"first_id\":\"{}\",\"last_id\":\"{}\",\"evicted_max\":\"{}\"}}",
            i.buffered, i.bytes, i.subscribers, i.first_id, i.last_id, i.evicted_max
        );
        self.respond(req, 200, &[], Some(b"application/json"), &json)
    }

    fn delete(&mut self, key: usize, req: &Request<'_>, ch: &str) -> Outcome {
        if self.shared.backplane.is_some() {
            return match self.reply.take() {
                None => {
                    self.defer_to_backplane(key, |to| Job::Delete {
                        channel: ch.into(),
                        to,
                    });
                    Outcome::Deferred
                }
                Some(Reply::Deleted { existed: true }) => self.respond(req, 204, &[], None, b""),
                Some(Reply::Deleted { existed: false }) => self.text(req, 404, "no such channel\n"),
                Some(_) => self.backplane_unavailable(req),
            };
        }
        if !self.shared.store.delete(ch) {
            return self.text(req, 404, "no such channel\n");
        }
        self.respond(req, 204, &[], None, b"")
    }

    /// A CORS preflight for `/sub/…`: the methods and headers a subscriber may use,
    /// for an allowed origin; `403` for any other.
    fn preflight(&mut self, req: &Request<'_>) -> Outcome {
        if self.origin == 0 {
            return self.origin_not_allowed(req);
        }
        let lines = match &self.shared.cors {
            Some(c) => c.preflight_lines(self.origin),
            None => b"",
        };
        self.out.clear();
        respond::simple_with(
            &mut self.out,
            204,
            &self.date,
            !req.keep_alive,
            &[("Allow", b"GET, OPTIONS")],
            lines,
            None,
            b"",
        );
        Outcome::Respond {
            payload: None,
            close: false,
        }
    }

    /// `403` for a preflight or WebSocket upgrade from an origin not listed.
    fn origin_not_allowed(&mut self, req: &Request<'_>) -> Outcome {
        self.text(req, 403, "origin not allowed\n")
    }

    /// `401` / `403` for a subscribe whose token does not let it in.
    fn token_refused(&mut self, req: &Request<'_>, why: &Denied) -> Outcome {
        inc(&self.shared.stats.token_refused);
        let challenge = why.www_authenticate();
        self.respond(
            req,
            why.status(),
            &[("WWW-Authenticate", challenge.as_bytes())],
            Some(b"text/plain; charset=utf-8"),
            why.body().as_bytes(),
        )
    }

    fn subscribe(&mut self, key: usize, req: &Request<'_>, list: &[u8]) -> Outcome {
        let sub = match subscribe::parse(list, req.query, req.last_event_id, self.shared.holds) {
            Ok(s) => s,
            Err(why) => return self.text(req, 400, why),
        };
        let names = sub.names();
        if req.websocket {
            if let Err(bad) = websocket::check_upgrade(
                req.method == Method::Get,
                req.minor == 1,
                req.connection_upgrade,
                req.ws_key,
                req.ws_version,
            ) {
                let version: &[(&str, &[u8])] = match bad {
                    BadUpgrade::Version => &[("Sec-WebSocket-Version", websocket::VERSION)],
                    _ => &[],
                };
                return self.respond(
                    req,
                    bad.status(),
                    version,
                    Some(b"text/plain; charset=utf-8"),
                    bad.body().as_bytes(),
                );
            }
            // A browser opens a WebSocket from any page, with its cookies (cross-site
            // WebSocket hijacking): with --allow-origin, only listed origins may.
            if self.shared.cors.is_some() && req.origin.is_some() && self.origin == 0 {
                return self.origin_not_allowed(req);
            }
        }
        // Private channels: the token is checked once, here, before anything waits;
        // the connection keeps only its expiry.
        let mut expiry = Expiry::NONE;
        let mut token_left_ms = u64::MAX;
        if let Some(k) = &self.shared.subscribe_key {
            let token = find_token(
                req.authorization,
                req.query,
                req.cookie,
                &self.shared.token_cookie,
            );
            match k.check(token, names) {
                Ok(exp) => {
                    expiry = Expiry::at(exp);
                    token_left_ms = expiry.left_ms(self.unix_ms).unwrap_or(0);
                }
                Err(why) => {
                    self.reply = None;
                    return self.token_refused(req, &why);
                }
            }
        }
        // A client that has closed its side, or a server shutting down, gets an answer
        // now: no stream, no parking.
        let may_wait = self.shutting_down.is_none() && !self.conns[key].input_ended();
        // A token accepted within the leeway but already past `exp` may read what is
        // buffered, never wait: a stream or an empty poll would end at once and the
        // client would come straight back, so it is told now.
        let expired = self.shared.subscribe_key.is_some() && token_left_ms == 0;
        let asks = Asks {
            event_stream: req.wants_sse,
            ndjson: req.wants_ndjson || sub.ndjson,
            websocket: req.websocket,
        };
        let stream = Framing::for_request(asks).filter(|_| may_wait);
        if stream.is_some() && expired {
            return self.token_refused(req, &Denied::Token(TokenError::Expired));
        }
        if let Some(framing) = stream {
            return self.open_stream(key, req, framing, names, sub.cursor, expiry);
        }
        // A long-poll never outlives its token.
        let hold_ms = (sub.timeout.as_millis() as u64).min(token_left_ms);
        let park = hold_ms > 0 && may_wait;
        let mut cursor = sub.cursor;
        let mut known_lost = false;
        let fetched = self.reply.is_some();
        match self.reply.take() {
            None => {}
            // Read from Redis: the oldest newer message, or where to wait from.
            Some(Reply::Fetched {
                mut messages,
                lost,
                cursor: from,
            }) => {
                if !messages.is_empty() {
                    let msg = messages.swap_remove(0);
                    return self.deliver_now(req, &msg, lost);
                }
                cursor = Cursor::Since(from);
                known_lost = lost;
            }
            Some(_) => return self.backplane_unavailable(req),
        }
        let keys = &mut self.keys[..names.len()];
        let r = self.shared.store.subscribe(
            names,
            cursor,
            park.then_some((self.group, keys)),
            self.now,
        );
        let Ok(r) = r else {
            return self.too_many_channels(req);
        };
        match r {
            Subscribed::Fetch if !fetched => {
                // This node cannot vouch for the cursor on these channels: ask Redis
                // (and subscribe there), then handle the request again.
                self.defer_fetch(key, names, sub.cursor, false)
            }
            // Still not vouched for right after a read (the node dropped the channels
            // meanwhile): the client retries.
            Subscribed::Fetch => self.backplane_unavailable(req),
            Subscribed::Ready { msg, lost } => self.deliver_now(req, &msg, lost || known_lost),
            Subscribed::Waiting { cursor, lost } if park => {
                let lost = lost || known_lost;
                self.link_waiter(key, names.len(), cursor);
                self.step(
                    key,
                    Input::Parked {
                        hold_ms,
                        lost,
                        close_after: !req.keep_alive,
                        origin: self.origin,
                    },
                );
                inc(&self.shared.stats.parked);
                Outcome::Parked
            }
            Subscribed::Waiting { cursor, .. } => {
                if self.shutting_down.is_some() {
                    return self.shutting_down_response();
                }
                if expired {
                    return self.token_refused(req, &Denied::Token(TokenError::Expired));
                }
                inc(&self.shared.stats.poll_timeouts);
                self.out.clear();
                respond::timeout(
                    &mut self.out,
                    cursor,
                    &self.date,
                    !req.keep_alive,
                    cors_lines(&self.shared, self.origin),
                );
                Outcome::Respond {
                    payload: None,
                    close: false,
                }
            }
        }
    }

    /// Cluster mode: the subscribe at the front of `key` waits for a read of `names`
    /// from Redis (`all`: every message newer than `cursor`, for a stream's replay).
    fn defer_fetch(&mut self, key: usize, names: &[&str], cursor: Cursor, all: bool) -> Outcome {
        let names = names.iter().map(|n| Box::from(*n)).collect();
        self.defer_to_backplane(key, |to| Job::Fetch {
            names,
            cursor,
            all,
            to,
        });
        Outcome::Deferred
    }

    /// A long-poll answered at once with `msg`.
    fn deliver_now(&mut self, req: &Request<'_>, msg: &Message, lost: bool) -> Outcome {
        self.out.clear();
        respond::message_head(
            &mut self.out,
            &Event::from(msg),
            msg.content_type.as_deref(),
            &self.date,
        );
        self.out
            .extend_from_slice(cors_lines(&self.shared, self.origin));
        self.out
            .extend_from_slice(respond::message_tail(lost, !req.keep_alive));
        inc(&self.shared.stats.delivered);
        Outcome::Respond {
            payload: Some(msg.payload.clone()),
            close: false,
        }
    }

    /// Turns the request into a stream: renders the head and every buffered message
    /// newer than the cursor, and has the store register it; `Worker::start_stream`
    /// writes that and links the connection like a parked poll.
    fn open_stream(
        &mut self,
        key: usize,
        req: &Request<'_>,
        framing: Framing,
        names: &[&str],
        mut cursor: Cursor,
        expiry: Expiry,
    ) -> Outcome {
        self.out.clear();
        let cors = match framing {
            // CORS does not apply to a WebSocket (its origin was checked above).
            Framing::WebSocket => &b""[..],
            _ => cors_lines(&self.shared, self.origin),
        };
        framing.head(
            &mut self.out,
            &self.date,
            cors,
            req.ws_key.unwrap_or_default(),
        );
        let named = names.len() > 1;
        let fetched = self.reply.is_some();
        let mut known_lost = false;
        match self.reply.take() {
            None => {}
            // Cluster mode: the replay read from Redis, then the cache from where it ends.
            Some(Reply::Fetched {
                messages,
                lost,
                cursor: from,
            }) => {
                let mut last = from;
                for (i, msg) in messages.iter().enumerate() {
                    if lost && i == 0 {
                        framing.lost(&mut self.out, msg.id);
                    }
                    framing.message(&mut self.out, &Event::from(&**msg), named);
                    inc(&self.shared.stats.delivered);
                    last = msg.id;
                }
                // With nothing to replay, the gap is told with the next message.
                known_lost = lost && messages.is_empty();
                cursor = Cursor::Since(last);
            }
            Some(_) => return self.backplane_unavailable(req),
        }
        let (last, lost) = loop {
            let keys = &mut self.keys[..names.len()];
            match self
                .shared
                .store
                .subscribe(names, cursor, Some((self.group, keys)), self.now)
            {
                Err(_) => return self.too_many_channels(req),
                Ok(Subscribed::Fetch) if !fetched => {
                    return self.defer_fetch(key, names, cursor, true);
                }
                Ok(Subscribed::Fetch) => return self.backplane_unavailable(req),
                Ok(Subscribed::Ready { msg, lost }) => {
                    if lost {
                        framing.lost(&mut self.out, msg.id);
                    }
                    framing.message(&mut self.out, &Event::from(&*msg), named);
                    inc(&self.shared.stats.delivered);
                    cursor = Cursor::Since(msg.id);
                }
                // Nothing newer: the store registered us on every channel. A gap seen
                // now (a channel freed after losing messages newer than the cursor)
                // is announced with the next message, as for a long-poll.
                Ok(Subscribed::Waiting { cursor, lost }) => break (cursor, lost || known_lost),
            }
        };
        Outcome::Stream(StreamStart {
            framing,
            channels: names.len(),
            cursor: last,
            lost,
            expiry,
        })
    }
}
