//! The host-function stack guard on thread stacks (and, where noted, pool
//! stacks): exact budgets, errors, panics, Measure peaks, fault reports and
//! chaining to the previous signal handler.
//!
//! Tests that end in a crash run in a child process: the test re-executes
//! this binary with `GUARD_CHILD=<test name>` and checks the child's signal
//! and stderr.

use std::hint::black_box;
use std::os::unix::process::ExitStatusExt;
use std::panic;

use stackswitch::guard::{self, GuardMode, StackGuard, MIN_BUDGET};

mod common;
use stackswitch::{
    locate, remaining_stack, Error, Fiber, MmapStack, PoolConfig, Stack, StackLocation, StackPool,
    Suspender,
};

/// The budget most tests give.
const BUDGET: usize = 64 << 10;
/// What the guard's own entry frames (catching panics) and the closure's
/// frame may take of a budget: the "small stated slack".
const SLACK: usize = 2 << 10;
const PAGE: usize = 4096;

/// Uses `N` bytes of stack: the buffer is zeroed (every byte written) and
/// handed to `black_box`, so it cannot be optimised away; Rust's stack
/// probes touch every page on the way down.
#[inline(never)]
fn use_stack<const N: usize>() -> u8 {
    let mut buf = [0u8; N];
    black_box(&mut buf);
    buf[N / 2]
}

/// Runs `f` on a fresh thread with a stack of `size` bytes.
fn on_thread<R: Send + 'static>(size: usize, f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .stack_size(size)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap_or_else(|p| panic::resume_unwind(p))
}

/// What a child process did.
struct Child {
    signal: Option<i32>,
    code: Option<i32>,
    stderr: String,
}

/// Whether this process is the child that runs `name`.
fn is_child(name: &str) -> bool {
    std::env::var("GUARD_CHILD").as_deref() == Ok(name)
}

/// Re-runs this test binary for the one test `name` with `GUARD_CHILD`
/// set, plus `env`.
fn run_child(name: &str, env: &[(&str, &str)]) -> Child {
    let out = common::self_command()
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("GUARD_CHILD", name)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the test binary again: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("--- child {name} stderr ---\n{stderr}--- end ---");
    Child {
        signal: out.status.signal(),
        code: out.status.code(),
        stderr,
    }
}

#[test]
fn budget_is_exact_on_thread_stack() {
    on_thread(4 << 20, || {
        let guard = StackGuard::new("exact_thread", BUDGET).mode(GuardMode::Enforce);
        // Whatever the caller has used, the closure starts with the budget
        // (less the guard's entry frames) above the guard page.
        for depth in [0usize, 100, 2000] {
            let left = deep(depth, &|| guard.run(|| remaining_stack().unwrap()).unwrap());
            assert!(
                (BUDGET - SLACK..=BUDGET).contains(&left),
                "depth {depth}: {left} bytes left of a {BUDGET}-byte budget"
            );
        }
        // A function using the budget less the slack fits.
        let v = guard.run(use_stack::<{ BUDGET - SLACK }>).unwrap();
        assert_eq!(v, 0);
    });
}

/// Recurses `n` frames (each over 100 bytes), then calls `f`.
#[inline(never)]
fn deep<R>(n: usize, f: &dyn Fn() -> R) -> R {
    let pad = black_box([n as u8; 100]);
    if n == 0 {
        return f();
    }
    let r = deep(n - 1, f);
    black_box(pad);
    r
}

/// Runs `f` on a fiber whose stack is a slot of a fresh 256 KiB pool.
fn on_pool_fiber<R: 'static>(f: impl FnOnce() -> R + 'static) -> R {
    let pool = StackPool::new(PoolConfig::default().stack_size(256 << 10).capacity(2)).unwrap();
    let mut fiber = Fiber::with_stack(
        pool.acquire().unwrap(),
        move |_: (), _: &Suspender<(), ()>| f(),
    )
    .unwrap();
    fiber.resume(()).returned().unwrap()
}

/// The child must have died of SIGABRT from our report; if not, say what
/// kind of guard the pool used (qemu-user 7.2 accepts `MADV_GUARD_INSTALL`
/// and ignores it, so marker guards do not fault there).
/// The child died of the abort the fault handler ends its report with.
fn assert_aborted(child: &Child) {
    assert_eq!(
        child.signal,
        Some(libc::SIGABRT),
        "status: {:?}",
        child.code
    );
}

fn assert_pool_guard_faulted(child: &Child) {
    assert_eq!(
        child.signal,
        Some(libc::SIGABRT),
        "status {:?}: the pool slot's guard ({:?}) did not stop the overflow",
        child.code,
        stackswitch::guard_kind()
    );
}

#[test]
fn budget_is_exact_on_pool_stack() {
    on_pool_fiber(|| {
        let here = 0u8;
        assert!(matches!(
            locate(black_box(&here) as *const u8 as usize),
            Some(StackLocation::PoolSlot { .. })
        ));
        let guard = StackGuard::new("exact_pool", BUDGET).mode(GuardMode::Enforce);
        for depth in [0usize, 50, 150] {
            let left = deep(depth, &|| guard.run(|| remaining_stack().unwrap()).unwrap());
            assert!(
                (BUDGET - SLACK..=BUDGET).contains(&left),
                "depth {depth}: {left} bytes left of a {BUDGET}-byte budget"
            );
        }
        assert_eq!(guard.run(use_stack::<{ BUDGET - SLACK }>).unwrap(), 0);
        // Measure on a pool slot too.
        let measure = StackGuard::new("measured_pool", BUDGET).mode(GuardMode::Measure);
        measure.run(use_stack::<20_000>).unwrap();
        let e = guard::peak_report().get("measured_pool").cloned().unwrap();
        assert!((20_000..=20_000 + SLACK).contains(&e.peak), "{}", e.peak);
    });
}

#[test]
fn over_budget_faults_on_pool_stack() {
    const NAME: &str = "over_budget_faults_on_pool_stack";
    if is_child(NAME) {
        on_pool_fiber(|| {
            let guard = StackGuard::new("h_pool", BUDGET).mode(GuardMode::Enforce);
            guard.run(use_stack::<{ BUDGET + PAGE }>).unwrap();
        });
        unreachable!("the guarded call must fault");
    }
    let child = run_child(NAME, &[]);
    assert_pool_guard_faulted(&child);
    assert!(child
        .stderr
        .contains("guarded host function `h_pool` overflowed its stack budget of 65536 bytes"));
    assert!(child.stderr.contains("in the guard region of pool region"));
    assert!(child.stderr.contains("slot 0"));
}

#[test]
fn pool_overflow_outside_a_guard_is_still_reported() {
    const NAME: &str = "pool_overflow_outside_a_guard_is_still_reported";
    if is_child(NAME) {
        guard::install_fault_handler().unwrap();
        on_pool_fiber(use_stack::<{ 512 << 10 }>);
        unreachable!("the fiber must overflow");
    }
    let child = run_child(NAME, &[]);
    assert_pool_guard_faulted(&child);
    assert!(child
        .stderr
        .contains("stack overflow with no guarded host function active on this stack"));
    assert!(child.stderr.contains("pool region"));
}

#[test]
fn over_budget_faults_on_thread_stack() {
    const NAME: &str = "over_budget_faults_on_thread_stack";
    if is_child(NAME) {
        on_thread(1 << 20, || {
            let guard = StackGuard::new("h_thread", BUDGET).mode(GuardMode::Enforce);
            guard.run(use_stack::<{ BUDGET + PAGE }>).unwrap();
        });
        unreachable!("the guarded call must fault");
    }
    let child = run_child(NAME, &[]);
    assert_aborted(&child);
    assert!(child
        .stderr
        .contains("guarded host function `h_thread` overflowed its stack budget of 65536 bytes"));
    assert!(child
        .stderr
        .contains("in the guard region of this thread's stack"));
}

#[test]
fn nested_overflow_names_the_innermost_guard() {
    const NAME: &str = "nested_overflow_names_the_innermost_guard";
    if is_child(NAME) {
        on_thread(1 << 20, || {
            let outer = StackGuard::new("outer_fn", BUDGET).mode(GuardMode::Enforce);
            let inner = StackGuard::new("inner_fn", 16 << 10).mode(GuardMode::Enforce);
            outer
                .run(|| inner.run(use_stack::<{ 20 << 10 }>))
                .unwrap()
                .unwrap();
        });
        unreachable!("the inner call must fault");
    }
    let child = run_child(NAME, &[]);
    assert_aborted(&child);
    assert!(child
        .stderr
        .contains("`inner_fn` overflowed its stack budget of 16384 bytes"));
    assert!(!child.stderr.contains("outer_fn"));
}

/// Guards nested `NESTED.len()` deep (more than the fault handler keeps),
/// each with `STEP` less than the one around it (room for a level's frames,
/// unoptimised too); the innermost overflows.
const NESTED: [&str; 10] = [
    "nest0", "nest1", "nest2", "nest3", "nest4", "nest5", "nest6", "nest7", "nest8", "nest9",
];

const STEP: usize = 4 << 10;

fn nest(level: usize) -> u8 {
    let budget = BUDGET - level * STEP;
    let guard = StackGuard::new(NESTED[level], budget).mode(GuardMode::Enforce);
    guard
        .run(|| {
            if level + 1 == NESTED.len() {
                use_stack::<{ BUDGET - 9 * STEP + PAGE }>()
            } else {
                nest(level + 1)
            }
        })
        .unwrap()
}

#[test]
fn deeply_nested_overflow_names_the_innermost_guard() {
    const NAME: &str = "deeply_nested_overflow_names_the_innermost_guard";
    if is_child(NAME) {
        on_thread(1 << 20, || nest(0));
        unreachable!("the innermost call must fault");
    }
    let child = run_child(NAME, &[]);
    assert_aborted(&child);
    let innermost = BUDGET - 9 * STEP;
    assert!(
        child.stderr.contains(&format!(
            "`nest9` overflowed its stack budget of {innermost} bytes"
        )),
        "{}",
        child.stderr
    );
}

#[test]
fn overflow_under_an_outer_guard_names_it() {
    // A guarded call on the thread resumes a fiber that suspends inside a
    // guarded call of its own: back on the thread, the innermost guarded
    // call on this thread is the fiber's, but an overflow of the thread's
    // stack is the outer call's.
    const NAME: &str = "overflow_under_an_outer_guard_names_it";
    if is_child(NAME) {
        on_thread(1 << 20, || {
            let outer = StackGuard::new("outer_on_thread", BUDGET).mode(GuardMode::Enforce);
            outer
                .run(|| {
                    let pool =
                        StackPool::new(PoolConfig::default().stack_size(256 << 10).capacity(1))
                            .unwrap();
                    let mut fiber = Fiber::with_stack(
                        pool.acquire().unwrap(),
                        |_: (), s: &Suspender<(), ()>| {
                            let inner = StackGuard::new("inner_on_fiber", 16 << 10)
                                .mode(GuardMode::Enforce);
                            inner.run(|| s.suspend(())).unwrap();
                        },
                    )
                    .unwrap();
                    assert!(fiber.resume(()).yielded().is_some());
                    use_stack::<{ BUDGET + PAGE }>()
                })
                .unwrap();
        });
        unreachable!("the outer call must fault");
    }
    let child = run_child(NAME, &[]);
    assert_aborted(&child);
    assert!(child
        .stderr
        .contains("`outer_on_thread` overflowed its stack budget of 65536 bytes"));
    assert!(!child.stderr.contains("inner_on_fiber"));
}

#[test]
fn thread_without_alternate_stack_gets_one() {
    const NAME: &str = "thread_without_alternate_stack_gets_one";
    if is_child(NAME) {
        on_thread(1 << 20, || {
            let off = libc::stack_t {
                ss_sp: std::ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            // SAFETY: disables this thread's alternate signal stack; we are
            // not running on it.
            assert_eq!(unsafe { libc::sigaltstack(&off, std::ptr::null_mut()) }, 0);
            let guard = StackGuard::new("h_no_altstack", BUDGET).mode(GuardMode::Enforce);
            guard.run(use_stack::<{ BUDGET + PAGE }>).unwrap();
        });
        unreachable!("the guarded call must fault");
    }
    let child = run_child(NAME, &[]);
    assert_aborted(&child);
    assert!(child.stderr.contains("`h_no_altstack` overflowed"));
}

#[test]
fn errors_name_the_numbers() {
    on_thread(256 << 10, || {
        let enforce = |budget| StackGuard::new("err", budget).mode(GuardMode::Enforce);
        match enforce(MIN_BUDGET - 1).run(|| ()) {
            Err(e @ Error::BudgetTooSmall { budget, minimum }) => {
                assert_eq!((budget, minimum), (MIN_BUDGET - 1, MIN_BUDGET));
                assert!(e.to_string().contains("255 bytes"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // Larger than the whole stack.
        let size = stackswitch::StackBounds::current().unwrap().size();
        match enforce(1 << 20).run(|| ()) {
            Err(Error::BudgetTooLarge { budget, available }) => {
                assert_eq!((budget, available), (1 << 20, size));
            }
            other => panic!("{other:?}"),
        }
        // Fits the stack but not what the caller has left.
        let left = remaining_stack().unwrap();
        let err = enforce(left).run(|| ()).unwrap_err();
        match err {
            Error::BudgetTooLarge { budget, available } => {
                assert_eq!(budget, left);
                assert!(available < left, "{available}");
            }
            ref other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains(&format!("{left} bytes")), "{err}");
        // The closure never ran on an error, and Off never checks.
        assert_eq!(
            StackGuard::new("err", 1 << 30)
                .mode(GuardMode::Off)
                .run(|| 5)
                .unwrap(),
            5
        );
    });
}

/// Bytes left inside a guarded call under `guard`.
fn left_under(guard: StackGuard) -> usize {
    guard.run(|| remaining_stack().unwrap()).unwrap()
}

#[test]
fn each_call_is_budgeted_on_the_stack_it_runs_on() {
    // Calls on one thread move between its own stack and fibers on pool
    // slots, and pools come and go: every call gets exactly its budget on
    // the stack it runs on, whatever the previous call ran on.
    const SMALL: usize = 16 << 10;
    let guard = StackGuard::new("moving", SMALL).mode(GuardMode::Enforce);
    let exact = |place: &str, left: usize| {
        assert!(
            (SMALL - SLACK..=SMALL).contains(&left),
            "{place}: {left} bytes left of a {SMALL}-byte budget"
        );
    };
    on_thread(1 << 20, move || {
        exact("thread", left_under(guard));
        let pool_a =
            StackPool::new(PoolConfig::default().stack_size(256 << 10).capacity(2)).unwrap();
        // The fiber runs on A's upper slot (where a smaller mapping made
        // after A is gone usually lands: the kernel fills a gap from the top).
        let (mut stack_a, mut spare) = (pool_a.acquire().unwrap(), pool_a.acquire().unwrap());
        if spare.bounds().low > stack_a.bounds().low {
            std::mem::swap(&mut stack_a, &mut spare);
        }
        let (a_low, a_high) = (stack_a.bounds().low, stack_a.bounds().high);
        let mut on_a = Fiber::with_stack(stack_a, move |_: (), s: &Suspender<(), usize>| {
            let first = left_under(guard);
            s.suspend(first);
            left_under(guard)
        })
        .unwrap();
        exact("pool A", on_a.resume(()).yielded().unwrap());
        exact("thread after pool A", left_under(guard));
        let pool_b =
            StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(2)).unwrap();
        let mut on_b = Fiber::with_stack(
            pool_b.acquire().unwrap(),
            move |_: (), _: &Suspender<(), ()>| left_under(guard),
        )
        .unwrap();
        exact("pool B", on_b.resume(()).returned().unwrap());
        exact("pool A after pool B", on_a.resume(()).returned().unwrap());

        // Pool A goes and a pool with smaller slots takes (usually) its
        // addresses: a call on one of those slots runs inside the range
        // the last call on A found, and must not reuse that answer (its
        // lowered stack pointer would be in A's old memory, not in C).
        drop((on_a, spare, pool_a));
        let pool_c =
            StackPool::new(PoolConfig::default().stack_size(32 << 10).capacity(4)).unwrap();
        let stacks: Vec<_> = (0..4).map(|_| pool_c.acquire().unwrap()).collect();
        let inside = stacks
            .iter()
            .filter(|s| a_low <= s.bounds().low && s.bounds().high <= a_high)
            .count();
        println!("{inside} of pool C's 4 stacks lie where pool A's stack was");
        for stack in stacks {
            let mut on_c =
                Fiber::with_stack(stack, move |_: (), _: &Suspender<(), ()>| left_under(guard))
                    .unwrap();
            exact("pool C", on_c.resume(()).returned().unwrap());
        }

        // A stack the table does not know, after all of that, is an error.
        let mut on_mmap = Fiber::with_stack(
            MmapStack::new(256 << 10).unwrap(),
            move |_: (), _: &Suspender<(), ()>| guard.run(|| ()).unwrap_err(),
        )
        .unwrap();
        let err = on_mmap.resume(()).returned().unwrap();
        assert!(matches!(err, Error::UnknownStack), "{err:?}");
        exact("thread at the end", left_under(guard));
    });
}

/// The largest budget a guard accepts here, found by trying (the
/// guard's own frames make it a little less than what `remaining_stack`
/// says), and the closure's value under it.
fn at_the_edge() -> (usize, u64) {
    let left = remaining_stack().unwrap();
    let mut refused = false;
    for below in (0..left).step_by(16) {
        let guard = StackGuard::new("edge", left - below).mode(GuardMode::Enforce);
        match guard.run(|| use_stack::<512>() as u64 + 1) {
            Ok(v) => {
                assert!(refused, "a budget of all that is left was accepted");
                return (left - below, v);
            }
            Err(Error::BudgetTooLarge { .. }) => refused = true,
            Err(e) => panic!("{e}"),
        }
    }
    unreachable!("no budget accepted")
}

#[test]
fn the_largest_accepted_budget_runs() {
    // The closure's frames start right below the lowered stack pointer;
    // whatever the switch keeps on the caller's side must be above it.
    let (_, v) = on_thread(1 << 20, at_the_edge);
    assert_eq!(v, 1);
    let (_, v) = on_pool_fiber(at_the_edge);
    assert_eq!(v, 1);
}

#[test]
fn unknown_stack_is_an_error_unless_off() {
    let mut fiber = Fiber::with_stack(
        MmapStack::new(256 << 10).unwrap(),
        |_: (), _: &Suspender<(), ()>| {
            let enforce = StackGuard::new("mmap", 16 << 10).mode(GuardMode::Enforce);
            let measure = enforce.mode(GuardMode::Measure);
            let off = enforce.mode(GuardMode::Off);
            let mut ran = 0;
            let e1 = enforce.run(|| ran += 1).unwrap_err();
            let e2 = measure.run(|| ran += 1).unwrap_err();
            off.run(|| ran += 1).unwrap();
            (
                matches!(e1, Error::UnknownStack),
                matches!(e2, Error::UnknownStack),
                ran,
            )
        },
    )
    .unwrap();
    assert_eq!(fiber.resume(()).returned(), Some((true, true, 1)));
}

#[test]
fn panics_are_resumed_on_the_callers_stack() {
    let guard = StackGuard::new("panicky", BUDGET).mode(GuardMode::Enforce);
    let before = remaining_stack().unwrap();
    let caught = panic::catch_unwind(|| {
        guard
            .run(|| -> u32 { panic!("boom at {}", black_box(7)) })
            .unwrap()
    })
    .unwrap_err();
    assert_eq!(caught.downcast_ref::<String>().unwrap(), "boom at 7");
    // Back on the caller's stack, and the guard works again.
    let after = remaining_stack().unwrap();
    assert!(before.abs_diff(after) < 4096, "{before} vs {after}");
    let v = guard.run(|| vec![1, 2, 3]).unwrap();
    assert_eq!(v, [1, 2, 3]);
}

#[test]
fn values_come_back_and_guards_nest() {
    let outer = StackGuard::new("outer", BUDGET).mode(GuardMode::Enforce);
    let inner = StackGuard::new("inner", 16 << 10).mode(GuardMode::Enforce);
    let (s, inner_left) = outer
        .run(|| {
            let left = inner.run(|| remaining_stack().unwrap()).unwrap();
            (String::from("from the budget stack"), left)
        })
        .unwrap();
    assert_eq!(s, "from the budget stack");
    assert!(((16 << 10) - SLACK..=16 << 10).contains(&inner_left));
    // A nested budget larger than what the outer one has left is refused.
    let err = outer.run(|| {
        StackGuard::new("too_big", BUDGET)
            .mode(GuardMode::Enforce)
            .run(|| ())
    });
    assert!(
        matches!(err, Ok(Err(Error::BudgetTooLarge { .. }))),
        "{err:?}"
    );
}

#[test]
fn off_calls_directly_on_the_callers_stack() {
    let off = StackGuard::new("off", 16 << 10).mode(GuardMode::Off);
    let outside = remaining_stack().unwrap();
    let inside = off.run(|| remaining_stack().unwrap()).unwrap();
    assert!(
        inside <= outside && outside - inside < 1024,
        "{outside} {inside}"
    );
    assert!(inside > 16 << 10);
}

#[test]
fn measure_reports_the_peak() {
    const X: usize = 20_000;
    on_thread(1 << 20, || {
        let guard = StackGuard::new("measured_h", BUDGET).mode(GuardMode::Measure);
        for _ in 0..3 {
            guard.run(use_stack::<X>).unwrap();
        }
        guard.run(|| ()).unwrap(); // a shallow call does not lower the peak
        let report = guard::peak_report();
        let e = report.get("measured_h").unwrap();
        assert_eq!((e.calls, e.budget), (4, BUDGET));
        assert!(
            (X..=X + SLACK).contains(&e.peak),
            "peak {} for a function using {X}",
            e.peak
        );
        let table = report.to_string();
        assert!(table.starts_with("function"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("measured_h") && l.contains(&e.peak.to_string())),
            "{table}"
        );
        println!("{table}");
    });
}

#[test]
fn measure_still_enforces() {
    const NAME: &str = "measure_still_enforces";
    if is_child(NAME) {
        on_thread(1 << 20, || {
            let guard = StackGuard::new("measured_over", BUDGET).mode(GuardMode::Measure);
            guard.run(use_stack::<{ BUDGET + PAGE }>).unwrap();
        });
        unreachable!("the guarded call must fault");
    }
    let child = run_child(NAME, &[]);
    assert_aborted(&child);
    assert!(child.stderr.contains("`measured_over` overflowed"));
}

#[test]
fn default_mode_comes_from_the_environment() {
    const NAME: &str = "default_mode_comes_from_the_environment";
    if is_child(NAME) {
        let expect = std::env::var("EXPECT").unwrap();
        assert_eq!(format!("{:?}", guard::default_mode()), expect);
        // A guard without its own mode follows the default...
        let g = StackGuard::new("env", 16 << 10);
        assert_eq!(format!("{:?}", g.effective_mode()), expect);
        // ...and set_default_mode overrides the environment.
        guard::set_default_mode(GuardMode::Enforce);
        assert_eq!(g.effective_mode(), GuardMode::Enforce);
        println!("CHILD OK");
        return;
    }
    for (value, expect) in [
        ("measure", "Measure"),
        ("ENFORCE", "Enforce"),
        ("off", "Off"),
        ("sometimes", "Off"),
    ] {
        let child = run_child(NAME, &[(guard::GUARD_MODE_ENV, value), ("EXPECT", expect)]);
        assert_eq!(child.code, Some(0), "{value}: {}", child.stderr);
        if value == "sometimes" {
            assert!(
                child.stderr.contains("\"sometimes\" names no guard mode"),
                "{}",
                child.stderr
            );
        }
    }
}

/// Maps one inaccessible page that belongs to no stack.
fn foreign_page() -> *mut u8 {
    // SAFETY: a fresh anonymous mapping; nothing else uses it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p.cast()
}

extern "C" fn siginfo_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let msg = b"previous SA_SIGINFO handler saw the fault\n";
    // SAFETY: write and _exit are async-signal-safe; info is the kernel's.
    unsafe {
        let _ = (*info).si_addr();
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(42);
    }
}

extern "C" fn plain_handler(_: libc::c_int) {
    let msg = b"previous plain handler saw the fault\n";
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(43);
    }
}

/// Sets the SIGSEGV disposition, installs ours over it, runs a guarded
/// call (so ours is fully set up on this thread) and faults on a page that
/// is no stack's guard.
fn fault_elsewhere(handler: usize, flags: libc::c_int) -> ! {
    // SAFETY: zeroed is a valid sigaction; we fill handler and flags.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    action.sa_flags = flags;
    // SAFETY: installs a complete disposition.
    assert_eq!(
        unsafe { libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut()) },
        0
    );
    guard::install_fault_handler().unwrap();
    StackGuard::new("bystander", BUDGET)
        .mode(GuardMode::Enforce)
        .run(|| ())
        .unwrap();
    let page = foreign_page();
    // SAFETY: deliberately reads an inaccessible page to fault.
    let v = unsafe { std::ptr::read_volatile(page) };
    panic!("read {v} from an inaccessible page");
}

#[test]
fn fault_elsewhere_reaches_previous_siginfo_handler() {
    const NAME: &str = "fault_elsewhere_reaches_previous_siginfo_handler";
    if is_child(NAME) {
        fault_elsewhere(
            siginfo_handler as extern "C" fn(_, _, _) as usize,
            libc::SA_SIGINFO,
        );
    }
    let child = run_child(NAME, &[]);
    assert_eq!(child.code, Some(42), "signal {:?}", child.signal);
    assert!(child
        .stderr
        .contains("previous SA_SIGINFO handler saw the fault"));
    assert!(!child.stderr.contains("stackswitch:"));
}

#[test]
fn fault_elsewhere_reaches_previous_plain_handler() {
    const NAME: &str = "fault_elsewhere_reaches_previous_plain_handler";
    if is_child(NAME) {
        fault_elsewhere(plain_handler as extern "C" fn(_) as usize, 0);
    }
    let child = run_child(NAME, &[]);
    assert_eq!(child.code, Some(43), "signal {:?}", child.signal);
    assert!(child
        .stderr
        .contains("previous plain handler saw the fault"));
}

#[test]
fn fault_elsewhere_with_default_disposition_dies_of_sigsegv() {
    const NAME: &str = "fault_elsewhere_with_default_disposition_dies_of_sigsegv";
    if is_child(NAME) {
        fault_elsewhere(libc::SIG_DFL, 0);
    }
    let child = run_child(NAME, &[]);
    assert_eq!(child.signal, Some(libc::SIGSEGV), "code {:?}", child.code);
    assert!(!child.stderr.contains("stackswitch:"));
}

#[test]
fn thread_overflow_outside_a_guard_is_left_to_rust() {
    const NAME: &str = "thread_overflow_outside_a_guard_is_left_to_rust";
    if is_child(NAME) {
        guard::install_fault_handler().unwrap();
        on_thread(256 << 10, || {
            // Sets up the thread for guards, then overflows outside one.
            StackGuard::new("unused", 16 << 10)
                .mode(GuardMode::Enforce)
                .run(|| ())
                .unwrap();
            use_stack::<{ 512 << 10 }>()
        });
        unreachable!("the thread must overflow");
    }
    let child = run_child(NAME, &[]);
    assert_eq!(child.signal, Some(libc::SIGABRT), "code {:?}", child.code);
    assert!(
        child.stderr.contains("has overflowed its stack"),
        "{}",
        child.stderr
    );
    assert!(!child.stderr.contains("stackswitch:"));
}
