//! A request's headers, read once at the edge: the phases ask it for the
//! headers they read instead of looking each up in the request's map.
//!
//! Most of what a phase asks for a typical request does not carry (`Accept`,
//! `Cookie`, `Authorization`, EM's session header, `If-None-Match`), and a
//! lookup in `http`'s map hashes the name and probes for it either way:
//! about 130 instructions each, six or seven a hit. One pass over the
//! request's few headers notes the first value of each of those names
//! ([`Name`]) and whether it came more than once, and also sums the head's
//! size for its limit. A name that came more than once is looked up in the
//! map as before, and any other header is read from [`Heads::map`], so
//! every phase sees what it would have.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, ValueIter, ACCEPT, AUTHORIZATION, COOKIE, HOST,
    IF_NONE_MATCH,
};

use crate::em::session::SESSION_HEADER;

/// The names noted in the one pass: those a hit asks for, in the order of
/// [`Name`].
static KNOWN: [HeaderName; COUNT] = [
    HOST,
    ACCEPT,
    COOKIE,
    AUTHORIZATION,
    IF_NONE_MATCH,
    HeaderName::from_static("x-request-id"),
    SESSION_HEADER,
];

/// How many names [`KNOWN`] has.
const COUNT: usize = 7;

/// A header the phases read, by its place in the names noted: asked for by this
/// index, a value is found without comparing or hashing a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// `Host`.
    Host,
    /// `Accept`.
    Accept,
    /// `Cookie`.
    Cookie,
    /// `Authorization`.
    Authorization,
    /// `If-None-Match`.
    IfNoneMatch,
    /// `X-Request-Id`, as the client sent it: read only to choose the
    /// request's id (`request_id::ProcessUniqueId::kept_or_new`), which the
    /// phases take from the request's context.
    RequestId,
    /// EM's session header, `X-RestSvcSessionId`.
    Session,
}

impl Name {
    /// The header's name.
    pub fn header(self) -> &'static HeaderName {
        &KNOWN[self as usize]
    }
}

/// A request's headers with the first value of each [`Name`] (see the module's docs).
#[derive(Clone, Copy)]
pub struct Heads<'a> {
    map: &'a HeaderMap,
    /// The first value of each name of [`KNOWN`], in its order.
    first: [Option<&'a HeaderValue>; COUNT],
    /// A bit per name of [`KNOWN`] that came more than once.
    many: u8,
    /// Bytes of the headers as the size limit counts them (name, value,
    /// and 4 for `: ` and the line end).
    bytes: usize,
}

/// The values of one name in a request (see [`Heads::get_all`]).
pub enum Values<'a> {
    /// None, or the one value.
    One(Option<&'a HeaderValue>),
    /// Every value, from the map.
    All(ValueIter<'a, HeaderValue>),
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a HeaderValue;

    fn next(&mut self) -> Option<&'a HeaderValue> {
        match self {
            Values::One(v) => v.take(),
            Values::All(all) => all.next(),
        }
    }
}

fn known(name: &HeaderName) -> Option<usize> {
    KNOWN.iter().position(|k| k == name)
}

impl<'a> Heads<'a> {
    /// Reads `map` once.
    pub fn of(map: &'a HeaderMap) -> Heads<'a> {
        let mut heads = Heads {
            map,
            first: [None; COUNT],
            many: 0,
            bytes: 0,
        };
        for (name, value) in map {
            heads.bytes += name.as_str().len() + value.len() + 4;
            if let Some(i) = known(name) {
                match heads.first[i] {
                    None => heads.first[i] = Some(value),
                    Some(_) => heads.many |= 1 << i,
                }
            }
        }
        heads
    }

    /// The first value of `name`, as `HeaderMap::get`.
    pub fn get(&self, name: Name) -> Option<&'a HeaderValue> {
        self.first[name as usize]
    }

    /// Every value of `name`, as `HeaderMap::get_all`.
    pub fn get_all(&self, name: Name) -> Values<'a> {
        let i = name as usize;
        if self.many & (1 << i) == 0 {
            Values::One(self.first[i])
        } else {
            Values::All(self.map.get_all(&KNOWN[i]).iter())
        }
    }

    /// The request's map, for what reads it whole.
    pub fn map(&self) -> &'a HeaderMap {
        self.map
    }

    /// The headers' bytes as the head's size limit counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name present once, twice or not at all, beside others: the
    /// answers are the map's own.
    #[test]
    fn answers_as_the_map_does() {
        let names = [
            Name::Host,
            Name::Accept,
            Name::Cookie,
            Name::Authorization,
            Name::IfNoneMatch,
            Name::RequestId,
            Name::Session,
        ];
        assert_eq!(names.len(), COUNT);
        let others = [
            HeaderName::from_static("x-other"),
            http::header::CACHE_CONTROL,
        ];
        let present: Vec<&HeaderName> = names
            .iter()
            .map(|n| n.header())
            .chain(others.iter())
            .collect();
        for (n, name) in present.iter().enumerate() {
            for count in 0..3 {
                let mut map = HeaderMap::new();
                map.append(
                    HeaderName::from_static("x-before"),
                    HeaderValue::from_static("b"),
                );
                for c in 0..count {
                    map.append((*name).clone(), HeaderValue::from(n * 10 + c));
                }
                map.append(ACCEPT, HeaderValue::from_static("text/xml"));
                let heads = Heads::of(&map);
                for asked in names {
                    let header = asked.header();
                    assert_eq!(
                        heads.get(asked),
                        map.get(header),
                        "{name} x{count}: {header}"
                    );
                    let all: Vec<_> = heads.get_all(asked).collect();
                    let expected: Vec<_> = map.get_all(header).iter().collect();
                    assert_eq!(all, expected, "{name} x{count}: {header}");
                }
                let bytes: usize = map
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len() + 4)
                    .sum();
                assert_eq!(heads.bytes(), bytes);
            }
        }
    }
}
