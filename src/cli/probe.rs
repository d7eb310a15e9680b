//! `emgate probe [URL]`: exits 0 when `URL` (default the local `/readyz`)
//! answers 2xx within two seconds, 1 otherwise.
//!
//! The kubelet probes a pod's IP, never its loopback, so a sidecar gateway
//! bound to 127.0.0.1 needs an exec probe; the distroless image has no curl,
//! so the binary probes itself.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::UpstreamTrust;

/// The URL probed when none is given.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9399/readyz";
/// How long the probe waits.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Probes `url`; the exit code says whether it answered 2xx.
pub async fn run(url: &str) -> ExitCode {
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(_) => {
            eprintln!("emgate probe: not a URL: {url:?}");
            return ExitCode::from(1);
        }
    };
    // Our own listener, usually on loopback: its certificate is not the point.
    let tls = match crate::em::tls::client_config(&UpstreamTrust::Insecure) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("emgate probe: {e}");
            return ExitCode::from(1);
        }
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    match tokio::time::timeout(TIMEOUT, client.get(uri)).await {
        Ok(Ok(r)) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(Ok(r)) => {
            eprintln!("emgate probe: {url} answered {}", r.status());
            ExitCode::from(1)
        }
        Ok(Err(e)) => {
            eprintln!("emgate probe: {url}: {e}");
            ExitCode::from(1)
        }
        Err(_) => {
            eprintln!("emgate probe: {url} did not answer within {TIMEOUT:?}");
            ExitCode::from(1)
        }
    }
}
