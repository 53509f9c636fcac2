//! Fibers: [`Fiber`], [`Suspender`], [`FiberResult`], and [`SendFiber`] for
//! moving a suspended fiber to another thread.
//!
//! # How values travel
//! A value of a primitive scalar type (integers, `f32`, `f64`, `bool`,
//! `char`) or a zero-sized type crosses a switch in a register. Anything
//! else stays in the sender's frame: `resume(input)` hands the fiber a
//! pointer to `input`, in a register, and the fiber moves the value out
//! before it runs any of the user's code; `suspend(value)` does the same
//! the other way, and so does the closure's return value when it finishes.
//! Nothing is boxed and nothing is copied twice. (That is why `I`, `Y` and
//! `R` are `'static`: the choice is made on their `TypeId`.)
//!
//! # Panics and unwinding
//! The fiber's closure runs inside `catch_unwind` at the base of its stack.
//! A panic there finishes the fiber, and `resume` re-raises it in the
//! resumer with the original payload. No unwinding ever crosses a switch.
//!
//! Dropping a suspended fiber resumes it one last time with a request to
//! unwind: the pending `suspend` raises a private payload (through
//! `resume_unwind`, so no panic hook runs and nothing is printed), the
//! fiber's frames drop their locals, and the base catches the payload.
//!
//! Under `panic = "abort"` there is no unwinding: dropping a suspended fiber
//! then leaks its stack (the memory stays mapped, and the destructors of the
//! values on it never run). Freeing it instead would break the promise that
//! memory of a pinned value is not reused before its destructor runs. Run a
//! fiber to completion before dropping it when building with
//! `panic = "abort"`.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::mem::{align_of, size_of, ManuallyDrop};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr;

use crate::arch;
use crate::stack::{MmapStack, Stack};
use crate::Error;

mod word;

/// What a fiber did when it last ran: suspended with a value, or returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FiberResult<Y, R> {
    /// The fiber called [`Suspender::suspend`] with this value; it can be
    /// resumed again.
    Yield(Y),
    /// The fiber's closure returned this value; the fiber is finished.
    Return(R),
}

impl<Y, R> FiberResult<Y, R> {
    /// The yielded value, if the fiber suspended.
    pub fn yielded(self) -> Option<Y> {
        match self {
            FiberResult::Yield(y) => Some(y),
            FiberResult::Return(_) => None,
        }
    }

    /// The returned value, if the fiber finished.
    pub fn returned(self) -> Option<R> {
        match self {
            FiberResult::Yield(_) => None,
            FiberResult::Return(r) => Some(r),
        }
    }
}

/// How a fiber ended other than by its closure returning; handed to the
/// resumer by `finish` with the control word [`arch::ENDED`]. (A returned
/// value goes with [`arch::RETURNED`], encoded like a suspended one.)
enum Exit {
    Panic(Box<dyn Any + Send>),
    /// The fiber unwound because it was dropped while suspended (or it was
    /// dropped before it ran, and its closure was dropped).
    Unwound,
}

/// The payload a suspended fiber unwinds with when it is dropped.
struct ForcedUnwind;

/// A stackful fiber: a closure running on its own stack, which can suspend
/// itself with a value and be resumed with another.
///
/// `I` is what each `resume` hands in, `Y` what each `suspend` hands out,
/// `R` what the closure returns; `S` is the stack it runs on and owns.
/// `I`, `Y` and `R` are `'static`: a primitive scalar crosses a switch in
/// a register, anything else by reference to the sender's frame, and the
/// choice is made on their `TypeId` (see the module docs). Nothing is lost
/// by it: the closure is `'static` too, so a borrowed `Y` or `R` could
/// only borrow `'static` data.
///
/// ```
/// use stackswitch::{Fiber, FiberResult, MmapStack, Suspender};
///
/// let mut fiber = Fiber::with_stack(
///     MmapStack::new(64 << 10)?,
///     |first: u32, s: &Suspender<u32, &str>| {
///         let second = s.suspend("half way");
///         first + second
///     },
/// )?;
/// assert_eq!(fiber.resume(1), FiberResult::Yield("half way"));
/// assert_eq!(fiber.resume(41), FiberResult::Return(42));
/// assert!(fiber.is_finished());
/// # Ok::<(), stackswitch::Error>(())
/// ```
///
/// A fiber stays on the thread that made it: it is `!Send`, because code on
/// its stack may hold the address of a thread-local from before a
/// `suspend`, which would name the wrong thread's value after resuming
/// elsewhere. [`Fiber::into_send`] is the `unsafe` opt-in.
///
/// ```compile_fail
/// use stackswitch::{Fiber, Suspender};
/// fn needs_send<T: Send>(_: T) {}
/// let fiber = Fiber::new(64 << 10, |_: (), _: &Suspender<(), ()>| ()).unwrap();
/// needs_send(fiber); // error: `*mut usize` cannot be sent between threads
/// ```
pub struct Fiber<I: 'static, Y: 'static, R: 'static, S: Stack = MmapStack> {
    /// The slot near the top of the stack (see `stack` module docs).
    slot: *mut usize,
    /// The fiber's switch frame while it is fresh or suspended; 0 once it
    /// has finished. A fresh fiber's frame is the initial one, just below
    /// the slot (see `is_started`): that is the whole state machine.
    sp: usize,
    /// Dropped last, and only when the fiber no longer needs it.
    stack: ManuallyDrop<S>,
    /// The token of the stack's registration with Valgrind (0: none).
    valgrind_stack: usize,
    _types: PhantomData<fn(I) -> FiberResult<Y, R>>,
}

/// The handle a fiber's closure uses to suspend itself.
///
/// It is `!Send` and `!Sync`, and only ever lent to the closure: it cannot
/// reach code running on another stack.
///
/// ```compile_fail
/// use stackswitch::Suspender;
/// fn needs_sync<T: Sync>() {}
/// needs_sync::<Suspender<(), ()>>(); // error: `*mut usize` cannot be shared
/// ```
pub struct Suspender<I: 'static, Y: 'static> {
    slot: *mut usize,
    _types: PhantomData<fn(Y) -> I>,
}

impl<I: 'static, Y: 'static> fmt::Debug for Suspender<I, Y> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Suspender").finish_non_exhaustive()
    }
}

impl<I: 'static, Y: 'static> Suspender<I, Y> {
    /// Suspends the fiber, handing `value` to the caller of
    /// [`Fiber::resume`]; returns the input of the next `resume`.
    ///
    /// If the fiber is dropped while suspended here, this does not return:
    /// it unwinds the fiber's stack so that its destructors run.
    #[inline(always)]
    pub fn suspend(&self, value: Y) -> I {
        // The resumer moves `value` out before this frame continues, hence
        // ManuallyDrop.
        let value = ManuallyDrop::new(value);
        // SAFETY: a Suspender is only lent to the closure on the stack of
        // the fiber whose slot this is, while it runs.
        let (input, go) = unsafe { arch::suspend(word::encode(&value), self.slot) };
        if go == 0 {
            forced_unwind();
        }
        // SAFETY: `resume` encoded an `I` that it will not drop (it keeps
        // it in a ManuallyDrop) and that stays put until we run again.
        unsafe { word::decode::<I>(input) }
    }
}

/// Starts unwinding a fiber that is being dropped. Kept out of line: it is
/// the cold path of every `suspend`.
#[cold]
#[inline(never)]
fn forced_unwind() -> ! {
    resume_unwind(Box::new(ForcedUnwind))
}

/// The Rust entry of every fiber, called by the trampoline: moves the
/// closure and the first input off the stack and the resumer's frame, runs
/// the closure under `catch_unwind`, and leaves with `finish`.
///
/// `extern "C"`: a panic escaping here would abort rather than unwind into
/// the trampoline (none can: `catch_unwind` is around all user code).
unsafe extern "C" fn fiber_entry<F, I: 'static, Y: 'static, R: 'static>(
    value: usize,
    data: *mut u8,
    slot: *mut usize,
    go: usize,
) -> !
where
    F: FnOnce(I, &Suspender<I, Y>) -> R,
{
    let ended = {
        // SAFETY: `data` is the closure Fiber::with_stack wrote; this first
        // resume is its only reader.
        let f = unsafe { ptr::read(data.cast::<F>()) };
        if go == 0 {
            // A fresh fiber being dropped: drop the closure, run nothing. A
            // panicking destructor is carried to the dropper like any panic.
            match catch_unwind(AssertUnwindSafe(move || drop(f))) {
                Ok(()) => Err(Exit::Unwound),
                Err(payload) => Err(Exit::Panic(payload)),
            }
        } else {
            // SAFETY: a first resume other than Drop's hands an encoded
            // input, kept in place and undropped by the resumer.
            let input = unsafe { word::decode::<I>(value) };
            let suspender = Suspender {
                slot,
                _types: PhantomData,
            };
            match catch_unwind(AssertUnwindSafe(|| f(input, &suspender))) {
                Ok(r) => Ok(r),
                Err(payload) if payload.is::<ForcedUnwind>() => Err(Exit::Unwound),
                Err(payload) => Err(Exit::Panic(payload)),
            }
        }
    };
    // Everything else on this stack has been dropped; what is handed over
    // is moved out by the resumer, which then never switches here again.
    match ended {
        Ok(r) => {
            // Encoded as a suspend's value is: a u64 goes in the register.
            let r = ManuallyDrop::new(r);
            // SAFETY: we are on this fiber's stack, and nothing on it needs
            // dropping; `r` stays in this frame, which is never left.
            unsafe { arch::finish(word::encode(&r), slot, arch::RETURNED) }
        }
        Err(exit) => {
            let exit = ManuallyDrop::new(exit);
            // SAFETY: as above.
            unsafe { arch::finish(&*exit as *const Exit as usize, slot, arch::ENDED) }
        }
    }
}

/// Bytes kept free for the fiber's own frames beyond its closure and slot.
const MIN_FREE_STACK: usize = 4096;

impl<I: 'static, Y: 'static, R: 'static> Fiber<I, Y, R, MmapStack> {
    /// Creates a fiber on a new [`MmapStack`] of `stack_size` bytes.
    ///
    /// # Errors
    /// As [`MmapStack::new`].
    pub fn new<F>(stack_size: usize, f: F) -> Result<Self, Error>
    where
        F: FnOnce(I, &Suspender<I, Y>) -> R + 'static,
    {
        Self::with_stack(MmapStack::new(stack_size)?, f)
    }
}

impl<I: 'static, Y: 'static, R: 'static, S: Stack> Fiber<I, Y, R, S> {
    /// Creates a fiber that will run `f` on `stack`; nothing runs until the
    /// first [`resume`](Self::resume), whose input is `f`'s first argument.
    ///
    /// The closure is moved to the top of the stack, so creating a fiber
    /// allocates nothing. `I: 'static` keeps a [`Suspender`] from being
    /// handed into another fiber as its input, where suspending would switch
    /// away from the wrong stack.
    ///
    /// # Errors
    /// [`Error::StackTooSmall`] if the closure leaves less than 4 KiB of the
    /// stack for the fiber's frames.
    #[inline]
    pub fn with_stack<F>(stack: S, f: F) -> Result<Self, Error>
    where
        F: FnOnce(I, &Suspender<I, Y>) -> R + 'static,
    {
        let bounds = stack.bounds();
        let align = align_of::<F>().max(16);
        let high = bounds.high & !15;
        // The closure at the top, aligned; the slot 16 bytes below it; the
        // initial frame below the slot; then at least MIN_FREE_STACK.
        let needed = size_of::<F>()
            .saturating_add(align)
            .saturating_add(arch::FIBER_OVERHEAD + MIN_FREE_STACK);
        if high.saturating_sub(bounds.low) < needed {
            return Err(too_small(bounds.size(), needed));
        }
        let closure = (high - size_of::<F>()) & !(align - 1);
        // The slot word and the word above it (a frame record, see arch).
        let slot = (closure - 16) as *mut usize;
        // SAFETY: closure..closure+size_of::<F>() lies in low..high (checked
        // above), is aligned for F, and is owned by the stack we now own.
        unsafe { (closure as *mut F).write(f) };
        // SAFETY: the slot is 16-byte aligned, inside the stack, with
        // FIBER_OVERHEAD + MIN_FREE_STACK bytes around it (checked above).
        let sp = unsafe { arch::init_fiber(slot, fiber_entry::<F, I, Y, R>, closure as *mut u8) };
        let valgrind_stack = crate::valgrind::stack_register(bounds.low, bounds.high);
        Ok(Fiber {
            slot,
            sp,
            stack: ManuallyDrop::new(stack),
            valgrind_stack,
            _types: PhantomData,
        })
    }
}

impl<I: 'static, Y: 'static, R: 'static, S: Stack> Fiber<I, Y, R, S> {
    /// Runs the fiber until it suspends or returns. The first `resume`
    /// starts the closure with `input` as its first argument; later ones
    /// return `input` from the pending [`Suspender::suspend`].
    ///
    /// # Panics
    /// If the fiber's closure panics, the panic continues here with its
    /// original payload, and the fiber is finished. Resuming a finished
    /// fiber panics; [`try_resume`](Self::try_resume) returns an error
    /// instead.
    #[inline]
    #[track_caller]
    pub fn resume(&mut self, input: I) -> FiberResult<Y, R> {
        if self.sp == 0 {
            resumed_finished();
        }
        self.switch_in(input)
    }

    /// Like [`resume`](Self::resume), but a finished fiber is an error.
    ///
    /// # Errors
    /// [`Error::FiberFinished`] if the fiber has returned or panicked.
    #[inline]
    pub fn try_resume(&mut self, input: I) -> Result<FiberResult<Y, R>, Error> {
        if self.sp == 0 {
            return Err(Error::FiberFinished);
        }
        Ok(self.switch_in(input))
    }

    #[inline(always)]
    fn switch_in(&mut self, input: I) -> FiberResult<Y, R> {
        let input = ManuallyDrop::new(input);
        // SAFETY: the callers checked the fiber has not finished, so `sp` is
        // its switch frame and its stack is alive (we own it).
        // It moves `input` out before running user code, hence ManuallyDrop.
        let (out, sp) = unsafe { arch::resume(word::encode(&input), self.slot, self.sp) };
        if sp > arch::RETURNED {
            self.sp = sp;
            // SAFETY: on yield, `out` is an encoded Y from the suspended
            // fiber, which it will not drop (ManuallyDrop in `suspend`).
            return FiberResult::Yield(unsafe { word::decode::<Y>(out) });
        }
        // Finished: 0 is also what `sp` says from now on.
        self.sp = 0;
        if sp == arch::RETURNED {
            // SAFETY: `out` is the encoded value the closure returned, left
            // undropped in the entry's frame, which stays mapped (we own
            // the stack) and is never run again.
            FiberResult::Return(unsafe { word::decode::<R>(out) })
        } else {
            // A free function, not a method: passing `self` to an
            // out-of-line call would let the compiler assume the switch's
            // asm may change the Fiber, and reload its fields every switch.
            // SAFETY: `out` points at the Exit the entry left on the
            // fiber's stack, as above.
            exit_result(unsafe { ptr::read(out as *const Exit) })
        }
    }

    /// Whether the fiber has returned or panicked.
    pub fn is_finished(&self) -> bool {
        self.sp == 0
    }

    /// Whether the fiber has been resumed at least once. A fiber that has
    /// run has frames below its initial switch frame, so its saved stack
    /// pointer can never equal that frame's address again.
    pub fn is_started(&self) -> bool {
        self.sp != arch::initial_sp(self.slot)
    }

    /// The stack the fiber runs on.
    pub fn stack(&self) -> &S {
        &self.stack
    }

    /// Ends the fiber and gives its stack back for reuse: a fresh fiber's
    /// closure is dropped, a suspended one is unwound (as on drop).
    ///
    /// Under `panic = "abort"`, a suspended fiber cannot be unwound; its
    /// stack is then leaked and this returns `None`.
    #[inline]
    pub fn into_stack(self) -> Option<S> {
        // The common case, a finished fiber, touches only what it hands back.
        if !self.is_finished() {
            return self.into_stack_unfinished();
        }
        // SAFETY: the fiber holds nothing on its stack.
        Some(unsafe { self.take_stack() })
    }

    /// Moves the stack out of a fiber that holds nothing on it, and forgets
    /// the fiber (whose `drop` would drop the stack again).
    ///
    /// # Safety
    /// The fiber must be finished or ended (`end_unfinished`).
    #[inline(always)]
    unsafe fn take_stack(mut self) -> S {
        self.valgrind_deregister();
        // SAFETY: `self` is forgotten right after, so the stack is moved out
        // exactly once; the caller says nothing lives on it.
        let stack = unsafe { ManuallyDrop::take(&mut self.stack) };
        std::mem::forget(self);
        stack
    }

    /// `into_stack` for a fresh or suspended fiber.
    #[inline(never)]
    fn into_stack_unfinished(mut self) -> Option<S> {
        let mut pending = None;
        if !self.end_unfinished(&mut pending) {
            // Its stack must be leaked (see `end_unfinished`).
            std::mem::forget(self);
            return None;
        }
        // SAFETY: `end_unfinished` left nothing on the stack.
        let stack = unsafe { self.take_stack() };
        if let Some(payload) = pending {
            // The stack is dropped (returned) as this unwinds.
            resume_unwind(payload);
        }
        Some(stack)
    }

    /// Moves the fiber into a wrapper that is `Send` when `I`, `Y`, `R` and
    /// `S` are, so that a suspended fiber can be resumed on another thread.
    ///
    /// # Safety
    /// Everything the fiber's stack holds must be safe to move to another
    /// thread: the closure and every value alive across a `suspend` must be
    /// `Send`, and no code on the fiber may keep the address of a
    /// thread-local from before a `suspend` to after it (`thread_local!`
    /// accessors re-read the address on each access, but the compiler may
    /// cache it within one function, and C code may do it explicitly).
    ///
    /// ```
    /// use stackswitch::{Fiber, FiberResult, Suspender};
    /// let mut fiber = Fiber::new(64 << 10, |x: u64, s: &Suspender<u64, u64>| {
    ///     let y = s.suspend(x + 1);
    ///     y * 2
    /// })?;
    /// assert_eq!(fiber.resume(1), FiberResult::Yield(2));
    /// // SAFETY: the closure holds only u64s and touches no thread-locals.
    /// let mut fiber = unsafe { fiber.into_send() };
    /// let r = std::thread::spawn(move || fiber.resume(21)).join().unwrap();
    /// assert_eq!(r, FiberResult::Return(42));
    /// # Ok::<(), stackswitch::Error>(())
    /// ```
    pub unsafe fn into_send(self) -> SendFiber<I, Y, R, S> {
        SendFiber(self)
    }

    /// Ends a fresh or suspended fiber so its stack holds nothing: resumes
    /// it with `resume_drop`, which makes a fresh fiber drop its closure and
    /// a suspended one unwind. Returns false if the stack must be leaked
    /// instead: under `panic = "abort"` a suspended fiber cannot unwind.
    /// A panic that ending the fiber raised (a destructor, or a fiber that
    /// caught the forced unwind and panicked) is left in `pending`, for the
    /// caller to continue once the stack is released.
    #[inline(never)]
    fn end_unfinished(&mut self, pending: &mut Option<Box<dyn Any + Send>>) -> bool {
        if cfg!(panic = "unwind") || !self.is_started() {
            *pending = self.unwind();
            true
        } else {
            false
        }
    }

    /// Resumes a fresh or suspended fiber with `resume_drop` until it
    /// finishes; returns the panic it ended with, if any.
    fn unwind(&mut self) -> Option<Box<dyn Any + Send>> {
        loop {
            // SAFETY: the fiber is fresh or suspended; resume_drop asks its
            // entry to drop the closure, or its pending `suspend` to unwind,
            // instead of reading an input.
            let (out, sp) = unsafe { arch::resume_drop(self.slot, self.sp) };
            if sp > arch::RETURNED {
                self.sp = sp;
                // The fiber caught the unwind and suspended again: drop what
                // it yielded and ask again until it finishes.
                // SAFETY: as in `switch_in`.
                drop(unsafe { word::decode::<Y>(out) });
                continue;
            }
            self.sp = 0;
            if sp == arch::RETURNED {
                // It caught the unwind and returned normally.
                // SAFETY: as in `switch_in`.
                drop(unsafe { word::decode::<R>(out) });
                return None;
            }
            // SAFETY: as in `switch_in`.
            return match unsafe { ptr::read(out as *const Exit) } {
                Exit::Unwound => None,
                // A destructor panicked, or the fiber caught the unwind and
                // panicked with something else.
                Exit::Panic(payload) => Some(payload),
            };
        }
    }
}

/// What `resume` does once the fiber has finished other than by returning:
/// continue its panic in the resumer.
#[cold]
#[inline(never)]
fn exit_result(exit: Exit) -> ! {
    match exit {
        Exit::Panic(payload) => resume_unwind(payload),
        // Only Drop asks a fiber to unwind, and it does not come here.
        Exit::Unwound => unreachable!("a fiber unwound without being dropped"),
    }
}

/// The error for a stack too small for a fiber; out of line, so that
/// `with_stack` stays small enough to inline.
#[cold]
#[inline(never)]
fn too_small(requested: usize, minimum: usize) -> Error {
    Error::StackTooSmall { requested, minimum }
}

/// Resuming a finished fiber is misuse the types cannot stop; say so.
#[cold]
#[inline(never)]
#[track_caller]
fn resumed_finished() -> ! {
    panic!("{}", Error::FiberFinished)
}

impl<I: 'static, Y: 'static, R: 'static, S: Stack> Drop for Fiber<I, Y, R, S> {
    /// Drops a fresh fiber's closure, unwinds a suspended fiber (running the
    /// destructors of everything on its stack), then frees the stack.
    #[inline]
    fn drop(&mut self) {
        // The common case, a fiber that ran to completion, stays inline.
        if !self.is_finished() {
            self.drop_unfinished();
            return;
        }
        self.release_stack();
    }
}

impl<I: 'static, Y: 'static, R: 'static, S: Stack> Fiber<I, Y, R, S> {
    /// Undoes the stack's registration with Valgrind, if it was registered:
    /// one test of a field the fiber holds when it was not.
    #[inline(always)]
    fn valgrind_deregister(&self) {
        if self.valgrind_stack != 0 {
            let b = self.stack.bounds();
            crate::valgrind::stack_deregister(self.valgrind_stack, b.low, b.high);
        }
    }

    /// Hands the stack of a fiber that holds nothing on it back to Valgrind
    /// (if it was registered) and drops it.
    #[inline(always)]
    fn release_stack(&mut self) {
        self.valgrind_deregister();
        // SAFETY: the fiber holds nothing on the stack any more, and this
        // runs once, from `drop`.
        unsafe { ManuallyDrop::drop(&mut self.stack) };
    }

    /// `drop` for a fresh or suspended fiber.
    #[inline(never)]
    fn drop_unfinished(&mut self) {
        let mut pending = None;
        if self.end_unfinished(&mut pending) {
            self.release_stack();
        }
        // A panic raised while ending the fiber goes on, once the stack is
        // released, unless this thread is already unwinding.
        if let Some(payload) = pending {
            if !std::thread::panicking() {
                resume_unwind(payload);
            }
        }
    }
}

impl<I: 'static, Y: 'static, R: 'static, S: Stack> fmt::Debug for Fiber<I, Y, R, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fiber")
            .field("started", &self.is_started())
            .field("finished", &self.is_finished())
            .field("bounds", &self.stack.bounds())
            .finish_non_exhaustive()
    }
}

/// A [`Fiber`] that may move between threads; made by the `unsafe`
/// [`Fiber::into_send`], whose contract it relies on.
///
/// It derefs to `&Fiber` for inspection, never to `&mut Fiber`: that would
/// let safe code swap in a fiber nobody vouched for.
pub struct SendFiber<I: 'static, Y: 'static, R: 'static, S: Stack = MmapStack>(Fiber<I, Y, R, S>);

// SAFETY: the caller of `into_send` promised that everything on the fiber's
// stack may move between threads and that no thread-local address is kept
// across a suspend; the values crossing `resume` are Send by these bounds.
unsafe impl<I: Send + 'static, Y: Send + 'static, R: Send, S: Stack + Send> Send
    for SendFiber<I, Y, R, S>
{
}

impl<I: 'static, Y: 'static, R: 'static, S: Stack> SendFiber<I, Y, R, S> {
    /// As [`Fiber::resume`].
    #[inline]
    #[track_caller]
    pub fn resume(&mut self, input: I) -> FiberResult<Y, R> {
        self.0.resume(input)
    }

    /// As [`Fiber::try_resume`].
    ///
    /// # Errors
    /// [`Error::FiberFinished`] if the fiber has returned or panicked.
    #[inline]
    pub fn try_resume(&mut self, input: I) -> Result<FiberResult<Y, R>, Error> {
        self.0.try_resume(input)
    }

    /// The fiber, tied to the current thread again.
    pub fn into_inner(self) -> Fiber<I, Y, R, S> {
        self.0
    }
}

impl<I: 'static, Y: 'static, R: 'static, S: Stack> std::ops::Deref for SendFiber<I, Y, R, S> {
    type Target = Fiber<I, Y, R, S>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<I: 'static, Y: 'static, R: 'static, S: Stack> fmt::Debug for SendFiber<I, Y, R, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Record = (usize, usize);

    /// Resumes `fiber` once.
    #[inline(never)]
    fn resumer(fiber: &mut Fiber<(), Record, ()>) -> Record {
        std::hint::black_box(fiber.resume(())).yielded().unwrap()
    }

    /// Whether `ret` is the return address of a call to the `.S` resume:
    /// the instruction before it is `call rel32` (x86_64) or `bl` (aarch64)
    /// whose target is `stackswitch_resume_v2`.
    fn returns_from_resume(ret: usize) -> bool {
        let resume = arch::stackswitch_resume_v2 as unsafe extern "C" fn() as usize;
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: ret is a return address in this binary's code, which is
            // readable; a rel32 call is the 5 bytes before it.
            let (opcode, rel) = unsafe {
                (
                    *((ret - 5) as *const u8),
                    ((ret - 4) as *const i32).read_unaligned(),
                )
            };
            opcode == 0xe8 && ret.wrapping_add_signed(rel as isize) == resume
        }
        #[cfg(target_arch = "aarch64")]
        {
            // SAFETY: ret is a return address in this binary's code; the `bl`
            // is the 4-byte instruction before it.
            let insn = unsafe { *((ret - 4) as *const u32) };
            let imm26 = ((insn & 0x03ff_ffff) << 6) as i32 >> 6;
            insn >> 26 == 0b100101 && (ret - 4).wrapping_add_signed(imm26 as isize * 4) == resume
        }
    }

    #[test]
    fn slot_is_a_frame_record_leading_into_the_resumer() {
        let mut fiber = Fiber::new(64 << 10, |(), s: &Suspender<(), Record>| {
            let slot = s.slot;
            // SAFETY: while the fiber runs, the slot holds the address of the
            // resumer's frame record {fp, return address}, and the word above
            // the slot was set by init_fiber.
            let (ret, above) = unsafe {
                let record = *slot as *const usize;
                (*record.add(1), *slot.add(1))
            };
            s.suspend((ret, above));
        })
        .unwrap();
        let (ret, above) = resumer(&mut fiber);
        assert!(
            returns_from_resume(ret),
            "the record's return address {ret:#x} does not follow a call to resume"
        );
        // Taking an extern static's address needs no unsafe.
        let trampoline_ret = &raw const arch::stackswitch_trampoline_ret_v2 as usize;
        assert_eq!(
            above, trampoline_ret,
            "the word above the slot is the trampoline's return"
        );
    }
}
