//! The gateway's listener: start-up checks, the accept loop, the service
//! every request goes through, and the graceful drain on shutdown.
//!
//! A request meets, in order: hyper's connection limits (header size and
//! read timeout) → `X-Request-Id` (the client's, or a new one) → one log line
//! per request → [`route`] → the handler for `/healthz`, `/readyz` or `/api`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;

use crate::cache::Options;
use crate::config::{CacheSettings, ConfigError, Settings};
use crate::em::client::Upstream;
use crate::em::session::SessionPool;
use crate::fleet::session::EmSessionStore;
use crate::fleet::{Event, Fleet};
use crate::gateway::access::{self, AccessState, AdminToken};
use crate::gateway::admin::ADMIN_RATE;
use crate::gateway::app::App;
use crate::gateway::conn::Conn;
use crate::gateway::conn::{Activity, Drain, Expired};
use crate::gateway::limit::{Attempts, ClientLimits};
use crate::gateway::logon::ClientSessions;
use crate::gateway::reads::{CollapseStats, LiveRules, ReadCache, ReadState, Rules};
use crate::gateway::reload::{Reloader, Targets};
use crate::gateway::request_id::ProcessUniqueId;
use crate::gateway::response::Body;
use crate::gateway::router::{route, MAX_HEAD_BYTES};

/// HTTP/2: a ping after this much silence...
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// ...must be answered within this long, or the connection goes.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 streams a client may have open at once.
const H2_MAX_STREAMS: u32 = 128;
/// HTTP/2 streams a client may reset before they are served.
const H2_MAX_PENDING_RESETS: usize = 32;
/// HTTP/2 streams we may reset for a client's errors before it goes.
const H2_MAX_LOCAL_RESETS: usize = 256;
/// TCP keepalive: first probe after this much silence...
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// ...then every this long.
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Longest wait for EM's logout at shutdown.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The EM client could not be built (TLS setup).
    #[error("upstream: {0}")]
    Upstream(String),
    /// A file a setting names is unusable (see [`preflight`]).
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
}

pub use crate::gateway::reload::{preflight, Preflight};

/// A gateway bound to its port, not yet serving.
pub struct Gateway {
    /// State shared by every request.
    app: Arc<App>,
    /// The bound listener.
    listener: TcpListener,
    /// TLS for the listener, when HTTPS is configured.
    tls: Option<TlsAcceptor>,
    /// SIGHUP, taken from bind on: a SIGHUP while the gateway starts must
    /// not end it (the default action), only reload once it runs.
    hangup: Option<tokio::signal::unix::Signal>,
    /// Listings of new restore points for the prefetch, from the reads
    /// (`None` with prefetch off).
    listed: Option<tokio::sync::mpsc::Receiver<Vec<String>>>,
}

impl Gateway {
    /// Binds the listener and builds the EM client; logs on in the background once run.
    pub async fn bind(settings: Settings) -> Result<Gateway, StartError> {
        let Preflight { clients, cert } = preflight(&settings)?;
        let (tls, live_cert) = match cert {
            Some(cert) => {
                let (acceptor, live) = crate::gateway::listen_tls::acceptor(cert)
                    .map_err(|e| ConfigError::setting("EMGATE_TLS_CERT_FILE", e))?;
                (Some(acceptor), Some(live))
            }
            None => (None, None),
        };
        let upstream = Upstream::new(&settings.upstream).map_err(StartError::Upstream)?;
        // Fleet mode: started lazily, so a Redis that is down at start is
        // joined later; meanwhile this replica goes on alone.
        let fleet = match &settings.shared {
            Some(shared) => {
                // Larger answers stay on the replica that fetched them, as
                // the local cache keeps no answer over an eighth of itself.
                let max_entry = usize::try_from(settings.cache.max_bytes / 8).unwrap_or(usize::MAX);
                Some(
                    Fleet::start(shared, &settings.upstream, max_entry)
                        .map_err(StartError::Upstream)?,
                )
            }
            None => None,
        };
        if let Some(fleet) = &fleet {
            // Background work is bounded for the fleet, not per replica.
            upstream.background().share_with(Arc::new(fleet.clone()));
        }
        let mut pool = SessionPool::new(upstream, &settings.upstream);
        if let (Some(fleet), Some(shared)) = (&fleet, &settings.shared) {
            if shared.em_session {
                pool = pool.with_shared(Arc::new(EmSessionStore::new(fleet.clone())), shared.lease);
            }
        }
        let pool = Arc::new(pool);
        let addr = settings.listen.address;
        let listener = bind(addr).map_err(|source| StartError::Bind { addr, source })?;
        let settings_rate = (settings.access.rate_limit, settings.access.rate_burst);
        let work = Arc::new(Semaphore::new(settings.listen.max_concurrency));
        let local_addr = listener.local_addr().unwrap_or(addr);
        let tasks = Arc::new(crate::gateway::tasks::Tasks::new(
            settings.access.task_retention,
            fleet.clone(),
        ));
        let settings = Arc::new(settings);
        // Listings of new restore points, from the reads to the prefetch.
        let listed = match settings.warm.prefetch {
            true => {
                let (tx, rx) = tokio::sync::mpsc::channel(crate::gateway::warm::LISTED_QUEUE);
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let app = Arc::new(App {
            reload: Reloader::new(settings.clone(), None, live_cert),
            tasks,
            reads: Arc::new(ReadState {
                settings: settings.clone(),
                pool: pool.clone(),
                cache: ReadCache::new(
                    cache_options(&settings.cache),
                    crate::config::rules::MAX_RULES,
                ),
                rules: LiveRules::new(Rules::new(&settings.cache)),
                collapse_stats: CollapseStats::default(),
                fleet: fleet.clone(),
                listed: listed.0,
            }),
            access: AccessState {
                settings: settings.clone(),
                clients: ArcSwap::from_pointee(clients),
                admin: AdminToken::new(settings.access.admin_token.as_ref()),
                sessions: ClientSessions::new(fleet.clone()),
                attempts: Attempts::new(ADMIN_RATE.0, ADMIN_RATE.1),
            },
            settings,
            pool,
            draining: AtomicBool::new(false),
            warming: AtomicBool::new(false),
            request_ids: ProcessUniqueId::new(),
            metrics: crate::ops::metrics::install(),
            limits: ClientLimits::new(settings_rate.0, settings_rate.1).with_fleet(fleet.clone()),
            fleet,
            work,
            local_addr,
            em_versions: std::sync::Mutex::new(Vec::new()),
        });
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: reloads follow file changes only");
                None
            }
        };
        Ok(Gateway {
            app,
            listener,
            tls,
            hangup,
            listed: listed.1,
        })
    }

    /// Serves one HTTP/1.1 connection on `io` through the request path a
    /// listener's connection gets (its deadlines and protocol detection
    /// aside) until the client closes it. `benches/request_path.rs` drives
    /// it over an in-memory stream: the whole path, from a request's bytes
    /// to its answer's, without the kernel.
    pub async fn serve_http1<I>(&self, io: I, peer: std::net::IpAddr) -> Result<(), hyper::Error>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Conn { peer, tls: false };
        let service = stack(self.app.clone(), conn, Activity::new());
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .await
    }

    /// Settings were read from this TOML file (`--config`): a reload reads
    /// it again, and a change of it reloads.
    pub fn with_config_file(mut self, file: Option<PathBuf>) -> Gateway {
        if let Some(app) = Arc::get_mut(&mut self.app) {
            app.reload.set_file(file);
        }
        self
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests
    /// (bounded by the drain timeout) and logs the EM session out.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Gateway {
            app,
            listener,
            tls,
            hangup,
            listed,
        } = self;
        if let Ok(addr) = listener.local_addr() {
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!(%addr, scheme, upstream = %app.pool.upstream().base_url(), "listening");
        }
        tracing::info!(settings = %app.settings.summary(), "effective settings");
        if app.fleet.is_some() {
            crate::ops::metrics::fleet_started();
        }
        crate::ops::metrics::config_reload(None);
        raise_open_files_limit();
        let maintenance = tokio::spawn(app.pool.clone().maintain());
        let discovery = tokio::spawn(log_em_version(app.clone()));
        let housekeeping = tokio::spawn(housekeeping(app.clone()));
        let fleet_events = tokio::spawn(fleet_events(app.clone()));
        app.reload.update_digest();
        if let Some(fleet) = &app.fleet {
            fleet.set_config_generation(0, app.reload.digest());
        }
        let reloads = tokio::spawn(reloads(app.clone(), hangup));
        // Work before anyone asks (README, "Warm"), ended at shutdown.
        let mut warm = Vec::new();
        // The first look's backlog waits for the rewarm of the hot keys:
        // what clients read goes before what they might.
        let (rewarmed, rewarm_done) = tokio::sync::watch::channel(false);
        if let Some(listed) = listed {
            warm.push(tokio::spawn(crate::gateway::warm::prefetch(
                app.reads.clone(),
                listed,
                rewarm_done,
            )));
        }
        // Hot keys survive a restart in the state folder, and in a fleet
        // in Redis.
        let state_dir = app.settings.warm.state_dir.clone();
        let keeps_hot = state_dir.is_some() || app.fleet.is_some();
        if keeps_hot {
            let (app2, dir) = (app.clone(), state_dir.clone());
            let before_ready = app.settings.warm.before_ready;
            app.warming.store(before_ready, Ordering::SeqCst);
            if before_ready {
                // Ready at the latest after this, the rewarm going on:
                // a slow or failing EM must not keep a replica out for good.
                let app = app.clone();
                let latest = crate::gateway::warm::ready_at_the_latest(&app.settings.cache);
                warm.push(tokio::spawn(async move {
                    tokio::time::sleep(latest).await;
                    if app.warming.swap(false, Ordering::SeqCst) {
                        tracing::warn!(
                            "warm start: ready before every hot key is cached again (it goes on)"
                        );
                    }
                }));
            }
            warm.push(tokio::spawn(async move {
                let reads = app2.reads.clone();
                crate::gateway::warm::rewarm(reads.clone(), dir.clone()).await;
                app2.warming.store(false, Ordering::SeqCst);
                rewarmed.send_replace(true);
                crate::gateway::warm::keep_hot_keys(reads, dir).await;
            }));
        } else {
            rewarmed.send_replace(true);
        }
        let listen = &app.settings.listen;
        let (header_timeout, idle_timeout) = (listen.header_timeout, listen.idle_timeout);
        // Past this many open connections, new ones wait in the listen backlog.
        let connections = Arc::new(Semaphore::new(listen.max_connections));
        let builder = http_builder();
        // Every connection's task, waited for on shutdown; and the drain
        // that tells them to finish.
        let open = tokio_util::task::TaskTracker::new();
        let drain_all = Arc::new(Drain::default());
        tokio::pin!(shutdown);
        loop {
            let place = tokio::select! {
                p = connections.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: pause instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            tune_socket(&stream);
            let activity = Activity::new();
            let conn = Conn {
                peer: peer.ip(),
                tls: tls.is_some(),
            };
            let service = stack(app.clone(), conn, activity.clone());
            let builder = builder.clone();
            let drain_all = drain_all.clone();
            let tls = tls.clone();
            crate::ops::metrics::connections(1.0);
            open.spawn(async move {
                // Held for the connection's life: frees a place when it ends.
                let _place = place;
                let _open = OpenConnection;
                let serve = async {
                    let stream: ClientStream = match tls {
                        None => Either::Left(stream),
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls_stream) => Either::Right(Box::new(tls_stream)),
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return Ok(());
                            }
                        },
                    };
                    // Without HTTP/1.1 upgrades: nothing here answers 101
                    // (CONNECT is refused), and the upgradeable connection
                    // costs every request's poll its bookkeeping.
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    drain_all.serve(conn).await
                };
                // The deadlines cover everything from accept on: the TLS
                // handshake and protocol detection, where hyper has no timer.
                // In order, not at random: both are polled on every wake
                // either way, and the draw cost every request 50 instructions.
                tokio::select! {
                    biased;
                    result = serve => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    }
                    why = activity.expired(header_timeout, idle_timeout) => {
                        tracing::debug!(%peer, ?why, "connection closed by its deadline");
                        crate::ops::metrics::connection_closed(match why {
                            Expired::NoRequest => "no_request",
                            Expired::Idle => "idle",
                        });
                    }
                }
            });
        }
        app.draining.store(true, Ordering::SeqCst);
        drop(listener);
        let drain = app.settings.listen.drain_timeout;
        tracing::info!(
            drain_timeout_ms = drain.as_millis() as u64,
            "shutting down: draining in-flight requests"
        );
        drain_all.start();
        open.close();
        if tokio::time::timeout(drain, open.wait()).await.is_err() {
            tracing::warn!("drain timeout reached; closing remaining connections");
        }
        maintenance.abort();
        for task in &warm {
            task.abort();
        }
        if keeps_hot {
            let n = crate::gateway::warm::save(&app.reads, state_dir.as_deref()).await;
            tracing::info!(keys = n, "hot keys kept for the next start");
        }
        housekeeping.abort();
        fleet_events.abort();
        reloads.abort();
        discovery.abort();
        // Bounded: a hung EM must not hold the pod past its grace period
        // (an abandoned session expires on EM's side anyway).
        if tokio::time::timeout(LOGOUT_TIMEOUT, app.pool.logout())
            .await
            .is_err()
        {
            tracing::warn!("EM logout did not finish in time; leaving the session to expire");
        }
        tracing::info!("stopped");
    }
}

/// A failed refresh is remembered this long (stale entries are served
/// without asking EM again meanwhile).
const FAILED_REFRESH_MEMORY: Duration = Duration::from_secs(5);

/// The cache's bounds from the settings: one answer may use at most an
/// eighth of the cache, so no single answer can evict most of it.
fn cache_options(settings: &CacheSettings) -> Options {
    Options {
        max_bytes: settings.max_bytes,
        max_entry_bytes: usize::try_from(settings.max_bytes / 8).unwrap_or(usize::MAX),
        stale_wait: settings.stale_wait,
        refresh_ahead: settings.refresh_ahead,
        failed_memory: FAILED_REFRESH_MEMORY,
    }
}

/// Counts an open connection down when its task ends, however it ends.
struct OpenConnection;

impl Drop for OpenConnection {
    fn drop(&mut self) {
        crate::ops::metrics::connections(-1.0);
    }
}

/// HTTP/1.1 and HTTP/2 settings for client connections.
fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Off: the connection's `Activity` keeps the same deadline for
        // every head (see `conn`) without a timer made for each request.
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        // Dead peers are found by pings, not by waiting for the kernel.
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_concurrent_streams(H2_MAX_STREAMS)
        // Rapid reset (CVE-2023-44487): streams a client may reset before
        // we answered, and errors we may reset, before the connection goes.
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS);
    builder
}

/// No Nagle delay for small answers; TCP keepalive so peers that vanished
/// without a FIN do not hold a place forever.
fn tune_socket(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE_INTERVAL);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Raises the soft limit on open files to the hard limit: every client
/// connection and every EM connection is a descriptor.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(open_files = limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}

/// Connections the kernel queues for the accept loop. tokio's default
/// (1,024) drops a burst's SYNs past it, and each dropped one waits a
/// second for its retry; the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// The listening socket, with the address reusable at once after a restart
/// (as `TcpListener::bind` has it) and a backlog for bursts.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The service around [`route`] for one connection: hyper's own
/// `service_fn`, called by reference for each request. Not a tower stack
/// behind hyper-util's adapter: that adapter clones the whole service for
/// each request and moves the request's future through a second state
/// machine (`Oneshot`) before it first runs, a copy of the future more per
/// request for a readiness no part of this path ever waits on (see
/// BENCHMARKS.md, "sixth steps").
fn stack(
    app: Arc<App>,
    conn: Conn,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    // The client a secret identified on this connection (see
    // `access::KnownCredential`): the connection's own, shared by its
    // requests.
    let known = access::KnownCredential::default();
    hyper::service::service_fn(move |req: Request<Incoming>| {
        // The connection is busy from here until the answer is made,
        // so its idle deadline waits.
        // (The router ends it with the answer: no block around the
        // router's answer here, which would hold it twice, as its own field
        // and as the future it awaits.)
        let busy = activity.begin(req.version());
        route(app.clone(), conn, req, busy, &known)
    })
}

/// Once logged on, logs which API versions EM offers (operators want to
/// know what they are talking to; the JSON case must match the EM version).
async fn log_em_version(app: Arc<App>) {
    let pool = &app.pool;
    while !pool.is_valid() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match pool.upstream().api_versions().await {
        Ok(versions) => {
            tracing::info!(
                api_versions = %versions.join(","),
                latest = versions.last().map(String::as_str).unwrap_or("unknown"),
                "Enterprise Manager found"
            );
            if let Ok(mut v) = app.em_versions.lock() {
                *v = versions;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read EM's entry point"),
    }
}

/// Reloads on `SIGHUP`, and when a file the settings name changes
/// (README, "Changes while running"): their folders are watched (so
/// Kubernetes' symlink swap of a mounted Secret counts), a change is
/// acted on once events settle and only if a file's bytes changed, and
/// the files are looked at every [`reload::POLL`] besides.
///
/// [`reload::POLL`]: crate::gateway::reload::POLL
async fn reloads(app: Arc<App>, mut hangup: Option<tokio::signal::unix::Signal>) {
    use crate::gateway::reload::{fingerprint, POLL, SETTLE};
    use notify::Watcher as _;
    let (tx, mut events) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = match notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        // Reading a file is no change of it (and our own reads of the
        // watched files would wake this loop for ever).
        if matches!(&e, Ok(e) if matches!(e.kind, notify::EventKind::Access(_))) {
            return;
        }
        // Full: a look is due anyway.
        let _ = tx.try_send(());
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "files are not watched: they are looked at every 10 s");
            None
        }
    };
    let mut watched_dirs: Vec<PathBuf> = Vec::new();
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut files = app.reload.watched();
    let mut seen = fingerprint(&files);
    loop {
        if let Some(w) = watcher.as_mut() {
            let mut dirs: Vec<PathBuf> = files
                .iter()
                .filter_map(|f| {
                    f.parent().map(|d| match d.as_os_str().is_empty() {
                        true => PathBuf::from("."),
                        false => d.to_path_buf(),
                    })
                })
                .collect();
            dirs.sort();
            dirs.dedup();
            if dirs != watched_dirs {
                for d in &watched_dirs {
                    let _ = w.unwatch(d);
                }
                for d in &dirs {
                    if let Err(e) = w.watch(d, notify::RecursiveMode::NonRecursive) {
                        tracing::warn!(folder = %d.display(), error = %e, "cannot watch a folder of a settings file");
                    }
                }
                watched_dirs = dirs;
            }
        }
        // What the files held when the reload reads them: a change made
        // while it runs differs from it, and is acted on next.
        let (trigger, read) = loop {
            tokio::select! {
                Some(()) = async { hangup.as_mut()?.recv().await } => break ("SIGHUP", fingerprint(&files)),
                Some(()) = events.recv() => {}
                _ = poll.tick() => {}
            }
            // Settled: the same bytes twice, SETTLE apart (a file written
            // in place is not read half-written); a file that never stops
            // changing is read after 20 looks (3 s), so SIGHUP and the
            // other files are not held up by it for ever.
            let mut now = fingerprint(&files);
            for _ in 0..20 {
                tokio::time::sleep(SETTLE).await;
                while events.try_recv().is_ok() {}
                let again = fingerprint(&files);
                if again == now {
                    break;
                }
                now = again;
            }
            if now != seen {
                break ("file", now);
            }
        };
        let targets = Targets {
            reads: &app.reads,
            access: &app.access,
            pool: &app.pool,
        };
        let _ = app.reload.reload(targets, trigger).await;
        if let Some(fleet) = &app.fleet {
            fleet.set_config_generation(app.reload.generation(), app.reload.digest());
        }
        let now = app.reload.watched();
        if now != files {
            files = now;
            seen = fingerprint(&files);
        } else {
            seen = read;
        }
    }
}

/// Fleet mode: what other replicas did that this one must follow (purges,
/// logouts).
async fn fleet_events(app: Arc<App>) {
    let Some(fleet) = &app.fleet else { return };
    let mut events = fleet.events();
    loop {
        match events.recv().await {
            Ok(Event::PurgeAll) => {
                app.reads.cache.purge_all();
                tracing::info!("cache purged by another replica");
            }
            Ok(Event::PurgePrefix(prefix)) => {
                tracing::info!(%prefix, "cache entries purged by another replica");
                crate::gateway::reads::purge_prefix(&app.reads, prefix);
            }
            Ok(Event::PurgeRule(rule)) => {
                tracing::info!(%rule, "cache rule purged by another replica");
                crate::gateway::reads::purge_rule(&app.reads, &rule);
            }
            Ok(Event::Logout(token_hash)) => app.access.sessions.ended_elsewhere(&token_hash),
            Ok(Event::Emptied) => {
                let app = app.clone();
                tokio::spawn(async move {
                    app.access.sessions.put_back().await;
                    crate::gateway::warm::put_back(app.reads.clone()).await;
                });
            }
            Ok(Event::Landed(_)) | Ok(Event::Session) => {}
            // Only purges, logouts and session changes come here (notices
            // of landed entries have their own channel), so lagging is rare.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                // Missed purges: drop everything rather than serve what was purged.
                tracing::warn!(missed = n, "fleet events missed; purging the local cache");
                app.reads.cache.purge_all();
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Periodic upkeep: rate-limit buckets of clients that went quiet.
async fn housekeeping(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        app.limits.shrink();
        app.access.attempts.shrink();
    }
}

/// A client's connection, plain or TLS: one type (tokio-util's `Either`,
/// which forwards vectored writes where the stream takes them), so hyper's
/// server is compiled once for both listeners (it is most of the gateway's
/// machine code) instead of once per stream type.
type ClientStream =
    Either<tokio::net::TcpStream, Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>;
