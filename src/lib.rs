//! # stackswitch
//!
//! Stackful fibers with a hand-written assembly context switch, stacks whose
//! bounds are known exactly and in O(1) ([`StackBounds::current`],
//! [`remaining_stack`]), a [`StackPool`] that Wasmtime can use as its async
//! stack creator (with a per-thread [`LocalPool`] handle for threads that
//! make many short fibers), and a host-function stack guard ([`guard`]) that runs each
//! host function with exactly the stack it is guaranteed, so one that needs
//! more fails in every test instead of only under a deep guest in production.
//!
//! ```
//! use stackswitch::{Fiber, FiberResult, MmapStack, Suspender};
//!
//! // A generator of squares on a 64 KiB stack with a guard page.
//! let mut squares = Fiber::with_stack(MmapStack::new(64 << 10)?, |n: u64, s: &Suspender<u64, u64>| {
//!     let mut limit = n;
//!     let mut i = 0;
//!     while i < limit {
//!         limit += s.suspend(i * i); // hands i² out, gets a new increment in
//!         i += 1;
//!     }
//!     "done"
//! })?;
//! let mut out = Vec::new();
//! let mut r = squares.resume(3);
//! while let FiberResult::Yield(sq) = r {
//!     out.push(sq);
//!     r = squares.resume(0);
//! }
//! assert_eq!(out, [0, 1, 4]);
//! assert_eq!(r, FiberResult::Return("done"));
//! # Ok::<(), stackswitch::Error>(())
//! ```
//!
//! ## Supported targets
//!
//! | target | switch | notes |
//! |---|---|---|
//! | `x86_64-unknown-linux-gnu` | `asm/x86_64.S` | System V; `endbr64` at indirect targets |
//! | `aarch64-unknown-linux-gnu` | `asm/aarch64.S` | AAPCS64; `bti c` at indirect targets; tested under qemu |
//!
//! Any other target stops the build with a message naming these.
//!
//! ## What a switch preserves
//! Exactly the callee-saved state of the platform ABI: on x86_64 rbx, rbp,
//! r12–r15 and rsp; on aarch64 x19–x29, x30, sp and d8–d15. With the
//! `fp-control` feature, also the floating-point control state the ABI
//! calls callee-saved (x86_64: MXCSR and the x87 control word; aarch64:
//! FPCR), so a fiber that changes the rounding mode does not leak it to its
//! resumer; a new fiber starts with the default environment. Off by default:
//! it costs a few nanoseconds per round trip, and Rust code never changes it.
//!
//! ## Features
//! - `fp-control`: preserve FP control state across switches (see above).
//! - `wasmtime`: Wasmtime integration: a [`StackPool`] as Wasmtime's
//!   stack creator and `HostGuard` wrappers for host functions (see the
//!   `wasmtime` module).
//!
//! ## Panics, drops and `panic = "abort"`
//! A panic in a fiber finishes it and continues in the resumer. Dropping a
//! suspended fiber unwinds its stack, running its destructors. Under
//! `panic = "abort"` a suspended fiber cannot be unwound: dropping it leaks
//! its stack (see [`Fiber`]).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
compile_error!(
    "stackswitch supports x86_64-unknown-linux-gnu and aarch64-unknown-linux-gnu \
     (Linux on x86_64 or aarch64); this target is neither"
);

mod arch;
mod error;
mod fiber;
pub mod guard;
mod stack;
pub mod valgrind;
#[cfg(feature = "wasmtime")]
pub mod wasmtime;

pub use error::Error;
pub use fiber::{Fiber, FiberResult, SendFiber, Suspender};
pub use guard::{with_stack_budget, GuardMode, StackGuard};
pub use stack::{
    guard_kind, locate, page_size, remaining_stack, thread_stack, GuardKind, LocalPool, LocalStack,
    MmapStack, PoolConfig, PooledStack, Stack, StackBounds, StackLocation, StackPool,
    DEFAULT_LOCAL_KEEP, MAX_POOL_BYTES, MAX_POOL_CAPACITY, MAX_REGIONS, MAX_STACK_SIZE,
    MIN_STACK_SIZE,
};
