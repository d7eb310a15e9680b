//! Fleet mode that survives its own restarts and a Redis it cannot fully
//! trust: replicas stopped and started again, the fleet's EM session lost
//! or rolled back in Redis, entries and sessions planted or altered by
//! whoever can write to Redis, forged events, a Redis that stalls, restarts
//! empty or runs out of memory, and an EM answer too large to share.
//!
//! Each test is one story told against real `emgate` processes, the
//! simulator and a real `redis-server` (skipped when it is not installed).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use emgate::sim::Sim;
use http::{Method, StatusCode};

/// The fleet's EM session (sealed) and its generation, under the default prefix.
const SESSION: &str = "{emgate}:em:session";
const GENERATION: &str = "{emgate}:em:gen";
/// The admin token of the tests that purge.
const ADMIN: &str = "fleet-admin-token-0123456789";

/// The two stories that load the machine (a 40 MB answer, a flood) run
/// alone: the other stories' bounds (ready within 5 s, a logon within 1 s)
/// are about the gateway, not about sharing the cores with them.
fn turns() -> &'static tokio::sync::RwLock<()> {
    static TURNS: std::sync::OnceLock<tokio::sync::RwLock<()>> = std::sync::OnceLock::new();
    TURNS.get_or_init(|| tokio::sync::RwLock::new(()))
}

/// A light story's turn: with the other light ones.
async fn with_others() -> tokio::sync::RwLockReadGuard<'static, ()> {
    turns().read().await
}

/// A heavy story's turn: alone.
async fn alone() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    turns().write().await
}

fn replica(sim: &Sim, redis: &Redis, extra: &[(&str, &str)]) -> Gateway {
    let url = redis.url();
    let mut env = vec![("EMGATE_SHARED_URL", url.as_str())];
    env.extend_from_slice(extra);
    Gateway::start(sim, &env)
}

fn replicas(n: usize, sim: &Sim, redis: &Redis, extra: &[(&str, &str)]) -> Vec<Gateway> {
    (0..n).map(|_| replica(sim, redis, extra)).collect()
}

async fn all_ready(http: &Http, gws: &[Gateway]) {
    for (i, gw) in gws.iter().enumerate() {
        assert!(
            becomes_ready(http, gw).await,
            "replica {i} never became ready: {}",
            http.get(&gw.url("/readyz"), &[]).await.body
        );
    }
}

/// Whether `/readyz` answers 200 within `limit`.
async fn ready_within(http: &Http, gw: &Gateway, limit: Duration) -> bool {
    let url = gw.url("/readyz");
    eventually(limit, || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url, &[]).await.status == StatusCode::OK }
    })
    .await
}

/// Waits (up to 10 s) until `gw` counts `n` live members: heartbeats ran.
async fn members_are(http: &Http, gw: &Gateway, n: u64) {
    let url = gw.url("/readyz");
    let counted = eventually(Duration::from_secs(10), || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url, &[]).await.json()["fleet_members"] == n }
    })
    .await;
    assert!(
        counted,
        "the fleet never counted {n} members: {}",
        http.get(&url, &[]).await.body
    );
}

fn vm(sim: &Sim, i: usize) -> String {
    format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(i)
    )
}

/// A path no rule caches: every request for it reaches EM with the fleet's session.
fn uncached(sim: &Sim, i: usize) -> String {
    format!("/api/restorePoints/{}", sim.restore_point_id(i))
}

fn em_fetches(sim: &Sim, prefix: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with(prefix))
        .count()
}

fn exists(redis: &Redis, key: &str) -> bool {
    redis.cli(&["EXISTS", key]).trim() == "1"
}

fn scan(redis: &Redis, pattern: &str) -> BTreeSet<String> {
    redis
        .cli(&["--scan", "--pattern", pattern])
        .lines()
        .map(str::to_string)
        .collect()
}

/// The Redis key a gateway session has today, `{emgate}:cs:<sha256 of its
/// token>`: what anyone who can write to Redis can compute for a token of
/// their choosing.
fn session_key(token: &str) -> String {
    format!(
        "{{emgate}}:cs:{}",
        emgate::digest::sha256_hex(token.as_bytes())
    )
}

async fn status_with(http: &Http, gw: &Gateway, path: &str, token: &str) -> StatusCode {
    http.get(&gw.url(path), &[("x-restsvcsessionid", token)])
        .await
        .status
}

/// For `period`, every replica stays ready and serves a request that needs
/// EM (with the fleet's EM session); panics with what the user saw.
async fn keeps_working(http: &Http, sim: &Sim, gws: &[Gateway], period: Duration, what: &str) {
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < period {
        for (i, gw) in gws.iter().enumerate() {
            let ready = http.get(&gw.url("/readyz"), &[]).await;
            assert_eq!(
                ready.status,
                StatusCode::OK,
                "{what}: replica {i} turned unready after {:?}: {}",
                started.elapsed(),
                ready.body
            );
            let r = http.get(&gw.url(&uncached(sim, n % 200)), &[]).await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{what}: replica {i} failed a request after {:?}: {}",
                started.elapsed(),
                r.body
            );
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// 1 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_stopped_and_started_again_is_ready_within_5_s_after_one_em_logon() {
    let _turn = with_others().await;
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let http = Http::default();
    let mut gw = replica(&sim, &redis, &[]);
    assert!(becomes_ready(&http, &gw).await);
    members_are(&http, &gw, 1).await;
    // A clean stop (a rolling update, a node drain): the last member logs
    // out of EM and forgets the fleet's session; the generation stays.
    assert!(gw.terminate().success(), "SIGTERM: not a clean exit");
    let stopped = sim.stats();
    eprintln!(
        "after the stop: EM logouts {}, {SESSION} exists {}, {GENERATION} = {:?}",
        stopped.logouts,
        exists(&redis, SESSION),
        redis.cli(&["GET", GENERATION]).trim()
    );

    // The same replica, the same settings, started again.
    let again = replica(&sim, &redis, &[]);
    let ready = ready_within(&http, &again, Duration::from_secs(5)).await;
    let s = sim.stats();
    assert!(
        ready,
        "started again with the same settings, the replica is not ready within 5 s: /readyz \
         says {}; EM saw {} logons and {} logouts since the stop",
        http.get(&again.url("/readyz"), &[]).await.body,
        s.logons_ok - stopped.logons_ok,
        s.logouts - stopped.logouts
    );
    let r = http.get(&again.url(&vm(&sim, 1)), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    one_logon_since(&sim, &stopped, "the restart").await;
}

/// Nothing more is going on behind the readiness: one EM logon since
/// `stopped`, for `what`.
async fn one_logon_since(sim: &Sim, stopped: &emgate::sim::SimStats, what: &str) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = sim.stats();
    assert_eq!(
        s.logons_ok - stopped.logons_ok,
        1,
        "EM logons for {what} (and {} logouts)",
        s.logouts - stopped.logouts
    );
}

// 2 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_fleet_stopped_and_started_again_is_ready_after_one_em_logon() {
    let _turn = with_others().await;
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let http = Http::default();
    let mut gws = replicas(3, &sim, &redis, &[]);
    all_ready(&http, &gws).await;
    members_are(&http, &gws[0], 3).await;
    for gw in gws.iter_mut() {
        assert!(gw.terminate().success(), "SIGTERM: not a clean exit");
    }
    let stopped = sim.stats();
    assert_eq!(stopped.logouts, 1, "the last replica to stop logs out");

    let gws = replicas(3, &sim, &redis, &[]);
    for (i, gw) in gws.iter().enumerate() {
        let ready = ready_within(&http, gw, Duration::from_secs(10)).await;
        let s = sim.stats();
        assert!(
            ready,
            "after the whole fleet restarted, replica {i} is not ready within 10 s: /readyz \
             says {}; EM saw {} logons and {} logouts since the stop",
            http.get(&gw.url("/readyz"), &[]).await.body,
            s.logons_ok - stopped.logons_ok,
            s.logouts - stopped.logouts
        );
    }
    for gw in &gws {
        let r = http.get(&gw.url(&uncached(&sim, 2)), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    one_logon_since(&sim, &stopped, "the fleet's restart, all replicas together").await;
}

// 3 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleets_em_session_deleted_from_redis_is_stored_again_and_a_new_replica_uses_it() {
    let _turn = with_others().await;
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let http = Http::default();
    let gws = replicas(3, &sim, &redis, &[]);
    all_ready(&http, &gws).await;
    members_are(&http, &gws[0], 3).await;
    assert!(exists(&redis, SESSION), "no fleet EM session in Redis");
    let logons = sim.stats().logons_ok;

    assert_eq!(redis.cli(&["DEL", SESSION]).trim(), "1");
    let deleted = Instant::now();
    let mut n = 0;
    let back = loop {
        for (i, gw) in gws.iter().enumerate() {
            let ready = http.get(&gw.url("/readyz"), &[]).await;
            assert_eq!(
                ready.status,
                StatusCode::OK,
                "replica {i} turned unready after the fleet's EM session was deleted from Redis: {}",
                ready.body
            );
            let r = http.get(&gw.url(&uncached(&sim, n % 200)), &[]).await;
            assert_eq!(r.status, StatusCode::OK, "replica {i}: {}", r.body);
            n += 1;
        }
        if exists(&redis, SESSION) {
            break Some(deleted.elapsed());
        }
        if deleted.elapsed() > Duration::from_secs(10) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        back.is_some(),
        "10 s after `DEL {SESSION}` the fleet's EM session is still not in Redis (EXISTS 0): a \
         replica started now would log on to EM again"
    );
    eprintln!("the fleet's EM session was back after {back:?}");

    let fourth = replica(&sim, &redis, &[]);
    assert!(
        ready_within(&http, &fourth, Duration::from_secs(10)).await,
        "a 4th replica started after the session came back is not ready: {}",
        http.get(&fourth.url("/readyz"), &[]).await.body
    );
    let r = http.get(&fourth.url(&uncached(&sim, 7)), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        sim.stats().logons_ok - logons,
        0,
        "EM logons since the deletion: the replicas and the 4th must all use the fleet's session"
    );
}

// 4 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_keeps_working_when_redis_loses_the_generation_or_rolls_the_session_back() {
    let _turn = with_others().await;
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let http = Http::default();
    let mut gws = replicas(3, &sim, &redis, &[]);
    all_ready(&http, &gws).await;
    members_are(&http, &gws[0], 3).await;
    let old_session = redis.cli(&["GET", SESSION]).trim().to_string();
    let old_generation = redis.cli(&["GET", GENERATION]).trim().to_string();
    assert!(
        !old_session.is_empty() && !old_generation.is_empty(),
        "no fleet EM session in Redis"
    );
    // EM ends the session; the fleet logs on again: a newer generation.
    sim.expire_all_sessions();
    for gw in &gws {
        let r = http.get(&gw.url(&uncached(&sim, 1)), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let moved_on = eventually(Duration::from_secs(5), || {
        let now = redis.cli(&["GET", GENERATION]).trim().to_string();
        let old = old_generation.clone();
        async move { !now.is_empty() && now != old }
    })
    .await;
    assert!(
        moved_on,
        "the fleet's EM session did not get a new generation"
    );

    let logons = sim.stats().logons_ok;

    // (a) The older session value written back under the current
    // generation (a stale write, a partial restore).
    redis.cli(&["SET", SESSION, &old_session, "PX", "86400000"]);
    keeps_working(
        &http,
        &sim,
        &gws,
        Duration::from_secs(4),
        "after an older session was written back under the current generation",
    )
    .await;
    // A replica started now (a rolling update) gets ready.
    let late = replica(&sim, &redis, &[]);
    assert!(
        ready_within(&http, &late, Duration::from_secs(10)).await,
        "a replica started after an older session was written back is not ready within 10 s: {}",
        http.get(&late.url("/readyz"), &[]).await.body
    );
    gws.push(late);

    // (b) The session and its generation both gone (a failover to a
    // replica of Redis that had neither, an operator's DEL).
    assert_eq!(
        redis.cli(&["DEL", SESSION, GENERATION]).trim(),
        "2",
        "both keys were there"
    );
    keeps_working(
        &http,
        &sim,
        &gws,
        Duration::from_secs(5),
        "after DEL of the session and its generation",
    )
    .await;

    // (c) A rollback: the older session, and its generation, written back
    // (a Redis restored from an old snapshot). EM ended that session.
    redis.cli(&["SET", SESSION, &old_session, "PX", "86400000"]);
    redis.cli(&["SET", GENERATION, &old_generation]);
    keeps_working(
        &http,
        &sim,
        &gws,
        Duration::from_secs(6),
        "after an older session and generation were written back",
    )
    .await;
    let extra = sim.stats().logons_ok - logons;
    assert!(
        extra <= 4,
        "{extra} EM logons since the first rollback: the fleet went through a logon storm"
    );
}

// 5 ---------------------------------------------------------------------

/// Changes one byte of a string value: the first letter or digit after
/// the first `Name` past a quarter of it (inside a name EM sent, so the
/// change is in what a client would be served); the byte it was, or -1.
const FLIP: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return -1 end
local at = string.find(v, 'Name', math.floor(#v / 4), true)
if not at then return -1 end
local i = string.find(v, '%w', at + 4)
if not i then return -1 end
local b = string.byte(v, i)
local c = 'Z'
if b == string.byte('Z') then c = 'Y' end
redis.call('SETRANGE', KEYS[1], i - 1, c)
return b
";

/// Replaces a value by 4 KiB of random bytes, its TTL kept.
const GARBAGE: &str = r"
local t = {}
for i = 1, 4096 do t[i] = string.char(math.random(0, 255)) end
redis.call('SET', KEYS[1], table.concat(t), 'KEEPTTL')
return 4096
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planted_or_altered_shared_cache_entry_is_never_served() {
    let _turn = with_others().await;
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let http = Http::default();
    let gws = replicas(2, &sim, &redis, &[]);
    all_ready(&http, &gws).await;
    let (a, b) = (&gws[0], &gws[1]);
    // Links point at the gateway each client used: compare without them.
    let plain = |body: &str| {
        body.replace(&a.addr.to_string(), "GATEWAY")
            .replace(&b.addr.to_string(), "GATEWAY")
    };
    let json = [("accept", "application/json")];
    let xml = [("accept", "application/xml")];
    let mut rejected = metric_sum(&http, b, "emgate_shared_rejected_total").await;
    let cases = ["one byte changed", "random garbage", "an empty string"];
    let mut problems = Vec::new();
    for (n, what) in cases.iter().enumerate() {
        // A restore point of its own: B holds no copy of it.
        let p = vm(&sim, 20 + n);
        let before = scan(&redis, "{emgate}:e:*");
        let xml_a = http.get(&a.url(&p), &xml).await;
        let json_a = http.get(&a.url(&p), &json).await;
        assert_eq!(xml_a.status, StatusCode::OK, "{}", xml_a.body);
        assert_eq!(json_a.status, StatusCode::OK, "{}", json_a.body);
        let mut landed = BTreeSet::new();
        for _ in 0..40 {
            landed = &scan(&redis, "{emgate}:e:*") - &before;
            if !landed.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            landed.len(),
            1,
            "{what}: A's fetch did not land one entry in Redis: {landed:?}"
        );
        let key = landed.into_iter().next().unwrap();
        let length: usize = redis.cli(&["STRLEN", &key]).trim().parse().unwrap();
        match n {
            0 => {
                let was = redis.cli(&["EVAL", FLIP, "1", &key]);
                assert_ne!(was.trim(), "-1", "nothing to flip in {key}");
            }
            1 => assert_eq!(redis.cli(&["EVAL", GARBAGE, "1", &key]).trim(), "4096"),
            _ => assert_eq!(redis.cli(&["SET", &key, "", "KEEPTTL"]).trim(), "OK"),
        }
        eprintln!("{what}: {key} ({length} bytes) tampered with");

        let xml_b = http.get(&b.url(&p), &xml).await;
        if xml_b.status != StatusCode::OK {
            problems.push(format!(
                "{what}: B answered {}: {}",
                xml_b.status, xml_b.body
            ));
        }
        if xml_b.headers["x-cache"] == "HIT" {
            problems.push(format!(
                "{what}: B served the entry planted in Redis as a HIT ({:?})",
                xml_b.headers.get("cache-status")
            ));
        }
        if plain(&xml_b.body) != plain(&xml_a.body) {
            problems.push(format!(
                "{what}: B's XML answer is not EM's (A served {} bytes, B {} bytes)",
                xml_a.body.len(),
                xml_b.body.len()
            ));
        }
        let json_b = http.get(&b.url(&p), &json).await;
        if json_b.status != StatusCode::OK || plain(&json_b.body) != plain(&json_a.body) {
            problems.push(format!(
                "{what}: B's JSON answer is not EM's ({}, A served {} bytes, B {} bytes)",
                json_b.status,
                json_a.body.len(),
                json_b.body.len()
            ));
        }
        for gw in [a, b] {
            assert!(!gw.log_text().contains("panicked"), "{}", gw.log_text());
        }
        assert_eq!(
            http.get(&b.url("/healthz"), &[]).await.status,
            StatusCode::OK,
            "{what}: B stopped answering"
        );
        let now = metric_sum(&http, b, "emgate_shared_rejected_total").await;
        if now <= rejected {
            problems.push(format!(
                "{what}: B's /metrics did not count the rejected shared entry \
                 (emgate_shared_rejected_total {now})"
            ));
        }
        rejected = now;
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// 6 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_session_copied_or_written_by_hand_in_redis_lets_nobody_in() {
    let _turn = with_others().await;
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let (_clients_dir, file, creds) = clients_file("copied", 1);
    let http = Http::default();
    let gws = replicas(2, &sim, &redis, &[("EMGATE_CLIENTS_FILE", &file)]);
    all_ready(&http, &gws).await;
    let (name, secret) = &creds[0];
    let (token, logon) = gateway_logon(&http, &gws[0], name, secret).await;
    let id = logon.json()["SessionId"].as_str().unwrap().to_string();
    // The one session record in Redis (found, not computed: how its name
    // derives from the token is the gateway's business).
    let records = scan(&redis, "{emgate}:cs:*");
    assert_eq!(records.len(), 1, "the session records: {records:?}");
    let record = records.into_iter().next().unwrap();
    for gw in &gws {
        assert_eq!(
            status_with(&http, gw, "/api/logonSessions", &token).await,
            StatusCode::OK,
            "the real token"
        );
    }

    // Whoever can write to Redis copies the record under a token of their choosing...
    let chosen = "ChosenByWhoeverWritesToRedis_0123456789abcd";
    assert_eq!(
        redis.cli(&["COPY", &record, &session_key(chosen)]).trim(),
        "1"
    );
    // ...or writes one by hand.
    let by_hand = "WrittenByHandInRedis_0123456789abcdefghijk";
    let hand = session_key(by_hand);
    redis.cli(&["HSET", &hand, "owner", name, "id", &id]);
    redis.cli(&["PEXPIRE", &hand, "900000"]);
    for (what, t) in [
        ("a copied record", chosen),
        ("a hand-written record", by_hand),
    ] {
        for (i, gw) in gws.iter().enumerate() {
            for path in ["/api/logonSessions", &vm(&sim, 3)] {
                let status = status_with(&http, gw, path, t).await;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "replica {i} let in a token that only {what} in Redis stands for ({path})"
                );
            }
        }
    }
    // The real token still works.
    for gw in &gws {
        assert_eq!(
            status_with(&http, gw, "/api/logonSessions", &token).await,
            StatusCode::OK
        );
    }
}

// 7 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_purge_event_purges_nothing() {
    let _turn = with_others().await;
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let http = Http::default();
    let gws = replicas(2, &sim, &redis, &[]);
    all_ready(&http, &gws).await;
    // Every replica listens on the channel (else the test proves nothing).
    let subscribed = eventually(Duration::from_secs(10), || {
        let out = redis.cli(&["PUBSUB", "NUMSUB", "emgate:events"]);
        async move { out.lines().nth(1).map(str::trim) == Some("2") }
    })
    .await;
    assert!(subscribed, "the replicas never subscribed to emgate:events");
    let p = vm(&sim, 5);
    for gw in &gws {
        http.get(&gw.url(&p), &[]).await;
        let r = http.get(&gw.url(&p), &[]).await;
        assert_eq!(
            r.headers["cache-status"], "emgate; hit",
            "a local hit first"
        );
    }
    for forged in [
        "xyz purge-all -",
        "xyz purge /api/restorePoints",
        "xyz purge-rule vm_restore_points",
    ] {
        redis.cli(&["PUBLISH", "emgate:events", forged]);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.clear_requests();
    for (i, gw) in gws.iter().enumerate() {
        let r = http.get(&gw.url(&p), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.headers["cache-status"], "emgate; hit",
            "replica {i} purged its cache on a forged event (x-cache {:?})",
            r.headers["x-cache"]
        );
    }
    assert_eq!(
        em_fetches(&sim, &p),
        0,
        "a forged event sent requests to EM"
    );
}

// 8 ---------------------------------------------------------------------

/// Two replicas and a client logged on at the first whose token works at
/// the second too (each holds the session): the logout stories' start.
struct LoggedOnAtBoth {
    /// The clients file's folder, kept while the replicas read it.
    _clients_dir: Scratch,
    sim: Sim,
    redis: Redis,
    gws: Vec<Gateway>,
    http: Http,
    token: String,
    /// The session's id, for its logout.
    id: String,
}

async fn logged_on_at_both(tag: &str) -> Option<LoggedOnAtBoth> {
    let sim = start_sim(sim_config()).await;
    let redis = Redis::try_start()?;
    let (clients_dir, file, creds) = clients_file(tag, 1);
    let http = Http::default();
    let gws = replicas(2, &sim, &redis, &[("EMGATE_CLIENTS_FILE", &file)]);
    all_ready(&http, &gws).await;
    let (token, logon) = gateway_logon(&http, &gws[0], &creds[0].0, &creds[0].1).await;
    let id = logon.json()["SessionId"].as_str().unwrap().to_string();
    assert_eq!(
        status_with(&http, &gws[1], "/api/logonSessions", &token).await,
        StatusCode::OK,
        "the token works at B"
    );
    Some(LoggedOnAtBoth {
        _clients_dir: clients_dir,
        sim,
        redis,
        gws,
        http,
        token,
        id,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logout_while_redis_stalls_ends_the_session_on_every_replica() {
    let _turn = with_others().await;
    let Some(LoggedOnAtBoth {
        _clients_dir,
        sim: _sim,
        redis,
        gws,
        http,
        token,
        id,
    }) = logged_on_at_both("stall-logout").await
    else {
        return;
    };
    let (a, b) = (&gws[0], &gws[1]);

    redis.pause();
    let logout = format!("/api/logonSessions/{id}");
    let with = [("x-restsvcsessionid", token.as_str())];
    let bye = http.send(Method::DELETE, &a.url(&logout), &with).await;
    eprintln!(
        "logout during the stall: {} (retry-after {:?})",
        bye.status,
        bye.headers.get("retry-after")
    );
    // Not reported done before it is: the fleet's record could not be
    // removed yet (the replica retries it by itself).
    assert!(
        bye.status == StatusCode::SERVICE_UNAVAILABLE && bye.headers.contains_key("retry-after"),
        "a logout during a Redis stall answered {} {}",
        bye.status,
        bye.body
    );
    // Meanwhile the session is over here already.
    assert_eq!(
        status_with(&http, a, "/api/logonSessions", &token).await,
        StatusCode::UNAUTHORIZED,
        "the token still works at A, where it logged out"
    );
    redis.resume();
    // The client does not send it again: the retry lands by itself.
    // Within 10 s of Redis coming back, the token is refused everywhere.
    let thawed = Instant::now();
    let still = loop {
        let mut still = Vec::new();
        for (name, gw) in [("A", a), ("B", b)] {
            let status = status_with(&http, gw, "/api/logonSessions", &token).await;
            if status != StatusCode::UNAUTHORIZED {
                still.push(format!("{name}: {status}"));
            }
        }
        if still.is_empty() || thawed.elapsed() > Duration::from_secs(10) {
            break still;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        still.is_empty(),
        "after a logout answered {} during a Redis stall, the token still works 10 s after \
         Redis came back ({})",
        bye.status,
        still.join(", ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logout_while_redis_is_down_stays_done_when_redis_comes_back_empty() {
    let _turn = with_others().await;
    // B holds the session too, and puts it back when it finds Redis empty.
    let Some(LoggedOnAtBoth {
        _clients_dir,
        sim: _sim,
        mut redis,
        gws,
        http,
        token,
        id,
    }) = logged_on_at_both("down-logout").await
    else {
        return;
    };
    let port = redis.port;
    let (a, b) = (&gws[0], &gws[1]);
    // B stalls through what follows, so it hears of nothing.
    b.freeze();

    redis.kill();
    let logout = format!("/api/logonSessions/{id}");
    let with = [("x-restsvcsessionid", token.as_str())];
    let bye = http.send(Method::DELETE, &a.url(&logout), &with).await;
    assert_eq!(bye.status, StatusCode::SERVICE_UNAVAILABLE, "{}", bye.body);
    // Redis comes back with nothing in it, and A's logout lands on nothing.
    let _redis = Redis::start_on(port);
    let landed = eventually(Duration::from_secs(10), || async {
        a.log_text().contains("logout reached the fleet")
    })
    .await;
    assert!(
        landed,
        "A's logout never reached the fleet: {}",
        a.log_text()
    );
    // B wakes up, finds Redis empty and puts back what it holds.
    b.thaw();
    let back = Instant::now();
    let mut works = Vec::new();
    while back.elapsed() < Duration::from_secs(14) {
        for (name, gw) in [("A", a), ("B", b)] {
            if status_with(&http, gw, "/api/logonSessions", &token).await == StatusCode::OK {
                works.push((name, back.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Refused everywhere within 10 s, and not accepted again after.
    let late: Vec<_> = works
        .iter()
        .filter(|(_, at)| *at > Duration::from_secs(10))
        .collect();
    assert!(
        late.is_empty(),
        "a logged-out session came back after Redis restarted empty: {works:?}"
    );
}

// 9 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_while_redis_stalls_says_503_not_a_silent_204() {
    let _turn = with_others().await;
    let sim = start_sim(sim_config()).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let http = Http::default();
    let gws = replicas(2, &sim, &redis, &[("EMGATE_ADMIN_TOKEN", ADMIN)]);
    all_ready(&http, &gws).await;
    for gw in &gws {
        assert_eq!(
            http.get(&gw.url(&vm(&sim, 4)), &[]).await.status,
            StatusCode::OK
        );
    }
    let bearer = format!("Bearer {ADMIN}");
    let auth = [("authorization", bearer.as_str())];
    redis.pause();
    let started = Instant::now();
    let r = http
        .send(Method::DELETE, &gws[0].url("/admin/cache"), &auth)
        .await;
    let took = started.elapsed();
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a purge while Redis is frozen answered {} {}: the shared tier still holds every entry",
        r.status,
        r.body
    );
    assert!(
        r.headers.contains_key("retry-after"),
        "503 without Retry-After"
    );
    assert!(took < Duration::from_secs(5), "the purge took {took:?}");
    redis.resume();
    let purged = eventually(Duration::from_secs(10), || {
        let (http, url, bearer) = (http.clone(), gws[0].url("/admin/cache"), bearer.clone());
        async move {
            http.send(Method::DELETE, &url, &[("authorization", &bearer)])
                .await
                .status
                == StatusCode::NO_CONTENT
        }
    })
    .await;
    assert!(purged, "no purge answered 204 within 10 s of Redis thawing");
}

// 10 --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_empty_under_load_logs_no_client_out_and_is_used_again_within_5_s() {
    let _turn = with_others().await;
    let sim = start_sim(sim_config()).await;
    let Some(mut redis) = Redis::try_start() else {
        return;
    };
    let port = redis.port;
    let (_clients_dir, file, creds) = clients_file("restart-empty", 3);
    let http = Http::default();
    let gws = replicas(2, &sim, &redis, &[("EMGATE_CLIENTS_FILE", &file)]);
    all_ready(&http, &gws).await;
    let mut tokens = Vec::new();
    for (i, (name, secret)) in creds.iter().enumerate() {
        tokens.push(gateway_logon(&http, &gws[i % 2], name, secret).await.0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (http, stop, tokens) = (http.clone(), stop.clone(), tokens.clone());
        let bases: Vec<String> = gws.iter().map(|g| g.url("")).collect();
        let paths: Vec<String> = (0..200).map(|i| vm(&sim, i)).collect();
        tokio::spawn(async move {
            let (mut total, mut unauthorized, mut failures) = (0usize, 0usize, Vec::new());
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for (k, token) in tokens.iter().enumerate() {
                    let url = format!("{}{}", bases[(n + k) % 2], paths[n % paths.len()]);
                    total += 1;
                    match http.try_get(&url, &[("x-restsvcsessionid", token)]).await {
                        Ok(StatusCode::OK) => {}
                        Ok(StatusCode::UNAUTHORIZED) => {
                            unauthorized += 1;
                            failures.push(format!("401 for client {k} at {url}"));
                        }
                        Ok(s) => failures.push(format!("{s} for client {k} at {url}")),
                        Err(e) => failures.push(format!("{e} for client {k} at {url}")),
                    }
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (total, unauthorized, failures)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.kill();
    let redis = Redis::start_on(port);
    let restarted = Instant::now();
    let shared_again = eventually(Duration::from_secs(5), || {
        let http = http.clone();
        let urls: Vec<String> = gws.iter().map(|g| g.url("/metrics")).collect();
        let sessions = scan(&redis, "{emgate}:cs:*").len();
        let em_session = exists(&redis, SESSION);
        async move {
            let mut up = true;
            for u in urls {
                up &= sample(&http.get(&u, &[]).await.body, "emgate_shared_up") == Some(1.0);
            }
            up && sessions >= 3 && em_session
        }
    })
    .await;
    let took = restarted.elapsed();
    eprintln!("shared tier in use again: {shared_again} after {took:?}");
    // A little more load on the refilled Redis.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (total, unauthorized, failures) = load.await.unwrap();
    assert!(total > 50, "only {total} requests in the run");
    assert_eq!(
        unauthorized,
        0,
        "clients were logged out by Redis restarting empty ({unauthorized} of {total} \
         requests got 401): {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let mut up = Vec::new();
    for gw in &gws {
        up.push(sample(
            &http.get(&gw.url("/metrics"), &[]).await.body,
            "emgate_shared_up",
        ));
    }
    assert!(
        shared_again,
        "{took:?} after Redis restarted empty the shared tier is not in use again: \
         emgate_shared_up {up:?}, {} client sessions ({{emgate}}:cs:*) of 3, {SESSION} exists: {}",
        scan(&redis, "{emgate}:cs:*").len(),
        exists(&redis, SESSION)
    );
}

// 11 --------------------------------------------------------------------

/// Restore points the simulator makes for an answer of 40 MB or more:
/// `GET /api/query?type=VmRestorePoint&format=Entities` lists all their VMs.
const BIG_POINTS: usize = 6_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_40_mb_em_answer_is_served_but_not_shared_and_the_fleet_keeps_working_meanwhile() {
    let _turn = alone().await;
    let mut cfg = sim_config();
    cfg.restore_points = BIG_POINTS;
    let sim = start_sim(cfg).await;
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let (_clients_dir, file, creds) = clients_file("big", 2);
    let http = Http::default();
    // Room for the answer in every bound but the shared tier's: the local
    // cache would keep it.
    let gws = replicas(
        2,
        &sim,
        &redis,
        &[
            ("EMGATE_CLIENTS_FILE", &file),
            ("EMGATE_UPSTREAM_MAX_BODY", "128MiB"),
            ("EMGATE_UPSTREAM_MEMORY", "1GiB"),
            ("EMGATE_CACHE_MAX_BYTES", "2GiB"),
            ("EMGATE_UPSTREAM_TIMEOUT", "60s"),
            ("EMGATE_SHARED_MAX_ENTRY", "32MiB"),
        ],
    );
    all_ready(&http, &gws).await;
    let (a, b) = (&gws[0], &gws[1]);
    let (token, _) = gateway_logon(&http, a, &creds[0].0, &creds[0].1).await;
    let big = "/api/query?type=VmRestorePoint&format=Entities";
    sim.set_path_latency("/api/restorePoints/", Some(Duration::from_millis(300)));
    let fetch = {
        let (http, url, token) = (http.clone(), a.url(big), token.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let with = [("x-restsvcsessionid", token.as_str())];
            let r = http.get_within(&url, &with, Duration::from_secs(180)).await;
            (r, started.elapsed())
        })
    };
    // Meanwhile, and a little after (the answer may land in Redis after it
    // is served): a logon at B answers within 1 s, and a key asked at both
    // replicas at once is fetched from EM once.
    let (mut probes, mut during, mut slow, mut doubled) = (0, 0, Vec::new(), Vec::new());
    let mut finished_at: Option<Instant> = None;
    let begun = Instant::now();
    let limit = begun + Duration::from_secs(180);
    while finished_at.is_none_or(|t| t.elapsed() < Duration::from_secs(2)) {
        assert!(
            Instant::now() < limit,
            "the 40 MB fetch took over 3 minutes"
        );
        if finished_at.is_none() && fetch.is_finished() {
            finished_at = Some(Instant::now());
        }
        let started = Instant::now();
        let (name, secret) = &creds[1];
        gateway_logon(&http, b, name, secret).await;
        let took = started.elapsed();
        // Generous: on a busy 2-core machine the simulator building 43 MB
        // and A converting it take the CPU; what must not happen is a
        // logon waiting behind the big value for Redis (see the shared
        // operations that timed out, below).
        if took > Duration::from_secs(5) {
            slow.push(format!(
                "{took:?} at {:?}{}",
                begun.elapsed(),
                if finished_at.is_some() {
                    " (after the fetch)"
                } else {
                    ""
                }
            ));
        }
        let p = vm(&sim, probes);
        let (url_a, url_b) = (a.url(&p), b.url(&p));
        let with = [("x-restsvcsessionid", token.as_str())];
        let (ra, rb) = tokio::join!(http.get(&url_a, &with), http.get(&url_b, &with));
        assert_eq!((ra.status, rb.status), (StatusCode::OK, StatusCode::OK));
        let fetches = em_fetches(&sim, &p);
        if fetches != 1 {
            doubled.push(fetches);
        }
        probes += 1;
        if finished_at.is_none() {
            during += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (reply, took) = fetch.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", &reply.body[..200]);
    assert!(
        reply.body.len() >= 40_000_000,
        "the simulator's answer is only {} bytes: raise BIG_POINTS",
        reply.body.len()
    );
    eprintln!(
        "{} bytes in {took:?}; {probes} probes, {during} during the fetch",
        reply.body.len()
    );
    assert!(
        during >= 1,
        "the fetch took {took:?}: nothing was probed while it ran"
    );
    let mut problems = Vec::new();
    if !slow.is_empty() {
        problems.push(format!(
            "logons at B took over 5 s while A fetched 40 MB: {slow:?}"
        ));
    }
    // No operation of B's on Redis (session records, leases) waited past
    // its bound while A fetched.
    let m = http.get(&b.url("/metrics"), &[]).await.body;
    let timed_out: Vec<&str> = m
        .lines()
        .filter(|l| {
            l.starts_with("emgate_shared_operations_total") && l.contains("result=\"timeout\"")
        })
        .collect();
    if !timed_out.is_empty() {
        problems.push(format!("B's Redis operations timed out: {timed_out:?}"));
    }
    if !doubled.is_empty() {
        problems.push(format!(
            "keys asked at both replicas while A fetched 40 MB were fetched from EM more than \
         once (leases did not work): EM fetches per key {doubled:?}"
        ));
    }
    // Not shared: Redis holds nothing of that size, and B asks EM itself.
    let largest = scan(&redis, "{emgate}:e:*")
        .iter()
        .map(|k| {
            redis
                .cli(&["STRLEN", k])
                .trim()
                .parse::<usize>()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    if largest >= 4_000_000 {
        problems.push(format!(
            "a {largest}-byte entry is in Redis: the 40 MB answer was shared"
        ));
    }
    let before = em_fetches(&sim, "/api/query");
    let with = [("x-restsvcsessionid", token.as_str())];
    let rb = http
        .get_within(&b.url(big), &with, Duration::from_secs(180))
        .await;
    assert_eq!(rb.status, StatusCode::OK);
    assert_eq!(rb.body.len(), reply.body.len());
    if em_fetches(&sim, "/api/query") - before != 1 {
        problems.push(format!(
            "B served the 40 MB answer without asking EM: it came from the shared tier ({:?})",
            rb.headers.get("cache-status")
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// 12 --------------------------------------------------------------------

/// The `--maxmemory-policy` the fleet overlay gives its Valkey.
/// What the replicas say would make a key asked at both of them at once
/// cost a second EM fetch, by design: what one of them stored evicted by
/// Redis before the other read it (`emgate_fleet_landed_evicted_total`),
/// or Redis not answering in time, so that a replica goes on alone.
async fn fetch_excuses(http: &Http, gws: &[Gateway]) -> Vec<(String, f64)> {
    let mut found = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        let text = http.get(&gw.url("/metrics"), &[]).await.body;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let excuse = series == "emgate_fleet_landed_evicted_total"
                || (series.starts_with("emgate_shared_operations_total{")
                    && ["timeout", "skipped", "error"]
                        .iter()
                        .any(|r| series.contains(&format!("result=\"{r}\""))));
            if excuse {
                found.push((
                    format!("{series} at replica {i}"),
                    value.parse().unwrap_or(0.0),
                ));
            }
        }
    }
    found
}

/// The excuses that grew from `before` to `after`.
fn grown(before: &[(String, f64)], after: &[(String, f64)]) -> Vec<String> {
    let was = |name: &str| {
        before
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, v)| *v)
    };
    (after.iter())
        .filter(|(name, v)| *v > was(name))
        .map(|(name, _)| name.clone())
        .collect()
}

fn overlay_policy() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/fleet/valkey.yaml"
    );
    let text = std::fs::read_to_string(path).expect("the fleet overlay's valkey.yaml");
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.contains("--maxmemory-policy") {
            let value = match line.split_once("--maxmemory-policy") {
                Some((_, rest)) if !rest.trim().is_empty() => rest.trim().to_string(),
                _ => lines.next().unwrap_or_default().to_string(),
            };
            return value
                .trim_start_matches('-')
                .trim()
                .trim_matches('"')
                .to_string();
        }
    }
    panic!("{path} gives no --maxmemory-policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_redis_flooded_with_distinct_queries_keeps_client_sessions_and_leases() {
    let _turn = alone().await;
    let policy = overlay_policy();
    let Some(redis) =
        Redis::try_start_with_args(&["--maxmemory", "2mb", "--maxmemory-policy", &policy])
    else {
        return;
    };
    let sim = start_sim(sim_config()).await;
    let (_clients_dir, file, creds) = clients_file("full", 2);
    let http = Http::default();
    let gws = replicas(
        2,
        &sim,
        &redis,
        &[
            ("EMGATE_CLIENTS_FILE", &file),
            ("EMGATE_ADMIN_TOKEN", ADMIN),
        ],
    );
    all_ready(&http, &gws).await;
    // A client that keeps working through the flood, and one that logged
    // on and sits idle meanwhile.
    let (active, _) = gateway_logon(&http, &gws[0], &creds[0].0, &creds[0].1).await;
    let (idle, _) = gateway_logon(&http, &gws[1], &creds[1].0, &creds[1].1).await;
    for gw in &gws {
        for t in [&active, &idle] {
            assert_eq!(
                status_with(&http, gw, "/api/logonSessions", t).await,
                StatusCode::OK
            );
        }
    }
    // The flood (an exporter with the operator's token, say): distinct
    // query strings, each a cache entry of its own (a few KiB each, so
    // Redis evicts many; entries near the size of Redis itself would only
    // be refused).
    let bearer = format!("Bearer {ADMIN}");
    let first = http
        .get(
            &gws[0].url("/api/query?type=Job&flood=first"),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.headers["x-cache"], "MISS");
    const FLOOD: usize = 1000;
    const WORKERS: usize = 8;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (http, next, bearer) = (http.clone(), next.clone(), bearer.clone());
        let bases: Vec<String> = gws.iter().map(|g| g.url("")).collect();
        workers.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= FLOOD {
                    break failed;
                }
                let url = format!("{}/api/query?type=Job&flood={n}", bases[n % 2]);
                match http.try_get(&url, &[("authorization", &bearer)]).await {
                    Ok(StatusCode::OK) => {}
                    other => failed.push(format!("{other:?} for {url}")),
                }
            }
        }));
    }
    // Meanwhile the active client works on both replicas, and a key asked
    // at both replicas at once is fetched from EM once (leases hold).
    sim.set_path_latency("/api/restorePoints/", Some(Duration::from_millis(300)));
    let (mut doubled, mut excused, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    let mut k = 0;
    while next.load(Ordering::Relaxed) < FLOOD || k < 3 {
        let p = vm(&sim, k);
        let excuses = fetch_excuses(&http, &gws).await;
        let mut asks = Vec::new();
        for i in 0..6 {
            let (http, url, bearer) = (http.clone(), gws[i % 2].url(&p), bearer.clone());
            asks.push(tokio::spawn(async move {
                http.get(&url, &[("authorization", &bearer)]).await.status
            }));
        }
        for a in asks {
            assert_eq!(a.await.unwrap(), StatusCode::OK, "{p}");
        }
        let fetches = em_fetches(&sim, &p);
        if fetches != 1 {
            let why = grown(&excuses, &fetch_excuses(&http, &gws).await);
            match why.is_empty() {
                false => excused.push((k, fetches, why)),
                true => doubled.push((k, fetches)),
            }
        }
        for (i, gw) in gws.iter().enumerate() {
            let status = status_with(&http, gw, "/api/logonSessions", &active).await;
            if status != StatusCode::OK {
                refused.push(format!("{status} at replica {i} during check {k}"));
            }
        }
        k += 1;
    }
    let mut failed = Vec::new();
    for w in workers {
        failed.extend(w.await.unwrap());
    }
    let stats = redis.cli(&["INFO", "stats"]);
    let evicted: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let oom = redis
        .cli(&["INFO", "errorstats"])
        .lines()
        .find_map(|l| l.strip_prefix("errorstat_OOM:"))
        .map(str::to_string);
    eprintln!(
        "policy {policy}: {evicted} keys evicted, OOM refusals {oom:?}, {k} checks during the \
         flood, fetched again for a stated reason: {excused:?}"
    );
    assert!(
        evicted > 0,
        "the flood never filled Redis (evicted_keys 0): the test proves nothing"
    );
    let mut problems = Vec::new();
    if !failed.is_empty() {
        problems.push(format!(
            "{} flood requests failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        ));
    }
    if !refused.is_empty() {
        problems.push(format!(
            "the active client was logged out during the flood: {:?}",
            &refused[..refused.len().min(4)]
        ));
    }
    if !doubled.is_empty() {
        problems.push(format!(
            "keys asked at both replicas at once were fetched from EM more than once, with no \
             eviction of what landed nor Redis failing to say why (a lease was evicted?): \
             (check, EM fetches) {doubled:?}"
        ));
    }
    if excused.len() * 2 > k {
        problems.push(format!(
            "most keys asked at both replicas at once were fetched from EM more than once \
             (check, EM fetches, why): {excused:?} of {k} checks"
        ));
    }
    // Past the replicas' short memory of sessions they checked: Redis decides.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let records = scan(&redis, "{emgate}:cs:*").len();
    if records < 2 {
        problems.push(format!(
            "Redis evicted client sessions: {records} of 2 records left"
        ));
    }
    for (who, t) in [("the active client", &active), ("the idle client", &idle)] {
        for (i, gw) in gws.iter().enumerate() {
            let status = status_with(&http, gw, "/api/logonSessions", t).await;
            if status != StatusCode::OK {
                problems.push(format!(
                    "after the flood {who} is logged out at replica {i} ({status})"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "Redis full under a flood (--maxmemory 2mb --maxmemory-policy {policy}, as the fleet \
         overlay):\n{}",
        problems.join("\n")
    );
}
