//! Work done before anyone asks (see README, "Warm"): the `vmRestorePoints`
//! of new restore points prefetched, and the hot keys of before a restart
//! refetched.
//!
//! ## Prefetch
//!
//! Every backup run makes restore points, and restore portals ask for the
//! newest first; EM's query service lists them by creation time. Every
//! `EMGATE_PREFETCH_INTERVAL` one look asks
//! `GET /api/query?type=RestorePoint&filter=CreationTime>="…"&sortDesc=CreationTime`,
//! page by page, and each restore point it has not seen before has its
//! `vmRestorePoints` fetched into the cache (and its `?format=Entity` form
//! when clients ask for that form), in the background lane.
//!
//! A look's state, and what moves it:
//!
//! | state | look asks since | after a look that worked | after a failed look |
//! | --- | --- | --- | --- |
//! | first | now − `EMGATE_PREFETCH_WINDOW` | following | first, next look after a doubled wait (at most 8 intervals) |
//! | following | the last look's start − [`LATE_ARRIVAL`] | following | following, doubled wait |
//!
//! - EM shows a restore point once its job has finished, with the time the
//!   backup began as its `CreationTime`: a point can appear well after the
//!   moment it claims. Looks overlap by [`LATE_ARRIVAL`] for it, and the
//!   points already fetched in that overlap are remembered (by id) so each
//!   is fetched once.
//! - A point whose fetch failed is not remembered: the next look tries again.
//! - Looks start an interval apart; one that took longer than that is
//!   followed after a quarter of an interval. After a failed look the
//!   doubled wait counts from its end.
//! - The points of a following look go first in this replica's background
//!   lane (in a fleet, the fleet's places are taken first come, first
//!   served); the first look's (the window's backlog, `prefetch_backlog`
//!   in the lane's counters) wait for the rewarm of the hot keys at start
//!   (as long as a replica waits for it to be ready, at most), then take
//!   their turn with refreshes, in a chain of fetches of their own, so the
//!   following looks' new points never wait for the backlog to be done.
//! - Fleet mode: one replica looks, the one holding the `prefetch` lease in
//!   Redis (renewed while it lives; another takes over within the lease
//!   time when it dies). Each fetch goes through the shared tier, so one
//!   EM fetch per restore point serves the fleet. While Redis is down every
//!   replica looks for itself, as it does everything else.
//! - A portal's listing of the newest points that emgate fetched from EM
//!   (for a client, or refreshing its copy) hands its new points over at
//!   once (`listed_points`): the portal is about to ask for one, and
//!   the next look may be most of an interval away.
//! - Nothing here delays a client: every EM request of a look is in the
//!   background lane, which steps aside for clients.
//!
//! ## Warm start
//!
//! With `EMGATE_STATE_DIR`, a replica writes its hot keys (those whose
//! entry, with the one it replaced, answered at least [`HOT_HITS`]
//! requests, hottest first, at most
//! `EMGATE_WARM_KEYS`) to [`STATE_FILE`] every [`STATE_EVERY`] and at
//! shutdown, and refetches them (in the background lane, hottest first)
//! when it starts. The file holds cache keys and hits a minute: no body, no
//! token, no credential. It is replaced atomically (written beside, synced,
//! renamed), so a crash mid-write leaves the previous one; a file that does
//! not parse, is of another format version or was written for another EM
//! is ignored with a warning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use http::{HeaderMap, StatusCode};
use tokio::task::JoinSet;

use crate::em::client::Lane;
use crate::gateway::reads::{self, ReadState};
use crate::gateway::restore_points::LISTED_MAX;
use crate::ops::metrics::Work;

/// How long after its `CreationTime` a restore point may first appear in
/// EM (a long backup job, EM's collection from its backup servers).
pub const LATE_ARRIVAL: Duration = Duration::from_secs(3600);

/// Restore points per page asked of the query service.
const PAGE_SIZE: usize = 100;

/// Pages read per look at most (a first look over a busy day).
const MAX_PAGES: usize = 50;

/// After failed looks the wait doubles, this many times at most (8 intervals).
const MAX_DOUBLINGS: u32 = 3;

/// Listings of the newest restore points waiting for the prefetch (more
/// are dropped: the next look finds their points).
pub const LISTED_QUEUE: usize = 16;

/// Restore points handed over by listings that are remembered, so the same
/// newest points are not fetched again when `seen` has forgotten them (a
/// quiet night with no new backups).
const HANDED_MEMORY: usize = 4096;

/// The lease name of the replica that looks, in fleet mode.
const LEASE: &str = "prefetch";

/// The poller's memory between looks.
struct Looker {
    state: Arc<ReadState>,
    /// The start of the last look that worked (`None`: the first is to come).
    last: Option<SystemTime>,
    /// Restore points fetched or being fetched, by id, with when they were
    /// first seen (a failed fetch takes its point out again).
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    /// The last look's fetches, still running: the next look asks EM
    /// meanwhile, and hands its fetches over when these are done (one
    /// batch at a time, so the lane's queue never fills).
    fetching: Option<tokio::task::JoinHandle<()>>,
    /// The first look's fetches (the window's backlog), a chain of their
    /// own: the new points of the following looks do not wait for them.
    backlog: Option<tokio::task::JoinHandle<()>>,
    /// Fetches the new points of listings clients were given, beside the
    /// looks.
    listings: Option<tokio::task::JoinHandle<()>>,
    /// Whether the rewarm of the hot keys at start is done: the first
    /// look's backlog waits for it.
    rewarmed: tokio::sync::watch::Receiver<bool>,
}

/// Runs the looks until the task is aborted (at shutdown).
pub async fn prefetch(
    state: Arc<ReadState>,
    listed: tokio::sync::mpsc::Receiver<Vec<String>>,
    rewarmed: tokio::sync::watch::Receiver<bool>,
) {
    let interval = state.settings.warm.prefetch_interval;
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let listings = tokio::spawn(listed_points(state.clone(), seen.clone(), listed));
    let mut looker = Looker {
        state,
        last: None,
        seen,
        fetching: None,
        backlog: None,
        listings: Some(listings),
        rewarmed,
    };
    let mut lease = None;
    let mut failures = 0u32;
    loop {
        // A look starts every interval (not an interval after the last one
        // ended): a point waits at most an interval and a look's time to
        // be seen. A look slower than that is followed after a quarter of
        // an interval, so EM's query service is never asked back to back;
        // after a failure the doubled wait counts from its end.
        let began = tokio::time::Instant::now();
        if looker.may_look(&mut lease).await {
            match looker.look().await {
                Ok(_) => failures = 0,
                Err(why) => {
                    failures = (failures + 1).min(MAX_DOUBLINGS);
                    tracing::warn!(error = %why, "prefetch: EM's query service failed; trying again later");
                }
            }
        }
        let next = match failures {
            0 => (began + interval).max(tokio::time::Instant::now() + interval / 4),
            n => tokio::time::Instant::now() + interval * 2u32.pow(n),
        };
        tokio::time::sleep_until(next).await;
    }
}

impl Looker {
    /// Whether this replica looks now: always alone or while Redis is down;
    /// in a fleet, while it holds the lease.
    async fn may_look(&mut self, lease: &mut Option<crate::fleet::Lease>) -> bool {
        let Some(fleet) = &self.state.fleet else {
            return true;
        };
        if lease.as_ref().is_some_and(|l| l.is_held()) {
            return true;
        }
        match fleet.try_lease(LEASE).await {
            Ok(Some(won)) => {
                if lease.is_none() {
                    tracing::info!("prefetch: this replica looks for new restore points");
                }
                *lease = Some(won);
                true
            }
            Ok(None) => {
                // Another replica looks; if this one becomes the looker
                // later, it starts with a first look.
                *lease = None;
                self.last = None;
                false
            }
            Err(_) => true,
        }
    }

    /// One look: the new restore points' ids from EM, their fetches handed
    /// to a task of their own (after the last look's); how many.
    async fn look(&mut self) -> Result<usize, String> {
        let started = SystemTime::now();
        let since = match self.last {
            None => started - self.state.settings.warm.prefetch_window,
            Some(last) => last - LATE_ARRIVAL,
        };
        let since_text = humantime::format_rfc3339_seconds(since).to_string();
        let mut new: Vec<String> = Vec::new();
        let mut page = 1;
        loop {
            let path = format!(
                "/api/query?type=RestorePoint&filter=CreationTime%3E%3D%22{since_text}%22\
                 &sortDesc=CreationTime&pageSize={PAGE_SIZE}&page={page}"
            );
            let em = self
                .state
                .pool
                .get(
                    &path,
                    HeaderMap::new(),
                    false,
                    Lane::Background(Work::Prefetch),
                )
                .await
                .map_err(|e| e.to_string())?;
            if em.status != StatusCode::OK {
                return Err(format!("EM answered {}", em.status));
            }
            let (ids, pages) = crate::gateway::restore_points::listed(&em.body, usize::MAX);
            {
                let seen = lock(&self.seen);
                new.extend(ids.into_iter().filter(|id| !seen.contains_key(id)));
            }
            if page >= pages || page >= MAX_PAGES {
                break;
            }
            page += 1;
        }
        // A point may show on two pages (EM's list moves between them).
        let mut once = std::collections::HashSet::new();
        new.retain(|id| once.insert(id.clone()));
        tracing::debug!(since = %since_text, new = new.len(), "prefetch: looked for new restore points");
        let entity = wants_entity(&self.state);
        {
            let mut seen = lock(&self.seen);
            // What the next look can no longer return: it asks from this
            // look's start back LATE_ARRIVAL, and this look may have taken
            // longer than an interval (a slow query service).
            let took = started.elapsed().unwrap_or_default();
            let horizon = self.state.settings.warm.prefetch_interval + took + LATE_ARRIVAL;
            seen.retain(|_, at| at.elapsed() < horizon);
            for id in &new {
                seen.insert(id.clone(), Instant::now());
            }
        }
        let count = new.len();
        // The first look's points are a backlog (see `Work::Backlog`).
        let work = match self.last {
            None => Work::Backlog,
            Some(_) => Work::Prefetch,
        };
        let chain = match work {
            Work::Backlog => &mut self.backlog,
            _ => &mut self.fetching,
        };
        let (state, seen, before) = (self.state.clone(), self.seen.clone(), chain.take());
        let mut rewarmed = self.rewarmed.clone();
        let patience = ready_at_the_latest(&self.state.settings.cache);
        *chain = Some(tokio::spawn(async move {
            // Aborted with this task (at shutdown), not left running.
            if let Some(mut before) = before.map(AbortOnDrop) {
                let _ = (&mut before.0).await;
            }
            // The backlog is what clients might read; the hot keys of
            // before the start, what they did: those go first, for as
            // long as a replica waits for them to be ready at most.
            if work == Work::Backlog {
                let _ = tokio::time::timeout(patience, rewarmed.wait_for(|done| *done)).await;
            }
            let fetched = fetch_points(state, seen, new, entity, work).await;
            if fetched > 0 {
                tracing::info!(fetched, "prefetched new restore points");
            }
        }));
        self.last = Some(started);
        Ok(count)
    }
}

impl Drop for Looker {
    fn drop(&mut self) {
        for chain in [
            self.fetching.take(),
            self.backlog.take(),
            self.listings.take(),
        ]
        .into_iter()
        .flatten()
        {
            chain.abort();
        }
    }
}

/// Fetches the new points of listings of the newest restore points that
/// EM gave emgate for someone (see `reads::hand_listed_to_prefetch`), as
/// they come: a portal that shows a point is about to ask for it, and the
/// next look may be an interval away. A listing is newest first, so its
/// new points are those before the first one already known: seen (fetched
/// or being fetched, the first look's backlog included), cached (in a
/// fleet, the replica that got the listing may not be the one that looks),
/// or handed over by a listing before. At most [`LISTED_MAX`] points an
/// interval are fetched so, whatever clients list.
async fn listed_points(
    state: Arc<ReadState>,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    mut listed: tokio::sync::mpsc::Receiver<Vec<String>>,
) {
    let interval = state.settings.warm.prefetch_interval;
    // Where this replica does not look (a fleet's others), nothing else
    // forgets the points seen: past any look's horizon (`Looker::look`,
    // LATE_ARRIVAL and the look's time) they go.
    let forget = 2 * LATE_ARRIVAL + interval;
    let mut handed: std::collections::VecDeque<String> = Default::default();
    let (mut budget_since, mut budget_used) = (Instant::now(), 0usize);
    while let Some(ids) = listed.recv().await {
        if budget_since.elapsed() >= interval {
            (budget_since, budget_used) = (Instant::now(), 0);
        }
        // The cache is asked before `seen` is locked.
        let cached: Vec<bool> = ids
            .iter()
            .map(|id| reads::is_cached(&state, &format!("/api/restorePoints/{id}/vmRestorePoints")))
            .collect();
        let new: Vec<String> = {
            let mut seen = lock(&seen);
            seen.retain(|_, at| at.elapsed() < forget);
            let new: Vec<String> = ids
                .into_iter()
                .zip(cached)
                .take_while(|(id, cached)| {
                    !cached && !seen.contains_key(id) && !handed.contains(id)
                })
                .map(|(id, _)| id)
                .take(LISTED_MAX.saturating_sub(budget_used))
                .collect();
            for id in &new {
                seen.insert(id.clone(), Instant::now());
            }
            new
        };
        if new.is_empty() {
            continue;
        }
        budget_used += new.len();
        for id in &new {
            if handed.len() >= HANDED_MEMORY {
                handed.pop_front();
            }
            handed.push_back(id.clone());
        }
        let entity = wants_entity(&state);
        let count = new.len();
        let fetched = fetch_points(state.clone(), seen.clone(), new, entity, Work::Prefetch).await;
        tracing::debug!(
            count,
            fetched,
            "prefetched the new restore points of a listing"
        );
    }
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Locks the seen points (a panic elsewhere leaves them consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether clients ask for the `?format=Entity` form of vmRestorePoints
/// (one is cached): then it is prefetched too.
fn wants_entity(state: &ReadState) -> bool {
    state.cache.any_key(|k| {
        let k = k.as_str();
        k.starts_with("/api/restorepoints/") && k.ends_with("/vmrestorepoints?format=entity")
    })
}

/// Fetches the `vmRestorePoints` of restore points `ids` (newest first, as
/// EM listed them), a few more at once than the lane runs, so it stays busy
/// without a queue that would drop work; a point whose fetch failed is
/// taken out of `seen` so the next look tries it again. How many EM (or
/// the shared tier) was asked for.
async fn fetch_points(
    state: Arc<ReadState>,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    ids: Vec<String>,
    entity: bool,
    work: Work,
) -> usize {
    let lane = state.settings.upstream.background_concurrency;
    let results = in_turn(ids, lane, move |id| {
        let state = state.clone();
        async move {
            let path = format!("/api/restorePoints/{id}/vmRestorePoints");
            let mut ok = reads::warm(&state, &path, None, work).await;
            if entity && ok.is_ok() {
                ok = reads::warm(&state, &path, Some("format=Entity"), work).await;
            }
            (id, ok)
        }
    })
    .await;
    let mut fetched = 0;
    for (id, result) in results {
        match result {
            Ok(asked) => fetched += usize::from(asked),
            Err(e) => {
                tracing::debug!(%id, error = %e, "prefetch of a restore point failed");
                lock(&seen).remove(&id);
            }
        }
    }
    fetched
}

/// Hits that make a key hot: read at least twice during its entry's life
/// and the one before (a refresh does not cool a key down).
pub const HOT_HITS: u64 = 2;

/// The hot keys' file in `EMGATE_STATE_DIR`.
pub const STATE_FILE: &str = "hot-keys.json";

/// How often the hot keys are written.
pub const STATE_EVERY: Duration = Duration::from_secs(60);

/// What the state file says it is.
const STATE_FORMAT: &str = "emgate-hot-keys";

/// The state file's format version.
const STATE_VERSION: u32 = 1;

/// The state file: hot cache keys, for the EM they were read from.
#[derive(Debug, Serialize, Deserialize)]
struct HotKeys {
    format: String,
    version: u32,
    /// A digest of EM's URL: keys of another EM are not this one's.
    upstream: String,
    /// Cache keys (`/api/...?...`), hottest first, with their hits a
    /// minute (for people reading the file: a start reads the order).
    keys: Vec<(String, u64)>,
}

/// The digest naming the EM a state file is for.
fn upstream_tag(state: &ReadState) -> String {
    crate::digest::sha256_hex(state.pool.upstream().base_url().as_bytes())[..16].to_string()
}

/// Writes `keys` to `dir`'s state file, replacing it atomically.
async fn write_hot_keys(
    state: &Arc<ReadState>,
    dir: &Path,
    keys: Vec<(String, u64)>,
) -> std::io::Result<usize> {
    let n = keys.len();
    let file = HotKeys {
        format: STATE_FORMAT.into(),
        version: STATE_VERSION,
        upstream: upstream_tag(state),
        keys,
    };
    let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
    let (dir, target) = (dir.to_path_buf(), dir.join(STATE_FILE));
    tokio::task::spawn_blocking(move || replace_file(&dir, &target, &bytes))
        .await
        .map_err(std::io::Error::other)??;
    Ok(n)
}

/// Writes `bytes` to `target` so that a reader sees the old file or the
/// new one, never a part: a temporary file beside it, synced, renamed over
/// it, and the folder synced.
fn replace_file(dir: &Path, target: &PathBuf, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // A name nobody else writes (replicas sharing a folder are often all
    // PID 1), created new (never through a link someone left there), for
    // the owner only.
    let temp = dir.join(format!(".{STATE_FILE}.{:016x}.tmp", fastrand::u64(..)));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&temp, target));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// With `EMGATE_WARM_BEFORE_READY`, the longest `/readyz` waits for the
/// rewarm.
pub const READY_AT_THE_LATEST: Duration = Duration::from_secs(600);

/// With `EMGATE_WARM_BEFORE_READY`, how long `/readyz` waits for the rewarm
/// at most: [`READY_AT_THE_LATEST`], and the lifetime of a vmRestorePoints
/// entry served at once (its TTL and stale-while-revalidate). The hottest
/// keys are fetched first; a replica that waited longer would open with
/// them past it, and their clients would wait for EM again.
pub fn ready_at_the_latest(cache: &crate::config::CacheSettings) -> Duration {
    READY_AT_THE_LATEST.min(cache.ttl + cache.stale_while_revalidate)
}

/// The largest state file read (10,000 keys take under 2 MiB).
const STATE_MAX_BYTES: u64 = 16 << 20;

/// The hot keys in `dir`'s state file, hottest first; none (with a
/// warning) when there is no usable file.
fn read_hot_keys(state: &ReadState, dir: &Path) -> Vec<String> {
    use std::io::Read;
    let path = dir.join(STATE_FILE);
    let read = std::fs::File::open(&path).and_then(|f| {
        let mut bytes = Vec::new();
        f.take(STATE_MAX_BYTES + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > STATE_MAX_BYTES {
            return Err(std::io::Error::other("larger than 16 MiB"));
        }
        Ok(bytes)
    });
    let bytes = match read {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "warm start: cannot read the hot keys; starting cold");
            return Vec::new();
        }
    };
    let file: HotKeys = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "warm start: the hot keys file is not one of emgate's; starting cold");
            return Vec::new();
        }
    };
    if file.format != STATE_FORMAT || file.version != STATE_VERSION {
        tracing::warn!(file = %path.display(), format = %file.format, version = file.version, "warm start: the hot keys file is of another format; starting cold");
        return Vec::new();
    }
    if file.upstream != upstream_tag(state) {
        tracing::warn!(file = %path.display(), "warm start: the hot keys were read from another EM; starting cold");
        return Vec::new();
    }
    let mut keys: Vec<String> = file.keys.into_iter().map(|(k, _)| k).collect();
    keys.truncate(state.settings.warm.keys);
    keys
}

/// The hot keys now, hottest first, with their hits a minute.
fn hot_now(state: &ReadState) -> Vec<(String, u64)> {
    state
        .cache
        .hot(HOT_HITS, state.settings.warm.keys)
        .into_iter()
        .map(|(k, e)| (k.as_str().to_string(), e.heat_per_minute().ceil() as u64))
        .collect()
}

/// Keeps the hot keys for the next start: in `dir`'s state file, and in
/// fleet mode in the fleet's list too. Problems are logged (the next save
/// tries again); how many keys were kept.
pub async fn save(state: &Arc<ReadState>, dir: Option<&Path>) -> usize {
    // One save at a time (the minute's and the shutdown's may meet).
    static SAVING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = SAVING.lock().await;
    let keys = hot_now(state);
    let n = keys.len();
    if let Some(fleet) = &state.fleet {
        if fleet
            .add_hot_keys(&keys, state.settings.warm.keys)
            .await
            .is_err()
        {
            tracing::debug!("the fleet's hot keys could not be updated; trying again later");
        }
    }
    if let Some(dir) = dir {
        if let Err(e) = write_hot_keys(state, dir, keys).await {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the hot keys");
        }
    }
    n
}

/// Refetches the hot keys of before the start, hottest first, in the
/// background lane: those of `dir`'s state file, then (fleet mode) the
/// fleet's; how many were fetched. In a fleet most are found in the shared
/// tier, and EM is asked once for the fleet for the others. Keys no rule
/// caches (or that do not parse) are skipped.
pub async fn rewarm(state: Arc<ReadState>, dir: Option<PathBuf>) -> usize {
    let mut keys = match dir {
        Some(dir) => {
            let state = state.clone();
            tokio::task::spawn_blocking(move || read_hot_keys(&state, &dir))
                .await
                .unwrap_or_default()
        }
        None => Vec::new(),
    };
    if let Some(fleet) = &state.fleet {
        // The shared tier connects in the background at start: give it a
        // few seconds before going without the fleet's list.
        let mut theirs = fleet.hot_keys(state.settings.warm.keys).await;
        for _ in 0..20 {
            if theirs.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            theirs = fleet.hot_keys(state.settings.warm.keys).await;
        }
        if let Ok(theirs) = theirs {
            let mine: std::collections::HashSet<String> = keys.iter().cloned().collect();
            keys.extend(theirs.into_iter().filter(|k| !mine.contains(k)));
            keys.truncate(state.settings.warm.keys);
        }
    }
    if keys.is_empty() {
        return 0;
    }
    let started = Instant::now();
    let total = keys.len();
    let lane = state.settings.upstream.background_concurrency;
    let fetched = in_turn(keys, lane, move |key| {
        let state = state.clone();
        async move {
            let (path, query) = match key.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (key.as_str(), None),
            };
            path.starts_with("/api/")
                && reads::warm(&state, path, query, Work::Rewarm)
                    .await
                    .unwrap_or(false)
        }
    })
    .await
    .into_iter()
    .filter(|asked| *asked)
    .count();
    tracing::info!(
        fetched,
        of = total,
        ms = started.elapsed().as_millis() as u64,
        "warm start: the hot keys of before the restart are cached again"
    );
    fetched
}

/// Writes the hot keys every [`STATE_EVERY`] until aborted.
pub async fn keep_hot_keys(state: Arc<ReadState>, dir: Option<PathBuf>) {
    loop {
        tokio::time::sleep(STATE_EVERY).await;
        save(&state, dir.as_deref()).await;
    }
}

/// Fleet mode, after Redis came back empty: this replica's hot entries go
/// back to the shared tier as they are (no EM request), and its hot keys
/// to the fleet's list.
pub async fn put_back(state: Arc<ReadState>) {
    let put = reads::put_back_hot(&state, HOT_HITS, state.settings.warm.keys).await;
    save(&state, None).await;
    tracing::info!(entries = put, "hot entries put back in the shared tier");
}

/// Runs `work` on each item, in their order, twice as many at once as the
/// background lane runs (so it stays busy, and its queue never fills and
/// drops work); every result, in the order they ended.
async fn in_turn<T, R, F, Fut>(items: Vec<T>, lane: usize, work: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let at_once = lane.saturating_mul(2).max(1);
    let mut running = JoinSet::new();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        while running.len() >= at_once {
            if let Some(Ok(r)) = running.join_next().await {
                out.push(r);
            }
        }
        running.spawn(work(item));
    }
    while let Some(done) = running.join_next().await {
        if let Ok(r) = done {
            out.push(r);
        }
    }
    out
}
