//! Scale: many parked fibers at once, each on its own guarded stack.
//!
//! The million-fiber runs (own mmap per stack, and one pool) are
//! `#[ignore]`d (about 4 GiB resident and tens of seconds each); CI runs
//! them explicitly:
//! `cargo test --release --test scale -- --ignored --nocapture`.

#[allow(dead_code)] // `main` of the example is not used here
#[path = "../examples/park_million.rs"]
mod park_million;

use std::sync::Mutex;

use stackswitch::{Error, GuardKind, MIN_STACK_SIZE};

mod common;

/// Held by every test here: they measure the process's mappings and resident
/// memory, which two of them running at once would blur.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The promise behind "a million parked fibers": a parked fiber costs the
/// pages it touched, not its whole stack, and stacks do not pile up VMAs.
fn check(report: &park_million::Report, count: usize) {
    println!("{report}");
    assert!(report.stopped_by.is_none(), "{report}");
    assert_eq!(report.parked, count);
    // Only the touched top of each stack is resident: well under the
    // 16 KiB + 4 KiB each stack reserves. Under Valgrind the resident set
    // is mostly its shadow memory, so the check says it is not made.
    if stackswitch::valgrind::running_on_valgrind() {
        println!("NOT CHECKED under Valgrind: resident bytes per fiber (shadow memory counts)");
    } else {
        assert!(
            report.resident_per_fiber < (MIN_STACK_SIZE / 2) as f64,
            "{report}"
        );
    }
    // Every stack was unmapped again. A leaked stack between freed ones
    // would be a mapping of its own, so leaks show up as many extra VMAs.
    // A few are allowed: another test's thread starting meanwhile adds its
    // stack and a malloc arena (two mappings each), which no lock here can
    // order before the first count.
    assert!(report.vmas_after <= report.vmas_before + 16, "{report}");
    if report.guard == GuardKind::Markers {
        // Guard markers do not split mappings: far fewer VMAs than fibers.
        assert!(report.vmas_parked < report.vmas_before + 1000, "{report}");
    }
}

#[test]
#[ignore = "parks 1,000,000 fibers (~4 GiB resident); CI runs it with --ignored"]
fn park_a_million_fibers() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if stackswitch::guard_kind() != GuardKind::Markers {
        // With mprotect guards vm.max_map_count caps a process near 32k
        // stacks; say so instead of passing quietly.
        panic!(
            "this kernel has no guard markers (Linux 6.13+): a million guarded stacks \
             cannot fit under vm.max_map_count; see mprotect_fallback_reports_the_map_limit"
        );
    }
    check(&park_million::park(1_000_000, MIN_STACK_SIZE), 1_000_000);
}

#[test]
#[ignore = "parks 1,000,000 fibers on pool stacks (~4 GiB resident); CI runs it with --ignored"]
fn park_a_million_fibers_from_a_pool() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if stackswitch::guard_kind() != GuardKind::Markers {
        panic!(
            "this kernel has no guard markers (Linux 6.13+): a million guarded pool slots \
             cannot fit under vm.max_map_count"
        );
    }
    check(
        &park_million::park_pooled(1_000_000, MIN_STACK_SIZE),
        1_000_000,
    );
}

#[test]
fn park_many_fibers() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let count = if stackswitch::valgrind::running_on_valgrind() {
        2_000
    } else {
        20_000
    };
    check(&park_million::park(count, MIN_STACK_SIZE), count);
    check(&park_million::park_pooled(count, MIN_STACK_SIZE), count);
}

/// With the `mprotect` fallback, the run stops at `vm.max_map_count` and the
/// error says so. In a child process, where `STACKSWITCH_GUARD=mprotect`
/// takes effect before any stack is made.
#[test]
fn mprotect_fallback_reports_the_map_limit() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    const NAME: &str = "mprotect_fallback_reports_the_map_limit";
    const ENV: &str = "STACKSWITCH_SCALE_CHILD";
    if std::env::var_os(ENV).is_none() {
        let out = common::self_command()
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(ENV, "1")
            .env("STACKSWITCH_GUARD", "mprotect")
            .output()
            .unwrap();
        print!("{}", common::assert_child_passed(&out));
        return;
    }
    let report = park_million::park(1_000_000, MIN_STACK_SIZE);
    println!("{report}");
    assert_eq!(report.guard, GuardKind::Mprotect);
    assert!(
        matches!(report.stopped_by, Some(Error::MapCountLimit { .. })),
        "{report}"
    );
    assert!(report.to_string().contains("vm.max_map_count"));
    // Two VMAs per stack: about half the limit made it.
    assert!(report.parked > 1000 && report.parked < 1_000_000);
    assert!(report.vmas_after <= report.vmas_before + 16, "{report}");
}
