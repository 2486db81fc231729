//! The hyper service: request checks, body, routing, and the admin endpoints.
//!
//! Owns what happens to one request once hyper has parsed its head: the docs/protocol.md
//! limits hyper does not apply itself (request line over 8 KiB → `414`, headers over
//! 16 KiB or more than 64 of them → `431`, an origin-form target, not both
//! `Content-Length` and `Transfer-Encoding`), reading the body
//! (bounded by `--max-message-size` → `413`; chunked and `Expect: 100-continue` are
//! hyper's), routing by listener, path and method (`404`, `405` + `Allow`), and the
//! handlers for publish, channel info, delete, `/stats`, `/metrics` and `/health`.
//! Subscribe lives in [`subscribe`]. On the public listener, an allowed `Origin`
//! (`--allow-origin`) adds its CORS headers to whatever the route answers but a
//! WebSocket's `101` (CORS does not apply to WebSockets; the subscribe handler checks
//! their `Origin` itself), and `OPTIONS /sub/…` is a preflight ([`cors`]).
//!
//! Like holdfast, the body is read before routing, so a request's body never lingers in
//! the connection to be mistaken for the next request. A request that asked to close
//! (`Connection: close`, or HTTP/1.0, which hyper answers as HTTP/1.0) gets
//! `Connection: close`; refused heads and bodies get it too.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use holdfast::http::parse::{has_token, MAX_HEADERS, MAX_HEADERS_BYTES, MAX_REQUEST_LINE};
use holdfast::http::respond::json_str;
use holdfast::store::{valid_channel_name, PublishError};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap};
use hyper::http::request::Parts;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Version};

use crate::cors;
use crate::guard_io::{ConnShared, InFlight};
use crate::respond::{self, Body};
use crate::server::App;
use crate::subscribe;

/// The service for one connection. Each call marks the request as started for the
/// socket wrapper (see `guard_io`) before anything else happens.
pub fn service(
    app: Arc<App>,
    conn: Arc<ConnShared>,
    admin: bool,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> {
    hyper::service::service_fn(move |req| {
        let flight = conn.begin();
        handle(app.clone(), conn.clone(), flight, admin, req)
    })
}

async fn handle(
    app: Arc<App>,
    conn: Arc<ConnShared>,
    flight: InFlight,
    admin: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    if let Some(refused) = check_head(&parts) {
        return Ok(respond::closing(refused));
    }
    let body = match read_body(&app, body).await {
        Ok(b) => b,
        Err(refused) => return Ok(respond::closing(refused)),
    };
    // CORS: the allowed origin (if any) this public request comes from; whatever the
    // route answers carries its headers, a parked poll's later answer and a stream's
    // head included. The admin listener never sends them.
    let cors = app.cors.as_ref().filter(|_| !admin);
    let origin = cors.map_or(0, |c| c.lookup(cors::origin(&parts.headers)));
    let mut resp = route(&app, &conn, flight, admin, origin, &mut parts, body).await;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The connection is the WebSocket's now: no CORS, no `Connection: close`.
        return Ok(resp);
    }
    if let Some(c) = cors {
        c.add(origin, resp.headers_mut());
    }
    Ok(if wants_close(&parts) {
        respond::closing(resp)
    } else {
        resp
    })
}

/// Does the client want the connection closed after this request?
fn wants_close(parts: &Parts) -> bool {
    parts.version == Version::HTTP_10
        || parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"close"))
}

/// The head limits of docs/protocol.md that hyper leaves to us.
fn check_head(parts: &Parts) -> Option<Response<Body>> {
    let uri = &parts.uri;
    if uri.authority().is_some() || !uri.path().starts_with('/') {
        return Some(respond::text(
            StatusCode::BAD_REQUEST,
            "request target must be an absolute path\n",
        ));
    }
    let target = uri
        .path_and_query()
        .map_or(uri.path().len(), |pq| pq.as_str().len());
    // "METHOD SP target SP HTTP/1.x"
    if parts.method.as_str().len() + target + 10 > MAX_REQUEST_LINE {
        return Some(respond::text(
            StatusCode::URI_TOO_LONG,
            "request line too long\n",
        ));
    }
    // Both framings at once is how request smuggling starts; hyper would let chunked win
    // (and close), holdfast refuses outright, and so do we.
    if parts.headers.contains_key(header::TRANSFER_ENCODING)
        && parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        return Some(respond::text(
            StatusCode::BAD_REQUEST,
            "both Content-Length and Transfer-Encoding given\n",
        ));
    }
    if parts.headers.len() > MAX_HEADERS || header_bytes(&parts.headers) > MAX_HEADERS_BYTES {
        return Some(respond::text(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large\n",
        ));
    }
    None
}

/// Size of the header section as sent (`Name: value\r\n` per field).
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// The whole request body, or the response refusing it.
async fn read_body(app: &App, body: Incoming) -> Result<Bytes, Response<Body>> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let max = app.limits.max_message_size;
    let too_large = || respond::text(StatusCode::PAYLOAD_TOO_LARGE, "message too large\n");
    // A declared length over the limit is refused before reading (and before hyper
    // sends `100 Continue`, which it does on the first read).
    if body.size_hint().lower() > max as u64 {
        return Err(too_large());
    }
    // The body must arrive as promptly as a head would.
    let read = tokio::time::timeout(app.limits.header_timeout, Limited::new(body, max).collect());
    match read.await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(_)) => Err(respond::text(
            StatusCode::BAD_REQUEST,
            "malformed request body\n",
        )),
        Err(_) => Err(respond::text(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time\n",
        )),
    }
}

/// `origin`: the request's allowed CORS origin (`CorsHeaders::lookup`; 0: none).
async fn route(
    app: &Arc<App>,
    conn: &Arc<ConnShared>,
    flight: InFlight,
    admin: bool,
    origin: u32,
    parts: &mut Parts,
    body: Bytes,
) -> Response<Body> {
    let path = parts.uri.path();
    let get_or_head = matches!(parts.method, Method::GET | Method::HEAD);
    if path == "/health" {
        return if get_or_head {
            respond::text(StatusCode::OK, "ok\n")
        } else {
            respond::not_allowed("GET, HEAD")
        };
    }
    if let Some(t) = app.admin_token.as_ref().filter(|_| admin) {
        let auth = parts.headers.get(hyper::header::AUTHORIZATION);
        if !t.allows(auth.map(|v| v.as_bytes())) {
            return respond::admin_token_required();
        }
    }
    if !admin {
        return match path.strip_prefix("/sub/") {
            Some(list) if parts.method == Method::GET => {
                // hyper's handle on the connection, for a WebSocket's upgrade.
                let upgrade = parts.extensions.remove::<OnUpgrade>();
                subscribe::handle(app, conn, flight, origin, parts, list, upgrade).await
            }
            // A CORS preflight; without `--allow-origin`, OPTIONS is a method like any.
            Some(_) if parts.method == Method::OPTIONS => match &app.cors {
                Some(c) => c.preflight(origin),
                None => respond::not_allowed("GET"),
            },
            Some(_) => respond::not_allowed("GET"),
            None => respond::text(StatusCode::NOT_FOUND, "not found\n"),
        };
    }
    if let Some(ch) = path.strip_prefix("/pub/") {
        if !valid_channel_name(ch.as_bytes()) {
            return respond::text(StatusCode::BAD_REQUEST, "invalid channel name\n");
        }
        return match parts.method {
            Method::POST | Method::PUT => publish(app, parts, ch, body),
            Method::GET | Method::HEAD => channel_info(app, ch),
            Method::DELETE => delete(app, ch),
            _ => respond::not_allowed("GET, HEAD, POST, PUT, DELETE"),
        };
    }
    match path {
        "/stats" | "/metrics" if get_or_head => {
            let snap = app.snapshot();
            let mut out = Vec::with_capacity(1024);
            if path == "/stats" {
                snap.json(&mut out);
                respond::json(StatusCode::OK, out)
            } else {
                snap.prometheus(&mut out);
                respond::with_body(
                    StatusCode::OK,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    Body::full(out),
                )
            }
        }
        "/stats" | "/metrics" => respond::not_allowed("GET, HEAD"),
        _ => respond::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn publish(app: &App, parts: &Parts, ch: &str, payload: Bytes) -> Response<Body> {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty())
        .map(Bytes::copy_from_slice);
    // The store hands the message to the hub (its notifier) under its lock.
    let info = match app.store.publish(ch, content_type, payload, app.now_ms()) {
        Ok(info) => info,
        Err(PublishError::TooManyChannels) => return respond::too_many_channels(),
        Err(PublishError::Closed) => return respond::shutting_down(),
    };
    let mut json = Vec::with_capacity(128);
    let _ = write!(json, "{{\"id\":\"{}\",\"channel\":", info.id);
    json_str(&mut json, ch);
    let _ = write!(
        json,
        ",\"subscribers\":{},\"buffered\":{}}}",
        info.subscribers, info.buffered
    );
    respond::json(StatusCode::CREATED, json)
}

fn channel_info(app: &App, ch: &str) -> Response<Body> {
    let Some(i) = app.store.info(ch, app.now_ms()) else {
        return respond::text(StatusCode::NOT_FOUND, "no such channel\n");
    };
    let mut json = Vec::with_capacity(192);
    json.extend_from_slice(b"{\"channel\":");
    json_str(&mut json, ch);
    let _ = write!(
        json,
        ",\"buffered\":{},\"bytes\":{},\"subscribers\":{},\"first_id\":\"{}\",\"last_id\":\"{}\",\"evicted_max\":\"{}\"}}",
        i.buffered, i.bytes, i.subscribers, i.first_id, i.last_id, i.evicted_max
    );
    respond::json(StatusCode::OK, json)
}

fn delete(app: &App, ch: &str) -> Response<Body> {
    if app.store.delete(ch) {
        respond::no_content()
    } else {
        respond::text(StatusCode::NOT_FOUND, "no such channel\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(target: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri(target);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).expect("valid test request").into_parts().0
    }

    #[test]
    fn head_limits() {
        let status = |p: &Parts| check_head(p).map(|r| r.status().as_u16());
        assert_eq!(status(&head("/health", &[])), None);
        assert_eq!(status(&head("http://x/health", &[])), Some(400));
        // "GET " + target + " HTTP/1.1" is at most 8192 bytes.
        let fits = format!("/{}", "a".repeat(MAX_REQUEST_LINE - 14));
        assert_eq!(status(&head(&fits, &[])), None);
        assert_eq!(status(&head(&format!("{fits}a"), &[])), Some(414));
        let big = "v".repeat(1000);
        let names: Vec<String> = (0..65).map(|i| format!("x-h{i}")).collect();
        let h16: Vec<(&str, &str)> = names[..16]
            .iter()
            .map(|n| (n.as_str(), big.as_str()))
            .collect();
        assert_eq!(status(&head("/", &h16)), None, "16 KB of headers");
        let h17: Vec<(&str, &str)> = names[..17]
            .iter()
            .map(|n| (n.as_str(), big.as_str()))
            .collect();
        assert_eq!(status(&head("/", &h17)), Some(431), "17 KB of headers");
        let h64: Vec<(&str, &str)> = names[..64].iter().map(|n| (n.as_str(), "v")).collect();
        assert_eq!(status(&head("/", &h64)), None, "64 fields");
        let h65: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        assert_eq!(status(&head("/", &h65)), Some(431), "65 fields");
        let both = [("content-length", "3"), ("transfer-encoding", "chunked")];
        assert_eq!(status(&head("/", &both)), Some(400));
    }
}
