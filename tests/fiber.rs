//! The behaviour users rely on: values both ways, nesting, panics, drops,
//! deep recursion, bad sizes, backtraces, overflow, cross-thread resume.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use stackswitch::{Error, Fiber, FiberResult, MmapStack, Stack, Suspender, MIN_STACK_SIZE};

mod common;

const STACK: usize = 64 << 10;

#[test]
fn values_travel_both_ways_over_many_switches() {
    let mut fiber = Fiber::new(STACK, |first: u64, s: &Suspender<u64, String>| {
        let mut total = first;
        for i in 0..10_000u64 {
            // Hand out a heap value, get a number back.
            total += s.suspend(format!("{i}:{total}"));
        }
        total
    })
    .unwrap();
    let mut expected_total = 5;
    let mut r = fiber.resume(5);
    for i in 0..10_000u64 {
        assert_eq!(r, FiberResult::Yield(format!("{i}:{expected_total}")));
        expected_total += i;
        r = fiber.resume(i);
    }
    assert_eq!(r, FiberResult::Return(expected_total));
    assert!(fiber.is_finished());
}

/// Values of every kind of encoding cross a switch intact both ways: word
/// scalars (including 0 and all-ones, which once doubled as control words),
/// a zero-sized type, a word-sized type with uninitialized bytes, and
/// values too big for a register.
#[test]
fn values_of_every_shape_cross_a_switch_intact() {
    fn echo<T: Clone + PartialEq + std::fmt::Debug + 'static>(values: &[T]) {
        let first = values[0].clone();
        let mut fiber = Fiber::new(STACK, move |mut x: T, s: &Suspender<T, T>| loop {
            x = s.suspend(x);
        })
        .unwrap();
        // The first resume starts the fiber with `first`; it hands it back.
        assert_eq!(fiber.resume(first.clone()), FiberResult::Yield(first));
        for v in values {
            assert_eq!(fiber.resume(v.clone()), FiberResult::Yield(v.clone()));
        }
        // Dropped suspended: its pending suspend unwinds, it does not take
        // a last value for a real one.
        drop(fiber);
        // Returned, with and without a suspend first: a finished fiber
        // hands its value back like a suspended one.
        for v in values {
            let out = v.clone();
            let mut fiber = Fiber::new(STACK, move |(), _: &Suspender<(), ()>| out).unwrap();
            assert_eq!(fiber.resume(()), FiberResult::Return(v.clone()));
            let out = v.clone();
            let mut fiber = Fiber::new(STACK, move |(), s: &Suspender<(), ()>| {
                s.suspend(());
                out
            })
            .unwrap();
            assert_eq!(fiber.resume(()), FiberResult::Yield(()));
            assert_eq!(fiber.resume(()), FiberResult::Return(v.clone()));
        }
    }
    echo(&[0u64, 1, u64::MAX, 0]);
    echo(&[0u8, 255, 0]);
    echo(&[0i32, -1, i32::MIN]);
    echo(&[0.0f64, -0.0, f64::INFINITY]);
    echo(&[false, true, false]);
    echo(&['\0', 'z', char::MAX]);
    echo(&[(), ()]);
    echo(&[None, Some(0u32), None]);
    echo(&[(0u8, 0u16), (255, 65535)]);
    echo(&[[0u64; 4], [u64::MAX; 4]]);
    echo(&[String::new(), "a heap value".to_string()]);
}

/// A fiber whose input is 0 on its first and later resumes runs normally:
/// 0 is a value like any other, not a request to drop.
#[test]
fn zero_input_is_an_ordinary_value() {
    let mut fiber = Fiber::new(STACK, |x: u64, s: &Suspender<u64, u64>| {
        let y = s.suspend(x + 10);
        y + 20
    })
    .unwrap();
    assert_eq!(fiber.resume(0), FiberResult::Yield(10));
    assert_eq!(fiber.resume(0), FiberResult::Return(20));
}

#[test]
fn fiber_that_returns_without_suspending() {
    let mut fiber = Fiber::new(STACK, |x: Vec<u8>, _: &Suspender<Vec<u8>, ()>| x.len()).unwrap();
    assert!(!fiber.is_started());
    assert_eq!(fiber.resume(vec![1, 2, 3]), FiberResult::Return(3));
    assert!(fiber.is_started() && fiber.is_finished());
}

#[test]
fn nested_fibers() {
    // The outer fiber drives an inner one and forwards its values, tagged.
    let mut outer = Fiber::new(STACK, |n: u32, s: &Suspender<u32, String>| {
        let mut inner = Fiber::new(STACK, |n: u32, s: &Suspender<u32, u32>| {
            let mut sum = 0;
            for i in 0..n {
                sum += s.suspend(i * 10);
            }
            sum
        })
        .unwrap();
        let mut r = inner.resume(n);
        while let FiberResult::Yield(v) = r {
            let back = s.suspend(format!("inner yielded {v}"));
            r = inner.resume(back);
        }
        format!("inner returned {}", r.returned().unwrap())
    })
    .unwrap();
    let mut seen = Vec::new();
    let mut r = outer.resume(3);
    while let FiberResult::Yield(v) = r {
        seen.push(v);
        r = outer.resume(1);
    }
    assert_eq!(
        seen,
        ["inner yielded 0", "inner yielded 10", "inner yielded 20"]
    );
    // The inner fiber summed the three 1s the outer resumer sent through.
    assert_eq!(r, FiberResult::Return("inner returned 3".to_string()));
}

#[test]
fn panic_reaches_resumer_with_payload_and_captured_values_are_dropped() {
    let captured = Arc::new(());
    let in_fiber = Arc::clone(&captured);
    let mut fiber = Fiber::new(STACK, move |(), s: &Suspender<(), ()>| {
        let _keep = &in_fiber;
        s.suspend(());
        std::panic::panic_any(String::from("fiber failed: code 42"));
    })
    .unwrap();
    assert_eq!(fiber.resume(()), FiberResult::Yield(()));
    assert_eq!(Arc::strong_count(&captured), 2);
    let payload = catch_unwind(AssertUnwindSafe(|| fiber.resume(()))).unwrap_err();
    assert_eq!(
        payload.downcast_ref::<String>().map(String::as_str),
        Some("fiber failed: code 42")
    );
    assert!(fiber.is_finished());
    assert_eq!(
        Arc::strong_count(&captured),
        1,
        "the closure's captures were dropped during the unwind"
    );
    // The resumer's thread goes on normally, and the fiber stays finished.
    assert!(matches!(fiber.try_resume(()), Err(Error::FiberFinished)));
}

#[test]
fn resuming_a_finished_fiber_is_an_error_or_a_clear_panic() {
    let mut fiber = Fiber::new(STACK, |(), _: &Suspender<(), ()>| 1).unwrap();
    assert_eq!(fiber.resume(()), FiberResult::Return(1));
    let err = fiber.try_resume(()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "resume called on a fiber that has finished"
    );
    let payload = catch_unwind(AssertUnwindSafe(|| fiber.resume(()))).unwrap_err();
    let msg = payload.downcast_ref::<String>().unwrap();
    assert!(msg.contains("finished"), "{msg}");
}

/// Counts drops.
struct Counted(Rc<Cell<usize>>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn drop_of_never_started_fiber_drops_its_closure() {
    let drops = Rc::new(Cell::new(0));
    let c = Counted(Rc::clone(&drops));
    let fiber = Fiber::new(STACK, move |(), _: &Suspender<(), ()>| {
        let _c = &c;
    })
    .unwrap();
    assert_eq!(drops.get(), 0);
    drop(fiber);
    assert_eq!(drops.get(), 1);
}

#[test]
fn drop_of_suspended_fiber_runs_destructors_on_its_stack() {
    let drops = Rc::new(Cell::new(0));
    let in_fiber = Rc::clone(&drops);
    let mut fiber = Fiber::new(STACK, move |(), s: &Suspender<(), usize>| {
        // Values on the fiber's stack at several depths, plus the capture.
        let _a = Counted(Rc::clone(&in_fiber));
        fn deeper(s: &Suspender<(), usize>, d: Rc<Cell<usize>>, n: usize) {
            let _b = Counted(Rc::clone(&d));
            if n == 0 {
                s.suspend(0);
                unreachable!("a dropped fiber never continues normally");
            }
            deeper(s, d, n - 1);
        }
        deeper(s, Rc::clone(&in_fiber), 4);
    })
    .unwrap();
    assert_eq!(fiber.resume(()), FiberResult::Yield(0));
    assert_eq!(drops.get(), 0);
    drop(fiber);
    // _a + five `_b`s (depth 4..=0); the captured Rc itself is not Counted.
    assert_eq!(drops.get(), 6);
    assert_eq!(
        Rc::strong_count(&drops),
        1,
        "the closure's capture was dropped"
    );
}

#[test]
fn drop_of_finished_fiber() {
    let drops = Rc::new(Cell::new(0));
    let c = Counted(Rc::clone(&drops));
    let mut fiber = Fiber::new(STACK, move |(), _: &Suspender<(), ()>| drop(c)).unwrap();
    assert_eq!(fiber.resume(()), FiberResult::Return(()));
    assert_eq!(drops.get(), 1);
    drop(fiber);
    assert_eq!(drops.get(), 1);
}

#[test]
fn suspended_fiber_that_catches_the_unwind_is_still_ended() {
    // A fiber that swallows panics and keeps suspending must still end when
    // dropped: each further suspend unwinds again.
    let rounds = Rc::new(Cell::new(0));
    let r2 = Rc::clone(&rounds);
    let mut fiber = Fiber::new(STACK, move |(), s: &Suspender<(), ()>| {
        for _ in 0..3 {
            let _ = catch_unwind(AssertUnwindSafe(|| s.suspend(())));
            r2.set(r2.get() + 1);
        }
    })
    .unwrap();
    assert_eq!(fiber.resume(()), FiberResult::Yield(()));
    drop(fiber);
    assert_eq!(rounds.get(), 3);
}

#[test]
fn value_returned_after_catching_the_unwind_is_dropped() {
    // A dropped fiber that swallows the unwind and returns: its return
    // value, which nobody receives, is dropped all the same.
    struct Counted(Rc<Cell<u32>>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }
    let drops = Rc::new(Cell::new(0));
    let d2 = Rc::clone(&drops);
    let mut fiber = Fiber::new(STACK, move |(), s: &Suspender<(), ()>| {
        let _ = catch_unwind(AssertUnwindSafe(|| s.suspend(())));
        Counted(d2)
    })
    .unwrap();
    assert!(matches!(fiber.resume(()), FiberResult::Yield(())));
    assert_eq!(drops.get(), 0);
    drop(fiber);
    assert_eq!(drops.get(), 1);
}

#[test]
fn into_stack_gives_the_stack_back_for_reuse() {
    let mut fiber = Fiber::new(STACK, |(), s: &Suspender<(), ()>| s.suspend(())).unwrap();
    let bounds = fiber.stack().bounds();
    fiber.resume(());
    let stack = fiber.into_stack().expect("unwound and returned");
    assert_eq!(stack.bounds(), bounds);
    let mut again = Fiber::with_stack(stack, |x: u8, _: &Suspender<u8, ()>| x * 2).unwrap();
    assert_eq!(again.resume(21), FiberResult::Return(42));
}

/// Recurses with 512-byte frames until one lies below `limit_low`; returns
/// the depth reached and that frame's buffer address.
#[inline(never)]
fn recurse_until(limit_low: usize, depth: usize) -> (usize, usize) {
    let buf = std::hint::black_box([0u8; 512]);
    let here = buf.as_ptr() as usize;
    if here < limit_low {
        return (depth + buf[0] as usize, here);
    }
    recurse_until(limit_low, depth + 1)
}

#[test]
fn deep_recursion_uses_most_of_a_small_stack() {
    let stack = MmapStack::new(MIN_STACK_SIZE * 4).unwrap();
    let b = stack.bounds();
    let mut fiber = Fiber::with_stack(stack, move |(), _: &Suspender<(), ()>| {
        // Recurse until only 4 KiB are left above the guard page.
        recurse_until(b.low + 4096, 0)
    })
    .unwrap();
    let (depth, deepest) = fiber.resume(()).returned().unwrap();
    // The deepest frame is within the last 4 KiB above the guard: the
    // fiber used more than 90% of its stack and came back intact. (How
    // many frames that takes depends on the build: a debug frame of the
    // recursion is over 1 KiB on aarch64.)
    assert!(
        b.contains(deepest) && deepest < b.low + 4096,
        "{deepest:#x} in {b:?}"
    );
    let used = (b.high - deepest) as f64 / b.size() as f64;
    assert!(used > 0.9, "used {used:.3} of the stack");
    assert!(depth > 40, "recursed only {depth} frames of >= 512 bytes");
}

#[test]
fn bad_stack_sizes_are_errors_that_name_the_numbers() {
    for size in [0, 1, MIN_STACK_SIZE - 1] {
        let err = MmapStack::new(size).unwrap_err();
        assert!(
            matches!(err, Error::StackTooSmall { requested, minimum } if requested == size && minimum == MIN_STACK_SIZE),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&format!("stack size {size} ")),
            "{err}"
        );
    }
    let err = MmapStack::new(usize::MAX).unwrap_err();
    assert!(
        matches!(
            err,
            Error::StackTooLarge {
                requested: usize::MAX,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("above the maximum"), "{err}");
    let err = Fiber::new(0, |(), _: &Suspender<(), ()>| ()).unwrap_err();
    assert!(matches!(err, Error::StackTooSmall { .. }));
    let err = MmapStack::with_guard(STACK, 0).unwrap_err();
    assert!(
        matches!(err, Error::BadGuardSize { requested: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn closure_too_large_for_its_stack_is_an_error() {
    let big = [7u8; 20 << 10];
    let err = Fiber::new(MIN_STACK_SIZE, move |(), _: &Suspender<(), ()>| big[0]).unwrap_err();
    assert!(matches!(err, Error::StackTooSmall { .. }), "{err:?}");
}

#[inline(never)]
fn resumer_that_names_itself(fiber: &mut Fiber<(), (), String>) -> String {
    fiber.resume(()).returned().unwrap()
}

#[test]
fn backtrace_inside_fiber_names_the_resumer() {
    let mut fiber = Fiber::new(STACK, |(), _: &Suspender<(), ()>| {
        std::backtrace::Backtrace::force_capture().to_string()
    })
    .unwrap();
    let trace = resumer_that_names_itself(&mut fiber);
    assert!(
        trace.contains("resumer_that_names_itself"),
        "the unwinder did not cross into the resumer's stack:\n{trace}"
    );
}

/// A fiber that overflows its stack dies by the guard page. Runs the
/// overflow in a child process (this test binary again) and checks how the
/// child died.
#[test]
fn stack_overflow_hits_the_guard_page() {
    if std::env::var_os("STACKSWITCH_TEST_OVERFLOW_CHILD").is_some() {
        let mut fiber = Fiber::new(MIN_STACK_SIZE, |(), _: &Suspender<(), ()>| {
            recurse_until(0, 0) // never bottoms out: runs into the guard page
        })
        .unwrap();
        fiber.resume(());
        unreachable!("the recursion cannot return");
    }
    let out = common::run_child(
        "stack_overflow_hits_the_guard_page",
        "STACKSWITCH_TEST_OVERFLOW_CHILD",
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "child should die of SIGSEGV at the guard page; status {:?}, stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cross_thread_resume_through_the_unsafe_opt_in() {
    let counter = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&counter);
    let fiber = Fiber::new(STACK, move |start: u64, s: &Suspender<u64, u64>| {
        let mut x = start;
        for _ in 0..4 {
            c.fetch_add(1, Ordering::SeqCst);
            x = s.suspend(x * 2);
        }
        x
    })
    .unwrap();
    // SAFETY: the closure holds an Arc and u64s, all Send, and no
    // thread-local addresses.
    let mut fiber = unsafe { fiber.into_send() };
    let mut value = 1;
    // Each round resumes the fiber on a new thread.
    for _ in 0..4 {
        let (f, r) = std::thread::spawn(move || {
            let r = fiber.resume(value);
            (fiber, r)
        })
        .join()
        .unwrap();
        fiber = f;
        value = r.yielded().unwrap() + 1;
    }
    assert_eq!(fiber.resume(value), FiberResult::Return(value));
    assert_eq!(counter.load(Ordering::SeqCst), 4);
}

#[test]
fn a_panicking_capture_of_a_never_started_fiber_panics_in_the_dropper() {
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("capture dropped");
        }
    }
    let pool = stackswitch::StackPool::new(
        stackswitch::PoolConfig::default()
            .stack_size(STACK)
            .capacity(1),
    )
    .unwrap();
    let bomb = Bomb;
    let fiber = Fiber::with_stack(pool.acquire().unwrap(), move |(), _: &Suspender<(), ()>| {
        let _b = &bomb;
    })
    .unwrap();
    assert_eq!(pool.in_use(), 1);
    let payload = catch_unwind(AssertUnwindSafe(move || drop(fiber))).unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"capture dropped"));
    assert_eq!(
        pool.in_use(),
        0,
        "the stack went back before the panic went on"
    );
}
