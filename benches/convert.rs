//! XML → JSON throughput: emgate's converter against a generic one on the
//! same input, in the same run. The generic one does what generic
//! converters such as quickxml_to_serde do (a tree of `serde_json::Value`
//! built from the XML events, attributes as `@name`, repeated children as
//! arrays, then serialised), written here on the quick-xml the crate already
//! uses: quickxml_to_serde itself pulls a 2019 quick-xml (0.17) that every
//! build warns about.
//!
//! Inputs are generated: a multi-MB `VmRestorePoints` entity list (thousands
//! of entities shaped like EM's `?format=Entity` answers), and a typical
//! `EntityReferences` answer for one restore point (1–8 VMs; 4 here).
//!
//! Run: `cargo bench --bench convert`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use emgate::convert::{to_json, Case, Rewrite};

const EM: &str = "https://enterprise04.tech.local:9398";
const GW: &str = "http://127.0.0.1:9399";

/// A deterministic UUID-looking id for entity `i`.
fn id(i: usize, salt: u64) -> String {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    let mut hex = String::with_capacity(32);
    for _ in 0..2 {
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        hex.push_str(&format!("{x:016x}"));
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn vm_restore_point(i: usize) -> String {
    let rp = id(i, 1);
    let vm = format!("vm{:04}", i % 977);
    let server = id(i % 3, 2);
    let point = id(i / 8, 3);
    let file = id(i / 8, 4);
    let when = format!("2025-10-{:02} {:02}:{:02}:07", 1 + i % 28, i % 24, i % 60);
    format!(
        r#"    <VmRestorePoint Href="{EM}/api/vmRestorePoints/{rp}?format=Entity" Type="VmRestorePoint" Name="{vm}@{when}" UID="urn:veeam:VmRestorePoint:{rp}" VmDisplayName="{vm}">
        <Links>
            <Link Href="{EM}/api/vmRestorePoints/{rp}?action=restore" Rel="Restore" />
            <Link Href="{EM}/api/backupServers/{server}" Name="enterprise01.tech.local" Type="BackupServerReference" Rel="Up" />
            <Link Href="{EM}/api/restorePoints/{point}" Name="Oct 20 2025  8:00PM" Type="RestorePointReference" Rel="Up" />
            <Link Href="{EM}/api/backupFiles/{file}" Name="Backup Job 3D2025-10-20T220020_159E.vib" Type="BackupFileReference" Rel="Up" />
            <Link Href="{EM}/api/vmRestorePoints/{rp}" Name="{vm}@{when}" Type="VmRestorePointReference" Rel="Alternate" />
            <Link Href="{EM}/api/vmRestorePoints/{rp}/mounts" Type="VmRestorePointMountList" Rel="Down" />
            <Link Href="{EM}/api/vmRestorePoints/{rp}/mounts" Type="VmRestorePointMount" Rel="Create" />
        </Links>
        <CreationTimeUTC>2025-10-20T20:04:07.267Z</CreationTimeUTC>
        <VmName>{vm}</VmName>
        <Algorithm>Incremental</Algorithm>
        <PointType>Increment</PointType>
        <HierarchyObjRef>urn:VMware:Vm:d68c782f-ec0a-4bf3-b3c1-04c552b64fdf.vm-{i}</HierarchyObjRef>
    </VmRestorePoint>
"#
    )
}

/// A `VmRestorePoints` document of at least `min_bytes`.
fn vm_restore_points(min_bytes: usize) -> Vec<u8> {
    let mut s = String::from(
        "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<VmRestorePoints xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns=\"http://www.veeam.com/ent/v1.0\">\n",
    );
    let mut i = 0;
    while s.len() < min_bytes {
        s.push_str(&vm_restore_point(i));
        i += 1;
    }
    s.push_str("</VmRestorePoints>\n");
    s.into_bytes()
}

/// `GET /restorePoints/{id}/vmRestorePoints`: references to `n` VMs' points.
fn entity_references(n: usize) -> Vec<u8> {
    let mut s = String::from("<EntityReferences xmlns=\"http://www.veeam.com/ent/v1.0\">\n");
    for i in 0..n {
        let rp = id(i, 5);
        let vm = format!("oracle{i:02}");
        s.push_str(&format!(
            r#"  <Ref Type="VmRestorePointReference" Href="{EM}/api/vmRestorePoints/{rp}" Name="{vm}@2025-10-06 13:59:50" UID="urn:veeam:VmRestorePoint:{rp}">
    <Links>
      <Link Rel="Up" Type="BackupServerReference" Href="{EM}/api/backupServers/00fd67d9-2b4c-4c56-8a95-0b3dbec7ae43" Name="172.17.53.1" />
      <Link Rel="Up" Type="RestorePointReference" Href="{EM}/api/restorePoints/dc216c04-2e34-478e-8b9b-49a3397ef6f8" Name="Oct  6 2025  1:59PM" />
      <Link Rel="Up" Type="BackupFileReference" Href="{EM}/api/backupFiles/e86f61f9-4220-4f55-820b-e41a38abce90" Name="Oracle BackupD2025-10-06T165918.vib" />
      <Link Rel="Alternate" Type="VmRestorePoint" Href="{EM}/api/vmRestorePoints/{rp}?format=Entity" Name="{vm}@2025-10-06 13:59:50" />
    </Links>
  </Ref>
"#
        ));
    }
    s.push_str("</EntityReferences>\n");
    s.into_bytes()
}

fn ours(xml: &[u8], case: Case, rewrite: Option<&Rewrite<'_>>, out: &mut Vec<u8>) {
    out.clear();
    if let Err(e) = to_json(xml, case, rewrite, out) {
        panic!("emgate conversion failed: {e}");
    }
}

/// The generic converter, bytes in and bytes out like ours: a
/// `serde_json::Value` tree from the XML events, then serialised.
fn generic(xml: &[u8], out: &mut Vec<u8>) {
    use quick_xml::events::Event;
    use serde_json::{Map, Value};
    out.clear();
    let xml = xml.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(xml);
    let mut reader = quick_xml::Reader::from_reader(xml);
    // Open elements: name and object so far.
    let mut stack: Vec<(String, Map<String, Value>)> = vec![(String::new(), Map::new())];
    let mut buf = Vec::new();
    let open = |e: &quick_xml::events::BytesStart<'_>| {
        let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
        let mut obj = Map::new();
        for a in e.attributes().flatten() {
            let key = format!("@{}", String::from_utf8_lossy(a.key.local_name().as_ref()));
            let v = a
                .unescape_value()
                .map(|v| v.into_owned())
                .unwrap_or_default();
            obj.insert(key, Value::String(v));
        }
        (name, obj)
    };
    let close = |stack: &mut Vec<(String, Map<String, Value>)>| {
        let (name, obj) = stack.pop().unwrap_or_default();
        let value = match obj.len() {
            1 if obj.contains_key("#text") => obj.get("#text").cloned().unwrap_or(Value::Null),
            _ => Value::Object(obj),
        };
        if let Some((_, parent)) = stack.last_mut() {
            match parent.get_mut(&name) {
                Some(Value::Array(items)) => items.push(value),
                Some(one) => {
                    let first = one.take();
                    *one = Value::Array(vec![first, value]);
                }
                None => {
                    parent.insert(name, value);
                }
            }
        }
    };
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => stack.push(open(&e)),
            Ok(Event::Empty(e)) => {
                stack.push(open(&e));
                close(&mut stack);
            }
            Ok(Event::End(_)) => close(&mut stack),
            Ok(Event::Text(t)) => {
                let text = t.unescape().map(|t| t.into_owned()).unwrap_or_default();
                if !text.trim().is_empty() {
                    if let Some((_, obj)) = stack.last_mut() {
                        obj.insert("#text".into(), Value::String(text));
                    }
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("generic conversion failed: {e}"),
        }
        buf.clear();
    }
    let root = stack
        .pop()
        .map(|(_, o)| Value::Object(o))
        .unwrap_or(Value::Null);
    if let Err(e) = serde_json::to_writer(&mut *out, &root) {
        panic!("generic serialisation failed: {e}");
    }
}

fn bench(c: &mut Criterion) {
    let rw = Rewrite { from: EM, to: GW };
    let inputs = [
        ("vmRestorePoints_5MiB", vm_restore_points(5 << 20)),
        ("entityReferences_4vms", entity_references(4)),
    ];
    for (name, xml) in &inputs {
        let mut group = c.benchmark_group(*name);
        group.throughput(Throughput::Bytes(xml.len() as u64));
        if xml.len() > 1 << 20 {
            group.sample_size(30);
        }
        let mut out = Vec::with_capacity(xml.len() * 2);
        group.bench_function(BenchmarkId::new("emgate", "pascal+rewrite"), |b| {
            b.iter(|| ours(black_box(xml), Case::Pascal, Some(&rw), &mut out));
        });
        group.bench_function(BenchmarkId::new("emgate", "camel+rewrite"), |b| {
            b.iter(|| ours(black_box(xml), Case::Camel, Some(&rw), &mut out));
        });
        group.bench_function(BenchmarkId::new("emgate", "pascal"), |b| {
            b.iter(|| ours(black_box(xml), Case::Pascal, None, &mut out));
        });
        group.bench_function(BenchmarkId::new("generic", "value-tree"), |b| {
            b.iter(|| generic(black_box(xml), &mut out));
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
