//! One client connection from accept to close: TLS, protocol detection,
//! HTTP/1.1 or HTTP/2, and the deadlines that keep quiet sockets from
//! holding file descriptors (see README, "Client access").
//!
//! A connection is closed when
//! - its first request head has not arrived within the header timeout
//!   (counted from accept, so it covers the TLS handshake and protocol
//!   detection, where hyper has no timer of its own), or
//! - on HTTP/1.1, its next request head has not arrived within the header
//!   timeout of the last request's end (the head may have started and
//!   stalled: the connection cannot tell, and need not), or
//! - no request is in flight and none has started for the idle timeout.
//!
//! All are watched by one [`Activity`] per connection, which the request
//! path marks as requests begin and end. hyper's own per-head timer is off
//! ([`crate::gateway::server`]): it made, registered and dropped a timer
//! for every request (an allocation and the timer wheel's lock twice; see
//! BENCHMARKS.md, "sixth steps"), for the deadline this one already keeps. HTTP/2 adds keep-alive pings and
//! stream and reset limits (see [`crate::gateway::server`]).
//!
//! | state | the connection is closed at |
//! | --- | --- |
//! | no request head yet | accept + header timeout (`no_request`) |
//! | a request in flight | never (looked at again one wait below on) |
//! | HTTP/1.1, between requests | last end + the shorter of header and idle timeouts (`idle`) |
//! | HTTP/2, between requests | last end + idle timeout (`idle`) |
//!
//! On shutdown every connection is told to finish ([`Drain`]): hyper
//! answers the requests in flight, then closes (HTTP/1.1) or sends GOAWAY
//! (HTTP/2).
//!
//! Both watchers are polled beside the connection whenever its task wakes,
//! which is once or twice a request; both are made to cost nothing there
//! unless they may have fired (`Deadline`, `Drained`). A tokio sleep or
//! `Notify` polled again re-registers its waker each time (a lock for the
//! `Notify`): about 200 instructions a request between the two (see
//! BENCHMARKS.md).

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// The connection a request came on, as the request path sees it.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    /// The client's address (rate limits of anonymous callers and logons).
    pub peer: std::net::IpAddr,
    /// Whether the connection is TLS (links are https).
    pub tls: bool,
}

/// What a connection has been doing, for its deadlines.
///
/// Requests only write it; nothing is woken when they do. The watcher
/// ([`Activity::expired`]) sleeps until the earliest moment the connection
/// could expire and looks then: a request in flight moves the look on by
/// the idle timeout, one that ended moves the deadline to its end plus the
/// idle timeout. (Waking the watcher on every request's start and end cost
/// each request two more polls of its connection's task and a timer
/// re-armed twice.)
pub struct Activity {
    /// When the connection was accepted.
    accepted: Instant,
    /// Requests seen, requests in flight, and when the last one ended.
    state: Mutex<State>,
}

#[derive(Clone, Copy)]
struct State {
    /// Whether any request head has arrived.
    seen: bool,
    /// Requests being answered now.
    in_flight: usize,
    /// When the last request ended (or began, while none has ended).
    last: Instant,
    /// Whether the requests come over HTTP/2 (streams: no head to wait
    /// for between requests, only the idle timeout).
    http2: bool,
}

/// Why a connection was closed by its deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request head within the header timeout of accept.
    NoRequest,
    /// Idle between requests for the idle timeout.
    Idle,
}

impl Activity {
    /// A connection accepted now.
    pub fn new() -> Arc<Activity> {
        let now = Instant::now();
        Arc::new(Activity {
            accepted: now,
            state: Mutex::new(State {
                seen: false,
                in_flight: 0,
                last: now,
                http2: false,
            }),
        })
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }

    fn snapshot(&self) -> Option<State> {
        self.state.lock().ok().map(|s| *s)
    }

    /// A request head arrived (over `version`); the guard marks its end
    /// when dropped.
    pub fn begin(self: &Arc<Self>, version: http::Version) -> RequestGuard {
        let now = Instant::now();
        self.update(|s| {
            s.seen = true;
            s.in_flight += 1;
            s.last = now;
            s.http2 = version == http::Version::HTTP_2;
        });
        RequestGuard {
            activity: self.clone(),
            started: now,
            ended: None,
        }
    }

    /// Resolves when the connection should be closed (the table above):
    /// no request head within `header_timeout` of accept, on HTTP/1.1 no
    /// next head within `header_timeout` of the last request's end, or
    /// none in flight for `idle`.
    pub async fn expired(self: Arc<Self>, header_timeout: Duration, idle: Duration) -> Expired {
        let mut look_at = self.accepted + header_timeout;
        loop {
            Deadline::at(look_at).await;
            let Some(s) = self.snapshot() else {
                return Expired::Idle;
            };
            if !s.seen {
                return Expired::NoRequest;
            }
            // How long the connection may wait for its next request.
            let wait = if s.http2 {
                idle
            } else {
                idle.min(header_timeout)
            };
            if s.in_flight > 0 {
                // Whenever it ends, the connection has `wait` from then.
                look_at = Instant::now() + wait;
                continue;
            }
            let deadline = s.last + wait;
            if Instant::now() >= deadline {
                return Expired::Idle;
            }
            look_at = deadline;
        }
    }
}

/// The waker a watcher's inner future (a timer entry, a `Notified`) holds
/// from its last poll. Invariant: the inner future was last polled with
/// this waker, or never (`None`).
#[derive(Default)]
struct Registered(Option<Waker>);

impl Registered {
    /// Whether the inner future already holds `cx`'s waker (a poll with
    /// it would only register it again).
    fn holds(&self, cx: &Context<'_>) -> bool {
        self.0.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
    }

    /// The inner future is about to be polled with `cx`.
    fn polling(&mut self, cx: &Context<'_>) {
        self.0 = Some(cx.waker().clone());
    }
}

/// A sleep until a deadline that is looked at again only when its timer
/// may have fired: its timer holds the waker of the first poll, so a poll
/// with the same waker (the connection's task, woken for its socket) need
/// not register it again.
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    waker: Registered,
}

impl Deadline {
    fn at(deadline: Instant) -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            waker: Registered::default(),
        }
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        // Elapsed: the timer fired (and woke the registered waker).
        if this.waker.holds(cx) && !this.sleep.is_elapsed() {
            return Poll::Pending;
        }
        this.waker.polling(cx);
        this.sleep.as_mut().poll(cx)
    }
}

/// Shutdown's drain as the open connections see it: once started, each
/// finishes what it is answering and closes.
#[derive(Default)]
pub struct Drain {
    started: AtomicBool,
    notify: Notify,
}

impl Drain {
    /// Tells every connection to finish.
    pub fn start(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// `conn` served until it ends; once the drain starts, told to finish
    /// (its requests in flight are answered, no new one is read).
    pub async fn serve<C>(&self, conn: C) -> C::Output
    where
        C: GracefulConnection,
    {
        let mut conn = pin!(conn);
        let started = Drained {
            drain: self,
            notified: Box::pin(self.notify.notified()),
            waker: Registered::default(),
        };
        tokio::select! {
            // The connection first: the drain is looked at after it.
            biased;
            done = conn.as_mut() => return done,
            () = started => conn.as_mut().graceful_shutdown(),
        }
        conn.await
    }
}

/// Resolves when the drain has started; looked at again only when it may
/// have (the flag), or when polled by another waker than the one its
/// `Notified` holds.
struct Drained<'a> {
    drain: &'a Drain,
    notified: Pin<Box<Notified<'a>>>,
    waker: Registered,
}

impl Future for Drained<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.drain.started.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        if this.waker.holds(cx) {
            return Poll::Pending;
        }
        this.waker.polling(cx);
        if this.notified.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // Started between the look at the flag and the registration: the
        // notification went to nobody.
        if this.drain.started.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Marks one request in flight on its connection, from the moment its
/// head arrived ([`RequestGuard::started`]: the router's start as well, one
/// clock read for both) to its answer ([`RequestGuard::end`]) or, if the
/// request was given up, the guard's drop.
pub struct RequestGuard {
    activity: Arc<Activity>,
    started: Instant,
    ended: Option<Instant>,
}

impl RequestGuard {
    /// When the request's head arrived.
    pub fn started(&self) -> std::time::Instant {
        self.started.into_std()
    }

    /// The request was answered at `at` (the router's clock read for its
    /// metrics): the connection's idle time counts from then.
    pub fn end(mut self, at: std::time::Instant) {
        self.ended = Some(Instant::from_std(at));
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let at = self.ended.unwrap_or_else(Instant::now);
        self.activity.update(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.last = at;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_expires_and_a_busy_one_does_not() {
        let a = Activity::new();
        let why = a
            .clone()
            .expired(Duration::from_secs(5), Duration::from_secs(60))
            .await;
        assert_eq!(why, Expired::NoRequest);
        assert!(Instant::now() - a.accepted >= Duration::from_secs(5));

        let a = Activity::new();
        let guard = a.begin(http::Version::HTTP_2);
        let watch = tokio::spawn(
            a.clone()
                .expired(Duration::from_secs(5), Duration::from_secs(60)),
        );
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!watch.is_finished(), "a request in flight was cut off");
        drop(guard);
        let started = Instant::now();
        assert_eq!(watch.await.unwrap(), Expired::Idle);
        assert!(Instant::now() - started >= Duration::from_secs(60));
    }

    /// A request longer than the header timeout: the next head is still
    /// waited for the header timeout from its end, not the idle timeout.
    #[tokio::test(start_paused = true)]
    async fn after_a_long_request_http1_waits_the_header_timeout_from_its_end() {
        let a = Activity::new();
        let guard = a.begin(http::Version::HTTP_11);
        let watch = tokio::spawn(
            a.clone()
                .expired(Duration::from_secs(5), Duration::from_secs(60)),
        );
        tokio::time::sleep(Duration::from_secs(7)).await;
        drop(guard);
        let ended = Instant::now();
        assert_eq!(watch.await.unwrap(), Expired::Idle);
        let took = Instant::now() - ended;
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_secs(6),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn between_requests_http1_waits_the_header_timeout_and_http2_the_idle_timeout() {
        for (version, waits) in [
            (http::Version::HTTP_11, Duration::from_secs(5)),
            (http::Version::HTTP_10, Duration::from_secs(5)),
            (http::Version::HTTP_2, Duration::from_secs(60)),
        ] {
            let a = Activity::new();
            drop(a.begin(version));
            let ended = Instant::now();
            let why = a
                .clone()
                .expired(Duration::from_secs(5), Duration::from_secs(60))
                .await;
            assert_eq!(why, Expired::Idle, "{version:?}");
            let took = Instant::now() - ended;
            assert!(
                took >= waits && took < waits + Duration::from_secs(1),
                "{version:?}: {took:?}"
            );
        }
    }
}
