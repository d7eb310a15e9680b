//! Admin endpoints: the status page (`GET /admin/status`, `.json`),
//! `DELETE /admin/cache` and
//! `DELETE /admin/cache/restorePoints/{id}`, behind the admin token
//! (`EMGATE_ADMIN_TOKEN`), given as `Authorization: Bearer <token>` or as
//! the password of `Authorization: Basic` (any user name, so a browser can
//! open admin pages). Without a configured token they do not exist (404).
//!
//! Admin requests are rate-limited per address before the token is even
//! compared, so guessing it is slow; credentials that fail on `/api` count
//! against the same account ([`crate::gateway::limit::Attempts`]), so the
//! token cannot be guessed there instead.
//!
//! A browser sends a Basic password it was given to every request to the
//! origin, whoever's page asks, so purges also pass a same-origin check
//! (`same_origin`): a page elsewhere cannot make an operator's browser
//! empty the cache.

use http::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{Method, Response, StatusCode};

use crate::gateway::access;
use crate::gateway::app::App;
use crate::gateway::conn::Conn;
use crate::gateway::error::{error_response, GatewayError};
use crate::gateway::reads::{purge_all_everywhere, purge_prefix_everywhere, purge_rule_everywhere};
use crate::gateway::render::{CrossSite, Representation};
use crate::gateway::response::Body;
use crate::gateway::restore_points::{self, RestorePointId};
use crate::gateway::status;
use crate::gateway::target::Target;

/// Admin requests per second per address, and their burst.
pub const ADMIN_RATE: (u32, u32) = (5, 20);

/// Answers a request under `/admin/`, errors in the request's
/// representation (whose public base is the origin purges must come from).
pub async fn handle(app: &App, conn: Conn, parts: &Parts, to: &Representation) -> Response<Body> {
    let (xml, case) = (to.xml, to.case);
    let path = parts.uri.path();
    if !app.access.admin.is_set() {
        return GatewayError::NotFound(path.chars().take(200).collect()).into_response(xml, case);
    }
    if let Err(wait) = app.access.attempts.attempt(conn.peer) {
        return GatewayError::RateLimited(wait).into_response(xml, case);
    }
    if !access::authorized(&app.access.admin, &parts.headers) {
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
    let reading = parts.method == Method::GET || parts.method == Method::HEAD;
    match path {
        "/admin/status" | "/admin/status.json" if reading => {
            let facts = status::facts(app).await;
            let mut r = if path.ends_with(".json") {
                status::json(&facts)
            } else {
                status::html(&facts)
            };
            if parts.method == Method::HEAD {
                *r.body_mut() = Body::default();
            }
            return r;
        }
        "/admin/status" | "/admin/status.json" => {
            return method_not_allowed("GET, HEAD", xml, case);
        }
        _ if parts.method != Method::DELETE => {
            return method_not_allowed("DELETE", xml, case);
        }
        _ => {}
    }
    if let Err(why) = same_origin(&parts.headers, &to.public) {
        tracing::warn!(why, "cross-site purge refused");
        return error_response(StatusCode::FORBIDDEN, why, xml, case);
    }
    let not_found = || GatewayError::NotFound(path.chars().take(200).collect());
    match path.strip_prefix("/admin/cache") {
        Some("") | Some("/") => match purge_target_of(parts.uri.query()) {
            Ok(Purge::All) => {
                if let Err(e) = purge_all_everywhere(&app.reads).await {
                    return e.into_response(xml, case);
                }
                tracing::info!("cache purged");
            }
            Ok(Purge::Prefix(prefix)) => {
                tracing::info!(%prefix, "cache entries purged by prefix");
                if let Err(e) = purge_prefix_everywhere(&app.reads, prefix).await {
                    return e.into_response(xml, case);
                }
            }
            Ok(Purge::Rule(rule)) => match purge_rule_everywhere(&app.reads, &rule).await {
                Ok(true) => tracing::info!(%rule, "cache rule purged"),
                Ok(false) => {
                    return GatewayError::NotFound(format!("/admin/cache?rule={rule}"))
                        .into_response(xml, case);
                }
                Err(e) => return e.into_response(xml, case),
            },
            Err(e) => return e.into_response(xml, case),
        },
        Some(rest) => {
            const POINTS: &str = "/restorePoints/";
            let Some(id) = rest
                .get(..POINTS.len())
                .filter(|p| p.eq_ignore_ascii_case(POINTS))
                .map(|_| &rest[POINTS.len()..])
                .map(|s| s.trim_end_matches('/'))
                .and_then(RestorePointId::parse)
            else {
                return not_found().into_response(xml, case);
            };
            // Both forms of its vmRestorePoints, and whatever else of it is cached.
            if let Err(e) =
                purge_prefix_everywhere(&app.reads, restore_points::key_prefix(id)).await
            {
                return e.into_response(xml, case);
            }
            tracing::info!(restore_point = %id, "cache entries purged");
        }
        None => return not_found().into_response(xml, case),
    }
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn method_not_allowed(
    allow: &'static str,
    xml: bool,
    case: crate::config::JsonCase,
) -> Response<Body> {
    let mut r = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("this admin endpoint takes {allow}"),
        xml,
        case,
    );
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Whether a purge may come from where it says it does
/// ([`crate::gateway::render::from_own_pages`]).
fn same_origin(headers: &HeaderMap, public: &str) -> Result<(), &'static str> {
    crate::gateway::render::from_own_pages(headers, public).map_err(|how| match how {
        CrossSite::SecFetchSite => {
            "purges are taken only from the gateway's own pages (Sec-Fetch-Site)"
        }
        CrossSite::Origin => "purges are taken only from the gateway's own pages (Origin)",
    })
}

/// What a `DELETE /admin/cache` purges.
enum Purge {
    /// Everything.
    All,
    /// Entries whose EM path is this or under it.
    Prefix(String),
    /// A rule's entries.
    Rule(String),
}

/// `?prefix=/api/...` (decoded and checked like any target) or
/// `?rule=name`; nothing: everything.
fn purge_target_of(query: Option<&str>) -> Result<Purge, GatewayError> {
    let Some(query) = query else {
        return Ok(Purge::All);
    };
    let parsed = Target::parse("/api", Some(query))?;
    match parsed.query() {
        [] => Ok(Purge::All),
        [(name, Some(p))] if name == "prefix" => {
            let t = Target::parse(p, None)?;
            // `/api/reports/` is `/api/reports`: a prefix is whole segments.
            let path = t.canonical_path();
            let path = path.trim_end_matches('/');
            Ok(Purge::Prefix(
                if path.is_empty() { "/" } else { path }.to_string(),
            ))
        }
        [(name, Some(r))] if name == "rule" => Ok(Purge::Rule(r.clone())),
        _ => Err(GatewayError::BadRequest(
            "purge takes prefix=/api/... or rule=NAME (or nothing: everything)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn scripts_without_browser_headers_may_purge() {
        assert!(same_origin(&headers(&[]), "http://gw:8080").is_ok());
    }

    #[test]
    fn the_gateways_own_page_may_purge() {
        let h = headers(&[
            ("origin", "http://gw:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(same_origin(&h, "http://gw:8080").is_ok());
        // A public URL with a path (path-rewriting ingress): its origin.
        let h = headers(&[("origin", "https://ops.example")]);
        assert!(same_origin(&h, "https://ops.example/emgate").is_ok());
    }

    #[test]
    fn behind_a_tls_proxy_the_browsers_same_origin_is_enough() {
        // The gateway thinks it is http://10.0.0.5:9399; the page is https.
        let h = headers(&[
            ("origin", "https://emgate.corp"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(same_origin(&h, "http://10.0.0.5:9399").is_ok());
    }

    #[test]
    fn another_sites_page_may_not() {
        let h = headers(&[("origin", "https://evil.example")]);
        assert!(same_origin(&h, "http://gw:8080").is_err());
        let h = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(same_origin(&h, "http://gw:8080").is_err());
        let h = headers(&[("sec-fetch-site", "same-site")]);
        assert!(same_origin(&h, "http://gw:8080").is_err());
        let h = headers(&[("origin", "null")]);
        assert!(same_origin(&h, "http://gw:8080").is_err());
    }
}
