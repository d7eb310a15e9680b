//! The fleet's background lane (see README, "Warm"): the places and the
//! rate of the background requests of every replica, counted in Redis.
//!
//! Two keys, neither with a Redis TTL (so a `volatile-*` eviction policy
//! never takes them), both read only by the scripts below:
//! - `bg:places`, a sorted set: one member per background request running
//!   in the fleet, scored by when its hold runs out. Expired members are
//!   removed before counting, so a replica that died holding places frees
//!   them when their hold runs out.
//! - `bg:rate`, the rate's theoretical arrival time (GCRA), in ms.
//!
//! Nothing here is served to anyone: a stranger who writes these keys can
//! only slow background work down or let more of it through, never change
//! an answer. Both are bounded against that: a member whose hold lies
//! further ahead than twice the longest hold, or an arrival time further
//! ahead than twice the burst, is taken for garbage and cleared.

use std::time::Duration;

use crate::em::background::{BudgetFuture, FleetBudget};

use super::Fleet;

/// KEYS: places, rate. ARGV: token, places, hold ms, interval ms (0: no
/// rate), burst ms. 1: taken; 0: no place; -1: over the rate.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local hold = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. (now + 2 * hold), '+inf')
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
local interval = tonumber(ARGV[4])
if interval > 0 then
  local burst = tonumber(ARGV[5])
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if tat < now or tat > now + 2 * burst then tat = now end
  local next = tat + interval
  if next - now > burst then return -1 end
  redis.call('SET', KEYS[2], tostring(next))
end
redis.call('ZADD', KEYS[1], now + hold, ARGV[1])
return 1
";

impl FleetBudget for Fleet {
    fn take<'a>(
        &'a self,
        token: &'a str,
        places: usize,
        rate: u32,
        hold: Duration,
    ) -> BudgetFuture<'a, Result<bool, ()>> {
        Box::pin(async move {
            static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(TAKE));
            let (k_places, k_rate) = (self.key("bg:places"), self.key("bg:rate"));
            // The rate's burst is one second's worth, as the local lane's.
            // At least 1 ms apart: a rate over 1,000 a second is 1,000.
            let interval = if rate == 0 {
                0
            } else {
                (1000 / u64::from(rate)).max(1)
            };
            let burst = 1000u64.max(interval);
            let hold_ms = hold.as_millis() as u64;
            let t = token.to_string();
            let taken: i64 = self
                .op("background", |mut c| async move {
                    script
                        .key(k_places)
                        .key(k_rate)
                        .arg(t)
                        .arg(places)
                        .arg(hold_ms)
                        .arg(interval)
                        .arg(burst)
                        .invoke_async(&mut c)
                        .await
                })
                .await
                .map_err(|_| ())?;
            Ok(taken == 1)
        })
    }

    fn give_back(&self, token: String) -> BudgetFuture<'static, ()> {
        let fleet = self.clone();
        Box::pin(async move {
            let key = fleet.key("bg:places");
            let _ = fleet
                .op("background", |mut c| async move {
                    redis::cmd("ZREM")
                        .arg(key)
                        .arg(token)
                        .query_async::<i64>(&mut c)
                        .await
                })
                .await;
        })
    }
}
