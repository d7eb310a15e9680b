//! Client access: who may use the gateway. For now, the making of client
//! secrets for `emgate client add` (the clients file itself is read by the
//! client-access work).

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};

use crate::secret::Secret;

/// A new random client secret (256 bits, URL-safe) and its hex SHA-256.
pub fn new_client_secret() -> Result<(Secret, String), String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random generator failed".to_string())?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = sha256_hex(secret.as_bytes());
    Ok((Secret::new(secret), hash))
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_url_safe_and_hashed() {
        let (a, hash) = new_client_secret().unwrap();
        let (b, _) = new_client_secret().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 43);
        assert!(a
            .expose()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(hash, sha256_hex(a.expose().as_bytes()));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
