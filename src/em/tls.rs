//! TLS to EM: the rustls client configuration for each trust option of
//! see README, "Configuration" (system roots, a CA file, a SHA-256 pin, or insecure).
//!
//! EM ships a self-signed certificate, so many shops will pin it: a pin
//! accepts exactly that certificate whatever its chain, name or dates, and
//! still checks that the server proves it holds the certificate's key.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::UpstreamTrust;

/// The crypto provider the whole process uses (ring: a fraction of aws-lc-rs's build time).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM bundle; an error names the file and what is wrong with it.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown} is not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown} holds no PEM certificate"));
    }
    Ok(certs)
}

/// Builds the client configuration for a trust option.
pub fn client_config(trust: &UpstreamTrust) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config = match trust {
        UpstreamTrust::SystemRoots => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system root certificates found; EM's certificate cannot be verified \
                     (set EMGATE_UPSTREAM_CA_FILE or EMGATE_UPSTREAM_CERT_SHA256)"
                );
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        UpstreamTrust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_ca_file(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        UpstreamTrust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptOnly {
                pin: Some(*pin),
                provider,
            }))
            .with_no_client_auth(),
        UpstreamTrust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptOnly {
                pin: None,
                provider,
            }))
            .with_no_client_auth(),
    };
    // ALPN (http/1.1 only: EM's REST service speaks HTTP/1.1) is set by the
    // hyper-rustls connector, which refuses a config that already has it.
    Ok(config)
}

/// SHA-256 of a certificate's DER encoding.
pub fn fingerprint(cert: &[u8]) -> [u8; 32] {
    crate::digest::sha256(cert)
}

/// Accepts the pinned certificate (or, without a pin, any), checking only
/// that the peer signs the handshake with that certificate's key.
#[derive(Debug)]
struct AcceptOnly {
    /// `None` means insecure: any certificate.
    pin: Option<[u8; 32]>,
    /// For handshake signature checks.
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            Some(pin) if fingerprint(end_entity) != pin => Err(rustls::Error::General(
                "EM's certificate does not match EMGATE_UPSTREAM_CERT_SHA256".into(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
