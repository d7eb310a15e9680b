//! Writes a [`Document`] as EM's XML.
//!
//! Layout follows the samples: two-space indentation, self-closing elements written
//! `<Link … />`, the root carrying `xmlns="http://www.veeam.com/ent/v1.0"`.

use super::model::{Document, Element, Link, RootStyle, Scalar, Value};

/// EM's namespace (RestAPI.xsd `targetNamespace`).
pub(crate) const NAMESPACE: &str = "http://www.veeam.com/ent/v1.0";
const DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n";
const XSD: &str = "http://www.w3.org/2001/XMLSchema";
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Renders the document; the result is well-formed XML 1.0.
pub(crate) fn render(doc: &Document) -> String {
    let mut out = String::with_capacity(1024);
    if doc.style == RootStyle::Serializer {
        out.push_str(DECLARATION);
    }
    write_element(&mut out, &doc.root, 0, Some(doc.style));
    out
}

fn write_element(out: &mut String, el: &Element, depth: usize, root: Option<RootStyle>) {
    indent(out, depth);
    out.push('<');
    out.push_str(el.name);
    match root {
        Some(RootStyle::Plain) => push_attr(out, "xmlns", NAMESPACE),
        Some(RootStyle::Serializer) => {
            push_attr(out, "xmlns:xsd", XSD);
            push_attr(out, "xmlns:xsi", XSI);
        }
        None => {}
    }
    for m in &el.members {
        if let Value::Attr(v) = &m.value {
            push_attr(out, m.name, &scalar_text(v));
        }
    }
    if root == Some(RootStyle::Serializer) {
        // XmlSerializer writes the default namespace after the element's own
        // attributes (samples 04 and 06).
        push_attr(out, "xmlns", NAMESPACE);
    }
    let has_children = el.members.iter().any(|m| match &m.value {
        Value::Text(_) | Value::Links(_) | Value::Child(_) => true,
        Value::Texts(values) => !values.is_empty(),
        Value::List { wrapped, items, .. } => *wrapped || !items.is_empty(),
        Value::Attr(_) | Value::Absent => false,
    });
    if !has_children {
        out.push_str(" />\n");
        return;
    }
    out.push_str(">\n");
    for m in &el.members {
        match &m.value {
            Value::Attr(_) | Value::Absent => {}
            Value::Text(v) => write_text(out, m.name, v, depth + 1),
            Value::Texts(values) => {
                for v in values {
                    write_text(out, m.name, v, depth + 1);
                }
            }
            Value::Child(child) => write_element(out, child, depth + 1, None),
            Value::Links(links) => write_links(out, links, depth + 1),
            Value::List {
                wrapped: false,
                items,
                ..
            } => {
                for item in items {
                    write_element(out, item, depth + 1, None);
                }
            }
            Value::List {
                wrapped: true,
                items,
                ..
            } => {
                indent(out, depth + 1);
                out.push('<');
                out.push_str(m.name);
                if items.is_empty() {
                    out.push_str(" />\n");
                    continue;
                }
                out.push_str(">\n");
                for item in items {
                    write_element(out, item, depth + 2, None);
                }
                indent(out, depth + 1);
                out.push_str("</");
                out.push_str(m.name);
                out.push_str(">\n");
            }
        }
    }
    indent(out, depth);
    out.push_str("</");
    out.push_str(el.name);
    out.push_str(">\n");
}

/// `<Name>value</Name>` on a line of its own.
fn write_text(out: &mut String, name: &str, v: &Scalar, depth: usize) {
    indent(out, depth);
    out.push('<');
    out.push_str(name);
    out.push('>');
    escape_into(out, &scalar_text(v), false);
    out.push_str("</");
    out.push_str(name);
    out.push_str(">\n");
}

fn write_links(out: &mut String, links: &[Link], depth: usize) {
    indent(out, depth);
    if links.is_empty() {
        out.push_str("<Links />\n");
        return;
    }
    out.push_str("<Links>\n");
    for link in links {
        indent(out, depth + 1);
        out.push_str("<Link");
        push_attr(out, "Rel", link.rel);
        if let Some(t) = link.typ {
            push_attr(out, "Type", t);
        }
        push_attr(out, "Href", &link.href);
        if let Some(n) = &link.name {
            push_attr(out, "Name", n);
        }
        out.push_str(" />\n");
    }
    indent(out, depth);
    out.push_str("</Links>\n");
}

fn scalar_text(v: &Scalar) -> std::borrow::Cow<'_, str> {
    match v {
        Scalar::Str(s) => std::borrow::Cow::Borrowed(s.as_str()),
        Scalar::Int(i) => std::borrow::Cow::Owned(i.to_string()),
        // xs:boolean as .NET's XmlSerializer writes it.
        Scalar::Bool(b) => std::borrow::Cow::Borrowed(if *b { "true" } else { "false" }),
    }
}

fn push_attr(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    escape_into(out, value, true);
    out.push('"');
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

/// Escapes text for XML. In attributes also quotes and the whitespace characters that
/// attribute-value normalisation would otherwise turn into spaces. Characters XML 1.0
/// cannot carry at all (most C0 controls, U+FFFE, U+FFFF) become U+FFFD, so a user
/// name typed with control characters still yields a well-formed document.
pub(crate) fn escape_into(out: &mut String, s: &str, attribute: bool) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attribute => out.push_str("&quot;"),
            '\t' if attribute => out.push_str("&#x9;"),
            '\n' if attribute => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Element, Link};

    #[test]
    fn escapes_attributes_and_text() {
        let mut s = String::new();
        escape_into(&mut s, "a&b<c>\"d\"\t\u{1}", true);
        assert_eq!(s, "a&amp;b&lt;c&gt;&quot;d&quot;&#x9;\u{FFFD}");
        let mut t = String::new();
        escape_into(&mut t, "R&D \"x\"\n", false);
        assert_eq!(t, "R&amp;D \"x\"\n");
    }

    #[test]
    fn renders_plain_and_serializer_roots() {
        let el = Element::new("EntityReferences").list(
            "Refs",
            false,
            vec![Element::new("Ref")
                .attr("Name", "r&d001")
                .links(vec![Link::untyped("Up", "https://h/api/".into())])],
        );
        let plain = render(&Document::new(el.clone(), RootStyle::Plain));
        assert!(plain.starts_with("<EntityReferences xmlns=\"http://www.veeam.com/ent/v1.0\">"));
        assert!(plain.contains("<Ref Name=\"r&amp;d001\">"));
        assert!(plain.contains("<Link Rel=\"Up\" Href=\"https://h/api/\" />"));
        let ser = render(&Document::new(
            Element::new("Error")
                .attr("Message", "m")
                .attr_int("StatusCode", 404),
            RootStyle::Serializer,
        ));
        assert!(ser.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Error xmlns:xsd="));
        assert!(ser.contains(
            "Message=\"m\" StatusCode=\"404\" xmlns=\"http://www.veeam.com/ent/v1.0\" />"
        ));
    }
}
