//! What a client asks EM for, parsed once at the edge (see README, "Client access"): the
//! request target becomes decoded path segments and decoded query pairs,
//! routing looks only at those, and EM is sent a canonical re-encoding of
//! them, never the client's bytes.
//!
//! Why: EM runs on HTTP.sys, which decodes `%HH` and IIS-style `%uNNNN`
//! escapes and ignores doubled slashes. If the gateway routed on the raw
//! target and forwarded it as sent, what the gateway checked (the virtual
//! `logonSessions`, the write guard, UUID checks) could differ from what EM
//! resolves. With one decode here and a canonical encoding to EM, the path
//! the gateway routes is the path EM serves.
//!
//! Refused (400): a `%` not followed by two hex digits (so `%uNNNN` too), an
//! encoded `%`, `.`, `/` or `\`, raw or encoded control characters, a
//! backslash, `.`/`..` and empty segments (a single trailing `/` is kept),
//! bytes that do not decode to UTF-8, and targets longer than
//! [`MAX_TARGET_LEN`]. Invariant: what [`Target::parse`] accepts has no
//! separator, dot segment or control character in any decoded segment, and
//! its canonical encoding parses back to the same target.

/// Longest target (path and query, as sent) the gateway accepts.
pub const MAX_TARGET_LEN: usize = 2048;

/// Segment ends a [`Target`] keeps without allocating.
const INLINE_SEGMENTS: usize = 8;

/// Why a target was refused; the message is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rejected request target: {0}")]
pub struct BadTarget(&'static str);

/// A parsed `/api` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The decoded segments after `/api`, joined by `/` (`/api/jobs/x` →
    /// `jobs/x`): one allocation for a whole path, and, when nothing in it
    /// needs escaping, its own canonical form (a decoded segment never
    /// holds `/`: an encoded one is refused).
    path: String,
    /// How many segments `path` holds (0 for the entry point).
    count: usize,
    /// Where each segment ends in `path`: the first [`INLINE_SEGMENTS`]
    /// here, the rest (no EM route has them) in `more`, so a usual target
    /// costs one allocation. A target is at most [`MAX_TARGET_LEN`] long,
    /// so a `u16` holds any offset.
    ends: [u16; INLINE_SEGMENTS],
    more: Vec<u16>,
    /// Whether the path ended in `/` (`/api/` vs `/api`).
    trailing_slash: bool,
    /// Decoded `name=value` pairs, in the client's order (a name without
    /// `=` has `None`).
    query: Vec<(String, Option<String>)>,
    /// Whether every decoded segment and query piece is made only of bytes
    /// kept as they are (most targets): each is then its own canonical
    /// encoding. Decided by the decoded text, so a target and its
    /// canonical form agree.
    plain: bool,
}

impl Target {
    /// Parses a path and its query; only `/api` and `/api/...` are targets.
    pub fn parse(path: &str, query: Option<&str>) -> Result<Target, BadTarget> {
        if path.len() + query.map_or(0, |q| q.len() + 1) > MAX_TARGET_LEN {
            return Err(BadTarget("too long"));
        }
        // `/api` in any case, as EM takes it.
        let api = path
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("/api"))
            .map(|_| &path[4..]);
        let (rest, trailing_slash) = match api {
            Some("") => ("", false),
            Some("/") => ("", true),
            Some(r) if r.starts_with('/') => match r[1..].strip_suffix('/') {
                Some(inner) => (inner, true),
                None => (&r[1..], false),
            },
            _ => return Err(BadTarget("only /api/ paths are served")),
        };
        // Decoding never lengthens a piece: one allocation, made to fit.
        let mut decoded = String::with_capacity(rest.len());
        let mut count = 0;
        let (mut ends, mut more) = ([0u16; INLINE_SEGMENTS], Vec::new());
        let mut plain = true;
        // One pass a segment in the usual case: the first byte that is not
        // kept as it is either ends the segment ('/', or the end) and the
        // segment is its own decoding, or the segment is decoded.
        let b = rest.as_bytes();
        let mut from = 0;
        // How far `rest` is copied into `decoded`.
        let mut copied = 0;
        while !rest.is_empty() && from <= rest.len() {
            let stop = from + plain_prefix(&b[from..], Part::Path);
            let (to, kept) = match b.get(stop) {
                None | Some(b'/') => (stop, true),
                Some(_) => (
                    b[stop..]
                        .iter()
                        .position(|&c| c == b'/')
                        .map_or(b.len(), |at| stop + at),
                    false,
                ),
            };
            // '/' is ASCII: both ends are character boundaries.
            let raw = rest.get(from..to).unwrap_or_default();
            if raw.is_empty() {
                return Err(BadTarget("empty path segment"));
            }
            if raw == "." || raw == ".." {
                return Err(BadTarget("'.' or '..' segment"));
            }
            // Kept segments (and the `/`s between) are copied later, in
            // runs: a dashboard's whole path in one copy.
            if !kept {
                decoded.push_str(rest.get(copied..from).unwrap_or_default());
                let segment = decode(raw, Part::Path)?;
                plain &= is_plain(&segment, Part::Path);
                decoded.push_str(&segment);
                copied = to;
            }
            // Where it ends once the run not copied yet is. At most
            // MAX_TARGET_LEN: checked on entry.
            let end = decoded.len() + (to - copied);
            let end = u16::try_from(end).map_err(|_| BadTarget("too long"))?;
            match ends.get_mut(count) {
                Some(slot) => *slot = end,
                None => more.push(end),
            }
            count += 1;
            // Past the end once the last segment is in.
            from = to + 1;
        }
        decoded.push_str(rest.get(copied..).unwrap_or_default());
        let mut pairs = Vec::new();
        // No query, no splitting (most reads have none).
        let pieces = query.filter(|q| !q.is_empty()).map(|q| q.split('&'));
        for raw in pieces.into_iter().flatten().filter(|p| !p.is_empty()) {
            let (name, value) = match raw.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (raw, None),
            };
            let name = decode(name, Part::Query)?;
            let value = value.map(|v| decode(v, Part::Query)).transpose()?;
            plain &= is_plain(&name, Part::Query)
                && value.as_ref().is_none_or(|v| is_plain(v, Part::Query));
            pairs.push((name, value));
        }
        let target = Target {
            path: decoded,
            count,
            ends,
            more,
            trailing_slash,
            query: pairs,
            plain,
        };
        // What EM is sent must fit the bound too (an escaped character is
        // three bytes), so the canonical form is always accepted again.
        if target.canonical_len() > MAX_TARGET_LEN {
            return Err(BadTarget("too long"));
        }
        Ok(target)
    }

    /// The length of [`Target::canonical`], without building it.
    fn canonical_len(&self) -> usize {
        if self.plain {
            // Each segment after a `/`: the joined path after one.
            let path = if self.count == 0 {
                0
            } else {
                1 + self.path.len()
            };
            let query: usize = (self.query.iter())
                .map(|(n, v)| 1 + n.len() + v.as_ref().map_or(0, |v| 1 + v.len()))
                .sum();
            return "/api".len() + path + usize::from(self.trailing_slash) + query;
        }
        let path: usize = "/api".len()
            + self
                .segments()
                .map(|s| 1 + encoded_len(s, Part::Path))
                .sum::<usize>()
            + usize::from(self.trailing_slash);
        let query: usize = self
            .query
            .iter()
            .map(|(n, v)| {
                1 + encoded_len(n, Part::Query)
                    + v.as_ref().map_or(0, |v| 1 + encoded_len(v, Part::Query))
            })
            .sum();
        path + query
    }

    /// The decoded segments after `/api`, in order.
    pub fn segments(&self) -> impl ExactSizeIterator<Item = &str> + Clone + '_ {
        (0..self.count).map(|i| self.segment(i).unwrap_or_default())
    }

    /// How many segments follow `/api`.
    pub fn segment_count(&self) -> usize {
        self.count
    }

    /// Decoded segment `i` (0 is the one after `/api`).
    pub fn segment(&self, i: usize) -> Option<&str> {
        let end = |i: usize| match self.ends.get(i) {
            Some(&e) => Some(usize::from(e)),
            None => self.more.get(i - INLINE_SEGMENTS).map(|&e| usize::from(e)),
        };
        if i >= self.count {
            return None;
        }
        // After the `/` that ends the one before.
        let start = match i {
            0 => 0,
            _ => end(i - 1)? + 1,
        };
        self.path.get(start..end(i)?)
    }

    /// Whether segment `i` is `literal`, ignoring ASCII case (EM matches its
    /// URI templates that way).
    pub fn is(&self, i: usize, literal: &str) -> bool {
        self.segment(i)
            .is_some_and(|s| s.eq_ignore_ascii_case(literal))
    }

    /// Whether this is EM's entry point, `/api` or `/api/`.
    pub fn is_entry_point(&self) -> bool {
        self.count == 0
    }

    /// The decoded query pairs, in the client's order.
    pub fn query(&self) -> &[(String, Option<String>)] {
        &self.query
    }

    /// The path, canonically encoded: `/api/...` with every segment
    /// percent-encoded the one way (unreserved characters and `!$&'()*,;=:@`
    /// as they are, everything else `%HH` in upper case).
    pub fn canonical_path(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push_str("/api");
        if self.plain && self.count > 0 {
            out.push('/');
            out.push_str(&self.path);
        } else {
            for s in self.segments() {
                out.push('/');
                encode(s, Part::Path, &mut out);
            }
        }
        if self.trailing_slash {
            out.push('/');
        }
        out
    }

    /// The query, canonically encoded, in the client's order; `None` if empty.
    pub fn canonical_query(&self) -> Option<String> {
        canonical_pairs(self.query.iter().map(|(n, v)| (n.as_str(), v.as_deref())))
    }

    /// Path and query as EM is sent them.
    pub fn canonical(&self) -> String {
        let mut out = self.canonical_path();
        if let Some(q) = self.canonical_query() {
            out.push('?');
            out.push_str(&q);
        }
        out
    }

    /// The path for log lines and error messages (canonical, bounded).
    pub fn shown(&self) -> String {
        self.canonical_path().chars().take(200).collect()
    }
}

/// Encodes query pairs canonically; `None` when there are none.
pub fn canonical_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Option<String> {
    let mut out = String::new();
    for (name, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        encode(name, Part::Query, &mut out);
        if let Some(v) = value {
            out.push('=');
            encode(v, Part::Query, &mut out);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Which part of the target a piece comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Path,
    Query,
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes each `%HH` exactly once (and, in a query, `+` as a space, as EM's
/// query parsing does); refuses what [`Target`] lists.
fn decode(raw: &str, part: Part) -> Result<String, BadTarget> {
    let b = raw.as_bytes();
    // Most pieces (every one of a dashboard's restore point paths) hold
    // only bytes that decode to themselves: copied whole, not byte by byte.
    let plain = plain_prefix(b, part);
    if plain == b.len() {
        return Ok(raw.to_owned());
    }
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&b[..plain]);
    let mut i = plain;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(BadTarget("'%' not followed by two hex digits"));
                };
                let d = hi * 16 + lo;
                if part == Part::Path && matches!(d, b'%' | b'.' | b'/' | b'\\') {
                    return Err(BadTarget("encoded '%', '.', '/' or '\\' in the path"));
                }
                if part == Part::Query && d == b'%' {
                    return Err(BadTarget("encoded '%' in the query"));
                }
                if d.is_ascii_control() {
                    return Err(BadTarget("encoded control character"));
                }
                out.push(d);
                i += 3;
            }
            b'\\' => return Err(BadTarget("backslash")),
            c if c.is_ascii_control() || c == b' ' => {
                return Err(BadTarget("control character or space"))
            }
            b'+' if part == Part::Query => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    let text =
        String::from_utf8(out).map_err(|_| BadTarget("escapes that do not decode to UTF-8"))?;
    // C1 controls (U+0080..U+009F) too, not only ASCII's.
    if text.chars().any(char::is_control) {
        return Err(BadTarget("control character"));
    }
    Ok(text)
}

/// Characters kept as they are: RFC 3986 unreserved, and in a path segment
/// the sub-delimiters and `:`/`@` a segment may hold (`+` is always encoded,
/// so nobody has to guess whether it means a space). None of them is
/// decoded or refused either: a piece made only of these decodes and
/// encodes to itself.
const fn keeps(c: u8, part: Part) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, b'-' | b'.' | b'_' | b'~')
        || (matches!(part, Part::Path)
            && matches!(
                c,
                b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b',' | b';' | b'=' | b':' | b'@'
            ))
        || (matches!(part, Part::Query)
            && matches!(c, b'!' | b'\'' | b'(' | b')' | b'*' | b':' | b'@'))
}

/// [`keeps`] for every byte, one table per part: one load a byte.
const fn kept(part: Part) -> [bool; 256] {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = keeps(c as u8, part);
        c += 1;
    }
    table
}

static KEPT_IN_PATH: [bool; 256] = kept(Part::Path);
static KEPT_IN_QUERY: [bool; 256] = kept(Part::Query);

fn keep(c: u8, part: Part) -> bool {
    match part {
        Part::Path => KEPT_IN_PATH[c as usize],
        Part::Query => KEPT_IN_QUERY[c as usize],
    }
}

/// How many leading bytes of `b` are kept as they are.
fn plain_prefix(b: &[u8], part: Part) -> usize {
    let table = match part {
        Part::Path => &KEPT_IN_PATH,
        Part::Query => &KEPT_IN_QUERY,
    };
    // Eight bytes a step with no branch inside (a dashboard's targets are
    // kept bytes end to end), then byte by byte from the step that failed.
    let mut whole = 0;
    for chunk in b.chunks_exact(8) {
        if !chunk
            .iter()
            .fold(true, |kept, &c| kept & table[usize::from(c)])
        {
            break;
        }
        whole += 8;
    }
    let rest = b.get(whole..).unwrap_or_default();
    whole
        + rest
            .iter()
            .position(|&c| !table[usize::from(c)])
            .unwrap_or(rest.len())
}

fn encoded_len(decoded: &str, part: Part) -> usize {
    let b = decoded.as_bytes();
    b.len() + 2 * b.iter().filter(|&&c| !keep(c, part)).count()
}

fn encode(decoded: &str, part: Part, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let b = decoded.as_bytes();
    let plain = plain_prefix(b, part);
    // Kept bytes are ASCII, so `plain` is a character boundary.
    out.push_str(&decoded[..plain]);
    for &c in &b[plain..] {
        if keep(c, part) {
            out.push(c as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(c >> 4)] as char);
            out.push(HEX[usize::from(c & 15)] as char);
        }
    }
}

/// Whether `piece` holds only bytes kept as they are.
fn is_plain(piece: &str, part: Part) -> bool {
    plain_prefix(piece.as_bytes(), part) == piece.len()
}

impl Target {
    /// Appends the path after `/api` to `out` (each segment after a `/`),
    /// canonically encoded, segment `i` in ASCII lower case if `lower(i)`:
    /// [`Target::push_segment`] for each, and in one copy (lowered in one
    /// pass) when nothing needs escaping and every segment or none is
    /// lowered, as for every target of a rule without wildcards.
    pub fn push_path(&self, lower: impl Fn(usize) -> bool, out: &mut String) {
        if self.count == 0 {
            return;
        }
        let all = (0..self.count).all(&lower);
        if self.plain && (all || !(0..self.count).any(&lower)) {
            out.push('/');
            let from = out.len();
            out.push_str(&self.path);
            if all {
                out[from..].make_ascii_lowercase();
            }
            return;
        }
        for (i, segment) in self.segments().enumerate() {
            out.push('/');
            self.push_segment(segment, lower(i), out);
        }
    }

    /// Appends `decoded`, one of this target's [`Target::segments`],
    /// canonically encoded, to `out`, in ASCII lower case if `lower` (the
    /// decoded text lowered before encoding: escapes keep their upper-case
    /// hex).
    pub fn push_segment(&self, decoded: &str, lower: bool, out: &mut String) {
        match self.plain {
            // Nothing to escape: the text as it is.
            true => {
                let from = out.len();
                out.push_str(decoded);
                if lower {
                    out[from..].make_ascii_lowercase();
                }
            }
            false => push_escaped(out, decoded, lower),
        }
    }
}

/// [`Target::push_segment`] for a target that is not plain: one decoded
/// segment, canonically encoded, appended to `out` (lowered first if
/// `lower`: escapes keep their upper-case hex).
fn push_escaped(out: &mut String, decoded: &str, lower: bool) {
    if !lower {
        encode(decoded, Part::Path, out);
    } else if is_plain(decoded, Part::Path) {
        // Nothing escaped: lowering the encoding lowers the text.
        let from = out.len();
        out.push_str(decoded);
        out[from..].make_ascii_lowercase();
    } else {
        encode(&decoded.to_ascii_lowercase(), Part::Path, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Target, BadTarget> {
        let (p, q) = match t.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (t, None),
        };
        Target::parse(p, q)
    }

    #[test]
    fn api_targets_decode_once_and_re_encode_canonically() {
        for (sent, canonical) in [
            ("/api", "/api"),
            ("/api/", "/api/"),
            (
                "/api/restorePoints/x/vmRestorePoints/",
                "/api/restorePoints/x/vmRestorePoints/",
            ),
            (
                "/api/catalog/vms/web%20server%2301",
                "/api/catalog/vms/web%20server%2301",
            ),
            // An escaped letter is decoded (once), and EM gets the letter.
            ("/api/logon%53essions", "/api/logonSessions"),
            (
                "/api/query?type=Job&filter=name%3D%3D%22a%26b%22",
                "/api/query?type=Job&filter=name%3D%3D%22a%26b%22",
            ),
            ("/api/x?q=a+b&v=latest&flag", "/api/x?q=a%20b&v=latest&flag"),
            ("/api/caf%C3%A9", "/api/caf%C3%A9"),
        ] {
            let t = parse(sent).unwrap_or_else(|e| panic!("{sent}: {e}"));
            assert_eq!(t.canonical(), canonical, "{sent}");
            assert_eq!(
                parse(&t.canonical()).unwrap(),
                t,
                "{sent} does not round-trip"
            );
        }
        let t = parse("/api/logon%53essions/").unwrap();
        assert!(t.is(0, "LOGONSESSIONS"));
    }

    #[test]
    fn a_target_of_more_segments_than_kept_inline_keeps_each() {
        let names: Vec<String> = (0..INLINE_SEGMENTS + 4).map(|i| format!("S{i}")).collect();
        let sent = format!("/api/{}", names.join("/"));
        let t = parse(&sent).unwrap();
        assert_eq!(t.segments().collect::<Vec<_>>(), names);
        assert_eq!(t.segment_count(), names.len());
        assert_eq!(t.segment(names.len()), None);
        assert_eq!(t.canonical(), sent);
        // Decoded pieces on both sides of the inline ones.
        let t = parse("/api/a%20b/2/3/4/5/6/7/8/i%20j/k/").unwrap();
        let segments: Vec<&str> = t.segments().collect();
        assert_eq!(
            segments,
            ["a b", "2", "3", "4", "5", "6", "7", "8", "i j", "k"]
        );
        assert_eq!(t.canonical(), "/api/a%20b/2/3/4/5/6/7/8/i%20j/k/");
        let mut key = String::new();
        t.push_segment(t.segment(8).unwrap(), true, &mut key);
        assert_eq!(key, "i%20j");
    }

    /// The byte-by-byte forms the fast paths stand in for (`decode`,
    /// `encode`, `push_escaped` copy whole runs of kept bytes).
    fn decode_slowly(raw: &str, part: Part) -> Result<String, BadTarget> {
        let mut out = Vec::new();
        let b = raw.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' => {
                    let (Some(hi), Some(lo)) = (
                        b.get(i + 1).copied().and_then(hex),
                        b.get(i + 2).copied().and_then(hex),
                    ) else {
                        return Err(BadTarget("hex"));
                    };
                    let d = hi * 16 + lo;
                    let refused = match part {
                        Part::Path => matches!(d, b'%' | b'.' | b'/' | b'\\'),
                        Part::Query => d == b'%',
                    };
                    if refused || d.is_ascii_control() {
                        return Err(BadTarget("escape"));
                    }
                    out.push(d);
                    i += 3;
                }
                b'\\' => return Err(BadTarget("backslash")),
                c if c.is_ascii_control() || c == b' ' => return Err(BadTarget("control")),
                b'+' if part == Part::Query => {
                    out.push(b' ');
                    i += 1;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        let text = String::from_utf8(out).map_err(|_| BadTarget("utf-8"))?;
        match text.chars().any(char::is_control) {
            true => Err(BadTarget("control")),
            false => Ok(text),
        }
    }

    fn encode_slowly(decoded: &str, part: Part) -> String {
        let mut out = String::new();
        for &c in decoded.as_bytes() {
            match keeps(c, part) {
                true => out.push(c as char),
                false => out.push_str(&format!("%{c:02X}")),
            }
        }
        out
    }

    #[test]
    fn the_fast_paths_decode_and_encode_as_byte_by_byte_would() {
        // Pieces of up to 6 bytes from an alphabet with every kind of byte
        // the parser treats apart, kept ones first so runs of them lead.
        let alphabet: Vec<&str> = vec![
            "a", "Z", "0", "-", ".", "~", "!", "$", "&", "=", ":", "@", "+", "%", "%4", "%41",
            "%2F", "%2e", "%25", "%C3%A9", "%C2%91", "%0a", " ", "\\", "\u{7f}", "é", "/", "?",
            "#", "%zz",
        ];
        let mut rng = fastrand::Rng::with_seed(19);
        for n in 0..20_000 {
            let len = 1 + n % 6;
            let piece: String = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            for part in [Part::Path, Part::Query] {
                // Runs of kept bytes of every length before it: the eight-byte steps.
                let long = format!("{}{piece}", &"kept~run-of_bytes.".repeat(2)[..n % 37]);
                let slowly = long.bytes().position(|c| !keeps(c, part));
                assert_eq!(
                    plain_prefix(long.as_bytes(), part),
                    slowly.unwrap_or(long.len()),
                    "{long:?}"
                );
                let fast = decode(&piece, part);
                let slow = decode_slowly(&piece, part);
                assert_eq!(fast.is_ok(), slow.is_ok(), "{piece:?} {:?}", fast);
                let Ok(text) = fast else { continue };
                assert_eq!(Ok(&text), slow.as_ref(), "{piece:?}");
                let mut encoded = String::new();
                encode(&text, part, &mut encoded);
                assert_eq!(encoded, encode_slowly(&text, part), "{text:?}");
                assert_eq!(encoded_len(&text, part), encoded.len(), "{text:?}");
                if part == Part::Path {
                    // Whole targets: the plain flag's shortcuts.
                    if let Ok(t) = parse(&format!("/api/Kept?a={piece}&{piece}")) {
                        assert_eq!(t.canonical_len(), t.canonical().len(), "{piece:?}");
                    }
                    let sent = format!("/api/Kept/{piece}");
                    let one_segment = !piece.contains(['/', '?']);
                    if let Some(t) = parse(&sent).ok().filter(|_| one_segment) {
                        assert_eq!(t.canonical_len(), t.canonical().len(), "{sent:?}");
                        // The whole path, each way of lowering its two
                        // segments (in one copy, or segment by segment).
                        for mask in 0..4 {
                            let mut key = String::new();
                            t.push_path(|i| mask & (1 << i) != 0, &mut key);
                            let lowered = |s: &str, i: usize| match mask & (1 << i) != 0 {
                                true => encode_slowly(&s.to_ascii_lowercase(), part),
                                false => encode_slowly(s, part),
                            };
                            let expected = format!("/{}/{}", lowered("Kept", 0), lowered(&text, 1));
                            assert_eq!(key, expected, "{sent:?} {mask}");
                        }
                        for lower in [false, true] {
                            let mut key = String::new();
                            t.push_segment(t.segment(1).unwrap(), lower, &mut key);
                            let expected = match lower {
                                true => encode_slowly(&text.to_ascii_lowercase(), part),
                                false => encode_slowly(&text, part),
                            };
                            assert_eq!(key, expected, "{sent:?}");
                        }
                    }
                    for lower in [false, true] {
                        let mut pushed = String::from("/api/");
                        push_escaped(&mut pushed, &text, lower);
                        let expected = match lower {
                            true => encode_slowly(&text.to_ascii_lowercase(), part),
                            false => encode_slowly(&text, part),
                        };
                        assert_eq!(pushed, format!("/api/{expected}"), "{text:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn hostile_targets_are_refused() {
        for bad in [
            "/",
            "/apix",
            "/metrics",
            "/api/../admin",
            "/api/./x",
            "/api/%2e%2e/x",
            "/api/%2E",
            "/api/a%25",
            "/api/a%2541",
            "/api/a%2Fb",
            "/api/a%5cb",
            "/api/a\\b",
            "/api//logonSessions",
            "/api/restorePoints//x",
            "/api/x//",
            "/api/logon%u0053essions",
            "/api/jobs/%u002e%u002e/logonSessions",
            "/api/%zz",
            "/api/%G1",
            "/api/%",
            "/api/%2",
            "/api/%2x",
            "/api/a%00b",
            "/api/a%0d%0ab",
            "/api/a%7f",
            "/api/%ff",
            "/api/x?a=%zz",
            "/api/x?a=%",
            "/api/x?a=%0a",
            "/api/x?a=%25",
            "/api/x?a=\u{1}",
            "/api/que?ey=nss?for=at=\u{91}thty",
            "/api/x%C2%91",
        ] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
        assert!(parse(&format!("/api/{}", "a".repeat(MAX_TARGET_LEN))).is_err());
        // Short as sent, too long once escaped for EM.
        assert!(parse(&format!("/api/{}", "}".repeat(1000))).is_err());
        assert!(parse(&format!("/api/{}", "}".repeat(600))).is_ok());
    }
}
