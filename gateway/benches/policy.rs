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

criterion_group!(benches, evaluate);
criterion_main!(benches);
