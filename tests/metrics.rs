//! `/metrics` after real traffic: each core metric with the values the
//! traffic implies.

mod common;

use common::*;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_hits_misses_requests_and_one_logon() {
    let sim = start_sim(sim_config()).await;
    // Every EM request below is a client's (prefetch's own are counted
    // in tests/warm.rs).
    let gw = Gateway::start(&sim, &[("EMGATE_PREFETCH", "false")]);
    let http = Http::default();
    // Once logged on, the gateway asks EM's entry point which API versions
    // it has (for the status page): wait for it, so it is counted always.
    let asked = eventually(std::time::Duration::from_secs(10), || {
        let found = gw.log_text().contains("Enterprise Manager found");
        async move { found }
    })
    .await;
    assert!(asked, "{}", gw.log_text());
    let p = format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(1)
    );
    for _ in 0..3 {
        assert_eq!(http.get(&gw.url(&p), &[]).await.status, StatusCode::OK);
    }
    assert_eq!(
        http.get(&gw.url("/api/restorePoints"), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        http.get(&gw.url("/api/nope/../x"), &[]).await.status,
        StatusCode::BAD_REQUEST
    );

    let reply = http.get(&gw.url("/metrics"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let m = reply.body;
    let route = "/api/restorePoints/{id}/vmRestorePoints";
    assert_eq!(
        sample(
            &m,
            &format!("emgate_requests_total{{route=\"{route}\",status=\"200\"}}")
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "emgate_requests_total{route=\"/api/*\",status=\"200\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "emgate_requests_total{route=\"/api/*\",status=\"400\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            &format!("emgate_request_duration_seconds_count{{route=\"{route}\"}}")
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "emgate_cache_requests_total{rule=\"vm_restore_points\",result=\"hit\"}"
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "emgate_cache_requests_total{rule=\"vm_restore_points\",result=\"miss\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "emgate_cache_requests_total{rule=\"vm_restore_points\",result=\"stale\"}"
        ),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "emgate_cache_entries{rule=\"vm_restore_points\"}"),
        Some(1.0),
        "{m}"
    );
    assert!(
        sample(&m, "emgate_cache_bytes{rule=\"vm_restore_points\"}").unwrap() > 500.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "emgate_upstream_logons_total{result=\"ok\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "emgate_upstream_logons_total{result=\"failed\"}"),
        Some(0.0),
        "{m}"
    );
    // One logon (201); the entry point, the cache miss and the
    // pass-through (200).
    assert_eq!(
        sample(&m, "emgate_upstream_requests_total{status=\"201\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "emgate_upstream_requests_total{status=\"200\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "emgate_upstream_duration_seconds_count"),
        Some(4.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "emgate_upstream_session_valid"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "emgate_client_sessions"), Some(0.0), "{m}");
    assert!(
        !m.contains(&sim.restore_point_id(1)),
        "a raw path became a label"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_stays_within_its_byte_bound_when_filled() {
    let sim = start_sim(sim_config()).await;
    // An entry may take an eighth of the cache: 12 KiB holds any of the
    // simulator's entities with both representations and their kept heads.
    let gw = Gateway::start(&sim, &[("EMGATE_CACHE_MAX_BYTES", "96KiB")]);
    let http = Http::default();
    for i in 0..150 {
        let p = format!(
            "/api/restorePoints/{}/vmRestorePoints?format=Entity",
            sim.restore_point_id(i)
        );
        assert_eq!(http.get(&gw.url(&p), &[]).await.status, StatusCode::OK);
    }
    // moka evicts in its housekeeping; a few more requests let it run.
    let mut bytes = f64::MAX;
    for _ in 0..20 {
        let m = http.get(&gw.url("/metrics"), &[]).await.body;
        bytes = sample(&m, "emgate_cache_bytes{rule=\"vm_restore_points\"}").unwrap();
        let entries = sample(&m, "emgate_cache_entries{rule=\"vm_restore_points\"}").unwrap();
        if bytes <= 96.0 * 1024.0 && entries > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(bytes <= 96.0 * 1024.0, "cache holds {bytes} bytes");
    assert!(bytes > 16.0 * 1024.0, "cache unexpectedly empty: {bytes}");
}

/// A hit's metrics cost no allocation (issue 19): once a thread has
/// answered a route with a status, counting another of its answers
/// allocates nothing, and a scrape still adds up every thread's answers
/// into the counter and the histogram, as Prometheus reads them.
#[test]
fn counting_an_answer_allocates_nothing_and_a_scrape_adds_up_every_thread() {
    use emgate::ops::metrics;
    use std::time::Duration;
    // The exporter installed, as `serve` does.
    let Some(handle) = metrics::install() else {
        panic!("the recorder could not be installed");
    };
    let route = "/api/test/{id}/allocations";
    metrics::request(route, StatusCode::OK, Duration::from_micros(80));
    let counted = allocation_counter::measure(|| {
        for i in 0..10_000u64 {
            metrics::request(route, StatusCode::OK, Duration::from_micros(i % 400));
        }
    });
    assert_eq!(counted.count_total, 0, "{counted:?}");
    // Other threads, one of which has ended before the scrape.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| metrics::request(route, StatusCode::OK, Duration::from_millis(3)));
        }
    });
    metrics::request(route, StatusCode::BAD_REQUEST, Duration::from_secs(200));
    let text = metrics::render(&handle, &metrics::Snapshot::default());
    let of = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
    let ok = format!("emgate_requests_total{{route=\"{route}\",status=\"200\"}}");
    assert_eq!(of(&ok), 10_003.0);
    let bad = format!("emgate_requests_total{{route=\"{route}\",status=\"400\"}}");
    assert_eq!(of(&bad), 1.0);
    let bucket = |le: &str| {
        of(&format!(
            "emgate_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}}"
        ))
    };
    // 80 us and 0..400 us: 250 of each 400 at or under 0.00025 s (0 to 250 us).
    assert_eq!(bucket("0.0001"), 1.0 + 25.0 * 101.0);
    assert_eq!(bucket("0.00025"), 1.0 + 25.0 * 251.0);
    assert_eq!(bucket("0.0005"), 10_001.0);
    assert_eq!(bucket("0.005"), 10_003.0);
    assert_eq!(bucket("120"), 10_003.0);
    assert_eq!(bucket("+Inf"), 10_004.0);
    let count = format!("emgate_request_duration_seconds_count{{route=\"{route}\"}}");
    assert_eq!(of(&count), 10_004.0);
    // 80 us + 25 x (0 + 1 + ... + 399) us + 2 x 3 ms + 200 s.
    let sum = of(&format!(
        "emgate_request_duration_seconds_sum{{route=\"{route}\"}}"
    ));
    let expected = 80e-6 + 25.0 * (399.0 * 400.0 / 2.0) * 1e-6 + 6e-3 + 200.0;
    assert!((sum - expected).abs() < 1e-6, "{sum} vs {expected}");
    // One family each, declared once.
    for family in [
        "# TYPE emgate_requests_total counter",
        "# TYPE emgate_request_duration_seconds histogram",
    ] {
        assert_eq!(text.matches(family).count(), 1, "{text}");
    }
}
