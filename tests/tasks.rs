//! Restore portals and automation start jobs through the gateway and follow
//! the task EM answers with. EM keeps tasks per logon session; the gateway,
//! with one pooled session for everybody, keeps them per client.

mod common;

use std::time::Duration;

use common::*;
use emgate::sim::{Fault, FaultTarget, Sim, SimConfig};
use http::{Method, StatusCode};

fn config() -> SimConfig {
    SimConfig {
        task_duration: Duration::from_millis(1500),
        ..sim_config()
    }
}

/// A gateway with writes on and two clients, Alice and Bob.
async fn portal(sim: &Sim, extra: &[(&str, &str)]) -> (Gateway, Http, [(String, String); 2]) {
    let (file, creds) = clients_file(&format!("tasks-{}", sim.addr().port()), 2);
    let mut env = vec![
        ("EMGATE_CLIENTS_FILE", file.as_str()),
        ("EMGATE_ALLOW_WRITES", "true"),
    ];
    env.extend_from_slice(extra);
    let gw = Gateway::start(sim, &env);
    let http = Http::default();
    assert!(becomes_ready(&http, &gw).await);
    let basic = |(name, secret): &(String, String)| {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{name}:{secret}"));
        (name.clone(), format!("Basic {b64}"))
    };
    (gw, http, [basic(&creds[0]), basic(&creds[1])])
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
