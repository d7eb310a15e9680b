//! Fuzzes every entry point of the converter with arbitrary bytes.
//!
//! Invariants: nothing panics; a successful `to_json` appends one valid JSON
//! document; a failed one leaves the buffer as it was; what `rewrite_xml`
//! produces is still well-formed.
//!
//! Run (from the crate root, nightly): `cargo +nightly fuzz run convert
//! fuzz/corpus/convert tests/data/em/samples -- -dict=fuzz/xml.dict`
#![no_main]

use emgate::convert::{rewrite_xml, root_name, to_json, Case, Rewrite};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rw = Rewrite {
        from: "https://localhost:9398",
        to: "http://gw&x:1",
    };
    for case in [Case::Pascal, Case::Camel] {
        let mut out = b"[".to_vec();
        match to_json(data, case, Some(&rw), &mut out) {
            Ok(()) => {
                if let Err(e) = serde_json::from_slice::<serde_json::Value>(&out[1..]) {
                    panic!("invalid JSON: {e}");
                }
            }
            Err(_) => assert_eq!(out, b"["),
        }
    }
    let mut xml = Vec::new();
    match rewrite_xml(data, &rw, &mut xml) {
        Ok(()) => {
            let mut again = Vec::new();
            assert!(
                rewrite_xml(&xml, &rw, &mut again).is_ok(),
                "rewrite broke the XML"
            );
        }
        Err(_) => assert!(xml.is_empty()),
    }
    let _ = root_name(data);
});
