//! The server under test as a child process: which binary, starting it on free loopback
//! ports (its addresses come from its start-up lines, parsed by
//! `holdfast_stress::startup`), signalling it, waiting for its exit, and its output for
//! failure messages.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use holdfast_stress::startup;

use super::process::cpu_time_of;

/// How long the server may take to print its listening addresses.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary under test: `HOLDFAST_BIN` if set, else the holdfast binary cargo built.
pub fn server_bin() -> String {
    std::env::var("HOLDFAST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_holdfast").to_string())
}

/// True when the binary under test is holdfast itself, for the few checks that hold
/// holdfast to its own budgets rather than to the protocol: the one cargo built, or a
/// `HOLDFAST_BIN` whose file is named `holdfast` (another build of it, e.g. in a
/// worktree). The tokio peer is `holdfast-tokio`.
pub fn testing_holdfast() -> bool {
    std::env::var_os("HOLDFAST_BIN")
        .is_none_or(|p| Path::new(&p).file_name() == Some(OsStr::new("holdfast")))
}

/// A running server process. Killed (SIGKILL) on drop.
pub struct Server {
    child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<Mutex<String>>,
    exit: Option<ExitStatus>,
}

/// Copies `pipe` line by line into `log` (each line prefixed with `tag`) and, while
/// `lines` has a receiver, to `lines`.
fn spawn_line_reader<R: Read + Send + 'static>(
    pipe: R,
    tag: &'static str,
    log: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    if let Ok(mut l) = log.lock() {
                        l.push_str(tag);
                        l.push_str(&text);
                        l.push('\n');
                    }
                    if let Some(tx) = &lines {
                        let _ = tx.send(text);
                    }
                }
            }
        }
    })
}

impl Server {
    /// Starts the server on free loopback ports with `--threads 2` (unless `flags` gives
    /// `--threads`) plus `flags`, and waits for both listening lines.
    pub fn start(flags: &[&str]) -> Server {
        Server::start_wrapped(&[], flags)
    }

    /// Like [`Server::start`], but runs the binary through `wrapper` (e.g. `["prlimit",
    /// "--nofile=300:300"]`), which must exec it so that [`Server::pid`] is the server.
    /// An empty `wrapper` runs the binary itself.
    pub fn start_wrapped(wrapper: &[&str], flags: &[&str]) -> Server {
        let bin = server_bin();
        let (program, mut args) = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut args = wrapper_args.to_vec();
                args.push(&bin);
                (*program, args)
            }
            None => (bin.as_str(), Vec::new()),
        };
        args.extend(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
        if !flags.contains(&"--threads") {
            args.extend(["--threads", "2"]);
        }
        args.extend_from_slice(flags);
        let mut child = Command::new(program)
            .args(&args)
            // A cluster URL in the environment would turn a standalone test into a
            // cluster one; cluster tests pass --redis.
            .env_remove("HOLDFAST_REDIS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        spawn_line_reader(stdout, "[stdout] ", log.clone(), Some(tx));
        let stderr_thread = spawn_line_reader(stderr, "[stderr] ", log.clone(), None);
        match startup::wait_listening(&rx, START_TIMEOUT) {
            Ok(listening) => Server {
                child,
                public: listening.public,
                admin: listening.admin,
                log,
                exit: None,
            },
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                // Everything it wrote to stderr before it went.
                let _ = stderr_thread.join();
                let out = log.lock().map(|l| l.clone()).unwrap_or_default();
                panic!("{program} {args:?}: {e}; exit {status:?}; output:\n{out}");
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server printed so far (for failure messages).
    pub fn output(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    return self.exit;
                }
                Ok(None) => {}
                Err(e) => panic!("waiting for server: {e}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                false
            }
            _ => true,
        }
    }

    /// CPU time (user + system) the server process has used so far, from /proc.
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A failing test shows what the server said (at most the last 8 KiB).
        if std::thread::panicking() {
            let log = self.output();
            let mut from = log.len().saturating_sub(8192);
            while !log.is_char_boundary(from) {
                from += 1;
            }
            let tail = &log[from..];
            eprintln!("--- server output (tail) ---\n{tail}--- end of server output ---");
        }
    }
}
