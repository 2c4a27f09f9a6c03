//! One policy evaluation (peers, routes and failover, marshalling in and
//! out included) of the built-in `full-mesh` component, at 10 and 1,000
//! members, beside the same policy compiled natively, and a policy that
//! ignores its view (so the cost of passing the view shows on its own).
//!
//! `cargo bench -p meshgate --bench policy`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use meshgate::policy::{builtin, Limits, PolicyEngine};
use meshgate_policies::FullMesh;
use meshgate_sdk::testing::ViewBuilder;
use meshgate_sdk::{Policy, Role, View};

fn view(n: usize) -> View {
    let mut b = ViewBuilder::new();
    for i in 0..n {
        let prefix = format!("10.{}.{}.0/24", i / 256, i % 256);
        b = b
            .member(
                &format!("gw-{i}"),
                &format!("region-{}", i % 20),
                Role::Edge,
                &[&prefix],
            )
            .endpoint("internet", &format!("192.0.2.{}:4500", i % 250 + 1));
    }
    b.local("gw-0").now_ms(1_000_000).build()
}

fn evaluate(c: &mut Criterion) {
    let engine = PolicyEngine::new(Limits::default()).expect("engine");
    let mut module = engine
        .load("full-mesh", builtin("full-mesh").expect("embedded"))
        .expect("loads");
    let mut group = c.benchmark_group("evaluate");
    group.measurement_time(Duration::from_secs(3));
    for n in [10, 1000] {
        let v = view(n);
        group.bench_with_input(BenchmarkId::new("wasm", n), &v, |b, v| {
            b.iter(|| module.evaluate(black_box(v)).expect("evaluates"))
        });
        group.bench_with_input(BenchmarkId::new("native", n), &v, |b, v| {
            b.iter(|| {
                (
                    FullMesh::peers(black_box(v)),
                    FullMesh::routes(black_box(v)),
                    FullMesh::failover(black_box(v)),
                )
            })
        });
    }
    // A policy that ignores the view (the misbehaving test module that
    // returns two fixed decisions): what marshalling the view costs alone.
    let bytes =
        std::fs::read(concat!(env!("OUT_DIR"), "/test-invalid.wasm")).expect("built by build.rs");
    let mut fixed = engine.load("fixed-answer", &bytes).expect("loads");
    for n in [10, 1000] {
        let v = view(n);
        group.bench_with_input(BenchmarkId::new("wasm-view-only", n), &v, |b, v| {
            b.iter(|| fixed.evaluate(black_box(v)).expect("evaluates"))
        });
    }
    group.finish();
}

/// The policy's view rebuilt from membership (done on every membership or
/// health change), at 10 and 1,000 members.
fn view_from_membership(c: &mut Criterion) {
    use meshgate::membership::info::MemberInfo;
    use meshgate::membership::Observed;
    let record = |i: usize| MemberInfo {
        id: format!("gw-{i}"),
        version: 1,
        region: format!("region-{}", i % 20),
        zone: format!("region-{}a", i % 20),
        account: "123456789012".into(),
        role: "edge".into(),
        group: None,
        prefixes: vec![(
            std::net::IpAddr::from([10, (i / 256) as u8, (i % 256) as u8, 0]),
            24,
        )],
        endpoints: vec![(
            "internet".into(),
            std::net::SocketAddr::from(([192, 0, 2, (i % 250 + 1) as u8], 4500)),
        )],
        policy_version: 1,
        epoch: 1,
        ..Default::default()
    };
    let now = std::time::Instant::now();
    let mut group = c.benchmark_group("view_from_membership");
    group.measurement_time(Duration::from_secs(3));
    for n in [10, 1000] {
        let observed: Vec<Observed> = (1..n)
            .map(|i| Observed {
                info: record(i),
                state: foca::State::Alive,
                rtt: Some(Duration::from_millis(80)),
                loss: 0.01,
                since: now,
                beat_gap: None,
            })
            .collect();
        let local = record(0);
        group.bench_with_input(BenchmarkId::from_parameter(n), &observed, |b, o| {
            b.iter(|| {
                meshgate::policy::view::from_observed(&local, black_box(o), &[], now, 1_000_000)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, evaluate, view_from_membership);
criterion_main!(benches);
