//! The servers under test: starting them, finding the processes to measure, asking them
//! how many subscribers they hold, and stopping them (by dropping the [`Server`]).
//!
//! holdfast and holdfast-tokio take the same flags and print their bound addresses.
//! nchan is nginx with the `libnginx-mod-nchan` module, run in the foreground from a
//! configuration written to a temporary directory; its memory is that of its worker
//! process(es), with the master reported separately.

use crate::measure::{self, Cpu, Mem};
use crate::procs::Proc;
use holdfast_stress::startup::{self, StartupError};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a parked long-poll is held when the client names no timeout: longer than
/// any measurement window, so no poll times out while the harness measures. Passed to
/// holdfast and holdfast-tokio as `--poll-timeout`/`--max-poll-timeout` and to nchan as
/// `nchan_subscriber_timeout`.
pub const POLL_TIMEOUT_SECS: u64 = 300;
/// Messages kept per channel: holdfast's default `--buffer-messages`, mirrored in
/// nchan's `nchan_message_buffer_length`.
pub const BUFFER_MESSAGES: u64 = 16;
/// holdfast's default `--message-ttl`, mirrored in `nchan_message_timeout`.
pub const MESSAGE_TTL_SECS: u64 = 3600;
/// Comment line interval on idle SSE streams: holdfast's default `--sse-heartbeat`,
/// passed explicitly to both holdfast servers and mirrored in nchan's
/// `nchan_eventsource_ping_interval` (off by default in nchan), so that all three keep
/// the same per-stream timer. The same interval paces holdfast's WebSocket pings and
/// ndjson heartbeat lines, and nchan's `nchan_websocket_ping_interval` (also off by
/// default).
pub const SSE_HEARTBEAT_SECS: u64 = 15;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Holdfast,
    Tokio,
    Nchan,
    /// `holdfast-floor` (src/bin/holdfast-floor.rs): a bare-epoll program that accepts,
    /// reads the request, holds, and on a publish writes one pre-rendered answer per
    /// socket: what the kernel alone costs, beside which the servers are measured.
    Floor,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Holdfast => "holdfast",
            Kind::Tokio => "holdfast-tokio",
            Kind::Nchan => "nchan",
            Kind::Floor => FLOOR,
        }
    }

    /// The stress tool's `--protocol` for this server.
    pub fn protocol(self) -> &'static str {
        match self {
            Kind::Nchan => "nchan",
            _ => "holdfast",
        }
    }
}

/// The floor's name in tables and the name of its row.
pub const FLOOR: &str = "floor";

/// Where nginx and the nchan module are.
#[derive(Clone, Debug)]
pub struct Nchan {
    pub nginx: PathBuf,
    pub module: PathBuf,
}

/// A temporary directory removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One running server. Dropping it kills its process group.
pub struct Server {
    pub kind: Kind,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// Processes whose memory and CPU count as the server's: the holdfast process, or
    /// nginx's worker(s).
    pub measured: Vec<u32>,
    /// nginx's master process, reported separately.
    pub master: Option<u32>,
    // Field order matters: the process is killed before its directory is removed.
    proc: Proc,
    _dir: Option<TempDir>,
}

/// Counters the harness waits on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Status {
    /// Parked long-polls plus open streams (SSE, ndjson, WebSocket).
    pub subscribers: u64,
    pub published: u64,
}

impl Server {
    /// Starts holdfast or holdfast-tokio (`bin`) on free loopback ports.
    pub fn start_holdfast(kind: Kind, bin: &Path, threads: u32, log: &Path) -> io::Result<Server> {
        Server::start_holdfast_with(kind, bin, threads, log, &[])
    }

    /// [`Server::start_holdfast`] with `extra` flags after the common ones (cluster
    /// mode: `--redis URL --redis-prefix P`).
    pub fn start_holdfast_with(
        kind: Kind,
        bin: &Path,
        threads: u32,
        log: &Path,
        extra: &[String],
    ) -> io::Result<Server> {
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--threads", &threads.to_string()])
            .args(["--poll-timeout", &format!("{POLL_TIMEOUT_SECS}s")])
            .args(["--max-poll-timeout", &format!("{POLL_TIMEOUT_SECS}s")]);
        // The common heartbeat unless `extra` sets its own (the 1M run does).
        if !extra.iter().any(|a| a == "--sse-heartbeat") {
            cmd.args(["--sse-heartbeat", &format!("{SSE_HEARTBEAT_SECS}s")]);
        }
        cmd.args(extra)
            // holdfast reads `--redis` from HOLDFAST_REDIS too: a standalone node must
            // not turn into a cluster node because the harness's caller has it set.
            .env_remove("HOLDFAST_REDIS");
        Server::start_listening(kind, cmd, log)
    }

    /// Starts `holdfast-floor` (`bin`) on free loopback ports. It has one thread and
    /// none of the servers' settings (no timeouts, no heartbeats, no buffer beyond its
    /// last 16 answers): that is what makes it the floor.
    pub fn start_floor(bin: &Path, log: &Path) -> io::Result<Server> {
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
        Server::start_listening(Kind::Floor, cmd, log)
    }

    /// Runs `cmd`, which prints `listening public=…` and `listening admin=…` on stdout
    /// and answers `/stats` on its admin listener once ready.
    fn start_listening(kind: Kind, mut cmd: Command, log: &Path) -> io::Result<Server> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(fs::File::create(log)?));
        let mut proc = Proc::spawn(&mut cmd, kind.name())?;
        let stdout = proc
            .take_stdout()
            .ok_or_else(|| io::Error::other("no stdout pipe"))?;
        let listening = startup::read_listening(stdout, Duration::from_secs(10)).map_err(|e| {
            let why = match e {
                StartupError::Timeout(_) => io::ErrorKind::TimedOut,
                StartupError::Closed => io::ErrorKind::UnexpectedEof,
                StartupError::Malformed(_) => io::ErrorKind::InvalidData,
            };
            io::Error::new(
                why,
                format!("{}: {e} (log: {})", kind.name(), log.display()),
            )
        })?;
        let mut server = Server {
            kind,
            public: listening.public,
            admin: listening.admin,
            measured: vec![proc.pid()],
            master: None,
            proc,
            _dir: None,
        };
        server.wait_ready(Duration::from_secs(10))?;
        Ok(server)
    }

    /// Writes an nginx.conf for nchan into a fresh temporary directory under `work` and
    /// runs nginx in the foreground with it.
    pub fn start_nchan(n: &Nchan, threads: u32, work: &Path, log: &Path) -> io::Result<Server> {
        let dir = work.join(format!("nchan-{}-{}", std::process::id(), unique()));
        fs::create_dir_all(dir.join("logs"))?;
        let dir = TempDir(dir);
        let public = free_port()?;
        let admin = free_port()?;
        // nginx's error log goes beside the harness's other logs, so it outlives the
        // temporary directory.
        let errlog = log.with_extension("error.log");
        let conf = nchan_conf(&n.module, threads, &dir.0, &errlog, public, admin);
        let conf_path = dir.0.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        // A copy beside the logs, so the report's reader can see what ran.
        let _ = fs::copy(&conf_path, log.with_extension("conf"));
        let mut cmd = Command::new(&n.nginx);
        cmd.arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&errlog)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(log)?));
        let proc = Proc::spawn(&mut cmd, "nginx")?;
        let master = proc.pid();
        let mut server = Server {
            kind: Kind::Nchan,
            public,
            admin,
            measured: Vec::new(),
            master: Some(master),
            proc,
            _dir: Some(dir),
        };
        if let Err(e) = server.wait_ready(Duration::from_secs(10)) {
            let errlog = fs::read_to_string(&errlog).unwrap_or_default();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "nginx did not come up: {e}; stderr in {}; error.log: {errlog}",
                    log.display()
                ),
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let workers = measure::children_of(master);
            if workers.len() >= threads as usize {
                server.measured = workers;
                break;
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "nginx master {master} has {} worker(s), expected {threads}",
                    workers.len()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// Waits until the status endpoint answers; fails at once if the process exits.
    fn wait_ready(&mut self, limit: Duration) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            match self.status() {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    if let Ok(Some(st)) = self.proc.try_wait() {
                        return Err(io::Error::other(format!("it exited ({st}): {e}")));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Subscribers held and messages published so far, from `/stats` (holdfast, tokio)
    /// or `nchan_stub_status` (nchan).
    pub fn status(&self) -> io::Result<Status> {
        match self.kind {
            Kind::Holdfast | Kind::Tokio | Kind::Floor => {
                let body = http_get(self.admin, "/stats")?;
                let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("/stats: {e}"))
                })?;
                let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
                Ok(Status {
                    subscribers: n("parked")
                        + n("sse_streams")
                        + n("ndjson_streams")
                        + n("websockets"),
                    published: n("published"),
                })
            }
            Kind::Nchan => {
                let body = http_get(self.admin, "/nchan_status")?;
                let n = |k: &str| {
                    body.lines()
                        .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
                        .ok_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("nchan_stub_status: no `{k}`"),
                            )
                        })
                };
                Ok(Status {
                    subscribers: n("subscribers:")?,
                    published: n("total published messages:")?,
                })
            }
        }
    }

    /// Memory of the measured processes, summed.
    pub fn mem(&self) -> io::Result<Mem> {
        self.measured
            .iter()
            .try_fold(Mem::default(), |acc, &p| Ok(acc.add(measure::mem(p)?)))
    }

    /// CPU time of the measured processes, summed.
    pub fn cpu(&self) -> io::Result<Cpu> {
        self.measured
            .iter()
            .try_fold(Cpu::default(), |acc, &p| Ok(acc.add(measure::cpu(p)?)))
    }

    /// Memory of nginx's master process, if this is nchan.
    pub fn master_mem(&self) -> Option<Mem> {
        measure::mem(self.master?).ok()
    }
}

pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A loopback port that was free a moment ago (nginx needs a number in its config).
pub fn free_port() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The nginx configuration: one public server (subscribers) and one admin server
/// (publishers, stub status), each on loopback, as equivalent to holdfast's defaults as
/// nchan allows.
pub fn nchan_conf(
    module: &Path,
    threads: u32,
    dir: &Path,
    error_log: &Path,
    public: SocketAddr,
    admin: SocketAddr,
) -> String {
    let d = dir.display();
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Written by holdfast-bench; nginx runs with -p {d} -g 'daemon off;'."
    );
    let _ = writeln!(c, "load_module {};", module.display());
    let _ = writeln!(c, "worker_processes {threads};");
    // The hard open-file limit here is 20000; a worker may hold that many descriptors.
    // worker_connections counts connection slots, not descriptors, and nchan takes more
    // than one slot per long-poll subscriber (with 19900 slots nginx starts "reusing
    // connections" below 19,000 subscribers), so it is set well above the fd limit;
    // the open-file limit stays the real bound, as for holdfast.
    let _ = writeln!(c, "worker_rlimit_nofile 20000;");
    let _ = writeln!(c, "pid {d}/nginx.pid;");
    let _ = writeln!(c, "error_log {} warn;", error_log.display());
    let _ = writeln!(c, "events {{ worker_connections 65536; multi_accept on; }}");
    let _ = writeln!(c, "http {{");
    let _ = writeln!(c, "  access_log off;");
    for (key, sub) in [
        ("client_body_temp_path", "body"),
        ("proxy_temp_path", "proxy"),
        ("fastcgi_temp_path", "fastcgi"),
        ("uwsgi_temp_path", "uwsgi"),
        ("scgi_temp_path", "scgi"),
    ] {
        let _ = writeln!(c, "  {key} {d}/tmp_{sub};");
    }
    let _ = writeln!(c, "  nchan_message_buffer_length {BUFFER_MESSAGES};");
    let _ = writeln!(c, "  nchan_message_timeout {MESSAGE_TTL_SECS}s;");
    let _ = writeln!(c, "  nchan_subscriber_timeout {POLL_TIMEOUT_SECS}s;");
    let _ = writeln!(c, "  server {{");
    let _ = writeln!(c, "    listen {public};");
    // Long-poll by default; `Accept: text/event-stream` selects the eventsource
    // subscriber and `Upgrade: websocket` the websocket one, as with holdfast (one URL,
    // the mode chosen by the request). The pings are nchan's heartbeats, off by default:
    // on SSE a `:hb` comment (no `event:` line) every SSE_HEARTBEAT_SECS, like holdfast's
    // `: hb`; on a WebSocket a ping frame at the same interval, like holdfast's.
    let _ = writeln!(
        c,
        "    location ~ /sub/(\\w+)$ {{ nchan_subscriber longpoll eventsource websocket; \
         nchan_channel_id $1; \
         nchan_eventsource_ping_interval {SSE_HEARTBEAT_SECS}; nchan_eventsource_ping_comment hb; \
         nchan_eventsource_ping_event \"\"; nchan_websocket_ping_interval {SSE_HEARTBEAT_SECS}; }}"
    );
    let _ = writeln!(c, "  }}");
    let _ = writeln!(c, "  server {{");
    let _ = writeln!(c, "    listen {admin};");
    let _ = writeln!(
        c,
        "    location ~ /pub/(\\w+)$ {{ nchan_publisher; nchan_channel_id $1; }}"
    );
    let _ = writeln!(c, "    location = /nchan_status {{ nchan_stub_status; }}");
    let _ = writeln!(c, "  }}");
    let _ = writeln!(c, "}}");
    c
}

/// Finds nginx and the nchan module; when missing and running as root with apt-get,
/// installs `nginx libnginx-mod-nchan` (bounded in time). `Err` says why nchan is skipped.
pub fn find_or_install_nchan(install: bool, log: &Path) -> Result<Nchan, String> {
    if let Some(n) = find_nchan() {
        return Ok(n);
    }
    if !install {
        return Err(
            "nginx or the nchan module is not installed (and --no-install was given)".into(),
        );
    }
    let root = measure::command_output("id", &["-u"]).as_deref() == Some("0");
    if !root {
        return Err(
            "nginx + libnginx-mod-nchan are not installed and this is not root, so \
                    they cannot be installed here"
                .into(),
        );
    }
    if measure::command_output("sh", &["-c", "command -v apt-get"]).is_none() {
        return Err("nginx + libnginx-mod-nchan are not installed and there is no apt-get".into());
    }
    eprintln!(
        "holdfast-bench: installing nginx + libnginx-mod-nchan with apt-get (log: {})",
        log.display()
    );
    let script = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx libnginx-mod-nchan";
    let out = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let mut p = Proc::spawn(&mut cmd, "apt-get").map_err(|e| e.to_string())?;
    match p.wait_timeout(Duration::from_secs(600)) {
        Ok(Some(st)) if st.success() => {}
        Ok(Some(st)) => {
            return Err(format!(
                "apt-get install failed ({st}); see {}",
                log.display()
            ))
        }
        Ok(None) => {
            return Err(format!(
                "apt-get install took over 10 minutes; see {}",
                log.display()
            ))
        }
        Err(e) => return Err(e.to_string()),
    }
    // The package starts a system nginx on :80 where policy allows; that one is not ours
    // and is left alone. Ours runs from its own prefix on its own ports.
    find_nchan()
        .ok_or_else(|| "apt-get succeeded but nginx or ngx_nchan_module.so is still missing".into())
}

fn find_nchan() -> Option<Nchan> {
    let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
    let mut candidates = vec![
        PathBuf::from("/usr/lib/nginx/modules/ngx_nchan_module.so"),
        PathBuf::from("/usr/share/nginx/modules/ngx_nchan_module.so"),
    ];
    // Debian's snippet says `load_module modules/ngx_nchan_module.so;`, relative to the
    // compiled-in prefix /usr/share/nginx.
    if let Ok(s) = fs::read_to_string("/usr/share/nginx/modules-available/mod-nchan.conf") {
        if let Some(rel) = s.split_whitespace().nth(1).map(|p| p.trim_end_matches(';')) {
            let p = Path::new(rel);
            candidates.push(if p.is_absolute() {
                p.to_path_buf()
            } else {
                Path::new("/usr/share/nginx").join(p)
            });
        }
    }
    let module = candidates.into_iter().find(|p| p.exists())?;
    Some(Nchan { nginx, module })
}

/// One `GET` with `Connection: close`, bounded by a 2 s timeout; the body if `200`.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<String> {
    let t = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, t)?;
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.take(1 << 20).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("GET {path}: no header end"),
        )
    })?;
    let code = head.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(io::Error::other(format!(
            "GET {path} on {addr}: status {code}"
        )));
    }
    Ok(body.to_string())
}

/// Versions of the servers, for the report.
pub fn version_of(kind: Kind, bin: &Path, nchan: Option<&Nchan>) -> String {
    match kind {
        Kind::Holdfast | Kind::Tokio | Kind::Floor => {
            measure::command_output(&bin.display().to_string(), &["--version"])
                .unwrap_or_else(|| format!("{} (version unknown)", bin.display()))
        }
        Kind::Nchan => {
            let Some(n) = nchan else {
                return "not installed".into();
            };
            let nginx = measure::command_output(&n.nginx.display().to_string(), &["-v"])
                .unwrap_or_default();
            let pkg = measure::command_output(
                "dpkg-query",
                &["-W", "-f=${Version}", "libnginx-mod-nchan"],
            )
            .map(|v| format!("libnginx-mod-nchan {v}"))
            .unwrap_or_else(|| format!("module {}", n.module.display()));
            format!("{} + {pkg}", nginx.trim_start_matches("nginx version: "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nchan_conf_has_the_equivalent_locations_and_limits() {
        let conf = nchan_conf(
            Path::new("/usr/lib/nginx/modules/ngx_nchan_module.so"),
            3,
            Path::new("/tmp/x"),
            Path::new("/tmp/logs/nchan.error.log"),
            "127.0.0.1:4000".parse().unwrap(),
            "127.0.0.1:4001".parse().unwrap(),
        );
        for want in [
            "load_module /usr/lib/nginx/modules/ngx_nchan_module.so;",
            "worker_processes 3;",
            "worker_rlimit_nofile 20000;",
            "pid /tmp/x/nginx.pid;",
            "error_log /tmp/logs/nchan.error.log warn;",
            "nchan_message_buffer_length 16;",
            "nchan_message_timeout 3600s;",
            "nchan_subscriber_timeout 300s;",
            "listen 127.0.0.1:4000;",
            r#"location ~ /sub/(\w+)$ { nchan_subscriber longpoll eventsource websocket; nchan_channel_id $1; nchan_eventsource_ping_interval 15; nchan_eventsource_ping_comment hb; nchan_eventsource_ping_event ""; nchan_websocket_ping_interval 15; }"#,
            "listen 127.0.0.1:4001;",
            r"location ~ /pub/(\w+)$ { nchan_publisher; nchan_channel_id $1; }",
            "location = /nchan_status { nchan_stub_status; }",
            "client_body_temp_path /tmp/x/tmp_body;",
        ] {
            assert!(conf.contains(want), "missing {want:?} in\n{conf}");
        }
        // The publisher must never be reachable on the public server.
        let public = &conf[conf.find("listen 127.0.0.1:4000").unwrap()
            ..conf.find("listen 127.0.0.1:4001").unwrap()];
        assert!(!public.contains("nchan_publisher"));
    }
}
