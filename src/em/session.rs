//! The pooled EM session (CONTRACT §6): one EM logon serves every client.
//!
//! Invariants this module keeps:
//! - At most one logon is in flight; requests that find the session missing
//!   or expired wait for it instead of starting their own.
//! - Each session carries a generation. A 401 seen with generation `g` only
//!   throws away the session if it is still generation `g`, so a late 401
//!   from an old session never discards a newer one.
//! - While EM refuses logons or is down, attempts are spaced by an
//!   exponential backoff with jitter; requests in between fail at once
//!   (503) instead of hammering EM, and a background task keeps trying so
//!   the gateway recovers by itself.
//! - The EM session token never leaves this module except as the
//!   `X-RestSvcSessionId` header of a request to EM (marked sensitive).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use http::{Method, StatusCode};

use crate::config::UpstreamSettings;
use crate::em::client::{Upstream, UpstreamError};
use crate::secret::Secret;

/// EM's session header.
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("x-restsvcsessionid");

/// First wait after a failed logon; doubles up to the configured maximum.
const BACKOFF_BASE: Duration = Duration::from_millis(250);

/// One EM logon session.
pub struct EmSession {
    /// The `X-RestSvcSessionId` token.
    token: Secret,
    /// The session's GUID, for `DELETE /api/logonSessions/{id}`.
    id: Option<String>,
    /// Increases with every logon; compared when EM answers 401.
    generation: u64,
}

impl EmSession {
    /// The generation of this session.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The header to send to EM with this session.
    pub fn header(&self) -> Option<HeaderValue> {
        let mut v = HeaderValue::from_str(self.token.expose()).ok()?;
        v.set_sensitive(true);
        Some(v)
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
}

/// Counters for the metrics issue.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Successful logons.
    pub logons_ok: AtomicU64,
    /// Failed logons.
    pub logons_failed: AtomicU64,
}

/// Backoff bookkeeping, guarded by the logon lock.
#[derive(Default)]
struct LogonState {
    /// Consecutive failures.
    failures: u32,
    /// No attempt before this instant.
    retry_at: Option<Instant>,
    /// The last failure, repeated to requests during the backoff.
    last_error: Option<SessionError>,
}

/// The shared EM session for all clients.
pub struct SessionPool {
    /// Client to EM.
    upstream: Upstream,
    /// EM account.
    username: String,
    /// EM password.
    password: Secret,
    /// The current session; a std lock because it is held only to clone an `Arc`.
    current: RwLock<Option<Arc<EmSession>>>,
    /// Serialises logons (single flight) and holds the backoff state.
    logon: tokio::sync::Mutex<LogonState>,
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
    closed: std::sync::atomic::AtomicBool,
    /// Logon counters.
    pub stats: SessionStats,
}

impl SessionPool {
    /// A pool that has not logged on yet.
    pub fn new(upstream: Upstream, settings: &UpstreamSettings) -> SessionPool {
        SessionPool {
            upstream,
            username: settings.username.clone(),
            password: settings.password.clone(),
            current: RwLock::new(None),
            logon: tokio::sync::Mutex::new(LogonState::default()),
            generations: AtomicU64::new(0),
            last_used_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            keepalive: settings.keepalive,
            backoff_max: settings.logon_backoff_max,
            lost: tokio::sync::Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
            stats: SessionStats::default(),
        }
    }

    /// The EM client this pool logs on with.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Whether a session is held right now (`/readyz`).
    pub fn is_valid(&self) -> bool {
        self.peek().is_some()
    }

    fn peek(&self) -> Option<Arc<EmSession>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    fn set(&self, session: Option<Arc<EmSession>>) {
        if let Ok(mut c) = self.current.write() {
            *c = session;
        }
    }

    /// Records that EM just saw the session used (postpones the keep-alive).
    pub fn mark_used(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_used_ms.store(ms, Ordering::Relaxed);
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

    /// EM answered 401 to `stale`: get a newer session (one logon for everybody).
    pub async fn renew(
        self: &Arc<Self>,
        stale: &EmSession,
    ) -> Result<Arc<EmSession>, SessionError> {
        self.logon_replacing(Some(stale.generation)).await
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

    async fn logon_locked(&self, stale: Option<u64>) -> Result<Arc<EmSession>, SessionError> {
        let mut state = self.logon.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return Err(SessionError::Closed);
        }
        if let Some(current) = self.peek() {
            if stale != Some(current.generation) {
                // Someone logged on while we waited, or the 401 came from an
                // older session than the current one.
                return Ok(current);
            }
            tracing::info!(
                generation = current.generation,
                "EM session expired; logging on again"
            );
            self.set(None);
        }
        if let (Some(at), Some(last)) = (state.retry_at, &state.last_error) {
            let now = Instant::now();
            if now < at {
                return Err(SessionError::BackingOff {
                    retry_in_ms: (at - now).as_millis(),
                    last: last.to_string(),
                });
            }
        }
        match self.logon_once().await {
            Ok(session) => {
                self.stats.logons_ok.fetch_add(1, Ordering::Relaxed);
                if state.failures > 0 {
                    tracing::info!(after_failures = state.failures, "EM logon recovered");
                }
                *state = LogonState::default();
                let session = Arc::new(session);
                self.mark_used();
                self.set(Some(session.clone()));
                tracing::info!(generation = session.generation, "logged on to EM");
                Ok(session)
            }
            Err(e) => {
                self.stats.logons_failed.fetch_add(1, Ordering::Relaxed);
                state.failures = state.failures.saturating_add(1);
                let wait = backoff(state.failures, self.backoff_max);
                state.retry_at = Some(Instant::now() + wait);
                state.last_error = Some(e.clone());
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "EM logon failed");
                self.lost.notify_one();
                Err(e)
            }
        }
    }

    async fn logon_once(&self) -> Result<EmSession, SessionError> {
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.username,
            self.password.expose()
        ));
        let mut auth = HeaderValue::from_str(&format!("Basic {credentials}")).map_err(|_| {
            SessionError::Upstream("user name or password is not a valid header".into())
        })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        let response = self
            .upstream
            .send(Method::POST, "/api/sessionMngr/?v=latest", headers)
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
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
        })
    }

    /// Keeps the session alive and logs on again after failures, until aborted.
    pub async fn maintain(self: Arc<Self>) {
        loop {
            let Some(session) = self.peek() else {
                let wait = {
                    let state = self.logon.lock().await;
                    state
                        .retry_at
                        .map(|at| at.saturating_duration_since(Instant::now()))
                        .unwrap_or_default()
                };
                tokio::time::sleep(wait).await;
                let _ = self.acquire().await;
                continue;
            };
            let idle = self.idle();
            if idle < self.keepalive {
                tokio::select! {
                    _ = tokio::time::sleep(self.keepalive - idle) => {}
                    _ = self.lost.notified() => {}
                }
                continue;
            }
            self.touch(&session).await;
        }
    }

    /// EM answered 401 to a request that must not be replayed (a write):
    /// log on again only if the session really expired, so a 401 that EM
    /// gives for another reason cannot make the gateway drop its session.
    pub async fn verify(self: &Arc<Self>, session: &EmSession) {
        self.touch(session).await;
    }

    /// A cheap authenticated GET, so EM's 15-minute idle timer restarts.
    async fn touch(self: &Arc<Self>, session: &EmSession) {
        let path = match &session.id {
            Some(id) => format!("/api/logonSessions/{id}"),
            None => "/api/logonSessions".to_string(),
        };
        let mut headers = HeaderMap::new();
        if let Some(v) = session.header() {
            headers.insert(SESSION_HEADER, v);
        }
        match self.upstream.send(Method::GET, &path, headers).await {
            Ok(r) if r.status == StatusCode::UNAUTHORIZED => {
                let _ = self.renew(session).await;
            }
            Ok(r) if r.status.is_success() => {
                tracing::debug!("EM session kept alive");
                self.mark_used();
            }
            Ok(r) => {
                tracing::warn!(
                    status = r.status.as_u16(),
                    "EM session keep-alive got an unexpected answer"
                );
                self.mark_used();
            }
            Err(e) => {
                tracing::warn!(error = %e, "EM session keep-alive failed");
                // Try again after a short pause rather than spinning.
                tokio::time::sleep(Duration::from_secs(5).min(self.keepalive)).await;
            }
        }
    }

    /// Logs the session out of EM (`DELETE /api/logonSessions/{id}`), at
    /// shutdown; no logon happens after it.
    pub async fn logout(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _guard = self.logon.lock().await;
        let Some(session) = self.peek() else { return };
        self.set(None);
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
            .send(Method::DELETE, &format!("/api/logonSessions/{id}"), headers)
            .await
        {
            Ok(r) if r.status.is_success() => tracing::info!("logged out of EM"),
            Ok(r) => tracing::warn!(
                status = r.status.as_u16(),
                "EM logout answered unexpectedly"
            ),
            Err(UpstreamError::Timeout(_)) => tracing::warn!("EM logout timed out"),
            Err(e) => tracing::warn!(error = %e, "EM logout failed"),
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
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut inside = false;
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).ok()? {
            quick_xml::events::Event::Start(e) => inside = e.local_name().as_ref() == b"SessionId",
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
