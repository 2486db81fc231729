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

use std::time::Duration;

use common::chromium::{assert_sse_and_polled, result_text, subscribers, Chromium};
use common::nginx::Nginx;
use common::protocol::{publish, request, stat};
use common::server::Server;
use common::timing::wait_until;

const SEC: Duration = Duration::from_secs(1);
const PAGE: &[u8] = include_bytes!("assets/example-client.html");
const CHANNEL: &str = "browser";
/// Messages in all, four batches.
const N: usize = 40;
const BATCH: usize = N / 4;

#[test]
fn chromium_receives_every_message_once_in_order_over_sse_and_long_poll() {
    let s = Server::start(&["--buffer-messages", "64"]);
    let n = Nginx::start(s.public, &[("example-client.html", PAGE)]);
    let url = format!("http://{}/example-client.html?ch={CHANNEL}&n={N}", n.addr);
    let mut browser = Chromium::dump_dom(&url, "chromium");
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
    // Exactly once, in order, on both paths.
    assert_sse_and_polled(&result, &want);
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
