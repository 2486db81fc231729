//! Private channels (`--subscribe-key`: JWT subscriber tokens, `--token-leeway`,
//! `--token-cookie`) and browsers on other origins (`--allow-origin`: CORS), end to end
//! over real sockets against whichever server `HOLDFAST_BIN` names. The contract is
//! `docs/protocol.md`, "Private channels: subscriber tokens" and "Browsers on other
//! origins (CORS)", plus the flags and status-code tables.
//!
//! Tokens are minted here with the `jsonwebtoken` crate (HMAC secrets written to a temp
//! dir, the test keys of `tests/assets/jwt/`), crafted by hand where a library would
//! refuse to (`alg: none`), and once by a tool nobody here wrote (PyJWT). The comment
//! on each test says which behaviour it guards: the test fails if that is removed.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use common::http::{Conn, Response};
use common::nginx::TempDir;
use common::protocol::{assert_delivery, publish, publish_full, request, stat, wait_stat};
use common::server::{server_bin, Server};
use common::sse::{sse_request_bytes, Sse};

const SEC: Duration = Duration::from_secs(1);

/// A request header, name and value.
type Field<'a> = (&'a str, &'a str);

/// The HMAC secret the servers under test are started with (38 bytes).
const SECRET: &str = "holdfast-tokens-test-secret-0123456789";
/// Another secret, as long, that the servers do not know.
const OTHER_SECRET: &str = "an-attacker-secret-of-38-bytes-xxxxxxx";

/// An allowed origin for the CORS tests, and one that is not.
const ORIGIN: &str = "http://127.0.0.2:9999";
const STRANGER: &str = "http://127.0.0.3:9999";

/// A file of `tests/assets/jwt/`.
fn asset(name: &str) -> String {
    format!("{}/tests/assets/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Seconds since the Unix epoch, whole (what `exp` and `nbf` are written in).
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Seconds since the Unix epoch, fractional (to compare an arrival with an `exp`).
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The HMAC secret in a file (with a trailing newline, which is not part of it).
struct KeyFile {
    _dir: TempDir,
    path: String,
}

impl KeyFile {
    fn hmac(tag: &str) -> KeyFile {
        KeyFile::with(tag, format!("{SECRET}\n").as_bytes())
    }

    fn with(tag: &str, contents: &[u8]) -> KeyFile {
        let dir = TempDir::new(tag);
        let p = dir.path.join("subscribe.key");
        fs::write(&p, contents).expect("write the key file");
        KeyFile {
            path: p.display().to_string(),
            _dir: dir,
        }
    }
}

/// A server with `--subscribe-key` = the HMAC secret, plus `flags`.
fn private_server(key: &KeyFile, flags: &[&str]) -> Server {
    let mut all = vec!["--subscribe-key", key.path.as_str()];
    all.extend_from_slice(flags);
    Server::start(&all)
}

/// Claims granting `channels` until `exp`.
fn claims(channels: &[&str], exp: u64) -> Value {
    json!({"sub": "42", "channels": channels, "exp": exp})
}

/// Claims granting `channels` for the next five minutes.
fn grant(channels: &[&str]) -> Value {
    claims(channels, now() + 300)
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).expect("sign a token")
}

fn hs_with(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
    sign(
        alg,
        &EncodingKey::from_secret(secret).expect("an HMAC key"),
        claims,
    )
}

/// An HS256 token signed with the servers' secret.
fn hs256(claims: &Value) -> String {
    hs_with(Algorithm::HS256, SECRET.as_bytes(), claims)
}

fn rs(alg: Algorithm, claims: &Value) -> String {
    let pem = fs::read(asset("rsa-private.pem")).expect("read rsa-private.pem");
    sign(
        alg,
        &EncodingKey::from_rsa_pem(&pem).expect("the RSA private key"),
        claims,
    )
}

fn es256(claims: &Value) -> String {
    let pem = fs::read(asset("ec-private.pem")).expect("read ec-private.pem");
    sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(&pem).expect("the EC private key"),
        claims,
    )
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An unsigned token, crafted by hand (libraries refuse to make one): header
/// `{"alg":"none","typ":"JWT"}`, the claims, an empty signature.
fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The `WWW-Authenticate` of a `401` for a token that came but is refused.
fn invalid_token(description: &str) -> String {
    format!(
        "Bearer realm=\"holdfast\", error=\"invalid_token\", error_description=\"{description}\""
    )
}

const NO_TOKEN_CHALLENGE: &str = "Bearer realm=\"holdfast\"";
const SCOPE_CHALLENGE: &str = "Bearer realm=\"holdfast\", error=\"insufficient_scope\"";

/// Asserts a subscribe refusal: status, the exact `WWW-Authenticate`, the body, and a
/// connection kept open (no `Connection: close`).
fn assert_refused(r: &Response, status: u16, challenge: &str, body: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.brief());
    assert_eq!(
        r.header("www-authenticate"),
        Some(challenge),
        "{what}: WWW-Authenticate: {}",
        r.brief()
    );
    assert_eq!(r.body_str(), body, "{what}: body: {}", r.brief());
    assert!(
        !r.closes(),
        "{what}: a refusal keeps the connection open: {}",
        r.brief()
    );
    assert!(
        !r.header("content-type")
            .unwrap_or_default()
            .contains("event-stream"),
        "{what}: a refusal is not a stream: {}",
        r.brief()
    );
}

/// The `Access-Control-*` headers of a response.
fn cors_headers(r: &Response) -> Vec<(String, String)> {
    r.headers
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().starts_with("access-control-"))
        .cloned()
        .collect()
}

fn assert_no_cors(r: &Response, what: &str) {
    let h = cors_headers(r);
    assert!(h.is_empty(), "{what}: CORS headers {h:?}: {}", r.brief());
}

/// Asserts the CORS headers every answer to an allowed origin carries:
/// `Access-Control-Allow-Origin: allow`, `Access-Control-Expose-Headers` listing
/// Message-Id, Channel and Messages-Lost, and `Access-Control-Allow-Credentials: true`
/// exactly when `credentials`.
fn assert_cors(r: &Response, allow: &str, credentials: bool, what: &str) {
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(allow),
        "{what}: Access-Control-Allow-Origin: {}",
        r.brief()
    );
    for h in ["Message-Id", "Channel", "Messages-Lost"] {
        assert!(
            r.has_token("access-control-expose-headers", h),
            "{what}: Access-Control-Expose-Headers lacks {h}: {}",
            r.brief()
        );
    }
    let creds = r.header("access-control-allow-credentials");
    if credentials {
        assert_eq!(creds, Some("true"), "{what}: credentials: {}", r.brief());
    } else {
        assert_eq!(creds, None, "{what}: no credentials: {}", r.brief());
    }
}

/// Sends `GET path` with `headers` on a new connection without reading: a poll to be
/// parked.
fn park_with(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Conn {
    let mut c = Conn::open(addr);
    c.send_request("GET", path, headers, None);
    c
}

/// Publishes and returns the `subscribers` the answer reports.
fn publish_count(admin: std::net::SocketAddr, channel: &str, body: &str) -> u64 {
    let r = publish_full(admin, channel, body.as_bytes(), None);
    assert_eq!(r.status, 201, "publish to {channel}: {}", r.brief());
    r.json()["subscribers"]
        .as_u64()
        .unwrap_or_else(|| panic!("publish answer without subscribers: {}", r.brief()))
}

/// A long-poll with `headers` that parks, is counted, and receives what is published.
/// `query` is appended to the query string: empty, or `&token=…`.
fn poll_receives(s: &Server, channel: &str, query: &str, headers: &[(&str, &str)], what: &str) {
    let before = stat(s.admin, "parked");
    let mut c = park_with(
        s.public,
        &format!("/sub/{channel}?timeout=20{query}"),
        headers,
    );
    wait_stat(s.admin, "parked", before + 1, 5 * SEC);
    let body = format!("to a poll, {what}");
    assert_eq!(
        publish_count(s.admin, channel, &body),
        1,
        "{what}: the parked poll is a subscriber"
    );
    let r = c.response();
    assert_delivery(&r, channel, body.as_bytes());
    wait_stat(s.admin, "parked", before, 5 * SEC);
}

/// An event stream with `headers` that opens and receives what is published. `query`
/// as for [`poll_receives`].
fn stream_receives(s: &Server, channel: &str, query: &str, headers: &[(&str, &str)], what: &str) {
    let before = stat(s.admin, "sse_streams");
    let path = match query.strip_prefix('&') {
        Some(q) => format!("/sub/{channel}?{q}"),
        None => format!("/sub/{channel}"),
    };
    let mut st = Sse::open(s.public, &path, headers);
    wait_stat(s.admin, "sse_streams", before + 1, 5 * SEC);
    let body = format!("to a stream, {what}");
    let id = publish(s.admin, channel, &body);
    let ev = st.event_within(5 * SEC);
    assert_eq!(
        (ev.id(), ev.data()),
        (Some(id.as_str()), body.clone()),
        "{what}: {:?}",
        ev.raw
    );
    drop(st);
    wait_stat(s.admin, "sse_streams", before, 5 * SEC);
}

/// Guards: the token is found in each place the contract names — `Authorization:
/// Bearer`, `?token=`, the cookie `holdfast_token`, the cookie `--token-cookie` names
/// instead — for a long-poll and an event stream alike, and a subscriber let in that
/// way receives what is published. Removing any one place (or the custom cookie name)
/// turns its case into a `401`.
#[test]
fn a_token_in_the_header_the_query_or_the_cookie_lets_polls_and_streams_receive() {
    let key = KeyFile::hmac("tok-places");
    let s = private_server(&key, &[]);
    let custom = private_server(&key, &["--token-cookie", "app_tok"]);
    let t = hs256(&grant(&["inbox.*"]));
    let auth = bearer(&t);
    let query = format!("&token={t}");
    let cookie = format!("theme=dark; holdfast_token={t}; lang=en");
    let custom_cookie = format!("lang=en; app_tok={t}");

    // (server, place, query suffix, headers)
    let cases: [(&Server, &str, &str, Vec<Field>); 4] = [
        (&s, "header", "", vec![("Authorization", auth.as_str())]),
        (&s, "query", query.as_str(), vec![]),
        (&s, "cookie", "", vec![("Cookie", cookie.as_str())]),
        (
            &custom,
            "custom-cookie",
            "",
            vec![("Cookie", custom_cookie.as_str())],
        ),
    ];
    for (server, place, q, headers) in &cases {
        let channel = format!("inbox.{place}");
        poll_receives(server, &channel, q, headers, place);
        stream_receives(server, &channel, q, headers, place);
    }

    // The cookie is looked for by its name only: the default server ignores `app_tok`,
    // and with --token-cookie app_tok the default name is ignored.
    for (server, c) in [(&s, custom_cookie.as_str()), (&custom, cookie.as_str())] {
        let r = request(
            server.public,
            "GET",
            "/sub/inbox.x?timeout=0",
            &[("Cookie", c)],
            None,
        );
        assert_refused(
            &r,
            401,
            NO_TOKEN_CHALLENGE,
            "token required\n",
            &format!("cookie {c}"),
        );
    }
}

/// Guards the order of the places: the first token present (header, then query, then
/// cookie) is the one checked, even if a later place holds a good one.
#[test]
fn the_first_token_present_is_the_one_checked() {
    let key = KeyFile::hmac("tok-order");
    let s = private_server(&key, &[]);
    let good = hs256(&grant(&["o"]));
    let bad = hs_with(Algorithm::HS256, OTHER_SECRET.as_bytes(), &grant(&["o"]));
    let bad_sig = invalid_token("bad signature or algorithm");
    let body = "bad signature or algorithm\n";

    let r = request(
        s.public,
        "GET",
        &format!("/sub/o?timeout=0&token={good}"),
        &[("Authorization", &bearer(&bad))],
        None,
    );
    assert_refused(&r, 401, &bad_sig, body, "bad header, good query");
    let r = request(
        s.public,
        "GET",
        &format!("/sub/o?timeout=0&token={bad}"),
        &[("Cookie", &format!("holdfast_token={good}"))],
        None,
    );
    assert_refused(&r, 401, &bad_sig, body, "bad query, good cookie");
    let r = request(
        s.public,
        "GET",
        &format!("/sub/o?timeout=0&token={bad}"),
        &[
            ("Authorization", &bearer(&good)),
            ("Cookie", &format!("holdfast_token={bad}")),
        ],
        None,
    );
    assert_eq!(
        r.status,
        204,
        "good header, bad query and cookie: {}",
        r.brief()
    );
}

/// Guards the grant rules: an exact entry grants that name only (`priv` does not grant
/// `private`), a prefix entry `user.42.*` grants the names that start with `user.42.`
/// (not `user.42`, not `user.43.x`), `*` grants every channel; a refusal is `403` with
/// `insufficient_scope` naming the channel.
#[test]
fn exact_and_prefix_grants_cover_what_they_say_and_nothing_else() {
    let key = KeyFile::hmac("tok-grants");
    let s = private_server(&key, &[]);
    let t = bearer(&hs256(&grant(&["user.42.*", "priv", "news"])));
    let with = [("Authorization", t.as_str())];
    for ch in [
        "user.42.inbox",
        "user.42.",
        "user.42.a.b",
        "priv",
        "news",
        "news,user.42.inbox,priv",
    ] {
        let r = request(
            s.public,
            "GET",
            &format!("/sub/{ch}?timeout=0"),
            &with,
            None,
        );
        assert_eq!(r.status, 204, "{ch} is granted: {}", r.brief());
    }
    for ch in [
        "user.42",
        "user.43.x",
        "user.4",
        "user.420.x",
        "private",
        "pri",
        "newsroom",
        "xnews",
    ] {
        let r = request(
            s.public,
            "GET",
            &format!("/sub/{ch}?timeout=0"),
            &with,
            None,
        );
        assert_refused(
            &r,
            403,
            SCOPE_CHALLENGE,
            &format!("token does not grant channel {ch}\n"),
            ch,
        );
    }

    let all = bearer(&hs256(&grant(&["*"])));
    for ch in ["anything", "user.43.x", "a,b,c", "private"] {
        let r = request(
            s.public,
            "GET",
            &format!("/sub/{ch}?timeout=0"),
            &[("Authorization", &all)],
            None,
        );
        assert_eq!(r.status, 204, "`*` grants {ch}: {}", r.brief());
    }
}

/// Guards "checked before anything waits": a multi-channel subscribe with one channel
/// not granted is `403` (`insufficient_scope`, naming the first channel not granted)
/// at once, for a long-poll and a stream, and leaves nothing behind — no parked poll,
/// no stream, no channel, no subscriber on the granted channel. `token_refused` counts
/// the refusals.
#[test]
fn a_subscribe_with_one_channel_not_granted_is_refused_and_parks_nothing() {
    let key = KeyFile::hmac("tok-partial");
    let s = private_server(&key, &[]);
    let t = bearer(&hs256(&grant(&["mine", "also.*"])));
    let with = [("Authorization", t.as_str())];

    let start = Instant::now();
    let r = request(
        s.public,
        "GET",
        "/sub/mine,theirs,also.x,other?timeout=30",
        &with,
        None,
    );
    assert!(
        start.elapsed() < 3 * SEC,
        "the refusal came after {:?}",
        start.elapsed()
    );
    assert_refused(
        &r,
        403,
        SCOPE_CHALLENGE,
        "token does not grant channel theirs\n",
        "long-poll",
    );

    let mut c = Conn::open(s.public);
    c.send(&sse_request_bytes("/sub/also.x,mine,nope", &with));
    let r = c.response();
    assert_refused(
        &r,
        403,
        SCOPE_CHALLENGE,
        "token does not grant channel nope\n",
        "stream",
    );

    for field in ["parked", "sse_streams", "channels"] {
        assert_eq!(stat(s.admin, field), 0, "/stats {field} after the refusals");
    }
    for ch in ["mine", "also.x"] {
        assert_eq!(
            publish_count(s.admin, ch, "nobody listens"),
            0,
            "a refused subscribe is a subscriber of {ch}"
        );
    }
    assert_eq!(stat(s.admin, "token_refused"), 2);
    // The refused connection is still usable.
    let r = c.request("GET", "/sub/mine?since=0&timeout=0", &with, None);
    assert_delivery(&r, "mine", b"nobody listens");
}

/// Guards the `401` table: no token, not a JWT, another key, `alg: none`, a tampered
/// payload, `exp` passed, `nbf` ahead, no `exp`, no `channels`, a `channels` that is not
/// a list of names — each refused at once with its exact `WWW-Authenticate` and body,
/// for a long-poll that would wait 30 s and for a stream, all on one keep-alive
/// connection that then serves a valid subscribe; `token_refused` counts each refusal.
#[test]
fn bad_tokens_are_refused_with_401_and_the_reason() {
    let key = KeyFile::hmac("tok-bad");
    let s = private_server(&key, &[]);
    let n = now();
    let ok = grant(&["a"]);
    // A valid token whose payload is swapped for one granting more.
    let tampered = {
        let t = hs256(&ok);
        let parts: Vec<&str> = t.split('.').collect();
        let more = b64url(grant(&["*"]).to_string().as_bytes());
        format!("{}.{more}.{}", parts[0], parts[2])
    };
    let bad_sig = "bad signature or algorithm";
    let bad_claims = "bad claims (exp and channels are required)";
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "token required"),
        ("not a JWT", Some("not-a-jwt".into()), "malformed token"),
        ("three junk parts", Some("a.b.c".into()), "malformed token"),
        (
            "another key",
            Some(hs_with(Algorithm::HS256, OTHER_SECRET.as_bytes(), &ok)),
            bad_sig,
        ),
        ("alg none", Some(alg_none(&ok)), bad_sig),
        ("tampered payload", Some(tampered), bad_sig),
        (
            "expired",
            Some(hs256(&claims(&["a"], n - 60))),
            "token expired",
        ),
        (
            "nbf ahead",
            Some(hs256(
                &json!({"channels": ["a"], "exp": n + 300, "nbf": n + 60}),
            )),
            "token not yet valid",
        ),
        (
            "no exp",
            Some(hs256(&json!({"sub": "42", "channels": ["a"]}))),
            bad_claims,
        ),
        (
            "no channels",
            Some(hs256(&json!({"sub": "42", "exp": n + 300}))),
            bad_claims,
        ),
        (
            "channels not a list",
            Some(hs256(&json!({"channels": "a", "exp": n + 300}))),
            bad_claims,
        ),
        (
            "an invalid channel entry",
            Some(hs256(&claims(&["a", "bad name"], n + 300))),
            bad_claims,
        ),
    ];
    let mut c = Conn::open(s.public);
    let mut refused = 0;
    for (what, token, description) in &cases {
        let auth = token.as_deref().map(bearer);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let (challenge, body) = match token {
            None => (NO_TOKEN_CHALLENGE.to_string(), format!("{description}\n")),
            Some(_) => (invalid_token(description), format!("{description}\n")),
        };
        let start = Instant::now();
        let r = c.request("GET", "/sub/a?timeout=30", &headers, None);
        assert!(
            start.elapsed() < 3 * SEC,
            "{what}: the refusal came after {:?}",
            start.elapsed()
        );
        assert_refused(&r, 401, &challenge, &body, &format!("{what}, long-poll"));
        c.send(&sse_request_bytes("/sub/a", &headers));
        let r = c.response();
        assert_refused(&r, 401, &challenge, &body, &format!("{what}, stream"));
        refused += 2;
    }
    assert_eq!(stat(s.admin, "token_refused"), refused);
    for field in ["parked", "sse_streams", "channels"] {
        assert_eq!(stat(s.admin, field), 0, "/stats {field} after the refusals");
    }
    // The same connection serves a valid subscribe, and that is not counted.
    let good = bearer(&hs256(&ok));
    let r = c.request("GET", "/sub/a?timeout=0", &[("Authorization", &good)], None);
    assert_eq!(r.status, 204, "valid token after refusals: {}", r.brief());
    assert_eq!(stat(s.admin, "token_refused"), refused);
}

/// Guards "the connection stays open after a refusal": after a `401` and after a `403`
/// the same connection carries a long-poll that parks and receives a message, and then
/// an event stream.
#[test]
fn a_refused_subscribe_leaves_the_connection_usable() {
    let key = KeyFile::hmac("tok-keepalive");
    let s = private_server(&key, &[]);
    let t = bearer(&hs256(&grant(&["k"])));
    let with = [("Authorization", t.as_str())];
    let mut c = Conn::open(s.public);

    let r = c.request("GET", "/sub/k?timeout=30", &[], None);
    assert_refused(&r, 401, NO_TOKEN_CHALLENGE, "token required\n", "no token");
    c.send_request("GET", "/sub/k?timeout=20", &with, None);
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    publish(s.admin, "k", "after a 401");
    assert_delivery(&c.response(), "k", b"after a 401");

    let r = c.request("GET", "/sub/k,other?timeout=30", &with, None);
    assert_refused(
        &r,
        403,
        SCOPE_CHALLENGE,
        "token does not grant channel other\n",
        "not granted",
    );
    let mut st = Sse::begin(c, "/sub/k", &with);
    st.expect_stream_start(5 * SEC);
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    let id = publish(s.admin, "k", "after a 403");
    let ev = st.event_within(5 * SEC);
    assert_eq!(
        (ev.id(), ev.data().as_str()),
        (Some(id.as_str()), "after a 403")
    );
    assert_eq!(stat(s.admin, "token_refused"), 2);
}

/// Guards the public-key families and algorithm confusion: with an RSA public key an
/// RS256 (and RS512) token is accepted and an HS256 token whose secret is that key's PEM
/// is refused, as are ES256 and `alg: none`; likewise with an EC public key (ES256 in,
/// RS256 and HS256-with-the-PEM out). A good signature on a tampered payload is
/// refused.
#[test]
fn public_keys_accept_their_own_algorithms_and_refuse_confusion() {
    let rsa = Server::start(&["--subscribe-key", &asset("rsa-public.pem")]);
    let ec = Server::start(&["--subscribe-key", &asset("ec-public.pem")]);
    let ok = grant(&["keyed"]);
    let bad_sig = invalid_token("bad signature or algorithm");
    let body = "bad signature or algorithm\n";

    for (s, name, token) in [
        (&rsa, "RS256", rs(Algorithm::RS256, &ok)),
        (&rsa, "RS512", rs(Algorithm::RS512, &ok)),
        (&ec, "ES256", es256(&ok)),
    ] {
        let id = publish(s.admin, "keyed", name);
        let r = request(
            s.public,
            "GET",
            &format!(
                "/sub/keyed?since={}&timeout=0",
                id.parse::<u64>().unwrap() - 1
            ),
            &[("Authorization", &bearer(&token))],
            None,
        );
        assert_delivery(&r, "keyed", name.as_bytes());
    }

    let rsa_pem = fs::read(asset("rsa-public.pem")).expect("read rsa-public.pem");
    let ec_pem = fs::read(asset("ec-public.pem")).expect("read ec-public.pem");
    let trimmed = |pem: &[u8]| pem.strip_suffix(b"\n").unwrap_or(pem).to_vec();
    let mut refusals = vec![
        (&rsa, "ES256 to an RSA key", es256(&ok)),
        (&ec, "RS256 to an EC key", rs(Algorithm::RS256, &ok)),
        (&rsa, "alg none to an RSA key", alg_none(&ok)),
        (&ec, "alg none to an EC key", alg_none(&ok)),
    ];
    for (s, pem) in [(&rsa, &rsa_pem), (&ec, &ec_pem)] {
        for secret in [pem.clone(), trimmed(pem)] {
            for alg in [Algorithm::HS256, Algorithm::HS512] {
                refusals.push((
                    s,
                    "HMAC with the public key's PEM as secret",
                    hs_with(alg, &secret, &ok),
                ));
            }
        }
    }
    let good = rs(Algorithm::RS256, &ok);
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64url(grant(&["*"]).to_string().as_bytes()),
        parts[2]
    );
    refusals.push((&rsa, "RS256 with a tampered payload", tampered));
    for (s, what, token) in &refusals {
        let r = request(
            s.public,
            "GET",
            "/sub/keyed?since=0&timeout=0",
            &[("Authorization", &bearer(token))],
            None,
        );
        assert_refused(&r, 401, &bad_sig, body, what);
    }
}

/// Unsigned tokens (`alg: none` in its spellings, with an empty or a junk signature),
/// crafted by hand and granting everything, to a server holding each kind of key.
fn unsigned_tokens() -> Vec<(String, String)> {
    let all = b64url(grant(&["*"]).to_string().as_bytes());
    let mut out = Vec::new();
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None","typ":"JWT"}"#,
        r#"{"alg":"NONE"}"#,
    ] {
        let h = b64url(header.as_bytes());
        out.push((format!("{header}, empty signature"), format!("{h}.{all}.")));
        out.push((
            format!("{header}, junk signature"),
            format!("{h}.{all}.{}", b64url(b"junk")),
        ));
    }
    out
}

/// Guards the refusal of unsigned tokens (`alg: none` in its spellings, empty or junk
/// signature, granting everything): with an HMAC secret, an RSA key or an EC key, a
/// long-poll that would wait 30 s and a stream are both refused at once with `401` and
/// `error_description="bad signature or algorithm"` (the 401 table), and nothing parks.
#[test]
fn unsigned_alg_none_tokens_are_refused_as_a_bad_signature() {
    let key = KeyFile::hmac("tok-none");
    let servers = [
        ("HMAC", private_server(&key, &[])),
        (
            "RSA",
            Server::start(&["--subscribe-key", &asset("rsa-public.pem")]),
        ),
        (
            "EC",
            Server::start(&["--subscribe-key", &asset("ec-public.pem")]),
        ),
    ];
    let challenge = invalid_token("bad signature or algorithm");
    let body = "bad signature or algorithm\n";
    for (kind, s) in &servers {
        let mut c = Conn::open(s.public);
        let mut refused = 0;
        for (what, token) in unsigned_tokens() {
            let auth = bearer(&token);
            let h = [("Authorization", auth.as_str())];
            let start = Instant::now();
            let r = c.request("GET", "/sub/anything?timeout=30", &h, None);
            assert!(start.elapsed() < 3 * SEC, "{kind} key, {what}: held");
            assert_refused(
                &r,
                401,
                &challenge,
                body,
                &format!("{kind} key, {what}, poll"),
            );
            c.send(&sse_request_bytes("/sub/anything", &h));
            let r = c.response();
            assert_refused(
                &r,
                401,
                &challenge,
                body,
                &format!("{kind} key, {what}, stream"),
            );
            refused += 2;
        }
        assert_eq!(stat(s.admin, "token_refused"), refused, "{kind}");
        for field in ["parked", "sse_streams", "channels"] {
            assert_eq!(stat(s.admin, field), 0, "{kind}: /stats {field}");
        }
    }
}

/// HMAC algorithms beyond HS256: HS384 and HS512 are accepted with the secret.
#[test]
fn hmac_secrets_accept_hs384_and_hs512() {
    let key = KeyFile::hmac("tok-hs");
    let s = private_server(&key, &[]);
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let t = hs_with(alg, SECRET.as_bytes(), &grant(&["h"]));
        let r = request(
            s.public,
            "GET",
            "/sub/h?timeout=0",
            &[("Authorization", &bearer(&t))],
            None,
        );
        assert_eq!(r.status, 204, "{alg:?}: {}", r.brief());
    }
}

/// The Python that has PyJWT: `$PYTHON` if set, else the first of `python3` on `PATH`
/// and Debian's `/usr/bin/python3` that can import `jwt` and `cryptography` (a
/// `python3` on `PATH` from pyenv does not see Debian's `python3-jwt`, which `.ci/run`
/// installs), else `python3` (whose failure then says what to install).
fn python() -> String {
    if let Ok(p) = std::env::var("PYTHON") {
        return p;
    }
    for p in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(p)
            .args(["-c", "import jwt, cryptography"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return p.to_string();
        }
    }
    "python3".to_string()
}

/// Mints a token with PyJWT (see [`python`], module `jwt`): `alg`, the key in `key_file`
/// (for HMAC the file's bytes without one trailing newline, as the server reads it).
/// Panics, saying what to install, if python3, PyJWT or its crypto backend is missing.
fn pyjwt(alg: &str, key_file: &str, claims: &Value) -> String {
    const SCRIPT: &str = r#"
import json, sys
try:
    import jwt
except ImportError as e:
    print("cannot import jwt: %s" % e, file=sys.stderr)
    sys.exit(3)
alg, key_file, claims = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
key = open(key_file, "rb").read()
if alg.startswith("HS") and key.endswith(b"\n"):
    key = key[:-1]
token = jwt.encode(claims, key, algorithm=alg)
print(token if isinstance(token, str) else token.decode())
"#;
    const INSTALL: &str = "install python3 and PyJWT with its crypto backend \
                           (Debian: apt-get install python3-jwt python3-cryptography)";
    let out = Command::new(python())
        .args(["-c", SCRIPT, alg, key_file, &claims.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {INSTALL}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(3) => panic!("python3 has no PyJWT module ({}): {INSTALL}", stderr.trim()),
        _ => panic!(
            "PyJWT could not mint an {alg} token ({:?}): {INSTALL}\n{stderr}",
            out.status
        ),
    }
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        token.split('.').count(),
        3,
        "PyJWT printed {token:?}, not a JWT"
    );
    token
}

/// Guards interoperability: tokens minted by a standard tool nobody here wrote (PyJWT,
/// HS256 with the secret file, RS256 with `rsa-private.pem`) are accepted, and the
/// subscribers they let in receive messages. Fails, naming what to install, without
/// python3 and PyJWT.
#[test]
fn tokens_minted_by_pyjwt_are_accepted() {
    let key = KeyFile::hmac("tok-pyjwt");
    let hmac = private_server(&key, &[]);
    let rsa = Server::start(&["--subscribe-key", &asset("rsa-public.pem")]);
    let c = grant(&["py.*"]);

    let hs = pyjwt("HS256", &key.path, &c);
    poll_receives(&hmac, "py.hs", &format!("&token={hs}"), &[], "PyJWT HS256");
    let rs = pyjwt("RS256", &asset("rsa-private.pem"), &c);
    let auth = bearer(&rs);
    stream_receives(
        &rsa,
        "py.rs",
        "",
        &[("Authorization", auth.as_str())],
        "PyJWT RS256",
    );
    poll_receives(
        &rsa,
        "py.rs",
        "",
        &[("Authorization", auth.as_str())],
        "PyJWT RS256",
    );
    // And PyJWT's tokens are checked, not just parsed: an expired one is refused.
    let old = pyjwt("HS256", &key.path, &claims(&["py.*"], now() - 60));
    let r = request(
        hmac.public,
        "GET",
        &format!("/sub/py.hs?timeout=0&token={old}"),
        &[],
        None,
    );
    assert_refused(
        &r,
        401,
        &invalid_token("token expired"),
        "token expired\n",
        "expired PyJWT token",
    );
}

/// The `exp` of a token that expires five to six seconds from now: room for a server
/// on a loaded machine to open the stream and deliver before it.
fn soon() -> u64 {
    now() + 6
}

/// Asserts an event (or answer) that should come at `exp` arrived at `at` (Unix
/// seconds): not before `exp` (less 0.3 s for clock granularity), not much after.
fn assert_at_exp(at: f64, exp: u64, what: &str) {
    let exp = exp as f64;
    assert!(
        at >= exp - 0.3 && at <= exp + 1.5,
        "{what}: came at exp{:+.3} s, expected between exp-0.3 s and exp+1.5 s",
        at - exp
    );
}

/// Guards the end of a stream at its token's `exp`: it delivers before, then sends
/// `event: expired` / `data: token expired` at `exp` (not before, not much after),
/// then closes; `streams_expired` counts it.
#[test]
fn a_stream_ends_at_its_token_expiry_with_event_expired() {
    let key = KeyFile::hmac("tok-stream-exp");
    let s = private_server(&key, &[]);
    let exp = soon();
    let t = bearer(&hs256(&claims(&["tick"], exp)));
    let mut st = Sse::open(s.public, "/sub/tick", &[("Authorization", &t)]);
    wait_stat(s.admin, "sse_streams", 1, 5 * SEC);
    let id = publish(s.admin, "tick", "before expiry");
    let ev = st.event_within(2 * SEC);
    assert_eq!(
        (ev.id(), ev.data().as_str()),
        (Some(id.as_str()), "before expiry"),
        "{:?}",
        ev.raw
    );
    let ev = st.event_within(10 * SEC);
    let at = unix_now();
    assert_eq!(
        ev.raw, "event: expired\ndata: token expired\n\n",
        "the last frame"
    );
    assert_at_exp(at, exp, "event: expired");
    let rest = st
        .wait_eof(2 * SEC)
        .unwrap_or_else(|e| panic!("the stream did not close after event: expired: {e}"));
    assert!(
        rest.is_empty(),
        "bytes after event: expired: {:?}",
        String::from_utf8_lossy(&rest)
    );
    wait_stat(s.admin, "sse_streams", 0, 5 * SEC);
    assert_eq!(stat(s.admin, "streams_expired"), 1);
}

/// Guards the hold clamp: a long-poll with `?timeout=30` and a token expiring in five to
/// six seconds is answered `204` at `exp`, not 30 s later; the next poll with the same
/// token (within the leeway, nothing buffered) is refused at once, not held or
/// answered with an empty `204` the client would repeat.
#[test]
fn a_long_poll_is_held_no_longer_than_its_token() {
    let key = KeyFile::hmac("tok-poll-exp");
    let s = private_server(&key, &[]);
    let exp = soon();
    let t = bearer(&hs256(&claims(&["clock"], exp)));
    let with = [("Authorization", t.as_str())];
    let mut c = Conn::open(s.public);
    c.send_request("GET", "/sub/clock?timeout=30", &with, None);
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    let r = c.response();
    let at = unix_now();
    assert_eq!(r.status, 204, "{}", r.brief());
    assert!(
        r.header("message-id").is_some(),
        "the 204 hands back a cursor: {}",
        r.brief()
    );
    assert_at_exp(at, exp, "the 204 of a poll whose token expires");
    wait_stat(s.admin, "parked", 0, 5 * SEC);

    // Within the default 5 s leeway the token is still let in, but a poll is never held
    // past exp: with nothing buffered, 401 at once.
    let start = Instant::now();
    let r = c.request("GET", "/sub/clock?timeout=30", &with, None);
    assert!(
        start.elapsed() < 2 * SEC,
        "a poll with an expired token was held {:?}: {}",
        start.elapsed(),
        r.brief()
    );
    assert_eq!(r.status, 401, "after exp: {}", r.brief());
}

/// Guards `--token-leeway`: a token whose `exp` passed 2 s ago (or whose `nbf` is 2 s
/// ahead) is accepted with the default 5 s and refused with `--token-leeway 0`; an
/// accepted one past `exp` may read what is buffered but never waits: a poll with
/// nothing to deliver and a stream get `401 token expired` at once (a stream that
/// ended at once, or an empty `204`, would bring the client straight back).
#[test]
fn the_leeway_admits_a_token_just_past_exp_but_never_holds_past_it() {
    let key = KeyFile::hmac("tok-leeway");
    let lenient = private_server(&key, &[]);
    let strict = private_server(&key, &["--token-leeway", "0"]);
    for s in [&lenient, &strict] {
        publish(s.admin, "late", "still buffered");
    }
    let past = || bearer(&hs256(&claims(&["late"], now() - 2)));
    let ahead = || {
        let n = now();
        bearer(&hs256(
            &json!({"channels": ["late"], "exp": n + 300, "nbf": n + 2}),
        ))
    };

    // Accepted: the buffered message is delivered.
    let r = request(
        lenient.public,
        "GET",
        "/sub/late?since=0&timeout=30",
        &[("Authorization", &past())],
        None,
    );
    assert_delivery(&r, "late", b"still buffered");
    // Accepted, nothing to deliver: refused at once, not held 30 s.
    let start = Instant::now();
    let r = request(
        lenient.public,
        "GET",
        "/sub/late?timeout=30",
        &[("Authorization", &past())],
        None,
    );
    assert_refused(
        &r,
        401,
        &invalid_token("token expired"),
        "token expired\n",
        "a poll with nothing buffered, token past exp",
    );
    assert!(
        start.elapsed() < 2 * SEC,
        "a poll whose token is past exp was held {:?}",
        start.elapsed()
    );
    // A stream is not opened.
    let r = request(
        lenient.public,
        "GET",
        "/sub/late?since=0",
        &[("Authorization", &past()), ("Accept", "text/event-stream")],
        None,
    );
    assert_refused(
        &r,
        401,
        &invalid_token("token expired"),
        "token expired\n",
        "a stream, token past exp",
    );
    // nbf 2 s ahead: within the leeway.
    let r = request(
        lenient.public,
        "GET",
        "/sub/late?timeout=0",
        &[("Authorization", &ahead())],
        None,
    );
    assert_eq!(r.status, 204, "nbf 2 s ahead, 5 s leeway: {}", r.brief());

    // --token-leeway 0: refused.
    let r = request(
        strict.public,
        "GET",
        "/sub/late?since=0&timeout=0",
        &[("Authorization", &past())],
        None,
    );
    assert_refused(
        &r,
        401,
        &invalid_token("token expired"),
        "token expired\n",
        "exp 2 s ago, no leeway",
    );
    let r = request(
        strict.public,
        "GET",
        "/sub/late?since=0&timeout=0",
        &[("Authorization", &ahead())],
        None,
    );
    assert_refused(
        &r,
        401,
        &invalid_token("token not yet valid"),
        "token not yet valid\n",
        "nbf 2 s ahead, no leeway",
    );
}

/// Runs the server binary with `flags` (on free ports) and returns its exit status and
/// stderr; kills it and fails if it is still running after 10 s (it started).
fn run_to_exit(flags: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(server_bin())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(flags)
        .env_remove("HOLDFAST_REDIS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the server binary");
    let deadline = Instant::now() + 10 * SEC;
    while child.try_wait().expect("wait for the server").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "{flags:?}: the server started instead of refusing; stdout {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collect output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Guards start-up validation: a `--subscribe-key` that is missing, a secret shorter
/// than 32 bytes, a private key; an `--allow-origin` with a path, without a scheme, or
/// `*` with another; a `--token-leeway` over 5m — each exits with status 2 and a message
/// naming the flag. The limits themselves (a 32-byte secret, a 5m leeway) start.
#[test]
fn bad_token_and_origin_flags_stop_the_server_at_start() {
    let dir = TempDir::new("tok-flags");
    let missing = dir.path.join("missing.key").display().to_string();
    let short = dir.path.join("short.key");
    fs::write(&short, format!("{}\n", &SECRET[..31])).expect("write");
    let short = short.display().to_string();
    let rsa_private = asset("rsa-private.pem");
    let ec_private = asset("ec-private.pem");
    // Keys that would load but could never verify a token safely: refused at start.
    let rsa_1024 = asset("rsa1024-public.pem");
    let ec_p521 = asset("ec-p521-public.pem");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--subscribe-key", &missing], "--subscribe-key"),
        (vec!["--subscribe-key", &short], "--subscribe-key"),
        (vec!["--subscribe-key", &rsa_private], "--subscribe-key"),
        (vec!["--subscribe-key", &ec_private], "--subscribe-key"),
        (vec!["--subscribe-key", &rsa_1024], "--subscribe-key"),
        (vec!["--subscribe-key", &ec_p521], "--subscribe-key"),
        (
            vec!["--allow-origin", "https://a.example/"],
            "--allow-origin",
        ),
        (vec!["--allow-origin", "a.example"], "--allow-origin"),
        (
            vec!["--allow-origin", "*", "--allow-origin", "https://a.example"],
            "--allow-origin",
        ),
        (vec!["--token-leeway", "10m"], "--token-leeway"),
    ];
    for (flags, flag) in &cases {
        let (code, stdout, stderr) = run_to_exit(flags);
        assert_eq!(code, Some(2), "{flags:?}: exit {code:?}; stderr: {stderr}");
        assert!(
            stderr.contains(flag),
            "{flags:?}: the message names {flag}: {stderr}"
        );
        assert!(!stdout.contains("listening"), "{flags:?} started: {stdout}");
        assert!(!stderr.contains("panicked"), "{flags:?} panicked: {stderr}");
    }

    // At the limits it starts (Server::start fails the test otherwise).
    let exact = KeyFile::with("tok-flags-32", format!("{}\n", &SECRET[..32]).as_bytes());
    let s = Server::start(&[
        "--subscribe-key",
        &exact.path,
        "--token-leeway",
        "5m",
        "--allow-origin",
        "https://a.example:8443",
    ]);
    let t = hs_with(Algorithm::HS256, &SECRET.as_bytes()[..32], &grant(&["x"]));
    let r = request(
        s.public,
        "GET",
        "/sub/x?timeout=0",
        &[("Authorization", &bearer(&t))],
        None,
    );
    assert_eq!(r.status, 204, "the 32-byte secret: {}", r.brief());
}

fn preflight(addr: std::net::SocketAddr, path: &str, origin: Option<&str>) -> Response {
    let mut headers = vec![
        ("Access-Control-Request-Method", "GET"),
        (
            "Access-Control-Request-Headers",
            "authorization, last-event-id",
        ),
    ];
    if let Some(o) = origin {
        headers.push(("Origin", o));
    }
    request(addr, "OPTIONS", path, &headers, None)
}

/// Guards CORS for listed origins (with `--subscribe-key`): a preflight from a listed
/// origin is `204` with the allowed origin, methods, headers and max age, from any
/// other (or none) `403` without CORS headers; every answer to a listed origin — a
/// parked poll's later message, a `204`, a `400`, a `401`, a `403`, a stream's head —
/// carries `Access-Control-Allow-Origin` (that origin), the exposed headers,
/// `Vary: Origin` and `Access-Control-Allow-Credentials: true`; the same requests from
/// an unlisted origin carry none; the admin listener never carries any.
#[test]
fn listed_origins_get_cors_headers_on_every_subscribe_answer() {
    let key = KeyFile::hmac("tok-cors");
    let second = "https://app.example";
    let s = private_server(&key, &["--allow-origin", ORIGIN, "--allow-origin", second]);
    let t = bearer(&hs256(&grant(&["c.*"])));

    // Preflights.
    for origin in [ORIGIN, second] {
        let r = preflight(s.public, "/sub/c.x", Some(origin));
        let what = format!("preflight from {origin}");
        assert_eq!(r.status, 204, "{what}: {}", r.brief());
        assert_cors(&r, origin, true, &what);
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some("GET"),
            "{what}: {}",
            r.brief()
        );
        for h in ["Authorization", "Last-Event-ID"] {
            assert!(
                r.has_token("access-control-allow-headers", h),
                "{what}: Access-Control-Allow-Headers lacks {h}: {}",
                r.brief()
            );
        }
        assert_eq!(r.header("access-control-max-age"), Some("600"), "{what}");
        assert!(r.has_token("vary", "origin"), "{what}: Vary: {}", r.brief());
    }
    for origin in [Some(STRANGER), Some("http://127.0.0.2:999"), None] {
        let r = preflight(s.public, "/sub/c.x", origin);
        let what = format!("preflight from {origin:?}");
        assert_eq!(r.status, 403, "{what}: {}", r.brief());
        assert_eq!(r.body_str(), "origin not allowed\n", "{what}");
        assert_no_cors(&r, &what);
    }

    // A long-poll parked first and answered later, from the listed origin and from a
    // stranger.
    let from = |o: &'static str| [("Authorization", t.as_str()), ("Origin", o)];
    let mut listed = park_with(s.public, "/sub/c.poll?timeout=20", &from(ORIGIN));
    let mut stranger = park_with(s.public, "/sub/c.poll?timeout=20", &from(STRANGER));
    wait_stat(s.admin, "parked", 2, 5 * SEC);
    assert_eq!(publish_count(s.admin, "c.poll", "later"), 2);
    let r = listed.response();
    assert_delivery(&r, "c.poll", b"later");
    assert_cors(&r, ORIGIN, true, "parked poll's message");
    assert!(r.has_token("vary", "origin"), "Vary: {}", r.brief());
    let r = stranger.response();
    assert_delivery(&r, "c.poll", b"later");
    assert_no_cors(&r, "parked poll's message to a stranger");

    // Other answers to the listed origin: 204, 400, 401, 403, a stream's head.
    let h = from(ORIGIN);
    let origin_only = [("Origin", ORIGIN)];
    let answers: [(&str, &str, &[Field], u16); 4] = [
        ("204", "/sub/c.x?timeout=0", &h, 204),
        ("400", "/sub/c.x?timeout=soon", &h, 400),
        ("401", "/sub/c.x?timeout=0", &origin_only, 401),
        ("403", "/sub/d.x?timeout=0", &h, 403),
    ];
    for (what, path, headers, status) in answers {
        let r = request(s.public, "GET", path, headers, None);
        assert_eq!(r.status, status, "{what}: {}", r.brief());
        assert_cors(&r, ORIGIN, true, what);
        // From a stranger: the same answer, no CORS headers.
        let swapped: Vec<(&str, &str)> = headers
            .iter()
            .map(|&(n, v)| if n == "Origin" { (n, STRANGER) } else { (n, v) })
            .collect();
        let r = request(s.public, "GET", path, &swapped, None);
        assert_eq!(r.status, status, "{what} to a stranger: {}", r.brief());
        assert_no_cors(&r, &format!("{what} to a stranger"));
    }
    let st = Sse::open(s.public, "/sub/c.sse", &h);
    assert_cors(st.head.as_ref().unwrap(), ORIGIN, true, "stream head");
    let st2 = Sse::open(s.public, "/sub/c.sse", &from(STRANGER));
    assert_no_cors(st2.head.as_ref().unwrap(), "stream head to a stranger");
    drop((st, st2));

    // The admin listener never sends CORS headers.
    let r = request(
        s.admin,
        "POST",
        "/pub/c.x",
        &[("Origin", ORIGIN)],
        Some(b"m"),
    );
    assert_eq!(r.status, 201, "{}", r.brief());
    assert_no_cors(&r, "admin publish");
    for (method, path) in [
        ("GET", "/stats"),
        ("GET", "/pub/c.x"),
        ("OPTIONS", "/pub/c.x"),
        ("OPTIONS", "/sub/c.x"),
    ] {
        let r = request(
            s.admin,
            method,
            path,
            &[("Origin", ORIGIN), ("Access-Control-Request-Method", "GET")],
            None,
        );
        assert!(r.status != 204, "admin {method} {path}: {}", r.brief());
        assert_no_cors(&r, &format!("admin {method} {path}"));
    }
}

/// Guards `--allow-origin '*'`: every origin is allowed, answered with
/// `Access-Control-Allow-Origin: *` and never with credentials (even with
/// `--subscribe-key`): on a preflight, a parked poll's later message and a `401`; a
/// preflight without `Origin` is still `403`.
#[test]
fn any_origin_gets_a_star_and_no_credentials() {
    let key = KeyFile::hmac("tok-cors-star");
    let s = private_server(&key, &["--allow-origin", "*"]);
    let t = bearer(&hs256(&grant(&["star"])));
    let from = [("Authorization", t.as_str()), ("Origin", STRANGER)];

    let r = preflight(s.public, "/sub/star", Some("https://anyone.example"));
    assert_eq!(r.status, 204, "{}", r.brief());
    assert_cors(&r, "*", false, "preflight");
    assert_eq!(r.header("access-control-allow-methods"), Some("GET"));
    for h in ["Authorization", "Last-Event-ID"] {
        assert!(
            r.has_token("access-control-allow-headers", h),
            "Allow-Headers lacks {h}: {}",
            r.brief()
        );
    }
    let r = preflight(s.public, "/sub/star", None);
    assert_eq!(r.status, 403, "preflight without Origin: {}", r.brief());
    assert_no_cors(&r, "preflight without Origin");

    let mut c = park_with(s.public, "/sub/star?timeout=20", &from);
    wait_stat(s.admin, "parked", 1, 5 * SEC);
    assert_eq!(publish_count(s.admin, "star", "to anyone"), 1);
    let r = c.response();
    assert_delivery(&r, "star", b"to anyone");
    assert_cors(&r, "*", false, "parked poll's message");

    let r = request(
        s.public,
        "GET",
        "/sub/star?timeout=0",
        &[("Origin", STRANGER)],
        None,
    );
    assert_eq!(r.status, 401, "{}", r.brief());
    assert_cors(&r, "*", false, "401");
}

/// Guards "no CORS without `--allow-origin`": `OPTIONS /sub/…` is `405` (`Allow: GET`)
/// and no answer carries CORS headers; and with `--allow-origin` but no
/// `--subscribe-key`, a listed origin gets CORS headers without credentials.
#[test]
fn without_allow_origin_there_is_no_cors_and_options_is_405() {
    let plain = Server::start(&[]);
    let r = preflight(plain.public, "/sub/x", Some(ORIGIN));
    assert_eq!(r.status, 405, "{}", r.brief());
    assert_eq!(r.header("allow"), Some("GET"), "{}", r.brief());
    assert_no_cors(&r, "OPTIONS without --allow-origin");
    let r = request(
        plain.public,
        "GET",
        "/sub/x?timeout=0",
        &[("Origin", ORIGIN)],
        None,
    );
    assert_eq!(r.status, 204, "{}", r.brief());
    assert_no_cors(&r, "subscribe without --allow-origin");

    let public = Server::start(&["--allow-origin", ORIGIN]);
    let mut c = park_with(public.public, "/sub/open?timeout=20", &[("Origin", ORIGIN)]);
    wait_stat(public.admin, "parked", 1, 5 * SEC);
    publish(public.admin, "open", "public");
    let r = c.response();
    assert_delivery(&r, "open", b"public");
    assert_cors(&r, ORIGIN, false, "without --subscribe-key");
}
