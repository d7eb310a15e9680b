//! The in-memory document model that both renderers (`xml.rs`, `json.rs`) read.
//!
//! Every answer the simulator gives is first built as a [`Document`] and only then
//! written out as XML or JSON, so the two formats cannot drift apart: a member that
//! exists in one exists in the other, with the same value.
//!
//! The model knows just enough about EM's serializers to write both formats:
//! which members are XML attributes and which are child elements, which values are
//! numbers, which lists are wrapped, and which members the schema declares but the
//! document leaves out (EM's JSON sends those as `null`).

/// A scalar value: text, a number (a JSON number, e.g. `StatusCode`) or a
/// boolean (`true`/`false` in both renderings, e.g. `IsRetry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scalar {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// One `<Link Rel=… Type=… Href=… Name=…/>`; JSON `{"Rel","Href","Name","Type"}`
/// with `null` for an absent `Name` or `Type`, as EM's own JSON has it
/// (tests/data/em/json-facts.md).
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub rel: &'static str,
    pub typ: Option<&'static str>,
    pub href: String,
    pub name: Option<String>,
}

impl Link {
    pub fn new(rel: &'static str, typ: &'static str, href: String) -> Self {
        Link {
            rel,
            typ: Some(typ),
            href,
            name: None,
        }
    }

    pub fn named(rel: &'static str, typ: &'static str, href: String, name: &str) -> Self {
        Link {
            name: Some(name.to_owned()),
            ..Link::new(rel, typ, href)
        }
    }

    /// A link without a `Type` (EM's `Rel="Restore"` and `Rel="Delete"` links).
    pub fn untyped(rel: &'static str, href: String) -> Self {
        Link {
            rel,
            typ: None,
            href,
            name: None,
        }
    }
}

/// What a member of an element is.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    /// An XML attribute; a JSON member holding a scalar.
    Attr(Scalar),
    /// A text-only child element; a JSON member holding a scalar.
    Text(Scalar),
    /// A member the schema declares but this document leaves out: nothing in XML,
    /// `null` in JSON (EM's JSON serializer writes every member of its classes).
    Absent,
    /// A text-only element that repeats (`<Days>Sunday</Days><Days>Monday</Days>`);
    /// a JSON array of scalars named like the element, `null` when empty.
    Texts(Vec<Scalar>),
    /// One child element with members of its own (`<PagingInfo …>`,
    /// `<JobScheduleOptions>`); a JSON object. The member is named like the element.
    Child(Element),
    /// `<Links><Link/>…</Links>`; a JSON array of link objects.
    Links(Vec<Link>),
    /// A repeated element. `wrapped: false` puts the items directly in the parent
    /// (`<EntityReferences><Ref/>…`, JSON `"Refs": […]`); `wrapped: true` puts them in
    /// an element named like the member (`<SupportedVersions><SupportedVersion/>…`,
    /// JSON `"SupportedVersions": {"SupportedVersions": […]}`), and `inner` names
    /// the JSON array inside that wrapper: the plural of the item element, as EM's
    /// list classes name it (`<Includes><ObjectInJob/>…` gives
    /// `"Includes": {"ObjectInJobs": […]}`). An empty list is `null` in JSON, as
    /// EM sends it.
    List {
        wrapped: bool,
        inner: &'static str,
        items: Vec<Element>,
    },
}

/// A named member of an element. For lists the name is the JSON (plural) name.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub name: &'static str,
    pub value: Value,
}

/// An element: its name and its members in XML order (attributes in the order
/// written, children in the order written).
#[derive(Clone, Debug)]
pub(crate) struct Element {
    pub name: &'static str,
    pub members: Vec<Member>,
}

impl Element {
    pub fn new(name: &'static str) -> Self {
        Element {
            name,
            members: Vec::new(),
        }
    }

    pub fn attr(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.push(name, Value::Attr(Scalar::Str(value.into())));
        self
    }

    pub fn attr_int(mut self, name: &'static str, value: i64) -> Self {
        self.push(name, Value::Attr(Scalar::Int(value)));
        self
    }

    pub fn attr_bool(mut self, name: &'static str, value: bool) -> Self {
        self.push(name, Value::Attr(Scalar::Bool(value)));
        self
    }

    pub fn text(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.push(name, Value::Text(Scalar::Str(value.into())));
        self
    }

    pub fn text_int(mut self, name: &'static str, value: i64) -> Self {
        self.push(name, Value::Text(Scalar::Int(value)));
        self
    }

    pub fn text_bool(mut self, name: &'static str, value: bool) -> Self {
        self.push(name, Value::Text(Scalar::Bool(value)));
        self
    }

    /// A repeated text-only element, one per value.
    pub fn texts(mut self, name: &'static str, values: &[&str]) -> Self {
        let values = values
            .iter()
            .map(|v| Scalar::Str((*v).to_owned()))
            .collect();
        self.push(name, Value::Texts(values));
        self
    }

    /// A child element, as a member named like the element.
    pub fn child(mut self, element: Element) -> Self {
        self.push(element.name, Value::Child(element));
        self
    }

    pub fn absent(mut self, name: &'static str) -> Self {
        self.push(name, Value::Absent);
        self
    }

    pub fn links(mut self, links: Vec<Link>) -> Self {
        self.push("Links", Value::Links(links));
        self
    }

    /// A list whose JSON names, outer and (when wrapped) inner, are both `name`.
    pub fn list(mut self, name: &'static str, wrapped: bool, items: Vec<Element>) -> Self {
        self.push(
            name,
            Value::List {
                wrapped,
                inner: name,
                items,
            },
        );
        self
    }

    /// A wrapped list whose JSON array inside the wrapper is named `inner`.
    pub fn wrapped_list(
        mut self,
        name: &'static str,
        inner: &'static str,
        items: Vec<Element>,
    ) -> Self {
        self.push(
            name,
            Value::List {
                wrapped: true,
                inner,
                items,
            },
        );
        self
    }

    /// Moves the attributes named in `order` to the front, in that order (EM's
    /// serializers write the same entity's attributes in different orders in
    /// different documents; samples 04 and 07). Children keep their order.
    pub fn order_attrs(mut self, order: &[&str]) -> Self {
        let rank = |m: &Member| {
            order
                .iter()
                .position(|n| *n == m.name && matches!(m.value, Value::Attr(_)))
                .unwrap_or(order.len())
        };
        self.members.sort_by_key(rank);
        self
    }

    fn push(&mut self, name: &'static str, value: Value) {
        self.members.push(Member { name, value });
    }
}

/// How EM writes a root element. Taken from the samples in
/// tests/data/em/samples: entities, the entry point and errors come from
/// .NET's XmlSerializer (XML declaration, `xmlns:xsd`/`xmlns:xsi`, samples 01, 04, 06,
/// 08); references, logon sessions and entity collections are written bare with only
/// the default namespace (samples 02, 03 and representation_collections.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RootStyle {
    Serializer,
    Plain,
}

/// A whole response document.
#[derive(Clone, Debug)]
pub(crate) struct Document {
    pub root: Element,
    pub style: RootStyle,
}

impl Document {
    pub fn new(root: Element, style: RootStyle) -> Self {
        Document { root, style }
    }
}
