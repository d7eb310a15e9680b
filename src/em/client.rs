//! The HTTP client to EM: pooled keep-alive connections over rustls, a
//! timeout on every request (body included) and a cap on response size.
//!
//! It knows nothing of client access or sessions: callers hand it a method,
//! a path and the headers to send, and get EM's whole answer back or a typed
//! error.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_LENGTH};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::UpstreamSettings;

/// Why a request to EM produced no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// EM did not answer (headers and body) within the timeout.
    #[error("Enterprise Manager did not answer within {0:?}")]
    Timeout(Duration),
    /// No connection, TLS failure, or the connection broke.
    #[error("cannot reach Enterprise Manager: {0}")]
    Unreachable(String),
    /// The response body is larger than allowed.
    #[error("Enterprise Manager's response exceeds the {0}-byte limit")]
    TooLarge(usize),
    /// The client's request body grew past its limit while being sent.
    #[error("the request body exceeds its limit")]
    RequestTooLarge,
}

/// A request body on its way to EM (streamed, for writes).
pub type UpstreamBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// EM's whole answer.
#[derive(Debug)]
pub struct UpstreamResponse {
    /// EM's status.
    pub status: StatusCode,
    /// EM's headers.
    pub headers: HeaderMap,
    /// EM's body, complete.
    pub body: Bytes,
    /// How long EM took.
    pub elapsed: Duration,
}

/// A client bound to one EM server.
#[derive(Clone)]
pub struct Upstream {
    /// Pooled, keep-alive HTTPS (or HTTP) client.
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    /// `scheme://authority[/prefix]` without a trailing slash.
    base: String,
    /// Limit for one request, body included.
    timeout: Duration,
    /// Largest body accepted.
    max_body: usize,
}

impl Upstream {
    /// Builds the client from validated settings.
    pub fn new(settings: &UpstreamSettings) -> Result<Upstream, String> {
        let tls = super::tls::client_config(&settings.trust)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.timeout.min(Duration::from_secs(30))));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            // EM closes idle connections after a while; ours go first.
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(Upstream {
            client,
            base: base_string(&settings.url),
            timeout: settings.timeout,
            max_body: settings.max_body,
        })
    }

    /// EM's base URL as configured (`https://em:9398`), for Href rewriting.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The API versions EM's entry point (`GET /api/`, no session needed) lists.
    pub async fn api_versions(&self) -> Result<Vec<String>, UpstreamError> {
        let response = self.send(Method::GET, "/api/", HeaderMap::new()).await?;
        let mut reader = quick_xml::Reader::from_reader(response.body.as_ref());
        let mut versions = Vec::new();
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Start(e)) | Ok(quick_xml::events::Event::Empty(e))
                    if e.local_name().as_ref() == b"SupportedVersion" =>
                {
                    if let Some(name) = e
                        .attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == b"Name")
                    {
                        versions.push(String::from_utf8_lossy(&name.value).into_owned());
                    }
                }
                Ok(quick_xml::events::Event::Eof) | Err(_) => break,
                _ => {}
            }
        }
        Ok(versions)
    }

    /// Sends one request and reads the whole answer within the timeout.
    ///
    /// `path_and_query` starts with `/api`. EM is always asked for XML.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let empty = Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed();
        self.send_with_body(method, path_and_query, headers, empty)
            .await
    }

    /// As [`Upstream::send`], streaming `body` to EM (writes).
    pub async fn send_with_body(
        &self,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: UpstreamBody,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let uri: Uri = format!("{}{}", self.base, path_and_query)
            .parse()
            .map_err(|_| UpstreamError::Unreachable("invalid request path".into()))?;
        headers.insert(ACCEPT, HeaderValue::from_static("application/xml"));
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(body)
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
        *request.headers_mut() = headers;
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(Ok((status, headers, body))) => Ok(UpstreamResponse {
                status,
                headers,
                body,
                elapsed: started.elapsed(),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
        };
        let label = match &result {
            Ok(r) => crate::ops::metrics::status_label(r.status),
            Err(UpstreamError::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        crate::ops::metrics::upstream(label, started.elapsed());
        result
    }

    async fn exchange(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), UpstreamError> {
        let response = self.client.request(request).await.map_err(|e| {
            if caused_by::<http_body_util::LengthLimitError>(&e) {
                UpstreamError::RequestTooLarge
            } else {
                UpstreamError::Unreachable(error_chain(&e))
            }
        })?;
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body as u64) {
            return Err(UpstreamError::TooLarge(self.max_body));
        }
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, self.max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    UpstreamError::TooLarge(self.max_body)
                } else {
                    UpstreamError::Unreachable(format!("response body broke off: {e}"))
                }
            })?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    }
}

fn base_string(url: &Uri) -> String {
    url.to_string().trim_end_matches('/').to_string()
}

/// Whether an error of type `T` is somewhere in `e`'s chain.
fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.is::<T>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// hyper-util's errors say "client error (Connect)"; the cause is further down.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
