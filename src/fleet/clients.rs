//! Client access for the fleet: gateway sessions (drop-in logons) that work
//! on every replica, and per-client rate limits that count for the fleet.
//!
//! Sessions are kept under a keyed hash of their token only (`cs:<name>`,
//! the name from [`Fleet::token_names`]: nobody without the fleet's secret
//! can compute the record of a token they chose), holding owner, id, the
//! end of their idle time (`exp`, Redis's clock) and a MAC over the record's
//! name, owner and id, so a record copied under another name or written by
//! hand is refused. An index per owner (`co:<hash of owner>`) serves
//! listing, deleting and the cap; `cs-exp` orders sessions by their end for
//! the sweep. None of these has a Redis expiry: an eviction policy never
//! ends a session, and `Fleet::sweep_sessions` removes the ones that ran
//! out. Rate limits are GCRA in a script, as Kong's Redis policy does: one
//! key per bucket holding its theoretical arrival time; a replica takes a
//! few requests' worth at a time (`gateway::limit`).

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
    fn session_key(&self, name: &str) -> String {
        self.key(&format!("cs:{name}"))
    }

    /// The marker of an ended session (by its record's name): a session
    /// logged out is never put back or recorded again under that name.
    fn ended_key(&self, name: &str) -> String {
        self.key(&format!("cs-end:{name}"))
    }

    fn owner_key(&self, owner: &str) -> String {
        let h = crate::digest::sha256_hex(owner.as_bytes());
        self.key(&format!("co:{}", &h[..32]))
    }

    /// The Redis names (hex) of a client token's record under each of the
    /// fleet's keys, the current one first.
    pub fn token_names(&self, token: &str) -> Vec<[u8; 32]> {
        self.0.keys.token_names(token)
    }

    fn session_mac(&self, key: &str, owner: &str, id: &str) -> Option<String> {
        self.0.keys.sign_hex(&[
            b"client-session",
            key.as_bytes(),
            owner.as_bytes(),
            id.as_bytes(),
        ])
    }

    /// Records a session (new, or put back after Redis lost it) under its
    /// token's `name` (hex); the owner's oldest go beyond `cap`. False if
    /// the session was logged out (its end is marked): it is not recorded.
    pub async fn session_create(
        &self,
        name: &str,
        owner: &str,
        id: &str,
        idle: Duration,
        cap: usize,
    ) -> Result<bool, Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(CREATE));
        let session_key = self.session_key(name);
        let mac = self.session_mac(&session_key, owner, id).ok_or(Down)?;
        let keys = (
            session_key,
            self.owner_key(owner),
            self.key("cs-exp"),
            self.ended_key(name),
        );
        let args = (
            owner.to_string(),
            id.to_string(),
            idle.as_millis() as u64,
            cap,
            format!("{id} {name}"),
            self.key("cs:"),
            mac,
        );
        let created: i64 = self
            .op("session_create", |mut c| async move {
                script
                    .key(keys.0)
                    .key(keys.1)
                    .key(keys.2)
                    .key(keys.3)
                    .arg(args.0)
                    .arg(args.1)
                    .arg(args.2)
                    .arg(args.3)
                    .arg(args.4)
                    .arg(args.5)
                    .arg(args.6)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(created == 1)
    }

    /// The session a token's record `name` (hex) stands for, its idle time
    /// restarted; `None` if there is none, it ran out, or it fails its MAC.
    pub async fn session_lookup(
        &self,
        name: &str,
        idle: Duration,
    ) -> Result<Option<SharedClientSession>, Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(LOOKUP));
        let session_key = self.session_key(name);
        let keys = (session_key.clone(), self.key("cs-exp"));
        let ms = idle.as_millis() as u64;
        let name = name.to_string();
        let (owner, id, mac): (Option<String>, Option<String>, Option<String>) = self
            .op("session_lookup", |mut c| async move {
                script
                    .key(keys.0)
                    .key(keys.1)
                    .arg(ms)
                    .arg(name)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let (Some(owner), Some(id)) = (owner, id) else {
            return Ok(None);
        };
        let valid = mac.is_some_and(|mac| {
            self.0.keys.verify_hex(
                &[
                    b"client-session",
                    session_key.as_bytes(),
                    owner.as_bytes(),
                    id.as_bytes(),
                ],
                &mac,
            )
        });
        if !valid {
            self.rejected("client_session", &session_key);
            return Ok(None);
        }
        Ok(Some(SharedClientSession { owner, id }))
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

    /// Ends `owner`'s session `id` everywhere, and marks its end (for
    /// twice the idle time) so no replica puts it back; the name of the
    /// session ended, if its record was found or this replica knew it
    /// (`known`, hex: Redis may have lost the record, restarted empty while
    /// a replica that has not heard yet still holds the session).
    pub async fn session_delete(
        &self,
        owner: &str,
        id: &str,
        known: Option<&str>,
        idle: Duration,
    ) -> Result<Option<String>, Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(DELETE));
        let keys = (self.owner_key(owner), self.key("cs-exp"));
        let args = (
            id.to_string(),
            self.key("cs:"),
            known.unwrap_or("").to_string(),
            self.key("cs-end:"),
            (idle * 2).as_millis() as u64,
        );
        let gone: Option<String> = self
            .op("session_delete", |mut c| async move {
                script
                    .key(keys.0)
                    .key(keys.1)
                    .arg(args.0)
                    .arg(args.1)
                    .arg(args.2)
                    .arg(args.3)
                    .arg(args.4)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if let Some(h) = &gone {
            self.publish(Event::Logout(h.clone())).await?;
        }
        Ok(gone)
    }

    /// Removes sessions whose idle time ran out (a few hundred per call).
    pub(crate) async fn sweep_sessions(&self) -> Result<(), Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(SWEEP));
        let (key, prefix) = (self.key("cs-exp"), self.key("cs:"));
        let _: i64 = self
            .op("session_sweep", |mut c| async move {
                script.key(key).arg(prefix).invoke_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    /// Up to `want` requests of `bucket` against `per_second` with bursts
    /// of `burst`, for the whole fleet: `Ok(n)`, how many may go ahead (at
    /// least one, at most `want`; counted for the fleet now), or
    /// `Err(wait)`, how long until the next one may.
    pub async fn rate(
        &self,
        bucket: &str,
        per_second: u32,
        burst: u32,
        want: u32,
    ) -> Result<Result<u32, Duration>, Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(GCRA));
        let h = crate::digest::sha256_hex(bucket.as_bytes());
        let key = self.key(&format!("rl:{}", &h[..32]));
        let emission_ms = 1000.0 / f64::from(per_second.max(1));
        let tolerance_ms = emission_ms * f64::from(burst.max(1).saturating_sub(1));
        let (granted, wait_ms): (i64, i64) = self
            .op("rate", |mut c| async move {
                script
                    .key(key)
                    .arg(emission_ms)
                    .arg(tolerance_ms)
                    .arg(want.max(1))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match u32::try_from(granted) {
            Ok(n) if n > 0 => Ok(n.min(want.max(1))),
            _ => Err(Duration::from_millis(wait_ms.max(1) as u64)),
        })
    }
}

/// KEYS: session, owner index, ends, end marker. ARGV: owner, id, idle ms,
/// cap, "id name", session key prefix, MAC. A session is live while its
/// `exp` (Redis's clock) is ahead; 0 (nothing done) if its end is marked.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local exp = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'id', ARGV[2], 'co', KEYS[2], 'exp', exp, 'mac', ARGV[7])
redis.call('ZADD', KEYS[3], exp, string.match(ARGV[5], ' (.+)$'))
redis.call('ZADD', KEYS[2], now, ARGV[5])
local live = {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local h = string.match(m, ' (.+)$')
  local e = h and tonumber(redis.call('HGET', ARGV[6] .. h, 'exp') or '0') or 0
  if e > now then
    table.insert(live, m)
  else
    redis.call('ZREM', KEYS[2], m)
  end
end
for i = 1, #live - tonumber(ARGV[4]) do
  local h = string.match(live[i], ' (.+)$')
  redis.call('DEL', ARGV[6] .. h)
  redis.call('ZREM', KEYS[3], h)
  redis.call('ZREM', KEYS[2], live[i])
end
return 1
";

/// KEYS: session, ends. ARGV: idle ms, name. A use restarts the idle time.
/// Owner, id and MAC of a live session (checked by the caller).
const LOOKUP: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local v = redis.call('HMGET', KEYS[1], 'owner', 'id', 'exp', 'mac')
if not v[1] or tonumber(v[3] or '0') <= now then return {false, false, false} end
local exp = now + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'exp', exp)
redis.call('ZADD', KEYS[2], exp, ARGV[2])
return {v[1], v[2], v[4]}
";

/// KEYS: owner index. ARGV: session key prefix. The ids of live sessions.
const LIST: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ids = {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local id, h = string.match(m, '^(.-) (.+)$')
  if h and tonumber(redis.call('HGET', ARGV[1] .. h, 'exp') or '0') > now then
    table.insert(ids, id)
  else
    redis.call('ZREM', KEYS[1], m)
  end
end
return ids
";

/// KEYS: owner index, ends. ARGV: id, session key prefix, the name the
/// caller knew ('' if none), end marker prefix, its life in ms. The name of
/// the session ended (found, or known), if any; its end is marked.
const DELETE: &str = r"
local name = false
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local id, h = string.match(m, '^(.-) (.+)$')
  if id == ARGV[1] then
    redis.call('ZREM', KEYS[1], m)
    redis.call('ZREM', KEYS[2], h)
    if redis.call('DEL', ARGV[2] .. h) == 1 then name = h end
    break
  end
end
if not name and ARGV[3] ~= '' then
  name = ARGV[3]
  redis.call('DEL', ARGV[2] .. name)
  redis.call('ZREM', KEYS[2], name)
end
if name then redis.call('SET', ARGV[4] .. name, '1', 'PX', ARGV[5]) end
if ARGV[3] ~= '' and ARGV[3] ~= name then
  redis.call('SET', ARGV[4] .. ARGV[3], '1', 'PX', ARGV[5])
end
return name
";

/// KEYS: ends. ARGV: session key prefix. Removes up to 500 sessions whose
/// idle time ran out, with their owner index entries.
const SWEEP: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 500)
for _, h in ipairs(gone) do
  local k = ARGV[1] .. h
  local v = redis.call('HMGET', k, 'co', 'id', 'exp')
  if tonumber(v[3] or '0') <= now then
    if v[1] and v[2] then redis.call('ZREM', v[1], v[2] .. ' ' .. h) end
    redis.call('DEL', k)
  end
  redis.call('ZREM', KEYS[1], h)
end
return #gone
";

/// GCRA for up to ARGV[3] requests at once (a replica's share, see
/// `gateway::limit`). KEYS: bucket. ARGV: emission interval ms, burst
/// tolerance ms, requests wanted (an older replica's script asks for one:
/// the key's value is the same).
/// `{n, 0}`: n requests (1 to wanted) may go ahead, counted now; `{0,
/// ms}`: none before ms. A stored value the script could not have written
/// (garbage, a time far ahead) is taken as none: the bucket is full, as
/// if a stranger had deleted it, rather than the client refused for good
/// or counted by each replica alone.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local T = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local want = tonumber(ARGV[3] or '1')
-- A value this script never wrote counts as none: not a number, or
-- further ahead than the burst and a share (at most half the burst) can
-- ever take it.
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now or tat > now + 2 * (tau + T) then tat = now end
local allow_at = tat - tau
if now < allow_at then return {0, math.ceil(allow_at - now)} end
local n = math.min(want, math.floor((now - allow_at) / T) + 1)
local new_tat = tat + n * T
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return {n, 0}
";
