//! Other processes, from /proc and procps: CPU time and resident memory of a process,
//! its children, and signalling a whole process group.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// utime + stime of a process, from `/proc/PID/stat`.
pub fn cpu_time_of(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // The command name (field 2) may contain spaces; the fields after its ')' are fixed.
    let rest = &stat[stat.rfind(')').expect("stat has (comm)") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    Duration::from_secs_f64((utime + stime) as f64 / clock_ticks_per_second() as f64)
}

/// Resident set size of a process in bytes, from `/proc/PID/status` (for servers whose
/// `/stats` cannot be asked, e.g. while they refuse connections, and for processes that
/// have no `/stats`, such as nginx workers).
pub fn rss_of(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kb * 1024
}

/// Process ids whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return kids;
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Fields after the `(comm)`: state, ppid, ...
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(pid) {
            kids.push(child);
        }
    }
    kids
}

/// Sends `signal` to every process in process group `pgid`, with the `kill` command
/// (procps). Errors are ignored: the group may be gone already.
pub fn kill_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// An installed program: `$ENV` if set, else `name` on PATH or in one of `dirs` (a
/// non-root PATH may lack /usr/sbin). Panics with where it looked and `install`.
pub fn find_bin(env: &str, name: &str, dirs: &[&str], install: &str) -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(dirs.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed (looked on PATH, {}; set {env}=/path/to/{name} to \
                 point elsewhere). {install}",
                dirs.join(", ")
            )
        })
}
