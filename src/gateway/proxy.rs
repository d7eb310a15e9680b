//! The `/api` pass-through: a client's GET or HEAD goes to EM with the pooled
//! session, and EM's status and body come back.
//!
//! Invariants:
//! - A client's `Authorization`, `X-RestSvcSessionId` and `Cookie` never
//!   reach EM, and EM's session token (its `Set-Cookie`, its
//!   `X-RestSvcSessionId`) never reaches a client.
//! - Hop-by-hop headers are dropped both ways.
//! - A GET that EM answers 401 is replayed once, after the one re-logon that
//!   every concurrent request shares.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::config::JsonCase;
use crate::em::client::{UpstreamError, UpstreamResponse};
use crate::em::session::{SessionPool, SESSION_HEADER};
use crate::gateway::error::GatewayError;
use crate::gateway::render;
use crate::gateway::response::Body;

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Client headers that carry the client's own credentials or are set by us.
const NEVER_TO_EM: [HeaderName; 7] = [
    header::AUTHORIZATION,
    header::COOKIE,
    SESSION_HEADER,
    header::HOST,
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::CONTENT_LENGTH,
];

/// EM headers that carry EM's session or are recomputed for the client.
const NEVER_TO_CLIENT: [HeaderName; 5] = [
    header::SET_COOKIE,
    SESSION_HEADER,
    header::CONTENT_LENGTH,
    header::WWW_AUTHENTICATE,
    // EM's server software and version are none of the client's business.
    header::SERVER,
];

/// Forwards a GET or HEAD under `/api` to EM and returns EM's answer,
/// converted for the client (JSON, or XML if preferred) with links to `public`.
pub async fn forward(
    pool: &Arc<SessionPool>,
    parts: &Parts,
    xml: bool,
    public: &str,
    case: JsonCase,
) -> Result<Response<Body>, GatewayError> {
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return Err(GatewayError::MethodNotAllowed(
            parts.method.clone(),
            "GET, HEAD",
        ));
    }
    crate::gateway::path::check_api_path(parts.uri.path(), parts.uri.query())?;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/api/");
    let mut em = fetch(pool, path_and_query, to_em(&parts.headers)).await?;
    em.headers = filtered(&em.headers, &NEVER_TO_CLIENT);
    let mut response = render::render(em, pool.upstream().base_url(), public, xml, case)?;
    if parts.method == Method::HEAD {
        *response.body_mut() = Body::default();
    }
    Ok(response)
}

/// Methods that change things on EM, forwarded only when writes are allowed.
pub fn is_write(method: &Method) -> bool {
    [Method::POST, Method::PUT, Method::DELETE, Method::PATCH].contains(method)
}

/// Forwards a write (restore, job start...) when writes are allowed: the
/// body is streamed to EM within `max_body`, the request is never retried
/// (not even after EM's 401) and its answer is never cached.
pub async fn forward_write(
    pool: &Arc<SessionPool>,
    parts: &Parts,
    body: Incoming,
    max_body: u64,
    xml: bool,
    public: &str,
    case: JsonCase,
) -> Result<Response<Body>, GatewayError> {
    crate::gateway::path::check_api_path(parts.uri.path(), parts.uri.query())?;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body) {
        return Err(GatewayError::TooLarge(max_body));
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/api/");
    let session = pool.acquire().await?;
    let mut headers = to_em(&parts.headers);
    if let Some(len) = declared {
        headers.insert(header::CONTENT_LENGTH, len.into());
    }
    if let Some(token) = session.header() {
        headers.insert(SESSION_HEADER, token);
    }
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let body = Limited::new(body, limit).boxed();
    let em = pool
        .upstream()
        .send_with_body(parts.method.clone(), path_and_query, headers, body)
        .await
        .map_err(|e| match e {
            UpstreamError::RequestTooLarge => GatewayError::TooLarge(max_body),
            other => GatewayError::Upstream(other),
        })?;
    if em.status == StatusCode::UNAUTHORIZED {
        // EM refused the session before doing anything; if it expired, log
        // on again for the next request, but never send a write twice.
        pool.verify(&session).await;
        return Err(GatewayError::WriteNotReplayed);
    }
    pool.mark_used();
    let mut em = em;
    em.headers = filtered(&em.headers, &NEVER_TO_CLIENT);
    Ok(render::render(
        em,
        pool.upstream().base_url(),
        public,
        xml,
        case,
    )?)
}

/// GETs `path_and_query` from EM with the pooled session, replaying once after a re-logon.
pub async fn fetch(
    pool: &Arc<SessionPool>,
    path_and_query: &str,
    headers: HeaderMap,
) -> Result<UpstreamResponse, GatewayError> {
    let mut session = pool.acquire().await?;
    for attempt in 0..2 {
        let mut request_headers = headers.clone();
        if let Some(token) = session.header() {
            request_headers.insert(SESSION_HEADER, token);
        }
        // HEAD is asked of EM as GET: its REST service documents only GET.
        let response = pool
            .upstream()
            .send(Method::GET, path_and_query, request_headers)
            .await?;
        if response.status != StatusCode::UNAUTHORIZED {
            pool.mark_used();
            return Ok(response);
        }
        if attempt == 0 {
            session = pool.renew(&session).await?;
        }
    }
    tracing::warn!("EM answered 401 to a freshly logged-on session");
    Err(GatewayError::SessionRejected)
}

fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

fn filtered(from: &HeaderMap, drop: &[HeaderName]) -> HeaderMap {
    let listed = connection_listed(from);
    let mut out = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if HOP_BY_HOP.contains(name) || drop.contains(name) || listed.contains(name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The client's headers as EM may see them.
pub fn to_em(client: &HeaderMap) -> HeaderMap {
    filtered(client, &NEVER_TO_EM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_hop_by_hop_headers_never_reach_em() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic Zm9vOmJhcg==".parse().unwrap());
        h.insert(SESSION_HEADER, "client-token".parse().unwrap());
        h.insert(header::COOKIE, "X-RestSvcSessionId=abc".parse().unwrap());
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("x-request-id", "r1".parse().unwrap());
        h.insert(header::USER_AGENT, "curl".parse().unwrap());
        let out = to_em(&h);
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(out.contains_key("x-request-id") && out.contains_key(header::USER_AGENT));
    }
}
