//! `X-Request-Id` values for requests that come without one.
//!
//! A UUID v4 per request costs a `getrandom` system call; an id only has to
//! be unique, so it is a random per-process prefix and a counter (32 hex
//! digits, like a UUID without hyphens).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

/// Makes request ids: process prefix + counter.
#[derive(Clone)]
pub struct ProcessUniqueId {
    /// Random, drawn once per process.
    prefix: u64,
    /// Shared by every connection.
    counter: Arc<AtomicU64>,
}

impl ProcessUniqueId {
    /// A generator with a fresh random prefix.
    pub fn new() -> ProcessUniqueId {
        ProcessUniqueId {
            prefix: fastrand::u64(..),
            counter: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Default for ProcessUniqueId {
    fn default() -> Self {
        ProcessUniqueId::new()
    }
}

impl MakeRequestId for ProcessUniqueId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        hex(self.prefix, &mut buf[..16]);
        hex(n, &mut buf[16..]);
        HeaderValue::from_bytes(&buf).ok().map(RequestId::new)
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
    fn ids_are_32_hex_digits_and_distinct() {
        let mut make = ProcessUniqueId::new();
        let req = Request::new(());
        let a = make.make_request_id(&req).unwrap();
        let b = make.make_request_id(&req).unwrap();
        let (a, b) = (
            a.header_value().to_str().unwrap(),
            b.header_value().to_str().unwrap(),
        );
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(a[..16], b[..16]);
    }
}
