//! Command-line flags, their defaults, and validation.
//!
//! Every flag of `docs/protocol.md` lives here with its default. Durations take whole seconds
//! (`30`) or a number with a unit (`500ms`, `30s`, `5m`, `1h`); sizes take bytes or a
//! unit (`64KiB`, `1MiB`, `1KB`). A bad value is a clear message and exit status 2
//! (clap's convention), never a panic.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::store::StoreConfig;
use crate::subscribe::Holds;

/// Parsed, validated configuration. `Server::start` takes it as is.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "holdfast",
    version,
    about = "HTTP/1.1 long-polling and Server-Sent-Events pub/sub server",
    long_about = "HTTP/1.1 long-polling and Server-Sent-Events pub/sub server.\n\n\
        Subscribers hang GET /sub/{channel} on the public listener; publishers POST to \
        /pub/{channel} on the admin listener. Durations: 30, 500ms, 30s, 5m, 1h. \
        Sizes: 65536, 64KiB, 1MiB."
)]
pub struct Config {
    /// Public listener: subscribers (/sub/…) and /health.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Admin listener: publishers (/pub/…), /stats, /metrics, /health.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,

    /// Event-loop threads [default: number of cores].
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    pub threads: Option<usize>,

    /// Long-poll hold when the client gives no ?timeout=.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub poll_timeout: Duration,

    /// Upper clamp for ?timeout=.
    #[arg(long, value_name = "DUR", default_value = "120s", value_parser = parse_duration)]
    pub max_poll_timeout: Duration,

    /// Messages kept per channel.
    #[arg(long, value_name = "N", default_value = "16", value_parser = parse_buffer_messages)]
    pub buffer_messages: usize,

    /// Age after which a buffered message is evicted.
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = parse_duration)]
    pub message_ttl: Duration,

    /// Largest publish body.
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_size)]
    pub max_message_size: u64,

    /// Time allowed to send a request head (slow-loris defence).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Idle keep-alive before close; also the limit on a response the client won't read.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// Connection cap; beyond it new connections get 503 and are closed
    /// [default: from the open-file limit].
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    pub max_connections: Option<usize>,

    /// Comment-line interval on idle SSE streams.
    #[arg(long, value_name = "DUR", default_value = "15s", value_parser = parse_duration)]
    pub sse_heartbeat: Duration,

    /// Cap on memory for buffered messages across all channels (payloads, content types
    /// and 128 bytes of bookkeeping each); past it the oldest messages are evicted first.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    pub max_memory: u64,

    /// Most channels that may exist at once; publishing to (or parking on) a new channel
    /// beyond it gets 503.
    #[arg(long, value_name = "N", default_value = "1000000", value_parser = parse_positive)]
    pub max_channels: usize,

    /// Log the client address from `X-Real-IP` (else the last `X-Forwarded-For` entry)
    /// instead of the socket peer. Set it only behind a proxy you run that sets them.
    #[arg(long)]
    pub trust_proxy: bool,

    /// Unsent bytes per stream (SSE, ndjson, WebSocket) before it is cut off (a reader
    /// that stopped reading resumes with its cursor). Also --sse-max-backlog.
    #[arg(long, visible_alias = "sse-max-backlog", value_name = "SIZE", default_value = "256KiB", value_parser = parse_size)]
    pub stream_max_backlog: u64,

    /// Cluster mode: every node given the same Redis is one server (ids, buffers and
    /// deletes are shared; a publish on any node reaches every node's subscribers).
    /// Form: redis://[:PASSWORD@]HOST[:PORT][/DB]. Also read from HOLDFAST_REDIS, so a
    /// password need not appear in the process list.
    /// (Checked by `validate`, not by clap, whose error would print the password.)
    #[arg(
        long,
        value_name = "URL",
        env = "HOLDFAST_REDIS",
        hide_env_values = true
    )]
    pub redis: Option<String>,

    /// Prefix of every Redis key and pub/sub channel, so deployments can share a Redis.
    #[arg(long, value_name = "PREFIX", default_value = "holdfast", value_parser = parse_prefix)]
    pub redis_prefix: String,

    /// Every admin request but /health must carry `Authorization: Bearer <secret>`, the
    /// secret being this file's contents (one line; the trailing newline is not part of
    /// it).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// Longest wait for Redis before a publish, delete or catch-up read gets 503.
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// Private channels: every subscribe must carry a JWT (Authorization: Bearer, ?token=
    /// or the --token-cookie cookie) whose `channels` claim grants every channel asked
    /// for, checked with this key: an HMAC secret (HS256/384/512, at least 32 bytes) or
    /// an RSA or EC public key in PEM (RS256/384/512, ES256/384). Without it anyone may
    /// subscribe to any channel.
    #[arg(long, value_name = "FILE")]
    pub subscribe_key: Option<std::path::PathBuf>,

    /// Clock skew allowed when accepting a token's `exp` and `nbf` (it never extends a
    /// stream past `exp`).
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub token_leeway: Duration,

    /// Name of the cookie a subscriber token may ride in.
    #[arg(long, value_name = "NAME", default_value = crate::auth::DEFAULT_TOKEN_COOKIE, value_parser = parse_cookie_name)]
    pub token_cookie: String,

    /// CORS: let pages from this origin (scheme://host[:port]; repeat the flag for
    /// more) subscribe from the browser; `*` allows every origin, without credentials.
    #[arg(long, value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,
}

/// Most threads a server may run: each worker is one subscriber group of the store.
pub const MAX_THREADS: usize = crate::store::MAX_GROUPS;

/// Descriptors kept back from `--max-connections` for listeners, epoll, wakers, stdio
/// and the spare used on `EMFILE`.
const FD_RESERVE_BASE: u64 = 32;
const FD_RESERVE_PER_THREAD: u64 = 8;

impl Config {
    /// Defaults for everything, listening on free loopback ports (for tests and embedding).
    pub fn for_tests() -> Config {
        let mut c = Config::parse_from(["holdfast"]);
        c.listen = "127.0.0.1:0".parse().expect("literal address");
        c.admin_listen = "127.0.0.1:0".parse().expect("literal address");
        c
    }

    /// Threads actually used: the flag, or the number of cores (capped at [`MAX_THREADS`]).
    pub fn thread_count(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(MAX_THREADS)
        })
    }

    /// The store's share of the flags.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            buffer_messages: self.buffer_messages,
            message_ttl_ms: self.message_ttl.as_millis() as u64,
            max_bytes: usize::try_from(self.max_memory).unwrap_or(usize::MAX),
            max_channels: self.max_channels,
        }
    }

    /// The long-poll hold times.
    pub fn holds(&self) -> Holds {
        Holds {
            default: self.poll_timeout,
            max: self.max_poll_timeout,
        }
    }

    /// `--max-connections`, or by default what the open-file limit `nofile` allows with
    /// descriptors kept back for the server's own use.
    pub fn max_connections_for(&self, nofile: u64) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let reserve = FD_RESERVE_BASE + FD_RESERVE_PER_THREAD * self.thread_count() as u64;
            nofile.saturating_sub(reserve).max(1) as usize
        })
    }

    /// `--redis` (or `HOLDFAST_REDIS`), if given and not empty: cluster mode.
    pub fn redis_url(&self) -> Option<&str> {
        self.redis.as_deref().filter(|u| !u.is_empty())
    }

    /// The admin secret, if `--admin-token-file` was given; a message for the user if
    /// the file cannot serve as one.
    pub fn admin_token(&self) -> Result<Option<crate::auth::AdminToken>, String> {
        self.admin_token_file
            .as_deref()
            .map(crate::auth::AdminToken::load)
            .transpose()
    }

    /// The subscriber-token key, if `--subscribe-key` was given; a message for the
    /// user if the file cannot serve as one.
    pub fn subscribe_key(&self) -> Result<Option<crate::auth::SubscribeKey>, String> {
        self.subscribe_key
            .as_deref()
            .map(|p| crate::auth::SubscribeKey::load(p, self.token_leeway.as_secs()))
            .transpose()
    }

    /// The CORS policy, if `--allow-origin` was given.
    pub fn cors(&self) -> Result<Option<crate::cors::Cors>, String> {
        crate::cors::Cors::new(&self.allow_origin, self.subscribe_key.is_some())
    }

    /// Cross-flag checks clap cannot express. Returns a message for the user.
    pub fn validate(&self) -> Result<(), String> {
        if self.poll_timeout > self.max_poll_timeout {
            return Err(format!(
                "--poll-timeout ({}) must not exceed --max-poll-timeout ({})",
                fmt_duration(self.poll_timeout),
                fmt_duration(self.max_poll_timeout)
            ));
        }
        if self.header_timeout.is_zero() {
            return Err("--header-timeout must be greater than 0".into());
        }
        if self.keepalive_timeout.is_zero() {
            return Err("--keepalive-timeout must be greater than 0".into());
        }
        if self.sse_heartbeat.is_zero() {
            return Err("--sse-heartbeat must be greater than 0".into());
        }
        if self.message_ttl.is_zero() {
            return Err("--message-ttl must be greater than 0".into());
        }
        if self.max_message_size == 0 {
            return Err("--max-message-size must be greater than 0".into());
        }
        let one = self.max_message_size + crate::store::MESSAGE_OVERHEAD as u64;
        if self.max_memory < one {
            return Err(format!(
                "--max-memory ({} bytes) must hold at least one largest message ({} bytes: --max-message-size plus {} bytes of bookkeeping)",
                self.max_memory,
                one,
                crate::store::MESSAGE_OVERHEAD
            ));
        }
        if let Some(url) = self.redis_url() {
            check_redis_url(url)?;
        }
        if self.redis_timeout.is_zero() {
            return Err("--redis-timeout must be greater than 0".into());
        }
        if self.token_leeway > Duration::from_secs(300) {
            return Err(
                "--token-leeway must be at most 5m (it covers clock skew, not token lifetime)"
                    .into(),
            );
        }
        self.cors()?;
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(format!(
                "--listen and --admin-listen are both {}; publishing must stay off the public listener",
                self.listen
            ));
        }
        Ok(())
    }
}

fn fmt_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn parse_threads(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if n == 0 || n > MAX_THREADS {
        return Err(format!("must be between 1 and {MAX_THREADS}"));
    }
    Ok(n)
}

fn parse_positive(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// Checks `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` (the client library parses it
/// again; this gives a clear message before anything starts). Messages never repeat
/// the user or password.
fn check_redis_url(s: &str) -> Result<(), String> {
    let Some(rest) = s.strip_prefix("redis://") else {
        return Err(
            "--redis: not a redis:// URL (form: redis://[:PASSWORD@]HOST[:PORT][/DB])".into(),
        );
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let (hostport, db) = rest.split_once('/').unwrap_or((rest, ""));
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err(format!("--redis: database '{db}' is not a number"));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (hostport, None),
    };
    if host.is_empty() {
        return Err("--redis: the URL has no host".into());
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("--redis: port '{p}' is not a port number"));
        }
    }
    Ok(())
}

/// An RFC 6265 cookie name, at most 128 bytes.
fn parse_cookie_name(s: &str) -> Result<String, String> {
    if !crate::auth::valid_cookie_name(s) || s.len() > 128 {
        return Err("must be a cookie name: 1 to 128 letters, digits or !#$%&'*+-.^_`|~".into());
    }
    Ok(s.to_string())
}

/// `[A-Za-z0-9._-]{1,64}`: it becomes part of every key.
fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err("must be 1 to 64 of A-Z a-z 0-9 . _ -".into());
    }
    Ok(s.to_string())
}

fn parse_buffer_messages(s: &str) -> Result<usize, String> {
    let n = parse_positive(s)?;
    if n > 1 << 20 {
        return Err("must be at most 1048576".into());
    }
    Ok(n)
}

/// Splits `"500ms"` into `(500, "ms")`; the number may not be empty.
fn split_unit(s: &str) -> Result<(u64, &str), String> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    if num.is_empty() {
        return Err(format!("'{s}' does not start with a number"));
    }
    let n = num
        .parse::<u64>()
        .map_err(|_| format!("'{num}' is too large"))?;
    Ok((n, unit.trim()))
}

/// Parses `30`, `30s`, `500ms`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = split_unit(s)?;
    let ms_per = match unit {
        "" | "s" | "sec" => 1000,
        "ms" => 1,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("unknown unit '{unit}' (use ms, s, m or h)")),
    };
    let ms = n
        .checked_mul(ms_per)
        .filter(|ms| *ms <= 100 * 365 * 86_400_000)
        .ok_or_else(|| format!("'{s}' is too long"))?;
    Ok(Duration::from_millis(ms))
}

/// Parses `65536`, `64KiB`, `1MiB`, `1GiB`, `64KB`, `64k` (bytes when bare).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (n, unit) = split_unit(s)?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .filter(|b| *b <= 1 << 40)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("30", 30_000),
            ("30s", 30_000),
            ("500ms", 500),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("0", 0),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["", "s", "-1", "1.5s", "10 parsecs", "99999999999999999999"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn sizes() {
        let ok = [
            ("65536", 65536),
            ("64KiB", 65536),
            ("1MiB", 1 << 20),
            ("1kb", 1000),
            ("2GiB", 2 << 30),
        ];
        for (s, n) in ok {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for bad in ["", "KiB", "1TiB", "-5", "1.5MiB"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn defaults_match_protocol() {
        let c = Config::parse_from(["holdfast"]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.poll_timeout, Duration::from_secs(30));
        assert_eq!(c.max_poll_timeout, Duration::from_secs(120));
        assert_eq!(c.buffer_messages, 16);
        assert_eq!(c.message_ttl, Duration::from_secs(3600));
        assert_eq!(c.max_message_size, 65536);
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.keepalive_timeout, Duration::from_secs(60));
        assert_eq!(c.sse_heartbeat, Duration::from_secs(15));
        assert_eq!(c.stream_max_backlog, 256 * 1024);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn cross_flag_validation() {
        let c = Config::parse_from(["holdfast", "--poll-timeout", "200s"]);
        assert!(c.validate().unwrap_err().contains("--max-poll-timeout"));
        assert!(Config::try_parse_from(["holdfast", "--threads", "0"]).is_err());
        assert!(Config::try_parse_from(["holdfast", "--threads", "65"]).is_err());
        assert!(Config::try_parse_from(["holdfast", "--listen", "nowhere"]).is_err());
    }

    #[test]
    fn redis_flags() {
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://localhost",
            "redis://h:1/3",
            "redis://:secret@h:6379/0",
        ] {
            let c = Config::parse_from(["holdfast", "--redis", ok]);
            assert_eq!(c.validate(), Ok(()), "{ok}");
            assert_eq!(c.redis_url(), Some(ok), "{ok}");
        }
        assert_eq!(
            Config::parse_from(["holdfast", "--redis", ""]).redis_url(),
            None
        );
        for bad in [
            "127.0.0.1:6379",
            "http://h:1",
            "redis://",
            "redis://h:0",
            "redis://h:99999",
            "redis://h:1/x",
            "rediss://:pw-not-printed@h:1",
            "redis://:pw-not-printed@h:0",
        ] {
            let e = Config::parse_from(["holdfast", "--redis", bad])
                .validate()
                .expect_err(bad);
            assert!(e.contains("--redis"), "{e}");
            assert!(
                !e.contains("pw-not-printed"),
                "the password is printed: {e}"
            );
        }
        assert!(Config::try_parse_from(["holdfast", "--redis-prefix", "a:b"]).is_err());
        assert!(Config::try_parse_from(["holdfast", "--redis-prefix", ""]).is_err());
        let c = Config::parse_from(["holdfast", "--redis-timeout", "0"]);
        assert!(c.validate().unwrap_err().contains("--redis-timeout"));
    }
}
