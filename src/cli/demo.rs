//! `emgate demo`: the simulator and the gateway in front of it on loopback,
//! the gateway pinned to the simulator's certificate, with a few `curl`
//! lines that work as printed.

use std::collections::HashMap;
use std::process::ExitCode;

use crate::config::{Settings, Sources};
use crate::gateway::server::Gateway;
use crate::sim::{Sim, SimConfig};

/// Where the demo gateway listens unless `EMGATE_LISTEN` says otherwise.
const DEMO_LISTEN: &str = "127.0.0.1:9399";

/// Runs the demo until Ctrl-C.
pub async fn run() -> ExitCode {
    let password = uuid::Uuid::new_v4().simple().to_string();
    let sim = match Sim::start(SimConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        tls: true,
        username: "demo".into(),
        password: password.clone(),
        ..SimConfig::default()
    })
    .await
    {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("emgate demo: cannot start the simulator: {e}");
            return ExitCode::from(2);
        }
    };
    let mut overrides: HashMap<&str, String> = HashMap::new();
    overrides.insert("EMGATE_UPSTREAM_URL", sim.base_url());
    overrides.insert("EMGATE_UPSTREAM_USERNAME", "demo".into());
    overrides.insert("EMGATE_UPSTREAM_PASSWORD", password);
    // The status page is behind the admin token; the demo makes one up (or
    // takes the one given) and prints it, so a new user sees the page in
    // the first minute. It is the demo's own: printing it is the point.
    let admin_token = std::env::var("EMGATE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| format!("demo-{}", uuid::Uuid::new_v4().simple()));
    overrides.insert("EMGATE_ADMIN_TOKEN", admin_token.clone());
    overrides.insert(
        "EMGATE_UPSTREAM_CERT_SHA256",
        sim.cert_sha256().unwrap_or_default(),
    );
    let env = |name: &str| {
        overrides.get(name).cloned().or_else(|| match name {
            // The demo is about the gateway in front of its own simulator;
            // other EM trust settings from the environment do not apply.
            "EMGATE_UPSTREAM_CA_FILE"
            | "EMGATE_UPSTREAM_INSECURE"
            | "EMGATE_UPSTREAM_PASSWORD_FILE" => None,
            "EMGATE_LISTEN" => Some(std::env::var(name).unwrap_or_else(|_| DEMO_LISTEN.into())),
            _ => std::env::var(name).ok(),
        })
    };
    let mut set_by_demo: Vec<&str> = overrides.keys().copied().collect();
    if std::env::var("EMGATE_LISTEN").is_err() {
        set_by_demo.push("EMGATE_LISTEN");
    }
    let settings = match Settings::load(&Sources {
        file: None,
        demo: &set_by_demo,
        env: &env,
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("emgate demo: configuration error: {e}");
            return ExitCode::from(1);
        }
    };
    let _log = crate::ops::logging::init(
        &settings.log.filter,
        settings.log.format,
        settings.log.traces.as_ref(),
    );
    let gateway = match Gateway::bind(settings).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("emgate demo: {e} (set EMGATE_LISTEN=127.0.0.1:0 for any free port)");
            return ExitCode::from(2);
        }
    };
    let url = match gateway.local_addr() {
        Ok(addr) => format!("http://{addr}"),
        Err(e) => {
            eprintln!("emgate demo: {e}");
            return ExitCode::from(2);
        }
    };
    let rp = sim.restore_point_id(0);
    println!(
        "emgate demo\n\
         \x20 EM simulator  {sim_url}  (self-signed; the gateway pins SHA-256 {pin})\n\
         \x20 gateway       {url}\n\
         \n\
         Try:\n\
         \x20 curl -s {url}/api/\n\
         \x20 curl -s {url}/api/restorePoints/{rp}/vmRestorePoints\n\
         \x20 curl -s {url}/readyz\n\
         \n\
         Status page (any user name, the admin token as password):\n\
         \x20 {url}/admin/status\n\
         \x20 admin token  {admin_token}\n\
         \x20 curl -s -H 'Authorization: Bearer {admin_token}' {url}/admin/status.json\n\
         \n\
         Ctrl-C stops both.",
        sim_url = sim.base_url(),
        pin = sim.cert_sha256().unwrap_or_default(),
    );
    gateway.run(crate::ops::shutdown::signal()).await;
    sim.shutdown().await;
    ExitCode::SUCCESS
}
