//! Every read collapsed, more routes cached by rules, and a warm client never
//! waiting for EM: what dashboards and exporters polling the gateway get.

mod common;

use std::time::{Duration, Instant};

use common::*;
use emgate::sim::Sim;
use http::{Method, StatusCode};

fn em_saw(sim: &Sim, path_and_query: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path_and_query == path_and_query)
        .count()
}

async fn ready(sim: &Sim, gw: &Gateway, http: &Http) {
    assert!(becomes_ready(http, gw).await);
    sim.clear_requests();
}

/// A settings file caching one restore point's own resource (`/api/restorePoints/{id}`).
fn rule_file(ttl: &str, swr: &str) -> String {
    format!(
        "[[cache.rules]]\nname = \"restore_point\"\npath = \"/api/restorePoints/{{id}}\"\n\
         ttl = \"{ttl}\"\nstale_while_revalidate = \"{swr}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_identical_reads_of_an_uncached_route_make_one_em_request() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    ready(&sim, &gw, &http).await;
    sim.set_latency(Duration::from_millis(500));
    let rp = sim.restore_point_id(2);
    let path = format!("/api/restorePoints/{rp}");
    let mut tasks = Vec::new();
    for i in 0..100 {
        let http = http.clone();
        let url = gw.url(&path);
        // Half of them ask for XML: one EM answer serves both representations.
        let accept = if i % 2 == 0 {
            "application/json"
        } else {
            "application/xml"
        };
        tasks.push(tokio::spawn(async move {
            http.get(&url, &[("accept", accept)]).await
        }));
    }
    let mut collapsed = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        if i % 2 == 0 {
            assert!(r.json()["UID"].is_string(), "{}", r.body);
        } else {
            assert!(r.body.contains("<EntityRef "), "{}", r.body);
        }
        assert!(!r.headers.contains_key("x-cache"), "no rule caches it");
        let status = r.headers["cache-status"].to_str().unwrap().to_string();
        assert!(status.starts_with("emgate; fwd=bypass"), "{status}");
        if status.ends_with("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(em_saw(&sim, &path), 1, "{:?}", sim.requests());
    assert_eq!(collapsed, 99);
    // A different query is a different request, and so is a HEAD.
    let other = http
        .get(&gw.url(&format!("{path}?format=Entity")), &[])
        .await;
    assert_eq!(other.status, StatusCode::OK);
    let head = http.send(Method::HEAD, &gw.url(&path), &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(em_saw(&sim, &format!("{path}?format=Entity")), 1);
    assert_eq!(em_saw(&sim, &path), 2, "the HEAD made its own request");
    let m = http.get(&gw.url("/metrics"), &[]).await.body;
    assert_eq!(
        sample(&m, "emgate_cache_collapsed_total{rule=\"uncached\"}"),
        Some(99.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_collapsing_off_every_read_reaches_em() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[("EMGATE_COLLAPSE", "false")]);
    let http = Http::default();
    ready(&sim, &gw, &http).await;
    sim.set_latency(Duration::from_millis(300));
    let path = format!("/api/restorePoints/{}", sim.restore_point_id(2));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let http = http.clone();
        let url = gw.url(&path);
        tasks.push(tokio::spawn(async move { http.get(&url, &[]).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(em_saw(&sim, &path), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_cached_route_is_a_hit_until_its_ttl_and_normalised_queries_share_an_entry() {
    let sim = start_sim(sim_config()).await;
    // No refresh-ahead: the entry is left to expire at its TTL.
    let gw = Gateway::start_with_file(
        &sim,
        &[("EMGATE_CACHE_REFRESH_AHEAD", "false")],
        Some(&rule_file("2s", "0s")),
    );
    let http = Http::default();
    ready(&sim, &gw, &http).await;
    let rp = sim.restore_point_id(4);
    let path = format!("/api/restorePoints/{rp}");
    let first = http.get(&gw.url(&path), &[]).await;
    assert_eq!(first.headers["x-cache"], "MISS");
    assert_eq!(first.headers["cache-status"], "emgate; fwd=miss");
    for _ in 0..5 {
        let hit = http.get(&gw.url(&path), &[]).await;
        assert_eq!(hit.headers["x-cache"], "HIT");
        assert_eq!(hit.headers["cache-status"], "emgate; hit");
        assert!(hit.headers.contains_key("age"));
        assert_eq!(hit.body, first.body);
    }
    // Upper-case ID and path, `v`: the same entry.
    let upper = format!("/api/RESTOREPOINTS/{}?v=latest", rp.to_uppercase());
    assert_eq!(
        http.get(&gw.url(&upper), &[]).await.headers["x-cache"],
        "HIT"
    );
    assert_eq!(em_saw(&sim, &path), 1);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let after = http.get(&gw.url(&path), &[]).await;
    assert_eq!(after.headers["x-cache"], "MISS");
    assert_eq!(em_saw(&sim, &path), 2);

    // The vmRestorePoints route: `?V=latest&Format=entity` and `?format=Entity` are one entry.
    let vm = format!("/api/restorePoints/{rp}/vmRestorePoints");
    let a = http
        .get(&gw.url(&format!("{vm}?V=latest&Format=entity")), &[])
        .await;
    assert_eq!(a.headers["x-cache"], "MISS");
    let b = http.get(&gw.url(&format!("{vm}?format=Entity")), &[]).await;
    assert_eq!(b.headers["x-cache"], "HIT");
    assert_eq!(a.body, b.body);
    assert_eq!(em_saw(&sim, &format!("{vm}?format=Entity")), 1);
    let m = http.get(&gw.url("/metrics"), &[]).await.body;
    assert_eq!(
        sample(
            &m,
            "emgate_cache_requests_total{rule=\"restore_point\",result=\"hit\"}"
        ),
        Some(6.0),
        "{m}"
    );
    assert!(
        sample(&m, "emgate_cache_entries{rule=\"vm_restore_points\"}").unwrap() >= 1.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "emgate_requests_total{route=\"/api/restorePoints/{id}\",status=\"200\"}"
        ),
        Some(8.0),
        "rule templates label the routes: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_stale_while_revalidate_a_client_gets_the_copy_at_once_and_one_refresh_runs() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start_with_file(
        &sim,
        &[("EMGATE_CACHE_REFRESH_AHEAD", "false")],
        Some(&rule_file("1s", "30s")),
    );
    let http = Http::default();
    ready(&sim, &gw, &http).await;
    let path = format!("/api/restorePoints/{}", sim.restore_point_id(6));
    let first = http.get(&gw.url(&path), &[]).await;
    assert_eq!(first.headers["x-cache"], "MISS");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    sim.set_latency(Duration::from_secs(2));
    for _ in 0..5 {
        let started = Instant::now();
        let stale = http.get(&gw.url(&path), &[]).await;
        let took = started.elapsed();
        assert_eq!(stale.headers["x-cache"], "STALE");
        assert_eq!(stale.headers["cache-status"], "emgate; fwd=stale");
        assert!(took < Duration::from_millis(100), "{took:?}");
    }
    // Exactly one background refresh reached EM, and it lands.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(em_saw(&sim, &path), 2, "{:?}", sim.requests());
    let fresh = http.get(&gw.url(&path), &[]).await;
    assert_eq!(fresh.headers["x-cache"], "HIT");
    let m = http.get(&gw.url("/metrics"), &[]).await.body;
    assert_eq!(
        sample(
            &m,
            "emgate_cache_refreshes_total{rule=\"restore_point\",reason=\"revalidate\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_read_every_second_stays_fresh_and_one_nobody_reads_is_left_to_expire() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start_with_file(&sim, &[], Some(&rule_file("2s", "0s")));
    let http = Http::default();
    ready(&sim, &gw, &http).await;
    let read = format!("/api/restorePoints/{}", sim.restore_point_id(8));
    let unread = format!("/api/restorePoints/{}", sim.restore_point_id(9));
    assert_eq!(
        http.get(&gw.url(&read), &[]).await.headers["x-cache"],
        "MISS"
    );
    assert_eq!(
        http.get(&gw.url(&unread), &[]).await.headers["x-cache"],
        "MISS"
    );
    // Five TTLs of one read a second.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = http.get(&gw.url(&read), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-cache"], "HIT", "the read key went cold");
    }
    let fetches = em_saw(&sim, &read);
    assert!(
        (4..=7).contains(&fetches),
        "about one EM fetch per TTL over 5 TTLs, not {fetches}"
    );
    assert_eq!(em_saw(&sim, &unread), 1, "a key nobody read was refreshed");
    let m = http.get(&gw.url("/metrics"), &[]).await.body;
    assert!(
        sample(
            &m,
            "emgate_cache_refreshes_total{rule=\"restore_point\",reason=\"ahead\"}"
        )
        .unwrap()
            >= 3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_reads_get_304_and_each_representation_has_its_own_etag() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let camel = Gateway::start(&sim, &[("EMGATE_JSON_CASE", "camel")]);
    let http = Http::default();
    ready(&sim, &gw, &http).await;
    let vm = format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(10)
    );
    let json = http.get(&gw.url(&vm), &[]).await;
    let tag = json.headers["etag"].to_str().unwrap().to_string();
    assert!(tag.starts_with('"') && !tag.starts_with("W/"), "{tag}");
    assert!(json.headers.contains_key("last-modified"));
    let xml = http
        .get(&gw.url(&vm), &[("accept", "application/xml")])
        .await;
    let camel_json = http.get(&camel.url(&vm), &[]).await;
    let xml_tag = xml.headers["etag"].to_str().unwrap();
    let camel_tag = camel_json.headers["etag"].to_str().unwrap();
    assert_ne!(tag, xml_tag);
    assert_ne!(tag, camel_tag);
    assert_ne!(xml_tag, camel_tag);

    let not_modified = http.get(&gw.url(&vm), &[("if-none-match", &tag)]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.headers["etag"], tag.as_str());
    let list = format!("\"nope\", {tag}");
    assert_eq!(
        http.get(&gw.url(&vm), &[("if-none-match", &list)])
            .await
            .status,
        StatusCode::NOT_MODIFIED
    );
    // The JSON tag does not match the XML representation.
    let other = http
        .get(
            &gw.url(&vm),
            &[("if-none-match", &tag), ("accept", "application/xml")],
        )
        .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(
        http.get(&gw.url(&vm), &[("if-none-match", "\"stale\"")])
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_from_a_client_does_not_reach_em_but_the_operators_does_and_dates_the_refetch() {
    let sim = start_sim(sim_config()).await;
    let token = "operator-token-0123456789";
    // Anonymous (a sidecar), and with a clients file: the admin token is
    // the operator's credential on /api in both.
    let secret = "dashboard-secret-0123456789";
    let dir = Scratch::new("operator");
    let clients = dir.join("clients.toml");
    std::fs::write(
        &clients,
        format!(
            "[[clients]]\nname = \"dashboard\"\nsecret_sha256 = \"{}\"\n",
            emgate::digest::sha256_hex(secret.as_bytes())
        ),
    )
    .unwrap();
    let client_auth = format!("Bearer {secret}");
    type Setup<'a> = (Vec<(&'a str, &'a str)>, Option<&'a str>);
    let setups: [Setup; 2] = [
        (vec![("EMGATE_ADMIN_TOKEN", token)], None),
        (
            vec![
                ("EMGATE_ADMIN_TOKEN", token),
                ("EMGATE_CLIENTS_FILE", clients.to_str().unwrap()),
            ],
            Some(client_auth.as_str()),
        ),
    ];
    for (i, (env, client)) in setups.iter().enumerate() {
        let gw = Gateway::start(&sim, env);
        let http = Http::default();
        ready(&sim, &gw, &http).await;
        let vm = format!(
            "/api/restorePoints/{}/vmRestorePoints",
            sim.restore_point_id(11 + i)
        );
        let with_client = |h: (&'static str, &'static str)| {
            let mut v = vec![h];
            if let Some(c) = client {
                v.push(("authorization", c));
            }
            v
        };
        let first = http
            .get(&gw.url(&vm), &with_client(("accept", "*/*")))
            .await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.body);
        // `Last-Modified` is when EM gave the entry: the same on every hit.
        let modified = first.headers["last-modified"].clone();
        for h in [
            ("cache-control", "no-cache"),
            ("cache-control", "max-age=0"),
            ("pragma", "no-cache"),
        ] {
            let r = http.get(&gw.url(&vm), &with_client(h)).await;
            assert_eq!(r.headers["x-cache"], "HIT", "{h:?}");
            assert_eq!(r.headers["last-modified"], modified, "{h:?}");
        }
        assert_eq!(em_saw(&sim, &vm), 1);
        // A second later, so the refetched entry's date differs.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let bearer = format!("Bearer {token}");
        let r = http
            .get(
                &gw.url(&vm),
                &[("cache-control", "no-cache"), ("authorization", &bearer)],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "setup {i}: {}", r.body);
        assert_eq!(r.headers["x-cache"], "MISS", "setup {i}");
        assert_eq!(em_saw(&sim, &vm), 2);
        // The refetched entry's date, on it and on the hits after it.
        let date = |v: &http::HeaderValue| httpdate::parse_http_date(v.to_str().unwrap()).unwrap();
        let refetched = r.headers["last-modified"].clone();
        assert!(date(&refetched) > date(&modified), "setup {i}");
        // A second later still: a date of the answer's own time would move.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let hit = http
            .get(&gw.url(&vm), &with_client(("accept", "*/*")))
            .await;
        assert_eq!(hit.headers["x-cache"], "HIT", "setup {i}");
        assert_eq!(hit.headers["last-modified"], refetched, "setup {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_by_prefix_and_by_restore_point_and_an_oversize_answer_is_served_not_stored() {
    let sim = start_sim(sim_config()).await;
    let token = "operator-token-0123456789";
    let file =
        "[[cache.rules]]\nname = \"restore_points\"\npath = \"/api/restorePoints\"\nttl = \"1h\"\n";
    let gw = Gateway::start_with_file(
        &sim,
        &[
            ("EMGATE_ADMIN_TOKEN", token),
            // One answer may take an eighth of this: the restore point list
            // (about 200 KB in two representations) is too large to keep.
            ("EMGATE_CACHE_MAX_BYTES", "1MiB"),
        ],
        Some(file),
    );
    let http = Http::default();
    ready(&sim, &gw, &http).await;
    let auth = [("authorization", format!("Bearer {token}"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for _ in 0..2 {
        let big = http.get(&gw.url("/api/restorePoints"), &[]).await;
        assert_eq!(big.status, StatusCode::OK);
        assert_eq!(
            big.headers["x-cache"], "MISS",
            "an oversize answer was stored"
        );
    }
    let vm = |i| {
        format!(
            "/api/restorePoints/{}/vmRestorePoints",
            sim.restore_point_id(i)
        )
    };
    for i in 12..15 {
        http.get(&gw.url(&vm(i)), &[]).await;
        http.get(&gw.url(&format!("{}?format=Entity", vm(i))), &[])
            .await;
    }
    // Purge one restore point: both forms go, the others stay.
    let r = http
        .send(
            Method::DELETE,
            &gw.url(&format!(
                "/admin/cache/restorePoints/{}",
                sim.restore_point_id(12)
            )),
            &auth,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let x = |r: Reply| r.headers["x-cache"].to_str().unwrap().to_string();
    assert_eq!(x(http.get(&gw.url(&vm(12)), &[]).await), "MISS");
    assert_eq!(
        x(http
            .get(&gw.url(&format!("{}?format=Entity", vm(12))), &[])
            .await),
        "MISS"
    );
    assert_eq!(x(http.get(&gw.url(&vm(13)), &[]).await), "HIT");
    // Purge by prefix (case-insensitive).
    let r = http
        .send(
            Method::DELETE,
            &gw.url("/admin/cache?prefix=/api/RestorePoints"),
            &auth,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(x(http.get(&gw.url(&vm(13)), &[]).await), "MISS");
    assert_eq!(x(http.get(&gw.url(&vm(14)), &[]).await), "MISS");
    let bad = http
        .send(Method::DELETE, &gw.url("/admin/cache?prefix=/etc"), &auth)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let m = http.get(&gw.url("/metrics"), &[]).await.body;
    assert_eq!(
        sample(&m, "emgate_cache_not_stored_total{rule=\"restore_points\"}"),
        Some(2.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_bound_holds_for_every_rule_together() {
    let sim = start_sim(sim_config()).await;
    let file = rule_file("1h", "0s");
    let gw = Gateway::start_with_file(&sim, &[("EMGATE_CACHE_MAX_BYTES", "128KiB")], Some(&file));
    let http = Http::default();
    ready(&sim, &gw, &http).await;
    for i in 0..120 {
        let id = sim.restore_point_id(i);
        http.get(&gw.url(&format!("/api/restorePoints/{id}")), &[])
            .await;
        http.get(
            &gw.url(&format!(
                "/api/restorePoints/{id}/vmRestorePoints?format=Entity"
            )),
            &[],
        )
        .await;
    }
    let m = http.get(&gw.url("/metrics"), &[]).await.body;
    let bytes: f64 = ["restore_point", "vm_restore_points"]
        .iter()
        .map(|r| sample(&m, &format!("emgate_cache_bytes{{rule=\"{r}\"}}")).unwrap())
        .sum();
    assert!(bytes > 64.0 * 1024.0, "the cache holds nothing? {bytes}");
    assert!(bytes <= 128.0 * 1024.0, "over the bound: {bytes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_rules_cache_what_dashboards_poll_and_can_be_turned_off() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    ready(&sim, &gw, &http).await;
    let job = sim.job_id(1);
    for (path, rule) in [
        (
            "/api/reports/summary/overview".to_string(),
            "reports_summary",
        ),
        (
            "/api/reports/summary/job_statistics".to_string(),
            "reports_summary",
        ),
        (
            "/api/query?type=VmRestorePoint&format=Entities&pageSize=10&page=2".to_string(),
            "query",
        ),
        ("/api/jobs".to_string(), "jobs"),
        (format!("/api/jobs/{job}?format=Entity"), "jobs"),
        ("/api/backupSessions".to_string(), "backup_sessions"),
    ] {
        let first = http.get(&gw.url(&path), &[]).await;
        assert_eq!(first.status, StatusCode::OK, "{path}: {}", first.body);
        assert_eq!(first.headers["x-cache"], "MISS", "{path}");
        let again = http.get(&gw.url(&path), &[]).await;
        assert_eq!(again.headers["x-cache"], "HIT", "{path}");
        assert_eq!(again.body, first.body, "{path}");
        let m = http.get(&gw.url("/metrics"), &[]).await.body;
        assert!(
            sample(
                &m,
                &format!("emgate_cache_requests_total{{rule=\"{rule}\",result=\"hit\"}}")
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{path}: {m}"
        );
    }
    // Another page of a query is another entry.
    let page3 = http
        .get(
            &gw.url("/api/query?type=VmRestorePoint&format=Entities&pageSize=10&page=3"),
            &[],
        )
        .await;
    assert_eq!(page3.headers["x-cache"], "MISS");
    let page2 = http
        .get(
            &gw.url("/api/query?page=2&PAGESIZE=10&format=entities&type=VmRestorePoint&v=latest"),
            &[],
        )
        .await;
    assert_eq!(
        page2.headers["x-cache"], "HIT",
        "the same query, normalised"
    );

    let off = Gateway::start(&sim, &[("EMGATE_CACHE_DEFAULT_RULES", "false")]);
    assert!(becomes_ready(&http, &off).await);
    for _ in 0..2 {
        let r = http.get(&off.url("/api/jobs"), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(!r.headers.contains_key("x-cache"));
        assert_eq!(r.headers["cache-status"], "emgate; fwd=bypass");
    }
    // The built-in rule stays.
    let vm = format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(1)
    );
    http.get(&off.url(&vm), &[]).await;
    assert_eq!(http.get(&off.url(&vm), &[]).await.headers["x-cache"], "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_drops_the_cached_reads_of_its_collection_and_its_location_points_here() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[("EMGATE_ALLOW_WRITES", "true")]);
    let http = Http::default();
    ready(&sim, &gw, &http).await;
    let job = sim.job_id(2);
    let entity = format!("/api/jobs/{job}?format=Entity");
    http.get(&gw.url(&entity), &[]).await;
    assert_eq!(
        http.get(&gw.url(&entity), &[]).await.headers["x-cache"],
        "HIT"
    );
    let started = http
        .send(
            Method::POST,
            &gw.url(&format!("/api/jobs/{job}?action=start")),
            &[],
        )
        .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    let location = started.headers["location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!("http://{}/api/tasks/", gw.addr)),
        "EM's Location was not pointed at the gateway: {location}"
    );
    assert!(!started.body.contains(&sim.base_url()), "{}", started.body);
    assert_eq!(
        http.get(&gw.url(&entity), &[]).await.headers["x-cache"],
        "MISS",
        "a write left the job's cached reads"
    );
    let task = http.get(location, &[]).await;
    assert_eq!(task.status, StatusCode::OK, "{}", task.body);
}
