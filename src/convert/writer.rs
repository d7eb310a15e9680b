//! Pass 2: the indexed document → JSON bytes, driven by the schema table.
//!
//! One recursive walk. For each element the writer knows its type (from the
//! root table, then from the member its parent's type declares), writes
//! attributes, then child elements grouped by name, then the text (`Value`),
//! then `null`/`[]` for every declared member the document left out. Names
//! and values are written straight into the output: known names come
//! precomputed from the table, unknown ones are plural-/camel-cased into the
//! output, text is borrowed from the input and escaped on the way.

use std::collections::HashMap;

use super::case::{camel_into, plural_into};
use super::doc::{self, Doc, Kind, HAS_ELEM, HAS_TEXT, NIL};
use super::json::{escape_into, number_into, parse_bool, trim_xml_ws};
use super::rewrite::{replace_with, Rewriter};
use super::schema::{
    bit, links_type, name_scalar, root_type, type_def, Scalar, Ty, TypeDef, NULLABLE, REPEATED,
};
use super::{Case, ConvertError};

/// Up to this many children, siblings are grouped by comparing each name with
/// those before it; above, by runs of equal names when there are at most this
/// many runs (a long list), else with a hash map.
const SMALL_GROUP: usize = 24;

pub(crate) struct Writer<'d, 'a, 'r> {
    doc: &'d Doc<'a>,
    out: &'d mut Vec<u8>,
    /// 0 = pascal (`json[0]`), 1 = camel (`json[1]`).
    case: usize,
    rw: Option<&'d Rewriter<'r>>,
    /// Decoded text when a value has entity references or several runs.
    scratch: Vec<u8>,
    /// An unknown member's plural before it is camel-cased.
    name_buf: Vec<u8>,
    /// Stack of `(group key, node)` for the children of the elements being
    /// written; each object uses the part above where its parent's ends.
    kids: Vec<(u32, u32)>,
    /// Name → first position, for grouping large, mixed sibling lists.
    first_pos: HashMap<&'a [u8], u32>,
}

impl<'d, 'a, 'r> Writer<'d, 'a, 'r> {
    pub fn new(
        doc: &'d Doc<'a>,
        out: &'d mut Vec<u8>,
        case: Case,
        rw: Option<&'d Rewriter<'r>>,
    ) -> Self {
        Writer {
            doc,
            out,
            case: match case {
                Case::Pascal => 0,
                Case::Camel => 1,
            },
            rw,
            scratch: Vec::new(),
            name_buf: Vec::new(),
            kids: Vec::with_capacity(64),
            first_pos: HashMap::new(),
        }
    }

    /// Writes the document: the root element's attributes and children as
    /// one object.
    pub fn write_root(&mut self) -> Result<(), ConvertError> {
        let name = self.doc.bytes(0);
        match root_type(name) {
            Ty::Obj(id) | Ty::Arr(id) => self.object(0, Some(type_def(id)), false, None),
            Ty::AnyList => self.object(0, None, true, None),
            Ty::Scalar(k) => self.object(0, None, false, Some(k)),
            Ty::Unknown => {
                let list = self.looks_like_list(0);
                self.object(0, None, list, None)
            }
        }
    }

    /// Whether an element the schema does not know is a typed list: it has
    /// only child elements, all of one name that does not already end in
    /// `s`, and it is named with their plural or with the end of it, from a
    /// capital letter on (`<NASObjects><NASObject/>`, `<VCloudComputeResources>
    /// <CloudTenantVCloudComputeResource/>`, as EM names its lists). Then even
    /// a single item is an array.
    fn looks_like_list(&mut self, el: usize) -> bool {
        let doc = self.doc;
        let node = doc.nodes[el];
        if node.flags & HAS_ELEM == 0 || node.flags & HAS_TEXT != 0 || doc.has_attrs(el) {
            return false;
        }
        let mut item: Option<&[u8]> = None;
        let mut j = el + 1;
        while j < node.end as usize {
            let n = doc.nodes[j];
            if n.kind == Kind::Elem {
                let name = doc.bytes(j);
                match item {
                    None => item = Some(name),
                    Some(i) if i == name => {}
                    Some(_) => return false,
                }
            }
            j = n.end as usize;
        }
        let Some(item) = item else {
            return false;
        };
        let wrapper = doc.bytes(el);
        if item.last().is_some_and(|b| b.eq_ignore_ascii_case(&b's'))
            || !wrapper.first().is_some_and(u8::is_ascii_uppercase)
        {
            return false;
        }
        self.name_buf.clear();
        plural_into(item, &mut self.name_buf);
        self.name_buf.ends_with(wrapper)
    }

    /// Writes `,` unless this is the first member or item.
    #[inline]
    fn sep(&mut self, first: &mut bool) {
        if !std::mem::replace(first, false) {
            self.out.push(b',');
        }
    }

    /// A member name from the table (plain ASCII, never needs escaping).
    #[inline]
    fn static_key(&mut self, first: &mut bool, name: &str) {
        self.sep(first);
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A member name made from an XML name: plural if asked, camel-cased in
    /// camel mode. XML names were checked by the indexer and hold no
    /// character JSON would escape.
    fn dyn_key(&mut self, first: &mut bool, name: &[u8], plural: bool) {
        self.sep(first);
        self.out.push(b'"');
        if self.case == 0 {
            if plural {
                plural_into(name, self.out);
            } else {
                self.out.extend_from_slice(name);
            }
        } else {
            let base: &[u8] = if plural {
                self.name_buf.clear();
                plural_into(name, &mut self.name_buf);
                &self.name_buf
            } else {
                name
            };
            match std::str::from_utf8(base) {
                Ok(s) => camel_into(s, self.out),
                Err(_) => self.out.extend_from_slice(base),
            }
        }
        self.out.extend_from_slice(b"\":");
    }

    /// Writes element `el` as an object of type `td` (or of no known type).
    /// `any_list`: every child group is an array. `text_kind`: the type of
    /// the element's text, written as `Value`.
    fn object(
        &mut self,
        el: usize,
        td: Option<&'static TypeDef>,
        any_list: bool,
        text_kind: Option<Scalar>,
    ) -> Result<(), ConvertError> {
        let doc = self.doc;
        self.out.push(b'{');
        let mut first = true;
        let mut seen: u128 = 0;

        for a in doc.attrs_of(el) {
            let key = doc::local(doc.span(a.key_off, u32::from(a.key_len)));
            let raw = doc.span(a.val_off, a.val_len);
            let kind = match td.and_then(|t| t.find_attr(key).map(|i| (t, i))) {
                Some((t, i)) => {
                    seen |= bit(i);
                    let m = &t.members[i];
                    self.static_key(&mut first, m.json[self.case]);
                    match m.ty {
                        Ty::Scalar(k) => k,
                        _ => Scalar::Str,
                    }
                }
                None => {
                    self.dyn_key(&mut first, key, false);
                    name_scalar(key).unwrap_or(Scalar::Str)
                }
            };
            self.scalar_raw(raw, a.amp, kind)?;
        }

        let node = doc.nodes[el];
        if node.flags & HAS_ELEM != 0 {
            let base = self.kids.len();
            let mut j = el + 1;
            let end = node.end as usize;
            while j < end {
                let n = &doc.nodes[j];
                if n.kind == Kind::Elem {
                    self.kids.push((0, j as u32));
                }
                j = n.end as usize;
            }
            let top = self.kids.len();
            self.group(base, top);
            let mut hint = td.map_or(0, |t| usize::from(t.n_attrs));
            let mut s = base;
            while s < top {
                let key = self.kids[s].0;
                let mut e = s + 1;
                while e < top && self.kids[e].0 == key {
                    e += 1;
                }
                self.member_group(td, any_list, s, e, &mut first, &mut seen, &mut hint)?;
                s = e;
            }
            self.kids.truncate(base);
        }

        let text_kind = text_kind.or(td.and_then(|t| t.text));
        if text_kind.is_some() || node.flags & HAS_TEXT != 0 {
            self.static_key(&mut first, ["Value", "value"][self.case]);
            self.scalar_elem(el, text_kind.unwrap_or(Scalar::Str))?;
        }

        if let Some(t) = td {
            for (i, m) in t.members.iter().enumerate() {
                if m.flags & NULLABLE != 0 && seen & bit(i) == 0 {
                    self.static_key(&mut first, m.json[self.case]);
                    let empty = m.flags & REPEATED != 0 || matches!(m.ty, Ty::Arr(_));
                    self.out
                        .extend_from_slice(if empty { b"[]" } else { b"null" });
                }
            }
        }
        self.out.push(b'}');
        Ok(())
    }

    /// Orders `kids[base..top]` so that elements of the same name are
    /// adjacent, each group where its first element was (a stable sort on the
    /// position of the first sibling of the same name).
    fn group(&mut self, base: usize, top: usize) {
        let doc = self.doc;
        let k = top - base;
        if k <= SMALL_GROUP {
            for i in base..top {
                let name = doc.bytes(self.kids[i].1 as usize);
                let mut key = (i - base) as u32;
                for p in base..i {
                    if doc.bytes(self.kids[p].1 as usize) == name {
                        key = self.kids[p].0;
                        break;
                    }
                }
                self.kids[i].0 = key;
            }
        } else if !self.group_runs(base, top) {
            self.first_pos.clear();
            for i in base..top {
                let name = doc.bytes(self.kids[i].1 as usize);
                let key = *self.first_pos.entry(name).or_insert((i - base) as u32);
                self.kids[i].0 = key;
            }
        }
        let slice = &mut self.kids[base..top];
        if !slice.is_sorted_by_key(|&(key, _)| key) {
            slice.sort_by_key(|&(key, _)| key);
        }
    }

    /// Keys `kids[base..top]` by runs of equal names when there are few runs
    /// (a long list of one element, or a few lists one after the other): no
    /// hashing. `false` when there are too many runs to compare.
    fn group_runs(&mut self, base: usize, top: usize) -> bool {
        let doc = self.doc;
        // (name, key) of each run so far.
        let mut runs: [(&[u8], u32); SMALL_GROUP] = [(&[], 0); SMALL_GROUP];
        let mut n_runs = 0;
        let mut current: &[u8] = &[];
        let mut key = 0;
        for i in base..top {
            let name = doc.bytes(self.kids[i].1 as usize);
            if i == base || name != current {
                current = name;
                key = (i - base) as u32;
                if let Some(&(_, k)) = runs[..n_runs].iter().find(|(n, _)| *n == name) {
                    key = k;
                } else if n_runs == SMALL_GROUP {
                    return false;
                } else {
                    runs[n_runs] = (name, key);
                    n_runs += 1;
                }
            }
            self.kids[i].0 = key;
        }
        true
    }

    /// Writes one group of same-named children `kids[s..e]` as one member.
    #[allow(clippy::too_many_arguments)]
    fn member_group(
        &mut self,
        td: Option<&'static TypeDef>,
        any_list: bool,
        s: usize,
        e: usize,
        first: &mut bool,
        seen: &mut u128,
        hint: &mut usize,
    ) -> Result<(), ConvertError> {
        let node = self.kids[s].1 as usize;
        let name = self.doc.bytes(node);
        if any_list {
            self.dyn_key(first, name, true);
            let ty = match root_type(name) {
                Ty::Unknown => unknown_ty(name),
                ty => ty,
            };
            return self.array_of(s, e, ty);
        }
        let found = td.and_then(|t| t.find_elem(name, *hint).map(|i| (t, i)));
        match found {
            Some((t, i)) => {
                *seen |= bit(i);
                *hint = i + 1;
                let m = &t.members[i];
                if m.flags & REPEATED != 0 {
                    self.static_key(first, m.json[self.case]);
                    self.array_of(s, e, m.ty)
                } else if e - s == 1 {
                    self.static_key(first, m.json[self.case]);
                    self.value(node, m.ty)
                } else {
                    // Declared once but sent several times: keep them all.
                    self.dyn_key(first, name, true);
                    self.array_of(s, e, m.ty)
                }
            }
            None => {
                let ty = unknown_ty(name);
                if e - s == 1 {
                    self.dyn_key(first, name, false);
                    self.value(node, ty)
                } else {
                    self.dyn_key(first, name, true);
                    self.array_of(s, e, ty)
                }
            }
        }
    }

    /// `[v, …]` for the elements `kids[s..e]`.
    fn array_of(&mut self, s: usize, e: usize, ty: Ty) -> Result<(), ConvertError> {
        self.out.push(b'[');
        let mut first = true;
        for idx in s..e {
            let node = self.kids[idx].1 as usize;
            self.sep(&mut first);
            self.value(node, ty)?;
        }
        self.out.push(b']');
        Ok(())
    }

    /// Writes the value of element `el` of type `ty`.
    fn value(&mut self, el: usize, ty: Ty) -> Result<(), ConvertError> {
        let node = self.doc.nodes[el];
        if node.flags & NIL != 0 {
            self.out.extend_from_slice(b"null");
            return Ok(());
        }
        let leaf = node.flags & HAS_ELEM == 0 && !self.doc.has_attrs(el);
        match ty {
            Ty::Scalar(k) if leaf => self.scalar_elem(el, k),
            // A scalar that grew attributes or children in a newer EM: an
            // object, its text (if any) typed as the scalar was.
            Ty::Scalar(k) => {
                let text = (node.flags & HAS_TEXT != 0).then_some(k);
                self.object(el, None, false, text)
            }
            Ty::Obj(id) => self.object(el, Some(type_def(id)), false, None),
            Ty::Arr(id) => self.plain_array(el, type_def(id)),
            Ty::AnyList => self.object(el, None, true, None),
            Ty::Unknown if leaf => self.scalar_elem(el, Scalar::Str),
            Ty::Unknown => {
                let list = self.looks_like_list(el);
                self.object(el, None, list, None)
            }
        }
    }

    /// A plain array: the element's children, each converted by the item
    /// member of `td` (`Links` → `[{"Rel": …}, …]`).
    fn plain_array(&mut self, el: usize, td: &'static TypeDef) -> Result<(), ConvertError> {
        let doc = self.doc;
        self.out.push(b'[');
        let mut first = true;
        let end = doc.nodes[el].end as usize;
        let mut j = el + 1;
        while j < end {
            let n = doc.nodes[j];
            if n.kind == Kind::Elem {
                let name = doc.bytes(j);
                let ty = td
                    .find_elem(name, usize::from(td.n_attrs))
                    .map_or_else(|| unknown_ty(name), |i| td.members[i].ty);
                self.sep(&mut first);
                self.value(j, ty)?;
            }
            j = n.end as usize;
        }
        self.out.push(b']');
        Ok(())
    }

    /// Writes an attribute value as a scalar of kind `kind`.
    fn scalar_raw(&mut self, raw: &[u8], amp: bool, kind: Scalar) -> Result<(), ConvertError> {
        if amp {
            self.scratch.clear();
            doc::decode_into(raw, &mut self.scratch).map_err(ConvertError::Malformed)?;
            emit_scalar(self.out, self.rw, &self.scratch, kind);
        } else {
            emit_scalar(self.out, self.rw, raw, kind);
        }
        Ok(())
    }

    /// Writes the text of element `el` (all its text and CDATA runs) as a
    /// scalar of kind `kind`.
    fn scalar_elem(&mut self, el: usize, kind: Scalar) -> Result<(), ConvertError> {
        let doc = self.doc;
        let end = doc.nodes[el].end as usize;
        // Common case: one run without references, borrowed from the input.
        if end == el + 2 {
            let n = doc.nodes[el + 1];
            if n.kind == Kind::CData || (n.kind == Kind::Text && n.flags & doc::AMP == 0) {
                emit_scalar(self.out, self.rw, doc.bytes(el + 1), kind);
                return Ok(());
            }
        }
        self.scratch.clear();
        let mut j = el + 1;
        while j < end {
            let n = doc.nodes[j];
            match n.kind {
                Kind::Text if n.flags & doc::AMP != 0 => {
                    doc::decode_into(doc.bytes(j), &mut self.scratch)
                        .map_err(ConvertError::Malformed)?;
                }
                Kind::Text | Kind::CData => self.scratch.extend_from_slice(doc.bytes(j)),
                Kind::Elem => {}
            }
            j = n.end as usize;
        }
        emit_scalar(self.out, self.rw, &self.scratch, kind);
        Ok(())
    }
}

/// The type of an element no schema type declares: a number or boolean if
/// the schema and the docs agree on it for that name, else generic.
fn unknown_ty(name: &[u8]) -> Ty {
    if name == b"Links" {
        return links_type();
    }
    match name_scalar(name) {
        Some(k) => Ty::Scalar(k),
        None => Ty::Unknown,
    }
}

/// Writes `text` as a JSON scalar of kind `kind`. A number or boolean that
/// is empty is `null`; one that does not parse is kept as a string rather than
/// producing invalid JSON or dropping it.
fn emit_scalar(out: &mut Vec<u8>, rw: Option<&Rewriter<'_>>, text: &[u8], kind: Scalar) {
    match kind {
        Scalar::Str => {}
        Scalar::Num => {
            let t = trim_xml_ws(text);
            if t.is_empty() {
                out.extend_from_slice(b"null");
                return;
            }
            if number_into(out, t) {
                return;
            }
        }
        Scalar::Bool => {
            let t = trim_xml_ws(text);
            if t.is_empty() {
                out.extend_from_slice(b"null");
                return;
            }
            match parse_bool(t) {
                Some(true) => return out.extend_from_slice(b"true"),
                Some(false) => return out.extend_from_slice(b"false"),
                None => {}
            }
        }
    }
    out.push(b'"');
    match rw {
        Some(rw) => replace_with(rw, text, out, escape_into),
        None => escape_into(out, text),
    }
    out.push(b'"');
}
