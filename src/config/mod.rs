//! Settings: the TOML file, overridden by `EMGATE_*` environment variables,
//! validated once into typed values (see README, "Configuration").
//!
//! Every setting is declared once in [`SETTINGS`] (TOML key, environment
//! variable, default, whether it is secret); loading merges the two sources
//! into strings and then parses each into its typed field, so an error always
//! names the setting it is about, and `check-config` can print them all.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

use crate::secret::Secret;

pub mod rules;

use rules::{PathTemplate, Rule, RuleOrigin};

/// A configuration problem, reported in one line that names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    /// The setting at fault, as `EMGATE_NAME (section.key)`, or the file.
    pub setting: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// An error about the setting named by its environment variable.
    pub fn setting(env: &str, reason: impl Into<String>) -> Self {
        ConfigError::of(spec_of(env), reason)
    }

    fn of(spec: &Spec, reason: impl Into<String>) -> Self {
        ConfigError {
            setting: format!("{} ({}.{})", spec.env, spec.section, spec.key),
            reason: reason.into(),
        }
    }

    /// An error about something that is not a single setting (the file itself).
    pub fn other(what: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            setting: what.into(),
            reason: reason.into(),
        }
    }
}

/// One declared setting.
#[derive(Debug)]
pub struct Spec {
    /// TOML section.
    pub section: &'static str,
    /// Key within the section.
    pub key: &'static str,
    /// Environment variable that overrides it.
    pub env: &'static str,
    /// Default as written in the TOML file, or `None` when there is none.
    pub default: Option<&'static str>,
    /// Printed as `***` by `check-config`.
    pub secret: bool,
}

const fn spec(
    section: &'static str,
    key: &'static str,
    env: &'static str,
    default: Option<&'static str>,
    secret: bool,
) -> Spec {
    Spec {
        section,
        key,
        env,
        default,
        secret,
    }
}

/// Every setting emgate knows, in the order `check-config` prints them.
#[rustfmt::skip]
pub const SETTINGS: &[Spec] = &[
    spec("listen", "address", "EMGATE_LISTEN", Some("127.0.0.1:9399"), false),
    spec("listen", "public_url", "EMGATE_PUBLIC_URL", None, false),
    spec("listen", "trust_forwarded", "EMGATE_TRUST_FORWARDED", Some("false"), false),
    spec("listen", "drain_timeout", "EMGATE_DRAIN_TIMEOUT", Some("25s"), false),
    spec("listen", "max_concurrency", "EMGATE_MAX_CONCURRENCY", Some("1024"), false),
    spec("listen", "max_connections", "EMGATE_MAX_CONNECTIONS", Some("10000"), false),
    spec("listen", "header_timeout", "EMGATE_HEADER_TIMEOUT", Some("30s"), false),
    spec("listen", "idle_timeout", "EMGATE_IDLE_TIMEOUT", Some("60s"), false),
    spec("upstream", "url", "EMGATE_UPSTREAM_URL", None, false),
    spec("upstream", "username", "EMGATE_UPSTREAM_USERNAME", None, false),
    spec("upstream", "password", "EMGATE_UPSTREAM_PASSWORD", None, true),
    spec("upstream", "password_file", "EMGATE_UPSTREAM_PASSWORD_FILE", None, false),
    spec("upstream", "ca_file", "EMGATE_UPSTREAM_CA_FILE", None, false),
    spec("upstream", "cert_sha256", "EMGATE_UPSTREAM_CERT_SHA256", None, false),
    spec("upstream", "insecure", "EMGATE_UPSTREAM_INSECURE", Some("false"), false),
    spec("upstream", "timeout", "EMGATE_UPSTREAM_TIMEOUT", Some("120s"), false),
    spec("upstream", "max_body", "EMGATE_UPSTREAM_MAX_BODY", Some("64MiB"), false),
    spec("upstream", "keepalive", "EMGATE_UPSTREAM_KEEPALIVE", Some("5m"), false),
    spec("upstream", "logon_backoff_max", "EMGATE_UPSTREAM_LOGON_BACKOFF_MAX", Some("60s"), false),
    spec("upstream", "concurrency", "EMGATE_UPSTREAM_CONCURRENCY", Some("32"), false),
    spec("upstream", "queue_wait", "EMGATE_UPSTREAM_QUEUE_WAIT", Some("5s"), false),
    spec("upstream", "memory", "EMGATE_UPSTREAM_MEMORY", Some("256MiB"), false),
    spec("upstream", "background_concurrency", "EMGATE_BACKGROUND_CONCURRENCY", Some("4"), false),
    spec("upstream", "background_rate", "EMGATE_BACKGROUND_RATE", Some("10"), false),
    spec("cache", "ttl", "EMGATE_CACHE_TTL", Some("5m"), false),
    spec("cache", "stale_if_error", "EMGATE_CACHE_STALE_IF_ERROR", Some("1h"), false),
    spec("cache", "negative_ttl", "EMGATE_CACHE_NEGATIVE_TTL", Some("30s"), false),
    spec("cache", "max_bytes", "EMGATE_CACHE_MAX_BYTES", Some("256MiB"), false),
    spec("cache", "stale_wait", "EMGATE_CACHE_STALE_WAIT", Some("2s"), false),
    spec("cache", "stale_while_revalidate", "EMGATE_CACHE_STALE_WHILE_REVALIDATE", Some("1m"), false),
    spec("cache", "refresh_ahead", "EMGATE_CACHE_REFRESH_AHEAD", Some("true"), false),
    spec("cache", "collapse", "EMGATE_COLLAPSE", Some("true"), false),
    spec("cache", "default_rules", "EMGATE_CACHE_DEFAULT_RULES", Some("true"), false),
    spec("warm", "prefetch", "EMGATE_PREFETCH", Some("true"), false),
    spec("warm", "prefetch_interval", "EMGATE_PREFETCH_INTERVAL", Some("1m"), false),
    spec("warm", "prefetch_window", "EMGATE_PREFETCH_WINDOW", Some("24h"), false),
    spec("warm", "state_dir", "EMGATE_STATE_DIR", None, false),
    spec("warm", "keys", "EMGATE_WARM_KEYS", Some("10000"), false),
    spec("warm", "before_ready", "EMGATE_WARM_BEFORE_READY", Some("false"), false),
    spec("json", "case", "EMGATE_JSON_CASE", Some("pascal"), false),
    spec("access", "clients_file", "EMGATE_CLIENTS_FILE", None, false),
    spec("access", "allow_anonymous", "EMGATE_ALLOW_ANONYMOUS", None, false),
    spec("access", "allow_writes", "EMGATE_ALLOW_WRITES", Some("false"), false),
    spec("access", "task_retention", "EMGATE_TASK_RETENTION", Some("24h"), false),
    spec("access", "rate_limit", "EMGATE_RATE_LIMIT", Some("0"), false),
    spec("access", "rate_burst", "EMGATE_RATE_BURST", Some("0"), false),
    spec("access", "max_request_body", "EMGATE_MAX_REQUEST_BODY", Some("1MiB"), false),
    spec("access", "admin_token", "EMGATE_ADMIN_TOKEN", None, true),
    spec("access", "admin_token_file", "EMGATE_ADMIN_TOKEN_FILE", None, false),
    spec("tls", "cert_file", "EMGATE_TLS_CERT_FILE", None, false),
    spec("tls", "key_file", "EMGATE_TLS_KEY_FILE", None, false),
    spec("shared", "url", "EMGATE_SHARED_URL", None, false),
    spec("shared", "password", "EMGATE_SHARED_PASSWORD", None, true),
    spec("shared", "password_file", "EMGATE_SHARED_PASSWORD_FILE", None, false),
    spec("shared", "ca_file", "EMGATE_SHARED_CA_FILE", None, false),
    spec("shared", "prefix", "EMGATE_SHARED_PREFIX", Some("emgate"), false),
    spec("shared", "timeout", "EMGATE_SHARED_TIMEOUT", Some("250ms"), false),
    spec("shared", "em_session", "EMGATE_SHARED_EM_SESSION", Some("true"), false),
    spec("shared", "lease", "EMGATE_SHARED_LEASE", Some("5s"), false),
    spec("shared", "secret", "EMGATE_SHARED_SECRET", None, true),
    spec("shared", "secret_file", "EMGATE_SHARED_SECRET_FILE", None, false),
    spec("shared", "max_entry", "EMGATE_SHARED_MAX_ENTRY", None, false),
    spec("log", "filter", "EMGATE_LOG", Some("info"), false),
    spec("log", "format", "EMGATE_LOG_FORMAT", Some("text"), false),
    spec("traces", "otlp_endpoint", "EMGATE_OTLP_ENDPOINT", None, false),
    spec("traces", "sample_ratio", "EMGATE_OTLP_SAMPLE_RATIO", Some("1.0"), false),
];

/// Shortest admin token accepted, in characters after trimming (see README, "Configuration").
pub const MIN_ADMIN_TOKEN: usize = 16;

/// JSON member naming (see README, "JSON, and which EM version you have").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonCase {
    /// EM 12 and earlier: names as in the XML.
    Pascal,
    /// EM 13: .NET camel-case policy.
    Camel,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// How the gateway decides to trust EM's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTrust {
    /// The operating system's root store.
    SystemRoots,
    /// A PEM bundle of CA certificates.
    CaFile(PathBuf),
    /// Exactly one certificate, by SHA-256 of its DER encoding.
    Pinned([u8; 32]),
    /// Anything at all (warned about at start).
    Insecure,
}

/// Where the gateway listens and how it sees itself.
#[derive(Debug, Clone)]
pub struct ListenSettings {
    /// Socket address to bind.
    pub address: SocketAddr,
    /// Public base URL for rewritten Hrefs; `None` derives it per request.
    pub public_url: Option<Uri>,
    /// Whether `X-Forwarded-Proto`/`-Host` are believed.
    pub trust_forwarded: bool,
    /// How long in-flight requests may run after SIGTERM.
    pub drain_timeout: Duration,
    /// Requests handled at once; more wait for a slot.
    pub max_concurrency: usize,
    /// Open client connections at most; more wait in the backlog.
    pub max_connections: usize,
    /// Deadline for a connection's first request head, from accept (TLS
    /// handshake and protocol detection included), and for any one head.
    pub header_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
}

/// The EM server and how to reach it.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// EM's base URL (scheme and authority, no path), e.g. `https://em:9398`.
    pub url: Uri,
    /// EM account.
    pub username: String,
    /// Its password.
    pub password: Secret,
    /// Certificate trust.
    pub trust: UpstreamTrust,
    /// Limit for one EM request, body included.
    pub timeout: Duration,
    /// Largest EM response body accepted.
    pub max_body: usize,
    /// Idle time after which the session is touched to keep it alive.
    pub keepalive: Duration,
    /// Longest wait between logon attempts while EM refuses them.
    pub logon_backoff_max: Duration,
    /// EM requests of clients in flight at most.
    pub concurrency: usize,
    /// Longest wait for a place among them (or in the memory budget).
    pub queue_wait: Duration,
    /// Bytes of EM answers and their conversion held at once.
    pub memory: u64,
    /// Background EM requests (refresh-ahead, prefetch, rewarm) in flight at most.
    pub background_concurrency: usize,
    /// Background EM requests per second at most (0: no rate limit).
    pub background_rate: u32,
}

/// Work done before clients ask (see README, "Warm").
#[derive(Debug, Clone)]
pub struct WarmSettings {
    /// Fetch the `vmRestorePoints` of new restore points before anyone asks.
    pub prefetch: bool,
    /// How often EM's query service is asked for new restore points.
    pub prefetch_interval: Duration,
    /// How far back the first look goes.
    pub prefetch_window: Duration,
    /// Where a single replica keeps its hot keys across restarts.
    pub state_dir: Option<PathBuf>,
    /// Hot keys remembered at most.
    pub keys: usize,
    /// `/readyz` waits for the hot keys to be fetched again at start.
    pub before_ready: bool,
}

/// The vmRestorePoints cache.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Freshness.
    pub ttl: Duration,
    /// How long past the TTL an entry may be served while EM fails.
    pub stale_if_error: Duration,
    /// How long an EM 404 is remembered.
    pub negative_ttl: Duration,
    /// Memory bound in bytes.
    pub max_bytes: u64,
    /// Longest a client waits for EM when a stale copy exists.
    pub stale_wait: Duration,
    /// After the TTL, how long a vmRestorePoints copy is served at once while
    /// one background refresh runs.
    pub stale_while_revalidate: Duration,
    /// Refresh entries read during their TTL shortly before it ends.
    pub refresh_ahead: bool,
    /// Identical concurrent GET/HEAD requests of any route make one EM request.
    pub collapse: bool,
    /// Whether the default rule set is on.
    pub default_rules: bool,
    /// The effective rules, in the order they are tried: the file's, the
    /// built-in vmRestorePoints rule, then the defaults.
    pub rules: Vec<Rule>,
}

/// Who may use the gateway and how.
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// Client credentials file.
    pub clients_file: Option<PathBuf>,
    /// Requests per second per client (0: no limit).
    pub rate_limit: u32,
    /// Burst above the rate (0: one second's worth).
    pub rate_burst: u32,
    /// Largest request body forwarded (writes only).
    pub max_request_body: u64,
    /// Serve clients that present no credentials.
    pub allow_anonymous: bool,
    /// Forward POST/PUT/DELETE/PATCH.
    pub allow_writes: bool,
    /// How long the final state of a client's EM task is kept for it.
    pub task_retention: Duration,
    /// Bearer token for `/admin/*`.
    pub admin_token: Option<Secret>,
}

/// HTTPS on the listener.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

/// Logging.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// `EnvFilter` directive.
    pub filter: String,
    /// Line format.
    pub format: LogFormat,
    /// Traces, when an OTLP collector is set.
    pub traces: Option<TraceSettings>,
}

/// OpenTelemetry traces (`EMGATE_OTLP_*`).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is added).
    pub endpoint: Uri,
    /// Share of requests traced that come without a sampled `traceparent`.
    pub sample_ratio: f64,
}

/// Fleet mode (see README, "Fleet mode"): the Redis or Valkey replicas share.
#[derive(Debug, Clone)]
pub struct SharedSettings {
    /// `redis://` or `rediss://` URL, its password (if any) taken out.
    pub url: Secret,
    /// Whether the URL is `rediss://`.
    pub tls: bool,
    /// The password, from the URL or `EMGATE_SHARED_PASSWORD[_FILE]`.
    pub password: Option<Secret>,
    /// PEM bundle to trust for `rediss://` (else the system roots).
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// Bound on one Redis operation.
    pub timeout: Duration,
    /// One EM logon for the whole fleet.
    pub em_session: bool,
    /// How long a fetch or logon lease lives without renewal.
    pub lease: Duration,
    /// Key material for sealing the EM session token and signing every
    /// shared value, one secret per line (the first signs, all verify);
    /// `None`: derived from the EM credentials.
    pub secret: Option<Secret>,
    /// Largest answer put in the shared tier; `None`: the local cache's
    /// per-entry bound.
    pub max_entry: Option<u64>,
}

/// The validated, effective settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[listen]`
    pub listen: ListenSettings,
    /// `[upstream]`
    pub upstream: UpstreamSettings,
    /// `[cache]`
    pub cache: CacheSettings,
    /// `[warm]`
    pub warm: WarmSettings,
    /// `[json] case`
    pub json_case: JsonCase,
    /// `[access]`
    pub access: AccessSettings,
    /// `[tls]`, when serving HTTPS.
    pub tls: Option<TlsSettings>,
    /// `[log]`
    pub log: LogSettings,
    /// `[shared]`: fleet mode, when a Redis/Valkey URL is set.
    pub shared: Option<SharedSettings>,
    /// Raw values as merged, for `check-config`.
    raw: BTreeMap<&'static str, Origin>,
}

/// A raw value and where it came from.
#[derive(Debug, Clone)]
struct Origin {
    value: String,
    source: &'static str,
}

/// Where settings come from: a TOML file and an environment.
pub struct Sources<'a> {
    /// Path of the TOML file, if any.
    pub file: Option<&'a Path>,
    /// Looks up an environment variable.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Settings `emgate demo` sets itself (shown as "set by demo", not as
    /// coming from the environment).
    pub demo: &'a [&'a str],
}

impl Sources<'_> {
    /// The process environment and an optional file.
    pub fn process(file: Option<&Path>) -> Sources<'_> {
        Sources {
            file,
            env: &|name| std::env::var(name).ok(),
            demo: &[],
        }
    }
}

impl Settings {
    /// Loads and validates settings; the error names the setting at fault.
    pub fn load(sources: &Sources<'_>) -> Result<Settings, ConfigError> {
        let mut raw: BTreeMap<&'static str, Origin> = BTreeMap::new();
        let mut rules = Vec::new();
        if let Some(path) = sources.file {
            read_file(path, &mut raw, &mut rules)?;
        }
        for s in SETTINGS {
            if let Some(v) = (sources.env)(s.env) {
                let source = if sources.demo.contains(&s.env) {
                    "set by demo"
                } else {
                    "environment"
                };
                raw.insert(s.env, Origin { value: v, source });
            }
        }
        let values = Values {
            raw: &raw,
            rules: &rules,
        };
        let mut settings = Self::from_values(&values)?;
        // Kept for `check-config` only; secrets are dropped here so that no
        // `Debug` of the settings can show them.
        for s in SETTINGS.iter().filter(|s| s.secret) {
            if let Some(o) = raw.get_mut(s.env) {
                o.value = "***".into();
            }
        }
        // The shared URL may hold a password: shown without it.
        if let Some(o) = raw.get_mut("EMGATE_SHARED_URL") {
            o.value = redact_url_password(&o.value);
        }
        settings.raw = raw;
        Ok(settings)
    }

    fn from_values(v: &Values<'_>) -> Result<Settings, ConfigError> {
        let listen = ListenSettings {
            address: v.parse("EMGATE_LISTEN", |s| {
                s.parse::<SocketAddr>()
                    .map_err(|_| format!("not an address:port: {s:?}"))
            })?,
            public_url: v.opt("EMGATE_PUBLIC_URL", parse_base_url)?,
            trust_forwarded: v.parse("EMGATE_TRUST_FORWARDED", parse_bool)?,
            drain_timeout: v.parse("EMGATE_DRAIN_TIMEOUT", parse_duration)?,
            max_concurrency: v.parse("EMGATE_MAX_CONCURRENCY", parse_positive)?,
            max_connections: v.parse("EMGATE_MAX_CONNECTIONS", parse_positive)?,
            header_timeout: v.parse("EMGATE_HEADER_TIMEOUT", parse_positive_duration)?,
            idle_timeout: v.parse("EMGATE_IDLE_TIMEOUT", parse_positive_duration)?,
        };
        let upstream = upstream_settings(v)?;
        let mut cache = CacheSettings {
            ttl: v.parse("EMGATE_CACHE_TTL", parse_duration)?,
            stale_if_error: v.parse("EMGATE_CACHE_STALE_IF_ERROR", parse_duration)?,
            negative_ttl: v.parse("EMGATE_CACHE_NEGATIVE_TTL", parse_duration)?,
            max_bytes: v.parse("EMGATE_CACHE_MAX_BYTES", parse_size)?,
            stale_wait: v.parse("EMGATE_CACHE_STALE_WAIT", parse_duration)?,
            stale_while_revalidate: v
                .parse("EMGATE_CACHE_STALE_WHILE_REVALIDATE", parse_duration)?,
            refresh_ahead: v.parse("EMGATE_CACHE_REFRESH_AHEAD", parse_bool)?,
            collapse: v.parse("EMGATE_COLLAPSE", parse_bool)?,
            default_rules: v.parse("EMGATE_CACHE_DEFAULT_RULES", parse_bool)?,
            rules: Vec::new(),
        };
        cache.rules = effective_rules(v.rules, &cache)?;
        let warm = WarmSettings {
            prefetch: v.parse("EMGATE_PREFETCH", parse_bool)?,
            prefetch_interval: v.parse("EMGATE_PREFETCH_INTERVAL", parse_positive_duration)?,
            prefetch_window: v.parse("EMGATE_PREFETCH_WINDOW", parse_positive_duration)?,
            state_dir: v.opt("EMGATE_STATE_DIR", writable_dir)?,
            keys: v.parse("EMGATE_WARM_KEYS", parse_positive)?,
            before_ready: v.parse("EMGATE_WARM_BEFORE_READY", parse_bool)?,
        };
        let json_case = v.parse("EMGATE_JSON_CASE", |s| match s {
            "pascal" => Ok(JsonCase::Pascal),
            "camel" => Ok(JsonCase::Camel),
            _ => Err(format!("expected pascal or camel, got {s:?}")),
        })?;
        let clients_file = v.opt("EMGATE_CLIENTS_FILE", readable_file)?;
        let explicit_anonymous = v.opt("EMGATE_ALLOW_ANONYMOUS", parse_bool)?;
        let loopback = listen.address.ip().is_loopback();
        let allow_anonymous = match explicit_anonymous {
            Some(false) if clients_file.is_none() => {
                return Err(ConfigError::of(
                    spec_of("EMGATE_ALLOW_ANONYMOUS"),
                    "false without EMGATE_CLIENTS_FILE would let nobody in; set a clients file",
                ))
            }
            Some(a) => a,
            None if clients_file.is_some() => false,
            None if loopback => true,
            None => {
                return Err(ConfigError::of(
                    spec_of("EMGATE_ALLOW_ANONYMOUS"),
                    format!(
                        "listening on {} (not loopback) with no clients file would let anyone use the \
                         gateway's EM session; set EMGATE_CLIENTS_FILE, or EMGATE_ALLOW_ANONYMOUS=true \
                         if that is really meant",
                        listen.address
                    ),
                ))
            }
        };
        let admin_token = match secret_or_file(v, "EMGATE_ADMIN_TOKEN", "EMGATE_ADMIN_TOKEN_FILE")?
        {
            // A blank or short token would turn admin authentication into a
            // formality (" " once turned it off): refuse it.
            Some(t) if t.expose().trim().chars().count() < MIN_ADMIN_TOKEN => {
                let which = if v.raw("EMGATE_ADMIN_TOKEN").is_some_and(|s| !s.is_empty()) {
                    "EMGATE_ADMIN_TOKEN"
                } else {
                    "EMGATE_ADMIN_TOKEN_FILE"
                };
                return Err(ConfigError::of(
                    spec_of(which),
                    format!(
                        "the admin token must be at least {MIN_ADMIN_TOKEN} characters \
                         (not counting spaces at either end); `emgate client add admin` makes a good one"
                    ),
                ));
            }
            Some(t) => Some(Secret::new(t.expose().trim())),
            None => None,
        };
        let count = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("expected a whole number, got {s:?}"))
        };
        let access = AccessSettings {
            clients_file,
            rate_limit: v.parse("EMGATE_RATE_LIMIT", count)?,
            rate_burst: v.parse("EMGATE_RATE_BURST", count)?,
            max_request_body: v.parse("EMGATE_MAX_REQUEST_BODY", parse_size)?,
            allow_anonymous,
            allow_writes: v.parse("EMGATE_ALLOW_WRITES", parse_bool)?,
            task_retention: v.parse("EMGATE_TASK_RETENTION", parse_positive_duration)?,
            admin_token,
        };
        let tls = match (
            v.opt("EMGATE_TLS_CERT_FILE", readable_file)?,
            v.opt("EMGATE_TLS_KEY_FILE", readable_file)?,
        ) {
            (Some(cert_file), Some(key_file)) => Some(TlsSettings {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::of(
                    spec_of("EMGATE_TLS_KEY_FILE"),
                    "required when EMGATE_TLS_CERT_FILE is set",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::of(
                    spec_of("EMGATE_TLS_CERT_FILE"),
                    "required when EMGATE_TLS_KEY_FILE is set",
                ))
            }
        };
        let filter: String = v.parse("EMGATE_LOG", |s| {
            tracing_subscriber::EnvFilter::try_new(s)
                .map(|_| s.to_string())
                .map_err(|e| format!("not a log filter: {e}"))
        })?;
        let log = LogSettings {
            filter,
            format: v.parse("EMGATE_LOG_FORMAT", |s| match s {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err(format!("expected text or json, got {s:?}")),
            })?,
            traces: match v.opt("EMGATE_OTLP_ENDPOINT", parse_otlp_endpoint)? {
                Some(endpoint) => Some(TraceSettings {
                    endpoint,
                    sample_ratio: v.parse("EMGATE_OTLP_SAMPLE_RATIO", |s| {
                        s.parse::<f64>()
                            .ok()
                            .filter(|r| (0.0..=1.0).contains(r))
                            .ok_or_else(|| format!("expected a share from 0.0 to 1.0, got {s:?}"))
                    })?,
                }),
                None => None,
            },
        };
        let shared = shared_settings(v)?;
        Ok(Settings {
            listen,
            upstream,
            cache,
            warm,
            json_case,
            access,
            tls,
            log,
            shared,
            raw: BTreeMap::new(),
        })
    }

    /// The value a setting was given (by the file or the environment;
    /// secrets as `***`), or its default; `None` when unset.
    pub fn given(&self, env: &str) -> Option<&str> {
        self.raw
            .get(env)
            .map(|o| o.value.as_str())
            .or_else(|| SETTINGS.iter().find(|s| s.env == env)?.default)
    }

    /// The files these settings name (`*_FILE`), as given.
    pub fn files(&self) -> Vec<PathBuf> {
        SETTINGS
            .iter()
            .filter(|s| s.env.ends_with("_FILE"))
            .filter_map(|s| self.given(s.env))
            .filter(|v| !v.trim().is_empty())
            .map(|v| PathBuf::from(v.trim()))
            .collect()
    }

    /// The settings whose value differs from `before`'s, by their
    /// environment names: secrets are compared by value and never shown,
    /// and a change of the file's cache rules is `cache.rules`.
    pub fn changed_from(&self, before: &Settings) -> Vec<&'static str> {
        let mut changed: Vec<&'static str> = SETTINGS
            .iter()
            .filter(|s| !s.secret && self.given(s.env) != before.given(s.env))
            .map(|s| s.env)
            .collect();
        // Secrets, by value (their `*_FILE` may name the same file).
        let secret = |s: &Settings, env: &str| -> Option<Secret> {
            let shared = s.shared.as_ref();
            match env {
                "EMGATE_UPSTREAM_PASSWORD" => Some(s.upstream.password.clone()),
                "EMGATE_ADMIN_TOKEN" => s.access.admin_token.clone(),
                "EMGATE_SHARED_URL" => shared.map(|f| f.url.clone()),
                "EMGATE_SHARED_PASSWORD" => shared.and_then(|f| f.password.clone()),
                _ => shared.and_then(|f| f.secret.clone()),
            }
        };
        for env in [
            "EMGATE_UPSTREAM_PASSWORD",
            "EMGATE_ADMIN_TOKEN",
            "EMGATE_SHARED_URL",
            "EMGATE_SHARED_PASSWORD",
            "EMGATE_SHARED_SECRET",
        ] {
            let (now, then) = (secret(self, env), secret(before, env));
            if now.as_ref().map(Secret::expose) != then.as_ref().map(Secret::expose)
                && !changed.contains(&env)
            {
                changed.push(env);
            }
        }
        if self.cache.rules != before.cache.rules {
            changed.push("cache.rules");
        }
        changed
    }

    /// Each setting's shown value (TOML syntax, secrets as `"***"`) and
    /// source, or `None` when unset.
    fn effective(
        &self,
    ) -> impl Iterator<Item = (&'static Spec, Option<(String, &'static str)>)> + '_ {
        SETTINGS.iter().map(|s| {
            let shown = match self.raw.get(s.env) {
                Some(o) if s.secret => Some(("\"***\"".to_string(), o.source)),
                Some(o) => Some((toml_value(s, &o.value), o.source)),
                None => s.default.map(|d| (toml_value(s, d), "default")),
            };
            (s, shown)
        })
    }

    /// The effective settings as commented TOML, secrets shown as `***`.
    pub fn render_effective(&self) -> String {
        let mut out = String::new();
        let mut section = "";
        for (s, shown) in self.effective() {
            if s.section != section {
                if !section.is_empty() {
                    out.push('\n');
                }
                section = s.section;
                let _ = writeln!(out, "[{section}]");
            }
            match shown {
                Some((value, source)) => {
                    let _ = writeln!(out, "{} = {value}  # {}, {source}", s.key, s.env);
                }
                None => {
                    let _ = writeln!(out, "# {} = (unset)  # {}", s.key, s.env);
                }
            }
        }
        let _ = writeln!(
            out,
            "\n# Cache rules, in the order they are tried (the first that matches wins)."
        );
        for r in &self.cache.rules {
            let human = |d: Duration| humantime::format_duration(d).to_string();
            let body = format!(
                "name = {:?}\npath = {:?}\nttl = {:?}\nstale_while_revalidate = {:?}\nstale_if_error = {:?}",
                r.name,
                r.path.to_string(),
                human(r.ttl),
                human(r.stale_while_revalidate),
                human(r.stale_if_error),
            );
            match r.origin {
                RuleOrigin::File => {
                    let _ = writeln!(out, "[[cache.rules]]  # from the file\n{body}");
                }
                origin => {
                    let what = if origin == RuleOrigin::BuiltIn {
                        "built-in, set by EMGATE_CACHE_*"
                    } else {
                        "default, EMGATE_CACHE_DEFAULT_RULES"
                    };
                    let _ = writeln!(out, "# [[cache.rules]]  ({what})");
                    for line in body.lines() {
                        let _ = writeln!(out, "# {line}");
                    }
                }
            }
        }
        out
    }

    /// The effective settings on one line (`section.key=value ...`, secrets
    /// as `***`, unset ones left out), for the start-up log.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .effective()
            .filter_map(|(s, shown)| shown.map(|(v, _)| format!("{}.{}={v}", s.section, s.key)))
            .collect();
        let rules: Vec<String> = self
            .cache
            .rules
            .iter()
            .map(|r| {
                format!(
                    "{}:{}:{}",
                    r.name,
                    r.path,
                    humantime::format_duration(r.ttl)
                )
            })
            .collect();
        parts.push(format!("cache.rules={}", rules.join(",")));
        parts.join(" ")
    }
}

fn upstream_settings(v: &Values<'_>) -> Result<UpstreamSettings, ConfigError> {
    let url = v.required("EMGATE_UPSTREAM_URL", parse_base_url)?;
    let username = v.required("EMGATE_UPSTREAM_USERNAME", |s| {
        if s.is_empty() {
            Err("must not be empty".to_string())
        } else {
            Ok(s.to_string())
        }
    })?;
    let password = secret_or_file(
        v,
        "EMGATE_UPSTREAM_PASSWORD",
        "EMGATE_UPSTREAM_PASSWORD_FILE",
    )?
    .ok_or_else(|| {
        ConfigError::of(
            spec_of("EMGATE_UPSTREAM_PASSWORD"),
            "required (or EMGATE_UPSTREAM_PASSWORD_FILE)",
        )
    })?;
    // Readable here; its PEM is checked by the EM client that uses it
    // (see `gateway::server::preflight`).
    let ca_file = v.opt("EMGATE_UPSTREAM_CA_FILE", readable_file)?;
    let pin = v.opt("EMGATE_UPSTREAM_CERT_SHA256", parse_fingerprint)?;
    let insecure = v.parse("EMGATE_UPSTREAM_INSECURE", parse_bool)?;
    let trust = match (ca_file, pin, insecure) {
        (None, None, false) => UpstreamTrust::SystemRoots,
        (Some(path), None, false) => UpstreamTrust::CaFile(path),
        (None, Some(pin), false) => UpstreamTrust::Pinned(pin),
        (None, None, true) => UpstreamTrust::Insecure,
        _ => {
            return Err(ConfigError::of(
                spec_of("EMGATE_UPSTREAM_CERT_SHA256"),
                "choose one of EMGATE_UPSTREAM_CA_FILE, EMGATE_UPSTREAM_CERT_SHA256 and \
                 EMGATE_UPSTREAM_INSECURE=true",
            ))
        }
    };
    if url.scheme_str() == Some("http") && trust != UpstreamTrust::Insecure {
        return Err(ConfigError::of(
            spec_of("EMGATE_UPSTREAM_URL"),
            "http:// would send the EM password in clear; use EM's https:// URL \
             (or EMGATE_UPSTREAM_INSECURE=true if that is really meant)",
        ));
    }
    let max_body = v.parse("EMGATE_UPSTREAM_MAX_BODY", parse_size)?;
    let memory = v.parse("EMGATE_UPSTREAM_MEMORY", parse_size)?;
    // The largest answer, and its conversion (about twice its size), must
    // fit in the budget, or it could never be served.
    if max_body.saturating_mul(3) > memory {
        return Err(ConfigError::of(
            spec_of("EMGATE_UPSTREAM_MEMORY"),
            format!(
                "must be at least 3 x EMGATE_UPSTREAM_MAX_BODY ({max_body} bytes): the largest \
                 answer and its conversion must fit"
            ),
        ));
    }
    Ok(UpstreamSettings {
        url,
        username,
        password,
        trust,
        timeout: v.parse("EMGATE_UPSTREAM_TIMEOUT", parse_positive_duration)?,
        max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
        keepalive: v.parse(
            "EMGATE_UPSTREAM_KEEPALIVE",
            |s| match parse_positive_duration(s)? {
                // EM ends a session after 15 minutes idle; the touch must come first.
                d if d >= Duration::from_secs(15 * 60) => {
                    Err("must be shorter than EM's 15-minute idle timeout".to_string())
                }
                d => Ok(d),
            },
        )?,
        logon_backoff_max: v.parse("EMGATE_UPSTREAM_LOGON_BACKOFF_MAX", parse_positive_duration)?,
        concurrency: v.parse("EMGATE_UPSTREAM_CONCURRENCY", parse_positive)?,
        queue_wait: v.parse("EMGATE_UPSTREAM_QUEUE_WAIT", parse_duration)?,
        memory,
        background_concurrency: v.parse("EMGATE_BACKGROUND_CONCURRENCY", parse_positive)?,
        background_rate: v.parse("EMGATE_BACKGROUND_RATE", |s| {
            s.parse::<u32>()
                .map_err(|_| format!("expected requests per second (0: no limit), got {s:?}"))
        })?,
    })
}

/// The rules in the order they are tried: the file's, then the built-in
/// vmRestorePoints rule, then the defaults (a file rule with a default's
/// name replaces that default). Errors name the rule and what is wrong.
fn effective_rules(file: &[toml::Table], cache: &CacheSettings) -> Result<Vec<Rule>, ConfigError> {
    if file.len() > rules::MAX_FILE_RULES {
        return Err(ConfigError::other(
            "cache.rules",
            format!("at most {} rules", rules::MAX_FILE_RULES),
        ));
    }
    let mut rules: Vec<Rule> = Vec::new();
    for (i, table) in file.iter().enumerate() {
        let name_of = table
            .get("name")
            .and_then(|v| v.as_str())
            .map(|n| format!(" ({n:?})"))
            .unwrap_or_default();
        let fail =
            |reason: String| ConfigError::other(format!("cache.rules[{i}]{name_of}"), reason);
        let text = |key: &str, required: bool| -> Result<Option<String>, ConfigError> {
            match table.get(key) {
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(fail(format!("{key} must be a string"))),
                None if required => Err(fail(format!("{key} is required"))),
                None => Ok(None),
            }
        };
        let name = text("name", true)?.unwrap_or_default();
        let path = text("path", true)?.unwrap_or_default();
        let ttl = text("ttl", true)?.unwrap_or_default();
        let swr = text("stale_while_revalidate", false)?;
        let sie = text("stale_if_error", false)?;
        if let Some(k) = table.keys().find(|k| {
            ![
                "name",
                "path",
                "ttl",
                "stale_while_revalidate",
                "stale_if_error",
            ]
            .contains(&k.as_str())
        }) {
            return Err(fail(format!(
                "unknown key {k:?} (a rule has name, path, ttl, stale_while_revalidate, stale_if_error)"
            )));
        }
        if !rules::valid_name(&name) {
            return Err(fail(
                "name must be 1 to 64 letters, digits or '_' (it is a metrics label)".into(),
            ));
        }
        if name == rules::VM_RESTORE_POINTS {
            return Err(fail(format!(
                "{} is the built-in rule; set it with EMGATE_CACHE_TTL and the other EMGATE_CACHE_* settings",
                rules::VM_RESTORE_POINTS
            )));
        }
        if rules.iter().any(|r| r.name == name) {
            return Err(fail(format!("another rule is also named {name:?}")));
        }
        let path = PathTemplate::parse(&path).map_err(|e| fail(format!("path {e}")))?;
        let ttl = parse_positive_duration(&ttl).map_err(|e| fail(format!("ttl: {e}")))?;
        let swr = swr
            .map(|s| parse_duration(&s))
            .transpose()
            .map_err(|e| fail(format!("stale_while_revalidate: {e}")))?
            .unwrap_or_default();
        let sie = sie
            .map(|s| parse_duration(&s))
            .transpose()
            .map_err(|e| fail(format!("stale_if_error: {e}")))?
            .unwrap_or(cache.stale_if_error);
        rules.push(Rule {
            name,
            path,
            ttl,
            stale_while_revalidate: swr,
            stale_if_error: sie,
            origin: RuleOrigin::File,
        });
    }
    let builtin = |name: &str, path: &str, ttl, swr, sie, origin| -> Result<Rule, ConfigError> {
        Ok(Rule {
            name: name.to_string(),
            path: PathTemplate::parse(path)
                .map_err(|e| ConfigError::other(format!("rule {name}"), e))?,
            ttl,
            stale_while_revalidate: swr,
            stale_if_error: sie,
            origin,
        })
    };
    rules.push(builtin(
        rules::VM_RESTORE_POINTS,
        rules::VM_RESTORE_POINTS_PATH,
        cache.ttl,
        cache.stale_while_revalidate,
        cache.stale_if_error,
        RuleOrigin::BuiltIn,
    )?);
    if cache.default_rules {
        for (name, path, ttl, swr) in rules::DEFAULT_RULES {
            if rules.iter().any(|r| r.name == *name) {
                continue;
            }
            let d = |s: &str| parse_duration(s).map_err(|e| ConfigError::other(*name, e));
            rules.push(builtin(
                name,
                path,
                d(ttl)?,
                d(swr)?,
                cache.stale_if_error,
                RuleOrigin::Default,
            )?);
        }
    }
    Ok(rules)
}

/// `[shared]`: `None` unless `EMGATE_SHARED_URL` is set.
fn shared_settings(v: &Values<'_>) -> Result<Option<SharedSettings>, ConfigError> {
    let Some((url, tls, in_url)) = v.opt("EMGATE_SHARED_URL", parse_shared_url)? else {
        for other in [
            "EMGATE_SHARED_PASSWORD",
            "EMGATE_SHARED_PASSWORD_FILE",
            "EMGATE_SHARED_CA_FILE",
            "EMGATE_SHARED_SECRET",
            "EMGATE_SHARED_SECRET_FILE",
            "EMGATE_SHARED_MAX_ENTRY",
        ] {
            if v.raw(other).is_some_and(|s| !s.is_empty()) {
                return Err(ConfigError::of(
                    spec_of(other),
                    "set EMGATE_SHARED_URL too: without it there is no fleet",
                ));
            }
        }
        return Ok(None);
    };
    let given = secret_or_file(v, "EMGATE_SHARED_PASSWORD", "EMGATE_SHARED_PASSWORD_FILE")?;
    let password = match (in_url, given) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::of(
                spec_of("EMGATE_SHARED_PASSWORD"),
                "the password is in EMGATE_SHARED_URL already; give it once",
            ))
        }
        (a, b) => a.or(b),
    };
    let ca_file = v.opt("EMGATE_SHARED_CA_FILE", readable_file)?;
    if ca_file.is_some() && !tls {
        return Err(ConfigError::of(
            spec_of("EMGATE_SHARED_CA_FILE"),
            "only rediss:// URLs use TLS; a CA file needs one",
        ));
    }
    let prefix = v.parse("EMGATE_SHARED_PREFIX", |s| {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if ok {
            Ok(s.to_string())
        } else {
            Err(format!(
                "expected 1 to 64 letters, digits, '_', '-', '.' or ':', got {s:?}"
            ))
        }
    })?;
    let timeout = v.parse("EMGATE_SHARED_TIMEOUT", parse_positive_duration)?;
    let lease = v.parse("EMGATE_SHARED_LEASE", |s| {
        match parse_positive_duration(s)? {
            d if d < Duration::from_secs(1) => {
                Err("must be at least 1s (it is renewed a few times per lease)".to_string())
            }
            d => Ok(d),
        }
    })?;
    if lease <= timeout * 3 {
        return Err(ConfigError::of(
            spec_of("EMGATE_SHARED_LEASE"),
            format!(
                "must be more than 3 x EMGATE_SHARED_TIMEOUT ({timeout:?}): a lease is renewed \
                 at a third of its life, and each renewal may take the timeout"
            ),
        ));
    }
    let secret = secret_or_file(v, "EMGATE_SHARED_SECRET", "EMGATE_SHARED_SECRET_FILE")?;
    // One secret per line: the first signs, all verify (a rotation).
    if secret.as_ref().is_some_and(|s| {
        let lines: Vec<&str> = s
            .expose()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines.is_empty() || lines.iter().any(|l| l.chars().count() < MIN_ADMIN_TOKEN)
    }) {
        return Err(ConfigError::of(
            spec_of("EMGATE_SHARED_SECRET"),
            format!("each secret (one per line) must be at least {MIN_ADMIN_TOKEN} characters"),
        ));
    }
    Ok(Some(SharedSettings {
        url,
        tls,
        password,
        ca_file,
        prefix,
        timeout,
        em_session: v.parse("EMGATE_SHARED_EM_SESSION", parse_bool)?,
        lease,
        secret,
        max_entry: v.opt("EMGATE_SHARED_MAX_ENTRY", parse_size)?,
    }))
}

/// `scheme://user:password@host...` with the password shown as `***`.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{scheme}://{shown}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// A `redis://` or `rediss://` URL with a host: the URL without its
/// password, whether it is TLS, and the password it held.
fn parse_shared_url(s: &str) -> Result<(Secret, bool, Option<Secret>), String> {
    let uri: Uri = s
        .parse()
        .map_err(|_| "not a URL (write it like redis://host:6379/0)".to_string())?;
    let tls = match uri.scheme_str() {
        Some("redis") => false,
        Some("rediss") => true,
        _ => return Err("must start with redis:// or rediss://".to_string()),
    };
    let Some(authority) = uri.authority() else {
        return Err("no host".to_string());
    };
    let (userinfo, host) = match authority.as_str().rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority.as_str()),
    };
    if host.is_empty() || host.starts_with(':') {
        return Err("no host".to_string());
    }
    let (user, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
        Some((u, p)) => (Some(u), (!p.is_empty()).then(|| Secret::new(p))),
        None => (None, None),
    };
    let path = uri.path().trim_start_matches('/');
    if !(path.is_empty() || path.parse::<u16>().is_ok()) {
        return Err(format!("the path must be a database number, got {path:?}"));
    }
    if uri.query().is_some() {
        return Err(
            "takes no query (set TLS with rediss://, the CA with EMGATE_SHARED_CA_FILE)".into(),
        );
    }
    let user = user
        .filter(|u| !u.is_empty())
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let scheme = if tls { "rediss" } else { "redis" };
    let db = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    Ok((
        Secret::new(format!("{scheme}://{user}{host}{db}")),
        tls,
        password,
    ))
}

/// A secret given inline or in a file (trailing newline ignored); both is an error.
fn secret_or_file(
    v: &Values<'_>,
    inline: &'static str,
    file: &'static str,
) -> Result<Option<Secret>, ConfigError> {
    let direct = v.opt(inline, |s| Ok(Secret::new(s)))?;
    let from_file = v.opt(file, |s| {
        let text = std::fs::read_to_string(s).map_err(|e| format!("cannot read {s:?}: {e}"))?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.is_empty() {
            return Err(format!("{s:?} is empty"));
        }
        Ok(Secret::new(text))
    })?;
    match (direct, from_file) {
        (Some(_), Some(_)) => Err(ConfigError::of(
            spec_of(file),
            format!("set either {inline} or {file}, not both"),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

fn spec_of(env: &str) -> &'static Spec {
    // Every name used in this file is declared in SETTINGS (the test
    // `every_setting_named_in_the_code_is_declared` fails otherwise), so the
    // fallback is never taken.
    SETTINGS
        .iter()
        .find(|s| s.env == env)
        .unwrap_or(&SETTINGS[0])
}

/// Merged raw values with typed accessors that name the setting on error.
struct Values<'a> {
    raw: &'a BTreeMap<&'static str, Origin>,
    /// `[[cache.rules]]` of the file, as written.
    rules: &'a [toml::Table],
}

impl Values<'_> {
    fn raw(&self, env: &str) -> Option<&str> {
        self.raw
            .get(env)
            .map(|o| o.value.as_str())
            .or_else(|| spec_of(env).default)
    }

    fn opt<T>(
        &self,
        env: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.raw(env) {
            None | Some("") => Ok(None),
            Some(s) => parse(s.trim())
                .map(Some)
                .map_err(|e| ConfigError::of(spec_of(env), e)),
        }
    }

    fn required<T>(
        &self,
        env: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.opt(env, parse)?
            .ok_or_else(|| ConfigError::of(spec_of(env), "required"))
    }

    fn parse<T>(
        &self,
        env: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.required(env, parse)
    }
}

fn read_file(
    path: &Path,
    raw: &mut BTreeMap<&'static str, Origin>,
    rules: &mut Vec<toml::Table>,
) -> Result<(), ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::other(shown.clone(), format!("cannot read: {e}")))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| ConfigError::other(shown.clone(), toml_error(&text, &e)))?;
    for (section, value) in &table {
        let toml::Value::Table(keys) = value else {
            return Err(ConfigError::other(
                shown,
                format!(
                    "unknown top-level key {section:?} (settings live in sections like [upstream])"
                ),
            ));
        };
        for (key, value) in keys {
            if section == "cache" && key == "rules" {
                let toml::Value::Array(items) = value else {
                    return Err(ConfigError::other(
                        "cache.rules",
                        "write rules as [[cache.rules]] tables",
                    ));
                };
                for (i, item) in items.iter().enumerate() {
                    let toml::Value::Table(t) = item else {
                        return Err(ConfigError::other(
                            format!("cache.rules[{i}]"),
                            "write rules as [[cache.rules]] tables",
                        ));
                    };
                    rules.push(t.clone());
                }
                continue;
            }
            let Some(s) = SETTINGS
                .iter()
                .find(|s| s.section == section && s.key == key)
            else {
                return Err(ConfigError::other(
                    shown,
                    format!("unknown key {section}.{key}"),
                ));
            };
            let value = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => {
                    return Err(ConfigError::of(s, "expected a string, number or boolean"));
                }
            };
            raw.insert(
                s.env,
                Origin {
                    value,
                    source: "file",
                },
            );
        }
    }
    Ok(())
}

/// A TOML parse error as its line number and message, never the text of
/// the line: toml's own rendering quotes it, and the line may hold a
/// secret (an error goes to logs and the status page).
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .map(|s| text.get(..s.start).unwrap_or(text).matches('\n').count() + 1);
    let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match line {
        Some(l) => format!("line {l}: {msg}"),
        None => msg,
    }
}

/// A value as TOML: booleans and the numbers of numeric settings (those
/// whose default is a number) bare, everything else a string.
fn toml_value(spec: &Spec, v: &str) -> String {
    let numeric = spec.default.is_some_and(|d| d.parse::<u64>().is_ok());
    if v == "true" || v == "false" || (numeric && v.parse::<u64>().is_ok()) {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {s:?}")),
    }
}

/// Durations such as `250ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|_| format!("not a duration: {s:?} (write it like 250ms, 30s, 5m or 1h)"))
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive number, got {s:?}")),
    }
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than zero".to_string()),
        d => Ok(d),
    }
}

/// Sizes such as `512KiB`, `256MiB`, `1GiB`, or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = s.trim()[digits.len()..].trim();
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("not a size: {s:?} (write it like 512KiB or 256MiB)"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown size unit in {s:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

/// An OTLP/HTTP collector's base URL: `http://host:port` (4318 is the
/// collectors' usual port), a path prefix allowed; `https` is refused, as
/// the exporter is built without TLS (a collector beside the gateway).
fn parse_otlp_endpoint(s: &str) -> Result<Uri, String> {
    let uri: Uri = s
        .trim_end_matches('/')
        .parse()
        .map_err(|_| "not a URL".to_string())?;
    // Credentials in the URL would show wherever the settings do.
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("no user or password in the URL (the collector is beside emgate)".into());
    }
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(_)) if uri.query().is_none() => Ok(uri),
        (Some("https"), _) => Err(
            "https is not supported: send traces to a collector (or agent) beside emgate over http://"
                .into(),
        ),
        _ => Err("expected http://host:port".into()),
    }
}

/// An http(s) base URL with a host and no query; a trailing `/` or `/api` is dropped.
pub fn parse_base_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|_| format!("not a URL: {s:?}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("must start with https:// or http://: {s:?}")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("no host in {s:?}"));
    };
    if authority.as_str().contains('@') {
        return Err("credentials do not belong in the URL".to_string());
    }
    if uri.query().is_some() {
        return Err(format!("a base URL takes no query: {s:?}"));
    }
    let path = uri.path().trim_end_matches('/');
    let path = path.strip_suffix("/api").unwrap_or(path);
    let scheme = uri.scheme_str().unwrap_or("https");
    format!("{scheme}://{authority}{path}")
        .parse()
        .map_err(|_| format!("not a URL: {s:?}"))
}

fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let bad = || format!("expected 64 hex digits (colons allowed), got {s:?}");
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(out)
}

/// A directory the gateway can write its state files into.
fn writable_dir(s: &str) -> Result<PathBuf, String> {
    let dir = PathBuf::from(s);
    if !dir.is_dir() {
        return Err(format!("{s:?} is not a directory"));
    }
    let probe = dir.join(format!(".emgate-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot write in {s:?}: {e}"))?;
    Ok(dir)
}

fn readable_file(s: &str) -> Result<PathBuf, String> {
    std::fs::File::open(s).map_err(|e| format!("cannot read {s:?}: {e}"))?;
    Ok(PathBuf::from(s))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_effective_settings_show_numbers_bare_and_what_the_demo_set_as_the_demos() {
        let env = |k: &str| {
            MINIMAL
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
                .or_else(|| (k == "EMGATE_MAX_CONNECTIONS").then(|| "2048".to_string()))
        };
        let s = Settings::load(&Sources {
            file: None,
            env: &env,
            demo: &["EMGATE_UPSTREAM_URL"],
        })
        .unwrap();
        let text = s.render_effective();
        assert!(
            text.contains("max_connections = 2048  # EMGATE_MAX_CONNECTIONS, environment"),
            "{text}"
        );
        assert!(
            text.contains("concurrency = 32  # EMGATE_UPSTREAM_CONCURRENCY, default"),
            "{text}"
        );
        assert!(
            text.contains("# EMGATE_UPSTREAM_URL, set by demo"),
            "{text}"
        );
        assert!(
            text.contains("timeout = \"120s\""),
            "durations stay strings: {text}"
        );
        // What check-config prints is TOML the settings file takes back.
        assert!(toml::from_str::<toml::Table>(&text).is_ok(), "{text}");
    }

    #[test]
    fn a_broken_settings_file_is_reported_by_line_without_its_text() {
        // Half-written (a reload may read a file mid-write): the line holds
        // a password, which must not reach a log or the status page.
        let text = "[upstream]\npassword = \"hunter2-the-em-password\nurl = 1\n";
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        let shown = crate::config::toml_error(text, &e);
        assert!(shown.starts_with("line 2: "), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            e.to_string().contains("hunter2"),
            "toml's own text quotes it"
        );
    }

    #[test]
    fn every_setting_named_in_the_code_is_declared() {
        // A misspelt name would read another setting (or none): every
        // `"EMGATE_..."` literal in this file names a declared setting.
        let source = include_str!("mod.rs");
        let mut unknown = Vec::new();
        for (i, _) in source.match_indices("\"EMGATE_") {
            let name: String = source[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // A whole name (not the prefix alone, as in `starts_with`).
            let whole = source[i + 1 + name.len()..].starts_with('"') && name.len() > 7;
            if whole && !SETTINGS.iter().any(|s| s.env == name) {
                unknown.push(name);
            }
        }
        assert!(unknown.is_empty(), "not declared in SETTINGS: {unknown:?}");
    }

    use super::*;
    use std::collections::HashMap;

    fn load(env: &[(&str, &str)], file: Option<&Path>) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| map.get(k).cloned();
        Settings::load(&Sources {
            file,
            env: &lookup,
            demo: &[],
        })
    }

    const MINIMAL: &[(&str, &str)] = &[
        ("EMGATE_UPSTREAM_URL", "https://em.corp:9398/api/"),
        ("EMGATE_UPSTREAM_USERNAME", "svc"),
        ("EMGATE_UPSTREAM_PASSWORD", "hunter2"),
    ];

    fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = MINIMAL.to_vec();
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn minimal_settings_get_the_documented_defaults() {
        let s = load(MINIMAL, None).unwrap();
        assert_eq!(s.listen.address.to_string(), "127.0.0.1:9399");
        assert_eq!(s.upstream.url.to_string(), "https://em.corp:9398/");
        assert_eq!(s.upstream.timeout, Duration::from_secs(120));
        assert_eq!(s.upstream.max_body, 64 << 20);
        assert_eq!(s.upstream.trust, UpstreamTrust::SystemRoots);
        assert_eq!(s.cache.max_bytes, 256 << 20);
        assert_eq!(s.json_case, JsonCase::Pascal);
        assert!(s.access.allow_anonymous);
        assert!(!s.access.allow_writes);
        assert_eq!(s.log.format, LogFormat::Text);
    }

    #[test]
    fn each_malformed_value_names_its_setting() {
        for (env, value) in [
            ("EMGATE_UPSTREAM_URL", "ftp://em"),
            ("EMGATE_UPSTREAM_URL", "not a url"),
            ("EMGATE_UPSTREAM_TIMEOUT", "ten seconds"),
            ("EMGATE_UPSTREAM_MAX_BODY", "12 parsecs"),
            ("EMGATE_UPSTREAM_CERT_SHA256", "abcd"),
            ("EMGATE_UPSTREAM_CA_FILE", "/nonexistent/ca.pem"),
            ("EMGATE_LISTEN", "localhost"),
            ("EMGATE_JSON_CASE", "snake"),
            ("EMGATE_LOG_FORMAT", "xml"),
            ("EMGATE_UPSTREAM_INSECURE", "maybe"),
        ] {
            let mut env_list = MINIMAL.to_vec();
            env_list.retain(|(k, _)| *k != env);
            env_list.push((env, value));
            let err = load(&env_list, None).unwrap_err().to_string();
            assert!(err.starts_with(env), "{env}={value}: {err}");
        }
    }

    #[test]
    fn missing_required_settings_are_named() {
        let err = load(&[], None).unwrap_err().to_string();
        assert!(err.starts_with("EMGATE_UPSTREAM_URL"), "{err}");
        let err = load(&MINIMAL[..2], None).unwrap_err().to_string();
        assert!(err.starts_with("EMGATE_UPSTREAM_PASSWORD"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file_and_unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("emgate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.toml");
        std::fs::write(
            &file,
            "[upstream]\nurl = \"https://file:9398\"\ntimeout = \"5s\"\n[cache]\nmax_bytes = 1024\n",
        )
        .unwrap();
        let s = load(&MINIMAL[1..], Some(&file)).unwrap();
        assert_eq!(s.upstream.url.to_string(), "https://file:9398/");
        assert_eq!(s.upstream.timeout, Duration::from_secs(5));
        assert_eq!(s.cache.max_bytes, 1024);
        let s = load(&with(&[("EMGATE_UPSTREAM_TIMEOUT", "7s")]), Some(&file)).unwrap();
        assert_eq!(s.upstream.url.to_string(), "https://em.corp:9398/");
        assert_eq!(s.upstream.timeout, Duration::from_secs(7));

        std::fs::write(&file, "[upstream]\ntimeuot = \"5s\"\n").unwrap();
        let err = load(MINIMAL, Some(&file)).unwrap_err().to_string();
        assert!(err.contains("unknown key upstream.timeuot"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn secrets_are_redacted_in_effective_settings_and_debug() {
        let s = load(
            &with(&[("EMGATE_ADMIN_TOKEN", "tok-1234567890abcdef")]),
            None,
        )
        .unwrap();
        let shown = s.render_effective();
        assert!(shown.contains("password = \"***\""), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok-1234567890abcdef"),
            "{shown}"
        );
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("tok-1234567890abcdef"));
    }

    #[test]
    fn anonymous_gateway_on_a_public_address_is_refused_unless_explicit() {
        let err = load(&with(&[("EMGATE_LISTEN", "0.0.0.0:9399")]), None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("EMGATE_ALLOW_ANONYMOUS"), "{err}");
        let s = load(
            &with(&[
                ("EMGATE_LISTEN", "0.0.0.0:9399"),
                ("EMGATE_ALLOW_ANONYMOUS", "true"),
            ]),
            None,
        )
        .unwrap();
        assert!(s.access.allow_anonymous);
    }

    #[test]
    fn trust_options_are_exclusive_and_pins_parse_with_colons() {
        let pin = "AB:".repeat(31) + "AB";
        let s = load(
            &with(&[("EMGATE_UPSTREAM_CERT_SHA256", pin.as_str())]),
            None,
        )
        .unwrap();
        assert_eq!(s.upstream.trust, UpstreamTrust::Pinned([0xAB; 32]));
        let zeros = "00".repeat(32);
        let err = load(
            &with(&[
                ("EMGATE_UPSTREAM_INSECURE", "true"),
                ("EMGATE_UPSTREAM_CERT_SHA256", zeros.as_str()),
            ]),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("choose one"));
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let err = load(&with(&[("EMGATE_ALLOW_ANONYMOUS", "false")]), None).unwrap_err();
        assert!(
            err.to_string().starts_with("EMGATE_ALLOW_ANONYMOUS"),
            "{err}"
        );
        let err = load(&with(&[("EMGATE_UPSTREAM_KEEPALIVE", "15m")]), None).unwrap_err();
        assert!(
            err.to_string().starts_with("EMGATE_UPSTREAM_KEEPALIVE"),
            "{err}"
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("MiB").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    }
}
