//! Shared harness for the end-to-end tests: runs the server binary as a child process
//! and speaks HTTP/1.1 to it as raw bytes over `std::net::TcpStream`.
//!
//! Nothing here depends on holdfast internals, only on PROTOCOL.md and the start-up
//! interface (flags, the two `listening …=ADDR` lines on stdout, `/stats`), so the
//! same suite can run against the tokio peer: set `HOLDFAST_BIN` to its path.
//!
//! Every read has a timeout (10 s unless a test says otherwise), so no test can hang.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default timeout for every connect, read and write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to print its listening addresses.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary under test: `HOLDFAST_BIN` if set, else the holdfast binary cargo built.
pub fn server_bin() -> String {
    std::env::var("HOLDFAST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_holdfast").to_string())
}

/// True when the binary under test is holdfast itself (no `HOLDFAST_BIN` override), for
/// the few checks that hold holdfast to its own budgets rather than to the protocol.
pub fn testing_holdfast() -> bool {
    std::env::var_os("HOLDFAST_BIN").is_none()
}

/// A running server process. Killed (SIGKILL) on drop.
pub struct Server {
    child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<Mutex<String>>,
    exit: Option<ExitStatus>,
}

fn spawn_line_reader<R: Read + Send + 'static>(
    pipe: R,
    tag: &'static str,
    log: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    if let Ok(mut l) = log.lock() {
                        l.push_str(tag);
                        l.push_str(&text);
                        l.push('\n');
                    }
                    if let Some(tx) = &lines {
                        let _ = tx.send(text);
                    }
                }
            }
        }
    })
}

/// Finds `key=ADDR` in a start-up line such as `listening public=127.0.0.1:41234`.
fn find_addr(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|tok| tok.strip_prefix(key))
        .and_then(|a| a.trim_matches(|c: char| c == ',' || c == ';').parse().ok())
}

impl Server {
    /// Starts the server on free loopback ports with `--threads 2` (unless `flags` gives
    /// `--threads`) plus `flags`, and waits for both listening lines.
    pub fn start(flags: &[&str]) -> Server {
        let mut args: Vec<&str> = vec!["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
        if !flags.contains(&"--threads") {
            args.extend(["--threads", "2"]);
        }
        args.extend_from_slice(flags);
        let bin = server_bin();
        let mut child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run server binary {bin}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        spawn_line_reader(stdout, "[stdout] ", log.clone(), Some(tx));
        let stderr_thread = spawn_line_reader(stderr, "[stderr] ", log.clone(), None);

        let deadline = Instant::now() + START_TIMEOUT;
        let (mut public, mut admin) = (None, None);
        let failure = loop {
            if let (Some(public), Some(admin)) = (public, admin) {
                return Server {
                    child,
                    public,
                    admin,
                    log,
                    exit: None,
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if line.contains("listening") {
                        public = public.or_else(|| find_addr(&line, "public="));
                        admin = admin.or_else(|| find_addr(&line, "admin="));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    break format!(
                        "server did not print both `listening public=ADDR` and \
                         `listening admin=ADDR` within {START_TIMEOUT:?}"
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break "server closed stdout before printing both listening lines".to_string()
                }
            }
        };
        let _ = child.kill();
        let status = child.wait();
        let _ = stderr_thread.join();
        let log = log.lock().map(|l| l.clone()).unwrap_or_default();
        panic!("{failure}; args {args:?}; exit {status:?}; output:\n{log}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server printed so far (for failure messages).
    pub fn output(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    return self.exit;
                }
                Ok(None) => {}
                Err(e) => panic!("waiting for server: {e}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// CPU time (user + system) the server process has used so far, from /proc.
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A failing test shows what the server said (at most the last 8 KiB).
        if std::thread::panicking() {
            let log = self.output();
            let mut from = log.len().saturating_sub(8192);
            while !log.is_char_boundary(from) {
                from += 1;
            }
            let tail = &log[from..];
            eprintln!("--- server output (tail) ---\n{tail}--- end of server output ---");
        }
    }
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// utime + stime of a process, from `/proc/PID/stat`.
pub fn cpu_time_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // The command name (field 2) may contain spaces; the fields after its ')' are fixed.
    let rest = &stat[stat.rfind(')').expect("stat has (comm)") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    Duration::from_secs_f64((utime + stime) as f64 / clock_ticks_per_second() as f64)
}

/// Microseconds since the Unix epoch (message ids are seeded from this).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

// ---------------------------------------------------------------------------------
// Raw HTTP/1.1 client
// ---------------------------------------------------------------------------------

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of a header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether a comma-separated header contains `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The response says the server closes the connection after it.
    pub fn closes(&self) -> bool {
        self.has_token("connection", "close")
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body_str()))
    }

    /// `Message-Id`, asserted present.
    pub fn message_id(&self) -> String {
        self.header("message-id")
            .unwrap_or_else(|| panic!("no Message-Id in {self:?}"))
            .to_string()
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad Content-Length {v:?}"))
        })
    }

    /// Short one-line description for assertion messages.
    pub fn brief(&self) -> String {
        let mut body = self.body_str();
        body.truncate(200);
        format!(
            "{} {} {:?} headers {:?} body {:?}",
            self.version, self.status, self.reason, self.headers, body
        )
    }
}

fn io_err(kind: io::ErrorKind, msg: impl Into<String>) -> io::Error {
    io::Error::new(kind, msg.into())
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Builds a request: request line, `Host`, the given headers, and `Content-Length` when
/// there is a body and the headers give neither a length nor a transfer coding.
pub fn request_bytes(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n").into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    let framed = headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    });
    if let Some(body) = body {
        if !framed {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
    out
}

/// A client connection with a read buffer (so pipelined responses are kept apart).
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Conn::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Conn {
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).expect("timeout");
    }

    /// Writes all bytes; errors are returned (a server may close early, e.g. after 413).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).expect("write request");
    }

    pub fn send_request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) {
        self.send(&request_bytes(method, target, headers, body));
    }

    /// Sends a request and reads its final response (panics on I/O errors).
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        self.send_request(method, target, headers, body);
        self.response()
    }

    pub fn get(&mut self, target: &str) -> Response {
        self.request("GET", target, &[], None)
    }

    /// Reads the next final response, skipping 1xx interim responses.
    pub fn response(&mut self) -> Response {
        self.read_response()
            .unwrap_or_else(|e| panic!("reading response: {e}"))
    }

    /// Reads the next final response, skipping 1xx interim responses.
    pub fn read_response(&mut self) -> io::Result<Response> {
        loop {
            let r = self.read_any_response()?;
            if !(100..200).contains(&r.status) || r.status == 101 {
                return Ok(r);
            }
        }
    }

    /// Reads one more byte chunk into the buffer; Ok(0) at end of stream (a reset after
    /// the peer closed counts as end of stream).
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_reset(&e) => return Ok(0),
                Err(e) if is_timeout(&e) => {
                    return Err(io_err(
                        io::ErrorKind::TimedOut,
                        format!(
                            "read timed out; {} unparsed bytes buffered: {:?}",
                            self.buf.len(),
                            String::from_utf8_lossy(&self.buf[..self.buf.len().min(300)])
                        ),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads exactly one response, interim (1xx) or final.
    pub fn read_any_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.fill()? == 0 {
                return Err(io_err(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec())
            .map_err(|_| io_err(io::ErrorKind::InvalidData, "response head is not UTF-8"))?;
        self.buf.drain(..head_end + 4);
        let (version, status, reason, headers) = parse_response_head(&head)?;
        let mut resp = Response {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(resp);
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            resp.body = self.read_chunked()?;
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.trim().parse().map_err(|_| {
                io_err(
                    io::ErrorKind::InvalidData,
                    format!("bad Content-Length {len:?}"),
                )
            })?;
            while self.buf.len() < len {
                if self.fill()? == 0 {
                    return Err(io_err(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "closed after {} of {len} body bytes; head {:?}",
                            self.buf.len(),
                            resp.headers
                        ),
                    ));
                }
            }
            resp.body = self.buf.drain(..len).collect();
        } else {
            // Body delimited by close.
            loop {
                match self.fill() {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        return Err(io_err(
                            e.kind(),
                            format!(
                                "response {status} has neither Content-Length nor chunked \
                                 framing and the connection stayed open: {e}"
                            ),
                        ))
                    }
                }
            }
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io_err(
                    io::ErrorKind::UnexpectedEof,
                    "closed inside chunked body",
                ));
            }
        }
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| {
                io_err(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if size == 0 {
                // Trailers until an empty line.
                while !self.read_line()?.is_empty() {}
                return Ok(body);
            }
            while self.buf.len() < size + 2 {
                if self.fill()? == 0 {
                    return Err(io_err(io::ErrorKind::UnexpectedEof, "closed inside chunk"));
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Waits up to `within` for the server to close the connection (EOF or reset).
    /// Ok(bytes received before the close) or Err(description) if it stayed open.
    pub fn wait_closed(&mut self, within: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + within;
        let mut got = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "connection still open after {within:?}; received {:?}",
                    String::from_utf8_lossy(&got)
                ));
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_reset(&e) => return Ok(got),
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(format!("read error while waiting for close: {e}")),
            }
        }
    }

    /// Asserts the server closes the connection within `within` without sending more.
    pub fn assert_closed(&mut self, within: Duration) {
        match self.wait_closed(within) {
            Ok(extra) => assert!(
                extra.is_empty(),
                "expected close, got more bytes first: {:?}",
                String::from_utf8_lossy(&extra)
            ),
            Err(e) => panic!("{e}"),
        }
    }

    /// True if nothing at all arrives (and the connection stays open) for `dur`.
    pub fn quiet_for(&mut self, dur: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.stream.set_read_timeout(Some(dur)).expect("timeout");
        let mut chunk = [0u8; 1024];
        let quiet = match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Err(e) => is_timeout(&e),
        };
        self.stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("timeout");
        quiet
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// After `resp` on `conn`: if the response announced `Connection: close`, the server must
/// close; otherwise the connection must still serve a request (`GET /health`, which both
/// listeners have).
pub fn assert_close_is_consistent(conn: &mut Conn, resp: &Response) {
    if resp.closes() {
        conn.assert_closed(Duration::from_secs(5));
    } else {
        let r = conn
            .try_send(&request_bytes("GET", "/health", &[], None))
            .and_then(|_| conn.read_response());
        match r {
            Ok(h) => assert_eq!(
                h.status,
                200,
                "connection kept after {} but next request failed: {}",
                resp.status,
                h.brief()
            ),
            Err(e) => panic!(
                "response {} had no `Connection: close` but the connection is unusable: {e}",
                resp.brief()
            ),
        }
    }
}

// ---------------------------------------------------------------------------------
// Protocol helpers
// ---------------------------------------------------------------------------------

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    Conn::open(addr).request(method, target, headers, body)
}

pub fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &[], None)
}

/// `GET path` on the public listener (path like `/sub/a?since=0&timeout=1`).
pub fn poll(public: SocketAddr, path: &str) -> Response {
    get(public, path)
}

pub fn poll_with(public: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    request(public, "GET", path, headers, None)
}

/// Publishes and returns the full response (not checked).
pub fn publish_full(
    admin: SocketAddr,
    channel: &str,
    body: &[u8],
    content_type: Option<&str>,
) -> Response {
    let headers: Vec<(&str, &str)> = content_type
        .map(|ct| vec![("Content-Type", ct)])
        .unwrap_or_default();
    request(
        admin,
        "POST",
        &format!("/pub/{channel}"),
        &headers,
        Some(body),
    )
}

/// Publishes, asserts 201, returns the message id.
pub fn publish(admin: SocketAddr, channel: &str, body: impl AsRef<[u8]>) -> String {
    let r = publish_full(admin, channel, body.as_ref(), None);
    publish_id(&r)
}

/// Checks a publish response is 201 with a JSON string id; returns the id.
pub fn publish_id(r: &Response) -> String {
    assert_eq!(r.status, 201, "publish failed: {}", r.brief());
    let v = r.json();
    let id = v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("publish JSON has no string id: {v}"));
    id_num(id);
    id.to_string()
}

/// An id as a number (ids are decimal u64 strings).
pub fn id_num(id: &str) -> u64 {
    id.parse()
        .unwrap_or_else(|_| panic!("id {id:?} is not a decimal u64"))
}

/// `GET /stats` on the admin listener.
pub fn stats(admin: SocketAddr) -> serde_json::Value {
    let r = get(admin, "/stats");
    assert_eq!(r.status, 200, "/stats: {}", r.brief());
    r.json()
}

/// One integer field of `/stats`.
pub fn stat(admin: SocketAddr, field: &str) -> u64 {
    let v = stats(admin);
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("/stats field {field} missing or not an integer: {v}"))
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(mut cond: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `/stats` `field` == `want`; panics with the last value otherwise.
pub fn wait_stat(admin: SocketAddr, field: &str, want: u64, timeout: Duration) {
    let mut last = u64::MAX;
    let ok = wait_until(
        || {
            last = stat(admin, field);
            last == want
        },
        timeout,
    );
    assert!(
        ok,
        "/stats {field} did not reach {want} within {timeout:?} (last {last})"
    );
}

/// Opens a connection and sends `GET path` without reading: a poll to be parked.
pub fn park(public: SocketAddr, path: &str) -> Conn {
    let mut c = Conn::open(public);
    c.send_request("GET", path, &[], None);
    c
}

/// A cursor for `channel` "as of now": a short poll without cursor must answer 204 and
/// its `Message-Id` is the cursor to continue from.
pub fn cursor_now(public: SocketAddr, channel: &str) -> String {
    let r = poll(public, &format!("/sub/{channel}?timeout=0"));
    assert_eq!(r.status, 204, "short poll without cursor: {}", r.brief());
    let id = r.message_id();
    id_num(&id);
    id
}

/// Asserts a 200 delivery of `body` on `channel` and returns its Message-Id.
pub fn assert_delivery(r: &Response, channel: &str, body: &[u8]) -> String {
    assert_eq!(r.status, 200, "expected a message: {}", r.brief());
    assert_eq!(
        r.header("channel"),
        Some(channel),
        "Channel header: {}",
        r.brief()
    );
    assert_eq!(
        r.body,
        body,
        "payload differs: got {:?}, want {:?}",
        r.body_str(),
        String::from_utf8_lossy(body)
    );
    let id = r.message_id();
    id_num(&id);
    id
}

/// Asserts `elapsed` lies within `[lo, hi]`.
pub fn assert_between(what: &str, elapsed: Duration, lo: Duration, hi: Duration) {
    assert!(
        elapsed >= lo && elapsed <= hi,
        "{what}: took {elapsed:?}, expected between {lo:?} and {hi:?}"
    );
}

// ---------------------------------------------------------------------------------
// Server-Sent-Events client
// ---------------------------------------------------------------------------------

/// `GET path` with `Accept: text/event-stream` plus `headers`.
pub fn sse_request_bytes(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut all = vec![("Accept", "text/event-stream")];
    all.extend_from_slice(headers);
    request_bytes("GET", path, &all, None)
}

/// The text every event stream starts with.
pub const SSE_PREAMBLE: &str = "retry: 2000\n\n";

/// One event block, parsed. `raw` is the block exactly as received (its lines and the
/// blank line ending it), without comment lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub raw: String,
    pub fields: Vec<(String, String)>,
}

impl SseEvent {
    /// Parses a block as returned by [`Sse::next_block`] (`name: value` lines; the one
    /// space after the colon is not part of the value, as EventSource reads it).
    pub fn parse(raw: String) -> SseEvent {
        let fields = raw
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once(':') {
                Some((n, v)) => (n.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect();
        SseEvent { raw, fields }
    }

    /// The last value of field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn id(&self) -> Option<&str> {
        self.field("id")
    }

    pub fn event(&self) -> Option<&str> {
        self.field("event")
    }

    /// The `data:` values in order.
    pub fn data_lines(&self) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n == "data")
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The data as EventSource hands it to the application: lines joined with `\n`.
    pub fn data(&self) -> String {
        self.data_lines().join("\n")
    }
}

/// At most the first 200 bytes of `b`, quoted, and its length if longer.
fn snippet(b: &[u8]) -> String {
    if b.len() <= 200 {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        format!(
            "{:?}... ({} bytes)",
            String::from_utf8_lossy(&b[..200]),
            b.len()
        )
    }
}

/// A client reading one event stream. Every read is bounded by a deadline.
///
/// The server's stream is close-delimited. A proxy in front of it (nginx,
/// tests/nginx.rs) re-frames it for an HTTP/1.1 client as `Transfer-Encoding: chunked`;
/// when the head says so, the body is de-chunked before it is split into blocks (as a
/// browser does), and the zero-size chunk ends the stream as a close would.
pub struct Sse {
    pub conn: Conn,
    /// The response head (its body is empty: the stream body is read block by block).
    pub head: Option<Response>,
    /// Comment lines (e.g. `: hb`) with the time they were parsed, in arrival order.
    pub comments: Vec<(Instant, String)>,
    /// Lines of the block being read.
    partial: String,
    /// Set by [`Sse::read_head`] when the head says `Transfer-Encoding: chunked`.
    chunked: Option<Dechunk>,
}

/// De-chunking state of a chunked stream: `Conn::buf` holds the bytes received, `body`
/// what has been de-chunked and not yet split into lines.
#[derive(Default)]
struct Dechunk {
    body: Vec<u8>,
    /// Bytes of the current chunk still to come.
    chunk_left: usize,
    /// The zero-size chunk was seen: the stream has ended.
    ended: bool,
}

impl Dechunk {
    /// Moves what can be de-chunked from `raw` to `body`.
    fn take_from(&mut self, raw: &mut Vec<u8>) -> io::Result<()> {
        loop {
            if self.ended {
                return Ok(());
            }
            if self.chunk_left > 0 {
                let take = self.chunk_left.min(raw.len());
                self.body.extend(raw.drain(..take));
                self.chunk_left -= take;
                if self.chunk_left > 0 {
                    return Ok(());
                }
                // Then the chunk's own CRLF, which the size line parsing skips.
            }
            // [CRLF] size [; ext] CRLF
            let start = if raw.starts_with(b"\r\n") { 2 } else { 0 };
            let Some(end) = find(&raw[start..], b"\r\n") else {
                return Ok(());
            };
            let line = String::from_utf8_lossy(&raw[start..start + end]).into_owned();
            if line.is_empty() {
                return Ok(()); // only the CRLF so far
            }
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io_err(io::ErrorKind::InvalidData, format!("chunk {line:?}")))?;
            raw.drain(..start + end + 2);
            if size == 0 {
                self.ended = true;
                return Ok(());
            }
            self.chunk_left = size;
        }
    }
}

impl Sse {
    /// Sends the stream request on `conn` without reading anything.
    pub fn begin(mut conn: Conn, path: &str, headers: &[(&str, &str)]) -> Sse {
        conn.send(&sse_request_bytes(path, headers));
        Sse::requested(conn)
    }

    /// A reader for `conn`, on which the stream request ([`sse_request_bytes`]) has
    /// already been sent (e.g. by [`connect_many`]).
    pub fn requested(conn: Conn) -> Sse {
        Sse {
            conn,
            head: None,
            comments: Vec::new(),
            partial: String::new(),
            chunked: None,
        }
    }

    /// Connects, requests `path` as an event stream, and checks the answer is a `200`
    /// `text/event-stream` whose body starts with `retry: 2000` and a blank line.
    pub fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut s = Sse::begin(Conn::open(addr), path, headers);
        s.expect_stream_start(IO_TIMEOUT);
        s
    }

    /// Reads the head and the preamble, asserting both.
    pub fn expect_stream_start(&mut self, within: Duration) {
        let head = self
            .read_head(within)
            .unwrap_or_else(|e| panic!("reading the event-stream head: {e}"));
        assert_eq!(head.status, 200, "event stream: {}", head.brief());
        assert_eq!(
            head.header("content-type"),
            Some("text/event-stream"),
            "{}",
            head.brief()
        );
        let first = self
            .next_block(within)
            .unwrap_or_else(|e| panic!("reading the stream preamble: {e}"));
        assert_eq!(first, SSE_PREAMBLE, "first bytes of the stream body");
    }

    /// Reads the response head (status line and headers) and nothing of the body.
    pub fn read_head(&mut self, within: Duration) -> io::Result<Response> {
        let deadline = Instant::now() + within;
        let head_end = loop {
            if let Some(i) = find(&self.conn.buf, b"\r\n\r\n") {
                break i;
            }
            if self.fill_until(deadline)? == 0 {
                return Err(io_err(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed before a complete response head; got {:?}",
                        String::from_utf8_lossy(&self.conn.buf)
                    ),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.conn.buf[..head_end]).into_owned();
        self.conn.buf.drain(..head_end + 4);
        let (version, status, reason, headers) = parse_response_head(&head)?;
        let resp = Response {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        if resp.has_token("transfer-encoding", "chunked") {
            self.chunked = Some(Dechunk::default());
        }
        self.head = Some(resp.clone());
        Ok(resp)
    }

    /// One read into the buffer, waiting at most until `deadline`. Ok(0) at end of
    /// stream; a `TimedOut` error if the deadline passed.
    fn fill_until(&mut self, deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io_err(io::ErrorKind::TimedOut, "deadline passed"));
        }
        self.conn
            .set_read_timeout(left.max(Duration::from_millis(1)));
        match self.conn.fill() {
            Err(e) if is_timeout(&e) => Err(io_err(io::ErrorKind::TimedOut, "deadline passed")),
            r => r,
        }
    }

    /// The body bytes received and not yet split into lines.
    fn unread(&self) -> &[u8] {
        match &self.chunked {
            Some(d) => &d.body,
            None => &self.conn.buf,
        }
    }

    /// Takes complete lines from the body; returns a block once a blank line ends it.
    /// Comment lines are recorded in `comments` and left out of blocks.
    fn take_block(&mut self) -> io::Result<Option<String>> {
        let body = match &mut self.chunked {
            Some(d) => {
                d.take_from(&mut self.conn.buf)?;
                &mut d.body
            }
            None => &mut self.conn.buf,
        };
        while let Some(i) = body.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&body[..i]).into_owned();
            body.drain(..=i);
            if line.is_empty() {
                let mut block = std::mem::take(&mut self.partial);
                block.push('\n');
                return Ok(Some(block));
            }
            if line.starts_with(':') {
                self.comments.push((Instant::now(), line));
                continue;
            }
            self.partial.push_str(&line);
            self.partial.push('\n');
        }
        Ok(None)
    }

    /// Reads until a block is complete or `deadline` passes (Ok(None)). End of stream
    /// (a close, or a chunked stream's zero-size chunk) is an `UnexpectedEof` error
    /// naming what was left unfinished.
    pub fn poll_block(&mut self, deadline: Instant) -> io::Result<Option<String>> {
        loop {
            if let Some(block) = self.take_block()? {
                return Ok(Some(block));
            }
            let end = if self.chunked.as_ref().is_some_and(|d| d.ended) {
                "stream ended (zero-size chunk)"
            } else {
                match self.fill_until(deadline) {
                    Ok(0) if self.chunked.is_some() => "connection closed inside a chunked body",
                    Ok(0) => "stream closed",
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(None),
                    Err(e) => return Err(e),
                }
            };
            return Err(io_err(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{end}; unfinished block {}, unfinished line {}",
                    snippet(self.partial.as_bytes()),
                    snippet(self.unread())
                ),
            ));
        }
    }

    /// The next block (lines up to and including the blank line that ends it).
    pub fn next_block(&mut self, within: Duration) -> io::Result<String> {
        match self.poll_block(Instant::now() + within)? {
            Some(b) => Ok(b),
            None => Err(io_err(
                io::ErrorKind::TimedOut,
                format!(
                    "no complete event within {within:?}; unfinished block {}, \
                     unfinished line {}",
                    snippet(self.partial.as_bytes()),
                    snippet(self.unread())
                ),
            )),
        }
    }

    pub fn next_event(&mut self, within: Duration) -> io::Result<SseEvent> {
        self.next_block(within).map(SseEvent::parse)
    }

    /// The next block, panicking on timeout or end of stream.
    pub fn block(&mut self) -> String {
        self.next_block(IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("reading an event: {e}"))
    }

    /// The next event, panicking on timeout or end of stream.
    pub fn event(&mut self) -> SseEvent {
        self.event_within(IO_TIMEOUT)
    }

    /// The next event within `within`, panicking on timeout or end of stream.
    pub fn event_within(&mut self, within: Duration) -> SseEvent {
        self.next_event(within)
            .unwrap_or_else(|e| panic!("reading an event: {e}"))
    }

    /// Every block that completes within `dur` (comments are recorded meanwhile).
    pub fn blocks_for(&mut self, dur: Duration) -> io::Result<Vec<String>> {
        let deadline = Instant::now() + dur;
        let mut out = Vec::new();
        while let Some(b) = self.poll_block(deadline)? {
            out.push(b);
        }
        Ok(out)
    }

    /// True if no block completes (and the stream stays open) for `dur`.
    pub fn quiet_for(&mut self, dur: Duration) -> Result<(), String> {
        match self.blocks_for(dur) {
            Ok(b) if b.is_empty() => Ok(()),
            Ok(b) => Err(format!("unexpected events: {b:?}")),
            Err(e) => Err(format!("stream failed: {e}")),
        }
    }

    /// Waits up to `within` for the stream to end properly, skipping any events: the
    /// zero-size chunk of a chunked stream, the close of a close-delimited one. Err says
    /// what happened instead (still open, closed inside a chunk, a framing error).
    pub fn wait_end(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            match self.poll_block(deadline) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(format!("still open after {within:?}")),
                Err(e)
                    if e.kind() == io::ErrorKind::UnexpectedEof
                        && self.chunked.as_ref().is_none_or(|d| d.ended) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Waits up to `within` for the server to close a close-delimited stream; Ok(the
    /// bytes that came after the last complete block, including any unfinished block)
    /// or Err if it stayed open.
    pub fn wait_eof(&mut self, within: Duration) -> Result<Vec<u8>, String> {
        let mut rest = std::mem::take(&mut self.partial).into_bytes();
        let more = self.conn.wait_closed(within)?;
        rest.extend_from_slice(&more);
        Ok(rest)
    }
}

// ---------------------------------------------------------------------------------
// nginx in front of the server under test (tests/nginx.rs, tests/browser.rs)
// ---------------------------------------------------------------------------------

/// A real nginx running the shipped `tuning/nginx.conf`, with only the literals that
/// file marks `TEMPLATED` (listen port, upstream address, pid/log/temp/static paths)
/// rewritten into a scratch directory. Its process group (master and workers) is
/// killed on drop and the directory removed.
pub mod nginx {
    use std::fs;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;
    use std::time::{Duration, Instant};

    use super::{Conn, START_TIMEOUT};

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
        if let Some(p) = std::env::var_os("NGINX") {
            return PathBuf::from(p);
        }
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        on_path
            .into_iter()
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
            .map(|d| d.join("nginx"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "nginx is not installed (looked on PATH, /usr/sbin, /usr/local/sbin; set \
                     NGINX=/path/to/nginx to point elsewhere). These tests run the shipped \
                     tuning/nginx.conf in a real nginx: `apt-get install nginx` (.ci/run does)."
                )
            })
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

    /// Process ids whose parent is `pid` (from /proc).
    pub fn children_of(pid: u32) -> Vec<u32> {
        let mut kids = Vec::new();
        let Ok(dir) = fs::read_dir("/proc") else {
            return kids;
        };
        for entry in dir.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            // Fields after the `(comm)`: state, ppid, ...
            let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
            let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            if ppid == Some(pid) {
                kids.push(child);
            }
        }
        kids
    }

    /// Resident set size of a process in bytes, from /proc/PID/status (0 if gone).
    pub fn rss_of(pid: u32) -> u64 {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// Sends `signal` to every process in process group `pgid`, with the `kill` command
    /// (procps). Errors are ignored: the group may be gone already.
    pub fn kill_group(pgid: u32, signal: &str) {
        let _ = Command::new("kill")
            .args(["-s", signal, "--", &format!("-{pgid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
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
        /// The templated config nginx was started with.
        pub conf: String,
        // Declared last: removed after the processes are gone.
        dir: TempDir,
    }

    impl Nginx {
        /// nginx with the shipped config in front of `upstream` (the server's public
        /// listener), serving `files` (name, contents) from its static root.
        pub fn start(upstream: SocketAddr, files: &[(&str, &[u8])]) -> Nginx {
            let bin = nginx_bin();
            let shipped = shipped_conf();
            let mut last_failure = String::new();
            // A free port is found by binding port 0 and letting it go; another process
            // may take it before nginx binds, so a bind failure is retried.
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
                let conf = templated_conf(&shipped, listen, upstream, &dir.path)
                    .unwrap_or_else(|e| panic!("{e}"));
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
                        last_failure =
                            format!("nginx exited with {status}:\n{}", logs_in(&dir.path));
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
                                conf,
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
            panic!("{last_failure}\nconfig: tuning/nginx.conf templated by tests/common/mod.rs");
        }

        /// The master's pid (also its process group id).
        pub fn pid(&self) -> u32 {
            self.child.id()
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

        /// The access log (one line per request nginx served).
        pub fn access_log(&self) -> String {
            read_logs(&self.dir.path, &["holdfast-access.log"])
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
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(10))
                    }
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
        read_logs(dir, &["startup.log", "stdout.log", "holdfast-error.log"])
    }
}

// ---------------------------------------------------------------------------------
// Hardening helpers: a server under a wrapper command, source addresses, RSS
// ---------------------------------------------------------------------------------

impl Server {
    /// Like [`Server::start`], but runs the binary through `wrapper` (e.g. `["prlimit",
    /// "--nofile=300:300"]`), which must exec it so that [`Server::pid`] is the server.
    pub fn start_wrapped(wrapper: &[&str], flags: &[&str]) -> Server {
        let (program, wrapper_args) = wrapper.split_first().expect("a wrapper command");
        let bin = server_bin();
        let mut args: Vec<&str> = wrapper_args.to_vec();
        args.push(&bin);
        args.extend(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
        if !flags.contains(&"--threads") {
            args.extend(["--threads", "2"]);
        }
        args.extend_from_slice(flags);
        let mut child = Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        spawn_line_reader(stdout, "[stdout] ", log.clone(), Some(tx));
        spawn_line_reader(stderr, "[stderr] ", log.clone(), None);
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut public, mut admin) = (None, None);
        while public.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening") => {
                    public = public.or_else(|| find_addr(&line, "public="));
                    admin = admin.or_else(|| find_addr(&line, "admin="));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait();
                    thread::sleep(Duration::from_millis(100));
                    let out = log.lock().map(|l| l.clone()).unwrap_or_default();
                    panic!(
                        "{program} {args:?} did not start ({e}); exit {status:?}; output:\n{out}"
                    );
                }
            }
        }
        Server {
            child,
            public: public.expect("public address"),
            admin: admin.expect("admin address"),
            log,
            exit: None,
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                false
            }
            _ => true,
        }
    }
}

/// Resident set size of a process in bytes, from `/proc/PID/statm` (for servers whose
/// `/stats` cannot be asked, e.g. while they refuse connections).
pub fn rss_of(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/statm: {e}"));
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm resident field");
    pages * holdfast::sys::page_size()
}

/// A blocking connection from loopback address `source` (127.0.0.2 and up spread many
/// sockets over more than one address's ephemeral ports).
pub fn connect_from(source: std::net::Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    sock.bind(&SockAddr::from(SocketAddr::new(
        std::net::IpAddr::V4(source),
        0,
    )))?;
    sock.connect_timeout(&SockAddr::from(to), IO_TIMEOUT)?;
    Ok(sock.into())
}

/// The `i`-th of `n` source addresses 127.0.0.2, 127.0.0.3, …
pub fn source_addr(i: usize, n: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % n as usize) as u8)
}

/// Raises this process's open-file limit to its hard limit (server children started
/// afterwards inherit it) and asserts it leaves room for `sockets` client sockets plus
/// 200 for everything else.
pub fn raise_fd_limit_for(sockets: usize) {
    let limit = holdfast::sys::raise_fd_limit().expect("raise the open-file limit");
    assert!(
        limit >= sockets as u64 + 200,
        "open-file limit {limit} is too low for {sockets} client sockets"
    );
}

/// Opens `n` connections to `to`, the `i`-th from [`source_addr`]`(i, sources)`, and
/// sends `request` on each without reading anything. Panics naming the connection that
/// failed, or if opening them takes longer than 120 s.
///
/// For the tests that hold thousands of sockets: spread over several source addresses,
/// they do not use up one address's ephemeral port range (~28,000).
pub fn connect_many(to: SocketAddr, n: usize, sources: u8, request: &[u8]) -> Vec<Conn> {
    let t = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "only {i} connections opened in 120 s"
        );
        let source = source_addr(i, sources);
        let stream = connect_from(source, to)
            .unwrap_or_else(|e| panic!("connection {i} from {source}: {e}"));
        let mut c = Conn::from_stream(stream);
        c.try_send(request)
            .unwrap_or_else(|e| panic!("request on connection {i}: {e}"));
        conns.push(c);
    }
    conns
}

/// Closes `stream` with a reset (`SO_LINGER` 0) instead of a FIN.
pub fn reset(stream: TcpStream) {
    let sock = socket2::Socket::from(stream);
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(sock);
}

/// The `q`-quantile (0..=1) of `samples` (sorted in place); zero if empty.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i.min(samples.len() - 1)]
}

// ---------------------------------------------------------------------------------
// Malformed input: valid requests to mutate, mutations, a strict response reader
// ---------------------------------------------------------------------------------

/// Bytes of valid requests and mutations of them, for property tests against the parser
/// (`tests/parser_props.rs`) and against a live server (`tests/malformed_input.rs`).
pub mod fuzzing {
    use holdfast::http::chunked::ChunkedDecoder;
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// A request a server must answer normally; `expect[i]` lists the statuses allowed
    /// for the i-th final response. `admin` says which listener it is for.
    #[derive(Debug)]
    pub struct ValidRequest {
        pub admin: bool,
        pub bytes: &'static [u8],
        pub expect: &'static [&'static [u16]],
    }

    /// Polls never park here for long: every one carries `timeout=0`, or the server runs
    /// with a short `--max-poll-timeout`.
    pub const VALID_REQUESTS: &[ValidRequest] = &[
        ValidRequest {
            admin: false,
            bytes: b"GET /sub/fz?timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n",
            expect: &[&[204]],
        },
        ValidRequest {
            admin: false,
            bytes: b"GET /sub/fz,fy?since=0&timeout=0 HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n",
            expect: &[&[200, 204]],
        },
        ValidRequest {
            admin: false,
            bytes: b"GET /sub/fz?timeout=0 HTTP/1.1\r\nhost: x\r\nLast-Event-ID: 0\r\n\r\n",
            expect: &[&[200, 204]],
        },
        ValidRequest {
            admin: false,
            bytes: b"GET /sub/fz?timeout=0 HTTP/1.1\nHost: x\nConnection: close\n\n",
            expect: &[&[200, 204]],
        },
        ValidRequest {
            admin: false,
            bytes: b"GET /health HTTP/1.0\r\n\r\n",
            expect: &[&[200]],
        },
        ValidRequest {
            admin: false,
            bytes: b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /sub/fy?timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n",
            expect: &[&[200], &[204]],
        },
        ValidRequest {
            admin: true,
            bytes: b"POST /pub/fz HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
            expect: &[&[201]],
        },
        ValidRequest {
            admin: true,
            bytes: b"PUT /pub/fy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            expect: &[&[201]],
        },
        ValidRequest {
            admin: true,
            bytes: b"POST /pub/fz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
            expect: &[&[201]],
        },
        ValidRequest {
            admin: true,
            bytes: b"POST /pub/fz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n",
            expect: &[&[201]],
        },
        ValidRequest {
            admin: true,
            bytes: b"GET /pub/fz HTTP/1.1\r\nHost: x\r\n\r\nGET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            expect: &[&[200, 404], &[200]],
        },
        ValidRequest {
            admin: true,
            bytes: b"DELETE /pub/fq HTTP/1.1\r\nHost: x\r\n\r\n",
            expect: &[&[204, 404]],
        },
    ];

    /// Byte strings that parsers trip on, spliced in by [`Mutation::Token`].
    pub const TOKENS: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"\r",
        b"\r\n\r\n",
        b"\n\n",
        b"\n\r\n",
        b":",
        b" ",
        b"\t",
        b"\0",
        b"\xff\xfe",
        b"%00",
        b",",
        b"?",
        b"/",
        b"0",
        b"HTTP/1.0",
        b"HTTP/2.0",
        b"Content-Length: 99999999999999999999999\r\n",
        b"Content-Length: 3\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 1, 2\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Expect: 100-continue\r\n",
        b"Connection: close\r\n",
        b"Last-Event-ID: 18446744073709551616\r\n",
        b"ffffffffffffffffff\r\n",
        b"0\r\n\r\n",
        b"GET /health HTTP/1.1\r\n\r\n",
        b"X: y\r\n",
    ];

    /// One edit of a request's bytes; positions are fractions of the current length.
    #[derive(Debug, Clone)]
    pub enum Mutation {
        Truncate(Index),
        Flip(Index, u8),
        Delete(Index, u8),
        Insert(Index, Vec<u8>),
        Token(Index, Index),
        /// Repeat the `len` bytes at `at` `times` times (oversized lines and headers).
        Repeat {
            at: Index,
            len: u8,
            times: u16,
        },
    }

    pub fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            2 => any::<Index>().prop_map(Mutation::Truncate),
            3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
            1 => (any::<Index>(), 1u8..32).prop_map(|(i, n)| Mutation::Delete(i, n)),
            1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
                .prop_map(|(i, v)| Mutation::Insert(i, v)),
            3 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Mutation::Token(i, t)),
            1 => (any::<Index>(), 1u8..40, 1u16..1200)
                .prop_map(|(at, len, times)| Mutation::Repeat { at, len, times }),
        ]
    }

    /// Applies `m` to `bytes`.
    pub fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
        let at = |i: &Index, len: usize| i.index(len + 1);
        match m {
            Mutation::Truncate(i) => {
                let n = at(i, bytes.len());
                bytes.truncate(n);
            }
            Mutation::Flip(i, b) => {
                if !bytes.is_empty() {
                    let n = i.index(bytes.len());
                    bytes[n] = *b;
                }
            }
            Mutation::Delete(i, n) => {
                let start = at(i, bytes.len());
                let end = (start + usize::from(*n)).min(bytes.len());
                bytes.drain(start..end);
            }
            Mutation::Insert(i, v) => {
                let n = at(i, bytes.len());
                bytes.splice(n..n, v.iter().copied());
            }
            Mutation::Token(i, t) => {
                let n = at(i, bytes.len());
                let tok = TOKENS[t.index(TOKENS.len())];
                bytes.splice(n..n, tok.iter().copied());
            }
            Mutation::Repeat { at: i, len, times } => {
                let start = at(i, bytes.len());
                let end = (start + usize::from(*len)).min(bytes.len());
                let piece = bytes[start..end].to_vec();
                let extra: Vec<u8> = piece
                    .iter()
                    .copied()
                    .cycle()
                    .take(piece.len() * usize::from(*times))
                    .collect();
                bytes.splice(end..end, extra);
            }
        }
    }

    /// A valid request (its index in [`VALID_REQUESTS`]) with 0–3 mutations applied.
    pub fn mutated_request() -> impl Strategy<Value = (usize, Vec<Mutation>)> {
        (
            0..VALID_REQUESTS.len(),
            prop::collection::vec(mutation(), 0..4),
        )
    }

    pub fn mutated_bytes(index: usize, mutations: &[Mutation]) -> Vec<u8> {
        let mut bytes = VALID_REQUESTS[index].bytes.to_vec();
        for m in mutations {
            apply(&mut bytes, m);
        }
        bytes
    }

    /// One response as read off the wire.
    #[derive(Debug, Clone)]
    pub struct WireResponse {
        pub version: String,
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body_len: usize,
    }

    impl WireResponse {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        pub fn closes(&self) -> bool {
            self.header("connection")
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
        }

        pub fn is_event_stream(&self) -> bool {
            self.status == 200
                && self
                    .header("content-type")
                    .is_some_and(|v| v.starts_with("text/event-stream"))
        }
    }

    /// What [`parse_responses`] found in the bytes a server sent.
    #[derive(Debug)]
    pub struct WireParse {
        pub responses: Vec<WireResponse>,
        /// Bytes after the last complete response (empty when the stream ended cleanly;
        /// the open body of an event stream or of a close-delimited response otherwise).
        pub rest: usize,
        /// The last response's body runs to the end of the connection (event stream or
        /// close-delimited): nothing after it can be parsed as a response.
        pub open_body: bool,
    }

    /// Splits `bytes` into HTTP/1.x responses, checking each status line, header line
    /// and body framing. Err names the first thing that is not HTTP.
    pub fn parse_responses(bytes: &[u8]) -> Result<WireParse, String> {
        let mut responses = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Err(format!(
                    "incomplete response head: {:?}",
                    String::from_utf8_lossy(&rest[..rest.len().min(300)])
                ));
            };
            // RFC 9110 §5.5: a field value is visible ASCII, spaces, tabs and obs-text
            // (bytes 0x80 and up, e.g. a publisher's Content-Type passed through); no
            // other control byte. Names are tokens.
            let head_bytes = &rest[..end];
            if let Some(b) = head_bytes
                .iter()
                .find(|&&b| (b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n') || b == 0x7f)
            {
                return Err(format!(
                    "control byte {b:#04x} in response head {:?}",
                    String::from_utf8_lossy(head_bytes)
                ));
            }
            let head = String::from_utf8_lossy(head_bytes);
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            if !status_line.is_ascii() {
                return Err(format!("status line is not ASCII: {status_line:?}"));
            }
            let mut parts = status_line.splitn(3, ' ');
            let version = parts.next().unwrap_or_default().to_string();
            let status: u16 = parts
                .next()
                .filter(|s| s.len() == 3)
                .and_then(|s| s.parse().ok())
                .filter(|_| version == "HTTP/1.1" || version == "HTTP/1.0")
                .ok_or_else(|| format!("bad status line {status_line:?}"))?;
            let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            let mut headers = Vec::new();
            for line in lines {
                let (n, v) = line
                    .split_once(':')
                    .filter(|(n, _)| !n.is_empty() && n.chars().all(tchar))
                    .ok_or_else(|| format!("bad header line {line:?} in {head:?}"))?;
                headers.push((n.to_string(), v.trim().to_string()));
            }
            let mut resp = WireResponse {
                version,
                status,
                headers,
                body_len: 0,
            };
            pos += end + 4;
            let body = &bytes[pos..];
            if (100..200).contains(&status) || status == 204 || status == 304 {
                responses.push(resp);
                continue;
            }
            if resp.is_event_stream() {
                responses.push(resp);
                return Ok(WireParse {
                    responses,
                    rest: body.len(),
                    open_body: true,
                });
            }
            let chunked = resp
                .header("transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
            if chunked {
                let mut d = ChunkedDecoder::new();
                let mut out = Vec::new();
                let n = d
                    .decode(body, &mut out, u64::MAX)
                    .map_err(|e| format!("bad chunked response body: {e:?}"))?;
                if !d.is_done() {
                    return Err("chunked response body ends early".to_string());
                }
                resp.body_len = out.len();
                pos += n;
            } else if let Some(cl) = resp.header("content-length") {
                let n: usize = cl
                    .parse()
                    .map_err(|_| format!("bad Content-Length {cl:?}"))?;
                if body.len() < n {
                    return Err(format!(
                        "response {status} body ends after {} of {n} bytes",
                        body.len()
                    ));
                }
                resp.body_len = n;
                pos += n;
            } else {
                resp.body_len = body.len();
                responses.push(resp);
                return Ok(WireParse {
                    responses,
                    rest: 0,
                    open_body: true,
                });
            }
            responses.push(resp);
        }
        Ok(WireParse {
            responses,
            rest: 0,
            open_body: false,
        })
    }
}

/// Splits a response head (without the blank line) into version, status, reason and
/// headers; shared by the plain and the SSE client.
#[allow(clippy::type_complexity)]
fn parse_response_head(head: &str) -> io::Result<(String, u16, String, Vec<(String, String)>)> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_string();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| {
            io_err(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines {
        let (n, v) = line.split_once(':').ok_or_else(|| {
            io_err(
                io::ErrorKind::InvalidData,
                format!("bad header line {line:?}"),
            )
        })?;
        headers.push((n.to_string(), v.trim().to_string()));
    }
    Ok((version, status, reason, headers))
}
