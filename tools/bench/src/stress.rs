//! Driving the load generator, `holdfast-stress` (tools/stress), and reading its JSON
//! summary. The harness never talks to subscribers itself: it starts the stress tool,
//! watches the server's own counters to know when the connections are held, measures,
//! and reads what the stress tool reports at the end: its JSON summary, read with the
//! type the stress tool writes it with ([`Summary`], from its library).

use crate::procs::Proc;
pub use holdfast_stress::report::Summary;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// One run of the stress tool.
#[derive(Clone, Debug)]
pub struct Run {
    pub targets: Vec<SocketAddr>,
    pub admins: Vec<SocketAddr>,
    pub connections: u64,
    /// `longpoll`, `sse`, `websocket` or `ndjson` (the stress tool's `--mode`).
    pub mode: &'static str,
    pub protocol: &'static str,
    pub channel: String,
    /// New connections per second.
    pub rate: u64,
    /// How long the connections are held before the publish phase (or the end).
    pub hold: Duration,
    pub publish: u64,
    /// Publish through the first admin address only (`--publish-once`: cluster nodes).
    pub publish_once: bool,
    pub publish_interval: Option<Duration>,
    pub procs: Option<u32>,
    /// The stress tool's own bound on its whole run.
    pub max_time: Duration,
}

fn dur(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn join(a: &[SocketAddr]) -> String {
    a.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Run {
    pub fn args(&self, json: &Path) -> Vec<String> {
        let mut a = vec![
            "--target".to_string(),
            join(&self.targets),
            "--connections".into(),
            self.connections.to_string(),
            "--mode".into(),
            self.mode.into(),
            "--protocol".into(),
            self.protocol.into(),
            "--channel".into(),
            self.channel.clone(),
            "--rate".into(),
            self.rate.to_string(),
            "--hold".into(),
            dur(self.hold),
            "--publish".into(),
            self.publish.to_string(),
            "--max-time".into(),
            dur(self.max_time),
            "--json".into(),
            json.display().to_string(),
            "--quiet".into(),
        ];
        if !self.admins.is_empty() {
            a.push("--admin".into());
            a.push(join(&self.admins));
        }
        if self.publish_once {
            a.push("--publish-once".into());
        }
        if let Some(i) = self.publish_interval {
            a.push("--publish-interval".into());
            a.push(dur(i));
        }
        if let Some(p) = self.procs {
            a.push("--procs".into());
            a.push(p.to_string());
        }
        a
    }

    /// Starts the stress tool; its output goes to `log`, its summary to `json`.
    pub fn spawn(&self, bin: &Path, json: &Path, log: &Path) -> io::Result<Proc> {
        let _ = fs::remove_file(json);
        let out = fs::File::create(log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.args(self.args(json))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        Proc::spawn(&mut cmd, "holdfast-stress")
    }
}

/// Reads the summary the stress tool wrote to `path` (a partial one from a failed run
/// reads too: every key is optional).
pub fn read_summary(path: &Path) -> io::Result<Summary> {
    let text = fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// A summary's errors as `kind=count` pairs, or `none`.
pub fn errors_text(s: &Summary) -> String {
    if s.errors.values().all(|&c| c == 0) {
        return "none".into();
    }
    s.errors
        .iter()
        .filter(|(_, &c)| c > 0)
        .map(|(k, c)| format!("{k}={c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The stress binary: `--stress PATH`, else `holdfast-stress` beside this executable,
/// else the places the workspace builds it.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.exists() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--stress {}: no such file", p.display()))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("holdfast-stress")));
    if let Some(p) = beside.filter(|p| p.exists()) {
        return Ok(p);
    }
    Err("holdfast-stress not found beside holdfast-bench; build it (cargo build --release -p holdfast-stress) or pass --stress PATH".into())
}
