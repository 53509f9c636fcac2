//! Resume + suspend round trips, stackswitch against the other fiber crates
//! in one criterion group, and fiber create + run + drop on a reused stack.
//!
//! The loops are the ones `examples/compare` runs (its modules are included
//! here), timed by criterion: `cargo bench --bench switch`, plots in
//! `target/criterion/`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

#[allow(dead_code)]
#[path = "../examples/compare/create.rs"]
mod create;
#[allow(dead_code)]
#[path = "../examples/compare/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../examples/compare/switch.rs"]
mod switch;

/// Benchmarks `op` (n operations per call) under `name`.
fn bench_op(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut op: harness::Op,
) {
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            op(iters);
            start.elapsed()
        })
    });
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip");
    // This machine (a 2-core KVM guest) runs switch loops ~1.5x slower for
    // the first second or two of a busy spell, whatever the crate: warm up
    // past that, or the first case measured pays for it.
    g.warm_up_time(Duration::from_secs(3));
    // The OS-thread ping-pong is in examples/compare; at ~10 µs it would
    // only squash this group's plot.
    for case in [
        "stackswitch",
        "corosensei",
        "wasmtime-fiber",
        "context",
        "swapcontext",
    ] {
        bench_op(&mut g, case, switch::op(case).expect("known case"));
    }
    g.finish();
}

fn create_reused(c: &mut Criterion) {
    let mut g = c.benchmark_group("create_run_drop_reused_stack");
    for (key, name) in [
        ("create-stackswitch-reused", "stackswitch"),
        ("create-corosensei-reused", "corosensei"),
        ("create-wasmtime-reused", "wasmtime-fiber"),
    ] {
        bench_op(&mut g, name, create::op(key).expect("known case"));
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = round_trip, create_reused
}
criterion_main!(benches);
