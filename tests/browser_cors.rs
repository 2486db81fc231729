//! A real browser on another origin (docs/protocol.md, "Browsers on other origins
//! (CORS)" and "Private channels: subscriber tokens"): headless Chromium loads
//! `tests/assets/cors-client.html` from `http://127.0.0.2:PORT`, a tiny static server
//! in this test, while holdfast's public listener is `http://127.0.0.1:PORT` — another
//! origin, so every request the page makes to holdfast is cross-origin and the browser
//! enforces CORS on it. holdfast runs with `--subscribe-key` (an HMAC secret); the test
//! mints a JWT for the channel and hands it to the page in the URL's fragment.
//!
//! - Allowed (`--allow-origin http://127.0.0.2:PORT`, the page's exact origin): the page
//!   subscribes with an `EventSource` (token in `?token=`) and a `fetch()` long-poll
//!   loop (token in `Authorization: Bearer`, which makes Chromium preflight every poll)
//!   that resumes from the `Message-Id` header it reads, which it can only if holdfast
//!   exposes it. The test publishes in batches; both paths must report every message
//!   once, in order, with the published ids. Before subscribing, the page checks that a
//!   bad token's `401` and an ungranted channel's `403` are readable (they carry the
//!   CORS headers too), and that a header the preflight does not allow is refused by
//!   the browser (so it did preflight).
//! - Refused (holdfast allows only `http://127.0.0.3:1`): a preflighted fetch and a
//!   simple one both reject with a `TypeError`, and an `EventSource` errors without
//!   delivering the message holdfast did send it (its `delivered` counter shows the
//!   answers went out: the browser withheld them).
//!
//! The page writes its outcome into `#result`, which Chromium's `--dump-dom` prints
//! once the page has loaded; the page holds its load event on an image its server
//! answers only once the page has said it is done.
//!
//! Chromium must be installed (`apt-get install chromium`; `.ci/run` does): without it
//! the test fails saying so. No Chromium flag beyond tests/browser.rs's is needed (and
//! none that weakens CORS): 127.0.0.2 and 127.0.0.1 are both loopback, so Private
//! Network Access (which guards requests from a less private address space to a more
//! private one) does not apply, and a plain-http page on an IP address loads as is.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::nginx::TempDir;
use common::process::kill_group;
use common::protocol::{get, publish, stat};
use common::server::Server;
use common::timing::wait_until;

const SEC: Duration = Duration::from_secs(1);
const PAGE: &[u8] = include_bytes!("assets/cors-client.html");
const CHANNEL: &str = "cors.page";
/// Messages in all, published in four batches.
const N: usize = 40;
const BATCH: usize = N / 4;
/// Where the page is served from: a loopback address other than holdfast's 127.0.0.1,
/// so a different origin (origins compare scheme, host and port).
const PAGE_HOST: &str = "127.0.0.2";
/// An origin that is not the page's, for the holdfast that must refuse it.
const OTHER_ORIGIN: &str = "http://127.0.0.3:1";
/// The HMAC secret in `--subscribe-key` (at least 32 bytes).
const SECRET: &str = "browser_cors test secret, at least 32 bytes long";

// ---------------------------------------------------------------------------------
// Chromium (as in tests/browser.rs)
// ---------------------------------------------------------------------------------

/// Chromium: `$CHROMIUM` if set, else `/usr/bin/chromium` or `chromium` on PATH.
fn chromium_bin() -> PathBuf {
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
struct Chromium {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    reader: Option<thread::JoinHandle<()>>,
    profile: TempDir,
}

impl Chromium {
    fn dump_dom(url: &str) -> Chromium {
        let bin = chromium_bin();
        let profile = TempDir::new("chromium-cors");
        let log = std::fs::File::create(profile.path.join("stderr.log")).expect("log file");
        let mut child = Command::new(&bin)
            .args([
                // The same flags as tests/browser.rs (what the sandbox needs: root, no
                // network); nothing CORS-specific. Chromium's CORS checks are on by
                // default and must stay so: no --disable-web-security.
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
            let mut buf = [0u8; 8192];
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
    fn wait_dom(&mut self, within: Duration) -> Result<String, String> {
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
    fn console(&self) -> String {
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

// ---------------------------------------------------------------------------------
// The page's own origin: a static server on 127.0.0.2
// ---------------------------------------------------------------------------------

#[derive(Default)]
struct PageState {
    /// Names the page reported with `GET /mark/NAME`.
    marks: HashSet<String>,
    /// `/hold` may be answered.
    released: bool,
    /// The server is going away: answer whatever waits.
    stopping: bool,
    /// Request lines seen, for failure messages.
    requests: Vec<String>,
}

/// Serves the page at `/cors-client.html`, records `/mark/NAME`, and answers `/hold`
/// (the image that holds the page's load event) once [`PageServer::release`] is
/// called. One thread per connection, each request answered with `Connection: close`.
struct PageServer {
    addr: SocketAddr,
    state: Arc<(Mutex<PageState>, Condvar)>,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl PageServer {
    fn start() -> PageServer {
        let listener = TcpListener::bind((PAGE_HOST, 0)).unwrap_or_else(|e| {
            panic!(
                "cannot listen on {PAGE_HOST} (the page needs a loopback origin other than \
                 holdfast's 127.0.0.1; Linux routes all of 127.0.0.0/8 to lo): {e}"
            )
        });
        let addr = listener.local_addr().expect("page server address");
        let state: Arc<(Mutex<PageState>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
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
                    thread::spawn(move || serve_page_conn(conn, &state));
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
    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn marked(&self, name: &str) -> bool {
        self.state
            .0
            .lock()
            .expect("page state")
            .marks
            .contains(name)
    }

    /// Lets `/hold` answer, so the page's load event fires and Chromium dumps the DOM.
    fn release(&self) {
        self.state.0.lock().expect("page state").released = true;
        self.state.1.notify_all();
    }

    fn requests(&self) -> String {
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

fn serve_page_conn(mut conn: TcpStream, state: &(Mutex<PageState>, Condvar)) {
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
    let (status, kind, body): (&str, &str, &[u8]) = if path == "/cors-client.html" {
        ("200 OK", "text/html; charset=utf-8", PAGE)
    } else if let Some(name) = path.strip_prefix("/mark/") {
        state
            .0
            .lock()
            .expect("page state")
            .marks
            .insert(name.to_string());
        state.1.notify_all();
        ("204 No Content", "text/plain", b"")
    } else if path == "/hold" {
        let mut s = state.0.lock().expect("page state");
        let deadline = Instant::now() + 120 * SEC;
        while !s.released && !s.stopping && Instant::now() < deadline {
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
// The test's side
// ---------------------------------------------------------------------------------

/// The key file and a token granting [`CHANNEL`] for two minutes.
fn key_and_token(dir: &TempDir) -> (String, String) {
    let key = dir.path.join("subscribe.key");
    std::fs::write(&key, SECRET).expect("write the key");
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 120;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "browser", "channels": [CHANNEL], "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("HMAC key"),
    )
    .expect("sign the token");
    (key.display().to_string(), token)
}

/// The page's URL, its parameters in the fragment.
fn page_url(page: &PageServer, mode: &str, holdfast: SocketAddr, token: &str) -> String {
    format!(
        "{}/cors-client.html#mode={mode}&hf=http://{holdfast}&ch={CHANNEL}&n={N}\
         &batch={BATCH}&token={token}",
        page.origin()
    )
}

/// Subscribers on `channel` (0 if the channel does not exist).
fn subscribers(admin: SocketAddr, channel: &str) -> u64 {
    let r = get(admin, &format!("/pub/{channel}"));
    match r.status {
        200 => r.json()["subscribers"].as_u64().unwrap_or(0),
        404 => 0,
        _ => panic!("GET /pub/{channel}: {}", r.brief()),
    }
}

/// The text of `<pre id="result">` in a dumped DOM, unescaped.
fn result_text(dom: &str) -> Option<String> {
    let start = dom.find("<pre id=\"result\">")? + "<pre id=\"result\">".len();
    let end = start + dom[start..].find("</pre>")?;
    Some(
        dom[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&amp;", "&"),
    )
}

/// One browser run: the page, holdfast and Chromium, with bounded waits that name
/// themselves and show every log on failure.
struct Run<'a> {
    server: &'a Server,
    page: &'a PageServer,
    browser: Chromium,
    started: Instant,
}

impl Run<'_> {
    fn context(&self) -> String {
        format!(
            "\npage console:\n{}\npage server requests:\n{}\nholdfast:\n{}",
            self.browser.console(),
            self.page.requests(),
            self.server.output()
        )
    }

    /// Waits for `cond`, or for the page to have given up (marked `done` early), in
    /// which case the result it dumps says why. A step takes well under a second; the
    /// bound is generous for a first Chromium start on a busy machine.
    fn wait(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let held = wait_until(|| cond() || self.page.marked("done"), 60 * SEC);
        assert!(held, "waiting for {what}{}", self.context());
    }

    /// Lets the page load and returns its `#result`.
    fn finish(mut self) -> serde_json::Value {
        self.wait("the page to finish", || false);
        let done = self.started.elapsed();
        self.page.release();
        let dom = self
            .browser
            .wait_dom(20 * SEC)
            .unwrap_or_else(|e| panic!("{e}{}", self.context()));
        eprintln!(
            "the page was done {done:?} after Chromium started, which exited after {:?}",
            self.started.elapsed()
        );
        let text = result_text(&dom)
            .unwrap_or_else(|| panic!("no #result in the DOM:\n{dom}{}", self.context()));
        let result: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("#result is not JSON ({e}): {text}{}", self.context()));
        eprintln!("page result: {result}");
        assert!(
            result["error"].is_null(),
            "page failed: {result}{}",
            self.context()
        );
        result
    }
}

#[test]
fn a_page_on_an_allowed_origin_subscribes_cross_origin_with_a_token() {
    let dir = TempDir::new("browser-cors");
    let (key, token) = key_and_token(&dir);
    let page = PageServer::start();
    let origin = page.origin();
    let s = Server::start(&[
        "--buffer-messages",
        "64",
        "--subscribe-key",
        &key,
        "--allow-origin",
        &origin,
    ]);
    let url = page_url(&page, "allowed", s.public, &token);
    let run = Run {
        server: &s,
        page: &page,
        browser: Chromium::dump_dom(&url),
        started: Instant::now(),
    };

    // Batch 1 once the stream and the long-poll are both waiting; each further batch
    // once the page has the previous one on both paths.
    let mut published = Vec::new();
    for k in 0..N / BATCH {
        if k == 0 {
            run.wait("the page to subscribe twice (stream and long-poll)", || {
                subscribers(s.admin, CHANNEL) == 2
            });
        } else {
            run.wait(&format!("the page to have batch {k}"), || {
                page.marked(&format!("got{k}"))
            });
        }
        if page.marked("done") {
            break;
        }
        for i in k * BATCH..(k + 1) * BATCH {
            published.push(publish(s.admin, CHANNEL, format!("m{i}")));
        }
    }
    let refused_before_end = stat(s.admin, "token_refused");
    let result = run.finish();

    // The refusals were readable: status and body (one line) reached the page.
    let body = |what: &str| result[what]["body"].as_str().unwrap_or_default().trim_end();
    assert_eq!(result["badToken"]["status"], 401, "{result}");
    assert_eq!(body("badToken"), "malformed token", "{result}");
    assert_eq!(result["notGranted"]["status"], 403, "{result}");
    assert_eq!(
        body("notGranted"),
        format!("token does not grant channel {CHANNEL}x"),
        "{result}"
    );
    assert_eq!(refused_before_end, 2, "holdfast's token_refused: {result}");
    // A request header the preflight's answer does not list: Chromium did preflight,
    // and refused to send the request.
    let unlisted = result["unlistedHeader"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        unlisted.starts_with("TypeError"),
        "a fetch with X-Probe was not refused by the browser: {result}"
    );

    assert!(result["failed"].is_null(), "page failed: {result}");
    let want: Vec<(String, String)> = published
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("m{i}")))
        .collect();
    assert_eq!(want.len(), N);
    let pairs = |list: &serde_json::Value| -> Vec<(String, String)> {
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
    };
    // Exactly once, in order, with the published ids, on both paths. The long-poll
    // loop's ids are the Message-Id headers it read (and resumed from).
    assert_eq!(
        pairs(&result["sse"]),
        want,
        "EventSource deliveries: {result}"
    );
    assert_eq!(
        pairs(&result["polled"]),
        want,
        "long-poll deliveries: {result}"
    );
    for p in result["polled"].as_array().expect("polled") {
        assert_eq!(p["channel"], CHANNEL, "Channel header not readable: {p}");
    }
    assert_eq!(result["sseErrors"], 0, "{result}");
}

#[test]
fn a_page_on_an_origin_not_allowed_gets_nothing() {
    let dir = TempDir::new("browser-cors");
    let (key, token) = key_and_token(&dir);
    let page = PageServer::start();
    // Allows one origin, not the page's.
    let s = Server::start(&["--subscribe-key", &key, "--allow-origin", OTHER_ORIGIN]);
    // What the page must not get to read, though holdfast will send it.
    let secret_id = publish(s.admin, CHANNEL, "secret");
    assert_eq!(stat(s.admin, "delivered"), 0);
    let url = page_url(&page, "refused", s.public, &token);
    let run = Run {
        server: &s,
        page: &page,
        browser: Chromium::dump_dom(&url),
        started: Instant::now(),
    };
    let result = run.finish();

    // The preflight was answered 403 without CORS headers: no GET, a TypeError.
    let err = |what: &str| {
        result[what]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        err("preflighted").starts_with("TypeError"),
        "a preflighted fetch from an origin not allowed did not reject: {result}"
    );
    // The simple request was answered (with the message), but without CORS headers the
    // browser rejects it all the same.
    assert!(
        err("simple").starts_with("TypeError"),
        "a simple fetch from an origin not allowed did not reject: {result}"
    );
    // The stream failed without an event, though it opened with the buffered message.
    assert_eq!(
        result["sse"].as_array().map(Vec::len),
        Some(0),
        "EventSource delivered across origins: {result}"
    );
    assert!(
        result["sseErrors"].as_u64().unwrap_or(0) >= 1,
        "EventSource did not error: {result}"
    );
    // holdfast did send the message (the simple poll's 200 and the stream's first
    // event): it was the browser that kept it from the page, as the protocol expects
    // ("answered as usual, without CORS headers").
    let delivered = stat(s.admin, "delivered");
    assert!(
        delivered >= 2,
        "holdfast delivered {delivered} times (message {secret_id}); expected the simple \
         poll's answer and the stream's event: {result}"
    );
    assert_eq!(stat(s.admin, "token_refused"), 0, "{result}");
}
