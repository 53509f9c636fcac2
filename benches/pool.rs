//! The pool against fresh stacks, side by side:
//! - `fiber_create_run_drop`: a fiber made on a warm pooled stack, run to
//!   completion and dropped (stack back to the pool), against the same on
//!   a fresh `MmapStack` (mmap + guard + munmap each time), and corosensei
//!   reusing one stack for reference;
//! - `wasmtime_new_store_call` (feature `wasmtime`): a new `Store`,
//!   `instantiate_async` and `call_async` per iteration, with our pool as
//!   the stack creator against Wasmtime's default stacks;
//! - `wasmtime_new_store_call_zeroed`: the same with
//!   `async_stack_zeroing(true)` both ways.
//!
//! `cargo bench --bench pool --features wasmtime -- --quick`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use stackswitch::{Fiber, MmapStack, PoolConfig, StackPool, Suspender};

const FIBER_STACK: usize = 64 << 10;

fn fiber_create_run_drop(c: &mut Criterion) {
    let mut g = c.benchmark_group("fiber_create_run_drop");
    let pool = StackPool::new(PoolConfig::default().stack_size(FIBER_STACK).capacity(16)).unwrap();
    g.bench_function("pooled", |b| {
        b.iter(|| {
            let stack = pool.acquire().unwrap();
            let mut fiber =
                Fiber::with_stack(stack, |x: u64, _: &Suspender<u64, ()>| x + 1).unwrap();
            black_box(fiber.resume(black_box(1)));
        })
    });
    g.bench_function("fresh_mmap", |b| {
        b.iter(|| {
            let stack = MmapStack::new(FIBER_STACK).unwrap();
            let mut fiber =
                Fiber::with_stack(stack, |x: u64, _: &Suspender<u64, ()>| x + 1).unwrap();
            black_box(fiber.resume(black_box(1)));
        })
    });
    g.bench_function("corosensei_reused_stack", |b| {
        use corosensei::stack::DefaultStack;
        use corosensei::{Coroutine, Yielder};
        let mut stack = Some(DefaultStack::new(FIBER_STACK).unwrap());
        b.iter(|| {
            let mut co =
                Coroutine::with_stack(stack.take().unwrap(), |_: &Yielder<u64, ()>, x: u64| x + 1);
            black_box(co.resume(black_box(1)));
            stack = Some(co.into_stack());
        })
    });
    g.finish();
}

#[cfg(feature = "wasmtime")]
mod wasm {
    use super::*;
    use futures::executor::block_on;
    use wasmtime::{Caller, Config, Engine, Linker, Module, Store};

    const STACK: usize = 1 << 20;
    const WAT: &str = r#"
    (module
      (import "host" "f" (func $f (param i32) (result i32)))
      (func (export "run") (param i32) (result i32) local.get 0 call $f))
    "#;

    struct Setup {
        engine: Engine,
        module: Module,
        linker: Linker<()>,
    }

    fn setup(pool: Option<&StackPool>, zeroing: bool) -> Setup {
        let mut config = Config::new();
        config.async_stack_size(STACK);
        config.max_wasm_stack(512 << 10);
        config.async_stack_zeroing(zeroing);
        if let Some(pool) = pool {
            config.with_host_stack(pool.stack_creator());
        }
        let engine = Engine::new(&config).unwrap();
        let module = Module::new(&engine, WAT).unwrap();
        let mut linker = Linker::new(&engine);
        linker
            .func_wrap("host", "f", |_: Caller<'_, ()>, x: i32| x + 1)
            .unwrap();
        Setup {
            engine,
            module,
            linker,
        }
    }

    fn call(s: &Setup) -> i32 {
        block_on(async {
            let mut store = Store::new(&s.engine, ());
            let instance = s.linker.instantiate_async(&mut store, &s.module).await?;
            let run = instance.get_typed_func::<i32, i32>(&mut store, "run")?;
            run.call_async(&mut store, black_box(41)).await
        })
        .unwrap()
    }

    fn group(c: &mut Criterion, name: &str, zeroing: bool) {
        let mut g = c.benchmark_group(name);
        let pool = StackPool::new(PoolConfig::default().stack_size(STACK).capacity(64)).unwrap();
        let ours = setup(Some(&pool), zeroing);
        g.bench_function("stackswitch_pool", |b| b.iter(|| black_box(call(&ours))));
        let theirs = setup(None, zeroing);
        g.bench_function("wasmtime_default", |b| b.iter(|| black_box(call(&theirs))));
        g.finish();
    }

    pub fn new_store_call(c: &mut Criterion) {
        group(c, "wasmtime_new_store_call", false);
    }

    pub fn new_store_call_zeroed(c: &mut Criterion) {
        group(c, "wasmtime_new_store_call_zeroed", true);
    }
}

#[cfg(feature = "wasmtime")]
criterion_group!(
    benches,
    fiber_create_run_drop,
    wasm::new_store_call,
    wasm::new_store_call_zeroed
);
#[cfg(not(feature = "wasmtime"))]
criterion_group!(benches, fiber_create_run_drop);
criterion_main!(benches);
