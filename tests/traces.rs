//! Following a slow request to EM in the tracing system the platform runs:
//! with `EMGATE_OTLP_ENDPOINT`, each request is a span (its client's trace
//! continued), with children down to EM's request, which carries the
//! trace on; no secret is in any of it; a collector that is down costs
//! requests nothing.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// A small OTLP/HTTP collector: every span it was sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start() -> (Collector, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let spans = collector.spans.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let spans = spans.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let spans = spans.clone();
                            async move {
                                assert_eq!(req.uri().path(), "/v1/traces");
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let export = ExportTraceServiceRequest::decode(body).unwrap();
                                for r in export.resource_spans {
                                    for s in r.scope_spans {
                                        spans.lock().unwrap().extend(s.spans);
                                    }
                                }
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .header("content-type", "application/x-protobuf")
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (collector, addr)
    }

    fn named(&self, name: &str) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }
}

/// A span's attribute as text.
fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_a_trace_from_the_client_through_emgate_to_em_without_secrets() {
    let (collector, addr) = Collector::start().await;
    let sim = start_sim(sim_config()).await;
    let (_clients_dir, file, clients) = clients_file("traces", 1);
    let (name, secret) = &clients[0];
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_OTLP_ENDPOINT", &format!("http://{addr}")),
            ("EMGATE_CLIENTS_FILE", &file),
        ],
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    let (token, _) = gateway_logon(&http, &gw, name, secret).await;
    let path = format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(3)
    );
    let parent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let r = http
        .get(
            &gw.url(&path),
            &[
                ("x-restsvcsessionid", &token),
                ("traceparent", &parent),
                ("x-request-id", "a-request-to-follow"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-cache"), "MISS");
    // A hit is a request span too.
    let hit = http
        .get(&gw.url(&path), &[("x-restsvcsessionid", &token)])
        .await;
    assert_eq!(hit.header("x-cache"), "HIT");

    let exported = eventually(Duration::from_secs(10), || async {
        collector.named("request").len() >= 2 && !collector.named("em_request").is_empty()
    })
    .await;
    let names: Vec<String> = collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {:?} {:?}",
                s.name,
                attribute(s, "http.request.method"),
                attribute(s, "cache")
            )
        })
        .collect();
    assert!(exported, "spans at the collector: {names:?}");
    let all = collector.spans.lock().unwrap().clone();
    let request = collector
        .named("request")
        .into_iter()
        .find(|s| hex(&s.trace_id) == TRACE)
        .expect("the client's trace continued");
    assert_eq!(hex(&request.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(attribute(&request, "cache").as_deref(), Some("MISS"));
    assert_eq!(
        attribute(&request, "client").as_deref(),
        Some(name.as_str())
    );
    assert_eq!(
        attribute(&request, "rule").as_deref(),
        Some("vm_restore_points")
    );
    assert_eq!(
        attribute(&request, "request_id").as_deref(),
        Some("a-request-to-follow")
    );
    assert_eq!(
        attribute(&request, "route").as_deref(),
        Some("/api/restorePoints/{id}/vmRestorePoints")
    );
    // EM's request is in the same trace, below the request's span.
    let em = all
        .iter()
        .find(|s| s.name == "em_request" && hex(&s.trace_id) == TRACE)
        .expect("EM's request in the trace");
    let mut up = em.parent_span_id.clone();
    let mut chain = Vec::new();
    while let Some(p) = all.iter().find(|s| s.span_id == up) {
        chain.push(p.name.clone());
        up = p.parent_span_id.clone();
    }
    assert!(
        chain.contains(&"cache_lookup".to_string())
            && chain.last().map(String::as_str) == Some("request"),
        "{chain:?}"
    );
    assert_eq!(
        attribute(em, "http.response.status_code").as_deref(),
        Some("200")
    );
    // EM was told the trace.
    let seen = sim
        .requests()
        .into_iter()
        .find(|q| {
            q.path_and_query
                .to_ascii_lowercase()
                .starts_with(&path.to_ascii_lowercase())
        })
        .unwrap();
    let sent = seen.header("traceparent").unwrap_or("").to_string();
    assert!(sent.starts_with(&format!("00-{TRACE}-")), "{sent:?}");
    // No secret anywhere: the client's secret and session, EM's password,
    // EM's session token (EM's answer to the logon), nor the id of EM's
    // session (its keep-alive's path is a template).
    let dump = format!("{all:?}");
    let em_tokens = em_session_tokens(&sim);
    for s in [secret.as_str(), token.as_str(), PASSWORD]
        .into_iter()
        .chain(em_tokens.iter().map(String::as_str))
    {
        assert!(!dump.contains(s), "a secret in the spans");
    }
    for span in all.iter().filter(|s| s.name == "em_request") {
        let path = attribute(span, "url.path").unwrap_or_default();
        assert!(
            !path.to_ascii_lowercase().starts_with("/api/logonsessions/")
                || path == "/api/logonSessions/{id}",
            "{path}"
        );
    }
    sim.shutdown().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_silent_requests_are_unaffected_and_memory_stays_bounded() {
    // A collector that takes connections and never answers (worse than
    // one that is down: each export waits for its timeout).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[("EMGATE_OTLP_ENDPOINT", &format!("http://{closed}"))],
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    let path = format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(1)
    );
    let first = http.get(&gw.url(&path), &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(
        !gw.log_text().contains("traces are off"),
        "{}",
        gw.log_text()
    );
    let mut rounds = Vec::new();
    for _ in 0..3 {
        // 5,000 requests a round, 8 at a time: two spans each.
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (http, url) = (http.clone(), gw.url(&path));
                tokio::spawn(async move {
                    for _ in 0..625 {
                        let r = http.get_within(&url, &[], Duration::from_secs(2)).await;
                        assert_eq!(r.status, StatusCode::OK);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        rounds.push(gw.rss_kib());
    }
    assert!(rounds[0] > 0, "no RSS read");
    // 30,000 spans made, none taken: the queue holds 2,048 at most, so
    // the last two rounds (20,000 spans, tens of MiB if they were kept)
    // do not grow what the first held.
    assert!(
        rounds[2] < rounds[0] + 8 * 1024,
        "memory grew with spans nobody takes: {rounds:?} KiB"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_answering_garbage_costs_requests_nothing() {
    let port = garbage_server();
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[("EMGATE_OTLP_ENDPOINT", &format!("http://127.0.0.1:{port}"))],
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    let path = format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(2)
    );
    // Several export rounds (every 0.5 s) meet the garbage meanwhile.
    for _ in 0..40 {
        let r = http
            .get_within(&gw.url(&path), &[], Duration::from_secs(2))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut gw = gw;
    assert!(gw.is_running());
    assert!(!gw.log_text().contains("traces are off"));
    sim.shutdown().await;
}
