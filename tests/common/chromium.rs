//! Headless Chromium driving a test page (tests/browser.rs, tests/browser_cors.rs,
//! tests/browser_streams.rs).
//!
//! Each of those tests loads one page of `tests/assets/` in Chromium with `--dump-dom`:
//! Chromium prints the page's DOM once its load event has fired, and exits. The page
//! holds its load event on an image that is answered only once the test says so, writes
//! its outcome as JSON into `<pre id="result">`, and the test reads that back from the
//! DOM.
//!
//! - [`Chromium`]: the browser as a child process in its own process group, its DOM
//!   ([`Chromium::wait_dom`]) and console log; [`result_text`] takes `#result` out of
//!   the DOM, [`id_data_pairs`] a page's deliveries out of that
//!   ([`assert_sse_and_polled`] checks them); [`subscribers`] is how a test sees the
//!   page subscribe.
//! - [`PageServer`]: for a page on an origin of its own (`http://127.0.0.2:PORT`, so
//!   not holdfast's 127.0.0.1): a static server that serves the page, records the
//!   page's progress reports (`GET /mark/NAME`) and holds the requests the page waits
//!   on (its gates, such as the image that holds its load event) until the test opens
//!   them.
//! - [`Run`]: holdfast, a [`PageServer`] and Chromium together, with bounded waits that
//!   name themselves and show every log on failure.
//!
//! Chromium must be installed (`apt-get install chromium`; `.ci/run` does): without it
//! [`chromium_bin`] fails saying so.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::nginx::TempDir;
use super::process::kill_group;
use super::protocol::get;
use super::server::Server;
use super::timing::wait_until;

const SEC: Duration = Duration::from_secs(1);

/// Where a [`PageServer`] serves its page from: a loopback address other than holdfast's
/// 127.0.0.1, so a different origin (origins compare scheme, host and port).
pub const PAGE_HOST: &str = "127.0.0.2";

/// The bound on each step a [`Run`] waits for (a step takes well under a second; a first
/// Chromium start on a busy machine can take several).
pub const STEP: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------
// Chromium
// ---------------------------------------------------------------------------------

/// Chromium: `$CHROMIUM` if set, else `/usr/bin/chromium` or `chromium` on PATH.
pub fn chromium_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    [PathBuf::from("/usr/bin")]
        .into_iter()
        .chain(on_path)
        .flat_map(|d| [d.join("chromium"), d.join("chromium-browser")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "Chromium is not installed (looked for /usr/bin/chromium and chromium on \
                 PATH; set CHROMIUM=/path/to/chromium to point elsewhere). This test drives \
                 a real browser: `apt-get install chromium` (.ci/run does)."
            )
        })
}

/// Headless Chromium dumping the DOM of one page. Runs in its own process group; on
/// drop it gets SIGTERM (so it reaps its own children), then the group SIGKILL.
pub struct Chromium {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    reader: Option<thread::JoinHandle<()>>,
    profile: TempDir,
}

impl Chromium {
    /// Starts Chromium on `url`, with a fresh profile in a temporary directory named
    /// after `tag`.
    pub fn dump_dom(url: &str, tag: &str) -> Chromium {
        let bin = chromium_bin();
        let profile = TempDir::new(tag);
        let log = std::fs::File::create(profile.path.join("stderr.log")).expect("log file");
        let mut child = Command::new(&bin)
            .args([
                // What the sandbox needs (root, no network): see the env notes. Nothing
                // page-specific: Chromium's CORS checks are on by default and must stay
                // so (no --disable-web-security).
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                // Console output of the page on stderr (its progress log).
                "--enable-logging=stderr",
                "--v=0",
                "--dump-dom",
            ])
            .arg(format!(
                "--user-data-dir={}",
                profile.path.join("profile").display()
            ))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stdout.take().expect("stdout is piped");
        let sink = stdout.clone();
        let reader = thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            while let Ok(k) = pipe.read(&mut buf) {
                if k == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.extend_from_slice(&buf[..k]);
                }
            }
        });
        Chromium {
            child,
            stdout,
            reader: Some(reader),
            profile,
        }
    }

    /// Waits up to `within` for Chromium to exit; Ok(the DOM it printed).
    pub fn wait_dom(&mut self, within: Duration) -> Result<String, String> {
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    if let Some(r) = self.reader.take() {
                        let _ = r.join();
                    }
                    let dom =
                        String::from_utf8_lossy(&self.stdout.lock().expect("stdout")).into_owned();
                    if !status.success() {
                        return Err(format!("chromium exited with {status}"));
                    }
                    return Ok(dom);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => return Err(format!("chromium still running after {within:?}")),
                Err(e) => return Err(format!("waiting for chromium: {e}")),
            }
        }
    }

    /// The page's console lines (and Chromium's own messages, such as its CORS
    /// complaints), for failure messages.
    pub fn console(&self) -> String {
        let all = std::fs::read_to_string(self.profile.path.join("stderr.log")).unwrap_or_default();
        all.lines()
            .filter(|l| l.contains("CONSOLE") || l.contains("ERROR"))
            .filter(|l| !l.contains("dbus") && !l.contains("DBus"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + 3 * SEC;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                // Not reaped yet, so the group id is still this browser's.
                kill_group(self.child.id(), "KILL");
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // Helpers that outlived the browser process are still in its group.
        kill_group(self.child.id(), "KILL");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The text of `<pre id="result">` in a dumped DOM, unescaped (an HTML serializer
/// escapes `&`, `<`, `>` and U+00A0 in text).
pub fn result_text(dom: &str) -> Option<String> {
    let start = dom.find("<pre id=\"result\">")? + "<pre id=\"result\">".len();
    let end = start + dom[start..].find("</pre>")?;
    Some(
        dom[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&nbsp;", "\u{a0}")
            .replace("&amp;", "&"),
    )
}

/// A page's list of deliveries in its `#result`, `{"id": …, "data": …}` each, as
/// (id, data) pairs (example-client.html and cors-client.html write them so).
pub fn id_data_pairs(list: &serde_json::Value) -> Vec<(String, String)> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or_default().to_string(),
                e["data"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Asserts what example-client.html and cors-client.html both report: their
/// `EventSource` (`sse`) and their long-poll loop (`polled`) each got `want`, (id, data)
/// pairs, exactly: every message once, in order, with the published ids.
pub fn assert_sse_and_polled(result: &serde_json::Value, want: &[(String, String)]) {
    assert_eq!(
        id_data_pairs(&result["sse"]),
        want,
        "EventSource deliveries: {result}"
    );
    assert_eq!(
        id_data_pairs(&result["polled"]),
        want,
        "long-poll deliveries: {result}"
    );
}

/// Subscribers on `channel` as holdfast's admin listener counts them (0 if the channel
/// does not exist): how a test sees the page subscribe.
pub fn subscribers(admin: SocketAddr, channel: &str) -> u64 {
    let r = get(admin, &format!("/pub/{channel}"));
    match r.status {
        200 => r.json()["subscribers"].as_u64().unwrap_or(0),
        404 => 0,
        _ => panic!("GET /pub/{channel}: {}", r.brief()),
    }
}

// ---------------------------------------------------------------------------------
// The page's own origin: a static server on 127.0.0.2
// ---------------------------------------------------------------------------------

/// What a [`PageServer`] serves.
pub struct Page {
    /// Where the page is, such as `/cors-client.html`.
    pub path: &'static str,
    pub html: &'static [u8],
    /// Requests for a path starting with this are the page's gates: each waits until
    /// the test opens its path ([`PageServer::open`]), such as `/hold` or `/gate/load`.
    pub gates: &'static str,
    /// How long a gate waits at most when the test never opens it.
    pub gate_limit: Duration,
}

#[derive(Default)]
struct PageState {
    /// Names the page reported with `GET /mark/NAME`.
    marks: HashSet<String>,
    /// Gates the test opened (their paths): requests for them are answered.
    open: HashSet<String>,
    /// The server is going away: answer whatever waits.
    stopping: bool,
    /// Request lines seen, for failure messages.
    requests: Vec<String>,
}

/// Serves a [`Page`] on [`PAGE_HOST`], records `/mark/NAME`, and answers a gate once
/// [`PageServer::open`] has opened it. One thread per connection, each request answered
/// with `Connection: close`.
pub struct PageServer {
    addr: SocketAddr,
    state: Arc<(Mutex<PageState>, Condvar)>,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl PageServer {
    pub fn start(page: Page) -> PageServer {
        let listener = TcpListener::bind((PAGE_HOST, 0)).unwrap_or_else(|e| {
            panic!(
                "cannot listen on {PAGE_HOST} (the page needs a loopback origin other than \
                 holdfast's 127.0.0.1; Linux routes all of 127.0.0.0/8 to lo): {e}"
            )
        });
        let addr = listener.local_addr().expect("page server address");
        let state: Arc<(Mutex<PageState>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let page = Arc::new(page);
        let acceptor = {
            let state = state.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = state.clone();
                    let page = page.clone();
                    thread::spawn(move || serve_page_conn(conn, &page, &state));
                }
            })
        };
        PageServer {
            addr,
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.2:PORT`, exactly as Chromium sends it in `Origin`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The page has reported `GET /mark/{name}`.
    pub fn marked(&self, name: &str) -> bool {
        self.state
            .0
            .lock()
            .expect("page state")
            .marks
            .contains(name)
    }

    /// Lets the gate at `path` answer (now, and whenever the page asks again).
    pub fn open(&self, path: &str) {
        self.state
            .0
            .lock()
            .expect("page state")
            .open
            .insert(path.to_string());
        self.state.1.notify_all();
    }

    /// The request lines the page sent, for failure messages.
    pub fn requests(&self) -> String {
        self.state.0.lock().expect("page state").requests.join("\n")
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(mut s) = self.state.0.lock() {
            s.stopping = true;
        }
        self.state.1.notify_all();
        // Wakes the acceptor, which then sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, SEC);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn serve_page_conn(mut conn: TcpStream, page: &Page, state: &(Mutex<PageState>, Condvar)) {
    let _ = conn.set_read_timeout(Some(30 * SEC));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(k) => head.extend_from_slice(&buf[..k]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let line = head.lines().next().unwrap_or_default().to_string();
    let target = line.split(' ').nth(1).unwrap_or_default();
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_string();
    state.0.lock().expect("page state").requests.push(line);
    let (status, kind, body): (&str, &str, &[u8]) = if path == page.path {
        ("200 OK", "text/html; charset=utf-8", page.html)
    } else if let Some(name) = path.strip_prefix("/mark/") {
        state
            .0
            .lock()
            .expect("page state")
            .marks
            .insert(name.to_string());
        state.1.notify_all();
        ("204 No Content", "text/plain", b"")
    } else if path.starts_with(page.gates) {
        let mut s = state.0.lock().expect("page state");
        let deadline = Instant::now() + page.gate_limit;
        while !s.open.contains(&path) && !s.stopping && Instant::now() < deadline {
            s = state.1.wait_timeout(s, SEC).expect("page state").0;
        }
        ("204 No Content", "text/plain", b"")
    } else {
        ("404 Not Found", "text/plain", b"not found")
    };
    let mut answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    let _ = conn.write_all(&answer);
}

// ---------------------------------------------------------------------------------
// A run: holdfast, the page's server and Chromium
// ---------------------------------------------------------------------------------

/// One browser run: holdfast, the page's server and Chromium, with bounded waits that
/// name themselves and show every log on failure. The page reports `done` (with
/// `GET /mark/done`) once its `#result` is written, whether it succeeded or gave up.
pub struct Run<'a> {
    pub server: &'a Server,
    pub page: &'a PageServer,
    pub browser: Chromium,
    /// When Chromium was started.
    pub started: Instant,
}

impl<'a> Run<'a> {
    /// Starts Chromium on `url` (its profile directory named after `tag`).
    pub fn start(server: &'a Server, page: &'a PageServer, url: &str, tag: &str) -> Run<'a> {
        let browser = Chromium::dump_dom(url, tag);
        Run {
            server,
            page,
            browser,
            started: Instant::now(),
        }
    }

    /// The page's console, its requests and holdfast's output, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "\npage console:\n{}\npage server requests:\n{}\nholdfast:\n{}",
            self.browser.console(),
            self.page.requests(),
            self.server.output()
        )
    }

    /// Time since Chromium started, for progress lines.
    pub fn since(&self) -> String {
        format!("{:.1?}", self.started.elapsed())
    }

    /// Waits up to [`STEP`] for `cond`, or for the page to have given up (marked `done`
    /// early: the result it dumps says why); false in that case. Fails the test if
    /// neither happens.
    pub fn wait(&self, what: &str, mut cond: impl FnMut() -> bool) -> bool {
        let mut held = false;
        let over = wait_until(
            || {
                held = cond();
                held || self.page.marked("done")
            },
            STEP,
        );
        assert!(
            over,
            "waiting for {what} ({:?} in){}",
            self.started.elapsed(),
            self.context()
        );
        held
    }

    /// Opens the gate at `load` (the image holding the page's load event), waits up to
    /// `within` for Chromium to print the DOM and exit, and returns the page's
    /// `#result`, parsed.
    pub fn result(&mut self, load: &str, within: Duration) -> serde_json::Value {
        let done = self.started.elapsed();
        self.page.open(load);
        let dom = self
            .browser
            .wait_dom(within)
            .unwrap_or_else(|e| panic!("{e}{}", self.context()));
        eprintln!(
            "the page was done {done:.1?} after Chromium started, which exited after {:.1?} \
             ({} bytes of DOM)",
            self.started.elapsed(),
            dom.len()
        );
        let text = result_text(&dom)
            .unwrap_or_else(|| panic!("no #result in the DOM:\n{}{}", head(&dom), self.context()));
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "#result is not JSON ({e}): {}{}",
                head(&text),
                self.context()
            )
        })
    }
}

/// The first 3,000 bytes of `text` (cut at a character boundary), for failure messages.
fn head(text: &str) -> &str {
    let mut end = text.len().min(3000);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
