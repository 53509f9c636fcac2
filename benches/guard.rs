//! Per-call cost of the host-function guard in each mode, on the thread's
//! own stack: `Off` (a direct call), `Enforce` (one stack switch) and
//! `Measure` (paint the budget, switch, scan for the peak).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use stackswitch::guard::{GuardMode, StackGuard};

/// A typical small host function budget.
const BUDGET: usize = 16 << 10;

#[inline(never)]
fn host_function(x: u64) -> u64 {
    black_box(x).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn guard_modes(c: &mut Criterion) {
    let mut group = c.benchmark_group("guard");
    // The baseline `off` is compared with: the bare call.
    group.bench_function("direct", |b| b.iter(|| host_function(black_box(7))));
    for (label, mode) in [
        ("off", GuardMode::Off),
        ("enforce", GuardMode::Enforce),
        ("measure_16k", GuardMode::Measure),
    ] {
        let guard = StackGuard::new("bench", BUDGET).mode(mode);
        group.bench_function(label, |b| {
            b.iter(|| guard.run(|| host_function(black_box(7))).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, guard_modes);
criterion_main!(benches);
