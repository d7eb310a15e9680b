//! An operator opens the status page when something is off: behind the
//! admin token, the EM session, the cache per rule, clients and recent
//! errors, with nothing secret on it; and in a real headless browser it
//! renders, refreshes, and its purge buttons work.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::{
    em_session_tokens, eventually, sim_config, start_sim, Gateway, Http, Scratch, PASSWORD,
};
use emgate::sim::Sim;
use http::{Method, StatusCode};
use serde_json::Value;

const ADMIN: &str = "admin-token-for-the-status-tests";

fn bearer() -> String {
    format!("Bearer {ADMIN}")
}

fn vm_points(sim: &Sim, i: usize) -> String {
    format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(i)
    )
}

async fn facts(http: &Http, gw: &Gateway) -> Value {
    let reply = http
        .get(
            &gw.url("/admin/status.json"),
            &[("authorization", &bearer())],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.json()
}

/// The facts once `wanted` holds of them (or the last ones after `limit`),
/// asked at most 4 times a second: admin requests are rate-limited.
async fn facts_once(
    http: &Http,
    gw: &Gateway,
    limit: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let f = facts(http, gw).await;
        if wanted(&f) || std::time::Instant::now() > deadline {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn rule<'a>(facts: &'a Value, name: &str) -> &'a Value {
    facts["cache"]["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no rule {name}: {facts}"))
}

/// Some traffic: restore point 0 three times (one MISS, two HITs), restore
/// point 1 once (MISS), the jobs twice (MISS, HIT), one EM 404.
async fn traffic(http: &Http, gw: &Gateway, sim: &Sim) {
    for (path, expect) in [
        (vm_points(sim, 0), "MISS"),
        (vm_points(sim, 0), "HIT"),
        (vm_points(sim, 0), "HIT"),
        (vm_points(sim, 1), "MISS"),
        ("/api/jobs".to_string(), "MISS"),
        ("/api/jobs".to_string(), "HIT"),
    ] {
        let reply = http.get(&gw.url(&path), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        assert_eq!(reply.headers["x-cache"], expect, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_json_need_the_admin_token_and_show_the_traffic() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[("EMGATE_ADMIN_TOKEN", ADMIN)]);
    let http = Http::default();
    traffic(&http, &gw, &sim).await;

    // Without the token, or with a wrong one: 401 and a Basic prompt.
    for auth in [
        None,
        Some("Bearer not-the-admin-token-at-all"),
        Some("Basic Og=="),
    ] {
        for path in ["/admin/status", "/admin/status.json"] {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
            let reply = http.get(&gw.url(path), &headers).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path} {auth:?}");
            assert_eq!(
                reply.headers["www-authenticate"],
                "Basic realm=\"emgate admin\""
            );
            assert!(!reply.body.contains("vmRestorePoints"), "{}", reply.body);
        }
    }

    // EM's API versions are read once the session holds, in the background.
    let f = facts_once(&http, &gw, Duration::from_secs(5), |f| {
        f["em"]["versions"] != Value::Array(vec![])
    })
    .await;
    assert_eq!(f["em"]["state"], "valid", "{f}");
    assert!(f["em"]["since"].is_string());
    assert_eq!(f["em"]["logons_ok"], 1);
    assert_eq!(f["em"]["versions"][0], "v1_5", "EM's API versions: {f}");
    assert!(f["em"]["requests"].as_u64() >= Some(3), "{f}");
    assert!(f["em"]["latency_p50_ms"].is_u64(), "{f}");
    let vm = rule(&f, "vm_restore_points");
    assert_eq!(
        (vm["hits"].as_u64(), vm["misses"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(vm["entries"], 2);
    assert!(vm["bytes"].as_u64() > Some(1000));
    assert_eq!(vm["hit_ratio"], 0.5);
    // The busiest key first, with its hits; the other after it.
    let busiest = vm["busiest"].as_array().unwrap();
    assert_eq!(busiest.len(), 2, "{vm}");
    assert!(busiest[0]["key"]
        .as_str()
        .unwrap()
        .contains(&sim.restore_point_id(0).to_lowercase()));
    assert_eq!(busiest[0]["hits"], 2);
    assert_eq!(busiest[1]["hits"], 0);
    let jobs = rule(&f, "jobs");
    assert_eq!(
        (jobs["hits"].as_u64(), jobs["misses"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(f["fleet"], Value::Null);
    assert!(f["uptime_s"].is_u64());
    assert!(f["settings"]
        .as_str()
        .unwrap()
        .contains("admin_token = \"***\""));
    assert!(f["series"]["hit"].as_array().is_some_and(|s| !s.is_empty()));

    // The page: the same facts, with the headers that keep it safe, small.
    let page = http
        .get(&gw.url("/admin/status"), &[("authorization", &bearer())])
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers["cache-control"], "no-store");
    assert_eq!(page.headers["x-frame-options"], "DENY");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    // The hashes are those of the page's own style and script, exactly.
    let inline = |open: &str, close: &str| {
        let start = page.body.find(open).expect(open) + open.len();
        let end = start + page.body[start..].find(close).expect(close);
        let digest = emgate::digest::sha256(&page.body.as_bytes()[start..end]);
        format!(
            "'sha256-{}'",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest)
        )
    };
    assert!(
        csp.contains(&format!("style-src {}", inline("<style>", "</style>"))),
        "{csp}"
    );
    assert!(
        csp.contains(&format!("script-src {}", inline("<script>", "</script>"))),
        "{csp}"
    );
    assert_eq!(
        page.body.matches("<script").count(),
        1,
        "one script, hashed"
    );
    assert!(page.body.contains(r#"data-state="valid""#));
    assert!(page.body.contains(r#"<tr data-rule="vm_restore_points">"#));
    assert!(page.body.contains("<svg"));
    // Nothing from elsewhere.
    assert!(
        !page.body.contains(" src=") && !page.body.contains(" href="),
        "no script, style or image from elsewhere"
    );
    let head = http
        .send(
            Method::HEAD,
            &gw.url("/admin/status"),
            &[("authorization", &bearer())],
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    // Other methods on the page: 405 naming the ones it takes.
    let post = http
        .send(
            Method::POST,
            &gw.url("/admin/status"),
            &[("authorization", &bearer())],
        )
        .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers["allow"], "GET, HEAD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_stays_small_with_many_keys() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[("EMGATE_ADMIN_TOKEN", ADMIN)]);
    let http = Http::default();
    for i in 0..150 {
        let reply = http.get(&gw.url(&vm_points(&sim, i)), &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let page = http
        .get(&gw.url("/admin/status"), &[("authorization", &bearer())])
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.len() < 100 * 1024,
        "{} bytes with 150 keys",
        page.body.len()
    );
    let f = facts(&http, &gw).await;
    assert_eq!(rule(&f, "vm_restore_points")["entries"], 150);
    assert_eq!(
        rule(&f, "vm_restore_points")["busiest"]
            .as_array()
            .map(Vec::len),
        Some(8)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_page_or_the_json() {
    let sim = start_sim(sim_config()).await;
    let dir = Scratch::new("status-secrets");
    let client_secret = "dashboard-secret-0f1e2d3c4b5a";
    let clients = dir.join("clients.toml");
    std::fs::write(
        &clients,
        format!(
            "[[clients]]\nname = \"dashboard\"\nsecret_sha256 = \"{}\"\n",
            emgate::digest::sha256_hex(client_secret.as_bytes())
        ),
    )
    .unwrap();
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_ADMIN_TOKEN", ADMIN),
            ("EMGATE_CLIENTS_FILE", clients.to_str().unwrap()),
        ],
    );
    let http = Http::default();
    // A client logs on (a gateway session token), reads, and makes errors.
    let client_token = common::gateway_logon(&http, &gw, "dashboard", client_secret)
        .await
        .0;
    let with_token = [("x-restsvcsessionid", client_token.as_str())];
    assert_eq!(
        http.get(&gw.url(&vm_points(&sim, 0)), &with_token)
            .await
            .status,
        StatusCode::OK
    );
    let _ = http
        .get(
            &gw.url("/api/restorePoints/not-an-id/vmRestorePoints"),
            &with_token,
        )
        .await;
    let _ = http
        .get(&gw.url(&format!("/api/query?type={PASSWORD}")), &with_token)
        .await;
    // EM's session token, as EM handed it to the gateway.
    let em_tokens = em_session_tokens(&sim);
    // The same sessions by their GUID (EM's token is the base64 of its 16
    // bytes in .NET's order).
    let em_ids: Vec<String> = em_tokens
        .iter()
        .filter_map(|t| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, t).ok())
        .filter_map(|b| uuid::Uuid::from_slice_le(&b).ok())
        .flat_map(|id| [id.to_string(), id.to_string().to_uppercase()])
        .collect();
    assert!(!em_ids.is_empty());
    // The EM session goes bad once, so the page has a failure to explain.
    sim.set_password("a-new-password-the-gateway-lacks");
    sim.expire_all_sessions();
    let _ = http.get(&gw.url(&vm_points(&sim, 2)), &with_token).await;

    let page = http
        .get(&gw.url("/admin/status"), &[("authorization", &bearer())])
        .await
        .body;
    let json = http
        .get(
            &gw.url("/admin/status.json"),
            &[("authorization", &bearer())],
        )
        .await
        .body;
    assert!(page.contains("EM session failing"), "{page}");
    assert!(
        json.contains("\"dashboard\""),
        "the client is named: {json}"
    );
    for text in [&page, &json] {
        for secret in [PASSWORD, client_secret, &client_token, ADMIN]
            .into_iter()
            .chain(em_tokens.iter().map(String::as_str))
            .chain(em_ids.iter().map(String::as_str))
        {
            assert!(!text.contains(secret), "a secret on the status page");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_callers_choose_is_shown_escaped() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[("EMGATE_ADMIN_TOKEN", ADMIN)]);
    let http = Http::default();
    // An anonymous gateway's callers are one owner, whatever name an
    // EM-style logon gives: the name is shown nowhere.
    let hostile = r#"<script>alert(1)</script>"'&"#;
    let token = common::gateway_logon(&http, &gw, hostile, "x").await.0;
    // And a path EM does not know, in the errors list.
    let _ = http
        .get(
            &gw.url("/api/jobs/%3Cimg%20src%3Dx%3E"),
            &[("x-restsvcsessionid", &token)],
        )
        .await;
    let page = http
        .get(&gw.url("/admin/status"), &[("authorization", &bearer())])
        .await
        .body;
    assert!(!page.contains("alert(1)"), "{page}");
    assert_eq!(page.matches("<script").count(), 1, "only the page's own");
    assert!(!page.contains("<img"), "{page}");
    let facts = facts(&http, &gw).await;
    assert!(facts["clients"]["busiest"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "~anonymous"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_come_only_from_the_gateways_own_pages() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[("EMGATE_ADMIN_TOKEN", ADMIN)]);
    let http = Http::default();
    traffic(&http, &gw, &sim).await;
    let purge = gw.url("/admin/cache?rule=jobs");
    let auth = bearer();
    let cross = http
        .send(
            Method::DELETE,
            &purge,
            &[
                ("authorization", &auth),
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        )
        .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN, "{}", cross.body);
    assert_eq!(
        http.get(&gw.url("/api/jobs"), &[]).await.headers["x-cache"],
        "HIT",
        "nothing purged"
    );
    let origin = format!("http://{}", gw.addr);
    let own = http
        .send(
            Method::DELETE,
            &purge,
            &[
                ("authorization", &auth),
                ("origin", &origin),
                ("sec-fetch-site", "same-origin"),
            ],
        )
        .await;
    assert_eq!(own.status, StatusCode::NO_CONTENT, "{}", own.body);
    assert_eq!(
        http.get(&gw.url("/api/jobs"), &[]).await.headers["x-cache"],
        "MISS"
    );
    // Only that rule's entries went.
    assert_eq!(
        http.get(&gw.url(&vm_points(&sim, 0)), &[]).await.headers["x-cache"],
        "HIT"
    );
    let unknown = http
        .send(
            Method::DELETE,
            &gw.url("/admin/cache?rule=nope"),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

/// The page in a real headless Chromium: it renders the session as valid,
/// the traffic's counts and the charts, without a console error (a wrong
/// CSP hash would show as one), and its purge button, after the
/// confirmation, empties the entry (the next request is a MISS). A
/// screenshot goes to `target/artifacts/status-page.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_the_page_renders_and_purges() {
    let Some(browser) = Browser::try_start().await else {
        return;
    };
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[("EMGATE_ADMIN_TOKEN", ADMIN)]);
    let http = Http::default();
    traffic(&http, &gw, &sim).await;

    browser.send_header("Authorization", &bearer()).await;
    browser.open(&gw.url("/admin/status")).await;
    let seen = browser
        .eval(
            r##"
            const row = (rule, cls) =>
              document.querySelector(`tr[data-rule="${rule}"] .${cls}`).textContent;
            return {
              title: document.title,
              state: document.getElementById("em-state").dataset.state,
              vmHits: row("vm_restore_points", "rule-hits"),
              vmMisses: row("vm_restore_points", "rule-misses"),
              vmEntries: row("vm_restore_points", "rule-entries"),
              jobsHits: row("jobs", "rule-hits"),
              jobsMisses: row("jobs", "rule-misses"),
              charts: document.querySelectorAll("#charts svg polyline, #charts svg circle").length,
              figures: document.querySelectorAll("#charts figure").length,
              keys: document.querySelectorAll("tr[data-key] button[data-purge]").length,
            };"##,
        )
        .await;
    assert_eq!(seen["title"], "emgate status", "{seen}");
    assert_eq!(seen["state"], "valid", "{seen}");
    assert_eq!(
        (&seen["vmHits"], &seen["vmMisses"], &seen["vmEntries"]),
        (&Value::from("2"), &Value::from("2"), &Value::from("2")),
        "{seen}"
    );
    assert_eq!(
        (&seen["jobsHits"], &seen["jobsMisses"]),
        (&Value::from("1"), &Value::from("1"))
    );
    assert_eq!(seen["figures"], 3, "{seen}");
    assert!(seen["charts"].as_u64() >= Some(1), "a line drawn: {seen}");
    assert_eq!(seen["keys"], 3, "{seen}");

    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(artifacts.join("status-page.png"), &png).unwrap();

    // Purge restore point 0's entry from its row, confirming the dialog.
    let rp = sim.restore_point_id(0).to_lowercase();
    browser
        .click(&format!("tr[data-key*=\"{rp}\"] button[data-purge]"))
        .await;
    let question = browser.dialog_text().await;
    assert!(
        question.starts_with("Purge /api/restorepoints/"),
        "{question}"
    );
    browser.accept_dialog().await;
    // The page refreshes itself after the purge: the row is gone.
    let gone = eventually(Duration::from_secs(10), || async {
        browser
            .eval(&format!(
                "return document.querySelectorAll('tr[data-key*=\"{rp}\"]').length"
            ))
            .await
            == 0
    })
    .await;
    assert!(gone, "the purged key's row is still there");
    assert_eq!(
        http.get(&gw.url(&vm_points(&sim, 0)), &[]).await.headers["x-cache"],
        "MISS",
        "the purge emptied the entry"
    );
    assert_eq!(
        http.get(&gw.url(&vm_points(&sim, 1)), &[]).await.headers["x-cache"],
        "HIT",
        "and only that one"
    );
    // The page's own refresh picks up the new traffic.
    let refreshed = eventually(Duration::from_secs(15), || async {
        browser
            .eval(r#"return document.querySelector('tr[data-rule="vm_restore_points"] .rule-misses').textContent"#)
            .await
            == "3"
    })
    .await;
    assert!(refreshed, "the page did not refresh itself");

    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // EM refuses the gateway now: the page, refreshing itself, says so in
    // its header, where a person looks first.
    sim.set_password("rotated-and-not-told");
    sim.expire_all_sessions();
    let _ = http.get(&gw.url(&vm_points(&sim, 5)), &[]).await;
    let failing = eventually(Duration::from_secs(15), || async {
        browser
            .eval(r#"return document.getElementById("em-state").dataset.state"#)
            .await
            == "failing"
    })
    .await;
    assert!(failing, "the header still says the EM session is valid");
    let png = browser.screenshot().await;
    std::fs::write(artifacts.join("status-page-em-failing.png"), &png).unwrap();
    browser.quit().await;
}

/// In fleet mode the page shows the shared tier and the members; when Redis
/// goes, the page says so (and still answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_fleet_the_page_shows_the_members_and_the_shared_tier() {
    let redis_password = "redis-password-4f3e2d1c";
    let Some(mut redis) = common::Redis::try_start_with_password(redis_password) else {
        return;
    };
    let sim = start_sim(sim_config()).await;
    let url = redis.url();
    let sealing = "fleet-sealing-secret-0a1b2c3d4e";
    let env = [
        ("EMGATE_ADMIN_TOKEN", ADMIN),
        ("EMGATE_SHARED_URL", url.as_str()),
        ("EMGATE_SHARED_SECRET", sealing),
    ];
    let a = Gateway::start(&sim, &env);
    let b = Gateway::start(&sim, &env);
    let http = Http::default();
    // A fetches; B answers from the shared tier.
    assert_eq!(
        http.get(&a.url(&vm_points(&sim, 0)), &[]).await.headers["x-cache"],
        "MISS"
    );
    let from_fleet = eventually(Duration::from_secs(5), || async {
        http.get(&b.url(&vm_points(&sim, 0)), &[]).await.headers["x-cache"] == "HIT"
    })
    .await;
    assert!(from_fleet);
    let f = facts_once(&http, &b, Duration::from_secs(10), |f| {
        f["fleet"]["members"] == 2
    })
    .await;
    assert_eq!(f["fleet"]["members"], 2, "{}", f["fleet"]);
    // B needs EM once: it takes the fleet's session, no logon of its own.
    assert_eq!(
        http.get(&b.url("/api/restorePoints"), &[]).await.status,
        StatusCode::OK
    );
    let f = facts(&http, &b).await;
    assert_eq!(f["em"]["logons_ok"], 0, "{f}");
    assert_eq!(f["fleet"]["shared"], "up");
    assert_eq!(f["fleet"]["prefix"], "emgate");
    assert_eq!(f["em"]["shared"], true);
    assert_eq!(rule(&f, "vm_restore_points")["shared_hits"], 1, "{f}");
    let page = http
        .get(&b.url("/admin/status"), &[("authorization", &bearer())])
        .await
        .body;
    assert!(page.contains("2 live members"), "{page}");
    let json = http
        .get(
            &b.url("/admin/status.json"),
            &[("authorization", &bearer())],
        )
        .await
        .body;
    for text in [&page, &json] {
        assert!(!text.contains(redis_password), "the Redis password shown");
        assert!(!text.contains(sealing), "the sealing secret shown");
    }
    assert!(json.contains(r#"url = \"redis://:***@127.0.0.1"#), "{json}");

    redis.kill();
    let f = facts_once(&http, &b, Duration::from_secs(10), |f| {
        f["fleet"]["shared"] == "down"
    })
    .await;
    assert_eq!(
        f["fleet"]["shared"], "down",
        "the page never noticed Redis going"
    );
    let page = http
        .get(&b.url("/admin/status"), &[("authorization", &bearer())])
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(">down<"), "{}", page.body);
}
