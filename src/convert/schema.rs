//! The schema table: what the converter knows about EM's documents.
//!
//! The data (`schema_data.rs`) is generated from `RestAPI.xsd`, the docs
//! pages and `json-facts.md` by `schema_gen.rs` (a test, so the generator and
//! the check that the checked-in table is current are the same code; rerun with
//! `EMGATE_REGEN_SCHEMA=1 cargo test schema_table`). This file holds the shapes
//! of the data and the lookups the writer does on it. Nothing reads the XSD at
//! run time.

use super::schema_data::{NAME_SCALARS, ROOTS, TYPES};

/// The JSON form of a text-only value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scalar {
    /// A string, exactly as EM wrote it.
    Str,
    /// A number (`xs:int`, `xs:long`, `xs:decimal`, `xs:double`, … and the
    /// schema's own types derived from them).
    Num,
    /// `true` / `false` (`xs:boolean`).
    Bool,
}

/// How an element converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    /// A text-only element: a JSON scalar.
    Scalar(Scalar),
    /// An object of type `TYPES[id]`.
    Obj(u16),
    /// A plain JSON array of the items of `TYPES[id]`, whose one member is
    /// the repeated item (`Links`, string lists): no wrapper object.
    Arr(u16),
    /// A typed list the schema does not describe (some of the members of a
    /// query's `Entities`): an object whose every child element becomes an
    /// array named with its plural, however many there are.
    AnyList,
    /// Not in the schema: converted by the generic rules.
    Unknown,
}

/// String scalar.
pub(crate) const STR: Ty = Ty::Scalar(Scalar::Str);
/// Number scalar.
pub(crate) const NUM: Ty = Ty::Scalar(Scalar::Num);
/// Boolean scalar.
pub(crate) const BOOL: Ty = Ty::Scalar(Scalar::Bool);

/// Member flag: may repeat; its JSON name is the plural and its value an array.
pub(crate) const REPEATED: u8 = 1;
/// Member flag: written when absent (`null`, or `[]` for a list).
pub(crate) const NULLABLE: u8 = 2;

/// An attribute or child element a type declares.
#[derive(Debug)]
pub(crate) struct Member {
    /// The XML local name.
    pub xml: &'static str,
    /// The JSON member name, `[pascal, camel]` (the plural when repeated).
    pub json: [&'static str; 2],
    /// How the value converts (attributes are always scalars).
    pub ty: Ty,
    /// `REPEATED`, `NULLABLE`.
    pub flags: u8,
}

/// A complex type, with everything it inherits flattened in.
#[derive(Debug)]
pub(crate) struct TypeDef {
    /// The XSD name (anonymous types: `Parent.Element`, newer lists:
    /// `NASJobs(list)`), for tests and debugging.
    #[cfg_attr(not(test), allow(dead_code, reason = "read by tests and Debug"))]
    pub name: &'static str,
    /// `members[..n_attrs]` are attributes, the rest child elements.
    pub n_attrs: u8,
    /// Simple content: the element's text becomes the member `Value`.
    pub text: Option<Scalar>,
    /// Attributes, then child elements, in schema order (at most 128).
    pub members: &'static [Member],
}

/// The bit for member `i` in a 128-bit "seen" set (none past 128, which the
/// generator rules out).
#[inline]
pub(crate) fn bit(i: usize) -> u128 {
    u32::try_from(i)
        .ok()
        .and_then(|i| 1u128.checked_shl(i))
        .unwrap_or(0)
}

/// Shorthand constructor used by the generated table.
pub(crate) const fn m(
    xml: &'static str,
    pascal: &'static str,
    camel: &'static str,
    ty: Ty,
    flags: u8,
) -> Member {
    Member {
        xml,
        json: [pascal, camel],
        ty,
        flags,
    }
}

/// Name equality, cheapest tests first (lengths, first byte).
#[inline]
fn name_eq(a: &str, b: &[u8]) -> bool {
    let a = a.as_bytes();
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

impl TypeDef {
    /// Index of the attribute named `name`.
    #[inline]
    pub fn find_attr(&self, name: &[u8]) -> Option<usize> {
        self.members
            .get(..usize::from(self.n_attrs))
            .unwrap_or_default()
            .iter()
            .position(|m| name_eq(m.xml, name))
    }

    /// Index of the child element named `name`, looking first at `hint` (the
    /// member after the last one found: documents follow schema order).
    #[inline]
    pub fn find_elem(&self, name: &[u8], hint: usize) -> Option<usize> {
        let lo = usize::from(self.n_attrs);
        if let Some(m) = self.members.get(hint) {
            if hint >= lo && name_eq(m.xml, name) {
                return Some(hint);
            }
        }
        self.members
            .get(lo..)
            .unwrap_or_default()
            .iter()
            .position(|m| name_eq(m.xml, name))
            .map(|p| p + lo)
    }
}

/// The type with id `id` (ids come from the table itself, so always valid;
/// an out-of-range id would be a generator bug and reads as an empty type).
#[inline]
pub(crate) fn type_def(id: u16) -> &'static TypeDef {
    static EMPTY: TypeDef = TypeDef {
        name: "",
        n_attrs: 0,
        text: None,
        members: &[],
    };
    TYPES.get(usize::from(id)).unwrap_or(&EMPTY)
}

/// How a document whose root element is `name` converts (schema's global
/// elements, plus EM's newer root lists).
pub(crate) fn root_type(name: &[u8]) -> Ty {
    ROOTS
        .binary_search_by(|(n, _)| n.as_bytes().cmp(name))
        .map_or(Ty::Unknown, |i| ROOTS[i].1)
}

/// How `Links` converts: EM's link list, a plain array of `Link` objects,
/// whatever element holds it (types newer than the schema too).
pub(crate) fn links_type() -> Ty {
    static LINKS: std::sync::OnceLock<Ty> = std::sync::OnceLock::new();
    *LINKS.get_or_init(|| {
        TYPES
            .iter()
            .flat_map(|t| t.members.iter())
            .find(|m| m.xml == "Links")
            .map_or(Ty::Unknown, |m| m.ty)
    })
}

/// The scalar type of a member named `name` where no type declares it: a
/// number or boolean when every schema declaration and every docs table that
/// mentions the name agree on it (`MaxConcurrentTasks`, `DayOfMonth`).
pub(crate) fn name_scalar(name: &[u8]) -> Option<Scalar> {
    NAME_SCALARS
        .binary_search_by(|(n, _)| n.as_bytes().cmp(name))
        .ok()
        .map(|i| NAME_SCALARS[i].1)
}

#[cfg(test)]
pub(crate) fn all_types() -> &'static [TypeDef] {
    &TYPES
}

#[cfg(test)]
pub(crate) fn all_roots() -> &'static [(&'static str, Ty)] {
    &ROOTS
}

#[cfg(test)]
pub(crate) fn all_name_scalars() -> &'static [(&'static str, Scalar)] {
    &NAME_SCALARS
}
