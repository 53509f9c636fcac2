//! "Which stack is this address on, and how much is left?" in O(1).
//!
//! Pools register their region (one reservation cut into equal slots) in a
//! small fixed table. A lookup scans at most [`MAX_REGIONS`] entries (only
//! up to the highest ever used) with plain atomic loads: no lock, no
//! allocation, no system call, so it is safe in a signal handler. Inside a
//! region the slot is `(addr - base) / slot_size`.
//!
//! The thread's own stack (for sync embeddings and plain threads) comes
//! from `pthread_getattr_np`, read once per thread and cached in a
//! constant-initialised thread-local.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::StackBounds;
use crate::Error;

/// How many pool regions can be registered at once.
pub const MAX_REGIONS: usize = 64;

/// One registered region: `base..base + slot_size * slots`, each slot a
/// guard of `guard` bytes followed by `slot_size - guard` bytes of stack.
struct Region {
    /// Set while an owner holds the entry (claimed before being published).
    claimed: AtomicBool,
    /// Start of the region; 0 while the entry is not published. Written
    /// last on publish (Release) and first on withdrawal.
    base: AtomicUsize,
    end: AtomicUsize,
    slot_size: AtomicUsize,
    guard: AtomicUsize,
    /// An identifier the owner chooses (the pool's id), for reports.
    id: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to build the array
const EMPTY: Region = Region {
    claimed: AtomicBool::new(false),
    base: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    slot_size: AtomicUsize::new(0),
    guard: AtomicUsize::new(0),
    id: AtomicUsize::new(0),
};

static REGIONS: [Region; MAX_REGIONS] = [EMPTY; MAX_REGIONS];
/// One past the highest entry ever claimed: lookups scan `0..USED`.
static USED: AtomicUsize = AtomicUsize::new(0);
/// Bumped each time a region is published or withdrawn. A lookup's answer
/// may be cached (the guard keeps one per thread) for as long as this has
/// not changed; 64 bits do not wrap around.
static EPOCH: AtomicUsize = AtomicUsize::new(0);

/// The current value of the table's epoch: answers found under an epoch
/// stay right until it changes.
///
/// Relaxed is enough: a thread can only be running on (or asking about)
/// memory that a new region reuses after the withdrawal of the old one,
/// which happened before the memory was unmapped, so its bump is visible by
/// then; a racing publish or withdrawal elsewhere may be seen late, exactly
/// as a lookup made a moment earlier would have seen the table.
#[inline]
pub(crate) fn epoch() -> usize {
    EPOCH.load(Ordering::Relaxed)
}

/// Moves the epoch on.
fn bump_epoch() {
    EPOCH.fetch_add(1, Ordering::Release);
}

/// Where an address was found: a pool slot or a thread's stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackLocation {
    /// Slot `slot` of the pool region registered with id `region_id`.
    PoolSlot {
        /// The id the pool registered its region with.
        region_id: usize,
        /// Index of the slot within the region.
        slot: usize,
        /// The slot's bounds.
        bounds: StackBounds,
    },
    /// The current thread's own stack.
    Thread {
        /// The thread stack's bounds.
        bounds: StackBounds,
    },
}

impl StackLocation {
    /// The bounds of the stack found.
    pub fn bounds(&self) -> StackBounds {
        match *self {
            StackLocation::PoolSlot { bounds, .. } | StackLocation::Thread { bounds } => bounds,
        }
    }
}

/// A region's entry in the table; withdrawn on drop.
#[derive(Debug)]
pub(crate) struct Registration {
    index: usize,
}

/// Publishes a region of `slots` slots of `slot_size` bytes (guard
/// included) starting at `base`.
///
/// # Errors
/// [`Error::BadPoolConfig`] when all [`MAX_REGIONS`] entries are taken.
pub(crate) fn register_region(
    base: usize,
    slot_size: usize,
    slots: usize,
    guard: usize,
    id: usize,
) -> Result<Registration, Error> {
    debug_assert!(base != 0 && slot_size > guard && slots > 0);
    for (index, r) in REGIONS.iter().enumerate() {
        if r.claimed
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            r.end.store(base + slot_size * slots, Ordering::Relaxed);
            r.slot_size.store(slot_size, Ordering::Relaxed);
            r.guard.store(guard, Ordering::Relaxed);
            r.id.store(id, Ordering::Relaxed);
            r.base.store(base, Ordering::Release);
            USED.fetch_max(index + 1, Ordering::Release);
            bump_epoch();
            return Ok(Registration { index });
        }
    }
    Err(Error::BadPoolConfig {
        reason: format!("at most {MAX_REGIONS} pool regions can be live at once"),
    })
}

impl Drop for Registration {
    fn drop(&mut self) {
        let r = &REGIONS[self.index];
        r.base.store(0, Ordering::Release);
        bump_epoch();
        r.claimed.store(false, Ordering::Release);
    }
}

/// Finds `addr` in the registered regions. Async-signal-safe.
fn find_in_regions(addr: usize) -> Option<StackLocation> {
    let used = USED.load(Ordering::Acquire);
    // The region this thread found last: repeated lookups from one pool's
    // stacks (a guarded host function, call after call) cost one entry, not
    // a scan. Only a hint: the entry is read and checked like any other.
    let hint = HINT.try_with(Cell::get).unwrap_or(0);
    if hint < used {
        if let Some(found) = in_region(&REGIONS[hint], addr) {
            return Some(found);
        }
    }
    for (index, r) in REGIONS[..used].iter().enumerate() {
        if let Some(found) = in_region(r, addr) {
            let _ = HINT.try_with(|h| h.set(index));
            return Some(found);
        }
    }
    None
}

thread_local! {
    /// Index of the region the last successful lookup on this thread found.
    /// Constant-initialised, no destructor: usable from a signal handler.
    static HINT: Cell<usize> = const { Cell::new(0) };
}

/// `addr` in region entry `r`, if it is published and contains it.
#[inline]
fn in_region(r: &Region, addr: usize) -> Option<StackLocation> {
    let base = r.base.load(Ordering::Acquire);
    if base == 0 || addr < base {
        return None;
    }
    let end = r.end.load(Ordering::Relaxed);
    if addr >= end {
        return None;
    }
    let slot_size = r.slot_size.load(Ordering::Relaxed);
    let guard = r.guard.load(Ordering::Relaxed);
    let id = r.id.load(Ordering::Relaxed);
    // The entry may have been withdrawn (and re-published) while we read
    // it; a changed base means the fields may be mixed: skip it.
    if r.base.load(Ordering::Acquire) != base {
        return None;
    }
    let slot = (addr - base) / slot_size;
    let start = base + slot * slot_size;
    Some(StackLocation::PoolSlot {
        region_id: id,
        slot,
        bounds: StackBounds {
            guard: start,
            low: start + guard,
            high: start + slot_size,
        },
    })
}

thread_local! {
    /// This thread's stack bounds once read; `guard == 0 && high == 0` until.
    static THREAD_STACK: Cell<StackBounds> = const {
        Cell::new(StackBounds { low: 0, high: 0, guard: 0 })
    };
}

/// The calling thread's own stack, from `pthread_getattr_np`, cached.
///
/// Not async-signal-safe the first time on a thread (it may read
/// `/proc/self/maps` for the main thread); later calls are.
pub fn thread_stack() -> Option<StackBounds> {
    if let Some(b) = thread_stack_cached() {
        return Some(b);
    }
    let b = read_thread_stack()?;
    THREAD_STACK.with(|c| c.set(b));
    Some(b)
}

/// The calling thread's stack if it has been read before on this thread.
/// Async-signal-safe (a constant-initialised thread-local, no allocation).
#[inline]
pub(crate) fn thread_stack_cached() -> Option<StackBounds> {
    THREAD_STACK
        .try_with(|c| c.get())
        .ok()
        .filter(|b| b.high != 0)
}

fn read_thread_stack() -> Option<StackBounds> {
    // SAFETY: attr is initialised by pthread_getattr_np before any use and
    // destroyed once; the out-pointers are valid locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let mut guard: libc::size_t = 0;
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0
            && libc::pthread_attr_getguardsize(&attr, &mut guard) == 0;
        libc::pthread_attr_destroy(&mut attr);
        if !ok || addr.is_null() {
            return None;
        }
        // glibc >= 2.27 reports the usable stack without its guard, which
        // lies just below it. The main thread reports no guard of its own
        // (the kernel keeps a gap below it): then `guard == low`.
        let low = addr as usize;
        Some(StackBounds {
            low,
            high: low + size,
            guard: low.saturating_sub(guard),
        })
    }
}

impl StackBounds {
    /// The stack that `addr` is on: a slot of a live pool region
    /// or the calling thread's own stack; `None` otherwise (a fiber on an
    /// [`MmapStack`](crate::MmapStack) or a user stack, foreign memory).
    ///
    /// O(1): at most [`MAX_REGIONS`] comparisons and one division; no lock.
    pub fn containing(addr: usize) -> Option<StackBounds> {
        locate(addr).map(|l| l.bounds())
    }

    /// The stack the caller is running on (see [`containing`](Self::containing)).
    ///
    /// ```
    /// let here = stackswitch::StackBounds::current().expect("a thread stack is known");
    /// let sp = &here as *const _ as usize;
    /// assert!(here.contains(sp));
    /// ```
    #[inline]
    pub fn current() -> Option<StackBounds> {
        Self::containing(current_sp())
    }
}

/// Where `addr` is: a pool slot or the calling thread's stack.
pub fn locate(addr: usize) -> Option<StackLocation> {
    if let Some(found) = find_in_regions(addr) {
        return Some(found);
    }
    let bounds = thread_stack()?;
    (bounds.contains(addr) || bounds.in_guard(addr)).then_some(StackLocation::Thread { bounds })
}

/// Like [`locate`] but async-signal-safe: the thread stack is only known if
/// it was read on this thread before.
pub(crate) fn locate_in_signal(addr: usize) -> Option<StackLocation> {
    if let Some(found) = find_in_regions(addr) {
        return Some(found);
    }
    let bounds = thread_stack_cached()?;
    (bounds.contains(addr) || bounds.in_guard(addr)).then_some(StackLocation::Thread { bounds })
}

/// The current stack pointer (approximately: the address of a local).
#[inline(always)]
pub(crate) fn current_sp() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// Bytes left on the current stack before its guard region, if the stack
/// is known (see [`StackBounds::containing`]).
///
/// ```
/// let left = stackswitch::remaining_stack().unwrap();
/// assert!(left > 0);
/// ```
#[inline]
pub fn remaining_stack() -> Option<usize> {
    let sp = current_sp();
    StackBounds::containing(sp).map(|b| b.remaining(sp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_slot_arithmetic() {
        // A fake region far from anything mapped: lookups are arithmetic only.
        let base = 0x7000_0000_0000usize;
        let reg = register_region(base, 0x11000, 4, 0x1000, 77).unwrap();
        let slot1 = base + 0x11000;
        match locate(slot1 + 0x1000) {
            Some(StackLocation::PoolSlot {
                region_id,
                slot,
                bounds,
            }) => {
                assert_eq!((region_id, slot), (77, 1));
                assert_eq!(
                    bounds,
                    StackBounds {
                        guard: slot1,
                        low: slot1 + 0x1000,
                        high: slot1 + 0x11000
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        // Last byte of the last slot, and one past the region.
        let last = base + 4 * 0x11000 - 1;
        assert!(matches!(
            locate(last),
            Some(StackLocation::PoolSlot { slot: 3, .. })
        ));
        assert_eq!(find_in_regions(last + 1), None);
        assert_eq!(find_in_regions(base - 1), None);
        // A guard byte belongs to its slot's guard region.
        let b = StackBounds::containing(slot1 + 0xfff).unwrap();
        assert!(b.in_guard(slot1 + 0xfff));
        drop(reg);
        assert_eq!(find_in_regions(slot1 + 0x1000), None);
    }

    #[test]
    fn epoch_moves_on_publish_and_withdrawal() {
        // Other tests register regions concurrently: only "it moved" holds.
        let before = epoch();
        let reg = register_region(0x7100_0000_0000, 0x11000, 2, 0x1000, 78).unwrap();
        let published = epoch();
        assert_ne!(published, before);
        drop(reg);
        assert_ne!(epoch(), published);
    }

    #[test]
    fn thread_stack_is_found() {
        let b = StackBounds::current().expect("thread stack");
        let sp = current_sp();
        assert!(b.contains(sp));
        assert!(b.remaining(sp) > 0 && b.remaining(sp) < b.size());
        let t = std::thread::spawn(|| {
            let b = StackBounds::current().unwrap();
            (b, remaining_stack().unwrap())
        });
        let (tb, left) = t.join().unwrap();
        assert_ne!(tb, b);
        assert!(tb.guard < tb.low, "spawned threads have a guard: {tb:?}");
        assert!(left > 0 && left < tb.size());
    }
}
