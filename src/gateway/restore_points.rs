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
    target.segment(1).filter(|_| target.is(0, "restorePoints"))
}

/// The key prefix under which everything cached of one restore point lives
/// (both forms of its vmRestorePoints among them).
pub fn key_prefix(id: RestorePointId) -> String {
    format!("/api/restorepoints/{id}")
}

/// New restore points a listing hands to the prefetch at most, and the
/// prefetch fetches so per interval at most (the rest wait for its next
/// look): a portal shows the newest few, and no client can make emgate
/// fetch more than this an interval.
pub const LISTED_MAX: usize = 32;

/// The restore point ids an EM answer lists (from the `UID`s of its
/// references, `Ref`, or entities, `RestorePoint`), in its order, the
/// first `max` at most, and its page count (`PagingInfo`'s `PagesCount`,
/// 1 when absent or not reached). Only ids the edge would take are
/// returned: they go into paths.
pub fn listed(xml: &[u8], max: usize) -> (Vec<String>, usize) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut ids = Vec::new();
    let mut pages = 1;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                let attr = |name: &[u8]| {
                    e.attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == name)
                        .map(|a| String::from_utf8_lossy(&a.value).into_owned())
                };
                match e.local_name().as_ref() {
                    b"Ref" | b"RestorePoint" => {
                        let id = attr(b"UID").and_then(|uid| {
                            uid.strip_prefix("urn:veeam:RestorePoint:")
                                .and_then(RestorePointId::parse)
                        });
                        if let Some(id) = id {
                            ids.push(id.to_string());
                            if ids.len() >= max {
                                break;
                            }
                        }
                    }
                    b"PagingInfo" => {
                        pages = attr(b"PagesCount")
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(1);
                    }
                    _ => {}
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    (ids, pages)
}

/// Whether EM's answer to `em_path` (path and query, as emgate asks EM)
/// lists the newest restore points, as portals ask for them
/// (`/api/query?type=RestorePoint&sortDesc=CreationTime`): its first page
/// (no `page`, or 1) and no `filter`, so its head is the newest points EM
/// has. A client cannot make another page, or old points, look new.
pub fn lists_newest_first(em_path: &str) -> bool {
    let Some((path, query)) = em_path.split_once('?') else {
        return false;
    };
    let has = |name: &str, value: &str| {
        query.split('&').any(|pair| {
            pair.split_once('=')
                .is_some_and(|(n, v)| n.eq_ignore_ascii_case(name) && v.eq_ignore_ascii_case(value))
        })
    };
    let named = |name: &str| {
        query.split('&').any(|pair| {
            pair.split_once('=')
                .map_or(pair, |(n, _)| n)
                .eq_ignore_ascii_case(name)
        })
    };
    path.trim_end_matches('/')
        .eq_ignore_ascii_case("/api/query")
        && has("type", "RestorePoint")
        && has("sortDesc", "CreationTime")
        && !named("filter")
        && (!named("page") || has("page", "1"))
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
    #[test]
    fn a_listing_gives_its_restore_points_and_pages_and_nothing_malformed() {
        let xml = br#"<QueryResult xmlns="http://www.veeam.com/ent/v1.0"><Refs>
<Ref Type="RestorePointReference" Href="https://em:9398/api/restorePoints/1" UID="urn:veeam:RestorePoint:D0A6E5F4-1C2B-4E3A-9F8E-7D6C5B4A3921" Name="a"/>
<Ref Type="RestorePointReference" UID="urn:veeam:RestorePoint:../../admin" Name="b"/>
<Ref Type="JobReference" UID="urn:veeam:Job:d0a6e5f4-1c2b-4e3a-9f8e-7d6c5b4a3921"/>
</Refs><PagingInfo PagesCount="3" PageSize="100" PageNum="1"/></QueryResult>"#;
        let (ids, pages) = listed(xml, usize::MAX);
        assert_eq!(ids, vec!["d0a6e5f4-1c2b-4e3a-9f8e-7d6c5b4a3921"]);
        assert_eq!(pages, 3);
        assert_eq!(listed(b"<html>nope", usize::MAX), (vec![], 1));
        // Entities (`format=Entities`) name themselves; a VM's restore
        // point is not a restore point.
        let entities = br#"<EntityReferences><RestorePoint Type="RestorePoint" UID="urn:veeam:RestorePoint:e729979a-fcc2-4880-a420-9291ba64aa2a"><Links><Link Rel="Up" Type="BackupReference" Href="x"/></Links></RestorePoint><VmRestorePoint UID="urn:veeam:VmRestorePoint:f729979a-fcc2-4880-a420-9291ba64aa2a"/></EntityReferences>"#;
        assert_eq!(
            listed(entities, usize::MAX).0,
            vec!["e729979a-fcc2-4880-a420-9291ba64aa2a"]
        );
        // At most `max`.
        let two = br#"<Refs><Ref UID="urn:veeam:RestorePoint:e729979a-fcc2-4880-a420-9291ba64aa2a"/><Ref UID="urn:veeam:RestorePoint:f729979a-fcc2-4880-a420-9291ba64aa2a"/></Refs>"#;
        assert_eq!(listed(two, 1).0.len(), 1);
    }

    #[test]
    fn what_lists_restore_points_newest_first() {
        for yes in [
            "/api/query?type=RestorePoint&sortDesc=CreationTime",
            "/api/query?pageSize=5&TYPE=restorepoint&sortdesc=creationtime",
            "/api/query?type=RestorePoint&sortDesc=CreationTime&page=1",
        ] {
            assert!(lists_newest_first(yes), "{yes}");
        }
        for no in [
            "/api/restorePoints",
            "/api/query?type=RestorePoint",
            "/api/query?type=RestorePoint&sortAsc=CreationTime",
            "/api/query?type=VmRestorePoint&sortDesc=CreationTime",
            "/api/jobs/query?type=RestorePoint&sortDesc=CreationTime",
            // Not the newest: another page, or a filter.
            "/api/query?type=RestorePoint&sortDesc=CreationTime&page=2",
            "/api/query?type=RestorePoint&sortDesc=CreationTime&filter=CreationTime%3C%222020-01-01%22",
            "/api/query?type=RestorePoint&sortDesc=CreationTime&Filter",
        ] {
            assert!(!lists_newest_first(no), "{no}");
        }
    }
}
