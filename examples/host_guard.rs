//! A guest calling three host functions, each under the stack guard in
//! `Measure` mode; prints how much of its budget each one used.
//!
//! ```text
//! cargo run --example host_guard --features wasmtime
//! ```
//!
//! The embedding is async: the guest runs on 256 KiB fiber stacks from a
//! stack pool (so the guard knows their bounds) and may use 192 KiB of it;
//! the budget is what Wasmtime then guarantees a host function. `render`
//! is an async host function: each poll of its future is measured.

use std::hint::black_box;

use stackswitch::guard::{peak_report, GuardMode};
use stackswitch::wasmtime::HostGuard;
use stackswitch::{PoolConfig, StackPool};
use wasmtime::{Caller, Config, Engine, Linker, Module, Store};

const ASYNC_STACK: usize = 256 << 10;
const MAX_WASM: usize = 192 << 10;

/// The guest: `run(n)` calls each host function at recursion depths 0..n.
const GUEST: &str = r#"
(module
  (import "env" "parse" (func $parse (param i32) (result i32)))
  (import "env" "checksum" (func $checksum (param i32) (result i32)))
  (import "env" "render" (func $render (param i32) (result i32)))
  (func $at_depth (param $d i32) (param $i i32) (result i32)
    (if (result i32) (i32.eqz (local.get $d))
      (then
        (i32.add (call $parse (local.get $i))
          (i32.add (call $checksum (local.get $i)) (call $render (local.get $i)))))
      (else (call $at_depth (i32.sub (local.get $d) (i32.const 1)) (local.get $i)))))
  (func (export "run") (param $n i32) (result i32)
    (local $i i32) (local $acc i32)
    (loop $next
      (local.set $acc (i32.add (local.get $acc)
        (call $at_depth (i32.mul (local.get $i) (i32.const 100)) (local.get $i))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (local.get $n))))
    (local.get $acc)))
"#;

/// A "parser" with a 12 KiB scratch buffer on the stack.
#[inline(never)]
fn parse(input: i32) -> i32 {
    let mut scratch = [0u8; 12 << 10];
    scratch[input as usize % scratch.len()] = input as u8;
    black_box(&mut scratch);
    scratch.iter().map(|&b| b as i32).sum()
}

/// A checksum with almost no stack.
#[inline(never)]
fn checksum(input: i32) -> i32 {
    black_box(input).wrapping_mul(31).rotate_left(7)
}

/// A recursive "renderer": depth grows with the input, 1 KiB per level.
#[inline(never)]
fn render(depth: i32) -> i32 {
    let mut frame = [depth as u8; 1024];
    black_box(&mut frame);
    if depth <= 0 {
        return frame[0] as i32;
    }
    render(depth - 1) + frame[1] as i32
}

/// Pending once (waking itself), then ready.
async fn yield_once() {
    let mut pending = true;
    std::future::poll_fn(|cx| {
        if std::mem::take(&mut pending) {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await
}

fn main() -> wasmtime::Result<()> {
    let pool = StackPool::new(PoolConfig::default().stack_size(ASYNC_STACK).capacity(16))?;
    let mut config = Config::new();
    config
        .async_stack_size(ASYNC_STACK)
        .max_wasm_stack(MAX_WASM)
        .with_host_stack(pool.stack_creator());
    let engine = Engine::new(&config)?;
    let module = Module::new(&engine, GUEST)?;

    let guard = HostGuard::for_config(ASYNC_STACK, MAX_WASM)?.mode(GuardMode::Measure);
    let mut linker = Linker::<()>::new(&engine);
    linker.func_wrap("env", "parse", move |_: Caller<'_, ()>, i: i32| {
        guard.run("parse", || parse(i))
    })?;
    linker.func_wrap("env", "checksum", move |_: Caller<'_, ()>, i: i32| {
        guard.run("checksum", || checksum(i))
    })?;
    linker.func_wrap_async("env", "render", move |_: Caller<'_, ()>, (i,): (i32,)| {
        Box::new(guard.run_async("render", async move {
            let first = render(i * 4);
            yield_once().await; // Wasmtime suspends the fiber; the next poll is measured too
            Ok(first + render(i * 2))
        }))
    })?;

    let mut store = Store::new(&engine, ());
    guard.attach(&mut store)?;
    let result = futures::executor::block_on(async {
        let instance = linker.instantiate_async(&mut store, &module).await?;
        let run = instance.get_typed_func::<i32, i32>(&mut store, "run")?;
        run.call_async(&mut store, 8).await
    })?;

    println!(
        "guest returned {result}; host functions' stack use (budget {} bytes):\n",
        guard.budget()
    );
    print!("{}", peak_report());
    Ok(())
}
