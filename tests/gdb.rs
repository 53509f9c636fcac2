//! Backtraces that cross fibers: in gdb, and from `std::backtrace`.
//!
//! The fiber trampoline's CFI leads an unwinder from a fiber's first frame
//! to the frames of whoever resumed it. These tests check it end to end:
//! gdb stops inside a fiber that was resumed from inside another fiber, and
//! `bt` must list the functions that resumed each of them, innermost first.
//!
//! gdb runs this very test binary (no separate example to build): the test
//! `gdb_target` does nothing unless an environment variable says it is being
//! driven by gdb.

use std::backtrace::Backtrace;
use std::process::Command;

use stackswitch::{Fiber, FiberResult, Suspender};

/// Set in the environment of the process gdb runs.
const TARGET_ENV: &str = "STACKSWITCH_GDB_TARGET";

/// Where gdb stops: called on the innermost fiber's stack.
#[no_mangle]
#[inline(never)]
pub extern "C" fn stackswitch_test_inside_fiber(x: u64) -> u64 {
    std::hint::black_box(x) + 1
}

/// Resumes the inner fiber; runs on the outer fiber's stack.
#[no_mangle]
#[inline(never)]
pub extern "C" fn stackswitch_test_inner_resumer(x: u64) -> u64 {
    let mut inner = Fiber::new(64 << 10, |x: u64, _: &Suspender<u64, ()>| {
        stackswitch_test_inside_fiber(x)
    })
    .unwrap();
    match inner.resume(x) {
        FiberResult::Return(r) => std::hint::black_box(r),
        FiberResult::Yield(()) => unreachable!(),
    }
}

/// Resumes the outer fiber; runs on the thread's own stack.
#[no_mangle]
#[inline(never)]
pub extern "C" fn stackswitch_test_outer_resumer(x: u64) -> u64 {
    let mut outer = Fiber::new(64 << 10, |x: u64, _: &Suspender<u64, ()>| {
        stackswitch_test_inner_resumer(x)
    })
    .unwrap();
    match outer.resume(x) {
        FiberResult::Return(r) => std::hint::black_box(r),
        FiberResult::Yield(()) => unreachable!(),
    }
}

/// The program gdb runs (a no-op in a normal test run).
#[test]
fn gdb_target() {
    if std::env::var_os(TARGET_ENV).is_some() {
        assert_eq!(stackswitch_test_outer_resumer(41), 42);
    }
}

/// Frames of `text` that name one of our functions, in order.
fn our_frames(text: &str) -> Vec<&'static str> {
    const NAMES: [&str; 3] = [
        "stackswitch_test_inside_fiber",
        "stackswitch_test_inner_resumer",
        "stackswitch_test_outer_resumer",
    ];
    let mut found = Vec::new();
    for line in text.lines() {
        for name in NAMES {
            if line.contains(name) && found.last() != Some(&name) {
                found.push(name);
            }
        }
    }
    found
}

#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "drives the host gdb, which cannot debug an aarch64 binary under qemu-user"
)]
fn gdb_backtrace_inside_a_nested_fiber_shows_its_resumers() {
    let gdb_present = Command::new("gdb").arg("--version").output().is_ok();
    if !gdb_present {
        // CI installs gdb; there, a missing gdb is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "gdb is not installed (apt-get install gdb)"
        );
        println!("SKIPPED gdb_backtrace_inside_a_nested_fiber_shows_its_resumers: no gdb");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("gdb")
        .args(["-batch", "-nx"])
        .args(["-ex", "set debuginfod enabled off"])
        .args(["-ex", "set pagination off"])
        .args(["-ex", "break stackswitch_test_inside_fiber"])
        .args(["-ex", "run"])
        .args(["-ex", "bt"])
        .args(["-ex", "kill"])
        .arg("--args")
        .arg(&exe)
        .args(["--exact", "gdb_target", "--test-threads=1"])
        .env(TARGET_ENV, "1")
        .output()
        .expect("run gdb");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        stdout.contains("Breakpoint 1, "),
        "gdb did not stop in the fiber:\n{stdout}\n{stderr}"
    );
    let bt: String = stdout
        .lines()
        .filter(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        our_frames(&bt),
        [
            "stackswitch_test_inside_fiber",
            "stackswitch_test_inner_resumer",
            "stackswitch_test_outer_resumer",
        ],
        "bt did not cross both fibers into their resumers:\n{bt}\n{stderr}"
    );
    // The walk reaches the test harness on the thread's stack, past both
    // fibers (the test function itself may be inlined into it in release),
    // and gdb did not give up on a corrupt frame.
    assert!(bt.contains("__rust_begin_short_backtrace"), "{bt}");
    assert!(
        !bt.contains("corrupt stack") && !stderr.contains("previous frame identical"),
        "{bt}\n{stderr}"
    );
}

thread_local! {
    static CAPTURED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Captures a backtrace from inside the innermost of three nested fibers.
#[no_mangle]
#[inline(never)]
pub extern "C" fn stackswitch_test_capture_level(depth: u32) {
    if depth == 0 {
        let bt = Backtrace::force_capture();
        CAPTURED.with(|c| *c.borrow_mut() = bt.to_string());
        return;
    }
    let mut f = Fiber::new(64 << 10, move |(): (), s: &Suspender<(), u32>| {
        stackswitch_test_capture_level(depth - 1);
        s.suspend(depth);
    })
    .unwrap();
    assert_eq!(f.resume(()), FiberResult::Yield(depth));
    assert_eq!(f.resume(()), FiberResult::Return(()));
}

#[test]
fn std_backtrace_in_nested_fibers_shows_the_outer_resumers() {
    stackswitch_test_capture_level(3);
    let text = CAPTURED.with(|c| c.borrow().clone());
    // One frame of the capturing function per level: the innermost call on
    // the third fiber, and the three that made and resumed each fiber, on
    // the second fiber, the first fiber and this thread's stack.
    let levels = text
        .lines()
        .filter(|l| {
            l.trim_start()
                .split_once(": ")
                .is_some_and(|(_, name)| name == "stackswitch_test_capture_level")
        })
        .count();
    assert_eq!(levels, 4, "backtrace did not cross three fibers:\n{text}");
    // And past them, the test harness on the thread's own stack.
    assert!(text.contains("__rust_begin_short_backtrace"), "{text}");
}
