//! [`LocalPool`]: a handle on a [`StackPool`] for one thread, which keeps
//! the stacks its thread returns and hands them out again with no atomic
//! operation.

use std::cell::Cell;
use std::fmt;
use std::mem::ManuallyDrop;
use std::rc::Rc;
use std::sync::Arc;

use super::{Inner, StackPool};
use crate::stack::{Stack, StackBounds};
use crate::Error;

/// How many returned stacks [`StackPool::local`] keeps.
pub const DEFAULT_LOCAL_KEEP: usize = 16;

/// A [`StackPool`] handle for one thread: stacks it hands out
/// ([`LocalStack`]) come back to it when dropped, and it hands them out
/// again, newest first, with no atomic operation at all.
///
/// [`StackPool::acquire`] is already cheap (two uncontended atomic swaps
/// per acquire and release; see "Free list" on [`StackPool`]), but on
/// x86_64 a locked instruction is a full barrier: it waits for every
/// earlier store to reach the cache, and creating and finishing a fiber
/// stores a lot. A thread that makes many short fibers saves that here. A
/// fiber's create, first resume, finish and drop in `examples/compare`
/// (2-vCPU AMD EPYC VM): 150 instructions on a `PooledStack`, 111 on a
/// `LocalStack` (callgrind); 11.0–19 ns against 8.6–14 ns (medians; the
/// low end when the host is quiet).
///
/// What it costs:
/// - The handle and its stacks are `!Send`: a `LocalStack` must be dropped
///   on the thread that acquired it, since it goes back to this handle's
///   cache. (A fiber is `!Send` anyway; to move a fiber to another thread,
///   run it on a [`PooledStack`](super::PooledStack).)
/// - Up to `keep` returned stacks stay with this handle, not in the pool:
///   other threads cannot take them, and [`StackPool::in_use`] counts them
///   as in use, until the handle (with every clone of it and every stack
///   it handed out) is dropped, or they are taken again. A stack returned
///   while `keep` are already kept goes back to the pool.
/// - The handle counts as a [`StackPool`] handle: the pool stays open while
///   it lives.
/// - A pool that zeroes every returned stack ([`PoolConfig::zero_on_return`](
///   super::PoolConfig::zero_on_return)) gains nothing: each returned stack
///   goes back to the pool to be zeroed, as a `PooledStack` would.
///
/// Everything else is as with [`StackPool::acquire`]: the same slots, guard
/// and bounds, the same resident-memory policy (the canaries are checked
/// when a `LocalStack` comes back), lookups by address, and
/// [`Error::PoolExhausted`] when no slot is left in the pool.
///
/// ```
/// use stackswitch::{Fiber, FiberResult, PoolConfig, StackPool, Suspender};
///
/// let pool = StackPool::new(PoolConfig::default().capacity(8))?;
/// let local = pool.local();
/// for i in 0..100u64 {
///     let stack = local.acquire()?;
///     let mut fiber = Fiber::with_stack(stack, |x: u64, _: &Suspender<u64, ()>| x * 2)?;
///     assert_eq!(fiber.resume(i), FiberResult::Return(i * 2));
/// } // each fiber's stack goes back to `local`, and is the next one's
/// assert_eq!(local.kept(), 1);
/// # Ok::<(), stackswitch::Error>(())
/// ```
///
/// ```compile_fail
/// use stackswitch::{PoolConfig, StackPool};
/// fn needs_send<T: Send>(_: T) {}
/// let pool = StackPool::new(PoolConfig::default().capacity(2)).unwrap();
/// needs_send(pool.local().acquire().unwrap()); // error: `Rc<...>` is not `Send`
/// ```
#[derive(Clone)]
pub struct LocalPool {
    cache: Rc<Cache>,
}

/// What a [`LocalPool`] and its stacks share: the kept slots.
struct Cache {
    /// Keeps the pool open (and its `Inner` alive) while this lives.
    pool: StackPool,
    /// Copies of the pool's layout, so that a stack's bounds need no load
    /// through the pool's `Arc`.
    base: usize,
    slot_size: usize,
    guard: usize,
    /// Whether a returned stack must go through `Inner::clean_up` (the
    /// canaries) before it is kept.
    release_work: bool,
    /// Whether returned stacks go back to the pool to be zeroed.
    zero_on_return: bool,
    /// Neither of the two: a returned stack is kept as it is, if there is
    /// room.
    plain_release: bool,
    /// The start (guard address) of the slot returned last, or 0. Kept in
    /// a cell of its own, not on top of `kept`: a fiber created right after
    /// one finished then reads one word that the last drop wrote, rather
    /// than `len` and then the word it indexes, which are two store-to-load
    /// forwards in a row on the path from one fiber to the next.
    hot: Cell<usize>,
    /// The starts of the other kept slots: a ring of `len` entries from
    /// `head`, oldest first. Each kept slot, `hot` included, carries one
    /// strong count of the pool's `Arc<Inner>`, as a `PooledStack` does.
    kept: Box<[Cell<usize>]>,
    head: Cell<usize>,
    len: Cell<usize>,
}

/// A stack from a [`LocalPool`]; dropping it hands it back to that pool
/// handle. `!Send` (see [`LocalPool`]).
pub struct LocalStack {
    /// The slot's start: its guard's lowest address.
    start: usize,
    /// Two words in all, so that moving a stack into a fiber is two plain
    /// copies (see the note on `PooledStack`'s fields).
    cache: Rc<Cache>,
}

impl StackPool {
    /// A handle for this thread that keeps up to [`DEFAULT_LOCAL_KEEP`]
    /// (or the pool's capacity, if smaller) returned stacks for reuse
    /// without atomics; see [`LocalPool`].
    pub fn local(&self) -> LocalPool {
        let keep = DEFAULT_LOCAL_KEEP.min(self.capacity());
        LocalPool::new(self, keep)
    }

    /// Like [`local`](Self::local), keeping up to `keep` returned stacks.
    ///
    /// # Errors
    /// [`Error::BadPoolConfig`] if `keep` is 0 or more than the pool's
    /// capacity.
    pub fn local_keeping(&self, keep: usize) -> Result<LocalPool, Error> {
        if keep == 0 || keep > self.capacity() {
            return Err(Error::BadPoolConfig {
                reason: format!(
                    "a local pool handle keeping {keep} stacks: it must keep 1 to {} (the pool's capacity)",
                    self.capacity()
                ),
            });
        }
        Ok(LocalPool::new(self, keep))
    }
}

impl LocalPool {
    fn new(pool: &StackPool, keep: usize) -> Self {
        let inner = &*pool.inner;
        LocalPool {
            cache: Rc::new(Cache {
                pool: pool.clone(),
                base: inner.base.as_ptr() as usize,
                slot_size: inner.slot_size,
                guard: inner.guard,
                release_work: inner.release_work,
                zero_on_return: inner.zero_on_return,
                plain_release: !inner.release_work && !inner.zero_on_return,
                hot: Cell::new(0),
                kept: (1..keep).map(|_| Cell::new(0)).collect(),
                head: Cell::new(0),
                len: Cell::new(0),
            }),
        }
    }

    /// A stack: the one returned to this handle last, or else one from the
    /// pool (as [`StackPool::acquire`]). Its contents are whatever its last
    /// user left.
    ///
    /// # Errors
    /// As [`StackPool::acquire`].
    #[inline]
    pub fn acquire(&self) -> Result<LocalStack, Error> {
        let c = &*self.cache;
        let start = c.hot.get();
        if start == 0 {
            return self.acquire_cold();
        }
        c.hot.set(0);
        Ok(LocalStack {
            start,
            cache: Rc::clone(&self.cache),
        })
    }

    /// `acquire` when `hot` is empty: another kept slot, or else one from
    /// the pool, whose strong count the new stack carries from now on.
    #[inline(never)]
    fn acquire_cold(&self) -> Result<LocalStack, Error> {
        let c = &*self.cache;
        let start = if let Some(start) = c.pop_newest() {
            start
        } else {
            // The PooledStack's slot and strong count become the
            // LocalStack's.
            let stack = ManuallyDrop::new(c.pool.acquire()?);
            c.base + stack.slot() * c.slot_size
        };
        Ok(LocalStack {
            start,
            cache: Rc::clone(&self.cache),
        })
    }

    /// How many returned stacks this handle holds now.
    pub fn kept(&self) -> usize {
        let c = &*self.cache;
        c.len.get() + usize::from(c.hot.get() != 0)
    }

    /// The most returned stacks this handle holds.
    pub fn keep(&self) -> usize {
        self.cache.kept.len() + 1
    }

    /// The pool the stacks come from.
    pub fn pool(&self) -> &StackPool {
        &self.cache.pool
    }
}

impl Cache {
    fn index(&self, start: usize) -> usize {
        (start - self.base) / self.slot_size
    }

    fn inner(&self) -> &Inner {
        &self.pool.inner
    }

    /// Gives a returned slot, and the strong count it carries, back to the
    /// pool (parked in this thread's cell, as a `PooledStack`'s drop does).
    fn give_back(&self, start: usize) {
        let index = self.index(start);
        // SAFETY: the slot carries one strong count of this Arc, which is
        // handed on with it.
        let pool = unsafe { Arc::from_raw(Arc::as_ptr(&self.pool.inner)) };
        Inner::park(pool, index);
    }

    /// A returned slot that cannot simply go in `hot`: the pool has work
    /// to do on it first, or `hot` is taken.
    #[cold]
    #[inline(never)]
    fn take_back_slow(&self, start: usize) {
        let index = self.index(start);
        if self.zero_on_return {
            // SAFETY: the slot is ours; its handle is being dropped.
            unsafe { self.inner().retire_zeroed(index) };
            // SAFETY: the strong count the slot carried.
            drop(unsafe { Arc::from_raw(Arc::as_ptr(&self.pool.inner)) });
            return;
        }
        if self.release_work {
            self.inner().clean_up(index);
        }
        // The newest goes in `hot`; what was there moves down to `kept`,
        // whose oldest goes back to the pool if it is full.
        let older = self.hot.replace(start);
        if older == 0 {
            return;
        }
        let (cap, head, len) = (self.kept.len(), self.head.get(), self.len.get());
        if cap == 0 {
            self.give_back(older);
        } else if len < cap {
            self.kept[(head + len) % cap].set(older);
            self.len.set(len + 1);
        } else {
            let oldest = self.kept[head].replace(older);
            self.head.set((head + 1) % cap);
            self.give_back(oldest);
        }
    }

    /// Takes the newest slot from `kept`.
    fn pop_newest(&self) -> Option<usize> {
        let len = self.len.get().checked_sub(1)?;
        self.len.set(len);
        Some(self.kept[(self.head.get() + len) % self.kept.len()].get())
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        // The last handle and the last stack are gone: the kept slots go
        // back to the pool (then `pool`, the handle, is dropped).
        while let Some(start) = self.pop_newest() {
            self.give_back(start);
        }
        if self.hot.get() != 0 {
            self.give_back(self.hot.get());
        }
    }
}

impl LocalStack {
    /// The slot's index in its pool.
    pub fn slot(&self) -> usize {
        self.cache.index(self.start)
    }

    /// The id of the pool it came from (see [`StackPool::id`]).
    pub fn pool_id(&self) -> usize {
        self.cache.pool.id()
    }
}

// SAFETY: the slot is ours until drop (taken from the pool, or kept by the
// handle and given to this stack only); its bounds are the pool's for that
// slot, as for a `PooledStack` (see its `Stack` impl).
unsafe impl Stack for LocalStack {
    #[inline]
    fn bounds(&self) -> StackBounds {
        let c = &*self.cache;
        StackBounds {
            guard: self.start,
            low: self.start + c.guard,
            high: self.start + c.slot_size,
        }
    }
}

impl Drop for LocalStack {
    #[inline]
    fn drop(&mut self) {
        let c = &*self.cache;
        if c.plain_release && c.hot.get() == 0 {
            c.hot.set(self.start);
        } else {
            c.take_back_slow(self.start);
        }
    }
}

impl fmt::Debug for LocalPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalPool")
            .field("pool_id", &self.cache.pool.id())
            .field("kept", &self.kept())
            .field("keep", &self.keep())
            .finish()
    }
}

impl fmt::Debug for LocalStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStack")
            .field("pool_id", &self.pool_id())
            .field("slot", &self.slot())
            .field("bounds", &self.bounds())
            .finish()
    }
}
