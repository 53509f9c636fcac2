//! The pool as Wasmtime's stack creator: host functions run on pool slots,
//! stores come and go without leaks, threads share the pool, zeroing is
//! exact, and exhaustion is an error carrying the pool's message.
#![cfg(feature = "wasmtime")]

use std::sync::{Mutex, MutexGuard};

mod common;

use futures::executor::block_on;
use stackswitch::{locate, remaining_stack, PoolConfig, StackBounds, StackLocation, StackPool};
use wasmtime::{Caller, Config, Engine, Func, Instance, Linker, Module, StackCreator, Store};

/// Async stack size and guest limit used throughout.
const STACK: usize = 1 << 20;
const GUEST: usize = 256 << 10;

/// The tests count the process's mappings; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a host function saw about its own stack.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    location: Option<StackLocation>,
    left: Option<usize>,
    /// Whether the stack below it (from the guard up to 32 KiB under its
    /// frame) read as zeros.
    zeros_below: bool,
}

const WAT: &str = r#"
(module
  (import "host" "sync" (func $sync (param i32)))
  (import "host" "async" (func $async (param i32)))
  (func (export "run_sync") (param i32) local.get 0 call $sync)
  (func (export "run_async") (param i32) local.get 0 call $async))
"#;

/// Host-function modes, the i32 the guest passes on: look where we are;
/// dirty the stack first; look and scan the stack below for dirt.
const LOOK: i32 = 0;
const DIRTY: i32 = 1;
const SCAN: i32 = 2;

#[inline(never)]
fn look(scan: bool) -> Seen {
    let marker = 0u8;
    let sp = std::hint::black_box(&marker) as *const u8 as usize;
    let bounds = StackBounds::current().filter(|_| scan);
    let zeros_below = bounds.is_some_and(|b| {
        let end = sp - (32 << 10);
        // SAFETY: low..end is mapped read-write stack of the fiber we run
        // on, below every live frame; nothing uses it while we read.
        let below = unsafe { std::slice::from_raw_parts(b.low as *const u8, end - b.low) };
        below.iter().all(|&x| x == 0)
    });
    Seen {
        location: locate(sp),
        left: remaining_stack(),
        zeros_below,
    }
}

/// Leaves 96 KiB of 0xaa on the stack below the caller.
#[inline(never)]
fn dirty() {
    let buf = std::hint::black_box([0xaau8; 96 << 10]);
    std::hint::black_box(&buf);
}

fn host(mode: i32) -> Seen {
    if mode == DIRTY {
        dirty();
    }
    look(mode == SCAN)
}

fn engine(pool: &StackPool, zeroing: bool) -> Engine {
    let mut config = Config::new();
    config.async_stack_size(STACK);
    config.max_wasm_stack(GUEST);
    config.async_stack_zeroing(zeroing);
    config.with_host_stack(pool.stack_creator());
    Engine::new(&config).unwrap()
}

fn linker(engine: &Engine) -> Linker<Seen> {
    let mut linker = Linker::new(engine);
    linker
        .func_wrap("host", "sync", |mut c: Caller<'_, Seen>, mode: i32| {
            *c.data_mut() = host(mode);
        })
        .unwrap();
    linker
        .func_wrap_async(
            "host",
            "async",
            |mut c: Caller<'_, Seen>, (mode,): (i32,)| {
                Box::new(async move {
                    // Yield once, so the poll that finishes runs after a suspend.
                    let mut yielded = false;
                    std::future::poll_fn(|cx| {
                        if yielded {
                            std::task::Poll::Ready(())
                        } else {
                            yielded = true;
                            cx.waker().wake_by_ref();
                            std::task::Poll::Pending
                        }
                    })
                    .await;
                    *c.data_mut() = host(mode);
                })
            },
        )
        .unwrap();
    linker
}

struct Setup {
    engine: Engine,
    module: Module,
    linker: Linker<Seen>,
}

impl Setup {
    fn new(pool: &StackPool, zeroing: bool) -> Self {
        let engine = engine(pool, zeroing);
        let module = Module::new(&engine, WAT).unwrap();
        let linker = linker(&engine);
        Setup {
            engine,
            module,
            linker,
        }
    }

    /// One call on a new store: instantiate, call `export(mode)`, return
    /// what the host function saw.
    async fn call(&self, export: &str, mode: i32) -> wasmtime::Result<Seen> {
        let mut store = Store::new(&self.engine, Seen::default());
        let instance = self
            .linker
            .instantiate_async(&mut store, &self.module)
            .await?;
        run(&mut store, &instance, export, mode).await
    }
}

async fn run(
    store: &mut Store<Seen>,
    instance: &Instance,
    export: &str,
    mode: i32,
) -> wasmtime::Result<Seen> {
    let f = instance.get_typed_func::<i32, ()>(&mut *store, export)?;
    f.call_async(&mut *store, mode).await?;
    Ok(*store.data())
}

fn pool(capacity: usize) -> StackPool {
    StackPool::new(PoolConfig::default().stack_size(STACK).capacity(capacity)).unwrap()
}

fn mapping_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

fn assert_on_pool_slot(pool: &StackPool, seen: Seen) {
    match seen.location {
        Some(StackLocation::PoolSlot {
            region_id, bounds, ..
        }) => {
            assert_eq!(region_id, pool.id());
            assert_eq!(bounds.size(), STACK);
        }
        other => panic!("host function not on a pool slot: {other:?}"),
    }
    // The guest used little; the host has nearly all of the stack, and at
    // least what Wasmtime promises (async_stack_size - max_wasm_stack).
    let left = seen.left.unwrap();
    assert!(left < STACK, "{left}");
    assert!(left > STACK - GUEST, "{left} bytes left");
}

#[test]
fn host_functions_run_on_a_pool_slot() {
    let _serial = serial();
    let pool = pool(8);
    let setup = Setup::new(&pool, false);
    let sync = block_on(setup.call("run_sync", LOOK)).unwrap();
    assert_on_pool_slot(&pool, sync);
    let polled = block_on(setup.call("run_async", LOOK)).unwrap();
    assert_on_pool_slot(&pool, polled);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn ten_thousand_stores_leave_nothing_behind() {
    // The mapping count is only meaningful with no other thread starting
    // meanwhile (a new test thread maps its signal stack): the count runs
    // alone in a child process with one test thread.
    const CHILD: &str = "STACKSWITCH_TEN_THOUSAND_STORES_CHILD";
    if !common::in_child("ten_thousand_stores_leave_nothing_behind", CHILD) {
        return;
    }
    let _serial = serial();
    let pool = pool(16);
    let setup = Setup::new(&pool, false);
    // Warm up: per-thread state in Wasmtime, the first slot's guard.
    for _ in 0..100 {
        block_on(setup.call("run_sync", LOOK)).unwrap();
    }
    let before = mapping_count();
    for i in 0..10_000 {
        let export = if i % 2 == 0 { "run_sync" } else { "run_async" };
        let seen = block_on(setup.call(export, LOOK)).unwrap();
        if i % 1000 == 0 {
            assert_on_pool_slot(&pool, seen);
        }
    }
    assert_eq!(pool.in_use(), 0);
    let after = mapping_count();
    assert!(after <= before, "mappings grew from {before} to {after}");
}

#[test]
fn two_threads_run_stores_at_once() {
    let _serial = serial();
    let pool = pool(8);
    let setup = std::sync::Arc::new(Setup::new(&pool, false));
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (setup, barrier, pool) = (setup.clone(), barrier.clone(), pool.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut slots = std::collections::BTreeSet::new();
                for i in 0..250 {
                    let export = if (i + t) % 2 == 0 {
                        "run_sync"
                    } else {
                        "run_async"
                    };
                    // Two stores per round, alive at once on this thread.
                    let a = block_on(setup.call(export, LOOK)).unwrap();
                    let mut store = Store::new(&setup.engine, Seen::default());
                    let inst = block_on(setup.linker.instantiate_async(&mut store, &setup.module))
                        .unwrap();
                    let b = block_on(run(&mut store, &inst, export, LOOK)).unwrap();
                    for seen in [a, b] {
                        assert_on_pool_slot(&pool, seen);
                        if let Some(StackLocation::PoolSlot { slot, .. }) = seen.location {
                            slots.insert(slot);
                        }
                    }
                }
                slots
            })
        })
        .collect();
    let used: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(used.iter().all(|s| !s.is_empty()));
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn an_exhausted_pool_is_an_error_and_the_process_goes_on() {
    let _serial = serial();
    let pool = pool(1);
    let setup = Setup::new(&pool, false);
    let held = pool.acquire().unwrap();
    // A host function called directly: the store has no fiber stack cached
    // from an instantiation, so the call is what asks for one.
    let mut store = Store::new(&setup.engine, Seen::default());
    let f = Func::wrap(&mut store, |mut c: Caller<'_, Seen>, mode: i32| {
        *c.data_mut() = host(mode);
    });
    let f = f.typed::<i32, ()>(&store).unwrap();
    let err = block_on(f.call_async(&mut store, LOOK)).unwrap_err();
    let msg = format!("{err:?}");
    assert!(
        msg.contains("stack pool exhausted: all 1 stacks are in use"),
        "{msg}"
    );
    // A new store's instantiation fails the same way.
    let err = block_on(setup.call("run_async", LOOK)).unwrap_err();
    assert!(
        format!("{err:?}").contains("stack pool exhausted"),
        "{err:?}"
    );
    drop(held);
    block_on(f.call_async(&mut store, LOOK)).unwrap();
    assert_on_pool_slot(&pool, *store.data());
    drop(store);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn a_size_that_does_not_fit_names_both_numbers() {
    let _serial = serial();
    let small = StackPool::new(PoolConfig::default().stack_size(STACK / 2)).unwrap();
    let setup = Setup::new(&small, false);
    let err = block_on(setup.call("run_sync", LOOK)).unwrap_err();
    let msg = format!("{err:?}");
    assert!(
        msg.contains(&format!("a stack of {STACK} bytes does not fit"))
            && msg.contains(&format!("slots of {} bytes", STACK / 2)),
        "{msg}"
    );
    // Through the trait directly, too.
    assert!(small.new_stack(STACK, false).is_err());
    assert_eq!(small.in_use(), 0);
}

/// Calls twice on new stores, the first dirtying the stack under the host
/// function; returns what the second saw and whether both ran on the same
/// slot.
fn dirty_then_look(pool: &StackPool, zeroing: bool) -> (Seen, bool) {
    let setup = Setup::new(pool, zeroing);
    let first = block_on(setup.call("run_sync", DIRTY)).unwrap();
    let second = block_on(setup.call("run_sync", SCAN)).unwrap();
    let slot = |s: Seen| match s.location {
        Some(StackLocation::PoolSlot { slot, .. }) => slot,
        other => panic!("{other:?}"),
    };
    (second, slot(first) == slot(second))
}

#[test]
fn zeroing_is_honoured_on_every_reused_stack() {
    let _serial = serial();
    // One slot each, so that the second store gets the stack the first
    // dirtied (with more, a zeroed acquire prefers a stack already clean).
    let keep_all = || {
        StackPool::new(
            PoolConfig::default()
                .stack_size(STACK)
                .resident(usize::MAX)
                .capacity(1),
        )
        .unwrap()
    };
    // Without zeroing the dirt is still there: the check can see it.
    let (seen, same) = dirty_then_look(&keep_all(), false);
    assert!(same);
    assert!(!seen.zeros_below, "the control found no dirt");
    // With zeroing, everything kept resident: the window grows as far as
    // the dirt went.
    let (seen, same) = dirty_then_look(&keep_all(), true);
    assert!(same);
    assert!(seen.zeros_below);
    // With zeroing and the default resident limit (madvise beyond it).
    let (seen, same) = dirty_then_look(&pool(1), true);
    assert!(same);
    assert!(seen.zeros_below);

    // And through the trait: a zeroed stack reads as zeros after a dirty use.
    let pool = pool(1);
    let s = pool.new_stack(STACK, false).unwrap();
    let r = s.range();
    // SAFETY: the stack's memory, which we hold and nothing runs on.
    unsafe { std::ptr::write_bytes(r.start as *mut u8, 0x3c, r.len()) };
    drop(s);
    let s = pool.new_stack(STACK, true).unwrap();
    assert_eq!(s.range(), r);
    // SAFETY: as above, reading.
    let bytes = unsafe { std::slice::from_raw_parts(r.start as *const u8, r.len()) };
    assert!(bytes.iter().all(|&b| b == 0));
    let b = pool.slot_bounds(0).unwrap();
    assert_eq!(s.guard_range(), b.guard as *mut u8..b.low as *mut u8);
}
