//! Who is calling, and what they may do before anything reaches EM
//! (see README, "Client access"): authentication of each `/api` request, the per-client
//! rate limit, and the drop-in EM logon and `logonSessions` answered by the
//! gateway itself.
//!
//! Invariants: a client's logout ends only its own gateway session, never
//! the pooled EM session; a client's credentials never reach EM (the proxy
//! strips them); anonymous callers exist only where the settings allow them.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use uuid::Uuid;

use crate::config::Settings;
use crate::digest::{constant_time_eq, same_bytes, sha256};
use crate::gateway::clients::{self, presented, Clients, Presented};
use crate::gateway::context::CallerName;
use crate::gateway::error::GatewayError;
use crate::gateway::heads::{Heads, Name};
use crate::gateway::limit::{Attempts, Bucket};
use crate::gateway::logon::{self, ClientSessions, Ended, SessionInfo};
use crate::gateway::render::Representation;
use crate::gateway::response::Body;
use crate::gateway::target::Target;
use crate::secret::Secret;

/// What client access uses of the gateway's state, and nothing more: the
/// settings, the clients file's clients, gateway sessions and the
/// per-address count of attempts at a secret.
pub struct AccessState {
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// The clients file's clients (empty without one); a reload replaces them.
    pub clients: ArcSwap<Clients>,
    /// The admin token; a reload replaces it.
    pub admin: AdminToken,
    /// Gateway sessions of clients (drop-in logon).
    pub sessions: ClientSessions,
    /// Per-address attempts at a secret: every admin request, and every
    /// credential that fails on `/api`.
    pub attempts: Attempts,
}

/// The token a request presents: a bearer token, or a Basic password, as
/// client access reads them ([`clients::authorization`]).
fn admin_token_presented(headers: &HeaderMap) -> Option<Secret> {
    match clients::authorization(headers.get(AUTHORIZATION)) {
        Presented::Bearer(token) => Some(Secret::new(token)),
        Presented::Basic(_, password) => Some(password),
        _ => None,
    }
}

/// How long the admin token a reload replaced is still accepted, so the
/// scripts of a rotation (new token in the Secret, then in the scripts) do
/// not fail in between.
pub const ADMIN_TOKEN_OVERLAP: Duration = Duration::from_secs(60);

/// The admin token (`EMGATE_ADMIN_TOKEN[_FILE]`), and the one before it
/// for [`ADMIN_TOKEN_OVERLAP`] after a reload replaced it. Held as SHA-256
/// digests: the comparison is of equal lengths, and no token sits here in
/// the clear.
pub struct AdminToken(ArcSwap<AdminTokens>);

struct AdminTokens {
    current: Option<[u8; 32]>,
    previous: Option<([u8; 32], Instant)>,
}

impl AdminToken {
    /// The token of the settings (none: the admin endpoints are off).
    pub fn new(token: Option<&Secret>) -> AdminToken {
        AdminToken(ArcSwap::from_pointee(AdminTokens {
            current: token.map(|t| sha256(t.expose().as_bytes())),
            previous: None,
        }))
    }

    /// Whether a token is configured.
    pub fn is_set(&self) -> bool {
        self.0.load().current.is_some()
    }

    /// A reload's token: the old one is accepted [`ADMIN_TOKEN_OVERLAP`]
    /// longer. Whether it changed.
    pub fn replace(&self, token: Option<&Secret>) -> bool {
        let new = token.map(|t| sha256(t.expose().as_bytes()));
        let old = self.0.load();
        if old.current == new {
            return false;
        }
        let previous = old
            .current
            .map(|h| (h, Instant::now() + ADMIN_TOKEN_OVERLAP));
        self.0.store(Arc::new(AdminTokens {
            current: new,
            previous,
        }));
        true
    }

    /// Whether `given` is the token (or the replaced one, for a minute),
    /// compared without the whitespace around it (as `str::trim` strips).
    fn accepts(&self, given: &Secret) -> bool {
        self.is_digest_of(|| sha256(given.expose().trim().as_bytes()))
    }

    /// [`AdminToken::accepts`] for a presented secret whose SHA-256 is
    /// known (a client's request hashes its secret once, for this and for
    /// the clients file): the same digest, unless the secret has
    /// whitespace around it.
    fn accepts_hashed(&self, given: &str, digest: &[u8; 32]) -> bool {
        self.is_digest_of(|| {
            let trimmed = given.trim();
            match trimmed.len() == given.len() {
                true => *digest,
                false => sha256(trimmed.as_bytes()),
            }
        })
    }

    /// Whether the digest `of` makes (asked only when a token is set) is
    /// the token's, or the replaced one's for a minute.
    fn is_digest_of(&self, of: impl FnOnce() -> [u8; 32]) -> bool {
        let tokens = self.0.load();
        let Some(current) = &tokens.current else {
            return false;
        };
        let digest = of();
        let now = constant_time_eq(&digest, current);
        let before = tokens
            .previous
            .as_ref()
            .is_some_and(|(h, until)| Instant::now() < *until && constant_time_eq(&digest, h));
        now | before
    }
}

/// Whether the request carries the admin token (compared in constant time).
pub fn authorized(admin: &AdminToken, headers: &HeaderMap) -> bool {
    admin_token_presented(headers).is_some_and(|given| admin.accepts(&given))
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A client of the clients file, by name (the file's, shared). Only
    /// ever made from a [`crate::gateway::clients::ClientName`]: plain
    /// text, which the access line writes unchecked
    /// ([`CallerName::Listed`]).
    Client(Arc<str>),
    /// The holder of a gateway session, with the session's owner.
    Session {
        /// The session's id.
        id: Uuid,
        /// Its owner (the session's, shared).
        owner: Arc<str>,
    },
    /// Nobody in particular (anonymous access is allowed).
    Anonymous,
    /// The operator, by the admin token.
    Operator,
}

impl Caller {
    /// Whose gateway sessions this caller sees. Owners the gateway makes
    /// start with `~`, which no client name may contain, so a client named
    /// "anonymous" or "operator" never shares sessions with them; and every
    /// anonymous caller is the one owner `~anonymous`, whatever user name
    /// its EM-style logon gave (it chooses that name itself, so the name
    /// must not choose an owner: `operator` would be the operator's).
    pub fn owner(&self) -> &str {
        match self {
            Caller::Client(name) => name,
            Caller::Session { owner, .. } => owner,
            Caller::Anonymous => "~anonymous",
            Caller::Operator => "~operator",
        }
    }

    /// [`Caller::owner`], kept beyond the caller (the request's log line
    /// and history), shared rather than copied.
    pub fn owner_label(&self) -> CallerName {
        match self {
            Caller::Client(name) => CallerName::Listed(name.clone()),
            Caller::Session { owner, .. } => CallerName::Owner(owner.clone()),
            Caller::Anonymous => CallerName::Gateway("~anonymous"),
            Caller::Operator => CallerName::Gateway("~operator"),
        }
    }

    /// The rate-limit bucket of this caller: anonymous callers by address
    /// (a name they chose themselves must not buy them a fresh bucket).
    pub fn bucket(&self, peer: IpAddr) -> Bucket {
        match self {
            Caller::Client(name) | Caller::Session { owner: name, .. }
                if !name.starts_with('~') =>
            {
                Bucket::Client(name.clone())
            }
            _ => Bucket::Address(peer),
        }
    }
}

const NEED_CREDENTIALS: &str = "credentials required: log on with POST /api/sessionMngr/ and send X-RestSvcSessionId, or send Authorization: Basic name:secret or Bearer secret";
const BAD_CREDENTIALS: &str = "unknown client or wrong secret";
const BAD_SESSION: &str = "the session is unknown or has expired (15 minutes idle); log on again";

/// The caller of a request that carries no credential header at all (no
/// `Cookie`, no EM session header, no `Authorization`) to a gateway that
/// allows anonymous access: anonymous, as [`authenticate`] would find,
/// told without making its future (most requests to a sidecar; every hit
/// there). `None`: ask [`authenticate`].
pub fn anonymous_at_once(state: &AccessState, headers: &Heads<'_>) -> Option<Caller> {
    let bare = headers.get(Name::Cookie).is_none()
        && headers.get(Name::Session).is_none()
        && headers.get(Name::Authorization).is_none();
    (bare && state.settings.access.allow_anonymous).then_some(Caller::Anonymous)
}

/// Authenticates a request to `/api`; the error is a 401 in EM's shape.
///
/// A credential that is compared with a secret (a session token, a client
/// secret, the admin token) is an attempt of the caller's address
/// ([`crate::gateway::limit::Attempts`], the admin endpoints' account):
/// one that fails is counted, and past the limit the address gets 429
/// before anything it presents is compared. An anonymous gateway's Basic
/// credentials are an EM client's own logon data and compared with nothing.
pub async fn authenticate(
    state: &AccessState,
    headers: &Heads<'_>,
    peer: IpAddr,
) -> Result<Caller, GatewayError> {
    let clients = state.clients.load();
    let presented = presented(headers);
    let compared = is_compared(state, &clients, &presented);
    if compared {
        state
            .attempts
            .may_try(peer)
            .map_err(GatewayError::RateLimited)?;
    }
    let caller = match presented {
        // Boxed: the lookup's future is large, and the future of every
        // request would carry its size.
        Presented::Session(token) => Box::pin(by_session(state, &clients, token)).await,
        other => identify(state, &clients, other),
    };
    if compared && is_failed(&caller) {
        state.attempts.count(peer);
    }
    caller
}

/// [`authenticate`]'s caller when that needs no round trip (a session
/// token looked up in the fleet's shared tier) and lets the request in;
/// `None` otherwise (a round trip, credentials refused, an address past
/// its attempts), for
/// [`authenticate`] to answer. Counts nothing: a request it lets in is no
/// failed attempt.
///
/// `known` is the connection's [`KnownCredential`]: a client's secret
/// found once on a connection is not decoded and hashed again on it, nor
/// a session token hashed again (its session is still looked up).
pub fn authenticate_now(
    state: &AccessState,
    headers: &Heads<'_>,
    peer: IpAddr,
    known: &KnownCredential,
) -> Option<Caller> {
    let clients = state.clients.load();
    if let Some(name) = known.recall(state, &clients, headers) {
        // A client's secret is compared, so an attempt as ever.
        return state
            .attempts
            .may_try(peer)
            .is_ok()
            .then_some(Caller::Client(name));
    }
    let presented = presented(headers);
    let compared = is_compared(state, &clients, &presented);
    if compared && state.attempts.may_try(peer).is_err() {
        return None;
    }
    // The admin token `identify` reads, for the memo: taken before it reads.
    let admin = matches!(presented, Presented::Basic(..) | Presented::Bearer(_))
        .then(|| state.admin.0.load_full());
    let caller = match presented {
        Presented::Session(token) => {
            let recalled = known.token_name(token);
            let name = match recalled {
                Some(name) => name,
                None => state.sessions.token_name(token)?,
            };
            let found = state.sessions.lookup_now(&name)?;
            if recalled.is_none() && found.is_some() {
                known.remember_token(token, name);
            }
            session_caller(&clients, found)
        }
        other => identify(state, &clients, other),
    };
    let failed = compared && is_failed(&caller);
    let caller = caller.ok().filter(|_| !failed)?;
    if let (Caller::Client(name), Some(admin)) = (&caller, admin) {
        known.remember(state, &clients, admin, headers, name);
    }
    Some(caller)
}

/// What one connection's requests presented before and what that was
/// found to be, so its next requests presenting the same are not decoded
/// and hashed again. A client on a kept-alive connection sends the same
/// credential every time, and a hit spent about a sixth of its
/// instructions on it (base64, SHA-256: BENCHMARKS.md, "twentieth steps"
/// and "twenty-first steps"). Two memos:
///
/// - The `Authorization` value (Basic or Bearer) that last identified a
///   client of the clients file, and who it was. Invariants, so it never
///   says more than `identify` would:
///   - it answers only while the clients file and the admin token are the
///     ones it was found with (a reload that replaces either, by pointer,
///     makes it ask `identify` again; it holds them, so a pointer is never
///     reused meanwhile);
///   - only a client found by its secret is remembered: never the operator
///     (whose old token expires by the clock) or an anonymous caller;
///   - only for a request with no `Cookie` and no session header, the
///     credentials that would come before `Authorization`.
/// - The gateway session token that last found a live session, and only
///   the name its session is kept under ([`ClientSessions::token_name`], the same for
///   the same token while the process lives), never who it stands for:
///   the session itself is looked up on every request, so a logout, here
///   or on another replica, and the idle timeout end it on this
///   connection as on any other.
///
/// Both: a value is compared in constant time (a load balancer may carry
/// several clients' requests on one connection), and an address past its
/// attempts is still refused. The values stay in memory for the
/// connection's life, as the request that carried them did in hyper's read
/// buffer.
#[derive(Clone, Default)]
pub struct KnownCredential(Arc<Mutex<Memo>>);

#[derive(Default)]
struct Memo {
    client: Option<Known>,
    session: Option<KnownToken>,
}

/// A client found by its `Authorization` value.
struct Known {
    /// The `Authorization` value's bytes.
    value: Box<[u8]>,
    /// The clients file and admin token it was found with.
    clients: Arc<Clients>,
    admin: Arc<AdminTokens>,
    /// The client it identified.
    name: Arc<str>,
}

/// A gateway session token and its name.
struct KnownToken {
    token: Box<[u8]>,
    name: [u8; 32],
}

impl KnownCredential {
    /// The client this request's credentials identified on this
    /// connection before, if nothing they were checked against changed.
    fn recall(
        &self,
        state: &AccessState,
        clients: &Arc<Clients>,
        headers: &Heads<'_>,
    ) -> Option<Arc<str>> {
        let value = authorization_alone(headers)?;
        let memo = crate::ops::locked(&self.0);
        let known = memo.client.as_ref()?;
        let unchanged = Arc::ptr_eq(&known.clients, clients)
            && Arc::ptr_eq(&known.admin, &state.admin.0.load());
        (unchanged && same_bytes(&known.value, value.as_bytes())).then(|| known.name.clone())
    }

    /// Remembers that this request's `Authorization` value identified
    /// client `name` (see the invariants above), checked against `clients`
    /// and the admin token `admin`, taken before `identify` looked. If the
    /// token was replaced since, `identify` may have read either: nothing
    /// is remembered.
    fn remember(
        &self,
        state: &AccessState,
        clients: &Arc<Clients>,
        admin: Arc<AdminTokens>,
        headers: &Heads<'_>,
        name: &Arc<str>,
    ) {
        let Some(value) = authorization_alone(headers) else {
            return;
        };
        if !Arc::ptr_eq(&admin, &state.admin.0.load()) {
            return;
        }
        crate::ops::locked(&self.0).client = Some(Known {
            value: value.as_bytes().into(),
            clients: clients.clone(),
            admin,
            name: name.clone(),
        });
    }

    /// The name `token`'s session is kept under, if this connection
    /// presented it before and it was found then.
    fn token_name(&self, token: &str) -> Option<[u8; 32]> {
        let memo = crate::ops::locked(&self.0);
        let known = memo.session.as_ref()?;
        same_bytes(&known.token, token.as_bytes()).then_some(known.name)
    }

    /// Remembers `token`'s name, once a live session was found by it (a
    /// token that finds none is never kept).
    fn remember_token(&self, token: &str, name: [u8; 32]) {
        crate::ops::locked(&self.0).session = Some(KnownToken {
            token: token.as_bytes().into(),
            name,
        });
    }
}

/// The request's `Authorization` value when it is the credential
/// [`presented`] reads: no `Cookie` and no session header came (a session
/// token comes before it). The one value [`KnownCredential`] remembers.
fn authorization_alone<'h>(headers: &Heads<'h>) -> Option<&'h HeaderValue> {
    if headers.get(Name::Cookie).is_some() || headers.get(Name::Session).is_some() {
        return None;
    }
    headers.get(Name::Authorization)
}

/// Whether the credential presented is compared with a secret, and so is
/// an attempt of the caller's address (see [`authenticate`]).
fn is_compared(state: &AccessState, clients: &Clients, presented: &Presented<'_>) -> bool {
    let anonymous = clients.is_empty() && state.settings.access.allow_anonymous;
    match presented {
        Presented::Session(_) => true,
        Presented::Basic(..) => !anonymous,
        Presented::Bearer(_) => !anonymous || state.admin.is_set(),
        Presented::Nothing | Presented::Malformed => false,
    }
}

/// Whether a compared credential failed.
fn is_failed(caller: &Result<Caller, GatewayError>) -> bool {
    match caller {
        Err(GatewayError::Unauthorized(_)) => true,
        // A bearer token that was not the admin token, on an anonymous gateway.
        Ok(Caller::Anonymous) => true,
        _ => false,
    }
}

/// Who a gateway session token stands for.
async fn by_session(
    state: &AccessState,
    clients: &Clients,
    token: &str,
) -> Result<Caller, GatewayError> {
    session_caller(clients, state.sessions.lookup(token).await)
}

/// The caller of a session found by its token (or none).
fn session_caller(clients: &Clients, found: Option<SessionInfo>) -> Result<Caller, GatewayError> {
    let session = found.ok_or(GatewayError::Unauthorized(BAD_SESSION))?;
    // A session of a client this replica does not know: one a
    // reload took out of the clients file, or, in a fleet, one
    // added to it that this replica has not read yet. Refused, not
    // deleted: refused on every replica that has the file without
    // it (so it is over), and left to the others mid-rollout (a
    // replica behind must not end the sessions of a client added a
    // moment ago); it leaves with the idle timeout. The gateway's
    // own owners (`~anonymous`, `~operator`) are no clients.
    if !session.owner.starts_with('~') && !clients.contains(&session.owner) {
        return Err(GatewayError::Unauthorized(BAD_SESSION));
    }
    Ok(Caller::Session {
        id: session.id,
        owner: session.owner,
    })
}

/// Who the credentials presented stand for, a session token aside
/// ([`by_session`]).
fn identify(
    state: &AccessState,
    clients: &Clients,
    presented: Presented<'_>,
) -> Result<Caller, GatewayError> {
    let access = &state.settings.access;
    let (name, secret) = match &presented {
        // Looked up by `by_session`, never here; refused if it ever were.
        Presented::Session(_) => {
            debug_assert!(false, "a session token reached identify");
            return Err(GatewayError::Unauthorized(BAD_SESSION));
        }
        Presented::Basic(..) if clients.is_empty() && access.allow_anonymous => {
            return Ok(Caller::Anonymous);
        }
        Presented::Basic(name, secret) => (Some(name.as_str()), secret.expose()),
        Presented::Bearer(secret) => (None, *secret),
        Presented::Nothing | Presented::Malformed if access.allow_anonymous => {
            return Ok(Caller::Anonymous);
        }
        Presented::Nothing | Presented::Malformed => {
            return Err(GatewayError::Unauthorized(NEED_CREDENTIALS));
        }
    };
    let anonymous_or_refused = || match access.allow_anonymous {
        true => Ok(Caller::Anonymous),
        false => Err(GatewayError::Unauthorized(BAD_CREDENTIALS)),
    };
    if clients.is_empty() && !state.admin.is_set() {
        return anonymous_or_refused();
    }
    // Hashed once, for the admin token and the clients file alike.
    let digest = sha256(secret.as_bytes());
    // The admin token is an operator's credential on /api too (so a
    // `no-cache` from the operator can reach EM), never a client secret;
    // asked first, so it works beside a clients file (on an anonymous
    // gateway, as a bearer token only).
    if state.admin.accepts_hashed(secret, &digest) {
        return Ok(Caller::Operator);
    }
    if clients.is_empty() {
        return anonymous_or_refused();
    }
    let found = match name {
        Some(name) => clients.check_basic(name, &digest),
        None => clients.check_bearer(&digest),
    };
    found
        .map(|c| Caller::Client(c.shared()))
        .ok_or(GatewayError::Unauthorized(BAD_CREDENTIALS))
}

/// `POST /api/sessionMngr/?v=…`: a gateway session, never an EM one.
/// Everything under `sessionMngr` is answered here: nothing under it may
/// reach EM.
pub async fn logon(
    state: &AccessState,
    parts: &Parts,
    peer: IpAddr,
    target: &Target,
    to: &Representation,
) -> Result<Response<Body>, GatewayError> {
    if target.segment_count() != 1 {
        return Err(GatewayError::NotFound(target.shown()));
    }
    if parts.method != Method::POST {
        return Err(GatewayError::MethodNotAllowed(parts.method.clone(), "POST"));
    }
    // An anonymous gateway takes any EM-style logon (unchanged EM clients
    // work against a sidecar), for the one anonymous owner.
    let caller = authenticate(state, &Heads::of(&parts.headers), peer).await?;
    let owner = caller.owner();
    let (token, id) = state.sessions.create(owner).await?;
    tracing::info!(client = %owner, session = %id, "client logged on to the gateway");
    logon::created(&token, id, owner, to)
}

/// `/api/logonSessions[/{id}]`: the caller's own gateway sessions.
pub async fn logon_sessions(
    state: &AccessState,
    caller: &Caller,
    method: &Method,
    target: &Target,
    to: &Representation,
) -> Result<Response<Body>, GatewayError> {
    let owner = caller.owner();
    let rest = match (target.segment_count(), target.segment(1)) {
        (1, _) => "",
        (2, Some(id)) => id,
        _ => return Err(GatewayError::NotFound(target.shown())),
    };
    if rest.is_empty() {
        return match *method {
            Method::GET | Method::HEAD => logon::list(&state.sessions.list(owner).await, owner, to),
            _ => Err(GatewayError::MethodNotAllowed(method.clone(), "GET, HEAD")),
        };
    }
    let not_found = || {
        GatewayError::NotFound(format!(
            "logon session {}",
            rest.chars().take(64).collect::<String>()
        ))
    };
    let id = Uuid::try_parse(rest).map_err(|_| not_found())?;
    match *method {
        Method::GET | Method::HEAD if state.sessions.list(owner).await.contains(&id) => {
            logon::one(id, owner, to)
        }
        Method::DELETE => match state.sessions.delete(owner, id).await {
            Ended::Yes => {
                tracing::info!(client = %owner, session = %id, "client logged off the gateway");
                let mut r = Response::new(Body::default());
                *r.status_mut() = StatusCode::NO_CONTENT;
                Ok(r)
            }
            Ended::Pending => Err(GatewayError::NotEverywhere("the logon session ended")),
            Ended::NotFound => Err(not_found()),
        },
        Method::GET | Method::HEAD => Err(not_found()),
        _ => Err(GatewayError::MethodNotAllowed(
            method.clone(),
            "GET, HEAD, DELETE",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// `/api` asks the admin token with the digest it made of the secret
    /// for the clients file (`accepts_hashed`), the admin endpoints with
    /// the secret (`accepts`): one answer for every secret, whitespace
    /// around it or not, whether the token is unset, set, or replaced a
    /// moment ago.
    #[test]
    fn the_admin_token_gives_one_answer_hashed_or_not() {
        let given = [
            "tok-0123",
            " tok-0123 ",
            "tok-0123\t",
            "\u{a0}tok-0123",
            "tok-0124",
            "",
        ];
        let answers = |admin: &AdminToken| -> Vec<bool> {
            given
                .iter()
                .map(|g| {
                    let plain = admin.accepts(&Secret::new(*g));
                    let hashed = admin.accepts_hashed(g, &sha256(g.as_bytes()));
                    assert_eq!(plain, hashed, "{g:?}");
                    plain
                })
                .collect()
        };
        let taken = vec![true, true, true, true, false, false];
        assert_eq!(answers(&AdminToken::new(None)), vec![false; given.len()]);
        let admin = AdminToken::new(Some(&Secret::new("tok-0123")));
        assert_eq!(answers(&admin), taken);
        // Replaced: the old token is still taken for its minute.
        assert!(admin.replace(Some(&Secret::new("another-token"))));
        assert_eq!(answers(&admin), taken);
    }

    /// `/api` reads the secret of an `Authorization` header as client
    /// access does (`clients::presented`), the admin endpoints as
    /// `admin_token_presented` does: the same secret wherever either finds
    /// one that `/api` would compare.
    #[test]
    fn api_and_the_admin_endpoints_read_the_same_secret() {
        use base64::Engine as _;
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let values = [
            "Bearer tok".to_string(),
            "bearer   tok  ".to_string(),
            " Bearer tok".to_string(),
            "Bearer".to_string(),
            "Basic".to_string(),
            format!("Basic {}", b64(b"name:pass")),
            format!("basic  {} ", b64(b"name:pa:ss")),
            format!("Basic {}", b64(b"name: pass ")),
            format!("Basic {}", b64(b"no-colon")),
            format!("Basic {}", b64(b"name:\xff")),
            "Basic !!!".to_string(),
            "Digest x".to_string(),
        ];
        for value in values {
            let mut map = HeaderMap::new();
            map.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
            let heads = Heads::of(&map);
            let api = match presented(&heads) {
                Presented::Basic(_, secret) => Some(secret.expose().to_string()),
                Presented::Bearer(secret) => Some(secret.to_string()),
                _ => None,
            };
            let admin = admin_token_presented(&map).map(|s| s.expose().to_string());
            if let Some(secret) = &api {
                assert_eq!(Some(secret), admin.as_ref(), "{value:?}");
            }
        }
    }
}
