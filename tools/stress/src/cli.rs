//! Command-line flags of the parent process and the checks that turn them into a
//! [`Plan`]: how many workers, which connections and source addresses each one gets,
//! and the long-poll timeout that keeps polls parked for the whole run.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

/// Connections per worker process when `--procs` is not given: well below the
/// 20,000 open-file hard limit of the build machines, leaving room for pipes and slack.
pub const PER_PROC: u64 = 15_000;

/// File descriptors a worker keeps for itself (stdio, epoll, waker, slack).
const FD_RESERVE: u64 = 64;

/// Extra seconds added to every long-poll `timeout=` beyond the run's expected length.
const POLL_MARGIN_SECS: u64 = 30;

#[derive(Parser, Debug)]
#[command(
    name = "holdfast-stress",
    version,
    about = "Opens and holds many long-poll, SSE, WebSocket or ndjson subscriptions against \
             holdfast (or nchan), \
             optionally publishes, and reports connections held, deliveries lost and latency."
)]
pub struct Args {
    /// Public listeners, one per server process; connections go round-robin over them.
    #[arg(long, value_delimiter = ',', required = true)]
    pub target: Vec<SocketAddr>,

    /// Admin listeners, same order and count as --target (needed for --publish).
    #[arg(long, value_delimiter = ',')]
    pub admin: Vec<SocketAddr>,

    /// Total held connections.
    #[arg(long)]
    pub connections: u64,

    /// Subscription kind.
    #[arg(long, value_enum, default_value_t = Mode::Longpoll)]
    pub mode: Mode,

    /// Server protocol dialect (how a long-poll passes its cursor).
    #[arg(long, value_enum, default_value_t = Protocol::Holdfast)]
    pub protocol: Protocol,

    /// Channel every subscriber listens on.
    #[arg(long, default_value = "stress", value_parser = parse_channel)]
    pub channel: String,

    /// Connections opened per second, overall.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,

    /// How long to hold once all connections are open (500ms, 5s, 2m).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub hold: Duration,

    /// Messages to publish after the hold, through every admin address.
    #[arg(long, default_value_t = 0)]
    pub publish: u32,

    /// Publish each message through the first --admin address only: the servers are
    /// holdfast nodes in cluster mode, which share every publish through Redis. The
    /// other admin addresses are still asked whether they hold their subscribers.
    #[arg(long)]
    pub publish_once: bool,

    /// Gap between publishes.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub publish_interval: Duration,

    /// Worker processes [default: ceil(connections / 15000), more if the open-file
    /// hard limit is under 15,064].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub procs: Option<u64>,

    /// Source address range A-B (or one address); each worker binds to its own slice.
    #[arg(long, default_value = "127.0.0.2-127.0.1.254", value_parser = parse_range)]
    pub source_ips: SourceRange,

    /// Hard bound on the whole run; on expiry the run reports what happened and fails.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub max_time: Duration,

    /// Write the summary as JSON to PATH, or to stdout with `-`.
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<String>,

    /// No progress output (and no human summary when --json is given).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Longpoll,
    Sse,
    /// RFC 6455 upgrade; the server's text frames carry the JSON envelope (holdfast) or
    /// the raw payload (nchan).
    Websocket,
    /// `?stream=ndjson`: a chunked body of JSON-envelope lines (holdfast only).
    Ndjson,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Holdfast,
    Nchan,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Longpoll => "longpoll",
            Mode::Sse => "sse",
            Mode::Websocket => "websocket",
            Mode::Ndjson => "ndjson",
        }
    }

    /// The `/stats` gauge that counts this kind of subscription on a holdfast server
    /// (`docs/protocol.md`, Health and counters): the ready step waits on it.
    pub fn gauge(self) -> &'static str {
        match self {
            Mode::Longpoll => "parked",
            Mode::Sse => "sse_streams",
            Mode::Websocket => "websockets",
            Mode::Ndjson => "ndjson_streams",
        }
    }
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Holdfast => "holdfast",
            Protocol::Nchan => "nchan",
        }
    }
}

/// An inclusive IPv4 range.
#[derive(Copy, Clone, Debug)]
pub struct SourceRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl SourceRange {
    pub fn len(&self) -> u64 {
        u64::from(u32::from(self.last)) - u64::from(u32::from(self.first)) + 1
    }

    pub fn nth(&self, i: u64) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.first) + i as u32)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    holdfast::config::parse_duration(s)
}

fn parse_channel(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~:@-".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("a channel is 1-128 of A-Z a-z 0-9 . _ ~ : @ -".to_owned())
    }
}

fn parse_range(s: &str) -> Result<SourceRange, String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let ip = |x: &str| {
        x.trim()
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("'{x}' is not an IPv4 address"))
    };
    let (first, last) = (ip(a)?, ip(b)?);
    if u32::from(last) < u32::from(first) {
        return Err(format!("{last} comes before {first}"));
    }
    Ok(SourceRange { first, last })
}

/// One worker's share of the run, passed to it as JSON in its `--worker` argument.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub id: usize,
    pub targets: Vec<SocketAddr>,
    /// Global index of this worker's first connection; connection `g` goes to
    /// `targets[g % targets.len()]`, so the whole run is round-robin over targets.
    pub first_index: u64,
    pub connections: u64,
    /// Connections per second for this worker.
    pub rate: f64,
    pub mode: Mode,
    pub protocol: Protocol,
    pub channel: String,
    /// `timeout=` of every long-poll, seconds.
    pub poll_timeout_secs: u64,
    /// Messages the parent will publish; `n` outside `1..=publish` is unexpected.
    pub publish: u32,
    pub sources: Vec<Ipv4Addr>,
    /// The worker finishes by itself after this long even if the parent never says so.
    pub max_secs: f64,
}

/// The validated run.
#[derive(Debug)]
pub struct Plan {
    pub args: Args,
    pub procs: usize,
    pub workers: Vec<WorkerSpec>,
}

/// Checks the flags against each other and the open-file limit; the `Err` is a
/// message for the person at the terminal.
pub fn plan(args: Args) -> Result<Plan, String> {
    let n = args.connections;
    if n == 0 {
        return Err("--connections must be at least 1".into());
    }
    if !args.admin.is_empty() && args.admin.len() != args.target.len() {
        return Err(format!(
            "--admin has {} addresses but --target has {}; give one admin per target, same order",
            args.admin.len(),
            args.target.len()
        ));
    }
    if args.publish > 0 && args.admin.is_empty() {
        return Err("--publish needs --admin (one admin address per target)".into());
    }
    if let Some(t) = args.target.iter().chain(&args.admin).find(|a| !a.is_ipv4()) {
        return Err(format!(
            "{t} is not an IPv4 address; source addresses are IPv4, so targets must be too"
        ));
    }
    if args.mode == Mode::Ndjson && args.protocol == Protocol::Nchan {
        return Err(
            "nchan has no ndjson stream (its http-raw-stream is not JSON lines); \
                    use --mode websocket, sse or longpoll with --protocol nchan"
                .into(),
        );
    }
    if args.max_time.is_zero() {
        return Err("--max-time must be more than 0".into());
    }
    let hard = holdfast::sys::nofile_limits().map_or(u64::MAX, |(_, hard)| hard);
    // Where the hard limit is lower than the build machines' 20,000, the default
    // shrinks each worker's share to fit.
    let default_share = PER_PROC.min(hard.saturating_sub(FD_RESERVE).max(1));
    let procs = args.procs.unwrap_or(n.div_ceil(default_share)).clamp(1, n);
    let per_proc = n.div_ceil(procs);
    if per_proc + FD_RESERVE > hard {
        return Err(format!(
            "{per_proc} connections per worker exceed the open-file hard limit ({hard}); \
             use --procs {} or more",
            n.div_ceil(hard.saturating_sub(FD_RESERVE).max(1))
        ));
    }
    let nsrc = args.source_ips.len();
    // Without IP_BIND_ADDRESS_NO_PORT (socket2 0.5 has no setter for it) a bind to
    // (address, 0) reserves a port on that address for every destination, so one
    // source address carries at most the ephemeral range (32768-60999 by default).
    if n.div_ceil(nsrc) > 28_000 {
        return Err(format!(
            "{nsrc} source addresses for {n} connections is over 28,000 per address, more \
             than the ephemeral port range; widen --source-ips"
        ));
    }

    let ramp_secs = n.div_ceil(args.rate);
    let publish_secs = (args.publish_interval * args.publish).as_secs();
    let poll_timeout_secs = 2 * ramp_secs + args.hold.as_secs() + publish_secs + POLL_MARGIN_SECS;

    let mut workers = Vec::with_capacity(procs as usize);
    let mut first = 0;
    for id in 0..procs {
        let count = n / procs + u64::from(id < n % procs);
        workers.push(WorkerSpec {
            id: id as usize,
            targets: args.target.clone(),
            first_index: first,
            connections: count,
            rate: args.rate as f64 * count as f64 / n as f64,
            mode: args.mode,
            protocol: args.protocol,
            channel: args.channel.clone(),
            poll_timeout_secs,
            publish: args.publish,
            sources: worker_sources(&args.source_ips, id, procs),
            max_secs: args.max_time.as_secs_f64() + 10.0,
        });
        first += count;
    }
    Ok(Plan {
        procs: procs as usize,
        workers,
        args,
    })
}

/// Worker `id` of `procs` gets its own contiguous slice of the range; when there are
/// fewer addresses than workers, workers share them round-robin.
fn worker_sources(range: &SourceRange, id: u64, procs: u64) -> Vec<Ipv4Addr> {
    let len = range.len();
    if len < procs {
        return vec![range.nth(id % len)];
    }
    let start = id * len / procs;
    let end = (id + 1) * len / procs;
    (start..end).map(|i| range.nth(i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["holdfast-stress", "--target", "127.0.0.1:1,127.0.0.1:2"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).expect("flags parse")
    }

    #[test]
    fn connections_and_sources_are_split_without_overlap() {
        let p = plan(args(&["--connections", "200000"])).unwrap();
        assert_eq!(p.procs, 14);
        let total: u64 = p.workers.iter().map(|w| w.connections).sum();
        assert_eq!(total, 200_000);
        let mut next = 0;
        for w in &p.workers {
            assert_eq!(w.first_index, next);
            next += w.connections;
        }
        let mut all: Vec<_> = p.workers.iter().flat_map(|w| w.sources.clone()).collect();
        assert_eq!(all.len(), 509, "127.0.0.2-127.0.1.254 is 509 addresses");
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 509, "no address given to two workers");
    }

    #[test]
    fn fewer_addresses_than_workers_are_shared() {
        let p = plan(args(&[
            "--connections",
            "10",
            "--procs",
            "4",
            "--source-ips",
            "127.0.0.2-127.0.0.3",
        ]))
        .unwrap();
        let firsts: Vec<_> = p.workers.iter().map(|w| w.sources[0]).collect();
        assert_eq!(firsts[0], firsts[2]);
        assert_ne!(firsts[0], firsts[1]);
        assert_eq!(
            p.workers.iter().map(|w| w.connections).collect::<Vec<_>>(),
            [3, 3, 2, 2]
        );
    }

    #[test]
    fn bad_combinations_are_refused_with_a_reason() {
        let cases: &[(&[&str], &str)] = &[
            (&["--connections", "0"], "at least 1"),
            (&["--connections", "5", "--publish", "1"], "needs --admin"),
            (
                &["--connections", "5", "--admin", "127.0.0.1:3"],
                "one admin per target",
            ),
            (
                &["--connections", "100000", "--source-ips", "127.0.0.2"],
                "widen --source-ips",
            ),
            (
                &["--connections", "5", "--admin", "[::1]:3,[::1]:4"],
                "IPv4",
            ),
            (
                &[
                    "--connections",
                    "5",
                    "--mode",
                    "ndjson",
                    "--protocol",
                    "nchan",
                ],
                "no ndjson",
            ),
        ];
        for (flags, want) in cases {
            let err = plan(args(flags)).unwrap_err();
            assert!(err.contains(want), "{flags:?}: {err}");
        }
    }

    #[test]
    fn a_share_over_the_open_file_limit_is_refused() {
        let (_, hard) = holdfast::sys::nofile_limits().unwrap();
        if hard >= 1 << 30 {
            eprintln!("SKIPPED: open-file hard limit {hard} is too high to exceed here");
            return;
        }
        let n = (hard + 1).to_string();
        let err = plan(args(&["--connections", &n, "--procs", "1"])).unwrap_err();
        assert!(err.contains("open-file hard limit"), "{err}");
        assert!(
            plan(args(&["--connections", &n])).is_ok(),
            "default --procs fits"
        );
    }

    #[test]
    fn flag_values_are_checked() {
        for (flag, value) in [
            ("--channel", "a b"),
            ("--source-ips", "127.0.0.9-127.0.0.2"),
            ("--source-ips", "localhost"),
            ("--hold", "5 parsecs"),
            ("--rate", "0"),
        ] {
            let r = Args::try_parse_from([
                "holdfast-stress",
                "--target",
                "127.0.0.1:1",
                "--connections",
                "1",
                flag,
                value,
            ]);
            assert!(r.is_err(), "{flag} {value} accepted");
        }
    }

    #[test]
    fn every_mode_parses_and_names_its_gauge() {
        for (flag, mode, gauge) in [
            ("longpoll", Mode::Longpoll, "parked"),
            ("sse", Mode::Sse, "sse_streams"),
            ("websocket", Mode::Websocket, "websockets"),
            ("ndjson", Mode::Ndjson, "ndjson_streams"),
        ] {
            let p = plan(args(&["--connections", "3", "--mode", flag])).unwrap();
            assert_eq!(p.args.mode, mode);
            assert_eq!((mode.name(), mode.gauge()), (flag, gauge));
            assert!(p.workers.iter().all(|w| w.mode == mode));
        }
        let p = plan(args(&[
            "--connections",
            "3",
            "--mode",
            "websocket",
            "--protocol",
            "nchan",
        ]));
        assert!(p.is_ok(), "nchan has WebSocket subscribers");
    }

    #[test]
    fn poll_timeout_covers_ramp_hold_and_publishing() {
        let p = plan(args(&[
            "--connections",
            "40000",
            "--rate",
            "10000",
            "--hold",
            "5s",
            "--admin",
            "127.0.0.1:3,127.0.0.1:4",
            "--publish",
            "10",
            "--publish-interval",
            "1s",
        ]))
        .unwrap();
        assert_eq!(p.workers[0].poll_timeout_secs, 2 * 4 + 5 + 10 + 30);
    }
}
