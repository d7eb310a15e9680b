//! Converter tests: EM's samples, the conversion rules (README, "JSON, and which EM version you have") one by one, bad input,
//! and a randomized no-panic run.
//!
//! Samples are read from `tests/data/em/samples`, as the schema table's
//! sources are (see that folder's README).

use serde_json::{json, Map, Value};

use super::case::camel;
use super::schema::{self, Ty, NULLABLE, REPEATED};
use super::{rewrite_xml, root_name, to_json, Case, ConvertError, Rewrite};

fn data_file(rel: &str) -> Vec<u8> {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/em")
        .join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn sample(name: &str) -> Vec<u8> {
    data_file(&format!("samples/{name}"))
}

const S01: &str = "01_GET_api_EnterpriseManager_v13docs.xml";
const S02: &str = "02_POST_sessionMngr_201_LogonSession_v13docs.xml";
const S03: &str = "03_GET_restorePoints_ID_vmRestorePoints_refs_v13docs.xml";
const S04: &str = "04_GET_vmRestorePoints_ID_formatEntity_v13docs.xml";
const S06: &str = "06_GET_restorePoints_ID_formatEntity_v13docs.xml";
const S07: &str = "07_GET_query_VmRestorePoint_Entities_paged_v13docs_first_item.xml";
const S08: &str = "08_error_500_xml_benyoung.xml";
const S08B: &str = "08b_error_400_json_benyoung.json";
const S09: &str = "09_json_EntityReferences_Refs_docs.json";
const ALL_XML: [&str; 7] = [S01, S02, S03, S04, S06, S07, S08];

/// The 50 members of a query result's `Entities`, as json-facts.md lists them.
const ENTITIES: [&str; 50] = [
    "Jobs",
    "FailoverPlans",
    "Backups",
    "Replicas",
    "Repositories",
    "RestorePoints",
    "VmRestorePoints",
    "VAppRestorePoints",
    "VmReplicaPoints",
    "BackupJobSessions",
    "ReplicaJobSessions",
    "ReplicaTaskSessions",
    "RestoreSessions",
    "HierarchyRoots",
    "BackupTaskSessions",
    "BackupServers",
    "ManagedServers",
    "EnterpiseRoles",
    "EnterpiseAccounts",
    "WanAccelerators",
    "CloudGateways",
    "CloudTenants",
    "CloudReplicas",
    "VCloudOrganizationConfigs",
    "BackupFiles",
    "VSphereSelfServiceConfigs",
    "CloudPublicIps",
    "CloudHardwarePlans",
    "CloudVmReplicaPoints",
    "AgentRestorePoints",
    "AgentBackupJob",
    "CloudGatewayPools",
    "CloudFailoverPlans",
    "ExternalRepositories",
    "VlanConfigurations",
    "CloudFailoverSessions",
    "AgentProtectionGroups",
    "DiscoveredComputers",
    "FileServers",
    "NASJobs",
    "CdpReplicas",
    "CdpReplicaVms",
    "CdpPolicies",
    "CdpReplicaSessions",
    "CdpReplicaTaskSessions",
    "VAppReplicaPoints",
    "VmCdpReplicas",
    "VAppCdpReplicas",
    "VAppCdpReplicaVms",
    "SystemSessions",
];

fn convert(xml: &[u8], case: Case, rw: Option<&Rewrite<'_>>) -> Value {
    let mut out = Vec::new();
    to_json(xml, case, rw, &mut out).unwrap_or_else(|e| panic!("conversion failed: {e}"));
    serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", String::from_utf8_lossy(&out)))
}

fn pascal(xml: &str) -> Value {
    convert(xml.as_bytes(), Case::Pascal, None)
}

fn err(xml: &[u8]) -> ConvertError {
    let mut out = b"keep".to_vec();
    let e = to_json(xml, Case::Pascal, None, &mut out).expect_err("should fail");
    assert_eq!(out, b"keep", "out must be untouched on error");
    let mut out2 = b"keep".to_vec();
    let rw = Rewrite {
        from: "https://a",
        to: "http://b",
    };
    assert!(
        rewrite_xml(xml, &rw, &mut out2).is_err(),
        "rewrite_xml must fail too"
    );
    assert_eq!(out2, b"keep");
    e
}

/// Applies the camel policy to every member name of a pascal value.
fn camelize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (camel(k), camelize(v)))
                .collect::<Map<_, _>>(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(camelize).collect()),
        other => other.clone(),
    }
}

fn link(rel: &str, href: &str, name: Option<&str>, ty: Option<&str>) -> Value {
    json!({"Rel": rel, "Href": href, "Name": name, "Type": ty})
}

const LH: &str = "https://localhost:9398";

fn expected_s03(base: &str) -> Value {
    json!({"Refs": [{
        "Type": "VmRestorePointReference",
        "Href": format!("{base}/api/vmRestorePoints/5acac742-ee17-4080-8e89-a6ea67adfcf3"),
        "Name": "oracle03@2025-10-06 13:59:50",
        "UID": "urn:veeam:VmRestorePoint:5acac742-ee17-4080-8e89-a6ea67adfcf3",
        "Links": [
            link("Up", &format!("{base}/api/backupServers/00fd67d9-2b4c-4c56-8a95-0b3dbec7ae43"), Some("172.17.53.1"), Some("BackupServerReference")),
            link("Up", &format!("{base}/api/restorePoints/dc216c04-2e34-478e-8b9b-49a3397ef6f8"), Some("Oct  6 2025  1:59PM"), Some("RestorePointReference")),
            link("Up", &format!("{base}/api/backupFiles/e86f61f9-4220-4f55-820b-e41a38abce90"), Some("Oracle BackupD2025-10-06T165918.vib"), Some("BackupFileReference")),
            link("Alternate", &format!("{base}/api/vmRestorePoints/5acac742-ee17-4080-8e89-a6ea67adfcf3?format=Entity"), Some("oracle03@2025-10-06 13:59:50"), Some("VmRestorePoint")),
        ],
    }]})
}

#[test]
fn sample_03_references_form() {
    let got = convert(&sample(S03), Case::Pascal, None);
    assert_eq!(got, expected_s03(LH));
}

#[test]
fn sample_03_camel_and_rewritten() {
    let rw = Rewrite {
        from: LH,
        to: "http://127.0.0.1:9399",
    };
    let got = convert(&sample(S03), Case::Camel, Some(&rw));
    let want = camelize(&expected_s03("http://127.0.0.1:9399"));
    assert_eq!(got, want);
    // Spot-check EM 13's spelling.
    assert!(got["refs"][0]["uid"].is_string());
    assert!(got["refs"][0]["links"][0]["href"].is_string());
}

fn expected_s04() -> Value {
    let e = "https://enterprise04.tech.local:9398/api";
    let id = "6c958531-3177-4055-b0ce-dc4ef1ce6433";
    json!({
        "Href": format!("{e}/vmRestorePoints/{id}?format=Entity"),
        "Type": "VmRestorePoint",
        "Name": "ubuntu88@2025-10-20 20:04:07",
        "UID": format!("urn:veeam:VmRestorePoint:{id}"),
        "VmDisplayName": "ubuntu88",
        "Links": [
            link("Restore", &format!("{e}/vmRestorePoints/{id}?action=restore"), None, None),
            link("Up", &format!("{e}/backupServers/a490c017-2c1c-40ee-8bcf-73bcce6ab36f"), Some("enterprise01.tech.local"), Some("BackupServerReference")),
            link("Up", &format!("{e}/restorePoints/588d2507-4b4b-4b55-a851-3de77114fbf2"), Some("Oct 20 2025  8:00PM"), Some("RestorePointReference")),
            link("Up", &format!("{e}/backupFiles/071bd77e-c00c-479a-a378-19c3a0c39c80"), Some("Backup Job 3D2025-10-20T220020_159E.vib"), Some("BackupFileReference")),
            link("Alternate", &format!("{e}/vmRestorePoints/{id}"), Some("ubuntu88@2025-10-20 20:04:07"), Some("VmRestorePointReference")),
            link("Down", &format!("{e}/vmRestorePoints/{id}/mounts"), None, Some("VmRestorePointMountList")),
            link("Create", &format!("{e}/vmRestorePoints/{id}/mounts"), None, Some("VmRestorePointMount")),
        ],
        "CreationTimeUTC": "2025-10-20T20:04:07.267Z",
        "VmName": "ubuntu88",
        "Algorithm": "Incremental",
        "PointType": "Increment",
        "HierarchyObjRef": "urn:VMware:Vm:d68c782f-ec0a-4bf3-b3c1-04c552b64fdf.vm-85541",
        "SqlInfo": null,
    })
}

#[test]
fn sample_04_entity_form() {
    assert_eq!(convert(&sample(S04), Case::Pascal, None), expected_s04());
}

#[test]
fn sample_04_camel() {
    let got = convert(&sample(S04), Case::Camel, None);
    assert_eq!(got, camelize(&expected_s04()));
    assert_eq!(got["creationTimeUTC"], "2025-10-20T20:04:07.267Z");
    assert_eq!(got["uid"], expected_s04()["UID"]);
}

#[test]
fn sample_01_entry_point() {
    let e = "https://enterprise04.tech.local:9398/api";
    let version = |v: &str| json!({"Name": v, "Links": [link("Create", &format!("{e}/sessionMngr/?v={v}"), None, Some("LogonSession"))]});
    let want = json!({
        "Href": null,
        "Type": null,
        "Links": [
            link("Down", &format!("{e}/logonSessions"), None, Some("LogonSessionList")),
            link("Create", &format!("{e}/sessionMngr/?v=latest"), None, Some("LogonSession")),
        ],
        "SupportedVersions": {"SupportedVersions": [version("v1_5"), version("v1_6"), version("v1_7")]},
    });
    assert_eq!(convert(&sample(S01), Case::Pascal, None), want);
}

#[test]
fn sample_02_logon_session() {
    let rw = Rewrite {
        from: "https://srv12.tech.local:9398/",
        to: "http://127.0.0.1:9399/",
    };
    let got = convert(&sample(S02), Case::Pascal, Some(&rw));
    let obj = got.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["Href", "Links", "SessionId", "Type", "UserName"]);
    assert_eq!(got["Type"], "LogonSession");
    assert_eq!(
        got["Href"],
        "http://127.0.0.1:9399/api/logonSessions/15a3fc97-0325-4119-b789-5c0367c6c565"
    );
    assert_eq!(got["UserName"], "SRV12\\Administrator");
    assert_eq!(got["SessionId"], "15a3fc97-0325-4119-b789-5c0367c6c565");
    let links = got["Links"].as_array().unwrap();
    assert_eq!(links.len(), 54);
    for l in links {
        let l = l.as_object().unwrap();
        assert_eq!(l.len(), 4, "{l:?}");
        assert!(l["Href"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:9399/api/"));
    }
    assert_eq!(
        links[0],
        link(
            "Up",
            "http://127.0.0.1:9399/api/",
            None,
            Some("EnterpriseManager")
        )
    );
    assert_eq!(
        links[26],
        link(
            "Down",
            "http://127.0.0.1:9399/api/reports/summary",
            Some("Summary"),
            Some("Report")
        )
    );
    assert_eq!(
        links[29],
        link(
            "Create",
            "http://127.0.0.1:9399/api/backupServers?action=create",
            None,
            None
        )
    );
}

fn expected_s07(base: &str) -> Value {
    let id = "f45e5f83-99a0-4b8e-9195-9f88ee13da07";
    let q = "api/query?type=VmRestorePoint&format=Entities&sortDesc=CreationTime&pageSize=3";
    let mut entities = Map::new();
    for name in ENTITIES {
        entities.insert(name.to_string(), Value::Null);
    }
    entities.insert(
        "VmRestorePoints".into(),
        json!({"VmRestorePoints": [{
            "Type": "VmRestorePoint",
            "Href": format!("{base}/api/vmRestorePoints/{id}?format=Entity"),
            "Name": "dbserver01@2025-06-16 04:00:52",
            "VmDisplayName": "dbserver01",
            "UID": format!("urn:veeam:VmRestorePoint:{id}"),
            "Links": [
                link("Restore", &format!("{base}/api/vmRestorePoints/{id}?action=restore"), None, None),
                link("Up", &format!("{base}/api/backupServers/7445e6ce-86f5-4171-b909-dac209c66563"), Some("enterprise06.tech.local"), Some("BackupServerReference")),
                link("Up", &format!("{base}/api/restorePoints/94ebd136-e5e0-4ebf-8e89-c37269132c28"), Some("Jun 16 2025  4:00AM"), Some("RestorePointReference")),
                link("Up", &format!("{base}/api/backupFiles/499ea31b-d576-4c31-b458-fd8dcd3b5e96"), Some("Backup Job 1D2025-06-16T060031_8B0A.vib"), Some("BackupFileReference")),
                link("Alternate", &format!("{base}/api/vmRestorePoints/{id}"), Some("dbserver01@2025-06-16 04:00:52"), Some("VmRestorePointReference")),
                link("Down", &format!("{base}/api/vmRestorePoints/{id}/mounts"), None, Some("VmRestorePointMountList")),
                link("Create", &format!("{base}/api/vmRestorePoints/{id}/mounts"), None, Some("VmRestorePointMount")),
            ],
            "CreationTimeUTC": "2025-06-16T04:00:52.107Z",
            "VmName": "dbserver01",
            "Algorithm": "Incremental",
            "PointType": "Increment",
            "HierarchyObjRef": "urn:VMware:Vm:de28dc43-b8ee-4e17-8e63-3d38b6604033.vm-62228",
            "SqlInfo": null,
        }]}),
    );
    json!({
        "Refs": null,
        "Entities": entities,
        "Resources": null,
        "Links": [],
        "PagingInfo": {
            "PagesCount": 7,
            "PageSize": 3,
            "PageNum": 1,
            "Links": [
                link("First", &format!("{base}/{q}&page=1&filter=VmDisplayName==dbserver01"), None, None),
                link("Next", &format!("{base}/{q}&page=2&filter=VmDisplayName==dbserver01"), None, None),
                link("Last", &format!("{base}/{q}&page=7&filter=VmDisplayName==dbserver01"), None, None),
            ],
        },
    })
}

#[test]
fn sample_07_query_result_with_paging() {
    let got = convert(&sample(S07), Case::Pascal, None);
    assert_eq!(got, expected_s07(LH));
    assert_eq!(got["Entities"].as_object().unwrap().len(), 50);
}

#[test]
fn sample_07_rewritten_camel() {
    let rw = Rewrite {
        from: LH,
        to: "https://gw.example:8443",
    };
    let got = convert(&sample(S07), Case::Camel, Some(&rw));
    assert_eq!(got, camelize(&expected_s07("https://gw.example:8443")));
    let e = got["entities"].as_object().unwrap();
    for k in [
        "nasJobs",
        "vCloudOrganizationConfigs",
        "enterpiseRoles",
        "vmCdpReplicas",
        "cdpReplicaVms",
    ] {
        assert_eq!(e[k], Value::Null, "{k}");
    }
    assert_eq!(
        got["pagingInfo"]["links"][1]["href"],
        "https://gw.example:8443/api/query?type=VmRestorePoint&format=Entities&sortDesc=CreationTime&pageSize=3&page=2&filter=VmDisplayName==dbserver01"
    );
    assert_eq!(got["pagingInfo"]["pageNum"], 1);
}

#[test]
fn sample_08_error_has_em_json_error_shape() {
    let got = convert(&sample(S08), Case::Pascal, None);
    let shape: Value = serde_json::from_slice(&sample(S08B)).unwrap();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&got), keys(&shape));
    assert_eq!(
        got,
        json!({
            "FirstChanceExceptionMessage": "Object reference not set to an instance of an object.",
            "Message": "Object reference not set to an instance of an object.",
            "StackTrace": null,
            "Status": null,
            "StatusCode": 500,
        })
    );
    // The 08b case: an error with only its attributes.
    let got = pascal(
        r#"<Error Message="Node [root] does not exist." StatusCode="400" xmlns="http://www.veeam.com/ent/v1.0"/>"#,
    );
    assert_eq!(got, shape);
    let camel = convert(&sample(S08), Case::Camel, None);
    assert_eq!(camel["statusCode"], 500);
    assert_eq!(camel["status"], Value::Null);
}

#[test]
fn sample_09_equals_our_conversion_of_its_xml() {
    // Build the XML EM serialised for sample 09's JSON, then convert it.
    let want: Value = serde_json::from_slice(&sample(S09)).unwrap();
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;")
    };
    let mut xml = String::from("<EntityReferences xmlns=\"http://www.veeam.com/ent/v1.0\">\n");
    for r in want["Refs"].as_array().unwrap() {
        xml.push_str(&format!(
            "  <Ref Type=\"{}\" Href=\"{}\" Name=\"{}\" UID=\"{}\">\n    <Links>\n",
            esc(r["Type"].as_str().unwrap()),
            esc(r["Href"].as_str().unwrap()),
            esc(r["Name"].as_str().unwrap()),
            esc(r["UID"].as_str().unwrap()),
        ));
        for l in r["Links"].as_array().unwrap() {
            xml.push_str(&format!(
                "      <Link Rel=\"{}\" Type=\"{}\" Href=\"{}\" Name=\"{}\" />\n",
                esc(l["Rel"].as_str().unwrap()),
                esc(l["Type"].as_str().unwrap()),
                esc(l["Href"].as_str().unwrap()),
                esc(l["Name"].as_str().unwrap()),
            ));
        }
        xml.push_str("    </Links>\n  </Ref>\n");
    }
    xml.push_str("</EntityReferences>\n");
    assert_eq!(pascal(&xml), want);
}

#[test]
fn lists_are_arrays_whatever_the_count() {
    let refs = |n: usize| {
        let mut x = String::from("<EntityReferences xmlns=\"http://www.veeam.com/ent/v1.0\">");
        for i in 0..n {
            x.push_str(&format!(
                "<Ref UID=\"u{i}\" Name=\"n{i}\" Href=\"h{i}\" Type=\"VmRestorePointReference\"><Links><Link Rel=\"Up\" Href=\"l{i}\"/></Links></Ref>"
            ));
        }
        x.push_str("</EntityReferences>");
        pascal(&x)
    };
    assert_eq!(refs(0), json!({"Refs": []}));
    let one = refs(1);
    assert_eq!(one["Refs"].as_array().unwrap().len(), 1);
    assert_eq!(
        one["Refs"][0]["Links"],
        json!([link("Up", "l0", None, None)])
    );
    assert_eq!(refs(2)["Refs"].as_array().unwrap().len(), 2);
    assert_eq!(pascal("<EntityReferences/>"), json!({"Refs": []}));

    // Root lists of entities and of logon sessions.
    assert_eq!(
        pascal("<VmRestorePoints></VmRestorePoints>"),
        json!({"VmRestorePoints": []})
    );
    let one =
        pascal(r#"<VmRestorePoints><VmRestorePoint Href="h" Name="n" UID="u"/></VmRestorePoints>"#);
    assert_eq!(one["VmRestorePoints"].as_array().unwrap().len(), 1);
    assert_eq!(one["VmRestorePoints"][0]["Links"], json!([]));
    assert_eq!(one["VmRestorePoints"][0]["VmName"], Value::Null);
    let two = pascal("<LogonSessions><LogonSession><UserName>a</UserName></LogonSession><LogonSession/></LogonSessions>");
    assert_eq!(two["LogonSessions"].as_array().unwrap().len(), 2);
    assert_eq!(two["LogonSessions"][1]["UserName"], Value::Null);
    assert_eq!(two["LogonSessions"][1]["Links"], json!([]));

    // Links: present but empty, absent, one, two.
    let rp = |links: &str| {
        pascal(&format!("<RestorePoint Href=\"h\">{links}</RestorePoint>"))["Links"].clone()
    };
    assert_eq!(rp("<Links/>"), json!([]));
    assert_eq!(rp("<Links>\n  </Links>"), json!([]));
    assert_eq!(rp(""), json!([]));
    assert_eq!(
        rp("<Links><Link Rel=\"a\" Href=\"b\"/></Links>")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        rp("<Links><Link Rel=\"a\" Href=\"b\"/><Link Rel=\"c\" Href=\"d\" Name=\"e\" Type=\"f\"/></Links>"),
        json!([link("a", "b", None, None), link("c", "d", Some("e"), Some("f"))])
    );

    // A nested typed list keeps the double wrapper, empty or not.
    let q = pascal("<QueryResult><Entities><Repositories/></Entities><PagingInfo PageNum=\"1\" PageSize=\"0\" PagesCount=\"0\"/></QueryResult>");
    assert_eq!(q["Entities"]["Repositories"], json!({"Repositories": []}));
    assert_eq!(
        q["PagingInfo"],
        json!({"PageNum": 1, "PageSize": 0, "PagesCount": 0, "Links": []})
    );
    let q = pascal(
        "<QueryResult><Refs><Ref UID=\"u\" Name=\"n\" Href=\"h\" Type=\"t\"/></Refs></QueryResult>",
    );
    assert_eq!(q["Refs"]["Refs"][0]["Links"], json!([]));
    assert_eq!(q["Entities"], Value::Null);
    assert_eq!(q["PagingInfo"], Value::Null);
}

#[test]
fn numbers_and_booleans_follow_the_schema() {
    let got = pascal(
        "<Repository Href=\"h\" Name=\"r\" UID=\"u\"><Capacity>107355303936</Capacity><FreeSpace>-1</FreeSpace></Repository>",
    );
    assert_eq!(got["Capacity"], json!(107355303936_i64));
    assert_eq!(got["FreeSpace"], json!(-1));
    let s = pascal(
        "<BackupJobSession Href=\"h\" Name=\"n\" UID=\"u\"><Progress> 100 </Progress><IsRetry>false</IsRetry><JobName>007</JobName><EndTimeUTC xsi:nil=\"true\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"/></BackupJobSession>",
    );
    assert_eq!(s["Progress"], json!(100));
    assert_eq!(s["IsRetry"], json!(false));
    assert_eq!(s["JobName"], json!("007"), "a string stays as EM wrote it");
    assert_eq!(s["EndTimeUTC"], Value::Null, "xsi:nil is null");
    assert_eq!(s["State"], Value::Null);
    // BackupServer: Port from the schema, WcfPort from the docs and EM.
    let b = pascal("<BackupServer Href=\"h\" Name=\"n\" UID=\"u\"><Port>9392</Port><WcfPort>9405</WcfPort><Version>13.0</Version></BackupServer>");
    assert_eq!(b["Port"], json!(9392));
    assert_eq!(b["WcfPort"], json!(9405));
    assert_eq!(b["Version"], json!("13.0"));
    assert_eq!(pascal("<BackupServer/>")["WcfPort"], Value::Null);
    // Reports: flat objects of numbers.
    let r = pascal("<OverviewReportFrame><BackupServers>2</BackupServers><SuccessfulVmLastestStates>7</SuccessfulVmLastestStates></OverviewReportFrame>");
    assert_eq!(r["BackupServers"], json!(2));
    assert_eq!(r["SuccessfulVmLastestStates"], json!(7));
    assert_eq!(r["RunningJobs"], Value::Null);
    // XML number forms JSON lacks, odd values kept as strings, empty → null.
    let p = |v: &str| {
        pascal(&format!(
            "<Repository><Capacity>{v}</Capacity></Repository>"
        ))["Capacity"]
            .clone()
    };
    assert_eq!(p("+42"), json!(42));
    assert_eq!(p("0042"), json!(42));
    assert_eq!(p("1.50"), json!(1.5));
    assert_eq!(p("INF"), json!("INF"));
    assert_eq!(p("n/a"), json!("n/a"));
    assert_eq!(p(""), Value::Null);
    assert_eq!(
        pascal("<Repository><Capacity>18446744073709551615</Capacity></Repository>").to_string(),
        serde_json::from_str::<Value>(r#"{"Href":null,"Type":null,"Name":null,"UID":null,"Links":[],"Capacity":18446744073709551615,"FreeSpace":null}"#).unwrap().to_string()
    );
    let tb = |v: &str| {
        pascal(&format!(
            "<Task Href=\"h\"><Result Success=\"{v}\"/></Task>"
        ))["Result"]["Success"]
            .clone()
    };
    assert_eq!(tb("true"), json!(true));
    assert_eq!(tb("1"), json!(true));
    assert_eq!(tb("0"), json!(false));
    assert_eq!(tb("maybe"), json!("maybe"));
    assert_eq!(tb(""), Value::Null);
    // Simple content: text becomes Value; repeated scalars are arrays.
    let j = pascal(
        "<Job Href=\"h\" Name=\"n\" UID=\"u\"><JobScheduleOptions>\
           <OptionsDaily Enabled=\"true\"><Kind>Everyday</Kind><Days>Sunday</Days><Days>Monday</Days><TimeOffsetUtc>2</TimeOffsetUtc></OptionsDaily>\
           <OptionsPeriodically Enabled=\"false\"><FullPeriod>1</FullPeriod><Schedule><Day Name=\"Sunday\">1,1</Day><Day Name=\"Monday\"/></Schedule></OptionsPeriodically>\
         </JobScheduleOptions></Job>",
    );
    let o = &j["JobScheduleOptions"];
    assert_eq!(
        o["OptionsDaily"],
        json!({"Enabled": true, "Kind": "Everyday", "Days": ["Sunday", "Monday"], "Time": null, "TimeOffsetUtc": 2})
    );
    assert_eq!(
        o["OptionsPeriodically"]["Schedule"],
        json!({"Days": [{"Name": "Sunday", "Value": "1,1"}, {"Name": "Monday", "Value": ""}]})
    );
    assert_eq!(o["OptionsPeriodically"]["FullPeriod"], json!(1));
    assert_eq!(o["OptionsMonthly"], Value::Null);
    assert_eq!(j["JobInfo"], Value::Null);
}

#[test]
fn declared_members_absent_are_null() {
    let got = pascal("<VmRestorePoint/>");
    assert_eq!(
        got,
        json!({"Href": null, "Type": null, "Name": null, "UID": null, "VmDisplayName": null,
               "Links": [], "CreationTimeUTC": null, "VmName": null, "Algorithm": null,
               "PointType": null, "HierarchyObjRef": null, "SqlInfo": null})
    );
    let t = pascal("<CloudTenant><Resources/></CloudTenant>");
    assert_eq!(t["Resources"], json!({"CloudTenantResources": []}));
    assert_eq!(t["ComputeResources"], Value::Null);
    assert_eq!(t["LeaseOptions"], Value::Null);
}

#[test]
fn bom_namespaces_and_whitespace() {
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(&sample(S04));
    assert_eq!(convert(&with_bom, Case::Pascal, None), expected_s04());
    let got = pascal(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<!-- c -->\n<v:LogonSession xmlns:v=\"http://www.veeam.com/ent/v1.0\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"x\" Href=\"h\">\n  \
         <v:UserName>  a b  </v:UserName>\n  <v:SessionId><!-- x -->s<![CDATA[<&>]]>t</v:SessionId>\n</v:LogonSession>\n\n",
    );
    assert_eq!(
        got,
        json!({"Href": "h", "Type": null, "Links": [], "UserName": "  a b  ", "SessionId": "s<&>t"})
    );
}

#[test]
fn unknown_elements_still_convert() {
    let got = pascal(
        "<VmRestorePoint Href=\"h\" Name=\"n\" UID=\"u\" NewAttr=\"x\" IsCanceled=\"true\">\
           <NewThing>abc</NewThing>\
           <Tag>a</Tag><Tag>b</Tag>\
           <Nested Attr=\"1\"><Inner>x</Inner><Inner>y</Inner></Nested>\
           <MaxConcurrentTasks>4</MaxConcurrentTasks>\
           <Empty/>\
           <Widgets><Widget>w</Widget></Widgets>\
           <VCloudComputeResources><CloudTenantVCloudComputeResource Id=\"1\"><CpuUsageMhz>0</CpuUsageMhz></CloudTenantVCloudComputeResource></VCloudComputeResources>\
           <TenantType><StandaloneTenant><Username>u</Username></StandaloneTenant></TenantType>\
           <Note Lang=\"en\">hello</Note>\
           <Tag>c</Tag>\
         </VmRestorePoint>",
    );
    assert_eq!(got["NewAttr"], "x");
    assert_eq!(
        got["IsCanceled"],
        json!(true),
        "the docs type IsCanceled as Bool"
    );
    assert_eq!(got["NewThing"], "abc");
    assert_eq!(
        got["Tags"],
        json!(["a", "b", "c"]),
        "repeated siblings, even apart"
    );
    assert_eq!(got["Nested"], json!({"Attr": "1", "Inners": ["x", "y"]}));
    assert_eq!(
        got["MaxConcurrentTasks"],
        json!(4),
        "the docs type it as Int"
    );
    assert_eq!(got["Empty"], "");
    assert_eq!(
        got["Widgets"],
        json!({"Widgets": ["w"]}),
        "a plural-named wrapper is a list"
    );
    assert_eq!(
        got["VCloudComputeResources"],
        json!({"CloudTenantVCloudComputeResources": [{"Id": "1", "CpuUsageMhz": 0}]})
    );
    assert_eq!(
        got["TenantType"],
        json!({"StandaloneTenant": {"Username": "u"}})
    );
    assert_eq!(got["Note"], json!({"Lang": "en", "Value": "hello"}));
    assert_eq!(got["VmName"], Value::Null);
    assert!(got.get("Tag").is_none());

    // Unknown root: an object of its attributes and children.
    assert_eq!(
        pascal("<Foo a=\"1\"><Bar>x</Bar><Bar>y</Bar><Baz/></Foo>"),
        json!({"a": "1", "Bars": ["x", "y"], "Baz": ""})
    );
    assert_eq!(pascal("<Foo/>"), json!({}));
    assert_eq!(pascal("<Foo>text</Foo>"), json!({"Value": "text"}));
    // Newer root lists (from the docs and the Entities members).
    assert_eq!(pascal("<BackupFiles/>"), json!({"BackupFiles": []}));
    assert_eq!(
        pascal("<NASJobs><NASJob Name=\"j\"/></NASJobs>"),
        json!({"NASJobs": [{"Name": "j"}]})
    );
    assert_eq!(
        convert(
            b"<NASJobs><NASJob Name=\"j\"/></NASJobs>",
            Case::Camel,
            None
        ),
        json!({"nasJobs": [{"name": "j"}]})
    );
    // A scalar that grew attributes or children.
    let grown = pascal("<Repository><Capacity Unit=\"GB\">12</Capacity><FreeSpace><Bytes>1</Bytes></FreeSpace></Repository>");
    assert_eq!(grown["Capacity"], json!({"Unit": "GB", "Value": 12}));
    assert_eq!(grown["FreeSpace"], json!({"Bytes": "1"}));
    // A member declared once but sent twice keeps both.
    let twice = pascal("<VmRestorePoint><VmName>a</VmName><VmName>b</VmName></VmRestorePoint>");
    assert_eq!(twice["VmNames"], json!(["a", "b"]));
    assert!(twice.get("VmName").is_none());
    // Entities members the schema lacks.
    let q = pascal("<QueryResult><Entities><VmCdpReplicas><VmCdpReplica Name=\"a\"/></VmCdpReplicas></Entities></QueryResult>");
    assert_eq!(
        q["Entities"]["VmCdpReplicas"],
        json!({"VmCdpReplicas": [{"Name": "a"}]})
    );
    assert_eq!(q["Entities"]["Jobs"], Value::Null);
    let q = pascal("<QueryResult><Entities><CloudPublicIps><CloudPublicIp Name=\"a\" BackupServerUid=\"b\"/></CloudPublicIps></Entities></QueryResult>");
    let ip = &q["Entities"]["CloudPublicIps"]["CloudPublicIps"][0];
    assert_eq!(ip["Name"], "a");
    assert_eq!(
        ip["IpAddress"],
        Value::Null,
        "typed as the schema's CloudPublicIpAddressEntityType"
    );
    // Camel case applies to unknown names and plurals too.
    let c = convert(
        b"<Foo><NASThing>1</NASThing><UIDList>a</UIDList><UIDList>b</UIDList></Foo>",
        Case::Camel,
        None,
    );
    assert_eq!(c, json!({"nasThing": "1", "uidLists": ["a", "b"]}));
}

#[test]
fn many_siblings_are_grouped() {
    let mut xml = String::from("<Foo>");
    for i in 0..40 {
        xml.push_str(&format!("<Item>{i}</Item><Entry>{i}</Entry>"));
        if i % 7 == 0 {
            xml.push_str(&format!("<Z{i}>z</Z{i}>"));
        }
    }
    xml.push_str("</Foo>");
    let got = pascal(&xml);
    let xs: Vec<Value> = (0..40).map(|i| json!(i.to_string())).collect();
    assert_eq!(got["Items"], Value::Array(xs.clone()));
    assert_eq!(got["Entries"], Value::Array(xs));
    assert_eq!(got["Z7"], "z");
    assert_eq!(got.as_object().unwrap().len(), 2 + 6);
}

#[test]
fn strings_are_escaped() {
    let got =
        pascal("<Foo>tab\there \"q\" back\\slash \u{1} é 😀 &lt;&amp;&gt;&#x1F600;&#233;</Foo>");
    assert_eq!(
        got["Value"],
        "tab\there \"q\" back\\slash \u{1} é 😀 <&>😀é"
    );
    let got = pascal("<Error Message=\"a &quot;b&quot; c&apos;\nd\" StatusCode=\"400\"/>");
    assert_eq!(got["Message"], "a \"b\" c'\nd");
}

#[test]
fn urls_are_rewritten_in_json() {
    let rw = Rewrite {
        from: "https://EM.corp:9398",
        to: "http://gw:9399",
    };
    let got = convert(
        b"<VmsOverviewReportFrame Href=\"https://em.corp:9398/api/reports/summary/vms_overview\">\
            <ProtectedVmsReportLink>https://em.corp:9398/api/x?a=1&amp;b=2</ProtectedVmsReportLink>\
            <Other>see https://em.corp:9398/api/y and https://em.corp:93980/api/z or https://em.corp:9398</Other>\
            <Elsewhere>https://other:9398/api/</Elsewhere>\
          </VmsOverviewReportFrame>",
        Case::Pascal,
        Some(&rw),
    );
    assert_eq!(
        got["Href"],
        "http://gw:9399/api/reports/summary/vms_overview"
    );
    assert_eq!(
        got["ProtectedVmsReportLink"],
        "http://gw:9399/api/x?a=1&b=2"
    );
    assert_eq!(
        got["Other"],
        "see http://gw:9399/api/y and https://em.corp:93980/api/z or http://gw:9399"
    );
    assert_eq!(got["Elsewhere"], "https://other:9398/api/");
    // No rewriting without a Rewrite, or with an empty base.
    let plain = convert(
        &sample(S03),
        Case::Pascal,
        Some(&Rewrite { from: "", to: "x" }),
    );
    assert_eq!(plain, expected_s03(LH));
}

#[test]
fn urls_are_rewritten_in_xml() {
    let rw = Rewrite {
        from: LH,
        to: "http://gw:9399",
    };
    for name in ALL_XML {
        let xml = sample(name);
        let mut out = Vec::new();
        rewrite_xml(&xml, &rw, &mut out).unwrap();
        // Comments are not rewritten (sample 07 starts with one).
        let text = String::from_utf8(xml.clone()).unwrap();
        let body = text.find("-->").map_or(0, |p| p + 3);
        let want = format!(
            "{}{}",
            &text[..body],
            text[body..].replace(LH, "http://gw:9399")
        );
        assert_eq!(String::from_utf8(out.clone()).unwrap(), want, "{name}");
        // What XML clients get converts like the original, rewritten.
        if name == S07 {
            assert_eq!(
                convert(&out, Case::Pascal, None),
                expected_s07("http://gw:9399")
            );
        }
    }
    // Byte-for-byte elsewhere: BOM, declaration, namespaces, comments, spacing.
    let xml = "\u{feff}<?xml version=\"1.0\"?>\r\n<!-- keep https://localhost:9398/ -->\n<a xmlns=\"https://localhost:9398/ns\"  b = 'https://localhost:9398/api?x=1&amp;y=&quot;2&quot;' >\n\
               <c>https://localhost:9398/api/c</c><d><![CDATA[https://localhost:9398/api/d]]></d>\
               <e  f=\"https&#x3A;//localhost:9398/api/e\"/><g>plain &amp; https://localhost:93980/no</g></a>\n";
    let mut out = b"prefix".to_vec();
    rewrite_xml(
        xml.as_bytes(),
        &Rewrite {
            from: LH,
            to: "http://gw/p&q",
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "prefix\u{feff}<?xml version=\"1.0\"?>\r\n<!-- keep https://localhost:9398/ -->\n<a xmlns=\"https://localhost:9398/ns\"  b = 'http://gw/p&amp;q/api?x=1&amp;y=&quot;2&quot;' >\n\
         <c>http://gw/p&amp;q/api/c</c><d><![CDATA[http://gw/p&q/api/d]]></d>\
         <e  f=\"http://gw/p&amp;q/api/e\"/><g>plain &amp; https://localhost:93980/no</g></a>\n"
    );
}

#[test]
fn bad_input_is_an_error_and_leaves_out_alone() {
    assert!(matches!(err(b""), ConvertError::UnexpectedRoot(_)));
    assert!(matches!(err(b"  \n "), ConvertError::UnexpectedRoot(_)));
    assert!(matches!(
        err(b"<!-- only a comment -->"),
        ConvertError::UnexpectedRoot(_)
    ));
    assert!(matches!(
        err(b"<?xml version=\"1.0\"?>"),
        ConvertError::UnexpectedRoot(_)
    ));
    assert!(matches!(
        err(b"{\"Refs\": []}"),
        ConvertError::UnexpectedRoot(_)
    ));
    assert!(matches!(err(b"just text"), ConvertError::UnexpectedRoot(_)));
    assert!(matches!(
        err(b"\xEF\xBB\xBF"),
        ConvertError::UnexpectedRoot(_)
    ));
    assert!(matches!(err(b"<a>"), ConvertError::Malformed(_)));
    assert!(matches!(err(b"<a><b></a>"), ConvertError::Malformed(_)));
    assert!(matches!(err(b"<a></b>"), ConvertError::Malformed(_)));
    assert!(matches!(err(b"</a>"), ConvertError::Malformed(_)));
    assert!(matches!(err(b"<a/><b/>"), ConvertError::Malformed(_)));
    assert!(matches!(err(b"<a/>trailing"), ConvertError::Malformed(_)));
    assert!(matches!(
        err(b"<a x='1' x='2'/>"),
        ConvertError::Malformed(_)
    ));
    assert!(matches!(err(b"<a x/>"), ConvertError::Malformed(_)));
    assert!(matches!(err(b"<a x='<'/>"), ConvertError::Malformed(_)));
    assert!(matches!(err(b"<a>&bogus;</a>"), ConvertError::Malformed(_)));
    assert!(matches!(err(b"<a>&#0;</a>"), ConvertError::Malformed(_)));
    assert!(matches!(
        err(b"<a>&#xD800;</a>"),
        ConvertError::Malformed(_)
    ));
    assert!(matches!(err(b"<a>& b</a>"), ConvertError::Malformed(_)));
    assert!(matches!(err(b"<a x='&amp'/>"), ConvertError::Malformed(_)));
    assert!(matches!(err(b"<1a/>"), ConvertError::Malformed(_)));
    assert!(matches!(err(b"< a/>"), ConvertError::Malformed(_)));
    assert!(matches!(err(b"<>x</>"), ConvertError::Malformed(_)));
    assert!(matches!(err(b"<a"), ConvertError::Malformed(_)));
    assert!(matches!(
        err(b"<a/><?xml version='1.0'?>"),
        ConvertError::Malformed(_)
    ));
    assert!(matches!(
        err(b"<a>\xff</a>"),
        ConvertError::NotUtf8 { offset: 3 }
    ));
    assert!(matches!(
        err(b"\xEF\xBB\xBF<a>\xC3</a>"),
        ConvertError::NotUtf8 { offset: 6 }
    ));
    // UTF-16 (EM never sends it).
    let utf16: Vec<u8> = "\u{feff}<a/>"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    assert!(matches!(err(&utf16), ConvertError::NotUtf8 { .. }));
    // Every truncation of a real document fails cleanly.
    for name in ALL_XML {
        let xml = sample(name);
        let end = xml.iter().rposition(|&b| b == b'>').unwrap();
        for cut in 0..end {
            let e = err(&xml[..cut]);
            assert!(
                matches!(
                    e,
                    ConvertError::Malformed(_)
                        | ConvertError::UnexpectedRoot(_)
                        | ConvertError::NotUtf8 { .. }
                ),
                "{name} cut at {cut}: {e:?}"
            );
        }
    }
    // Deep nesting is refused, not a stack overflow.
    let deep = "<a>".repeat(100_000);
    assert!(matches!(err(deep.as_bytes()), ConvertError::TooDeep(_)));
    let ok = format!("{}{}", "<a>".repeat(256), "</a>".repeat(256));
    assert!(matches!(
        err(format!("{}{}", "<a>".repeat(257), "</a>".repeat(257)).as_bytes()),
        ConvertError::TooDeep(256)
    ));
    assert!(to_json(ok.as_bytes(), Case::Pascal, None, &mut Vec::new()).is_ok());
}

#[test]
fn output_is_appended() {
    let mut out = b"[".to_vec();
    to_json(&sample(S08), Case::Pascal, None, &mut out).unwrap();
    assert_eq!(out[0], b'[');
    let v: Value = serde_json::from_slice(&out[1..]).unwrap();
    assert_eq!(v["StatusCode"], 500);
}

#[test]
fn root_name_peeks() {
    assert_eq!(root_name(&sample(S08)), Some("Error"));
    assert_eq!(root_name(&sample(S03)), Some("EntityReferences"));
    assert_eq!(
        root_name(b"\xEF\xBB\xBF<?xml version='1.0'?>\n<!-- c --><v:QueryResult xmlns:v='x'>"),
        Some("QueryResult")
    );
    assert_eq!(root_name(b"<Error/>garbage"), Some("Error"));
    assert_eq!(root_name(b""), None);
    assert_eq!(root_name(b"text<a/>"), None);
    assert_eq!(root_name(b"{\"a\":1}"), None);
    assert_eq!(root_name(b"<1a/>"), None);
    assert_eq!(root_name(b"<\xff/>"), None);
}

#[test]
fn schema_table_invariants() {
    let types = schema::all_types();
    let roots = schema::all_roots();
    assert!(roots.windows(2).all(|w| w[0].0 < w[1].0), "ROOTS sorted");
    let ns = schema::all_name_scalars();
    assert!(
        ns.windows(2).all(|w| w[0].0 < w[1].0),
        "NAME_SCALARS sorted"
    );
    let check = |ty: Ty| match ty {
        Ty::Obj(id) | Ty::Arr(id) => assert!(usize::from(id) < types.len()),
        _ => {}
    };
    for (_, ty) in roots {
        check(*ty);
    }
    for t in types {
        assert!(t.members.len() <= 128, "{}", t.name);
        assert!(usize::from(t.n_attrs) <= t.members.len());
        for (i, m) in t.members.iter().enumerate() {
            check(m.ty);
            if i < usize::from(t.n_attrs) {
                assert!(matches!(m.ty, Ty::Scalar(_)), "{}.{}", t.name, m.xml);
            }
            assert_eq!(m.json[1], camel(m.json[0]));
            if let Ty::Arr(id) = m.ty {
                let item = schema::type_def(id);
                assert_eq!(item.members.len(), 1);
                assert!(item.members[0].flags & REPEATED != 0);
            }
        }
    }
    // Facts the schema states, read back through the table.
    let by_name = |n: &str| types.iter().find(|t| t.name == n).unwrap();
    let member = |t: &str, m: &str| by_name(t).members.iter().find(|x| x.xml == m).unwrap();
    assert_eq!(member("PagingInfoType", "PageNum").ty, schema::NUM);
    assert_eq!(member("RepositoryEntityType", "Capacity").ty, schema::NUM);
    assert_eq!(
        member("BackupJobSessionEntityType", "IsRetry").ty,
        schema::BOOL
    );
    assert_eq!(
        member("JobStatisticsReportFrameType", "MaxJobDuration").ty,
        schema::NUM
    );
    assert_eq!(
        member("VmRestorePointEntityType", "CreationTimeUTC").ty,
        schema::STR
    );
    assert_eq!(
        member("VmRestorePointSqlDatabaseInfoType", "FirstLsn").ty,
        schema::NUM
    );
    assert_eq!(member("EntityReferenceListType", "Ref").json[0], "Refs");
    assert_eq!(
        member("RepositoryEntityListType", "Repository").json[0],
        "Repositories"
    );
    assert!(matches!(member("ResourceType", "Links").ty, Ty::Arr(_)));
    assert!(matches!(
        member("JobItemVssOptionsType", "IncludedIndexingFolders").ty,
        Ty::Arr(_)
    ));
    assert!(matches!(
        member("CloudTenantEntityType", "Resources").ty,
        Ty::Obj(_)
    ));
    let entities = by_name("EntitiesType");
    let sent: Vec<&str> = entities
        .members
        .iter()
        .filter(|m| m.flags & NULLABLE != 0)
        .map(|m| m.xml)
        .collect();
    assert_eq!(sent, ENTITIES);
    assert_eq!(
        entities.members.len(),
        52,
        "plus Passwords and Credentials, never null-filled"
    );
}

/// EM's XML and EM's own JSON for the same resource, from a docs page whose
/// table cells hold the complete examples (the page indents with no-break
/// spaces, which are neither XML nor JSON whitespace).
fn docs_pair(page: &str, root: &str) -> (Value, Value) {
    let page = String::from_utf8(data_file(&format!("docs/{page}")))
        .unwrap()
        .replace('\u{a0}', " ");
    let cells: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("| ")?.strip_suffix(" |"))
        .collect();
    let open = format!("<{root} ");
    let i = cells
        .iter()
        .position(|c| c.starts_with(&open) && c.contains(&format!("</{root}>")))
        .unwrap();
    let json_cell = cells[i..].iter().find(|c| c.starts_with('{')).unwrap();
    let em: Value = serde_json::from_str(json_cell).unwrap();
    (pascal(cells[i]), em)
}

#[test]
fn docs_cloud_tenants_example_matches_em_json() {
    let (ours, em) = docs_pair("representation_collections.md", "CloudTenants");
    let mut diffs = Vec::new();
    covers(&ours, &em, "$", &mut diffs);
    assert!(
        diffs.is_empty(),
        "differences from EM's JSON:\n{}",
        diffs.join("\n")
    );
    assert_eq!(ours["CloudTenants"].as_array().unwrap().len(), 3);
    let t = &ours["CloudTenants"][2];
    assert_eq!(
        t["Resources"]["CloudTenantResources"][0]["RepositoryQuota"]["Quota"],
        json!(102400)
    );
    assert_eq!(
        t["ComputeResources"],
        json!({"CloudTenantComputeResources": []})
    );
    assert_eq!(t["MaxConcurrentTasks"], json!(2));
}

#[test]
fn docs_job_example_matches_em_json_but_for_serializer_quirks() {
    let (ours, em) = docs_pair("resource_representation_for_ke.md", "Job");
    let mut diffs = Vec::new();
    covers(&ours, &em, "$", &mut diffs);
    // What EM's JSON serializer does that its XML does not carry: it
    // reformats xs:time values as dates, renames `RetrySpecified`, and gives
    // an info object an empty `Href`.
    let o = "$.JobScheduleOptions.Standart";
    assert_eq!(
        diffs,
        [
            "$.JobScheduleOptions.Href: missing, EM has \"\"".to_string(),
            format!("{o}.OptionsDaily.Time: ours \"14:00:00.0000000+01:00\", EM \"2019-10-23T14:00:00\""),
            format!("{o}.OptionsMonthly.Time: ours \"22:00:00.0000000+01:00\", EM \"2019-10-23T22:00:00+02:00\""),
            format!("{o}.RetryOptions.RetrySpecified1: missing, EM has true"),
            format!("{o}.RetryOptions.RetrySpecified: true not in EM's JSON"),
        ]
    );
}

/// Whether our JSON says what EM's does: same scalars, same array lengths,
/// every member EM gives a value to present with that value. Allowed: we
/// have `[]` where EM has `null` (rule 4), and members EM leaves out are
/// `null`/`[]` on our side (declared but absent).
fn covers(ours: &Value, em: &Value, path: &str, diffs: &mut Vec<String>) {
    match (ours, em) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get(k) {
                    Some(x) => covers(x, v, &format!("{path}.{k}"), diffs),
                    None if v.is_null() => {}
                    None => diffs.push(format!("{path}.{k}: missing, EM has {v}")),
                }
            }
            for (k, v) in a {
                let empty = v.is_null() || v.as_array().is_some_and(Vec::is_empty);
                if !b.contains_key(k) && !empty {
                    diffs.push(format!("{path}.{k}: {v} not in EM's JSON"));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                covers(x, y, &format!("{path}[{i}]"), diffs);
            }
        }
        (Value::Array(a), Value::Null) if a.is_empty() => {}
        (a, b) if a == b => {}
        (a, b) => diffs.push(format!("{path}: ours {a}, EM {b}")),
    }
}

/// xorshift64*: a small deterministic generator for the randomized test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Feeds random bytes, truncations and mutations of the samples through
/// every entry point: no panic, and every success is valid JSON/XML.
#[test]
fn randomized_inputs_never_panic() {
    let samples: Vec<Vec<u8>> = ALL_XML.iter().map(|n| sample(n)).collect();
    let tokens: [&[u8]; 14] = [
        b"<",
        b">",
        b"/>",
        b"</",
        b"&amp;",
        b"&",
        b"\"",
        b"'",
        b"<![CDATA[",
        b"]]>",
        b"<!--",
        b"\xEF\xBB\xBF",
        b"<Links>",
        b"https://localhost:9398",
    ];
    let rw = Rewrite {
        from: LH,
        to: "http://gw",
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let iterations = if cfg!(debug_assertions) { 6000 } else { 60000 };
    for _ in 0..iterations {
        let mut doc = samples[rng.below(samples.len())].clone();
        for _ in 0..=rng.below(4) {
            match rng.below(7) {
                0 => doc.truncate(rng.below(doc.len() + 1)),
                1 => {
                    let i = rng.below(doc.len());
                    if i < doc.len() {
                        doc[i] = rng.next() as u8;
                    }
                }
                2 => {
                    let i = rng.below(doc.len() + 1);
                    let t = tokens[rng.below(tokens.len())];
                    doc.splice(i..i, t.iter().copied());
                }
                3 => {
                    let a = rng.below(doc.len() + 1);
                    let b = (a + rng.below(64)).min(doc.len());
                    doc.drain(a..b);
                }
                4 => {
                    let a = rng.below(doc.len() + 1);
                    let b = (a + rng.below(200)).min(doc.len());
                    let piece = doc[a..b].to_vec();
                    let at = rng.below(doc.len() + 1);
                    doc.splice(at..at, piece);
                }
                5 => doc = (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
                _ => {}
            }
        }
        for case in [Case::Pascal, Case::Camel] {
            let mut out = b"x".to_vec();
            match to_json(&doc, case, Some(&rw), &mut out) {
                Ok(()) => {
                    if let Err(e) = serde_json::from_slice::<Value>(&out[1..]) {
                        panic!("invalid JSON {e} from {:?}", String::from_utf8_lossy(&doc));
                    }
                }
                Err(_) => assert_eq!(out, b"x"),
            }
        }
        let mut out = Vec::new();
        match rewrite_xml(&doc, &rw, &mut out) {
            Ok(()) => {
                // The rewritten document is still well-formed.
                let mut again = Vec::new();
                assert!(
                    rewrite_xml(&out, &rw, &mut again).is_ok(),
                    "rewrite broke {:?}",
                    String::from_utf8_lossy(&doc)
                );
            }
            Err(_) => assert!(out.is_empty()),
        }
        let _ = root_name(&doc);
    }
}

#[test]
fn links_are_a_plain_array_in_types_the_schema_does_not_know() {
    // A newer EM resource (agents' discovered computers) the 9.5 schema lacks.
    let got = pascal(
        "<DiscoveredComputer Href=\"h\" Name=\"pc1\">\
           <Links><Link Rel=\"Up\" Href=\"u\" Type=\"ProtectionGroup\"/><Link Rel=\"Alternate\" Href=\"a\"/></Links>\
           <Nested><Links><Link Rel=\"Down\" Href=\"d\"/></Links></Nested>\
         </DiscoveredComputer>",
    );
    assert_eq!(
        got["Links"],
        json!([
            {"Rel": "Up", "Href": "u", "Name": null, "Type": "ProtectionGroup"},
            {"Rel": "Alternate", "Href": "a", "Name": null, "Type": null}
        ]),
        "{got}"
    );
    assert_eq!(got["Nested"]["Links"][0]["Rel"], "Down", "{got}");
    let camel = convert(
        b"<DiscoveredComputer><Links><Link Rel=\"Up\" Href=\"u\"/></Links></DiscoveredComputer>",
        Case::Camel,
        None,
    );
    assert_eq!(camel["links"][0]["rel"], "Up", "{camel}");
}

#[test]
fn an_element_with_too_many_attributes_is_refused_not_slow() {
    let attrs: String = (0..schema_attr_limit())
        .map(|i| format!(" a{i}=\"{i}\""))
        .collect();
    pascal(&format!("<Ref{attrs}/>"));
    let too_many = format!("<Ref{attrs} last=\"x\"/>");
    assert!(matches!(
        err(too_many.as_bytes()),
        ConvertError::Malformed(_)
    ));
}

fn schema_attr_limit() -> usize {
    super::doc::MAX_ATTRS
}
