//! Routing: which handler answers a request, and the one log line and
//! metrics per request. `/healthz`, `/readyz` and `/metrics` are answered
//! here; `/api` goes through client access to the cached route or the
//! pass-through; `/admin` to [`crate::gateway::admin`].

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::gateway::access;
use crate::gateway::app::App;
use crate::gateway::error::{error_response, GatewayError};
use crate::gateway::limit::Bucket;
use crate::gateway::render;
use crate::gateway::response::{prefers_xml, Body};
use crate::gateway::restore_points::{self, RestorePointId};

/// Largest request head accepted (hyper answers 431 beyond it).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Sends a request to its handler.
pub async fn route(
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
    let route = route_label(path);
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

/// The route template for a path: a fixed, small set of values (a metrics label).
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        p if restore_points::match_route(p).is_some() => "/api/restorePoints/{id}/vmRestorePoints",
        p if p.starts_with("/api/sessionMngr") => "/api/sessionMngr",
        p if p.starts_with("/api/logonSessions") => "/api/logonSessions",
        p if p == "/api" || p.starts_with("/api/") => "/api/*",
        p if p.starts_with("/admin/") => "/admin/*",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templates() {
        assert_eq!(
            route_label("/api/restorePoints/dc216c04-2e34-478e-8b9b-49a3397ef6f8/vmRestorePoints"),
            "/api/restorePoints/{id}/vmRestorePoints"
        );
        assert_eq!(route_label("/api/backupSessions/123"), "/api/*");
        assert_eq!(route_label("/etc/passwd"), "other");
        assert_eq!(
            crate::ops::metrics::status_label(StatusCode::from_u16(418).unwrap()),
            "4xx"
        );
    }
}
