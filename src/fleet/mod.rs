//! Fleet mode's shared tier (see README, "Fleet mode"): the replicas that share a Redis
//! (or Valkey) and a prefix act as one gateway.
//!
//! This module is the only one that knows Redis. It offers small interfaces
//! to the rest: bytes by cache key, leases and "landed" notices for the
//! cache's fetches ([`cache`]), the fleet's EM session sealed at rest
//! ([`session`], behind [`crate::em::session::SessionStore`]), client
//! sessions and rate limits ([`clients`]), purges and membership.
//!
//! Invariants:
//! - Redis failing never fails a request: every operation is bounded by
//!   `EMGATE_SHARED_TIMEOUT`, and after a few failures a breaker stops asking
//!   for a while ([`Down`] at once); callers then go on alone.
//! - Every key of a fleet carries the hash tag `{prefix}`, so the fleet's
//!   keys live in one Redis Cluster slot and its scripts work there too.
//! - Nothing secret is kept in clear: the EM session token is sealed
//!   (ChaCha20-Poly1305), client session tokens are kept as keyed hashes.
//! - Nothing read from Redis is acted on without a MAC (`keys.rs`): a value
//!   that fails is a miss, counted in `emgate_shared_rejected_total{kind}`
//!   and logged once per key, never served.
//! - Under Redis memory pressure only cache entries (and the hot-key list,
//!   a hint) may go: they are the only values with a Redis TTL besides
//!   small counters, so a
//!   `volatile-*` eviction policy never takes a lease, a client session, the
//!   EM session or the fleet's bookkeeping (their expiry is in the value).
//! - Large values travel on a connection of their own, so a big entry never
//!   holds up a lease renewal or a session lookup behind it.

mod budget;
pub mod cache;
pub mod clients;
mod hot;
mod keys;
pub mod session;
pub mod tasks;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushKind, Value};
use tokio::sync::broadcast;

use crate::config::{SharedSettings, UpstreamSettings};
use crate::digest::random_token;

pub use cache::{Lease, Waited};

/// The shared tier could not be asked: go on alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Down;

/// What replicas tell each other on the fleet's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A shared cache entry landed (its key hash).
    Landed(String),
    /// Every cache entry was purged.
    PurgeAll,
    /// Cache entries under this EM path were purged.
    PurgePrefix(String),
    /// The cache entries of this rule were purged.
    PurgeRule(String),
    /// A client session ended (its token's name, hex).
    Logout(String),
    /// The fleet's EM session changed.
    Session,
    /// Not sent: this replica found Redis emptied (restarted, flushed) and
    /// asks its parts to put back what they hold.
    Emptied,
}

/// How old a message may be (clocks of replicas differ a little).
const EVENT_MAX_AGE_MS: u64 = 5 * 60 * 1000;

impl Event {
    fn parts(&self) -> (&'static str, &str) {
        match self {
            Event::Landed(h) => ("landed", h),
            Event::PurgeAll => ("purge-all", "-"),
            Event::PurgePrefix(p) => ("purge", p),
            Event::PurgeRule(r) => ("purge-rule", r),
            Event::Logout(h) => ("logout", h),
            Event::Session | Event::Emptied => ("session", "-"),
        }
    }

    /// `member ms kind mac arg`: the MAC covers all but itself, so a
    /// message nobody with the fleet's secret sent does nothing.
    fn encode(&self, member: &str, keys: &keys::Keys, now_ms: u64) -> String {
        let (kind, arg) = self.parts();
        let ms = now_ms.to_string();
        let mac = keys
            .sign_hex(&[
                b"event",
                member.as_bytes(),
                ms.as_bytes(),
                kind.as_bytes(),
                arg.as_bytes(),
            ])
            .unwrap_or_default();
        format!("{member} {ms} {kind} {mac} {arg}")
    }

    /// The sender and the event of a message, if its MAC holds and it is
    /// recent.
    fn decode(text: &str, keys: &keys::Keys, now_ms: u64) -> Option<(String, Event)> {
        let mut parts = text.splitn(5, ' ');
        let member = parts.next()?;
        let ms = parts.next()?;
        let kind = parts.next()?;
        let mac = parts.next()?;
        let arg = parts.next()?;
        if !keys.verify_hex(
            &[
                b"event",
                member.as_bytes(),
                ms.as_bytes(),
                kind.as_bytes(),
                arg.as_bytes(),
            ],
            mac,
        ) {
            return None;
        }
        let sent: u64 = ms.parse().ok()?;
        if sent.abs_diff(now_ms) > EVENT_MAX_AGE_MS {
            return None;
        }
        let arg = arg.to_string();
        let event = match kind {
            "landed" => Event::Landed(arg),
            "purge-all" => Event::PurgeAll,
            "purge" => Event::PurgePrefix(arg),
            "purge-rule" => Event::PurgeRule(arg),
            "logout" => Event::Logout(arg),
            "session" => Event::Session,
            _ => return None,
        };
        Some((member.to_string(), event))
    }
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Failures in a row after which Redis is not asked for a while.
const BREAKER_FAILURES: u32 = 3;
/// How long it is not asked.
const BREAKER_OPEN: Duration = Duration::from_secs(2);

/// Stops asking Redis for a while after failures, so a Redis that is down
/// or slow costs each request nothing, not the timeout.
struct Breaker {
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Closed: every operation goes. Open: none. When the open time is
    /// over, one operation goes as a probe (the one that moves the open
    /// time on) and the others still wait, so a Redis that is still gone
    /// costs one timeout per period, not one per request.
    fn allow(&self) -> bool {
        let now = self.now_ms();
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if now < until {
            return false;
        }
        if self.failures.load(Ordering::Relaxed) < BREAKER_FAILURES {
            return true;
        }
        self.open_until_ms
            .compare_exchange(
                until,
                now + BREAKER_OPEN.as_millis() as u64,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.open_until_ms.store(0, Ordering::Relaxed);
    }

    fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= BREAKER_FAILURES {
            self.open_until_ms.store(
                self.now_ms() + BREAKER_OPEN.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
    }

    fn up(&self) -> bool {
        self.failures.load(Ordering::Relaxed) == 0
    }
}

struct Inner {
    /// Reconnecting, multiplexed connection (RESP3: pub/sub arrives on it
    /// too) for everything small: leases, sessions, events, bookkeeping.
    conn: ConnectionManager,
    /// A second one for cache entries, so a large value never queues a
    /// lease renewal or a session lookup behind it.
    bulk: ConnectionManager,
    /// `{prefix}`: every key starts with it.
    tag: String,
    /// The fleet's pub/sub channel.
    channel: String,
    /// Bound on one operation.
    timeout: Duration,
    /// Lifetime of a lease without renewal.
    lease: Duration,
    /// Largest entry shared (bytes as stored).
    max_entry: usize,
    /// This replica's id in the fleet.
    member: String,
    /// Stops asking after failures.
    breaker: Breaker,
    /// Events from other replicas: purges, logouts, session changes.
    events: broadcast::Sender<Event>,
    /// "Landed" notices (key hashes), apart: a burst of them must never
    /// make a purge listener lag (lagging purges the local cache).
    landed: broadcast::Sender<String>,
    /// Live members at the last heartbeat.
    members: AtomicU64,
    /// Whether this replica is still a member: cleared by its leave. Held
    /// across a heartbeat and across the leave, so no heartbeat can add
    /// the replica back after it left (the fleet's last replica would then
    /// count it as alive and not log the fleet's session out).
    membership: tokio::sync::Mutex<bool>,
    /// Leases taken over from a replica that stopped renewing them.
    takeovers: AtomicU64,
    /// This replica's configuration generation (reloads applied) and the
    /// tag of what it applied, told to the fleet with each heartbeat.
    config_generation: AtomicU64,
    config_tag: Mutex<String>,
    /// Seals, signs and names.
    keys: keys::Keys,
    /// Keys whose rejected value was logged already (bounded).
    rejected_logged: Mutex<HashSet<String>>,
    /// What this replica knows of Redis's life (see [`Incarnation`]).
    incarnation: Mutex<Incarnation>,
    /// Purges that have not reached the shared tier yet: while any is
    /// pending, this replica takes nothing from the shared tier (it could
    /// be what the purge is about).
    pending_purges: AtomicUsize,
}

/// Redis's life as this replica saw it. A marker (`boot`, no expiry; a
/// random name and the server time it was set at) is set by the first
/// replica that finds none; a marker other than the one a
/// replica knew means Redis lost everything since (restarted without
/// persistence, flushed): replicas put back what they hold.
struct Incarnation {
    /// The marker this replica last saw.
    known: Option<String>,
    /// When it first saw the current one.
    since: Instant,
    /// When the current one was set, if it carries the time (markers of
    /// older replicas do not) and this replica found it at start.
    set_at: Option<Instant>,
}

/// How long after Redis came back empty an unknown client token is looked
/// up again before it is refused (replicas are putting their sessions back).
pub const RESTORING: Duration = Duration::from_secs(10);

/// A handle on the shared tier; cheap to clone.
#[derive(Clone)]
pub struct Fleet(Arc<Inner>);

impl Fleet {
    /// Connects (lazily: a Redis that is down at start is joined later) and
    /// starts the listener of the fleet's channel and the heartbeat.
    /// `max_entry`: the largest entry shared, unless the settings say.
    pub fn start(
        settings: &SharedSettings,
        upstream: &UpstreamSettings,
        max_entry: usize,
    ) -> Result<Fleet, String> {
        let client = client(settings)?;
        let (push_tx, mut push_rx) = tokio::sync::mpsc::unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2))
            .set_push_sender(push_tx)
            .set_automatic_resubscription();
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| format!("EMGATE_SHARED_URL: {}", redact(&e.to_string())))?;
        let bulk_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(500))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let bulk = ConnectionManager::new_lazy_with_config(client, bulk_config)
            .map_err(|e| format!("EMGATE_SHARED_URL: {}", redact(&e.to_string())))?;
        let member = random_token(9)
            .map_err(|e| format!("fleet member id: {e}"))?
            .expose()
            .to_string();
        let (events, _) = broadcast::channel(1024);
        let (landed, _) = broadcast::channel(4096);
        let max_entry = settings
            .max_entry
            .map_or(max_entry, |m| usize::try_from(m).unwrap_or(usize::MAX));
        let fleet = Fleet(Arc::new(Inner {
            conn,
            bulk,
            tag: format!("{{{}}}", settings.prefix),
            channel: format!("{}:events", settings.prefix),
            timeout: settings.timeout,
            lease: settings.lease,
            max_entry,
            member,
            breaker: Breaker {
                failures: AtomicU32::new(0),
                open_until_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            },
            events,
            landed,
            members: AtomicU64::new(0),
            membership: tokio::sync::Mutex::new(true),
            takeovers: AtomicU64::new(0),
            config_generation: AtomicU64::new(0),
            config_tag: Mutex::new(String::new()),
            keys: keys::Keys::new(settings, upstream),
            rejected_logged: Mutex::new(HashSet::new()),
            incarnation: Mutex::new(Incarnation {
                known: None,
                since: Instant::now(),
                set_at: None,
            }),
            pending_purges: AtomicUsize::new(0),
        }));
        // Messages of other replicas, from the connection's push channel.
        let weak = Arc::downgrade(&fleet.0);
        tokio::spawn(async move {
            while let Some(push) = push_rx.recv().await {
                let Some(inner) = weak.upgrade() else { break };
                if push.kind != PushKind::Message {
                    continue;
                }
                let Some(Value::BulkString(payload)) = push.data.get(1) else {
                    continue;
                };
                let Ok(text) = std::str::from_utf8(payload) else {
                    continue;
                };
                match Event::decode(text, &inner.keys, unix_ms()) {
                    Some((_, Event::Landed(h))) => {
                        let _ = inner.landed.send(h);
                    }
                    // Our own purges and logouts are done already.
                    Some((from, event)) if from != inner.member || event == Event::Session => {
                        let _ = inner.events.send(event);
                    }
                    Some(_) => {}
                    None => {
                        Fleet(inner).rejected("event", "the fleet's channel");
                    }
                }
            }
        });
        tokio::spawn(fleet.clone().background());
        Ok(fleet)
    }

    /// Subscribes (until it works), then heartbeats while the process runs,
    /// and now and then ends client sessions nobody used for their idle time.
    async fn background(self) {
        let beat = (self.0.lease / 2).max(Duration::from_millis(500));
        let mut subscribed = false;
        let mut beats: u64 = 0;
        loop {
            if !subscribed {
                let channel = self.0.channel.clone();
                subscribed = self
                    .op(
                        "subscribe",
                        |mut c| async move { c.subscribe(channel).await },
                    )
                    .await
                    .is_ok();
            }
            if self.heartbeat().await.is_ok() {
                let _ = self.tell_config_generation().await;
            }
            if beats % 20 == 0 {
                let _ = self.sweep_sessions().await;
            }
            beats += 1;
            tokio::time::sleep(beat).await;
        }
    }

    /// Records this replica as alive; the live members. Also reads Redis's
    /// marker (setting it if there is none): a new one means Redis lost
    /// everything, and this replica's parts are told to put back what they
    /// hold ([`Event::Emptied`]).
    async fn heartbeat(&self) -> Result<u64, Down> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(HEARTBEAT));
        let keys = (self.key("members"), self.key("boot"));
        let member = self.0.member.clone();
        let dead_after = (self.0.lease * 3).as_millis() as u64;
        let candidate = random_token(9).map_err(|_| Down)?.expose().to_string();
        let member_still = self.0.membership.lock().await;
        if !*member_still {
            return Err(Down);
        }
        let (live, marker, age): (u64, String, i64) = self
            .op("heartbeat", |mut c| async move {
                script
                    .key(keys.0)
                    .key(keys.1)
                    .arg(member)
                    .arg(dead_after)
                    .arg(candidate)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        drop(member_still);
        self.0.members.store(live, Ordering::Relaxed);
        metrics::gauge!("emgate_fleet_members").set(live as f64);
        self.saw_marker(marker, marker_age(age));
        Ok(live)
    }

    /// Takes note of Redis's marker; tells this replica's parts when it
    /// changed.
    fn saw_marker(&self, marker: String, age: Option<Duration>) {
        let emptied = {
            let Ok(mut inc) = self.0.incarnation.lock() else {
                return;
            };
            if inc.known.as_deref() == Some(marker.as_str()) {
                return;
            }
            let emptied = inc.known.is_some();
            inc.known = Some(marker);
            inc.since = Instant::now();
            // The marker's own time only for the one found at start: one
            // that changed under this replica is counted from now, for the
            // replicas that notice later (a heartbeat every half lease)
            // and put their sessions back then.
            inc.set_at = match emptied {
                true => None,
                false => age.and_then(|age| Instant::now().checked_sub(age)),
            };
            emptied
        };
        if emptied {
            tracing::warn!("the shared tier lost its data (Redis restarted or flushed); putting back what this replica holds");
            let _ = self.0.events.send(Event::Emptied);
        }
    }

    /// Whether Redis came back empty a short while ago (replicas are
    /// putting their client sessions back), looking now if need be.
    pub async fn restoring(&self) -> bool {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(MARKER));
        let key = self.key("boot");
        if let Ok((marker, age)) = self
            .op("boot", |mut c| async move {
                script
                    .key(key)
                    .invoke_async::<(Option<String>, i64)>(&mut c)
                    .await
            })
            .await
        {
            match marker {
                Some(m) => self.saw_marker(m, marker_age(age)),
                // Emptied, and nobody has noticed yet: the next heartbeat
                // sets the marker; until then, it is restoring.
                None => return true,
            }
        }
        // Restoring while the marker is young: it was set after Redis came
        // back empty (or new). By the marker's own time when it has one, so
        // a replica that starts long after is not restoring for its first
        // seconds (it made every unknown token wait 3 s there: a rolling
        // restart's stale tokens, a logout); else from when this replica
        // first saw it, as before.
        self.0
            .incarnation
            .lock()
            .map(|inc| inc.known.is_some() && inc.set_at.unwrap_or(inc.since).elapsed() < RESTORING)
            .unwrap_or(false)
    }

    /// Counts a value from Redis that failed its MAC or its checks, and
    /// logs it once per key.
    pub(crate) fn rejected(&self, kind: &'static str, key: &str) {
        metrics::counter!("emgate_shared_rejected_total", "kind" => kind).increment(1);
        let first = self.0.rejected_logged.lock().is_ok_and(|mut seen| {
            if seen.len() >= 1024 {
                seen.clear();
            }
            seen.insert(key.to_string())
        });
        if first {
            tracing::warn!(
                kind,
                key,
                "a value in the shared tier failed its MAC or checks and was ignored \
                 (written by something without the fleet's secret, or EMGATE_SHARED_SECRET differs between replicas)"
            );
        }
    }

    /// Runs one Redis operation on the control connection: not at all while
    /// the breaker is open, bounded by the timeout, counted by name and
    /// result.
    pub(crate) async fn op<T, F, Fut>(&self, name: &'static str, f: F) -> Result<T, Down>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.op_on(false, self.0.timeout, name, f).await
    }

    /// [`Fleet::op`] on the connection for large values, with its own bound.
    pub(crate) async fn bulk_op<T, F, Fut>(
        &self,
        name: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, Down>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.op_on(true, timeout, name, f).await
    }

    async fn op_on<T, F, Fut>(
        &self,
        bulk: bool,
        timeout: Duration,
        name: &'static str,
        f: F,
    ) -> Result<T, Down>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let inner = &self.0;
        if !inner.breaker.allow() {
            record(name, "skipped");
            return Err(Down);
        }
        let conn = if bulk { &inner.bulk } else { &inner.conn };
        let result = tokio::time::timeout(timeout, f(conn.clone())).await;
        match result {
            Ok(Ok(v)) => {
                self.settle(name, None);
                Ok(v)
            }
            Ok(Err(e)) => {
                self.settle(name, Some(Some(&e)));
                Err(Down)
            }
            Err(_) => {
                self.settle(name, Some(None));
                Err(Down)
            }
        }
    }

    /// The breaker, the counters and the log after an operation: `None` for
    /// success, `Some(Some(e))` for Redis's error, `Some(None)` for a
    /// timeout. Not generic, so the many operations share one copy of it.
    fn settle(&self, name: &'static str, failure: Option<Option<&redis::RedisError>>) {
        let inner = &self.0;
        match failure {
            None => {
                inner.breaker.success();
                record(name, "ok");
            }
            // Out of memory and nothing left to evict: Redis is up and
            // answering, it only refused this write (the breaker stays
            // closed, so leases and sessions go on being asked).
            Some(Some(e)) if e.code() == Some("OOM") => {
                inner.breaker.success();
                record(name, "oom");
            }
            // Redis answered, but with something this operation cannot use
            // (a value of another type or shape, written by a stranger, a
            // script refusing it): a bad value, not a Redis that is down, so
            // it must not make every replica go on alone.
            Some(Some(e))
                if matches!(e.kind(), redis::ErrorKind::UnexpectedReturnType)
                    || e.code()
                        .is_some_and(|c| matches!(c, "WRONGTYPE" | "ERR" | "NOSCRIPT")) =>
            {
                inner.breaker.success();
                record(name, "bad_value");
                metrics::counter!("emgate_shared_rejected_total", "kind" => "bad_value")
                    .increment(1);
                tracing::debug!(op = name, error = %redact(&e.to_string()), "the shared tier answered something unusable");
            }
            Some(Some(e)) => {
                tracing::debug!(op = name, error = %redact(&e.to_string()), "shared tier error");
                inner.breaker.failure();
                record(name, "error");
            }
            Some(None) => {
                inner.breaker.failure();
                record(name, "timeout");
            }
        }
    }

    /// The text at `key` (a value to check before it is used), by one GET.
    pub(crate) async fn get_text(
        &self,
        op: &'static str,
        key: &str,
    ) -> Result<Option<String>, Down> {
        let key = key.to_string();
        self.op(op, |mut c| async move {
            redis::cmd("GET").arg(key).query_async(&mut c).await
        })
        .await
    }

    /// `{prefix}:name`.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.0.tag)
    }

    /// Tells the other replicas.
    pub(crate) async fn publish(&self, event: Event) -> Result<(), Down> {
        let channel = self.0.channel.clone();
        let text = self.message(&event);
        self.op("publish", |mut c| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(text)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// `event` as this replica sends it (signed).
    pub(crate) fn message(&self, event: &Event) -> String {
        event.encode(&self.0.member, &self.0.keys, unix_ms())
    }

    /// Events of the other replicas (purges, logouts) and landings.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.0.events.subscribe()
    }

    /// Notices of shared entries landing (their key hashes).
    pub(crate) fn landed(&self) -> broadcast::Receiver<String> {
        self.0.landed.subscribe()
    }

    /// Whether the shared tier answers (`/readyz`'s `shared`).
    pub fn is_up(&self) -> bool {
        self.0.breaker.up()
    }

    /// This replica's configuration is `generation`, of settings and files
    /// whose digest is `digest`: told to the fleet now and with every
    /// heartbeat. The digest itself never leaves the process (it covers
    /// secret files); the fleet sees a MAC of it under the fleet's key, so
    /// equal tags mean equal configurations.
    pub fn set_config_generation(&self, generation: u64, digest: [u8; 32]) {
        self.0
            .config_generation
            .store(generation, Ordering::Relaxed);
        let tag: String = self
            .0
            .keys
            .sign_hex(&[b"settings", &digest])
            .unwrap_or_default()
            .chars()
            .take(16)
            .collect();
        if let Ok(mut t) = self.0.config_tag.lock() {
            *t = tag;
        }
        let fleet = self.clone();
        tokio::spawn(async move {
            let _ = fleet.tell_config_generation().await;
        });
    }

    /// Writes `member -> "generation tag ms mac"` in the fleet's hash of
    /// configurations (README, "Changes while running").
    async fn tell_config_generation(&self) -> Result<(), Down> {
        let generation = self.0.config_generation.load(Ordering::Relaxed).to_string();
        let tag = self
            .0
            .config_tag
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default();
        if tag.is_empty() {
            return Ok(());
        }
        let ms = unix_ms().to_string();
        let member = self.0.member.clone();
        let mac = self
            .0
            .keys
            .sign_hex(&[
                b"config",
                member.as_bytes(),
                generation.as_bytes(),
                tag.as_bytes(),
                ms.as_bytes(),
            ])
            .ok_or(Down)?;
        let key = self.key("config");
        let ttl = (self.0.lease * 3).as_millis() as u64 * 4;
        let value = format!("{generation} {tag} {ms} {mac}");
        self.op("config generation", |mut c| async move {
            redis::pipe()
                .hset(&key, member, value)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Each live member's configuration generation and tag, as they told
    /// it (MACs checked; members silent for three lease times are left
    /// out), this replica's first.
    pub async fn config_generations(&self) -> Result<Vec<(String, u64, String)>, Down> {
        let key = self.key("config");
        let all: std::collections::HashMap<String, String> = self
            .op("config generations", |mut c| async move {
                redis::cmd("HGETALL").arg(&key).query_async(&mut c).await
            })
            .await?;
        let now = unix_ms();
        let dead_after = (self.0.lease * 3).as_millis() as u64;
        let mut out: Vec<(String, u64, String)> = all
            .into_iter()
            .filter_map(|(member, value)| {
                let mut parts = value.splitn(4, ' ');
                let (generation, tag, ms, mac) =
                    (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
                let signed = [
                    b"config".as_slice(),
                    member.as_bytes(),
                    generation.as_bytes(),
                    tag.as_bytes(),
                    ms.as_bytes(),
                ];
                if !self.0.keys.verify_hex(&signed, mac) {
                    return None;
                }
                let at: u64 = ms.parse().ok()?;
                (now.saturating_sub(at) < dead_after).then_some(())?;
                Some((member, generation.parse().ok()?, tag.to_string()))
            })
            .collect();
        let me = self.0.member.clone();
        out.sort_by(|a, b| (b.0 == me).cmp(&(a.0 == me)).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// This replica's id in the fleet.
    pub fn member(&self) -> &str {
        &self.0.member
    }

    /// Live members at the last heartbeat.
    pub fn members(&self) -> u64 {
        self.0.members.load(Ordering::Relaxed)
    }

    /// Leases taken over from replicas that stopped renewing them.
    pub fn takeovers(&self) -> u64 {
        self.0.takeovers.load(Ordering::Relaxed)
    }

    /// The lease lifetime.
    pub fn lease_time(&self) -> Duration {
        self.0.lease
    }
}

fn record(op: &'static str, result: &'static str) {
    metrics::counter!("emgate_shared_operations_total", "op" => op, "result" => result)
        .increment(1);
}

/// A Redis client for the settings (the password set apart from the URL,
/// the CA bundle for `rediss://`).
fn client(settings: &SharedSettings) -> Result<redis::Client, String> {
    use redis::IntoConnectionInfo;
    let mut info = settings
        .url
        .expose()
        .into_connection_info()
        .map_err(|e| format!("EMGATE_SHARED_URL: {}", redact(&e.to_string())))?;
    let mut redis_info = info.redis_settings().clone();
    if let Some(p) = &settings.password {
        redis_info = redis_info.set_password(p.expose());
    }
    // RESP3: the fleet's channel arrives on the same connection, and is
    // subscribed again after every reconnection.
    redis_info = redis_info.set_protocol(redis::ProtocolVersion::RESP3);
    info = info.set_redis_settings(redis_info);
    match &settings.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                format!("EMGATE_SHARED_CA_FILE: cannot read {}: {e}", path.display())
            })?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|e| format!("EMGATE_SHARED_CA_FILE: {}", redact(&e.to_string())))
        }
        None => redis::Client::open(info)
            .map_err(|e| format!("EMGATE_SHARED_URL: {}", redact(&e.to_string()))),
    }
}

/// Checks the settings the way [`Fleet::start`] will use them (for
/// `check-config`): the URL, the password, the CA bundle. The error names
/// the setting at fault and says what is wrong.
pub fn preflight(settings: &SharedSettings) -> Result<(), (&'static str, String)> {
    client(settings).map(|_| ()).map_err(|e| {
        for setting in ["EMGATE_SHARED_CA_FILE", "EMGATE_SHARED_URL"] {
            if let Some(rest) = e.strip_prefix(setting) {
                return (setting, rest.trim_start_matches(": ").to_string());
            }
        }
        ("EMGATE_SHARED_URL", e)
    })
}

/// Error texts of the Redis client may quote the URL: never its password.
fn redact(text: &str) -> String {
    match (text.find("://"), text.find('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &text[..s], &text[at..]),
        _ => text.to_string(),
    }
}

/// Marks a member alive (server time), drops members silent for ARGV[2]
/// ms; how many are alive, Redis's marker (ARGV[3] and the server time, if
/// it had none) and the marker's age in ms (-1: it carries no time).
/// KEYS: members, boot. No expiry on either: eviction must not take them.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('SET', KEYS[2], ARGV[3] .. '@' .. string.format('%.0f', now), 'NX')
local marker = redis.call('GET', KEYS[2])
local at = tonumber(string.match(marker, '@(%d+)$') or '')
return {redis.call('ZCARD', KEYS[1]), marker, at and (now - at) or -1}
";

/// Redis's marker (none: emptied, not noticed yet) and its age in ms, as
/// [`HEARTBEAT`] gives them. KEYS: boot.
const MARKER: &str = r"
local marker = redis.call('GET', KEYS[1])
if not marker then return {false, -1} end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local at = tonumber(string.match(marker, '@(%d+)$') or '')
return {marker, at and (now - at) or -1}
";

/// A marker's age from a script's answer (negative: unknown).
fn marker_age(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_failures_and_lets_one_probe_through_after() {
        let b = Breaker {
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        assert!(b.allow() && b.up());
        for _ in 0..BREAKER_FAILURES {
            b.failure();
        }
        assert!(!b.allow(), "open");
        assert!(!b.up());
        // The open time is over: one probe, the others still wait.
        b.open_until_ms.store(b.now_ms(), Ordering::Relaxed);
        assert!(b.allow(), "the probe");
        assert!(!b.allow() && !b.allow(), "only one probe");
        b.success();
        assert!(b.allow() && b.allow() && b.up(), "closed again");
    }

    fn keys(secret: &str) -> keys::Keys {
        let env: Vec<(String, String)> = [
            ("EMGATE_UPSTREAM_URL", "https://em:9398"),
            ("EMGATE_UPSTREAM_USERNAME", "u"),
            ("EMGATE_UPSTREAM_PASSWORD", "p"),
            ("EMGATE_SHARED_URL", "redis://127.0.0.1:6379"),
            ("EMGATE_SHARED_SECRET", secret),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let s = crate::config::Settings::load(&crate::config::Sources {
            file: None,
            demo: &[],
            env: &lookup,
        })
        .unwrap();
        keys::Keys::new(s.shared.as_ref().unwrap(), &s.upstream)
    }

    #[test]
    fn events_travel_as_one_signed_line_each_and_forged_or_old_ones_do_nothing() {
        let k = keys("a-fleet-secret-0123456789");
        let now = unix_ms();
        for e in [
            Event::Landed("ab12".into()),
            Event::PurgeAll,
            Event::PurgePrefix("/api/reports".into()),
            Event::PurgeRule("reports_summary".into()),
            Event::Logout("ff00".into()),
            Event::Session,
        ] {
            let text = e.encode("m1", &k, now);
            assert_eq!(Event::decode(&text, &k, now), Some(("m1".to_string(), e)));
        }
        assert_eq!(Event::decode("m1 nonsense x", &k, now), None);
        assert_eq!(
            Event::decode("m1 purge-all -", &k, now),
            None,
            "the old unsigned form"
        );
        let text = Event::PurgeAll.encode("m1", &k, now);
        let other = keys("another-secret-0123456789");
        assert_eq!(
            Event::decode(&text, &other, now),
            None,
            "signed by someone else"
        );
        assert_eq!(
            Event::decode(&text, &k, now + EVENT_MAX_AGE_MS + 1),
            None,
            "replayed later"
        );
        let altered = Event::PurgePrefix("/api/a".into())
            .encode("m1", &k, now)
            .replace("/api/a", "/api");
        assert_eq!(Event::decode(&altered, &k, now), None, "argument altered");
        assert_eq!(
            redact("connection to redis://user:pw@host:6379 failed"),
            "connection to redis://***@host:6379 failed"
        );
    }
}
