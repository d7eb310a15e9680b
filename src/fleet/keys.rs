//! The fleet's keys: everything a replica reads from Redis is either sealed
//! or carries a MAC from them, and the Redis names of records found through
//! a client token are keyed hashes of it (see README, "Fleet mode: what a
//! replica trusts in Redis").
//!
//! Three keys are derived by HKDF-SHA256 from `EMGATE_SHARED_SECRET` (or,
//! when none is set, from the EM URL, user name and password, which every
//! replica has and whoever can only reach Redis has not), each bound to the
//! fleet's prefix:
//! - a ChaCha20-Poly1305 key that seals the EM session token;
//! - an HMAC-SHA256 key for the MAC every shared value carries;
//! - an HMAC-SHA256 key that names client-token records.
//!
//! Every MAC covers the prefix, the kind of value, its Redis key name and
//! (where it has one) its generation, so a value copied under another name,
//! another fleet or another generation does not verify.
//!
//! Rotation: the setting may hold several secrets, one per line. The first
//! seals, signs and names; every one opens, verifies and is tried for
//! names, so replicas on the old and the new list understand each other
//! while a rotation rolls out (README, "Rotating the shared secret").

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::{SharedSettings, UpstreamSettings};
use crate::digest::{from_hex, hex};

/// Length of a MAC tag.
pub(crate) const TAG_LEN: usize = 32;

/// The keys of one secret.
struct KeySet {
    aead: LessSafeKey,
    mac: hmac::Key,
    names: hmac::Key,
}

/// HKDF output length for an HMAC-SHA256 key.
struct Len32;

impl ring::hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl KeySet {
    fn derive(material: &[u8], prefix: &str) -> Option<KeySet> {
        let prk = Salt::new(HKDF_SHA256, b"emgate fleet seal v1").extract(material);
        let bytes = |info: &[u8]| -> Option<[u8; 32]> {
            let info = [info, prefix.as_bytes()];
            let okm = prk.expand(&info, Len32).ok()?;
            let mut out = [0u8; 32];
            okm.fill(&mut out).ok()?;
            Some(out)
        };
        // The AEAD key as derived before MACs existed (info: the prefix
        // alone), so a fleet upgraded replica by replica keeps its session.
        let aead = {
            let info = [prefix.as_bytes()];
            let okm = prk.expand(&info, &CHACHA20_POLY1305).ok()?;
            let mut out = [0u8; 32];
            okm.fill(&mut out).ok()?;
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &out).ok()?)
        };
        Some(KeySet {
            aead,
            mac: hmac::Key::new(hmac::HMAC_SHA256, &bytes(b"mac\0")?),
            names: hmac::Key::new(hmac::HMAC_SHA256, &bytes(b"names\0")?),
        })
    }
}

/// Seals, signs and names for one fleet.
pub(crate) struct Keys {
    /// The current secret's keys first, then earlier ones (rotation).
    sets: Vec<KeySet>,
    prefix: String,
}

impl Keys {
    pub(crate) fn new(shared: &SharedSettings, upstream: &UpstreamSettings) -> Keys {
        let materials: Vec<String> = match &shared.secret {
            Some(s) => s
                .expose()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| format!("secret\0{l}"))
                .collect(),
            None => vec![format!(
                "em\0{}\0{}\0{}",
                upstream.url,
                upstream.username,
                upstream.password.expose()
            )],
        };
        Keys {
            sets: materials
                .iter()
                .filter_map(|m| KeySet::derive(m.as_bytes(), &shared.prefix))
                .collect(),
            prefix: shared.prefix.clone(),
        }
    }

    fn aad(&self, context: &str) -> Vec<u8> {
        format!("{}\0{context}", self.prefix).into_bytes()
    }

    /// `plain` sealed for `context`, as base64 (nonce, then ciphertext and tag).
    pub(crate) fn seal(&self, plain: &[u8], context: &str) -> Option<String> {
        let key = &self.sets.first()?.aead;
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

    /// What [`Keys::seal`] sealed for `context` with any of the keys;
    /// `None` if it was sealed with another key or context, or tampered with.
    pub(crate) fn open(&self, sealed: &str, context: &str) -> Option<Vec<u8>> {
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(sealed)
            .ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        self.sets.iter().find_map(|set| {
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut data = data.to_vec();
            let plain = set
                .aead
                .open_in_place(nonce, Aad::from(self.aad(context)), &mut data)
                .ok()?;
            Some(plain.to_vec())
        })
    }

    /// The message a MAC covers: the prefix and each part, length-prefixed
    /// so no two lists of parts give the same bytes.
    fn message(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut m = Vec::with_capacity(
            self.prefix.len() + parts.iter().map(|p| p.len() + 8).sum::<usize>() + 8,
        );
        for p in std::iter::once(self.prefix.as_bytes()).chain(parts.iter().copied()) {
            m.extend_from_slice(&(p.len() as u64).to_be_bytes());
            m.extend_from_slice(p);
        }
        m
    }

    /// The MAC of `parts` with the current key.
    pub(crate) fn sign(&self, parts: &[&[u8]]) -> Option<[u8; TAG_LEN]> {
        let set = self.sets.first()?;
        let tag = hmac::sign(&set.mac, &self.message(parts));
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Some(out)
    }

    /// The MAC of `parts`, hex (for text values and Lua scripts).
    pub(crate) fn sign_hex(&self, parts: &[&[u8]]) -> Option<String> {
        self.sign(parts).map(|t| hex(&t))
    }

    /// Whether `tag` is the MAC of `parts` under any of the keys
    /// (constant-time).
    pub(crate) fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let message = self.message(parts);
        self.sets
            .iter()
            .any(|set| hmac::verify(&set.mac, &message, tag).is_ok())
    }

    /// [`Keys::verify`] of a hex tag.
    pub(crate) fn verify_hex(&self, parts: &[&[u8]], tag: &str) -> bool {
        from_hex(tag).is_some_and(|t| self.verify(parts, &t))
    }

    /// The Redis names of a client token under each key, the current one
    /// first: nobody without the secret can compute them.
    pub(crate) fn token_names(&self, token: &str) -> Vec<[u8; 32]> {
        self.sets
            .iter()
            .map(|set| {
                let tag = hmac::sign(&set.names, token.as_bytes());
                let mut out = [0u8; 32];
                out.copy_from_slice(tag.as_ref());
                out
            })
            .collect()
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
            demo: &[],
            env: &lookup,
        })
        .unwrap()
    }

    #[test]
    fn a_sealed_token_opens_only_with_the_same_key_and_context() {
        let s = settings(&[]);
        let sealer = Keys::new(s.shared.as_ref().unwrap(), &s.upstream);
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
        let other = Keys::new(other.shared.as_ref().unwrap(), &other.upstream);
        assert_eq!(
            other.open(&sealed, "gen 3"),
            None,
            "opened with another key"
        );
        let prefixed = settings(&[("EMGATE_SHARED_PREFIX", "other")]);
        let prefixed = Keys::new(prefixed.shared.as_ref().unwrap(), &prefixed.upstream);
        assert_eq!(
            prefixed.open(&sealed, "gen 3"),
            None,
            "opened by another fleet"
        );
    }

    #[test]
    fn a_mac_verifies_only_for_the_same_parts_and_a_rotation_accepts_both_secrets() {
        let old = settings(&[("EMGATE_SHARED_SECRET", "old-secret-0123456789")]);
        let old = Keys::new(old.shared.as_ref().unwrap(), &old.upstream);
        let tag = old.sign(&[b"entry", b"{emgate}:e:ab", b"body"]).unwrap();
        assert!(old.verify(&[b"entry", b"{emgate}:e:ab", b"body"], &tag));
        assert!(
            !old.verify(&[b"entry", b"{emgate}:e:cd", b"body"], &tag),
            "another key name"
        );
        assert!(
            !old.verify(&[b"entry", b"{emgate}:e:ab", b"bodz"], &tag),
            "altered bytes"
        );
        assert!(
            !old.verify(&[b"entry", b"{emgate}:e:abbody"], &tag),
            "parts run together"
        );
        // Rolling out a new secret: sign with the new one, still accept the old.
        let both = settings(&[(
            "EMGATE_SHARED_SECRET",
            "new-secret-0123456789\nold-secret-0123456789",
        )]);
        let both = Keys::new(both.shared.as_ref().unwrap(), &both.upstream);
        assert!(both.verify(&[b"entry", b"{emgate}:e:ab", b"body"], &tag));
        let new_tag = both.sign(&[b"x"]).unwrap();
        assert!(
            !old.verify(&[b"x"], &new_tag),
            "the old list does not know the new secret"
        );
        let sealed = old.seal(b"tok", "g1").unwrap();
        assert_eq!(both.open(&sealed, "g1").as_deref(), Some(&b"tok"[..]));
        // Token names: keyed, one per secret, the current one first.
        let names = both.token_names("a token");
        assert_eq!(names.len(), 2);
        assert_eq!(names[1], old.token_names("a token")[0]);
        assert_ne!(names[0], crate::digest::sha256(b"a token"));
        // After the rotation: the old secret is no longer accepted.
        let new = settings(&[("EMGATE_SHARED_SECRET", "new-secret-0123456789")]);
        let new = Keys::new(new.shared.as_ref().unwrap(), &new.upstream);
        assert!(!new.verify(&[b"entry", b"{emgate}:e:ab", b"body"], &tag));
    }
}
