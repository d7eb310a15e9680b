//! The whole request path of a cache hit, in memory: a request's bytes
//! written to an in-memory stream, hyper parsing them, emgate's stack
//! (request id, routing, client access, the rule, the cache, the answer's
//! head and body), hyper writing the answer, the answer read back. Beside
//! it, in the same run, a bare hyper server answering the same bytes with
//! the same headers over the same kind of stream: the floor of the stack.
//! No kernel, no sockets: what is left is the request path itself.
//!
//! - `floor`: bare hyper, one answer from memory;
//! - `hit_seen_target`: one key asked again and again (a dashboard);
//! - `hit_new_target`: 6,000 keys in turn, more than the gateway remembers
//!   resolved targets for per thread, so each is parsed, checked and keyed.
//!
//! Logging is not installed (an access line costs about 1 µs more, see
//! `benches/load.sh`, which runs the binary with its default log).
//!
//! Run: `cargo bench --bench request_path`.

mod support;

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use emgate::gateway::server::Gateway;
use emgate::sim::{Sim, SimConfig};
use http::{HeaderMap, Response};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Restore points of the simulator: more than the per-thread memo of
/// resolved targets holds (4,096).
const KEYS: usize = 6000;

/// A client end of an in-memory connection.
struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
}

impl Client {
    /// Sends `request` and reads the whole answer; its length.
    async fn exchange(&mut self, request: &[u8]) -> usize {
        self.io.write_all(request).await.expect("write");
        self.buf.clear();
        let mut head_end = None;
        let mut total = usize::MAX;
        while self.buf.len() < total {
            let n = self.io.read_buf(&mut self.buf).await.expect("read");
            assert!(n > 0, "the server closed the connection");
            if head_end.is_none() {
                if let Some(end) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                    let head = std::str::from_utf8(&self.buf[..end]).expect("head");
                    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .expect("content-length");
                    head_end = Some(end + 4);
                    total = end + 4 + length;
                }
            }
        }
        self.buf.len()
    }
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:9399\r\n\r\n").into_bytes()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim: Sim = rt.block_on(async {
        Sim::start(SimConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            tls: true,
            username: "bench".into(),
            password: "bench-password".into(),
            restore_points: KEYS,
            ..SimConfig::default()
        })
        .await
        .expect("simulator")
    });
    let (url, pin) = (sim.base_url(), sim.cert_sha256().unwrap_or_default());
    let settings = support::settings(&[
        ("EMGATE_LISTEN", "127.0.0.1:0"),
        ("EMGATE_UPSTREAM_URL", &url),
        ("EMGATE_UPSTREAM_USERNAME", "bench"),
        ("EMGATE_UPSTREAM_PASSWORD", "bench-password"),
        ("EMGATE_UPSTREAM_CERT_SHA256", &pin),
        ("EMGATE_CACHE_TTL", "1h"),
    ]);
    let paths: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| {
            request(&format!(
                "/api/restorePoints/{}/vmRestorePoints",
                sim.restore_point_id(i)
            ))
        })
        .collect();

    // The gateway on one end of an in-memory stream; every key fetched once.
    let (mut gateway, answer) = rt.block_on(async {
        let gw = Gateway::bind(settings).await.expect("gateway");
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let _ = gw.serve_http1(server, [127, 0, 0, 1].into()).await;
        });
        let mut client = Client {
            io: client,
            buf: Vec::new(),
        };
        for p in &paths {
            client.exchange(p).await;
        }
        client.exchange(&paths[0]).await;
        let answer = client.buf.clone();
        let head = String::from_utf8_lossy(&answer[..answer.len().min(2048)]).to_lowercase();
        assert!(head.contains("x-cache: hit"), "not a hit: {head}");
        (client, answer)
    });

    // The floor: the same head (but the date, added by hyper) and body.
    let (head, body) = {
        let end = memchr::memmem::find(&answer, b"\r\n\r\n").expect("head") + 4;
        let mut headers = HeaderMap::new();
        for line in std::str::from_utf8(&answer[..end - 4])
            .expect("head")
            .lines()
            .skip(1)
        {
            let (k, v) = line.split_once(": ").expect("header");
            if !["date", "content-length"].contains(&k.to_ascii_lowercase().as_str()) {
                headers.append(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    v.parse().expect("value"),
                );
            }
        }
        (headers, Bytes::copy_from_slice(&answer[end..]))
    };
    let mut floor = rt.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                let mut r = Response::new(Full::new(body.clone()));
                *r.headers_mut() = head.clone();
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        Client {
            io: client,
            buf: Vec::new(),
        }
    });

    let mut group = c.benchmark_group("request_path");
    group.bench_function("floor", |b| {
        b.iter(|| black_box(rt.block_on(floor.exchange(&paths[0]))))
    });
    group.bench_function("hit_seen_target", |b| {
        b.iter(|| black_box(rt.block_on(gateway.exchange(&paths[0]))))
    });
    let mut next = 0;
    group.bench_function("hit_new_target", |b| {
        b.iter(|| {
            next = (next + 1) % paths.len();
            black_box(rt.block_on(gateway.exchange(&paths[next])))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
