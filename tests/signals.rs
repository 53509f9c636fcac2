//! Signals delivered while fibers run.
//!
//! A signal handler runs on whatever stack the thread is on when the signal
//! arrives — a fiber's stack, the thread's own, or, in the middle of a
//! switch, either — unless it asked for an alternate stack
//! (`sigaltstack` + `SA_ONSTACK`). Either way it must not corrupt the
//! fiber's state or the resumer's: the switch keeps nothing live below the
//! stack pointer.
//!
//! Each test owns one signal (the handler table is process-wide and tests
//! run in parallel) and sends it to one thread with `pthread_kill`: first
//! synchronously from inside a fiber (so where the handler runs is known),
//! then asynchronously from another thread, many times, while the target
//! thread switches fibers in a loop and checks every value that crosses a
//! switch. The sender waits for each signal to be handled before sending
//! the next, so the count is exact and nothing depends on timing.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use stackswitch::{Fiber, FiberResult, Stack, Suspender};

/// What one signal's handler saw.
struct Probe {
    /// Signals handled.
    count: AtomicUsize,
    /// Address of a local of the last handler run.
    last_sp: AtomicUsize,
    /// Bounds of the stack whose use by the handler is being checked.
    low: AtomicUsize,
    high: AtomicUsize,
    /// Handlers that ran inside `low..high`.
    inside: AtomicUsize,
}

impl Probe {
    const fn new() -> Self {
        Probe {
            count: AtomicUsize::new(0),
            last_sp: AtomicUsize::new(0),
            low: AtomicUsize::new(0),
            high: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
        }
    }

    /// The body of a handler: async-signal-safe (atomics and the stack).
    fn record(&self) {
        // Use some stack, as a real handler would, below the interrupted
        // code's frames; the switch must not keep anything there.
        let mut scratch = [0u8; 1024];
        for (i, b) in scratch.iter_mut().enumerate() {
            *b = i as u8;
        }
        black_box(&mut scratch);
        let sp = scratch.as_ptr() as usize;
        self.last_sp.store(sp, Ordering::SeqCst);
        let (low, high) = (
            self.low.load(Ordering::SeqCst),
            self.high.load(Ordering::SeqCst),
        );
        if sp >= low && sp < high {
            self.inside.fetch_add(1, Ordering::SeqCst);
        }
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn watch(&self, low: usize, high: usize) {
        self.low.store(low, Ordering::SeqCst);
        self.high.store(high, Ordering::SeqCst);
    }
}

static ON_FIBER: Probe = Probe::new();
static ON_ALTSTACK: Probe = Probe::new();

extern "C" fn on_fiber_handler(_sig: libc::c_int) {
    ON_FIBER.record();
}

extern "C" fn on_altstack_handler(_sig: libc::c_int) {
    ON_ALTSTACK.record();
}

fn install(sig: libc::c_int, handler: extern "C" fn(libc::c_int), flags: libc::c_int) {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the
    // handler only touches atomics and its own stack (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = flags | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
}

/// Sends `sig` to this thread and returns once its handler ran.
fn raise_here(sig: libc::c_int, probe: &Probe) {
    let before = probe.count.load(Ordering::SeqCst);
    // SAFETY: pthread_self is always valid; the handler is installed.
    assert_eq!(unsafe { libc::pthread_kill(libc::pthread_self(), sig) }, 0);
    // pthread_kill to the calling thread is delivered before it returns.
    assert_eq!(probe.count.load(Ordering::SeqCst), before + 1);
}

/// A fiber that checks its own state across every switch: an integer and
/// a float sum, and a buffer on its stack, all recomputed and compared.
fn checking_fiber() -> Fiber<u64, u64, u64> {
    Fiber::new(64 << 10, |first: u64, s: &Suspender<u64, u64>| {
        let mut buf = [0u64; 64];
        let mut sum = 0u64;
        let mut fsum = 0.0f64;
        let mut n = first;
        loop {
            if n == u64::MAX {
                return sum;
            }
            sum = sum.wrapping_add(n);
            fsum += n as f64;
            buf[(n % 64) as usize] = n;
            let next = s.suspend(sum);
            // Whatever interrupted us, our frame is as we left it.
            assert_eq!(buf[(n % 64) as usize], n);
            // Sums of small integers are exact in f64.
            assert_eq!(fsum, (n * (n + 1) / 2) as f64);
            n = next;
        }
    })
    .unwrap()
}

/// Runs the checking fiber in a loop on this thread until `done`, checking
/// every yield; returns how many round trips it made.
fn switch_until(done: &AtomicBool) -> u64 {
    let mut total = 0u64;
    let mut fiber = checking_fiber();
    let mut expected = 0u64;
    let mut i = 0u64;
    while !done.load(Ordering::Relaxed) {
        expected = expected.wrapping_add(i);
        assert_eq!(fiber.resume(i), FiberResult::Yield(expected), "round {i}");
        i += 1;
        total += 1;
        // Start over now and then, so that signals also land in fiber
        // creation, the first switch, and the final one.
        if i == 5000 {
            assert_eq!(fiber.resume(u64::MAX), FiberResult::Return(expected));
            fiber = checking_fiber();
            expected = 0;
            i = 0;
        }
    }
    total
}

/// Sends `count` signals to `target`, each after the previous was handled.
fn bombard(target: libc::pthread_t, sig: libc::c_int, probe: &Probe, count: usize) {
    for _ in 0..count {
        let before = probe.count.load(Ordering::SeqCst);
        // SAFETY: the target thread is alive until `done` is set, after this.
        assert_eq!(unsafe { libc::pthread_kill(target, sig) }, 0);
        while probe.count.load(Ordering::SeqCst) == before {
            std::thread::yield_now();
        }
    }
}

fn signal_count() -> usize {
    if stackswitch::valgrind::running_on_valgrind() {
        50
    } else {
        500
    }
}

/// Runs `switch_until` on a new thread (set up by `setup`) while this thread
/// sends it `signal_count()` signals; returns the handled count.
fn stress(sig: libc::c_int, probe: &'static Probe, setup: fn() -> Option<AltStack>) -> usize {
    let done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = {
        let done = done.clone();
        std::thread::spawn(move || {
            let _alt = setup();
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() } as usize).unwrap();
            switch_until(&done)
        })
    };
    let target = rx.recv().unwrap() as libc::pthread_t;
    let before = probe.count.load(Ordering::SeqCst);
    bombard(target, sig, probe, signal_count());
    done.store(true, Ordering::SeqCst);
    let rounds = worker.join().expect("switching thread");
    println!("{rounds} fiber round trips while signalled");
    probe.count.load(Ordering::SeqCst) - before
}

#[test]
fn handler_runs_on_the_fiber_stack_without_corrupting_it() {
    let sig = libc::SIGUSR1;
    install(sig, on_fiber_handler, 0);

    // Synchronously, from inside a fiber: the handler runs on its stack.
    let mut fiber = Fiber::new(64 << 10, |x: u64, s: &Suspender<u64, usize>| {
        let keep = [x; 16];
        raise_here(libc::SIGUSR1, &ON_FIBER);
        let y = s.suspend(ON_FIBER.last_sp.load(Ordering::SeqCst));
        raise_here(libc::SIGUSR1, &ON_FIBER);
        assert_eq!(keep, [x; 16]);
        x + y
    })
    .unwrap();
    let b = fiber.stack().bounds();
    ON_FIBER.watch(b.low, b.high);
    let inside_before = ON_FIBER.inside.load(Ordering::SeqCst);
    let FiberResult::Yield(handler_sp) = fiber.resume(40) else {
        panic!("fiber did not suspend")
    };
    assert!(
        b.contains(handler_sp),
        "handler ran at {handler_sp:#x}, not on the fiber stack {b:?}"
    );
    assert_eq!(fiber.resume(2), FiberResult::Return(42));
    assert_eq!(ON_FIBER.inside.load(Ordering::SeqCst), inside_before + 2);
    ON_FIBER.watch(0, 0);

    // Asynchronously, while fibers switch: every value checks out.
    let handled = stress(sig, &ON_FIBER, || None);
    assert_eq!(handled, signal_count());
}

/// Size of the alternate signal stack.
const ALT_SIZE: usize = 64 << 10;

/// An alternate signal stack installed for the calling thread; dropping it
/// (on that thread) uninstalls and frees it.
struct AltStack {
    _mem: Box<[u8]>,
}

impl Drop for AltStack {
    fn drop(&mut self) {
        let off = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: disabling needs no memory; no handler runs on it now (we
        // are not in one), so the memory may be freed afterwards.
        assert_eq!(unsafe { libc::sigaltstack(&off, std::ptr::null_mut()) }, 0);
    }
}

/// Gives the calling thread an alternate signal stack and watches it with
/// `ON_ALTSTACK`; keep the result alive while signals may come.
fn use_altstack() -> Option<AltStack> {
    let mut mem = vec![0u8; ALT_SIZE].into_boxed_slice();
    let ss = libc::stack_t {
        ss_sp: mem.as_mut_ptr().cast(),
        ss_flags: 0,
        ss_size: ALT_SIZE,
    };
    // SAFETY: the memory is valid and writable, and the AltStack returned
    // keeps it alive until it uninstalls it.
    assert_eq!(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }, 0);
    let low = mem.as_ptr() as usize;
    ON_ALTSTACK.watch(low, low + ALT_SIZE);
    Some(AltStack { _mem: mem })
}

#[test]
fn handler_on_an_alternate_stack_leaves_fibers_intact() {
    let sig = libc::SIGUSR2;
    install(sig, on_altstack_handler, libc::SA_ONSTACK);

    // Synchronously from a fiber, on a thread with an alternate stack.
    std::thread::spawn(move || {
        let _alt = use_altstack();
        let mut fiber = Fiber::new(64 << 10, |x: u64, s: &Suspender<u64, usize>| {
            raise_here(libc::SIGUSR2, &ON_ALTSTACK);
            let y = s.suspend(ON_ALTSTACK.last_sp.load(Ordering::SeqCst));
            x * y
        })
        .unwrap();
        let FiberResult::Yield(handler_sp) = fiber.resume(6) else {
            panic!("fiber did not suspend")
        };
        let (low, high) = (
            ON_ALTSTACK.low.load(Ordering::SeqCst),
            ON_ALTSTACK.high.load(Ordering::SeqCst),
        );
        assert!(
            handler_sp >= low && handler_sp < high,
            "handler ran at {handler_sp:#x}, not on the alternate stack {low:#x}..{high:#x}"
        );
        assert!(!fiber.stack().bounds().contains(handler_sp));
        assert_eq!(fiber.resume(7), FiberResult::Return(42));
    })
    .join()
    .unwrap();

    // Asynchronously: every handler ran on the alternate stack.
    let inside_before = ON_ALTSTACK.inside.load(Ordering::SeqCst);
    let handled = stress(sig, &ON_ALTSTACK, use_altstack);
    assert_eq!(handled, signal_count());
    assert_eq!(
        ON_ALTSTACK.inside.load(Ordering::SeqCst) - inside_before,
        handled,
        "a handler ran off the alternate stack"
    );
}
