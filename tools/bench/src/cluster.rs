//! The cluster scenarios (issue 12): holdfast nodes that share one Redis (`--redis`).
//!
//! - **cluster fan-out** (`cluster-fanout`): one publish to N long-poll subscribers of
//!   one channel, measured as scenario 2 measures it, three ways in the same run: one
//!   standalone node (no Redis), one node in cluster mode, and K nodes in cluster mode
//!   with the subscribers spread evenly over them and the publish sent to node 0's admin
//!   listener. CPU is summed over the nodes; Redis's CPU over the same window is
//!   reported beside it.
//! - **publish ceiling** (`publish-ceiling`): C publishers, each on one keep-alive
//!   connection, post small messages as fast as the answers come back, to one node or
//!   spread over K nodes on one Redis, for a fixed window; publishes per second and the
//!   publish latency (request written → answer read), with the standalone node beside
//!   them. Every cluster publish is one Redis round trip, so this is the ceiling of the
//!   design on this machine.
//!
//! Each scenario starts its own `redis-server` on a free loopback port (a temporary
//! directory, no persistence) and kills it at the end; every setup gets fresh nodes and
//! its own `--redis-prefix`, so nothing of one setup is seen by the next.

use crate::measure::{self, Cpu};
use crate::procs::Proc;
use crate::scenarios::{self, div, Env, Params, Row, Sample, Scenario};
use crate::server::{self, Kind, Server, TempDir, FLOOR};
use holdfast_stress::report::{self as stress_report, Latency};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most subscribers one holdfast process is asked to hold: under the open-file limit of
/// 20,000 with room for its listeners, Redis connections and slack (scenario 1's top N).
pub const MAX_PER_NODE: u64 = 19_000;

/// The channel of the cluster fan-out.
const FANOUT_CHANNEL: &str = "clusterfanout";

/// Upper bound on the publishes of one ceiling publisher (the window ends it long before).
const MAX_PUBLISHES: u64 = 10_000_000;
/// Upper bound on one ceiling publisher's reconnections (after an error or a close).
const MAX_RECONNECTS: u32 = 100;
/// Every read and write of a ceiling publisher.
const PUBLISH_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The payload of every ceiling publish (32 bytes).
const CEILING_PAYLOAD: &str = "publish-ceiling payload 01234567";

/// `redis-server`: `$REDIS_SERVER` if set (as the tests take it), else on `PATH`, in
/// /usr/bin or /usr/local/bin; or why there is none.
pub fn find_redis() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("REDIS_SERVER") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("REDIS_SERVER={}: no such file", p.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "redis-server not found (looked on PATH, in /usr/bin and /usr/local/bin; install \
             the distribution's redis-server package, or set REDIS_SERVER)"
                .into()
        })
}

/// Ok if `bin --help` lists `--redis` (a build with cluster mode).
pub fn has_cluster_mode(bin: &Path) -> Result<(), String> {
    let out = Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("{} --help: {e}", bin.display()))?;
    if String::from_utf8_lossy(&out.stdout).contains("--redis") {
        Ok(())
    } else {
        Err(format!(
            "{} has no --redis flag (a build without cluster mode)",
            bin.display()
        ))
    }
}

/// The harness's own `redis-server`: loopback only, no persistence, its files in a
/// temporary directory. Dropping it kills the process, then removes the directory.
pub struct Redis {
    pub addr: SocketAddr,
    // Field order matters: the process is killed before its directory is removed.
    proc: Proc,
    _dir: TempDir,
}

/// Redis's own counters at one moment (`INFO stats`, `INFO commandstats`).
#[derive(Clone, Copy, Debug, Default)]
pub struct RedisCounters {
    /// `total_commands_processed`: commands run, those inside Lua scripts included.
    pub commands: u64,
    /// `cmdstat_publish` calls: messages sent on Redis pub/sub.
    pub publish: u64,
}

impl Redis {
    /// Starts `bin` on a free loopback port; `log` gets its output. Tries three ports
    /// (another process may take a port between the check and Redis's bind).
    pub fn start(bin: &Path, work: &Path, log: &Path) -> io::Result<Redis> {
        let mut last = io::Error::other("not tried");
        for _ in 0..3 {
            match Redis::try_start(bin, work, log) {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn try_start(bin: &Path, work: &Path, log: &Path) -> io::Result<Redis> {
        let dir = work.join(format!("redis-{}-{}", std::process::id(), server::unique()));
        fs::create_dir_all(&dir)?;
        let dir = TempDir(dir);
        let addr = server::free_port()?;
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let mut proc = Proc::spawn(&mut cmd, "redis-server")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = RedisProbe(addr);
            match probe.command(&["PING"]) {
                Ok(pong) if pong == "PONG" => break,
                Ok(other) => {
                    return Err(io::Error::other(format!(
                        "redis-server on {addr} answered PING with {other:?}"
                    )))
                }
                Err(e) => {
                    if let Ok(Some(st)) = proc.try_wait() {
                        return Err(io::Error::other(format!(
                            "redis-server exited ({st}); see {}",
                            log.display()
                        )));
                    }
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("redis-server on {addr} not answering after 10 s: {e}"),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(Redis {
            addr,
            proc,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The `--redis` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Its counters now. Each call runs two `INFO` commands, which the next call's
    /// `commands` includes (see [`RedisCounters::commands_since`]).
    pub fn counters(&self) -> io::Result<RedisCounters> {
        let p = RedisProbe(self.addr);
        let stats = p.command(&["INFO", "stats"])?;
        let cmds = p.command(&["INFO", "commandstats"])?;
        Ok(RedisCounters {
            commands: info_field(&stats, "total_commands_processed").unwrap_or(0),
            publish: cmdstat_calls(&cmds, "publish"),
        })
    }

    /// `redis-server --version`, for the report.
    pub fn version(bin: &Path) -> String {
        measure::command_output(&bin.display().to_string(), &["--version"])
            .unwrap_or_else(|| format!("{} (version unknown)", bin.display()))
    }
}

impl RedisCounters {
    /// Commands run since `earlier`, less the two `INFO` commands `earlier` itself ran.
    pub fn commands_since(self, earlier: RedisCounters) -> u64 {
        self.commands
            .saturating_sub(earlier.commands)
            .saturating_sub(2)
    }
}

/// One command at a time to a Redis address, each on its own connection (a handful per
/// measurement; no pipelining needed).
struct RedisProbe(SocketAddr);

impl RedisProbe {
    /// Sends one command as a RESP array; returns a simple string, integer or bulk
    /// string reply as text. An error reply is an `Err`.
    fn command(&self, args: &[&str]) -> io::Result<String> {
        let t = Duration::from_secs(2);
        let mut s = TcpStream::connect_timeout(&self.0, t)?;
        s.set_read_timeout(Some(t))?;
        s.set_write_timeout(Some(t))?;
        s.write_all(&resp_command(args))?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line)?;
        parse_reply(line.trim_end_matches(['\r', '\n']), &mut r)
    }
}

/// `args` as a RESP array of bulk strings.
fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A reply whose first line is `first`; a bulk string's body is read from `rest`.
fn parse_reply(first: &str, rest: &mut impl Read) -> io::Result<String> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected Redis reply {first:?}"),
        )
    };
    let (kind, text) = first.split_at_checked(1).ok_or_else(bad)?;
    match kind {
        "+" | ":" => Ok(text.to_string()),
        "-" => Err(io::Error::other(format!("Redis error: {text}"))),
        "$" => {
            let n: i64 = text.parse().map_err(|_| bad())?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut body = vec![0; n as usize + 2];
            rest.read_exact(&mut body)?;
            body.truncate(n as usize);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        _ => Err(bad()),
    }
}

/// `field:NUMBER` from an `INFO` reply.
fn info_field(info: &str, field: &str) -> Option<u64> {
    info.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix(field)?
            .strip_prefix(':')?
            .parse()
            .ok()
    })
}

/// `calls=` of `cmdstat_CMD` from an `INFO commandstats` reply; 0 if the command never ran.
fn cmdstat_calls(info: &str, cmd: &str) -> u64 {
    let key = format!("cmdstat_{cmd}:");
    info.lines()
        .find_map(|l| {
            l.strip_prefix(&key)?
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls=")?.parse().ok())
        })
        .unwrap_or(0)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` in `head` (case-insensitive name).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// What runs in one measurement: a standalone node, or K nodes on the Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    Standalone,
    Cluster(u32),
    /// K `holdfast-floor` processes with the subscribers spread as over K nodes, each
    /// published to through its own admin address (the floor has no backplane): what
    /// the kernel alone costs for the same connections and writes.
    Floor(u32),
}

impl Setup {
    fn nodes(self) -> u32 {
        match self {
            Setup::Standalone => 1,
            Setup::Cluster(k) | Setup::Floor(k) => k,
        }
    }

    fn label(self) -> String {
        match self {
            Setup::Standalone => "holdfast standalone".into(),
            Setup::Cluster(1) => "holdfast cluster, 1 node".into(),
            Setup::Cluster(k) => format!("holdfast cluster, {k} nodes"),
            Setup::Floor(1) => format!("{FLOOR}, 1 process"),
            Setup::Floor(k) => format!("{FLOOR}, {k} processes"),
        }
    }

    fn tag(self) -> String {
        match self {
            Setup::Standalone => "standalone".into(),
            Setup::Cluster(k) => format!("cluster{k}"),
            Setup::Floor(k) => format!("floor{k}"),
        }
    }
}

/// Standalone, one cluster node, K cluster nodes (K from `--cluster-nodes`), and the
/// floor over K processes when it is among the servers.
fn setups(p: &Params, floor: bool) -> Vec<Setup> {
    let mut v = vec![Setup::Standalone, Setup::Cluster(1)];
    if p.cluster_nodes > 1 {
        v.push(Setup::Cluster(p.cluster_nodes));
    }
    if floor {
        v.push(Setup::Floor(p.cluster_nodes));
    }
    v
}

/// Starts the nodes of `setup`; cluster nodes get `--redis` and a prefix of their own.
fn start_nodes(
    env: &Env,
    p: &Params,
    redis: &Redis,
    setup: Setup,
    tag: &str,
) -> io::Result<Vec<Server>> {
    if let Setup::Floor(k) = setup {
        return (0..k)
            .map(|i| {
                let log = env.logs.join(format!("{FLOOR}-{tag}-node{i}.log"));
                Server::start_floor(&env.floor, &log)
            })
            .collect();
    }
    let extra: Vec<String> = match setup {
        Setup::Standalone | Setup::Floor(_) => Vec::new(),
        Setup::Cluster(_) => vec![
            "--redis".into(),
            redis.url(),
            "--redis-prefix".into(),
            format!("hfbench{}", server::unique()),
        ],
    };
    (0..setup.nodes())
        .map(|i| {
            let log = env.logs.join(format!("holdfast-{tag}-node{i}.log"));
            Server::start_holdfast_with(Kind::Holdfast, &env.holdfast, p.threads, &log, &extra)
        })
        .collect()
}

/// A `/stats` counter summed over `servers`; None if a server does not have it.
fn stat_sum(servers: &[&Server], key: &str) -> Option<u64> {
    servers.iter().try_fold(0, |acc, s| {
        let body = server::http_get(s.admin, "/stats").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(acc + v.get(key)?.as_u64()?)
    })
}

fn failed_row(s: Scenario, label: &str, n: u64, nodes: u32, e: &io::Error) -> Row {
    let mut r = Row::new(s, label, n);
    r.set("nodes", nodes as f64);
    r.notes.push(format!("failed: {e}"));
    r
}

/// The cluster fan-out at every `--cluster-n`, each in every [`Setup`].
pub fn cluster_fanout(env: &Env, p: &Params, redis: &Redis, floor: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for &n in &p.cluster_n {
        for setup in setups(p, floor) {
            eprintln!("holdfast-bench: cluster_fanout N={n} {}", setup.label());
            rows.push(fanout_one(env, p, redis, n, setup).unwrap_or_else(|e| {
                failed_row(
                    Scenario::ClusterFanout,
                    &setup.label(),
                    n,
                    setup.nodes(),
                    &e,
                )
            }));
        }
    }
    rows
}

fn fanout_one(env: &Env, p: &Params, redis: &Redis, n: u64, setup: Setup) -> io::Result<Row> {
    let k = setup.nodes();
    let mut row = Row::new(Scenario::ClusterFanout, &setup.label(), n);
    row.set("nodes", k as f64);
    let per_node = n.div_ceil(k as u64);
    if per_node > MAX_PER_NODE {
        row.notes.push(format!(
            "not run: {per_node} subscribers per process is over {MAX_PER_NODE} (open-file \
             limit 20,000 per process)"
        ));
        return Ok(row);
    }
    let tag = format!("cluster-fanout-{n}-{}", setup.tag());
    let nodes = start_nodes(env, p, redis, setup, &tag)?;
    let refs: Vec<&Server> = nodes.iter().collect();
    let mut run = env.stress_run(&refs, n, FANOUT_CHANNEL, p);
    // One publish, through node 0: in cluster mode it reaches every node through Redis
    // (the standalone setup has one node, so it is the same publish). The floor's
    // processes share nothing, so each gets the publish through its own admin address.
    run.publish_once = !matches!(setup, Setup::Floor(_));
    run.hold = Duration::from_millis(p.settle_ms + 1000);
    run.publish = 1;
    let cluster = matches!(setup, Setup::Cluster(_));
    let aux: Vec<u32> = if cluster {
        vec![redis.pid()]
    } else {
        Vec::new()
    };
    let before = redis.counters()?;
    let window = scenarios::publish_window(
        env,
        &refs,
        &aux,
        &nodes[0],
        &mut row,
        &mut run,
        &format!("holdfast-{tag}"),
        Duration::from_millis(1),
        p,
    )?;
    let redis_cpu = window
        .as_ref()
        .map(|w| scenarios::fanout_metrics(env, &mut row, w));
    if cluster {
        let after = redis.counters()?;
        row.set(
            "redis_publish_calls",
            after.publish.saturating_sub(before.publish) as f64,
        );
        if let Some(r) = stat_sum(&refs, "backplane_received") {
            row.set("backplane_received", r as f64);
        }
        // Subscribes the nodes could not answer from their cache (a channel they did
        // not hold yet): each one a Redis read.
        if let Some(f) = stat_sum(&refs, "backplane_fetches") {
            row.set("backplane_fetches", f as f64);
        }
        if let Some(cpu) = redis_cpu {
            row.set("redis_cpu_us", cpu.ns as f64 / 1e3);
            row.set(
                "redis_cpu_per_delivery_us",
                div(cpu.ns as f64 / 1e3, row.get("received").unwrap_or(0.0)),
            );
        }
    }
    Ok(row)
}

/// What one ceiling publisher did.
struct PublisherResult {
    /// 2xx answers that arrived inside the window.
    ok: u64,
    /// Non-2xx answers and I/O errors, over the whole run.
    errors: u64,
    /// The first error, for the notes.
    first_error: Option<String>,
    /// Latency (µs) of the 2xx answers inside the window, as histogram pairs.
    latency: Vec<(u64, u64)>,
}

/// One keep-alive connection to an admin listener.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, PUBLISH_IO_TIMEOUT)?;
        s.set_read_timeout(Some(PUBLISH_IO_TIMEOUT))?;
        s.set_write_timeout(Some(PUBLISH_IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(Client {
            s,
            buf: Vec::with_capacity(1024),
        })
    }

    /// Writes `req` and reads one whole answer; returns its status and whether the
    /// server is closing the connection.
    fn exchange(&mut self, req: &[u8]) -> io::Result<(u16, bool)> {
        self.s.write_all(req)?;
        let mut chunk = [0u8; 2048];
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
            }
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status"))?;
        let len: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Content-Length"))?;
        let close = header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        while self.buf.len() < head_end + len {
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        self.buf.drain(..head_end + len);
        Ok((status, close))
    }
}

impl PublisherResult {
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Publishes to `channel` through `admin` on one keep-alive connection, one request at
/// a time, from `begin` until `until`; counts and times the answers that arrive in
/// `[from, until)`.
fn publisher(
    admin: SocketAddr,
    channel: String,
    begin: Instant,
    from: Instant,
    until: Instant,
) -> PublisherResult {
    let req = format!(
        "POST /pub/{channel} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{CEILING_PAYLOAD}",
        CEILING_PAYLOAD.len()
    )
    .into_bytes();
    let mut hist = stress_report::new_histogram();
    let mut r = PublisherResult {
        ok: 0,
        errors: 0,
        first_error: None,
        latency: Vec::new(),
    };
    sleep_until(begin);
    let mut conn: Option<Client> = None;
    let mut connects = 0;
    for _ in 0..MAX_PUBLISHES {
        if Instant::now() >= until {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                if connects > MAX_RECONNECTS {
                    r.error(format!("gave up after {MAX_RECONNECTS} reconnections"));
                    break;
                }
                connects += 1;
                match Client::connect(admin) {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        r.error(format!("connect: {e}"));
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
            }
        };
        let t0 = Instant::now();
        match c.exchange(&req) {
            Ok((status, close)) => {
                let t1 = Instant::now();
                if !(200..300).contains(&status) {
                    r.error(format!("status {status}"));
                } else if t1 >= from && t1 < until {
                    r.ok += 1;
                    let us = t1.saturating_duration_since(t0).as_micros() as u64;
                    hist.saturating_record(us.clamp(1, stress_report::LATENCY_MAX_US));
                }
                if close {
                    conn = None;
                }
            }
            Err(e) => {
                r.error(format!("publish: {e}"));
                conn = None;
            }
        }
    }
    r.latency = stress_report::histogram_pairs(&hist);
    r
}

/// The publish ceiling for every `--ceiling-publishers`, each in every [`Setup`].
pub fn publish_ceiling(env: &Env, p: &Params, redis: &Redis, floor: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for &c in &p.ceiling_publishers {
        for setup in setups(p, floor) {
            eprintln!("holdfast-bench: publish_ceiling C={c} {}", setup.label());
            rows.push(ceiling_one(env, p, redis, c, setup).unwrap_or_else(|e| {
                failed_row(
                    Scenario::PublishCeiling,
                    &setup.label(),
                    c,
                    setup.nodes(),
                    &e,
                )
            }));
        }
    }
    rows
}

fn ceiling_one(env: &Env, p: &Params, redis: &Redis, c: u64, setup: Setup) -> io::Result<Row> {
    let k = setup.nodes();
    let mut row = Row::new(Scenario::PublishCeiling, &setup.label(), c);
    row.set("nodes", k as f64);
    let tag = format!("publish-ceiling-{c}-{}", setup.tag());
    let nodes = start_nodes(env, p, redis, setup, &tag)?;
    let refs: Vec<&Server> = nodes.iter().collect();
    let cluster = matches!(setup, Setup::Cluster(_));
    let aux: Vec<u32> = if cluster {
        vec![redis.pid()]
    } else {
        Vec::new()
    };
    // Standalone only: in cluster mode `published` counts what a node's cache took in
    // from Redis, not the publishes it accepted, so it stays 0 here (no subscribers).
    let published0 = if cluster {
        None
    } else {
        stat_sum(&refs, "published")
    };

    let begin = Instant::now() + Duration::from_millis(50);
    let from = begin + Duration::from_millis(p.ceiling_warmup_ms);
    let until = from + Duration::from_millis(p.ceiling_ms);
    let handles: Vec<JoinHandle<PublisherResult>> = (0..c)
        .map(|i| {
            let admin = nodes[(i % k as u64) as usize].admin;
            let channel = format!("ceiling{i}");
            std::thread::spawn(move || publisher(admin, channel, begin, from, until))
        })
        .collect();
    sleep_until(from);
    let s0 = Sample::take(&refs, &aux)?;
    let r0 = redis.counters()?;
    sleep_until(until);
    let s1 = Sample::take(&refs, &aux)?;
    let r1 = redis.counters()?;
    let mut hist = stress_report::new_histogram();
    let (mut ok, mut errors, mut first_error) = (0, 0, None);
    for h in handles {
        // Each publisher stops at `until`, or one I/O timeout after it.
        let r = h
            .join()
            .map_err(|_| io::Error::other("a publisher thread panicked"))?;
        ok += r.ok;
        errors += r.errors;
        first_error = first_error.or(r.first_error);
        stress_report::merge_pairs(&mut hist, &r.latency);
    }
    let secs = (until - from).as_secs_f64();
    let wall = s1.at.saturating_duration_since(s0.at).as_secs_f64();
    let cpu: Cpu = s1.cpu.since(s0.cpu);
    let okf = ok as f64;
    row.set("publishers", c as f64);
    row.set("window_secs", secs);
    row.set("publishes", okf);
    row.set("publishes_per_sec", div(okf, secs));
    row.set("publish_errors", errors as f64);
    let lat = Latency::from_histogram(&hist);
    if lat.count > 0 {
        row.set("publish_p50_us", lat.p50 as f64);
        row.set("publish_p99_us", lat.p99 as f64);
        row.set("publish_p999_us", lat.p999 as f64);
        row.set("publish_max_us", lat.max as f64);
    }
    row.set("cpu_ns", cpu.ns as f64);
    row.set("cpu_per_publish_us", div(cpu.ns as f64 / 1e3, okf));
    row.set("cpu_percent", div(cpu.ns as f64 / 1e9, wall) * 100.0);
    if cluster {
        let rc = s1.aux.since(s0.aux);
        row.set("redis_cpu_per_publish_us", div(rc.ns as f64 / 1e3, okf));
        row.set("redis_cpu_percent", div(rc.ns as f64 / 1e9, wall) * 100.0);
        row.set(
            "redis_commands_per_publish",
            div(r1.commands_since(r0) as f64, okf),
        );
        row.set(
            "redis_publish_calls_per_publish",
            div(r1.publish.saturating_sub(r0.publish) as f64, okf),
        );
    }
    // A cross-check of the count: the node's own counter over the whole run (warm-up
    // included) can only be larger.
    if let (Some(a), Some(b)) = (published0, stat_sum(&refs, "published")) {
        row.set("server_published_total", b.saturating_sub(a) as f64);
    }
    if let Some(e) = first_error {
        row.notes
            .push(format!("{errors} publish error(s); first: {e}"));
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn redis_replies_parse() {
        let mut empty: &[u8] = b"";
        assert_eq!(parse_reply("+PONG", &mut empty).unwrap(), "PONG");
        assert_eq!(parse_reply(":42", &mut empty).unwrap(), "42");
        assert!(parse_reply("-ERR nope", &mut empty).is_err());
        let mut body: &[u8] = b"a:1\r\nb\r\n";
        assert_eq!(parse_reply("$6", &mut body).unwrap(), "a:1\r\nb");
        assert_eq!(parse_reply("$-1", &mut empty).unwrap(), "");
        assert!(parse_reply("", &mut empty).is_err());
        assert_eq!(
            resp_command(&["INFO", "stats"]),
            b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n"
        );
    }

    #[test]
    fn redis_counters_are_read_from_info() {
        let stats = "# Stats\r\ntotal_connections_received:3\r\ntotal_commands_processed:17\r\n";
        assert_eq!(info_field(stats, "total_commands_processed"), Some(17));
        assert_eq!(info_field(stats, "total_commands"), None);
        let cmds = "# Commandstats\r\ncmdstat_publish:calls=5,usec=9,usec_per_call=1.80\r\n\
                    cmdstat_evalsha:calls=5,usec=90\r\n";
        assert_eq!(cmdstat_calls(cmds, "publish"), 5);
        assert_eq!(cmdstat_calls(cmds, "evalsha"), 5);
        assert_eq!(cmdstat_calls(cmds, "xadd"), 0);
        let a = RedisCounters {
            commands: 10,
            publish: 0,
        };
        let b = RedisCounters {
            commands: 22,
            publish: 0,
        };
        assert_eq!(b.commands_since(a), 10);
    }

    #[test]
    fn a_keep_alive_client_reads_whole_answers() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let srv = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            for (status, extra) in [("201 Created", ""), ("503 Busy", "Connection: close\r\n")] {
                let _ = s.read(&mut buf).unwrap();
                write!(
                    s,
                    "HTTP/1.1 {status}\r\n{extra}content-length: 2\r\n\r\n{{}}"
                )
                .unwrap();
            }
        });
        let mut c = Client::connect(addr).unwrap();
        assert_eq!(
            c.exchange(b"POST /pub/a HTTP/1.1\r\n\r\n").unwrap(),
            (201, false)
        );
        assert_eq!(
            c.exchange(b"POST /pub/a HTTP/1.1\r\n\r\n").unwrap(),
            (503, true)
        );
        srv.join().unwrap();
    }

    #[test]
    fn setups_are_standalone_one_node_k_nodes_and_the_floor() {
        use clap::Parser;
        let labels = |k: u32, floor: bool| {
            let mut p = crate::Args::try_parse_from(["holdfast-bench", "--smoke"])
                .unwrap()
                .params();
            p.cluster_nodes = k;
            setups(&p, floor)
                .into_iter()
                .map(Setup::label)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            labels(3, true),
            [
                "holdfast standalone",
                "holdfast cluster, 1 node",
                "holdfast cluster, 3 nodes",
                "floor, 3 processes"
            ]
        );
        assert_eq!(labels(3, false).len(), 3);
        assert_eq!(labels(1, false).len(), 2);
        assert_eq!(labels(1, true)[2], "floor, 1 process");
    }
}
