//! The simulator's TLS identity: a fresh self-signed certificate per start, like the
//! self-signed certificate EM's installer creates (ssl_encryption.md), and the rustls
//! server configuration that serves it.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A generated certificate and what the simulator tells about it.
pub(crate) struct Identity {
    pub config: Arc<rustls::ServerConfig>,
    pub cert_pem: String,
    /// SHA-256 of the certificate's DER, uppercase hex pairs joined by colons.
    pub sha256: String,
}

/// Makes a self-signed certificate for `localhost`, `127.0.0.1`, `::1` and, when the
/// simulator listens on a specific other address, that address too.
pub(crate) fn identity(listen_ip: IpAddr) -> io::Result<Identity> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !listen_ip.is_unspecified() && !listen_ip.is_loopback() {
        names.push(listen_ip.to_string());
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(io::Error::other)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "emgate EM simulator");
    let key = rcgen::KeyPair::generate().map_err(io::Error::other)?;
    let cert = params.self_signed(&key).map_err(io::Error::other)?;
    let der: CertificateDer<'static> = cert.der().clone();
    let sha256 = fingerprint(der.as_ref());
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(vec![der], key_der)
    .map_err(io::Error::other)?;
    // HTTP/1.1 only: what the gateway and EM's usual clients speak.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Identity {
        config: Arc::new(config),
        cert_pem: cert.pem(),
        sha256,
    })
}

/// `AB:CD:…`: SHA-256 of `der` as 32 uppercase hex pairs joined by colons (95 chars).
pub(crate) fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
