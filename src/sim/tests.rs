//! Drives a real simulator over real sockets with a minimal hyper client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::*;

// ---------------------------------------------------------------- helpers

fn config(idle: Duration) -> SimConfig {
    SimConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls: false,
        session_idle: idle,
        restore_points: 50,
        ..SimConfig::default()
    }
}

async fn start() -> Sim {
    Sim::start(config(Duration::from_secs(900))).await.unwrap()
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    sender: SendRequest<Empty<Bytes>>,
    host: String,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }
    fn xml(&self) -> Node {
        parse_xml(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn connect(addr: SocketAddr) -> Client {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    Client {
        sender,
        host: addr.to_string(),
    }
}

impl Client {
    async fn try_send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> hyper::Result<Reply> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.sender.ready().await?;
        let resp = self
            .sender
            .send_request(req.body(Empty::new()).unwrap())
            .await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        })
    }

    async fn send(&mut self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.try_send(method, path, headers).await.unwrap()
    }

    async fn get(&mut self, path: &str, token: &str) -> Reply {
        self.send(Method::GET, path, &[("x-restsvcsessionid", token)])
            .await
    }

    /// Logs on as admin/admin and returns the token.
    async fn logon(&mut self) -> String {
        let r = self
            .send(
                Method::POST,
                "/api/sessionMngr/?v=latest",
                &[("authorization", &basic("admin", "admin"))],
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.header("x-restsvcsessionid").to_owned()
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A parsed XML element, namespaces ignored.
#[derive(Debug)]
struct Node {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
    text: String,
}

impl Node {
    fn attr(&self, name: &str) -> &str {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no attribute {name} on {}", self.name))
    }
    fn all(&self, name: &str) -> Vec<&Node> {
        let mut found = Vec::new();
        self.walk(name, &mut found);
        found
    }
    fn walk<'a>(&'a self, name: &str, found: &mut Vec<&'a Node>) {
        for c in &self.children {
            if c.name == name {
                found.push(c);
            }
            c.walk(name, found);
        }
    }
    fn child(&self, name: &str) -> &Node {
        self.children
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no child {name} in {}", self.name))
    }
}

/// Parses a whole document strictly: any syntax error, or a document that ends
/// inside an element, is an error.
fn parse_xml(s: &str) -> Result<Node, String> {
    use quick_xml::events::{BytesStart, Event};
    fn node(e: &BytesStart) -> Result<Node, String> {
        let mut attrs = Vec::new();
        for a in e.attributes() {
            let a = a.map_err(|e| e.to_string())?;
            let v = a.unescape_value().map_err(|e| e.to_string())?;
            attrs.push((
                String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                v.into_owned(),
            ));
        }
        Ok(Node {
            name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
            attrs,
            children: Vec::new(),
            text: String::new(),
        })
    }
    let mut reader = quick_xml::Reader::from_str(s);
    let mut stack: Vec<Node> = Vec::new();
    let mut root = None;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => stack.push(node(&e)?),
            Event::Empty(e) => {
                let n = node(&e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(n),
                    None => root = Some(n),
                }
            }
            Event::End(_) => {
                let n = stack.pop().ok_or("unbalanced end tag")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(n),
                    None => root = Some(n),
                }
            }
            Event::Text(t) => {
                if let Some(n) = stack.last_mut() {
                    n.text.push_str(&t.unescape().map_err(|e| e.to_string())?);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err("document ends inside an element".into());
    }
    root.ok_or_else(|| "no root element".into())
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn entry_point_needs_no_session() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    for path in ["/api/", "/api"] {
        let r = c.send(Method::GET, path, &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-type"), "application/xml; charset=utf-8");
        assert!(r
            .body
            .starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"));
        let doc = r.xml();
        assert_eq!(doc.name, "EnterpriseManager");
        let create = doc.child("Links").children[1].attr("Href").to_owned();
        assert_eq!(
            create,
            format!("{}/api/sessionMngr/?v=latest", sim.base_url())
        );
        assert_eq!(doc.all("SupportedVersion").len(), 3);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn logon_returns_token_cookie_and_session() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let r = c
        .send(
            Method::POST,
            "/api/sessionMngr/?v=latest",
            &[("authorization", &basic("admin", "admin"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let token = r.header("x-restsvcsessionid").to_owned();
    let id = state::token_session_id(&token).expect("token is base64 of 16 bytes");
    assert_eq!(token.len(), 24);
    assert_eq!(
        r.header("set-cookie"),
        format!("X-RestSvcSessionId={token}; Path=/api;")
    );
    let doc = r.xml();
    assert_eq!(doc.name, "LogonSession");
    assert_eq!(doc.child("SessionId").text, id.to_string());
    assert_eq!(doc.child("UserName").text, "admin");
    let delete = doc
        .all("Link")
        .into_iter()
        .find(|l| l.attr("Rel") == "Delete")
        .unwrap()
        .attr("Href")
        .to_owned();
    assert_eq!(delete, format!("{}/api/logonSessions/{id}", sim.base_url()));
    // Without the trailing slash, and with another version, too.
    let r = c
        .send(
            Method::POST,
            "/api/sessionMngr?v=v1_6",
            &[("authorization", &basic("ADMIN", "admin"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let s = sim.stats();
    assert_eq!((s.logons_ok, s.active_sessions), (2, 2));
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_credentials_get_401_with_www_authenticate() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    for headers in [
        vec![("authorization", basic("admin", "wrong"))],
        vec![],
        vec![("authorization", "Bearer abc".to_owned())],
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = c.send(Method::POST, "/api/sessionMngr/?v=latest", &h).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.header("www-authenticate"), "Basic Realm=RestSvc");
        let err = r.xml();
        assert_eq!(err.name, "Error");
        assert_eq!(err.attr("StatusCode"), "401");
    }
    // A new password applies to new logons.
    sim.set_password("s3cret");
    let r = c
        .send(
            Method::POST,
            "/api/sessionMngr/",
            &[("authorization", &basic("admin", "s3cret"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let s = sim.stats();
    assert_eq!((s.logons_ok, s.logons_failed), (1, 3));
    sim.shutdown().await;
}

#[tokio::test]
async fn vm_restore_points_in_reference_form() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    for index in [0, 3, 49] {
        let id = sim.restore_point_id(index);
        let r = c
            .get(&format!("/api/restorePoints/{id}/vmRestorePoints"), &token)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let doc = r.xml();
        assert_eq!(doc.name, "EntityReferences");
        let refs = doc.all("Ref");
        assert_eq!(refs.len(), sim.vm_count(index));
        for rf in refs {
            assert_eq!(rf.attr("Type"), "VmRestorePointReference");
            assert!(rf
                .attr("Href")
                .starts_with(&format!("{}/api/vmRestorePoints/", sim.base_url())));
            assert!(rf.attr("UID").starts_with("urn:veeam:VmRestorePoint:"));
            let links = rf.all("Link");
            assert_eq!(links.len(), 4);
            assert!(links.iter().any(
                |l| l.attr("Type") == "RestorePointReference" && l.attr("Href").ends_with(&id)
            ));
        }
    }
    // Uppercase ids and case-insensitive literals are EM's (WCF) matching too.
    let upper = sim.restore_point_id(1).to_uppercase();
    let r = c
        .get(
            &format!("/api/restorepoints/{upper}/vmrestorepoints/"),
            &token,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    sim.shutdown().await;
}

#[tokio::test]
async fn vm_restore_points_in_entity_form() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let id = sim.restore_point_id(7);
    for format in ["Entity", "entity"] {
        let r = c
            .get(
                &format!("/api/restorePoints/{id}/vmRestorePoints?format={format}"),
                &token,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let doc = r.xml();
        assert_eq!(doc.name, "VmRestorePoints");
        let points = doc.all("VmRestorePoint");
        assert_eq!(points.len(), sim.vm_count(7));
        for p in &points {
            let vm = p.child("VmName").text.clone();
            assert_eq!(p.attr("VmDisplayName"), vm);
            assert!(p.attr("Name").starts_with(&format!("{vm}@2025-")));
            assert!(p.child("CreationTimeUTC").text.starts_with("2025-"));
            assert!(p.child("CreationTimeUTC").text.ends_with('Z'));
            assert!(["Full", "Incremental"].contains(&p.child("Algorithm").text.as_str()));
            assert!(p
                .child("HierarchyObjRef")
                .text
                .starts_with("urn:VMware:Vm:"));
            assert_eq!(p.child("Links").children[0].attr("Rel"), "Restore");
        }
        // The single VM restore point in both forms.
        let vm_href = points[0].attr("Href").replace("?format=Entity", "");
        let path = vm_href.strip_prefix(&sim.base_url()).unwrap().to_owned();
        let one = c.get(&format!("{path}?format=Entity"), &token).await.xml();
        assert_eq!(one.name, "VmRestorePoint");
        assert_eq!(one.attr("UID"), points[0].attr("UID"));
        let reference = c.get(&path, &token).await.xml();
        assert_eq!(reference.name, "EntityRef");
        assert_eq!(reference.attr("Type"), "VmRestorePointReference");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn restore_points_list_and_single() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let list = c.get("/api/restorePoints", &token).await.xml();
    assert_eq!(list.name, "EntityReferences");
    let refs = list.all("Ref");
    assert_eq!(refs.len(), 50);
    assert_eq!(
        refs[5].attr("Href"),
        format!(
            "{}/api/restorePoints/{}",
            sim.base_url(),
            sim.restore_point_id(5)
        )
    );
    assert_eq!(refs[5].attr("Type"), "RestorePointReference");
    let id = sim.restore_point_id(5);
    let one = c
        .get(&format!("/api/restorePoints/{id}"), &token)
        .await
        .xml();
    assert_eq!(one.name, "EntityRef");
    assert_eq!(one.attr("Name"), refs[5].attr("Name"));
    let entity = c
        .get(&format!("/api/restorePoints/{id}?format=Entity"), &token)
        .await
        .xml();
    assert_eq!(entity.name, "RestorePoint");
    assert_eq!(entity.attr("UID"), format!("urn:veeam:RestorePoint:{id}"));
    assert!(entity.child("BackupDateUTC").text.starts_with("2025-"));
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_ids_paths_and_methods() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let unknown = sim.restore_point_id(999); // past the 50 generated
    for path in [
        format!("/api/restorePoints/{unknown}/vmRestorePoints"),
        format!("/api/restorePoints/{unknown}"),
        "/api/restorePoints/not-a-uuid/vmRestorePoints".to_owned(),
        format!("/api/vmRestorePoints/{unknown}"),
        format!("/api/logonSessions/{unknown}"),
        "/api/backups".to_owned(),
        "/nothing".to_owned(),
    ] {
        let r = c.get(&path, &token).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        let err = r.xml();
        assert_eq!(err.name, "Error");
        assert_eq!(err.attr("StatusCode"), "404");
        assert!(!err.attr("Message").is_empty());
    }
    let r = c
        .send(
            Method::POST,
            "/api/restorePoints",
            &[("x-restsvcsessionid", &token)],
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.xml().attr("StatusCode"), "405");
    assert_eq!(r.header("allow"), "GET, HEAD");
    let r = c.send(Method::GET, "/api/sessionMngr/", &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    sim.shutdown().await;
}

#[tokio::test]
async fn missing_or_unknown_session_is_401() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let id = sim.restore_point_id(0);
    let path = format!("/api/restorePoints/{id}/vmRestorePoints");
    let r = c.send(Method::GET, &path, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.xml().attr("StatusCode"), "401");
    let r = c.get(&path, "OsU6RL7OGkGKrPBGxKxURw==").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = c.get(&path, "garbage").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(sim.stats().unauthorized, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn cookie_token_wins_over_header() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let cookie = format!("X-RestSvcSessionId={token}");
    let r = c
        .send(Method::GET, "/api/logonSessions", &[("cookie", &cookie)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = c
        .send(
            Method::GET,
            "/api/logonSessions",
            &[
                ("cookie", "X-RestSvcSessionId=OsU6RL7OGkGKrPBGxKxURw=="),
                ("x-restsvcsessionid", &token),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    sim.shutdown().await;
}

#[tokio::test]
async fn sessions_expire_when_idle_or_forced() {
    let sim = Sim::start(config(Duration::from_millis(400)))
        .await
        .unwrap();
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    // Each use restarts the idle timer.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            c.get("/api/logonSessions", &token).await.status,
            StatusCode::OK
        );
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = c.get("/api/logonSessions", &token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.xml().name, "Error");
    assert_eq!(sim.stats().active_sessions, 0);

    let token = c.logon().await;
    assert_eq!(
        c.get("/api/logonSessions", &token).await.status,
        StatusCode::OK
    );
    sim.expire_all_sessions();
    assert_eq!(
        c.get("/api/logonSessions", &token).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(sim.stats().unauthorized, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn logon_sessions_and_logout() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let first = c.logon().await;
    let second = c.logon().await;
    let list = c.get("/api/logonSessions", &first).await.xml();
    assert_eq!(list.name, "LogonSessions");
    let sessions = list.all("LogonSession");
    assert_eq!(sessions.len(), 2);
    let id = state::token_session_id(&first).unwrap().to_string();
    assert_eq!(sessions[0].child("SessionId").text, id);
    let one = c.get(&format!("/api/logonSessions/{id}"), &second).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.xml().child("SessionId").text, id);

    let r = c
        .send(
            Method::DELETE,
            &format!("/api/logonSessions/{id}"),
            &[("x-restsvcsessionid", &first)],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    assert_eq!(
        c.get("/api/logonSessions", &first).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = c
        .send(
            Method::DELETE,
            &format!("/api/logonSessions/{id}"),
            &[("x-restsvcsessionid", &second)],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let s = sim.stats();
    assert_eq!((s.logouts, s.active_sessions), (1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn json_when_accepted() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let r = c
        .send(
            Method::POST,
            "/api/sessionMngr/?v=latest",
            &[
                ("authorization", &basic("admin", "admin")),
                ("accept", "application/json"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("content-type"), "application/json; charset=utf-8");
    let token = r.header("x-restsvcsessionid").to_owned();
    let session = r.json();
    assert_eq!(session["UserName"], "admin");
    assert_eq!(session["Type"], "LogonSession");
    assert!(session["Links"].as_array().unwrap().len() > 10);

    let id = sim.restore_point_id(2);
    let json_headers = [
        ("x-restsvcsessionid", token.as_str()),
        ("accept", "application/json"),
    ];
    let r = c
        .send(
            Method::GET,
            &format!("/api/restorePoints/{id}/vmRestorePoints"),
            &json_headers,
        )
        .await;
    let refs = r.json();
    let refs = refs["Refs"].as_array().unwrap();
    assert_eq!(refs.len(), sim.vm_count(2));
    for rf in refs {
        assert_eq!(rf["Type"], "VmRestorePointReference");
        for link in rf["Links"].as_array().unwrap() {
            let obj = link.as_object().unwrap();
            let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["Href", "Name", "Rel", "Type"]);
        }
    }
    // The JSON and XML forms agree.
    let xml = c
        .get(
            &format!("/api/restorePoints/{id}/vmRestorePoints?format=Entity"),
            &token,
        )
        .await
        .xml();
    let json = c
        .send(
            Method::GET,
            &format!("/api/restorePoints/{id}/vmRestorePoints?format=Entity"),
            &json_headers,
        )
        .await
        .json();
    let entities = json["VmRestorePoints"].as_array().unwrap();
    let xml_points = xml.all("VmRestorePoint");
    assert_eq!(entities.len(), xml_points.len());
    for (j, x) in entities.iter().zip(xml_points) {
        assert_eq!(j["Name"], x.attr("Name"));
        assert_eq!(j["VmName"], x.child("VmName").text.as_str());
        assert_eq!(
            j["CreationTimeUTC"],
            x.child("CreationTimeUTC").text.as_str()
        );
        assert_eq!(j["SqlInfo"], serde_json::Value::Null);
        assert_eq!(
            j["Links"].as_array().unwrap().len(),
            x.child("Links").children.len()
        );
    }
    // Errors in EM's JSON shape.
    let unknown = sim.restore_point_id(500);
    let r = c
        .send(
            Method::GET,
            &format!("/api/restorePoints/{unknown}/vmRestorePoints"),
            &json_headers,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let err = r.json();
    let mut keys: Vec<_> = err
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "FirstChanceExceptionMessage",
            "Message",
            "StackTrace",
            "Status",
            "StatusCode"
        ]
    );
    assert_eq!(err["StatusCode"], 404);
    assert_eq!(err["Status"], serde_json::Value::Null);
    sim.shutdown().await;
}

#[tokio::test]
async fn head_is_get_without_body() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let path = format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(4)
    );
    let get = c.get(&path, &token).await;
    let head = c
        .send(Method::HEAD, &path, &[("x-restsvcsessionid", &token)])
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), get.body.len().to_string());
    sim.shutdown().await;
}

#[tokio::test]
async fn status_and_garbage_faults() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let path = format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(0)
    );

    sim.set_fault(FaultTarget::Data, Some(Fault::Status(500)));
    let r = c.get(&path, &token).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.xml().attr("StatusCode"), "500");
    // Logon and the entry point are not data.
    let second = c.logon().await;
    assert_eq!(
        c.send(Method::GET, "/api/", &[]).await.status,
        StatusCode::OK
    );

    sim.set_fault(FaultTarget::Data, Some(Fault::Garbage));
    let r = c.get(&path, &token).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(parse_xml(&r.body).is_err(), "garbage parsed: {}", r.body);

    sim.set_fault(FaultTarget::Logon, Some(Fault::Status(401)));
    let r = c
        .send(
            Method::POST,
            "/api/sessionMngr/",
            &[("authorization", &basic("admin", "admin"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), "Basic Realm=RestSvc");

    sim.set_fault(FaultTarget::All, Some(Fault::Status(503)));
    assert_eq!(
        c.send(Method::GET, "/api/", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    sim.set_fault(FaultTarget::All, None); // clears every target
    let r = c.get(&path, &second).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.xml().all("Ref").len(), sim.vm_count(0));
    sim.shutdown().await;
}

#[tokio::test]
async fn reset_fault_closes_connection_without_answer() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    sim.set_fault(FaultTarget::Data, Some(Fault::Reset));
    let err = c
        .try_send(
            Method::GET,
            "/api/logonSessions",
            &[("x-restsvcsessionid", &token)],
        )
        .await;
    let err = err.err().expect("expected no answer");
    // An abortive close: the client sees a TCP RST, not an orderly end.
    let io_kind = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    assert_eq!(
        io_kind,
        Some(std::io::ErrorKind::ConnectionReset),
        "{err:?}"
    );
    sim.set_fault(FaultTarget::Data, None);
    let mut c = connect(sim.addr()).await;
    assert_eq!(
        c.get("/api/logonSessions", &token).await.status,
        StatusCode::OK
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn hang_fault_ends_at_shutdown() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    sim.set_fault(FaultTarget::All, Some(Fault::Hang));
    let pending = tokio::spawn(async move { c.try_send(Method::GET, "/api/", &[]).await.is_err() });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        !pending.is_finished(),
        "a hung request must not be answered"
    );
    tokio::time::timeout(Duration::from_secs(2), sim.shutdown())
        .await
        .expect("shutdown ends hung connections");
    let failed = tokio::time::timeout(Duration::from_secs(2), pending)
        .await
        .expect("the client sees the connection close")
        .unwrap();
    assert!(failed);
}

#[tokio::test]
async fn latency_and_request_log() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    sim.set_latency(Duration::from_millis(120));
    let t = Instant::now();
    c.send(Method::GET, "/api/?probe=1", &[("X-Custom", "Yes")])
        .await;
    assert!(t.elapsed() >= Duration::from_millis(120));
    sim.set_latency(Duration::ZERO);
    let log = sim.requests();
    let last = log.last().unwrap();
    assert_eq!(last.method, "GET");
    assert_eq!(last.path_and_query, "/api/?probe=1");
    assert_eq!(last.header("x-custom"), Some("Yes"));
    assert!(last.headers.iter().any(|(k, _)| k == "x-custom"));
    assert_eq!(sim.stats().requests, 1);
    sim.clear_requests();
    assert!(sim.requests().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn starts_quickly_with_default_data() {
    let t = Instant::now();
    let sim = Sim::start(SimConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls: false,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(sim.base_url().starts_with("http://127.0.0.1:"));
    assert_eq!(sim.cert_sha256(), None);
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let r = c
        .get(
            &format!(
                "/api/restorePoints/{}/vmRestorePoints",
                sim.restore_point_id(4999)
            ),
            &token,
        )
        .await;
    assert_eq!(r.xml().all("Ref").len(), sim.vm_count(4999));
    sim.shutdown().await;
}

#[tokio::test]
async fn tls_serves_the_reported_certificate() {
    use base64::Engine as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;

    let sim = Sim::start(SimConfig {
        tls: true,
        ..config(Duration::from_secs(900))
    })
    .await
    .unwrap();
    let fp = sim.cert_sha256().unwrap();
    assert_eq!(fp.len(), 95);
    assert!(fp.split(':').all(|p| p.len() == 2
        && p.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))));
    let pem = sim.cert_pem().unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(tls::fingerprint(&der), fp);
    assert!(sim.base_url().starts_with("https://127.0.0.1:"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der)).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(sim.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let host = format!("localhost:{}", sim.addr().port());
    let resp = sender
        .send_request(
            Request::get("/api/")
                .header("host", &host)
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let doc = parse_xml(std::str::from_utf8(&body).unwrap()).unwrap();
    // Links follow the host the client addressed, as EM's do.
    assert!(doc.child("Links").children[0]
        .attr("Href")
        .starts_with(&format!("https://{host}/api/")));
    sim.shutdown().await;
}

#[tokio::test]
async fn names_needing_escapes_round_trip() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let mut found = false;
    for index in 0..50 {
        let path = format!(
            "/api/restorePoints/{}/vmRestorePoints?format=Entity",
            sim.restore_point_id(index)
        );
        let r = c.get(&path, &token).await;
        if !r.body.contains("&amp;") {
            continue;
        }
        found = true;
        let doc = r.xml();
        let vm = doc
            .all("VmName")
            .into_iter()
            .map(|n| n.text.clone())
            .find(|n| n.contains('&'))
            .unwrap();
        let json = c
            .send(
                Method::GET,
                &path,
                &[
                    ("x-restsvcsessionid", &token),
                    ("accept", "application/json"),
                ],
            )
            .await
            .json();
        assert!(json["VmRestorePoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["VmName"] == vm.as_str()));
        break;
    }
    assert!(found, "the estate has VM names with '&'");
    sim.shutdown().await;
}
