//! What the stress tool's integration tests share.

use std::process::{Command, Stdio};

use serde_json::Value;

pub const STRESS: &str = env!("CARGO_BIN_EXE_holdfast-stress");

/// Runs the stress binary with `args` plus `--quiet --json - --max-time 20s`; returns
/// (exit code, summary).
pub fn stress(args: &[&str]) -> (i32, Value) {
    let out = Command::new(STRESS)
        .args(args)
        .args(["--quiet", "--json", "-", "--max-time", "20s"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run holdfast-stress");
    let text = String::from_utf8_lossy(&out.stdout);
    let summary =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("summary is not JSON ({e}): {text}"));
    (out.status.code().unwrap_or(-1), summary)
}
