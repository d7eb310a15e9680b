//! The state every request shares: settings, the pooled EM session, the
//! cache, client sessions and limits. Built once by [`crate::gateway::server`].

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use crate::config::Settings;
use crate::em::session::SessionPool;
use crate::fleet::Fleet;
use crate::gateway::clients::Clients;
use crate::gateway::limit::{Attempts, ClientLimits};
use crate::gateway::logon::ClientSessions;
use crate::gateway::reads::{CollapseStats, ReadCache, Rules};

/// Shared state of a running gateway.
pub struct App {
    /// Validated settings.
    pub settings: Settings,
    /// The pooled EM session and client.
    pub pool: Arc<SessionPool>,
    /// The cache of reads (every rule's entries, and the collapsing of
    /// uncached reads).
    pub cache: ReadCache,
    /// The cache rules, in the order they are tried.
    pub rules: Rules,
    /// Uncached reads that shared another's EM fetch.
    pub collapse_stats: CollapseStats,
    /// Set on SIGTERM: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    /// Renders `/metrics` (`None` if another metrics recorder owns the process).
    pub metrics: Option<PrometheusHandle>,
    /// The clients file's clients (empty without one).
    pub clients: Clients,
    /// Places for requests being worked on (`EMGATE_MAX_CONCURRENCY`);
    /// probes never take one.
    pub work: Arc<Semaphore>,
    /// Gateway sessions of clients (drop-in logon).
    pub sessions: ClientSessions,
    /// EM's tasks, by client.
    pub tasks: Arc<crate::gateway::tasks::Tasks>,
    /// Fleet mode's shared tier.
    pub fleet: Option<Fleet>,
    /// Per-client rate limits.
    pub limits: ClientLimits,
    /// Per-address attempts at a secret: every admin request, and every
    /// credential that fails on `/api`.
    pub attempts: Attempts,
    /// The API versions EM's entry point listed at start (the status page).
    pub em_versions: std::sync::Mutex<Vec<String>>,
    /// The address actually bound (the fallback for links when a request names no host).
    pub local_addr: SocketAddr,
}
