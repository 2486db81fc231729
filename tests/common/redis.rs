//! A real `redis-server` for the cluster tests (tests/cluster.rs): started on a free
//! loopback port in a scratch directory of its own (no system service, no persistence
//! unless a test asks for it), and killed on drop. A test can stop it, start it again on
//! the same port (with or without its data), kill its pub/sub clients, or freeze it with
//! SIGSTOP (a wedged Redis whose socket still accepts connections). Every wait is bounded.
//!
//! `redis-server` and `redis-cli` come from Debian's `redis-server` package (which pulls
//! in `redis-tools`); `.ci/run` installs it.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::nginx::TempDir;

/// How long `redis-server` may take to answer PING after it is started.
pub const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `redis-cli` command, a SHUTDOWN or a kill may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// A `redis-server` child process. Killed (SIGKILL) on drop, its directory removed.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    frozen: bool,
    // Declared last: removed after the process is gone.
    dir: TempDir,
}

/// The binary: `$REDIS_SERVER` if set, else `redis-server` on PATH or in /usr/bin,
/// /usr/local/bin. Panics with what to install.
fn redis_server_bin() -> PathBuf {
    redis_bin("REDIS_SERVER", "redis-server")
}

fn redis_bin(env: &str, name: &str) -> PathBuf {
    super::process::find_bin(
        env,
        name,
        &["/usr/bin", "/usr/local/bin"],
        "The cluster tests run a real Redis: `apt-get install redis-server` (.ci/run does).",
    )
}

fn redis_cli_bin() -> PathBuf {
    redis_bin("REDIS_CLI", "redis-cli")
}

/// A port that was free a moment ago (bound with port 0 and let go). Another process
/// may take it before redis-server binds it: callers retry.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// One command in RESP over a fresh connection; the first reply line (e.g. `+PONG`), or
/// an error (connection refused, no answer within `within`, closed without a reply).
fn raw_command(port: u16, args: &[&str], within: Duration) -> io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, within)?;
    s.set_read_timeout(Some(within))?;
    s.set_write_timeout(Some(within))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut chunk = [0u8; 512];
    while !got.windows(2).any(|w| w == b"\r\n") {
        if Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no reply"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed without a reply",
            ));
        }
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    Ok(text.lines().next().unwrap_or_default().to_string())
}

impl Redis {
    /// A new, empty Redis on a free loopback port, answering PING.
    pub fn start() -> Redis {
        let mut last = String::new();
        for _attempt in 0..5 {
            let mut r = Redis {
                child: None,
                port: free_port(),
                frozen: false,
                dir: TempDir::new("redis"),
            };
            match r.spawn_and_wait() {
                Ok(()) => return r,
                Err(e) => last = e,
            }
            if !last.contains("in use") {
                break;
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// `redis://127.0.0.1:PORT`, for `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the running redis-server (panics if it is stopped).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("redis-server is not running")
            .id()
    }

    fn rdb_path(&self) -> PathBuf {
        self.dir.path.join("dump.rdb")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path.join("redis.log")
    }

    /// Redis's own log (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts redis-server on `self.port` with `self.dir` (its RDB, if any, is loaded)
    /// and waits until it answers PING. Err describes the failure (with the log).
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "redis-server is already running");
        let dir: &Path = &self.dir.path;
        let port = self.port.to_string();
        let log = self.log_path();
        let mut child = Command::new(redis_server_bin())
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .args(["--dbfilename", "dump.rdb", "--daemonize", "no"])
            .arg("--logfile")
            .arg(&log)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server on port {port} exited with {status}; log:\n{}",
                    self.log()
                ));
            }
            // `-LOADING` while it reads its RDB: not ready yet.
            if raw_command(self.port, &["PING"], Duration::from_millis(500))
                .is_ok_and(|l| l == "+PONG")
            {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {port} did not answer PING within \
                     {REDIS_START_TIMEOUT:?}; log:\n{}",
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `redis-cli -p PORT args…` and returns its standard output, trimmed. Panics if
    /// it fails or takes more than 5 s.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut child = Command::new(redis_cli_bin())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-cli {args:?} took more than {STEP_TIMEOUT:?}");
                }
            }
        }
        let out = child.wait_with_output().expect("redis-cli output");
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}; stdout {stdout:?}; stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Waits up to 5 s for the process to exit, then SIGKILLs it.
    fn reap(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        self.frozen = false;
    }

    /// Sends SHUTDOWN with `mode` (`NOSAVE`, `SAVE`) and waits for the exit (SIGKILL
    /// after 5 s). The reply, if any, is ignored: the connection closes.
    fn shutdown(&mut self, mode: &str) {
        if self.child.is_none() {
            return;
        }
        if self.frozen {
            self.thaw();
        }
        let _ = raw_command(self.port, &["SHUTDOWN", mode], STEP_TIMEOUT);
        self.reap();
    }

    /// Stops Redis (SHUTDOWN NOSAVE, or a kill if it does not exit) and waits for the
    /// exit. What it held since its last save is gone; [`Redis::start_again`] starts
    /// empty unless a save (e.g. [`Redis::restart_keep_data`]) left an RDB.
    pub fn stop(&mut self) {
        self.shutdown("NOSAVE");
    }

    /// Starts Redis again on the same port and directory (after [`Redis::stop`]), and
    /// waits until it answers. An RDB left in the directory is loaded.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again while redis-server runs");
        // The port was free a moment ago; a client socket may hold it briefly.
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) if e.contains("in use") && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("redis-server did not start again: {e}"),
            }
        }
    }

    /// The keys without an expiry (TTL -1), sorted: what a restart that keeps the data
    /// must bring back.
    fn persistent_keys(&self) -> Vec<String> {
        let script = "local out = {} \
             for _, k in ipairs(redis.call('KEYS', '*')) do \
               if redis.call('TTL', k) == -1 then table.insert(out, k) end \
             end \
             return out";
        let out = self.cli(&["EVAL", script, "0"]);
        let mut keys: Vec<String> = out
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        keys.sort();
        keys
    }

    /// Restarts Redis with its data: SAVE, SHUTDOWN SAVE (so nothing written in between
    /// is lost), start again on the same port and directory so the RDB is loaded, and
    /// check every key without an expiry came back.
    pub fn restart_keep_data(&mut self) {
        assert_eq!(self.cli(&["SAVE"]), "OK", "SAVE");
        let before = self.persistent_keys();
        self.shutdown("SAVE");
        assert!(
            self.rdb_path().is_file(),
            "no {} after SHUTDOWN SAVE; log:\n{}",
            self.rdb_path().display(),
            self.log()
        );
        self.start_again();
        let after = self.persistent_keys();
        let missing: Vec<&String> = before.iter().filter(|k| !after.contains(k)).collect();
        assert!(
            missing.is_empty(),
            "keys lost in restart_keep_data: {missing:?} (before {before:?}, after {after:?})"
        );
    }

    /// Restarts Redis with no data: shut down, delete the RDB, start again on the same
    /// port. Checks it came back empty.
    pub fn restart_empty(&mut self) {
        self.stop();
        let _ = fs::remove_file(self.rdb_path());
        self.start_again();
        assert_eq!(
            self.cli(&["DBSIZE"]),
            "0",
            "Redis is not empty after restart"
        );
    }

    /// `CLIENT KILL TYPE pubsub`: closes every subscriber connection. Returns how many
    /// were killed.
    pub fn kill_pubsub_clients(&self) -> u64 {
        let out = self.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        out.parse()
            .unwrap_or_else(|_| panic!("CLIENT KILL TYPE pubsub answered {out:?}"))
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        let ok = Command::new("kill")
            .args(["-s", sig, &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {sig} {pid} failed");
    }

    /// SIGSTOP: Redis stops answering while the kernel still accepts connections and
    /// buffers what is sent to it (a wedged Redis, not a dead one).
    pub fn freeze(&mut self) {
        self.signal("STOP");
        self.frozen = true;
    }

    /// SIGCONT after [`Redis::freeze`]: Redis goes on with what was sent meanwhile.
    pub fn thaw(&mut self) {
        self.signal("CONT");
        self.frozen = false;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            let log = self.log();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("--- redis log (tail) ---\n{tail}\n--- end of redis log ---");
        }
    }
}
