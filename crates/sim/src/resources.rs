//! Builds EM's representations of the simulated resources as [`Document`]s.
//!
//! Each builder follows a sample in tests/data/em/samples or a page in
//! tests/data/em/docs (cited at the builder). `base` is the scheme and
//! authority every `Href` starts with, e.g. `https://127.0.0.1:9398`.

use uuid::Uuid;

use super::data::{BackupServer, Data, RestorePoint, VmPoint};
use super::model::{Document, Element, Link, RootStyle};
use super::time::Civil;

/// API versions listed by the entry point (sample 01).
const VERSIONS: [&str; 3] = ["v1_5", "v1_6", "v1_7"];

/// `GET /api/`: the entry point (sample 01, http_authentication.md step 2).
pub(crate) fn entry_point(base: &str) -> Document {
    let versions = VERSIONS
        .iter()
        .map(|v| {
            Element::new("SupportedVersion")
                .links(vec![Link::new(
                    "Create",
                    "LogonSession",
                    format!("{base}/api/sessionMngr/?v={v}"),
                )])
                .attr("Name", *v)
        })
        .collect();
    let root = Element::new("EnterpriseManager")
        .links(vec![
            Link::new(
                "Down",
                "LogonSessionList",
                format!("{base}/api/logonSessions"),
            ),
            Link::new(
                "Create",
                "LogonSession",
                format!("{base}/api/sessionMngr/?v=latest"),
            ),
        ])
        .list("SupportedVersions", true, versions)
        // ResourceType declares Href and Type; EM leaves them out here.
        .absent("Href")
        .absent("Type");
    Document::new(root, RootStyle::Serializer)
}

/// The links of a logon session (sample 02), before its own `Delete` link:
/// (Rel, Type, path below `/api`, Name).
const SESSION_LINKS: &[(&str, Option<&str>, &str, Option<&str>)] = &[
    ("Up", Some("EnterpriseManager"), "/", None),
    (
        "Down",
        Some("BackupServerReferenceList"),
        "/backupServers",
        None,
    ),
    (
        "Down",
        Some("ManagedServerReferenceList"),
        "/managedServers",
        None,
    ),
    ("Down", Some("JobReferenceList"), "/jobs", None),
    (
        "Down",
        Some("FailoverPlanReferenceList"),
        "/failoverPlans",
        None,
    ),
    (
        "Down",
        Some("HierarchyRootReferenceList"),
        "/hierarchyRoots",
        None,
    ),
    (
        "Down",
        Some("RepositoryReferenceList"),
        "/repositories",
        None,
    ),
    ("Down", Some("BackupReferenceList"), "/backups", None),
    (
        "Down",
        Some("RestorePointReferenceList"),
        "/restorePoints",
        None,
    ),
    (
        "Down",
        Some("VmRestorePointReferenceList"),
        "/vmRestorePoints",
        None,
    ),
    (
        "Down",
        Some("VAppRestorePointReferenceList"),
        "/vAppRestorePoints",
        None,
    ),
    ("Down", Some("ReplicaReferenceList"), "/replicas", None),
    (
        "Down",
        Some("VmReplicaPointReferenceList"),
        "/vmReplicaPoints",
        None,
    ),
    ("Down", Some("CatalogVmReferenceList"), "/catalog/vms", None),
    (
        "Down",
        Some("BackupJobSessionReferenceList"),
        "/backupSessions",
        None,
    ),
    (
        "Down",
        Some("RestoreSessionReferenceList"),
        "/restoreSessions",
        None,
    ),
    (
        "Down",
        Some("ReplicaJobSessionReferenceList"),
        "/replicaSessions",
        None,
    ),
    (
        "Down",
        Some("BackupTaskSessionReferenceList"),
        "/backupTaskSessions",
        None,
    ),
    (
        "Down",
        Some("ReplicaTaskSessionReferenceList"),
        "/replicaTaskSessions",
        None,
    ),
    (
        "Down",
        Some("EnterpriseSecuritySettings"),
        "/security",
        None,
    ),
    (
        "Down",
        Some("WanAcceleratorReferenceList"),
        "/wanAccelerators",
        None,
    ),
    (
        "Down",
        Some("BackupFileReferenceList"),
        "/backupFiles",
        None,
    ),
    (
        "Down",
        Some("ExternalRepositoryReferenceList"),
        "/externalRepositories",
        None,
    ),
    ("Down", Some("TaskList"), "/tasks", None),
    ("Down", Some("QueryService"), "/querySvc", None),
    ("Down", Some("LookupService"), "/lookupSvc", None),
    ("Down", Some("Report"), "/reports/summary", Some("Summary")),
    (
        "Down",
        Some("BackupServerList"),
        "/backupServers?format=Entity",
        None,
    ),
    (
        "Down",
        Some("ManagedServerList"),
        "/managedServers?format=Entity",
        None,
    ),
    ("Create", None, "/backupServers?action=create", None),
    ("Down", Some("JobList"), "/jobs?format=Entity", None),
    (
        "Down",
        Some("FailoverPlanList"),
        "/failoverPlans?format=Entity",
        None,
    ),
    (
        "Down",
        Some("HierarchyRootList"),
        "/hierarchyRoots?format=Entity",
        None,
    ),
    (
        "Down",
        Some("RepositoryList"),
        "/repositories?format=Entity",
        None,
    ),
    ("Down", Some("BackupList"), "/backups?format=Entity", None),
    (
        "Down",
        Some("RestorePointList"),
        "/restorePoints?format=Entity",
        None,
    ),
    (
        "Down",
        Some("VmRestorePointList"),
        "/vmRestorePoints?format=Entity",
        None,
    ),
    (
        "Down",
        Some("VAppRestorePointList"),
        "/vAppRestorePoints?format=Entity",
        None,
    ),
    ("Down", Some("ReplicaList"), "/replicas?format=Entity", None),
    (
        "Down",
        Some("VmReplicaPointList"),
        "/vmReplicaPoints?format=Entity",
        None,
    ),
    (
        "Down",
        Some("CatalogVmList"),
        "/catalog/vms?format=Entity",
        None,
    ),
    (
        "Down",
        Some("BackupJobSessionList"),
        "/backupSessions?format=Entity",
        None,
    ),
    (
        "Down",
        Some("RestoreSessionList"),
        "/restoreSessions?format=Entity",
        None,
    ),
    (
        "Down",
        Some("ReplicaJobSessionList"),
        "/replicaSessions?format=Entity",
        None,
    ),
    (
        "Down",
        Some("BackupTaskSessionList"),
        "/backupTaskSessions?format=Entity",
        None,
    ),
    (
        "Down",
        Some("ReplicaTaskSessionList"),
        "/replicaTaskSessions?format=Entity",
        None,
    ),
    (
        "Down",
        Some("WanAcceleratorList"),
        "/wanAccelerators?format=Entity",
        None,
    ),
    ("Down", Some("VCloudService"), "/vCloud", None),
    (
        "Down",
        Some("BackupFileList"),
        "/backupFiles?format=Entity",
        None,
    ),
    ("Down", Some("AgentsService"), "/agents", None),
    (
        "Down",
        Some("VSphereSelfService"),
        "/selfService/vSphere",
        None,
    ),
    (
        "Down",
        Some("ExternalRepositoryList"),
        "/externalRepositories?format=Entity",
        None,
    ),
    ("Down", Some("NasService"), "/nas", None),
];

/// A `LogonSession` element (sample 02; get_loginsessions_id.md).
pub(crate) fn logon_session(base: &str, id: &Uuid, user: &str) -> Element {
    let href = format!("{base}/api/logonSessions/{id}");
    let mut links: Vec<Link> = SESSION_LINKS
        .iter()
        .map(|&(rel, typ, path, name)| Link {
            rel,
            typ,
            href: format!("{base}/api{path}"),
            name: name.map(str::to_owned),
        })
        .collect();
    links.push(Link::untyped("Delete", href.clone()));
    Element::new("LogonSession")
        .attr("Type", "LogonSession")
        .attr("Href", href)
        .links(links)
        .text("UserName", user)
        .text("SessionId", id.to_string())
}

/// `POST /api/sessionMngr/` and `GET /api/logonSessions/{id}`.
pub(crate) fn logon_session_doc(base: &str, id: &Uuid, user: &str) -> Document {
    Document::new(logon_session(base, id, user), RootStyle::Plain)
}

/// `GET /api/logonSessions` (logging_out.md step 1).
pub(crate) fn logon_sessions(base: &str, sessions: &[(Uuid, String)]) -> Document {
    let items = sessions
        .iter()
        .map(|(id, user)| logon_session(base, id, user))
        .collect();
    Document::new(
        Element::new("LogonSessions").list("LogonSessions", false, items),
        RootStyle::Plain,
    )
}

/// The `Up` link to a backup server that every resource on it carries (samples
/// 03, 04, 06; get_jobs_id.md, get_backupsessions_id.md).
pub(crate) fn server_link(base: &str, server: &BackupServer) -> Link {
    Link::named(
        "Up",
        "BackupServerReference",
        format!("{base}/api/backupServers/{}", server.id),
        &server.name,
    )
}

fn rp_href(base: &str, rp: &RestorePoint) -> String {
    format!("{base}/api/restorePoints/{}", rp.id)
}

/// A restore point's reference: `Ref` in a list, `EntityRef` alone. Links as in EM's
/// reference representation of /restorePoints/{ID} (get_restorepoints_id.md lists
/// the resource's links; the reference form carries Up, Alternate and Down).
fn rp_ref(element: &'static str, base: &str, data: &Data, rp: &RestorePoint) -> Element {
    let href = rp_href(base, rp);
    let name = data.rp_name(rp);
    let server = data.server(rp);
    let job = data.job(rp);
    Element::new(element)
        .attr("Type", "RestorePointReference")
        .attr("Href", href.clone())
        .attr("Name", name.clone())
        .attr("UID", format!("urn:veeam:RestorePoint:{}", rp.id))
        .links(vec![
            server_link(base, server),
            Link::named(
                "Up",
                "BackupReference",
                format!("{base}/api/backups/{}", job.id),
                &job.name,
            ),
            Link::named(
                "Alternate",
                "RestorePoint",
                format!("{href}?format=Entity"),
                &name,
            ),
            Link::new(
                "Down",
                "VmRestorePointReferenceList",
                format!("{href}/vmRestorePoints"),
            ),
        ])
}

/// `GET /api/restorePoints`: references to every restore point (get_restorepoints.md).
pub(crate) fn restore_point_refs(base: &str, data: &Data) -> Document {
    let refs = data
        .points
        .iter()
        .map(|rp| rp_ref("Ref", base, data, rp))
        .collect();
    Document::new(
        Element::new("EntityReferences").list("Refs", false, refs),
        RootStyle::Plain,
    )
}

/// Restore point `i` as a query result: a `Ref`, or its entity.
pub(crate) fn point_item(base: &str, data: &Data, i: usize, entity: bool) -> Element {
    let rp = &data.points[i];
    if entity {
        restore_point_entity(base, data, rp).root
    } else {
        rp_ref("Ref", base, data, rp)
    }
}

/// `GET /api/restorePoints/{id}`: the reference form, root `EntityRef` (RestAPI.xsd
/// root element `EntityRef`).
pub(crate) fn restore_point_ref(base: &str, data: &Data, rp: &RestorePoint) -> Document {
    Document::new(rp_ref("EntityRef", base, data, rp), RootStyle::Plain)
}

/// `GET /api/restorePoints/{id}?format=Entity` (sample 06).
pub(crate) fn restore_point_entity(base: &str, data: &Data, rp: &RestorePoint) -> Document {
    let href = rp_href(base, rp);
    let name = data.rp_name(rp);
    let server = data.server(rp);
    let job = data.job(rp);
    let root = Element::new("RestorePoint")
        .attr("Href", format!("{href}?format=Entity"))
        .attr("Type", "RestorePoint")
        .attr("Name", name.clone())
        .attr("UID", format!("urn:veeam:RestorePoint:{}", rp.id))
        .links(vec![
            Link::named(
                "Up",
                "BackupReference",
                format!("{base}/api/backups/{}", job.id),
                &job.name,
            ),
            server_link(base, server),
            Link::named("Alternate", "RestorePointReference", href.clone(), &name),
            Link::new(
                "Down",
                "VmRestorePointReferenceList",
                format!("{href}/vmRestorePoints"),
            ),
            Link::new(
                "Related",
                "BackupFileReferenceList",
                format!("{href}/backupFiles"),
            ),
        ])
        // RestAPI.xsd declares a `Ref` child that EM 13's sample no longer sends.
        .absent("Ref")
        .text("BackupDateUTC", Civil::from_unix_ms(rp.backup_ms).iso());
    Document::new(root, RootStyle::Serializer)
}

fn vm_href(base: &str, vm: &VmPoint) -> String {
    format!("{base}/api/vmRestorePoints/{}", vm.id)
}

/// The `Up` links every form of a VM restore point carries (samples 03 and 04).
fn vm_up_links(base: &str, data: &Data, rp: &RestorePoint) -> [Link; 3] {
    let server = data.server(rp);
    [
        server_link(base, server),
        Link::named(
            "Up",
            "RestorePointReference",
            rp_href(base, rp),
            &data.rp_name(rp),
        ),
        Link::named(
            "Up",
            "BackupFileReference",
            format!("{base}/api/backupFiles/{}", rp.file_id),
            &data.file_name(rp),
        ),
    ]
}

/// A VM restore point's reference: `Ref` in a list, `EntityRef` alone (sample 03).
fn vm_ref(
    element: &'static str,
    base: &str,
    data: &Data,
    rp: &RestorePoint,
    vm: &VmPoint,
) -> Element {
    let href = vm_href(base, vm);
    let name = data.vm_point_name(rp, vm);
    let mut links = vm_up_links(base, data, rp).to_vec();
    links.push(Link::named(
        "Alternate",
        "VmRestorePoint",
        format!("{href}?format=Entity"),
        &name,
    ));
    Element::new(element)
        .attr("Type", "VmRestorePointReference")
        .attr("Href", href)
        .attr("Name", name)
        .attr("UID", format!("urn:veeam:VmRestorePoint:{}", vm.id))
        .links(links)
}

/// A `VmRestorePoint` entity (sample 04; get_vmrestorepoints_id.md).
fn vm_entity(base: &str, data: &Data, rp: &RestorePoint, vm: &VmPoint) -> Element {
    let href = vm_href(base, vm);
    let name = data.vm_point_name(rp, vm);
    let vm_name = &data.vm(rp, vm).name;
    let mut links = vec![Link::untyped("Restore", format!("{href}?action=restore"))];
    links.extend(vm_up_links(base, data, rp));
    links.push(Link::named(
        "Alternate",
        "VmRestorePointReference",
        href.clone(),
        &name,
    ));
    links.push(Link::new(
        "Down",
        "VmRestorePointMountList",
        format!("{href}/mounts"),
    ));
    links.push(Link::new(
        "Create",
        "VmRestorePointMount",
        format!("{href}/mounts"),
    ));
    let (algorithm, point_type) = if rp.full {
        ("Full", "Full")
    } else {
        ("Incremental", "Increment")
    };
    Element::new("VmRestorePoint")
        .attr("Href", format!("{href}?format=Entity"))
        .attr("Type", "VmRestorePoint")
        .attr("Name", name)
        .attr("UID", format!("urn:veeam:VmRestorePoint:{}", vm.id))
        .attr("VmDisplayName", vm_name.clone())
        .links(links)
        .text("CreationTimeUTC", Civil::from_unix_ms(vm.created_ms).iso())
        .text("VmName", vm_name.clone())
        .text("Algorithm", algorithm)
        .text("PointType", point_type)
        .text("HierarchyObjRef", data.hierarchy_ref(rp, vm))
        // Declared by RestAPI.xsd, only present for SQL Server VMs.
        .absent("SqlInfo")
}

/// VM restore point `k` of restore point `i` as a query returns it: a reference,
/// or the entity with its attributes in sample 07's order.
pub(crate) fn vm_item(base: &str, data: &Data, i: usize, k: usize, entity: bool) -> Element {
    let rp = &data.points[i];
    let vm = &rp.vms[k];
    if entity {
        vm_entity(base, data, rp, vm).order_attrs(&["Type", "Href", "Name", "VmDisplayName", "UID"])
    } else {
        vm_ref("Ref", base, data, rp, vm)
    }
}

/// `GET /api/restorePoints/{id}/vmRestorePoints` (sample 03).
pub(crate) fn vm_point_refs(base: &str, data: &Data, rp: &RestorePoint) -> Document {
    let refs = rp
        .vms
        .iter()
        .map(|vm| vm_ref("Ref", base, data, rp, vm))
        .collect();
    Document::new(
        Element::new("EntityReferences").list("Refs", false, refs),
        RootStyle::Plain,
    )
}

/// `GET /api/restorePoints/{id}/vmRestorePoints?format=Entity`: a `VmRestorePoints`
/// root (RestAPI.xsd) holding the entities, written like the entity collection in
/// representation_collections.md.
pub(crate) fn vm_point_entities(base: &str, data: &Data, rp: &RestorePoint) -> Document {
    let items = rp
        .vms
        .iter()
        .map(|vm| vm_entity(base, data, rp, vm))
        .collect();
    Document::new(
        Element::new("VmRestorePoints").list("VmRestorePoints", false, items),
        RootStyle::Plain,
    )
}

/// `GET /api/vmRestorePoints/{id}`: the reference form, root `EntityRef`.
pub(crate) fn vm_point_ref(base: &str, data: &Data, rp: &RestorePoint, vm: &VmPoint) -> Document {
    Document::new(vm_ref("EntityRef", base, data, rp, vm), RootStyle::Plain)
}

/// `GET /api/vmRestorePoints/{id}?format=Entity` (sample 04).
pub(crate) fn vm_point_entity(
    base: &str,
    data: &Data,
    rp: &RestorePoint,
    vm: &VmPoint,
) -> Document {
    Document::new(vm_entity(base, data, rp, vm), RootStyle::Serializer)
}

/// EM's `<Error>` (sample 08; RestAPI.xsd `ErrorType`). JSON members as in sample 08b.
pub(crate) fn error(status: u16, message: &str) -> Document {
    let root = Element::new("Error")
        .absent("FirstChanceExceptionMessage")
        .absent("StackTrace")
        .absent("Status")
        .attr("Message", message)
        .attr_int("StatusCode", i64::from(status));
    Document::new(root, RootStyle::Serializer)
}
