//! The background lane: EM requests emgate starts on its own account
//! (refresh-ahead, prefetch, rewarm), bounded apart from clients' (see
//! README, "Warm").
//!
//! A background request, in order:
//!
//! | step | waits for | gives up |
//! | --- | --- | --- |
//! | queue | a place in the lane (`EMGATE_BACKGROUND_CONCURRENCY`); a prefetch goes before the other kinds | when [`MAX_QUEUED`] already wait: *dropped* |
//! | pace | the lane's rate (`EMGATE_BACKGROUND_RATE` per second) | never (the place is held) |
//! | fleet | in fleet mode, a place in the fleet's lane and a slot of its rate (in Redis), taken only when free | after a place's longest hold (the fleet's lane is busy, not stuck): *dropped*; Redis down: skipped |
//! | step aside | a free place among clients' EM requests, taken only while more than the lane's concurrency are free | after the queue wait: *dropped* |
//! | run | EM | as any EM request |
//!
//! Invariants:
//! - A client's EM request never queues behind background work:
//!   background requests take a client place only while more places than
//!   the lane's concurrency are free (clients queue on the semaphore,
//!   background requests never do), so however many background requests
//!   run, clients find a place free.
//! - In fleet mode the lane's bounds are the fleet's: however many
//!   replicas, no more than `EMGATE_BACKGROUND_CONCURRENCY` background
//!   requests run at once and `EMGATE_BACKGROUND_RATE` start per second
//!   (while Redis answers; while it does not, each replica keeps its own).
//!   A replica that dies holding a fleet place frees it when the place's
//!   hold (the EM timeout and a margin) runs out.
//! - A client that comes to wait for background work (its miss joins a
//!   refresh, prefetch or rewarm still waiting here) never waits for this
//!   lane: the work stops waiting and runs as the client's request.
//! - A prefetch waits behind at most one other kind of work in this
//!   replica's queue (the fleet's places, in fleet mode, are then taken
//!   first come, first served by every replica's work): clients ask
//!   for a new restore point within seconds of its appearing, while a
//!   refresh has until its entry expires, a rewarm's key was asked for
//!   before and the first look's backlog is older news. The other kinds
//!   queue in turn behind a gate, one of them at a time in the lane's own
//!   queue (tokio's semaphore is first come, first served), so a prefetch
//!   that comes joins the queue right behind it.
//! - Work dropped is work not done: the entry it would have refreshed is
//!   refreshed by the next client miss instead. Nothing waits forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ops::metrics::{LaneCounters, Work};
use crate::ops::urgency::Urgency;

/// Background requests waiting for a place at most; more are dropped.
pub const MAX_QUEUED: u64 = 1024;

/// How often a background request looks again for a client place that was
/// full.
const STEP_ASIDE_POLL: Duration = Duration::from_millis(10);

/// A fleet operation's future.
pub type BudgetFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The fleet's share of the lane (implemented by the shared tier, so this
/// module knows no Redis). `Err` means the shared tier is down: each
/// replica goes on with its own bounds.
pub trait FleetBudget: Send + Sync {
    /// Takes one of the fleet's `places` (named `token`, to give it back
    /// with) and a slot of its `rate` per second (0: none), both only if
    /// free now, held at most `hold`; whether it was taken.
    fn take<'a>(
        &'a self,
        token: &'a str,
        places: usize,
        rate: u32,
        hold: Duration,
    ) -> BudgetFuture<'a, Result<bool, ()>>;
    /// Gives a place back.
    fn give_back(&self, token: String) -> BudgetFuture<'static, ()>;
}

/// How often a background request looks again for a fleet place.
const FLEET_POLL: Duration = Duration::from_millis(25);

/// The lane's bounds and counters.
pub struct Background {
    /// Its bounds, for the fleet's share.
    concurrency: usize,
    rate_per_second: u32,
    /// Longest a fleet place is held (a dead replica's runs out).
    hold: Duration,
    /// The fleet's share, in fleet mode.
    fleet: OnceLock<Arc<dyn FleetBudget>>,
    /// Places: background requests in flight at once.
    places: Arc<Semaphore>,
    /// Held by the one refresh or rewarm waiting for a place (a prefetch
    /// does not take it): see the module's invariants.
    behind_prefetch: tokio::sync::Mutex<()>,
    /// Requests per second, when limited.
    rate: Option<DefaultDirectRateLimiter>,
    /// Waiting for a place now.
    queued: AtomicU64,
    /// Running now.
    running: AtomicU64,
    /// The most ever running at once.
    peak: AtomicU64,
    /// By [`Work`]: ended with EM's answer, failed, dropped.
    ok: [AtomicU64; Work::COUNT],
    failed: [AtomicU64; Work::COUNT],
    dropped: [AtomicU64; Work::COUNT],
}

/// A background request's place, held while it runs.
pub struct Admitted {
    _lane: OwnedSemaphorePermit,
    /// The fleet place held, given back when done.
    _fleet: Option<FleetPlace>,
    /// The client place it stepped into.
    _place: OwnedSemaphorePermit,
    lane: Arc<Background>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.lane.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a background request's wait ended.
pub enum Admission {
    /// Room was made: it runs as background work.
    Admitted(Admitted),
    /// A client waits for it: it runs as a client's request.
    Urgent,
    /// No room: it is not sent.
    Dropped,
}

/// A place in the fleet's lane, given back when dropped (unless it was
/// never taken).
struct FleetPlace {
    budget: Arc<dyn FleetBudget>,
    token: String,
    armed: bool,
}

impl Drop for FleetPlace {
    fn drop(&mut self) {
        if self.armed {
            tokio::spawn(self.budget.give_back(std::mem::take(&mut self.token)));
        }
    }
}

/// Counts a request waiting for a place while it waits.
struct Queued<'a>(&'a AtomicU64);

impl<'a> Queued<'a> {
    fn enter(queued: &'a AtomicU64) -> Queued<'a> {
        queued.fetch_add(1, Ordering::Relaxed);
        Queued(queued)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl Background {
    /// A lane of `concurrency` places and `rate` requests per second (0: no
    /// rate limit); a request holds a fleet place `hold` at most.
    pub fn new(concurrency: usize, rate: u32, hold: Duration) -> Background {
        Background {
            concurrency: concurrency.max(1),
            rate_per_second: rate,
            hold,
            fleet: OnceLock::new(),
            places: Arc::new(Semaphore::new(concurrency.max(1))),
            behind_prefetch: tokio::sync::Mutex::new(()),
            rate: std::num::NonZeroU32::new(rate)
                .map(|r| RateLimiter::direct(Quota::per_second(r).allow_burst(r))),
            queued: AtomicU64::new(0),
            running: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            ok: Default::default(),
            failed: Default::default(),
            dropped: Default::default(),
        }
    }

    /// Makes the lane's bounds the fleet's (fleet mode).
    pub fn share_with(&self, fleet: Arc<dyn FleetBudget>) {
        let _ = self.fleet.set(fleet);
    }

    /// Waits for the lane by the table in the module docs. `clients` are
    /// the client places it steps into. While it waits, a client may come
    /// to wait for the same work (its [`Urgency`] is raised): then it stops
    /// waiting here and is [`Admission::Urgent`], a client's request.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        work: Work,
        clients: &Arc<Semaphore>,
        patience: Duration,
    ) -> Admission {
        let room = self.room(work, clients, patience);
        match Urgency::current() {
            Some(urgency) => tokio::select! {
                biased;
                () = urgency.raised() => Admission::Urgent,
                admission = room => admission,
            },
            None => room.await,
        }
    }

    /// The waits of [`Background::admit`]; dropped at any point, it gives
    /// back whatever it holds.
    async fn room(
        self: &Arc<Self>,
        work: Work,
        clients: &Arc<Semaphore>,
        patience: Duration,
    ) -> Admission {
        let lane = {
            let _queued = Queued::enter(&self.queued);
            if self.queued.load(Ordering::Relaxed) > MAX_QUEUED {
                self.dropped(work);
                return Admission::Dropped;
            }
            let _turn = match work {
                Work::Prefetch => None,
                Work::RefreshAhead | Work::Rewarm | Work::Backlog => {
                    Some(self.behind_prefetch.lock().await)
                }
            };
            match self.places.clone().acquire_owned().await {
                Ok(lane) => lane,
                Err(_) => {
                    self.dropped(work);
                    return Admission::Dropped;
                }
            }
        };
        if let Some(rate) = &self.rate {
            rate.until_ready().await;
        }
        let mut fleet = None;
        if let Some(budget) = self.fleet.get() {
            // Other replicas' work ends within its hold: wait that long.
            let deadline = tokio::time::Instant::now() + self.hold;
            // Armed before asking: a wait dropped mid-way (a client came to
            // wait for the work) or a Redis answer lost to the timeout
            // gives back what the script may have taken.
            while let Ok(token) = crate::digest::random_token(12) {
                let mut place = FleetPlace {
                    budget: budget.clone(),
                    token: token.expose().to_string(),
                    armed: true,
                };
                let taken = budget
                    .take(
                        &place.token,
                        self.concurrency,
                        self.rate_per_second,
                        self.hold,
                    )
                    .await;
                match taken {
                    Ok(true) => {
                        fleet = Some(place);
                        break;
                    }
                    // Redis down: this replica's own bounds.
                    Err(()) => break,
                    Ok(false) => place.armed = false,
                }
                if tokio::time::Instant::now() >= deadline {
                    self.dropped(work);
                    return Admission::Dropped;
                }
                tokio::time::sleep(FLEET_POLL).await;
            }
        }
        let deadline = tokio::time::Instant::now() + patience;
        let headroom = self.concurrency;
        let place = loop {
            let place = (clients.available_permits() > headroom)
                .then(|| clients.clone().try_acquire_owned().ok())
                .flatten();
            match place {
                Some(place) => break place,
                None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(STEP_ASIDE_POLL).await;
                }
                None => {
                    self.dropped(work);
                    return Admission::Dropped;
                }
            }
        };
        let running = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(running, Ordering::Relaxed);
        Admission::Admitted(Admitted {
            _lane: lane,
            _fleet: fleet,
            _place: place,
            lane: self.clone(),
        })
    }

    /// Counts how a background request ended.
    pub(crate) fn ended(&self, work: Work, ok: bool) {
        let by = if ok { &self.ok } else { &self.failed };
        by[work as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn dropped(&self, work: Work) {
        self.dropped[work as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The lane's counters now.
    pub fn counters(&self) -> LaneCounters {
        let all = |a: &[AtomicU64; Work::COUNT]| a.each_ref().map(|c| c.load(Ordering::Relaxed));
        LaneCounters {
            ok: all(&self.ok),
            failed: all(&self.failed),
            dropped: all(&self.dropped),
            queued: self.queued.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            peak: self.peak.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lane of one place, held, with two refreshes and a rewarm waiting:
    /// a prefetch that comes last runs second.
    #[tokio::test]
    async fn a_prefetch_passes_refreshes_and_rewarms_waiting_in_the_lane() {
        let lane = Arc::new(Background::new(1, 0, Duration::from_secs(60)));
        let clients = Arc::new(Semaphore::new(32));
        let patience = Duration::from_secs(10);
        let Admission::Admitted(held) = lane.admit(Work::Rewarm, &clients, patience).await else {
            panic!("an empty lane admits");
        };
        let (ran, mut order) = tokio::sync::mpsc::unbounded_channel();
        let kinds = [
            Work::RefreshAhead,
            Work::Rewarm,
            Work::RefreshAhead,
            Work::Prefetch,
        ];
        for work in kinds {
            let (lane, clients, ran) = (lane.clone(), clients.clone(), ran.clone());
            tokio::spawn(async move {
                if let Admission::Admitted(place) = lane.admit(work, &clients, patience).await {
                    let _ = ran.send(work);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    drop(place);
                }
            });
            // Each waits before the next comes.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(lane.counters().queued, 4);
        drop(held);
        let mut ran_in_turn = Vec::new();
        for _ in kinds {
            ran_in_turn.push(order.recv().await.map(Work::label));
        }
        assert_eq!(
            ran_in_turn,
            [
                Some("refresh_ahead"),
                Some("prefetch"),
                Some("rewarm"),
                Some("refresh_ahead")
            ]
        );
    }
}
