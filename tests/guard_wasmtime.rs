//! The host-function guard inside Wasmtime: a guest recurses to depth D,
//! then calls the host function `h`, which uses X bytes of stack.
//!
//! - X above the budget: `Enforce` reports an overflow naming `h` at every
//!   D, including 0; `Off` passes at small D and aborts only at the deepest.
//! - X below the budget: passes at every D up to the deepest the guest can
//!   go (async on pool stacks, and sync on a thread's stack).
//! - `Measure` reports a peak for `h` between X and X + a stated slack.
//! - An async host function's every poll runs under the budget.
//!
//! Crashes run in a child process of this test binary (`GUARD_CHILD`).
#![cfg(feature = "wasmtime")]

use std::future::Future;
use std::hint::black_box;
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use stackswitch::guard::{self, GuardMode, StackGuard};
use stackswitch::wasmtime::{HostGuard, WASMTIME_FRAMES};
use stackswitch::{remaining_stack, Error, PoolConfig, StackPool};
use wasmtime::{Caller, Config, Engine, Instance, Linker, Module, Store};

/// Wasmtime's fiber stack size and the guest's limit in these tests.
const ASYNC_STACK: usize = 256 << 10;
const MAX_WASM: usize = 192 << 10;
/// What the guard's entry frame and `h`'s own frame add to X.
const SLACK: usize = 2 << 10;
/// X above the budget: more than all the host room on the fiber.
const X_ABOVE: usize = ASYNC_STACK - MAX_WASM + (4 << 10);

/// The guest: `rec(d)` recurses d frames, then calls `h(d)`.
const WAT: &str = r#"
(module
  (import "env" "h" (func $h (param i32) (result i32)))
  (func $rec (export "rec") (param $d i32) (result i32)
    (if (result i32) (i32.eqz (local.get $d))
      (then (call $h (i32.const 0)))
      (else (i32.add (call $rec (i32.sub (local.get $d) (i32.const 1)))
                     (i32.const 1))))))
"#;

/// Uses `N` bytes of stack (zeroed, so every byte is written; stack probes
/// touch every page on the way down).
#[inline(never)]
fn use_stack<const N: usize>() -> u8 {
    let mut buf = [0u8; N];
    black_box(&mut buf);
    buf[N / 2]
}

fn engine(async_calls: bool) -> Engine {
    let mut config = Config::new();
    config.max_wasm_stack(MAX_WASM);
    if async_calls {
        config.async_stack_size(ASYNC_STACK);
        let pool =
            StackPool::new(PoolConfig::default().stack_size(ASYNC_STACK).capacity(16)).unwrap();
        config.with_host_stack(pool.stack_creator());
    }
    Engine::new(&config).unwrap()
}

fn host_guard(mode: GuardMode) -> HostGuard {
    HostGuard::for_config(ASYNC_STACK, MAX_WASM)
        .unwrap()
        .mode(mode)
}

/// Which stack use `h` has.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Use {
    Nothing,
    Below,
    Above,
}

fn run_h(u: Use) -> i32 {
    match u {
        Use::Nothing => 0,
        Use::Below => below() as i32,
        Use::Above => use_stack::<X_ABOVE>() as i32,
    }
}

/// X below the budget: the budget less the slack, used in 4 KiB steps so
/// the exact figure follows the budget (which depends on the build).
#[inline(never)]
fn below() -> u8 {
    let target = budget() - SLACK;
    eat(target)
}

/// Uses at most about `n` bytes of stack, in frames of a little under
/// 4 KiB (3.5 KiB of buffer plus the frame itself, whatever the build).
#[inline(never)]
fn eat(n: usize) -> u8 {
    if n < 4096 {
        return 0;
    }
    let mut buf = [0u8; 3584];
    black_box(&mut buf);
    eat(n - 4096).wrapping_add(buf[7])
}

fn budget() -> usize {
    HostGuard::for_config(ASYNC_STACK, MAX_WASM)
        .unwrap()
        .budget()
}

/// Calls `rec(depth)` on a fresh store, `h` guarded by `guard` and using
/// `u`, asynchronously (on a pool fiber) or on this thread's stack.
fn call(async_calls: bool, guard: HostGuard, u: Use, depth: i32) -> wasmtime::Result<i32> {
    let engine = engine(async_calls);
    let module = Module::new(&engine, WAT).unwrap();
    let mut linker = Linker::<()>::new(&engine);
    linker
        .func_wrap("env", "h", move |_: Caller<'_, ()>, _: i32| {
            guard.run("h", || run_h(u))
        })
        .unwrap();
    let mut store = Store::new(&engine, ());
    if async_calls {
        futures::executor::block_on(async {
            let instance = linker.instantiate_async(&mut store, &module).await?;
            let rec = instance.get_typed_func::<i32, i32>(&mut store, "rec")?;
            rec.call_async(&mut store, depth).await
        })
    } else {
        let instance = linker.instantiate(&mut store, &module)?;
        let rec = instance.get_typed_func::<i32, i32>(&mut store, "rec")?;
        rec.call(&mut store, depth)
    }
}

/// The deepest `rec` depth that does not trap, with `h` doing nothing.
fn deepest(async_calls: bool) -> i32 {
    static DEEPEST: [OnceLock<i32>; 2] = [OnceLock::new(), OnceLock::new()];
    *DEEPEST[async_calls as usize].get_or_init(|| {
        let off = host_guard(GuardMode::Off);
        let ok = |d| call(async_calls, off, Use::Nothing, d).is_ok();
        let (mut lo, mut hi) = (0, 1 << 20);
        assert!(ok(lo) && !ok(hi));
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if ok(mid) {
                lo = mid
            } else {
                hi = mid
            }
        }
        lo
    })
}

/// Runs `f` on a thread with 8 MiB of stack (sync calls use it).
fn on_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

struct Child {
    signal: Option<i32>,
    code: Option<i32>,
    stderr: String,
}

fn child_arg(name: &str) -> Option<String> {
    let v = std::env::var("GUARD_CHILD").ok()?;
    let (n, arg) = v.split_once(':')?;
    (n == name).then(|| arg.to_string())
}

/// Re-runs this binary for the test `name`, passing `arg`.
fn run_child(name: &str, arg: &str) -> Child {
    let exe = std::env::current_exe().unwrap();
    let args = ["--exact", name, "--nocapture", "--test-threads=1"];
    let tag = format!("{name}:{arg}");
    let mut out = Command::new(&exe)
        .args(args)
        .env("GUARD_CHILD", &tag)
        .output();
    // Under qemu-user an aarch64 binary cannot exec another one directly.
    let exec_failed = match &out {
        Err(e) => e.raw_os_error() == Some(libc::ENOEXEC),
        Ok(o) => o.status.code() == Some(127) && o.stderr.is_empty(),
    };
    if cfg!(target_arch = "aarch64") && exec_failed {
        out = Command::new("qemu-aarch64")
            .args(["-L", "/usr/aarch64-linux-gnu"])
            .arg(&exe)
            .args(args)
            .env("GUARD_CHILD", &tag)
            .output();
    }
    let out = out.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("--- child {tag} stderr ---\n{stderr}--- end ---");
    Child {
        signal: out.status.signal(),
        code: out.status.code(),
        stderr,
    }
}

#[test]
fn budget_comes_from_the_config() {
    let g = HostGuard::for_config(ASYNC_STACK, MAX_WASM).unwrap();
    assert_eq!(g.budget(), ASYNC_STACK - MAX_WASM - WASMTIME_FRAMES - 64);
    match HostGuard::for_config(64 << 10, 60 << 10) {
        Err(e @ Error::NoHostBudget { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("65536") && msg.contains("61440"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(HostGuard::for_config(1 << 20, 2 << 20).is_err());
    assert!(matches!(
        HostGuard::with_budget(10),
        Err(Error::BudgetTooSmall { budget: 10, .. })
    ));
}

#[test]
fn enforce_reports_overflow_at_every_depth() {
    const NAME: &str = "enforce_reports_overflow_at_every_depth";
    if let Some(depth) = child_arg(NAME) {
        let r = call(
            true,
            host_guard(GuardMode::Enforce),
            Use::Above,
            depth.parse().unwrap(),
        );
        panic!("h returned {r:?} instead of faulting");
    }
    let d = deepest(true);
    for depth in [0, d / 2, d] {
        let child = run_child(NAME, &depth.to_string());
        assert_eq!(
            child.signal,
            Some(libc::SIGABRT),
            "depth {depth}: {:?}",
            child.code
        );
        let expected = format!(
            "guarded host function `h` overflowed its stack budget of {} bytes",
            budget()
        );
        assert!(child.stderr.contains(&expected), "depth {depth}");
        assert!(child.stderr.contains("in the guard region of pool region"));
    }
}

#[test]
fn off_aborts_only_near_the_deepest_depth() {
    const NAME: &str = "off_aborts_only_near_the_deepest_depth";
    if let Some(depth) = child_arg(NAME) {
        let r = call(
            true,
            host_guard(GuardMode::Off),
            Use::Above,
            depth.parse().unwrap(),
        );
        println!("CHILD RETURNED {r:?}");
        std::process::exit(0);
    }
    let d = deepest(true);
    for depth in [0, d / 2] {
        let child = run_child(NAME, &depth.to_string());
        assert_eq!(
            child.code,
            Some(0),
            "depth {depth}: signal {:?}",
            child.signal
        );
    }
    let child = run_child(NAME, &d.to_string());
    assert_eq!(
        child.signal,
        Some(libc::SIGABRT),
        "depth {d}: {:?}",
        child.code
    );
    assert!(child.stderr.contains("overflowed its stack"));
}

#[test]
fn below_budget_passes_at_every_depth_async() {
    let d = deepest(true);
    let g = host_guard(GuardMode::Enforce);
    for depth in [0, d / 2, d - 1, d] {
        let r = call(true, g, Use::Below, depth).unwrap();
        assert_eq!(r, depth);
    }
}

#[test]
fn below_budget_passes_at_every_depth_sync_on_thread_stack() {
    on_thread(|| {
        let d = deepest(false);
        let g = host_guard(GuardMode::Enforce);
        for depth in [0, d / 2, d] {
            let r = call(false, g, Use::Below, depth).unwrap();
            assert_eq!(r, depth);
        }
    });
}

#[test]
fn sync_over_budget_faults_on_thread_stack() {
    const NAME: &str = "sync_over_budget_faults_on_thread_stack";
    if child_arg(NAME).is_some() {
        let r = on_thread(|| call(false, host_guard(GuardMode::Enforce), Use::Above, 0).is_ok());
        panic!("h returned {r:?} instead of faulting");
    }
    let child = run_child(NAME, "0");
    assert_eq!(child.signal, Some(libc::SIGABRT), "{:?}", child.code);
    assert!(child.stderr.contains("`h` overflowed its stack budget"));
    assert!(child.stderr.contains("this thread's stack"));
}

/// What Wasmtime takes between the guest's limit and a host function, as
/// the guard sees it: `available` in its error for a budget of the whole
/// stack, at the deepest guest depth.
#[test]
fn wasmtime_frames_fit_the_reserve() {
    let budget = budget();
    let probe = |results: Arc<Mutex<Vec<usize>>>| {
        move || {
            let e = StackGuard::new("probe", ASYNC_STACK - 4096)
                .mode(GuardMode::Enforce)
                .run(|| ())
                .unwrap_err();
            match e {
                Error::BudgetTooLarge { available, .. } => results.lock().unwrap().push(available),
                other => panic!("{other}"),
            }
        }
    };
    // Sync host function, async poll, both on a pool fiber at the deepest.
    let engine = engine(true);
    let module = Module::new(&engine, WAT).unwrap();
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut linker = Linker::<()>::new(&engine);
    let p = probe(results.clone());
    linker
        .func_wrap("env", "h", move |_: Caller<'_, ()>, _: i32| {
            p();
            0
        })
        .unwrap();
    let mut async_linker = Linker::<()>::new(&engine);
    let p = probe(results.clone());
    async_linker
        .func_wrap_async("env", "h", move |_: Caller<'_, ()>, (_,): (i32,)| {
            let p = p.clone();
            Box::new(async move {
                p();
                Ok(0i32)
            })
        })
        .unwrap();
    let d = deepest(true);
    for l in [&linker, &async_linker] {
        let mut store = Store::new(&engine, ());
        futures::executor::block_on(async {
            let instance: Instance = l.instantiate_async(&mut store, &module).await.unwrap();
            let rec = instance
                .get_typed_func::<i32, i32>(&mut store, "rec")
                .unwrap();
            rec.call_async(&mut store, d).await.unwrap();
        });
    }
    let results = results.lock().unwrap().clone();
    for (what, available) in ["sync host function", "async poll"].iter().zip(&results) {
        let frames = ASYNC_STACK - MAX_WASM - available;
        println!(
            "wasmtime frames ({what}, {} build): {frames} bytes; reserve {WASMTIME_FRAMES}",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        assert!(*available >= budget, "{what}: {available} < {budget}");
    }
    assert_eq!(results.len(), 2);
}

#[test]
fn measure_reports_a_peak_for_h() {
    const X: usize = 20_000;
    let engine = engine(true);
    let module = Module::new(&engine, WAT).unwrap();
    let guard = host_guard(GuardMode::Measure);
    let mut linker = Linker::<()>::new(&engine);
    linker
        .func_wrap("env", "h", move |_: Caller<'_, ()>, _: i32| {
            guard.run("h_measured", || use_stack::<X>() as i32)
        })
        .unwrap();
    let d = deepest(true);
    for depth in [0, d] {
        let mut store = Store::new(&engine, ());
        futures::executor::block_on(async {
            let instance = linker.instantiate_async(&mut store, &module).await.unwrap();
            let rec = instance
                .get_typed_func::<i32, i32>(&mut store, "rec")
                .unwrap();
            rec.call_async(&mut store, depth).await.unwrap();
        });
    }
    let report = guard::peak_report();
    let e = report.get("h_measured").unwrap();
    assert_eq!((e.calls, e.budget), (2, budget()));
    assert!((X..=X + SLACK).contains(&e.peak), "peak {}", e.peak);
    println!("{report}");
}

/// A future that is pending `n` times (waking itself) before it is ready.
struct YieldN(usize);

impl Future for YieldN {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[test]
fn async_host_function_polls_each_run_under_the_budget() {
    let engine = engine(true);
    let module = Module::new(&engine, WAT).unwrap();
    let guard = host_guard(GuardMode::Measure);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut linker = Linker::<()>::new(&engine);
    let s = seen.clone();
    linker
        .func_wrap_async("env", "h", move |_: Caller<'_, ()>, (_,): (i32,)| {
            let s = s.clone();
            Box::new(guard.run_async("h_async", async move {
                for _ in 0..3 {
                    s.lock().unwrap().push(remaining_stack().unwrap());
                    YieldN(1).await;
                }
                s.lock().unwrap().push(remaining_stack().unwrap());
                Ok(7i32)
            }))
        })
        .unwrap();
    let d = deepest(true);
    let mut store = Store::new(&engine, ());
    let r = futures::executor::block_on(async {
        let instance = linker.instantiate_async(&mut store, &module).await.unwrap();
        let rec = instance
            .get_typed_func::<i32, i32>(&mut store, "rec")
            .unwrap();
        rec.call_async(&mut store, d / 2).await.unwrap()
    });
    assert_eq!(r, d / 2 + 7);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    for left in &seen {
        assert!((budget() - SLACK..=budget()).contains(left), "{left}");
    }
    let e = guard::peak_report().get("h_async").cloned().unwrap();
    assert_eq!(e.calls, 4, "one measured call per poll");
}

#[test]
fn unknown_fiber_stack_is_a_trap() {
    // Wasmtime's own fiber stacks are unknown to the guard.
    let mut config = Config::new();
    config
        .async_stack_size(ASYNC_STACK)
        .max_wasm_stack(MAX_WASM);
    let engine = Engine::new(&config).unwrap();
    let module = Module::new(&engine, WAT).unwrap();
    let guard = host_guard(GuardMode::Enforce);
    let mut linker = Linker::<()>::new(&engine);
    linker
        .func_wrap("env", "h", move |_: Caller<'_, ()>, _: i32| {
            guard.run("h", || 0)
        })
        .unwrap();
    let mut store = Store::new(&engine, ());
    let err = futures::executor::block_on(async {
        let instance = linker.instantiate_async(&mut store, &module).await.unwrap();
        let rec = instance
            .get_typed_func::<i32, i32>(&mut store, "rec")
            .unwrap();
        rec.call_async(&mut store, 3).await.unwrap_err()
    });
    assert!(
        matches!(err.downcast_ref::<Error>(), Some(Error::UnknownStack)),
        "{err:?}"
    );
}

/// Our handler installed before Wasmtime's: Wasmtime's runs first and would
/// abort with its own message; the store hook makes it ours.
#[test]
fn store_hook_reports_when_wasmtime_handler_runs_first() {
    const NAME: &str = "store_hook_reports_when_wasmtime_handler_runs_first";
    if let Some(arg) = child_arg(NAME) {
        guard::install_fault_handler().unwrap();
        let engine = engine(true); // installs Wasmtime's handler after ours
        let module = Module::new(&engine, WAT).unwrap();
        let g = host_guard(GuardMode::Enforce);
        let mut linker = Linker::<()>::new(&engine);
        linker
            .func_wrap("env", "h", move |_: Caller<'_, ()>, _: i32| {
                g.run("h_hooked", || use_stack::<X_ABOVE>() as i32)
            })
            .unwrap();
        let mut store = Store::new(&engine, ());
        if arg == "attach" {
            g.attach(&mut store).unwrap();
        }
        futures::executor::block_on(async {
            let instance = linker.instantiate_async(&mut store, &module).await.unwrap();
            let rec = instance
                .get_typed_func::<i32, i32>(&mut store, "rec")
                .unwrap();
            let _ = rec.call_async(&mut store, 0).await;
        });
        panic!("h did not fault");
    }
    let attached = run_child(NAME, "attach");
    assert_eq!(attached.signal, Some(libc::SIGABRT));
    assert!(attached
        .stderr
        .contains("`h_hooked` overflowed its stack budget"));
    // Without the hook, Wasmtime's handler has the last word.
    let plain = run_child(NAME, "plain");
    assert_eq!(plain.signal, Some(libc::SIGABRT));
    assert!(!plain.stderr.contains("stackswitch:"));
    assert!(plain
        .stderr
        .contains("execution on async fiber has overflowed its stack"));
}

/// Our handler installed after Wasmtime's runs first on every fault: a
/// wasm trap (an out-of-bounds load faulting in linear memory's guard
/// region) must still reach Wasmtime and come back as a trap.
#[test]
fn wasm_traps_still_reach_wasmtime_through_our_handler() {
    const NAME: &str = "wasm_traps_still_reach_wasmtime_through_our_handler";
    if child_arg(NAME).is_some() {
        let engine = engine(true); // Wasmtime's handler first...
        guard::install_fault_handler().unwrap(); // ...then ours, in front of it
        let oob = r#"(module (memory 1)
            (func (export "load") (param i32) (result i32) (i32.load (local.get 0))))"#;
        let module = Module::new(&engine, oob).unwrap();
        let mut store = Store::new(&engine, ());
        let trap = futures::executor::block_on(async {
            let instance = Instance::new_async(&mut store, &module, &[]).await.unwrap();
            let load = instance
                .get_typed_func::<i32, i32>(&mut store, "load")
                .unwrap();
            assert_eq!(load.call_async(&mut store, 8).await.unwrap(), 0);
            load.call_async(&mut store, 1 << 30).await.unwrap_err()
        });
        let trap = trap.downcast::<wasmtime::Trap>().unwrap();
        assert_eq!(trap, wasmtime::Trap::MemoryOutOfBounds);
        eprintln!("TRAPPED AS EXPECTED");
        return;
    }
    let child = run_child(NAME, "go");
    assert_eq!(child.code, Some(0), "signal {:?}", child.signal);
    assert!(child.stderr.contains("TRAPPED AS EXPECTED"));
}
