//! Fault injection: what happens when the kernel says no.
//!
//! Each test that changes a process-wide limit runs its body in a child
//! process: the test binary re-executes itself with `--exact <name>` and an
//! environment variable that selects the body, and the parent checks that
//! the child exited cleanly and printed what the body promised.

use std::io;
use std::process::Command;

use stackswitch::{Error, Fiber, MmapStack, Suspender, MIN_STACK_SIZE};

/// Environment variable naming the test whose child body should run.
const CHILD_ENV: &str = "STACKSWITCH_FAULT_CHILD";

/// In the parent: re-runs this test binary for test `name` only, with
/// `env` set, and returns the child's stdout after checking it succeeded.
/// In the child (the variable names this test): returns `None`, and the
/// caller runs the body.
fn in_child(name: &str, env: &[(&str, &str)]) -> Option<String> {
    if std::env::var(CHILD_ENV).is_ok_and(|v| v == name) {
        return None;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .envs(env.iter().copied())
        .output()
        .expect("spawn child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child for {name} failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // The child must really have run the test (not filtered it away).
    assert!(
        stdout.contains("1 passed"),
        "child for {name} ran nothing:\n{stdout}"
    );
    Some(stdout)
}

/// Mappings of this process (lines of `/proc/self/maps`).
fn map_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .count()
}

/// Virtual size of this process in bytes (`VmSize` of `/proc/self/status`).
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmSize:"))
        .expect("VmSize");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmSize in kB");
    kib << 10
}

/// Caps this process's address space at its current size plus `extra`.
fn limit_address_space(extra: u64) {
    let cap = vm_size() + extra;
    let lim = libc::rlimit {
        rlim_cur: cap,
        rlim_max: cap,
    };
    // SAFETY: setrlimit reads the struct; lowering a limit is always allowed.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) };
    assert_eq!(rc, 0, "setrlimit: {}", io::Error::last_os_error());
}

/// Makes stacks of `size` until one fails; returns them and the error.
fn fill(size: usize) -> (Vec<MmapStack>, Error) {
    let mut stacks = Vec::with_capacity(1 << 16);
    loop {
        match MmapStack::new(size) {
            Ok(s) => stacks.push(s),
            Err(e) => return (stacks, e),
        }
    }
}

#[test]
fn address_space_limit_makes_creation_fail_cleanly() {
    const NAME: &str = "address_space_limit_makes_creation_fail_cleanly";
    if let Some(out) = in_child(NAME, &[]) {
        assert!(out.contains("rlimit-ok"), "{out}");
        println!("{}", out.lines().find(|l| l.contains("rlimit-ok")).unwrap());
        return;
    }
    const SIZE: usize = 64 << 10;
    // Room for a few hundred stacks, and for the test harness to finish.
    limit_address_space(48 << 20);
    let maps_before = map_count();

    // A stack larger than the whole limit: an error naming mmap and ENOMEM.
    let err = MmapStack::new(1 << 30).unwrap_err();
    assert!(
        matches!(&err, Error::Mmap { bytes, source }
            if *bytes > 1 << 30 && source.raw_os_error() == Some(libc::ENOMEM)),
        "{err}"
    );
    assert!(err.to_string().contains("mmap of"), "{err}");
    let err = Fiber::new(1 << 30, |(): (), _: &Suspender<(), ()>| ()).unwrap_err();
    assert!(matches!(err, Error::Mmap { .. }), "{err}");

    // Fill the address space with stacks until the kernel refuses.
    let (stacks, err) = fill(SIZE);
    let first = stacks.len();
    assert!(first > 10, "only {first} stacks fit");
    assert!(
        matches!(&err, Error::Mmap { source, .. }
        if source.raw_os_error() == Some(libc::ENOMEM)),
        "{err}"
    );
    // A fiber on the last stack still runs: a failed creation broke nothing.
    let mut stacks = stacks;
    let mut fiber = Fiber::with_stack(stacks.pop().unwrap(), |x: u32, s: &Suspender<u32, u32>| {
        s.suspend(x + 1) * 2
    })
    .unwrap();
    assert_eq!(fiber.resume(1).yielded(), Some(2));
    assert_eq!(fiber.resume(5).returned(), Some(10));
    drop(fiber);
    drop(stacks);
    assert!(map_count() <= maps_before + 2, "mappings leaked");

    // Everything came back: as many stacks fit again.
    let (stacks, _) = fill(SIZE);
    assert!(
        stacks.len() + 1 >= first,
        "second round fit {} stacks, first {first}: address space leaked",
        stacks.len()
    );
    drop(stacks);
    println!("rlimit-ok: {first} stacks of {SIZE} bytes before ENOMEM");
}

#[test]
fn map_count_limit_is_named_in_the_error() {
    const NAME: &str = "map_count_limit_is_named_in_the_error";
    if let Some(out) = in_child(NAME, &[("STACKSWITCH_GUARD", "mprotect")]) {
        assert!(out.contains("vm.max_map_count"), "{out}");
        println!(
            "{}",
            out.lines()
                .find(|l| l.contains("vm.max_map_count"))
                .unwrap()
        );
        return;
    }
    assert_eq!(
        stackswitch::guard_kind(),
        stackswitch::GuardKind::Mprotect,
        "STACKSWITCH_GUARD=mprotect must force the fallback"
    );
    let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let maps_before = map_count();

    let (stacks, err) = fill(MIN_STACK_SIZE);
    let made = stacks.len();
    let msg = err.to_string();
    println!("after {made} stacks (limit {limit}): {msg}");
    assert!(
        matches!(&err, Error::MapCountLimit { limit: l, maps, source, .. }
            if *l == limit && *maps + 2 >= limit
                && source.raw_os_error() == Some(libc::ENOMEM)),
        "{err:?}"
    );
    assert!(msg.contains("vm.max_map_count") && msg.contains(&limit.to_string()));
    // Two mappings per stack: the limit, not memory, stopped us.
    assert!(made * 2 + maps_before + 4 >= limit, "{made} stacks");

    // A fiber cannot be made now either, and says why.
    let err = Fiber::new(MIN_STACK_SIZE, |(): (), _: &Suspender<(), ()>| ()).unwrap_err();
    assert!(err.to_string().contains("vm.max_map_count"), "{err}");

    drop(stacks);
    assert!(map_count() <= maps_before + 2, "mappings leaked");
    // And after freeing them, stacks can be made again.
    let mut f = Fiber::new(MIN_STACK_SIZE, |x: u8, _: &Suspender<u8, ()>| x).unwrap();
    assert_eq!(f.resume(3).returned(), Some(3));
}
