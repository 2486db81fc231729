//! Writing a run's results: `results.json` (everything), `results.csv` (one line per
//! metric), `report.md` (the machine, versions, command, and one table per scenario)
//! and SVG plots.

use crate::measure::Machine;
use crate::scenarios::{Params, Row};
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

/// Everything about a run that is not a measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    pub date_utc: String,
    pub command: String,
    pub smoke: bool,
    pub machine: Machine,
    pub versions: BTreeMap<String, String>,
    pub params: Params,
    /// `/proc/loadavg` when the run started and when it ended: other work on the
    /// machine shows up in CPU and latency figures (memory figures are per process).
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// Statements the reader needs (choices made, servers skipped).
    pub notes: Vec<String>,
}

/// The ratios to the floor every table shows: (metric, ratio key, inverse). The ratio
/// is the row's metric ÷ the floor's (the floor's ÷ the row's when `inverse`: a rate,
/// where more is better), so every ratio reads "times what the kernel alone costs".
const FLOOR_RATIOS: [(&str, &str, bool); 6] = [
    ("rss_per_conn_bytes", "rss_x_floor", false),
    ("total_per_conn_bytes", "total_x_floor", false),
    ("cpu_per_delivery_us", "cpu_x_floor", false),
    ("wall_to_last_ms", "wall_x_floor", false),
    ("deliveries_per_cpu_sec", "cpu_x_floor", true),
    ("cpu_per_publish_us", "cpu_x_floor", false),
];

/// Sets each row's ratios to the floor's row of the same scenario and N (and mode, for
/// the 1M run), measured in the same run; rows without a floor beside them get none.
/// Also sets `total_per_conn_bytes`: user space (RSS) plus kernel (Slab) per connection.
pub fn floor_ratios(rows: &mut [Row]) {
    for r in rows.iter_mut() {
        if let (Some(rss), Some(slab)) = (r.get("rss_per_conn_bytes"), r.get("slab_per_conn_bytes"))
        {
            r.set("total_per_conn_bytes", rss + slab);
        }
    }
    let floors: Vec<Row> = rows.iter().filter(|r| is_floor(r)).cloned().collect();
    for r in rows.iter_mut().filter(|r| !is_floor(r)) {
        // Same scenario and N, and in the cluster scenarios the same number of
        // processes (the floor row stands beside the K-node setup only).
        let Some(f) = floors.iter().find(|f| {
            f.scenario == r.scenario
                && f.connections == r.connections
                && f.get("nodes") == r.get("nodes")
        }) else {
            continue;
        };
        for (metric, key, inverse) in FLOOR_RATIOS {
            let (Some(a), Some(b)) = (r.get(metric), f.get(metric)) else {
                continue;
            };
            let (num, den) = if inverse { (b, a) } else { (a, b) };
            if den > 0.0 {
                r.set(key, num / den);
            }
        }
    }
}

/// The floor's rows: `floor`, or `floor, K processes` in the cluster scenarios.
fn is_floor(r: &Row) -> bool {
    r.server == crate::server::FLOOR || r.server.starts_with("floor,")
}

#[derive(Serialize)]
struct Results<'a> {
    meta: &'a Meta,
    results: &'a [Row],
}

pub fn write_all(dir: &Path, meta: &Meta, rows: &[Row]) -> io::Result<Vec<String>> {
    let mut written = Vec::new();
    let json = serde_json::to_string_pretty(&Results {
        meta,
        results: rows,
    })
    .map_err(io::Error::other)?;
    fs::write(dir.join("results.json"), json + "\n")?;
    written.push("results.json".to_string());
    fs::write(dir.join("results.csv"), csv(rows))?;
    written.push("results.csv".to_string());
    let mut plots = Vec::new();
    for (scenario, file, what) in [
        ("idle_hold", "idle_memory.svg", "parked long-polls"),
        ("sse_idle_hold", "sse_idle_memory.svg", "open SSE streams"),
        ("ws_idle_hold", "ws_idle_memory.svg", "open WebSockets"),
        (
            "ndjson_idle_hold",
            "ndjson_idle_memory.svg",
            "open ndjson streams",
        ),
    ] {
        if rows
            .iter()
            .any(|r| r.scenario == scenario && r.get("rss_delta_bytes").is_some())
        {
            idle_plot(&dir.join(file), rows, scenario, what)
                .map_err(|e| io::Error::other(format!("{file}: {e}")))?;
            plots.push(file);
        }
    }
    for (scenario, file, what) in [
        ("fanout", "fanout_latency.svg", "long-poll subscribers"),
        ("sse_fanout", "sse_fanout_latency.svg", "SSE streams"),
        ("ws_fanout", "ws_fanout_latency.svg", "WebSockets"),
        (
            "ndjson_fanout",
            "ndjson_fanout_latency.svg",
            "ndjson streams",
        ),
    ] {
        if rows
            .iter()
            .any(|r| r.scenario == scenario && r.get("latency_p50_us").is_some())
        {
            fanout_plot(&dir.join(file), rows, scenario, what)
                .map_err(|e| io::Error::other(format!("{file}: {e}")))?;
            plots.push(file);
        }
    }
    if rows.iter().any(|r| {
        r.curve
            .iter()
            .any(|p| p.held >= (r.connections / 100).max(100))
    }) {
        let file = "million_memory.svg";
        million_plot(&dir.join(file), rows)
            .map_err(|e| io::Error::other(format!("{file}: {e}")))?;
        plots.push(file);
    }
    fs::write(dir.join("report.md"), markdown(meta, rows, &plots))?;
    written.push("report.md".to_string());
    written.extend(plots.iter().map(|p| p.to_string()));
    Ok(written)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Long format: scenario,server,connections,metric,value. Notes are a metric-less line.
fn csv(rows: &[Row]) -> String {
    let mut out = String::from("scenario,server,connections,metric,value\n");
    for r in rows {
        for (k, v) in &r.metrics {
            let _ = writeln!(
                out,
                "{},{},{},{k},{v}",
                r.scenario,
                csv_field(&r.server),
                r.connections
            );
        }
        for n in &r.notes {
            let _ = writeln!(
                out,
                "{},{},{},note,{}",
                r.scenario,
                csv_field(&r.server),
                r.connections,
                csv_field(n)
            );
        }
    }
    out
}

/// A number for a table: integers plainly, others to a sensible precision, `–` if absent.
fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        None => "–".into(),
        Some(x) if x.abs() >= 1e5 || decimals == 0 => group(x.round() as i64),
        Some(x) => format!("{x:.decimals$}"),
    }
}

/// 1234567 → "1,234,567".
fn group(v: i64) -> String {
    let s = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn mib(v: Option<f64>) -> String {
    v.map_or("–".into(), |b| format!("{:.1}", b / (1024.0 * 1024.0)))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |us| format!("{:.2}", us / 1e3))
}

fn notes_of(r: &Row) -> String {
    if r.notes.is_empty() {
        String::new()
    } else {
        r.notes.join("; ").replace('|', "/")
    }
}

/// What a table column shows of a row.
#[derive(Clone, Copy)]
enum Cell {
    Server,
    /// The N asked of the stress tool, digits grouped.
    Connections,
    /// A metric to this many decimals ([`num`]).
    Num(&'static str, usize),
    /// A metric in bytes, as MiB.
    Mib(&'static str),
    /// The subscription mode of a 1M-run row, from its scenario key.
    Mode,
    /// A metric in µs, as ms.
    Ms(&'static str),
    Notes,
}

impl Cell {
    fn of(self, r: &Row) -> String {
        match self {
            Cell::Server => r.server.clone(),
            Cell::Connections => group(r.connections as i64),
            Cell::Num(k, decimals) => num(r.get(k), decimals),
            Cell::Mib(k) => mib(r.get(k)),
            Cell::Mode => r.scenario.trim_start_matches("million_").to_string(),
            Cell::Ms(k) => ms(r.get(k)),
            Cell::Notes => notes_of(r),
        }
    }
}

/// The memory columns of scenarios 1 and 5, one measurement in both
/// (`scenarios::held_memory`).
const MEMORY_COLUMNS: [(&str, Cell); 5] = [
    ("RSS growth (MiB)", Cell::Mib("rss_delta_bytes")),
    ("RSS B/conn", Cell::Num("rss_per_conn_bytes", 0)),
    ("Private B/conn", Cell::Num("private_per_conn_bytes", 0)),
    (
        "kernel Slab B/conn (2 sockets)",
        Cell::Num("slab_per_conn_bytes", 0),
    ),
    ("TCP sockets Δ", Cell::Num("tcp_inuse_delta", 0)),
];

/// Memory as a multiple of the floor's in the same run (`floor_ratios`): user space
/// alone, and user space + kernel, what a held connection costs the machine.
const FLOOR_MEMORY_COLUMNS: [(&str, Cell); 2] = [
    ("RSS × floor", Cell::Num("rss_x_floor", 1)),
    ("RSS+Slab × floor", Cell::Num("total_x_floor", 3)),
];

/// A markdown table with one line per row: each column a heading and what it shows.
fn table(out: &mut String, rows: &[&Row], columns: &[(&str, Cell)]) {
    let heads: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let _ = writeln!(out, "| {} |", heads.join(" | "));
    let _ = writeln!(out, "|{}|", vec!["---"; columns.len()].join("|"));
    for r in rows {
        let cells: Vec<String> = columns.iter().map(|(_, c)| c.of(r)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

fn of<'a>(rows: &'a [Row], scenario: &str) -> Vec<&'a Row> {
    rows.iter().filter(|r| r.scenario == scenario).collect()
}

pub fn markdown(meta: &Meta, rows: &[Row], plots: &[&str]) -> String {
    let mut o = String::new();
    let m = &meta.machine;
    let _ = writeln!(
        o,
        "# holdfast-bench report, {}{}\n",
        meta.date_utc,
        if meta.smoke { " (smoke)" } else { "" }
    );
    let _ = writeln!(o, "Command: `{}`\n", meta.command);
    let _ = writeln!(o, "## Machine\n");
    let _ = writeln!(o, "- nproc: {}; CPU: {}", m.nproc, m.cpu_model);
    let _ = writeln!(o, "- kernel (`uname -r`): {}", m.kernel);
    let _ = writeln!(o, "- {}", m.rustc);
    let _ = writeln!(o, "- open-file limit of the harness: {}", m.nofile_limit);
    let _ = writeln!(o, "- CLK_TCK: {} ({})", m.clk_tck, m.clk_tck_source);
    let _ = writeln!(
        o,
        "- `/proc/loadavg` at start: {}; at end: {} (anything else running on the machine \
         disturbs the CPU and latency figures; the memory figures are per process)",
        meta.loadavg_start, meta.loadavg_end
    );
    let _ = writeln!(o, "- `free -g`:\n\n```\n{}\n```\n", m.free_g);
    let _ = writeln!(o, "## Versions\n");
    for (k, v) in &meta.versions {
        let _ = writeln!(o, "- {k}: {v}");
    }
    let p = &meta.params;
    let _ = writeln!(o, "\n## Settings\n");
    let _ = writeln!(
        o,
        "- server threads: {} (holdfast and holdfast-tokio `--threads {}`; nchan `worker_processes {}`)",
        p.threads, p.threads, p.threads
    );
    let _ = writeln!(
        o,
        "- connection ramp: {} per second; settle before measuring: {} ms",
        p.rate, p.settle_ms
    );
    for n in &meta.notes {
        let _ = writeln!(o, "- {n}");
    }
    o.push('\n');

    let idle = of(rows, "idle_hold");
    if !idle.is_empty() {
        let _ = writeln!(o, "## 1. Idle hold: memory per parked long-poll\n");
        let _ = writeln!(
            o,
            "Server memory growth from just after start-up to N parked long-polls, divided by the \
             parked count the server reports. {IDLE_METHOD}\n"
        );
        idle_table(&mut o, &idle, plots, "idle_memory.svg");
    }

    let fan = of(rows, "fanout");
    if !fan.is_empty() {
        let _ = writeln!(
            o,
            "## 2. Fan-out: one publish to N subscribers of one channel\n"
        );
        let _ = writeln!(
            o,
            "{FANOUT_METHOD} The window also holds each subscriber's next poll when it arrives \
             before the window ends.\n"
        );
        fanout_table(&mut o, &fan, &[], plots, "fanout_latency.svg");
    }

    let cyc = of(rows, "poll_cycle");
    if !cyc.is_empty() {
        let _ = writeln!(
            o,
            "## 3. Poll cycle: M subscribers, K messages, re-polling with the cursor\n"
        );
        let _ = writeln!(
            o,
            "K messages are published {} ms apart to one channel with M subscribers; every \
             subscriber re-polls with `since=` (nchan: `If-Modified-Since`/`If-None-Match`) after each \
             message. Window: from just before the first publish reached the server to the end of \
             the server's last busy 2 ms interval before (last publish + the largest publish → \
             receipt latency), when every message had been received. Deliveries = messages the \
             stress tool received. The stress tool shares the machine; when the server's CPU % \
             is well under 100, the client was the bottleneck and deliveries per CPU-second is \
             the figure that describes the server.\n",
            p.cycle_interval_ms
        );
        table(
            &mut o,
            &cyc,
            &[
                ("server", Cell::Server),
                ("M", Cell::Connections),
                ("K", Cell::Num("messages", 0)),
                ("deliveries", Cell::Num("received", 0)),
                ("lost", Cell::Num("lost", 0)),
                ("window (ms)", Cell::Num("window_ms", 1)),
                ("deliveries/s", Cell::Num("deliveries_per_sec", 0)),
                (
                    "deliveries per CPU-second",
                    Cell::Num("deliveries_per_cpu_sec", 0),
                ),
                ("CPU/delivery × floor", Cell::Num("cpu_x_floor", 2)),
                ("server CPU %", Cell::Num("cpu_percent", 0)),
                ("p99 (ms)", Cell::Ms("latency_p99_us")),
                ("notes", Cell::Notes),
            ],
        );
    }

    let icpu = of(rows, "idle_cpu");
    if !icpu.is_empty() {
        let _ = writeln!(o, "## 4. Idle CPU with N parked\n");
        let _ = writeln!(
            o,
            "Server CPU over the window with N long-polls parked and nothing published (schedstat ns \
             and utime+stime ticks). No poll times out inside the window (poll timeout {} s).\n",
            crate::server::POLL_TIMEOUT_SECS
        );
        table(
            &mut o,
            &icpu,
            &[
                ("server", Cell::Server),
                ("held", Cell::Num("held", 0)),
                ("window (s)", Cell::Num("window_secs", 1)),
                ("CPU (ms)", Cell::Num("cpu_ms", 2)),
                ("CPU (ticks)", Cell::Num("cpu_ticks", 0)),
                ("CPU %", Cell::Num("cpu_percent", 3)),
                ("notes", Cell::Notes),
            ],
        );
    }

    let sc = of(rows, "scale");
    if !sc.is_empty() {
        let _ = writeln!(
            o,
            "## 5. Scale: parked long-polls over several holdfast processes\n"
        );
        let _ = writeln!(
            o,
            "holdfast, and the floor over as many processes. Each process has its own public and admin address (one process may hold \
             under 20,000 sockets here). Memory per connection = Σ RSS (and Private) growth of all \
             processes ÷ Σ parked; Slab as in scenario 1 (machine-wide, two sockets per \
             connection). After the hold, one message is published through every admin address; \
             lost is the stress tool's count.\n"
        );
        let columns = [
            &[
                ("server", Cell::Server),
                ("processes", Cell::Num("server_processes", 0)),
                ("N", Cell::Connections),
                ("held", Cell::Num("held", 0)),
            ][..],
            &MEMORY_COLUMNS,
            &FLOOR_MEMORY_COLUMNS,
            &[
                ("received", Cell::Num("received", 0)),
                ("lost", Cell::Num("lost", 0)),
                ("max latency (ms)", Cell::Ms("latency_max_us")),
                ("notes", Cell::Notes),
            ],
        ]
        .concat();
        table(&mut o, &sc, &columns);
    }

    let sse_idle = of(rows, "sse_idle_hold");
    if !sse_idle.is_empty() {
        let _ = writeln!(o, "## 6. SSE idle hold: memory per open SSE stream\n");
        let _ = writeln!(
            o,
            "As scenario 1 with SSE streams (`GET /sub/CHANNEL`, `Accept: text/event-stream`) \
             instead of long-polls: server memory growth from just after start-up to N open, idle \
             streams (each counted once its `200` head arrived), divided by the open streams the \
             server reports (holdfast/holdfast-tokio `sse_streams`, nchan `subscribers`). Nothing \
             is published. {IDLE_METHOD}\n"
        );
        idle_table(&mut o, &sse_idle, plots, "sse_idle_memory.svg");
    }

    let sse_fan = of(rows, "sse_fanout");
    if !sse_fan.is_empty() {
        let _ = writeln!(
            o,
            "## 7. SSE fan-out: one publish to N SSE streams of one channel\n"
        );
        let _ = writeln!(
            o,
            "As scenario 2 with SSE streams: one message to N open streams, each written as one \
             event on a stream that stays open (no re-poll follows). {FANOUT_METHOD} Order: the \
             stress tool checks every event's payload sequence number and its event id (holdfast: \
             increasing integers; nchan: increasing `TIME:TAG` pairs); `out of order` and `id \
             errors` count what broke it.\n"
        );
        fanout_table(
            &mut o,
            &sse_fan,
            &[
                ("out of order", Cell::Num("out_of_order", 0)),
                ("id errors", Cell::Num("event_id_errors", 0)),
            ],
            plots,
            "sse_fanout_latency.svg",
        );
    }

    let cf = of(rows, "cluster_fanout");
    if !cf.is_empty() {
        let _ = writeln!(
            o,
            "## 8. Cluster fan-out: one publish to N subscribers over several nodes on one Redis\n"
        );
        let _ = writeln!(
            o,
            "holdfast, three setups in the same run: one standalone node (no Redis), one \
             node in cluster mode (`--redis`), and K nodes in cluster mode on the same Redis with \
             the N long-poll subscribers spread evenly over them (round-robin) and the one \
             publish sent to node 0's admin listener; and the floor over K processes, each \
             published to through its own admin listener (it has no backplane; its ratios \
             stand beside the K-node row). {FANOUT_METHOD} CPU is summed over the \
             nodes; Redis's CPU (schedstat) over the same window is beside it. For holdfast \
             the stress tool runs with `--publish-once`: it publishes through node 0 only and \
             reads every node's `/stats` to know the node holds its share. Messages from Redis = Σ over nodes of \
             `/stats` `backplane_received` (one per node means no per-subscriber traffic); \
             Redis PUBLISH calls from `INFO commandstats`. Subscribes read from Redis = Σ \
             `backplane_fetches`: polls a node answered from Redis because it did not hold \
             the channel yet (the ramp's first polls on each node). A setup whose share per node is \
             over 19,000 subscribers (the open-file limit is 20,000 per process) is not run.\n"
        );
        table(
            &mut o,
            &cf,
            &[
                ("setup", Cell::Server),
                ("nodes", Cell::Num("nodes", 0)),
                ("N", Cell::Connections),
                ("held", Cell::Num("held", 0)),
                ("received", Cell::Num("received", 0)),
                ("lost", Cell::Num("lost", 0)),
                (
                    "CPU µs/delivery, Σ nodes (schedstat)",
                    Cell::Num("cpu_per_delivery_us", 2),
                ),
                (
                    "CPU µs/delivery, Σ nodes (utime+stime)",
                    Cell::Num("cpu_ticks_per_delivery_us", 2),
                ),
                ("CPU × floor", Cell::Num("cpu_x_floor", 2)),
                ("Redis CPU in window (µs)", Cell::Num("redis_cpu_us", 0)),
                ("messages from Redis", Cell::Num("backplane_received", 0)),
                ("Redis PUBLISH calls", Cell::Num("redis_publish_calls", 0)),
                (
                    "subscribes read from Redis",
                    Cell::Num("backplane_fetches", 0),
                ),
                ("wall to last receipt (ms)", Cell::Num("wall_to_last_ms", 2)),
                ("wall × floor", Cell::Num("wall_x_floor", 2)),
                ("p50 (ms)", Cell::Ms("latency_p50_us")),
                ("p99 (ms)", Cell::Ms("latency_p99_us")),
                ("notes", Cell::Notes),
            ],
        );
    }

    let pc = of(rows, "publish_ceiling");
    if !pc.is_empty() {
        let _ = writeln!(
            o,
            "## 9. Publish ceiling: publishes per second through one Redis\n"
        );
        let _ = writeln!(
            o,
            "C publishers (threads of the harness), each on one keep-alive connection to an \
             admin listener (publisher i to node i mod K), each to a channel of its own with no \
             subscribers, post a 32-byte message and send the next as soon as the answer is \
             read, for {} ms after a {} ms warm-up. Publishes/s = `201` answers read inside the \
             window ÷ the window; latency = request written → answer read. CPU over the same \
             window (schedstat): nodes summed, and Redis; 100 % = one core. Every cluster \
             publish is one Redis round trip (a script run); Redis commands per publish counts \
             the commands inside it too (`INFO stats` `total_commands_processed`). The \
             publishers, the nodes and Redis share the machine, so this is the ceiling on this \
             machine, not Redis's own.\n",
            p.ceiling_ms, p.ceiling_warmup_ms
        );
        table(
            &mut o,
            &pc,
            &[
                ("setup", Cell::Server),
                ("nodes", Cell::Num("nodes", 0)),
                ("publishers", Cell::Connections),
                ("publishes", Cell::Num("publishes", 0)),
                ("publishes/s", Cell::Num("publishes_per_sec", 0)),
                ("p50 (µs)", Cell::Num("publish_p50_us", 0)),
                ("p99 (µs)", Cell::Num("publish_p99_us", 0)),
                ("max (µs)", Cell::Num("publish_max_us", 0)),
                ("errors", Cell::Num("publish_errors", 0)),
                ("node CPU µs/publish", Cell::Num("cpu_per_publish_us", 2)),
                ("CPU × floor", Cell::Num("cpu_x_floor", 2)),
                ("node CPU %", Cell::Num("cpu_percent", 0)),
                (
                    "Redis CPU µs/publish",
                    Cell::Num("redis_cpu_per_publish_us", 2),
                ),
                ("Redis CPU %", Cell::Num("redis_cpu_percent", 0)),
                (
                    "Redis commands/publish",
                    Cell::Num("redis_commands_per_publish", 2),
                ),
                ("notes", Cell::Notes),
            ],
        );
    }
    let ws_idle = of(rows, "ws_idle_hold");
    if !ws_idle.is_empty() {
        let _ = writeln!(o, "## 10. WebSocket idle hold: memory per open WebSocket\n");
        let _ = writeln!(
            o,
            "As scenario 6 with WebSockets (`GET /sub/CHANNEL` with `Upgrade: websocket`, each \
             counted once its `101` arrived and its `Sec-WebSocket-Accept` checked) instead of \
             SSE streams: server memory growth from just after start-up to N open, idle \
             WebSockets, divided by the open subscribers the server reports \
             (holdfast/holdfast-tokio `websockets`, nchan `subscribers`). Nothing is published; \
             each server pings every {} s. A server that does not answer the upgrade with \
             `101` (a peer not yet taught WebSocket) has a row saying what it did instead. \
             {IDLE_METHOD}\n",
            crate::server::SSE_HEARTBEAT_SECS
        );
        idle_table(&mut o, &ws_idle, plots, "ws_idle_memory.svg");
    }

    let ws_fan = of(rows, "ws_fanout");
    if !ws_fan.is_empty() {
        let _ = writeln!(
            o,
            "## 11. WebSocket fan-out: one publish to N WebSockets of one channel\n"
        );
        let _ = writeln!(
            o,
            "As scenario 7 with WebSockets: one message to N open WebSockets, each written as \
             one text frame. What the frame holds differs: holdfast and holdfast-tokio send the \
             JSON envelope (`{{\"id\":\"…\",\"channel\":\"…\",\"data\":\"…\"}}`), nchan the raw \
             payload; `B/message` is the frame payload as received, so the bytes each server \
             writes per delivery can be compared. {FANOUT_METHOD} Order: the stress tool checks \
             every frame's payload sequence number, and the envelope's `id` (increasing \
             integers) for holdfast and holdfast-tokio; nchan's frames carry no id (`–`).\n"
        );
        fanout_table(
            &mut o,
            &ws_fan,
            &[
                ("B/message", Cell::Num("bytes_per_message", 0)),
                ("out of order", Cell::Num("out_of_order", 0)),
                ("id errors", Cell::Num("event_id_errors", 0)),
            ],
            plots,
            "ws_fanout_latency.svg",
        );
    }

    let nd_idle = of(rows, "ndjson_idle_hold");
    if !nd_idle.is_empty() {
        let _ = writeln!(
            o,
            "## 12. ndjson idle hold: memory per open ndjson stream\n"
        );
        let _ = writeln!(
            o,
            "As scenario 6 with newline-delimited JSON streams (`GET /sub/CHANNEL?stream=ndjson`: \
             a chunked `application/x-ndjson` body, each stream counted once its `200` head \
             arrived), divided by the open streams the server reports (`ndjson_streams`). \
             Nothing is published; each server writes an empty heartbeat line every {} s. \
             {NO_NCHAN_NDJSON} {IDLE_METHOD}\n",
            crate::server::SSE_HEARTBEAT_SECS
        );
        idle_table(&mut o, &nd_idle, plots, "ndjson_idle_memory.svg");
    }

    let nd_fan = of(rows, "ndjson_fanout");
    if !nd_fan.is_empty() {
        let _ = writeln!(
            o,
            "## 13. ndjson fan-out: one publish to N ndjson streams of one channel\n"
        );
        let _ = writeln!(
            o,
            "As scenario 7 with ndjson streams: one message to N open streams, each written as \
             one chunk holding one JSON line. `B/message` is the line as received (without its \
             newline). {FANOUT_METHOD} Order: the stress tool checks every line's payload \
             sequence number and its `id` (increasing integers). {NO_NCHAN_NDJSON}\n"
        );
        fanout_table(
            &mut o,
            &nd_fan,
            &[
                ("B/message", Cell::Num("bytes_per_message", 0)),
                ("out of order", Cell::Num("out_of_order", 0)),
                ("id errors", Cell::Num("event_id_errors", 0)),
            ],
            plots,
            "ndjson_fanout_latency.svg",
        );
    }

    let mil: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario.starts_with("million_"))
        .collect();
    if !mil.is_empty() {
        let _ = writeln!(
            o,
            "## 14. One million: held over many processes, one publish\n"
        );
        let _ = writeln!(o, "{MILLION_METHOD}\n");
        table(
            &mut o,
            &mil,
            &[
                ("server", Cell::Server),
                ("mode", Cell::Mode),
                ("processes", Cell::Num("nodes", 0)),
                ("N", Cell::Connections),
                ("held", Cell::Num("held", 0)),
                ("received", Cell::Num("received", 0)),
                ("lost", Cell::Num("lost", 0)),
                (
                    "publish → last receipt (ms)",
                    Cell::Num("wall_to_last_ms", 0),
                ),
                ("wall × floor", Cell::Num("wall_x_floor", 2)),
                ("p50 (ms)", Cell::Ms("latency_p50_us")),
                ("p99 (ms)", Cell::Ms("latency_p99_us")),
                ("deliveries/s", Cell::Num("deliveries_per_sec", 0)),
                (
                    "server CPU µs/delivery",
                    Cell::Num("cpu_per_delivery_us", 2),
                ),
                ("CPU × floor", Cell::Num("cpu_x_floor", 2)),
                (
                    "servers CPU % (fan-out)",
                    Cell::Num("fanout_cpu_percent", 0),
                ),
                ("stress CPU % (fan-out)", Cell::Num("stress_cpu_percent", 0)),
                ("servers CPU % (idle)", Cell::Num("idle_cpu_percent", 2)),
                ("RSS B/conn", Cell::Num("rss_per_conn_bytes", 1)),
                ("RSS × floor", Cell::Num("rss_x_floor", 1)),
                (
                    "kernel Slab B/conn (2 sockets)",
                    Cell::Num("slab_per_conn_bytes", 0),
                ),
                ("RSS+Slab × floor", Cell::Num("total_x_floor", 3)),
                (
                    "machine used B/conn",
                    Cell::Num("machine_used_per_conn_bytes", 0),
                ),
                ("ramp (conn/s)", Cell::Num("ramp_per_sec", 0)),
                ("notes", Cell::Notes),
            ],
        );
        if plots.contains(&"million_memory.svg") {
            let _ = writeln!(o, "![memory vs connections, 1M run](million_memory.svg)\n");
        }
    }
    o
}

/// How the 1M run measures (section 14).
const MILLION_METHOD: &str = "N subscriptions spread over ⌈N ÷ per-process⌉ server \
     processes (one process may hold under 20,000 sockets here) and ⌈N ÷ 15,000⌉ stress \
     workers on 509 loopback source addresses. holdfast: cluster nodes (`--redis`, \
     `--threads 1`) on one redis-server, and **one publish through node 0** \
     (`holdfast-stress --publish-once`), which reaches the other nodes through Redis. \
     floor: as many `holdfast-floor` processes, each published to through its own admin \
     address by one thread per address (it has no backplane); every copy carries the \
     moment the stress tool began the round, so its latency counts from the same \
     instant as holdfast's one publish. The two run one after the other with the same \
     stress settings. publish → last receipt = the stress tool's largest publish → \
     receipt latency; deliveries/s = received ÷ that. CPU during the fan-out: CPU is \
     read every 100 ms, and the window runs from the last reading before the stress \
     tool sent the publish (its `first_publish_unix_us`) to the first reading after \
     that + the largest latency, Σ over the server processes (schedstat), and the \
     stress tool's processes over the same window (100 % = one core; the machine has \
     two for everything). Idle CPU: Σ server processes over 4 s with everything held, \
     before the publish. RSS B/conn = Σ RSS growth from before the ramp to 2 s after the last \
     connection was held ÷ held; kernel Slab = machine-wide growth ÷ held (both ends of \
     each connection); machine used = growth of MemTotal − MemAvailable ÷ held. Ratios \
     (× floor) are to the floor's row of the same mode in the same run.";

/// Why the ndjson sections have no nchan row.
const NO_NCHAN_NDJSON: &str = "nchan is not in this table: it has no ndjson stream, and \
     its nearest, `nchan_subscriber http-raw-stream`, is a different protocol (each raw \
     payload and a newline: no JSON object, no id or channel, no `Content-Type`, no chunked \
     framing, no heartbeat), so its figures would not compare like for like.";

/// How scenarios 1 and 6 measure memory (after the sentence saying what N counts).
const IDLE_METHOD: &str = "RSS and Private (Private_Clean + Private_Dirty) from \
     `/proc/PID/smaps_rollup`. Kernel: the machine-wide `/proc/meminfo` `Slab` growth over \
     the same interval ÷ N; it covers **both** ends of each connection (the stress tool's \
     socket and the server's), i.e. two sockets per connection, and anything else the \
     machine did meanwhile. TCP sockets Δ (machine-wide, `/proc/net/sockstat` inuse) is \
     the check: it should be 2 × held; when it is far off, the Slab figure is flagged.";

/// How scenarios 2 and 7 measure CPU and latency.
const FANOUT_METHOD: &str = "Server CPU from just before the publish reached the server \
     until the last subscriber had its message (publish time + the stress tool's maximum \
     latency), ÷ messages received. Two readings of the same window: the threads' schedstat \
     run time (ns), and utime + stime from `/proc/PID/stat` (clock ticks of 1/CLK_TCK s, so \
     coarse below ~10 ms). The window holds the publish request too. Latency: publish sent → \
     message received, measured by the stress tool. Wall time to the last receipt = max \
     latency.";

/// The table of scenarios 1, 6, 10 and 12, and its plot if one was drawn.
fn idle_table(o: &mut String, rows: &[&Row], plots: &[&str], plot: &str) {
    let columns = [
        &[
            ("server", Cell::Server),
            ("N", Cell::Connections),
            ("held", Cell::Num("held", 0)),
            ("RSS at start (MiB)", Cell::Mib("rss_before_bytes")),
        ][..],
        &MEMORY_COLUMNS,
        &FLOOR_MEMORY_COLUMNS,
        &[
            ("nginx master RSS (MiB)", Cell::Mib("master_rss_bytes")),
            ("notes", Cell::Notes),
        ],
    ]
    .concat();
    table(o, rows, &columns);
    if plots.contains(&plot) {
        let _ = writeln!(o, "![memory vs connections]({plot})\n");
    }
}

/// The table of scenarios 2, 7, 11 and 13 (`extra` columns go after `lost`), and its
/// plot.
fn fanout_table(o: &mut String, rows: &[&Row], extra: &[(&str, Cell)], plots: &[&str], plot: &str) {
    let columns = [
        &[
            ("server", Cell::Server),
            ("N", Cell::Connections),
            ("held", Cell::Num("held", 0)),
            ("received", Cell::Num("received", 0)),
            ("lost", Cell::Num("lost", 0)),
        ][..],
        extra,
        &[
            (
                "CPU µs/delivery (schedstat)",
                Cell::Num("cpu_per_delivery_us", 2),
            ),
            (
                "CPU µs/delivery (utime+stime)",
                Cell::Num("cpu_ticks_per_delivery_us", 2),
            ),
            ("CPU × floor", Cell::Num("cpu_x_floor", 2)),
            ("wall to last receipt (ms)", Cell::Num("wall_to_last_ms", 2)),
            ("wall × floor", Cell::Num("wall_x_floor", 2)),
            ("p50 (ms)", Cell::Ms("latency_p50_us")),
            ("p99 (ms)", Cell::Ms("latency_p99_us")),
            ("p99.9 (ms)", Cell::Ms("latency_p999_us")),
            ("max (ms)", Cell::Ms("latency_max_us")),
            ("notes", Cell::Notes),
        ],
    ]
    .concat();
    table(o, rows, &columns);
    if plots.contains(&plot) {
        let _ = writeln!(o, "![fan-out latency]({plot})\n");
    }
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    // The floor: grey, a reference line rather than a contender.
    RGBColor(110, 110, 110),
];

fn color_of(server: &str) -> RGBColor {
    match server {
        "holdfast" => COLORS[0],
        "holdfast-tokio" => COLORS[1],
        "floor" => COLORS[3],
        _ => COLORS[2],
    }
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Two panels: total RSS growth vs N (linear), and bytes per connection vs N (log y),
/// RSS solid and Private dashed-looking (hollow points). `what`: what N counts.
fn idle_plot(path: &Path, rows: &[Row], scenario: &str, what: &str) -> PlotResult {
    // Rows without figures (a server that could not run the scenario) get no line.
    let mut idle = of(rows, scenario);
    idle.retain(|r| r.get("rss_delta_bytes").is_some());
    let mut by_server: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in &idle {
        by_server.entry(r.server.as_str()).or_default().push(r);
    }
    let xmax = idle
        .iter()
        .filter_map(|r| r.get("held"))
        .fold(1.0, f64::max)
        * 1.05;
    let ymax_mib = idle
        .iter()
        .filter_map(|r| r.get("rss_delta_bytes"))
        .fold(0.1, f64::max)
        / (1024.0 * 1024.0)
        * 1.1;
    let per: Vec<f64> = idle
        .iter()
        .flat_map(|r| [r.get("rss_per_conn_bytes"), r.get("private_per_conn_bytes")])
        .flatten()
        .filter(|v| *v > 0.0)
        .collect();
    let ylo = per.iter().copied().fold(f64::MAX, f64::min).clamp(1.0, 1e6) / 2.0;
    let yhi = per.iter().copied().fold(10.0, f64::max) * 2.0;

    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);

    let mut c = ChartBuilder::on(&left)
        .caption(format!("Server RSS growth vs {what}"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax_mib)?;
    c.configure_mesh()
        .x_desc(format!("{what} (N)"))
        .y_desc("RSS growth (MiB)")
        .x_label_formatter(&|v| group(*v as i64))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .draw()?;
    for (server, rs) in &by_server {
        let col = color_of(server);
        let pts: Vec<(f64, f64)> = rs
            .iter()
            .filter_map(|r| {
                Some((
                    r.get("held")?,
                    r.get("rss_delta_bytes")? / (1024.0 * 1024.0),
                ))
            })
            .collect();
        c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))?
            .label(server.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, col.filled())))?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let mut c = ChartBuilder::on(&right)
        .caption("Bytes per connection (log scale)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, (ylo..yhi).log_scale())?;
    c.configure_mesh()
        .x_desc(format!("{what} (N)"))
        .y_desc("bytes per connection")
        .x_label_formatter(&|v| group(*v as i64))
        .y_label_formatter(&|v| group(*v as i64))
        .light_line_style(WHITE)
        .draw()?;
    for (server, rs) in &by_server {
        let col = color_of(server);
        for (key, what, filled) in [
            ("rss_per_conn_bytes", "RSS", true),
            ("private_per_conn_bytes", "Private", false),
        ] {
            let pts: Vec<(f64, f64)> = rs
                .iter()
                .filter_map(|r| Some((r.get("held")?, r.get(key)?)))
                .filter(|p| p.1 > 0.0)
                .collect();
            let style = if filled {
                col.stroke_width(2)
            } else {
                col.stroke_width(1)
            };
            c.draw_series(LineSeries::new(pts.clone(), style))?
                .label(format!("{server} {what}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            c.draw_series(pts.iter().map(|&p| {
                if filled {
                    Circle::new(p, 4, col.filled())
                } else {
                    Circle::new(p, 4, col.stroke_width(1))
                }
            }))?;
        }
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One line of the 1M plot: label, colour, solid (long-poll) or hollow, and points of
/// (held, user-space bytes per connection, kernel bytes per connection).
type MillionLine = (String, RGBColor, bool, Vec<(f64, f64, f64)>);

/// The 1M run's memory against connections held, sampled during the ramp: user-space
/// bytes per connection (Σ server RSS growth ÷ held) and kernel bytes per connection
/// (machine-wide Slab growth ÷ held, both ends), log-log, one line per server and mode.
/// Samples under 1 % of the run's N are left out (a few hundred connections say more
/// about page granularity than about a connection).
fn million_plot(path: &Path, rows: &[Row]) -> PlotResult {
    let lines: Vec<MillionLine> = rows
        .iter()
        .filter(|r| r.curve.len() > 1)
        .map(|r| {
            let floor = (r.connections / 100).max(100) as f64;
            let pts = r
                .curve
                .iter()
                .filter(|p| p.held as f64 >= floor)
                .map(|p| {
                    let h = p.held as f64;
                    (h, p.rss_delta / h, p.slab_delta / h)
                })
                .collect();
            let mode = r.scenario.trim_start_matches("million_");
            (
                format!("{} {mode}", r.server),
                color_of(&r.server),
                mode == "longpoll",
                pts,
            )
        })
        // A run that failed early has no sample at 1 % of N: no line.
        .filter(|l: &MillionLine| !l.3.is_empty())
        .collect();
    if lines.is_empty() {
        return Ok(());
    }
    let all = lines.iter().flat_map(|l| l.3.iter());
    let xlo = all.clone().map(|p| p.0).fold(f64::MAX, f64::min).max(1.0) * 0.9;
    let xhi = all.clone().map(|p| p.0).fold(10.0, f64::max) * 1.1;
    let range = |f: &dyn Fn(&(f64, f64, f64)) -> f64| {
        let v: Vec<f64> = all.clone().map(f).filter(|v| *v > 0.0).collect();
        let lo = v.iter().copied().fold(f64::MAX, f64::min).clamp(0.5, 1e7) / 2.0;
        let hi = v.iter().copied().fold(10.0, f64::max) * 2.0;
        (lo, hi)
    };
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    for (area, caption, ydesc, pick) in [
        (
            &left,
            "User space: Σ server RSS growth ÷ held",
            "bytes per connection",
            (&|p: &(f64, f64, f64)| p.1) as &dyn Fn(&(f64, f64, f64)) -> f64,
        ),
        (
            &right,
            "Kernel: Slab growth ÷ held (both ends)",
            "bytes per connection",
            &|p: &(f64, f64, f64)| p.2,
        ),
    ] {
        let (ylo, yhi) = range(pick);
        let mut c = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((xlo..xhi).log_scale(), (ylo..yhi).log_scale())?;
        c.configure_mesh()
            .x_desc("connections held (log scale)")
            .y_desc(ydesc)
            .x_label_formatter(&|v| group(*v as i64))
            .y_label_formatter(&|v| group(*v as i64))
            .light_line_style(WHITE)
            .draw()?;
        for (label, col, solid, pts) in &lines {
            let pts: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| (p.0, pick(p)))
                .filter(|p| p.1 > 0.0)
                .collect();
            let style = col.stroke_width(if *solid { 2 } else { 1 });
            c.draw_series(LineSeries::new(pts.clone(), style))?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            let (col, solid) = (*col, *solid);
            c.draw_series(pts.iter().map(move |&p| {
                if solid {
                    Circle::new(p, 3, col.filled())
                } else {
                    Circle::new(p, 3, col.stroke_width(1))
                }
            }))?;
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Fan-out latency percentiles per server (p50, p99, p99.9, max) as lines over the
/// percentile axis. `what`: what the subscribers are.
fn fanout_plot(path: &Path, rows: &[Row], scenario: &str, what: &str) -> PlotResult {
    let mut fan = of(rows, scenario);
    fan.retain(|r| r.get("latency_p50_us").is_some());
    let keys = [
        "latency_p50_us",
        "latency_p99_us",
        "latency_p999_us",
        "latency_max_us",
    ];
    let names = ["p50", "p99", "p99.9", "max"];
    let ymax = fan
        .iter()
        .flat_map(|r| keys.iter().filter_map(|k| r.get(k)))
        .fold(1.0, f64::max)
        / 1e3
        * 1.4;
    let n = fan.first().map_or(0, |r| r.connections);
    let root = SVGBackend::new(path, (640, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut c = ChartBuilder::on(&root)
        .caption(
            format!("Fan-out: one publish to {} {what}", group(n as i64)),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.3..3.3, 0.0..ymax)?;
    c.configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|v: &f64| {
            let i = v.round();
            if (v - i).abs() < 0.01 && (0.0..=3.0).contains(&i) {
                names[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .x_desc("percentile")
        .y_desc("publish → receipt (ms)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .draw()?;
    for r in &fan {
        let col = color_of(&r.server);
        let pts: Vec<(f64, f64)> = keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| Some((i as f64, r.get(k)? / 1e3)))
            .collect();
        c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))?
            .label(r.server.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, col.filled())))?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        for (v, want) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (1_234_567, "1,234,567"),
            (-20_000, "-20,000"),
        ] {
            assert_eq!(group(v), want);
        }
    }

    #[test]
    fn csv_fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    fn row(scenario: &'static str, server: &str, metrics: &[(&str, f64)]) -> Row {
        Row {
            scenario,
            server: server.into(),
            connections: 200,
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            notes: Vec::new(),
            stress: None,
            curve: Vec::new(),
        }
    }

    fn test_meta() -> Meta {
        Meta {
            date_utc: "2024-01-01".into(),
            command: "holdfast-bench".into(),
            smoke: true,
            machine: crate::measure::machine(),
            versions: BTreeMap::new(),
            params: Params {
                threads: 1,
                rate: 1,
                idle_n: vec![200],
                fanout_n: 200,
                cycle_m: 1,
                cycle_k: 1,
                cycle_interval_ms: 1,
                idle_cpu_n: 1,
                idle_cpu_secs: 1,
                scale_n: 1,
                scale_procs: 1,
                sse_idle_n: vec![200],
                sse_fanout_n: 200,
                ws_idle_n: vec![200],
                ws_fanout_n: 200,
                ndjson_idle_n: vec![200],
                ndjson_fanout_n: 200,
                cluster_n: vec![200],
                cluster_nodes: 3,
                ceiling_publishers: vec![4],
                ceiling_ms: 300,
                ceiling_warmup_ms: 100,
                settle_ms: 1,
                million_n: 3000,
                million_modes: vec!["longpoll".into()],
                million_per_node: 1500,
                million_rate: 1,
                million_heartbeat_secs: 120,
            },
            loadavg_start: String::new(),
            loadavg_end: String::new(),
            notes: Vec::new(),
        }
    }

    /// The markdown section that starts with `head`, up to the next one.
    fn section(md: &str, head: &str) -> String {
        let start = md
            .find(head)
            .unwrap_or_else(|| panic!("no {head:?} in\n{md}"));
        let rest = &md[start..];
        rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)].to_string()
    }

    #[test]
    fn websocket_and_ndjson_rows_get_their_sections_and_a_refusal_reads_as_a_row() {
        let mut refused = row("ws_fanout", "holdfast-tokio", &[]);
        refused.notes.push(
            "not run: holdfast-tokio does not speak WebSocket: no answer to the upgrade within \
             2 s and its /stats shows parked=1: it took the request for a long-poll"
                .into(),
        );
        let rows = [
            row(
                "ws_fanout",
                "holdfast",
                &[
                    ("received", 200.0),
                    ("bytes_per_message", 81.0),
                    ("out_of_order", 0.0),
                    ("event_id_errors", 0.0),
                    ("latency_p50_us", 1200.0),
                ],
            ),
            row(
                "ws_fanout",
                "nchan",
                &[
                    ("received", 200.0),
                    ("bytes_per_message", 22.0),
                    ("out_of_order", 0.0),
                    ("latency_p50_us", 900.0),
                ],
            ),
            refused,
            row("ws_idle_hold", "holdfast", &[("rss_per_conn_bytes", 60.0)]),
            row(
                "ndjson_idle_hold",
                "holdfast",
                &[("rss_per_conn_bytes", 58.0)],
            ),
            row(
                "ndjson_fanout",
                "holdfast",
                &[("received", 200.0), ("bytes_per_message", 78.0)],
            ),
        ];
        let md = markdown(&test_meta(), &rows, &["ws_fanout_latency.svg"]);
        let ws = section(&md, "## 11. WebSocket fan-out");
        assert!(
            ws.contains("| lost | B/message | out of order | id errors |"),
            "{ws}"
        );
        assert!(
            ws.contains("| holdfast | 200 | – | 200 | – | 81 | 0 | 0 |"),
            "{ws}"
        );
        assert!(
            ws.contains("| nchan | 200 | – | 200 | – | 22 | 0 | – |"),
            "{ws}"
        );
        assert!(
            ws.contains("| holdfast-tokio | 200 | – | – | – | – |")
                && ws.contains("it took the request for a long-poll |"),
            "{ws}"
        );
        assert!(ws.contains("(ws_fanout_latency.svg)"), "{ws}");
        assert!(section(&md, "## 10. WebSocket idle hold").contains("| holdfast | 200 |"));
        for head in ["## 12. ndjson idle hold", "## 13. ndjson fan-out"] {
            let nd = section(&md, head);
            assert!(nd.contains("nchan is not in this table"), "{nd}");
            assert!(!nd.contains("| nchan |"), "{nd}");
        }
        assert!(section(&md, "## 13. ndjson fan-out").contains("| 78 |"));
        // The WebSocket rows stay out of the SSE sections.
        assert!(!md.contains("## 7. SSE fan-out"));
    }

    #[test]
    fn plots_leave_out_rows_without_figures() {
        let dir = std::env::temp_dir().join(format!("holdfast-bench-plot-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut refused = row("ws_idle_hold", "holdfast-tokio", &[]);
        refused.notes.push("not run: …".into());
        let rows = vec![
            row(
                "ws_idle_hold",
                "holdfast",
                &[
                    ("held", 200.0),
                    ("rss_delta_bytes", 12_000.0),
                    ("rss_per_conn_bytes", 60.0),
                    ("private_per_conn_bytes", 58.0),
                ],
            ),
            refused,
            row("ndjson_idle_hold", "holdfast-tokio", &[]),
        ];
        let written = write_all(&dir, &test_meta(), &rows).unwrap();
        assert!(
            written.iter().any(|f| f == "ws_idle_memory.svg"),
            "{written:?}"
        );
        assert!(
            !written.iter().any(|f| f == "ndjson_idle_memory.svg"),
            "no figures, no plot: {written:?}"
        );
        let svg = fs::read_to_string(dir.join("ws_idle_memory.svg")).unwrap();
        assert!(svg.contains("holdfast") && !svg.contains("holdfast-tokio"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn sse_rows_get_their_own_sections_with_the_order_columns() {
        let rows = [
            row(
                "fanout",
                "holdfast",
                &[("received", 200.0), ("out_of_order", 0.0)],
            ),
            row(
                "sse_fanout",
                "nchan",
                &[
                    ("received", 199.0),
                    ("lost", 1.0),
                    ("out_of_order", 2.0),
                    ("event_id_errors", 3.0),
                    ("latency_p50_us", 1500.0),
                ],
            ),
            row("sse_idle_hold", "holdfast", &[("rss_per_conn_bytes", 56.0)]),
            row(
                "cluster_fanout",
                "holdfast cluster, 3 nodes",
                &[
                    ("nodes", 3.0),
                    ("received", 200.0),
                    ("backplane_received", 3.0),
                    ("redis_publish_calls", 1.0),
                ],
            ),
            row(
                "publish_ceiling",
                "holdfast cluster, 1 node",
                &[
                    ("nodes", 1.0),
                    ("publishes_per_sec", 12_345.0),
                    ("redis_commands_per_publish", 5.0),
                ],
            ),
        ];
        let meta = test_meta();
        let md = markdown(&meta, &rows, &["sse_fanout_latency.svg"]);
        let section = |head: &str| {
            let start = md
                .find(head)
                .unwrap_or_else(|| panic!("no {head:?} in\n{md}"));
            let rest = &md[start..];
            rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)].to_string()
        };
        let sse = section("## 7. SSE fan-out");
        assert!(sse.contains("| out of order | id errors |"), "{sse}");
        assert!(
            sse.contains("| nchan | 200 | – | 199 | 1 | 2 | 3 |"),
            "{sse}"
        );
        assert!(sse.contains("| 1.50 |") && sse.contains("(sse_fanout_latency.svg)"));
        // The long-poll fan-out table has no order columns and no SSE rows.
        let lp = section("## 2. Fan-out");
        assert!(
            !lp.contains("out of order") && !lp.contains("nchan"),
            "{lp}"
        );
        assert!(section("## 6. SSE idle hold").contains("| holdfast | 200 |"));
        let cf = section("## 8. Cluster fan-out");
        assert!(
            cf.contains("| holdfast cluster, 3 nodes | 3 | 200 | – | 200 |"),
            "{cf}"
        );
        assert!(
            cf.contains("| 3 | 1 |"),
            "messages from Redis, PUBLISH calls: {cf}"
        );
        let pc = section("## 9. Publish ceiling");
        assert!(
            pc.contains("| holdfast cluster, 1 node | 1 | 200 |"),
            "{pc}"
        );
        assert!(pc.contains("| 12,345 |") && pc.contains("| 5.00 |"), "{pc}");
        // Neither table lands in the single-server fan-out section.
        assert!(!section("## 2. Fan-out").contains("cluster"));
        let csv = csv(&rows);
        assert!(
            csv.contains("sse_fanout,nchan,200,event_id_errors,3\n"),
            "{csv}"
        );
    }

    #[test]
    fn ratios_are_to_the_floor_of_the_same_scenario_and_size() {
        let mut rows = vec![
            row(
                "fanout",
                "holdfast",
                &[("cpu_per_delivery_us", 10.0), ("wall_to_last_ms", 30.0)],
            ),
            row(
                "fanout",
                "floor",
                &[("cpu_per_delivery_us", 5.0), ("wall_to_last_ms", 20.0)],
            ),
            row(
                "poll_cycle",
                "holdfast",
                &[("deliveries_per_cpu_sec", 50.0)],
            ),
            row("poll_cycle", "floor", &[("deliveries_per_cpu_sec", 100.0)]),
            row(
                "idle_hold",
                "holdfast",
                &[("rss_per_conn_bytes", 60.0), ("slab_per_conn_bytes", 940.0)],
            ),
            row(
                "idle_hold",
                "floor",
                &[("rss_per_conn_bytes", 20.0), ("slab_per_conn_bytes", 980.0)],
            ),
            row(
                "cluster_fanout",
                "holdfast cluster, 3 nodes",
                &[("wall_to_last_ms", 9.0)],
            ),
            row(
                "cluster_fanout",
                "floor, 3 processes",
                &[("wall_to_last_ms", 6.0)],
            ),
            // No floor row of this scenario: no ratio.
            row("sse_fanout", "holdfast", &[("cpu_per_delivery_us", 3.0)]),
        ];
        // Another size of the same scenario is not the floor of this one.
        let mut other = row("fanout", "floor", &[("cpu_per_delivery_us", 1.0)]);
        other.connections = 9;
        rows.push(other);
        floor_ratios(&mut rows);
        let get = |i: usize, k: &str| rows[i].get(k);
        assert_eq!(get(0, "cpu_x_floor"), Some(2.0));
        assert_eq!(get(0, "wall_x_floor"), Some(1.5));
        assert_eq!(
            get(1, "cpu_x_floor"),
            None,
            "the floor has no ratio to itself"
        );
        assert_eq!(get(2, "cpu_x_floor"), Some(2.0), "a rate: floor ÷ row");
        assert_eq!(get(4, "rss_x_floor"), Some(3.0));
        assert_eq!(get(4, "total_per_conn_bytes"), Some(1000.0));
        assert_eq!(get(4, "total_x_floor"), Some(1.0));
        assert_eq!(get(6, "wall_x_floor"), Some(1.5));
        assert_eq!(get(8, "cpu_x_floor"), None);
    }

    #[test]
    fn absent_metrics_print_as_a_dash() {
        assert_eq!(num(None, 2), "–");
        assert_eq!(num(Some(12.345), 2), "12.35");
        assert_eq!(num(Some(123_456.7), 2), "123,457");
        assert_eq!(ms(Some(2500.0)), "2.50");
    }
}
