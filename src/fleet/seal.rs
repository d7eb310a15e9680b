//! Sealing the EM session token kept in Redis: ChaCha20-Poly1305 (ring),
//! with a key derived by HKDF-SHA256 from `EMGATE_SHARED_SECRET`, or from
//! the EM credentials when none is set (every replica has them; whoever can
//! only read Redis has not). The fleet's prefix and the session's
//! generation are bound in as associated data, so a sealed token cannot be
//! replayed under another fleet or generation.

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::{SharedSettings, UpstreamSettings};

/// Seals and opens the fleet's secrets.
pub(crate) struct Sealer {
    key: Option<LessSafeKey>,
    prefix: String,
}

impl Sealer {
    pub(crate) fn new(shared: &SharedSettings, upstream: &UpstreamSettings) -> Sealer {
        let material = match &shared.secret {
            Some(s) => format!("secret\0{}", s.expose()),
            None => format!(
                "em\0{}\0{}\0{}",
                upstream.url,
                upstream.username,
                upstream.password.expose()
            ),
        };
        let key = Salt::new(HKDF_SHA256, b"emgate fleet seal v1")
            .extract(material.as_bytes())
            .expand(&[shared.prefix.as_bytes()], &CHACHA20_POLY1305)
            .ok()
            .and_then(|okm| {
                let mut bytes = [0u8; 32];
                okm.fill(&mut bytes).ok()?;
                UnboundKey::new(&CHACHA20_POLY1305, &bytes).ok()
            })
            .map(LessSafeKey::new);
        Sealer {
            key,
            prefix: shared.prefix.clone(),
        }
    }

    fn aad(&self, context: &str) -> Vec<u8> {
        format!("{}\0{context}", self.prefix).into_bytes()
    }

    /// `plain` sealed for `context`, as base64 (nonce, then ciphertext and tag).
    pub(crate) fn seal(&self, plain: &[u8], context: &str) -> Option<String> {
        let key = self.key.as_ref()?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut data = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(self.aad(context)),
            &mut data,
        )
        .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Some(base64::engine::general_purpose::STANDARD_NO_PAD.encode(out))
    }

    /// What [`Sealer::seal`] sealed for `context`; `None` if it was sealed
    /// with another key or context, or tampered with.
    pub(crate) fn open(&self, sealed: &str, context: &str) -> Option<Vec<u8>> {
        let key = self.key.as_ref()?;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(sealed)
            .ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = data.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(self.aad(context)), &mut data)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, Sources};

    fn settings(extra: &[(&str, &str)]) -> Settings {
        let mut env: Vec<(String, String)> = [
            ("EMGATE_UPSTREAM_URL", "https://em:9398"),
            ("EMGATE_UPSTREAM_USERNAME", "u"),
            ("EMGATE_UPSTREAM_PASSWORD", "p"),
            ("EMGATE_SHARED_URL", "redis://127.0.0.1:6379"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.reverse();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Settings::load(&Sources {
            file: None,
            env: &lookup,
        })
        .unwrap()
    }

    #[test]
    fn a_sealed_token_opens_only_with_the_same_key_and_context() {
        let s = settings(&[]);
        let sealer = Sealer::new(s.shared.as_ref().unwrap(), &s.upstream);
        let sealed = sealer.seal(b"the-token", "gen 3").unwrap();
        assert!(!sealed.contains("the-token"));
        assert_eq!(
            sealer.open(&sealed, "gen 3").as_deref(),
            Some(&b"the-token"[..])
        );
        assert_eq!(
            sealer.open(&sealed, "gen 4"),
            None,
            "replayed under another generation"
        );
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            sealer.open(std::str::from_utf8(&tampered).unwrap(), "gen 3"),
            None
        );
        let other = settings(&[("EMGATE_SHARED_SECRET", "another-secret-0123456789")]);
        let other = Sealer::new(other.shared.as_ref().unwrap(), &other.upstream);
        assert_eq!(
            other.open(&sealed, "gen 3"),
            None,
            "opened with another key"
        );
        let prefixed = settings(&[("EMGATE_SHARED_PREFIX", "other")]);
        let prefixed = Sealer::new(prefixed.shared.as_ref().unwrap(), &prefixed.upstream);
        assert_eq!(
            prefixed.open(&sealed, "gen 3"),
            None,
            "opened by another fleet"
        );
    }
}
