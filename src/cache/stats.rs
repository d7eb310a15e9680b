//! Counters of one cache rule, read by metrics and the status page (moka
//! keeps no statistics of its own, and none per rule).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Why a fetch ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// Nothing usable was stored.
    Miss,
    /// A stale entry was being served.
    Revalidate,
    /// Ahead of the expiry of an entry read during its TTL.
    Ahead,
}

/// Counters of one rule.
#[derive(Debug, Default)]
pub struct RuleStats {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    collapsed: AtomicU64,
    shared_hits: AtomicU64,
    coalesced: AtomicU64,
    fetch_miss: AtomicU64,
    fetch_revalidate: AtomicU64,
    fetch_ahead: AtomicU64,
    errors: AtomicU64,
    oversize: AtomicU64,
    entries: AtomicI64,
    bytes: AtomicI64,
}

/// The counters of one rule at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Requests answered from a fresh entry.
    pub hits: u64,
    /// Requests answered by a fetch.
    pub misses: u64,
    /// Requests answered from a stale entry.
    pub stale: u64,
    /// Requests that shared a fetch another request started.
    pub collapsed: u64,
    /// Requests a local miss answered from the fleet's shared tier.
    pub shared_hits: u64,
    /// Requests answered after waiting for another replica's fetch.
    pub coalesced: u64,
    /// Fetches because nothing usable was stored.
    pub fetch_miss: u64,
    /// Fetches refreshing a stale entry.
    pub fetch_revalidate: u64,
    /// Fetches ahead of expiry.
    pub fetch_ahead: u64,
    /// Fetches that failed.
    pub errors: u64,
    /// Answers too large to store.
    pub oversize: u64,
    /// Entries stored now.
    pub entries: u64,
    /// Bytes stored now.
    pub bytes: u64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl RuleStats {
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
    pub(crate) fn error(&self) {
        bump(&self.errors);
    }
    pub(crate) fn oversize(&self) {
        bump(&self.oversize);
    }
    pub(crate) fn fetch(&self, why: Refresh) {
        bump(match why {
            Refresh::Miss => &self.fetch_miss,
            Refresh::Revalidate => &self.fetch_revalidate,
            Refresh::Ahead => &self.fetch_ahead,
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
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            hits: get(&self.hits),
            misses: get(&self.misses),
            stale: get(&self.stale),
            collapsed: get(&self.collapsed),
            shared_hits: get(&self.shared_hits),
            coalesced: get(&self.coalesced),
            fetch_miss: get(&self.fetch_miss),
            fetch_revalidate: get(&self.fetch_revalidate),
            fetch_ahead: get(&self.fetch_ahead),
            errors: get(&self.errors),
            oversize: get(&self.oversize),
            entries: self.entries.load(Ordering::Relaxed).max(0) as u64,
            bytes: self.bytes.load(Ordering::Relaxed).max(0) as u64,
        }
    }
}
