//! [`StackPool`]: one reservation cut into equal slots, handed out as
//! [`PooledStack`]s without a system call once a slot is warm.
//!
//! See [`StackPool`] for the layout, the free list, the resident-memory
//! policy and zeroing.

use std::cell::Cell;
use std::fmt;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use super::lookup::{register_region, Registration};
use super::{
    checked_stack_size, guard_kind, install_guard, page_size, reserve, round_up_to_page, GuardKind,
    Stack, StackBounds, MAX_STACK_SIZE,
};
use crate::Error;

mod local;
pub use local::{LocalPool, LocalStack, DEFAULT_LOCAL_KEEP};

/// The largest region a pool reserves: 64 TiB of address space (x86_64 user
/// space is 128 TiB; aarch64 with 48-bit addresses, 256 TiB).
pub const MAX_POOL_BYTES: usize = 64 << 40;

/// The most slots a pool can have (indices travel as `u32`, 0 meaning none).
pub const MAX_POOL_CAPACITY: usize = u32::MAX as usize - 1;

/// Canary words written in the lowest page of a slot's resident part.
const CANARIES: usize = 16;
/// Bytes between two canaries.
const CANARY_STRIDE: usize = 256;
/// The canary value; a fiber storing exactly this there is taken as not
/// having been there (an extra page stays resident, nothing worse).
const CANARY: u64 = 0x5a17_c0de_dead_f00d;
// The canaries fit in the smallest page (4 KiB), the least `resident` is.
const _: () = assert!(CANARIES * CANARY_STRIDE <= 4096);

/// Per-slot flags, only changed by the slot's current owner.
const GUARDED: u8 = 1;
/// The canaries are in place (written since the slot was last handed out
/// without them).
const ARMED: u8 = 2;
/// Every byte of the stack is zero.
const CLEAN: u8 = 4;

/// The lowest bytes of a zeroing window that, when dirty, make it grow
/// (see `Inner::next_window`).
const DEEP_ZONE: usize = 1 << 10;

/// Pending slots released with one system call (see `Inner::release_pending`).
const RELEASE_BATCH: usize = 16;

/// Cells per pool in which threads park the slot they returned last.
const PARKING_CELLS: usize = 32;
/// A parking cell's value when empty; otherwise the slot index + 1, or
/// [`CLOSED`].
const EMPTY: usize = 0;
/// A parking cell's value once the pool's last handle has gone: nothing
/// may be parked any more.
const CLOSED: usize = usize::MAX;

/// One parking cell, alone on its cache line (the threads that share a
/// cell are few; the lines of different cells are never shared).
#[repr(align(64))]
struct ParkingCell(AtomicUsize);

thread_local! {
    /// This thread's parking cell (the same index in every pool), assigned
    /// on first use; `usize::MAX` until then.
    static MY_CELL: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's parking cell index.
#[inline]
fn my_cell() -> usize {
    let cell = MY_CELL.with(Cell::get);
    if cell < PARKING_CELLS {
        cell
    } else {
        assign_cell()
    }
}

/// Gives this thread a parking cell, round robin over the threads that ask.
#[cold]
fn assign_cell() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let cell = NEXT.fetch_add(1, Ordering::Relaxed) % PARKING_CELLS;
    MY_CELL.with(|c| c.set(cell));
    cell
}

/// How a [`StackPool`] is laid out and how it treats returned stacks.
///
/// ```
/// use stackswitch::PoolConfig;
/// let config = PoolConfig::default()
///     .stack_size(256 << 10) // usable bytes per stack
///     .capacity(4096)        // how many stacks at most
///     .guard_size(64 << 10)  // guard region below each stack
///     .resident(32 << 10)    // kept committed when a stack comes back
///     .zero_on_return(false);
/// assert_eq!(config.get_stack_size(), 256 << 10);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    stack_size: usize,
    capacity: usize,
    guard_size: usize,
    resident: usize,
    zero_on_return: bool,
}

impl Default for PoolConfig {
    /// 1024 stacks of 256 KiB, a one-page guard each, 64 KiB kept resident
    /// on return, no zeroing.
    fn default() -> Self {
        PoolConfig {
            stack_size: 256 << 10,
            capacity: 1024,
            guard_size: page_size(),
            resident: 64 << 10,
            zero_on_return: false,
        }
    }
}

impl PoolConfig {
    /// Usable bytes per stack (rounded up to whole pages), at least
    /// [`MIN_STACK_SIZE`](crate::MIN_STACK_SIZE). For Wasmtime, at least its
    /// `async_stack_size`. Big stacks may get up to an eighth more (see
    /// "Layout" on [`StackPool`]); [`StackPool::stack_size`] says how much
    /// each stack has.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = bytes;
        self
    }

    /// How many stacks the pool holds: a fixed count, reserved up front as
    /// address space only (`MAP_NORESERVE`; memory is committed as stacks
    /// are used). Acquiring beyond it is [`Error::PoolExhausted`].
    pub fn capacity(mut self, stacks: usize) -> Self {
        self.capacity = stacks;
        self
    }

    /// Bytes of guard region below each stack (rounded up to whole pages,
    /// at least one page). Big stacks may get more (see "Layout" on
    /// [`StackPool`]).
    pub fn guard_size(mut self, bytes: usize) -> Self {
        self.guard_size = bytes;
        self
    }

    /// Bytes below the top of a returned stack kept committed for the next
    /// user (rounded up to whole pages). Pages below are released when a
    /// use went deeper (see the module docs). 0 releases every page of
    /// every returned stack (a system call per release); a value at or above
    /// the stack size never releases any from a plain user. A stack that is
    /// zeroed keeps at most this much, and less when its uses are shallower
    /// (see "Zeroing" on [`StackPool`]).
    pub fn resident(mut self, bytes: usize) -> Self {
        self.resident = bytes;
        self
    }

    /// Zero every stack when it comes back, so that every stack the pool
    /// hands out reads as zeros, whether acquired zeroed or not. Costs a
    /// `memset` of what the user dirtied near the top per release and a
    /// share of a batched `madvise` (see "Zeroing" on [`StackPool`]);
    /// without it, only [`StackPool::acquire_zeroed`] zeroes.
    pub fn zero_on_return(mut self, zero: bool) -> Self {
        self.zero_on_return = zero;
        self
    }

    /// The configured stack size, as given.
    pub fn get_stack_size(&self) -> usize {
        self.stack_size
    }

    /// The configured capacity.
    pub fn get_capacity(&self) -> usize {
        self.capacity
    }
}

/// The region and its bookkeeping, shared by the pool handles and every
/// stack handed out; unmapped when the last of them goes.
struct Inner {
    /// Start of the reservation (slot 0's guard).
    base: NonNull<u8>,
    /// Bytes reserved: `slot_size * capacity`.
    len: usize,
    slot_size: usize,
    guard: usize,
    /// Usable bytes per slot, `slot_size - guard`.
    stack_size: usize,
    /// Resident bytes kept on return, page rounded and at most `stack_size`.
    resident: usize,
    zero_on_return: bool,
    capacity: usize,
    kind: GuardKind,
    id: usize,
    /// Free-list head: bits 0..32 the top slot's index + 1 (0: empty),
    /// bits 32..64 a tag bumped on every change.
    head: AtomicU64,
    /// Zeroed slots (every byte zero), as a list like the free list's.
    clean: AtomicU64,
    /// Slots a zeroing release has cleared down to their window, whose
    /// pages below it still await `MADV_DONTNEED` (done for many slots in
    /// one system call, see "Zeroing" on [`StackPool`]).
    pending: AtomicU64,
    /// Per slot, in pages: the window a pending slot was cleared down to
    /// (its pages below are the ones still to release).
    cleared: Box<[AtomicU32]>,
    /// Per slot: index + 1 of the slot below it on the free list.
    next: Box<[AtomicU32]>,
    /// Per slot: `GUARDED | ARMED | CLEAN` flags.
    flags: Box<[AtomicU8]>,
    /// Per slot, in pages: the zeroing window, how far below the top the
    /// next zeroing looks for dirty bytes with a `memset` (below it, the
    /// kernel clears). Only touched by the slot's owner; at most
    /// `resident`.
    window: Box<[AtomicU32]>,
    /// The page size, read once.
    page: usize,
    /// Per thread group: a free slot parked by the last stack a thread of
    /// the group returned (see "Free list" on [`StackPool`]). A parked slot
    /// carries one strong count of the `Arc` this is in.
    /// (A fixed-size array: indexing it with a cell index needs no bounds
    /// check.)
    parked: [ParkingCell; PARKING_CELLS],
    /// The flags of a slot that a plain acquire can hand out as it is:
    /// `GUARDED`, plus `ARMED` when depth is tracked.
    ready: u8,
    /// Whether a plain release has work beyond handing the slot back
    /// (canaries to check, or every page to release).
    release_work: bool,
    /// Slots `fresh..capacity` have never been handed out.
    fresh: AtomicUsize,
    /// `StackPool` handles alive; `Arc::strong_count - handles` is the
    /// number of stacks out.
    handles: AtomicUsize,
    /// Withdrawn from the lookup table before the memory is unmapped.
    registration: Option<Registration>,
}

// SAFETY: `base` names a mapping owned by Inner; every mutable field is
// atomic, and slot memory is only touched by the slot's current owner.
unsafe impl Send for Inner {}
// SAFETY: as above; shared access goes through atomics.
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // Withdraw from the lookup table first, so no lookup names memory
        // that is about to go.
        self.registration.take();
        // SAFETY: the mapping made in `StackPool::new`; the last handle to it
        // is going (no stack is out: each holds an Arc to us).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A pool of stacks with guard regions in one reservation, safe to share
/// between threads.
///
/// `StackPool` is a cheap handle (`Clone` is an `Arc` clone). Dropping every
/// handle while stacks are still out is fine: the memory stays mapped until
/// the last [`PooledStack`] is dropped too.
///
/// ```
/// use stackswitch::{Fiber, FiberResult, PoolConfig, StackPool, Suspender};
///
/// let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(16))?;
/// let mut fiber = Fiber::with_stack(pool.acquire()?, |x: u32, _: &Suspender<u32, ()>| x * 2)?;
/// assert_eq!(pool.in_use(), 1);
/// assert_eq!(fiber.resume(21), FiberResult::Return(42));
/// drop(fiber); // the stack goes back to the pool
/// assert_eq!(pool.in_use(), 0);
/// # Ok::<(), stackswitch::Error>(())
/// ```
///
/// # Layout
///
/// ```text
///  base                                                         base + capacity * slot_size
///   │ slot 0                   │ slot 1                   │ ... │ slot capacity-1          │
///   ├───────┬──────────────────┼───────┬──────────────────┼─────┼───────┬──────────────────┤
///   │ guard │ stack ▲ grows    │ guard │ stack            │     │ guard │ stack            │
///   ├───────┴──────────────────┼───────┴──────────────────┼─────┴───────┴──────────────────┤
///   │◄────── slot_size ───────►│   (guard + stack, both whole pages)
/// ```
///
/// Big stacks are laid out on page-table boundaries when that adds at most
/// an eighth to each: every stack's low end is aligned to the span of a
/// page table (2 MiB with 4 KiB pages), the stack is rounded up so that
/// what lies below its resident top is whole page tables (a 2 MiB stack
/// keeping 64 KiB resident gets 2 MiB + 64 KiB; a 1 MiB one would need
/// twice its size, and stays as it is), and the slot to whole page
/// tables, the difference going to the guard region (a 4 MiB slot for that
/// stack, of which almost 2 MiB guard: address space only). The part of a
/// stack below its resident top then has page tables of its own, which
/// exist only if a use went that deep: releasing it when the stack comes
/// back (zeroing, trimming) spares the kernel a walk over the page table of
/// the resident top. Measured on this project's CI machine, a
/// `process_madvise` release of 2 MiB stacks costs 0.3-0.45 µs per stack
/// laid out so, 0.8-1.0 µs laid out plainly.
///
/// Each slot's stack follows the layout described in the `stack`
/// module docs. The region is registered in the lookup table, so the slot of
/// any address is `(addr - base) / slot_size`: [`StackBounds::containing`]
/// answers in O(1) for every slot, handed out or not.
///
/// # Free list
///
/// Returned slots go on a lock-free LIFO (a Treiber stack) whose head packs
/// the top slot's index with a 32-bit tag that changes on every push and
/// pop, so a pop that read a stale head fails its compare-and-swap (the ABA
/// problem would need 2³² operations to happen while one thread sits
/// between its load and its CAS). LIFO order hands out the most recently
/// used, cache-warm slot first. Slots never used yet are taken from a bump
/// counter; their guard is installed on first use, so making a pool of any
/// capacity costs one system call (the `mmap`).
///
/// In front of the free list, each pool has 32 *parking cells*, one per
/// group of threads (a thread gets its cell, the same index in every pool,
/// round robin on first use). A released stack is parked in its thread's
/// cell with one atomic swap, together with the `Arc` strong count its
/// handle held; whatever the cell held before goes to the free list. An
/// acquire first swaps its thread's cell empty and, if a slot was there,
/// hands it out with that strong count. So a warm acquire + release, the
/// common case of a thread creating and finishing fibers one after the
/// other, is two uncontended swaps on a cache line no other thread uses
/// (while at most 32 threads use the pool): no compare-and-swap loop, no
/// reference-count change, no system call.
/// Before, it was a CAS on the free-list head and an `Arc` increment each
/// way, four locked operations (about 2.7 ns each here); measured (CPU
/// time, AMD EPYC VM shared with other jobs): acquire + drop 25 → 17 ns, a
/// fiber's create + run + drop on a pooled stack 36–38 → 29 ns (corosensei
/// reusing one stack: 19 ns).
///
/// A thread can skip even those swaps with a [`LocalPool`], its own handle
/// on the pool, which keeps the stacks its thread returns and hands them
/// out again without any atomic operation.
///
/// Parked slots stay reachable: an acquire that finds the free list empty
/// and no never-used slot left takes one from any cell before reporting
/// [`Error::PoolExhausted`], so a pool is exhausted only when every slot is
/// out (or, at that moment, being taken or returned by another thread).
/// [`in_use`](StackPool::in_use) does not count parked slots. When the
/// last [`StackPool`] handle goes, every cell is closed (its slot pushed
/// to the free list, its strong count dropped), and a stack returned later
/// finds its cell closed and goes to the free list; so the region is
/// unmapped when the last stack goes, as without the cells.
///
/// # Resident memory on return
///
/// A returned stack keeps up to [`PoolConfig::resident`] bytes below its top
/// committed (they are the pages the next fiber touches first); pages below
/// that are released with `MADV_DONTNEED`. A system call on every release
/// would cost more than the rest of a fiber's life, so the pool only makes
/// one when the stack was used deeper than that limit, and finds out with
/// canaries: 16 words, one every 256 bytes, written in the lowest page of
/// the resident part when the slot is handed out. A release compares them
/// (16 loads) and calls `madvise` only if one changed. A stack that went
/// deeper wrote that page on its way down (every call stores a return
/// address, every frame larger than a page probes each page), so it usually
/// changes at least one canary; a stack that reached into that page but
/// not beyond costs one needless `madvise`. The check is a heuristic:
/// should a deep use miss every canary, its pages stay committed until a
/// later use trips them or [`StackPool::trim`] is called.
///
/// # Zeroing
///
/// A stack acquired with [`StackPool::acquire_zeroed`] (what Wasmtime asks
/// for with `async_stack_zeroing(true)`), or every returned stack with
/// [`PoolConfig::zero_on_return`], is made exactly zero before it is handed
/// out zeroed again, with work in proportion to what its user dirtied:
/// - in a per-slot *window* below the top, the lowest 64-byte line holding
///   a nonzero byte is found by reading (clean memory costs a read, no
///   write), and a `memset` clears from that line to the top. This is done
///   when the stack comes back.
/// - every page below the window is released with `MADV_DONTNEED`
///   (anonymous pages read as zeros afterwards, however deep the user went
///   and whatever it skipped). Returned slots wait on a *pending* list for
///   this, and a zeroed acquire that finds no clean slot releases up to 16
///   of them with one `process_madvise` system call (Linux 6.13+, falling
///   back to one `madvise` per slot), keeps one and puts the others on a
///   *clean* list, from which the next zeroed acquires take theirs without
///   a system call.
///
/// Nothing is assumed clean without having been read or released, so the
/// result is exact wherever the user wrote. The window only decides how
/// the work is split: it starts at one page, doubles when a use dirtied its
/// lowest kilobyte (the use may have gone deeper, and a deeper window saves
/// the page faults next time), shrinks by a page per zeroing towards what
/// was dirty plus a kilobyte, in whole pages, and never exceeds
/// [`PoolConfig::resident`].
///
/// A zeroed acquire takes, in order: a clean slot, a never-used one, a
/// batch of pending ones, and only then any other free slot, which it
/// zeroes on the spot (a slot a plain user returned: its whole resident
/// part is the window). A plain acquire takes pending and clean slots only
/// after every other free slot. So zeroed stacks cycle through the slots
/// instead of reusing the last one, and a pool that is nearly exhausted
/// may have its last slots in a batch another thread is releasing; a
/// concurrent acquire can then find it exhausted for that moment.
///
/// Measured here (2 MiB stacks, Wasmtime requests that each dirty under one
/// page, a pool of 16; the compare example, one run): zeroing adds a read
/// of about 3 KiB and a `memset` of under 1 KiB per request, and one
/// system call per 16 requests; a new `Store` per call costs 2.45 µs with
/// zeroing against 1.53 µs without (Wasmtime's default stacks: 15.4 µs,
/// ratio 0.16). Before the window and the batches, each release `memset`
/// the whole 64 KiB resident part and made its own `madvise` (about 1 µs
/// here, most of it the system call's fixed cost): 3.9 µs against 1.6 µs
/// (ratio 0.25). Only the kernel knows, exactly, whether a page below the
/// window was touched, so some system call stays; the batches share its
/// fixed cost.
pub struct StackPool {
    inner: Arc<Inner>,
}

impl StackPool {
    /// Reserves the region for `config.capacity` stacks and registers it
    /// for lookups. No stack memory is committed, and no guard installed,
    /// until a slot is first used.
    ///
    /// # Errors
    /// [`Error::StackTooSmall`]/[`Error::StackTooLarge`] for the stack size,
    /// [`Error::BadGuardSize`] for the guard, [`Error::BadPoolConfig`] for a
    /// capacity of 0 or above [`MAX_POOL_CAPACITY`], a region above
    /// [`MAX_POOL_BYTES`], or when [`MAX_REGIONS`](crate::MAX_REGIONS) pools
    /// are alive; [`Error::Mmap`] when the kernel refuses the reservation.
    pub fn new(config: PoolConfig) -> Result<Self, Error> {
        let stack_size = checked_stack_size(config.stack_size)?;
        let page = page_size();
        let guard = match round_up_to_page(config.guard_size, page) {
            Some(g) if config.guard_size > 0 && g <= MAX_STACK_SIZE => g,
            _ => {
                return Err(Error::BadGuardSize {
                    requested: config.guard_size,
                    maximum: MAX_STACK_SIZE,
                })
            }
        };
        let capacity = config.capacity;
        if capacity == 0 || capacity > MAX_POOL_CAPACITY {
            return Err(Error::BadPoolConfig {
                reason: format!(
                    "capacity {capacity} must be between 1 and {MAX_POOL_CAPACITY} stacks"
                ),
            });
        }
        let resident = round_up_to_page(config.resident.min(stack_size), page).unwrap_or(0);
        let plain = Layout {
            stack: stack_size,
            guard,
            align: page,
        };
        // Big stacks get the aligned layout if its region is not too big.
        let layout = Layout::aligned(stack_size, guard, resident, page)
            .filter(|aligned| aligned.region(capacity).is_some())
            .unwrap_or(plain);
        let Layout {
            stack: stack_size,
            guard,
            align,
        } = layout;
        // Both at most MAX_STACK_SIZE: no overflow.
        let slot_size = stack_size + guard;
        let Some(len) = layout.region(capacity) else {
            return Err(Error::BadPoolConfig {
                reason: format!(
                    "{capacity} slots of {slot_size} bytes (stack {stack_size} + guard \
                     {guard}) exceed the maximum region of {MAX_POOL_BYTES} bytes"
                ),
            });
        };
        let base = reserve_aligned(len, guard, align)?;
        static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let tracks_depth = resident > 0 && resident < stack_size;
        let mut inner = Inner {
            base,
            len,
            slot_size,
            guard,
            stack_size,
            resident,
            zero_on_return: config.zero_on_return,
            capacity,
            kind: guard_kind(),
            id,
            head: AtomicU64::new(0),
            clean: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            cleared: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            next: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            flags: (0..capacity).map(|_| AtomicU8::new(CLEAN)).collect(),
            window: (0..capacity).map(|_| AtomicU32::new(1)).collect(),
            page,
            parked: std::array::from_fn(|_| ParkingCell(AtomicUsize::new(EMPTY))),
            ready: GUARDED | if tracks_depth { ARMED } else { 0 },
            release_work: tracks_depth || resident == 0,
            fresh: AtomicUsize::new(0),
            handles: AtomicUsize::new(1),
            registration: None,
        };
        // On error `inner` drops here and unmaps the region.
        inner.registration = Some(register_region(
            base.as_ptr() as usize,
            slot_size,
            capacity,
            guard,
            id,
        )?);
        Ok(StackPool {
            inner: Arc::new(inner),
        })
    }

    /// Takes a stack from the pool; it goes back when the handle is
    /// dropped (usually with the [`Fiber`](crate::Fiber) that owns it).
    ///
    /// A slot used before costs no system call; one never used costs its
    /// guard installation. The stack's contents are whatever its last user
    /// left (see [`acquire_zeroed`](Self::acquire_zeroed)).
    ///
    /// # Errors
    /// [`Error::PoolExhausted`] when all slots are out; [`Error::GuardPage`]
    /// if installing a new slot's guard fails.
    #[inline]
    pub fn acquire(&self) -> Result<PooledStack, Error> {
        self.take(false)
    }

    /// Like [`acquire`](Self::acquire), but every byte of the stack reads as
    /// zero. The stack is zeroed again when it is returned, mostly then and
    /// partly by a later zeroed acquire, which releases the deep pages of
    /// many returned stacks in one system call (see "Zeroing" on
    /// [`StackPool`]).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    pub fn acquire_zeroed(&self) -> Result<PooledStack, Error> {
        self.take(true)
    }

    #[inline]
    fn take(&self, zeroed: bool) -> Result<PooledStack, Error> {
        let inner = &*self.inner;
        if zeroed || inner.zero_on_return {
            return self.take_zeroed();
        }
        // The warm path: the slot this thread returned last.
        if let Some((index, pool)) = self.unpark() {
            return self.hand_out(index, zeroed, pool);
        }
        self.take_shared(zeroed)
    }

    /// The slot parked in this thread's cell, if any, with the strong
    /// count it carries: one swap.
    #[inline(always)]
    fn unpark(&self) -> Option<(usize, Arc<Inner>)> {
        let parked = self.inner.parked[my_cell()]
            .0
            .swap(EMPTY, Ordering::Acquire);
        if parked == EMPTY {
            return None;
        }
        // SAFETY: a parked slot carries one strong count of `self.inner`
        // (cells are never CLOSED while a handle lives), which the swap
        // handed to us.
        let pool = unsafe { Arc::from_raw(Arc::as_ptr(&self.inner)) };
        Some((parked - 1, pool))
    }

    /// A zeroed stack: a clean slot, a never-used one, a batch of pending
    /// slots released with one system call, or else any slot, zeroed now.
    #[inline(never)]
    fn take_zeroed(&self) -> Result<PooledStack, Error> {
        let inner = &*self.inner;
        if let Some(index) = inner.pop_from(&inner.clean).or_else(|| inner.bump()) {
            return self.prepare(index, true, Arc::clone(&self.inner));
        }
        if let Some(index) = inner.release_pending() {
            return self.prepare(index, true, Arc::clone(&self.inner));
        }
        if let Some((index, pool)) = self.unpark() {
            return self.prepare(index, true, pool);
        }
        self.take_shared(true)
    }

    /// Takes a slot from the free list, a never-used one, a clean or
    /// pending one, or (the pool looking exhausted) one parked by another
    /// thread.
    #[inline(never)]
    fn take_shared(&self, zeroed: bool) -> Result<PooledStack, Error> {
        let inner = &*self.inner;
        let shared = inner
            .pop()
            .or_else(|| inner.bump())
            .or_else(|| inner.pop_from(&inner.clean))
            .or_else(|| inner.pop_from(&inner.pending));
        if let Some(index) = shared {
            return self.hand_out(index, zeroed, Arc::clone(&self.inner));
        }
        for cell in inner.parked.iter() {
            let parked = cell.0.load(Ordering::Relaxed);
            if parked != EMPTY
                && cell
                    .0
                    .compare_exchange(parked, EMPTY, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                // SAFETY: as in `take`: the parked slot's strong count is
                // now ours.
                let pool = unsafe { Arc::from_raw(Arc::as_ptr(&self.inner)) };
                return self.hand_out(parked - 1, zeroed, pool);
            }
        }
        Err(Error::PoolExhausted {
            capacity: inner.capacity,
        })
    }

    /// Hands out slot `index`, which we took, with the strong count `pool`
    /// it will hold: as it is when a plain acquire finds it ready.
    #[inline]
    fn hand_out(&self, index: usize, zeroed: bool, pool: Arc<Inner>) -> Result<PooledStack, Error> {
        let inner = &*self.inner;
        if !zeroed
            && !inner.zero_on_return
            && inner.flags[index].load(Ordering::Relaxed) == inner.ready
        {
            return Ok(PooledStack::new(index, false, pool));
        }
        self.prepare(index, zeroed, pool)
    }

    /// Makes a slot we took ready: its guard on first use, zeroed if
    /// asked, canaries armed if its depth is to be tracked.
    #[cold]
    #[inline(never)]
    fn prepare(&self, index: usize, zeroed: bool, pool: Arc<Inner>) -> Result<PooledStack, Error> {
        let inner = &*self.inner;
        let bounds = inner.bounds(index);
        let flags = &inner.flags[index];
        let mut f = flags.load(Ordering::Relaxed);
        if f & GUARDED == 0 {
            // SAFETY: the guard part of a slot we now own, page aligned,
            // inside our mapping; nothing lives there.
            if let Err(e) = unsafe { install_guard(bounds.guard as *mut u8, inner.guard) } {
                inner.push(index);
                drop(pool);
                return Err(e);
            }
            f |= GUARDED;
        }
        // A stack zeroed on its return needs no canaries: its release
        // clears everything anyway.
        let zero_on_drop = zeroed || inner.zero_on_return;
        if zeroed && f & CLEAN == 0 {
            // Its last user was a plain one, which keeps the resident part
            // committed: read it rather than release it.
            // SAFETY: we own the slot; nothing lives on it.
            let dirty = unsafe { inner.zero(bounds, inner.resident) };
            inner.set_window(index, inner.next_window(inner.resident, dirty));
            f |= CLEAN;
        }
        if !zero_on_drop && f & ARMED == 0 && inner.tracks_depth() {
            // SAFETY: we own the slot; nothing lives on it.
            unsafe { inner.arm(bounds) };
            f |= ARMED;
        }
        if !zero_on_drop {
            // A plain user may dirty it; its release will not say so.
            f &= !CLEAN;
        }
        flags.store(f, Ordering::Relaxed);
        Ok(PooledStack::new(index, zero_on_drop, pool))
    }

    /// How many stacks are out (acquired and not yet dropped; a returned
    /// stack parked for its thread is not). A snapshot: other threads may
    /// change it at any moment.
    pub fn in_use(&self) -> usize {
        let handles = self.inner.handles.load(Ordering::Acquire);
        let parked = self.inner.parked.iter();
        let parked = parked
            .filter(|c| c.0.load(Ordering::Acquire) != EMPTY)
            .count();
        Arc::strong_count(&self.inner).saturating_sub(handles + parked)
    }

    /// How many stacks the pool holds.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Usable bytes per stack: the configured size rounded up to pages,
    /// and for big stacks to page tables (see "Layout" above).
    pub fn stack_size(&self) -> usize {
        self.inner.stack_size
    }

    /// Bytes per slot: guard plus stack.
    pub fn slot_size(&self) -> usize {
        self.inner.slot_size
    }

    /// Bytes of guard region below each stack: at least the configured
    /// guard size (more for big stacks, see "Layout" above).
    pub fn guard_size(&self) -> usize {
        self.inner.guard
    }

    /// How the guard regions are made (the process-wide mechanism, see
    /// [`guard_kind`](crate::guard_kind)).
    pub fn guard_kind(&self) -> GuardKind {
        self.inner.kind
    }

    /// The id this pool's region is registered under: the `region_id` of
    /// [`StackLocation::PoolSlot`](crate::StackLocation::PoolSlot) for
    /// addresses in this pool.
    pub fn id(&self) -> usize {
        self.inner.id
    }

    /// The reserved address range, all slots.
    pub fn region(&self) -> std::ops::Range<usize> {
        let base = self.inner.base.as_ptr() as usize;
        base..base + self.inner.len
    }

    /// The bounds of slot `index`, or `None` past the capacity.
    pub fn slot_bounds(&self, index: usize) -> Option<StackBounds> {
        (index < self.inner.capacity).then(|| self.inner.bounds(index))
    }

    /// Releases the pages below the resident limit of every free stack
    /// (one `madvise` per slot used so far), whatever the canaries say.
    /// Stacks out are not touched, nor those a [`LocalPool`] keeps (they
    /// count as out), nor those returned zeroed (their pages below the
    /// zeroing window are released already, or will be before any reuse).
    /// Returns how many slots were trimmed.
    ///
    /// Slots are taken off the free list while they are trimmed, so a
    /// concurrent [`acquire`](Self::acquire) may see the pool as fuller than
    /// it is for that moment.
    pub fn trim(&self) -> usize {
        let inner = &*self.inner;
        let mut taken = Vec::new();
        while let Some(index) = inner.pop() {
            taken.push(index);
        }
        // Parked slots too: they go back to the free list, their strong
        // counts dropped.
        for cell in inner.parked.iter() {
            let parked = cell.0.swap(EMPTY, Ordering::Acquire);
            if parked != EMPTY {
                taken.push(parked - 1);
                // SAFETY: the parked slot's strong count, now ours; ours
                // (`self.inner`) keeps the pool alive.
                drop(unsafe { Arc::from_raw(Arc::as_ptr(&self.inner)) });
            }
        }
        for &index in &taken {
            let b = inner.bounds(index);
            let keep_from = b.high - inner.resident;
            if keep_from > b.low {
                // SAFETY: a free slot we hold off the free list; its pages
                // below the resident limit hold nothing anyone will read.
                unsafe { release_pages(b.low, keep_from - b.low) };
            }
        }
        // Push back in reverse so the warmest slot is on top again.
        for &index in taken.iter().rev() {
            inner.push(index);
        }
        taken.len()
    }
}

impl Clone for StackPool {
    fn clone(&self) -> Self {
        // Counted before the Arc clone, so in_use never reads one too many.
        self.inner.handles.fetch_add(1, Ordering::AcqRel);
        StackPool {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl Drop for StackPool {
    fn drop(&mut self) {
        if self.inner.handles.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // The last handle: close every parking cell, so that the pool goes
        // when its last stack does (a parked slot's strong count would keep
        // it mapped). A stack released after this finds its cell closed
        // and goes to the free list (see `Inner::park`).
        for cell in self.inner.parked.iter() {
            let parked = cell.0.swap(CLOSED, Ordering::AcqRel);
            if parked != EMPTY {
                self.inner.push(parked - 1);
                // SAFETY: the parked slot's strong count, now ours; ours
                // (`self.inner`) keeps the pool alive meanwhile.
                drop(unsafe { Arc::from_raw(Arc::as_ptr(&self.inner)) });
            }
        }
    }
}

impl fmt::Debug for StackPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackPool")
            .field("id", &self.inner.id)
            .field("region", &self.region())
            .field("stack_size", &self.inner.stack_size)
            .field("guard_size", &self.inner.guard)
            .field("capacity", &self.inner.capacity)
            .field("in_use", &self.in_use())
            .field("guard_kind", &self.inner.kind)
            .finish()
    }
}

/// How a pool's slots are laid out: each slot is a guard region of `guard`
/// bytes followed by `stack` bytes of stack, and every stack's low end is a
/// multiple of `align`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    stack: usize,
    guard: usize,
    align: usize,
}

impl Layout {
    /// The layout for big stacks that keep some but not all of themselves
    /// resident, or `None` when it does not apply: the stack is rounded up
    /// so that the part below its resident top is a whole number of page
    /// tables (2 MiB each with 4 KiB pages) and its low end is aligned to
    /// one, and the slot to a whole number of them.
    ///
    /// Why: releasing a returned stack's pages below what it keeps
    /// resident (every zeroed stack, every deep use) costs the kernel a
    /// walk of each page table under the range that exists. Laid out
    /// plainly, the page table under a stack's resident top also covers
    /// most of the stack below it, and the walk of its 512 entries was
    /// most of a release (0.8-1.0 µs per 2 MiB stack, against 0.3-0.45
    /// µs aligned, on this project's CI machine). Aligned, the
    /// part below the resident top has page tables of its own, which exist
    /// only if a use went that deep, and the guard region below the stack
    /// falls in the page table of the slot below's resident top.
    ///
    /// Applied when that rounding adds at most an eighth to the stack
    /// (for instance 2 MiB with 64 KiB resident becomes 2 MiB + 64 KiB);
    /// the slot then spans a page-table multiple (4 MiB for that stack),
    /// the difference going to the guard region.
    fn aligned(stack: usize, guard: usize, resident: usize, page: usize) -> Option<Layout> {
        // The span one last-level page table maps: page / 8 entries.
        let span = page * (page / 8);
        if resident == 0 || resident >= stack {
            return None;
        }
        let aligned_stack = (stack - resident)
            .checked_next_multiple_of(span)?
            .checked_add(resident)?;
        if aligned_stack - stack > stack / 8 || aligned_stack > MAX_STACK_SIZE {
            return None;
        }
        let slot = (aligned_stack + guard).checked_next_multiple_of(span)?;
        Some(Layout {
            stack: aligned_stack,
            guard: slot - aligned_stack,
            align: span,
        })
    }

    /// Bytes of the region for `capacity` slots, if at most
    /// [`MAX_POOL_BYTES`].
    fn region(&self, capacity: usize) -> Option<usize> {
        (self.stack + self.guard)
            .checked_mul(capacity)
            .filter(|&len| len <= MAX_POOL_BYTES)
    }
}

/// Reserves `len` bytes (as [`reserve`]) placed so that `base + guard` is a
/// multiple of `align` (a power of two, at least the page size): the low
/// end of the first stack, and of every stack if the slot size is a
/// multiple of `align`.
fn reserve_aligned(len: usize, guard: usize, align: usize) -> Result<NonNull<u8>, Error> {
    if align <= page_size() {
        return reserve(len);
    }
    // len <= MAX_POOL_BYTES and align <= a page table's span: no overflow.
    let over = len + align;
    let raw = reserve(over)?.as_ptr() as usize;
    let base = (raw + guard).next_multiple_of(align) - guard;
    // Both page aligned: raw is, and guard and align are page multiples.
    // SAFETY: the head and tail of our own fresh reservation, outside
    // base..base + len (base - raw < align), holding nothing.
    unsafe {
        if base > raw {
            libc::munmap(raw as *mut libc::c_void, base - raw);
        }
        if raw + over > base + len {
            libc::munmap((base + len) as *mut libc::c_void, raw + over - (base + len));
        }
    }
    Ok(NonNull::new(base as *mut u8).expect("a reservation above address 0"))
}

impl Inner {
    #[inline]
    fn bounds(&self, index: usize) -> StackBounds {
        let guard = self.base.as_ptr() as usize + index * self.slot_size;
        StackBounds {
            guard,
            low: guard + self.guard,
            high: guard + self.slot_size,
        }
    }

    /// Whether returned stacks are trimmed by canaries (some but not all
    /// of a stack is kept resident).
    #[inline]
    fn tracks_depth(&self) -> bool {
        self.resident > 0 && self.resident < self.stack_size
    }

    /// Pops the most recently freed slot.
    #[inline]
    fn pop(&self) -> Option<usize> {
        self.pop_from(&self.head)
    }

    /// Pushes a slot its caller owns and no longer uses.
    #[inline]
    fn push(&self, index: usize) {
        self.push_to(&self.head, index)
    }

    /// Pops the top slot of the list whose head is `list` (the free list,
    /// `clean` or `pending`; they share `next`, a slot being on one list
    /// at most).
    #[inline]
    fn pop_from(&self, list: &AtomicU64) -> Option<usize> {
        let mut head = list.load(Ordering::Acquire);
        loop {
            let top = head as u32;
            if top == 0 {
                return None;
            }
            // A stale read (the slot was popped meanwhile) is harmless: the
            // tag makes the CAS below fail.
            let below = self.next[top as usize - 1].load(Ordering::Relaxed);
            let new = (head >> 32).wrapping_add(1) << 32 | u64::from(below);
            match list.compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Some(top as usize - 1),
                Err(now) => head = now,
            }
        }
    }

    /// Pushes a slot its caller owns onto the list whose head is `list`.
    #[inline]
    fn push_to(&self, list: &AtomicU64, index: usize) {
        let mut head = list.load(Ordering::Relaxed);
        loop {
            self.next[index].store(head as u32, Ordering::Relaxed);
            let new = (head >> 32).wrapping_add(1) << 32 | (index as u64 + 1);
            // Release: the slot's memory and flags, written by its last
            // owner, are visible to whoever pops it.
            match list.compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Takes a never-used slot, if any are left.
    #[cold]
    fn bump(&self) -> Option<usize> {
        self.fresh
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                (f < self.capacity).then_some(f + 1)
            })
            .ok()
    }

    /// Where the canaries of a slot with these bounds go: the lowest page
    /// of its resident part.
    #[inline]
    fn canary_base(&self, b: StackBounds) -> *mut u64 {
        (b.high - self.resident) as *mut u64
    }

    /// Writes the canaries.
    ///
    /// # Safety
    /// The caller owns the slot and nothing lives in its lowest resident
    /// page.
    unsafe fn arm(&self, b: StackBounds) {
        let base = self.canary_base(b);
        for i in 0..CANARIES {
            // SAFETY: `resident` is at least one page and 16 * 256 bytes is
            // one page, so every canary lies in low..high of a slot we own.
            unsafe { base.byte_add(i * CANARY_STRIDE).write_volatile(CANARY) };
        }
    }

    /// Whether any canary changed.
    ///
    /// # Safety
    /// As [`arm`](Self::arm): the caller owns the slot (after its user).
    #[inline]
    unsafe fn tripped(&self, b: StackBounds) -> bool {
        let base = self.canary_base(b);
        let mut diff = 0;
        for i in 0..CANARIES {
            // SAFETY: as in `arm`.
            diff |= unsafe { base.byte_add(i * CANARY_STRIDE).read_volatile() } ^ CANARY;
        }
        diff != 0
    }

    /// Makes the whole stack of a slot read as zeros, for any `window`
    /// (page aligned, at most the stack): below the top `window` bytes
    /// with `MADV_DONTNEED` (pages of a private anonymous mapping read as
    /// zeros afterwards, whatever was in them, present or swapped out); in
    /// the window, the lowest 64-byte line holding a nonzero byte is found
    /// by reading, and that line and every byte above it are cleared with
    /// a `memset`. No byte is assumed clean without being read or
    /// released, so nothing a user wrote is missed, wherever it wrote: the
    /// window only decides how the work is split between the kernel and
    /// the `memset`.
    ///
    /// Returns how far below the top the window was dirty, from its lowest
    /// dirty line (0 if it was clean).
    ///
    /// # Safety
    /// The caller owns the slot and nothing lives on it.
    unsafe fn zero(&self, b: StackBounds, window: usize) -> usize {
        let keep_from = b.high - window;
        // SAFETY: the caller's contract; low..keep_from is in the slot and
        // page aligned.
        unsafe { release_or_clear(b.low, keep_from - b.low) };
        // SAFETY: the caller's contract.
        unsafe { self.clear_window(b, window) }
    }

    /// The window half of [`zero`](Self::zero): clears the top `window`
    /// bytes from their lowest dirty line up; returns how far below the
    /// top they were dirty.
    ///
    /// # Safety
    /// As for `zero`.
    unsafe fn clear_window(&self, b: StackBounds, window: usize) -> usize {
        let keep_from = b.high - window;
        // SAFETY: the caller's contract; keep_from..high is in the slot,
        // page aligned.
        let dirty_from = unsafe { first_dirty_line(keep_from, b.high) };
        // SAFETY: the caller's contract; dirty_from..high is in the slot.
        unsafe { std::ptr::write_bytes(dirty_from as *mut u8, 0, b.high - dirty_from) };
        b.high - dirty_from
    }

    /// Takes back a slot that was handed out zeroed (or from a pool that
    /// zeroes on return): its window is cleared now, its pages below the
    /// window wait on the `pending` list to be released together with
    /// other slots' (see "Zeroing" on [`StackPool`]).
    ///
    /// # Safety
    /// The caller owns the slot (its handle is being dropped).
    unsafe fn retire_zeroed(&self, index: usize) {
        let b = self.bounds(index);
        let window = self.window(index);
        // SAFETY: the caller's contract.
        let dirty = unsafe { self.clear_window(b, window) };
        self.set_window(index, self.next_window(window, dirty));
        let flags = &self.flags[index];
        let f = flags.load(Ordering::Relaxed) & !ARMED;
        if b.high - window == b.low {
            // The window is the whole stack: it is all zero now.
            flags.store(f | CLEAN, Ordering::Relaxed);
            self.push_to(&self.clean, index);
        } else {
            self.cleared[index].store(
                (window >> self.page.trailing_zeros()) as u32,
                Ordering::Relaxed,
            );
            flags.store(f & !CLEAN, Ordering::Relaxed);
            self.push_to(&self.pending, index);
        }
    }

    /// Takes up to [`RELEASE_BATCH`] pending slots, releases their pages
    /// below their cleared windows with one system call, marks them clean,
    /// and returns one of them (the others go on the clean list); `None`
    /// when nothing is pending.
    fn release_pending(&self) -> Option<usize> {
        let mut batch = [0usize; RELEASE_BATCH];
        let mut n = 0;
        while n < RELEASE_BATCH {
            match self.pop_from(&self.pending) {
                Some(index) => batch[n] = index,
                None => break,
            }
            n += 1;
        }
        let batch = &batch[..n];
        let (&first, rest) = batch.split_first()?;
        let ranges = batch.iter().map(|&index| {
            let b = self.bounds(index);
            let cleared = (self.cleared[index].load(Ordering::Relaxed) as usize) * self.page;
            (b.low, b.size() - cleared)
        });
        // SAFETY: slots we took off the pending list; below its cleared
        // window each holds nothing anyone will read.
        unsafe { release_ranges(ranges) };
        for &index in batch {
            let flags = &self.flags[index];
            flags.store(flags.load(Ordering::Relaxed) | CLEAN, Ordering::Relaxed);
        }
        for &index in rest.iter().rev() {
            self.push_to(&self.clean, index);
        }
        Some(first)
    }

    /// The window for a slot's next zeroing, after one over `window` bytes
    /// found the top `dirty` bytes dirty. Performance only (any window is
    /// exact): a use that dirtied the lowest [`DEEP_ZONE`] bytes of the
    /// window may have gone deeper, so the window doubles (the pages it
    /// needs then stay resident instead of faulting in again every time);
    /// otherwise it shrinks by a page per zeroing, down to what was dirty
    /// plus `DEEP_ZONE`, in whole pages. Bounded by the resident limit.
    #[inline]
    fn next_window(&self, window: usize, dirty: usize) -> usize {
        let next = if window > 0 && dirty > window.saturating_sub(DEEP_ZONE) {
            window * 2
        } else {
            let fits = (dirty + DEEP_ZONE + self.page - 1) & !(self.page - 1);
            fits.max(window.saturating_sub(self.page))
        };
        next.min(self.resident)
    }

    /// The zeroing window of slot `index`, in bytes.
    #[inline]
    fn window(&self, index: usize) -> usize {
        (self.window[index].load(Ordering::Relaxed) as usize * self.page).min(self.resident)
    }

    #[inline]
    fn set_window(&self, index: usize, bytes: usize) {
        // At most `resident`, at most MAX_STACK_SIZE: 2^24 pages of 4 KiB.
        // (A shift: the page size is a power of two, and a division by a
        // value read at run time is slow.)
        let pages = bytes >> self.page.trailing_zeros();
        self.window[index].store(pages as u32, Ordering::Relaxed);
    }

    /// The work a plain release may have before the slot goes back: the
    /// canaries, or releasing every page with a resident limit of 0.
    #[inline(never)]
    fn clean_up(&self, index: usize) {
        let b = self.bounds(index);
        let flags = &self.flags[index];
        let f = flags.load(Ordering::Relaxed);
        let f = if self.tracks_depth() {
            // Armed when handed out (not zeroed), so the canaries tell.
            // SAFETY: the handle that owned the slot is being dropped.
            if unsafe { self.tripped(b) } {
                let keep_from = b.high - self.resident;
                // SAFETY: as above; low..keep_from is in the slot.
                unsafe { release_pages(b.low, keep_from - b.low) };
                // SAFETY: as above.
                unsafe { self.arm(b) };
            }
            f
        } else if self.resident == 0 {
            // SAFETY: the handle that owned the slot is being dropped.
            unsafe { release_pages(b.low, b.high - b.low) };
            // Released pages read as zeros.
            f | CLEAN
        } else {
            f
        };
        flags.store(f, Ordering::Relaxed);
    }

    /// Takes back slot `index` with the strong count `pool` of its dropped
    /// handle: parks both in this thread's cell, and whatever was parked
    /// there goes to the free list. No strong count changes on the way.
    #[inline]
    fn park(pool: Arc<Inner>, index: usize) {
        // From the swap on, the parked slot owns the strong count; `pool`
        // must not be dropped. `this` stays valid below while we hold a
        // strong count: an evicted slot's, or (for a closed cell) the one
        // in the cell, which only we take back (see the closed case).
        let this = Arc::into_raw(pool);
        // SAFETY: we hold a strong count until the swap; `cell` is used
        // after it only while a strong count is held (below).
        let cell = unsafe { &(*this).parked[my_cell()].0 };
        // Release: the slot's memory and flags, written by its last owner,
        // are visible to whoever takes it from the cell.
        let evicted = cell.swap(index + 1, Ordering::AcqRel);
        match evicted {
            EMPTY => {}
            CLOSED => {
                // The pool's last handle has gone. Take back what is in the
                // cell (ours, or another late release's, which then took
                // ours: either way one slot and its strong count) and close
                // the cell again. Until this swap the cell holds a strong
                // count, so `this` is valid.
                let parked = cell.swap(CLOSED, Ordering::AcqRel);
                debug_assert!(parked != EMPTY && parked != CLOSED);
                // SAFETY: as above, `this` is alive; the slot is ours.
                unsafe { (*this).push(parked - 1) };
                // SAFETY: the strong count that came with it.
                drop(unsafe { Arc::from_raw(this) });
            }
            evicted => {
                // SAFETY: the evicted slot's strong count is ours, so `this`
                // is alive; the slot is ours to push.
                unsafe { (*this).push(evicted - 1) };
                // SAFETY: that strong count.
                drop(unsafe { Arc::from_raw(this) });
            }
        }
    }
}

/// The first address in `from..to` (both 64-byte aligned) of a 64-byte
/// line holding a nonzero byte; `to` if every byte is zero.
///
/// # Safety
/// The range is readable and nothing writes it meanwhile.
#[inline]
unsafe fn first_dirty_line(from: usize, to: usize) -> usize {
    let mut line = from;
    while line < to {
        // SAFETY: the caller's contract; `line` is 64-byte aligned and
        // line..line + 64 is in from..to.
        let w = unsafe { &*(line as *const [u64; 8]) };
        // The OR of a whole line, no early exit inside it: four 16-byte
        // loads and ORs.
        if (w[0] | w[1]) | (w[2] | w[3]) | (w[4] | w[5]) | (w[6] | w[7]) != 0 {
            break;
        }
        line += 64;
    }
    line
}

/// `MADV_DONTNEED` on `addr..addr + len`, or, should that fail, a
/// `memset`: either way the range reads as zeros afterwards.
///
/// # Safety
/// As [`release_pages`].
unsafe fn release_or_clear(addr: usize, len: usize) {
    // SAFETY: the caller's contract.
    if len > 0 && !unsafe { release_pages(addr, len) } {
        // SAFETY: as above; madvise failed, so clear by hand.
        unsafe { std::ptr::write_bytes(addr as *mut u8, 0, len) };
    }
}

/// `process_madvise` target meaning "the calling thread", whose memory is
/// the process's (`PIDFD_SELF_THREAD`, Linux 6.15+; older kernels reject
/// it with `EBADF`; `PIDFD_SELF_THREAD_GROUP` is refused by 6.18's
/// `process_madvise`).
const PIDFD_SELF_THREAD: libc::c_int = -10000;

/// Whether `process_madvise(PIDFD_SELF_THREAD, .., MADV_DONTNEED)` works
/// here; cleared at its first failure.
static BATCH_RELEASE: AtomicBool = AtomicBool::new(true);

/// Makes every `(addr, len)` range read as zeros: one `process_madvise`
/// system call for all of them where the kernel has it (Linux 6.13+ for
/// `MADV_DONTNEED` on oneself), else [`release_or_clear`] on each.
///
/// # Safety
/// As [`release_pages`], for every range.
unsafe fn release_ranges(ranges: impl Iterator<Item = (usize, usize)>) {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; RELEASE_BATCH];
    let mut n = 0;
    let mut total = 0;
    for (addr, len) in ranges.filter(|&(_, len)| len > 0).take(RELEASE_BATCH) {
        iov[n] = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        };
        n += 1;
        total += len;
    }
    if n == 0 {
        return;
    }
    // Valgrind does not know process_madvise (it would warn and fail it).
    if BATCH_RELEASE.load(Ordering::Relaxed) && !crate::valgrind::running_on_valgrind() {
        // SAFETY: the caller's contract for every range; `iov` holds `n`
        // initialised entries and outlives the call.
        let done = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                PIDFD_SELF_THREAD,
                iov.as_ptr(),
                n,
                libc::MADV_DONTNEED,
                0,
            )
        };
        if done == total as libc::c_long {
            return;
        }
        if done < 0 {
            BATCH_RELEASE.store(false, Ordering::Relaxed);
        }
    }
    // Not supported, or stopped part way: each range on its own (releasing
    // a range twice is harmless).
    for v in &iov[..n] {
        // SAFETY: the caller's contract.
        unsafe { release_or_clear(v.iov_base as usize, v.iov_len) };
    }
}

/// `MADV_DONTNEED` on `addr..addr + len`; whether it worked.
///
/// # Safety
/// The range is page aligned, in a private anonymous mapping, and holds
/// nothing anyone will read (it reads as zeros afterwards).
#[cold]
unsafe fn release_pages(addr: usize, len: usize) -> bool {
    // SAFETY: the caller's contract.
    unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) == 0 }
}

/// A stack from a [`StackPool`]; returns to it when dropped.
///
/// It keeps the pool's memory mapped while it lives, even if every
/// [`StackPool`] handle has gone.
///
/// ```
/// use stackswitch::{PoolConfig, Stack, StackBounds, StackPool};
/// let pool = StackPool::new(PoolConfig::default().capacity(2))?;
/// let stack = pool.acquire()?;
/// let b = stack.bounds();
/// assert_eq!(StackBounds::containing(b.high - 1), Some(b));
/// assert_eq!(b.size(), pool.stack_size());
/// # Ok::<(), stackswitch::Error>(())
/// ```
pub struct PooledStack {
    /// The slot index, shifted left by one; bit 0: zero the stack when it
    /// goes back. Two whole words and nothing else, so that moving a
    /// `PooledStack` (into a `Fiber`, out of a `Result`) is two 8-byte
    /// copies: narrower fields made the compiler copy them with mixed-width
    /// loads and stores, and the failed store-to-load forwarding that
    /// causes cost more than the pool's atomics (measured: acquire + drop
    /// went from 25 to 11 ns, a fiber's create + run + drop from 45 to 27).
    slot: usize,
    /// Dropped by hand: [`Drop`] moves it into a parking cell.
    pool: ManuallyDrop<Arc<Inner>>,
}

impl PooledStack {
    #[inline]
    fn new(index: usize, zero_on_drop: bool, pool: Arc<Inner>) -> Self {
        PooledStack {
            slot: index << 1 | usize::from(zero_on_drop),
            pool: ManuallyDrop::new(pool),
        }
    }

    /// The slot's index in its pool.
    pub fn slot(&self) -> usize {
        self.slot >> 1
    }

    /// The id of the pool it came from (see [`StackPool::id`]).
    pub fn pool_id(&self) -> usize {
        self.pool.id
    }
}

// SAFETY: the slot's memory is ours until drop (taken off the free list);
// low..high is read-write, guard..low was made a guard when the slot was
// first used; high is page aligned; the stack size passed
// `checked_stack_size`; the bounds never change.
unsafe impl Stack for PooledStack {
    #[inline]
    fn bounds(&self) -> StackBounds {
        self.pool.bounds(self.slot >> 1)
    }
}

impl Drop for PooledStack {
    #[inline]
    fn drop(&mut self) {
        let index = self.slot >> 1;
        // SAFETY: `pool` is not used again: the handle is being dropped.
        let pool = unsafe { ManuallyDrop::take(&mut self.pool) };
        if self.slot & 1 != 0 {
            // Handed out zeroed, or the pool zeroes every returned stack:
            // zeroed again now (its user is likely to want it zeroed again).
            // SAFETY: the slot is ours; its handle is being dropped.
            unsafe { pool.retire_zeroed(index) };
            return;
        }
        if pool.release_work {
            pool.clean_up(index);
        }
        Inner::park(pool, index);
    }
}

impl fmt::Debug for PooledStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledStack")
            .field("pool", &self.pool.id)
            .field("slot", &self.slot())
            .field("bounds", &self.bounds())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_layout_rounds_big_stacks_to_page_tables() {
        const K: usize = 1 << 10;
        const M: usize = 1 << 20;
        let aligned = |stack, guard, resident, page| Layout::aligned(stack, guard, resident, page);
        // 4 KiB pages: a page table spans 2 MiB. (stack, guard) in and out.
        for ((stack, guard), want) in [
            ((2 * M, 4 * K), (2 * M + 64 * K, 2 * M - 64 * K)),
            ((8 * M, 4 * K), (8 * M + 64 * K, 2 * M - 64 * K)),
            // A guard larger than what is left of the last page table.
            ((2 * M, 2 * M), (2 * M + 64 * K, 4 * M - 64 * K)),
            // Already whole page tables below the resident part.
            ((2 * M + 64 * K, 4 * K), (2 * M + 64 * K, 2 * M - 64 * K)),
        ] {
            let layout = aligned(stack, guard, 64 * K, 4 * K).expect("aligned");
            assert_eq!((layout.stack, layout.guard), want, "{stack} + {guard}");
            assert_eq!(layout.align, 2 * M);
        }
        // Rounding by more than an eighth, nothing or everything resident.
        assert_eq!(aligned(M, 4 * K, 64 * K, 4 * K), None);
        assert_eq!(aligned(256 * K, 4 * K, 64 * K, 4 * K), None);
        assert_eq!(aligned(2 * M, 4 * K, M, 4 * K), None);
        assert_eq!(aligned(2 * M, 4 * K, 0, 4 * K), None);
        assert_eq!(aligned(2 * M, 4 * K, 2 * M, 4 * K), None);
        // 64 KiB pages: a page table spans 512 MiB.
        assert_eq!(aligned(2 * M, 64 * K, 64 * K, 64 * K), None);
        assert_eq!(
            aligned(512 * M, 64 * K, 64 * K, 64 * K).map(|l| (l.stack, l.align)),
            Some((512 * M + 64 * K, 512 * M))
        );
        // Near the largest stack: no overflow, and no stack above it.
        assert_eq!(aligned(MAX_STACK_SIZE, 4 * K, 64 * K, 4 * K), None);
        // The region: refused above MAX_POOL_BYTES.
        let l = aligned(2 * M, 4 * K, 64 * K, 4 * K).unwrap();
        assert_eq!(l.region(3), Some(12 * M));
        assert_eq!(l.region(MAX_POOL_CAPACITY), None);
    }

    #[test]
    fn slot_arithmetic() {
        let page = page_size();
        let pool = StackPool::new(
            PoolConfig::default()
                .stack_size(MIN_STACK + 1)
                .guard_size(page + 1)
                .capacity(3),
        )
        .unwrap();
        assert_eq!(pool.stack_size(), MIN_STACK + page);
        assert_eq!(pool.guard_size(), 2 * page);
        assert_eq!(pool.slot_size(), MIN_STACK + 3 * page);
        let r = pool.region();
        assert_eq!(r.len(), 3 * pool.slot_size());
        let b2 = pool.slot_bounds(2).unwrap();
        assert_eq!(b2.guard, r.start + 2 * pool.slot_size());
        assert_eq!(b2.high, r.end);
        assert_eq!(pool.slot_bounds(3), None);
    }

    const MIN_STACK: usize = crate::MIN_STACK_SIZE;
}
