//! Changing emgate while it runs: clients, cache rules, the EM password and
//! the listener's certificate change by editing their files (or on
//! SIGHUP), without a restart, without losing the cache or other clients'
//! sessions; a broken file changes nothing and says so.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use http::StatusCode;

/// An empty folder of its own.
fn folder(tag: &str) -> Scratch {
    Scratch::new(&format!("reload-{tag}"))
}

fn clients_text(clients: &[(&str, &str)]) -> String {
    clients
        .iter()
        .map(|(name, secret)| {
            format!(
                "[[clients]]\nname = \"{name}\"\nsecret_sha256 = \"{}\"\n\n",
                emgate::digest::sha256_hex(secret.as_bytes())
            )
        })
        .collect()
}

fn basic(name: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{secret}"))
    )
}

async fn status_json(http: &Http, gw: &Gateway, admin: &str) -> serde_json::Value {
    http.get(
        &gw.url("/admin/status.json"),
        &[("authorization", &format!("Bearer {admin}"))],
    )
    .await
    .json()
}

async fn reloads(http: &Http, gw: &Gateway, result: &str) -> f64 {
    let body = http.get(&gw.url("/metrics"), &[]).await.body;
    sample(
        &body,
        &format!("emgate_config_reload_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(-1.0)
}

const ADMIN: &str = "the-operators-admin-token-for-reloads";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_added_to_the_clients_file_gets_in_and_a_removed_one_is_shut_out_without_a_restart(
) {
    let dir = folder("clients");
    let file = dir.join("clients.toml");
    let (dash, portal, script) = (
        ("dashboard", "dashboard-secret-0123456789"),
        ("portal", "portal-secret-0123456789"),
        ("script", "script-secret-0123456789"),
    );
    std::fs::write(&file, clients_text(&[dash, portal])).unwrap();
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_CLIENTS_FILE", file.to_str().unwrap()),
            ("EMGATE_ADMIN_TOKEN", ADMIN),
        ],
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    assert_eq!(reloads(&http, &gw, "ok").await, 0.0);
    // The dashboard and the portal hold gateway sessions; the dashboard's
    // restore point is cached.
    let (dash_session, _) = gateway_logon(&http, &gw, dash.0, dash.1).await;
    let (portal_session, _) = gateway_logon(&http, &gw, portal.0, portal.1).await;
    let path = format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(5)
    );
    let with_dash = [("x-restsvcsessionid", dash_session.as_str())];
    assert_eq!(
        http.get(&gw.url(&path), &with_dash).await.header("x-cache"),
        "MISS"
    );

    // The operator gives a script a secret and takes the portal's away.
    write_atomically(&file, &clients_text(&[dash, script]));
    let script_auth = basic(script.0, script.1);
    let let_in = eventually(Duration::from_secs(2), || async {
        http.get(&gw.url(&path), &[("authorization", &script_auth)])
            .await
            .status
            == StatusCode::OK
    })
    .await;
    assert!(let_in, "the new client was not let in within 2 s");
    // The portal is out, its session too.
    let r = http
        .get(&gw.url(&path), &[("x-restsvcsessionid", &portal_session)])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let r = http
        .get(
            &gw.url(&path),
            &[("authorization", &basic(portal.0, portal.1))],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The dashboard's session and the cache are as they were.
    let r = http.get(&gw.url(&path), &with_dash).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-cache"), "HIT");
    assert_eq!(reloads(&http, &gw, "ok").await, 1.0);
    let status = status_json(&http, &gw, ADMIN).await;
    let config = &status["config"];
    assert_eq!(config["generation"], 1, "{config}");
    assert_eq!(config["last_reload"]["trigger"], "file", "{config}");
    let applied = config["last_reload"]["applied"].to_string();
    assert!(
        applied.contains("added: [script]") && applied.contains("removed: [portal]"),
        "{applied}"
    );

    // A broken clients file changes nothing, and says so once.
    write_atomically(&file, "[[clients]]\nname = \"half\"\n");
    let reported = eventually(Duration::from_secs(2), || async {
        reloads(&http, &gw, "error").await == 1.0
    })
    .await;
    assert!(reported, "the broken file was not reported");
    let status = status_json(&http, &gw, ADMIN).await;
    let last = &status["config"]["last_reload"];
    assert_eq!(last["ok"], false, "{last}");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("EMGATE_CLIENTS_FILE"),
        "{last}"
    );
    assert_eq!(status["config"]["generation"], 1);
    let r = http
        .get(&gw.url(&path), &[("authorization", &script_auth)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-cache"), "HIT");
    assert_eq!(
        http.get(&gw.url(&path), &with_dash).await.status,
        StatusCode::OK
    );
    let failures = || {
        gw.log_text()
            .lines()
            .filter(|l| l.contains("configuration reload failed"))
            .count()
    };
    let logged = eventually(Duration::from_secs(2), || async { failures() >= 1 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(logged && failures() == 1, "{}", gw.log_text());
    let logs = gw.log_text();
    for secret in [ADMIN, PASSWORD, dash.1, script.1, dash_session.as_str()] {
        assert!(!logs.contains(secret), "a secret was logged");
    }
    sim.shutdown().await;
}

/// A client's secret, once checked on a connection, is not checked again
/// on it (BENCHMARKS.md, "twentieth steps"); nothing about who gets in
/// changes for that: a wrong or rotated secret is refused on that very
/// connection, and another client's requests on it are that client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_is_refused_on_the_connection_it_was_used_on() {
    let dir = folder("rotated");
    let file = dir.join("clients.toml");
    let (dash, portal) = (
        ("dashboard", "dashboard-secret-0123456789"),
        ("portal", "portal-secret-0123456789"),
    );
    std::fs::write(&file, clients_text(&[dash, portal])).unwrap();
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_CLIENTS_FILE", file.to_str().unwrap()),
            ("EMGATE_LOG_FORMAT", "text"),
        ],
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    let path = format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(4)
    );
    let (dash_auth, portal_auth) = (basic(dash.0, dash.1), basic(portal.0, portal.1));
    // Cached, and its whole head made: what follows are hits answered at once.
    for _ in 0..2 {
        http.get(&gw.url(&path), &[("authorization", &dash_auth)])
            .await;
    }
    let mut one = OneConnection::open(&gw).await;
    for i in 0..3 {
        let hit = one
            .get(&path, ("authorization", &dash_auth), &format!("dash-{i}"))
            .await;
        assert_eq!(hit, (StatusCode::OK, "HIT".to_string()));
    }
    // Another client on the same connection is itself, and a wrong secret
    // for the first is refused there.
    let portal_hit = one
        .get(&path, ("authorization", &portal_auth), "portal-1")
        .await;
    assert_eq!(portal_hit, (StatusCode::OK, "HIT".to_string()));
    let wrong = basic(dash.0, "dashboard-secret-0123456780");
    assert_eq!(
        one.get(&path, ("authorization", &wrong), "wrong-1").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        one.get(&path, ("authorization", &dash_auth), "dash-3")
            .await
            .0,
        StatusCode::OK
    );
    assert!(gw
        .access_fields("portal-1")
        .await
        .contains(&"client=\"portal\"".to_string()));
    assert!(gw
        .access_fields("dash-3")
        .await
        .contains(&"client=\"dashboard\"".to_string()));

    // The operator rotates the dashboard's secret: the old one is refused
    // on the connection that used it a moment ago; the new one gets in there.
    let rotated = ("dashboard", "dashboard-rotated-secret-0123");
    write_atomically(&file, &clients_text(&[rotated, portal]));
    let refused = eventually(Duration::from_secs(2), || async {
        OneConnection::open(&gw)
            .await
            .get(&path, ("authorization", &dash_auth), "probe")
            .await
            .0
            == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "the rotated secret was still let in after 2 s");
    assert_eq!(
        one.get(&path, ("authorization", &dash_auth), "old-1")
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let new_auth = basic(rotated.0, rotated.1);
    assert_eq!(
        one.get(&path, ("authorization", &new_auth), "new-1").await,
        (StatusCode::OK, "HIT".to_string())
    );
    assert_eq!(
        one.get(&path, ("authorization", &portal_auth), "portal-2")
            .await
            .0,
        StatusCode::OK
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_after_a_ttl_change_gives_new_entries_the_new_ttl_and_other_rules_keep_theirs() {
    let sim = start_sim(sim_config()).await;
    // No refresh ahead of expiry: the TTL shows as a miss.
    let toml = "[cache]\nttl = \"1h\"\nstale_while_revalidate = \"0s\"\nstale_if_error = \"0s\"\nrefresh_ahead = false\n";
    // The log filter comes from the file here, not the environment.
    let toml = format!("{toml}[log]\nfilter = \"info\"\n");
    let toml = toml.as_str();
    let gw = Gateway::start_with_file(
        &sim,
        &[("EMGATE_ADMIN_TOKEN", ADMIN), ("EMGATE_LOG", "")],
        Some(toml),
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    // SIGHUP reloads even when nothing changed.
    gw.hangup();
    let reloaded = eventually(Duration::from_secs(2), || async {
        status_json(&http, &gw, ADMIN).await["config"]["generation"] == 1
    })
    .await;
    assert!(reloaded, "SIGHUP did not reload: {}", gw.log_text());
    let last = &status_json(&http, &gw, ADMIN).await["config"]["last_reload"];
    assert_eq!(last["trigger"], "SIGHUP", "{last}");
    assert_eq!(last["applied"], serde_json::json!([]), "{last}");

    // A dashboard's jobs list (a default rule) and a restore point are cached.
    let jobs = "/api/jobs";
    let point = format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(2)
    );
    for path in [jobs, point.as_str()] {
        assert_eq!(http.get(&gw.url(path), &[]).await.header("x-cache"), "MISS");
    }
    // The operator shortens the restore points' TTL, and sends SIGHUP.
    let file = gw.settings_file.clone().unwrap();
    std::fs::write(&file, toml.replace("ttl = \"1h\"", "ttl = \"2s\"")).unwrap();
    gw.hangup();
    // (The file's change reloads by itself too: the first of the two
    // applies it, the other finds nothing more to do.)
    let applied = eventually(Duration::from_secs(2), || async {
        let s = status_json(&http, &gw, ADMIN).await;
        s["config"]["generation"].as_u64() >= Some(2)
    })
    .await;
    assert!(applied, "{}", gw.log_text());
    // The jobs list is still cached; the restore point's entry was of the
    // changed rule: fetched again, under the new TTL.
    assert_eq!(http.get(&gw.url(jobs), &[]).await.header("x-cache"), "HIT");
    assert_eq!(
        http.get(&gw.url(&point), &[]).await.header("x-cache"),
        "MISS"
    );
    assert_eq!(
        http.get(&gw.url(&point), &[]).await.header("x-cache"),
        "HIT"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        http.get(&gw.url(&point), &[]).await.header("x-cache"),
        "MISS",
        "the new TTL (2 s) did not hold"
    );
    // What a running gateway cannot change is named, and kept; the log
    // filter changes at once (here: no more access lines).
    std::fs::write(
        &file,
        format!(
            "{}[listen]\nmax_connections = 77\n",
            toml.replace("ttl = \"1h\"", "ttl = \"2s\"")
                .replace("filter = \"info\"", "filter = \"info,emgate::access=off\"")
        ),
    )
    .unwrap();
    gw.hangup();
    let kept = eventually(Duration::from_secs(2), || async {
        let s = status_json(&http, &gw, ADMIN).await;
        s["config"]["last_reload"]["kept"] == serde_json::json!(["EMGATE_MAX_CONNECTIONS"])
    })
    .await;
    assert!(kept, "{}", status_json(&http, &gw, ADMIN).await["config"]);
    let quiet = [("x-request-id", "after-the-new-filter")];
    assert_eq!(http.get(&gw.url(jobs), &quiet).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = gw.log_text();
    assert!(
        logs.contains("EMGATE_LOG"),
        "the filter's change was not applied"
    );
    assert!(
        !logs.contains("after-the-new-filter"),
        "an access line after access=off"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_em_password_and_admin_token_are_taken_from_their_files_within_seconds() {
    let dir = folder("secrets");
    let (password_file, token_file) = (dir.join("em-password"), dir.join("admin-token"));
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    std::fs::write(&token_file, ADMIN).unwrap();
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            ("EMGATE_UPSTREAM_PASSWORD", ""),
            (
                "EMGATE_UPSTREAM_PASSWORD_FILE",
                password_file.to_str().unwrap(),
            ),
            ("EMGATE_ADMIN_TOKEN_FILE", token_file.to_str().unwrap()),
        ],
    );
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    // EM's password is rotated, and EM forgets the gateway's session: the
    // gateway's logons are refused until it is told, and then paused.
    sim.set_password("the-rotated-em-password");
    sim.expire_all_sessions();
    let point = format!(
        "/api/restorePoints/{}/vmRestorePoints",
        sim.restore_point_id(1)
    );
    let _ = http.get(&gw.url(&point), &[]).await;
    let paused = eventually(Duration::from_secs(10), || async {
        http.get(&gw.url("/readyz"), &[]).await.status == StatusCode::SERVICE_UNAVAILABLE
            && gw.log_text().contains("logons paused")
    })
    .await;
    assert!(paused, "{}", gw.log_text());
    sim.clear_requests();
    // The new password reaches the mounted file.
    write_atomically(&password_file, "the-rotated-em-password\n");
    let ready = eventually(Duration::from_secs(2), || async {
        http.get(&gw.url("/readyz"), &[]).await.status == StatusCode::OK
    })
    .await;
    assert!(ready, "not ready within 2 s: {}", gw.log_text());
    let logons = sim
        .requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/api/sessionMngr"))
        .count();
    assert_eq!(logons, 1, "one logon with the new password");
    assert_eq!(http.get(&gw.url(&point), &[]).await.status, StatusCode::OK);
    assert!(!gw.log_text().contains("the-rotated-em-password"));

    // The admin token is rotated: the new one works at once, the old one
    // for another minute.
    let new_token = "the-operators-next-admin-token";
    write_atomically(&token_file, new_token);
    let bearer = |t: &str| format!("Bearer {t}");
    let works = eventually(Duration::from_secs(2), || async {
        http.get(
            &gw.url("/admin/status.json"),
            &[("authorization", &bearer(new_token))],
        )
        .await
        .status
            == StatusCode::OK
    })
    .await;
    assert!(works);
    let old = http
        .get(
            &gw.url("/admin/status.json"),
            &[("authorization", &bearer(ADMIN))],
        )
        .await;
    assert_eq!(
        old.status,
        StatusCode::OK,
        "the old token within its minute"
    );
    let wrong = http
        .get(
            &gw.url("/admin/status.json"),
            &[("authorization", &bearer("not-a-token-of-ours"))],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(!gw.log_text().contains(new_token));
    sim.shutdown().await;
}

/// A folder as Kubernetes mounts a Secret: each file a link through
/// `..data`, itself a link to the folder of the current version.
fn mounted_secret(dir: &Path, version: &str, files: &[(&str, String)]) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    for (name, text) in files {
        std::fs::write(versioned.join(name), text).unwrap();
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    // The kubelet's swap: a new link renamed over `..data`.
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_in_a_mounted_secret_is_served_to_new_connections() {
    let dir = folder("tls");
    let pem = |c: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        vec![
            ("tls.crt", c.cert.pem()),
            ("tls.key", c.signing_key.serialize_pem()),
        ]
    };
    let first = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    mounted_secret(&dir, "2026_12_01", &pem(&first));
    let sim = start_sim(sim_config()).await;
    let gw = Gateway::start(
        &sim,
        &[
            (
                "EMGATE_TLS_CERT_FILE",
                dir.join("tls.crt").to_str().unwrap(),
            ),
            ("EMGATE_TLS_KEY_FILE", dir.join("tls.key").to_str().unwrap()),
        ],
    );
    let url = format!("https://localhost:{}/api/", gw.addr.port());
    let open = Https::trusting(first.cert.der());
    assert_eq!(open.try_get(&url).await, Ok(StatusCode::OK));

    let renewed = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    mounted_secret(&dir, "2026_12_04", &pem(&renewed));
    let served = eventually(Duration::from_secs(2), || async {
        Https::trusting(renewed.cert.der()).try_get(&url).await == Ok(StatusCode::OK)
    })
    .await;
    assert!(
        served,
        "the renewed certificate was not served: {}",
        gw.log_text()
    );
    // New connections no longer get the old one; the open one goes on.
    assert!(Https::trusting(first.cert.der())
        .try_get(&url)
        .await
        .is_err());
    assert_eq!(open.try_get(&url).await, Ok(StatusCode::OK));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_fleet_a_reload_changes_one_replica_and_the_status_page_shows_when_all_have_it() {
    let Some(redis) = Redis::try_start() else {
        return;
    };
    let sim = start_sim(sim_config()).await;
    let url = redis.url();
    let env = [
        ("EMGATE_SHARED_URL", url.as_str()),
        (
            "EMGATE_SHARED_SECRET",
            "the-fleets-shared-secret-0123456789",
        ),
        ("EMGATE_ADMIN_TOKEN", ADMIN),
    ];
    // Each replica reads its own copy of the settings, as each pod mounts
    // its own ConfigMap.
    let toml = "[cache]\nttl = \"5m\"\n";
    let a = Gateway::start_with_file(&sim, &env, Some(toml));
    let b = Gateway::start_with_file(&sim, &env, Some(toml));
    let http = Http::default();
    assert!(becomes_ready(&http, &a).await && becomes_ready(&http, &b).await);
    let config = |gw| {
        let http = http.clone();
        async move { status_json(&http, gw, ADMIN).await["config"].clone() }
    };
    let agree = |gw| async move {
        let c = config(gw).await;
        c["members"].as_array().map(Vec::len) == Some(2) && c["converged"] == true
    };
    assert!(
        eventually(Duration::from_secs(5), || agree(&a)).await,
        "{}",
        config(&a).await
    );

    // A's copy changes first: only A reloads, and both say they differ.
    let changed = toml.replace("5m", "2m");
    write_atomically(a.settings_file.as_ref().unwrap(), &changed);
    let apart = eventually(Duration::from_secs(3), || async {
        let c = config(&b).await;
        c["converged"] == false && c["generation"] == 0
    })
    .await;
    assert!(apart, "{}", config(&b).await);
    let c = config(&a).await;
    assert_eq!(c["generation"], 1, "{c}");
    assert_eq!(c["converged"], false, "{c}");
    // This replica first, then the other.
    assert_eq!(c["members"][0]["generation"], 1, "{c}");
    assert_eq!(c["members"][1]["generation"], 0, "{c}");
    assert_eq!(c["members"][1]["same"], false, "{c}");
    let page = http
        .get(
            &b.url("/admin/status"),
            &[("authorization", &format!("Bearer {ADMIN}"))],
        )
        .await
        .body;
    assert!(page.contains("members differ"), "{page}");

    // B's copy follows: the fleet agrees again.
    write_atomically(b.settings_file.as_ref().unwrap(), &changed);
    let together = eventually(Duration::from_secs(3), || async {
        agree(&a).await && agree(&b).await
    })
    .await;
    assert!(together, "{}", config(&b).await);
    // A configuration written by someone without the fleet's key is not
    // shown: the planted member is left out.
    redis.cli(&[
        "HSET",
        "{emgate}:config",
        "stranger",
        "7 00ff 99999999999999 00",
    ]);
    let c = config(&a).await;
    assert_eq!(c["members"].as_array().unwrap().len(), 2, "{c}");
    assert_eq!(c["converged"], true);
    sim.shutdown().await;
}
