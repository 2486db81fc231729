//! nginx in front of the server under test (tests/nginx.rs, tests/browser.rs): a real
//! nginx running the shipped `tuning/nginx.conf`, with only the literals that file marks
//! `TEMPLATED` (listen port, upstream address, pid/log/temp/static paths) rewritten into
//! a scratch directory. Its process group (master and workers) is killed on drop and the
//! directory removed.
//!
//! [`Nginx::start_cluster`] does the same with the shipped `tuning/nginx-cluster.conf` in
//! front of three cluster-mode nodes (tests/nginx_cluster.rs).

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::http::Conn;
use super::process::{children_of, kill_group, rss_of};
use super::server::START_TIMEOUT;

/// The config file the tests run, exactly as shipped.
pub fn shipped_conf_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/nginx.conf")
}

pub fn shipped_conf() -> String {
    let path = shipped_conf_path();
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The nginx binary: `$NGINX` if set, else `nginx` on PATH, else `/usr/sbin/nginx`
/// (Debian's, which a non-root PATH may not include). Panics with what to install.
pub fn nginx_bin() -> PathBuf {
    super::process::find_bin(
        "NGINX",
        "nginx",
        &["/usr/sbin", "/usr/local/sbin"],
        "These tests run the shipped tuning/nginx.conf in a real nginx: `apt-get install \
         nginx` (.ci/run does).",
    )
}

/// Replaces every occurrence of each pattern in one pass over `text` (so a
/// replacement is never rescanned, even when it contains another pattern), and
/// returns how often each pattern was found.
fn replace_all(text: &str, subs: &[(&str, String)]) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(text.len() + 256);
    let mut counts = vec![0; subs.len()];
    let mut rest = text;
    loop {
        let next = subs
            .iter()
            .enumerate()
            .filter_map(|(i, (pat, _))| rest.find(pat).map(|at| (at, i)))
            .min();
        match next {
            Some((at, i)) => {
                out.push_str(&rest[..at]);
                out.push_str(&subs[i].1);
                rest = &rest[at + subs[i].0.len()..];
                counts[i] += 1;
            }
            None => {
                out.push_str(rest);
                return (out, counts);
            }
        }
    }
}

/// The shipped config with its comments blanked (line numbers kept, so nginx's
/// messages point at the shipped file's lines) and the TEMPLATED literals rewritten:
/// nginx listens on `listen`, proxies to `upstream`, and keeps every file in `dir`.
/// Err names a literal the file no longer contains.
pub fn templated_conf(
    shipped: &str,
    listen: SocketAddr,
    upstream: SocketAddr,
    dir: &Path,
) -> Result<String, String> {
    let stripped: String = shipped
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let d = dir.display();
    let subs = [
        ("listen 80 ", format!("listen {listen} ")),
        ("server 127.0.0.1:8080;", format!("server {upstream};")),
        ("/run/", format!("{d}/run/")),
        ("/var/log/nginx/", format!("{d}/log/")),
        ("/var/lib/nginx/", format!("{d}/lib/")),
        ("/var/www/holdfast", format!("{d}/www")),
    ];
    let (out, counts) = replace_all(&stripped, &subs);
    for ((pat, _), n) in subs.iter().zip(counts) {
        if n == 0 {
            return Err(format!(
                "tuning/nginx.conf no longer contains `{pat}` outside comments; the \
                 tests rewrite that literal (see the TEMPLATED notes in the file)"
            ));
        }
    }
    Ok(out)
}

/// A directory under the system temp dir, removed (with everything in it) on drop.
/// World-readable, so nginx workers running as another user can serve files from it.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "holdfast-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A running nginx (master in its own process group, so one signal reaches the
/// workers too). Killed on drop.
pub struct Nginx {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    // Declared last: removed after the processes are gone.
    dir: TempDir,
}

impl Nginx {
    /// nginx with the shipped config in front of `upstream` (the server's public
    /// listener), serving `files` (name, contents) from its static root.
    pub fn start(upstream: SocketAddr, files: &[(&str, &[u8])]) -> Nginx {
        let shipped = shipped_conf();
        launch("tuning/nginx.conf", files, |listen, dir| {
            templated_conf(&shipped, listen, upstream, dir)
        })
    }

    /// Worker process ids.
    pub fn workers(&self) -> Vec<u32> {
        children_of(self.child.id())
    }

    /// Total RSS of the workers, in bytes.
    pub fn workers_rss(&self) -> u64 {
        self.workers().into_iter().map(rss_of).sum()
    }

    /// nginx's error and start-up logs, for failure messages.
    pub fn logs(&self) -> String {
        logs_in(&self.dir.path)
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master first: it stops its workers and reaps them before it
    /// exits, which a SIGKILL would leave as zombies for init to collect. Whatever
    /// is left after 3 s gets SIGKILL, the whole group.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.child.try_wait() {
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    // Not reaped yet, so the group id is still this master's.
                    kill_group(self.child.id(), "KILL");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                _ => return,
            }
        }
    }
}

fn read_logs(dir: &Path, names: &[&str]) -> String {
    let mut out = String::new();
    for n in names {
        if let Ok(text) = fs::read_to_string(dir.join("log").join(n)) {
            if !text.is_empty() {
                out.push_str(&format!("--- {n}\n{text}"));
            }
        }
    }
    out
}

fn logs_in(dir: &Path) -> String {
    read_logs(
        dir,
        &[
            "startup.log",
            "stdout.log",
            "holdfast-error.log",
            "holdfast-cluster-error.log",
        ],
    )
}

// ---------------------------------------------------------------------------------
// tuning/nginx-cluster.conf: nginx in front of several nodes (tests/nginx_cluster.rs)
// ---------------------------------------------------------------------------------

/// The cluster config the tests run, exactly as shipped.
pub fn shipped_cluster_conf_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/nginx-cluster.conf")
}

pub fn shipped_cluster_conf() -> String {
    let path = shipped_cluster_conf_path();
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The `server` literals of tuning/nginx-cluster.conf's upstream block, in order: node
/// 1, 2 and 3 (each followed by its `max_fails=…` parameters, which are kept).
pub const CLUSTER_SERVER_LITERALS: [&str; 3] = [
    "server 127.0.0.1:8080 ",
    "server 127.0.0.1:8082 ",
    "server 127.0.0.1:8084 ",
];

/// The shipped cluster config with its comments blanked (line numbers kept) and the
/// literals it marks TEMPLATED rewritten: nginx listens on `listen`, its upstream
/// servers are `nodes` (one per `server` line, in order) and it keeps every file in
/// `dir`. Err names a literal the file no longer contains (or contains twice, for a
/// `server` line), or says `nodes` does not match the number of `server` lines.
pub fn templated_cluster_conf(
    shipped: &str,
    listen: SocketAddr,
    nodes: &[SocketAddr],
    dir: &Path,
) -> Result<String, String> {
    if nodes.len() != CLUSTER_SERVER_LITERALS.len() {
        return Err(format!(
            "tuning/nginx-cluster.conf lists {} nodes; {} given",
            CLUSTER_SERVER_LITERALS.len(),
            nodes.len()
        ));
    }
    let stripped: String = shipped
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let d = dir.display();
    let mut subs: Vec<(&str, String)> = vec![
        ("listen 8000 ", format!("listen {listen} ")),
        ("/run/", format!("{d}/run/")),
        ("/var/log/nginx/", format!("{d}/log/")),
        ("/var/lib/nginx/", format!("{d}/lib/")),
        ("/var/www/holdfast", format!("{d}/www")),
    ];
    let first_server = subs.len();
    for (lit, node) in CLUSTER_SERVER_LITERALS.iter().zip(nodes) {
        subs.push((lit, format!("server {node} ")));
    }
    let (out, counts) = replace_all(&stripped, &subs);
    for (i, ((pat, _), n)) in subs.iter().zip(counts).enumerate() {
        if n == 0 || (i >= first_server && n != 1) {
            return Err(format!(
                "tuning/nginx-cluster.conf contains `{pat}` {n} times outside comments; \
                 the tests rewrite that literal (see the TEMPLATED notes in the file)"
            ));
        }
    }
    Ok(out)
}

impl Nginx {
    /// nginx with the shipped tuning/nginx-cluster.conf in front of `nodes` (the
    /// nodes' public listeners, as many as the file has `server` lines: three).
    pub fn start_cluster(nodes: &[SocketAddr]) -> Nginx {
        let shipped = shipped_cluster_conf();
        launch("tuning/nginx-cluster.conf", &[], |listen, dir| {
            templated_cluster_conf(&shipped, listen, nodes, dir)
        })
    }
}

/// Runs nginx with the config `make_conf(listen, dir)` returns (an Err is a panic) on a
/// free port, in a fresh scratch directory with `files` in its static root, and waits
/// until it answers. `what` names the shipped file in failure messages. A bind failure
/// (the port taken meanwhile) is retried on another port.
fn launch(
    what: &str,
    files: &[(&str, &[u8])],
    make_conf: impl Fn(SocketAddr, &Path) -> Result<String, String>,
) -> Nginx {
    let bin = nginx_bin();
    let mut last_failure = String::new();
    for _attempt in 0..5 {
        let dir = TempDir::new("nginx");
        for sub in ["run", "log", "lib", "www"] {
            fs::create_dir_all(dir.path.join(sub)).expect("create nginx dirs");
        }
        for (name, body) in files {
            let p = dir.path.join("www").join(name);
            fs::write(&p, body).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod page");
        }
        let listen = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port");
        let conf = make_conf(listen, &dir.path).unwrap_or_else(|e| panic!("{e}"));
        let conf_path = dir.path.join("nginx.conf");
        fs::write(&conf_path, &conf).expect("write nginx.conf");
        let out = fs::File::create(dir.path.join("log/stdout.log")).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut child = Command::new(&bin)
            .arg("-p")
            .arg(&dir.path)
            .arg("-e")
            .arg(dir.path.join("log/startup.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                last_failure = format!("nginx exited with {status}:\n{}", logs_in(&dir.path));
                break;
            }
            // Any HTTP answer means a worker is serving (the path is a 404).
            if let Ok(s) = TcpStream::connect_timeout(&listen, Duration::from_secs(1)) {
                let mut c = Conn::from_stream(s);
                c.set_read_timeout(Duration::from_secs(2));
                let ok = c
                    .try_send(b"GET /nginx-started HTTP/1.1\r\nHost: t\r\n\r\n")
                    .and_then(|_| c.read_response())
                    .is_ok();
                if ok {
                    return Nginx {
                        child,
                        addr: listen,
                        dir,
                    };
                }
            }
            if Instant::now() >= deadline {
                kill_group(child.id(), "KILL");
                let _ = child.wait();
                panic!(
                    "nginx did not answer on {listen} within {START_TIMEOUT:?}:\n{}",
                    logs_in(&dir.path)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        kill_group(child.id(), "KILL");
        let _ = child.wait();
        if !last_failure.contains("in use") {
            break;
        }
    }
    panic!("{last_failure}\nconfig: {what} templated by tests/common/nginx.rs");
}
