//! Prometheus metrics (CONTRACT §7), through the `metrics` facade and its
//! Prometheus exporter.
//!
//! Label values are bounded: a route is a template (`/api/restorePoints/{id}/vmRestorePoints`),
//! never a raw path; statuses are numbers. Counters kept elsewhere as plain
//! atomics (the cache's, the session pool's) are copied in at scrape time, so
//! those modules know nothing of metrics.

use std::sync::OnceLock;
use std::time::Duration;

use http::StatusCode;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Seconds: from a cache hit (sub-millisecond) to EM's slowest queries.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle (`None` if
/// another recorder was installed first, e.g. by an embedding program).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    DURATION_BUCKETS,
                )
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        "emgate_requests_total",
        "Requests served, by route template and status."
    );
    metrics::describe_histogram!(
        "emgate_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer a request, by route template."
    );
    metrics::describe_counter!(
        "emgate_cache_requests_total",
        "vmRestorePoints cache lookups, by result (hit, miss, stale)."
    );
    metrics::describe_gauge!(
        "emgate_cache_entries",
        "Entries in the vmRestorePoints cache."
    );
    metrics::describe_gauge!(
        "emgate_cache_bytes",
        metrics::Unit::Bytes,
        "Bytes held by the vmRestorePoints cache."
    );
    metrics::describe_counter!(
        "emgate_upstream_requests_total",
        "Requests to EM, by EM's status (or error, timeout)."
    );
    metrics::describe_histogram!(
        "emgate_upstream_duration_seconds",
        metrics::Unit::Seconds,
        "Time EM took to answer."
    );
    metrics::describe_counter!(
        "emgate_upstream_logons_total",
        "Logons to EM, by result (ok, failed)."
    );
    metrics::describe_gauge!(
        "emgate_upstream_session_valid",
        "1 while the gateway holds an EM session."
    );
    metrics::describe_gauge!(
        "emgate_client_sessions",
        "Gateway sessions of clients (drop-in logons)."
    );
}

/// A status as a label without allocating for the common ones.
pub fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        201 => "201",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// Records one answered request.
pub fn request(route: &'static str, status: StatusCode, elapsed: Duration) {
    metrics::counter!("emgate_requests_total", "route" => route, "status" => status_label(status))
        .increment(1);
    metrics::histogram!("emgate_request_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
}

/// Records one request to EM: its status, or `error`/`timeout`.
pub fn upstream(status: &'static str, elapsed: Duration) {
    metrics::counter!("emgate_upstream_requests_total", "status" => status).increment(1);
    metrics::histogram!("emgate_upstream_duration_seconds").record(elapsed.as_secs_f64());
}

/// Values read off other modules at scrape time.
pub struct Snapshot {
    /// Cache hits, misses, stale serves.
    pub cache_hits: u64,
    /// Cache misses.
    pub cache_misses: u64,
    /// Stale serves.
    pub cache_stale: u64,
    /// Entries.
    pub cache_entries: u64,
    /// Bytes.
    pub cache_bytes: u64,
    /// Successful logons.
    pub logons_ok: u64,
    /// Failed logons.
    pub logons_failed: u64,
    /// Whether an EM session is held.
    pub session_valid: bool,
    /// Client sessions.
    pub client_sessions: u64,
}

/// The exposition text, after copying in `snapshot`.
pub fn render(handle: &PrometheusHandle, s: &Snapshot) -> String {
    for (result, value) in [
        ("hit", s.cache_hits),
        ("miss", s.cache_misses),
        ("stale", s.cache_stale),
    ] {
        metrics::counter!("emgate_cache_requests_total", "result" => result).absolute(value);
    }
    for (result, value) in [("ok", s.logons_ok), ("failed", s.logons_failed)] {
        metrics::counter!("emgate_upstream_logons_total", "result" => result).absolute(value);
    }
    metrics::gauge!("emgate_cache_entries").set(s.cache_entries as f64);
    metrics::gauge!("emgate_cache_bytes").set(s.cache_bytes as f64);
    metrics::gauge!("emgate_upstream_session_valid").set(if s.session_valid { 1.0 } else { 0.0 });
    metrics::gauge!("emgate_client_sessions").set(s.client_sessions as f64);
    handle.render()
}
