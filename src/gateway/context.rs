//! The request context: what every phase of a request answers by, made
//! once at the edge (after the method, head size and `Host` checks) and
//! passed down by reference, as Pingora's per-request `CTX`. The router's
//! `/api` phase holds it mutably and writes into it what the access line,
//! the metrics and the history report (the route template, the caller);
//! the phases below it read it, and say through atomics how much of the
//! answer's head they made. A plain hit the router answers at once (before
//! any future is made) needs none: it is a handful of checks and a lookup.
//!
//! It also owns the request's tracing span, made the first time the
//! request does anything but read memory: a cache hit never makes one.
//! Every line *about this request* (its EM fetch and what EM answered, its
//! failure, a logon, a write, an admin action) is logged inside the span
//! and carries the request id; a line about a dependency's state (Redis
//! down or back, EM's session renewed) is the dependency's and may be
//! logged from a request without it. The access line carries the id
//! itself. A span per request cost a hit 2-3 µs, about a sixth of its CPU at
//! `info` (see BENCHMARKS.md), for lines a hit never writes.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::HeaderValue;
use tracing::instrument::Instrumented;
use tracing::{Instrument, Span};

use crate::gateway::conn::Conn;
use crate::gateway::render::Representation;

/// One request's context (see the module's docs).
pub struct Ctx {
    /// The connection it came on.
    pub conn: Conn,
    /// What it is answered in: XML or JSON, the JSON case, the public base.
    pub to: Representation,
    /// Its id, kept or made at the edge.
    request_id: HeaderValue,
    /// When it was taken up (its arrival, or the moment a place among the
    /// requests at work came free for it): what a cached answer's age is
    /// counted to, so a hit reads no clock of its own, and a wait in the
    /// queue never makes an entry look younger than it is.
    taken_up: Instant,
    /// Made on first use; `OnceLock` so the context can be shared by
    /// reference across the request's awaits.
    span: OnceLock<Span>,
    /// What its phases learnt of it (see [`Learnt`]): written by the
    /// router's `/api` phase, which holds the context mutably (a lock per
    /// fact cost a hit about 40 instructions each, a `OnceLock` per fact
    /// `Once`'s slow path).
    learnt: Learnt,
    /// How much of the answer's head a phase made ([`HEAD_OPEN`],
    /// [`HEAD_COMPLETE`], [`HEAD_WHOLE`]), so the edge adds or looks up
    /// only the rest. An atomic, not a `OnceLock`: setting one of those
    /// goes through `Once`'s slow path, about 80 instructions a hit.
    head: AtomicU8,
    /// Whether its path is known to be plain text (see
    /// `reads::Resolved::path_is_plain`), so the access line need not check it.
    path_plain: bool,
}

/// Whom a request's access line, history and trace name as its caller,
/// kept from client access to the end of the request without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerName {
    /// An anonymous caller or the operator: the gateway's own names
    /// (`Caller::owner_label`), plain text, which the access line writes
    /// unchecked.
    Gateway(&'static str),
    /// A client of the clients file by its secret: the file's name, which
    /// its check makes plain text (letters, digits, `-`, `_`, `.`), so the
    /// access line writes it unchecked.
    Listed(Arc<str>),
    /// The owner of a gateway session (any owner, the gateway's own too:
    /// the access line checks it): the name shared with the session's
    /// record.
    Owner(Arc<str>),
}

impl CallerName {
    /// The name.
    pub fn as_str(&self) -> &str {
        match self {
            CallerName::Gateway(label) => label,
            CallerName::Listed(name) | CallerName::Owner(name) => name,
        }
    }
}

/// What a request's phases learn of it for the access line, the metrics
/// and the history: the first said of each wins (the phase that takes the
/// request says it).
#[derive(Debug, Default)]
pub struct Learnt {
    /// The route template that answers it.
    pub route: Option<&'static str>,
    /// Its caller's name, once client access knows it.
    pub client: Option<CallerName>,
}

/// Nothing said: the edge adds what every `/api` answer carries.
const HEAD_OPEN: u8 = 0;
/// The head carries what every `/api` answer must (a cached answer's
/// prepared head has it made once, when the entry is first served).
const HEAD_COMPLETE: u8 = 1;
/// The head is a plain hit's whole head (`reads::whole_hit`): complete,
/// with the request's id and `X-Cache: HIT`; the edge adds nothing and
/// reads the cache status from here, not from the head.
const HEAD_WHOLE: u8 = 2;

impl Ctx {
    /// The context of a request with `request_id` (the client's
    /// `X-Request-Id` if it was kept, else one made for it).
    pub fn new(conn: Conn, to: Representation, request_id: &HeaderValue, taken_up: Instant) -> Ctx {
        Ctx {
            conn,
            to,
            request_id: request_id.clone(),
            taken_up,
            span: OnceLock::new(),
            learnt: Learnt::default(),
            head: AtomicU8::new(HEAD_OPEN),
            path_plain: false,
        }
    }

    /// When the request was taken up (see the field).
    pub fn taken_up(&self) -> Instant {
        self.taken_up
    }

    /// The route template that answers the request (the first said wins:
    /// the phase that takes the request says it).
    pub fn answered_by(&mut self, route: &'static str) {
        self.learnt.route.get_or_insert(route);
    }

    /// Who is calling, as the metrics, the history and the access line name it.
    pub fn called_by(&mut self, client: CallerName) {
        self.learnt.client.get_or_insert(client);
    }

    /// What the phases learnt, taken out once they are done.
    pub fn take_learnt(&mut self) -> Learnt {
        std::mem::take(&mut self.learnt)
    }

    /// The answer's head is a prepared one: it already carries the headers
    /// of every `/api` answer (`render::api_headers`), and nothing added
    /// after it (cache status, age, dates, request id) touches them.
    pub fn head_is_complete(&self) {
        self.head.fetch_max(HEAD_COMPLETE, Ordering::Relaxed);
    }

    /// Whether a phase said the answer's head is complete (or whole).
    pub fn is_head_complete(&self) -> bool {
        self.head.load(Ordering::Relaxed) >= HEAD_COMPLETE
    }

    /// The answer's head is a plain hit's whole head (see `HEAD_WHOLE`).
    pub fn head_is_whole(&self) {
        self.head.store(HEAD_WHOLE, Ordering::Relaxed);
    }

    /// Whether a phase said the answer's head is whole.
    pub fn is_head_whole(&self) -> bool {
        self.head.load(Ordering::Relaxed) == HEAD_WHOLE
    }

    /// The request's path is plain text (checked when its target was first
    /// resolved).
    pub fn path_is_plain(&mut self) {
        self.path_plain = true;
    }

    /// Whether a phase said the path is plain text.
    pub fn is_path_plain(&self) -> bool {
        self.path_plain
    }

    /// The request id as a header value, for EM's request.
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    /// The request's span, made now if it was not yet.
    pub fn span(&self) -> &Span {
        self.span.get_or_init(|| {
            let id = crate::gateway::request_id::as_text(&self.request_id);
            // The other fields are filled in with traces on (README,
            // "Traces"); a log line shows only those that are.
            tracing::info_span!(
                "request",
                request_id = %id,
                http.request.method = tracing::field::Empty,
                route = tracing::field::Empty,
                rule = tracing::field::Empty,
                client = tracing::field::Empty,
                cache = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
            )
        })
    }

    /// `work` run inside the request's span.
    pub fn traced<F: Future>(&self, work: F) -> Instrumented<F> {
        work.instrument(self.span().clone())
    }
}
