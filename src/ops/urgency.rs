//! Whether a client waits for a piece of background work.
//!
//! A refresh ahead of expiry, a prefetch or a rewarm runs in the
//! background lane, which waits for room. A client whose miss joins such a
//! fetch must not wait for that room: the cache raises the fetch's
//! [`Urgency`], and the EM client, which sees it as a task-local of the
//! fetch, stops waiting in the background lane and takes a client's place
//! instead. The cache and the EM client know nothing of each other; this
//! flag is all they share.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

tokio::task_local! {
    static URGENCY: Urgency;
}

/// A flag raised once, when a client starts waiting for the work.
#[derive(Debug, Clone, Default)]
pub struct Urgency(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    raised: AtomicBool,
    notify: Notify,
}

impl Urgency {
    /// A client waits for the work now.
    pub fn raise(&self) {
        if !self.0.raised.swap(true, Ordering::SeqCst) {
            self.0.notify.notify_waiters();
        }
    }

    /// Whether a client waits for the work.
    pub fn is_raised(&self) -> bool {
        self.0.raised.load(Ordering::SeqCst)
    }

    /// Resolves once a client waits for the work.
    pub async fn raised(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_raised() {
                return;
            }
            notified.await;
        }
    }

    /// Runs `work` with this urgency as its own ([`Urgency::current`]).
    pub fn scope<F: Future>(self, work: F) -> impl Future<Output = F::Output> {
        URGENCY.scope(self, work)
    }

    /// The urgency of the work running in this task, if it has one.
    pub fn current() -> Option<Urgency> {
        URGENCY.try_with(Urgency::clone).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_sees_its_urgency_raised_while_it_waits() {
        let urgency = Urgency::default();
        let work = urgency.clone().scope(async {
            let mine = Urgency::current().expect("in scope");
            assert!(!mine.is_raised());
            mine.raised().await;
            mine.is_raised()
        });
        let raise = async {
            tokio::task::yield_now().await;
            urgency.raise();
        };
        let (raised, ()) = tokio::join!(work, raise);
        assert!(raised);
        assert!(Urgency::current().is_none());
    }
}
