//! The host-function guard's cost per call in each mode (Off, Enforce,
//! Measure), in a fiber on a pool stack and on the thread's own stack.
//! The loops are the ones `examples/compare` runs: `cargo bench --bench guard`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

#[allow(dead_code)]
#[path = "../examples/compare/guard.rs"]
mod guard;
#[allow(dead_code)]
#[path = "../examples/compare/harness.rs"]
mod harness;

fn guard_modes(c: &mut Criterion) {
    let mut g = c.benchmark_group("guard_per_call");
    for mut case in guard::cases() {
        g.bench_function(&case.name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                (case.op)(iters);
                start.elapsed()
            })
        });
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
    targets = guard_modes
}
criterion_main!(benches);
