//! The drop-in EM logon: gateway sessions for clients (CONTRACT §3, §5).
//!
//! Existing EM clients log on with `POST /api/sessionMngr/`, send
//! `X-RestSvcSessionId`, list `/api/logonSessions` and delete "their" session
//! at the end. The gateway answers all of that itself with sessions of its
//! own, so a client's logout never touches the pooled EM session (which
//! would cut off every other client) and EM never sees a client's logon.
//!
//! Tokens are kept only as SHA-256 hashes; sessions end after 15 minutes
//! idle (like EM's) and each client holds a bounded number (the oldest goes).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, SET_COOKIE};
use http::{Response, StatusCode};
use uuid::Uuid;

use crate::config::JsonCase;
use crate::em::session::SESSION_HEADER;
use crate::fleet::Fleet;
use crate::gateway::error::GatewayError;
use crate::gateway::render;
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
    owner: String,
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
    /// Its owner.
    pub owner: String,
}

/// The gateway sessions this replica knows (all of them, without a fleet).
pub struct LocalSessions {
    /// By SHA-256 of the token, so no token sits in memory in the clear.
    by_token: Mutex<HashMap<[u8; 32], Record>>,
    /// Idle timeout.
    idle: Duration,
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
            by_token: Mutex::new(HashMap::new()),
            idle,
        }
    }

    fn key(token: &str) -> [u8; 32] {
        crate::digest::sha256(token.as_bytes())
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
            .filter(|(_, r)| r.owner == owner)
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
            Self::key(token.expose()),
            Record {
                id,
                owner: owner.to_string(),
                last_used: now,
                created: now,
                checked: now,
            },
        );
        Ok((token, id))
    }

    /// The live session a token stands for (its idle timer restarts).
    pub fn lookup(&self, token: &str) -> Option<SessionInfo> {
        let key = Self::key(token);
        let mut map = self.by_token.lock().ok()?;
        let now = Instant::now();
        let record = map.get_mut(&key)?;
        if now.duration_since(record.last_used) >= self.idle {
            map.remove(&key);
            return None;
        }
        record.last_used = now;
        Some(SessionInfo {
            id: record.id,
            owner: record.owner.clone(),
        })
    }

    /// The live sessions of `owner`, oldest first.
    pub fn list(&self, owner: &str) -> Vec<Uuid> {
        let Ok(map) = self.by_token.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut own: Vec<&Record> = map
            .values()
            .filter(|r| r.owner == owner && now.duration_since(r.last_used) < self.idle)
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
        map.retain(|_, r| !(r.owner == owner && r.id == id));
        map.len() < before
    }

    /// Keeps what the fleet said a token stands for (a session made on
    /// another replica), so the next requests need not ask.
    fn mirror(&self, key: [u8; 32], id: Uuid, owner: &str) {
        let Ok(mut map) = self.by_token.lock() else {
            return;
        };
        let now = Instant::now();
        let record = map.entry(key).or_insert_with(|| Record {
            id,
            owner: owner.to_string(),
            last_used: now,
            created: now,
            checked: now,
        });
        record.last_used = now;
        record.checked = now;
    }

    /// The record of a token hash, if this replica knows it, and when the
    /// fleet last confirmed it.
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

/// Gateway sessions: this replica's, and in fleet mode the fleet's (kept in
/// the shared tier by token hash, so a token from one replica works on
/// every one, and a logout anywhere ends it everywhere). With the shared
/// tier unreachable, what this replica knows.
pub struct ClientSessions {
    /// What this replica knows.
    pub local: LocalSessions,
    /// The fleet, in fleet mode.
    fleet: Option<Fleet>,
}

impl ClientSessions {
    /// Sessions of this replica alone, or of the fleet.
    pub fn new(fleet: Option<Fleet>) -> ClientSessions {
        ClientSessions {
            local: LocalSessions::default(),
            fleet,
        }
    }

    fn hex(key: &[u8; 32]) -> String {
        key.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A new session for `owner`: its token (shown once) and id.
    pub async fn create(&self, owner: &str) -> Result<(Secret, Uuid), GatewayError> {
        let (token, id) = self.local.create(owner)?;
        if let Some(fleet) = &self.fleet {
            let key = LocalSessions::key(token.expose());
            let _ = fleet
                .session_create(&Self::hex(&key), owner, &id.to_string(), IDLE, PER_CLIENT)
                .await;
        }
        Ok((token, id))
    }

    /// The live session a token stands for (its idle timer restarts).
    pub async fn lookup(&self, token: &str) -> Option<SessionInfo> {
        let key = LocalSessions::key(token);
        let known = self.local.known(&key);
        let Some(fleet) = &self.fleet else {
            return known.map(|(info, _)| info);
        };
        if let Some((info, checked)) = &known {
            if checked.elapsed() < FLEET_RECHECK {
                return Some(info.clone());
            }
        }
        match fleet.session_lookup(&Self::hex(&key), IDLE).await {
            Ok(Some(s)) => {
                let id = Uuid::try_parse(&s.id).ok()?;
                self.local.mirror(key, id, &s.owner);
                Some(SessionInfo { id, owner: s.owner })
            }
            Ok(None) => {
                self.local.forget(&key);
                None
            }
            // The shared tier is down: what this replica knows.
            Err(_) => known.map(|(info, _)| info),
        }
    }

    /// The live sessions of `owner`, oldest first.
    pub async fn list(&self, owner: &str) -> Vec<Uuid> {
        if let Some(fleet) = &self.fleet {
            if let Ok(ids) = fleet.session_list(owner).await {
                return ids.iter().filter_map(|i| Uuid::try_parse(i).ok()).collect();
            }
        }
        self.local.list(owner)
    }

    /// Ends `owner`'s session `id` (everywhere, in fleet mode); false if
    /// there is no such session of theirs.
    pub async fn delete(&self, owner: &str, id: Uuid) -> bool {
        let here = self.local.delete(owner, id);
        match &self.fleet {
            Some(fleet) => match fleet.session_delete(owner, &id.to_string()).await {
                Ok(Some(_)) => true,
                _ => here,
            },
            None => here,
        }
    }

    /// Forgets a session that ended on another replica (by token hash, hex).
    pub fn ended_elsewhere(&self, token_hash: &str) {
        let mut key = [0u8; 32];
        if token_hash.len() == 64
            && (0..32).all(|i| {
                u8::from_str_radix(&token_hash[2 * i..2 * i + 2], 16)
                    .map(|b| key[i] = b)
                    .is_ok()
            })
        {
            self.local.forget(&key);
        }
    }

    /// Live sessions this replica knows, for metrics.
    pub fn count(&self) -> usize {
        self.local.count()
    }
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
    xml: bool,
    case: JsonCase,
) -> Result<Response<Body>, GatewayError> {
    let (body, content_type) = if xml {
        (Bytes::from(xml_doc), render::XML)
    } else {
        let mut out = Vec::with_capacity(xml_doc.len());
        crate::convert::to_json(xml_doc.as_bytes(), render::case(case), None, &mut out)?;
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
    public: &str,
    tls: bool,
    xml: bool,
    case: JsonCase,
) -> Result<Response<Body>, GatewayError> {
    let mut doc = String::with_capacity(4096);
    logon_session_xml(&mut doc, public, id, owner, true);
    let mut r = document(StatusCode::CREATED, doc, xml, case)?;
    let mut value =
        HeaderValue::from_str(token.expose()).map_err(|_| GatewayError::Internal("token"))?;
    value.set_sensitive(true);
    let secure = if tls { "; Secure" } else { "" };
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
    public: &str,
    xml: bool,
    case: JsonCase,
) -> Result<Response<Body>, GatewayError> {
    let mut doc = String::from("<LogonSessions xmlns=\"http://www.veeam.com/ent/v1.0\">");
    for id in ids {
        logon_session_xml(&mut doc, public, *id, owner, false);
    }
    doc.push_str("</LogonSessions>");
    document(StatusCode::OK, doc, xml, case)
}

/// `GET /api/logonSessions/{id}`: one of the caller's sessions.
pub fn one(
    id: Uuid,
    owner: &str,
    public: &str,
    xml: bool,
    case: JsonCase,
) -> Result<Response<Body>, GatewayError> {
    let mut doc = String::with_capacity(4096);
    logon_session_xml(&mut doc, public, id, owner, true);
    document(StatusCode::OK, doc, xml, case)
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
        let r = one(id, "r&d", "http://gw", false, JsonCase::Pascal).unwrap();
        assert_eq!(r.headers()[CONTENT_TYPE], render::JSON);
    }
}
