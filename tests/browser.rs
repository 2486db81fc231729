//! A real browser through the shipped nginx config: headless Chromium loads
//! `tests/assets/example-client.html` from nginx, subscribes with `EventSource` and a
//! `fetch()` long-poll loop, and this test publishes through the admin listener in four
//! batches while Chromium runs:
//!
//! 1. live, to both;
//! 2. right after deleting the channel, which ends the stream: EventSource reconnects
//!    by itself (after the stream's `retry: 2000`) sending `Last-Event-ID`, and the
//!    batch, published before it is back, must come from the buffer;
//! 3. after the page closed its stream itself: it reopens with `?since=` its last id
//!    once its long-poll loop has the batch, so again from the buffer;
//! 4. live, to the reopened stream.
//!
//! The page writes every delivery it saw into `#result`, which Chromium's `--dump-dom`
//! prints once the page has loaded (the page holds its load event until told). Both
//! paths must have every message exactly once, in order, with the published ids.
//!
//! Chromium must be installed (`apt-get install chromium`; `.ci/run` does), and so must
//! nginx: without either the test fails saying so.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::nginx::{Nginx, TempDir};
use common::process::kill_group;
use common::protocol::{get, publish, request, stat};
use common::server::Server;
use common::timing::wait_until;

const SEC: Duration = Duration::from_secs(1);
const PAGE: &[u8] = include_bytes!("assets/example-client.html");
const CHANNEL: &str = "browser";
/// Messages in all, four batches.
const N: usize = 40;
const BATCH: usize = N / 4;

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
        let profile = TempDir::new("chromium");
        let log = std::fs::File::create(profile.path.join("stderr.log")).expect("log file");
        let mut child = Command::new(&bin)
            .args([
                // What the sandbox needs (root, no network): see the env notes.
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

    /// The page's console lines (and Chromium's own messages), for failure messages.
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

/// Subscribers on `channel` (0 if the channel does not exist).
fn subscribers(admin: std::net::SocketAddr, channel: &str) -> u64 {
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

#[test]
fn chromium_receives_every_message_once_in_order_over_sse_and_long_poll() {
    let s = Server::start(&["--buffer-messages", "64"]);
    let n = Nginx::start(s.public, &[("example-client.html", PAGE)]);
    let url = format!("http://{}/example-client.html?ch={CHANNEL}&n={N}", n.addr);
    let mut browser = Chromium::dump_dom(&url);
    let context = |browser: &Chromium| {
        format!(
            "\npage console:\n{}\nnginx:\n{}\nserver:\n{}",
            browser.console(),
            n.logs(),
            s.output()
        )
    };
    // Every wait is bounded; a missed step names itself and shows the page's log.
    let wait = |browser: &Chromium, what: &str, cond: &mut dyn FnMut() -> bool| {
        assert!(
            wait_until(cond, 30 * SEC),
            "waiting for {what}{}",
            context(browser)
        );
    };
    let checkpoint = |browser: &Chromium, name: &str| {
        let ch = format!("{CHANNEL}.{name}");
        wait(
            browser,
            &format!("the page's checkpoint {name}"),
            &mut || subscribers(s.admin, &ch) == 1,
        );
    };
    let answer = |name: &str| {
        publish(s.admin, &format!("{CHANNEL}.{name}"), "go");
    };
    let mut published = Vec::new();
    let mut publish_batch = |k: usize| {
        for i in k * BATCH..(k + 1) * BATCH {
            published.push(publish(s.admin, CHANNEL, format!("m{i}")));
        }
    };

    // 1. Live, once the stream and the long-poll are both subscribed.
    wait(&browser, "the page to subscribe twice", &mut || {
        subscribers(s.admin, CHANNEL) == 2
    });
    publish_batch(0);
    checkpoint(&browser, "a");

    // 2. Delete the channel: the stream ends, EventSource waits 2 s to reconnect.
    let r = request(s.admin, "DELETE", &format!("/pub/{CHANNEL}"), &[], None);
    assert_eq!(r.status, 204, "{}", r.brief());
    wait(&browser, "the stream to end after DELETE", &mut || {
        stat(s.admin, "sse_streams") == 0
    });
    publish_batch(1);
    assert_eq!(
        stat(s.admin, "sse_streams"),
        0,
        "EventSource was back before batch 2 was published, so it did not resume from \
         the buffer{}",
        context(&browser)
    );
    answer("a");

    // 3. The page closed its stream itself.
    checkpoint(&browser, "b");
    wait(&browser, "the page's stream to close", &mut || {
        stat(s.admin, "sse_streams") == 0
    });
    publish_batch(2);
    assert_eq!(stat(s.admin, "sse_streams"), 0, "{}", context(&browser));
    answer("b");

    // 4. Live on the reopened stream.
    checkpoint(&browser, "c");
    publish_batch(3);
    answer("c");

    // The page has everything: let its load event fire, so Chromium prints the DOM.
    checkpoint(&browser, "end");
    answer("done");
    answer("end");
    let dom = browser
        .wait_dom(20 * SEC)
        .unwrap_or_else(|e| panic!("{e}{}", context(&browser)));
    let text = result_text(&dom)
        .unwrap_or_else(|| panic!("no #result in the DOM:\n{dom}{}", context(&browser)));
    let result: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("#result is not JSON ({e}): {text}{}", context(&browser)));
    assert!(result["error"].is_null(), "page failed: {result}");

    let want: Vec<(String, String)> = published
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("m{i}")))
        .collect();
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
    // Exactly once, in order, on both paths.
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
        assert!(p["lost"].is_null(), "a gap was reported: {p}");
    }

    // Which connection brought what: batch 1 on the first connection, batch 2 on the
    // one EventSource opened itself (same object, second open), batches 3 and 4 on the
    // stream the page reopened.
    let sse = result["sse"].as_array().expect("sse");
    for (i, e) in sse.iter().enumerate() {
        let (stream, conn) = match i / BATCH {
            0 => ("A", 1),
            1 => ("A", 2),
            _ => ("B", 1),
        };
        assert_eq!(
            (e["stream"].as_str(), e["conn"].as_u64()),
            (Some(stream), Some(conn)),
            "event {i}: {e}; all: {result}"
        );
    }
    assert_eq!(result["opens"]["A"], 2, "{result}");
    assert_eq!(result["opens"]["B"], 1, "{result}");
    // The only named event: the deletion that ended the first connection.
    let other = result["sseOther"].as_array().expect("sseOther");
    assert_eq!(other.len(), 1, "{result}");
    assert_eq!(other[0]["event"], "deleted", "{result}");
    assert_eq!(other[0]["data"], CHANNEL, "{result}");
    assert_eq!(result["pollErrors"], 0, "{result}");
}
