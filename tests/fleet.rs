//! Fleet mode: three replicas sharing a real `redis-server` act as one
//! gateway in front of EM, and Redis failing costs sharing, never an answer.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use emgate::em::session::{LogonLease, SessionStore, SharedEmSession, StoreFuture};
use emgate::secret::Secret;
use emgate::sim::Sim;
use http::{Method, StatusCode};

/// Three gateway processes sharing `redis`.
fn fleet(sim: &Sim, redis: &Redis, extra: &[(&str, &str)]) -> Vec<Gateway> {
    (0..3).map(|_| replica(sim, redis, extra)).collect()
}

fn replica(sim: &Sim, redis: &Redis, extra: &[(&str, &str)]) -> Gateway {
    let url = redis.url();
    let mut env = vec![("EMGATE_SHARED_URL", url.as_str())];
    env.extend_from_slice(extra);
    Gateway::start(sim, &env)
}

async fn all_ready(http: &Http, gws: &[Gateway]) {
    for gw in gws {
        assert!(
            becomes_ready(http, gw).await,
            "a replica never became ready"
        );
    }
}

fn vm(sim: &Sim, i: usize) -> String {
    format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(i)
    )
}

/// What EM was asked, in order (for a failed assertion's message).
fn em_paths(sim: &Sim) -> Vec<String> {
    sim.requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect()
}

/// The simulator, a `redis-server` and three ready replicas with `extra`
/// settings, EM's requests so far forgotten; `None` without `redis-server`.
async fn ready_fleet(extra: &[(&str, &str)]) -> Option<(Sim, Redis, Vec<Gateway>, Http)> {
    let sim = start_sim(sim_config()).await;
    let redis = Redis::try_start()?;
    let gws = fleet(&sim, &redis, extra);
    let http = Http::default();
    all_ready(&http, &gws).await;
    sim.clear_requests();
    Some((sim, redis, gws, http))
}

fn em_fetches(sim: &Sim, prefix: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with(prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_requests_for_ten_ids_over_three_replicas_make_ten_em_fetches() {
    let Some((sim, _redis, gws, http)) = ready_fleet(&[
        ("EMGATE_CACHE_TTL", "2s"),
        ("EMGATE_CACHE_STALE_WHILE_REVALIDATE", "0s"),
        ("EMGATE_CACHE_REFRESH_AHEAD", "false"),
    ])
    .await
    else {
        return;
    };
    sim.set_path_latency("/api/restorePoints/", Some(Duration::from_millis(300)));
    for round in 0..2 {
        let mut tasks = Vec::new();
        for i in 0..300 {
            let http = http.clone();
            let url = gws[i % 3].url(&vm(&sim, i % 10));
            tasks.push(tokio::spawn(async move { http.get(&url, &[]).await }));
        }
        let mut shared = 0;
        let mut statuses = std::collections::BTreeMap::new();
        for t in tasks {
            let r = t.await.unwrap();
            *statuses
                .entry(r.headers["cache-status"].to_str().unwrap().to_string())
                .or_insert(0) += 1;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            if r.headers["cache-status"]
                .to_str()
                .unwrap()
                .contains("detail=shared")
            {
                shared += 1;
            }
        }
        assert_eq!(
            em_fetches(&sim, "/api/restorePoints/"),
            10 * (round + 1),
            "round {round}: {:?}",
            em_paths(&sim)
        );
        assert!(
            shared > 0,
            "no answer came from the shared tier: {statuses:?}"
        );
        // Past the TTL everywhere.
        tokio::time::sleep(Duration::from_millis(2300)).await;
    }
    let m = http.get(&gws[1].url("/metrics"), &[]).await.body;
    assert_eq!(sample(&m, "emgate_shared_up"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "emgate_fleet_members"), Some(3.0), "{m}");
    // Present from the start, so an alert on it sees 0, not "no data".
    assert_eq!(
        sample(&m, "emgate_fleet_lease_takeovers_total"),
        Some(0.0),
        "{m}"
    );
    assert!(m.contains("# HELP emgate_shared_up "), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_logs_on_once_and_once_more_after_em_ends_the_session() {
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let gws = fleet(&sim, &redis, &[]);
    let http = Http::default();
    all_ready(&http, &gws).await;
    assert_eq!(
        sim.stats().logons_ok,
        1,
        "three replicas from cold: one logon"
    );
    for gw in &gws {
        let ready = http.get(&gw.url("/readyz"), &[]).await.json();
        assert_eq!(ready["shared"], "up", "{ready}");
        assert_eq!(ready["em_session_shared"], true, "{ready}");
    }
    sim.expire_all_sessions();
    let mut tasks = Vec::new();
    for i in 0..96 {
        let http = http.clone();
        let url = gws[i % 3].url(&format!("/api/restorePoints/{}", sim.restore_point_id(i)));
        tasks.push(tokio::spawn(async move { http.get(&url, &[]).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let logs: Vec<String> = gws
        .iter()
        .map(|g| {
            g.log_text()
                .lines()
                .filter(|l| {
                    l.contains("WARN") || l.contains("EM session") || l.contains("logged on")
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    assert_eq!(
        sim.stats().logons_ok,
        2,
        "one more logon for the fleet; replicas said:\n{}",
        logs.join("\n--\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_session_works_on_every_replica_and_a_logout_ends_it_everywhere() {
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let gws = fleet(&sim, &redis, &[]);
    let http = Http::default();
    all_ready(&http, &gws).await;
    let (token, logon) = gateway_logon(&http, &gws[0], "u", "p").await;
    let id = logon.json()["SessionId"].as_str().unwrap().to_string();
    let with = [("x-restsvcsessionid", token.as_str())];
    // The session and the client's list of sessions have no Redis expiry
    // (an eviction policy must never end them): the session's end is in
    // its record, pushed on by every use, and the fleet sweeps ended ones.
    let lists = redis.cli(&["--scan", "--pattern", "*co:*"]);
    let list = lists.lines().next().expect("the client's list of sessions");
    let sessions = redis.cli(&["--scan", "--pattern", "*cs:*"]);
    let record = sessions.lines().next().expect("the session's record");
    let end_before: u64 = redis.cli(&["HGET", record, "exp"]).trim().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for gw in &gws {
        let r = http.get(&gw.url("/api/logonSessions"), &with).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.json()["LogonSessions"][0]["SessionId"], id.as_str());
    }
    for key in [list, record] {
        let ttl: i64 = redis.cli(&["PTTL", key]).trim().parse().unwrap();
        assert_eq!(ttl, -1, "{key} has a Redis expiry: eviction could end it");
    }
    let end_after: u64 = redis.cli(&["HGET", record, "exp"]).trim().parse().unwrap();
    assert!(end_after > end_before, "a use pushes the session's end on");
    let bye = http
        .send(
            Method::DELETE,
            &gws[1].url(&format!("/api/logonSessions/{id}")),
            &with,
        )
        .await;
    assert_eq!(bye.status, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for gw in [&gws[0], &gws[2]] {
        let r = http.get(&gw.url("/api/logonSessions"), &with).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
}

/// A session token is named once per connection (its fleet name is an
/// HMAC of it), its session asked on every request: one logged out on
/// another replica is refused on a connection that used it a moment ago,
/// and another session on that connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_logged_out_on_another_replica_is_refused_on_a_kept_alive_connection() {
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    // A Redis the fleet has used for a minute: not one that came back
    // empty a moment ago, when an unknown token is looked up again for a
    // few seconds while replicas put their sessions back.
    let time = redis.cli(&["TIME"]);
    let secs: u64 = time.lines().next().unwrap().trim().parse().unwrap();
    let marker = format!("an-earlier-replica@{}", (secs - 60) * 1000);
    redis.cli(&["SET", "{emgate}:boot", &marker]);
    let gws = fleet(&sim, &redis, &[]);
    let http = Http::default();
    all_ready(&http, &gws).await;
    let path = vm(&sim, 3);
    for _ in 0..2 {
        assert_eq!(
            http.get(&gws[0].url(&path), &[]).await.status,
            StatusCode::OK
        );
    }
    let (gone, logon) = gateway_logon(&http, &gws[0], "u", "p").await;
    let (kept, _) = gateway_logon(&http, &gws[0], "v", "q").await;
    let hit = (StatusCode::OK, "HIT".to_string());
    let mut one = OneConnection::open(&gws[0]).await;
    for i in 0..3 {
        let with = ("x-restsvcsessionid", gone.as_str());
        assert_eq!(one.get(&path, with, &format!("gone-{i}")).await, hit);
    }
    let with_kept = ("x-restsvcsessionid", kept.as_str());
    assert_eq!(one.get(&path, with_kept, "kept-1").await, hit);

    let id = logon.json()["SessionId"].as_str().unwrap().to_string();
    let bye = http
        .send(
            Method::DELETE,
            &gws[1].url(&format!("/api/logonSessions/{id}")),
            &[("x-restsvcsessionid", gone.as_str())],
        )
        .await;
    assert_eq!(bye.status, StatusCode::NO_CONTENT);
    // The fleet tells every replica at once (a replica that missed it asks
    // again within 2 s), and the token is refused then, not after the
    // wait a fleet whose Redis just came back empty makes for sessions
    // being put back: this one started seconds ago, on a Redis that lost
    // nothing.
    let ended = Instant::now();
    let mut status = StatusCode::OK;
    while ended.elapsed() < Duration::from_secs(3) {
        let with = ("x-restsvcsessionid", gone.as_str());
        status = one.get(&path, with, "gone-after").await.0;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a logged-out session still served after {:?}",
        ended.elapsed()
    );
    assert!(
        ended.elapsed() < Duration::from_millis(2500),
        "refused only after {:?}: looked up again as if Redis had come back empty",
        ended.elapsed()
    );
    assert_eq!(one.get(&path, with_kept, "kept-2").await, hit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_at_one_replica_purges_every_replica() {
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let token = "fleet-admin-token-0123456789";
    let gws = fleet(&sim, &redis, &[("EMGATE_ADMIN_TOKEN", token)]);
    let http = Http::default();
    all_ready(&http, &gws).await;
    let p = vm(&sim, 3);
    for gw in &gws {
        http.get(&gw.url(&p), &[]).await;
    }
    assert_eq!(
        http.get(&gws[2].url(&p), &[]).await.headers["x-cache"],
        "HIT"
    );
    let bearer = format!("Bearer {token}");
    // Everything; then by a prefix written with a trailing slash.
    for purge in ["/admin/cache", "/admin/cache?prefix=/api/restorePoints/"] {
        for gw in &gws {
            http.get(&gw.url(&p), &[]).await;
        }
        let r = http
            .send(
                Method::DELETE,
                &gws[0].url(purge),
                &[("authorization", &bearer)],
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        tokio::time::sleep(Duration::from_millis(300)).await;
        sim.clear_requests();
        let after = http.get(&gws[2].url(&p), &[]).await;
        assert_eq!(after.headers["x-cache"], "MISS", "{purge}");
        assert_eq!(em_fetches(&sim, &p), 1, "{purge}: the shared copy went too");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_replica_fetching_for_the_fleet_dies_another_takes_over() {
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let mut gws = fleet(&sim, &redis, &[("EMGATE_SHARED_LEASE", "2s")]);
    let http = Http::default();
    all_ready(&http, &gws).await;
    sim.clear_requests();
    sim.set_path_latency("/api/restorePoints/", Some(Duration::from_secs(2)));
    let p = vm(&sim, 7);
    let started = Instant::now();
    // A starts the fleet's fetch...
    let first = {
        let http = http.clone();
        let url = gws[0].url(&p);
        tokio::spawn(async move { http.try_get(&url, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...B and C wait for it...
    let mut waiting = Vec::new();
    for gw in &gws[1..] {
        for _ in 0..5 {
            let http = http.clone();
            let url = gw.url(&p);
            waiting.push(tokio::spawn(async move {
                let r = http.get(&url, &[]).await;
                (r, started.elapsed())
            }));
        }
    }
    // The fleet is busy meanwhile: entries of other keys land all the time
    // (their notices must not put off the waiters' look at the lease).
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let traffic = {
        let (http, busy) = (http.clone(), busy.clone());
        let urls: Vec<String> = gws[1..].iter().map(|g| g.url("/api/jobs")).collect();
        tokio::spawn(async move {
            let mut n = 0u64;
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let url = format!("{}?busy={n}", urls[(n % 2) as usize]);
                let _ = http.try_get(&url, &[]).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...and A dies mid-fetch.
    gws[0].kill();
    let _ = first.await;
    for w in waiting {
        let (r, took) = w.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(
            took < Duration::from_millis(6500),
            "answered after {took:?}"
        );
    }
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    let landed = traffic.await.unwrap();
    assert!(landed > 50, "only {landed} other entries landed meanwhile");
    assert!(em_fetches(&sim, &p) <= 2, "{:?}", em_paths(&sim));
    let m = http.get(&gws[1].url("/metrics"), &[]).await.body;
    let m2 = http.get(&gws[2].url("/metrics"), &[]).await.body;
    let takeovers = sample(&m, "emgate_fleet_lease_takeovers_total").unwrap_or(0.0)
        + sample(&m2, "emgate_fleet_lease_takeovers_total").unwrap_or(0.0);
    assert_eq!(takeovers, 1.0, "{m}\n{m2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_dying_mid_load_fails_no_request_and_the_fleet_shares_again_after() {
    let sim = start_sim(sim_config()).await;
    let Some(mut redis) = Redis::try_start() else {
        return;
    };
    let port = redis.port;
    let gws = fleet(&sim, &redis, &[]);
    let http = Http::default();
    all_ready(&http, &gws).await;
    let load = {
        let http = http.clone();
        let urls: Vec<String> = (0..60)
            .map(|i| gws[i % 3].url(&format!("/api/restorePoints/{}", sim.restore_point_id(i))))
            .chain((0..60).map(|i| gws[i % 3].url(&vm(&sim, 100 + i))))
            .collect();
        tokio::spawn(async move {
            let mut failed = Vec::new();
            for u in urls {
                let r = http.get(&u, &[]).await;
                if r.status != StatusCode::OK {
                    failed.push((u, r.status, r.body));
                }
            }
            failed
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.kill();
    let failed = load.await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    // Down: still served, and /readyz says so without turning unready.
    let r = http.get(&gws[0].url(&vm(&sim, 50)), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let ready = http.get(&gws[0].url("/readyz"), &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["shared"], "down");

    let _back = Redis::start_on(port);
    // Within seconds the fleet shares again: a key fetched at A is a
    // shared hit at B.
    let mut shared_again = false;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let p = vm(&sim, 180 + i);
        sim.clear_requests();
        http.get(&gws[0].url(&p), &[]).await;
        let b = http.get(&gws[1].url(&p), &[]).await;
        if em_fetches(&sim, &p) == 1 && b.headers["x-cache"] == "HIT" {
            shared_again = true;
            break;
        }
    }
    assert!(
        shared_again,
        "the fleet did not share again after Redis came back"
    );
    let ready = http.get(&gws[0].url("/readyz"), &[]).await.json();
    assert_eq!(ready["shared"], "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_last_replica_to_stop_logs_the_fleets_session_out() {
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let mut gws = fleet(&sim, &redis, &[]);
    let http = Http::default();
    all_ready(&http, &gws).await;
    // Heartbeats have run: every replica is a member.
    let members = eventually(Duration::from_secs(5), || {
        let http = http.clone();
        let url = gws[0].url("/readyz");
        async move { http.get(&url, &[]).await.json()["fleet_members"] == 3 }
    })
    .await;
    assert!(members);
    for gw in gws.iter_mut().take(2) {
        assert!(gw.terminate().success());
    }
    assert_eq!(
        sim.stats().logouts,
        0,
        "a replica logged out the fleet's session"
    );
    let r = http.get(&gws[2].url(&vm(&sim, 1)), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "the session still serves");
    assert!(gws[2].terminate().success());
    assert_eq!(sim.stats().logouts, 1, "the last replica logs out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_never_holds_the_em_token_or_a_client_token_in_clear() {
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let gws = fleet(&sim, &redis, &[]);
    let http = Http::default();
    all_ready(&http, &gws).await;
    let (client_token, _) = gateway_logon(&http, &gws[1], "u", "p").await;
    http.get(
        &gws[2].url(&vm(&sim, 1)),
        &[("x-restsvcsessionid", &client_token)],
    )
    .await;
    // What EM issued: the token the gateways send, and the session's GUID.
    let em_tokens: std::collections::BTreeSet<String> = sim
        .requests()
        .iter()
        .filter_map(|r| r.header("x-restsvcsessionid").map(str::to_string))
        .collect();
    assert!(!em_tokens.is_empty());
    let ids: Vec<String> = sim
        .requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/api/logonSessions/"))
        .map(|r| r.path_and_query["/api/logonSessions/".len()..].to_string())
        .collect();
    let keys = redis.cli(&["--scan"]);
    let mut dump = keys.clone();
    for key in keys.lines() {
        let kind = redis.cli(&["TYPE", key]);
        let value = match kind.trim() {
            "string" => redis.cli(&["GET", key]),
            "hash" => redis.cli(&["HGETALL", key]),
            "zset" => redis.cli(&["ZRANGE", key, "0", "-1"]),
            _ => String::new(),
        };
        dump.push_str(&value);
    }
    assert!(dump.contains("em:session"), "no shared session? {keys}");
    for secret in em_tokens.iter().chain(ids.iter()).chain([&client_token]) {
        assert!(
            !dump.contains(secret.as_str()),
            "{secret} is in Redis in clear"
        );
    }
    assert!(!dump.contains(PASSWORD));
    // Cache entries expire by themselves (and are what an eviction policy
    // may take under memory pressure); what grants something or keeps the
    // fleet together has no Redis expiry, so `volatile-lru` never takes it.
    for key in keys.lines() {
        let ttl: i64 = redis.cli(&["PTTL", key]).trim().parse().unwrap();
        let cached = key.contains(":e:");
        let kept = [
            ":epoch",
            ":em:gen",
            ":em:session",
            ":members",
            ":boot",
            ":idx",
            ":cs-exp",
        ]
        .iter()
        .any(|k| key.ends_with(k))
            || key.contains(":cs:")
            || key.contains(":co:")
            || key.contains(":l:");
        if cached {
            assert!(ttl > 0, "{key}: a cache entry that never expires ({ttl})");
        } else if kept {
            assert_eq!(ttl, -1, "{key}: eviction could take it ({ttl} ms left)");
        }
    }
}

/// Three replicas limiting each client to `rate` a second, bursts of `burst`.
async fn limited_fleet(sim: &Sim, redis: &Redis, rate: &str, burst: &str) -> (Vec<Gateway>, Http) {
    let gws = fleet(
        sim,
        redis,
        &[("EMGATE_RATE_LIMIT", rate), ("EMGATE_RATE_BURST", burst)],
    );
    let http = Http::default();
    all_ready(&http, &gws).await;
    (gws, http)
}

/// How many of these answers let their request through and how many were
/// rate limited (each with `Retry-After`); any other answer fails the test.
fn allowed_and_limited(replies: impl IntoIterator<Item = Reply>) -> (usize, usize) {
    let (mut allowed, mut limited) = (0, 0);
    for r in replies {
        match r.status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers.contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("{other}: {}", r.body),
        }
    }
    (allowed, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clients_rate_limit_holds_over_requests_spread_across_replicas() {
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let (gws, http) = limited_fleet(&sim, &redis, "5", "5").await;
    let started = Instant::now();
    let mut replies = Vec::new();
    for i in 0..30 {
        replies.push(http.get(&gws[i % 3].url("/api/jobs"), &[]).await);
    }
    let (allowed, limited) = allowed_and_limited(replies);
    let secs = started.elapsed().as_secs_f64();
    // A burst of 5 and 5 a second, for the fleet: not 5 per replica.
    let most = 5.0 + 5.0 * secs + 1.0;
    assert!(
        (allowed as f64) <= most,
        "{allowed} allowed in {secs:.2} s (most {most:.1})"
    );
    assert!(limited > 0);
}

/// Round trips a replica made to the fleet's rate limit.
async fn rate_round_trips(http: &Http, gw: &Gateway) -> f64 {
    rate_answers(http, gw, "").await
}

/// Round trips to the fleet's rate limit that ended in `result` (any: "").
async fn rate_answers(http: &Http, gw: &Gateway, result: &str) -> f64 {
    let m = http.get(&gw.url("/metrics"), &[]).await.body;
    let result = format!("result=\"{result}");
    m.lines()
        .filter(|l| l.starts_with("emgate_shared_operations_total{") && l.contains("op=\"rate\""))
        .filter(|l| l.contains(&result))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum()
}

/// A busy client's hits are counted for the fleet a share at a time (25 ms
/// of its rate), not with a round trip to Redis each, and its limit still
/// holds for the fleet when it sends far more than it may.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_clients_limit_holds_for_the_fleet_with_a_round_trip_per_share_not_per_hit() {
    let sim = start_sim(sim_config()).await;
    let Some(mut redis) = Redis::try_start() else {
        return;
    };
    // 400 a second, bursts of 40: shares of 10.
    let (gws, http) = limited_fleet(&sim, &redis, "400", "40").await;
    let path = vm(&sim, 2);
    for gw in &gws {
        for _ in 0..2 {
            assert_eq!(http.get(&gw.url(&path), &[]).await.status, StatusCode::OK);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Under the limit (a request every 5 ms at most): every hit let
    // through, with a round trip per share.
    let before = rate_round_trips(&http, &gws[0]).await;
    for _ in 0..60 {
        let r = http.get(&gws[0].url(&path), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.headers["x-cache"], "HIT");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let trips = rate_round_trips(&http, &gws[0]).await - before;
    assert!(
        (1.0..=12.0).contains(&trips),
        "{trips} round trips to Redis for 60 hits"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Whoever can write to Redis plants a bucket an hour ahead, or
    // garbage: taken as no bucket (full), never a client refused for good
    // nor a script failing on every request.
    let rate_keys = redis.cli(&["--scan", "--pattern", "{emgate}:rl:*"]);
    let rate_key = rate_keys.lines().next().expect("the client's bucket");
    let time = redis.cli(&["TIME"]);
    let secs: u64 = time.lines().next().unwrap().trim().parse().unwrap();
    let bad_before = rate_answers(&http, &gws[0], "bad_value").await;
    for planted in [format!("{}", (secs + 3600) * 1000), "garbage".to_string()] {
        redis.cli(&["SET", rate_key, &planted]);
        for _ in 0..3 {
            let r = http.get(&gws[0].url(&path), &[]).await;
            assert_eq!(r.status, StatusCode::OK, "with {planted:?}: {}", r.body);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        rate_answers(&http, &gws[0], "bad_value").await,
        bad_before,
        "the rate script failed on a planted value"
    );

    // A burst within the client's burst, all at once to one replica: every
    // request let through. (Had each of them taken a share, they would
    // have counted 250 for the fleet and been refused past the 40.)
    let tasks: Vec<_> = (0..25)
        .map(|_| {
            let (http, url) = (http.clone(), gws[0].url(&path));
            tokio::spawn(async move { http.get(&url, &[]).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            StatusCode::OK,
            "a burst under the limit refused"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Far over it, all at once across the replicas: the fleet lets
    // through its burst, its rate meanwhile, and a share per replica at
    // most; not 600, nor the burst on each replica.
    let all_at_once = |n: usize, gws: &[Gateway]| {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (http, url) = (http.clone(), gws[i % gws.len()].url(&path));
                tokio::spawn(async move { http.get(&url, &[]).await })
            })
            .collect();
        async move {
            let mut replies = Vec::new();
            for t in tasks {
                replies.push(t.await.unwrap());
            }
            allowed_and_limited(replies)
        }
    };
    let started = Instant::now();
    let (allowed, limited) = all_at_once(600, &gws).await;
    let secs = started.elapsed().as_secs_f64();
    let most = 40.0 + 400.0 * secs + 3.0 * 10.0 + 1.0;
    assert!(
        (allowed as f64) <= most,
        "{allowed} allowed, {limited} limited in {secs:.2} s (most {most:.0})"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Redis gone: each replica counts alone (its own burst and rate), and
    // every request gets its answer, never an error.
    redis.kill();
    let started = Instant::now();
    let (allowed, limited) = all_at_once(300, &gws[..1]).await;
    let secs = started.elapsed().as_secs_f64();
    let most = 40.0 + 400.0 * secs + 10.0 + 1.0;
    assert!(
        (40..=most as usize).contains(&allowed),
        "Redis down: {allowed} allowed, {limited} limited in {secs:.2} s (one replica's burst {most:.0} at most)"
    );
}

/// Requests for keys of their own, spread over the replicas: the failures.
async fn spread_load(
    http: &Http,
    gws: &[Gateway],
    sim: &Sim,
    from: usize,
    n: usize,
) -> Vec<String> {
    let mut failed = Vec::new();
    for i in from..from + n {
        let url = gws[i % gws.len()].url(&vm(sim, i));
        let started = Instant::now();
        let r = http.get(&url, &[]).await;
        // A frozen Redis costs a request the shared timeout (250 ms) per
        // operation at most, and the breaker soon stops asking.
        if r.status != StatusCode::OK || started.elapsed() > Duration::from_secs(3) {
            failed.push(format!("{url}: {} after {:?}", r.status, started.elapsed()));
        }
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_redis_costs_requests_the_timeout_at_most_and_the_fleet_recovers() {
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let gws = fleet(&sim, &redis, &[]);
    let http = Http::default();
    all_ready(&http, &gws).await;
    assert!(spread_load(&http, &gws, &sim, 0, 9).await.is_empty());
    // Frozen: connections open, nothing answers (a hung Redis, a network
    // that drops packets).
    redis.pause();
    let failed = spread_load(&http, &gws, &sim, 10, 30).await;
    assert!(failed.is_empty(), "{failed:?}");
    let ready = http.get(&gws[0].url("/readyz"), &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["shared"], "down");
    redis.resume();
    let mut shared_again = false;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let p = vm(&sim, 60 + i);
        http.get(&gws[0].url(&p), &[]).await;
        if http.get(&gws[2].url(&p), &[]).await.headers["x-cache"] == "HIT" {
            shared_again = true;
            break;
        }
    }
    assert!(
        shared_again,
        "the fleet did not share again after Redis thawed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_emptied_under_load_fails_no_request_and_is_filled_again() {
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let gws = fleet(&sim, &redis, &[]);
    let http = Http::default();
    all_ready(&http, &gws).await;
    assert!(spread_load(&http, &gws, &sim, 0, 12).await.is_empty());
    // Everything goes: entries, leases, the sealed EM session, members.
    assert_eq!(redis.cli(&["FLUSHALL"]).trim(), "OK");
    let failed = spread_load(&http, &gws, &sim, 20, 30).await;
    assert!(failed.is_empty(), "{failed:?}");
    // Refilled: a key fetched at A is a shared hit at C, and the fleet's
    // EM session is back in Redis.
    let p = vm(&sim, 90);
    http.get(&gws[0].url(&p), &[]).await;
    assert_eq!(
        http.get(&gws[2].url(&p), &[]).await.headers["x-cache"],
        "HIT"
    );
    // Its holders store the fleet's EM session again within seconds, so a
    // replica that starts later uses it instead of logging on.
    let mut session_back = false;
    for _ in 0..60 {
        if !redis
            .cli(&["--scan", "--pattern", "*em:session"])
            .trim()
            .is_empty()
        {
            session_back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(session_back, "the fleet's EM session was not stored again");
    let logons = sim.stats().logons_ok;
    let late = replica(&sim, &redis, &[]);
    assert!(becomes_ready(&http, &late).await);
    assert_eq!(
        http.get(&late.url(&vm(&sim, 150)), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(sim.stats().logons_ok, logons, "the late replica logged on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_url_that_speaks_garbage_leaves_each_replica_serving_alone() {
    let sim = start_sim(sim_config()).await;
    let port = garbage_server();
    let url = format!("redis://127.0.0.1:{port}");
    let gws: Vec<Gateway> = (0..2)
        .map(|_| Gateway::start(&sim, &[("EMGATE_SHARED_URL", &url)]))
        .collect();
    let http = Http::default();
    all_ready(&http, &gws).await;
    let failed = spread_load(&http, &gws, &sim, 0, 20).await;
    assert!(failed.is_empty(), "{failed:?}");
    for gw in &gws {
        // Said as soon as an operation failed (on a busy machine the
        // garbage takes a moment to arrive).
        let down = eventually(Duration::from_secs(10), || async {
            let ready = http.get(&gw.url("/readyz"), &[]).await;
            ready.status == StatusCode::OK && ready.json()["shared"] == "down"
        })
        .await;
        assert!(down, "{}", http.get(&gw.url("/readyz"), &[]).await.body);
        let m = http.get(&gw.url("/metrics"), &[]).await.body;
        assert_eq!(sample(&m, "emgate_shared_up"), Some(0.0), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_secret_rotates_without_a_moment_where_replicas_disagree() {
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    const OLD: &str = "old-secret-0123456789";
    const NEW: &str = "new-secret-0123456789";
    let http = Http::default();
    let shared = |r: &Reply| {
        r.headers["cache-status"]
            .to_str()
            .unwrap()
            .contains("detail=shared")
    };
    let rejected = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("emgate_shared_rejected_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let step1 = format!("{OLD}\n{NEW}");
    let step2 = format!("{NEW}\n{OLD}");
    // Skipping step 1 shows why it is there: A knows only the old secret,
    // B is at step 2 (signs with the new one, still accepts the old).
    let mut gws = vec![
        replica(&sim, &redis, &[("EMGATE_SHARED_SECRET", OLD)]),
        replica(&sim, &redis, &[("EMGATE_SHARED_SECRET", &step2)]),
    ];
    all_ready(&http, &gws).await;
    let (token, _) = gateway_logon(&http, &gws[0], "u", "p").await;
    let with = [("x-restsvcsessionid", token.as_str())];
    http.get(&gws[0].url(&vm(&sim, 1)), &[]).await;
    let r = http.get(&gws[1].url(&vm(&sim, 1)), &with).await;
    assert!(shared(&r), "B accepts what A signed with the old secret");
    http.get(&gws[1].url(&vm(&sim, 2)), &[]).await;
    let r = http.get(&gws[0].url(&vm(&sim, 2)), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        !shared(&r),
        "A took an entry signed with a secret it does not know"
    );
    let m = http.get(&gws[0].url("/metrics"), &[]).await.body;
    assert!(rejected(&m) >= 1.0, "{m}");
    // Step 1 on A (sign old, accept new): both understand each other.
    gws[0].terminate();
    gws[0] = replica(&sim, &redis, &[("EMGATE_SHARED_SECRET", &step1)]);
    all_ready(&http, &gws).await;
    http.get(&gws[1].url(&vm(&sim, 3)), &[]).await;
    assert!(shared(&http.get(&gws[0].url(&vm(&sim, 3)), &[]).await));
    // Step 3 everywhere: the new secret alone. The session made under the
    // old one has to be made again (README: after sessions ended).
    for gw in gws.iter_mut() {
        gw.terminate();
    }
    let gws: Vec<Gateway> = (0..2)
        .map(|_| replica(&sim, &redis, &[("EMGATE_SHARED_SECRET", NEW)]))
        .collect();
    all_ready(&http, &gws).await;
    http.get(&gws[0].url(&vm(&sim, 4)), &[]).await;
    assert!(shared(&http.get(&gws[1].url(&vm(&sim, 4)), &[]).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_em_hangs_the_fleet_waits_one_em_timeout_not_two() {
    let Some((sim, _redis, gws, http)) = ready_fleet(&[
        ("EMGATE_UPSTREAM_TIMEOUT", "2s"),
        ("EMGATE_SHARED_LEASE", "2s"),
    ])
    .await
    else {
        return;
    };
    sim.set_path_fault("/api/restorePoints/", Some(emgate::sim::Fault::Hang));
    let p = vm(&sim, 9);
    // Clients of every replica ask for the same restore point at once: one
    // replica fetches for the fleet, EM never answers.
    let started = Instant::now();
    let mut clients = Vec::new();
    for gw in &gws {
        for _ in 0..3 {
            let http = http.clone();
            let url = gw.url(&p);
            clients.push(tokio::spawn(async move {
                let r = http.get(&url, &[]).await;
                (r, started.elapsed())
            }));
        }
    }
    for c in clients {
        let (r, took) = c.await.unwrap();
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.body);
        assert_eq!(r.json()["StatusCode"], 504);
        // One EM timeout (2 s) and the fleet's bookkeeping; a waiter that
        // took the lease over and asked EM again would make it 4 s.
        assert!(
            took < Duration::from_millis(3500),
            "answered after {took:?}"
        );
    }
    assert_eq!(em_fetches(&sim, &p), 1, "{:?}", em_paths(&sim));
    // EM is back: the next request asks it (the failure is not an answer).
    sim.set_path_fault("/api/restorePoints/", None);
    assert_eq!(http.get(&gws[1].url(&p), &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_of_the_wrong_shape_in_redis_do_not_make_the_fleet_go_alone() {
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let gws = fleet(&sim, &redis, &[]);
    let http = Http::default();
    all_ready(&http, &gws).await;
    // A stranger writes nonsense where counters and lists live.
    redis.cli(&["SET", "{emgate}:epoch", "not-a-number"]);
    redis.cli(&["SET", "{emgate}:em:gen", "not-a-number"]);
    redis.cli(&["DEL", "{emgate}:idx"]);
    redis.cli(&["SET", "{emgate}:idx", "a string, not a sorted set"]);
    assert!(spread_load(&http, &gws, &sim, 0, 12).await.is_empty());
    for gw in &gws {
        let ready = http.get(&gw.url("/readyz"), &[]).await;
        assert_eq!(ready.status, StatusCode::OK);
        assert_eq!(ready.json()["shared"], "up", "{}", ready.body);
    }
}

/// A fleet's session store that plays one moment exactly: this replica
/// finds no session and the logon lease held; by the time it waits, the
/// holder has published generation 1 and let the lease go, so the wait sees
/// the lease free. A real Redis makes that moment rare (a 1-in-10 failure of
/// the story above on a busy machine); here it is certain.
struct PublishedAsTheLeaseWentStore {
    loads: std::sync::atomic::AtomicU32,
    publishes: std::sync::atomic::AtomicU32,
}

impl SessionStore for PublishedAsTheLeaseWentStore {
    fn load(&self) -> StoreFuture<'_, Option<SharedEmSession>> {
        let first = self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        Box::pin(async move {
            Ok((!first).then(|| SharedEmSession {
                token: Secret::new("the-fleets-token"),
                id: None,
                generation: 1,
            }))
        })
    }
    fn lease(&self) -> StoreFuture<'_, Option<LogonLease>> {
        // Held on the first look; free afterwards (the holder let go).
        let free = self.loads.load(std::sync::atomic::Ordering::SeqCst) > 1;
        Box::pin(async move { Ok(free.then(|| Box::new(()) as LogonLease)) })
    }
    fn publish(
        &self,
        _token: &Secret,
        _id: Option<&str>,
        _replacing: u64,
    ) -> StoreFuture<'_, Option<u64>> {
        self.publishes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Ok(Some(2)) })
    }
    fn wait_newer(
        &self,
        _after: u64,
        _within: Duration,
    ) -> StoreFuture<'_, Option<SharedEmSession>> {
        // Looked before the publish, checked the lease after the let-go.
        Box::pin(async { Ok(None) })
    }
    fn pause(&self) -> StoreFuture<'_, Option<(u32, Duration)>> {
        Box::pin(async { Ok(None) })
    }
    fn record(&self, _refused: bool, _pause: Duration) -> StoreFuture<'_, u32> {
        Box::pin(async { Ok(0) })
    }
    fn keepalive_due(&self, _keepalive: Duration) -> StoreFuture<'_, bool> {
        Box::pin(async { Ok(false) })
    }
    fn used(&self, _keepalive: Duration) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn leave(&self) -> StoreFuture<'_, bool> {
        Box::pin(async { Ok(false) })
    }
    fn clear(&self, _generation: u64) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn a_replica_that_waited_for_the_logon_takes_the_session_published_as_the_lease_went() {
    let sim = start_sim(sim_config()).await;
    let pin = sim.cert_sha256().unwrap_or_default();
    let env = |k: &str| match k {
        "EMGATE_UPSTREAM_URL" => Some(sim.base_url()),
        "EMGATE_UPSTREAM_USERNAME" => Some(USERNAME.into()),
        "EMGATE_UPSTREAM_PASSWORD" => Some(PASSWORD.into()),
        "EMGATE_UPSTREAM_CERT_SHA256" => Some(pin.clone()),
        _ => None,
    };
    let settings = emgate::config::Settings::load(&emgate::config::Sources {
        file: None,
        env: &env,
        demo: &[],
    })
    .unwrap();
    let upstream = emgate::em::client::Upstream::new(&settings.upstream).unwrap();
    let store = Arc::new(PublishedAsTheLeaseWentStore {
        loads: Default::default(),
        publishes: Default::default(),
    });
    let pool = Arc::new(
        emgate::em::session::SessionPool::new(upstream, &settings.upstream)
            .with_shared(store.clone(), Duration::from_secs(5)),
    );
    let session = pool.acquire().await.unwrap();
    assert_eq!(session.generation(), 1, "the fleet's session, taken");
    assert_eq!(sim.stats().logons_ok, 0, "a second logon for the fleet");
    assert_eq!(
        store.publishes.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the fleet's session replaced"
    );
}
