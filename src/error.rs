//! The one error type of the crate.

use std::fmt;
use std::io;

/// Everything that can go wrong when making stacks, pools and fibers.
///
/// Each variant carries the number that was wrong and the limit it broke, so
/// the message alone says what to change.
///
/// ```
/// let err = stackswitch::MmapStack::new(0).unwrap_err();
/// assert!(err.to_string().contains("stack size 0"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A stack size below the minimum this crate can run a fiber on.
    StackTooSmall {
        /// The size asked for, in bytes.
        requested: usize,
        /// The smallest size accepted, in bytes.
        minimum: usize,
    },
    /// A stack size above the largest reservation this crate makes.
    StackTooLarge {
        /// The size asked for, in bytes.
        requested: usize,
        /// The largest size accepted, in bytes.
        maximum: usize,
    },
    /// A guard size of zero, or one too large to reserve.
    BadGuardSize {
        /// The guard size asked for, in bytes.
        requested: usize,
        /// The largest guard size accepted, in bytes.
        maximum: usize,
    },
    /// `mmap` refused to reserve the memory for a stack or a pool.
    Mmap {
        /// Bytes that were to be reserved (stack plus guard).
        bytes: usize,
        /// The error `mmap` returned.
        source: io::Error,
    },
    /// Installing a guard page failed (`madvise(MADV_GUARD_INSTALL)` or
    /// `mprotect(PROT_NONE)`).
    GuardPage {
        /// The system call that failed.
        call: &'static str,
        /// The error it returned.
        source: io::Error,
    },
    /// Every slot of a pool is in use.
    PoolExhausted {
        /// How many stacks the pool holds.
        capacity: usize,
    },
    /// A stack of a given size was asked of a pool whose slots are smaller.
    SizeMismatch {
        /// The size asked for, in bytes.
        requested: usize,
        /// The usable size of the pool's slots, in bytes.
        slot_size: usize,
    },
    /// A pool configuration that cannot be built.
    BadPoolConfig {
        /// What is wrong with it, numbers included.
        reason: String,
    },
    /// A stack budget larger than what the stack can give.
    BudgetTooLarge {
        /// The budget asked for, in bytes.
        budget: usize,
        /// The bytes available (left on the stack, or its whole size).
        available: usize,
    },
    /// A stack budget too small to hold even the guard's own entry frame.
    BudgetTooSmall {
        /// The budget asked for, in bytes.
        budget: usize,
        /// The smallest budget accepted, in bytes.
        minimum: usize,
    },
    /// A Wasmtime configuration that leaves host functions no stack budget.
    NoHostBudget {
        /// The configured `async_stack_size`, in bytes.
        async_stack_size: usize,
        /// The configured `max_wasm_stack`, in bytes.
        max_wasm_stack: usize,
        /// Bytes Wasmtime's and the guard's own frames take besides, plus
        /// the smallest budget accepted.
        reserved: usize,
    },
    /// The value of `STACKSWITCH_GUARD_MODE` names no guard mode.
    BadGuardMode {
        /// The value found.
        value: String,
    },
    /// Installing the fault handler or an alternate signal stack failed.
    Signal {
        /// The system call that failed.
        call: &'static str,
        /// The error it returned.
        source: io::Error,
    },
    /// The current stack pointer is not on a stack whose bounds are known.
    UnknownStack,
    /// `resume` was called on a fiber that has already finished.
    FiberFinished,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::StackTooSmall { requested, minimum } => write!(
                f,
                "stack size {requested} is below the minimum of {minimum} bytes"
            ),
            Error::StackTooLarge { requested, maximum } => write!(
                f,
                "stack size {requested} is above the maximum of {maximum} bytes"
            ),
            Error::BadGuardSize { requested, maximum } => write!(
                f,
                "guard size {requested} must be at least one page and at most {maximum} bytes"
            ),
            Error::Mmap { bytes, source } => {
                write!(f, "mmap of {bytes} bytes for a stack failed: {source}")
            }
            Error::GuardPage { call, source } => {
                write!(f, "installing a guard page with {call} failed: {source}")
            }
            Error::PoolExhausted { capacity } => {
                write!(f, "stack pool exhausted: all {capacity} stacks are in use")
            }
            Error::SizeMismatch {
                requested,
                slot_size,
            } => write!(
                f,
                "a stack of {requested} bytes does not fit this pool's slots of {slot_size} bytes"
            ),
            Error::BadPoolConfig { reason } => write!(f, "invalid pool configuration: {reason}"),
            Error::BudgetTooLarge { budget, available } => write!(
                f,
                "stack budget of {budget} bytes exceeds the {available} bytes available"
            ),
            Error::BudgetTooSmall { budget, minimum } => write!(
                f,
                "stack budget of {budget} bytes is below the minimum of {minimum} bytes"
            ),
            Error::NoHostBudget {
                async_stack_size,
                max_wasm_stack,
                reserved,
            } => write!(
                f,
                "async_stack_size of {async_stack_size} bytes leaves host functions no stack \
                 budget: it must exceed max_wasm_stack ({max_wasm_stack} bytes) by more than \
                 {reserved} bytes (Wasmtime's own frames, the guard's, and the minimum budget)"
            ),
            Error::BadGuardMode { value } => write!(
                f,
                "STACKSWITCH_GUARD_MODE={value:?} names no guard mode (enforce, measure or off)"
            ),
            Error::Signal { call, source } => {
                write!(
                    f,
                    "setting up the stack fault handler with {call} failed: {source}"
                )
            }
            Error::UnknownStack => f.write_str(
                "the current stack's bounds are unknown (not a pool stack or a thread stack)",
            ),
            Error::FiberFinished => f.write_str("resume called on a fiber that has finished"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Mmap { source, .. }
            | Error::GuardPage { source, .. }
            | Error::Signal { source, .. } => Some(source),
            _ => None,
        }
    }
}
