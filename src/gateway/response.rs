//! Response plumbing shared by the handlers: the body type and content
//! negotiation (which of XML or JSON a client prefers).

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::gateway::heads::{Heads, Name};
use bytes::Bytes;

/// Every response body: whole, since EM's answers are read (and, later,
/// converted or cached) before they are sent.
pub type Body = http_body_util::Full<Bytes>;

/// A value remembered per thread for the last key it was made for, in
/// `last`: a busy gateway's answers repeat a few values (the public base)
/// that would otherwise be formatted, and allocated, on every request. `same` says whether the remembered key is the one
/// wanted; `make` makes key and value when it is not (`None`: nothing to
/// remember, nothing returned).
pub fn remembered<K: 'static, V: Clone + 'static>(
    last: &'static LocalKey<RefCell<Option<(K, V)>>>,
    same: impl FnOnce(&K) -> bool,
    make: impl FnOnce() -> Option<(K, V)>,
) -> Option<V> {
    last.with_borrow_mut(|last| match last {
        Some((k, v)) if same(k) => Some(v.clone()),
        _ => {
            let (k, v) = make()?;
            *last = Some((k, v.clone()));
            Some(v)
        }
    })
}

/// Whether the client's `Accept` prefers `application/xml` over JSON.
///
/// JSON is the default (see README, "HTTP surface"); XML wins when it is listed with a
/// higher quality than `application/json`, or when it is listed and JSON is
/// only reachable through a wildcard.
pub fn prefers_xml(headers: &Heads<'_>) -> bool {
    let mut xml: Option<f32> = None;
    let mut json: Option<f32> = None;
    for value in headers.get_all(Name::Accept) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let slot = match media.as_str() {
                "application/xml" | "text/xml" => &mut xml,
                "application/json" => &mut json,
                _ => continue,
            };
            *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
        }
    }
    match (xml, json) {
        (Some(x), Some(j)) => x > j,
        (Some(x), None) => x > 0.0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::ACCEPT;
    use http::HeaderMap;

    fn prefers_xml(h: &HeaderMap) -> bool {
        super::prefers_xml(&Heads::of(h))
    }

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, v.parse().unwrap());
        h
    }

    #[test]
    fn json_is_the_default_and_xml_must_be_preferred() {
        assert!(!prefers_xml(&HeaderMap::new()));
        assert!(!prefers_xml(&accept("*/*")));
        assert!(!prefers_xml(&accept("application/json")));
        assert!(prefers_xml(&accept("application/xml")));
        assert!(prefers_xml(&accept("text/xml, application/json;q=0.5")));
        assert!(!prefers_xml(&accept(
            "application/xml;q=0.5, application/json"
        )));
        assert!(!prefers_xml(&accept("application/xml;q=0")));
        assert!(prefers_xml(&accept("application/xml, */*")));
    }
}
