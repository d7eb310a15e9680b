//! The fleet's one EM session, kept sealed in Redis (the pooled session of
//! [`crate::em::session`] uses it through [`SessionStore`]).
//!
//! Keys (none with a Redis expiry, so no eviction policy takes them):
//! `em:session` (`<generation>.<sealed token and id>`, the generation bound
//! into the seal), `em:gen` (the highest generation ever stored: it only
//! grows), `l:em-logon` (the right to log on for the fleet), `em:refusals`
//! (refused logons in a row, across the fleet) and `em:pause` (until when
//! logons pause, with a MAC), `em:used` (someone used the session within
//! the keep-alive period), `members` (heartbeats).
//!
//! The states of the fleet's EM session as a replica finds them, and what
//! it does (each edge has a test in `tests/fleet_trust.rs` or below):
//!
//! | `em:session` in Redis | a replica that needs a session | a replica that holds one (every few seconds) |
//! | --- | --- | --- |
//! | missing (first start, last member logged it out, flushed, evicted) | takes the logon lease, logs on, stores it as `em:gen + 1` | stores its own again as `em:gen + 1` (first holder wins) |
//! | valid, generation `g` ≥ the highest it saw | uses it | nothing if it is its own; else uses it after EM's next 401 |
//! | fails its seal (planted, another secret) | as missing, counted in `emgate_shared_rejected_total` | as missing: its own replaces it |
//! | valid but older than one it saw (rolled back) | as missing, counted | as missing: its own replaces it |
//! | someone holds the logon lease | waits for the new generation, at most the EM timeout; takes the lease when the holder is gone | — |
//!
//! Storing is a compare-and-set on the exact value the replica read, so of
//! two replicas that both found the session missing or bad only one stores;
//! the other uses what the first stored (and logs its own EM session out).
//! A rolled-back `em:gen` cannot bring back an old generation: a replica
//! never stores nor accepts a generation below the highest it has seen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::em::session::{LogonLease, SessionStore, SharedEmSession, StoreDown, StoreFuture};
use crate::secret::Secret;

use super::{unix_ms, Down, Event, Fleet};

/// The fleet's EM session store.
pub struct EmSessionStore {
    fleet: Fleet,
    /// The highest generation this replica has seen (stored or used).
    seen: AtomicU64,
}

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

/// What `em:session` and `em:gen` held at one moment.
struct Found {
    /// The raw value (for the compare-and-set), if any.
    raw: Option<String>,
    /// `em:gen`.
    counter: u64,
    /// The session, if the value opened and is not older than one seen.
    valid: Option<SharedEmSession>,
}

impl EmSessionStore {
    /// The store of `fleet`.
    pub fn new(fleet: Fleet) -> EmSessionStore {
        EmSessionStore {
            fleet,
            seen: AtomicU64::new(0),
        }
    }

    fn context(generation: u64) -> String {
        format!("em-session generation {generation}")
    }

    async fn read(&self) -> Result<Found, Down> {
        let f = &self.fleet;
        let (s, g) = (f.key("em:session"), f.key("em:gen"));
        let (raw, counter): (Option<String>, Option<String>) = f
            .op("em_load", |mut c| async move {
                redis::cmd("MGET").arg(s).arg(g).query_async(&mut c).await
            })
            .await?;
        let valid = raw.as_deref().and_then(|r| self.open(r));
        Ok(Found {
            raw,
            // Not a number: a stranger's, counted as none.
            counter: counter.and_then(|c| c.parse().ok()).unwrap_or(0),
            valid,
        })
    }

    /// The session a stored value holds, if it opens with the fleet's keys
    /// and is not older than the newest this replica has seen.
    fn open(&self, raw: &str) -> Option<SharedEmSession> {
        let f = &self.fleet;
        let key = f.key("em:session");
        let opened = raw.split_once('.').and_then(|(g, sealed)| {
            let generation: u64 = g.parse().ok()?;
            let plain = f.0.keys.open(sealed, &Self::context(generation))?;
            let plain: Plain = serde_json::from_slice(&plain).ok()?;
            Some((generation, plain))
        });
        let Some((generation, plain)) = opened else {
            f.rejected("em_session", &key);
            return None;
        };
        let seen = self.seen.fetch_max(generation, Ordering::AcqRel);
        if generation < seen {
            f.rejected("em_session_rolled_back", &key);
            return None;
        }
        Some(SharedEmSession {
            token: Secret::new(plain.token),
            id: plain.id,
            generation,
        })
    }

    /// `em:pause`'s value for a pause until `until_ms`: signed, so a pause
    /// nobody in the fleet decided stops nobody.
    fn pause_value(&self, until_ms: u64) -> Option<String> {
        let key = self.fleet.key("em:pause");
        let until = until_ms.to_string();
        let mac = self
            .fleet
            .0
            .keys
            .sign_hex(&[b"em-pause", key.as_bytes(), until.as_bytes()])?;
        Some(format!("{until}.{mac}"))
    }
}

impl SessionStore for EmSessionStore {
    fn load(&self) -> StoreFuture<'_, Option<SharedEmSession>> {
        Box::pin(async move { Ok(self.read().await?.valid) })
    }

    fn lease(&self) -> StoreFuture<'_, Option<LogonLease>> {
        Box::pin(async move {
            let lease = self.fleet.try_lease("em-logon").await?;
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
            let f = &self.fleet;
            let found = self.read().await?;
            // A valid session of another generation than the one replaced:
            // someone else's is the fleet's.
            if found
                .valid
                .as_ref()
                .is_some_and(|s| s.generation != replacing)
            {
                return Ok(None);
            }
            // Missing, bad, rolled back, or the one replaced: take its place
            // with a generation above every one seen.
            let raw_generation = found
                .raw
                .as_deref()
                .and_then(|r| r.split_once('.'))
                .and_then(|(g, _)| g.parse::<u64>().ok())
                .unwrap_or(0);
            // A generation Lua compares exactly (below 2^52): a counter
            // beyond that was written by a stranger and is not followed.
            const SANE: u64 = 1 << 52;
            let sane = |g: u64| if g < SANE { g } else { 0 };
            let generation = sane(found.counter)
                .max(sane(raw_generation))
                .max(sane(replacing))
                .max(sane(self.seen.load(Ordering::Acquire)))
                .saturating_add(1);
            let sealed = plain
                .ok()
                .and_then(|p| f.0.keys.seal(&p, &Self::context(generation)))
                .ok_or(StoreDown)?;
            let value = format!("{generation}.{sealed}");
            static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(PUBLISH));
            let keys = (f.key("em:session"), f.key("em:gen"));
            let (channel, message) = (f.0.channel.clone(), f.message(&Event::Session));
            let expected = found.raw.unwrap_or_default();
            let got: i64 = f
                .op("em_publish", |mut c| async move {
                    script
                        .key(keys.0)
                        .key(keys.1)
                        .arg(expected)
                        .arg(value)
                        .arg(generation)
                        .arg(channel)
                        .arg(message)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            if got > 0 {
                self.seen.fetch_max(generation, Ordering::AcqRel);
                return Ok(Some(generation));
            }
            Ok(None)
        })
    }

    fn wait_newer(&self, after: u64, within: Duration) -> StoreFuture<'_, Option<SharedEmSession>> {
        Box::pin(async move {
            let mut events = self.fleet.events();
            let deadline = tokio::time::Instant::now() + within;
            loop {
                if let Some(s) = self.read().await?.valid {
                    if s.generation != after {
                        return Ok(Some(s));
                    }
                }
                // Nobody holds the logon lease any more, and nothing new:
                // the replica that held it gave up or died.
                if !self.fleet.lease_held("em-logon").await? {
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
            let f = &self.fleet;
            let key = f.key("em:pause");
            let Some(value) = f.get_text("em_pause", &key).await? else {
                return Ok(None);
            };
            let until = value.split_once('.').and_then(|(until, mac)| {
                f.0.keys
                    .verify_hex(&[b"em-pause", key.as_bytes(), until.as_bytes()], mac)
                    .then(|| until.parse::<u64>().ok())
                    .flatten()
            });
            let Some(until) = until else {
                f.rejected("em_pause", &key);
                return Ok(None);
            };
            // Bounded by the pause itself, whatever the clock said.
            let left = Duration::from_millis(until.saturating_sub(unix_ms()))
                .min(crate::em::session::REFUSED_PAUSE);
            Ok((!left.is_zero()).then_some((crate::em::session::REFUSALS_BEFORE_PAUSE, left)))
        })
    }

    fn record(&self, refused: bool, pause: Duration) -> StoreFuture<'_, u32> {
        Box::pin(async move {
            static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(RECORD));
            let f = &self.fleet;
            let keys = (f.key("em:refusals"), f.key("em:pause"));
            let value = self
                .pause_value(unix_ms() + pause.as_millis() as u64)
                .ok_or(StoreDown)?;
            let n: u32 = f
                .op("em_record", |mut c| async move {
                    script
                        .key(keys.0)
                        .key(keys.1)
                        .arg(u8::from(refused))
                        .arg(crate::em::session::REFUSALS_BEFORE_PAUSE)
                        .arg(value)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(n)
        })
    }

    fn keepalive_due(&self, keepalive: Duration) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let key = self.fleet.key("em:used");
            let ms = keepalive.as_millis() as u64;
            let set: Option<String> = self
                .fleet
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
            let key = self.fleet.key("em:used");
            let ms = keepalive.as_millis() as u64;
            self.fleet
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
            let f = &self.fleet;
            let key = f.key("members");
            let member = f.0.member.clone();
            let dead_after = (f.lease_time() * 3).as_millis() as u64;
            // From here on no heartbeat adds this replica back.
            let mut member_still = f.0.membership.lock().await;
            *member_still = false;
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
            let f = &self.fleet;
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

/// The fleet's new session, if `em:session` still holds exactly what the
/// caller read (ARGV[1], empty for none) and no higher generation was
/// stored since (a counter at 2^52 or more, or not a number, is a
/// stranger's and ignored). KEYS: session, gen. ARGV: expected, value,
/// generation, channel, message.
const PUBLISH: &str = r"
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return -1 end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if cur < 4503599627370496 and cur >= tonumber(ARGV[3]) then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return tonumber(ARGV[3])
";

/// A logon's outcome for the fleet: refusals counted (and logons paused
/// from ARGV[2] of them on, with the signed value ARGV[3]), a success
/// clears. KEYS: refusals, pause.
const RECORD: &str = r"
if ARGV[1] == '1' then
  local n = redis.call('INCR', KEYS[1])
  redis.call('PEXPIRE', KEYS[1], 3600000)
  if n >= tonumber(ARGV[2]) then
    redis.call('SET', KEYS[2], ARGV[3])
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

/// Forgets the session if it is still of generation ARGV[1] (`em:gen`
/// stays: generations only grow).
const CLEAR: &str = r"
local v = redis.call('GET', KEYS[1])
if v and tonumber(string.match(v, '^(%d+)%.') or '-1') == tonumber(ARGV[1]) then
  return redis.call('DEL', KEYS[1])
end
return 0
";
