//! Writes a [`Document`] as EM's JSON (EM 12 style, PascalCase).
//!
//! Rules, from what real EM servers send (tests/data/em/json-facts.md) and the
//! JSON samples in tests/data/em/samples: the root element is
//! dropped (the document is an object of its members); attributes and text become
//! plain members, numbers as JSON numbers, booleans as `true`/`false`; a child
//! element with members is an object, a repeated text-only element an array of
//! scalars; `Links` is an array of
//! `{"Rel","Href","Name","Type"}` with `null` for what is absent; a repeated element
//! is an array named with its plural, a wrapped list keeps EM's double wrapper; a
//! declared but absent member is `null`, and so is an empty list.
//!
//! Member order: child elements first, then attributes, as EM's .NET serializer
//! writes a derived class's own members before its base class's (`Name`, `UID`,
//! `Href`, `Type`). Order is not significant to JSON readers.

use super::model::{Document, Element, Link, Scalar, Value};

/// Renders the document as compact JSON.
pub(crate) fn render(doc: &Document) -> String {
    let mut out = String::with_capacity(1024);
    write_object(&mut out, &doc.root);
    out
}

fn write_object(out: &mut String, el: &Element) {
    out.push('{');
    let mut first = true;
    let children = el
        .members
        .iter()
        .filter(|m| !matches!(m.value, Value::Attr(_)));
    let attrs = el
        .members
        .iter()
        .filter(|m| matches!(m.value, Value::Attr(_)));
    for m in children.chain(attrs) {
        if !first {
            out.push(',');
        }
        first = false;
        write_string(out, m.name);
        out.push(':');
        match &m.value {
            Value::Attr(v) | Value::Text(v) => write_scalar(out, v),
            Value::Absent => out.push_str("null"),
            Value::Texts(values) => write_scalars(out, values),
            Value::Child(child) => write_object(out, child),
            Value::Links(links) => write_links(out, links),
            Value::List {
                wrapped,
                inner,
                items,
            } => {
                if *wrapped {
                    out.push('{');
                    write_string(out, inner);
                    out.push(':');
                    write_items(out, items);
                    out.push('}');
                } else {
                    write_items(out, items);
                }
            }
        }
    }
    out.push('}');
}

fn write_items(out: &mut String, items: &[Element]) {
    if items.is_empty() {
        out.push_str("null");
        return;
    }
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_object(out, item);
    }
    out.push(']');
}

/// A repeated text-only element: an array of scalars, `null` when empty.
fn write_scalars(out: &mut String, values: &[Scalar]) {
    if values.is_empty() {
        out.push_str("null");
        return;
    }
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_scalar(out, v);
    }
    out.push(']');
}

fn write_links(out: &mut String, links: &[Link]) {
    if links.is_empty() {
        out.push_str("null");
        return;
    }
    out.push('[');
    for (i, l) in links.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"Rel\":");
        write_string(out, l.rel);
        out.push_str(",\"Href\":");
        write_string(out, &l.href);
        out.push_str(",\"Name\":");
        write_opt(out, l.name.as_deref());
        out.push_str(",\"Type\":");
        write_opt(out, l.typ);
        out.push('}');
    }
    out.push(']');
}

fn write_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => write_string(out, s),
        None => out.push_str("null"),
    }
}

fn write_scalar(out: &mut String, v: &Scalar) {
    match v {
        Scalar::Str(s) => write_string(out, s),
        Scalar::Int(i) => out.push_str(&i.to_string()),
        Scalar::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
    }
}

/// A JSON string literal: quotes, backslashes and control characters escaped,
/// everything else written as UTF-8 (as Json.NET does; `/` is not escaped).
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Document, Element, Link, RootStyle};

    #[test]
    fn renders_members_lists_and_nulls() {
        let doc = Document::new(
            Element::new("EnterpriseManager")
                .links(vec![Link::untyped("Create", "https://h/api/x".into())])
                .list(
                    "SupportedVersions",
                    true,
                    vec![Element::new("SupportedVersion").attr("Name", "v1_5")],
                )
                .absent("Href")
                .attr_int("N", 7),
            RootStyle::Serializer,
        );
        let v: serde_json::Value = serde_json::from_str(&render(&doc)).unwrap();
        assert_eq!(v["Links"][0]["Name"], serde_json::Value::Null);
        assert_eq!(v["Links"][0]["Type"], serde_json::Value::Null);
        assert_eq!(v["Links"][0]["Rel"], "Create");
        assert_eq!(
            v["SupportedVersions"]["SupportedVersions"][0]["Name"],
            "v1_5"
        );
        assert_eq!(v["Href"], serde_json::Value::Null);
        assert_eq!(v["N"], 7);
    }

    #[test]
    fn escapes_strings() {
        let mut s = String::new();
        write_string(&mut s, "a\"b\\c\n\u{1}/é");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001/é\"");
        let empty = Document::new(
            Element::new("EntityReferences").list("Refs", false, vec![]),
            RootStyle::Plain,
        );
        assert_eq!(render(&empty), "{\"Refs\":null}");
    }
}
