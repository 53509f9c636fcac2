//! The host-function stack guard: budgeted calls, peak measurement and
//! guard-page fault reports.
//!
//! A host function that Wasmtime calls from a guest runs on whatever stack
//! the guest left it. Wasmtime only promises "at least
//! `async_stack_size - max_wasm_stack`" minus its own frames, so a host
//! function that needs more passes every test with a shallow guest and
//! crashes in production when a guest calls it near its stack limit.
//! [`with_stack_budget`] closes that gap: it runs a closure with the stack
//! pointer lowered so that *exactly* the budget remains above the guard
//! page of the current stack, whatever the caller had used. A closure that
//! needs more than its budget then faults on every call, in tests, at any
//! guest depth.
//!
//! ```
//! use stackswitch::guard::{GuardMode, StackGuard};
//!
//! // 32 KiB of stack for `parse`, whatever its caller has used.
//! let guard = StackGuard::new("parse", 32 << 10).mode(GuardMode::Enforce);
//! let sum = guard.run(|| (1..=10u32).sum::<u32>())?;
//! assert_eq!(sum, 55);
//! # Ok::<(), stackswitch::Error>(())
//! ```
//!
//! # Modes
//! - [`GuardMode::Enforce`]: lower the stack pointer (one `call_on_stack`,
//!   a few nanoseconds).
//! - [`GuardMode::Measure`]: as `Enforce`, and also paint the budget area
//!   with a pattern before the call and find the deepest byte touched after
//!   it; each guarded function's peak goes into the [`peak_report`].
//! - [`GuardMode::Off`]: call the closure directly.
//!
//! The process-wide default comes from the environment variable
//! [`GUARD_MODE_ENV`] (`STACKSWITCH_GUARD_MODE=enforce|measure|off`, read
//! once) unless [`set_default_mode`] sets it; without either it is `Off`.
//! So a test suite runs with `STACKSWITCH_GUARD_MODE=enforce` and production
//! runs unguarded without a code change. A guard may override the default
//! ([`StackGuard::mode`]).
//!
//! # Which stacks
//! Only stacks whose bounds are known exactly: slots of a stack pool and
//! threads' own stacks (see [`StackBounds::containing`](crate::StackBounds::containing)). On any other stack
//! (a fiber on an [`MmapStack`](crate::MmapStack), Wasmtime's default fiber
//! stacks) `Enforce` and `Measure` return [`Error::UnknownStack`] rather than
//! run unguarded: a test suite that believes it checks budgets must not
//! silently check nothing. `Off` never looks at the stack and always runs.
//!
//! # What the budget covers
//! Everything below the lowered stack pointer: the guard's own entry frame
//! (which catches panics, a few hundred bytes; more in debug builds) and
//! the closure with everything it calls. The lowered stack pointer is
//! `low + budget` rounded down to 16 bytes.
//!
//! # Overflows
//! Under `Enforce`, a closure that needs more than its budget runs into the
//! real guard page of its stack. The first guarded call installs a
//! `SIGSEGV`/`SIGBUS` handler (see [`install_fault_handler`]) that
//! recognises such a fault, prints which stack, which guarded function and
//! its budget, and aborts. Faults it does not own go to the handler that was
//! installed before it.

mod report;
mod signal;
#[cfg(feature = "wasmtime")]
pub mod wasmtime;

use std::any::Any;
use std::cell::Cell;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};

use crate::arch::call_on_stack;
use crate::stack::lookup::{self, locate, thread_stack_cached};
use crate::Error;

pub use report::{peak_report, reset_peaks, PeakEntry, PeakReport};
pub use signal::{handle_fault, install_fault_handler};

/// The environment variable that sets the process-wide default mode:
/// `enforce`, `measure` or `off` (any case).
pub const GUARD_MODE_ENV: &str = "STACKSWITCH_GUARD_MODE";

/// The smallest budget accepted: less cannot even hold the guard's own
/// entry frame.
pub const MIN_BUDGET: usize = 256;

/// Bytes kept free between the caller's stack pointer and the lowered one:
/// room for the return address and saved frame pointer that the switch
/// pushes on the original stack.
const SWITCH_RESERVE: usize = 64;

/// More bytes kept free in unoptimised builds, where `arch::call_on_stack`
/// is a function of its own (96 bytes of frame with rustc 1.95) below the
/// caller's stack pointer: a budget within these bytes of all that was left
/// made the closure's first frames overwrite it (SIGSEGV on the way back).
const UNINLINED_RESERVE: usize = if cfg!(debug_assertions) { 256 } else { 0 };

/// Under `Measure`, the painting stops this far below the caller's stack
/// pointer, so that `memset`'s own frame is never painted over.
const PAINT_RESERVE: usize = 4096;

/// The byte the budget area is painted with under `Measure`.
const PAINT: u8 = 0xA5;

/// What a guarded call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuardMode {
    /// Call the closure directly, on the caller's stack: no cost, no check.
    Off,
    /// Run the closure with the stack pointer lowered so that exactly the
    /// budget remains above the guard page.
    Enforce,
    /// As `Enforce`, and record the deepest stack byte the closure touched
    /// (see [`peak_report`]).
    Measure,
}

impl GuardMode {
    /// The mode named by `s`: `off`, `enforce` or `measure`, in any case,
    /// surrounding blanks ignored.
    ///
    /// ```
    /// use stackswitch::guard::GuardMode;
    /// assert_eq!(GuardMode::parse(" Measure "), Some(GuardMode::Measure));
    /// assert_eq!(GuardMode::parse("on"), None);
    /// ```
    pub fn parse(s: &str) -> Option<GuardMode> {
        let s = s.trim();
        [
            ("off", GuardMode::Off),
            ("enforce", GuardMode::Enforce),
            ("measure", GuardMode::Measure),
        ]
        .into_iter()
        .find(|(name, _)| s.eq_ignore_ascii_case(name))
        .map(|(_, mode)| mode)
    }

    /// The mode set by [`GUARD_MODE_ENV`]; `Ok(None)` when it is not set.
    ///
    /// # Errors
    /// [`Error::BadGuardMode`] when the variable holds anything else than a
    /// mode name.
    pub fn from_env() -> Result<Option<GuardMode>, Error> {
        match std::env::var(GUARD_MODE_ENV) {
            Ok(value) => match GuardMode::parse(&value) {
                Some(mode) => Ok(Some(mode)),
                None => Err(Error::BadGuardMode { value }),
            },
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(raw)) => Err(Error::BadGuardMode {
                value: raw.to_string_lossy().into_owned(),
            }),
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            GuardMode::Off => 1,
            GuardMode::Enforce => 2,
            GuardMode::Measure => 3,
        }
    }

    fn from_u8(v: u8) -> Option<GuardMode> {
        match v {
            1 => Some(GuardMode::Off),
            2 => Some(GuardMode::Enforce),
            3 => Some(GuardMode::Measure),
            _ => None,
        }
    }
}

/// The process-wide default mode; 0 until read from the environment or set.
static DEFAULT_MODE: AtomicU8 = AtomicU8::new(0);

/// The process-wide default mode.
///
/// The first call without an earlier [`set_default_mode`] reads
/// [`GUARD_MODE_ENV`]. An unset variable means [`GuardMode::Off`]; a value
/// that names no mode also means `Off`, after one warning on stderr naming
/// the value (use [`GuardMode::from_env`] to treat it as an error instead).
#[inline]
pub fn default_mode() -> GuardMode {
    match GuardMode::from_u8(DEFAULT_MODE.load(Ordering::Relaxed)) {
        Some(mode) => mode,
        None => default_mode_from_env(),
    }
}

#[cold]
fn default_mode_from_env() -> GuardMode {
    let mode = match GuardMode::from_env() {
        Ok(mode) => mode.unwrap_or(GuardMode::Off),
        Err(err) => {
            eprintln!("stackswitch: {err}; the host-function guard is off");
            GuardMode::Off
        }
    };
    // Only the first reader's answer counts (a racing set_default_mode wins).
    match DEFAULT_MODE.compare_exchange(0, mode.to_u8(), Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => mode,
        Err(current) => GuardMode::from_u8(current).unwrap_or(mode),
    }
}

/// Sets the process-wide default mode, overriding [`GUARD_MODE_ENV`].
/// Guards without a mode of their own follow it from their next call.
pub fn set_default_mode(mode: GuardMode) {
    DEFAULT_MODE.store(mode.to_u8(), Ordering::Relaxed);
}

/// A named stack budget: the unit the guard checks, measures and reports.
///
/// Cheap to copy; the name is what fault reports and the [`peak_report`]
/// show, so give each guarded function its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackGuard {
    name: &'static str,
    budget: usize,
    mode: Option<GuardMode>,
}

impl StackGuard {
    /// A guard giving `name` exactly `budget` bytes of stack, in the
    /// process-wide [`default_mode`]. The budget is checked on each call
    /// (against the stack the call runs on).
    pub const fn new(name: &'static str, budget: usize) -> StackGuard {
        StackGuard {
            name,
            budget,
            mode: None,
        }
    }

    /// This guard always runs in `mode`, whatever the default.
    pub const fn mode(mut self, mode: GuardMode) -> StackGuard {
        self.mode = Some(mode);
        self
    }

    /// This guard follows the process-wide default (the initial setting).
    pub const fn default_mode(mut self) -> StackGuard {
        self.mode = None;
        self
    }

    /// The guarded function's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The budget in bytes.
    pub const fn budget(&self) -> usize {
        self.budget
    }

    /// The mode the next call runs in.
    #[inline]
    pub fn effective_mode(&self) -> GuardMode {
        match self.mode {
            Some(mode) => mode,
            None => default_mode(),
        }
    }

    /// Runs `f` under this guard and returns its value.
    ///
    /// A panic in `f` is caught on the budget stack and resumed here, on the
    /// caller's stack.
    ///
    /// # Errors
    /// Under `Enforce` and `Measure` (never under `Off`, which only calls
    /// `f`), without calling `f`:
    /// - [`Error::BudgetTooSmall`] for a budget below [`MIN_BUDGET`];
    /// - [`Error::UnknownStack`] when the current stack is neither a pool
    ///   slot nor a thread's own stack;
    /// - [`Error::BudgetTooLarge`] when the budget exceeds the stack's size
    ///   or what the caller has left of it;
    /// - [`Error::Signal`] if the fault handler could not be installed.
    #[inline]
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> Result<R, Error> {
        match self.effective_mode() {
            GuardMode::Off => Ok(f()),
            GuardMode::Enforce => guarded_call(self.name, self.budget, f),
            GuardMode::Measure => measured_call(self.name, self.budget, f),
        }
    }
}

/// Runs `f` with exactly `budget` bytes of stack above the guard page, in
/// the process-wide [`default_mode`]; shorthand for
/// `StackGuard::new("with_stack_budget", budget).run(f)`.
///
/// ```
/// use stackswitch::guard::{set_default_mode, with_stack_budget, GuardMode};
///
/// set_default_mode(GuardMode::Enforce);
/// let left = with_stack_budget(64 << 10, || stackswitch::remaining_stack().unwrap())?;
/// assert!(left <= 64 << 10 && left > 60 << 10);
/// # Ok::<(), stackswitch::Error>(())
/// ```
///
/// # Errors
/// As [`StackGuard::run`].
#[inline]
pub fn with_stack_budget<R>(budget: usize, f: impl FnOnce() -> R) -> Result<R, Error> {
    StackGuard::new("with_stack_budget", budget).run(f)
}

/// A guarded call in progress on this thread, as the fault handler reports
/// it. Its stack is the one containing `sp` (which lies inside it, at most
/// `low + budget`), so the bounds need not be stored.
#[derive(Clone, Copy)]
pub(crate) struct ActiveGuard {
    pub(crate) name: &'static str,
    pub(crate) budget: usize,
    /// The lowered stack pointer `f` started from.
    pub(crate) sp: usize,
}

/// How many guarded calls around the innermost one the fault handler can
/// name, per thread: the nearest ones (they are kept in a ring indexed by
/// nesting level, so a call nested deeper than this takes the place of an
/// outer one, which is still enforced, only no longer named). A power of
/// two.
pub(crate) const MAX_OUTER: usize = 8;
const _: () = assert!(MAX_OUTER.is_power_of_two());

const NO_GUARD: ActiveGuard = ActiveGuard {
    name: "",
    budget: 0,
    sp: 0,
};

/// Everything a guarded call keeps per thread, in one constant-initialised
/// thread-local without a destructor: one thread-local access per call, no
/// lazy-initialisation branch, and readable from a signal handler.
pub(crate) struct GuardThread {
    /// The low end and size of the stack the last guarded call on this
    /// thread started from, as the lookup table described it at `epoch`.
    /// Size 0 until the first guarded call on this thread has prepared it
    /// (fault handler installed, alternate signal stack checked), so a hit
    /// also means "prepared".
    low: Cell<usize>,
    size: Cell<usize>,
    /// [`lookup::epoch`] when the stack was looked up.
    epoch: Cell<usize>,
    /// How many guarded calls are running on this thread; call `level`
    /// counts from 0, the outermost. All of them are kept by value, never
    /// as pointers into stacks: a fiber that is suspended inside a guarded
    /// call, then dropped, leaves nothing dangling for the signal handler.
    pub(crate) depth: Cell<usize>,
    /// Call `depth - 1`, the innermost, at a fixed address: the common,
    /// unnested call writes it and `depth`, nothing else. (Writing to an
    /// address computed from `depth` put the load of `depth` in front of
    /// the stores and cost about 1 ns per call.)
    pub(crate) innermost: Cell<ActiveGuard>,
    /// The calls around it: call `level` in `outer[level % MAX_OUTER]`,
    /// written when a call nested in it starts, valid while
    /// `outer_level` of the same index still says `level`.
    pub(crate) outer: [Cell<ActiveGuard>; MAX_OUTER],
    pub(crate) outer_level: [Cell<usize>; MAX_OUTER],
}

thread_local! {
    pub(crate) static THREAD: GuardThread = const {
        GuardThread {
            low: Cell::new(0),
            size: Cell::new(0),
            epoch: Cell::new(0),
            depth: Cell::new(0),
            innermost: Cell::new(NO_GUARD),
            outer: [const { Cell::new(NO_GUARD) }; MAX_OUTER],
            outer_level: [const { Cell::new(usize::MAX) }; MAX_OUTER],
        }
    };
}

impl GuardThread {
    /// The low end and size of the stack `sp` is on, if this thread's last
    /// guarded call was on the same stack and no pool has come or gone
    /// since.
    #[inline(always)]
    fn cached(&self, sp: usize) -> Option<(usize, usize)> {
        let (low, size) = (self.low.get(), self.size.get());
        // One compare for `low <= sp < low + size`: below `low` wraps.
        (sp.wrapping_sub(low) < size && self.epoch.get() == lookup::epoch()).then_some((low, size))
    }

    /// The first guarded call on this thread, or the first on another stack
    /// (or after a pool came or went): check the budget's lower limit,
    /// find the stack, prepare the thread, and cache the stack.
    #[cold]
    #[inline(never)]
    fn prepare(&self, sp: usize, budget: usize) -> Result<(usize, usize), Error> {
        if budget < MIN_BUDGET {
            return Err(Error::BudgetTooSmall {
                budget,
                minimum: MIN_BUDGET,
            });
        }
        // Read before the lookup: a change racing with it invalidates the
        // answer at the next call.
        let epoch = lookup::epoch();
        // A thread's own stack never overlaps a pool slot: check the cached
        // one first and skip the region table on thread stacks.
        let bounds = match thread_stack_cached().filter(|b| b.contains(sp)) {
            Some(thread) => thread,
            None => match locate(sp) {
                Some(location) => location.bounds(),
                None => return Err(Error::UnknownStack),
            },
        };
        signal::ensure_ready()?;
        // Memcheck may hold stack memory below our stack pointer as gone
        // (a thread stack glibc reuses keeps what the last thread left),
        // and takes the jump to the lowered stack pointer for a switch to
        // another stack, not for a new frame: declare the budget area
        // usable. Once per stack is enough: later calls' frames are new
        // frames below the lowered stack pointer, which it tracks.
        let top = bounds.low.saturating_add(budget).min(sp);
        crate::valgrind::mark_defined(bounds.low, top.saturating_sub(bounds.low));
        self.low.set(bounds.low);
        self.size.set(bounds.size());
        self.epoch.set(epoch);
        Ok((bounds.low, bounds.size()))
    }

    /// Names `guard` as the innermost guarded call; returns the depth to
    /// give back to [`pop`](Self::pop).
    #[inline(always)]
    fn push(&self, guard: ActiveGuard) -> usize {
        let depth = self.depth.get();
        if depth != 0 {
            self.push_nested(depth);
        }
        self.innermost.set(guard);
        self.depth.set(depth + 1);
        depth
    }

    /// A call nested in another: the current innermost moves to the ring.
    #[cold]
    #[inline(never)]
    fn push_nested(&self, depth: usize) {
        let level = depth - 1;
        self.outer[level % MAX_OUTER].set(self.innermost.get());
        self.outer_level[level % MAX_OUTER].set(level);
    }

    /// Ends the guarded call that [`push`](Self::push) returned `depth`
    /// for. Restoring the depth, rather than decrementing it, also forgets
    /// any call a fiber left behind by suspending inside a nested guarded
    /// call.
    #[inline(always)]
    fn pop(&self, depth: usize) {
        if depth != 0 {
            self.pop_nested(depth);
        }
        self.depth.set(depth);
    }

    /// The end of a nested call: the call around it is the innermost again
    /// (unnamed if a call nested `MAX_OUTER` deeper took its place).
    #[cold]
    #[inline(never)]
    fn pop_nested(&self, depth: usize) {
        self.innermost
            .set(self.outer_guard(depth - 1).unwrap_or(NO_GUARD));
    }

    /// Call `level`, kept in the ring, if it is still there.
    pub(crate) fn outer_guard(&self, level: usize) -> Option<ActiveGuard> {
        let slot = level % MAX_OUTER;
        (self.outer_level[slot].get() == level).then(|| self.outer[slot].get())
    }
}

/// What a guarded call may give its budget when the caller's stack pointer
/// is `above_low` bytes above the stack's low end: all of it but the
/// switch's own reserve.
#[inline(always)]
fn usable_room(above_low: usize) -> usize {
    above_low.saturating_sub(SWITCH_RESERVE + UNINLINED_RESERVE)
}

/// `MIN_BUDGET <= budget <= usable_room(above_low)`, in one compare:
/// `budget - MIN_BUDGET` wraps to a huge number for a budget below the
/// minimum, and a room below the minimum leaves nothing to be below.
#[inline(always)]
fn budget_fits(budget: usize, above_low: usize) -> bool {
    // usable_room(above_low) - MIN_BUDGET + 1, saturating at 0.
    let limit = above_low.saturating_sub(SWITCH_RESERVE + UNINLINED_RESERVE + MIN_BUDGET - 1);
    budget.wrapping_sub(MIN_BUDGET) < limit
}

/// The guarded call `name` with `budget` bytes, made from stack pointer
/// `sp` on the stack whose low end is `low`: where its lowered stack
/// pointer goes, or `None` if the budget does not fit (see
/// [`budget_error`]).
#[inline(always)]
fn budget_entry(name: &'static str, budget: usize, sp: usize, low: usize) -> Option<ActiveGuard> {
    // `sp` is inside the stack, so `sp - low` does not wrap.
    budget_fits(budget, sp - low).then_some(ActiveGuard {
        name,
        budget,
        sp: (low + budget) & !15,
    })
}

/// The error for a budget that does not fit: below [`MIN_BUDGET`], above the
/// stack's `size`, or above what the caller has left of it, whose stack
/// pointer is `above_low` bytes above the stack's low end.
#[cold]
#[inline(never)]
fn budget_error(budget: usize, size: usize, above_low: usize) -> Error {
    let room = usable_room(above_low);
    if budget < MIN_BUDGET {
        Error::BudgetTooSmall {
            budget,
            minimum: MIN_BUDGET,
        }
    } else if budget > size {
        Error::BudgetTooLarge {
            budget,
            available: size,
        }
    } else {
        Error::BudgetTooLarge {
            budget,
            available: room,
        }
    }
}

/// What the budget stack's entry frame shares with the caller: the closure
/// going in, its value or its panic coming out. No `Option`s: the entry
/// frame takes the closure exactly once and writes exactly one of the two
/// outcomes, and says which by its return value (in a register: nothing to
/// store before the call, nor to load after it, for the common outcome).
struct Call<F, R> {
    f: ManuallyDrop<F>,
    out: MaybeUninit<R>,
    panic: MaybeUninit<Box<dyn Any + Send>>,
}

/// [`enter_budget`]'s return value: the closure returned (`Call::out`).
const RETURNED: usize = 0;
/// [`enter_budget`]'s return value: the closure panicked (`Call::panic`).
const PANICKED: usize = 1;

/// The first frame on the lowered stack: runs the closure and catches its
/// panic, which must not unwind through the assembly. Returns [`RETURNED`]
/// or [`PANICKED`], saying which of the two outcomes it wrote.
///
/// # Safety
/// `arg` must point to a live `Call<F, R>` whose closure has not been taken,
/// used by no one else for the duration of the call.
unsafe extern "C" fn enter_budget<F: FnOnce() -> R, R>(arg: *mut u8) -> usize {
    // SAFETY: `call_with_budget` passes its own `Call<F, R>`, borrowed for
    // the whole of `call_on_stack`, and touches it only after we return.
    let call = unsafe { &mut *arg.cast::<Call<F, R>>() };
    // SAFETY: the closure is taken here, once (the caller's contract).
    let f = unsafe { ManuallyDrop::take(&mut call.f) };
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => {
            call.out.write(value);
            RETURNED
        }
        Err(payload) => {
            call.panic.write(payload);
            PANICKED
        }
    }
}

/// The exact stack pointer of the calling function (inlined, so it is the
/// one the following call is made from).
#[inline(always)]
fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reads a register into a local; no memory, stack or flags use.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags));
        #[cfg(target_arch = "aarch64")]
        std::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags));
    }
    sp
}

/// The low end and size of the stack `sp` is on (the caller's), from this
/// thread's cache or, on a miss, from [`GuardThread::prepare`].
#[inline(always)]
fn current_stack(sp: usize, budget: usize) -> Result<(usize, usize), Error> {
    // Small closures only: each `with` then inlines to one access at a
    // fixed offset from the thread pointer.
    match THREAD.with(|thread| thread.cached(sp)) {
        Some(stack) => Ok(stack),
        None => prepare_current(sp, budget),
    }
}

/// The miss path of [`current_stack`], out of line as a whole: `sp` and
/// `budget` then reach it in registers (a closure capturing them for
/// `THREAD.with` made every call store them to memory).
#[cold]
#[inline(never)]
fn prepare_current(sp: usize, budget: usize) -> Result<(usize, usize), Error> {
    THREAD.with(|thread| thread.prepare(sp, budget))
}

/// The `Enforce` path of a guarded call. Inlined into [`StackGuard::run`]:
/// on a stack that this thread's previous guarded call also ran on, it is
/// a few compares, four stores for the fault handler and the switch;
/// everything else is out of line.
#[inline(always)]
fn guarded_call<F: FnOnce() -> R, R>(name: &'static str, budget: usize, f: F) -> Result<R, Error> {
    let sp = stack_pointer();
    match THREAD.with(|thread| thread.cached(sp)) {
        Some((low, size)) => guarded_call_on(name, budget, f, sp, low, size),
        None => guarded_call_first(name, budget, f),
    }
}

/// [`guarded_call`] on a stack not in this thread's cache, out of line as a
/// whole: the common call then falls through from its cache check to the
/// switch, with no branch over the miss path and no join after it.
#[cold]
#[inline(never)]
fn guarded_call_first<F: FnOnce() -> R, R>(
    name: &'static str,
    budget: usize,
    f: F,
) -> Result<R, Error> {
    let sp = stack_pointer();
    let (low, size) = prepare_current(sp, budget)?;
    guarded_call_on(name, budget, f, sp, low, size)
}

/// The rest of [`guarded_call`], from a stack pointer `sp` on the stack
/// whose low end and size are `low` and `size`.
#[inline(always)]
fn guarded_call_on<F: FnOnce() -> R, R>(
    name: &'static str,
    budget: usize,
    f: F,
    sp: usize,
    low: usize,
    size: usize,
) -> Result<R, Error> {
    let Some(entry) = budget_entry(name, budget, sp, low) else {
        return Err(budget_error(budget, size, sp - low));
    };
    // SAFETY: entry.sp is 16-byte aligned and at least SWITCH_RESERVE below
    // `sp`, our stack pointer (budget_fits); `low..entry.sp` is unused stack
    // of the stack we are on, ending in its guard region.
    match unsafe { call_with_budget(entry, f) } {
        Ok(value) => Ok(value),
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// Runs `f` with the stack pointer at `entry.sp`, named in this thread's
/// active guards for the fault handler while it runs; its value, or its
/// panic's payload.
///
/// The thread-local is looked up again after the call: `f` may suspend a
/// fiber that is resumed on another thread.
///
/// # Safety
/// `entry.sp` must be 16-byte aligned, at least [`SWITCH_RESERVE`] below
/// the caller's stack pointer, on the stack the caller runs on, with
/// nothing live between it and that stack's guard region.
#[inline(always)]
unsafe fn call_with_budget<F: FnOnce() -> R, R>(
    entry: ActiveGuard,
    f: F,
) -> Result<R, Box<dyn Any + Send>> {
    let depth = THREAD.with(|thread| thread.push(entry));
    let mut call = Call {
        f: ManuallyDrop::new(f),
        out: MaybeUninit::uninit(),
        panic: MaybeUninit::uninit(),
    };
    // The entry function catches every panic: nothing unwinds through the
    // switch. `call` lives in this frame until call_on_stack returns.
    // SAFETY: the caller's contract is call_on_stack's; enter_budget does
    // not unwind.
    let outcome = unsafe {
        call_on_stack(
            (&raw mut call).cast(),
            enter_budget::<F, R>,
            entry.sp as *mut u8,
        )
    };
    THREAD.with(|thread| thread.pop(depth));
    if outcome == RETURNED {
        // SAFETY: enter_budget returned RETURNED, so it wrote the value.
        Ok(unsafe { call.out.assume_init_read() })
    } else {
        // SAFETY: enter_budget returned PANICKED, so it wrote the payload.
        Err(unsafe { call.panic.assume_init_read() })
    }
}

/// The `Measure` path: paint the budget, run `f` under it, find and record
/// the deepest byte it touched (also when it panicked), then return its
/// value or resume its panic.
#[inline(never)]
fn measured_call<F: FnOnce() -> R, R>(name: &'static str, budget: usize, f: F) -> Result<R, Error> {
    let sp = stack_pointer();
    let (low, size) = current_stack(sp, budget)?;
    let Some(entry) = budget_entry(name, budget, sp, low) else {
        return Err(budget_error(budget, size, sp - low));
    };
    let painted_top = entry.sp.min(sp - PAINT_RESERVE).max(low);
    // Below our stack pointer, so gone as far as memcheck knows.
    crate::valgrind::mark_defined(low, painted_top - low);
    // SAFETY: `low..painted_top` is mapped stack memory below our stack
    // pointer by at least PAINT_RESERVE, so no live frame is in it and
    // memset's own frame stays above it.
    unsafe {
        std::ptr::write_bytes(low as *mut u8, PAINT, painted_top - low);
    }
    // SAFETY: entry.sp is 16-byte aligned and at least SWITCH_RESERVE below
    // our stack pointer (budget_fits); `low..entry.sp` is unused stack of
    // the stack we are on, ending in its guard region.
    let outcome = unsafe { call_with_budget(entry, f) };
    // Below our stack pointer again, so gone as far as memcheck knows.
    crate::valgrind::mark_defined(low, painted_top - low);
    // SAFETY: we painted `low..painted_top` and the call is over; the
    // memory is still mapped stack below our stack pointer.
    let deepest = unsafe { deepest_touched(low, painted_top) };
    report::record(name, budget, entry.sp - deepest);
    match outcome {
        Ok(value) => Ok(value),
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// The lowest address in `low..top` that no longer holds the paint, or
/// `top` if all of it does.
///
/// Reads 64 bytes per step until a block differs (plain reads of memory
/// this thread wrote, which the compiler may widen to vector loads: a
/// word-by-word volatile loop made this scan most of a `Measure` call,
/// 0.9-1.6 µs for 16 KiB depending on how the loop happened to be
/// aligned), then finds the byte within the block.
///
/// # Safety
/// `low..top` must be readable, and `low` 8-byte aligned.
unsafe fn deepest_touched(low: usize, top: usize) -> usize {
    const BLOCK: usize = 64;
    let word = u64::from_ne_bytes([PAINT; 8]);
    let mut addr = low;
    while addr + BLOCK <= top {
        let block = addr as *const u64;
        let mut diff = 0;
        for i in 0..BLOCK / 8 {
            // SAFETY: `addr..addr + BLOCK` is inside `low..top`, and 8-byte
            // aligned (the caller's `low` is, and we step by 64).
            diff |= unsafe { block.add(i).read() } ^ word;
        }
        if diff != 0 {
            break;
        }
        addr += BLOCK;
    }
    while addr < top {
        // SAFETY: `addr` is inside `low..top`.
        if unsafe { (addr as *const u8).read() } != PAINT {
            return addr;
        }
        addr += 1;
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_fits_is_the_two_compares_it_replaces() {
        let reserve = SWITCH_RESERVE + UNINLINED_RESERVE;
        let edges = [0, 1, MIN_BUDGET - 1, MIN_BUDGET, MIN_BUDGET + 1, reserve];
        let mut values: Vec<usize> = Vec::new();
        for e in edges {
            for d in [0, 1, reserve, reserve + MIN_BUDGET, 4096, 1 << 20] {
                values.extend([e + d, (e + d).saturating_sub(1), e + d + 1]);
            }
        }
        values.extend([usize::MAX, usize::MAX - 1, usize::MAX / 2]);
        for &budget in &values {
            for &above_low in &values {
                let room = above_low.saturating_sub(reserve);
                let want = (MIN_BUDGET..=room).contains(&budget);
                assert_eq!(
                    budget_fits(budget, above_low),
                    want,
                    "budget {budget}, stack pointer {above_low} bytes above the low end"
                );
            }
        }
    }

    #[test]
    fn mode_names() {
        assert_eq!(GuardMode::parse("off"), Some(GuardMode::Off));
        assert_eq!(GuardMode::parse("Enforce\n"), Some(GuardMode::Enforce));
        assert_eq!(GuardMode::parse("MEASURE"), Some(GuardMode::Measure));
        assert_eq!(GuardMode::parse(""), None);
        assert_eq!(GuardMode::parse("enforced"), None);
        for mode in [GuardMode::Off, GuardMode::Enforce, GuardMode::Measure] {
            assert_eq!(GuardMode::from_u8(mode.to_u8()), Some(mode));
        }
        assert_eq!(GuardMode::from_u8(0), None);
    }

    #[test]
    fn deepest_touched_finds_the_lowest_changed_byte() {
        #[repr(align(64))]
        struct Buf([u8; 1024]);
        let mut buf = Buf([PAINT; 1024]);
        // Every access through this pointer, so that the writes and the
        // scans see the same memory.
        let base = buf.0.as_mut_ptr();
        let low = base as usize;
        // SAFETY: `at` < 1024: inside the buffer, which outlives `set`.
        let set = |at: usize, byte: u8| unsafe { base.add(at).write(byte) };
        // SAFETY: `low..low + top` is inside the buffer (top <= 1024),
        // readable and aligned; the buffer outlives every call.
        let scan = |top: usize| unsafe { deepest_touched(low, low + top) };
        // Tops inside a block and on a block boundary; changes in the first,
        // a middle and the last (partial) block, at both ends of a block.
        for top in [1000, 1024, 29, 64] {
            assert_eq!(scan(top), low + top);
            for at in [0, 1, 63, 64, 127, 500, 960, 999] {
                if at >= top {
                    continue;
                }
                // A change above it must not matter.
                set(top - 1, 0x5a);
                set(at, 0);
                assert_eq!(scan(top), low + at, "change at {at}, top {top}");
                set(top - 1, PAINT);
                set(at, PAINT);
            }
        }
        // Only the part asked about is scanned.
        set(30, 1);
        assert_eq!(scan(29), low + 29);
        assert_eq!(scan(31), low + 30);
    }
}
