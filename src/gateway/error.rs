//! Errors the gateway makes itself, and the one place they become HTTP
//! responses in EM's error shape (see README, "HTTP surface").

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Method, Response, StatusCode};

use crate::config::JsonCase;
use crate::convert::ConvertError;
use crate::em::client::UpstreamError;
use crate::em::session::{EmError, SessionError};
use crate::gateway::render::{Prepared, Representation};
use crate::gateway::response::Body;

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed (bad path, bad ID).
    #[error("{0}")]
    BadRequest(String),
    /// No or wrong client credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The caller is known but may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The request body is larger than allowed.
    #[error("the request body exceeds the {0}-byte limit")]
    TooLarge(u64),
    /// An anonymous gateway was addressed by a name other than loopback's.
    #[error("this gateway serves anonymous callers and answers only requests addressed to 127.0.0.1, [::1] or localhost")]
    Misdirected,
    /// The request's headers are larger than allowed.
    #[error("the request headers exceed {0} bytes")]
    HeadersTooLarge(usize),
    /// The client is over its rate.
    #[error("too many requests; retry in {} s", .0.as_secs().max(1))]
    RateLimited(std::time::Duration),
    /// Nothing lives at this path.
    #[error("the resource {0} does not exist on this gateway")]
    NotFound(String),
    /// The method is not served here.
    #[error("the {0} method is not allowed here (allowed: {1}); writes reach EM only with EMGATE_ALLOW_WRITES=true")]
    MethodNotAllowed(Method, &'static str),
    /// No EM session could be had.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// EM could not be asked or answered unusably.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// EM refused even a freshly made session.
    #[error("Enterprise Manager rejected the gateway's new session")]
    SessionRejected,
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    Draining,
    /// A purge or logout reached this replica but not the fleet's shared
    /// tier yet (it is retried meanwhile): never answered as done.
    #[error("{0} on this replica, but the fleet's shared tier (Redis) could not be reached yet; it is retried in the background: send the request again to confirm")]
    NotEverywhere(&'static str),
    /// What the request asks about may be kept only in the fleet's shared
    /// tier, which does not answer now: not knowing is not "not found".
    #[error("{0} may be kept by another replica, and the fleet's shared tier (Redis) cannot be reached now: send the request again shortly")]
    SharedDown(&'static str),
    /// EM answered something that is not one of its documents.
    #[error("Enterprise Manager answered with a document the gateway cannot read: {0}")]
    BadUpstream(#[from] ConvertError),
    /// EM answered an error status; its own error document goes to the client.
    #[error("Enterprise Manager answered {status}")]
    Em {
        /// EM's status.
        status: StatusCode,
        /// EM's answer, converted.
        prepared: Box<Prepared>,
    },
    /// Another replica's fetch of this answer, which this request waited
    /// for, failed a moment ago with this status (EM was not asked again).
    #[error("Enterprise Manager failed to give this answer a moment ago ({0}); try again shortly")]
    FailedElsewhere(StatusCode),
    /// A bug: a broken internal invariant (never expected).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl GatewayError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            GatewayError::TooLarge(_) | GatewayError::Upstream(UpstreamError::RequestTooLarge) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            GatewayError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Session(_)
            | GatewayError::SessionRejected
            | GatewayError::Draining
            | GatewayError::NotEverywhere(_)
            | GatewayError::SharedDown(_)
            | GatewayError::Upstream(UpstreamError::Saturated(_))
            | GatewayError::Upstream(UpstreamError::Dropped) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Upstream(UpstreamError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Upstream(_) | GatewayError::BadUpstream(_) => StatusCode::BAD_GATEWAY,
            GatewayError::Em { status, .. } | GatewayError::FailedElsewhere(status) => *status,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message a client sees: transport and TLS details (EM's address,
    /// certificate problems) stay in the gateway's log.
    pub fn client_message(&self) -> String {
        const LOG: &str = "the gateway's log has the details";
        match self {
            GatewayError::Upstream(UpstreamError::Unreachable(_)) => {
                format!("cannot reach Enterprise Manager ({LOG})")
            }
            GatewayError::Session(SessionError::Upstream(_)) => {
                format!("Enterprise Manager logon failed ({LOG})")
            }
            GatewayError::Session(SessionError::BackingOff { retry_in_ms, .. }) => format!(
                "Enterprise Manager logon is failing; the gateway tries again in {retry_in_ms} ms ({LOG})"
            ),
            GatewayError::BadUpstream(_) => {
                format!("Enterprise Manager answered with a document the gateway cannot read ({LOG})")
            }
            other => other.to_string(),
        }
    }

    /// The error as a response in EM's shape, XML or JSON as the client prefers.
    /// For errors found before the request's [`Representation`] is known
    /// (its host unchecked, so no links).
    pub fn into_response(self, xml: bool, case: JsonCase) -> Response<Body> {
        self.answer(xml, case, "")
    }

    /// As [`GatewayError::into_response`], for shared errors, in the
    /// request's representation (its public base for links in EM's own
    /// error documents).
    pub fn to_response(&self, to: &Representation) -> Response<Body> {
        self.answer(to.xml, to.case, &to.public)
    }

    fn answer(&self, xml: bool, case: JsonCase, public: &str) -> Response<Body> {
        if let GatewayError::Em { status, prepared } = self {
            let (body, content_type) = prepared.body_for(xml, public);
            let mut response = Response::new(Body::new(body));
            *response.status_mut() = *status;
            if let Some(t) = content_type {
                response.headers_mut().insert(CONTENT_TYPE, t);
            }
            return response;
        }
        let status = self.status();
        let mut response = error_response(status, &self.client_message(), xml, case);
        let headers = response.headers_mut();
        match self {
            GatewayError::MethodNotAllowed(_, allowed) => {
                headers.insert(ALLOW, HeaderValue::from_static(allowed));
            }
            GatewayError::Unauthorized(_) => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"emgate\""),
                );
            }
            GatewayError::RateLimited(wait) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
            }
            GatewayError::Upstream(UpstreamError::Saturated(_))
            | GatewayError::Upstream(UpstreamError::Dropped) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::NotEverywhere(_) | GatewayError::SharedDown(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
            }
            GatewayError::Session(e) => {
                let wait = e.retry_in().map_or(1, |d| d.as_secs().max(1));
                headers.insert(RETRY_AFTER, HeaderValue::from(wait));
            }
            _ => {}
        }
        response
    }
}

impl From<EmError> for GatewayError {
    fn from(e: EmError) -> Self {
        match e {
            EmError::Session(e) => GatewayError::Session(e),
            EmError::Upstream(e) => GatewayError::Upstream(e),
            EmError::SessionRejected => GatewayError::SessionRejected,
        }
    }
}

impl From<crate::gateway::target::BadTarget> for GatewayError {
    fn from(e: crate::gateway::target::BadTarget) -> Self {
        GatewayError::BadRequest(e.to_string())
    }
}

impl From<crate::gateway::host::BadHost> for GatewayError {
    fn from(e: crate::gateway::host::BadHost) -> Self {
        GatewayError::BadRequest(e.to_string())
    }
}

impl crate::cache::Failure for GatewayError {
    /// EM failures that justify serving a stale entry (not EM's considered answers).
    fn serves_stale(&self) -> bool {
        match self {
            // Background work not sent: nothing to remember or tell the
            // fleet (a waiting replica takes the lease over).
            GatewayError::Upstream(UpstreamError::Dropped) => false,
            GatewayError::Upstream(_)
            | GatewayError::Session(_)
            | GatewayError::SessionRejected
            | GatewayError::BadUpstream(_)
            | GatewayError::FailedElsewhere(_) => true,
            GatewayError::Em { status, .. } => status.is_server_error(),
            _ => false,
        }
    }

    fn internal(what: &'static str) -> Self {
        GatewayError::Internal(what)
    }
}

/// A response in EM's error shape: `{"Message", "StatusCode", ...}` or `<Error/>`.
pub fn error_response(
    status: StatusCode,
    message: &str,
    xml: bool,
    case: JsonCase,
) -> Response<Body> {
    let (body, content_type) = if xml {
        (
            format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Error Message=\"{}\" StatusCode=\"{}\" xmlns=\"http://www.veeam.com/ent/v1.0\"/>",
                quick_xml::escape::escape(message),
                status.as_u16()
            ),
            "application/xml; charset=utf-8",
        )
    } else {
        let names: [&str; 5] = match case {
            JsonCase::Pascal => [
                "FirstChanceExceptionMessage",
                "Message",
                "StackTrace",
                "Status",
                "StatusCode",
            ],
            JsonCase::Camel => [
                "firstChanceExceptionMessage",
                "message",
                "stackTrace",
                "status",
                "statusCode",
            ],
        };
        let mut object = serde_json::Map::new();
        object.insert(names[0].into(), serde_json::Value::Null);
        object.insert(names[1].into(), message.into());
        object.insert(names[2].into(), serde_json::Value::Null);
        object.insert(names[3].into(), serde_json::Value::Null);
        object.insert(names[4].into(), status.as_u16().into());
        (
            serde_json::Value::Object(object).to_string(),
            "application/json; charset=utf-8",
        )
    };
    let mut response = Response::new(Body::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An error's message as the client got it, for the status page.
#[derive(Clone)]
pub struct ErrorMessage(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(r: Response<Body>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn errors_have_ems_shape_in_json_xml_and_both_cases() {
        let r = GatewayError::MethodNotAllowed(Method::POST, "GET, HEAD")
            .into_response(false, JsonCase::Pascal);
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[ALLOW], "GET, HEAD");
        let v: serde_json::Value = serde_json::from_str(&body_of(r).await).unwrap();
        assert_eq!(v["StatusCode"], 405);
        assert_eq!(v["FirstChanceExceptionMessage"], serde_json::Value::Null);
        assert!(v["Message"].as_str().unwrap().contains("POST"));

        let r = GatewayError::Draining.into_response(false, JsonCase::Camel);
        let v: serde_json::Value = serde_json::from_str(&body_of(r).await).unwrap();
        assert_eq!(v["statusCode"], 503);

        let r =
            GatewayError::BadRequest("a <b> & \"c\"".into()).into_response(true, JsonCase::Pascal);
        assert_eq!(
            body_of(r).await,
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Error Message=\"a &lt;b&gt; &amp; &quot;c&quot;\" StatusCode=\"400\" xmlns=\"http://www.veeam.com/ent/v1.0\"/>"
        );
    }
}
