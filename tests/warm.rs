//! No client waits for EM: the restore points a backup run makes are
//! cached before anyone asks, work emgate starts on its own stays in its
//! background lane, and `/metrics` says how many client requests waited.

mod common;

use std::time::Duration;

use common::*;
use emgate::sim::Sim;
use http::StatusCode;

fn vm_path(id: &str) -> String {
    format!("/api/restorePoints/{id}/vmRestorePoints")
}

/// How many requests whose path and query start with `prefix` (ignoring
/// case) reached EM.
fn em_saw(sim: &Sim, prefix: &str) -> usize {
    let prefix = prefix.to_ascii_lowercase();
    sim.requests()
        .iter()
        .filter(|r| r.path_and_query.to_ascii_lowercase().starts_with(&prefix))
        .count()
}

/// The value of one series of the gateway's `/metrics` (0 when absent).
async fn metric(http: &Http, gw: &Gateway, series: &str) -> f64 {
    sample(&http.get(&gw.url("/metrics"), &[]).await.body, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_point_a_backup_just_made_is_a_hit_on_its_first_request() {
    let sim = start_sim(sim_config()).await;
    let admin = "an-admin-token-for-the-warm-test";
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_PREFETCH_INTERVAL", "1s"),
            ("EMGATE_ADMIN_TOKEN", admin),
        ],
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    // A portal once asked for the entity form, so new points get it too.
    let old = vm_path(&sim.restore_point_id(3));
    let r = http
        .get(&gw.url(&format!("{old}?format=Entity")), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let id = sim.add_restore_point();
    let path = vm_path(&id);
    let fetched = eventually(Duration::from_secs(10), || async {
        em_saw(&sim, &path) >= 2
    })
    .await;
    assert!(
        fetched,
        "the new restore point was not prefetched: {:?}",
        gw.log_text()
    );

    // EM's answer is seen a moment before the gateway has stored it; a
    // read in that moment waits for the same fetch (counted below).
    for form in ["", "?format=Entity"] {
        let hit = eventually(Duration::from_secs(5), || async {
            let r = http.get(&gw.url(&format!("{path}{form}")), &[]).await;
            r.status == StatusCode::OK && r.header("x-cache") == "HIT"
        })
        .await;
        assert!(hit, "{path}{form} is not a hit");
    }
    // One fetch per form; the generated points of last year were never
    // new (the first look goes back a day), so none was fetched.
    assert_eq!(em_saw(&sim, &format!("{path}?")), 1);
    assert_eq!(em_saw(&sim, &path), 2);
    assert_eq!(em_saw(&sim, &vm_path(&sim.restore_point_id(4))), 0);
    // A following look asks again and fetches nothing again.
    let looks = em_saw(&sim, "/api/query?type=RestorePoint");
    assert!(
        eventually(Duration::from_secs(5), || async {
            em_saw(&sim, "/api/query?type=RestorePoint") > looks
        })
        .await
    );
    assert_eq!(em_saw(&sim, &path), 2);
    let look = sim
        .requests()
        .into_iter()
        .find(|r| r.path_and_query.starts_with("/api/query?type=RestorePoint"))
        .unwrap();
    assert!(
        look.path_and_query.contains("filter=CreationTime%3E%3D%22")
            && look.path_and_query.contains("sortDesc=CreationTime"),
        "{}",
        look.path_and_query
    );

    let ok = "emgate_background_requests_total{kind=\"prefetch\",result=\"ok\"}";
    assert!(metric(&http, &gw, ok).await >= 3.0);
    // The old point's request waited; the new point's did not.
    assert_eq!(
        metric(&http, &gw, "emgate_client_waits_total{reason=\"cold\"}").await,
        1.0
    );
    // The status page says so, and shows the lane.
    let bearer = format!("Bearer {admin}");
    let status = http
        .get(&gw.url("/admin/status.json"), &[("authorization", &bearer)])
        .await
        .json();
    let warm = &status["warm"];
    assert_eq!(warm["reads_last_hour"], 3, "{warm}");
    assert_eq!(warm["waited_last_hour"], 1, "{warm}");
    assert_eq!(warm["client_waits"]["cold"], 1, "{warm}");
    assert!(warm["lane"]["ok"][1].as_u64().unwrap() >= 3, "{warm}");
    assert_eq!(warm["prefetch"], true);
    let page = http
        .get(&gw.url("/admin/status"), &[("authorization", &bearer)])
        .await
        .body;
    assert!(
        page.contains("<span id=\"waited-share\">33.3 %</span>"),
        "{page}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looks_for_new_points_start_every_interval_however_slow_the_query_service_is() {
    let sim = start_sim(sim_config()).await;
    // Each look takes most of an interval at EM.
    sim.set_path_latency("/api/query", Some(Duration::from_millis(800)));
    let gw = Gateway::start(&sim, &[("EMGATE_PREFETCH_INTERVAL", "1s")]);
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    let looks = || em_saw(&sim, "/api/query?type=RestorePoint");
    let before = looks();
    tokio::time::sleep(Duration::from_secs(6)).await;
    // A look every second: 6 (an interval after each look ended, 1.8 s
    // apart: 3 or 4).
    let made = looks() - before;
    assert!(made >= 5, "{made} looks in 6 s");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_restore_point_does_not_wait_for_the_first_looks_backlog() {
    let sim = start_sim(sim_config()).await;
    // A busy morning before the start: six points, each 3 s at EM, for a
    // lane of one: 18 s of backlog for the first look.
    let morning: Vec<String> = (0..6)
        .map(|_| vm_path(&sim.add_restore_point()).to_ascii_lowercase())
        .collect();
    for path in &morning {
        sim.set_path_latency(path, Some(Duration::from_secs(3)));
    }
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_PREFETCH_INTERVAL", "1s"),
            ("EMGATE_BACKGROUND_CONCURRENCY", "1"),
        ],
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    let begun = |sim: &Sim| morning.iter().filter(|p| em_saw(sim, p) == 1).count();
    let backlog = eventually(Duration::from_secs(5), || async { begun(&sim) >= 1 }).await;
    assert!(backlog, "the first look's backlog did not begin");

    let path = vm_path(&sim.add_restore_point());
    let fetched = eventually(Duration::from_secs(15), || async {
        em_saw(&sim, &path) == 1
    })
    .await;
    assert!(fetched, "the new restore point was not prefetched");
    // It went before the backlog's last points.
    assert!(
        begun(&sim) < 6,
        "the new point waited for the whole backlog"
    );
    // EM counts the request when it arrives; the gateway stores the answer
    // a moment later (a client in between shares the prefetch's fetch).
    let hit = eventually(Duration::from_secs(2), || async {
        http.get(&gw.url(&path), &[]).await.header("x-cache") == "HIT"
    })
    .await;
    assert!(hit, "the prefetched point is not served from the cache");
    assert_eq!(em_saw(&sim, &path), 1, "a client's request asked EM again");
    let backlog = "emgate_background_requests_total{kind=\"prefetch_backlog\",result=\"ok\"}";
    assert!(metric(&http, &gw, backlog).await >= 1.0);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_a_portal_was_just_shown_is_fetched_before_the_portal_asks_for_it() {
    let sim = start_sim(sim_config()).await;
    // Yesterday's point is known from the first look; the next look is an
    // hour away.
    let yesterday = sim.add_restore_point();
    let gw = Gateway::start(&sim, &[("EMGATE_PREFETCH_INTERVAL", "1h")]);
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    let looked = eventually(Duration::from_secs(10), || async {
        em_saw(&sim, &vm_path(&yesterday)) == 1
    })
    .await;
    assert!(looked, "the first look did not fetch yesterday's point");

    // A backup run makes two points; a portal lists the newest through
    // emgate, as restore portals do, and shows them.
    let (a, b) = (sim.add_restore_point(), sim.add_restore_point());
    let r = http.get(&gw.url(&newest(6, "")), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let listed = ids_in(&r.body);
    assert_eq!(listed.len(), 6, "{}", r.body);
    // Newest first by the time each backup began: the points listed before
    // yesterday's are new to emgate, the ones after it older.
    let known = listed.iter().position(|id| *id == yesterday).unwrap();
    let (new, older) = (&listed[..known], &listed[known + 1..]);
    assert!(new.contains(&a) || new.contains(&b), "{listed:?}");
    for id in new {
        let path = vm_path(id);
        let hit = eventually(Duration::from_secs(5), || async {
            http.get(&gw.url(&path), &[]).await.header("x-cache") == "HIT"
        })
        .await;
        assert!(hit, "{id} was not fetched: {:?}", gw.log_text());
        assert_eq!(em_saw(&sim, &path), 1, "{id}");
    }
    // Only the points before the first known one were new: the older
    // ones the page also listed (last year's) were not fetched.
    for id in older {
        assert_eq!(em_saw(&sim, &vm_path(id)), 0, "{id}");
    }
    assert_eq!(em_saw(&sim, &vm_path(&yesterday)), 1);

    // Listings that are not the newest hand nothing over: another page,
    // a filter, another order.
    let mut others = Vec::new();
    for listing in [
        newest(6, "&page=2"),
        newest(6, "&filter=CreationTime%3C%222020-01-01%22"),
        "/api/query?type=RestorePoint&pageSize=6".to_string(),
    ] {
        let r = http.get(&gw.url(&listing), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{listing}: {}", r.body);
        others.extend(ids_in(&r.body));
    }
    assert!(!others.is_empty());
    // A handed-over point is at EM within milliseconds (the simulator
    // answers at once): a second is plenty.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in others
        .iter()
        .filter(|id| !new.contains(id) && **id != yesterday)
    {
        assert_eq!(em_saw(&sim, &vm_path(id)), 0, "{id}");
    }
    sim.shutdown().await;
}

/// The portal's listing of the `n` newest restore points (and `more`).
fn newest(n: usize, more: &str) -> String {
    format!("/api/query?type=RestorePoint&sortDesc=CreationTime&pageSize={n}{more}")
}

/// The restore point ids a listing names, in its order.
fn ids_in(body: &str) -> Vec<String> {
    body.split("urn:veeam:RestorePoint:")
        .skip(1)
        .filter_map(|rest| rest.get(..36).map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_off_fetches_nothing_before_it_is_asked() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_PREFETCH", "false"),
            ("EMGATE_PREFETCH_INTERVAL", "1s"),
        ],
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    let id = sim.add_restore_point();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(em_saw(&sim, "/api/query"), 0);
    let r = http.get(&gw.url(&vm_path(&id)), &[]).await;
    assert_eq!(r.header("x-cache"), "MISS");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_requests_that_waited_for_em_are_counted_by_why() {
    let sim = start_sim(sim_config()).await;
    let admin = "an-admin-token-for-the-waits-test";
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_ADMIN_TOKEN", admin),
            ("EMGATE_PREFETCH", "false"),
            ("EMGATE_CACHE_REFRESH_AHEAD", "false"),
            ("EMGATE_CACHE_TTL", "1s"),
            ("EMGATE_CACHE_STALE_WHILE_REVALIDATE", "0s"),
            ("EMGATE_CACHE_STALE_IF_ERROR", "1s"),
        ],
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    let path = vm_path(&sim.restore_point_id(1));
    let waits = |reason: &'static str| {
        let (http, gw) = (&http, &gw);
        async move {
            metric(
                http,
                gw,
                &format!("emgate_client_waits_total{{reason=\"{reason}\"}}"),
            )
            .await
        }
    };

    assert_eq!(
        http.get(&gw.url(&path), &[]).await.header("x-cache"),
        "MISS"
    );
    assert_eq!(http.get(&gw.url(&path), &[]).await.header("x-cache"), "HIT");
    assert_eq!(waits("cold").await, 1.0);
    // Past the TTL, within stale-if-error: the client waits for the refresh.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    http.get(&gw.url(&path), &[]).await;
    assert_eq!(waits("stale_miss").await, 1.0);
    // Past every window: the entry expired.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        http.get(&gw.url(&path), &[]).await.header("x-cache"),
        "MISS"
    );
    assert_eq!(waits("expired").await, 1.0);
    // No rule caches a restore point itself.
    let point = format!("/api/restorePoints/{}", sim.restore_point_id(1));
    assert_eq!(http.get(&gw.url(&point), &[]).await.status, StatusCode::OK);
    assert_eq!(waits("bypass").await, 1.0);
    assert_eq!(waits("cold").await, 1.0);
    // An operator asks for a fresh answer: it waited, and it is one read.
    let bearer = format!("Bearer {admin}");
    let fresh = http
        .get(
            &gw.url(&path),
            &[("authorization", &bearer), ("cache-control", "no-cache")],
        )
        .await;
    assert_eq!(fresh.header("x-cache"), "MISS");
    assert_eq!(waits("bypass").await, 2.0);
    let status = http
        .get(&gw.url("/admin/status.json"), &[("authorization", &bearer)])
        .await
        .json();
    let warm = &status["warm"];
    // MISS, HIT, the stale miss, MISS, the uncached point, the fresh MISS.
    assert_eq!(warm["reads_last_hour"], 6, "{warm}");
    assert_eq!(warm["waited_last_hour"], 5, "{warm}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_miss_is_not_held_up_by_a_full_background_lane() {
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_PREFETCH_INTERVAL", "1s"),
            ("EMGATE_BACKGROUND_CONCURRENCY", "2"),
            ("EMGATE_UPSTREAM_CONCURRENCY", "5"),
        ],
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    // A backup run makes eight points, and EM is slow to list their VMs.
    for _ in 0..8 {
        let id = sim.add_restore_point();
        sim.set_path_latency(
            &format!("/api/restorepoints/{id}"),
            Some(Duration::from_secs(3)),
        );
    }
    let full = eventually(Duration::from_secs(10), || async {
        metric(&http, &gw, "emgate_background_in_flight").await == 2.0
            && metric(&http, &gw, "emgate_background_queued").await > 0.0
    })
    .await;
    assert!(full, "the background lane never filled");

    let path = vm_path(&sim.restore_point_id(9));
    let r = http
        .get_within(&gw.url(&path), &[], Duration::from_secs(2))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-cache"), "MISS");
    // The lane never ran more than its bound.
    assert!(metric(&http, &gw, "emgate_background_in_flight").await <= 2.0);
    sim.shutdown().await;
}

/// An empty folder of its own for a state file.
fn state_dir(tag: &str) -> Scratch {
    Scratch::new(&format!("warm-{tag}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_the_keys_clients_read_before_it_as_hits() {
    let sim = start_sim(sim_config()).await;
    let dir = state_dir("restart");
    let env = [
        ("EMGATE_PREFETCH", "false"),
        ("EMGATE_STATE_DIR", dir.to_str().unwrap()),
        ("EMGATE_ADMIN_TOKEN", "an-admin-token-for-the-warm-test"),
    ];
    let http = Http::default();
    let hot = [
        vm_path(&sim.restore_point_id(1)),
        format!("{}?format=Entity", vm_path(&sim.restore_point_id(2))),
    ];
    let once = vm_path(&sim.restore_point_id(3));
    {
        let mut gw = Gateway::start(&sim, &env);
        assert!(becomes_ready(&http, &gw).await);
        for p in &hot {
            for _ in 0..3 {
                assert_eq!(http.get(&gw.url(p), &[]).await.status, StatusCode::OK);
            }
        }
        http.get(&gw.url(&once), &[]).await;
        assert!(gw.terminate().success());
    }
    // Keys and hits only: nothing a client or EM would call a secret.
    let text = std::fs::read_to_string(dir.join("hot-keys.json")).unwrap();
    assert!(text.contains(&sim.restore_point_id(1)), "{text}");
    assert!(
        !text.contains(&sim.restore_point_id(3)),
        "read once is not hot: {text}"
    );
    for secret in [
        PASSWORD,
        "an-admin-token-for-the-warm-test",
        "X-RestSvcSessionId",
    ] {
        assert!(!text.contains(secret));
    }

    sim.clear_requests();
    let gw = Gateway::start(&sim, &env);
    assert!(becomes_ready(&http, &gw).await);
    let warmed = eventually(Duration::from_secs(10), || async {
        hot.iter().all(|p| em_saw(&sim, p) >= 1)
    })
    .await;
    assert!(
        warmed,
        "the hot keys were not fetched again: {}",
        gw.log_text()
    );
    for p in &hot {
        let r = http.get(&gw.url(p), &[]).await;
        assert_eq!(r.header("x-cache"), "HIT", "{p}");
    }
    assert_eq!(
        http.get(&gw.url(&once), &[]).await.header("x-cache"),
        "MISS"
    );
    let rewarmed = "emgate_background_requests_total{kind=\"rewarm\",result=\"ok\"}";
    assert_eq!(metric(&http, &gw, rewarmed).await, 2.0);
    assert_eq!(
        metric(&http, &gw, "emgate_client_waits_total{reason=\"cold\"}").await,
        1.0
    );

    // Killed without a shutdown, a replica leaves the last whole file.
    drop(gw);
    let before = std::fs::read_to_string(dir.join("hot-keys.json")).unwrap();
    assert_eq!(before, text);
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_or_foreign_state_file_is_ignored_with_a_warning() {
    let sim = start_sim(sim_config()).await;
    let http = Http::default();
    let key = vm_path(&sim.restore_point_id(1)).to_ascii_lowercase();
    for (tag, content, warning) in [
        ("garbage", "{\"format\": \"emgate-hot-k".to_string(), "not one of emgate's"),
        (
            "foreign",
            format!("{{\"format\":\"emgate-hot-keys\",\"version\":1,\"upstream\":\"0123456789abcdef\",\"keys\":[[\"{key}\",9]]}}"),
            "another EM",
        ),
        (
            "version",
            format!("{{\"format\":\"emgate-hot-keys\",\"version\":99,\"upstream\":\"x\",\"keys\":[[\"{key}\",9]]}}"),
            "another format",
        ),
    ] {
        let dir = state_dir(tag);
        std::fs::write(dir.join("hot-keys.json"), content).unwrap();
        sim.clear_requests();
        let gw = Gateway::start(
            &sim,
            &[("EMGATE_PREFETCH", "false"), ("EMGATE_STATE_DIR", dir.to_str().unwrap())],
        );
        assert!(becomes_ready(&http, &gw).await);
        let warned = eventually(Duration::from_secs(5), || async {
            gw.log_text().contains(warning)
        })
        .await;
        assert!(warned, "{tag}: {}", gw.log_text());
        assert_eq!(em_saw(&sim, &key), 0, "{tag}");
        assert_eq!(http.get(&gw.url(&key), &[]).await.status, StatusCode::OK);
        let _ = std::fs::remove_dir_all(&dir);
    }
    sim.shutdown().await;
}

/// A state folder holding `keys` as hot keys for the EM at `em`.
fn state_with(tag: &str, em: &str, keys: &[String]) -> Scratch {
    let dir = state_dir(tag);
    let file = serde_json::json!({
        "format": "emgate-hot-keys",
        "version": 1,
        "upstream": &emgate::digest::sha256_hex(em.as_bytes())[..16],
        "keys": keys.iter().map(|k| (k.as_str(), 5)).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("hot-keys.json"), file.to_string()).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_share_one_background_budget_and_one_looks_for_new_points() {
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let sim = start_sim(sim_config()).await;
    // EM is slow to list a restore point's VMs, so background work piles up.
    sim.set_path_latency("/api/restorepoints/", Some(Duration::from_millis(300)));
    let http = Http::default();
    let url = redis.url();
    // Each replica restarts with ten hot keys of its own: forty to rewarm.
    let mut dirs = Vec::new();
    let mut keys = Vec::new();
    for r in 0..4 {
        let mine: Vec<String> = (0..10)
            .map(|i| vm_path(&sim.restore_point_id(20 + r * 10 + i)).to_ascii_lowercase())
            .collect();
        dirs.push(state_with(&format!("fleet-{r}"), &sim.base_url(), &mine));
        keys.extend(mine);
    }
    sim.watch_in_flight("/api/restorepoints/");
    let gws: Vec<Gateway> = dirs
        .iter()
        .map(|dir| {
            Gateway::start(
                &sim,
                &[
                    ("EMGATE_SHARED_URL", url.as_str()),
                    ("EMGATE_STATE_DIR", dir.to_str().unwrap()),
                    ("EMGATE_BACKGROUND_CONCURRENCY", "2"),
                    ("EMGATE_BACKGROUND_RATE", "0"),
                    ("EMGATE_PREFETCH_INTERVAL", "1s"),
                ],
            )
        })
        .collect();
    for gw in &gws {
        assert!(becomes_ready(&http, gw).await);
    }
    let id = sim.add_restore_point();
    let done = eventually(Duration::from_secs(30), || async {
        keys.iter().all(|k| em_saw(&sim, k) >= 1) && em_saw(&sim, &vm_path(&id)) >= 1
    })
    .await;
    assert!(done, "not every hot key was fetched again");
    // Four replicas, each allowed two at once, together never ran more
    // than two: the budget is the fleet's.
    assert_eq!(sim.peak_in_flight(), 2, "peak of background requests at EM");
    assert_eq!(
        em_saw(&sim, &vm_path(&id)),
        1,
        "one fetch of the new point for the fleet"
    );
    // One replica looks for new restore points, about once a second.
    let before = em_saw(&sim, "/api/query?type=RestorePoint");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let looks = em_saw(&sim, "/api/query?type=RestorePoint") - before;
    assert!((1..=5).contains(&looks), "{looks} looks in 3 s");
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_replica_does_not_wait_for_work_queued_in_the_fleets_lane() {
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let sim = start_sim(sim_config()).await;
    let http = Http::default();
    let url = redis.url();
    // The replica that looks for new points has one background place; the
    // other serves a restore portal.
    let looker = Gateway::start(
        &sim,
        &[
            ("EMGATE_SHARED_URL", url.as_str()),
            ("EMGATE_BACKGROUND_CONCURRENCY", "1"),
            ("EMGATE_BACKGROUND_RATE", "0"),
            ("EMGATE_PREFETCH_INTERVAL", "1s"),
        ],
    );
    let portal = Gateway::start(
        &sim,
        &[
            ("EMGATE_SHARED_URL", url.as_str()),
            ("EMGATE_PREFETCH", "false"),
        ],
    );
    assert!(becomes_ready(&http, &looker).await);
    assert!(becomes_ready(&http, &portal).await);
    // A backup run makes four points, and EM takes 3 s to list each one's
    // VMs: the lane runs one and queues the others.
    let ids: Vec<String> = (0..4).map(|_| sim.add_restore_point()).collect();
    for id in &ids {
        sim.set_path_latency(
            &format!("/api/restorepoints/{id}"),
            Some(Duration::from_secs(3)),
        );
    }
    let queued = eventually(Duration::from_secs(10), || async {
        metric(&http, &looker, "emgate_background_in_flight").await == 1.0
            && metric(&http, &looker, "emgate_background_queued").await >= 1.0
    })
    .await;
    assert!(
        queued,
        "the looker's lane never queued: {:?}",
        looker.log_text()
    );
    // The points the lane holds back (EM has not been asked for them yet):
    // the portal's clients ask for them all at once. Each waits for EM
    // (3 s), not for the lane ahead of it on the other replica (3 s more).
    let waiting: Vec<String> = ids
        .iter()
        .map(|id| vm_path(id))
        .filter(|p| em_saw(&sim, p) == 0)
        .collect();
    assert!(!waiting.is_empty());
    let asks: Vec<_> = waiting
        .iter()
        .map(|path| {
            let (http, url) = (http.clone(), portal.url(path));
            tokio::spawn(async move {
                http.get_within(&url, &[], Duration::from_millis(5500))
                    .await
            })
        })
        .collect();
    for (ask, path) in asks.into_iter().zip(&waiting) {
        let r = ask.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        assert_eq!(r.header("x-cache"), "MISS", "{path}");
    }
    // The fleet still fetched it once: the queued work found it stored.
    let all = eventually(Duration::from_secs(20), || async {
        ids.iter().all(|id| em_saw(&sim, &vm_path(id)) >= 1)
            && metric(&http, &looker, "emgate_background_queued").await == 0.0
            && metric(&http, &looker, "emgate_background_in_flight").await == 0.0
    })
    .await;
    assert!(all);
    for path in &waiting {
        assert_eq!(em_saw(&sim, path), 1, "one EM fetch of {path}");
    }
    sim.shutdown().await;
}

/// The gateway's `/metrics` value of `series` (0 when absent).
async fn cache_result(http: &Http, gw: &Gateway, result: &str) -> f64 {
    metric(
        http,
        gw,
        &format!("emgate_cache_requests_total{{rule=\"vm_restore_points\",result=\"{result}\"}}"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_restarted_whole_holds_what_its_clients_read_before_they_ask() {
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let sim = start_sim(sim_config()).await;
    let http = Http::default();
    let url = redis.url();
    let env = [
        ("EMGATE_SHARED_URL", url.as_str()),
        ("EMGATE_PREFETCH", "false"),
    ];
    let hot: Vec<String> = (0..3)
        .map(|i| vm_path(&sim.restore_point_id(40 + i)))
        .collect();
    {
        let mut a = Gateway::start(&sim, &env);
        let mut b = Gateway::start(&sim, &env);
        assert!(becomes_ready(&http, &a).await && becomes_ready(&http, &b).await);
        for p in &hot {
            for gw in [&a, &a, &a, &b, &b, &b] {
                assert_eq!(http.get(&gw.url(p), &[]).await.status, StatusCode::OK);
            }
        }
        assert!(a.terminate().success() && b.terminate().success());
    }
    sim.clear_requests();
    let c = Gateway::start(&sim, &env);
    assert!(becomes_ready(&http, &c).await);
    let warmed = eventually(Duration::from_secs(10), || async {
        metric(
            &http,
            &c,
            "emgate_cache_refreshes_total{rule=\"vm_restore_points\",reason=\"warm\"}",
        )
        .await
            >= 3.0
    })
    .await;
    assert!(warmed, "{}", c.log_text());
    for p in &hot {
        assert_eq!(http.get(&c.url(p), &[]).await.header("x-cache"), "HIT");
    }
    // Answered from this replica's memory, filled from the shared tier
    // before anyone asked: no client request went to Redis or EM.
    assert_eq!(cache_result(&http, &c, "hit").await, 3.0);
    assert_eq!(cache_result(&http, &c, "shared_hit").await, 0.0);
    assert!(hot.iter().all(|p| em_saw(&sim, p) == 0));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_comes_back_empty_a_replica_puts_its_hot_entries_back_for_the_fleet() {
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let sim = start_sim(sim_config()).await;
    let http = Http::default();
    let url = redis.url();
    let env = [
        ("EMGATE_SHARED_URL", url.as_str()),
        ("EMGATE_PREFETCH", "false"),
    ];
    let a = Gateway::start(&sim, &env);
    assert!(becomes_ready(&http, &a).await);
    let p = vm_path(&sim.restore_point_id(60));
    for _ in 0..3 {
        assert_eq!(http.get(&a.url(&p), &[]).await.status, StatusCode::OK);
    }
    assert_eq!(em_saw(&sim, &p), 1);
    assert_eq!(redis.cli(&["FLUSHALL"]).trim(), "OK");
    let put_back = eventually(Duration::from_secs(15), || async {
        a.log_text()
            .contains("hot entries put back in the shared tier")
    })
    .await;
    assert!(put_back, "{}", a.log_text());
    // A replica that never saw the key finds it in the shared tier.
    let b = Gateway::start(&sim, &env);
    assert!(becomes_ready(&http, &b).await);
    let r = http.get(&b.url(&p), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(em_saw(&sim, &p), 1, "EM was asked again");
    assert_eq!(cache_result(&http, &b, "miss").await, 0.0);
    sim.shutdown().await;
}

/// The vmRestorePoints keys of `n` restore points from `first` on; EM takes
/// `slow` to answer the first.
fn keys_the_first_slow(sim: &Sim, first: usize, n: usize, slow: Duration) -> Vec<String> {
    sim.set_path_latency(
        &format!("/api/restorepoints/{}", sim.restore_point_id(first)),
        Some(slow),
    );
    (first..first + n)
        .map(|i| vm_path(&sim.restore_point_id(i)).to_ascii_lowercase())
        .collect()
}

/// A gateway (prefetch off, one more setting) started with `keys` as the
/// hot keys of before its start; its state folder.
fn started_with_hot_keys(
    sim: &Sim,
    tag: &str,
    keys: &[String],
    setting: (&str, &str),
) -> (Gateway, Scratch) {
    let dir = state_with(tag, &sim.base_url(), keys);
    let gw = Gateway::start(
        sim,
        &[
            ("EMGATE_PREFETCH", "false"),
            ("EMGATE_STATE_DIR", dir.to_str().unwrap()),
            setting,
        ],
    );
    (gw, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_asking_for_what_waits_in_the_background_lane_does_not_wait_for_the_lane() {
    let sim = start_sim(sim_config()).await;
    // The hottest key is slow at EM: its rewarm holds the lane's one place.
    let keys = keys_the_first_slow(&sim, 70, 3, Duration::from_secs(10));
    let (gw, dir) = started_with_hot_keys(
        &sim,
        "urgent",
        &keys,
        ("EMGATE_BACKGROUND_CONCURRENCY", "1"),
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    let queued = eventually(Duration::from_secs(5), || async {
        metric(&http, &gw, "emgate_background_queued").await >= 1.0
    })
    .await;
    assert!(queued, "the second key's rewarm never waited in the lane");
    // The other keys' rewarms wait behind the first (one of them in the
    // lane); clients asking for them get them at once.
    let (u1, u2) = (gw.url(&keys[1]), gw.url(&keys[2]));
    let (r1, r2) = tokio::join!(
        http.get_within(&u1, &[], Duration::from_secs(2)),
        http.get_within(&u2, &[], Duration::from_secs(2)),
    );
    assert_eq!((r1.status, r2.status), (StatusCode::OK, StatusCode::OK));
    for key in &keys[1..] {
        assert_eq!(em_saw(&sim, key), 1, "one EM request for {key}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_told_to_warm_before_ready_is_ready_once_its_hot_keys_are_cached() {
    let sim = start_sim(sim_config()).await;
    let keys = keys_the_first_slow(&sim, 80, 2, Duration::from_secs(3));
    let (gw, dir) = started_with_hot_keys(
        &sim,
        "before-ready",
        &keys,
        ("EMGATE_WARM_BEFORE_READY", "true"),
    );
    let http = Http::default();
    // Logged on, but still fetching its hot keys: not ready, and it says why.
    let warming = eventually(Duration::from_secs(5), || async {
        let r = http.get(&gw.url("/readyz"), &[]).await;
        r.status == StatusCode::SERVICE_UNAVAILABLE
            && r.json()["em_session"] == "valid"
            && r.json()["warming"] == true
    })
    .await;
    assert!(warming, "{}", http.get(&gw.url("/readyz"), &[]).await.body);
    assert!(becomes_ready(&http, &gw).await);
    for key in &keys {
        assert_eq!(http.get(&gw.url(key), &[]).await.header("x-cache"), "HIT");
    }
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_warming_before_ready_opens_before_its_first_rewarmed_keys_go_stale() {
    let sim = start_sim(sim_config()).await;
    // The hottest key takes 12 s at EM, and entries are served at once for
    // 4 s (2 s fresh, 2 s stale while
    // revalidated): waiting for the whole rewarm would open with the
    // hottest key past that.
    let keys = keys_the_first_slow(&sim, 100, 2, Duration::from_secs(12));
    let dir = state_with("stale-before-ready", &sim.base_url(), &keys);
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_PREFETCH", "false"),
            ("EMGATE_STATE_DIR", dir.to_str().unwrap()),
            ("EMGATE_WARM_BEFORE_READY", "true"),
            ("EMGATE_CACHE_TTL", "2s"),
            ("EMGATE_CACHE_STALE_WHILE_REVALIDATE", "2s"),
            ("EMGATE_UPSTREAM_TIMEOUT", "20s"),
        ],
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    // Ready after those 4 s, the rewarm going on: the hottest key is still
    // at EM.
    let early = eventually(Duration::from_secs(2), || async {
        gw.log_text()
            .contains("ready before every hot key is cached again")
    })
    .await;
    assert!(early, "{}", gw.log_text());
    assert!(
        !gw.log_text().contains("are cached again\""),
        "{}",
        gw.log_text()
    );
    let rewarmed = eventually(Duration::from_secs(15), || async {
        gw.log_text().contains("are cached again\"")
    })
    .await;
    assert!(rewarmed, "the rewarm did not go on after ready");
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_fetches_what_clients_read_before_the_days_backlog() {
    let sim = start_sim(sim_config()).await;
    // The day's points before the start, none of them read: the first
    // look's backlog.
    let morning: Vec<String> = (0..3)
        .map(|_| vm_path(&sim.add_restore_point()).to_ascii_lowercase())
        .collect();
    // What clients read before the restart: five old points, a second
    // each at EM, one at a time.
    let hot: Vec<String> = (110..115)
        .map(|i| {
            let id = sim.restore_point_id(i);
            sim.set_path_latency(
                &format!("/api/restorepoints/{id}"),
                Some(Duration::from_secs(1)),
            );
            vm_path(&id).to_ascii_lowercase()
        })
        .collect();
    let dir = state_with("backlog-after-rewarm", &sim.base_url(), &hot);
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_STATE_DIR", dir.to_str().unwrap()),
            ("EMGATE_BACKGROUND_CONCURRENCY", "1"),
            ("EMGATE_PREFETCH_INTERVAL", "1h"),
        ],
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    let done = eventually(Duration::from_secs(15), || async {
        morning.iter().all(|p| em_saw(&sim, p) == 1)
    })
    .await;
    assert!(done, "the backlog was not fetched");
    let asked: Vec<String> = sim
        .requests()
        .into_iter()
        .map(|r| r.path_and_query.to_ascii_lowercase())
        .collect();
    let at = |path: &String| asked.iter().position(|a| a == path).unwrap();
    let last_hot = hot.iter().map(at).max().unwrap();
    let first_backlog = morning.iter().map(at).min().unwrap();
    assert!(
        last_hot < first_backlog,
        "a backlog point went before the hot keys: {asked:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_writes_to_the_fleets_warm_keys_fetch_nothing_and_block_nothing() {
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let sim = start_sim(sim_config()).await;
    let url = redis.url();
    let planted = vm_path(&sim.restore_point_id(90)).to_ascii_lowercase();
    // A hot key without a valid MAC, one without any, and garbage.
    redis.cli(&[
        "ZADD",
        "{emgate}:hot",
        "9e15",
        &format!("{planted} 00ff00ff"),
    ]);
    redis.cli(&["ZADD", "{emgate}:hot", "9e15", &planted]);
    redis.cli(&["ZADD", "{emgate}:hot", "9e15", "../../admin/cache 00"]);
    // The fleet's background lane filled with places held for ever, and a
    // rate that is no number.
    for i in 0..10 {
        redis.cli(&[
            "ZADD",
            "{emgate}:bg:places",
            "9e15",
            &format!("stranger-{i}"),
        ]);
    }
    redis.cli(&["SET", "{emgate}:bg:rate", "not-a-number"]);
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_SHARED_URL", url.as_str()),
            ("EMGATE_PREFETCH_INTERVAL", "1s"),
        ],
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    // Background work still runs: a new restore point is prefetched.
    let id = sim.add_restore_point();
    let fetched = eventually(Duration::from_secs(10), || async {
        em_saw(&sim, &vm_path(&id)) >= 1
    })
    .await;
    assert!(
        fetched,
        "the planted places blocked the lane: {}",
        gw.log_text()
    );
    // Its answer is the client's: a hit once stored (a read in the moment
    // between EM's answer and the store waits for the same fetch), and EM
    // asked once.
    let hit = eventually(Duration::from_secs(5), || async {
        http.get(&gw.url(&vm_path(&id)), &[])
            .await
            .header("x-cache")
            == "HIT"
    })
    .await;
    assert!(hit, "the prefetched point is not a hit");
    assert_eq!(em_saw(&sim, &vm_path(&id)), 1);
    // The planted keys were never fetched, and were counted as rejected.
    assert_eq!(em_saw(&sim, &planted), 0);
    assert!(!sim
        .requests()
        .iter()
        .any(|r| r.path_and_query.contains("admin")));
    let rejected = "emgate_shared_rejected_total{kind=\"hot_key\"}";
    assert!(metric(&http, &gw, rejected).await >= 1.0);
    sim.shutdown().await;
}
