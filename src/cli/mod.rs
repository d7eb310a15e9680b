//! The command line (see README, "Commands"): `serve` (the default), `sim`, `demo`,
//! `check-config`, `client add`. Exit codes: 0 clean stop, 1 bad
//! configuration, 2 other fatal error.

pub mod demo;
pub mod probe;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{parse_duration, ConfigError, Settings, Sources, UpstreamTrust};
use crate::gateway::server::{Gateway, StartError};

/// emgate: a caching gateway for the Veeam Backup Enterprise Manager REST API.
#[derive(Debug, Parser)]
#[command(name = "emgate", version, about)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML settings file (for `serve` without the subcommand).
    #[arg(long, global = false)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// TOML settings file; EMGATE_* environment variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the built-in Enterprise Manager simulator.
    Sim(SimArgs),
    /// Start the simulator and the gateway in front of it on loopback.
    Demo,
    /// Validate the settings and print the effective ones (secrets as ***).
    CheckConfig {
        /// TOML settings file; EMGATE_* environment variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Exit 0 if URL (default the local /readyz) answers 2xx: an exec probe for a loopback sidecar.
    Probe {
        /// The URL to probe.
        #[arg(default_value = crate::cli::probe::DEFAULT_URL)]
        url: String,
    },
    /// Manage client credentials.
    Client {
        /// The action.
        #[command(subcommand)]
        action: ClientAction,
    },
}

#[derive(Debug, Subcommand)]
enum ClientAction {
    /// Print a new random secret (once) and the [[clients]] entry for the clients file.
    Add {
        /// The client's name.
        name: String,
    },
}

#[derive(Debug, Args)]
struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9398")]
    listen: SocketAddr,
    /// Serve HTTPS with a generated self-signed certificate (its SHA-256 is printed).
    #[arg(long)]
    tls: bool,
    /// EM account name.
    #[arg(long, default_value = "admin")]
    username: String,
    /// EM account password.
    #[arg(long, default_value = "admin")]
    password: String,
    /// Idle time after which a session expires (EM: 15m).
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    session_idle: Duration,
    /// Latency added to every answer.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    latency: Duration,
    /// How many restore points to generate.
    #[arg(long, default_value_t = 5000)]
    restore_points: usize,
    /// How long a task (a job start's) runs before it is finished.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    task_duration: Duration,
    /// Every this long a backup job finishes and a new restore point
    /// appears (0: the data stays as generated).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    new_point_every: Duration,
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("emgate: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // One crypto provider for the process (ring), before any TLS config is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        None => runtime.block_on(serve(cli.config.as_deref())),
        Some(Command::Serve { config }) => {
            runtime.block_on(serve(config.or(cli.config).as_deref()))
        }
        Some(Command::CheckConfig { config }) => check_config(config.or(cli.config).as_deref()),
        Some(Command::Sim(args)) => runtime.block_on(sim(args)),
        Some(Command::Demo) => runtime.block_on(crate::cli::demo::run()),
        Some(Command::Probe { url }) => runtime.block_on(crate::cli::probe::run(&url)),
        Some(Command::Client {
            action: ClientAction::Add { name },
        }) => client_add(&name),
    }
}

/// Settings, and the files they name checked by their owners: exactly what
/// `serve` would refuse to start on.
fn load(config: Option<&Path>) -> Result<Settings, ExitCode> {
    let fail = |e: ConfigError| {
        eprintln!("emgate: configuration error: {e}");
        ExitCode::from(1)
    };
    let settings = Settings::load(&Sources::process(config)).map_err(fail)?;
    crate::gateway::server::preflight(&settings).map_err(fail)?;
    Ok(settings)
}

fn check_config(config: Option<&Path>) -> ExitCode {
    match load(config) {
        Ok(settings) => {
            print!("{}", settings.render_effective());
            println!("# configuration OK");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn serve(config: Option<&Path>) -> ExitCode {
    let settings = match load(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let _log = crate::ops::logging::init(
        &settings.log.filter,
        settings.log.format,
        settings.log.traces.as_ref(),
    );
    serve_settings(
        settings,
        config.map(Path::to_path_buf),
        crate::ops::shutdown::signal(),
    )
    .await
}

/// Runs the gateway with these settings until `shutdown`; the exit code to return.
pub async fn serve_settings(
    settings: Settings,
    config: Option<std::path::PathBuf>,
    shutdown: impl std::future::Future<Output = ()>,
) -> ExitCode {
    if settings.upstream.trust == UpstreamTrust::Insecure {
        tracing::warn!(
            "EMGATE_UPSTREAM_INSECURE=true: EM's certificate is NOT verified; anyone on the path \
             to EM can read the EM password. Pin the certificate with EMGATE_UPSTREAM_CERT_SHA256 instead."
        );
    }
    if settings.access.allow_anonymous && !settings.listen.address.ip().is_loopback() {
        tracing::warn!(
            address = %settings.listen.address,
            "EMGATE_ALLOW_ANONYMOUS=true on a non-loopback address: anyone who reaches this port uses the gateway's EM session"
        );
    }
    match Gateway::bind(settings).await {
        Ok(gateway) => {
            gateway.with_config_file(config).run(shutdown).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("emgate: {e}");
            match e {
                StartError::Config(_) => ExitCode::from(1),
                _ => ExitCode::from(2),
            }
        }
    }
}

async fn sim(args: SimArgs) -> ExitCode {
    let _log = crate::ops::logging::init("info", crate::config::LogFormat::Text, None);
    let cfg = crate::sim::SimConfig {
        listen: args.listen,
        tls: args.tls,
        username: args.username,
        password: args.password,
        session_idle: args.session_idle,
        latency: args.latency,
        restore_points: args.restore_points,
        task_duration: args.task_duration,
        new_point_every: Some(args.new_point_every),
        ..crate::sim::SimConfig::default()
    };
    match crate::sim::run(cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emgate sim: {e}");
            ExitCode::from(2)
        }
    }
}

fn client_add(name: &str) -> ExitCode {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        eprintln!("emgate: a client name is 1 to 64 letters, digits, '-', '_' or '.'");
        return ExitCode::from(1);
    }
    match crate::gateway::clients::new_client_secret() {
        Ok((secret, hash)) => {
            println!("# Secret for client {name:?} (shown only now; give it to the client):");
            println!("# {}", secret.expose());
            println!();
            println!("[[clients]]");
            println!("name = \"{name}\"");
            println!("secret_sha256 = \"{hash}\"");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("emgate: {e}");
            ExitCode::from(2)
        }
    }
}
