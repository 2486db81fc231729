//! Several holdfast nodes in cluster mode on one Redis (tests/cluster.rs): each node is a
//! [`Server`] started with `--redis URL` plus the test's flags, on its own free ports.
//! A node can be SIGKILLed (a crash, not a shutdown) and replaced by a fresh one on the
//! same Redis. Nodes are dropped (killed) before Redis.

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::http::{request_bytes, Conn};
use super::redis::Redis;
use super::server::Server;
use super::timing::wait_until;

/// How long a node may take, after it printed its listening lines, to answer `/health`
/// with `200` (connected to Redis).
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Nodes on one Redis. `nodes` is declared first, so the nodes are killed before Redis.
pub struct Cluster {
    pub nodes: Vec<Server>,
    pub redis: Redis,
    flags: Vec<String>,
}

/// The status of `GET /health` on `addr` (either listener), or `None` if the request
/// failed (refused, closed, no answer within 10 s).
pub fn health_status(addr: SocketAddr) -> Option<u16> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    let mut c = Conn::from_stream(stream);
    c.try_send(&request_bytes("GET", "/health", &[], None))
        .ok()?;
    c.read_response().ok().map(|r| r.status)
}

/// Waits up to `within` until `/health` on `addr` answers `want`; returns whether it
/// did, and the last status seen.
pub fn wait_health(addr: SocketAddr, want: u16, within: Duration) -> (bool, Option<u16>) {
    let mut last = None;
    let ok = wait_until(
        || {
            last = health_status(addr);
            last == Some(want)
        },
        within,
    );
    (ok, last)
}

impl Cluster {
    /// A fresh Redis and `n` nodes on it, each started with `flags` (after `--redis`),
    /// each answering `/health` `200` on both listeners.
    pub fn start(n: usize, flags: &[&str]) -> Cluster {
        let redis = Redis::start();
        let mut c = Cluster {
            nodes: Vec::new(),
            redis,
            flags: flags.iter().map(|f| f.to_string()).collect(),
        };
        for _ in 0..n {
            let node = c.start_node();
            c.nodes.push(node);
        }
        c
    }

    /// Starts one more node on this cluster's Redis with its flags (not added to
    /// `nodes`), and waits until it is healthy.
    pub fn start_node(&self) -> Server {
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        self.start_node_with(&flags)
    }

    /// Starts one more node on this cluster's Redis with `flags` instead of the
    /// cluster's (not added to `nodes`), and waits until it is healthy.
    pub fn start_node_with(&self, flags: &[&str]) -> Server {
        let url = self.redis.url();
        let mut args: Vec<&str> = vec!["--redis", &url];
        args.extend_from_slice(flags);
        let node = Server::start(&args);
        for addr in [node.public, node.admin] {
            let (ok, last) = wait_health(addr, 200, NODE_READY_TIMEOUT);
            assert!(
                ok,
                "node {addr} on {url}: /health not 200 within {NODE_READY_TIMEOUT:?} \
                 (last {last:?}); output:\n{}",
                node.output()
            );
        }
        node
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Server {
        &self.nodes[i]
    }

    /// SIGKILLs node `i` and waits for it to exit (a crash: no shutdown, no flush).
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if !node.is_running() {
            return;
        }
        let pid = node.pid().to_string();
        let _ = Command::new("kill")
            .args(["-s", "KILL", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            node.wait_exit(Duration::from_secs(5)).is_some(),
            "node {pid} still running 5 s after SIGKILL"
        );
    }

    /// SIGKILLs node `i` (if it still runs) and puts a fresh node in its place.
    pub fn replace(&mut self, i: usize) {
        self.kill(i);
        let fresh = self.start_node();
        self.nodes[i] = fresh;
    }

    /// SIGKILLs every node, then starts as many fresh ones.
    pub fn restart_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        for i in 0..self.nodes.len() {
            self.nodes[i] = self.start_node();
        }
    }
}

/// True (and says why on stderr) when the binary under test has no cluster mode: the
/// tokio peer (`HOLDFAST_BIN`), which CI runs the whole suite against too.
pub fn skip_without_cluster_mode(test: &str) -> bool {
    if crate::common::server::testing_holdfast() {
        return false;
    }
    eprintln!(
        "{test}: skipped: {} is not holdfast; cluster mode (--redis) is holdfast only",
        crate::common::server::server_bin()
    );
    true
}

/// xorshift64*: a reproducible sequence without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}
