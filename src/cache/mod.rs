//! The cache: one fetch per key however many callers ask, entries bounded in
//! bytes, served stale while the source is slow or failing, refreshed ahead
//! of expiry when they are read (see README, "Cache rules").
//!
//! It is generic over its key `K`, the value `V` it stores and the error `E`
//! a fetch may end in: it knows no HTTP client, no EM, no rendering and no
//! Redis. The caller hands it a fetch for the key; what a key means (and
//! that nothing a client sends beyond it may shape an answer) is the
//! caller's contract. A fetch may also say its value came from elsewhere
//! (the fleet's shared tier) and how old it already is.
//!
//! An entry's life, by its age against its rule's [`Policy`]:
//!
//! | age | a request gets |
//! | --- | --- |
//! | < TTL | the entry (HIT); the first such hit schedules a refresh shortly before the TTL ends (refresh-ahead) |
//! | < TTL + stale-while-revalidate | the entry at once (STALE), and one background refresh runs |
//! | < TTL + stale-if-error | the refresh's answer if it comes within the stale wait (MISS); the entry if EM fails or is slower (STALE), the refresh going on in the background |
//! | older | whatever the fetch gives (MISS) |
//!
//! Invariants:
//! - A hit never calls the fetch: values are stored ready to serve.
//! - Concurrent callers of one key share one fetch (a *flight*). The fetch
//!   runs in its own task, so a caller that goes away cancels nothing; every
//!   waiter gets its outcome, success or error, and none waits forever.
//! - Only what the fetch returns as `Ok` is stored, and only if it is no
//!   larger than the per-entry bound; errors are shared with the waiters and
//!   never stored. A failed refresh is remembered for a few seconds, during
//!   which a stale entry is served without asking again.
//! - A purge wins over a fetch in flight: what began before the purge is
//!   given to its waiters but not stored.
//! - Freshness is judged by the fetch time; moka evicts entries past their
//!   last useful moment, or over the byte bound.
//!
//! Where entries are held: moka owns them (bounds, eviction, expiry), and
//! a hit reads them from an index beside it, without moka's per-read
//! bookkeeping (its read hook, read-op channel, epoch guard and upkeep:
//! about half of a hit's cache cost). The index and moka agree by these
//! rules:
//! - An entry enters the index just before moka, so moka's removal of it
//!   (evicted, expired, not admitted, replaced) always comes after, and
//!   takes it out of the index unless a newer entry took its place.
//! - A purge takes entries out of moka, then out of the index, before it
//!   returns: no request is served a purged entry from either.
//! - moka still learns which keys are read, as well as it can count them:
//!   an entry's first 15 hits are also moka reads (its frequency sketch
//!   counts to 15: a key read 15 times and one read 15,000 times look the
//!   same to it), and every [`READ_SAMPLE`]th after that, which keeps the
//!   key recent in moka's order and counts again after its sketch ages.

mod stats;

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use moka::future::Cache as MokaCache;

/// How the cache hashes its keys, on every lookup: foldhash's quality
/// variant with a random seed per cache, a few times faster than the
/// standard library's SipHash on a key's 50 to 100 bytes (every hit hashes
/// its key once). A client can make many keys (any restore point that
/// passes its check), so the seed is random: colliding keys cannot be
/// chosen without it.
pub type KeyHasher = foldhash::quality::RandomState;
use moka::notification::RemovalCause;
use moka::Expiry;
use tokio::sync::watch;

pub use stats::{RuleStats, WaitStats};

use crate::ops::metrics::{Refresh, RuleCounters, Wait, Waits};
use crate::ops::urgency::Urgency;

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
    /// unreachable, slow or failing, not a considered answer).
    fn serves_stale(&self) -> bool;
    /// A broken invariant inside the cache (never expected).
    fn internal(what: &'static str) -> Self;
}

/// How long the entries of one rule live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The rule's index (its counters).
    pub rule: usize,
    /// Freshness.
    pub ttl: Duration,
    /// After the TTL, how long the entry is served at once while one
    /// background refresh runs.
    pub stale_while_revalidate: Duration,
    /// After the TTL, how long the entry may be served while the source fails.
    pub stale_if_error: Duration,
    /// Freshness of a remembered "not found".
    pub negative_ttl: Duration,
}

impl Policy {
    /// How long an entry is worth keeping at all.
    pub fn lifetime(&self, negative: bool) -> Duration {
        if negative {
            self.negative_ttl
        } else {
            self.ttl + self.stale_while_revalidate.max(self.stale_if_error)
        }
    }
}

/// Bounds and behaviour shared by every rule.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bytes held at most, all rules together.
    pub max_bytes: u64,
    /// A value heavier than this is given to its waiters but not stored.
    pub max_entry_bytes: usize,
    /// Longest a caller waits for the source when a stale entry exists.
    pub stale_wait: Duration,
    /// Refresh entries read during their TTL shortly before it ends.
    pub refresh_ahead: bool,
    /// How long a failed refresh is remembered.
    pub failed_memory: Duration,
}

/// What a fetch hands the cache.
#[derive(Debug)]
pub struct Fetched<V> {
    /// The value.
    pub value: V,
    /// How old it already is (zero when the source just gave it).
    pub age: Duration,
    /// Where it came from.
    pub source: Source,
}

/// Where a fetched value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The source itself (EM), for this fetch.
    Origin,
    /// The fleet's shared tier: another replica had fetched it.
    Shared,
    /// The shared tier, after waiting for another replica's fetch in flight.
    Coalesced,
}

impl<V> Fetched<V> {
    /// A value the source just gave.
    pub fn fresh(value: V) -> Fetched<V> {
        Fetched {
            value,
            age: Duration::ZERO,
            source: Source::Origin,
        }
    }
}

/// A stored value, when it was fetched, and its rule's lifetimes.
#[derive(Debug)]
pub struct Entry<V> {
    /// The value, ready for every caller.
    pub value: V,
    /// When the source gave it (monotonic).
    pub fetched_at: Instant,
    /// When the source gave it (wall clock, for `Last-Modified`).
    pub fetched_wall: SystemTime,
    /// Where it came from.
    pub source: Source,
    /// Its rule's lifetimes.
    policy: Policy,
    /// Set by the first hit during the TTL: a refresh-ahead is scheduled.
    scheduled: AtomicBool,
    /// That refresh's task, aborted when the entry leaves the cache (it
    /// would wake up for nothing, and waiting tasks are memory the byte
    /// bound does not see).
    ahead: std::sync::OnceLock<tokio::task::AbortHandle>,
    /// Requests it answered from the cache (the status page's busiest keys).
    hits: AtomicU64,
    /// Requests the entry it replaced answered (a refresh keeps a key hot).
    replaced_hits: u64,
    /// How long the entry it replaced lived, for [`Entry::heat_per_minute`].
    replaced_life: Duration,
    /// Its age at its last hit, in milliseconds (0: none yet): the hit
    /// already knows the age, so this costs the hit one store, no clock.
    last_hit_age_ms: AtomicU64,
}

/// Where an entry stands, by its age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    /// Within the TTL.
    Fresh,
    /// Within stale-while-revalidate after the TTL.
    Revalidate,
    /// Within stale-if-error after the TTL: only for when the source fails.
    IfError,
    /// Of no use.
    Dead,
}

impl<V: Stored> Entry<V> {
    fn new(fetched: Fetched<V>, policy: Policy) -> Entry<V> {
        let now = Instant::now();
        Entry {
            fetched_at: now.checked_sub(fetched.age).unwrap_or(now),
            fetched_wall: SystemTime::now()
                .checked_sub(fetched.age)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            source: fetched.source,
            value: fetched.value,
            policy,
            scheduled: AtomicBool::new(false),
            ahead: std::sync::OnceLock::new(),
            hits: AtomicU64::new(0),
            replaced_hits: 0,
            replaced_life: Duration::ZERO,
            last_hit_age_ms: AtomicU64::new(0),
        }
    }

    /// Requests it answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Requests it and the entry it replaced answered: how hot its key is
    /// over about the last two lifetimes.
    pub fn heat(&self) -> u64 {
        self.hits() + self.replaced_hits
    }

    /// Requests it and the entry it replaced answered a minute, over their
    /// lives, and less the longer it has gone unread past [`HOT_IDLE`]:
    /// how hot its key is now. A key clients stopped reading cools down,
    /// however many hits it had when it was new (yesterday's newest
    /// restore point must not go before the points clients read today).
    pub fn heat_per_minute(&self) -> f64 {
        let age = self.age();
        let last = Duration::from_millis(self.last_hit_age_ms.load(Ordering::Relaxed));
        heat_per_minute(
            self.heat(),
            age + self.replaced_life,
            age.saturating_sub(last),
        )
    }

    /// A hit, `age` old; the hits before it.
    fn hit(&self, age: Duration) -> u64 {
        self.last_hit_age_ms
            .store(age.as_millis() as u64, Ordering::Relaxed);
        self.hits.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the value is a remembered "not found".
    pub fn is_negative(&self) -> bool {
        self.value.is_negative()
    }

    /// Time since the fetch.
    pub fn age(&self) -> Duration {
        self.fetched_at.elapsed()
    }

    /// Its age at `at` (none if `at` came first).
    pub fn age_at(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.fetched_at)
    }

    /// Seconds since the fetch, for `Age`.
    pub fn age_secs(&self) -> u64 {
        self.age().as_secs()
    }

    /// The rule this entry was stored under.
    pub fn rule(&self) -> usize {
        self.policy.rule
    }

    fn freshness(&self) -> Freshness {
        self.freshness_at(self.age())
    }

    /// Its state at `age`.
    fn freshness_at(&self, age: Duration) -> Freshness {
        let p = &self.policy;
        if self.is_negative() {
            return if age < p.negative_ttl {
                Freshness::Fresh
            } else {
                Freshness::Dead
            };
        }
        if age < p.ttl {
            Freshness::Fresh
        } else if age < p.ttl + p.stale_while_revalidate {
            Freshness::Revalidate
        } else if age < p.ttl + p.stale_if_error {
            Freshness::IfError
        } else {
            Freshness::Dead
        }
    }
}

/// How long a key may go unread before it cools down in
/// [`Entry::heat_per_minute`]; also the shortest life its rate is taken
/// over (two hits in an entry's first second are not 120 a minute).
pub const HOT_IDLE: Duration = Duration::from_secs(60);

/// Hits a minute of a key read `heat` times over `life`, last `idle` ago:
/// the rate over the life (at least [`HOT_IDLE`]), cooled in proportion
/// to the time unread past [`HOT_IDLE`].
fn heat_per_minute(heat: u64, life: Duration, idle: Duration) -> f64 {
    let rate = heat as f64 * 60.0 / life.max(HOT_IDLE).as_secs_f64();
    let (idle, patience) = (idle.as_secs_f64(), HOT_IDLE.as_secs_f64());
    match idle > patience {
        true => rate * patience / idle,
        false => rate,
    }
}

/// How a request was served, for `X-Cache` and `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A fresh entry (or one a fetch found in the shared tier).
    Hit,
    /// Fetched from the source for this request (or a concurrent one).
    Miss,
    /// An entry past its TTL, within its stale windows.
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

    /// The outcome an `X-Cache` value names, if it is one of these.
    pub fn of_label(label: &[u8]) -> Option<Outcome> {
        [Outcome::Hit, Outcome::Miss, Outcome::Stale]
            .into_iter()
            .find(|o| o.as_str().as_bytes() == label)
    }
}

/// An answer from the cache.
#[derive(Debug)]
pub struct Served<V> {
    /// The entry.
    pub entry: Arc<Entry<V>>,
    /// How it was found.
    pub outcome: Outcome,
    /// Whether this request shared a fetch another request started.
    pub collapsed: bool,
    /// Whether a fetch for this request found the entry in the fleet's
    /// shared tier (EM was not asked).
    pub from_shared: bool,
    /// The entry's age when it was found (or landed), for `Age`: read
    /// from the clock once for the lookup and the answer.
    pub age: Duration,
}

impl<V> Served<V> {
    /// A stored entry served as it is (no fetch of this request's).
    fn stored(entry: Arc<Entry<V>>, outcome: Outcome, age: Duration) -> Served<V> {
        Served {
            entry,
            outcome,
            collapsed: false,
            from_shared: false,
            age,
        }
    }
}

/// When a flight that is about to fetch finds it need not.
#[derive(Debug, Clone, Copy)]
enum Unless {
    /// A fresh entry is stored (a flight that just ended stored one).
    Fresh,
    /// An entry fetched after this instant is stored (someone refreshed).
    NewerThan(Instant),
}

/// How a flight ended, for everybody waiting on it.
enum Landed<V, E> {
    /// The source answered (or a fresh entry was found); stored unless too large or purged.
    Value(Arc<Entry<V>>),
    /// The fetch failed; nothing was stored.
    Failed(Arc<E>),
}

impl<V, E> Clone for Landed<V, E> {
    fn clone(&self) -> Self {
        match self {
            Landed::Value(e) => Landed::Value(e.clone()),
            Landed::Failed(e) => Landed::Failed(e.clone()),
        }
    }
}

/// Where a flight's waiters learn how it landed.
type Landing<V, E> = watch::Receiver<Option<Landed<V, E>>>;

/// A flight's landing and when it began.
/// A flight's landing, when it began, and whether a client waits for it
/// (raised by [`wait`], seen by a background fetch, which then stops
/// queueing behind other background work).
type Joined<V, E> = (Landing<V, E>, Instant, Urgency);

/// Fetches in flight, one per key.
type Flights<K, V, E> = Arc<Mutex<HashMap<K, Joined<V, E>>>>;

/// Per-entry lifetimes for moka: each entry lives as long as its rule makes it useful.
struct Lifetimes;

impl<K, V: Stored> Expiry<K, Arc<Entry<V>>> for Lifetimes {
    fn expire_after_create(&self, _: &K, e: &Arc<Entry<V>>, _: Instant) -> Option<Duration> {
        Some(e.policy.lifetime(e.is_negative()).saturating_sub(e.age()))
    }

    fn expire_after_update(
        &self,
        key: &K,
        e: &Arc<Entry<V>>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, e, now)
    }
}

/// Bytes of bookkeeping counted on top of each value.
const OVERHEAD: usize = 256;

/// After an entry's first [`READ_EXACT`] hits, one hit in this many is
/// also a read of moka's, so that its eviction policy keeps hot keys
/// (module docs).
pub const READ_SAMPLE: u64 = 16;

/// An entry's first hits that are all moka reads: as many as moka's
/// frequency sketch counts.
pub const READ_EXACT: u64 = 15;

/// The entries moka holds, by key, for the hit path (module docs).
type Index<K, V> = Arc<DashMap<K, Arc<Entry<V>>, KeyHasher>>;

/// The cache.
pub struct Cache<K, V, E> {
    /// Entries, bounded in bytes.
    entries: MokaCache<K, Arc<Entry<V>>, KeyHasher>,
    /// The same entries for hits: written before moka, emptied by moka's
    /// removals and by purges (module docs). Invariant: it holds no entry
    /// moka has removed, but for the moment between moka's removal and
    /// its listener (an expired entry is judged by its own age anyway).
    index: Index<K, V>,
    /// Fetches in flight.
    flights: Flights<K, V, E>,
    /// Keys whose last refresh failed, remembered for a few seconds.
    failed: moka::sync::Cache<K, ()>,
    /// Bumped by every purge; a fetch that began before one does not store.
    purges: Arc<AtomicU64>,
    /// Bounds and behaviour.
    options: Options,
    /// Counters per rule.
    stats: Arc<Vec<RuleStats>>,
    /// Keys stored within [`STORED_MEMORY`]: a miss of one waited because
    /// its entry expired (or was evicted), not because it was never fetched.
    stored: moka::sync::Cache<K, ()>,
    /// Client requests that waited for the source.
    waits: Arc<WaitStats>,
}

/// How long a stored key is remembered after it was stored.
const STORED_MEMORY: Duration = Duration::from_secs(3600);

impl<K, V, E> Cache<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Stored,
    E: Failure,
{
    /// An empty cache with `rules` rules' counters (the most a reload may
    /// bring: rules are counted by their index).
    pub fn new(options: Options, rules: usize) -> Self {
        let stats: Arc<Vec<RuleStats>> =
            Arc::new((0..rules.max(1)).map(|_| RuleStats::default()).collect());
        let on_removal = stats.clone();
        let index: Index<K, V> = Arc::new(DashMap::with_hasher(KeyHasher::default()));
        let held = index.clone();
        let stored = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(STORED_MEMORY)
            .build();
        let entries = MokaCache::builder()
            .max_capacity(options.max_bytes)
            .weigher(|_: &K, e: &Arc<Entry<V>>| {
                u32::try_from(e.value.weight() + OVERHEAD).unwrap_or(u32::MAX)
            })
            .expire_after(Lifetimes)
            .support_invalidation_closures()
            .eviction_listener(move |key: Arc<K>, e: Arc<Entry<V>>, _: RemovalCause| {
                // Only this entry: a newer one for the key (the replacing
                // one, when replaced) stays.
                held.remove_if(&*key, |_, now| Arc::ptr_eq(now, &e));
                if let Some(task) = e.ahead.get() {
                    task.abort();
                }
                if let Some(s) = on_removal.get(e.policy.rule) {
                    s.removed(e.value.weight() + OVERHEAD);
                }
            })
            .build_with_hasher(KeyHasher::default());
        let failed = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(options.failed_memory.max(Duration::from_millis(1)))
            .build();
        Cache {
            entries,
            index,
            flights: Arc::default(),
            failed,
            purges: Arc::default(),
            options,
            stats,
            stored,
            waits: Arc::default(),
        }
    }

    fn stats_of(&self, rule: usize) -> &RuleStats {
        self.stats
            .get(rule)
            .unwrap_or_else(|| &self.stats[self.stats.len() - 1])
    }

    /// The entry for `key` by the table in the module docs, as of `at` (when
    /// the request was taken up: the caller has read the clock already).
    /// `fetch` is called only when the source must be asked (now or ahead
    /// of expiry).
    ///
    /// `fetch` makes the fetch's owned (`'static`) maker, and is called only
    /// when one is needed: a hit pays for nothing. An entry's first hit
    /// keeps the maker until the refresh ahead of expiry, so it should hold
    /// little (the fetch itself, often large, is made when it runs).
    pub async fn get<M, F, Fut>(
        &self,
        key: &K,
        policy: &Policy,
        at: Instant,
        fetch: M,
    ) -> Result<Served<V>, Arc<E>>
    where
        M: FnOnce(Refresh) -> F,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send + 'static,
    {
        let stats = self.stats_of(policy.rule);
        // The index first (a hit's whole lookup); moka only for a key the
        // index lacks, which a purge racing a store can leave there.
        let indexed = self.index.get(key).map(|e| e.value().clone());
        let existing = match indexed {
            Some(e) => Some(e),
            None => match self.read_now(key) {
                Some(found) => found,
                None => Box::pin(self.entries.get(key)).await,
            },
        };
        // As of `at`: no clock read of its own on a hit (a clock read
        // costs a hit on a virtual machine about a sixth of its time).
        let age = (existing.as_ref()).map_or(Duration::ZERO, |e| e.age_at(at));
        let state = existing
            .as_ref()
            .map_or(Freshness::Dead, |e| e.freshness_at(age));
        match (state, existing) {
            (Freshness::Fresh, Some(e)) => {
                self.count_hit(key, policy, &e, age, fetch);
                Ok(Served::stored(e, Outcome::Hit, age))
            }
            (Freshness::Revalidate, Some(e)) => {
                e.hit(age);
                if !self.failed.contains_key(key) {
                    let unless = Unless::NewerThan(e.fetched_at);
                    let job = fetch(Refresh::Revalidate);
                    self.flight(key.clone(), policy, true, Refresh::Revalidate, unless, job);
                }
                stats.stale();
                Ok(Served::stored(e, Outcome::Stale, age))
            }
            (Freshness::IfError, Some(e)) => {
                if self.failed.contains_key(key) {
                    stats.stale();
                    return Ok(Served::stored(e, Outcome::Stale, age));
                }
                self.waits.waited(Wait::StaleMiss, false);
                let unless = Unless::NewerThan(e.fetched_at);
                let job = fetch(Refresh::Revalidate);
                let (rx, started) =
                    self.flight(key.clone(), policy, true, Refresh::Revalidate, unless, job);
                // A refresh that has already run longer than the stale wait
                // (EM hanging) gets no more waiting from later callers.
                let waited = rx
                    .as_ref()
                    .map_or(Duration::ZERO, |(_, began, _)| began.elapsed());
                let patience = self.options.stale_wait.saturating_sub(waited);
                // Boxed here and below: a wait for EM (a hit never waits)
                // would otherwise size every read's future.
                match Box::pin(tokio::time::timeout(patience, wait(rx))).await {
                    Ok(Landed::Value(entry)) => Ok(self.served(entry, started, stats)),
                    Ok(Landed::Failed(error)) if error.serves_stale() => {
                        stats.stale();
                        // Its age after the wait.
                        let age = e.age();
                        Ok(Served::stored(e, Outcome::Stale, age))
                    }
                    Ok(Landed::Failed(error)) => Err(error),
                    // Slower than the stale wait: the copy now, the refresh
                    // goes on in its own task.
                    Err(_) => {
                        stats.stale();
                        let age = e.age();
                        Ok(Served::stored(e, Outcome::Stale, age))
                    }
                }
            }
            (_, existing) => {
                let why = if existing.is_some() || self.stored.contains_key(key) {
                    Wait::Expired
                } else {
                    Wait::Cold
                };
                let job = fetch(Refresh::Miss);
                let (rx, started) =
                    self.flight(key.clone(), policy, true, Refresh::Miss, Unless::Fresh, job);
                let landed = Box::pin(wait(rx)).await;
                // A copy another replica had stored is no wait for EM.
                if !matches!(&landed, Landed::Value(e) if e.source == Source::Shared) {
                    self.waits.waited(why, false);
                }
                match landed {
                    Landed::Value(entry) => Ok(self.served(entry, started, stats)),
                    Landed::Failed(error) => Err(error),
                }
            }
        }
    }

    /// The hit on `key` as of `at`, if the index holds a fresh entry: the
    /// lookup of [`Cache::get`]'s first row, with nothing counted or
    /// scheduled, so a caller that does not serve it leaves no trace. A
    /// caller that serves it says so with [`Cache::count_hit`].
    pub fn fresh_now(&self, key: &K, at: Instant) -> Option<Served<V>> {
        let e = self.index.get(key).map(|e| e.value().clone())?;
        let age = e.age_at(at);
        (e.freshness_at(age) == Freshness::Fresh).then(|| Served::stored(e, Outcome::Hit, age))
    }

    /// A fresh entry served as a hit (its age `age`): counted for the rule
    /// and the entry, told to moka's policy now and then, and its refresh
    /// ahead of expiry scheduled on its first hit (`fetch` as in
    /// [`Cache::get`]).
    pub fn count_hit<M, F, Fut>(
        &self,
        key: &K,
        policy: &Policy,
        e: &Arc<Entry<V>>,
        age: Duration,
        fetch: M,
    ) where
        M: FnOnce(Refresh) -> F,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send + 'static,
    {
        self.stats_of(policy.rule).hit();
        let before = e.hit(age);
        if before < READ_EXACT || before % READ_SAMPLE == 0 {
            // For moka's policy only: what it returns is known.
            let _ = self.read_now(key);
        }
        if self.options.refresh_ahead
            && !e.is_negative()
            // Read before the swap: once scheduled (every hit but
            // an entry's first), a hit writes nothing here.
            && !e.scheduled.load(Ordering::Relaxed)
            && !e.scheduled.swap(true, Ordering::Relaxed)
        {
            self.schedule_ahead(key.clone(), e, fetch(Refresh::Ahead));
        }
    }

    /// moka's lookup of `key` if it is ready at once, as it is unless it
    /// waits for one of the async locks moka's upkeep takes (rare); then
    /// the caller asks again, boxed (moka's upkeep resumes where it was
    /// dropped). Awaited inline, its future (728 bytes) would be part of
    /// every read's on the full path, and its own await chain costs
    /// more than this one poll (BENCHMARKS.md, "sixth steps").
    fn read_now(&self, key: &K) -> Option<Option<Arc<Entry<V>>>> {
        // Polled where it is made (`now_or_never` would copy it first).
        let lookup = std::pin::pin!(self.entries.get(key));
        match lookup.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(found) => Some(found),
            Poll::Pending => None,
        }
    }

    /// Fetches `key` again whatever is stored (an operator's `no-cache`),
    /// sharing a fetch already in flight, and stores the answer.
    pub async fn refetch<F, Fut>(
        &self,
        key: K,
        policy: &Policy,
        fetch: F,
    ) -> Result<Served<V>, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send + 'static,
    {
        let stats = self.stats_of(policy.rule);
        let unless = Unless::NewerThan(Instant::now());
        let (rx, started) = self.flight(key, policy, true, Refresh::Miss, unless, fetch);
        match wait(rx).await {
            Landed::Value(entry) => Ok(self.served(entry, started, stats)),
            Landed::Failed(error) => Err(error),
        }
    }

    /// Fetches `key` unless a fresh entry is stored, as work done before
    /// anyone asks (prefetch, rewarm): no client request is counted, and the
    /// entry's first client hit is its first hit. Whether it fetched.
    pub async fn warm<F, Fut>(&self, key: K, policy: &Policy, fetch: F) -> Result<bool, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send + 'static,
    {
        if let Some(e) = self.entries.get(&key).await {
            if e.freshness() == Freshness::Fresh {
                return Ok(false);
            }
        }
        let (rx, started) = self.flight(key, policy, true, Refresh::Warm, Unless::Fresh, fetch);
        match wait_quietly(rx).await {
            Landed::Value(_) => Ok(started),
            Landed::Failed(error) => Err(error),
        }
    }

    /// Whether `key` has an entry, fresh or not (nothing is counted: for
    /// background work).
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Whether any stored key `matches` (one pass over the entries: for
    /// background work, never a request).
    pub fn any_key(&self, matches: impl Fn(&K) -> bool) -> bool {
        self.entries.iter().any(|(k, _)| matches(&k))
    }

    /// One fetch for every concurrent caller of `key`, nothing stored: the
    /// collapsing of requests no rule caches.
    pub async fn collapse<F, Fut>(&self, key: K, fetch: F) -> Result<Served<V>, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send + 'static,
    {
        let policy = Policy {
            rule: usize::MAX,
            ttl: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            negative_ttl: Duration::ZERO,
        };
        let (rx, started) = self.flight(key, &policy, false, Refresh::Miss, Unless::Fresh, fetch);
        match wait(rx).await {
            Landed::Value(entry) => Ok(Served {
                from_shared: entry.source != Source::Origin,
                age: entry.age(),
                entry,
                outcome: Outcome::Miss,
                collapsed: !started,
            }),
            Landed::Failed(error) => Err(error),
        }
    }

    fn served(&self, entry: Arc<Entry<V>>, started: bool, stats: &RuleStats) -> Served<V> {
        if !started {
            stats.collapsed();
        }
        // A value a fetch found in the shared tier is a hit of the gateway's
        // cache (EM was not asked), or stale if it is already past its TTL
        // (a copy served while another replica refreshes it).
        let age = entry.age();
        let outcome = match (entry.source, entry.freshness_at(age)) {
            (Source::Origin, _) => {
                stats.miss();
                Outcome::Miss
            }
            (source, Freshness::Fresh) => {
                if source == Source::Coalesced {
                    stats.coalesced();
                } else {
                    stats.shared_hit();
                }
                Outcome::Hit
            }
            _ => {
                stats.stale();
                Outcome::Stale
            }
        };
        Served {
            from_shared: entry.source != Source::Origin,
            entry,
            outcome,
            collapsed: !started,
            age,
        }
    }

    /// Schedules the refresh-ahead of an entry read during its TTL: at a
    /// jittered point in the last quarter of its TTL (so entries filled
    /// together do not all refresh together), if it is still the stored one.
    fn schedule_ahead<F, Fut>(&self, key: K, e: &Arc<Entry<V>>, fetch: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send + 'static,
    {
        let ttl = e.policy.ttl;
        let at = e.fetched_at + ttl.mul_f64(0.75 + fastrand::f64() * 0.15);
        let this = self.handle();
        // The wait holds little: the fetch is made when it runs (an unpolled
        // fetch is as large as its deepest state), and the entry is held
        // weakly (an evicted one must not live on: the cache's byte bound
        // would no longer bound the memory).
        let entry = Arc::downgrade(e);
        let fetched_at = e.fetched_at;
        let policy = e.policy.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            // Boxed: the waiting task is only as large as what waits.
            Box::pin(async move {
                match (entry.upgrade(), this.entries.get(&key).await) {
                    (Some(then), Some(now)) if Arc::ptr_eq(&now, &then) => {}
                    // Purged, evicted or replaced meanwhile: nothing to do.
                    _ => return,
                }
                let unless = Unless::NewerThan(fetched_at);
                this.flight(key, &policy, true, Refresh::Ahead, unless, fetch);
            })
            .await;
        });
        let _ = e.ahead.set(task.abort_handle());
    }

    /// A second handle on the same cache, for background tasks.
    fn handle(&self) -> Cache<K, V, E> {
        Cache {
            entries: self.entries.clone(),
            index: self.index.clone(),
            flights: self.flights.clone(),
            failed: self.failed.clone(),
            purges: self.purges.clone(),
            options: self.options.clone(),
            stats: self.stats.clone(),
            stored: self.stored.clone(),
            waits: self.waits.clone(),
        }
    }

    /// Joins the flight for `key`, or starts one; whether this call started it.
    fn flight<F, Fut>(
        &self,
        key: K,
        policy: &Policy,
        store: bool,
        reason: Refresh,
        unless: Unless,
        fetch: F,
    ) -> (Option<Joined<V, E>>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send + 'static,
    {
        let Ok(mut flights) = self.flights.lock() else {
            return (None, false);
        };
        if let Some((rx, began, urgency)) = flights.get(&key) {
            return (Some((rx.clone(), *began, urgency.clone())), false);
        }
        let (tx, rx) = watch::channel(None);
        let began = Instant::now();
        let urgency = Urgency::default();
        flights.insert(key.clone(), (rx.clone(), began, urgency.clone()));
        drop(flights);
        if let Some(s) = self.stats.get(policy.rule) {
            s.fetch(reason);
        }
        let job = urgency.clone().scope(fetch());
        let this = self.handle();
        let policy = policy.clone();
        let epoch = self.purges.load(Ordering::SeqCst);
        let guard = FlightGuard {
            flights: self.flights.clone(),
            key: key.clone(),
        };
        // Own task: a caller that goes away does not cancel the fetch others wait for.
        tokio::spawn(async move {
            // Hits of the entry this flight replaces: a key read before its
            // refresh stays hot after it.
            let (mut replaced_hits, mut replaced_life) = (0, Duration::ZERO);
            if store {
                // A flight that ended just before this one began may have
                // stored what we were about to fetch: use it.
                if let Some(e) = this.entries.get(&key).await {
                    (replaced_hits, replaced_life) = (e.hits(), e.age());
                    let enough = match unless {
                        Unless::Fresh => e.freshness() == Freshness::Fresh,
                        Unless::NewerThan(t) => e.fetched_at > t,
                    };
                    if enough {
                        drop(guard);
                        let _ = tx.send(Some(Landed::Value(e)));
                        return;
                    }
                }
            }
            let landed = match job.await {
                Ok(fetched) => {
                    this.failed.invalidate(&key);
                    let mut entry = Entry::new(fetched, policy);
                    entry.replaced_hits = replaced_hits;
                    entry.replaced_life = replaced_life;
                    let entry = Arc::new(entry);
                    let weight = entry.value.weight() + OVERHEAD;
                    let stats = this.stats.get(entry.policy.rule);
                    if !store {
                    } else if weight > this.options.max_entry_bytes {
                        if let Some(s) = stats {
                            s.not_stored();
                        }
                    } else if this.purges.load(Ordering::SeqCst) == epoch {
                        // A purge while the source was answering wins: the
                        // answer goes to the waiters but is not kept.
                        if let Some(s) = stats {
                            s.stored(weight);
                        }
                        this.stored.insert(key.clone(), ());
                        // The index first: moka's removal of the entry,
                        // which may come at once (not admitted), must find
                        // it there (module docs).
                        this.index.insert(key.clone(), entry.clone());
                        this.entries.insert(key, entry.clone()).await;
                    }
                    Landed::Value(entry)
                }
                Err(e) => {
                    if e.serves_stale() {
                        this.failed.insert(key, ());
                    }
                    Landed::Failed(Arc::new(e))
                }
            };
            // Stored before the flight ends, so no second fetch can start in between.
            drop(guard);
            let _ = tx.send(Some(landed));
        });
        (Some((rx, began, urgency)), true)
    }

    /// Drops every entry (and what fetches in flight would store).
    pub fn purge_all(&self) {
        self.purges.fetch_add(1, Ordering::SeqCst);
        // moka first, then the index: a hit between the two finds the
        // entry in neither (the index falls back to moka).
        self.entries.invalidate_all();
        self.index.clear();
    }

    /// Drops these keys (and what fetches in flight would store).
    pub async fn purge(&self, keys: impl IntoIterator<Item = K>) {
        self.purges.fetch_add(1, Ordering::SeqCst);
        for key in keys {
            self.entries.invalidate(&key).await;
            self.index.remove(&key);
        }
    }

    /// Drops every entry whose key `matches` (and what fetches in flight would store).
    pub fn purge_where(&self, matches: impl Fn(&K) -> bool + Send + Sync + 'static) {
        self.purges.fetch_add(1, Ordering::SeqCst);
        let matches = Arc::new(matches);
        let lazily = matches.clone();
        if self
            .entries
            .invalidate_entries_if(move |k, _| lazily(k))
            .is_err()
        {
            // Only possible without `support_invalidation_closures`, which is set.
            self.purge_all();
            return;
        }
        // moka applies the predicate lazily (its lookups skip what it
        // matches at once); the index, at once.
        self.index.retain(|k, _| !matches(k));
    }

    /// Drops every entry stored under a rule (by index) that `matches`, and
    /// what fetches in flight would store; counts the rules for which
    /// `reset` holds from zero (a reload: README, "Changes while running").
    pub fn purge_rules(
        &self,
        matches: impl Fn(usize) -> bool + Send + Sync + 'static,
        reset: impl Fn(usize) -> bool,
    ) {
        for (i, stats) in self.stats.iter().enumerate() {
            if reset(i) {
                stats.reset_counts();
            }
        }
        self.purges.fetch_add(1, Ordering::SeqCst);
        let matches = Arc::new(matches);
        let lazily = matches.clone();
        if self
            .entries
            .invalidate_entries_if(move |_, e| lazily(e.policy.rule))
            .is_err()
        {
            self.purge_all();
            return;
        }
        self.index.retain(|_, e| !matches(e.policy.rule));
    }

    /// Entries held (approximate, moka's count).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Bytes held (moka's weighted size).
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Client requests that waited for the source.
    pub fn waits(&self) -> Waits {
        self.waits.snapshot()
    }

    /// Counts a client request that waited for the source outside the
    /// cache's own lookups (an uncached route, an operator's `no-cache`);
    /// `uncounted_read` as [`WaitStats::waited`] takes it.
    pub fn waited(&self, why: Wait, uncounted_read: bool) {
        self.waits.waited(why, uncounted_read);
    }

    /// Counters of one rule.
    pub fn rule_stats(&self, rule: usize) -> RuleCounters {
        self.stats_of(rule).snapshot()
    }

    /// The hot keys: those whose stored entry (not a remembered "not
    /// found") and the one it replaced answered at least `min_hits`
    /// requests ([`Entry::heat`]), hottest first (by
    /// [`Entry::heat_per_minute`]), at most `limit` of them. One pass over the entries, for background
    /// work.
    pub fn hot(&self, min_hits: u64, limit: usize) -> Vec<Kept<K, V>> {
        let mut hot: Vec<Kept<K, V>> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.is_negative() && e.heat() >= min_hits)
            .collect();
        // Each entry's heat read once: it moves with the clock.
        hot.sort_by_cached_key(|(_, e)| std::cmp::Reverse((e.heat_per_minute() * 1000.0) as u64));
        hot.truncate(limit);
        hot
    }

    /// The `top` most-hit entries of each of the first `rules` rules,
    /// busiest first (the status page's busiest keys): one pass over the
    /// entries, holding only those kept.
    pub fn busiest(&self, rules: usize, top: usize) -> Vec<Vec<Kept<K, V>>> {
        let mut out: Vec<Vec<Kept<K, V>>> =
            (0..rules).map(|_| Vec::with_capacity(top + 1)).collect();
        if top == 0 {
            return out;
        }
        for (key, entry) in self.entries.iter() {
            let Some(list) = out.get_mut(entry.rule()) else {
                continue;
            };
            let hits = entry.hits();
            if list.len() < top || list.last().is_some_and(|(_, e)| e.hits() < hits) {
                let at = list.partition_point(|(_, e)| e.hits() >= hits);
                list.insert(at, (key, entry));
                list.truncate(top);
            }
        }
        out
    }

    /// Lets moka finish pending bookkeeping (evictions), for exact counts.
    pub async fn settle(&self) {
        self.entries.run_pending_tasks().await;
    }
}

/// A stored entry and its key.
pub type Kept<K, V> = (Arc<K>, Arc<Entry<V>>);

/// A client waits for a flight to land: the flight is urgent from now on.
async fn wait<V, E: Failure>(rx: Option<Joined<V, E>>) -> Landed<V, E> {
    if let Some((_, _, urgency)) = &rx {
        urgency.raise();
    }
    wait_quietly(rx).await
}

/// Waits for a flight to land, as work nobody waits for; a flight whose
/// task died lands as an internal error.
async fn wait_quietly<V, E: Failure>(rx: Option<Joined<V, E>>) -> Landed<V, E> {
    let landed = match rx {
        Some((mut rx, ..)) => match rx.wait_for(Option::is_some).await {
            Ok(l) => l.clone(),
            Err(_) => None,
        },
        None => None,
    };
    landed.unwrap_or_else(|| Landed::Failed(Arc::new(E::internal("fetch ended without an answer"))))
}

/// Removes a key's flight when the fetch task ends, however it ends.
struct FlightGuard<K: Hash + Eq, V, E> {
    /// The shared flight table.
    flights: Flights<K, V, E>,
    /// The key to remove.
    key: K,
}

impl<K: Hash + Eq, V, E> Drop for FlightGuard<K, V, E> {
    fn drop(&mut self) {
        if let Ok(mut f) = self.flights.lock() {
            f.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A value that counts how many of its kind are alive.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Stored for Counted {
        fn weight(&self) -> usize {
            1000
        }
        fn is_negative(&self) -> bool {
            false
        }
    }

    #[derive(Debug)]
    struct Failed;

    /// A 1 MiB cache of one rule.
    fn test_cache(refresh_ahead: bool) -> Cache<String, Counted, Failed> {
        Cache::new(
            Options {
                max_bytes: 1 << 20,
                max_entry_bytes: 1 << 20,
                stale_wait: Duration::from_secs(1),
                refresh_ahead,
                failed_memory: Duration::from_secs(1),
            },
            1,
        )
    }

    /// Rule 0's lifetimes: `ttl`, no stale copies.
    fn test_policy(ttl: Duration) -> Policy {
        Policy {
            rule: 0,
            ttl,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            negative_ttl: Duration::from_secs(1),
        }
    }

    impl Failure for Failed {
        fn serves_stale(&self) -> bool {
            true
        }
        fn internal(_: &'static str) -> Self {
            Failed
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_of_a_failed_fetch_get_its_failure_and_fetch_nothing() {
        let cache: Arc<Cache<String, Counted, Failed>> = Arc::new(test_cache(false));
        let policy = test_policy(Duration::from_secs(60));
        let fetches = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut waiters = Vec::new();
        for _ in 0..20 {
            let (cache, policy, fetches) = (cache.clone(), policy.clone(), fetches.clone());
            waiters.push(tokio::spawn(async move {
                // A source that hangs, then fails (EM's timeout).
                let fetch = move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Err::<Fetched<Counted>, _>(Failed)
                };
                cache
                    .get(&"k".to_string(), &policy, Instant::now(), |_| fetch)
                    .await
                    .is_err()
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for w in waiters {
            assert!(w.await.unwrap(), "a waiter got an answer");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "a waiter fetched again");
        assert!(started.elapsed() < Duration::from_millis(550));
    }

    /// The lookup is polled once in place (and asked again, boxed, in the
    /// rare case it waits for one of the upkeep's locks: not forced here):
    /// a stored entry is a hit for every reader, from several threads,
    /// while writes keep moka's upkeep busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_stored_entry_is_a_hit_for_every_reader_while_the_upkeep_runs() {
        let cache: Arc<Cache<String, Counted, Failed>> = Arc::new(test_cache(false));
        let policy = test_policy(Duration::from_secs(3600));
        let alive = Arc::new(AtomicUsize::new(0));
        let fetches = Arc::new(AtomicUsize::new(0));
        let value = |alive: Arc<AtomicUsize>, fetches: Arc<AtomicUsize>| {
            move |_| {
                move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    alive.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Failed>(Fetched::fresh(Counted(alive)))
                }
            }
        };
        let first = cache
            .get(
                &"k".to_string(),
                &policy,
                Instant::now(),
                value(alive.clone(), fetches.clone()),
            )
            .await;
        assert_eq!(first.ok().map(|s| s.outcome), Some(Outcome::Miss));
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let (cache, policy) = (cache.clone(), policy.clone());
            let (alive, fetches) = (alive.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                let mut hits = 0;
                for _ in 0..5_000 {
                    let served = cache
                        .get(
                            &"k".to_string(),
                            &policy,
                            Instant::now(),
                            value(alive.clone(), fetches.clone()),
                        )
                        .await;
                    hits += usize::from(served.is_ok_and(|s| s.outcome == Outcome::Hit));
                }
                hits
            }));
        }
        // Other keys stored meanwhile (within the cache's size): writes
        // for the upkeep to apply while the readers look up.
        let writer = {
            let (cache, policy, alive) = (cache.clone(), policy.clone(), alive.clone());
            tokio::spawn(async move {
                let others = Arc::new(AtomicUsize::new(0));
                for i in 0..500 {
                    let key = format!("other-{i}");
                    let _ = cache
                        .get(
                            &key,
                            &policy,
                            Instant::now(),
                            value(alive.clone(), others.clone()),
                        )
                        .await;
                }
            })
        };
        for t in tasks {
            assert_eq!(t.await.unwrap(), 5_000, "a read of the stored entry missed");
        }
        writer.await.unwrap();
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            1,
            "the stored entry was fetched again"
        );
    }

    #[tokio::test]
    async fn the_hot_keys_are_those_read_most_a_minute_not_most_ever() {
        let cache: Cache<String, Counted, Failed> = test_cache(false);
        let policy = test_policy(Duration::from_secs(3600));
        let alive = Arc::new(AtomicUsize::new(0));
        let read = |key: &str, times: usize| {
            let (cache, policy, alive) = (&cache, &policy, alive.clone());
            let key = key.to_string();
            async move {
                for _ in 0..=times {
                    let alive = alive.clone();
                    let fetch = move || async move {
                        alive.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Failed>(Fetched::fresh(Counted(alive)))
                    };
                    assert!(cache
                        .get(&key, policy, Instant::now(), |_| fetch)
                        .await
                        .is_ok());
                }
            }
        };
        read("busy", 5).await;
        read("quiet", 3).await;
        read("once", 1).await;
        let hot: Vec<String> = cache
            .hot(2, 10)
            .into_iter()
            .map(|(k, _)| k.to_string())
            .collect();
        // Young entries: by their hits; a key read once is not hot at all.
        assert_eq!(hot, ["busy", "quiet"]);

        // Yesterday's newest point, read 600 times in its first ten minutes
        // and not since (an hour), against one of today's, read 100
        // times in its ten minutes, last just now.
        let min = |m: u64| Duration::from_secs(60 * m);
        let yesterday = heat_per_minute(600, min(70), min(60));
        let today = heat_per_minute(100, min(10), Duration::ZERO);
        assert!(today > yesterday, "{today} {yesterday}");
        assert_eq!(today, 10.0);
        // Unread for a minute at most, nothing cools; an entry's first
        // seconds count as a minute.
        assert_eq!(heat_per_minute(60, min(2), min(1)), 30.0);
        assert_eq!(
            heat_per_minute(2, Duration::from_secs(1), Duration::ZERO),
            2.0
        );
    }

    #[tokio::test]
    async fn an_entry_waiting_for_its_refresh_ahead_is_freed_when_evicted() {
        let cache: Cache<String, Counted, Failed> = test_cache(true);
        let policy = test_policy(Duration::from_secs(3600));
        let alive = Arc::new(AtomicUsize::new(0));
        let fetch = |alive: &Arc<AtomicUsize>| {
            let alive = alive.clone();
            move || async move {
                alive.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Failed>(Fetched::fresh(Counted(alive)))
            }
        };
        let key = "k".to_string();
        let first = cache
            .get(&key, &policy, Instant::now(), |_| fetch(&alive))
            .await;
        assert!(matches!(first, Ok(ref s) if s.outcome == Outcome::Miss));
        drop(first);
        // The first hit schedules the refresh ahead of expiry (in ~45 min).
        let hit = cache
            .get(&key, &policy, Instant::now(), |_| fetch(&alive))
            .await;
        assert!(matches!(hit, Ok(ref s) if s.outcome == Outcome::Hit));
        drop(hit);
        assert_eq!(alive.load(Ordering::SeqCst), 1);
        cache.purge([key]).await;
        // moka's upkeep stops after a few milliseconds of work when an
        // eviction listener is set, so on a busy machine (other tests on
        // the other threads) one round may leave the purge's read
        // records, which hold the entry, for the next: a few rounds, then.
        for _ in 0..100 {
            cache.settle().await;
            tokio::task::yield_now().await;
            if alive.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            alive.load(Ordering::SeqCst),
            0,
            "the scheduled refresh keeps an evicted entry alive"
        );
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            0,
            "the scheduled refresh still waits"
        );
    }

    /// A cache holding `n` test values, one rule, refresh-ahead off.
    fn cache_of(n: u64) -> Cache<String, Counted, Failed> {
        Cache::new(
            Options {
                max_bytes: n * (1000 + OVERHEAD as u64),
                max_entry_bytes: 1 << 20,
                stale_wait: Duration::from_secs(1),
                refresh_ahead: false,
                failed_memory: Duration::from_secs(1),
            },
            1,
        )
    }

    /// Gets `key` from `cache`, storing a new value if it must; how it was served.
    async fn read(
        cache: &Cache<String, Counted, Failed>,
        key: &str,
        alive: &Arc<AtomicUsize>,
    ) -> Outcome {
        let policy = test_policy(Duration::from_secs(3600));
        let alive = alive.clone();
        let fetch = move || async move {
            alive.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Failed>(Fetched::fresh(Counted(alive)))
        };
        match cache
            .get(&key.to_string(), &policy, Instant::now(), |_| fetch)
            .await
        {
            Ok(served) => served.outcome,
            Err(_) => panic!("a fetch that cannot fail failed"),
        }
    }

    /// Runs moka's upkeep until `done` holds (a few rounds: one may stop
    /// early on a busy machine), or gives up after a second.
    async fn settle_until(cache: &Cache<String, Counted, Failed>, done: impl Fn() -> bool) {
        for _ in 0..100 {
            cache.settle().await;
            tokio::task::yield_now().await;
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn entries_evicted_for_room_leave_the_hit_index_and_memory() {
        let cache = cache_of(50);
        let alive = Arc::new(AtomicUsize::new(0));
        for i in 0..500 {
            let key = format!("k{i}");
            assert_eq!(read(&cache, &key, &alive).await, Outcome::Miss);
            // A hit of each (from the index) before the next comes.
            assert_eq!(read(&cache, &key, &alive).await, Outcome::Hit);
        }
        settle_until(&cache, || alive.load(Ordering::SeqCst) <= 50).await;
        // moka holds at most 50; what it evicted, the index let go too.
        assert!(cache.entry_count() <= 50, "{} entries", cache.entry_count());
        assert!(
            alive.load(Ordering::SeqCst) <= 50,
            "{} values alive for 50 entries",
            alive.load(Ordering::SeqCst)
        );
        assert!(cache.index.len() <= 50, "{} indexed", cache.index.len());
    }

    #[tokio::test]
    async fn every_kind_of_purge_empties_the_hit_index_at_once() {
        let cache = cache_of(50);
        let alive = Arc::new(AtomicUsize::new(0));
        type Purge = fn(&Cache<String, Counted, Failed>);
        let purges: [(&str, Purge); 3] = [
            ("all", |c| c.purge_all()),
            ("where", |c| c.purge_where(|k: &String| k.starts_with("k"))),
            ("rules", |c| c.purge_rules(|rule| rule == 0, |_| false)),
        ];
        for (kind, purge) in purges {
            read(&cache, "k", &alive).await;
            assert_eq!(read(&cache, "k", &alive).await, Outcome::Hit, "{kind}");
            purge(&cache);
            assert_eq!(
                read(&cache, "k", &alive).await,
                Outcome::Miss,
                "purge {kind}"
            );
        }
        assert_eq!(read(&cache, "k", &alive).await, Outcome::Hit);
        cache.purge(["k".to_string()]).await;
        assert_eq!(
            read(&cache, "k", &alive).await,
            Outcome::Miss,
            "purge of a key"
        );
    }
}
