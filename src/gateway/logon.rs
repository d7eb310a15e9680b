//! The drop-in EM logon: gateway sessions for clients (see README, "HTTP surface"; README, "Client access").
//!
//! Existing EM clients log on with `POST /api/sessionMngr/`, send
//! `X-RestSvcSessionId`, list `/api/logonSessions` and delete "their" session
//! at the end. The gateway answers all of that itself with sessions of its
//! own, so a client's logout never touches the pooled EM session (which
//! would cut off every other client) and EM never sees a client's logon.
//!
//! Tokens are kept only as hashes (in fleet mode keyed ones, the names the
//! fleet gives them); sessions end after 15 minutes idle (like EM's) and
//! each client holds a bounded number (the oldest goes).
//!
//! Fleet mode, the states of a logout: done everywhere (204); or Redis could
//! not be reached: the session ends on this replica at once, a tombstone
//! keeps the fleet's record from bringing it back here, and the delete is
//! retried in the background until it lands (then every replica is told),
//! while the client gets 503 with `Retry-After`, so a logout is never
//! reported done before it is. A Redis that comes back empty gets this
//! replica's live sessions back ([`ClientSessions::put_back`]), and an
//! unknown token is looked up again for a few seconds meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, SET_COOKIE};
use http::{Response, StatusCode};
use uuid::Uuid;

use crate::em::session::SESSION_HEADER;
use crate::fleet::Fleet;
use crate::gateway::error::GatewayError;
use crate::gateway::render::{self, Representation};
use crate::gateway::response::Body;
use crate::secret::Secret;

/// EM's idle timeout for logon sessions (http_authentication.md), ours too.
pub const IDLE: Duration = Duration::from_secs(15 * 60);
/// Sessions one client may hold at once; a new logon beyond it ends the oldest.
pub const PER_CLIENT: usize = 64;
/// Sessions the gateway holds at most; beyond it the oldest ends.
pub const MAX_SESSIONS: usize = 10_000;

/// One gateway session.
#[derive(Debug, Clone)]
struct Record {
    /// The session's id (its `SessionId`, and the `{id}` of `/api/logonSessions/{id}`).
    id: Uuid,
    /// Who logged on: the client's name, or an owner the gateway makes
    /// (`~anonymous`, `~operator`; see [`crate::gateway::access::Caller::owner`]).
    /// Shared with every request made with the session (its caller, access
    /// line and history), not copied for each.
    owner: Arc<str>,
    /// Last request made with it.
    last_used: Instant,
    /// When it was created (to end the oldest first).
    created: Instant,
    /// When the fleet last confirmed it (fleet mode), or its creation.
    checked: Instant,
}

/// What a session token stands for.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The session's id.
    pub id: Uuid,
    /// Its owner (shared with the session's record).
    pub owner: Arc<str>,
}

/// Names a token: SHA-256 alone, or in fleet mode the fleet's keyed name.
type Namer = Arc<dyn Fn(&str) -> [u8; 32] + Send + Sync>;

/// The gateway sessions this replica knows (all of them, without a fleet).
pub struct LocalSessions {
    /// By the token's name, so no token sits in memory in the clear.
    /// Hashed with foldhash, not SipHash (every hit by a session token
    /// looks here): a name is a SHA-256 or HMAC output of a token the
    /// gateway drew at random, so nobody can choose names that collide.
    by_token: Mutex<HashMap<[u8; 32], Record, foldhash::quality::RandomState>>,
    /// Idle timeout.
    idle: Duration,
    /// How a token is named.
    namer: Namer,
}

impl Default for LocalSessions {
    fn default() -> Self {
        LocalSessions::new(IDLE)
    }
}

impl LocalSessions {
    /// An empty store with this idle timeout.
    pub fn new(idle: Duration) -> LocalSessions {
        LocalSessions {
            by_token: Mutex::new(HashMap::default()),
            idle,
            namer: Arc::new(|t: &str| crate::digest::sha256(t.as_bytes())),
        }
    }

    fn key(&self, token: &str) -> [u8; 32] {
        (self.namer)(token)
    }

    /// A new session for `owner`: its token (shown once) and id.
    pub fn create(&self, owner: &str) -> Result<(Secret, Uuid), GatewayError> {
        let token =
            crate::digest::random_token(32).map_err(|_| GatewayError::Internal("no randomness"))?;
        let id = Uuid::new_v4();
        let now = Instant::now();
        let mut map = self
            .by_token
            .lock()
            .map_err(|_| GatewayError::Internal("session store poisoned"))?;
        let idle = self.idle;
        map.retain(|_, r| now.duration_since(r.last_used) < idle);
        let mut own: Vec<([u8; 32], Instant)> = map
            .iter()
            .filter(|(_, r)| &*r.owner == owner)
            .map(|(k, r)| (*k, r.created))
            .collect();
        if own.len() >= PER_CLIENT {
            own.sort_by_key(|(_, created)| *created);
            for (k, _) in own.iter().take(own.len() + 1 - PER_CLIENT) {
                map.remove(k);
            }
        }
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, r)| r.created).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(
            self.key(token.expose()),
            Record {
                id,
                owner: owner.into(),
                last_used: now,
                created: now,
                checked: now,
            },
        );
        Ok((token, id))
    }

    /// The live session a token stands for (its idle timer restarts).
    pub fn lookup(&self, token: &str) -> Option<SessionInfo> {
        self.known(&self.key(token)).map(|(info, _)| info)
    }

    /// The live sessions of `owner`, oldest first.
    pub fn list(&self, owner: &str) -> Vec<Uuid> {
        let Ok(map) = self.by_token.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut own: Vec<&Record> = map
            .values()
            .filter(|r| &*r.owner == owner && now.duration_since(r.last_used) < self.idle)
            .collect();
        own.sort_by_key(|r| r.created);
        own.into_iter().map(|r| r.id).collect()
    }

    /// Ends `owner`'s session `id`; false if there is no such session of theirs.
    pub fn delete(&self, owner: &str, id: Uuid) -> bool {
        let Ok(mut map) = self.by_token.lock() else {
            return false;
        };
        let before = map.len();
        map.retain(|_, r| !(&*r.owner == owner && r.id == id));
        map.len() < before
    }

    /// The name of `owner`'s session `id`, if this replica knows it.
    fn name_of(&self, owner: &str, id: Uuid) -> Option<[u8; 32]> {
        let map = self.by_token.lock().ok()?;
        map.iter()
            .find(|(_, r)| &*r.owner == owner && r.id == id)
            .map(|(k, _)| *k)
    }

    /// The live sessions: name, owner, id (to put them back in the fleet).
    fn live(&self) -> Vec<([u8; 32], Arc<str>, Uuid)> {
        let Ok(map) = self.by_token.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        map.iter()
            .filter(|(_, r)| now.duration_since(r.last_used) < self.idle)
            .map(|(k, r)| (*k, r.owner.clone(), r.id))
            .collect()
    }

    /// Keeps what the fleet said a token stands for (a session made on
    /// another replica), so the next requests need not ask: the owner's
    /// name as the record holds it.
    fn mirror(&self, key: [u8; 32], id: Uuid, owner: &str) -> Arc<str> {
        let Ok(mut map) = self.by_token.lock() else {
            return owner.into();
        };
        let now = Instant::now();
        let record = map.entry(key).or_insert_with(|| Record {
            id,
            owner: owner.into(),
            last_used: now,
            created: now,
            checked: now,
        });
        record.last_used = now;
        record.checked = now;
        record.owner.clone()
    }

    /// The record of a token hash, if this replica knows it and it is
    /// live, and when the fleet last confirmed it; its idle timer restarts.
    fn known(&self, key: &[u8; 32]) -> Option<(SessionInfo, Instant)> {
        let mut map = self.by_token.lock().ok()?;
        let now = Instant::now();
        let record = map.get_mut(key)?;
        if now.duration_since(record.last_used) >= self.idle {
            map.remove(key);
            return None;
        }
        record.last_used = now;
        Some((
            SessionInfo {
                id: record.id,
                owner: record.owner.clone(),
            },
            record.checked,
        ))
    }

    /// Forgets a token hash (its session ended on another replica).
    fn forget(&self, key: &[u8; 32]) {
        if let Ok(mut map) = self.by_token.lock() {
            map.remove(key);
        }
    }

    /// Live sessions, for metrics.
    pub fn count(&self) -> usize {
        let Ok(map) = self.by_token.lock() else {
            return 0;
        };
        let now = Instant::now();
        map.values()
            .filter(|r| now.duration_since(r.last_used) < self.idle)
            .count()
    }
}

/// How long a session the fleet confirmed is taken on this replica's word
/// alone (a logout elsewhere reaches it by event at once, or after this).
const FLEET_RECHECK: Duration = Duration::from_secs(2);

/// How long a logout that could not reach the fleet is retried (after
/// that the fleet's record has run out of idle time anyway: nobody could
/// use it while Redis was away, and a use would have been refused here).
const LOGOUT_RETRY_FOR: Duration = IDLE;
/// How long a client waits for its logout to reach the fleet before it is
/// told 503 (the retry goes on).
const LOGOUT_WAIT: Duration = Duration::from_millis(1500);

/// How a logout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Ended everywhere.
    Yes,
    /// There is no such session of the caller's.
    NotFound,
    /// Ended here; the fleet's record is being removed (retried).
    Pending,
}

/// A logout that has not reached the fleet yet.
struct Tombstone {
    owner: String,
    id: Uuid,
    /// The record's name, when this replica knew it.
    name: Option<[u8; 32]>,
}

/// Gateway sessions: this replica's, and in fleet mode the fleet's (kept in
/// the shared tier under the token's keyed name, so a token from one
/// replica works on every one, and a logout anywhere ends it everywhere).
/// With the shared tier unreachable, what this replica knows.
pub struct ClientSessions {
    /// What this replica knows.
    pub local: LocalSessions,
    /// The fleet, in fleet mode.
    fleet: Option<Fleet>,
    /// Logouts still on their way to the fleet.
    tombstones: Arc<Mutex<Vec<Tombstone>>>,
    /// Sessions made here while Redis could not be reached: put in the
    /// fleet when it answers, never refused for being unknown to it.
    unshared: Mutex<std::collections::HashSet<[u8; 32]>>,
}

impl ClientSessions {
    /// Sessions of this replica alone, or of the fleet.
    pub fn new(fleet: Option<Fleet>) -> ClientSessions {
        let mut local = LocalSessions::default();
        if let Some(f) = &fleet {
            let f = f.clone();
            local.namer = Arc::new(move |t: &str| {
                f.token_names(t)
                    .first()
                    .copied()
                    .unwrap_or_else(|| crate::digest::sha256(t.as_bytes()))
            });
        }
        ClientSessions {
            local,
            fleet,
            tombstones: Arc::new(Mutex::new(Vec::new())),
            unshared: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// A new session for `owner`: its token (shown once) and id.
    pub async fn create(&self, owner: &str) -> Result<(Secret, Uuid), GatewayError> {
        let (token, id) = self.local.create(owner)?;
        if let Some(fleet) = &self.fleet {
            let key = self.local.key(token.expose());
            let shared = fleet
                .session_create(&hex(&key), owner, &id.to_string(), IDLE, PER_CLIENT)
                .await;
            if shared.is_err() {
                if let Ok(mut u) = self.unshared.lock() {
                    if u.len() < MAX_SESSIONS {
                        u.insert(key);
                    }
                }
            }
        }
        Ok((token, id))
    }

    /// Whether a logout of this session is still on its way to the fleet.
    fn buried(&self, name: Option<&[u8; 32]>, owner: &str, id: Uuid) -> bool {
        self.tombstones.lock().is_ok_and(|t| {
            t.iter().any(|t| {
                (name.is_some() && t.name.as_ref() == name) || (t.owner == owner && t.id == id)
            })
        })
    }

    /// The name a token's session is kept under here: its SHA-256, or in
    /// fleet mode its keyed name under the fleet's current secret (`None`
    /// if the fleet has none: then the fleet is asked).
    ///
    /// Invariant: the same token gets the same name for the life of the
    /// process. Neither way of naming changes while it runs (a changed
    /// `EMGATE_SHARED_SECRET` waits for a restart, as a reload reports), so
    /// a name may be worked out once and kept
    /// ([`crate::gateway::access::KnownCredential`]).
    pub fn token_name(&self, token: &str) -> Option<[u8; 32]> {
        match &self.fleet {
            None => Some(self.local.key(token)),
            Some(fleet) => fleet.token_names(token).first().copied(),
        }
    }

    /// [`ClientSessions::lookup`]'s answer, for a token named by
    /// [`ClientSessions::token_name`], when it needs no round trip: without
    /// a fleet, or for a session this replica checked with the fleet less
    /// than `FLEET_RECHECK` ago; `None` when the fleet must be asked. As
    /// `lookup`, it restarts a live session's idle timer (the request that
    /// asks is the session's use).
    pub fn lookup_now(&self, name: &[u8; 32]) -> Option<Option<SessionInfo>> {
        let known = self.local.known(name);
        if self.fleet.is_none() {
            return Some(known.map(|(info, _)| info));
        }
        match known {
            Some((info, checked)) if checked.elapsed() < FLEET_RECHECK => Some(Some(info)),
            _ => None,
        }
    }

    /// The live session a token stands for (its idle timer restarts).
    pub async fn lookup(&self, token: &str) -> Option<SessionInfo> {
        let Some(fleet) = &self.fleet else {
            return self.local.lookup(token);
        };
        let names = fleet.token_names(token);
        let key = *names.first()?;
        let known = self.local.known(&key);
        if let Some((info, checked)) = &known {
            if checked.elapsed() < FLEET_RECHECK {
                return Some(info.clone());
            }
        }
        // Redis came back empty a moment ago: replicas are putting their
        // sessions back, so an unknown token is looked up again a few
        // times before it is refused.
        let mut restoring_checked = false;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let mut found = Ok(None);
            for name in &names {
                found = fleet.session_lookup(&hex(name), IDLE).await;
                if !matches!(found, Ok(None)) {
                    break;
                }
            }
            match found {
                Ok(Some(s)) => {
                    let id = Uuid::try_parse(&s.id).ok()?;
                    if self.buried(Some(&key), &s.owner, id) {
                        return None;
                    }
                    let owner = self.local.mirror(key, id, &s.owner);
                    return Some(SessionInfo { id, owner });
                }
                Ok(None) => {
                    // Made here while Redis was away: the fleet learns of it
                    // now, and the client keeps its session.
                    let made_here = self.unshared.lock().is_ok_and(|u| u.contains(&key));
                    if let (true, Some((info, _))) = (made_here, &known) {
                        if let Ok(false) = self.share(fleet, &key, &info.owner, info.id).await {
                            return None;
                        }
                        return Some(info.clone());
                    }
                    if !restoring_checked {
                        restoring_checked = true;
                        if !fleet.restoring().await {
                            break;
                        }
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                // The shared tier is down: what this replica knows.
                Err(_) => return known.map(|(info, _)| info),
            }
        }
        self.local.forget(&key);
        None
    }

    /// The live sessions of `owner`, oldest first.
    pub async fn list(&self, owner: &str) -> Vec<Uuid> {
        if let Some(fleet) = &self.fleet {
            if let Ok(ids) = fleet.session_list(owner).await {
                return ids
                    .iter()
                    .filter_map(|i| Uuid::try_parse(i).ok())
                    .filter(|id| !self.buried(None, owner, *id))
                    .collect();
            }
        }
        self.local.list(owner)
    }

    /// Ends `owner`'s session `id` (everywhere, in fleet mode).
    pub async fn delete(&self, owner: &str, id: Uuid) -> Ended {
        let name = self.local.name_of(owner, id);
        let here = self.local.delete(owner, id);
        let Some(fleet) = &self.fleet else {
            return if here { Ended::Yes } else { Ended::NotFound };
        };
        let already_pending = self.buried(None, owner, id);
        let known = name.as_ref().map(hex);
        match fleet
            .session_delete(owner, &id.to_string(), known.as_deref(), IDLE)
            .await
        {
            Ok(Some(_)) => {
                self.unbury(owner, id);
                return Ended::Yes;
            }
            Ok(None) if already_pending => {
                self.unbury(owner, id);
                return Ended::Yes;
            }
            Ok(None) => return if here { Ended::Yes } else { Ended::NotFound },
            Err(_) => {}
        }
        if !here && !already_pending {
            // Not known here, and the fleet cannot be asked: whether it
            // exists is unknown; the client may send it again.
            return Ended::Pending;
        }
        if !already_pending {
            if let Ok(mut t) = self.tombstones.lock() {
                t.push(Tombstone {
                    owner: owner.to_string(),
                    id,
                    name,
                });
            }
            tracing::warn!(session = %id, "the shared tier is down: logout done here, retried for the fleet");
            self.retry_delete(fleet.clone(), owner.to_string(), id, known);
        }
        // A short wait: a blip of Redis should not cost the client a retry.
        let until = Instant::now() + LOGOUT_WAIT;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if !self.buried(None, owner, id) {
                return Ended::Yes;
            }
        }
        Ended::Pending
    }

    fn unbury(&self, owner: &str, id: Uuid) {
        if let Ok(mut t) = self.tombstones.lock() {
            t.retain(|t| !(t.owner == owner && t.id == id));
        }
    }

    /// Retries a logout for the fleet until it lands (or the record ran
    /// out of idle time), then lifts the tombstone.
    fn retry_delete(&self, fleet: Fleet, owner: String, id: Uuid, known: Option<String>) {
        let tombstones = self.tombstones.clone();
        tokio::spawn(async move {
            let until = Instant::now() + LOGOUT_RETRY_FOR;
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let ended = fleet
                    .session_delete(&owner, &id.to_string(), known.as_deref(), IDLE)
                    .await;
                if ended.is_ok() {
                    tracing::info!(session = %id, "logout reached the fleet");
                    break;
                }
            }
            if let Ok(mut t) = tombstones.lock() {
                t.retain(|t| !(t.owner == owner && t.id == id));
            }
        });
    }

    /// Puts this replica's live sessions back in the fleet (Redis came back
    /// empty).
    pub async fn put_back(&self) {
        let Some(fleet) = &self.fleet else { return };
        let live = self.local.live();
        let mut restored = 0;
        for (name, owner, id) in &live {
            if self.buried(Some(name), owner, *id) {
                continue;
            }
            if let Ok(true) = self.share(fleet, name, owner, *id).await {
                restored += 1;
            }
        }
        if !live.is_empty() {
            tracing::info!(restored, "client sessions put back in the shared tier");
        }
    }

    /// Records a session this replica holds in the fleet (made while Redis
    /// was away, or Redis lost it): whether it is live there now. One the
    /// fleet marks as logged out (elsewhere, while this replica did not
    /// hear) ends here too.
    async fn share(
        &self,
        fleet: &Fleet,
        name: &[u8; 32],
        owner: &str,
        id: Uuid,
    ) -> Result<bool, crate::fleet::Down> {
        let live = fleet
            .session_create(&hex(name), owner, &id.to_string(), IDLE, PER_CLIENT)
            .await?;
        if !live {
            self.local.forget(name);
        }
        // The fleet knows of it now, or knows it ended.
        if let Ok(mut u) = self.unshared.lock() {
            u.remove(name);
        }
        Ok(live)
    }

    /// Forgets a session that ended on another replica (by its name, hex).
    pub fn ended_elsewhere(&self, name: &str) {
        if let Some(key) = crate::digest::from_hex(name).and_then(|k| <[u8; 32]>::try_from(k).ok())
        {
            self.local.forget(&key);
        }
    }

    /// Live sessions this replica knows, for metrics.
    pub fn count(&self) -> usize {
        self.local.count()
    }
}

fn hex(key: &[u8; 32]) -> String {
    crate::digest::hex(key)
}

/// The links EM's own LogonSession carries (logging_on.md), pointed at the gateway.
const DOWN_LINKS: &[(&str, &str)] = &[
    ("BackupServerReferenceList", "/api/backupServers"),
    ("ManagedServerReferenceList", "/api/managedServers"),
    ("JobReferenceList", "/api/jobs"),
    ("FailoverPlanReferenceList", "/api/failoverPlans"),
    ("HierarchyRootReferenceList", "/api/hierarchyRoots"),
    ("RepositoryReferenceList", "/api/repositories"),
    ("BackupReferenceList", "/api/backups"),
    ("RestorePointReferenceList", "/api/restorePoints"),
    ("VmRestorePointReferenceList", "/api/vmRestorePoints"),
    ("VAppRestorePointReferenceList", "/api/vAppRestorePoints"),
    ("ReplicaReferenceList", "/api/replicas"),
    ("VmReplicaPointReferenceList", "/api/vmReplicaPoints"),
    ("CatalogVmReferenceList", "/api/catalog/vms"),
    ("BackupJobSessionReferenceList", "/api/backupSessions"),
    ("RestoreSessionReferenceList", "/api/restoreSessions"),
    ("ReplicaJobSessionReferenceList", "/api/replicaSessions"),
    ("BackupTaskSessionReferenceList", "/api/backupTaskSessions"),
    (
        "ReplicaTaskSessionReferenceList",
        "/api/replicaTaskSessions",
    ),
    ("EnterpriseSecuritySettings", "/api/security"),
    ("WanAcceleratorReferenceList", "/api/wanAccelerators"),
    ("BackupFileReferenceList", "/api/backupFiles"),
    (
        "ExternalRepositoryReferenceList",
        "/api/externalRepositories",
    ),
    ("TaskList", "/api/tasks"),
    ("QueryService", "/api/querySvc"),
    ("LookupService", "/api/lookupSvc"),
];

fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

/// A `<LogonSession>` element (without namespace when nested in a list).
fn logon_session_xml(out: &mut String, public: &str, id: Uuid, owner: &str, root: bool) {
    use std::fmt::Write as _;
    let ns = if root {
        " xmlns=\"http://www.veeam.com/ent/v1.0\""
    } else {
        ""
    };
    let _ = write!(
        out,
        "<LogonSession{ns} Type=\"LogonSession\" Href=\"{public}/api/logonSessions/{id}\"><Links>\
         <Link Rel=\"Up\" Type=\"EnterpriseManager\" Href=\"{public}/api/\"/>"
    );
    for (ty, path) in DOWN_LINKS {
        let _ = write!(
            out,
            "<Link Rel=\"Down\" Type=\"{ty}\" Href=\"{public}{path}\"/>"
        );
    }
    let _ = write!(
        out,
        "<Link Rel=\"Delete\" Type=\"LogonSession\" Href=\"{public}/api/logonSessions/{id}\"/></Links>\
         <UserName>{}</UserName><SessionId>{id}</SessionId></LogonSession>",
        // Anonymous owners are marked with `~` inside the gateway only.
        escape(owner.trim_start_matches('~'))
    );
}

/// An XML document of ours, as XML or converted to JSON like EM's own.
fn document(
    status: StatusCode,
    xml_doc: String,
    to: &Representation,
) -> Result<Response<Body>, GatewayError> {
    let (body, content_type) = if to.xml {
        (Bytes::from(xml_doc), render::XML)
    } else {
        let mut out = Vec::with_capacity(xml_doc.len());
        crate::convert::to_json(xml_doc.as_bytes(), render::case(to.case), None, &mut out)?;
        (Bytes::from(out), render::JSON)
    };
    let mut r = Response::new(Body::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, content_type);
    Ok(r)
}

/// `201 Created` for a new gateway session: token header, cookie, LogonSession body.
pub fn created(
    token: &Secret,
    id: Uuid,
    owner: &str,
    to: &Representation,
) -> Result<Response<Body>, GatewayError> {
    let mut doc = String::with_capacity(4096);
    logon_session_xml(&mut doc, &to.public, id, owner, true);
    let mut r = document(StatusCode::CREATED, doc, to)?;
    let mut value =
        HeaderValue::from_str(token.expose()).map_err(|_| GatewayError::Internal("token"))?;
    value.set_sensitive(true);
    // TLS here or at a trusted proxy in front: either way the client is on https.
    let secure = if to.public.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let mut cookie = HeaderValue::from_str(&format!(
        "X-RestSvcSessionId={}; Path=/api; HttpOnly; SameSite=Strict{secure}",
        token.expose()
    ))
    .map_err(|_| GatewayError::Internal("cookie"))?;
    cookie.set_sensitive(true);
    r.headers_mut().insert(SESSION_HEADER, value);
    r.headers_mut().insert(SET_COOKIE, cookie);
    Ok(r)
}

/// `GET /api/logonSessions`: the caller's own sessions.
pub fn list(
    ids: &[Uuid],
    owner: &str,
    to: &Representation,
) -> Result<Response<Body>, GatewayError> {
    let mut doc = String::from("<LogonSessions xmlns=\"http://www.veeam.com/ent/v1.0\">");
    for id in ids {
        logon_session_xml(&mut doc, &to.public, *id, owner, false);
    }
    doc.push_str("</LogonSessions>");
    document(StatusCode::OK, doc, to)
}

/// `GET /api/logonSessions/{id}`: one of the caller's sessions.
pub fn one(id: Uuid, owner: &str, to: &Representation) -> Result<Response<Body>, GatewayError> {
    let mut doc = String::with_capacity(4096);
    logon_session_xml(&mut doc, &to.public, id, owner, true);
    document(StatusCode::OK, doc, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_are_scoped_to_their_owner_and_bounded() {
        let store = LocalSessions::new(Duration::from_millis(50));
        let (t1, id1) = store.create("a").unwrap();
        let (_t2, id2) = store.create("b").unwrap();
        assert_eq!(store.lookup(t1.expose()).unwrap().id, id1);
        assert_eq!(store.list("a"), vec![id1]);
        assert!(!store.delete("a", id2), "deleted another client's session");
        assert!(store.delete("b", id2));
        std::thread::sleep(Duration::from_millis(80));
        assert!(
            store.lookup(t1.expose()).is_none(),
            "idle session still valid"
        );

        let store = LocalSessions::default();
        let (first, _) = store.create("c").unwrap();
        for _ in 0..PER_CLIENT {
            store.create("c").unwrap();
        }
        assert_eq!(store.list("c").len(), PER_CLIENT);
        assert!(
            store.lookup(first.expose()).is_none(),
            "the oldest was kept"
        );
    }

    #[test]
    fn a_logon_session_document_converts_like_ems() {
        let id = Uuid::nil();
        let to = Representation {
            xml: false,
            case: crate::config::JsonCase::Pascal,
            public: "http://gw".into(),
        };
        let r = one(id, "r&d", &to).unwrap();
        assert_eq!(r.headers()[CONTENT_TYPE], render::JSON);
    }
}
