//! The shared cache tier: entries by key hash, one EM fetch per key for the
//! fleet under a lease, and the notice that an entry landed.
//!
//! The lease is Pingora's cache lock and Ledge's Redis lock, with the gap
//! closed that leaves Ledge's waiters sitting out a minute when the holder
//! dies: a script takes it when there is none or it ran out, a watchdog
//! renews it (compare-and-extend) while the fetch runs, a compare-and-delete
//! releases it. A holder that dies stops renewing, its lease runs out within
//! the lease time, and one waiter takes it over. Its states are named in
//! [`Waited`]. The lease's end is in its value (`token end-ms`, Redis's
//! clock), not a Redis TTL: an eviction policy may then never take it.
//!
//! Entries carry a MAC over their key name and bytes (`tag || bytes`); an
//! entry that fails it is a miss. Entries larger than the shared bound stay
//! on the replica that fetched them, and entries travel on the connection
//! for large values.
//!
//! A holder whose fetch fails (EM hanging past its timeout, EM down) says
//! so before it lets the lease go: a marker `f:<hash>` (the status and the
//! holder's lease token, for the lease time) and a notice. Waiters give
//! that failure to their clients instead of taking the lease over and
//! asking EM again: a hanging EM costs the fleet one EM timeout, not two.
//!
//! Purges: a fleet-wide epoch is bumped first, and an entry is stored only
//! if the epoch is still the one its fetch began under, so a purge during
//! a fetch wins on every replica.

use std::time::Duration;

use tokio::task::JoinHandle;

use super::keys::TAG_LEN;

/// How long a purge that could not reach Redis is retried.
pub const PURGE_RETRY_FOR: Duration = Duration::from_secs(600);
use super::{Down, Event, Fleet};

/// How a wait for another replica's fetch ended.
#[derive(Debug)]
pub enum Waited {
    /// The entry landed: its bytes.
    Landed(Vec<u8>),
    /// The lease is gone and nothing landed: the holder died or failed.
    HolderGone,
    /// The holder's entry (or its failure marker) landed, its notice came,
    /// but it was gone when this replica looked: Redis evicted it first (a Redis too small for what
    /// the fleet stores under its eviction policy: its LRU clock counts
    /// whole seconds, so under a flood a fresh entry is as likely to go as
    /// any). The bytes are nowhere to take, so the waiter fetches itself;
    /// counted as `emgate_fleet_landed_evicted_total`.
    Evicted,
    /// Still fetching after the bound.
    TimedOut,
    /// The holder's fetch failed a moment ago, with this status: the
    /// waiter fails too, rather than ask EM again.
    Failed(u16),
}

/// The right to fetch a key for the fleet; renewed while held, released
/// when dropped.
pub struct Lease {
    fleet: Fleet,
    /// The hash of the key it is for.
    hash: String,
    key: String,
    token: String,
    watchdog: Option<JoinHandle<()>>,
}

impl Lease {
    /// Whether it is still ours: renewals go on (they stop when Redis
    /// says another holds it, or it is gone, as after a flush).
    pub fn is_held(&self) -> bool {
        self.watchdog.as_ref().is_some_and(|w| !w.is_finished())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        let (fleet, key, token) = (self.fleet.clone(), self.key.clone(), self.token.clone());
        tokio::spawn(async move {
            let _ = fleet.release(&key, &token).await;
        });
    }
}

impl Fleet {
    /// The hash of a cache key (with what else separates representations,
    /// e.g. the JSON case): what names it in Redis.
    pub fn key_hash(key: &str) -> String {
        crate::digest::sha256_hex(key.as_bytes())[..32].to_string()
    }

    fn entry_key(&self, h: &str) -> String {
        self.key(&format!("e:{h}"))
    }

    fn lease_key(&self, h: &str) -> String {
        self.key(&format!("l:{h}"))
    }

    fn failure_key(&self, h: &str) -> String {
        self.key(&format!("f:{h}"))
    }

    /// Tells the fleet that the fetch `lease` was taken for failed with
    /// `status`: the marker lives for the lease time (waiters look at least
    /// that often), then a notice wakes them. Called before the lease is
    /// released, so a waiter that sees the lease gone sees the marker.
    pub async fn fetch_failed(&self, lease: &Lease, status: u16) -> Result<(), Down> {
        let key = self.failure_key(&lease.hash);
        let status = status.to_string();
        let mac = self
            .0
            .keys
            .sign_hex(&[
                b"fetch-failed",
                key.as_bytes(),
                status.as_bytes(),
                lease.token.as_bytes(),
            ])
            .ok_or(Down)?;
        let value = format!("{status} {} {mac}", lease.token);
        let ms = self.lease_time().as_millis().max(1) as u64;
        let _: () = self
            .op("failed", |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        self.publish(Event::Landed(lease.hash.clone())).await
    }

    /// The failure marker of `h`, as stored, if its MAC holds (a planted
    /// one must not fail anybody's request).
    async fn failure(&self, h: &str) -> Result<Option<String>, Down> {
        let key = self.failure_key(h);
        let Some(marker) = self.get_text("get", &key).await? else {
            return Ok(None);
        };
        let mut parts = marker.splitn(3, ' ');
        let (status, token, mac) = (parts.next(), parts.next(), parts.next());
        let valid = match (status, token, mac) {
            (Some(status), Some(token), Some(mac)) => self.0.keys.verify_hex(
                &[
                    b"fetch-failed",
                    key.as_bytes(),
                    status.as_bytes(),
                    token.as_bytes(),
                ],
                mac,
            ),
            _ => false,
        };
        if !valid {
            self.rejected("fetch_failed", &key);
            return Ok(None);
        }
        Ok(Some(marker))
    }

    /// The entry's bytes, if the fleet holds it and its MAC holds (a
    /// planted or altered entry is a miss, counted).
    pub async fn entry(&self, h: &str) -> Result<Option<Vec<u8>>, Down> {
        if self
            .0
            .pending_purges
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            return Ok(None);
        }
        let key = self.entry_key(h);
        let k = key.clone();
        let stored: Option<Vec<u8>> = self
            .bulk_op("get", self.0.timeout * 4, |mut c| async move {
                redis::cmd("GET").arg(k).query_async(&mut c).await
            })
            .await?;
        let Some(mut stored) = stored else {
            return Ok(None);
        };
        if stored.len() < TAG_LEN
            || !self.0.keys.verify(
                &[b"entry", key.as_bytes(), &stored[TAG_LEN..]],
                &stored[..TAG_LEN],
            )
        {
            self.rejected("entry", &key);
            return Ok(None);
        }
        stored.drain(..TAG_LEN);
        Ok(Some(stored))
    }

    /// The largest entry shared.
    pub fn max_entry(&self) -> usize {
        self.0.max_entry
    }

    /// The purge epoch a fetch begins under.
    pub async fn epoch(&self) -> Result<u64, Down> {
        let key = self.key("epoch");
        let v: Option<String> = self
            .op("epoch", |mut c| async move {
                redis::cmd("GET").arg(key).query_async(&mut c).await
            })
            .await?;
        // Read as text: a stranger's non-number is a bad value, not a
        // Redis that is down (the store script then refuses to store,
        // as after a purge, until a purge writes a number again).
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Takes the fetch lease of `h`, if nobody holds it.
    pub async fn try_lease(&self, h: &str) -> Result<Option<Lease>, Down> {
        let key = self.lease_key(h);
        let token = crate::digest::random_token(12)
            .map_err(|_| Down)?
            .expose()
            .to_string();
        let ms = self.lease_time().as_millis() as u64;
        let (k, t) = (key.clone(), token.clone());
        static TAKE_SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let take = TAKE_SCRIPT.get_or_init(|| redis::Script::new(TAKE));
        let won: i64 = self
            .op("lease", |mut c| async move {
                take.key(k).arg(t).arg(ms).invoke_async(&mut c).await
            })
            .await?;
        if won != 1 {
            return Ok(None);
        }
        // Renewed at a third of its life: two renewals may fail (or take the
        // timeout) before it runs out.
        let fleet = self.clone();
        let (k, t) = (key.clone(), token.clone());
        let watchdog = tokio::spawn(async move {
            let every = fleet.lease_time() / 3;
            loop {
                tokio::time::sleep(every).await;
                if let Ok(false) = fleet.renew(&k, &t).await {
                    break;
                }
            }
        });
        Ok(Some(Lease {
            fleet: self.clone(),
            hash: h.to_string(),
            key,
            token,
            watchdog: Some(watchdog),
        }))
    }

    /// Counts a lease taken over from a replica that stopped renewing it.
    pub fn took_over(&self) {
        self.0
            .takeovers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("emgate_fleet_lease_takeovers_total").increment(1);
    }

    /// Whether someone holds the lease `name` (a key hash, or `em-logon`).
    pub(crate) async fn lease_held(&self, name: &str) -> Result<bool, Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(HELD));
        let key = self.lease_key(name);
        let held: i64 = self
            .op("exists", |mut c| async move {
                script.key(key).invoke_async(&mut c).await
            })
            .await?;
        Ok(held == 1)
    }

    async fn renew(&self, key: &str, token: &str) -> Result<bool, Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(RENEW));
        let (k, t, ms) = (
            key.to_string(),
            token.to_string(),
            self.lease_time().as_millis() as u64,
        );
        let n: i64 = self
            .op("renew", |mut c| async move {
                script.key(k).arg(t).arg(ms).invoke_async(&mut c).await
            })
            .await?;
        Ok(n == 1)
    }

    async fn release(&self, key: &str, token: &str) -> Result<(), Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(RELEASE));
        let (k, t) = (key.to_string(), token.to_string());
        let _: i64 = self
            .op("release", |mut c| async move {
                script.key(k).arg(t).invoke_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    /// Stores the entry `lease` was taken for, for `lifetime` (its EM path
    /// kept for purges by prefix), and tells the fleet it landed; whether
    /// it was stored. Not stored when it is larger than the shared bound,
    /// when a purge came after `epoch`, or when the lease is no longer ours
    /// (we stalled past it and another replica took over: its answer is
    /// newer).
    pub async fn store(
        &self,
        lease: &Lease,
        path: &str,
        bytes: Vec<u8>,
        lifetime: Duration,
        epoch: u64,
    ) -> Result<bool, Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(STORE));
        if bytes.len() > self.0.max_entry {
            metrics::counter!("emgate_shared_not_shared_total").increment(1);
            return Ok(false);
        }
        let h = lease.hash.as_str();
        let entry_key = self.entry_key(h);
        let Some(tag) = self.0.keys.sign(&[b"entry", entry_key.as_bytes(), &bytes]) else {
            return Ok(false);
        };
        let mut value = Vec::with_capacity(TAG_LEN + bytes.len());
        value.extend_from_slice(&tag);
        value.extend_from_slice(&bytes);
        // Time to move the bytes, on top of the usual bound.
        let timeout = self.0.timeout + Duration::from_millis(value.len() as u64 / 32_000);
        let keys = (
            entry_key,
            self.key("epoch"),
            self.key("idx"),
            lease.key.clone(),
        );
        let token = lease.token.clone();
        let entry_prefix = self.key("e:");
        let channel = self.0.channel.clone();
        let message = self.message(&Event::Landed(h.to_string()));
        let member = format!("{h} {path}");
        let ms = lifetime.as_millis().max(1) as u64;
        let stored: i64 = self
            .bulk_op("store", timeout, |mut c| async move {
                script
                    .key(keys.0)
                    .key(keys.1)
                    .key(keys.2)
                    .key(keys.3)
                    .arg(value)
                    .arg(ms)
                    .arg(epoch)
                    .arg(member)
                    .arg(channel)
                    .arg(message)
                    .arg(token)
                    .arg(entry_prefix)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(stored == 1)
    }

    /// Waits (at most `within`) for another replica's fetch of `h` to land:
    /// an entry other than `known` (the stale one the caller already has).
    /// Subscribed first, checked after: a notice sent in between is not
    /// missed; and the lease is looked at now and then, since a holder that
    /// died sends none.
    pub async fn wait_landed(
        &self,
        h: &str,
        within: Duration,
        known: Option<&[u8]>,
    ) -> Result<Waited, Down> {
        let mut landed = self.landed();
        let new = |b: Option<Vec<u8>>| b.filter(|b| Some(b.as_slice()) != known);
        if let Some(bytes) = new(self.entry(h).await?) {
            return Ok(Waited::Landed(bytes));
        }
        // A failure from before this wait is not the fetch being waited for.
        let earlier = self.failure(h).await?;
        let failed = |marker: Option<String>| {
            marker
                .filter(|m| Some(m) != earlier.as_ref())
                .and_then(|m| m.split(' ').next()?.parse::<u16>().ok())
                .map(Waited::Failed)
        };
        let deadline = tokio::time::Instant::now() + within;
        // One clock for the lease checks: notices of other keys (a busy
        // fleet has many) must not keep putting the check off.
        let mut check = tokio::time::interval_at(
            tokio::time::Instant::now() + self.lease_time() / 5,
            (self.lease_time() / 5).max(Duration::from_millis(100)),
        );
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                notice = landed.recv() => match notice {
                    Ok(x) if x == h => {
                        if let Some(bytes) = new(self.entry(h).await?) {
                            return Ok(Waited::Landed(bytes));
                        }
                        if let Some(f) = failed(self.failure(h).await?) {
                            return Ok(f);
                        }
                        // Landed (the notice is sent by the store itself),
                        // and gone already.
                        metrics::counter!("emgate_fleet_landed_evicted_total").increment(1);
                        return Ok(Waited::Evicted);
                    }
                    Ok(_) => {}
                    // Missed notices, ours perhaps: look.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(bytes) = new(self.entry(h).await?) {
                            return Ok(Waited::Landed(bytes));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep_until(deadline).await;
                        return Ok(Waited::TimedOut);
                    }
                },
                _ = check.tick() => {
                    let held = self.lease_held(h).await?;
                    if let Some(bytes) = new(self.entry(h).await?) {
                        return Ok(Waited::Landed(bytes));
                    }
                    if !held {
                        return Ok(failed(self.failure(h).await?).unwrap_or(Waited::HolderGone));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Ok(failed(self.failure(h).await?).unwrap_or(Waited::TimedOut));
                }
            }
        }
    }

    /// Drops every shared entry, and tells every replica to drop theirs.
    pub async fn purge_all(&self) -> Result<(), Down> {
        self.purge_paths(|_| true, Event::PurgeAll).await
    }

    /// Drops the shared entries whose EM path is `prefix` or under it
    /// (lowercase, compared at a segment boundary), and tells every replica.
    pub async fn purge_prefix(&self, prefix: &str) -> Result<(), Down> {
        let p = prefix.trim_end_matches('/').to_ascii_lowercase();
        let under = move |path: &str| {
            path.to_ascii_lowercase()
                .strip_prefix(p.as_str())
                .is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')
                })
        };
        self.purge_paths(under, Event::PurgePrefix(prefix.to_string()))
            .await
    }

    /// Drops the shared entries whose EM path `matches`, and tells every
    /// replica `event` (what to drop of theirs).
    ///
    /// A purge that cannot reach Redis is `Err(Down)`, and is retried in
    /// the background until it lands (at most [`PURGE_RETRY_FOR`]); until
    /// then this replica takes nothing from the shared tier, which may
    /// still hold what was purged.
    pub async fn purge_paths(
        &self,
        matches: impl Fn(&str) -> bool + Send + Sync + 'static,
        event: Event,
    ) -> Result<(), Down> {
        let first = async {
            self.purge_matching(&matches).await?;
            self.publish(event.clone()).await
        }
        .await;
        if first.is_err() {
            use std::sync::atomic::Ordering;
            tracing::warn!(
                "the shared tier is down: purged on this replica only; retrying for the fleet"
            );
            self.0.pending_purges.fetch_add(1, Ordering::AcqRel);
            let fleet = self.clone();
            tokio::spawn(async move {
                let until = tokio::time::Instant::now() + PURGE_RETRY_FOR;
                while tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if fleet.purge_matching(&matches).await.is_ok()
                        && fleet.publish(event.clone()).await.is_ok()
                    {
                        tracing::info!("a purge reached the fleet");
                        break;
                    }
                }
                fleet.0.pending_purges.fetch_sub(1, Ordering::AcqRel);
            });
        }
        first
    }

    async fn purge_matching(&self, matches: &impl Fn(&str) -> bool) -> Result<(), Down> {
        // The epoch first: a fetch that began before it stores nothing.
        let epoch = self.key("epoch");
        let _: u64 = self
            .op("purge", |mut c| async move {
                redis::cmd("INCR").arg(epoch).query_async(&mut c).await
            })
            .await?;
        let idx = self.key("idx");
        let i = idx.clone();
        let members: Vec<String> = self
            .op("purge", |mut c| async move {
                redis::cmd("ZRANGE")
                    .arg(i)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let doomed: Vec<&String> = members
            .iter()
            .filter(|m| m.split_once(' ').is_some_and(|(_, path)| matches(path)))
            .collect();
        for chunk in doomed.chunks(256) {
            let keys: Vec<String> = chunk
                .iter()
                .filter_map(|m| m.split_once(' ').map(|(h, _)| self.entry_key(h)))
                .collect();
            let members: Vec<String> = chunk.iter().map(|m| (*m).clone()).collect();
            let i = idx.clone();
            let _: () = self
                .op("purge", |mut c| async move {
                    redis::pipe()
                        .cmd("DEL")
                        .arg(keys)
                        .ignore()
                        .cmd("ZREM")
                        .arg(i)
                        .arg(members)
                        .ignore()
                        .query_async(&mut c)
                        .await
                })
                .await?;
        }
        Ok(())
    }
}

/// Takes a lease (`token end-ms`) if there is none or it ran out.
/// KEYS: lease. ARGV: token, lifetime ms.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local v = redis.call('GET', KEYS[1])
if v and tonumber(string.match(v, ' (%d+)$') or '0') > now then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. (now + tonumber(ARGV[2])))
return 1
";

/// Whether a lease is held and has not run out. KEYS: lease.
const HELD: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local v = redis.call('GET', KEYS[1])
if v and tonumber(string.match(v, ' (%d+)$') or '0') > now then return 1 end
return 0
";

/// Renews a lease if it is still ours. KEYS: lease. ARGV: token, ms.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.match(v, '^(%S+) ') == ARGV[1] then
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. (now + tonumber(ARGV[2])))
  return 1
end
return 0
";

/// Releases a lease if it is still ours (a slow holder never deletes a
/// lease someone else has since taken).
const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.match(v, '^(%S+) ') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Stores an entry unless the purge epoch moved since the fetch began or
/// the lease is no longer the caller's; indexes its path (expiring with it)
/// (no expiry on the index: a purge must find every entry; each store
/// drops a few index members whose entry Redis evicted, so the index keeps
/// to the entries that live) and announces it.
/// KEYS: entry, epoch, index, lease. ARGV: bytes, ms, epoch, "hash path",
/// channel, message, lease token, entry key prefix.
const STORE: &str = r"
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0')
if epoch ~= tonumber(ARGV[3]) then return 0 end
if string.match(redis.call('GET', KEYS[4]) or '', '^(%S+) ') ~= ARGV[7] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, 3)) do
  local h = string.match(m, '^(%S+) ')
  if h and redis.call('EXISTS', ARGV[8] .. h) == 0 then redis.call('ZREM', KEYS[3], m) end
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
";
