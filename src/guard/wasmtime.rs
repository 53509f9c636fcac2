//! The guard wired to Wasmtime (feature `wasmtime`): a budget derived from
//! the engine's stack configuration, and one-line wrappers for sync and
//! async host functions. Re-exported as `stackswitch::wasmtime::HostGuard`.
//!
//! ```no_run
//! use stackswitch::wasmtime::HostGuard;
//! use stackswitch::{PoolConfig, StackPool};
//! use wasmtime::{Caller, Config, Engine, Linker};
//!
//! # fn parse(_: Caller<'_, ()>, p: i32) -> i32 { p }
//! # fn main() -> wasmtime::Result<()> {
//! let (async_stack_size, max_wasm_stack) = (256 << 10, 192 << 10);
//! let pool = StackPool::new(PoolConfig::default().stack_size(async_stack_size).capacity(1024))?;
//! let mut config = Config::new();
//! config.async_stack_size(async_stack_size).max_wasm_stack(max_wasm_stack);
//! config.with_host_stack(pool.stack_creator()); // so the guard knows the fiber stacks
//! let engine = Engine::new(&config)?;
//! let guard = HostGuard::for_config(async_stack_size, max_wasm_stack)?;
//! let mut linker = Linker::<()>::new(&engine);
//! linker.func_wrap("env", "parse", move |c: Caller<'_, ()>, p: i32| {
//!     guard.run("parse", || parse(c, p))
//! })?;
//! linker.func_wrap_async("env", "fetch", move |_c: Caller<'_, ()>, (p,): (i32,)| {
//!     Box::new(guard.run_async("fetch", async move { Ok(p + 1) }))
//! })?;
//! # Ok(()) }
//! ```
//!
//! # Where host functions run
//! In an async embedding (`call_async`) sync host functions and each poll
//! of an async one run on the store's fiber stack, which must come from a
//! stack pool (`Config::with_host_stack(pool.stack_creator())`): the guard
//! knows the bounds of no other fiber stack, and under `Enforce`/`Measure`
//! a host call on one fails with a trap naming [`Error::UnknownStack`]. In
//! a sync embedding host functions run on the calling thread's own stack,
//! which the guard knows.
//!
//! # Limits
//! A guarded sync host function that calls back into wasm (a sync store)
//! runs that wasm below Wasmtime's stack limit for the outer call, so the
//! nested call traps with a stack overflow under `Enforce`/`Measure`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{GuardMode, StackGuard, MIN_BUDGET, SWITCH_RESERVE};
use crate::Error;

/// Stack that Wasmtime itself takes on a fiber besides the guest's
/// `max_wasm_stack`: its entry frames above the guest, the frames between
/// the deepest guest frame and a host function (trampolines, `Caller`
/// set-up, the future's poll for async ones), and this wrapper's own
/// frames up to the point where the guard switches stacks.
///
/// Measured by the test `wasmtime_frames_fit_the_reserve` (wasmtime 48,
/// x86_64 unless noted, 256 KiB fiber, 192 KiB guest limit, at the deepest guest
/// depth): release 944 bytes for a sync host function and 1,344 for an
/// async poll; debug 6,496 and 7,712 (aarch64 debug, under qemu: 6,928
/// and 8,288). The reserve rounds the larger up
/// with room for other signatures and architectures: 4 KiB in release
/// builds, 12 KiB in debug ones (chosen by this crate's
/// `debug_assertions`, taken as a proxy for how Wasmtime was built).
pub const WASMTIME_FRAMES: usize = if cfg!(debug_assertions) {
    12 << 10
} else {
    4 << 10
};

/// A stack budget for Wasmtime host functions, with the wrappers that run
/// them under it. `Copy`, so each host closure can own one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostGuard {
    budget: usize,
    mode: Option<GuardMode>,
}

impl HostGuard {
    /// The budget Wasmtime guarantees a host function on a fiber of
    /// `async_stack_size` bytes whose guest may use `max_wasm_stack`:
    /// `async_stack_size - max_wasm_stack -` [`WASMTIME_FRAMES`] (less a
    /// few bytes the switch needs). The same budget applies to host
    /// functions on a thread's stack in a sync embedding.
    ///
    /// # Errors
    /// [`Error::NoHostBudget`] when that leaves less than
    /// [`MIN_BUDGET`].
    ///
    /// ```
    /// use stackswitch::guard::wasmtime::{HostGuard, WASMTIME_FRAMES};
    /// let g = HostGuard::for_config(256 << 10, 192 << 10)?;
    /// assert!(g.budget() < (64 << 10) - WASMTIME_FRAMES + 1);
    /// let err = HostGuard::for_config(256 << 10, 256 << 10).unwrap_err();
    /// assert!(err.to_string().contains("262144"));
    /// # Ok::<(), stackswitch::Error>(())
    /// ```
    pub fn for_config(async_stack_size: usize, max_wasm_stack: usize) -> Result<HostGuard, Error> {
        let reserved = WASMTIME_FRAMES + SWITCH_RESERVE + MIN_BUDGET;
        match async_stack_size.checked_sub(max_wasm_stack) {
            Some(room) if room >= reserved => Ok(HostGuard {
                budget: room - WASMTIME_FRAMES - SWITCH_RESERVE,
                mode: None,
            }),
            _ => Err(Error::NoHostBudget {
                async_stack_size,
                max_wasm_stack,
                reserved,
            }),
        }
    }

    /// A guard with an explicit budget.
    ///
    /// # Errors
    /// [`Error::BudgetTooSmall`] below [`MIN_BUDGET`].
    pub fn with_budget(budget: usize) -> Result<HostGuard, Error> {
        if budget < MIN_BUDGET {
            return Err(Error::BudgetTooSmall {
                budget,
                minimum: MIN_BUDGET,
            });
        }
        Ok(HostGuard { budget, mode: None })
    }

    /// Always run in `mode` instead of the process-wide default.
    pub fn mode(mut self, mode: GuardMode) -> HostGuard {
        self.mode = Some(mode);
        self
    }

    /// The budget in bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The [`StackGuard`] for the host function `name`.
    pub fn stack_guard(&self, name: &'static str) -> StackGuard {
        let guard = StackGuard::new(name, self.budget);
        match self.mode {
            Some(mode) => guard.mode(mode),
            None => guard,
        }
    }

    /// Runs the body of the sync host function `name` under the budget.
    ///
    /// # Errors
    /// A trap carrying the guard's [`Error`] when the call cannot be
    /// guarded (see [`StackGuard::run`]); `f` then does not run.
    #[inline]
    pub fn run<R>(&self, name: &'static str, f: impl FnOnce() -> R) -> wasmtime::Result<R> {
        self.stack_guard(name).run(f).map_err(wasmtime::Error::from)
    }

    /// [`run`](Self::run) for a body that returns a `wasmtime::Result`
    /// itself.
    ///
    /// # Errors
    /// The guard's error, or the one `f` returns.
    #[inline]
    pub fn try_run<R>(
        &self,
        name: &'static str,
        f: impl FnOnce() -> wasmtime::Result<R>,
    ) -> wasmtime::Result<R> {
        self.run(name, f)?
    }

    /// Wraps the future of the async host function `name` so that each of
    /// its polls runs under the budget (guarding the closure that makes
    /// the future would guard nothing: Wasmtime polls it later).
    pub fn run_async<F, R>(&self, name: &'static str, future: F) -> Guarded<F>
    where
        F: Future<Output = wasmtime::Result<R>>,
    {
        Guarded {
            guard: self.stack_guard(name),
            future,
        }
    }

    /// Gives the store's signal hook to [`handle_fault`](super::handle_fault),
    /// and installs the process-wide handler now.
    ///
    /// Wasmtime calls the hook before it aborts on a fault in an async
    /// fiber's guard page with its own short message, so with it our report
    /// (which host function, its budget, which stack) is printed whichever
    /// handler was installed first. It replaces any hook the store had.
    ///
    /// # Errors
    /// [`Error::Signal`] if the process-wide handler cannot be installed.
    pub fn attach<T>(&self, store: &mut wasmtime::Store<T>) -> Result<(), Error> {
        use wasmtime::unix::StoreExt;
        super::install_fault_handler()?;
        let hook =
            |signum: libc::c_int, info: *const libc::siginfo_t, context: *const libc::c_void| {
                // SAFETY: Wasmtime passes the kernel's siginfo and context from
                // inside its signal handler, on the faulting thread.
                unsafe { super::handle_fault(signum, info, context) }
            };
        // SAFETY: the hook only calls handle_fault, which is
        // async-signal-safe and returns false for faults it does not own.
        unsafe { store.set_signal_handler(hook) };
        Ok(())
    }
}

/// A future each of whose polls runs under a [`StackGuard`]; made by
/// [`HostGuard::run_async`].
#[derive(Debug)]
pub struct Guarded<F> {
    guard: StackGuard,
    future: F,
}

impl<F, R> Future for Guarded<F>
where
    F: Future<Output = wasmtime::Result<R>>,
{
    type Output = wasmtime::Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `future` is structurally pinned: it is never moved out of
        // `self`, `Guarded` has no `Drop` and is `Unpin` only when `F` is.
        let this = unsafe { self.get_unchecked_mut() };
        let guard = this.guard;
        // SAFETY: see above; `this.future` stays where it is.
        let future = unsafe { Pin::new_unchecked(&mut this.future) };
        match guard.run(move || future.poll(cx)) {
            Ok(poll) => poll,
            Err(err) => Poll::Ready(Err(wasmtime::Error::from(err))),
        }
    }
}
