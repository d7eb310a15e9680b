//! Per-client rate limiting: a token bucket per client (its name, or the
//! peer address of an anonymous caller), answered with 429 and `Retry-After`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

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
pub struct ClientLimits {
    /// The buckets.
    limiter: Option<DefaultKeyedRateLimiter<Bucket>>,
    /// The limiter's clock, to turn "not until" into a wait.
    clock: DefaultClock,
    /// Rate and burst, for the fleet's count.
    quota: (u32, u32),
    /// The fleet, in fleet mode.
    fleet: Option<crate::fleet::Fleet>,
}

impl ClientLimits {
    /// `per_second` requests a second per client, bursts of `burst` (0: a second's worth); 0 turns limiting off.
    pub fn new(per_second: u32, burst: u32) -> ClientLimits {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        ClientLimits {
            limiter,
            clock: DefaultClock::default(),
            quota: (per_second, if burst == 0 { per_second } else { burst }),
            fleet: None,
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
            // Boxed: a round trip to Redis anyway, and inline its future
            // would be part of every full-path request's, fleet or not.
            let name = bucket.shared_name();
            match Box::pin(fleet.rate(&name, self.quota.0, self.quota.1)).await {
                Ok(None) => return Ok(()),
                Ok(Some(wait)) => return Err(wait),
                // The shared tier is down: this replica counts alone.
                Err(_) => {}
            }
        }
        self.check(bucket)
    }

    /// Whether [`ClientLimits::check_shared`] needs no round trip: no
    /// limit, or no fleet to count with.
    pub fn counts_locally(&self) -> bool {
        self.limiter.is_none() || self.fleet.is_none()
    }

    /// [`ClientLimits::check_shared`] when it needs no round trip (no
    /// fleet, or no limit): `None` when the fleet must count.
    pub fn check_now(&self, bucket: impl FnOnce() -> Bucket) -> Option<Result<(), Duration>> {
        match &self.limiter {
            None => Some(Ok(())),
            Some(_) => self.fleet.is_none().then(|| self.check(&bucket())),
        }
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

    /// Drops buckets that are full again, so memory stays bounded by active clients.
    pub fn shrink(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
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
    due: std::sync::Mutex<std::collections::HashMap<IpAddr, std::time::Instant>>,
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
        let now = std::time::Instant::now();
        let Ok(due) = self.due.lock() else {
            return Ok(());
        };
        match due.get(&peer) {
            Some(at) if *at > now + self.tolerance => Err(*at - self.tolerance - now),
            _ => Ok(()),
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
