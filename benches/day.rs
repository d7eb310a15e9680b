//! A compressed day in front of a slow EM, with prefetch and warm start on
//! and off in the same run (the machine is noisy: compare the two rows):
//!
//! - EM answers everything in `DAY_EM_LATENCY_MS` (2,000);
//! - backup jobs (20, in turn) make a restore point every
//!   `DAY_POINT_MS` (1,000) of benchmark time;
//! - 50 clients ask, one request after another with a short pause, 70%
//!   for the vmRestorePoints of a restore point made in the last "hour"
//!   (the `DAY_HOUR_POINTS` newest, 120: two minutes of benchmark time)
//!   and 30% for one of 200 older ones a portal keeps coming back to. The
//!   clients of a replica learn of new points from the listing a portal
//!   shows them: every `DAY_LIST_MS` (1,000) it asks that replica for the
//!   newest points (`/api/query?type=RestorePoint&sortDesc=CreationTime`,
//!   cached by emgate's `query` rule, so up to 30 s old), and its
//!   requests are counted with the clients'. With `DAY_DISCOVERY_MS` set,
//!   clients learn of every point that long after it appeared instead,
//!   with no listing (3,000 was this benchmark's model before: every
//!   point found as soon as a listing could show it);
//! - the cache's TTL is the default (`DAY_TTL`, 5m): compressed like the
//!   day, it would make the background lane refresh every hot key every
//!   few seconds, at EM's real 2 s each, far beyond its budget; with warm
//!   work on, `EMGATE_PREFETCH_INTERVAL=1s` (`DAY_PREFETCH_INTERVAL_MS`);
//! - the first `DAY_SECONDS` / 2 are the morning (clients run, nothing is
//!   counted);
//!   the gateway is restarted (SIGTERM, then started again) half way
//!   through the rest; clients pause until it is ready and then get the
//!   paused time back, so both halves are counted in every mode.
//!
//! Modes: prefetch and warm start on, the restarted gateway ready once its
//! hot keys are fetched again (`EMGATE_WARM_BEFORE_READY`) or at once;
//! both off; and a fleet of two replicas sharing a `redis-server`, with
//! everything on and off: the clients are spread over both, one replica
//! restarts half way and Redis restarts (empty, no persistence) three
//! quarters of the way, while clients keep asking (`DAY_FLEET=0` leaves
//! the fleet out). Printed per mode: the share of client requests that waited for EM
//! (`X-Cache` MISS or none, or STALE after waiting for a refresh; the goal
//! with everything on is under 1%), the
//! client p50 and p99, EM requests per minute by who asked (client or
//! background, from the gateway's own counters), and the background peak
//! against its budget, and how long the restart took to ready.
//!
//! The background budget is the default, 4 at a time
//! (`DAY_BACKGROUND_CONCURRENCY`). At EM's 2 s that is 2 fetches a second,
//! and a point a second with the hot keys' refreshes asks about as much:
//! a single replica's restart backlog is then never caught up in full
//! (BENCHMARKS.md, "The day at a point every 3 s").
//!
//! Run: `cargo bench --bench day` (`DAY_SECONDS=60` per mode;
//! `DAY_MODES=1,3` runs those rows only, `DAY_DEBUG=1` prints the
//! gateway's wait and background counters).

mod support;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emgate::sim::Sim;
use http_body_util::BodyExt;
use support::{env_or, free_port, Http, Proc};

const CLIENTS: usize = 50;
const OLDER: usize = 200;
const ADMIN: &str = "the-day-benchmark-admin-token";

/// What one mode measured.
#[derive(Default)]
struct Day {
    requests: u64,
    waited: u64,
    failed: u64,
    latencies: Vec<Duration>,
    em_client: f64,
    em_background: f64,
    peak: u64,
    budget: u64,
    seconds: f64,
    /// From the restart to ready again.
    to_ready: Duration,
    /// Requests that waited: for a new point, its age then (a restart's
    /// pause not taken off); for an older one, `None` (`DAY_DEBUG`).
    waits: Vec<Option<Duration>>,
}

impl Day {
    /// One client request: its status, `X-Cache`, time, and for a new
    /// point its age.
    fn count(&mut self, status: u16, cache: Option<String>, took: Duration, age: Option<Duration>) {
        self.requests += 1;
        if status != 200 {
            self.failed += 1;
        }
        // A stale copy served at once is no wait; one served after the
        // stale wait (past stale-while-revalidate, the refresh slower than
        // `EMGATE_CACHE_STALE_WAIT`) waited for EM, as the gateway's
        // `stale_miss` counts it.
        let waited_stale = cache.as_deref() == Some("STALE") && took >= Duration::from_millis(500);
        if waited_stale || !matches!(cache.as_deref(), Some("HIT") | Some("STALE")) {
            self.waited += 1;
            self.waits.push(age);
        }
        self.latencies.push(took);
    }
}

/// The gateway on `port` with the day's settings and `extra`.
fn gateway(sim: &Sim, port: u16, extra: &[(&str, String)]) -> Proc {
    let ttl = std::env::var("DAY_TTL").unwrap_or_else(|_| "5m".into());
    let mut all: Vec<(&str, &str)> = vec![
        ("EMGATE_ADMIN_TOKEN", ADMIN),
        ("EMGATE_CACHE_TTL", ttl.as_str()),
    ];
    all.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
    support::gateway_on(sim, port, &all)
}

/// One GET: its status (0: none), `X-Cache`, time.
async fn get(http: &Http, url: &str) -> (u16, Option<String>, Duration) {
    let (status, cache, took, _) = get_text(http, url).await;
    (status, cache, took)
}

/// One GET: its status (0: none), `X-Cache`, time and body.
async fn get_text(http: &Http, url: &str) -> (u16, Option<String>, Duration, String) {
    let t = Instant::now();
    match http.get(url.parse().expect("url")).await {
        Ok(r) => {
            let status = r.status().as_u16();
            let cache = r
                .headers()
                .get("x-cache")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = r.into_body().collect().await.map(|b| b.to_bytes());
            let body = body.map(|b| String::from_utf8_lossy(&b).into_owned());
            (status, cache, t.elapsed(), body.unwrap_or_default())
        }
        Err(_) => (0, None, t.elapsed(), String::new()),
    }
}

/// The gateway's EM requests so far: (all, background), and the
/// background lane's peak.
async fn em_counts(http: &Http, base: &str) -> (f64, f64, u64) {
    let metrics = String::from_utf8(
        http.get(format!("{base}/metrics").parse().expect("url"))
            .await
            .map(|r| r.into_body())
            .expect("metrics")
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default(),
    )
    .unwrap_or_default();
    let sum = |name: &str, filter: &dyn Fn(&str) -> bool| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && filter(l))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    if std::env::var("DAY_DEBUG").is_ok() {
        for l in metrics.lines().filter(|l| {
            l.starts_with("emgate_client_waits_total")
                || l.starts_with("emgate_cache_requests_total{rule=\"vm_restore_points\"")
                || l.starts_with("emgate_background_requests_total")
                || l.starts_with("emgate_cache_refreshes_total{rule=\"vm_restore_points\"")
        }) {
            eprintln!("  {l}");
        }
    }
    let all = sum("emgate_upstream_requests_total", &|_| true);
    let background = sum("emgate_background_requests_total", &|l| {
        !l.contains("dropped")
    });
    let req = hyper::Request::get(format!("{base}/admin/status.json"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let peak = match http.request(req).await {
        Ok(r) => {
            let body = r
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["warm"]["lane"]["peak"].as_u64())
                .unwrap_or(0)
        }
        Err(_) => 0,
    };
    (all, background, peak)
}

async fn ready(http: &Http, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while get(http, &format!("{base}/readyz")).await.0 != 200 {
        assert!(Instant::now() < deadline, "{base} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How a day is run.
#[derive(Clone, Copy)]
struct Mode {
    /// Prefetch and warm start on.
    on: bool,
    /// The restarted gateway is ready once its hot keys are cached again.
    before_ready: bool,
    /// Two replicas sharing a Redis, which restarts (empty) three quarters
    /// of the way through; one replica restarts half way.
    fleet: bool,
}

/// One compressed day in `mode`.
async fn day(sim: &Arc<Sim>, mode: Mode, seconds: u64, point_every: Duration, hour: usize) -> Day {
    let replicas = if mode.fleet { 2 } else { 1 };
    let dirs: Vec<std::path::PathBuf> = (0..replicas)
        .map(|r| {
            let dir = std::env::temp_dir().join(format!(
                "emgate-day-{}-{}-{}-{}-{r}",
                std::process::id(),
                mode.on,
                mode.before_ready,
                mode.fleet
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("state dir");
            dir
        })
        .collect();
    let (mut redis, redis_port) = match mode.fleet {
        true => {
            let (p, port) = support::redis();
            (Some(p), port)
        }
        false => (None, 0),
    };
    let extra = |r: usize| {
        let budget = env_or("DAY_BACKGROUND_CONCURRENCY", 4);
        let mut extra: Vec<(&str, String)> =
            vec![("EMGATE_BACKGROUND_CONCURRENCY", budget.to_string())];
        if mode.on {
            extra.push((
                "EMGATE_PREFETCH_INTERVAL",
                format!("{}ms", env_or("DAY_PREFETCH_INTERVAL_MS", 1000)),
            ));
            extra.push(("EMGATE_STATE_DIR", dirs[r].display().to_string()));
            if mode.before_ready {
                extra.push(("EMGATE_WARM_BEFORE_READY", "true".into()));
            }
        } else {
            extra.push(("EMGATE_PREFETCH", "false".into()));
        }
        if mode.fleet {
            extra.push((
                "EMGATE_SHARED_URL",
                format!("redis://127.0.0.1:{redis_port}"),
            ));
        }
        extra
    };
    let ports: Vec<u16> = (0..replicas).map(|_| free_port()).collect();
    let bases: Vec<String> = ports
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}"))
        .collect();
    let http = support::http();
    let mut gws: Vec<Proc> = (0..replicas)
        .map(|r| gateway(sim, ports[r], &extra(r)))
        .collect();
    for base in &bases {
        ready(&http, base).await;
    }

    // Backup jobs run all day.
    let recent: Arc<Mutex<VecDeque<(String, Instant)>>> = Arc::default();
    let running = Arc::new(AtomicBool::new(true));
    let jobs = {
        let (recent, running, sim) = (recent.clone(), running.clone(), sim.clone());
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let id = sim.add_restore_point();
                {
                    let mut r = recent.lock().expect("recent");
                    r.push_front((id, Instant::now()));
                    r.truncate(hour);
                }
                tokio::time::sleep(point_every).await;
            }
        })
    };
    // The day's first points exist before clients ask.
    tokio::time::sleep(point_every * 3).await;

    let results: Arc<Mutex<Day>> = Arc::default();
    let paused = Arc::new(AtomicBool::new(false));
    let older: Vec<String> = (0..OLDER).map(|i| sim.restore_point_id(i * 7)).collect();
    let morning = Duration::from_secs(seconds / 2);
    let counting = Arc::new(AtomicBool::new(false));
    // How clients learn of new points: from a listing through the
    // gateway (a portal's), or a fixed time after they appeared.
    let discovery = std::env::var("DAY_DISCOVERY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let shown: Vec<Arc<Mutex<Vec<String>>>> = (0..replicas).map(|_| Arc::default()).collect();
    let mut portals = Vec::new();
    if discovery.is_none() {
        for (r, base) in bases.iter().enumerate() {
            let (http, shown, results, paused, counting) = (
                support::http(),
                shown[r].clone(),
                results.clone(),
                paused.clone(),
                counting.clone(),
            );
            let url =
                format!("{base}/api/query?type=RestorePoint&sortDesc=CreationTime&pageSize={hour}");
            let every = Duration::from_millis(env_or("DAY_LIST_MS", 1000));
            let running = running.clone();
            portals.push(tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    if !paused.load(Ordering::Relaxed) {
                        let (status, cache, took, body) = get_text(&http, &url).await;
                        if status == 200 {
                            let ids: Vec<String> = body
                                .split("urn:veeam:RestorePoint:")
                                .skip(1)
                                .filter_map(|rest| rest.get(..36).map(str::to_string))
                                .collect();
                            *shown.lock().expect("shown") = ids;
                        }
                        if counting.load(Ordering::Relaxed) {
                            results
                                .lock()
                                .expect("results")
                                .count(status, cache, took, None);
                        }
                    }
                    tokio::time::sleep(every).await;
                }
            }));
        }
    }
    let started = Instant::now() + morning;
    let end = started + Duration::from_secs(seconds);
    // Clients paused for the restart get the time back: the second half is
    // counted in every mode, however long the restart takes to be ready.
    let paused_ms = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let paused_ms = paused_ms.clone();
        let shown = shown[c % replicas].clone();
        let (http, base, recent, results, paused, counting) = (
            support::http(),
            // A load balancer spreads the clients over the replicas.
            bases[c % replicas].clone(),
            recent.clone(),
            results.clone(),
            paused.clone(),
            counting.clone(),
        );
        let older = older.clone();
        clients.push(tokio::spawn(async move {
            let mut n = c as u64;
            loop {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if paused.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                if Instant::now() >= end + Duration::from_millis(paused_ms.load(Ordering::Relaxed))
                {
                    break;
                }
                let id = if (n >> 33) % 10 < 7 {
                    let r = recent.lock().expect("recent");
                    let age =
                        |id: &str| r.iter().find(|(p, _)| p == id).map(|(_, at)| at.elapsed());
                    match discovery {
                        // The points the portal shows.
                        None => {
                            let shown = shown.lock().expect("shown");
                            shown
                                .get(((n >> 40) as usize) % shown.len().max(1))
                                .map(|id| (id.clone(), age(id)))
                        }
                        // The points clients know of by now.
                        Some(discovery) => {
                            let known = r.iter().skip_while(|(_, at)| at.elapsed() < discovery);
                            let count = known.clone().count();
                            known
                                .clone()
                                .nth(((n >> 40) as usize) % count.max(1))
                                .map(|(id, at)| (id.clone(), Some(at.elapsed())))
                        }
                    }
                } else {
                    older
                        .get(((n >> 40) as usize) % OLDER)
                        .map(|id| (id.clone(), None))
                };
                let Some((id, age)) = id else { continue };
                let url = format!("{base}/api/restorePoints/{id}/vmRestorePoints");
                let (status, cache, took) = get(&http, &url).await;
                if counting.load(Ordering::Relaxed) {
                    results
                        .lock()
                        .expect("results")
                        .count(status, cache, took, age);
                }
                tokio::time::sleep(Duration::from_millis(50 + (n >> 50) % 100)).await;
            }
        }));
    }

    tokio::time::sleep(morning).await;
    let mut counts = Vec::new();
    for base in &bases {
        counts.push(em_counts(&http, base).await);
    }
    let before = counts;
    counting.store(true, Ordering::Relaxed);
    // The restart of the first replica, half way (clients pause for it, as
    // a load balancer's drain would make them).
    tokio::time::sleep(Duration::from_secs(seconds / 2)).await;
    paused.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_restart = em_counts(&http, &bases[0]).await;
    let pid = gws[0].0.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = gws[0].0.wait();
    let restarted = Instant::now();
    gws[0] = gateway(sim, ports[0], &extra(0));
    ready(&http, &bases[0]).await;
    let to_ready = restarted.elapsed();
    paused_ms.store(
        (restarted.elapsed() + Duration::from_millis(300)).as_millis() as u64,
        Ordering::Relaxed,
    );
    paused.store(false, Ordering::Relaxed);
    if let Some(r) = redis.take() {
        // Redis restarts, empty, while clients keep asking.
        tokio::time::sleep(Duration::from_secs(seconds / 4)).await;
        drop(r);
        tokio::time::sleep(Duration::from_millis(500)).await;
        redis = Some(support::redis_on(redis_port));
    }

    for c in clients {
        let _ = c.await;
    }
    running.store(false, Ordering::Relaxed);
    for p in portals {
        let _ = p.await;
    }
    let mut d = std::mem::take(&mut *results.lock().expect("results"));
    for (r, base) in bases.iter().enumerate() {
        let (em, bg, peak) = em_counts(&http, base).await;
        let (em0, bg0, _) = before[r];
        let (em_all, bg_all) = match r {
            // Its counters began again at the restart.
            0 => (at_restart.0 - em0 + em, at_restart.1 - bg0 + bg),
            _ => (em - em0, bg - bg0),
        };
        d.em_background += bg_all;
        d.em_client += em_all - bg_all;
        // The busiest replica's own peak (in a fleet the budget is the
        // fleet's: `tests/warm.rs` counts that one at the simulator).
        d.peak = d.peak.max(peak).max(if r == 0 { at_restart.2 } else { 0 });
    }
    running.store(false, Ordering::Relaxed);
    let _ = jobs.await;
    drop(gws);
    drop(redis);
    for dir in dirs {
        let _ = std::fs::remove_dir_all(&dir);
    }
    d.seconds = started.elapsed().as_secs_f64();
    d.budget = env_or("DAY_BACKGROUND_CONCURRENCY", 4);
    d.to_ready = to_ready;
    d
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let seconds = env_or("DAY_SECONDS", 60);
        let point_every = Duration::from_millis(env_or("DAY_POINT_MS", 1000));
        let latency = Duration::from_millis(env_or("DAY_EM_LATENCY_MS", 2000));
        let hour = env_or("DAY_HOUR_POINTS", 120) as usize;
        println!(
            "a compressed day: {seconds} s counted per mode after a morning of {} s, EM latency {latency:?}, a restore point every {point_every:?}, {CLIENTS} clients (70% the {hour} newest points they know of, 30% {OLDER} older ones), a restart half way",
            seconds / 2
        );
        println!(
            "{:<26} {:>9} {:>9} {:>9} {:>9} {:>16} {:>20} {:>14} {:>12}",
            "mode", "requests", "waited", "p50", "p99", "EM/min client", "EM/min background", "bg peak/budget", "restart"
        );
        let mode = |on, before_ready, fleet| Mode { on, before_ready, fleet };
        let mut modes = vec![
            ("warm on, ready when warm", mode(true, true, false)),
            ("warm on, ready at once", mode(true, false, false)),
            ("warm off", mode(false, false, false)),
        ];
        if std::env::var("DAY_FLEET").map_or(true, |v| v != "0") {
            modes.push(("fleet of 2, warm on", mode(true, true, true)));
            modes.push(("fleet of 2, warm off", mode(false, false, true)));
        }
        // DAY_MODES=1,3: only those rows (counted from 1).
        let only: Option<Vec<usize>> = std::env::var("DAY_MODES")
            .ok()
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
        for (i, (name, mode)) in modes.into_iter().enumerate() {
            if only.as_ref().is_some_and(|o| !o.contains(&(i + 1))) {
                continue;
            }
            let sim = support::sim().await;
            sim.set_latency(latency);
            let sim = Arc::new(sim);
            let mut d = day(&sim, mode, seconds, point_every, hour).await;
            d.latencies.sort_unstable();
            let per_min = |n: f64| n * 60.0 / d.seconds;
            println!(
                "{:<26} {:>9} {:>8.2}% {:>7.1}ms {:>7.1}ms {:>16.1} {:>20.1} {:>12}/{} {:>10.1}s{}",
                name,
                d.requests,
                100.0 * d.waited as f64 / d.requests.max(1) as f64,
                quantile(&d.latencies, 0.5).as_secs_f64() * 1e3,
                quantile(&d.latencies, 0.99).as_secs_f64() * 1e3,
                per_min(d.em_client),
                per_min(d.em_background),
                d.peak,
                d.budget,
                d.to_ready.as_secs_f64(),
                if d.failed > 0 { format!("  ({} failed)", d.failed) } else { String::new() },
            );
            if std::env::var("DAY_DEBUG").is_ok() {
                let mut ages: Vec<Duration> = d.waits.iter().flatten().copied().collect();
                ages.sort_unstable();
                eprintln!(
                    "  waited: {} for older points; {} for new points, aged p10 {:?} p50 {:?} p90 {:?}",
                    d.waits.iter().filter(|a| a.is_none()).count(),
                    ages.len(),
                    quantile(&ages, 0.1),
                    quantile(&ages, 0.5),
                    quantile(&ages, 0.9),
                );
            }
            if let Ok(sim) = Arc::try_unwrap(sim) {
                sim.shutdown().await;
            }
        }
    });
}
