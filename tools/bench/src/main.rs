//! `holdfast-bench`: runs the same scenarios against holdfast, holdfast-tokio and nchan,
//! one server at a time with the same thread count, and writes
//! `bench-results/<date>/{results.json,results.csv,report.md,*.svg}`.
//!
//! Two more scenarios measure holdfast alone in cluster mode, on a `redis-server` the
//! harness starts itself (`cluster.rs`).
//!
//! The load comes from `holdfast-stress` (tools/stress); the harness starts and stops
//! servers, waits on their counters, reads `/proc`, and writes the report. See
//! `tools/bench/README.md` for what each scenario measures and the caveats.
#![deny(unsafe_code)]

mod cluster;
mod measure;
mod million;
mod probe;
mod procs;
mod report;
mod scenarios;
mod server;
mod stress;

use clap::Parser;
use scenarios::{Env, Params, Row, Scenario};
use server::Kind;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug)]
#[command(
    name = "holdfast-bench",
    version,
    about = "Side-by-side benchmark of holdfast, holdfast-tokio and nchan: memory per parked \
             long-poll, fan-out, poll cycle, idle CPU, 200k-connection scale, memory per SSE \
             stream and SSE fan-out; holdfast's cluster mode on Redis: fan-out over several \
             nodes and the publish ceiling; memory per WebSocket and ndjson stream and their \
             fan-out."
)]
struct Args {
    /// Tiny sizes and short windows (CI): well under a minute.
    #[arg(long)]
    smoke: bool,

    /// Scenarios to run [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,

    /// Servers to compare.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["holdfast", "tokio", "nchan", "floor"])]
    servers: Vec<Kind>,

    /// Event-loop threads of each server (nchan: worker_processes). Default 1: nchan is
    /// compared with one worker, so the others get one thread too.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: u32,

    /// Output directory [default: bench-results/<YYYY-MM-DD> (UTC)].
    #[arg(long)]
    out: Option<PathBuf>,

    /// holdfast-stress binary [default: beside this executable].
    #[arg(long)]
    stress: Option<PathBuf>,

    /// holdfast binary [default: beside this executable].
    #[arg(long)]
    holdfast_bin: Option<PathBuf>,

    /// holdfast-tokio binary [default: beside this executable].
    #[arg(long)]
    tokio_bin: Option<PathBuf>,

    /// holdfast-floor binary, the bare-epoll floor [default: beside this executable].
    #[arg(long)]
    floor_bin: Option<PathBuf>,

    /// Do not try to install nginx + libnginx-mod-nchan when they are missing.
    #[arg(long)]
    no_install: bool,

    /// Idle-hold sizes N [default: 1000,5000,10000,19000; smoke: 200].
    #[arg(long, value_delimiter = ',')]
    idle_n: Vec<u64>,

    /// Fan-out subscribers [default: 15000; smoke: 200].
    #[arg(long)]
    fanout_n: Option<u64>,

    /// Poll-cycle subscribers M [default: 5000; smoke: 100].
    #[arg(long)]
    cycle_m: Option<u64>,

    /// Poll-cycle messages K [default: 16, the per-channel buffer; smoke: 5].
    #[arg(long)]
    cycle_k: Option<u64>,

    /// Gap between poll-cycle publishes, milliseconds.
    #[arg(long, default_value_t = 2)]
    cycle_interval_ms: u64,

    /// Idle-CPU parked connections [default: 10000; smoke: 200].
    #[arg(long)]
    idle_cpu_n: Option<u64>,

    /// Idle-CPU window, seconds [default: 30; smoke: 2].
    #[arg(long)]
    idle_cpu_secs: Option<u64>,

    /// Scale-scenario connections [default: 200000; smoke: 2000].
    #[arg(long)]
    scale_n: Option<u64>,

    /// Scale-scenario holdfast processes [default: 12; smoke: 2].
    #[arg(long)]
    scale_procs: Option<u32>,

    /// SSE idle-hold sizes N [default: 1000,5000,10000,19000; smoke: 200].
    #[arg(long, value_delimiter = ',')]
    sse_idle_n: Vec<u64>,

    /// SSE fan-out streams [default: 15000; smoke: 200].
    #[arg(long)]
    sse_fanout_n: Option<u64>,

    /// WebSocket idle-hold sizes N [default: 1000,5000,10000,19000; smoke: 200].
    #[arg(long, value_delimiter = ',')]
    ws_idle_n: Vec<u64>,

    /// WebSocket fan-out subscribers [default: 15000; smoke: 200].
    #[arg(long)]
    ws_fanout_n: Option<u64>,

    /// ndjson idle-hold sizes N [default: 1000,5000,10000,19000; smoke: 200].
    #[arg(long, value_delimiter = ',')]
    ndjson_idle_n: Vec<u64>,

    /// ndjson fan-out streams [default: 15000; smoke: 200].
    #[arg(long)]
    ndjson_fanout_n: Option<u64>,

    /// Cluster fan-out subscribers N [default: 10000,50000; smoke: 200]. A setup whose
    /// share per node is over 19,000 is reported as not run.
    #[arg(long, value_delimiter = ',')]
    cluster_n: Vec<u64>,

    /// K, the nodes of the several-node cluster setups (cluster fan-out and publish
    /// ceiling).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    cluster_nodes: u32,

    /// Publish ceiling: concurrent keep-alive publishers [default: 8,32; smoke: 4].
    #[arg(long, value_delimiter = ',')]
    ceiling_publishers: Vec<u64>,

    /// Publish ceiling: measured window, milliseconds [default: 3000; smoke: 300].
    #[arg(long)]
    ceiling_ms: Option<u64>,

    /// Connections opened per second by the stress tool.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,

    /// The 1M run (`--only million`): connections [default: 1000000; smoke: 3000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=2_000_000))]
    million_n: Option<u64>,

    /// The 1M run: subscription modes, one run each [default: longpoll,sse].
    #[arg(long, value_delimiter = ',', value_parser = ["longpoll", "sse", "websocket"])]
    million_modes: Vec<String>,

    /// The 1M run: connections per server process, under the open-file limit
    /// [default: 18000; smoke: 1500].
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=19_000))]
    million_per_node: Option<u64>,

    /// The 1M run: connections opened per second [default: 25000; smoke: 5000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=200_000))]
    million_rate: Option<u64>,

    /// The 1M run: holdfast's --sse-heartbeat, seconds. Longer than the run by default:
    /// at 15 s a million streams are 66,667 heartbeat writes a second, more than two
    /// cores do beside the ramp (the floor sends none).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    million_sse_heartbeat: u64,
}

impl Args {
    fn params(&self) -> Params {
        let s = self.smoke;
        let pick =
            |v: Option<u64>, full: u64, smoke: u64| v.unwrap_or(if s { smoke } else { full });
        let sizes = |v: &[u64]| {
            if !v.is_empty() {
                v.to_vec()
            } else if s {
                vec![200]
            } else {
                vec![1000, 5000, 10000, 19000]
            }
        };
        Params {
            threads: self.threads,
            rate: self.rate,
            idle_n: sizes(&self.idle_n),
            fanout_n: pick(self.fanout_n, 15000, 200),
            cycle_m: pick(self.cycle_m, 5000, 100),
            cycle_k: pick(self.cycle_k, 16, 5),
            cycle_interval_ms: self.cycle_interval_ms,
            idle_cpu_n: pick(self.idle_cpu_n, 10000, 200),
            idle_cpu_secs: pick(self.idle_cpu_secs, 30, 2),
            scale_n: pick(self.scale_n, 200_000, 2000),
            scale_procs: self.scale_procs.unwrap_or(if s { 2 } else { 12 }),
            sse_idle_n: sizes(&self.sse_idle_n),
            sse_fanout_n: pick(self.sse_fanout_n, 15000, 200),
            ws_idle_n: sizes(&self.ws_idle_n),
            ws_fanout_n: pick(self.ws_fanout_n, 15000, 200),
            ndjson_idle_n: sizes(&self.ndjson_idle_n),
            ndjson_fanout_n: pick(self.ndjson_fanout_n, 15000, 200),
            cluster_n: if !self.cluster_n.is_empty() {
                self.cluster_n.clone()
            } else if s {
                vec![200]
            } else {
                vec![10_000, 50_000]
            },
            cluster_nodes: self.cluster_nodes,
            ceiling_publishers: if !self.ceiling_publishers.is_empty() {
                self.ceiling_publishers.clone()
            } else if s {
                vec![4]
            } else {
                vec![8, 32]
            },
            ceiling_ms: pick(self.ceiling_ms, 3000, 300),
            ceiling_warmup_ms: if s { 100 } else { 500 },
            settle_ms: if s { 300 } else { 1000 },
            million_n: pick(self.million_n, 1_000_000, 3_000),
            million_modes: if !self.million_modes.is_empty() {
                self.million_modes.clone()
            } else {
                vec!["longpoll".into(), "sse".into()]
            },
            million_per_node: pick(self.million_per_node, 18_000, 1_500),
            million_rate: pick(self.million_rate, 25_000, 5_000),
            million_heartbeat_secs: self.million_sse_heartbeat,
        }
    }
}

fn today_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = holdfast::http::respond::civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The command line as a shell would take it back.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `--X-bin PATH`, else `name` beside this executable.
fn beside_exe(explicit: &Option<PathBuf>, name: &str) -> Result<PathBuf, String> {
    let p = match explicit {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .map(|d| d.join(name))
            .ok_or("no directory for the current executable")?,
    };
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found (build the workspace in release mode: cargo build --release --workspace)",
            p.display()
        ))
    }
}

fn git_describe() -> String {
    measure::command_output("git", &["describe", "--always", "--dirty"])
        .unwrap_or_else(|| "unknown".into())
}

fn failed(s: Scenario, kind: Kind, n: u64, e: &std::io::Error) -> Row {
    let mut r = scenario_row(s, kind, n);
    r.notes.push(format!("failed: {e}"));
    r
}

fn scenario_row(s: Scenario, kind: Kind, n: u64) -> Row {
    Row::new(s, kind.name(), n)
}

fn main() -> ExitCode {
    procs::install_cleanup();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("holdfast-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let started = Instant::now();
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into())
    };
    let loadavg_start = loadavg();
    let date = today_utc();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("bench-results").join(&date));
    // Absolute: nginx resolves relative paths in its configuration against its prefix.
    let out = if out.is_absolute() {
        out
    } else {
        std::env::current_dir()
            .map_err(|e| format!("current directory: {e}"))?
            .join(out)
    };
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    if let Err(e) = holdfast::sys::raise_fd_limit() {
        eprintln!("holdfast-bench: cannot raise the open-file limit: {e}");
    }
    let params = args.params();
    let scenarios: Vec<Scenario> = if args.only.is_empty() {
        vec![
            Scenario::Idle,
            Scenario::Fanout,
            Scenario::Cycle,
            Scenario::IdleCpu,
            Scenario::Scale,
            Scenario::SseIdle,
            Scenario::SseFanout,
            Scenario::ClusterFanout,
            Scenario::PublishCeiling,
            Scenario::WsIdle,
            Scenario::WsFanout,
            Scenario::NdjsonIdle,
            Scenario::NdjsonFanout,
        ]
        .into_iter()
        // The 1M run takes minutes and most of the machine's memory: asked for by name
        // (`--only million`), or at its smoke size with `--smoke`.
        .chain(args.smoke.then_some(Scenario::Million))
        .collect()
    } else {
        let mut v = args.only.clone();
        v.sort();
        v.dedup();
        v
    };
    let mut kinds = args.servers.clone();
    kinds.sort();
    kinds.dedup();
    // The 1M run refuses before anything starts when the machine cannot take it: the
    // whole harness when it was asked for by name, only itself when `--smoke` added it.
    let mut million_skipped = None;
    let million_warnings = if scenarios.contains(&Scenario::Million) {
        match million::check(
            &million::Machine::read(),
            params.million_n,
            params.million_per_node,
        ) {
            Ok(w) => w,
            Err(e) if args.only.contains(&Scenario::Million) => {
                return Err(format!("million: {e}"))
            }
            Err(e) => {
                million_skipped = Some(format!("1M run (smoke size) not run: {e}"));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let scenarios: Vec<Scenario> = scenarios
        .into_iter()
        .filter(|&s| s != Scenario::Million || million_skipped.is_none())
        .collect();
    let mut notes = vec![
        format!(
            "Each server gets {} thread(s){}: nchan runs `worker_processes {}`, so holdfast and \
             holdfast-tokio get `--threads {}` too.",
            params.threads,
            if params.threads == 1 {
                " (the default, for fairness with nchan's single worker)"
            } else {
                ""
            },
            params.threads,
            params.threads
        ),
        format!(
            "Every server holds a long-poll for {} s when the client names no timeout \
             (holdfast/holdfast-tokio `--poll-timeout`, nchan `nchan_subscriber_timeout`); buffers \
             {} messages per channel for {} s (`--buffer-messages`/`nchan_message_buffer_length`, \
             `--message-ttl`/`nchan_message_timeout`).",
            server::POLL_TIMEOUT_SECS,
            server::BUFFER_MESSAGES,
            server::MESSAGE_TTL_SECS
        ),
        "The stress tool runs on the same 2-core machine as the server: with one server thread it \
         has the other core, but it competes with the server for CPU and memory bandwidth."
            .into(),
        "Memory of nchan = its nginx worker process(es); the master is reported separately. \
         nchan also keeps messages and channel state in a shared-memory zone, which counts in \
         the worker's RSS only for the pages it touched and never in Private."
            .into(),
    ];

    let holdfast = beside_exe(&args.holdfast_bin, "holdfast");
    let tokio = beside_exe(&args.tokio_bin, "holdfast-tokio");
    let floor = beside_exe(&args.floor_bin, "holdfast-floor");
    let stress_bin = stress::locate(args.stress.as_deref())?;
    let mut versions = BTreeMap::new();
    versions.insert("repository (git describe)".to_string(), git_describe());
    versions.insert(
        "holdfast-stress".to_string(),
        measure::command_output(&stress_bin.display().to_string(), &["--version"])
            .unwrap_or_else(|| "unknown".into()),
    );
    let mut nchan = None;
    kinds.retain(|&k| {
        let found = match k {
            Kind::Holdfast => holdfast.as_ref().map(|_| ()).map_err(Clone::clone),
            Kind::Tokio => tokio.as_ref().map(|_| ()).map_err(Clone::clone),
            Kind::Floor => floor.as_ref().map(|_| ()).map_err(Clone::clone),
            Kind::Nchan => {
                server::find_or_install_nchan(!args.no_install, &logs.join("apt-get.log")).and_then(
                    |n| {
                        // Start it once, so that a module that does not load is one clear
                        // message here rather than a failure in every scenario.
                        let probe = logs.join("nchan-probe.log");
                        server::Server::start_nchan(&n, args.threads, &logs, &probe)
                            .map_err(|e| format!("nginx with nchan does not start: {e}"))?;
                        nchan = Some(n);
                        Ok(())
                    },
                )
            }
        };
        match found {
            Ok(()) => true,
            Err(why) => {
                let msg = format!("{} skipped: {why}", k.name());
                eprintln!("holdfast-bench: {msg}");
                notes.push(msg);
                false
            }
        }
    });
    if kinds.is_empty() {
        return Err("no server to run".into());
    }
    let env = Env {
        holdfast: holdfast.clone().unwrap_or_default(),
        tokio: tokio.clone().unwrap_or_default(),
        floor: floor.clone().unwrap_or_default(),
        stress: stress_bin,
        nchan,
        logs,
        clk_tck: measure::clk_tck().0,
    };
    for &k in &kinds {
        let bin = match k {
            Kind::Tokio => &env.tokio,
            Kind::Floor => &env.floor,
            _ => &env.holdfast,
        };
        versions.insert(
            k.name().to_string(),
            server::version_of(k, bin, env.nchan.as_ref()),
        );
    }
    let (_, clk_src) = measure::clk_tck();
    if clk_src.starts_with("assumed") {
        notes.push("CLK_TCK assumed to be 100 (getconf unavailable).".into());
    }
    let sse = scenarios
        .iter()
        .any(|s| matches!(s, Scenario::SseIdle | Scenario::SseFanout));
    if sse {
        notes.push(
            "SSE scenarios: every stream is `GET /sub/CHANNEL` with `Accept: text/event-stream`. \
             holdfast and holdfast-tokio keep their default `--sse-heartbeat` of 15 s (a `: hb` \
             comment); nchan gets the same with `nchan_eventsource_ping_interval 15` and a `:hb` \
             comment. The stress tool checks order on every stream: payload sequence numbers for \
             all three servers, and event ids, which differ: holdfast's are decimal integers and \
             must increase; nchan's are `TIME:TAG` (publish second, counter within it) and must \
             increase as (TIME, TAG) pairs. `out of order` and `id errors` count violations."
                .into(),
        );
    }
    if scenarios
        .iter()
        .any(|s| matches!(s, Scenario::WsIdle | Scenario::WsFanout))
    {
        notes.push(format!(
            "WebSocket scenarios: every subscriber is `GET /sub/CHANNEL` with `Upgrade: websocket` \
             and a random 16-byte `Sec-WebSocket-Key`; the stress tool checks the \
             `Sec-WebSocket-Accept`, reads every frame and answers nothing, not even pings (a \
             subscriber sends nothing; holdfast asks for no pong, and every measurement ends \
             within seconds of the connections opening, before the first 15 s ping). \
             holdfast and holdfast-tokio send each message as one text frame holding the JSON \
             envelope (`{{\"id\":…,\"channel\":…,\"data\":…}}`), and the tool checks its id like \
             an SSE id; nchan (`nchan_subscriber longpoll eventsource websocket` in the same \
             location) sends the raw payload in a text frame, so its frames are counted and \
             their payloads checked, with no id. `B/message` is the frame payload as received. \
             Heartbeats: a ping every {} s on all three (holdfast's `--sse-heartbeat`, nchan's \
             `nchan_websocket_ping_interval`, off by default there).",
            server::SSE_HEARTBEAT_SECS
        ));
    }
    let ndjson = scenarios
        .iter()
        .any(|s| matches!(s, Scenario::NdjsonIdle | Scenario::NdjsonFanout));
    if ndjson && kinds.contains(&Kind::Nchan) {
        notes.push(
            "ndjson scenarios: holdfast and holdfast-tokio only. nchan has no ndjson stream; \
             its nearest, `nchan_subscriber http-raw-stream`, is not like for like: it writes \
             each raw payload and a newline (no JSON object, so no id and no channel to check \
             or resume from), sends no `Content-Type` and no chunked framing, has no \
             heartbeat setting (an idle raw stream keeps no timer, holdfast's ndjson stream \
             sends an empty line every 15 s), and in a location that also serves long-polls \
             nchan gives it every plain GET, so it needs a URL of its own. Its rows would \
             measure a different, lighter protocol."
                .into(),
        );
    }
    let clustered = scenarios.iter().any(|s| {
        matches!(
            s,
            Scenario::ClusterFanout | Scenario::PublishCeiling | Scenario::Million
        )
    }) && kinds.contains(&Kind::Holdfast);
    // Why the cluster scenarios cannot run, if they cannot: said once, here.
    let redis_bin = if clustered {
        let found = cluster::find_redis().and_then(|bin| {
            cluster::has_cluster_mode(&env.holdfast)?;
            Ok(bin)
        });
        match found {
            Ok(bin) => {
                versions.insert("redis-server".into(), cluster::Redis::version(&bin));
                notes.push(format!(
                    "Cluster scenarios: holdfast only, `--threads {}` per node. Each scenario \
                     starts its own redis-server on a free loopback port (`--save '' \
                     --appendonly no`, files in a temporary directory) and stops it at the \
                     end; every setup gets fresh nodes and its own `--redis-prefix`. K = {} \
                     nodes; the machine's {} cores are shared by the nodes, Redis, the load \
                     and the harness.",
                    params.threads,
                    params.cluster_nodes,
                    measure::command_output("nproc", &[]).unwrap_or_else(|| "?".into())
                ));
                Some(bin)
            }
            Err(why) => {
                let msg = format!("cluster scenarios skipped: {why}");
                eprintln!("holdfast-bench: {msg}");
                notes.push(msg);
                None
            }
        }
    } else {
        None
    };
    if scenarios.contains(&Scenario::Scale) {
        notes.push(format!(
            "Scale scenario: holdfast and the floor only ({} processes × {} thread(s); the floor \
             has one thread); holdfast-tokio and nchan are not run at that scale.",
            params.scale_procs, params.threads
        ));
    }

    let mut rows: Vec<Row> = Vec::new();
    let mut push = |r: Row| {
        for n in &r.notes {
            eprintln!("holdfast-bench:   {} N={}: {n}", r.server, r.connections);
        }
        rows.push(r);
    };
    if let Some(why) = million_skipped {
        eprintln!("holdfast-bench: {why}");
        notes.push(why);
    }
    if scenarios.contains(&Scenario::Million) {
        notes.push(format!(
            "1M run: {} connections per mode ({}), holdfast over {} cluster nodes (`--threads 1` \
             each, `--sse-heartbeat {}s`) on one redis-server with one publish through node 0, \
             then the floor over as many processes, each published to through its own admin \
             address; {} stress workers; ramp {} connections/s.",
            params.million_n,
            params.million_modes.join(", "),
            million::nodes(params.million_n, params.million_per_node),
            params.million_heartbeat_secs,
            params.million_n.div_ceil(15_000),
            params.million_rate
        ));
        notes.extend(
            million_warnings
                .iter()
                .map(|w| format!("1M run pre-flight: {w}")),
        );
    }
    for &s in &scenarios {
        if s == Scenario::Million {
            for r in million::million(&env, &params, &kinds, redis_bin.as_deref()) {
                push(r);
            }
            continue;
        }
        if matches!(s, Scenario::ClusterFanout | Scenario::PublishCeiling) {
            let Some(bin) = &redis_bin else { continue };
            let log = env.logs.join(format!("redis-{}.log", s.key()));
            let redis = match cluster::Redis::start(bin, &env.logs, &log) {
                Ok(r) => r,
                Err(e) => {
                    push(failed(s, Kind::Holdfast, 0, &e));
                    continue;
                }
            };
            eprintln!("holdfast-bench: {} on redis {}", s.key(), redis.addr);
            let floor = kinds.contains(&Kind::Floor);
            let rows = match s {
                Scenario::ClusterFanout => cluster::cluster_fanout(&env, &params, &redis, floor),
                _ => cluster::publish_ceiling(&env, &params, &redis, floor),
            };
            for r in rows {
                push(r);
            }
            continue;
        }
        if s == Scenario::Scale {
            for &k in kinds
                .iter()
                .filter(|&&k| matches!(k, Kind::Holdfast | Kind::Floor))
            {
                eprintln!(
                    "holdfast-bench: {} {} ({} connections)",
                    s.key(),
                    k.name(),
                    params.scale_n
                );
                push(
                    scenarios::scale(&env, k, &params)
                        .unwrap_or_else(|e| failed(s, k, params.scale_n, &e)),
                );
            }
            continue;
        }
        for &k in kinds.iter().filter(|&&k| s.runs_on(k)) {
            eprintln!("holdfast-bench: {} {}", s.key(), k.name());
            match s {
                Scenario::Idle | Scenario::SseIdle | Scenario::WsIdle | Scenario::NdjsonIdle => {
                    for (r, &n) in scenarios::idle_hold(&env, k, &params, s)
                        .into_iter()
                        .zip(scenarios::idle_sizes(&params, s))
                    {
                        push(r.unwrap_or_else(|e| failed(s, k, n, &e)));
                    }
                }
                Scenario::Fanout
                | Scenario::SseFanout
                | Scenario::WsFanout
                | Scenario::NdjsonFanout => {
                    let n = scenarios::fanout_size(&params, s);
                    push(
                        scenarios::fanout(&env, k, &params, s)
                            .unwrap_or_else(|e| failed(s, k, n, &e)),
                    )
                }
                Scenario::Cycle => push(
                    scenarios::poll_cycle(&env, k, &params)
                        .unwrap_or_else(|e| failed(s, k, params.cycle_m, &e)),
                ),
                Scenario::IdleCpu => push(
                    scenarios::idle_cpu(&env, k, &params)
                        .unwrap_or_else(|e| failed(s, k, params.idle_cpu_n, &e)),
                ),
                Scenario::Scale
                | Scenario::ClusterFanout
                | Scenario::PublishCeiling
                | Scenario::Million => {}
            }
        }
    }

    notes.push(format!(
        "The whole run took {:.0} s.",
        started.elapsed().as_secs_f64()
    ));
    let meta = report::Meta {
        date_utc: date,
        command: command_line(),
        smoke: args.smoke,
        machine: measure::machine(),
        versions,
        params,
        loadavg_start,
        loadavg_end: loadavg(),
        notes,
    };
    report::floor_ratios(&mut rows);
    let written =
        report::write_all(&out, &meta, &rows).map_err(|e| format!("writing the report: {e}"))?;
    eprintln!(
        "holdfast-bench: wrote {} in {}",
        written.join(", "),
        out.display()
    );
    let failures = rows
        .iter()
        .filter(|r| r.notes.iter().any(|n| n.starts_with("failed:")))
        .count();
    if failures > 0 {
        return Err(format!("{failures} measurement(s) failed; see report.md"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_scenarios_are_selectable_and_sized() {
        let a =
            Args::try_parse_from(["holdfast-bench", "--smoke", "--only", "sse-idle,sse-fanout"])
                .unwrap();
        assert_eq!(a.only, [Scenario::SseIdle, Scenario::SseFanout]);
        let p = a.params();
        assert_eq!((p.sse_idle_n.as_slice(), p.sse_fanout_n), (&[200][..], 200));
        let full = Args::try_parse_from(["holdfast-bench", "--sse-fanout-n", "7"])
            .unwrap()
            .params();
        assert_eq!(full.sse_idle_n, [1000, 5000, 10000, 19000]);
        assert_eq!(full.sse_fanout_n, 7);
        for (s, key, mode) in [
            (Scenario::Idle, "idle_hold", "longpoll"),
            (Scenario::Fanout, "fanout", "longpoll"),
            (Scenario::SseIdle, "sse_idle_hold", "sse"),
            (Scenario::SseFanout, "sse_fanout", "sse"),
        ] {
            assert_eq!((s.key(), s.mode()), (key, mode));
        }
        assert_eq!(scenarios::idle_sizes(&p, Scenario::SseIdle), [200]);
    }

    #[test]
    fn websocket_and_ndjson_scenarios_are_selectable_and_sized() {
        let a = Args::try_parse_from([
            "holdfast-bench",
            "--smoke",
            "--only",
            "ws-idle,ws-fanout,ndjson-idle,ndjson-fanout",
        ])
        .unwrap();
        assert_eq!(
            a.only,
            [
                Scenario::WsIdle,
                Scenario::WsFanout,
                Scenario::NdjsonIdle,
                Scenario::NdjsonFanout
            ]
        );
        let p = a.params();
        assert_eq!((p.ws_idle_n.as_slice(), p.ws_fanout_n), (&[200][..], 200));
        assert_eq!(
            (p.ndjson_idle_n.as_slice(), p.ndjson_fanout_n),
            (&[200][..], 200)
        );
        let full = Args::try_parse_from([
            "holdfast-bench",
            "--ws-idle-n",
            "5,6",
            "--ndjson-fanout-n",
            "9",
        ])
        .unwrap()
        .params();
        assert_eq!(full.ws_idle_n, [5, 6]);
        assert_eq!(full.ws_fanout_n, 15000);
        assert_eq!(full.ndjson_idle_n, [1000, 5000, 10000, 19000]);
        assert_eq!(full.ndjson_fanout_n, 9);
        for (s, key, mode) in [
            (Scenario::WsIdle, "ws_idle_hold", "websocket"),
            (Scenario::WsFanout, "ws_fanout", "websocket"),
            (Scenario::NdjsonIdle, "ndjson_idle_hold", "ndjson"),
            (Scenario::NdjsonFanout, "ndjson_fanout", "ndjson"),
        ] {
            assert_eq!((s.key(), s.mode()), (key, mode));
        }
        assert_eq!(scenarios::idle_sizes(&full, Scenario::WsIdle), [5, 6]);
        assert_eq!(scenarios::fanout_size(&full, Scenario::NdjsonFanout), 9);
    }

    #[test]
    fn cluster_scenarios_are_selectable_and_sized() {
        let a = Args::try_parse_from([
            "holdfast-bench",
            "--smoke",
            "--only",
            "cluster-fanout,publish-ceiling",
        ])
        .unwrap();
        assert_eq!(a.only, [Scenario::ClusterFanout, Scenario::PublishCeiling]);
        let p = a.params();
        assert_eq!(
            (
                p.cluster_n.as_slice(),
                p.cluster_nodes,
                p.ceiling_publishers.as_slice()
            ),
            (&[200][..], 3, &[4][..])
        );
        assert!(
            p.ceiling_ms + p.ceiling_warmup_ms <= 500,
            "smoke stays short"
        );
        let full = Args::try_parse_from([
            "holdfast-bench",
            "--cluster-n",
            "7,8",
            "--cluster-nodes",
            "4",
            "--ceiling-publishers",
            "2",
            "--ceiling-ms",
            "100",
        ])
        .unwrap()
        .params();
        assert_eq!(full.cluster_n, [7, 8]);
        assert_eq!(full.cluster_nodes, 4);
        assert_eq!(full.ceiling_publishers, [2]);
        assert_eq!(full.ceiling_ms, 100);
        let default = Args::try_parse_from(["holdfast-bench"]).unwrap().params();
        assert_eq!(default.cluster_n, [10_000, 50_000]);
        assert_eq!(default.ceiling_publishers, [8, 32]);
        assert!(Args::try_parse_from(["holdfast-bench", "--cluster-nodes", "0"]).is_err());
        for (s, key) in [
            (Scenario::ClusterFanout, "cluster_fanout"),
            (Scenario::PublishCeiling, "publish_ceiling"),
        ] {
            assert_eq!(s.key(), key);
        }
    }
}
