//! Restore portals and automation start jobs through the gateway and follow
//! the task EM answers with. EM keeps tasks per logon session; the gateway,
//! with one pooled session for everybody, keeps them per client.

mod common;

use std::time::Duration;

use common::*;
use emgate::sim::{Fault, FaultTarget, Sim, SimConfig};
use http::{Method, StatusCode};

const ADMIN: &str = "tasks-admin-token-0123456789";

fn config() -> SimConfig {
    SimConfig {
        task_duration: Duration::from_millis(1500),
        ..sim_config()
    }
}

/// A gateway with writes on and two clients, Alice and Bob.
async fn portal(sim: &Sim, extra: &[(&str, &str)]) -> (Gateway, Http, [(String, String); 2]) {
    let (clients_dir, file, creds) = clients_file(&format!("tasks-{}", sim.addr().port()), 2);
    let mut env = vec![
        ("EMGATE_CLIENTS_FILE", file.as_str()),
        ("EMGATE_ALLOW_WRITES", "true"),
        ("EMGATE_ADMIN_TOKEN", ADMIN),
    ];
    env.extend_from_slice(extra);
    let mut gw = Gateway::start(sim, &env);
    gw.hold(clients_dir);
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    let named = |c: &(String, String)| (c.0.clone(), basic(c));
    (gw, http, [named(&creds[0]), named(&creds[1])])
}

/// `Authorization: Basic` for a client's name and secret.
fn basic((name, secret): &(String, String)) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{name}:{secret}"));
    format!("Basic {b64}")
}

async fn start_job(http: &Http, gw: &Gateway, sim: &Sim, auth: &str) -> Reply {
    let job = format!("/api/jobs/{}?action=start", sim.job_id(0));
    http.send_body(Method::POST, &gw.url(&job), &[("authorization", auth)], "")
        .await
}

/// The task's path at the gateway, from its answer.
fn task_path(reply: &Reply) -> String {
    let href = reply.json()["Href"].as_str().unwrap().to_string();
    let at = href.find("/api/tasks/").expect("a task Href");
    href[at..].to_string()
}

async fn wait_finished(http: &Http, gw: &Gateway, path: &str, auth: &str) -> serde_json::Value {
    for _ in 0..100 {
        let r = http.get(&gw.url(path), &[("authorization", auth)]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        if r.json()["State"] == "Finished" {
            return r.json();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_belongs_to_the_client_that_started_it() {
    let sim = start_sim(config()).await;
    let (gw, http, [(_, alice), (_, bob)]) = portal(&sim, &[]).await;
    let started = start_job(&http, &gw, &sim, &alice).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    let path = task_path(&started);
    assert!(
        started.json()["Href"]
            .as_str()
            .unwrap()
            .starts_with(&gw.url("/api/tasks/")),
        "the Href points at the gateway: {}",
        started.body
    );
    assert_ne!(path, "/api/tasks/task-1", "an id nobody can guess");
    assert_eq!(started.json()["State"], "Running");
    assert_eq!(sim.tasks_started(), 1);
    // The operator sees it pending, by client.
    let m = http.get(&gw.url("/metrics"), &[]).await.body;
    assert_eq!(sample(&m, "emgate_tasks_pending"), Some(1.0), "{m}");
    let bearer = format!("Bearer {ADMIN}");
    let status = http
        .get(&gw.url("/admin/status.json"), &[("authorization", &bearer)])
        .await
        .json();
    assert_eq!(
        status["clients"]["pending_tasks"][0]["count"], 1,
        "{status}"
    );
    assert_eq!(status["clients"]["pending_tasks"][0]["name"], "client0");

    // Bob, 40 times at once while Alice reads hers: never Alice's task.
    let mut reads = Vec::new();
    for i in 0..80 {
        let (http, url) = (http.clone(), gw.url(&path));
        let auth = if i % 2 == 0 {
            alice.clone()
        } else {
            bob.clone()
        };
        reads.push(tokio::spawn(async move {
            (
                i % 2 == 0,
                http.get(&url, &[("authorization", &auth)]).await,
            )
        }));
    }
    for r in reads {
        let (is_alice, reply) = r.await.unwrap();
        let want = if is_alice {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(reply.status, want, "{}", reply.body);
        if !is_alice {
            assert!(reply.body.contains("\"StatusCode\":404"), "{}", reply.body);
        }
    }
    let list = http
        .get(&gw.url("/api/tasks"), &[("authorization", &bob)])
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert!(
        !list.body.contains(&path[11..]),
        "Bob's list: {}",
        list.body
    );
    let query = http
        .get(&gw.url("/api/query?type=Task"), &[("authorization", &bob)])
        .await;
    assert!(
        !query.body.contains(&path[11..]),
        "Bob's query: {}",
        query.body
    );
    let bye = http
        .send(Method::DELETE, &gw.url(&path), &[("authorization", &bob)])
        .await;
    assert_eq!(bye.status, StatusCode::NOT_FOUND);
    // None of Bob's attempts reached EM.
    assert!(
        !sim.requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path_and_query.starts_with("/api/tasks")),
        "a DELETE of a task reached EM"
    );

    // Alice's task is still hers, and ends with EM's result.
    let done = wait_finished(&http, &gw, &path, &alice).await;
    assert_eq!(done["Result"]["Success"], true, "{done}");
    let mine = http
        .get(&gw.url("/api/tasks"), &[("authorization", &alice)])
        .await;
    assert!(mine.body.contains(&path[11..]), "{}", mine.body);
    let query = http
        .get(
            &gw.url("/api/query?type=Task"),
            &[("authorization", &alice)],
        )
        .await;
    assert_eq!(query.status, StatusCode::OK, "{}", query.body);
    assert!(query.body.contains(&path[11..]), "{}", query.body);
    let bye = http
        .send(Method::DELETE, &gw.url(&path), &[("authorization", &alice)])
        .await;
    assert_eq!(bye.status, StatusCode::NO_CONTENT);
    let gone = http.get(&gw.url(&path), &[("authorization", &alice)]).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_outlives_the_em_session_that_made_it() {
    let sim = start_sim(config()).await;
    let (gw, http, [(_, alice), _]) = portal(&sim, &[]).await;
    let started = start_job(&http, &gw, &sim, &alice).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    let path = task_path(&started);
    // Alice does not look for 4 s: the job finished at EM meanwhile.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let logons = sim.stats().logons_ok;
    sim.expire_all_sessions();
    // The gateway logs on again (any read makes it).
    let r = http
        .get(&gw.url("/api/jobs"), &[("authorization", &alice)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(sim.stats().logons_ok, logons + 1);
    let task = http.get(&gw.url(&path), &[("authorization", &alice)]).await;
    assert_eq!(task.status, StatusCode::OK, "{}", task.body);
    assert_eq!(task.json()["State"], "Finished", "{}", task.body);
    assert_eq!(task.json()["Result"]["Success"], true, "{}", task.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_whose_session_ended_before_it_finished_says_so() {
    let sim = start_sim(SimConfig {
        task_duration: Duration::from_secs(30),
        ..sim_config()
    })
    .await;
    let (gw, http, [(_, alice), _]) = portal(&sim, &[]).await;
    let started = start_job(&http, &gw, &sim, &alice).await;
    let path = task_path(&started);
    // EM restarted, say: every session and its tasks are gone.
    sim.expire_all_sessions();
    let done = wait_finished(&http, &gw, &path, &alice).await;
    assert_eq!(done["Result"]["Success"], false, "{done}");
    assert!(
        done["Result"]["Message"]
            .as_str()
            .unwrap()
            .contains("ended before the task finished"),
        "{done}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_is_sent_once_but_after_ems_401_for_a_session_that_is_gone() {
    let sim = start_sim(config()).await;
    let (gw, http, [(_, alice), _]) = portal(&sim, &[]).await;
    // Every EM session expired: EM refuses the write before doing anything;
    // after the one re-logon it is sent once more, and runs once.
    sim.expire_all_sessions();
    let started = start_job(&http, &gw, &sim, &alice).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    assert_eq!(sim.tasks_started(), 1);
    // A reset: EM may have done it; the client decides, nothing is resent.
    sim.clear_requests();
    sim.set_fault(FaultTarget::Write, Some(Fault::AnswerLost));
    let lost = start_job(&http, &gw, &sim, &alice).await;
    assert_eq!(lost.status, StatusCode::BAD_GATEWAY, "{}", lost.body);
    let posts = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path_and_query.starts_with("/api/jobs/"))
        .count();
    assert_eq!(posts, 1, "the write was sent again after a reset");
    assert_eq!(sim.tasks_started(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_writes_off_a_job_start_is_refused_and_em_sees_nothing() {
    let sim = start_sim(config()).await;
    let (gw, http, [(_, alice), _]) = portal(&sim, &[("EMGATE_ALLOW_WRITES", "false")]).await;
    sim.clear_requests();
    let r = start_job(&http, &gw, &sim, &alice).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{}", r.body);
    let r = http
        .send(
            Method::DELETE,
            &gw.url("/api/tasks/task-1"),
            &[("authorization", &alice)],
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{}", r.body);
    assert!(sim.requests().is_empty(), "{:?}", sim.requests());
    assert_eq!(sim.tasks_started(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_fleet_the_owner_follows_a_task_on_any_replica_also_after_its_replica_died() {
    let sim = start_sim(SimConfig {
        task_duration: Duration::from_secs(3),
        ..sim_config()
    })
    .await;
    let Some(mut redis) = Redis::try_start() else {
        return;
    };
    let url = redis.url();
    let (_clients_dir, file, creds) =
        clients_file(&format!("tasks-fleet-{}", sim.addr().port()), 2);
    let env = [
        ("EMGATE_CLIENTS_FILE", file.as_str()),
        ("EMGATE_ALLOW_WRITES", "true"),
        ("EMGATE_SHARED_URL", url.as_str()),
        ("EMGATE_SHARED_TIMEOUT", "1s"),
        ("EMGATE_SHARED_LEASE", "4s"),
    ];
    let mut a = Gateway::start(&sim, &env);
    let b = Gateway::start(&sim, &env);
    let http = Http::default();
    assert!(becomes_ready(&http, &a).await && becomes_ready(&http, &b).await);
    let (alice, bob) = (basic(&creds[0]), basic(&creds[1]));
    let started = start_job(&http, &a, &sim, &alice).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    let path = task_path(&started);
    // B knows it (from the shared tier), for Alice only.
    let at_b = http.get(&b.url(&path), &[("authorization", &alice)]).await;
    assert_eq!(at_b.status, StatusCode::OK, "{}", at_b.body);
    assert_eq!(at_b.json()["State"], "Running");
    let bob_at_b = http.get(&b.url(&path), &[("authorization", &bob)]).await;
    assert_eq!(bob_at_b.status, StatusCode::NOT_FOUND);
    // The replica that started and followed it dies.
    a.kill();
    let done = wait_finished(&http, &b, &path, &alice).await;
    assert_eq!(done["Result"]["Success"], true, "{done}");
    let list = http
        .get(&b.url("/api/tasks"), &[("authorization", &alice)])
        .await;
    assert!(list.body.contains(&path[11..]), "{}", list.body);

    // A record altered in Redis is refused, never served.
    let key = format!("{{emgate}}:t:{}", &path[11..]);
    let value = redis.cli(&["GET", &key]);
    let altered = value.trim().replacen("Finished", "Finishee", 1);
    assert_ne!(altered, value.trim());
    redis.cli(&["SET", &key, &altered]);
    let c = Gateway::start(&sim, &env);
    assert!(becomes_ready(&http, &c).await);
    let r = http.get(&c.url(&path), &[("authorization", &alice)]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let m = http.get(&c.url("/metrics"), &[]).await.body;
    assert!(
        m.lines()
            .any(|l| l.starts_with("emgate_shared_rejected_total{kind=\"task\"}")),
        "{m}"
    );

    // Redis stops. B followed the task and still answers it; C never knew
    // it, and not knowing is not "gone": 503, ask again, never a 404.
    redis.kill();
    let r = http.get(&b.url(&path), &[("authorization", &alice)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = http.get(&c.url(&path), &[("authorization", &alice)]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(r.header("retry-after"), "2");
    assert!(r.body.contains("send the request again"), "{}", r.body);
    // Nor is a list of what one replica knows the owner's list: 503 too,
    // as a list and as a query, on either replica.
    for gw in [&b, &c] {
        for list in ["/api/tasks", "/api/query?type=Task"] {
            let r = http.get(&gw.url(list), &[("authorization", &alice)]).await;
            assert_eq!(
                r.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{list}: {}",
                r.body
            );
            assert_eq!(r.header("retry-after"), "2");
        }
    }
    let r = http
        .send(Method::DELETE, &c.url(&path), &[("authorization", &alice)])
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    // Where it is known, a DELETE does nothing either while its shared
    // record cannot go first: the task is still there for its owner.
    let r = http
        .send(Method::DELETE, &b.url(&path), &[("authorization", &alice)])
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    let r = http.get(&b.url(&path), &[("authorization", &alice)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}
