//! The gateway's listener: accept loop, the tower stack every request goes
//! through, routing, and the graceful drain on shutdown.
//!
//! A request meets, in order: hyper's connection limits (header size and
//! read timeout) → `X-Request-Id` (the client's, or a new one) → one log line
//! per request → [`route`] → the handler for `/healthz`, `/readyz` or `/api`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::config::Settings;
use crate::error::{error_response, GatewayError};
use crate::response::{prefers_xml, Body};
use crate::session::SessionPool;
use crate::upstream::Upstream;

/// Slow clients get this long to send their request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head accepted (hyper answers 431 beyond it).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Shared state of a running gateway.
pub struct App {
    /// Validated settings.
    pub settings: Settings,
    /// The pooled EM session and client.
    pub pool: Arc<SessionPool>,
    /// Set on SIGTERM: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
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
}

/// A gateway bound to its port, not yet serving.
pub struct Gateway {
    /// State shared by every request.
    app: Arc<App>,
    /// The bound listener.
    listener: TcpListener,
}

impl Gateway {
    /// Binds the listener and builds the EM client; logs on in the background once run.
    pub async fn bind(settings: Settings) -> Result<Gateway, StartError> {
        let upstream = Upstream::new(&settings.upstream).map_err(StartError::Upstream)?;
        let pool = Arc::new(SessionPool::new(upstream, &settings.upstream));
        let addr = settings.listen.address;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let app = Arc::new(App {
            settings,
            pool,
            draining: AtomicBool::new(false),
        });
        Ok(Gateway { app, listener })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests
    /// (bounded by the drain timeout) and logs the EM session out.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Gateway { app, listener } = self;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, upstream = %app.pool.upstream().base_url(), "listening");
        }
        let maintenance = tokio::spawn(app.pool.clone().maintain());
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES);
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
            let service = TowerToHyperService::new(stack(app.clone()));
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
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
        app.pool.logout().await;
        tracing::info!("stopped");
    }
}

/// The tower stack around [`route`]; each layer says why it sits where it does.
fn stack(
    app: Arc<App>,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = Infallible>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    ServiceBuilder::new()
        // Outermost, so every log line and every response carries the id.
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // One line per request with method, path, status, latency and id.
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
                .on_request(())
                .on_response(|res: &Response<Body>, latency: Duration, _: &Span| {
                    tracing::info!(
                        status = res.status().as_u16(),
                        latency_ms = latency.as_secs_f64() * 1000.0,
                        "served"
                    );
                })
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        // Copies the id onto the response.
        .layer(PropagateRequestIdLayer::x_request_id())
        .service_fn(move |req| route(app.clone(), req))
}

/// Sends a request to its handler.
async fn route(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, _body) = req.into_parts();
    let xml = prefers_xml(&parts.headers);
    let case = app.settings.json_case;
    let path = parts.uri.path();
    let response = match path {
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/readyz" => readiness(&app, xml),
        p if p == "/api" || p.starts_with("/api/") => {
            if app.draining.load(Ordering::Relaxed) {
                // Connections kept alive through the drain still get an answer.
                Err(GatewayError::Draining)
            } else {
                crate::proxy::forward(&app.pool, &parts).await
            }
            .unwrap_or_else(|e| {
                log_error(&e);
                e.into_response(xml, case)
            })
        }
        other => GatewayError::NotFound(other.chars().take(200).collect()).into_response(xml, case),
    };
    Ok(response)
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
