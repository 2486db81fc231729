//! What workers tell the parent (one JSON object per line on their stdout), what the
//! parent tells workers (one word per line on their stdin), and the run summary.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds from 1 µs to one hour, 3 significant digits.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("static histogram bounds are valid")
}

/// Parent → worker, one per line.
pub const CMD_SNAPSHOT: &str = "snapshot";
pub const CMD_FINISH: &str = "finish";

/// Counters a worker keeps; sent in every progress line and in the result.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Connections attempted so far.
    pub opened: u64,
    /// TCP handshakes completed.
    pub connected: u64,
    /// Connections that reached "held" or failed: the ramp is over when this equals
    /// the worker's share.
    pub settled: u64,
    /// Live subscriptions right now (long-poll: request sent and waiting; SSE: stream open).
    pub holding: u64,
    /// Distinct messages received by subscriptions counted at the snapshot.
    pub received: u64,
    pub duplicates: u64,
    /// Long-polls answered "nothing new" (holdfast 204; nchan 304 or 408).
    pub timeouts: u64,
    /// WebSocket and ndjson: bytes of what carried each message counted in `received`
    /// (a text frame's payload, an ndjson line without its newline).
    pub message_bytes: u64,
    pub errors: BTreeMap<String, u64>,
}

impl Counts {
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Worker → parent, one per line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Report {
    Progress {
        counts: Counts,
        /// All of this worker's connections are held or have failed.
        ramped: bool,
    },
    Snapshot {
        held: u64,
        held_per_target: Vec<u64>,
    },
    Result {
        counts: Counts,
        /// Latency histogram as (value, count) pairs.
        latency: Vec<(u64, u64)>,
    },
}

pub fn histogram_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn merge_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, c) in pairs {
        h.saturating_record_n(v.clamp(1, LATENCY_MAX_US), c);
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub count: u64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            count: h.len(),
        }
    }
}

/// The run summary (`--json`). The bench harness reads it back with this same struct;
/// every key is optional when reading (`serde(default)`), so a partial summary from a
/// failed run still reads.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub connections_target: u64,
    pub connected: u64,
    pub held: u64,
    pub errors: BTreeMap<String, u64>,
    pub published: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub timeouts: u64,
    /// WebSocket and ndjson: Σ bytes of the frame payloads (ndjson: lines) that carried
    /// the `received` messages; 0 in the other modes. holdfast's frames hold the JSON
    /// envelope, nchan's the raw payload.
    pub message_bytes: u64,
    pub latency_us: Latency,
    pub ramp_secs: f64,
    pub elapsed_secs: f64,
    pub procs: usize,
    pub mode: String,
    pub protocol: String,

    /// Messages per admin address the run tried to publish (`--publish`).
    pub publish: u32,
    /// `held` split by target, same order as `--target`.
    pub held_per_target: Vec<u64>,
    /// `--max-time` ran out before the run finished.
    pub max_time_expired: bool,
    /// Unix time in µs just before the first publish was sent, 0 when none was: where
    /// a harness's CPU window for the fan-out starts, whatever the servers' counters
    /// say (a server busy with the fan-out may count or answer late).
    pub first_publish_unix_us: u64,
    /// The exit status's verdict.
    pub ok: bool,
}

impl Summary {
    /// Connected and held every target connection, lost nothing, got everything in
    /// order, finished in time, and every worker reported.
    pub fn verdict(&self) -> bool {
        use crate::errors::{BAD_EVENT_ID, EVENT_ID_ORDER, OUT_OF_ORDER, WORKER_FAILED};
        self.connected == self.connections_target
            && self.held == self.connections_target
            && (self.publish == 0 || (self.lost == 0 && self.expected > 0))
            && !self.max_time_expired
            && [WORKER_FAILED, OUT_OF_ORDER, EVENT_ID_ORDER, BAD_EVENT_ID]
                .iter()
                .all(|k| self.error_count(k) == 0)
    }

    /// Count of one error kind (0 when it did not occur).
    pub fn error_count(&self, kind: &str) -> u64 {
        self.errors.get(kind).copied().unwrap_or(0)
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(format!(
            "holdfast-stress: {} {} over {} worker process(es), {:.1}s",
            self.mode, self.protocol, self.procs, self.elapsed_secs
        ));
        line(format!(
            "  connections  target {}  connected {}  held {}  ramp {:.2}s",
            self.connections_target, self.connected, self.held, self.ramp_secs
        ));
        if self.publish > 0 {
            line(format!(
                "  messages     published {}  expected {}  received {}  lost {}  duplicates {}",
                self.published, self.expected, self.received, self.lost, self.duplicates
            ));
            let l = &self.latency_us;
            line(format!(
                "  latency µs   p50 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
                l.p50, l.p99, l.p999, l.max, l.count
            ));
            if self.message_bytes > 0 && self.received > 0 {
                line(format!(
                    "  bytes        {} per message as received ({} in all)",
                    self.message_bytes / self.received,
                    self.message_bytes
                ));
            }
        }
        line(format!("  poll timeouts {}", self.timeouts));
        if self.errors.is_empty() {
            line("  errors       none".into());
        } else {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            line(format!("  errors       {}", kinds.join(", ")));
        }
        if self.max_time_expired {
            line("  --max-time expired before the run finished".into());
        }
        line(format!(
            "  result       {}",
            if self.ok { "OK" } else { "FAIL" }
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_survives_the_pairs_round_trip() {
        let mut a = new_histogram();
        for v in [1, 7, 150, 150, 2_000, 1_000_000, LATENCY_MAX_US + 5] {
            a.saturating_record(v);
        }
        let mut b = new_histogram();
        merge_pairs(&mut b, &histogram_pairs(&a));
        merge_pairs(&mut b, &histogram_pairs(&a));
        assert_eq!(b.len(), 2 * a.len());
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(a.value_at_quantile(q), b.value_at_quantile(q), "q={q}");
        }
    }

    #[test]
    fn report_lines_round_trip() {
        let mut counts = Counts::default();
        counts.errors.insert("status_503".into(), 2);
        let line = serde_json::to_string(&Report::Progress {
            counts,
            ramped: true,
        })
        .unwrap();
        assert!(line.contains(r#""ev":"progress""#), "{line}");
        match serde_json::from_str::<Report>(&line).unwrap() {
            Report::Progress { counts, ramped } => {
                assert!(ramped);
                assert_eq!(counts.errors_total(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn summary_reads_back_whole_or_partial() {
        let mut whole = Summary {
            connections_target: 10,
            held: 9,
            latency_us: Latency {
                p50: 7,
                max: 90,
                count: 9,
                ..Latency::default()
            },
            held_per_target: vec![4, 5],
            ok: true,
            ..Summary::default()
        };
        whole.errors.insert("reset".into(), 1);
        let text = serde_json::to_string(&whole).unwrap();
        let back: Summary = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), text);

        // What a run cut short may leave: only some keys, some of latency's.
        let partial: Summary =
            serde_json::from_str(r#"{"held": 3, "latency_us": {"max": 5}}"#).unwrap();
        assert_eq!((partial.held, partial.connected), (3, 0));
        assert_eq!((partial.latency_us.max, partial.latency_us.count), (5, 0));
    }

    #[test]
    fn verdict_needs_every_connection_held_and_nothing_lost() {
        let base = Summary {
            connections_target: 10,
            connected: 10,
            held: 10,
            publish: 2,
            expected: 20,
            received: 20,
            ..Summary::default()
        };
        assert!(base.verdict());
        let cases = [
            Summary {
                connected: 9,
                ..base.clone()
            },
            Summary {
                held: 9,
                ..base.clone()
            },
            Summary {
                lost: 1,
                ..base.clone()
            },
            Summary {
                expected: 0,
                ..base.clone()
            },
            Summary {
                max_time_expired: true,
                ..base.clone()
            },
        ];
        let with_error = |kind: &str| {
            let mut s = base.clone();
            s.errors.insert(kind.to_owned(), 1);
            s
        };
        let cases = cases.into_iter().chain(
            [
                crate::errors::WORKER_FAILED,
                crate::errors::OUT_OF_ORDER,
                crate::errors::EVENT_ID_ORDER,
                crate::errors::BAD_EVENT_ID,
            ]
            .map(with_error),
        );
        // Errors that say nothing about loss or order leave the verdict to the counts.
        assert!(with_error(crate::errors::RESET).verdict());
        for s in cases {
            assert!(!s.verdict(), "{s:?}");
        }
    }
}
