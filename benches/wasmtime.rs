//! Wasmtime `call_async` with a new `Store` per call, by where the fiber
//! stacks come from (needs `--features wasmtime`):
//! `cargo bench --features wasmtime --bench wasmtime`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

#[allow(dead_code)]
#[path = "../examples/compare/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../examples/compare/wasm.rs"]
mod wasm;

fn call_async(c: &mut Criterion) {
    let mut g = c.benchmark_group("wasmtime_call_async_new_store");
    for mut case in wasm::cases() {
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
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = call_async
}
criterion_main!(benches);
