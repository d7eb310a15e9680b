//! Fleet mode, measured side by side in one run (the machine is noisy:
//! compare the ratios):
//!
//! 1. 200 cold clients of 20 restore points over 3 replicas: EM fetches and
//!    EM logons, fleet on against 3 lone replicas;
//! 2. local-hit throughput of one replica, fleet on against off (the same
//!    warm key, N connections, alternating rounds);
//! 3. the latency of a shared-tier hit (a key another replica fetched)
//!    against a local hit.
//!
//! Run: `cargo bench --bench fleet` (needs `redis-server` on the PATH;
//! SECONDS=5 per throughput round, ROUNDS=4 (alternating which goes first), CONNECTIONS=32).

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emgate::sim::Sim;
use support::{env_or, get, ready, redis, Http};

/// A replica, in fleet mode (sharing the Redis on `redis` under `prefix`)
/// or alone.
fn gateway(sim: &Sim, redis: Option<u16>, prefix: &str) -> (support::Proc, String) {
    match redis {
        Some(p) => {
            let url = format!("redis://127.0.0.1:{p}");
            support::gateway(
                sim,
                &[
                    ("EMGATE_SHARED_URL", &url),
                    ("EMGATE_SHARED_PREFIX", prefix),
                ],
            )
        }
        None => support::gateway(sim, &[]),
    }
}

fn vm(sim: &Sim, i: usize) -> String {
    format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(i)
    )
}

/// 200 cold clients over three replicas: (EM fetches, EM logons).
async fn cold(sim: &Sim, http: &Http, fleet: Option<u16>, prefix: &str) -> (usize, u64) {
    let logons_before = sim.stats().logons_ok;
    let gws: Vec<_> = (0..3).map(|_| gateway(sim, fleet, prefix)).collect();
    for (_, base) in &gws {
        ready(http, base).await;
    }
    sim.clear_requests();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let http = http.clone();
        let url = format!("{}{}", gws[i % 3].1, vm(sim, 1000 + i % 20));
        tasks.push(tokio::spawn(async move { get(&http, &url).await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap_or(0), 200);
    }
    let fetches = sim
        .requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/api/restorePoints/"))
        .count();
    (fetches, sim.stats().logons_ok - logons_before)
}

/// Requests per second of `url` over `connections` for `seconds`.
async fn throughput(url: &str, connections: u64, seconds: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let http = support::http();
        let url = url.to_string();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                if get(&http, &url).await.0 == 200 {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / seconds as f64
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let seconds = env_or("SECONDS", 5);
    let rounds = env_or("ROUNDS", 4);
    let connections = env_or("CONNECTIONS", 32);
    rt.block_on(async {
        let sim = support::sim().await;
        let http = support::http();
        let (_redis, port) = redis();

        sim.set_path_latency("/api/restorePoints/", Some(Duration::from_millis(200)));
        let (f_off, l_off) = cold(&sim, &http, None, "off").await;
        let (f_on, l_on) = cold(&sim, &http, Some(port), "cold").await;
        println!("1. 200 cold clients, 20 restore points, 3 replicas (EM at 200 ms):");
        println!("   fleet off: {f_off:>3} EM fetches, {l_off} EM logons");
        println!("   fleet on:  {f_on:>3} EM fetches, {l_on} EM logons");
        sim.set_path_latency("/api/restorePoints/", None);

        let (_a, on) = gateway(&sim, Some(port), "tput");
        let (_b, off) = gateway(&sim, None, "tput");
        ready(&http, &on).await;
        ready(&http, &off).await;
        let key = vm(&sim, 7);
        get(&http, &format!("{on}{key}")).await;
        get(&http, &format!("{off}{key}")).await;
        println!("2. local hits, {connections} connections, {seconds} s rounds (req/s):");
        let mut ratios = Vec::new();
        for r in 0..rounds {
            // Alternate which goes first: the machine warms and cools.
            let (a, b) = if r % 2 == 0 {
                let a = throughput(&format!("{on}{key}"), connections, seconds).await;
                (a, throughput(&format!("{off}{key}"), connections, seconds).await)
            } else {
                let b = throughput(&format!("{off}{key}"), connections, seconds).await;
                (throughput(&format!("{on}{key}"), connections, seconds).await, b)
            };
            ratios.push(a / b);
            println!("   round {r}: fleet on {a:>8.0}  fleet off {b:>8.0}  ratio {:.2}", a / b);
        }
        ratios.sort_by(|a, b| a.total_cmp(b));
        println!("   median ratio (on/off): {:.2}", ratios[ratios.len() / 2]);

        let (_c, other) = gateway(&sim, Some(port), "tput");
        ready(&http, &other).await;
        let mut shared = Vec::new();
        let mut local = Vec::new();
        for i in 0..200 {
            let p = vm(&sim, 1500 + i);
            get(&http, &format!("{on}{p}")).await;
            shared.push(get(&http, &format!("{other}{p}")).await.1);
            local.push(get(&http, &format!("{other}{p}")).await.1);
        }
        let (s, l) = (median(shared), median(local));
        println!(
            "3. one request's latency, median of 200: shared-tier hit {:.3} ms, local hit {:.3} ms ({:.1}x)",
            s.as_secs_f64() * 1000.0,
            l.as_secs_f64() * 1000.0,
            s.as_secs_f64() / l.as_secs_f64()
        );
    });
}
