//! The HTTP client to EM: pooled keep-alive connections over rustls, a
//! timeout on every request (body included), a cap on response size, and the
//! two bounds that protect EM and the gateway's memory (see README, "Configuration"):
//!
//! - at most `EMGATE_UPSTREAM_CONCURRENCY` requests of the [`Lane::Client`]
//!   lane in flight; more wait up to `EMGATE_UPSTREAM_QUEUE_WAIT`, then fail
//!   with [`UpstreamError::Saturated`]. The session's own requests (logon,
//!   keep-alive, logout) take the [`Lane::Session`] lane, so a full queue of
//!   hanging client requests never stops the gateway from keeping its session;
//! - EM answers held at once, and what callers reserve to convert them,
//!   share one byte budget (`EMGATE_UPSTREAM_MEMORY`): a body is reserved as
//!   it arrives and released when its [`UpstreamResponse`] is dropped.
//!
//! It knows nothing of client access or sessions: callers hand it a method,
//! a path and the headers to send, and get EM's whole answer back or a typed
//! error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_LENGTH};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::background::{Admission, Background};
use crate::config::UpstreamSettings;
use crate::ops::metrics::Work;

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
    /// No place among the EM requests in flight (or in the memory budget)
    /// within the queue wait: EM is slow and the gateway protects it.
    #[error(
        "Enterprise Manager is busy: {0} EM requests are in flight or queued; try again shortly"
    )]
    Saturated(usize),
    /// Work emgate started on its own found no room in the background
    /// lane and was not sent: work not done, not a failure of EM's.
    #[error("background work was dropped: the background lane had no room")]
    Dropped,
}

/// Which limit a request to EM counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Work for clients (fetches, refreshes, pass-through, writes): bounded
    /// by the EM concurrency limit.
    Client,
    /// The pooled session's own logon, keep-alive and logout: few by
    /// construction (single flight), never queued behind clients.
    Session,
    /// Work emgate starts on its own (refresh-ahead, prefetch, rewarm): the
    /// background lane ([`super::background`]), which steps aside for clients.
    Background(Work),
    /// Background work whose room in the lane the caller already holds
    /// (an [`Admitted`](super::background::Admitted) from [`Upstream::admit_background`], kept until
    /// the answer is read): it waits for nothing more.
    Admitted(Work),
}

/// Bytes held in the memory budget; released when dropped.
#[derive(Debug, Default)]
pub struct Reservation(Option<OwnedSemaphorePermit>);

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    fn add(&mut self, more: OwnedSemaphorePermit) {
        match &mut self.0 {
            Some(p) => p.merge(more),
            None => self.0 = Some(more),
        }
    }
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
    /// The body's bytes in the memory budget, held as long as the answer is.
    pub held: Reservation,
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
    /// Places for client-lane requests in flight.
    lanes: Arc<Semaphore>,
    /// Size of `lanes`, for messages.
    concurrency: usize,
    /// Longest wait for a place (or for memory).
    queue_wait: Duration,
    /// The memory budget, in bytes.
    memory: Arc<Semaphore>,
    /// Its size.
    memory_total: usize,
    /// The background lane.
    background: Arc<Background>,
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
        let memory = usize::try_from(settings.memory)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Ok(Upstream {
            client,
            base: base_string(&settings.url),
            timeout: settings.timeout,
            max_body: settings.max_body,
            lanes: Arc::new(Semaphore::new(settings.concurrency)),
            concurrency: settings.concurrency,
            queue_wait: settings.queue_wait,
            memory: Arc::new(Semaphore::new(memory)),
            memory_total: memory,
            background: Arc::new(Background::new(
                settings.background_concurrency,
                settings.background_rate,
                // A fleet place is held while the request steps aside for
                // clients (at most the queue wait) and runs (at most the EM
                // timeout).
                settings.timeout + settings.queue_wait + Duration::from_secs(5),
            )),
        })
    }

    /// EM's base URL as configured (`https://em:9398`), for Href rewriting.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The API versions EM's entry point (`GET /api/`, no session needed) lists.
    pub async fn api_versions(&self) -> Result<Vec<String>, UpstreamError> {
        let response = self
            .send(Lane::Session, Method::GET, "/api/", HeaderMap::new())
            .await?;
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
        lane: Lane,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.send_with_body(lane, method, path_and_query, headers, empty())
            .await
    }

    /// As [`Upstream::send`] for a client's HEAD: EM is asked GET (its REST
    /// service documents only GET) and the body is read and dropped as it
    /// comes, never held, since the client gets none.
    pub async fn send_discarding_body(
        &self,
        path_and_query: &str,
        headers: HeaderMap,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.exchange_timed(
            Lane::Client,
            Method::GET,
            path_and_query,
            headers,
            empty(),
            Body::Discard,
        )
        .await
    }

    /// As [`Upstream::send`], streaming `body` to EM (writes).
    pub async fn send_with_body(
        &self,
        lane: Lane,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: UpstreamBody,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.exchange_timed(lane, method, path_and_query, headers, body, Body::Keep)
            .await
    }

    /// Room in the background lane for `work`, taken before the request is
    /// made (see [`Lane::Admitted`]): for callers that must not hold
    /// anything others wait for (a fleet lease) while the lane queues them.
    pub async fn admit_background(&self, work: Work) -> Admission {
        self.background
            .admit(work, &self.lanes, self.queue_wait)
            .await
    }

    /// The background lane (its counters).
    pub fn background(&self) -> &Background {
        &self.background
    }

    /// Bytes of the memory budget held now (EM answers and conversions).
    pub fn memory_held(&self) -> usize {
        self.memory_total
            .saturating_sub(self.memory.available_permits())
    }

    /// Reserves `bytes` of the memory budget (to convert an answer), waiting
    /// at most the queue wait.
    pub async fn reserve(&self, bytes: usize) -> Result<Reservation, UpstreamError> {
        let mut held = Reservation::default();
        self.reserve_more(&mut held, bytes).await?;
        Ok(held)
    }

    async fn reserve_more(
        &self,
        held: &mut Reservation,
        bytes: usize,
    ) -> Result<(), UpstreamError> {
        let mut left = bytes;
        while left > 0 {
            let n = u32::try_from(left).unwrap_or(u32::MAX);
            let permit =
                tokio::time::timeout(self.queue_wait, self.memory.clone().acquire_many_owned(n))
                    .await
                    .map_err(|_| UpstreamError::Saturated(self.concurrency))?
                    .map_err(|_| UpstreamError::Saturated(self.concurrency))?;
            held.add(permit);
            left -= n as usize;
        }
        Ok(())
    }

    async fn exchange_timed(
        &self,
        lane: Lane,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: UpstreamBody,
        keep: Body,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let uri: Uri = format!("{}{}", self.base, path_and_query)
            .parse()
            .map_err(|_| UpstreamError::Unreachable("invalid request path".into()))?;
        headers.insert(ACCEPT, HeaderValue::from_static("application/xml"));
        // Traced: EM's request is a span of its own, and EM is told its
        // trace (`traceparent`).
        let span = if crate::ops::traces::on() {
            let span = tracing::info_span!(
                "em_request",
                http.request.method = method.as_str(),
                url.path = span_path(path_and_query),
                http.response.status_code = tracing::field::Empty,
            );
            crate::ops::traces::inject(&span, &mut headers);
            span
        } else {
            tracing::Span::none()
        };
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(body)
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
        *request.headers_mut() = headers;
        // A place among the client requests to EM, waiting at most the queue
        // wait; background work takes one only when it is free.
        let admitted = match lane {
            Lane::Background(work) => {
                match self.admit_background(work).await {
                    Admission::Admitted(admitted) => Some(admitted),
                    // A client waits for it: a client's place, as a client.
                    Admission::Urgent => None,
                    Admission::Dropped => return Err(UpstreamError::Dropped),
                }
            }
            _ => None,
        };
        let _place = match (lane, &admitted) {
            (Lane::Session | Lane::Admitted(_), _) | (_, Some(_)) => None,
            _ => {
                match tokio::time::timeout(self.queue_wait, self.lanes.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(place)) => Some(place),
                    _ => {
                        crate::ops::metrics::upstream_saturated();
                        return Err(UpstreamError::Saturated(self.concurrency));
                    }
                }
            }
        };
        let started = Instant::now();
        let exchange = tokio::time::timeout(self.timeout, self.exchange(request, keep));
        let result = match tracing::Instrument::instrument(exchange, span.clone()).await {
            Ok(Ok((status, headers, body, held))) => Ok(UpstreamResponse {
                status,
                headers,
                body,
                elapsed: started.elapsed(),
                held,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
        };
        if let Ok(r) = &result {
            span.record("http.response.status_code", r.status.as_u16());
        }
        let label = match &result {
            Ok(r) => crate::ops::metrics::status_label(r.status),
            Err(UpstreamError::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        crate::ops::metrics::upstream(label, started.elapsed());
        let ok = matches!(&result, Ok(r) if !r.status.is_server_error());
        crate::ops::history::global().upstream(started.elapsed(), ok);
        if let (Lane::Background(work), Some(_)) | (Lane::Admitted(work), _) = (lane, &admitted) {
            self.background.ended(work, ok);
        }
        result
    }

    async fn exchange(
        &self,
        request: Request<UpstreamBody>,
        keep: Body,
    ) -> Result<(StatusCode, HeaderMap, Bytes, Reservation), UpstreamError> {
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
        let (parts, mut body) = response.into_parts();
        let mut held = Reservation::default();
        if keep == Body::Keep {
            if let Some(len) = declared {
                // Known size: reserve it before reading a byte.
                self.reserve_more(&mut held, len as usize).await?;
            }
        }
        let mut buf = BytesMut::new();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| UpstreamError::Unreachable(format!("response body broke off: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen += data.len();
            if seen > self.max_body {
                return Err(UpstreamError::TooLarge(self.max_body));
            }
            if keep == Body::Discard {
                continue;
            }
            let missing = seen.saturating_sub(held.bytes());
            if missing > 0 {
                self.reserve_more(&mut held, missing).await?;
            }
            buf.extend_from_slice(&data);
        }
        Ok((parts.status, parts.headers, buf.freeze(), held))
    }
}

/// Whether an answer's body is kept or read and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Keep,
    Discard,
}

fn empty() -> UpstreamBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
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

/// EM's path for a span: without the query, and with the pooled session's
/// id (its keep-alive and logout) as a template: it names the gateway's
/// EM session, which nothing outside the process is shown.
fn span_path(path_and_query: &str) -> &str {
    let path = path_and_query.split('?').next().unwrap_or("");
    let sessions = "/api/logonSessions/";
    match path.get(..sessions.len()) {
        Some(p) if p.eq_ignore_ascii_case(sessions) => "/api/logonSessions/{id}",
        _ => path,
    }
}
