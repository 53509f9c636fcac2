//! Backtraces that cross fibers: in gdb, and from `std::backtrace`.
//!
//! The fiber trampoline's CFI leads an unwinder from a fiber's first frame
//! to the frames of whoever resumed it. These tests check it end to end:
//! gdb stops inside a fiber that was resumed from inside another fiber, and
//! `bt` must list the functions that resumed each of them, innermost first.
//!
//! gdb runs this very test binary (no separate example to build): the test
//! `gdb_target` does nothing unless an environment variable says it is being
//! driven by gdb. Under qemu-user (the aarch64 tests in CI) qemu runs it
//! with a gdb stub and `gdb-multiarch` attaches.
//!
//! gdb refuses a caller frame whose stack address is below its callee's
//! ("previous frame inner to this frame (corrupt stack?)") unless the callee
//! is a signal frame. A fiber's resumer is on another stack, anywhere in
//! memory, so the trampoline's FDE carries the signal-frame mark
//! (`.cfi_signal_frame`); the tests run both address orders.

use std::backtrace::Backtrace;
use std::process::Command;

use stackswitch::{Fiber, FiberResult, MmapStack, Stack, Suspender};

/// Set in the environment of the process gdb runs.
const TARGET_ENV: &str = "STACKSWITCH_GDB_TARGET";

/// Where gdb stops: called on the innermost fiber's stack.
#[no_mangle]
#[inline(never)]
pub extern "C" fn stackswitch_test_inside_fiber(x: u64) -> u64 {
    std::hint::black_box(x) + 1
}

/// Resumes the inner fiber on `inner`; runs on the outer fiber's stack.
#[no_mangle]
#[inline(never)]
pub fn stackswitch_test_inner_resumer(x: u64, inner: MmapStack) -> u64 {
    let mut inner = Fiber::with_stack(inner, |x: u64, _: &Suspender<u64, ()>| {
        stackswitch_test_inside_fiber(x)
    })
    .unwrap();
    match inner.resume(x) {
        FiberResult::Return(r) => std::hint::black_box(r),
        FiberResult::Yield(()) => unreachable!(),
    }
}

/// Resumes the outer fiber on `outer`, which resumes the inner one on
/// `inner`; runs on the thread's own stack.
#[no_mangle]
#[inline(never)]
pub fn stackswitch_test_outer_resumer(x: u64, outer: MmapStack, inner: MmapStack) -> u64 {
    let mut outer = Fiber::with_stack(outer, move |x: u64, _: &Suspender<u64, ()>| {
        stackswitch_test_inner_resumer(x, inner)
    })
    .unwrap();
    match outer.resume(x) {
        FiberResult::Return(r) => std::hint::black_box(r),
        FiberResult::Yield(()) => unreachable!(),
    }
}

/// `n` stacks, lowest address first.
fn stacks_ascending(n: usize) -> Vec<MmapStack> {
    let mut v: Vec<MmapStack> = (0..n).map(|_| MmapStack::new(64 << 10).unwrap()).collect();
    v.sort_by_key(|s| s.bounds().low);
    v
}

/// The program gdb runs (a no-op in a normal test run). The variable says
/// where the inner fiber's stack lies: `inner-below` the outer fiber's (the
/// order fresh mmaps usually come in) or `inner-above` it.
#[test]
fn gdb_target() {
    let Some(order) = std::env::var_os(TARGET_ENV) else {
        return;
    };
    let mut s = stacks_ascending(2);
    let (high, low) = (s.pop().unwrap(), s.pop().unwrap());
    let (outer, inner) = if order == "inner-above" {
        (low, high)
    } else {
        (high, low)
    };
    assert_eq!(stackswitch_test_outer_resumer(41, outer, inner), 42);
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

/// Whether this process is emulated by qemu-user (how CI runs the aarch64
/// tests): it is then named after qemu.
fn under_qemu() -> bool {
    std::fs::read_to_string("/proc/self/comm").is_ok_and(|c| c.trim() == "qemu-aarch64")
}

/// Whether `program` can be run; if not, a failure in CI (which installs
/// it), a printed skip elsewhere.
fn have(program: &str, package: &str) -> bool {
    if Command::new(program).arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{program} is not installed (apt-get install {package})"
    );
    println!("SKIPPED gdb backtrace test: {program} is not installed");
    false
}

/// The gdb commands: stop in the innermost fiber, print the backtrace.
const GDB_COMMANDS: [&str; 4] = [
    "set debuginfod enabled off",
    "set pagination off",
    "break stackswitch_test_inside_fiber",
    "set confirm off",
];

/// gdb runs this binary itself.
fn gdb_native(order: &str) -> Option<std::process::Output> {
    if !have("gdb", "gdb") {
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx"]);
    for c in GDB_COMMANDS {
        gdb.args(["-ex", c]);
    }
    let out = gdb
        .args(["-ex", "run", "-ex", "bt", "-ex", "kill"])
        .arg("--args")
        .arg(&exe)
        .args(["--exact", "gdb_target", "--test-threads=1"])
        .env(TARGET_ENV, order)
        .output()
        .expect("run gdb");
    Some(out)
}

/// Under qemu-user: qemu runs this binary with a gdb stub (`-g port`) and
/// gdb-multiarch attaches to it.
fn gdb_under_qemu(order: &str) -> Option<std::process::Output> {
    if !have("gdb-multiarch", "gdb-multiarch") {
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    // A port nobody listens on now (the stub binds it right away).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
        .to_string();
    let mut target = Command::new("qemu-aarch64")
        .args(["-g", &port, "-L", "/usr/aarch64-linux-gnu"])
        .arg(&exe)
        .args(["--exact", "gdb_target", "--test-threads=1"])
        .env(TARGET_ENV, order)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start qemu-aarch64 with a gdb stub");
    let mut gdb = Command::new("gdb-multiarch");
    gdb.args(["-batch", "-nx"])
        .args(["-ex", "set sysroot /usr/aarch64-linux-gnu"])
        .args(["-ex", &format!("file {}", exe.display())]);
    for c in GDB_COMMANDS {
        gdb.args(["-ex", c]);
    }
    let out = gdb
        .args(["-ex", &format!("target remote 127.0.0.1:{port}")])
        .args(["-ex", "continue", "-ex", "bt", "-ex", "kill"])
        .output()
        .expect("run gdb-multiarch");
    let _ = target.kill();
    let _ = target.wait();
    Some(out)
}

/// Runs `gdb_target` under gdb with the stacks in `order`, stops in the
/// innermost fiber, and checks that `bt` walks through both resumers to
/// the test harness on the thread's stack.
fn gdb_backtrace(order: &str) {
    let out = if under_qemu() {
        gdb_under_qemu(order)
    } else {
        gdb_native(order)
    };
    let Some(out) = out else { return };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        stdout.contains("Breakpoint 1, "),
        "gdb did not stop in the fiber:\n{stdout}\n{stderr}"
    );
    let bt: String = stdout
        .lines()
        .filter(|l| l.starts_with('#') || l.starts_with("Backtrace stopped"))
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
    // and gdb did not give up on a frame it thought corrupt.
    assert!(bt.contains("__rust_begin_short_backtrace"), "{bt}");
    assert!(
        !bt.contains("Backtrace stopped") && !stderr.contains("corrupt stack"),
        "{bt}\n{stderr}"
    );
}

#[test]
fn gdb_backtrace_inside_a_nested_fiber_shows_its_resumers() {
    gdb_backtrace("inner-below");
}

/// The same with each fiber's resumer on a stack *below* the fiber's. gdb
/// refuses a caller frame at a lower address than its callee ("previous
/// frame inner to this frame (corrupt stack?)") unless the callee is a
/// signal frame; the trampoline's CIE does not say it is one yet.
#[test]
fn gdb_backtrace_reaches_a_resumer_whose_stack_is_below_the_fiber() {
    gdb_backtrace("inner-above");
}

thread_local! {
    static CAPTURED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Captures a backtrace from inside the innermost of nested fibers, one per
/// stack in `stacks` (the last one outermost).
#[no_mangle]
#[inline(never)]
pub fn stackswitch_test_capture_level(mut stacks: Vec<MmapStack>) {
    let Some(stack) = stacks.pop() else {
        let bt = Backtrace::force_capture();
        CAPTURED.with(|c| *c.borrow_mut() = bt.to_string());
        return;
    };
    let depth = stacks.len() as u32;
    let mut f = Fiber::with_stack(stack, move |(): (), s: &Suspender<(), u32>| {
        stackswitch_test_capture_level(stacks);
        s.suspend(depth);
    })
    .unwrap();
    assert_eq!(f.resume(()), FiberResult::Yield(depth));
    assert_eq!(f.resume(()), FiberResult::Return(()));
}

/// Runs three nested fibers on `stacks` and checks the backtrace captured
/// in the innermost.
fn std_backtrace(stacks: Vec<MmapStack>) {
    stackswitch_test_capture_level(stacks);
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

#[test]
fn std_backtrace_in_nested_fibers_shows_the_outer_resumers() {
    // Outermost fiber on the highest stack: each fiber's stack below its
    // resumer's.
    std_backtrace(stacks_ascending(3));
}

#[test]
fn std_backtrace_crosses_to_resumers_on_lower_stacks() {
    // Outermost fiber on the lowest stack: each fiber's stack above its
    // resumer's.
    let mut stacks = stacks_ascending(3);
    stacks.reverse();
    std_backtrace(stacks);
}
