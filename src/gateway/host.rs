//! The host a request names, checked once at the edge (RFC 9112 §3.2,
//! see README, "HTTP surface"): links the gateway builds for a client come only from a
//! value that passed these checks.
//!
//! - HTTP/1.1 needs exactly one `Host`; none, or two, is a 400.
//! - The value must be an authority and nothing else: a registered name
//!   (letters, digits, `-`, `.`, `_`, `~`), an IPv4 address or a bracketed
//!   IPv6 address, and an optional port. `a b`, `a@evil`, quotes, slashes
//!   are a 400.
//! - An absolute-form target (`GET http://host/api/ HTTP/1.1`) or an HTTP/2
//!   `:authority` must name the same host as `Host` when both are present.

use std::sync::Arc;

use http::request::Parts;
use http::Version;

use crate::gateway::heads::{Heads, Name};
use crate::gateway::response::remembered;

/// A validated `host[:port]`, lowercased, whether it names loopback, and
/// the base URLs of the gateway under that name (`http://` and
/// `https://` it), made with it: the links a client gets start with one.
/// Cheap to clone (one reference count): a request's `Host` is nearly
/// always the one before it on the same thread, and its check is
/// remembered ([`Authority::parse`]). Equal when the texts are.
#[derive(Debug, Clone)]
pub struct Authority(Arc<Named>);

#[derive(Debug)]
struct Named {
    text: Box<str>,
    loopback: bool,
    http: Arc<str>,
    https: Arc<str>,
}

impl PartialEq for Authority {
    fn eq(&self, other: &Authority) -> bool {
        self.0.text == other.0.text
    }
}

impl Eq for Authority {}

impl Authority {
    /// Parses a `Host`-style value; `None` if it is not a plain authority.
    /// The last value that parsed is remembered per thread with its
    /// result, so clients naming the gateway the same way request after
    /// request pay for a comparison instead of the checks; a value that
    /// fails is never remembered.
    pub fn parse(value: &str) -> Option<Authority> {
        Authority::parse_bytes(value.as_bytes())
    }

    /// [`Authority::parse`] of a header value's bytes. The memory compares
    /// bytes, so a `Host` seen before is not first checked to be text (about
    /// 100 instructions a request); a new one is, and fails as any value
    /// that is no plain authority (every byte outside printable ASCII
    /// already fails the checks).
    pub fn parse_bytes(value: &[u8]) -> Option<Authority> {
        type Last = Option<(Box<[u8]>, Authority)>;
        thread_local! {
            static LAST: std::cell::RefCell<Last> = const { std::cell::RefCell::new(None) };
        }
        remembered(
            &LAST,
            |v| **v == *value,
            || {
                let text = std::str::from_utf8(value).ok()?;
                Authority::check(text).map(|a| (value.into(), a))
            },
        )
    }

    /// [`Authority::parse`] without the memory.
    fn check(value: &str) -> Option<Authority> {
        if value.is_empty() || value.len() > 255 {
            return None;
        }
        let (host, port) = if value.starts_with('[') {
            let end = value.find(']')?;
            value[1..end].parse::<std::net::Ipv6Addr>().ok()?;
            let port = match &value[end + 1..] {
                "" => None,
                after => Some(after.strip_prefix(':')?),
            };
            (&value[..=end], port)
        } else {
            match value.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (value, None),
            }
        };
        if let Some(p) = port {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            if p.parse::<u32>().ok()? > 65535 {
                return None;
            }
        }
        let name_ok = host.starts_with('[')
            || (!host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')));
        if !name_ok {
            return None;
        }
        let text = value.to_ascii_lowercase();
        let name = match text.find(']') {
            Some(end) => &text[..=end],
            None => text.split_once(':').map_or(text.as_str(), |(h, _)| h),
        };
        Some(Authority(Arc::new(Named {
            loopback: matches!(name, "127.0.0.1" | "[::1]" | "localhost"),
            http: format!("http://{text}").into(),
            https: format!("https://{text}").into(),
            text: text.into(),
        })))
    }

    /// The authority as text.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// `http://` or `https://` (`https`) and the authority: the gateway's
    /// base URL under this name.
    pub fn base(&self, https: bool) -> Arc<str> {
        if https {
            self.0.https.clone()
        } else {
            self.0.http.clone()
        }
    }

    /// Whether it names this machine's loopback: `127.0.0.1`, `[::1]` or
    /// `localhost`, with any port. An anonymous gateway answers only these
    /// (a page whose DNS name was rebound to 127.0.0.1 still names its own).
    pub fn is_loopback(&self) -> bool {
        self.0.loopback
    }
}

/// Why a request's host was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHost {
    /// Two or more `Host` headers.
    #[error("the request has more than one Host header")]
    Duplicated,
    /// HTTP/1.1 without `Host`.
    #[error("the request has no Host header")]
    Missing,
    /// `Host` (or the target's authority) is not a plain host\[:port\].
    #[error("the Host header is not a valid host[:port]")]
    Malformed,
    /// The target's authority and `Host` disagree.
    #[error("the request target names another host than the Host header")]
    Mismatch,
}

/// The host the client addressed: `Host`, or the target's authority
/// (HTTP/2's `:authority`, an absolute-form target); `None` for an HTTP/1.0
/// request that names none.
pub fn of_request(parts: &Parts, headers: &Heads<'_>) -> Result<Option<Authority>, BadHost> {
    let mut hosts = headers.get_all(Name::Host);
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(BadHost::Duplicated);
    }
    let header = match header {
        Some(v) => Some(Authority::parse_bytes(v.as_bytes()).ok_or(BadHost::Malformed)?),
        None => None,
    };
    let target = match parts.uri.authority() {
        Some(a) => Some(Authority::parse(a.as_str()).ok_or(BadHost::Malformed)?),
        None => None,
    };
    match (header, target) {
        (Some(h), Some(t)) if h != t => Err(BadHost::Mismatch),
        (Some(h), _) => Ok(Some(h)),
        // HTTP/1.1 requires `Host` even with an absolute-form target (RFC
        // 9112 section 3.2); HTTP/2 names the host in `:authority`.
        (None, _) if parts.version == Version::HTTP_11 => Err(BadHost::Missing),
        (None, Some(t)) => Ok(Some(t)),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HOST;

    fn of_request(parts: &Parts) -> Result<Option<Authority>, BadHost> {
        super::of_request(parts, &Heads::of(&parts.headers))
    }

    fn parts(version: Version, uri: &str, hosts: &[&str]) -> Parts {
        let mut b = http::Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn authorities() {
        for ok in [
            "gw",
            "gw.example:8080",
            "127.0.0.1:9399",
            "[::1]:9399",
            "[::1]",
            "GW.Example",
            "a_b~c",
        ] {
            assert!(Authority::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "", "a b", "a@evil", "\"x\"", "a/b", "a:", "a:99999", "a:1:2", "[x]", "[::1]x", "a\\b",
            "é",
        ] {
            assert!(Authority::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(Authority::parse("GW:1").unwrap().as_str(), "gw:1");
        for loopback in [
            "127.0.0.1",
            "127.0.0.1:9399",
            "[::1]",
            "[::1]:1",
            "LocalHost:80",
        ] {
            assert!(
                Authority::parse(loopback).unwrap().is_loopback(),
                "{loopback}"
            );
        }
        for other in [
            "evil.example",
            "localhost.evil.example",
            "127.0.0.2",
            "[::2]:1",
            "gw",
        ] {
            assert!(!Authority::parse(other).unwrap().is_loopback(), "{other}");
        }
    }

    #[test]
    fn a_remembered_host_answers_only_for_the_same_bytes() {
        // Each parse follows another value: the remembered one must
        // never answer for a different one, nor a bad one for a good one.
        let seq = [
            "gw:1",
            "gw:1",
            "a b",
            "gw:1",
            "GW:1",
            "127.0.0.1:9",
            "gw:1",
            "a b",
        ];
        for v in seq {
            assert_eq!(Authority::parse(v), Authority::check(v), "{v}");
        }
        assert_eq!(Authority::parse("GW:1").unwrap().as_str(), "gw:1");
        assert_eq!(
            &*Authority::parse("GW:1").unwrap().base(false),
            "http://gw:1"
        );
        assert_eq!(
            &*Authority::parse("[::1]:9").unwrap().base(true),
            "https://[::1]:9"
        );
        // Raw header bytes: whatever is not text, or not printable ASCII,
        // is refused as `to_str` and the checks refuse it, remembered or not.
        for v in [
            &b"gw:1"[..],
            b"g\xffw:1",
            b"gw:1",
            b"gw\t:1",
            b"[::1]:9",
            "h\u{e9}te:1".as_bytes(),
            b"gw:1\x7f",
            b"gw:1",
        ] {
            // What the text path saw: the value as `HeaderValue::to_str` gives it.
            let header = http::HeaderValue::from_bytes(v).ok();
            let as_text = header.as_ref().and_then(|h| h.to_str().ok());
            assert_eq!(
                Authority::parse_bytes(v),
                as_text.and_then(Authority::check),
                "{v:?}"
            );
        }
        assert!(Authority::parse("127.0.0.1:9").unwrap().is_loopback());
        assert!(!Authority::parse("gw:1").unwrap().is_loopback());
        assert!(Authority::parse("a b").is_none());
    }

    #[test]
    fn requests_name_one_valid_host() {
        let v11 = Version::HTTP_11;
        assert_eq!(
            of_request(&parts(v11, "/api/", &["gw:1"])).unwrap(),
            Authority::parse("gw:1")
        );
        assert_eq!(
            of_request(&parts(v11, "/api/", &["gw", "gw"])),
            Err(BadHost::Duplicated)
        );
        assert_eq!(of_request(&parts(v11, "/api/", &[])), Err(BadHost::Missing));
        assert_eq!(
            of_request(&parts(v11, "http://evil.example/api/", &[])),
            Err(BadHost::Missing),
            "HTTP/1.1 needs Host even with an absolute-form target"
        );
        assert_eq!(of_request(&parts(Version::HTTP_10, "/api/", &[])), Ok(None));
        assert_eq!(
            of_request(&parts(v11, "/api/", &["a@evil"])),
            Err(BadHost::Malformed)
        );
        assert_eq!(
            of_request(&parts(v11, "http://other/api/", &["gw"])),
            Err(BadHost::Mismatch)
        );
        assert!(of_request(&parts(v11, "http://gw/api/", &["GW"])).is_ok());
        assert_eq!(
            of_request(&parts(Version::HTTP_2, "https://gw:9399/api/", &[])).unwrap(),
            Authority::parse("gw:9399")
        );
    }
}
