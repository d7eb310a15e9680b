//! The fleet's one EM session, kept sealed in Redis (the pooled session of
//! [`crate::em::session`] uses it through [`SessionStore`]).
//!
//! Keys: `em:session` (the sealed token and id), `em:gen` (its generation,
//! bumped by compare-and-set on every logon for the fleet), `l:em-logon` (the
//! right to log on for the fleet), `em:refusals`/`em:pause` (refused logons
//! in a row, across the fleet), `em:used` (someone used it within the
//! keep-alive period), `members` (heartbeats).

use std::time::Duration;

use crate::em::session::{LogonLease, SessionStore, SharedEmSession, StoreDown, StoreFuture};
use crate::secret::Secret;

use super::{Down, Event, Fleet};

/// How long a shared session is kept at most when nobody logs it out (EM
/// ends it after 15 idle minutes anyway; a later replica finds it dead,
/// checks, and logs on again).
const KEEP: Duration = Duration::from_secs(24 * 3600);

/// The fleet's EM session store.
pub struct EmSessionStore(pub Fleet);

impl From<Down> for StoreDown {
    fn from(_: Down) -> StoreDown {
        StoreDown
    }
}

/// The sealed form: the token and id together (the id, a GUID, is the token
/// in other clothes).
#[derive(serde::Serialize, serde::Deserialize)]
struct Plain {
    token: String,
    id: Option<String>,
}

impl EmSessionStore {
    fn context(generation: u64) -> String {
        format!("em-session generation {generation}")
    }

    async fn load_now(&self) -> Result<Option<SharedEmSession>, Down> {
        let f = &self.0;
        let (s, g) = (f.key("em:session"), f.key("em:gen"));
        let (sealed, generation): (Option<String>, Option<u64>) = f
            .op("em_load", |mut c| async move {
                redis::cmd("MGET").arg(s).arg(g).query_async(&mut c).await
            })
            .await?;
        let (Some(sealed), Some(generation)) = (sealed, generation) else {
            return Ok(None);
        };
        let Some(plain) = f.0.sealer.open(&sealed, &Self::context(generation)) else {
            tracing::warn!(
                "the fleet's EM session in Redis does not open with this replica's key \
                 (EMGATE_SHARED_SECRET or the EM credentials differ between replicas?)"
            );
            return Ok(None);
        };
        let Ok(plain) = serde_json::from_slice::<Plain>(&plain) else {
            return Ok(None);
        };
        Ok(Some(SharedEmSession {
            token: Secret::new(plain.token),
            id: plain.id,
            generation,
        }))
    }
}

impl SessionStore for EmSessionStore {
    fn load(&self) -> StoreFuture<'_, Option<SharedEmSession>> {
        Box::pin(async move { Ok(self.load_now().await?) })
    }

    fn lease(&self) -> StoreFuture<'_, Option<LogonLease>> {
        Box::pin(async move {
            let lease = self.0.try_lease("em-logon").await?;
            Ok(lease.map(|l| Box::new(l) as LogonLease))
        })
    }

    fn publish(
        &self,
        token: &Secret,
        id: Option<&str>,
        replacing: u64,
    ) -> StoreFuture<'_, Option<u64>> {
        let plain = serde_json::to_vec(&Plain {
            token: token.expose().to_string(),
            id: id.map(str::to_string),
        });
        Box::pin(async move {
            let f = &self.0;
            let generation = replacing + 1;
            let sealed = plain
                .ok()
                .and_then(|p| f.0.sealer.seal(&p, &Self::context(generation)))
                .ok_or(StoreDown)?;
            static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(PUBLISH));
            let keys = (f.key("em:session"), f.key("em:gen"));
            let (channel, message) = (f.0.channel.clone(), Event::Session.encode(&f.0.member));
            let keep = KEEP.as_millis() as u64;
            let got: i64 = f
                .op("em_publish", |mut c| async move {
                    script
                        .key(keys.0)
                        .key(keys.1)
                        .arg(sealed)
                        .arg(replacing)
                        .arg(keep)
                        .arg(channel)
                        .arg(message)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok((got > 0).then_some(got as u64))
        })
    }

    fn wait_newer(&self, after: u64, within: Duration) -> StoreFuture<'_, Option<SharedEmSession>> {
        Box::pin(async move {
            let mut events = self.0.events();
            let deadline = tokio::time::Instant::now() + within;
            loop {
                if let Some(s) = self.load_now().await? {
                    if s.generation != after {
                        return Ok(Some(s));
                    }
                }
                // Nobody holds the logon lease any more, and nothing new:
                // the replica that held it gave up or died.
                let lease = self.0.key("l:em-logon");
                let held: bool = self
                    .0
                    .op("exists", |mut c| async move {
                        redis::cmd("EXISTS").arg(lease).query_async(&mut c).await
                    })
                    .await?;
                if !held {
                    return Ok(None);
                }
                tokio::select! {
                    _ = events.recv() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = tokio::time::sleep_until(deadline) => return Ok(None),
                }
            }
        })
    }

    fn pause(&self) -> StoreFuture<'_, Option<(u32, Duration)>> {
        Box::pin(async move {
            let f = &self.0;
            let p = f.key("em:pause");
            let (refusals, ms): (Option<u32>, i64) = f
                .op("em_pause", |mut c| async move {
                    redis::pipe()
                        .cmd("GET")
                        .arg(&p)
                        .cmd("PTTL")
                        .arg(&p)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            Ok(refusals.map(|n| (n, Duration::from_millis(ms.max(0) as u64))))
        })
    }

    fn record(&self, refused: bool, pause: Duration) -> StoreFuture<'_, u32> {
        Box::pin(async move {
            static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(RECORD));
            let f = &self.0;
            let keys = (f.key("em:refusals"), f.key("em:pause"));
            let ms = pause.as_millis() as u64;
            let n: u32 = f
                .op("em_record", |mut c| async move {
                    script
                        .key(keys.0)
                        .key(keys.1)
                        .arg(u8::from(refused))
                        .arg(crate::em::session::REFUSALS_BEFORE_PAUSE)
                        .arg(ms)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(n)
        })
    }

    fn keepalive_due(&self, keepalive: Duration) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let key = self.0.key("em:used");
            let ms = keepalive.as_millis() as u64;
            let set: Option<String> = self
                .0
                .op("em_keepalive", |mut c| async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(1)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            Ok(set.is_some())
        })
    }

    fn used(&self, keepalive: Duration) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let key = self.0.key("em:used");
            let ms = keepalive.as_millis() as u64;
            self.0
                .op("em_used", |mut c| async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(1)
                        .arg("PX")
                        .arg(ms)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await?;
            Ok(())
        })
    }

    fn leave(&self) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(LEAVE));
            let f = &self.0;
            let key = f.key("members");
            let member = f.0.member.clone();
            let dead_after = (f.lease_time() * 3).as_millis() as u64;
            let others: u64 = f
                .op("leave", |mut c| async move {
                    script
                        .key(key)
                        .arg(member)
                        .arg(dead_after)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(others == 0)
        })
    }

    fn clear(&self, generation: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(CLEAR));
            let f = &self.0;
            let keys = (f.key("em:session"), f.key("em:gen"));
            let _: i64 = f
                .op("em_clear", |mut c| async move {
                    script
                        .key(keys.0)
                        .key(keys.1)
                        .arg(generation)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(())
        })
    }
}

/// The fleet's new session, if its generation is still ARGV[2].
/// KEYS: session, gen. ARGV: sealed, replacing, keep ms, channel, message.
const PUBLISH: &str = r"
local g = tonumber(redis.call('GET', KEYS[2]) or '0')
if g ~= tonumber(ARGV[2]) then return -1 end
g = g + 1
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], g)
redis.call('PUBLISH', ARGV[4], ARGV[5])
return g
";

/// A logon's outcome for the fleet: refusals counted (and logons paused
/// from ARGV[2] of them on), a success clears. KEYS: refusals, pause.
const RECORD: &str = r"
if ARGV[1] == '1' then
  local n = redis.call('INCR', KEYS[1])
  redis.call('PEXPIRE', KEYS[1], 3600000)
  if n >= tonumber(ARGV[2]) then
    redis.call('SET', KEYS[2], n, 'PX', ARGV[3])
  end
  return n
end
redis.call('DEL', KEYS[1], KEYS[2])
return 0
";

/// Leaves the members; how many others are alive.
const LEAVE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
";

/// Forgets the session if it is still of generation ARGV[1].
const CLEAR: &str = r"
if tonumber(redis.call('GET', KEYS[2]) or '0') == tonumber(ARGV[1]) then
  return redis.call('DEL', KEYS[1])
end
return 0
";
