//! The command line as operators and new users meet it: `check-config`,
//! `client add` and `demo`, run as real processes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Http, Scratch};
use http::StatusCode;

fn emgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emgate"));
    cmd.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("EMGATE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run emgate")
}

const GOOD: &[(&str, &str)] = &[
    ("EMGATE_UPSTREAM_URL", "https://em.example:9398"),
    ("EMGATE_UPSTREAM_USERNAME", "svc"),
    ("EMGATE_UPSTREAM_PASSWORD", "Very-Secret-1"),
    ("EMGATE_ADMIN_TOKEN", "Admin-Token-2-long-enough"),
];

#[test]
fn check_config_prints_effective_settings_with_secrets_redacted() {
    let out = emgate(&["check-config"], GOOD);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("url = \"https://em.example:9398\""),
        "{stdout}"
    );
    assert!(stdout.contains("password = \"***\""), "{stdout}");
    assert!(stdout.contains("admin_token = \"***\""), "{stdout}");
    assert!(stdout.contains("timeout = \"120s\""), "{stdout}");
    assert!(!stdout.contains("Very-Secret-1") && !stdout.contains("Admin-Token-2-long-enough"));
}

#[test]
fn check_config_exits_1_with_a_one_line_reason_naming_the_setting() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "EMGATE_UPSTREAM_URL",
            "em.example:9398",
            "EMGATE_UPSTREAM_URL",
        ),
        ("EMGATE_UPSTREAM_TIMEOUT", "soon", "EMGATE_UPSTREAM_TIMEOUT"),
        (
            "EMGATE_UPSTREAM_CA_FILE",
            "/does/not/exist.pem",
            "EMGATE_UPSTREAM_CA_FILE",
        ),
        ("EMGATE_CACHE_MAX_BYTES", "lots", "EMGATE_CACHE_MAX_BYTES"),
        // A blank or short admin token would make admin authentication a formality.
        ("EMGATE_ADMIN_TOKEN", "   ", "EMGATE_ADMIN_TOKEN"),
        (
            "EMGATE_ADMIN_TOKEN",
            "  short-token  ",
            "EMGATE_ADMIN_TOKEN",
        ),
        // Plain http would send the EM password in clear.
        (
            "EMGATE_UPSTREAM_URL",
            "http://em.example:9398",
            "EMGATE_UPSTREAM_URL",
        ),
        // The largest answer and its conversion must fit the memory budget.
        ("EMGATE_UPSTREAM_MEMORY", "100MiB", "EMGATE_UPSTREAM_MEMORY"),
        ("EMGATE_MAX_CONNECTIONS", "0", "EMGATE_MAX_CONNECTIONS"),
        // Fleet mode.
        (
            "EMGATE_SHARED_URL",
            "http://redis:6379",
            "EMGATE_SHARED_URL",
        ),
        ("EMGATE_SHARED_URL", "redis://", "EMGATE_SHARED_URL"),
        (
            "EMGATE_SHARED_URL",
            "redis://redis:6379/x",
            "EMGATE_SHARED_URL",
        ),
        ("EMGATE_SHARED_PASSWORD", "orphan", "EMGATE_SHARED_PASSWORD"),
    ];
    for (name, value, named) in cases {
        let mut env = GOOD.to_vec();
        env.retain(|(k, _)| k != name);
        env.push((name, value));
        let out = emgate(&["check-config"], &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(named), "{stderr}");
        assert!(!stderr.contains("Very-Secret-1"));
    }
    let out = emgate(&["check-config"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EMGATE_UPSTREAM_URL"));
}

#[test]
fn bad_fleet_settings_fail_check_config_naming_the_setting() {
    let with_url = |extra: &[(&'static str, &'static str)]| {
        let mut env = GOOD.to_vec();
        env.push(("EMGATE_SHARED_URL", "redis://:Redis-Pw-77@127.0.0.1:6379/2"));
        env.extend_from_slice(extra);
        emgate(&["check-config"], &env)
    };
    let ok = with_url(&[]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("redis://:***@127.0.0.1:6379/2"), "{stdout}");
    assert!(!stdout.contains("Redis-Pw-77"), "{stdout}");
    for (extra, named) in [
        (
            &[("EMGATE_SHARED_PREFIX", "{bad}")][..],
            "EMGATE_SHARED_PREFIX",
        ),
        (
            &[("EMGATE_SHARED_TIMEOUT", "soon")][..],
            "EMGATE_SHARED_TIMEOUT",
        ),
        (
            &[("EMGATE_SHARED_LEASE", "500ms")][..],
            "EMGATE_SHARED_LEASE",
        ),
        (
            &[
                ("EMGATE_SHARED_LEASE", "2s"),
                ("EMGATE_SHARED_TIMEOUT", "1s"),
            ][..],
            "EMGATE_SHARED_LEASE",
        ),
        (
            &[("EMGATE_SHARED_PASSWORD", "twice")][..],
            "EMGATE_SHARED_PASSWORD",
        ),
        (
            &[("EMGATE_SHARED_CA_FILE", "/etc/hostname")][..],
            "EMGATE_SHARED_CA_FILE",
        ),
        (
            &[("EMGATE_SHARED_SECRET", "short")][..],
            "EMGATE_SHARED_SECRET",
        ),
        (
            &[("EMGATE_SHARED_EM_SESSION", "perhaps")][..],
            "EMGATE_SHARED_EM_SESSION",
        ),
    ] {
        let out = with_url(extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(
            stderr.starts_with("emgate: configuration error: "),
            "{stderr}"
        );
        assert!(stderr.contains(named), "{extra:?}: {stderr}");
        assert!(!stderr.contains("Redis-Pw-77"), "{stderr}");
    }
}

#[test]
fn check_config_refuses_unknown_keys_in_the_file_and_serve_validates_the_same_way() {
    let dir = Scratch::new("cli");
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[upstream]\nurl = \"https://em:9398\"\npasword = \"x\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();

    let out = emgate(&["check-config", "--config", path], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream.pasword"));

    let out = emgate(&["serve", "--config", path], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream.pasword"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_shipped_example_config_is_valid_and_documents_every_setting() {
    // The file leaves the password to the environment, as it recommends.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/emgate.toml");
    let out = emgate(
        &["check-config", "--config", path],
        &[("EMGATE_UPSTREAM_PASSWORD", "x")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every setting check-config knows is in the example, with its variable.
    let file = std::fs::read_to_string(path).unwrap();
    let effective = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in effective.lines() {
        let Some(var) = line.rsplit("# ").next().and_then(|v| v.split(',').next()) else {
            continue;
        };
        if var.starts_with("EMGATE_") {
            assert!(file.contains(var.trim()), "config/emgate.toml lacks {var}");
        }
    }
}

#[test]
fn client_add_prints_a_secret_once_and_its_hash() {
    let out = emgate(&["client", "add", "dashboard"], &[]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let secret = stdout
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("# "))
        .expect("secret line");
    assert!(secret.len() >= 22, "{secret}");
    let hash = emgate::digest::sha256_hex(secret.as_bytes());
    assert!(
        stdout.contains(&format!("secret_sha256 = \"{hash}\"")),
        "{stdout}"
    );
    assert!(stdout.contains("name = \"dashboard\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_curl_lines_and_the_status_page_that_work_and_stops_on_sigint() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_emgate"))
        .arg("demo")
        .env("EMGATE_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.contains("Ctrl-C"))
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(20), lines)
        .await
        .expect("demo printed its lines")
        .unwrap();
    let curls: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.trim().strip_prefix("curl -s "))
        .collect();
    assert_eq!(curls.len(), 4, "{lines:?}");
    let http = Http::default();
    for url in &curls[..3] {
        let reply = http.get(url, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{url}: {}", reply.body);
    }
    assert!(http
        .get(curls[1], &[])
        .await
        .body
        .contains("VmRestorePointReference"));

    // The status page's URL and the admin token, as printed, open the page;
    // the printed curl line gives its JSON.
    let token = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("admin token"))
        .map(str::trim)
        .expect("the demo prints its admin token");
    let page = lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("http") && l.ends_with("/admin/status"))
        .expect("the demo prints the status page URL");
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("operator:{token}")
        )
    );
    let reply = http.get(page, &[("authorization", &basic)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.body.contains("emgate status"), "{}", reply.body);
    assert_eq!(http.get(page, &[]).await.status, StatusCode::UNAUTHORIZED);
    let (header, url) = curls[3]
        .strip_prefix("-H 'Authorization: ")
        .and_then(|r| r.split_once("' "))
        .expect("curl -s -H 'Authorization: Bearer …' URL");
    let reply = http.get(url, &[("authorization", header)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let facts: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(facts["em"]["state"], "valid", "{facts}");

    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_exits_zero_only_when_the_gateway_is_ready() {
    let sim = common::start_sim(common::sim_config()).await;
    let gw = common::Gateway::start(&sim, &[]);
    let ready = gw.url("/readyz");
    let http = Http::default();
    assert!(common::becomes_ready(&http, &gw).await);
    let probe = |url: String| {
        tokio::task::spawn_blocking(move || emgate(&["probe", &url], &[]).status.code())
    };
    assert_eq!(probe(ready.clone()).await.unwrap(), Some(0));
    sim.set_password("changed");
    sim.expire_all_sessions();
    // A request finds the session gone and the logon refused: not ready.
    let _ = http.get(&gw.url("/api/restorePoints"), &[]).await;
    assert_eq!(probe(ready).await.unwrap(), Some(1));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(
        probe(format!("http://{closed}/readyz")).await.unwrap(),
        Some(1)
    );
}

#[test]
fn check_config_validates_cache_rules_naming_the_rule_and_prints_them() {
    let dir = Scratch::new("rules");
    let file = dir.join("rules.toml");
    let path = file.to_str().unwrap();
    let rule = |name: &str, path: &str, extra: &str| {
        format!("[[cache.rules]]\nname = \"{name}\"\npath = \"{path}\"\nttl = \"30s\"\n{extra}")
    };
    for (text, expect) in [
        (
            rule("bad", "/api/x/{name}", ""),
            "unknown placeholder {name}",
        ),
        (
            rule("bad", "/api/**/x", ""),
            "** may only be the last segment",
        ),
        (rule("bad", "jobs", ""), "must start with /api/"),
        (rule("bad-name", "/api/x", ""), "letters, digits or '_'"),
        (rule("vm_restore_points", "/api/x", ""), "built-in rule"),
        (
            rule("bad", "/api/x", "colour = \"red\"\n"),
            "unknown key \"colour\"",
        ),
        (
            rule("bad", "/api/x", "stale_if_error = \"later\"\n"),
            "stale_if_error",
        ),
        (
            rule("twice", "/api/x", "") + &rule("twice", "/api/y", ""),
            "another rule is also named",
        ),
    ] {
        std::fs::write(&file, &text).unwrap();
        let out = emgate(&["check-config", "--config", path], GOOD);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {stderr}");
        assert!(stderr.contains("cache.rules["), "{stderr}");
        assert!(stderr.contains(expect), "{text}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    std::fs::write(
        &file,
        rule(
            "repositories",
            "/api/repositories/**",
            "stale_while_revalidate = \"10s\"\n",
        ) + &rule("jobs", "/api/jobs/**", ""),
    )
    .unwrap();
    let out = emgate(&["check-config", "--config", path], GOOD);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let order: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.trim_start_matches("# ").strip_prefix("name = "))
        .collect();
    assert_eq!(
        order,
        [
            "\"repositories\"",
            "\"jobs\"",
            "\"vm_restore_points\"",
            "\"reports_summary\"",
            "\"query\"",
            "\"backup_sessions\""
        ],
        "file rules first (one replacing the default jobs), then the built-in, then the defaults: {stdout}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
