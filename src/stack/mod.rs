//! Stacks: the [`Stack`] trait, exact [`StackBounds`], and the stacks this
//! crate makes ([`MmapStack`], and [`StackPool`] slots).
//!
//! # Stack layout
//!
//! Every stack a fiber runs on, whoever made it, is laid out like this
//! (addresses grow upwards; the stack grows down from `high`):
//!
//! ```text
//!  high ──────────────►┌──────────────────────────────┐ page aligned
//!                      │ the fiber's closure F         │ moved out on first resume
//!                      ├──────────────────────────────┤ 16-byte aligned
//!                      │ slot (1 word) + padding       │ the fiber's or its
//!  slot ──────────────►├──────────────────────────────┤ resumer's stack pointer
//!                      │ initial switch frame          │ FRAME_SIZE bytes; later the
//!                      │ (x86_64: rbx, rbp, pc;        │ frames of the fiber's code
//!                      │  aarch64: x19, x29, pc, fpcr) │
//!                      │            ...                │
//!                      │            ▼                  │
//!  low ───────────────►├──────────────────────────────┤ page aligned
//!                      │ guard region (no access)      │ ≥ 1 page: an overflow
//!  guard ─────────────►└──────────────────────────────┘ faults here
//! ```
//!
//! The slot holds the fiber's stack pointer while it is suspended and its
//! resumer's while it runs; the trampoline's CFI reads it to lead unwinders
//! from the fiber's frames to the resumer's. The switch frame formats are
//! described in `asm/x86_64.S` and `asm/aarch64.S`.

pub(crate) mod lookup;
mod mmap;
mod pool;

pub use lookup::{locate, remaining_stack, thread_stack, StackLocation, MAX_REGIONS};
pub use mmap::{guard_kind, GuardKind, MmapStack};
pub(crate) use mmap::{install_guard, reserve};
pub use pool::{
    LocalPool, LocalStack, PoolConfig, PooledStack, StackPool, DEFAULT_LOCAL_KEEP, MAX_POOL_BYTES,
    MAX_POOL_CAPACITY,
};

use std::sync::atomic::{AtomicUsize, Ordering};

/// The smallest stack a fiber may run on: 16 KiB. Below it, catching and
/// carrying a panic (which formats a message and may capture a backtrace)
/// can itself overflow.
pub const MIN_STACK_SIZE: usize = 16 << 10;

/// The largest stack this crate reserves: 64 GiB of address space.
pub const MAX_STACK_SIZE: usize = 64 << 30;

/// The exact bounds of a stack, page aligned.
///
/// `low..high` is usable stack (it grows down from `high`); `guard..low` is
/// the guard region that faults on access. `guard == low` means no guard.
///
/// ```
/// use stackswitch::{MmapStack, Stack};
/// let stack = MmapStack::new(64 << 10)?;
/// let b = stack.bounds();
/// assert_eq!(b.size(), 64 << 10);
/// assert!(b.guard_size() >= 4096);
/// assert!(b.contains(b.high - 1) && !b.contains(b.high) && b.in_guard(b.low - 1));
/// # Ok::<(), stackswitch::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackBounds {
    /// Lowest usable address, just above the guard region.
    pub low: usize,
    /// One past the highest usable address: where the stack starts.
    pub high: usize,
    /// Lowest address of the guard region (`guard..low`).
    pub guard: usize,
}

impl StackBounds {
    /// Usable bytes, `high - low`.
    #[inline]
    pub fn size(&self) -> usize {
        self.high - self.low
    }

    /// Bytes of guard region below `low`.
    #[inline]
    pub fn guard_size(&self) -> usize {
        self.low - self.guard
    }

    /// Whether `addr` is a usable byte of this stack (`low <= addr < high`).
    #[inline]
    pub fn contains(&self, addr: usize) -> bool {
        addr >= self.low && addr < self.high
    }

    /// Whether `addr` is in the guard region (`guard <= addr < low`).
    #[inline]
    pub fn in_guard(&self, addr: usize) -> bool {
        addr >= self.guard && addr < self.low
    }

    /// Bytes left below a stack pointer `sp` before the guard region
    /// (0 if `sp` is at or below `low`).
    #[inline]
    pub fn remaining(&self, sp: usize) -> usize {
        sp.saturating_sub(self.low)
    }
}

/// A region of memory a fiber can run on.
///
/// # Safety
/// An implementation promises that, for as long as the value lives and is
/// not moved out of the fiber using it:
/// - `bounds()` returns the same value every time;
/// - `low..high` is readable and writable memory owned by this value, not
///   used by anything else, with `high` 16-byte aligned and
///   `high - low >= MIN_STACK_SIZE`;
/// - `guard..low` (if not empty) faults on every access, so that an overflow
///   stops there instead of writing over other memory. A stack without a
///   guard region makes an overflow undefined behaviour; the implementor
///   then takes on keeping every fiber within `low..high`.
///
/// Moving the value (the `Fiber` that owns it moves) must not move the
/// memory: a `Stack` is a handle to memory, not the memory itself.
pub unsafe trait Stack {
    /// The stack's bounds.
    fn bounds(&self) -> StackBounds;
}

/// The system page size, read once.
pub fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let cached = PAGE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let size = if size > 0 { size as usize } else { 4096 };
    PAGE.store(size, Ordering::Relaxed);
    size
}

/// Rounds `size` up to a multiple of `page` (a power of two); `None` on
/// overflow.
pub(crate) fn round_up_to_page(size: usize, page: usize) -> Option<usize> {
    debug_assert!(page.is_power_of_two());
    size.checked_add(page - 1).map(|s| s & !(page - 1))
}

/// Checks a requested stack size and rounds it up to whole pages.
pub(crate) fn checked_stack_size(requested: usize) -> Result<usize, crate::Error> {
    if requested < MIN_STACK_SIZE {
        return Err(crate::Error::StackTooSmall {
            requested,
            minimum: MIN_STACK_SIZE,
        });
    }
    match round_up_to_page(requested, page_size()) {
        Some(size) if size <= MAX_STACK_SIZE => Ok(size),
        _ => Err(crate::Error::StackTooLarge {
            requested,
            maximum: MAX_STACK_SIZE,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_to_pages() {
        assert_eq!(round_up_to_page(0, 4096), Some(0));
        assert_eq!(round_up_to_page(1, 4096), Some(4096));
        assert_eq!(round_up_to_page(4096, 4096), Some(4096));
        assert_eq!(round_up_to_page(4097, 4096), Some(8192));
        assert_eq!(round_up_to_page(usize::MAX, 4096), None);
        assert_eq!(round_up_to_page(usize::MAX - 4094, 4096), None);
    }

    #[test]
    fn stack_size_limits() {
        let page = page_size();
        assert!(matches!(
            checked_stack_size(0),
            Err(crate::Error::StackTooSmall {
                requested: 0,
                minimum: MIN_STACK_SIZE
            })
        ));
        assert!(matches!(
            checked_stack_size(MIN_STACK_SIZE - 1),
            Err(crate::Error::StackTooSmall { .. })
        ));
        assert_eq!(checked_stack_size(MIN_STACK_SIZE).unwrap(), MIN_STACK_SIZE);
        assert_eq!(
            checked_stack_size(MIN_STACK_SIZE + 1).unwrap(),
            MIN_STACK_SIZE + page
        );
        assert!(matches!(
            checked_stack_size(usize::MAX),
            Err(crate::Error::StackTooLarge {
                requested: usize::MAX,
                maximum: MAX_STACK_SIZE
            })
        ));
        assert!(matches!(
            checked_stack_size(MAX_STACK_SIZE + 1),
            Err(crate::Error::StackTooLarge { .. })
        ));
    }

    #[test]
    fn bounds_predicates() {
        let b = StackBounds {
            guard: 0x1000,
            low: 0x2000,
            high: 0x6000,
        };
        assert_eq!(b.size(), 0x4000);
        assert_eq!(b.guard_size(), 0x1000);
        assert!(b.contains(0x2000) && b.contains(0x5fff));
        assert!(!b.contains(0x1fff) && !b.contains(0x6000));
        assert!(b.in_guard(0x1000) && b.in_guard(0x1fff));
        assert!(!b.in_guard(0x0fff) && !b.in_guard(0x2000));
        assert_eq!(b.remaining(0x3000), 0x1000);
        assert_eq!(b.remaining(0x1800), 0);
    }
}
