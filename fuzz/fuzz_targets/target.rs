//! Fuzzes the request-target parser the gateway routes on.
//!
//! Invariants: nothing panics; what `Target::parse` accepts decodes to no
//! `.`/`..` segment and no segment holding `/`, `\` or a control character;
//! its canonical encoding is accepted again and parses to the same target,
//! whose canonical encoding is the same text (a fixed point).
//!
//! Run (from the crate root, nightly): `cargo +nightly fuzz run target
//! fuzz/corpus/target -- -dict=fuzz/target.dict`
#![no_main]

use emgate::gateway::target::Target;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    let Ok(target) = Target::parse(path, query) else {
        return;
    };
    for s in target.segments() {
        assert!(s != "." && s != "..", "dot segment accepted: {text:?}");
        assert!(
            !s.contains('/') && !s.contains('\\'),
            "separator in a segment: {text:?}"
        );
        assert!(
            !s.chars().any(|c| c.is_control()),
            "control character in a segment: {text:?}"
        );
    }
    for (name, value) in target.query() {
        assert!(!name.chars().any(|c| c.is_control()), "{text:?}");
        assert!(
            !value.as_deref().unwrap_or("").chars().any(|c| c.is_control()),
            "{text:?}"
        );
    }
    let canonical = target.canonical();
    let (p, q) = match canonical.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (canonical.as_str(), None),
    };
    let again = Target::parse(p, q)
        .unwrap_or_else(|e| panic!("canonical form refused ({e}): {canonical:?} from {text:?}"));
    assert_eq!(again, target, "{canonical:?} parses differently from {text:?}");
    assert_eq!(again.canonical(), canonical, "not a fixed point: {text:?}");
});
