//! Server-wide counters and their two renderings: `/stats` (JSON) and `/metrics`
//! (Prometheus text). Workers bump relaxed atomics; a scrape reads them plus the store's
//! totals and this process's RSS. Counters are approximate under concurrency (each is
//! exact, their sum at one instant is not), which is all a dashboard needs.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::store::StoreStats;

#[derive(Default)]
pub struct Stats {
    /// Open client connections, both listeners.
    pub connections: AtomicU64,
    /// Long-polls currently parked.
    pub parked: AtomicU64,
    /// SSE streams currently open.
    pub sse_streams: AtomicU64,
    /// Newline-delimited JSON streams currently open.
    pub ndjson_streams: AtomicU64,
    /// WebSocket streams currently open.
    pub websockets: AtomicU64,
    /// Messages written to subscribers (long-poll responses and SSE events).
    pub delivered: AtomicU64,
    /// Long-polls answered 204 on timeout.
    pub poll_timeouts: AtomicU64,
    /// Connections refused with 503 at the connection cap or on fd exhaustion.
    pub rejected: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Subscribes refused for their token (`401`: none, bad, expired; `403`: a channel
    /// not granted).
    pub token_refused: AtomicU64,
    /// Streams ended because their subscriber token expired.
    pub streams_expired: AtomicU64,
}

impl Stats {
    /// The gauge of open streams of `framing`.
    pub fn streams(&self, framing: crate::stream::Framing) -> &AtomicU64 {
        use crate::stream::Framing;
        match framing {
            Framing::Sse => &self.sse_streams,
            Framing::Ndjson => &self.ndjson_streams,
            Framing::WebSocket => &self.websockets,
        }
    }
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

pub fn dec(c: &AtomicU64) {
    c.fetch_sub(1, Relaxed);
}

/// One consistent-enough reading of everything.
pub struct Snapshot {
    pub fields: Vec<(&'static str, &'static str, u64)>,
}

impl Stats {
    pub fn snapshot(&self, store: &StoreStats, rss_bytes: u64, max_connections: usize) -> Snapshot {
        Snapshot {
            fields: vec![
                ("connections", "gauge", self.connections.load(Relaxed)),
                ("parked", "gauge", self.parked.load(Relaxed)),
                ("sse_streams", "gauge", self.sse_streams.load(Relaxed)),
                ("ndjson_streams", "gauge", self.ndjson_streams.load(Relaxed)),
                ("websockets", "gauge", self.websockets.load(Relaxed)),
                ("channels", "gauge", store.channels as u64),
                ("messages_buffered", "gauge", store.messages_buffered as u64),
                ("bytes_buffered", "gauge", store.bytes_buffered as u64),
                ("memory_buffered", "gauge", store.bytes_charged as u64),
                ("evicted_for_memory", "counter", store.evicted_for_memory),
                ("published", "counter", store.published),
                ("delivered", "counter", self.delivered.load(Relaxed)),
                ("poll_timeouts", "counter", self.poll_timeouts.load(Relaxed)),
                ("rejected", "counter", self.rejected.load(Relaxed)),
                ("accepted", "counter", self.accepted.load(Relaxed)),
                ("token_refused", "counter", self.token_refused.load(Relaxed)),
                (
                    "streams_expired",
                    "counter",
                    self.streams_expired.load(Relaxed),
                ),
                ("max_connections", "gauge", max_connections as u64),
                ("rss_bytes", "gauge", rss_bytes),
            ],
        }
    }
}

impl Snapshot {
    pub fn json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (name, _, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = write!(out, "\"{name}\":{v}");
        }
        out.extend_from_slice(b"}\n");
    }

    pub fn prometheus(&self, out: &mut Vec<u8>) {
        for (name, kind, v) in &self.fields {
            let suffix = if *kind == "counter" { "_total" } else { "" };
            let _ = write!(
                out,
                "# TYPE holdfast_{name}{suffix} {kind}\nholdfast_{name}{suffix} {v}\n"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_json_and_prometheus() {
        let s = Stats::default();
        inc(&s.parked);
        let snap = s.snapshot(
            &StoreStats {
                published: 3,
                ..Default::default()
            },
            4096,
            100,
        );
        let mut j = vec![];
        snap.json(&mut j);
        let v: serde_json::Value = serde_json::from_slice(&j).unwrap();
        assert_eq!(v["parked"], 1);
        assert_eq!(v["published"], 3);
        assert_eq!(v["rss_bytes"], 4096);
        let mut p = vec![];
        snap.prometheus(&mut p);
        let p = String::from_utf8(p).unwrap();
        assert!(p.contains("# TYPE holdfast_published_total counter\nholdfast_published_total 3\n"));
        assert!(p.contains("\nholdfast_parked 1\n"));
    }
}
