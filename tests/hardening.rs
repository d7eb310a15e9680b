//! A hostile client and a bad day at EM: what reaches EM, what a quiet
//! socket costs, what a hanging EM costs, and how the EM session is guarded.
//! Raw sockets where an HTTP library would not send what an attacker does.

mod common;

use std::time::{Duration, Instant};

use common::*;
use emgate::sim::{Fault, FaultTarget};
use http::{Method, StatusCode};

fn get(target: &str, host: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Waits (up to 10 s) until the gateway holds an EM session, then forgets
/// what EM has seen so far.
async fn settled(sim: &emgate::sim::Sim, gw: &Gateway, http: &Http) {
    assert!(becomes_ready(http, gw).await, "gateway never became ready");
    // The gateway reads EM's entry point once after its logon (the API
    // versions on the status page); on a busy machine that comes after
    // readiness, and must not count as a request of the story.
    eventually(Duration::from_secs(3), || async {
        sim.requests()
            .iter()
            .any(|r| r.path_and_query == "/api/" || r.path_and_query == "/api")
    })
    .await;
    sim.clear_requests();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_targets_get_400_and_never_reach_em_and_em_gets_canonical_ones() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    let rp = sim.restore_point_id(3);
    let hostile = [
        "/api/%zz",
        "/api/jobs/%G1",
        "/api/jobs/%",
        "/api/jobs/%2",
        "/api/jobs/%2x",
        "/api/logon%u0053essions",
        "/api/jobs/%u002e%u002e/logonSessions",
        "/api/%u002e%u002e/admin",
        "/api/%2e%2e/logonSessions",
        "/api/%2E%2E/logonSessions",
        "/api/jobs/%2e",
        "/api/jobs%2flogonSessions",
        "/api/jobs%2FlogonSessions",
        "/api/jobs%5clogonSessions",
        "/api/jobs%5C..%5ClogonSessions",
        "/api/jobs/%252e%252e/logonSessions",
        "/api/jobs/%25",
        "/api/jobs/a%00b",
        "/api/jobs/a%0d%0aX-Injected:%20yes",
        "/api/jobs/%7f",
        "/api/jobs/%c3%28",
        "/api/jobs/%ff",
        "/api/../admin/cache",
        "/api/./logonSessions",
        "/api/jobs/..",
        "/api/jobs/.",
        "/api//logonSessions",
        "/api/jobs//x",
        "/api//sessionMngr/?v=latest",
        "/api/jobs?filter=%zz",
        "/api/jobs?a=%",
        "/api/jobs?a=%0a",
        "/api/jobs?a=%25",
        "/api/jobs?%u0061=1",
        "/apix",
        "/api%2f",
    ];
    for target in hostile {
        let reply = raw(gw.addr, &get(target, "localhost"), Duration::from_secs(5)).await;
        let status = reply.status.unwrap_or(0);
        assert!(
            (400..500).contains(&status) || (reply.status.is_none() && reply.closed),
            "{target}: {status} {}",
            reply.text
        );
    }
    let long = format!("/api/jobs/{}", "a".repeat(3000));
    let reply = raw(gw.addr, &get(&long, "localhost"), Duration::from_secs(5)).await;
    assert!(
        reply.status.is_some_and(|s| (400..500).contains(&s)),
        "{}",
        reply.text
    );
    assert!(
        sim.requests().is_empty(),
        "hostile targets reached EM: {:?}",
        sim.requests()
            .iter()
            .map(|r| r.path_and_query.clone())
            .collect::<Vec<_>>()
    );

    // Escapes of plain characters are decoded once; EM is sent the canonical form.
    let sent = format!("/api/restorePoints/{rp}/vm%52estorePoints?%66ormat=%45ntity&v=latest");
    let reply = raw(gw.addr, &get(&sent, "localhost"), Duration::from_secs(5)).await;
    assert_eq!(reply.status, Some(200), "{}", reply.text);
    let seen: Vec<String> = sim
        .requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(
        seen,
        [format!(
            "/api/restorePoints/{rp}/vmRestorePoints?format=Entity"
        )],
        "EM was not sent the canonical target"
    );
    let reply = raw(
        gw.addr,
        &get("/api/catalog/vms/web%20server%2301", "localhost"),
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.status.is_some());
    assert!(sim
        .requests()
        .iter()
        .any(|r| r.path_and_query == "/api/catalog/vms/web%20server%2301"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_name_no_single_valid_host_get_400_and_never_reach_em() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    let path = format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(1)
    );
    let cases = [
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: gw\r\nHost: gw\r\n\r\n"),
        format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: a b\r\n\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: a@evil.example\r\n\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: \"gw\"\r\n\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: gw/x\r\n\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: gw:99999\r\n\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: \r\n\r\n"),
        format!("GET http://evil.example{path} HTTP/1.1\r\nHost: gw\r\n\r\n"),
        // HTTP/1.1 needs Host even when the target names one (RFC 9112 3.2).
        format!("GET http://evil.example{path} HTTP/1.1\r\n\r\n"),
        format!("GET http://localhost{path} HTTP/1.1\r\nConnection: close\r\n\r\n"),
    ];
    for request in &cases {
        let reply = raw(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            reply.status.is_some_and(|s| s == 400 || s == 421),
            "{request:?}: {}",
            reply.text
        );
        assert!(reply.closed, "{request:?}: the connection stayed open");
    }
    assert!(sim.requests().is_empty(), "{:?}", sim.requests());

    // HTTP/1.0 may name no host; links then use the bound address.
    let reply = raw(
        gw.addr,
        format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(reply.status, Some(200), "{}", reply.text);
    assert!(reply.text.contains(&format!("http://{}/api/", gw.addr)));
    // An absolute-form target that agrees with Host is fine (a loopback
    // name: this gateway is anonymous).
    let reply = raw(
        gw.addr,
        format!(
            "GET http://localhost{path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(reply.status, Some(200), "{}", reply.text);
    assert!(reply.text.contains("http://localhost/api/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_id_is_replaced_never_echoed_logged_or_sent_to_em() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    let long = "a".repeat(129);
    for bad in [long.as_str(), "<script>alert(1)</script>", "id with spaces"] {
        let reply = http
            .get(&gw.url("/api/managedServers"), &[("x-request-id", bad)])
            .await;
        let given = reply.headers["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(given, bad);
        assert_eq!(given.len(), 32, "{given}");
        assert!(!gw.log_text().contains(bad), "logged: {bad}");
        assert!(sim
            .requests()
            .iter()
            .all(|r| r.header("x-request-id") != Some(bad)));
    }
    let good = "dash-board.7:a_b";
    let reply = http
        .get(&gw.url("/api/managedServers"), &[("x-request-id", good)])
        .await;
    assert_eq!(reply.headers["x-request-id"], good);
    assert!(sim
        .requests()
        .iter()
        .any(|r| r.header("x-request-id") == Some(good)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_connections_are_closed_on_time_and_2000_of_them_stop_nobody() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_HEADER_TIMEOUT", "2s"),
            ("EMGATE_IDLE_TIMEOUT", "2s"),
        ],
    );
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    let opened = Instant::now();
    let mut quiet = Vec::new();
    for _ in 0..2000 {
        quiet.push(
            tokio::net::TcpStream::connect(gw.addr)
                .await
                .expect("connect"),
        );
    }
    // A normal client is served at once, beside 2,000 silent sockets.
    let started = Instant::now();
    let reply = http.get(&gw.url("/api/"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        opened.elapsed() < Duration::from_secs(4),
        "opening took longer than the header timeout: the machine is too busy to test this"
    );
    // A connection that sent half a head is closed like a silent one.
    let partial = raw(
        gw.addr,
        b"GET /api/ HTTP/1.1\r\nHost: gw\r\n",
        Duration::from_secs(8),
    )
    .await;
    assert!(partial.closed, "a half-sent head was held open");
    // Every silent socket is closed by the gateway after the header timeout.
    use tokio::io::AsyncReadExt;
    for s in quiet.iter_mut() {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(8), s.read(&mut b)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection stayed open"
        );
    }
    // An idle keep-alive connection goes after the idle timeout.
    let idle = raw(
        gw.addr,
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n",
        Duration::from_secs(6),
    )
    .await;
    assert_eq!(idle.status, Some(200));
    assert!(idle.closed, "an idle connection was held open");
    let m = http.get(&gw.url("/metrics"), &[]).await.body;
    assert!(
        sample(&m, "emgate_connections_closed_total{reason=\"no_request\"}").unwrap_or(0.0)
            >= 2000.0,
        "{m}"
    );
}

/// README: "any later head within this of its start". A kept-alive
/// HTTP/1 connection that starts its next head and stalls, or sends none,
/// is closed after the header timeout, not the (longer) idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_head_that_stalls_is_cut_at_the_header_timeout_not_the_idle_timeout() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_HEADER_TIMEOUT", "1s"),
            ("EMGATE_IDLE_TIMEOUT", "30s"),
        ],
    );
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    let answered_then = |second: &'static [u8]| {
        let mut bytes = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec();
        bytes.extend_from_slice(second);
        bytes
    };
    for (what, second) in [
        (
            "half a second head",
            &b"GET /healthz HTTP/1.1\r\nHost: gw\r\n"[..],
        ),
        ("no second head", &b""[..]),
    ] {
        let started = Instant::now();
        let reply = raw(gw.addr, &answered_then(second), Duration::from_secs(10)).await;
        assert_eq!(reply.status, Some(200), "{what}: {}", reply.text);
        assert!(reply.closed, "{what}: held open past 10 s");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{what}: closed after {took:?}, not the header timeout (1 s)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_after_the_tls_handshake_is_closed_on_time() {
    let dir = Scratch::new("hard-tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_TLS_CERT_FILE", cert_path.to_str().unwrap()),
            ("EMGATE_TLS_KEY_FILE", key_path.to_str().unwrap()),
            ("EMGATE_HEADER_TIMEOUT", "1s"),
        ],
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("handshake");
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut b)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "held open: {n:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_ones_wait_in_the_backlog() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_MAX_CONNECTIONS", "10"),
            ("EMGATE_HEADER_TIMEOUT", "2s"),
            ("EMGATE_IDLE_TIMEOUT", "1s"),
        ],
    );
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    // The readiness check's connection goes after the idle timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut quiet = Vec::new();
    for _ in 0..10 {
        quiet.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let reply = raw(gw.addr, &get("/healthz", "gw"), Duration::from_secs(10)).await;
    assert_eq!(reply.status, Some(200));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1200),
        "served at once past the cap ({waited:?})"
    );
    drop(quiet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_methods_never_served_get_405_and_the_connection_closes() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    for request in [
        "CONNECT em.example:9398 HTTP/1.1\r\nHost: em.example:9398\r\n\r\n",
        "TRACE /api/ HTTP/1.1\r\nHost: gw\r\n\r\n",
        "OPTIONS /api/jobs HTTP/1.1\r\nHost: gw\r\n\r\n",
        "BREW /api/jobs HTTP/1.1\r\nHost: gw\r\n\r\n",
    ] {
        let reply = raw(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(reply.status, Some(405), "{request:?}: {}", reply.text);
        assert!(reply.closed, "{request:?}: the connection stayed open");
    }
    assert!(sim.requests().is_empty(), "{:?}", sim.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_at_once_while_em_hangs_and_em_work_is_queued_then_refused() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_MAX_CONCURRENCY", "4"),
            ("EMGATE_UPSTREAM_CONCURRENCY", "2"),
            ("EMGATE_UPSTREAM_QUEUE_WAIT", "1s"),
            ("EMGATE_UPSTREAM_TIMEOUT", "120s"),
        ],
    );
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    sim.set_fault(FaultTarget::Data, Some(Fault::Hang));
    let mut stuck = Vec::new();
    for i in 0..8 {
        let http = http.clone();
        let url = gw.url(&format!("/api/jobs?page={i}"));
        stuck.push(tokio::spawn(async move {
            let started = Instant::now();
            let reply = http.send(Method::GET, &url, &[]).await;
            (reply, started.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let started = Instant::now();
        let reply = http.get(&gw.url(probe), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{probe}: {}", reply.body);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{probe} took {:?}",
            started.elapsed()
        );
    }
    // Two requests hold EM's places; the next two wait a second for one
    // and are refused with Retry-After (the other four wait for a place to
    // work at all, then fare the same).
    let mut refused = 0;
    for task in stuck.iter_mut().take(8) {
        if let Ok(Ok((reply, took))) = tokio::time::timeout(Duration::from_secs(4), task).await {
            assert_eq!(
                reply.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                reply.body
            );
            assert!(reply.headers.contains_key("retry-after"));
            assert!(took >= Duration::from_millis(900), "{took:?}");
            refused += 1;
        }
    }
    assert_eq!(
        refused, 6,
        "all but the two holding EM's places are refused"
    );
    sim.set_fault(FaultTarget::All, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn em_answers_share_one_memory_budget_and_head_holds_none() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_UPSTREAM_MAX_BODY", "16KiB"),
            ("EMGATE_UPSTREAM_MEMORY", "48KiB"),
            ("EMGATE_UPSTREAM_QUEUE_WAIT", "300ms"),
            ("EMGATE_UPSTREAM_TIMEOUT", "60s"),
        ],
    );
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    sim.set_path_fault("/api/restorePoints/", Some(Fault::Stall));
    let mut answers = Vec::new();
    for i in 0..24 {
        let http = http.clone();
        let url = gw.url(&format!(
            "/api/restorePoints/{}/vmRestorePoints?format=Entity",
            sim.restore_point_id(i)
        ));
        answers.push(tokio::spawn(async move { http.get(&url, &[]).await }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = http.get(&gw.url("/metrics"), &[]).await.body;
    let held = sample(&m, "emgate_upstream_memory_bytes").unwrap();
    assert!(held <= 48.0 * 1024.0, "over budget: {held}");
    assert!(
        held >= 24.0 * 1024.0,
        "the stalled answers hold nothing? {held}"
    );
    // Those that found no room were refused after the queue wait.
    let mut refused = 0;
    for a in answers.iter_mut() {
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_millis(100), a).await {
            assert_eq!(
                reply.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                reply.body
            );
            assert!(reply.headers.contains_key("retry-after"));
            refused += 1;
        }
    }
    assert!(refused >= 1, "nobody was refused: {m}");
    // A HEAD holds no room (see the next test), so it is served with the budget full.
    let head = http.send(Method::HEAD, &gw.url("/api/"), &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_reads_ems_body_without_holding_it() {
    use emgate::config::{Settings, Sources};
    use emgate::em::client::{Lane, Upstream};
    let sim = start_sim(sim_config()).await;
    let pin = sim.cert_sha256().unwrap();
    let base = sim.base_url();
    let env = move |k: &str| match k {
        "EMGATE_UPSTREAM_URL" => Some(base.clone()),
        "EMGATE_UPSTREAM_USERNAME" => Some(USERNAME.to_string()),
        "EMGATE_UPSTREAM_PASSWORD" => Some(PASSWORD.to_string()),
        "EMGATE_UPSTREAM_CERT_SHA256" => Some(pin.clone()),
        _ => None,
    };
    let settings = Settings::load(&Sources {
        file: None,
        demo: &[],
        env: &env,
    })
    .unwrap();
    let upstream = Upstream::new(&settings.upstream).unwrap();
    let get = upstream
        .send(Lane::Client, Method::GET, "/api/", http::HeaderMap::new())
        .await
        .unwrap();
    assert!(!get.body.is_empty());
    assert_eq!(get.held.bytes(), get.body.len());
    assert_eq!(upstream.memory_held(), get.body.len());
    drop(get);
    assert_eq!(upstream.memory_held(), 0);
    let head = upstream
        .send_discarding_body("/api/", http::HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.held.bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_comes_within_the_stale_wait_while_em_hangs() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_CACHE_TTL", "1s"),
            ("EMGATE_CACHE_STALE_WHILE_REVALIDATE", "0s"),
            ("EMGATE_CACHE_STALE_WAIT", "1s"),
            ("EMGATE_UPSTREAM_TIMEOUT", "120s"),
        ],
    );
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    let url = gw.url(&format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(5)
    ));
    let first = http.get(&url, &[]).await;
    assert_eq!(first.headers["x-cache"], "MISS");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    sim.set_fault(FaultTarget::Data, Some(Fault::Hang));
    sim.clear_requests();
    let started = Instant::now();
    let stale = http.get(&url, &[]).await;
    let took = started.elapsed();
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.headers["x-cache"], "STALE");
    assert_eq!(stale.body, first.body);
    assert!(took <= Duration::from_millis(1500), "{took:?}");
    // The refresh goes on; later requests get the copy without waiting again
    // and without asking EM again.
    for _ in 0..5 {
        let started = Instant::now();
        let again = http.get(&url, &[]).await;
        assert_eq!(again.headers["x-cache"], "STALE");
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(sim.requests().len(), 1, "{:?}", sim.requests());
    sim.set_fault(FaultTarget::All, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resources_own_401_is_passed_on_and_makes_no_logon() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    sim.set_path_fault("/api/jobs", Some(Fault::Status(401)));
    for _ in 0..20 {
        let reply = http.get(&gw.url("/api/jobs"), &[]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
        assert!(!reply.headers.contains_key("www-authenticate"));
    }
    let stats = sim.stats();
    assert_eq!(stats.logons_ok, 1, "a resource's 401 caused logons");
    let checks = sim
        .requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/api/logonSessions"))
        .count();
    assert!((1..=20).contains(&checks), "{checks} session checks");
    let m = http.get(&gw.url("/metrics"), &[]).await.body;
    assert!(
        sample(&m, "emgate_upstream_session_checks_total{result=\"alive\"}").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    let ok = http
        .get(
            &gw.url(&format!(
                "/api/restorePoints/{}/vmRestorePoints",
                sim.restore_point_id(1)
            )),
            &[],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logons_pause_so_the_em_account_is_not_locked() {
    let mut cfg = sim_config();
    cfg.password = "the-rotated-password".into();
    let sim = start_sim(cfg).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    // The harness caps the backoff at 300 ms: three refusals come quickly.
    let paused = eventually(Duration::from_secs(10), || {
        let sim = &sim;
        async move { sim.stats().logons_failed >= 3 }
    })
    .await;
    assert!(paused);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_three = sim.stats().logons_failed;
    let ready = http.get(&gw.url("/readyz"), &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = ready.json();
    assert_eq!(body["ready"], false);
    assert_eq!(body["em_session"], "failing");
    assert_eq!(body["logons_paused"], true, "{body}");
    assert!(body["retry_in_s"].as_u64().unwrap() >= 500, "{body}");
    for _ in 0..10 {
        let reply = http.get(&gw.url("/api/jobs"), &[]).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        let wait: u64 = reply.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(wait >= 500, "{wait}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sim.stats().logons_failed,
        after_three,
        "logons went on after repeated refusals"
    );
    assert_eq!(after_three, 3);
    let m = http.get(&gw.url("/metrics"), &[]).await.body;
    assert_eq!(
        sample(&m, "emgate_upstream_logons_paused"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "emgate_upstream_logons_total{result=\"refused\"}"),
        Some(3.0),
        "{m}"
    );
    assert!(!gw.log_text().contains("the-rotated-password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_session_is_logged_out_and_re_logons_are_rate_limited() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    let url = gw.url("/api/restorePoints");
    let mut refused = 0;
    for _ in 0..5 {
        sim.expire_all_sessions();
        let reply = http.get(&url, &[]).await;
        match reply.status {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(reply.headers.contains_key("retry-after"));
                refused += 1;
            }
            other => panic!("{other}: {}", reply.body),
        }
    }
    // One logon at start, then a burst of three re-logons; the rest wait.
    assert_eq!(sim.stats().logons_ok, 4, "{:?}", sim.stats());
    assert_eq!(refused, 2);
    let logouts = || {
        sim.requests()
            .iter()
            .filter(|r| r.method == "DELETE" && r.path_and_query.starts_with("/api/logonSessions/"))
            .count()
    };
    let all_three = eventually(Duration::from_secs(5), || {
        let n = logouts();
        async move { n == 3 }
    })
    .await;
    assert!(
        all_three,
        "{} replaced sessions logged out, not 3",
        logouts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_takes_bearer_or_basic_and_is_rate_limited() {
    let sim = start_sim(sim_config()).await;
    let token = "a-proper-admin-token-42";
    let gw = Gateway::start(&sim, &[("EMGATE_ADMIN_TOKEN", token)]);
    let http = Http::default();
    let no = http
        .send(Method::DELETE, &gw.url("/admin/cache"), &[])
        .await;
    assert_eq!(no.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        no.headers["www-authenticate"],
        "Basic realm=\"emgate admin\""
    );
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("anyone:{token}")
        )
    );
    let ok = http
        .send(
            Method::DELETE,
            &gw.url("/admin/cache"),
            &[("authorization", &basic)],
        )
        .await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT);
    let mut limited = 0;
    for i in 0..40 {
        let wrong = format!("Bearer guess-{i}");
        let r = http
            .send(
                Method::DELETE,
                &gw.url("/admin/cache"),
                &[("authorization", &wrong)],
            )
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers.contains_key("retry-after"));
            limited += 1;
        }
    }
    assert!(limited >= 10, "guessing was not slowed: {limited}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_carried_by_the_cookie_alone_needs_the_gateways_origin() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[("EMGATE_ALLOW_WRITES", "true")]);
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    let (token, _) = common::gateway_logon(&http, &gw, "u", "p").await;
    let cookie = format!("X-RestSvcSessionId={token}");
    let target = gw.url(&format!(
        "/api/jobs/{}?action=start",
        sim.restore_point_id(0)
    ));
    sim.clear_requests();
    for origin in [None, Some("http://evil.example"), Some("null")] {
        let mut headers = vec![("cookie", cookie.as_str())];
        if let Some(o) = origin {
            headers.push(("origin", o));
        }
        let r = http.send(Method::POST, &target, &headers).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{origin:?}: {}", r.body);
    }
    assert!(sim.requests().is_empty(), "{:?}", sim.requests());
    let own = format!("http://{}", gw.addr);
    let r = http
        .send(
            Method::POST,
            &target,
            &[("cookie", &cookie), ("origin", &own)],
        )
        .await;
    assert_ne!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = http
        .send(Method::POST, &target, &[("x-restsvcsessionid", &token)])
        .await;
    assert_ne!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(sim.requests().len(), 2, "{:?}", sim.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_what_em_needs_crosses_and_ems_identity_stays_behind() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    let reply = http
        .get(
            &gw.url("/api/restorePoints"),
            &[
                ("x-http-method-override", "DELETE"),
                ("forwarded", "for=10.0.0.1;host=evil"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-host", "evil.example"),
                ("range", "bytes=0-10"),
                ("if-none-match", "\"abc\""),
                ("if-modified-since", "Sat, 29 Oct 1994 19:43:31 GMT"),
                ("user-agent", "curl/8"),
                ("accept-language", "de-DE"),
                ("x-custom", "1"),
                ("authorization", "Basic dTpw"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(!reply.headers.contains_key("server"), "{:?}", reply.headers);
    let seen = sim.requests();
    assert_eq!(seen.len(), 1);
    let mut names: Vec<&str> = seen[0].headers.iter().map(|(k, _)| k.as_str()).collect();
    names.sort();
    names.dedup();
    // A read is one answer for everybody: not even the language of the
    // client that caused it goes along (writes carry Accept-Language).
    assert_eq!(
        names,
        ["accept", "host", "x-request-id", "x-restsvcsessionid"],
        "{:?}",
        seen[0].headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_gateway_answers_only_its_loopback_names_and_writes_only_its_own_pages() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[("EMGATE_ALLOW_WRITES", "true")]);
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    let port = gw.addr.port();
    let job = format!("/api/jobs/{}?action=start", sim.job_id(0));
    // evil.example's page, its name rebound to 127.0.0.1, reads and writes
    // "its own" origin: the gateway, through the pooled EM session.
    let rebound = [
        format!("GET /api/jobs HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n"),
        format!(
            "POST {job} HTTP/1.1\r\nHost: evil.example:{port}\r\nOrigin: http://evil.example:{port}\r\n\
             Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        ),
        "GET /admin/status HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_string(),
    ];
    for request in &rebound {
        let reply = raw(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(reply.status, Some(421), "{request:?}: {}", reply.text);
        assert!(reply.text.contains("\"StatusCode\":421"), "{}", reply.text);
    }
    // Probes answer whatever name they use.
    let probe = raw(
        gw.addr,
        &get("/healthz", "evil.example"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(probe.status, Some(200), "{}", probe.text);
    assert!(sim.requests().is_empty(), "{:?}", sim.requests());
    // Its loopback names, with any port, all work.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "LocalHost".to_string(),
        "[::1]:1".to_string(),
    ] {
        let reply = raw(gw.addr, &get("/api/jobs", &host), Duration::from_secs(5)).await;
        assert_eq!(reply.status, Some(200), "{host}: {}", reply.text);
    }
    sim.clear_requests();
    // A page elsewhere posts at the gateway itself (a text/plain body needs
    // no preflight): refused before EM, as is a logon from there.
    let cross: [&[(&str, &str)]; 4] = [
        &[
            ("origin", "http://evil.example"),
            ("content-type", "text/plain"),
        ],
        &[("origin", "null"), ("content-type", "text/plain")],
        &[
            ("sec-fetch-site", "cross-site"),
            ("content-type", "text/plain"),
        ],
        &[
            ("sec-fetch-site", "same-site"),
            ("sec-fetch-mode", "no-cors"),
        ],
    ];
    for headers in cross {
        let r = http
            .send_body(Method::POST, &gw.url(&job), headers, "{}")
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}: {}", r.body);
        assert_eq!(r.json()["StatusCode"], 403);
    }
    let logon = http
        .send(
            Method::POST,
            &gw.url("/api/sessionMngr/?v=latest"),
            &[
                ("origin", "http://evil.example"),
                ("authorization", "Basic dTpw"),
            ],
        )
        .await;
    assert_eq!(logon.status, StatusCode::FORBIDDEN, "{}", logon.body);
    assert!(sim.requests().is_empty(), "{:?}", sim.requests());
    // The gateway's own page, and a script with no browser headers, write.
    let own = format!("http://127.0.0.1:{port}");
    for headers in [
        vec![("origin", own.as_str()), ("sec-fetch-site", "same-origin")],
        vec![("origin", own.as_str())],
        vec![],
    ] {
        let r = http.send(Method::POST, &gw.url(&job), &headers).await;
        assert_ne!(r.status, StatusCode::FORBIDDEN, "{headers:?}: {}", r.body);
    }
    let posts = sim.requests().iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts, 3, "{:?}", sim.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answers_are_private_not_sniffed_and_typed_by_the_gateway() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let direct = Gateway::start(&sim, &[("EMGATE_COLLAPSE", "false")]);
    let http = Http::default();
    settled(&sim, &gw, &http).await;
    assert!(becomes_ready(&http, &direct).await);
    let ours = |r: &common::Reply, what: &str| {
        assert_eq!(
            r.headers["cache-control"], "private",
            "{what}: {:?}",
            r.headers
        );
        assert_eq!(r.headers["x-content-type-options"], "nosniff", "{what}");
        if let Some(t) = r.headers.get("content-type") {
            assert!(
                [
                    "application/json; charset=utf-8",
                    "application/xml; charset=utf-8",
                    "application/octet-stream",
                ]
                .contains(&t.to_str().unwrap()),
                "{what}: {t:?}"
            );
        }
    };
    let vm = format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(3)
    );
    let miss = http.get(&gw.url(&vm), &[]).await;
    assert_eq!(miss.headers["x-cache"], "MISS");
    ours(&miss, "a miss");
    let hit = http.get(&gw.url(&vm), &[]).await;
    assert_eq!(hit.headers["x-cache"], "HIT");
    ours(&hit, "a hit");
    let head = http.send(Method::HEAD, &gw.url(&vm), &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    ours(&head, "a HEAD");
    let xml = http
        .get(&gw.url(&vm), &[("accept", "application/xml")])
        .await;
    ours(&xml, "XML");
    let etag = hit.headers["etag"].to_str().unwrap().to_string();
    let not_modified = http.get(&gw.url(&vm), &[("if-none-match", &etag)]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    ours(&not_modified, "a 304");
    ours(&http.get(&gw.url("/api/"), &[]).await, "the entry point");
    ours(
        &http.get(&gw.url("/api/backupServers"), &[]).await,
        "a collapsed pass-through",
    );
    ours(
        &http.get(&direct.url("/api/backupServers"), &[]).await,
        "a pass-through",
    );
    let bad = http
        .get(&gw.url("/api/restorePoints/nope/vmRestorePoints"), &[])
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    ours(&bad, "the gateway's error");
    let unknown = http
        .get(&gw.url("/api/jobs"), &[("x-restsvcsessionid", "nope")])
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    ours(&unknown, "a 401");
    let (_, logon) = gateway_logon(&http, &gw, "u", "p").await;
    ours(&logon, "a logon");
    sim.set_path_fault("/api/repositories", Some(Fault::Status(500)));
    let em_error = http.get(&gw.url("/api/repositories"), &[]).await;
    assert_eq!(em_error.status, StatusCode::INTERNAL_SERVER_ERROR);
    ours(&em_error, "EM's error");
    // EM (or whatever answers in its place) sends a page of its own: the
    // client gets bytes, never a document for its browser to run.
    sim.set_path_fault("/api/managedServers", Some(Fault::Html));
    for (g, what) in [(&gw, "collapsed"), (&direct, "passed through")] {
        let page = http.get(&g.url("/api/managedServers"), &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{what}");
        assert_eq!(
            page.headers["content-type"], "application/octet-stream",
            "{what}"
        );
        ours(&page, what);
    }
}
