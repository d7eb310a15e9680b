//! The gateway's listener: accept loop, the tower stack every request goes
//! through, routing, and the graceful drain on shutdown.
//!
//! A request meets, in order: hyper's connection limits (header size and
//! read timeout) → `X-Request-Id` (the client's, or a new one) → one log line
//! per request → [`route`] → the handler for `/healthz`, `/readyz` or `/api`.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::cache::{RestorePointId, VmPointsCache};
use crate::config::Settings;
use crate::em::client::Upstream;
use crate::em::session::SessionPool;
use crate::gateway::access;
use crate::gateway::error::{error_response, GatewayError};
use crate::gateway::limit::{Bucket, ClientLimits};
use crate::gateway::logon::ClientSessions;
use crate::gateway::render;
use crate::gateway::request_id::ProcessUniqueId;
use crate::gateway::response::{prefers_xml, Body};
use crate::gateway::restore_points;

/// Slow clients get this long to send their request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for EM's logout at shutdown.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (hyper answers 431 beyond it).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Shared state of a running gateway.
pub struct App {
    /// Validated settings.
    pub settings: Settings,
    /// The pooled EM session and client.
    pub pool: Arc<SessionPool>,
    /// The vmRestorePoints cache.
    pub cache: VmPointsCache,
    /// Set on SIGTERM: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    /// Renders `/metrics` (`None` if another metrics recorder owns the process).
    pub metrics: Option<PrometheusHandle>,
    /// Gateway sessions of clients (drop-in logon).
    pub sessions: ClientSessions,
    /// Per-client rate limits.
    pub limits: ClientLimits,
    /// The address actually bound (the fallback for links when a request names no host).
    pub local_addr: SocketAddr,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The EM client could not be built (TLS setup).
    #[error("upstream: {0}")]
    Upstream(String),
    /// The HTTPS listener's certificate or key is unusable.
    #[error("EMGATE_TLS_CERT_FILE/EMGATE_TLS_KEY_FILE: {0}")]
    Tls(String),
}

/// A gateway bound to its port, not yet serving.
pub struct Gateway {
    /// State shared by every request.
    app: Arc<App>,
    /// The bound listener.
    listener: TcpListener,
    /// TLS for the listener, when HTTPS is configured.
    tls: Option<TlsAcceptor>,
}

impl Gateway {
    /// Binds the listener and builds the EM client; logs on in the background once run.
    pub async fn bind(settings: Settings) -> Result<Gateway, StartError> {
        let upstream = Upstream::new(&settings.upstream).map_err(StartError::Upstream)?;
        let tls = match &settings.tls {
            Some(t) => Some(crate::gateway::listen_tls::acceptor(t).map_err(StartError::Tls)?),
            None => None,
        };
        let pool = Arc::new(SessionPool::new(upstream, &settings.upstream));
        let addr = settings.listen.address;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let settings_rate = (settings.access.rate_limit, settings.access.rate_burst);
        let local_addr = listener.local_addr().unwrap_or(addr);
        let app = Arc::new(App {
            cache: VmPointsCache::new(&settings.cache),
            settings,
            pool,
            draining: AtomicBool::new(false),
            metrics: crate::ops::metrics::install(),
            sessions: ClientSessions::default(),
            limits: ClientLimits::new(settings_rate.0, settings_rate.1),
            local_addr,
        });
        Ok(Gateway { app, listener, tls })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests
    /// (bounded by the drain timeout) and logs the EM session out.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Gateway { app, listener, tls } = self;
        if let Ok(addr) = listener.local_addr() {
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!(%addr, scheme, upstream = %app.pool.upstream().base_url(), "listening");
        }
        tracing::info!(settings = %app.settings.summary(), "effective settings");
        let maintenance = tokio::spawn(app.pool.clone().maintain());
        let discovery = tokio::spawn(log_em_version(app.pool.clone()));
        let housekeeping = tokio::spawn(housekeeping(app.clone()));
        // One semaphore for the whole process, shared by every connection.
        let concurrency = Arc::new(Semaphore::new(app.settings.listen.max_concurrency));
        let request_ids = ProcessUniqueId::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEAD_BYTES as u32);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: pause instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(stack(
                app.clone(),
                peer,
                concurrency.clone(),
                request_ids.clone(),
            ));
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let tls = tls.clone();
            tokio::spawn(async move {
                let result = match tls {
                    None => {
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls_stream)) => {
                                let conn = builder.serve_connection_with_upgrades(
                                    TokioIo::new(tls_stream),
                                    service,
                                );
                                watcher.watch(conn.into_owned()).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                Ok(())
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                Ok(())
                            }
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        app.draining.store(true, Ordering::SeqCst);
        drop(listener);
        let drain = app.settings.listen.drain_timeout;
        tracing::info!(
            drain_timeout_ms = drain.as_millis() as u64,
            "shutting down: draining in-flight requests"
        );
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached; closing remaining connections");
        }
        maintenance.abort();
        housekeeping.abort();
        discovery.abort();
        // Bounded: a hung EM must not hold the pod past its grace period
        // (an abandoned session expires on EM's side anyway).
        if tokio::time::timeout(LOGOUT_TIMEOUT, app.pool.logout())
            .await
            .is_err()
        {
            tracing::warn!("EM logout did not finish in time; leaving the session to expire");
        }
        tracing::info!("stopped");
    }
}

/// The tower stack around [`route`]; each layer says why it sits where it does.
fn stack(
    app: Arc<App>,
    peer: SocketAddr,
    concurrency: Arc<Semaphore>,
    request_ids: ProcessUniqueId,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = Infallible>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    ServiceBuilder::new()
        // Outermost, so every log line and every response carries the id.
        .layer(SetRequestIdLayer::x_request_id(request_ids))
        // A span per request, so every log line made while serving it
        // carries the request id.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<Incoming>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        request_id = %id
                    )
                })
                // The one line per request is written by `route`, which
                // knows the route template and the cache result.
                .on_request(())
                .on_response(())
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        // Copies the id onto the response.
        .layer(PropagateRequestIdLayer::x_request_id())
        // Innermost: bounds the requests being worked on across all
        // connections; the rest wait their turn (after being logged in).
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(concurrency))
        .service_fn(move |req| route(app.clone(), peer.ip(), req))
}

/// Sends a request to its handler.
async fn route(
    app: Arc<App>,
    peer: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let xml = prefers_xml(&parts.headers);
    let path = parts.uri.path();
    let response = match path {
        // hyper's own limit depends on how the bytes arrive; this one does not.
        _ if head_size(&parts) > MAX_HEAD_BYTES => {
            GatewayError::HeadersTooLarge(MAX_HEAD_BYTES).into_response(xml, app.settings.json_case)
        }
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/readyz" => readiness(&app, xml),
        "/metrics" => metrics(&app).await,
        p if p == "/api" || p.starts_with("/api/") => api(&app, peer, &parts, body, xml).await,
        p if p == "/admin" || p.starts_with("/admin/") => {
            crate::gateway::admin::handle(&app, &parts, xml).await
        }
        other => GatewayError::NotFound(other.chars().take(200).collect())
            .into_response(xml, app.settings.json_case),
    };
    let route = crate::ops::metrics::route_label(path);
    let elapsed = started.elapsed();
    crate::ops::metrics::request(route, response.status(), elapsed);
    tracing::info!(
        method = %parts.method,
        path,
        route,
        status = response.status().as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        client = response
            .extensions()
            .get::<ClientLabel>()
            .map_or("-", |c| c.0.as_str()),
        cache = response
            .headers()
            .get(&restore_points::X_CACHE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        "request"
    );
    Ok(response)
}

/// `/api/...`: the drop-in logon, the caller's logon sessions, the cached
/// route or the pass-through, each after the checks that apply to it.
async fn api(
    app: &Arc<App>,
    peer: IpAddr,
    parts: &Parts,
    body: Incoming,
    xml: bool,
) -> Response<Body> {
    let public = render::public_base(
        &app.settings,
        parts,
        app.settings.tls.is_some(),
        app.local_addr,
    );
    let mut client = None;
    let result = async {
        if app.draining.load(Ordering::Relaxed) {
            // Connections kept alive through the drain still get an answer.
            return Err(GatewayError::Draining);
        }
        let path = parts.uri.path();
        crate::gateway::path::check_api_path(path, parts.uri.query())?;
        if access::is_logon_path(path) {
            // Logons are limited by address: each makes a session to keep.
            app.limits
                .check(&Bucket::Address(peer))
                .map_err(GatewayError::RateLimited)?;
            return access::logon(app, parts, xml, &public);
        }
        let read = parts.method == Method::GET || parts.method == Method::HEAD;
        // EM's entry point needs no session on EM either: clients read it to find the logon link.
        let entry_point = read && (path == "/api" || path == "/api/");
        let caller = if entry_point {
            access::Caller::Anonymous
        } else {
            access::authenticate(app, &parts.headers)?
        };
        client = Some(caller.owner().to_string());
        app.limits
            .check(&caller.bucket(peer))
            .map_err(GatewayError::RateLimited)?;
        if access::is_logon_sessions_path(path) {
            return access::logon_sessions(app, &caller, parts, xml, &public);
        }
        // Every restore point ID is checked before EM sees it, not only the cached route's.
        let id = restore_points::restore_point_segment(path)
            .map(|segment| {
                RestorePointId::parse(segment).ok_or_else(|| {
                    GatewayError::BadRequest("the restore point ID must be a UUID".into())
                })
            })
            .transpose()?;
        if let (Some(id), true) = (id, restore_points::match_route(path).is_some()) {
            if let (true, Some(form)) = (read, restore_points::form_of(parts.uri.query())) {
                return Ok(restore_points::serve(app, parts, id, form, xml, &public).await);
            }
        }
        let case = app.settings.json_case;
        if crate::gateway::proxy::is_write(&parts.method) && app.settings.access.allow_writes {
            let limit = app.settings.access.max_request_body;
            return crate::gateway::proxy::forward_write(
                &app.pool, parts, body, limit, xml, &public, case,
            )
            .await;
        }
        crate::gateway::proxy::forward(&app.pool, parts, xml, &public, case).await
    }
    .await;
    let mut response = result.unwrap_or_else(|e| {
        log_error(&e);
        e.to_response(xml, app.settings.json_case, &public)
    });
    if let Some(name) = client {
        response.extensions_mut().insert(ClientLabel(name));
    }
    response
}

/// Who made a request, for its log line.
#[derive(Clone)]
struct ClientLabel(String);

/// Bytes of a request's head: target and headers.
fn head_size(parts: &Parts) -> usize {
    let headers: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    headers + parts.uri.path_and_query().map_or(0, |p| p.as_str().len())
}

/// Once logged on, logs which API versions EM offers (operators want to
/// know what they are talking to; the JSON case must match the EM version).
async fn log_em_version(pool: Arc<SessionPool>) {
    while !pool.is_valid() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match pool.upstream().api_versions().await {
        Ok(versions) => tracing::info!(
            api_versions = %versions.join(","),
            latest = versions.last().map(String::as_str).unwrap_or("unknown"),
            "Enterprise Manager found"
        ),
        Err(e) => tracing::warn!(error = %e, "could not read EM's entry point"),
    }
}

/// Periodic upkeep: rate-limit buckets of clients that went quiet.
async fn housekeeping(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        app.limits.shrink();
    }
}

async fn metrics(app: &App) -> Response<Body> {
    let Some(handle) = &app.metrics else {
        return plain(
            StatusCode::NOT_FOUND,
            "metrics are not available in this process\n",
        );
    };
    // moka's counts trail its inserts until its housekeeping runs.
    app.cache.settle().await;
    let stats = &app.cache.stats;
    let snapshot = crate::ops::metrics::Snapshot {
        cache_hits: stats.hits.load(Ordering::Relaxed),
        cache_misses: stats.misses.load(Ordering::Relaxed),
        cache_stale: stats.stale.load(Ordering::Relaxed),
        cache_entries: app.cache.entry_count(),
        cache_bytes: app.cache.weighted_size(),
        logons_ok: app.pool.stats.logons_ok.load(Ordering::Relaxed),
        logons_failed: app.pool.stats.logons_failed.load(Ordering::Relaxed),
        session_valid: app.pool.is_valid(),
        client_sessions: app.sessions.count() as u64,
    };
    let mut r = Response::new(Body::new(Bytes::from(crate::ops::metrics::render(
        handle, &snapshot,
    ))));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn log_error(e: &GatewayError) {
    match e.status().as_u16() {
        500.. => tracing::warn!(error = %e, "request failed"),
        _ => tracing::debug!(error = %e, "request refused"),
    }
}

fn readiness(app: &App, xml: bool) -> Response<Body> {
    if app.draining.load(Ordering::Relaxed) {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            xml,
            app.settings.json_case,
        );
    }
    if app.pool.is_valid() {
        plain(StatusCode::OK, "ready\n")
    } else {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no Enterprise Manager session",
            xml,
            app.settings.json_case,
        )
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
