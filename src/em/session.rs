//! The pooled EM session (see README, "One EM session for everybody" in its opening list): one EM logon serves every client.
//!
//! Invariants this module keeps:
//! - At most one logon is in flight; requests that find the session missing
//!   or expired wait for it instead of starting their own.
//! - Each session carries a generation. A 401 seen with generation `g` only
//!   throws away the session if it is still generation `g`, so a late 401
//!   from an old session never discards a newer one.
//! - A 401 alone never causes a logon: the session is first checked with a
//!   cheap request of its own (`GET /api/logonSessions/{id}`, one check at a
//!   time). Only if EM refuses that too is the session gone; otherwise the
//!   resource's 401 is passed on and EM sees no new logon.
//! - Re-logons are rate-limited (a burst of [`RELOGON_BURST`], then one per
//!   [`RELOGON_EVERY`]), and a replaced session is logged out best-effort,
//!   so sessions never pile up on EM.
//! - While EM refuses logons or is down, attempts are spaced by an
//!   exponential backoff with jitter; requests in between fail at once
//!   (503) instead of hammering EM, and a background task keeps trying so
//!   the gateway recovers by itself.
//! - After [`REFUSALS_BEFORE_PAUSE`] refused logons in a row (EM's 401 to
//!   the logon itself: a wrong or rotated password) the gateway pauses
//!   logons for [`REFUSED_PAUSE`], so it never locks the EM account.
//! - The EM session token never leaves this module except as the
//!   `X-RestSvcSessionId` header of a request to EM (marked sensitive), or
//!   as a [`SharedEmSession`] handed to the fleet, which keeps it only
//!   sealed.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use http::{Method, StatusCode};
use http_body_util::BodyExt;

use crate::config::UpstreamSettings;
use crate::em::client::{Lane, Upstream, UpstreamError, UpstreamResponse};
use crate::secret::Secret;

/// EM's session header.
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("x-restsvcsessionid");

/// First wait after a failed logon; doubles up to the configured maximum.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Refused logons in a row after which logons pause.
pub const REFUSALS_BEFORE_PAUSE: u32 = 3;
/// How long logons pause after that many refusals (EM accounts usually
/// lock after a handful of failures within some minutes).
pub const REFUSED_PAUSE: Duration = Duration::from_secs(10 * 60);
/// Re-logons allowed back to back.
pub const RELOGON_BURST: u32 = 3;
/// Then one re-logon per this long.
pub const RELOGON_EVERY: Duration = Duration::from_secs(20);
/// Fleet mode: how often a replica that went on alone looks for the fleet.
const REJOIN_EVERY: Duration = Duration::from_secs(5);
/// A session confirmed alive this recently is not checked again.
const ALIVE_FOR: Duration = Duration::from_secs(1);

/// One EM logon session.
pub struct EmSession {
    /// The `X-RestSvcSessionId` token.
    token: Secret,
    /// The session's GUID, for `GET`/`DELETE /api/logonSessions/{id}`.
    id: Option<String>,
    /// Increases with every logon; compared when EM answers 401. The
    /// fleet's sessions carry the fleet's generation; a replica's own ones
    /// have [`LOCAL_GENERATION`] set, so the two never compare equal.
    generation: u64,
    /// Whether this is the fleet's session (kept in the shared store).
    shared: bool,
    /// Tasks still followed with this session: while any is, a replaced
    /// session is not logged out (EM would drop the tasks with it).
    pins: AtomicUsize,
}

/// Keeps a session from being logged out while held (see [`EmSession::pin`]).
pub struct Pin(Arc<EmSession>);

impl Drop for Pin {
    fn drop(&mut self) {
        self.0.pins.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pin {
    /// The pinned session.
    pub fn session(&self) -> &Arc<EmSession> {
        &self.0
    }
}

/// Marks the generations of a replica's own sessions (fleet mode with the
/// shared store unreachable, or no fleet at all).
pub const LOCAL_GENERATION: u64 = 1 << 62;

impl EmSession {
    /// Keeps this session from being logged out when the pool replaces it,
    /// until the guard is dropped.
    pub fn pin(self: &Arc<Self>) -> Pin {
        self.pins.fetch_add(1, Ordering::AcqRel);
        Pin(self.clone())
    }

    /// The session as the fleet keeps it (sealed): a task made with it can
    /// be followed by another replica.
    pub fn to_shared(&self) -> SharedEmSession {
        SharedEmSession {
            token: self.token.clone(),
            id: self.id.clone(),
            generation: self.generation,
        }
    }

    /// A session handed back by the fleet (a task another replica started).
    pub fn from_shared(s: SharedEmSession) -> Arc<EmSession> {
        Arc::new(EmSession {
            token: s.token,
            id: s.id,
            generation: s.generation,
            shared: true,
            pins: AtomicUsize::new(0),
        })
    }

    /// Whether this is the same EM session as `other` (same token).
    pub fn same_as(&self, other: &EmSession) -> bool {
        self.token.expose() == other.token.expose()
    }

    /// Whether a task still needs this session.
    pub fn pinned(&self) -> bool {
        self.pins.load(Ordering::Acquire) > 0
    }

    /// The generation of this session.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The header to send to EM with this session.
    fn header(&self) -> Option<HeaderValue> {
        let mut v = HeaderValue::from_str(self.token.expose()).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// `GET /api/logonSessions/{id}`: the session's own resource, the
    /// cheapest request that tells whether EM still knows it.
    fn own_path(&self) -> String {
        match &self.id {
            Some(id) => format!("/api/logonSessions/{id}"),
            None => "/api/logonSessions".to_string(),
        }
    }
}

impl std::fmt::Debug for EmSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmSession")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Why no EM session could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// EM answered the logon with 401: wrong user name or password.
    #[error("Enterprise Manager refused the gateway's logon (401): check EMGATE_UPSTREAM_USERNAME and the password")]
    Refused,
    /// EM answered the logon with another unexpected status.
    #[error("Enterprise Manager answered the gateway's logon with {0}")]
    Rejected(StatusCode),
    /// EM could not be reached or was too slow.
    #[error("Enterprise Manager logon failed: {0}")]
    Upstream(String),
    /// The gateway is shutting down and has logged out.
    #[error("the gateway is shutting down")]
    Closed,
    /// A previous logon failed and the backoff has not run out.
    #[error("Enterprise Manager logon is failing (next attempt in {retry_in_ms} ms): {last}")]
    BackingOff {
        /// Milliseconds until the next attempt.
        retry_in_ms: u128,
        /// The last failure.
        last: String,
    },
    /// EM refused the logon several times in a row; logons are paused so
    /// the EM account is not locked.
    #[error("Enterprise Manager refused the gateway's logon {refusals} times in a row (wrong or rotated password?); logons pause for {} s so the EM account is not locked", .retry_in.as_secs())]
    Paused {
        /// Refusals in a row.
        refusals: u32,
        /// Until the next attempt.
        retry_in: Duration,
    },
    /// Too many re-logons lately: EM keeps dropping sessions.
    #[error("Enterprise Manager keeps ending the gateway's sessions; the next logon is allowed in {} s", .0.as_secs().max(1))]
    RelogonLimited(Duration),
}

impl SessionError {
    /// How long until the gateway tries again, when it knows.
    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            SessionError::BackingOff { retry_in_ms, .. } => Some(Duration::from_millis(
                u64::try_from(*retry_in_ms).unwrap_or(u64::MAX),
            )),
            SessionError::Paused { retry_in, .. } => Some(*retry_in),
            SessionError::RelogonLimited(wait) => Some(*wait),
            _ => None,
        }
    }
}

/// Why a request to EM with the pooled session failed.
#[derive(Debug, thiserror::Error)]
pub enum EmError {
    /// No session could be had.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// EM could not be asked, or answered unusably.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// EM refused even a freshly made session.
    #[error("Enterprise Manager rejected the gateway's new session")]
    SessionRejected,
}

/// A future a shared session store answers with.
pub type StoreFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreDown>> + Send + 'a>>;

/// The shared store could not be asked (down, slow, breaker open): the pool
/// goes on alone, with a session of its own if it needs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreDown;

/// The fleet's EM session, as the shared store hands it (unsealed).
#[derive(Clone)]
pub struct SharedEmSession {
    /// The `X-RestSvcSessionId` token.
    pub token: Secret,
    /// The session's GUID.
    pub id: Option<String>,
    /// The fleet's generation of it.
    pub generation: u64,
}

/// Something held while this replica logs on for the fleet; dropping it
/// lets others try.
pub type LogonLease = Box<dyn Send + Sync>;

/// Where the fleet keeps its one EM session (see README, "Fleet mode"): implemented by
/// the shared tier, so this module knows no Redis. Every call is bounded; a
/// [`StoreDown`] means "go on alone".
pub trait SessionStore: Send + Sync {
    /// The fleet's session, if there is one.
    fn load(&self) -> StoreFuture<'_, Option<SharedEmSession>>;
    /// The right to log on for the fleet, if nobody holds it.
    fn lease(&self) -> StoreFuture<'_, Option<LogonLease>>;
    /// Makes this the fleet's session if the fleet's generation is still
    /// `replacing` (0: none); its new generation, or `None` if another
    /// replica published first.
    fn publish(
        &self,
        token: &Secret,
        id: Option<&str>,
        replacing: u64,
    ) -> StoreFuture<'_, Option<u64>>;
    /// Waits (at most `within`) for a session of another generation than `after`.
    fn wait_newer(&self, after: u64, within: Duration) -> StoreFuture<'_, Option<SharedEmSession>>;
    /// Refusals in a row across the fleet, and how long logons still pause.
    fn pause(&self) -> StoreFuture<'_, Option<(u32, Duration)>>;
    /// Records a logon's outcome for the fleet (a refusal counts, a success
    /// clears); the refusals in a row.
    fn record(&self, refused: bool, pause: Duration) -> StoreFuture<'_, u32>;
    /// Whether this replica should keep the session alive now (nobody in
    /// the fleet used it for `keepalive`); at most one replica gets `true`.
    fn keepalive_due(&self, keepalive: Duration) -> StoreFuture<'_, bool>;
    /// Records that EM just saw the session used.
    fn used(&self, keepalive: Duration) -> StoreFuture<'_, ()>;
    /// Leaves the fleet; whether this was its last live member.
    fn leave(&self) -> StoreFuture<'_, bool>;
    /// Forgets the session of this generation (it was logged out).
    fn clear(&self, generation: u64) -> StoreFuture<'_, ()>;
}

/// Counters for metrics and the status page.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Successful logons.
    pub logons_ok: AtomicU64,
    /// Failed logons (refusals included).
    pub logons_failed: AtomicU64,
    /// Logons EM refused (401 to the logon).
    pub logons_refused: AtomicU64,
    /// Logons that replaced a session EM had dropped.
    pub relogons: AtomicU64,
    /// 401s checked against the session's own resource.
    pub checks: AtomicU64,
    /// Of those, the session was alive: the 401 was the resource's own.
    pub checks_alive: AtomicU64,
    /// Writes sent a second time because EM's session was gone (EM refused
    /// them before doing anything).
    pub writes_resent: AtomicU64,
}

/// What `/readyz` and the status page say about the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// A session is held.
    Valid {
        /// Since when (wall clock).
        since: SystemTime,
    },
    /// No session yet, and no failure: the first logon is under way.
    LoggingOn,
    /// Logons are failing.
    Failing {
        /// Why, in words an operator can act on (no secrets).
        reason: String,
        /// Until the next attempt.
        retry_in: Duration,
        /// Whether logons are paused after repeated refusals.
        paused: bool,
    },
}

/// Backoff bookkeeping, guarded by the logon lock.
#[derive(Default)]
struct LogonState {
    /// Consecutive failures.
    failures: u32,
    /// Consecutive refusals (EM's 401 to the logon).
    refusals: u32,
    /// No attempt before this instant.
    retry_at: Option<Instant>,
    /// The last failure, repeated to requests during the backoff.
    last_error: Option<SessionError>,
}

/// How a logon for the fleet ended.
enum FleetLogon {
    /// This replica logged on (for the fleet, or alone).
    Own(EmSession),
    /// Another replica's session, already in place.
    Adopted(Arc<EmSession>),
}

/// The last failure as the outside sees it (readable without the logon lock).
#[derive(Clone)]
struct Failure {
    error: SessionError,
    retry_at: Instant,
    paused: bool,
}

/// What checking a session told.
enum Check {
    /// EM still knows it.
    Alive,
    /// EM refused it: it is gone.
    Gone,
}

/// What a caller does after EM answered 401 to its request.
pub enum After401 {
    /// The session was gone; here is the new one: replay (reads only).
    Replaced(Arc<EmSession>),
    /// The session is alive: the 401 is the resource's own; pass it on.
    Alive,
}

/// The shared EM session for all clients.
pub struct SessionPool {
    /// Client to EM.
    upstream: Upstream,
    /// EM account.
    username: String,
    /// EM password; a reload replaces it ([`SessionPool::set_password`]).
    password: RwLock<Secret>,
    /// Told when the password is replaced: a logon waiting out a backoff
    /// or a pause tries again at once.
    renewed: tokio::sync::Notify,
    /// Set when the password is replaced: the next logon goes through the
    /// fleet's pause once.
    new_password: AtomicBool,
    /// The current session; a std lock because it is held only to clone an `Arc`.
    current: RwLock<Option<Arc<EmSession>>>,
    /// When the current session was made.
    since: Mutex<Option<SystemTime>>,
    /// Serialises logons (single flight) and holds the backoff state.
    logon: tokio::sync::Mutex<LogonState>,
    /// The last logon failure, for readiness (cleared on success).
    failure: Mutex<Option<Failure>>,
    /// The last logon failure and when, kept after recovery (the status
    /// page's "last error").
    last_failure: Mutex<Option<(SystemTime, String)>>,
    /// Serialises session checks after a 401; holds the generation last
    /// found alive and when.
    check: tokio::sync::Mutex<Option<(u64, Instant)>>,
    /// Re-logons: a small burst, then a steady trickle.
    relogons: DefaultDirectRateLimiter,
    /// Source of generations.
    generations: AtomicU64,
    /// Milliseconds since `epoch` when EM last saw the session used.
    last_used_ms: AtomicU64,
    /// Reference point for `last_used_ms`.
    epoch: Instant,
    /// Touch the session after this much idleness (EM expires at 15 min).
    keepalive: Duration,
    /// Cap on the backoff between logon attempts.
    backoff_max: Duration,
    /// Wakes the maintenance task when the session is lost.
    lost: tokio::sync::Notify,
    /// Set by `logout`: requests still draining must not log on again.
    closed: AtomicBool,
    /// Fleet mode: where the fleet's one session lives.
    shared: Option<Arc<dyn SessionStore>>,
    /// Milliseconds since `epoch` when use was last reported to the fleet.
    reported_ms: AtomicU64,
    /// How long a logon for the fleet is awaited before trying anew.
    fleet_wait: Duration,
    /// Counters.
    pub stats: SessionStats,
}

impl SessionPool {
    /// A pool that has not logged on yet.
    pub fn new(upstream: Upstream, settings: &UpstreamSettings) -> SessionPool {
        let every = RELOGON_EVERY;
        let quota = Quota::with_period(every)
            .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(RELOGON_BURST).unwrap_or(NonZeroU32::MIN));
        SessionPool {
            upstream,
            username: settings.username.clone(),
            password: RwLock::new(settings.password.clone()),
            renewed: tokio::sync::Notify::new(),
            new_password: AtomicBool::new(false),
            current: RwLock::new(None),
            since: Mutex::new(None),
            logon: tokio::sync::Mutex::new(LogonState::default()),
            failure: Mutex::new(None),
            last_failure: Mutex::new(None),
            check: tokio::sync::Mutex::new(None),
            relogons: RateLimiter::direct(quota),
            generations: AtomicU64::new(0),
            last_used_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            keepalive: settings.keepalive,
            backoff_max: settings.logon_backoff_max,
            lost: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            shared: None,
            reported_ms: AtomicU64::new(0),
            fleet_wait: settings.timeout,
            stats: SessionStats::default(),
        }
    }

    /// Fleet mode: the session is the fleet's, kept in `store`; a logon for
    /// the fleet by another replica is awaited `lease` + the upstream timeout.
    pub fn with_shared(mut self, store: Arc<dyn SessionStore>, lease: Duration) -> SessionPool {
        self.shared = Some(store);
        self.fleet_wait += lease;
        self
    }

    /// Whether the current session is the fleet's (fleet mode).
    pub fn is_shared(&self) -> bool {
        self.peek().is_some_and(|s| s.shared)
    }

    /// The EM client this pool logs on with.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Whether a session is held right now (`/readyz`).
    pub fn is_valid(&self) -> bool {
        self.peek().is_some()
    }

    /// The session's state, for `/readyz` and the status page.
    pub fn state(&self) -> SessionState {
        if self.peek().is_some() {
            let since = self
                .since
                .lock()
                .ok()
                .and_then(|s| *s)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            return SessionState::Valid { since };
        }
        match self.failure.lock().ok().and_then(|f| f.clone()) {
            Some(f) => SessionState::Failing {
                reason: f.error.to_string(),
                retry_in: f.retry_at.saturating_duration_since(Instant::now()),
                paused: f.paused,
            },
            None => SessionState::LoggingOn,
        }
    }

    /// The last logon failure (when, why), also after the session came
    /// back; `None` if a logon never failed.
    pub fn last_failure(&self) -> Option<(SystemTime, String)> {
        self.last_failure.lock().ok().and_then(|f| f.clone())
    }

    fn peek(&self) -> Option<Arc<EmSession>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    fn set(&self, session: Option<Arc<EmSession>>) {
        if let Ok(mut since) = self.since.lock() {
            *since = session.as_ref().map(|_| SystemTime::now());
        }
        if let Ok(mut c) = self.current.write() {
            *c = session;
        }
    }

    /// Records that EM just saw the session used (postpones the keep-alive).
    pub fn mark_used(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_used_ms.store(ms, Ordering::Relaxed);
        // Fleet mode: the fleet keeps one keep-alive, so replicas tell it
        // when they use the session (a few times per keep-alive period).
        if let (Some(store), true) = (&self.shared, self.is_shared()) {
            let every = (self.keepalive.as_millis() as u64 / 4).max(1000);
            let last = self.reported_ms.load(Ordering::Relaxed);
            if ms.saturating_sub(last) >= every
                && self
                    .reported_ms
                    .compare_exchange(last, ms, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                let store = store.clone();
                let keepalive = self.keepalive;
                tokio::spawn(async move {
                    let _ = store.used(keepalive).await;
                });
            }
        }
    }

    fn idle(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_used_ms.load(Ordering::Relaxed)))
    }

    /// The current session, logging on first if there is none.
    pub async fn acquire(self: &Arc<Self>) -> Result<Arc<EmSession>, SessionError> {
        match self.peek() {
            Some(s) => Ok(s),
            None => self.logon_replacing(None).await,
        }
    }

    /// GETs `path_and_query` from EM with the pooled session. After EM's
    /// 401 the session is checked; if it was gone, the GET is replayed once
    /// with the new session; if it is alive, EM's 401 is the answer.
    /// `discard_body`: a client's HEAD, whose body is never held. `lane`:
    /// a client's, or work emgate does on its own.
    pub async fn get(
        self: &Arc<Self>,
        path_and_query: &str,
        headers: HeaderMap,
        discard_body: bool,
        lane: Lane,
    ) -> Result<UpstreamResponse, EmError> {
        let mut session = self.acquire().await?;
        for attempt in 0..2 {
            let mut request_headers = headers.clone();
            if let Some(token) = session.header() {
                request_headers.insert(SESSION_HEADER, token);
            }
            let response = if discard_body {
                self.upstream
                    .send_discarding_body(path_and_query, request_headers)
                    .await?
            } else {
                self.upstream
                    .send(lane, Method::GET, path_and_query, request_headers)
                    .await?
            };
            if response.status != StatusCode::UNAUTHORIZED {
                self.mark_used();
                return Ok(response);
            }
            match self.after_401(&session).await? {
                After401::Alive => return Ok(response),
                After401::Replaced(newer) if attempt == 0 => session = newer,
                After401::Replaced(_) => break,
            }
        }
        tracing::warn!("EM answered 401 to a freshly logged-on session");
        Err(EmError::SessionRejected)
    }

    /// Sends a write with the pooled session; the answer and the session
    /// it was made with (EM keeps what a write creates, such as a task, per
    /// session). Sent once, with one exception: when EM answers 401 and the
    /// session is really gone (EM refused before doing anything), it is
    /// sent once more after the one shared re-logon. Never again after a
    /// reset, a timeout or a 5xx: EM may have done it (README, "Writes").
    pub async fn write(
        self: &Arc<Self>,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(UpstreamResponse, Arc<EmSession>), EmError> {
        let mut session = self.acquire().await?;
        for attempt in 0..2 {
            let mut headers = headers.clone();
            if let Some(token) = session.header() {
                headers.insert(SESSION_HEADER, token);
            }
            let full = http_body_util::Full::new(body.clone())
                .map_err(|never| match never {})
                .boxed();
            let response = self
                .upstream
                .send_with_body(Lane::Client, method.clone(), path_and_query, headers, full)
                .await?;
            if response.status == StatusCode::UNAUTHORIZED {
                match self.after_401(&session).await? {
                    After401::Alive => return Ok((response, session)),
                    After401::Replaced(new) if attempt == 0 => {
                        self.stats.writes_resent.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("EM's session was gone before a write; sending it once more with the new one");
                        session = new;
                        continue;
                    }
                    After401::Replaced(_) => return Err(EmError::SessionRejected),
                }
            }
            self.mark_used();
            return Ok((response, session));
        }
        Err(EmError::SessionRejected)
    }

    /// A request with a given session (not necessarily the current one):
    /// following a task with the session that made it. No logon, no replay.
    pub async fn send_with(
        &self,
        session: &EmSession,
        method: Method,
        path_and_query: &str,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut headers = HeaderMap::new();
        if let Some(token) = session.header() {
            headers.insert(SESSION_HEADER, token);
        }
        self.upstream
            .send(Lane::Client, method, path_and_query, headers)
            .await
    }

    /// Whether `session` is still the pool's current one (the same EM
    /// session: the fleet may hand the same token back under a new
    /// generation).
    pub fn is_current(&self, session: &EmSession) -> bool {
        self.peek().is_some_and(|c| c.same_as(session))
    }

    /// Logs a session out of EM that is no longer in use (a replaced session
    /// kept for pending tasks, once the last of them is over): not while a
    /// task still holds it, not while it is this replica's or the fleet's
    /// current session.
    pub async fn retire(&self, session: &EmSession) {
        if session.pinned() || self.is_current(session) {
            return;
        }
        if let Some(store) = &self.shared {
            match store.load().await {
                Ok(Some(s)) if s.token.expose() == session.token.expose() => return,
                Ok(_) => {}
                // Cannot tell: leave it to EM's idle timeout.
                Err(StoreDown) => return,
            }
        }
        self.end(session).await;
    }

    /// EM answered 401 to a request made with `stale`: is the session gone
    /// (then get a newer one, one logon for everybody) or was the 401 the
    /// resource's own? One check at a time; a generation found alive within
    /// the last second is not checked again.
    pub async fn after_401(self: &Arc<Self>, stale: &Arc<EmSession>) -> Result<After401, EmError> {
        if let Some(current) = self.peek() {
            if current.generation != stale.generation {
                return Ok(After401::Replaced(current));
            }
        }
        let mut last_alive = self.check.lock().await;
        match self.peek() {
            Some(current) if current.generation != stale.generation => {
                return Ok(After401::Replaced(current));
            }
            None => return Ok(After401::Replaced(self.acquire().await?)),
            Some(_) => {}
        }
        if let Some((generation, at)) = *last_alive {
            if generation == stale.generation && at.elapsed() < ALIVE_FOR {
                return Ok(After401::Alive);
            }
        }
        self.stats.checks.fetch_add(1, Ordering::Relaxed);
        match self.check(stale).await? {
            Check::Alive => {
                self.stats.checks_alive.fetch_add(1, Ordering::Relaxed);
                *last_alive = Some((stale.generation, Instant::now()));
                tracing::info!(
                    "EM answered 401 for a resource while the session is alive; passing it on, no logon"
                );
                Ok(After401::Alive)
            }
            Check::Gone => {
                drop(last_alive);
                Ok(After401::Replaced(
                    self.logon_replacing(Some(stale.generation)).await?,
                ))
            }
        }
    }

    /// Asks EM about the session itself.
    async fn check(&self, session: &EmSession) -> Result<Check, UpstreamError> {
        let mut headers = HeaderMap::new();
        if let Some(v) = session.header() {
            headers.insert(SESSION_HEADER, v);
        }
        let r = self
            .upstream
            .send(Lane::Session, Method::GET, &session.own_path(), headers)
            .await?;
        Ok(if r.status == StatusCode::UNAUTHORIZED {
            Check::Gone
        } else {
            self.mark_used();
            Check::Alive
        })
    }

    /// The logon runs in its own task: a client that goes away mid-logon
    /// must not cancel it (EM may already hold the new session, and the
    /// other waiters need its outcome and the backoff it records).
    async fn logon_replacing(
        self: &Arc<Self>,
        stale: Option<u64>,
    ) -> Result<Arc<EmSession>, SessionError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SessionError::Closed);
        }
        let this = self.clone();
        tokio::spawn(async move { this.logon_locked(stale).await })
            .await
            .unwrap_or_else(|_| Err(SessionError::Upstream("the logon task failed".into())))
    }

    async fn logon_locked(
        self: &Arc<Self>,
        stale: Option<u64>,
    ) -> Result<Arc<EmSession>, SessionError> {
        let mut state = self.logon.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return Err(SessionError::Closed);
        }
        // Fleet mode: the fleet may hold a session this replica does not
        // have yet, or a newer one than the one that failed: take it.
        let mut fleet_generation = 0;
        if let Some(store) = &self.shared {
            if let Ok(Some(s)) = store.load().await {
                let current = self.peek().map(|c| c.generation);
                if Some(s.generation) != stale && Some(s.generation) != current {
                    return Ok(self.adopt(s));
                }
                fleet_generation = s.generation;
            }
        }
        let mut replaced = None;
        if let Some(current) = self.peek() {
            if stale != Some(current.generation) {
                // Someone logged on while we waited, or the 401 came from an
                // older session than the current one.
                return Ok(current);
            }
            if let Err(not_until) = self.relogons.check() {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                tracing::warn!(
                    retry_in_ms = wait.as_millis() as u64,
                    "EM keeps ending the gateway's sessions; re-logon rate-limited"
                );
                return Err(SessionError::RelogonLimited(wait));
            }
            tracing::info!(
                generation = current.generation & !LOCAL_GENERATION,
                "EM session gone; logging on again"
            );
            self.set(None);
            replaced = Some(current);
        }
        if let (Some(at), Some(last)) = (state.retry_at, &state.last_error) {
            let now = Instant::now();
            if now < at {
                if state.refusals >= REFUSALS_BEFORE_PAUSE {
                    return Err(SessionError::Paused {
                        refusals: state.refusals,
                        retry_in: at - now,
                    });
                }
                return Err(SessionError::BackingOff {
                    retry_in_ms: (at - now).as_millis(),
                    last: last.to_string(),
                });
            }
        }
        let logon = match &self.shared {
            Some(store) => {
                self.fleet_logon(store.clone(), fleet_generation, &mut state)
                    .await
            }
            None => self.logon_once().await.map(FleetLogon::Own),
        };
        let logon = match logon {
            Ok(FleetLogon::Adopted(session)) => return Ok(session),
            Ok(FleetLogon::Own(session)) => Ok(session),
            Err(e) => Err(e),
        };
        match logon {
            Ok(session) => {
                self.stats.logons_ok.fetch_add(1, Ordering::Relaxed);
                if state.failures > 0 {
                    tracing::info!(after_failures = state.failures, "EM logon recovered");
                }
                *state = LogonState::default();
                if let Ok(mut f) = self.failure.lock() {
                    *f = None;
                }
                let session = Arc::new(session);
                self.mark_used();
                self.set(Some(session.clone()));
                tracing::info!(
                    generation = session.generation & !LOCAL_GENERATION,
                    shared = session.shared,
                    "logged on to EM"
                );
                if let Some(old) = replaced {
                    self.stats.relogons.fetch_add(1, Ordering::Relaxed);
                    // Best effort: if EM still held it, it should not linger
                    // (unless a pending task still needs it: then whoever
                    // follows the task retires it when the task is over).
                    if !old.pinned() {
                        let this = self.clone();
                        tokio::spawn(async move { this.end(&old).await });
                    }
                }
                Ok(session)
            }
            Err(e) => {
                self.stats.logons_failed.fetch_add(1, Ordering::Relaxed);
                state.failures = state.failures.saturating_add(1);
                let refused = matches!(e, SessionError::Refused);
                if refused {
                    self.stats.logons_refused.fetch_add(1, Ordering::Relaxed);
                    state.refusals = state.refusals.saturating_add(1);
                } else if !matches!(e, SessionError::Paused { .. }) {
                    state.refusals = 0;
                }
                if let SessionError::Paused { refusals, .. } = e {
                    state.refusals = state.refusals.max(refusals);
                }
                let paused = state.refusals >= REFUSALS_BEFORE_PAUSE;
                let wait = if paused {
                    REFUSED_PAUSE
                } else {
                    backoff(state.failures, self.backoff_max)
                };
                let retry_at = Instant::now() + wait;
                state.retry_at = Some(retry_at);
                state.last_error = Some(e.clone());
                let shown = if paused {
                    SessionError::Paused {
                        refusals: state.refusals,
                        retry_in: wait,
                    }
                } else {
                    e.clone()
                };
                if let Ok(mut f) = self.failure.lock() {
                    *f = Some(Failure {
                        error: shown.clone(),
                        retry_at,
                        paused,
                    });
                }
                if let Ok(mut f) = self.last_failure.lock() {
                    *f = Some((SystemTime::now(), shown.to_string()));
                }
                if paused {
                    tracing::error!(
                        refusals = state.refusals,
                        pause_s = wait.as_secs(),
                        "EM refused the gateway's logon repeatedly; logons paused so the EM account is not locked (check the password)"
                    );
                } else {
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "EM logon failed");
                }
                self.lost.notify_one();
                Err(shown)
            }
        }
    }

    /// Makes the fleet's session this replica's.
    fn adopt(&self, s: SharedEmSession) -> Arc<EmSession> {
        let session = Arc::new(EmSession {
            token: s.token,
            id: s.id,
            generation: s.generation,
            shared: true,
            pins: AtomicUsize::new(0),
        });
        self.mark_used();
        self.set(Some(session.clone()));
        if let Ok(mut f) = self.failure.lock() {
            *f = None;
        }
        tracing::info!(
            generation = session.generation,
            "using the fleet's EM session"
        );
        session
    }

    /// Logs on for the fleet: one replica at a time (under a lease), the
    /// others wait for its session; refusals count for the whole fleet, so
    /// N replicas cannot lock the EM account N times faster. With the store
    /// unreachable, a session of this replica's own.
    async fn fleet_logon(
        self: &Arc<Self>,
        store: Arc<dyn SessionStore>,
        fleet_generation: u64,
        state: &mut LogonState,
    ) -> Result<FleetLogon, SessionError> {
        // A password the operator just gave gets one try through the
        // fleet's pause (its success clears the pause for all); the next
        // logon attempt after it, paused or not, uses that try up.
        let fresh = self.new_password.swap(false, Ordering::SeqCst);
        if let Ok(Some((refusals, retry_in))) = store.pause().await {
            if refusals >= REFUSALS_BEFORE_PAUSE && !retry_in.is_zero() && !fresh {
                return Err(SessionError::Paused { refusals, retry_in });
            }
        }
        for _ in 0..2 {
            match store.lease().await {
                Ok(Some(lease)) => {
                    // Someone may have published while we took the lease.
                    if let Ok(Some(s)) = store.load().await {
                        if s.generation != fleet_generation {
                            return Ok(FleetLogon::Adopted(self.adopt(s)));
                        }
                    }
                    let result = self.logon_once().await;
                    let refused = matches!(result, Err(SessionError::Refused));
                    let refusals = store
                        .record(refused, REFUSED_PAUSE)
                        .await
                        .unwrap_or(state.refusals);
                    let session = match result {
                        Ok(s) => s,
                        Err(SessionError::Refused) if refusals >= REFUSALS_BEFORE_PAUSE => {
                            self.stats.logons_refused.fetch_add(1, Ordering::Relaxed);
                            return Err(SessionError::Paused {
                                refusals,
                                retry_in: REFUSED_PAUSE,
                            });
                        }
                        Err(e) => return Err(e),
                    };
                    let published = store
                        .publish(&session.token, session.id.as_deref(), fleet_generation)
                        .await;
                    drop(lease);
                    return match published {
                        Ok(Some(generation)) => Ok(FleetLogon::Own(EmSession {
                            generation,
                            shared: true,
                            ..session
                        })),
                        // Another replica's session made it first: use it,
                        // and do not leave ours open on EM. If it cannot be
                        // read (gone again, or Redis failed in between),
                        // ours serves this replica; the keep-alive loop
                        // stores it for the fleet when the fleet has none.
                        Ok(None) => match store.load().await {
                            Ok(Some(s)) => {
                                self.end(&session).await;
                                Ok(FleetLogon::Adopted(self.adopt(s)))
                            }
                            _ => Ok(FleetLogon::Own(session)),
                        },
                        Err(StoreDown) => Ok(FleetLogon::Own(session)),
                    };
                }
                Ok(None) => match store.wait_newer(fleet_generation, self.fleet_wait).await {
                    Ok(Some(s)) => return Ok(FleetLogon::Adopted(self.adopt(s))),
                    // The lease is free and nothing new was seen. Either
                    // the replica logging on published and let go between
                    // our look and our check of the lease (its session is
                    // there now: take it, or we would log on a second time
                    // and replace it), or it gave no session (it died, or
                    // failed): try the lease ourselves.
                    Ok(None) => {
                        if let Ok(Some(s)) = store.load().await {
                            if s.generation != fleet_generation {
                                return Ok(FleetLogon::Adopted(self.adopt(s)));
                            }
                        }
                        continue;
                    }
                    Err(StoreDown) => break,
                },
                Err(StoreDown) => break,
            }
        }
        self.logon_once().await.map(FleetLogon::Own)
    }

    /// The next logon uses `password` (a reload: the operator rotated it).
    /// This replica's logons backing off or paused after refusals (the old
    /// password) try again at once; in fleet mode it makes one logon
    /// through the fleet's pause, whose success clears it for all (the
    /// fleet's count of refusals is not cleared by the reload itself:
    /// replicas still on the old password stay paused, so a rollout does
    /// not lock the EM account). The session held now stays, as EM keeps
    /// sessions made with a password it has since changed.
    pub async fn set_password(&self, password: Secret) {
        match self.password.write() {
            Ok(mut p) => *p = password,
            Err(e) => *e.into_inner() = password,
        }
        *self.logon.lock().await = LogonState::default();
        if let Ok(mut f) = self.failure.lock() {
            *f = None;
        }
        self.new_password.store(true, Ordering::SeqCst);
        self.renewed.notify_one();
    }

    async fn logon_once(&self) -> Result<EmSession, SessionError> {
        let password = match self.password.read() {
            Ok(p) => p.clone(),
            Err(e) => e.into_inner().clone(),
        };
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.username,
            password.expose()
        ));
        let mut auth = HeaderValue::from_str(&format!("Basic {credentials}")).map_err(|_| {
            SessionError::Upstream("user name or password is not a valid header".into())
        })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        let response = self
            .upstream
            .send(
                Lane::Session,
                Method::POST,
                "/api/sessionMngr/?v=latest",
                headers,
            )
            .await
            .map_err(|e| SessionError::Upstream(e.to_string()))?;
        match response.status {
            StatusCode::CREATED | StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => return Err(SessionError::Refused),
            other => return Err(SessionError::Rejected(other)),
        }
        let token = response
            .headers
            .get(&SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                SessionError::Upstream("logon answer has no X-RestSvcSessionId".into())
            })?;
        Ok(EmSession {
            token: Secret::new(token),
            id: session_id(&response.body),
            generation: LOCAL_GENERATION | (self.generations.fetch_add(1, Ordering::Relaxed) + 1),
            shared: false,
            pins: AtomicUsize::new(0),
        })
    }

    /// Keeps the session alive and logs on again after failures, until
    /// aborted. In fleet mode, one replica touches the fleet's session per
    /// keep-alive period, and a replica that went on alone rejoins the
    /// fleet's session when the store answers again.
    pub async fn maintain(self: Arc<Self>) {
        // The first logon at once (readiness waits for it); later attempts
        // by the backoff, and never in a tight loop.
        let mut first = true;
        loop {
            let Some(session) = self.peek() else {
                let wait = {
                    let state = self.logon.lock().await;
                    state
                        .retry_at
                        .map(|at| at.saturating_duration_since(Instant::now()))
                        .unwrap_or_default()
                };
                if !std::mem::take(&mut first) {
                    tokio::select! {
                        () = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
                        () = self.renewed.notified() => {}
                    }
                }
                if let Err(SessionError::RelogonLimited(wait)) = self.acquire().await {
                    tokio::time::sleep(wait).await;
                }
                continue;
            };
            if let Some(store) = &self.shared {
                self.rejoin(store.clone(), &session).await;
            }
            let idle = self.idle();
            if idle < self.keepalive {
                let wait = self.keepalive - idle;
                // Fleet mode: look at the fleet's session every few seconds
                // (to rejoin it, or to store it again after Redis lost it).
                let wait = match &self.shared {
                    Some(_) => wait.min(REJOIN_EVERY),
                    None => wait,
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.lost.notified() => {}
                }
                continue;
            }
            if let (Some(store), true) = (&self.shared, session.shared) {
                // Another replica used or touched it within the period.
                if let Ok(false) = store.keepalive_due(self.keepalive).await {
                    self.mark_used();
                    continue;
                }
            }
            self.touch(&session).await;
        }
    }

    /// Keeps this replica and the fleet on one session. A replica that went
    /// on alone takes the fleet's session (logging out its own). When the
    /// fleet has none (first of all, or Redis was restarted or emptied), the
    /// session held here becomes the fleet's again, so replicas that start
    /// later use it instead of logging on.
    async fn rejoin(self: &Arc<Self>, store: Arc<dyn SessionStore>, own: &Arc<EmSession>) {
        let _state = self.logon.lock().await;
        if self.peek().map(|c| c.generation) != Some(own.generation) {
            return;
        }
        match store.load().await {
            // The fleet's session is another one: a 401 will bring this
            // replica to it (the generation check), no need to act now.
            Ok(Some(_)) if own.shared => {}
            Ok(Some(s)) => {
                self.adopt(s);
                // Not while a task started with it is still followed: EM
                // would drop the task with the session (its follower
                // retires the session when the task is over).
                if own.pinned() {
                    tracing::info!("rejoined the fleet's EM session; this replica's own is kept for its pending tasks");
                } else {
                    tracing::info!(
                        "rejoined the fleet's EM session; logging out this replica's own"
                    );
                    self.end(own).await;
                }
            }
            Ok(None) => {
                let published = store.publish(&own.token, own.id.as_deref(), 0).await;
                // Another holder of the same session stored it first: take
                // its generation, so the fleet agrees on it.
                if let (Ok(None), true) = (&published, own.shared) {
                    if let Ok(Some(s)) = store.load().await {
                        if s.token.expose() == own.token.expose() {
                            self.set(Some(Arc::new(EmSession {
                                token: own.token.clone(),
                                id: own.id.clone(),
                                generation: s.generation,
                                shared: true,
                                pins: AtomicUsize::new(0),
                            })));
                        }
                    }
                }
                if let Ok(Some(generation)) = published {
                    let session = Arc::new(EmSession {
                        token: own.token.clone(),
                        id: own.id.clone(),
                        generation,
                        shared: true,
                        pins: AtomicUsize::new(0),
                    });
                    self.set(Some(session));
                    if own.shared {
                        tracing::warn!(
                            generation,
                            "the fleet's EM session was gone from the shared tier (restarted or emptied?); stored it again"
                        );
                    } else {
                        tracing::info!(generation, "this replica's EM session is now the fleet's");
                    }
                }
            }
            Err(StoreDown) => {}
        }
    }

    /// The keep-alive: a cheap authenticated GET, so EM's 15-minute idle
    /// timer restarts; if EM refuses it, the session is gone.
    async fn touch(self: &Arc<Self>, session: &Arc<EmSession>) {
        match self.check(session).await {
            Ok(Check::Gone) => {
                let _ = self.logon_replacing(Some(session.generation)).await;
            }
            Ok(Check::Alive) => tracing::debug!("EM session kept alive"),
            Err(e) => {
                tracing::warn!(error = %e, "EM session keep-alive failed");
                // Try again after a short pause rather than spinning.
                tokio::time::sleep(Duration::from_secs(5).min(self.keepalive)).await;
            }
        }
    }

    /// `DELETE /api/logonSessions/{id}` with the session itself.
    async fn end(&self, session: &EmSession) {
        let Some(id) = &session.id else {
            tracing::warn!("EM session id unknown; cannot log out");
            return;
        };
        let mut headers = HeaderMap::new();
        if let Some(v) = session.header() {
            headers.insert(SESSION_HEADER, v);
        }
        match self
            .upstream
            .send(
                Lane::Session,
                Method::DELETE,
                &format!("/api/logonSessions/{id}"),
                headers,
            )
            .await
        {
            Ok(r) if r.status.is_success() => tracing::info!("logged out of EM"),
            Ok(r) => tracing::debug!(status = r.status.as_u16(), "EM logout answered"),
            Err(UpstreamError::Timeout(_)) => tracing::warn!("EM logout timed out"),
            Err(e) => tracing::warn!(error = %e, "EM logout failed"),
        }
    }

    /// Logs the session out of EM at shutdown; no logon happens after it.
    /// In fleet mode the fleet's session is logged out only by the fleet's
    /// last live member (the others still use it); a replica's own session
    /// always is.
    pub async fn logout(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _guard = self.logon.lock().await;
        let last = match &self.shared {
            Some(store) => store.leave().await,
            None => Ok(true),
        };
        let Some(session) = self.peek() else { return };
        self.set(None);
        match (session.shared, last) {
            // Its pending tasks are in the shared tier: another replica can
            // go on following them with it only if it stays open.
            (false, _) if session.pinned() && self.shared.is_some() => {
                tracing::info!("this replica's EM session is kept for pending tasks other replicas may follow (EM ends it when idle)")
            }
            (false, _) | (true, Ok(true)) => {
                self.end(&session).await;
                if let (Some(store), true) = (&self.shared, session.shared) {
                    let _ = store.clear(session.generation).await;
                }
            }
            (true, Ok(false)) => {
                tracing::info!("other replicas still use the fleet's EM session; not logging out")
            }
            (true, Err(StoreDown)) => tracing::warn!(
                "the shared store is unreachable: the fleet's EM session is left to the other replicas (or EM's idle timeout)"
            ),
        }
    }
}

/// Exponential backoff with jitter: between half and all of `base * 2^(n-1)`, capped.
fn backoff(failures: u32, max: Duration) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let full = exp.min(max);
    full / 2 + full.mul_f64(fastrand::f64() / 2.0)
}

/// The `<SessionId>` of a LogonSession document.
fn session_id(body: &[u8]) -> Option<String> {
    element_text(body, b"SessionId")
}

/// The text of the first element named `name` in one of EM's documents
/// (`SessionId` of a logon session, `TaskId` and `State` of a task).
pub fn element_text(body: &[u8], name: &[u8]) -> Option<String> {
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut inside = false;
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).ok()? {
            quick_xml::events::Event::Start(e) => inside = e.local_name().as_ref() == name,
            quick_xml::events::Event::Text(t) if inside => {
                let text = t.unescape().ok()?.trim().to_string();
                return (!text.is_empty()).then_some(text);
            }
            quick_xml::events::Event::End(_) => inside = false,
            quick_xml::events::Event::Eof => return None,
            _ => {}
        }
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let max = Duration::from_secs(10);
        for _ in 0..100 {
            let first = backoff(1, max);
            assert!(
                first >= BACKOFF_BASE / 2 && first <= BACKOFF_BASE,
                "{first:?}"
            );
            let late = backoff(30, max);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
    }

    #[test]
    fn session_id_is_read_from_a_logon_session() {
        let body =
            br#"<LogonSession xmlns="http://www.veeam.com/ent/v1.0"><Links/><UserName>u</UserName>
            <SessionId>15a3fc97-0325-4119-b789-5c0367c6c565</SessionId></LogonSession>"#;
        assert_eq!(
            session_id(body).as_deref(),
            Some("15a3fc97-0325-4119-b789-5c0367c6c565")
        );
        assert_eq!(session_id(b"<LogonSession/>"), None);
        assert_eq!(session_id(b"garbage<"), None);
    }
}
