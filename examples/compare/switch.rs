//! Resume + suspend round trips: a fiber that hands back its input plus one,
//! forever, driven by a loop in the resumer. Every crate gets the same loop.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::mpsc;

use stackswitch::{Fiber, FiberResult, Suspender};

use super::harness::{Case, Op};

/// Stack size for every round-trip fiber.
const STACK: usize = 64 << 10;

/// The round-trip cases, in table order; the first is the baseline.
pub const CASES: &[&str] = &[
    "stackswitch",
    "corosensei",
    "wasmtime-fiber",
    "context",
    "swapcontext",
    "os-thread",
];

/// The table name of a case: the crate and what it is.
pub fn label(case: &str) -> String {
    match case {
        "stackswitch" if cfg!(feature = "fp-control") => "stackswitch (fp-control)".into(),
        "stackswitch" => "stackswitch".into(),
        "corosensei" => "corosensei 0.3".into(),
        "wasmtime-fiber" => "wasmtime-internal-fiber 48".into(),
        "context" => "context 3 (Boost fcontext)".into(),
        "swapcontext" => "glibc swapcontext".into(),
        "os-thread" => "OS threads, channel ping-pong".into(),
        other => other.into(),
    }
}

/// The operation "n round trips" of one case, or `None` for an unknown name.
pub fn op(case: &str) -> Option<Op> {
    Some(match case {
        "stackswitch" => stackswitch(),
        "corosensei" => corosensei(),
        "wasmtime-fiber" => wasmtime_fiber(),
        "context" => fcontext(),
        "swapcontext" => ucontext(),
        "os-thread" => os_thread(),
        _ => return None,
    })
}

pub fn cases(names: &[&str]) -> Vec<Case> {
    names
        .iter()
        .map(|name| Case::new(label(name), op(name).expect("known case")))
        .collect()
}

fn stackswitch() -> Op {
    let mut fiber = Fiber::new(STACK, |mut x: u64, s: &Suspender<u64, u64>| {
        while x != u64::MAX {
            x = s.suspend(x.wrapping_add(1));
        }
    })
    .expect("stackswitch fiber");
    Box::new(move |n| {
        for i in 0..n {
            match fiber.resume(black_box(i)) {
                FiberResult::Yield(y) => {
                    black_box(y);
                }
                FiberResult::Return(()) => unreachable!(),
            }
        }
    })
}

fn corosensei() -> Op {
    use corosensei::stack::DefaultStack;
    use corosensei::{Coroutine, CoroutineResult, Yielder};
    let stack = DefaultStack::new(STACK).expect("corosensei stack");
    let mut co = Coroutine::with_stack(stack, |y: &Yielder<u64, u64>, mut x: u64| {
        while x != u64::MAX {
            x = y.suspend(x.wrapping_add(1));
        }
    });
    Box::new(move |n| {
        for i in 0..n {
            match co.resume(black_box(i)) {
                CoroutineResult::Yield(y) => {
                    black_box(y);
                }
                CoroutineResult::Return(()) => unreachable!(),
            }
        }
    })
}

/// Wasmtime's fiber must finish before it is dropped (it does not unwind a
/// suspended one): hand it the stop value.
struct FinishOnDrop(wasmtime_internal_fiber::Fiber<'static, u64, u64, ()>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        if !self.0.done() {
            let _ = self.0.resume(u64::MAX);
        }
    }
}

fn wasmtime_fiber() -> Op {
    use wasmtime_internal_fiber::{Fiber, FiberStack, Suspend};
    let stack = FiberStack::new(STACK, false).expect("wasmtime fiber stack");
    let fiber = Fiber::new(stack, |mut x: u64, s: &mut Suspend<u64, u64, ()>| {
        while x != u64::MAX {
            x = s.suspend(x.wrapping_add(1));
        }
    })
    .map_err(|(e, _)| e)
    .expect("wasmtime fiber");
    let fiber = FinishOnDrop(fiber);
    Box::new(move |n| {
        for i in 0..n {
            match fiber.0.resume(black_box(i)) {
                Err(y) => {
                    black_box(y);
                }
                Ok(()) => unreachable!(),
            }
        }
    })
}

/// The fcontext fiber: hands back its input plus one, forever. It never
/// finishes; its stack is freed with nothing on it that needs dropping.
extern "C" fn fcontext_entry(mut t: context::Transfer) -> ! {
    loop {
        let next = t.data.wrapping_add(1);
        // SAFETY: `t.context` is the resumer that just switched here; it is
        // suspended in `resume` and waits for exactly this switch back.
        t = unsafe { t.context.resume(next) };
    }
}

fn fcontext() -> Op {
    use context::stack::ProtectedFixedSizeStack;
    use context::Context;
    let stack = ProtectedFixedSizeStack::new(STACK).expect("context stack");
    // SAFETY: the stack is moved into the closure below with the context,
    // so it outlives every switch into the context.
    let mut ctx = Some(unsafe { Context::new(&stack, fcontext_entry) });
    Box::new(move |n| {
        let _keep = &stack;
        for i in 0..n {
            let c = ctx.take().expect("fcontext fiber is suspended");
            // SAFETY: `c` is the fiber's context, suspended in its loop (or
            // fresh), on `stack`, which is alive.
            let t = unsafe { c.resume(black_box(i as usize)) };
            black_box(t.data);
            ctx = Some(t.context);
        }
    })
}

/// The two contexts of the swapcontext case, at a fixed address.
struct UcPair {
    main: libc::ucontext_t,
    fiber: libc::ucontext_t,
    value: u64,
}

thread_local! {
    /// The pair the fiber entry works on (makecontext passes only ints).
    static UC_PAIR: Cell<*mut UcPair> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn ucontext_entry() {
    let pair = UC_PAIR.with(Cell::get);
    loop {
        // SAFETY: `pair` is the boxed pair set up by `ucontext` before the
        // first switch here; it outlives the fiber (which is never resumed
        // after the Op is dropped). Only one side runs at a time.
        unsafe {
            (*pair).value = (*pair).value.wrapping_add(1);
            libc::swapcontext(&mut (*pair).fiber, &(*pair).main);
        }
    }
}

fn ucontext() -> Op {
    // SAFETY: ucontext_t is plain data; zero is a valid (if meaningless)
    // value that getcontext overwrites.
    let mut pair: Box<UcPair> = Box::new(unsafe { std::mem::zeroed() });
    let mut stack = vec![0u8; STACK].into_boxed_slice();
    // SAFETY: getcontext fills the struct it is given; makecontext then
    // points it at our stack (alive as long as the Op) and entry.
    unsafe {
        assert_eq!(libc::getcontext(&mut pair.fiber), 0, "getcontext");
        pair.fiber.uc_stack.ss_sp = stack.as_mut_ptr().cast();
        pair.fiber.uc_stack.ss_size = stack.len();
        pair.fiber.uc_link = std::ptr::null_mut();
        libc::makecontext(&mut pair.fiber, ucontext_entry, 0);
    }
    let raw: *mut UcPair = &mut *pair;
    UC_PAIR.with(|c| c.set(raw));
    Box::new(move |n| {
        let _keep = (&pair, &stack);
        for i in 0..n {
            // SAFETY: `raw` points into the box kept alive above; the fiber
            // context is fresh or parked in its swapcontext, and swaps back
            // to `main` exactly once per round trip.
            unsafe {
                (*raw).value = black_box(i);
                libc::swapcontext(&mut (*raw).main, &(*raw).fiber);
                black_box((*raw).value);
            }
        }
    })
}

/// Two OS threads handing a value back and forth over channels: what a
/// "fiber" costs when it is a thread. Dropping it closes the channel and
/// joins the peer.
struct PingPong {
    to_peer: Option<mpsc::SyncSender<u64>>,
    from_peer: mpsc::Receiver<u64>,
    peer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for PingPong {
    fn drop(&mut self) {
        drop(self.to_peer.take());
        if let Some(peer) = self.peer.take() {
            let _ = peer.join();
        }
    }
}

fn os_thread() -> Op {
    let (to_peer, peer_rx) = mpsc::sync_channel::<u64>(1);
    let (peer_tx, from_peer) = mpsc::sync_channel::<u64>(1);
    let peer = std::thread::spawn(move || {
        while let Ok(x) = peer_rx.recv() {
            if peer_tx.send(x.wrapping_add(1)).is_err() {
                break;
            }
        }
    });
    let pp = PingPong {
        to_peer: Some(to_peer),
        from_peer,
        peer: Some(peer),
    };
    Box::new(move |n| {
        let tx = pp.to_peer.as_ref().expect("peer channel");
        for i in 0..n {
            tx.send(black_box(i)).expect("peer alive");
            black_box(pp.from_peer.recv().expect("peer alive"));
        }
    })
}
