//! Child processes the harness starts: servers and the load generator.
//!
//! Every child runs in a process group of its own and is registered here until it has
//! been reaped. Killing the *group* (`kill -KILL -- -PGID`) also takes nginx's worker
//! processes and the stress tool's forked workers, which killing the leader alone would
//! orphan. Three paths lead here, so no run leaves a process behind:
//! - [`Proc`]'s `Drop` (normal return and `?` error paths);
//! - a panic hook ([`install_cleanup`]); release builds abort on panic, so `Drop` alone
//!   would not run there;
//! - SIGINT/SIGTERM to the harness: the signals are blocked in every thread and taken
//!   synchronously by one thread that kills every registered group and exits.
//!   Children inherit that mask (SIGINT and SIGTERM stay pending in them, as they do
//!   in holdfast anyway). That changes nothing here: children are stopped with SIGKILL,
//!   and nginx sets its own mask. Clearing it in the child would need `pre_exec`,
//!   which is `unsafe`.
//!
//! Only a SIGKILL of the harness itself can leave children running.

use std::io;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Process-group ids (= leader pids) of children not yet reaped.
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn with_groups(f: impl FnOnce(&mut Vec<u32>)) {
    // A poisoned lock still holds a valid list; cleanup must not be skipped because
    // some other thread panicked while holding it.
    let mut g = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut g);
}

/// Sends SIGKILL to every process in group `pgid`. Uses `kill(1)` because this crate
/// has no `unsafe` and std offers no way to signal a group.
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Kills every registered group. Called from the panic hook and the signal thread.
pub fn kill_all() {
    // try_lock: the panicking thread may itself hold the lock.
    let groups = match GROUPS.try_lock() {
        Ok(g) => g.clone(),
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().clone(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    for pgid in groups {
        kill_group(pgid);
    }
}

/// Installs the panic hook and the signal thread. Call first thing in `main`, before
/// any other thread exists (the signal mask is inherited by threads spawned later).
pub fn install_cleanup() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_all();
        prev(info);
    }));
    match holdfast::sys::block_shutdown_signals() {
        Ok(()) => {
            std::thread::spawn(|| {
                if let Ok(sig) = holdfast::sys::wait_shutdown_signal() {
                    eprintln!("holdfast-bench: signal {sig}: stopping every child process");
                    kill_all();
                    std::process::exit(128 + sig);
                }
            });
        }
        Err(e) => eprintln!(
            "holdfast-bench: cannot block SIGINT/SIGTERM ({e}); Ctrl-C may leave children"
        ),
    }
}

/// A running child in its own process group; dropping it kills the group and reaps it.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Spawns `cmd` as the leader of a new process group and registers it.
    pub fn spawn(cmd: &mut Command, name: &str) -> io::Result<Proc> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        let pgid = child.id();
        with_groups(|g| g.push(pgid));
        Ok(Proc { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Exit status if the leader has exited (without blocking).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for the leader to exit, at most `limit`; `None` if it is still running.
    pub fn wait_timeout(&mut self, limit: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pgid = self.child.id();
        // Kill the group even when the leader already exited: forked helpers may
        // outlive it. A group with no members left makes kill(1) fail, harmlessly.
        kill_group(pgid);
        let _ = self.child.kill();
        let _ = self.child.wait();
        with_groups(|g| g.retain(|&p| p != pgid));
    }
}
