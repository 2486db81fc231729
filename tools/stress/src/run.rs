//! The parent process: starts the workers (this same binary with `--worker`), walks
//! the run through its phases, shows progress, and adds everything up.
//!
//! Phases, each bounded by its own limit and all by `--max-time`:
//!
//! 1. **ramp**: workers open their connections; over when every connection is held or
//!    has failed.
//! 2. **hold**: `--hold` with nothing happening; closes and resets show up as errors.
//! 3. **snapshot**: each worker counts (and marks) its live subscriptions: `held`.
//! 4. **ready** (holdfast, publishing only): wait until each server's `/stats` shows at
//!    least the subscriptions this run holds on it (the mode's gauge: `parked`,
//!    `sse_streams`, `websockets` or `ndjson_streams`), so a
//!    publish cannot overtake a request the server has not read yet. nchan has no such
//!    counter; there the hold has to be long enough.
//! 5. **publish**: `--publish` rounds, each one POST to every admin address at once
//!    (to the first only with `--publish-once`: cluster nodes share it through Redis).
//! 6. **drain**: wait until every counted subscriber got every message, or give up.
//! 7. **finish**: workers close everything and send their counters and histograms.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use holdfast_stress::errors;
use holdfast_stress::report::{self, Counts, Latency, Report, Summary};

use crate::cli::{Plan, Protocol};
use crate::http;
use crate::publish;
use crate::worker::unix_micros;

/// Longest wait for workers to answer `snapshot`.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for the servers' `/stats` to show every held subscription.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How long worker processes get to exit after the summary before they are killed
/// (exiting closes their sockets, which the kernel does at its own pace).
const REAP_WAIT: Duration = Duration::from_secs(10);
/// Drain time after the last publish: this plus one second per 20,000 deliveries.
const DRAIN_BASE: Duration = Duration::from_secs(10);

enum Msg {
    Report(usize, Report),
    Garbage(usize, String),
    Gone(usize),
}

struct Worker {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    counts: Counts,
    ramped: bool,
    snapshot: Option<(u64, Vec<u64>)>,
    latency: Option<Vec<(u64, u64)>>,
    /// Its stdout closed (exited, crashed, or never started).
    gone: bool,
}

impl Worker {
    fn command(&mut self, cmd: &str) {
        if let Some(stdin) = &mut self.stdin {
            if writeln!(stdin, "{cmd}")
                .and_then(|()| stdin.flush())
                .is_err()
            {
                self.stdin = None;
            }
        }
    }
}

struct Run {
    plan: Plan,
    start: Instant,
    workers: Vec<Worker>,
    rx: mpsc::Receiver<Msg>,
    /// Errors seen by the parent itself (publishes, workers).
    errors: BTreeMap<String, u64>,
    ui: Ui,
    expected: u64,
    told_garbage: bool,
    /// Unix µs just before the first publish was sent (0: none was).
    first_publish_us: u64,
}

/// Runs the plan; returns the exit status.
pub fn main(plan: Plan) -> i32 {
    let start = Instant::now();
    let _ = holdfast::sys::raise_fd_limit();
    let args = &plan.args;
    let n = args.connections;
    let grace = (args.max_time / 4).min(Duration::from_secs(5));
    let hard = start + args.max_time - grace;
    let (tx, rx) = mpsc::channel();
    let workers = spawn_workers(&plan, &tx);
    drop(tx);
    let ui = Ui::new(args.quiet, n);
    let mut run = Run {
        start,
        workers,
        rx,
        errors: BTreeMap::new(),
        first_publish_us: 0,
        ui,
        expected: 0,
        told_garbage: false,
        plan,
    };
    let summary = run.phases(hard, grace);
    run.ui.done();
    let status = deliver(&run.plan, &summary);
    run.reap(Instant::now() + REAP_WAIT);
    status
}

fn spawn_workers(plan: &Plan, tx: &mpsc::Sender<Msg>) -> Vec<Worker> {
    let exe = std::env::current_exe();
    let mut workers = Vec::with_capacity(plan.workers.len());
    for spec in &plan.workers {
        let mut w = Worker {
            child: None,
            stdin: None,
            counts: Counts::default(),
            ramped: false,
            snapshot: None,
            latency: None,
            gone: true,
        };
        let spawned = exe.as_ref().map_err(|e| e.to_string()).and_then(|exe| {
            let spec = serde_json::to_string(spec).map_err(|e| e.to_string())?;
            Command::new(exe)
                .arg("--worker")
                .arg(spec)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| e.to_string())
        });
        match spawned {
            Ok(mut child) => {
                w.stdin = child.stdin.take();
                if let Some(out) = child.stdout.take() {
                    w.gone = false;
                    let (tx, id) = (tx.clone(), spec.id);
                    std::thread::spawn(move || read_reports(id, out, tx));
                }
                w.child = Some(child);
            }
            Err(e) => {
                // Counted as worker_failed with the others that send no result.
                eprintln!("holdfast-stress: cannot start worker {}: {e}", spec.id);
            }
        }
        workers.push(w);
    }
    workers
}

fn read_reports(id: usize, out: std::process::ChildStdout, tx: mpsc::Sender<Msg>) {
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        let msg = match serde_json::from_str::<Report>(&line) {
            Ok(r) => Msg::Report(id, r),
            Err(_) => Msg::Garbage(id, line),
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
    let _ = tx.send(Msg::Gone(id));
}

impl Run {
    fn phases(&mut self, hard: Instant, grace: Duration) -> Summary {
        let args = &self.plan.args;
        let (n, hold, k, interval) = (
            args.connections,
            args.hold,
            args.publish,
            args.publish_interval,
        );
        let mut expired = false;

        self.ui.phase("ramp", n);
        let ramped = self.pump(hard, |r| r.workers.iter().all(|w| w.ramped || w.gone));
        let ramp_secs = self.start.elapsed().as_secs_f64();
        expired |= !ramped;

        if !expired {
            self.ui.phase("hold", n);
            let end = Instant::now() + hold;
            self.pump(end.min(hard), |r| r.all_gone());
            expired |= end > hard;
        }

        if !expired {
            self.ui.phase("snapshot", n);
            for w in &mut self.workers {
                w.command(report::CMD_SNAPSHOT);
            }
            let until = (Instant::now() + SNAPSHOT_WAIT).min(hard);
            expired |= !self.pump(until, |r| {
                r.workers.iter().all(|w| w.snapshot.is_some() || w.gone)
            }) && Instant::now() >= hard;
        }
        let (held, held_per_target) = self.held();
        self.expected = held * u64::from(k);

        let mut published = 0;
        if !expired && k > 0 {
            if self.plan.args.protocol == Protocol::Holdfast {
                expired |= !self.wait_ready(&held_per_target, hard);
            }
            self.ui.phase("publish", self.expected);
            for seq in 1..=k {
                if expired || Instant::now() >= hard {
                    expired = true;
                    break;
                }
                published += self.publish_round(seq);
                if seq < k {
                    self.pump((Instant::now() + interval).min(hard), |r| r.all_gone());
                }
            }
            if !expired {
                self.ui.phase("drain", self.expected);
                let drain = DRAIN_BASE + Duration::from_secs(self.expected / 20_000);
                let until = Instant::now() + drain;
                let expected = self.expected;
                let all_in = self.pump(until.min(hard), |r| {
                    r.total(|c| c.received) >= expected || r.all_gone()
                });
                expired |= !all_in && until > hard && Instant::now() >= hard;
            }
        }

        self.ui.phase("finish", self.expected);
        for w in &mut self.workers {
            w.command(report::CMD_FINISH);
            w.stdin = None;
        }
        let until = Instant::now() + grace.max(Duration::from_secs(2));
        self.pump(until, |r| {
            r.workers.iter().all(|w| w.latency.is_some() || w.gone)
        });
        let missing = self.workers.iter().filter(|w| w.latency.is_none()).count();
        if missing > 0 {
            *self
                .errors
                .entry(errors::WORKER_FAILED.to_owned())
                .or_default() += missing as u64;
        }
        self.summary(ramp_secs, held, held_per_target, published, expired)
    }

    /// Serves worker messages until `done` holds (true) or `until` passes (false).
    fn pump(&mut self, until: Instant, done: impl Fn(&Run) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            let wait = (until - now).min(Duration::from_millis(100));
            match self.rx.recv_timeout(wait) {
                Ok(msg) => self.apply(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    for w in &mut self.workers {
                        w.gone = true;
                    }
                }
            }
            let (c, h, r, e) = (
                self.total(|c| c.connected),
                self.total(|c| c.holding),
                self.total(|c| c.received),
                self.total(|c| c.errors_total()) + self.errors.values().sum::<u64>(),
            );
            self.ui.tick(self.start, c, h, r, self.expected, e);
        }
    }

    fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Report(id, r) => {
                let Some(w) = self.workers.get_mut(id) else {
                    return;
                };
                match r {
                    Report::Progress { counts, ramped } => {
                        w.counts = counts;
                        w.ramped = ramped;
                    }
                    Report::Snapshot {
                        held,
                        held_per_target,
                    } => w.snapshot = Some((held, held_per_target)),
                    Report::Result { counts, latency } => {
                        w.counts = counts;
                        w.latency = Some(latency);
                    }
                }
            }
            Msg::Garbage(id, line) => {
                if !self.told_garbage {
                    self.told_garbage = true;
                    eprintln!(
                        "holdfast-stress: worker {id} wrote a line that is not a report: {line}"
                    );
                }
            }
            Msg::Gone(id) => {
                if let Some(w) = self.workers.get_mut(id) {
                    w.gone = true;
                }
            }
        }
    }

    fn all_gone(&self) -> bool {
        self.workers.iter().all(|w| w.gone)
    }

    fn total(&self, f: impl Fn(&Counts) -> u64) -> u64 {
        self.workers.iter().map(|w| f(&w.counts)).sum()
    }

    /// Held subscriptions at the snapshot, or (when the run never got there) the last
    /// count each worker reported.
    fn held(&self) -> (u64, Vec<u64>) {
        let mut per = vec![0; self.plan.args.target.len()];
        let mut held = 0;
        for w in &self.workers {
            match &w.snapshot {
                Some((h, p)) => {
                    held += h;
                    for (a, b) in per.iter_mut().zip(p) {
                        *a += b;
                    }
                }
                None => held += w.counts.holding,
            }
        }
        (held, per)
    }

    /// Waits until every server counts at least the subscriptions held on it. Returns
    /// false only when `--max-time` ran out; a server that never gets there is
    /// reported and the run publishes anyway (the losses will show).
    fn wait_ready(&mut self, held_per_target: &[u64], hard: Instant) -> bool {
        self.ui.phase("ready", self.expected);
        let key = self.plan.args.mode.gauge();
        let until = (Instant::now() + READY_WAIT).min(hard);
        let admins = self.plan.args.admin.clone();
        loop {
            let behind: Vec<(usize, Option<u64>)> = admins
                .iter()
                .zip(held_per_target)
                .enumerate()
                .filter_map(|(i, (a, want))| {
                    let have = publish::held_on_server(*a, key);
                    (have.unwrap_or(0) < *want).then_some((i, have))
                })
                .collect();
            if behind.is_empty() {
                return true;
            }
            if Instant::now() >= until {
                for (i, have) in behind {
                    let have = have.map_or("no /stats answer".into(), |h| format!("{key}={h}"));
                    eprintln!(
                        "holdfast-stress: server {} ({}) shows {have} of {} held; publishing anyway",
                        i, admins[i], held_per_target[i]
                    );
                }
                return Instant::now() < hard;
            }
            self.pump(
                (Instant::now() + Duration::from_millis(200)).min(until),
                |_| false,
            );
        }
    }

    /// Publishes message `seq` through every admin address at once (the first only with
    /// `--publish-once`); returns how many were accepted.
    fn publish_round(&mut self, seq: u32) -> u64 {
        // One send time for the whole round, carried by every copy: with several
        // independent servers, latency counts from when the round began, not from when
        // each thread got its connection through (which on a busy machine can be
        // hundreds of ms apart).
        let sent = unix_micros();
        if self.first_publish_us == 0 {
            self.first_publish_us = sent;
        }
        let payload = http::payload(sent, seq);
        let payload = payload.as_str();
        let channel = &self.plan.args.channel;
        let admins = &self.plan.args.admin;
        let through = if self.plan.args.publish_once {
            &admins[..1]
        } else {
            &admins[..]
        };
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = through
                .iter()
                .map(|&a| s.spawn(move || publish::publish(a, channel, payload)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(errors::PUBLISH_IO.to_owned()))
                })
                .collect()
        });
        let mut ok = 0;
        for r in results {
            match r {
                Ok(()) => ok += 1,
                Err(kind) => *self.errors.entry(kind).or_default() += 1,
            }
        }
        ok
    }

    /// Waits until `until` for the worker processes to exit, then kills the ones still
    /// running. Every child is waited for: none outlives the run.
    fn reap(&mut self, until: Instant) {
        while Instant::now() < until
            && self.workers.iter_mut().any(|w| {
                w.child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
            })
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for w in &mut self.workers {
            if let Some(mut child) = w.child.take() {
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                }
                let _ = child.wait();
            }
        }
    }

    fn summary(
        &mut self,
        ramp_secs: f64,
        held: u64,
        held_per_target: Vec<u64>,
        published: u64,
        max_time_expired: bool,
    ) -> Summary {
        let args = &self.plan.args;
        let mut errors = std::mem::take(&mut self.errors);
        let mut hist = report::new_histogram();
        for w in &self.workers {
            for (k, v) in &w.counts.errors {
                *errors.entry(k.clone()).or_default() += v;
            }
            if let Some(l) = &w.latency {
                report::merge_pairs(&mut hist, l);
            }
        }
        let received = self.total(|c| c.received);
        let mut s = Summary {
            connections_target: args.connections,
            connected: self.total(|c| c.connected),
            held,
            errors,
            published,
            expected: self.expected,
            received,
            lost: self.expected.saturating_sub(received),
            duplicates: self.total(|c| c.duplicates),
            timeouts: self.total(|c| c.timeouts),
            message_bytes: self.total(|c| c.message_bytes),
            latency_us: Latency::from_histogram(&hist),
            ramp_secs,
            elapsed_secs: self.start.elapsed().as_secs_f64(),
            procs: self.plan.procs,
            mode: args.mode.name().into(),
            protocol: args.protocol.name().into(),
            publish: args.publish,
            held_per_target,
            max_time_expired,
            first_publish_unix_us: self.first_publish_us,
            ok: false,
        };
        s.ok = s.verdict();
        s
    }
}

/// Prints the human summary and writes the JSON; returns the exit status.
fn deliver(plan: &Plan, s: &Summary) -> i32 {
    let args = &plan.args;
    let json_to_stdout = args.json.as_deref() == Some("-");
    if !(args.quiet && args.json.is_some()) {
        if json_to_stdout {
            eprint!("{}", s.human());
        } else {
            print!("{}", s.human());
        }
    }
    let mut status = if s.ok { 0 } else { 1 };
    if let Some(path) = &args.json {
        let text = match serde_json::to_string_pretty(s) {
            Ok(t) => t + "\n",
            Err(e) => {
                eprintln!("holdfast-stress: cannot render the JSON summary: {e}");
                return 1;
            }
        };
        let written = if json_to_stdout {
            std::io::stdout().write_all(text.as_bytes())
        } else {
            std::fs::write(path, text)
        };
        if let Err(e) = written {
            eprintln!("holdfast-stress: cannot write {path}: {e}");
            status = 1;
        }
    }
    status
}

/// Progress: an indicatif bar on a terminal, a plain line per second otherwise,
/// nothing with `--quiet`. All on stderr.
struct Ui {
    bar: Option<ProgressBar>,
    plain: bool,
    phase: &'static str,
    target: u64,
    next_line: Instant,
}

impl Ui {
    fn new(quiet: bool, target: u64) -> Ui {
        let tty = std::io::stderr().is_terminal();
        let bar = (!quiet && tty).then(|| {
            let b = ProgressBar::with_draw_target(Some(target), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{elapsed:>4} {prefix:8} [{wide_bar}] {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b
        });
        Ui {
            bar,
            plain: !quiet && !tty,
            phase: "",
            target,
            next_line: Instant::now(),
        }
    }

    fn phase(&mut self, name: &'static str, len: u64) {
        self.phase = name;
        if let Some(b) = &self.bar {
            b.set_prefix(name);
            b.set_length(len.max(1));
        }
    }

    fn tick(
        &mut self,
        start: Instant,
        connected: u64,
        held: u64,
        received: u64,
        expected: u64,
        errors: u64,
    ) {
        let ramping = matches!(self.phase, "ramp" | "hold" | "snapshot");
        if let Some(b) = &self.bar {
            b.set_position(if ramping { connected } else { received });
            // pos/len counts connections while ramping, deliveries after.
            b.set_message(format!("held {held} errors {errors}"));
        }
        let now = Instant::now();
        if self.plain && now >= self.next_line {
            self.next_line = now + Duration::from_secs(1);
            eprintln!(
                "[{:6.1}s] {:8} connected {connected}/{} held {held} received {received}/{expected} errors {errors}",
                start.elapsed().as_secs_f64(),
                self.phase,
                self.target
            );
        }
    }

    fn done(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
