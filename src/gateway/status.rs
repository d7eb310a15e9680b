//! The status page (see README, "Status page"): `GET /admin/status` for a person,
//! `GET /admin/status.json` for scripts, the same facts in both.
//!
//! One page, no asset from anywhere, no build step: the HTML, its style and
//! its script are written here; charts are inline SVG drawn here from the
//! in-memory history ([`crate::ops::history`]), told apart by labels and
//! dash patterns as well as colour. The script only refreshes `<main>` every
//! few seconds (from the page's own relative URL, so a path-rewriting
//! ingress is fine, and the scroll position stays) and sends purges after a
//! confirmation.
//!
//! Invariants: nothing here holds a secret (settings print secrets as
//! `***`; EM and client session tokens never reach this module); the page
//! is sent with a Content-Security-Policy that allows only its own hashed
//! style and script, `X-Frame-Options: DENY` and `Cache-Control: no-store`.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::Response;
use serde::Serialize;

use crate::em::session::SessionState;
use crate::gateway::app::App;
use crate::gateway::reload::LastReload;
use crate::gateway::response::Body;
use crate::ops::history::{self, quantile_ms, Slot, SLOTS, SLOT_SECONDS};
use crate::ops::metrics::RuleCounters;

/// Keys shown per rule.
const BUSIEST_KEYS: usize = 8;
/// Clients shown.
const BUSIEST_CLIENTS: usize = 10;
/// Minutes the EM summary looks back.
const RECENT_MINUTES: u64 = 15;

/// Everything the page shows.
#[derive(Debug, Serialize)]
pub struct Status {
    /// emgate's version.
    pub version: &'static str,
    /// When this process started (RFC 3339).
    pub started_at: String,
    /// Seconds it has run.
    pub uptime_s: u64,
    /// The EM session and EM's health.
    pub em: Em,
    /// The cache.
    pub cache: CacheFacts,
    /// Work before anyone asks, and what it spared.
    pub warm: WarmFacts,
    /// Fleet mode, when on.
    pub fleet: Option<FleetFacts>,
    /// Clients.
    pub clients: Clients,
    /// The last errors, newest first.
    pub errors: Vec<ErrorFact>,
    /// The last hour, in 10-second slots.
    pub series: Series,
    /// The configuration's generation and the last reload.
    pub config: ConfigFacts,
    /// The effective settings as commented TOML, secrets as `***` (as
    /// last read: see `config.last_reload.kept`).
    pub settings: String,
}

/// The configuration in use (README, "Changes while running").
#[derive(Debug, Serialize)]
pub struct ConfigFacts {
    /// Reloads applied since the start.
    pub generation: u64,
    /// The last reload, if any.
    pub last_reload: Option<LastReload>,
    /// Fleet mode: each live member's generation, this replica first.
    pub members: Vec<MemberConfig>,
    /// Fleet mode: whether every live member runs the same settings and
    /// files as this one (unknown while no member could be read).
    pub converged: Option<bool>,
}

/// A fleet member's configuration generation.
#[derive(Debug, Serialize)]
pub struct MemberConfig {
    /// Its id in the fleet.
    pub member: String,
    /// Its generation.
    pub generation: u64,
    /// Whether it runs the same settings and files as this replica.
    pub same: bool,
}

/// The EM session and EM's health.
#[derive(Debug, Serialize)]
pub struct Em {
    /// `valid`, `logging_on` or `failing`.
    pub state: &'static str,
    /// Since when the session is held (RFC 3339), when valid.
    pub since: Option<String>,
    /// Why logons fail, when failing.
    pub reason: Option<String>,
    /// Seconds to the next attempt, when failing.
    pub retry_in_s: Option<u64>,
    /// Whether logons pause after refusals.
    pub logons_paused: bool,
    /// The last logon failure (kept after recovery).
    pub last_error: Option<String>,
    /// When it happened (RFC 3339).
    pub last_error_at: Option<String>,
    /// Whether the session is the fleet's.
    pub shared: bool,
    /// Logons that worked.
    pub logons_ok: u64,
    /// Logons that failed (refusals included).
    pub logons_failed: u64,
    /// Logons EM refused.
    pub logons_refused: u64,
    /// Logons that replaced a session EM had ended.
    pub relogons: u64,
    /// EM 401s that were a resource's own.
    pub checks_alive: u64,
    /// The API versions EM listed at start.
    pub versions: Vec<String>,
    /// EM requests in the last minutes.
    pub requests: u64,
    /// Of those, failed.
    pub errors: u64,
    /// Median EM latency (ms, bucket bound) in the last minutes.
    pub latency_p50_ms: Option<u64>,
    /// 99th percentile.
    pub latency_p99_ms: Option<u64>,
    /// The window those cover.
    pub window_minutes: u64,
    /// EM's base URL.
    pub url: String,
}

/// The cache.
#[derive(Debug, Serialize)]
pub struct CacheFacts {
    /// Entries, all rules.
    pub entries: u64,
    /// Bytes, all rules.
    pub bytes: u64,
    /// The bound.
    pub max_bytes: u64,
    /// Each rule.
    pub rules: Vec<RuleFacts>,
    /// Reads of uncached routes that shared another's EM request.
    pub collapsed_uncached: u64,
}

/// Work before anyone asks (README, "Warm"), and what it spared.
#[derive(Debug, Serialize)]
pub struct WarmFacts {
    /// Client requests that waited for EM, by why, since start.
    pub client_waits: crate::ops::metrics::Waits,
    /// Reads in the last hour (answered by the cache, by EM for it, or
    /// by EM for a route no rule caches).
    pub reads_last_hour: u64,
    /// Of those, how many waited for EM.
    pub waited_last_hour: u64,
    /// Their share.
    pub waited_share: Option<f64>,
    /// The background lane (by kind: refresh_ahead, prefetch, rewarm, prefetch_backlog).
    pub lane: crate::ops::metrics::LaneCounters,
    /// Its bounds (the fleet's, in fleet mode).
    pub lane_concurrency: usize,
    /// Requests per second (0: none).
    pub lane_rate: u32,
    /// Whether new restore points are prefetched.
    pub prefetch: bool,
    /// Whether hot keys survive a restart.
    pub warm_start: bool,
}

/// One rule.
#[derive(Debug, Serialize)]
pub struct RuleFacts {
    /// Its name.
    pub name: String,
    /// Its template.
    pub path: String,
    /// TTL, seconds.
    pub ttl_s: u64,
    /// Stale-while-revalidate, seconds.
    pub stale_while_revalidate_s: u64,
    /// Stale-if-error, seconds.
    pub stale_if_error_s: u64,
    /// Its counters (flattened: `hits`, `misses`, `refreshes_miss`, ...).
    #[serde(flatten)]
    pub counters: RuleCounters,
    /// Share of answers that did not wait for EM.
    pub hit_ratio: Option<f64>,
    /// The busiest keys.
    pub busiest: Vec<KeyFacts>,
}

/// One cached key.
#[derive(Debug, Serialize)]
pub struct KeyFacts {
    /// The key (EM path and normalised query).
    pub key: String,
    /// Requests it answered from the cache.
    pub hits: u64,
    /// Seconds since EM gave it.
    pub age_s: u64,
}

/// Fleet mode.
#[derive(Debug, Serialize)]
pub struct FleetFacts {
    /// `up` or `down`.
    pub shared: &'static str,
    /// Live members at the last heartbeat.
    pub members: u64,
    /// Leases taken over from replicas that died.
    pub lease_takeovers: u64,
    /// The key prefix.
    pub prefix: String,
}

/// Clients.
#[derive(Debug, Serialize)]
pub struct Clients {
    /// Gateway sessions this replica knows.
    pub sessions: u64,
    /// The busiest, by requests.
    pub busiest: Vec<ClientFacts>,
    /// Requests refused for their rate (the busiest clients').
    pub rate_limited: u64,
    /// EM tasks this replica follows that have not ended, by client.
    pub pending_tasks: Vec<PendingTasks>,
}

/// One client's pending EM tasks.
#[derive(Debug, Serialize)]
pub struct PendingTasks {
    /// The client.
    pub name: String,
    /// How many.
    pub count: usize,
    /// Seconds the oldest has been pending.
    pub oldest_s: u64,
}

/// One client.
#[derive(Debug, Serialize)]
pub struct ClientFacts {
    /// Its name (anonymous callers: `~` and the name they gave).
    pub name: String,
    /// Requests.
    pub requests: u64,
    /// Error answers (4xx/5xx but 429).
    pub errors: u64,
    /// 429s.
    pub rate_limited: u64,
}

/// One recent error.
#[derive(Debug, Serialize)]
pub struct ErrorFact {
    /// When (RFC 3339).
    pub at: String,
    /// Route template.
    pub route: String,
    /// Status.
    pub status: u16,
    /// Request id.
    pub request_id: String,
    /// What the client was told.
    pub message: String,
}

/// The last hour.
#[derive(Debug, Serialize)]
pub struct Series {
    /// Seconds per point.
    pub slot_seconds: u64,
    /// Requests per second answered from a fresh entry.
    pub hit: Vec<f64>,
    /// ...by an EM fetch.
    pub miss: Vec<f64>,
    /// ...from a stale entry.
    pub stale: Vec<f64>,
    /// ...by anything else (uncached routes, probes).
    pub other: Vec<f64>,
    /// EM latency, median (ms), per point.
    pub em_p50_ms: Vec<Option<u64>>,
    /// EM latency, 99th percentile (ms), per point.
    pub em_p99_ms: Vec<Option<u64>>,
    /// Share of cached-route answers not waiting for EM, per point.
    pub hit_ratio: Vec<Option<f64>>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Gathers the facts.
pub async fn facts(app: &App) -> Status {
    // moka's counts trail its inserts until its housekeeping runs.
    app.reads.cache.settle().await;
    let h = history::global();
    let snapshot = metrics_snapshot(app);
    let slots = h.slots();
    let recent: Vec<&Slot> = slots
        .iter()
        .rev()
        .take((RECENT_MINUTES * 60 / SLOT_SECONDS) as usize)
        .collect();
    let mut latency = [0u64; 15];
    for s in &recent {
        for (a, b) in latency.iter_mut().zip(s.em_latency.iter()) {
            *a += b;
        }
    }
    let (state, since, reason, retry_in_s, paused) = match app.pool.state() {
        SessionState::Valid { since } => ("valid", Some(rfc3339(since)), None, None, false),
        SessionState::LoggingOn => ("logging_on", None, None, None, false),
        SessionState::Failing {
            reason,
            retry_in,
            paused,
        } => (
            "failing",
            None,
            Some(reason),
            Some(retry_in.as_secs()),
            paused,
        ),
    };
    let s = &snapshot.session;
    let last = app.pool.last_failure();
    let em = Em {
        state,
        since,
        reason,
        retry_in_s,
        logons_paused: paused,
        last_error_at: last.as_ref().map(|(at, _)| rfc3339(*at)),
        last_error: last.map(|(_, why)| why),
        shared: app.pool.is_shared(),
        logons_ok: s.logons_ok,
        logons_failed: s.logons_failed + s.logons_refused,
        logons_refused: s.logons_refused,
        relogons: s.relogons,
        checks_alive: s.checks_alive,
        versions: app
            .em_versions
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default(),
        requests: recent.iter().map(|s| s.em).sum(),
        errors: recent.iter().map(|s| s.em_errors).sum(),
        latency_p50_ms: quantile_ms(&latency, 0.5),
        latency_p99_ms: quantile_ms(&latency, 0.99),
        window_minutes: RECENT_MINUTES,
        url: app.pool.upstream().base_url().to_string(),
    };
    // The busiest keys of each rule, from one pass over the entries.
    let per_rule: Vec<Vec<KeyFacts>> = app
        .reads
        .cache
        .busiest(app.reads.rules.load().all().len(), BUSIEST_KEYS)
        .into_iter()
        .map(|kept| {
            kept.into_iter()
                .map(|(key, entry)| KeyFacts {
                    key: key.as_str().to_string(),
                    hits: entry.hits(),
                    age_s: entry.age_secs(),
                })
                .collect()
        })
        .collect();
    let rules = app.reads.rules.load();
    let rules = rules
        .all()
        .iter()
        .zip(snapshot.rules.iter())
        .zip(per_rule)
        .map(|((rule, r), mut keys)| {
            keys.sort_by(|a, b| b.hits.cmp(&a.hits).then(a.key.cmp(&b.key)));
            RuleFacts {
                name: rule.name.clone(),
                path: rule.template.to_string(),
                ttl_s: rule.policy.ttl.as_secs(),
                stale_while_revalidate_s: rule.policy.stale_while_revalidate.as_secs(),
                stale_if_error_s: rule.policy.stale_if_error.as_secs(),
                counters: r.counters,
                hit_ratio: r.counters.hit_ratio(),
                busiest: keys,
            }
        })
        .collect();
    let cache = CacheFacts {
        entries: app.reads.cache.entry_count(),
        bytes: app.reads.cache.weighted_size(),
        max_bytes: app.settings.cache.max_bytes,
        rules,
        collapsed_uncached: snapshot.collapsed_uncached,
    };
    let (reads, waited) = crate::ops::history::global()
        .slots()
        .iter()
        .fold((0, 0), |(r, w), s| {
            (r + s.hit + s.miss + s.stale + s.bypassed, w + s.waited)
        });
    let warm = WarmFacts {
        client_waits: snapshot.waits,
        reads_last_hour: reads,
        waited_last_hour: waited,
        waited_share: (reads > 0).then(|| waited as f64 / reads as f64),
        lane: snapshot.background,
        lane_concurrency: app.settings.upstream.background_concurrency,
        lane_rate: app.settings.upstream.background_rate,
        prefetch: app.settings.warm.prefetch,
        warm_start: app.settings.warm.state_dir.is_some(),
    };
    let fleet = app.fleet.as_ref().map(|f| FleetFacts {
        shared: if f.is_up() { "up" } else { "down" },
        members: f.members(),
        lease_takeovers: f.takeovers(),
        prefix: app
            .settings
            .shared
            .as_ref()
            .map(|s| s.prefix.clone())
            .unwrap_or_default(),
    });
    let members: Vec<MemberConfig> = match &app.fleet {
        Some(f) => {
            let all = f.config_generations().await.unwrap_or_default();
            // This replica's own tag, as the fleet has it.
            let mine = all
                .iter()
                .find(|(m, _, _)| m == f.member())
                .map(|(_, _, t)| t.clone());
            all.into_iter()
                .map(|(member, generation, tag)| MemberConfig {
                    member,
                    generation,
                    same: Some(&tag) == mine.as_ref(),
                })
                .collect()
        }
        None => Vec::new(),
    };
    let config = ConfigFacts {
        generation: app.reload.generation(),
        last_reload: app.reload.last(),
        // Unknown until this replica's own entry could be read.
        converged: app.fleet.as_ref().and_then(|f| {
            members
                .iter()
                .any(|m| m.member == f.member())
                .then(|| members.iter().all(|m| m.same))
        }),
        members,
    };
    let busiest: Vec<ClientFacts> = h
        .clients(BUSIEST_CLIENTS)
        .into_iter()
        .map(|(name, c)| ClientFacts {
            name,
            requests: c.requests,
            errors: c.errors,
            rate_limited: c.limited,
        })
        .collect();
    let clients = Clients {
        sessions: snapshot.client_sessions,
        rate_limited: busiest.iter().map(|c| c.rate_limited).sum(),
        busiest,
        pending_tasks: app
            .tasks
            .pending()
            .into_iter()
            .map(|p| PendingTasks {
                name: p.owner,
                count: p.count,
                oldest_s: p.oldest.as_secs(),
            })
            .collect(),
    };
    let errors = h
        .errors()
        .into_iter()
        .map(|e| ErrorFact {
            at: rfc3339(e.at),
            route: e.route,
            status: e.status,
            request_id: e.request_id,
            message: e.message,
        })
        .collect();
    let per_s = |n: u64| n as f64 / SLOT_SECONDS as f64;
    let series = Series {
        slot_seconds: SLOT_SECONDS,
        hit: slots.iter().map(|s| per_s(s.hit)).collect(),
        miss: slots.iter().map(|s| per_s(s.miss)).collect(),
        stale: slots.iter().map(|s| per_s(s.stale)).collect(),
        other: slots.iter().map(|s| per_s(s.other)).collect(),
        em_p50_ms: slots
            .iter()
            .map(|s| quantile_ms(&s.em_latency, 0.5))
            .collect(),
        em_p99_ms: slots
            .iter()
            .map(|s| quantile_ms(&s.em_latency, 0.99))
            .collect(),
        hit_ratio: slots
            .iter()
            .map(|s| {
                let all = s.hit + s.miss + s.stale;
                (all > 0).then(|| (s.hit + s.stale) as f64 / all as f64)
            })
            .collect(),
    };
    Status {
        version: env!("CARGO_PKG_VERSION"),
        started_at: rfc3339(h.started_at()),
        uptime_s: h.uptime().as_secs(),
        em,
        cache,
        warm,
        fleet,
        clients,
        errors,
        series,
        config,
        settings: app.reload.settings().render_effective(),
    }
}

/// `GET /admin/status.json`.
pub fn json(status: &Status) -> Response<Body> {
    let body = serde_json::to_vec_pretty(status).unwrap_or_default();
    let mut r = Response::new(Body::new(bytes::Bytes::from(body)));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, crate::gateway::render::JSON);
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// `GET /admin/status`.
pub fn html(status: &Status) -> Response<Body> {
    let mut r = Response::new(Body::new(bytes::Bytes::from(page(status))));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if let Ok(v) = HeaderValue::from_str(csp()) {
        h.insert("content-security-policy", v);
    }
    r
}

/// Only the page's own style and script (by hash), fetches to itself.
fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = |s: &str| {
            base64::engine::general_purpose::STANDARD.encode(crate::digest::sha256(s.as_bytes()))
        };
        format!(
            "default-src 'none'; style-src 'sha256-{}'; script-src 'sha256-{}'; \
             connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            hash(STYLE),
            hash(SCRIPT)
        )
    })
}

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header{background:#20313b;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0}
main{padding:0 20px 40px;max-width:1200px}
section{background:#fff;border:1px solid #ddd;border-radius:4px;margin:16px 0;padding:8px 16px}
h2{font-size:16px;margin:8px 0}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eee;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.state{font-weight:bold;padding:1px 8px;border-radius:3px;border:2px solid;background:#fff}
.ok{color:#0a5d1a;border-color:#0a5d1a}.bad{color:#a4000f;border-color:#a4000f}.warn{color:#7a4a00;border-color:#7a4a00}
.key{font-family:ui-monospace,monospace;word-break:break-all}
.charts{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0}figcaption{font-weight:bold;margin:4px 0}
svg text{font:11px system-ui,sans-serif}
button{font:inherit;padding:1px 8px;cursor:pointer;white-space:nowrap}
pre{overflow:auto;background:#f4f4f4;padding:8px;font-size:12px}
.muted{color:#555}
"#;

const SCRIPT: &str = r#"
"use strict";
async function refresh() {
  const failed = (why) => {
    const note = document.getElementById("refresh-note");
    if (note) note.textContent = "refresh failed at " + new Date().toLocaleTimeString() + " (" + why + "): the figures are older";
  };
  try {
    // Relative, and never with credentials a user typed into the URL.
    const r = await fetch(location.pathname + location.search, {cache: "no-store", credentials: "same-origin"});
    if (!r.ok) return failed("HTTP " + r.status);
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    // The header (EM state, uptime) and the main part; the scroll stays.
    for (const part of ["header", "main"]) {
      const fresh = doc.querySelector(part);
      const old = document.querySelector(part);
      if (fresh && old) old.replaceWith(fresh);
    }
  } catch (e) {
    failed(String(e));
  }
}
setInterval(refresh, 5000);
document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button[data-purge]");
  if (!b) return;
  if (!window.confirm("Purge " + b.dataset.what + " from the cache?")) return;
  b.disabled = true;
  const r = await fetch(b.dataset.purge, {method: "DELETE", credentials: "same-origin"});
  b.textContent = r.status === 204 ? "purged" : "failed (" + r.status + ")";
  refresh();
});
"#;

fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

fn percent(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{:.1} %", v * 100.0))
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn ago(s: u64) -> String {
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

/// A purge URL relative to the page (`/admin/status` → `/admin/cache`).
fn purge_url(query: &str) -> String {
    let mut out = String::from("cache?");
    out.push_str(query);
    out
}

fn encode_query(v: &str) -> String {
    crate::gateway::target::canonical_pairs([("x", Some(v))])
        .map(|q| q["x=".len()..].to_string())
        .unwrap_or_default()
}

/// One line chart: each series with its label and a dash pattern (readable
/// without colour), the top of the scale and the time axis labelled. `top`
/// fixes the scale (ratios); else it follows the largest value.
fn chart(
    title: &str,
    unit: &str,
    top: Option<f64>,
    series: &[(&str, &str, Vec<Option<f64>>)],
) -> String {
    const W: f64 = 540.0;
    const H: f64 = 150.0;
    const LEFT: f64 = 70.0;
    const BOTTOM: f64 = 18.0;
    let max = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().flatten())
        .fold(0.0f64, |a, b| a.max(*b));
    let top = top.unwrap_or(if max <= 0.0 { 1.0 } else { max * 1.1 });
    // The axis is always the full hour; a young process's points sit at the
    // right, "now" end.
    let n = SLOTS.max(2);
    let x = |i: usize| LEFT + (W - LEFT - 4.0) * i as f64 / (n - 1) as f64;
    let y = |v: f64| 6.0 + (H - BOTTOM - 6.0) * (1.0 - v.min(top) / top);
    let height = H + 16.0 * series.len() as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<figure><figcaption>{title}</figcaption><svg width="{W}" height="{height}" viewBox="0 0 {W} {height}" role="img" aria-label="{title}"><line x1="{LEFT}" y1="{base}" x2="{W}" y2="{base}" stroke="#999"/><line x1="{LEFT}" y1="6" x2="{LEFT}" y2="{base}" stroke="#999"/><text x="{label_x}" y="14" text-anchor="end">{top_label}</text><text x="{label_x}" y="{base}" text-anchor="end">0</text>"##,
        title = esc(title),
        base = H - BOTTOM,
        label_x = LEFT - 4.0,
        top_label = esc(format!("{} {unit}", format_value(top)).trim_end()),
    );
    let minutes = (n as u64 * SLOT_SECONDS) / 60;
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="{ty}">−{minutes} min</text><text x="{mid}" y="{ty}" text-anchor="middle">−{half} min</text><text x="{right}" y="{ty}" text-anchor="end">now</text>"#,
        ty = H - 4.0,
        mid = (LEFT + W) / 2.0,
        half = minutes / 2,
        right = W - 2.0,
    );
    for (k, (label, style, values)) in series.iter().enumerate() {
        let (colour, dash) = match *style {
            "a" => ("#1f5fa8", ""),
            "b" => ("#b3400b", "6 3"),
            "c" => ("#2e7d32", "2 3"),
            _ => ("#6a3d9a", "10 3 2 3"),
        };
        // Runs of known values become lines; a lone value, a dot.
        let offset = n.saturating_sub(values.len());
        let mut run: Vec<(f64, f64)> = Vec::new();
        let flush = |run: &mut Vec<(f64, f64)>, svg: &mut String| {
            match run.as_slice() {
                [] => {}
                [(px, py)] => {
                    let _ = write!(
                        svg,
                        r#"<circle cx="{px:.1}" cy="{py:.1}" r="2.5" fill="{colour}"/>"#
                    );
                }
                points => {
                    let mut list = String::new();
                    for (px, py) in points {
                        let _ = write!(list, "{px:.1},{py:.1} ");
                    }
                    let _ = write!(
                        svg,
                        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5" stroke-dasharray="{dash}"/>"#,
                        list.trim_end()
                    );
                }
            }
            run.clear();
        };
        for (i, v) in values.iter().enumerate() {
            match v {
                Some(v) => run.push((x(i + offset), y(*v))),
                None => flush(&mut run, &mut svg),
            }
        }
        flush(&mut run, &mut svg);
        let ly = H + 12.0 + 16.0 * k as f64;
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" y1="{ly0}" x2="{lx}" y2="{ly0}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{tx}" y="{ly}">{label}</text>"#,
            ly0 = ly - 4.0,
            lx = LEFT + 30.0,
            tx = LEFT + 36.0,
            label = esc(label)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn page(s: &Status) -> String {
    let mut p = String::with_capacity(48 * 1024);
    let _ = write!(
        p,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta name="referrer" content="no-referrer"><title>emgate status</title><style>{STYLE}</style></head><body>"#
    );
    let (class, text) = match s.em.state {
        "valid" => ("ok", "EM session valid"),
        "logging_on" => ("warn", "EM session: logging on"),
        _ => ("bad", "EM session failing"),
    };
    let _ = write!(
        p,
        r#"<header><h1>emgate {}</h1><span id="em-state" class="state {class}" data-state="{}">{text}</span><span>up {}</span><span id="refresh-note">refreshes every 5 s</span></header><main>"#,
        esc(s.version),
        s.em.state,
        ago(s.uptime_s)
    );
    // EM
    let e = &s.em;
    let _ = write!(
        p,
        r#"<section id="em"><h2>Enterprise Manager</h2><table>
<tr><th>session</th><td>{}{}{}</td></tr>
<tr><th>EM</th><td>{} · API versions {}</td></tr>
<tr><th>logons</th><td>{} ok, {} failed ({} refused), {} re-logons after EM ended the session; {} 401s were a resource's own</td></tr>
<tr><th>last logon error</th><td>{}</td></tr>
<tr><th>last {} min</th><td>{} EM requests, {} failed ({}); latency p50 {} · p99 {}</td></tr>
</table></section>"#,
        esc(e.state),
        e.since
            .as_ref()
            .map(|s| format!(" since {}", esc(s)))
            .unwrap_or_default(),
        e.reason
            .as_ref()
            .map(|r| format!(
                " — {} (next attempt in {}){}",
                esc(r),
                ago(e.retry_in_s.unwrap_or(0)),
                if e.logons_paused {
                    "; logons paused"
                } else {
                    ""
                }
            ))
            .unwrap_or_default(),
        esc(&e.url),
        esc(&if e.versions.is_empty() {
            "(not read yet)".to_string()
        } else {
            e.versions.join(", ")
        }),
        e.logons_ok,
        e.logons_failed,
        e.logons_refused,
        e.relogons,
        e.checks_alive,
        match (&e.last_error, &e.last_error_at) {
            (Some(why), Some(at)) => format!("{} — {}", esc(at), esc(why)),
            _ => "none".to_string(),
        },
        e.window_minutes,
        e.requests,
        e.errors,
        percent((e.requests > 0).then(|| e.errors as f64 / e.requests as f64)),
        e.latency_p50_ms.map_or("–".into(), |v| format!("≤ {v} ms")),
        e.latency_p99_ms.map_or("–".into(), |v| format!("≤ {v} ms")),
    );
    // Charts
    let opt = |v: &Vec<f64>| v.iter().map(|x| Some(*x)).collect::<Vec<_>>();
    let ms = |v: &Vec<Option<u64>>| v.iter().map(|x| x.map(|x| x as f64)).collect::<Vec<_>>();
    p.push_str(r#"<section id="charts"><h2>Last hour</h2><div class="charts">"#);
    p.push_str(&chart(
        "Requests per second by cache result",
        "req/s",
        None,
        &[
            ("HIT (solid)", "a", opt(&s.series.hit)),
            ("MISS (dashed)", "b", opt(&s.series.miss)),
            ("STALE (dotted)", "c", opt(&s.series.stale)),
            ("other (dash-dot)", "d", opt(&s.series.other)),
        ],
    ));
    p.push_str(&chart(
        "EM latency",
        "ms",
        None,
        &[
            ("p50 (solid)", "a", ms(&s.series.em_p50_ms)),
            ("p99 (dashed)", "b", ms(&s.series.em_p99_ms)),
        ],
    ));
    let percent_of = |v: &Vec<Option<f64>>| v.iter().map(|x| x.map(|x| x * 100.0)).collect();
    p.push_str(&chart(
        "Cache hit ratio (cached routes)",
        "%",
        Some(100.0),
        &[(
            "HIT + STALE share (solid)",
            "a",
            percent_of(&s.series.hit_ratio),
        )],
    ));
    p.push_str("</div></section>");
    // Cache
    let c = &s.cache;
    let _ = write!(
        p,
        r#"<section id="cache"><h2>Cache</h2><p>{} entries, {} of {} · {} requests of uncached routes shared another's EM request</p>
<table><tr><th>rule</th><th>path</th><th class="n">TTL</th><th class="n">entries</th><th class="n">bytes</th><th class="n">hit ratio</th><th class="n">hits</th><th class="n">misses</th><th class="n">stale</th><th class="n">collapsed</th><th class="n">from fleet</th><th class="n">refreshes (miss / stale / ahead / warm)</th><th></th></tr>"#,
        c.entries,
        bytes(c.bytes),
        bytes(c.max_bytes),
        c.collapsed_uncached
    );
    for r in &c.rules {
        let _ = write!(
            p,
            r#"<tr data-rule="{}"><td>{}</td><td class="key">{}</td><td class="n">{}</td><td class="n rule-entries">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n rule-hits">{}</td><td class="n rule-misses">{}</td><td class="n rule-stale">{}</td><td class="n">{}</td><td class="n">{} / {}</td><td class="n">{} / {} / {} / {}</td><td><button type="button" data-purge="{}" data-what="every entry of rule {}">purge rule</button></td></tr>"#,
            esc(&r.name),
            esc(&r.name),
            esc(&r.path),
            ago(r.ttl_s),
            r.counters.entries,
            bytes(r.counters.bytes),
            percent(r.hit_ratio),
            r.counters.hits,
            r.counters.misses,
            r.counters.stale,
            r.counters.collapsed,
            r.counters.shared_hits,
            r.counters.coalesced,
            r.counters.refreshes_miss,
            r.counters.refreshes_revalidate,
            r.counters.refreshes_ahead,
            r.counters.refreshes_warm,
            esc(&purge_url(&format!("rule={}", encode_query(&r.name)))),
            esc(&r.name),
        );
    }
    p.push_str("</table><h2>Busiest keys</h2><table><tr><th>rule</th><th>key</th><th class=\"n\">hits</th><th class=\"n\">age</th><th></th></tr>");
    let mut any = false;
    for r in &c.rules {
        for k in &r.busiest {
            any = true;
            let path = k.key.split('?').next().unwrap_or(&k.key);
            let _ = write!(
                p,
                r#"<tr data-key="{}"><td>{}</td><td class="key">{}</td><td class="n">{}</td><td class="n">{}</td><td><button type="button" data-purge="{}" data-what="{}">purge</button></td></tr>"#,
                esc(&k.key),
                esc(&r.name),
                esc(&k.key),
                k.hits,
                ago(k.age_s),
                esc(&purge_url(&format!("prefix={}", encode_query(path)))),
                esc(path),
            );
        }
    }
    if !any {
        p.push_str(r#"<tr><td colspan="5" class="muted">nothing cached yet</td></tr>"#);
    }
    p.push_str("</table></section>");
    // Warm
    let w = &s.warm;
    let on = |b: bool| if b { "on" } else { "off" };
    let _ = write!(
        p,
        r#"<section id="warm"><h2>Warm</h2><p><span id="waited-share">{}</span> of the last hour's {} reads waited for EM ({}) · prefetch {} · warm start {}</p>
<table><tr><th>waited because</th><th class="n">since start</th></tr>"#,
        percent(w.waited_share),
        w.reads_last_hour,
        w.waited_last_hour,
        on(w.prefetch),
        on(w.warm_start),
    );
    for (reason, n) in w.client_waits.by_reason() {
        let _ = write!(p, r#"<tr><td>{reason}</td><td class="n">{n}</td></tr>"#);
    }
    let _ = write!(
        p,
        r#"</table><h2>Background lane</h2><p>{} running, {} queued, at most {} at once (peak {}){}</p><table><tr><th>kind</th><th class="n">done</th><th class="n">failed</th><th class="n">dropped</th></tr>"#,
        w.lane.running,
        w.lane.queued,
        w.lane_concurrency,
        w.lane.peak,
        if w.lane_rate > 0 {
            format!(" and {} a second", w.lane_rate)
        } else {
            String::new()
        },
    );
    for work in crate::ops::metrics::Work::ALL {
        let i = work as usize;
        let _ = write!(
            p,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            work.label(),
            w.lane.ok[i],
            w.lane.failed[i],
            w.lane.dropped[i],
        );
    }
    p.push_str("</table></section>");
    // Fleet
    match &s.fleet {
        Some(f) => {
            let _ = write!(
                p,
                r#"<section id="fleet"><h2>Fleet</h2><p>shared tier <span class="state {}">{}</span> · {} live members · {} lease takeovers · prefix <span class="key">{}</span></p></section>"#,
                if f.shared == "up" { "ok" } else { "bad" },
                f.shared,
                f.members,
                f.lease_takeovers,
                esc(&f.prefix)
            );
        }
        None => p.push_str(
            r#"<section id="fleet"><h2>Fleet</h2><p class="muted">off: this replica alone (EMGATE_SHARED_URL unset)</p></section>"#,
        ),
    }
    // Clients
    let _ = write!(
        p,
        r#"<section id="clients"><h2>Clients</h2><p>{} gateway sessions · {} requests refused for their rate</p><table><tr><th>client</th><th class="n">requests</th><th class="n">errors</th><th class="n">rate-limited</th></tr>"#,
        s.clients.sessions, s.clients.rate_limited
    );
    for cl in &s.clients.busiest {
        let _ = write!(
            p,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            esc(&cl.name),
            cl.requests,
            cl.errors,
            cl.rate_limited
        );
    }
    p.push_str("</table><h2>Pending EM tasks</h2><table><tr><th>client</th><th class=\"n\">tasks</th><th class=\"n\">oldest</th></tr>");
    if s.clients.pending_tasks.is_empty() {
        p.push_str(r#"<tr><td colspan="3" class="muted">none</td></tr>"#);
    }
    for t in &s.clients.pending_tasks {
        let _ = write!(
            p,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{} s</td></tr>"#,
            esc(&t.name),
            t.count,
            t.oldest_s
        );
    }
    p.push_str("</table></section>");
    // Errors
    p.push_str(r#"<section id="errors"><h2>Last errors</h2><table><tr><th>time</th><th>route</th><th class="n">status</th><th>request id</th><th>message</th></tr>"#);
    if s.errors.is_empty() {
        p.push_str(r#"<tr><td colspan="5" class="muted">none</td></tr>"#);
    }
    for er in s.errors.iter().take(20) {
        let _ = write!(
            p,
            r#"<tr><td>{}</td><td>{}</td><td class="n">{}</td><td class="key">{}</td><td>{}</td></tr>"#,
            esc(&er.at),
            esc(&er.route),
            er.status,
            esc(&er.request_id),
            esc(&er.message)
        );
    }
    p.push_str("</table></section>");
    // Configuration: generation, last reload, the fleet's convergence.
    let c = &s.config;
    let _ = write!(
        p,
        r#"<section id="config"><h2>Configuration</h2><p>generation <span id="config-generation">{}</span>"#,
        c.generation
    );
    match &c.last_reload {
        None => p.push_str(
            " · no reload since the start (SIGHUP, or a change of a settings file, reloads)",
        ),
        Some(r) => {
            let _ = write!(
                p,
                r#" · last reload {} ({}): <span id="last-reload" class="state {}">{}</span>"#,
                esc(&r.at),
                r.trigger,
                if r.ok { "ok" } else { "bad" },
                esc(r.error.as_deref().unwrap_or("applied")),
            );
            if !r.applied.is_empty() {
                let _ = write!(p, " · changed: {}", esc(&r.applied.join("; ")));
            }
            if !r.kept.is_empty() {
                let _ = write!(p, " · kept until a restart: {}", esc(&r.kept.join(", ")));
            }
        }
    }
    p.push_str("</p>");
    if let Some(converged) = c.converged {
        let _ = write!(
            p,
            r#"<p>fleet: <span class="state {}">{}</span>"#,
            if converged { "ok" } else { "warn" },
            if converged {
                "every member has this generation"
            } else {
                "members differ"
            },
        );
        for m in &c.members {
            let _ = write!(
                p,
                r#" · <span class="key">{}</span> {}"#,
                esc(&m.member),
                m.generation
            );
        }
        p.push_str("</p>");
    }
    p.push_str("</section>");
    // Settings
    let _ = write!(
        p,
        r#"<section id="settings"><h2>Settings</h2><p class="muted">version {} · started {} · secrets shown as ***</p><pre>{}</pre></section>"#,
        esc(s.version),
        esc(&s.started_at),
        esc(&s.settings)
    );
    let _ = write!(p, "</main><script>{SCRIPT}</script></body></html>");
    p
}

/// What the modules count, copied for `/metrics` (and the status page).
pub fn metrics_snapshot(app: &App) -> crate::ops::metrics::Snapshot {
    use crate::ops::metrics::{RuleSnapshot, SessionSnapshot, Snapshot};
    let rule = |i: usize, name: &str| RuleSnapshot {
        name: name.to_string(),
        counters: app.reads.cache.rule_stats(i),
    };
    let p = &app.pool.stats;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let refused = get(&p.logons_refused);
    let checks = get(&p.checks);
    let alive = get(&p.checks_alive);
    Snapshot {
        rules: app
            .reads
            .rules
            .load()
            .all()
            .iter()
            .enumerate()
            .map(|(i, r)| rule(i, &r.name))
            .collect(),
        collapsed_uncached: app
            .reads
            .collapse_stats
            .collapsed
            .load(std::sync::atomic::Ordering::Relaxed),
        session: SessionSnapshot {
            logons_ok: get(&p.logons_ok),
            logons_failed: get(&p.logons_failed).saturating_sub(refused),
            logons_refused: refused,
            relogons: get(&p.relogons),
            checks_alive: alive,
            checks_gone: checks.saturating_sub(alive),
            valid: app.pool.is_valid(),
            paused: matches!(app.pool.state(), SessionState::Failing { paused: true, .. }),
        },
        client_sessions: app.access.sessions.count() as u64,
        tasks_pending: app.tasks.pending().iter().map(|p| p.count as u64).sum(),
        writes_resent: p.writes_resent.load(std::sync::atomic::Ordering::Relaxed),
        upstream_memory: app.pool.upstream().memory_held() as u64,
        // Read from the breaker at scrape time, as `/readyz` reads it: the
        // two never disagree.
        shared_up: app.fleet.as_ref().map(|f| f.is_up()),
        waits: app.reads.cache.waits(),
        background: app.pool.upstream().background().counters(),
    }
}
