//! HTTPS on the gateway's own listener (`EMGATE_TLS_CERT_FILE`,
//! `EMGATE_TLS_KEY_FILE`): rustls, HTTP/2 and HTTP/1.1 offered by ALPN.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

/// The acceptor for the configured certificate chain and key.
pub fn acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, String> {
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
    let mut config = ServerConfig::builder_with_provider(crate::em::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
