//! A real browser on another origin (docs/protocol.md, "Browsers on other origins
//! (CORS)" and "Private channels: subscriber tokens"): headless Chromium loads
//! `tests/assets/cors-client.html` from `http://127.0.0.2:PORT`, a tiny static server
//! (`common::chromium::PageServer`), while holdfast's public listener is
//! `http://127.0.0.1:PORT` — another origin, so every request the page makes to
//! holdfast is cross-origin and the browser enforces CORS on it. holdfast runs with
//! `--subscribe-key` (an HMAC secret); the test mints a JWT for the channel and hands it
//! to the page in the URL's fragment.
//!
//! - Allowed (`--allow-origin http://127.0.0.2:PORT`, the page's exact origin): the page
//!   subscribes with an `EventSource` (token in `?token=`) and a `fetch()` long-poll
//!   loop (token in `Authorization: Bearer`, which makes Chromium preflight every poll)
//!   that resumes from the `Message-Id` header it reads, which it can only if holdfast
//!   exposes it. The test publishes in batches; both paths must report every message
//!   once, in order, with the published ids. Before subscribing, the page checks that a
//!   bad token's `401` and an ungranted channel's `403` are readable (they carry the
//!   CORS headers too), and that a header the preflight does not allow is refused by
//!   the browser (so it did preflight).
//! - Refused (holdfast allows only `http://127.0.0.3:1`): a preflighted fetch and a
//!   simple one both reject with a `TypeError`, and an `EventSource` errors without
//!   delivering the message holdfast did send it (its `delivered` counter shows the
//!   answers went out: the browser withheld them).
//!
//! The page writes its outcome into `#result`, which Chromium's `--dump-dom` prints
//! once the page has loaded; the page holds its load event on an image its server
//! answers only once the page has said it is done.
//!
//! Chromium must be installed (`apt-get install chromium`; `.ci/run` does): without it
//! the test fails saying so. No Chromium flag beyond those `common::chromium` gives
//! every browser test is needed (and none that weakens CORS): 127.0.0.2 and 127.0.0.1
//! are both loopback, so Private Network Access (which guards requests from a less
//! private address space to a more private one) does not apply, and a plain-http page on
//! an IP address loads as is.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::chromium::{assert_sse_and_polled, subscribers, Page, PageServer, Run};
use common::nginx::TempDir;
use common::protocol::{publish, stat};
use common::server::Server;

const SEC: Duration = Duration::from_secs(1);
const PAGE: &[u8] = include_bytes!("assets/cors-client.html");
const CHANNEL: &str = "cors.page";
/// Messages in all, published in four batches.
const N: usize = 40;
const BATCH: usize = N / 4;
/// An origin that is not the page's, for the holdfast that must refuse it.
const OTHER_ORIGIN: &str = "http://127.0.0.3:1";
/// The HMAC secret in `--subscribe-key` (at least 32 bytes).
const SECRET: &str = "browser_cors test secret, at least 32 bytes long";

// ---------------------------------------------------------------------------------
// The test's side
// ---------------------------------------------------------------------------------

/// The key file and a token granting [`CHANNEL`] for two minutes.
fn key_and_token(dir: &TempDir) -> (String, String) {
    let key = dir.path.join("subscribe.key");
    std::fs::write(&key, SECRET).expect("write the key");
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 120;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "browser", "channels": [CHANNEL], "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("HMAC key"),
    )
    .expect("sign the token");
    (key.display().to_string(), token)
}

/// The page's URL, its parameters in the fragment.
fn page_url(page: &PageServer, mode: &str, holdfast: SocketAddr, token: &str) -> String {
    format!(
        "{}/cors-client.html#mode={mode}&hf=http://{holdfast}&ch={CHANNEL}&n={N}\
         &batch={BATCH}&token={token}",
        page.origin()
    )
}

/// Serves the page at `/cors-client.html`; its gate `/hold` is the image that holds its
/// load event.
fn page_server() -> PageServer {
    PageServer::start(Page {
        path: "/cors-client.html",
        html: PAGE,
        gates: "/hold",
        gate_limit: 120 * SEC,
    })
}

/// Waits for the page to finish, lets it load, and returns its `#result`.
fn finish(mut run: Run) -> serde_json::Value {
    run.wait("the page to finish", || false);
    let result = run.result("/hold", 20 * SEC);
    eprintln!("page result: {result}");
    assert!(
        result["error"].is_null(),
        "page failed: {result}{}",
        run.context()
    );
    result
}

#[test]
fn a_page_on_an_allowed_origin_subscribes_cross_origin_with_a_token() {
    let dir = TempDir::new("browser-cors");
    let (key, token) = key_and_token(&dir);
    let page = page_server();
    let origin = page.origin();
    let s = Server::start(&[
        "--buffer-messages",
        "64",
        "--subscribe-key",
        &key,
        "--allow-origin",
        &origin,
    ]);
    let url = page_url(&page, "allowed", s.public, &token);
    let run = Run::start(&s, &page, &url, "chromium-cors");

    // Batch 1 once the stream and the long-poll are both waiting; each further batch
    // once the page has the previous one on both paths.
    let mut published = Vec::new();
    for k in 0..N / BATCH {
        if k == 0 {
            run.wait("the page to subscribe twice (stream and long-poll)", || {
                subscribers(s.admin, CHANNEL) == 2
            });
        } else {
            run.wait(&format!("the page to have batch {k}"), || {
                page.marked(&format!("got{k}"))
            });
        }
        if page.marked("done") {
            break;
        }
        for i in k * BATCH..(k + 1) * BATCH {
            published.push(publish(s.admin, CHANNEL, format!("m{i}")));
        }
    }
    let refused_before_end = stat(s.admin, "token_refused");
    let result = finish(run);

    // The refusals were readable: status and body (one line) reached the page.
    let body = |what: &str| result[what]["body"].as_str().unwrap_or_default().trim_end();
    assert_eq!(result["badToken"]["status"], 401, "{result}");
    assert_eq!(body("badToken"), "malformed token", "{result}");
    assert_eq!(result["notGranted"]["status"], 403, "{result}");
    assert_eq!(
        body("notGranted"),
        format!("token does not grant channel {CHANNEL}x"),
        "{result}"
    );
    assert_eq!(refused_before_end, 2, "holdfast's token_refused: {result}");
    // A request header the preflight's answer does not list: Chromium did preflight,
    // and refused to send the request.
    let unlisted = result["unlistedHeader"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        unlisted.starts_with("TypeError"),
        "a fetch with X-Probe was not refused by the browser: {result}"
    );

    assert!(result["failed"].is_null(), "page failed: {result}");
    let want: Vec<(String, String)> = published
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("m{i}")))
        .collect();
    assert_eq!(want.len(), N);
    // Exactly once, in order, with the published ids, on both paths. The long-poll
    // loop's ids are the Message-Id headers it read (and resumed from).
    assert_sse_and_polled(&result, &want);
    for p in result["polled"].as_array().expect("polled") {
        assert_eq!(p["channel"], CHANNEL, "Channel header not readable: {p}");
    }
    assert_eq!(result["sseErrors"], 0, "{result}");
}

#[test]
fn a_page_on_an_origin_not_allowed_gets_nothing() {
    let dir = TempDir::new("browser-cors");
    let (key, token) = key_and_token(&dir);
    let page = page_server();
    // Allows one origin, not the page's.
    let s = Server::start(&["--subscribe-key", &key, "--allow-origin", OTHER_ORIGIN]);
    // What the page must not get to read, though holdfast will send it.
    let secret_id = publish(s.admin, CHANNEL, "secret");
    assert_eq!(stat(s.admin, "delivered"), 0);
    let url = page_url(&page, "refused", s.public, &token);
    let run = Run::start(&s, &page, &url, "chromium-cors");
    let result = finish(run);

    // The preflight was answered 403 without CORS headers: no GET, a TypeError.
    let err = |what: &str| {
        result[what]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        err("preflighted").starts_with("TypeError"),
        "a preflighted fetch from an origin not allowed did not reject: {result}"
    );
    // The simple request was answered (with the message), but without CORS headers the
    // browser rejects it all the same.
    assert!(
        err("simple").starts_with("TypeError"),
        "a simple fetch from an origin not allowed did not reject: {result}"
    );
    // The stream failed without an event, though it opened with the buffered message.
    assert_eq!(
        result["sse"].as_array().map(Vec::len),
        Some(0),
        "EventSource delivered across origins: {result}"
    );
    assert!(
        result["sseErrors"].as_u64().unwrap_or(0) >= 1,
        "EventSource did not error: {result}"
    );
    // holdfast did send the message (the simple poll's 200 and the stream's first
    // event): it was the browser that kept it from the page, as the protocol expects
    // ("answered as usual, without CORS headers").
    let delivered = stat(s.admin, "delivered");
    assert!(
        delivered >= 2,
        "holdfast delivered {delivered} times (message {secret_id}); expected the simple \
         poll's answer and the stream's event: {result}"
    );
    assert_eq!(stat(s.admin, "token_refused"), 0, "{result}");
}
