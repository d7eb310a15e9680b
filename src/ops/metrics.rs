//! Prometheus metrics (see README, "Operations"), through the `metrics` facade and its
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
use serde::Serialize;

/// Seconds: from a cache hit (sub-millisecond) to EM's slowest queries.
const DURATION_BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often the exporter's histograms are drained between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process-wide recorder once and returns its handle (`None` if
/// another recorder was installed first, e.g. by an embedding program).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    &DURATION_BUCKETS,
                )
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            // The exporter's histograms keep every sample until they are
            // drained: by a scrape, or here (as its own `install` does), so a
            // gateway nobody scrapes does not grow by each EM request.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "emgate_config_reload_total",
        "Configuration reloads (SIGHUP, or a file emgate reads changed), by result: ok (all applied) or error (nothing applied)."
    );
    describe_counter!(
        "emgate_cache_requests_total",
        "Cache lookups, by rule and result (hit, miss, stale; in fleet mode also shared_hit: a local miss found in the shared tier, coalesced: answered by another replica's fetch)."
    );
    describe_counter!(
        "emgate_cache_collapsed_total",
        "Requests that shared an EM fetch another request started, by rule (uncached: no rule caches the route)."
    );
    describe_counter!(
        "emgate_cache_refreshes_total",
        "EM fetches of the cache, by rule and reason (miss, revalidate, ahead, warm: before anyone asked)."
    );
    describe_counter!(
        "emgate_cache_not_stored_total",
        "Answers served but not stored because they are larger than the per-entry bound, by rule."
    );
    describe_counter!(
        "emgate_log_lines_dropped_total",
        "Log lines dropped because stderr could not take them as fast as they came (the gateway never waits for its log)."
    );
    describe_counter!(
        "emgate_client_waits_total",
        "Client requests whose answer waited for EM, by reason (cold: no entry in the last hour; expired: its entry had expired or was evicted; stale_miss: past stale-while-revalidate, the client waited for the refresh; bypass: no rule caches the route, or an operator's no-cache). Compare with emgate_requests_total."
    );
    describe_counter!(
        "emgate_background_requests_total",
        "EM requests emgate started on its own account, by kind (refresh_ahead, prefetch, rewarm, prefetch_backlog: the first look's restore points) and result (ok, error, dropped: the background lane had no room)."
    );
    describe_gauge!(
        "emgate_background_in_flight",
        "Background EM requests running now (at most EMGATE_BACKGROUND_CONCURRENCY)."
    );
    describe_gauge!(
        "emgate_background_queued",
        "Background EM requests waiting for the background lane now."
    );
    describe_gauge!("emgate_cache_entries", "Cache entries, by rule.");
    describe_gauge!(
        "emgate_cache_bytes",
        Unit::Bytes,
        "Bytes held by the cache, by rule."
    );
    describe_counter!(
        "emgate_upstream_requests_total",
        "Requests to EM, by EM's status (or error, timeout, saturated)."
    );
    describe_histogram!(
        "emgate_upstream_duration_seconds",
        Unit::Seconds,
        "Time EM took to answer."
    );
    describe_counter!(
        "emgate_upstream_logons_total",
        "Logons to EM, by result (ok, failed, refused: EM's 401 to the logon)."
    );
    describe_counter!(
        "emgate_upstream_relogons_total",
        "Logons that replaced a session EM had ended."
    );
    describe_counter!(
        "emgate_upstream_session_checks_total",
        "EM 401s checked against the session's own resource, by result (alive: the 401 was the resource's own; gone)."
    );
    describe_gauge!(
        "emgate_upstream_logons_paused",
        "1 while logons pause after EM refused the gateway's credentials repeatedly (so the EM account is not locked)."
    );
    describe_gauge!(
        "emgate_upstream_session_valid",
        "1 while the gateway holds an EM session."
    );
    describe_gauge!(
        "emgate_client_sessions",
        "Gateway sessions of clients (drop-in logons)."
    );
    describe_gauge!(
        "emgate_tasks_pending",
        "EM tasks of clients (job starts, restores) this replica follows that have not ended."
    );
    describe_counter!(
        "emgate_upstream_writes_resent_total",
        "Writes sent to EM a second time because EM's session was gone (EM refused them before doing anything)."
    );
    describe_gauge!("emgate_connections", "Open client connections.");
    describe_gauge!(
        "emgate_upstream_memory_bytes",
        Unit::Bytes,
        "Bytes of EM answers and their conversion held now (bounded by EMGATE_UPSTREAM_MEMORY)."
    );
    describe_counter!(
        "emgate_connections_closed_total",
        "Client connections the gateway closed by its deadlines, by reason (no_request, idle)."
    );
    describe_gauge!(
        "emgate_shared_up",
        "Fleet mode: 1 while the shared tier (Redis/Valkey) answers, 0 while this replica goes on alone."
    );
    describe_counter!(
        "emgate_shared_operations_total",
        "Fleet mode: operations on the shared tier, by op and result (ok, error, timeout, skipped while the breaker is open)."
    );
    describe_gauge!(
        "emgate_fleet_members",
        "Fleet mode: live replicas at this replica's last heartbeat."
    );
    describe_counter!(
        "emgate_fleet_lease_takeovers_total",
        "Fleet mode: fetch leases this replica took over from a replica that stopped renewing them."
    );
    describe_counter!(
        "emgate_fleet_landed_evicted_total",
        "Fleet mode: entries (or failures) another replica stored that Redis evicted before this replica read them (each costs an EM fetch: Redis is too small for what the fleet stores)."
    );
}

/// Fleet mode: its counters exist from the start (at 0), so alerts and
/// dashboards see 0 rather than no data. Called once, before serving.
pub fn fleet_started() {
    metrics::counter!("emgate_fleet_lease_takeovers_total").absolute(0);
    metrics::counter!("emgate_fleet_landed_evicted_total").absolute(0);
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

/// `emgate_requests_total` and `emgate_request_duration_seconds`, kept
/// here rather than in the exporter's registry: they are counted on every
/// request, and the exporter's histogram takes a locked instruction and a
/// clock read per sample and allocates a block of samples every 64 (issue
/// 19's hit path takes no lock and makes no allocation for its metrics).
/// Each thread counts into its own [`Series`] with plain stores; a scrape
/// folds them (`requests::render`). Same names, labels, buckets and text as
/// the exporter wrote them.
mod requests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::fmt::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::DURATION_BUCKETS;

    const BUCKETS: usize = DURATION_BUCKETS.len();

    /// The bucket bounds in nanoseconds, for a comparison of integers.
    const BOUNDS: [u64; BUCKETS] = {
        let mut out = [0; BUCKETS];
        let mut i = 0;
        while i < BUCKETS {
            out[i] = (DURATION_BUCKETS[i] * 1e9) as u64;
            i += 1;
        }
        out
    };

    /// One route and status as one thread counts them: answers by
    /// duration bucket (the last past every bound) and the durations'
    /// sum. Only the thread that holds it writes it, with a load and a
    /// store (no locked instruction); a scrape may read a bucket one
    /// answer ahead of the sum, never a count that goes back.
    struct Series {
        route: &'static str,
        status: &'static str,
        buckets: [AtomicU64; BUCKETS + 1],
        nanos: AtomicU64,
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Every series ever made (a counter never goes back, so a thread's
    /// outlive it) and those whose thread ended, for the next thread that
    /// needs the same labels: their number stays bounded by the threads
    /// alive at once times the routes and statuses they answer.
    struct Registry {
        all: Vec<Arc<Series>>,
        free: Vec<Arc<Series>>,
    }

    static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
        all: Vec::new(),
        free: Vec::new(),
    });

    /// This thread's series; given back to the registry when it ends (the
    /// lock orders its last stores before the next holder's).
    struct Mine(Vec<Arc<Series>>);

    impl Drop for Mine {
        fn drop(&mut self) {
            crate::ops::locked(&REGISTRY).free.append(&mut self.0);
        }
    }

    thread_local! {
        static MINE: RefCell<Mine> = const { RefCell::new(Mine(Vec::new())) };
    }

    /// The series of these labels: a freed one, or a new one.
    fn series(route: &'static str, status: &'static str) -> Arc<Series> {
        let mut registry = crate::ops::locked(&REGISTRY);
        let freed = registry
            .free
            .iter()
            .position(|s| s.route == route && s.status == status);
        if let Some(i) = freed {
            return registry.free.swap_remove(i);
        }
        let made = Arc::new(Series {
            route,
            status,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            nanos: AtomicU64::new(0),
        });
        registry.all.push(made.clone());
        made
    }

    /// Counts one answer. Labels are compared by address first: routes
    /// are templates and statuses labels, each one `&'static str`.
    pub fn record(route: &'static str, status: &'static str, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS.iter().position(|&b| nanos <= b).unwrap_or(BUCKETS);
        let same = |a: &str, b: &str| std::ptr::eq(a, b) || a == b;
        // Not at all while the thread is being torn down.
        let _ = MINE.try_with(|mine| {
            let Ok(mut mine) = mine.try_borrow_mut() else {
                return;
            };
            let found = mine
                .0
                .iter()
                .position(|s| same(s.route, route) && same(s.status, status));
            let i = found.unwrap_or_else(|| {
                mine.0.push(series(route, status));
                mine.0.len() - 1
            });
            let s = &mine.0[i];
            add(&s.buckets[bucket], 1);
            add(&s.nanos, nanos);
        });
    }

    /// A label value as the exposition format writes it.
    fn label(out: &mut String, value: &str) {
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
    }

    /// Both families, folded over every thread's series, in the text the
    /// exporter writes (`_bucket` cumulative, `le="+Inf"`, `_sum` in seconds).
    pub fn render(out: &mut String) {
        let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let mut durations: BTreeMap<&str, ([u64; BUCKETS + 1], u64)> = BTreeMap::new();
        let all = crate::ops::locked(&REGISTRY).all.clone();
        for s in &all {
            let buckets: [u64; BUCKETS + 1] =
                std::array::from_fn(|i| s.buckets[i].load(Ordering::Relaxed));
            let n: u64 = buckets.iter().sum();
            *counts.entry((s.route, s.status)).or_default() += n;
            let (by_bucket, nanos) = durations.entry(s.route).or_default();
            for (sum, b) in by_bucket.iter_mut().zip(buckets) {
                *sum += b;
            }
            *nanos = nanos.wrapping_add(s.nanos.load(Ordering::Relaxed));
        }
        if counts.is_empty() {
            return;
        }
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(
            "# HELP emgate_requests_total Requests served, by route template and status.\n\
             # TYPE emgate_requests_total counter\n",
        );
        for ((route, status), n) in &counts {
            out.push_str("emgate_requests_total{route=\"");
            label(out, route);
            let _ = writeln!(out, "\",status=\"{status}\"}} {n}");
        }
        out.push_str(
            "\n# HELP emgate_request_duration_seconds Time to answer a request, by route template.\n\
             # TYPE emgate_request_duration_seconds histogram\n",
        );
        for (route, (by_bucket, nanos)) in &durations {
            let mut route_label = String::new();
            label(&mut route_label, route);
            let mut cumulative = 0;
            for (i, n) in by_bucket.iter().enumerate() {
                cumulative += n;
                let _ = match DURATION_BUCKETS.get(i) {
                    Some(le) => writeln!(
                        out,
                        "emgate_request_duration_seconds_bucket{{route=\"{route_label}\",le=\"{le}\"}} {cumulative}"
                    ),
                    None => writeln!(
                        out,
                        "emgate_request_duration_seconds_bucket{{route=\"{route_label}\",le=\"+Inf\"}} {cumulative}"
                    ),
                };
            }
            let seconds = *nanos as f64 / 1e9;
            let _ = writeln!(
                out,
                "emgate_request_duration_seconds_sum{{route=\"{route_label}\"}} {seconds}\n\
                 emgate_request_duration_seconds_count{{route=\"{route_label}\"}} {cumulative}"
            );
        }
    }
}

/// Records one answered request (`emgate_requests_total`,
/// `emgate_request_duration_seconds`): no lock, no allocation once the
/// thread has answered this route with this status before.
pub fn request(route: &'static str, status: StatusCode, elapsed: Duration) {
    requests::record(route, status_label(status), elapsed);
}

/// Records one request to EM: its status, or `error`/`timeout`.
pub fn upstream(status: &'static str, elapsed: Duration) {
    metrics::counter!("emgate_upstream_requests_total", "status" => status).increment(1);
    metrics::histogram!("emgate_upstream_duration_seconds").record(elapsed.as_secs_f64());
}

/// A configuration reload ended (`ok` or not); both series exist from
/// the start, at 0.
pub fn config_reload(ok: Option<bool>) {
    let ok_series = metrics::counter!("emgate_config_reload_total", "result" => "ok");
    let error_series = metrics::counter!("emgate_config_reload_total", "result" => "error");
    match ok {
        Some(true) => ok_series.increment(1),
        Some(false) => error_series.increment(1),
        None => {
            ok_series.absolute(0);
            error_series.absolute(0);
        }
    }
}

/// A request to EM that found no place within the queue wait.
pub fn upstream_saturated() {
    metrics::counter!("emgate_upstream_requests_total", "status" => "saturated").increment(1);
}

/// A client connection opened (`+1`) or ended (`-1`).
pub fn connections(delta: f64) {
    metrics::gauge!("emgate_connections").increment(delta);
}

/// A client connection closed by one of its deadlines.
pub fn connection_closed(reason: &'static str) {
    metrics::counter!("emgate_connections_closed_total", "reason" => reason).increment(1);
}

/// Why the cache asked EM (the `reason` label of `emgate_cache_refreshes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Nothing usable was stored.
    Miss,
    /// A stale entry was being served (stale-while-revalidate, or a
    /// stale-if-error wait).
    Revalidate,
    /// Ahead of the expiry of an entry read during its TTL.
    Ahead,
    /// Before anyone asked (prefetch, rewarm).
    Warm,
}

impl Refresh {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Refresh::Miss => "miss",
            Refresh::Revalidate => "revalidate",
            Refresh::Ahead => "ahead",
            Refresh::Warm => "warm",
        }
    }
}

/// The counters of one cache rule at one moment: what the cache counts
/// (`cache::RuleStats` keeps them as atomics), `/metrics` exports and the
/// status page shows (`/admin/status?format=json` under these very names),
/// so a new counter is a field here and the line that exports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RuleCounters {
    /// Requests answered from a fresh entry.
    pub hits: u64,
    /// Requests answered by a fetch.
    pub misses: u64,
    /// Requests answered from a stale entry.
    pub stale: u64,
    /// Requests that shared a fetch another request started.
    pub collapsed: u64,
    /// Requests a local miss answered from the fleet's shared tier.
    pub shared_hits: u64,
    /// Requests answered after waiting for another replica's fetch.
    pub coalesced: u64,
    /// EM fetches because nothing usable was stored ([`Refresh::Miss`]).
    pub refreshes_miss: u64,
    /// EM fetches refreshing a stale entry ([`Refresh::Revalidate`]).
    pub refreshes_revalidate: u64,
    /// EM fetches ahead of expiry ([`Refresh::Ahead`]).
    pub refreshes_ahead: u64,
    /// EM fetches before anyone asked (prefetch, rewarm).
    pub refreshes_warm: u64,
    /// Answers served but not stored: larger than the per-entry bound.
    pub not_stored: u64,
    /// Entries stored now.
    pub entries: u64,
    /// Bytes stored now.
    pub bytes: u64,
}

impl RuleCounters {
    /// The EM fetches for one reason.
    pub fn refreshes(&self, why: Refresh) -> u64 {
        match why {
            Refresh::Miss => self.refreshes_miss,
            Refresh::Revalidate => self.refreshes_revalidate,
            Refresh::Ahead => self.refreshes_ahead,
            Refresh::Warm => self.refreshes_warm,
        }
    }

    /// Answers that did not wait for EM, of all answers (`None` before any).
    pub fn hit_ratio(&self) -> Option<f64> {
        let answered = self.hits + self.misses + self.stale + self.shared_hits + self.coalesced;
        (answered > 0).then(|| (answered - self.misses) as f64 / answered as f64)
    }
}

/// Work emgate starts on its own account, in the background lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A refresh of an entry read during its TTL, before it expires.
    RefreshAhead = 0,
    /// The `vmRestorePoints` of a new restore point, before anyone asks.
    Prefetch = 1,
    /// A hot key of before a restart (or a Redis that came back empty).
    Rewarm = 2,
    /// The `vmRestorePoints` of a restore point the first look after a
    /// start finds (made in the `EMGATE_PREFETCH_WINDOW` before it): a
    /// backlog, not news, so it waits for the rewarm at start, then its
    /// turn with refreshes, while new points go first.
    Backlog = 3,
}

impl Work {
    /// How many kinds there are.
    pub const COUNT: usize = 4;
    /// Every kind, in label order.
    pub const ALL: [Work; Work::COUNT] = [
        Work::RefreshAhead,
        Work::Prefetch,
        Work::Rewarm,
        Work::Backlog,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            Work::RefreshAhead => "refresh_ahead",
            Work::Prefetch => "prefetch",
            Work::Rewarm => "rewarm",
            Work::Backlog => "prefetch_backlog",
        }
    }
}

/// The background lane's counters, by [`Work`] where they count work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LaneCounters {
    /// Ended with EM's answer.
    pub ok: [u64; Work::COUNT],
    /// Ended in an error (EM's 5xx, a timeout, no connection).
    pub failed: [u64; Work::COUNT],
    /// Never sent: the lane's queue was full, or no client place came free.
    pub dropped: [u64; Work::COUNT],
    /// Waiting for a place now.
    pub queued: u64,
    /// Running now.
    pub running: u64,
    /// The most that ever ran at once.
    pub peak: u64,
}

/// Why a client's request waited for EM (`emgate_client_waits_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The key had no entry in the last hour.
    Cold,
    /// Its entry, stored within the last hour, had outlived every window
    /// (or was evicted for room).
    Expired,
    /// Its entry was past stale-while-revalidate: the client waited for the
    /// refresh (at most the stale wait).
    StaleMiss,
    /// No rule caches the route, or an operator asked for a fresh answer.
    Bypass,
}

/// Client requests that waited for EM, by [`Wait`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Waits {
    pub cold: u64,
    pub expired: u64,
    pub stale_miss: u64,
    pub bypass: u64,
}

impl Waits {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.cold + self.expired + self.stale_miss + self.bypass
    }

    /// Each reason and its count, in label order.
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("cold", self.cold),
            ("expired", self.expired),
            ("stale_miss", self.stale_miss),
            ("bypass", self.bypass),
        ]
    }
}

#[derive(Debug, Clone, Default)]
pub struct RuleSnapshot {
    /// The rule's name (a label: rule names are few, from the settings).
    pub name: String,
    /// Its counters.
    pub counters: RuleCounters,
}

/// The pooled EM session's counters, read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct SessionSnapshot {
    /// Successful logons.
    pub logons_ok: u64,
    /// Failed logons other than refusals.
    pub logons_failed: u64,
    /// Logons EM refused (401).
    pub logons_refused: u64,
    /// Logons that replaced an ended session.
    pub relogons: u64,
    /// 401s found to be the resource's own.
    pub checks_alive: u64,
    /// 401s found to mean the session had ended.
    pub checks_gone: u64,
    /// Whether a session is held.
    pub valid: bool,
    /// Whether logons pause after refusals.
    pub paused: bool,
}

/// Values read off other modules at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Each cache rule.
    pub rules: Vec<RuleSnapshot>,
    /// Requests of uncached routes that shared another's EM fetch.
    pub collapsed_uncached: u64,
    /// The EM session.
    pub session: SessionSnapshot,
    /// Client sessions.
    pub client_sessions: u64,
    /// EM tasks followed here that have not ended.
    pub tasks_pending: u64,
    /// Writes sent again after EM's 401 for a session that was gone.
    pub writes_resent: u64,
    /// Bytes of EM answers and conversions held now.
    pub upstream_memory: u64,
    /// Fleet mode: whether the shared tier answers (`None` outside fleet mode).
    pub shared_up: Option<bool>,
    /// Client requests that waited for EM.
    pub waits: Waits,
    /// The background lane.
    pub background: LaneCounters,
}

/// The exposition text, after copying in `snapshot`.
pub fn render(handle: &PrometheusHandle, s: &Snapshot) -> String {
    use metrics::{counter, gauge};
    for r in &s.rules {
        let rule = r.name.clone();
        let c = &r.counters;
        for (result, value) in [
            ("hit", c.hits),
            ("miss", c.misses),
            ("stale", c.stale),
            ("shared_hit", c.shared_hits),
            ("coalesced", c.coalesced),
        ] {
            counter!("emgate_cache_requests_total", "rule" => rule.clone(), "result" => result)
                .absolute(value);
        }
        counter!("emgate_cache_collapsed_total", "rule" => rule.clone()).absolute(c.collapsed);
        for why in [
            Refresh::Miss,
            Refresh::Revalidate,
            Refresh::Ahead,
            Refresh::Warm,
        ] {
            counter!("emgate_cache_refreshes_total", "rule" => rule.clone(), "reason" => why.label())
                .absolute(c.refreshes(why));
        }
        counter!("emgate_cache_not_stored_total", "rule" => rule.clone()).absolute(c.not_stored);
        gauge!("emgate_cache_entries", "rule" => rule.clone()).set(c.entries as f64);
        gauge!("emgate_cache_bytes", "rule" => rule).set(c.bytes as f64);
    }
    counter!("emgate_cache_collapsed_total", "rule" => "uncached").absolute(s.collapsed_uncached);
    for (reason, n) in s.waits.by_reason() {
        counter!("emgate_client_waits_total", "reason" => reason).absolute(n);
    }
    let lane = &s.background;
    for work in Work::ALL {
        let i = work as usize;
        for (result, n) in [
            ("ok", lane.ok[i]),
            ("error", lane.failed[i]),
            ("dropped", lane.dropped[i]),
        ] {
            counter!("emgate_background_requests_total", "kind" => work.label(), "result" => result)
                .absolute(n);
        }
    }
    gauge!("emgate_background_in_flight").set(lane.running as f64);
    gauge!("emgate_background_queued").set(lane.queued as f64);
    let e = &s.session;
    for (result, value) in [
        ("ok", e.logons_ok),
        ("failed", e.logons_failed),
        ("refused", e.logons_refused),
    ] {
        counter!("emgate_upstream_logons_total", "result" => result).absolute(value);
    }
    counter!("emgate_upstream_relogons_total").absolute(e.relogons);
    for (result, value) in [("alive", e.checks_alive), ("gone", e.checks_gone)] {
        counter!("emgate_upstream_session_checks_total", "result" => result).absolute(value);
    }
    gauge!("emgate_upstream_logons_paused").set(if e.paused { 1.0 } else { 0.0 });
    gauge!("emgate_upstream_session_valid").set(if e.valid { 1.0 } else { 0.0 });
    gauge!("emgate_client_sessions").set(s.client_sessions as f64);
    gauge!("emgate_tasks_pending").set(s.tasks_pending as f64);
    counter!("emgate_upstream_writes_resent_total").absolute(s.writes_resent);
    gauge!("emgate_upstream_memory_bytes").set(s.upstream_memory as f64);
    counter!("emgate_log_lines_dropped_total").absolute(crate::ops::logging::dropped_lines());
    if let Some(up) = s.shared_up {
        gauge!("emgate_shared_up").set(if up { 1.0 } else { 0.0 });
    }
    let mut text = handle.render();
    requests::render(&mut text);
    text
}
