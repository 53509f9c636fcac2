//! The host-function guard's cost per call, by mode: the guarded closure
//! adds one to a number. The realistic place is a fiber on a pool stack (a
//! Wasmtime host function); the thread's own stack is shown for Enforce.

use std::hint::black_box;

use stackswitch::{
    Fiber, FiberResult, GuardMode, PoolConfig, PooledStack, StackGuard, StackPool, Suspender,
};

use super::harness::{Case, Op};

/// The budget every guarded call gets.
pub const BUDGET: usize = 16 << 10;

pub const OFF: &str = "Off, in a fiber on a pool stack";
pub const ENFORCE: &str = "Enforce, in a fiber on a pool stack";
pub const MEASURE: &str = "Measure, in a fiber on a pool stack";
pub const ENFORCE_THREAD: &str = "Enforce, on the thread's own stack";

/// `n` guarded calls in `mode` on the current stack.
#[inline(always)]
fn calls(guard: &StackGuard, n: u64) {
    for i in 0..n {
        let r = guard
            .run(|| black_box(i).wrapping_add(1))
            .expect("guarded call");
        black_box(r);
    }
}

/// A fiber on a pool stack that makes `n` guarded calls per resume.
fn in_fiber(mode: GuardMode) -> Op {
    let pool =
        StackPool::new(PoolConfig::default().stack_size(256 << 10).capacity(4)).expect("pool");
    let guard = StackGuard::new("compare", BUDGET).mode(mode);
    let mut fiber: Fiber<u64, (), (), PooledStack> = Fiber::with_stack(
        pool.acquire().expect("pool stack"),
        move |mut n: u64, s: &Suspender<u64, ()>| {
            while n != u64::MAX {
                calls(&guard, n);
                n = s.suspend(());
            }
        },
    )
    .expect("fiber");
    Box::new(move |n| {
        let _keep = &pool;
        assert!(matches!(fiber.resume(n), FiberResult::Yield(())));
    })
}

fn on_thread(mode: GuardMode) -> Op {
    let guard = StackGuard::new("compare", BUDGET).mode(mode);
    Box::new(move |n| calls(&guard, n))
}

/// The cases as (key for `--callgrind`, table name).
pub const CASES: &[(&str, &str)] = &[
    ("guard-off", OFF),
    ("guard-enforce", ENFORCE),
    ("guard-measure", MEASURE),
    ("guard-enforce-thread", ENFORCE_THREAD),
];

/// The operation "n guarded calls" of one case.
pub fn op(key: &str) -> Option<Op> {
    Some(match key {
        "guard-off" => in_fiber(GuardMode::Off),
        "guard-enforce" => in_fiber(GuardMode::Enforce),
        "guard-measure" => in_fiber(GuardMode::Measure),
        "guard-enforce-thread" => on_thread(GuardMode::Enforce),
        _ => return None,
    })
}

pub fn cases() -> Vec<Case> {
    CASES
        .iter()
        .map(|(key, name)| Case::new(*name, op(key).expect("known case")))
        .collect()
}
