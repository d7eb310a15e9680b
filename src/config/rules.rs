//! Cache rules (see README, "Cache rules"): which EM read paths the gateway caches and for
//! how long. A rule names an EM path template; the first rule whose template
//! matches a request's path decides its lifetimes.
//!
//! Templates are parsed here, once, into [`PathTemplate`]s: `/api/` and then
//! segments that are literals (matched ignoring ASCII case, as EM does),
//! `{id}` (a UUID), `*` (any one segment) or, last, `**` (the rest of the
//! path, possibly nothing).

use std::fmt;
use std::time::Duration;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches this text, ignoring ASCII case (held in lower case).
    Literal(String),
    /// Matches a UUID.
    Id,
    /// Matches any one segment.
    Any,
    /// Matches the rest of the path (zero or more segments).
    Rest,
}

/// A parsed EM path template (the segments after `/api`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// The segments after `/api`.
    segments: Vec<Segment>,
    /// As written, for messages and `check-config`.
    text: String,
}

impl PathTemplate {
    /// Parses a template; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<PathTemplate, String> {
        let rest = text
            .strip_prefix("/api/")
            .ok_or_else(|| format!("{text:?} must start with /api/"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(format!("{text:?} names no resource under /api/"));
        }
        let mut segments = Vec::new();
        let parts: Vec<&str> = rest.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let seg = match *part {
                "" => return Err(format!("{text:?} has an empty segment")),
                "{id}" => Segment::Id,
                "*" => Segment::Any,
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => return Err(format!("{text:?}: ** may only be the last segment")),
                p if p.starts_with('{') => {
                    return Err(format!(
                        "{text:?}: unknown placeholder {p}; use {{id}}, * or **"
                    ))
                }
                p if p.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
                }) && p != "."
                    && p != ".." =>
                {
                    Segment::Literal(p.to_ascii_lowercase())
                }
                p => {
                    return Err(format!(
                        "{text:?}: segment {p:?} may hold only letters, digits, '-', '.', '_', '~' \
                         (or be {{id}}, * or **)"
                    ))
                }
            };
            segments.push(seg);
        }
        Ok(PathTemplate {
            segments,
            text: text.to_string(),
        })
    }

    /// The segments after `/api`.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether decoded path segments (after `/api`) match.
    pub fn matches<'a>(&self, path: impl IntoIterator<Item = &'a str>) -> bool {
        let mut path = path.into_iter();
        for seg in &self.segments {
            if let Segment::Rest = seg {
                return true;
            }
            let Some(s) = path.next() else {
                return false;
            };
            let fits = match seg {
                Segment::Literal(l) => eq_lowered(s, l),
                Segment::Id => s.len() == 36 && uuid::Uuid::try_parse(s).is_ok(),
                Segment::Any | Segment::Rest => true,
            };
            if !fits {
                return false;
            }
        }
        path.next().is_none()
    }
}

/// Whether `s` is `lower` (in ASCII lower case) but for ASCII case: what
/// `str::eq_ignore_ascii_case` says, with one side lowered already and no
/// branch a byte (a first request's rule is found by this, once a rule).
fn eq_lowered(s: &str, lower: &str) -> bool {
    s.len() == lower.len()
        && (s.bytes().zip(lower.bytes()))
            .fold(true, |same, (a, b)| same & (LOWER[usize::from(a)] == b))
}

/// Every byte in ASCII lower case: one load a byte.
static LOWER: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = (c as u8).to_ascii_lowercase();
        c += 1;
    }
    table
};

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOrigin {
    /// `[[cache.rules]]` in the settings file.
    File,
    /// The vmRestorePoints route, always there.
    BuiltIn,
    /// The default rule set (`EMGATE_CACHE_DEFAULT_RULES`).
    Default,
}

/// One cache rule, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its name: the `rule` label of the cache metrics.
    pub name: String,
    /// The EM path template it covers.
    pub path: PathTemplate,
    /// Freshness.
    pub ttl: Duration,
    /// After the TTL, how long a stale copy is served at once while one
    /// background refresh runs.
    pub stale_while_revalidate: Duration,
    /// After the TTL, how long a copy may be served while EM fails.
    pub stale_if_error: Duration,
    /// Where it comes from.
    pub origin: RuleOrigin,
}

/// The built-in rule of the vmRestorePoints route.
pub const VM_RESTORE_POINTS: &str = "vm_restore_points";
/// Its template.
pub const VM_RESTORE_POINTS_PATH: &str = "/api/restorePoints/{id}/vmRestorePoints";

/// The default rules: the read paths dashboards and exporters poll, each
/// with the reason for its lifetimes (the README lists them).
/// `(name, path, ttl, stale_while_revalidate)`.
pub const DEFAULT_RULES: &[(&str, &str, &str, &str)] = &[
    // EM computes report summaries over the whole estate (seconds on a large
    // one); their figures move with job runs, minutes apart. Dashboards poll
    // every 30-60 s: one EM computation a minute serves them all.
    ("reports_summary", "/api/reports/summary/**", "60s", "60s"),
    // Entity queries are EM's slowest reads on a large installation;
    // exporters page through them every 30-60 s. 30 s keeps an exporter at
    // most one poll behind.
    ("query", "/api/query", "30s", "30s"),
    // Jobs and their settings change when someone edits them; their state is
    // also in backup sessions. A minute is well within a dashboard's refresh.
    ("jobs", "/api/jobs/**", "60s", "30s"),
    // Sessions start and finish all the time: 15 s shows a finished job
    // within one dashboard poll, and still spares EM all but one request in
    // each window.
    ("backup_sessions", "/api/backupSessions/**", "15s", "15s"),
];

/// Rules a settings file may hold; with the built-in and default ones,
/// fewer than [`MAX_RULES`].
pub const MAX_FILE_RULES: usize = 48;

/// Rules in effect at most: the cache keeps counters for this many, so a
/// reload may add rules to a running gateway.
pub const MAX_RULES: usize = 64;

/// Whether a rule name is usable as a metrics label.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_literal_compares_as_eq_ignore_ascii_case_would() {
        let mut pieces: Vec<String> = (0..128u8).map(|c| char::from(c).to_string()).collect();
        pieces.extend(["é", "É", "ß", "Ab", "aB", "ab", ""].map(String::from));
        for a in &pieces {
            for b in &pieces {
                let literal = b.to_ascii_lowercase();
                assert_eq!(
                    eq_lowered(a, &literal),
                    a.eq_ignore_ascii_case(b),
                    "{a:?} against {b:?}"
                );
            }
        }
    }

    #[test]
    fn templates_parse_and_match_by_segment() {
        let t = PathTemplate::parse("/api/reports/summary/*").unwrap();
        assert!(t.matches(["reports", "summary", "overview"]));
        assert!(t.matches(["REPORTS", "Summary", "x"]));
        assert!(!t.matches(["reports", "summary"]));
        assert!(!t.matches(["reports", "summary", "a", "b"]));
        let t = PathTemplate::parse("/api/restorePoints/{id}/vmRestorePoints").unwrap();
        assert!(t.matches([
            "restorepoints",
            "dc216c04-2e34-478e-8b9b-49a3397ef6f8",
            "vmRestorePoints"
        ]));
        assert!(!t.matches(["restorePoints", "abc", "vmRestorePoints"]));
        let t = PathTemplate::parse("/api/jobs/**").unwrap();
        assert!(t.matches(["jobs"]));
        assert!(t.matches(["jobs", "x", "includes"]));
        assert!(!t.matches(["jobsx"]));
        let t = PathTemplate::parse("/api/JOBS/x-Y_z.0~").unwrap();
        assert!(t.matches(["jobs", "X-y_Z.0~"]));
        assert!(!t.matches(["jobs", "x-y_z.0^"]));
        assert!(!t.matches(["jobs", "x-y_z.0~", "more"]));
        for (bad, why) in [
            ("api/jobs", "must start with /api/"),
            ("/api/", "names no resource"),
            ("/api/jobs//x", "empty segment"),
            ("/api/**/x", "** may only be the last"),
            ("/api/jobs/{name}", "unknown placeholder {name}"),
            ("/api/jobs/a b", "may hold only"),
            ("/api/jobs/..", "may hold only"),
        ] {
            let e = PathTemplate::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        for (name, path, ..) in DEFAULT_RULES {
            assert!(valid_name(name));
            PathTemplate::parse(path).unwrap();
        }
    }
}
