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

use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::{Method, Response, StatusCode};

use crate::error::GatewayError;
use crate::response::Body;
use crate::session::{SessionPool, SESSION_HEADER};
use crate::upstream::UpstreamResponse;

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
const NEVER_TO_CLIENT: [HeaderName; 4] = [
    header::SET_COOKIE,
    SESSION_HEADER,
    header::CONTENT_LENGTH,
    header::WWW_AUTHENTICATE,
];

/// Forwards a GET or HEAD under `/api` to EM and returns EM's answer.
pub async fn forward(pool: &SessionPool, parts: &Parts) -> Result<Response<Body>, GatewayError> {
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return Err(GatewayError::MethodNotAllowed(parts.method.clone()));
    }
    crate::path::check_api_path(parts.uri.path(), parts.uri.query())?;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/api/");
    let headers = to_em(&parts.headers);
    let em = fetch(pool, path_and_query, headers).await?;
    Ok(to_client(em, parts.method == Method::HEAD))
}

/// GETs `path_and_query` from EM with the pooled session, replaying once after a re-logon.
pub async fn fetch(
    pool: &SessionPool,
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

/// EM's answer as the client sees it.
fn to_client(em: UpstreamResponse, head: bool) -> Response<Body> {
    let mut response = Response::new(if head {
        Body::default()
    } else {
        Body::new(em.body)
    });
    *response.status_mut() = em.status;
    *response.headers_mut() = filtered(&em.headers, &NEVER_TO_CLIENT);
    response
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
