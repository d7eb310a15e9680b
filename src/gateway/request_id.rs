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

use http::HeaderValue;

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

/// Whether a client's request id may be kept (echoed, logged, sent to EM).
pub fn is_valid(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A request's id as text. Every id a request carries is plain ASCII (one
/// made here, or a client's that [`is_valid`] kept), so this is a UTF-8
/// check that cannot fail, a word at a time; `HeaderValue::to_str` looks at
/// each byte (about 100 instructions more for a 32-digit id, on every
/// access line).
pub fn as_text(id: &HeaderValue) -> &str {
    std::str::from_utf8(id.as_bytes()).unwrap_or("-")
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

    /// The request's id: the client's if it sent exactly one and it is
    /// valid ([`is_valid`]), else a new one. `given` is every value of the
    /// client's `X-Request-Id` (the router's one pass over the headers
    /// found them).
    ///
    /// The request's map is left as the client sent it: an insert into it
    /// cost every request a hash and a probe (about 290 instructions, see
    /// BENCHMARKS.md), and nothing reads the id from there. The id goes
    /// from here into the request's context, and from there onto the
    /// answer, the log, and EM's request (the client's own header is never
    /// forwarded: `proxy::to_em` takes the id it is given).
    pub fn kept_or_new<'a>(&self, mut given: impl Iterator<Item = &'a HeaderValue>) -> HeaderValue {
        match (given.next(), given.next()) {
            (Some(v), None) if is_valid(v.as_bytes()) => v.clone(),
            // None, two or more (whichever is valid), or not valid.
            _ => self.next(),
        }
    }
}

/// `v` in 16 lowercase hex digits, most significant first, into `out`:
/// eight nibbles at a time spread one to a byte and made digits in one add
/// (a digit at a time cost every request without an id about 50
/// instructions more).
fn hex(v: u64, out: &mut [u8]) {
    for (half, digits) in [v >> 32, v & 0xffff_ffff]
        .into_iter()
        .zip(out.chunks_exact_mut(8))
    {
        // Nibble k of `half` (k = 0 the lowest) into byte k.
        let mut x = half;
        x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
        x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
        x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
        // 1 in the bytes holding 10-15; no byte carries into the next.
        let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        // '0' + n, and 'a' - '0' - 10 = 39 more for a letter.
        let text = x + 0x3030_3030_3030_3030 + letters * 39;
        digits.copy_from_slice(&text.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_written_in_sixteen_lowercase_hex_digits() {
        for v in [
            0,
            9,
            10,
            15,
            16,
            0x0123_4567_89ab_cdef,
            0xfedc_ba98_7654_3210,
            0x9a9a_0f0f_a9a9_f0f0,
            u64::MAX,
        ] {
            let mut out = [0u8; 16];
            hex(v, &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{v:016x}"));
        }
    }

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

    /// The id chosen for a request that sent `sent` as its `X-Request-Id`s.
    fn chosen(ids: &ProcessUniqueId, sent: &[&str]) -> String {
        let values: Vec<HeaderValue> = sent
            .iter()
            .map(|v| HeaderValue::from_str(v).unwrap())
            .collect();
        as_text(&ids.kept_or_new(values.iter())).to_string()
    }

    #[test]
    fn only_well_formed_client_ids_are_kept() {
        let ids = ProcessUniqueId::new();
        // The client's id if it was kept, `None` if a new one was made.
        let with = |v: &[&str]| {
            let id = chosen(&ids, v);
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
        assert_eq!(chosen(&ids, &["mine"]), "mine");
        // Refused, two ids each valid alone, and none at all: one made.
        for sent in [&["a b"][..], &["one", "two"], &[]] {
            let made = chosen(&ids, sent);
            assert_eq!(made.len(), 32, "{sent:?}");
            assert_eq!(made[..16], a[..16], "{sent:?}");
        }
    }
}
