//! Client access: who may use the gateway (see README, "Client access").
//!
//! A client proves itself with `Authorization: Basic name:secret`,
//! `Authorization: Bearer secret`, or a gateway session token (from the
//! drop-in logon, [`crate::gateway::logon`]) in `X-RestSvcSessionId` or its cookie.
//! Secrets are stored as SHA-256 hashes and compared in constant time.
//!
//! Invariant: nothing here ever reaches EM; the EM session is the pool's.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE};
use serde::Deserialize;

use crate::digest::{constant_time_eq, random_token, sha256_hex};
use crate::em::session::SESSION_HEADER;
use crate::gateway::heads::{Heads, Name};
use crate::secret::Secret;

/// A new random client secret (256 bits, URL-safe) and its hex SHA-256.
pub fn new_client_secret() -> Result<(Secret, String), String> {
    let secret = random_token(32)?;
    let hash = sha256_hex(secret.expose().as_bytes());
    Ok((secret, hash))
}

/// One entry of the clients file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    name: String,
    secret_sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    #[serde(default)]
    clients: Vec<ClientEntry>,
}

/// A known client. Its name passed the file's check (1 to 64 letters,
/// digits, `-`, `_` or `.`): plain text, which the access line writes
/// unchecked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientName(Arc<str>);

impl ClientName {
    /// The name as written in the clients file.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, shared rather than copied (a caller's, for the whole of
    /// its request).
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl std::fmt::Display for ClientName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The clients file, loaded.
#[derive(Debug, Default)]
pub struct Clients {
    /// Name and secret hash of each client.
    entries: Vec<(ClientName, [u8; 32])>,
}

impl Clients {
    /// Reads and checks the clients file; the error names the line.
    pub fn load(path: &Path) -> Result<Clients, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Clients::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the clients file's text.
    pub fn parse(text: &str) -> Result<Clients, String> {
        let file: ClientsFile =
            toml::from_str(text).map_err(|e| crate::config::toml_error(text, &e))?;
        let mut entries: Vec<(ClientName, [u8; 32])> = Vec::new();
        for c in file.clients {
            let line_of = |needle: &str| {
                text.lines()
                    .position(|l| l.contains(needle))
                    .map_or(0, |i| i + 1)
            };
            let valid = !c.name.is_empty()
                && c.name.len() <= 64
                && c.name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
            if !valid {
                return Err(format!(
                    "line {}: a client name is 1 to 64 letters, digits, '-', '_' or '.'",
                    line_of(&c.name)
                ));
            }
            let hash = parse_hash(&c.secret_sha256).ok_or_else(|| {
                format!(
                    "line {}: secret_sha256 of client {:?} must be 64 hex digits (emgate client add makes one)",
                    line_of(&c.secret_sha256),
                    c.name
                )
            })?;
            if entries.iter().any(|(n, _)| n.as_str() == c.name) {
                return Err(format!(
                    "line {}: client {:?} is listed twice",
                    line_of(&c.name),
                    c.name
                ));
            }
            entries.push((ClientName(c.name.into()), hash));
        }
        Ok(Clients { entries })
    }

    /// How many clients are listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file lists nobody.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a client of this name is listed.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|(n, _)| n.as_str() == name)
    }

    /// The listed names, in the file's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Whether the two list the same clients with the same secrets.
    pub fn same_as(&self, other: &Clients) -> bool {
        self.entries == other.entries
    }

    /// The client with this name and secret (`presented`: the secret's SHA-256).
    pub fn check_basic(&self, name: &str, presented: &[u8; 32]) -> Option<ClientName> {
        // Every entry is compared, so timing does not tell which names exist.
        let mut found = None;
        for (n, hash) in &self.entries {
            if constant_time_eq(hash, presented) && n.as_str() == name {
                found = Some(n.clone());
            }
        }
        found
    }

    /// The client whose secret this is (`presented`: its SHA-256).
    pub fn check_bearer(&self, presented: &[u8; 32]) -> Option<ClientName> {
        let mut found = None;
        for (n, hash) in &self.entries {
            if constant_time_eq(hash, presented) {
                found = Some(n.clone());
            }
        }
        found
    }
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What a request presented to prove who it is. Its `Debug` names the
/// kind and a Basic user name, never the secret or token it borrows in the
/// clear (so a stray `{:?}` cannot put one in a log or a panic).
pub enum Presented<'a> {
    /// Nothing.
    Nothing,
    /// `Authorization: Basic` name and secret.
    Basic(String, Secret),
    /// `Authorization: Bearer` secret.
    Bearer(&'a str),
    /// A gateway session token (header or cookie; the cookie wins, as on EM).
    Session(&'a str),
    /// An `Authorization` header we cannot read.
    Malformed,
}

impl std::fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Presented::Nothing => f.write_str("Nothing"),
            Presented::Basic(name, secret) => {
                f.debug_tuple("Basic").field(name).field(secret).finish()
            }
            Presented::Bearer(_) => f.write_str("Bearer(***)"),
            Presented::Session(_) => f.write_str("Session(***)"),
            Presented::Malformed => f.write_str("Malformed"),
        }
    }
}

/// Whether the request is authenticated by the session cookie alone: the
/// one credential a browser sends by itself, so an unsafe method carrying
/// only it could be a cross-site request (see README, "Client access").
pub fn cookie_only(headers: &HeaderMap) -> bool {
    session_cookie(headers.get_all(COOKIE)).is_some()
        && !headers.contains_key(&SESSION_HEADER)
        && !headers.contains_key(AUTHORIZATION)
}

/// Reads the credentials a request carries.
pub fn presented<'a>(headers: &Heads<'a>) -> Presented<'a> {
    if let Some(token) = session_cookie(headers.get_all(Name::Cookie)) {
        return Presented::Session(token);
    }
    if let Some(token) = headers
        .get(Name::Session)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Presented::Session(token);
    }
    authorization(headers.get(Name::Authorization))
}

/// What an `Authorization` header presents (Basic data, a bearer secret),
/// for client access and, alone, for the admin endpoints: one reading of
/// the header for both.
pub fn authorization(value: Option<&HeaderValue>) -> Presented<'_> {
    let Some(value) = value else {
        return Presented::Nothing;
    };
    let Ok(value) = value.to_str() else {
        return Presented::Malformed;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) else {
            return Presented::Malformed;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return Presented::Malformed;
        };
        match decoded.split_once(':') {
            Some((name, secret)) => Presented::Basic(name.to_string(), Secret::new(secret)),
            None => Presented::Malformed,
        }
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
        Presented::Bearer(rest.trim())
    } else {
        Presented::Malformed
    }
}

/// The session token in a request's `Cookie` values, if one names it.
fn session_cookie<'a>(cookies: impl IntoIterator<Item = &'a HeaderValue>) -> Option<&'a str> {
    cookies
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| name.eq_ignore_ascii_case("X-RestSvcSessionId"))
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256;

    #[test]
    fn what_a_request_presented_never_shows_its_secret() {
        let secret = Secret::new("basic-secret-0123");
        let shown = [
            Presented::Basic("dashboard".into(), secret),
            Presented::Bearer("bearer-secret-0123"),
            Presented::Session("session-token-0123"),
        ]
        .map(|p| format!("{p:?}"));
        assert_eq!(shown[0], r#"Basic("dashboard", ***)"#);
        assert_eq!(shown[1], "Bearer(***)");
        assert_eq!(shown[2], "Session(***)");
    }

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

    #[test]
    fn the_clients_file_is_checked_and_errors_name_the_line() {
        let good = format!(
            "[[clients]]\nname = \"dash\"\nsecret_sha256 = \"{}\"\n",
            sha256_hex(b"s1")
        );
        let clients = Clients::parse(&good).unwrap();
        let (s1, s2) = (sha256(b"s1"), sha256(b"s2"));
        assert_eq!(clients.check_basic("dash", &s1).unwrap().as_str(), "dash");
        assert!(clients.check_basic("dash", &s2).is_none());
        assert!(clients.check_basic("other", &s1).is_none());
        assert_eq!(clients.check_bearer(&s1).unwrap().as_str(), "dash");
        assert!(clients.check_bearer(&sha256(b"nope")).is_none());

        let err =
            Clients::parse("[[clients]]\nname = \"x\"\nsecret_sha256 = \"abc\"\n").unwrap_err();
        assert!(err.starts_with("line 3"), "{err}");
        let err = Clients::parse("[[clients]]\nname = \"x\"\nsecret = \"abc\"\n").unwrap_err();
        assert!(err.starts_with("line 3"), "{err}");
        let err = Clients::parse("[[clients]\n").unwrap_err();
        assert!(err.starts_with("line 1"), "{err}");
        // `~` marks the owners the gateway makes (`~anonymous`, `~operator`).
        let marked = format!(
            "[[clients]]\nname = \"~anonymous\"\nsecret_sha256 = \"{}\"\n",
            sha256_hex(b"s1")
        );
        assert!(Clients::parse(&marked).unwrap_err().starts_with("line 2"));
    }

    #[test]
    fn credentials_are_read_from_headers_and_the_cookie_wins() {
        let mut h = HeaderMap::new();
        assert!(matches!(presented(&Heads::of(&h)), Presented::Nothing));
        h.insert(AUTHORIZATION, "Basic ZGFzaDpzMQ==".parse().unwrap());
        assert!(
            matches!(presented(&Heads::of(&h)), Presented::Basic(ref n, ref s) if n == "dash" && s.expose() == "s1")
        );
        h.insert(AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert!(matches!(
            presented(&Heads::of(&h)),
            Presented::Bearer("tok")
        ));
        h.insert(AUTHORIZATION, "Digest x".parse().unwrap());
        assert!(matches!(presented(&Heads::of(&h)), Presented::Malformed));
        h.insert(SESSION_HEADER, "hdr".parse().unwrap());
        assert!(matches!(
            presented(&Heads::of(&h)),
            Presented::Session("hdr")
        ));
        h.insert(COOKIE, "a=b; X-RestSvcSessionId=ck".parse().unwrap());
        assert!(matches!(
            presented(&Heads::of(&h)),
            Presented::Session("ck")
        ));
    }
}
