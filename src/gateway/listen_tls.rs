//! HTTPS on the gateway's own listener (`EMGATE_TLS_CERT_FILE`,
//! `EMGATE_TLS_KEY_FILE`): rustls, HTTP/2 and HTTP/1.1 offered by ALPN.
//!
//! The certificate is read by every new handshake from a [`LiveCert`], so a
//! reload (README, "Changes while running") gives new connections the new
//! certificate while open ones keep the one they shook hands with.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

/// The listener's certificate and key, replaced whole by a reload.
#[derive(Debug)]
pub struct LiveCert(ArcSwap<CertifiedKey>);

impl LiveCert {
    /// Gives new handshakes `key` from now on; whether its certificate
    /// chain differs from the one before.
    pub fn replace(&self, key: Arc<CertifiedKey>) -> bool {
        let changed = self.0.load().cert != key.cert;
        self.0.store(key);
        changed
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The configured chain and key, read and checked (they must fit together).
pub fn certified_key(settings: &TlsSettings) -> Result<Arc<CertifiedKey>, String> {
    let certs = CertificateDer::pem_file_iter(&settings.cert_file)
        .map_err(|e| format!("{}: {e}", settings.cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", settings.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate",
            settings.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&settings.key_file).map_err(|e| {
        format!(
            "{}: no usable PEM private key: {e}",
            settings.key_file.display()
        )
    })?;
    CertifiedKey::from_der(certs, key, &crate::em::tls::provider())
        .map(Arc::new)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))
}

/// The acceptor for a certificate chain and key (see [`certified_key`]),
/// and the handle a reload replaces them through.
pub fn acceptor(key: Arc<CertifiedKey>) -> Result<(TlsAcceptor, Arc<LiveCert>), String> {
    let live = Arc::new(LiveCert(ArcSwap::new(key)));
    let mut config = ServerConfig::builder_with_provider(crate::em::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(live.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), live))
}
