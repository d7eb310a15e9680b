//! The layering check: folders under `src/` use only the folders below them,
//! so a request's path through the code reads top to bottom and no change to
//! a low layer can depend on a high one.
//!
//! It reads every `crate::…` path (in `use` lines and inline, comments and
//! strings aside) and every `super::` chain that climbs to the crate root,
//! and fails naming file and line when a folder uses one it may not. A new
//! folder needs a rule here before it can be used.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of the crate and what it may use, from the top of
/// the stack (what starts the process) to the bottom (helpers that import
/// nothing). `lib` is `src/lib.rs`, the map; it declares everything.
const RULES: &[(&str, &[&str])] = &[
    // The commands: compose everything.
    (
        "cli",
        &[
            "gateway", "fleet", "em", "cache", "convert", "config", "ops", "sim", "secret",
            "digest",
        ],
    ),
    // The HTTP surface: client access, routing, rendering, errors to HTTP.
    (
        "gateway",
        &[
            "fleet", "em", "cache", "convert", "config", "ops", "secret", "digest",
        ],
    ),
    // The shared tier of fleet mode (Redis): implements the small interfaces
    // the cache, the EM session and client access define.
    (
        "fleet",
        &["em", "cache", "config", "ops", "secret", "digest"],
    ),
    // Enterprise Manager as a service: HTTP client, TLS trust, pooled session.
    ("em", &["config", "ops", "secret", "digest"]),
    // Keys, entries, flights; generic over what it stores.
    ("cache", &["config", "ops", "secret", "digest"]),
    // Metrics, logs, the shutdown signal.
    ("ops", &["config", "secret", "digest"]),
    // Settings, validated into typed values.
    ("config", &["secret", "digest"]),
    // XML to JSON, pure.
    ("convert", &[]),
    // The EM simulator stands in for EM: its own crate (crates/sim),
    // re-exported as `sim`; cargo keeps it from using the gateway.
    ("sim", &[]),
    // Helpers at the bottom.
    ("secret", &[]),
    ("digest", &["secret"]),
    // The binary's global allocator (installed by src/main.rs).
    ("allocator", &[]),
];

/// Inside `src/gateway/`: each module and the modules of the folder it may
/// use, from the top (what accepts connections) to the bottom. The
/// composition root (server, router, app) and the operator's pages (admin,
/// status, which report on everything) see the whole state, [`App`]; every
/// phase of a request below them gets only the part it uses (reads their
/// `ReadState`, client access its `AccessState`), so none of them may use
/// `app`, and none may use a module above it.
///
/// Back edges cut to get here (they made access, admin, app, reads, router
/// and status one circle): access used admin's token check (now in access);
/// admin and reads used the router's `Conn` and `ErrorMessage` (now in conn
/// and error); admin used the router's purges and status its metrics
/// snapshot (now in reads and status); reads and access used `App` (now
/// their own states).
///
/// [`App`]: emgate::gateway::app::App
#[rustfmt::skip]
const GATEWAY: &[(&str, &[&str])] = &[
    ("server", &["router", "admin", "status", "app", "reload", "access", "reads", "proxy",
                 "logon", "clients", "limit", "tasks", "warm", "conn", "listen_tls",
                 "request_id", "response"]),
    ("router", &["admin", "status", "app", "access", "reads", "restore_points", "proxy",
                 "tasks", "logon", "clients", "limit", "conn", "context", "host", "target",
                 "render", "response", "error", "heads", "request_id"]),
    ("admin", &["status", "app", "access", "reads", "restore_points", "conn", "target",
                "render", "response", "error"]),
    ("status", &["app", "reload", "reads", "target", "render", "response"]),
    ("app", &["reload", "access", "reads", "tasks", "limit", "request_id"]),
    // A reload replaces what the phases below read, through their states.
    ("reload", &["access", "reads", "clients", "listen_tls"]),
    // The phases of a request, on their own states.
    ("access", &["logon", "clients", "limit", "context", "target", "render", "response",
                 "error", "heads"]),
    ("warm", &["reads", "restore_points"]),
    ("reads", &["restore_points", "proxy", "context", "target", "render", "response", "error",
                "heads"]),
    ("restore_points", &["target"]),
    ("proxy", &["target", "render", "response", "error"]),
    ("logon", &["render", "response", "error"]),
    ("tasks", &[]),
    ("clients", &["heads"]),
    ("limit", &[]),
    // One request's context; the connection and its request id.
    ("context", &["conn", "render", "request_id"]),
    ("conn", &[]),
    ("listen_tls", &[]),
    ("request_id", &[]),
    // Rendering and errors, at the bottom.
    ("error", &["host", "target", "render", "response"]),
    ("render", &["host", "response"]),
    ("host", &["response", "heads"]),
    ("target", &[]),
    ("response", &["heads"]),
    // The request's headers, read once at the edge.
    ("heads", &[]),
];

/// Inside the EM simulator (`crates/sim/src/`), the same. Back edges cut:
/// the query service used the request handler's percent-decoding (now the
/// query service's, which the handler uses); the handler used the
/// listener's per-connection context (now in `conn`, below both).
#[rustfmt::skip]
const SIM: &[(&str, &[&str])] = &[
    ("server", &["handler", "conn", "state", "tls"]),
    ("handler", &["query", "jobs", "report", "resources", "state", "data", "xml", "json",
                  "model", "time", "conn"]),
    ("query", &["jobs", "resources", "state", "data", "model", "time"]),
    ("jobs", &["resources", "state", "data", "model", "time"]),
    ("report", &["data", "model", "time"]),
    ("resources", &["data", "model", "time"]),
    ("state", &["data"]),
    ("data", &["time"]),
    ("xml", &["model"]),
    ("json", &["model"]),
    ("model", &[]),
    ("time", &[]),
    ("conn", &[]),
    ("tls", &[]),
    ("tests", &[]),
];

fn rules() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    RULES
        .iter()
        .map(|(m, allowed)| (*m, allowed.iter().copied().collect()))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source with comments and string and char literals blanked out
/// (newlines kept, so line numbers stay right).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, s: &[u8]| {
        out.extend(s.iter().map(|&c| if c == b'\n' { b'\n' } else { b' ' }))
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            let mut j = 0;
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if rest.starts_with(b"r\"") || rest.starts_with(b"r#") || rest.starts_with(b"br") {
            let start = if rest[0] == b'b' { 1 } else { 0 };
            let hashes = rest[start + 1..].iter().take_while(|&&c| c == b'#').count();
            if rest.get(start + 1 + hashes) != Some(&b'"') {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let body = start + 2 + hashes;
            let end = rest[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| body + p + close.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let end = if rest.get(1) == Some(&b'\\') {
                rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
            } else if rest.get(2) == Some(&b'\'') {
                Some(3)
            } else {
                None
            };
            match end {
                Some(end) => {
                    blank(&mut out, &rest[..end]);
                    i += end;
                }
                None => {
                    out.push(b'\'');
                    i += 1;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level names of a brace group `{a, b::c, d::{e}}` starting at `s`.
fn brace_names(s: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut depth = 0;
    let mut expect_name = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    expect_name = true;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expect_name = true,
            c if depth == 1 && expect_name && (c.is_ascii_alphabetic() || c == '_') => {
                names.push(ident_at(&s[i..]));
                expect_name = false;
            }
            _ => {}
        }
    }
    names
}

/// The crate's top-level modules a file's code names, with line numbers.
fn uses(code: &str, depth: usize) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let line_of = |pos: usize| code[..pos].matches('\n').count() + 1;
    let is_boundary = |pos: usize| {
        pos == 0 || {
            let c = code.as_bytes()[pos - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        }
    };
    for (pos, _) in code.match_indices("crate::") {
        if !is_boundary(pos) || code[..pos].ends_with('$') {
            continue;
        }
        let after = &code[pos + "crate::".len()..];
        if after.starts_with('{') {
            for name in brace_names(after) {
                found.push((line_of(pos), name.to_string()));
            }
        } else {
            found.push((line_of(pos), ident_at(after).to_string()));
        }
    }
    // `super::super::x` from deep enough reaches the crate root.
    for (pos, _) in code.match_indices("super::") {
        if !is_boundary(pos) {
            continue;
        }
        let mut n = 0;
        let mut rest = &code[pos..];
        while let Some(r) = rest.strip_prefix("super::") {
            n += 1;
            rest = r;
        }
        if n >= depth && depth > 0 {
            found.push((line_of(pos), ident_at(rest).to_string()));
        }
    }
    found
}

/// `src/gateway/server.rs` → ("gateway", 2): its folder and how many modules deep it sits.
fn module_of(src: &Path, file: &Path) -> Option<(String, usize)> {
    let rel = file.strip_prefix(src).ok()?;
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let top = parts[0].trim_end_matches(".rs").to_string();
    let depth = if parts.last().is_some_and(|l| l == "mod.rs") {
        parts.len() - 1
    } else {
        parts.len()
    };
    Some((top, depth))
}

fn violations(src: &Path) -> Vec<String> {
    let rules = rules();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let Some((top, depth)) = module_of(src, &file) else {
            continue;
        };
        let shown = format!("src/{}", file.strip_prefix(src).unwrap().display());
        if top == "main" || top == "lib" {
            continue;
        }
        let Some(allowed) = rules.get(top.as_str()) else {
            out.push(format!(
                "{shown}: folder `{top}` has no layering rule; add it to RULES in tests/layering.rs"
            ));
            continue;
        };
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        for (line, used) in uses(&code, depth) {
            if used == top || used == "self" || used.is_empty() {
                continue;
            }
            if !allowed.contains(used.as_str()) {
                let may: Vec<&str> = allowed.iter().copied().collect();
                out.push(format!(
                    "{shown}:{line}: `{top}` may not use `crate::{used}` ({top} may use: {})",
                    if may.is_empty() {
                        "nothing else of the crate".to_string()
                    } else {
                        may.join(", ")
                    }
                ));
            }
        }
    }
    out
}

/// The modules of one folder (the `.rs` files directly in `dir`) that each
/// file uses, by `{prefix}name` (`crate::gateway::` inside the gateway,
/// `crate::` inside the simulator's crate), `{prefix}{a, b}` or `super::name`,
/// against `table`; `mod.rs` and `lib.rs` (the folder's map) declare all.
fn folder_violations(
    dir: &Path,
    shown: &str,
    prefix: &str,
    table: &[(&str, &[&str])],
) -> Vec<String> {
    let rules: BTreeMap<&str, BTreeSet<&str>> = table
        .iter()
        .map(|(m, allowed)| (*m, allowed.iter().copied().collect()))
        .collect();
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for file in files {
        let module = file.file_stem().unwrap().to_string_lossy().into_owned();
        if module == "mod" || module == "lib" {
            continue;
        }
        let shown_file = format!("{shown}/{module}.rs");
        let Some(allowed) = rules.get(module.as_str()) else {
            out.push(format!(
                "{shown_file}: module `{module}` has no layering rule; add it in tests/layering.rs"
            ));
            continue;
        };
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        let line_of = |pos: usize| code[..pos].matches('\n').count() + 1;
        let mut used = Vec::new();
        for needle in [prefix, "super::"] {
            for (pos, _) in code.match_indices(needle) {
                let before = code[..pos].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let after = &code[pos + needle.len()..];
                if after.starts_with('{') {
                    used.extend(brace_names(after).into_iter().map(|n| (line_of(pos), n)));
                } else {
                    used.push((line_of(pos), ident_at(after)));
                }
            }
        }
        for (line, name) in used {
            if name == module || !rules.contains_key(name) {
                continue;
            }
            if !allowed.contains(name) {
                out.push(format!(
                    "{shown_file}:{line}: `{module}` may not use `{name}` (it may use: {})",
                    allowed.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    out
}

fn acyclic(table: &[(&str, &[&str])]) -> Result<(), Vec<String>> {
    let mut remaining: BTreeMap<&str, BTreeSet<&str>> = table
        .iter()
        .map(|(m, allowed)| (*m, allowed.iter().copied().collect()))
        .collect();
    while !remaining.is_empty() {
        let next = remaining
            .iter()
            .find(|(_, deps)| deps.iter().all(|d| !remaining.contains_key(d)))
            .map(|(m, _)| *m);
        match next {
            Some(m) => {
                remaining.remove(m);
            }
            None => return Err(remaining.keys().map(|k| k.to_string()).collect()),
        }
    }
    Ok(())
}

#[test]
fn the_gateways_modules_use_only_those_below_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gateway");
    let found = folder_violations(&dir, "src/gateway", "crate::gateway::", GATEWAY);
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
    assert_eq!(
        acyclic(GATEWAY),
        Ok(()),
        "the gateway's rules form a circle"
    );
}

#[test]
fn the_simulators_modules_use_only_those_below_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/sim/src");
    let found = folder_violations(&dir, "crates/sim/src", "crate::", SIM);
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
    assert_eq!(acyclic(SIM), Ok(()), "the simulator's rules form a circle");
}

#[test]
fn the_folder_check_sees_a_back_edge_in_each_form() {
    let dir = std::env::temp_dir().join(format!("emgate-layering-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let table: &[(&str, &[&str])] = &[("top", &["low"]), ("low", &[])];
    std::fs::write(dir.join("top.rs"), "use super::low::x;\n").unwrap();
    for (code, line) in [
        (
            "// crate::gateway::top in a comment\nuse crate::gateway::top::y;\n",
            2,
        ),
        ("use crate::gateway::{top, other};\n", 1),
        ("fn f() { super::top::z(); }\n", 1),
    ] {
        std::fs::write(dir.join("low.rs"), code).unwrap();
        let found = folder_violations(&dir, "x", "crate::gateway::", table);
        assert_eq!(found.len(), 1, "{code}: {found:?}");
        assert!(
            found[0].starts_with(&format!("x/low.rs:{line}: `low` may not use `top`")),
            "{found:?}"
        );
    }
    assert!(acyclic(&[("a", &["b"]), ("b", &["a"])]).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn folders_use_only_the_folders_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "layering broken ({} uses):\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn the_rules_have_no_circle() {
    // Kahn's algorithm: if every module can be ordered, the graph is acyclic.
    let rules = rules();
    let mut remaining = rules.clone();
    while !remaining.is_empty() {
        let Some(next) = remaining
            .iter()
            .find(|(_, deps)| deps.iter().all(|d| !remaining.contains_key(d)))
            .map(|(m, _)| *m)
        else {
            panic!(
                "the layering rules form a circle among: {:?}",
                remaining.keys()
            );
        };
        remaining.remove(next);
    }
    for (m, deps) in &rules {
        for d in deps {
            assert!(rules.contains_key(d), "{m} may use unknown module {d}");
        }
    }
}

#[test]
fn the_check_sees_what_it_must() {
    // The check itself: a forbidden use in each form it must catch.
    let code = code_only(
        "use crate::gateway::App;\n\
         // crate::em in a comment does not count\n\
         let s = \"crate::sim in a string neither\";\n\
         fn f<'a>(x: &'a str) { crate::ops::metrics::x(); }\n\
         use crate::{config::X, em::{a, b}};\n\
         use super::super::sim;\n",
    );
    let found: Vec<String> = uses(&code, 2)
        .into_iter()
        .map(|(l, m)| format!("{l}:{m}"))
        .collect();
    assert_eq!(
        found,
        ["1:gateway", "4:ops", "5:config", "5:em", "6:sim"],
        "{code}"
    );
}

#[test]
fn the_map_in_lib_rs_names_every_top_level_module() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("src/lib.rs");
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .collect();
    assert!(modules.len() > 5, "{modules:?}");
    let map: String = lib
        .lines()
        .filter(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let missing: Vec<&&str> = modules
        .iter()
        .filter(|m| !map.contains(&format!("[`{m}`]")))
        .collect();
    assert!(
        missing.is_empty(),
        "src/lib.rs's map leaves out {missing:?}"
    );
}
