//! The command line: `--help` lists every flag of `docs/protocol.md`, and bad flags or values get a
//! clear message and exit status 2 without starting a server.

mod common;

use std::process::Command;

const FLAGS: [&str; 22] = [
    "--listen",
    "--admin-listen",
    "--threads",
    "--poll-timeout",
    "--max-poll-timeout",
    "--buffer-messages",
    "--message-ttl",
    "--max-message-size",
    "--header-timeout",
    "--keepalive-timeout",
    "--max-connections",
    "--sse-heartbeat",
    "--sse-max-backlog",
    "--stream-max-backlog",
    "--admin-token-file",
    "--redis",
    "--redis-prefix",
    "--redis-timeout",
    "--subscribe-key",
    "--token-leeway",
    "--token-cookie",
    "--allow-origin",
];

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(common::server::server_bin())
        .args(args)
        .output()
        .expect("run the server binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_flag_with_its_default() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for flag in FLAGS {
        assert!(stdout.contains(flag), "--help lacks {flag}:\n{stdout}");
    }
    for default in [
        "127.0.0.1:8080",
        "127.0.0.1:8081",
        "30s",
        "120s",
        "64KiB",
        "256KiB",
    ] {
        assert!(
            stdout.contains(default),
            "--help lacks default {default}:\n{stdout}"
        );
    }
}

#[test]
fn bad_flags_and_values_exit_2_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["--poll-timeout", "soon"], "--poll-timeout"),
        (&["--max-message-size", "12 parsecs"], "--max-message-size"),
        (&["--threads", "0"], "--threads"),
        (&["--listen", "not-an-address"], "--listen"),
        (&["--buffer-messages=-3"], "--buffer-messages"),
        (&["--no-such-flag"], "--no-such-flag"),
        (&["--token-cookie", "a b"], "--token-cookie"),
        (&["--token-leeway", "10m"], "--token-leeway"),
        (&["--allow-origin", "app.example"], "--allow-origin"),
        (&["--allow-origin", "https://a.example/"], "--allow-origin"),
        // Cross-flag: the default hold may not exceed the clamp.
        (
            &["--poll-timeout", "200s", "--max-poll-timeout", "100s"],
            "--max-poll-timeout",
        ),
    ];
    for (args, mention) in cases {
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?} exited {code:?}; stderr: {stderr}");
        assert!(
            stderr.contains(mention),
            "{args:?}: message should name {mention}: {stderr}"
        );
        assert!(!stdout.contains("listening"), "{args:?} started a server");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
}
