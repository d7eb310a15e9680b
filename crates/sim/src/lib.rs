//! A simulator of Veeam Backup Enterprise Manager's REST API, for tests, benchmarks
//! and `emgate sim`/`emgate demo`.
//!
//! It behaves like EM for everything the gateway uses (README, "Commands": `sim`): the
//! entry point `GET /api/`, logon with Basic auth (`POST /api/sessionMngr/`), session
//! tokens in `X-RestSvcSessionId` (header or cookie) with idle expiry, logon session
//! listing and logout, restore points and their VM restore points in reference and
//! entity form, jobs and backup job sessions in both forms, starting a job (a
//! task, `Running` for [`SimConfig::task_duration`] and then `Finished`), the
//! tasks of the calling logon session (`GET /api/tasks`, `GET`/`DELETE
//! /api/tasks/{id}`; another session's tasks are unknown to it, and a session's
//! tasks end with it), the query service for VM restore points, sessions, jobs
//! and the session's tasks (paged, sorted, filtered), the summary reports, EM's
//! `<Error>` documents, and JSON for `Accept: application/json`. Its data is
//! generated from a seed, and tests can add latency and faults (writes apart
//! from reads with [`FaultTarget::Write`]).
//!
//! The simulator stands in for EM, so it shares nothing with the gateway: it uses
//! only `crate::…` and external crates. Everything it knows about EM comes from
//! EM's reference pages and samples in `tests/data/em/` and is cited where used.
//!
//! Layout, in the order a request meets it:
//! - `server.rs`: accept loop, TLS handshake, one HTTP/1.1 connection per task;
//!   `conn.rs`: what the handler knows of its connection;
//! - `handler.rs`: routing, logon, session checks, faults, content negotiation;
//! - `state.rs`: shared state: credentials, logon sessions and their tasks,
//!   faults, counters, request log;
//! - `data.rs` (with `time.rs`): the generated estate: servers, jobs, restore
//!   points, backup job sessions;
//! - `resources.rs` (entry point, logon sessions, restore points, errors),
//!   `jobs.rs` (jobs, backup job sessions, tasks), `report.rs` (summary reports),
//!   `query.rs` (the query service): EM's representations as documents (`model.rs`);
//! - `xml.rs`, `json.rs`: the two renderings of one document;
//! - `tls.rs`: the self-signed certificate.

mod conn;
mod data;
mod handler;
mod jobs;
mod json;
mod model;
mod query;
mod report;
mod resources;
mod server;
mod state;
mod time;
mod tls;
mod xml;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use state::State;

/// How to run a simulator.
#[derive(Clone)]
pub struct SimConfig {
    /// Address to listen on, e.g. `127.0.0.1:0` for an ephemeral port.
    pub listen: SocketAddr,
    /// Serve HTTPS with a fresh self-signed certificate (SANs `localhost`,
    /// `127.0.0.1`, `::1`), as EM does on port 9398.
    pub tls: bool,
    /// The account that may log on (user names compare ignoring ASCII case).
    pub username: String,
    pub password: String,
    /// Idle timeout of a logon session; EM's is 15 minutes (http_authentication.md).
    pub session_idle: Duration,
    /// Delay added before answering every request.
    pub latency: Duration,
    /// How many restore points to generate.
    pub restore_points: usize,
    /// How long a task (e.g. a job start's) stays `Running` before it is
    /// `Finished` with its result.
    pub task_duration: Duration,
    /// Seed of the generated data; the data is a pure function of (seed, index).
    pub seed: u64,
    /// Backup jobs run while the simulator does: every this long, the next
    /// job in turn finishes and a new restore point appears (what
    /// `GET /api/query?type=RestorePoint` and new backups show EM's clients).
    /// `None`: the estate stays as generated.
    pub new_point_every: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9398)),
            tls: true,
            username: "admin".to_owned(),
            password: "admin".to_owned(),
            session_idle: Duration::from_secs(15 * 60),
            latency: Duration::ZERO,
            restore_points: 5000,
            task_duration: Duration::from_secs(2),
            seed: 1,
            new_point_every: None,
        }
    }
}

impl fmt::Debug for SimConfig {
    /// Keeps the password out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("session_idle", &self.session_idle)
            .field("latency", &self.latency)
            .field("restore_points", &self.restore_points)
            .field("task_duration", &self.task_duration)
            .field("seed", &self.seed)
            .field("new_point_every", &self.new_point_every)
            .finish()
    }
}

/// A failure the simulator can inject in place of the normal answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status with an EM `<Error>` body (no body for 1xx, 204, 304;
    /// an invalid code becomes 500). A 401 on the logon path carries
    /// `WWW-Authenticate` like a real failed logon.
    Status(u16),
    /// Never answer; the connection stays open until the simulator shuts down.
    Hang,
    /// Close the TCP connection without an answer (with a TCP RST); the request
    /// is not carried out.
    Reset,
    /// Carry the request out (a job start starts the job and creates its task),
    /// then close the TCP connection without sending the answer (with a TCP RST):
    /// EM acted, but the client never hears of it.
    AnswerLost,
    /// Answer 200 with a body that breaks off mid-document (not valid XML or JSON).
    Garbage,
    /// Answer the real document's status and headers (its full
    /// `Content-Length`), send the first half of the body, then nothing more:
    /// a client holding room for the whole body holds it until it gives up.
    Stall,
    /// Answer 200 with a small HTML page (`text/html`), as a web server or
    /// proxy in front of EM may: a body that is none of EM's documents.
    Html,
}

/// Which requests a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultTarget {
    /// `POST /api/sessionMngr/` (any method on that path).
    Logon,
    /// Every resource that needs a session (not `GET /api/`, not logon), including
    /// unknown paths below `/api/`.
    Data,
    /// Every write: a `POST`, `PUT`, `PATCH` or `DELETE` to a resource that needs a
    /// session (a job start, a task's deletion), except a logout (`DELETE
    /// /api/logonSessions/{id}`). It wins over a fault set for `Data`, which
    /// writes get when this one is clear.
    Write,
    /// Every request. It wins over a fault set for `Logon` or `Data`; clearing it
    /// (`set_fault(FaultTarget::All, None)`) clears every target.
    All,
}

/// Counters of what the simulator has seen.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    /// Successful logons (201).
    pub logons_ok: u64,
    /// Logons refused for missing or wrong credentials (401).
    pub logons_failed: u64,
    /// Sessions ended by `DELETE /api/logonSessions/{id}`.
    pub logouts: u64,
    /// Every request received, faulted ones included.
    pub requests: u64,
    /// Requests refused for a missing, unknown or expired session (401). Answers
    /// replaced by a [`Fault`] count only in `requests`.
    pub unauthorized: u64,
    /// Job starts carried out (each created a task); see [`Sim::tasks_started`].
    pub tasks_started: u64,
    /// Sessions alive now (expired ones are not counted).
    pub active_sessions: usize,
}

/// A request as it reached the simulator.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path_and_query: String,
    /// Header names in lowercase, in the order received.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running simulator. Dropping it, or calling [`Sim::shutdown`], stops it.
pub struct Sim {
    state: Arc<State>,
    addr: SocketAddr,
    base_url: String,
    seed: u64,
    cert_pem: Option<String>,
    cert_sha256: Option<String>,
    /// Dropping or signalling it ends the accept loop, which aborts connections.
    shutdown_tx: watch::Sender<bool>,
    /// The accept loop, awaited by [`Sim::shutdown`].
    task: JoinHandle<()>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("base_url", &self.base_url)
            .field("cert_sha256", &self.cert_sha256)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// Binds the listener, generates the data (and the certificate) and starts
    /// serving in a background task. Must be called within a Tokio runtime.
    pub async fn start(cfg: SimConfig) -> io::Result<Sim> {
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let base_url = base_url(addr, cfg.tls);
        let identity = if cfg.tls {
            Some(tls::identity(addr.ip())?)
        } else {
            None
        };
        let seed = cfg.seed;
        let data = data::Data::generate(seed, cfg.restore_points);
        let every = cfg.new_point_every.filter(|d| !d.is_zero());
        let state = Arc::new(State::new(data, base_url.clone(), cfg));
        let acceptor = identity
            .as_ref()
            .map(|id| tokio_rustls::TlsAcceptor::from(id.config.clone()));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(server::accept_loop(
            listener,
            state.clone(),
            acceptor,
            shutdown_rx,
        ));
        if let Some(every) = every {
            tokio::spawn(run_jobs(state.clone(), every, shutdown_tx.subscribe()));
        }
        tracing::info!(url = %base_url, "EM simulator listening");
        Ok(Sim {
            state,
            addr,
            base_url,
            seed,
            cert_pem: identity.as_ref().map(|i| i.cert_pem.clone()),
            cert_sha256: identity.map(|i| i.sha256),
            shutdown_tx,
            task,
        })
    }

    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` (`http://` without TLS), no trailing slash. When
    /// listening on an unspecified address, names the loopback address instead.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// SHA-256 of the certificate's DER, uppercase hex pairs joined by colons;
    /// `None` without TLS.
    pub fn cert_sha256(&self) -> Option<String> {
        self.cert_sha256.clone()
    }

    /// The certificate in PEM; `None` without TLS.
    pub fn cert_pem(&self) -> Option<String> {
        self.cert_pem.clone()
    }

    /// The lowercase UUID of generated restore point `index`. Defined for any
    /// index: past `restore_points` it is a well-formed id the simulator does not
    /// know (answers 404).
    pub fn restore_point_id(&self, index: usize) -> String {
        data::restore_point_uuid(self.seed, index).to_string()
    }

    /// A backup job finished just now: a new restore point (the next job in
    /// turn made it); its lowercase UUID.
    pub fn add_restore_point(&self) -> String {
        let job = self.restore_point_count();
        self.state.add_point(job).to_string()
    }

    /// From now on, counts the requests whose path starts with `prefix`
    /// (any case) that are worked on at once (latency included), for
    /// [`Sim::peak_in_flight`]; the peak starts again at zero.
    pub fn watch_in_flight(&self, prefix: &str) {
        self.state.watch(prefix);
    }

    /// The most watched requests ever worked on at once.
    pub fn peak_in_flight(&self) -> u64 {
        self.state.peak()
    }

    /// How many restore points there are now (generated and added).
    pub fn restore_point_count(&self) -> usize {
        self.state.data().points.len()
    }

    /// How many VMs (1 to 8) restore point `index` holds.
    pub fn vm_count(&self, index: usize) -> usize {
        data::vm_count(self.seed, index)
    }

    /// How many VM restore points there are in all (what
    /// `GET /api/query?type=VmRestorePoint` counts).
    pub fn vm_restore_point_count(&self) -> usize {
        self.state.data().points.iter().map(|rp| rp.vms.len()).sum()
    }

    /// The lowercase UUID of job `index` (`Backup Job {index + 1}`). Defined for
    /// any index: from [`Sim::job_count`] on, an id the simulator does not know.
    pub fn job_id(&self, index: usize) -> String {
        data::job_uuid(self.seed, index).to_string()
    }

    /// How many jobs there are (24).
    pub fn job_count(&self) -> usize {
        self.state.data().jobs.len()
    }

    /// The lowercase UUID of backup job session `index`: sessions are numbered
    /// job by job, each job's oldest first, so job `j`'s runs are
    /// `j * 10 .. j * 10 + 10`. Defined for any index: from
    /// [`Sim::backup_session_count`] on, an id the simulator does not know.
    pub fn backup_session_id(&self, index: usize) -> String {
        data::session_uuid(self.seed, index).to_string()
    }

    /// How many backup job sessions there are (10 per job).
    pub fn backup_session_count(&self) -> usize {
        self.state.data().sessions.len()
    }

    /// Changes the password; existing sessions stay valid.
    pub fn set_password(&self, password: &str) {
        self.state.set_password(password);
    }

    /// Changes the delay added before every answer (from the next request on).
    pub fn set_latency(&self, latency: Duration) {
        self.state.set_latency(latency);
    }

    /// Ends every logon session: their tokens get 401 from now on.
    pub fn expire_all_sessions(&self) {
        self.state.expire_all_sessions();
    }

    /// Sets (`Some`) or clears (`None`) the fault for a target.
    pub fn set_fault(&self, target: FaultTarget, fault: Option<Fault>) {
        self.state.set_fault(target, fault);
    }

    /// Sets (`Some`) or clears (`None`) a fault for every request whose path
    /// starts with `prefix` (ignoring ASCII case), session or not: a resource
    /// that fails on its own. A fault set with [`Sim::set_fault`] wins.
    pub fn set_path_fault(&self, prefix: &str, fault: Option<Fault>) {
        self.state.set_path_fault(prefix, fault);
    }

    /// Sets (`Some`) or clears (`None`) the delay of requests whose path starts
    /// with `prefix` (ignoring ASCII case), in place of the global latency: a
    /// slow resource. The longest matching prefix wins.
    pub fn set_path_latency(&self, prefix: &str, latency: Option<Duration>) {
        self.state.set_path_latency(prefix, latency);
    }

    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// How many job starts the simulator carried out since it started, over all
    /// logon sessions (each created a task; a start answered by a [`Fault`] in
    /// place of the work is not one). The same as `stats().tasks_started`.
    pub fn tasks_started(&self) -> u64 {
        self.state.stats().tasks_started
    }

    /// The last 10 000 requests received, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }

    pub fn clear_requests(&self) {
        self.state.clear_requests();
    }

    /// Stops accepting, closes every connection (hung ones included) and waits
    /// until the listener is closed.
    pub async fn shutdown(self) {
        let Sim {
            shutdown_tx, task, ..
        } = self;
        let _ = shutdown_tx.send(true);
        if let Err(e) = task.await {
            if e.is_panic() {
                tracing::error!("EM simulator task panicked");
            }
        }
    }
}

/// The jobs' schedule: every `every`, the next job in turn makes a restore
/// point, until the simulator shuts down.
async fn run_jobs(state: Arc<State>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut job = 0usize;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let id = state.add_point(job);
                tracing::debug!(%id, job, "sim: a job made a restore point");
                job = job.wrapping_add(1);
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// The URL clients use: loopback in place of an unspecified address.
fn base_url(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    match ip {
        IpAddr::V4(v4) => format!("{scheme}://{v4}:{}", addr.port()),
        IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{}", addr.port()),
    }
}

/// `emgate sim`: starts the simulator, prints where it is and how to log on, and
/// runs until Ctrl-C or SIGTERM.
pub async fn run(cfg: SimConfig) -> io::Result<()> {
    let username = cfg.username.clone();
    let password = cfg.password.clone();
    let restore_points = cfg.restore_points;
    let task_duration = cfg.task_duration;
    let sim = Sim::start(cfg).await?;
    let url = sim.base_url();
    println!("Enterprise Manager simulator listening on {url}");
    println!("  entry point:    {url}/api/");
    println!("  logon:          POST {url}/api/sessionMngr/?v=latest (Basic auth)");
    println!("  username:       {username}");
    println!("  password:       {password}");
    if let Some(fp) = sim.cert_sha256() {
        println!("  TLS cert SHA-256: {fp}");
    }
    if restore_points > 0 {
        println!(
            "  {restore_points} restore points, e.g. {url}/api/restorePoints/{}/vmRestorePoints",
            sim.restore_point_id(0)
        );
    }
    println!(
        "  {} jobs, {} backup sessions, e.g. {url}/api/query?type=BackupJobSession&pageSize=20",
        sim.job_count(),
        sim.backup_session_count()
    );
    println!(
        "  job starts: POST {url}/api/jobs/{}?action=start; each task runs {task_duration:?}, see {url}/api/tasks",
        sim.job_id(0)
    );
    println!("Press Ctrl-C to stop.");
    let waited = wait_for_stop().await;
    sim.shutdown().await;
    waited
}

/// Waits for Ctrl-C (SIGINT) or, on Unix, SIGTERM.
async fn wait_for_stop() -> io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
