//! EM XML → JSON, as EM itself would have answered a JSON client.
//!
//! The gateway always asks Enterprise Manager for XML and converts here. The
//! rules are the README's "JSON, and which EM version you have"; in short:
//!
//! - the root element is dropped: the document is an object of its
//!   attributes and children;
//! - attributes and text-only elements are members holding scalars; what is a
//!   number or a boolean comes from EM's schema (plus the docs for newer
//!   members), everything else is a string exactly as EM wrote it;
//! - an element that may repeat is one member named with its plural, always
//!   an array; `Links` and string lists are plain arrays; a typed list inside
//!   another element keeps EM's double wrapper
//!   (`"Entities": {"VmRestorePoints": {"VmRestorePoints": […]}}`);
//! - every member the schema declares is present: `null` when absent, `[]`
//!   for an absent list;
//! - elements the schema does not know still convert (repeated siblings → an
//!   array named with their plural, scalars → strings);
//! - `pascal` keeps EM's names, `camel` applies .NET's camel-case policy;
//! - URLs under EM's base URL are rewritten to the gateway's (also for XML
//!   clients, by [`rewrite_xml`]).
//!
//! How: `doc` indexes the document with quick-xml (spans into the input, no
//! strings) and checks it is well-formed; `writer` walks the index once and
//! writes JSON bytes, looking names up in the generated `schema` table
//! (`schema_data.rs`, made and kept current by `schema_gen.rs`); `case` holds
//! the naming rules, `json` the escaping and scalar forms, `rewrite` the URL
//! rewriting for both outputs.
//! Nothing is written to the caller's buffer unless the whole conversion
//! succeeds. The converter is pure (bytes in, bytes out) and never panics on
//! any input; a document nested deeper than 256 elements is refused.

mod case;
mod doc;
mod json;
mod rewrite;
mod schema;
#[rustfmt::skip]
mod schema_data;
mod writer;

#[cfg(test)]
mod schema_gen;
#[cfg(test)]
mod tests;

use rewrite::Rewriter;

/// The member naming of the JSON output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// EM's own names, as EM 12 and earlier send them (`UID`, `VmName`).
    Pascal,
    /// .NET's camel-case policy, as EM 13 sends them (`uid`, `vmName`).
    Camel,
}

/// Which URLs to rewrite: every absolute URL starting with `from` gets `to`
/// instead (`https://em.corp:9398/api/x` → `http://127.0.0.1:9399/api/x`).
#[derive(Clone, Copy, Debug)]
pub struct Rewrite<'a> {
    /// EM's base URL, e.g. `https://em.corp:9398` (a trailing `/` is ignored).
    pub from: &'a str,
    /// The gateway's public base URL, e.g. `http://127.0.0.1:9399`.
    pub to: &'a str,
}

/// Why a document could not be converted. The gateway answers 502 for all of
/// them: EM answered something that is not one of its documents.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Not well-formed XML: syntax error, mismatched or unclosed tags (a
    /// truncated body), bad names or entity references, several roots, text
    /// outside the root.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// The bytes are not UTF-8 (EM always sends UTF-8).
    #[error("document is not UTF-8 (invalid byte at {offset})")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The document is not an element document (empty, text, only comments).
    #[error("unexpected document root: {0}")]
    UnexpectedRoot(String),
    /// Elements nested deeper than the converter accepts.
    #[error("XML nested deeper than {0} elements")]
    TooDeep(usize),
    /// A document of 4 GiB or more.
    #[error("XML document too large")]
    TooLarge,
}

/// Converts one EM XML document to JSON bytes, appended to `out` only on
/// success (on error `out` is left as it was).
///
/// `rewrite`: EM's base URL and the gateway's, for every URL in attribute
/// values and text; `None` leaves URLs alone.
pub fn to_json(
    xml: &[u8],
    case: Case,
    rewrite: Option<&Rewrite<'_>>,
    out: &mut Vec<u8>,
) -> Result<(), ConvertError> {
    let (_, text) = prepare(xml)?;
    let doc = doc::build(text)?;
    let rw = rewrite.and_then(Rewriter::new);
    let start = out.len();
    out.reserve(xml.len() + xml.len() / 4 + 64);
    let result = writer::Writer::new(&doc, out, case, rw.as_ref()).write_root();
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Rewrites EM URLs in an XML document for XML clients, appending the result
/// to `out` (only on success). The document is checked to be well-formed like
/// [`to_json`] does; bytes other than the rewritten attribute values and
/// text runs are copied unchanged (byte-order mark, declaration, namespaces,
/// comments, whitespace).
pub fn rewrite_xml(
    xml: &[u8],
    rewrite: &Rewrite<'_>,
    out: &mut Vec<u8>,
) -> Result<(), ConvertError> {
    rewrite::rewrite_xml(xml, rewrite, out)
}

/// Where EM's base URL `from` starts a URL in `doc`, by the same rules as
/// the rewriting (scheme and host in any case, not followed by more of a
/// host or port), with the length matched; for splicing in a URL later.
pub fn base_url_spans(doc: &[u8], from: &str) -> Vec<(usize, usize)> {
    let rw = Rewrite { from, to: "" };
    let Some(r) = Rewriter::new(&rw) else {
        return Vec::new();
    };
    let mut spans = Vec::new();
    let mut pos = 0;
    while let Some(p) = r.find(doc, pos) {
        spans.push((p, r.from.len()));
        pos = p + r.from.len();
    }
    spans
}

/// The root element's local name (`Error`, `EntityReferences`, …) if `xml`
/// starts like an XML document; a cheap peek that does not check the rest.
pub fn root_name(xml: &[u8]) -> Option<&str> {
    let body = xml.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(xml);
    let mut reader = quick_xml::Reader::from_reader(body);
    loop {
        match reader.read_event().ok()? {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                let content: &[u8] = &e;
                let qname = content.get(..e.name().as_ref().len())?;
                // Re-slice from `body` so the result borrows the input.
                let off = (qname.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
                let qname = body.get(off..off + qname.len())?;
                if !doc::valid_name(qname) {
                    return None;
                }
                return std::str::from_utf8(doc::local(qname)).ok();
            }
            quick_xml::events::Event::Text(t) if t.iter().all(|&b| json::is_xml_ws(b)) => {}
            quick_xml::events::Event::Decl(_)
            | quick_xml::events::Event::Comment(_)
            | quick_xml::events::Event::PI(_)
            | quick_xml::events::Event::DocType(_) => {}
            _ => return None,
        }
    }
}

/// Strips a UTF-8 byte-order mark and checks the rest is UTF-8: the BOM's
/// length and the text.
fn prepare(xml: &[u8]) -> Result<(usize, &str), ConvertError> {
    let (bom, body) = match xml.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => (3, rest),
        None => (0, xml),
    };
    let text = std::str::from_utf8(body).map_err(|e| ConvertError::NotUtf8 {
        offset: bom + e.valid_up_to(),
    })?;
    Ok((bom, text))
}
