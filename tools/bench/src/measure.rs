//! What the harness reads from `/proc`: a process's memory and CPU time, the kernel's
//! slab total, and the facts about the machine that go into the report.
//!
//! Memory is read from `/proc/PID/smaps_rollup` (`Rss`, and `Private_Clean +
//! Private_Dirty`: pages only this process maps, so shared libraries and shared memory
//! zones do not count). CPU is read two ways: `utime + stime` from `/proc/PID/stat`, in
//! clock ticks (10 ms each at the usual `CLK_TCK` of 100, too coarse for a fan-out that
//! lasts a few milliseconds), and the sum over the process's threads of the first field
//! of `/proc/PID/task/TID/schedstat`, the nanoseconds each thread spent on a CPU.

use std::fs;
use std::io;
use std::process::Command;

/// Memory of one process, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mem {
    pub rss: u64,
    pub private: u64,
}

impl Mem {
    pub fn add(self, o: Mem) -> Mem {
        Mem {
            rss: self.rss + o.rss,
            private: self.private + o.private,
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// `Rss` and `Private_Clean + Private_Dirty` from `/proc/PID/smaps_rollup`.
pub fn mem(pid: u32) -> io::Result<Mem> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = fs::read_to_string(&path)?;
    let kb = |key: &str| -> io::Result<u64> {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .map(|v: u64| v * 1024)
            .ok_or_else(|| invalid(format!("{path}: no `{key}` line")))
    };
    Ok(Mem {
        rss: kb("Rss:")?,
        private: kb("Private_Clean:")? + kb("Private_Dirty:")?,
    })
}

/// CPU time used by one process so far (all its threads).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// utime + stime, clock ticks.
    pub ticks: u64,
    /// Sum of the per-thread schedstat run times, nanoseconds.
    pub ns: u64,
}

impl Cpu {
    pub fn add(self, o: Cpu) -> Cpu {
        Cpu {
            ticks: self.ticks + o.ticks,
            ns: self.ns + o.ns,
        }
    }

    pub fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            ticks: self.ticks.saturating_sub(earlier.ticks),
            ns: self.ns.saturating_sub(earlier.ns),
        }
    }
}

/// utime + stime (ticks) and the schedstat nanoseconds of process `pid`.
pub fn cpu(pid: u32) -> io::Result<Cpu> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after its ')' are fixed.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| invalid(format!("/proc/{pid}/stat: no ')'")))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let num = |i: usize| -> io::Result<u64> {
        f.get(i - 3)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("/proc/{pid}/stat: field {i}")))
    };
    let ticks = num(14)? + num(15)?;
    let mut ns = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task"))? {
        let t = t?;
        // A thread may exit between readdir and read; it then simply does not count.
        if let Ok(s) = fs::read_to_string(t.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(Cpu { ticks, ns })
}

/// Field `name` (`"Slab"`, `"MemAvailable"`, …) of `/proc/meminfo` text, in bytes.
pub fn meminfo_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    })
}

/// `Slab` from `/proc/meminfo`, bytes. Machine-wide: every socket on the machine counts.
pub fn slab_bytes() -> io::Result<u64> {
    let text = fs::read_to_string("/proc/meminfo")?;
    meminfo_field(&text, "Slab").ok_or_else(|| invalid("/proc/meminfo: no Slab line".into()))
}

/// TCP sockets in use and in TIME_WAIT, machine-wide, from `/proc/net/sockstat`: the
/// check on the Slab figure (its growth should come with 2 sockets per connection).
pub fn tcp_sockets() -> io::Result<(u64, u64)> {
    let text = fs::read_to_string("/proc/net/sockstat")?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .ok_or_else(|| invalid("/proc/net/sockstat: no TCP line".into()))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let get = |k: &str| {
        f.iter()
            .position(|w| *w == k)
            .and_then(|i| f.get(i + 1)?.parse::<u64>().ok())
            .ok_or_else(|| invalid(format!("/proc/net/sockstat: no TCP {k}")))
    };
    Ok((get("inuse")?, get("tw")?))
}

/// Children of `pid` (scans `/proc/*/stat` for the parent pid field).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out.sort_unstable();
    out
}

/// Output of a command, trimmed; `None` if it cannot be run or fails.
pub fn command_output(prog: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(prog).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        String::from_utf8_lossy(&out.stderr).into_owned()
    } else {
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Trim line ends only: `free -g` lines up its columns with leading spaces.
    out.status
        .success()
        .then(|| text.trim_end().trim_start_matches('\n').to_string())
}

/// Clock ticks per second for `/proc/PID/stat`: `getconf CLK_TCK`, else 100 (stated in
/// the report either way).
pub fn clk_tck() -> (u64, &'static str) {
    match command_output("getconf", &["CLK_TCK"]).and_then(|s| s.parse().ok()) {
        Some(t) if t > 0 => (t, "getconf CLK_TCK"),
        _ => (100, "assumed (getconf CLK_TCK unavailable)"),
    }
}

/// The machine as the report states it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    pub nproc: String,
    pub cpu_model: String,
    pub free_g: String,
    pub kernel: String,
    pub rustc: String,
    pub nofile_limit: String,
    pub clk_tck: u64,
    pub clk_tck_source: String,
}

pub fn machine() -> Machine {
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let (clk_tck, src) = clk_tck();
    Machine {
        nproc: command_output("nproc", &[]).unwrap_or_else(|| "unknown".into()),
        cpu_model,
        free_g: command_output("free", &["-g"]).unwrap_or_else(|| "unknown".into()),
        kernel: command_output("uname", &["-r"]).unwrap_or_else(|| "unknown".into()),
        rustc: command_output("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
        nofile_limit: holdfast::sys::nofile_limits()
            .map(|(s, h)| format!("soft {s}, hard {h}"))
            .unwrap_or_else(|e| e.to_string()),
        clk_tck,
        clk_tck_source: src.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_memory_and_cpu() {
        let me = std::process::id();
        let m = mem(me).unwrap();
        assert!(m.rss > 0 && m.private > 0 && m.private <= m.rss, "{m:?}");
        let start = cpu(me).unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let used = cpu(me).unwrap().since(start);
        assert!(
            used.ns >= 10_000_000,
            "busy 30 ms, schedstat says {} ns ({x})",
            used.ns
        );
    }

    #[test]
    fn machine_wide_counters_read() {
        assert!(slab_bytes().unwrap() > 0);
        tcp_sockets().unwrap();
    }

    #[test]
    fn a_missing_process_is_an_error() {
        assert!(mem(u32::MAX).is_err());
        assert!(cpu(u32::MAX).is_err());
    }
}
