//! Fiber create + first resume + finish + drop, by where the stack comes
//! from: a pool (through a thread's `LocalPool` handle and a shared
//! `StackPool` one), reused (`into_stack`), a fresh mmap;
//! stackswitch, corosensei and Wasmtime's fiber.
//!
//! The loops are the ones `examples/compare` runs: `cargo bench --bench
//! create`, plots in `target/criterion/`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

#[allow(dead_code)]
#[path = "../examples/compare/create.rs"]
mod create;
#[allow(dead_code)]
#[path = "../examples/compare/harness.rs"]
mod harness;

fn create_run_drop(c: &mut Criterion) {
    let mut g = c.benchmark_group("create_run_drop");
    for (key, _) in create::CASES {
        let mut op = create::op(key).expect("known case");
        let name = key.trim_start_matches("create-");
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                op(iters);
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
    targets = create_run_drop
}
criterion_main!(benches);
