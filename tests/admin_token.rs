//! The admin secret (`--admin-token-file`): every admin request but `/health` needs
//! `Authorization: Bearer <secret>`; without it, or with another, `401` with
//! `WWW-Authenticate`, and nothing is done. The public listener is not affected. A file
//! that cannot serve as a secret stops the server at start with status 2. Both servers.

mod common;

use std::fs;
use std::process::Command;

use common::nginx::TempDir;
use common::protocol::{get, poll, request};
use common::server::{server_bin, Server};

const SECRET: &str = "s3cret-Token_42";

fn secret_file(dir: &TempDir, contents: &[u8]) -> String {
    let p = dir.path.join("admin.token");
    fs::write(&p, contents).expect("write the token file");
    p.display().to_string()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn admin_requests_need_the_secret_and_health_does_not() {
    let dir = TempDir::new("admin-token");
    // The file's trailing newline is not part of the secret.
    let file = secret_file(&dir, format!("{SECRET}\n").as_bytes());
    let s = Server::start(&["--admin-token-file", &file]);
    let good = bearer(SECRET);
    let with = [("Authorization", good.as_str())];

    // Without the header, with another token, with another scheme: 401, nothing done.
    let wrong = bearer("s3cret-Token_4");
    let basic = format!("Basic {SECRET}");
    let refusals: [&[(&str, &str)]; 4] = [
        &[],
        &[("Authorization", wrong.as_str())],
        &[("Authorization", basic.as_str())],
        &[("Authorization", SECRET)],
    ];
    for headers in refusals {
        for (method, target, body) in [
            ("POST", "/pub/a", Some(&b"not published"[..])),
            ("PUT", "/pub/a", Some(&b"not published"[..])),
            ("GET", "/pub/a", None),
            ("DELETE", "/pub/a", None),
            ("GET", "/stats", None),
            ("GET", "/metrics", None),
            ("GET", "/nowhere", None),
        ] {
            let r = request(s.admin, method, target, headers, body);
            assert_eq!(
                r.status,
                401,
                "{method} {target} with {headers:?}: {}",
                r.brief()
            );
            let challenge = r.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.to_ascii_lowercase().starts_with("bearer"),
                "{method} {target}: WWW-Authenticate {challenge:?}"
            );
        }
    }
    // Nothing was published by the refused requests.
    let r = poll(s.public, "/sub/a?since=0&timeout=0");
    assert_eq!(
        r.status,
        204,
        "refused publishes were carried out: {}",
        r.brief()
    );

    // With the secret: everything as usual ("Bearer" in any case).
    let r = request(s.admin, "POST", "/pub/a", &with, Some(b"published"));
    assert_eq!(r.status, 201, "{}", r.brief());
    let lower = format!("bearer {SECRET}");
    let r = request(
        s.admin,
        "GET",
        "/pub/a",
        &[("Authorization", lower.as_str())],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.brief());
    for target in ["/stats", "/metrics"] {
        let r = request(s.admin, "GET", target, &with, None);
        assert_eq!(r.status, 200, "{target}: {}", r.brief());
    }
    let r = poll(s.public, "/sub/a?since=0&timeout=0");
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, "published"),
        "{}",
        r.brief()
    );
    let r = request(s.admin, "DELETE", "/pub/a", &with, None);
    assert_eq!(r.status, 204, "{}", r.brief());

    // /health stays open on both listeners; the public listener needs no secret.
    for addr in [s.admin, s.public] {
        let r = get(addr, "/health");
        assert_eq!(r.status, 200, "{addr} /health: {}", r.brief());
    }
    // A refused request leaves the connection usable for the next one.
    let mut c = common::http::Conn::open(s.admin);
    let r = c.request("GET", "/stats", &[], None);
    assert_eq!(r.status, 401, "{}", r.brief());
    let r = c.request("GET", "/stats", &with, None);
    assert_eq!(
        r.status,
        200,
        "same connection, with the secret: {}",
        r.brief()
    );
}

#[test]
fn a_file_that_cannot_be_a_secret_stops_the_server_at_start() {
    let dir = TempDir::new("admin-token-bad");
    let missing = dir.path.join("missing").display().to_string();
    let empty = secret_file(&dir, b"\n");
    for (file, why) in [(missing.as_str(), "missing"), (empty.as_str(), "empty")] {
        let out = Command::new(server_bin())
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--admin-token-file", file])
            .env_remove("HOLDFAST_REDIS")
            .output()
            .expect("run the server binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{why} file: stderr {stderr}");
        assert!(
            stderr.contains("--admin-token-file"),
            "{why} file: the message names the flag: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{why} file: the server started");
    }
}
