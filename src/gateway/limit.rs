//! Per-client rate limiting: a token bucket per client (its name, or the
//! peer address of an anonymous caller), answered with 429 and `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::cache::KeyHasher;

/// Who a bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// A named client (or the owner of a gateway session).
    Client(Arc<str>),
    /// An anonymous caller (or a logon attempt), by address.
    Address(IpAddr),
}

impl Bucket {
    /// The bucket's name in the fleet's shared tier.
    fn shared_name(&self) -> String {
        match self {
            Bucket::Client(c) => format!("client {c}"),
            Bucket::Address(a) => format!("address {a}"),
        }
    }
}

/// Keyed token buckets; `None` when rate limiting is off. In fleet mode the
/// fleet counts (GCRA in the shared tier), so a client's limit holds over
/// requests spread across replicas; with the shared tier unreachable, each
/// replica counts alone.
///
/// A replica does not ask the fleet for every request: it takes a share
/// of a bucket's allowance at once (`share_size`: 25 ms of the rate, at
/// least one request, at most half the burst), counted for the fleet when
/// taken, and lets that many requests through on its own for
/// `SHARE_LIFE`; what is left then is dropped. So a busy client's hits
/// make one round trip to Redis per share instead of one each (each took
/// a round trip, and a fleet with limits on served hits at 0.39x the
/// rate: BENCHMARKS.md, "twenty-first steps"), and the limit still holds
/// for the fleet: what a replica lets through was counted before, and the
/// most a share can add to a moment's burst is itself, a share per
/// replica (taken earlier, spent later). Shares left unspent make the
/// fleet refuse a little early instead, never late.
///
/// A bucket's share, on one replica:
///
/// | state | a request | then |
/// | --- | --- | --- |
/// | none, or spent, or past its life | takes the next share (a round trip for `share_size`) | taking |
/// | taking | asks the fleet for itself alone (one request, as without shares) | taking |
/// | taking, the fleet grants n | goes ahead | live: n - 1 left for 250 ms |
/// | taking, refused, Redis down, or the client gone | refused with the fleet's wait / counted locally / nothing | none (the next request takes it) |
/// | live, some left | goes ahead, no round trip | live, one less |
///
/// The map of buckets a mode uses (governor's; in fleet mode the shares,
/// and governor's while Redis is down) is looked up on every request while
/// a limit is on, hits included, so both hash with the cache's
/// [`KeyHasher`]: a fraction of SipHash's price (BENCHMARKS.md,
/// "twenty-second steps"), and a random seed, as for the cache's keys.
/// Names are the operator's; an address can be varied (an IPv6 /64), but
/// its hash never leaves the process, so colliding ones cannot be chosen.
pub struct ClientLimits {
    /// The buckets.
    limiter:
        Option<DefaultKeyedRateLimiter<Bucket, governor::middleware::NoOpMiddleware, KeyHasher>>,
    /// The limiter's clock, to turn "not until" into a wait.
    clock: DefaultClock,
    /// Rate and burst, for the fleet's count.
    quota: (u32, u32),
    /// The fleet, in fleet mode.
    fleet: Option<crate::fleet::Fleet>,
    /// Fleet mode: what this replica took of each bucket and has not spent.
    shares: Mutex<HashMap<Bucket, Share, KeyHasher>>,
}

/// Requests a replica may let through on its own, until `until`.
struct Share {
    left: u32,
    until: Instant,
    /// A request is taking the next share from the fleet.
    taking: bool,
}

/// What [`ClientLimits::spend_or_take`] found.
enum Spend<'a> {
    /// A request of the share was let through.
    Spent,
    /// None left: the fleet must be asked, for the next share (`Some`: this
    /// request takes it) or for this request alone.
    Take(Option<Taking<'a>>),
}

/// The right to take a bucket's next share; given back when dropped,
/// whether the share came (`keep`) or not (Redis down, the client gone
/// meanwhile), so the next request may take it.
struct Taking<'a> {
    limits: &'a ClientLimits,
    bucket: Bucket,
    /// The share came and was kept (which gave the right back with it).
    kept: bool,
}

impl Taking<'_> {
    fn keep(mut self, left: u32) {
        self.limits.keep_share(&self.bucket, left);
        // Given back with the share, under the same lock: from here on
        // another request may be taking the next one, and this must not
        // touch its flag.
        self.kept = true;
    }
}

impl Drop for Taking<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Some(share) = crate::ops::locked(&self.limits.shares).get_mut(&self.bucket) {
            share.taking = false;
        }
    }
}

/// How long a share taken from the fleet may be spent.
const SHARE_LIFE: Duration = Duration::from_millis(250);

/// Requests one share holds at most: 25 ms of the rate (a fortieth of
/// `per_second`), at least one, at most half the burst.
fn share_size(per_second: u32, burst: u32) -> u32 {
    (per_second / 40).clamp(1, (burst / 2).max(1))
}

impl ClientLimits {
    /// `per_second` requests a second per client, bursts of `burst` (0: a second's worth); 0 turns limiting off.
    pub fn new(per_second: u32, burst: u32) -> ClientLimits {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::dashmap_with_hasher(
                Quota::per_second(rate).allow_burst(burst),
                KeyHasher::default(),
            )
        });
        ClientLimits {
            limiter,
            clock: DefaultClock::default(),
            quota: (per_second, if burst == 0 { per_second } else { burst }),
            fleet: None,
            shares: Mutex::default(),
        }
    }

    /// Counts for the fleet.
    pub fn with_fleet(mut self, fleet: Option<crate::fleet::Fleet>) -> ClientLimits {
        self.fleet = fleet;
        self
    }

    /// `Ok` to go ahead, or how long to wait before the next request will
    /// be let through (for the fleet, in fleet mode). The bucket is made
    /// only when a limit is on (most gateways have none).
    pub async fn check_shared(&self, bucket: impl FnOnce() -> Bucket) -> Result<(), Duration> {
        if self.limiter.is_none() {
            return Ok(());
        }
        let bucket = &bucket();
        if let Some(fleet) = &self.fleet {
            let taking = match self.spend_or_take(bucket) {
                Spend::Spent => return Ok(()),
                Spend::Take(taking) => taking,
            };
            let (per_second, burst) = self.quota;
            // One share at a time per bucket: a request that comes while
            // another takes one asks for itself alone. (Concurrent requests
            // that each took a share would count many for the fleet, and
            // this replica would keep one.)
            let want = match taking {
                Some(_) => share_size(per_second, burst),
                None => 1,
            };
            // Boxed: a round trip to Redis anyway, and inline its future
            // would be part of every full-path request's, fleet or not.
            let name = bucket.shared_name();
            match Box::pin(fleet.rate(&name, per_second, burst, want)).await {
                Ok(Ok(granted)) => {
                    // This request is one of them; the rest are the share.
                    if let Some(taking) = taking {
                        taking.keep(granted - 1);
                    }
                    return Ok(());
                }
                Ok(Err(wait)) => return Err(wait),
                // The shared tier is down: this replica counts alone.
                Err(_) => {}
            }
        }
        self.check(bucket)
    }

    /// [`ClientLimits::check_shared`] when it needs no round trip: no
    /// limit, no fleet to count with, or a share of the fleet's left for
    /// the bucket. `None` when the fleet must be asked.
    pub fn check_now(&self, bucket: impl FnOnce() -> Bucket) -> Option<Result<(), Duration>> {
        match (&self.limiter, &self.fleet) {
            (None, _) => Some(Ok(())),
            (Some(_), None) => Some(self.check(&bucket())),
            (Some(_), Some(_)) => self.spend_share(&bucket()).then_some(Ok(())),
        }
    }

    /// Lets one request of `bucket` through on this replica's share, if
    /// one is left and live.
    fn spend_share(&self, bucket: &Bucket) -> bool {
        matches!(self.spend(bucket, false), Spend::Spent)
    }

    /// [`ClientLimits::spend_share`], or else the right to take the next
    /// share (`None` if another request is taking it).
    fn spend_or_take(&self, bucket: &Bucket) -> Spend<'_> {
        self.spend(bucket, true)
    }

    fn spend(&self, bucket: &Bucket, take: bool) -> Spend<'_> {
        let mut shares = crate::ops::locked(&self.shares);
        let share = match shares.get_mut(bucket) {
            Some(share) if share.left > 0 && Instant::now() < share.until => {
                share.left -= 1;
                return Spend::Spent;
            }
            Some(share) => share,
            None if take => shares.entry(bucket.clone()).or_insert(Share {
                left: 0,
                until: Instant::now(),
                taking: false,
            }),
            None => return Spend::Take(None),
        };
        if !take || share.taking {
            return Spend::Take(None);
        }
        share.taking = true;
        Spend::Take(Some(Taking {
            limits: self,
            bucket: bucket.clone(),
            kept: false,
        }))
    }

    /// `left` requests of `bucket` taken from the fleet just now; the
    /// right to take the next share goes back with them.
    fn keep_share(&self, bucket: &Bucket, left: u32) {
        let share = Share {
            left,
            until: Instant::now() + SHARE_LIFE,
            taking: false,
        };
        crate::ops::locked(&self.shares).insert(bucket.clone(), share);
    }

    /// `Ok` to go ahead, or how long to wait before the next request will be let through.
    pub fn check(&self, bucket: &Bucket) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(bucket)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops buckets that are full again and shares that ran out, so
    /// memory stays bounded by active clients.
    pub fn shrink(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
        let now = Instant::now();
        let mut shares = crate::ops::locked(&self.shares);
        shares.retain(|_, share| share.taking || now < share.until);
        shares.shrink_to_fit();
    }
}

/// Attempts at a secret per address: the admin token, client secrets,
/// gateway session tokens. A GCRA per address, which can be asked without
/// counting: `/api` looks before it compares a credential and counts only
/// the ones that fail, so a client that presents the right one is never
/// slowed, and one that guesses is, before its guess is compared.
pub struct Attempts {
    /// Time one attempt costs (1 / rate).
    interval: Duration,
    /// How far ahead of now an address's account may run (the burst).
    tolerance: Duration,
    /// Each address's theoretical arrival time.
    due: std::sync::Mutex<HashMap<IpAddr, std::time::Instant>>,
}

impl Attempts {
    /// `per_second` attempts a second per address, bursts of `burst` (both at least 1).
    pub fn new(per_second: u32, burst: u32) -> Attempts {
        let interval = Duration::from_secs(1) / per_second.max(1);
        Attempts {
            interval,
            tolerance: interval * burst.max(1).saturating_sub(1),
            due: std::sync::Mutex::default(),
        }
    }

    /// `Ok` if `peer` may try now (nothing counted), or how long to wait.
    pub fn may_try(&self, peer: IpAddr) -> Result<(), Duration> {
        let Ok(due) = self.due.lock() else {
            return Ok(());
        };
        // The clock only for an address with an account: a client's every
        // hit by its secret asks, and most addresses never failed.
        let Some(at) = due.get(&peer) else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        if *at > now + self.tolerance {
            Err(*at - self.tolerance - now)
        } else {
            Ok(())
        }
    }

    /// Counts an attempt of `peer` (a failed one, on `/api`).
    pub fn count(&self, peer: IpAddr) {
        let now = std::time::Instant::now();
        if let Ok(mut due) = self.due.lock() {
            let at = due.entry(peer).or_insert(now);
            // An account already over the limit does not run further ahead:
            // it clears within a second or two of the guessing stopping.
            if *at <= now + self.tolerance {
                *at = (*at).max(now) + self.interval;
            }
        }
    }

    /// [`Attempts::may_try`], counting the attempt when it may go ahead.
    pub fn attempt(&self, peer: IpAddr) -> Result<(), Duration> {
        self.may_try(peer)?;
        self.count(peer);
        Ok(())
    }

    /// Forgets addresses whose account is settled, so memory stays bounded
    /// by recent guessers.
    pub fn shrink(&self) {
        let now = std::time::Instant::now();
        if let Ok(mut due) = self.due.lock() {
            due.retain(|_, at| *at > now);
            due.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_rate_is_told_to_wait_and_others_are_not() {
        let limits = ClientLimits::new(2, 2);
        let a = Bucket::Client("a".into());
        assert!(limits.check(&a).is_ok());
        assert!(limits.check(&a).is_ok());
        let wait = limits.check(&a).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limits.check(&Bucket::Client("b".into())).is_ok());
        let off = ClientLimits::new(0, 0);
        for _ in 0..1000 {
            assert!(off.check(&a).is_ok());
        }
    }

    #[test]
    fn a_share_is_a_fortieth_of_the_rate_within_half_the_burst_and_runs_out() {
        assert_eq!(share_size(5, 5), 1);
        assert_eq!(share_size(400, 40), 10);
        assert_eq!(share_size(400, 8), 4);
        assert_eq!(share_size(100, 1), 1);
        assert_eq!(share_size(1_000_000, 1_000_000), 25_000);
        let limits = ClientLimits::new(400, 40);
        let (a, b) = (Bucket::Client("a".into()), Bucket::Client("b".into()));
        assert!(!limits.spend_share(&a), "a share before any was taken");
        // One request takes the share; one that comes meanwhile asks alone.
        let Spend::Take(Some(taking)) = limits.spend_or_take(&a) else {
            panic!("the first request may not take the share");
        };
        assert!(matches!(limits.spend_or_take(&a), Spend::Take(None)));
        assert!(matches!(limits.spend_or_take(&b), Spend::Take(Some(_))));
        taking.keep(3);
        for _ in 0..3 {
            assert!(limits.spend_share(&a));
        }
        assert!(!limits.spend_share(&a), "spent past the share");
        // A share of one request (the one that took it): the next taker's
        // right is its own, whatever became of the last one.
        let Spend::Take(Some(taking)) = limits.spend_or_take(&a) else {
            panic!("nobody may take the next share");
        };
        taking.keep(0);
        let Spend::Take(Some(next)) = limits.spend_or_take(&a) else {
            panic!("a kept share of none holds the right");
        };
        assert!(matches!(limits.spend_or_take(&a), Spend::Take(None)));
        next.keep(0);
        // A taking that came to nothing (Redis down, the client gone) lets
        // the next request take it.
        let Spend::Take(Some(taking)) = limits.spend_or_take(&a) else {
            panic!("nobody may take the next share");
        };
        drop(taking);
        let Spend::Take(Some(taking)) = limits.spend_or_take(&a) else {
            panic!("a taking that came to nothing still holds the share");
        };
        taking.keep(3);
        std::thread::sleep(SHARE_LIFE + Duration::from_millis(20));
        assert!(!limits.spend_share(&a), "spent after its life");
        limits.shrink();
        assert!(crate::ops::locked(&limits.shares).is_empty());
    }

    #[test]
    fn attempts_are_looked_at_without_counting_and_a_burst_runs_out() {
        let attempts = Attempts::new(5, 20);
        let me: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..100 {
            assert!(attempts.may_try(me).is_ok(), "looking counted");
        }
        for _ in 0..20 {
            assert!(attempts.attempt(me).is_ok());
        }
        let wait = attempts.may_try(me).unwrap_err();
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        for _ in 0..100 {
            attempts.count(me);
        }
        let wait = attempts.may_try(me).unwrap_err();
        assert!(wait <= Duration::from_millis(200), "ran ahead: {wait:?}");
        assert!(attempts.may_try([10, 0, 0, 2].into()).is_ok());
    }
}
