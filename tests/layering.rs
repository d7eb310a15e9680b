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
