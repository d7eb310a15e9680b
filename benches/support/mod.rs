//! What the process-level benchmarks share: the simulator in-process, the
//! release `emgate` binary (and `redis-server`) as child processes on
//! loopback ports, a plain HTTP client.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use emgate::sim::{Sim, SimConfig};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A plain HTTP/1.1 client.
pub type Http = Client<HttpConnector, Full<Bytes>>;

/// A new client with its own connection pool.
pub fn http() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Settings from these `EMGATE_*` values alone (no file, not the process
/// environment), validated as `emgate serve` validates them.
pub fn settings(values: &[(&str, &str)]) -> emgate::config::Settings {
    let values: Vec<(String, String)> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = move |k: &str| {
        values
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    };
    emgate::config::Settings::load(&emgate::config::Sources {
        file: None,
        demo: &[],
        env: &env,
    })
    .expect("settings")
}

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A number from the environment (`60` or `60s`), or the default.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .unwrap_or(default)
}

/// The simulator over TLS, 2000 restore points, no latency.
pub async fn sim() -> Sim {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Sim::start(SimConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        tls: true,
        username: "bench".into(),
        password: "bench-password".into(),
        restore_points: 2000,
        ..SimConfig::default()
    })
    .await
    .expect("simulator")
}

/// `emgate serve` in front of `sim` with these extra settings; its base URL.
pub fn gateway(sim: &Sim, extra: &[(&str, &str)]) -> (Proc, String) {
    let port = free_port();
    (
        gateway_on(sim, port, extra),
        format!("http://127.0.0.1:{port}"),
    )
}

/// As [`gateway`], on `port` (a gateway started again where it was).
pub fn gateway_on(sim: &Sim, port: u16, extra: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emgate"));
    cmd.arg("serve")
        .env_clear()
        .env("EMGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("EMGATE_UPSTREAM_URL", sim.base_url())
        .env("EMGATE_UPSTREAM_USERNAME", "bench")
        .env("EMGATE_UPSTREAM_PASSWORD", "bench-password")
        .env(
            "EMGATE_UPSTREAM_CERT_SHA256",
            sim.cert_sha256().unwrap_or_default(),
        )
        .env("EMGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("emgate"))
}

/// A `redis-server` without persistence; its port.
pub fn redis() -> (Proc, u16) {
    let port = free_port();
    (redis_on(port), port)
}

/// As [`redis`], on `port` (a Redis started again, empty, where it was).
pub fn redis_on(port: u16) -> Proc {
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
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on the PATH (apt-get install redis-server)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child)
}

/// One GET: its status (0: no answer) and how long it took, body read.
pub async fn get(http: &Http, url: &str) -> (u16, Duration) {
    let t = Instant::now();
    match http.get(url.parse().expect("url")).await {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.into_body().collect().await;
            (s, t.elapsed())
        }
        Err(_) => (0, t.elapsed()),
    }
}

/// Waits until the gateway at `base` holds its EM session.
pub async fn ready(http: &Http, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(http, &format!("{base}/readyz")).await.0 != 200 {
        assert!(Instant::now() < deadline, "{base} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
