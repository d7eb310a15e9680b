//! Routing: which handler answers a request, and the one log line and
//! metrics per request. `/healthz`, `/readyz` and `/metrics` are answered
//! here; `/api` goes through client access to the cached route or the
//! pass-through; `/admin` to [`crate::gateway::admin`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_TYPE, ORIGIN};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::sync::{AcquireError, Semaphore, SemaphorePermit};

use crate::cache::Outcome;
use crate::em::session::SessionState;
use crate::gateway::access;
use crate::gateway::app::App;
use crate::gateway::clients;
use crate::gateway::conn::{Conn, RequestGuard};
use crate::gateway::context::{CallerName, Ctx};
use crate::gateway::error::{ErrorMessage, GatewayError};
use crate::gateway::heads::{Heads, Name};
use crate::gateway::host::{self, Authority};
use crate::gateway::limit::Bucket;
use crate::gateway::proxy;
use crate::gateway::reads;
use crate::gateway::render::{self, Representation};
use crate::gateway::request_id;
use crate::gateway::response::{prefers_xml, Body};
use crate::gateway::target::Target;
use crate::gateway::tasks;
use crate::ops::logging::Text;

/// Largest request head accepted (hyper answers 431 beyond it).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Methods the gateway serves at all; anything else (CONNECT, TRACE,
/// OPTIONS, inventions) is answered 405 and the connection closed.
const SERVED: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
];

/// Sends a request to its handler.
///
/// Checks on the request itself come first, whatever the path: the method,
/// the size of the head, the host. `/healthz`, `/readyz` and `/metrics` are
/// answered without waiting for a place among the requests being worked on,
/// so a full queue behind a hanging EM never fails a probe. An anonymous
/// gateway answers `/api` and `/admin` only to requests that name it by a
/// loopback name (421 otherwise): a page whose DNS name was rebound to
/// 127.0.0.1 reaches the port, but names its own host. Every `/api` answer
/// leaves with [`render::api_headers`].
///
/// A plain hit that needs nothing but memory is answered before any future
/// is made (`hit_now`); every other request gets the full path, boxed.
pub fn route(
    app: Arc<App>,
    conn: Conn,
    req: Request<Incoming>,
    busy: RequestGuard,
    known: &access::KnownCredential,
) -> Answer<impl Future<Output = Response<Body>> + Send> {
    let (parts, body) = req.into_parts();
    let started = busy.started();
    // Every request has an id: the client's if it is usable, else a
    // new one (`request_id`).
    let request_id = {
        let heads = Heads::of(&parts.headers);
        let request_id = app.request_ids.kept_or_new(heads.get_all(Name::RequestId));
        if let Some((response, done)) =
            hit_now(&app, conn, known, &parts, &heads, &request_id, started)
        {
            done.report(&parts, &request_id, started, busy, &response);
            return Answer::Now(Some(response));
        }
        request_id
    };
    // A block, not an `async fn`: an `async fn` keeps each argument twice
    // in its future (as given and as its local).
    Answer::Later(Box::pin(async move {
        // The headers the phases read, found in one pass.
        let heads = Heads::of(&parts.headers);
        let xml = prefers_xml(&heads);
        let case = app.settings.json_case;
        let path = parts.uri.path();
        let under_api = is_api(path);
        // The context of a request that passed the edge's checks: what its
        // phases learnt (route template, caller) goes into the access line,
        // the metrics and the history.
        let mut ctx: Option<Ctx> = None;
        let mut response = if !SERVED.contains(&parts.method) {
            closing(
                GatewayError::MethodNotAllowed(
                    parts.method.clone(),
                    "GET, HEAD, POST, PUT, DELETE, PATCH",
                )
                .into_response(xml, case),
                &parts,
            )
        } else if head_size(&parts, &heads) > MAX_HEAD_BYTES {
            // hyper's own limit depends on how the bytes arrive; this one does not.
            GatewayError::HeadersTooLarge(MAX_HEAD_BYTES).into_response(xml, case)
        } else {
            match host::of_request(&parts, &heads) {
                Err(e) => closing(GatewayError::from(e).into_response(xml, case), &parts),
                Ok(host) => {
                    // The context of a request that got a place to be worked on.
                    let context_at =
                        |at| context(&app, conn, &parts, xml, host.as_ref(), &request_id, at);
                    match path {
                        "/healthz" => plain(StatusCode::OK, "ok\n"),
                        "/readyz" => readiness(&app),
                        "/metrics" => Box::pin(metrics(&app)).await,
                        p if (under_api || is_admin(p))
                            && app.settings.access.allow_anonymous
                            && host.as_ref().is_some_and(|h| !h.is_loopback()) =>
                        {
                            GatewayError::Misdirected.into_response(xml, case)
                        }
                        _ if under_api => match taken_up(&app.work, started).await {
                            Ok((_place, at)) => {
                                let ctx = ctx.insert(context_at(at));
                                if crate::ops::traces::on() {
                                    // Traced: every request has its span, the
                                    // client's trace its parent.
                                    let span = ctx.span().clone();
                                    crate::ops::traces::follow(&span, &parts.headers);
                                    span.record("http.request.method", parts.method.as_str());
                                    let api = api(&app, ctx, &parts, &heads, body);
                                    Box::pin(tracing::Instrument::instrument(api, span)).await
                                } else {
                                    api(&app, ctx, &parts, &heads, body).await
                                }
                            }
                            Err(_) => GatewayError::Draining.into_response(xml, case),
                        },
                        p if is_admin(p) => match taken_up(&app.work, started).await {
                            Ok((_place, at)) => {
                                let ctx = ctx.insert(context_at(at));
                                let admin =
                                    crate::gateway::admin::handle(&app, conn, &parts, &ctx.to);
                                Box::pin(ctx.traced(admin)).await
                            }
                            Err(_) => GatewayError::Draining.into_response(xml, case),
                        },
                        other => GatewayError::NotFound(other.chars().take(200).collect())
                            .into_response(xml, case),
                    }
                }
            }
        };
        // A hit's head is whole: nothing to add, nothing to look up.
        let whole = ctx
            .as_ref()
            .is_some_and(Ctx::is_head_whole)
            .then(|| Outcome::Hit.as_str());
        // A cached answer's head was made complete once, when prepared.
        if !ctx.as_ref().is_some_and(Ctx::is_head_complete) && under_api {
            render::api_headers(response.headers_mut());
        }
        // Every answer carries the request's id (made or kept at the edge).
        // Marked never to be indexed: HTTP/2's header compression would put
        // each new id in the connection's table, evicting the values that do
        // repeat.
        if whole.is_none() {
            let mut id = request_id.clone();
            id.set_sensitive(true);
            response.headers_mut().insert(proxy::X_REQUEST_ID, id);
        }
        let learnt = ctx.as_mut().map(Ctx::take_learnt).unwrap_or_default();
        let done = Done {
            route: learnt.route.unwrap_or_else(|| route_label(path)),
            client: learnt.client,
            // `X-Cache`, read once for the history, the trace and the access
            // line. Only the gateway's own values: an `X-Cache` another
            // server sent through the pass-through is not a result of this
            // cache.
            cache: whole.or_else(|| {
                response
                    .headers()
                    .get(&reads::X_CACHE)
                    .and_then(|v| Outcome::of_label(v.as_bytes()))
                    .map(Outcome::as_str)
            }),
            path_plain: ctx.as_ref().is_some_and(Ctx::is_path_plain),
            span: ctx
                .as_ref()
                .filter(|_| crate::ops::traces::on())
                .map(|c| c.span().clone()),
        };
        done.report(&parts, &request_id, started, busy, &response);
        response
    }))
}

/// What [`route`] hands hyper for a request: the answer made at once, or
/// the full path's future, boxed. Small, whichever it is (hyper moves it
/// into its slot for every request: the full path's future is 1.6 KB, see
/// BENCHMARKS.md, "fourteenth steps" and "fifteenth steps").
pub enum Answer<F> {
    /// Answered (taken when polled).
    Now(Option<Response<Body>>),
    /// Still to be worked out.
    Later(std::pin::Pin<Box<F>>),
}

impl<F: Future<Output = Response<Body>>> Future for Answer<F> {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Answer::Now(response) => match response.take() {
                Some(r) => std::task::Poll::Ready(Ok(r)),
                // Polled again after it was ready: hyper never does, and a
                // panic here would be one on the request path.
                None => std::task::Poll::Ready(Ok(plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "answered twice\n",
                ))),
            },
            Answer::Later(later) => later.as_mut().poll(cx).map(Ok),
        }
    }
}

/// What a request's answer is reported by: its route template, caller and
/// cache result, learnt on the way.
struct Done {
    route: &'static str,
    client: Option<CallerName>,
    cache: Option<&'static str>,
    /// Whether its path is known to be plain text (the access line need
    /// not check it).
    path_plain: bool,
    /// Its span, when traces are on.
    span: Option<tracing::Span>,
}

impl Done {
    /// The metrics, the history, the trace's fields and the access line of
    /// an answered request; its connection no longer busy.
    fn report(
        self,
        parts: &Parts,
        request_id: &HeaderValue,
        started: Instant,
        busy: RequestGuard,
        response: &Response<Body>,
    ) {
        let Done {
            route,
            client,
            cache,
            path_plain,
            span,
        } = self;
        let path = parts.uri.path();
        let ended = Instant::now();
        let elapsed = ended.saturating_duration_since(started);
        crate::ops::metrics::request(route, response.status(), elapsed);
        let name = client.as_ref().map(CallerName::as_str);
        record_history(request_id, ended, route, name, cache, response);
        if let Some(span) = span {
            span.record("route", route);
            span.record("client", name.unwrap_or("-"));
            span.record("http.response.status_code", response.status().as_u16());
            if let Some(cache) = cache {
                span.record("cache", cache);
            }
        }
        crate::ops::logging::access(&crate::ops::logging::AccessLine {
            method: parts.method.as_str(),
            path: if path_plain {
                Text::Plain(path)
            } else {
                Text::Any(path)
            },
            route,
            status: response.status().as_u16(),
            latency: elapsed,
            at: ended,
            client: match &client {
                None => Text::Plain("-"),
                Some(CallerName::Gateway(label)) => Text::Plain(label),
                Some(CallerName::Listed(name)) => Text::Plain(name),
                Some(CallerName::Owner(name)) => Text::Any(name),
            },
            cache: cache.unwrap_or("-"),
            request_id: request_id.as_bytes(),
        });
        busy.end(ended);
    }
}

/// A plain read answered from memory before any future is made
/// ([`reads::hit_now`]): a `GET` or `HEAD` under a rule, by a caller known
/// without a round trip (anonymous, a client by its secret or by a
/// session token this replica holds, in a fleet one checked with the
/// fleet a moment ago; not the operator), whose fresh entry the index
/// holds, on a gateway not draining, with a place free among the requests
/// at work and the caller's rate limit counted here (no fleet to ask, or
/// a share of the fleet's left on this replica: `limit::ClientLimits`).
/// Every check [`route`]'s full path makes before such a hit is made here
/// too, with the same helpers; anything else (another answer, a wait, a
/// span to trace) leaves the request to the full path with nothing
/// counted.
fn hit_now(
    app: &App,
    conn: Conn,
    known: &access::KnownCredential,
    parts: &Parts,
    heads: &Heads<'_>,
    request_id: &HeaderValue,
    started: Instant,
) -> Option<(Response<Body>, Done)> {
    let head = parts.method == Method::HEAD;
    if crate::ops::traces::on() || !(head || parts.method == Method::GET) {
        return None;
    }
    let path = parts.uri.path();
    if !is_api(path)
        || head_size(parts, heads) > MAX_HEAD_BYTES
        || app.draining.load(Ordering::Relaxed)
    {
        return None;
    }
    let host = host::of_request(parts, heads).ok()?;
    if app.settings.access.allow_anonymous && host.as_ref().is_some_and(|h| !h.is_loopback()) {
        return None;
    }
    let resolved = app.reads.rules.resolve(path, parts.uri.query()).ok()?;
    let route = resolved.rule()?.label;
    if answered_apart(&resolved) {
        return None;
    }
    // As `api` finds the caller, an operator aside (whose `no-cache` may
    // send the read to EM).
    let caller = if resolved.target.is_entry_point() {
        access::Caller::Anonymous
    } else {
        access::anonymous_at_once(&app.access, heads)
            .or_else(|| access::authenticate_now(&app.access, heads, conn.peer, known))?
    };
    if matches!(caller, access::Caller::Operator) {
        return None;
    }
    // Held until the answer is made, as the full path holds it.
    let _place = app.work.try_acquire().ok()?;
    let to = representation(app, conn, parts, prefers_xml(heads), host.as_ref());
    let hit = reads::hit_now(&app.reads, &to, heads, &resolved, head, request_id, started)?;
    // Last: a request let through is counted, and the full path would
    // count it again. Refused, it goes there for its 429.
    if app.limits.check_now(|| caller.bucket(conn.peer)) != Some(Ok(())) {
        return None;
    }
    let done = Done {
        route,
        client: Some(caller.owner_label()),
        cache: Some(Outcome::Hit.as_str()),
        path_plain: resolved.path_is_plain(),
        span: None,
    };
    Some((hit.counted(), done))
}

/// Targets [`api`] answers by their own handlers whatever rule matches
/// them (the logon, the caller's sessions, tasks), or refuses (a restore
/// point ID that is no UUID): never a plain hit.
fn answered_apart(resolved: &reads::Resolved) -> bool {
    let target = &resolved.target;
    target.is(0, "sessionMngr")
        || target.is(0, "logonSessions")
        || target.is(0, "tasks")
        || is_task_query(target)
        || resolved.names_a_bad_restore_point()
}

/// `/api` or under it, in any case (EM matches its URI templates without
/// regard to case, `/API/...` included).
fn is_api(path: &str) -> bool {
    match path.as_bytes() {
        [b'/', a, p, i, rest @ ..] => {
            a.eq_ignore_ascii_case(&b'a')
                && p.eq_ignore_ascii_case(&b'p')
                && i.eq_ignore_ascii_case(&b'i')
                && matches!(rest.first(), None | Some(b'/'))
        }
        _ => false,
    }
}

fn is_admin(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// The request in the status page's history: its cache result and client,
/// and (for errors worth an operator's look) its message and request id.
fn record_history(
    request_id: &HeaderValue,
    ended: Instant,
    route: &'static str,
    client: Option<&str>,
    cache: Option<&str>,
    response: &Response<Body>,
) {
    let history = crate::ops::history::global();
    let status = response.status().as_u16();
    history.request(ended, cache, status, client);
    // Not 401/404: scanners and unauthenticated probes would drown the rest.
    if status >= 400 && status != 401 && status != 404 {
        let message = response
            .extensions()
            .get::<ErrorMessage>()
            .map(|m| m.0.clone())
            .unwrap_or_else(|| {
                response
                    .status()
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_string()
            });
        history.error(crate::ops::history::ErrorNote {
            at: std::time::SystemTime::now(),
            route: route.to_string(),
            status,
            request_id: request_id::as_text(request_id).to_string(),
            message: message.chars().take(300).collect(),
        });
    }
}

/// Marks an HTTP/1 answer as the last on its connection (a request this
/// malformed says nothing good about what follows on the same connection).
fn closing(mut response: Response<Body>, parts: &Parts) -> Response<Body> {
    if parts.version <= Version::HTTP_11 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The context of an `/api` or `/admin` request that passed the edge's checks.
/// A place among the requests at work (`app.work`, first come first
/// served), and when the request got it: its arrival (`arrived`) if a place
/// was free, else the moment one came free, read then.
async fn taken_up(
    work: &Semaphore,
    arrived: Instant,
) -> Result<(SemaphorePermit<'_>, Instant), AcquireError> {
    // A free place is never taken ahead of a request waiting for one:
    // tokio hands a place that comes free to the first waiter.
    match work.try_acquire() {
        Ok(place) => Ok((place, arrived)),
        Err(_) => {
            let place = work.acquire().await?;
            Ok((place, Instant::now()))
        }
    }
}

fn context(
    app: &App,
    conn: Conn,
    parts: &Parts,
    xml: bool,
    host: Option<&Authority>,
    request_id: &HeaderValue,
    taken_up: Instant,
) -> Ctx {
    let to = representation(app, conn, parts, xml, host);
    Ctx::new(conn, to, request_id, taken_up)
}

/// What a request is answered in: XML or JSON, the deployment's JSON
/// case, the public base for its host.
fn representation(
    app: &App,
    conn: Conn,
    parts: &Parts,
    xml: bool,
    host: Option<&Authority>,
) -> Representation {
    Representation {
        xml,
        case: app.settings.json_case,
        public: render::public_base(
            &app.settings,
            host,
            &parts.headers,
            conn.tls,
            app.local_addr,
        ),
    }
}

/// `/api/...`: the drop-in logon, the caller's logon sessions, the cached
/// route or the pass-through, each after the checks that apply to it; its
/// route template and its caller's name told to `ctx`.
/// Routing looks only at the parsed [`Target`], and EM is sent its
/// canonical encoding.
async fn api(
    app: &Arc<App>,
    ctx: &mut Ctx,
    parts: &Parts,
    heads: &Heads<'_>,
    body: Incoming,
) -> Response<Body> {
    let conn = ctx.conn;
    let result = async {
        if app.draining.load(Ordering::Relaxed) {
            // Connections kept alive through the drain still get an answer.
            return Err(GatewayError::Draining);
        }
        let method = &parts.method;
        let read = method == Method::GET || method == Method::HEAD;
        // Whatever the access mode, a request with side effects (a write, a
        // logon, a logout) from a browser must come from the gateway's own
        // pages: a page elsewhere can post a form or a text/plain body here.
        if !read {
            render::from_own_pages(&parts.headers, &ctx.to.public).map_err(|how| {
                GatewayError::Forbidden(match how {
                    render::CrossSite::SecFetchSite => "a request with side effects is taken only from the gateway's own pages or from clients that are not browsers (Sec-Fetch-Site names another site)",
                    render::CrossSite::Origin => "a request with side effects is taken only from the gateway's own pages or from clients that are not browsers (Origin names another origin)",
                })
            })?;
        }
        let resolved = app.reads.rules.resolve(parts.uri.path(), parts.uri.query())?;
        if resolved.path_is_plain() {
            ctx.path_is_plain();
        }
        let target = &resolved.target;
        if target.is(0, "sessionMngr") {
            ctx.answered_by("/api/sessionMngr");
            // Logons are limited by address: each makes a session to keep.
            app.limits
                .check_shared(|| Bucket::Address(conn.peer))
                .await
                .map_err(GatewayError::RateLimited)?;
            let logon = access::logon(&app.access, parts, conn.peer, target, &ctx.to);
            return Box::pin(ctx.traced(logon)).await;
        }
        // EM's entry point needs no session on EM either: clients read it to find the logon link.
        let caller = if read && target.is_entry_point() {
            access::Caller::Anonymous
        } else if let Some(anonymous) = access::anonymous_at_once(&app.access, heads) {
            anonymous
        } else {
            access::authenticate(&app.access, heads, conn.peer).await?
        };
        ctx.called_by(caller.owner_label());
        app.limits
            .check_shared(|| caller.bucket(conn.peer))
            .await
            .map_err(GatewayError::RateLimited)?;
        if target.is(0, "logonSessions") {
            ctx.answered_by("/api/logonSessions");
            let sessions = access::logon_sessions(&app.access, &caller, method, target, &ctx.to);
            return Box::pin(ctx.traced(sessions)).await;
        }
        // Every restore point ID is checked before EM sees it, not only the cached route's.
        if resolved.names_a_bad_restore_point() {
            return Err(GatewayError::BadRequest(
                "the restore point ID must be a UUID".into(),
            ));
        }
        // EM keeps tasks per session, the gateway per client: answered
        // here, never cached, never reaching EM for another's task.
        if target.is(0, "tasks") || is_task_query(target) {
            ctx.answered_by("/api/tasks");
            let tasks = tasks_route(app, &caller, method, target, &ctx.to);
            return Box::pin(ctx.traced(tasks)).await;
        }
        if read {
            if let Some(r) = resolved.rule() {
                ctx.answered_by(r.label);
            }
            // Authentication already recognised the admin token.
            let operator = matches!(caller, access::Caller::Operator);
            if crate::ops::traces::on() {
                let serve = reads::serve(&app.reads, &*ctx, method, heads, &resolved, operator);
                let rule = resolved.rule().map_or("-", |r| r.name.as_str());
                ctx.span().record("rule", rule);
                let lookup = tracing::info_span!("cache_lookup", rule);
                return Box::pin(tracing::Instrument::instrument(serve, lookup)).await;
            }
            // Made where it is awaited: a future kept in a local first is
            // held twice in this one (as the local and as what is awaited),
            // and copied from one to the other (about 870 bytes).
            return reads::serve(&app.reads, &*ctx, method, heads, &resolved, operator).await;
        }
        // Writes are few and their future is large: boxed, so a read's
        // future stays small.
        Box::pin(ctx.traced(write(app, &caller, parts, body, target, &*ctx))).await
    }
    .await;
    result.unwrap_or_else(|e| {
        ctx.span().in_scope(|| log_error(&e));
        let mut r = e.to_response(&ctx.to);
        r.extensions_mut().insert(ErrorMessage(e.client_message()));
        r
    })
}

/// A write (POST, PUT, DELETE, PATCH) that may go to EM: refused unless
/// writes are allowed, sent once, its task recorded as the caller's, and
/// the cached reads of the collection it went to dropped.
async fn write(
    app: &Arc<App>,
    caller: &access::Caller,
    parts: &Parts,
    body: Incoming,
    target: &Target,
    ctx: &Ctx,
) -> Result<Response<Body>, GatewayError> {
    let (method, to) = (&parts.method, &ctx.to);
    if !proxy::is_write(method) || !app.settings.access.allow_writes {
        return Err(GatewayError::MethodNotAllowed(method.clone(), "GET, HEAD"));
    }
    // A browser sends the cookie by itself, also on a cross-site form
    // post; a write carried by nothing else must come from the
    // gateway's own origin.
    if clients::cookie_only(&parts.headers) && !same_origin(&parts.headers, &to.public) {
        return Err(GatewayError::Forbidden(
            "a write authenticated by the session cookie alone needs an Origin header naming this gateway",
        ));
    }
    let limit = app.settings.access.max_request_body;
    let (mut em, session) = proxy::send_write(
        &app.pool,
        method,
        target,
        &parts.headers,
        ctx.request_id(),
        body,
        limit,
    )
    .await?;
    if em.status.is_success() {
        // A task is the caller's: the client gets it by the gateway's id.
        if let Some(doc) = app
            .tasks
            .record(&app.pool, caller.owner(), &em.body, session)
            .await
        {
            // EM's own Location names EM's id of it: point it at the
            // gateway's (rewritten to the client's base like any link).
            if em.headers.contains_key(http::header::LOCATION) {
                let href = crate::em::session::element_text(&doc, b"TaskId")
                    .map(|id| format!("{}/api/tasks/{id}", app.pool.upstream().base_url()))
                    .and_then(|h| HeaderValue::from_str(&h).ok());
                match href {
                    Some(h) => {
                        em.headers.insert(http::header::LOCATION, h);
                    }
                    None => {
                        em.headers.remove(http::header::LOCATION);
                    }
                }
            }
            em.headers.remove(http::header::CONTENT_LOCATION);
            em.body = doc;
        }
    }
    let response = proxy::render_write(&app.pool, em, to).await?;
    if response.status().is_success() {
        // What a write changed is no longer what the cache holds: drop
        // the cached reads of the collection it went to.
        if let Some(first) = target.segment(0) {
            // The fleet's part is retried by itself if Redis is away; the
            // write's answer is EM's either way.
            let _ = reads::purge_prefix_everywhere(
                &app.reads,
                format!("/api/{}", first.to_ascii_lowercase()),
            )
            .await;
        }
    }
    Ok(response)
}

/// `GET /api/query?type=Task`: EM answers it per session, the gateway
/// per client.
fn is_task_query(target: &Target) -> bool {
    target.segment_count() == 1
        && target.is(0, "query")
        && target.query().iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("type")
                && v.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("task"))
        })
}

/// `/api/tasks`, `/api/tasks/{ID}` and `/api/query?type=Task`: the
/// caller's tasks only (see [`crate::gateway::tasks`]).
async fn tasks_route(
    app: &Arc<App>,
    caller: &access::Caller,
    method: &Method,
    target: &Target,
    to: &Representation,
) -> Result<Response<Body>, GatewayError> {
    let owner = caller.owner();
    let base = app.pool.upstream().base_url();
    let not_found = |id: &str| {
        GatewayError::NotFound(format!("task {}", id.chars().take(64).collect::<String>()))
    };
    let shared_down = |_: crate::fleet::Down| GatewayError::SharedDown("the task");
    let doc = match (method, target.segment_count(), target.segment(1)) {
        (&Method::GET | &Method::HEAD, 1, _) => {
            let tasks = app.tasks.list(&app.pool, owner).await;
            let tasks = tasks.map_err(|_| GatewayError::SharedDown("the task list"))?;
            match target.is(0, "query") {
                true => tasks::query_document(&tasks, base),
                false => tasks::list_document(&tasks),
            }
        }
        (&Method::GET | &Method::HEAD, 2, Some(id)) => app
            .tasks
            .get(&app.pool, owner, id)
            .await
            .map_err(shared_down)?
            .ok_or_else(|| not_found(id))?,
        (&Method::DELETE, 2, Some(id)) if app.settings.access.allow_writes => {
            if !app
                .tasks
                .delete(&app.pool, owner, id)
                .await
                .map_err(shared_down)?
            {
                return Err(not_found(id));
            }
            let mut r = Response::new(Body::default());
            *r.status_mut() = StatusCode::NO_CONTENT;
            return Ok(r);
        }
        (_, 2, _) => {
            return Err(GatewayError::MethodNotAllowed(
                method.clone(),
                if app.settings.access.allow_writes {
                    "GET, HEAD, DELETE"
                } else {
                    "GET, HEAD"
                },
            ))
        }
        (_, 1, _) => return Err(GatewayError::MethodNotAllowed(method.clone(), "GET, HEAD")),
        _ => return Err(not_found(&target.shown())),
    };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, render::XML);
    let em = crate::em::client::UpstreamResponse {
        status: StatusCode::OK,
        headers,
        body: doc,
        elapsed: std::time::Duration::ZERO,
        held: Default::default(),
    };
    let mut r = render::render(em, base, to)?;
    if method == Method::HEAD {
        *r.body_mut() = Body::default();
    }
    Ok(r)
}

/// Whether `Origin` names the gateway's public origin (scheme and authority).
fn same_origin(headers: &HeaderMap, public: &str) -> bool {
    headers
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|origin| render::is_origin_of(origin, public))
}

/// Bytes of a request's head: target and headers.
fn head_size(parts: &Parts, heads: &Heads<'_>) -> usize {
    heads.bytes() + parts.uri.path_and_query().map_or(0, |p| p.as_str().len())
}

async fn metrics(app: &App) -> Response<Body> {
    let Some(handle) = &app.metrics else {
        return plain(
            StatusCode::NOT_FOUND,
            "metrics are not available in this process\n",
        );
    };
    // moka's counts trail its inserts until its housekeeping runs.
    app.reads.cache.settle().await;
    let snapshot = crate::gateway::status::metrics_snapshot(app);
    let mut r = Response::new(Body::new(Bytes::from(crate::ops::metrics::render(
        handle, &snapshot,
    ))));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn log_error(e: &GatewayError) {
    match e.status().as_u16() {
        500.. => tracing::warn!(error = %e, "request failed"),
        _ => tracing::debug!(error = %e, "request refused"),
    }
}

/// `/readyz`: 200 while the gateway holds an EM session, 503 otherwise,
/// while draining and (with `EMGATE_WARM_BEFORE_READY`) while the hot keys
/// are fetched again at start; the body says why, for people and probes
/// alike.
fn readiness(app: &App) -> Response<Body> {
    let draining = app.draining.load(Ordering::Relaxed);
    let warming = app.warming.load(Ordering::Relaxed);
    let mut body = serde_json::Map::new();
    let (state, ready) = match app.pool.state() {
        SessionState::Valid { .. } => ("valid", !draining && !warming),
        SessionState::LoggingOn => ("logging_on", false),
        SessionState::Failing {
            reason,
            retry_in,
            paused,
        } => {
            body.insert("reason".into(), reason.into());
            body.insert("retry_in_s".into(), retry_in.as_secs().into());
            body.insert("logons_paused".into(), paused.into());
            ("failing", false)
        }
    };
    body.insert("ready".into(), ready.into());
    body.insert("em_session".into(), state.into());
    let shared = match &app.fleet {
        None => "off",
        // Redis being down never makes a replica unready: it goes on alone.
        Some(f) if f.is_up() => "up",
        Some(_) => "down",
    };
    body.insert("shared".into(), shared.into());
    if let Some(f) = &app.fleet {
        body.insert("fleet_members".into(), f.members().into());
        body.insert("em_session_shared".into(), app.pool.is_shared().into());
    }
    body.insert("draining".into(), draining.into());
    if warming {
        body.insert("warming".into(), true.into());
    }
    let mut r = Response::new(Body::new(Bytes::from(
        serde_json::Value::Object(body).to_string(),
    )));
    *r.status_mut() = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    r.headers_mut().insert(CONTENT_TYPE, render::JSON);
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The route template for a path: a fixed, small set of values (a metrics label).
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        p if is_api(p) => "/api/*",
        p if p.starts_with("/admin/") => "/admin/*",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templates_and_origins_compare_scheme_and_host() {
        assert_eq!(route_label("/api/backupSessions/123"), "/api/*");
        assert_eq!(route_label("/etc/passwd"), "other");
        let mut h = HeaderMap::new();
        assert!(!same_origin(&h, "https://gw:9399"));
        h.insert(ORIGIN, "https://GW:9399".parse().unwrap());
        assert!(same_origin(&h, "https://gw:9399"));
        assert!(!same_origin(&h, "http://gw:9399"));
        assert!(same_origin(&h, "https://gw:9399/prefix"));
        h.insert(ORIGIN, "null".parse().unwrap());
        assert!(!same_origin(&h, "https://gw:9399"));
        assert_eq!(
            crate::ops::metrics::status_label(StatusCode::from_u16(418).unwrap()),
            "4xx"
        );
    }
}
