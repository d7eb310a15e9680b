//! `X-Request-Id`: a client's own id is kept when it is well-formed (at most
//! [`MAX_LEN`] characters of `A-Za-z0-9._:-`, see README, "HTTP surface"); anything else is
//! dropped before the request is logged or forwarded, and a new one made.
//!
//! A UUID v4 per request costs a `getrandom` system call; an id only has to
//! be unique, so it is a random per-process prefix and a counter (32 hex
//! digits, like a UUID without hyphens).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use http::header::Entry;
use http::{HeaderName, HeaderValue, Request};

/// Longest client request id kept.
pub const MAX_LEN: usize = 128;

/// A made id: prefix and counter, 16 hex digits each.
const ID_LEN: usize = 32;

/// Ids made per allocation (4 KiB; a block is freed when the last request
/// holding one of its ids is done).
const IDS_PER_BLOCK: usize = 128;

thread_local! {
    /// The rest of this thread's block of ids.
    static BLOCK: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Whether a client's request id may be kept (echoed, logged, sent to EM).
pub fn is_valid(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Makes request ids: process prefix + counter.
#[derive(Clone)]
pub struct ProcessUniqueId {
    /// Random, drawn once per process, in hex (written once, not per id).
    prefix: [u8; 16],
    /// Shared by every connection.
    counter: Arc<AtomicU64>,
}

impl ProcessUniqueId {
    /// A generator with a fresh random prefix.
    pub fn new() -> ProcessUniqueId {
        let mut prefix = [0; 16];
        hex(fastrand::u64(..), &mut prefix);
        ProcessUniqueId {
            prefix,
            counter: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Default for ProcessUniqueId {
    fn default() -> Self {
        ProcessUniqueId::new()
    }
}

impl ProcessUniqueId {
    /// A new id.
    ///
    /// Written into this thread's block of ids and split off it: a value
    /// copied into its own allocation (`HeaderValue::from_bytes`) would be
    /// allocated again when first cloned (onto the response), two
    /// allocations a request; a split shares the block's, made once every
    /// 128 ids (`IDS_PER_BLOCK`).
    pub fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; ID_LEN];
        id[..16].copy_from_slice(&self.prefix);
        hex(n, &mut id[16..]);
        let split = BLOCK.try_with(|block| {
            let mut block = block.try_borrow_mut().ok()?;
            if block.capacity() < ID_LEN {
                *block = BytesMut::with_capacity(ID_LEN * IDS_PER_BLOCK);
            }
            block.extend_from_slice(&id);
            Some(block.split().freeze())
        });
        let bytes = match split {
            Ok(Some(bytes)) => bytes,
            // The thread is ending: its own allocation.
            _ => Bytes::copy_from_slice(&id),
        };
        // Hex digits: always a valid header value.
        HeaderValue::from_maybe_shared(bytes).unwrap_or(HeaderValue::from_static("-"))
    }

    /// The request with exactly one valid id: the client's if it sent
    /// exactly one and it is valid ([`is_valid`]), else a new one. Only the header: tower-http's
    /// request-id layers also put the id in the request's and the
    /// response's extensions, which cost a hit five allocations; the router
    /// copies the id onto the response.
    ///
    /// One lookup of the header, not three (its values, whether one is
    /// left, the insert): this runs for every request.
    pub fn ensure<B>(&self, mut req: Request<B>) -> Request<B> {
        match req.headers_mut().entry(HEADER) {
            Entry::Vacant(none) => {
                none.insert(self.next());
            }
            Entry::Occupied(mut given) => {
                let mut values = given.iter();
                let keep = match (values.next(), values.next()) {
                    (Some(v), None) => is_valid(v.as_bytes()),
                    // Two or more: none is kept, whichever is valid.
                    _ => false,
                };
                if !keep {
                    // Replaces every value the client sent.
                    given.insert(self.next());
                }
            }
        }
        req
    }
}

fn hex(mut v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_are_distinct_and_outlive_the_block_they_were_cut_from() {
        let ids = ProcessUniqueId::new();
        let other = ProcessUniqueId::new();
        // Three blocks and more, two generators taking turns on a thread.
        let made: Vec<HeaderValue> = (0..IDS_PER_BLOCK * 3 + 5)
            .flat_map(|_| [ids.next(), other.next()])
            .collect();
        let distinct: std::collections::HashSet<&[u8]> =
            made.iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(distinct.len(), made.len());
        for (i, v) in made.iter().enumerate() {
            assert_eq!(v.len(), ID_LEN);
            assert!(is_valid(v.as_bytes()));
            // Each generator's own prefix, then its count in hex.
            let (own, n) = if i % 2 == 0 {
                (&ids, i / 2)
            } else {
                (&other, i / 2)
            };
            assert_eq!(&v.as_bytes()[..16], &own.prefix);
            assert_eq!(&v.as_bytes()[16..], format!("{n:016x}").as_bytes());
        }
    }

    #[test]
    fn only_well_formed_client_ids_are_kept() {
        let with = |v: &[&str]| {
            let mut r = Request::builder();
            for x in v {
                r = r.header("x-request-id", *x);
            }
            // The client's id if it was kept, `None` if a new one was made.
            let r = ProcessUniqueId::new().ensure(r.body(()).unwrap());
            let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
            v.contains(&id.as_str()).then_some(id)
        };
        assert_eq!(with(&["abc-1.2_3:4"]).as_deref(), Some("abc-1.2_3:4"));
        assert_eq!(with(&[&"a".repeat(128)]).map(|v| v.len()), Some(128));
        assert_eq!(with(&[&"a".repeat(129)]), None);
        assert_eq!(with(&["a b"]), None);
        assert_eq!(with(&["<script>"]), None);
        assert_eq!(with(&["a", "b"]), None);
        assert_eq!(with(&[]), None);
    }

    #[test]
    fn ids_are_32_hex_digits_and_distinct_and_a_request_gets_one_only_if_it_has_none() {
        let ids = ProcessUniqueId::new();
        let (a, b) = (ids.next(), ids.next());
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(a[..16], b[..16]);
        let given = ids.ensure(
            Request::builder()
                .header("x-request-id", "mine")
                .body(())
                .unwrap(),
        );
        assert_eq!(given.headers()["x-request-id"], "mine");
        let refused = ids.ensure(
            Request::builder()
                .header("x-request-id", "a b")
                .body(())
                .unwrap(),
        );
        let made = refused
            .headers()
            .get_all("x-request-id")
            .iter()
            .collect::<Vec<_>>();
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].len(), 32);
        // Two ids, each valid alone, and none at all: one made, only it.
        for sent in [&["one", "two"][..], &[]] {
            let mut r = Request::builder();
            for v in sent {
                r = r.header("x-request-id", *v);
            }
            let r = ids.ensure(r.body(()).unwrap());
            let ids: Vec<_> = r.headers().get_all("x-request-id").iter().collect();
            assert_eq!(ids.len(), 1, "{sent:?}");
            assert_eq!(ids[0].len(), 32, "{sent:?}");
        }
    }
}
