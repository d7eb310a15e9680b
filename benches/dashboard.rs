//! A dashboard scenario, side by side: 20 clients each polling 5 report
//! routes every second, EM answering them in 1 s, through the gateway with
//! the cache rules on, with only collapsing, and with neither. Prints EM
//! requests and client p50/p99 for each, in one run (the machine is noisy:
//! compare the ratios).
//!
//! Run: `cargo bench --bench dashboard` (DURATION=60 seconds per setup by
//! default; CLIENTS=20; EM_LATENCY_MS=1000). It starts the simulator
//! in-process and the release `emgate` binary as a child process, on
//! loopback.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use emgate::sim::Sim;
use http_body_util::BodyExt;
use support::env_or;
use tokio::sync::Mutex;

const ROUTES: [&str; 5] = [
    "/api/reports/summary/overview",
    "/api/reports/summary/vms_overview",
    "/api/reports/summary/job_statistics",
    "/api/reports/summary/processed_vms",
    "/api/reports/summary/repository",
];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(sim: &Sim, name: &str, extra: &[(&str, &str)], clients: u64, seconds: u64) {
    let (_gw, base) = support::gateway(sim, extra);
    let client = support::http();
    support::ready(&client, &base).await;
    sim.clear_requests();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        let base = base.clone();
        let latencies = latencies.clone();
        let failures = failures.clone();
        tasks.push(tokio::spawn(async move {
            // Clients start spread over the first second, as real ones do.
            tokio::time::sleep(Duration::from_millis(c * 1000 / clients)).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while start.elapsed() < Duration::from_secs(seconds) {
                tick.tick().await;
                let mut polls = Vec::new();
                for route in ROUTES {
                    let client = client.clone();
                    let url = format!("{base}{route}");
                    polls.push(tokio::spawn(async move {
                        let t = Instant::now();
                        let ok = match client.get(url.parse().expect("url")).await {
                            Ok(r) => {
                                let ok = r.status().is_success();
                                let _ = r.into_body().collect().await;
                                ok
                            }
                            Err(_) => false,
                        };
                        (t.elapsed(), ok)
                    }));
                }
                for p in polls {
                    if let Ok((took, ok)) = p.await {
                        latencies.lock().await.push(took);
                        if !ok {
                            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut all = latencies.lock().await.clone();
    all.sort();
    let em = sim
        .requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/api/reports/"))
        .count();
    println!(
        "{name:<28} requests {:>6}  failed {:>3}  EM requests {:>5}  p50 {:>8.1} ms  p99 {:>8.1} ms",
        all.len(),
        failures.load(std::sync::atomic::Ordering::Relaxed),
        em,
        percentile(&all, 0.50).as_secs_f64() * 1000.0,
        percentile(&all, 0.99).as_secs_f64() * 1000.0,
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let seconds = env_or("DURATION", 60);
    let clients = env_or("CLIENTS", 20);
    let latency = env_or("EM_LATENCY_MS", 1000);
    rt.block_on(async {
        let sim = support::sim().await;
        sim.set_path_latency("/api/reports/", Some(Duration::from_millis(latency)));
        println!(
            "dashboard: {clients} clients x {} report routes every second for {seconds} s, EM answers them in {latency} ms",
            ROUTES.len()
        );
        run(&sim, "rules on (defaults)", &[], clients, seconds).await;
        run(
            &sim,
            "rules off, collapsing on",
            &[("EMGATE_CACHE_DEFAULT_RULES", "false")],
            clients,
            seconds,
        )
        .await;
        run(
            &sim,
            "rules off, collapsing off",
            &[
                ("EMGATE_CACHE_DEFAULT_RULES", "false"),
                ("EMGATE_COLLAPSE", "false"),
            ],
            clients,
            seconds,
        )
        .await;
    });
}
