//! EM's tasks, per client (README, "Writes and EM's tasks").
//!
//! EM keeps the tasks a write creates (a job start, a restore: `202` with a
//! `Task`) per logon session: only that session sees them, and a new
//! session sees none. Behind one pooled session the gateway keeps, per
//! client, what EM keeps per session:
//!
//! - A write whose answer is a `Task` records it as the caller's, under an
//!   id of the gateway's own (`task-` and 96 random bits): EM numbers tasks
//!   per session (`task-1` again after every re-logon) and an id must name
//!   one task for as long as its owner may ask, so nobody can guess
//!   another client's.
//! - `GET /api/tasks[/{ID}]`, `DELETE /api/tasks/{ID}` and
//!   `GET /api/query?type=Task` are answered here, from what the gateway
//!   knows of the caller's tasks: another client's task is EM's 404 and
//!   never reaches EM; nothing of it is cached or collapsed.
//! - Each pending task is followed to its end with the session that made
//!   it, one EM request per second at most (inside the EM concurrency
//!   limit). That also keeps the session alive, and a session replaced in
//!   the pool meanwhile is not logged out while a task needs it (a pin).
//!   Its final state is kept for its owner for `EMGATE_TASK_RETENTION`.
//!
//! - Fleet mode: every task is also in the shared tier (sealed session,
//!   MAC: [`crate::fleet::tasks`]), so its owner reads it on any replica;
//!   the replica following it holds a lease, and when that replica dies,
//!   the next replica asked about the task takes the lease and follows it
//!   with the same EM session.
//!
//! The states of a task here:
//!
//! | state | a `GET` answers | leaves it when |
//! | --- | --- | --- |
//! | pending | EM's last answer (at most a second old) | EM says `Finished` → finished; EM has no such task or its session is gone → lost |
//! | finished | EM's final answer | the retention ran out → gone |
//! | lost | a `Finished` task with `Success="false"` and why (the session that made it ended before it finished: EM restarted, or logged out) | the retention ran out → gone |
//! | gone | 404 | — |
//!
//! In fleet mode a task this replica does not know may be in the shared
//! tier: while Redis does not answer, a `GET` of it is 503 with
//! `Retry-After` ([`Down`]), never a 404 that would tell its owner
//! the task is gone. A `DELETE` removes the shared record first, so while
//! Redis does not answer it does nothing and is 503 too. A list is 503 as
//! well: this replica's tasks alone would tell their owner the others are
//! gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::em::session::{element_text, EmSession, SessionPool};
use crate::fleet::tasks::SharedTask;
use crate::fleet::{Down, Fleet};
// Every lock here is taken even after a panic poisoned it. What the locks
// hold (the map of tasks, a task's last document and end) is plain data
// that no update leaves half made, and every answer about tasks must keep
// agreeing: before, a poisoned map made a list answer 503 while a read or
// a DELETE of the same task answered 404.
use crate::ops::locked;

/// How often a pending task is asked about, at most.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// Tasks one client may keep at most; beyond it the oldest finished go.
pub const PER_CLIENT: usize = 1000;
/// EM's namespace.
const NS: &str = "http://www.veeam.com/ent/v1.0";

/// One task of one client.
struct Task {
    /// The client it belongs to.
    owner: String,
    /// EM's id of it, in the session that made it.
    em_id: String,
    /// The session that made it.
    session: Arc<EmSession>,
    /// When it was made.
    created: Instant,
    /// EM's last answer about it (ids already the gateway's), and when it
    /// ended.
    state: Mutex<(Bytes, Option<Instant>)>,
}

/// What the gateway knows of its clients' tasks: the ones this replica
/// follows (or followed), and in fleet mode the fleet's.
pub struct Tasks {
    by_id: Mutex<HashMap<String, Arc<Task>>>,
    retention: Duration,
    fleet: Option<Fleet>,
}

/// A client's pending tasks, for the status page and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The client.
    pub owner: String,
    /// How many of its tasks are pending.
    pub count: usize,
    /// How long the oldest has been pending.
    pub oldest: Duration,
}

impl Tasks {
    /// No tasks yet; final states kept for `retention`.
    pub fn new(retention: Duration, fleet: Option<Fleet>) -> Tasks {
        Tasks {
            by_id: Mutex::new(HashMap::new()),
            retention,
            fleet,
        }
    }

    /// Puts this replica's view of task `id` in the shared tier (`create`:
    /// a new task; else only while the record is there).
    async fn share(&self, id: &str, task: &Task, create: bool) {
        let Some(fleet) = &self.fleet else { return };
        let (doc, ended) = locked(&task.state).clone();
        let shared = SharedTask {
            owner: task.owner.clone(),
            em_id: task.em_id.clone(),
            doc: String::from_utf8_lossy(&doc).into_owned(),
            finished: ended.is_some(),
            session: task.session.to_shared(),
        };
        if fleet
            .task_put(id, &shared, self.retention, create)
            .await
            .is_err()
        {
            tracing::warn!(task = %id, "the shared tier is down: this task is followed on this replica only for now");
        }
    }

    /// Follows task `id` here (spawned), holding the fleet's lease on it:
    /// one follower per task in the fleet (with Redis away, each replica
    /// that has it follows it).
    fn spawn_follower(self: &Arc<Self>, pool: &Arc<SessionPool>, id: String, task: Arc<Task>) {
        let (tasks, pool) = (self.clone(), pool.clone());
        let pin = task.session.pin();
        tokio::spawn(async move {
            let _lease = match &tasks.fleet {
                Some(f) => match f.try_lease(&format!("task-{id}")).await {
                    Ok(Some(lease)) => Some(lease),
                    Ok(None) => return,
                    Err(_) => None,
                },
                None => None,
            };
            tasks.follow(&pool, &id, &task).await;
            drop(pin);
            // The session may still serve other tasks of this replica.
            if !tasks.session_needed(&task.session) {
                pool.retire(&task.session).await;
            }
        });
    }

    /// Whether a pending task here still uses `session`.
    fn session_needed(&self, session: &EmSession) -> bool {
        locked(&self.by_id)
            .values()
            .any(|t| t.session.same_as(session) && locked(&t.state).1.is_none())
    }

    /// EM's answer to `owner`'s write: if it is a `Task`, it becomes
    /// `owner`'s (followed to its end when pending), and the answer the
    /// client gets names it by the gateway's id.
    pub async fn record(
        self: &Arc<Self>,
        pool: &Arc<SessionPool>,
        owner: &str,
        em_body: &Bytes,
        session: Arc<EmSession>,
    ) -> Option<Bytes> {
        if !is_task(em_body) {
            return None;
        }
        let em_id = element_text(em_body, b"TaskId")?;
        let id = format!("task-{}", crate::digest::random_token(12).ok()?.expose());
        let doc = rename(em_body, &em_id, &id);
        let finished = is_finished(&doc);
        let task = Arc::new(Task {
            owner: owner.to_string(),
            em_id,
            session,
            created: Instant::now(),
            state: Mutex::new((doc.clone(), finished.then(Instant::now))),
        });
        {
            let mut map = locked(&self.by_id);
            self.trim(&mut map, owner);
            map.insert(id.clone(), task.clone());
        }
        tracing::info!(client = %owner, task = %id, "EM task started");
        // Followed before anything else is awaited: a client that goes away
        // now must not leave the task unfollowed.
        if !finished {
            self.spawn_follower(pool, id.clone(), task.clone());
        }
        self.share(&id, &task, true).await;
        Some(doc)
    }

    /// Asks EM about a pending task every second until it ends.
    async fn follow(&self, pool: &Arc<SessionPool>, id: &str, task: &Task) {
        let path = format!("/api/tasks/{}", task.em_id);
        let until = task.created + self.retention;
        // Never pending forever: past the retention its end is unknown.
        let _end = EndUnknown {
            task,
            doc: lost(pool.upstream().base_url(), id, &operation(task)),
        };
        while Instant::now() < until {
            tokio::time::sleep(FOLLOW_EVERY).await;
            if !self.known(id) {
                return;
            }
            let answer = pool.send_with(&task.session, Method::GET, &path).await;
            let doc = match answer {
                Ok(r) if r.status == StatusCode::OK && is_task(&r.body) => {
                    rename(&r.body, &task.em_id, id)
                }
                // EM no longer knows the task, or the session that made it
                // (EM restarted, or the session was logged out): its end
                // will never be known.
                Ok(r)
                    if r.status == StatusCode::NOT_FOUND
                        || r.status == StatusCode::UNAUTHORIZED =>
                {
                    tracing::warn!(task = %id, status = r.status.as_u16(), "an EM task was lost with its session");
                    lost(pool.upstream().base_url(), id, &operation(task))
                }
                // EM failing for a while: ask again.
                _ => continue,
            };
            let finished = is_finished(&doc);
            let changed = {
                let mut state = locked(&task.state);
                let changed = state.0 != doc;
                *state = (doc, finished.then(Instant::now));
                changed
            };
            if changed {
                self.share(id, task, false).await;
            }
            if finished {
                tracing::info!(task = %id, "EM task finished");
                return;
            }
        }
    }

    fn known(&self, id: &str) -> bool {
        locked(&self.by_id).contains_key(id)
    }

    /// Drops what ran out; keeps `owner` below its bound.
    fn trim(&self, map: &mut HashMap<String, Arc<Task>>, owner: &str) {
        let retention = self.retention;
        map.retain(|_, t| locked(&t.state).1.is_none_or(|at| at.elapsed() < retention));
        let mut own: Vec<(String, Instant, bool)> = map
            .iter()
            .filter(|(_, t)| t.owner == owner)
            .map(|(id, t)| {
                let ended = locked(&t.state).1.is_some();
                (id.clone(), t.created, ended)
            })
            .collect();
        if own.len() >= PER_CLIENT {
            own.sort_by_key(|(_, created, ended)| (!*ended, *created));
            for (id, _, _) in own.iter().take(own.len() + 1 - PER_CLIENT) {
                map.remove(id);
            }
        }
    }

    /// The caller's task `id` as EM last described it; `None` for a task
    /// that is not the caller's (or no longer kept). In fleet mode a task
    /// this replica does not follow comes from the shared tier, and one
    /// nobody follows any more (its replica died) is taken over here.
    pub async fn get(
        self: &Arc<Self>,
        pool: &Arc<SessionPool>,
        owner: &str,
        id: &str,
    ) -> Result<Option<Bytes>, Down> {
        if let Some(doc) = self.local(owner, id) {
            return Ok(Some(doc));
        }
        let Some(fleet) = self.fleet.as_ref() else {
            return Ok(None);
        };
        let Some(shared) = fleet.task_get(id).await? else {
            return Ok(None);
        };
        if shared.owner != owner {
            return Ok(None);
        }
        let doc = Bytes::from(shared.doc.clone());
        if !shared.finished
            && !fleet
                .lease_held(&format!("task-{id}"))
                .await
                .unwrap_or(true)
        {
            tracing::info!(task = %id, "following an EM task whose replica stopped following it");
            let task = Arc::new(Task {
                owner: shared.owner,
                em_id: shared.em_id,
                session: EmSession::from_shared(shared.session),
                created: Instant::now(),
                state: Mutex::new((doc.clone(), None)),
            });
            locked(&self.by_id).insert(id.to_string(), task.clone());
            self.spawn_follower(pool, id.to_string(), task);
        }
        Ok(Some(doc))
    }

    /// The caller's task `id`, if this replica follows (or followed) it.
    fn local(&self, owner: &str, id: &str) -> Option<Bytes> {
        let map = locked(&self.by_id);
        let task = map.get(id).filter(|t| t.owner == owner)?;
        let state = locked(&task.state);
        if state.1.is_some_and(|at| at.elapsed() >= self.retention) {
            return None;
        }
        Some(state.0.clone())
    }

    /// The caller's tasks, oldest first (in fleet mode, then those other
    /// replicas follow). In fleet mode, while the shared tier does not
    /// answer, [`Down`]: a list of only this replica's tasks would tell
    /// their owner the others are gone.
    pub async fn list(
        self: &Arc<Self>,
        pool: &Arc<SessionPool>,
        owner: &str,
    ) -> Result<Vec<Bytes>, Down> {
        let (mut docs, known): (Vec<Bytes>, Vec<String>) = {
            let map = locked(&self.by_id);
            let mut own: Vec<(&String, &Arc<Task>)> =
                map.iter().filter(|(_, t)| t.owner == owner).collect();
            own.sort_by_key(|(_, t)| t.created);
            let docs = own
                .iter()
                .filter_map(|(_, t)| {
                    let s = locked(&t.state);
                    s.1.is_none_or(|at| at.elapsed() < self.retention)
                        .then(|| s.0.clone())
                })
                .collect();
            (docs, own.iter().map(|(id, _)| (*id).clone()).collect())
        };
        if let Some(fleet) = &self.fleet {
            for id in fleet.task_ids(owner).await? {
                if !known.contains(&id) {
                    if let Some(doc) = self.get(pool, owner, &id).await? {
                        docs.push(doc);
                    }
                }
            }
        }
        Ok(docs)
    }

    /// Deletes the caller's task `id`: at EM too while it is pending (EM
    /// stops it). False if it is not the caller's. In fleet mode its
    /// shared record goes first: while the shared tier does not answer,
    /// nothing is done ([`Down`]), so a 503 never hides a task
    /// stopped here but still shown, and followed, by other replicas.
    pub async fn delete(
        &self,
        pool: &Arc<SessionPool>,
        owner: &str,
        id: &str,
    ) -> Result<bool, Down> {
        let local = {
            let map = locked(&self.by_id);
            map.get(id).filter(|t| t.owner == owner).cloned()
        };
        let shared = match (&local, &self.fleet) {
            (None, Some(f)) => f.task_get(id).await?.filter(|t| t.owner == owner),
            _ => None,
        };
        let pending = match (&local, &shared) {
            (Some(t), _) => locked(&t.state)
                .1
                .is_none()
                .then(|| (t.em_id.clone(), t.session.clone())),
            (None, Some(t)) if !t.finished => {
                Some((t.em_id.clone(), EmSession::from_shared(t.session.clone())))
            }
            (None, Some(_)) => None,
            (None, None) => return Ok(false),
        };
        if let Some(f) = &self.fleet {
            f.task_delete(owner, id).await?;
        }
        if local.is_some() {
            locked(&self.by_id).remove(id);
        }
        if let Some((em_id, session)) = pending {
            let path = format!("/api/tasks/{em_id}");
            if let Err(e) = pool.send_with(&session, Method::DELETE, &path).await {
                tracing::warn!(task = %id, error = %e, "EM task delete failed");
            }
        }
        tracing::info!(client = %owner, task = %id, "EM task deleted");
        Ok(true)
    }

    /// Pending tasks by client, busiest first.
    pub fn pending(&self) -> Vec<Pending> {
        let map = locked(&self.by_id);
        let mut by: HashMap<&str, Pending> = HashMap::new();
        for t in map.values() {
            if locked(&t.state).1.is_none() {
                let p = by.entry(&t.owner).or_insert_with(|| Pending {
                    owner: t.owner.clone(),
                    count: 0,
                    oldest: Duration::ZERO,
                });
                p.count += 1;
                p.oldest = p.oldest.max(t.created.elapsed());
            }
        }
        let mut all: Vec<Pending> = by.into_values().collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then(a.owner.cmp(&b.owner)));
        all
    }
}

/// Marks a task whose following ended without its end (retention over,
/// the follower stopped) as lost, so it is never pending forever.
struct EndUnknown<'a> {
    task: &'a Task,
    doc: Bytes,
}

impl Drop for EndUnknown<'_> {
    fn drop(&mut self) {
        let mut state = locked(&self.task.state);
        if state.1.is_none() {
            *state = (self.doc.clone(), Some(Instant::now()));
        }
    }
}

/// Whether an EM document is a `Task`.
fn is_task(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    text.trim_start_matches('\u{feff}')
        .split('<')
        .find(|s| !s.starts_with('?') && !s.starts_with('!') && !s.trim().is_empty())
        .is_some_and(|root| root.starts_with("Task ") || root.starts_with("Task>"))
}

fn is_finished(doc: &[u8]) -> bool {
    element_text(doc, b"State").as_deref() == Some("Finished")
}

fn operation(task: &Task) -> String {
    element_text(&locked(&task.state).0, b"Operation").unwrap_or_default()
}

/// EM's task document with EM's id of it replaced by the gateway's.
fn rename(doc: &[u8], em_id: &str, id: &str) -> Bytes {
    let text = String::from_utf8_lossy(doc);
    Bytes::from(
        text.replace(
            &format!("/api/tasks/{em_id}\""),
            &format!("/api/tasks/{id}\""),
        )
        .replace(
            &format!("<TaskId>{em_id}</TaskId>"),
            &format!("<TaskId>{id}</TaskId>"),
        ),
    )
}

/// The end of a task whose session ended before it did.
fn lost(em_base: &str, id: &str, operation: &str) -> Bytes {
    let href = format!("{em_base}/api/tasks/{id}");
    Bytes::from(format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
         <Task xmlns=\"{NS}\" Type=\"Task\" Href=\"{href}\">\
         <Links><Link Rel=\"Delete\" Type=\"Task\" Href=\"{href}\"/></Links>\
         <TaskId>{id}</TaskId><State>Finished</State><Operation>{}</Operation>\
         <Result Success=\"false\"><Message>The Enterprise Manager session that ran this task \
         ended before the task finished (Enterprise Manager restarted, or the session was \
         logged out): its outcome is unknown. Check the job or restore in Enterprise \
         Manager.</Message></Result></Task>",
        escape(operation)
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// EM's `Tasks` list of the given task documents.
pub fn list_document(docs: &[Bytes]) -> Bytes {
    let mut out = format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><Tasks xmlns=\"{NS}\">");
    for d in docs {
        out.push_str(strip_prolog(d));
    }
    out.push_str("</Tasks>");
    Bytes::from(out)
}

/// EM's `QueryResult` for `type=Task`, the tasks under `Resources`.
pub fn query_document(docs: &[Bytes], em_base: &str) -> Bytes {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueryResult xmlns=\"{NS}\">\
         <Links><Link Rel=\"Alternate\" Type=\"QueryResult\" Href=\"{em_base}/api/query?type=Task\"/></Links>\
         <Resources><Tasks>"
    );
    for d in docs {
        out.push_str(strip_prolog(d));
    }
    out.push_str(&format!(
        "</Tasks></Resources><PagingInfo PageNum=\"1\" PageSize=\"{n}\" PagesCount=\"1\"/></QueryResult>",
        n = docs.len().max(1)
    ));
    Bytes::from(out)
}

fn strip_prolog(d: &[u8]) -> &str {
    let text = std::str::from_utf8(d).unwrap_or("");
    let text = text.trim_start_matches('\u{feff}').trim_start();
    match text.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map_or(text, |(_, r)| r.trim_start()),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &[u8] = b"<?xml version=\"1.0\"?><Task xmlns=\"http://www.veeam.com/ent/v1.0\" Type=\"Task\" Href=\"https://em:9398/api/tasks/task-1\"><Links><Link Rel=\"Delete\" Href=\"https://em:9398/api/tasks/task-1\"/></Links><TaskId>task-1</TaskId><State>Running</State><Operation>StartJob</Operation></Task>";

    #[test]
    fn a_task_is_renamed_everywhere_its_id_stands_and_nowhere_else() {
        assert!(is_task(DOC));
        assert!(!is_task(b"<Tasks xmlns=\"x\"/>"));
        assert!(!is_task(b"<Error Message=\"x\"/>"));
        let renamed = rename(DOC, "task-1", "task-abc");
        let text = std::str::from_utf8(&renamed).unwrap();
        assert!(!text.contains("task-1"), "{text}");
        assert_eq!(text.matches("task-abc").count(), 3, "{text}");
        // task-1 must not rename task-10.
        let ten = String::from_utf8_lossy(DOC).replace("task-1", "task-10");
        let text = String::from_utf8_lossy(&rename(ten.as_bytes(), "task-1", "task-x")).to_string();
        assert!(!text.contains("task-x"), "{text}");
        assert!(!is_finished(DOC));
        let lost = lost("https://em:9398", "task-x", "StartJob");
        assert!(is_task(&lost) && is_finished(&lost));
        assert_eq!(element_text(&lost, b"TaskId").as_deref(), Some("task-x"));
        let list = list_document(&[renamed.clone(), lost.clone()]);
        assert_eq!(String::from_utf8_lossy(&list).matches("<?xml").count(), 1);
    }

    #[test]
    fn a_panic_that_poisoned_the_locks_loses_no_task() {
        let tasks = Arc::new(Tasks::new(Duration::from_secs(60), None));
        let session = EmSession::from_shared(crate::em::session::SharedEmSession {
            token: crate::secret::Secret::new("token"),
            id: None,
            generation: 0,
        });
        let task = Arc::new(Task {
            owner: "dash".into(),
            em_id: "task-1".into(),
            session: session.clone(),
            created: Instant::now(),
            state: Mutex::new((Bytes::from_static(DOC), None)),
        });
        locked(&tasks.by_id).insert("task-abc".into(), task.clone());
        // A thread panics holding each lock: both are poisoned.
        let (t, t2) = (tasks.clone(), task.clone());
        let _ = std::thread::spawn(move || {
            let _map = t.by_id.lock();
            let _state = t2.state.lock();
            panic!("poisoning on purpose");
        })
        .join();
        assert!(tasks.by_id.is_poisoned() && task.state.is_poisoned());
        // Every answer about the task still knows it, and agrees.
        assert!(tasks.known("task-abc"));
        assert_eq!(tasks.local("dash", "task-abc").as_deref(), Some(DOC));
        assert_eq!(tasks.local("other", "task-abc"), None);
        assert!(tasks.session_needed(&session));
        assert_eq!(tasks.pending().len(), 1);
        assert_eq!(operation(&task), "StartJob");
    }
}
