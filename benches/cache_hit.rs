//! The cache hit path: lookup plus response body, in ns per hit, side by
//! side with what a request costs without the cache once EM has answered
//! (converting EM's XML for the client), and a hit whose target was seen
//! before.
//!
//! Run: `cargo bench --bench cache_hit`.

mod support;

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use emgate::cache::{Fetched, Options};
use emgate::config::JsonCase;
use emgate::em::client::UpstreamResponse;
use emgate::gateway::error::GatewayError;
use emgate::gateway::reads::{cache_key, ReadCache, Rules};
use emgate::gateway::render::{self, Prepared};
use emgate::gateway::target::Target;
use http::{HeaderMap, StatusCode};

const EM: &str = "https://em.example.local:9398";
const PATH: &str = "/api/restorePoints/dc216c04-2e34-478e-8b9b-49a3397ef6f8/vmRestorePoints";

/// A typical answer: the references of a restore point with 4 VMs (about 3.5 KB).
fn em_xml() -> Bytes {
    let mut xml = String::from("<EntityReferences xmlns=\"http://www.veeam.com/ent/v1.0\">");
    for i in 0..4 {
        let id = format!("5acac742-ee17-4080-8e89-a6ea67adfc{i:02}");
        xml.push_str(&format!(
            "<Ref Type=\"VmRestorePointReference\" Href=\"{EM}/api/vmRestorePoints/{id}\" Name=\"oracle0{i}@2025-10-06 13:59:50\" UID=\"urn:veeam:VmRestorePoint:{id}\"><Links>\
             <Link Rel=\"Up\" Type=\"BackupServerReference\" Href=\"{EM}/api/backupServers/00fd67d9-2b4c-4c56-8a95-0b3dbec7ae43\" Name=\"172.17.53.1\"/>\
             <Link Rel=\"Up\" Type=\"RestorePointReference\" Href=\"{EM}/api/restorePoints/dc216c04-2e34-478e-8b9b-49a3397ef6f8\" Name=\"Oct  6 2025  1:59PM\"/>\
             <Link Rel=\"Up\" Type=\"BackupFileReference\" Href=\"{EM}/api/backupFiles/e86f61f9-4220-4f55-820b-e41a38abce90\" Name=\"Oracle BackupD2025-10-06T165918.vib\"/>\
             <Link Rel=\"Alternate\" Type=\"VmRestorePoint\" Href=\"{EM}/api/vmRestorePoints/{id}?format=Entity\" Name=\"oracle0{i}@2025-10-06 13:59:50\"/>\
             </Links></Ref>"
        ));
    }
    xml.push_str("</EntityReferences>");
    Bytes::from(xml)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let options = Options {
        max_bytes: 256 << 20,
        max_entry_bytes: 32 << 20,
        stale_wait: Duration::from_secs(2),
        refresh_ahead: true,
        failed_memory: Duration::from_secs(5),
    };
    let settings = support::settings(&[
        ("EMGATE_UPSTREAM_URL", EM),
        ("EMGATE_UPSTREAM_USERNAME", "u"),
        ("EMGATE_UPSTREAM_PASSWORD", "p"),
        ("EMGATE_CACHE_TTL", "1h"),
    ]);
    let rules = std::sync::Arc::new(Rules::new(&settings.cache));
    let cache = ReadCache::new(options, rules.all().len());
    let em = UpstreamResponse {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: em_xml(),
        elapsed: Duration::ZERO,
        held: Default::default(),
    };
    let target = Target::parse(PATH, None).unwrap();
    let rule = rules.find(&target).unwrap();
    let policy = rule.policy.clone();
    let key = cache_key(&target, Some(rule), false);
    let prepared = Prepared::from_em(&em, EM, JsonCase::Pascal).unwrap();
    rt.block_on(async {
        let p = prepared.clone();
        cache
            .get(&key, &policy, std::time::Instant::now(), move |_| {
                move || async move { Ok::<_, GatewayError>(Fetched::fresh(p)) }
            })
            .await
            .unwrap();
    });
    let never =
        || async { Err::<Fetched<Prepared>, _>(GatewayError::Internal("fetched on a hit")) };

    // When the requests were taken up: the router reads the clock at the
    // edge (for the request's duration) and the cache counts ages to it.
    let taken_up = std::time::Instant::now();
    // A hit as a request pays for it: the target parsed, the rule found,
    // the key built, the entry looked up, the representation rendered.
    let hit = |xml: bool| {
        let t = Target::parse(black_box(PATH), None).unwrap();
        let rule = rules.find(&t).unwrap();
        let key = cache_key(&t, Some(rule), false);
        let cache = &cache;
        let policy = &rule.policy;
        async move {
            let entry = (cache.get(&key, policy, taken_up, |_| never).await)
                .unwrap()
                .entry;
            black_box(entry.value.representation(xml, "http://127.0.0.1:9399"))
        }
    };
    // The same with a target seen before: what a dashboard repeating its
    // requests pays (the parse, rule and key are remembered per thread).
    let seen = || {
        let resolved = rules.resolve(black_box(PATH), None).unwrap();
        let cache = &cache;
        async move {
            let rule = resolved.rule().unwrap();
            let key = resolved.key(false);
            let entry = cache
                .get(&key, &rule.policy, taken_up, |_| never)
                .await
                .unwrap()
                .entry;
            black_box(entry.value.representation(false, "http://127.0.0.1:9399"))
        }
    };
    let mut group = c.benchmark_group("vm_restore_points");
    group.bench_function("cache_hit_json", |b| b.to_async(&rt).iter(|| hit(false)));
    group.bench_function("cache_hit_json_seen_target", |b| b.to_async(&rt).iter(seen));
    group.bench_function("cache_hit_xml", |b| b.to_async(&rt).iter(|| hit(true)));
    let to = render::Representation {
        xml: false,
        case: JsonCase::Pascal,
        public: "http://127.0.0.1:9399".into(),
    };
    group.bench_function("no_cache_convert_json", |b| {
        b.iter(|| {
            let em = UpstreamResponse {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: black_box(em.body.clone()),
                elapsed: Duration::ZERO,
                held: Default::default(),
            };
            black_box(render::render(em, EM, &to).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
