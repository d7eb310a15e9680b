//! A real headless Chromium, driven over WebDriver (the distribution's
//! `chromedriver`, on an ephemeral loopback port): enough of the protocol
//! to open a page, run a script in it, click, answer a dialog, read the
//! console and take a screenshot.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::Http;

/// A browser session; the driver (and the browser) stop when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: Http,
    profile: std::path::PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, or
    /// `None` (the test skips) when they are not installed; see
    /// [`super::installed`].
    pub async fn try_start() -> Option<Browser> {
        if !super::installed("chromedriver", "chromium-driver")
            || !super::installed("chromium", "chromium")
        {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        // Its own process group, so the browser it starts goes with it.
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = Http::default();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.try_get(&format!("{base}/status"), &[]).await != Ok(StatusCode::OK) {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile =
            std::env::temp_dir().join(format!("emgate-chromium-{}-{port}", std::process::id()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": which("chromium"),
                // Closed ports on this network stall a browser that phones home.
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1800",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
            "unhandledPromptBehavior": "ignore",
        }}});
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            profile,
        };
        let created = browser.call(Method::POST, "/session", Some(caps)).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Some(browser)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let reply = match body {
            Some(b) => {
                self.http
                    .send_body(
                        method,
                        &url,
                        &[("content-type", "application/json")],
                        &b.to_string(),
                    )
                    .await
            }
            None => self.http.send(method, &url, &[]).await,
        };
        let value: Value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|_| panic!("{path}: {} {}", reply.status, reply.body));
        assert!(
            reply.status.is_success(),
            "{path}: {} {}",
            reply.status,
            value
        );
        value["value"].clone()
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Sends this header with every request the browser makes (the page's
    /// own fetches included), through the DevTools protocol.
    pub async fn send_header(&self, name: &str, value: &str) {
        let cdp = self.at("/goog/cdp/execute");
        self.call(
            Method::POST,
            &cdp,
            Some(json!({"cmd": "Network.enable", "params": {}})),
        )
        .await;
        self.call(
            Method::POST,
            &cdp,
            Some(json!({"cmd": "Network.setExtraHTTPHeaders",
                        "params": {"headers": {name: value}}})),
        )
        .await;
    }

    /// Opens `url` and waits for it to load.
    pub async fn open(&self, url: &str) {
        self.call(Method::POST, &self.at("/url"), Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub async fn eval(&self, script: &str) -> Value {
        self.call(
            Method::POST,
            &self.at("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Clicks the first element matching `css`.
    pub async fn click(&self, css: &str) {
        let found = self
            .call(
                Method::POST,
                &self.at("/element"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string();
        self.call(
            Method::POST,
            &self.at(&format!("/element/{id}/click")),
            Some(json!({})),
        )
        .await;
    }

    /// The text of the open dialog (confirm, alert), waiting for one.
    pub async fn dialog_text(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = format!("{}{}", self.base, self.at("/alert/text"));
            let reply = self.http.get(&url, &[]).await;
            if reply.status.is_success() {
                let v: Value = serde_json::from_str(&reply.body).unwrap_or_default();
                return v["value"].as_str().unwrap_or_default().to_string();
            }
            assert!(Instant::now() < deadline, "no dialog opened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Answers the open dialog with OK.
    pub async fn accept_dialog(&self) {
        self.call(Method::POST, &self.at("/alert/accept"), Some(json!({})))
            .await;
    }

    /// The console messages at level SEVERE since the last call (errors,
    /// Content-Security-Policy violations, failed loads).
    pub async fn console_errors(&self) -> Vec<String> {
        let logs = self
            .call(
                Method::POST,
                &self.at("/se/log"),
                Some(json!({"type": "browser"})),
            )
            .await;
        logs.as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["level"] == "SEVERE")
            .map(|l| l["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = self.call(Method::GET, &self.at("/screenshot"), None).await;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("a base64 PNG")
    }
}

impl Browser {
    /// Closes the browser the polite way (the driver goes on drop).
    pub async fn quit(self) {
        let _ = self
            .http
            .send(
                Method::DELETE,
                &format!("{}{}", self.base, self.at("")),
                &[],
            )
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver's whole process group: the browser goes with it even
        // when a test failed halfway; the profile too.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn which(program: &str) -> String {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| program.to_string())
}
