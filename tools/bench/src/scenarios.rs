//! The single-server scenarios (the two cluster ones are in `cluster.rs`, on the
//! helpers here). Each starts a fresh server (so one run's leftovers never count
//! in the next), starts the stress tool, waits on the server's own counters until the
//! connections are held, measures from `/proc`, and collects the stress tool's summary.
//!
//! Every wait is bounded; every server and stress process is killed when its guard
//! drops, on success and on error alike.

use crate::measure::{self, Cpu};
use crate::probe::{self, Transport};
use crate::procs::Proc;
use crate::server::{Kind, Nchan, Server};
use crate::stress::{self, Summary};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// The scenarios, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Memory per parked long-poll at several N.
    Idle,
    /// One publish to N subscribers on one channel.
    Fanout,
    /// M subscribers each receiving K messages and re-polling with their cursor.
    Cycle,
    /// Server CPU with N parked and nothing happening.
    IdleCpu,
    /// 200,000 parked long-polls over several holdfast processes.
    Scale,
    /// Memory per open, idle SSE stream at several N (scenario 1 with streams).
    SseIdle,
    /// One publish to N SSE streams on one channel (scenario 2 with streams).
    SseFanout,
    /// One publish to N long-polls: a standalone node, one cluster node and K cluster
    /// nodes on one Redis, in the same run.
    ClusterFanout,
    /// Publishes per second C keep-alive publishers get through one node or K nodes
    /// on one Redis (and a standalone node).
    PublishCeiling,
    /// Memory per open, idle WebSocket at several N (scenario 6 with WebSockets).
    WsIdle,
    /// One publish to N WebSockets on one channel (scenario 7 with WebSockets).
    WsFanout,
    /// Memory per open, idle ndjson stream at several N (holdfast and holdfast-tokio).
    NdjsonIdle,
    /// One publish to N ndjson streams on one channel (holdfast and holdfast-tokio).
    NdjsonFanout,
    /// 1,000,000 held over many cluster nodes on one Redis, one publish through one
    /// node; the floor over as many processes (`million.rs`). Not in the default run.
    Million,
}

impl Scenario {
    pub fn key(self) -> &'static str {
        match self {
            Scenario::Idle => "idle_hold",
            Scenario::Fanout => "fanout",
            Scenario::Cycle => "poll_cycle",
            Scenario::IdleCpu => "idle_cpu",
            Scenario::Scale => "scale",
            Scenario::SseIdle => "sse_idle_hold",
            Scenario::SseFanout => "sse_fanout",
            Scenario::ClusterFanout => "cluster_fanout",
            Scenario::PublishCeiling => "publish_ceiling",
            Scenario::WsIdle => "ws_idle_hold",
            Scenario::WsFanout => "ws_fanout",
            Scenario::NdjsonIdle => "ndjson_idle_hold",
            Scenario::NdjsonFanout => "ndjson_fanout",
            Scenario::Million => "million",
        }
    }

    /// The stress tool's `--mode` for this scenario's subscribers.
    pub fn mode(self) -> &'static str {
        match self {
            Scenario::SseIdle | Scenario::SseFanout => "sse",
            Scenario::WsIdle | Scenario::WsFanout => "websocket",
            Scenario::NdjsonIdle | Scenario::NdjsonFanout => "ndjson",
            _ => "longpoll",
        }
    }

    /// Whether `kind` takes part. nchan has no ndjson stream: its nearest,
    /// `http-raw-stream`, writes the raw payload and a newline (no JSON object, no id,
    /// no channel), unchunked, with no heartbeat, and in one location it would take
    /// every plain GET from the long-poll subscriber; that is not like for like, so the
    /// ndjson scenarios leave it out (the report says so).
    pub fn runs_on(self, kind: Kind) -> bool {
        !(kind == Kind::Nchan && matches!(self, Scenario::NdjsonIdle | Scenario::NdjsonFanout))
    }
}

/// Sizes and durations of one run (full or `--smoke`).
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub threads: u32,
    pub rate: u64,
    pub idle_n: Vec<u64>,
    pub fanout_n: u64,
    pub cycle_m: u64,
    pub cycle_k: u64,
    pub cycle_interval_ms: u64,
    pub idle_cpu_n: u64,
    pub idle_cpu_secs: u64,
    pub scale_n: u64,
    pub scale_procs: u32,
    pub sse_idle_n: Vec<u64>,
    pub sse_fanout_n: u64,
    pub ws_idle_n: Vec<u64>,
    pub ws_fanout_n: u64,
    pub ndjson_idle_n: Vec<u64>,
    pub ndjson_fanout_n: u64,
    /// Cluster fan-out subscribers, one measurement per value.
    pub cluster_n: Vec<u64>,
    /// K, the nodes of the several-node cluster setups.
    pub cluster_nodes: u32,
    /// Publish ceiling: concurrent publishers, one measurement per value.
    pub ceiling_publishers: Vec<u64>,
    /// Publish ceiling: the measured window, and the warm-up before it.
    pub ceiling_ms: u64,
    pub ceiling_warmup_ms: u64,
    /// Pause after the last connection is held, before measuring.
    pub settle_ms: u64,
    /// The 1M run: connections, subscription modes, connections per server process,
    /// and the ramp rate.
    pub million_n: u64,
    pub million_modes: Vec<String>,
    pub million_per_node: u64,
    pub million_rate: u64,
    /// holdfast's `--sse-heartbeat` in the 1M run (the floor sends none).
    pub million_heartbeat_secs: u64,
}

/// Binaries and places one run uses.
pub struct Env {
    pub holdfast: PathBuf,
    pub tokio: PathBuf,
    pub floor: PathBuf,
    pub stress: PathBuf,
    pub nchan: Option<Nchan>,
    pub logs: PathBuf,
    pub clk_tck: u64,
}

/// One measured result: a scenario against a server at one size.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub server: String,
    /// N (or M for the poll cycle) asked of the stress tool.
    pub connections: u64,
    pub metrics: BTreeMap<String, f64>,
    pub notes: Vec<String>,
    pub stress: Option<Summary>,
    /// The 1M run's memory-vs-connections samples, taken during the ramp.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub curve: Vec<crate::million::CurvePoint>,
}

impl Row {
    pub(crate) fn new(s: Scenario, server: &str, connections: u64) -> Row {
        Row::new_keyed(s.key(), server, connections)
    }

    /// A row whose scenario key is not [`Scenario::key`]'s (the 1M run has one per mode).
    pub(crate) fn new_keyed(scenario: &'static str, server: &str, connections: u64) -> Row {
        Row {
            scenario,
            server: server.to_string(),
            connections,
            metrics: BTreeMap::new(),
            notes: Vec::new(),
            stress: None,
            curve: Vec::new(),
        }
    }

    pub(crate) fn set(&mut self, k: &str, v: f64) {
        if v.is_finite() {
            self.metrics.insert(k.to_string(), v);
        }
    }

    pub fn get(&self, k: &str) -> Option<f64> {
        self.metrics.get(k).copied()
    }

    pub(crate) fn take_summary(&mut self, end: &StressEnd) {
        if let Some(n) = &end.note {
            self.notes.push(n.clone());
        }
        if let Some(s) = &end.summary {
            self.set("connected", s.connected as f64);
            self.set("stress_held", s.held as f64);
            self.set("published", s.published as f64);
            self.set("expected", s.expected as f64);
            self.set("received", s.received as f64);
            self.set("lost", s.lost as f64);
            self.set("duplicates", s.duplicates as f64);
            self.set("timeouts", s.timeouts as f64);
            if s.publish > 0 {
                // Order, as the stress tool checks it: payload sequence numbers for every
                // mode, and SSE event ids (holdfast: decimal, increasing; nchan: TIME:TAG
                // pairs, increasing) for streams.
                self.set(
                    "out_of_order",
                    s.error_count(holdfast_stress::errors::OUT_OF_ORDER) as f64,
                );
                // Ids: SSE's `id:` lines (both dialects) and the JSON envelope's `id`
                // (holdfast's WebSocket and ndjson). nchan's WebSocket frames hold the
                // raw payload, with no id to check.
                if s.mode == "sse" || (s.mode != "longpoll" && s.protocol == "holdfast") {
                    self.set(
                        "event_id_errors",
                        (s.error_count(holdfast_stress::errors::EVENT_ID_ORDER)
                            + s.error_count(holdfast_stress::errors::BAD_EVENT_ID))
                            as f64,
                    );
                }
            }
            // No latency was recorded when nothing was received (or the stress tool's
            // workers did not report their histograms): absent, not zero.
            if s.latency_us.count > 0 {
                self.set("latency_p50_us", s.latency_us.p50 as f64);
                self.set("latency_p99_us", s.latency_us.p99 as f64);
                self.set("latency_p999_us", s.latency_us.p999 as f64);
                self.set("latency_max_us", s.latency_us.max as f64);
            } else if s.received > 0 {
                self.notes
                    .push("the stress tool reported no latency histogram".into());
            }
            if s.message_bytes > 0 {
                self.set(
                    "bytes_per_message",
                    div(s.message_bytes as f64, s.received as f64),
                );
            }
            self.set("ramp_secs", s.ramp_secs);
            let errs = stress::errors_text(s);
            if errs != "none" {
                self.notes.push(format!("stress errors: {errs}"));
            }
            self.stress = Some(s.clone());
        }
    }
}

pub(crate) fn div(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

impl Env {
    fn start(&self, kind: Kind, threads: u32, tag: &str) -> io::Result<Server> {
        let log = self.logs.join(format!("{}-{tag}.log", kind.name()));
        match kind {
            Kind::Holdfast => Server::start_holdfast(kind, &self.holdfast, threads, &log),
            Kind::Tokio => Server::start_holdfast(kind, &self.tokio, threads, &log),
            Kind::Floor => Server::start_floor(&self.floor, &log),
            Kind::Nchan => {
                let n = self
                    .nchan
                    .as_ref()
                    .ok_or_else(|| io::Error::other("nchan is not available"))?;
                Server::start_nchan(n, threads, &self.logs, &log)
            }
        }
    }

    pub(crate) fn stress_run(
        &self,
        servers: &[&Server],
        connections: u64,
        channel: &str,
        p: &Params,
    ) -> stress::Run {
        stress::Run {
            targets: servers.iter().map(|s| s.public).collect(),
            admins: servers.iter().map(|s| s.admin).collect(),
            connections,
            mode: "longpoll",
            protocol: servers[0].kind.protocol(),
            channel: channel.to_string(),
            rate: p.rate,
            hold: Duration::from_secs(2),
            publish: 0,
            publish_once: false,
            publish_interval: None,
            procs: None,
            max_time: Duration::from_secs(60),
        }
    }

    fn spawn_stress(&self, run: &mut stress::Run, tag: &str) -> io::Result<(Proc, PathBuf)> {
        let ramp = Duration::from_secs_f64(run.connections as f64 / run.rate as f64);
        let publishing =
            run.publish_interval.unwrap_or(Duration::from_millis(200)) * run.publish as u32;
        // The stress tool's own bound: ramp (twice, for slow servers), hold, publishing,
        // and time to collect every delivery.
        run.max_time = ramp * 2 + run.hold + publishing + Duration::from_secs(30);
        let json = self.logs.join(format!("stress-{tag}.json"));
        let log = self.logs.join(format!("stress-{tag}.log"));
        let p = run.spawn(&self.stress, &json, &log)?;
        Ok((p, json))
    }
}

/// How a stress run ended.
pub(crate) struct StressEnd {
    pub(crate) summary: Option<Summary>,
    note: Option<String>,
}

/// Waits (bounded by `limit`) for the stress tool to exit, then reads its summary.
pub(crate) fn finish_stress(mut p: Proc, json: &Path, limit: Duration) -> StressEnd {
    let status: Option<ExitStatus> = p.wait_timeout(limit).ok().flatten();
    let mut note = match status {
        None => Some(format!("stress tool still running after {limit:?}: killed")),
        Some(st) if !st.success() => Some(format!(
            "stress tool exited with {st} (not every subscriber connected, or some message \
             was lost)"
        )),
        Some(_) => None,
    };
    drop(p);
    let summary = match stress::read_summary(json) {
        Ok(s) => Some(s),
        Err(e) => {
            let n = format!("no stress summary: {e}");
            note = Some(note.map_or(n.clone(), |o| format!("{o}; {n}")));
            None
        }
    };
    StressEnd { summary, note }
}

/// Sum of the subscribers the servers hold.
pub(crate) fn held(servers: &[&Server]) -> io::Result<u64> {
    servers
        .iter()
        .try_fold(0, |acc, s| Ok(acc + s.status()?.subscribers))
}

/// Waits until the servers hold `want` subscribers, the stress tool exits, or `limit`
/// passes; returns how many are held then.
fn wait_held(
    servers: &[&Server],
    stress: &mut Proc,
    want: u64,
    limit: Duration,
) -> io::Result<u64> {
    let deadline = Instant::now() + limit;
    loop {
        let h = held(servers)?;
        if h >= want || Instant::now() >= deadline || !matches!(stress.try_wait(), Ok(None)) {
            return Ok(h);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ramp_limit(n: u64, p: &Params) -> Duration {
    Duration::from_secs_f64(n as f64 / p.rate as f64 * 3.0 + 15.0)
}

/// Memory of the servers and the machine's kernel, at one moment.
pub(crate) struct Snap {
    pub(crate) mem: measure::Mem,
    pub(crate) slab: u64,
    tcp_inuse: u64,
    tcp_tw: u64,
}

impl Snap {
    pub(crate) fn take(servers: &[&Server]) -> io::Result<Snap> {
        let mem = servers.iter().try_fold(measure::Mem::default(), |a, s| {
            Ok::<_, io::Error>(a.add(s.mem()?))
        })?;
        let (tcp_inuse, tcp_tw) = measure::tcp_sockets()?;
        Ok(Snap {
            mem,
            slab: measure::slab_bytes()?,
            tcp_inuse,
            tcp_tw,
        })
    }
}

/// Growth of server memory and kernel Slab between two snapshots, per held connection.
pub(crate) fn memory_metrics(row: &mut Row, before: &Snap, after: &Snap, held: f64) {
    let d = |a: u64, b: u64| a as f64 - b as f64;
    let drss = d(after.mem.rss, before.mem.rss);
    let dpriv = d(after.mem.private, before.mem.private);
    let dslab = d(after.slab, before.slab);
    row.set("rss_before_bytes", before.mem.rss as f64);
    row.set("rss_after_bytes", after.mem.rss as f64);
    row.set("private_before_bytes", before.mem.private as f64);
    row.set("private_after_bytes", after.mem.private as f64);
    row.set("rss_delta_bytes", drss);
    row.set("private_delta_bytes", dpriv);
    row.set("slab_delta_bytes", dslab);
    row.set("rss_per_conn_bytes", div(drss, held));
    row.set("private_per_conn_bytes", div(dpriv, held));
    row.set("slab_per_conn_bytes", div(dslab, held));
    // The check on the Slab figure: with nothing else happening on the machine, TCP
    // sockets in use grow by 2 per connection and TIME_WAIT does not move.
    row.set("tcp_inuse_delta", d(after.tcp_inuse, before.tcp_inuse));
    row.set("tcp_timewait_delta", d(after.tcp_tw, before.tcp_tw));
    let sockets = d(after.tcp_inuse, before.tcp_inuse);
    if held > 0.0 && (sockets - 2.0 * held).abs() > 0.1 * 2.0 * held {
        row.notes.push(format!(
            "Slab figure unreliable: TCP sockets in use grew by {sockets}, not 2 × {held}, so \
             something else on the machine opened or closed sockets meanwhile"
        ));
    }
}

/// Scenarios 1, 6, 10 and 12: memory per parked long-poll (`Idle`), per open SSE stream
/// (`SseIdle`), WebSocket (`WsIdle`) or ndjson stream (`NdjsonIdle`) for each N of that
/// scenario; one result per N, in order.
pub fn idle_hold(env: &Env, kind: Kind, p: &Params, s: Scenario) -> Vec<io::Result<Row>> {
    idle_sizes(p, s)
        .iter()
        .map(|&n| idle_hold_one(env, kind, p, n, s))
        .collect()
}

/// The N values idle scenario `s` (1, 6, 10 or 12) runs at.
pub fn idle_sizes(p: &Params, s: Scenario) -> &[u64] {
    match s {
        Scenario::SseIdle => &p.sse_idle_n,
        Scenario::WsIdle => &p.ws_idle_n,
        Scenario::NdjsonIdle => &p.ndjson_idle_n,
        _ => &p.idle_n,
    }
}

/// How long a server gets to answer the transport probe's request with its head.
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// For the WebSocket and ndjson scenarios: checks with one request that `server`
/// speaks the transport before any load is started. A server that does not (a peer
/// still being taught it answers with a long-poll, or parks the request as one) gets a
/// row that says so instead of figures: `failed:` for holdfast, which implements both
/// transports, so the run's exit status shows it; `not run:` for the others, which
/// leaves the exit status alone. True when the scenario can go on.
fn transport_ready(server: &Server, s: Scenario, row: &mut Row) -> bool {
    let Some(t) = Transport::of(s) else {
        return true;
    };
    match probe::probe(server, t, PROBE_WAIT) {
        Ok(()) => true,
        Err(why) => {
            row.notes.push(match server.kind {
                // Both implement every transport: a refusal is a regression.
                Kind::Holdfast | Kind::Floor => format!("failed: {why}"),
                _ => format!("not run: {why}"),
            });
            false
        }
    }
}

/// The measurement of scenarios 1 and 5: memory of `servers` from just before the
/// stress tool starts `run` to `settle_ms` after its connections are held (or the ramp
/// gave up), into `row`. Returns the stress tool, still holding the connections.
fn held_memory(
    env: &Env,
    servers: &[&Server],
    row: &mut Row,
    run: &mut stress::Run,
    tag: &str,
    p: &Params,
) -> io::Result<(Proc, PathBuf)> {
    let n = run.connections;
    std::thread::sleep(Duration::from_millis(200));
    let before = Snap::take(servers)?;
    let (mut sp, json) = env.spawn_stress(run, tag)?;
    let h = wait_held(servers, &mut sp, n, ramp_limit(n, p))?;
    std::thread::sleep(Duration::from_millis(p.settle_ms));
    let after = Snap::take(servers)?;
    let h1 = held(servers)?;
    if h < n {
        row.notes
            .push(format!("only {h} of {n} held when measured"));
    }
    let held_n = h1 as f64;
    row.set("held", held_n);
    memory_metrics(row, &before, &after, held_n);
    Ok((sp, json))
}

fn idle_hold_one(env: &Env, kind: Kind, p: &Params, n: u64, s: Scenario) -> io::Result<Row> {
    let (tag, channel) = match s {
        Scenario::SseIdle => (format!("sse-idle-{n}"), "sseidle"),
        Scenario::WsIdle => (format!("ws-idle-{n}"), "wsidle"),
        Scenario::NdjsonIdle => (format!("ndjson-idle-{n}"), "ndjsonidle"),
        _ => (format!("idle-{n}"), "idle"),
    };
    let server = env.start(kind, p.threads, &tag)?;
    let mut row = Row::new(s, kind.name(), n);
    if !transport_ready(&server, s, &mut row) {
        return Ok(row);
    }
    let mut run = env.stress_run(&[&server], n, channel, p);
    run.mode = s.mode();
    run.hold = Duration::from_millis(p.settle_ms + 1500);
    let (sp, json) = held_memory(
        env,
        &[&server],
        &mut row,
        &mut run,
        &format!("{}-{tag}", kind.name()),
        p,
    )?;
    if let Some(m) = server.master_mem() {
        row.set("master_rss_bytes", m.rss as f64);
        row.set("master_private_bytes", m.private as f64);
    }
    let end = finish_stress(sp, &json, run.max_time + Duration::from_secs(10));
    row.take_summary(&end);
    Ok(row)
}

/// One CPU sample and when it was taken.
#[derive(Clone, Copy)]
pub(crate) struct Sample {
    pub at: Instant,
    /// The servers under test, summed.
    pub cpu: Cpu,
    /// Other processes read at the same moment and reported apart (the cluster
    /// scenarios' redis-server); zero when there are none.
    pub aux: Cpu,
}

impl Sample {
    /// Reads the CPU time of `servers` (summed) and of the processes `aux` (summed).
    pub(crate) fn take(servers: &[&Server], aux: &[u32]) -> io::Result<Sample> {
        let at = Instant::now();
        let cpu = servers
            .iter()
            .try_fold(Cpu::default(), |a, s| Ok::<_, io::Error>(a.add(s.cpu()?)))?;
        let aux = aux.iter().try_fold(Cpu::default(), |a, &p| {
            Ok::<_, io::Error>(a.add(measure::cpu(p)?))
        })?;
        Ok(Sample { at, cpu, aux })
    }
}

/// Polls `watch`'s published counter every millisecond until it moves past `before`;
/// returns the CPU sample (of `servers` and `aux`) taken just before the last status
/// request that had not yet seen the publish (so the window contains the whole publish)
/// and the moment it was seen.
fn wait_publish(
    servers: &[&Server],
    aux: &[u32],
    watch: &Server,
    stress: &mut Proc,
    before: u64,
    limit: Duration,
) -> io::Result<Option<(Sample, Instant)>> {
    let deadline = Instant::now() + limit;
    let mut prev = Sample::take(servers, aux)?;
    loop {
        let cur = Sample::take(servers, aux)?;
        if watch.status()?.published > before {
            return Ok(Some((prev, Instant::now())));
        }
        if Instant::now() >= deadline || !matches!(stress.try_wait(), Ok(None)) {
            return Ok(None);
        }
        prev = cur;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// CPU samples every `every` until the stress tool exits or `limit` passes.
fn sample_until_exit(
    servers: &[&Server],
    aux: &[u32],
    stress: &mut Proc,
    every: Duration,
    limit: Duration,
) -> io::Result<Vec<Sample>> {
    let deadline = Instant::now() + limit;
    let mut v = Vec::new();
    loop {
        let s = Sample::take(servers, aux)?;
        let exited = !matches!(stress.try_wait(), Ok(None));
        // A sample taken after the tool exited may include the work of closing its
        // connections, which is not part of what is measured.
        if exited || Instant::now() >= deadline {
            return Ok(v);
        }
        v.push(s);
        std::thread::sleep(every);
    }
}

/// The CPU samples scenarios 2 and 3 (and the cluster fan-out) measure over.
pub(crate) struct PublishWindow {
    /// Taken just before the status request that first saw a publish, so the window
    /// contains the whole publish.
    start: Sample,
    /// When that request saw it.
    seen: Instant,
    /// From then until the stress tool exited.
    samples: Vec<Sample>,
}

/// Runs `run` (which publishes) against `servers`: waits until their connections are
/// held (`held` in `row`) and for the first publish on `watch`, samples the CPU of
/// `servers` (summed) and of `aux` every `every` until the stress tool exits, and takes
/// its summary into `row`. None, noted in `row`, if no publish was seen on `watch`'s
/// counters.
#[allow(clippy::too_many_arguments)]
pub(crate) fn publish_window(
    env: &Env,
    servers: &[&Server],
    aux: &[u32],
    watch: &Server,
    row: &mut Row,
    run: &mut stress::Run,
    tag: &str,
    every: Duration,
    p: &Params,
) -> io::Result<Option<PublishWindow>> {
    let n = run.connections;
    let (mut sp, json) = env.spawn_stress(run, tag)?;
    let h = wait_held(servers, &mut sp, n, ramp_limit(n, p))?;
    row.set("held", h as f64);
    let published0 = watch.status()?.published;
    let found = wait_publish(
        servers,
        aux,
        watch,
        &mut sp,
        published0,
        run.hold + Duration::from_secs(10),
    )?;
    let samples = sample_until_exit(servers, aux, &mut sp, every, run.max_time)?;
    let end = finish_stress(sp, &json, run.max_time);
    row.take_summary(&end);
    let Some((start, seen)) = found else {
        row.notes
            .push("no publish was seen on the server's counters".into());
        return Ok(None);
    };
    Ok(Some(PublishWindow {
        start,
        seen,
        samples,
    }))
}

/// The N of fan-out scenario `s` (2, 7, 11 or 13).
pub fn fanout_size(p: &Params, s: Scenario) -> u64 {
    match s {
        Scenario::SseFanout => p.sse_fanout_n,
        Scenario::WsFanout => p.ws_fanout_n,
        Scenario::NdjsonFanout => p.ndjson_fanout_n,
        _ => p.fanout_n,
    }
}

/// Scenarios 2, 7, 11 and 13: one publish to N long-poll subscribers (`Fanout`), SSE
/// streams (`SseFanout`), WebSockets (`WsFanout`) or ndjson streams (`NdjsonFanout`)
/// of one channel.
pub fn fanout(env: &Env, kind: Kind, p: &Params, s: Scenario) -> io::Result<Row> {
    let n = fanout_size(p, s);
    let (tag, channel) = match s {
        Scenario::SseFanout => ("sse-fanout", "ssefanout"),
        Scenario::WsFanout => ("ws-fanout", "wsfanout"),
        Scenario::NdjsonFanout => ("ndjson-fanout", "ndjsonfanout"),
        _ => ("fanout", "fanout"),
    };
    let server = env.start(kind, p.threads, tag)?;
    let mut row = Row::new(s, kind.name(), n);
    if !transport_ready(&server, s, &mut row) {
        return Ok(row);
    }
    let mut run = env.stress_run(&[&server], n, channel, p);
    run.mode = s.mode();
    run.hold = Duration::from_millis(p.settle_ms + 1000);
    run.publish = 1;
    let tag = format!("{}-{tag}", kind.name());
    let every = Duration::from_millis(1);
    if let Some(w) = publish_window(
        env,
        &[&server],
        &[],
        &server,
        &mut row,
        &mut run,
        &tag,
        every,
        p,
    )? {
        fanout_metrics(env, &mut row, &w);
    }
    Ok(row)
}

/// The fan-out figures of one publish window into `row`: server CPU from just before
/// the publish to the last receipt, per delivery, and the wall time to the last
/// receipt. Returns the CPU the window's `aux` processes used over the same interval.
pub(crate) fn fanout_metrics(env: &Env, row: &mut Row, w: &PublishWindow) -> Cpu {
    let (start, seen, samples) = (w.start, w.seen, &w.samples);
    // The last receipt happened at most `latency max` after the publish, which itself
    // happened before `seen` (0 when the stress tool reported no latency).
    let max_us = row.get("latency_max_us").unwrap_or(0.0);
    let t_end = seen + Duration::from_secs_f64(max_us / 1e6);
    let last = samples
        .iter()
        .find(|s| s.at >= t_end)
        .or(samples.last())
        .copied()
        .unwrap_or(start);
    let cpu = last.cpu.since(start.cpu);
    let received = row.get("received").unwrap_or(0.0);
    row.set(
        "window_ms",
        last.at.saturating_duration_since(start.at).as_secs_f64() * 1e3,
    );
    row.set("cpu_ns", cpu.ns as f64);
    row.set("cpu_ticks", cpu.ticks as f64);
    row.set("cpu_per_delivery_us", div(cpu.ns as f64 / 1e3, received));
    row.set(
        "cpu_ticks_per_delivery_us",
        div(cpu.ticks as f64 * 1e6 / env.clk_tck as f64, received),
    );
    row.set("wall_to_last_ms", max_us / 1e3);
    last.aux.since(start.aux)
}

/// Scenario 3: M subscribers on one channel, K messages published `cycle_interval_ms`
/// apart; each subscriber re-polls with its cursor after every message.
pub fn poll_cycle(env: &Env, kind: Kind, p: &Params) -> io::Result<Row> {
    let m = p.cycle_m;
    let server = env.start(kind, p.threads, "cycle")?;
    let mut row = Row::new(Scenario::Cycle, kind.name(), m);
    row.set("messages", p.cycle_k as f64);
    let mut run = env.stress_run(&[&server], m, "cycle", p);
    run.hold = Duration::from_millis(p.settle_ms + 1000);
    run.publish = p.cycle_k;
    run.publish_interval = Some(Duration::from_millis(p.cycle_interval_ms));
    let tag = format!("{}-cycle", kind.name());
    let every = Duration::from_millis(2);
    let Some(PublishWindow { start, samples, .. }) = publish_window(
        env,
        &[&server],
        &[],
        &server,
        &mut row,
        &mut run,
        &tag,
        every,
        p,
    )?
    else {
        return Ok(row);
    };
    // The delivery phase ends at the last busy sample (over 5 % of a CPU since the
    // previous one) before the first idle stretch of `IDLE_GAP` after the last
    // publish. Then every subscriber is parked again; later activity is the stress
    // tool closing its connections, which is not part of the cycle.
    let publishing = Duration::from_millis(p.cycle_interval_ms * p.cycle_k.saturating_sub(1));
    // The interval from `start` to the first sample counts too: a fast server may have
    // done all its work before the harness took that sample.
    let mut all = Vec::with_capacity(samples.len() + 1);
    all.push(start);
    all.extend(samples);
    let last = delivery_end(&all, start, start.at + publishing);
    let window = last.at.saturating_duration_since(start.at).as_secs_f64();
    let cpu = last.cpu.since(start.cpu);
    let received = row.get("received").unwrap_or(0.0);
    row.set("window_ms", window * 1e3);
    row.set("cpu_ns", cpu.ns as f64);
    row.set("cpu_ticks", cpu.ticks as f64);
    row.set("deliveries_per_sec", div(received, window));
    row.set("deliveries_per_cpu_sec", div(received, cpu.ns as f64 / 1e9));
    row.set("cpu_percent", div(cpu.ns as f64 / 1e9, window) * 100.0);
    Ok(row)
}

/// Idle time that ends a burst of server work.
const IDLE_GAP: Duration = Duration::from_millis(30);

/// The last busy sample before the first idle stretch of [`IDLE_GAP`] that ends at
/// least [`IDLE_GAP`] after `not_before` (the last publish); `start` if the server
/// never got busy. Gaps between publishes therefore never end the window.
fn delivery_end(samples: &[Sample], start: Sample, not_before: Instant) -> Sample {
    let mut last = start;
    for w in samples.windows(2) {
        if w[1].at <= start.at {
            continue;
        }
        let dt = w[1].at.saturating_duration_since(w[0].at).as_nanos() as f64;
        let busy = w[1].cpu.ns.saturating_sub(w[0].cpu.ns) as f64;
        // Busy: over 5 % of a CPU, or over 100 µs in a longer interval (an idle server
        // uses a few µs in 30 ms).
        if busy > (0.05 * dt).min(100_000.0) {
            last = w[1];
        } else if w[1].at >= not_before + IDLE_GAP
            && w[1].at.saturating_duration_since(last.at) >= IDLE_GAP
        {
            break;
        }
    }
    last
}

/// Scenario 4: server CPU over a window with N parked and nothing published.
pub fn idle_cpu(env: &Env, kind: Kind, p: &Params) -> io::Result<Row> {
    let n = p.idle_cpu_n;
    let server = env.start(kind, p.threads, "idlecpu")?;
    let mut row = Row::new(Scenario::IdleCpu, kind.name(), n);
    let mut run = env.stress_run(&[&server], n, "idlecpu", p);
    run.hold = Duration::from_millis(p.settle_ms + p.idle_cpu_secs * 1000 + 1500);
    let (mut sp, json) = env.spawn_stress(&mut run, &format!("{}-idlecpu", kind.name()))?;
    let h = wait_held(&[&server], &mut sp, n, ramp_limit(n, p))?;
    std::thread::sleep(Duration::from_millis(p.settle_ms));
    let c0 = server.cpu()?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(p.idle_cpu_secs));
    let c1 = server.cpu()?;
    let secs = t0.elapsed().as_secs_f64();
    let h1 = held(&[&server])?;
    if h1 < h {
        row.notes
            .push(format!("held dropped from {h} to {h1} during the window"));
    }
    let cpu = c1.since(c0);
    row.set("held", h1 as f64);
    row.set("window_secs", secs);
    row.set("cpu_ns", cpu.ns as f64);
    row.set("cpu_ticks", cpu.ticks as f64);
    row.set("cpu_ms", cpu.ns as f64 / 1e6);
    row.set("cpu_percent", cpu.ns as f64 / 1e9 / secs * 100.0);
    let end = finish_stress(sp, &json, run.max_time + Duration::from_secs(10));
    row.take_summary(&end);
    Ok(row)
}

/// Scenario 5: `scale_n` parked long-polls over `scale_procs` holdfast (or floor)
/// processes, then one publish through every admin address.
pub fn scale(env: &Env, kind: Kind, p: &Params) -> io::Result<Row> {
    let n = p.scale_n;
    let mut servers = Vec::new();
    for i in 0..p.scale_procs {
        servers.push(env.start(kind, p.threads, &format!("scale-{i}"))?);
    }
    let refs: Vec<&Server> = servers.iter().collect();
    let mut row = Row::new(Scenario::Scale, kind.name(), n);
    row.set("server_processes", p.scale_procs as f64);
    let mut run = env.stress_run(&refs, n, "scale", p);
    run.hold = Duration::from_millis(p.settle_ms + 2000);
    run.publish = 1;
    let tag = format!("{}-scale", kind.name());
    let (sp, json) = held_memory(env, &refs, &mut row, &mut run, &tag, p)?;
    let end = finish_stress(sp, &json, run.max_time + Duration::from_secs(10));
    row.take_summary(&end);
    drop(refs);
    drop(servers);
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples 2 ms apart with the given CPU nanoseconds used in each interval.
    fn samples(base: Instant, busy_ns: &[u64]) -> Vec<Sample> {
        let mut total = 0;
        busy_ns
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                total += b;
                Sample {
                    at: base + Duration::from_millis(2 * (i as u64 + 1)),
                    cpu: Cpu {
                        ticks: 0,
                        ns: total,
                    },
                    aux: Cpu::default(),
                }
            })
            .collect()
    }

    #[test]
    fn delivery_ends_at_the_last_busy_sample_before_a_long_idle_gap() {
        let base = Instant::now();
        let start = Sample {
            at: base,
            cpu: Cpu::default(),
            aux: Cpu::default(),
        };
        // 75 % of 2 ms. The pattern: busy, a short pause (4 ms), busy, then 40 ms idle,
        // then the stress tool's close burst.
        let busy = 1_500_000;
        let mut v = vec![busy, busy, 0, 0, busy, busy];
        v.extend([0; 20]);
        v.extend([busy; 5]);
        let s = samples(base, &v);
        let end = delivery_end(&s, start, base);
        assert_eq!(end.at, base + Duration::from_millis(12));
        assert_eq!(end.cpu.ns, 4 * busy);
    }

    #[test]
    fn idleness_before_the_last_publish_does_not_end_the_window() {
        let base = Instant::now();
        let start = Sample {
            at: base,
            cpu: Cpu::default(),
            aux: Cpu::default(),
        };
        let busy = 1_500_000;
        let mut v = vec![busy];
        v.extend([0; 20]); // 40 ms idle while publishes are still due
        v.push(busy);
        v.extend([0; 20]);
        let s = samples(base, &v);
        let end = delivery_end(&s, start, base + Duration::from_millis(30));
        assert_eq!(end.at, base + Duration::from_millis(44));
    }

    #[test]
    fn work_done_before_the_first_sample_counts() {
        let base = Instant::now();
        let start = Sample {
            at: base,
            cpu: Cpu::default(),
            aux: Cpu::default(),
        };
        // The harness was descheduled for 40 ms; the server did 1 ms of work meanwhile.
        let first = Sample {
            at: base + Duration::from_millis(40),
            cpu: Cpu {
                ticks: 0,
                ns: 1_000_000,
            },
            aux: Cpu::default(),
        };
        let mut all = vec![start, first];
        all.extend(
            samples(base + Duration::from_millis(40), &[0; 40])
                .into_iter()
                .map(|mut s| {
                    s.cpu.ns += 1_000_000;
                    s
                }),
        );
        let end = delivery_end(&all, start, base);
        assert_eq!(end.at, first.at);
        assert_eq!(end.cpu.ns, 1_000_000);
    }

    #[test]
    fn order_errors_of_a_publishing_run_become_metrics() {
        let summary = |mode: &str, protocol: &str, publish: u32| {
            let mut s = Summary {
                mode: mode.into(),
                protocol: protocol.into(),
                publish,
                received: 4,
                message_bytes: 320,
                ..Summary::default()
            };
            for (k, v) in [
                ("out_of_order", 1),
                ("event_id_order", 2),
                ("bad_event_id", 3),
            ] {
                s.errors.insert(k.into(), v);
            }
            StressEnd {
                summary: Some(s),
                note: None,
            }
        };
        type Case = (&'static str, &'static str, u32, Option<f64>, Option<f64>);
        let cases: &[Case] = &[
            ("sse", "holdfast", 1, Some(1.0), Some(5.0)),
            ("sse", "nchan", 1, Some(1.0), Some(5.0)),
            ("websocket", "holdfast", 1, Some(1.0), Some(5.0)),
            ("ndjson", "holdfast", 1, Some(1.0), Some(5.0)),
            // nchan's WebSocket frames carry no id: nothing to count.
            ("websocket", "nchan", 1, Some(1.0), None),
            ("longpoll", "holdfast", 1, Some(1.0), None),
            // Nothing published: nothing could arrive out of order, so no metric.
            ("sse", "holdfast", 0, None, None),
        ];
        for &(mode, protocol, publish, ooo, ids) in cases {
            let mut row = Row::new(Scenario::SseFanout, "x", 1);
            row.take_summary(&summary(mode, protocol, publish));
            assert_eq!(row.get("out_of_order"), ooo, "{mode} {protocol} {publish}");
            assert_eq!(
                row.get("event_id_errors"),
                ids,
                "{mode} {protocol} {publish}"
            );
            assert_eq!(row.get("bytes_per_message"), Some(80.0));
        }
    }

    #[test]
    fn the_stress_tool_is_asked_for_the_scenarios_mode() {
        let mut run = stress::Run {
            targets: vec!["127.0.0.1:1".parse().unwrap()],
            admins: vec![],
            connections: 1,
            mode: Scenario::SseFanout.mode(),
            protocol: "nchan",
            channel: "c".into(),
            rate: 1,
            hold: Duration::from_secs(1),
            publish: 0,
            publish_once: false,
            publish_interval: None,
            procs: None,
            max_time: Duration::from_secs(1),
        };
        let args = run.args(Path::new("/tmp/x.json")).join(" ");
        assert!(args.contains("--mode sse --protocol nchan"), "{args}");
        run.mode = Scenario::Fanout.mode();
        let args = run.args(Path::new("/tmp/x.json")).join(" ");
        assert!(args.contains("--mode longpoll"), "{args}");
        for (s, mode) in [
            (Scenario::WsIdle, "websocket"),
            (Scenario::WsFanout, "websocket"),
            (Scenario::NdjsonIdle, "ndjson"),
            (Scenario::NdjsonFanout, "ndjson"),
        ] {
            run.mode = s.mode();
            let args = run.args(Path::new("/tmp/x.json")).join(" ");
            assert!(args.contains(&format!("--mode {mode} ")), "{args}");
        }
    }

    #[test]
    fn nchan_sits_out_the_ndjson_scenarios_only() {
        for s in [Scenario::NdjsonIdle, Scenario::NdjsonFanout] {
            assert!(!s.runs_on(Kind::Nchan));
            assert!(s.runs_on(Kind::Holdfast) && s.runs_on(Kind::Tokio));
        }
        for s in [Scenario::WsIdle, Scenario::WsFanout, Scenario::SseFanout] {
            assert!(s.runs_on(Kind::Nchan));
        }
    }

    #[test]
    fn a_server_that_never_worked_ends_at_the_start() {
        let base = Instant::now();
        let start = Sample {
            at: base,
            cpu: Cpu::default(),
            aux: Cpu::default(),
        };
        let s = samples(base, &[0; 30]);
        assert_eq!(delivery_end(&s, start, base).at, base);
    }
}
