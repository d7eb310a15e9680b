//! Admin endpoints: `DELETE /admin/cache` and
//! `DELETE /admin/cache/restorePoints/{id}`, behind `Authorization: Bearer
//! <EMGATE_ADMIN_TOKEN>`. Without a configured token they do not exist (404).

use http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{Method, Response, StatusCode};

use crate::cache::RestorePointId;
use crate::error::{error_response, GatewayError};
use crate::response::Body;
use crate::server::App;

/// Answers a request under `/admin/`.
pub async fn handle(app: &App, parts: &Parts, xml: bool) -> Response<Body> {
    let case = app.settings.json_case;
    let path = parts.uri.path();
    let Some(token) = &app.settings.access.admin_token else {
        return GatewayError::NotFound(path.chars().take(200).collect()).into_response(xml, case);
    };
    let presented = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.trim().as_bytes(), token.expose().as_bytes()) {
        let mut r = error_response(
            StatusCode::UNAUTHORIZED,
            "a valid admin bearer token is required",
            xml,
            case,
        );
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"emgate-admin\""),
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
    let target = path.strip_prefix("/admin/cache");
    match target {
        Some("") | Some("/") => {
            app.cache.purge_all();
            tracing::info!("cache purged");
        }
        Some(rest) => {
            let Some(id) = rest
                .strip_prefix("/restorePoints/")
                .map(|s| s.trim_end_matches('/'))
                .and_then(RestorePointId::parse)
            else {
                return GatewayError::NotFound(path.chars().take(200).collect())
                    .into_response(xml, case);
            };
            app.cache.purge(id).await;
            tracing::info!(restore_point = %id, "cache entry purged");
        }
        None => {
            return GatewayError::NotFound(path.chars().take(200).collect())
                .into_response(xml, case)
        }
    }
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// Compares without an early exit, so timing tells nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Hashing first makes the lengths equal and hides the token's length.
    let a = ring::digest::digest(&ring::digest::SHA256, a);
    let b = ring::digest::digest(&ring::digest::SHA256, b);
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"", b"abc"));
    }
}
