//! The one-million run (`million`, issue 15): N subscriptions (1,000,000 by default)
//! held by holdfast nodes in cluster mode on one Redis, one publish through one node,
//! and the same N held by as many `holdfast-floor` processes (the bare-epoll floor,
//! each published to through its own admin address), in the same run, one after the
//! other, for each subscription mode asked (long-poll and SSE by default).
//!
//! One process may hold under 20,000 sockets here (the open-file hard limit), so the
//! subscriptions are spread over ⌈N / per-node⌉ server processes, and the stress tool
//! spreads its side over ⌈N / 15,000⌉ worker processes and 509 loopback source
//! addresses. Before anything starts, [`check`] checks that the machine can take
//! it (memory, open files, processes, the ephemeral port range, `somaxconn`,
//! conntrack) and refuses with the setting to change; `tuning/README.md` gives each
//! setting's reason. Every phase is bounded; every process is in a process group the
//! harness kills on return, on error, on panic and on Ctrl-C (`procs.rs`).
//!
//! What a row holds: held, received, lost, publish → last receipt (the stress tool's
//! maximum latency) and its percentiles, server user-space memory per connection (Σ
//! RSS growth ÷ held), kernel memory per connection (machine-wide Slab growth ÷ held:
//! both ends of every connection), machine memory used (MemTotal − MemAvailable)
//! growth, the CPU of all server processes while idle and during the fan-out (Redis's
//! and the stress tool's beside them), and the ramp rate. During the ramp the harness
//! samples Σ held, Σ RSS and Slab about once a second: the memory-vs-connections curve.

use crate::cluster::Redis;
use crate::measure::{self, Cpu};
use crate::scenarios::{self, div, Env, Params, Row, Snap};
use crate::server::{self, Kind, Server};
use serde::Serialize;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// Connections one stress worker holds (the stress tool's own default split).
const PER_WORKER: u64 = 15_000;
/// Memory a held connection costs the machine, both ends, as measured here with
/// `tools/stress/scale.sh` (about 10.2 KiB of kernel slab per connection pair, plus
/// the two processes' user space), rounded up: the pre-flight's estimate.
const BYTES_PER_CONNECTION: u64 = 12 * 1024;
/// Kept free beyond the estimate: the build, the shell, the page cache.
const MEMORY_SLACK: u64 = 1 << 30;
/// Idle-CPU window with everything held.
const IDLE_WINDOW: Duration = Duration::from_secs(4);
/// Pause after the last connection is held before memory is read.
const SETTLE: Duration = Duration::from_secs(2);

/// The stress modes the run takes.
pub const MODES: [&str; 3] = ["longpoll", "sse", "websocket"];

/// One point of the memory-vs-connections curve.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CurvePoint {
    /// Σ subscribers the server processes report.
    pub held: u64,
    /// Σ RSS growth of the server processes since before the ramp, bytes.
    pub rss_delta: f64,
    /// Machine-wide Slab growth since before the ramp, bytes.
    pub slab_delta: f64,
}

/// The row's scenario key for `mode`.
pub fn key(mode: &str) -> &'static str {
    match mode {
        "sse" => "million_sse",
        "websocket" => "million_websocket",
        _ => "million_longpoll",
    }
}

/// How many server processes hold `n` at `per_node` each.
pub fn nodes(n: u64, per_node: u64) -> u64 {
    n.div_ceil(per_node.max(1))
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_u64(path: &str) -> Option<u64> {
    read(path)?.split_whitespace().next()?.parse().ok()
}

/// `MemTotal − MemAvailable`, bytes: what the machine uses.
pub fn machine_used() -> Option<u64> {
    let info = read("/proc/meminfo")?;
    let field = |k| measure::meminfo_field(&info, k);
    Some(field("MemTotal")?.saturating_sub(field("MemAvailable")?))
}

/// A soft/hard pair from `/proc/self/limits` (`"Max open files"`, `"Max processes"`).
fn limit(name: &str) -> Option<(u64, u64)> {
    let text = read("/proc/self/limits")?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    let f: Vec<&str> = line[name.len()..].split_whitespace().collect();
    let v = |s: &str| {
        if s == "unlimited" {
            Some(u64::MAX)
        } else {
            s.parse().ok()
        }
    };
    Some((v(f.first()?)?, v(f.get(1)?)?))
}

/// What the machine offers, read once; [`check`] judges it.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub mem_available: Option<u64>,
    pub nofile_hard: Option<u64>,
    pub nproc_soft: Option<u64>,
    pub port_range: Option<(u64, u64)>,
    pub somaxconn: Option<u64>,
    /// (count, max) when the conntrack module is loaded.
    pub conntrack: Option<(u64, u64)>,
    /// `net.ipv4.tcp_mem` max, pages.
    pub tcp_mem_max_pages: Option<u64>,
    /// Processes running now (for the process-count check).
    pub processes: u64,
}

impl Machine {
    pub fn read() -> Machine {
        let mem_available =
            read("/proc/meminfo").and_then(|info| measure::meminfo_field(&info, "MemAvailable"));
        let port_range = read("/proc/sys/net/ipv4/ip_local_port_range").and_then(|s| {
            let mut w = s.split_whitespace().map(|v| v.parse::<u64>().ok());
            Some((w.next()??, w.next()??))
        });
        let conntrack = read_u64("/proc/sys/net/netfilter/nf_conntrack_count")
            .zip(read_u64("/proc/sys/net/netfilter/nf_conntrack_max"));
        let tcp_mem_max_pages = read("/proc/sys/net/ipv4/tcp_mem")
            .and_then(|s| s.split_whitespace().nth(2)?.parse().ok());
        let processes = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .is_some_and(|s| s.parse::<u32>().is_ok())
                    })
                    .count() as u64
            })
            .unwrap_or(0);
        Machine {
            mem_available,
            nofile_hard: limit("Max open files").map(|l| l.1),
            nproc_soft: limit("Max processes").map(|l| l.0),
            port_range,
            somaxconn: read_u64("/proc/sys/net/core/somaxconn"),
            conntrack,
            tcp_mem_max_pages,
            processes,
        }
    }
}

/// Source addresses the stress tool spreads its connections over by default
/// (127.0.0.2–127.0.1.254).
const SOURCE_ADDRESSES: u64 = 509;
/// Least `somaxconn` the ramp is run with: the nodes' accept queues take bursts of the
/// ramp while a node is busy (tuning/sysctl.conf has the measurements).
const MIN_SOMAXCONN: u64 = 1024;

/// Judges whether `m` can hold `n` connections at `per_node` per server process.
/// `Err`: why not, and which setting to change (each in tuning/README.md). `Ok`:
/// warnings that do not stop the run, for the report.
pub fn check(m: &Machine, n: u64, per_node: u64) -> Result<Vec<String>, String> {
    let mut refuse = Vec::new();
    let mut warn = Vec::new();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let need = n * BYTES_PER_CONNECTION + MEMORY_SLACK;
    match m.mem_available {
        Some(avail) if avail < need => refuse.push(format!(
            "memory: {n} connections need about {:.1} GiB ({} KiB per connection for both \
             ends, mostly kernel socket memory, + 1 GiB), MemAvailable is {:.1} GiB; stop \
             what else runs or lower --million-n",
            gib(need),
            BYTES_PER_CONNECTION / 1024,
            gib(avail)
        )),
        None => warn.push("memory: /proc/meminfo has no MemAvailable; not checked".into()),
        _ => {}
    }
    let per_process = per_node.max(PER_WORKER) + 64;
    match m.nofile_hard {
        Some(h) if h < per_process => refuse.push(format!(
            "open files: each server process holds up to {per_node} sockets and each stress \
             worker {PER_WORKER}, but the open-file hard limit is {h}; raise it (ulimit -Hn, \
             tuning/limits.conf) or lower --million-per-node"
        )),
        _ => {}
    }
    let procs = nodes(n, per_node) + n.div_ceil(PER_WORKER) + 8;
    match m.nproc_soft {
        Some(limit) if limit < m.processes + procs => refuse.push(format!(
            "processes: the run starts {procs} processes and {} run already, over the \
             process limit {limit} (ulimit -u)",
            m.processes
        )),
        _ => {}
    }
    if let Some((lo, hi)) = m.port_range {
        let span = (hi + 1).saturating_sub(lo);
        let per_address = n.div_ceil(SOURCE_ADDRESSES);
        if span < per_address {
            refuse.push(format!(
                "ephemeral ports: {n} connections over {SOURCE_ADDRESSES} source addresses \
                 need {per_address} ports each, net.ipv4.ip_local_port_range has {span} \
                 ({lo}-{hi}); widen it (tuning/sysctl.conf)"
            ));
        }
    }
    match m.somaxconn {
        Some(s) if s < MIN_SOMAXCONN => refuse.push(format!(
            "accept queues: net.core.somaxconn is {s}; a ramp of thousands of connections a \
             second overflows queues that short and stalls clients 1-3 s per dropped SYN; set \
             it to 4096 or more (tuning/sysctl.conf)"
        )),
        _ => {}
    }
    // Conntrack tracks loopback connections only when rules make it (count > 0 while
    // anything is connected); one entry per connection.
    if let Some((count, max)) = m.conntrack {
        if count > 0 && max < count + n + n / 10 {
            refuse.push(format!(
                "conntrack: the table is in use ({count} entries) and holds at most {max}; \
                 {n} more connections would overflow it and the kernel would drop packets \
                 (\"nf_conntrack: table full\"); raise net.netfilter.nf_conntrack_max to at \
                 least {} (tuning/sysctl.conf)",
                count + n + n / 10
            ));
        }
    }
    if let Some(pages) = m.tcp_mem_max_pages {
        // A message queued on a socket takes a whole page until the reader has it.
        if pages < n {
            warn.push(format!(
                "net.ipv4.tcp_mem max is {pages} pages: one message queued on all {n} sockets \
                 at once would be {n} pages; the fan-out stays under it only as long as the \
                 readers keep up (tuning/sysctl.conf)"
            ));
        }
    }
    if refuse.is_empty() {
        Ok(warn)
    } else {
        Err(format!(
            "this machine cannot take {n} connections:\n  - {}",
            refuse.join("\n  - ")
        ))
    }
}

fn received_any(row: &Row) -> bool {
    row.get("received").is_some_and(|r| r > 0.0)
}

/// Now, in unix µs (the stress tool's payload clock).
fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Σ held over the servers, asking again (for up to 20 s) when one does not answer
/// within `/stats`'s 2 s: with a million connections ramping over two cores, a node
/// can be that late to its admin listener without anything being wrong.
fn held_patiently(servers: &[&Server]) -> io::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match scenarios::held(servers) {
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// `r`, with what the run was doing when it failed.
fn at<T>(what: &str, r: io::Result<T>) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// CPU of the processes the run measures, at one moment.
#[derive(Clone, Copy)]
struct Tick {
    at: Instant,
    /// The same moment in unix µs, the stress tool's clock for its publish.
    wall: u64,
    servers: Cpu,
    redis: Cpu,
    stress: Cpu,
}

/// Processes outside the servers whose CPU is read at every tick: Redis and the stress
/// tool's. A process that has exited (a stress worker that finished) keeps the last
/// reading it had, so a sum never goes backwards.
struct Others {
    redis: Option<u32>,
    stress: Vec<(u32, Cpu)>,
}

impl Others {
    fn stress_cpu(&mut self) -> Cpu {
        for (pid, last) in &mut self.stress {
            if let Ok(c) = measure::cpu(*pid) {
                *last = c;
            }
        }
        self.stress
            .iter()
            .fold(Cpu::default(), |a, (_, c)| a.add(*c))
    }
}

impl Tick {
    fn take(servers: &[&Server], others: &mut Others) -> io::Result<Tick> {
        let at = Instant::now();
        let wall = unix_micros();
        let s = servers
            .iter()
            .try_fold(Cpu::default(), |a, s| Ok::<_, io::Error>(a.add(s.cpu()?)))?;
        Ok(Tick {
            at,
            wall,
            servers: s,
            redis: others
                .redis
                .and_then(|p| measure::cpu(p).ok())
                .unwrap_or_default(),
            stress: others.stress_cpu(),
        })
    }
}

/// Runs the 1M measurement for every mode asked, holdfast (cluster mode) and the floor
/// (each when in `kinds`), one after the other.
pub fn million(env: &Env, p: &Params, kinds: &[Kind], redis_bin: Option<&Path>) -> Vec<Row> {
    let mut rows = Vec::new();
    for mode in &p.million_modes {
        for &kind in kinds
            .iter()
            .filter(|&&k| matches!(k, Kind::Holdfast | Kind::Floor))
        {
            eprintln!(
                "holdfast-bench: million {mode} {} ({} connections over {} processes)",
                kind.name(),
                p.million_n,
                nodes(p.million_n, p.million_per_node)
            );
            let mut row = Row::new_keyed(key(mode), kind.name(), p.million_n);
            if kind == Kind::Holdfast && redis_bin.is_none() {
                // Said once in the report's notes, with the reason; not a failure.
                row.notes
                    .push("not run: cluster mode needs redis-server (see the notes)".into());
                rows.push(row);
                continue;
            }
            if let Err(e) = one(env, p, kind, mode, redis_bin, &mut row) {
                row.notes.push(format!("failed: {e}"));
            }
            rows.push(row);
            // Let the kernel take back the closed sockets before the next run reads
            // Slab (the stress tool resets every connection; no TIME_WAIT is left).
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    rows
}

fn one(
    env: &Env,
    p: &Params,
    kind: Kind,
    mode: &str,
    redis_bin: Option<&Path>,
    row: &mut Row,
) -> io::Result<()> {
    let n = p.million_n;
    let k = nodes(n, p.million_per_node);
    let tag = format!("{}-{}", key(mode), kind.name());
    // holdfast: cluster mode on a Redis of its own, so one publish reaches every node.
    let redis = match kind {
        Kind::Holdfast => {
            let bin = redis_bin.ok_or_else(|| {
                io::Error::other("redis-server not found (see the report's notes)")
            })?;
            Some(Redis::start(
                bin,
                &env.logs,
                &env.logs.join(format!("redis-{tag}.log")),
            )?)
        }
        _ => None,
    };
    // One prefix for all the nodes: they are one cluster.
    let prefix = format!("hfmillion{}", server::unique());
    let mut servers = Vec::new();
    for i in 0..k {
        let log = env.logs.join(format!("{tag}-node{i}.log"));
        servers.push(match &redis {
            Some(r) => Server::start_holdfast_with(
                kind,
                &env.holdfast,
                1,
                &log,
                &[
                    "--redis".into(),
                    r.url(),
                    "--redis-prefix".into(),
                    prefix.clone(),
                    "--sse-heartbeat".into(),
                    format!("{}s", p.million_heartbeat_secs),
                ],
            )?,
            None => Server::start_floor(&env.floor, &log)?,
        });
    }
    let refs: Vec<&Server> = servers.iter().collect();
    row.set("nodes", k as f64);
    row.set("stress_workers", n.div_ceil(PER_WORKER) as f64);

    let mut run = env.stress_run(&refs, n, "million", p);
    run.mode = MODES
        .iter()
        .copied()
        .find(|&m| m == mode)
        .unwrap_or("longpoll");
    run.rate = p.million_rate;
    run.publish = 1;
    run.publish_once = redis.is_some();
    // Long enough for the settle, memory reading and idle window after the last
    // connection is held, before the stress tool publishes.
    run.hold = SETTLE + IDLE_WINDOW + Duration::from_secs(8);
    let ramp = Duration::from_secs_f64(n as f64 / p.million_rate as f64);
    let drain = Duration::from_secs(10 + n / 20_000);
    run.max_time = ramp * 3 + run.hold + drain + Duration::from_secs(60);

    std::thread::sleep(Duration::from_millis(500));
    let before = at("memory before the ramp", Snap::take(&refs))?;
    let used0 = machine_used().unwrap_or(0);
    let json = env.logs.join(format!("stress-{tag}.json"));
    let log = env.logs.join(format!("stress-{tag}.log"));
    let _ = std::fs::remove_file(&json);
    let mut sp = run.spawn(&env.stress, &json, &log)?;

    // Ramp: the curve, until everything is held: a reading every 100 ms while under 5 %
    // of N is held (so the curve starts near 10,000 at a million), then every second.
    let ramp_start = Instant::now();
    let ramp_deadline = ramp_start + ramp * 3 + Duration::from_secs(30);
    let mut curve = Vec::new();
    let held = loop {
        let h = at("/stats during the ramp", held_patiently(&refs))?;
        let mem = refs.iter().try_fold(measure::Mem::default(), |a, s| {
            Ok::<_, io::Error>(a.add(s.mem()?))
        })?;
        let slab = measure::slab_bytes()?;
        curve.push(CurvePoint {
            held: h,
            rss_delta: mem.rss as f64 - before.mem.rss as f64,
            slab_delta: slab as f64 - before.slab as f64,
        });
        if h >= n || Instant::now() >= ramp_deadline || !matches!(sp.try_wait(), Ok(None)) {
            break h;
        }
        std::thread::sleep(if h < n / 20 {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        });
    };
    row.curve = curve;
    if held < n {
        row.notes
            .push(format!("only {held} of {n} held when measured"));
    }
    std::thread::sleep(SETTLE);
    let after = at("memory after the ramp", Snap::take(&refs))?;
    let used1 = machine_used().unwrap_or(0);
    let held_now = at("/stats after the ramp", held_patiently(&refs))? as f64;
    row.set("held", held_now);
    scenarios::memory_metrics(row, &before, &after, held_now);
    row.set("machine_used_delta_bytes", used1 as f64 - used0 as f64);
    row.set(
        "machine_used_per_conn_bytes",
        div(used1 as f64 - used0 as f64, held_now),
    );

    // The stress tool's processes: its parent and its workers, for the CPU it uses.
    let redis_pid = redis.as_ref().map(Redis::pid);
    let mut others = Others {
        redis: redis_pid,
        stress: std::iter::once(sp.pid())
            .chain(measure::children_of(sp.pid()))
            .map(|p| (p, Cpu::default()))
            .collect(),
    };

    // Idle: everything held, nothing published.
    let i0 = Tick::take(&refs, &mut others)?;
    std::thread::sleep(IDLE_WINDOW);
    let i1 = Tick::take(&refs, &mut others)?;
    let idle_secs = i1.at.duration_since(i0.at).as_secs_f64();
    let idle_percent = i1.servers.since(i0.servers).ns as f64 / 1e9 / idle_secs * 100.0;

    // Fan-out: a CPU reading every 100 ms from here until the stress tool exits. The
    // window is placed afterwards from the stress tool's own clock: it starts at the
    // last reading before the first publish was sent (`first_publish_unix_us`) and
    // ends at the first reading after that + the largest publish → receipt latency.
    // Not from the servers' counters: a node busy with its share of a million
    // deliveries can count the publish, or answer `/stats`, seconds late.
    let mut ticks = Vec::new();
    let sample_until = Instant::now() + run.hold + drain + Duration::from_secs(60);
    while matches!(sp.try_wait(), Ok(None)) && Instant::now() < sample_until {
        ticks.push(Tick::take(&refs, &mut others)?);
        std::thread::sleep(Duration::from_millis(100));
    }
    let end = scenarios::finish_stress(sp, &json, run.max_time);
    row.take_summary(&end);
    if let Some(s) = row.get("ramp_secs") {
        row.set("ramp_per_sec", div(held_now, s));
    }
    let published_at = end.summary.as_ref().map_or(0, |s| s.first_publish_unix_us);
    // The idle window counts only if it ended before the publish (the stress tool's
    // hold leaves 8 s of margin, but a slow `/stats` after the ramp eats into it).
    if published_at > 0 && i1.wall > published_at {
        row.notes
            .push("idle CPU not reported: the publish came before the idle window ended".into());
    } else {
        row.set("idle_cpu_percent", idle_percent);
    }
    let Some(max_us) = row.get("latency_max_us").filter(|_| received_any(row)) else {
        row.notes
            .push("no fan-out figures: no delivery was received".into());
        return Ok(());
    };
    let Some(start) = ticks.iter().rev().find(|t| t.wall <= published_at).copied() else {
        row.notes
            .push("no CPU reading before the publish (or nothing was published)".into());
        return Ok(());
    };
    let t_end = published_at + max_us as u64;
    let last = ticks
        .iter()
        .find(|t| t.wall >= t_end)
        .or(ticks.last())
        .copied()
        .unwrap_or(start);
    let received = row.get("received").unwrap_or(0.0);
    let secs = last.at.saturating_duration_since(start.at).as_secs_f64();
    let servers_ns = last.servers.since(start.servers).ns as f64;
    row.set("window_ms", secs * 1e3);
    row.set("cpu_per_delivery_us", div(servers_ns / 1e3, received));
    row.set("fanout_cpu_percent", div(servers_ns / 1e9, secs) * 100.0);
    row.set(
        "stress_cpu_percent",
        div(last.stress.since(start.stress).ns as f64 / 1e9, secs) * 100.0,
    );
    if redis_pid.is_some() {
        row.set(
            "redis_cpu_us",
            last.redis.since(start.redis).ns as f64 / 1e3,
        );
    }
    row.set("wall_to_last_ms", max_us / 1e3);
    row.set("deliveries_per_sec", div(received, max_us / 1e6));
    drop(refs);
    drop(servers);
    drop(redis);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine that can take a million.
    fn roomy() -> Machine {
        Machine {
            mem_available: Some(20 << 30),
            nofile_hard: Some(20_000),
            nproc_soft: Some(96_365),
            port_range: Some((32_768, 60_999)),
            somaxconn: Some(4096),
            conntrack: Some((0, 262_144)),
            tcp_mem_max_pages: Some(575_796),
            processes: 200,
        }
    }

    #[test]
    fn a_roomy_machine_runs_with_the_tcp_mem_warning_only() {
        let w = check(&roomy(), 1_000_000, 18_000).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("net.ipv4.tcp_mem"), "{w:?}");
        // Untracked conntrack (count 0) is no reason to refuse, however small.
        assert!(check(&roomy(), 3_000, 1_500).unwrap().is_empty());
    }

    #[test]
    fn each_shortfall_is_refused_with_its_setting() {
        type Spoil = fn(&mut Machine);
        let cases: [(&str, Spoil); 6] = [
            ("MemAvailable", |m| m.mem_available = Some(8 << 30)),
            ("ulimit -Hn", |m| m.nofile_hard = Some(4096)),
            ("ulimit -u", |m| m.nproc_soft = Some(150)),
            ("ip_local_port_range", |m| {
                m.port_range = Some((60_000, 60_999))
            }),
            ("net.core.somaxconn", |m| m.somaxconn = Some(128)),
            ("nf_conntrack_max", |m| m.conntrack = Some((10, 262_144))),
        ];
        for (setting, spoil) in cases {
            let mut m = roomy();
            spoil(&mut m);
            let e = check(&m, 1_000_000, 18_000).unwrap_err();
            assert!(e.contains(setting), "{setting}: {e}");
            assert!(e.starts_with("this machine cannot take 1000000"), "{e}");
            assert_eq!(e.matches("\n  - ").count(), 1, "only one shortfall: {e}");
        }
    }

    #[test]
    fn nodes_and_keys() {
        assert_eq!(nodes(1_000_000, 18_000), 56);
        assert_eq!(nodes(3_000, 1_500), 2);
        assert_eq!(key("sse"), "million_sse");
        assert_eq!(key("longpoll"), "million_longpoll");
    }
}
