//! Counters of one cache rule, kept as atomics while requests run and read
//! as one [`RuleCounters`] by metrics and the status page (moka keeps no
//! statistics of its own, and none per rule).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::ops::metrics::{Refresh, RuleCounters, Wait, Waits};

/// Counters of one rule.
#[derive(Debug, Default)]
pub struct RuleStats {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    collapsed: AtomicU64,
    shared_hits: AtomicU64,
    coalesced: AtomicU64,
    refreshes_miss: AtomicU64,
    refreshes_revalidate: AtomicU64,
    refreshes_ahead: AtomicU64,
    refreshes_warm: AtomicU64,
    not_stored: AtomicU64,
    entries: AtomicI64,
    bytes: AtomicI64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl RuleStats {
    /// Counts from zero (a reload put another rule in this place); the
    /// entries and bytes held stay, as they leave one by one.
    pub fn reset_counts(&self) {
        for c in [
            &self.hits,
            &self.misses,
            &self.stale,
            &self.collapsed,
            &self.shared_hits,
            &self.coalesced,
            &self.refreshes_miss,
            &self.refreshes_revalidate,
            &self.refreshes_ahead,
            &self.refreshes_warm,
            &self.not_stored,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn hit(&self) {
        bump(&self.hits);
    }
    pub(crate) fn miss(&self) {
        bump(&self.misses);
    }
    pub(crate) fn stale(&self) {
        bump(&self.stale);
    }
    pub(crate) fn collapsed(&self) {
        bump(&self.collapsed);
    }
    pub(crate) fn shared_hit(&self) {
        bump(&self.shared_hits);
    }
    pub(crate) fn coalesced(&self) {
        bump(&self.coalesced);
    }
    pub(crate) fn not_stored(&self) {
        bump(&self.not_stored);
    }
    pub(crate) fn fetch(&self, why: Refresh) {
        bump(match why {
            Refresh::Miss => &self.refreshes_miss,
            Refresh::Revalidate => &self.refreshes_revalidate,
            Refresh::Ahead => &self.refreshes_ahead,
            Refresh::Warm => &self.refreshes_warm,
        });
    }
    pub(crate) fn stored(&self, weight: usize) {
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(weight as i64, Ordering::Relaxed);
    }
    pub(crate) fn removed(&self, weight: usize) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(weight as i64, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> RuleCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RuleCounters {
            hits: get(&self.hits),
            misses: get(&self.misses),
            stale: get(&self.stale),
            collapsed: get(&self.collapsed),
            shared_hits: get(&self.shared_hits),
            coalesced: get(&self.coalesced),
            refreshes_miss: get(&self.refreshes_miss),
            refreshes_revalidate: get(&self.refreshes_revalidate),
            refreshes_ahead: get(&self.refreshes_ahead),
            refreshes_warm: get(&self.refreshes_warm),
            not_stored: get(&self.not_stored),
            entries: self.entries.load(Ordering::Relaxed).max(0) as u64,
            bytes: self.bytes.load(Ordering::Relaxed).max(0) as u64,
        }
    }
}

/// Client requests that waited for EM, by why (one set for the cache).
#[derive(Debug, Default)]
pub struct WaitStats {
    cold: AtomicU64,
    expired: AtomicU64,
    stale_miss: AtomicU64,
    bypass: AtomicU64,
}

impl WaitStats {
    /// Counts one request that waited. `uncounted_read`: a read the
    /// history counts by no `X-Cache` (a route no rule caches), so it is
    /// counted here; an operator's `no-cache` answers `MISS`, counted there.
    pub fn waited(&self, why: Wait, uncounted_read: bool) {
        crate::ops::history::global().waited(uncounted_read);
        bump(match why {
            Wait::Cold => &self.cold,
            Wait::Expired => &self.expired,
            Wait::StaleMiss => &self.stale_miss,
            Wait::Bypass => &self.bypass,
        });
    }

    /// The counters now.
    pub fn snapshot(&self) -> Waits {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Waits {
            cold: get(&self.cold),
            expired: get(&self.expired),
            stale_miss: get(&self.stale_miss),
            bypass: get(&self.bypass),
        }
    }
}
