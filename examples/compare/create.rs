//! Fiber create + first resume + finish + drop: the cost of a short-lived
//! fiber, by where its stack comes from. The fiber returns its input plus
//! one without suspending.

use std::hint::black_box;

use stackswitch::{Fiber, FiberResult, MmapStack, PoolConfig, StackPool, Suspender};

use super::harness::{Case, Op};

/// Stack size for every fiber here (what a pool would hand out).
pub const STACK: usize = 64 << 10;

/// The cases that exist in this build, as (key, table name); the first is
/// the baseline.
pub const CASES: &[(&str, &str)] = &[
    (
        "create-stackswitch-local",
        "stackswitch, pooled stack (StackPool::local)",
    ),
    (
        "create-stackswitch-pooled",
        "stackswitch, pooled stack (StackPool)",
    ),
    (
        "create-stackswitch-reused",
        "stackswitch, reused stack (into_stack)",
    ),
    ("create-stackswitch-fresh", "stackswitch, fresh MmapStack"),
    ("create-corosensei-reused", "corosensei, reused stack"),
    ("create-corosensei-fresh", "corosensei, fresh DefaultStack"),
    ("create-wasmtime-reused", "wasmtime-fiber, reused stack"),
    ("create-wasmtime-fresh", "wasmtime-fiber, fresh FiberStack"),
];

/// The operation "n fibers created, run and dropped" of one case.
pub fn op(key: &str) -> Option<Op> {
    Some(match key {
        "create-stackswitch-local" => stackswitch_local(),
        "create-stackswitch-pooled" => stackswitch_pooled(),
        "create-stackswitch-reused" => stackswitch_reused(),
        "create-stackswitch-fresh" => stackswitch_fresh(),
        "create-corosensei-reused" => corosensei_reused(),
        "create-corosensei-fresh" => corosensei_fresh(),
        "create-wasmtime-reused" => wasmtime_reused(),
        "create-wasmtime-fresh" => wasmtime_fresh(),
        _ => return None,
    })
}

pub fn cases() -> Vec<Case> {
    CASES
        .iter()
        .map(|(key, name)| Case::new(*name, op(key).expect("known case")))
        .collect()
}

#[inline(always)]
fn body(x: u64) -> u64 {
    x.wrapping_add(1)
}

/// Acquire from this thread's handle on a warm pool, run, drop (which
/// hands the stack back to that handle).
fn stackswitch_local() -> Op {
    let pool = StackPool::new(PoolConfig::default().stack_size(STACK).capacity(16)).expect("pool");
    let local = pool.local();
    Box::new(move |n| {
        for i in 0..n {
            let s = local.acquire().expect("pool stack");
            let mut f =
                Fiber::with_stack(s, |x: u64, _: &Suspender<u64, ()>| body(x)).expect("fiber");
            match f.resume(black_box(i)) {
                FiberResult::Return(r) => black_box(r),
                FiberResult::Yield(()) => unreachable!(),
            };
        }
    })
}

/// Acquire from a warm pool, run, drop (which hands the stack back).
fn stackswitch_pooled() -> Op {
    let pool = StackPool::new(PoolConfig::default().stack_size(STACK).capacity(16)).expect("pool");
    Box::new(move |n| {
        for i in 0..n {
            let s = pool.acquire().expect("pool stack");
            let mut f =
                Fiber::with_stack(s, |x: u64, _: &Suspender<u64, ()>| body(x)).expect("fiber");
            match f.resume(black_box(i)) {
                FiberResult::Return(r) => black_box(r),
                FiberResult::Yield(()) => unreachable!(),
            };
        }
    })
}

fn stackswitch_reused() -> Op {
    let mut stack = Some(MmapStack::new(STACK).expect("stack"));
    Box::new(move |n| {
        for i in 0..n {
            let s = stack.take().expect("stack returned");
            let mut f =
                Fiber::with_stack(s, |x: u64, _: &Suspender<u64, ()>| body(x)).expect("fiber");
            match f.resume(black_box(i)) {
                FiberResult::Return(r) => black_box(r),
                FiberResult::Yield(()) => unreachable!(),
            };
            stack = f.into_stack();
        }
    })
}

fn stackswitch_fresh() -> Op {
    Box::new(move |n| {
        for i in 0..n {
            let mut f = Fiber::new(STACK, |x: u64, _: &Suspender<u64, ()>| body(x)).expect("fiber");
            match f.resume(black_box(i)) {
                FiberResult::Return(r) => black_box(r),
                FiberResult::Yield(()) => unreachable!(),
            };
        }
    })
}

fn corosensei_reused() -> Op {
    use corosensei::stack::DefaultStack;
    use corosensei::{Coroutine, CoroutineResult, Yielder};
    let mut stack = Some(DefaultStack::new(STACK).expect("stack"));
    Box::new(move |n| {
        for i in 0..n {
            let s = stack.take().expect("stack returned");
            let mut co = Coroutine::with_stack(s, |_: &Yielder<u64, ()>, x: u64| body(x));
            match co.resume(black_box(i)) {
                CoroutineResult::Return(r) => black_box(r),
                CoroutineResult::Yield(()) => unreachable!(),
            };
            stack = Some(co.into_stack());
        }
    })
}

fn corosensei_fresh() -> Op {
    use corosensei::stack::DefaultStack;
    use corosensei::{Coroutine, CoroutineResult, Yielder};
    Box::new(move |n| {
        for i in 0..n {
            let s = DefaultStack::new(STACK).expect("stack");
            let mut co = Coroutine::with_stack(s, |_: &Yielder<u64, ()>, x: u64| body(x));
            match co.resume(black_box(i)) {
                CoroutineResult::Return(r) => black_box(r),
                CoroutineResult::Yield(()) => unreachable!(),
            };
        }
    })
}

fn wasmtime_reused() -> Op {
    use wasmtime_internal_fiber::{Fiber, FiberStack, Suspend};
    let mut stack = Some(FiberStack::new(STACK, false).expect("stack"));
    Box::new(move |n| {
        for i in 0..n {
            let s = stack.take().expect("stack returned");
            let f = Fiber::new(s, |x: u64, _: &mut Suspend<u64, (), u64>| body(x))
                .map_err(|(e, _)| e)
                .expect("fiber");
            black_box(f.resume(black_box(i)).ok());
            stack = Some(f.into_stack());
        }
    })
}

fn wasmtime_fresh() -> Op {
    use wasmtime_internal_fiber::{Fiber, FiberStack, Suspend};
    Box::new(move |n| {
        for i in 0..n {
            let s = FiberStack::new(STACK, false).expect("stack");
            let f = Fiber::new(s, |x: u64, _: &mut Suspend<u64, (), u64>| body(x))
                .map_err(|(e, _)| e)
                .expect("fiber");
            black_box(f.resume(black_box(i)).ok());
        }
    })
}
