//! Pass 1: quick-xml events → a flat index of the document.
//!
//! The index holds no strings: each element, text run and attribute is a
//! fixed-size record of byte offsets into the input, pushed into two vectors
//! in document order. Building it checks that the document is well-formed
//! (one root, matching tags, well-formed names, attributes and entity
//! references), so nothing is written before the input is known to be good.
//!
//! Why an index and not a straight event-to-JSON pass: EM's JSON groups
//! repeated sibling elements into one array, and for an element the schema
//! does not know, whether it is an array depends on whether a sibling of the
//! same name follows. With the index, the writer knows an element's subtree
//! end and its siblings before it writes the element's name, at the cost of
//! one 24-byte record per element or text run.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::json::is_xml_ws;
use super::ConvertError;

/// Attributes one element may have (EM's have a handful).
pub(crate) const MAX_ATTRS: usize = 64;
/// Deepest element nesting accepted. EM's documents nest about ten levels;
/// the bound keeps the recursive writer's stack use small whatever the input.
pub(crate) const MAX_DEPTH: usize = 256;

/// What a [`Node`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An element; `off..off+len` is its local name (prefix dropped).
    Elem,
    /// Character data, still XML-escaped.
    Text,
    /// The inside of a CDATA section, taken literally.
    CData,
}

/// Element flag: `xsi:nil="true"`.
pub(crate) const NIL: u8 = 1;
/// Element flag: has at least one child element.
pub(crate) const HAS_ELEM: u8 = 2;
/// Element flag: has character data that is not whitespace only.
pub(crate) const HAS_TEXT: u8 = 4;
/// Text flag: contains `&` (needs entity decoding).
pub(crate) const AMP: u8 = 8;
/// Text flag: whitespace only.
pub(crate) const WS: u8 = 16;

/// One element or text run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Node {
    /// Start of the name (element) or content (text) in the input.
    pub off: u32,
    /// Its length in bytes.
    pub len: u32,
    /// Index of the first node after this one's subtree (text: the next node).
    pub end: u32,
    /// This element's attributes start at `attrs[attr_lo]` and end where the
    /// next node's start (text nodes have none).
    pub attr_lo: u32,
    /// Element, text or CDATA.
    pub kind: Kind,
    /// `NIL`, `HAS_ELEM`, `HAS_TEXT` for elements; `AMP`, `WS` for text.
    pub flags: u8,
}

/// One attribute that is kept (namespace declarations and `xsi:` are not).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attr {
    /// Start of the (qualified) name; `local()` gives the member name.
    pub key_off: u32,
    /// Start of the raw (escaped) value, between the quotes.
    pub val_off: u32,
    /// The value's length.
    pub val_len: u32,
    /// The name's length.
    pub key_len: u16,
    /// The value contains `&`.
    pub amp: bool,
}

/// The indexed document. Node 0 is the root element.
pub(crate) struct Doc<'a> {
    /// The document without its byte-order mark; all offsets point into it.
    pub input: &'a [u8],
    /// Elements and text runs in document order.
    pub nodes: Vec<Node>,
    /// Attributes of all elements, in document order.
    pub attrs: Vec<Attr>,
}

impl<'a> Doc<'a> {
    /// The bytes `off..off+len` of the input (empty if out of range, which
    /// the builder never produces).
    #[inline]
    pub fn span(&self, off: u32, len: u32) -> &'a [u8] {
        let (off, len) = (off as usize, len as usize);
        self.input
            .get(off..off.saturating_add(len))
            .unwrap_or_default()
    }

    /// A node's name (element) or raw content (text).
    #[inline]
    pub fn bytes(&self, i: usize) -> &'a [u8] {
        let n = &self.nodes[i];
        self.span(n.off, n.len)
    }

    /// An element's kept attributes.
    #[inline]
    pub fn attrs_of(&self, i: usize) -> &[Attr] {
        let lo = self.nodes[i].attr_lo as usize;
        let hi = self
            .nodes
            .get(i + 1)
            .map_or(self.attrs.len(), |n| n.attr_lo as usize);
        self.attrs.get(lo..hi).unwrap_or_default()
    }

    /// Whether element `i` has attributes (other than namespace ones).
    #[inline]
    pub fn has_attrs(&self, i: usize) -> bool {
        !self.attrs_of(i).is_empty()
    }
}

fn malformed(msg: impl std::fmt::Display, pos: u64) -> ConvertError {
    ConvertError::Malformed(format!("{msg} (at byte {pos})"))
}

/// Where `part` (a slice handed out by the reader) lies in `input`.
fn offset_in(input: &[u8], part: &[u8]) -> Option<u32> {
    let base = input.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    let off = p.checked_sub(base)?;
    if off.checked_add(part.len())? > input.len() {
        return None;
    }
    u32::try_from(off).ok()
}

/// Checks an XML name the way the converter needs it: not empty, no
/// character that cannot appear in a name (quick-xml itself accepts e.g. `<1a>`
/// or `<a"b>`). Non-ASCII characters are allowed wholesale.
pub(crate) fn valid_name(name: &[u8]) -> bool {
    match name.split_first() {
        Some((&first, rest)) => {
            NAME_BYTE[usize::from(first)] == 2
                && rest.iter().all(|&b| NAME_BYTE[usize::from(b)] != 0)
        }
        None => false,
    }
}

/// For each byte: 2 = may start a name, 1 = may only continue one, 0 = never.
static NAME_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b.is_ascii_alphabetic() || b == b'_' || b == b':' || b >= 0x80 {
            2
        } else if b.is_ascii_digit() || b == b'-' || b == b'.' {
            1
        } else {
            0
        };
        i += 1;
    }
    t
};

/// The local part of a qualified name.
#[inline]
pub(crate) fn local(qname: &[u8]) -> &[u8] {
    // Names are short: a plain loop beats a memrchr call.
    match qname.iter().rposition(|&b| b == b':') {
        Some(p) => &qname[p + 1..],
        None => qname,
    }
}

/// Checks an XML-escaped run: every `&` starts a predefined entity or a
/// character reference to a character XML allows.
pub(crate) fn check_escapes(raw: &[u8]) -> Result<(), String> {
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'&', &raw[i..]) {
        let at = i + p;
        let (_, used) = entity_at(&raw[at..])?;
        i = at + used;
    }
    Ok(())
}

/// Appends the unescaped form of `raw` to `out`.
pub(crate) fn decode_into(raw: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'&', &raw[i..]) {
        let at = i + p;
        out.extend_from_slice(&raw[i..at]);
        let (c, used) = entity_at(&raw[at..])?;
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        i = at + used;
    }
    out.extend_from_slice(&raw[i..]);
    Ok(())
}

/// Parses the reference at the start of `s` (which starts with `&`): the
/// character and the bytes used.
fn entity_at(s: &[u8]) -> Result<(char, usize), String> {
    let end = memchr::memchr(b';', s)
        .filter(|&e| e <= 12)
        .ok_or_else(|| "unterminated entity reference".to_string())?;
    let body = &s[1..end];
    let c = match body {
        b"lt" => '<',
        b"gt" => '>',
        b"amp" => '&',
        b"apos" => '\'',
        b"quot" => '"',
        [b'#', b'x', hex @ ..] => char_ref(hex, 16)?,
        [b'#', dec @ ..] => char_ref(dec, 10)?,
        _ => {
            return Err(format!(
                "undefined entity &{};",
                String::from_utf8_lossy(body)
            ))
        }
    };
    Ok((c, end + 1))
}

fn char_ref(digits: &[u8], radix: u32) -> Result<char, String> {
    let bad = || {
        format!(
            "bad character reference {}",
            String::from_utf8_lossy(digits)
        )
    };
    if digits.is_empty() {
        return Err(bad());
    }
    let mut v: u32 = 0;
    for &d in digits {
        let dv = char::from(d).to_digit(radix).ok_or_else(bad)?;
        v = v
            .checked_mul(radix)
            .and_then(|v| v.checked_add(dv))
            .ok_or_else(bad)?;
    }
    let allowed =
        matches!(v, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF);
    match char::from_u32(v) {
        Some(c) if allowed => Ok(c),
        _ => Err(bad()),
    }
}

/// Builds the index of `text` (valid UTF-8, byte-order mark already removed).
pub(crate) fn build(text: &str) -> Result<Doc<'_>, ConvertError> {
    let input = text.as_bytes();
    if u32::try_from(input.len()).is_err() {
        return Err(ConvertError::TooLarge);
    }
    let mut doc = Doc {
        input,
        nodes: Vec::with_capacity(input.len() / 48 + 4),
        attrs: Vec::with_capacity(input.len() / 64 + 4),
    };
    let mut reader = Reader::from_str(text);
    // End tags are matched against `stack` below, which saves quick-xml
    // copying every open name into a buffer of its own.
    reader.config_mut().check_end_names = false;
    // Open elements: (node, start and length of the qualified name).
    let mut stack: Vec<(u32, u32, u32)> = Vec::with_capacity(32);
    let mut root_done = false;
    let mut first_event = true;
    loop {
        let pos = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| malformed(e, reader.error_position()))?;
        let was_first = std::mem::replace(&mut first_event, false);
        match event {
            Event::Start(e) => {
                let (qoff, qlen) = start_element(&mut doc, &e, &stack, root_done, pos)?;
                if stack.len() >= MAX_DEPTH {
                    return Err(ConvertError::TooDeep(MAX_DEPTH));
                }
                stack.push(((doc.nodes.len() - 1) as u32, qoff, qlen));
            }
            Event::Empty(e) => {
                start_element(&mut doc, &e, &stack, root_done, pos)?;
                let i = doc.nodes.len() - 1;
                doc.nodes[i].end = doc.nodes.len() as u32;
                if stack.is_empty() {
                    root_done = true;
                }
            }
            Event::End(e) => {
                let Some((i, qoff, qlen)) = stack.pop() else {
                    return Err(malformed("close tag without open tag", pos));
                };
                if e.name().as_ref() != doc.span(qoff, qlen) {
                    return Err(malformed(
                        format!(
                            "expected </{}>, found </{}>",
                            String::from_utf8_lossy(doc.span(qoff, qlen)),
                            String::from_utf8_lossy(e.name().as_ref())
                        ),
                        pos,
                    ));
                }
                let end = doc.nodes.len() as u32;
                doc.nodes[i as usize].end = end;
                if stack.is_empty() {
                    root_done = true;
                }
            }
            Event::Text(t) => {
                let raw: &[u8] = &t;
                let ws = raw.iter().all(|&b| is_xml_ws(b));
                let Some(&(parent, _, _)) = stack.last() else {
                    if ws {
                        continue;
                    }
                    if doc.nodes.is_empty() {
                        return Err(ConvertError::UnexpectedRoot(
                            "text where the root element should be".to_string(),
                        ));
                    }
                    return Err(malformed("text after the root element", pos));
                };
                let parent = parent as usize;
                if ws && doc.nodes[parent].flags & HAS_ELEM != 0 {
                    continue; // indentation between child elements
                }
                let amp = memchr::memchr(b'&', raw).is_some();
                if amp {
                    check_escapes(raw).map_err(|m| malformed(m, pos))?;
                }
                let off = offset_in(input, raw).ok_or_else(|| malformed("reader slice", pos))?;
                let mut flags = 0;
                if amp {
                    flags |= AMP;
                }
                if ws {
                    flags |= WS;
                } else {
                    doc.nodes[parent].flags |= HAS_TEXT;
                }
                push_text(&mut doc, Kind::Text, off, raw.len(), flags);
            }
            Event::CData(c) => {
                let raw: &[u8] = &c;
                let Some(&(parent, _, _)) = stack.last() else {
                    return Err(malformed("CDATA outside the root element", pos));
                };
                let off = offset_in(input, raw).ok_or_else(|| malformed("reader slice", pos))?;
                doc.nodes[parent as usize].flags |= HAS_TEXT;
                push_text(&mut doc, Kind::CData, off, raw.len(), 0);
            }
            Event::Decl(_) => {
                if !was_first {
                    return Err(malformed("XML declaration not at the start", pos));
                }
            }
            Event::DocType(_) => {
                if root_done || !stack.is_empty() || !doc.nodes.is_empty() {
                    return Err(malformed("DOCTYPE after the root element", pos));
                }
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => {
                if !stack.is_empty() {
                    return Err(malformed(
                        format!("document ends inside {} open element(s)", stack.len()),
                        pos,
                    ));
                }
                if doc.nodes.is_empty() {
                    return Err(ConvertError::UnexpectedRoot("no root element".to_string()));
                }
                return Ok(doc);
            }
        }
    }
}

fn push_text(doc: &mut Doc<'_>, kind: Kind, off: u32, len: usize, flags: u8) {
    let i = doc.nodes.len() as u32;
    let a = doc.attrs.len() as u32;
    doc.nodes.push(Node {
        off,
        len: len as u32,
        end: i + 1,
        attr_lo: a,
        kind,
        flags,
    });
}

/// Records an element start (`<x …>` or `<x …/>`) and its attributes;
/// returns where its qualified name is, to match the end tag.
fn start_element(
    doc: &mut Doc<'_>,
    e: &BytesStart<'_>,
    stack: &[(u32, u32, u32)],
    root_done: bool,
    pos: u64,
) -> Result<(u32, u32), ConvertError> {
    if root_done {
        return Err(malformed("content after the root element", pos));
    }
    let input = doc.input;
    let content: &[u8] = e;
    let content_off = offset_in(input, content).ok_or_else(|| malformed("reader slice", pos))?;
    let name_len = e.name().as_ref().len();
    let qname = &content[..name_len.min(content.len())];
    if !valid_name(qname) {
        return Err(malformed(
            format!("bad element name {:?}", String::from_utf8_lossy(qname)),
            pos,
        ));
    }
    let lname = local(qname);
    if lname.is_empty() {
        return Err(malformed("empty local name", pos));
    }
    if let Some(&(parent, _, _)) = stack.last() {
        let parent = parent as usize;
        if doc.nodes[parent].flags & HAS_ELEM == 0 {
            // Whitespace before the first child element was kept in case the
            // parent turned out to be a leaf; it is indentation after all.
            while doc.nodes.len() > parent + 1 {
                match doc.nodes.last() {
                    Some(n) if n.flags & WS != 0 => {
                        doc.nodes.pop();
                    }
                    _ => break,
                }
            }
            doc.nodes[parent].flags |= HAS_ELEM;
        }
    }
    let name_off = content_off + (name_len - lname.len()) as u32;
    let attr_lo = doc.attrs.len() as u32;
    let flags = scan_attrs(doc, content, content_off, name_len, attr_lo as usize)
        .map_err(|m| malformed(m, pos))?;
    let i = doc.nodes.len() as u32;
    doc.nodes.push(Node {
        off: name_off,
        len: lname.len() as u32,
        end: i + 1,
        attr_lo,
        kind: Kind::Elem,
        flags,
    });
    Ok((content_off, qname.len() as u32))
}

/// Parses the attributes of a start tag: `content` is the tag between `<`
/// and `>` (without a closing `/`), at `content_off` in the input; the
/// attributes start after the name. Keeps all but namespace declarations and
/// `xsi:` attributes; returns the element's flags (`NIL` for `xsi:nil`).
///
/// The grammar is XML's: `(S Name S? = S? ("…" | '…'))* S?`, names checked,
/// no `<` in a value, entity references well-formed, no attribute twice.
fn scan_attrs(
    doc: &mut Doc<'_>,
    b: &[u8],
    content_off: u32,
    name_len: usize,
    attr_lo: usize,
) -> Result<u8, String> {
    let mut flags = 0u8;
    let mut i = name_len;
    loop {
        let ws_start = i;
        while i < b.len() && is_xml_ws(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            return Ok(flags);
        }
        if i == ws_start {
            return Err("attributes must be separated by whitespace".into());
        }
        let k0 = i;
        while i < b.len() && !is_xml_ws(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let key = &b[k0..i];
        if !valid_name(key) {
            return Err(format!(
                "bad attribute name {:?}",
                String::from_utf8_lossy(key)
            ));
        }
        while i < b.len() && is_xml_ws(b[i]) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err("attribute without value".into());
        }
        i += 1;
        while i < b.len() && is_xml_ws(b[i]) {
            i += 1;
        }
        let quote = match b.get(i) {
            Some(&q) if q == b'"' || q == b'\'' => q,
            _ => return Err("attribute value not quoted".into()),
        };
        i += 1;
        // One scan finds the closing quote and any `<` or `&` before it.
        let v0 = i;
        let mut amp = false;
        let len = loop {
            let p = memchr::memchr3(quote, b'<', b'&', &b[i..])
                .ok_or("unterminated attribute value")?;
            match b[i + p] {
                b'<' => return Err("'<' in attribute value".into()),
                b'&' => {
                    amp = true;
                    i += p + 1;
                }
                _ => break i + p - v0,
            }
        };
        let value = &b[v0..v0 + len];
        if amp {
            check_escapes(value)?;
        }
        let val_off = content_off + v0 as u32;
        i = v0 + len + 1;
        if key == b"xmlns" || key.starts_with(b"xmlns:") {
            continue;
        }
        if let Some(local_key) = key.strip_prefix(b"xsi:") {
            if local_key == b"nil" && super::json::trim_xml_ws(value) == b"true" {
                flags |= NIL;
            }
            continue;
        }
        let key_off = content_off + k0 as u32;
        let key_len = u16::try_from(key.len()).map_err(|_| "attribute name too long")?;
        // The duplicate check compares with every earlier attribute of the
        // element: bounded, so a hostile document cannot make it quadratic.
        if doc.attrs.len() - attr_lo >= MAX_ATTRS {
            return Err(format!("more than {MAX_ATTRS} attributes on one element"));
        }
        let dup = doc.attrs[attr_lo..].iter().any(|a| {
            usize::from(a.key_len) == key.len()
                && doc.input.get(a.key_off as usize) == key.first()
                && doc.span(a.key_off, u32::from(a.key_len)) == key
        });
        if dup {
            return Err(format!(
                "attribute {:?} twice",
                String::from_utf8_lossy(key)
            ));
        }
        doc.attrs.push(Attr {
            key_off,
            val_off,
            val_len: len as u32,
            key_len,
            amp,
        });
    }
}
