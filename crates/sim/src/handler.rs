//! One request in, one response out: routing, logon, session checks, faults and
//! content negotiation.
//!
//! Order of work for every request, as a client of EM would observe it:
//! 1. it is logged ([`State::record`]) and counted;
//! 2. the configured latency passes;
//! 3. a fault set for the request's target replaces the answer;
//! 4. the route answers: the entry point and logon need no session, every other
//!    `/api` resource does (401 first, then 404/405).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use uuid::Uuid;

use super::conn::ConnCtx;
use super::jobs;
use super::model::Document;
use super::query::{self, percent_decode, QueryError};
use super::report::{self, Report};
use super::state::{session_token, Counters, FaultClass, SessionError, State, Task};
use super::{json, resources, xml, Fault, RecordedRequest};

/// The session header and cookie name (http_authentication.md).
const SESSION_HEADER: &str = "x-restsvcsessionid";
const SESSION_COOKIE: &str = "X-RestSvcSessionId";
/// Sent with every 401 of a logon (http_authentication.md).
const WWW_AUTHENTICATE: &str = "Basic Realm=RestSvc";
const SERVER: &str = "emgate-sim";
/// The 401 message for a token whose session is gone (or never was).
const SESSION_GONE: &str = "The logon session does not exist or has been closed.";

/// The response body: whole, or (the `Stall` fault) a first part and then
/// nothing more.
pub(crate) enum Body {
    /// The whole body.
    Full(Full<Bytes>),
    /// What is sent before the stall; afterwards the body never ends.
    Stalled(Option<Bytes>),
}

impl Body {
    fn new(bytes: Bytes) -> Body {
        Body::Full(Full::new(bytes))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Body::Full(full) => std::pin::Pin::new(full).poll_frame(cx),
            Body::Stalled(first) => match first.take() {
                Some(b) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(b)))),
                // Never wakes: the connection is aborted when the simulator stops.
                None => std::task::Poll::Pending,
            },
        }
    }
}

/// Representation asked for by `Accept` (every docs page: XML unless the client
/// asks for `application/json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Xml,
    Json,
}

/// Where a request goes. Ids are kept as sent, for error messages.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    EntryPoint,
    Logon,
    LogonSessions,
    LogonSession(String),
    RestorePoints,
    RestorePoint(String),
    RestorePointVms(String),
    VmRestorePoint(String),
    /// `/api/reports/summary`.
    Reports,
    /// `/api/reports/summary/{report}`.
    Report(Report),
    Jobs,
    /// `/api/jobs/{id}`: GET, and POST with `?action=start`.
    Job(String),
    BackupSessions,
    BackupSession(String),
    /// `/api/query?type=…`.
    Query,
    /// `/api/tasks`: the calling session's tasks.
    Tasks,
    /// `/api/tasks/{id}` (ids like `task-7`): GET and DELETE.
    Task(String),
    /// Below `/api/` but nothing the simulator knows.
    UnknownApi,
    /// Outside `/api`.
    Outside,
}

impl Route {
    /// Matches a path. Literal segments match ignoring ASCII case, as EM's WCF
    /// URI templates do; trailing and doubled slashes are ignored.
    fn parse(path: &str) -> Route {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let is = |i: usize, lit: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(lit));
        if !is(0, "api") {
            return Route::Outside;
        }
        let id = |i: usize| percent_decode(segs[i]);
        match segs.len() {
            1 => Route::EntryPoint,
            2 if is(1, "sessionMngr") => Route::Logon,
            2 if is(1, "logonSessions") => Route::LogonSessions,
            2 if is(1, "restorePoints") => Route::RestorePoints,
            2 if is(1, "jobs") => Route::Jobs,
            2 if is(1, "backupSessions") => Route::BackupSessions,
            2 if is(1, "query") => Route::Query,
            2 if is(1, "tasks") => Route::Tasks,
            3 if is(1, "reports") && is(2, "summary") => Route::Reports,
            4 if is(1, "reports") && is(2, "summary") => {
                Report::from_segment(segs[3]).map_or(Route::UnknownApi, Route::Report)
            }
            3 if is(1, "jobs") => Route::Job(id(2)),
            3 if is(1, "backupSessions") => Route::BackupSession(id(2)),
            3 if is(1, "tasks") => Route::Task(id(2)),
            3 if is(1, "logonSessions") => Route::LogonSession(id(2)),
            3 if is(1, "restorePoints") => Route::RestorePoint(id(2)),
            3 if is(1, "vmRestorePoints") => Route::VmRestorePoint(id(2)),
            4 if is(1, "restorePoints") && is(3, "vmRestorePoints") => {
                Route::RestorePointVms(id(2))
            }
            _ => Route::UnknownApi,
        }
    }

    /// Whether `method` on this route is a write ([`FaultTarget::Write`](super::FaultTarget::Write)):
    /// a change to a resource that needs a session, a logout excepted.
    fn is_write(&self, method: &Method) -> bool {
        let changes = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(method);
        changes && self.fault_class() == FaultClass::Data && !matches!(self, Route::LogonSession(_))
    }

    fn fault_class(&self) -> FaultClass {
        match self {
            Route::Logon => FaultClass::Logon,
            Route::EntryPoint | Route::Outside => FaultClass::Other,
            _ => FaultClass::Data,
        }
    }

    /// Methods the resource answers (besides HEAD, answered like GET).
    fn allowed(&self) -> &'static [Method] {
        match self {
            Route::Logon => &[Method::POST],
            Route::LogonSession(_) | Route::Task(_) => &[Method::GET, Method::DELETE],
            Route::Job(_) => &[Method::GET, Method::POST],
            _ => &[Method::GET],
        }
    }
}

/// Answers one request. `Err` makes hyper drop the connection without an answer,
/// which is how the `Reset` fault is delivered.
pub(crate) async fn handle<B>(
    state: Arc<State>,
    conn: Arc<ConnCtx>,
    req: Request<B>,
) -> Result<Response<Body>, io::Error> {
    state.record(RecordedRequest {
        method: req.method().to_string(),
        path_and_query: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned()),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    tracing::debug!(method = %req.method(), uri = %req.uri(), "sim request");

    // Counted while it is worked on, latency included (as EM is busy).
    let _working = state.working(req.uri().path());
    let latency = state.latency(req.uri().path());
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let route = Route::parse(req.uri().path());
    let format = negotiate(req.headers());
    let head = req.method() == Method::HEAD;
    let base = request_base(&state, &req);

    let normal = || {
        answer(
            &state,
            &route,
            req.method(),
            req.headers(),
            req.uri().query(),
            format,
            head,
            &base,
        )
    };
    let fault = state
        .fault_for(route.fault_class(), route.is_write(req.method()))
        .or_else(|| state.path_fault(req.uri().path()));
    let Some(fault) = fault else {
        return Ok(normal());
    };
    match fault {
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = if status.is_informational()
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED
            {
                empty(status)
            } else {
                error(
                    status,
                    &format!(
                        "Simulated failure: the server answered {}.",
                        status.as_u16()
                    ),
                    format,
                    head,
                )
            };
            if status == StatusCode::UNAUTHORIZED && route == Route::Logon {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(WWW_AUTHENTICATE),
                );
            }
            Ok(resp)
        }
        Fault::Hang => {
            // Never answer; the connection task is aborted when the sim stops.
            std::future::pending::<()>().await;
            unreachable!("a pending future never completes")
        }
        Fault::Reset => reset(&conn),
        Fault::AnswerLost => {
            // The work is done (and its answer built) before the line drops.
            drop(normal());
            reset(&conn)
        }
        Fault::Garbage => Ok(garbage(format, &base, head)),
        Fault::Html => Ok(with_body(
            StatusCode::OK,
            b"<html><body><script>alert(document.cookie)</script></body></html>".to_vec(),
            "text/html; charset=utf-8",
            head,
        )),
        Fault::Stall => {
            let (parts, body) = normal().into_parts();
            let bytes = match body {
                Body::Full(f) => http_body_util::BodyExt::collect(f)
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default(),
                Body::Stalled(b) => b.unwrap_or_default(),
            };
            let half = bytes.slice(..bytes.len() / 2);
            Ok(Response::from_parts(parts, Body::Stalled(Some(half))))
        }
    }
}

/// Drops the connection with a TCP RST and no answer.
fn reset(conn: &ConnCtx) -> Result<Response<Body>, io::Error> {
    conn.reset();
    Err(io::Error::new(
        io::ErrorKind::ConnectionReset,
        "simulated connection reset",
    ))
}

/// The normal answer to a request (no fault).
#[allow(clippy::too_many_arguments)]
fn answer(
    state: &State,
    route: &Route,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    format: Format,
    head: bool,
    base: &str,
) -> Response<Body> {
    let method_ok = |route: &Route| {
        let m = if *method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        route.allowed().contains(m)
    };
    match route {
        Route::Outside => {
            return error(
                StatusCode::NOT_FOUND,
                "The requested resource does not exist.",
                format,
                head,
            )
        }
        Route::EntryPoint => {
            return if method_ok(route) {
                document(StatusCode::OK, &resources::entry_point(base), format, head)
            } else {
                not_allowed(route, method, format, head)
            };
        }
        Route::Logon => {
            return if method_ok(route) {
                logon(state, headers, format, base)
            } else {
                not_allowed(route, method, format, head)
            };
        }
        _ => {}
    }

    // Everything else needs a valid session (http_authentication.md).
    let session = match state.use_session(request_token(headers).as_deref()) {
        Ok(id) => id,
        Err(why) => {
            Counters::bump(&state.counters.unauthorized);
            let message = match why {
                SessionError::Missing => {
                    "Authentication required: send the X-RestSvcSessionId header or cookie of a logon session."
                }
                SessionError::Unknown => SESSION_GONE,
                SessionError::Expired => "The logon session has expired. Log on again.",
            };
            return error(StatusCode::UNAUTHORIZED, message, format, head);
        }
    };
    tracing::trace!(%session, "sim session ok");

    if *route == Route::UnknownApi {
        return error(
            StatusCode::NOT_FOUND,
            "The requested resource does not exist.",
            format,
            head,
        );
    }
    if !method_ok(route) {
        return not_allowed(route, method, format, head);
    }
    let entity = wants_entity(query);
    let data = state.data();
    let data = &*data;
    match route {
        Route::LogonSessions => document(
            StatusCode::OK,
            &resources::logon_sessions(base, &state.sessions()),
            format,
            head,
        ),
        Route::LogonSession(raw) => {
            let found = parse_id(raw).and_then(|id| state.session_user(&id).map(|u| (id, u)));
            let Some((id, user)) = found else {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("Logon session [{raw}] does not exist."),
                    format,
                    head,
                );
            };
            if *method == Method::DELETE {
                // logging_out.md: 204 No Content, the session is gone.
                if state.delete_session(&id) {
                    Counters::bump(&state.counters.logouts);
                }
                return empty(StatusCode::NO_CONTENT);
            }
            document(
                StatusCode::OK,
                &resources::logon_session_doc(base, &id, &user),
                format,
                head,
            )
        }
        Route::RestorePoints => document(
            StatusCode::OK,
            &resources::restore_point_refs(base, data),
            format,
            head,
        ),
        Route::RestorePoint(raw) | Route::RestorePointVms(raw) => {
            let Some(rp) = parse_id(raw).and_then(|id| data.restore_point(&id)) else {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("Restore point [{raw}] does not exist."),
                    format,
                    head,
                );
            };
            let doc = match (route, entity) {
                (Route::RestorePoint(_), false) => resources::restore_point_ref(base, data, rp),
                (Route::RestorePoint(_), true) => resources::restore_point_entity(base, data, rp),
                (_, false) => resources::vm_point_refs(base, data, rp),
                (_, true) => resources::vm_point_entities(base, data, rp),
            };
            document(StatusCode::OK, &doc, format, head)
        }
        Route::VmRestorePoint(raw) => {
            let Some((rp, vm)) = parse_id(raw).and_then(|id| data.vm_point(&id)) else {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("VM restore point [{raw}] does not exist."),
                    format,
                    head,
                );
            };
            let doc = if entity {
                resources::vm_point_entity(base, data, rp, vm)
            } else {
                resources::vm_point_ref(base, data, rp, vm)
            };
            document(StatusCode::OK, &doc, format, head)
        }
        Route::Reports => document(StatusCode::OK, &report::summary(base), format, head),
        Route::Report(which) => {
            document(StatusCode::OK, &report::report(data, *which), format, head)
        }
        Route::Jobs => {
            let doc = if entity {
                jobs::job_entities(base, data)
            } else {
                jobs::job_refs(base, data)
            };
            document(StatusCode::OK, &doc, format, head)
        }
        Route::Job(raw) => {
            let Some(j) = parse_id(raw).and_then(|id| data.job_index(&id)) else {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("Job [{raw}] does not exist."),
                    format,
                    head,
                );
            };
            if *method == Method::POST {
                return job_action(state, &session, j, query, format, base);
            }
            let doc = if entity {
                jobs::job_entity_doc(base, data, j)
            } else {
                jobs::job_ref_doc(base, data, &data.jobs[j])
            };
            document(StatusCode::OK, &doc, format, head)
        }
        Route::BackupSessions => {
            let doc = if entity {
                jobs::session_entities(base, data)
            } else {
                jobs::session_refs(base, data)
            };
            document(StatusCode::OK, &doc, format, head)
        }
        Route::BackupSession(raw) => {
            let Some(s) = parse_id(raw).and_then(|id| data.session(&id)) else {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("Backup session [{raw}] does not exist."),
                    format,
                    head,
                );
            };
            let doc = if entity {
                jobs::session_entity_doc(base, data, s)
            } else {
                jobs::session_ref_doc(base, data, s)
            };
            document(StatusCode::OK, &doc, format, head)
        }
        Route::Query => match query::answer(base, data, &state.tasks(&session), query) {
            Ok(doc) => document(StatusCode::OK, &doc, format, head),
            Err(QueryError::Bad(message)) => error(StatusCode::BAD_REQUEST, &message, format, head),
            Err(QueryError::NotSimulated(message)) => {
                error(StatusCode::NOT_IMPLEMENTED, &message, format, head)
            }
        },
        Route::Tasks => document(
            StatusCode::OK,
            &jobs::task_list(base, data, &state.tasks(&session)),
            format,
            head,
        ),
        Route::Task(raw) => {
            // Another session's task is as unknown as one that never was
            // (tasks_intro.md: tasks belong to the logon session).
            let number = Task::number_of(raw);
            if *method == Method::DELETE {
                // delete_task_id.md: 204 No Content.
                return match number.filter(|&n| state.delete_task(&session, n)) {
                    Some(_) => empty(StatusCode::NO_CONTENT),
                    None => task_not_found(raw, format, head),
                };
            }
            match number.and_then(|n| state.task(&session, n)) {
                Some(task) => {
                    document(StatusCode::OK, &jobs::task(base, data, &task), format, head)
                }
                None => task_not_found(raw, format, head),
            }
        }
        Route::EntryPoint | Route::Logon | Route::UnknownApi | Route::Outside => {
            unreachable!("handled above")
        }
    }
}

/// The `POST` actions jobs_id.md lists for `/jobs/{ID}`; only `start` is simulated.
const JOB_ACTIONS: [&str; 6] = [
    "start",
    "stop",
    "retry",
    "clone",
    "sync",
    "toggleScheduleEnabled",
];

/// `POST /api/jobs/{id}?action=start` (post_jobs_id_actionstart.md): 202 Accepted
/// with a `Task` that is `Running` (scenario_starting_a_job.md step 7). The other
/// documented actions answer 501, anything else 400.
fn job_action(
    state: &State,
    session: &Uuid,
    job: usize,
    query: Option<&str>,
    format: Format,
    base: &str,
) -> Response<Body> {
    let action = query_value(query, "action");
    match action.as_deref() {
        Some(a) if a.eq_ignore_ascii_case("start") => {}
        Some(a) if JOB_ACTIONS.iter().any(|d| d.eq_ignore_ascii_case(a)) => {
            return error(
                StatusCode::NOT_IMPLEMENTED,
                &format!("The simulator does not implement the job action [{a}]."),
                format,
                false,
            );
        }
        Some(a) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("Action [{a}] is not valid for a job."),
                format,
                false,
            );
        }
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "The request names no action: send ?action=start.",
                format,
                false,
            );
        }
    }
    let Some(task) = state.create_task(session, job) else {
        // The session ended between its check and now.
        return error(StatusCode::UNAUTHORIZED, SESSION_GONE, format, false);
    };
    let id = task.id();
    let mut resp = document(
        StatusCode::ACCEPTED,
        &jobs::task(base, &state.data(), &task),
        format,
        false,
    );
    // EM sends no Location with this 202 (post_jobs_id_actionstart.md lists only
    // Content-length and Content-type); the simulator adds one naming the task,
    // so that tests can check the gateway rewrites Location like an Href.
    if let Ok(v) = HeaderValue::from_str(&jobs::task_href(base, &id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The first value of query parameter `key` (name ignoring ASCII case), as sent.
fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.to_owned())
}

/// `POST /api/sessionMngr/?v=…` (post_sessionmngr.md, http_authentication.md).
fn logon(state: &State, headers: &HeaderMap, format: Format, base: &str) -> Response<Body> {
    let creds = basic_credentials(headers);
    let Some((user, _)) = creds.as_ref().filter(|(u, p)| state.credentials_ok(u, p)) else {
        Counters::bump(&state.counters.logons_failed);
        let message = if creds.is_none() {
            "Authentication required: send the Authorization header with Basic credentials."
        } else {
            "Authentication failed: the user name or password is incorrect."
        };
        let mut resp = error(StatusCode::UNAUTHORIZED, message, format, false);
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(WWW_AUTHENTICATE),
        );
        return resp;
    };
    let id = state.create_session(user);
    Counters::bump(&state.counters.logons_ok);
    let token = session_token(&id);
    let mut resp = document(
        StatusCode::CREATED,
        &resources::logon_session_doc(base, &id, user),
        format,
        false,
    );
    let h = resp.headers_mut();
    // Both forms verbatim from http_authentication.md.
    if let Ok(v) = HeaderValue::from_str(&token) {
        h.insert(SESSION_COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{SESSION_COOKIE}={token}; Path=/api;")) {
        h.insert(header::SET_COOKIE, v);
    }
    resp
}

/// `user:password` from `Authorization: Basic …`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The session token a request presents: the cookie wins over the header when both
/// are sent (http_authentication.md).
fn request_token(headers: &HeaderMap) -> Option<String> {
    let from_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| name.trim() == SESSION_COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"').to_owned());
    from_cookie.or_else(|| {
        headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    })
}

/// `?format=Entity` (format.md); the value is matched ignoring case, and EM's query
/// spelling `Entities` is taken too.
fn wants_entity(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .any(|(k, v)| {
                k.eq_ignore_ascii_case("format")
                    && (v.eq_ignore_ascii_case("entity") || v.eq_ignore_ascii_case("entities"))
            })
    })
}

/// JSON when `Accept` ranks `application/json` above XML, else XML.
fn negotiate(headers: &HeaderMap) -> Format {
    let mut json = (0.0f32, usize::MAX);
    let mut xml = (0.0f32, usize::MAX);
    let ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for (pos, range) in ranges.enumerate() {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let slot = match media.as_str() {
            "application/json" | "text/json" => &mut json,
            "application/xml" | "text/xml" => &mut xml,
            _ => continue,
        };
        if q > slot.0 {
            *slot = (q, pos);
        }
    }
    let json_wins = json.0 > xml.0 || (json.0 > 0.0 && json.0 == xml.0 && json.1 < xml.1);
    if json_wins {
        Format::Json
    } else {
        Format::Xml
    }
}

/// `scheme://authority` for Hrefs. Like EM, links follow the host the client
/// addressed (the `Host` header); without a usable one, the sim's own base URL.
fn request_base<B>(state: &State, req: &Request<B>) -> String {
    let scheme = if state.tls { "https" } else { "http" };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
        });
    match host {
        Some(h) => format!("{scheme}://{h}"),
        None => state.base_url.clone(),
    }
}

fn parse_id(raw: &str) -> Option<Uuid> {
    Uuid::parse_str(raw).ok()
}

fn render(doc: &Document, format: Format) -> (String, &'static str) {
    match format {
        Format::Xml => (xml::render(doc), "application/xml; charset=utf-8"),
        Format::Json => (json::render(doc), "application/json; charset=utf-8"),
    }
}

/// A response carrying a document; for HEAD the same headers without the body.
fn document(status: StatusCode, doc: &Document, format: Format, head: bool) -> Response<Body> {
    let (body, content_type) = render(doc, format);
    with_body(status, body.into_bytes(), content_type, head)
}

fn with_body(
    status: StatusCode,
    body: Vec<u8>,
    content_type: &'static str,
    head: bool,
) -> Response<Body> {
    let len = body.len();
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut resp = Response::new(Body::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::SERVER, HeaderValue::from_static(SERVER));
    resp
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::new()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static(SERVER));
    resp
}

/// EM's `<Error>` (or its JSON) with this status (http_response_codes.md: every
/// error status carries an Error body).
fn error(status: StatusCode, message: &str, format: Format, head: bool) -> Response<Body> {
    document(
        status,
        &resources::error(status.as_u16(), message),
        format,
        head,
    )
}

/// EM's 404 for a task the calling session does not have.
fn task_not_found(raw: &str, format: Format, head: bool) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        &format!("Task [{raw}] does not exist."),
        format,
        head,
    )
}

fn not_allowed(route: &Route, method: &Method, format: Format, head: bool) -> Response<Body> {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("The method {method} is not allowed for this resource."),
        format,
        head,
    );
    let mut allow: Vec<&str> = route.allowed().iter().map(Method::as_str).collect();
    if allow.contains(&"GET") {
        allow.push("HEAD");
    }
    if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// A 200 whose body breaks off inside the first element: not a parseable document.
fn garbage(format: Format, base: &str, head: bool) -> Response<Body> {
    let (body, content_type) = match format {
        Format::Xml => (
            format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<EntityReferences xmlns=\"{}\">\n  <Ref Type=\"VmRestorePointReference\" Href=\"{base}/api/vmRestorePoints/",
                xml::NAMESPACE
            ),
            "application/xml; charset=utf-8",
        ),
        Format::Json => (
            format!("{{\"Refs\":[{{\"Links\":[{{\"Rel\":\"Up\",\"Href\":\"{base}/api/backupServers/"),
            "application/json; charset=utf-8",
        ),
    };
    with_body(StatusCode::OK, body.into_bytes(), content_type, head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/api/"), Route::EntryPoint);
        assert_eq!(Route::parse("/api"), Route::EntryPoint);
        assert_eq!(Route::parse("/API/SessionMngr/"), Route::Logon);
        assert_eq!(Route::parse("/api/sessionMngr"), Route::Logon);
        assert_eq!(
            Route::parse("/api/restorePoints/abc/vmRestorePoints/"),
            Route::RestorePointVms("abc".into())
        );
        assert_eq!(
            Route::parse("/api/vmRestorePoints/x%2Dy"),
            Route::VmRestorePoint("x-y".into())
        );
        assert_eq!(Route::parse("/api/backups"), Route::UnknownApi);
        assert_eq!(Route::parse("/api/reports/summary/"), Route::Reports);
        assert_eq!(
            Route::parse("/api/Reports/Summary/VMS_OVERVIEW"),
            Route::Report(Report::VmsOverview)
        );
        assert_eq!(
            Route::parse("/api/reports/summary/statistics"),
            Route::UnknownApi
        );
        assert_eq!(Route::parse("/api/jobs"), Route::Jobs);
        assert_eq!(Route::parse("/api/jobs/x"), Route::Job("x".into()));
        assert_eq!(Route::parse("/api/backupsessions"), Route::BackupSessions);
        assert_eq!(
            Route::parse("/api/backupSessions/y"),
            Route::BackupSession("y".into())
        );
        assert_eq!(Route::parse("/api/query"), Route::Query);
        assert_eq!(
            Route::parse("/api/tasks/task-3"),
            Route::Task("task-3".into())
        );
        assert_eq!(Route::parse("/api/tasks/"), Route::Tasks);
        assert_eq!(Route::parse("/api/tasks/a/b"), Route::UnknownApi);
        assert!(Route::Task("t".into()).is_write(&Method::DELETE));
        assert!(Route::Job("j".into()).is_write(&Method::POST));
        assert!(!Route::Job("j".into()).is_write(&Method::GET));
        assert!(!Route::Tasks.is_write(&Method::HEAD));
        assert!(!Route::Logon.is_write(&Method::POST));
        assert!(!Route::LogonSession("s".into()).is_write(&Method::DELETE));
        assert_eq!(Route::parse("/"), Route::Outside);
        assert_eq!(Route::parse("/apix"), Route::Outside);
    }

    #[test]
    fn accept_and_format() {
        let mut h = HeaderMap::new();
        assert_eq!(negotiate(&h), Format::Xml);
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert_eq!(negotiate(&h), Format::Json);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/xml, application/json"),
        );
        assert_eq!(negotiate(&h), Format::Xml);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/xml;q=0.5, application/json"),
        );
        assert_eq!(negotiate(&h), Format::Json);
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(negotiate(&h), Format::Xml);
        assert!(wants_entity(Some("format=Entity")));
        assert!(wants_entity(Some("x=1&FORMAT=entity")));
        assert!(!wants_entity(Some("format=Ref")));
        assert!(!wants_entity(None));
    }

    #[test]
    fn cookie_wins_over_header() {
        let mut h = HeaderMap::new();
        h.insert(SESSION_HEADER, HeaderValue::from_static("fromheader"));
        assert_eq!(request_token(&h).as_deref(), Some("fromheader"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; X-RestSvcSessionId=OsU6RL7OGkGKrPBGxKxURw==; c=d"),
        );
        assert_eq!(
            request_token(&h).as_deref(),
            Some("OsU6RL7OGkGKrPBGxKxURw==")
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Db"), "a-b");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%7Bx%7D"), "{x}");
    }
}
