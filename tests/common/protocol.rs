//! The holdfast protocol (`docs/protocol.md`) spoken with the raw client: one-shot requests,
//! publishing, polling and parking, cursors, `/stats`, and delivery assertions.

use std::net::SocketAddr;
use std::time::Duration;

use super::http::{Conn, Response};
use super::timing::wait_until;

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    Conn::open(addr).request(method, target, headers, body)
}

pub fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &[], None)
}

/// `GET path` on the public listener (path like `/sub/a?since=0&timeout=1`).
pub fn poll(public: SocketAddr, path: &str) -> Response {
    get(public, path)
}

pub fn poll_with(public: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    request(public, "GET", path, headers, None)
}

/// Publishes and returns the full response (not checked).
pub fn publish_full(
    admin: SocketAddr,
    channel: &str,
    body: &[u8],
    content_type: Option<&str>,
) -> Response {
    let headers: Vec<(&str, &str)> = content_type
        .map(|ct| vec![("Content-Type", ct)])
        .unwrap_or_default();
    request(
        admin,
        "POST",
        &format!("/pub/{channel}"),
        &headers,
        Some(body),
    )
}

/// Publishes, asserts 201, returns the message id.
pub fn publish(admin: SocketAddr, channel: &str, body: impl AsRef<[u8]>) -> String {
    let r = publish_full(admin, channel, body.as_ref(), None);
    publish_id(&r)
}

/// Checks a publish response is 201 with a JSON string id; returns the id.
pub fn publish_id(r: &Response) -> String {
    assert_eq!(r.status, 201, "publish failed: {}", r.brief());
    let v = r.json();
    let id = v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("publish JSON has no string id: {v}"));
    id_num(id);
    id.to_string()
}

/// An id as a number (ids are decimal u64 strings).
pub fn id_num(id: &str) -> u64 {
    id.parse()
        .unwrap_or_else(|_| panic!("id {id:?} is not a decimal u64"))
}

/// `GET /stats` on the admin listener.
pub fn stats(admin: SocketAddr) -> serde_json::Value {
    let r = get(admin, "/stats");
    assert_eq!(r.status, 200, "/stats: {}", r.brief());
    r.json()
}

/// One integer field of `/stats`.
pub fn stat(admin: SocketAddr, field: &str) -> u64 {
    let v = stats(admin);
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("/stats field {field} missing or not an integer: {v}"))
}

/// Waits until `/stats` `field` == `want`; panics with the last value otherwise.
pub fn wait_stat(admin: SocketAddr, field: &str, want: u64, timeout: Duration) {
    let mut last = u64::MAX;
    let ok = wait_until(
        || {
            last = stat(admin, field);
            last == want
        },
        timeout,
    );
    assert!(
        ok,
        "/stats {field} did not reach {want} within {timeout:?} (last {last})"
    );
}

/// Opens a connection and sends `GET path` without reading: a poll to be parked.
pub fn park(public: SocketAddr, path: &str) -> Conn {
    let mut c = Conn::open(public);
    c.send_request("GET", path, &[], None);
    c
}

/// A cursor for `channel` "as of now": a short poll without cursor must answer 204 and
/// its `Message-Id` is the cursor to continue from.
pub fn cursor_now(public: SocketAddr, channel: &str) -> String {
    let r = poll(public, &format!("/sub/{channel}?timeout=0"));
    assert_eq!(r.status, 204, "short poll without cursor: {}", r.brief());
    let id = r.message_id();
    id_num(&id);
    id
}

/// Asserts a 200 delivery of `body` on `channel` and returns its Message-Id.
pub fn assert_delivery(r: &Response, channel: &str, body: &[u8]) -> String {
    assert_eq!(r.status, 200, "expected a message: {}", r.brief());
    assert_eq!(
        r.header("channel"),
        Some(channel),
        "Channel header: {}",
        r.brief()
    );
    assert_eq!(
        r.body,
        body,
        "payload differs: got {:?}, want {:?}",
        r.body_str(),
        String::from_utf8_lossy(body)
    );
    let id = r.message_id();
    id_num(&id);
    id
}

/// A server set up for private channels and CORS, and what a subscriber then sends: an
/// HMAC key file in a temp dir, an HS256 token granting `channels` for ten minutes,
/// and an allowed origin (the memory tests, fanout.rs and sse_fanout.rs).
pub struct PrivateSubscriber {
    /// Keeps the key file while the server runs.
    _dir: super::nginx::TempDir,
    key: String,
    bearer: String,
}

impl PrivateSubscriber {
    pub const ORIGIN: &'static str = "http://127.0.0.2:8000";

    pub fn new(tag: &str, channels: &[&str]) -> PrivateSubscriber {
        let dir = super::nginx::TempDir::new(tag);
        let secret = "a test secret of at least 32 bytes, for HS256";
        let key = dir.path.join("subscribe.key");
        std::fs::write(&key, secret).expect("write the key");
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
            + 600;
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"exp": exp, "channels": channels}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("HMAC key"),
        )
        .expect("sign the token");
        PrivateSubscriber {
            key: key.display().to_string(),
            bearer: format!("Bearer {token}"),
            _dir: dir,
        }
    }

    /// The server's flags: `--subscribe-key` and `--allow-origin`.
    pub fn flags(&self) -> [&str; 4] {
        ["--subscribe-key", &self.key, "--allow-origin", Self::ORIGIN]
    }

    /// A subscriber's headers: the token and the allowed origin.
    pub fn headers(&self) -> [(&str, &str); 2] {
        [("Authorization", &self.bearer), ("Origin", Self::ORIGIN)]
    }
}
