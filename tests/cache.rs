//! The vmRestorePoints cache, end to end: one EM fetch per restore point,
//! however many clients ask.

mod common;

use std::time::Duration;

use common::*;
use emgate::sim::{Fault, FaultTarget, Sim};
use http::{Method, StatusCode};

fn path(sim: &Sim, index: usize) -> String {
    format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(index)
    )
}

/// How many requests for exactly `path_and_query` reached EM.
fn em_saw(sim: &Sim, path_and_query: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path_and_query == path_and_query)
        .count()
}

async fn burst(
    http: &Http,
    url: &str,
    n: usize,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<Reply> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let http = http.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move { http.get(&url, headers).await }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cold_clients_make_one_em_request_and_get_identical_bodies() {
    let sim = start_sim(sim_config()).await;
    // EM is slow, as it is for this query, so all 200 arrive while the fetch runs.
    sim.set_latency(Duration::from_millis(300));
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    let p = path(&sim, 7);

    let replies = burst(&http, &gw.url(&p), 200, &[]).await;

    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    assert!(
        replies.iter().all(|r| r.body == replies[0].body),
        "bodies differ"
    );
    assert_eq!(em_saw(&sim, &p), 1, "EM saw more than one fetch");
    assert_eq!(
        replies[0].json()["Refs"].as_array().unwrap().len(),
        sim.vm_count(7)
    );

    sim.set_latency(Duration::ZERO);
    let later = http.get(&gw.url(&p), &[]).await;
    assert_eq!(later.headers["x-cache"], "HIT");
    assert!(later.headers.contains_key("age"));
    assert_eq!(later.body, replies[0].body);
    assert_eq!(em_saw(&sim, &p), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_xml_clients_of_one_id_share_one_fetch_and_forms_are_separate() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    let p = path(&sim, 11);

    let json = http.get(&gw.url(&p), &[]).await;
    let xml = http
        .get(&gw.url(&p), &[("accept", "application/xml")])
        .await;
    assert_eq!(json.headers["x-cache"], "MISS");
    assert_eq!(xml.headers["x-cache"], "HIT");
    assert!(json.body.starts_with('{'));
    assert!(xml.body.contains("<EntityReferences"), "{}", xml.body);
    assert_eq!(em_saw(&sim, &p), 1);

    // Upper-case ID and `format=ENTITY` are the same keys as their canonical forms.
    let upper = path(&sim, 11).replace(
        &sim.restore_point_id(11),
        &sim.restore_point_id(11).to_uppercase(),
    );
    assert_eq!(
        http.get(&gw.url(&upper), &[]).await.headers["x-cache"],
        "HIT"
    );
    let entity = http.get(&gw.url(&format!("{p}?format=Entity")), &[]).await;
    assert_eq!(entity.headers["x-cache"], "MISS");
    let vms = entity.json()["VmRestorePoints"]
        .as_array()
        .cloned()
        .expect("entities");
    assert_eq!(vms.len(), sim.vm_count(11));
    let again = http.get(&gw.url(&format!("{p}?format=entity")), &[]).await;
    assert_eq!(again.headers["x-cache"], "HIT");
    assert_eq!(em_saw(&sim, &format!("{p}?format=Entity")), 1);

    // The API version some clients add to every request does not bypass it.
    let versioned = http.get(&gw.url(&format!("{p}?v=latest")), &[]).await;
    assert_eq!(versioned.headers["x-cache"], "HIT");
    assert_eq!(versioned.body, json.body);

    // Other query parameters bypass the cache.
    let other = http.get(&gw.url(&format!("{p}?sortAsc=name")), &[]).await;
    assert!(!other.headers.contains_key("x-cache"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_follow_each_clients_host_even_on_a_hit() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    let p = path(&sim, 12);

    // Loopback names: an anonymous gateway answers no others.
    let a = http.get(&gw.url(&p), &[("host", "localhost:9399")]).await;
    let b = http.get(&gw.url(&p), &[("host", "[::1]:8080")]).await;
    assert_eq!(b.headers["x-cache"], "HIT");
    assert!(a.body.contains("http://localhost:9399/api/") && !a.body.contains("[::1]"));
    assert!(b.body.contains("http://[::1]:8080/api/") && !b.body.contains("localhost"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_ttl_a_burst_makes_exactly_one_refetch() {
    let sim = start_sim(sim_config()).await;
    // Without stale-while-revalidate or refresh-ahead, an expired entry is a MISS.
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_CACHE_TTL", "1s"),
            ("EMGATE_CACHE_STALE_WHILE_REVALIDATE", "0s"),
            ("EMGATE_CACHE_REFRESH_AHEAD", "false"),
        ],
    );
    let http = Http::default();
    let p = path(&sim, 20);
    assert_eq!(http.get(&gw.url(&p), &[]).await.headers["x-cache"], "MISS");
    assert_eq!(http.get(&gw.url(&p), &[]).await.headers["x-cache"], "HIT");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    sim.set_latency(Duration::from_millis(300));
    let replies = burst(&http, &gw.url(&p), 50, &[]).await;

    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    assert!(replies.iter().all(|r| r.headers["x-cache"] == "MISS"));
    assert_eq!(em_saw(&sim, &p), 2, "expected exactly one refetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_em_fails_an_expired_entry_is_served_stale_until_the_window_ends() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_CACHE_TTL", "500ms"),
            ("EMGATE_CACHE_STALE_IF_ERROR", "2s"),
            ("EMGATE_CACHE_STALE_WHILE_REVALIDATE", "0s"),
        ],
    );
    let http = Http::default();
    let p = path(&sim, 30);
    let fresh = http.get(&gw.url(&p), &[]).await;
    assert_eq!(fresh.status, StatusCode::OK);

    tokio::time::sleep(Duration::from_millis(700)).await;
    sim.set_fault(FaultTarget::Data, Some(Fault::Status(500)));
    let stale = http.get(&gw.url(&p), &[]).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.headers["x-cache"], "STALE");
    assert!(stale.headers.contains_key("age"));
    assert_eq!(stale.body, fresh.body);

    sim.set_fault(FaultTarget::Data, Some(Fault::Reset));
    assert_eq!(http.get(&gw.url(&p), &[]).await.headers["x-cache"], "STALE");

    tokio::time::sleep(Duration::from_millis(2000)).await;
    let gone = http.get(&gw.url(&p), &[]).await;
    assert_eq!(gone.status, StatusCode::BAD_GATEWAY, "{}", gone.body);
    assert_eq!(gone.json()["StatusCode"], 502);

    // EM's own error answers are passed on, never cached.
    sim.set_fault(FaultTarget::Data, Some(Fault::Status(500)));
    assert_eq!(
        http.get(&gw.url(&path(&sim, 31)), &[]).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    sim.set_fault(FaultTarget::Data, None);
    let ok = http.get(&gw.url(&path(&sim, 31)), &[]).await;
    assert_eq!(
        (ok.status, &ok.headers["x-cache"]),
        (StatusCode::OK, &"MISS".parse().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_hammered_100_times_reaches_em_at_most_once() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    let p = "/api/restorePoints/0badc0de-0000-4000-8000-000000000000/vmRestorePoints";

    for _ in 0..100 {
        let reply = http.get(&gw.url(p), &[]).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.json()["StatusCode"], 404);
    }
    assert_eq!(em_saw(&sim, p), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_are_not_uuids_get_400_and_never_reach_em() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    assert_eq!(http.get(&gw.url("/api/"), &[]).await.status, StatusCode::OK);
    sim.clear_requests();

    let long = "a".repeat(1000);
    for id in [
        "abc",
        "..",
        "%2e%2e",
        long.as_str(),
        "dc216c042e34478e8b9b49a3397ef6f8",
    ] {
        let reply = http
            .get(
                &gw.url(&format!("/api/restorePoints/{id}/vmRestorePoints")),
                &[],
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{id}");
        assert_eq!(reply.json()["StatusCode"], 400);
    }
    assert!(
        sim.requests().is_empty(),
        "reached EM: {:?}",
        sim.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_needs_the_admin_token_and_forces_a_refetch() {
    let sim = start_sim(sim_config()).await;
    let plain = Gateway::start(&sim, &[]);
    let http = Http::default();
    let reply = http
        .send(Method::DELETE, &plain.url("/admin/cache"), &[])
        .await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "admin exists without a token"
    );
    drop(plain);

    let gw = Gateway::start(&sim, &[("EMGATE_ADMIN_TOKEN", "let-me-purge-the-cache")]);
    let p = path(&sim, 40);
    assert_eq!(http.get(&gw.url(&p), &[]).await.headers["x-cache"], "MISS");
    assert_eq!(http.get(&gw.url(&p), &[]).await.headers["x-cache"], "HIT");

    let one = format!("/admin/cache/restorePoints/{}", sim.restore_point_id(40));
    for auth in [None, Some("Bearer wrong"), Some("Basic bGV0LW1lLXB1cmdl")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let reply = http.send(Method::DELETE, &gw.url(&one), &headers).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    assert_eq!(http.get(&gw.url(&p), &[]).await.headers["x-cache"], "HIT");

    let ok = [("authorization", "Bearer let-me-purge-the-cache")];
    assert_eq!(
        http.send(Method::DELETE, &gw.url(&one), &ok).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(http.get(&gw.url(&p), &[]).await.headers["x-cache"], "MISS");
    assert_eq!(
        http.send(Method::DELETE, &gw.url("/admin/cache"), &ok)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(http.get(&gw.url(&p), &[]).await.headers["x-cache"], "MISS");
    assert_eq!(em_saw(&sim, &p), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_does_not_cancel_the_fetch_others_wait_for() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    assert_eq!(http.get(&gw.url("/api/"), &[]).await.status, StatusCode::OK);
    let p = path(&sim, 50);
    sim.set_latency(Duration::from_millis(800));

    // The first client disconnects while its miss is being fetched...
    let impatient =
        tokio::time::timeout(Duration::from_millis(200), http.get(&gw.url(&p), &[])).await;
    assert!(impatient.is_err());
    // ...a second one joins the same fetch and gets its answer.
    let patient = http.get(&gw.url(&p), &[]).await;
    assert_eq!(patient.status, StatusCode::OK);
    assert_eq!(
        em_saw(&sim, &p),
        1,
        "the fetch was cancelled and made again"
    );
    sim.set_latency(Duration::ZERO);
    assert_eq!(http.get(&gw.url(&p), &[]).await.headers["x-cache"], "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_fetch_is_not_undone_by_that_fetch() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[("EMGATE_ADMIN_TOKEN", "purge-it-now-please")]);
    let http = Http::default();
    assert_eq!(http.get(&gw.url("/api/"), &[]).await.status, StatusCode::OK);
    let p = path(&sim, 60);
    sim.set_latency(Duration::from_millis(800));

    let slow = {
        let http = http.clone();
        let url = gw.url(&p);
        tokio::spawn(async move { http.get(&url, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let purge = http
        .send(
            Method::DELETE,
            &gw.url("/admin/cache"),
            &[("authorization", "Bearer purge-it-now-please")],
        )
        .await;
    assert_eq!(purge.status, StatusCode::NO_CONTENT);
    let first = slow.await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["x-cache"], "MISS");

    sim.set_latency(Duration::ZERO);
    let after = http.get(&gw.url(&p), &[]).await;
    assert_eq!(
        after.headers["x-cache"], "MISS",
        "the purged answer was stored"
    );
    assert_eq!(em_saw(&sim, &p), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_words_in_any_case_are_one_entry_and_one_purge_as_on_em() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[("EMGATE_ADMIN_TOKEN", "case-blind-purge-token")]);
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    sim.clear_requests();
    let id = sim.restore_point_id(3);
    let first = http.get(&gw.url(&path(&sim, 3)), &[]).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    // EM's URI templates ignore case: so does the gateway, IDs keep theirs.
    let shouted = format!("/API/RestorePoints/{id}/VmRestorePoints");
    let second = http.get(&gw.url(&shouted), &[]).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(
        second.headers["x-cache"], "HIT",
        "one entry for both spellings"
    );
    assert_eq!(second.body, first.body);
    let fetches = sim
        .requests()
        .iter()
        .filter(|r| r.path_and_query.contains("/vmRestorePoints"))
        .count();
    assert_eq!(fetches, 1);
    // A purge by prefix in another case purges it.
    let auth = [("authorization", "Bearer case-blind-purge-token")];
    let purge = http
        .send(
            Method::DELETE,
            &gw.url(&format!("/admin/cache?prefix=/API/RestorePoints/{id}")),
            &auth,
        )
        .await;
    assert_eq!(purge.status, StatusCode::NO_CONTENT, "{}", purge.body);
    assert_eq!(
        http.get(&gw.url(&shouted), &[]).await.headers["x-cache"],
        "MISS"
    );
    let purge = http
        .send(
            Method::DELETE,
            &gw.url(&format!("/admin/cache/RESTOREPOINTS/{id}")),
            &auth,
        )
        .await;
    assert_eq!(purge.status, StatusCode::NO_CONTENT, "{}", purge.body);
    assert_eq!(
        http.get(&gw.url(&path(&sim, 3)), &[]).await.headers["x-cache"],
        "MISS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hit_carries_its_own_id_and_age_and_else_the_head_of_the_first_answer() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[]);
    let http = Http::default();
    let p = path(&sim, 3);
    let first = http.get(&gw.url(&p), &[("x-request-id", "first-1")]).await;
    let hit_a = http.get(&gw.url(&p), &[("x-request-id", "hit-a")]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hit_b = http.get(&gw.url(&p), &[]).await;
    // The same entry reached by another of the gateway's names: its links
    // name that one, in a head made for it.
    let by_name = gw.url(&p).replace("127.0.0.1", "localhost");
    let named = [
        http.get(&by_name, &[("x-request-id", "named-1")]).await,
        http.get(&by_name, &[("x-request-id", "named-2")]).await,
    ];

    assert_eq!(first.headers["x-cache"], "MISS");
    assert_eq!(first.headers["x-request-id"], "first-1");
    for hit in [&hit_a, &hit_b, &named[0], &named[1]] {
        assert_eq!(hit.status, StatusCode::OK);
        assert_eq!(hit.headers["x-cache"], "HIT");
        assert_eq!(hit.headers["cache-status"], "emgate; hit");
        assert_eq!(hit.headers.get_all("x-request-id").iter().count(), 1);
        assert_eq!(hit.headers.get_all("age").iter().count(), 1);
    }
    assert_eq!(hit_a.headers["x-request-id"], "hit-a");
    let made = hit_b.header("x-request-id");
    assert!(made.len() >= 32 && made != "hit-a", "{made}");
    let age = |r: &Reply| r.header("age").parse::<u64>().unwrap();
    assert!(age(&hit_b) > age(&hit_a), "{} {}", age(&hit_a), age(&hit_b));
    assert_eq!(named[0].headers["x-request-id"], "named-1");
    assert_eq!(named[1].headers["x-request-id"], "named-2");
    // Apart from what is per request or per outcome, every answer of the
    // entry has the first one's head: type, tag, dates, nosniff, cache
    // control, length.
    let rest = |r: &Reply| {
        let mut v: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(n, _)| {
                !["x-request-id", "age", "date", "x-cache", "cache-status"].contains(&n.as_str())
            })
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    };
    assert!(rest(&first).iter().any(|(n, _)| n == "last-modified"));
    assert!(rest(&first)
        .iter()
        .any(|(n, _)| n == "x-content-type-options"));
    assert_eq!(rest(&hit_a), rest(&first));
    assert_eq!(rest(&hit_b), rest(&first));
    assert_eq!(rest(&named[1]), rest(&named[0]));
    assert!(named[1].body.contains("http://localhost:"));
    assert!(!hit_a.body.contains("http://localhost:"));
    assert_eq!(em_saw(&sim, &p), 1);
}

/// A plain hit is answered before the gateway makes a future for it; a hit
/// that needs more (credentials to look at) takes the full path. The client
/// cannot tell them apart: same head, same body, same access line, both
/// counted as hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_the_same_answer_whichever_path_makes_it() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(&sim, &[("EMGATE_LOG_FORMAT", "text")]);
    let http = Http::default();
    let p = path(&sim, 2);
    let first = http.get(&gw.url(&p), &[("x-request-id", "first-1")]).await;
    // The first hit makes the entry's whole head (the full path)...
    let warm = http.get(&gw.url(&p), &[]).await;
    assert_eq!(warm.headers["x-cache"], "HIT");
    // ...and the next bare one is answered at once.
    let plain = http.get(&gw.url(&p), &[("x-request-id", "plain-1")]).await;
    // An EM client's own Basic logon data, which an anonymous gateway
    // compares with nothing: the full path, to the same entry.
    let em_logon = ("authorization", "Basic ZW0tdXNlcjpwdw==");
    let full = http
        .get(&gw.url(&p), &[("x-request-id", "full-1"), em_logon])
        .await;
    assert_eq!(first.headers["x-cache"], "MISS");
    for (hit, id) in [(&plain, "plain-1"), (&full, "full-1")] {
        assert_eq!(hit.status, StatusCode::OK);
        assert_eq!(hit.headers["x-cache"], "HIT");
        assert_eq!(hit.headers["x-request-id"], id);
        assert_eq!(hit.headers.get_all("age").iter().count(), 1);
        assert_eq!(hit.body, first.body);
    }
    assert_eq!(plain.lasting_head(), full.lasting_head());
    assert_eq!(plain.lasting_head(), warm.lasting_head());
    assert_eq!(em_saw(&sim, &p), 1);
    // The access lines differ only in latency and id.
    let expected = format!(
        "GET path=\"{p}\" route=\"/api/restorePoints/{{id}}/vmRestorePoints\" status=200 \
         client=\"~anonymous\" cache=\"HIT\""
    );
    assert_eq!(gw.access_fields("plain-1").await.join(" "), expected);
    assert_eq!(gw.access_fields("full-1").await.join(" "), expected);
    let m = http.get(&gw.url("/metrics"), &[]).await.body;
    let hits = "emgate_cache_requests_total{rule=\"vm_restore_points\",result=\"hit\"}";
    assert_eq!(sample(&m, hits), Some(3.0), "{m}");
}
