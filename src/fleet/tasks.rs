//! Clients' EM tasks in the shared tier, so the owner follows a task on any
//! replica, also after the replica that started it died (README, "Writes
//! and EM's tasks").
//!
//! Keys: `t:<task id>` (owner, EM's id of it, EM's last answer, whether it
//! ended, and the EM session that made it **sealed**, with a MAC over all
//! of it and the key name), `to:<first 128 bits of the sha256 of the
//! owner>` (the owner's task ids), `l:task-<task id>` (the lease of the
//! replica following it). Records expire after the task retention (plus
//! the time a task may run); they are data a client may look at, not
//! something that grants access, so eviction may take them under memory
//! pressure (the owner then gets 404).

use std::time::Duration;

use crate::em::session::SharedEmSession;
use crate::secret::Secret;

use super::{Down, Fleet};

/// A task as the fleet keeps it.
pub struct SharedTask {
    /// Its owner.
    pub owner: String,
    /// EM's id of it in the session that made it.
    pub em_id: String,
    /// EM's last answer about it (the gateway's id in it).
    pub doc: String,
    /// Whether it ended.
    pub finished: bool,
    /// The session that made it.
    pub session: SharedEmSession,
}

/// The stored form (the session sealed).
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    owner: String,
    em_id: String,
    doc: String,
    finished: bool,
    generation: u64,
    sealed: String,
}

/// The sealed part.
#[derive(serde::Serialize, serde::Deserialize)]
struct Session {
    token: String,
    id: Option<String>,
}

impl Fleet {
    fn task_key(&self, id: &str) -> String {
        self.key(&format!("t:{id}"))
    }

    fn task_owner_key(&self, owner: &str) -> String {
        let h = crate::digest::sha256_hex(owner.as_bytes());
        self.key(&format!("to:{}", &h[..32]))
    }

    /// Stores task `id` for `keep`, and lists it under its owner. An
    /// update (`create` false) only replaces a record that is still there:
    /// a task its owner deleted on another replica does not come back.
    pub async fn task_put(
        &self,
        id: &str,
        t: &SharedTask,
        keep: Duration,
        create: bool,
    ) -> Result<(), Down> {
        let key = self.task_key(id);
        let session = serde_json::to_vec(&Session {
            token: t.session.token.expose().to_string(),
            id: t.session.id.clone(),
        })
        .map_err(|_| Down)?;
        let sealed = self
            .0
            .keys
            .seal(&session, &format!("task {key}"))
            .ok_or(Down)?;
        let json = serde_json::to_string(&Stored {
            owner: t.owner.clone(),
            em_id: t.em_id.clone(),
            doc: t.doc.clone(),
            finished: t.finished,
            generation: t.session.generation,
            sealed,
        })
        .map_err(|_| Down)?;
        let mac = self
            .0
            .keys
            .sign_hex(&[b"task", key.as_bytes(), json.as_bytes()])
            .ok_or(Down)?;
        let value = format!("{mac} {json}");
        let owner_key = self.task_owner_key(&t.owner);
        let ms = keep.as_millis().max(1) as u64;
        let id = id.to_string();
        self.op("task_put", |mut c| async move {
            let mut pipe = redis::pipe();
            pipe.cmd("SET").arg(&key).arg(value).arg("PX").arg(ms);
            if create {
                pipe.ignore()
                    .cmd("SADD")
                    .arg(&owner_key)
                    .arg(id)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&owner_key)
                    .arg(ms)
                    .ignore();
            } else {
                pipe.arg("XX").ignore();
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    /// Task `id`, if the fleet holds it and its MAC holds.
    pub async fn task_get(&self, id: &str) -> Result<Option<SharedTask>, Down> {
        let key = self.task_key(id);
        let Some(value) = self.get_text("task_get", &key).await? else {
            return Ok(None);
        };
        let opened = value.split_once(' ').and_then(|(mac, json)| {
            if !self
                .0
                .keys
                .verify_hex(&[b"task", key.as_bytes(), json.as_bytes()], mac)
            {
                return None;
            }
            let stored: Stored = serde_json::from_str(json).ok()?;
            let session = self.0.keys.open(&stored.sealed, &format!("task {key}"))?;
            let session: Session = serde_json::from_slice(&session).ok()?;
            Some(SharedTask {
                owner: stored.owner,
                em_id: stored.em_id,
                doc: stored.doc,
                finished: stored.finished,
                session: SharedEmSession {
                    token: Secret::new(session.token),
                    id: session.id,
                    generation: stored.generation,
                },
            })
        });
        if opened.is_none() {
            self.rejected("task", &key);
        }
        Ok(opened)
    }

    /// The ids of `owner`'s tasks the fleet lists.
    pub async fn task_ids(&self, owner: &str) -> Result<Vec<String>, Down> {
        let key = self.task_owner_key(owner);
        self.op("task_ids", |mut c| async move {
            redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await
        })
        .await
    }

    /// Forgets `owner`'s task `id`.
    pub async fn task_delete(&self, owner: &str, id: &str) -> Result<(), Down> {
        let (key, owner_key, id) = (
            self.task_key(id),
            self.task_owner_key(owner),
            id.to_string(),
        );
        self.op("task_delete", |mut c| async move {
            redis::pipe()
                .cmd("DEL")
                .arg(key)
                .ignore()
                .cmd("SREM")
                .arg(owner_key)
                .arg(id)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }
}
