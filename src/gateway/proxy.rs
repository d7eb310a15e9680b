//! The `/api` pass-through: a client's GET or HEAD goes to EM with the pooled
//! session, and EM's status and body come back; writes go once, when allowed.
//!
//! Invariants:
//! - EM is sent the canonical encoding of the parsed target (never the
//!   client's bytes) and, by allow-list, only the headers it needs (see
//!   README, "Client access"): the request id, and for a write `Accept-Language`, `Content-Type`
//!   and `Content-Length`. A client's `Authorization`,
//!   `X-RestSvcSessionId`, `Cookie`, `Forwarded`, `X-Forwarded-*`,
//!   `X-HTTP-Method-Override`, `Range`, `If-*` and `Expect` never reach EM.
//! - A client gets, by allow-list, only the EM headers it needs (see
//!   [`crate::gateway::render::client_headers`]): never EM's session token,
//!   cookies or server identity.
//! - A GET that EM answers 401 is replayed once, after the one re-logon that
//!   every concurrent request shares, and only if the session was really gone.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::em::client::{Lane, UpstreamError, UpstreamResponse};
use crate::em::session::{EmError, EmSession, SessionPool};
use crate::gateway::error::GatewayError;
use crate::gateway::render::{self, Representation};
use crate::gateway::response::Body;
use crate::gateway::target::Target;

/// The request id header, the one trace of the client EM may see.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What a write may tell EM of the client's headers. A read tells EM
/// nothing of them: its answer is everybody's (collapsed or cached).
const TO_EM_WRITE: [HeaderName; 3] = [
    header::ACCEPT_LANGUAGE,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
];

/// What EM is told with a request: its id (the one trace of the client
/// EM may see; the id the edge kept or made, never the client's header as
/// sent) and, for a write, the client's headers in `TO_EM_WRITE`.
pub fn to_em(client: &HeaderMap, request_id: &HeaderValue, write: bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    out.insert(X_REQUEST_ID, request_id.clone());
    let extra: &[HeaderName] = if write { &TO_EM_WRITE } else { &[] };
    for name in extra {
        // One value each: a duplicated header is ambiguous, and EM gets none.
        let mut values = client.get_all(name).iter();
        if let (Some(v), None) = (values.next(), values.next()) {
            out.insert(name.clone(), v.clone());
        }
    }
    out
}

/// Forwards a GET or HEAD under `/api` to EM and returns EM's answer,
/// converted for the client (JSON, or XML if preferred) with links to its public base.
pub async fn forward(
    pool: &Arc<SessionPool>,
    method: &Method,
    target: &Target,
    headers: &HeaderMap,
    request_id: &HeaderValue,
    to: &Representation,
) -> Result<Response<Body>, GatewayError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(GatewayError::MethodNotAllowed(method.clone(), "GET, HEAD"));
    }
    let head = method == Method::HEAD;
    let em = pool
        .get(
            &target.canonical(),
            to_em(headers, request_id, false),
            head,
            Lane::Client,
        )
        .await?;
    let base = pool.upstream().base_url();
    if head {
        return Ok(render::head(em, base, to));
    }
    // The conversion's room in the memory budget, held while it runs.
    let _room = pool
        .upstream()
        .reserve(render::conversion_room(&em, to.xml))
        .await
        .map_err(EmError::Upstream)?;
    Ok(render::render(em, base, to)?)
}

/// Methods that change things on EM, forwarded only when writes are allowed.
pub fn is_write(method: &Method) -> bool {
    [Method::POST, Method::PUT, Method::DELETE, Method::PATCH].contains(method)
}

/// Sends a write (restore, job start...) to EM when writes are allowed:
/// the body is read within `max_body` (a write may be sent twice, see
/// [`SessionPool::write`]), and its answer is never cached. EM's answer and
/// the EM session it was made with (EM keeps a task per session).
pub async fn send_write(
    pool: &Arc<SessionPool>,
    method: &Method,
    target: &Target,
    headers: &HeaderMap,
    request_id: &HeaderValue,
    body: Incoming,
    max_body: u64,
) -> Result<(UpstreamResponse, Arc<EmSession>), GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body) {
        return Err(GatewayError::TooLarge(max_body));
    }
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                GatewayError::TooLarge(max_body)
            } else {
                GatewayError::BadRequest("the request body could not be read".into())
            }
        })?
        .to_bytes();
    pool.write(
        method.clone(),
        &target.canonical(),
        to_em(headers, request_id, true),
        body,
    )
    .await
    .map_err(|e| match e {
        EmError::Upstream(UpstreamError::RequestTooLarge) => GatewayError::TooLarge(max_body),
        other => other.into(),
    })
}

/// EM's answer to a write, rendered for the client.
pub async fn render_write(
    pool: &Arc<SessionPool>,
    em: UpstreamResponse,
    to: &Representation,
) -> Result<Response<Body>, GatewayError> {
    let _room = pool
        .upstream()
        .reserve(render::conversion_room(&em, to.xml))
        .await
        .map_err(EmError::Upstream)?;
    Ok(render::render(em, pool.upstream().base_url(), to)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_em_needs_reaches_em() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic Zm9vOmJhcg==".parse().unwrap());
        h.insert("x-restsvcsessionid", "client-token".parse().unwrap());
        h.insert(header::COOKIE, "X-RestSvcSessionId=abc".parse().unwrap());
        h.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("x-http-method-override", "DELETE".parse().unwrap());
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        h.insert(header::FORWARDED, "for=1.2.3.4".parse().unwrap());
        h.insert(header::RANGE, "bytes=0-1".parse().unwrap());
        h.insert(header::IF_NONE_MATCH, "\"x\"".parse().unwrap());
        h.insert(header::EXPECT, "100-continue".parse().unwrap());
        h.insert(header::USER_AGENT, "curl".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "application/xml".parse().unwrap());
        h.insert(header::ACCEPT_LANGUAGE, "de".parse().unwrap());
        // The client's own id is not what goes: the one the edge chose does.
        h.insert("x-request-id", "r1".parse().unwrap());
        let id = HeaderValue::from_static("chosen-1");
        let read = to_em(&h, &id, false);
        let names: Vec<_> = read.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-request-id"]);
        assert_eq!(read[X_REQUEST_ID], "chosen-1");
        let write = to_em(&h, &id, true);
        assert_eq!(write.len(), 3, "{write:?}");
        assert_eq!(write[X_REQUEST_ID], "chosen-1");
        assert!(write.contains_key(header::CONTENT_TYPE));
        assert!(write.contains_key(header::ACCEPT_LANGUAGE));
        // A duplicated header is dropped, not picked from.
        h.append(header::ACCEPT_LANGUAGE, "fr".parse().unwrap());
        assert!(!to_em(&h, &id, true).contains_key(header::ACCEPT_LANGUAGE));
    }
}
