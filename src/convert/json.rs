//! JSON output primitives: string escaping and the scalar forms of XML values.
//!
//! Everything writes into a caller's `Vec<u8>`; nothing allocates. Input bytes
//! are valid UTF-8 (the converter checks the whole document first), so copying
//! runs of them verbatim keeps the output valid UTF-8.

/// For each byte: 0 = copy as is, otherwise the escape letter (`u` = `\u00XX`).
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0A] = b'n';
    t[0x0C] = b'f';
    t[0x0D] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Appends `bytes` escaped for the inside of a JSON string (no quotes).
/// Control characters, `"` and `\` are escaped; everything else, including
/// non-ASCII text, is copied as it is. Eight bytes at a time are checked at
/// once (most of EM's text needs no escaping).
#[inline]
pub(crate) fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut start = 0;
    let mut i = 0;
    let n = bytes.len();
    while i < n {
        while i + 8 <= n {
            let Ok(chunk) = <[u8; 8]>::try_from(&bytes[i..i + 8]) else {
                break;
            };
            if needs_escape(u64::from_le_bytes(chunk)) {
                break;
            }
            i += 8;
        }
        let Some(&b) = bytes.get(i) else {
            break;
        };
        let e = ESCAPE[usize::from(b)];
        if e != 0 {
            out.extend_from_slice(&bytes[start..i]);
            if e == b'u' {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xF)],
                ]);
            } else {
                out.extend_from_slice(&[b'\\', e]);
            }
            start = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether any of the eight bytes of `x` is below 0x20, `"` or `\`
/// (the classic "has zero byte" / "has byte less than" word tricks; exact
/// for the question "any?").
#[inline]
fn needs_escape(x: u64) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let control = x.wrapping_sub(LO * 0x20) & !x & HI;
    let q = x ^ (LO * u64::from(b'"'));
    let quote = q.wrapping_sub(LO) & !q & HI;
    let s = x ^ (LO * u64::from(b'\\'));
    let backslash = s.wrapping_sub(LO) & !s & HI;
    (control | quote | backslash) != 0
}

/// Appends `"bytes"`.
#[cfg(test)]
pub(crate) fn string_into(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    escape_into(out, bytes);
    out.push(b'"');
}

/// XML whitespace (what `xs:int` and friends collapse around a value).
#[inline]
pub(crate) fn is_xml_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// `bytes` without leading and trailing XML whitespace.
pub(crate) fn trim_xml_ws(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_xml_ws(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| !is_xml_ws(b))
        .map_or(start, |p| p + 1);
    &bytes[start..end]
}

/// Writes the XML number `text` (already trimmed) as a JSON number, returning
/// `false` (and writing nothing) when it is not one.
///
/// The XML forms of `xs:int`, `xs:long`, `xs:decimal` and `xs:double` are a
/// superset of JSON's: a leading `+`, leading zeros, `.5` and `5.` are valid
/// XML but not JSON, so they are normalised (`+007.50` → `7.50`, `.5` → `0.5`,
/// `5.` → `5`). Digits are never reparsed, so 64-bit values (and `xs:unsignedLong`
/// LSNs) keep every digit. `INF`, `NaN` and anything else return `false`.
pub(crate) fn number_into(out: &mut Vec<u8>, text: &[u8]) -> bool {
    let mut i = 0;
    let negative = match text.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    let int_start = i;
    while i < text.len() && text[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = &text[int_start..i];
    let mut frac_digits: &[u8] = &[];
    if i < text.len() && text[i] == b'.' {
        i += 1;
        let s = i;
        while i < text.len() && text[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = &text[s..i];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return false;
    }
    let mut exp: Option<(&[u8], &[u8])> = None;
    if i < text.len() && (text[i] == b'e' || text[i] == b'E') {
        i += 1;
        let sign_start = i;
        if i < text.len() && (text[i] == b'+' || text[i] == b'-') {
            i += 1;
        }
        let sign = &text[sign_start..i];
        let s = i;
        while i < text.len() && text[i].is_ascii_digit() {
            i += 1;
        }
        if s == i {
            return false;
        }
        exp = Some((sign, &text[s..i]));
    }
    if i != text.len() {
        return false;
    }
    if negative {
        out.push(b'-');
    }
    let first_nonzero = int_digits.iter().position(|&d| d != b'0');
    match first_nonzero {
        Some(p) => out.extend_from_slice(&int_digits[p..]),
        None => out.push(b'0'),
    }
    if !frac_digits.is_empty() {
        out.push(b'.');
        out.extend_from_slice(frac_digits);
    }
    if let Some((sign, digits)) = exp {
        out.push(b'e');
        if sign == b"-" {
            out.push(b'-');
        }
        out.extend_from_slice(digits);
    }
    true
}

/// The value of an `xs:boolean` (trimmed): `true`/`1` and `false`/`0`.
pub(crate) fn parse_bool(text: &[u8]) -> Option<bool> {
    match text {
        b"true" | b"1" => Some(true),
        b"false" | b"0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> Option<String> {
        let mut out = Vec::new();
        number_into(&mut out, s.as_bytes()).then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn numbers_normalise_to_json() {
        assert_eq!(num("0").as_deref(), Some("0"));
        assert_eq!(num("-1").as_deref(), Some("-1"));
        assert_eq!(num("+5").as_deref(), Some("5"));
        assert_eq!(num("007").as_deref(), Some("7"));
        assert_eq!(num("000").as_deref(), Some("0"));
        assert_eq!(num(".5").as_deref(), Some("0.5"));
        assert_eq!(num("5.").as_deref(), Some("5"));
        assert_eq!(num("-0.25").as_deref(), Some("-0.25"));
        assert_eq!(num("1E+10").as_deref(), Some("1e10"));
        assert_eq!(num("1e-3").as_deref(), Some("1e-3"));
        assert_eq!(
            num("18446744073709551615").as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(num("107355303936").as_deref(), Some("107355303936"));
        for bad in [
            "", "-", "+", ".", "1e", "1e+", "INF", "NaN", "1.2.3", "0x10", " 1", "1 ", "--1",
        ] {
            assert_eq!(num(bad), None, "{bad:?}");
        }
        // Everything accepted parses as JSON.
        for ok in ["+007.50", ".5", "5.", "-0", "12e0003"] {
            let s = num(ok).unwrap();
            assert!(serde_json::from_str::<serde_json::Value>(&s).is_ok(), "{s}");
        }
    }

    #[test]
    fn strings_escape_controls_quotes_backslashes() {
        let mut out = Vec::new();
        string_into(
            &mut out,
            "a\"b\\c\n\t\r\u{8}\u{c}\u{1}\u{1f}é€😀\u{7f}".as_bytes(),
        );
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001fé€😀\u{7f}\"");
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\n\t\r\u{8}\u{c}\u{1}\u{1f}é€😀\u{7f}");
    }

    #[test]
    fn escaping_agrees_with_serde_json_everywhere() {
        // Every byte value (as a char) at every position of a 1–20 byte run.
        for c in (0u8..=0x7F).chain([0xC3]) {
            for len in 1..20 {
                for pos in 0..len {
                    let mut s = vec![b'a'; len];
                    s[pos] = c;
                    if c == 0xC3 {
                        s.insert(pos + 1, 0xA9); // é
                    }
                    let text = std::str::from_utf8(&s).unwrap();
                    let mut out = Vec::new();
                    string_into(&mut out, &s);
                    assert_eq!(out, serde_json::to_vec(text).unwrap(), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn booleans_and_trimming() {
        assert_eq!(parse_bool(b"true"), Some(true));
        assert_eq!(parse_bool(b"1"), Some(true));
        assert_eq!(parse_bool(b"false"), Some(false));
        assert_eq!(parse_bool(b"0"), Some(false));
        assert_eq!(parse_bool(b"True"), None);
        assert_eq!(trim_xml_ws(b" \n 12\t\r"), b"12");
        assert_eq!(trim_xml_ws(b"   "), b"");
        assert_eq!(trim_xml_ws(b""), b"");
    }
}
