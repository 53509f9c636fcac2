//! Wasmtime integration (feature `wasmtime`): a [`StackPool`] as Wasmtime's
//! `wasmtime::StackCreator`, so every async fiber stack
//! Wasmtime uses is a pool slot with known bounds.
//!
//! ```no_run
//! use stackswitch::{PoolConfig, StackPool};
//!
//! let pool = StackPool::new(PoolConfig::default().stack_size(1 << 20).capacity(4096))?;
//! let mut config = wasmtime::Config::new();
//! config.async_stack_size(pool.stack_size()); // at most the pool's stack size
//! config.with_host_stack(pool.stack_creator());
//! let engine = wasmtime::Engine::new(&config)?;
//! # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
//! ```
//!
//! Then, inside a host function called from `call_async`,
//! [`StackBounds::current`](crate::StackBounds::current) and
//! [`remaining_stack`](crate::remaining_stack) answer for the fiber stack
//! in O(1), and [`locate`](crate::locate) names the pool slot.
//!
//! # What Wasmtime gets
//! - `range()`: the slot's whole usable stack, page aligned at both ends;
//!   Wasmtime starts the fiber at `range().end`. When the pool's stacks are
//!   larger than `async_stack_size`, the fiber gets the larger stack (the
//!   guest is still held to `max_wasm_stack`; host functions get the rest).
//! - `guard_range()`: the slot's guard region, exactly.
//! - a request larger than the pool's stacks is an error naming both sizes
//!   ([`Error::SizeMismatch`]); an exhausted
//!   pool is [`Error::PoolExhausted`]. Both
//!   surface from `call_async` (or `instantiate_async`) as its error.
//! - `zeroed == true` (Wasmtime's `async_stack_zeroing(true)`): the stack
//!   reads as zeros, see [`StackPool::acquire_zeroed`]. Wasmtime does not
//!   zero custom stacks itself.
//!
//! Wasmtime's pooling instance allocator ignores a custom stack creator:
//! use this with the default (on-demand) allocator.

use std::ops::Range;
use std::sync::Arc;

use ::wasmtime::{StackCreator, StackMemory};

use crate::stack::{round_up_to_page, Stack};
use crate::{page_size, Error, PooledStack, StackPool};

/// The host-function stack guard for Wasmtime (defined in
/// [`guard::wasmtime`](crate::guard::wasmtime)).
pub use crate::guard::wasmtime::{Guarded, HostGuard, WASMTIME_FRAMES};

impl StackPool {
    /// This pool as Wasmtime's stack creator, for
    /// [`Config::with_host_stack`](::wasmtime::Config::with_host_stack).
    /// The creator holds a handle to the pool (a clone).
    pub fn stack_creator(&self) -> Arc<dyn StackCreator> {
        Arc::new(self.clone())
    }

    /// A stack for a Wasmtime fiber of `size` usable bytes, zeroed if asked.
    fn wasmtime_stack(&self, size: usize, zeroed: bool) -> Result<PooledStack, Error> {
        let fits = round_up_to_page(size, page_size()).is_some_and(|s| s <= self.stack_size());
        if !fits {
            return Err(Error::SizeMismatch {
                requested: size,
                slot_size: self.stack_size(),
            });
        }
        if zeroed {
            self.acquire_zeroed()
        } else {
            self.acquire()
        }
    }
}

// SAFETY: every stack handed out is a pool slot owned by its `PooledStack`
// until Wasmtime drops the box: at least `size` bytes of read-write memory,
// page aligned, with a guard region below it, zeroed when asked. The pool
// is Send + Sync (atomics only).
unsafe impl StackCreator for StackPool {
    fn new_stack(
        &self,
        size: usize,
        zeroed: bool,
    ) -> Result<Box<dyn StackMemory>, ::wasmtime::Error> {
        let stack = self
            .wasmtime_stack(size, zeroed)
            .map_err(::wasmtime::Error::new)?;
        Ok(Box::new(stack))
    }
}

// SAFETY: the slot's memory belongs to this handle until it is dropped;
// `low` and `high` are page aligned; `guard..low` faults on access.
unsafe impl StackMemory for PooledStack {
    fn top(&self) -> *mut u8 {
        self.bounds().high as *mut u8
    }

    fn range(&self) -> Range<usize> {
        let b = self.bounds();
        b.low..b.high
    }

    fn guard_range(&self) -> Range<*mut u8> {
        let b = self.bounds();
        b.guard as *mut u8..b.low as *mut u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PoolConfig;

    #[test]
    fn sizes_that_do_not_fit_name_both_numbers() {
        let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(1)).unwrap();
        let err = pool.new_stack((64 << 10) + 1, false).err().unwrap();
        let msg = format!("{err}");
        assert!(
            msg.contains(&((64 << 10) + 1).to_string()) && msg.contains(&(64 << 10).to_string()),
            "{msg}"
        );
        assert!(pool.new_stack(usize::MAX, false).is_err());
        // Smaller and equal sizes get the whole slot.
        let s = pool.new_stack(1000, false).unwrap();
        assert_eq!(s.range().len(), 64 << 10);
        drop(s);
        let s = pool.new_stack(64 << 10, true).unwrap();
        let b = pool.slot_bounds(0).unwrap();
        assert_eq!(s.range(), b.low..b.high);
        assert_eq!(s.top() as usize, b.high);
        assert_eq!(s.guard_range(), b.guard as *mut u8..b.low as *mut u8);
    }
}
