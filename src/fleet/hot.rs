//! The fleet's hot keys (see README, "Warm"): what a replica that starts
//! (or the whole fleet, restarted) fetches before its clients ask.
//!
//! One sorted set, `hot`. Every replica adds its hot keys every minute,
//! scored by the minute it saw them hot and then by their hits a minute, so the
//! newest come first and a key nobody reads any more sinks; the set is
//! trimmed to the bound after each addition. A member is a cache key and
//! its MAC (bound to the set's name): a member that fails it is skipped and
//! logged, never fetched. The set has a Redis TTL (an hour past its last
//! write), like a cache entry: it is a hint, and under memory pressure it
//! may go before anything that matters.

use std::time::{Duration, SystemTime};

use super::{Down, Fleet};

/// Hits counted in a score, at most (the rest of the score is the minute).
const HITS_SPAN: u64 = 1_000_000;

/// How long the set outlives its last write.
const KEEP: Duration = Duration::from_secs(3600);

impl Fleet {
    fn hot_key(&self) -> String {
        self.key("hot")
    }

    fn hot_mac(&self, set: &str, key: &str) -> Option<String> {
        self.0
            .keys
            .sign_hex(&[b"hot-key", set.as_bytes(), key.as_bytes()])
    }

    /// Adds this replica's hot `keys` (with their hits) to the fleet's,
    /// keeping at most `limit`.
    pub async fn add_hot_keys(&self, keys: &[(String, u64)], limit: usize) -> Result<(), Down> {
        if keys.is_empty() {
            return Ok(());
        }
        let set = self.hot_key();
        let minute = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 60);
        let mut cmd = redis::pipe();
        cmd.atomic();
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&set);
        for (key, hits) in keys {
            let mac = self.hot_mac(&set, key).ok_or(Down)?;
            let score = minute * HITS_SPAN + (*hits).min(HITS_SPAN - 1);
            zadd.arg(score).arg(format!("{key} {mac}"));
        }
        cmd.add_command(zadd).ignore();
        // Keep the `limit` highest.
        cmd.cmd("ZREMRANGEBYRANK")
            .arg(&set)
            .arg(0)
            .arg(-(limit as i64) - 1)
            .ignore();
        cmd.cmd("PEXPIRE")
            .arg(&set)
            .arg(KEEP.as_millis() as u64)
            .ignore();
        self.bulk_op("hot_keys", self.0.timeout * 4, |mut c| async move {
            cmd.query_async::<()>(&mut c).await
        })
        .await
    }

    /// The fleet's hot keys, hottest first, at most `limit`; members whose
    /// MAC fails are left out (and logged).
    pub async fn hot_keys(&self, limit: usize) -> Result<Vec<String>, Down> {
        let set = self.hot_key();
        let s = set.clone();
        let members: Vec<String> = self
            .bulk_op("hot_keys", self.0.timeout * 4, |mut c| async move {
                redis::cmd("ZREVRANGE")
                    .arg(s)
                    .arg(0)
                    .arg(limit.saturating_sub(1))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut keys = Vec::with_capacity(members.len());
        for member in members {
            let valid = member.rsplit_once(' ').and_then(|(key, mac)| {
                self.0
                    .keys
                    .verify_hex(&[b"hot-key", set.as_bytes(), key.as_bytes()], mac)
                    .then(|| key.to_string())
            });
            match valid {
                Some(key) => keys.push(key),
                None => self.rejected("hot_key", &set),
            }
        }
        Ok(keys)
    }
}
