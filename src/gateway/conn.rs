//! One client connection from accept to close: TLS, protocol detection,
//! HTTP/1.1 or HTTP/2, and the deadlines that keep quiet sockets from
//! holding file descriptors (see README, "Client access").
//!
//! A connection is closed when
//! - its first request head has not arrived within the header timeout
//!   (counted from accept, so it covers the TLS handshake and protocol
//!   detection, where hyper has no timer of its own), or
//! - no request is in flight and none has started for the idle timeout.
//!
//! Both are watched by one [`Activity`] per connection, which the request
//! path marks as requests begin and end. HTTP/2 adds keep-alive pings and
//! stream and reset limits (see [`crate::gateway::server`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

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

    /// A request head arrived; the guard marks its end when dropped.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.update(|s| {
            s.seen = true;
            s.in_flight += 1;
            s.last = Instant::now();
        });
        RequestGuard(self.clone())
    }

    /// Resolves when the connection should be closed: no request head
    /// within `header_timeout` of accept, or none in flight for `idle`.
    pub async fn expired(self: Arc<Self>, header_timeout: Duration, idle: Duration) -> Expired {
        let mut look_at = self.accepted + header_timeout;
        loop {
            tokio::time::sleep_until(look_at).await;
            let Some(s) = self.snapshot() else {
                return Expired::Idle;
            };
            if !s.seen {
                return Expired::NoRequest;
            }
            if s.in_flight > 0 {
                // Whenever it ends, the connection has `idle` from then.
                look_at = Instant::now() + idle;
                continue;
            }
            let deadline = s.last + idle;
            if Instant::now() >= deadline {
                return Expired::Idle;
            }
            look_at = deadline;
        }
    }
}

/// Marks one request in flight on its connection.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.update(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.last = Instant::now();
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
        let guard = a.begin();
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
}
