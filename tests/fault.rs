//! Fault injection: what happens when the kernel says no.
//!
//! Each test that changes a process-wide limit runs its body in a child
//! process: the test binary re-executes itself with `--exact <name>` and an
//! environment variable that selects the body, and the parent checks that
//! the child exited cleanly and printed what the body promised.

use std::io;
use std::sync::Barrier;

use stackswitch::{Error, Fiber, MmapStack, PoolConfig, StackPool, Suspender, MIN_STACK_SIZE};

mod common;

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
    let out = common::self_command()
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
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "aarch64 is tested under qemu-user, which does not apply RLIMIT_AS to the guest"
)]
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
        matches!(&err, Error::MapCountLimit { limit: l, source, .. }
            if *l == limit && source.raw_os_error() == Some(libc::ENOMEM)),
        "{err:?}"
    );
    assert!(msg.contains("vm.max_map_count") && msg.contains(&limit.to_string()));
    // Two mappings per stack: the limit, not memory, stopped us (give or
    // take the mappings the process had, more than it sees under qemu).
    assert!(made * 2 + maps_before + 1000 >= limit, "{made} stacks");

    // A fiber cannot be made now either, and says why.
    let err = Fiber::new(MIN_STACK_SIZE, |(): (), _: &Suspender<(), ()>| ()).unwrap_err();
    assert!(err.to_string().contains("vm.max_map_count"), "{err}");

    drop(stacks);
    assert!(map_count() <= maps_before + 2, "mappings leaked");
    // And after freeing them, stacks can be made again.
    let mut f = Fiber::new(MIN_STACK_SIZE, |x: u8, _: &Suspender<u8, ()>| x).unwrap();
    assert_eq!(f.resume(3).returned(), Some(3));
}

#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "aarch64 is tested under qemu-user, which does not apply RLIMIT_AS to the guest"
)]
fn pool_reservation_under_address_space_limit_is_an_error() {
    const NAME: &str = "pool_reservation_under_address_space_limit_is_an_error";
    if let Some(out) = in_child(NAME, &[]) {
        assert!(out.contains("pool-rlimit-ok"), "{out}");
        return;
    }
    limit_address_space(64 << 20);
    // 4096 slots of 1 MiB: 4 GiB of address space, far over the limit.
    let err = StackPool::new(PoolConfig::default().stack_size(1 << 20).capacity(4096)).unwrap_err();
    assert!(
        matches!(&err, Error::Mmap { source, .. } if source.raw_os_error() == Some(libc::ENOMEM)),
        "{err}"
    );
    // A pool that fits works, and its stacks need no more address space.
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(64)).unwrap();
    let (filler, _) = fill(64 << 10); // use up what is left
    let mut fibers: Vec<_> = (0..64)
        .map(|i| {
            let mut f = Fiber::with_stack(
                pool.acquire().unwrap(),
                |x: u64, s: &Suspender<u64, u64>| s.suspend(x) + 1,
            )
            .unwrap();
            assert_eq!(f.resume(i).yielded(), Some(i));
            f
        })
        .collect();
    assert!(matches!(
        pool.acquire(),
        Err(Error::PoolExhausted { capacity: 64 })
    ));
    for (i, f) in fibers.iter_mut().enumerate() {
        assert_eq!(f.resume(0).returned(), Some(1), "fiber {i}");
    }
    drop(fibers);
    assert_eq!(pool.in_use(), 0);
    drop(filler);
    println!("pool-rlimit-ok");
}

#[test]
fn pool_with_mprotect_guards_hits_the_map_limit_and_recovers() {
    const NAME: &str = "pool_with_mprotect_guards_hits_the_map_limit_and_recovers";
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
    let pool = StackPool::new(
        PoolConfig::default()
            .stack_size(MIN_STACK_SIZE)
            .capacity(100_000),
    )
    .unwrap();
    assert_eq!(pool.guard_kind(), stackswitch::GuardKind::Mprotect);
    let mut held = Vec::new();
    let err = loop {
        match pool.acquire() {
            Ok(s) => held.push(s),
            Err(e) => break e,
        }
    };
    println!("pool: {} stacks out, then: {err}", held.len());
    assert!(matches!(err, Error::MapCountLimit { .. }), "{err:?}");
    assert!(err.to_string().contains("vm.max_map_count"));
    assert_eq!(pool.in_use(), held.len());
    // Slots already guarded need no new mapping: returning some and taking
    // them again works even at the limit.
    let n = held.len();
    held.truncate(n - 100);
    for _ in 0..100 {
        held.push(pool.acquire().expect("a warm slot needs no system call"));
    }
    let mut f = Fiber::with_stack(held.pop().unwrap(), |x: u8, _: &Suspender<u8, ()>| x).unwrap();
    assert_eq!(f.resume(9).returned(), Some(9));
    drop(f);
    drop(held);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn pool_exhaustion_and_recovery_under_many_threads() {
    const THREADS: usize = 8;
    const CAPACITY: usize = 64;
    const ROUNDS: usize = 20;
    let pool = StackPool::new(
        PoolConfig::default()
            .stack_size(MIN_STACK_SIZE)
            .capacity(CAPACITY),
    )
    .unwrap();
    let barrier = Barrier::new(THREADS);
    for _ in 0..ROUNDS {
        // Everyone grabs as much as they can: together exactly the capacity,
        // and every refusal is PoolExhausted naming it.
        let got: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let mut mine = Vec::new();
                        loop {
                            match pool.acquire() {
                                Ok(st) => mine.push(st),
                                Err(Error::PoolExhausted { capacity }) => {
                                    assert_eq!(capacity, CAPACITY);
                                    break;
                                }
                                Err(e) => panic!("unexpected error: {e}"),
                            }
                        }
                        // Wait until every thread has seen the pool empty,
                        // then check it really is full, then give back.
                        barrier.wait();
                        assert_eq!(pool.in_use(), CAPACITY);
                        let n = mine.len();
                        barrier.wait();
                        drop(mine);
                        barrier.wait();
                        // Recovered: a fair share each, all at once.
                        let again: Vec<_> = (0..CAPACITY / THREADS)
                            .map(|_| pool.acquire().expect("pool recovered"))
                            .collect();
                        let mut f = Fiber::with_stack(
                            again.into_iter().next().unwrap(),
                            |x: usize, _: &Suspender<usize, ()>| x * 2,
                        )
                        .unwrap();
                        assert_eq!(f.resume(n).returned(), Some(n * 2));
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(got, CAPACITY);
        assert_eq!(pool.in_use(), 0);
    }
}
