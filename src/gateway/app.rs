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
use crate::gateway::access::AccessState;
use crate::gateway::limit::ClientLimits;
use crate::gateway::reads::ReadState;

/// Shared state of a running gateway: the composition root's, which only
/// the server, the router and the operator's pages (admin, status) see.
/// Each phase of a request gets the part it uses ([`ReadState`],
/// [`AccessState`]); `tests/layering.rs` keeps it that way.
pub struct App {
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// The pooled EM session and client.
    pub pool: Arc<SessionPool>,
    /// What reads use: the cache, its rules, the fleet's tier.
    pub reads: Arc<ReadState>,
    /// What client access uses: clients, gateway sessions, attempts.
    pub access: AccessState,
    /// Set on SIGTERM: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    /// Set while the hot keys of before the start are fetched again, with
    /// `EMGATE_WARM_BEFORE_READY`: `/readyz` answers 503 meanwhile.
    pub warming: AtomicBool,
    /// Renders `/metrics` (`None` if another metrics recorder owns the process).
    pub metrics: Option<PrometheusHandle>,
    /// Places for requests being worked on (`EMGATE_MAX_CONCURRENCY`);
    /// probes never take one.
    pub work: Arc<Semaphore>,
    /// EM's tasks, by client.
    pub tasks: Arc<crate::gateway::tasks::Tasks>,
    /// Fleet mode's shared tier.
    pub fleet: Option<Fleet>,
    /// Per-client rate limits.
    pub limits: ClientLimits,
    /// The API versions EM's entry point listed at start (the status page).
    pub em_versions: std::sync::Mutex<Vec<String>>,
    /// Reloads: what they replace things through, and their record.
    pub reload: crate::gateway::reload::Reloader,
    /// The address actually bound (the fallback for links when a request names no host).
    pub local_addr: SocketAddr,
    /// Makes the ids of requests that come without a usable one.
    pub request_ids: crate::gateway::request_id::ProcessUniqueId,
}
