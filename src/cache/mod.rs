//! The cache: one fetch per key, however many callers ask, entries bounded
//! in bytes and kept past their TTL for serving stale while the source fails.
//!
//! It is generic over its key `K`, the value `V` it stores and the error
//! `E` a fetch may end in: it knows no HTTP client, no EM and no rendering.
//! The caller hands it the fetch; what a key means (and that nothing a
//! client sends beyond it may shape an answer) is the caller's contract.
//!
//! Invariants:
//! - A hit never calls the fetch: values are stored ready to serve.
//! - Concurrent misses (and refreshes of a stale entry) for one key make one
//!   fetch. The fetch runs in its own task, so a client that disconnects
//!   cancels nothing; every waiter gets its outcome, success or error.
//! - Only what the fetch returns as `Ok` is stored; an error is shared with
//!   the waiters and never stored.
//! - Freshness is judged by the stored fetch time; moka only evicts entries
//!   past TTL + stale window (or the negative TTL), or over the byte bound.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::future::Cache as MokaCache;
use moka::Expiry;
use tokio::sync::watch;

use crate::config::CacheSettings;

/// What the cache needs to know of a stored value.
pub trait Stored: Send + Sync + 'static {
    /// Bytes held (the cache's bound counts these).
    fn weight(&self) -> usize;
    /// Whether the value is a remembered "not found" (kept for the negative TTL).
    fn is_negative(&self) -> bool;
}

/// What the cache needs to know of a failed fetch.
pub trait Failure: Send + Sync + 'static {
    /// Whether the failure justifies serving a stale entry (the source was
    /// unreachable or failing, not a considered answer).
    fn serves_stale(&self) -> bool;
    /// A broken invariant inside the cache (never expected).
    fn internal(what: &'static str) -> Self;
}

/// A stored value and when it was fetched.
#[derive(Debug)]
pub struct Entry<V> {
    /// The value, ready for every caller.
    pub value: V,
    /// When the fetch gave it.
    pub fetched_at: Instant,
}

impl<V: Stored> Entry<V> {
    /// Whether the value is a remembered "not found" (negative entry).
    pub fn is_negative(&self) -> bool {
        self.value.is_negative()
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
type Shared<V, E> = Result<Arc<Entry<V>>, Arc<E>>;

/// Fetches in flight, one per key; waiters subscribe to the outcome.
type Flights<K, V, E> = Arc<Mutex<HashMap<K, watch::Receiver<Option<Shared<V, E>>>>>>;

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

impl<K, V: Stored> Expiry<K, Arc<Entry<V>>> for Lifetimes {
    fn expire_after_create(&self, _: &K, value: &Arc<Entry<V>>, _: Instant) -> Option<Duration> {
        Some(if value.is_negative() {
            self.negative
        } else {
            self.positive
        })
    }

    fn expire_after_update(
        &self,
        key: &K,
        value: &Arc<Entry<V>>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, now)
    }
}

/// The cache.
pub struct Cache<K, V, E> {
    /// Entries, bounded in bytes.
    entries: MokaCache<K, Arc<Entry<V>>>,
    /// Fetches in flight, one per key; waiters subscribe to the outcome.
    flights: Flights<K, V, E>,
    /// Freshness.
    ttl: Duration,
    /// Negative freshness.
    negative_ttl: Duration,
    /// Bumped by every purge; a fetch that began before one does not store.
    purges: Arc<AtomicU64>,
    /// Counters.
    pub stats: CacheStats,
}

impl<K, V, E> Cache<K, V, E>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: Stored,
    E: Failure,
{
    /// An empty cache with the configured bounds.
    pub fn new(settings: &CacheSettings) -> Self {
        let entries = MokaCache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|_: &K, e: &Arc<Entry<V>>| {
                // Key, entry and bookkeeping overhead on top of the bytes.
                u32::try_from(e.value.weight() + 256).unwrap_or(u32::MAX)
            })
            .expire_after(Lifetimes {
                positive: settings.ttl + settings.stale_if_error,
                negative: settings.negative_ttl,
            })
            .build();
        Cache {
            entries,
            flights: Arc::default(),
            ttl: settings.ttl,
            negative_ttl: settings.negative_ttl,
            purges: Arc::default(),
            stats: CacheStats::default(),
        }
    }

    fn is_fresh(&self, e: &Entry<V>) -> bool {
        fresh(e, self.ttl, self.negative_ttl)
    }

    /// The entry for `key`: fresh from the cache, or fetched (once for all
    /// concurrent callers), or stale if the fetch fails and one is at hand.
    ///
    /// `fetch` returns the answer to store (EM's 200 or 404) or the error to
    /// give every waiter; it only runs when no fresh entry exists.
    pub async fn get<F, Fut>(&self, key: K, fetch: F) -> Result<(Arc<Entry<V>>, Outcome), Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let existing = self.entries.get(&key).await;
        if let Some(e) = &existing {
            if self.is_fresh(e) {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok((e.clone(), Outcome::Hit));
            }
        }
        match self.fetch_once(key.clone(), fetch).await {
            Ok(entry) => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                Ok((entry, Outcome::Miss))
            }
            Err(error) => match existing {
                // EM failed: an old positive entry still in moka is within the stale window.
                Some(e) if !e.is_negative() && error.serves_stale() => {
                    self.stats.stale.fetch_add(1, Ordering::Relaxed);
                    Ok((e, Outcome::Stale))
                }
                _ => Err(error),
            },
        }
    }

    /// Runs `fetch` unless one is in flight for `key`, and waits for the outcome.
    async fn fetch_once<F, Fut>(&self, key: K, fetch: F) -> Shared<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let mut rx = {
            let Ok(mut flights) = self.flights.lock() else {
                return Err(Arc::new(E::internal("cache lock poisoned")));
            };
            match flights.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(key.clone(), rx.clone());
                    self.stats.fetches.fetch_add(1, Ordering::Relaxed);
                    let job = fetch();
                    let entries = self.entries.clone();
                    let (ttl, negative_ttl) = (self.ttl, self.negative_ttl);
                    let purges = self.purges.clone();
                    let epoch = purges.load(Ordering::SeqCst);
                    let guard = FlightGuard {
                        flights: self.flights.clone(),
                        key: key.clone(),
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
                        let outcome: Shared<V, E> = match job.await {
                            Ok(value) => {
                                let entry = Arc::new(Entry {
                                    value,
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
        outcome.unwrap_or_else(|| Err(Arc::new(E::internal("fetch ended without an answer"))))
    }

    /// Drops every entry (and what fetches in flight would store).
    pub fn purge_all(&self) {
        self.purges.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }

    /// Drops these keys (and what fetches in flight would store).
    pub async fn purge(&self, keys: impl IntoIterator<Item = K>) {
        self.purges.fetch_add(1, Ordering::SeqCst);
        for key in keys {
            self.entries.invalidate(&key).await;
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
fn fresh<V: Stored>(e: &Entry<V>, ttl: Duration, negative_ttl: Duration) -> bool {
    let limit = if e.is_negative() { negative_ttl } else { ttl };
    e.fetched_at.elapsed() < limit
}

/// Removes a key's flight when the fetch task ends, however it ends.
struct FlightGuard<K: std::hash::Hash + Eq, V, E> {
    /// The shared flight table.
    flights: Flights<K, V, E>,
    /// The key to remove.
    key: K,
}

impl<K: std::hash::Hash + Eq, V, E> Drop for FlightGuard<K, V, E> {
    fn drop(&mut self) {
        if let Ok(mut f) = self.flights.lock() {
            f.remove(&self.key);
        }
    }
}
