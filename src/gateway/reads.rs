//! Reads of EM's API: every GET and HEAD under `/api` that the gateway does
//! not answer itself comes here (see README, "HTTP surface"; README, "Cache rules").
//!
//! - A path some cache rule covers is served from the cache: one EM fetch per
//!   key and rule lifetime, stale copies while EM is slow or failing,
//!   refreshes ahead of expiry, `ETag`/`Last-Modified` and 304s.
//! - Any other read is *collapsed* (`EMGATE_COLLAPSE`): identical concurrent
//!   requests make one EM request, nothing is stored. This is safe because
//!   every client sees EM through the same pooled session: EM's answer to
//!   one is EM's answer to all of them.
//!
//! Invariants:
//! - The key ([`CacheKey`]) is built from the parsed target alone (decoded
//!   path, normalised query); nothing else a client sends reaches it or the
//!   EM request made for it (only the request id goes along), so no client
//!   can shape another's answer. Links are filled in per client when served.
//! - A hit never converts: entries hold every representation, ready.
//! - A client's `Cache-Control: no-cache` reaches EM only when it presents
//!   the admin token: EM is what the gateway protects.

use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, AGE, CACHE_CONTROL, ETAG, LAST_MODIFIED, PRAGMA,
};
use http::{Method, Response, StatusCode};

use arc_swap::ArcSwap;

use crate::cache::{Cache, Fetched, Outcome, Policy, Served, Source};
use crate::config::rules::{PathTemplate, Segment, VM_RESTORE_POINTS};
use crate::config::{CacheSettings, Settings};
use crate::em::background::Admission;
use crate::em::client::{Lane, UpstreamError};
use crate::em::session::EmError;
use crate::em::session::SessionPool;
use crate::fleet::{Fleet, Waited};
use crate::gateway::context::Ctx;
use crate::gateway::error::{ErrorMessage, GatewayError};
use crate::gateway::heads::{Heads, Name};
use crate::gateway::proxy::X_REQUEST_ID;
use crate::gateway::render::{self, Prepared, Representation};
use crate::gateway::response::Body;
use crate::gateway::target::{canonical_pairs, Target};
use crate::ops::metrics::{Refresh, Wait, Work};
use tracing::Instrument;

/// `X-Cache: HIT|MISS|STALE`.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// RFC 9211 `Cache-Status`.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What reads use of the gateway's state, and nothing more: the settings,
/// the pooled EM session, the cache and its rules, the fleet's tier. A
/// handler of reads cannot reach client sessions or the admin token (see
/// the README's code map: each phase gets only the state it uses).
pub struct ReadState {
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// The pooled EM session and client.
    pub pool: Arc<SessionPool>,
    /// The cache of reads (every rule's entries, and the collapsing of
    /// uncached reads).
    pub cache: ReadCache,
    /// The cache rules, in the order they are tried; a reload replaces
    /// them whole ([`replace_rules`]).
    pub rules: LiveRules,
    /// Uncached reads that shared another's EM fetch.
    pub collapse_stats: CollapseStats,
    /// Fleet mode's shared tier.
    pub fleet: Option<Fleet>,
    /// Where EM's listings of the newest restore points (a portal's query,
    /// fetched for a client or refreshed ahead) hand their ids to the
    /// prefetch, which fetches the new ones at once (README, "Warm");
    /// `None` with prefetch off.
    pub listed: Option<tokio::sync::mpsc::Sender<Vec<String>>>,
}

/// The cache of reads.
pub type ReadCache = Cache<CacheKey, Prepared, GatewayError>;

/// A cache (or collapsing) key: the decoded path and normalised query,
/// written canonically. Literal segments of the matching rule's template and
/// `{id}`s are lowercased (EM ignores their case); other segments keep theirs.
/// Query names are lowercased, `format`'s value too, `v` is dropped, pairs
/// are sorted. The representation is not part of it: an entry holds all.
///
/// Shared (`Arc`): the key a hit looks up is the remembered target's, and
/// the entry's is a clone of the one that missed, so on a worker thread the
/// two are one allocation and compare by pointer before any byte.
///
/// Its text is hashed once, when the key is made, with a seed drawn per
/// process (so no client can choose keys that collide); the cache's maps
/// then hash that number, not the text (a hit's lookup: about 60
/// instructions less for a 70-byte path). Keys are equal when their texts
/// are.
#[derive(Debug, Clone)]
pub struct CacheKey {
    text: Arc<str>,
    hash: u64,
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &CacheKey) -> bool {
        // Equal texts have equal hashes (one seed per process).
        self.hash == other.hash && self.text == other.text
    }
}

impl Eq for CacheKey {}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl CacheKey {
    fn new(text: Arc<str>) -> CacheKey {
        static SEED: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
        let hash = std::hash::BuildHasher::hash_one(SEED.get_or_init(Default::default), &*text);
        CacheKey { text, hash }
    }

    /// The key as text (`/api/...?...`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The key's path, without the query.
    pub fn path(&self) -> &str {
        self.text.split('?').next().unwrap_or(&self.text)
    }
}

/// A cache rule, ready to match.
pub struct ReadRule {
    /// Its name (the metrics label).
    pub name: String,
    /// What it covers.
    pub template: PathTemplate,
    /// Its lifetimes.
    pub policy: Policy,
    /// The route label of requests it answers (its template; rules are few).
    pub label: &'static str,
    /// The built-in vmRestorePoints rule: other query parameters than
    /// `format` and `v` bypass it (see README, "HTTP surface").
    vm: bool,
}

/// The rules, in the order they are tried.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<ReadRule>,
    /// Tells this set of rules from any other in the process, so a
    /// [`Resolved`] worked out under other rules is never used.
    id: u64,
}

impl std::fmt::Debug for ReadRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadRule")
            .field("name", &self.name)
            .field("path", &self.label)
            .finish_non_exhaustive()
    }
}

/// A target with what a read needs of it, worked out once per distinct
/// target (see [`Rules::resolve`]): the parsed target, the rule covering it
/// and its cache key.
#[derive(Debug)]
pub struct Resolved {
    /// The path and query exactly as the client sent them.
    raw: Box<str>,
    /// The rules it was worked out under (a reload may have replaced them
    /// since: its rule and key stay those of these).
    rules: Arc<Rules>,
    /// The parsed target.
    pub target: Target,
    /// The index of the first rule covering it.
    rule: Option<usize>,
    /// Its key for a GET (a HEAD of an uncached route has its own).
    key: CacheKey,
    /// Whether it names a restore point by something that is not a UUID
    /// (refused before EM sees it, whatever the route).
    bad_restore_point: bool,
    /// Whether its path is plain text (`ops::logging::is_plain`): the
    /// access line then quotes it without looking at each byte.
    path_is_plain: bool,
}

/// Distinct targets remembered per worker thread, at most. Past it a new
/// target takes the place of an arbitrary one, so the memory is bounded
/// (about 600 bytes a target: some 2.5 MB a thread) whatever clients send,
/// and a flood of distinct targets costs each one the parse it would have
/// cost anyway. 4,096 holds a dashboard fleet's working set: a map rather
/// than a direct-mapped array: there 1,000 targets in 256 slots evicted
/// each other most of the time (`benches/load.sh`, 1,000 keys), and would
/// a fifth of the time in 4,096.
const RESOLVED_MAX: usize = 4096;

/// Longest target remembered: the targets worth remembering are the few
/// that dashboards repeat, and they are short.
const RESOLVED_MAX_LEN: usize = 256;

/// A worker thread's remembered targets: by the hash of the exact bytes the
/// client sent (a per-thread random hasher), each checked against those
/// bytes before use, so a hash collision costs a parse and nothing else.
/// The hasher is foldhash's (as the cache's keys, `cache::KeyHasher`):
/// a hit hashes its target's bytes once here, and the map hashes that
/// hash again.
struct Remembered {
    hasher: foldhash::quality::RandomState,
    targets: std::collections::HashMap<u64, Arc<Resolved>, foldhash::fast::RandomState>,
}

thread_local! {
    static RESOLVED: std::cell::RefCell<Remembered> = std::cell::RefCell::new(Remembered {
        hasher: foldhash::quality::RandomState::default(),
        targets: std::collections::HashMap::default(),
    });
}

/// The cache rules in force, and their id beside them: a request checks
/// the target it remembers against the id (an atomic load) instead of
/// loading the rules (an `ArcSwap` load: about 75 instructions, and a hit
/// made two, to resolve its target and to check that no reload replaced
/// the rules since; see BENCHMARKS.md). Invariant: `id` is the id of
/// `rules`, or of the rules they replaced while a replacement is under
/// way (a request then uses the rules it would have used a moment
/// earlier).
pub struct LiveRules {
    rules: ArcSwap<Rules>,
    id: AtomicU64,
}

impl LiveRules {
    /// `rules` in force.
    pub fn new(rules: Rules) -> LiveRules {
        LiveRules {
            id: AtomicU64::new(rules.id),
            rules: ArcSwap::from_pointee(rules),
        }
    }

    /// The rules in force.
    pub fn load(&self) -> arc_swap::Guard<Arc<Rules>> {
        self.rules.load()
    }

    /// The rules in force, to keep.
    pub fn load_full(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// The id of the rules in force.
    pub fn id(&self) -> u64 {
        self.id.load(Ordering::Acquire)
    }

    /// Puts `rules` in force.
    pub fn store(&self, rules: Rules) {
        let id = rules.id;
        self.rules.store(Arc::new(rules));
        self.id.store(id, Ordering::Release);
    }

    /// The target of a request resolved under the rules in force (see
    /// [`Rules::resolve`]); a target remembered under them is found
    /// without loading them.
    pub fn resolve(&self, path: &str, query: Option<&str>) -> Result<Arc<Resolved>, GatewayError> {
        let slot = remembered(self.id(), path, query);
        match slot {
            Some((_, Some(known))) => Ok(known),
            // The hash does not depend on the rules: not computed again.
            _ => self
                .load()
                .resolve_new(slot.map(|(hash, _)| hash), path, query),
        }
    }
}

/// The target `path` and `query` as this thread remembers it under the
/// rules `id`: `None` if it is too long to be remembered, else its hash
/// in the memo and what the memo holds for it.
fn remembered(id: u64, path: &str, query: Option<&str>) -> Option<(u64, Option<Arc<Resolved>>)> {
    use std::hash::BuildHasher;
    let raw_len = path.len() + query.map_or(0, |q| q.len() + 1);
    let same = |r: &Resolved| {
        r.rules.id == id
            && r.raw.len() == raw_len
            && r.raw.starts_with(path)
            && match query {
                None => r.raw.len() == path.len(),
                Some(q) => r.raw[path.len()..].strip_prefix('?') == Some(q),
            }
    };
    (raw_len <= RESOLVED_MAX_LEN).then(|| {
        RESOLVED.with_borrow(|memo| {
            let hash = memo.hasher.hash_one((path, query));
            (hash, memo.targets.get(&hash).filter(|r| same(r)).cloned())
        })
    })
}

impl Rules {
    /// The rules of the settings.
    pub fn new(settings: &CacheSettings) -> Rules {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Rules {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            rules: settings
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| ReadRule {
                    name: r.name.clone(),
                    template: r.path.clone(),
                    policy: Policy {
                        rule: i,
                        ttl: r.ttl,
                        stale_while_revalidate: r.stale_while_revalidate,
                        stale_if_error: r.stale_if_error,
                        negative_ttl: settings.negative_ttl,
                    },
                    label: label_of(&r.path.to_string()),
                    vm: r.name == VM_RESTORE_POINTS,
                })
                .collect(),
        }
    }

    /// The first rule covering `target`, if any.
    pub fn find(&self, target: &Target) -> Option<&ReadRule> {
        self.rules
            .iter()
            .find(|r| r.template.matches(target.segments()) && (!r.vm || vm_query_ok(target)))
    }

    /// All rules, in order.
    pub fn all(&self) -> &[ReadRule] {
        &self.rules
    }

    /// The target of a request (`path` and `query` of its URI) parsed,
    /// matched to its rule and keyed, remembered per worker thread by the
    /// exact bytes the client sent: a dashboard repeating a request pays
    /// for a hash and a comparison instead of decoding, matching and
    /// re-encoding. Only targets that parse are remembered (a client
    /// sending garbage gets its 400 the slow way and leaves nothing
    /// behind), and only what the target alone decides is in a
    /// [`Resolved`]: every check that depends on the caller still runs.
    pub fn resolve(
        self: &Arc<Self>,
        path: &str,
        query: Option<&str>,
    ) -> Result<Arc<Resolved>, GatewayError> {
        let slot = remembered(self.id, path, query);
        if let Some((_, Some(known))) = slot {
            return Ok(known);
        }
        self.resolve_new(slot.map(|(hash, _)| hash), path, query)
    }

    /// A target not remembered under these rules, resolved and remembered
    /// under `hash` (its memo hash; `None`: too long to remember).
    fn resolve_new(
        self: &Arc<Self>,
        hash: Option<u64>,
        path: &str,
        query: Option<&str>,
    ) -> Result<Arc<Resolved>, GatewayError> {
        let raw_len = path.len() + query.map_or(0, |q| q.len() + 1);
        let target = Target::parse(path, query)?;
        let rule_index = self
            .rules
            .iter()
            .position(|r| r.template.matches(target.segments()) && (!r.vm || vm_query_ok(&target)));
        let key = cache_key(&target, rule_index.and_then(|i| self.rules.get(i)), false);
        let bad_restore_point = crate::gateway::restore_points::restore_point_segment(&target)
            .is_some_and(|id| crate::gateway::restore_points::RestorePointId::parse(id).is_none());
        let path_is_plain = crate::ops::logging::is_plain(path);
        let mut raw = String::with_capacity(raw_len);
        raw.push_str(path);
        if let Some(q) = query {
            raw.push('?');
            raw.push_str(q);
        }
        let resolved = Arc::new(Resolved {
            raw: raw.into(),
            rules: self.clone(),
            target,
            rule: rule_index,
            key,
            bad_restore_point,
            path_is_plain,
        });
        if let Some(hash) = hash {
            RESOLVED.with_borrow_mut(|memo| {
                if memo.targets.len() >= RESOLVED_MAX && !memo.targets.contains_key(&hash) {
                    // Full: the first in the table's (hash) order goes, an
                    // arbitrary one; O(1) in a full table.
                    if let Some(&old) = memo.targets.keys().next() {
                        memo.targets.remove(&old);
                    }
                }
                memo.targets.insert(hash, resolved.clone());
            });
        }
        Ok(resolved)
    }
}

impl Resolved {
    /// Whether the target names a restore point by something that is not
    /// a UUID: checked once per distinct target, with the parse.
    pub fn names_a_bad_restore_point(&self) -> bool {
        self.bad_restore_point
    }

    /// Whether the target's path is plain text (checked once, with the parse).
    pub fn path_is_plain(&self) -> bool {
        self.path_is_plain
    }

    /// The rule covering the target (among the rules it was resolved under).
    pub fn rule(&self) -> Option<&ReadRule> {
        self.rule.and_then(|i| self.rules.rules.get(i))
    }

    /// The cache key of a GET (`head: false`) or HEAD of the target.
    pub fn key(&self, head: bool) -> Cow<'_, CacheKey> {
        match (head, self.rule()) {
            (true, None) => Cow::Owned(cache_key(&self.target, None, true)),
            _ => Cow::Borrowed(&self.key),
        }
    }
}

/// A rule's route label: one `&'static str` per distinct template for the
/// life of the process (metrics labels are static), made once however
/// often a reload brings the same rule back.
fn label_of(template: &str) -> &'static str {
    static LABELS: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut labels = LABELS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = labels.iter().find(|l| **l == template) {
        return known;
    }
    let label: &'static str = Box::leak(template.to_string().into_boxed_str());
    labels.push(label);
    label
}

/// A reload's rules (README, "Changes while running"). A rule that keeps
/// its place, name, path and lifetimes keeps its entries; the entries of a
/// rule that changed or went are dropped, with what fetches in flight
/// would store, so the next request of them is fetched under the new rule
/// (the shared tier's entries keep the lifetimes they were stored with).
/// A place whose rule has another name now counts from zero. The names of
/// the rules whose entries were dropped, and of those added.
pub fn replace_rules(state: &ReadState, new: Rules) -> (Vec<String>, Vec<String>) {
    let old = state.rules.load_full();
    let same = |a: &ReadRule, b: &ReadRule| {
        a.name == b.name && a.label == b.label && a.policy == b.policy && a.vm == b.vm
    };
    let places = old.rules.len().max(new.rules.len());
    let changed: Vec<usize> = (0..places)
        .filter(|&i| match (old.rules.get(i), new.rules.get(i)) {
            (Some(a), Some(b)) => !same(a, b),
            _ => true,
        })
        .collect();
    if changed.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let dropped: Vec<String> = changed
        .iter()
        .filter_map(|&i| old.rules.get(i).map(|r| r.name.clone()))
        .collect();
    let added: Vec<String> = new
        .rules
        .iter()
        .filter(|r| !old.rules.iter().any(|o| o.name == r.name))
        .map(|r| r.name.clone())
        .collect();
    let renamed: Vec<usize> = changed
        .iter()
        .copied()
        .filter(|&i| old.rules.get(i).map(|r| &r.name) != new.rules.get(i).map(|r| &r.name))
        .collect();
    state.rules.store(new);
    state.cache.purge_rules(
        move |rule| changed.contains(&rule),
        |i| renamed.contains(&i),
    );
    (dropped, added)
}

/// The vmRestorePoints route caches the references and `format=Entity`
/// only; `v` (which some clients add to every request) does not change the
/// answer.
fn vm_query_ok(target: &Target) -> bool {
    target.query().iter().all(|(name, value)| {
        name.eq_ignore_ascii_case("v")
            || (name.eq_ignore_ascii_case("format")
                && value
                    .as_deref()
                    .is_some_and(|v| v.eq_ignore_ascii_case("entity")))
    })
}

/// The key of `target` under `rule` (or, for collapsing, none).
pub fn cache_key(target: &Target, rule: Option<&ReadRule>, head: bool) -> CacheKey {
    thread_local! {
        /// Where a worker thread writes its keys: a key costs the one
        /// allocation it is shared in, not a second one to build it in.
        static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut path) => {
            path.clear();
            write_key(target, rule, head, &mut path);
            CacheKey::new(Arc::from(path.as_str()))
        }
        // Never (nothing here calls back), but no reason to fail.
        Err(_) => {
            let mut path = String::new();
            write_key(target, rule, head, &mut path);
            CacheKey::new(path.into())
        }
    })
}

/// [`cache_key`]'s text, into `path`.
fn write_key(target: &Target, rule: Option<&ReadRule>, head: bool, path: &mut String) {
    path.push_str("/api");
    let template = rule.map(|r| r.template.segments()).unwrap_or(&[]);
    // What a `*` or `**` (always last) matches keeps its case.
    target.push_path(
        |i| matches!(template.get(i), Some(Segment::Literal(_) | Segment::Id)),
        path,
    );
    let mut pairs: Vec<(String, Option<String>)> = target
        .query()
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("v"))
        .map(|(n, v)| {
            let n = n.to_ascii_lowercase();
            let v = if n == "format" {
                v.as_ref().map(|v| v.to_ascii_lowercase())
            } else {
                v.clone()
            };
            (n, v)
        })
        .collect();
    pairs.sort();
    if let Some(q) = canonical_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_deref()))) {
        path.push('?');
        path.push_str(&q);
    }
    // A HEAD's EM request keeps no body, so it cannot stand in for a GET's.
    if head && rule.is_none() {
        path.push_str(" HEAD");
    }
}

/// EM's answer for `path` (an [`em_target`]), prepared for every client.
async fn em_fetch(
    state: Arc<ReadState>,
    path: String,
    request_id: Option<HeaderValue>,
    head: bool,
    cacheable: bool,
    lane: Lane,
) -> Result<Fetched<Prepared>, GatewayError> {
    let pool = &state.pool;
    let mut em_headers = HeaderMap::new();
    if let Some(id) = request_id {
        em_headers.insert(X_REQUEST_ID, id);
    }
    // A collapsed HEAD keeps no body; a cached entry must (GETs use it).
    let discard = head && !cacheable;
    let em = pool.get(&path, em_headers, discard, lane).await?;
    if em.status == StatusCode::OK {
        hand_listed_to_prefetch(&state, &path, &em.body);
    }
    let base = pool.upstream().base_url();
    // JSON and XML both: twice the body's room for the conversion.
    let _room = pool
        .upstream()
        .reserve(render::conversion_room(&em, false))
        .await
        .map_err(EmError::Upstream)?;
    let prepared = Prepared::from_em(&em, base, state.settings.json_case)?;
    match em.status {
        // Only EM's considered answers are stored: the resource, or that it
        // does not exist.
        StatusCode::OK | StatusCode::NOT_FOUND => Ok(Fetched::fresh(prepared)),
        _ if !cacheable => Ok(Fetched::fresh(prepared)),
        status => Err(GatewayError::Em {
            status,
            prepared: Box::new(prepared),
        }),
    }
}

/// Hands the restore points of EM's answer to `path`, if it lists the
/// newest first, to the prefetch: a portal that shows a new point is about
/// to ask for it. Never waits: with the prefetch's queue full, the next
/// look finds the points instead.
fn hand_listed_to_prefetch(state: &ReadState, path: &str, body: &[u8]) {
    use crate::gateway::restore_points::{listed, lists_newest_first};
    let Some(prefetch) = &state.listed else {
        return;
    };
    if !lists_newest_first(path) {
        return;
    }
    let (ids, _) = listed(body, crate::gateway::restore_points::LISTED_MAX);
    if ids.is_empty() {
        return;
    }
    if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = prefetch.try_send(ids) {
        tracing::debug!("prefetch: its queue is full; a listing's points wait for the next look");
    }
}

/// What EM is asked for a target: its canonical path and query, without `v`,
/// and `format` spelt as EM's docs spell it (`format=Entity`): requests that
/// share a key may have written it in any case.
fn em_target(target: &Target) -> String {
    let mut out = target.canonical_path();
    let pairs: Vec<(&str, Option<String>)> = target
        .query()
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("v"))
        .map(|(n, v)| {
            if n.eq_ignore_ascii_case("format") {
                ("format", v.as_deref().map(em_format))
            } else {
                (n.as_str(), v.clone())
            }
        })
        .collect();
    if let Some(q) = canonical_pairs(pairs.iter().map(|(n, v)| (*n, v.as_deref()))) {
        out.push('?');
        out.push_str(&q);
    }
    out
}

/// A `format` value as EM's docs write it: `Entity`, `Entities`, `References`.
fn em_format(value: &str) -> String {
    let mut chars = value.chars();
    match chars.next() {
        Some(first) => {
            first.to_ascii_uppercase().to_string() + &chars.as_str().to_ascii_lowercase()
        }
        None => String::new(),
    }
}

/// Requests of uncached routes that shared another's EM fetch.
#[derive(Debug, Default)]
pub struct CollapseStats {
    /// Count.
    pub collapsed: AtomicU64,
}

/// Whether the client asks for a fresh answer (`Cache-Control: no-cache` or
/// `max-age=0`, or `Pragma: no-cache`).
fn wants_fresh(headers: &HeaderMap) -> bool {
    let listed = |name: HeaderName, what: &[&str]| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|d| what.iter().any(|w| d.trim().eq_ignore_ascii_case(w)))
            })
        })
    };
    listed(CACHE_CONTROL, &["no-cache", "max-age=0"]) || listed(PRAGMA, &["no-cache"])
}

/// Answers a GET or HEAD of `/api` that goes to EM.
///
/// What goes to EM runs in the request's span (a refresh ahead of expiry
/// in the span of the request that caused it); a hit makes none.
pub async fn serve(
    state: &Arc<ReadState>,
    ctx: &Ctx,
    method: &Method,
    headers: &Heads<'_>,
    resolved: &Resolved,
    operator: bool,
) -> Result<Response<Body>, GatewayError> {
    let to = &ctx.to;
    let head = method == Method::HEAD;
    // Rules a reload replaced since the edge resolved the target: resolved
    // again, so nothing is stored under a rule that is gone (its entries
    // were purged with the replacement).
    let again;
    let resolved = if state.rules.id() != resolved.rules.id {
        let (path, query) = match resolved.raw.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (&*resolved.raw, None),
        };
        again = state.rules.resolve(path, query)?;
        &*again
    } else {
        resolved
    };
    let target = &resolved.target;
    let rule = resolved.rule();
    // One fetch serves every client: only the request id of the client
    // that caused it goes along, nothing that could shape the answer.
    let request_id = ctx.request_id();
    let fetch = |cacheable: bool| {
        ctx.traced(em_fetch(
            state.clone(),
            em_target(target),
            Some(request_id.clone()),
            head,
            cacheable,
            Lane::Client,
        ))
    };
    let em_base = state.pool.upstream().base_url();
    let Some(rule) = rule else {
        state.cache.waited(Wait::Bypass, true);
        if !state.settings.cache.collapse {
            let forward = crate::gateway::proxy::forward(
                &state.pool,
                method,
                target,
                headers.map(),
                ctx.request_id(),
                to,
            );
            return Box::pin(ctx.traced(forward)).await;
        }
        let key = resolved.key(head);
        let em = fetch(false);
        // Boxed here and below, where EM is asked anyway: the future of a
        // hit the full path answers (a 304, another base) keeps only the
        // lookup's size.
        let served = match Box::pin(state.cache.collapse(key.into_owned(), move || em)).await {
            Ok(s) => s,
            Err(error) => {
                let mut r = error.to_response(to);
                r.extensions_mut()
                    .insert(ErrorMessage(error.client_message()));
                if head {
                    *r.body_mut() = Body::default();
                }
                return Ok(r);
            }
        };
        if served.collapsed {
            state
                .collapse_stats
                .collapsed
                .fetch_add(1, Ordering::Relaxed);
        }
        let status = if served.collapsed {
            "emgate; fwd=bypass; collapsed"
        } else {
            "emgate; fwd=bypass"
        };
        let mut r = respond(&served.entry.value, to, em_base, head);
        r.headers_mut()
            .insert(CACHE_STATUS, HeaderValue::from_static(status));
        return Ok(r);
    };
    let key = resolved.key(head);
    let fresh = operator && wants_fresh(headers.map());
    let tiered = |why: Refresh| rule_fetch(state, resolved, rule, request_id, head, fresh).job(why);
    let result = if fresh {
        // Answered `MISS`: the history counts the read by that.
        state.cache.waited(Wait::Bypass, false);
        Box::pin(
            state
                .cache
                .refetch(key.as_ref().clone(), &rule.policy, tiered(Refresh::Miss)),
        )
        .await
    } else {
        state
            .cache
            .get(&key, &rule.policy, ctx.taken_up(), tiered)
            .await
    };
    let served = match result {
        Ok(s) => s,
        Err(error) => {
            if error.status().is_server_error() {
                ctx.span().in_scope(
                    || tracing::warn!(rule = %rule.name, error = %error, "EM fetch failed"),
                );
            }
            let mut r = error.to_response(to);
            r.extensions_mut()
                .insert(ErrorMessage(error.client_message()));
            r.headers_mut()
                .insert(X_CACHE, HeaderValue::from_static(Outcome::Miss.as_str()));
            r.headers_mut()
                .insert(CACHE_STATUS, HeaderValue::from_static("emgate; fwd=miss"));
            if head {
                *r.body_mut() = Body::default();
            }
            return Ok(r);
        }
    };
    if served.outcome == Outcome::Hit && !served.from_shared {
        if let Some(response) = whole_hit(&served, headers, to, em_base, head, ctx.request_id()) {
            ctx.head_is_whole();
            return Ok(response);
        }
    }
    let (response, complete) = cached_response(&served, headers, to, em_base, head);
    if complete {
        ctx.head_is_complete();
    }
    Ok(response)
}

/// The fetch of a client's read under its rule. Made only when the cache
/// needs it (a hit makes nothing), owned and small, since the cache may
/// keep it for a refresh ahead of expiry.
fn rule_fetch(
    state: &Arc<ReadState>,
    resolved: &Resolved,
    rule: &ReadRule,
    request_id: &HeaderValue,
    head: bool,
    fresh: bool,
) -> RuleFetch {
    RuleFetch {
        state: state.clone(),
        key: resolved.key(head).into_owned(),
        policy: rule.policy.clone(),
        // As the client wrote it (EM ignores case, but its logs need not).
        path: em_target(&resolved.target),
        request_id: Some(request_id.clone()),
        head,
        fresh,
    }
}

/// A plain hit answered at once, without a future: the answer [`serve`]
/// would give a read of `resolved` (under its rule, not an operator's
/// `no-cache`) when the index holds a fresh entry whose whole head, made
/// by an earlier hit, fits the request (see `whole_hit`). Nothing is
/// counted until the caller takes the answer ([`HitNow::counted`]), so a
/// caller that turns it down (a rate limit says no) leaves no trace, and
/// [`serve`] answers the request in full. `None` when the read needs more
/// than memory.
pub fn hit_now<'a>(
    state: &'a Arc<ReadState>,
    to: &Representation,
    headers: &Heads<'_>,
    resolved: &'a Resolved,
    head: bool,
    request_id: &'a HeaderValue,
    taken_up: Instant,
) -> Option<HitNow<'a>> {
    // Rules a reload replaced since the edge resolved the target: `serve`
    // resolves it again.
    if state.rules.id() != resolved.rules.id {
        return None;
    }
    let rule = resolved.rule()?;
    let key = resolved.key(head);
    let served = state.cache.fresh_now(&key, taken_up)?;
    // The whole head is made by a served hit ([`serve`]), never here: this
    // one may yet be turned away (its rate limit), and the head is kept
    // for the public base of the request that makes it.
    if !served.entry.value.has_whole_head(to.xml) {
        return None;
    }
    let em_base = state.pool.upstream().base_url();
    let response = whole_hit(&served, headers, to, em_base, head, request_id)?;
    Some(HitNow {
        state,
        resolved,
        rule,
        served,
        head,
        request_id,
        response,
    })
}

/// A hit made by [`hit_now`], not yet counted.
pub struct HitNow<'a> {
    state: &'a Arc<ReadState>,
    resolved: &'a Resolved,
    rule: &'a ReadRule,
    served: Served<Prepared>,
    head: bool,
    request_id: &'a HeaderValue,
    response: Response<Body>,
}

impl HitNow<'_> {
    /// The answer, the hit counted as [`serve`] counts one (the rule's
    /// and the entry's counters, a refresh ahead of expiry scheduled on the
    /// entry's first hit).
    pub fn counted(self) -> Response<Body> {
        let (state, resolved, head) = (self.state, self.resolved, self.head);
        let tiered = |why: Refresh| {
            rule_fetch(state, resolved, self.rule, self.request_id, head, false).job(why)
        };
        let served = &self.served;
        let key = resolved.key(head);
        let cache = &state.cache;
        cache.count_hit(&key, &self.rule.policy, &served.entry, served.age, tiered);
        self.response
    }
}

/// Makes sure the cache holds `path` (and `query`) fresh, as work emgate
/// does on its own (`work`: prefetch, rewarm): fetched in the background
/// lane unless a fresh entry is stored, through the fleet's shared tier in
/// fleet mode, and counted as no client's request. Whether EM (or the
/// shared tier) was asked; an error when no rule caches the path.
pub async fn warm(
    state: &Arc<ReadState>,
    path: &str,
    query: Option<&str>,
    work: Work,
) -> Result<bool, Arc<GatewayError>> {
    let resolved = state.rules.load().resolve(path, query).map_err(Arc::new)?;
    let Some(rule) = resolved.rule() else {
        return Err(Arc::new(GatewayError::Internal("no rule caches the path")));
    };
    // What the edge refuses a client (a restore point that is no UUID)
    // does not reach EM from a state file either.
    if resolved.names_a_bad_restore_point() {
        return Err(Arc::new(GatewayError::Internal("not a restore point id")));
    }
    let fetch = RuleFetch {
        state: state.clone(),
        key: resolved.key.clone(),
        policy: rule.policy.clone(),
        path: em_target(&resolved.target),
        request_id: None,
        head: false,
        fresh: false,
    }
    .in_lane(Lane::Background(work));
    state
        .cache
        .warm(resolved.key.clone(), &rule.policy, fetch)
        .await
}

/// Whether the cache holds an entry (fresh or not) for the GET of `path`,
/// without counting a read.
pub fn is_cached(state: &ReadState, path: &str) -> bool {
    state
        .rules
        .load()
        .resolve(path, None)
        .is_ok_and(|r| state.cache.contains(&r.key(false)))
}

/// A rule's fetch, running.
type FetchFuture = Pin<Box<dyn Future<Output = Result<Fetched<Prepared>, GatewayError>> + Send>>;

/// Fleet mode, after Redis came back empty: puts this replica's hot
/// entries (at most `limit`, hottest first) back in the shared tier as
/// they are, so the fleet's next misses of them find them there instead
/// of asking EM; an entry another replica is fetching (its lease is held)
/// is left to it. How many were put back.
pub async fn put_back_hot(state: &Arc<ReadState>, min_hits: u64, limit: usize) -> usize {
    let Some(fleet) = &state.fleet else {
        return 0;
    };
    let mut put = 0;
    let rules = state.rules.load();
    for (key, entry) in state.cache.hot(min_hits, limit) {
        let Some(rule) = rules.all().get(entry.rule()) else {
            continue;
        };
        let lifetime = rule
            .policy
            .lifetime(entry.is_negative())
            .saturating_sub(entry.age());
        let Some(bytes) = entry.value.to_shared(entry.fetched_wall) else {
            continue;
        };
        if lifetime.is_zero() {
            continue;
        }
        let h = shared_hash(state.settings.json_case, &key);
        let Ok(epoch) = fleet.epoch().await else {
            break;
        };
        if let Ok(Some(lease)) = fleet.try_lease(&h).await {
            if let Ok(true) = fleet
                .store(&lease, key.path(), bytes, lifetime, epoch)
                .await
            {
                put += 1;
            }
        }
    }
    put
}

/// The name of a key's entry in the fleet's shared tier (with the JSON
/// case: replicas of another case keep their own).
fn shared_hash(case: crate::config::JsonCase, key: &CacheKey) -> String {
    let case = match case {
        crate::config::JsonCase::Pascal => "pascal",
        crate::config::JsonCase::Camel => "camel",
    };
    Fleet::key_hash(&format!("{case} {}", key.as_str()))
}

/// What a rule's fetch needs: owned and small (reference counts and the
/// EM path), since the cache may keep it until a refresh ahead of expiry;
/// the fetch itself is made only when it runs.
struct RuleFetch {
    state: Arc<ReadState>,
    key: CacheKey,
    policy: Policy,
    /// EM's path and query.
    path: String,
    request_id: Option<HeaderValue>,
    head: bool,
    /// An operator's `no-cache`: not the fleet's copy either.
    fresh: bool,
}

impl RuleFetch {
    /// The fetch for a cache's `why`: a refresh ahead of expiry goes in the
    /// background lane, anything a client waits for in the client lane. In
    /// fleet mode a local miss looks in the shared tier before EM, and one
    /// replica fetches for the fleet.
    fn job(self, why: Refresh) -> impl FnOnce() -> FetchFuture + Send + 'static {
        let lane = match why {
            Refresh::Ahead => Lane::Background(Work::RefreshAhead),
            // Not asked of `get`: warm work names its own lane.
            Refresh::Warm => Lane::Background(Work::Prefetch),
            Refresh::Miss | Refresh::Revalidate => Lane::Client,
        };
        self.in_lane(lane)
    }

    /// The fetch, its EM request in `lane`.
    fn in_lane(self, lane: Lane) -> impl FnOnce() -> FetchFuture + Send + 'static {
        move || {
            let RuleFetch {
                state,
                key,
                policy,
                path,
                request_id,
                head,
                fresh,
            } = self;
            // Its lines go to the span of whoever needs the fetch now: the
            // request that missed, or the one whose hit started a refresh
            // ahead (not the request that first stored the entry: the
            // cache keeps this fetch until then, and a span held that long
            // would keep that request's trace from ending).
            let span = tracing::Span::current();
            let em = {
                let state = state.clone();
                move |lane| em_fetch(state, path, request_id, head, true, lane)
            };
            let shared = state.fleet.clone().map(|fleet| Tier {
                pool: state.pool.clone(),
                fleet,
                key,
                policy,
                case: state.settings.json_case,
                // A moment more than EM's: the holder began first, and
                // its failure should reach the waiters before they give up
                // (and ask EM themselves).
                wait: state.settings.upstream.timeout + std::time::Duration::from_secs(1),
                skip_lookup: fresh,
                stale_wait: state.settings.cache.stale_wait,
            });
            Box::pin(
                async move {
                    match shared {
                        Some(tier) if crate::ops::traces::on() => {
                            tier.fetch(lane, em)
                                .instrument(tracing::info_span!("fleet_lease"))
                                .await
                        }
                        Some(tier) => tier.fetch(lane, em).await,
                        None => em(lane).await,
                    }
                }
                .instrument(span),
            )
        }
    }
}

/// A rule's fetch in fleet mode: the fleet's shared tier before EM.
struct Tier {
    fleet: Fleet,
    /// For room in the background lane, taken before the key's lease.
    pool: Arc<SessionPool>,
    key: CacheKey,
    policy: Policy,
    case: crate::config::JsonCase,
    /// How long to wait for another replica's fetch (it is bounded by the
    /// EM timeout, and its lease by the lease time).
    wait: std::time::Duration,
    /// An operator's `no-cache`: do not take the fleet's copy either.
    skip_lookup: bool,
    /// Longest wait for another replica's refresh when a stale copy is at
    /// hand (past the stale-while-revalidate window).
    stale_wait: std::time::Duration,
}

impl Tier {
    /// The shared entry if it is fresh; else one replica of the fleet fetches
    /// (under a lease) and stores it for all, the others wait for it to land
    /// (or serve a stale copy of it meanwhile), and one of them takes over
    /// if the fetching replica dies. The shared tier failing falls back to
    /// `em` (asked in `lane`): Redis never fails a request.
    async fn fetch<F>(
        self,
        lane: Lane,
        em: impl FnOnce(Lane) -> F,
    ) -> Result<Fetched<Prepared>, GatewayError>
    where
        F: std::future::Future<Output = Result<Fetched<Prepared>, GatewayError>>,
    {
        let h = shared_hash(self.case, &self.key);
        let mut stale = None;
        let mut known: Option<Vec<u8>> = None;
        if !self.skip_lookup {
            if let Ok(Some(bytes)) = self.fleet.entry(&h).await {
                match self.decode(&bytes, Source::Shared) {
                    Some((f, true)) => return Ok(f),
                    Some((f, false)) => {
                        stale = Some(f);
                        known = Some(bytes);
                    }
                    None => {}
                }
            }
        }
        // Background work takes its room in the lane before the key's
        // lease, never while holding it: a lease held while the lane queues
        // the work would keep other replicas' clients of the key waiting for
        // the lane. The room is held until EM's answer is read (or another
        // replica's lands).
        let mut _room = None;
        let lane = match lane {
            Lane::Background(work) => match self.pool.upstream().admit_background(work).await {
                Admission::Admitted(room) => {
                    _room = Some(room);
                    Lane::Admitted(work)
                }
                // A client of this replica waits for it: it runs as theirs.
                Admission::Urgent => Lane::Client,
                Admission::Dropped => return Err(GatewayError::Upstream(UpstreamError::Dropped)),
            },
            other => other,
        };
        let em = em(lane);
        let mut holder_gone = false;
        for _ in 0..3 {
            let Ok(epoch) = self.fleet.epoch().await else {
                break;
            };
            match self.fleet.try_lease(&h).await {
                Ok(Some(lease)) => {
                    // The replica that fetched before us may have stored its
                    // answer and let the lease go between our look and our
                    // lease: look again, or the key is fetched from EM twice.
                    if !self.skip_lookup {
                        if let Ok(Some(bytes)) = self.fleet.entry(&h).await {
                            if let Some((f, true)) = self.decode(&bytes, Source::Shared) {
                                return Ok(f);
                            }
                        }
                    }
                    if holder_gone {
                        self.fleet.took_over();
                    }
                    let result = em.await;
                    if let Err(e) = &result {
                        // EM failing: the replicas waiting for this fetch
                        // get the failure, and none asks EM again.
                        if crate::cache::Failure::serves_stale(e) {
                            let _ = self.fleet.fetch_failed(&lease, e.status().as_u16()).await;
                        }
                    }
                    if let Ok(f) = &result {
                        let negative = f.value.status == StatusCode::NOT_FOUND;
                        if let Some(bytes) = f.value.to_shared(std::time::SystemTime::now()) {
                            let lifetime = self.policy.lifetime(negative);
                            let _ = self
                                .fleet
                                .store(&lease, self.key.path(), bytes, lifetime, epoch)
                                .await;
                        }
                    }
                    drop(lease);
                    return match (result, stale) {
                        // EM failed: the fleet's stale copy, if there is one.
                        (Err(e), Some(s)) if crate::cache::Failure::serves_stale(&e) => Ok(s),
                        (r, _) => r,
                    };
                }
                Ok(None) => {
                    // Another replica fetches. A stale copy at hand is served
                    // at once within stale-while-revalidate, and within the
                    // stale wait past it (as a replica alone would).
                    let window = self.policy.ttl + self.policy.stale_while_revalidate;
                    if stale.as_ref().is_some_and(|s| s.age < window) {
                        if let Some(s) = stale.take() {
                            return Ok(s);
                        }
                    }
                    let wait = if stale.is_some() {
                        self.stale_wait
                    } else {
                        self.wait
                    };
                    match self.fleet.wait_landed(&h, wait, known.as_deref()).await {
                        Ok(Waited::Landed(bytes)) => {
                            if let Some((f, _)) = self.decode(&bytes, Source::Coalesced) {
                                return Ok(f);
                            }
                            break;
                        }
                        Ok(Waited::HolderGone) => holder_gone = true,
                        // Redis evicted what the holder stored before it
                        // could be read: fetch it for the fleet (under the
                        // lease, so the other waiters wait for this one).
                        Ok(Waited::Evicted) => {}
                        // The fetch waited for failed: so does this one
                        // (with the stale copy, if there is one).
                        Ok(Waited::Failed(status)) => {
                            return match stale.take() {
                                Some(s) => Ok(s),
                                None => Err(GatewayError::FailedElsewhere(
                                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                                )),
                            };
                        }
                        Ok(Waited::TimedOut) | Err(_) => match stale.take() {
                            Some(s) => return Ok(s),
                            None => break,
                        },
                    }
                }
                Err(_) => break,
            }
        }
        em.await
    }

    /// A shared entry as a fetch's answer, and whether it is still fresh.
    fn decode(&self, bytes: &[u8], source: Source) -> Option<(Fetched<Prepared>, bool)> {
        let (value, at) = Prepared::from_shared(bytes, self.case)?;
        let age = std::time::SystemTime::now()
            .duration_since(at)
            .unwrap_or_default();
        let limit = if value.status == StatusCode::NOT_FOUND {
            self.policy.negative_ttl
        } else {
            self.policy.ttl
        };
        let fresh = age < limit;
        if !fresh && age >= self.policy.lifetime(value.status == StatusCode::NOT_FOUND) {
            return None;
        }
        Some((Fetched { value, age, source }, fresh))
    }
}

/// A response from the cache: body, `X-Cache`, `Cache-Status`, `Age`,
/// `ETag`, `Last-Modified`, or a 304 when the client's tag matches; and
/// whether its head is complete (the prepared head, which carries every
/// `/api` answer's headers already; a 304's does not).
fn cached_response(
    served: &Served<Prepared>,
    request: &Heads<'_>,
    to: &Representation,
    em_base: &str,
    head_only: bool,
) -> (Response<Body>, bool) {
    let entry = &served.entry;
    let prepared = &entry.value;
    let (body, head) = prepared.answer(to.xml, &to.public, em_base);
    let ok = prepared.status == StatusCode::OK;
    let etag = head.get(ETAG).filter(|_| ok);
    // The prepared head is complete (see `Prepared::answer`); a 304's is not.
    let (mut r, complete) = match etag {
        Some(etag) if matches_etag(request, etag) => {
            let mut r = Response::new(Body::default());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r.headers_mut().insert(ETAG, etag.clone());
            (r, false)
        }
        _ => (with_body(prepared.status, body, head, head_only), true),
    };
    let h = r.headers_mut();
    h.insert(X_CACHE, HeaderValue::from_static(served.outcome.as_str()));
    h.insert(
        CACHE_STATUS,
        HeaderValue::from_static(
            match (served.outcome, served.collapsed, served.from_shared) {
                (Outcome::Hit, _, true) => "emgate; hit; detail=shared",
                (Outcome::Hit, _, false) => "emgate; hit",
                (Outcome::Miss, true, _) => "emgate; fwd=miss; collapsed",
                (Outcome::Miss, false, _) => "emgate; fwd=miss",
                (Outcome::Stale, _, _) => "emgate; fwd=stale",
            },
        ),
    );
    if served.outcome != Outcome::Miss {
        h.insert(AGE, age_value(served.age.as_secs()));
    }
    if ok {
        if let Some(v) = prepared.last_modified(entry.fetched_wall) {
            h.insert(LAST_MODIFIED, v);
        }
    }
    (r, complete)
}

/// A plain hit (found here, not in the fleet's tier) answered with the
/// entry's whole head (see `Prepared::whole_head`): every header it
/// carries, the request id and its cache status too, so nothing after it
/// looks a header up or adds one. The head's first two slots are `Age` and
/// `X-Request-Id`, written per request. `None` when the request gets
/// another answer (a 304, a public base or fetch time the kept
/// head was not made for): [`cached_response`] makes it.
fn whole_hit(
    served: &Served<Prepared>,
    request: &Heads<'_>,
    to: &Representation,
    em_base: &str,
    head_only: bool,
    request_id: &HeaderValue,
) -> Option<Response<Body>> {
    let entry = &served.entry;
    let prepared = &entry.value;
    let ok = prepared.status == StatusCode::OK;
    let (body, etag, whole) =
        prepared.whole_head(to.xml, &to.public, em_base, entry.fetched_wall, |head| {
            let mut whole = HeaderMap::with_capacity(head.len() + 5);
            whole.insert(AGE, HeaderValue::from_static("0"));
            whole.insert(X_REQUEST_ID, HeaderValue::from_static("-"));
            // Every value, repeated names too (`iter` names each).
            for (name, value) in head.iter() {
                whole.append(name.clone(), value.clone());
            }
            whole.insert(X_CACHE, HeaderValue::from_static(Outcome::Hit.as_str()));
            whole.insert(CACHE_STATUS, HeaderValue::from_static("emgate; hit"));
            if let Some(v) = prepared.last_modified(entry.fetched_wall).filter(|_| ok) {
                whole.insert(LAST_MODIFIED, v);
            }
            whole
        })?;
    if ok && matches_etag(request, etag) {
        return None;
    }
    let mut head = whole.clone();
    let mut slots = head.iter_mut();
    match (slots.next(), slots.next()) {
        (Some((first, age)), Some((second, id))) if first == AGE && second == X_REQUEST_ID => {
            *age = age_value(served.age.as_secs());
            *id = request_id.clone();
            // Never indexed by HTTP/2's header compression (see the router).
            id.set_sensitive(true);
        }
        _ => return None,
    }
    Some(with_body(prepared.status, body.clone(), head, head_only))
}

/// `Age: secs`, remembered per thread in 64 slots by the value: hits of
/// entries fetched together (a fill, a warm start, one entry read over and
/// over) share a few values instead of formatting (and allocating) one per
/// hit. Ages spread over a long TTL collide in the slots and are made
/// anew, as before.
fn age_value(secs: u64) -> HeaderValue {
    const SLOTS: usize = 64;
    thread_local! {
        static KEPT: RefCell<[Option<(u64, HeaderValue)>; SLOTS]> =
            const { RefCell::new([const { None }; SLOTS]) };
    }
    KEPT.with_borrow_mut(|kept| {
        let slot = &mut kept[(secs % SLOTS as u64) as usize];
        match slot {
            Some((s, v)) if *s == secs => v.clone(),
            _ => {
                let v = HeaderValue::from(secs);
                *slot = Some((secs, v.clone()));
                v
            }
        }
    })
}

/// Whether `If-None-Match` lists `etag` (weak comparison, as RFC 9110 §13.1.2
/// has it for this header) or is `*`.
fn matches_etag(request: &Heads<'_>, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    request.get_all(Name::IfNoneMatch).any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == ours)
        })
    })
}

/// A response for a collapsed (uncached) read.
fn respond(
    prepared: &Prepared,
    to: &Representation,
    em_base: &str,
    head_only: bool,
) -> Response<Body> {
    let (body, head) = prepared.answer(to.xml, &to.public, em_base);
    with_body(prepared.status, body, head, head_only)
}

/// `status`, `head` and `body` (none for a HEAD).
fn with_body(
    status: StatusCode,
    body: bytes::Bytes,
    head: HeaderMap,
    head_only: bool,
) -> Response<Body> {
    let mut r = Response::new(if head_only {
        Body::default()
    } else {
        Body::new(body)
    });
    *r.status_mut() = status;
    *r.headers_mut() = head;
    r
}

/// Drops every cached entry whose path is `prefix` or under it (compared
/// ignoring case, at a segment boundary).
pub fn purge_prefix(state: &ReadState, prefix: String) {
    let prefix = prefix.trim_end_matches('/').to_ascii_lowercase();
    state.cache.purge_where(move |key: &CacheKey| {
        let path = key.path().to_ascii_lowercase();
        path.strip_prefix(prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    });
}

/// [`purge_prefix`] here, and in fleet mode in the shared tier and on
/// every replica (a purge during a fetch anywhere still wins).
///
/// Here twice, around the shared tier: a miss in between could refill this
/// replica from the shared entry being purged (other replicas purge on the
/// fleet's notice, sent after the shared entries are gone). With the shared
/// tier down, the error says so (the fleet's part is retried meanwhile).
pub async fn purge_prefix_everywhere(
    state: &ReadState,
    prefix: String,
) -> Result<(), GatewayError> {
    purge_prefix(state, prefix.clone());
    let Some(fleet) = &state.fleet else {
        return Ok(());
    };
    let shared = fleet.purge_prefix(&prefix).await;
    purge_prefix(state, prefix);
    shared.map_err(|_| GatewayError::NotEverywhere("the cache entries were purged"))
}

/// Whether a key's (or shared entry's) path is one `template` covers.
fn covered_by(template: &crate::config::rules::PathTemplate, path: &str) -> bool {
    Target::parse(path, None).is_ok_and(|t| template.matches(t.segments()))
}

/// Drops every cached entry of the rule named `name` here; false if no
/// rule has that name.
pub fn purge_rule(state: &ReadState, name: &str) -> bool {
    let rules = state.rules.load();
    let Some(rule) = rules.all().iter().find(|r| r.name == name) else {
        return false;
    };
    let template = rule.template.clone();
    state
        .cache
        .purge_where(move |key: &CacheKey| covered_by(&template, key.path()));
    true
}

/// [`purge_rule`] here and (fleet mode) everywhere; false if no rule has
/// that name.
pub async fn purge_rule_everywhere(state: &ReadState, name: &str) -> Result<bool, GatewayError> {
    if !purge_rule(state, name) {
        return Ok(false);
    }
    let rules = state.rules.load_full();
    let (Some(fleet), Some(rule)) = (&state.fleet, rules.all().iter().find(|r| r.name == name))
    else {
        return Ok(true);
    };
    let template = rule.template.clone();
    let event = crate::fleet::Event::PurgeRule(name.to_string());
    let shared = fleet
        .purge_paths(move |path| covered_by(&template, path), event)
        .await;
    // Again: see purge_prefix_everywhere.
    purge_rule(state, name);
    shared
        .map(|()| true)
        .map_err(|_| GatewayError::NotEverywhere("the rule's cache entries were purged"))
}

/// Every cached entry, here and (fleet mode) everywhere.
pub async fn purge_all_everywhere(state: &ReadState) -> Result<(), GatewayError> {
    state.cache.purge_all();
    let Some(fleet) = &state.fleet else {
        return Ok(());
    };
    let shared = fleet.purge_all().await;
    // Again: see purge_prefix_everywhere.
    state.cache.purge_all();
    shared.map_err(|_| GatewayError::NotEverywhere("the cache was purged"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rules::{Rule, RuleOrigin};
    use http::header::IF_NONE_MATCH;
    use std::time::Duration;

    fn target(s: &str) -> Target {
        let (p, q) = match s.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (s, None),
        };
        Target::parse(p, q).unwrap()
    }

    fn rule(path: &str) -> ReadRule {
        let settings = CacheSettings {
            ttl: Duration::from_secs(1),
            stale_if_error: Duration::ZERO,
            negative_ttl: Duration::ZERO,
            max_bytes: 1,
            stale_wait: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            refresh_ahead: false,
            collapse: true,
            default_rules: false,
            rules: vec![Rule {
                name: "r".into(),
                path: PathTemplate::parse(path).unwrap(),
                ttl: Duration::from_secs(1),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                origin: RuleOrigin::File,
            }],
        };
        Rules::new(&settings).rules.remove(0)
    }

    #[test]
    fn a_target_seen_before_is_not_worked_out_again_and_others_are() {
        let rules = rules_of_the_defaults();
        let path = "/api/restorePoints/dc216c04-2e34-478e-8b9b-49a3397ef6f8/vmRestorePoints";
        let first = rules.resolve(path, Some("format=Entity")).unwrap();
        let again = rules.resolve(path, Some("format=Entity")).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "worked out twice");
        assert_eq!(first.rule().unwrap().name, VM_RESTORE_POINTS);
        assert_eq!(
            first.key(false).as_str(),
            "/api/restorepoints/dc216c04-2e34-478e-8b9b-49a3397ef6f8/vmrestorepoints?format=entity"
        );
        // Another query, no query, a query that is the path's tail: others.
        for (p, q) in [
            (path, None),
            (path, Some("format=entity")),
            (path, Some("")),
        ] {
            let other = rules.resolve(p, q).unwrap();
            assert!(!Arc::ptr_eq(&first, &other), "{p} {q:?}");
        }
        // Rules of another configuration never see this one's work.
        let others = rules_of_the_defaults();
        assert!(!Arc::ptr_eq(
            &first,
            &others.resolve(path, Some("format=Entity")).unwrap()
        ));
        // A HEAD of an uncached route has a key of its own; a GET's otherwise.
        let jobs = rules.resolve("/api/backupServers", None).unwrap();
        assert!(jobs.rule().is_none());
        assert_eq!(jobs.key(true).as_str(), "/api/backupServers HEAD");
        assert_eq!(first.key(true), first.key(false));
        // What does not parse is refused every time, and is not remembered.
        for _ in 0..2 {
            assert!(rules.resolve("/api/a%2Fb/../c", None).is_err());
        }
    }

    fn rules_of_the_defaults() -> Arc<Rules> {
        let settings = crate::config::Settings::load(&crate::config::Sources {
            file: None,
            demo: &[],
            env: &|k: &str| match k {
                "EMGATE_UPSTREAM_URL" => Some("https://em.example:9398".into()),
                "EMGATE_UPSTREAM_USERNAME" => Some("u".into()),
                "EMGATE_UPSTREAM_PASSWORD" => Some("p".into()),
                _ => None,
            },
        })
        .unwrap();
        Arc::new(Rules::new(&settings.cache))
    }

    fn vm_path(i: usize) -> String {
        format!("/api/restorePoints/{i:08x}-2e34-478e-8b9b-49a3397ef6f8/vmRestorePoints")
    }

    #[test]
    fn a_thousand_targets_in_turn_are_each_worked_out_once() {
        let rules = rules_of_the_defaults();
        let first: Vec<_> = (0..1000)
            .map(|i| rules.resolve(&vm_path(i), None).unwrap())
            .collect();
        for (i, known) in first.iter().enumerate() {
            let again = rules.resolve(&vm_path(i), None).unwrap();
            assert!(Arc::ptr_eq(known, &again), "target {i} worked out again");
        }
    }

    #[test]
    fn a_flood_of_distinct_targets_is_remembered_only_up_to_the_bound() {
        let rules = rules_of_the_defaults();
        for i in 0..RESOLVED_MAX + 500 {
            rules.resolve(&vm_path(i), None).unwrap();
        }
        let held = RESOLVED.with_borrow(|memo| memo.targets.len());
        assert_eq!(held, RESOLVED_MAX);
        // Too long to be worth remembering: answered, not kept.
        let long = format!("{}?v={}", vm_path(0), "1".repeat(RESOLVED_MAX_LEN));
        assert!(!Arc::ptr_eq(
            &rules
                .resolve(&vm_path(0), Some(&long[vm_path(0).len() + 1..]))
                .unwrap(),
            &rules
                .resolve(&vm_path(0), Some(&long[vm_path(0).len() + 1..]))
                .unwrap()
        ));
        assert_eq!(
            RESOLVED.with_borrow(|memo| memo.targets.len()),
            RESOLVED_MAX
        );
    }

    #[test]
    fn keys_normalise_what_em_ignores_and_keep_what_it_does_not() {
        let r = rule("/api/restorePoints/{id}/vmRestorePoints");
        let id = "DC216C04-2E34-478E-8B9B-49A3397EF6F8";
        let a = cache_key(
            &target(&format!(
                "/api/RestorePoints/{id}/vmrestorepoints?V=latest&Format=entity"
            )),
            Some(&r),
            false,
        );
        let b = cache_key(
            &target(&format!(
                "/api/restorePoints/{}/vmRestorePoints?format=Entity",
                id.to_lowercase()
            )),
            Some(&r),
            false,
        );
        assert_eq!(a, b);
        assert_eq!(
            a.as_str(),
            "/api/restorepoints/dc216c04-2e34-478e-8b9b-49a3397ef6f8/vmrestorepoints?format=entity"
        );
        // Pairs are sorted; values other than format's keep their case.
        let q = rule("/api/query");
        let x = cache_key(&target("/api/query?type=Job&pageSize=5"), Some(&q), false);
        let y = cache_key(&target("/api/Query?PAGESIZE=5&TYPE=Job"), Some(&q), false);
        assert_eq!(x, y);
        let z = cache_key(&target("/api/query?type=job&pageSize=5"), Some(&q), false);
        assert_ne!(x, z);
        // Wildcard segments keep their case; uncached keys keep everything.
        let w = rule("/api/catalog/vms/*");
        assert_ne!(
            cache_key(&target("/api/catalog/vms/WebServer"), Some(&w), false),
            cache_key(&target("/api/catalog/vms/webserver"), Some(&w), false)
        );
        assert_ne!(
            cache_key(&target("/api/jobs"), None, false),
            cache_key(&target("/api/JOBS"), None, false)
        );
        assert_ne!(
            cache_key(&target("/api/jobs"), None, false),
            cache_key(&target("/api/jobs"), None, true)
        );
        assert_eq!(
            em_target(&target(
                "/api/query?type=Job&v=latest&x=a%20b&FORMAT=entities"
            )),
            "/api/query?type=Job&x=a%20b&format=Entities"
        );
    }

    #[test]
    fn fresh_is_asked_for_by_no_cache_or_max_age_zero_and_tags_match_weakly() {
        let mut h = HeaderMap::new();
        assert!(!wants_fresh(&h));
        h.insert(CACHE_CONTROL, "max-age=0".parse().unwrap());
        assert!(wants_fresh(&h));
        h.insert(CACHE_CONTROL, "public, No-Cache".parse().unwrap());
        assert!(wants_fresh(&h));
        let tag = HeaderValue::from_static("\"p1-2\"");
        let mut r = HeaderMap::new();
        assert!(!matches_etag(&Heads::of(&r), &tag));
        r.insert(IF_NONE_MATCH, "\"a\", W/\"p1-2\"".parse().unwrap());
        assert!(matches_etag(&Heads::of(&r), &tag));
        r.insert(IF_NONE_MATCH, "*".parse().unwrap());
        assert!(matches_etag(&Heads::of(&r), &tag));
        r.append(IF_NONE_MATCH, "\"b\"".parse().unwrap());
        assert!(matches_etag(&Heads::of(&r), &tag));
    }
}
