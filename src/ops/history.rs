//! What the status page shows over time, kept in memory and bounded: a ring
//! of 10-second slots over the last hour (requests by cache result, EM
//! requests, errors and latency), the busiest clients, and the last errors.
//! No storage: a restart starts afresh, and `/metrics` is the long-term view.
//!
//! One per process (like the metrics recorder): the request path records
//! into it, the status page reads it. It is kept in shards, one per thread
//! that records (up to [`SHARDS`], then shared round-robin): a request
//! locks only its own thread's shard, which no other request thread takes,
//! and the status page merges the shards when it reads. One lock for the
//! whole process was taken by every request on every core.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

// Shards are taken even after a panic poisoned one: counts are plain
// numbers, never left half-written in a way that matters.
use crate::ops::locked;

/// Seconds per slot.
pub const SLOT_SECONDS: u64 = 10;
/// Slots kept: one hour.
pub const SLOTS: usize = 360;
/// Upper bounds (ms) of the EM latency buckets; the last is everything above.
pub const LATENCY_BOUNDS_MS: [u64; 14] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000,
];
/// Distinct clients counted at most (anonymous callers may name themselves).
const CLIENTS: usize = 512;
/// Errors kept, of each kind (5xx, 4xx).
const ERRORS: usize = 50;
/// Shards: enough for one per worker thread of a large machine.
pub const SHARDS: usize = 16;

/// One 10-second slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slot {
    /// Its index: seconds since start / [`SLOT_SECONDS`].
    pub index: u64,
    /// Requests answered from a fresh cache entry.
    pub hit: u64,
    /// Requests answered by an EM fetch (cached routes).
    pub miss: u64,
    /// Requests answered from a stale entry.
    pub stale: u64,
    /// Other requests (uncached routes, probes, logons...).
    pub other: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
    /// Client requests whose answer waited for EM (every reason).
    pub waited: u64,
    /// Of those, reads no rule caches (their answers have no `X-Cache`).
    pub bypassed: u64,
    /// Requests to EM.
    pub em: u64,
    /// Of those, failed (no answer, 5xx).
    pub em_errors: u64,
    /// EM latency counts per bucket of [`LATENCY_BOUNDS_MS`] (and one above).
    pub em_latency: [u64; 15],
}

/// A client's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCounts {
    /// Requests.
    pub requests: u64,
    /// Answers of 4xx/5xx, 429 aside.
    pub errors: u64,
    /// Requests refused for its rate (429).
    pub limited: u64,
}

/// One recent error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorNote {
    /// When.
    pub at: SystemTime,
    /// Route template.
    pub route: String,
    /// Status.
    pub status: u16,
    /// The request id.
    pub request_id: String,
    /// The message the client got (no secrets: errors never hold any).
    pub message: String,
}

struct Inner {
    slots: VecDeque<Slot>,
    /// By name, hashed with foldhash as the cache's keys (every request
    /// looks its client up here).
    clients: HashMap<String, ClientCounts, foldhash::quality::RandomState>,
    /// 5xx answers: the gateway's or EM's trouble.
    server_errors: VecDeque<ErrorNote>,
    /// 4xx answers, apart, so a flood of bad requests (anyone can send
    /// them) never pushes the 5xx out.
    client_errors: VecDeque<ErrorNote>,
}

impl Inner {
    /// The slot of `index`, the current one: created when time moved on.
    /// An index older than the newest slot's (a request that ended just
    /// before another thread sharing the shard opened the next slot) counts
    /// in the newest, so slots stay in order.
    fn slot(&mut self, index: u64) -> Option<&mut Slot> {
        let newest = self.slots.back().map(|s| s.index);
        if newest.is_some_and(|n| n >= index) {
            return self.slots.back_mut();
        }
        self.slots.push_back(Slot {
            index,
            ..Slot::default()
        });
        while self.slots.len() > SLOTS {
            self.slots.pop_front();
        }
        self.slots.back_mut()
    }
}

impl Inner {
    fn new() -> Inner {
        Inner {
            slots: VecDeque::with_capacity(SLOTS),
            clients: HashMap::default(),
            server_errors: VecDeque::with_capacity(ERRORS),
            client_errors: VecDeque::with_capacity(ERRORS),
        }
    }
}

impl Slot {
    /// `other`'s counts added to this slot's (the same 10 seconds in
    /// another shard).
    fn add(&mut self, other: &Slot) {
        self.hit += other.hit;
        self.miss += other.miss;
        self.stale += other.stale;
        self.other += other.other;
        self.errors += other.errors;
        self.waited += other.waited;
        self.bypassed += other.bypassed;
        self.em += other.em;
        self.em_errors += other.em_errors;
        for (mine, theirs) in self.em_latency.iter_mut().zip(other.em_latency) {
            *mine += theirs;
        }
    }
}

/// The process's history.
pub struct History {
    shards: Box<[Mutex<Inner>]>,
    start: Instant,
    started_at: SystemTime,
}

/// The history of this process.
pub fn global() -> &'static History {
    static H: OnceLock<History> = OnceLock::new();
    H.get_or_init(History::new)
}

impl History {
    fn new() -> History {
        History {
            shards: (0..SHARDS).map(|_| Mutex::new(Inner::new())).collect(),
            start: Instant::now(),
            started_at: SystemTime::now(),
        }
    }

    /// This thread's shard, locked.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize =
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SHARDS;
        }
        locked(&self.shards[SHARD.with(|s| *s)])
    }

    /// The current slot's index (taken under the lock, so slots stay in
    /// order whichever thread crosses a boundary first).
    fn index(&self) -> u64 {
        self.start.elapsed().as_secs() / SLOT_SECONDS
    }

    /// When the process started.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// How long it has run.
    pub fn uptime(&self) -> Duration {
        self.start.elapsed()
    }

    /// One request answered at `at` (the caller has read the clock
    /// already): its `X-Cache` (if any), status and client.
    pub fn request(&self, at: Instant, cache: Option<&str>, status: u16, client: Option<&str>) {
        let index = at.saturating_duration_since(self.start).as_secs() / SLOT_SECONDS;
        let mut inner = self.lock();
        if let Some(s) = inner.slot(index) {
            match cache {
                Some("HIT") => s.hit += 1,
                Some("MISS") => s.miss += 1,
                Some("STALE") => s.stale += 1,
                _ => s.other += 1,
            }
            if status >= 500 {
                s.errors += 1;
            }
        }
        let Some(client) = client else { return };
        let counts = |c: &mut ClientCounts| {
            c.requests += 1;
            match status {
                429 => c.limited += 1,
                400.. => c.errors += 1,
                _ => {}
            }
        };
        // Known clients (nearly every request) without allocating a key.
        if let Some(c) = inner.clients.get_mut(client) {
            counts(c);
            return;
        }
        if inner.clients.len() >= CLIENTS {
            // Full: the quietest goes, so the busiest stay.
            if let Some(quiet) = inner
                .clients
                .iter()
                .min_by_key(|(_, c)| c.requests)
                .map(|(k, _)| k.clone())
            {
                inner.clients.remove(&quiet);
            }
        }
        counts(inner.clients.entry(client.to_string()).or_default());
    }

    /// One client request whose answer waited for EM; `uncounted_read`: a
    /// read no rule caches (its answer has no `X-Cache` to count it by).
    pub fn waited(&self, uncounted_read: bool) {
        let mut inner = self.lock();
        let index = self.index();
        if let Some(s) = inner.slot(index) {
            s.waited += 1;
            if uncounted_read {
                s.bypassed += 1;
            }
        }
    }

    /// One request to EM.
    pub fn upstream(&self, elapsed: Duration, ok: bool) {
        let ms = elapsed.as_millis() as u64;
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        let mut inner = self.lock();
        let index = self.index();
        if let Some(s) = inner.slot(index) {
            s.em += 1;
            if !ok {
                s.em_errors += 1;
            }
            s.em_latency[bucket] += 1;
        }
    }

    /// One error answer.
    pub fn error(&self, note: ErrorNote) {
        let mut inner = self.lock();
        let ring = if note.status >= 500 {
            &mut inner.server_errors
        } else {
            &mut inner.client_errors
        };
        if ring.len() >= ERRORS {
            ring.pop_front();
        }
        ring.push_back(note);
    }

    /// The last hour, oldest first, one slot per 10 s (empty ones included),
    /// the current (partial) slot last.
    pub fn slots(&self) -> Vec<Slot> {
        let now = self.index();
        let first = now.saturating_sub(SLOTS as u64 - 1);
        let mut out: Vec<Slot> = (first..=now)
            .map(|index| Slot {
                index,
                ..Slot::default()
            })
            .collect();
        for shard in self.shards.iter() {
            for s in locked(shard).slots.iter() {
                if let Some(slot) = s
                    .index
                    .checked_sub(first)
                    .and_then(|i| out.get_mut(i as usize))
                {
                    slot.add(s);
                }
            }
        }
        out
    }

    /// The busiest clients, by requests.
    pub fn clients(&self, top: usize) -> Vec<(String, ClientCounts)> {
        let mut merged: HashMap<String, ClientCounts> = HashMap::new();
        for shard in self.shards.iter() {
            for (name, c) in locked(shard).clients.iter() {
                let m = merged.entry(name.clone()).or_default();
                m.requests += c.requests;
                m.errors += c.errors;
                m.limited += c.limited;
            }
        }
        let mut all: Vec<_> = merged.into_iter().collect();
        all.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(&b.0)));
        all.truncate(top);
        all
    }

    /// The last errors, newest first: the last `ERRORS` 5xx and the last
    /// `ERRORS` 4xx, merged by time.
    pub fn errors(&self) -> Vec<ErrorNote> {
        let (mut server, mut client) = (Vec::new(), Vec::new());
        for shard in self.shards.iter() {
            let inner = locked(shard);
            server.extend(inner.server_errors.iter().cloned());
            client.extend(inner.client_errors.iter().cloned());
        }
        let newest = |mut notes: Vec<ErrorNote>| {
            // Stable: notes of the same instant stay in the order recorded.
            notes.reverse();
            notes.sort_by_key(|e| std::cmp::Reverse(e.at));
            notes.truncate(ERRORS);
            notes
        };
        let mut all = newest(server);
        all.extend(newest(client));
        all.sort_by_key(|e| std::cmp::Reverse(e.at));
        all
    }
}

/// The latency (ms, a bucket's upper bound) under which `q` of the counts fall.
pub fn quantile_ms(counts: &[u64; 15], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let want = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= want {
            return Some(LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(60_000));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> History {
        History::new()
    }

    fn note(status: u16, id: &str) -> ErrorNote {
        ErrorNote {
            at: SystemTime::now(),
            route: "/api/*".into(),
            status,
            request_id: id.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn a_flood_of_bad_requests_never_pushes_the_server_errors_out() {
        let h = history();
        h.error(note(502, "em-failed"));
        for i in 0..1000 {
            h.error(note(400, &format!("bad-{i}")));
        }
        let errors = h.errors();
        assert_eq!(errors.len(), ERRORS + 1);
        assert!(errors.iter().any(|e| e.request_id == "em-failed"));
        assert_eq!(errors[0].request_id, "bad-999", "newest first");
    }

    #[test]
    fn a_request_that_ended_before_the_newest_slot_counts_in_it_and_slots_stay_in_order() {
        // Started two slots ago.
        let mut h = history();
        let now = Instant::now();
        h.start = now - Duration::from_secs(2 * SLOT_SECONDS);
        h.request(now, Some("HIT"), 200, Some("dash"));
        h.request(h.start, Some("MISS"), 200, Some("dash"));
        let kept: Vec<(u64, u64, u64)> = h
            .shards
            .iter()
            .flat_map(|s| {
                locked(s)
                    .slots
                    .iter()
                    .map(|s| (s.index, s.hit, s.miss))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(kept, [(2, 1, 1)], "no slot opened behind the newest");
        let slots = h.slots();
        let newest = slots.last().unwrap();
        assert_eq!((newest.index, newest.hit, newest.miss), (2, 1, 1));
    }

    #[test]
    fn requests_recorded_on_many_threads_are_all_counted_once() {
        let h = std::sync::Arc::new(history());
        let threads: Vec<_> = (0..SHARDS + 3)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let cache = if i % 4 == 0 { "MISS" } else { "HIT" };
                        h.request(Instant::now(), Some(cache), 200, Some("dash"));
                        h.request(
                            Instant::now(),
                            None,
                            502,
                            Some(if t % 2 == 0 { "even" } else { "odd" }),
                        );
                    }
                    h.error(note(502, &format!("t{t}")));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = (SHARDS + 3) as u64;
        let slots = h.slots();
        let total = slots.iter().fold(Slot::default(), |mut sum, s| {
            sum.add(s);
            sum
        });
        assert_eq!(
            (total.hit, total.miss, total.other),
            (75 * n, 25 * n, 100 * n)
        );
        assert_eq!(total.errors, 100 * n);
        let clients = h.clients(10);
        assert_eq!(
            clients[0],
            (
                "dash".to_string(),
                ClientCounts {
                    requests: 100 * n,
                    errors: 0,
                    limited: 0
                }
            )
        );
        let even = clients.iter().find(|(k, _)| k == "even").unwrap();
        assert_eq!(even.1.errors, 100 * n.div_ceil(2));
        assert_eq!(h.errors().len(), SHARDS + 3);
    }

    #[test]
    fn slots_cover_the_last_hour_and_quantiles_come_from_buckets() {
        let h = history();
        h.request(Instant::now(), Some("HIT"), 200, Some("dash"));
        h.request(Instant::now(), Some("MISS"), 200, Some("dash"));
        h.request(Instant::now(), None, 503, Some("other"));
        h.request(Instant::now(), None, 429, Some("other"));
        for ms in [1, 3, 8, 40, 900] {
            h.upstream(Duration::from_millis(ms), ms < 900);
        }
        let slots = h.slots();
        assert_eq!(slots.len(), 1, "no slot before the start");
        let s = &slots[0];
        assert_eq!((s.hit, s.miss, s.other, s.errors), (1, 1, 2, 1));
        assert_eq!((s.em, s.em_errors), (5, 1));
        assert_eq!(quantile_ms(&s.em_latency, 0.5), Some(10));
        assert_eq!(quantile_ms(&s.em_latency, 0.99), Some(1000));
        let clients = h.clients(10);
        assert_eq!(clients[0].0, "dash");
        assert_eq!(clients[1].1.limited, 1);
        assert_eq!(clients[1].1.errors, 1);
    }
}
