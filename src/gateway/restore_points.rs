//! Restore points, parsed at the edge: any `/api/restorePoints/{id}[/...]`
//! target must carry a UUID, or it is answered 400 without contacting EM.
//! Their `vmRestorePoints` are cached by the built-in rule
//! `vm_restore_points` (see [`crate::gateway::reads`]).

use crate::gateway::target::Target;

/// A restore point ID: a UUID, lowercase, parsed once at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RestorePointId(uuid::Uuid);

impl RestorePointId {
    /// Parses the path segment; anything but a UUID (36 characters, hyphenated) is refused.
    pub fn parse(segment: &str) -> Option<RestorePointId> {
        if segment.len() != 36 {
            return None;
        }
        uuid::Uuid::try_parse(segment).ok().map(RestorePointId)
    }
}

impl std::fmt::Display for RestorePointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The restore point `{id}` segment of any `/api/restorePoints/{id}[/...]` target.
pub fn restore_point_segment(target: &Target) -> Option<&str> {
    match target.segments() {
        [_, id, ..] if target.is(0, "restorePoints") => Some(id.as_str()),
        _ => None,
    }
}

/// The key prefix under which everything cached of one restore point lives
/// (both forms of its vmRestorePoints among them).
pub fn key_prefix(id: RestorePointId) -> String {
    format!("/api/restorepoints/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_point_ids_must_be_hyphenated_uuids_and_are_lowercased() {
        let id = RestorePointId::parse("DC216C04-2E34-478E-8B9B-49A3397EF6F8").unwrap();
        assert_eq!(id.to_string(), "dc216c04-2e34-478e-8b9b-49a3397ef6f8");
        for bad in [
            "abc",
            "..",
            "%2e%2e",
            "dc216c042e34478e8b9b49a3397ef6f8",
            &"a".repeat(300),
            "{dc216c04-2e34-478e-8b9b-49a3397ef6f8}",
        ] {
            assert!(RestorePointId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_id_segment_of_any_restore_point_target() {
        let t = |s: &str| Target::parse(s, None).unwrap();
        let id = "dc216c04-2e34-478e-8b9b-49a3397ef6f8";
        assert_eq!(
            restore_point_segment(&t(&format!("/api/restorePoints/{id}"))),
            Some(id)
        );
        assert_eq!(
            restore_point_segment(&t("/api/RESTOREPOINTS/x/backupFiles")),
            Some("x")
        );
        assert_eq!(restore_point_segment(&t("/api/restorePoints")), None);
        assert_eq!(restore_point_segment(&t("/api/jobs/x")), None);
    }
}
