//! The JSON envelope shared by the WebSocket and newline-delimited-JSON transports: one
//! object per message or signal, so one client parser serves both.
//!
//! ```text
//! {"id":"1795290676682346","channel":"news","data":"hello"}
//! {"id":"1795290676682347","channel":"news","data":"AAH/","encoding":"base64"}
//! {"event":"lost","next":"1795290676682350"}
//! {"event":"deleted","channel":"news"}
//! {"event":"expired"}
//! {"event":"shutdown"}
//! ```
//!
//! Ids are strings: they go up to 2^64 − 1, past what a JavaScript number holds exactly.
//! A payload that is UTF-8 is the `data` string as is (JSON-escaped); any other payload
//! is base64 (standard alphabet, padded) with `"encoding":"base64"`. Objects never
//! contain a raw line break, so a newline ends each one in the ndjson transport.

use base64::Engine;

use super::Event;
use crate::http::respond::json_str;

/// One message.
pub fn message(out: &mut Vec<u8>, ev: &Event<'_>) {
    out.extend_from_slice(b"{\"id\":\"");
    push_u64(out, ev.id);
    out.extend_from_slice(b"\",\"channel\":");
    json_str(out, ev.channel);
    out.extend_from_slice(b",\"data\":");
    match std::str::from_utf8(ev.payload) {
        Ok(text) => {
            json_str(out, text);
            out.push(b'}');
        }
        Err(_) => {
            out.push(b'"');
            let start = out.len();
            let n = base64::encoded_len(ev.payload.len(), true).unwrap_or(0);
            out.resize(start + n, 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(ev.payload, &mut out[start..])
                .unwrap_or(0);
            out.truncate(start + written);
            out.extend_from_slice(b"\",\"encoding\":\"base64\"}");
        }
    }
}

/// The gap signal: messages the subscriber should have had before `next_id` are gone.
pub fn lost(out: &mut Vec<u8>, next_id: u64) {
    out.extend_from_slice(b"{\"event\":\"lost\",\"next\":\"");
    push_u64(out, next_id);
    out.extend_from_slice(b"\"}");
}

/// `channel` was deleted: the stream ends.
pub fn deleted(out: &mut Vec<u8>, channel: &str) {
    out.extend_from_slice(b"{\"event\":\"deleted\",\"channel\":");
    json_str(out, channel);
    out.push(b'}');
}

/// The subscriber token expired: the stream ends.
pub const EXPIRED: &[u8] = b"{\"event\":\"expired\"}";

/// The server is shutting down: the stream ends; reconnect with the cursor.
pub const SHUTDOWN: &[u8] = b"{\"event\":\"shutdown\"}";

fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let len = crate::http::respond::fmt_u64(n, &mut buf);
    out.extend_from_slice(&buf[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(payload: &[u8]) -> serde_json::Value {
        let mut out = vec![];
        message(
            &mut out,
            &Event {
                id: u64::MAX,
                channel: "a.b",
                payload,
            },
        );
        assert!(!out.contains(&b'\n') && !out.contains(&b'\r'), "{out:?}");
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn messages_are_json_objects_with_string_ids() {
        let v = render(b"line one\r\nline \"two\"\t\x01");
        assert_eq!(v["id"], "18446744073709551615");
        assert_eq!(v["channel"], "a.b");
        assert_eq!(v["data"], "line one\r\nline \"two\"\t\x01");
        assert!(v.get("encoding").is_none());
        let v = render(b"\x00\x01\xff");
        assert_eq!(v["data"], "AAH/");
        assert_eq!(v["encoding"], "base64");
        assert_eq!(render(b"")["data"], "");
    }

    #[test]
    fn signals_are_json_objects_with_an_event() {
        let mut out = vec![];
        lost(&mut out, 7);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["next"].as_str()),
            (Some("lost"), Some("7"))
        );
        out.clear();
        deleted(&mut out, "news");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["channel"], "news");
        for (bytes, event) in [(EXPIRED, "expired"), (SHUTDOWN, "shutdown")] {
            let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            assert_eq!(v["event"], event);
        }
    }
}
