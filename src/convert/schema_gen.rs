//! Generator of `schema_data.rs`, and the test that keeps it current.
//!
//! Inputs (in `tests/data/em/`, whose README says where each file comes
//! from):
//! - `RestAPI.xsd`: every complex type with its inherited members flattened
//!   in; which elements repeat (`maxOccurs` above one, on the element or on an
//!   enclosing sequence/choice); which values are numbers (`xs:int`, `xs:long`,
//!   `xs:decimal`, `xs:double`, … and simple types restricting them) or
//!   booleans; the global elements (document roots).
//! - `json-facts.md`: the 50 members of a query's `Entities` (the schema's
//!   `Passwords` and `Credentials` stay known but are not sent as `null`), and
//!   `BackupServer.WcfPort`, a number the schema lacks.
//! - `docs/*.md`: the parameter tables give the scalar type of newer members,
//!   and the XML examples give the item element of newer lists (`NASJobs`
//!   holds `NASJob`), so those lists become typed lists too.
//!
//! For members no type declares where they appear, `NAME_SCALARS` gives the
//! scalar type of a name that is a number (or a boolean) in every schema
//! declaration and every docs table that mentions it.
//!
//! `cargo test schema_table` fails when the checked-in table differs from
//! what this produces; `EMGATE_REGEN_SCHEMA=1 cargo test schema_table`
//! rewrites it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;

use quick_xml::events::Event;
use quick_xml::Reader;

use super::case::{camel, plural};
use super::schema::Scalar;

/// EM's schema, samples and reference pages, in the repository.
fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/em")
}

fn read(rel: &str) -> String {
    let p = data_dir().join(rel);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    s.trim_start_matches('\u{feff}').to_string()
}

// ---------------------------------------------------------------- XML tree

#[derive(Debug)]
struct XNode {
    name: String,
    attrs: Vec<(String, String)>,
    kids: Vec<XNode>,
}

impl XNode {
    fn local(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
    fn child(&self, local: &str) -> Option<&XNode> {
        self.kids.iter().find(|k| k.local() == local)
    }
}

fn parse_tree(xml: &str) -> XNode {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<XNode> = vec![XNode {
        name: String::new(),
        attrs: vec![],
        kids: vec![],
    }];
    let node = |e: &quick_xml::events::BytesStart<'_>| XNode {
        name: String::from_utf8(e.name().as_ref().to_vec()).unwrap(),
        attrs: e
            .attributes()
            .map(|a| {
                let a = a.unwrap();
                (
                    String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                    a.unescape_value().unwrap().into_owned(),
                )
            })
            .collect(),
        kids: vec![],
    };
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) => stack.push(node(&e)),
            Event::Empty(e) => stack.last_mut().unwrap().kids.push(node(&e)),
            Event::End(_) => {
                let n = stack.pop().unwrap();
                stack.last_mut().unwrap().kids.push(n);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let mut top = stack.pop().unwrap();
    top.kids.pop().unwrap()
}

// ---------------------------------------------------------------- model

#[derive(Clone, Debug, PartialEq)]
enum GTy {
    Scalar(Scalar),
    Complex(String),
    AnyList,
    Unknown,
}

#[derive(Clone, Debug)]
struct GMember {
    xml: String,
    ty: GTy,
    repeated: bool,
    nullable: bool,
}

#[derive(Clone, Debug, Default)]
struct GType {
    attrs: Vec<GMember>,
    elems: Vec<GMember>,
    text: Option<Scalar>,
    derived: bool,
}

impl GType {
    /// A plain JSON array: no base type, attributes or text, one repeated
    /// element (`LinkListType`, `StringListType`). Typed lists extend
    /// `ListType` and keep their wrapper object.
    fn plain(&self) -> bool {
        !self.derived
            && self.attrs.is_empty()
            && self.text.is_none()
            && self.elems.len() == 1
            && self.elems[0].repeated
    }
}

struct Xsd<'x> {
    simple: HashMap<String, String>,
    complex: HashMap<String, &'x XNode>,
    types: BTreeMap<String, GType>,
    globals: BTreeMap<String, GTy>,
    /// Every local element declaration: name → types seen.
    local_types: BTreeMap<String, BTreeSet<String>>,
}

fn builtin_kind(name: &str) -> Scalar {
    match name.trim_start_matches("xs:") {
        "int" | "long" | "short" | "byte" | "integer" | "decimal" | "double" | "float"
        | "unsignedLong" | "unsignedInt" | "unsignedShort" | "unsignedByte"
        | "nonNegativeInteger" | "positiveInteger" | "negativeInteger" | "nonPositiveInteger" => {
            Scalar::Num
        }
        "boolean" => Scalar::Bool,
        _ => Scalar::Str,
    }
}

fn many(n: &XNode) -> bool {
    match n.attr("maxOccurs") {
        Some("unbounded") => true,
        Some(v) => v.parse::<u32>().map(|v| v > 1).unwrap_or(false),
        None => false,
    }
}

impl<'x> Xsd<'x> {
    fn new(root: &'x XNode) -> Self {
        let mut x = Xsd {
            simple: HashMap::new(),
            complex: HashMap::new(),
            types: BTreeMap::new(),
            globals: BTreeMap::new(),
            local_types: BTreeMap::new(),
        };
        for k in &root.kids {
            match k.local() {
                "simpleType" => {
                    let base = k
                        .child("restriction")
                        .and_then(|r| r.attr("base"))
                        .expect("simpleType restriction");
                    x.simple.insert(k.attr("name").unwrap().into(), base.into());
                }
                "complexType" => {
                    x.complex.insert(k.attr("name").unwrap().into(), k);
                }
                _ => {}
            }
        }
        let names: Vec<String> = x.complex.keys().cloned().collect();
        for n in names {
            let node = x.complex[&n];
            x.build(&n, node);
        }
        for k in &root.kids {
            if k.local() == "element" {
                let name = k.attr("name").unwrap().to_string();
                let ty = x.element_type(k, "");
                x.globals.insert(name, ty);
            }
        }
        x
    }

    fn scalar_of(&self, name: &str) -> Option<Scalar> {
        if name.starts_with("xs:") {
            return Some(builtin_kind(name));
        }
        let base = self.simple.get(name)?;
        if base.starts_with("xs:") {
            Some(builtin_kind(base))
        } else {
            self.scalar_of(base)
        }
    }

    fn resolve(&self, type_name: &str) -> GTy {
        if let Some(k) = self.scalar_of(type_name) {
            GTy::Scalar(k)
        } else if self.complex.contains_key(type_name) {
            GTy::Complex(type_name.into())
        } else {
            panic!("unknown type {type_name}")
        }
    }

    fn element_type(&mut self, e: &'x XNode, owner: &str) -> GTy {
        let name = e.attr("name").unwrap();
        if let Some(t) = e.attr("type") {
            self.resolve(t)
        } else if let Some(ct) = e.child("complexType") {
            let anon = if owner.is_empty() {
                name.to_string()
            } else {
                format!("{owner}.{name}")
            };
            self.build(&anon, ct);
            GTy::Complex(anon)
        } else if let Some(st) = e.child("simpleType") {
            let base = st
                .child("restriction")
                .and_then(|r| r.attr("base"))
                .unwrap();
            GTy::Scalar(self.scalar_of(base).unwrap_or(Scalar::Str))
        } else {
            GTy::Unknown
        }
    }

    fn build(&mut self, name: &str, ct: &'x XNode) {
        if self.types.contains_key(name) {
            return;
        }
        let mut t = GType::default();
        for c in &ct.kids {
            match c.local() {
                "complexContent" => {
                    let ext = c.child("extension").expect("complexContent/extension");
                    let base = ext.attr("base").unwrap();
                    let base_node = self.complex[base];
                    self.build(base, base_node);
                    t = self.types[base].clone();
                    t.derived = true;
                    self.content(ext, name, &mut t, false);
                }
                "simpleContent" => {
                    let ext = c.child("extension").expect("simpleContent/extension");
                    t.text = Some(self.scalar_of(ext.attr("base").unwrap()).unwrap());
                    self.content(ext, name, &mut t, false);
                }
                _ => {}
            }
        }
        self.content(ct, name, &mut t, false);
        self.types.insert(name.to_string(), t);
    }

    /// Particles and attributes directly under `n`.
    fn content(&mut self, n: &'x XNode, owner: &str, t: &mut GType, rep: bool) {
        for c in &n.kids {
            match c.local() {
                "sequence" | "choice" | "all" => {
                    let r = rep || many(c);
                    self.content(c, owner, t, r);
                }
                "element" => {
                    let xml = c.attr("name").unwrap().to_string();
                    let ty = self.element_type(c, owner);
                    if let GTy::Complex(tn) = &ty {
                        self.local_types
                            .entry(xml.clone())
                            .or_default()
                            .insert(tn.clone());
                    }
                    t.elems.push(GMember {
                        xml,
                        ty,
                        repeated: rep || many(c),
                        nullable: true,
                    });
                }
                "attribute" => {
                    let ty = c
                        .attr("type")
                        .and_then(|tn| self.scalar_of(tn))
                        .unwrap_or(Scalar::Str);
                    t.attrs.push(GMember {
                        xml: c.attr("name").unwrap().into(),
                        ty: GTy::Scalar(ty),
                        repeated: false,
                        nullable: true,
                    });
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------- docs

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DocCat {
    Num,
    Bool,
    Other,
}

fn doc_category(ty: &str) -> DocCat {
    match ty {
        "Int" | "Int16" | "Int32" | "Int64" | "Integer" | "Long" | "ULong" | "UInt" | "UInt16"
        | "UInt32" | "UInt64" | "Short" | "UShort" | "Byte" | "Double" | "Decimal" | "Float"
        | "TimeSpan" => DocCat::Num,
        "Boolean" | "Bool" => DocCat::Bool,
        _ => DocCat::Other,
    }
}

struct Docs {
    /// Member name → categories of every documented use.
    params: BTreeMap<String, BTreeSet<DocCat>>,
    /// Every element name in the XML examples.
    elements: BTreeSet<String>,
    /// Root elements of the XML examples.
    roots: BTreeSet<String>,
}

fn is_ident(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn read_docs() -> Docs {
    let dir = data_dir().join("docs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    let mut docs = Docs {
        params: BTreeMap::new(),
        elements: BTreeSet::new(),
        roots: BTreeSet::new(),
    };
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut in_table = false;
        for line in text.lines() {
            if line.starts_with("| Element | Type |")
                || line.starts_with("| Parameter | Type | Description |")
            {
                in_table = true;
                continue;
            }
            if in_table {
                if line.starts_with("| ---") {
                    continue;
                }
                if !line.starts_with('|') {
                    in_table = false;
                    continue;
                }
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                if cells.len() > 3 && is_ident(cells[1]) {
                    let ty: String = cells[2].chars().filter(|c| !c.is_whitespace()).collect();
                    docs.params
                        .entry(cells[1].to_string())
                        .or_default()
                        .insert(doc_category(&ty));
                }
            }
        }
        // XML examples: element names, and roots (they carry EM's namespace).
        let b = text.as_bytes();
        let mut i = 0;
        while let Some(p) = memchr::memchr(b'<', &b[i..]) {
            let s = i + p + 1;
            let mut e = s;
            while e < b.len() && (b[e].is_ascii_alphanumeric() || b[e] == b'_') {
                e += 1;
            }
            if e > s && b[s].is_ascii_alphabetic() {
                let name = &text[s..e];
                docs.elements.insert(name.to_string());
                if text[e..].starts_with(" xmlns=\"http://www.veeam.com/ent/v1.0\"") {
                    docs.roots.insert(name.to_string());
                }
            }
            i = s;
        }
    }
    docs
}

/// The 50 members of `Entities` listed in json-facts.md.
fn entities_members() -> Vec<String> {
    let facts = read("json-facts.md");
    let line = facts
        .lines()
        .find(|l| l.contains("`Jobs`, `FailoverPlans`"))
        .expect("Entities list in json-facts.md");
    let names: Vec<String> = line
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert_eq!(names.len(), 50, "json-facts.md lists 50 Entities members");
    names
}

// ---------------------------------------------------------------- the table

struct Table {
    types: BTreeMap<String, GType>,
    roots: BTreeMap<String, GTy>,
    name_scalars: BTreeMap<String, Scalar>,
}

fn build_table() -> Table {
    let xsd_text = read("RestAPI.xsd");
    let tree = parse_tree(&xsd_text);
    let mut x = Xsd::new(&tree);
    let docs = read_docs();

    // The item type of a list whose items are `item`: a global element's
    // type, else the one type every local declaration agrees on.
    let item_ty = |x: &Xsd<'_>, item: &str| -> GTy {
        if let Some(t) = x.globals.get(item) {
            return t.clone();
        }
        match x.local_types.get(item) {
            Some(set) if set.len() == 1 => GTy::Complex(set.iter().next().unwrap().clone()),
            _ => GTy::Unknown,
        }
    };
    // Lists newer than the schema: `L` whose item `X` (plural(X) == L) is
    // named in the schema or the docs' examples.
    let mut known_names: BTreeSet<String> = docs.elements.clone();
    known_names.extend(x.local_types.keys().cloned());
    known_names.extend(x.globals.keys().cloned());
    for t in x.types.values() {
        known_names.extend(t.elems.iter().map(|m| m.xml.clone()));
    }
    let singular_of = |list: &str| -> Option<String> {
        known_names
            .iter()
            .find(|n| n.as_str() != list && plural(n) == list)
            .cloned()
    };
    let mut synthetic: BTreeMap<String, GType> = BTreeMap::new();
    let mut list_of = |x: &Xsd<'_>, list: &str| -> GTy {
        if let Some(t) = x.globals.get(list) {
            return t.clone();
        }
        match singular_of(list) {
            Some(item) => {
                let name = format!("{list}(list)");
                synthetic.insert(
                    name.clone(),
                    GType {
                        attrs: vec![],
                        elems: vec![GMember {
                            ty: item_ty(x, &item),
                            xml: item,
                            repeated: true,
                            nullable: true,
                        }],
                        text: None,
                        derived: true,
                    },
                );
                GTy::Complex(name)
            }
            None => GTy::AnyList,
        }
    };

    // Entities: the 50 members EM sends, each null unless filled.
    let declared = x.types["EntitiesType"].elems.clone();
    let mut elems = Vec::new();
    let mut newer: BTreeSet<String> = docs.roots.clone();
    for name in entities_members() {
        let ty = match declared.iter().find(|m| m.xml == name) {
            Some(m) => m.ty.clone(),
            None => {
                newer.insert(name.clone());
                list_of(&x, &name)
            }
        };
        elems.push(GMember {
            xml: name,
            ty,
            repeated: false,
            nullable: true,
        });
    }
    for m in declared {
        if !elems.iter().any(|e| e.xml == m.xml) {
            // Declared (Passwords, Credentials) but not sent by EM 12.
            elems.push(GMember {
                nullable: false,
                ..m
            });
        }
    }
    x.types.get_mut("EntitiesType").unwrap().elems = elems;

    // BackupServer.WcfPort: a number (json-facts.md; the docs say UShort).
    x.types
        .get_mut("BackupServerEntityType")
        .unwrap()
        .elems
        .push(GMember {
            xml: "WcfPort".into(),
            ty: GTy::Scalar(Scalar::Num),
            repeated: false,
            nullable: true,
        });

    // Roots: the schema's global elements, then the docs' newer list roots
    // and the newer Entities lists (also served as collections).
    let mut roots = x.globals.clone();
    for r in newer {
        if roots.contains_key(&r) {
            continue;
        }
        if let Some(ty @ GTy::Complex(_)) = Some(list_of(&x, &r)) {
            roots.insert(r, ty);
        }
    }
    let mut types = x.types;
    types.extend(synthetic);

    // The scalar type of a member name, for members no type declares where
    // they appear (newer EM versions move members into new wrappers): names
    // that are numbers or booleans wherever the schema declares them and
    // wherever the docs document them, with no disagreement.
    let mut xsd_kinds: BTreeMap<String, BTreeSet<DocCat>> = BTreeMap::new();
    for t in types.values() {
        for m in t.attrs.iter().chain(&t.elems) {
            let k = match &m.ty {
                GTy::Scalar(Scalar::Num) => DocCat::Num,
                GTy::Scalar(Scalar::Bool) => DocCat::Bool,
                _ => DocCat::Other,
            };
            xsd_kinds.entry(m.xml.clone()).or_default().insert(k);
        }
    }
    let mut name_scalars = BTreeMap::new();
    let names: BTreeSet<&String> = xsd_kinds.keys().chain(docs.params.keys()).collect();
    for name in names {
        let mut cats: BTreeSet<DocCat> = BTreeSet::new();
        cats.extend(xsd_kinds.get(name).into_iter().flatten());
        cats.extend(docs.params.get(name).into_iter().flatten());
        let kind = match cats.iter().collect::<Vec<_>>().as_slice() {
            [DocCat::Num] => Scalar::Num,
            [DocCat::Bool] => Scalar::Bool,
            _ => continue,
        };
        name_scalars.insert(name.clone(), kind);
    }

    Table {
        types,
        roots,
        name_scalars,
    }
}

fn ty_expr(t: &Table, ids: &BTreeMap<&str, usize>, ty: &GTy) -> String {
    match ty {
        GTy::Scalar(Scalar::Str) => "STR".into(),
        GTy::Scalar(Scalar::Num) => "NUM".into(),
        GTy::Scalar(Scalar::Bool) => "BOOL".into(),
        GTy::AnyList => "Ty::AnyList".into(),
        GTy::Unknown => "Ty::Unknown".into(),
        GTy::Complex(n) => {
            let id = ids[n.as_str()];
            if t.types[n].plain() {
                format!("Ty::Arr({id})")
            } else {
                format!("Ty::Obj({id})")
            }
        }
    }
}

fn generate() -> String {
    let t = build_table();
    let ids: BTreeMap<&str, usize> = t
        .types
        .keys()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut s = String::new();
    s.push_str(
        "// @generated by src/convert/schema_gen.rs from tests/data/em/RestAPI.xsd,\n\
         // json-facts.md and docs/*.md. Do not edit; regenerate with\n\
         // `EMGATE_REGEN_SCHEMA=1 cargo test schema_table`.\n\
         //\n\
         // m(xml name, pascal JSON name, camel JSON name, type, flags): R = repeated\n\
         // (plural name, array), O = written as null / [] when absent.\n\n\
         use super::schema::{m, Scalar, Ty, TypeDef, BOOL, NULLABLE as O, NUM, REPEATED as R, STR};\n\n\
         const RO: u8 = R | O;\n\n",
    );
    let _ = writeln!(
        s,
        "pub(super) static TYPES: [TypeDef; {}] = [",
        t.types.len()
    );
    for (id, (name, ty)) in t.types.iter().enumerate() {
        let members: Vec<&GMember> = ty.attrs.iter().chain(&ty.elems).collect();
        assert!(members.len() <= 128, "{name}: more than 128 members");
        let mut json_names = BTreeSet::new();
        let text = match ty.text {
            None => "None".to_string(),
            Some(k) => format!("Some(Scalar::{k:?})"),
        };
        let _ = writeln!(
            s,
            "    /* {id} */ TypeDef {{ name: \"{name}\", n_attrs: {}, text: {text}, members: &[",
            ty.attrs.len()
        );
        for mbr in members {
            let pascal = if mbr.repeated {
                plural(&mbr.xml)
            } else {
                mbr.xml.clone()
            };
            assert!(
                json_names.insert(pascal.clone()),
                "{name}: two members named {pascal}"
            );
            assert!(is_ident(&mbr.xml), "{name}: odd name {}", mbr.xml);
            let flags = match (mbr.repeated, mbr.nullable) {
                (true, true) => "RO",
                (true, false) => "R",
                (false, true) => "O",
                (false, false) => "0",
            };
            let _ = writeln!(
                s,
                "        m(\"{}\", \"{pascal}\", \"{}\", {}, {flags}),",
                mbr.xml,
                camel(&pascal),
                ty_expr(&t, &ids, &mbr.ty)
            );
        }
        s.push_str("    ] },\n");
    }
    s.push_str("];\n\n");
    let _ = writeln!(
        s,
        "pub(super) static ROOTS: [(&str, Ty); {}] = [",
        t.roots.len()
    );
    for (name, ty) in &t.roots {
        let _ = writeln!(s, "    (\"{name}\", {}),", ty_expr(&t, &ids, ty));
    }
    s.push_str("];\n\n");
    let _ = writeln!(
        s,
        "pub(super) static NAME_SCALARS: [(&str, Scalar); {}] = [",
        t.name_scalars.len()
    );
    for (name, k) in &t.name_scalars {
        let _ = writeln!(s, "    (\"{name}\", Scalar::{k:?}),");
    }
    s.push_str("];\n");
    s
}

#[test]
fn schema_table_is_current() {
    let want = generate();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/convert/schema_data.rs");
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        if std::env::var_os("EMGATE_REGEN_SCHEMA").is_some() {
            std::fs::write(&path, &want).unwrap();
            eprintln!("rewrote {}", path.display());
        } else {
            panic!(
                "{} is out of date with the schema sources; run \
                 `EMGATE_REGEN_SCHEMA=1 cargo test schema_table`",
                path.display()
            );
        }
    }
}
