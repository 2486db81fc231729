//! End to end: a real holdfast server as a child process, the stress binary driving it,
//! and the JSON summary checked. The server binary is the `holdfast` built next to this
//! test (`target/<profile>/holdfast`, present after `cargo build` or `cargo test
//! --workspace`), or the one `HOLDFAST_STRESS_SERVER` names; without either the
//! server tests say so and skip.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use holdfast_stress::startup;

mod common;

use common::stress;

fn server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HOLDFAST_STRESS_SERVER") {
        return Some(PathBuf::from(p));
    }
    // target/<profile>/deps/smoke-<hash> → target/<profile>/holdfast
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.parent()?.join("holdfast");
    candidate.is_file().then_some(candidate)
}

/// A holdfast child process, killed when dropped.
struct Server {
    child: Child,
    public: String,
    admin: String,
}

impl Server {
    fn start(bin: &PathBuf) -> Server {
        let mut child = Command::new(bin)
            .args(["--threads", "1", "--listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let out = child.stdout.take().expect("piped stdout");
        match startup::read_listening(out, Duration::from_secs(10)) {
            Ok(l) => Server {
                child,
                public: l.public.to_string(),
                admin: l.admin.to_string(),
            },
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{}: {e}", bin.display());
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_subscriber_gets_every_message_in_every_mode() {
    let Some(bin) = server_binary() else {
        eprintln!(
            "SKIPPED: no holdfast binary next to the test binary; run `cargo build -p holdfast` \
             first or set HOLDFAST_STRESS_SERVER"
        );
        return;
    };
    let server = Server::start(&bin);
    for mode in ["longpoll", "sse", "websocket", "ndjson"] {
        let (code, s) = stress(&[
            "--target",
            &server.public,
            "--admin",
            &server.admin,
            "--connections",
            "200",
            "--procs",
            "2",
            "--mode",
            mode,
            "--publish",
            "2",
            "--hold",
            "300ms",
            "--publish-interval",
            "100ms",
            "--channel",
            &format!("smoke-{mode}"),
        ]);
        assert_eq!(code, 0, "{mode}: {s:#}");
        assert_eq!(s["mode"], mode);
        assert_eq!(s["procs"], 2);
        assert_eq!(s["connected"], 200, "{mode}: {s:#}");
        assert_eq!(s["held"], 200, "{mode}: {s:#}");
        assert_eq!(s["published"], 2, "{mode}: {s:#}");
        assert_eq!(s["expected"], 400, "{mode}: {s:#}");
        assert_eq!(s["received"], 400, "{mode}: {s:#}");
        assert_eq!(s["lost"], 0, "{mode}: {s:#}");
        assert_eq!(s["duplicates"], 0, "{mode}: {s:#}");
        assert_eq!(s["errors"], serde_json::json!({}), "{mode}: {s:#}");
        assert_eq!(s["latency_us"]["count"], 400, "{mode}: {s:#}");
        assert!(s["latency_us"]["max"].as_u64() >= s["latency_us"]["p50"].as_u64());
    }
}

#[test]
fn refused_connections_are_counted_and_fail_the_run() {
    // Port 1 on loopback: nothing listens there, so every connect is refused.
    let (code, s) = stress(&[
        "--target",
        "127.0.0.1:1",
        "--connections",
        "20",
        "--hold",
        "100ms",
    ]);
    assert_eq!(code, 1, "{s:#}");
    assert_eq!(s["connected"], 0);
    assert_eq!(s["errors"]["connect_refused"], 20, "{s:#}");
    assert_eq!(s["ok"], false);
}
