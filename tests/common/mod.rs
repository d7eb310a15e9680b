//! Test harness: the simulator in-process and the real `emgate` binary as a
//! child process, both on ephemeral loopback ports, and a small HTTP client.
#![allow(dead_code)]

pub mod browser;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use emgate::sim::{Sim, SimConfig};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The password the simulator and the gateway agree on, unless a test says otherwise.
pub const PASSWORD: &str = "s3cret-Pa55word!";
/// The EM account.
pub const USERNAME: &str = "svc-emgate";

/// Longest wait for a gateway's `listening` line.
const START_WAIT: Duration = Duration::from_secs(20);

/// A simulator configuration for tests: TLS, few restore points, no latency.
pub fn sim_config() -> SimConfig {
    SimConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        tls: true,
        username: USERNAME.into(),
        password: PASSWORD.into(),
        restore_points: 200,
        ..SimConfig::default()
    }
}

/// A running `emgate serve` process.
pub struct Gateway {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every line it wrote to stderr (JSON log lines).
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Cleared to stop reading stderr, as a stuck log pipeline would.
    reading: Arc<std::sync::atomic::AtomicBool>,
    /// The settings file it was started with (`--config`), if any.
    pub settings_file: Option<std::path::PathBuf>,
    /// Folders it needs for its life (the settings file this harness
    /// wrote for it, a clients file), removed with the gateway.
    held: Vec<Scratch>,
}

impl Gateway {
    /// Starts `emgate serve` in front of `sim` with extra environment settings.
    pub fn start(sim: &Sim, extra_env: &[(&str, &str)]) -> Gateway {
        Gateway::start_with_file(sim, extra_env, None)
    }

    /// As [`Gateway::start`], with a settings file holding `toml` (for
    /// what only the file can say, such as `[[cache.rules]]`). An empty
    /// value in `extra_env` unsets the setting.
    pub fn start_with_file(sim: &Sim, extra_env: &[(&str, &str)], toml: Option<&str>) -> Gateway {
        let env = Gateway::settings(sim, extra_env);
        let written = toml.map(|text| {
            let dir = Scratch::new("settings");
            std::fs::write(dir.join("emgate.toml"), text).expect("write settings file");
            dir
        });
        let file = written.as_ref().map(|dir| dir.join("emgate.toml"));
        let mut gateway = Gateway::spawn_with(&env, file.as_deref(), None);
        gateway.held.extend(written);
        gateway
    }

    /// The tests' settings in front of `sim`, with `extra_env` over them.
    fn settings(sim: &Sim, extra_env: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("EMGATE_LISTEN".into(), "127.0.0.1:0".into()),
            ("EMGATE_UPSTREAM_URL".into(), sim.base_url()),
            ("EMGATE_UPSTREAM_USERNAME".into(), USERNAME.into()),
            ("EMGATE_UPSTREAM_PASSWORD".into(), PASSWORD.into()),
            ("EMGATE_UPSTREAM_TIMEOUT".into(), "5s".into()),
            ("EMGATE_UPSTREAM_LOGON_BACKOFF_MAX".into(), "300ms".into()),
            ("EMGATE_DRAIN_TIMEOUT".into(), "5s".into()),
            ("EMGATE_LOG".into(), "info".into()),
            ("EMGATE_LOG_FORMAT".into(), "json".into()),
        ];
        if let Some(pin) = sim.cert_sha256() {
            env.push(("EMGATE_UPSTREAM_CERT_SHA256".into(), pin));
        }
        // An empty value leaves the setting unset (the file's, or the default).
        for (k, v) in extra_env {
            env.retain(|(name, _)| name != k);
            if !v.is_empty() {
                env.push((k.to_string(), v.to_string()));
            }
        }
        // Fleet stories run beside other tests on a busy 2-core machine,
        // where a loopback Redis can take longer than the 250 ms default to
        // answer; the stories are about what the fleet does, not about
        // that bound (those that are set both settings themselves).
        let named = |n: &str| env.iter().any(|(k, _)| k == n);
        if named("EMGATE_SHARED_URL")
            && !named("EMGATE_SHARED_TIMEOUT")
            && !named("EMGATE_SHARED_LEASE")
        {
            env.push(("EMGATE_SHARED_TIMEOUT".into(), "1s".into()));
        }
        env
    }

    /// As [`Gateway::start`], with stderr appended to the file `log` (as
    /// `2>>emgate.log` does) instead of a pipe; its lines are read from
    /// the file as they come.
    pub fn start_logging_to(
        sim: &Sim,
        extra_env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Gateway {
        Gateway::spawn_with(&Gateway::settings(sim, extra_env), None, Some(log))
    }

    /// Keeps `dir` for as long as the gateway (a file it reads while it
    /// runs), then removes it.
    pub fn hold(&mut self, dir: Scratch) {
        self.held.push(dir);
    }

    /// Starts `emgate serve` with exactly these `EMGATE_*` settings.
    pub fn spawn(env: &[(String, String)]) -> Gateway {
        Gateway::spawn_with(env, None, None)
    }

    fn spawn_with(
        env: &[(String, String)],
        file: Option<&std::path::Path>,
        log: Option<&std::path::Path>,
    ) -> Gateway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_emgate"));
        cmd.arg("serve");
        if let Some(f) = file {
            cmd.arg("--config").arg(f);
        }
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("open the log file"),
            ),
            None => Stdio::piped(),
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, _) in std::env::vars() {
            if k.starts_with("EMGATE_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn emgate");
        let stderr: Box<dyn std::io::Read + Send> = match log {
            Some(path) => Box::new(Tail {
                file: std::fs::File::open(path).expect("read the log file"),
                until: Instant::now() + START_WAIT + Duration::from_secs(5),
            }),
            None => Box::new(child.stderr.take().expect("stderr")),
        };
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        let from_file = log.is_some();
        let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let still_reading = reading.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                while !still_reading.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let listening = listening_addr(&line);
                if let Some(addr) = listening {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                sink.lock().unwrap().push(line);
                // A log file is left alone once the gateway listens: reading
                // it would bring its pages back into memory (the test reads
                // it itself when it wants the lines).
                if listening.is_some() && from_file {
                    break;
                }
            }
        });
        let addr = match rx.recv_timeout(START_WAIT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let logs = logs.lock().unwrap();
                panic!("emgate did not start: {:?}", &logs[..logs.len().min(8)]);
            }
        };
        Gateway {
            child,
            addr,
            logs,
            reading,
            settings_file: file.map(std::path::Path::to_path_buf),
            held: Vec::new(),
        }
    }

    /// Stops reading the gateway's stderr: once the pipe is full, every
    /// write to it blocks, like a log shipper that has stopped.
    pub fn stop_reading_logs(&self) {
        self.reading
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// `http://ADDR`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// All log lines so far, joined.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The fields of the access line of the request with id `id`, once
    /// written (5 s at most), without those that differ per request
    /// (latency, id): `["GET", "path=...", "route=...", ...]`.
    pub async fn access_fields(&self, id: &str) -> Vec<String> {
        let tag = format!("request_id=\"{id}\"");
        let line = || {
            let logs = self.logs.lock().unwrap();
            let found = logs
                .iter()
                .find(|l| l.contains(" request method=") && l.contains(&tag));
            found.cloned()
        };
        let written = eventually(Duration::from_secs(5), || {
            let found = line().is_some();
            async move { found }
        })
        .await;
        assert!(written, "no access line for {id}: {}", self.log_text());
        let line = line().unwrap_or_default();
        let (_, fields) = line.split_once(" request method=").unwrap_or_default();
        fields
            .split(' ')
            .filter(|f| !f.starts_with("latency_ms=") && !f.starts_with("request_id="))
            .map(str::to_string)
            .collect()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "emgate did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its resident memory now, in KiB (Linux's `/proc`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends SIGHUP: reload the settings.
    pub fn hangup(&self) {
        self.signal("-HUP");
    }

    /// Freezes the process (SIGSTOP): it holds its state and does nothing,
    /// as a stalled container or a long GC pause would.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen process go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file read as it grows: at its end, waits for more rather than
/// ending, up to `until` (the gateway's stderr in a file, until its
/// `listening` line).
struct Tail {
    file: std::fs::File,
    /// Past it, the end of the file is the end: a gateway that never
    /// wrote its `listening` line (it exited, or the start timed out) must
    /// not leave this reader polling until the test process ends.
    until: Instant,
}

impl std::io::Read for Tail {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match std::io::Read::read(&mut self.file, buf)? {
                0 if Instant::now() >= self.until => return Ok(0),
                0 => std::thread::sleep(Duration::from_millis(10)),
                n => return Ok(n),
            }
        }
    }
}

/// The address in the `listening` line, JSON (the tests' default) or text
/// (`... INFO listening addr=127.0.0.1:PORT scheme=...`).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if let Some((_, rest)) = line.split_once(" INFO listening addr=") {
        return rest.split(' ').next()?.parse().ok();
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["message"] != "listening" {
        return None;
    }
    v["addr"].as_str()?.parse().ok()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text.
    pub body: String,
}

impl Reply {
    /// Its head without what differs per request (id, age, date), sorted.
    pub fn lasting_head(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(n, _)| !["x-request-id", "age", "date"].contains(&n.as_str()))
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        v.sort();
        v
    }

    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A plain-HTTP client for talking to the gateway.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Http {
    /// GET with extra headers.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, url, headers).await
    }

    /// Any bodiless request.
    pub async fn send(&self, method: Method, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.send_body(method, url, headers, "").await
    }

    /// A GET that may fail at the connection level (the gateway may close it).
    pub async fn try_get(&self, url: &str, headers: &[(&str, &str)]) -> Result<StatusCode, String> {
        let mut req = Request::builder().method(Method::GET).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match tokio::time::timeout(
            Duration::from_secs(30),
            self.client.request(req.body(Full::default()).unwrap()),
        )
        .await
        {
            Ok(Ok(r)) => Ok(r.status()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => panic!("no answer within 30 s"),
        }
    }

    /// A request with a body.
    pub async fn send_body(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        self.send_within(method, url, headers, body, Duration::from_secs(30))
            .await
    }

    /// A GET that may take up to `limit` (a very large answer).
    pub async fn get_within(&self, url: &str, headers: &[(&str, &str)], limit: Duration) -> Reply {
        self.send_within(Method::GET, url, headers, "", limit).await
    }

    /// A request with a body, answered within `limit`.
    pub async fn send_within(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
        limit: Duration,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = Full::new(Bytes::from(body.to_string()));
        let resp = tokio::time::timeout(limit, self.client.request(req.body(body).unwrap()))
            .await
            .unwrap_or_else(|_| panic!("the gateway did not answer within {limit:?}"))
            .expect("request");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// Polls `check` every 50 ms until it is true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits (up to 10 s) for the gateway's `/readyz` to answer 200.
pub async fn becomes_ready(http: &Http, gw: &Gateway) -> bool {
    let url = gw.url("/readyz");
    eventually(Duration::from_secs(10), || {
        let http = http.clone();
        let url = url.clone();
        async move { http.get(&url, &[]).await.status == StatusCode::OK }
    })
    .await
}

/// An EM-style logon to the gateway (`POST /api/sessionMngr/`, Basic
/// `name:secret`), which must answer 201: the gateway session token and the
/// reply.
pub async fn gateway_logon(http: &Http, gw: &Gateway, name: &str, secret: &str) -> (String, Reply) {
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{secret}"))
    );
    let reply = http
        .send(
            Method::POST,
            &gw.url("/api/sessionMngr/?v=latest"),
            &[("authorization", &basic)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let token = reply.headers["x-restsvcsessionid"]
        .to_str()
        .expect("a token")
        .to_string();
    (token, reply)
}

/// EM's session tokens as EM handed them to the gateway (every request
/// the simulator saw with one); at least one.
pub fn em_session_tokens(sim: &Sim) -> Vec<String> {
    let tokens: Vec<String> = sim
        .requests()
        .iter()
        .filter_map(|r| r.header("x-restsvcsessionid").map(str::to_string))
        .collect();
    assert!(!tokens.is_empty(), "EM was never asked with a session");
    tokens
}

/// Starts a simulator, failing the test if it cannot.
pub async fn start_sim(cfg: SimConfig) -> Sim {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Sim::start(cfg).await.expect("simulator starts")
}

/// An HTTPS client (HTTP/2 or HTTP/1.1 by ALPN) trusting one certificate.
pub struct Https {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Https {
    /// Trusts exactly `der`.
    pub fn trusting(der: &[u8]) -> Https {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_all_versions()
            .build();
        Https {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// A GET (on a new connection, unless this client holds one open):
    /// its status, or why it failed (a certificate it does not trust, say).
    pub async fn try_get(&self, url: &str) -> Result<StatusCode, String> {
        let req = Request::get(url).body(Full::default()).unwrap();
        match self.client.request(req).await {
            Ok(r) => Ok(r.status()),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    /// Sends a bodiless request; version, status, headers and body text.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> (http::Version, StatusCode, HeaderMap, String) {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .client
            .request(req.body(Full::default()).unwrap())
            .await
            .expect("https request");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.version,
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }
}

/// What came back on a raw TCP connection.
#[derive(Debug)]
pub struct RawReply {
    /// The status of the first response, if one came.
    pub status: Option<u16>,
    /// Everything read, as text.
    pub text: String,
    /// Whether the server closed the connection within the limit.
    pub closed: bool,
}

/// Sends `request` as is on a new connection and reads until the server
/// closes it or `limit` passes: for requests no HTTP client library sends.
pub async fn raw(addr: SocketAddr, request: &[u8], limit: Duration) -> RawReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok());
    RawReply {
        status,
        text,
        closed,
    }
}

/// The value of the sample whose line starts with `series` (name and labels).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split_whitespace().next() == Some(series))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A `redis-server` of the distribution's packages on an ephemeral loopback
/// port, persistence off; killed when dropped.
pub struct Redis {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Its password, if it has one.
    pub password: Option<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether `program` (a test dependency from the distribution's packages) is
/// installed. When it is not, the test skips with a note, unless
/// `EMGATE_TEST_REQUIRE_ALL` is set (as `.ci/run` does): then it fails, so CI
/// never passes by skipping.
pub fn installed(program: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    if !found {
        assert!(
            std::env::var_os("EMGATE_TEST_REQUIRE_ALL").is_none(),
            "{program} is not installed (apt-get install -y {package}; .ci/run installs it)"
        );
        eprintln!("SKIPPED: {program} is not installed (apt-get install -y {package})");
    }
    found
}

impl Redis {
    /// Starts one, or `None` (the test skips) when redis-server is not
    /// installed; see [`installed`].
    pub fn try_start() -> Option<Redis> {
        installed("redis-server", "redis-server").then(Redis::start)
    }

    /// As [`Redis::try_start`], with a password (`requirepass`).
    pub fn try_start_with_password(password: &str) -> Option<Redis> {
        installed("redis-server", "redis-server").then(|| {
            let mut r = Redis::start_with(free_port(), &["--requirepass", password]);
            r.password = Some(password.to_string());
            r
        })
    }

    /// As [`Redis::try_start`], with extra `redis-server` arguments (e.g.
    /// `--maxmemory 2mb --maxmemory-policy volatile-ttl`).
    pub fn try_start_with_args(args: &[&str]) -> Option<Redis> {
        installed("redis-server", "redis-server").then(|| Redis::start_with_args(args))
    }

    /// Starts one with extra `redis-server` arguments.
    pub fn start_with_args(args: &[&str]) -> Redis {
        Redis::start_with(free_port(), args)
    }

    /// Starts one (panics with a hint when redis-server is not installed).
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    /// Starts one on `port` (to restart a stopped one where it was).
    pub fn start_on(port: u16) -> Redis {
        Redis::start_with(port, &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server; .ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child: Some(child),
            port,
            password: None,
        }
    }

    /// `redis://127.0.0.1:PORT`, with `:password@` when it has one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Kills it at once (SIGKILL): Redis down.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// Runs `redis-cli` against it; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            cmd.env("REDISCLI_AUTH", p);
        }
        let out = cmd.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // A frozen one would not die of SIGKILL's reaping otherwise.
        self.resume();
        self.kill();
    }
}

/// A server on a loopback port that answers every connection with bytes
/// that are not RESP, then hangs up: a "Redis" that speaks garbage.
pub fn garbage_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in listener.incoming().map_while(Result::ok) {
            let mut b = [0u8; 512];
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = s.read(&mut b);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n\x00\xff{garbage}");
        }
    });
    port
}

impl Gateway {
    /// Sends SIGKILL: a replica that dies.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces `path`'s content at once (a temporary file renamed over
/// it), as editors and configuration tools do.
pub fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A folder of a test's own under the system's temporary folder, removed
/// with everything in it when dropped: a test run leaves nothing behind.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    /// A new, empty folder named after `name` (unique in the process).
    pub fn new(name: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("emgate-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a scratch folder");
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A clients file with `n` clients: the folder holding it (kept while the
/// test needs the file), its path, and the clients' names and secrets.
pub fn clients_file(tag: &str, n: usize) -> (Scratch, String, Vec<(String, String)>) {
    let dir = Scratch::new(&format!("clients-{tag}"));
    let creds: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                format!("client{i}"),
                format!("client-{i}-secret-0123456789"),
            )
        })
        .collect();
    let text: String = creds
        .iter()
        .map(|(name, secret)| {
            format!(
                "[[clients]]\nname = \"{name}\"\nsecret_sha256 = \"{}\"\n\n",
                emgate::digest::sha256_hex(secret.as_bytes())
            )
        })
        .collect();
    let path = dir.join("clients.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path, creds)
}

/// The sum of every sample of `name` (any labels) in the gateway's `/metrics`.
pub async fn metric_sum(http: &Http, gw: &Gateway, name: &str) -> f64 {
    let text = http.get(&gw.url("/metrics"), &[]).await.body;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let series = parts.next()?;
            (series == name || series.starts_with(&format!("{name}{{")))
                .then(|| parts.next()?.parse::<f64>().ok())
                .flatten()
        })
        .sum::<f64>()
        + 0.0
}

/// One kept-alive connection, as a client library or a load balancer in
/// front of the gateway holds one: every request goes over it.
pub struct OneConnection {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    /// `Host`, as any client sends it (the answer's links are made of it).
    host: String,
}

impl OneConnection {
    pub async fn open(gw: &Gateway) -> OneConnection {
        let addr = gw.url("").trim_start_matches("http://").to_string();
        let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        OneConnection { send, host: addr }
    }

    /// The status and `X-Cache` of a GET with this credential (a header:
    /// `Authorization`, `X-RestSvcSessionId`, `Cookie`) and request id.
    pub async fn get(
        &mut self,
        path: &str,
        credential: (&str, &str),
        id: &str,
    ) -> (StatusCode, String) {
        let req = http::Request::get(path)
            .header("host", &self.host)
            .header(credential.0, credential.1)
            .header("x-request-id", id)
            .body(http_body_util::Empty::new())
            .unwrap();
        self.send.ready().await.expect("the connection stayed open");
        let r = self
            .send
            .send_request(req)
            .await
            .expect("the connection stayed open");
        let cache = r
            .headers()
            .get("x-cache")
            .map_or("", |v| v.to_str().unwrap());
        (r.status(), cache.to_string())
    }
}
