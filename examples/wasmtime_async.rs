//! A Wasmtime guest calling a sync and an async host function, each
//! printing where it runs: which stack, how much of it is left, and which
//! slot of our pool it is.
//!
//! ```text
//! cargo run --example wasmtime_async --features wasmtime
//! ```

use stackswitch::{locate, remaining_stack, PoolConfig, StackBounds, StackLocation, StackPool};
use wasmtime::{Caller, Config, Engine, Linker, Module, Store};

/// Prints the stack the caller runs on.
fn report(who: &str) {
    let Some(bounds) = StackBounds::current() else {
        println!("{who}: on a stack whose bounds are unknown");
        return;
    };
    let left = remaining_stack().unwrap_or(0);
    let place = match locate(bounds.high - 1) {
        Some(StackLocation::PoolSlot {
            region_id, slot, ..
        }) => format!("pool {region_id}, slot {slot}"),
        Some(StackLocation::Thread { .. }) => "the thread's own stack".to_string(),
        None => "unknown".to_string(),
    };
    println!(
        "{who:<28} {place:<24} stack {:#x}..{:#x} ({} KiB), {} KiB left, guard {} KiB",
        bounds.low,
        bounds.high,
        bounds.size() >> 10,
        left >> 10,
        bounds.guard_size() >> 10
    );
}

const GUEST: &str = r#"
(module
  (import "host" "sync" (func $sync (param i32)))
  (import "host" "async" (func $async (param i32)))
  (func (export "run") (param i32)
    local.get 0
    call $sync
    local.get 0
    call $async))
"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> wasmtime::Result<()> {
    // 64 stacks of 1 MiB, as Wasmtime's async fiber stacks: three lines on
    // the Config.
    let pool = StackPool::new(PoolConfig::default().stack_size(1 << 20).capacity(64))?;
    let mut config = Config::new();
    config.async_stack_size(pool.stack_size());
    config.max_wasm_stack(512 << 10);
    config.with_host_stack(pool.stack_creator());
    println!(
        "pool {}: {} stacks of {} KiB, guards via {:?}\n",
        pool.id(),
        pool.capacity(),
        pool.stack_size() >> 10,
        pool.guard_kind()
    );

    let engine = Engine::new(&config)?;
    let module = Module::new(&engine, GUEST)?;
    let mut linker = Linker::<()>::new(&engine);
    linker.func_wrap("host", "sync", |_: Caller<'_, ()>, call: i32| {
        report(&format!("call {call}: sync host fn"));
    })?;
    linker.func_wrap_async("host", "async", |_: Caller<'_, ()>, (call,): (i32,)| {
        Box::new(async move {
            report(&format!("call {call}: async, first poll"));
            tokio::task::yield_now().await;
            report(&format!("call {call}: async, after yield"));
        })
    })?;

    report("main");
    println!();
    // A new store per call, as a server would per request: each call takes
    // a stack from the pool and gives it back when the store goes.
    for call in 0..3 {
        let mut store = Store::new(&engine, ());
        let instance = linker.instantiate_async(&mut store, &module).await?;
        let run = instance.get_typed_func::<i32, ()>(&mut store, "run")?;
        run.call_async(&mut store, call).await?;
        println!("  stacks in use while the store lives: {}", pool.in_use());
    }
    println!("\nstacks in use after: {}", pool.in_use());
    Ok(())
}
