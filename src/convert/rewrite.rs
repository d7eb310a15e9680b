//! Rewriting EM's absolute URLs to the gateway's public URL.
//!
//! A URL is rewritten where EM's base URL (`https://em.corp:9398`) starts it,
//! anywhere in an attribute value or in text, when the base is not followed by
//! more of a host name or port (`https://em.corp:93980` is left alone). The
//! scheme and host are compared without regard to ASCII case.

use super::doc::{self, Doc, Kind};
use super::{prepare, ConvertError, Rewrite};

/// A prepared [`Rewrite`].
pub(crate) struct Rewriter<'r> {
    /// EM's base URL, without a trailing `/`.
    pub from: &'r [u8],
    /// The gateway's public base URL, without a trailing `/`.
    pub to: &'r [u8],
    /// Both cases of `from`'s first byte, for the candidate scan.
    first: [u8; 2],
}

impl<'r> Rewriter<'r> {
    /// `None` when there is nothing to rewrite (empty base URL).
    pub fn new(rw: &Rewrite<'r>) -> Option<Self> {
        let from = rw.from.trim_end_matches('/').as_bytes();
        let to = rw.to.trim_end_matches('/').as_bytes();
        let &f = from.first()?;
        Some(Rewriter {
            from,
            to,
            first: [f.to_ascii_lowercase(), f.to_ascii_uppercase()],
        })
    }

    /// Position of the next occurrence of `from` in `hay` at or after `pos`.
    #[inline]
    pub fn find(&self, hay: &[u8], mut pos: usize) -> Option<usize> {
        let n = self.from.len();
        if hay.len() < n {
            return None; // most values: names, types, dates
        }
        while pos + n <= hay.len() {
            let window = &hay[pos..=hay.len() - n];
            let p = pos + memchr::memchr2(self.first[0], self.first[1], window)?;
            if hay[p..p + n].eq_ignore_ascii_case(self.from) && boundary(hay.get(p + n)) {
                return Some(p);
            }
            pos = p + 1;
        }
        None
    }

    /// Whether `hay` contains a URL to rewrite.
    #[inline]
    pub fn matches(&self, hay: &[u8]) -> bool {
        self.find(hay, 0).is_some()
    }
}

/// Whether the byte after a match ends the base URL.
#[inline]
fn boundary(next: Option<&u8>) -> bool {
    match next {
        None => true,
        Some(&b) => !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':')),
    }
}

/// Appends `text` with every base URL replaced, each piece passed through
/// `emit` (JSON escaping, XML escaping, or a plain copy).
#[inline]
pub(crate) fn replace_with<F: Fn(&mut Vec<u8>, &[u8])>(
    rw: &Rewriter<'_>,
    text: &[u8],
    out: &mut Vec<u8>,
    emit: F,
) {
    let mut pos = 0;
    while let Some(m) = rw.find(text, pos) {
        emit(out, &text[pos..m]);
        emit(out, rw.to);
        pos = m + rw.from.len();
    }
    emit(out, &text[pos..]);
}

fn copy(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
}

/// XML-escapes for an attribute value (either quote style stays valid, and
/// whitespace characters survive attribute-value normalisation).
fn escape_attr(out: &mut Vec<u8>, s: &[u8]) {
    escape_xml(out, s, true);
}

/// XML-escapes for character data.
fn escape_text(out: &mut Vec<u8>, s: &[u8]) {
    escape_xml(out, s, false);
}

fn escape_xml(out: &mut Vec<u8>, s: &[u8], attr: bool) {
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' if attr => b"&quot;",
            b'\'' if attr => b"&apos;",
            b'\t' if attr => b"&#x9;",
            b'\n' if attr => b"&#xA;",
            b'\r' => b"&#xD;",
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        out.extend_from_slice(rep);
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

/// The XML pass: copies the document, replacing only the attribute values
/// and text runs that hold a URL to rewrite.
pub(crate) fn rewrite_xml(
    xml: &[u8],
    rewrite: &Rewrite<'_>,
    out: &mut Vec<u8>,
) -> Result<(), ConvertError> {
    let (bom, text) = prepare(xml)?;
    let doc = doc::build(text)?;
    let Some(rw) = Rewriter::new(rewrite) else {
        out.extend_from_slice(xml);
        return Ok(());
    };
    let start = out.len();
    out.reserve(xml.len() + 256);
    out.extend_from_slice(&xml[..bom]);
    match splice(&doc, &rw, out) {
        Ok(()) => Ok(()),
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

fn splice(doc: &Doc<'_>, rw: &Rewriter<'_>, out: &mut Vec<u8>) -> Result<(), ConvertError> {
    let input = doc.input;
    let mut copied = 0usize;
    let mut scratch = Vec::new();
    // Attribute values and text runs, in document order.
    let mut edit = |off: u32, len: u32, amp: bool, ctx: Ctx, out: &mut Vec<u8>| {
        let raw = doc.span(off, len);
        let off = off as usize;
        let emit: fn(&mut Vec<u8>, &[u8]) = match ctx {
            Ctx::Attr => escape_attr,
            Ctx::Text => escape_text,
            Ctx::CData => copy,
        };
        if !amp {
            if !rw.matches(raw) {
                return Ok(());
            }
            out.extend_from_slice(gap(input, copied, off)?);
            // No references: the raw form is the value; splice `to` in.
            let mut pos = 0;
            while let Some(m) = rw.find(raw, pos) {
                out.extend_from_slice(&raw[pos..m]);
                emit(out, rw.to);
                pos = m + rw.from.len();
            }
            out.extend_from_slice(&raw[pos..]);
        } else {
            scratch.clear();
            doc::decode_into(raw, &mut scratch).map_err(ConvertError::Malformed)?;
            if !rw.matches(&scratch) {
                return Ok(());
            }
            out.extend_from_slice(gap(input, copied, off)?);
            replace_with(rw, &scratch, out, emit);
        }
        copied = off + raw.len();
        Ok::<(), ConvertError>(())
    };
    for (i, node) in doc.nodes.iter().enumerate() {
        match node.kind {
            Kind::Elem => {
                for a in doc.attrs_of(i) {
                    edit(a.val_off, a.val_len, a.amp, Ctx::Attr, out)?;
                }
            }
            Kind::Text => edit(
                node.off,
                node.len,
                node.flags & doc::AMP != 0,
                Ctx::Text,
                out,
            )?,
            Kind::CData => {
                // `]]>` cannot be written inside CDATA; such a URL is left alone.
                if memchr::memmem::find(rw.to, b"]]>").is_none() {
                    edit(node.off, node.len, false, Ctx::CData, out)?;
                }
            }
        }
    }
    out.extend_from_slice(input.get(copied..).unwrap_or_default());
    Ok(())
}

/// The unchanged bytes between two edits (edits come in document order).
fn gap(input: &[u8], from: usize, to: usize) -> Result<&[u8], ConvertError> {
    input
        .get(from..to)
        .ok_or_else(|| ConvertError::Malformed("edits out of document order".to_string()))
}

#[derive(Clone, Copy)]
enum Ctx {
    Attr,
    Text,
    CData,
}
