//! The simulator's shared state: data, credentials, logon sessions, faults, counters
//! and the request log. One `Arc<State>` is shared by the [`Sim`](super::Sim) handle
//! and every connection task.
//!
//! Locks are `std::sync::Mutex`: every critical section is a few map operations and
//! never awaits, so a blocking lock is cheaper than an async one and cannot deadlock
//! across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::data::Data;
use super::{Fault, FaultTarget, RecordedRequest, SimConfig, SimStats};

/// How many requests the log keeps.
pub(crate) const REQUEST_LOG: usize = 10_000;
/// How many tasks one logon session keeps; its oldest are forgotten (and answer 404).
pub(crate) const TASKS_KEPT: usize = 1000;

/// A task EM created for a request of one logon session (tasks_intro.md: tasks
/// exist "within the currently existing logon session"), here always a job start.
#[derive(Clone, Debug)]
pub(crate) struct Task {
    /// `task-{number}`; numbers count from 1 in each logon session and are never
    /// reused within it.
    pub number: u64,
    /// Index of the job it started.
    pub job: usize,
    /// When it turns from `Running` to `Finished`; `None` for a duration too
    /// long to count (it never finishes).
    pub finishes: Option<Instant>,
}

impl Task {
    /// `task-7` (post_jobs_id_actionstart.md).
    pub fn id(&self) -> String {
        format!("task-{}", self.number)
    }

    /// Still `Running`: its duration has not passed yet.
    pub fn running(&self) -> bool {
        self.finishes.is_none_or(|f| Instant::now() < f)
    }

    /// The number of a task id as sent (`task-7`), if it is one in form.
    pub fn number_of(id: &str) -> Option<u64> {
        id.strip_prefix("task-")?.parse().ok()
    }
}

/// Why a request's session was refused (all answer 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionError {
    /// Neither the cookie nor the header carried a token.
    Missing,
    /// The token is not a session we know (never was, logged out, or malformed).
    Unknown,
    /// The session was idle longer than the idle timeout; it is now removed.
    Expired,
}

/// Which fault slot a request falls under (see [`FaultTarget`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultClass {
    /// `POST /api/sessionMngr/`.
    Logon,
    /// Every resource that needs a session.
    Data,
    /// The entry point and paths outside `/api`: only `FaultTarget::All` applies.
    Other,
}

/// A logon session.
struct Session {
    user: String,
    /// Order of creation, to list sessions in a stable order.
    seq: u64,
    /// Last successful use; the idle timeout runs from here.
    last_used: Instant,
    /// The tasks its requests created, oldest first (at most [`TASKS_KEPT`]).
    /// They live and die with the session: a new session sees none of them.
    tasks: VecDeque<Task>,
    /// The number of its next task.
    next_task: u64,
}

/// Faults per target; `all` applies to every request and wins over the others,
/// then `write` over `data` for a write.
#[derive(Default)]
struct Faults {
    logon: Option<Fault>,
    data: Option<Fault>,
    write: Option<Fault>,
    all: Option<Fault>,
}

/// Counters behind [`SimStats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub logons_ok: AtomicU64,
    pub logons_failed: AtomicU64,
    pub logouts: AtomicU64,
    pub requests: AtomicU64,
    pub unauthorized: AtomicU64,
    pub tasks_started: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) struct State {
    /// The generated estate; it grows only by new restore points
    /// ([`State::add_point`]), as jobs run.
    data: RwLock<Data>,
    /// Whether connections are TLS (`https` in Hrefs).
    pub tls: bool,
    /// `scheme://host:port` for Hrefs when a request carries no usable `Host`.
    pub base_url: String,
    /// The account that may log on; compared ignoring ASCII case, as Windows
    /// account names are.
    username: String,
    /// Its password; changeable while running ([`super::Sim::set_password`]).
    password: Mutex<String>,
    /// Idle timeout of a logon session (EM: 15 minutes, http_authentication.md).
    session_idle: Duration,
    /// Delay added before answering each request, in nanoseconds.
    latency_ns: AtomicU64,
    /// How long a task is `Running` before it is `Finished`.
    task_duration: Duration,
    faults: Mutex<Faults>,
    /// Faults by path prefix (lowercase).
    path_faults: Mutex<Vec<(String, Fault)>>,
    /// Latency by path prefix (lowercase), longest prefix first.
    path_latency: Mutex<Vec<(String, Duration)>>,
    sessions: Mutex<HashMap<Uuid, Session>>,
    next_seq: AtomicU64,
    pub counters: Counters,
    /// The last [`REQUEST_LOG`] requests, oldest first.
    log: Mutex<VecDeque<RecordedRequest>>,
    /// Requests under this path prefix (lowercase) worked on at once: now,
    /// and the most ever.
    watched: Mutex<String>,
    in_flight: Arc<AtomicU64>,
    peak: AtomicU64,
}

/// A watched request being worked on; counted down when dropped.
pub(crate) struct Working(Option<Arc<AtomicU64>>);

impl Drop for Working {
    fn drop(&mut self) {
        if let Some(n) = &self.0 {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: every
/// critical section leaves its data consistent, so the poison carries no meaning.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Counts requests under `prefix` (any case) worked on at once from now
    /// on; the peak starts again at zero.
    pub fn watch(&self, prefix: &str) {
        *lock(&self.watched) = prefix.to_ascii_lowercase();
        self.peak.store(0, Ordering::Relaxed);
    }

    /// The most watched requests ever worked on at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// A request for `path` begins: counted while the guard lives, if watched.
    pub fn working(&self, path: &str) -> Working {
        let watched = lock(&self.watched);
        if watched.is_empty()
            || !path
                .get(..watched.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(&watched))
        {
            return Working(None);
        }
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Working(Some(self.in_flight.clone()))
    }

    /// The estate as it is now; held for one answer (no await while held).
    pub fn data(&self) -> RwLockReadGuard<'_, Data> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Job `job` made a new restore point just now; its id.
    pub fn add_point(&self, job: usize) -> uuid::Uuid {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        data.add_point(job, now_ms)
    }

    /// The state of a simulator configured by `cfg` (its address and data
    /// settings are used elsewhere), serving `data` at `base_url`.
    pub fn new(data: Data, base_url: String, cfg: SimConfig) -> State {
        State {
            data: RwLock::new(data),
            tls: cfg.tls,
            base_url,
            username: cfg.username,
            password: Mutex::new(cfg.password),
            session_idle: cfg.session_idle,
            latency_ns: AtomicU64::new(duration_ns(cfg.latency)),
            task_duration: cfg.task_duration,
            faults: Mutex::new(Faults::default()),
            path_faults: Mutex::new(Vec::new()),
            path_latency: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashMap::new()),
            next_seq: AtomicU64::new(0),
            counters: Counters::default(),
            log: Mutex::new(VecDeque::with_capacity(1024)),
            watched: Mutex::new(String::new()),
            in_flight: Arc::default(),
            peak: AtomicU64::new(0),
        }
    }

    /// The delay before answering a request for `path`.
    pub fn latency(&self, path: &str) -> Duration {
        let path = path.to_ascii_lowercase();
        lock(&self.path_latency)
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, d)| *d)
            .unwrap_or_else(|| Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed)))
    }

    pub fn set_path_latency(&self, prefix: &str, latency: Option<Duration>) {
        let prefix = prefix.to_ascii_lowercase();
        let mut list = lock(&self.path_latency);
        list.retain(|(p, _)| *p != prefix);
        if let Some(d) = latency {
            list.push((prefix, d));
            list.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        }
    }

    pub fn set_path_fault(&self, prefix: &str, fault: Option<Fault>) {
        let prefix = prefix.to_ascii_lowercase();
        let mut list = lock(&self.path_faults);
        list.retain(|(p, _)| *p != prefix);
        if let Some(f) = fault {
            list.push((prefix, f));
            list.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        }
    }

    /// The fault set for `path`'s prefix, if any.
    pub fn path_fault(&self, path: &str) -> Option<Fault> {
        let path = path.to_ascii_lowercase();
        lock(&self.path_faults)
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, f)| *f)
    }

    pub fn set_latency(&self, latency: Duration) {
        self.latency_ns
            .store(duration_ns(latency), Ordering::Relaxed);
    }

    pub fn set_password(&self, password: &str) {
        *lock(&self.password) = password.to_owned();
    }

    /// Whether these Basic credentials may log on.
    pub fn credentials_ok(&self, user: &str, password: &str) -> bool {
        user.eq_ignore_ascii_case(&self.username) && *lock(&self.password) == password
    }

    /// Creates a logon session for `user` and returns its id.
    pub fn create_session(&self, user: &str) -> Uuid {
        let id = Uuid::new_v4();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.sessions).insert(
            id,
            Session {
                user: user.to_owned(),
                seq,
                last_used: Instant::now(),
                tasks: VecDeque::new(),
                next_task: 1,
            },
        );
        id
    }

    /// Checks the session a request presents and, when it is valid, restarts its
    /// idle timer. An expired session is removed.
    pub fn use_session(&self, token: Option<&str>) -> Result<Uuid, SessionError> {
        let token = token.ok_or(SessionError::Missing)?;
        let id = token_session_id(token).ok_or(SessionError::Unknown)?;
        let mut sessions = lock(&self.sessions);
        let now = Instant::now();
        match sessions.get_mut(&id) {
            None => Err(SessionError::Unknown),
            Some(s) if now.duration_since(s.last_used) > self.session_idle => {
                sessions.remove(&id);
                Err(SessionError::Expired)
            }
            Some(s) => {
                s.last_used = now;
                Ok(id)
            }
        }
    }

    /// Removes sessions idle longer than the timeout.
    fn purge(&self, sessions: &mut HashMap<Uuid, Session>) {
        let now = Instant::now();
        let idle = self.session_idle;
        sessions.retain(|_, s| now.duration_since(s.last_used) <= idle);
    }

    /// Live sessions `(id, user name)`, oldest first.
    pub fn sessions(&self) -> Vec<(Uuid, String)> {
        let mut sessions = lock(&self.sessions);
        self.purge(&mut sessions);
        let mut list: Vec<_> = sessions
            .iter()
            .map(|(id, s)| (s.seq, *id, s.user.clone()))
            .collect();
        list.sort_unstable_by_key(|(seq, _, _)| *seq);
        list.into_iter().map(|(_, id, user)| (id, user)).collect()
    }

    /// The user of a live session.
    pub fn session_user(&self, id: &Uuid) -> Option<String> {
        let mut sessions = lock(&self.sessions);
        self.purge(&mut sessions);
        sessions.get(id).map(|s| s.user.clone())
    }

    /// Ends a live session; false when there is none with this id.
    pub fn delete_session(&self, id: &Uuid) -> bool {
        let mut sessions = lock(&self.sessions);
        self.purge(&mut sessions);
        sessions.remove(id).is_some()
    }

    pub fn expire_all_sessions(&self) {
        lock(&self.sessions).clear();
    }

    pub fn set_fault(&self, target: FaultTarget, fault: Option<Fault>) {
        let mut faults = lock(&self.faults);
        match (target, fault) {
            (FaultTarget::Logon, f) => faults.logon = f,
            (FaultTarget::Data, f) => faults.data = f,
            (FaultTarget::Write, f) => faults.write = f,
            // Clearing `All` clears every target: "no faults at all".
            (FaultTarget::All, None) => {
                *faults = Faults::default();
                lock(&self.path_faults).clear();
            }
            (FaultTarget::All, f) => faults.all = f,
        }
    }

    /// The fault a request of this class gets, if any; `write` when it is a
    /// write (see [`FaultTarget::Write`]).
    pub fn fault_for(&self, class: FaultClass, write: bool) -> Option<Fault> {
        let faults = lock(&self.faults);
        faults.all.or(match class {
            FaultClass::Logon => faults.logon,
            FaultClass::Data if write => faults.write.or(faults.data),
            FaultClass::Data => faults.data,
            FaultClass::Other => None,
        })
    }

    /// Records a new task of live session `session` starting job `job`,
    /// forgetting the session's oldest beyond [`TASKS_KEPT`]; `None` when the
    /// session has ended meanwhile.
    pub fn create_task(&self, session: &Uuid, job: usize) -> Option<Task> {
        let mut sessions = lock(&self.sessions);
        let s = sessions.get_mut(session)?;
        let task = Task {
            number: s.next_task,
            job,
            finishes: Instant::now().checked_add(self.task_duration),
        };
        s.next_task += 1;
        if s.tasks.len() == TASKS_KEPT {
            s.tasks.pop_front();
        }
        s.tasks.push_back(task.clone());
        Counters::bump(&self.counters.tasks_started);
        Some(task)
    }

    /// The tasks of live session `session`, oldest first.
    pub fn tasks(&self, session: &Uuid) -> Vec<Task> {
        lock(&self.sessions)
            .get(session)
            .map(|s| s.tasks.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Task `task-{number}` of session `session`, if it has one.
    pub fn task(&self, session: &Uuid, number: u64) -> Option<Task> {
        let sessions = lock(&self.sessions);
        let tasks = &sessions.get(session)?.tasks;
        // Numbers only grow, so the table is sorted by them.
        tasks
            .binary_search_by_key(&number, |t| t.number)
            .ok()
            .and_then(|i| tasks.get(i).cloned())
    }

    /// Removes task `task-{number}` of session `session`; false when it has none.
    pub fn delete_task(&self, session: &Uuid, number: u64) -> bool {
        let mut sessions = lock(&self.sessions);
        let Some(s) = sessions.get_mut(session) else {
            return false;
        };
        match s.tasks.binary_search_by_key(&number, |t| t.number) {
            Ok(i) => s.tasks.remove(i).is_some(),
            Err(_) => false,
        }
    }

    pub fn record(&self, request: RecordedRequest) {
        Counters::bump(&self.counters.requests);
        let mut log = lock(&self.log);
        if log.len() == REQUEST_LOG {
            log.pop_front();
        }
        log.push_back(request);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.log).iter().cloned().collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.log).clear();
    }

    pub fn stats(&self) -> SimStats {
        let c = &self.counters;
        let active_sessions = {
            let mut sessions = lock(&self.sessions);
            self.purge(&mut sessions);
            sessions.len()
        };
        SimStats {
            logons_ok: c.logons_ok.load(Ordering::Relaxed),
            logons_failed: c.logons_failed.load(Ordering::Relaxed),
            logouts: c.logouts.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            unauthorized: c.unauthorized.load(Ordering::Relaxed),
            tasks_started: c.tasks_started.load(Ordering::Relaxed),
            active_sessions,
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// EM's session token: base64 of the session GUID's 16 bytes in .NET's
/// `Guid.ToByteArray()` order (first three fields little-endian). The docs' example
/// tokens decode to version-4 GUIDs only in that order (`OsU6RL7OGkGKrPBGxKxURw==` is
/// `443ac53a-cebe-411a-8aac-f046c4ac5447`), http_authentication.md.
pub(crate) fn session_token(id: &Uuid) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(id.to_bytes_le())
}

/// The session id a token names, if it is one of ours in form.
pub(crate) fn token_session_id(token: &str) -> Option<Uuid> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let bytes: [u8; 16] = bytes.try_into().ok()?;
    Some(Uuid::from_bytes_le(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_dotnet_guid_bytes() {
        let id = token_session_id("OsU6RL7OGkGKrPBGxKxURw==").unwrap();
        assert_eq!(id.to_string(), "443ac53a-cebe-411a-8aac-f046c4ac5447");
        assert_eq!(session_token(&id), "OsU6RL7OGkGKrPBGxKxURw==");
        assert!(token_session_id("not base64!").is_none());
        assert!(token_session_id("AAAA").is_none());
    }

    #[test]
    fn tasks_are_kept_per_session_and_any_duration_is_safe() {
        let cfg = SimConfig {
            task_duration: Duration::MAX,
            ..SimConfig::default()
        };
        let state = State::new(Data::generate(1, 0), "http://sim".into(), cfg);
        let (a, b) = (state.create_session("a"), state.create_session("b"));
        let task = state.create_task(&a, 0).unwrap();
        assert!(task.running());
        assert_eq!(state.create_task(&b, 1).unwrap().id(), "task-1");
        assert!(state.task(&b, 1).is_some_and(|t| t.job == 1));
        assert!(!state.delete_task(&b, 2));
        assert!(state.delete_task(&a, 1));
        assert!(state.tasks(&a).is_empty());
        state.delete_session(&b);
        assert!(state.create_task(&b, 0).is_none());
        assert_eq!(state.stats().tasks_started, 2);
        assert_eq!(Task::number_of("task-12"), Some(12));
        assert_eq!(Task::number_of("Task-1"), None);
    }
}
