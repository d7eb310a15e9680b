//! Changes while running (README, "Changes while running"): on `SIGHUP`,
//! or when a file emgate reads changes, the settings are read again and
//! applied all together, or not at all.
//!
//! A reload, step by step; a step that fails ends it, nothing applied:
//!
//! | step      | what                                                    | on failure                       |
//! |-----------|---------------------------------------------------------|----------------------------------|
//! | load      | the TOML file, `EMGATE_*`, `*_FILE` secrets, validated  | error naming the setting         |
//! | preflight | the clients file, the listener's certificate and key    | error naming the setting         |
//! | log       | `EMGATE_LOG` parsed                                     | error naming `EMGATE_LOG`        |
//! | apply     | clients, admin token, EM password, certificate, log filter, cache rules | cannot fail     |
//!
//! What applying keeps: open connections; client sessions, except those
//! of a client no longer in the clients file (refused from then on);
//! the EM session (a new password is used by the next logon, and a logon
//! paused after refusals tries again at once); the cache entries of every
//! rule that did not change ([`reads::replace_rules`]); for a minute, the
//! admin token replaced ([`ADMIN_TOKEN_OVERLAP`]).
//!
//! Everything else a running gateway cannot change (the listen address,
//! the shared URL and prefix, limits, EM's URL and trust, ...): a changed
//! value is named in the reload's log line and on the status page as
//! kept, and applies at the next restart. So is turning HTTPS on or off.
//!
//! [`ADMIN_TOKEN_OVERLAP`]: crate::gateway::access::ADMIN_TOKEN_OVERLAP

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::{ConfigError, Settings, Sources, UpstreamTrust};
use crate::em::session::SessionPool;
use crate::gateway::access::AccessState;
use crate::gateway::clients::Clients;
use crate::gateway::listen_tls::LiveCert;
use crate::gateway::reads::{self, ReadState, Rules};

/// What the files that settings name hold, read and checked by the modules
/// that own their formats (settings only know they are readable).
pub struct Preflight {
    /// The clients file's clients (empty without one).
    pub clients: Clients,
    /// The listener's certificate and key, when HTTPS is configured.
    pub cert: Option<Arc<rustls::sign::CertifiedKey>>,
}

/// Reads the clients file, EM's CA bundle and the listener's certificate and
/// key; an error names the setting. `check-config`, `serve` and a reload
/// all run it, so a gateway that starts, or reloads, has usable files.
pub fn preflight(settings: &Settings) -> Result<Preflight, ConfigError> {
    let clients = match &settings.access.clients_file {
        Some(path) => {
            Clients::load(path).map_err(|e| ConfigError::setting("EMGATE_CLIENTS_FILE", e))?
        }
        None => Clients::default(),
    };
    if let Some(shared) = &settings.shared {
        crate::fleet::preflight(shared).map_err(|(setting, e)| ConfigError::setting(setting, e))?;
    }
    if let UpstreamTrust::CaFile(path) = &settings.upstream.trust {
        crate::em::tls::load_ca_file(path)
            .map_err(|e| ConfigError::setting("EMGATE_UPSTREAM_CA_FILE", e))?;
    }
    let cert = match &settings.tls {
        Some(t) => Some(
            crate::gateway::listen_tls::certified_key(t)
                .map_err(|e| ConfigError::setting("EMGATE_TLS_CERT_FILE", e))?,
        ),
        None => None,
    };
    Ok(Preflight { clients, cert })
}

/// Settings a reload applies (by their environment names); any other that
/// changed is kept until a restart.
const LIVE: &[&str] = &[
    "EMGATE_CLIENTS_FILE",
    "EMGATE_ADMIN_TOKEN",
    "EMGATE_ADMIN_TOKEN_FILE",
    "EMGATE_UPSTREAM_PASSWORD",
    "EMGATE_UPSTREAM_PASSWORD_FILE",
    "EMGATE_TLS_CERT_FILE",
    "EMGATE_TLS_KEY_FILE",
    "EMGATE_LOG",
    "EMGATE_CACHE_TTL",
    "EMGATE_CACHE_NEGATIVE_TTL",
    "EMGATE_CACHE_STALE_IF_ERROR",
    "EMGATE_CACHE_STALE_WHILE_REVALIDATE",
    "EMGATE_CACHE_DEFAULT_RULES",
    "cache.rules",
];

/// The last reload, as the status page (and its JSON) shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastReload {
    /// When it ended (RFC 3339).
    pub at: String,
    /// What asked for it: `SIGHUP` or `file`.
    pub trigger: &'static str,
    /// Whether it was applied.
    pub ok: bool,
    /// Why nothing was applied (the setting named), or `None`: applied.
    pub error: Option<String>,
    /// What changed and was applied (setting names, clients added and
    /// removed, rules whose entries were dropped).
    pub applied: Vec<String>,
    /// Settings that changed but apply only at a restart.
    pub kept: Vec<String>,
}

/// The reload machinery of one gateway: where its settings come from, the
/// handles a reload replaces things through, and its record.
pub struct Reloader {
    /// The TOML file (`--config`), if any.
    file: Option<PathBuf>,
    /// The listener's certificate (HTTPS).
    cert: Option<Arc<LiveCert>>,
    /// The settings the gateway started with (what cannot change is
    /// compared with them) and the last applied (what can).
    started: Arc<Settings>,
    /// What the files read only at start held then (CA bundles), by setting.
    started_files: Vec<(&'static str, Option<[u8; 32]>)>,
    applied: ArcSwap<Settings>,
    /// One reload at a time.
    running: tokio::sync::Mutex<()>,
    /// Successful reloads so far: the configuration's generation.
    generation: AtomicU64,
    /// A digest of the settings and files applied (see [`Reloader::digest`]).
    digest: Mutex<[u8; 32]>,
    last: Mutex<Option<LastReload>>,
}

/// What a reload applies to.
pub struct Targets<'a> {
    /// Cache rules.
    pub reads: &'a ReadState,
    /// Clients and the admin token.
    pub access: &'a AccessState,
    /// The EM password.
    pub pool: &'a SessionPool,
}

impl Reloader {
    /// For a gateway started with `settings` from `file`, its listener's
    /// certificate replaced through `cert`.
    pub fn new(
        settings: Arc<Settings>,
        file: Option<PathBuf>,
        cert: Option<Arc<LiveCert>>,
    ) -> Self {
        Reloader {
            file,
            cert,
            started_files: read_at_start(&settings),
            started: settings.clone(),
            applied: ArcSwap::new(settings),
            running: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            digest: Mutex::new([0; 32]),
            last: Mutex::new(None),
        }
    }

    /// A digest of the settings in use and the bytes of every file they
    /// name: equal on two replicas when they run the same configuration
    /// (the fleet compares MACs of it, never the digest itself, which
    /// covers secret files).
    pub fn digest(&self) -> [u8; 32] {
        *self.digest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Works the digest out again from what is applied now.
    pub fn update_digest(&self) {
        let settings = self.applied.load();
        let mut input = settings.render_effective().into_bytes();
        // The files' bytes, not their paths (the settings name those).
        for file in self.watched() {
            let bytes = std::fs::read(&file).unwrap_or_default();
            input.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            input.extend_from_slice(&bytes);
        }
        *self.digest.lock().unwrap_or_else(|e| e.into_inner()) = crate::digest::sha256(&input);
    }

    /// The configuration's generation: 0 as started, one more per reload
    /// applied.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The last reload, if any.
    pub fn last(&self) -> Option<LastReload> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The settings as last read (a setting kept until a restart shows
    /// its new value here, and is named in [`LastReload::kept`]).
    pub fn settings(&self) -> Arc<Settings> {
        self.applied.load_full()
    }

    /// The TOML file, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Settings come from this TOML file.
    pub fn set_file(&mut self, file: Option<PathBuf>) {
        self.file = file;
    }

    /// Reads everything again and applies it, or nothing (see the module
    /// docs); one reload at a time. The new generation, or the error.
    pub async fn reload(&self, to: Targets<'_>, trigger: &'static str) -> Result<u64, String> {
        let _one = self.running.lock().await;
        let outcome = self.load_and_apply(&self.applied.load(), &to);
        let (error, applied_now, kept, new) = match outcome {
            Ok((settings, applied_now, kept, password)) => {
                if let Some(password) = password {
                    to.pool.set_password(password).await;
                }
                (None, applied_now, kept, Some(settings))
            }
            Err(e) => (Some(e), Vec::new(), Vec::new(), None),
        };
        let generation = match &new {
            Some(_) => self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            None => self.generation(),
        };
        match &error {
            None => tracing::info!(
                trigger,
                generation,
                applied = %applied_now.join(", "),
                kept_until_restart = %kept.join(", "),
                "configuration reloaded"
            ),
            Some(e) => tracing::error!(
                trigger,
                error = %e,
                "configuration reload failed; nothing applied, the settings in use stay"
            ),
        }
        crate::ops::metrics::config_reload(Some(error.is_none()));
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastReload {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            trigger,
            ok: error.is_none(),
            error: error.clone(),
            applied: applied_now,
            kept,
        });
        if let Some(settings) = new {
            self.applied.store(Arc::new(settings));
            self.update_digest();
        }
        match error {
            None => Ok(generation),
            Some(e) => Err(e),
        }
    }

    /// Every step but the password's (async): the new settings, what was
    /// applied and kept, and a new EM password to set.
    #[allow(clippy::type_complexity)]
    fn load_and_apply(
        &self,
        before: &Settings,
        to: &Targets<'_>,
    ) -> Result<
        (
            Settings,
            Vec<String>,
            Vec<String>,
            Option<crate::secret::Secret>,
        ),
        String,
    > {
        let new =
            Settings::load(&Sources::process(self.file.as_deref())).map_err(|e| e.to_string())?;
        let Preflight { clients, cert } = preflight(&new).map_err(|e| e.to_string())?;
        crate::ops::logging::parse_filter(&new.log.filter)
            .map_err(|e| format!("EMGATE_LOG: {e}"))?;
        // Validated: from here on everything applies.
        let changed = new.changed_from(before);
        let mut kept: Vec<String> = new
            .changed_from(&self.started)
            .into_iter()
            .filter(|env| !LIVE.contains(env))
            .map(String::from)
            .collect();
        for (env, then) in &self.started_files {
            if read_at_start(&new)
                .iter()
                .any(|(e, now)| e == env && now != then)
            {
                kept.push(format!("{env} (its content)"));
            }
        }
        // Without a shared secret the fleet's keys come from the EM
        // password as it was at start: a replica started after the
        // rotation would make other keys, and the fleet would split.
        let keys_from_password = self
            .started
            .shared
            .as_ref()
            .is_some_and(|s| s.secret.is_none());
        if keys_from_password && changed.contains(&"EMGATE_UPSTREAM_PASSWORD") {
            tracing::warn!(
                "the EM password changed: the fleet's keys stay derived from the one at start until every replica restarts; set EMGATE_SHARED_SECRET so a rotation needs no restart"
            );
            kept.push("the fleet's keys (derived from the EM password at start)".into());
        }
        let https_switched = self.started.tls.is_some() != new.tls.is_some();
        if https_switched {
            kept.push("HTTPS on or off (EMGATE_TLS_CERT_FILE)".into());
        }
        let mut applied: Vec<String> = Vec::new();
        let old_clients = to.access.clients.load_full();
        if !old_clients.same_as(&clients) {
            let added: Vec<&str> = clients
                .names()
                .filter(|n| !old_clients.contains(n))
                .collect();
            let removed: Vec<&str> = old_clients
                .names()
                .filter(|n| !clients.contains(n))
                .collect();
            applied.push(format!(
                "clients (added: [{}], removed: [{}], {} in all)",
                added.join(" "),
                removed.join(" "),
                clients.len()
            ));
            to.access.clients.store(Arc::new(clients));
        }
        if to.access.admin.replace(new.access.admin_token.as_ref()) {
            applied.push("EMGATE_ADMIN_TOKEN (the old one works for another minute)".into());
        }
        let password = changed
            .contains(&"EMGATE_UPSTREAM_PASSWORD")
            .then(|| new.upstream.password.clone());
        if password.is_some() {
            applied.push("EMGATE_UPSTREAM_PASSWORD".into());
        }
        if let (Some(live), Some(cert), false) = (&self.cert, cert, https_switched) {
            if live.replace(cert) {
                applied.push("the listener's certificate".into());
            }
        }
        if new.log.filter != before.log.filter {
            match crate::ops::logging::set_filter(&new.log.filter) {
                Ok(()) => applied.push("EMGATE_LOG".into()),
                Err(e) => tracing::warn!(error = %e, "the log filter stays"),
            }
        }
        let (dropped, added) = reads::replace_rules(to.reads, Rules::new(&new.cache));
        if !dropped.is_empty() || !added.is_empty() {
            applied.push(format!(
                "cache rules (entries dropped: [{}], added: [{}])",
                dropped.join(" "),
                added.join(" ")
            ));
        }
        Ok((new, applied, kept, password))
    }

    /// The files whose change reloads: the TOML file and every `*_FILE`
    /// setting's, by the settings last applied.
    pub fn watched(&self) -> Vec<PathBuf> {
        let mut files = self.applied.load().files();
        files.extend(self.file.clone());
        files
    }
}

/// Files read only at start (CA bundles): their setting and a digest of
/// what they hold now.
fn read_at_start(settings: &Settings) -> Vec<(&'static str, Option<[u8; 32]>)> {
    ["EMGATE_UPSTREAM_CA_FILE", "EMGATE_SHARED_CA_FILE"]
        .into_iter()
        .filter_map(|env| {
            let path = settings.given(env).filter(|p| !p.trim().is_empty())?;
            Some((env, fingerprint(&[PathBuf::from(path.trim())])[0]))
        })
        .collect()
}

/// What the watched files hold now: a digest of each one's bytes (or that
/// it cannot be read), so a reload runs only when one really changed, not
/// for every event in their folders.
pub fn fingerprint(files: &[PathBuf]) -> Vec<Option<[u8; 32]>> {
    files
        .iter()
        .map(|f| std::fs::read(f).ok().map(|b| crate::digest::sha256(&b)))
        .collect()
}

/// Waits for a change of `files` after an event in their folders settles
/// (writers of a file and Kubernetes' swap make several events at once).
pub const SETTLE: Duration = Duration::from_millis(150);

/// Also looked at this often without an event (a file system whose events
/// do not reach inotify, such as some network mounts).
pub const POLL: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::LIVE;

    /// A connection keeps the name a session token was given
    /// (`access::KnownCredential`, `logon::ClientSessions::token_name`):
    /// the fleet's secret, which names tokens, must wait for a restart.
    #[test]
    fn the_secret_that_names_session_tokens_is_never_applied_live() {
        for setting in ["EMGATE_SHARED_SECRET", "EMGATE_SHARED_SECRET_FILE"] {
            assert!(!LIVE.contains(&setting), "{setting}");
        }
    }
}
