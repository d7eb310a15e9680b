//! The cache hit path: lookup plus response body, in ns per hit, side by
//! side with what a request costs without the cache once EM has answered
//! (converting EM's XML for the client).
//!
//! Run: `cargo bench --bench cache_hit`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use emgate::cache::{Fetched, Options, Policy};
use emgate::config::JsonCase;
use emgate::em::client::UpstreamResponse;
use emgate::gateway::error::GatewayError;
use emgate::gateway::render::{self, Prepared};
use emgate::gateway::restore_points::{Form, Key, RestorePointId, VmPointsCache};
use http::{HeaderMap, StatusCode};

const EM: &str = "https://em.example.local:9398";

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
    let policy = Policy {
        rule: 0,
        ttl: Duration::from_secs(3600),
        stale_while_revalidate: Duration::from_secs(60),
        stale_if_error: Duration::from_secs(3600),
        negative_ttl: Duration::from_secs(30),
    };
    let cache = VmPointsCache::new(options, 1);
    let em = UpstreamResponse {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: em_xml(),
        elapsed: Duration::ZERO,
        held: Default::default(),
    };
    let key = Key {
        id: RestorePointId::parse("dc216c04-2e34-478e-8b9b-49a3397ef6f8").unwrap(),
        form: Form::References,
    };
    let prepared = Prepared::from_em(&em, EM, JsonCase::Pascal).unwrap();
    rt.block_on(async {
        let p = prepared.clone();
        cache
            .get(key, &policy, move || async move {
                Ok::<_, GatewayError>(Fetched::fresh(p))
            })
            .await
            .unwrap();
    });
    let never =
        || async { Err::<Fetched<Prepared>, _>(GatewayError::Internal("fetched on a hit")) };

    let mut group = c.benchmark_group("vm_restore_points");
    group.bench_function("cache_hit_json", |b| {
        b.to_async(&rt).iter(|| async {
            let entry = cache
                .get(black_box(key), &policy, never)
                .await
                .unwrap()
                .entry;
            black_box(entry.value.body_for(false, "http://127.0.0.1:9399"))
        })
    });
    group.bench_function("cache_hit_xml", |b| {
        b.to_async(&rt).iter(|| async {
            let entry = cache
                .get(black_box(key), &policy, never)
                .await
                .unwrap()
                .entry;
            black_box(entry.value.body_for(true, "http://127.0.0.1:9399"))
        })
    });
    group.bench_function("no_cache_convert_json", |b| {
        b.iter(|| {
            let em = UpstreamResponse {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: black_box(em.body.clone()),
                elapsed: Duration::ZERO,
                held: Default::default(),
            };
            black_box(
                render::render(em, EM, "http://127.0.0.1:9399", false, JsonCase::Pascal).unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
