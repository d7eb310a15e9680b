//! Client access, end to end: clients file, drop-in logon, virtual logon
//! sessions, anonymous rules, read-only by default, limits and HTTPS.

mod common;

use std::time::Duration;

use common::*;
use emgate::sim::Sim;
use http::{Method, StatusCode};

/// A clients file with two clients; returns its path and their secrets.
fn clients_file(dir: &std::path::Path) -> (String, &'static str, &'static str) {
    let (a, b) = ("dashboard-secret-0123456789", "portal-secret-9876543210");
    let text = format!(
        "# who may use the gateway\n[[clients]]\nname = \"dashboard\"\nsecret_sha256 = \"{}\"\n\n[[clients]]\nname = \"portal\"\nsecret_sha256 = \"{}\"\n",
        emgate::digest::sha256_hex(a.as_bytes()),
        emgate::digest::sha256_hex(b.as_bytes())
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("clients.toml");
    std::fs::write(&path, text).unwrap();
    (path.to_str().unwrap().to_string(), a, b)
}

/// The operator's admin token in [`clients_and_operator`].
const ADMIN: &str = "an-admin-token-of-the-operator";

/// A gateway with the clients of [`clients_file`] and the admin token
/// [`ADMIN`] (and `extra` settings); the dashboard's secret.
fn clients_and_operator(
    sim: &Sim,
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> (Gateway, &'static str) {
    let (file, dash, _) = clients_file(dir);
    let mut env = vec![
        ("EMGATE_CLIENTS_FILE", file.as_str()),
        ("EMGATE_ADMIN_TOKEN", ADMIN),
    ];
    env.extend_from_slice(extra);
    (Gateway::start(sim, &env), dash)
}

fn basic(name: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{secret}"))
    )
}

fn vm_points(sim: &Sim, i: usize) -> String {
    format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(i)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_clients_file_only_known_clients_get_in() {
    let sim = start_sim(sim_config()).await;
    let dir = Scratch::new("clients-in");
    let (file, dash, _) = clients_file(&dir);
    let gw = Gateway::start(&sim, &[("EMGATE_CLIENTS_FILE", &file)]);
    let http = Http::default();
    // The entry point is public, as on EM (clients read it to find the logon link).
    assert_eq!(http.get(&gw.url("/api/"), &[]).await.status, StatusCode::OK);
    sim.clear_requests();
    let p = vm_points(&sim, 1);

    let bad_basic = basic("dashboard", "wrong");
    let unknown_basic = basic("nobody", dash);
    for headers in [
        vec![],
        vec![("authorization", bad_basic.as_str())],
        vec![("authorization", unknown_basic.as_str())],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", "Digest abc")],
        vec![("x-restsvcsessionid", "forged-token")],
    ] {
        let reply = http.get(&gw.url(&p), &headers).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(reply.headers["www-authenticate"], "Basic realm=\"emgate\"");
        assert_eq!(reply.json()["StatusCode"], 401);
    }
    assert!(sim.requests().is_empty(), "a rejected request reached EM");

    let good_basic = basic("dashboard", dash);
    let bearer = format!("Bearer {dash}");
    for auth in [good_basic.as_str(), bearer.as_str()] {
        let reply = http.get(&gw.url(&p), &[("authorization", auth)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{auth}: {}", reply.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_em_client_logs_on_uses_its_token_and_logs_off_without_touching_em() {
    let sim = start_sim(sim_config()).await;
    let dir = Scratch::new("clients-logon");
    let (file, dash, portal) = clients_file(&dir);
    let gw = Gateway::start(&sim, &[("EMGATE_CLIENTS_FILE", &file)]);
    let http = Http::default();

    let logon = |name: &'static str, secret: &'static str, accept: &'static str| {
        let http = http.clone();
        let url = gw.url("/api/sessionMngr/?v=latest");
        async move {
            let auth = basic(name, secret);
            http.send(
                Method::POST,
                &url,
                &[("authorization", &auth), ("accept", accept)],
            )
            .await
        }
    };
    let a = logon("dashboard", dash, "application/json").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let token_a = a.headers["x-restsvcsessionid"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(token_a.len() >= 22, "token too short: {token_a}");
    let cookie = a.headers["set-cookie"].to_str().unwrap();
    assert_eq!(
        cookie,
        format!("X-RestSvcSessionId={token_a}; Path=/api; HttpOnly; SameSite=Strict")
    );
    let body = a.json();
    assert_eq!(body["UserName"], "dashboard");
    let id_a = body["SessionId"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::try_parse(&id_a).is_ok());
    let links = body["Links"].as_array().unwrap();
    assert!(links
        .iter()
        .all(|l| l["Href"].as_str().unwrap().starts_with(&gw.url("/api"))));
    assert!(links
        .iter()
        .any(|l| l["Rel"] == "Delete"
            && l["Href"] == format!("{}/{id_a}", gw.url("/api/logonSessions"))));

    let b = logon("portal", portal, "application/xml").await;
    assert_eq!(b.status, StatusCode::CREATED);
    assert!(b.body.contains("<UserName>portal</UserName>"), "{}", b.body);
    let token_b = b.headers["x-restsvcsessionid"]
        .to_str()
        .unwrap()
        .to_string();
    let id_b = b
        .body
        .split("<SessionId>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_string();

    // The token works as a header and as a cookie.
    let p = vm_points(&sim, 2);
    let by_header = http
        .get(&gw.url(&p), &[("x-restsvcsessionid", &token_a)])
        .await;
    assert_eq!(by_header.status, StatusCode::OK);
    let cookie_a = format!("X-RestSvcSessionId={token_a}");
    let by_cookie = http.get(&gw.url(&p), &[("cookie", &cookie_a)]).await;
    assert_eq!(by_cookie.status, StatusCode::OK);

    // Each client sees only its own sessions.
    let list = http
        .get(
            &gw.url("/api/logonSessions"),
            &[("x-restsvcsessionid", &token_a)],
        )
        .await;
    assert_eq!(list.status, StatusCode::OK);
    let sessions = list.json()["LogonSessions"].as_array().cloned().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["SessionId"], id_a.as_str());
    let other = gw.url(&format!("/api/logonSessions/{id_b}"));
    assert_eq!(
        http.get(&other, &[("x-restsvcsessionid", &token_a)])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        http.send(Method::DELETE, &other, &[("x-restsvcsessionid", &token_a)])
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // A logs off: its token stops working, B and the EM session carry on.
    let own = gw.url(&format!("/api/logonSessions/{id_a}"));
    assert_eq!(
        http.get(&own, &[("x-restsvcsessionid", &token_a)])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        http.send(Method::DELETE, &own, &[("x-restsvcsessionid", &token_a)])
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        http.get(&gw.url(&p), &[("x-restsvcsessionid", &token_a)])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let p3 = vm_points(&sim, 3);
    assert_eq!(
        http.get(&gw.url(&p3), &[("x-restsvcsessionid", &token_b)])
            .await
            .status,
        StatusCode::OK
    );

    let stats = sim.stats();
    assert_eq!(stats.logouts, 0, "a client's logout reached EM");
    assert_eq!(stats.logons_ok, 1, "a client's logon reached EM");
    assert!(sim
        .requests()
        .iter()
        .all(|r| !r.path_and_query.contains("sessionMngr") || r.method == "POST"));
    assert!(sim
        .requests()
        .iter()
        .all(|r| !r.path_and_query.contains("logonSessions/") || r.method == "GET"));

    // Metrics count live client sessions.
    let m = http.get(&gw.url("/metrics"), &[]).await.body;
    assert!(m.lines().any(|l| l == "emgate_client_sessions 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_gateway_on_a_public_address_refuses_to_start_unless_told() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emgate"))
        .arg("serve")
        .env("EMGATE_LISTEN", "0.0.0.0:0")
        .env("EMGATE_UPSTREAM_URL", "https://127.0.0.1:1")
        .env("EMGATE_UPSTREAM_USERNAME", "u")
        .env("EMGATE_UPSTREAM_PASSWORD", "p")
        .env_remove("EMGATE_ALLOW_ANONYMOUS")
        .env_remove("EMGATE_CLIENTS_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("EMGATE_ALLOW_ANONYMOUS"), "{stderr}");

    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_LISTEN", "0.0.0.0:0"),
            ("EMGATE_ALLOW_ANONYMOUS", "true"),
        ],
    );
    assert!(gw
        .log_text()
        .contains("EMGATE_ALLOW_ANONYMOUS=true on a non-loopback address"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_by_default_and_when_allowed_go_once_and_bounded() {
    let sim = start_sim(sim_config()).await;
    let http = Http::default();
    let write = "/api/vmRestorePoints/6c958531-3177-4055-b0ce-dc4ef1ce6433?action=restore";

    let ro = Gateway::start(&sim, &[]);
    assert_eq!(http.get(&ro.url("/api/"), &[]).await.status, StatusCode::OK);
    sim.clear_requests();
    for m in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        assert_eq!(
            http.send(m, &ro.url(write), &[]).await.status,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
    assert!(sim.requests().is_empty(), "a write reached EM");
    drop(ro);

    let rw = Gateway::start(
        &sim,
        &[
            ("EMGATE_ALLOW_WRITES", "true"),
            ("EMGATE_MAX_REQUEST_BODY", "1KiB"),
        ],
    );
    assert_eq!(http.get(&rw.url("/api/"), &[]).await.status, StatusCode::OK);
    sim.clear_requests();
    let posted = http
        .send_body(
            Method::POST,
            &rw.url(write),
            &[("content-type", "application/xml")],
            "<RestoreSpec/>",
        )
        .await;
    // The simulator has no restores; what matters is that EM answered once.
    assert!(
        posted.status.is_client_error(),
        "{}: {}",
        posted.status,
        posted.body
    );
    let seen: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(seen.len(), 1);
    assert!(seen[0]
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "application/xml"));

    // Too big: refused before EM.
    sim.clear_requests();
    let big = "x".repeat(4096);
    let reply = http
        .send_body(Method::POST, &rw.url(write), &[], &big)
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["StatusCode"], 413);
    assert!(sim.requests().is_empty());

    // EM's session expired: EM refused the write before doing anything, so
    // after the one re-logon it is sent once more (and only then done).
    sim.expire_all_sessions();
    let reply = http
        .send_body(Method::POST, &rw.url(write), &[], "<RestoreSpec/>")
        .await;
    assert_eq!(reply.status, posted.status, "{}", reply.body);
    let posts: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path_and_query.contains("action=restore"))
        .collect();
    assert_eq!(
        posts.len(),
        2,
        "refused once with the expired session, then sent once more"
    );
    // ...but the next request finds a new session.
    assert_eq!(
        http.get(&rw.url(&vm_points(&sim, 4)), &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[("EMGATE_RATE_LIMIT", "2"), ("EMGATE_RATE_BURST", "3")],
    );
    let http = Http::default();
    let p = vm_points(&sim, 5);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = http.get(&gw.url(&p), &[]).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(
                r.headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 1
            );
            assert_eq!(r.json()["StatusCode"], 429);
        }
        statuses.push(r.status);
    }
    assert!(
        statuses[..3].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(http.get(&gw.url(&p), &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused_before_em() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    assert_eq!(http.get(&gw.url("/api/"), &[]).await.status, StatusCode::OK);
    sim.clear_requests();
    let huge = "a".repeat(100 * 1024);
    let status = http
        .try_get(&gw.url(&vm_points(&sim, 1)), &[("x-big", &huge)])
        .await;
    assert!(
        matches!(
            status,
            Err(_) | Ok(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        ),
        "{status:?}"
    );
    assert!(sim.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_serves_http2_and_marks_the_cookie_secure() {
    let dir = Scratch::new("tls");
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
        ],
    );
    let https = Https::trusting(cert.cert.der());
    let url = format!("https://localhost:{}", gw.addr.port());

    let (version, status, headers, _) = https.send(Method::GET, &format!("{url}/api/"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version, http::Version::HTTP_2);
    let (_, status, headers2, body) = https
        .send(
            Method::POST,
            &format!("{url}/api/sessionMngr/?v=latest"),
            &[("authorization", &basic("u", "p"))],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cookie = headers2["set-cookie"].to_str().unwrap();
    assert!(
        cookie.ends_with("; Path=/api; HttpOnly; SameSite=Strict; Secure"),
        "{cookie}"
    );
    assert!(
        body.contains(&format!("\"{url}/api/")),
        "links should be https: {body}"
    );
    drop(headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_callers_are_one_owner_whatever_name_their_logon_gives() {
    let sim = start_sim(sim_config()).await;
    let admin = "an-admin-token-of-the-operator";
    let gw = Gateway::start(&sim, &[("EMGATE_ADMIN_TOKEN", admin)]);
    let http = Http::default();
    // A sidecar's app logs on as "operator": a name it chose itself.
    let (token, reply) = gateway_logon(&http, &gw, "operator", "anything").await;
    assert_eq!(reply.json()["UserName"], "anonymous", "{}", reply.body);
    let id = reply.json()["SessionId"].as_str().unwrap().to_string();
    let (other, _) = gateway_logon(&http, &gw, "someone-else", "x").await;
    let list = |headers: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = gw.url("/api/logonSessions");
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = http.get(&url, &h).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            r.json()["LogonSessions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    // Both logons are the anonymous owner's, whatever name each gave...
    assert_eq!(
        list(vec![("x-restsvcsessionid", token.clone())])
            .await
            .len(),
        2
    );
    assert_eq!(list(vec![("x-restsvcsessionid", other)]).await.len(), 2);
    // ...and none is the operator's: the admin token sees none, ends none.
    let bearer = format!("Bearer {admin}");
    assert!(list(vec![("authorization", bearer.clone())])
        .await
        .is_empty());
    let one = gw.url(&format!("/api/logonSessions/{id}"));
    let r = http
        .send(Method::DELETE, &one, &[("authorization", &bearer)])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!(
        http.get(&one, &[("x-restsvcsessionid", &token)])
            .await
            .status,
        StatusCode::OK
    );
}

/// Beside a clients file, the admin token on `/api` is the operator,
/// whether it comes as a bearer token or as the password of Basic data
/// (whatever the user name, with spaces around it as the admin endpoints
/// take it); a client's secret is that client, either way; a wrong one is
/// nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_is_the_operator_on_api_however_it_comes() {
    let sim = start_sim(sim_config()).await;
    let dir = Scratch::new("clients-operator");
    let (gw, dash) = clients_and_operator(&sim, &dir, &[("EMGATE_LOG_FORMAT", "text")]);
    let admin = ADMIN;
    let http = Http::default();
    let jobs = gw.url("/api/jobs");
    let operator = "client=\"~operator\"";
    let dashboard = "client=\"dashboard\"";
    let cases = [
        (format!("Bearer {admin}"), operator),
        (basic("anyone", admin), operator),
        (basic("dashboard", &format!(" {admin} ")), operator),
        (basic("dashboard", dash), dashboard),
        (format!("Bearer {dash}"), dashboard),
    ];
    for (i, (auth, who)) in cases.iter().enumerate() {
        let id = format!("operator-case-{i}");
        let r = http
            .get(&jobs, &[("authorization", auth), ("x-request-id", &id)])
            .await;
        assert_eq!(r.status, StatusCode::OK, "case {i}: {}", r.body);
        let fields = gw.access_fields(&id).await;
        assert!(fields.iter().any(|f| f == who), "case {i}: {fields:?}");
    }
    for wrong in [basic("dashboard", "not-the-secret"), basic("anyone", dash)] {
        let r = http.get(&jobs, &[("authorization", &wrong)]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_credentials_on_api_is_slowed_like_guessing_the_admin_token() {
    let sim = start_sim(sim_config()).await;
    let dir = Scratch::new("clients-guess");
    let (gw, dash) = clients_and_operator(&sim, &dir, &[]);
    let admin = ADMIN;
    let http = Http::default();
    let good = basic("dashboard", dash);
    let jobs = gw.url("/api/jobs");
    assert_eq!(
        http.get(&jobs, &[("authorization", &good)]).await.status,
        StatusCode::OK
    );
    // Fifty wrong credentials from one address: Basic secrets, bearer
    // tokens (the admin token among the guesses' targets), session tokens.
    let mut limited = 0;
    for i in 0..50 {
        let (name, value) = match i % 3 {
            0 => ("authorization", basic("dashboard", &format!("guess-{i}"))),
            1 => ("authorization", format!("Bearer guess-{i}")),
            _ => ("x-restsvcsessionid", format!("guess-{i}")),
        };
        let r = http.get(&jobs, &[(name, &value)]).await;
        match r.status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers.contains_key("retry-after"));
                assert_eq!(r.json()["StatusCode"], 429, "{}", r.body);
                limited += 1;
            }
            other => panic!("guess {i}: {other}: {}", r.body),
        }
    }
    assert!(limited >= 20, "guessing was not slowed: {limited} of 50");
    // Meanwhile nothing this address presents is compared, the right
    // secret included, and the admin endpoints share the account.
    assert_eq!(
        http.get(&jobs, &[("authorization", &good)]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let bearer = format!("Bearer {admin}");
    assert_eq!(
        http.get(&gw.url("/admin/status.json"), &[("authorization", &bearer)])
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The guessing stops: the account settles within a moment, and a right
    // credential is never counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..30 {
        assert_eq!(
            http.get(&jobs, &[("authorization", &good)]).await.status,
            StatusCode::OK
        );
    }
}

/// A known client's hit is answered at once, whether its secret or its
/// session token comes with the request: the same answer either way, and
/// never to a credential that is wrong, missing or logged off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_hit_is_the_same_answer_by_its_secret_or_its_session() {
    let sim = start_sim(sim_config()).await;
    let dir = Scratch::new("clients-hit");
    let (file, dash, _) = clients_file(&dir);
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_CLIENTS_FILE", &file),
            ("EMGATE_LOG_FORMAT", "text"),
        ],
    );
    let http = Http::default();
    let p = vm_points(&sim, 3);
    let secret = basic("dashboard", dash);
    let by_secret = [("authorization", secret.as_str())];
    let first = http.get(&gw.url(&p), &by_secret).await;
    assert_eq!(first.headers["x-cache"], "MISS", "{}", first.body);
    let logon = http
        .send(
            Method::POST,
            &gw.url("/api/sessionMngr/?v=latest"),
            &by_secret,
        )
        .await;
    assert_eq!(logon.status, StatusCode::CREATED, "{}", logon.body);
    let token = logon.header("x-restsvcsessionid").to_string();
    // The first hit makes the entry's whole head; the ones below are
    // answered at once.
    let warm = http.get(&gw.url(&p), &by_secret).await;
    assert_eq!(warm.headers["x-cache"], "HIT");

    let secret_hit = http
        .get(&gw.url(&p), &[by_secret[0], ("x-request-id", "secret-1")])
        .await;
    let session_hit = http
        .get(
            &gw.url(&p),
            &[
                ("x-restsvcsessionid", &token),
                ("x-request-id", "session-1"),
            ],
        )
        .await;
    for hit in [&secret_hit, &session_hit] {
        assert_eq!(hit.status, StatusCode::OK, "{}", hit.body);
        assert_eq!(hit.headers["x-cache"], "HIT");
        assert_eq!(hit.body, first.body);
    }
    assert_eq!(secret_hit.lasting_head(), session_hit.lasting_head());
    assert_eq!(
        gw.access_fields("secret-1").await,
        gw.access_fields("session-1").await
    );
    assert!(gw
        .access_fields("secret-1")
        .await
        .contains(&"client=\"dashboard\"".to_string()));
    // Logged off, the token gets no more hits.
    let own = format!(
        "/api/logonSessions/{}",
        logon.json()["SessionId"].as_str().unwrap()
    );
    let by_token = [("x-restsvcsessionid", token.as_str())];
    let off = http.send(Method::DELETE, &gw.url(&own), &by_token).await;
    assert_eq!(off.status, StatusCode::NO_CONTENT);
    // A wrong secret, none or a dead token gets no hit, however warm the entry.
    let wrong = basic("dashboard", "not-the-secret");
    for headers in [
        vec![("authorization", wrong.as_str())],
        vec![],
        by_token.to_vec(),
    ] {
        let r = http.get(&gw.url(&p), &headers).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert!(!r.body.contains("VmRestorePoint"), "{}", r.body);
    }
}

/// A session token, once named on a connection, is not hashed again on it
/// (BENCHMARKS.md, "twenty-first steps"); its session is still asked on
/// every request. On one kept-alive connection (a client library's, or a
/// load balancer's carrying several clients): another client's token is
/// that client's, a made-up one is refused, and a logout made over another
/// connection ends the session on this one at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_logged_out_elsewhere_is_refused_on_the_connection_it_was_used_on() {
    let sim = start_sim(sim_config()).await;
    let dir = Scratch::new("session-one-connection");
    let (file, dash, portal) = clients_file(&dir);
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_CLIENTS_FILE", &file),
            ("EMGATE_LOG_FORMAT", "text"),
        ],
    );
    let http = Http::default();
    let p = vm_points(&sim, 5);
    let dash_secret = basic("dashboard", dash);
    // Cached, and its whole head made: what follows are hits answered at once.
    for _ in 0..2 {
        http.get(&gw.url(&p), &[("authorization", &dash_secret)])
            .await;
    }
    let (dash_token, dash_logon) = gateway_logon(&http, &gw, "dashboard", dash).await;
    let (portal_token, _) = gateway_logon(&http, &gw, "portal", portal).await;
    let by_dash = ("x-restsvcsessionid", dash_token.as_str());
    let by_portal = ("x-restsvcsessionid", portal_token.as_str());
    let hit = (StatusCode::OK, "HIT".to_string());

    let mut one = OneConnection::open(&gw).await;
    for i in 0..3 {
        assert_eq!(one.get(&p, by_dash, &format!("dash-{i}")).await, hit);
    }
    assert_eq!(one.get(&p, by_portal, "portal-1").await, hit);
    // One character off the dashboard's token: no session.
    let mut made_up = dash_token.clone().into_bytes();
    made_up[3] = if made_up[3] == b'A' { b'B' } else { b'A' };
    let made_up = String::from_utf8(made_up).unwrap();
    assert_eq!(
        one.get(&p, ("x-restsvcsessionid", &made_up), "made-up-1")
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // The same token in the cookie EM's logon sets.
    let cookie = format!("X-RestSvcSessionId={dash_token}");
    assert_eq!(one.get(&p, ("cookie", &cookie), "dash-cookie").await, hit);
    assert_eq!(one.get(&p, by_dash, "dash-3").await, hit);
    for (id, client) in [
        ("dash-0", "dashboard"),
        ("portal-1", "portal"),
        ("dash-cookie", "dashboard"),
        ("dash-3", "dashboard"),
    ] {
        assert!(
            gw.access_fields(id)
                .await
                .contains(&format!("client=\"{client}\"")),
            "{id}: {:?}",
            gw.access_fields(id).await
        );
    }

    // The dashboard logs off over another connection: its token is over on
    // this one, by header or cookie; the portal's is not.
    let own = format!(
        "/api/logonSessions/{}",
        dash_logon.json()["SessionId"].as_str().unwrap()
    );
    let off = http.send(Method::DELETE, &gw.url(&own), &[by_dash]).await;
    assert_eq!(off.status, StatusCode::NO_CONTENT);
    assert_eq!(
        one.get(&p, by_dash, "dash-off").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        one.get(&p, ("cookie", &cookie), "dash-off-cookie").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(one.get(&p, by_portal, "portal-2").await, hit);
    sim.shutdown().await;
}
