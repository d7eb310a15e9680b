//! Digests, constant-time comparison and random tokens: the one place
//! secrets, tokens and certificates are hashed and compared.
//!
//! A helper at the bottom of the crate: it uses nothing but [`crate::secret`].

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};

use crate::secret::Secret;

/// `bytes` random bytes from the system generator, base64url without padding.
pub fn random_token(bytes: usize) -> Result<Secret, String> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| "the system random generator failed".to_string())?;
    Ok(Secret::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf),
    ))
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&sha256(data))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The bytes a hex string (either case) stands for; `None` if it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// SHA-256 of `data` (secrets, tokens, certificates are all compared by it).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// Equal without an early exit, so timing tells nothing about where they differ.
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    same_bytes(a, b)
}

/// [`constant_time_eq`] for values of any length: only the lengths are
/// compared with an early exit.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(&sha256(b"abc"), &sha256(b"abc")));
        assert!(!constant_time_eq(&sha256(b"abc"), &sha256(b"abd")));
        assert!(!constant_time_eq(&sha256(b""), &sha256(b"abc")));
        assert!(same_bytes(b"Basic YTpi", b"Basic YTpi"));
        assert!(!same_bytes(b"Basic YTpi", b"Basic YTpj"));
        assert!(!same_bytes(b"Basic YTpi", b"Basic YTp"));
        assert!(same_bytes(b"", b""));
    }
}
