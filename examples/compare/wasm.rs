//! Wasmtime `call_async` with a new `Store` per call: instantiate a small
//! guest whose export calls one host function, call it, drop the store.
//! What changes between cases is only where the fiber stack comes from.

use std::hint::black_box;

use stackswitch::{PoolConfig, StackPool};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Store,
};

use super::harness::{Case, Op};

const GUEST: &str = r#"
(module
  (import "env" "host" (func $host (param i32) (result i32)))
  (func (export "run") (param i32) (result i32)
    local.get 0
    call $host))
"#;

/// Wasmtime's `async_stack_size` in every case (its default, made explicit).
pub const ASYNC_STACK: usize = 2 << 20;

/// Where the fiber stacks come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stacks {
    /// A stackswitch [`StackPool`] as the stack creator.
    Ours,
    /// Wasmtime's default: a fresh mmap per store.
    Default,
    /// Wasmtime's pooling instance allocator (it brings its own stacks).
    Pooling,
}

impl Stacks {
    fn label(self) -> &'static str {
        match self {
            Stacks::Ours => "stackswitch StackPool",
            Stacks::Default => "Wasmtime default stacks",
            Stacks::Pooling => "Wasmtime pooling allocator",
        }
    }
}

fn config(stacks: Stacks, zeroing: bool) -> Config {
    let mut config = Config::new();
    config.async_stack_size(ASYNC_STACK);
    config.async_stack_zeroing(zeroing);
    if stacks == Stacks::Ours {
        let pool = StackPool::new(PoolConfig::default().stack_size(ASYNC_STACK).capacity(16))
            .expect("stack pool");
        config.with_host_stack(pool.stack_creator());
    }
    if stacks == Stacks::Pooling {
        // Small totals: the pool reserves its address space up front.
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_core_instances(16)
            .total_memories(16)
            .total_tables(16)
            .total_stacks(16);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    }
    config
}

/// One `call_async` per operation, each in a new store on `config`.
pub fn op(config: &Config) -> Op {
    let engine = Engine::new(config).expect("engine");
    let module = Module::new(&engine, GUEST).expect("guest module");
    let mut linker = Linker::<()>::new(&engine);
    linker
        .func_wrap("env", "host", |x: i32| x.wrapping_add(1))
        .expect("host function");
    let pre: InstancePre<()> = linker.instantiate_pre(&module).expect("instantiate_pre");
    Box::new(move |n| {
        for i in 0..n {
            let r = futures::executor::block_on(call_once(&engine, &pre, i as i32));
            black_box(r.expect("call_async"));
        }
    })
}

async fn call_once(engine: &Engine, pre: &InstancePre<()>, x: i32) -> wasmtime::Result<i32> {
    let mut store = Store::new(engine, ());
    let instance = pre.instantiate_async(&mut store).await?;
    let run = instance.get_typed_func::<i32, i32>(&mut store, "run")?;
    run.call_async(&mut store, x).await
}

/// The table name of a case.
pub fn name(stacks: Stacks, zeroing: bool) -> String {
    format!(
        "{}{}",
        stacks.label(),
        if zeroing { ", zeroing" } else { "" }
    )
}

/// The `--callgrind` names of the cases, for profiling one alone.
pub const KEYS: &[(&str, Stacks, bool)] = &[
    ("wasm-ours", Stacks::Ours, false),
    ("wasm-ours-zeroing", Stacks::Ours, true),
    ("wasm-default", Stacks::Default, false),
    ("wasm-default-zeroing", Stacks::Default, true),
    ("wasm-pooling", Stacks::Pooling, false),
    ("wasm-pooling-zeroing", Stacks::Pooling, true),
];

/// The operation of the case named `key` (one of [`KEYS`]).
pub fn op_by_key(key: &str) -> Option<Op> {
    let &(_, stacks, zeroing) = KEYS.iter().find(|(k, _, _)| *k == key)?;
    Some(op(&config(stacks, zeroing)))
}

/// Every source of stacks, with and without zeroing; ours first.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for stacks in [Stacks::Ours, Stacks::Default, Stacks::Pooling] {
        for zeroing in [false, true] {
            cases.push(Case::new(
                name(stacks, zeroing),
                op(&config(stacks, zeroing)),
            ));
        }
    }
    cases
}
