//! A real browser on the two JSON transports (docs/protocol.md, "The JSON envelope",
//! "WebSocket", "Newline-delimited JSON streams"): headless Chromium loads
//! `tests/assets/streams-client.html` from `http://127.0.0.2:PORT`, a tiny static
//! server (`common::chromium::PageServer`), and subscribes to one channel of holdfast
//! (`127.0.0.1:PORT`) twice at once: with a browser `WebSocket`, and with a `fetch()`
//! of `?stream=ndjson` read through its `ReadableStream` (split on `\n`, empty
//! heartbeat lines skipped, the rest `JSON.parse`d). Base64 payloads are decoded with
//! `atob`.
//!
//! Why another origin rather than nginx in front (as tests/browser.rs does): it is how a
//! web app on its own domain uses holdfast, and it makes the browser check both
//! transports' cross-origin rules as they are. holdfast runs with `--allow-origin` the
//! page's exact origin, which the `fetch()` needs (CORS headers on the stream's head)
//! and which makes holdfast check the WebSocket's `Origin` too (a browser opens a
//! WebSocket from any page), so both must match what Chromium sends. No nginx, so the
//! test needs nothing but Chromium.
//!
//! The test publishes 10,000 distinct messages back to back (pipelined `POST`s on four
//! keep-alive connections to the admin listener), in three phases:
//!
//! 1. 6,000 once both subscriptions are open (no cursor: only what comes next). After
//!    5,000 messages on a transport the page drops that subscription itself
//!    (`WebSocket.close(1000)`, `AbortController.abort()`), throwing away whatever
//!    holdfast had already sent it beyond the 5,000th;
//! 2. 2,000 once holdfast has seen both subscriptions go (`subscribers` 0), so they
//!    can only come from the buffer;
//! 3. once the page has subscribed again with `?since=` the last id it kept on each
//!    transport (the test opens a gate the page waits on), the last 2,000, live, while
//!    holdfast may still be replaying the rest to it.
//!
//! Each transport must end with all 10,000 once, in id order, with the published ids
//! and payloads byte for byte. Payloads: short ASCII, non-ASCII UTF-8 (four-byte
//! characters included), JSON's special characters and control bytes, frames on both
//! sides of WebSocket's 125/126-byte length encodings, twenty of 2-3 KB (16-bit
//! length) and four whose JSON is over 65,535 bytes (64-bit length), one empty, and
//! some that are not UTF-8 (which must come as `"encoding":"base64"`). The heartbeat
//! is 200 ms, so empty lines come between messages and the page waits for one before
//! anything is published.
//!
//! The page reports each step with `GET /mark/NAME` to its own server, waits for the
//! test on `GET /gate/NAME` (answered when the test says so), and writes everything it
//! kept into `#result`, which Chromium's `--dump-dom` prints once the page has loaded:
//! the page holds its load event on an image, `/gate/load`, until it is done.
//!
//! Chromium must be installed (`apt-get install chromium`; `.ci/run` does): without it
//! the test fails saying so.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::ops::Range;
use std::thread;
use std::time::{Duration, Instant};

use common::chromium::{subscribers, Page, PageServer, Run};
use common::http::{request_bytes, Conn};
use common::protocol::{get, id_num, publish_id, stat, stats};
use common::server::Server;
use common::timing::wait_until;

const SEC: Duration = Duration::from_secs(1);
const PAGE: &[u8] = include_bytes!("assets/streams-client.html");
const CHANNEL: &str = "streams.page";
/// Messages in all.
const N: usize = 10_000;
/// After this many messages the page drops each subscription.
const CUT: usize = 5_000;
/// Published while the first subscriptions are open, while none is, and after the page
/// has resumed.
const PHASES: [Range<usize>; 3] = [0..6_000, 6_000..8_000, 8_000..N];
/// Keep-alive connections the messages are pipelined on.
const PUBLISHERS: usize = 4;

// ---------------------------------------------------------------------------------
// The messages
// ---------------------------------------------------------------------------------

/// Message `i`'s payload: distinct (each starts with `m{i} `, but for the one empty
/// payload), and a mix of what the envelope and the frame codec must get right. The
/// envelope around a payload is about 60 bytes (16-digit id, this channel).
fn payload(i: usize) -> Vec<u8> {
    if i == 1 {
        return Vec::new();
    }
    let mut p = format!("m{i} ").into_bytes();
    if i % 2500 == 1700 {
        // `"` and `\` are escaped in JSON, so 34,000 bytes become 68,000: a frame with a
        // 64-bit length.
        p.extend_from_slice(&b"\"\\".repeat(17_000));
    } else if i % 500 == 250 {
        // 2-3 KB: a frame with a 16-bit length.
        p.extend_from_slice(&b"0123456789".repeat(200 + i / 100));
    } else if i % 331 == 13 {
        // Not UTF-8 (and a NUL and a line break): base64.
        p.extend_from_slice(&[0xff, 0xfe, 0x00, 0x80, (i % 256) as u8, b'\n', 0xc0]);
    } else if i % 331 == 14 {
        // A character cut short: not UTF-8 either.
        p.extend_from_slice(&"日".as_bytes()[..2]);
    } else if i % 7 == 3 {
        p.extend_from_slice("é ü ß — 日本語 🦀 ∑ Ω".as_bytes());
    } else if i % 11 == 5 {
        p.extend_from_slice(b"\"quoted\" back\\slash\r\nline\ttab \x01\x1f\x7f </pre> &amp; <b>");
    } else if i % 5 == 0 {
        // 56 to 152 bytes: frames on both sides of 125/126.
        p.resize(p.len() + 50 + i % 97, b'x');
    }
    p
}

/// Publishes the messages `indices` on [`PUBLISHERS`] keep-alive connections at once,
/// each pipelining its share (a writer thread sends every request while the reader
/// takes the answers). Returns (id, index) per message.
fn publish_pipelined(admin: SocketAddr, indices: Range<usize>) -> Vec<(u64, usize)> {
    let all: Vec<usize> = indices.collect();
    let per = all.len().div_ceil(PUBLISHERS);
    thread::scope(|scope| {
        let handles: Vec<_> = all
            .chunks(per)
            .map(|part| scope.spawn(move || publish_on_one_connection(admin, part)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("publisher thread"))
            .collect()
    })
}

fn publish_on_one_connection(admin: SocketAddr, part: &[usize]) -> Vec<(u64, usize)> {
    let mut conn = Conn::open(admin);
    let mut writer = conn.stream.try_clone().expect("clone the connection");
    let target = format!("/pub/{CHANNEL}");
    thread::scope(|scope| {
        let sending = scope.spawn(move || -> std::io::Result<()> {
            let mut out = Vec::new();
            for &i in part {
                out.extend_from_slice(&request_bytes("POST", &target, &[], Some(&payload(i))));
                if out.len() >= 64 * 1024 {
                    writer.write_all(&out)?;
                    out.clear();
                }
            }
            writer.write_all(&out)
        });
        let ids = part
            .iter()
            .map(|&i| {
                let r = conn
                    .read_response()
                    .unwrap_or_else(|e| panic!("publishing message {i}: {e}"));
                (id_num(&publish_id(&r)), i)
            })
            .collect();
        sending
            .join()
            .expect("writer thread")
            .expect("sending the publishes");
        ids
    })
}

/// `/stats` `websockets` and `ndjson_streams`.
fn open_streams(admin: SocketAddr) -> (Option<u64>, Option<u64>) {
    let v = stats(admin);
    (v["websockets"].as_u64(), v["ndjson_streams"].as_u64())
}

/// One message as a page reported it, or as it was published.
#[derive(Clone, PartialEq, Eq)]
struct Delivery {
    id: u64,
    /// Came as `"encoding":"base64"` (decoded by the page).
    base64: bool,
    payload: Vec<u8>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = String::from_utf8_lossy(&self.payload).into_owned();
        if text.chars().count() > 80 {
            text = text.chars().take(80).collect::<String>() + "…";
        }
        write!(
            f,
            "{} {}{} bytes {text:?}",
            self.id,
            if self.base64 { "base64 " } else { "" },
            self.payload.len()
        )
    }
}

/// The page's `got` list: `[id, data]`, data a string (text) or a list of bytes
/// (decoded base64).
fn deliveries(got: &serde_json::Value) -> Result<Vec<Delivery>, String> {
    let list = got.as_array().ok_or_else(|| format!("not a list: {got}"))?;
    list.iter()
        .map(|e| {
            let id = e[0]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad entry {e}"))?;
            match &e[1] {
                serde_json::Value::String(s) => Ok(Delivery {
                    id,
                    base64: false,
                    payload: s.as_bytes().to_vec(),
                }),
                serde_json::Value::Array(bytes) => Ok(Delivery {
                    id,
                    base64: true,
                    payload: bytes
                        .iter()
                        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                        .collect::<Option<Vec<u8>>>()
                        .ok_or_else(|| format!("bad bytes in {e}"))?,
                }),
                _ => Err(format!("bad entry {e}")),
            }
        })
        .collect()
}

/// Where `got` differs from `want`, said briefly; None if they are equal.
fn difference(got: &[Delivery], want: &[Delivery]) -> Option<String> {
    if got == want {
        return None;
    }
    let mut out = format!("{} messages, {} published", got.len(), want.len());
    let first = got.iter().zip(want).position(|(g, w)| g != w);
    let at = first.unwrap_or(got.len().min(want.len()));
    out += &format!("; first difference at message {at} (0-based):");
    for k in at.saturating_sub(2)..(at + 3).min(got.len().max(want.len())) {
        out += &format!(
            "\n  [{k}] got  {:?}\n  [{k}] want {:?}",
            got.get(k),
            want.get(k)
        );
    }
    let index: HashMap<u64, &Delivery> = want.iter().map(|d| (d.id, d)).collect();
    let mut seen = HashSet::new();
    let dups = got.iter().filter(|d| !seen.insert(d.id)).count();
    let missing = want.iter().filter(|d| !seen.contains(&d.id)).count();
    let unknown = got.iter().filter(|d| !index.contains_key(&d.id)).count();
    let wrong = got
        .iter()
        .filter(|d| index.get(&d.id).is_some_and(|w| *w != *d))
        .count();
    out += &format!(
        "\n  {missing} missing, {dups} duplicates, {unknown} ids never published, \
         {wrong} with the wrong payload or encoding"
    );
    if missing > 0 {
        // Where each missing one sat: after which message the page did get.
        let at = |d: &Delivery| want.iter().position(|w| w.id == d.id).unwrap_or(0);
        let list: Vec<String> = want
            .iter()
            .filter(|d| !seen.contains(&d.id))
            .take(20)
            .map(|d| format!("[{}] {d:?}", at(d)))
            .collect();
        out += &format!("\n  missing (first 20):\n    {}", list.join("\n    "));
    }
    Some(out)
}

// ---------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------

/// Serves the page at `/streams-client.html`; its gates are `/gate/NAME`, `/gate/load`
/// the image that holds its load event.
fn page_server() -> PageServer {
    PageServer::start(Page {
        path: "/streams-client.html",
        html: PAGE,
        gates: "/gate/",
        gate_limit: 180 * SEC,
    })
}

/// Lets the page finish (asking it to, if it has not within `within`) and returns its
/// `#result`.
fn finish(run: &mut Run, within: Duration) -> serde_json::Value {
    if !wait_until(|| run.page.marked("done"), within) {
        eprintln!("the page is not done after {within:?}: asking it to report");
        run.page.open("/gate/finish");
        run.page.open("/gate/reopen");
        assert!(
            wait_until(|| run.page.marked("done"), 20 * SEC),
            "the page did not finish when asked{}",
            run.context()
        );
    }
    run.result("/gate/load", 30 * SEC)
}

#[test]
fn chromium_gets_every_message_once_in_order_over_websocket_and_ndjson_and_resumes() {
    let page = page_server();
    let origin = page.origin();
    let s = Server::start(&[
        // Holds all 10,000: the resume gap is covered whatever its size.
        "--buffer-messages",
        "20000",
        // Heartbeats (empty lines, pings) come between messages.
        "--sse-heartbeat",
        "200ms",
        // Chromium reads a stream no faster than the page's script takes it; a busy
        // machine must not get the streams cut for a slow reader (not what this tests).
        "--stream-max-backlog",
        "64MiB",
        "--allow-origin",
        &origin,
    ]);
    let url = format!(
        "{origin}/streams-client.html#hf={}&ch={CHANNEL}&n={N}&cut={CUT}",
        s.public
    );
    let mut run = Run::start(&s, &page, &url, "chromium-streams");
    let mut published: Vec<(u64, usize)> = Vec::new();
    let mut streams_seen = Vec::new();
    'script: {
        // 1. Both subscriptions open (and a heartbeat seen): 6,000 back to back. The page
        //    drops both after its 5,000th message.
        if !run.wait("the page to subscribe twice (WebSocket and ndjson)", || {
            page.marked("open") && subscribers(s.admin, CHANNEL) == 2
        }) {
            break 'script;
        }
        streams_seen.push(("open", open_streams(s.admin)));
        let t = Instant::now();
        published.extend(publish_pipelined(s.admin, PHASES[0].clone()));
        eprintln!(
            "{}: published {} in {:.2?}",
            run.since(),
            PHASES[0].len(),
            t.elapsed()
        );

        // 2. Both gone, as holdfast sees it: 2,000 more, which only the buffer can hold.
        if !run.wait("the page to drop both subscriptions", || {
            page.marked("closed") && subscribers(s.admin, CHANNEL) == 0
        }) {
            break 'script;
        }
        streams_seen.push(("closed", open_streams(s.admin)));
        let t = Instant::now();
        published.extend(publish_pipelined(s.admin, PHASES[1].clone()));
        eprintln!(
            "{}: both dropped; published {} in {:.2?}",
            run.since(),
            PHASES[1].len(),
            t.elapsed()
        );
        page.open("/gate/reopen");

        // 3. Both back with ?since=: the last 2,000 live, while holdfast may still be
        //    replaying the 3,000 the page has not kept yet.
        if !run.wait("the page to subscribe again with ?since=", || {
            page.marked("reopened") && subscribers(s.admin, CHANNEL) == 2
        }) {
            break 'script;
        }
        streams_seen.push(("reopened", open_streams(s.admin)));
        let t = Instant::now();
        published.extend(publish_pipelined(s.admin, PHASES[2].clone()));
        eprintln!(
            "{}: both back; published {} in {:.2?}",
            run.since(),
            PHASES[2].len(),
            t.elapsed()
        );
    }
    let info = get(s.admin, &format!("/pub/{CHANNEL}"));
    // Everything is published: the page has it all within a second or two, unless some
    // message is missing (then it never counts N, and is asked for what it has).
    let result = finish(&mut run, 30 * SEC);
    let context = run.context();

    // What was published, in id order: what each transport must have, exactly.
    published.sort_unstable();
    let want: Vec<Delivery> = published
        .iter()
        .map(|&(id, i)| {
            let payload = payload(i);
            Delivery {
                id,
                base64: std::str::from_utf8(&payload).is_err(),
                payload,
            }
        })
        .collect();
    let summary = |t: &str| {
        let mut v = result[t].clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("got");
        }
        v
    };
    let mut differences = String::new();
    let mut got = HashMap::new();
    for t in ["websocket", "ndjson"] {
        match deliveries(&result[t]["got"]) {
            Ok(list) => {
                if let Some(d) = difference(&list, &want) {
                    differences += &format!("\n{t}: {d}");
                }
                got.insert(t, list);
            }
            Err(e) => differences += &format!("\n{t}: {e}"),
        }
    }
    let report = format!(
        "\npage: failed {}, websocket {}, ndjson {}{differences}\n\
         /stats (websockets, ndjson_streams): {streams_seen:?}{context}",
        result["failed"],
        summary("websocket"),
        summary("ndjson")
    );
    eprintln!(
        "page: websocket {}\npage: ndjson {}",
        summary("websocket"),
        summary("ndjson")
    );
    assert!(result["failed"].is_null(), "the page failed:{report}");
    assert_eq!(want.len(), N, "not everything was published:{report}");
    assert!(differences.is_empty(), "deliveries differ:{report}");

    // Each transport dropped its first subscription right after message CUT and resumed
    // from its id.
    let cut_id = want[CUT - 1].id.to_string();
    for t in ["websocket", "ndjson"] {
        assert_eq!(result[t]["cutAfter"], cut_id.as_str(), "{t}:{report}");
        assert_eq!(result[t]["opens"], 2, "{t}:{report}");
        assert_eq!(
            result[t]["events"].as_array().map(Vec::len),
            Some(0),
            "{t}: signals:{report}"
        );
    }
    // The page's close(1000) was answered with a close frame carrying the same code.
    let close = &result["websocket"]["closes"][0];
    assert_eq!(
        (close["code"].as_u64(), close["wasClean"].as_bool()),
        (Some(1000), Some(true)),
        "the WebSocket's first close:{report}"
    );
    // Two stream answers with the ndjson head, and heartbeat lines skipped.
    assert_eq!(result["ndjson"]["statuses"], serde_json::json!([200, 200]));
    for ct in result["ndjson"]["contentTypes"]
        .as_array()
        .expect("contentTypes")
    {
        assert!(
            ct.as_str()
                .is_some_and(|c| c.starts_with("application/x-ndjson")),
            "ndjson Content-Type {ct}:{report}"
        );
    }
    assert!(
        result["ndjson"]["heartbeats"].as_u64().unwrap_or(0) >= 1,
        "no heartbeat line on the ndjson stream:{report}"
    );
    // holdfast's own account: the subscriptions it counted were these streams, and it
    // still holds every message (so nothing was lost for it to report).
    assert_eq!(
        streams_seen,
        vec![
            ("open", (Some(1), Some(1))),
            ("closed", (Some(0), Some(0))),
            ("reopened", (Some(1), Some(1))),
        ],
        "/stats websockets and ndjson_streams at each step:{report}"
    );
    assert_eq!(info.status, 200, "{}", info.brief());
    let info = info.json();
    assert_eq!(info["buffered"], N, "{info}");
    assert_eq!(info["evicted_max"], "0", "{info}");
    // Each message was written to each transport at least once; what is over 2N was
    // written to a first subscription after its CUT-th message (thrown away by the page,
    // or still in the socket when it closed) and written again after the resume.
    let delivered = stat(s.admin, "delivered");
    assert!(delivered >= 2 * N as u64, "delivered {delivered}:{report}");
    let base64 = want.iter().filter(|d| d.base64).count();
    eprintln!(
        "every one of {N} messages ({base64} base64) once and in order on both transports; \
         written twice (before the cut and after the resume): {}; lines the ndjson reader \
         had in hand at the cut: {}",
        delivered - 2 * N as u64,
        result["ndjson"]["discarded"]
    );
}
