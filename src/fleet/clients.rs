//! Client access for the fleet: gateway sessions (drop-in logons) that work
//! on every replica, and per-client rate limits that count for the fleet.
//!
//! Sessions are kept by the SHA-256 of their token only (`cs:<hash>`: owner
//! and id, expiring after the idle time, renewed when used), with an index
//! per owner (`co:<hash of owner>`) for listing, deleting and the cap. Rate
//! limits are GCRA in a script, as Kong's Redis policy does: one key per
//! bucket holding its theoretical arrival time.

use std::time::Duration;

use super::{Down, Event, Fleet};

/// A gateway session as the fleet knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedClientSession {
    /// Its owner.
    pub owner: String,
    /// Its id.
    pub id: String,
}

impl Fleet {
    fn session_key(&self, token_hash: &str) -> String {
        self.key(&format!("cs:{token_hash}"))
    }

    fn owner_key(&self, owner: &str) -> String {
        let h = crate::digest::sha256_hex(owner.as_bytes());
        self.key(&format!("co:{}", &h[..32]))
    }

    /// Records a new session; the owner's oldest go beyond `cap`.
    pub async fn session_create(
        &self,
        token_hash: &str,
        owner: &str,
        id: &str,
        idle: Duration,
        cap: usize,
    ) -> Result<(), Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(CREATE));
        let keys = (self.session_key(token_hash), self.owner_key(owner));
        let args = (
            owner.to_string(),
            id.to_string(),
            idle.as_millis() as u64,
            cap,
            format!("{id} {token_hash}"),
            self.key("cs:"),
        );
        let _: i64 = self
            .op("session_create", |mut c| async move {
                script
                    .key(keys.0)
                    .key(keys.1)
                    .arg(args.0)
                    .arg(args.1)
                    .arg(args.2)
                    .arg(args.3)
                    .arg(args.4)
                    .arg(args.5)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// The session a token hash stands for, its idle time restarted.
    pub async fn session_lookup(
        &self,
        token_hash: &str,
        idle: Duration,
    ) -> Result<Option<SharedClientSession>, Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(LOOKUP));
        let key = self.session_key(token_hash);
        let ms = idle.as_millis() as u64;
        let (owner, id): (Option<String>, Option<String>) = self
            .op("session_lookup", |mut c| async move {
                script.key(key).arg(ms).invoke_async(&mut c).await
            })
            .await?;
        Ok(match (owner, id) {
            (Some(owner), Some(id)) => Some(SharedClientSession { owner, id }),
            _ => None,
        })
    }

    /// The live sessions of `owner` (ids), oldest first.
    pub async fn session_list(&self, owner: &str) -> Result<Vec<String>, Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(LIST));
        let key = self.owner_key(owner);
        let prefix = self.key("cs:");
        self.op("session_list", |mut c| async move {
            script.key(key).arg(prefix).invoke_async(&mut c).await
        })
        .await
    }

    /// Ends `owner`'s session `id` everywhere; its token hash if there was one.
    pub async fn session_delete(&self, owner: &str, id: &str) -> Result<Option<String>, Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(DELETE));
        let key = self.owner_key(owner);
        let (id, prefix) = (id.to_string(), self.key("cs:"));
        let gone: Option<String> = self
            .op("session_delete", |mut c| async move {
                script
                    .key(key)
                    .arg(id)
                    .arg(prefix)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if let Some(h) = &gone {
            self.publish(Event::Logout(h.clone())).await?;
        }
        Ok(gone)
    }

    /// One request of `bucket` against `per_second` with bursts of `burst`,
    /// for the whole fleet: `None` to go ahead, or how long to wait.
    pub async fn rate(
        &self,
        bucket: &str,
        per_second: u32,
        burst: u32,
    ) -> Result<Option<Duration>, Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(GCRA));
        let h = crate::digest::sha256_hex(bucket.as_bytes());
        let key = self.key(&format!("rl:{}", &h[..32]));
        let emission_ms = 1000.0 / f64::from(per_second.max(1));
        let tolerance_ms = emission_ms * f64::from(burst.max(1).saturating_sub(1));
        let wait_ms: i64 = self
            .op("rate", |mut c| async move {
                script
                    .key(key)
                    .arg(emission_ms)
                    .arg(tolerance_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms as u64)))
    }
}

/// KEYS: session, owner index. ARGV: owner, id, idle ms, cap, "id hash",
/// session key prefix.
const CREATE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'id', ARGV[2], 'co', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local live = {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local h = string.match(m, ' (.+)$')
  if h and redis.call('EXISTS', ARGV[6] .. h) == 1 then
    table.insert(live, m)
  else
    redis.call('ZREM', KEYS[2], m)
  end
end
for i = 1, #live - tonumber(ARGV[4]) do
  local h = string.match(live[i], ' (.+)$')
  redis.call('DEL', ARGV[6] .. h)
  redis.call('ZREM', KEYS[2], live[i])
end
return 1
";

/// KEYS: session. ARGV: idle ms. A use renews the session and its
/// owner's index (named in the session, under the same hash tag), so the
/// index lives as long as the owner's most recently used session: a
/// logout must always find the session it ends.
const LOOKUP: &str = r"
local v = redis.call('HMGET', KEYS[1], 'owner', 'id', 'co')
if v[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  if v[3] then redis.call('PEXPIRE', v[3], ARGV[1]) end
end
return {v[1], v[2]}
";

/// KEYS: owner index. ARGV: session key prefix. The ids of live sessions.
const LIST: &str = r"
local ids = {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local id, h = string.match(m, '^(.-) (.+)$')
  if h and redis.call('EXISTS', ARGV[1] .. h) == 1 then
    table.insert(ids, id)
  else
    redis.call('ZREM', KEYS[1], m)
  end
end
return ids
";

/// KEYS: owner index. ARGV: id, session key prefix. The token hash, if any.
const DELETE: &str = r"
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local id, h = string.match(m, '^(.-) (.+)$')
  if id == ARGV[1] then
    redis.call('ZREM', KEYS[1], m)
    if redis.call('DEL', ARGV[2] .. h) == 1 then return h end
    return false
  end
end
return false
";

/// GCRA. KEYS: bucket. ARGV: emission interval ms, burst tolerance ms.
/// 0 to go ahead, else ms to wait.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local T = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tau
if now < allow_at then return math.ceil(allow_at - now) end
local new_tat = tat + T
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return 0
";
