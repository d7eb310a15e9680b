//! Admin endpoints: `DELETE /admin/cache` and
//! `DELETE /admin/cache/restorePoints/{id}`, behind the admin token
//! (`EMGATE_ADMIN_TOKEN`), given as `Authorization: Bearer <token>` or as
//! the password of `Authorization: Basic` (any user name, so a browser can
//! open admin pages). Without a configured token they do not exist (404).
//!
//! Admin requests are rate-limited per address before the token is even
//! compared, so guessing it is slow.

use base64::Engine as _;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{Method, Response, StatusCode};

use crate::digest::{constant_time_eq, sha256};
use crate::gateway::app::App;
use crate::gateway::error::{error_response, GatewayError};
use crate::gateway::limit::Bucket;
use crate::gateway::response::Body;
use crate::gateway::restore_points::{self, RestorePointId};
use crate::gateway::router::Conn;
use crate::gateway::router::{purge_all_everywhere, purge_prefix_everywhere};
use crate::gateway::target::Target;
use crate::secret::Secret;

/// Admin requests per second per address, and their burst.
pub const ADMIN_RATE: (u32, u32) = (5, 20);

/// The token a request presents: a bearer token, or a Basic password.
fn presented(headers: &HeaderMap) -> Option<Secret> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Secret::new(rest.trim()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (_, password) = decoded.split_once(':')?;
        return Some(Secret::new(password));
    }
    None
}

/// Whether the request carries the admin token (compared in constant time).
pub fn authorized(app: &App, headers: &HeaderMap) -> bool {
    let Some(token) = &app.settings.access.admin_token else {
        return false;
    };
    let Some(given) = presented(headers) else {
        return false;
    };
    // Hashed first: equal lengths, and the token's length does not show.
    constant_time_eq(
        &sha256(given.expose().trim().as_bytes()),
        &sha256(token.expose().as_bytes()),
    )
}

/// Answers a request under `/admin/`.
pub async fn handle(app: &App, conn: Conn, parts: &Parts, xml: bool) -> Response<Body> {
    let case = app.settings.json_case;
    let path = parts.uri.path();
    if app.settings.access.admin_token.is_none() {
        return GatewayError::NotFound(path.chars().take(200).collect()).into_response(xml, case);
    }
    if let Err(wait) = app.admin_limits.check(&Bucket::Address(conn.peer)) {
        return GatewayError::RateLimited(wait).into_response(xml, case);
    }
    if !authorized(app, &parts.headers) {
        let mut r = error_response(
            StatusCode::UNAUTHORIZED,
            "the admin token is required (Authorization: Bearer <token>, or as the Basic password)",
            xml,
            case,
        );
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"emgate admin\""),
        );
        return r;
    }
    if parts.method != Method::DELETE {
        let mut r = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "admin endpoints take DELETE",
            xml,
            case,
        );
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("DELETE"));
        return r;
    }
    let not_found = || GatewayError::NotFound(path.chars().take(200).collect());
    match path.strip_prefix("/admin/cache") {
        Some("") | Some("/") => match purge_prefix_of(parts.uri.query()) {
            Ok(None) => {
                purge_all_everywhere(app).await;
                tracing::info!("cache purged");
            }
            Ok(Some(prefix)) => {
                tracing::info!(%prefix, "cache entries purged by prefix");
                purge_prefix_everywhere(app, prefix).await;
            }
            Err(e) => return e.into_response(xml, case),
        },
        Some(rest) => {
            let Some(id) = rest
                .strip_prefix("/restorePoints/")
                .map(|s| s.trim_end_matches('/'))
                .and_then(RestorePointId::parse)
            else {
                return not_found().into_response(xml, case);
            };
            // Both forms of its vmRestorePoints, and whatever else of it is cached.
            purge_prefix_everywhere(app, restore_points::key_prefix(id)).await;
            tracing::info!(restore_point = %id, "cache entries purged");
        }
        None => return not_found().into_response(xml, case),
    }
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// `?prefix=/api/...`: the EM path prefix to purge, decoded and checked like
/// any target; `None` without one (purge all).
fn purge_prefix_of(query: Option<&str>) -> Result<Option<String>, GatewayError> {
    let Some(query) = query else {
        return Ok(None);
    };
    let parsed = Target::parse("/api", Some(query))?;
    let mut prefix = None;
    for (name, value) in parsed.query() {
        match (name.as_str(), value) {
            ("prefix", Some(p)) => prefix = Some(p.clone()),
            _ => {
                return Err(GatewayError::BadRequest(format!(
                    "unknown parameter {name:?}; purge takes prefix=/api/..."
                )))
            }
        }
    }
    match prefix {
        None => Ok(None),
        Some(p) => {
            let t = Target::parse(&p, None)?;
            Ok(Some(t.canonical_path()))
        }
    }
}
