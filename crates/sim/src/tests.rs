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
        task_duration: Duration::from_millis(100),
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
    fn attr_opt(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
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

// ---------------------------------------------------------------- jobs, sessions, query, reports, tasks

/// GET with `Accept: application/json`.
async fn get_json(c: &mut Client, path: &str, token: &str) -> Reply {
    c.send(
        Method::GET,
        path,
        &[
            ("x-restsvcsessionid", token),
            ("accept", "application/json"),
        ],
    )
    .await
}

/// The text of a child element, for numbers.
fn num(node: &Node, name: &str) -> i64 {
    node.child(name)
        .text
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[tokio::test]
async fn reports_in_xml_and_json() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let summary = c.get("/api/reports/summary", &token).await;
    assert_eq!(summary.status, StatusCode::OK);
    let doc = summary.xml();
    assert_eq!(doc.name, "SummaryReport");
    let links = doc.all("Link");
    let names = [
        "overview",
        "vms_overview",
        "job_statistics",
        "processed_vms",
        "repository",
    ];
    assert_eq!(links.len(), names.len());
    for (link, name) in links.iter().zip(names) {
        assert_eq!(link.attr("Rel"), "Down");
        assert_eq!(link.attr("Type"), "ReportFrame");
        assert_eq!(
            link.attr("Href"),
            format!("{}/api/reports/summary/{name}", sim.base_url())
        );
    }
    let json = get_json(&mut c, "/api/reports/summary", &token)
        .await
        .json();
    assert_eq!(json["Links"].as_array().unwrap().len(), 5);

    let roots = [
        "OverviewReportFrame",
        "VmsOverviewReportFrame",
        "JobStatisticsReportFrame",
        "ProcessedVmsReportFrame",
        "RepositoryReportFrame",
    ];
    for (name, root) in names.iter().zip(roots) {
        let path = format!("/api/reports/summary/{name}");
        let r = c.get(&path, &token).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.xml().name, root);
        let j = get_json(&mut c, &path, &token).await;
        assert_eq!(j.header("content-type"), "application/json; charset=utf-8");
        let j = j.json();
        assert_eq!(j["Href"], serde_json::Value::Null);
    }

    let o = c.get("/api/reports/summary/overview", &token).await.xml();
    assert_eq!(num(&o, "BackupServers"), 3);
    let latest: i64 = ["Successful", "Warning", "Failed"]
        .iter()
        .map(|k| num(&o, &format!("{k}VmLastestStates")))
        .sum();
    assert_eq!(latest, sim.job_count() as i64 * 8);
    let oj = get_json(&mut c, "/api/reports/summary/overview", &token)
        .await
        .json();
    assert_eq!(oj["ScheduledJobs"], num(&o, "ScheduledJobs"));
    assert_eq!(oj["BackupServers"], 3);

    let v = c
        .get("/api/reports/summary/vms_overview", &token)
        .await
        .xml();
    assert_eq!(
        num(&v, "RestorePoints"),
        sim.vm_restore_point_count() as i64
    );
    assert!(num(&v, "FullBackupPointsSize") > 0);

    let s = c
        .get("/api/reports/summary/job_statistics", &token)
        .await
        .xml();
    assert_eq!(num(&s, "TotalJobRuns"), sim.backup_session_count() as i64);
    assert_eq!(
        num(&s, "SuccessfulJobRuns") + num(&s, "WarningsJobRuns") + num(&s, "FailedJobRuns"),
        num(&s, "TotalJobRuns")
    );
    assert!(s
        .child("MaxDurationBackupJobName")
        .text
        .starts_with("Backup Job "));

    let p = get_json(&mut c, "/api/reports/summary/processed_vms", &token)
        .await
        .json();
    let days = p["Days"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    assert!(days[0]["BackupedVms"].is_i64());
    assert!(days[6]["Timestamp"]
        .as_str()
        .unwrap()
        .ends_with("T00:00:00Z"));

    let repo = c.get("/api/reports/summary/repository", &token).await.xml();
    assert!(repo
        .attr("CapacityPlanningReportLink")
        .starts_with("Workspace/ViewReport.aspx?definition="));
    let periods = repo.all("Period");
    assert_eq!(periods.len(), 3);
    for p in periods {
        assert_eq!(
            num(p, "Capacity"),
            num(p, "FreeSpace") + num(p, "BackupSize")
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn jobs_in_both_forms() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let base = sim.base_url();
    let list = c.get("/api/jobs", &token).await.xml();
    assert_eq!(list.name, "EntityReferences");
    let refs = list.all("Ref");
    assert_eq!(refs.len(), sim.job_count());
    assert_eq!(sim.job_count(), 24);
    assert_eq!(
        refs[3].attr("Href"),
        format!("{base}/api/jobs/{}", sim.job_id(3))
    );
    assert_eq!(refs[3].attr("Type"), "JobReference");
    assert_eq!(refs[3].attr("Name"), "Backup Job 4");
    assert_eq!(
        refs[3].attr("UID"),
        format!("urn:veeam:Job:{}", sim.job_id(3))
    );

    let entities = c.get("/api/jobs?format=Entity", &token).await.xml();
    assert_eq!(entities.name, "Jobs");
    assert_eq!(entities.all("Job").len(), sim.job_count());

    let id = sim.job_id(5);
    let one = c.get(&format!("/api/jobs/{id}"), &token).await.xml();
    assert_eq!(one.name, "EntityRef");
    assert_eq!(one.attr("Name"), "Backup Job 6");
    let r = c
        .get(&format!("/api/jobs/{id}?format=Entity"), &token)
        .await;
    assert!(r
        .body
        .starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"));
    let job = r.xml();
    assert_eq!(job.name, "Job");
    assert_eq!(job.attr("UID"), format!("urn:veeam:Job:{id}"));
    assert_eq!(job.child("JobType").text, "Backup");
    assert!(["true", "false"].contains(&job.child("ScheduleEnabled").text.as_str()));
    assert_eq!(job.all("ObjectInJob").len(), 8);
    assert!(job.all("Link").iter().any(|l| l.attr("Rel") == "Start"
        && l.attr("Href") == format!("{base}/api/jobs/{id}?action=start")));
    assert_eq!(job.all("Days").len(), 7);

    let j = get_json(&mut c, &format!("/api/jobs/{id}?format=Entity"), &token)
        .await
        .json();
    assert_eq!(j["Name"], "Backup Job 6");
    assert!(j["ScheduleEnabled"].is_boolean());
    assert_eq!(j["ScheduleConfigured"], true);
    let daily = &j["JobScheduleOptions"]["Standart"]["OptionsDaily"];
    assert_eq!(daily["Enabled"], true);
    assert_eq!(daily["Days"].as_array().unwrap().len(), 7);
    assert_eq!(
        j["JobInfo"]["BackupJobInfo"]["Includes"]["ObjectInJobs"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
    let refs = get_json(&mut c, "/api/jobs", &token).await.json();
    assert_eq!(refs["Refs"].as_array().unwrap().len(), sim.job_count());
    let all = get_json(&mut c, "/api/jobs?format=Entity", &token)
        .await
        .json();
    assert_eq!(all["Jobs"].as_array().unwrap().len(), sim.job_count());
    sim.shutdown().await;
}

#[tokio::test]
async fn backup_sessions_in_both_forms() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let base = sim.base_url();
    assert_eq!(sim.backup_session_count(), 240);
    let list = c.get("/api/backupSessions", &token).await.xml();
    assert_eq!(list.name, "EntityReferences");
    let refs = list.all("Ref");
    assert_eq!(refs.len(), sim.backup_session_count());
    assert_eq!(
        refs[17].attr("Href"),
        format!("{base}/api/backupSessions/{}", sim.backup_session_id(17))
    );
    assert_eq!(refs[17].attr("Type"), "BackupJobSessionReference");
    assert!(refs[17].attr("Name").starts_with("Backup Job 2@2025-"));

    let entities = c
        .get("/api/backupSessions?format=Entity", &token)
        .await
        .xml();
    assert_eq!(entities.name, "BackupJobSessions");
    let sessions = entities.all("BackupJobSession");
    assert_eq!(sessions.len(), sim.backup_session_count());
    let mut related = 0;
    for (i, s) in sessions.iter().enumerate() {
        assert_eq!(
            s.child("JobUid").text,
            format!("urn:veeam:Job:{}", sim.job_id(i / 10))
        );
        assert_eq!(s.child("State").text, "Stopped");
        let result = s.child("Result").text.as_str();
        assert!(["Success", "Warning", "Failed"].contains(&result));
        let point = s
            .all("Link")
            .into_iter()
            .find(|l| l.attr_opt("Type") == Some("RestorePointReference"))
            .map(|l| l.attr("Href").strip_prefix(&base).unwrap().to_owned());
        assert_eq!(
            point.is_some(),
            result != "Failed",
            "only successful runs made a point"
        );
        if let Some(path) = point {
            related += 1;
            if related <= 3 {
                let rp = c.get(&path, &token).await;
                assert_eq!(rp.status, StatusCode::OK, "{path}");
            }
        }
        assert!(s.child("CreationTimeUTC").text < s.child("EndTimeUTC").text);
    }
    assert!(related > 0);

    let id = sim.backup_session_id(42);
    let one = c
        .get(&format!("/api/backupSessions/{id}"), &token)
        .await
        .xml();
    assert_eq!(one.name, "EntityRef");
    assert_eq!(one.attr("UID"), format!("urn:veeam:BackupJobSession:{id}"));
    let entity = c
        .get(&format!("/api/backupSessions/{id}?format=Entity"), &token)
        .await
        .xml();
    assert_eq!(entity.name, "BackupJobSession");
    assert_eq!(entity.attr("Name"), one.attr("Name"));
    let j = get_json(
        &mut c,
        &format!("/api/backupSessions/{id}?format=Entity"),
        &token,
    )
    .await
    .json();
    assert!(j["IsRetry"].is_boolean());
    assert_eq!(j["Progress"], 100);
    assert_eq!(j["JobName"], "Backup Job 5");
    sim.shutdown().await;
}

#[tokio::test]
async fn new_routes_need_a_session_and_know_their_ids() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let job = sim.job_id(0);
    let session = sim.backup_session_id(0);
    let gets = [
        "/api/reports/summary".to_owned(),
        "/api/reports/summary/overview".to_owned(),
        "/api/jobs".to_owned(),
        format!("/api/jobs/{job}?format=Entity"),
        "/api/backupSessions".to_owned(),
        format!("/api/backupSessions/{session}"),
        "/api/query?type=Job".to_owned(),
        "/api/tasks/task-1".to_owned(),
    ];
    for path in &gets {
        let r = c.send(Method::GET, path, &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(r.xml().attr("StatusCode"), "401");
    }
    let r = c
        .send(Method::POST, &format!("/api/jobs/{job}?action=start"), &[])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(sim.stats().unauthorized, gets.len() as u64 + 1);

    let token = c.logon().await;
    let unknown_job = sim.job_id(sim.job_count());
    let unknown_session = sim.backup_session_id(sim.backup_session_count());
    for path in [
        format!("/api/jobs/{unknown_job}"),
        format!("/api/jobs/{unknown_job}?format=Entity"),
        "/api/jobs/not-a-uuid".to_owned(),
        format!("/api/backupSessions/{unknown_session}"),
        format!("/api/backupSessions/{job}"),
        "/api/tasks/task-999".to_owned(),
        "/api/tasks/nothing".to_owned(),
        "/api/reports/summary/nothing".to_owned(),
    ] {
        let r = c.get(&path, &token).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        let err = r.xml();
        assert_eq!(err.name, "Error");
        assert_eq!(err.attr("StatusCode"), "404");
        let j = get_json(&mut c, &path, &token).await;
        assert_eq!(j.status, StatusCode::NOT_FOUND);
        assert_eq!(j.json()["StatusCode"], 404);
    }
    let r = c
        .send(
            Method::POST,
            &format!("/api/jobs/{unknown_job}?action=start"),
            &[("x-restsvcsessionid", &token)],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = c
        .send(
            Method::DELETE,
            "/api/jobs",
            &[("x-restsvcsessionid", &token)],
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = c
        .send(
            Method::DELETE,
            &format!("/api/jobs/{job}"),
            &[("x-restsvcsessionid", &token)],
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), "GET, POST, HEAD");
    sim.shutdown().await;
}

#[tokio::test]
async fn query_pages_through_vm_restore_points() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let base = sim.base_url();
    let total = sim.vm_restore_point_count();
    let size = (7..).find(|s| total % s != 0).unwrap();
    let pages = total.div_ceil(size);
    let q = format!("/api/query?type=VmRestorePoint&format=Entities&pageSize={size}");

    let first = c.get(&format!("{q}&page=1"), &token).await.xml();
    assert_eq!(first.name, "QueryResult");
    let paging = first.child("PagingInfo");
    assert_eq!(paging.attr("PagesCount"), pages.to_string());
    assert_eq!(paging.attr("PageSize"), size.to_string());
    assert_eq!(paging.attr("PageNum"), "1");
    let rels: Vec<&str> = paging.all("Link").iter().map(|l| l.attr("Rel")).collect();
    assert_eq!(rels, ["First", "Next", "Last"]);
    assert_eq!(
        paging.all("Link")[1].attr("Href"),
        format!("{base}{q}&page=2")
    );
    let names = |doc: &Node| -> Vec<String> {
        doc.all("VmRestorePoint")
            .iter()
            .map(|p| p.attr("UID").to_owned())
            .collect()
    };
    let page1 = names(&first);
    assert_eq!(page1.len(), size);

    // Follow the Next link as a client would.
    let next = paging.all("Link")[1]
        .attr("Href")
        .strip_prefix(&base)
        .unwrap()
        .to_owned();
    let second = c.get(&next, &token).await.xml();
    let page2 = names(&second);
    assert_eq!(page2.len(), size);
    assert!(page1.iter().all(|id| !page2.contains(id)), "pages differ");
    let rels: Vec<String> = second
        .child("PagingInfo")
        .all("Link")
        .iter()
        .map(|l| l.attr("Rel").to_owned())
        .collect();
    assert_eq!(rels, ["First", "Previous", "Next", "Last"]);

    let last = c.get(&format!("{q}&page={pages}"), &token).await.xml();
    assert_eq!(names(&last).len(), total % size, "the last page is shorter");
    let rels: Vec<String> = last
        .child("PagingInfo")
        .all("Link")
        .iter()
        .map(|l| l.attr("Rel").to_owned())
        .collect();
    assert_eq!(rels, ["First", "Previous", "Last"]);
    let beyond = c
        .get(&format!("{q}&page={}", pages + 1), &token)
        .await
        .xml();
    assert!(names(&beyond).is_empty());

    // References by default, and everything on one page without pageSize.
    let all = c.get("/api/query?type=VmRestorePoint", &token).await.xml();
    assert_eq!(all.all("Ref").len(), total);
    assert_eq!(all.child("Refs").children.len(), total);
    assert_eq!(all.child("PagingInfo").attr("PagesCount"), "1");

    // JSON: every member of Entities, the filled one double-wrapped.
    let j = get_json(&mut c, &format!("{q}&page=2"), &token)
        .await
        .json();
    let obj = j.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["Entities", "Links", "PagingInfo", "Refs", "Resources"]
    );
    assert_eq!(j["Refs"], serde_json::Value::Null);
    let entities = j["Entities"].as_object().unwrap();
    assert_eq!(entities.len(), 50);
    assert_eq!(entities["Jobs"], serde_json::Value::Null);
    let points = j["Entities"]["VmRestorePoints"]["VmRestorePoints"]
        .as_array()
        .unwrap();
    let uids: Vec<String> = points
        .iter()
        .map(|p| p["UID"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(uids, page2);
    assert_eq!(j["PagingInfo"]["PageNum"], 2);
    assert_eq!(j["PagingInfo"]["PagesCount"], pages as u64);
    let refs = get_json(&mut c, "/api/query?type=VmRestorePoint&pageSize=3", &token)
        .await
        .json();
    assert_eq!(refs["Refs"]["Refs"].as_array().unwrap().len(), 3);
    assert_eq!(refs["Entities"], serde_json::Value::Null);
    sim.shutdown().await;
}

#[tokio::test]
async fn query_sorts_and_filters_sessions_and_jobs() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let r = c
        .get(
            "/api/query?type=BackupJobSession&format=Entities&sortDesc=CreationTime&pageSize=20",
            &token,
        )
        .await
        .xml();
    let times: Vec<String> = r
        .all("CreationTimeUTC")
        .iter()
        .map(|n| n.text.clone())
        .collect();
    assert_eq!(times.len(), 20);
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert_eq!(
        r.child("PagingInfo").attr("PagesCount"),
        (sim.backup_session_count() / 20).to_string()
    );

    let r = c
        .get(
            "/api/query?type=backupjobsession&filter=JobName==%22Backup%20Job%203%22",
            &token,
        )
        .await
        .xml();
    let refs = r.all("Ref");
    assert_eq!(refs.len(), 10);
    for (k, rf) in refs.iter().enumerate() {
        assert!(rf.attr("Href").ends_with(&sim.backup_session_id(20 + k)));
    }
    let failed = c
        .get(
            "/api/query?type=BackupJobSession&format=Entities&filter=Result==Failed",
            &token,
        )
        .await
        .xml();
    assert!(failed.all("Result").iter().all(|n| n.text == "Failed"));

    let jobs = c
        .get("/api/query?type=job&format=entities&sortAsc=name", &token)
        .await
        .xml();
    let names: Vec<String> = jobs
        .all("Job")
        .iter()
        .map(|j| j.attr("Name").to_owned())
        .collect();
    assert_eq!(names.len(), sim.job_count());
    let mut sorted = names.clone();
    sorted.sort_by_key(|n| n.to_lowercase());
    assert_eq!(names, sorted);
    let none = c
        .get("/api/query?type=Job&filter=JobType==Replica", &token)
        .await
        .xml();
    assert!(none.all("Ref").is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_job_that_runs_makes_a_restore_point_the_query_service_finds_by_creation_time() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let before = sim.restore_point_count();
    // The generated points are of 2025; nothing was created this year.
    let since = "/api/query?type=RestorePoint&filter=CreationTime%3E=%222026-01-01T00:00:00Z%22";
    assert!(c.get(since, &token).await.xml().all("Ref").is_empty());

    let id = sim.add_restore_point();
    assert_eq!(sim.restore_point_count(), before + 1);
    assert_eq!(id, sim.restore_point_id(before));
    let found = c.get(since, &token).await.xml();
    let refs = found.all("Ref");
    assert_eq!(refs.len(), 1, "{}", found.attr("Href"));
    assert_eq!(refs[0].attr("Type"), "RestorePointReference");
    assert!(refs[0]
        .attr("Href")
        .ends_with(&format!("/api/restorePoints/{id}")));
    // Its VMs are there, as for any point; sorted newest first with the others.
    let vms = c
        .get(&format!("/api/restorePoints/{id}/vmRestorePoints"), &token)
        .await;
    assert_eq!(vms.status, StatusCode::OK);
    assert_eq!(vms.xml().all("Ref").len(), sim.vm_count(before));
    let newest = c
        .get(
            "/api/query?type=RestorePoint&sortDesc=CreationTime&pageSize=1",
            &token,
        )
        .await
        .xml();
    assert!(newest.all("Ref")[0].attr("Href").ends_with(&id));
    // The entity form; filters combine with `;`.
    let name = c
        .get(
            &format!("{since};BackupServerName!=%22nowhere%22&format=Entities"),
            &token,
        )
        .await
        .xml();
    assert_eq!(name.all("RestorePoint").len(), 1);
    let entities = c
        .get(&format!("{since}&format=Entities"), &token)
        .await
        .xml();
    assert_eq!(entities.all("RestorePoint").len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn jobs_on_a_schedule_make_restore_points_while_the_simulator_runs() {
    let sim = Sim::start(SimConfig {
        new_point_every: Some(Duration::from_millis(50)),
        ..config(Duration::from_secs(900))
    })
    .await
    .unwrap();
    let before = sim.restore_point_count();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let made = sim.restore_point_count() - before;
    assert!((3..=9).contains(&made), "{made} points in 400 ms");
    sim.shutdown().await;
}

#[tokio::test]
async fn query_rejects_what_it_cannot_read() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    for q in [
        "type=NoSuchType",
        "format=Entities",
        "type=Job&pageSize=0",
        "type=Job&pageSize=ten",
        "type=Job&page=0",
        "type=Job&format=Everything",
        "type=Job&sortAsc=Colour",
        "type=Job&filter=Name==%22unterminated",
    ] {
        let path = format!("/api/query?{q}");
        let r = c.get(&path, &token).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
        let err = r.xml();
        assert_eq!(err.name, "Error");
        assert_eq!(err.attr("StatusCode"), "400");
        let j = get_json(&mut c, &path, &token).await;
        assert_eq!(j.status, StatusCode::BAD_REQUEST);
        assert_eq!(j.json()["StatusCode"], 400);
    }
    let r = c.get("/api/query?type=BackupServer", &token).await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(r.xml().attr("StatusCode"), "501");
    sim.shutdown().await;
}

#[tokio::test]
async fn starting_a_job_returns_a_task_and_its_location() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let base = sim.base_url();
    let job = sim.job_id(2);
    let auth = [("x-restsvcsessionid", token.as_str())];
    let r = c
        .send(
            Method::POST,
            &format!("/api/jobs/{job}?action=start"),
            &auth,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let location = r.header("location").to_owned();
    assert_eq!(location, format!("{base}/api/tasks/task-1"));
    let task = r.xml();
    assert_eq!(task.name, "Task");
    assert_eq!(task.attr("Href"), location);
    assert_eq!(task.child("TaskId").text, "task-1");
    assert_eq!(task.child("State").text, "Running");
    assert_eq!(task.child("Operation").text, "StartJob");

    let path = location.strip_prefix(&base).unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let done = c.get(&path, &token).await;
    assert_eq!(done.status, StatusCode::OK);
    let done = done.xml();
    assert_eq!(done.child("State").text, "Finished");
    let result = done.child("Result");
    assert_eq!(result.attr("Success"), "true");
    assert_eq!(
        result.child("Message").text,
        "Job \"Backup Job 3\" triggered to start."
    );
    let j = get_json(&mut c, &path, &token).await.json();
    assert_eq!(j["Result"]["Success"], true);
    assert_eq!(j["TaskId"], "task-1");

    // In JSON too, and task numbers count up.
    let r = c
        .send(
            Method::POST,
            &format!("/api/jobs/{job}?action=Start"),
            &[
                ("x-restsvcsessionid", token.as_str()),
                ("accept", "application/json"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("location"), format!("{base}/api/tasks/task-2"));
    let j = r.json();
    assert_eq!(j["State"], "Running");
    assert_eq!(j["Result"], serde_json::Value::Null);

    for (query, status) in [
        ("?action=stop", StatusCode::NOT_IMPLEMENTED),
        ("?action=explode", StatusCode::BAD_REQUEST),
        ("", StatusCode::BAD_REQUEST),
    ] {
        let r = c
            .send(Method::POST, &format!("/api/jobs/{job}{query}"), &auth)
            .await;
        assert_eq!(r.status, status, "{query}");
        assert_eq!(r.xml().name, "Error");
        assert!(r.header("location").is_empty());
    }
    let log = sim.requests();
    assert!(log
        .iter()
        .any(|q| q.method == "POST" && q.path_and_query.ends_with("?action=start")));
    sim.shutdown().await;
}

#[tokio::test]
async fn head_on_new_routes_is_get_without_body() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    for path in [
        "/api/reports/summary/overview".to_owned(),
        format!("/api/jobs/{}?format=Entity", sim.job_id(1)),
        "/api/backupSessions".to_owned(),
        "/api/query?type=Job&pageSize=5".to_owned(),
    ] {
        let get = c.get(&path, &token).await;
        let head = c
            .send(Method::HEAD, &path, &[("x-restsvcsessionid", &token)])
            .await;
        assert_eq!(head.status, StatusCode::OK, "{path}");
        assert!(head.body.is_empty());
        assert_eq!(head.header("content-length"), get.body.len().to_string());
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn latency_and_faults_per_new_route() {
    let sim = start().await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let slow = Duration::from_millis(200);
    for (prefix, path, other) in [
        ("/api/reports", "/api/reports/summary/overview", "/api/jobs"),
        (
            "/api/jobs",
            "/api/jobs?format=Entity",
            "/api/backupSessions",
        ),
        (
            "/api/backupSessions",
            "/api/backupSessions",
            "/api/query?type=Job",
        ),
        ("/api/query", "/api/query?type=Job", "/api/reports/summary"),
        ("/api/tasks", "/api/tasks/task-1", "/api/jobs"),
    ] {
        sim.set_path_latency(prefix, Some(slow));
        let t = Instant::now();
        c.get(path, &token).await;
        assert!(t.elapsed() >= slow, "{path} is slow");
        let t = Instant::now();
        assert_eq!(c.get(other, &token).await.status, StatusCode::OK);
        assert!(t.elapsed() < slow, "{other} is not");
        sim.set_path_latency(prefix, None);
    }

    sim.set_path_fault("/api/query", Some(Fault::Status(503)));
    let r = c.get("/api/query?type=Job", &token).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.xml().attr("StatusCode"), "503");
    assert_eq!(c.get("/api/jobs", &token).await.status, StatusCode::OK);
    sim.set_path_fault("/api/query", None);
    assert_eq!(
        c.get("/api/query?type=Job", &token).await.status,
        StatusCode::OK
    );
    sim.set_fault(FaultTarget::Data, Some(Fault::Status(500)));
    let r = c
        .send(
            Method::POST,
            &format!("/api/jobs/{}?action=start", sim.job_id(0)),
            &[("x-restsvcsessionid", &token)],
        )
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    sim.shutdown().await;
}

// ---------------------------------------------------------------- tasks per logon session

/// A simulator whose tasks run for `task_duration`.
async fn start_with_tasks(task_duration: Duration) -> Sim {
    Sim::start(SimConfig {
        task_duration,
        ..config(Duration::from_secs(900))
    })
    .await
    .unwrap()
}

/// A simulator whose tasks run for `task_duration`, a connection to it, and two
/// logon sessions' tokens.
async fn two_sessions(task_duration: Duration) -> (Sim, Client, String, String) {
    let sim = start_with_tasks(task_duration).await;
    let mut c = connect(sim.addr()).await;
    let a = c.logon().await;
    let b = c.logon().await;
    (sim, c, a, b)
}

/// `POST /api/jobs/{job}?action=start` as the session of `token`; asserts the 202
/// and returns the task's id.
async fn start_job(c: &mut Client, token: &str, job: &str) -> String {
    let r = c
        .send(
            Method::POST,
            &format!("/api/jobs/{job}?action=start"),
            &[("x-restsvcsessionid", token)],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    r.xml().child("TaskId").text.clone()
}

/// The `TaskId`s of a `GET /api/tasks` answer, in order.
async fn listed_tasks(c: &mut Client, token: &str) -> Vec<String> {
    let r = c.get("/api/tasks", token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let doc = r.xml();
    assert_eq!(doc.name, "Tasks");
    doc.children
        .iter()
        .map(|t| {
            assert_eq!(t.name, "Task");
            t.child("TaskId").text.clone()
        })
        .collect()
}

#[tokio::test]
async fn tasks_are_listed_and_read_only_by_the_session_that_made_them() {
    let (sim, mut c, a, b) = two_sessions(Duration::from_secs(60)).await;
    assert!(listed_tasks(&mut c, &a).await.is_empty());
    let empty = get_json(&mut c, "/api/tasks", &a).await;
    assert_eq!(empty.json(), serde_json::json!({ "Tasks": null }));

    // Task numbers count per logon session: each session's first is task-1.
    assert_eq!(start_job(&mut c, &a, &sim.job_id(0)).await, "task-1");
    assert_eq!(start_job(&mut c, &a, &sim.job_id(1)).await, "task-2");
    assert_eq!(start_job(&mut c, &b, &sim.job_id(2)).await, "task-1");
    assert_eq!(sim.tasks_started(), 3);
    assert_eq!(sim.stats().tasks_started, 3);

    assert_eq!(listed_tasks(&mut c, &a).await, ["task-1", "task-2"]);
    assert_eq!(listed_tasks(&mut c, &b).await, ["task-1"]);
    let list = c.get("/api/tasks", &a).await.xml();
    let base = sim.base_url();
    let first = &list.children[0];
    assert_eq!(first.attr("Href"), format!("{base}/api/tasks/task-1"));
    assert_eq!(first.child("State").text, "Running");
    let delete = first.child("Links").child("Link");
    assert_eq!(delete.attr("Rel"), "Delete");
    assert_eq!(delete.attr("Href"), format!("{base}/api/tasks/task-1"));
    let j = get_json(&mut c, "/api/tasks", &a).await.json();
    let tasks = j["Tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[1]["TaskId"], "task-2");
    assert_eq!(tasks[1]["Operation"], "StartJob");

    // Each session reads its own task-1; a's task-2 is unknown to b.
    let own = c.get("/api/tasks/task-1", &b).await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(own.xml().child("TaskId").text, "task-1");
    let other = c.get("/api/tasks/task-2", &b).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let err = other.xml();
    assert_eq!(err.name, "Error");
    assert_eq!(err.attr("StatusCode"), "404");
    assert_eq!(err.attr("Message"), "Task [task-2] does not exist.");
    let other = get_json(&mut c, "/api/tasks/task-2", &b).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(other.json()["StatusCode"], 404);
    assert_eq!(c.get("/api/tasks/task-2", &a).await.status, StatusCode::OK);

    // Without a session: 401, as for every resource.
    let r = c.send(Method::GET, "/api/tasks", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = c
        .send(Method::POST, "/api/tasks", &[("x-restsvcsessionid", &a)])
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    sim.shutdown().await;
}

#[tokio::test]
async fn deleting_a_task_removes_it_for_its_session_only() {
    let (sim, mut c, a, b) = two_sessions(Duration::from_secs(60)).await;
    start_job(&mut c, &a, &sim.job_id(0)).await;
    start_job(&mut c, &a, &sim.job_id(1)).await;
    let as_a = [("x-restsvcsessionid", a.as_str())];
    let as_b = [("x-restsvcsessionid", b.as_str())];

    // b has no task-2: 404 in EM's shape, and a's task stays.
    let r = c.send(Method::DELETE, "/api/tasks/task-2", &as_b).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.xml().attr("StatusCode"), "404");
    assert_eq!(listed_tasks(&mut c, &a).await, ["task-1", "task-2"]);

    // delete_task_id.md: 204 No Content, no body.
    let r = c.send(Method::DELETE, "/api/tasks/task-2", &as_a).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    assert_eq!(listed_tasks(&mut c, &a).await, ["task-1"]);
    assert_eq!(
        c.get("/api/tasks/task-2", &a).await.status,
        StatusCode::NOT_FOUND
    );
    for gone in ["/api/tasks/task-2", "/api/tasks/nothing"] {
        let r = c.send(Method::DELETE, gone, &as_a).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{gone}");
    }
    // Numbers are not reused after a deletion.
    assert_eq!(start_job(&mut c, &a, &sim.job_id(2)).await, "task-3");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_task_runs_for_its_duration_then_finishes_with_its_result() {
    let sim = start_with_tasks(Duration::from_millis(300)).await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let r = c
        .send(
            Method::POST,
            &format!("/api/jobs/{}?action=start", sim.job_id(4)),
            &[("x-restsvcsessionid", &token)],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let started = r.xml();
    assert_eq!(started.child("State").text, "Running");
    assert!(started.children.iter().all(|c| c.name != "Result"));

    tokio::time::sleep(Duration::from_millis(400)).await;
    let done = c.get("/api/tasks/task-1", &token).await.xml();
    assert_eq!(done.child("State").text, "Finished");
    let result = done.child("Result");
    assert_eq!(result.attr("Success"), "true");
    assert_eq!(
        result.child("Message").text,
        "Job \"Backup Job 5\" triggered to start."
    );
    let j = get_json(&mut c, "/api/tasks", &token).await.json();
    assert_eq!(j["Tasks"][0]["State"], "Finished");
    assert_eq!(j["Tasks"][0]["Result"]["Success"], true);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_sessions_tasks_end_with_it() {
    let sim = Sim::start(SimConfig {
        task_duration: Duration::from_secs(60),
        ..config(Duration::from_millis(400))
    })
    .await
    .unwrap();
    let mut c = connect(sim.addr()).await;

    // Idle expiry.
    let a = c.logon().await;
    start_job(&mut c, &a, &sim.job_id(0)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        c.get("/api/tasks", &a).await.status,
        StatusCode::UNAUTHORIZED
    );
    let b = c.logon().await;
    assert!(listed_tasks(&mut c, &b).await.is_empty());
    assert_eq!(
        c.get("/api/tasks/task-1", &b).await.status,
        StatusCode::NOT_FOUND
    );

    // expire_all_sessions().
    start_job(&mut c, &b, &sim.job_id(1)).await;
    sim.expire_all_sessions();
    let d = c.logon().await;
    assert!(listed_tasks(&mut c, &d).await.is_empty());

    // Logout.
    start_job(&mut c, &d, &sim.job_id(2)).await;
    let sessions = c.get("/api/logonSessions", &d).await.xml();
    let href = sessions.all("LogonSession")[0].attr("Href").to_owned();
    let path = href.strip_prefix(&sim.base_url()).unwrap();
    let r = c
        .send(Method::DELETE, path, &[("x-restsvcsessionid", &d)])
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let e = c.logon().await;
    assert!(listed_tasks(&mut c, &e).await.is_empty());
    // The count of job starts is the simulator's, not a session's.
    assert_eq!(sim.tasks_started(), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn query_of_tasks_answers_the_callers_tasks_only() {
    let (sim, mut c, a, b) = two_sessions(Duration::from_millis(300)).await;
    start_job(&mut c, &a, &sim.job_id(0)).await;
    start_job(&mut c, &a, &sim.job_id(1)).await;
    start_job(&mut c, &b, &sim.job_id(2)).await;

    let ids = |doc: &Node| -> Vec<String> {
        doc.child("Resources")
            .child("Tasks")
            .children
            .iter()
            .map(|t| t.child("TaskId").text.clone())
            .collect()
    };
    let r = c.get("/api/query?type=Task", &a).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let doc = r.xml();
    assert_eq!(doc.name, "QueryResult");
    assert_eq!(ids(&doc), ["task-1", "task-2"]);
    assert_eq!(doc.child("PagingInfo").attr("PagesCount"), "1");
    assert_eq!(
        ids(&c.get("/api/query?type=task", &b).await.xml()),
        ["task-1"]
    );
    let running = c
        .get("/api/query?type=Task&filter=State==Running", &a)
        .await
        .xml();
    assert_eq!(ids(&running).len(), 2);
    let sorted = c
        .get("/api/query?type=Task&sortDesc=TaskId&pageSize=1", &a)
        .await
        .xml();
    assert_eq!(ids(&sorted), ["task-2"]);
    assert_eq!(sorted.child("PagingInfo").attr("PagesCount"), "2");

    let j = get_json(&mut c, "/api/query?type=Task", &b).await.json();
    assert_eq!(j["Refs"], serde_json::Value::Null);
    assert_eq!(j["Entities"], serde_json::Value::Null);
    assert_eq!(j["Resources"]["Files"], serde_json::Value::Null);
    let tasks = j["Resources"]["Tasks"]["Tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["TaskId"], "task-1");

    tokio::time::sleep(Duration::from_millis(400)).await;
    let finished = c
        .get(
            "/api/query?type=Task&filter=State==Finished;TaskId==task-2",
            &a,
        )
        .await
        .xml();
    assert_eq!(ids(&finished), ["task-2"]);
    let r = c.get("/api/query?type=Task&filter=State==Done", &a).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // A new session's query finds nothing.
    let fresh = c.logon().await;
    let empty = get_json(&mut c, "/api/query?type=Task", &fresh)
        .await
        .json();
    assert_eq!(
        empty["Resources"]["Tasks"],
        serde_json::json!({ "Tasks": null })
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn write_faults_hit_writes_only() {
    let sim = start_with_tasks(Duration::from_secs(60)).await;
    let mut c = connect(sim.addr()).await;
    let token = c.logon().await;
    let start = format!("/api/jobs/{}?action=start", sim.job_id(0));
    let auth = [("x-restsvcsessionid", token.as_str())];

    // Reset: the write is received, not carried out, and not answered.
    sim.set_fault(FaultTarget::Write, Some(Fault::Reset));
    assert_eq!(c.get("/api/jobs", &token).await.status, StatusCode::OK);
    let err = c.try_send(Method::POST, &start, &auth).await.err();
    assert!(err.is_some(), "a reset write has no answer");
    assert_eq!(sim.tasks_started(), 0);
    let received = |sim: &Sim| {
        sim.requests()
            .iter()
            .filter(|q| q.method == "POST" && q.path_and_query == start)
            .count()
    };
    assert_eq!(received(&sim), 1);

    // AnswerLost: carried out, then the connection drops.
    sim.set_fault(FaultTarget::Write, Some(Fault::AnswerLost));
    let mut c = connect(sim.addr()).await;
    assert!(c.try_send(Method::POST, &start, &auth).await.is_err());
    assert_eq!(sim.tasks_started(), 1);
    assert_eq!(received(&sim), 2);
    let mut c = connect(sim.addr()).await;
    assert_eq!(listed_tasks(&mut c, &token).await, ["task-1"]);
    // A task's deletion is a write too.
    sim.set_fault(FaultTarget::Write, Some(Fault::Status(503)));
    let r = c.send(Method::DELETE, "/api/tasks/task-1", &auth).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    // A Data fault covers writes while no Write fault is set.
    sim.set_fault(FaultTarget::Write, None);
    sim.set_fault(FaultTarget::Data, Some(Fault::Status(500)));
    let r = c.send(Method::POST, &start, &auth).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    sim.set_fault(FaultTarget::Data, None);
    assert_eq!(start_job(&mut c, &token, &sim.job_id(0)).await, "task-2");
    assert_eq!(sim.tasks_started(), 2);
    sim.shutdown().await;
}
