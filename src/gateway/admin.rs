//! Admin endpoints: `DELETE /admin/cache` and
//! `DELETE /admin/cache/restorePoints/{id}`, behind `Authorization: Bearer
//! <EMGATE_ADMIN_TOKEN>`. Without a configured token they do not exist (404).

use http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{Method, Response, StatusCode};

use crate::digest::{constant_time_eq, sha256};
use crate::gateway::app::App;
use crate::gateway::error::{error_response, GatewayError};
use crate::gateway::response::Body;
use crate::gateway::restore_points::{Form, Key, RestorePointId};

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
    // Hashed first: equal lengths, and the token's length does not show.
    let (presented, expected) = (
        sha256(presented.trim().as_bytes()),
        sha256(token.expose().as_bytes()),
    );
    if !constant_time_eq(&presented, &expected) {
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
            app.cache
                .purge([Form::References, Form::Entity].map(|form| Key { id, form }))
                .await;
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
