//! The vmRestorePoints cache: one EM fetch per restore point and form,
//! however many clients ask (CONTRACT §2, §3; issue "the vmRestorePoints cache").
//!
//! Invariants:
//! - The key is a parsed [`RestorePointId`] and a [`Form`]; nothing else a
//!   client sends (host, headers, other query parameters) reaches the key,
//!   so no client can poison another's answer. Links are filled in per
//!   client when served (see [`crate::gateway::render::Template`]).
//! - A hit never converts: values are ready bytes for JSON and XML.
//! - Concurrent misses (and refreshes of a stale entry) for one key make one
//!   fetch. The fetch runs in its own task, so a client that disconnects
//!   cancels nothing; every waiter gets its outcome, success or error.
//! - Only 200s and EM's 404 are stored; any other answer or error is not.
//! - Freshness is judged by the stored fetch time; moka only evicts entries
//!   past TTL + stale window (or the negative TTL), or over the byte bound.
//!
//! The cache knows no HTTP client: callers hand it the fetch.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;
use tokio::sync::watch;

use crate::config::CacheSettings;
use crate::gateway::error::GatewayError;
use crate::gateway::render::Prepared;

/// A restore point ID: a UUID, lowercase, parsed once at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RestorePointId(uuid::Uuid);

impl RestorePointId {
    /// Parses the path segment; anything but a UUID (36 characters, hyphenated) is refused.
    pub fn parse(segment: &str) -> Option<RestorePointId> {
        if segment.len() != 36 {
            return None;
        }
        uuid::Uuid::try_parse(segment).ok().map(RestorePointId)
    }
}

impl std::fmt::Display for RestorePointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Which representation of the collection EM was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    /// The default: `EntityReferences` of `Ref`s.
    References,
    /// `?format=Entity`: `VmRestorePoints` entities.
    Entity,
}

/// Cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// The restore point.
    pub id: RestorePointId,
    /// The form.
    pub form: Form,
}

/// A stored answer.
#[derive(Debug)]
pub struct Entry {
    /// EM's answer, ready for every client.
    pub prepared: Prepared,
    /// When EM gave it.
    pub fetched_at: Instant,
}

impl Entry {
    /// Whether EM's answer was "not found" (negative entry).
    pub fn is_negative(&self) -> bool {
        self.prepared.status == http::StatusCode::NOT_FOUND
    }

    /// Seconds since the fetch, for `Age`.
    pub fn age_secs(&self) -> u64 {
        self.fetched_at.elapsed().as_secs()
    }
}

/// How a request was served, for `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fresh entry.
    Hit,
    /// Fetched from EM for this request (or a concurrent one).
    Miss,
    /// EM failed; an entry past its TTL but within the stale window was served.
    Stale,
}

impl Outcome {
    /// The `X-Cache` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Stale => "STALE",
        }
    }
}

/// What a fetch produced: an entry to store, or an error for everybody waiting.
type Shared = Result<Arc<Entry>, Arc<GatewayError>>;

/// Counters for metrics (moka keeps no hit statistics).
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Fresh hits.
    pub hits: AtomicU64,
    /// Misses (requests that waited for a fetch).
    pub misses: AtomicU64,
    /// Stale entries served because EM failed.
    pub stale: AtomicU64,
    /// Fetches made (one per burst).
    pub fetches: AtomicU64,
}

/// Per-entry lifetimes for moka: positive entries live for TTL + stale window, negative ones for the negative TTL.
struct Lifetimes {
    /// TTL + stale-if-error.
    positive: Duration,
    /// Negative TTL.
    negative: Duration,
}

impl Expiry<Key, Arc<Entry>> for Lifetimes {
    fn expire_after_create(&self, _: &Key, value: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(if value.is_negative() {
            self.negative
        } else {
            self.positive
        })
    }

    fn expire_after_update(
        &self,
        key: &Key,
        value: &Arc<Entry>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, now)
    }
}

/// The cache.
pub struct VmPointsCache {
    /// Entries, bounded in bytes.
    entries: Cache<Key, Arc<Entry>>,
    /// Fetches in flight, one per key; waiters subscribe to the outcome.
    flights: Arc<Mutex<HashMap<Key, watch::Receiver<Option<Shared>>>>>,
    /// Freshness.
    ttl: Duration,
    /// Negative freshness.
    negative_ttl: Duration,
    /// Bumped by every purge; a fetch that began before one does not store.
    purges: Arc<AtomicU64>,
    /// Counters.
    pub stats: CacheStats,
}

impl VmPointsCache {
    /// An empty cache with the configured bounds.
    pub fn new(settings: &CacheSettings) -> VmPointsCache {
        let entries = Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|_: &Key, e: &Arc<Entry>| {
                // Key, entry and bookkeeping overhead on top of the bytes.
                u32::try_from(e.prepared.weight() + 256).unwrap_or(u32::MAX)
            })
            .expire_after(Lifetimes {
                positive: settings.ttl + settings.stale_if_error,
                negative: settings.negative_ttl,
            })
            .build();
        VmPointsCache {
            entries,
            flights: Arc::default(),
            ttl: settings.ttl,
            negative_ttl: settings.negative_ttl,
            purges: Arc::default(),
            stats: CacheStats::default(),
        }
    }

    fn is_fresh(&self, e: &Entry) -> bool {
        fresh(e, self.ttl, self.negative_ttl)
    }

    /// The entry for `key`: fresh from the cache, or fetched (once for all
    /// concurrent callers), or stale if the fetch fails and one is at hand.
    ///
    /// `fetch` returns the answer to store (EM's 200 or 404) or the error to
    /// give every waiter; it only runs when no fresh entry exists.
    pub async fn get<F, Fut>(
        &self,
        key: Key,
        fetch: F,
    ) -> Result<(Arc<Entry>, Outcome), Arc<GatewayError>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Prepared, GatewayError>> + Send + 'static,
    {
        let existing = self.entries.get(&key).await;
        if let Some(e) = &existing {
            if self.is_fresh(e) {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok((e.clone(), Outcome::Hit));
            }
        }
        match self.fetch_once(key, fetch).await {
            Ok(entry) => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                Ok((entry, Outcome::Miss))
            }
            Err(error) => match existing {
                // EM failed: an old positive entry still in moka is within the stale window.
                Some(e) if !e.is_negative() && serves_stale(&error) => {
                    self.stats.stale.fetch_add(1, Ordering::Relaxed);
                    Ok((e, Outcome::Stale))
                }
                _ => Err(error),
            },
        }
    }

    /// Runs `fetch` unless one is in flight for `key`, and waits for the outcome.
    async fn fetch_once<F, Fut>(&self, key: Key, fetch: F) -> Shared
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Prepared, GatewayError>> + Send + 'static,
    {
        let mut rx = {
            let Ok(mut flights) = self.flights.lock() else {
                return Err(Arc::new(GatewayError::Internal("cache lock poisoned")));
            };
            match flights.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(key, rx.clone());
                    self.stats.fetches.fetch_add(1, Ordering::Relaxed);
                    let job = fetch();
                    let entries = self.entries.clone();
                    let (ttl, negative_ttl) = (self.ttl, self.negative_ttl);
                    let purges = self.purges.clone();
                    let epoch = purges.load(Ordering::SeqCst);
                    let guard = FlightGuard {
                        flights: self.flights.clone(),
                        key,
                    };
                    // Own task: a client that goes away does not cancel the fetch others wait for.
                    tokio::spawn(async move {
                        // A flight that ended just before this one began may
                        // have stored a fresh entry after our caller read a
                        // stale one: use it rather than asking EM again.
                        if let Some(e) = entries.get(&key).await {
                            if fresh(&e, ttl, negative_ttl) {
                                drop(guard);
                                let _ = tx.send(Some(Ok(e)));
                                return;
                            }
                        }
                        let outcome: Shared = match job.await {
                            Ok(prepared) => {
                                let entry = Arc::new(Entry {
                                    prepared,
                                    fetched_at: Instant::now(),
                                });
                                // A purge while EM was answering wins: the
                                // answer goes to the waiters but is not kept.
                                if purges.load(Ordering::SeqCst) == epoch {
                                    entries.insert(key, entry.clone()).await;
                                }
                                Ok(entry)
                            }
                            Err(e) => Err(Arc::new(e)),
                        };
                        // Stored before the flight ends, so no second fetch can start in between.
                        drop(guard);
                        let _ = tx.send(Some(outcome));
                    });
                    rx
                }
            }
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            // The fetch task died (it cannot panic by design, but never hang on it).
            Err(_) => None,
        };
        outcome.unwrap_or_else(|| {
            Err(Arc::new(GatewayError::Internal(
                "fetch ended without an answer",
            )))
        })
    }

    /// Drops every entry (and what fetches in flight would store).
    pub fn purge_all(&self) {
        self.purges.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }

    /// Drops both forms of one restore point (and what fetches in flight would store).
    pub async fn purge(&self, id: RestorePointId) {
        self.purges.fetch_add(1, Ordering::SeqCst);
        for form in [Form::References, Form::Entity] {
            self.entries.invalidate(&Key { id, form }).await;
        }
    }

    /// Entries held (approximate, moka's count).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Bytes held (moka's weighted size).
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Lets moka finish pending bookkeeping (evictions), for exact counts.
    pub async fn settle(&self) {
        self.entries.run_pending_tasks().await;
    }
}

/// Whether an entry is within its TTL (or negative TTL).
fn fresh(e: &Entry, ttl: Duration, negative_ttl: Duration) -> bool {
    let limit = if e.is_negative() { negative_ttl } else { ttl };
    e.fetched_at.elapsed() < limit
}

/// Removes a key's flight when the fetch task ends, however it ends.
struct FlightGuard {
    /// The shared flight table.
    flights: Arc<Mutex<HashMap<Key, watch::Receiver<Option<Shared>>>>>,
    /// The key to remove.
    key: Key,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if let Ok(mut f) = self.flights.lock() {
            f.remove(&self.key);
        }
    }
}

/// EM failures that justify serving a stale entry (not EM's considered answers).
fn serves_stale(error: &GatewayError) -> bool {
    match error {
        GatewayError::Upstream(_)
        | GatewayError::Session(_)
        | GatewayError::SessionRejected
        | GatewayError::BadUpstream(_) => true,
        GatewayError::Em { status, .. } => status.is_server_error(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_point_ids_must_be_hyphenated_uuids_and_are_lowercased() {
        let id = RestorePointId::parse("DC216C04-2E34-478E-8B9B-49A3397EF6F8").unwrap();
        assert_eq!(id.to_string(), "dc216c04-2e34-478e-8b9b-49a3397ef6f8");
        for bad in [
            "abc",
            "..",
            "%2e%2e",
            "dc216c042e34478e8b9b49a3397ef6f8",
            &"a".repeat(300),
            "{dc216c04-2e34-478e-8b9b-49a3397ef6f8}",
        ] {
            assert!(RestorePointId::parse(bad).is_none(), "{bad}");
        }
    }
}
