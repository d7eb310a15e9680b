//! End to end: the simulator and the `emgate` binary on loopback, over real
//! sockets, telling the users' stories of the gateway core.

mod common;

use std::time::{Duration, Instant};

use common::*;
use emgate::sim::{Fault, FaultTarget};
use http::{Method, StatusCode};

fn vm_points_path(sim: &emgate::sim::Sim, index: usize) -> String {
    format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(index)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_lists_the_vm_restore_points_of_a_restore_point() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();

    let reply = http.get(&gw.url(&vm_points_path(&sim, 3)), &[]).await;

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.headers["content-type"],
        "application/json; charset=utf-8"
    );
    let refs = reply.json()["Refs"]
        .as_array()
        .cloned()
        .expect("Refs array");
    assert_eq!(refs.len(), sim.vm_count(3), "{}", reply.body);
    assert_eq!(refs[0]["Type"], "VmRestorePointReference");
    let href = refs[0]["Href"].as_str().unwrap();
    assert!(
        href.starts_with(&gw.url("/api/vmRestorePoints/")),
        "not rewritten: {href}"
    );
    assert!(
        !reply.body.contains(&sim.base_url()),
        "an EM URL leaked: {}",
        reply.body
    );

    let xml = http
        .get(
            &gw.url(&vm_points_path(&sim, 3)),
            &[("accept", "application/xml")],
        )
        .await;
    assert_eq!(xml.status, StatusCode::OK);
    assert_eq!(
        xml.headers["content-type"],
        "application/xml; charset=utf-8"
    );
    assert_eq!(
        xml.body.matches("<Ref ").count(),
        sim.vm_count(3),
        "{}",
        xml.body
    );
    assert!(
        xml.body.contains(&format!("Href=\"{}", gw.url("/api/"))),
        "{}",
        xml.body
    );
    assert!(!xml.body.contains(&sim.base_url()));
    assert!(reply.headers.contains_key("x-request-id"));
    assert!(
        !reply.headers.contains_key("set-cookie"),
        "EM's cookie leaked"
    );
    let passed = http.get(&gw.url("/api/restorePoints"), &[]).await;
    assert!(
        !passed.headers.contains_key("server"),
        "EM's Server header leaked"
    );
    let bad = http
        .get(&gw.url("/api/restorePoints/not-a-uuid"), &[])
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        !reply.headers.contains_key("x-restsvcsessionid"),
        "EM's token leaked"
    );
    assert_eq!(sim.stats().logons_ok, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_request_id_is_kept_and_a_missing_one_is_made() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();

    let mine = http
        .get(&gw.url("/api/"), &[("x-request-id", "trace-me-42")])
        .await;
    let made = http.get(&gw.url("/healthz"), &[]).await;

    assert_eq!(mine.headers["x-request-id"], "trace-me-42");
    assert!(made.headers["x-request-id"].len() >= 32);
    // The access line is written once the answer is on its way, so the test
    // may read the log before it lands.
    assert!(
        eventually(Duration::from_secs(5), || {
            let logged = gw.log_text().contains("trace-me-42");
            async move { logged }
        })
        .await,
        "request id not logged: {}",
        gw.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_clients_cause_exactly_one_em_logon() {
    let sim = start_sim(sim_config()).await;
    // A slow EM keeps the gateway's first logon in flight while the burst
    // arrives, so the 64 requests must wait for it rather than log on.
    sim.set_latency(Duration::from_millis(300));
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let http = http.clone();
        let url = gw.url(&vm_points_path(&sim, i));
        tasks.push(tokio::spawn(
            async move { http.get(&url, &[]).await.status },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(sim.stats().logons_ok, 1, "EM saw more than one logon");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_em_expires_the_session_32_concurrent_requests_share_one_new_logon() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    assert_eq!(
        http.get(&gw.url("/api/restorePoints"), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(sim.stats().logons_ok, 1);

    sim.expire_all_sessions();
    // Slow answers make the 32 requests meet EM's 401s at about the same time.
    sim.set_latency(Duration::from_millis(200));
    let mut tasks = Vec::new();
    for i in 0..32 {
        let http = http.clone();
        let url = gw.url(&vm_points_path(&sim, i));
        tasks.push(tokio::spawn(async move { http.get(&url, &[]).await }));
    }
    for t in tasks {
        let reply = t.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    assert_eq!(sim.stats().logons_ok, 2, "expected exactly one more logon");
    assert!(
        sim.stats().unauthorized >= 1,
        "the simulator never answered 401"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_em_password_gives_503s_until_it_is_fixed_then_recovers() {
    let sim = start_sim(sim_config()).await;
    sim.set_password("rotated-elsewhere");
    let mut gw = Gateway::start(&sim, &[]);
    let http = Http::default();

    let started = Instant::now();
    let reply = http.get(&gw.url(&vm_points_path(&sim, 0)), &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 took longer than the upstream timeout"
    );
    let error = reply.json();
    assert_eq!(error["StatusCode"], 503);
    assert!(
        error["Message"].as_str().unwrap().contains("logon"),
        "{error}"
    );
    assert!(!reply.body.contains(PASSWORD) && !reply.body.contains("rotated-elsewhere"));
    assert_eq!(
        http.get(&gw.url("/readyz"), &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        http.get(&gw.url("/healthz"), &[]).await.status,
        StatusCode::OK
    );
    assert!(gw.is_running());

    sim.set_password(PASSWORD);
    assert!(
        becomes_ready(&http, &gw).await,
        "the gateway did not recover by itself"
    );
    let reply = http.get(&gw.url(&vm_points_path(&sim, 0)), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(sim.stats().logons_failed >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_logs_out_of_em_and_exits_zero() {
    let sim = start_sim(sim_config()).await;
    let mut gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    assert_eq!(http.get(&gw.url("/api/"), &[]).await.status, StatusCode::OK);
    assert_eq!(sim.stats().logouts, 0);

    // A request in flight when SIGTERM arrives still completes.
    sim.set_latency(Duration::from_millis(700));
    let slow = {
        let http = http.clone();
        let url = gw.url(&vm_points_path(&sim, 1));
        tokio::spawn(async move { http.get(&url, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = gw.terminate();
        (status, gw)
    })
    .await
    .unwrap();

    assert_eq!(
        slow.await.unwrap().status,
        StatusCode::OK,
        "in-flight request was cut"
    );
    // The client's idle keep-alive connection is closed at once, not held
    // open until the drain timeout (25 s).
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(10), "the drain took {took:?}");
    assert!(status.0.success(), "exit status {:?}", status.0);
    assert_eq!(sim.stats().logouts, 1, "the EM session was not logged out");
    assert_eq!(sim.stats().active_sessions, 0);
    // The log's last line, written just before the exit, is not lost (the
    // reader thread may still be reading the closed pipe's last bytes).
    let gw = status.1;
    assert!(
        eventually(Duration::from_secs(5), || {
            let stopped = gw.log_text().contains("\"stopped\"");
            async move { stopped }
        })
        .await,
        "the last log line was lost at exit: {}",
        gw.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_own_credentials_never_reach_em() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    // A pass-through path, so the request really goes to EM.
    let path = format!(
        "/api/restorePoints/{}?format=Entity",
        sim.restore_point_id(5)
    );
    let logon = http
        .send(
            Method::POST,
            &gw.url("/api/sessionMngr/?v=latest"),
            &[("authorization", "Basic Y2xpZW50OmNsaWVudC1wdw==")],
        )
        .await;
    assert_eq!(logon.status, StatusCode::CREATED, "{}", logon.body);
    let token = logon.headers["x-restsvcsessionid"]
        .to_str()
        .unwrap()
        .to_string();
    let cookie = format!("X-RestSvcSessionId={token}");

    let reply = http
        .get(
            &gw.url(&path),
            &[
                ("authorization", "Basic Y2xpZW50OmNsaWVudC1wdw=="),
                ("x-restsvcsessionid", token.as_str()),
                ("cookie", cookie.as_str()),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "hop"),
            ],
        )
        .await;

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let seen: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query == path)
        .collect();
    assert_eq!(seen.len(), 1);
    let headers = &seen[0].headers;
    let text = format!("{headers:?}");
    for leaked in ["Y2xpZW50", token.as_str(), "x-hop"] {
        assert!(!text.contains(leaked), "{leaked} reached EM: {text}");
    }
    assert!(headers
        .iter()
        .all(|(k, _)| k != "authorization" && k != "cookie"));
    assert!(headers.iter().any(|(k, _)| k == "x-restsvcsessionid"));
    assert_eq!(sim.stats().logons_ok, 1, "the client's logon reached EM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_odd_paths_are_refused_before_em() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    // Let the start-up logon settle, then count what reaches EM.
    assert_eq!(http.get(&gw.url("/api/"), &[]).await.status, StatusCode::OK);
    sim.clear_requests();

    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let reply = http
            .send(method.clone(), &gw.url("/api/jobs/x?action=start"), &[])
            .await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(reply.json()["StatusCode"], 405);
    }
    let xml = http
        .send(
            Method::POST,
            &gw.url("/api/jobs"),
            &[("accept", "application/xml")],
        )
        .await;
    assert!(
        xml.body.contains("<Error ") && xml.body.contains("StatusCode=\"405\""),
        "{}",
        xml.body
    );
    for path in [
        "/api/../admin",
        "/api/%2e%2e/x",
        "/api/a%2Fb",
        "/api/./logonSessions",
        // EM ignores doubled slashes and decodes escapes: these would reach
        // EM's own logonSessions past the gateway's.
        "/api//logonSessions",
        "/api//sessionMngr/?v=latest",
        "/api/logon%u0053essions",
        "/api/jobs/%u002e%u002e/logonSessions",
    ] {
        let reply = http.get(&gw.url(path), &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(reply.json()["StatusCode"], 400);
    }
    // An escaped letter is decoded once, and routed as what it decodes to:
    // the gateway's own logonSessions, as EM would resolve it.
    let reply = http.get(&gw.url("/api/logon%53essions"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.json()["LogonSessions"].is_array(), "{}", reply.body);
    let reply = http.get(&gw.url("/nope"), &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(
        sim.requests().is_empty(),
        "reached EM: {:?}",
        sim.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn em_errors_come_back_with_ems_status() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();

    let reply = http
        .get(
            &gw.url("/api/restorePoints/00000000-0000-0000-0000-000000000000/vmRestorePoints"),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let error = reply.json();
    assert_eq!(error["StatusCode"], 404, "{error}");
    assert!(
        error["Message"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{error}"
    );
    assert!(error.get("FirstChanceExceptionMessage").is_some());

    sim.set_fault(FaultTarget::Data, Some(Fault::Status(500)));
    let reply = http.get(&gw.url(&vm_points_path(&sim, 0)), &[]).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.json()["StatusCode"], 500);
    let reply = http.get(&gw.url("/api/restorePoints"), &[]).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.json()["StatusCode"], 500);

    sim.set_fault(FaultTarget::Data, Some(Fault::Garbage));
    let reply = http.get(&gw.url("/api/restorePoints"), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
    assert_eq!(reply.json()["StatusCode"], 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_em_gives_504_within_the_timeout_and_a_reset_gives_502() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[("EMGATE_UPSTREAM_TIMEOUT", "1s")]);
    let http = Http::default();
    assert_eq!(http.get(&gw.url("/api/"), &[]).await.status, StatusCode::OK);

    sim.set_fault(FaultTarget::Data, Some(Fault::Hang));
    let started = Instant::now();
    let reply = http.get(&gw.url(&vm_points_path(&sim, 0)), &[]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
    assert_eq!(reply.json()["StatusCode"], 504);
    assert!(started.elapsed() < Duration::from_secs(4));

    sim.set_fault(FaultTarget::Data, Some(Fault::Reset));
    let reply = http.get(&gw.url(&vm_points_path(&sim, 0)), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);

    sim.set_fault(FaultTarget::Data, None);
    let reply = http.get(&gw.url(&vm_points_path(&sim, 0)), &[]).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "no recovery after faults: {}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_em_answer_over_the_size_limit_gives_502() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[("EMGATE_UPSTREAM_MAX_BODY", "64KiB")]);
    let http = Http::default();

    let reply = http.get(&gw.url("/api/restorePoints"), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
    assert!(reply.json()["Message"].as_str().unwrap().contains("limit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn em_down_gives_503_fast_and_not_ready() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env = vec![
        ("EMGATE_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        (
            "EMGATE_UPSTREAM_URL".to_string(),
            format!("https://{closed}"),
        ),
        ("EMGATE_UPSTREAM_USERNAME".to_string(), "u".to_string()),
        ("EMGATE_UPSTREAM_PASSWORD".to_string(), "p".to_string()),
        ("EMGATE_UPSTREAM_INSECURE".to_string(), "true".to_string()),
        ("EMGATE_UPSTREAM_TIMEOUT".to_string(), "3s".to_string()),
        ("EMGATE_LOG_FORMAT".to_string(), "json".to_string()),
    ];
    let gw = Gateway::spawn(&env);
    let http = Http::default();
    let started = Instant::now();
    let reply = http.get(&gw.url("/api/"), &[]).await;
    // Transport details (EM's address) stay in the gateway's log.
    assert!(!reply.body.contains(&closed.to_string()), "{}", reply.body);
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        http.get(&gw.url("/readyz"), &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        gw.log_text().contains("NOT verified"),
        "no loud warning for insecure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_certificate_pin_is_refused() {
    let sim = start_sim(sim_config()).await;
    let wrong = "00".repeat(32);
    let gw = Gateway::start(&sim, &[("EMGATE_UPSTREAM_CERT_SHA256", &wrong)]);
    let http = Http::default();
    let reply = http.get(&gw.url("/api/"), &[]).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(
        sim.stats().logons_ok + sim.stats().logons_failed,
        0,
        "credentials sent to an unpinned server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_em_password_and_session_token_never_appear_in_debug_logs() {
    let sim = start_sim(sim_config()).await;
    sim.set_password("wrong-for-now");
    let mut gw = Gateway::start(&sim, &[("EMGATE_LOG", "trace")]);
    let http = Http::default();
    let _ = http.get(&gw.url("/api/"), &[]).await;
    sim.set_password(PASSWORD);
    assert!(becomes_ready(&http, &gw).await);
    let _ = http.get(&gw.url(&vm_points_path(&sim, 0)), &[]).await;
    sim.expire_all_sessions();
    let _ = http.get(&gw.url(&vm_points_path(&sim, 1)), &[]).await;
    let tokens: Vec<String> = sim
        .requests()
        .iter()
        .flat_map(|r| r.headers.iter())
        .filter(|(k, _)| k == "x-restsvcsessionid")
        .map(|(_, v)| v.clone())
        .collect();
    assert!(!tokens.is_empty());
    let status = tokio::task::spawn_blocking(move || (gw.terminate(), gw))
        .await
        .unwrap();
    assert!(status.0.success());
    let gw = status.1;

    let logs = gw.log_text();
    assert!(logs.lines().count() > 10, "expected debug logs: {logs}");
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USERNAME}:{PASSWORD}"));
    for secret in [PASSWORD, basic.as_str()]
        .into_iter()
        .chain(tokens.iter().map(String::as_str))
    {
        assert!(
            !logs.contains(secret),
            "secret {secret:?} leaked into the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_like_get_without_a_body() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    let reply = http
        .send(Method::HEAD, &gw.url(&vm_points_path(&sim, 2)), &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_log_pipe_never_stalls_requests_and_dropped_lines_are_counted() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    assert_eq!(
        http.get(&gw.url("/healthz"), &[]).await.status,
        StatusCode::OK
    );
    // The log shipper stops: stderr's pipe fills after a few hundred lines,
    // and every request writes one.
    gw.stop_reading_logs();
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (http, url) = (http.clone(), gw.url("/healthz"));
            tokio::spawn(async move {
                for _ in 0..400 {
                    assert_eq!(http.get(&url, &[]).await.status, StatusCode::OK);
                }
            })
        })
        .collect();
    // 12,800 requests, far more lines than the pipe and the writer's queue
    // hold: answered all the same, and the lines that could not wait counted.
    let all = async {
        for c in clients {
            c.await.expect("client");
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .is_ok(),
        "requests stalled behind the log"
    );
    let dropped = metric_sum(&http, &gw, "emgate_log_lines_dropped_total").await;
    assert!(dropped > 0.0, "no dropped line counted");
}

/// An operator sends the log to a file (`2>>emgate.log`). Every access
/// line lands in it, and a busy gateway's log pages do not stay in memory
/// once written: tens of megabytes of access lines a second would
/// otherwise fill the page cache (README, "Operations"). Where the file
/// system cannot write around the page cache, the gateway writes plainly
/// and only the lines are checked.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_gets_every_access_line_and_keeps_none_of_them_in_memory() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("log-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a folder for the log");
    let log = dir.join("emgate.log");
    let sim = start_sim(sim_config()).await;
    let mut gw = Gateway::start_logging_to(&sim, &[], &log);
    let http = Http::default();
    let path = vm_points_path(&sim, 1);
    // 8,000 hits from 16 clients: about 3.5 MB of access lines, in the
    // log writer's writes of a busy gateway.
    let started = Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (http, url) = (http.clone(), gw.url(&path));
            tokio::spawn(async move {
                for i in 0..500 {
                    let id = format!("to-file-{c}-{i}");
                    let reply = http.get(&url, &[("x-request-id", id.as_str())]).await;
                    assert_eq!(reply.status, StatusCode::OK);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    let busy_for = started.elapsed();
    let dropped = metric_sum(&http, &gw, "emgate_log_lines_dropped_total").await;
    assert_eq!(dropped, 0.0, "the log writer dropped lines");
    // The last lines are written at exit.
    assert!(gw.terminate().success());

    // On disk; then how much of it is in memory, before anything here
    // reads it (the last pages may leave a moment after `fsync` returns,
    // hence a second look).
    let file = std::fs::File::open(&log).expect("the log file");
    file.sync_all().expect("sync the log file");
    let mut held = pages_in_memory(&file);
    if held.0 * 10 > held.1 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        held = pages_in_memory(&file);
    }
    let (resident, pages) = held;
    let text = std::fs::read_to_string(&log).expect("read the log file");
    let logged: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.split("\"request_id\":\"to-file-").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(logged.len(), 8000, "access lines missing from the log file");
    // The writer writes direct only a busy gateway's writes (16 KiB or
    // more: README, "Operations"); its flushes come every 50 ms at least.
    let per_flush = text.len() as f64 * 0.05 / busy_for.as_secs_f64();
    if !writes_direct(&dir) {
        eprintln!("this file system keeps written pages cached: only the lines were checked");
    } else if per_flush < 32.0 * 1024.0 {
        eprintln!(
            "too few lines a second ({per_flush:.0} bytes a flush): only the lines were checked"
        );
    } else {
        // A few may stay: the pages this test read for the `listening`
        // line, the last flush's; written plainly, every one would.
        assert!(
            text.len() > 1_000_000 && resident * 10 <= pages,
            "{resident} of the log's {pages} pages are still in memory"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// How many of `file`'s pages are in the page cache now, of how many.
#[cfg(target_os = "linux")]
fn pages_in_memory(file: &std::fs::File) -> (usize, usize) {
    use std::os::fd::AsRawFd as _;
    let len = usize::try_from(file.metadata().expect("log file size").len()).expect("size");
    if len == 0 {
        return (0, 0);
    }
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size");
    let pages = len.div_ceil(page);
    let mut held = vec![0u8; pages];
    // SAFETY: a read-only shared mapping of the whole file (not touched,
    // so not faulted in); mincore fills one byte per page of it into
    // `held`, which has one per page; the mapping is removed after.
    let rc = unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED, "map the log file");
        let rc = libc::mincore(map, len, held.as_mut_ptr());
        libc::munmap(map, len);
        rc
    };
    assert_eq!(rc, 0, "mincore");
    (held.iter().filter(|b| **b & 1 == 1).count(), pages)
}

/// Whether the gateway writes a busy log to a file in `dir` around the
/// page cache: when the file system takes `O_DIRECT` (ext4, xfs, btrfs,
/// tmpfs from Linux 6.6), tried on a file of its own with a block from
/// aligned memory. Asked of the kernel here, not through the log writer's
/// code: a writer that stopped writing direct would answer "no" and pass.
#[cfg(target_os = "linux")]
fn writes_direct(dir: &std::path::Path) -> bool {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let probe = dir.join("probe");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    let bytes = vec![b'x'; 2 * 4096];
    let start = bytes.as_ptr().align_offset(4096);
    let written = file.and_then(|mut f| f.write(&bytes[start..start + 4096]));
    let _ = std::fs::remove_file(&probe);
    matches!(written, Ok(4096))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_is_one_json_object_with_the_request_fields() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    let p = vm_points_path(&sim, 9);
    let _ = http.get(&gw.url(&p), &[]).await;
    let _ = http.get(&gw.url(&p), &[("x-request-id", "log-me-7")]).await;
    let _ = http.get(&gw.url("/readyz"), &[]).await;
    // Lines reach the log in batches (at most 50 ms apart): wait for both
    // the EM version's and the request's, whichever comes first.
    assert!(
        eventually(Duration::from_secs(5), || {
            let text = gw.log_text();
            async move { text.contains("Enterprise Manager found") && text.contains("log-me-7") }
        })
        .await,
        "the EM version or the request was not logged"
    );

    let lines: Vec<serde_json::Value> = gw
        .logs
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for line in &lines {
        assert!(
            line["timestamp"].is_string()
                && line["level"].is_string()
                && line["message"].is_string(),
            "{line}"
        );
    }
    let hit = lines
        .iter()
        .find(|l| l["message"] == "request" && l["request_id"] == "log-me-7")
        .expect("a request line with the client's id");
    assert_eq!(hit["route"], "/api/restorePoints/{id}/vmRestorePoints");
    assert_eq!(hit["status"], 200);
    assert_eq!(hit["cache"], "HIT");
    assert_eq!(hit["method"], "GET");
    assert!(hit["latency_ms"].as_f64().is_some());
    let settings = lines
        .iter()
        .find(|l| l["message"] == "effective settings")
        .unwrap();
    let text = settings["settings"].as_str().unwrap();
    assert!(
        text.contains("upstream.password=\"***\"") && !text.contains(PASSWORD),
        "{text}"
    );
    let found = lines
        .iter()
        .find(|l| l["message"] == "Enterprise Manager found")
        .unwrap();
    assert!(
        found["api_versions"].as_str().unwrap().contains("v1_"),
        "{found}"
    );
}

/// Every line of the log, parsed (the test gateway logs JSON).
fn json_lines(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_about_a_request_carry_its_id_and_a_hit_writes_only_its_access_line() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    let cached = vm_points_path(&sim, 1);
    assert_eq!(http.get(&gw.url(&cached), &[]).await.status, StatusCode::OK);

    sim.set_fault(FaultTarget::Data, Some(Fault::Status(500)));
    let failed = http
        .get(
            &gw.url(&vm_points_path(&sim, 2)),
            &[("x-request-id", "fail-me-3")],
        )
        .await;
    let hit = http
        .get(&gw.url(&cached), &[("x-request-id", "hit-me-5")])
        .await;

    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(hit.headers["x-cache"], "HIT");
    let logged = |id: &'static str| {
        let gw = &gw;
        move || {
            let n = json_lines(gw)
                .iter()
                .filter(|l| l["message"] == "request" && l["request_id"] == id)
                .count();
            async move { n == 1 }
        }
    };
    assert!(eventually(Duration::from_secs(5), logged("fail-me-3")).await);
    assert!(eventually(Duration::from_secs(5), logged("hit-me-5")).await);
    let lines = json_lines(&gw);
    let about = |id: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["span"]["request_id"] == id || l["request_id"] == id)
            .collect()
    };
    // The fetch that failed is logged in the request's span, with its id.
    assert!(
        about("fail-me-3")
            .iter()
            .any(|l| l["message"] == "EM fetch failed" && l["span"]["request_id"] == "fail-me-3"),
        "{:?}",
        about("fail-me-3")
    );
    // A hit does nothing worth a line but the access line.
    let hit_lines = about("hit-me-5");
    assert_eq!(hit_lines.len(), 1, "{hit_lines:?}");
    assert_eq!(hit_lines[0]["cache"], "HIT");
    assert_eq!(hit_lines[0]["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_access_lines_read_like_every_other_line_and_can_be_turned_off() {
    let sim = start_sim(sim_config()).await;
    let text = Gateway::start(&sim, &[("EMGATE_LOG_FORMAT", "text")]);
    let quiet = Gateway::start(
        &sim,
        &[
            ("EMGATE_LOG_FORMAT", "text"),
            ("EMGATE_LOG", "info,emgate::access=off"),
        ],
    );
    let http = Http::default();
    let p = vm_points_path(&sim, 4);
    for gw in [&text, &quiet] {
        let reply = http.get(&gw.url(&p), &[("x-request-id", "text-1")]).await;
        assert_eq!(reply.status, StatusCode::OK);
    }

    let line = |gw: &Gateway| {
        gw.logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("request_id=\"text-1\""))
            .cloned()
    };
    assert!(
        eventually(Duration::from_secs(5), || {
            let found = line(&text).is_some();
            async move { found }
        })
        .await
    );
    let line = line(&text).unwrap();
    // `2026-12-04T05:48:36.156932Z  INFO request{request_id=text-1}: request method=GET ...`
    let (time, rest) = line.split_once("  INFO ").expect(&line);
    assert_eq!(time.len(), 27, "{line}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{line}");
    let expected = format!(
        "request{{request_id=text-1}}: request method=GET path=\"{p}\" \
         route=\"/api/restorePoints/{{id}}/vmRestorePoints\" status=200 latency_ms="
    );
    assert!(rest.starts_with(&expected), "{line}");
    assert!(
        rest.ends_with(" client=\"~anonymous\" cache=\"MISS\" request_id=\"text-1\""),
        "{line}"
    );
    // The other gateway keeps its other lines and writes no access line.
    assert!(quiet.log_text().contains("listening"));
    assert!(
        !quiet.log_text().contains("request method="),
        "{}",
        quiet.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_is_kept_alive_across_ems_idle_timeout() {
    let mut cfg = sim_config();
    cfg.session_idle = Duration::from_millis(1500);
    let sim = start_sim(cfg).await;
    let gw = Gateway::start(&sim, &[("EMGATE_UPSTREAM_KEEPALIVE", "400ms")]);
    let http = Http::default();
    assert_eq!(
        http.get(&gw.url("/api/restorePoints"), &[]).await.status,
        StatusCode::OK
    );

    // No client for twice EM's idle timeout: only the keep-alive touches EM.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let reply = http.get(&gw.url("/api/restorePoints"), &[]).await;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        sim.stats().logons_ok,
        1,
        "the session expired and was replaced"
    );
    assert_eq!(sim.stats().unauthorized, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_em_logon_gives_503_within_the_timeout() {
    let sim = start_sim(sim_config()).await;
    sim.set_fault(FaultTarget::Logon, Some(Fault::Hang));
    let mut gw = Gateway::start(&sim, &[("EMGATE_UPSTREAM_TIMEOUT", "1s")]);
    let http = Http::default();

    let started = Instant::now();
    let reply = http.get(&gw.url("/api/restorePoints"), &[]).await;

    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.json()["StatusCode"], 503);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        started.elapsed()
    );
    assert!(gw.is_running());
    sim.set_fault(FaultTarget::Logon, None);
    assert!(
        becomes_ready(&http, &gw).await,
        "no recovery after the logon hang ended"
    );
}
